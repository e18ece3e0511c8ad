//! The resolution cache: patient keys are asked once per TTL. Keys are
//! stored hashed (`sha256(scheme, value)`), so no card id sits in ferry's
//! state; an answer that names another patient than before is reported.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{now_ms, LedgerError, SqliteLedger};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS resolutions (
    key_hash   TEXT PRIMARY KEY,
    scheme     TEXT NOT NULL,
    answer     TEXT NOT NULL,
    fetched_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
"#;

/// A cached answer for one patient key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedAnswer {
    Resolved(String),
    NotFound,
    Ambiguous(Vec<String>),
}

/// `sha256("scheme\0value")`: the cache never holds a raw card id.
pub fn key_hash(scheme: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(scheme.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    hex::encode(h.finalize())
}

/// The resolution cache the runner consults before asking the resolver.
pub trait Resolutions: Send + Sync {
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

    /// Forgets cached resolutions (after fixing the PMS, say).
    fn clear_resolution_cache(&self) -> Result<usize, LedgerError>;
}

impl Resolutions for SqliteLedger {
    /// A fresh cached answer for a key, if any.
    fn cached(&self, scheme: &str, value: &str) -> Result<Option<CachedAnswer>, LedgerError> {
        let now = now_ms();
        self.read(|c| {
            c.prepare_cached("SELECT answer FROM resolutions WHERE key_hash = ?1 AND expires_at > ?2")?
                .query_row(params![key_hash(scheme, value), now], |r| r.get::<_, String>(0))
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
        // a cached answer lost to a crash is only asked again
        self.batched(|c| {
            let prev: Option<String> = c
                .prepare_cached("SELECT answer FROM resolutions WHERE key_hash = ?1")?
                .query_row(params![hash], |r| r.get(0))
                .optional()?;
            c.prepare_cached(
                "INSERT INTO resolutions (key_hash, scheme, answer, fetched_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(key_hash) DO UPDATE SET answer = ?3, fetched_at = ?4, expires_at = ?5",
            )?
            .execute(params![hash, scheme, encoded, now, now + ttl.as_millis() as i64])?;
            let prev = prev.and_then(|p| decode_answer(&p));
            Ok(match (prev, answer) {
                (Some(CachedAnswer::Resolved(old)), CachedAnswer::Resolved(new)) if old != *new => {
                    Some(CachedAnswer::Resolved(old))
                }
                _ => None,
            })
        })
    }

    /// Forgets cached resolutions (after fixing the PMS, say).
    fn clear_resolution_cache(&self) -> Result<usize, LedgerError> {
        self.with(|c| c.execute("DELETE FROM resolutions", []))
    }
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
