//! ferry resolver: patient keys to guids through the practice management
//! system's HTTP API (the production path: card id → `patientGuid`).
//!
//! Requests go through the host's `http` capability (the pipeline must
//! grant the API's host in `grants.http`), with `retry` on: lookups are
//! idempotent, so the host retries transport failures, timeouts and 5xx
//! with backoff and honours `429 Retry-After`, all within the call
//! deadline, and hands back the final response.
//!
//! ## `[resolver.config]`
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `url` | required | the API endpoint, `http` or `https`; may contain `{cardId}` (percent-encoded when substituted) |
//! | `method` | `"POST"` | `"POST"` or `"GET"` |
//! | `body` | `{"cardId": "{cardId}"}` | POST body; `{cardId}` is replaced by the card id **JSON-escaped, without quotes**, so the template writes the quotes: `"{cardId}"`. Must be JSON. Not allowed with GET |
//! | `headers` | none | extra request headers, e.g. `{ "X-Api-Key" = "${PMS_API_KEY}" }` (the host fills in `${...}`; values are never logged). `Content-Type: application/json` and `Accept: application/json` are added unless given |
//! | `guid_pointer` | `"/patientGuid"` | RFC 6901 JSON pointer to the guid in a 2xx answer |
//! | `not_found_status` | `[404]` | statuses meaning "no such card" (4xx other than 429, or 2xx other than 200, e.g. 204) |
//! | `scheme` | `"card-id"` | the patient-key scheme this API resolves; keys of other schemes are `unsupported` |
//! | `timeout_ms` | `10000` | per request (the host also caps it at the call's deadline) |
//! | `batch` | none | for APIs that take many cards at once, see below |
//!
//! The value at `guid_pointer`: a string (or an integer) → resolved; null,
//! missing or an empty string → not found; an array of strings → 0: not
//! found, 1: resolved, several distinct: ambiguous (the host quarantines).
//!
//! `batch = { body = '{"cardIds": {cardIds}}', results_pointer = "/results",
//! key_pointer = "/cardId", guid_pointer = "/patientGuid", max = 50 }`
//! (all keys optional, defaults shown): one POST per up to `max` distinct
//! cards to `url`; `{cardIds}` is replaced by a JSON array of strings. The
//! answer holds an array at `results_pointer` (null: empty) of entries
//! with the card at `key_pointer` and the guid at `guid_pointer` (same
//! rules as above; several entries for one card are merged). Cards absent
//! from the answer are not found. With `batch`, the top-level `body` and
//! `guid_pointer` are not used (set them in `batch`), `not_found_status`
//! does not apply (a batch endpoint answering 404 is misconfigured) and
//! `method` must be POST.
//!
//! ## Answers
//!
//! - status in `not_found_status` → not found;
//! - 2xx → parsed; malformed JSON or an unexpected shape is a `retryable`
//!   error (the items are parked, never dropped);
//! - 408, 429, 5xx (after the host's retries) → `retryable`;
//! - any other status → `permanent`, naming the status and what to check;
//! - transport failures (`host-error.unavailable`) → `retryable`.
//!
//! Card ids and response bodies may identify a patient: they appear in
//! debug logs only, never in errors or info+ logs.
//!
//! The pure logic (templates, pointers, answers → resolutions, statuses)
//! does not call the host and is unit-tested natively; requests go
//! through the [`Transport`] trait.
use std::collections::{BTreeMap, HashMap};

use ferry_plugin_sdk::http::{self, Request, Response};
use ferry_plugin_sdk::serde_json::{self, Value};
use ferry_plugin_sdk::status_reason as reason;
use ferry_plugin_sdk::types::{HostError, PatientKey, StageError};
use ferry_plugin_sdk::{debug, parse_config, permanent, retryable, serde, warn, Context, Resolution, Resolver};

/// The stage's `[config]` table, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub url: String,
    pub method: Option<String>,
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub guid_pointer: Option<String>,
    pub not_found_status: Option<Vec<u16>>,
    pub scheme: Option<String>,
    pub timeout_ms: Option<u32>,
    pub batch: Option<BatchConfig>,
}

