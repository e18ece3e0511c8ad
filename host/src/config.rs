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
//! plugin = "fs-store"
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

/// The bounds of every number a pipeline file takes, with why.
///
/// | key | bounds |
/// |---|---|
/// | `pipeline.queue_depth` | 1 – 4096 items between two stages |
/// | `pipeline.retry_after` | 100ms – 24h |
/// | `pipeline.retry_max` | retry_after – 720h (30 days) |
/// | `schedule.every` | 1s – 168h |
/// | `<stage>.concurrency` | 1 – 64 instances (each may use `limits.memory`) |
/// | `<stage>.retries` | 0 – 10 |
/// | `<stage>.limits.memory` | 1MiB – 4GiB (a wasm32 memory cannot grow further) |
/// | `<stage>.limits.timeout` | up to 1h per call |
/// | `source.min_age` | 0s – 24h |
/// | `resolver.cache.ttl`, `not_found_ttl` | up to 720h |
/// | S3 `multipart_threshold`, `part_size` | 5MiB – 5GiB (S3's part limits) |
/// | S3 `max_attempts` | 1 – 20 |
/// | mssql `pool` | 1 – 64; `connect_timeout` up to 5m |
/// | `serve.preview.concurrency` | 1 – 64 renders at once |
/// | `serve.preview.max_file` | 1MiB – 4GiB |
pub mod bounds {
    use std::time::Duration;

    pub const QUEUE_DEPTH: (usize, usize) = (1, 4096);
    pub const RETRY_AFTER: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(24 * 3600));
    pub const RETRY_MAX: Duration = Duration::from_secs(720 * 3600);
    pub const EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(168 * 3600));
    pub const CONCURRENCY: (usize, usize) = (1, 64);
    pub const RETRIES: u32 = 10;
    pub const MEMORY: (u64, u64) = (1 << 20, 4 << 30);
    pub const TIMEOUT: Duration = Duration::from_secs(3600);
    pub const MIN_AGE: Duration = Duration::from_secs(24 * 3600);
    pub const CACHE_TTL: Duration = Duration::from_secs(720 * 3600);
    pub const S3_PART: (u64, u64) = (5 << 20, 5 << 30);
    pub const S3_ATTEMPTS: (u32, u32) = (1, 20);
    pub const POOL: (usize, usize) = (1, 64);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
    pub const PREVIEW_FILE: (u64, u64) = (1 << 20, 4 << 30);
}

/// `Err((key, message))` unless `lo <= v <= hi`; `show` formats values.
fn within<T: PartialOrd + Copy>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
    show: impl Fn(T) -> String,
    what: &str,
) -> Result<(), (String, String)> {
    if v < lo {
        Err((key.to_owned(), format!("{} is under the lower bound of {}{what}", show(v), show(lo))))
    } else if v > hi {
        Err((key.to_owned(), format!("{} is over the upper bound of {}{what}", show(v), show(hi))))
    } else {
        Ok(())
    }
}

fn show_n<T: std::fmt::Display>(v: T) -> String {
    v.to_string()
}

fn show_d(d: Duration) -> String {
    crate::util::humantime(d)
}

fn show_b(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}GiB", b >> 30)
    } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{}MiB", b >> 20)
    } else {
        format!("{b} bytes")
    }
}

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
}

fn default_retry_after() -> Duration {
    Duration::from_secs(60)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// `[schedule]`: run one pass after another (`ferry run` keeps going).
///
/// ```toml
/// [schedule]
/// every = "5m"     # from the start of one pass to the start of the next
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(deserialize_with = "de_duration")]
    pub every: Duration,
}

/// `[serve]`: the HTTP service of `ferry serve` (API, web page, metrics).
///
/// ```toml
/// [serve]
/// listen = "127.0.0.1:8080"
/// presign = false              # S3 only: redirect downloads to short-lived presigned URLs
/// [serve.auth]
/// hs256_secret = "${FERRY_JWT_SECRET}"      # or public_key = "jwt.pem" (RS256/ES256), or jwks = "jwks.json"
/// audience = "ferry"
/// issuer = "https://pms.example.com"
/// clinic_id = "clinic-7"       # tokens with another `clinic` claim are refused
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub presign: bool,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Where rendered previews are cached. Default: `state_dir/previews`.
    #[serde(default)]
    pub preview_cache: Option<PathBuf>,
    #[serde(default)]
    pub preview: PreviewConfig,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// `[serve.preview]`: the renderer stage that turns stored images into
