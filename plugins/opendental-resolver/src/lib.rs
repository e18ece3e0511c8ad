//! ferry resolver: patient keys to an Open Dental `PatNum`, through the
//! Open Dental API, so items can be filed with `opendental-store`.
//!
//! No secret here: the pipeline's http grant adds `Authorization: ODFHIR
//! {DeveloperKey}/{CustomerKey}` host-side (`grants.http_auth`, `kind =
//! "header"`), as for `opendental-store`.
//!
//! ```toml
//! [resolver]
//! plugin = "opendental-resolver"
//! grants.http = ["api.opendental.com"]
//!
//! [resolver.grants.http_auth."api.opendental.com"]
//! kind = "header"
//! name = "Authorization"
//! value = "ODFHIR ${OD_DEVELOPER_KEY}/${OD_CUSTOMER_KEY}"
//!
//! [resolver.config]
//! base_url = "https://api.opendental.com/api/v1"
//! # patnum_scheme = "card-id"   # Sidexis bridges whose CardId is the PatNum
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | required | the API base, `http` or `https` |
//! | `patnum_scheme` | none | keys of this scheme are PatNums, confirmed with `GET /patients/{PatNum}` |
//! | `timeout_ms` | `30000` | per request, 1–600000 |
//!
//! Keys:
//!
//! - `name-birthdate`, value `Family|Given|YYYY-MM-DD` →
//!   `GET /patients?LName=&FName=&Birthdate=` (every page: `Offset` in
//!   steps of 100, the API's page size, while a page is full). Open Dental
//!   matches names partially and case-insensitively ("Most string
//!   parameters support partial match and are not case sensitive"), so
//!   `LName=Smi` also finds Smithers: ferry keeps only patients whose
//!   `LName` and `FName` equal the key's (case-insensitive, surrounding and
//!   repeated spaces ignored) and whose `Birthdate` is the key's. One →
//!   resolved(PatNum), several → ambiguous(PatNums), none → not-found. A
//!   malformed value (not three parts, an empty name, not a real date) is
//!   not-found, with a warning that says so without the value.
//! - the `patnum_scheme`, if set: the value (digits) is taken as a PatNum
//!   and confirmed with `GET /patients/{PatNum}`: `200` with that PatNum →
//!   resolved, `404` → not-found; a value that is not digits → not-found.
//! - anything else → unsupported.
//!
//! Every request is an idempotent GET sent with the host's retry. After
//! that: 401/403 → permanent (check the grant's developer/customer key and
//! the key's API permissions); 400 → permanent with the API's explanation,
//! except eConnector/connectivity explanations (Open Dental answers 400
//! for those too), which are retryable like 408/429/5xx and transport
//! failures; malformed answers → retryable; others → permanent. Names and
//! birth dates are PHI: they appear in debug logs only, never in errors.
//! Keys are looked up once per batch.
use std::collections::HashMap;

use ferry_plugin_sdk::http::{self, Request, Response};
use ferry_plugin_sdk::serde_json::{self, Value};
use ferry_plugin_sdk::types::{HostError, PatientKey, StageError};
use ferry_plugin_sdk::{debug, percent_encode, permanent, retryable, serde, warn, Resolution, Resolver};

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub base_url: String,
    pub patnum_scheme: Option<String>,
    pub timeout_ms: Option<u32>,
}

pub const SCHEME_NAME_BIRTHDATE: &str = "name-birthdate";
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
/// The API's page size (its hard limit per request).
pub const PAGE_SIZE: usize = 100;
/// Pages read at most for one name search (10,000 patients).
pub const MAX_PAGES: usize = 100;
const MAX_EXPLANATION: usize = 200;

#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: String,
    pub api: String,
    pub patnum_scheme: Option<String>,
    pub timeout_ms: u32,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> StageError {
    permanent(format!("invalid [resolver.config] {key}: {why}"))
}

