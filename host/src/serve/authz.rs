//! Authorization: who may do what to which record, decided in one place.
//!
//! Every API handler names its [`Action`] and the record it touches and
//! asks [`decide`]; no handler checks a role or an owner itself. That is
//! what makes the table below the whole truth, and what the test matrix
//! (`tests/service/records.rs`, `tests/service/documents.rs`) walks route by route.
//!
//! ## The model
//!
//! Two things describe a caller:
//!
//! - the **role** from the token (`viewer < operator < admin`), which says
//!   how much of the service they may operate, as before the records API;
//! - the **kind** from the user registry (`/api/v1/users`, keyed by the
//!   token's `sub`): `practitioner` (with a profession: Dietician, Dentist,
//!   …), `patient` (linked to their own patient record) or `staff`. A caller
//!   with no registry entry is `staff`.
//!
//! `admin` may do everything to every record. For everyone else the kind
//! decides which records: a practitioner works on the patients they own
//! (created, or were given by an admin), a patient user reads their own
//! record and images, and staff — the clinic's X-ray users, who have no
//! records of their own — keep exactly the role rules the X-ray service
//! always had, over every patient's images, and see no patient records
//! (those hold PHI that is the owning practitioner's). On their own records
//! practitioners and patients need only the `viewer` role.
//!
//! | action | admin | practitioner: own / other | patient: self / other | staff viewer | staff operator |
//! |---|---|---|---|---|---|
//! | users: list, read, create, change, delete | ✓ | ✗ | ✗ | ✗ | ✗ |
//! | `GET /access-log` | ✓ | ✗ | ✗ | ✗ | ✗ |
//! | `GET /users/me` | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | `GET /patients` (list) | all records | own records | own record | search by name (image index) | search by name |
//! | `POST /patients` | ✓ | ✓ (becomes owner) | ✗ | ✗ | ✗ |
//! | read a patient record | ✓ | ✓ / ✗ | ✓ / ✗ | ✗ | ✗ |
//! | change or delete a patient record | ✓ | ✓ / ✗ | ✗ | ✗ | ✗ |
//! | images, previews | ✓ | ✓ / ✗ | ✓ / ✗ | ✓ | ✓ |
//! | a patient's sync log, `POST …/sync` | ✓ | ✓ / ✗ | ✗ | ✗ | ✓ |
//! | `GET /logs/{id}`, `GET /jobs/{id}` | ✓ | entries/jobs of own patients | ✗ | ✗ | ✓ |
//! | a patient's documents: list | ✓ | ✓ / ✗ | ✓ / ✗ | ✗ | ✗ |
//! | upload a document, request documents from the provider | ✓ | ✓ / ✗ | ✗ | ✗ | ✗ |
//! | one document: read, download | ✓ | own patients' and shared with them | own | ✗ | ✗ |
//! | one document: change, delete, share, revoke its shares | ✓ | the ones they uploaded, of own patients | ✗ | ✗ | ✗ |
//! | shared with me, a patient's shared documents | all | shares to them | none | none | none |
//!
//! "other" includes patients without a record: a practitioner reaches a
//! patient only through a record they own. Refusals are `403` with the
//! rule that refused, except that a record the caller may not read is
//! `404` to them, as if it did not exist, so ids cannot be probed.

use super::auth::{Principal, Role};

/// What a caller is, for [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Works on the patients they own.
    Practitioner,
    /// Reads their own record: the patient guid.
    Patient(String),
    /// The clinic's X-ray users: the role rules, no records.
    Staff,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Practitioner => "practitioner",
            Kind::Patient(_) => "patient",
            Kind::Staff => "staff",
        }
    }
}

/// The caller: the token's principal and the registry's kind.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub kind: Kind,
}

impl Caller {
    pub fn subject(&self) -> &str {
        &self.principal.subject
    }
    pub fn is_admin(&self) -> bool {
        self.principal.role == Role::Admin
    }
}

