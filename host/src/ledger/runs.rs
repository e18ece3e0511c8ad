//! Runs: one row per pass (start, end, the summary line), so `ferry
//! status` can say when ferry last ran and how it went; and the resume
//! points of document sources (where the next pass starts, see
//! [`crate::runner::resume`]).

use rusqlite::{params, OptionalExtension};

use super::{now_ms, LedgerError, SqliteLedger};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    summary     TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS resume_points (
    source      TEXT PRIMARY KEY,
    cursor      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
"#;

/// One run: (id, started_at, finished_at, its summary line).
pub type RunRow = (i64, i64, Option<i64>, String);

/// When passes ran; the sync log and outcomes name the run they belong to.
pub trait Runs: Send + Sync {
    fn begin_run(&self) -> Result<i64, LedgerError>;

    fn end_run(&self, run_id: i64, summary: &str) -> Result<(), LedgerError>;

    /// The newest run: (id, started_at, finished_at, summary).
    fn last_run(&self) -> Result<Option<RunRow>, LedgerError>;

    /// Where the next pass of source `source` (a key naming the plugin
    /// and its configuration) starts, if it left a resume point.
    fn resume_point(&self, source: &str) -> Result<Option<String>, LedgerError>;

    /// Sets (or, with none, clears) the resume point of `source`.
    fn set_resume_point(&self, source: &str, cursor: Option<&str>) -> Result<(), LedgerError>;
}

impl Runs for SqliteLedger {
    fn begin_run(&self) -> Result<i64, LedgerError> {
        self.with(|c| {
            c.execute("INSERT INTO runs (started_at) VALUES (?1)", params![now_ms()])?;
            Ok(c.last_insert_rowid())
        })
    }

    fn end_run(&self, run_id: i64, summary: &str) -> Result<(), LedgerError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET finished_at = ?1, summary = ?2 WHERE id = ?3",
                params![now_ms(), summary, run_id],
            )
            .map(|_| ())
        })
    }

    fn last_run(&self) -> Result<Option<RunRow>, LedgerError> {
        self.with(|c| {
            c.query_row("SELECT id, started_at, finished_at, summary FROM runs ORDER BY id DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
    }

    fn resume_point(&self, source: &str) -> Result<Option<String>, LedgerError> {
        self.with(|c| {
            c.query_row("SELECT cursor FROM resume_points WHERE source = ?1", params![source], |r| r.get(0)).optional()
        })
    }

    fn set_resume_point(&self, source: &str, cursor: Option<&str>) -> Result<(), LedgerError> {
        self.with(|c| {
            match cursor {
                Some(cur) => c.execute(
                    "INSERT INTO resume_points (source, cursor, updated_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(source) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                    params![source, cur, now_ms()],
                )?,
                None => c.execute("DELETE FROM resume_points WHERE source = ?1", params![source])?,
            };
            Ok(())
        })
    }
}
