//! `ferry serve`: the pipeline on its schedule plus an HTTP service.
//!
//! One process does both because a clinic runs one thing: the pipeline
//! moving images every few minutes, and next to it the API the practice
//! system (and the web page) use to find a patient's images, look at them
//! and ask for a re-sync. Both share the ledger, and passes — scheduled or
//! asked for through the API — never overlap (see [`passes`]).
//!
//! ```text
//! GET  /                       the web page (no token)           web
//! GET  /healthz                the process answers (no token)
//! GET  /readyz                 store and ledger answer (no token)
//! GET  /metrics                Prometheus/OpenMetrics (no token)  metrics
//! ...  /api/v1/...             the REST API (JWT)                 api
//! GET  /api/v1/openapi.json    its OpenAPI document
//! ```
//!
//! Modules: [`api`] (handlers, OpenAPI), [`auth`] (JWT and roles),
//! [`preview`] (previews through the sandboxed renderer), [`web`] (the page), [`passes`] (schedule and
//! sync jobs), [`metrics`], [`problem`] (RFC 7807 errors).
//!
//! Library use (tests, embedding): [`start`] returns a [`Running`] service
//! with its bound address; [`Running::shutdown`] stops it the way Ctrl-C
//! does — no new pass, in-flight items finish, open requests complete.

pub mod access;
pub mod api;
pub mod auth;
pub mod authz;
pub mod config;
pub mod documents;
pub mod metrics;
pub mod passes;
pub mod preview;
pub mod problem;
pub mod records;
pub mod requests;
pub mod web;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::caps::object_store::{self, ObjectStore};
use crate::config::{Pipeline, Role as StageRole, ServeConfig};
use crate::ledger::{Ledger, SqliteLedger};
use crate::runtime::{Options, Runtime};
use auth::Auth;
use metrics::Metrics;
use passes::{Jobs, Passes};
use preview::Previews;
use problem::Problem;

/// The schedule when the pipeline file has no `[schedule]`.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5 * 60);
/// How long a stop waits for open HTTP requests (long downloads) to end.
const HTTP_DRAIN: Duration = Duration::from_secs(30);

/// Why the service could not start (or stopped badly).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("starting the pipeline: {0:#}")]
    Runtime(anyhow::Error),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("cannot listen on {addr}: {source} (set [serve] listen or --listen)")]
    Bind { addr: String, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// What every handler can reach.
pub struct AppState {
    pub(crate) auth: Auth,
    /// The store stage's destination, read back.
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) presign: bool,
    /// The API's own connection (WAL: reads do not wait for the pipeline).
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) previews: Previews,
    /// `[serve.preview] max_file`.
    pub(crate) max_preview: u64,
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) metrics: Arc<Metrics>,
    /// The OpenAPI document, serialised once.
    pub(crate) openapi: OnceLock<String>,
    /// Cancelled when the service stops.
    pub(crate) stopping: CancellationToken,
    /// `[serve.records]`: patient records (none: not enabled).
    pub(crate) records: Option<records::Records>,
    /// `[serve.records] max_upload`.
    pub(crate) max_upload: u64,
    /// Where uploads wait while they are checked (`state_dir/uploads`).
    pub(crate) uploads_dir: std::path::PathBuf,
    /// Does the pipeline move documents (its source a document source)?
    /// Then a patient's items are documents, listed with theirs.
    pub(crate) documents_pipeline: bool,
    /// Passes: an upload nudges one when the pipeline moves documents
    /// (its source may be `registry-documents`: upload → platform).
    pub(crate) passes: Arc<Passes>,
    /// `[serve.requests]`: where document requests go (none: refused).
    pub(crate) requests: Option<requests::Requests>,
}

/// A started service.
pub struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    scheduler: JoinHandle<()>,
    passes: Arc<Passes>,
}

impl Running {
    /// Where it listens (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Passes finished so far (scheduled and sync jobs).
    pub fn passes_completed(&self) -> u64 {
        self.passes.completed()
    }

    /// Waits until at least `n` passes have finished.
    pub async fn wait_for_passes(&self, n: u64) {
        let mut rx = self.passes.subscribe();
        let _ = rx.wait_for(|done| *done >= n).await;
    }

