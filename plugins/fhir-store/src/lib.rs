//! ferry store: each item as a FHIR R4 `DocumentReference` on a
//! platform's FHIR server, for the patient the resolver found (the patient
//! guid is the platform's `Patient` id).
//!
//! Requests go through the host's `http` capability: the pipeline must
//! grant the server's host in `grants.http`. The file's bytes never enter
//! the plugin: the host streams them into the request (`http.send-file`).
//!
//! ## The pipeline file
//!
//! ```toml
//! [store]
//! plugin = "fhir-store"
//! grants.http = ["fhir.example.org"]
//! # the host adds the credential; the plugin never sees it (oauth2, bearer, …):
//! grants.http_auth."fhir.example.org" = { kind = "bearer", token = "${FHIR_TOKEN}" }
//!
//! [store.config]
//! base_url = "https://fhir.example.org/fhir"   # the FHIR R4 base
//! # binary_threshold = 1048576                 # bytes; larger files go up as a Binary first
//! # identifier_system = "urn:ferry:doc"
//! # timeout_ms = 30000
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | required | the FHIR base, `http` or `https`, e.g. `http://127.0.0.1:8080/fhir` |
//! | `token` | none | a static bearer token the plugin sends itself (`"${FHIR_TOKEN}"`); prefer `grants.http_auth`, where the host holds the credential (bearer, or OAuth2 with tokens it renews). Never logged nor put in an error |
//! | `binary_threshold` | `1048576` (1 MiB) | files larger than this many bytes are uploaded as a `Binary` and referenced; smaller ones are inlined (base64) |
//! | `identifier_system` | `urn:ferry:doc` | the system of the `identifier` ferry gives each DocumentReference |
//! | `timeout_ms` | `30000` | per request (the host also caps it at the call's deadline) |
//!
//! ## What is stored
//!
//! One `DocumentReference` per item:
//!
//! - `status = current`, `subject = Patient/<guid>`;
//! - `identifier = [{system: identifier_system, value: <hex SHA-256 of the file>}]`;
//! - `type`: the coding of `document.type.system`/`code`/`display` (and
//!   `text` = display); left out without a `document.type.code`;
//! - the document's date (`document.date`): a full date-time with a time
//!   zone is an R4 `instant` and goes to `date` (seconds added when
//!   missing); a date alone (`2024-03-17`, `2024-03`, `2024`) or a
//!   date-time without a time zone is not an instant, so it goes to
//!   `context.period.start` (a `dateTime`; for a time without a zone only
//!   its date part, as FHIR requires a zone with a time); anything else is
//!   left out (with a warning);
//! - `description` = `document.title`, else the item's display name;
//! - `author = [{display: document.author}]` when known;
//! - `content[0].attachment`: `contentType` (`document.content-type`, else
//!   guessed from the file extension, else `application/octet-stream`),
//!   `title` (the item's display name, i.e. the file name), `size`, `hash`
//!   (base64 of the SHA-1 of the bytes, as R4 defines it; computed by
//!   reading the file in 64 KiB ranges) and either `data` (the bytes,
//!   base64, for files up to `binary_threshold`) or `url = Binary/<id>`
//!   (larger files, uploaded first as a raw `Binary` with the file's
//!   content type).
//!
//! The location ferry records is `DocumentReference/<id>`.
//!
//! ## Idempotency
//!
//! The DocumentReference is a conditional create with
//! `If-None-Exist: identifier=<system>|<sha256>&subject=Patient/<guid>`:
//! `201` → stored; `200` (this patient has it already) → unchanged, nothing
//! written; `412` (several carry the identifier) → a permanent error: a
//! person must merge them. The same bytes for another patient are another
//! DocumentReference, never "unchanged" on someone else's. For a
//! large file ferry first searches `DocumentReference?identifier=…` and
//! uploads the Binary only when none exists, so a re-run uploads nothing.
//!
//! ## Changed documents
//!
//! When a document ferry stored before comes back with other bytes (the
//! provider corrected a report), the host tells the store where its
//! previous version went (`ferry.previous-location`, same patient only).
//! That DocumentReference is read and updated in place (`PUT` with
//! `If-Match` on the version read; a Binary first for a large file): the
//! patient has one document with the new identifier and attachment, and
//! the server's history keeps the old version. If it is gone, or now
//! points at another patient, a new one is created as usual. An update
//! that a crash left unrecorded is found on the next run (the resource
//! already carries the new identifier) and reported unchanged.
//!
//! ## Errors and retries
//!
//! The search and the conditional create are idempotent and sent with the
//! host's `retry` (transport failures, timeouts, 5xx with backoff, 429
//! after `Retry-After`); the Binary upload is not (a retry could create a
//! second Binary). After that: 401/403 → permanent, check the token;
//! 408/429/5xx and transport failures → retryable (the item is tried again
//! later); any other status → permanent with the server's
//! `OperationOutcome` diagnostics (at most 300 characters). No message
//! contains the token.
//!
//! ## Limits
//!
//! - If the DocumentReference create fails after a Binary upload (or races
//!   another run), that Binary stays on the server unreferenced; the next
//!   run uploads a new one. ferry never deletes.
//! - One attachment per DocumentReference; no `masterIdentifier`,
//!   `category`, `custodian` or `context.encounter`; authors are display
//!   strings, not references.
//! - Changing `identifier_system` makes every document new to the server.
//! - `attachment.size` is an R4 `unsignedInt`: files of 2 GiB and more are
//!   refused.
//!
//! The logic (settings, the DocumentReference, dates, statuses) does not
//! call the host and is unit-tested natively; capability calls go through
//! the [`Host`] trait.
use std::io::Read;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ferry_plugin_sdk::http::{self, Base64Body, FileBody, Request, Response};
use ferry_plugin_sdk::serde_json::{self, json, Map, Value};
use ferry_plugin_sdk::status_reason as reason;
use ferry_plugin_sdk::types::{FileRef, HostError, Item, Metadata, StageError, Value as MetaValue};
use ferry_plugin_sdk::{debug, fs, permanent, retryable, serde, warn, FileReader, Store, StoreOutcome, Stored};
use sha1::{Digest, Sha1};

