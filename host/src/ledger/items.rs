//! Items: what happened to every source item — its outcome, fingerprint,
//! attempts and when a parked one may be tried again. This is what makes a
//! pass incremental (stored + same fingerprint → nothing to do) and what
//! parks problems with backoff.
//!
//! Recording an outcome also appends its row to the synchronization log
//! in the same transaction: the log never says "uploaded" for an item the
//! ledger does not hold as stored, nor the other way round.

use rusqlite::{params, OptionalExtension};

use super::{now_ms, LedgerError, SqliteLedger};
use crate::outcome::Outcome;
use crate::retry::Backoff;

/// `SELECT <the columns of an ItemRecord> FROM items <rest>`, in the
/// order [`row_to_item`] reads them.
macro_rules! select_items {
    ($rest:literal) => {
        concat!(
            "SELECT id, state, fingerprint, patient_guid, location, attempts, last_error, next_attempt_at, updated_at \
             FROM items ",
            $rest
        )
    };
}

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS items (
    id              TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    fingerprint     TEXT,
    patient_guid    TEXT,
    location        TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    first_seen_at   INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_state ON items(state, updated_at);
CREATE INDEX IF NOT EXISTS items_guid ON items(patient_guid);
"#;

/// What the ledger knows of one item (or one entry a source reported).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    pub id: String,
    pub state: Outcome,
    pub fingerprint: Option<String>,
    pub patient_guid: Option<String>,
    pub location: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When a parked item may be tried again (ms since epoch).
    pub next_attempt_at: i64,
    pub updated_at: i64,
}

/// Outcomes per item, the ledger part the runner reads before and writes
/// after each item.
pub trait Items: Send + Sync {
    fn item(&self, id: &str) -> Result<Option<ItemRecord>, LedgerError>;

    /// The records of many items at once (a scan page's), by id; ids the
    /// ledger does not know are absent.
    fn items_by_id(&self, ids: &[&str]) -> Result<std::collections::HashMap<String, ItemRecord>, LedgerError>;

    /// Records an outcome and appends to the synchronization log. For
    /// problems, `backoff` sets when the item may be tried again.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        run_id: i64,
        id: &str,
        outcome: Outcome,
        fingerprint: Option<&str>,
        patient_guid: Option<&str>,
        location: Option<&str>,
        details: &str,
        backoff: Backoff,
    ) -> Result<(), LedgerError>;

    /// Makes parked items (in `states`) due now; returns how many.
    fn requeue(&self, states: &[Outcome]) -> Result<usize, LedgerError>;

    /// The items attached to a patient (whatever their state), by id.
    fn items_of(&self, guid: &str) -> Result<Vec<ItemRecord>, LedgerError>;

    /// Every item record (for tests and tools).
    fn items(&self) -> Result<Vec<ItemRecord>, LedgerError>;

    /// How many items are in each state, by state name.
    fn by_state(&self) -> Result<Vec<(String, u64)>, LedgerError>;

    /// The `limit` oldest problems (failed, quarantined, unresolved).
    fn oldest_problems(&self, limit: u32) -> Result<Vec<ItemRecord>, LedgerError>;

    /// Why items wait for a later pass (deferred: a file still being
    /// written, a closed upload window), the `limit` most common reasons.
    fn waiting_reasons(&self, limit: u32) -> Result<Vec<(String, u64)>, LedgerError>;
}

impl Items for SqliteLedger {
    fn item(&self, id: &str) -> Result<Option<ItemRecord>, LedgerError> {
        self.with(|c| c.prepare_cached(select_items!("WHERE id = ?1"))?.query_row(params![id], row_to_item).optional())
    }