    /// Stops like Ctrl-C: no new pass, the current one finishes its items
    /// in flight, open HTTP requests get [`HTTP_DRAIN`] to complete.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.stop.cancel();
        let _ = self.scheduler.await;
        self.passes.drained().await;
        let server = self.server;
        match tokio::time::timeout(HTTP_DRAIN, server).await {
            Ok(Ok(r)) => r.map_err(ServeError::Http)?,
            Ok(Err(e)) => tracing::error!("the HTTP server task failed: {e}"),
            Err(_) => tracing::warn!("open requests did not finish within {HTTP_DRAIN:?}; stopping anyway"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `[serve]`, or its defaults when the file has none.
fn serve_config(pipeline: &Pipeline) -> ServeConfig {
    pipeline
        .serve
        .clone()
        .unwrap_or_else(|| toml::from_str::<ServeConfig>("").expect("every [serve] key has a default"))
}

/// What `start` refuses before it listens, as one check: the key source
/// (exactly one, of the right kind, or dev mode without any), dev mode
/// only on loopback, a store to read images back from. `listen` is the
/// address that will be bound.
fn validate(pipeline: &Pipeline, cfg: &ServeConfig, listen: &[SocketAddr]) -> Result<Auth, ServeError> {
    let auth = Auth::from_config(&cfg.auth)?;
    dev_mode_on_loopback(&auth, listen)?;
    if service_store(pipeline, cfg).is_none() {
        return Err(ServeError::Config(
            "[store] has no grants.object_store and [serve] no store: ferry serve reads images back from the store \
             stage's destination, or from `[serve] store = { kind = \"s3\", ... }` (where uploads are kept too)"
                .into(),
        ));
    }
    Ok(auth)
}

/// The object store the service reads and writes: `[serve] store`, else
/// the store stage's.
fn service_store(pipeline: &Pipeline, cfg: &ServeConfig) -> Option<crate::config::ObjectStoreGrant> {
    cfg.store.clone().or_else(|| pipeline.stage(StageRole::Store).and_then(|s| s.grants.object_store.clone()))
}

/// Authentication may be off only where nobody else can connect.
fn dev_mode_on_loopback(auth: &Auth, listen: &[SocketAddr]) -> Result<(), ServeError> {
    match listen.iter().find(|a| !a.ip().is_loopback()) {
        Some(addr) if auth.is_dev_mode() => Err(ServeError::Config(format!(
            "[serve.auth] dev_mode = true turns authentication off; it is only allowed on a loopback address, not {addr}"
        ))),
        _ => Ok(()),
    }
}

/// `[serve] listen` resolved to socket addresses, without binding.
async fn listen_addrs(listen: &str) -> Result<Vec<SocketAddr>, ServeError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| ServeError::Config(format!("[serve] listen = {listen:?} is not an address to listen on ({e}); use HOST:PORT, e.g. \"127.0.0.1:8080\"")))?
        .collect();
    if addrs.is_empty() {
        return Err(ServeError::Config(format!("[serve] listen = {listen:?} resolves to no address")));
    }
    Ok(addrs)
}

/// `ferry check` for `[serve]`: everything [`start`] would refuse, without
/// listening or running a pass; plus a renderer that loads and configures.
pub async fn check(pipeline: &Pipeline, engine: &wasmtime::Engine, options: &Options) -> anyhow::Result<String> {
    let cfg = serve_config(pipeline);
    let addrs = listen_addrs(&cfg.listen).await?;
    let auth = validate(pipeline, &cfg, &addrs)?;
    let dir = tempfile::tempdir()?;
    let renderer =
        crate::runtime::renderer(engine, pipeline, &cfg.preview, (preview::DOWNLOAD_ROOT, dir.path()), options)?;
    renderer.warm_up().await?;
    let records = match &cfg.records {
        None => "off".to_string(),
        Some(r) => {
            let r = records::Records::new(r).map_err(|e| anyhow::anyhow!("[serve.records]: {e}"))?;
            let ids = r.key_ids();
            format!(
                "sealed with key {}{}",
                ids[0],
                if ids.len() > 1 { format!(" (+{} previous)", ids.len() - 1) } else { String::new() }
            )
        }
    };
    let requests = match &cfg.requests {
        None => "off".to_string(),
        Some(r) => requests::Requests::new(r).map_err(|e| anyhow::anyhow!("[serve.requests]: {e:#}"))?.describe(),
    };
    Ok(format!(
        "listen {}; auth: {}; previews: {} ({} at once, {} MiB each); patient records: {records}; document requests: {requests}",
        cfg.listen,
        auth.describe(),
        renderer.context().plugin_name,
        cfg.preview.concurrency(),
        cfg.preview.limits.memory >> 20
    ))
}

/// Loads the pipeline, binds `listen` (else `[serve] listen`), starts the
/// schedule and the HTTP server. Configuration problems (auth keys, a
/// store without an object store grant, plugins) are errors here, before
/// anything listens.
pub async fn start(pipeline: Pipeline, listen: Option<String>, options: &Options) -> Result<Running, ServeError> {
    let cfg = serve_config(&pipeline);
    let listen = listen.unwrap_or_else(|| cfg.listen.clone());
    let auth = validate(&pipeline, &cfg, &listen_addrs(&listen).await?)?;
    let grant = service_store(&pipeline, &cfg).expect("validated");
    let store = object_store::open(&grant);
    let every = pipeline.schedule.as_ref().and_then(|s| s.every).unwrap_or(DEFAULT_EVERY);
    let previews_dir = cfg.preview_cache.clone().unwrap_or_else(|| pipeline.state_dir.join("previews"));
    let ledger_path = pipeline.ledger_path();
    let uploads_dir = pipeline.state_dir.join("uploads");
    // what an interrupted upload left; nothing in it is anyone's yet
    let _ = std::fs::remove_dir_all(&uploads_dir);

    let runtime = Arc::new(Runtime::new(pipeline, options).await.map_err(ServeError::Runtime)?);
    let documents_pipeline = runtime.stages.source.is_document_source();
    let download_dir = previews_dir.join("tmp");
    let renderer = crate::runtime::renderer(
        &runtime.engine,
        &runtime.pipeline,
        &cfg.preview,
        (preview::DOWNLOAD_ROOT, &download_dir),
        options,
    )
    .map_err(ServeError::Runtime)?;
    renderer.warm_up().await.map_err(|e| ServeError::Runtime(e.into()))?;
    let metrics = Arc::new(Metrics::new());
    let previews = Previews::new(
        previews_dir,
        download_dir.canonicalize().unwrap_or(download_dir),
        Arc::new(renderer),
        cfg.preview.concurrency(),
        metrics.clone(),
    );
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(&ledger_path)?);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| ServeError::Bind { addr: listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: listen.clone(), source })?;
    // the bound address, in case the name resolved differently
    dev_mode_on_loopback(&auth, &[addr])?;

    let stop = CancellationToken::new();
    let records = match &cfg.records {
        None => None,
        Some(r) => Some(records::Records::new(r).map_err(|e| ServeError::Config(format!("[serve.records]: {e}")))?),
    };
    let requests = match &cfg.requests {
        None => None,
        Some(r) => {
            Some(requests::Requests::new(r).map_err(|e| ServeError::Config(format!("[serve.requests]: {e:#}")))?)
        }
    };
    let passes = Arc::new(Passes::new(runtime.clone(), metrics.clone(), ledger.clone(), stop.clone()));
    let jobs = Arc::new(Jobs::new(passes.clone()));
    tracing::info!(auth = auth.describe(), store = %store.describe(), presign = cfg.presign, "API ready");
    let state = Arc::new(AppState {
        auth,
        store,
        presign: cfg.presign,
        ledger,
        previews,
        max_preview: cfg.preview.max_file,
        jobs,
        metrics,
        openapi: OnceLock::new(),
        stopping: stop.clone(),
        max_upload: cfg.records.as_ref().map_or(0, |r| r.max_upload),
        records,
        uploads_dir,
        documents_pipeline,
        passes: passes.clone(),
        requests,
    });
    let app = app(state);
    let server = {
        use axum::serve::ListenerExt;
        // no Nagle: a streamed body's last small chunk must not wait for
        // the client's delayed ACK (~40 ms per response)
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
        })
    };
    tracing::info!("listening on http://{addr}");
    let scheduler = tokio::spawn(passes.clone().schedule(every));
    Ok(Running { addr, stop, server, scheduler, passes })
}