/// The stage's `[config]` table, as written.
#[derive(Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub base_url: String,
    #[serde(default)]
    pub token: Option<String>,
    pub binary_threshold: Option<u64>,
    pub identifier_system: Option<String>,
    pub timeout_ms: Option<u32>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("base_url", &self.base_url).field("token", &"<redacted>").finish()
    }
}

pub const DEFAULT_BINARY_THRESHOLD: u64 = 1 << 20;
/// Largest `binary_threshold`: inline documents beyond this make huge JSON bodies.
pub const MAX_BINARY_THRESHOLD: u64 = 64 << 20;
pub const DEFAULT_IDENTIFIER_SYSTEM: &str = "urn:ferry:doc";
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
pub const MAX_TIMEOUT_MS: u32 = 600_000;
/// Longest server diagnostics quoted in an error.
pub const MAX_DIAGNOSTICS: usize = 300;
/// The largest R4 `unsignedInt` (`attachment.size`).
pub const MAX_SIZE: u64 = i32::MAX as u64;

const FHIR_JSON: &str = "application/fhir+json";

/// The validated configuration.
#[derive(Clone)]
pub struct Settings {
    /// The base, without a trailing `/`.
    pub base_url: String,
    /// `host[:port]`, for messages.
    pub api: String,
    /// A token the plugin sends itself (none: the host's grant does).
    token: Option<String>,
    pub binary_threshold: u64,
    pub identifier_system: String,
    pub timeout_ms: u32,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> StageError {
    permanent(format!("invalid [store.config] {key}: {why}"))
}

impl Settings {
    pub fn new(c: Config) -> Result<Settings, StageError> {
        let base_url = c.base_url.trim().trim_end_matches('/').to_string();
        let api = check_url(&base_url).map_err(|why| invalid("base_url", why))?;
        let token = c.token.map(|t| t.trim().to_string());
        if let Some(token) = &token {
            if token.is_empty() {
                return Err(invalid(
                    "token",
                    "is empty (write token = \"${FHIR_TOKEN}\" and set that variable, or leave it out and use grants.http_auth)",
                ));
            }
            // Never echo the value.
            if token.bytes().any(|b| b.is_ascii_control() || b == b' ') || !token.is_ascii() {
                return Err(invalid("token", "contains spaces, line breaks or non-ASCII characters"));
            }
        }
        let binary_threshold = c.binary_threshold.unwrap_or(DEFAULT_BINARY_THRESHOLD);
        if binary_threshold > MAX_BINARY_THRESHOLD {
            return Err(invalid(
                "binary_threshold",
                format!("{binary_threshold} is above {MAX_BINARY_THRESHOLD} (64 MiB)"),
            ));
        }
        let identifier_system = c.identifier_system.unwrap_or_else(|| DEFAULT_IDENTIFIER_SYSTEM.into());
        if identifier_system.trim().is_empty() || identifier_system.contains(['|', ' ', '\n', '\r']) {
            return Err(invalid("identifier_system", "must be a URI (no spaces or `|`), e.g. \"urn:ferry:doc\""));
        }
        let timeout_ms = c.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}")));
        }
        Ok(Settings { base_url, api, token, binary_threshold, identifier_system, timeout_ms })
    }

    /// One line for the log (no token).
    pub fn describe(&self) -> String {
        format!(
            "FHIR server at {} (DocumentReferences; Binary above {} bytes; identifier system {})",
            self.api, self.binary_threshold, self.identifier_system
        )
    }

    /// `message` with the token blanked out, should a server echo it.
    pub fn scrub(&self, message: &str) -> String {
        match &self.token {
            Some(t) if t.len() >= 4 => message.replace(t.as_str(), "<token>"),
            _ => message.to_string(),
        }
    }

    fn headers(&self, content_type: Option<&str>) -> Vec<(String, String)> {
        let mut h = vec![("Accept".to_string(), FHIR_JSON.to_string())];
        if let Some(t) = &self.token {
            h.push(("Authorization".to_string(), format!("Bearer {t}")));
        }
        if let Some(ct) = content_type {
            h.push(("Content-Type".to_string(), ct.to_string()));
        }
        h
    }

    /// `identifier=<system>|<value>`, percent-encoded, as a search or `If-None-Exist`.
    pub fn identifier_query(&self, sha256: &str) -> String {
        format!("identifier={}|{}", percent_encode(&self.identifier_system), percent_encode(sha256))
    }
}