/// What a handler is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `/users` (everything but `me`).
    ManageUsers,
    /// `GET /access-log`.
    ReadAccessLog,
    /// `GET /users/me`.
    ReadSelf,
    /// `GET /patients`.
    ListPatients,
    /// `POST /patients`.
    CreatePatient,
    ReadPatient,
    ChangePatient,
    ReadImages,
    ReadLogs,
    Sync,
    /// A patient's documents: list them (`GET /patients/{guid}/documents`).
    ReadDocuments,
    /// `POST /patients/{guid}/documents`.
    AddDocument,
    /// One document: read its metadata, download it.
    ReadDocument,
    /// One document: change its metadata, delete it.
    ChangeDocument,
    /// `POST /documents/{id}/share`, `DELETE /shares/{id}`.
    ShareDocument,
    /// `POST /patients/{guid}/request-documents`: ask the provider.
    RequestDocuments,
    /// `GET /patients/{guid}/shared-documents`, `GET /shared-with-me`:
    /// the caller's own shares, whoever owns the patient.
    ReadShares,
}

impl Action {
    /// The access log's name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ManageUsers => "manage-users",
            Action::ReadAccessLog => "read-access-log",
            Action::ReadSelf => "read-self",
            Action::ListPatients => "list-patients",
            Action::CreatePatient => "create-patient",
            Action::ReadPatient => "read-patient",
            Action::ChangePatient => "change-patient",
            Action::ReadImages => "read-images",
            Action::ReadLogs => "read-logs",
            Action::Sync => "sync",
            Action::ReadDocuments => "read-documents",
            Action::AddDocument => "add-document",
            Action::ReadDocument => "read-document",
            Action::ChangeDocument => "change-document",
            Action::ShareDocument => "share-document",
            Action::ReadShares => "read-shares",
            Action::RequestDocuments => "request-documents",
        }
    }
}

/// A document a request is about, for [`decide_document`].
#[derive(Debug, Clone, Copy)]
pub struct DocumentScope<'a> {
    pub patient: PatientScope<'a>,
    /// Its source: the `sub` that uploaded it.
    pub source: &'a str,
    /// Is it shared with the caller, in force now?
    pub shared_with_caller: bool,
}

/// The patient a request is about, as far as authorization cares.
#[derive(Debug, Clone, Copy)]
pub struct PatientScope<'a> {
    pub guid: &'a str,
    /// The record's owner; none when the patient has no record.
    pub owner: Option<&'a str>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// `403`, with the rule that refused.
    Forbidden(String),
    /// `404`: the caller may not know the record exists.
    Hidden,
}

/// What a caller may see of the patient list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListScope {
    /// Every record.
    All,
    /// Records this subject owns.
    Owned(String),
    /// Only this record.
    Own(String),
    /// The image index, by name (staff).
    ImageIndex,
}

/// The patient list a caller gets.
pub fn list_scope(caller: &Caller) -> ListScope {
    if caller.is_admin() {
        return ListScope::All;
    }
    match &caller.kind {
        Kind::Practitioner => ListScope::Owned(caller.subject().to_owned()),
        Kind::Patient(guid) => ListScope::Own(guid.clone()),
        Kind::Staff => ListScope::ImageIndex,
    }
}