/// previews, in the sandbox like every other stage, so that a hostile file
/// can only ever stop a disposable instance.
///
/// ```toml
/// [serve.preview]
/// plugin = "dicom-preview"      # the stock renderer (a name on the plugin path, or a .wasm)
/// concurrency = 2               # renders at once (default: the number of cores, at most 8)
/// limits = { memory = "256MiB", timeout = "30s" }   # per render
/// max_file = "256MiB"           # larger stored objects are not previewed (413)
/// config = { }                  # handed to the renderer's configure()
/// ```
///
/// The memory a burst of previews can take is at most `concurrency` ×
/// `limits.memory` (plus the file being downloaded to disk).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewConfig {
    #[serde(default = "default_renderer")]
    pub plugin: String,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default = "default_render_limits")]
    pub limits: Limits,
    #[serde(default = "default_preview_max", deserialize_with = "de_bytes")]
    pub max_file: u64,
    #[serde(default)]
    pub config: toml::Table,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        PreviewConfig {
            plugin: default_renderer(),
            concurrency: None,
            limits: default_render_limits(),
            max_file: default_preview_max(),
            config: toml::Table::new(),
        }
    }
}

impl PreviewConfig {
    /// Renders at once: as configured, else the number of cores (2–8).
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8))
    }
}

fn default_renderer() -> String {
    "dicom-preview".into()
}
fn default_render_limits() -> Limits {
    Limits { memory: 256 << 20, timeout: Duration::from_secs(30) }
}
fn default_preview_max() -> u64 {
    256 << 20
}

/// How API callers prove who they are (JWT bearer tokens).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub hs256_secret: Option<Secret>,
    /// PEM public key (RS256 or ES256), relative to the pipeline file.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// A JWKS document on disk, relative to the pipeline file.
    #[serde(default)]
    pub jwks: Option<PathBuf>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    /// Claim holding the role(s): `viewer`, `operator`, `admin`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim naming the clinic a token is limited to.
    #[serde(default = "default_clinic_claim")]
    pub clinic_claim: String,
    /// This pipeline's clinic (checked against the clinic claim).
    #[serde(default)]
    pub clinic_id: Option<String>,
    /// No authentication at all: for a demo on 127.0.0.1 only.
    #[serde(default)]
    pub dev_mode: bool,
}

fn default_roles_claim() -> String {
    "roles".into()
}
fn default_clinic_claim() -> String {
    "clinic".into()
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

/// A string that never shows in logs or `Debug` output.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
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
    #[serde(default)]
    pub object_store: Option<ObjectStoreGrant>,
}

/// Where a store stage's objects go.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum ObjectStoreGrant {
    /// A local folder: `{ kind = "fs", path = "/srv/ferry/store" }`.
    #[serde(rename = "fs")]
    Fs { path: PathBuf },
    /// An S3 bucket (or an S3-compatible server):
    ///
    /// ```toml
    /// grants.object_store = { kind = "s3", bucket = "clinic-images", region = "eu-central-1" }
    /// # S3-compatible servers: endpoint = "http://127.0.0.1:9000", path_style = true
    /// # credentials: the standard AWS chain (env, profile, instance role), or
    /// # access_key_id = "${S3_KEY}", secret_access_key = "${S3_SECRET}"
    /// ```
    #[serde(rename = "s3")]
    S3(S3Grant),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Grant {
    pub bucket: String,
    /// Prepended to every key the plugin writes (e.g. `clinic-17/`).
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Files larger than this go up in parts (constant memory).
    #[serde(default = "default_multipart", deserialize_with = "de_bytes")]
    pub multipart_threshold: u64,
    #[serde(default = "default_multipart", deserialize_with = "de_bytes")]
    pub part_size: u64,
    /// Attempts per S3 request (the SDK retries 5xx, throttling, timeouts
    /// with backoff); what still fails parks the item for a later run.
    #[serde(default = "default_s3_attempts")]
    pub max_attempts: u32,
}

fn default_s3_attempts() -> u32 {
    5
}

fn default_multipart() -> u64 {
    16 << 20
}

/// Per-call limits a plugin instance runs under.
///
/// ```toml
/// limits = { memory = "256MiB", timeout = "60s" }
/// ```
/// `memory` caps the instance's linear memory; `timeout` is the deadline of
/// one call (one page of a scan, one item, one batch), host I/O included.
/// A call over either limit is stopped, its instance discarded, and the
/// item fails with an error saying which limit it hit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_memory", deserialize_with = "de_bytes")]
    pub memory: u64,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory: default_memory(), timeout: default_timeout() }
    }
}

