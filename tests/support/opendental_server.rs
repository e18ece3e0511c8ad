//! An Open Dental API double on 127.0.0.1 with a random port, for the tests
//! of ferry's Open Dental plugins (`opendental-resolver`: name + birth date
//! or a PatNum → PatNum; `opendental-store`: an item → a document in the
//! patient's Imaging module).
//!
//! Like [`crate::FhirServer`] this is a small but real server, not canned
//! answers: an in-memory practice (patients, image categories, documents
//! with their bytes) that answers the routes below the way Open Dental's
//! API documentation (opendental.com/site/apispecification.html and the
//! pages it links: apiimplementation, apipatients, apidocuments; read
//! 2026-12) describes them. What that documentation does not say (error
//! texts, some validation details) is the double's own choice and marked
//! "(double)" below, so a test never mistakes it for verified behaviour.
//!
//! Base path `/api/v1` ([`OpenDentalServer::base_url`]), as
//! `https://api.opendental.com/api/v1`.
//!
//! ## Every request
//!
//! - `Authorization: ODFHIR {DeveloperKey}/{CustomerKey}` (the scheme
//!   case-insensitive, the keys exact; [`OpenDentalServer::authorization`])
//!   else `401` — the documented status for invalid credentials.
//! - `Content-Type: application/json` (parameters allowed) else `400`: the
//!   documentation says every request needs it and lists invalid
//!   Content-Types under `400`. Checked after auth (double: the order).
//! - Errors answer a JSON string (`"Patient not found"`), the documented
//!   explanations where there is one (`"PatNum is required"`,
//!   `"Patient not found"`, `"Document not found"`), the double's own text
//!   otherwise. Unknown routes `404`, wrong methods `405` (double).
//! - Lists page with `Offset` and `Limit` (`Limit` defaults to and is cut
//!   at the page size, 100 as the API's hard limit;
//!   [`OpenDentalServerBuilder::page_size`] for tests of paging); a bad
//!   number is `400` (double).
//! - JSON bodies are at most 16,800,000 bytes (the documented "16.8M
//!   characters"); larger ones get `413` (double: the status).
//!
//! ## Routes
//!
//! - `GET /patients/{PatNum}` → `200` a patient (the documented single
//!   shape, a subset of its fields: PatNum, LName, FName, MiddleI,
//!   Preferred, PatStatus, Gender, Position, Birthdate, …, ImageFolder,
//!   DateTStamp), `404 "Patient not found"`; a PatNum that is not a number
//!   `400` (double).
//! - `GET /patients?LName=&FName=&Birthdate=` (Patients GET multiple) →
//!   `200` a list (the documented multiple shape). LName and FName match
//!   **partially and case-insensitively** (documented: "Most string
//!   parameters support partial match and are not case sensitive"; the
//!   documented example `LName=smi` finding Smith is a prefix, and the
//!   double matches prefixes), Birthdate exactly (`yyyy-MM-dd`, else
//!   `400`). `hideInactive=true` leaves out `Inactive` patients and
//!   `Archived` ones are left out unless `showArchived=true` (double: the
//!   documentation names both parameters, not their defaults). Ordered by
//!   LName, FName (case-insensitive), PatNum. The other documented
//!   parameters (Phone, Address, City, …) are refused with `400` as not
//!   implemented, unknown ones too (double), so a typo fails a test.
//! - `GET /documents?PatNum=` → `200` the patient's documents ordered by
//!   DateCreated then DocNum (documented shape: DocNum, MountNum (0),
//!   filePath, Description, PatNum (a string, as documented), Note,
//!   DateCreated, docCategory, DocCategory, ToothNumbers, ProvNum (string),
//!   PrintHeading, DateTStamp, serverDateTime); `400 "PatNum is required"`,
//!   `404 "Patient not found"`. A document uploaded through the API keeps
//!   its file in `Note` as `_rawBase64_:{extension}_{base64}` and has no
//!   `filePath` until a user opens it ([`OpenDentalServer::open_document`]),
//!   as documented for Documents POST Upload. No mounts.
//! - `GET /documents/{DocNum}` → `200` (documented single shape: DocNum,
//!   Description, DateCreated, DocCategory, docCategory, PatNum, FileName,
//!   ImgType, ToothNumbers, DateTStamp, ProvNum, PrintHeading),
//!   `404 "Document not found"`.
//! - `POST /documents/Upload` `{PatNum, rawBase64, extension, Description,
//!   DateCreated, DocCategory, ImgType, ToothNumbers, ProvNum,
//!   PrintHeading}` → `201` the document as `GET /documents/{DocNum}`
//!   shows it, with `Location: <base>/documents/{DocNum}` (documented:
//!   "POST … typically returns a location header and the object"). PatNum,
//!   rawBase64 and extension are required (`400 "<field> is required"`);
//!   an unknown PatNum is `404 "Patient not found"` (the documented 404 of
//!   this method's sibling UploadSftp); `400` for rawBase64 that is not
//!   standard base64, an extension that is not `.` + 1–10 letters/digits
//!   (a missing dot is added: double, the documentation's examples all
//!   have one), a DateCreated not `yyyy-MM-dd HH:mm:ss`, a DocCategory
//!   that is not the DefNum of an image category (definition.Category =
//!   18; the Upload page calls it "FK to definition.ItemName" but its
//!   example and the PUT and UploadSftp pages use the DefNum, so the double
//!   takes a number only), an ImgType not one of `Document`, `Radiograph`, `Photo`, `File`,
//!   `Attachment` (case-sensitive: double), ToothNumbers not numbers/
//!   letters and ranges (`1-5,8` is stored as `1,2,3,4,5,8`, as the
//!   documented example), PrintHeading not `"true"`/`"false"`, and for
//!   unknown fields (double). Defaults as documented: DateCreated now,
//!   DocCategory the first image category, ImgType `Document`, ProvNum 0,
//!   PrintHeading `false`. The decoded bytes are kept
//!   ([`OpenDentalServer::document_bytes`]). **No idempotency**: the same
//!   upload twice makes two documents, as in Open Dental.
//! - `PUT /documents/{DocNum}` (Documents PUT, "Updates Image Info") with
//!   any of Description, DateCreated, DocCategory, ImgType, ToothNumbers,
//!   ProvNum, PrintHeading, validated as for the upload; absent fields are
//!   unchanged (documented for every PUT) → `200` the document; `404
//!   "Document not found"`. The file cannot be changed — the API has no
//!   way to replace a document's content.
//! - `DELETE /documents/{DocNum}` → `200`, `404 "Document not found"`.
//!
//! ## Simplified
//!
//! No clinics, providers (any ProvNum ≥ 0 is taken), mounts, Definitions
//! route, thumbnails, SFTP methods, `SetByUrl`, `DateTStamp` filters,
//! `DateFormatString`; times are UTC; patient fields beyond names, birth
//! date, status and gender are fixed values; the throttle of the cloud API
//! is not imitated (use [`OdFault::RateLimited`]).
//!
//! ## Helpers
//!
//! Seed patients ([`OpenDentalServer::add_patient`],
//! [`OpenDentalServer::set_patient_status`]), image categories
//! ([`DEFAULT_DOC_CATEGORIES`], [`OpenDentalServer::add_doc_category`]) and
//! documents ([`OpenDentalServer::add_document`]); read what was stored
//! ([`OpenDentalServer::documents`], [`OpenDentalServer::document`],
//! [`OpenDentalServer::document_bytes`]); faults ([`OdFault`], queued with
//! [`OpenDentalServer::fault_next`], answered before the auth check, in
//! order), a delay ([`OpenDentalServer::set_delay`]) and request counters
//! ([`OpenDentalServer::requests`], [`OpenDentalServer::request_count`]).
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::runtime::ServerRuntime;

