//! The pipeline file: what a clinic writes to choose and wire its stages.
//!
//! Parsing is kept apart from the running topology (as in Vector): this
//! module turns TOML into validated plain data with every path resolved
//! and every `${ENV}` substituted, and knows nothing of wasmtime. Every
//! struct denies unknown keys, so a typo is an error that names the key and
//! its line instead of a setting silently ignored.
//!
//! A whole pipeline:
//!
//! ```toml
//! [pipeline]
//! name = "demo"
//! plugin_path = ["../target/plugins"]   # where bare plugin names are looked up
//!
//! [connections.sidexis]
//! kind = "sqlite"
//! path = "../target/demo/site/sidexis.db"
//!
//! [source]
//! plugin = "sidexis"                     # sidexis.wasm on the plugin path
//! grants.fs = { pdata = "../target/demo/site/PDATA" }
//! grants.sql = ["sidexis"]
//! config = { pdata_root = "pdata", connection = "sidexis" }
//!
//! [extractor]
//! plugin = "dicom-meta"
//!
//! [resolver]
//! plugin = "csv-resolver"
//! grants.fs = { maps = "../target/demo/site" }
//! config = { root = "maps", path = "card-map.csv" }
//!
//! [store]
//! plugin = "store"
//! grants.object_store = { kind = "fs", path = "../target/demo/store" }
//! ```

//!
//! Every number has bounds ([`bounds`]), checked here with the key and the
//! bound in the message: `concurrency = 3000000` is a typo, not a wish for
//! three million sandboxes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::caps::object_store::config::{ObjectStoreGrant, S3Grant};
pub use crate::caps::sql::config::{ConnectionConfig, Encrypt, MssqlConfig};
pub use crate::serve::config::{AuthConfig, PreviewConfig, RecordsConfig, ServeConfig};
pub use crate::units::{bounds, parse_bytes, parse_duration, parse_duration_or_zero, Limits, Secret};
use crate::units::{
    check_stage_numbers, de_bytes, de_duration, de_opt_duration_or_zero, show_b, show_d, show_n, within, Problem,
};

/// Errors reading a pipeline file. Each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
    /// Several problems at once, each with its key.
    #[error("{path}: {} problems:{}", problems.len(), problems.iter().map(|(k, m)| format!("\n  {k}: {m}")).collect::<String>())]
    Many { path: PathBuf, problems: Vec<(String, String)> },
}

/// `[pipeline]`: the pipeline's name and shared settings.
///
/// ```toml
/// [pipeline]
/// name = "sidexis-demo"
/// plugin_path = ["plugins"]  # relative to this file; also $FERRY_PLUGIN_DIR
/// queue_depth = 64           # items buffered between two stages
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    pub name: String,
    #[serde(default)]
    pub plugin_path: Vec<PathBuf>,
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Where the ledger lives. Default: `$FERRY_STATE_DIR/NAME`, else
    /// `$XDG_STATE_HOME/ferry/NAME`, else `~/.local/state/ferry/NAME`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// First wait before a parked (unresolved/failed) item is tried again;
    /// doubles per attempt up to `retry_max`. Quarantined items wait
    /// `retry_max` (a person has to look).
    #[serde(default = "default_retry_after", deserialize_with = "de_duration")]
    pub retry_after: Duration,
    #[serde(default = "default_retry_max", deserialize_with = "de_duration")]
    pub retry_max: Duration,
    /// Largest response body `http.send-to-spool` writes to the spool
    /// (`state_dir/spool`); a larger one is refused, nothing kept.
    #[serde(default = "default_spool_max", deserialize_with = "de_bytes")]
    pub spool_max: u64,
}

fn default_spool_max() -> u64 {
    512 << 20
}

fn default_retry_after() -> Duration {
    Duration::from_secs(60)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// `[schedule]`: run one pass after another (`ferry run` keeps going),
/// and when uploads may use the clinic's network.
///
/// ```toml
/// [schedule]
/// every = "5m"                 # from the start of one pass to the start of the next
/// windows = ["19:00-07:00"]    # uploads only then (local time); outside, new items wait
/// ```
///
/// Outside the windows a pass still notices what is new, changed or
/// removed, but a new upload waits for a pass inside a window (the item is
/// *deferred*, `ferry status` says why); a multipart upload in flight
/// pauses at its next part. `windows` works without `every` too (one-shot
/// runs started by the system's scheduler).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub every: Option<Duration>,
    #[serde(default)]
    pub windows: Option<Vec<String>>,
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_opt_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s = String::deserialize(d)?;
    crate::pace::parse_rate(&s).map(Some).map_err(serde::de::Error::custom)
}