fn default_memory() -> u64 {
    256 << 20
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// A named database connection, granted to stages by name.
///
/// ```toml
/// [connections.sidexis]
/// kind = "sqlite"
/// path = "sidexis.db"     # opened read-only
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum ConnectionConfig {
    #[serde(rename = "sqlite")]
    Sqlite { path: PathBuf },
    /// Microsoft SQL Server (Sidexis 4 keeps its database there). Use a
    /// login that can only read:
    ///
    /// ```toml
    /// [connections.sidexis]
    /// kind = "mssql"
    /// host = "sidexis-server"        # or host = "10.0.0.5", port = 1433
    /// instance = "SIDEXIS_SQL"       # named instance (asks SQL Browser, UDP 1434)
    /// database = "PDATA"
    /// user = "ferry_reader"
    /// password = "${SIDEXIS_SQL_PASSWORD}"
    /// encrypt = "required"           # "required" | "off" | "not_supported"
    /// trust_server_certificate = true   # self-signed certificates (typical on-prem)
    /// ```
    #[serde(rename = "mssql")]
    Mssql(MssqlConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MssqlConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default = "default_database")]
    pub database: String,
    pub user: String,
    pub password: Secret,
    #[serde(default = "default_encrypt")]
    pub encrypt: Encrypt,
    #[serde(default)]
    pub trust_server_certificate: bool,
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Connections kept open for reuse.
    #[serde(default = "default_pool")]
    pub pool: usize,
}