/// `[config.batch]`, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct BatchConfig {
    pub body: Option<String>,
    pub results_pointer: Option<String>,
    pub key_pointer: Option<String>,
    pub guid_pointer: Option<String>,
    pub max: Option<u32>,
}

pub const DEFAULT_BODY: &str = r#"{"cardId": "{cardId}"}"#;
pub const DEFAULT_BATCH_BODY: &str = r#"{"cardIds": {cardIds}}"#;
pub const DEFAULT_GUID_POINTER: &str = "/patientGuid";
pub const DEFAULT_RESULTS_POINTER: &str = "/results";
pub const DEFAULT_KEY_POINTER: &str = "/cardId";
pub const DEFAULT_SCHEME: &str = "card-id";
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_BATCH_MAX: u32 = 50;
/// Largest `batch.max`.
pub const MAX_BATCH: u32 = 1000;
/// Largest `timeout_ms` (10 minutes; the call deadline is usually lower).
pub const MAX_TIMEOUT_MS: u32 = 600_000;

const CARD_ID: &str = "{cardId}";
const CARD_IDS: &str = "{cardIds}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// Batch settings, validated.
#[derive(Debug, Clone)]
pub struct Batch {
    pub body: String,
    pub results_pointer: String,
    pub key_pointer: String,
    pub guid_pointer: String,
    pub max: usize,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    /// `host[:port]` of `url`, for messages (never the path: it may hold a card id).
    pub api: String,
    pub method: Method,
    /// Single-key body template (POST without `batch`).
    pub body: Option<String>,
    /// Headers to send, defaults included.
    pub headers: Vec<(String, String)>,
    pub guid_pointer: String,
    pub not_found_status: Vec<u16>,
    pub scheme: String,
    pub timeout_ms: u32,
    pub batch: Option<Batch>,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> StageError {
    permanent(format!("invalid [config] {key}: {why}"))
}

impl Settings {
    /// Parses and validates the `[config]` JSON.
    pub fn parse(json: &str) -> Result<Settings, StageError> {
        Settings::new(parse_config(json)?)
    }