/// `[resolver] cache`: how long answers are reused.
///
/// ```toml
/// cache = { ttl = "24h", not_found_ttl = "1h" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// Not-found and ambiguous answers: shorter, a new patient may appear.
    #[serde(default = "default_not_found_ttl", deserialize_with = "de_duration")]
    pub not_found_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { ttl: default_ttl(), not_found_ttl: default_not_found_ttl() }
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_not_found_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_queue_depth() -> usize {
    64
}

/// Options common to every stage (the one wrapper, as in Vector).
///
/// ```toml
/// [extractor]
/// plugin = "dicom-meta"            # a name on the plugin path, or a path to a .wasm
/// concurrency = 4                  # instances working in parallel
/// retries = 2                      # extra attempts on retryable errors within a run
/// limits = { memory = "128MiB", timeout = "30s" }
/// # max_rate = "20Mbit/s"         # [store] only: all uploads of the pipeline together
/// grants.fs = { pdata = "/mnt/PDATA" }
/// config = { }                     # handed to the plugin's configure() as JSON
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub plugin: String,
    #[serde(default)]
    pub grants: Grants,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Resolver only: the resolution cache.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    /// Source only: items whose file was modified less than this long ago
    /// wait for the next pass (the imaging software may still be writing
    /// them). Default 5s; `"0s"` turns it off.
    #[serde(default, deserialize_with = "de_opt_duration_or_zero")]
    pub min_age: Option<Duration>,
    /// Store only: the most all uploads of the pipeline send together,
    /// e.g. `"20Mbit/s"` (a token bucket; concurrent uploads share it
    /// fairly). Default: no cap.
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub max_rate: Option<u64>,
    #[serde(default)]
    pub config: toml::Table,
}

/// Default of `[source] min_age`.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(5);

fn default_concurrency() -> usize {
    2
}
fn default_retries() -> u32 {
    2
}

/// What a stage may touch. Everything not named here is denied.
///
/// ```toml
/// [source.grants]
/// fs = { pdata = "//server/PDATA" }      # read-only roots, by name
/// sql = ["sidexis"]                      # names from [connections]
/// http = ["pms.example.com", "127.0.0.1:8080"]  # allowed hosts (host or host:port)
/// http_auth."pms.example.com" = { kind = "bearer", token = "${PMS_TOKEN}" }  # see HttpAuth
/// object_store = { kind = "fs", path = "/srv/ferry/store" }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    #[serde(default)]
    pub fs: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub sql: Vec<String>,
    #[serde(default)]
    pub http: Vec<String>,
    /// Credentials the host adds to requests to a host of `http`
    /// ([`crate::caps::http::config::HttpAuth`]).
    #[serde(default)]
    pub http_auth: BTreeMap<String, crate::caps::http::config::HttpAuth>,
    #[serde(default)]
    pub object_store: Option<ObjectStoreGrant>,
}

/// The whole pipeline file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    pipeline: PipelineSection,
    #[serde(default)]
    connections: BTreeMap<String, ConnectionConfig>,
    source: StageConfig,
    #[serde(default)]
    extractor: Option<StageConfig>,
    resolver: StageConfig,
    store: StageConfig,
    #[serde(default)]
    schedule: Option<Schedule>,
    #[serde(default)]
    serve: Option<ServeConfig>,
}

/// The stage roles: the four pipeline stages in pipeline order, then the
/// renderer `ferry serve` uses for previews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Source,
    Extractor,
    Resolver,
    Store,
    Renderer,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Source, Role::Extractor, Role::Resolver, Role::Store, Role::Renderer];

    /// The section name in the pipeline file.
    pub fn section(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Extractor => "extractor",
            Role::Resolver => "resolver",
            Role::Store => "store",
            Role::Renderer => "serve.preview",
        }
    }

    /// The WIT world a plugin in this role implements.
    pub fn world(self) -> &'static str {
        match self {
            Role::Source => "source-plugin",
            Role::Extractor => "extractor-plugin",
            Role::Resolver => "resolver-plugin",
            Role::Store => "store-plugin",
            Role::Renderer => "renderer-plugin",
        }
    }

    /// The interface the world exports (and the SDK macro's prefix).
    pub fn export(self) -> &'static str {
        match self {
            Role::Renderer => "renderer",
            r => r.section(),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.section())
    }
}

