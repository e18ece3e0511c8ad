//! The REST API under `/api/v1`: JSON in and out, errors as RFC 7807
//! problem documents, described by the OpenAPI document at
//! `/api/v1/openapi.json`, which is generated from these handlers (utoipa),
//! so it cannot drift from the routes.
//!
//! Who may call what is decided in one place, [`super::authz`] (its table
//! is the whole truth; "role" below is what staff — callers without a
//! registry entry — need).
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /users/me` | viewer | the caller: token role, registry type and entry |
//! | `GET, POST /users`, `GET, PUT, DELETE /users/{sub}` | admin | the registry of users |
//! | `GET /patients?name=` | viewer | the caller's patients by first/last name prefix (case- and accent-insensitive) |
//! | `POST /patients`, `GET, PUT, DELETE /patients/{patientGuid}` | practitioner | patient records |
//! | `GET /access-log?patient=&subject=` | admin | who read or changed which patient, and the answer |
//! | `GET, POST /patients/{patientGuid}/documents` | practitioner | a patient's documents: list, upload (multipart) |
//! | `GET, PUT, DELETE /documents/{id}`, `GET /documents/{id}/content` | practitioner | one document: metadata, change, delete (its source), the bytes (ranges) |
//! | `POST /documents/{id}/share`, `GET /documents/{id}/shares`, `DELETE /shares/{id}` | practitioner | share with another practitioner (its source), revoke |
//! | `GET /shared-with-me`, `GET /patients/{patientGuid}/shared-documents` | viewer | shares in force |
//! | `POST /patients/{patientGuid}/request-documents` | practitioner | ask the provider: a FHIR Task or an e-mail |
//! | `GET /patients/{patientGuid}/images` | viewer | the patient's images, paginated |
//! | `GET /patients/{patientGuid}/images/{name}` | viewer | the DICOM bytes (ranges; or a 307 to a presigned URL) |
//! | `GET /patients/{patientGuid}/images/{name}/preview` | viewer | a PNG preview |
//! | `GET /patients/{patientGuid}/logs` | operator | the patient's synchronization log |
//! | `GET /logs/{id}` | operator | one log entry |
//! | `POST /patients/{patientGuid}/sync` | operator | re-run the pipeline for the patient's items → job |
//! | `GET /jobs/{id}` | operator | a job's progress |
//!
//! Safety of keys: a guid must pass [`crate::runner::valid_guid`] and an
//! image name must be exactly one key segment (no `/`, `\`, control
//! characters, no leading `.`), checked after percent-decoding, so that no
//! request can name an object outside `images/{patientGuid}/`. JSON
//! sidecars (`*.json`) are not images: not listed, not served.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Role;
use super::authz::{self, Action, Caller, Decision, Kind, PatientScope};
use super::passes::rfc3339;
use super::problem::{ApiResult, Problem};
use super::AppState;
use crate::caps::object_store::{check_key, range_span, ByteRange};
use crate::ledger::ImageFacts;

mod access_log;
mod documents;
mod http;
mod images;
mod jobs;
mod logs;
mod patients;
mod users;

use access_log::*;
use documents::*;
use http::*;
use images::*;
use jobs::*;
use logs::*;
use patients::*;
use users::*;

/// Where the store plugins file images: `images/{patientGuid}/{name}`.
pub const IMAGES_PREFIX: &str = "images/";
/// Lifetime of presigned download URLs.
pub const PRESIGN_TTL: Duration = Duration::from_secs(300);
/// Longest image name accepted (one file-system name).
const MAX_NAME: usize = 255;

type St = State<Arc<AppState>>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry API",
        description = "Dental X-rays and healthcare documents by patient, and the records around them. \
                       Every route needs a bearer JWT (`Authorization: Bearer …`) with a role: \
                       `viewer` for images, previews and search; `operator` for logs, sync and jobs; \
                       `admin` can do everything. Registered practitioners work on the patients they own, \
                       patient users on their own record. Errors are RFC 7807 problem documents.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "patients", description = "Patients and their images"),
        (name = "records", description = "Patient records: contact details, history, preferences (PHI sealed at rest)"),
        (name = "documents", description = "A patient's documents: upload, download, share with other practitioners"),
        (name = "users", description = "The service's users and what they are"),
        (name = "sync", description = "The synchronization log and re-syncs"),
        (name = "meta", description = "This document")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The document's frame: info, security scheme, tags (the paths come
/// from [`router`]).
pub fn doc() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// A patient guid as [`check_guid`] takes it; a document id as
/// [`check_document_id`](crate::serve::documents::check_document_id) does.
const GUID_PATTERN: &str = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$";
const DOCUMENT_ID_PATTERN: &str = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

/// The path parameters' shapes, in the document as the handlers check
/// them (one place, not every annotation).
fn constrain(path: &str, p: &mut utoipa::openapi::path::Parameter) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    if p.parameter_in != ParameterIn::Path {
        return;
    }
    let pattern = match p.name.as_str() {
        "patientGuid" => GUID_PATTERN,
        "id" if path.starts_with("/api/v1/documents/") => DOCUMENT_ID_PATTERN,
        _ => return,
    };
    p.schema = Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)).into());
}

/// Adds the answers every route of a kind gives, so no handler's
/// annotation can forget them: a route with parameters may answer 400 (a
/// malformed guid, id, cursor or limit), one with a JSON body 415 (not
/// `application/json`) and 422 (JSON that is not the schema's). Run on the
/// whole document once the router has added the paths.
pub fn complete(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let shared = item.parameters.as_ref().is_some_and(|p| !p.is_empty());
        for op in
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
        {
            for p in op.parameters.iter_mut().flatten() {
                constrain(path, p);
            }
            let responses = &mut op.responses.responses;
            if shared || op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                responses
                    .entry("400".into())
                    .or_insert_with(|| problem("A malformed parameter (the problem names it)"));
            }
            if op.request_body.as_ref().is_some_and(|b| b.content.contains_key("application/json")) {
                responses.entry("415".into()).or_insert_with(|| problem("The body is not `application/json`"));
                responses
                    .entry("422".into())
                    .or_insert_with(|| problem("The JSON is not what this route takes (the problem says where)"));
            }
        }
    }
}

/// The API routes (relative to `/api/v1`), each with its OpenAPI path.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(search_patients, create_patient))
        .routes(routes!(get_patient, put_patient, delete_patient))
        .routes(routes!(list_users, create_user))
        .routes(routes!(me))
        .routes(routes!(get_user, put_user, delete_user))
        .routes(routes!(list_documents, upload_document))
        .routes(routes!(get_document, put_document, delete_document))
        .routes(routes!(document_content))
        .routes(routes!(share_document))
        .routes(routes!(document_shares))
        .routes(routes!(revoke_share))
        .routes(routes!(shared_with_me))
        .routes(routes!(patient_shared_documents))
        .routes(routes!(request_documents))
        .routes(routes!(access_log))
        .routes(routes!(list_images))
        .routes(routes!(get_image))
        .routes(routes!(preview))
        .routes(routes!(patient_logs))
        .routes(routes!(log_entry))
        .routes(routes!(sync_patient))
        .routes(routes!(job))
        .routes(routes!(openapi_json))
        .fallback(unknown_route)
}

async fn unknown_route() -> Problem {
    Problem::not_found("no such API route; see /api/v1/openapi.json")
}

// ---------------------------------------------------------------- extractors

/// Path parameters with rejections as problem documents.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| Problem::bad_request("invalid-path", e.body_text()))
    }
}

/// Query parameters with rejections as problem documents.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| Problem::bad_request("invalid-query", e.body_text()))
    }
}

// ---------------------------------------------------------------- checks

/// Who is calling: the token (any known role) and the registry's kind.
/// Every route starts here, then asks [`allow`] (or [`super::authz`]).
async fn caller(state: &AppState, headers: &HeaderMap) -> ApiResult<Caller> {
    Ok(caller_and_user(state, headers).await?.0)
}

/// [`caller`] and the registry entry it was made from, if any.
async fn caller_and_user(state: &AppState, headers: &HeaderMap) -> ApiResult<(Caller, Option<super::records::User>)> {
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Problem::from(super::auth::AuthError::Unauthenticated("the Authorization header is not valid text".into()))
        })?),
    };
    let principal = state.auth.authorize(value, Role::Viewer)?;
    let ledger = state.ledger.clone();
    let sub = principal.subject.clone();
    let user = blocking(move || ledger.user(&sub).map_err(Problem::ledger)).await?.map(super::records::User::from_row);
    let kind = user.as_ref().map(|u| u.kind()).unwrap_or(Kind::Staff);
    Ok((Caller { principal, kind }, user))
}

/// The caller, if [`authz::decide`] lets them do `action` to patient
/// `guid` (checked first, so a bad guid is a 400): the one place routes
/// are authorized.
async fn allow(state: &AppState, headers: &HeaderMap, action: Action, guid: Option<&str>) -> ApiResult<Caller> {
    let who = caller(state, headers).await?;
    permit(state, &who, action, guid).await?;
    Ok(who)
}

/// [`allow`] for a caller already known (a route that must read a record
/// to learn its patient, after authenticating).
async fn permit(state: &AppState, who: &Caller, action: Action, guid: Option<&str>) -> ApiResult<()> {
    super::access::note(who, action, guid);
    if let Some(g) = guid {
        check_guid(g)?;
    }
    let owner = match guid {
        Some(g) if !who.is_admin() && who.kind == Kind::Practitioner => {
            let ledger = state.ledger.clone();
            let g = g.to_owned();
            blocking(move || ledger.patient(&g).map_err(Problem::ledger)).await?.map(|p| p.owner_sub)
        }
        _ => None,
    };
    let scope = guid.map(|g| PatientScope { guid: g, owner: owner.as_deref() });
    match authz::decide(who, action, scope) {
        Decision::Allow => Ok(()),
        Decision::Forbidden(why) => Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", why)),
        Decision::Hidden => Err(Problem::not_found(match guid {
            Some(g) => format!("no patient {g}"),
            None => "no such record".to_string(),
        })),
    }
}

/// [`permit`] for a record found by its own id (a job, a log entry): a
/// record the caller may not see answers `gone`, as one that does not exist.
async fn permit_or_gone(
    state: &AppState,
    who: &Caller,
    action: Action,
    guid: Option<&str>,
    gone: impl FnOnce() -> Problem,
) -> ApiResult<()> {
    permit(state, who, action, guid).await.map_err(|e| if e.status == 404 { gone() } else { e })
}

/// A `cursor` that is an entry id this API gave out (logs, access log).
fn id_cursor(cursor: Option<&str>) -> ApiResult<Option<i64>> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| Problem::bad_request("invalid-cursor", "`cursor` is not one this API gave out"))
        })
        .transpose()
}

/// A JSON body with rejections as problem documents.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Problem;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => {
                let status = e.status();
                let slug = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    "unsupported-media-type"
                } else {
                    "invalid-body"
                };
                Err(Problem::new(status, slug, e.body_text()))
            }
        }
    }
}

/// A patient guid usable in a key and a URL.
pub fn check_guid(guid: &str) -> ApiResult<()> {
    if crate::runner::valid_guid(guid) {
        Ok(())
    } else {
        Err(Problem::bad_request(
            "invalid-guid",
            "a patient guid is 1 to 128 letters, digits, `-`, `_` and `.`, not starting with `.` (e.g. a UUID)",
        ))
    }
}

/// An image name: exactly one key segment.
pub fn check_name(name: &str) -> ApiResult<()> {
    let bad = |why: &str| Err(Problem::bad_request("invalid-name", format!("an image name {why}")));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_NAME {
        return bad(&format!("is at most {MAX_NAME} bytes"));
    }
    if name.contains('/') || name.contains('\\') {
        return bad("is one path segment: it must not contain `/` or `\\`");
    }
    if name.starts_with('.') {
        return bad("must not start with `.`");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    Ok(())
}

fn prefix_of(guid: &str) -> String {
    format!("{IMAGES_PREFIX}{guid}/")
}

/// The object key of an image, after both checks; never outside the
/// patient's prefix.
fn image_key(guid: &str, name: &str) -> ApiResult<String> {
    check_guid(guid)?;
    check_name(name)?;
    let key = format!("{}{name}", prefix_of(guid));
    check_key(&key)
        .map_err(|_| Problem::bad_request("invalid-name", "the image name cannot be part of an object key"))?;
    debug_assert_eq!(key.split('/').count(), 3);
    Ok(key)
}

fn is_sidecar(name: &str) -> bool {
    name.ends_with(".json")
}

/// Percent-encodes one path segment for links.
pub(crate) fn seg(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    utf8_percent_encode(s, SEGMENT).to_string()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Problem::internal(format!("a worker task failed: {e}")))?
}

// ---------------------------------------------------------------- the document

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json", body = Object))
)]
pub(super) async fn openapi_json(State(state): St) -> Response {
    let doc = state.openapi.get().cloned().unwrap_or_else(|| "{}".into());
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Some(RangeAsk::From(0, Some(9))));
        assert_eq!(parse_range("Bytes = 0-9"), Some(RangeAsk::From(0, Some(9))));
        assert_eq!(parse_range("bytes=10-"), Some(RangeAsk::From(10, None)));
        assert_eq!(parse_range("bytes=-5"), Some(RangeAsk::Suffix(5)));
        // ignored (the whole file is sent): invalid, several, other units
        for bad in [
            "bytes=9-1",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=99999999999999999999999-",
            "bytes",
            "",
        ] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
        let tag = Some("\"abc\"");
        assert!(if_range_allows(&HeaderValue::from_static("\"abc\""), tag));
        assert!(!if_range_allows(&HeaderValue::from_static("\"abd\""), tag));
        assert!(!if_range_allows(&HeaderValue::from_static("W/\"abc\""), tag));
        assert!(!if_range_allows(&HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"), tag));
        assert!(!if_range_allows(&HeaderValue::from_static("\"abc\""), None));
        assert_eq!(range_span(Some((0, Some(9))), 5), (0, 5));
        assert_eq!(range_span(Some((5, None)), 5), (5, 0));
        assert_eq!(range_span(None, 7), (0, 7));
    }

    #[test]
    fn names_stay_one_segment() {
        for bad in ["", "..", ".", ".hidden", "a/b", "a\\b", "a\u{0}b", "a\nb", "../x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["Zahn 16.dcm", "Bißflügel rechts.dcm", "_.dcm", "Zahn 16~b66bc913.dcm", "a..b"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        assert!(image_key("..", "x").is_err());
        assert!(image_key("g/h", "x").is_err());
        assert_eq!(image_key("g", "x.dcm").unwrap(), "images/g/x.dcm");
        assert_eq!(seg("a b/ü"), "a%20b%2F%C3%BC");
    }
}