    pub fn new(c: Config) -> Result<Settings, StageError> {
        let api = check_url(&c.url).map_err(|why| invalid("url", why))?;
        let method = match c.method.as_deref().map(str::trim) {
            None => Method::Post,
            Some(m) if m.eq_ignore_ascii_case("POST") => Method::Post,
            Some(m) if m.eq_ignore_ascii_case("GET") => Method::Get,
            Some(m) => return Err(invalid("method", format!("{m:?} is not supported (\"POST\" or \"GET\")"))),
        };
        let scheme = c.scheme.unwrap_or_else(|| DEFAULT_SCHEME.into());
        if scheme.trim().is_empty() {
            return Err(invalid("scheme", "must not be empty"));
        }
        let timeout_ms = c.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}")));
        }
        let mut headers = Vec::new();
        for (name, value) in &c.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(invalid("headers", format!("{name:?} is not a valid header name")));
            }
            // Never echo the value: it is likely a secret.
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(invalid("headers", format!("the value of {name:?} contains a line break or NUL")));
            }
            headers.push((name.clone(), value.clone()));
        }
        let has_header = |n: &str| c.headers.keys().any(|h| h.eq_ignore_ascii_case(n));
        if !has_header("accept") {
            headers.push(("Accept".into(), "application/json".into()));
        }
        let url_has_card = c.url.contains(CARD_ID);

        let (body, guid_pointer, not_found_status, batch) = match c.batch {
            None => {
                let guid_pointer = c.guid_pointer.unwrap_or_else(|| DEFAULT_GUID_POINTER.into());
                check_pointer(&guid_pointer).map_err(|why| invalid("guid_pointer", why))?;
                let not_found = c.not_found_status.unwrap_or_else(|| vec![404]);
                for &s in &not_found {
                    let ok = (201..=299).contains(&s) || ((400..=499).contains(&s) && s != 429);
                    if !ok {
                        return Err(invalid(
                            "not_found_status",
                            format!("{s} cannot mean \"not found\" (use 4xx statuses other than 429, or a 2xx other than 200)"),
                        ));
                    }
                }
                let body = match method {
                    Method::Get => {
                        if c.body.is_some() {
                            return Err(invalid(
                                "body",
                                "a GET request has no body (use method = \"POST\", or drop body)",
                            ));
                        }
                        if !url_has_card {
                            return Err(invalid("url", "with method = \"GET\" the url must contain {cardId}"));
                        }
                        None
                    }
                    Method::Post => {
                        let body = c.body.unwrap_or_else(|| DEFAULT_BODY.into());
                        if body.contains(CARD_IDS) {
                            return Err(invalid("body", "{cardIds} is for batch.body; here use {cardId}"));
                        }
                        if !body.contains(CARD_ID) && !url_has_card {
                            return Err(invalid(
                                "body",
                                "neither body nor url contains {cardId}: every request would be the same",
                            ));
                        }
                        check_json_template(
                            &render_body(&body, "C-1001\"x"),
                            "the card id is inserted JSON-escaped without quotes, so write \"{cardId}\" in quotes",
                        )
                        .map_err(|why| invalid("body", why))?;
                        Some(body)
                    }
                };
                (body, guid_pointer, not_found, None)
            }
            Some(b) => {
                for (key, set) in [
                    ("body", c.body.is_some()),
                    ("guid_pointer", c.guid_pointer.is_some()),
                    ("not_found_status", c.not_found_status.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            key,
                            if key == "not_found_status" {
                                "does not apply with batch (cards absent from the answer are not found)".to_string()
                            } else {
                                format!("not used with batch; set batch.{key}")
                            },
                        ));
                    }
                }
                if method != Method::Post {
                    return Err(invalid("method", "batch requests are POSTs"));
                }
                if url_has_card {
                    return Err(invalid("url", "{cardId} cannot be used with batch (one request asks for many cards)"));
                }
                let body = b.body.unwrap_or_else(|| DEFAULT_BATCH_BODY.into());
                if !body.contains(CARD_IDS) {
                    return Err(invalid("batch.body", "must contain {cardIds} (a JSON array of card ids)"));
                }
                if body.contains(CARD_ID) {
                    return Err(invalid("batch.body", "{cardId} is for single requests; here use {cardIds}"));
                }
                check_json_template(
                    &render_batch_body(&body, &["C-1001".into(), "C\"2".into()]),
                    "{cardIds} is replaced by a JSON array such as [\"C-1\",\"C-2\"], so write it without quotes",
                )
                .map_err(|why| invalid("batch.body", why))?;
                let results_pointer = b.results_pointer.unwrap_or_else(|| DEFAULT_RESULTS_POINTER.into());
                let key_pointer = b.key_pointer.unwrap_or_else(|| DEFAULT_KEY_POINTER.into());
                let guid_pointer = b.guid_pointer.unwrap_or_else(|| DEFAULT_GUID_POINTER.into());
                for (key, p) in [
                    ("batch.results_pointer", &results_pointer),
                    ("batch.key_pointer", &key_pointer),
                    ("batch.guid_pointer", &guid_pointer),
                ] {
                    check_pointer(p).map_err(|why| invalid(key, why))?;
                }
                if key_pointer == guid_pointer {
                    return Err(invalid("batch.guid_pointer", "is the same as batch.key_pointer"));
                }
                let max = b.max.unwrap_or(DEFAULT_BATCH_MAX);
                if !(1..=MAX_BATCH).contains(&max) {
                    return Err(invalid("batch.max", format!("{max} is outside 1..={MAX_BATCH}")));
                }
                let batch =
                    Batch { body, results_pointer, key_pointer, guid_pointer: guid_pointer.clone(), max: max as usize };
                (None, guid_pointer, Vec::new(), Some(batch))
            }
        };
        if (body.is_some() || batch.is_some()) && !has_header("content-type") {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        Ok(Settings {
            url: c.url,
            api,
            method,
            body,
            headers,
            guid_pointer,
            not_found_status,
            scheme,
            timeout_ms,
            batch,
        })
    }

    /// One line for the log (no secrets, no PHI).
    pub fn describe(&self) -> String {
        match &self.batch {
            Some(b) => format!("resolver API at {} (POST, up to {} cards per request)", self.api, b.max),
            None => format!("resolver API at {} ({}, one request per card)", self.api, self.method.as_str()),
        }
    }
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks an `http(s)` URL template and returns its `host[:port]`.
pub fn check_url(url: &str) -> Result<String, String> {
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains {c:?} (percent-encode it)"));
    }
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err("must start with http:// or https://".into());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Err("user:password@ in the url is not supported; send credentials in headers".into());
    }
    if authority.contains('{') || authority.contains('}') {
        return Err("placeholders are only allowed in the path and query".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => return Err("unclosed `[` in the host".into()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("bad port {p:?}"));
        }
    }
    if url.contains('#') {
        return Err("a #fragment is never sent; remove it".into());
    }
    // `{cardId}` is the only placeholder.
    let without = url.replace(CARD_ID, "");
    if without.contains('{') || without.contains('}') {
        return Err("the only placeholder is {cardId} (percent-encode literal braces)".into());
    }
    Ok(authority.to_ascii_lowercase())
}

