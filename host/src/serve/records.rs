//! The records of the records API — users and patient records — as the
//! API shows them, turned to and from the registry's rows
//! ([`crate::ledger::registry`]). This is where PHI is sealed on the way
//! in and opened on the way out ([`crate::seal`]), so neither the store
//! nor the handlers ever hold a sealed field in the wrong form.
//!
//! Patient names stay readable in the database (they are what search
//! works on, as in the image index); e-mail, contact details, medical
//! history and dietary preferences are sealed, bound to their row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::authz::Kind;
use super::problem::{ApiResult, Problem};
use crate::config::RecordsConfig;
use crate::ledger::{PatientRow, UserRow};
use crate::seal::Sealer;

/// Platform → id: the record's id in each external platform
/// (`carepatron`, `opendental`, `fhir`, …).
pub type ExternalIds = BTreeMap<String, String>;

/// Most external ids per record.
const MAX_EXTERNAL_IDS: usize = 16;
/// Longest free-text field, in characters.
const MAX_TEXT: usize = 20_000;

/// Fields the server sets (times, links): documented as `readOnly`, and
/// ignored when a client sends them back (a GET's body PUT again).
fn read_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    serde::de::IgnoredAny::deserialize(d)?;
    Ok(String::new())
}

/// What a user is, in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserType {
    Practitioner,
    Patient,
    Staff,
}

/// A user of the service, keyed by their token's `sub`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    /// The `sub` of the user's tokens.
    pub sub: String,
    pub email: String,
    pub name: String,
    #[serde(rename = "type")]
    pub user_type: UserType,
    /// Practitioners: Dietician, Dentist, Physiotherapist, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profession: Option<String>,
    /// Patient users: their patient record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_guid: Option<String>,
    /// The user's id per external platform.
    #[serde(default)]
    pub external_ids: ExternalIds,
    /// RFC 3339, UTC (set by the server).
    #[serde(default, deserialize_with = "read_only")]
    #[schema(read_only)]
    pub created_at: String,
    #[serde(default, deserialize_with = "read_only")]
    #[schema(read_only)]
    pub updated_at: String,
}

/// A patient record. The patient guid is the id every pipeline resolves
/// to, so the record's images and documents are the guid's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patient {
    /// Given on create (the guid the pipelines resolve this patient to),
    /// or made by the server (a UUID).
    #[serde(default)]
    pub patient_guid: String,
    pub family: String,
    pub given: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone, address, …: free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medical_history: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dietary_preferences: Option<String>,
    /// The patient's id per external platform (Carepatron, Open Dental
    /// PatNum, FHIR Patient id).
    #[serde(default)]
    pub external_ids: ExternalIds,
    /// The owning practitioner's `sub`. Set by the server to the creator;
    /// only an admin may name another.
    #[serde(default)]
    pub owner: String,
    #[serde(default, deserialize_with = "read_only")]
    #[schema(read_only)]
    pub created_at: String,
    #[serde(default, deserialize_with = "read_only")]
    #[schema(read_only)]
    pub updated_at: String,
    /// This record.
    #[serde(default, deserialize_with = "read_only")]
    #[schema(read_only)]
    pub href: String,
    /// The patient's images.
    #[serde(default, deserialize_with = "read_only")]
    #[schema(read_only)]
    pub images_href: String,
}

fn bad(field: &str, why: impl std::fmt::Display) -> Problem {
    Problem::bad_request("invalid-field", format!("`{field}` {why}"))
}

