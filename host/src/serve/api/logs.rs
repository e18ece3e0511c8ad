//! The synchronization log: a patient's entries, newest first, and one
//! entry by id.

use super::*;

// ---------------------------------------------------------------- logs

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Entries per page (default 100, at most 1000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page (entries older than it).
    cursor: Option<String>,
}

/// One row of the synchronization log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub id: i64,
    /// RFC 3339, UTC.
    pub at: String,
    /// The pass it happened in.
    pub run_id: i64,
    /// The source item (`P_000017/0000_101.dcm`).
    pub item_id: String,
    pub patient_guid: Option<String>,
    /// `upload`, `verify`, `skip`, `resolve`, `quarantine`, `process`, `resolution-changed`.
    pub action: String,
    /// `ok`, `parked`, `error`, `warning`.
    pub status: String,
    pub details: String,
    pub href: String,
}

impl From<crate::ledger::LogEntry> for LogEntry {
    fn from(e: crate::ledger::LogEntry) -> LogEntry {
        LogEntry {
            href: format!("/api/v1/logs/{}", e.id),
            id: e.id,
            at: rfc3339(e.at),
            run_id: e.run_id,
            item_id: e.item_id,
            patient_guid: e.patient_guid,
            action: e.action,
            status: e.status,
            details: e.details,
        }
    }
}

/// A page of the log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A patient's synchronization log, newest first.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/logs",
    tag = "sync",
    params(
        ("patientGuid" = String, Path, description = "The practice system's patient guid"),
        LogQuery,
    ),
    responses(
        (status = 200, description = "A page of log entries", body = LogPage),
        (status = 400, description = "Malformed guid or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this (operator)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown patient", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn patient_logs(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    allow(&state, &headers, Action::ReadLogs, Some(&guid)).await?;
    let before = id_cursor(q.cursor.as_deref())?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let ledger = state.ledger.clone();
    let g = guid.clone();
    let (entries, known) = blocking(move || {
        let entries = ledger.log_page(Some(&g), before, limit + 1).map_err(Problem::ledger)?;
        let known = !entries.is_empty() || before.is_some() || ledger.knows_patient(&g).map_err(Problem::ledger)?;
        Ok((entries, known))
    })
    .await?;
    if !known {
        return Err(Problem::not_found(format!("the synchronization log knows no patient {guid}")));
    }
    let mut entries: Vec<LogEntry> = entries.into_iter().map(LogEntry::from).collect();
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_cursor = more.then(|| entries.last().map(|e| e.id.to_string())).flatten();
    let next = next_cursor.as_ref().map(|c| format!("/api/v1/patients/{}/logs?limit={limit}&cursor={c}", seg(&guid)));
    Ok(Json(LogPage { entries, next_cursor, next }))
}

/// One entry of the synchronization log.
#[utoipa::path(
    get,
    path = "/logs/{id}",
    tag = "sync",
    params(("id" = i64, Path, description = "The entry's id")),
    responses(
        (status = 200, description = "The entry", body = LogEntry),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this (operator)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn log_entry(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<LogEntry>> {
    let who = caller(&state, &headers).await?;
    let id: i64 = id.parse().map_err(|_| Problem::bad_request("invalid-id", "a log entry id is a number"))?;
    let ledger = state.ledger.clone();
    let gone = || Problem::not_found(format!("no log entry {id}"));
    let entry = blocking(move || ledger.log_entry(id).map_err(Problem::ledger)).await?.ok_or_else(gone)?;
    permit_or_gone(&state, &who, Action::ReadLogs, entry.patient_guid.as_deref(), gone).await?;
    Ok(Json(entry.into()))
}