/// The API's base path.
pub const BASE_PATH: &str = "/api/v1";
/// The developer key [`OpenDentalServer::start`] accepts.
pub const DEVELOPER_KEY: &str = "od-test-developer-key";
/// The customer key [`OpenDentalServer::start`] accepts.
pub const CUSTOMER_KEY: &str = "od-test-customer-key";
/// The API's hard page size.
pub const MAX_PAGE_SIZE: usize = 100;
/// The documented largest JSON body ("16.8M characters").
pub const MAX_BODY: usize = 16_800_000;
/// The image categories a server starts with, `(DefNum, ItemName)` in
/// order (the first is the default); the numbers of the documentation's
/// examples.
pub const DEFAULT_DOC_CATEGORIES: [(u64, &str); 3] = [(14, "Lab Cases"), (47, "Patient Pictures"), (190, "Xray")];
/// `ImgType` values.
pub const IMG_TYPES: [&str; 5] = ["Document", "Radiograph", "Photo", "File", "Attachment"];
/// `PatStatus` values.
pub const PAT_STATUSES: [&str; 6] = ["Patient", "NonPatient", "Inactive", "Archived", "Deceased", "Prospective"];

/// What the server answers instead of the real answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OdFault {
    /// This status with a JSON string body (`401`: as for refused keys,
    /// `500`: a server error, `504`: the API's 60 s limit, …).
    Status(u16),
    /// `429 Too Many Requests` with `Retry-After: retry_after_secs`.
    RateLimited { retry_after_secs: u64 },
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OdRequest {
    pub method: String,
    /// The route's key, as [`OpenDentalServer::request_count`] takes it:
    /// `"GET /patients"`, `"GET /patients/{PatNum}"`, `"GET /documents"`,
    /// `"GET /documents/{DocNum}"`, `"POST /documents/Upload"`,
    /// `"PUT /documents/{DocNum}"`, `"DELETE /documents/{DocNum}"`, or
    /// `"<METHOD> <path>"` for anything else.
    pub route: String,
    /// The path as requested, without the query.
    pub path: String,
    pub query: Option<String>,
    /// The status answered (faults included).
    pub status: u16,
    /// Bytes of the request body.
    pub body_len: usize,
}

