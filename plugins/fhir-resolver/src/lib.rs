//! ferry resolver: patient keys to a FHIR R4 server's `Patient` id, so
//! documents (from `fhir-documents`, or X-rays with card ids) can be filed
//! on a FHIR platform by the identifiers both sides know.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | required | the FHIR R4 base, `http` or `https` |
//! | `identifier_systems` | all | systems of `fhir-identifier` keys looked up; others are `unsupported` |
//! | `card_id_system` | none | if set, `card-id` keys are looked up as `identifier={card_id_system}|{value}` |
//! | `patient_id_scheme` | none | keys of this scheme are the platform's own Patient ids, confirmed with `GET {base}/Patient/{id}` (200 → resolved, 404/410 → not found); e.g. `"ferry-patient"` for `registry-documents`, whose patient records carry the platform's id as their guid |
//! | `timeout_ms` | `10000` | per request, 1–600000 |
//!
//! No token here: the pipeline's http grant adds credentials host-side.
//! Keys `fhir-identifier` (`system|value`) → `GET {base}/Patient?identifier=
//! {percent-encoded system|value}&_count=10` (retry on): one Patient →
//! resolved(its id), several → ambiguous(ids), none → not-found; other
//! schemes → unsupported. 401/403 → permanent (check the credential of the
//! grant), 408/429/5xx and transport failures → retryable, malformed
//! answers → retryable, other statuses → permanent. Keys are deduplicated
//! per batch. Key values appear in debug logs only.
use std::collections::HashMap;

use ferry_plugin_sdk::http::{self, Request, Response};
use ferry_plugin_sdk::serde_json::{self, Value};
use ferry_plugin_sdk::types::{HostError, PatientKey, StageError};
use ferry_plugin_sdk::{debug, percent_encode, permanent, retryable, serde, Resolution, Resolver};

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub base_url: String,
    pub identifier_systems: Option<Vec<String>>,
    pub card_id_system: Option<String>,
    pub patient_id_scheme: Option<String>,
    pub timeout_ms: Option<u32>,
}

pub const SCHEME_IDENTIFIER: &str = "fhir-identifier";
pub const SCHEME_CARD: &str = "card-id";

#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: String,
    pub api: String,
    pub identifier_systems: Option<Vec<String>>,
    pub card_id_system: Option<String>,
    pub patient_id_scheme: Option<String>,
    pub timeout_ms: u32,
}

/// What a key is looked up as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Query {
    /// `Patient?identifier=system|value`.
    Identifier(String),
    /// `Patient/{id}`.
    Id(String),
}

/// A FHIR resource id: 1–64 of `A-Za-z0-9-.`.
pub fn valid_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
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
        if base_url.contains(['?', '#', ' ', '@']) {
            return Err(invalid("base_url", "must have no query, fragment, spaces or credentials"));
        }
        let api = rest.split('/').next().unwrap_or_default().to_ascii_lowercase();
        if api.is_empty() {
            return Err(invalid("base_url", "has no host"));
        }
        let ok = |s: &str| !s.trim().is_empty() && !s.contains(['|', ' ']);
        if let Some(v) = &c.identifier_systems {
            if v.is_empty() || !v.iter().all(|s| ok(s)) {
                return Err(invalid("identifier_systems", "must be a non-empty list of URIs without spaces or `|`"));
            }
        }
        if let Some(s) = &c.card_id_system {
            if !ok(s) {
                return Err(invalid("card_id_system", "must be a URI without spaces or `|`"));
            }
        }
        if let Some(s) = &c.patient_id_scheme {
            if s.trim().is_empty() || s.contains(' ') {
                return Err(invalid(
                    "patient_id_scheme",
                    "must be a scheme name without spaces, e.g. \"ferry-patient\"",
                ));
            }
            if s == SCHEME_IDENTIFIER || s == SCHEME_CARD {
                return Err(invalid("patient_id_scheme", "cannot be fhir-identifier or card-id (those are searched)"));
            }
        }
        let timeout_ms = c.timeout_ms.unwrap_or(10_000);
        if !(1..=600_000).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..=600000")));
        }
        Ok(Settings {
            base_url,
            api,
            identifier_systems: c.identifier_systems,
            card_id_system: c.card_id_system,
            patient_id_scheme: c.patient_id_scheme,
            timeout_ms,
        })
    }

    /// How a key is looked up, or none (unsupported).
    pub fn query(&self, key: &PatientKey) -> Option<Query> {
        if self.patient_id_scheme.as_deref() == Some(key.scheme.as_str()) {
            return valid_fhir_id(&key.value).then(|| Query::Id(key.value.clone()));
        }
        self.token(key).map(Query::Identifier)
    }

    /// The `system|value` token searched for a key, or none (unsupported).
    pub fn token(&self, key: &PatientKey) -> Option<String> {
        match key.scheme.as_str() {
            SCHEME_IDENTIFIER => {
                let (system, value) = key.value.split_once('|')?;
                if system.is_empty() || value.is_empty() {
                    return None;
                }
                if self.identifier_systems.as_ref().is_some_and(|a| !a.iter().any(|s| s == system)) {
                    return None;
                }
                Some(key.value.clone())
            }
            SCHEME_CARD => {
                let system = self.card_id_system.as_ref()?;
                (!key.value.is_empty()).then(|| format!("{system}|{}", key.value))
            }
            _ => None,
        }
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

/// A searchset Bundle's Patient ids.
pub fn parse(body: &[u8]) -> Result<Resolution, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_string())?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err("the answer is not a Bundle".into());
    }
    let mut ids: Vec<String> = Vec::new();
    for e in v.get("entry").and_then(Value::as_array).into_iter().flatten() {
        if e.pointer("/search/mode").and_then(Value::as_str).is_some_and(|m| m != "match") {
            continue;
        }
        let Some(r) = e.get("resource") else { continue };
        if r.get("resourceType").and_then(Value::as_str) != Some("Patient") {
            continue;
        }
        let id = r.get("id").and_then(Value::as_str).ok_or("a Patient without an id")?;
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }
    Ok(match ids.len() {
        0 => Resolution::NotFound,
        1 => Resolution::Resolved(ids.remove(0)),
        _ => Resolution::Ambiguous(ids),
    })
}