/// Checks an RFC 6901 JSON pointer: `""` (the whole document) or
/// `/`-prefixed tokens where `~` is only followed by `0` or `1`.
pub fn check_pointer(p: &str) -> Result<(), String> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!("{p:?} is not a JSON pointer (it starts with `/`, e.g. \"/patientGuid\")"));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!("{p:?}: `~` must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)"));
        }
    }
    Ok(())
}

fn check_json_template(rendered: &str, hint: &str) -> Result<(), String> {
    serde_json::from_str::<Value>(rendered)
        .map(|_| ())
        .map_err(|e| format!("not valid JSON once the card ids are filled in ({}); {hint}", json_error(&e)))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (the SDK's).
pub use ferry_plugin_sdk::percent_encode;

/// The JSON string literal of `s` without its quotes.
pub fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("strings always serialise");
    quoted[1..quoted.len() - 1].to_string()
}

/// The request URL for one card.
pub fn render_url(template: &str, card: &str) -> String {
    template.replace(CARD_ID, &percent_encode(card))
}

/// The request body for one card.
pub fn render_body(template: &str, card: &str) -> String {
    template.replace(CARD_ID, &json_escape(card))
}

/// The request body for several cards.
pub fn render_batch_body(template: &str, cards: &[String]) -> String {
    let array = serde_json::to_string(cards).expect("strings always serialise");
    template.replace(CARD_IDS, &array)
}

/// A serde_json error without any of the document's content.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "unexpected end",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected data",
        Category::Io => "read error",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Why an answer could not be used (no PHI in it).
#[derive(Debug, PartialEq)]
pub struct Malformed(pub String);

/// The guids of a value found at a guid pointer (deduplicated, in order).
pub fn guids_of(value: Option<&Value>) -> Result<Vec<String>, Malformed> {
    fn one(v: &Value, out: &mut Vec<String>) -> Result<(), Malformed> {
        let g = match v {
            Value::Null => return Ok(()),
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
            Value::Number(_) => return Err(Malformed("the patient guid is a fractional number".into())),
            Value::Bool(_) => return Err(Malformed("the patient guid is a boolean".into())),
            Value::Object(_) => return Err(Malformed("the patient guid is an object".into())),
            Value::Array(_) => return Err(Malformed("the patient guid is a nested array".into())),
        };
        if !g.is_empty() && !out.contains(&g) {
            out.push(g);
        }
        Ok(())
    }
    let mut out = Vec::new();
    match value {
        None => {}
        Some(Value::Array(items)) => {
            for v in items {
                one(v, &mut out)?;
            }
        }
        Some(v) => one(v, &mut out)?,
    }
    Ok(out)
}

/// 0 guids: not found; 1: resolved; more: ambiguous.
pub fn resolution_of(guids: Vec<String>) -> Resolution {
    match guids.len() {
        0 => Resolution::NotFound,
        1 => Resolution::Resolved(guids.into_iter().next().expect("one guid")),
        _ => Resolution::Ambiguous(guids),
    }
}

/// The host's rule for a usable guid (it rejects others per item).
pub fn usable_guid(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 128
        && !g.starts_with('.')
        && g.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn parse_json(body: &[u8], status: u16) -> Result<Value, Malformed> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Malformed(format!("an empty body with status {status}")));
    }
    serde_json::from_slice(body).map_err(|e| Malformed(json_error(&e)))
}

