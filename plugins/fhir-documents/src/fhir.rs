//! The few FHIR R4 shapes the source reads, from JSON: a searchset
//! `Bundle`, a `DocumentReference`, a `Patient`. Lenient where R4 allows
//! variety, strict where a wrong guess would file a document wrongly.
use ferry_plugin_sdk::serde_json::Value;
use ferry_plugin_sdk::types::{Coding, PatientKey};

use crate::config::{mime_base, Settings, LOINC};
use crate::instant;

pub const SCHEME_IDENTIFIER: &str = "fhir-identifier";
pub const SCHEME_PATIENT: &str = "fhir-patient";
pub const SCHEME_NAME_BIRTHDATE: &str = "name-birthdate";

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A FHIR `id`: 1–64 of `A-Z a-z 0-9 - .`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// One page of a search.
#[derive(Debug)]
pub struct Bundle {
    /// The DocumentReferences, in the server's order.
    pub entries: Vec<Value>,
    pub next: Option<String>,
}

/// Reads a searchset Bundle; `Err` says why it is not one.
pub fn parse_bundle(s: &Settings, v: &Value) -> Result<Bundle, String> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err("the search answer is not a Bundle".into());
    }
    let entries = match v.get("entry") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(es)) => es
            .iter()
            .filter(|e| e.pointer("/search/mode").and_then(Value::as_str).is_none_or(|m| m == "match"))
            .filter_map(|e| e.get("resource"))
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("DocumentReference"))
            .cloned()
            .collect(),
        Some(_) => return Err("the search answer's entry is not a list".into()),
    };
    let next = v
        .get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        .and_then(|l| str_at(l, "url"))
        .map(|u| absolute(s, u));
    Ok(Bundle { entries, next })
}

/// A url from the server made absolute: `Binary/x` is under the base,
/// `/x` under its origin, `?q` a search of DocumentReference.
pub fn absolute(s: &Settings, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else if url.starts_with('?') {
        format!("{}/DocumentReference{url}", s.base_url)
    } else if url.starts_with('/') {
        format!("{}{url}", s.origin)
    } else {
        format!("{}/{url}", s.base_url)
    }
}

/// The facts of an entry that place it in the scan.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The id, if it is a FHIR id.
    pub id: Option<String>,
    /// `meta.lastUpdated` as written and parsed.
    pub last_updated: Option<(String, i128)>,
}

pub fn stamp(doc: &Value) -> Stamp {
    let id = str_at(doc, "id").filter(|id| is_fhir_id(id)).map(str::to_string);
    let last_updated = doc
        .pointer("/meta/lastUpdated")
        .and_then(Value::as_str)
        .map(str::trim)
        .and_then(|raw| Some((raw.to_string(), instant::parse_instant(raw)?)));
    Stamp { id, last_updated }
}

/// Does the DocumentReference pass `status` and `types`?
pub fn wanted(s: &Settings, doc: &Value) -> Result<(), String> {
    let status = str_at(doc, "status").unwrap_or("");
    if status != s.status {
        return Err(format!("status {status:?}, not {:?}", s.status));
    }
    if !s.types.is_empty() {
        let hit = codings(doc.get("type")).iter().any(|c| {
            str_at(c, "system") == Some(LOINC)
                && str_at(c, "code").is_some_and(|code| s.types.iter().any(|t| t == code))
        });
        if !hit {
            return Err("not of a configured LOINC type".into());
        }
    }
    Ok(())
}

fn codings(concept: Option<&Value>) -> Vec<&Value> {
    concept.and_then(|c| c.get("coding")).and_then(Value::as_array).map(|v| v.iter().collect()).unwrap_or_default()
}

/// Where the chosen attachment's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Download from this absolute url.
    Url(String),
    /// Base64 in the resource.
    Inline(String),
}

/// The attachment the source takes.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// Lower-case MIME type, no parameters.
    pub content_type: String,
    pub source: Source,
    pub size: Option<u64>,
    /// Base64 SHA-1, as R4 defines `attachment.hash`.
    pub hash: Option<String>,
    pub title: Option<String>,
    pub creation: Option<String>,
}

/// Why no attachment was taken: `Err(reason)`.
pub fn choose(s: &Settings, doc: &Value) -> Result<Chosen, String> {
    let contents: Vec<&Value> =
        doc.get("content").and_then(Value::as_array).map(|v| v.iter().collect()).unwrap_or_default();
    let attachments: Vec<&Value> = contents.iter().filter_map(|c| c.get("attachment")).collect();
    if attachments.is_empty() {
        return Err("no attachment".into());
    }
    let mut found: Vec<String> = Vec::new();
    let mut best: Option<(usize, &Value, String)> = None;
    for a in &attachments {
        let ct = str_at(a, "contentType").map(mime_base).unwrap_or_default();
        if a.get("data").is_none() && a.get("url").is_none() {
            continue;
        }
        if let Some(rank) = s.content_types.iter().position(|t| *t == ct) {
            if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                best = Some((rank, a, ct));
            }
        } else if !found.contains(&ct) && found.len() < 5 {
            found.push(if ct.is_empty() { "(none)".into() } else { ct });
        }
    }
    let Some((_, a, content_type)) = best else {
        return Err(if found.is_empty() {
            "no attachment has data or a url".into()
        } else {
            format!("no attachment of an accepted content type (found {}; see content_types)", found.join(", "))
        });
    };
    let source = if let Some(data) = a.get("data") {
        Source::Inline(data.as_str().ok_or("the attachment's data is not a string")?.to_string())
    } else {
        let url = str_at(a, "url").ok_or("the attachment's url is empty")?;
        if let Some(contained) = url.strip_prefix('#') {
            return Err(format!("the attachment's url points into the resource (#{}); not supported", contained.len()));
        }
        let scheme = url.split_once(':').map(|(a, _)| a).filter(|a| {
            !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        });
        if let Some(scheme) = scheme.filter(|sc| !sc.eq_ignore_ascii_case("http") && !sc.eq_ignore_ascii_case("https"))
        {
            let scheme: String = scheme.chars().take(20).collect();
            return Err(format!("the attachment's url has scheme {scheme:?}; only http(s) and relative urls are read"));
        }
        Source::Url(absolute(s, url))
    };
    let size = match a.get("size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("the attachment's size is not a non-negative integer")?),
    };
    Ok(Chosen {
        content_type,
        source,
        size,
        hash: str_at(a, "hash").map(str::to_string),
        title: str_at(a, "title").map(str::to_string),
        creation: str_at(a, "creation").map(str::to_string),
    })
}

