//! Assembling a pipeline: config → plugins → sandboxed stage pools.
//!
//! This is where grants become capabilities: each stage's context holds
//! only what its section of the pipeline file names. It is also where
//! `ferry check` lives, because checking a pipeline means doing everything
//! a run does up to the first item, one stage at a time, and saying which
//! stage and which grant is wrong ([`check_stages`]; `crate::check` adds
//! `[serve]` and formats the lines).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;

use crate::caps::{http, object_store, sql, StageContext};
use crate::config::{Pipeline, Role, Stage};
use crate::ledger::{Backoff, Indexer, SqliteLedger};
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
    /// Where the ledger lives, as a real path (as far as it exists).
    state_dir: PathBuf,
}

/// `p` with symlinks resolved as far as it exists, the rest appended:
/// paths that do not exist yet (a state folder before the first run) can
/// still be compared with real ones.
fn real_path(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    let mut missing = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(real) = cur.canonicalize() {
            let mut out = real;
            for m in missing.iter().rev() {
                out.push(m);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses grants that would hand a plugin far more than it needs, and a
/// store that would write where ferry reads or where nothing is mounted.
/// The same checks stop `run`, `serve` and `check`. Returns the stage's
/// fs roots as real paths (what its context checks file access against).
fn check_locations(shared: &Shared, pipeline: &Pipeline, stage: &Stage) -> Result<BTreeMap<String, PathBuf>> {
    let sec = stage.role.section();
    let mut fs_roots = BTreeMap::new();
    for (name, path) in &stage.grants.fs {
        let real = path
            .canonicalize()
            .with_context(|| format!("[{sec}] grants.fs.{name}: folder {} is not accessible", path.display()))?;
        if !real.is_dir() {
            bail!("[{sec}] grants.fs.{name}: {} is not a folder", path.display());
        }
        if real.parent().is_none() {
            bail!(
                "[{sec}] grants.fs.{name} = {:?} grants the whole machine; grant only the folder the plugin reads (e.g. the PDATA share)",
                path.display().to_string()
            );
        }
        if shared.state_dir.starts_with(&real) {
            bail!(
                "[{sec}] grants.fs.{name} ({}) contains ferry's state folder {} (the ledger); grant a narrower folder or move [pipeline] state_dir",
                real.display(),
                shared.state_dir.display()
            );
        }
        fs_roots.insert(name.clone(), real);
    }
    if let Some(crate::config::ObjectStoreGrant::Fs { path }) = &stage.grants.object_store {
        let real = path.canonicalize().map_err(|e| {
            anyhow::anyhow!(
                "[{sec}] grants.object_store: the store folder {} does not exist or is not accessible ({e}); create it \
                 (ferry never creates the store's root, so that a share that is not mounted is not filled from the local disk)",
                path.display()
            )
        })?;
        if !real.is_dir() {
            bail!("[{sec}] grants.object_store: {} is not a folder", path.display());
        }
        if real.parent().is_none() {
            bail!("[{sec}] grants.object_store: the store folder must not be / itself; give it a folder of its own");
        }
        for s in &pipeline.stages {
            for (name, root) in &s.grants.fs {
                let root_real = real_path(root);
                if real.starts_with(&root_real) || root_real.starts_with(&real) {
                    bail!(
                        "[{sec}] grants.object_store: the store folder {} overlaps fs root `{name}` ({}) granted to [{}]; \
                         ferry would read back what it writes: keep the destination outside every source folder",
                        real.display(),
                        root_real.display(),
                        s.role
                    );
                }
            }
        }
    }
    Ok(fs_roots)
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
            state_dir: real_path(&pipeline.state_dir),
        })
    }

    /// `fs_roots`: what [`check_locations`] returned for the stage.
    fn context(&self, stage: &Stage, plugin: &Plugin, fs_roots: BTreeMap<String, PathBuf>) -> Arc<StageContext> {
        Arc::new(StageContext {
            role: stage.role,
            plugin_name: plugin.name(),
            grants: stage.grants.clone(),
            fs_roots,
            all_fs_roots: self.all_fs_roots.clone(),
            sql: self.sql.clone(),
            http: self.http.clone(),
            object_store: stage.grants.object_store.as_ref().map(object_store::open),
        })
    }

    /// A pool for `stage`, after [`check_locations`] (which gives `fs_roots`).
    fn pool(&self, stage: &Stage, plugin: &Plugin, fs_roots: BTreeMap<String, PathBuf>) -> Result<StagePool> {
        let ctx = self.context(stage, plugin, fs_roots);
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
            let fs_roots = check_locations(&shared, &pipeline, stage)?;
            let pool = shared.pool(stage, &plugin, fs_roots)?;
            pool.warm_up().await.map_err(anyhow::Error::new)?;
            plugins.insert(stage.role, plugin);
            pools.insert(stage.role, Arc::new(pool));
        }
        let ledger = Arc::new(
            SqliteLedger::open(&pipeline.ledger_path())
                .with_context(|| "opening the ledger (set [pipeline] state_dir to move it)".to_string())?,
        );
        let stages = Stages {
            source: pools.remove(&Role::Source).expect("source is required"),
            extractor: pools.remove(&Role::Extractor),
            resolver: pools.remove(&Role::Resolver).expect("resolver is required"),
            store: pools.remove(&Role::Store).expect("store is required"),
            on_stored: vec![Arc::new(Indexer(ledger.clone()))],
            ledger,
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
            min_age: p.min_age,
        }
    }

    /// One pass over the source; see [`runner::run_once`].
    pub async fn run_once(&self, cancel: CancellationToken, summary: Arc<Summary>) {
        runner::run_once(&self.stages, &self.settings(), cancel, summary).await
    }
}