fn default_database() -> String {
    "PDATA".into()
}
fn default_encrypt() -> Encrypt {
    Encrypt::Required
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_pool() -> usize {
    4
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encrypt {
    /// TLS for everything (the default; needs a server certificate the
    /// machine trusts, or `trust_server_certificate = true`).
    Required,
    /// TLS for the login only.
    Off,
    /// No TLS at all (test servers).
    NotSupported,
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
    pub schedule: Option<Schedule>,
    pub cache: CacheConfig,
    /// `[serve]`, with paths resolved.
    pub serve: Option<ServeConfig>,
    /// `[source] min_age`.
    pub min_age: Duration,
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
        let errs = std::cell::RefCell::new(Vec::<ConfigError>::new());
        let fail = |e: ConfigError| errs.borrow_mut().push(e);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let rel = |p: &Path| clean(&base.join(p));

        if raw.pipeline.name.trim().is_empty() {
            fail(invalid("pipeline.name".into(), "must not be empty".into()));
        }
        if !raw.pipeline.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            fail(invalid("pipeline.name".into(), "use letters, digits, - and _ (it names the state folder)".into()));
        }
        let bound = |r: Result<(), (String, String)>| -> Result<(), ConfigError> {
            if let Err((k, m)) = r {
                fail(invalid(k, m));
            }
            Ok(())
        };
        let (lo, hi) = bounds::QUEUE_DEPTH;
        bound(within("pipeline.queue_depth", raw.pipeline.queue_depth, lo, hi, show_n, " items"))?;
        let (lo, hi) = bounds::RETRY_AFTER;
        bound(within("pipeline.retry_after", raw.pipeline.retry_after, lo, hi, show_d, ""))?;
        bound(within("pipeline.retry_max", raw.pipeline.retry_max, Duration::ZERO, bounds::RETRY_MAX, show_d, ""))?;
        if let Some(sc) = &raw.schedule {
            let (lo, hi) = bounds::EVERY;
            bound(within("schedule.every", sc.every, lo, hi, show_d, ""))?;
        }

        let mut connections = BTreeMap::new();
        for (name, c) in raw.connections {
            let c = match c {
                ConnectionConfig::Sqlite { path } => ConnectionConfig::Sqlite { path: rel(&path) },
                ConnectionConfig::Mssql(m) => {
                    let (lo, hi) = bounds::POOL;
                    bound(within(&format!("connections.{name}.pool"), m.pool, lo, hi, show_n, " connections"))?;
                    bound(within(
                        &format!("connections.{name}.connect_timeout"),
                        m.connect_timeout,
                        Duration::ZERO,
                        bounds::CONNECT_TIMEOUT,
                        show_d,
                        "",
                    ))?;
                    if m.host.trim().is_empty() {
                        fail(invalid(format!("connections.{name}.host"), "must not be empty".into()));
                    }
                    if m.port.is_some() && m.instance.is_some() {
                        fail(invalid(
                            format!("connections.{name}"),
                            "give either `port` or `instance`, not both".into(),
                        ));
                    }
                    ConnectionConfig::Mssql(m)
                }
            };
            connections.insert(name, c);
        }

        let mut plugin_path: Vec<PathBuf> = Vec::new();
        if let Some(dir) = env("FERRY_PLUGIN_DIR").filter(|d| !d.is_empty()) {
            plugin_path.push(PathBuf::from(dir));
        }
        for p in &raw.pipeline.plugin_path {
            plugin_path.push(rel(p));
        }

        let cache = raw.resolver.cache.clone().unwrap_or_default();
        bound(within("resolver.cache.ttl", cache.ttl, Duration::ZERO, bounds::CACHE_TTL, show_d, ""))?;
        bound(within(
            "resolver.cache.not_found_ttl",
            cache.not_found_ttl,
            Duration::ZERO,
            bounds::CACHE_TTL,
            show_d,
            "",
        ))?;
        let min_age = raw.source.min_age.unwrap_or(DEFAULT_MIN_AGE);
        bound(within("source.min_age", min_age, Duration::ZERO, bounds::MIN_AGE, show_d, ""))?;
        let sections = [
            (Role::Source, Some(raw.source)),
            (Role::Extractor, raw.extractor),
            (Role::Resolver, Some(raw.resolver)),
            (Role::Store, Some(raw.store)),
        ];
        let mut stages = Vec::new();
        let mut fs_names: BTreeMap<String, (Role, PathBuf)> = BTreeMap::new();
        for (role, section) in sections {
            let Some(s) = section else { continue };
            let sec = role.section();
            let plugin = match find_plugin(&s.plugin, &base, &plugin_path) {
                Ok(p) => p,
                Err(m) => {
                    fail(invalid(format!("{sec}.plugin"), m));
                    continue;
                }
            };
            bound(check_stage_numbers(sec, s.concurrency, s.retries, &s.limits))?;
            if s.cache.is_some() && role != Role::Resolver {
                fail(invalid(format!("{sec}.cache"), "only the [resolver] has a cache".into()));
            }
            if s.min_age.is_some() && role != Role::Source {
                fail(invalid(format!("{sec}.min_age"), "only the [source] has a min_age".into()));
            }
            let mut grants = Grants::default();
            for (name, p) in &s.grants.fs {
                if let Err(m) = check_name(name) {
                    fail(invalid(format!("{sec}.grants.fs.{name}"), m));
                }
                let p = rel(p);
                if let Some((other, op)) = fs_names.get(name) {
                    if *op != p {
                        fail(invalid(
                            format!("{sec}.grants.fs.{name}"),
                            format!(
                                "the root name `{name}` is granted as {} in [{other}] and as {} here; \
                                 a root name must mean one folder in the whole pipeline",
                                op.display(),
                                p.display()
                            ),
                        ));
                    }
                }
                fs_names.insert(name.clone(), (role, p.clone()));
                grants.fs.insert(name.clone(), p);
            }
            for c in &s.grants.sql {
                if !connections.contains_key(c) {
                    let known: Vec<_> = connections.keys().map(String::as_str).collect();
                    fail(invalid(
                        format!("{sec}.grants.sql"),
                        format!(
                            "no connection named `{c}`; define [connections.{c}] (defined: {})",
                            if known.is_empty() { "none".into() } else { known.join(", ") }
                        ),
                    ));
                }
            }
            grants.sql = s.grants.sql.clone();
            for (i, h) in s.grants.http.iter().enumerate() {
                let key = format!("{sec}.grants.http[{i}]");
                if h.is_empty() || h.contains('/') || h.contains('*') {
                    fail(invalid(key, format!("`{h}` is not a host name or host:port (no scheme, path or wildcard)")));
                }
                grants.http.push(h.to_ascii_lowercase());
            }
            grants.object_store = match &s.grants.object_store {
                None => None,
                Some(ObjectStoreGrant::Fs { path }) => Some(ObjectStoreGrant::Fs { path: rel(path) }),
                Some(ObjectStoreGrant::S3(g)) => {
                    let key = format!("{sec}.grants.object_store");
                    if g.bucket.trim().is_empty() {
                        fail(invalid(format!("{key}.bucket"), "must not be empty".into()));
                    }
                    if g.access_key_id.is_some() != g.secret_access_key.is_some() {
                        fail(invalid(
                            key.clone(),
                            "give both access_key_id and secret_access_key, or neither (standard AWS credential chain)"
                                .into(),
                        ));
                    }
                    let (lo, hi) = bounds::S3_PART;
                    bound(within(
                        &format!("{key}.part_size"),
                        g.part_size,
                        lo,
                        hi,
                        show_b,
                        " (S3's part size limits)",
                    ))?;
                    bound(within(&format!("{key}.multipart_threshold"), g.multipart_threshold, lo, hi, show_b, ""))?;
                    let (lo, hi) = bounds::S3_ATTEMPTS;
                    bound(within(&format!("{key}.max_attempts"), g.max_attempts, lo, hi, show_n, " attempts"))?;
                    if !g.prefix.is_empty() && (g.prefix.starts_with('/') || !g.prefix.ends_with('/')) {
                        fail(invalid(format!("{key}.prefix"), "must not start with / and must end with /".into()));
                    }
                    Some(ObjectStoreGrant::S3(g.clone()))
                }
            };
            let config_json =
                serde_json::to_string(&toml::Value::Table(s.config.clone())).expect("TOML values are valid JSON");
            stages.push(Stage {
                role,
                plugin,
                grants,
                limits: s.limits,
                concurrency: s.concurrency,
                retries: s.retries,
                config_json,
            });
        }

        let state_dir = match &raw.pipeline.state_dir {
            Some(d) => rel(d),
            None => default_state_dir(env).join(&raw.pipeline.name),
        };
        if raw.pipeline.retry_max < raw.pipeline.retry_after {
            fail(invalid("pipeline.retry_max".into(), "must not be shorter than retry_after".into()));
        }
        if let Some(sv) = &raw.serve {
            let pv = &sv.preview;
            let c = pv.concurrency.unwrap_or(bounds::CONCURRENCY.0);
            bound(check_stage_numbers("serve.preview", c, 0, &pv.limits))?;
            let (lo, hi) = bounds::PREVIEW_FILE;
            bound(within("serve.preview.max_file", pv.max_file, lo, hi, show_b, ""))?;
        }
        let mut errs = errs.into_inner();
        if errs.len() == 1 {
            return Err(errs.remove(0));
        }
        if !errs.is_empty() {
            let problems = errs
                .into_iter()
                .map(|e| match e {
                    ConfigError::Invalid { key, message, .. } => (key, message),
                    other => (String::new(), other.to_string()),
                })
                .collect();
            return Err(ConfigError::Many { path: path.to_owned(), problems });
        }

        Ok(Pipeline {
            path: path.to_owned(),
            name: raw.pipeline.name,
            queue_depth: raw.pipeline.queue_depth,
            connections,
            stages,
            state_dir,
            retry_after: raw.pipeline.retry_after,
            retry_max: raw.pipeline.retry_max,
            schedule: raw.schedule,
            cache,
            min_age,
            plugin_path,
            base_dir: base.clone(),
            serve: raw.serve.map(|mut sv| {
                sv.auth.public_key = sv.auth.public_key.as_deref().map(rel);
                sv.auth.jwks = sv.auth.jwks.as_deref().map(rel);
                sv.preview_cache = sv.preview_cache.as_deref().map(rel);
                sv
            }),
        })
    }

    /// The ledger file.
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.db")
    }
}

