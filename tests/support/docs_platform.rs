//! A made-up practice platform with a documents API, on 127.0.0.1 with a
//! random port: the peer for `http-store`, ferry's sink configured by
//! request templates. No real platform is imitated (Carepatron, the one
//! the product brief names, has no document upload in its public API);
//! the routes are the shape such APIs commonly have, so the test proves
//! the templates, not a vendor's quirks. The request bodies are parsed by
//! real parsers (`multer` for `multipart/form-data`, serde for JSON,
//! standard base64), so a malformed body fails the test.
//!
//! Base path `/api/v2` ([`DocsPlatform::base_url`]).
//!
//! - Every request needs `X-Api-Key: <key>` else `401`.
//! - `POST /patients/{patient}/documents`, multipart: a `file` part (with
//!   a filename and a content type) and optional text parts `title` and
//!   `note` → `201 {"id": "doc-N", ...}` with `Location`; an unknown
//!   patient `404`, no file part `400`.
//! - `GET /patients/{patient}/documents?search=q` → `200 {"items": [...]}`
//!   with the patient's documents whose note contains `q` (all without
//!   `q`); an unknown patient `404`.
//! - `PUT /documents/{id}/file`, JSON `{"name", "note", "data": base64}`
//!   → `200` the document, its version one higher; unknown id `404`.
//! - [`DocsPlatform::fault_next`]: the next requests answer a status
//!   (`429` and `503` with `Retry-After: 1`) before anything else.
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::runtime::ServerRuntime;

const BASE_PATH: &str = "/api/v2";

/// A document as the platform holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformDoc {
    pub id: String,
    pub patient: String,
    pub title: String,
    pub note: String,
    pub file_name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    /// 1 when created, one more per `PUT`.
    pub version: u32,
}

struct Inner {
    patients: Vec<String>,
    docs: BTreeMap<u64, PlatformDoc>,
    next: u64,
    faults: VecDeque<u16>,
    /// `METHOD /route` → count (patient and ids as `{patient}`, `{id}`).
    routes: BTreeMap<String, u64>,
}

struct Server {
    key: String,
    inner: Mutex<Inner>,
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Shared = Arc<Server>;

/// The platform. Stops when dropped.
pub struct DocsPlatform {
    addr: SocketAddr,
    server: Shared,
    _rt: ServerRuntime,
}

impl DocsPlatform {
    /// Starts a platform accepting `X-Api-Key: {key}`.
    pub fn start(key: &str) -> DocsPlatform {
        let rt = ServerRuntime::new("docs-platform");
        let (listener, addr) = rt.bind();
        let server = Arc::new(Server {
            key: key.to_owned(),
            inner: Mutex::new(Inner {
                patients: Vec::new(),
                docs: BTreeMap::new(),
                next: 1,
                faults: VecDeque::new(),
                routes: BTreeMap::new(),
            }),
        });
        let b = BASE_PATH;
        let app = Router::new()
            .route(&format!("{b}/patients/{{patient}}/documents"), post(create).get(list))
            .route(&format!("{b}/documents/{{id}}/file"), put(replace))
            .route(&format!("{b}/documents/{{id}}"), get(read))
            .layer(middleware::from_fn_with_state(server.clone(), gate))
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(server.clone());
        rt.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("docs platform stopped: {e}");
            }
        });
        DocsPlatform { addr, server, _rt: rt }
    }

    /// `127.0.0.1:port`, for `grants.http`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:port/api/v2`.
    pub fn base_url(&self) -> String {
        format!("http://{}{BASE_PATH}", self.addr)
    }

    /// A patient the platform knows.
    pub fn add_patient(&self, id: &str) {
        self.server.lock().patients.push(id.to_owned());
    }

    /// Every document, in creation order.
    pub fn documents(&self) -> Vec<PlatformDoc> {
        self.server.lock().docs.values().cloned().collect()
    }

    pub fn documents_of(&self, patient: &str) -> Vec<PlatformDoc> {
        self.documents().into_iter().filter(|d| d.patient == patient).collect()
    }

    /// The next `statuses.len()` requests answer these statuses.
    pub fn fault_next(&self, statuses: &[u16]) {
        self.server.lock().faults.extend(statuses);
    }

    pub fn pending_faults(&self) -> usize {
        self.server.lock().faults.len()
    }

    /// Requests seen on a route, e.g. `POST /patients/{patient}/documents`.
    pub fn request_count(&self, route: &str) -> u64 {
        self.server.lock().routes.get(route).copied().unwrap_or(0)
    }
}