/// Checks each stage of a pipeline as far as it can without running it:
/// per stage, what was checked (`Ok`) or what is wrong and how to fix it.
/// [`crate::check`] adds `[serve]` and prints the lines.
pub async fn check_stages(pipeline: &Pipeline, options: &Options) -> Result<Vec<(Role, Result<String, String>)>> {
    let shared = Shared::new(pipeline)?;
    let mut out = Vec::new();
    for stage in &pipeline.stages {
        let r = check_stage(&shared, pipeline, stage, options).await.map_err(|e| format!("{e:#}"));
        out.push((stage.role, r));
    }
    Ok(out)
}

async fn check_stage(shared: &Shared, pipeline: &Pipeline, stage: &Stage, options: &Options) -> Result<String> {
    let plugin = plugin::load(&shared.engine, &stage.plugin, options.cache_dir.as_deref())?;
    plugin.check_role(stage.role)?;
    let fs_roots = check_locations(shared, pipeline, stage)?;
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
        let rd =
            std::fs::read_dir(path).with_context(|| format!("grants.fs.{name}: cannot list {}", path.display()))?;
        drop(rd);
        granted.push(format!("fs:{name}"));
    }
    for c in &g.sql {
        shared.sql.probe(c).await.map_err(|e| {
            anyhow::anyhow!("grants.sql: connection `{c}` does not work: {} (see [connections.{c}])", e.message())
        })?;
        granted.push(format!("sql:{c}"));
    }
    for h in &g.http {
        granted.push(format!("http:{h}"));
    }
    if let Some(os) = &g.object_store {
        let store = object_store::open(os);
        store.probe().await.map_err(|e| {
            anyhow::anyhow!("grants.object_store: {} is not writable: {}", store.describe(), e.message())
        })?;
        granted.push(format!("store:{}", store.describe()));
    }
    let pool = shared.pool(stage, &plugin, fs_roots)?;
    pool.warm_up().await?;
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

/// The renderer `ferry serve` makes previews with: `[serve.preview]`'s
/// plugin with no grants at all. The only file it can read is the one
/// handed to each call, from `download_dir`, which it sees as fs root
/// `root`.
pub fn renderer(
    engine: &Engine,
    pipeline: &Pipeline,
    cfg: &crate::config::PreviewConfig,
    (root, download_dir): (&str, &Path),
    options: &Options,
) -> Result<StagePool> {
    let path = pipeline.find_plugin(&cfg.plugin).map_err(|m| anyhow::anyhow!("[serve.preview] plugin: {m}"))?;
    let plugin = plugin::load(engine, &path, options.cache_dir.as_deref())?;
    std::fs::create_dir_all(download_dir)
        .with_context(|| format!("creating the preview download folder {}", download_dir.display()))?;
    let real = download_dir.canonicalize()?;
    let ctx = Arc::new(StageContext {
        role: Role::Renderer,
        plugin_name: plugin.name(),
        grants: crate::config::Grants::default(),
        fs_roots: BTreeMap::new(),
        all_fs_roots: BTreeMap::from([(root.to_owned(), real)]),
        sql: Arc::new(sql::Connections::new(&BTreeMap::new())),
        http: http::Client::new(),
        object_store: None,
    });
    let config_json =
        serde_json::to_string(&toml::Value::Table(cfg.config.clone())).expect("TOML values are valid JSON");
    StagePool::new(engine, &plugin, ctx, cfg.limits.clone(), config_json)
}

/// Loads a pipeline file (for binaries): config errors as they are.
pub fn load_pipeline(path: &Path) -> Result<Pipeline> {
    Ok(Pipeline::load(path)?)
}
