//! ferry document source: the documents people uploaded through `ferry
//! serve`'s records API (`POST /api/v1/patients/{guid}/documents`), so an
//! upload reaches the practice platform through the same sinks as a
//! provider's documents — upload → platform is one flow.
//!
//! The service keeps each upload in its object store as
//! `documents/{patientGuid}/{id}.{ext}` with a JSON sidecar
//! `documents/{patientGuid}/{id}.json` (its id, patient, type, date,
//! title, checksum, and whether it was deleted). This source reads those
//! through the stage's `object-store` grant — it never sees the service's
//! database — and hands each live document on with the patient key
//! `ferry-patient = {patientGuid}`; the bytes go from the store to the
//! host's spool without entering the plugin.
//!
//! ```toml
//! [source]
//! plugin = "registry-documents"
//! grants.object_store = { kind = "s3", bucket = "clinic-documents" }   # the same as [serve] store
//! config = { page_size = 20 }
//!
//! [resolver]
//! plugin = "fhir-resolver"     # patient_id_scheme = "ferry-patient": the record's guid is the platform's Patient id
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `prefix` | `"documents/"` | where the service keeps uploads (a key prefix ending in `/`) |
//! | `page_size` | `20` | documents per scan call, 1–500 (each is copied to the spool in the call) |
//! | `overlap_minutes` | `10` | each pass looks again at documents uploaded up to this long before the newest one seen, 0–1440: an upload whose bytes took longer to reach the store than a later one's is not passed over (what is already stored is skipped by its checksum) |
//!
//! **Incremental**: document ids are time-ordered (UUID version 7), and
//! the cursors are positions in that order, so the source is *resumable*:
//! each pass starts where the last settled, less the overlap. A deleted
//! document (sidecar `deleted: true`) is a `skip` notice and is never
//! sent; one whose bytes are missing or do not match the sidecar's
//! checksum is a `fail` notice. Ids, guids and keys are no PHI; titles
//! appear in no log.

use ferry_plugin_sdk::object_store::{self, Fetched, Listing};
use ferry_plugin_sdk::serde_json::{self, Value};
use ferry_plugin_sdk::types::{Coding, DocumentFacts, HostError, Item, PatientKey, StageError};
use ferry_plugin_sdk::{
    debug, permanent, serde, Context, Document, DocumentPage, DocumentSource, Notice, NoticeOutcome,
};

/// The key scheme of a document's patient: the service's patient guid.
pub const SCHEME: &str = "ferry-patient";
/// Objects asked for per listing call.
const LIST_PAGE: u32 = 1000;
/// Most objects under the prefix one scan looks at.
const MAX_OBJECTS: usize = 2_000_000;

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub prefix: Option<String>,
    pub page_size: Option<u32>,
    pub overlap_minutes: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub prefix: String,
    pub page_size: usize,
    pub overlap_ms: u64,
}

fn invalid(key: &str, why: &str) -> StageError {
    permanent(format!("invalid [source.config] {key}: {why}"))
}

impl Settings {
    pub fn new(c: Config) -> Result<Settings, StageError> {
        let prefix = c.prefix.unwrap_or_else(|| "documents/".into());
        if !prefix.ends_with('/') || prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
            return Err(invalid("prefix", "must be a relative key prefix ending in `/`, e.g. \"documents/\""));
        }
        let page_size = c.page_size.unwrap_or(20);
        if !(1..=500).contains(&page_size) {
            return Err(invalid("page_size", "must be 1 to 500"));
        }
        let overlap = c.overlap_minutes.unwrap_or(10);
        if overlap > 1440 {
            return Err(invalid("overlap_minutes", "must be 0 to 1440 (a day)"));
        }
        Ok(Settings { prefix, page_size: page_size as usize, overlap_ms: overlap as u64 * 60_000 })
    }
}

/// The object-store calls (the host, or a fake in tests).
pub trait Bucket {
    fn list(&mut self, prefix: &str, cursor: Option<String>, limit: u32) -> Result<Listing, HostError>;
    fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn get_to_spool(&mut self, key: &str) -> Result<Option<Fetched>, HostError>;
}

pub struct HostBucket;

