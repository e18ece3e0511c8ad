//! ferry store: each item as a document in a practice's **Open Dental**
//! (its Imaging module), through the Open Dental API, for the patient the
//! resolver found (the patient guid is Open Dental's `PatNum`).
//!
//! Requests go through the host's `http` capability: the pipeline grants
//! the API's host in `grants.http`, and **the host adds the credential**
//! (`Authorization: ODFHIR {DeveloperKey}/{CustomerKey}`) from
//! `grants.http_auth`: this plugin has no secret in its config and never
//! sees the keys. The file's bytes never enter the plugin either: the host
//! streams them, base64-encoded, into the upload's JSON (`http.send-file`).
//!
//! ## The pipeline file
//!
//! ```toml
//! [store]
//! plugin = "opendental-store"
//! grants.http = ["api.opendental.com"]
//!
//! [store.grants.http_auth."api.opendental.com"]
//! kind = "header"
//! name = "Authorization"
//! value = "ODFHIR ${OD_DEVELOPER_KEY}/${OD_CUSTOMER_KEY}"
//!
//! [store.config]
//! base_url = "https://api.opendental.com/api/v1"
//! doc_category = 190          # definition.DefNum of an image category (definition.Category = 18)
//! img_type = "Radiograph"     # X-ray pipelines; default "Document"
//! # description = "{title}"   # see the placeholders below
//! # timeout_ms = 60000
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | required | the API base, `http` or `https`, e.g. `https://api.opendental.com/api/v1` (or a Local API / API Service address) |
//! | `doc_category` | required | the image category: a `definition.DefNum` with `definition.Category = 18` (the API's Definitions GET lists definitions; Open Dental's own example uses 47, "Patient Pictures") |
//! | `img_type` | `Document` | `Document`, `Radiograph`, `Photo`, `File` or `Attachment` (the API's `ImgType`; case-insensitive here) |
//! | `description` | `{title}` | the `Description` shown in the image category tree; placeholders below; ferry appends its tag |
//! | `timeout_ms` | `60000` | per request, 1–600000 (the API itself gives up after 60 s: `504`) |
//!
//! Description placeholders (`{{` and `}}` are literal braces; an unknown
//! placeholder is a config error):
//!
//! | placeholder | value |
//! |---|---|
//! | `{title}` | `document.title`, else `document.type.display`, else the item's display name |
//! | `{type}` | `document.type.display`, else `modality` (DICOM), else empty |
//! | `{name}` | the item's display name (e.g. Sidexis' imageName) |
//! | `{date}` | the document's date as `yyyy-MM-dd` (see DateCreated), else empty |
//! | `{modality}` | `modality` (DICOM, e.g. `IO`, `PX`), else empty |
//!
//! Line breaks and control characters become spaces, runs of spaces one;
//! an empty result falls back to the display name. The text before ferry's
//! suffix is cut to keep the whole `Description` within 255 characters (a
//! precaution: the width of `document.Description` was not verified).
//!
//! ## What is sent
//!
//! The patient guid must be a PatNum (digits only; anything else is a
//! permanent error: check the resolver). For each item:
//!
//! 1. **Hash**: the host computes the file's SHA-256 (`fs.sha256`, streamed
//!    host-side in chunks; the file never enters the guest). ferry's tag is
//!    `[ferry:<first 12 hex digits>]`. 12 hex digits are 48 bits: two
//!    different files of one patient share a tag with probability about
//!    n²/2⁴⁹ (n = 10,000 documents: 2 × 10⁻⁷), while 8 (32 bits) would
//!    already be 1 % at n = 9,300; a longer tag only costs room in the
//!    Description a person reads.
//! 2. **Dedupe**: `GET /documents?PatNum={n}` (and `&Offset=100`, `200`, …
//!    while a page has 100 rows, the API's page size). If any document's
//!    `Description` contains the tag → `unchanged`, nothing uploaded. The
//!    listing is spooled (`http.send-to-spool`) and read as a stream: Open
//!    Dental keeps a document uploaded through the API as base64 in
//!    `document.Note` until someone opens it, and the listing returns
//!    `Note`, so a page can be large; only `DocNum` and `Description` are
//!    kept.
//! 3. **Upload**: `POST /documents/Upload` with `{PatNum, rawBase64,
//!    extension, Description, DateCreated, DocCategory, ImgType}`, made by
//!    the host from a template (`rawBase64` streamed from the file),
//!    **without the host's retry**: the API has no idempotency key, so a
//!    retried create could make a second document. A failed upload is
//!    retried by ferry on a later attempt, and that attempt's dedupe list
//!    finds the document if the failed one had in fact been created.
//!
//! The location ferry records is `opendental:Document/{DocNum}`.
//!
//! The API takes JSON bodies of at most 16.8M characters, so files above
//! about 12.5 MB (their base64 plus the fields) are refused with a
//! permanent error before anything is sent; `POST /documents/UploadSftp`
//! (Open Dental pulls the file from an SFTP server of yours) is the API's
//! way for those and is not supported here.
//!
//! - `extension`: from the display name's extension (`0000_17.dcm` →
//!   `.dcm`), else `document.content-type`, else the file's first bytes
//!   (DICOM, PDF, JPEG, PNG, TIFF, GIF, BMP), else `.dcm` when DICOM
//!   metadata is present; otherwise a permanent error. Sent with its dot, as
//!   the API's example (`".jpg"`).
//! - `DateCreated` (`yyyy-MM-dd HH:mm:ss`): from `document.date`, else
//!   `acquisition.date`, else `study.date`: a date gives `00:00:00`; a
//!   date-time keeps its wall-clock time as written (a zone is dropped:
//!   Open Dental's DateCreated has none). Partial or unreadable dates are
//!   left out (with a warning), and Open Dental then uses today's date.
//!
//! ## Changed documents
//!
//! When an item ferry stored before comes back with other bytes, the host
//! passes where the earlier version went (`ferry.previous-location` =
//! `opendental:Document/{n}`). The Open Dental API cannot replace a
//! document's file (`PUT /documents/{DocNum}` changes only its Image Info:
//! Description, DateCreated, DocCategory, ImgType, ToothNumbers, ProvNum,
//! PrintHeading), so the new version is uploaded as a new document whose
//! Description says `(replaces DocNum {n})`; the old one is left as it
//! is, for a person to delete if they wish (ferry never deletes).
//!
//! ## Errors
//!
//! - `401`/`403` → permanent: the developer or customer key of the grant
//!   was refused, or the developer key lacks the API permission for
//!   documents.
//! - `404` → permanent: the PatNum is not in Open Dental ("Patient not
//!   found"; check the resolver).
//! - `400` → permanent with the API's explanation (at most 200
//!   characters), **except** when the explanation names the eConnector or
//!   a timeout/connection problem: Open Dental documents that a `400` also
//!   covers "the eConnector is not running" and "request timeouts and other
//!   dental office connectivity issues", which pass; those are retryable.
//! - `408`, `429`, `5xx` (the API's 60 s limit is `504`) and transport
//!   failures → retryable. `410` (method deprecated) and others → permanent.
//!
//! Messages carry PatNums, DocNums and the API's explanation, never the
//! Description or any name.
//!
//! ## What Open Dental does with the file (from its API documentation)
//!
//! `POST /documents/Upload` stores the base64 in `document.Note` as
//! `_rawBase64_:{extension}_{base64}`; the file is written to the
//! patient's image folder (or database/cloud storage) when a user first
//! opens the document, and the note is then removed. The API lists `.dcm`
//! among the example extensions, so a DICOM X-ray is accepted and kept as a
//! `.dcm` file; how Open Dental's Imaging module displays a given DICOM
//! (transfer syntax, multi-frame) was not verified here — check with the
//! practice before relying on previews there.
//!
//! ## Limits
//!
//! - The dedupe relies on the tag in `Description`: a person who edits it
//!   away makes the next run of that same file upload it again.
//! - Documents are found per patient: the same file for two patients is
//!   two documents.
//! - One listing per item (plus one request per further 100 documents of
//!   the patient) and one upload: the cloud API throttles per customer key
//!   (one request per second for a developer key with write permissions),
//!   so expect about two seconds per new item there; the Local API and the
//!   API Service are not throttled.
//!
//! The logic (settings, templates, dates, extensions, listing, statuses)
//! does not call the host and is unit-tested natively; capability calls
//! go through the [`Host`] trait.
use std::io::{BufReader, Read};