/// The whole HTTP surface.
fn app(state: Arc<AppState>) -> Router {
    let (api, mut doc) = OpenApiRouter::with_openapi(api::doc()).nest("/api/v1", api::router()).split_for_parts();
    api::complete(&mut doc);
    let _ = state.openapi.set(doc.to_pretty_json().expect("the OpenAPI document serialises"));
    let api = api.layer(axum::middleware::from_fn_with_state(state.clone(), access::record));
    let metrics_state = state.metrics.clone();
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
        .route("/metrics", get(metrics::handler).with_state(metrics_state.clone()))
        .merge(web::router())
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(metrics::tag_route))
        .layer(axum::middleware::from_fn_with_state(metrics_state, metrics::track))
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this path does not take that method (see Allow)",
    )
}

/// Liveness: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the store and the ledger answer.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.stopping.is_cancelled() {
        return Problem::unavailable("the service is stopping").into_response();
    }
    let store = match tokio::time::timeout(Duration::from_secs(5), state.store.probe()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(_) => Err("no answer within 5s".into()),
    };
    let ledger = {
        let ledger = state.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.ping().map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    };
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unreachable" };
    let checks = serde_json::json!({ "store": word(&store), "ledger": word(&ledger) });
    if let (Ok(()), Ok(())) = (&store, &ledger) {
        return Json(serde_json::json!({ "status": "ready", "checks": checks })).into_response();
    }
    // details (bucket names, paths) go to the log, not to unauthenticated callers
    if let Err(e) = &store {
        tracing::warn!("readiness: the store does not answer: {e}");
    }
    if let Err(e) = &ledger {
        tracing::warn!("readiness: the ledger does not answer: {e}");
    }
    let mut res =
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "not ready", "checks": checks })))
            .into_response();
    res.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    res
}

/// Runs the pipeline on its schedule and serves HTTP until Ctrl-C (or
/// SIGTERM). A second Ctrl-C aborts at once.
pub async fn serve(pipeline: Pipeline, listen: Option<String>, options: &Options) -> anyhow::Result<()> {
    let running = start(pipeline, listen, options).await?;
    stop_signal().await;
    eprintln!("stopping: finishing items in flight (Ctrl-C again to abort)");
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("aborted");
            std::process::exit(130);
        }
    });
    running.shutdown().await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM where there are signals.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
