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
//!
//! **Group commit**: the per-item writes of a pass (outcomes with their
//! log rows, the image index, the resolution cache) go into one open
//! transaction, committed every [`BATCH_AGE`] or [`BATCH_MAX`] writes, by
//! any other call, and at the end of the pass. One commit per item wrote
//! more WAL than a small X-ray has bytes; this way a page of the items
//! table is written once per batch. A `kill -9` can lose the last
//! batch's records, never what another call committed: those items are
//! looked at again next pass, and the store finds them unchanged.
//!
//! One module per store, each a narrow trait with its SQLite
//! implementation, so each caller depends on what it uses: the runner on
//! [`Items`], [`Runs`], [`SyncLog`] and [`Resolutions`]; the service on
//! [`Index`] and [`SyncLog`]; the image index is fed by the runner's
//! stored-item events ([`index::Indexer`]). [`Ledger`] is all of them
//! together, for the CLI and the service. A shared database (PostgreSQL,
//! for several `ferry serve` replicas) implements the same traits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

pub mod access_log;
pub mod documents;
pub mod index;
pub mod items;
pub mod registry;
pub mod resolutions;
pub mod runs;
pub mod sync_log;

pub use crate::retry::Backoff;

/// Every store trait, for callers that use the whole ledger:
/// `use ferry::ledger::prelude::*;`.
pub mod prelude {
    pub use super::{
        AccessLog as _, Documents as _, Index as _, Items as _, Ledger as _, Registry as _, Resolutions as _,
        Runs as _, SyncLog as _,
    };
}
pub use access_log::{AccessEntry, AccessLog};
pub use documents::{DocumentRow, Documents, ShareRow};
pub use index::{fold, ImageFacts, Index, IndexedImage, Indexer, PatientHit};
pub use items::{ItemRecord, Items};
pub use registry::{PatientRow, Registry, UserRow};
pub use resolutions::{key_hash, CachedAnswer, Resolutions};
pub use runs::Runs;
pub use sync_log::{LogEntry, SyncLog};

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

/// Counts and the oldest problems, for `ferry status`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub by_state: Vec<(String, u64)>,
    pub oldest_problems: Vec<ItemRecord>,
    pub last_run: Option<runs::RunRow>,
    /// Why items wait for a later pass, most common first: `(why, count)`.
    pub waiting: Vec<(String, u64)>,
}

/// Every store together (the CLI, the service). Calls are synchronous and
/// short; callers on async threads keep them brief.
pub trait Ledger: Items + Runs + SyncLog + Resolutions + Index + Registry + Documents + AccessLog {
    /// Does the ledger know this patient at all (items, images or log)?
    fn knows_patient(&self, guid: &str) -> Result<bool, LedgerError>;

    /// A cheap query proving the database answers (for readiness checks).
    fn ping(&self) -> Result<(), LedgerError>;

    /// Counts by state, the `oldest` oldest problems and the last run.
    fn status(&self, oldest: u32) -> Result<Status, LedgerError> {
        Ok(Status {
            by_state: self.by_state()?,
            oldest_problems: self.oldest_problems(oldest)?,
            last_run: self.last_run()?,
            waiting: self.waiting_reasons(5)?,
        })
    }
}

/// The ledger in one SQLite file (the default; one `ferry` per clinic).
pub struct SqliteLedger {
    path: PathBuf,
    conn: Arc<Mutex<Conn>>,
}

/// Batched writes are committed at the latest this long after the first.
pub const BATCH_AGE: Duration = Duration::from_millis(100);
/// ... or after this many.
pub const BATCH_MAX: u32 = 512;

/// The connection, and the transaction holding batched writes, if open:
/// since when, how many.
struct Conn {
    conn: Connection,
    batch: Option<(Instant, u32)>,
}

impl Conn {
    /// Commits the open batch, if any. Should that fail, its writes are
    /// gone (SQLite rolls back) and the items they recorded are looked at
    /// again next pass.
    fn commit(&mut self) -> rusqlite::Result<()> {
        let Some((_, n)) = self.batch.take() else { return Ok(()) };
        let r = self.conn.execute_batch("COMMIT");
        if r.is_err() {
            tracing::error!(
                "the ledger could not commit the last {n} outcomes; those items are checked again next pass"
            );
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
        }
        r
    }
}

