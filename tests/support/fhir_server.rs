//! A FHIR R4 server on 127.0.0.1 with a random port, for the tests of
//! ferry's FHIR sink: healthcare documents go to a FHIR system as a
//! `DocumentReference` (the metadata, pointing at its patient) plus a
//! `Binary` (the bytes), and the sink has to be idempotent, page through
//! searches, sync incrementally and survive expired tokens and outages.
//!
//! A canned-response stub would only test that ferry sends what its authors
//! believed a server wants, so this is a small but real server: an
//! in-memory, versioned store that a FHIR client (or `curl`) can talk to,
//! answering the way the spec says for the interactions below. JSON only
//! (`application/fhir+json`; `application/json` is accepted too).
//!
//! FHIR interactions (paths under [`FhirServer::base_url`]; `{type}` is
//! `Patient`, `DocumentReference`, `Binary` or `Task` — a provider asked
//! for documents):
//!
//! - `POST /{type}` create: the server assigns `id`, `meta.versionId` and
//!   `meta.lastUpdated` (an `id` in the body is ignored) and answers `201`
//!   with `Location: <base>/{type}/{id}/_history/{vid}`, `ETag: W/"vid"` and
//!   `Last-Modified`. Conditional create with `If-None-Exist: <search>`
//!   (e.g. `identifier=system|value`): no match → `201`, exactly one → `200`
//!   with the existing resource (nothing stored), several → `412`.
//! - `GET /{type}/{id}` read, `GET /{type}/{id}/_history/{vid}` vread.
//! - `PUT /{type}/{id}` update: the body's `id` must equal the path's; the
//!   version increments; `If-Match: W/"vid"` (or `"vid"`, or `*`) is
//!   checked when present (`412` on mismatch or if there is no resource);
//!   an update of an unknown id creates it (`201`, client-assigned id).
//! - `GET /{type}?…` search → a `searchset` Bundle with `total` (all
//!   matches), `link` `self` and, while more remain, `next`, and entries
//!   with `fullUrl`, `resource` and `search.mode = match`. Parameters:
//!   `_id`, `_lastUpdated` (prefixes `eq ne gt ge lt le sa eb`, repeatable,
//!   the value's precision gives its range: `gt2024-01-01` means from
//!   `2024-01-02T00:00Z` on), `identifier` (`system|value`, `value`,
//!   `|value` for no system, `system|`; `DocumentReference` also matches
//!   `masterIdentifier`), on `DocumentReference` `patient` (`Patient/x`, `x`
//!   or absolute) and `subject`; comma-separated values are ORed.
//!   `_sort=_lastUpdated` (or `-_lastUpdated`), and `_count=N` (default 20,
//!   at most 1000; `0` gives only `total`). Results are always ordered by
//!   (`lastUpdated`, `id`), and the `next` link carries a keyset cursor
//!   (`_cursor=<lastUpdated>_<id>` of the last entry), not an offset: a
//!   resource updated while a client pages moves behind the cursor and is
//!   seen again rather than making the client skip another one.
//! - `Binary`: `POST`/`PUT` with `Content-Type: application/fhir+json` take a
//!   Binary resource (`contentType`, `data` in base64); any other content
//!   type stores the body's raw bytes with that type. `GET` with
//!   `Accept: application/fhir+json` returns the resource JSON, otherwise
//!   the raw bytes with the stored content type. Bodies have no size limit
//!   (axum's default 2 MB limit is off), so tens of MB work.
//! - `GET /metadata`: a CapabilityStatement (FHIR 4.0.1, the interactions
//!   and search parameters above, the token endpoint in `rest.security` via
//!   the SMART `oauth-uris` extension), and
//!   `GET /.well-known/smart-configuration`. Both are public.
//!
//! Auth ([`FhirServerBuilder`]): none, a fixed static bearer token, or
//! OAuth2 client credentials at `POST /auth/token` (on the origin, not
//! under the FHIR base; form-encoded `grant_type=client_credentials`, the
//! client authenticated by exactly one of HTTP Basic, `client_id` +
//! `client_secret` form fields, or a SMART backend-services
//! `client_assertion` JWT). **The JWT's signature is not verified**: the
//! server checks that it has three base64url parts, decodes header and
//! claims and requires `iss` = `sub` = a registered JWT client, `aud` = the
//! token URL, a future `exp` and a `jti`; tests can read the decoded
//! assertions ([`FhirServer::client_assertions`]) and check the rest.
//! Tokens expire after a configurable lifetime. With auth on, every route
//! but the two public ones needs `Authorization: Bearer <valid token>` and
//! answers `401` with `WWW-Authenticate: Bearer …` and an OperationOutcome
//! otherwise.
//!
//! Errors are OperationOutcomes (`issue[0]` with `severity`, `code`,
//! `diagnostics`): `404` unknown type or id, `400` malformed JSON, a
//! `resourceType` not matching the path, a missing required element
//! (`DocumentReference.status`/`content`, `Binary.contentType`), invalid
//! base64, an unknown search parameter (the server is strict, so a
//! misspelt parameter fails a test instead of silently matching
//! everything) or a `DocumentReference.subject` `Patient/x` that does not
//! exist (referential integrity, as HAPI does by default); `415` for a
//! non-JSON body (except Binary), `405` for other methods.
//!
//! Simplified: no XML, no `_include`, `_elements`, `_summary`, chained or
//! modified parameters (`identifier:of-type`, …), no delete, history
//! listing, transactions or conditional update; no profile validation
//! beyond the elements named above; dates without a time (and times
//! without an offset) in searches are UTC; token search is case-sensitive.
//! Every write by the server gets a distinct `lastUpdated` (at least 1 ms
//! after the previous one) with millisecond precision; resources seeded
//! with [`FhirServer::add_resource`] keep the `meta.lastUpdated` they bring,
//! so ties (broken by `id`) can be tested.
//!
//! Faults ([`FhirFault`], queued with [`FhirServer::fault_next`] for the
//! FHIR routes and [`FhirServer::fault_token_next`] for the token endpoint)
//! answer the next requests before the auth check, in the order queued; a
//! delay ([`FhirServer::set_delay`]) holds every request. Every request is
//! counted per route and logged with its final status, faulted or not.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::runtime::ServerRuntime;

/// The FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";
/// Path of the OAuth2 token endpoint (on the origin, not under the FHIR base).
pub const TOKEN_PATH: &str = "/auth/token";
/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The resource types the server stores.
pub const RESOURCE_TYPES: [&str; 4] = ["Patient", "DocumentReference", "Binary", "Task"];
/// The largest `_count` honoured (larger ones are cut to it).
pub const MAX_PAGE_SIZE: usize = 1000;
/// The extension carrying the OAuth endpoints in a CapabilityStatement.
pub const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

const REALM: &str = "ferry-test-fhir";
const FHIR_JSON_UTF8: &str = "application/fhir+json; charset=utf-8";

/// What the server answers instead of the real answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirFault {
    /// This status with an OperationOutcome (on the token endpoint an OAuth
    /// error JSON); `401` also sends `WWW-Authenticate: Bearer
    /// error="invalid_token"`, as for a revoked token.
    Status(u16),
    /// `429 Too Many Requests` with `Retry-After: retry_after_secs`.
    RateLimited { retry_after_secs: u64 },
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The route's key, as [`FhirServer::request_count`] takes it:
    /// `"GET /DocumentReference/{id}"`, `"POST /auth/token"`, `"GET /metadata"`.
    pub route: String,
    /// The path as requested (with the base path), without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The status answered (faults included).
    pub status: u16,
}

#[derive(Debug, Clone)]
enum AuthMode {
    None,
    Static(String),
    OAuth { secrets: BTreeMap<String, String>, jwt_clients: Vec<String> },
}

/// How to start a [`FhirServer`]: auth mode, token lifetime, base path,
/// page size. [`FhirServer::builder`] starts with no auth.
#[derive(Debug, Clone)]
pub struct FhirServerBuilder {
    auth: AuthMode,
    lifetime: Duration,
    base_path: String,
    page_size: usize,
}

impl FhirServerBuilder {
    /// No auth at all (the default).
    pub fn no_auth(mut self) -> Self {
        self.auth = AuthMode::None;
        self
    }