/// The resolution in a 2xx answer to a single-card request.
pub fn parse_single(body: &[u8], status: u16, guid_pointer: &str) -> Result<Resolution, Malformed> {
    let doc = parse_json(body, status)?;
    if !(guid_pointer.is_empty() || doc.is_object() || doc.is_array()) {
        return Err(Malformed("not a JSON object".into()));
    }
    Ok(resolution_of(guids_of(doc.pointer(guid_pointer))?))
}

/// Card → guids in a 2xx answer to a batch request.
pub fn parse_batch(body: &[u8], status: u16, batch: &Batch) -> Result<HashMap<String, Vec<String>>, Malformed> {
    let doc = parse_json(body, status)?;
    let results = match doc.pointer(&batch.results_pointer) {
        Some(Value::Array(items)) => items.as_slice(),
        Some(Value::Null) => &[],
        Some(_) => return Err(Malformed(format!("the value at {} is not an array", batch.results_pointer))),
        None => return Err(Malformed(format!("nothing at {} (batch.results_pointer)", batch.results_pointer))),
    };
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (i, entry) in results.iter().enumerate() {
        let card = match entry.pointer(&batch.key_pointer) {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => {
                return Err(Malformed(format!(
                    "result {i} has no card id (string) at {} (batch.key_pointer)",
                    batch.key_pointer
                )))
            }
        };
        let guids = guids_of(entry.pointer(&batch.guid_pointer))
            .map_err(|Malformed(m)| Malformed(format!("result {i}: {m}")))?;
        let merged = map.entry(card).or_default();
        for g in guids {
            if !merged.contains(&g) {
                merged.push(g);
            }
        }
    }
    Ok(map)
}

/// What a status means, before looking at the body.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Parse the body.
    Answer,
    /// The card is unknown.
    NotFound,
}

/// Maps a response status: `not_found` statuses first, then 2xx; every
/// other status is an error naming it (and the API, never the URL path).
pub fn classify(status: u16, not_found: &[u16], api: &str) -> Result<Verdict, StageError> {
    if not_found.contains(&status) {
        return Ok(Verdict::NotFound);
    }
    let said = format!("resolver API at {api} answered {status}{}", reason(status));
    match status {
        200..=299 => Ok(Verdict::Answer),
        429 => Err(retryable(format!("{said} (rate limited) after the host's retries; will try again later"))),
        408 | 500..=599 => Err(retryable(format!("{said} after the host's retries; will try again later"))),
        401 | 403 => Err(permanent(format!(
            "{said}: check the API key / credentials (headers in [resolver.config]) and that they are allowed to resolve patients"
        ))),
        300..=399 => Err(permanent(format!(
            "{said}, a redirect, which ferry does not follow: check url in [resolver.config] (https? exact path?)"
        ))),
        400..=499 => Err(permanent(format!("{said}: check url, method and body in [resolver.config]"))),
        _ => Err(permanent(format!("{said}, which is not a valid answer: check url in [resolver.config]"))),
    }
}

fn malformed(api: &str, Malformed(why): Malformed) -> StageError {
    retryable(format!(
        "resolver API at {api} returned malformed JSON or an unexpected shape ({why}); \
         check guid_pointer/batch settings in [resolver.config] if this persists"
    ))
}

/// How requests reach the API (the host, or a fake in tests).
pub trait Transport {
    fn send(&mut self, request: Request) -> Result<Response, HostError>;
}

/// The host's `http` capability.
pub struct HostTransport;

impl Transport for HostTransport {
    fn send(&mut self, request: Request) -> Result<Response, HostError> {
        http::send(&request)
    }
}

fn send(
    s: &Settings,
    t: &mut dyn Transport,
    url: String,
    body: Option<String>,
    what: &str,
) -> Result<Response, StageError> {
    debug(&format!("{} {url} ({what})", s.method.as_str()));
    let request = Request {
        method: s.method.as_str().into(),
        url,
        headers: s.headers.clone(),
        body: body.map(String::into_bytes),
        timeout_ms: Some(s.timeout_ms),
        retry: true,
    };
    let response = t.send(request).context(format_args!("calling the resolver API at {}", s.api))?;
    let text = String::from_utf8_lossy(&response.body);
    let shown: String = text.chars().take(2000).collect();
    debug(&format!("resolver API answered {} ({what}): {shown}", response.status));
    Ok(response)
}

