//! The ledger: what happened to every source item, across runs.
//!
//! A clinic runs ferry every few minutes for years. The ledger is what
//! makes that cheap and safe:
//!
//! - **Incremental**: an item already stored whose file has the same
//!   fingerprint (size + modification time) is not touched again.
//! - **Parking**: unresolved, quarantined and failed items are retried on
//!   later runs with exponential backoff, until they succeed or a person
//!   resolves them (`ferry retry`).
//! - **Exactly once**: an item is recorded as stored only after the store
//!   acknowledged it. A crash in between is healed on the next run by the
//!   store's own idempotency (same key, same checksum → unchanged).
//! - **Synchronization log**: one row per action (upload, verification,
//!   skip, failure, quarantine, changed resolution), for people.
//! - **Resolution cache**: patient keys are asked once per TTL; keys are
//!   stored hashed, so no card id sits in ferry's state.
//!
//! Storage is one SQLite file in WAL mode: a `kill -9` at any moment
//! leaves it consistent (at worst without the last outcomes, which the
//! next run re-derives).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::outcome::Outcome;

#[derive(Debug, thiserror::Error)]
#[error("ledger {path}: {source}")]
pub struct LedgerError {
    /// The ledger's file or URL.
    pub path: PathBuf,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

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

/// A cached answer for one patient key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedAnswer {
    Resolved(String),
    NotFound,
    Ambiguous(Vec<String>),
}

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

/// Counts and the oldest problems, for `ferry status`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub by_state: Vec<(String, u64)>,
    pub oldest_problems: Vec<ItemRecord>,
    pub last_run: Option<(i64, i64, Option<i64>, String)>,
}

/// What the service needs to know about a stored image without opening it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageFacts {
    pub name: String,
    /// DICOM person name as stored (`Last^First^Middle`), if any.
    pub patient_name: Option<String>,
    pub modality: Option<String>,
    pub study_date: Option<String>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
}

/// One stored image, from the index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedImage {
    pub item_id: String,
    pub patient_guid: String,
    pub location: String,
    pub facts: ImageFacts,
}

/// A patient found by name.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientHit {
    pub guid: String,
    /// `Last, First` for display.
    pub name: String,
    pub image_count: u64,
}

/// Lower case, accents removed, `ß` → `ss`: how names are searched.
pub fn fold(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(|c| c.to_lowercase())
        .collect::<String>()
        .replace('ß', "ss")
}

/// `Müller^Anna^B` → (`Müller, Anna B`, `muller anna b`).
fn person_name(pn: &str) -> (String, String) {
    let parts: Vec<&str> = pn.split('^').map(str::trim).filter(|p| !p.is_empty()).collect();
    let display = match parts.as_slice() {
        [] => String::new(),
        [last] => (*last).to_owned(),
        [last, rest @ ..] => format!("{last}, {}", rest.join(" ")),
    };
    // each word folded, plus its German transliteration (ü → ue ...), so
    // that "Mueller" finds "Müller" as well as "Muller" does
    let mut words: Vec<String> = Vec::new();
    for t in parts.iter().flat_map(|p| p.split(|c: char| c.is_whitespace() || c == '-')).filter(|t| !t.is_empty()) {
        let german = fold(&t.to_lowercase().replace('ä', "ae").replace('ö', "oe").replace('ü', "ue"));
        let plain = fold(t);
        if german != plain {
            words.push(german);
        }
        words.push(plain);
    }
    (display, words.join(" "))
}

pub use crate::retry::Backoff;

/// The ledger in one SQLite file (the default; one `ferry` per clinic).
pub struct SqliteLedger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = r#"
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
CREATE TABLE IF NOT EXISTS resolutions (
    key_hash   TEXT PRIMARY KEY,
    scheme     TEXT NOT NULL,
    answer     TEXT NOT NULL,
    fetched_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    item_id      TEXT PRIMARY KEY,
    patient_guid TEXT NOT NULL,
    location     TEXT NOT NULL,
    name         TEXT NOT NULL,
    modality     TEXT,
    study_date   TEXT,
    rows         INTEGER,
    columns      INTEGER,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS images_guid ON images(patient_guid);
CREATE TABLE IF NOT EXISTS patients (
    guid       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    search     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    summary     TEXT NOT NULL DEFAULT ''
);
"#;

fn state_name(o: Outcome) -> &'static str {
    o.as_str()
}