impl Settings {
    pub fn new(c: Config) -> Result<Settings, StageError> {
        let base_url = c.base_url.trim().trim_end_matches('/').to_string();
        let rest = base_url
            .strip_prefix("https://")
            .or_else(|| base_url.strip_prefix("http://"))
            .ok_or_else(|| invalid("base_url", "is not an http:// or https:// URL"))?;
        if base_url.contains(['?', '#', ' ', '@']) || base_url.chars().any(char::is_control) {
            return Err(invalid("base_url", "must have no query, fragment, spaces or credentials"));
        }
        let api = rest.split('/').next().unwrap_or_default().to_ascii_lowercase();
        if api.is_empty() {
            return Err(invalid("base_url", "has no host"));
        }
        let patnum_scheme = match c.patnum_scheme {
            None => None,
            Some(s) if s.trim().is_empty() || s.contains(char::is_whitespace) => {
                return Err(invalid("patnum_scheme", "must be a scheme name without spaces, e.g. \"card-id\""))
            }
            Some(s) if s == SCHEME_NAME_BIRTHDATE => {
                return Err(invalid("patnum_scheme", "cannot be name-birthdate (that scheme is searched by name)"))
            }
            Some(s) => Some(s),
        };
        let timeout_ms = c.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=600_000).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..=600000")));
        }
        Ok(Settings { base_url, api, patnum_scheme, timeout_ms })
    }

    fn get(&self, url: String) -> Request {
        Request {
            method: "GET".into(),
            url,
            // The API requires Content-Type: application/json on every request.
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Accept".into(), "application/json".into()),
            ],
            body: None,
            timeout_ms: Some(self.timeout_ms),
            retry: true,
        }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Query {
    /// Family name, given name, `YYYY-MM-DD`.
    Name {
        family: String,
        given: String,
        birthdate: String,
    },
    PatNum(u64),
    /// A key of a handled scheme whose value cannot be looked up.
    Malformed(&'static str),
}

/// Spaces trimmed and collapsed.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Is `s` a real `YYYY-MM-DD` date?
pub fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        let part = &s[r];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse::<u32>().ok()).flatten()
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else { return false };
    let days = match m {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return false,
    };
    y > 0 && (1..=days).contains(&d)
}

impl Settings {
    /// The query for a key, or none (unsupported).
    pub fn query(&self, key: &PatientKey) -> Option<Query> {
        if key.scheme == SCHEME_NAME_BIRTHDATE {
            let parts: Vec<&str> = key.value.split('|').collect();
            let [family, given, birthdate] = parts[..] else {
                return Some(Query::Malformed("a name-birthdate key is not Family|Given|YYYY-MM-DD"));
            };
            let (family, given, birthdate) = (squash(family), squash(given), birthdate.trim().to_string());
            if family.is_empty() || given.is_empty() {
                return Some(Query::Malformed("a name-birthdate key has an empty name"));
            }
            if !is_date(&birthdate) {
                return Some(Query::Malformed("a name-birthdate key's birth date is not a YYYY-MM-DD date"));
            }
            return Some(Query::Name { family, given, birthdate });
        }
        if self.patnum_scheme.as_deref() == Some(key.scheme.as_str()) {
            let v = key.value.trim();
            let ok = !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit());
            return Some(match ok.then(|| v.parse::<u64>().ok()).flatten().filter(|&n| n > 0) {
                Some(n) => Query::PatNum(n),
                None => Query::Malformed("a PatNum key is not a positive number"),
            });
        }
        None
    }
}

/// The capability calls (the host, or a fake in tests).
pub trait Transport {
    fn send(&mut self, request: &Request) -> Result<Response, HostError>;
}

pub struct HostTransport;

impl Transport for HostTransport {
    fn send(&mut self, request: &Request) -> Result<Response, HostError> {
        http::send(request)
    }
}

fn num(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A page of `GET /patients`: `(PatNum, LName, FName, Birthdate)` per row.
pub fn parse_patients(body: &[u8]) -> Result<Vec<(u64, String, String, String)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the patient list is not JSON".to_string())?;
    let rows = v.as_array().ok_or("the patient list is not a JSON array")?;
    rows.iter()
        .map(|p| {
            let n = p.get("PatNum").and_then(num).filter(|&n| n > 0).ok_or("a patient without a PatNum")?;
            let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            Ok((n, s("LName"), s("FName"), s("Birthdate")))
        })
        .collect()
}

fn same_name(a: &str, b: &str) -> bool {
    squash(a).to_lowercase() == squash(b).to_lowercase()
}

