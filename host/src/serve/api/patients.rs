//! `GET /patients?name=`: the caller's patients, by name (prefix, case-
//! and accent-insensitive), from the records or the image index the
//! pipeline keeps; and the patient records (`POST /patients`,
//! `GET|PUT|DELETE /patients/{patientGuid}`).

use super::*;
use crate::serve::records::{Patient, Records};

// ---------------------------------------------------------------- search

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words matched against the start of first and last names, in any
    /// order, ignoring case and accents (`mull` and `Müll` find Müller).
    name: Option<String>,
    /// At most this many patients (default 50, at most 200).
    limit: Option<u32>,
    /// From the previous page's `Link: <…>; rel="next"` header.
    cursor: Option<String>,
}

/// A patient found by name.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatientHit {
    pub patient_guid: String,
    /// `Last, First` as the images carry it.
    pub name: String,
    pub image_count: u64,
    /// The patient's images.
    pub images_href: String,
    /// The patient's record, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
}

/// Where a page of patients starts: after a record (records come first,
/// by name), or after a patient only the image index knows (an admin's
/// search goes on into the index once the records are done; staff search
/// only the index). `r:{guid}` / `i:{guid}` in the cursor, `i` for the
/// start of the index.
#[derive(Debug, Clone, PartialEq)]
enum Resume {
    Records(Option<String>),
    Index(Option<String>),
}

impl Resume {
    fn parse(cursor: Option<&str>) -> ApiResult<Resume> {
        let bad = || Problem::bad_request("invalid-cursor", "`cursor` is the one a previous page's `Link` header gave");
        let Some(c) = cursor else { return Ok(Resume::Records(None)) };
        if c == "i" {
            return Ok(Resume::Index(None));
        }
        let (kind, guid) = c.split_once(':').ok_or_else(bad)?;
        if !crate::runner::valid_guid(guid) {
            return Err(bad());
        }
        match kind {
            "r" => Ok(Resume::Records(Some(guid.to_owned()))),
            "i" => Ok(Resume::Index(Some(guid.to_owned()))),
            _ => Err(bad()),
        }
    }
}

