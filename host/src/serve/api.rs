//! The REST API under `/api/v1`: JSON in and out, errors as RFC 7807
//! problem documents, described by the OpenAPI document at
//! `/api/v1/openapi.json`, which is generated from these handlers (utoipa),
//! so it cannot drift from the routes.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /patients?name=` | viewer | patients by first/last name prefix (case- and accent-insensitive) |
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
use super::passes::rfc3339;
use super::problem::{ApiResult, Problem};
use super::AppState;
use crate::caps::object_store::{check_key, range_span, ByteRange};
use crate::ledger::ImageFacts;

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
        description = "Dental X-rays moved from Sidexis to the practice's storage, by patient. \
                       Every route needs a bearer JWT (`Authorization: Bearer …`) with a role: \
                       `viewer` for images, previews and search; `operator` for logs, sync and jobs; \
                       `admin` can do everything. Errors are RFC 7807 problem documents.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "patients", description = "Patients and their images"),
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

/// The API routes (relative to `/api/v1`), each with its OpenAPI path.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(search_patients))
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

fn authorize(state: &AppState, headers: &HeaderMap, needed: Role) -> ApiResult<super::auth::Principal> {
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Problem::from(super::auth::AuthError::Unauthenticated("the Authorization header is not valid text".into()))
        })?),
    };
    Ok(state.auth.authorize(value, needed)?)
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
fn seg(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    utf8_percent_encode(s, SEGMENT).to_string()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Problem::internal(format!("a worker task failed: {e}")))?
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag))
}

fn not_modified(etag: &str, cache_control: &'static str) -> Response {
    let mut res = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    res
}

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
async fn search_patients(
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

// ---------------------------------------------------------------- images

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Images per page (default 100, at most 1000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One stored image.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The object's file name (the last segment of its key).
    pub name: String,
    /// The image's title in the imaging software, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Bytes.
    pub size: u64,
    /// DICOM modality (`IO`, `PX`, …).
    pub modality: Option<String>,
    /// `YYYY-MM-DD`.
    pub study_date: Option<String>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    /// The DICOM file.
    pub href: String,
    /// A PNG preview.
    pub preview_href: String,
}

/// A page of images.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePage {
    pub patient_guid: String,
    pub images: Vec<Image>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Facts of an image from its JSON sidecar (images stored before the
/// ledger indexed them).
async fn sidecar_facts(state: &AppState, key: &str) -> Option<ImageFacts> {
    let (_, total, mut body) = state.store.get(&format!("{key}.json"), None).await.ok()??;
    if total > 1 << 20 {
        return None;
    }
    let mut bytes = Vec::with_capacity(total as usize);
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.ok()?);
        // the declared size is the store's word; the bytes are checked too
        if bytes.len() > 1 << 20 {
            return None;
        }
    }
    // serde_json caps nesting at 128 levels
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let md = &v["metadata"];
    let text = |k: &str| md[k].as_str().map(str::to_owned);
    Some(ImageFacts {
        name: v["sourceName"].as_str().unwrap_or_default().to_owned(),
        patient_name: None,
        modality: text("modality"),
        study_date: text("study.date").or_else(|| text("acquisition.date")),
        rows: md["rows"].as_i64(),
        columns: md["columns"].as_i64(),
    })
}

