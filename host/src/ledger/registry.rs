//! The registry: the users of `ferry serve` and the patient records of the
//! records API (`/api/v1/users`, `/api/v1/patients`), next to the ledger
//! because a patient record *is* its patient guid, the id every pipeline
//! resolves to, so images, documents and the sync log join on it.
//!
//! The store is deliberately dumb: PHI fields arrive already sealed
//! (`crate::seal`, done by the service's records layer) and are kept as
//! opaque text; who may read or change what is decided by the service's
//! authorization layer, not here. Deletes are soft (`deleted_at`), so the
//! sync log and access log keep pointing at something.

use rusqlite::{params, OptionalExtension, Row};

use super::index::search_words;
use super::{now_ms, LedgerError, SqliteLedger};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS registry_users (
    sub          TEXT PRIMARY KEY,
    email        TEXT NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    profession   TEXT,
    patient_guid TEXT,
    external_ids TEXT NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_patients (
    guid          TEXT PRIMARY KEY,
    family        TEXT NOT NULL,
    given         TEXT NOT NULL,
    search        TEXT NOT NULL,
    email_sealed  TEXT,
    contact_sealed TEXT,
    history_sealed TEXT,
    diet_sealed   TEXT,
    owner_sub     TEXT NOT NULL,
    external_ids  TEXT NOT NULL DEFAULT '{}',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    deleted_at    INTEGER
);
CREATE INDEX IF NOT EXISTS registry_patients_owner ON registry_patients(owner_sub, family, given, guid);
"#;

/// A user as stored. `kind` is `practitioner`, `patient` or `staff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub kind: String,
    /// Practitioners: Dietician, Dentist, Physiotherapist, …
    pub profession: Option<String>,
    /// Patient users: their record.
    pub patient_guid: Option<String>,
    /// JSON object: platform → id.
    pub external_ids: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A patient record as stored; `*_sealed` are sealed text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatientRow {
    pub guid: String,
    pub family: String,
    pub given: String,
    pub email_sealed: Option<String>,
    pub contact_sealed: Option<String>,
    pub history_sealed: Option<String>,
    pub diet_sealed: Option<String>,
    pub owner_sub: String,
    /// JSON object: platform → id.
    pub external_ids: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Users and patient records.
pub trait Registry: Send + Sync {
    fn user(&self, sub: &str) -> Result<Option<UserRow>, LedgerError>;
    /// Users ordered by `sub`, after `after`.
    fn users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRow>, LedgerError>;
    /// Creates or replaces (keeping `created_at`).
    fn put_user(&self, user: &UserRow) -> Result<(), LedgerError>;
    /// False when there was none.
    fn delete_user(&self, sub: &str) -> Result<bool, LedgerError>;

    /// A live (not deleted) patient record.
    fn patient(&self, guid: &str) -> Result<Option<PatientRow>, LedgerError>;
    /// Does a record with this guid exist, deleted or not?
    fn patient_exists(&self, guid: &str) -> Result<bool, LedgerError>;
    /// Live records ordered by (family, given, guid), optionally of one
    /// owner and matching a name query (each word the start of a name
    /// word, case- and accent-insensitive), after the `after` guid's place.
    fn patients(
        &self,
        owner: Option<&str>,
        name: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PatientRow>, LedgerError>;
    /// False when the guid is taken (deleted records keep theirs).
    fn create_patient(&self, p: &PatientRow) -> Result<bool, LedgerError>;
    /// False when there is no live record.
    fn update_patient(&self, p: &PatientRow) -> Result<bool, LedgerError>;
    /// Soft delete; false when there is no live record.
    fn delete_patient(&self, guid: &str) -> Result<bool, LedgerError>;

    /// Every record, deleted ones too, by guid (for resealing).
    fn all_patients(&self) -> Result<Vec<PatientRow>, LedgerError>;
    /// Writes a record's sealed fields only, deleted or not (resealing).
    fn set_sealed(&self, p: &PatientRow) -> Result<(), LedgerError>;
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        sub: r.get(0)?,
        email: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        profession: r.get(4)?,
        patient_guid: r.get(5)?,
        external_ids: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

const USER_COLS: &str = "sub, email, name, kind, profession, patient_guid, external_ids, created_at, updated_at";
const PATIENT_COLS: &str =
    "guid, family, given, email_sealed, contact_sealed, history_sealed, diet_sealed, owner_sub, \
                            external_ids, created_at, updated_at";

fn patient_row(r: &Row<'_>) -> rusqlite::Result<PatientRow> {
    Ok(PatientRow {
        guid: r.get(0)?,
        family: r.get(1)?,
        given: r.get(2)?,
        email_sealed: r.get(3)?,
        contact_sealed: r.get(4)?,
        history_sealed: r.get(5)?,
        diet_sealed: r.get(6)?,
        owner_sub: r.get(7)?,
        external_ids: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

/// `?1`…`?11` of a record's insert and update: guid, family, given, search,
/// the four sealed fields, owner, external ids, the time.
#[allow(clippy::ptr_arg)] // a &String is what coerces to &dyn ToSql
fn patient_params<'a>(p: &'a PatientRow, search: &'a String, now: &'a i64) -> [&'a dyn rusqlite::ToSql; 11] {
    [
        &p.guid,
        &p.family,
        &p.given,
        search,
        &p.email_sealed,
        &p.contact_sealed,
        &p.history_sealed,
        &p.diet_sealed,
        &p.owner_sub,
        &p.external_ids,
        now,
    ]
}

impl Registry for SqliteLedger {
    fn user(&self, sub: &str) -> Result<Option<UserRow>, LedgerError> {
        self.with(|c| {
            c.query_row(&format!("SELECT {USER_COLS} FROM registry_users WHERE sub = ?1"), params![sub], user_row)
                .optional()
        })
    }

    fn users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRow>, LedgerError> {
        self.with(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {USER_COLS} FROM registry_users WHERE sub > ?1 ORDER BY sub LIMIT ?2"))?;
            let rows = stmt.query_map(params![after.unwrap_or(""), limit], user_row)?;
            rows.collect()
        })
    }

    fn put_user(&self, u: &UserRow) -> Result<(), LedgerError> {
        let now = now_ms();
        self.with(|c| {
            c.execute(
                "INSERT INTO registry_users (sub, email, name, kind, profession, patient_guid, external_ids, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT(sub) DO UPDATE SET email = ?2, name = ?3, kind = ?4, profession = ?5, patient_guid = ?6,
                    external_ids = ?7, updated_at = ?8",
                params![u.sub, u.email, u.name, u.kind, u.profession, u.patient_guid, u.external_ids, now],
            )
            .map(|_| ())
        })
    }

    fn delete_user(&self, sub: &str) -> Result<bool, LedgerError> {
        self.with(|c| c.execute("DELETE FROM registry_users WHERE sub = ?1", params![sub]).map(|n| n > 0))
    }

    fn patient(&self, guid: &str) -> Result<Option<PatientRow>, LedgerError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {PATIENT_COLS} FROM registry_patients WHERE guid = ?1 AND deleted_at IS NULL"),
                params![guid],
                patient_row,
            )
            .optional()
        })
    }

    fn patient_exists(&self, guid: &str) -> Result<bool, LedgerError> {
        self.with(|c| {
            c.query_row("SELECT EXISTS(SELECT 1 FROM registry_patients WHERE guid = ?1)", params![guid], |r| r.get(0))
        })
    }

    fn patients(
        &self,
        owner: Option<&str>,
        name: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PatientRow>, LedgerError> {
        let words: Vec<String> =
            name.map(|n| super::fold(n).split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
        self.with(|c| {
            // keyset paging on (family, given, guid) of the `after` record
            let start: Option<(String, String, String)> = match after {
                None => None,
                Some(g) => c
                    .query_row("SELECT family, given, guid FROM registry_patients WHERE guid = ?1", params![g], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?,
            };
            let (f, g, id) = start.unwrap_or_default();
            let mut stmt = c.prepare(&format!(
                "SELECT {PATIENT_COLS}, search FROM registry_patients
                 WHERE deleted_at IS NULL AND (?1 IS NULL OR owner_sub = ?1)
                   AND (?2 = 0 OR (family, given, guid) > (?3, ?4, ?5))
                 ORDER BY family, given, guid"
            ))?;
            let rows = stmt.query_map(params![owner, after.is_some() as i64, f, g, id], |r| {
                Ok((patient_row(r)?, r.get::<_, String>(11)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (p, search) = row?;
                let tokens: Vec<&str> = search.split(' ').collect();
                if words.iter().all(|w| tokens.iter().any(|t| t.starts_with(w.as_str()))) {
                    out.push(p);
                    if out.len() >= limit as usize {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn create_patient(&self, p: &PatientRow) -> Result<bool, LedgerError> {
        let search = search_words(&[&p.family, &p.given]);
        let now = now_ms();
        self.with(|c| {
            c.execute(
                "INSERT INTO registry_patients (guid, family, given, search, email_sealed, contact_sealed, history_sealed,
                    diet_sealed, owner_sub, external_ids, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)
                 ON CONFLICT(guid) DO NOTHING",
                &patient_params(p, &search, &now)[..],
            )
            .map(|n| n > 0)
        })
    }

    fn update_patient(&self, p: &PatientRow) -> Result<bool, LedgerError> {
        let search = search_words(&[&p.family, &p.given]);
        let now = now_ms();
        self.with(|c| {
            c.execute(
                "UPDATE registry_patients SET family = ?2, given = ?3, search = ?4, email_sealed = ?5, contact_sealed = ?6,
                    history_sealed = ?7, diet_sealed = ?8, owner_sub = ?9, external_ids = ?10, updated_at = ?11
                 WHERE guid = ?1 AND deleted_at IS NULL",
                &patient_params(p, &search, &now)[..],
            )
            .map(|n| n > 0)
        })
    }

    fn all_patients(&self) -> Result<Vec<PatientRow>, LedgerError> {
        self.all_patients_impl()
    }

    fn set_sealed(&self, p: &PatientRow) -> Result<(), LedgerError> {
        self.with(|c| {
            c.execute(
                "UPDATE registry_patients SET email_sealed = ?2, contact_sealed = ?3, history_sealed = ?4, diet_sealed = ?5
                 WHERE guid = ?1",
                params![p.guid, p.email_sealed, p.contact_sealed, p.history_sealed, p.diet_sealed],
            )
            .map(|_| ())
        })
    }

    fn delete_patient(&self, guid: &str) -> Result<bool, LedgerError> {
        self.with(|c| {
            c.execute(
                "UPDATE registry_patients SET deleted_at = ?2 WHERE guid = ?1 AND deleted_at IS NULL",
                params![guid, now_ms()],
            )
            .map(|n| n > 0)
        })
    }
}

impl SqliteLedger {
    fn all_patients_impl(&self) -> Result<Vec<PatientRow>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {PATIENT_COLS} FROM registry_patients ORDER BY guid"))?;
            let rows = stmt.query_map([], patient_row)?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, SqliteLedger) {
        let dir = tempfile::tempdir().unwrap();
        let l = SqliteLedger::open(&dir.path().join("ledger.db")).unwrap();
        (dir, l)
    }

    fn patient(guid: &str, family: &str, given: &str, owner: &str) -> PatientRow {
        PatientRow {
            guid: guid.into(),
            family: family.into(),
            given: given.into(),
            owner_sub: owner.into(),
            external_ids: "{}".into(),
            ..Default::default()
        }
    }

    #[test]
    fn patients_by_owner_name_and_page() {
        let (_d, l) = ledger();
        for (g, f, n, o) in [
            ("g1", "Müller", "Anna", "dr-a"),
            ("g2", "Weber", "Ben", "dr-a"),
            ("g3", "Kaya", "Cem", "dr-b"),
            ("g4", "Mueller-Lang", "Dora", "dr-a"),
        ] {
            assert!(l.create_patient(&patient(g, f, n, o)).unwrap());
        }
        assert!(!l.create_patient(&patient("g1", "X", "Y", "dr-b")).unwrap(), "the guid is taken");
        let guids = |v: Vec<PatientRow>| v.into_iter().map(|p| p.guid).collect::<Vec<_>>();
        assert_eq!(guids(l.patients(Some("dr-a"), None, None, 10).unwrap()), ["g4", "g1", "g2"]);
        assert_eq!(guids(l.patients(None, None, None, 10).unwrap()), ["g3", "g4", "g1", "g2"]);
        assert_eq!(guids(l.patients(Some("dr-a"), Some("mul"), None, 10).unwrap()), ["g1"]);
        assert_eq!(guids(l.patients(Some("dr-a"), Some("muell"), None, 10).unwrap()), ["g4", "g1"]);
        assert_eq!(guids(l.patients(Some("dr-a"), Some("lang d"), None, 10).unwrap()), ["g4"]);
        // pages
        assert_eq!(guids(l.patients(None, None, None, 2).unwrap()), ["g3", "g4"]);
        assert_eq!(guids(l.patients(None, None, Some("g4"), 2).unwrap()), ["g1", "g2"]);
        // soft delete: gone from reads, the guid stays taken
        assert!(l.delete_patient("g2").unwrap());
        assert!(!l.delete_patient("g2").unwrap());
        assert_eq!(l.patient("g2").unwrap(), None);
        assert!(l.patient_exists("g2").unwrap());
        assert!(!l.create_patient(&patient("g2", "Weber", "Ben", "dr-a")).unwrap());
        let mut p = l.patient("g3").unwrap().unwrap();
        p.family = "Kaya-Demir".into();
        assert!(l.update_patient(&p).unwrap());
        assert_eq!(guids(l.patients(None, Some("demir"), None, 10).unwrap()), ["g3"]);
    }

    #[test]
    fn users_put_list_delete() {
        let (_d, l) = ledger();
        let u = |sub: &str| UserRow {
            sub: sub.into(),
            email: format!("{sub}@example.test"),
            name: sub.into(),
            kind: "practitioner".into(),
            profession: Some("Dietician".into()),
            patient_guid: None,
            external_ids: "{}".into(),
            created_at: 0,
            updated_at: 0,
        };
        l.put_user(&u("b")).unwrap();
        l.put_user(&u("a")).unwrap();
        let first = l.user("a").unwrap().unwrap();
        let mut changed = u("a");
        changed.name = "Anna".into();
        l.put_user(&changed).unwrap();
        let after = l.user("a").unwrap().unwrap();
        assert_eq!((after.name.as_str(), after.created_at), ("Anna", first.created_at));
        assert_eq!(l.users(None, 10).unwrap().iter().map(|u| u.sub.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(l.users(Some("a"), 10).unwrap().len(), 1);
        assert!(l.delete_user("a").unwrap());
        assert!(!l.delete_user("a").unwrap());
    }
}