/// The patient's id from `subject`: `Patient/x` (or `{base}/Patient/x`,
/// optionally with `/_history/n`); `Err(reason)` otherwise.
pub fn subject_patient(s: &Settings, doc: &Value) -> Result<String, String> {
    let Some(subject) = doc.get("subject") else { return Err("no subject".into()) };
    let Some(reference) = str_at(subject, "reference") else {
        return Err("its subject has no reference".into());
    };
    let local = if reference.starts_with("http://") || reference.starts_with("https://") {
        match reference.strip_prefix(&s.base_url).and_then(|r| r.strip_prefix('/')) {
            Some(r) => r,
            None => return Err("its subject is a resource on another server".into()),
        }
    } else {
        reference
    };
    let mut parts = local.split('/');
    let (kind, id) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if kind != "Patient" {
        let kind: String = kind.chars().filter(|c| c.is_ascii_alphabetic()).take(40).collect();
        return Err(format!("its subject is a {kind}, not a Patient"));
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) | (Some("_history"), Some(_), None) => {}
        _ => return Err("its subject is not a Patient reference".into()),
    }
    if !is_fhir_id(id) {
        return Err("its subject's Patient id is not a FHIR id".into());
    }
    Ok(id.to_string())
}

/// The keys of a Patient resource (`patient_id` is its id on the server).
pub fn patient_keys(s: &Settings, patient_id: &str, patient: &Value) -> Vec<PatientKey> {
    let mut keys = Vec::new();
    for ident in patient.get("identifier").and_then(Value::as_array).into_iter().flatten() {
        let (Some(system), Some(value)) = (str_at(ident, "system"), str_at(ident, "value")) else { continue };
        if s.identifier_systems.as_ref().is_some_and(|allowed| !allowed.iter().any(|a| a == system)) {
            continue;
        }
        let key = PatientKey { scheme: SCHEME_IDENTIFIER.into(), value: format!("{system}|{value}") };
        if !keys.iter().any(|k: &PatientKey| k.value == key.value) {
            keys.push(key);
        }
    }
    keys.push(PatientKey { scheme: SCHEME_PATIENT.into(), value: format!("{}/Patient/{patient_id}", s.base_url) });
    if let Some(nb) = name_birthdate(patient) {
        keys.push(PatientKey { scheme: SCHEME_NAME_BIRTHDATE.into(), value: nb });
    }
    keys
}

/// `Family|Given|YYYY-MM-DD` from the official name (else the first) and
/// a full birth date.
fn name_birthdate(patient: &Value) -> Option<String> {
    let birth = str_at(patient, "birthDate")?;
    let b = birth.as_bytes();
    let full_date = birth.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !full_date {
        return None;
    }
    let names: Vec<&Value> = patient.get("name").and_then(Value::as_array)?.iter().collect();
    let name = names.iter().find(|n| str_at(n, "use") == Some("official")).or(names.first())?;
    let family = str_at(name, "family")?;
    let given = name
        .get("given")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(Value::as_str)
        .map(str::trim)
        .find(|g| !g.is_empty())?;
    if family.contains('|') || given.contains('|') {
        return None;
    }
    Some(format!("{family}|{given}|{birth}"))
}

/// The document's type: the first LOINC coding, else the first coding.
pub fn kind(doc: &Value) -> Option<Coding> {
    let concept = doc.get("type");
    let all = codings(concept);
    let c = all
        .iter()
        .find(|c| str_at(c, "system") == Some(LOINC) && str_at(c, "code").is_some())
        .or_else(|| all.iter().find(|c| str_at(c, "code").is_some()))?;
    let display = str_at(c, "display").or_else(|| concept.and_then(|t| str_at(t, "text"))).unwrap_or_default();
    Some(Coding {
        system: str_at(c, "system").unwrap_or_default().to_string(),
        code: str_at(c, "code")?.to_string(),
        display: display.to_string(),
    })
}

/// `author[0].display`, else `custodian.display`.
pub fn author(doc: &Value) -> Option<String> {
    doc.get("author")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| str_at(a, "display"))
        .or_else(|| doc.get("custodian").and_then(|c| str_at(c, "display")))
        .map(str::to_string)
}

pub fn string(doc: &Value, key: &str) -> Option<String> {
    str_at(doc, key).map(str::to_string)
}

/// A file extension for a MIME type, for display names.
pub fn extension(content_type: &str) -> &'static str {
    match content_type {
        "application/pdf" => "pdf",
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/tiff" => "tif",
        "text/plain" => "txt",
        "text/html" => "html",
        "application/xml" | "text/xml" => "xml",
        "application/dicom" => "dcm",
        "image/gif" => "gif",
        _ => "bin",
    }
}