fn text(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.chars().count() > max {
        return Err(bad(field, format!("is at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(())
}

fn line(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.trim().is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if v.chars().any(char::is_control) {
        return Err(bad(field, "is one line without control characters"));
    }
    text(field, v, max)
}

fn email(field: &str, v: &str) -> ApiResult<()> {
    line(field, v, 254)?;
    match v.split_once('@') {
        Some((a, d)) if !a.is_empty() && d.contains('.') && !v.contains(char::is_whitespace) => Ok(()),
        _ => Err(bad(field, "is not an e-mail address")),
    }
}

fn external_ids(ids: &ExternalIds) -> ApiResult<()> {
    if ids.len() > MAX_EXTERNAL_IDS {
        return Err(bad("externalIds", format!("holds at most {MAX_EXTERNAL_IDS} platforms")));
    }
    for (k, v) in ids {
        let ok = (1..=64).contains(&k.len())
            && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad("externalIds", "keys are platform names: 1 to 64 of a-z, 0-9, `-`, `_`"));
        }
        line(&format!("externalIds.{k}"), v, 256)?;
    }
    Ok(())
}

impl User {
    pub fn validate(&self) -> ApiResult<()> {
        line("sub", &self.sub, 256)?;
        email("email", &self.email)?;
        line("name", &self.name, 200)?;
        if let Some(p) = &self.profession {
            line("profession", p, 100)?;
        }
        match (self.user_type, &self.patient_guid) {
            (UserType::Patient, None) => return Err(bad("patientGuid", "is required for a patient user")),
            (UserType::Patient, Some(g)) if !crate::runner::valid_guid(g) => {
                return Err(bad("patientGuid", "is not a patient guid"))
            }
            (UserType::Practitioner | UserType::Staff, Some(_)) => {
                return Err(bad("patientGuid", "is for patient users only"))
            }
            _ => {}
        }
        external_ids(&self.external_ids)
    }

    pub fn to_row(&self) -> UserRow {
        UserRow {
            sub: self.sub.clone(),
            email: self.email.clone(),
            name: self.name.clone(),
            kind: match self.user_type {
                UserType::Practitioner => "practitioner",
                UserType::Patient => "patient",
                UserType::Staff => "staff",
            }
            .into(),
            profession: self.profession.clone(),
            patient_guid: self.patient_guid.clone(),
            external_ids: serde_json::to_string(&self.external_ids).expect("a map serialises"),
            created_at: 0,
            updated_at: 0,
        }
    }

    pub fn from_row(r: UserRow) -> User {
        User {
            user_type: match r.kind.as_str() {
                "practitioner" => UserType::Practitioner,
                "patient" => UserType::Patient,
                _ => UserType::Staff,
            },
            external_ids: serde_json::from_str(&r.external_ids).unwrap_or_default(),
            created_at: super::passes::rfc3339(r.created_at),
            updated_at: super::passes::rfc3339(r.updated_at),
            sub: r.sub,
            email: r.email,
            name: r.name,
            profession: r.profession,
            patient_guid: r.patient_guid,
        }
    }

    /// The kind [`super::authz`] decides with.
    pub fn kind(&self) -> Kind {
        match (self.user_type, &self.patient_guid) {
            (UserType::Practitioner, _) => Kind::Practitioner,
            (UserType::Patient, Some(g)) => Kind::Patient(g.clone()),
            _ => Kind::Staff,
        }
    }
}

/// A new patient guid: a random UUID (version 4).
pub fn new_guid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Seals and opens patient records.
pub struct Records {
    sealer: Sealer,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("sealer", &self.sealer).finish()
    }
}

impl Records {
    pub fn new(cfg: &RecordsConfig) -> Result<Records, crate::seal::SealError> {
        let previous: Vec<&str> = cfg.previous_keys.iter().map(|k| k.0.as_str()).collect();
        Ok(Records { sealer: Sealer::new(&cfg.key.0, &previous)? })
    }

    /// Sealing for documents and shares.
    pub fn documents(&self) -> super::documents::DocumentSealer<'_> {
        super::documents::DocumentSealer(&self.sealer)
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.sealer.key_ids()
    }

    pub fn validate(p: &Patient) -> ApiResult<()> {
        line("family", &p.family, 200)?;
        line("given", &p.given, 200)?;
        if let Some(e) = &p.email {
            email("email", e)?;
        }
        for (k, v) in [
            ("contactDetails", &p.contact_details),
            ("medicalHistory", &p.medical_history),
            ("dietaryPreferences", &p.dietary_preferences),
        ] {
            if let Some(v) = v {
                text(k, v, MAX_TEXT)?;
            }
        }
        external_ids(&p.external_ids)
    }

    fn seal(&self, guid: &str, column: &str, v: &Option<String>) -> Option<String> {
        v.as_ref().map(|v| self.sealer.seal(&format!("registry_patients.{column}:{guid}"), v))
    }

    fn open(&self, guid: &str, column: &str, v: &Option<String>) -> ApiResult<Option<String>> {
        v.as_ref()
            .map(|v| {
                self.sealer.open(&format!("registry_patients.{column}:{guid}"), v).map_err(|e| {
                    tracing::error!("patient record {guid}: {column}: {e}");
                    Problem::internal(format!("a sealed field of this record does not open ({column}); see the log"))
                })
            })
            .transpose()
    }

    pub fn to_row(&self, p: &Patient) -> PatientRow {
        let g = p.patient_guid.as_str();
        PatientRow {
            guid: g.to_owned(),
            family: p.family.trim().to_owned(),
            given: p.given.trim().to_owned(),
            email_sealed: self.seal(g, "email", &p.email),
            contact_sealed: self.seal(g, "contact", &p.contact_details),
            history_sealed: self.seal(g, "history", &p.medical_history),
            diet_sealed: self.seal(g, "diet", &p.dietary_preferences),
            owner_sub: p.owner.clone(),
            external_ids: serde_json::to_string(&p.external_ids).expect("a map serialises"),
            created_at: 0,
            updated_at: 0,
        }
    }

    /// Seals every record's fields again with the current key (after a
    /// rotation): (records rewritten, records already current). A value
    /// that does not open stops it, naming the record, before anything
    /// of that record is written.
    pub fn reseal_all(&self, registry: &dyn crate::ledger::Registry) -> anyhow::Result<(usize, usize)> {
        let (mut rewritten, mut current) = (0, 0);
        for mut row in registry.all_patients()? {
            let g = row.guid.clone();
            let mut changed = false;
            for (column, field) in [
                ("email", &mut row.email_sealed),
                ("contact", &mut row.contact_sealed),
                ("history", &mut row.history_sealed),
                ("diet", &mut row.diet_sealed),
            ] {
                let Some(v) = field.as_ref() else { continue };
                if self.sealer.is_current(v) {
                    continue;
                }
                let aad = format!("registry_patients.{column}:{g}");
                let plain = self
                    .sealer
                    .open(&aad, v)
                    .map_err(|e| anyhow::anyhow!("patient record {g}, field {column}: {e}"))?;
                *field = Some(self.sealer.seal(&aad, &plain));
                changed = true;
            }
            if changed {
                registry.set_sealed(&row)?;
                rewritten += 1;
            } else {
                current += 1;
            }
        }
        Ok((rewritten, current))
    }

    pub fn from_row(&self, r: PatientRow) -> ApiResult<Patient> {
        let g = r.guid.clone();
        Ok(Patient {
            email: self.open(&g, "email", &r.email_sealed)?,
            contact_details: self.open(&g, "contact", &r.contact_sealed)?,
            medical_history: self.open(&g, "history", &r.history_sealed)?,
            dietary_preferences: self.open(&g, "diet", &r.diet_sealed)?,
            external_ids: serde_json::from_str(&r.external_ids).unwrap_or_default(),
            created_at: super::passes::rfc3339(r.created_at),
            updated_at: super::passes::rfc3339(r.updated_at),
            href: format!("/api/v1/patients/{}", super::api::seg(&g)),
            images_href: format!("/api/v1/patients/{}/images", super::api::seg(&g)),
            patient_guid: r.guid,
            family: r.family,
            given: r.given,
            owner: r.owner_sub,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Registry, SqliteLedger};
    use crate::units::Secret;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn records(key: &str, previous: &[&str]) -> Records {
        Records::new(&RecordsConfig {
            key: Secret(key.into()),
            previous_keys: previous.iter().map(|k| Secret((*k).into())).collect(),
            max_upload: 1 << 20,
        })
        .unwrap()
    }

    #[test]
    fn a_rotation_then_reseal_leaves_nothing_for_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db")).unwrap();
        let old = records(K1, &[]);
        let p = Patient {
            patient_guid: "g1".into(),
            family: "Muster".into(),
            given: "Erika".into(),
            email: None,
            contact_details: Some("+49 30 1".into()),
            medical_history: Some("Asthma".into()),
            dietary_preferences: None,
            external_ids: ExternalIds::new(),
            owner: "dr".into(),
            created_at: String::new(),
            updated_at: String::new(),
            href: String::new(),
            images_href: String::new(),
        };
        assert!(ledger.create_patient(&old.to_row(&p)).unwrap());
        // the new key alone cannot read the old values
        let new_only = records(K2, &[]);
        assert!(new_only.from_row(ledger.patient("g1").unwrap().unwrap()).is_err());
        // rotated: reads both, reseals
        let rotated = records(K2, &[K1]);
        assert_eq!(rotated.reseal_all(&ledger).unwrap(), (1, 0));
        assert_eq!(rotated.reseal_all(&ledger).unwrap(), (0, 1));
        let back = new_only.from_row(ledger.patient("g1").unwrap().unwrap()).unwrap();
        assert_eq!(back.medical_history.as_deref(), Some("Asthma"));
        assert_eq!(back.contact_details.as_deref(), Some("+49 30 1"));
        // a value moved to another row does not open
        let mut row = ledger.patient("g1").unwrap().unwrap();
        row.guid = "g2".into();
        assert!(ledger.create_patient(&row).unwrap());
        assert!(new_only.from_row(ledger.patient("g2").unwrap().unwrap()).is_err());
    }
}
