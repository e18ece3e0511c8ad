//! The image index: where each stored image is and what it shows, and
//! the patients' names folded for search. Only the service reads it; it
//! is fed by the runner's stored-item events ([`Indexer`]), so the runner
//! knows nothing about it.

use std::sync::Arc;

use rusqlite::params;

use super::{now_ms, LedgerError, SqliteLedger};
pub use crate::outcome::ImageFacts;
use crate::outcome::{StoredItem, StoredItemListener};

pub(super) const SCHEMA: &str = r#"
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
"#;

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
    (display, search_words(&parts))
}

/// The search form of a name's parts: each word folded, plus its German
/// transliteration (ü → ue ...), so that "Mueller" finds "Müller" as well
/// as "Muller" does; words split at spaces and hyphens.
pub(crate) fn search_words(parts: &[&str]) -> String {
    let mut words: Vec<String> = Vec::new();
    for t in parts.iter().flat_map(|p| p.split(|c: char| c.is_whitespace() || c == '-')).filter(|t| !t.is_empty()) {
        let german = fold(&t.to_lowercase().replace('ä', "ae").replace('ö', "oe").replace('ü', "ue"));
        let plain = fold(t);
        if german != plain {
            words.push(german);
        }
        words.push(plain);
    }
    words.join(" ")
}

/// The image/patient index the service lists and searches.
pub trait Index: Send + Sync {
    /// Records where a stored image is and what it shows, for the service.
    fn index_image(&self, item_id: &str, guid: &str, location: &str, facts: &ImageFacts) -> Result<(), LedgerError>;

    /// Stored images of a patient, by location.
    fn images_of(&self, guid: &str) -> Result<Vec<IndexedImage>, LedgerError>;

    /// Patients whose first or last name starts with each word of `query`
    /// (case- and accent-insensitive), with their image counts, by name;
    /// `after` a patient guid: the ones following it (keyset paging).
    fn search_patients(&self, query: &str, after: Option<&str>, limit: u32) -> Result<Vec<PatientHit>, LedgerError>;
}

impl Index for SqliteLedger {
    /// Records where a stored image is and what it shows, for the service.
    fn index_image(&self, item_id: &str, guid: &str, location: &str, facts: &ImageFacts) -> Result<(), LedgerError> {
        let now = now_ms();
        self.batched(|c| {
            let tx = super::Atomic::begin(c)?;
            tx.prepare_cached("INSERT INTO images (item_id, patient_guid, location, name, modality, study_date, rows, columns, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(item_id) DO UPDATE SET patient_guid = ?2, location = ?3, name = ?4, modality = ?5,
                    study_date = ?6, rows = ?7, columns = ?8, updated_at = ?9")?.execute(params![item_id, guid, location, facts.name, facts.modality, facts.study_date, facts.rows, facts.columns, now],
            )?;
            if let Some(pn) = facts.patient_name.as_deref().filter(|p| !p.trim().is_empty()) {
                let (display, search) = person_name(pn);
                tx.prepare_cached("INSERT INTO patients (guid, name, search, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(guid) DO UPDATE SET name = ?2, search = ?3, updated_at = ?4")?.execute(params![guid, display, search, now],
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
    fn search_patients(&self, query: &str, after: Option<&str>, limit: u32) -> Result<Vec<PatientHit>, LedgerError> {
        let words: Vec<String> = fold(query).split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        self.with(|c| {
            // an `after` guid the index does not know compares as NULL: no rows
            let mut stmt = c.prepare(
                "SELECT p.guid, p.name, p.search FROM patients p
                 WHERE ?1 IS NULL OR (p.name, p.guid) > ((SELECT name FROM patients WHERE guid = ?1), ?1)
                 ORDER BY p.name, p.guid",
            )?;
            let rows = stmt.query_map(params![after], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            let mut hits = Vec::new();
            for row in rows {
                let (guid, name, search) = row?;
                let tokens: Vec<&str> = search.split(' ').collect();
                if words.iter().all(|w| tokens.iter().any(|t| t.starts_with(w.as_str()))) {
                    hits.push(PatientHit { guid, name, image_count: 0 });
                    if hits.len() >= limit as usize {
                        break;
                    }
                }
            }
            drop(stmt);
            // counted for the hits only, not for every patient scanned
            let mut count = c.prepare_cached("SELECT count(*) FROM images WHERE patient_guid = ?1")?;
            for h in &mut hits {
                h.image_count = count.query_row(params![h.guid], |r| r.get::<_, i64>(0))? as u64;
            }
            Ok(hits)
        })
    }
}

/// Feeds the index from the runner's stored-item events.
pub struct Indexer(pub Arc<dyn Index>);

impl StoredItemListener for Indexer {
    fn stored(&self, event: &StoredItem) {
        if let Err(e) = self.0.index_image(&event.item_id, &event.patient_guid, &event.location, &event.facts) {
            tracing::warn!("cannot index {}: {e}", event.item_id);
        }
    }
}