/// The numbers every stage section (and `[serve.preview]`) has.
fn check_stage_numbers(sec: &str, concurrency: usize, retries: u32, limits: &Limits) -> Result<(), (String, String)> {
    let (lo, hi) = bounds::CONCURRENCY;
    within(&format!("{sec}.concurrency"), concurrency, lo, hi, show_n, " instances (each may use limits.memory)")?;
    within(&format!("{sec}.retries"), retries, 0, bounds::RETRIES, show_n, " extra attempts")?;
    let (lo, hi) = bounds::MEMORY;
    within(&format!("{sec}.limits.memory"), limits.memory, lo, hi, show_b, "")?;
    within(&format!("{sec}.limits.timeout"), limits.timeout, Duration::ZERO, bounds::TIMEOUT, show_d, " per call")
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
        }
        _ => {}
    }
    Ok(())
}

fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_bytes(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration_or_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration_or_zero(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// `"64MiB"`, `"1GiB"`, `"512KiB"`, `"1000000"` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size like \"256MiB\""))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("unknown size unit `{u}` in `{s}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("`{s}` is too large"))
}

/// `"500ms"`, `"30s"`, `"5m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be more than zero"));
    }
    Ok(d)
}

/// Like [`parse_duration`], for settings where `"0s"` means "off".
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like \"30s\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(|| format!("`{s}` is too long"))?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(|| format!("`{s}` is too long"))?),
        u => return Err(format!("unknown duration unit `{u}` in `{s}` (use ms, s, m or h)")),
    };
    Ok(d)
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
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("64 parsecs").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration_or_zero("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_zero("10s").unwrap(), Duration::from_secs(10));
        assert!(parse_duration_or_zero("0parsecs").is_err());
    }
}