impl Bucket for HostBucket {
    fn list(&mut self, prefix: &str, cursor: Option<String>, limit: u32) -> Result<Listing, HostError> {
        object_store::list_objects(prefix, cursor.as_deref(), limit)
    }
    fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        object_store::get_bytes(key)
    }
    fn get_to_spool(&mut self, key: &str) -> Result<Option<Fetched>, HostError> {
        object_store::get_to_spool(key)
    }
}

/// A document id the service gives out: a lowercase UUID.
pub fn valid_id(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_digit() || ('a'..='f').contains(&c)
            }
        })
}

/// The milliseconds in a time-ordered id (its first 48 bits).
pub fn id_ms(id: &str) -> Option<u64> {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// The smallest id of millisecond `ms`: a cursor before every id made then.
pub fn floor_id(ms: u64) -> String {
    let h = format!("{:012x}", ms & 0xffff_ffff_ffff);
    format!("{}-{}-0000-0000-000000000000", &h[..8], &h[8..12])
}

/// A sidecar in the listing: (id, patient guid, its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub guid: String,
    pub sidecar: String,
}

/// `{prefix}{guid}/{id}.json` → its entry; anything else is not a sidecar.
pub fn entry(prefix: &str, key: &str) -> Option<Entry> {
    let rest = key.strip_prefix(prefix)?;
    let (guid, file) = rest.split_once('/')?;
    let id = file.strip_suffix(".json")?;
    let guid_ok = !guid.is_empty()
        && guid.len() <= 128
        && !guid.starts_with('.')
        && guid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (guid_ok && valid_id(id)).then(|| Entry { id: id.to_owned(), guid: guid.to_owned(), sidecar: key.to_owned() })
}

/// What one sidecar says, checked against where it was found.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub key: String,
    pub content_type: String,
    pub sha256: String,
    pub title: Option<String>,
    pub kind: Option<Coding>,
    pub date: Option<String>,
    pub deleted: bool,
}