fn route_key(method: &str, path: &str) -> String {
    let rest = path.strip_prefix(BASE_PATH).unwrap_or(path);
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let route = match parts.as_slice() {
        ["patients", _, "documents"] => "/patients/{patient}/documents".to_owned(),
        ["documents", _, "file"] => "/documents/{id}/file".to_owned(),
        ["documents", _] => "/documents/{id}".to_owned(),
        _ => rest.to_owned(),
    };
    format!("{method} {route}")
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

async fn gate(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let fault = {
        let mut inner = s.lock();
        *inner.routes.entry(route_key(req.method().as_str(), req.uri().path())).or_default() += 1;
        inner.faults.pop_front()
    };
    if let Some(code) = fault {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = error(status, "injected fault");
        if matches!(code, 429 | 503) {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        return r;
    }
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    if key != Some(s.key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "a valid X-Api-Key is required");
    }
    next.run(req).await
}

fn view(id: u64, d: &PlatformDoc) -> Value {
    json!({
        "id": format!("doc-{id}"),
        "patient": d.patient,
        "title": d.title,
        "note": d.note,
        "fileName": d.file_name,
        "contentType": d.content_type,
        "size": d.bytes.len(),
        "version": d.version,
    })
}

fn parse_id(raw: &str) -> Option<u64> {
    raw.strip_prefix("doc-")?.parse().ok()
}

async fn create(State(s): State<Shared>, Path(patient): Path<String>, mut form: Multipart) -> Response {
    if !s.lock().patients.contains(&patient) {
        return error(StatusCode::NOT_FOUND, "no such patient");
    }
    let (mut title, mut note, mut file) = (String::new(), String::new(), None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad multipart body: {e}")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let meta = (field.file_name().map(str::to_owned), field.content_type().map(str::to_owned));
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad multipart part `{name}`: {e}")),
        };
        let text = || String::from_utf8(bytes.to_vec()).ok();
        match name.as_str() {
            "title" => title = text().unwrap_or_default(),
            "note" => note = text().unwrap_or_default(),
            "file" => file = Some((meta, bytes.to_vec())),
            _ => return error(StatusCode::BAD_REQUEST, &format!("unknown part `{name}`")),
        }
    }
    let Some(((Some(file_name), Some(content_type)), bytes)) = file else {
        return error(StatusCode::BAD_REQUEST, "a `file` part with a filename and a content type is required");
    };
    let mut inner = s.lock();
    let id = inner.next;
    inner.next += 1;
    let doc = PlatformDoc { id: format!("doc-{id}"), patient, title, note, file_name, content_type, bytes, version: 1 };
    let body = view(id, &doc);
    inner.docs.insert(id, doc);
    let mut r = (StatusCode::CREATED, Json(body)).into_response();
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&format!("{BASE_PATH}/documents/doc-{id}")).unwrap());
    r
}

async fn list(State(s): State<Shared>, Path(patient): Path<String>, RawQuery(q): RawQuery) -> Response {
    let params: Vec<(String, String)> = match serde_urlencoded::from_str(q.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad query: {e}")),
    };
    let search = params.iter().find(|(k, _)| k == "search").map(|(_, v)| v.as_str()).unwrap_or("");
    let inner = s.lock();
    if !inner.patients.contains(&patient) {
        return error(StatusCode::NOT_FOUND, "no such patient");
    }
    let items: Vec<Value> = inner
        .docs
        .iter()
        .filter(|(_, d)| d.patient == patient && d.note.contains(search))
        .map(|(id, d)| view(*id, d))
        .collect();
    Json(json!({ "items": items })).into_response()
}

async fn read(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let inner = s.lock();
    match parse_id(&id).and_then(|n| inner.docs.get(&n).map(|d| view(n, d))) {
        Some(v) => Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such document"),
    }
}

async fn replace(State(s): State<Shared>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !ct.starts_with("application/json") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "JSON only");
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}")),
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let Some(data) = field("data") else { return error(StatusCode::BAD_REQUEST, "`data` is required") };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return error(StatusCode::BAD_REQUEST, "`data` is not base64");
    };
    let mut inner = s.lock();
    let Some((n, d)) = parse_id(&id).and_then(|n| inner.docs.get_mut(&n).map(|d| (n, d))) else {
        return error(StatusCode::NOT_FOUND, "no such document");
    };
    d.bytes = bytes;
    d.version += 1;
    if let Some(t) = field("name") {
        d.title = t.to_owned();
    }
    if let Some(t) = field("note") {
        d.note = t.to_owned();
    }
    Json(view(n, d)).into_response()
}