    /// Every FHIR request needs `Authorization: Bearer <token>`; the token
    /// never expires and there is no token endpoint.
    pub fn static_token(mut self, token: &str) -> Self {
        self.auth = AuthMode::Static(token.to_owned());
        self
    }

    /// OAuth2: registers a client that authenticates with a secret (HTTP
    /// Basic or form fields). Can be called several times, and combined
    /// with [`Self::jwt_client`].
    pub fn client_secret(mut self, client_id: &str, secret: &str) -> Self {
        self.oauth().0.insert(client_id.to_owned(), secret.to_owned());
        self
    }

    /// OAuth2: registers a client that authenticates with a JWT client
    /// assertion (SMART backend services; the signature is not verified).
    pub fn jwt_client(mut self, client_id: &str) -> Self {
        self.oauth().1.push(client_id.to_owned());
        self
    }

    fn oauth(&mut self) -> (&mut BTreeMap<String, String>, &mut Vec<String>) {
        if !matches!(self.auth, AuthMode::OAuth { .. }) {
            self.auth = AuthMode::OAuth { secrets: BTreeMap::new(), jwt_clients: Vec::new() };
        }
        match &mut self.auth {
            AuthMode::OAuth { secrets, jwt_clients } => (secrets, jwt_clients),
            _ => unreachable!("set just above"),
        }
    }

    /// How long issued tokens are valid (default one hour; `expires_in`
    /// reports it rounded up to whole seconds).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Serves FHIR under this path (e.g. `/fhir/r4`) instead of the root,
    /// as most real servers do, so that a client's URL joining is tested.
    pub fn base_path(mut self, path: &str) -> Self {
        let trimmed = path.trim_matches('/');
        self.base_path = if trimmed.is_empty() { String::new() } else { format!("/{trimmed}") };
        self
    }

    /// The page size of a search without `_count` (default 20).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// Starts the server. Works from sync and async tests alike (the
    /// server has its own runtime).
    pub fn start(self) -> FhirServer {
        let rt = ServerRuntime::new("fhir");
        let (listener, addr) = rt.bind();
        let origin = format!("http://{addr}");
        let server = Arc::new(Server {
            base: format!("{origin}{}", self.base_path),
            token_url: format!("{origin}{TOKEN_PATH}"),
            base_path: self.base_path.clone(),
            page_size: self.page_size,
            started: now_ns(),
            token_salt: splitmix(now_ns() as u64 ^ u64::from(addr.port())),
            inner: Mutex::new(Inner {
                auth: self.auth,
                lifetime: self.lifetime,
                store: BTreeMap::new(),
                seq: 0,
                last_stamp_ms: 0,
                tokens: HashMap::new(),
                tokens_issued: 0,
                assertions: Vec::new(),
                faults: VecDeque::new(),
                delay: Duration::ZERO,
                log: Vec::new(),
                routes: BTreeMap::new(),
            }),
        });
        let b = &self.base_path;
        let app = Router::new()
            .route(&format!("{b}/metadata"), get(metadata))
            .route(&format!("{b}/.well-known/smart-configuration"), get(smart_configuration))
            .route(&format!("{b}/{{type}}"), get(search).post(create))
            .route(&format!("{b}/{{type}}/{{id}}"), get(read).put(update))
            .route(&format!("{b}/{{type}}/{{id}}/_history/{{vid}}"), get(vread))
            .route(TOKEN_PATH, post(token))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(server.clone(), gate))
            .layer(DefaultBodyLimit::disable())
            .with_state(server.clone());
        rt.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("FHIR test server stopped: {e}");
            }
        });
        FhirServer { addr, server, _rt: rt }
    }
}

/// One stored version of a resource. For a `Binary`, `resource` has no
/// `data`: the bytes are in `data`.
#[derive(Debug, Clone)]
struct Version {
    resource: Value,
    data: Option<Bytes>,
    /// `meta.lastUpdated` in ns since the epoch.
    stamp: i128,
}

impl Version {
    fn id(&self) -> &str {
        self.resource["id"].as_str().unwrap_or_default()
    }

    fn vid(&self) -> &str {
        self.resource["meta"]["versionId"].as_str().unwrap_or_default()
    }

    /// The resource as JSON (a Binary with its `data`).
    fn json(&self) -> Value {
        let mut v = self.resource.clone();
        if let (Some(data), Some(obj)) = (&self.data, v.as_object_mut()) {
            obj.insert("data".into(), Value::String(STANDARD.encode(data)));
        }
        v
    }
}

#[derive(Debug)]
struct PendingFault {
    token_route: bool,
    fault: FhirFault,
    left: u32,
}

#[derive(Debug)]
struct Inner {
    auth: AuthMode,
    lifetime: Duration,
    /// (type, id) → versions, oldest first.
    store: BTreeMap<(String, String), Vec<Version>>,
    seq: u64,
    last_stamp_ms: i64,
    tokens: HashMap<String, Instant>,
    tokens_issued: u64,
    assertions: Vec<Value>,
    faults: VecDeque<PendingFault>,
    delay: Duration,
    log: Vec<LoggedRequest>,
    routes: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Server {
    /// `http://127.0.0.1:port` + base path.
    base: String,
    token_url: String,
    base_path: String,
    page_size: usize,
    started: i128,
    token_salt: u64,
    inner: Mutex<Inner>,
}

type Shared = Arc<Server>;

impl Server {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The FHIR server. Stops when dropped.
pub struct FhirServer {
    addr: SocketAddr,
    server: Shared,
    // Last: the runtime goes after everything that might use it.
    _rt: ServerRuntime,
}

impl FhirServer {
    /// Starts a server without auth, FHIR at the root.
    pub fn start() -> FhirServer {
        FhirServer::builder().start()
    }

