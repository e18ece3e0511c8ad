//! Re-syncs: `POST /patients/{guid}/sync` starts a job, `GET /jobs/{id}`
//! follows it.

use super::*;

// ---------------------------------------------------------------- sync

/// A sync job was accepted.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    pub job_id: String,
    pub state: crate::serve::passes::JobState,
    /// Source items that will be re-synced.
    pub items_total: u64,
    /// Where to follow it.
    pub href: String,
}

/// Re-run the pipeline for a patient's images now.
///
/// Every source item attached to the patient is read, resolved and
/// checked against the store again (stored again if missing or
/// different). The job waits for a pass under way to finish.
#[utoipa::path(
    post,
    path = "/patients/{patientGuid}/sync",
    tag = "sync",
    params(("patientGuid" = String, Path, description = "The practice system's patient guid")),
    responses(
        (status = 202, description = "Queued; follow `href`", body = JobAccepted, headers(("Location" = String))),
        (status = 400, description = "Malformed guid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this (operator)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No source items are attached to this patient", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The service is stopping", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn sync_patient(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
) -> ApiResult<Response> {
    let who = allow(&state, &headers, Action::Sync, Some(&guid)).await?;
    if state.stopping.is_cancelled() {
        return Err(Problem::unavailable("the service is stopping"));
    }
    let ledger = state.ledger.clone();
    let g = guid.clone();
    let items: HashSet<String> =
        blocking(move || ledger.items_of(&g).map_err(Problem::ledger)).await?.into_iter().map(|r| r.id).collect();
    if items.is_empty() {
        return Err(Problem::not_found(format!("no source items are attached to patient {guid}")));
    }
    let job = state.jobs.submit(&guid, items);
    tracing::info!(job = %job.job_id, subject = %who.subject(), "sync requested");
    let body =
        JobAccepted { job_id: job.job_id, state: job.state, items_total: job.items_total, href: job.href.clone() };
    let mut res = (StatusCode::ACCEPTED, Json(body)).into_response();
    res.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&job.href).expect("ascii"));
    Ok(res)
}

/// A sync job's progress.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "sync",
    params(("id" = String, Path, description = "The `jobId` from the sync request")),
    responses(
        (status = 200, description = "Where the job stands", body = crate::serve::passes::JobStatus),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this (operator)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job (jobs are kept in memory until the service restarts)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn job(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<crate::serve::passes::JobStatus>> {
    let who = caller(&state, &headers).await?;
    let gone = || Problem::not_found("no such job (jobs are forgotten when the service restarts)");
    let status = state.jobs.status(&id).ok_or_else(gone)?;
    permit_or_gone(&state, &who, Action::Sync, Some(&status.patient_guid), gone).await?;
    Ok(Json(status))
}