    fn items_by_id(&self, ids: &[&str]) -> Result<std::collections::HashMap<String, ItemRecord>, LedgerError> {
        // one statement shape: a short last chunk is padded with its own
        // first id (an IN list ignores repeats), so it is prepared once
        const CHUNK: usize = 256;
        let sql = format!(
            "{} WHERE id IN ({})",
            select_items!(""),
            std::iter::repeat_n("?", CHUNK).collect::<Vec<_>>().join(", ")
        );
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            for chunk in ids.chunks(CHUNK) {
                let padded = chunk.iter().chain(std::iter::repeat(&chunk[0])).take(CHUNK);
                let rows = stmt.query_map(rusqlite::params_from_iter(padded), row_to_item)?;
                for r in rows {
                    let r = r?;
                    out.insert(r.id.clone(), r);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Records an outcome and appends to the synchronization log. For
    /// problems, `backoff` sets when the item may be tried again.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        run_id: i64,
        id: &str,
        outcome: Outcome,
        fingerprint: Option<&str>,
        patient_guid: Option<&str>,
        location: Option<&str>,
        details: &str,
        backoff: Backoff,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        self.batched(|c| {
            let tx = super::Atomic::begin(c)?;
            let prev: Option<(String, i64)> = tx.prepare_cached("SELECT state, attempts FROM items WHERE id = ?1")?.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let problem = matches!(outcome, Outcome::Unresolved | Outcome::Quarantined | Outcome::Failed);
            let attempts: i64 = match (&prev, problem) {
                (Some((state, n)), true) if *state == state_name(outcome) => n + 1,
                (_, true) => 1,
                (_, false) => 0,
            };
            let next = if problem { now + backoff.delay(attempts as u32).as_millis() as i64 } else { 0 };
            // why it is a problem, or why it waits (`ferry status` says)
            let last_error = (problem || outcome == Outcome::Deferred).then_some(details);
            tx.prepare_cached("INSERT INTO items (id, state, fingerprint, patient_guid, location, attempts, last_error, next_attempt_at, first_seen_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
                 ON CONFLICT(id) DO UPDATE SET state = ?2, fingerprint = COALESCE(?3, fingerprint),
                    patient_guid = COALESCE(?4, patient_guid), location = COALESCE(?5, location),
                    attempts = ?6, last_error = ?7, next_attempt_at = ?8, updated_at = ?9")?.execute(params![id, state_name(outcome), fingerprint, patient_guid, location, attempts, last_error, next, now],
            )?;
            // the log says what was done; a skip seen again says nothing new
            let unchanged_skip = matches!(outcome, Outcome::Skipped | Outcome::Deferred)
                && prev.as_ref().is_some_and(|(s, _)| *s == state_name(outcome));
            if !unchanged_skip {
                let (action, status) = match outcome {
                    Outcome::Stored => ("upload", "ok"),
                    Outcome::Unchanged => ("verify", "ok"),
                    Outcome::Skipped => ("skip", "ok"),
                    Outcome::Unresolved => ("resolve", "parked"),
                    Outcome::Quarantined => ("quarantine", "parked"),
                    Outcome::Failed => ("process", "error"),
                    Outcome::Deferred => ("defer", "waiting"),
                };
                tx.prepare_cached("INSERT INTO sync_log (at, run_id, item_id, patient_guid, action, status, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(params![now, run_id, id, patient_guid, action, status, details],
                )?;
            }
            tx.commit()
        })
    }

    /// Makes parked items (in `states`) due now; returns how many.
    fn requeue(&self, states: &[Outcome]) -> Result<usize, LedgerError> {
        self.with(|c| {
            let mut n = 0;
            for s in states {
                n += c.execute("UPDATE items SET next_attempt_at = 0 WHERE state = ?1", params![state_name(*s)])?;
            }
            Ok(n)
        })
    }

    /// The items attached to a patient (whatever their state), by id.
    fn items_of(&self, guid: &str) -> Result<Vec<ItemRecord>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(select_items!("WHERE patient_guid = ?1 ORDER BY id"))?;
            let rows = stmt.query_map(params![guid], row_to_item)?;
            rows.collect()
        })
    }

    /// Every item record (for tests and tools).
    fn items(&self) -> Result<Vec<ItemRecord>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(select_items!("ORDER BY id"))?;
            let rows = stmt.query_map([], row_to_item)?;
            rows.collect()
        })
    }

    fn by_state(&self) -> Result<Vec<(String, u64)>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT state, count(*) FROM items GROUP BY state ORDER BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    fn waiting_reasons(&self, limit: u32) -> Result<Vec<(String, u64)>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT coalesce(last_error, ''), count(*) AS n FROM items WHERE state = 'deferred'
                 GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    fn oldest_problems(&self, limit: u32) -> Result<Vec<ItemRecord>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(select_items!(
                "WHERE state IN ('failed', 'quarantined', 'unresolved') ORDER BY first_seen_at, id LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit], row_to_item)?;
            rows.collect()
        })
    }
}

fn state_name(o: Outcome) -> &'static str {
    o.as_str()
}

fn parse_state(s: &str) -> Outcome {
    Outcome::ALL.into_iter().find(|o| o.as_str() == s).unwrap_or(Outcome::Failed)
}

fn row_to_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<ItemRecord> {
    Ok(ItemRecord {
        id: r.get(0)?,
        state: parse_state(&r.get::<_, String>(1)?),
        fingerprint: r.get(2)?,
        patient_guid: r.get(3)?,
        location: r.get(4)?,
        attempts: r.get::<_, i64>(5)? as u32,
        last_error: r.get(6)?,
        next_attempt_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}