    /// A builder for auth, token lifetime, base path and page size.
    pub fn builder() -> FhirServerBuilder {
        FhirServerBuilder {
            auth: AuthMode::None,
            lifetime: Duration::from_secs(3600),
            base_path: String::new(),
            page_size: 20,
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

    /// The FHIR base: `http://127.0.0.1:port` plus the base path, no
    /// trailing slash.
    pub fn base_url(&self) -> String {
        self.server.base.clone()
    }

    /// `<base>/{type}`.
    pub fn url(&self, type_: &str) -> String {
        format!("{}/{type_}", self.server.base)
    }

    /// `http://127.0.0.1:port/auth/token`.
    pub fn token_url(&self) -> String {
        self.server.token_url.clone()
    }

    /// The static bearer token, if the server was started with one.
    pub fn static_token(&self) -> Option<String> {
        match &self.server.lock().auth {
            AuthMode::Static(t) => Some(t.clone()),
            _ => None,
        }
    }

    // ------------------------------------------------------------ seeding

    /// Stores a Patient with these `(system, value)` identifiers (an empty
    /// system is left out) and returns its id.
    pub fn add_patient(&self, identifiers: &[(&str, &str)]) -> String {
        let identifier: Vec<Value> = identifiers
            .iter()
            .map(|(s, v)| if s.is_empty() { json!({ "value": v }) } else { json!({ "system": s, "value": v }) })
            .collect();
        self.add_resource(json!({ "resourceType": "Patient", "identifier": identifier }))
    }

    /// Stores a resource directly (no auth, faults, counting or reference
    /// check) and returns its id: the `id` it brings or a new one, and the
    /// `meta.lastUpdated` it brings (any FHIR instant, kept as written) or
    /// the server's clock. An existing id gets a new version. Panics if the
    /// resource is not one the server would accept.
    pub fn add_resource(&self, mut resource: Value) -> String {
        let type_ = resource["resourceType"].as_str().unwrap_or_default().to_owned();
        if !RESOURCE_TYPES.contains(&type_.as_str()) {
            panic!("add_resource: unsupported resourceType in {resource}");
        }
        let stamp = resource["meta"]["lastUpdated"].as_str().map(|s| {
            let stamp = parse_instant(s).unwrap_or_else(|| panic!("add_resource: bad meta.lastUpdated {s:?}"));
            (stamp, s.to_owned())
        });
        if let Err(p) = check_id(&resource).and_then(|_| validate(&type_, &resource)) {
            panic!("add_resource: {}: {resource}", p.diagnostics);
        }
        let data = match take_binary_data(&type_, &mut resource) {
            Ok(d) => d,
            Err(p) => panic!("add_resource: {}", p.diagnostics),
        };
        let mut s = self.server.lock();
        let id = match resource["id"].as_str() {
            Some(id) => id.to_owned(),
            None => s.new_id(&type_),
        };
        s.put(&type_, &id, resource, data, stamp).id().to_owned()
    }

    /// Stores a Binary of raw bytes and returns its id.
    pub fn add_binary(&self, content_type: &str, bytes: impl Into<Vec<u8>>) -> String {
        let mut s = self.server.lock();
        let id = s.new_id("Binary");
        let resource = json!({ "resourceType": "Binary", "contentType": content_type });
        s.put("Binary", &id, resource, Some(Bytes::from(bytes.into())), None).id().to_owned()
    }

    // --------------------------------------------------------- inspecting

    /// The current version of every stored resource of `type_`, ordered by
    /// (`meta.lastUpdated`, `id`) as searches are.
    pub fn resources(&self, type_: &str) -> Vec<Value> {
        let s = self.server.lock();
        s.current(type_).into_iter().map(Version::json).collect()
    }

    /// The current version of one resource.
    pub fn resource(&self, type_: &str, id: &str) -> Option<Value> {
        self.server.lock().get(type_, id).map(Version::json)
    }

    /// Every version of one resource, oldest first.
    pub fn history(&self, type_: &str, id: &str) -> Vec<Value> {
        let s = self.server.lock();
        s.store
            .get(&(type_.to_owned(), id.to_owned()))
            .map(|vs| vs.iter().map(Version::json).collect())
            .unwrap_or_default()
    }

    /// How many resources of `type_` are stored (not counting versions).
    pub fn count(&self, type_: &str) -> usize {
        self.server.lock().current(type_).len()
    }

    /// A Binary's content type and bytes.
    pub fn binary(&self, id: &str) -> Option<(String, Vec<u8>)> {
        let s = self.server.lock();
        let v = s.get("Binary", id)?;
        let ct = v.resource["contentType"].as_str().unwrap_or_default().to_owned();
        Some((ct, v.data.as_deref().unwrap_or_default().to_vec()))
    }

    // --------------------------------------------------------------- auth

    /// Issues a valid OAuth token without the token endpoint (counted in
    /// [`Self::tokens_issued`]); in static mode returns the static token.
    pub fn issue_token(&self) -> String {
        let mut s = self.server.lock();
        if let AuthMode::Static(t) = &s.auth {
            return t.clone();
        }
        s.issue_token(self.server.token_salt)
    }

    /// Makes every token issued so far expired.
    pub fn expire_tokens(&self) {
        let mut s = self.server.lock();
        let now = Instant::now();
        for exp in s.tokens.values_mut() {
            *exp = now;
        }
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.server.lock().lifetime = lifetime;
    }

    /// Tokens issued so far (token endpoint and [`Self::issue_token`]).
    pub fn tokens_issued(&self) -> u64 {
        self.server.lock().tokens_issued
    }

    /// The accepted JWT client assertions, decoded:
    /// `{"header": {...}, "claims": {...}, "signature": "<base64url>"}`.
    pub fn client_assertions(&self) -> Vec<Value> {
        self.server.lock().assertions.clone()
    }

    // ------------------------------------------------------------- faults

    /// The next `times` requests to FHIR routes (everything but the token
    /// endpoint) get `fault`, after any faults queued before.
    pub fn fault_next(&self, times: u32, fault: FhirFault) {
        self.queue_fault(false, times, fault);
    }

    /// The next `times` requests to the token endpoint get `fault`.
    pub fn fault_token_next(&self, times: u32, fault: FhirFault) {
        self.queue_fault(true, times, fault);
    }

    fn queue_fault(&self, token_route: bool, times: u32, fault: FhirFault) {
        if times > 0 {
            self.server.lock().faults.push_back(PendingFault { token_route, fault, left: times });
        }
    }

    /// Requests still to be faulted (both queues).
    pub fn pending_faults(&self) -> u32 {
        self.server.lock().faults.iter().map(|f| f.left).sum()
    }

    /// Drops every queued fault and the delay.
    pub fn clear_faults(&self) {
        let mut s = self.server.lock();
        s.faults.clear();
        s.delay = Duration::ZERO;
    }

    /// Holds every request this long before answering (a slow server);
    /// `Duration::ZERO` to stop.
    pub fn set_delay(&self, delay: Duration) {
        self.server.lock().delay = delay;
    }

    // ----------------------------------------------------------- counters

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.server.lock().log.clone()
    }

    /// Requests to one route, e.g. `"POST /DocumentReference"`,
    /// `"GET /Binary/{id}"`, `"POST /auth/token"` (see [`LoggedRequest::route`]).
    pub fn request_count(&self, route: &str) -> u64 {
        self.server.lock().routes.get(route).copied().unwrap_or(0)
    }

    /// Requests per route.
    pub fn route_counts(&self) -> BTreeMap<String, u64> {
        self.server.lock().routes.clone()
    }

    /// Clears the log and the per-route counters (not `tokens_issued`).
    pub fn reset_counts(&self) {
        let mut s = self.server.lock();
        s.log.clear();
        s.routes.clear();
    }
}

/// A minimal valid DocumentReference for `Patient/{patient_id}` with one
/// identifier and a PDF attachment pointing at nothing, for seeding with
/// [`FhirServer::add_resource`] (add `id` or `meta.lastUpdated` as needed).
pub fn document_reference(patient_id: &str, system: &str, value: &str) -> Value {
    json!({
        "resourceType": "DocumentReference",
        "identifier": [{ "system": system, "value": value }],
        "status": "current",
        "subject": { "reference": format!("Patient/{patient_id}") },
        "content": [{ "attachment": { "contentType": "application/pdf", "title": value } }],
    })
}

impl Inner {
    /// A new server timestamp: now in ms, strictly after the previous one.
    fn stamp(&mut self) -> i128 {
        let ms = ((now_ns() / 1_000_000) as i64).max(self.last_stamp_ms + 1);
        self.last_stamp_ms = ms;
        i128::from(ms) * 1_000_000
    }

    /// A fresh opaque id (16 hex digits, not in creation order).
    fn new_id(&mut self, type_: &str) -> String {
        loop {
            self.seq += 1;
            let id = format!("{:016x}", splitmix(self.seq));
            if !self.store.contains_key(&(type_.to_owned(), id.clone())) {
                return id;
            }
        }
    }

    fn issue_token(&mut self, salt: u64) -> String {
        self.seq += 1;
        let token = format!("at-{:016x}{:016x}", splitmix(self.seq ^ salt), splitmix(salt.wrapping_add(self.seq)));
        self.tokens.insert(token.clone(), Instant::now() + self.lifetime);
        self.tokens_issued += 1;
        token
    }

    fn get(&self, type_: &str, id: &str) -> Option<&Version> {
        self.store.get(&(type_.to_owned(), id.to_owned())).and_then(|v| v.last())
    }

    /// Current versions of `type_`, ordered by (stamp, id).
    fn current(&self, type_: &str) -> Vec<&Version> {
        let mut all: Vec<&Version> =
            self.store.iter().filter(|((t, _), _)| t == type_).filter_map(|(_, vs)| vs.last()).collect();
        all.sort_by(|a, b| (a.stamp, a.id()).cmp(&(b.stamp, b.id())));
        all
    }

    /// Stores a new version of `type_/id` (setting `id`, `meta.versionId`,
    /// `meta.lastUpdated`: `stamp` if given, else the clock).
    fn put(
        &mut self,
        type_: &str,
        id: &str,
        mut resource: Value,
        data: Option<Bytes>,
        stamp: Option<(i128, String)>,
    ) -> &Version {
        let (stamp, last_updated) = stamp.unwrap_or_else(|| {
            let s = self.stamp();
            (s, format_instant(s))
        });
        let versions = self.store.entry((type_.to_owned(), id.to_owned())).or_default();
        let vid = (versions.len() + 1).to_string();
        let obj = resource.as_object_mut().expect("resources are objects");
        obj.insert("id".into(), Value::String(id.to_owned()));
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        meta["versionId"] = Value::String(vid);
        meta["lastUpdated"] = Value::String(last_updated);
        versions.push(Version { resource, data, stamp });
        versions.last().expect("just pushed")
    }
}

// ------------------------------------------------------------ responses

/// An error answered as an OperationOutcome.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    code: &'static str,
    diagnostics: String,
}

fn problem(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Problem {
    Problem { status, code, diagnostics: diagnostics.into() }
}

fn bad_request(diagnostics: impl Into<String>) -> Problem {
    problem(StatusCode::BAD_REQUEST, "invalid", diagnostics)
}

fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }],
    })
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        fhir_json(self.status, &operation_outcome("error", self.code, &self.diagnostics))
    }
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("JSON values serialise");
    (status, [(header::CONTENT_TYPE, FHIR_JSON_UTF8)], bytes).into_response()
}