/// A savepoint: one call's writes, all or none. Its own transaction
/// outside a batch, nested in the batch inside one.
pub(crate) struct Atomic<'a> {
    conn: &'a Connection,
    done: bool,
}

impl<'a> Atomic<'a> {
    pub(crate) fn begin(conn: &'a Connection) -> rusqlite::Result<Self> {
        conn.execute_batch("SAVEPOINT ferry_atomic")?;
        Ok(Atomic { conn, done: false })
    }

    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.execute_batch("RELEASE ferry_atomic")
    }
}

impl std::ops::Deref for Atomic<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Atomic<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK TO ferry_atomic; RELEASE ferry_atomic");
        }
    }
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        let _ = self.lock().commit();
    }
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
        // the per-item statements are prepared once (`prepare_cached`)
        conn.set_prepared_statement_cache_capacity(64);
        // WAL + NORMAL: a killed process loses nothing it committed; a
        // power cut may lose the last commits, never consistency.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        for schema in [
            items::SCHEMA,
            runs::SCHEMA,
            sync_log::SCHEMA,
            resolutions::SCHEMA,
            index::SCHEMA,
            registry::SCHEMA,
            documents::SCHEMA,
            access_log::SCHEMA,
        ] {
            conn.execute_batch(schema).map_err(err)?;
        }
        let conn = Arc::new(Mutex::new(Conn { conn, batch: None }));
        // commits a batch that waits longer than BATCH_AGE for its next write
        let weak = Arc::downgrade(&conn);
        std::thread::Builder::new()
            .name("ferry-ledger".into())
            .spawn(move || loop {
                std::thread::sleep(BATCH_AGE / 2);
                let Some(conn) = weak.upgrade() else { return };
                let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                if c.batch.is_some_and(|(since, _)| since.elapsed() >= BATCH_AGE) {
                    let _ = c.commit();
                }
            })
            .map_err(|e| {
                err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!("cannot start the ledger's commit thread: {e}")),
                ))
            })?;
        Ok(SqliteLedger { path: path.to_owned(), conn })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError { path: self.path.clone(), source: Box::new(source) }
    }

    /// Runs `f`, durable when this returns: it commits an open batch too.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, LedgerError> {
        let mut c = self.lock();
        let r = f(&c.conn);
        let committed = c.commit();
        let r = r.map_err(|e| self.error(e))?;
        committed.map_err(|e| self.error(e))?;
        Ok(r)
    }

    /// Runs a read: it sees batched writes and commits nothing.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, LedgerError> {
        f(&self.lock().conn).map_err(|e| self.error(e))
    }

    /// Runs a per-item write in the open batch (see the module docs);
    /// `f` makes its own writes atomic with an [`Atomic`].
    pub(crate) fn batched<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, LedgerError> {
        let mut c = self.lock();
        if c.batch.is_none() {
            c.conn.execute_batch("BEGIN").map_err(|e| self.error(e))?;
            c.batch = Some((Instant::now(), 0));
        }
        let r = f(&c.conn);
        if let Some((since, n)) = &mut c.batch {
            *n += 1;
            if *n >= BATCH_MAX || since.elapsed() >= BATCH_AGE {
                c.commit().map_err(|e| self.error(e))?;
            }
        }
        r.map_err(|e| self.error(e))
    }
}

impl Ledger for SqliteLedger {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    fn ledger() -> (tempfile::TempDir, SqliteLedger) {
        let dir = tempfile::tempdir().unwrap();
        let l = SqliteLedger::open(&dir.path().join("state/ledger.db")).unwrap();
        (dir, l)
    }

    const B: Backoff = Backoff { base: Duration::from_secs(60), max: Duration::from_secs(3600) };