/// Checks an `http(s)` base URL and returns its `host[:port]`.
pub fn check_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains spaces or control characters".into());
    }
    if url.contains(['?', '#']) {
        return Err("must not have a query or fragment (it is the FHIR base)".into());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("must not contain credentials (use token)".into());
    }
    Ok(authority.to_ascii_lowercase())
}

/// Percent-encodes everything but RFC 3986 unreserved characters (the SDK's).
pub use ferry_plugin_sdk::percent_encode;

// ------------------------------------------------------------ the document

/// A coding of the document's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coding {
    pub system: Option<String>,
    pub code: String,
    pub display: Option<String>,
}

/// The `document.*` metadata of an item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub content_type: Option<String>,
    pub kind: Option<Coding>,
    pub date: Option<String>,
    pub title: Option<String>,
    pub author: Option<String>,
}

fn text<'a>(metadata: &'a Metadata, key: &str) -> Option<&'a str> {
    metadata.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        MetaValue::Text(s) if !s.trim().is_empty() => Some(s.trim()),
        _ => None,
    })
}

impl Facts {
    pub fn from_metadata(metadata: &Metadata) -> Facts {
        let get = |k: &str| text(metadata, k).map(str::to_string);
        let kind = get("document.type.code").map(|code| Coding {
            system: get("document.type.system"),
            code,
            display: get("document.type.display"),
        });
        Facts {
            content_type: get("document.content-type"),
            kind,
            date: get("document.date"),
            title: get("document.title"),
            author: get("document.author"),
        }
    }
}