/// A patient as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OdPatient {
    pub pat_num: u64,
    pub lname: String,
    pub fname: String,
    /// `yyyy-MM-dd` (`0001-01-01`: none, as in Open Dental).
    pub birthdate: String,
    /// One of [`PAT_STATUSES`].
    pub status: String,
    pub gender: String,
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OdDocument {
    pub doc_num: u64,
    pub pat_num: u64,
    pub description: String,
    /// `yyyy-MM-dd HH:mm:ss`.
    pub date_created: String,
    pub doc_category: u64,
    pub img_type: String,
    /// Expanded: `1,2,3`.
    pub tooth_numbers: String,
    pub prov_num: u64,
    pub print_heading: bool,
    /// With its dot: `.dcm`.
    pub extension: String,
    /// The file, byte for byte.
    pub bytes: Vec<u8>,
    /// Opened by a user: the file is in the image folder and `Note` clear.
    pub opened: bool,
    /// `{LName}{FName}{DocNum}{extension}` once opened, else empty.
    pub file_name: String,
    pub date_t_stamp: String,
}

/// How to start an [`OpenDentalServer`].
#[derive(Debug, Clone)]
pub struct OpenDentalServerBuilder {
    developer_key: String,
    customer_key: String,
    page_size: usize,
}

impl OpenDentalServerBuilder {
    /// The developer and customer key the server accepts.
    pub fn keys(mut self, developer_key: &str, customer_key: &str) -> Self {
        self.developer_key = developer_key.to_owned();
        self.customer_key = customer_key.to_owned();
        self
    }

    /// The page size (default and at most 100, the API's), for tests of
    /// the server's paging. ferry's plugins assume 100.
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// Starts the server (it has its own runtime; works from sync and
    /// async tests).
    pub fn start(self) -> OpenDentalServer {
        let rt = ServerRuntime::new("opendental");
        let (listener, addr) = rt.bind();
        let server = Arc::new(Server {
            base: format!("http://{addr}{BASE_PATH}"),
            auth: format!("{}/{}", self.developer_key, self.customer_key),
            page_size: self.page_size,
            inner: Mutex::new(Inner {
                patients: BTreeMap::new(),
                categories: DEFAULT_DOC_CATEGORIES.iter().map(|(n, s)| (*n, s.to_string())).collect(),
                documents: BTreeMap::new(),
                next_pat: 1,
                next_doc: 1,
                faults: VecDeque::new(),
                delay: Duration::ZERO,
                log: Vec::new(),
                routes: BTreeMap::new(),
            }),
        });
        let b = BASE_PATH;
        let app = Router::new()
            .route(&format!("{b}/patients"), get(list_patients))
            .route(&format!("{b}/patients/{{pat}}"), get(get_patient))
            .route(&format!("{b}/documents"), get(list_documents))
            .route(&format!("{b}/documents/Upload"), post(upload))
            .route(&format!("{b}/documents/{{doc}}"), get(get_document).put(put_document).delete(delete_document))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(server.clone(), gate))
            .layer(DefaultBodyLimit::disable())
            .with_state(server.clone());
        rt.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("Open Dental test server stopped: {e}");
            }
        });
        OpenDentalServer { addr, server, _rt: rt }
    }
}

struct Server {
    base: String,
    /// `{DeveloperKey}/{CustomerKey}`.
    auth: String,
    page_size: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    patients: BTreeMap<u64, OdPatient>,
    /// Image categories (definition.Category = 18), in order.
    categories: Vec<(u64, String)>,
    documents: BTreeMap<u64, OdDocument>,
    next_pat: u64,
    next_doc: u64,
    faults: VecDeque<(OdFault, u32)>,
    delay: Duration,
    log: Vec<OdRequest>,
    routes: BTreeMap<String, u64>,
}

type Shared = Arc<Server>;

impl Server {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The Open Dental API double. Stops when dropped.
pub struct OpenDentalServer {
    addr: SocketAddr,
    server: Shared,
    // Last: the runtime goes after everything that might use it.
    _rt: ServerRuntime,
}

impl OpenDentalServer {
    /// Starts a server accepting [`DEVELOPER_KEY`]/[`CUSTOMER_KEY`].
    pub fn start() -> OpenDentalServer {
        OpenDentalServer::builder().start()
    }

