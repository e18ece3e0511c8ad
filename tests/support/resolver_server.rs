//! A stand-in for the practice management system's patient resolver API,
//! on 127.0.0.1 with a random port, for the `http-resolver` plugin.
//!
//! Endpoints (paths as in the real API):
//!
//! - `POST /api/app/patient-pms-resolver/resolve` with `{"cardId": "C-1"}`
//!   → `200 {"patientGuid": "g"}`, or `404 {"error": "not found"}`;
//! - `GET /api/app/patient-pms-resolver/resolve?cardId=C-1` → the same;
//! - `POST /api/app/patient-pms-resolver/resolve-batch` with
//!   `{"cardIds": ["C-1", ...]}` → `200 {"results": [{"cardId", "patientGuid"}, ...]}`
//!   listing only the known cards.
//!
//! A card mapped to several guids (listed twice in the map, or
//! [`ResolverServer::add_mapping`]) answers `{"patientGuid": ["g1", "g2"]}`
//! and, in a batch, one result per guid: the PMS knows several patients
//! for it. A body that is not the expected JSON gets `400`.
//!
//! Faults ([`Fault`]) are switched at runtime and apply to every endpoint
//! before the API key check. Every request is counted, faulted or not.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::runtime::ServerRuntime;

/// Path of the single-card endpoint.
pub const RESOLVE_PATH: &str = "/api/app/patient-pms-resolver/resolve";
/// Path of the batch endpoint.
pub const RESOLVE_BATCH_PATH: &str = "/api/app/patient-pms-resolver/resolve-batch";
/// The header carrying the API key when one is required.
pub const API_KEY_HEADER: &str = "X-Api-Key";

/// What the server does instead of (or before) answering.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Answer every request with this status (`{"error": "injected fault"}`),
    /// e.g. `Status(500)`, `Status(401)`, until the fault is changed.
    Status(u16),
    /// Answer the next `n` requests with this status, then normally.
    StatusTimes(u16, u32),
    /// Answer the next `times` requests `429` with `Retry-After: retry_after_secs`.
    RateLimited { retry_after_secs: u64, times: u32 },
    /// Wait this long before answering (every request).
    Slow(Duration),
    /// `200` with a truncated JSON body.
    Malformed,
}