fn parse_state(s: &str) -> Outcome {
    Outcome::ALL.into_iter().find(|o| o.as_str() == s).unwrap_or(Outcome::Failed)
}

/// `sha256("scheme\0value")`: the cache never holds a raw card id.
pub fn key_hash(scheme: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(scheme.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    hex::encode(h.finalize())
}

/// What ferry keeps across runs, behind one interface so that a shared
/// database (PostgreSQL, for several `ferry serve` replicas) can replace
/// the SQLite file without touching the runner or the API. Calls are
/// synchronous and short; callers on async threads keep them brief.
pub trait Ledger: Send + Sync {
    fn begin_run(&self) -> Result<i64, LedgerError>;

    fn end_run(&self, run_id: i64, summary: &str) -> Result<(), LedgerError>;

    fn item(&self, id: &str) -> Result<Option<ItemRecord>, LedgerError>;

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
    fn log_entries(&self, patient_guid: Option<&str>, limit: u32) -> Result<Vec<LogEntry>, LedgerError>;

    /// A fresh cached answer for a key, if any.
    fn cached(&self, scheme: &str, value: &str) -> Result<Option<CachedAnswer>, LedgerError>;

    /// Stores an answer; returns the previous one (even expired) if it
    /// named a different patient, so the caller can report the change.
    fn remember(
        &self,
        scheme: &str,
        value: &str,
        answer: &CachedAnswer,
        ttl: Duration,
    ) -> Result<Option<CachedAnswer>, LedgerError>;

    /// Makes parked items (in `states`) due now; returns how many.
    fn requeue(&self, states: &[Outcome]) -> Result<usize, LedgerError>;

    /// Forgets cached resolutions (after fixing the PMS, say).
    fn clear_resolution_cache(&self) -> Result<usize, LedgerError>;

    fn status(&self, oldest: u32) -> Result<Status, LedgerError>;

    /// Records where a stored image is and what it shows, for the service.
    fn index_image(&self, item_id: &str, guid: &str, location: &str, facts: &ImageFacts) -> Result<(), LedgerError>;

    /// Stored images of a patient, by location.
    fn images_of(&self, guid: &str) -> Result<Vec<IndexedImage>, LedgerError>;

    /// Patients whose first or last name starts with each word of `query`
    /// (case- and accent-insensitive), with their image counts.
    fn search_patients(&self, query: &str, limit: u32) -> Result<Vec<PatientHit>, LedgerError>;

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

    /// The items attached to a patient (whatever their state), by id.
    fn items_of(&self, guid: &str) -> Result<Vec<ItemRecord>, LedgerError>;

    /// Does the ledger know this patient at all (items, images or log)?
    fn knows_patient(&self, guid: &str) -> Result<bool, LedgerError>;

    /// A cheap query proving the database answers (for readiness checks).
    fn ping(&self) -> Result<(), LedgerError>;

    /// Every item record (for tests and tools).
    fn items(&self) -> Result<Vec<ItemRecord>, LedgerError>;
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<SqliteLedger, LedgerError> {
        let err = |source: rusqlite::Error| LedgerError { path: path.to_owned(), source: Box::new(source) };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot create {}: {e}", dir.display())),
                ))
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // WAL + NORMAL: a killed process loses nothing it committed; a
        // power cut may lose the last commits, never consistency.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteLedger { path: path.to_owned(), conn: Mutex::new(conn) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, LedgerError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| LedgerError { path: self.path.clone(), source: Box::new(source) })
    }
}

impl Ledger for SqliteLedger {
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