    pub fn builder() -> OpenDentalServerBuilder {
        OpenDentalServerBuilder {
            developer_key: DEVELOPER_KEY.into(),
            customer_key: CUSTOMER_KEY.into(),
            page_size: MAX_PAGE_SIZE,
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:port`, as `grants.http` wants it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:port/api/v1`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.server.base.clone()
    }

    /// The `Authorization` value the server accepts:
    /// `ODFHIR {DeveloperKey}/{CustomerKey}`.
    pub fn authorization(&self) -> String {
        format!("ODFHIR {}", self.server.auth)
    }

    // ------------------------------------------------------------ seeding

    /// Adds a patient (status `Patient`) and returns its PatNum (1, 2, …).
    pub fn add_patient(&self, lname: &str, fname: &str, birthdate: &str) -> u64 {
        let mut s = self.server.lock();
        let pat_num = s.next_pat;
        s.next_pat += 1;
        let p = OdPatient {
            pat_num,
            lname: lname.into(),
            fname: fname.into(),
            birthdate: birthdate.into(),
            status: "Patient".into(),
            gender: "Unknown".into(),
        };
        s.patients.insert(pat_num, p);
        pat_num
    }

    /// Sets a patient's `PatStatus` (one of [`PAT_STATUSES`]).
    pub fn set_patient_status(&self, pat_num: u64, status: &str) {
        assert!(PAT_STATUSES.contains(&status), "not a PatStatus: {status}");
        let mut s = self.server.lock();
        s.patients.get_mut(&pat_num).expect("a seeded patient").status = status.into();
    }

    /// The patient with this PatNum.
    pub fn patient(&self, pat_num: u64) -> Option<OdPatient> {
        self.server.lock().patients.get(&pat_num).cloned()
    }

    /// Adds an image category (definition.Category = 18) at the end.
    pub fn add_doc_category(&self, def_num: u64, name: &str) {
        let mut s = self.server.lock();
        s.categories.retain(|(n, _)| *n != def_num);
        s.categories.push((def_num, name.into()));
    }

    /// Adds a document as if uploaded (not opened; first category,
    /// `Document`, now) and returns its DocNum.
    pub fn add_document(&self, pat_num: u64, description: &str, extension: &str, bytes: &[u8]) -> u64 {
        let mut s = self.server.lock();
        assert!(s.patients.contains_key(&pat_num), "no patient {pat_num}");
        let doc_num = s.next_doc;
        s.next_doc += 1;
        let now = now_stamp();
        let d = OdDocument {
            doc_num,
            pat_num,
            description: description.into(),
            date_created: now.clone(),
            doc_category: s.categories.first().map_or(0, |c| c.0),
            img_type: "Document".into(),
            tooth_numbers: String::new(),
            prov_num: 0,
            print_heading: false,
            extension: extension.into(),
            bytes: bytes.to_vec(),
            opened: false,
            file_name: String::new(),
            date_t_stamp: now,
        };
        s.documents.insert(doc_num, d);
        doc_num
    }

    /// A user opens the document in Open Dental: the file is written to the
    /// patient's image folder, `Note` is cleared, `FileName` and `filePath`
    /// are set. False if there is no such document.
    pub fn open_document(&self, doc_num: u64) -> bool {
        let mut s = self.server.lock();
        let Some(pat) = s.documents.get(&doc_num).map(|d| d.pat_num) else { return false };
        let folder = s.patients.get(&pat).map(|p| format!("{}{}", p.lname, p.fname)).unwrap_or_default();
        let d = s.documents.get_mut(&doc_num).expect("just found");
        if !d.opened {
            d.opened = true;
            d.file_name = format!("{folder}{doc_num}{}", d.extension);
        }
        true
    }

    /// Every document, by DocNum.
    pub fn documents(&self) -> Vec<OdDocument> {
        self.server.lock().documents.values().cloned().collect()
    }

    /// One patient's documents, by DocNum.
    pub fn documents_of(&self, pat_num: u64) -> Vec<OdDocument> {
        self.server.lock().documents.values().filter(|d| d.pat_num == pat_num).cloned().collect()
    }

    pub fn document(&self, doc_num: u64) -> Option<OdDocument> {
        self.server.lock().documents.get(&doc_num).cloned()
    }

    /// The stored file of a document, byte for byte.
    pub fn document_bytes(&self, doc_num: u64) -> Option<Vec<u8>> {
        self.server.lock().documents.get(&doc_num).map(|d| d.bytes.clone())
    }

    // ------------------------------------------------------------- faults

    /// The next `times` requests get `fault` (after any queued before),
    /// before the auth check.
    pub fn fault_next(&self, times: u32, fault: OdFault) {
        if times > 0 {
            self.server.lock().faults.push_back((fault, times));
        }
    }

    /// Requests still to be faulted.
    pub fn pending_faults(&self) -> u32 {
        self.server.lock().faults.iter().map(|f| f.1).sum()
    }

    /// Drops every queued fault and the delay.
    pub fn clear_faults(&self) {
        let mut s = self.server.lock();
        s.faults.clear();
        s.delay = Duration::ZERO;
    }

    /// Holds every request this long before answering; `Duration::ZERO`
    /// to stop.
    pub fn set_delay(&self, delay: Duration) {
        self.server.lock().delay = delay;
    }

    // ----------------------------------------------------------- counters

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<OdRequest> {
        self.server.lock().log.clone()
    }

    /// Requests to one route (see [`OdRequest::route`]).
    pub fn request_count(&self, route: &str) -> u64 {
        self.server.lock().routes.get(route).copied().unwrap_or(0)
    }

    /// Requests per route.
    pub fn route_counts(&self) -> BTreeMap<String, u64> {
        self.server.lock().routes.clone()
    }

    /// Clears the log and the counters.
    pub fn reset_counts(&self) {
        let mut s = self.server.lock();
        s.log.clear();
        s.routes.clear();
    }
}

// ------------------------------------------------------------ responses

/// An error: a status and the explanation, answered as a JSON string.
#[derive(Debug)]
struct Refusal(StatusCode, String);

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, msg.into())
}