/// The API's explanation in an error body, bounded.
pub fn explanation(body: &[u8]) -> Option<String> {
    let raw = match serde_json::from_slice::<Value>(body) {
        Ok(Value::String(s)) => s,
        Ok(Value::Object(o)) => o.get("Message").or_else(|| o.get("message")).and_then(Value::as_str)?.to_string(),
        Ok(_) => return None,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let clean: String = raw.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = squash(&clean);
    (!clean.is_empty()).then(|| clean.chars().take(MAX_EXPLANATION).collect())
}

fn transient_400(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    ["econnector", "timed out", "timeout", "connection", "connectivity", "not running"].iter().any(|w| e.contains(w))
}

/// The error for an unexpected status. `what` names no PHI.
pub fn status_error(s: &Settings, status: u16, body: &[u8], what: &str) -> StageError {
    let said = format!("Open Dental API at {} answered {status} {what}", s.api);
    let why = explanation(body);
    let quoted = why.as_deref().map(|w| format!(": {w:?}")).unwrap_or_default();
    match status {
        401 | 403 => permanent(format!(
            "{said}{quoted}: the developer key or customer key was refused, or lacks the API permission to read \
             patients; check grants.http_auth of [resolver] (Authorization = \"ODFHIR \
             {{DeveloperKey}}/{{CustomerKey}}\"); opendental-resolver sends no credentials of its own"
        )),
        400 if why.as_deref().is_some_and(transient_400) => {
            retryable(format!("{said}{quoted}; the office's eConnector or connection; will try again later"))
        }
        408 | 429 | 500..=599 => retryable(format!("{said}{quoted} after the host's retries; will try again later")),
        _ => permanent(format!("{said}{quoted}; check base_url in [resolver.config]")),
    }
}

fn send(s: &Settings, t: &mut dyn Transport, url: String, what: &str) -> Result<Response, StageError> {
    t.send(&s.get(url)).map_err(|e| {
        let mut e: StageError = e.into();
        e.message = format!("calling the Open Dental API at {} ({what}): {}", s.api, e.message);
        e
    })
}

fn search_name(
    s: &Settings,
    t: &mut dyn Transport,
    family: &str,
    given: &str,
    birthdate: &str,
) -> Result<Resolution, StageError> {
    let what = "searching patients by name and birth date";
    let mut found: Vec<u64> = Vec::new();
    for page in 0..MAX_PAGES {
        let mut url = format!(
            "{}/patients?LName={}&FName={}&Birthdate={birthdate}",
            s.base_url,
            percent_encode(family),
            percent_encode(given)
        );
        if page > 0 {
            url.push_str(&format!("&Offset={}", page * PAGE_SIZE));
        }
        let r = send(s, t, url, what)?;
        if r.status != 200 {
            return Err(status_error(s, r.status, &r.body, what));
        }
        let rows = parse_patients(&r.body).map_err(|why| retryable(format!("Open Dental API at {}: {why}", s.api)))?;
        for (n, l, f, b) in &rows {
            if same_name(l, family) && same_name(f, given) && b.trim() == birthdate && !found.contains(n) {
                found.push(*n);
            }
        }
        if rows.len() < PAGE_SIZE {
            found.sort_unstable();
            return Ok(match found.len() {
                0 => Resolution::NotFound,
                1 => Resolution::Resolved(found[0].to_string()),
                _ => Resolution::Ambiguous(found.iter().map(u64::to_string).collect()),
            });
        }
    }
    Err(permanent(format!(
        "Open Dental API at {}: a name search returned more than {} patients; the key is too unspecific",
        s.api,
        MAX_PAGES * PAGE_SIZE
    )))
}

fn confirm_patnum(s: &Settings, t: &mut dyn Transport, n: u64) -> Result<Resolution, StageError> {
    let what = format!("reading patient PatNum {n}");
    let r = send(s, t, format!("{}/patients/{n}", s.base_url), &what)?;
    match r.status {
        200 => {
            let v: Value = serde_json::from_slice(&r.body)
                .map_err(|_| retryable(format!("Open Dental API at {} ({what}): the answer is not JSON", s.api)))?;
            match v.get("PatNum").and_then(num) {
                Some(m) if m == n => Ok(Resolution::Resolved(n.to_string())),
                _ => Err(retryable(format!("Open Dental API at {} ({what}): the answer is not that patient", s.api))),
            }
        }
        404 => Ok(Resolution::NotFound),
        status => Err(status_error(s, status, &r.body, &what)),
    }
}

/// One resolution per key, in order; each distinct query is sent once.
pub fn resolve_keys(s: &Settings, t: &mut dyn Transport, keys: &[PatientKey]) -> Result<Vec<Resolution>, StageError> {
    let mut done: HashMap<Query, Resolution> = HashMap::new();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(q) = s.query(key) else {
            out.push(Resolution::Unsupported);
            continue;
        };
        if let Some(r) = done.get(&q) {
            out.push(r.clone());
            continue;
        }
        let r = match &q {
            Query::Malformed(why) => {
                warn(&format!("opendental-resolver: {why}; treated as not found"));
                Resolution::NotFound
            }
            Query::Name { family, given, birthdate } => search_name(s, t, family, given, birthdate)?,
            Query::PatNum(n) => confirm_patnum(s, t, *n)?,
        };
        debug(&format!("opendental-resolver: {}={} → {r:?}", key.scheme, key.value));
        done.insert(q, r.clone());
        out.push(r);
    }
    Ok(out)
}

struct OpenDentalResolver(Settings);

impl Resolver for OpenDentalResolver {
    type Config = Config;
    fn new(config: Config) -> Result<Self, StageError> {
        Ok(OpenDentalResolver(Settings::new(config)?))
    }
    fn resolve(&mut self, keys: Vec<PatientKey>) -> Result<Vec<Resolution>, StageError> {
        resolve_keys(&self.0, &mut HostTransport, &keys)
    }
}

ferry_plugin_sdk::resolver_plugin!(OpenDentalResolver);

#[cfg(test)]
mod tests;
