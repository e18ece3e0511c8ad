//! Documents and shares as the API shows them, turned to and from the
//! ledger's rows ([`crate::ledger::documents`]), sealing free text on the
//! way in (title, file name, description, a share's note: a letter's
//! title names a diagnosis as often as not) — and what an uploaded file
//! may be: its type is **sniffed from its bytes** and must agree with what
//! the client declared, so a renamed executable is not stored as a PDF.
//!
//! Accepted: PDF, JPEG, PNG, TIFF, GIF, DICOM and UTF-8 plain text — what
//! the documents pipelines' extractor (`doc-meta`) and the platforms take.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::problem::{ApiResult, Problem};
use crate::ledger::{DocumentRow, ShareRow};
use crate::seal::Sealer;

/// Longest title or file name, in characters.
const MAX_TITLE: usize = 500;
/// Longest description or note, in characters.
const MAX_NOTE: usize = 5_000;

/// A code from a terminology (LOINC, a platform's document categories).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Coding {
    /// The code system's URI, e.g. `http://loinc.org`.
    #[serde(default)]
    pub system: String,
    pub code: String,
    #[serde(default)]
    pub display: String,
}

/// A document of a patient, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub id: String,
    pub patient_guid: String,
    pub title: String,
    /// The name of the file as uploaded.
    pub file_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Sniffed from the bytes.
    pub content_type: String,
    pub size: u64,
    /// Hex SHA-256 of the content (also the download's ETag).
    pub sha256: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<Coding>,
    /// When the document was written (ISO 8601 date or date-time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// `upload`: a person uploaded it here.
    pub source: String,
    /// The `sub` of who uploaded it: the one who changes, deletes and
    /// shares it.
    pub uploaded_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub href: String,
    /// The bytes (`Range` supported).
    pub content_href: String,
}

/// What a client sets on a document: on upload (the `metadata` part) and
/// with `PUT /documents/{id}` (the whole set: what is left out is cleared,
/// except the title).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentFields {
    /// Default on upload: the file name.
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<Coding>,
    /// ISO 8601: `2026-11-30` or `2026-11-30T09:15:00Z`.
    #[serde(default)]
    pub date: Option<String>,
}

/// `POST /documents/{id}/share`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShareRequest {
    /// The `sub` of a registered practitioner.
    pub practitioner: String,
    /// RFC 3339; the share ends then. None: until revoked.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// A share of one document with one practitioner.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    pub id: i64,
    pub document_id: String,
    pub patient_guid: String,
    /// The practitioner it is shared with.
    pub practitioner: String,
    pub shared_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub created_at: String,
    /// Revoke it: `DELETE` here.
    pub href: String,
    /// The document.
    pub document_href: String,
}

fn bad(field: &str, why: impl std::fmt::Display) -> Problem {
    Problem::bad_request("invalid-field", format!("`{field}` {why}"))
}

