//! Assembling a pipeline: config → plugins → sandboxed stage pools.
//!
//! This is where grants become capabilities: each stage's context holds
//! only what its section of the pipeline file names. It is also where
//! `ferry check` lives, because checking a pipeline means doing everything
//! a run does up to the first item, one stage at a time, and saying which
//! stage and which grant is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;

use crate::caps::{http, object_store, sql, StageContext};
use crate::config::{Pipeline, Role, Stage};
use crate::ledger::{Backoff, SqliteLedger};
use crate::plugin::{self, Plugin};
use crate::runner::{self, Settings, Stages, Summary};
use crate::stage::StagePool;

/// Options that are not part of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where compiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Options {
    pub fn from_env() -> Self {
        Options { cache_dir: plugin::default_cache_dir() }
    }
}

/// A pipeline with its plugins loaded and every stage ready.
pub struct Runtime {
    pub pipeline: Pipeline,
    pub engine: Engine,
    pub stages: Stages,
    pub plugins: BTreeMap<Role, Plugin>,
}

/// Things every stage context shares.
struct Shared {
    engine: Engine,
    all_fs_roots: BTreeMap<String, PathBuf>,
    sql: Arc<sql::Connections>,
    http: http::Client,
}

impl Shared {
    fn new(pipeline: &Pipeline) -> Result<Shared> {
        let engine = crate::stage::engine().context("starting the WebAssembly engine")?;
        let mut all_fs_roots = BTreeMap::new();
        for (name, path) in pipeline.fs_roots() {
            // a missing root is reported per stage by `check`; here keep the
            // path so the stage that has the grant gets the error
            all_fs_roots.insert(name, path.canonicalize().unwrap_or(path));
        }
        Ok(Shared {
            engine,
            all_fs_roots,
            sql: Arc::new(sql::Connections::new(&pipeline.connections)),
            http: http::Client::new(),
        })
    }

    fn context(&self, stage: &Stage, plugin: &Plugin) -> Result<Arc<StageContext>> {
        let mut fs_roots = BTreeMap::new();
        for (name, path) in &stage.grants.fs {
            let real = path.canonicalize().with_context(|| {
                format!("[{}] grants.fs.{name}: folder {} is not accessible", stage.role, path.display())
            })?;
            if !real.is_dir() {
                bail!("[{}] grants.fs.{name}: {} is not a folder", stage.role, path.display());
            }
            fs_roots.insert(name.clone(), real);
        }
        Ok(Arc::new(StageContext {
            role: stage.role,
            plugin_name: plugin.name(),
            grants: stage.grants.clone(),
            fs_roots,
            all_fs_roots: self.all_fs_roots.clone(),
            sql: self.sql.clone(),
            http: self.http.clone(),
            object_store: stage.grants.object_store.as_ref().map(object_store::open),
        }))
    }

    fn pool(&self, stage: &Stage, plugin: &Plugin) -> Result<StagePool> {
        let ctx = self.context(stage, plugin)?;
        StagePool::new(&self.engine, plugin, ctx, stage.limits.clone(), stage.config_json.clone())
    }
}

impl Runtime {
    /// Loads every plugin, builds every stage and configures one instance
    /// of each, so that configuration mistakes stop the run before the
    /// first item.
    pub async fn new(pipeline: Pipeline, options: &Options) -> Result<Runtime> {
        let shared = Shared::new(&pipeline)?;
        let mut plugins = BTreeMap::new();
        let mut pools: BTreeMap<Role, Arc<StagePool>> = BTreeMap::new();
        for stage in &pipeline.stages {
            let plugin = plugin::load(&shared.engine, &stage.plugin, options.cache_dir.as_deref())?;
            let pool = shared.pool(stage, &plugin)?;
            pool.warm_up().await.map_err(anyhow::Error::new)?;
            plugins.insert(stage.role, plugin);
            pools.insert(stage.role, Arc::new(pool));
        }
        let ledger = SqliteLedger::open(&pipeline.ledger_path())
            .with_context(|| format!("opening the ledger (set [pipeline] state_dir to move it)"))?;
        let stages = Stages {
            source: pools.remove(&Role::Source).expect("source is required"),
            extractor: pools.remove(&Role::Extractor),
            resolver: pools.remove(&Role::Resolver).expect("resolver is required"),
            store: pools.remove(&Role::Store).expect("store is required"),
            ledger: Some(Arc::new(ledger)),
            fs_roots: shared.all_fs_roots.clone(),
        };
        Ok(Runtime { engine: shared.engine, pipeline, stages, plugins })
    }

    pub fn settings(&self) -> Settings {
        let p = &self.pipeline;
        let conc = |r| p.stage(r).map(|s| s.concurrency).unwrap_or(1);
        let retries = |r| p.stage(r).map(|s| s.retries).unwrap_or(0);
        Settings {
            queue_depth: p.queue_depth,
            extractor_concurrency: conc(Role::Extractor),
            resolver_concurrency: conc(Role::Resolver),
            store_concurrency: conc(Role::Store),
            source_retries: retries(Role::Source),
            extractor_retries: retries(Role::Extractor),
            resolver_retries: retries(Role::Resolver),
            store_retries: retries(Role::Store),
            resolve_batch: 50,
            backoff: Backoff { base: p.retry_after, max: p.retry_max },
            quarantine_backoff: Backoff { base: p.retry_max, max: p.retry_max },
            cache: p.cache.clone(),
            only: None,
            force: false,
        }
    }