fn plain_json(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn unauthorized(challenge: String, diagnostics: &str) -> Response {
    let mut r = problem(StatusCode::UNAUTHORIZED, "login", diagnostics).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).expect("ASCII challenge"));
    r
}

/// What `Prefer: return=…` asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Return {
    Representation,
    Minimal,
    OperationOutcome,
}

fn prefer(headers: &HeaderMap) -> Return {
    let prefs = headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    for p in prefs.split([',', ';']).map(str::trim) {
        match p {
            "return=minimal" => return Return::Minimal,
            "return=OperationOutcome" => return Return::OperationOutcome,
            "return=representation" => return Return::Representation,
            _ => {}
        }
    }
    Return::Representation
}

/// A resource answer with `ETag`, `Last-Modified` and, for a create,
/// `Location`.
fn resource_response(s: &Server, status: StatusCode, v: &Version, location: bool, ret: Return) -> Response {
    let type_ = v.resource["resourceType"].as_str().unwrap_or_default();
    let mut r = match ret {
        Return::Representation => fhir_json(status, &v.json()),
        Return::Minimal => status.into_response(),
        Return::OperationOutcome => {
            fhir_json(status, &operation_outcome("information", "informational", &format!("{type_}/{} stored", v.id())))
        }
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, header_value(&format!("W/\"{}\"", v.vid())));
    h.insert(header::LAST_MODIFIED, header_value(&http_date(v.stamp)));
    if location {
        h.insert(header::LOCATION, header_value(&format!("{}/{type_}/{}/_history/{}", s.base, v.id(), v.vid())));
    }
    r
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

// ----------------------------------------------------------- middleware

/// Which part of the server a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RouteClass {
    Token,
    Public,
    Fhir,
}

/// The route key of a request (`"GET /Patient/{id}"`) and its class.
fn classify(s: &Server, method: &Method, path: &str) -> (String, RouteClass) {
    if path == TOKEN_PATH {
        return (format!("{method} {TOKEN_PATH}"), RouteClass::Token);
    }
    let Some(rest) = path.strip_prefix(s.base_path.as_str()).filter(|r| r.is_empty() || r.starts_with('/')) else {
        return (format!("{method} {path}"), RouteClass::Fhir);
    };
    let segs: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let key = match segs.as_slice() {
        [] => "/".to_owned(),
        ["metadata"] => return (format!("{method} /metadata"), RouteClass::Public),
        [".well-known", "smart-configuration"] => {
            return (format!("{method} /.well-known/smart-configuration"), RouteClass::Public)
        }
        [t] => format!("/{t}"),
        [t, _] => format!("/{t}/{{id}}"),
        [t, _, "_history", _] => format!("/{t}/{{id}}/_history/{{vid}}"),
        _ => rest.to_owned(),
    };
    (format!("{method} {key}"), RouteClass::Fhir)
}

/// Counts and logs every request and applies the delay, faults and the
/// bearer check before the handler.
async fn gate(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let (route, class) = classify(&s, &method, &path);
    let (delay, fault) = {
        let mut inner = s.lock();
        *inner.routes.entry(route.clone()).or_default() += 1;
        let token_route = class == RouteClass::Token;
        let fault = match inner.faults.iter().position(|f| f.token_route == token_route) {
            Some(i) => {
                let f = &mut inner.faults[i];
                f.left -= 1;
                let fault = f.fault;
                if f.left == 0 {
                    inner.faults.remove(i);
                }
                Some(fault)
            }
            None => None,
        };
        (inner.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match fault {
        Some(f) => fault_response(f, class),
        None if class == RouteClass::Fhir => match refuse_bearer(&s, req.headers()) {
            None => next.run(req).await,
            Some(refusal) => refusal,
        },
        None => next.run(req).await,
    };
    let status = response.status().as_u16();
    s.lock().log.push(LoggedRequest { method: method.to_string(), route, path, query, status });
    response
}

fn fault_response(fault: FhirFault, class: RouteClass) -> Response {
    let (status, retry_after) = match fault {
        FhirFault::Status(code) => (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), None),
        FhirFault::RateLimited { retry_after_secs } => (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs)),
    };
    let mut r = if class == RouteClass::Token {
        let error = match status.as_u16() {
            400 => "invalid_request",
            401 => "invalid_client",
            _ => "temporarily_unavailable",
        };
        plain_json(status, &json!({ "error": error, "error_description": "injected fault" }))
    } else {
        let code = match status.as_u16() {
            401 | 403 => "login",
            429 => "throttled",
            503 => "transient",
            404 => "not-found",
            _ => "exception",
        };
        problem(status, code, format!("injected fault: {status}")).into_response()
    };
    if status == StatusCode::UNAUTHORIZED {
        let challenge = if class == RouteClass::Token {
            format!("Basic realm=\"{REALM}\"")
        } else {
            format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"injected fault\"")
        };
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header_value(&challenge));
    }
    if let Some(secs) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The `401` for a request without a valid bearer token, if auth is on.