/// List a patient's images.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/images",
    tag = "patients",
    params(
        ("patientGuid" = String, Path, description = "The practice system's patient guid"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "A page of images, by name", body = ImagePage),
        (status = 400, description = "Malformed guid or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown patient", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store or the ledger cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_images(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ImagePage>> {
    authorize(&state, &headers, Role::Viewer)?;
    check_guid(&guid)?;
    if let Some(c) = &q.cursor {
        check_name(c).map_err(|_| Problem::bad_request("invalid-cursor", "`cursor` is not one this API gave out"))?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let prefix = prefix_of(&guid);
    // one more than asked, to know whether there is a next page
    let mut found = Vec::new();
    let mut store_cursor = q.cursor.as_ref().map(|c| format!("{prefix}{c}"));
    loop {
        let want = ((limit + 1 - found.len()) * 2).clamp(2, 1000) as u32;
        let page = state.store.list(&prefix, store_cursor.clone(), want).await.map_err(Problem::store)?;
        for o in page.objects {
            let Some(name) = o.key.strip_prefix(&prefix) else { continue };
            // direct children only, images only
            if name.contains('/') || is_sidecar(name) || check_name(name).is_err() {
                continue;
            }
            found.push((name.to_owned(), o));
            if found.len() > limit {
                break;
            }
        }
        if found.len() > limit || page.next_cursor.is_none() {
            break;
        }
        store_cursor = page.next_cursor;
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let facts: HashMap<String, ImageFacts> = {
        let ledger = state.ledger.clone();
        let g = guid.clone();
        blocking(move || ledger.images_of(&g).map_err(Problem::ledger))
            .await?
            .into_iter()
            .map(|i| (i.location, i.facts))
            .collect()
    };
    if found.is_empty() && q.cursor.is_none() {
        let ledger = state.ledger.clone();
        let g = guid.clone();
        if !blocking(move || ledger.knows_patient(&g).map_err(Problem::ledger)).await? {
            return Err(Problem::not_found(format!("no images of patient {guid}: ferry has not stored any")));
        }
    }
    let mut images = Vec::with_capacity(found.len());
    for (name, o) in &found {
        let f = match facts.get(&o.key) {
            Some(f) => Some(f.clone()),
            None => sidecar_facts(&state, &o.key).await,
        }
        .unwrap_or_default();
        let href = format!("/api/v1/patients/{}/images/{}", seg(&guid), seg(name));
        images.push(Image {
            name: name.clone(),
            display_name: Some(f.name).filter(|n| !n.is_empty()),
            size: o.size,
            modality: f.modality,
            study_date: f.study_date,
            rows: f.rows,
            columns: f.columns,
            preview_href: format!("{href}/preview"),
            href,
        });
    }
    let next_cursor = more.then(|| found.last().map(|(n, _)| n.clone())).flatten();
    let next =
        next_cursor.as_ref().map(|c| format!("/api/v1/patients/{}/images?limit={limit}&cursor={}", seg(&guid), seg(c)));
    Ok(Json(ImagePage { patient_guid: guid, images, next_cursor, next }))
}

/// One byte range as asked (RFC 9110 §14.1.2); suffix ranges need the
/// size to resolve.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    From(u64, Option<u64>),
    Suffix(u64),
}

/// The single range of `bytes=a-b`, `bytes=a-` or `bytes=-n`.
///
/// `None` means "ignore the header and send the whole file" (RFC 9110
/// §14.2: a server may ignore Range, and must for a range-set it cannot
/// parse): other units, syntax errors, `last < first`, and several ranges
/// (answered whole rather than as `multipart/byteranges`: viewers ask for
/// one range at a time, and a whole DICOM file is always a correct answer).
fn parse_range(value: &str) -> Option<RangeAsk> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let num = |s: &str| {
        let s = s.trim();
        // 1*DIGIT only: no signs, no spaces inside, at most u64
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeAsk::Suffix(num(b)?)),
        (false, true) => Some(RangeAsk::From(num(a)?, None)),
        (false, false) => {
            let (first, last) = (num(a)?, num(b)?);
            (last >= first).then_some(RangeAsk::From(first, Some(last)))
        }
    }
}

/// `If-Range` (RFC 9110 §13.1.5): the range is served only if the
/// validator is a strong entity tag equal to the current one. Dates are
/// never honoured (these responses carry no Last-Modified), weak tags
/// never match: in both cases the whole file is sent.
fn if_range_allows(if_range: &HeaderValue, current_etag: Option<&str>) -> bool {
    let Ok(v) = if_range.to_str() else { return false };
    let v = v.trim();
    v.starts_with('"') && current_etag == Some(v)
}

fn unsatisfiable(total: Option<u64>, detail: String) -> Response {
    let mut res = Problem::new(StatusCode::RANGE_NOT_SATISFIABLE, "range-not-satisfiable", detail).into_response();
    if let Some(total) = total {
        res.headers_mut()
            .insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{total}")).expect("ascii"));
    }
    res
}

/// `attachment; filename="Zahn 16.dcm"; filename*=UTF-8''Zahn%2016.dcm`
fn disposition(name: &str) -> HeaderValue {
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{}", seg(name)))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// The DICOM bytes as a binary body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct DicomFile(#[allow(dead_code)] Vec<u8>);

/// A PNG image.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Png(#[allow(dead_code)] Vec<u8>);

const DOWNLOAD_CACHE: &str = "private, max-age=3600";

/// Download an image (DICOM).
///
/// Supports one byte range (`Range: bytes=first-last`, `first-`, `-suffix`)
/// and `If-Range` with the ETag; a Range header that is malformed, asks
/// for several ranges, or fails `If-Range` is ignored (200, whole file).
/// With `[serve] presign = true` and an S3 store, answers `307` to a
/// presigned S3 URL valid for 5 minutes instead of streaming.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/images/{name}",
    tag = "patients",
    params(
        ("patientGuid" = String, Path, description = "The practice system's patient guid"),
        ("name" = String, Path, description = "The image's `name` from the listing (one path segment)"),
        ("Range" = Option<String>, Header, description = "`bytes=first-last`, `bytes=first-` or `bytes=-suffix`"),
    ),
    responses(
        (status = 200, description = "The whole file", body = DicomFile, content_type = "application/dicom",
            headers(("ETag" = String, description = "The SHA-256 of the content"), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested range", body = DicomFile, content_type = "application/dicom",
            headers(("Content-Range" = String, description = "`bytes first-last/total`"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 307, description = "Download from this presigned URL (S3 with `presign = true`)",
            headers(("Location" = String))),
        (status = 400, description = "Malformed guid or name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range starts beyond the end of the file", body = Problem, content_type = "application/problem+json",
            headers(("Content-Range" = String, description = "`bytes */total`"))),
    )
)]
async fn get_image(
    State(state): St,
    headers: HeaderMap,
    ApiPath((guid, name)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, Role::Viewer)?;
    let key = image_key(&guid, &name)?;
    let missing = || Problem::not_found(format!("patient {guid} has no image named `{name}`"));
    if is_sidecar(&name) {
        return Err(missing());
    }
    if state.presign {
        // check first: a presigned URL to nothing would answer S3's 404
        if state.store.head(&key).await.map_err(Problem::store)?.is_none() {
            return Err(missing());
        }
        if let Some(url) = state.store.presign_get(&key, PRESIGN_TTL).await.map_err(Problem::store)? {
            let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
            let location = HeaderValue::from_str(&url)
                .map_err(|_| Problem::internal("the presigned URL is not a valid header"))?;
            res.headers_mut().insert(header::LOCATION, location);
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(res);
        }
    }
    let mut asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
    // the object's facts, when a decision about the range needs them
    let mut head = None;
    if asked.is_some() {
        if let Some(if_range) = headers.get(header::IF_RANGE) {
            let info = state.store.head(&key).await.map_err(Problem::store)?.ok_or_else(missing)?;
            let current = info.sha256.as_ref().map(|s| format!("\"{s}\""));
            if !if_range_allows(if_range, current.as_deref()) {
                asked = None;
            }
            head = Some(info);
        }
    }
    let range: Option<ByteRange> = match asked {
        None => None,
        Some(RangeAsk::From(first, last)) => Some((first, last)),
        Some(RangeAsk::Suffix(n)) => {
            let total = match head {
                Some(info) => info.size,
                None => state.store.head(&key).await.map_err(Problem::store)?.ok_or_else(missing)?.size,
            };
            if n == 0 || total == 0 {
                return Ok(unsatisfiable(Some(total), "an empty suffix range selects nothing".into()));
            }
            Some((total.saturating_sub(n), None))
        }
    };
    let (info, total, body) = state.store.get(&key, range).await.map_err(Problem::store)?.ok_or_else(missing)?;
    let etag = info.sha256.as_ref().map(|s| format!("\"{s}\""));
    if range.is_none() {
        if let Some(etag) = &etag {
            if etag_matches(&headers, etag) {
                return Ok(not_modified(etag, DOWNLOAD_CACHE));
            }
        }
    }
    let (offset, len) = range_span(range, total);
    let mut res = if let Some((first, _)) = range {
        if len == 0 {
            return Ok(unsatisfiable(
                Some(total),
                format!("the range starts at byte {first}; the file has {total} bytes"),
            ));
        }
        let mut res = Response::new(Body::from_stream(body));
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = format!("bytes {offset}-{}/{total}", offset + len - 1);
        res.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ascii"));
        res
    } else {
        Response::new(Body::from_stream(body))
    };
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dicom"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(DOWNLOAD_CACHE));
    h.insert(header::CONTENT_DISPOSITION, disposition(&name));
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, etag);
    }
    Ok(res)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// Longest side in pixels, 16 to 4096 (default 256); never enlarged.
    size: Option<u32>,
}

const PREVIEW_CACHE: &str = "private, max-age=86400";

/// A PNG preview of an image.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/images/{name}/preview",
    tag = "patients",
    params(
        ("patientGuid" = String, Path, description = "The practice system's patient guid"),
        ("name" = String, Path, description = "The image's `name` from the listing"),
        PreviewQuery,
    ),
    responses(
        (status = 200, description = "The preview", body = Png, content_type = "image/png",
            headers(("ETag" = String, description = "From the image's SHA-256 and the size"), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 400, description = "Malformed guid, name or size", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The image is too large to preview", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file cannot be previewed (not DICOM, no pixels, unsupported encoding)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn preview(
    State(state): St,
    headers: HeaderMap,
    ApiPath((guid, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<PreviewQuery>,
) -> ApiResult<Response> {
    authorize(&state, &headers, Role::Viewer)?;
    let key = image_key(&guid, &name)?;
    let missing = || Problem::not_found(format!("patient {guid} has no image named `{name}`"));
    if is_sidecar(&name) {
        return Err(missing());
    }
    let size = q.size.unwrap_or(256);
    if !(16..=4096).contains(&size) {
        return Err(Problem::bad_request("invalid-size", "`size` is 16 to 4096 pixels"));
    }
    let info = state.store.head(&key).await.map_err(Problem::store)?.ok_or_else(missing)?;
    let max = state.max_preview;
    if info.size > max {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "the image has {} bytes; previews are made of images up to {} MiB ([serve.preview] max_file)",
                info.size,
                max >> 20
            ),
        ));
    }
    let etag = info.sha256.as_ref().map(|s| format!("\"{s}-{size}\""));
    if let Some(etag) = &etag {
        if etag_matches(&headers, etag) {
            return Ok(not_modified(etag, PREVIEW_CACHE));
        }
    }
    // the cache is keyed by object and content, so a re-stored image gets
    // a new preview
    let cache_key = format!("{key}\n{}", info.sha256.clone().unwrap_or_else(|| format!("size:{}", info.size)));
    let previews = &state.previews;
    // a cached preview needs no download
    let png = match previews.cached(&cache_key, Some(size)).await {
        Some(answer) => answer.map_err(preview_problem)?,
        None => {
            let tmp = download(&state, &key, previews.download_dir()).await?.ok_or_else(missing)?;
            previews.render(tmp.path(), &cache_key, Some(size)).await.map_err(preview_problem)?
        }
    };
    let mut res = Response::new(Body::from(png));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(PREVIEW_CACHE));
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, etag);
    }
    Ok(res)
}