#[derive(Debug)]
struct Inner {
    map: BTreeMap<String, Vec<String>>,
    fault: Fault,
    api_key: Option<String>,
    requests: u64,
    per_card: HashMap<String, u64>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake resolver API. Stops when dropped.
pub struct ResolverServer {
    addr: SocketAddr,
    state: Shared,
    // Last: the runtime goes after everything that might use it.
    _rt: ServerRuntime,
}

impl ResolverServer {
    /// Starts a server knowing `map` (card id → patient guid; a card listed
    /// twice with different guids is ambiguous). Works from sync and async
    /// tests alike (the server has its own runtime).
    pub fn start<C: Into<String>, G: Into<String>>(map: impl IntoIterator<Item = (C, G)>) -> ResolverServer {
        let mut cards: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (c, g) in map {
            let guids = cards.entry(c.into()).or_default();
            let g = g.into();
            if !guids.contains(&g) {
                guids.push(g);
            }
        }
        let state: Shared = Arc::new(Mutex::new(Inner {
            map: cards,
            fault: Fault::None,
            api_key: None,
            requests: 0,
            per_card: HashMap::new(),
        }));
        let rt = ServerRuntime::new("resolver");
        let (listener, addr) = rt.bind();
        let app = Router::new()
            .route(RESOLVE_PATH, post(resolve_post).get(resolve_get))
            .route(RESOLVE_BATCH_PATH, post(resolve_batch))
            .with_state(state.clone());
        rt.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("resolver test server stopped: {e}");
            }
        });
        ResolverServer { addr, state, _rt: rt }
    }

    /// Requires `X-Api-Key: key` on every request (401 without it).
    pub fn with_api_key(self, key: &str) -> ResolverServer {
        self.set_api_key(Some(key));
        self
    }

    /// Changes (or, with `None`, drops) the required API key.
    pub fn set_api_key(&self, key: Option<&str>) {
        lock(&self.state).api_key = key.map(str::to_owned);
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:port`, as `grants.http` wants it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// URL of `POST .../resolve` (the `http-resolver` defaults fit it).
    pub fn url(&self) -> String {
        format!("{}{RESOLVE_PATH}", self.base_url())
    }

    /// URL of `POST .../resolve-batch` (fits the default `batch` settings).
    pub fn batch_url(&self) -> String {
        format!("{}{RESOLVE_BATCH_PATH}", self.base_url())
    }

    /// URL template of `GET .../resolve?cardId={cardId}`, with the
    /// `{cardId}` placeholder of `http-resolver` left in.
    pub fn get_url(&self) -> String {
        format!("{}{RESOLVE_PATH}?cardId={{cardId}}", self.base_url())
    }

    /// Switches the fault (replacing the previous one).
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.state).fault = fault;
    }

    /// The fault in force (`StatusTimes`/`RateLimited` count down to `None`).
    pub fn fault(&self) -> Fault {
        lock(&self.state).fault.clone()
    }

    /// Requests received so far, on every endpoint, faulted or not.
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }

    /// Requests that asked about `card` (a batch counts once per card in it).
    pub fn requests_for(&self, card: &str) -> u64 {
        lock(&self.state).per_card.get(card).copied().unwrap_or(0)
    }

    /// Resets the request counters.
    pub fn reset_counts(&self) {
        let mut s = lock(&self.state);
        s.requests = 0;
        s.per_card.clear();
    }

    /// From now on `card` belongs to `guid` only.
    pub fn set_mapping(&self, card: &str, guid: &str) {
        lock(&self.state).map.insert(card.to_owned(), vec![guid.to_owned()]);
    }

    /// From now on `card` also belongs to `guid` (ambiguous if it had another).
    pub fn add_mapping(&self, card: &str, guid: &str) {
        let mut s = lock(&self.state);
        let guids = s.map.entry(card.to_owned()).or_default();
        if !guids.iter().any(|g| g == guid) {
            guids.push(guid.to_owned());
        }
    }

    /// From now on `card` is unknown.
    pub fn remove_mapping(&self, card: &str) {
        lock(&self.state).map.remove(card);
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// Counts the request and applies faults and the key check: `Some`
/// response to send instead of the real answer.
async fn gate(state: &Shared, headers: &HeaderMap, cards: &[String]) -> Option<Response> {
    let (fault, api_key) = {
        let mut s = lock(state);
        s.requests += 1;
        for c in cards {
            *s.per_card.entry(c.clone()).or_default() += 1;
        }
        let fault = s.fault.clone();
        // Count down the faults that apply a number of times.
        match &mut s.fault {
            Fault::StatusTimes(_, n) | Fault::RateLimited { times: n, .. } => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.fault = Fault::None;
                }
            }
            _ => {}
        }
        (fault, s.api_key.clone())
    };
    match fault {
        Fault::None => {}
        Fault::Status(code) | Fault::StatusTimes(code, _) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(error(status, "injected fault"));
        }
        Fault::RateLimited { retry_after_secs, .. } => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return Some(r);
        }
        Fault::Slow(d) => tokio::time::sleep(d).await,
        Fault::Malformed => {
            return Some(
                (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"patientGuid": "#).into_response(),
            );
        }
    }
    if let Some(key) = api_key {
        let given = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok());
        if given != Some(key.as_str()) {
            return Some(error(StatusCode::UNAUTHORIZED, "missing or wrong API key"));
        }
    }
    None
}

fn guids_of(state: &Shared, card: &str) -> Vec<String> {
    lock(state).map.get(card).cloned().unwrap_or_default()
}

fn single_answer(state: &Shared, card: &str) -> Response {
    let guids = guids_of(state, card);
    match guids.len() {
        0 => error(StatusCode::NOT_FOUND, "not found"),
        1 => json_response(StatusCode::OK, &json!({ "patientGuid": guids[0] })),
        _ => json_response(StatusCode::OK, &json!({ "patientGuid": guids })),
    }
}

async fn resolve_post(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let card = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("cardId").and_then(Value::as_str).map(str::to_owned));
    let cards: Vec<String> = card.iter().cloned().collect();
    if let Some(r) = gate(&state, &headers, &cards).await {
        return r;
    }
    match card {
        Some(card) => single_answer(&state, &card),
        None => error(StatusCode::BAD_REQUEST, r#"expected {"cardId": "..."}"#),
    }
}

async fn resolve_get(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let card = query.get("cardId").cloned();
    let cards: Vec<String> = card.iter().cloned().collect();
    if let Some(r) = gate(&state, &headers, &cards).await {
        return r;
    }
    match card {
        Some(card) => single_answer(&state, &card),
        None => error(StatusCode::BAD_REQUEST, "expected ?cardId=..."),
    }
}

async fn resolve_batch(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let cards: Option<Vec<String>> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("cardIds")?.as_array()?.iter().map(|c| c.as_str().map(str::to_owned)).collect());
    if let Some(r) = gate(&state, &headers, cards.as_deref().unwrap_or_default()).await {
        return r;
    }
    let Some(cards) = cards else {
        return error(StatusCode::BAD_REQUEST, r#"expected {"cardIds": ["...", ...]}"#);
    };
    let mut results = Vec::new();
    for card in &cards {
        for guid in guids_of(&state, card) {
            results.push(json!({ "cardId": card, "patientGuid": guid }));
        }
    }
    json_response(StatusCode::OK, &json!({ "results": results }))
}