    /// One pass over the source; see [`runner::run_once`].
    pub async fn run_once(&self, cancel: CancellationToken, summary: Arc<Summary>) {
        runner::run_once(&self.stages, &self.settings(), cancel, summary).await
    }
}

/// One line of `ferry check`.
#[derive(Debug, Clone)]
pub struct CheckLine {
    pub role: Role,
    pub ok: bool,
    /// What was checked, or what is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<5} {:<10} {}", if self.ok { "ok" } else { "FAIL" }, self.role.section(), self.message)
    }
}

/// Checks each stage of a pipeline as far as it can without running it.
pub async fn check(pipeline: &Pipeline, options: &Options) -> Result<Vec<CheckLine>> {
    let shared = Shared::new(pipeline)?;
    let mut lines = Vec::new();
    for stage in &pipeline.stages {
        let (ok, message) = match check_stage(&shared, pipeline, stage, options).await {
            Ok(m) => (true, m),
            Err(e) => (false, format!("{e:#}")),
        };
        lines.push(CheckLine { role: stage.role, ok, message });
    }
    Ok(lines)
}

async fn check_stage(shared: &Shared, pipeline: &Pipeline, stage: &Stage, options: &Options) -> Result<String> {
    let plugin = plugin::load(&shared.engine, &stage.plugin, options.cache_dir.as_deref())?;
    plugin.check_role(stage.role)?;
    let sec = stage.role.section();
    let g = &stage.grants;
    // a plugin that imports a capability it was not granted will fail on
    // its first call: say so now
    let needs = [
        ("sql", g.sql.is_empty(), "grants.sql = [\"<connection>\"]"),
        ("http", g.http.is_empty(), "grants.http = [\"<host>\"]"),
        ("object-store", g.object_store.is_none(), "grants.object_store = { kind = \"fs\", path = \"...\" }"),
    ];
    for (cap, missing, fix) in needs {
        if missing && plugin.imports_capability(cap) {
            bail!("{} uses the `{cap}` capability but [{sec}] grants none: add `{fix}`", plugin.name());
        }
    }
    if g.fs.is_empty() && matches!(stage.role, Role::Source | Role::Resolver) && plugin.imports_capability("fs") {
        // sources and resolvers read their own files, not an item's
        tracing::debug!("{} imports fs without an fs grant", plugin.name());
    }
    let mut granted = Vec::new();
    for (name, path) in &g.fs {
        let rd = std::fs::read_dir(path)
            .with_context(|| format!("grants.fs.{name}: cannot list {}", path.display()))?;
        drop(rd);
        granted.push(format!("fs:{name}"));
    }
    for c in &g.sql {
        shared.sql.probe(c).await.map_err(|e| {
            anyhow::anyhow!("grants.sql: connection `{c}` does not work: {} (see [connections.{c}])", host_error_text(&e))
        })?;
        granted.push(format!("sql:{c}"));
    }
    for h in &g.http {
        granted.push(format!("http:{h}"));
    }
    if let Some(os) = &g.object_store {
        let store = object_store::open(os);
        store
            .probe()
            .await
            .map_err(|e| anyhow::anyhow!("grants.object_store: {} is not writable: {}", store.describe(), host_error_text(&e)))?;
        granted.push(format!("store:{}", store.describe()));
    }
    let pool = shared.pool(stage, &plugin)?;
    pool.warm_up().await?;
    let _ = pipeline;
    let mut tested = String::new();
    if stage.role == Role::Resolver {
        // a harmless lookup: proves the API (or file) answers and the
        // credentials work, whatever the answer is
        let probe = crate::bindings::types::PatientKey { scheme: "card-id".into(), value: "ferry-check-probe".into() };
        pool.resolve(&[probe])
            .await
            .map_err(|e| anyhow::anyhow!("{} configured, but a test lookup failed: {e}", plugin.name()))?;
        tested = "; test lookup answered".into();
    }
    Ok(format!(
        "{} ({} KiB{}) configured{tested}; grants: {}",
        plugin.name(),
        plugin.size / 1024,
        if plugin.cached { ", cached" } else { "" },
        if granted.is_empty() { "none".into() } else { granted.join(" ") }
    ))
}

fn host_error_text(e: &crate::bindings::types::HostError) -> String {
    use crate::bindings::types::HostError::*;
    match e {
        Denied(m) | NotFound(m) | Invalid(m) | Unavailable(m) | Failed(m) => m.clone(),
    }
}

/// Loads a pipeline file (for binaries): config errors as they are.
pub fn load_pipeline(path: &Path) -> Result<Pipeline> {
    Ok(Pipeline::load(path)?)
}