fn refuse_bearer(s: &Server, headers: &HeaderMap) -> Option<Response> {
    let inner = s.lock();
    if matches!(inner.auth, AuthMode::None) {
        return None;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(given) = given else {
        return Some(unauthorized(format!("Bearer realm=\"{REALM}\""), "no bearer token"));
    };
    let invalid = |why: &str| {
        unauthorized(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{why}\""), why)
    };
    match &inner.auth {
        AuthMode::None => None,
        AuthMode::Static(t) if t == given => None,
        AuthMode::Static(_) => Some(invalid("wrong token")),
        AuthMode::OAuth { .. } => match inner.tokens.get(given) {
            Some(exp) if *exp > Instant::now() => None,
            Some(_) => Some(invalid("token expired")),
            None => Some(invalid("unknown token")),
        },
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    problem(StatusCode::NOT_FOUND, "not-supported", format!("no route for {method} {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    problem(StatusCode::METHOD_NOT_ALLOWED, "not-supported", format!("{method} is not supported on {}", uri.path()))
        .into_response()
}

// ------------------------------------------------------------- requests

fn known_type(type_: &str) -> Result<(), Problem> {
    if RESOURCE_TYPES.contains(&type_) {
        Ok(())
    } else {
        Err(problem(StatusCode::NOT_FOUND, "not-supported", format!("resource type {type_:?} is not supported")))
    }
}

/// The media type of a header (lowercase, without parameters).
fn media_type(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

fn is_fhir_json_strict(mt: &str) -> bool {
    mt == FHIR_JSON || mt == "application/json+fhir"
}

fn is_json(mt: &str) -> bool {
    is_fhir_json_strict(mt) || mt == "application/json"
}

/// A create or update body → the resource (without a Binary's `data`) and
/// a Binary's bytes.
fn parse_body(type_: &str, headers: &HeaderMap, body: Bytes) -> Result<(Value, Option<Bytes>), Problem> {
    let mt = media_type(headers, header::CONTENT_TYPE);
    if type_ == "Binary" && !mt.as_deref().is_some_and(is_fhir_json_strict) {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        return Ok((json!({ "resourceType": "Binary", "contentType": ct }), Some(body)));
    }
    match mt.as_deref() {
        Some(mt) if is_json(mt) => {}
        other => {
            return Err(problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                format!("Content-Type {other:?} is not {FHIR_JSON}"),
            ))
        }
    }
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, "structure", format!("malformed JSON: {e}")))?;
    if !v.is_object() {
        return Err(problem(StatusCode::BAD_REQUEST, "structure", "the body is not a JSON object"));
    }
    match v["resourceType"].as_str() {
        Some(t) if t == type_ => {}
        Some(t) => return Err(bad_request(format!("resourceType {t:?} does not match the path's {type_:?}"))),
        None => return Err(bad_request("no resourceType")),
    }
    validate(type_, &v)?;
    let data = take_binary_data(type_, &mut v)?;
    Ok((v, data))
}

fn check_id(v: &Value) -> Result<(), Problem> {
    match v.get("id") {
        None => Ok(()),
        Some(Value::String(id)) if valid_id(id) => Ok(()),
        Some(other) => Err(bad_request(format!("invalid id {other}"))),
    }
}

/// FHIR ids: `[A-Za-z0-9\-\.]{1,64}`.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The required elements the server checks (not a profile validation).
fn validate(type_: &str, v: &Value) -> Result<(), Problem> {
    let required = |what: &str| problem(StatusCode::BAD_REQUEST, "required", format!("{type_}.{what} is required"));
    let base64 = |what: &str, d: &Value| match d {
        Value::String(s) if STANDARD.decode(s).is_ok() => Ok(()),
        _ => Err(problem(StatusCode::BAD_REQUEST, "value", format!("{type_}.{what} is not base64"))),
    };
    match type_ {
        "DocumentReference" => {
            match v["status"].as_str() {
                Some("current" | "superseded" | "entered-in-error") => {}
                Some(other) => return Err(bad_request(format!("DocumentReference.status {other:?} is not a status"))),
                None => return Err(required("status")),
            }
            let content = v["content"].as_array().filter(|c| !c.is_empty()).ok_or_else(|| required("content"))?;
            for c in content {
                let attachment = c["attachment"].as_object().ok_or_else(|| required("content.attachment"))?;
                if let Some(d) = attachment.get("data") {
                    base64("content.attachment.data", d)?;
                }
            }
            if let Some(subject) = v.get("subject") {
                if !subject.is_object() {
                    return Err(bad_request("DocumentReference.subject is not a Reference"));
                }
            }
        }
        "Task" => {
            // R4: status and intent are required, from their value sets
            let statuses = [
                "draft",
                "requested",
                "received",
                "accepted",
                "rejected",
                "ready",
                "cancelled",
                "in-progress",
                "on-hold",
                "failed",
                "completed",
                "entered-in-error",
            ];
            match v["status"].as_str() {
                Some(st) if statuses.contains(&st) => {}
                Some(other) => return Err(bad_request(format!("Task.status {other:?} is not a status"))),
                None => return Err(required("status")),
            }
            let intents = [
                "unknown",
                "proposal",
                "plan",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            ];
            match v["intent"].as_str() {
                Some(i) if intents.contains(&i) => {}
                Some(other) => return Err(bad_request(format!("Task.intent {other:?} is not an intent"))),
                None => return Err(required("intent")),
            }
        }
        "Binary" => {
            if !v["contentType"].is_string() {
                return Err(required("contentType"));
            }
            if let Some(d) = v.get("data") {
                base64("data", d)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Moves a Binary's `data` out of the JSON, decoded.
fn take_binary_data(type_: &str, v: &mut Value) -> Result<Option<Bytes>, Problem> {
    if type_ != "Binary" {
        return Ok(None);
    }
    match v.as_object_mut().and_then(|o| o.remove("data")) {
        None => Ok(None),
        Some(Value::String(d)) => STANDARD
            .decode(d)
            .map(|b| Some(Bytes::from(b)))
            .map_err(|e| problem(StatusCode::BAD_REQUEST, "value", format!("Binary.data is not base64: {e}"))),
        Some(_) => Err(problem(StatusCode::BAD_REQUEST, "value", "Binary.data is not a string")),
    }
}

/// Referential integrity: a relative `Patient/x` subject must exist.
fn check_references(s: &Server, inner: &Inner, type_: &str, v: &Value) -> Result<(), Problem> {
    let field = match type_ {
        "DocumentReference" => "subject",
        "Task" => "for",
        _ => return Ok(()),
    };
    let Some(reference) = v[field]["reference"].as_str() else {
        return Ok(());
    };
    let local = normalise_reference(s, reference);
    if let Some(("Patient", id)) = local.split_once('/') {
        if inner.get("Patient", id).is_none() {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "processing",
                format!("resource Patient/{id}, referenced by {type_}.{field}, does not exist"),
            ));
        }
    }
    Ok(())
}

/// A reference made relative to this server (`<base>/Patient/x` →
/// `Patient/x`), without `_history`.
fn normalise_reference(s: &Server, reference: &str) -> String {
    let r = reference.strip_prefix(&format!("{}/", s.base)).unwrap_or(reference);
    let r = r.split("/_history/").next().unwrap_or(r);
    r.to_owned()
}

fn parse_query(raw: Option<&str>) -> Result<Vec<(String, String)>, Problem> {
    serde_urlencoded::from_str(raw.unwrap_or_default()).map_err(|e| bad_request(format!("malformed query: {e}")))
}

/// The version an `If-Match` asks for (`W/"3"`, `"3"`, `3`), or `*`.
fn if_match(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| bad_request("If-Match is not ASCII"))?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    Ok(Some(v.trim_matches('"').to_owned()))
}

// ------------------------------------------------------------- handlers

async fn create(
    State(s): State<Shared>,
    Path(type_): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    known_type(&type_)?;
    let (resource, data) = parse_body(&type_, &headers, body)?;
    let condition = match headers.get("if-none-exist") {
        Some(v) => {
            let v = v.to_str().map_err(|_| bad_request("If-None-Exist is not ASCII"))?;
            // Some clients send `Type?a=b` or a whole URL: the query is what counts.
            let q = v.rsplit_once('?').map_or(v, |(_, q)| q);
            let search = Search::parse(&s, &type_, &parse_query(Some(q))?)?;
            if search.has_result_params {
                return Err(bad_request("If-None-Exist takes search parameters only"));
            }
            Some(search)
        }
        None => None,
    };
    let mut inner = s.lock();
    if let Some(search) = condition {
        let matches = search.matching(&s, &inner, &type_);
        match matches.as_slice() {
            [] => {}
            [one] => return Ok(resource_response(&s, StatusCode::OK, one, true, prefer(&headers))),
            several => {
                return Err(problem(
                    StatusCode::PRECONDITION_FAILED,
                    "multiple-matches",
                    format!("If-None-Exist matches {} resources", several.len()),
                ))
            }
        }
    }
    check_references(&s, &inner, &type_, &resource)?;
    let id = inner.new_id(&type_);
    let v = inner.put(&type_, &id, resource, data, None);
    Ok(resource_response(&s, StatusCode::CREATED, v, true, prefer(&headers)))
}

async fn update(
    State(s): State<Shared>,
    Path((type_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    known_type(&type_)?;
    if !valid_id(&id) {
        return Err(bad_request(format!("invalid id {id:?}")));
    }
    let (mut resource, data) = parse_body(&type_, &headers, body)?;
    match resource.get("id") {
        Some(Value::String(body_id)) if *body_id == id => {}
        // A raw Binary has no JSON to carry an id.
        None if type_ == "Binary" && !headers_say_fhir_json(&headers) => {
            resource["id"] = Value::String(id.clone());
        }
        Some(other) => return Err(bad_request(format!("the body's id {other} does not match the path's {id:?}"))),
        None => return Err(bad_request("an update needs the resource's id in the body")),
    }
    let wanted = if_match(&headers)?;
    let mut inner = s.lock();
    let current = inner.get(&type_, &id);
    if let Some(wanted) = wanted {
        match current {
            Some(c) if wanted == "*" || wanted == c.vid() => {}
            Some(c) => {
                return Err(problem(
                    StatusCode::PRECONDITION_FAILED,
                    "conflict",
                    format!("If-Match wants version {wanted}, the current version is {}", c.vid()),
                ))
            }
            None => {
                return Err(problem(
                    StatusCode::PRECONDITION_FAILED,
                    "conflict",
                    format!("If-Match wants version {wanted} of {type_}/{id}, which does not exist"),
                ))
            }
        }
    }
    let created = current.is_none();
    check_references(&s, &inner, &type_, &resource)?;
    let v = inner.put(&type_, &id, resource, data, None);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(resource_response(&s, status, v, created, prefer(&headers)))
}

fn headers_say_fhir_json(headers: &HeaderMap) -> bool {
    media_type(headers, header::CONTENT_TYPE).as_deref().is_some_and(is_fhir_json_strict)
}

/// Whether a Binary read wants the resource JSON rather than the bytes.
fn wants_resource(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| m.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .any(|m| is_fhir_json_strict(&m))
}

fn answer_read(s: &Server, v: &Version, headers: &HeaderMap) -> Response {
    if v.resource["resourceType"] == "Binary" && !wants_resource(headers) {
        let ct = v.resource["contentType"].as_str().unwrap_or("application/octet-stream");
        let body = v.data.clone().unwrap_or_default();
        let mut r = Response::new(Body::from(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, header_value(ct));
        h.insert(header::ETAG, header_value(&format!("W/\"{}\"", v.vid())));
        h.insert(header::LAST_MODIFIED, header_value(&http_date(v.stamp)));
        return r;
    }
    resource_response(s, StatusCode::OK, v, false, Return::Representation)
}

async fn read(
    State(s): State<Shared>,
    Path((type_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    known_type(&type_)?;
    let v = s.lock().get(&type_, &id).cloned();
    let v = v.ok_or_else(|| problem(StatusCode::NOT_FOUND, "not-found", format!("{type_}/{id} is not known")))?;
    Ok(answer_read(&s, &v, &headers))
}

async fn vread(
    State(s): State<Shared>,
    Path((type_, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    known_type(&type_)?;
    let v = {
        let inner = s.lock();
        inner.store.get(&(type_.clone(), id.clone())).and_then(|vs| vs.iter().find(|v| v.vid() == vid)).cloned()
    };
    let v = v.ok_or_else(|| {
        problem(StatusCode::NOT_FOUND, "not-found", format!("{type_}/{id}/_history/{vid} is not known"))
    })?;
    Ok(answer_read(&s, &v, &headers))
}

// --------------------------------------------------------------- search

/// A token search value: `system` `None` = any system, `Some("")` = none.
#[derive(Debug)]
struct TokenValue {
    system: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

#[derive(Debug)]
enum Filter {
    Ids(Vec<String>),
    Identifier(Vec<TokenValue>),
    /// References (relative, `Type/id`); `Type/` alone matches any id-less
    /// spelling, `*/id` any type.
    Reference(Vec<String>),
    LastUpdated(Prefix, i128, i128),
}

#[derive(Debug)]
struct Search {
    filters: Vec<Filter>,
    count: Option<usize>,
    descending: bool,
    cursor: Option<(i128, String)>,
    /// Every parameter but `_cursor`, for the `next` link.
    kept: Vec<(String, String)>,
    has_result_params: bool,
}

impl Search {
    fn parse(s: &Server, type_: &str, params: &[(String, String)]) -> Result<Search, Problem> {
        let mut search = Search {
            filters: Vec::new(),
            count: None,
            descending: false,
            cursor: None,
            kept: Vec::new(),
            has_result_params: false,
        };
        for (name, value) in params {
            if name != "_cursor" {
                search.kept.push((name.clone(), value.clone()));
            }
            if value.is_empty() {
                return Err(bad_request(format!("search parameter {name} has no value")));
            }
            let values = || value.split(',').map(str::trim).filter(|v| !v.is_empty());
            match (name.as_str(), type_) {
                ("_id", _) => search.filters.push(Filter::Ids(values().map(str::to_owned).collect())),
                ("identifier", "Patient" | "DocumentReference" | "Task") => {
                    search.filters.push(Filter::Identifier(values().map(token_value).collect()))
                }
                ("patient", "DocumentReference") => search.filters.push(Filter::Reference(
                    values()
                        .map(|v| {
                            let r = normalise_reference(s, v);
                            if r.contains('/') {
                                r
                            } else {
                                format!("Patient/{r}")
                            }
                        })
                        .collect(),
                )),
                ("subject", "DocumentReference") => search.filters.push(Filter::Reference(
                    values()
                        .map(|v| {
                            let r = normalise_reference(s, v);
                            if r.contains('/') {
                                r
                            } else {
                                format!("*/{r}")
                            }
                        })
                        .collect(),
                )),
                ("_lastUpdated", _) => search.filters.push(last_updated(value)?),
                ("_count", _) => {
                    let n: usize = value.parse().map_err(|_| bad_request(format!("_count={value} is not a number")))?;
                    search.count = Some(n.min(MAX_PAGE_SIZE));
                    search.has_result_params = true;
                }
                ("_sort", _) => {
                    search.descending = match value.as_str() {
                        "_lastUpdated" | "_lastUpdated,_id" => false,
                        "-_lastUpdated" | "-_lastUpdated,-_id" => true,
                        other => {
                            return Err(bad_request(format!("_sort={other} is not supported (only _lastUpdated)")))
                        }
                    };
                    search.has_result_params = true;
                }
                ("_cursor", _) => {
                    let cursor = value
                        .split_once('_')
                        .and_then(|(t, id)| Some((t.parse().ok()?, id.to_owned())))
                        .ok_or_else(|| bad_request(format!("_cursor={value} is not a cursor of this server")))?;
                    search.cursor = Some(cursor);
                    search.has_result_params = true;
                }
                ("_format", _) => {
                    if !matches!(value.as_str(), "json" | "application/json" | FHIR_JSON) {
                        return Err(problem(
                            StatusCode::NOT_ACCEPTABLE,
                            "not-supported",
                            "this server speaks JSON only",
                        ));
                    }
                }
                _ => {
                    return Err(problem(
                        StatusCode::BAD_REQUEST,
                        "not-supported",
                        format!("unknown search parameter {name:?} for {type_}"),
                    ))
                }
            }
        }
        Ok(search)
    }

    fn matches(&self, s: &Server, type_: &str, v: &Version) -> bool {
        self.filters.iter().all(|f| match f {
            Filter::Ids(ids) => ids.iter().any(|id| id == v.id()),
            Filter::Identifier(tokens) => {
                let mut idents: Vec<&Value> = v.resource["identifier"].as_array().into_iter().flatten().collect();
                if type_ == "DocumentReference" {
                    idents.extend(v.resource.get("masterIdentifier"));
                }
                tokens.iter().any(|t| idents.iter().any(|i| token_matches(t, i)))
            }
            Filter::Reference(refs) => {
                let Some(r) = v.resource["subject"]["reference"].as_str() else {
                    return false;
                };
                let r = normalise_reference(s, r);
                refs.iter().any(|want| match want.strip_prefix("*/") {
                    Some(id) => r.rsplit_once('/').is_some_and(|(_, rid)| rid == id),
                    None => *want == r,
                })
            }
            Filter::LastUpdated(prefix, start, end) => {
                let p = v.stamp;
                match prefix {
                    Prefix::Eq => *start <= p && p < *end,
                    Prefix::Ne => !(*start <= p && p < *end),
                    Prefix::Gt => p >= *end,
                    Prefix::Ge => p >= *start,
                    Prefix::Lt => p < *start,
                    Prefix::Le => p < *end,
                }
            }
        })
    }

    /// The matching current versions, in (lastUpdated, id) order (no cursor).
    fn matching<'a>(&self, s: &Server, inner: &'a Inner, type_: &str) -> Vec<&'a Version> {
        let mut hits: Vec<&Version> = inner.current(type_).into_iter().filter(|v| self.matches(s, type_, v)).collect();
        if self.descending {
            hits.reverse();
        }
        hits
    }
}

fn token_value(v: &str) -> TokenValue {
    let opt = |s: &str| if s.is_empty() { None } else { Some(s.to_owned()) };
    match v.split_once('|') {
        Some((system, value)) => TokenValue { system: Some(system.to_owned()), value: opt(value) },
        None => TokenValue { system: None, value: Some(v.to_owned()) },
    }
}

fn token_matches(t: &TokenValue, identifier: &Value) -> bool {
    let system = identifier["system"].as_str();
    let value = identifier["value"].as_str();
    let system_ok = match t.system.as_deref() {
        None => true,
        Some("") => system.is_none(),
        Some(want) => system == Some(want),
    };
    system_ok && t.value.as_deref().is_none_or(|want| value == Some(want))
}

fn last_updated(value: &str) -> Result<Filter, Problem> {
    let (prefix, date) = match value.get(..2) {
        Some("eq") => (Prefix::Eq, &value[2..]),
        Some("ne") => (Prefix::Ne, &value[2..]),
        Some("gt" | "sa") => (Prefix::Gt, &value[2..]),
        Some("lt" | "eb") => (Prefix::Lt, &value[2..]),
        Some("ge") => (Prefix::Ge, &value[2..]),
        Some("le") => (Prefix::Le, &value[2..]),
        Some(p) if p.bytes().all(|b| b.is_ascii_alphabetic()) => {
            return Err(bad_request(format!("_lastUpdated prefix {p:?} is not supported")))
        }
        _ => (Prefix::Eq, value),
    };
    let (start, end) =
        parse_date_range(date).ok_or_else(|| bad_request(format!("_lastUpdated={value}: not a date")))?;
    Ok(Filter::LastUpdated(prefix, start, end))
}

async fn search(
    State(s): State<Shared>,
    Path(type_): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    known_type(&type_)?;
    let params = parse_query(raw.as_deref())?;
    let search = Search::parse(&s, &type_, &params)?;
    let inner = s.lock();
    let hits = search.matching(&s, &inner, &type_);
    let total = hits.len();
    let after = |v: &&Version| match &search.cursor {
        None => true,
        Some((t, id)) if search.descending => (v.stamp, v.id()) < (*t, id.as_str()),
        Some((t, id)) => (v.stamp, v.id()) > (*t, id.as_str()),
    };
    let rest: Vec<&Version> = hits.into_iter().filter(after).collect();
    let count = search.count.unwrap_or(s.page_size);
    let page = &rest[..count.min(rest.len())];
    let self_url = match &raw {
        Some(q) if !q.is_empty() => format!("{}/{type_}?{q}", s.base),
        _ => format!("{}/{type_}", s.base),
    };
    let mut links = vec![json!({ "relation": "self", "url": self_url })];
    if let (Some(last), true) = (page.last(), rest.len() > page.len()) {
        let mut next = search.kept.clone();
        next.push(("_cursor".into(), format!("{}_{}", last.stamp, last.id())));
        let q = serde_urlencoded::to_string(&next).expect("strings encode");
        links.push(json!({ "relation": "next", "url": format!("{}/{type_}?{q}", s.base) }));
    }
    let entries: Vec<Value> = page
        .iter()
        .map(|v| {
            json!({
                "fullUrl": format!("{}/{type_}/{}", s.base, v.id()),
                "resource": v.json(),
                "search": { "mode": "match" },
            })
        })
        .collect();
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(format!("{:016x}", splitmix(now_ns() as u64))));
    bundle.insert("meta".into(), json!({ "lastUpdated": format_instant(now_ns()) }));
    bundle.insert("type".into(), json!("searchset"));
    bundle.insert("total".into(), json!(total));
    bundle.insert("link".into(), Value::Array(links));
    if !entries.is_empty() {
        bundle.insert("entry".into(), Value::Array(entries));
    }
    Ok(fhir_json(StatusCode::OK, &Value::Object(bundle)))
}

// ---------------------------------------------------- metadata and auth

async fn metadata(State(s): State<Shared>) -> Response {
    let auth = s.lock().auth.clone();
    let common = [("_id", "token"), ("_lastUpdated", "date")];
    let params = |extra: &[(&str, &str)]| -> Vec<Value> {
        common.iter().chain(extra).map(|(n, t)| json!({ "name": n, "type": t })).collect()
    };
    let interactions: Vec<Value> =
        ["read", "vread", "update", "create", "search-type"].iter().map(|c| json!({ "code": c })).collect();
    let resource = |type_: &str, search: Vec<Value>| {
        json!({
            "type": type_,
            "interaction": interactions,
            "versioning": "versioned-update",
            "readHistory": true,
            "updateCreate": true,
            "conditionalCreate": true,
            "conditionalUpdate": false,
            "conditionalDelete": "not-supported",
            "searchParam": search,
        })
    };
    let resources = vec![
        resource("Patient", params(&[("identifier", "token")])),
        resource(
            "DocumentReference",
            params(&[("identifier", "token"), ("patient", "reference"), ("subject", "reference")]),
        ),
        resource("Binary", params(&[])),
        resource("Task", params(&[("identifier", "token")])),
    ];
    let mut rest = json!({ "mode": "server", "resource": resources });
    match auth {
        AuthMode::None => {}
        AuthMode::Static(_) => {
            rest["security"] = json!({ "description": "a static bearer token (Authorization: Bearer …)" });
        }
        AuthMode::OAuth { .. } => {
            rest["security"] = json!({
                "extension": [{
                    "url": OAUTH_URIS,
                    "extension": [{ "url": "token", "valueUri": s.token_url }],
                }],
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }],
                }],
                "description": "OAuth2 client credentials (SMART backend services)",
            });
        }
    }
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": format_instant(s.started),
            "kind": "instance",
            "software": { "name": "ferry-tests FHIR server" },
            "implementation": { "description": "ferry's FHIR R4 test server", "url": s.base },
            "fhirVersion": "4.0.1",
            "format": [FHIR_JSON, "json"],
            "rest": [rest],
        }),
    )
}

