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

use crate::caps::{Caps, Prepare, SharedCaps, StageContext};
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
    caps: SharedCaps,
    /// Where the ledger lives, as a real path (as far as it exists).
    state_dir: PathBuf,
    /// The store stage's upload pace.
    pace: crate::pace::PaceLimits,
}

/// `dir` as a real path, created if need be (the spool folder).
fn real_path_of_dir(dir: &Path) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    dir.canonicalize().unwrap_or_else(|_| crate::util::real_path(dir))
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
        // the spool: response bodies written host-side, read as items' files
        let spool = pipeline.spool_dir();
        all_fs_roots.insert(crate::caps::http::spool::ROOT.to_owned(), real_path_of_dir(&spool));
        Ok(Shared {
            engine,
            all_fs_roots,
            caps: SharedCaps::init(Some(pipeline)),
            state_dir: crate::util::real_path(&pipeline.state_dir),
            // one bucket for every upload of the pipeline
            pace: crate::pace::PaceLimits {
                throttle: pipeline.max_rate.map(crate::pace::Throttle::new),
                windows: pipeline.windows.clone().map(Arc::new),
            },
        })
    }

    /// The stage's capabilities, from its grants, checked: grants that
    /// would hand a plugin far more than it needs, and a store that would
    /// write where ferry reads or where nothing is mounted, are refused
    /// (the same checks stop `run`, `serve` and `check`).
    fn caps(&self, pipeline: &Pipeline, stage: &Stage) -> Result<Caps> {
        Caps::prepare(&self.caps, &Prepare { pipeline, stage, state_dir: &self.state_dir })
    }

    fn context(&self, stage: &Stage, plugin: &Plugin, caps: Caps) -> Arc<StageContext> {
        Arc::new(StageContext {
            role: stage.role,
            plugin_name: plugin.name(),
            all_fs_roots: self.all_fs_roots.clone(),
            caps,
            pace: if stage.role == Role::Store { self.pace.clone() } else { Default::default() },
        })
    }

    /// A pool for `stage`, with its prepared capabilities.
    fn pool(&self, stage: &Stage, plugin: &Plugin, caps: Caps) -> Result<StagePool> {
        let ctx = self.context(stage, plugin, caps);
        StagePool::new(&self.engine, plugin, ctx, stage.limits.clone(), stage.config_json.clone())
    }
}

impl Runtime {
    /// Loads every plugin, builds every stage and configures one instance
    /// of each, so that configuration mistakes stop the run before the
    /// first item.
    pub async fn new(pipeline: Pipeline, options: &Options) -> Result<Runtime> {
        let shared = Shared::new(&pipeline)?;
        // what a crashed run left in the spool belongs to no item any more
        let spool = crate::caps::http::spool::Spool { dir: pipeline.spool_dir(), max: pipeline.spool_max };
        spool.clear().with_context(|| format!("clearing the spool {}", spool.dir.display()))?;
        let mut plugins = BTreeMap::new();
        let mut pools: BTreeMap<Role, Arc<StagePool>> = BTreeMap::new();
        for stage in &pipeline.stages {
            let plugin = plugin::load(&shared.engine, &stage.plugin, options.cache_dir.as_deref())?;
            let caps = shared.caps(&pipeline, stage)?;
            let pool = shared.pool(stage, &plugin, caps)?;
            pool.warm_up().await.map_err(anyhow::Error::new)?;
            plugins.insert(stage.role, plugin);
            pools.insert(stage.role, Arc::new(pool));
        }
        let ledger = Arc::new(
            SqliteLedger::open(&pipeline.ledger_path())
                .with_context(|| "opening the ledger (set [pipeline] state_dir to move it)".to_string())?,
        );
        let source = pools.remove(&Role::Source).expect("source is required");
        let resume_key = source.is_document_source().then(|| {
            let s = pipeline.stage(Role::Source).expect("source is required");
            crate::runner::resume::source_key(&s.plugin, &s.config_json)
        });
        let stages = Stages {
            source,
            resume_key,
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
    let caps = shared.caps(pipeline, stage)?;
    // a plugin that imports a capability it was not granted will fail on
    // its first call: say so now
    if let Some((cap, fix)) = caps.missing(|i| plugin.imports_capability(i)) {
        bail!("{} uses the `{cap}` capability but [{}] grants none: add `{fix}`", plugin.name(), stage.role.section());
    }
    let granted = caps.probe().await?;
    let pool = shared.pool(stage, &plugin, caps)?;
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
        all_fs_roots: BTreeMap::from([(root.to_owned(), real)]),
        caps: Caps::default(),
        pace: Default::default(),
    });
    let config_json =
        serde_json::to_string(&toml::Value::Table(cfg.config.clone())).expect("TOML values are valid JSON");
    StagePool::new(engine, &plugin, ctx, cfg.limits.clone(), config_json)
}

/// Loads a pipeline file (for binaries): config errors as they are.
pub fn load_pipeline(path: &Path) -> Result<Pipeline> {
    Ok(Pipeline::load(path)?)
}