/// Asks about one card.
fn resolve_one(s: &Settings, t: &mut dyn Transport, card: &str) -> Result<Resolution, StageError> {
    let url = render_url(&s.url, card);
    let body = s.body.as_deref().map(|b| render_body(b, card));
    let response = send(s, t, url, body, &format!("card {card}"))?;
    match classify(response.status, &s.not_found_status, &s.api)? {
        Verdict::NotFound => Ok(Resolution::NotFound),
        Verdict::Answer => {
            parse_single(&response.body, response.status, &s.guid_pointer).map_err(|m| malformed(&s.api, m))
        }
    }
}

/// Asks about up to `batch.max` cards at once.
fn resolve_many(
    s: &Settings,
    batch: &Batch,
    t: &mut dyn Transport,
    cards: &[String],
) -> Result<Vec<Resolution>, StageError> {
    let body = render_batch_body(&batch.body, cards);
    let response = send(s, t, s.url.clone(), Some(body), &format!("{} cards", cards.len()))?;
    match classify(response.status, &[], &s.api)? {
        Verdict::NotFound => unreachable!("no not-found statuses in batch mode"),
        Verdict::Answer => {
            let mut found = parse_batch(&response.body, response.status, batch).map_err(|m| malformed(&s.api, m))?;
            Ok(cards.iter().map(|c| resolution_of(found.remove(c).unwrap_or_default())).collect())
        }
    }
}

/// Resolves `keys`: one resolution per key, in order. Keys of other
/// schemes are unsupported; blank keys are not found without asking;
/// each distinct card is asked about once.
pub fn resolve_keys(s: &Settings, t: &mut dyn Transport, keys: &[PatientKey]) -> Result<Vec<Resolution>, StageError> {
    let mut cards: Vec<String> = Vec::new();
    for k in keys {
        let card = k.value.trim();
        if k.scheme == s.scheme && !card.is_empty() && !cards.iter().any(|c| c == card) {
            cards.push(card.to_string());
        }
    }
    let mut answers: HashMap<String, Resolution> = HashMap::new();
    let mut requests = 0;
    match &s.batch {
        Some(batch) => {
            for chunk in cards.chunks(batch.max) {
                requests += 1;
                for (card, r) in chunk.iter().zip(resolve_many(s, batch, t, chunk)?) {
                    answers.insert(card.clone(), r);
                }
            }
        }
        None => {
            for card in &cards {
                requests += 1;
                answers.insert(card.clone(), resolve_one(s, t, card)?);
            }
        }
    }
    let (mut resolved, mut unusable, mut ambiguous) = (0, 0, 0);
    for r in answers.values() {
        match r {
            Resolution::Resolved(g) if usable_guid(g) => resolved += 1,
            Resolution::Resolved(_) => unusable += 1,
            Resolution::Ambiguous(_) => ambiguous += 1,
            _ => {}
        }
    }
    if unusable > 0 {
        // The host fails those items; say why without the values.
        warn(&format!(
            "resolver API at {} returned {unusable} patient guid(s) that are not usable ids (letters, digits, - _ . only, at most 128): check guid_pointer in [resolver.config]",
            s.api
        ));
    }
    debug(&format!(
        "{} keys, {} cards asked in {requests} requests: {resolved} resolved, {ambiguous} ambiguous, {} not found",
        keys.len(),
        cards.len(),
        cards.len() - resolved - unusable - ambiguous
    ));
    Ok(keys
        .iter()
        .map(|k| {
            if k.scheme != s.scheme {
                return Resolution::Unsupported;
            }
            answers.get(k.value.trim()).cloned().unwrap_or(Resolution::NotFound)
        })
        .collect())
}

/// The configured stage.
struct HttpResolver(Settings);

impl Resolver for HttpResolver {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        let settings = Settings::new(config)?;
        debug(&settings.describe());
        Ok(HttpResolver(settings))
    }

    fn resolve(&mut self, keys: Vec<PatientKey>) -> Result<Vec<Resolution>, StageError> {
        resolve_keys(&self.0, &mut HostTransport, &keys)
    }
}

ferry_plugin_sdk::resolver_plugin!(HttpResolver);

#[cfg(test)]
mod tests;
