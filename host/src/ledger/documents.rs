//! Documents and shares of the records API (`/api/v1/patients/{guid}/
//! documents`, `/api/v1/documents/{id}`, `…/share`): the metadata of each
//! document a person uploaded (the bytes are in the object store under
//! `documents/{patientGuid}/…`) and who it was shared with, until when.
//!
//! As in [`super::registry`], free text arrives sealed (title, file name,
//! description, a share's note) and is kept opaque; who may see what is
//! the service's authorization layer's business. Deletes are soft: a
//! deleted document keeps its row (`deleted_at`), its shares stop
//! working, and the access log keeps pointing at something. Document ids
//! are time-ordered, so "what is new since" is one indexed range.

use rusqlite::{params, OptionalExtension, Row};

use super::{now_ms, LedgerError, SqliteLedger};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS registry_documents (
    id             TEXT PRIMARY KEY,
    patient_guid   TEXT NOT NULL,
    title_sealed   TEXT NOT NULL,
    file_sealed    TEXT NOT NULL,
    description_sealed TEXT,
    content_type   TEXT NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    kind_system    TEXT,
    kind_code      TEXT,
    kind_display   TEXT,
    date           TEXT,
    object_key     TEXT NOT NULL,
    uploaded_by    TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    deleted_at     INTEGER
);
CREATE INDEX IF NOT EXISTS registry_documents_patient ON registry_documents(patient_guid, id);
CREATE TABLE IF NOT EXISTS registry_shares (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id    TEXT NOT NULL,
    patient_guid   TEXT NOT NULL,
    recipient_sub  TEXT NOT NULL,
    shared_by      TEXT NOT NULL,
    note_sealed    TEXT,
    expires_at     INTEGER,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
);
CREATE INDEX IF NOT EXISTS registry_shares_recipient ON registry_shares(recipient_sub, id);
CREATE INDEX IF NOT EXISTS registry_shares_document ON registry_shares(document_id, id);
"#;