/// A stage ready to be instantiated: plugin found, paths absolute.
#[derive(Debug, Clone)]
pub struct Stage {
    pub role: Role,
    /// The `.wasm` file.
    pub plugin: PathBuf,
    pub grants: Grants,
    pub limits: Limits,
    pub concurrency: usize,
    pub retries: u32,
    /// The `config` table as JSON, for the plugin's `configure`.
    pub config_json: String,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it came from.
    pub path: PathBuf,
    pub name: String,
    pub queue_depth: usize,
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub stages: Vec<Stage>,
    /// Folder of the ledger.
    pub state_dir: PathBuf,
    pub retry_after: Duration,
    pub retry_max: Duration,
    /// `[pipeline] spool_max`.
    pub spool_max: u64,
    pub schedule: Option<Schedule>,
    pub cache: CacheConfig,
    /// `[serve]`, with paths resolved.
    pub serve: Option<ServeConfig>,
    /// `[source] min_age`.
    pub min_age: Duration,
    /// `[store] max_rate`, bytes per second.
    pub max_rate: Option<u64>,
    /// `[schedule] windows`, parsed.
    pub windows: Option<crate::pace::Windows>,
    /// Where bare plugin names are looked up ($FERRY_PLUGIN_DIR first).
    pub plugin_path: Vec<PathBuf>,
    /// The folder of the pipeline file (relative paths start there).
    pub base_dir: PathBuf,
}

impl Pipeline {
    /// Finds a plugin by name or path, as the stage sections do.
    pub fn find_plugin(&self, name: &str) -> Result<PathBuf, String> {
        find_plugin(name, &self.base_dir, &self.plugin_path)
    }

    pub fn stage(&self, role: Role) -> Option<&Stage> {
        self.stages.iter().find(|s| s.role == role)
    }

    /// Every fs root granted to any stage, by name. Used to open the file of
    /// the item a stage is processing, which it may read without a grant.
    pub fn fs_roots(&self) -> BTreeMap<String, PathBuf> {
        let mut roots = BTreeMap::new();
        for s in &self.stages {
            for (k, v) in &s.grants.fs {
                roots.insert(k.clone(), v.clone());
            }
        }
        roots
    }

    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text, &|k| std::env::var(k).ok())
    }

    /// Parses `text` as if read from `path`; `env` looks up `${VARS}`.
    pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Pipeline, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: format!("{}", e).trim_end().replace("TOML parse error", "error"),
        };
        let invalid = |key: String, message: String| ConfigError::Invalid { path: path.to_owned(), key, message };
        // First pass on the text as written, so that mistakes are reported
        // with line and column. Then `${VARS}` are substituted in every
        // string (once) and the result is read again.
        toml::from_str::<RawPipeline>(text).map_err(parse_error)?;
        let mut value: toml::Value = toml::from_str(text).map_err(parse_error)?;
        interpolate_value(&mut value, "", env).map_err(|(k, m)| invalid(k, m))?;
        let raw: RawPipeline = value.try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: format!("after substituting environment variables: {}", e.message()),
        })?;
        // from here on every problem is collected, so that one edit fixes
        // them all (Vector's config compiler does the same)
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut c = Compiler { base, problems: Vec::new(), fs_names: BTreeMap::new() };
        let pipeline = c.pipeline(raw, env);
        let mut problems = c.problems;
        match problems.len() {
            0 => Ok(Pipeline { path: path.to_owned(), ..pipeline }),
            1 => {
                let (key, message) = problems.remove(0);
                Err(ConfigError::Invalid { path: path.to_owned(), key, message })
            }
            _ => Err(ConfigError::Many { path: path.to_owned(), problems }),
        }
    }

    /// The ledger file.
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.db")
    }

    /// Where `http.send-to-spool` writes (fs root `spool`).
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }
}

/// Turns the file as written into a [`Pipeline`], one method per
/// section, collecting every problem (`(key, message)`) instead of
/// stopping at the first: one edit fixes them all.
struct Compiler {
    /// The pipeline file's folder: relative paths start there.
    base: PathBuf,
    problems: Vec<Problem>,
    /// fs root names seen so far: a name means one folder in the pipeline.
    fs_names: BTreeMap<String, (Role, PathBuf)>,
}