    fn item(&self, id: &str) -> Result<Option<ItemRecord>, LedgerError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, state, fingerprint, patient_guid, location, attempts, last_error, next_attempt_at, updated_at
                 FROM items WHERE id = ?1",
                params![id],
                row_to_item,
            )
            .optional()
        })
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
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let prev: Option<(String, i64)> = tx
                .query_row("SELECT state, attempts FROM items WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let problem = matches!(outcome, Outcome::Unresolved | Outcome::Quarantined | Outcome::Failed);
            let attempts: i64 = match (&prev, problem) {
                (Some((state, n)), true) if *state == state_name(outcome) => n + 1,
                (_, true) => 1,
                (_, false) => 0,
            };
            let next = if problem { now + backoff.delay(attempts as u32).as_millis() as i64 } else { 0 };
            let last_error = if problem { Some(details) } else { None };
            tx.execute(
                "INSERT INTO items (id, state, fingerprint, patient_guid, location, attempts, last_error, next_attempt_at, first_seen_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
                 ON CONFLICT(id) DO UPDATE SET state = ?2, fingerprint = COALESCE(?3, fingerprint),
                    patient_guid = COALESCE(?4, patient_guid), location = COALESCE(?5, location),
                    attempts = ?6, last_error = ?7, next_attempt_at = ?8, updated_at = ?9",
                params![id, state_name(outcome), fingerprint, patient_guid, location, attempts, last_error, next, now],
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
                tx.execute(
                    "INSERT INTO sync_log (at, run_id, item_id, patient_guid, action, status, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![now, run_id, id, patient_guid, action, status, details],
                )?;
            }
            tx.commit()
        })
    }

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

    /// The synchronization log, newest first.
    fn log_entries(&self, patient_guid: Option<&str>, limit: u32) -> Result<Vec<LogEntry>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, run_id, item_id, patient_guid, action, status, details FROM sync_log
                 WHERE (?1 IS NULL OR patient_guid = ?1) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![patient_guid, limit], |r| {
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
            })?;
            rows.collect()
        })
    }

    /// A fresh cached answer for a key, if any.
    fn cached(&self, scheme: &str, value: &str) -> Result<Option<CachedAnswer>, LedgerError> {
        let now = now_ms();
        self.with(|c| {
            c.query_row(
                "SELECT answer FROM resolutions WHERE key_hash = ?1 AND expires_at > ?2",
                params![key_hash(scheme, value), now],
                |r| r.get::<_, String>(0),
            )
            .optional()
        })
        .map(|a| a.and_then(|a| decode_answer(&a)))
    }

    /// Stores an answer; returns the previous one (even expired) if it
    /// named a different patient, so the caller can report the change.
    fn remember(
        &self,
        scheme: &str,
        value: &str,
        answer: &CachedAnswer,
        ttl: Duration,
    ) -> Result<Option<CachedAnswer>, LedgerError> {
        let now = now_ms();
        let hash = key_hash(scheme, value);
        let encoded = encode_answer(answer);
        self.with(|c| {
            let prev: Option<String> = c
                .query_row("SELECT answer FROM resolutions WHERE key_hash = ?1", params![hash], |r| r.get(0))
                .optional()?;
            c.execute(
                "INSERT INTO resolutions (key_hash, scheme, answer, fetched_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(key_hash) DO UPDATE SET answer = ?3, fetched_at = ?4, expires_at = ?5",
                params![hash, scheme, encoded, now, now + ttl.as_millis() as i64],
            )?;
            let prev = prev.and_then(|p| decode_answer(&p));
            Ok(match (prev, answer) {
                (Some(CachedAnswer::Resolved(old)), CachedAnswer::Resolved(new)) if old != *new => {
                    Some(CachedAnswer::Resolved(old))
                }
                _ => None,
            })
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

    /// Forgets cached resolutions (after fixing the PMS, say).
    fn clear_resolution_cache(&self) -> Result<usize, LedgerError> {
        self.with(|c| c.execute("DELETE FROM resolutions", []))
    }

    fn status(&self, oldest: u32) -> Result<Status, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT state, count(*) FROM items GROUP BY state ORDER BY state")?;
            let by_state = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt = c.prepare(
                "SELECT id, state, fingerprint, patient_guid, location, attempts, last_error, next_attempt_at, updated_at
                 FROM items WHERE state IN ('failed', 'quarantined', 'unresolved') ORDER BY first_seen_at, id LIMIT ?1",
            )?;
            let oldest_problems = stmt.query_map(params![oldest], row_to_item)?.collect::<rusqlite::Result<Vec<_>>>()?;
            let last_run = c
                .query_row("SELECT id, started_at, finished_at, summary FROM runs ORDER BY id DESC LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            Ok(Status { by_state, oldest_problems, last_run })
        })
    }

    /// Records where a stored image is and what it shows, for the service.
    fn index_image(&self, item_id: &str, guid: &str, location: &str, facts: &ImageFacts) -> Result<(), LedgerError> {
        let now = now_ms();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO images (item_id, patient_guid, location, name, modality, study_date, rows, columns, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(item_id) DO UPDATE SET patient_guid = ?2, location = ?3, name = ?4, modality = ?5,
                    study_date = ?6, rows = ?7, columns = ?8, updated_at = ?9",
                params![item_id, guid, location, facts.name, facts.modality, facts.study_date, facts.rows, facts.columns, now],
            )?;
            if let Some(pn) = facts.patient_name.as_deref().filter(|p| !p.trim().is_empty()) {
                let (display, search) = person_name(pn);
                tx.execute(
                    "INSERT INTO patients (guid, name, search, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(guid) DO UPDATE SET name = ?2, search = ?3, updated_at = ?4",
                    params![guid, display, search, now],
                )?;
            }
            tx.commit()
        })
    }

    /// Stored images of a patient, by location.
    fn images_of(&self, guid: &str) -> Result<Vec<IndexedImage>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT item_id, patient_guid, location, name, modality, study_date, rows, columns
                 FROM images WHERE patient_guid = ?1 ORDER BY location",
            )?;
            let rows = stmt.query_map(params![guid], |r| {
                Ok(IndexedImage {
                    item_id: r.get(0)?,
                    patient_guid: r.get(1)?,
                    location: r.get(2)?,
                    facts: ImageFacts {
                        name: r.get(3)?,
                        patient_name: None,
                        modality: r.get(4)?,
                        study_date: r.get(5)?,
                        rows: r.get(6)?,
                        columns: r.get(7)?,
                    },
                })
            })?;
            rows.collect()
        })
    }

    /// Patients whose first or last name starts with each word of `query`
    /// (case- and accent-insensitive), with their image counts.
    fn search_patients(&self, query: &str, limit: u32) -> Result<Vec<PatientHit>, LedgerError> {
        let words: Vec<String> = fold(query).split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT p.guid, p.name, p.search, (SELECT count(*) FROM images i WHERE i.patient_guid = p.guid)
                 FROM patients p ORDER BY p.name, p.guid",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
            })?;
            let mut hits = Vec::new();
            for row in rows {
                let (guid, name, search, n) = row?;
                let tokens: Vec<&str> = search.split(' ').collect();
                if words.iter().all(|w| tokens.iter().any(|t| t.starts_with(w.as_str()))) {
                    hits.push(PatientHit { guid, name, image_count: n as u64 });
                    if hits.len() >= limit as usize {
                        break;
                    }
                }
            }
            Ok(hits)
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

    /// The items attached to a patient (whatever their state), by id.
    fn items_of(&self, guid: &str) -> Result<Vec<ItemRecord>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, state, fingerprint, patient_guid, location, attempts, last_error, next_attempt_at, updated_at
                 FROM items WHERE patient_guid = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![guid], row_to_item)?;
            rows.collect()
        })
    }

    /// Does the ledger know this patient at all (items, images or log)?
    fn knows_patient(&self, guid: &str) -> Result<bool, LedgerError> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM items WHERE patient_guid = ?1)
                     OR EXISTS(SELECT 1 FROM images WHERE patient_guid = ?1)
                     OR EXISTS(SELECT 1 FROM sync_log WHERE patient_guid = ?1)",
                params![guid],
                |r| r.get(0),
            )
        })
    }

    /// A cheap query proving the database answers (for readiness checks).
    fn ping(&self) -> Result<(), LedgerError> {
        self.with(|c| c.query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0)).map(|_| ()))
    }

    /// Every item record (for tests and tools).
    fn items(&self) -> Result<Vec<ItemRecord>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, state, fingerprint, patient_guid, location, attempts, last_error, next_attempt_at, updated_at
                 FROM items ORDER BY id",
            )?;
            let rows = stmt.query_map([], row_to_item)?;
            rows.collect()
        })
    }
}