/// Copies an object to a temporary file in `dir` (deleted on drop),
/// refusing more than `[serve.preview] max_file`.
async fn download(state: &AppState, key: &str, dir: &Path) -> ApiResult<Option<tempfile::NamedTempFile>> {
    let Some((_, total, mut body)) = state.store.get(key, None).await.map_err(Problem::store)? else {
        return Ok(None);
    };
    let max = state.max_preview;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("previews are made of images up to {} MiB", max >> 20),
        )
    };
    if total > max {
        return Err(too_large());
    }
    let tmp_dir = dir;
    let io = |e: std::io::Error| Problem::internal(format!("cannot write a temporary file for the preview: {e}"));
    tokio::fs::create_dir_all(&tmp_dir).await.map_err(io)?;
    let tmp = tempfile::Builder::new().prefix("download-").suffix(".dcm").tempfile_in(tmp_dir).map_err(io)?;
    let mut out = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Problem::unavailable(format!("reading the image from the store: {e}")))?;
        written += chunk.len() as u64;
        if written > max {
            return Err(too_large());
        }
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    Ok(Some(tmp))
}

fn preview_problem(e: super::preview::PreviewError) -> Problem {
    use super::preview::PreviewError::*;
    match e {
        TooLarge(m) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", format!("too large to preview: {m}")),
        Cannot(m) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cannot-preview",
            format!("this image cannot be previewed: {m}"),
        ),
        Unavailable(m) => {
            tracing::warn!("preview unavailable: {m}");
            Problem::unavailable(format!("the preview could not be made now: {m}"))
        }
        e @ Io(_) => {
            tracing::error!("preview failed: {e}");
            Problem::internal(format!("the preview could not be made: {e}"))
        }
    }
}

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
async fn patient_logs(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    authorize(&state, &headers, Role::Operator)?;
    check_guid(&guid)?;
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| Problem::bad_request("invalid-cursor", "`cursor` is not one this API gave out"))?,
        ),
    };
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
async fn log_entry(State(state): St, headers: HeaderMap, ApiPath(id): ApiPath<String>) -> ApiResult<Json<LogEntry>> {
    authorize(&state, &headers, Role::Operator)?;
    let id: i64 = id.parse().map_err(|_| Problem::bad_request("invalid-id", "a log entry id is a number"))?;
    let ledger = state.ledger.clone();
    let entry = blocking(move || ledger.log_entry(id).map_err(Problem::ledger)).await?;
    entry.map(|e| Json(e.into())).ok_or_else(|| Problem::not_found(format!("no log entry {id}")))
}

// ---------------------------------------------------------------- sync

/// A sync job was accepted.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    pub job_id: String,
    pub state: super::passes::JobState,
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
async fn sync_patient(State(state): St, headers: HeaderMap, ApiPath(guid): ApiPath<String>) -> ApiResult<Response> {
    let who = authorize(&state, &headers, Role::Operator)?;
    check_guid(&guid)?;
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
    tracing::info!(job = %job.job_id, subject = %who.subject, "sync requested");
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
        (status = 200, description = "Where the job stands", body = super::passes::JobStatus),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this (operator)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job (jobs are kept in memory until the service restarts)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<super::passes::JobStatus>> {
    authorize(&state, &headers, Role::Operator)?;
    state
        .jobs
        .status(&id)
        .map(Json)
        .ok_or_else(|| Problem::not_found("no such job (jobs are forgotten when the service restarts)"))
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
async fn openapi_json(State(state): St) -> Response {
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