fn missing(msg: &str) -> Refusal {
    Refusal(StatusCode::NOT_FOUND, msg.into())
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        json_response(self.0, &Value::String(self.1))
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response()
}

type Answer = Result<Response, Refusal>;

// ----------------------------------------------------------- middleware

fn route_key(method: &Method, path: &str) -> String {
    let rest = path.strip_prefix(BASE_PATH).unwrap_or(path);
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let route = match parts.as_slice() {
        ["patients"] => "/patients".to_owned(),
        ["patients", _] => "/patients/{PatNum}".to_owned(),
        ["documents"] => "/documents".to_owned(),
        ["documents", "Upload"] => "/documents/Upload".to_owned(),
        ["documents", _] => "/documents/{DocNum}".to_owned(),
        _ => path.to_owned(),
    };
    format!("{method} {route}")
}

async fn gate(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let route = route_key(&method, &path);
    let body_len = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    let (delay, fault) = {
        let mut inner = s.lock();
        *inner.routes.entry(route.clone()).or_default() += 1;
        let fault = inner.faults.front_mut().map(|f| {
            f.1 -= 1;
            f.0
        });
        if inner.faults.front().is_some_and(|f| f.1 == 0) {
            inner.faults.pop_front();
        }
        (inner.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match fault {
        Some(f) => fault_response(f),
        None => match refuse(&s, req.headers()) {
            Some(r) => r.into_response(),
            None => next.run(req).await,
        },
    };
    let status = response.status().as_u16();
    s.lock().log.push(OdRequest { method: method.to_string(), route, path, query, status, body_len });
    response
}

fn fault_response(fault: OdFault) -> Response {
    match fault {
        OdFault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Refusal(status, format!("injected fault: {status}")).into_response()
        }
        OdFault::RateLimited { retry_after_secs } => {
            let mut r =
                Refusal(StatusCode::TOO_MANY_REQUESTS, "injected fault: too many requests".into()).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            r
        }
    }
}

/// `401` without the right keys, `400` without a JSON content type.
fn refuse(s: &Server, headers: &HeaderMap) -> Option<Refusal> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let keys = auth.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("ODFHIR")).map(|(_, k)| k.trim());
    if keys != Some(s.auth.as_str()) {
        return Some(Refusal(
            StatusCode::UNAUTHORIZED,
            "Invalid credentials: Authorization must be ODFHIR {DeveloperKey}/{CustomerKey}".into(),
        ));
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !ct.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json") {
        return Some(bad("Content-Type must be application/json"));
    }
    None
}

async fn not_found(uri: axum::http::Uri) -> Response {
    Refusal(StatusCode::NOT_FOUND, format!("No API resource at {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    Refusal(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not supported on {}", uri.path())).into_response()
}

// ------------------------------------------------------------- requests

/// The query's parameters, names as given.
fn params(q: Option<String>) -> Result<Vec<(String, String)>, Refusal> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q.as_deref().unwrap_or(""))
        .map_err(|_| bad("The URL's query is malformed"))
}

fn only(params: &[(String, String)], allowed: &[&str]) -> Result<(), Refusal> {
    match params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(bad(format!("{k} is not a supported parameter here (test double)"))),
        None => Ok(()),
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `Offset` and `Limit` → the range of a list to answer.
fn page(s: &Server, params: &[(String, String)], len: usize) -> Result<std::ops::Range<usize>, Refusal> {
    let num = |name: &str| -> Result<Option<usize>, Refusal> {
        match param(params, name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| bad(format!("{name} is invalid"))),
        }
    };
    let offset = num("Offset")?.unwrap_or(0);
    let limit = num("Limit")?.unwrap_or(s.page_size).min(s.page_size);
    let start = offset.min(len);
    Ok(start..(start + limit).min(len))
}

fn parse_id(raw: &str, what: &str) -> Result<u64, Refusal> {
    raw.trim().parse::<u64>().map_err(|_| bad(format!("{what} is invalid")))
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && [0..4, 5..7, 8..10].iter().all(|r| s[r.clone()].bytes().all(|c| c.is_ascii_digit()))
        && (1..=12).contains(&s[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&s[8..10].parse::<u32>().unwrap_or(0))
}

fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 19
        && is_date(&s[..10])
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && [11..13, 14..16, 17..19].iter().all(|r| s[r.clone()].bytes().all(|c| c.is_ascii_digit()))
        && s[11..13].parse::<u32>().unwrap_or(99) < 24
        && s[14..16].parse::<u32>().unwrap_or(99) < 60
        && s[17..19].parse::<u32>().unwrap_or(99) < 60
}

// ------------------------------------------------------------- patients

