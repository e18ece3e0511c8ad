//! The synchronization log: one row per action (upload, verification,
//! skip, failure, quarantine, changed resolution), for people — `ferry
//! log`, the service's `/logs` routes. Rows name items and patient guids,
//! never card ids or names.

use rusqlite::{params, OptionalExtension};

use super::{now_ms, LedgerError, SqliteLedger};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sync_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    run_id       INTEGER NOT NULL,
    item_id      TEXT NOT NULL,
    patient_guid TEXT,
    action       TEXT NOT NULL,
    status       TEXT NOT NULL,
    details      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sync_log_guid ON sync_log(patient_guid, id);
CREATE INDEX IF NOT EXISTS sync_log_item ON sync_log(item_id, id);
"#;

/// One row of the synchronization log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub id: i64,
    pub at: i64,
    pub run_id: i64,
    pub item_id: String,
    pub patient_guid: Option<String>,
    pub action: String,
    pub status: String,
    pub details: String,
}

/// The synchronization log, appended by the runner, read by people.
pub trait SyncLog: Send + Sync {
    /// Appends a free-form entry to the synchronization log.
    fn log(
        &self,
        run_id: i64,
        item_id: &str,
        patient_guid: Option<&str>,
        action: &str,
        status: &str,
        details: &str,
    ) -> Result<(), LedgerError>;

    /// The synchronization log, newest first.
    fn log_entries(&self, patient_guid: Option<&str>, limit: u32) -> Result<Vec<LogEntry>, LedgerError> {
        self.log_page(patient_guid, None, limit)
    }

    /// One entry of the synchronization log, by id.
    fn log_entry(&self, id: i64) -> Result<Option<LogEntry>, LedgerError>;

    /// A page of the synchronization log, newest first: entries older than
    /// `before` (an entry id), optionally of one patient.
    fn log_page(
        &self,
        patient_guid: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, LedgerError>;
}

impl SyncLog for SqliteLedger {
    /// Appends a free-form entry to the synchronization log.
    fn log(
        &self,
        run_id: i64,
        item_id: &str,
        patient_guid: Option<&str>,
        action: &str,
        status: &str,
        details: &str,
    ) -> Result<(), LedgerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sync_log (at, run_id, item_id, patient_guid, action, status, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![now_ms(), run_id, item_id, patient_guid, action, status, details],
            )
            .map(|_| ())
        })
    }

    /// One entry of the synchronization log, by id.
    fn log_entry(&self, id: i64) -> Result<Option<LogEntry>, LedgerError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, at, run_id, item_id, patient_guid, action, status, details FROM sync_log WHERE id = ?1",
                params![id],
                row_to_log,
            )
            .optional()
        })
    }

    /// A page of the synchronization log, newest first: entries older than
    /// `before` (an entry id), optionally of one patient.
    fn log_page(
        &self,
        patient_guid: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, run_id, item_id, patient_guid, action, status, details FROM sync_log
                 WHERE (?1 IS NULL OR patient_guid = ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![patient_guid, before, limit], row_to_log)?;
            rows.collect()
        })
    }
}

pub(super) fn row_to_log(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
    Ok(LogEntry {
        id: r.get(0)?,
        at: r.get(1)?,
        run_id: r.get(2)?,
        item_id: r.get(3)?,
        patient_guid: r.get(4)?,
        action: r.get(5)?,
        status: r.get(6)?,
        details: r.get(7)?,
    })
}