pub fn parse_sidecar(prefix: &str, e: &Entry, bytes: &[u8]) -> Result<Sidecar, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|_| "the sidecar is not JSON".to_string())?;
    if v.get("ferry").and_then(Value::as_str) != Some("document") {
        return Err("the sidecar is not a ferry document's".into());
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if text("id").as_deref() != Some(e.id.as_str()) || text("patientGuid").as_deref() != Some(e.guid.as_str()) {
        return Err("the sidecar names another document or patient than its key".into());
    }
    let key = text("key").ok_or("the sidecar has no `key`")?;
    let own = format!("{prefix}{}/{}.", e.guid, e.id);
    if !key.starts_with(&own) || key.ends_with(".json") || key[own.len()..].contains('/') {
        return Err("the sidecar's `key` is not the document's own".into());
    }
    let sha256 = text("sha256").filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let sha256 = sha256.ok_or("the sidecar has no SHA-256")?.to_ascii_lowercase();
    let content_type = text("contentType").filter(|c| c.contains('/')).ok_or("the sidecar has no content type")?;
    let kind = v.get("type").filter(|t| t.is_object()).and_then(|t| {
        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let code = s("code");
        (!code.is_empty()).then(|| Coding { system: s("system"), code, display: s("display") })
    });
    Ok(Sidecar {
        key,
        content_type,
        sha256,
        title: text("title").filter(|t| !t.trim().is_empty()),
        kind,
        date: text("date"),
        deleted: v.get("deleted").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// The configured stage.
pub struct RegistryDocuments {
    pub s: Settings,
}

impl RegistryDocuments {
    /// Every sidecar under the prefix, by id.
    fn entries(&self, b: &mut dyn Bucket) -> Result<Vec<Entry>, StageError> {
        let mut out = Vec::new();
        let mut cursor = None;
        let mut seen = 0usize;
        loop {
            let page = b.list(&self.s.prefix, cursor.take(), LIST_PAGE).context("listing the uploaded documents")?;
            seen += page.objects.len();
            if seen > MAX_OBJECTS {
                return Err(permanent(format!(
                    "more than {MAX_OBJECTS} objects under `{}`: is the prefix right?",
                    self.s.prefix
                )));
            }
            out.extend(page.objects.iter().filter_map(|o| entry(&self.s.prefix, &o.key)));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    pub fn scan_page(&mut self, cursor: Option<String>, b: &mut dyn Bucket) -> Result<DocumentPage, StageError> {
        if let Some(c) = &cursor {
            if !valid_id(c) {
                return Err(permanent(format!("the cursor `{c}` is not a document id (the ledger's resume point?)")));
            }
        }
        let after = cursor.clone().unwrap_or_default();
        let entries = self.entries(b)?;
        let mut documents = Vec::new();
        let mut notices = Vec::new();
        let mut last: Option<&Entry> = None;
        for e in entries.iter().filter(|e| e.id > after) {
            if documents.len() + notices.len() >= self.s.page_size {
                break;
            }
            last = Some(e);
            match self.document(e, b)? {
                Found::Doc(d) => documents.push(*d),
                Found::Notice(n) => notices.push(n),
                Found::Gone => {}
            }
        }
        if documents.is_empty() && notices.is_empty() {
            // the end of the pass, resumable: next time from the newest
            // seen, less the overlap (never past where this pass began)
            // (nothing at all yet: a complete scan, from the top next time)
            let newest = entries.last().and_then(|e| id_ms(&e.id));
            let resume = match newest {
                None => cursor,
                Some(ms) => {
                    let back = floor_id(ms.saturating_sub(self.s.overlap_ms));
                    Some(if after.is_empty() || back < after { back } else { after })
                }
            };
            return Ok(DocumentPage { documents, notices, next_cursor: resume });
        }
        Ok(DocumentPage { documents, notices, next_cursor: last.map(|e| e.id.clone()) })
    }

    /// One sidecar's document, or why not.
    fn document(&mut self, e: &Entry, b: &mut dyn Bucket) -> Result<Found, StageError> {
        let notice =
            |outcome, reason: String| Found::Notice(Notice { subject: format!("document {}", e.id), outcome, reason });
        let Some(bytes) = b.get_bytes(&e.sidecar).context("reading a document's sidecar")? else {
            return Ok(Found::Gone); // removed since the listing
        };
        let sc = match parse_sidecar(&self.s.prefix, e, &bytes) {
            Ok(sc) => sc,
            Err(why) => return Ok(notice(NoticeOutcome::Fail, format!("{why} ({})", e.sidecar))),
        };
        if sc.deleted {
            return Ok(notice(NoticeOutcome::Skip, "deleted in ferry before it was sent".into()));
        }
        let Some(fetched) = b.get_to_spool(&sc.key).context("copying a document to the spool")? else {
            return Ok(notice(NoticeOutcome::Fail, format!("its bytes are not in the store ({})", sc.key)));
        };
        if fetched.info.sha256.as_deref().map(str::to_ascii_lowercase).as_deref() != Some(sc.sha256.as_str()) {
            return Ok(notice(
                NoticeOutcome::Fail,
                format!("the bytes at {} are not the ones uploaded (SHA-256 differs)", sc.key),
            ));
        }
        debug(&format!("registry-documents: {} of {}", e.id, e.guid));
        let ext = sc.key.rsplit('.').next().unwrap_or("bin");
        let item = Item {
            id: e.id.clone(),
            patient_keys: vec![PatientKey { scheme: SCHEME.into(), value: e.guid.clone() }],
            display_name: format!("{}.{ext}", e.id),
            file: fetched.file,
            size: fetched.info.size,
            attributes: vec![("registry.document-id".into(), e.id.clone()), ("registry.key".into(), sc.key.clone())],
        };
        let facts = DocumentFacts {
            content_type: sc.content_type,
            kind: sc.kind,
            date: sc.date,
            title: sc.title,
            author: None,
        };
        Ok(Found::Doc(Box::new(Document { item, facts })))
    }
}

/// What one sidecar gave.
enum Found {
    Doc(Box<Document>),
    Notice(Notice),
    Gone,
}

impl DocumentSource for RegistryDocuments {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        Ok(RegistryDocuments { s: Settings::new(config)? })
    }

    fn scan(&mut self, cursor: Option<String>) -> Result<DocumentPage, StageError> {
        self.scan_page(cursor, &mut HostBucket)
    }
}

ferry_plugin_sdk::document_source_plugin!(RegistryDocuments);

#[cfg(test)]
mod tests;