fn patient_single(p: &OdPatient) -> Value {
    let mut v = json!({
        "PatNum": p.pat_num, "LName": p.lname, "FName": p.fname, "MiddleI": "", "Preferred": "",
        "PatStatus": p.status, "Gender": p.gender, "Position": "Single", "Birthdate": p.birthdate,
        "SSN": "", "Address": "", "Address2": "", "City": "", "State": "", "Zip": "",
        "HmPhone": "", "WkPhone": "", "WirelessPhone": "", "Guarantor": p.pat_num, "Email": "",
        "EstBalance": 0.0, "PriProv": 1, "priProvAbbr": "DOC1", "SecProv": 0, "secProvAbbr": "",
    });
    let more = json!({
        "FeeSched": 0, "BillingType": "Standard Account",
        "ImageFolder": format!("{}{}{}", p.lname, p.fname, p.pat_num),
        "FamFinUrgNote": "", "ChartNumber": "", "MedicaidID": "", "BalTotal": 0.0, "EmployerNum": 0,
        "DateFirstVisit": "0001-01-01", "ClinicNum": 0, "clinicAbbr": "", "Premed": "false", "Ward": "",
        "PreferConfirmMethod": "None", "PreferContactMethod": "None", "PreferRecallMethod": "None",
        "Language": "", "AdmitDate": "0001-01-01", "siteDesc": "", "DateTStamp": now_stamp(),
        "SuperFamily": 0, "TxtMsgOk": "Unknown", "SecDateEntry": "2021-01-04",
    });
    if let (Some(a), Value::Object(b)) = (v.as_object_mut(), more) {
        a.extend(b);
    }
    v
}

fn patient_row(p: &OdPatient) -> Value {
    json!({
        "PatNum": p.pat_num, "LName": p.lname, "FName": p.fname, "MiddleI": "", "Preferred": "",
        "PatStatus": p.status, "Birthdate": p.birthdate, "SSN": "", "Address": "", "Address2": "",
        "City": "", "State": "", "Zip": "", "HmPhone": "", "WkPhone": "", "WirelessPhone": "",
        "Email": "", "priProvAbbr": "DOC1", "secProvAbbr": "", "BillingType": "Standard Account",
        "ChartNumber": "", "ClinicNum": 0, "clinicAbbr": "", "siteDesc": "", "TxtMsgOk": "Unknown",
    })
}

async fn get_patient(State(s): State<Shared>, Path(pat): Path<String>) -> Answer {
    let n = parse_id(&pat, "PatNum")?;
    let inner = s.lock();
    let p = inner.patients.get(&n).ok_or_else(|| missing("Patient not found"))?;
    Ok(json_response(StatusCode::OK, &patient_single(p)))
}

/// The documented parameters of Patients GET (multiple) the double does
/// not implement.
const UNIMPLEMENTED_PATIENT_PARAMS: [&str; 15] = [
    "Phone",
    "Address",
    "City",
    "State",
    "SSN",
    "ChartNumber",
    "guarOnly",
    "SiteNum",
    "SubscriberId",
    "Email",
    "Country",
    "clinicNums",
    "clinicAbbr",
    "invoiceNumber",
    "DateTStamp",
];

async fn list_patients(State(s): State<Shared>, RawQuery(q): RawQuery) -> Answer {
    let params = params(q)?;
    if let Some((k, _)) = params.iter().find(|(k, _)| UNIMPLEMENTED_PATIENT_PARAMS.contains(&k.as_str())) {
        return Err(bad(format!("{k} is not implemented by the test double")));
    }
    only(&params, &["LName", "FName", "Birthdate", "hideInactive", "showArchived", "Offset", "Limit"])?;
    let flag = |name: &str| -> Result<bool, Refusal> {
        match param(&params, name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(bad(format!("{name} must be true or false"))),
        }
    };
    let (hide_inactive, show_archived) = (flag("hideInactive")?, flag("showArchived")?);
    let lname = param(&params, "LName").unwrap_or("").trim().to_lowercase();
    let fname = param(&params, "FName").unwrap_or("").trim().to_lowercase();
    let birthdate = param(&params, "Birthdate").map(str::trim).filter(|b| !b.is_empty());
    if birthdate.is_some_and(|b| !is_date(b)) {
        return Err(bad("Birthdate is invalid; use yyyy-MM-dd"));
    }
    let inner = s.lock();
    let mut found: Vec<&OdPatient> = inner
        .patients
        .values()
        .filter(|p| p.lname.to_lowercase().starts_with(&lname) && p.fname.to_lowercase().starts_with(&fname))
        .filter(|p| birthdate.is_none_or(|b| p.birthdate == b))
        .filter(|p| !(hide_inactive && p.status == "Inactive") && (show_archived || p.status != "Archived"))
        .collect();
    found.sort_by_key(|p| (p.lname.to_lowercase(), p.fname.to_lowercase(), p.pat_num));
    let range = page(&s, &params, found.len())?;
    let rows: Vec<Value> = found[range].iter().map(|p| patient_row(p)).collect();
    Ok(json_response(StatusCode::OK, &Value::Array(rows)))
}

// ------------------------------------------------------------ documents

fn category_name(inner: &Inner, def_num: u64) -> String {
    inner.categories.iter().find(|(n, _)| *n == def_num).map(|(_, s)| s.clone()).unwrap_or_default()
}