/// The caller's patients: an admin's are all patient records, a
/// practitioner's those they own, a patient user's their own; staff
/// search the image index by name (`name` required), as before the
/// records API. Paged by name: a full page has a `Link` header to the
/// next (RFC 8288), so the body stays the list it always was.
#[utoipa::path(
    get,
    path = "/patients",
    tag = "patients",
    params(SearchQuery),
    responses(
        (status = 200, description = "The caller's patients, by name", body = [PatientHit],
            headers(("Link" = String, description = "`</api/v1/patients?…&cursor=…>; rel=\"next\"` when there are more"))),
        (status = 400, description = "No name given (staff), or a bad one, or a bad cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn search_patients(
    State(state): St,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Response> {
    let who = allow(&state, &headers, Action::ListPatients, None).await?;
    let raw_name = q.name.unwrap_or_default();
    let name = raw_name.trim().to_owned();
    if name.chars().count() > 200 {
        return Err(Problem::bad_request("invalid-name", "`name` is at most 200 characters"));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let resume = Resume::parse(q.cursor.as_deref())?;
    // the index splits names at hyphens (`Hans-Peter`) and the display
    // form has a comma (`Müller, Anna`): so does the query
    let words = name.replace(['-', ',', '^'], " ");
    let scope = authz::list_scope(&who);
    if scope == authz::ListScope::ImageIndex && words.trim().is_empty() {
        return Err(Problem::bad_request("missing-name", "give `name`: the start of a first or last name"));
    }
    let ledger = state.ledger.clone();
    let (hits, next) = blocking(move || {
        let err = Problem::ledger;
        let query = (!words.trim().is_empty()).then_some(words.as_str());
        let record_hit = |p: crate::ledger::PatientRow| -> ApiResult<PatientHit> {
            let images = ledger.images_of(&p.guid).map_err(err)?.len() as u64;
            Ok(PatientHit {
                images_href: format!("/api/v1/patients/{}/images", seg(&p.guid)),
                href: Some(format!("/api/v1/patients/{}", seg(&p.guid))),
                name: format!("{}, {}", p.family, p.given),
                patient_guid: p.guid,
                image_count: images,
            })
        };
        let index_hit = |h: crate::ledger::PatientHit| PatientHit {
            images_href: format!("/api/v1/patients/{}/images", seg(&h.guid)),
            href: None,
            patient_guid: h.guid,
            name: h.name,
            image_count: h.image_count,
        };
        // up to `want + 1` index hits after `after`, leaving out patients
        // with a record when those were listed already
        let index = |after: Option<String>, want: usize, skip_records: bool| -> ApiResult<Vec<PatientHit>> {
            let Some(q) = query else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            let mut after = after;
            loop {
                let batch = ledger.search_patients(q, after.as_deref(), want as u32 + 1).map_err(err)?;
                let exhausted = batch.len() <= want;
                for h in batch {
                    after = Some(h.guid.clone());
                    if !skip_records || ledger.patient(&h.guid).map_err(err)?.is_none() {
                        out.push(index_hit(h));
                        if out.len() > want {
                            return Ok(out);
                        }
                    }
                }
                if exhausted {
                    return Ok(out);
                }
            }
        };
        let records = |owner: Option<&str>, after: Option<String>| -> ApiResult<Vec<PatientHit>> {
            let rows = ledger.patients(owner, query, after.as_deref(), limit + 1).map_err(err)?;
            rows.into_iter().map(record_hit).collect()
        };
        let limit = limit as usize;
        // a page of `limit`, and the cursor of the next when there is more
        // (a page of records that ends where the index begins: `i`)
        let page = |mut hits: Vec<PatientHit>, kind: &str| {
            let next = (hits.len() > limit).then(|| {
                hits.truncate(limit);
                let last = &hits[limit - 1];
                if kind == "i" && last.href.is_some() {
                    "i".to_owned()
                } else {
                    format!("{kind}:{}", last.patient_guid)
                }
            });
            (hits, next)
        };
        Ok(match (scope, resume) {
            (authz::ListScope::ImageIndex, Resume::Records(None)) => page(index(None, limit, false)?, "i"),
            (authz::ListScope::ImageIndex, Resume::Index(after)) => page(index(after, limit, false)?, "i"),
            (authz::ListScope::Owned(owner), Resume::Records(after)) => page(records(Some(&owner), after)?, "r"),
            (authz::ListScope::Own(guid), Resume::Records(None)) => {
                (ledger.patient(&guid).map_err(err)?.into_iter().map(record_hit).collect::<ApiResult<_>>()?, None)
            }
            (authz::ListScope::All, Resume::Records(after)) => {
                let hits = records(None, after)?;
                if hits.len() > limit {
                    page(hits, "r")
                } else {
                    // the records are done: on into the patients only the index knows
                    let mut hits = hits;
                    let more = index(None, limit - hits.len(), true)?;
                    let spill = hits.len() + more.len() > limit;
                    hits.extend(more);
                    if spill {
                        page(hits, "i")
                    } else {
                        (hits, None)
                    }
                }
            }
            (authz::ListScope::All, Resume::Index(after)) => page(index(after, limit, true)?, "i"),
            _ => return Err(Problem::bad_request("invalid-cursor", "this cursor is not one of this caller's pages")),
        })
    })
    .await?;
    let mut res = Json(hits).into_response();
    if let Some(cursor) = next {
        let mut link = format!("/api/v1/patients?limit={limit}&cursor={}", seg(&cursor));
        if !raw_name.trim().is_empty() {
            link.push_str(&format!("&name={}", seg(raw_name.trim())));
        }
        if let Ok(v) = HeaderValue::from_str(&format!("<{link}>; rel=\"next\"")) {
            res.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(res)
}

// ---------------------------------------------------------------- records

pub(super) fn records(state: &AppState) -> ApiResult<&crate::serve::records::Records> {
    state.records.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::FORBIDDEN,
            "records-disabled",
            "patient records are not enabled on this service: add [serve.records] with `key = \"${FERRY_RECORDS_KEY}\"`",
        )
    })
}

/// Create a patient record (practitioners; the creator owns it).
#[utoipa::path(
    post,
    path = "/patients",
    tag = "records",
    request_body = Patient,
    responses(
        (status = 201, description = "Created", body = Patient, headers(("Location" = String))),
        (status = 400, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only practitioners (and admins) create patients", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The patient guid is taken", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create_patient(
    State(state): St,
    headers: HeaderMap,
    ApiJson(mut p): ApiJson<Patient>,
) -> ApiResult<Response> {
    let who = allow(&state, &headers, Action::CreatePatient, None).await?;
    let records = records(&state)?;
    Records::validate(&p)?;
    if p.patient_guid.is_empty() {
        p.patient_guid = crate::serve::records::new_guid();
    }
    check_guid(&p.patient_guid)?;
    p.owner = owner_for(&state, &who, &p.owner).await?;
    let row = records.to_row(&p);
    let ledger = state.ledger.clone();
    let created = blocking(move || {
        if !ledger.create_patient(&row).map_err(Problem::ledger)? {
            return Ok(None);
        }
        ledger.patient(&row.guid).map_err(Problem::ledger)
    })
    .await?;
    let Some(row) = created else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "guid-taken",
            format!("patient guid {} already has a record (deleted records keep theirs)", p.patient_guid),
        ));
    };
    let out = records.from_row(row)?;
    tracing::info!(patient = %out.patient_guid, subject = %who.subject(), "patient record created");
    let mut res = (StatusCode::CREATED, Json(out.clone())).into_response();
    res.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&out.href).expect("ascii"));
    Ok(res)
}