use ferry_plugin_sdk::http::{self, Base64Body, FileBody, Request, Response};
use ferry_plugin_sdk::serde_json::{self, Value};
use ferry_plugin_sdk::status_reason as reason;
use ferry_plugin_sdk::types::{FileRef, HostError, Item, Metadata, StageError, Value as MetaValue};
use ferry_plugin_sdk::{debug, fs, permanent, retryable, serde, warn, FileReader, Store, StoreOutcome, Stored};

/// The stage's `[config]` table, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub base_url: String,
    pub doc_category: u64,
    pub img_type: Option<String>,
    pub description: Option<String>,
    pub timeout_ms: Option<u32>,
}

pub const DEFAULT_TIMEOUT_MS: u32 = 60_000;
pub const MAX_TIMEOUT_MS: u32 = 600_000;
/// The API's page size (its hard limit per request).
pub const PAGE_SIZE: usize = 100;
/// Hex digits of the SHA-256 in ferry's tag.
pub const TAG_HEX: usize = 12;
/// The longest `Description` ferry writes.
pub const MAX_DESCRIPTION: usize = 255;
/// Longest API explanation quoted in an error.
pub const MAX_EXPLANATION: usize = 200;
/// The largest JSON body the API takes: "16.8M characters".
pub const MAX_BODY: u64 = 16_800_000;
/// The API's `ImgType` values.
pub const IMG_TYPES: [&str; 5] = ["Document", "Radiograph", "Photo", "File", "Attachment"];
/// The metadata key the host sets for a changed item.
pub const PREVIOUS_LOCATION: &str = "ferry.previous-location";
/// The prefix of every location this store reports.
pub const LOCATION_PREFIX: &str = "opendental:Document/";