    #[test]
    fn items_by_id_reads_a_page_at_once() {
        let (_d, l) = ledger();
        let run = l.begin_run().unwrap();
        for i in [1, 2, 300] {
            l.record(run, &format!("i{i}"), Outcome::Stored, Some("1:1"), Some("g"), None, "", B).unwrap();
        }
        // more ids than one chunk, unknown ones among them, a short last chunk
        let ids: Vec<String> = (0..400).map(|i| format!("i{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let got = l.items_by_id(&ids).unwrap();
        let mut keys: Vec<&str> = got.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["i1", "i2", "i300"]);
        assert_eq!(got["i300"].state, Outcome::Stored);
        assert!(l.items_by_id(&[]).unwrap().is_empty());
    }

    /// What a second connection (`ferry status`, `ferry serve`, another
    /// process) sees of the items table.
    fn committed_items(path: &Path) -> i64 {
        let c = Connection::open(path).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.query_row("SELECT count(*) FROM items", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn per_item_writes_are_committed_in_groups_and_any_other_call_commits_them() {
        let (d, l) = ledger();
        let path = d.path().join("state/ledger.db");
        let run = l.begin_run().unwrap();
        l.record(run, "a", Outcome::Stored, Some("1:1"), Some("g"), Some("k/a"), "", B).unwrap();
        l.record(run, "b", Outcome::Stored, Some("1:1"), Some("g"), Some("k/b"), "", B).unwrap();
        // the writer sees its batch at once
        assert_eq!(l.items_by_id(&["a", "b"]).unwrap().len(), 2);
        // any plain call commits it, and is itself durable on return
        l.log(run, "x", None, "note", "ok", "").unwrap();
        assert_eq!(committed_items(&path), 2);
        // a batch nobody adds to is committed by the ledger's thread
        l.record(run, "c", Outcome::Stored, Some("1:1"), Some("g"), Some("k/c"), "", B).unwrap();
        let waited = Instant::now();
        while committed_items(&path) < 3 {
            assert!(waited.elapsed() < Duration::from_secs(30), "the batch was never committed");
            std::thread::sleep(BATCH_AGE / 4);
        }
        // a full batch commits itself
        for i in 0..BATCH_MAX {
            l.record(run, &format!("n{i}"), Outcome::Stored, Some("1:1"), None, None, "", B).unwrap();
        }
        assert!(committed_items(&path) >= 3 + i64::from(BATCH_MAX) - 1);
        // and dropping the ledger commits what is left
        l.record(run, "last", Outcome::Stored, Some("1:1"), None, None, "", B).unwrap();
        drop(l);
        assert_eq!(committed_items(&path), 3 + i64::from(BATCH_MAX) + 1);
    }

    #[test]
    fn a_failed_write_in_a_batch_undoes_only_itself() {
        let (d, l) = ledger();
        let path = d.path().join("state/ledger.db");
        let run = l.begin_run().unwrap();
        l.record(run, "a", Outcome::Stored, Some("1:1"), Some("g"), Some("k/a"), "", B).unwrap();
        // the sync log row of this outcome fails (a trigger stands in for a
        // full disk): its item row must go with it, the batch must stay
        l.with(|c| {
            c.execute_batch(
                "CREATE TRIGGER refuse AFTER INSERT ON sync_log WHEN NEW.item_id = 'b'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
        })
        .unwrap();
        l.record(run, "c", Outcome::Stored, Some("1:1"), Some("g"), Some("k/c"), "", B).unwrap();
        assert!(l.record(run, "b", Outcome::Stored, Some("1:1"), Some("g"), Some("k/b"), "", B).is_err());
        l.record(run, "d", Outcome::Stored, Some("1:1"), Some("g"), Some("k/d"), "", B).unwrap();
        drop(l);
        let c = Connection::open(&path).unwrap();
        let ids: Vec<String> = c
            .prepare("SELECT id FROM items ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids, ["a", "c", "d"]);
    }

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
            l.search_patients(q, None, 10).unwrap().into_iter().map(|h| (h.guid, h.image_count)).collect::<Vec<_>>()
        };
        assert_eq!(s("mul"), vec![("g1".to_string(), 2)]);
        assert_eq!(s("JURG muell"), vec![("g1".to_string(), 2)]);
        assert_eq!(s("strass"), vec![("g2".to_string(), 1)]);
        assert_eq!(s("zoe"), vec![("g2".to_string(), 1)]);
        assert!(s("ller").is_empty(), "prefix, not substring");
        assert_eq!(l.search_patients("müller", None, 1).unwrap()[0].name, "Müller, Jürgen");
        // keyset paging by (name, guid)
        l.index_image("d", "g0", "images/g0/d.dcm", &facts("Müller^Anna", "d")).unwrap();
        let page = |after: Option<&str>| {
            l.search_patients("mül", after, 1).unwrap().into_iter().map(|h| h.guid).collect::<Vec<_>>()
        };
        assert_eq!(page(None), ["g0"]);
        assert_eq!(page(Some("g0")), ["g1"]);
        assert!(page(Some("g1")).is_empty());
        assert!(page(Some("unknown")).is_empty());
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