/// The documented single shape (GET /documents/{DocNum}, and the answers
/// of Upload and PUT).
fn document_single(inner: &Inner, d: &OdDocument) -> Value {
    json!({
        "DocNum": d.doc_num, "Description": d.description, "DateCreated": d.date_created,
        "DocCategory": d.doc_category, "docCategory": category_name(inner, d.doc_category),
        "PatNum": d.pat_num, "FileName": d.file_name, "ImgType": d.img_type,
        "ToothNumbers": d.tooth_numbers, "DateTStamp": d.date_t_stamp, "ProvNum": d.prov_num,
        "PrintHeading": d.print_heading.to_string(),
    })
}

/// The documented list shape (GET /documents?PatNum=).
fn document_row(inner: &Inner, d: &OdDocument, server_time: &str) -> Value {
    let (file_path, note) = if d.opened {
        let folder = inner.patients.get(&d.pat_num).map(|p| format!("{}{}{}", p.lname, p.fname, p.pat_num));
        let folder = folder.unwrap_or_default();
        let letter = folder.chars().next().map(|c| c.to_ascii_uppercase().to_string()).unwrap_or_default();
        (format!("\\\\server\\OpenDentImages\\{letter}\\{folder}\\{}", d.file_name), String::new())
    } else {
        (String::new(), format!("_rawBase64_:{}_{}", d.extension, STANDARD.encode(&d.bytes)))
    };
    json!({
        "DocNum": d.doc_num, "MountNum": 0, "filePath": file_path, "Description": d.description,
        "PatNum": d.pat_num.to_string(), "Note": note, "DateCreated": d.date_created,
        "docCategory": category_name(inner, d.doc_category), "DocCategory": d.doc_category,
        "ToothNumbers": d.tooth_numbers, "ProvNum": d.prov_num.to_string(),
        "PrintHeading": d.print_heading.to_string(), "DateTStamp": d.date_t_stamp,
        "serverDateTime": server_time,
    })
}

async fn list_documents(State(s): State<Shared>, RawQuery(q): RawQuery) -> Answer {
    let params = params(q)?;
    only(&params, &["PatNum", "Offset", "Limit"])?;
    let pat = param(&params, "PatNum").filter(|v| !v.trim().is_empty()).ok_or_else(|| bad("PatNum is required"))?;
    let pat = parse_id(pat, "PatNum")?;
    let inner = s.lock();
    if !inner.patients.contains_key(&pat) {
        return Err(missing("Patient not found"));
    }
    let mut docs: Vec<&OdDocument> = inner.documents.values().filter(|d| d.pat_num == pat).collect();
    docs.sort_by(|a, b| (&a.date_created, a.doc_num).cmp(&(&b.date_created, b.doc_num)));
    let range = page(&s, &params, docs.len())?;
    let now = now_stamp();
    let rows: Vec<Value> = docs[range].iter().map(|d| document_row(&inner, d, &now)).collect();
    Ok(json_response(StatusCode::OK, &Value::Array(rows)))
}

async fn get_document(State(s): State<Shared>, Path(doc): Path<String>) -> Answer {
    let n = parse_id(&doc, "DocNum")?;
    let inner = s.lock();
    let d = inner.documents.get(&n).ok_or_else(|| missing("Document not found"))?;
    Ok(json_response(StatusCode::OK, &document_single(&inner, d)))
}

async fn delete_document(State(s): State<Shared>, Path(doc): Path<String>) -> Answer {
    let n = parse_id(&doc, "DocNum")?;
    let mut inner = s.lock();
    inner.documents.remove(&n).ok_or_else(|| missing("Document not found"))?;
    Ok(StatusCode::OK.into_response())
}

fn json_body(body: &Bytes) -> Result<Map<String, Value>, Refusal> {
    if body.len() > MAX_BODY {
        return Err(Refusal(StatusCode::PAYLOAD_TOO_LARGE, format!("The body exceeds {MAX_BODY} characters")));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad("The body is not a JSON object")),
    }
}

/// A number, or a number in a string.
fn number(m: &Map<String, Value>, k: &str) -> Result<Option<u64>, Refusal> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad(format!("{k} is invalid"))),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(format!("{k} is invalid"))),
        Some(_) => Err(bad(format!("{k} is invalid"))),
    }
}

fn string<'a>(m: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, Refusal> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{k} must be a string"))),
    }
}

/// `1-5,8` → `1,2,3,4,5,8`; letters (primary teeth) kept.
fn expand_teeth(raw: &str) -> Result<String, Refusal> {
    let err = || bad("ToothNumbers is invalid");
    let mut out: Vec<String> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().map_err(|_| err())?, b.trim().parse().map_err(|_| err())?);
                if a == 0 || b > 32 || a > b {
                    return Err(err());
                }
                out.extend((a..=b).map(|n| n.to_string()));
            }
            None if part.parse::<u32>().is_ok_and(|n| (1..=32).contains(&n)) => out.push(part.to_owned()),
            None if part.len() == 1 && ('A'..='T').contains(&part.chars().next().unwrap_or(' ')) => {
                out.push(part.to_owned())
            }
            None => return Err(err()),
        }
    }
    Ok(out.join(","))
}