async fn smart_configuration(State(s): State<Shared>) -> Response {
    if !matches!(s.lock().auth, AuthMode::OAuth { .. }) {
        return problem(StatusCode::NOT_FOUND, "not-found", "this server does not use OAuth").into_response();
    }
    plain_json(
        StatusCode::OK,
        &json!({
            "token_endpoint": s.token_url,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric"],
        }),
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str, basic_challenge: bool) -> Response {
    let mut r = plain_json(status, &json!({ "error": error, "error_description": description }));
    if basic_challenge {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header_value(&format!("Basic realm=\"{REALM}\"")));
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// How a client authenticated at the token endpoint.
enum ClientAuth {
    Secret { id: String, secret: String, basic: bool },
    Jwt(String),
}

fn form_decode(s: &str) -> String {
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("x={s}"))
        .ok()
        .and_then(|mut v| v.pop())
        .map_or_else(|| s.to_owned(), |(_, v)| v)
}

async fn token(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let bad = |error: &str, description: &str| oauth_error(StatusCode::BAD_REQUEST, error, description, false);
    let (secrets, jwt_clients) = match s.lock().auth.clone() {
        AuthMode::OAuth { secrets, jwt_clients } => (secrets, jwt_clients),
        _ => return oauth_error(StatusCode::NOT_FOUND, "invalid_request", "this server has no token endpoint", false),
    };
    if media_type(&headers, header::CONTENT_TYPE).as_deref() != Some("application/x-www-form-urlencoded") {
        return bad("invalid_request", "the body must be application/x-www-form-urlencoded");
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return bad("invalid_request", "malformed form body");
    };
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &form {
        if fields.insert(k, v).is_some() {
            return bad("invalid_request", &format!("parameter {k} given twice"));
        }
    }
    match fields.get("grant_type") {
        Some(&"client_credentials") => {}
        Some(other) => return bad("unsupported_grant_type", &format!("grant_type {other} is not supported")),
        None => return bad("invalid_request", "no grant_type"),
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, b)| {
            STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|d| d.split_once(':').map(|(i, p)| (form_decode(i), form_decode(p))))
        });
    let mut methods = Vec::new();
    match basic {
        Some(Some((id, secret))) => methods.push(ClientAuth::Secret { id, secret, basic: true }),
        Some(None) => {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "malformed Basic credentials", true)
        }
        None => {}
    }
    if let Some(secret) = fields.get("client_secret") {
        let Some(id) = fields.get("client_id") else {
            return bad("invalid_request", "client_secret without client_id");
        };
        methods.push(ClientAuth::Secret { id: id.to_string(), secret: secret.to_string(), basic: false });
    }
    match (fields.get("client_assertion_type"), fields.get("client_assertion")) {
        (Some(&JWT_BEARER), Some(a)) => methods.push(ClientAuth::Jwt(a.to_string())),
        (None, None) => {}
        (Some(t), Some(_)) => return bad("invalid_request", &format!("client_assertion_type {t} is not {JWT_BEARER}")),
        _ => return bad("invalid_request", "client_assertion and client_assertion_type go together"),
    }
    let client = match methods.len() {
        0 => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "no client authentication", false),
        1 => methods.pop().expect("one"),
        _ => return bad("invalid_request", "more than one client authentication method"),
    };
    match client {
        ClientAuth::Secret { id, secret, basic } => {
            if secrets.get(&id) != Some(&secret) {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "unknown client or wrong secret",
                    basic,
                );
            }
        }
        ClientAuth::Jwt(assertion) => {
            match check_assertion(&assertion, &s.token_url, &jwt_clients, fields.get("client_id").copied()) {
                Ok(decoded) => s.lock().assertions.push(decoded),
                Err(why) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &why, false),
            }
        }
    }
    let (token, lifetime) = {
        let mut inner = s.lock();
        (inner.issue_token(s.token_salt), inner.lifetime)
    };
    let expires_in = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    let mut answer = json!({ "access_token": token, "token_type": "Bearer", "expires_in": expires_in });
    if let Some(scope) = fields.get("scope") {
        answer["scope"] = json!(scope);
    }
    let mut r = plain_json(StatusCode::OK, &answer);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// Checks a JWT client assertion's shape and claims (not its signature):