fn lookup(s: &Settings, t: &mut dyn Transport, q: &Query) -> Result<Resolution, StageError> {
    let token = match q {
        Query::Identifier(token) => token,
        Query::Id(id) => return read_patient(s, t, id),
    };
    let url = format!("{}/Patient?identifier={}&_count=10", s.base_url, percent_encode(token));
    match fhir_get(s, t, url, "searching Patient")? {
        Answer::Found(body) => parse(&body).map_err(|why| retryable(format!("FHIR server at {}: {why}", s.api))),
        Answer::Gone => Err(permanent(format!(
            "FHIR server at {} answered 404 searching Patient; check base_url in [resolver.config]",
            s.api
        ))),
    }
}

/// `GET Patient/{id}`: the Patient itself, or none.
fn read_patient(s: &Settings, t: &mut dyn Transport, id: &str) -> Result<Resolution, StageError> {
    let url = format!("{}/Patient/{id}", s.base_url);
    match fhir_get(s, t, url, "reading a Patient")? {
        Answer::Found(body) => {
            let v: Value = serde_json::from_slice(&body)
                .map_err(|_| retryable(format!("FHIR server at {}: the Patient is not JSON", s.api)))?;
            let same = v.get("resourceType").and_then(Value::as_str) == Some("Patient")
                && v.get("id").and_then(Value::as_str) == Some(id);
            if same {
                Ok(Resolution::Resolved(id.to_owned()))
            } else {
                Err(retryable(format!("FHIR server at {}: the answer is not Patient/{id}", s.api)))
            }
        }
        Answer::Gone => Ok(Resolution::NotFound),
    }
}

/// What a GET found: a 200's body, or 404/410.
enum Answer {
    Found(Vec<u8>),
    Gone,
}

/// One GET (`what`: "searching Patient", for the messages); every other
/// status is an error saying what to check — credentials, the server, the
/// base URL.
fn fhir_get(s: &Settings, t: &mut dyn Transport, url: String, what: &str) -> Result<Answer, StageError> {
    let req = Request {
        method: "GET".into(),
        url,
        headers: vec![("Accept".into(), "application/fhir+json".into())],
        body: None,
        timeout_ms: Some(s.timeout_ms),
        retry: true,
    };
    let r = t.send(&req).map_err(|e| {
        let mut e: StageError = e.into();
        e.message = format!("calling the FHIR server at {} ({what}): {}", s.api, e.message);
        e
    })?;
    let said = format!("FHIR server at {} answered {} {what}", s.api, r.status);
    match r.status {
        200 => Ok(Answer::Found(r.body)),
        404 | 410 => Ok(Answer::Gone),
        401 | 403 => Err(permanent(format!(
            "{said}: the credentials were refused; check the credential the pipeline's http grant for {} adds \
             (fhir-resolver sends none of its own) and that it may read Patient",
            s.api
        ))),
        408 | 429 | 500..=599 => Err(retryable(format!("{said} after the host's retries; will try again later"))),
        _ => Err(permanent(format!("{said}; check base_url in [resolver.config]"))),
    }
}

/// One resolution per key, in order; each distinct key is looked up once.
pub fn resolve_keys(s: &Settings, t: &mut dyn Transport, keys: &[PatientKey]) -> Result<Vec<Resolution>, StageError> {
    let mut done: HashMap<Query, Resolution> = HashMap::new();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(token) = s.query(key) else {
            out.push(Resolution::Unsupported);
            continue;
        };
        if let Some(r) = done.get(&token) {
            out.push(r.clone());
            continue;
        }
        let r = lookup(s, t, &token)?;
        debug(&format!("fhir-resolver: {}={} → {r:?}", key.scheme, key.value));
        done.insert(token, r.clone());
        out.push(r);
    }
    Ok(out)
}

struct FhirResolver(Settings);

impl Resolver for FhirResolver {
    type Config = Config;
    fn new(config: Config) -> Result<Self, StageError> {
        Ok(FhirResolver(Settings::new(config)?))
    }
    fn resolve(&mut self, keys: Vec<PatientKey>) -> Result<Vec<Resolution>, StageError> {
        resolve_keys(&self.0, &mut HostTransport, &keys)
    }
}

ferry_plugin_sdk::resolver_plugin!(FhirResolver);

#[cfg(test)]
mod tests;