fn row_to_log(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
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

fn encode_answer(a: &CachedAnswer) -> String {
    match a {
        CachedAnswer::Resolved(g) => format!("resolved:{g}"),
        CachedAnswer::NotFound => "not-found".into(),
        CachedAnswer::Ambiguous(gs) => format!("ambiguous:{}", gs.join(",")),
    }
}

fn decode_answer(s: &str) -> Option<CachedAnswer> {
    if s == "not-found" {
        return Some(CachedAnswer::NotFound);
    }
    if let Some(g) = s.strip_prefix("resolved:") {
        return Some(CachedAnswer::Resolved(g.to_owned()));
    }
    s.strip_prefix("ambiguous:").map(|gs| CachedAnswer::Ambiguous(gs.split(',').map(str::to_owned).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, SqliteLedger) {
        let dir = tempfile::tempdir().unwrap();
        let l = SqliteLedger::open(&dir.path().join("state/ledger.db")).unwrap();
        (dir, l)
    }

    const B: Backoff = Backoff { base: Duration::from_secs(60), max: Duration::from_secs(3600) };

    #[test]
    fn outcomes_attempts_and_backoff() {
        let (_d, l) = ledger();
        let run = l.begin_run().unwrap();
        l.record(run, "P_1/0000_1.dcm", Outcome::Failed, Some("10:1"), None, None, "store: 503", B).unwrap();
        l.record(run, "P_1/0000_1.dcm", Outcome::Failed, Some("10:1"), None, None, "store: 503", B).unwrap();
        let r = l.item("P_1/0000_1.dcm").unwrap().unwrap();
        assert_eq!((r.state, r.attempts), (Outcome::Failed, 2));
        assert!(r.next_attempt_at >= now_ms() + 119_000, "second failure waits 2 minutes");
        l.record(run, "P_1/0000_1.dcm", Outcome::Stored, Some("10:1"), Some("g"), Some("images/g/x.dcm"), "", B)
            .unwrap();
        let r = l.item("P_1/0000_1.dcm").unwrap().unwrap();
        assert_eq!((r.state, r.attempts, r.next_attempt_at), (Outcome::Stored, 0, 0));
        assert_eq!(r.location.as_deref(), Some("images/g/x.dcm"));
        let log = l.log_entries(None, 10).unwrap();
        assert_eq!(log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["upload", "process", "process"]);
        assert_eq!(B.delay(10), Duration::from_secs(3600));
    }

    #[test]
    fn patient_search_folds_case_and_accents() {
        let (_d, l) = ledger();
        let facts = |pn: &str, name: &str| ImageFacts {
            name: name.into(),
            patient_name: Some(pn.into()),
            ..Default::default()
        };
        l.index_image("a", "g1", "images/g1/a.dcm", &facts("Müller^Jürgen", "a")).unwrap();
        l.index_image("b", "g1", "images/g1/b.dcm", &facts("Müller^Jürgen", "b")).unwrap();
        l.index_image("c", "g2", "images/g2/c.dcm", &facts("Straße^Zoë", "c")).unwrap();
        let s = |q: &str| {
            l.search_patients(q, 10).unwrap().into_iter().map(|h| (h.guid, h.image_count)).collect::<Vec<_>>()
        };
        assert_eq!(s("mul"), vec![("g1".to_string(), 2)]);
        assert_eq!(s("JURG muell"), vec![("g1".to_string(), 2)]);
        assert_eq!(s("strass"), vec![("g2".to_string(), 1)]);
        assert_eq!(s("zoe"), vec![("g2".to_string(), 1)]);
        assert!(s("ller").is_empty(), "prefix, not substring");
        assert_eq!(l.search_patients("müller", 1).unwrap()[0].name, "Müller, Jürgen");
        assert_eq!(l.images_of("g1").unwrap().len(), 2);
    }

    #[test]
    fn resolution_cache_hashes_keys_and_notices_changes() {
        let (_d, l) = ledger();
        assert_eq!(l.cached("card-id", "C-1").unwrap(), None);
        let day = Duration::from_secs(86400);
        assert_eq!(l.remember("card-id", "C-1", &CachedAnswer::Resolved("g1".into()), day).unwrap(), None);
        assert_eq!(l.cached("card-id", "C-1").unwrap(), Some(CachedAnswer::Resolved("g1".into())));
        let changed = l.remember("card-id", "C-1", &CachedAnswer::Resolved("g2".into()), day).unwrap();
        assert_eq!(changed, Some(CachedAnswer::Resolved("g1".into())));
        // no raw key at rest
        let raw: i64 = l
            .with(|c| c.query_row("SELECT count(*) FROM resolutions WHERE key_hash LIKE '%C-1%'", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(raw, 0);
        l.remember("card-id", "C-2", &CachedAnswer::NotFound, Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.cached("card-id", "C-2").unwrap(), None, "expired");
    }
}
