//! RFC 7807 problem documents: every error the API answers.
//!
//! Why one type: callers (the web page, the practice system, a person with
//! curl) get the same shape for every failure — a stable machine-readable
//! `type`, the HTTP `status`, a short `title` and a `detail` that says what
//! was wrong and, where it can, what to do. Details never contain patient
//! data beyond what the caller sent (a guid, an image name).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::AuthError;
use crate::caps::CapError;
use crate::ledger::LedgerError;

/// `application/problem+json`.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 7807 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:ferry:problem:not-found",
    "title": "Not Found",
    "status": 404,
    "detail": "no images for patient 7c0f3a55-1d1e-4a55-9d3c-2b9a1b8e5f10"
}))]
pub struct Problem {
    /// `urn:ferry:problem:<slug>`; stable, for programs.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// 401 only: what to send in `WWW-Authenticate`.
    #[serde(skip)]
    pub challenge: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:ferry:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            challenge: None,
        }
    }

    pub fn bad_request(slug: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, slug, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// The store failed: 503 when it may work again soon, else 502
    /// (ferry works; what is behind it does not).
    pub fn store(e: CapError) -> Problem {
        use CapError::*;
        match e {
            Unavailable(m) => Problem::unavailable(format!("the image store is not reachable: {m}")),
            NotFound(m) => Problem::not_found(m),
            Invalid(m) => Problem::bad_request("invalid", m),
            Denied(m) | Failed(m) => {
                Problem::new(StatusCode::BAD_GATEWAY, "store", format!("the image store failed: {m}"))
            }
        }
    }

    pub fn ledger(e: LedgerError) -> Problem {
        tracing::error!("ledger query failed: {e}");
        Problem::unavailable(format!("the ledger cannot be read: {}", e.source))
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Problem {
        match e {
            AuthError::Unauthenticated(m) => Problem {
                challenge: Some(format!(
                    "Bearer realm=\"ferry\", error=\"invalid_token\", error_description=\"{}\"",
                    m.replace(['"', '\\'], "'")
                )),
                ..Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
            },
            AuthError::Forbidden(m) => Problem::new(StatusCode::FORBIDDEN, "forbidden", m),
            AuthError::Config(m) => {
                tracing::error!("authentication is misconfigured: {m}");
                Problem::internal(format!("authentication is misconfigured: {m}"))
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("a problem serialises");
        let mut res = (status, body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(c) = self.challenge.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        res
    }
}

/// What API handlers return.
pub type ApiResult<T> = Result<T, Problem>;
