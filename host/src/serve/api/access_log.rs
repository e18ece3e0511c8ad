//! `GET /access-log`: who read or changed which patient, for admins.

use super::*;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccessQuery {
    /// Only this patient's entries.
    patient: Option<String>,
    /// Only this token subject's entries.
    subject: Option<String>,
    /// At most this many entries (default 100, at most 1000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One access to a patient's data through the API.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessEntryView {
    pub id: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub subject: String,
    /// `practitioner`, `patient` or `staff`.
    pub kind: String,
    pub action: String,
    pub patient_guid: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A page of the access log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPage {
    pub entries: Vec<AccessEntryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The access log (admins).
#[utoipa::path(
    get,
    path = "/access-log",
    tag = "users",
    params(AccessQuery),
    responses(
        (status = 200, description = "Entries, newest first", body = AccessPage),
        (status = 400, description = "A bad guid or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins read the access log", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn access_log(
    State(state): St,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AccessQuery>,
) -> ApiResult<Json<AccessPage>> {
    allow(&state, &headers, Action::ReadAccessLog, None).await?;
    if let Some(g) = &q.patient {
        check_guid(g)?;
    }
    let before = id_cursor(q.cursor.as_deref())?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let ledger = state.ledger.clone();
    let mut rows = blocking(move || {
        ledger.access_page(q.patient.as_deref(), q.subject.as_deref(), before, limit + 1).map_err(Problem::ledger)
    })
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more.then(|| rows.last().map(|e| e.id.to_string())).flatten();
    let entries = rows
        .into_iter()
        .map(|e| AccessEntryView {
            id: e.id,
            at: rfc3339(e.at),
            subject: e.subject,
            kind: e.kind,
            action: e.action,
            patient_guid: e.patient_guid,
            method: e.method,
            path: e.path,
            status: e.status,
        })
        .collect();
    Ok(Json(AccessPage { entries, next_cursor }))
}