/// One piece of a description template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Title,
    Type,
    Name,
    Date,
    Modality,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The base, without a trailing `/`.
    pub base_url: String,
    /// `host[:port]`, for messages.
    pub api: String,
    pub doc_category: u64,
    pub img_type: &'static str,
    pub template: Vec<Piece>,
    pub timeout_ms: u32,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> StageError {
    permanent(format!("invalid [store.config] {key}: {why}"))
}

impl Settings {
    pub fn new(c: Config) -> Result<Settings, StageError> {
        let base_url = c.base_url.trim().trim_end_matches('/').to_string();
        let api = check_url(&base_url).map_err(|why| invalid("base_url", why))?;
        if c.doc_category == 0 {
            return Err(invalid(
                "doc_category",
                "must be the DefNum of an image category (definition.Category = 18), not 0",
            ));
        }
        let img_type = match &c.img_type {
            None => "Document",
            Some(t) => IMG_TYPES
                .iter()
                .copied()
                .find(|k| k.eq_ignore_ascii_case(t.trim()))
                .ok_or_else(|| invalid("img_type", format!("{t:?} is not one of {}", IMG_TYPES.join(", "))))?,
        };
        let template =
            parse_template(c.description.as_deref().unwrap_or("{title}")).map_err(|why| invalid("description", why))?;
        let timeout_ms = c.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}")));
        }
        Ok(Settings { base_url, api, doc_category: c.doc_category, img_type, template, timeout_ms })
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        format!("Open Dental API at {} (DocCategory {}, ImgType {})", self.api, self.doc_category, self.img_type)
    }

    fn request(&self, method: &str, url: String, retry: bool) -> Request {
        Request {
            method: method.into(),
            url,
            // The API requires Content-Type: application/json on every request.
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Accept".into(), "application/json".into()),
            ],
            body: None,
            timeout_ms: Some(self.timeout_ms),
            retry,
        }
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
        return Err(
            "must not have a query or fragment (it is the API base, e.g. https://api.opendental.com/api/v1)".into()
        );
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("must not contain credentials (the host adds them from grants.http_auth)".into());
    }
    Ok(authority.to_ascii_lowercase())
}