/// May `caller` do `action` (to `patient`, for per-patient actions)?
pub fn decide(caller: &Caller, action: Action, patient: Option<PatientScope<'_>>) -> Decision {
    use Action::*;
    if caller.is_admin() {
        return Decision::Allow;
    }
    let forbid = |why: &str| Decision::Forbidden(why.to_owned());
    match action {
        ManageUsers => return forbid("only admins manage users"),
        ReadAccessLog => return forbid("only admins read the access log"),
        // the handler lists the caller's own shares only
        ReadSelf | ListPatients | ReadShares => return Decision::Allow,
        CreatePatient => {
            return match caller.kind {
                Kind::Practitioner => Decision::Allow,
                _ => forbid("only practitioners create patients (register the user as a practitioner: POST /users)"),
            }
        }
        ReadPatient | ChangePatient | ReadImages | ReadLogs | Sync | ReadDocuments | AddDocument | ReadDocument
        | ChangeDocument | ShareDocument | RequestDocuments => {}
    }
    // staff: the role rules, whichever patient (or none: a log entry of no patient)
    if caller.kind == Kind::Staff {
        return match action {
            ReadImages => Decision::Allow,
            ReadLogs | Sync if caller.principal.role >= Role::Operator => Decision::Allow,
            ReadLogs | Sync => forbid("this needs the operator role; the token grants viewer"),
            _ => forbid("patient records are for their practitioner (staff see images only)"),
        };
    }
    let Some(p) = patient else {
        return Decision::Hidden;
    };
    match &caller.kind {
        Kind::Practitioner => {
            if p.owner == Some(caller.subject()) {
                Decision::Allow
            } else {
                Decision::Hidden
            }
        }
        Kind::Patient(own) => {
            if own != p.guid {
                return Decision::Hidden;
            }
            match action {
                ReadPatient | ReadImages | ReadDocuments | ReadDocument => Decision::Allow,
                _ => forbid(
                    "patients read their own record, images and documents; changes go through their practitioner",
                ),
            }
        }
        Kind::Staff => unreachable!("decided above"),
    }
}