impl Compiler {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push((key.into(), message.into()));
    }

    fn check(&mut self, r: Result<(), Problem>) {
        self.problems.extend(r.err());
    }

    fn rel(&self, p: &Path) -> PathBuf {
        clean(&self.base.join(p))
    }

    fn pipeline(&mut self, raw: RawPipeline, env: &dyn Fn(&str) -> Option<String>) -> Pipeline {
        let p = &raw.pipeline;
        if p.name.trim().is_empty() {
            self.fail("pipeline.name", "must not be empty");
        }
        if !p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.fail("pipeline.name", "use letters, digits, - and _ (it names the state folder)");
        }
        let (lo, hi) = bounds::QUEUE_DEPTH;
        self.check(within("pipeline.queue_depth", p.queue_depth, lo, hi, show_n, " items"));
        let (lo, hi) = bounds::RETRY_AFTER;
        self.check(within("pipeline.retry_after", p.retry_after, lo, hi, show_d, ""));
        self.check(within("pipeline.retry_max", p.retry_max, Duration::ZERO, bounds::RETRY_MAX, show_d, ""));
        let (lo, hi) = bounds::SPOOL_MAX;
        self.check(within("pipeline.spool_max", p.spool_max, lo, hi, show_b, ""));
        let mut windows = None;
        if let Some(sc) = &raw.schedule {
            if let Some(every) = sc.every {
                let (lo, hi) = bounds::EVERY;
                self.check(within("schedule.every", every, lo, hi, show_d, ""));
            }
            match sc.windows.as_deref().map(crate::pace::Windows::parse) {
                Some(Ok(w)) => windows = Some(w),
                Some(Err(m)) => self.fail("schedule.windows", m),
                None => {}
            }
            if sc.every.is_none() && sc.windows.is_none() {
                self.fail("schedule", "give `every = \"5m\"`, `windows = [\"19:00-07:00\"]` or both");
            }
        }
        let max_rate = raw.store.max_rate;
        if let Some(r) = max_rate {
            let (lo, hi) = bounds::MAX_RATE;
            self.check(within("store.max_rate", r, lo, hi, crate::pace::show_rate, ""));
        }
        let connections = self.connections(raw.connections);
        let mut plugin_path: Vec<PathBuf> = Vec::new();
        if let Some(dir) = env("FERRY_PLUGIN_DIR").filter(|d| !d.is_empty()) {
            plugin_path.push(PathBuf::from(dir));
        }
        plugin_path.extend(raw.pipeline.plugin_path.iter().map(|p| self.rel(p)));

        let cache = raw.resolver.cache.clone().unwrap_or_default();
        self.check(within("resolver.cache.ttl", cache.ttl, Duration::ZERO, bounds::CACHE_TTL, show_d, ""));
        let nf = cache.not_found_ttl;
        self.check(within("resolver.cache.not_found_ttl", nf, Duration::ZERO, bounds::CACHE_TTL, show_d, ""));
        let min_age = raw.source.min_age.unwrap_or(DEFAULT_MIN_AGE);
        self.check(within("source.min_age", min_age, Duration::ZERO, bounds::MIN_AGE, show_d, ""));
        let sections = [
            (Role::Source, Some(raw.source)),
            (Role::Extractor, raw.extractor),
            (Role::Resolver, Some(raw.resolver)),
            (Role::Store, Some(raw.store)),
        ];
        let stages =
            sections.into_iter().filter_map(|(role, s)| self.stage(role, s?, &plugin_path, &connections)).collect();

        let p = raw.pipeline;
        let state_dir = match &p.state_dir {
            Some(d) => self.rel(d),
            None => default_state_dir(env).join(&p.name),
        };
        if p.retry_max < p.retry_after {
            self.fail("pipeline.retry_max", "must not be shorter than retry_after");
        }
        let serve = raw.serve.map(|sv| {
            let (sv, problems) = sv.compile(&|p| self.rel(p));
            self.problems.extend(problems);
            sv
        });
        Pipeline {
            path: PathBuf::new(),
            name: p.name,
            queue_depth: p.queue_depth,
            connections,
            stages,
            state_dir,
            retry_after: p.retry_after,
            retry_max: p.retry_max,
            spool_max: p.spool_max,
            schedule: raw.schedule,
            cache,
            min_age,
            max_rate,
            windows,
            plugin_path,
            base_dir: self.base.clone(),
            serve,
        }
    }

    fn connections(&mut self, raw: BTreeMap<String, ConnectionConfig>) -> BTreeMap<String, ConnectionConfig> {
        let mut out = BTreeMap::new();
        for (name, c) in raw {
            let (c, problems) = c.compile(&name, &|p| self.rel(p));
            self.problems.extend(problems);
            out.insert(name, c);
        }
        out
    }

    /// One stage section; `None` if its plugin cannot be found (the other
    /// problems of the section are still reported).
    fn stage(
        &mut self,
        role: Role,
        s: StageConfig,
        plugin_path: &[PathBuf],
        connections: &BTreeMap<String, ConnectionConfig>,
    ) -> Option<Stage> {
        let sec = role.section();
        let plugin = match find_plugin(&s.plugin, &self.base, plugin_path) {
            Ok(p) => Some(p),
            Err(m) => {
                self.fail(format!("{sec}.plugin"), m);
                None
            }
        }?;
        self.check(check_stage_numbers(sec, s.concurrency, s.retries, &s.limits));
        if s.cache.is_some() && role != Role::Resolver {
            self.fail(format!("{sec}.cache"), "only the [resolver] has a cache");
        }
        if s.min_age.is_some() && role != Role::Source {
            self.fail(format!("{sec}.min_age"), "only the [source] has a min_age");
        }
        if s.max_rate.is_some() && role != Role::Store {
            self.fail(format!("{sec}.max_rate"), "only the [store] has a max_rate (it caps the pipeline's uploads)");
        }
        let grants = self.grants(role, &s.grants, connections);
        let config_json =
            serde_json::to_string(&toml::Value::Table(s.config.clone())).expect("TOML values are valid JSON");
        Some(Stage {
            role,
            plugin,
            grants,
            limits: s.limits,
            concurrency: s.concurrency,
            retries: s.retries,
            config_json,
        })
    }

    /// A stage's grants as written → checked, paths resolved. The rules
    /// that span the pipeline (root names, connection names) are here;
    /// what one grant alone must satisfy is with its capability.
    fn grants(&mut self, role: Role, raw: &Grants, connections: &BTreeMap<String, ConnectionConfig>) -> Grants {
        let sec = role.section();
        let mut grants = Grants::default();
        for (name, p) in &raw.fs {
            if let Err(m) = check_name(name) {
                self.fail(format!("{sec}.grants.fs.{name}"), m);
            }
            if name == crate::caps::http::spool::ROOT {
                self.fail(
                    format!("{sec}.grants.fs.{name}"),
                    "`spool` is the name of ferry's own spool; choose another",
                );
            }
            let p = self.rel(p);
            if let Some((other, op)) = self.fs_names.get(name) {
                if *op != p {
                    let m = format!(
                        "the root name `{name}` is granted as {} in [{other}] and as {} here; \
                         a root name must mean one folder in the whole pipeline",
                        op.display(),
                        p.display()
                    );
                    self.fail(format!("{sec}.grants.fs.{name}"), m);
                }
            }
            self.fs_names.insert(name.clone(), (role, p.clone()));
            grants.fs.insert(name.clone(), p);
        }
        for c in &raw.sql {
            if !connections.contains_key(c) {
                let known: Vec<_> = connections.keys().map(String::as_str).collect();
                let m = format!(
                    "no connection named `{c}`; define [connections.{c}] (defined: {})",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                );
                self.fail(format!("{sec}.grants.sql"), m);
            }
        }
        grants.sql = raw.sql.clone();
        for (i, h) in raw.http.iter().enumerate() {
            if h.is_empty() || h.contains('/') || h.contains('*') {
                let m = format!("`{h}` is not a host name or host:port (no scheme, path or wildcard)");
                self.fail(format!("{sec}.grants.http[{i}]"), m);
            }
            grants.http.push(h.to_ascii_lowercase());
        }
        for (host, auth) in &raw.http_auth {
            let key = format!("{sec}.grants.http_auth.\"{host}\"");
            if !grants.http.contains(&host.to_ascii_lowercase()) {
                let m = format!(
                    "`{host}` is not in {sec}.grants.http: credentials go only to a granted host; \
                     add it there or spell it the same way (host or host:port)"
                );
                self.fail(key.clone(), m);
            }
            self.problems.extend(auth.problems(&key));
            grants.http_auth.insert(host.to_ascii_lowercase(), auth.clone());
        }
        grants.object_store = raw.object_store.as_ref().map(|g| {
            let (g, problems) = g.compile(sec, &|p| self.rel(p));
            self.problems.extend(problems);
            g
        });
        grants
    }
}

