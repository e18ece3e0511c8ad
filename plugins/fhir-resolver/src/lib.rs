//! ferry resolver: patient keys to a FHIR R4 server's `Patient` id, so
//! documents (from `fhir-documents`, or X-rays with card ids) can be filed
//! on a FHIR platform by the identifiers both sides know.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | required | the FHIR R4 base, `http` or `https` |
//! | `identifier_systems` | all | systems of `fhir-identifier` keys looked up; others are `unsupported` |
//! | `card_id_system` | none | if set, `card-id` keys are looked up as `identifier={card_id_system}|{value}` |
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
        let timeout_ms = c.timeout_ms.unwrap_or(10_000);
        if !(1..=600_000).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..=600000")));
        }
        Ok(Settings {
            base_url,
            api,
            identifier_systems: c.identifier_systems,
            card_id_system: c.card_id_system,
            timeout_ms,
        })
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

fn lookup(s: &Settings, t: &mut dyn Transport, token: &str) -> Result<Resolution, StageError> {
    let url = format!("{}/Patient?identifier={}&_count=10", s.base_url, percent_encode(token));
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
        e.message = format!("calling the FHIR server at {} (searching Patient): {}", s.api, e.message);
        e
    })?;
    let said = format!("FHIR server at {} answered {} searching Patient", s.api, r.status);
    match r.status {
        200 => parse(&r.body).map_err(|why| retryable(format!("FHIR server at {}: {why}", s.api))),
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
    let mut done: HashMap<String, Resolution> = HashMap::new();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(token) = s.token(key) else {
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