/// The Image Info fields of an upload or PUT, applied to `d`.
fn apply_info(inner: &Inner, m: &Map<String, Value>, d: &mut OdDocument) -> Result<(), Refusal> {
    if let Some(v) = string(m, "Description")? {
        d.description = v.to_owned();
    }
    if let Some(v) = string(m, "DateCreated")? {
        if !is_date_time(v) {
            return Err(bad("DateCreated is invalid; use yyyy-MM-dd HH:mm:ss"));
        }
        d.date_created = v.to_owned();
    }
    if let Some(n) = number(m, "DocCategory")? {
        if !inner.categories.iter().any(|(c, _)| *c == n) {
            return Err(bad("DocCategory is invalid"));
        }
        d.doc_category = n;
    }
    if let Some(v) = string(m, "ImgType")? {
        if !IMG_TYPES.contains(&v) {
            return Err(bad("ImgType is invalid; use Document, Radiograph, Photo, File or Attachment"));
        }
        d.img_type = v.to_owned();
    }
    if let Some(v) = string(m, "ToothNumbers")? {
        d.tooth_numbers = expand_teeth(v)?;
    }
    if let Some(n) = number(m, "ProvNum")? {
        d.prov_num = n;
    }
    match m.get("PrintHeading") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "true" || s == "false" => d.print_heading = s == "true",
        Some(Value::Bool(b)) => d.print_heading = *b,
        Some(_) => return Err(bad("PrintHeading must be \"true\" or \"false\"")),
    }
    Ok(())
}

const INFO_FIELDS: [&str; 7] =
    ["Description", "DateCreated", "DocCategory", "ImgType", "ToothNumbers", "ProvNum", "PrintHeading"];

fn check_fields(m: &Map<String, Value>, extra: &[&str]) -> Result<(), Refusal> {
    match m.keys().find(|k| !INFO_FIELDS.contains(&k.as_str()) && !extra.contains(&k.as_str())) {
        Some(k) => Err(bad(format!("{k} is not a field of this method (test double)"))),
        None => Ok(()),
    }
}

async fn upload(State(s): State<Shared>, body: Bytes) -> Answer {
    let m = json_body(&body)?;
    check_fields(&m, &["PatNum", "rawBase64", "extension"])?;
    let pat = number(&m, "PatNum")?.ok_or_else(|| bad("PatNum is required"))?;
    let raw = string(&m, "rawBase64")?.filter(|v| !v.is_empty()).ok_or_else(|| bad("rawBase64 is required"))?;
    let ext = string(&m, "extension")?.map(str::trim).filter(|v| !v.is_empty());
    let ext = ext.ok_or_else(|| bad("extension is required"))?;
    let ext = if ext.starts_with('.') { ext.to_owned() } else { format!(".{ext}") };
    if !(2..=11).contains(&ext.len()) || !ext[1..].bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad("extension is invalid"));
    }
    let bytes = STANDARD.decode(raw.as_bytes()).map_err(|_| bad("rawBase64 is not valid base64"))?;
    let mut inner = s.lock();
    if !inner.patients.contains_key(&pat) {
        return Err(missing("Patient not found"));
    }
    let now = now_stamp();
    let mut d = OdDocument {
        doc_num: 0,
        pat_num: pat,
        description: String::new(),
        date_created: now.clone(),
        doc_category: inner.categories.first().map_or(0, |c| c.0),
        img_type: "Document".into(),
        tooth_numbers: String::new(),
        prov_num: 0,
        print_heading: false,
        extension: ext,
        bytes,
        opened: false,
        file_name: String::new(),
        date_t_stamp: now,
    };
    apply_info(&inner, &m, &mut d)?;
    d.doc_num = inner.next_doc;
    inner.next_doc += 1;
    let answer = document_single(&inner, &d);
    let location = format!("{}/documents/{}", s.base, d.doc_num);
    inner.documents.insert(d.doc_num, d);
    let mut r = json_response(StatusCode::CREATED, &answer);
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("ASCII location"));
    Ok(r)
}

async fn put_document(State(s): State<Shared>, Path(doc): Path<String>, body: Bytes) -> Answer {
    let n = parse_id(&doc, "DocNum")?;
    let m = json_body(&body)?;
    check_fields(&m, &[])?;
    let mut inner = s.lock();
    let mut d = inner.documents.get(&n).cloned().ok_or_else(|| missing("Document not found"))?;
    apply_info(&inner, &m, &mut d)?;
    d.date_t_stamp = now_stamp();
    let answer = document_single(&inner, &d);
    inner.documents.insert(n, d);
    Ok(json_response(StatusCode::OK, &answer))
}

// ----------------------------------------------------------------- time

/// Now, UTC, `yyyy-MM-dd HH:mm:ss`.
fn now_stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = (if z >= 0 { z } else { z - 146_096 }) / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