/// `$FERRY_STATE_DIR`, `$XDG_STATE_HOME/ferry`, `~/.local/state/ferry`.
fn default_state_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(d) = env("FERRY_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ferry");
    }
    match env("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/ferry"),
        None => PathBuf::from(".ferry-state"),
    }
}

/// Removes `.` and `..` lexically, so messages show plain paths.
fn clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !matches!(out.components().next_back(), None | Some(Component::ParentDir | Component::RootDir)) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid grant name (use letters, digits, - and _)"))
    }
}

/// Finds a plugin: a path (contains `/` or ends in `.wasm`) relative to the
/// pipeline file, or a bare name looked up as `NAME.wasm` on the plugin path.
fn find_plugin(name: &str, base: &Path, plugin_path: &[PathBuf]) -> Result<PathBuf, String> {
    if name.contains('/') || name.ends_with(".wasm") {
        let p = base.join(name);
        return if p.is_file() { Ok(p) } else { Err(format!("plugin file {} does not exist", p.display())) };
    }
    for dir in plugin_path {
        let p = dir.join(format!("{name}.wasm"));
        if p.is_file() {
            return Ok(p);
        }
    }
    // `fs-store` and `s3-store` became one `store` (the grant picks the
    // backend): pipeline files written for them keep working
    if matches!(name, "fs-store" | "s3-store") {
        if let Ok(p) = find_plugin("store", base, plugin_path) {
            tracing::warn!("plugin `{name}` is now called `store`; write `plugin = \"store\"` in the pipeline file");
            return Ok(p);
        }
    }
    let searched: Vec<String> = plugin_path.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "no plugin `{name}.wasm` in the plugin path ({}); build the stock plugins with `cargo xtask plugins`, \
         or set [pipeline] plugin_path / $FERRY_PLUGIN_DIR",
        if searched.is_empty() { "empty".into() } else { searched.join(", ") }
    ))
}