/// Parses a description template.
pub fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("`{{{name}` is not closed (write `{{{{` for a literal brace)")),
                    }
                }
                let piece = match name.as_str() {
                    "title" => Piece::Title,
                    "type" => Piece::Type,
                    "name" => Piece::Name,
                    "date" => Piece::Date,
                    "modality" => Piece::Modality,
                    other => {
                        return Err(format!(
                            "unknown placeholder `{{{other}}}` (known: {{title}}, {{type}}, {{name}}, {{date}}, {{modality}})"
                        ))
                    }
                };
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(piece);
            }
            '}' => return Err("a lone `}` (write `}}` for a literal brace)".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

// ------------------------------------------------------------ the document

fn text<'a>(metadata: &'a Metadata, key: &str) -> Option<&'a str> {
    metadata.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        MetaValue::Text(s) if !s.trim().is_empty() => Some(s.trim()),
        _ => None,
    })
}

/// What the description, date and extension are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub title: Option<String>,
    pub type_display: Option<String>,
    pub modality: Option<String>,
    pub content_type: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss`, when a usable date was found.
    pub date_created: Option<String>,
    /// DICOM metadata (a SOP instance UID or a modality) is present.
    pub dicom: bool,
    /// `opendental:Document/{n}` of the previous version: `n`.
    pub replaces: Option<u64>,
}

impl Facts {
    pub fn from_metadata(metadata: &Metadata) -> Facts {
        let own = |k: &str| text(metadata, k).map(str::to_string);
        let mut date_created = None;
        for key in ["document.date", "acquisition.date", "study.date"] {
            if let Some(raw) = text(metadata, key) {
                match date_created_of(raw) {
                    Some(d) => {
                        date_created = Some(d);
                        break;
                    }
                    None => warn(&format!("{key} is not a full ISO 8601 date or date-time; not used as DateCreated")),
                }
            }
        }
        Facts {
            title: own("document.title"),
            type_display: own("document.type.display"),
            modality: own("modality"),
            content_type: own("document.content-type"),
            date_created,
            dicom: text(metadata, "sop.instance-uid").is_some() || text(metadata, "modality").is_some(),
            replaces: previous_doc_num(metadata),
        }
    }
}

/// The DocNum in `ferry.previous-location`, if it is one of this store's.
pub fn previous_doc_num(metadata: &Metadata) -> Option<u64> {
    let n = text(metadata, PREVIOUS_LOCATION)?.strip_prefix(LOCATION_PREFIX)?;
    if n.is_empty() || n.len() > 19 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|&n| n > 0)
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// `yyyy-MM-dd HH:mm:ss` from an ISO 8601 date (`2024-03-17`) or
/// date-time (`2024-03-17T09:30`, `…:15`, `…:15.250`, with or without a
/// zone, `T` or a space); none for anything else (partial dates too).
pub fn date_created_of(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let (date, time) = match raw.find(['T', ' ']) {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let mut d = date.split('-');
    let (y, m, day) = (digits(d.next()?, 4)?, digits(d.next()?, 2)?, digits(d.next()?, 2)?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=days_in(y, m)).contains(&day) || y == 0 {
        return None;
    }
    let (hh, mm, ss) = match time {
        None => (0, 0, 0),
        Some(t) => {
            // drop a zone: Z, +hh:mm, -hh:mm
            let t = t.strip_suffix('Z').unwrap_or(t);
            let t = match t.rfind(['+', '-']) {
                Some(i) => &t[..i],
                None => t,
            };
            let mut p = t.split(':');
            let hh = digits(p.next()?, 2)?;
            let mm = digits(p.next()?, 2)?;
            let ss = match p.next() {
                None => 0,
                Some(s) => digits(s.split('.').next()?, 2)?,
            };
            if p.next().is_some() || hh > 23 || mm > 59 || ss > 60 {
                return None;
            }
            (hh, mm, ss.min(59))
        }
    };
    Some(format!("{y:04}-{m:02}-{day:02} {hh:02}:{mm:02}:{ss:02}"))
}

fn days_in(y: u32, m: u32) -> u32 {
    match m {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `…` with control characters as spaces, runs of whitespace as one, trimmed.
fn clean(s: &str) -> String {
    let spaced: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Description: the template, then `(replaces DocNum n)` and the tag,
/// within [`MAX_DESCRIPTION`] characters.
pub fn description(s: &Settings, facts: &Facts, display_name: &str, tag: &str) -> String {
    let name = clean(display_name);
    let mut out = String::new();
    for p in &s.template {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Title => {
                let t = facts.title.as_deref().or(facts.type_display.as_deref()).unwrap_or(&name);
                out.push_str(t)
            }
            Piece::Type => out.push_str(facts.type_display.as_deref().or(facts.modality.as_deref()).unwrap_or("")),
            Piece::Name => out.push_str(&name),
            Piece::Date => out.push_str(facts.date_created.as_deref().map_or("", |d| &d[..10])),
            Piece::Modality => out.push_str(facts.modality.as_deref().unwrap_or("")),
        }
    }
    let mut main = clean(&out);
    if main.is_empty() {
        main = if name.is_empty() { "document".into() } else { name };
    }
    let mut suffix = String::new();
    if let Some(n) = facts.replaces {
        suffix.push_str(&format!(" (replaces DocNum {n})"));
    }
    suffix.push(' ');
    suffix.push_str(tag);
    let room = MAX_DESCRIPTION.saturating_sub(suffix.chars().count());
    if main.chars().count() > room {
        main = main.chars().take(room.saturating_sub(1)).collect::<String>().trim_end().to_string();
        main.push('…');
    }
    main + &suffix
}

/// `[ferry:<first 12 hex digits of the SHA-256>]`.
pub fn tag(sha256: &str) -> Result<String, StageError> {
    let hex = sha256.trim().to_ascii_lowercase();
    if hex.len() < TAG_HEX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(retryable("the host's SHA-256 of the item's file is not hex"));
    }
    Ok(format!("[ferry:{}]", &hex[..TAG_HEX]))
}

/// The extension of a file name (`.dcm`), lowercased, if it looks like one.
pub fn extension_of_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let (stem, ext) = base.rsplit_once('.')?;
    let ok = !stem.is_empty() && (1..=8).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric());
    // all digits is more likely a version or a counter than a type
    (ok && !ext.bytes().all(|b| b.is_ascii_digit())).then(|| format!(".{}", ext.to_ascii_lowercase()))
}

/// The extension for a MIME type, if known.
pub fn extension_of_content_type(ct: &str) -> Option<&'static str> {
    let ct = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    Some(match ct.as_str() {
        "application/dicom" => ".dcm",
        "application/pdf" => ".pdf",
        "image/jpeg" | "image/jpg" => ".jpg",
        "image/png" => ".png",
        "image/tiff" => ".tif",
        "image/gif" => ".gif",
        "image/bmp" => ".bmp",
        "text/plain" => ".txt",
        "application/msword" => ".doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => ".docx",
        "application/rtf" | "text/rtf" => ".rtf",
        _ => return None,
    })
}

/// The extension a file's first bytes (at least 132 for DICOM) say.
pub fn extension_of_bytes(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Some(".dcm");
    }
    let starts = |m: &[u8]| head.starts_with(m);
    Some(if starts(b"%PDF-") {
        ".pdf"
    } else if starts(&[0xFF, 0xD8, 0xFF]) {
        ".jpg"
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        ".png"
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        ".tif"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        ".gif"
    } else if starts(b"BM") && head.len() >= 14 {
        ".bmp"
    } else {
        return None;
    })
}

/// The upload's JSON with `placeholder` where the base64 goes.
pub fn upload_template(s: &Settings, pat_num: u64, ext: &str, desc: &str, facts: &Facts, placeholder: &str) -> String {
    let mut m = serde_json::Map::new();
    m.insert("PatNum".into(), Value::from(pat_num));
    m.insert("rawBase64".into(), Value::from(placeholder));
    m.insert("extension".into(), Value::from(ext));
    m.insert("Description".into(), Value::from(desc));
    if let Some(d) = &facts.date_created {
        m.insert("DateCreated".into(), Value::from(d.as_str()));
    }
    m.insert("DocCategory".into(), Value::from(s.doc_category));
    m.insert("ImgType".into(), Value::from(s.img_type));
    serde_json::to_string(&Value::Object(m)).expect("JSON serialises")
}

/// A placeholder that does not occur in `json`.
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

// ---------------------------------------------------------------- answers

/// A number, or a number in a string (the API writes `PatNum` both ways).
#[derive(serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", untagged)]
enum Num {
    N(u64),
    S(String),
}

impl Num {
    fn get(&self) -> Option<u64> {
        match self {
            Num::N(n) => Some(*n),
            Num::S(s) => s.trim().parse().ok(),
        }
    }
}

/// One document of a listing, as much as ferry needs (the rest, `Note`
/// included, is skipped without being kept).
#[derive(serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde")]
struct Entry {
    #[serde(rename = "DocNum")]
    doc_num: Option<Num>,
    #[serde(rename = "Description", default)]
    description: Option<String>,
}

/// A listed document: `(DocNum, Description)`; mounts (DocNum 0) left out.
pub type Listed = (u64, String);

/// Reads a `GET /documents` answer (a JSON array) as a stream: returns the
/// documents and how many rows the page had (mounts included).
pub fn parse_listing(r: impl Read) -> Result<(Vec<Listed>, usize), String> {
    let entries: Vec<Entry> = serde_json::from_reader(BufReader::new(r))
        .map_err(|e| format!("the document list is not the expected JSON array ({e})"))?;
    let rows = entries.len();
    let docs = entries
        .into_iter()
        .filter_map(|e| {
            let n = e.doc_num.as_ref().and_then(Num::get).filter(|&n| n > 0)?;
            Some((n, e.description.unwrap_or_default()))
        })
        .collect();
    Ok((docs, rows))
}

/// The DocNum in an upload's `201` answer.
pub fn created_doc_num(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    #[serde(crate = "ferry_plugin_sdk::serde")]
    struct Created {
        #[serde(rename = "DocNum")]
        doc_num: Num,
    }
    serde_json::from_slice::<Created>(body).ok()?.doc_num.get().filter(|&n| n > 0)
}

/// The API's explanation in an error body (a JSON string, an object with a
/// message, or plain text), bounded and without control characters.
pub fn explanation(body: &[u8]) -> Option<String> {
    let raw = match serde_json::from_slice::<Value>(body) {
        Ok(Value::String(s)) => s,
        Ok(Value::Object(o)) => ["Message", "message", "error", "detail"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string))?,
        Ok(_) => return None,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let all = clean(&raw);
    if all.is_empty() {
        return None;
    }
    let mut out: String = all.chars().take(MAX_EXPLANATION).collect();
    if all.chars().count() > MAX_EXPLANATION {
        out.push('…');
    }
    Some(out)
}

/// Does a `400`'s explanation say the office was out of reach (which
/// passes)? Open Dental answers `400` for eConnector and office
/// connectivity problems too.
pub fn transient_400(explanation: &str) -> bool {
    let e = explanation.to_ascii_lowercase();
    ["econnector", "timed out", "timeout", "time out", "connection", "connectivity", "not running"]
        .iter()
        .any(|w| e.contains(w))
}

/// The error for a status that is not the answer hoped for.
pub fn status_error(s: &Settings, status: u16, body: &[u8], what: &str) -> StageError {
    let said = format!("Open Dental API at {} answered {status}{} {what}", s.api, reason(status));
    let why = explanation(body);
    let quoted = why.as_deref().map(|w| format!(": {w:?}")).unwrap_or_default();
    match status {
        401 | 403 => permanent(format!(
            "{said}{quoted}: the developer key or customer key was refused, or the developer key lacks the API \
             permission for documents; check grants.http_auth of [store] (Authorization = \"ODFHIR \
             {{DeveloperKey}}/{{CustomerKey}}\") and the office's API setup"
        )),
        404 => permanent(format!("{said}{quoted}: check that the resolver yields Open Dental PatNums")),
        400 if why.as_deref().is_some_and(transient_400) => {
            retryable(format!("{said}{quoted}; the office's eConnector or connection; will try again later"))
        }
        408 | 429 | 500..=599 => retryable(format!("{said}{quoted}; will try again later")),
        410 => {
            permanent(format!("{said}{quoted}: the API method was withdrawn; ferry's opendental-store needs an update"))
        }
        _ => permanent(format!("{said}{quoted}; check doc_category and img_type in [store.config]")),
    }
}

/// A host error, with what was being done.
pub fn host_error(s: &Settings, e: HostError, what: &str) -> StageError {
    let mut e: StageError = e.into();
    e.message = format!("calling the Open Dental API at {} ({what}): {}", s.api, e.message);
    e
}

// ------------------------------------------------------------------ host

/// The capability calls the store makes (the host, or a fake in tests).
pub trait Host {
    /// Hex SHA-256 of a file, host-side.
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError>;
    /// Up to `len` bytes from the start of a file.
    fn head(&mut self, file: &FileRef, len: u32) -> Result<Vec<u8>, HostError>;
    /// Sends a request whose answer goes to the spool; the status and a
    /// reader over the body.
    fn send_spooled(&mut self, request: Request) -> Result<(u16, Box<dyn Read>), HostError>;
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError>;
}

/// The real host.
pub struct HostCaps;

impl Host for HostCaps {
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError> {
        fs::sha256(file)
    }
    fn head(&mut self, file: &FileRef, len: u32) -> Result<Vec<u8>, HostError> {
        fs::open(file)?.read(0, len)
    }
    fn send_spooled(&mut self, request: Request) -> Result<(u16, Box<dyn Read>), HostError> {
        let spooled = http::send_to_spool(&request, None)?;
        Ok((spooled.status, Box::new(FileReader::open(&spooled.body)?)))
    }
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError> {
        http::send_file(&request, &body)
    }
}

/// `patient_guid` as a PatNum.
pub fn pat_num(guid: &str) -> Result<u64, StageError> {
    let g = guid.trim();
    let ok = !g.is_empty() && g.len() <= 19 && g.bytes().all(|b| b.is_ascii_digit());
    match ok.then(|| g.parse::<u64>().ok()).flatten().filter(|&n| n > 0) {
        Some(n) => Ok(n),
        None => Err(permanent(
            "the patient guid is not an Open Dental PatNum (digits only); check the pipeline's resolver \
             (opendental-resolver yields PatNums)",
        )),
    }
}

/// The documents of a patient: every page of `GET /documents?PatNum=`.
pub fn list_documents(s: &Settings, host: &mut dyn Host, pat: u64) -> Result<Vec<Listed>, StageError> {
    let mut all = Vec::new();
    let mut offset = 0usize;
    loop {
        let mut url = format!("{}/documents?PatNum={pat}", s.base_url);
        if offset > 0 {
            url.push_str(&format!("&Offset={offset}"));
        }
        let what = format!("listing the documents of PatNum {pat}");
        let (status, mut body) = host.send_spooled(s.request("GET", url, true)).map_err(|e| host_error(s, e, &what))?;
        if status != 200 {
            let mut small = Vec::new();
            let _ = body.by_ref().take(4096).read_to_end(&mut small);
            return Err(status_error(s, status, &small, &what));
        }
        let (docs, rows) =
            parse_listing(body).map_err(|why| retryable(format!("Open Dental API at {} ({what}): {why}", s.api)))?;
        all.extend(docs);
        if rows < PAGE_SIZE {
            return Ok(all);
        }
        offset += rows;
    }
}

/// The extension to upload the item with.
pub fn extension(host: &mut dyn Host, item: &Item, facts: &Facts) -> Result<String, StageError> {
    if let Some(e) = extension_of_name(&item.display_name) {
        return Ok(e);
    }
    if let Some(e) = facts.content_type.as_deref().and_then(extension_of_content_type) {
        return Ok(e.into());
    }
    let head = host.head(&item.file, 132).map_err(StageError::from)?;
    if let Some(e) = extension_of_bytes(&head) {
        return Ok(e.into());
    }
    if facts.dicom {
        return Ok(".dcm".into());
    }
    Err(permanent(
        "cannot tell the file's type (no extension in the display name, no known document.content-type, \
         unknown content): Open Dental needs an extension to open the document",
    ))
}

/// The upload's body is the template plus the file as base64: refuse a
/// file that would make it larger than the API takes ([`MAX_BODY`]).
pub fn check_body_size(file_size: u64, rest: usize) -> Result<(), StageError> {
    let body = file_size.div_ceil(3) * 4 + rest as u64;
    if body > MAX_BODY {
        return Err(permanent(format!(
            "the file is {file_size} bytes; as base64 in POST /documents/Upload that is a {body}-character body, \
             and the Open Dental API takes at most 16.8M characters (files up to about 12.5 MB); larger files \
             need Documents POST UploadSftp, which opendental-store does not support"
        )));
    }
    Ok(())
}

/// Stores one item: the whole protocol.
pub fn store_item(
    s: &Settings,
    host: &mut dyn Host,
    item: &Item,
    metadata: &Metadata,
    patient: &str,
) -> Result<Stored, StageError> {
    let pat = pat_num(patient)?;
    let sha = host.sha256(&item.file).map_err(|e| {
        let mut e: StageError = e.into();
        e.message = format!("hashing the item's file: {}", e.message);
        e
    })?;
    let tag = tag(&sha)?;
    if let Some((doc, _)) = list_documents(s, host, pat)?.into_iter().find(|(_, d)| d.contains(&tag)) {
        debug(&format!("{} is DocNum {doc} of PatNum {pat} already ({tag})", item.id));
        return Ok(Stored { location: format!("{LOCATION_PREFIX}{doc}"), outcome: StoreOutcome::Unchanged });
    }
    let facts = Facts::from_metadata(metadata);
    let ext = extension(host, item, &facts)?;
    let desc = description(s, &facts, &item.display_name, &tag);
    let probe = upload_template(s, pat, &ext, &desc, &facts, "");
    let placeholder = placeholder_for(&probe);
    let template = upload_template(s, pat, &ext, &desc, &facts, &placeholder);
    check_body_size(item.size, template.len() - placeholder.len())?;
    let what = format!("uploading a document for PatNum {pat}");
    // Not idempotent: no host retry (the next attempt's listing finds a
    // document that was created although the answer was lost).
    let req = s.request("POST", format!("{}/documents/Upload", s.base_url), false);
    let body = FileBody::Base64(Base64Body { template, placeholder, file: item.file.clone() });
    let r = host.send_file(req, body).map_err(|e| host_error(s, e, &what))?;
    if !matches!(r.status, 200 | 201) {
        return Err(status_error(s, r.status, &r.body, &what));
    }
    let doc = created_doc_num(&r.body).ok_or_else(|| {
        retryable(format!(
            "Open Dental API at {} ({what}) answered {} without a DocNum; the next attempt finds the document \
             by its tag if it was created",
            s.api, r.status
        ))
    })?;
    debug(&format!("{} uploaded as DocNum {doc} of PatNum {pat} ({ext}, {tag})", item.id));
    Ok(Stored { location: format!("{LOCATION_PREFIX}{doc}"), outcome: StoreOutcome::Stored })
}

/// The configured stage.
struct OpenDentalStore(Settings);

impl Store for OpenDentalStore {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        let settings = Settings::new(config)?;
        debug(&settings.describe());
        Ok(OpenDentalStore(settings))
    }

    fn store(&mut self, item: Item, metadata: Metadata, patient_guid: String) -> Result<Stored, StageError> {
        store_item(&self.0, &mut HostCaps, &item, &metadata, &patient_guid)
    }
}

ferry_plugin_sdk::store_plugin!(OpenDentalStore);

#[cfg(test)]
mod tests;