fn one_line(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.trim().is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(bad(field, format!("is at most {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(bad(field, "is one line without control characters"));
    }
    Ok(())
}

fn free_text(field: &str, v: &str) -> ApiResult<()> {
    if v.chars().count() > MAX_NOTE {
        return Err(bad(field, format!("is at most {MAX_NOTE} characters")));
    }
    if v.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(())
}

/// An ISO 8601 date (`YYYY-MM-DD`) or an RFC 3339 date-time.
pub fn check_date(field: &str, v: &str) -> ApiResult<()> {
    let date_ok = |d: &str| {
        let b = d.as_bytes();
        b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && d.char_indices().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
            && (1..=12).contains(&d[5..7].parse::<u8>().unwrap_or(0))
            && (1..=31).contains(&d[8..10].parse::<u8>().unwrap_or(0))
    };
    let ok = if v.len() == 10 { date_ok(v) } else { humantime::parse_rfc3339_weak(v).is_ok() && date_ok(&v[..10]) };
    if ok {
        Ok(())
    } else {
        Err(bad(field, "is not an ISO 8601 date (2026-11-30) or date-time (2026-11-30T09:15:00Z)"))
    }
}

impl DocumentFields {
    pub fn validate(&self) -> ApiResult<()> {
        if let Some(t) = &self.title {
            one_line("title", t, MAX_TITLE)?;
        }
        if let Some(d) = &self.description {
            free_text("description", d)?;
        }
        if let Some(k) = &self.kind {
            one_line("type.code", &k.code, 100)?;
            if !k.system.is_empty() {
                one_line("type.system", &k.system, 500)?;
            }
            if !k.display.is_empty() {
                one_line("type.display", &k.display, MAX_TITLE)?;
            }
        }
        if let Some(d) = &self.date {
            check_date("date", d)?;
        }
        Ok(())
    }
}

impl ShareRequest {
    /// Checks the fields; the expiry in ms since the epoch.
    pub fn validate(&self, now_ms: i64) -> ApiResult<Option<i64>> {
        one_line("practitioner", &self.practitioner, 256)?;
        if let Some(n) = &self.note {
            free_text("note", n)?;
        }
        let Some(e) = &self.expires_at else { return Ok(None) };
        let t = humantime::parse_rfc3339_weak(e)
            .map_err(|_| bad("expiresAt", "is not an RFC 3339 date-time (2026-12-31T23:59:59Z)"))?;
        let ms = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        if ms <= now_ms {
            return Err(bad("expiresAt", "is in the past"));
        }
        Ok(Some(ms))
    }
}

/// A new document id: time-ordered (48 bits of milliseconds, then 80
/// random bits, as a UUID version 7), so ids sort by upload.
pub fn new_document_id() -> String {
    let ms = crate::ledger::now_ms().max(0) as u64;
    let mut b: [u8; 16] = rand::random();
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A document id this API gave out (so it can be a key segment).
pub fn check_document_id(id: &str) -> ApiResult<()> {
    let ok = id.len() == 36
        && id.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request("invalid-id", "a document id is a UUID this API gave out"))
    }
}

/// The types an upload may be, with their signatures and key extensions.
pub const ACCEPTED: &[(&str, &str)] = &[
    ("application/pdf", "pdf"),
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("image/tiff", "tif"),
    ("image/gif", "gif"),
    ("application/dicom", "dcm"),
    ("text/plain", "txt"),
];

/// What `head` (the first bytes of a file, up to 8 KiB) is, among
/// [`ACCEPTED`]: by signature, else plain text when it is UTF-8 (a cut
/// last character allowed) without NUL bytes.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let starts = |sig: &[u8]| head.starts_with(sig);
    if starts(b"%PDF-") {
        return Some("application/pdf");
    }
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Some("image/jpeg");
    }
    if starts(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        return Some("image/png");
    }
    if starts(b"II*\0") || starts(b"MM\0*") {
        return Some("image/tiff");
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Some("image/gif");
    }
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Some("application/dicom");
    }
    if head.is_empty() || head.contains(&0) {
        return None;
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // a multi-byte character cut at the end of the sample
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    };
    text.then_some("text/plain")
}

/// The key extension of an accepted type.
pub fn extension(content_type: &str) -> &'static str {
    ACCEPTED.iter().find(|(t, _)| *t == content_type).map(|(_, e)| *e).unwrap_or("bin")
}

/// Does a declared type (a part's `Content-Type`) agree with the sniffed
/// one? Generic declarations (`application/octet-stream`, none) agree
/// with anything; parameters (`; charset=utf-8`) are ignored.
pub fn declared_agrees(declared: Option<&str>, sniffed: &str) -> bool {
    let Some(d) = declared else { return true };
    let d = d.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let same = |a: &str, b: &str| {
        a == b
            || matches!((a, b), ("image/jpg" | "image/pjpeg", "image/jpeg") | ("application/x-pdf", "application/pdf"))
    };
    d.is_empty() || d == "application/octet-stream" || same(&d, sniffed)
}

/// Seals a document's and a share's text, bound to their row and column.
pub struct DocumentSealer<'a>(pub &'a Sealer);

