//! ferry document source: a healthcare provider's FHIR R4 server.
//!
//! A hospital or a lab that runs a FHIR server publishes its documents for
//! a clinic as `DocumentReference`s (what the document is, whose, when)
//! pointing at the bytes (a `Binary`, another url, or base64 inline). This
//! source reads them **incrementally**: each pass asks only for what was
//! updated since the last one (`_lastUpdated`), so a server with years of
//! documents is not read in full every few minutes, and turns each into a
//! document with the patient's keys and what is known of it (LOINC type,
//! date, title, author), which the host hands to the later stages as
//! `document.*` metadata.
//!
//! ```toml
//! [source]
//! plugin = "fhir-documents"
//! # the host adds the credential (e.g. a bearer token) to requests to this
//! # host; the plugin never sees it
//! grants.http = ["fhir.hospital.example"]
//!
//! [source.config]
//! base_url = "https://fhir.hospital.example/r4"
//! since = "2024-01-01"
//! types = ["11502-2", "18842-5"]          # lab reports, discharge summaries
//! identifier_systems = ["urn:oid:1.2.276.0.76.4.8"]
//!
//! [resolver]
//! plugin = "fhir-resolver"                # or any resolver of these keys
//! ```
//!
//! ## Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | required | the FHIR R4 base, `http` or `https`, e.g. `https://fhir.example.org/r4`; no credentials, query or fragment |
//! | `page_size` | `20` | documents (and notices) per scan call, 1–200: each call downloads the attachments of its page, so keep it well under the call deadline |
//! | `since` | none | ISO 8601 date (`2024-01-31`) or instant with a time zone (`2024-01-31T08:00:00Z`): documents last updated before it are ignored |
//! | `types` | all | LOINC codes (`"11502-2"`); only DocumentReferences with one of them in `type` (system `http://loinc.org`) are read |
//! | `status` | `"current"` | the `DocumentReference.status` read: `current`, `superseded` or `entered-in-error` |
//! | `server_filters` | `false` | also send `status` and `type` as search parameters (fewer entries over the wire); leave off for servers that do not support them — the filtering is done here either way |
//! | `identifier_systems` | all | `Patient.identifier` systems that become `fhir-identifier` keys |
//! | `content_types` | PDF, JPEG, PNG, TIFF, text/plain | MIME types taken, best first: of a DocumentReference's attachments the best-ranked one is read |
//! | `timeout_ms` | `30000` | per request, 1–600000 (the host also caps it at the call's deadline) |
//!
//! There is **no token or secret** here: credentials are the host's
//! business (the pipeline's http grant adds them to requests to the
//! granted host). Every request is a GET sent with the host's `retry`.
//!
//! ## What is read
//!
//! `GET {base}/DocumentReference?_lastUpdated=ge{since}&_sort=_lastUpdated&_count=N`
//! (`Accept: application/fhir+json`; with `server_filters` also
//! `&status=…&type=http://loinc.org|code,…`), paged by the Bundle's
//! `link[relation=next]`. `N` is `page_size` plus the ids to pass over
//! (at most 1000). Entries whose `status` or `type` do not match are passed
//! over silently (debug log). For each other DocumentReference:
//!
//! - the attachment: of `content[].attachment` with `data` or `url`, the
//!   one whose `contentType` ranks best in `content_types` (none: a `skip`
//!   notice naming the types found). A `url` relative to the base
//!   (`Binary/x` → `{base}/Binary/x`; `/x` is under the base's origin) or
//!   absolute (http/https; the host's allow-list decides: a host not in
//!   `grants.http` is a `fail` notice naming the host to add) is
//!   downloaded into the host's spool (`http.send-to-spool`, `Accept:` the
//!   content type): 404/410 and other 4xx → `fail` notice, 401/403 from
//!   the base's host → a permanent error (credentials), 408/429/5xx
//!   (after the host's retries) and transport failures → a retryable
//!   error of the scan, a body above `[pipeline] spool_max` → `fail`.
//!   Inline `data` is base64-decoded (at most 16 MiB) and kept with
//!   `http.spool-bytes`. `attachment.size`, when present, must equal the
//!   bytes that arrived, and for inline data `attachment.hash` (base64
//!   SHA-1) must match, else a `fail` notice. Other url schemes and
//!   `#contained` references: `skip`;
//! - the patient: `subject` must reference a `Patient` of this server
//!   (`Patient/x`, `{base}/Patient/x`, optionally `/_history/n`; else a
//!   `skip` notice), which is read once per instance
//!   (`GET {base}/Patient/x`, cached, at most 10 000 patients) and gives
//!   the item's keys (in this order):
//!   - `fhir-identifier` = `system|value` for each `identifier` with both
//!     (only the `identifier_systems`, when set);
//!   - `fhir-patient` = `{base}/Patient/x`, the absolute Patient URL;
//!   - `name-birthdate` = `Family|Given|YYYY-MM-DD` from the `official`
//!     name (else the first) with `family` and a `given`, and a full
//!     `birthDate`;
//!
//!   a Patient that is not there (404/410) is a `fail` notice.
//!
//! The item: `id` = `DocumentReference/{id}` (stable across scans and
//! versions; no PHI), `file` the spool file, `size` its size,
//! `display_name` = `attachment.title` (with the extension of its content
//! type added when it has none) or `{id}.{ext}`; attributes `fhir.id`,
//! `fhir.version-id` (`meta.versionId`, when present), `fhir.last-updated`
//! (`meta.lastUpdated` as written) and `fhir.source` (the base). The
//! facts: the attachment's content type, `kind` = the first LOINC coding
//! of `type` (else the first coding; display falls back to `type.text`),
//! `date` = `date` else `attachment.creation`, `title` =
//! `attachment.title` else `description`, `author` = `author[0].display`
//! else `custodian.display`. Notices' subjects are the item id.
//!
//! Patient names, identifiers and birth dates appear in debug logs only,
//! never in errors, notices or info+ logs.
//!
//! ## Cursors and resuming
//!
//! Each cursor is a **position** that keeps its meaning (see [`cursor`]):
//! `{"v":1,"since":"<lastUpdated>","seen":["id",…]}`, i.e. "updated at or
//! after `since`, except these ids with exactly that `lastUpdated`" —
//! never a server's paging link. A scan searches from `since` (`ge`),
//! passes over entries before it and the `seen` ones, and follows
//! `link[next]` within the call (at most 50 pages) while whole pages are
//! passed over (ties). It returns at most `page_size` documents and
//! notices with the position after them; when nothing new is left it
//! returns an **empty page with the (unchanged) position**, which tells
//! the host the cursors are resumable: the pass ends there and the next
//! pass starts from the position the host keeps (the cursor before the
//! first page holding a document that did not settle, else the last).
//! The configured `since` is a floor for any cursor.
//!
//! `seen` holds at most 900 ids (a cursor stays under 64 KiB). Should more
//! than 900 DocumentReferences share one `lastUpdated` (a bulk import), or
//! 50 pages in a row hold only ids handed out before, the pass goes on in
//! paging mode (below) from there.
//!
//! **Paging mode** (degraded): if a search answer is evidently not sorted
//! by `lastUpdated` (the server ignores `_sort`) or an entry has no
//! `meta.lastUpdated`, positions cannot be trusted. The source then pages
//! through the server's `link[next]` with a non-resumable cursor
//! `{"v":1,"next":"<url>","skip":n}` and ends the scan with no cursor (a
//! full scan: the host clears the resume point, so every pass reads
//! everything, the stable item ids keep it idempotent); a warning (once
//! per instance, without PHI) says so. Only the configured `since` is
//! applied there.
//!
//! ## Limits
//!
//! - The SHA-1 `attachment.hash` is checked for inline data only;
//!   downloads are checked by size (the host keeps their SHA-256).
//! - One attachment per DocumentReference; `relatesTo`, `context` and
//!   `category` are not read.
//! - JSON answers are at most 16 MiB (the host's limit for `http.send`),
//!   nested at most 128 deep (the JSON parser's limit); anything else is
//!   a retryable error naming the server.
//! - Paging mode follows at most 10,000 pages in one pass, and never a
//!   `next` link back to the page itself: links that go round end the
//!   pass with a failed notice (`DocumentReference search`) saying so.
//!
//! The logic (settings, cursors, the search and its pages, the
//! DocumentReference and Patient) is unit-tested natively; capability
//! calls go through the [`Transport`] trait.
use ferry_plugin_sdk::http::{self, Request, Response, Spooled};
use ferry_plugin_sdk::types::{HostError, StageError};
use ferry_plugin_sdk::{debug, DocumentPage, DocumentSource};

pub mod config;
pub mod cursor;
pub mod fhir;
pub mod instant;
pub mod scan;

pub use config::{Config, Settings};
pub use scan::{Scanner, Transport};

/// The real host.
pub struct HostTransport;

impl Transport for HostTransport {
    fn send(&mut self, request: &Request) -> Result<Response, HostError> {
        http::send(request)
    }
    fn send_to_spool(&mut self, request: &Request) -> Result<Spooled, HostError> {
        http::send_to_spool(request, None)
    }
    fn spool_bytes(&mut self, body: &[u8]) -> Result<Spooled, HostError> {
        http::spool_bytes(body)
    }
}

/// The configured stage.
struct FhirDocuments(Scanner);

impl DocumentSource for FhirDocuments {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        let settings = Settings::new(config)?;
        debug(&settings.describe());
        Ok(FhirDocuments(Scanner::new(settings)))
    }

    fn scan(&mut self, cursor: Option<String>) -> Result<DocumentPage, StageError> {
        self.0.scan(&mut HostTransport, cursor.as_deref())
    }
}

ferry_plugin_sdk::document_source_plugin!(FhirDocuments);

#[cfg(test)]
mod tests;