/// A document as stored; `*_sealed` are sealed text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocumentRow {
    pub id: String,
    pub patient_guid: String,
    pub title_sealed: String,
    /// The uploaded file's name.
    pub file_sealed: String,
    pub description_sealed: Option<String>,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    /// The document type's coding (LOINC, a platform's categories).
    pub kind_system: Option<String>,
    pub kind_code: Option<String>,
    pub kind_display: Option<String>,
    /// When it was written: an ISO 8601 date or date-time.
    pub date: Option<String>,
    pub object_key: String,
    /// The uploader's `sub`: the document's source, the only one (with
    /// admins) who changes, deletes or shares it.
    pub uploaded_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A share as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShareRow {
    pub id: i64,
    pub document_id: String,
    pub patient_guid: String,
    pub recipient_sub: String,
    pub shared_by: String,
    pub note_sealed: Option<String>,
    /// Milliseconds since the epoch; none: until revoked.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Documents people uploaded and their shares.
pub trait Documents: Send + Sync {
    /// Adds a document (`created_at`/`updated_at` set here).
    fn create_document(&self, d: &DocumentRow) -> Result<(), LedgerError>;
    /// A live (not deleted) document.
    fn document(&self, id: &str) -> Result<Option<DocumentRow>, LedgerError>;
    /// A patient's live documents, newest first, older than `before` (an id).
    fn documents_of(&self, guid: &str, before: Option<&str>, limit: u32) -> Result<Vec<DocumentRow>, LedgerError>;
    /// Live documents with ids after `after`, oldest first (what is new
    /// since: the registry source's scan).
    fn documents_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<DocumentRow>, LedgerError>;
    /// Writes the changeable fields: title, description, type, date.
    /// False when there is no live document.
    fn update_document(&self, d: &DocumentRow) -> Result<bool, LedgerError>;
    /// Soft delete (its shares stop); false when there is no live document.
    fn delete_document(&self, id: &str) -> Result<bool, LedgerError>;

    /// Adds a share; returns its id.
    fn create_share(&self, s: &ShareRow) -> Result<i64, LedgerError>;
    fn share(&self, id: i64) -> Result<Option<ShareRow>, LedgerError>;
    /// Shares in force (not revoked, not expired at `now`, of a live
    /// document), newest first, older than `before`: to one recipient, of
    /// one patient and/or of one document.
    fn active_shares(
        &self,
        recipient: Option<&str>,
        patient_guid: Option<&str>,
        document_id: Option<&str>,
        now: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ShareRow>, LedgerError>;
    /// Revokes; false when it was already revoked or does not exist.
    fn revoke_share(&self, id: i64) -> Result<bool, LedgerError>;
}

const DOC_COLS: &str = "id, patient_guid, title_sealed, file_sealed, description_sealed, content_type, size, sha256, \
                        kind_system, kind_code, kind_display, date, object_key, uploaded_by, created_at, updated_at";
const SHARE_COLS: &str =
    "s.id, s.document_id, s.patient_guid, s.recipient_sub, s.shared_by, s.note_sealed, s.expires_at, s.created_at, \
     s.revoked_at";

fn doc_row(r: &Row<'_>) -> rusqlite::Result<DocumentRow> {
    Ok(DocumentRow {
        id: r.get(0)?,
        patient_guid: r.get(1)?,
        title_sealed: r.get(2)?,
        file_sealed: r.get(3)?,
        description_sealed: r.get(4)?,
        content_type: r.get(5)?,
        size: r.get::<_, i64>(6)? as u64,
        sha256: r.get(7)?,
        kind_system: r.get(8)?,
        kind_code: r.get(9)?,
        kind_display: r.get(10)?,
        date: r.get(11)?,
        object_key: r.get(12)?,
        uploaded_by: r.get(13)?,
        created_at: r.get(14)?,
        updated_at: r.get(15)?,
    })
}

fn share_row(r: &Row<'_>) -> rusqlite::Result<ShareRow> {
    Ok(ShareRow {
        id: r.get(0)?,
        document_id: r.get(1)?,
        patient_guid: r.get(2)?,
        recipient_sub: r.get(3)?,
        shared_by: r.get(4)?,
        note_sealed: r.get(5)?,
        expires_at: r.get(6)?,
        created_at: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

impl Documents for SqliteLedger {
    fn create_document(&self, d: &DocumentRow) -> Result<(), LedgerError> {
        let now = now_ms();
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO registry_documents ({DOC_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15)"),
                params![
                    d.id,
                    d.patient_guid,
                    d.title_sealed,
                    d.file_sealed,
                    d.description_sealed,
                    d.content_type,
                    d.size as i64,
                    d.sha256,
                    d.kind_system,
                    d.kind_code,
                    d.kind_display,
                    d.date,
                    d.object_key,
                    d.uploaded_by,
                    now
                ],
            )
            .map(|_| ())
        })
    }

    fn document(&self, id: &str) -> Result<Option<DocumentRow>, LedgerError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {DOC_COLS} FROM registry_documents WHERE id = ?1 AND deleted_at IS NULL"),
                params![id],
                doc_row,
            )
            .optional()
        })
    }

    fn documents_of(&self, guid: &str, before: Option<&str>, limit: u32) -> Result<Vec<DocumentRow>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {DOC_COLS} FROM registry_documents
                 WHERE patient_guid = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR id < ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![guid, before, limit], doc_row)?;
            rows.collect()
        })
    }

    fn documents_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<DocumentRow>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {DOC_COLS} FROM registry_documents
                 WHERE deleted_at IS NULL AND id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after.unwrap_or(""), limit], doc_row)?;
            rows.collect()
        })
    }

    fn update_document(&self, d: &DocumentRow) -> Result<bool, LedgerError> {
        self.with(|c| {
            c.execute(
                "UPDATE registry_documents SET title_sealed = ?2, description_sealed = ?3, kind_system = ?4,
                    kind_code = ?5, kind_display = ?6, date = ?7, updated_at = ?8
                 WHERE id = ?1 AND deleted_at IS NULL",
                params![
                    d.id,
                    d.title_sealed,
                    d.description_sealed,
                    d.kind_system,
                    d.kind_code,
                    d.kind_display,
                    d.date,
                    now_ms()
                ],
            )
            .map(|n| n > 0)
        })
    }

    fn delete_document(&self, id: &str) -> Result<bool, LedgerError> {
        self.with(|c| {
            c.execute(
                "UPDATE registry_documents SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, now_ms()],
            )
            .map(|n| n > 0)
        })
    }

    fn create_share(&self, s: &ShareRow) -> Result<i64, LedgerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO registry_shares (document_id, patient_guid, recipient_sub, shared_by, note_sealed, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![s.document_id, s.patient_guid, s.recipient_sub, s.shared_by, s.note_sealed, s.expires_at, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    fn share(&self, id: i64) -> Result<Option<ShareRow>, LedgerError> {
        self.with(|c| {
            c.query_row(&format!("SELECT {SHARE_COLS} FROM registry_shares s WHERE s.id = ?1"), params![id], share_row)
                .optional()
        })
    }

    fn active_shares(
        &self,
        recipient: Option<&str>,
        patient_guid: Option<&str>,
        document_id: Option<&str>,
        now: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ShareRow>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {SHARE_COLS} FROM registry_shares s JOIN registry_documents d ON d.id = s.document_id
                 WHERE s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > ?1) AND d.deleted_at IS NULL
                   AND (?2 IS NULL OR s.recipient_sub = ?2) AND (?3 IS NULL OR s.patient_guid = ?3)
                   AND (?4 IS NULL OR s.document_id = ?4) AND (?5 IS NULL OR s.id < ?5)
                 ORDER BY s.id DESC LIMIT ?6"
            ))?;
            let rows = stmt.query_map(params![now, recipient, patient_guid, document_id, before, limit], share_row)?;
            rows.collect()
        })
    }

    fn revoke_share(&self, id: i64) -> Result<bool, LedgerError> {
        self.with(|c| {
            c.execute(
                "UPDATE registry_shares SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now_ms()],
            )
            .map(|n| n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, guid: &str) -> DocumentRow {
        DocumentRow {
            id: id.into(),
            patient_guid: guid.into(),
            title_sealed: "t".into(),
            file_sealed: "f".into(),
            content_type: "application/pdf".into(),
            size: 3,
            sha256: "00".into(),
            object_key: format!("documents/{guid}/{id}.pdf"),
            uploaded_by: "dr-a".into(),
            ..Default::default()
        }
    }

    #[test]
    fn documents_pages_and_shares_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let l = SqliteLedger::open(&dir.path().join("ledger.db")).unwrap();
        for (id, g) in [("d1", "g1"), ("d2", "g1"), ("d3", "g2"), ("d4", "g1")] {
            l.create_document(&doc(id, g)).unwrap();
        }
        let ids = |v: Vec<DocumentRow>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(l.documents_of("g1", None, 2).unwrap()), ["d4", "d2"]);
        assert_eq!(ids(l.documents_of("g1", Some("d2"), 2).unwrap()), ["d1"]);
        assert_eq!(ids(l.documents_after(Some("d1"), 10).unwrap()), ["d2", "d3", "d4"]);
        let now = now_ms();
        let share = |doc: &str, to: &str, expires: Option<i64>| ShareRow {
            document_id: doc.into(),
            patient_guid: "g1".into(),
            recipient_sub: to.into(),
            shared_by: "dr-a".into(),
            expires_at: expires,
            ..Default::default()
        };
        let s1 = l.create_share(&share("d1", "dr-b", None)).unwrap();
        let _expired = l.create_share(&share("d2", "dr-b", Some(now - 1))).unwrap();
        let s3 = l.create_share(&share("d4", "dr-b", Some(now + 60_000))).unwrap();
        let active = |who| {
            l.active_shares(Some(who), None, None, now, None, 10).unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>()
        };
        assert_eq!(active("dr-b"), [s3, s1]);
        assert!(active("dr-c").is_empty());
        assert!(l.revoke_share(s1).unwrap());
        assert!(!l.revoke_share(s1).unwrap());
        assert_eq!(active("dr-b"), [s3]);
        // a deleted document's shares stop, and it leaves the lists
        assert!(l.delete_document("d4").unwrap());
        assert!(!l.delete_document("d4").unwrap());
        assert!(active("dr-b").is_empty());
        assert_eq!(l.document("d4").unwrap(), None);
        assert_eq!(ids(l.documents_of("g1", None, 10).unwrap()), ["d2", "d1"]);
        let mut d = l.document("d1").unwrap().unwrap();
        d.title_sealed = "t2".into();
        d.size = 999; // not a changeable field
        assert!(l.update_document(&d).unwrap());
        let back = l.document("d1").unwrap().unwrap();
        assert_eq!((back.title_sealed.as_str(), back.size), ("t2", 3));
    }
}