/// Replaces `${VAR}` with the environment variable's value; `$${` is a
/// literal `${`. A missing variable is an error (never an empty secret).
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or_else(|| "unterminated `${` (write `$${` for a literal)".to_string())?;
            let var = &tail[..end];
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{var}}}` is not a valid environment variable reference"));
            }
            let value = env(var).ok_or_else(|| format!("environment variable {var} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn interpolate_value(
    v: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match v {
        toml::Value::String(s) => *s = interpolate(s, env).map_err(|m| (key.to_owned(), m))?,
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                interpolate_value(x, &format!("{key}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let sub = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                interpolate_value(x, &sub, env)?;
            }
            // the hosts of `grants.http_auth` are keys, and may come from
            // the environment like the `grants.http` they must match
            if key.ends_with("grants.http_auth") {
                let old = std::mem::take(t);
                for (k, x) in old {
                    let host = interpolate(&k, env).map_err(|m| (format!("{key}.{k}"), m))?;
                    if t.insert(host.clone(), x).is_some() {
                        return Err((format!("{key}.{k}"), format!("`{host}` is given twice")));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation() {
        let env = |k: &str| (k == "PW").then(|| "s3cret".to_string());
        assert_eq!(interpolate("a${PW}b", &env).unwrap(), "as3cretb");
        assert_eq!(interpolate("$${PW}", &env).unwrap(), "${PW}");
        assert_eq!(interpolate("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(interpolate("${NOPE}", &env).unwrap_err(), "environment variable NOPE is not set");
        assert!(interpolate("${PW", &env).is_err());
    }

    #[test]
    fn old_store_names_find_the_one_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("store.wasm"), b"").unwrap();
        let path = [dir.path().to_path_buf()];
        for old in ["fs-store", "s3-store"] {
            assert_eq!(find_plugin(old, dir.path(), &path).unwrap(), dir.path().join("store.wasm"));
        }
        let e = find_plugin("other-store", dir.path(), &path).unwrap_err();
        assert!(e.contains("no plugin `other-store.wasm`"), "{e}");
        std::fs::write(dir.path().join("fs-store.wasm"), b"").unwrap();
        assert_eq!(find_plugin("fs-store", dir.path(), &path).unwrap(), dir.path().join("fs-store.wasm"));
    }
}