/// `Ok({"header", "claims", "signature", "jwt"})` (`jwt` as sent, so a
/// test can verify the signature with the client's public key).
fn check_assertion(jwt: &str, token_url: &str, clients: &[String], client_id: Option<&str>) -> Result<Value, String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(format!("client_assertion has {} dot-separated parts, not 3", parts.len()));
    };
    if signature.is_empty() {
        return Err("client_assertion has no signature".into());
    }
    let decode = |what: &str, part: &str| -> Result<Value, String> {
        let bytes =
            URL_SAFE_NO_PAD.decode(part).map_err(|e| format!("client_assertion {what} is not base64url: {e}"))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("client_assertion {what} is not JSON: {e}"))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(format!("client_assertion {what} is not a JSON object"))
        }
    };
    let header = decode("header", header)?;
    let claims = decode("claims", claims)?;
    let sub = claims["sub"].as_str().ok_or("client_assertion has no sub")?;
    if claims["iss"].as_str() != Some(sub) {
        return Err("client_assertion's iss is not its sub".into());
    }
    if !clients.iter().any(|c| c == sub) {
        return Err(format!("unknown JWT client {sub:?}"));
    }
    if client_id.is_some_and(|c| c != sub) {
        return Err("client_id is not the assertion's sub".into());
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == token_url,
        Value::Array(a) => a.iter().any(|a| a == token_url),
        _ => false,
    };
    if !aud_ok {
        return Err(format!("client_assertion's aud is not {token_url}"));
    }
    let now = (now_ns() / 1_000_000_000) as f64;
    match claims["exp"].as_f64() {
        Some(exp) if exp > now => {}
        Some(_) => return Err("client_assertion expired".into()),
        None => return Err("client_assertion has no exp".into()),
    }
    if !claims["jti"].is_string() {
        return Err("client_assertion has no jti".into());
    }
    Ok(json!({ "header": header, "claims": claims, "signature": signature, "jwt": jwt }))
}

