//! `GET /patients?name=`: patient search by name (prefix, case- and
//! accent-insensitive), from the index the pipeline keeps.

use super::*;

// ---------------------------------------------------------------- search

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words matched against the start of first and last names, in any
    /// order, ignoring case and accents (`mull` and `Müll` find Müller).
    name: Option<String>,
    /// At most this many patients (default 50, at most 200).
    limit: Option<u32>,
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
}

/// Search patients by name.
#[utoipa::path(
    get,
    path = "/patients",
    tag = "patients",
    params(SearchQuery),
    responses(
        (status = 200, description = "Matching patients, by name", body = [PatientHit]),
        (status = 400, description = "No name given", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn search_patients(
    State(state): St,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Vec<PatientHit>>> {
    authorize(&state, &headers, Role::Viewer)?;
    let name = q.name.unwrap_or_default();
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(Problem::bad_request("missing-name", "give `name`: the start of a first or last name"));
    }
    if name.chars().count() > 200 {
        return Err(Problem::bad_request("invalid-name", "`name` is at most 200 characters"));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    // the index splits names at hyphens (`Hans-Peter`) and the display
    // form has a comma (`Müller, Anna`): so does the query
    let name = name.replace(['-', ',', '^'], " ");
    let ledger = state.ledger.clone();
    let hits = blocking(move || ledger.search_patients(&name, limit).map_err(Problem::ledger)).await?;
    Ok(Json(
        hits.into_iter()
            .map(|h| PatientHit {
                images_href: format!("/api/v1/patients/{}/images", seg(&h.guid)),
                patient_guid: h.guid,
                name: h.name,
                image_count: h.image_count,
            })
            .collect(),
    ))
}