/// The owner a write names: the caller, unless an admin names a
/// registered practitioner.
async fn owner_for(state: &AppState, who: &Caller, asked: &str) -> ApiResult<String> {
    if asked.is_empty() || asked == who.subject() {
        return Ok(who.subject().to_owned());
    }
    if !who.is_admin() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin gives a patient to another practitioner",
        ));
    }
    let ledger = state.ledger.clone();
    let sub = asked.to_owned();
    let user = blocking(move || ledger.user(&sub).map_err(Problem::ledger)).await?;
    match user.map(crate::serve::records::User::from_row) {
        Some(u) if u.kind() == Kind::Practitioner => Ok(asked.to_owned()),
        _ => Err(Problem::bad_request("invalid-field", "`owner` is not a registered practitioner (POST /users first)")),
    }
}

async fn load_record(state: &AppState, guid: &str) -> ApiResult<crate::ledger::PatientRow> {
    let ledger = state.ledger.clone();
    let g = guid.to_owned();
    blocking(move || ledger.patient(&g).map_err(Problem::ledger))
        .await?
        .ok_or_else(|| Problem::not_found(format!("no patient {guid}")))
}

/// A patient record.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}",
    tag = "records",
    params(("patientGuid" = String, Path, description = "The patient guid")),
    responses(
        (status = 200, description = "The record", body = Patient),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not read records", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such record (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_patient(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
) -> ApiResult<Json<Patient>> {
    allow(&state, &headers, Action::ReadPatient, Some(&guid)).await?;
    let records = records(&state)?;
    Ok(Json(records.from_row(load_record(&state, &guid).await?)?))
}

/// Replace a patient record's fields (the guid stays; the owner changes
/// only by an admin).
#[utoipa::path(
    put,
    path = "/patients/{patientGuid}",
    tag = "records",
    params(("patientGuid" = String, Path, description = "The patient guid")),
    request_body = Patient,
    responses(
        (status = 200, description = "The record as stored", body = Patient),
        (status = 400, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not change it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such record (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn put_patient(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiJson(mut p): ApiJson<Patient>,
) -> ApiResult<Json<Patient>> {
    let who = allow(&state, &headers, Action::ChangePatient, Some(&guid)).await?;
    let records = records(&state)?;
    Records::validate(&p)?;
    if !p.patient_guid.is_empty() && p.patient_guid != guid {
        return Err(Problem::bad_request(
            "invalid-field",
            "`patientGuid` cannot change (it is what pipelines resolve to)",
        ));
    }
    let current = load_record(&state, &guid).await?;
    p.patient_guid = guid.clone();
    p.owner = if p.owner.is_empty() || p.owner == current.owner_sub {
        current.owner_sub.clone()
    } else {
        owner_for(&state, &who, &p.owner).await?
    };
    let row = records.to_row(&p);
    let ledger = state.ledger.clone();
    let g = guid.clone();
    let stored = blocking(move || {
        if !ledger.update_patient(&row).map_err(Problem::ledger)? {
            return Ok(None);
        }
        ledger.patient(&g).map_err(Problem::ledger)
    })
    .await?
    .ok_or_else(|| Problem::not_found(format!("no patient {guid}")))?;
    tracing::info!(patient = %guid, subject = %who.subject(), "patient record changed");
    Ok(Json(records.from_row(stored)?))
}

/// Delete a patient record (soft: the guid stays taken, the sync log
/// keeps its entries; images and documents stay where they are).
#[utoipa::path(
    delete,
    path = "/patients/{patientGuid}",
    tag = "records",
    params(("patientGuid" = String, Path, description = "The patient guid")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not delete it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such record (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_patient(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let who = allow(&state, &headers, Action::ChangePatient, Some(&guid)).await?;
    records(&state)?;
    let ledger = state.ledger.clone();
    let g = guid.clone();
    if !blocking(move || ledger.delete_patient(&g).map_err(Problem::ledger)).await? {
        return Err(Problem::not_found(format!("no patient {guid}")));
    }
    tracing::info!(patient = %guid, subject = %who.subject(), "patient record deleted");
    Ok(StatusCode::NO_CONTENT)
}