// ---------------------------------------------------------------- time

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

/// A bijective mix of a counter: opaque, unique ids.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const NS: i128 = 1_000_000_000;
const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

fn split_ns(ns: i128) -> (i64, i64, i128) {
    let secs = ns.div_euclid(NS);
    let frac = ns.rem_euclid(NS);
    let days = secs.div_euclid(i128::from(DAY)) as i64;
    let sod = secs.rem_euclid(i128::from(DAY)) as i64;
    (days, sod, frac)
}

/// A FHIR instant in UTC: milliseconds, or more digits when there are any.
fn format_instant(ns: i128) -> String {
    let (days, sod, frac) = split_ns(ns);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let frac = if frac % 1_000_000 == 0 {
        format!("{:03}", frac / 1_000_000)
    } else {
        format!("{frac:09}").trim_end_matches('0').to_owned()
    };
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac}Z")
}

/// An HTTP date (`Last-Modified`).
fn http_date(ns: i128) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, sod, _) = split_ns(ns);
    let (y, m, d) = civil_from_days(days);
    let wd = WEEKDAYS[days.rem_euclid(7) as usize];
    let mon = MONTHS[m as usize - 1];
    format!("{wd}, {d:02} {mon} {y:04} {:02}:{:02}:{:02} GMT", sod / 3600, sod % 3600 / 60, sod % 60)
}

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)) as u32
}

/// A FHIR date, dateTime or instant as the range it denotes, in ns since
/// the epoch, end exclusive: `2024` is the year, `2024-03-01T10:00Z` a
/// minute, `…:00.123Z` a millisecond. No offset means UTC.
fn parse_date_range(s: &str) -> Option<(i128, i128)> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let y = i64::from(digits(parts.first()?, 4)?);
    let m = parts.get(1).map(|m| digits(m, 2).filter(|m| (1..=12).contains(m))).unwrap_or(Some(1))?;
    let d = match parts.get(2) {
        Some(d) => digits(d, 2).filter(|d| (1..=days_in_month(y, m)).contains(d))?,
        None => 1,
    };
    let day_ns = |days: i64| i128::from(days) * i128::from(DAY) * NS;
    let start_day = days_from_civil(y, m, d);
    let Some(time) = time else {
        let end_day = match parts.len() {
            1 => days_from_civil(y + 1, 1, 1),
            2 if m == 12 => days_from_civil(y + 1, 1, 1),
            2 => days_from_civil(y, m + 1, 1),
            3 => start_day + 1,
            _ => return None,
        };
        return Some((day_ns(start_day), day_ns(end_day)));
    };
    if parts.len() != 3 {
        return None;
    }
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, tz) = time.split_at(i);
        let sign = if tz.starts_with('-') { -1 } else { 1 };
        let (oh, om) = tz[1..].split_once(':')?;
        let (oh, om) = (digits(oh, 2).filter(|h| *h <= 14)?, digits(om, 2).filter(|m| *m < 60)?);
        (c, sign * i64::from(oh * 3600 + om * 60))
    } else {
        (time, 0)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (clock, None),
    };
    let hms: Vec<&str> = hms.split(':').collect();
    let h = digits(hms.first()?, 2).filter(|h| *h < 24)?;
    let mi = digits(hms.get(1)?, 2).filter(|m| *m < 60)?;
    let sec = match hms.get(2) {
        Some(s) => Some(digits(s, 2).filter(|s| *s < 60)?),
        None => None,
    };
    if hms.len() > 3 || (frac.is_some() && sec.is_none()) {
        return None;
    }
    let secs = start_day * DAY + i64::from(h * 3600 + mi * 60 + sec.unwrap_or(0)) - offset_secs;
    let mut start = i128::from(secs) * NS;
    let width = match (sec, frac) {
        (None, _) => 60 * NS,
        (Some(_), None) => NS,
        (Some(_), Some(f)) => {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let f = &f[..f.len().min(9)];
            let scale = 10i128.pow(9 - f.len() as u32);
            start += f.parse::<i128>().ok()? * scale;
            scale
        }
    };
    Some((start, start + width))
}

/// A full instant (with a time) as ns since the epoch.
fn parse_instant(s: &str) -> Option<i128> {
    if !s.contains('T') {
        return None;
    }
    parse_date_range(s).map(|(start, _)| start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_dates_round_trip_and_ranges() {
        let t = parse_instant("2024-02-29T23:59:58.123Z").unwrap();
        assert_eq!(format_instant(t), "2024-02-29T23:59:58.123Z");
        assert_eq!(http_date(t), "Thu, 29 Feb 2024 23:59:58 GMT");
        assert_eq!(parse_instant("2024-03-01T00:59:58.123+01:00"), Some(t));
        assert_eq!(format_instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_instant(1_500), "1970-01-01T00:00:00.0000015Z");
        let (s, e) = parse_date_range("2024-12").unwrap();
        assert_eq!(
            (format_instant(s), format_instant(e)),
            ("2024-12-01T00:00:00.000Z".into(), "2025-01-01T00:00:00.000Z".into())
        );
        let (s, e) = parse_date_range("2024").unwrap();
        assert_eq!(e - s, 366 * i128::from(DAY) * NS);
        let (s, e) = parse_date_range("2024-01-01T10:00Z").unwrap();
        assert_eq!(e - s, 60 * NS);
        let (s, e) = parse_date_range("2024-01-01T10:00:00.5-02:30").unwrap();
        assert_eq!((format_instant(s), e - s), ("2024-01-01T12:30:00.500Z".into(), NS / 10));
        for bad in
            ["", "24", "2024-13", "2024-02-30", "2024-01-01T25:00Z", "2024-01-01T10:00:00.Z", "2024-01T10:00Z", "x"]
        {
            assert_eq!(parse_date_range(bad), None, "{bad}");
        }
    }
}