/// Where a document's date goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocDate {
    /// An R4 `instant`: `DocumentReference.date`.
    Instant(String),
    /// An R4 `dateTime` without time (or a date): `context.period.start`.
    Period(String),
    /// Not a date FHIR can take.
    Unusable,
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` with plausible months and days.
fn is_partial_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let ok_num = |p: &str, lo: u32, hi: u32| digits(p, 2) && (lo..=hi).contains(&p.parse::<u32>().unwrap_or(0));
    match parts.as_slice() {
        [y] => digits(y, 4),
        [y, m] => digits(y, 4) && ok_num(m, 1, 12),
        [y, m, d] => digits(y, 4) && ok_num(m, 1, 12) && ok_num(d, 1, 31),
        _ => false,
    }
}

/// `hh:mm[:ss[.fff]]`, returned with seconds.
fn time_with_seconds(t: &str) -> Option<String> {
    let (hms, frac) = match t.split_once('.') {
        Some((a, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (a, Some(f)),
        Some(_) => return None,
        None => (t, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let num = |p: &str, hi: u32| digits(p, 2) && p.parse::<u32>().is_ok_and(|v| v <= hi);
    let (h, m, s) = match parts.as_slice() {
        [h, m] if frac.is_none() => (*h, *m, "00"),
        [h, m, s] => (*h, *m, *s),
        _ => return None,
    };
    if !(num(h, 23) && num(m, 59) && num(s, 60)) {
        return None;
    }
    Some(match frac {
        Some(f) => format!("{h}:{m}:{s}.{f}"),
        None => format!("{h}:{m}:{s}"),
    })
}

/// Sorts an ISO 8601 date or date-time into an R4 place.
pub fn classify_date(raw: &str) -> DocDate {
    let raw = raw.trim();
    let Some((date, rest)) = raw.split_once(['T', 't', ' ']) else {
        return if is_partial_date(raw) { DocDate::Period(raw.to_string()) } else { DocDate::Unusable };
    };
    if !(date.len() == 10 && is_partial_date(date)) {
        return DocDate::Unusable;
    }
    let (time, zone) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, Some("Z".to_string()))
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let z = &rest[i..];
        let zone_ok = z.len() == 6 && &z[3..4] == ":" && digits(&z[1..3], 2) && digits(&z[4..6], 2);
        let zone_ok = zone_ok || (z.len() == 5 && digits(&z[1..5], 4));
        if !zone_ok {
            return DocDate::Unusable;
        }
        let z = if z.len() == 5 { format!("{}:{}", &z[..3], &z[3..]) } else { z.to_string() };
        (&rest[..i], Some(z))
    } else {
        (rest, None)
    };
    let Some(time) = time_with_seconds(time) else {
        return DocDate::Unusable;
    };
    match zone {
        Some(z) => DocDate::Instant(format!("{date}T{time}{z}")),
        // FHIR wants a zone with any time: keep the day only.
        None => DocDate::Period(date.to_string()),
    }
}

/// A content type from a file name's extension.
pub fn content_type_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "webp" => "image/webp",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "xml" => "application/xml",
        "json" => "application/json",
        "rtf" => "application/rtf",
        "dcm" => "application/dicom",
        _ => "application/octet-stream",
    }
}

/// What the attachment carries besides its facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `data`: this placeholder, replaced by the host with the base64 bytes.
    Inline(String),
    /// `url`: `Binary/<id>`.
    Binary(String),
}

/// Everything the DocumentReference is made of.
#[derive(Debug, Clone)]
pub struct Document<'a> {
    pub facts: &'a Facts,
    pub patient: &'a str,
    pub display_name: &'a str,
    pub identifier_system: &'a str,
    pub sha256: &'a str,
    pub sha1_base64: &'a str,
    pub size: u64,
}

impl Document<'_> {
    pub fn content_type(&self) -> String {
        match &self.facts.content_type {
            Some(ct) => ct.clone(),
            None => content_type_of(self.display_name).to_string(),
        }
    }

    /// The DocumentReference JSON.
    pub fn to_json(&self, payload: &Payload) -> Value {
        let mut doc = Map::new();
        doc.insert("resourceType".into(), json!("DocumentReference"));
        doc.insert("identifier".into(), json!([{ "system": self.identifier_system, "value": self.sha256 }]));
        doc.insert("status".into(), json!("current"));
        if let Some(k) = &self.facts.kind {
            let mut coding = Map::new();
            if let Some(s) = &k.system {
                coding.insert("system".into(), json!(s));
            }
            coding.insert("code".into(), json!(k.code));
            if let Some(d) = &k.display {
                coding.insert("display".into(), json!(d));
            }
            let mut kind = Map::new();
            kind.insert("coding".into(), Value::Array(vec![Value::Object(coding)]));
            if let Some(d) = &k.display {
                kind.insert("text".into(), json!(d));
            }
            doc.insert("type".into(), Value::Object(kind));
        }
        doc.insert("subject".into(), json!({ "reference": format!("Patient/{}", self.patient) }));
        let mut period = None;
        if let Some(raw) = &self.facts.date {
            match classify_date(raw) {
                DocDate::Instant(i) => {
                    doc.insert("date".into(), json!(i));
                }
                DocDate::Period(p) => period = Some(p),
                DocDate::Unusable => {}
            }
        }
        if let Some(a) = &self.facts.author {
            doc.insert("author".into(), json!([{ "display": a }]));
        }
        let description = self.facts.title.as_deref().unwrap_or(self.display_name);
        doc.insert("description".into(), json!(description));
        let mut attachment = Map::new();
        attachment.insert("contentType".into(), json!(self.content_type()));
        match payload {
            Payload::Inline(placeholder) => attachment.insert("data".into(), json!(placeholder)),
            Payload::Binary(id) => attachment.insert("url".into(), json!(format!("Binary/{id}"))),
        };
        attachment.insert("size".into(), json!(self.size));
        attachment.insert("hash".into(), json!(self.sha1_base64));
        attachment.insert("title".into(), json!(self.display_name));
        doc.insert("content".into(), json!([{ "attachment": Value::Object(attachment) }]));
        if let Some(start) = period {
            doc.insert("context".into(), json!({ "period": { "start": start } }));
        }
        Value::Object(doc)
    }
}

/// A placeholder for the base64 bytes that occurs nowhere in `json`.
pub fn placeholder_for(json: &str) -> String {
    let mut n = 0u32;
    loop {
        let p = format!("@ferry-file-base64-{n}@");
        if !json.contains(&p) {
            return p;
        }
        n += 1;
    }
}

/// Base64 of the SHA-1 of everything `r` yields, read in chunks.
pub fn sha1_base64(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let digest: [u8; 20] = hasher.finalize().into();
    Ok((BASE64.encode(digest), total))
}

// ---------------------------------------------------------------- answers

/// The diagnostics of an OperationOutcome body, bounded, or none.
pub fn diagnostics(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let issues = v.get("issue")?.as_array()?;
    let parts: Vec<&str> = issues
        .iter()
        .filter_map(|i| i.get("diagnostics").and_then(Value::as_str).or_else(|| i.pointer("/details/text")?.as_str()))
        .collect();
    if parts.is_empty() {
        return None;
    }
    let all = parts.join("; ");
    let mut out: String = all.chars().filter(|c| !c.is_control()).take(MAX_DIAGNOSTICS).collect();
    if all.chars().count() > MAX_DIAGNOSTICS {
        out.push('…');
    }
    Some(out)
}

/// The error for a status that is not the answer hoped for.
pub fn status_error(s: &Settings, status: u16, body: &[u8], what: &str) -> StageError {
    let said = format!("FHIR server at {} answered {status}{} {what}", s.api, reason(status));
    let e = match status {
        401 | 403 => permanent(format!(
            "{said}: the token was refused; check the credential (grants.http_auth of [store], or token in \
             [store.config]: the environment variable it names, e.g. FHIR_TOKEN), that it has not expired and \
             may write DocumentReference and Binary"
        )),
        408 | 429 | 500..=599 => retryable(format!("{said} after the host's retries; will try again later")),
        412 if what.starts_with("creating the DocumentReference") => permanent(format!(
            "{said}: several DocumentReferences already carry this identifier; a person must merge them"
        )),
        _ => {
            let why = match diagnostics(body) {
                Some(d) => format!(": {d}"),
                None => String::new(),
            };
            permanent(format!("{said}{why}; check base_url in [store.config] and the server's requirements"))
        }
    };
    StageError { kind: e.kind, message: s.scrub(&e.message) }
}

/// A host error, with what was being done and without the token.
pub fn host_error(s: &Settings, e: HostError, what: &str) -> StageError {
    let mut e: StageError = e.into();
    e.message = s.scrub(&format!("calling the FHIR server at {} ({what}): {}", s.api, e.message));
    e
}

/// The id of a resource in a 200/201 answer: the body's `id`, else from `Location`.
pub fn created_id(response: &Response, type_: &str) -> Option<String> {
    let from_body = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
    from_body.filter(|id| !id.is_empty()).or_else(|| {
        let loc = response.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("location"))?.1.as_str();
        let after = loc.split(&format!("{type_}/")).nth(1)?;
        let id = after.split('/').next()?;
        (!id.is_empty()).then(|| id.to_string())
    })
}

/// What a search for the identifier found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    None,
    One(String),
    Several(usize),
}

/// Reads a `searchset` Bundle.
pub fn parse_search(body: &[u8]) -> Result<Found, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the search answer is not JSON".to_string())?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err("the search answer is not a Bundle".into());
    }
    let ids: Vec<String> = v
        .get("entry")
        .and_then(Value::as_array)
        .map(|es| {
            es.iter()
                .filter(|e| e.pointer("/search/mode").and_then(Value::as_str).is_none_or(|m| m == "match"))
                .filter_map(|e| e.pointer("/resource/id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let total = v.get("total").and_then(Value::as_u64).map_or(ids.len(), |t| t as usize).max(ids.len());
    Ok(match (total, ids.into_iter().next()) {
        (0, _) => Found::None,
        (1, Some(id)) => Found::One(id),
        (1, None) => return Err("the search found a DocumentReference but returned no id".into()),
        (n, _) => Found::Several(n),
    })
}

// ------------------------------------------------------------------ host

/// The capability calls the store makes (the host, or a fake in tests).
pub trait Host {
    fn send(&mut self, request: Request) -> Result<Response, HostError>;
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError>;
    /// Hex SHA-256 of a file, host-side.
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError>;
    /// Base64 SHA-1 and size of a file, read in ranges.
    fn sha1(&mut self, file: &FileRef) -> Result<(String, u64), StageError>;
}

/// The real host.
pub struct HostCaps;

impl Host for HostCaps {
    fn send(&mut self, request: Request) -> Result<Response, HostError> {
        http::send(&request)
    }
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError> {
        http::send_file(&request, &body)
    }
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError> {
        fs::sha256(file)
    }
    fn sha1(&mut self, file: &FileRef) -> Result<(String, u64), StageError> {
        let mut reader = FileReader::open(file).map_err(StageError::from)?;
        match sha1_base64(&mut reader) {
            Ok(r) => Ok(r),
            Err(io) => Err(match reader.take_error() {
                Some(e) => e.into(),
                None => retryable(format!("reading the item's file: {io}")),
            }),
        }
    }
}

fn request(s: &Settings, method: &str, url: String, content_type: Option<&str>, retry: bool) -> Request {
    Request {
        method: method.into(),
        url,
        headers: s.headers(content_type),
        body: None,
        timeout_ms: Some(s.timeout_ms),
        retry,
    }
}

/// Stores one item: the whole protocol.
pub fn store_item(
    s: &Settings,
    host: &mut dyn Host,
    item: &Item,
    metadata: &Metadata,
    patient: &str,
) -> Result<Stored, StageError> {
    let facts = Facts::from_metadata(metadata);
    let sha256 = host.sha256(&item.file).map_err(|e| host_error(s, e, "hashing the item's file"))?;
    let (sha1, size) = host.sha1(&item.file)?;
    if size > MAX_SIZE {
        return Err(permanent(format!(
            "the file is {size} bytes; FHIR R4 attachment.size stops at {MAX_SIZE} (2 GiB)"
        )));
    }
    if let Some(raw) = &facts.date {
        if classify_date(raw) == DocDate::Unusable {
            warn("document.date is not an ISO 8601 date or date-time; the DocumentReference has no date");
        }
    }
    let doc = Document {
        facts: &facts,
        patient,
        display_name: &item.display_name,
        identifier_system: &s.identifier_system,
        sha256: &sha256,
        sha1_base64: &sha1,
        size,
    };
    // the same bytes filed for another patient are another document: the
    // condition names the patient too, so they are never "unchanged" on
    // someone else's DocumentReference
    // a changed document: its DocumentReference from before is updated
    if let Some(old) = previous_id(metadata) {
        if let Some(stored) = update_previous(s, host, item, &doc, &old, patient)? {
            return Ok(stored);
        }
    }
    let condition =
        format!("{}&subject={}", s.identifier_query(&sha256), percent_encode(&format!("Patient/{patient}")));
    let create_url = format!("{}/DocumentReference", s.base_url);

    let response = if size > s.binary_threshold {
        // Look first, so a re-run does not upload the Binary again.
        let what = "searching DocumentReference by identifier";
        let search_url = format!("{create_url}?{condition}&_count=2");
        let r = host.send(request(s, "GET", search_url, None, true)).map_err(|e| host_error(s, e, what))?;
        if r.status != 200 {
            return Err(status_error(s, r.status, &r.body, what));
        }
        match parse_search(&r.body) {
            Ok(Found::One(id)) => {
                debug(&format!("DocumentReference/{id} already has this file ({})", item.id));
                return Ok(Stored { location: format!("DocumentReference/{id}"), outcome: StoreOutcome::Unchanged });
            }
            Ok(Found::Several(n)) => {
                return Err(permanent(format!(
                    "FHIR server at {}: {n} DocumentReferences already carry this identifier; a person must merge them",
                    s.api
                )))
            }
            Ok(Found::None) => {}
            Err(why) => return Err(retryable(format!("FHIR server at {}: {why}", s.api))),
        }
        let binary = upload_binary(s, host, item, &doc)?;
        let body = serde_json::to_vec(&doc.to_json(&Payload::Binary(binary))).expect("JSON serialises");
        let mut create = request(s, "POST", create_url, Some(FHIR_JSON), true);
        create.headers.push(("If-None-Exist".into(), condition));
        create.body = Some(body);
        host.send(create).map_err(|e| host_error(s, e, "creating the DocumentReference"))?
    } else {
        let mut create = request(s, "POST", create_url, Some(FHIR_JSON), true);
        create.headers.push(("If-None-Exist".into(), condition));
        let body = inline_body(|p| doc.to_json(p), item);
        host.send_file(create, body).map_err(|e| host_error(s, e, "creating the DocumentReference"))?
    };
    let what = "creating the DocumentReference";
    let outcome = match response.status {
        201 => StoreOutcome::Stored,
        200 => StoreOutcome::Unchanged,
        status => return Err(status_error(s, status, &response.body, what)),
    };
    let id = created_id(&response, "DocumentReference").ok_or_else(|| {
        retryable(format!(
            "FHIR server at {} answered {} but did not say the DocumentReference's id",
            s.api, response.status
        ))
    })?;
    debug(&format!("DocumentReference/{id} {outcome:?} for {}", item.id));
    Ok(Stored { location: format!("DocumentReference/{id}"), outcome })
}

/// The body of a DocumentReference with the item's file inline: the JSON
/// `json` makes, the host putting the file's base64 where the placeholder
/// (one that occurs nowhere else in it) stands.
fn inline_body(json: impl Fn(&Payload) -> Value, item: &Item) -> FileBody {
    let probe = serde_json::to_string(&json(&Payload::Inline(String::new()))).expect("JSON serialises");
    let placeholder = placeholder_for(&probe);
    let template = serde_json::to_string(&json(&Payload::Inline(placeholder.clone()))).expect("JSON serialises");
    FileBody::Base64(Base64Body { template, placeholder, file: item.file.clone() })
}

/// Uploads the item's file as a raw `Binary`; its id.
fn upload_binary(s: &Settings, host: &mut dyn Host, item: &Item, doc: &Document) -> Result<String, StageError> {
    let what = "uploading the Binary";
    let ct = doc.content_type();
    // Not retried by the host: a retry after a lost answer would make a second Binary.
    let upload = request(s, "POST", format!("{}/Binary", s.base_url), Some(&ct), false);
    let r = host.send_file(upload, FileBody::Raw(item.file.clone())).map_err(|e| host_error(s, e, what))?;
    if r.status != 201 && r.status != 200 {
        return Err(status_error(s, r.status, &r.body, what));
    }
    let binary = created_id(&r, "Binary")
        .ok_or_else(|| retryable(format!("FHIR server at {} created a Binary but did not say its id", s.api)))?;
    debug(&format!("Binary/{binary} uploaded ({} bytes, {})", doc.size, item.id));
    Ok(binary)
}

/// The id in `ferry.previous-location` (set by the host when a stored
/// item's file changed), if it is a DocumentReference of this plugin's.
pub fn previous_id(metadata: &Metadata) -> Option<String> {
    let id = text(metadata, PREVIOUS_LOCATION)?.strip_prefix("DocumentReference/")?;
    // FHIR ids: [A-Za-z0-9\-\.]{1,64}
    let valid = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| id.to_string())
}

/// The metadata key the host sets for a changed item.
pub const PREVIOUS_LOCATION: &str = "ferry.previous-location";

/// A changed document updates the DocumentReference its previous version
/// made (same resource, new identifier and attachment), so the patient's
/// record shows one document, not two. `None` when there is nothing to
/// update: that resource is gone, or is not this patient's any more (then
/// a new one is created, as for a new document).
fn update_previous(
    s: &Settings,
    host: &mut dyn Host,
    item: &Item,
    doc: &Document,
    old: &str,
    patient: &str,
) -> Result<Option<Stored>, StageError> {
    let url = format!("{}/DocumentReference/{old}", s.base_url);
    let what = "reading the DocumentReference of the document's previous version";
    let r = host.send(request(s, "GET", url.clone(), None, true)).map_err(|e| host_error(s, e, what))?;
    if matches!(r.status, 404 | 410) {
        debug(&format!("DocumentReference/{old} is gone; {} becomes a new one", item.id));
        return Ok(None);
    }
    if r.status != 200 {
        return Err(status_error(s, r.status, &r.body, what));
    }
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|_| retryable(format!("FHIR server at {} answered {what} with something that is not JSON", s.api)))?;
    let subject = format!("Patient/{patient}");
    if v.pointer("/subject/reference").and_then(Value::as_str) != Some(subject.as_str()) {
        warn("the previous version's DocumentReference no longer points at this patient; a new one is created");
        return Ok(None);
    }
    let location = format!("DocumentReference/{old}");
    let ours = v
        .get("identifier")
        .and_then(Value::as_array)
        .is_some_and(|ids| ids.iter().any(|i| i["system"] == s.identifier_system.as_str() && i["value"] == doc.sha256));
    if ours {
        // updated already (a run that stopped before ferry wrote it down)
        return Ok(Some(Stored { location, outcome: StoreOutcome::Unchanged }));
    }
    let with_id = |mut j: Value| {
        j["id"] = json!(old);
        j
    };
    // If-Match: an edit made on the server since the read is not overwritten
    let mut put = request(s, "PUT", url, Some(FHIR_JSON), true);
    if let Some(vid) = v.pointer("/meta/versionId").and_then(Value::as_str) {
        put.headers.push(("If-Match".into(), format!("W/\"{vid}\"")));
    }
    let what = "updating the DocumentReference of the document's previous version";
    let response = if doc.size > s.binary_threshold {
        let binary = upload_binary(s, host, item, doc)?;
        put.body = Some(serde_json::to_vec(&with_id(doc.to_json(&Payload::Binary(binary)))).expect("JSON serialises"));
        host.send(put).map_err(|e| host_error(s, e, what))?
    } else {
        let body = inline_body(|p| with_id(doc.to_json(p)), item);
        host.send_file(put, body).map_err(|e| host_error(s, e, what))?
    };
    match response.status {
        200 | 201 => {
            debug(&format!("DocumentReference/{old} updated with a new version of {}", item.id));
            Ok(Some(Stored { location, outcome: StoreOutcome::Stored }))
        }
        412 => Err(retryable(format!(
            "FHIR server at {}: DocumentReference/{old} changed on the server while ferry updated it; tried again later",
            s.api
        ))),
        status => Err(status_error(s, status, &response.body, what)),
    }
}

/// The configured stage.
struct FhirStore(Settings);

impl Store for FhirStore {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        let settings = Settings::new(config)?;
        debug(&settings.describe());
        Ok(FhirStore(settings))
    }

    fn store(&mut self, item: Item, metadata: Metadata, patient_guid: String) -> Result<Stored, StageError> {
        store_item(&self.0, &mut HostCaps, &item, &metadata, &patient_guid)
    }
}

ferry_plugin_sdk::store_plugin!(FhirStore);

#[cfg(test)]
mod tests;