impl DocumentSealer<'_> {
    fn seal(&self, id: &str, column: &str, v: &str) -> String {
        self.0.seal(&format!("registry_documents.{column}:{id}"), v)
    }

    fn open(&self, table: &str, id: &str, column: &str, v: &str) -> ApiResult<String> {
        self.0.open(&format!("{table}.{column}:{id}"), v).map_err(|e| {
            tracing::error!("{table} {id}: {column}: {e}");
            Problem::internal(format!("a sealed field of this record does not open ({column}); see the log"))
        })
    }

    /// A new row for an upload (the fields checked).
    #[allow(clippy::too_many_arguments)]
    pub fn new_row(
        &self,
        id: &str,
        guid: &str,
        fields: &DocumentFields,
        file_name: &str,
        content_type: &str,
        size: u64,
        sha256: &str,
        object_key: &str,
        uploaded_by: &str,
    ) -> DocumentRow {
        let title = fields.title.clone().unwrap_or_else(|| file_name.to_owned());
        let mut row = DocumentRow {
            id: id.to_owned(),
            patient_guid: guid.to_owned(),
            title_sealed: String::new(),
            file_sealed: self.seal(id, "file", file_name),
            content_type: content_type.to_owned(),
            size,
            sha256: sha256.to_owned(),
            object_key: object_key.to_owned(),
            uploaded_by: uploaded_by.to_owned(),
            ..Default::default()
        };
        self.set_fields(&mut row, &DocumentFields { title: Some(title), ..fields.clone() });
        row
    }

    /// Writes the changeable fields into `row` (a missing title keeps the
    /// current one).
    pub fn set_fields(&self, row: &mut DocumentRow, f: &DocumentFields) {
        if let Some(t) = &f.title {
            row.title_sealed = self.seal(&row.id, "title", t.trim());
        }
        row.description_sealed = f.description.as_ref().map(|d| self.seal(&row.id, "description", d));
        row.kind_system = f.kind.as_ref().map(|k| k.system.clone()).filter(|s| !s.is_empty());
        row.kind_code = f.kind.as_ref().map(|k| k.code.clone());
        row.kind_display = f.kind.as_ref().map(|k| k.display.clone()).filter(|s| !s.is_empty());
        row.date = f.date.clone();
    }

    pub fn document(&self, r: DocumentRow) -> ApiResult<Document> {
        let t = "registry_documents";
        let href = format!("/api/v1/documents/{}", r.id);
        Ok(Document {
            title: self.open(t, &r.id, "title", &r.title_sealed)?,
            file_name: self.open(t, &r.id, "file", &r.file_sealed)?,
            description: r.description_sealed.as_deref().map(|d| self.open(t, &r.id, "description", d)).transpose()?,
            kind: r.kind_code.map(|code| Coding {
                system: r.kind_system.unwrap_or_default(),
                code,
                display: r.kind_display.unwrap_or_default(),
            }),
            content_href: format!("{href}/content"),
            href,
            created_at: super::passes::rfc3339(r.created_at),
            updated_at: super::passes::rfc3339(r.updated_at),
            source: "upload".into(),
            id: r.id,
            patient_guid: r.patient_guid,
            content_type: r.content_type,
            size: r.size,
            sha256: r.sha256,
            date: r.date,
            uploaded_by: r.uploaded_by,
        })
    }

    /// The note of a new share, sealed to the document and recipient (the
    /// share's id is not known before the insert).
    pub fn seal_note(&self, document_id: &str, recipient: &str, note: &str) -> String {
        self.0.seal(&format!("registry_shares.note:{document_id}:{recipient}"), note)
    }

    pub fn share(&self, s: ShareRow) -> ApiResult<Share> {
        let note = match &s.note_sealed {
            None => None,
            Some(n) => {
                Some(self.open("registry_shares", &format!("{}:{}", s.document_id, s.recipient_sub), "note", n)?)
            }
        };
        Ok(Share {
            href: format!("/api/v1/shares/{}", s.id),
            document_href: format!("/api/v1/documents/{}", s.document_id),
            id: s.id,
            note,
            expires_at: s.expires_at.map(super::passes::rfc3339),
            created_at: super::passes::rfc3339(s.created_at),
            document_id: s.document_id,
            patient_guid: s.patient_guid,
            practitioner: s.recipient_sub,
            shared_by: s.shared_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_takes_the_bytes_not_the_name() {
        assert_eq!(sniff(b"%PDF-1.7\n..."), Some("application/pdf"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"II*\0...."), Some("image/tiff"));
        let mut dcm = vec![0u8; 128];
        dcm.extend_from_slice(b"DICM\x02\x00");
        assert_eq!(sniff(&dcm), Some("application/dicom"));
        assert_eq!(sniff("Befund: o.B. — Grüße".as_bytes()), Some("text/plain"));
        let cut = "ü".as_bytes();
        assert_eq!(sniff(&[b"abc".as_slice(), &cut[..1]].concat()), Some("text/plain"));
        assert_eq!(sniff(b"MZ\x90\0\x03\0\0\0"), None, "an executable");
        assert_eq!(sniff(b"\xff\xfe\0\0bad"), None);
        assert_eq!(sniff(b""), None);
        assert!(declared_agrees(Some("application/pdf"), "application/pdf"));
        assert!(declared_agrees(Some("Application/PDF; x=y"), "application/pdf"));
        assert!(declared_agrees(Some("application/octet-stream"), "image/png"));
        assert!(declared_agrees(None, "image/png"));
        assert!(declared_agrees(Some("image/jpg"), "image/jpeg"));
        assert!(!declared_agrees(Some("application/pdf"), "image/png"));
        assert!(!declared_agrees(Some("text/plain"), "application/pdf"));
    }

    #[test]
    fn ids_dates_and_fields() {
        let a = new_document_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_document_id();
        assert!(a < b, "time-ordered: {a} {b}");
        check_document_id(&a).unwrap();
        for bad in ["", "../x", "0192f-…", &a.replace('-', "_"), &format!("{a}x")] {
            assert!(check_document_id(bad).is_err(), "{bad}");
        }
        for good in ["2026-11-30", "2026-11-30T09:15:00Z", "2026-11-30T09:15:00.5+01:00"] {
            check_date("date", good).unwrap();
        }
        for bad in ["2026-13-01", "30.11.2026", "2026-11-30T25:00:00Z", "soon", "2026-11-3"] {
            assert!(check_date("date", bad).is_err(), "{bad}");
        }
        let f = DocumentFields { title: Some("a\nb".into()), ..Default::default() };
        assert!(f.validate().is_err());
        let f = DocumentFields {
            kind: Some(Coding { system: String::new(), code: " ".into(), display: String::new() }),
            ..Default::default()
        };
        assert!(f.validate().is_err());
    }
}
