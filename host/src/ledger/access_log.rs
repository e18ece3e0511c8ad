//! The access log: who read or changed which patient's record, images or
//! sync log through the API, and what the answer was — refusals included,
//! so an admin can see someone probing. Rows hold ids only (token subject,
//! patient guid, the request's method and path), never names or PHI.

use rusqlite::params;

use super::{now_ms, LedgerError, SqliteLedger};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS access_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    subject      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    action       TEXT NOT NULL,
    patient_guid TEXT,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    status       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_guid ON access_log(patient_guid, id);
CREATE INDEX IF NOT EXISTS access_log_subject ON access_log(subject, id);
"#;

/// One access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    pub id: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The token's `sub`.
    pub subject: String,
    /// `practitioner`, `patient` or `staff` (admins: their registry kind).
    pub kind: String,
    /// What the route does (`read-patient`, `change-patient`, …).
    pub action: String,
    pub patient_guid: Option<String>,
    pub method: String,
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
}

pub trait AccessLog: Send + Sync {
    /// Appends an entry (`id` and `at` are set here).
    fn record_access(&self, e: &AccessEntry) -> Result<(), LedgerError>;

    /// Entries newest first, older than `before`, optionally of one
    /// patient and/or one subject.
    fn access_page(
        &self,
        patient_guid: Option<&str>,
        subject: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AccessEntry>, LedgerError>;
}

impl AccessLog for SqliteLedger {
    fn record_access(&self, e: &AccessEntry) -> Result<(), LedgerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO access_log (at, subject, kind, action, patient_guid, method, path, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![now_ms(), e.subject, e.kind, e.action, e.patient_guid, e.method, e.path, e.status],
            )
            .map(|_| ())
        })
    }

    fn access_page(
        &self,
        patient_guid: Option<&str>,
        subject: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AccessEntry>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, subject, kind, action, patient_guid, method, path, status FROM access_log
                 WHERE (?1 IS NULL OR patient_guid = ?1) AND (?2 IS NULL OR subject = ?2) AND id < ?3
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![patient_guid, subject, before.unwrap_or(i64::MAX), limit], |r| {
                Ok(AccessEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    subject: r.get(2)?,
                    kind: r.get(3)?,
                    action: r.get(4)?,
                    patient_guid: r.get(5)?,
                    method: r.get(6)?,
                    path: r.get(7)?,
                    status: r.get(8)?,
                })
            })?;
            rows.collect()
        })
    }
}