/// May `caller` do `action` (reading, changing or sharing) to one
/// document? Whoever may read the patient's documents reads it, and so
/// does a practitioner it is shared with (while the share is in force);
/// only its source — the user who uploaded it — changes, deletes or
/// shares it, as long as they still reach the patient.
pub fn decide_document(caller: &Caller, action: Action, doc: DocumentScope<'_>) -> Decision {
    if caller.is_admin() {
        return Decision::Allow;
    }
    let base = decide(caller, Action::ReadDocuments, Some(doc.patient));
    let shared = doc.shared_with_caller && caller.kind == Kind::Practitioner;
    if base != Decision::Allow && !shared {
        return base;
    }
    match action {
        Action::ReadDocument => Decision::Allow,
        Action::ChangeDocument | Action::ShareDocument => {
            if base == Decision::Allow && caller.subject() == doc.source && caller.kind == Kind::Practitioner {
                Decision::Allow
            } else {
                Decision::Forbidden(
                    "only the document's source (the practitioner who uploaded it) changes, deletes or shares it"
                        .into(),
                )
            }
        }
        other => decide(caller, other, Some(doc.patient)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, kind: Kind) -> Caller {
        Caller { principal: Principal { subject: "me".into(), role, clinic: None }, kind }
    }

    /// The whole table, cell by cell.
    #[test]
    fn the_table() {
        use Action::*;
        let own = PatientScope { guid: "g-own", owner: Some("me") };
        let other = PatientScope { guid: "g-other", owner: Some("someone") };
        let bare = PatientScope { guid: "g-bare", owner: None };
        let callers = [
            ("admin", caller(Role::Admin, Kind::Staff)),
            ("practitioner", caller(Role::Viewer, Kind::Practitioner)),
            ("patient", caller(Role::Viewer, Kind::Patient("g-own".into()))),
            ("staff viewer", caller(Role::Viewer, Kind::Staff)),
            ("staff operator", caller(Role::Operator, Kind::Staff)),
        ];
        // (action, [admin, practitioner, patient, staff viewer, staff operator]) on own / other / bare
        // A = allow, F = forbidden, H = hidden
        let table: &[(Action, [&str; 5])] = &[
            (ReadPatient, ["AAA", "AHH", "AHH", "FFF", "FFF"]),
            (ChangePatient, ["AAA", "AHH", "FHH", "FFF", "FFF"]),
            (ReadImages, ["AAA", "AHH", "AHH", "AAA", "AAA"]),
            (ReadLogs, ["AAA", "AHH", "FHH", "FFF", "AAA"]),
            (Sync, ["AAA", "AHH", "FHH", "FFF", "AAA"]),
            (ReadDocuments, ["AAA", "AHH", "AHH", "FFF", "FFF"]),
            (AddDocument, ["AAA", "AHH", "FHH", "FFF", "FFF"]),
            (RequestDocuments, ["AAA", "AHH", "FHH", "FFF", "FFF"]),
        ];
        let code = |d: Decision| match d {
            Decision::Allow => 'A',
            Decision::Forbidden(_) => 'F',
            Decision::Hidden => 'H',
        };
        for (action, row) in table {
            for ((who, c), want) in callers.iter().zip(row) {
                let got: String = [own, other, bare].iter().map(|p| code(decide(c, *action, Some(*p)))).collect();
                assert_eq!(&got, want, "{action:?} by {who} on own/other/bare");
            }
        }
        let no_patient: &[(Action, &str)] = &[
            (ManageUsers, "AFFFF"),
            (ReadAccessLog, "AFFFF"),
            (ReadSelf, "AAAAA"),
            (ListPatients, "AAAAA"),
            (CreatePatient, "AAFFF"),
            (ReadShares, "AAAAA"),
        ];
        for (action, want) in no_patient {
            let got: String = callers.iter().map(|(_, c)| code(decide(c, *action, None))).collect();
            assert_eq!(&got, want, "{action:?}");
        }
        // no patient (a log entry of none): staff by role, others cannot see it
        let got: String = callers.iter().map(|(_, c)| code(decide(c, ReadLogs, None))).collect();
        assert_eq!(got, "AHHFA");
        assert_eq!(list_scope(&callers[0].1), ListScope::All);
        assert_eq!(list_scope(&callers[1].1), ListScope::Owned("me".into()));
        assert_eq!(list_scope(&callers[2].1), ListScope::Own("g-own".into()));
        assert_eq!(list_scope(&callers[3].1), ListScope::ImageIndex);
    }

    /// One document: read by whoever reads the patient's documents or has
    /// it shared, changed and shared only by its source.
    #[test]
    fn documents_by_source_and_share() {
        use Action::*;
        let own = PatientScope { guid: "g-own", owner: Some("me") };
        let other = PatientScope { guid: "g-other", owner: Some("someone") };
        let doc = |patient, source, shared| DocumentScope { patient, source, shared_with_caller: shared };
        let practitioner = caller(Role::Viewer, Kind::Practitioner);
        let patient = caller(Role::Viewer, Kind::Patient("g-own".into()));
        let staff = caller(Role::Operator, Kind::Staff);
        let admin = caller(Role::Admin, Kind::Staff);
        let code = |d: Decision| match d {
            Decision::Allow => 'A',
            Decision::Forbidden(_) => 'F',
            Decision::Hidden => 'H',
        };
        let row = |c: &Caller, d: DocumentScope<'_>| -> String {
            [ReadDocument, ChangeDocument, ShareDocument].iter().map(|a| code(decide_document(c, *a, d))).collect()
        };
        // (read, change, share)
        assert_eq!(row(&practitioner, doc(own, "me", false)), "AAA", "own patient, uploaded it");
        assert_eq!(row(&practitioner, doc(own, "colleague", false)), "AFF", "own patient, someone else's upload");
        assert_eq!(row(&practitioner, doc(other, "someone", true)), "AFF", "shared with me");
        assert_eq!(row(&practitioner, doc(other, "me", false)), "HHH", "uploaded it, patient moved away");
        assert_eq!(row(&practitioner, doc(other, "someone", false)), "HHH");
        assert_eq!(row(&patient, doc(own, "me", false)), "AFF", "a patient reads their own");
        assert_eq!(row(&patient, doc(other, "someone", true)), "HHH", "shares are between practitioners");
        assert_eq!(row(&staff, doc(own, "someone", true)), "FFF");
        assert_eq!(row(&admin, doc(other, "someone", false)), "AAA");
    }
}
