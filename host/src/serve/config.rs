//! `[serve]`: the schema of `ferry serve`'s section, next to the service
//! that reads it. Checked with the rest of the pipeline file (bounds here,
//! in [`ServeConfig::compile`]); what needs the filesystem or the
//! environment is checked when the service starts (`serve::check`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::caps::http::config::{is_loopback, HttpAuth};
use crate::caps::object_store::config::ObjectStoreGrant;
use crate::units::{bounds, check_stage_numbers, de_bytes, show_b, within, Limits, Problem, Secret};

/// `[serve]`: the HTTP service of `ferry serve` (API, web page, metrics).
///
/// ```toml
/// [serve]
/// listen = "127.0.0.1:8080"
/// presign = false              # S3 only: redirect downloads to short-lived presigned URLs
/// # store = { kind = "s3", bucket = "clinic-documents" }   # where images are read and uploads kept;
/// #                                                        # default: the [store] stage's grants.object_store
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
    /// Where the service reads images back and keeps uploaded documents,
    /// when that is not the store stage's object store (a documents
    /// pipeline whose sink is a platform).
    #[serde(default)]
    pub store: Option<ObjectStoreGrant>,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Where rendered previews are cached. Default: `state_dir/previews`.
    #[serde(default)]
    pub preview_cache: Option<PathBuf>,
    #[serde(default)]
    pub preview: PreviewConfig,
    /// The records API's patient records (absent: no patient records).
    #[serde(default)]
    pub records: Option<RecordsConfig>,
    /// Where `POST /patients/{guid}/request-documents` asks the patient's
    /// provider (absent: the route is refused, naming this section).
    #[serde(default)]
    pub requests: Option<RequestsConfig>,
}

/// `[serve.requests]`: how a practitioner's request for a patient's
/// documents reaches their primary provider — exactly one of:
///
/// ```toml
/// [serve.requests.fhir]                     # a FHIR R4 server: a Task on it
/// base_url = "https://fhir.hospital.example/r4"
/// patient_id = "hospital"                   # the record's externalIds key holding the provider's Patient id
/// owner = "Organization/hospital-records"   # optional: who should act on it
/// auth = { kind = "bearer", token = "${PROVIDER_TOKEN}" }   # any grants.http_auth kind (oauth2, …)
///
/// [serve.requests.smtp]                     # anyone else: an e-mail
/// server = "smtp.praxis.example"
/// port = 587                                # default: 587 (starttls), 465 (tls)
/// security = "starttls"                     # "tls", or "none" (only to 127.0.0.1: a local relay)
/// username = "praxis"
/// password = "${SMTP_PASSWORD}"
/// from = "praxis@praxis.example"
/// to = "records@hospital.example"
/// patient_id = "hospital"                   # optional: quoted in the mail as the provider's id
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsConfig {
    #[serde(default)]
    pub fhir: Option<FhirRequests>,
    #[serde(default)]
    pub smtp: Option<SmtpRequests>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirRequests {
    pub base_url: String,
    pub patient_id: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub auth: Option<HttpAuth>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpRequests {
    pub server: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub patient_id: Option<String>,
}

fn default_security() -> String {
    "starttls".into()
}

impl RequestsConfig {
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut fail = |k: &str, m: &str| out.push((format!("serve.requests{k}"), m.to_owned()));
        match (&self.fhir, &self.smtp) {
            (None, None) | (Some(_), Some(_)) => {
                fail("", "give exactly one of [serve.requests.fhir] (a Task on the provider's FHIR server) or [serve.requests.smtp] (an e-mail)")
            }
            _ => {}
        }
        if let Some(f) = &self.fhir {
            let host = f.base_url.strip_prefix("https://").or_else(|| f.base_url.strip_prefix("http://"));
            match host.map(|h| h.split(['/', '?', '#']).next().unwrap_or_default()) {
                None | Some("") => fail(".fhir.base_url", "is not an http:// or https:// URL"),
                Some(h)
                    if f.base_url.starts_with("http://") && !is_loopback(h.rsplit_once(':').map_or(h, |(a, _)| a)) =>
                {
                    fail(
                        ".fhir.base_url",
                        "must be https:// (plain http only to this machine): the request names a patient",
                    )
                }
                _ => {}
            }
            if f.patient_id.trim().is_empty() {
                fail(
                    ".fhir.patient_id",
                    "names the externalIds key that holds the provider's Patient id, e.g. \"hospital\"",
                );
            }
            if let Some(a) = &f.auth {
                out.extend(a.problems("serve.requests.fhir.auth"));
            }
        }
        if let Some(m) = &self.smtp {
            let mut fail = |k: &str, msg: &str| out.push((format!("serve.requests.smtp{k}"), msg.to_owned()));
            match m.security.as_str() {
                "starttls" | "tls" => {}
                "none" if is_loopback(&m.server) => {}
                "none" => fail(
                    ".security",
                    "\"none\" sends patient names in the clear: only to a relay on this machine (127.0.0.1)",
                ),
                _ => fail(".security", "is \"starttls\", \"tls\" or \"none\""),
            }
            for (k, v) in [(".from", &m.from), (".to", &m.to)] {
                if v.parse::<lettre::Address>().is_err() {
                    fail(k, "is not an e-mail address");
                }
            }
            if m.username.is_some() != m.password.is_some() {
                fail(".password", "give username and password together (or neither)");
            }
        }
        out
    }
}

/// `[serve.records]`: patient records (`POST /api/v1/patients`, …), their
/// PHI fields sealed with AES-256-GCM (`crate::seal`).
///
/// ```toml
/// [serve.records]
/// key = "${FERRY_RECORDS_KEY}"                    # 32 bytes, base64: openssl rand -base64 32
/// previous_keys = ["${FERRY_RECORDS_KEY_OLD}"]    # after a rotation, until `ferry reseal PIPELINE` ran
/// max_upload = "64MiB"                            # largest document upload (POST /patients/{guid}/documents)
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    pub key: Secret,
    #[serde(default)]
    pub previous_keys: Vec<Secret>,
    #[serde(default = "default_max_upload", deserialize_with = "de_bytes")]
    pub max_upload: u64,
}

fn default_max_upload() -> u64 {
    64 << 20
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

impl ServeConfig {
    /// Checks the bounds and resolves paths with `rel`.
    pub fn compile(mut self, rel: &dyn Fn(&Path) -> PathBuf) -> (ServeConfig, Vec<Problem>) {
        let mut problems = Vec::new();
        let pv = &self.preview;
        let c = pv.concurrency.unwrap_or(bounds::CONCURRENCY.0);
        problems.extend(check_stage_numbers("serve.preview", c, 0, &pv.limits).err());
        let (lo, hi) = bounds::PREVIEW_FILE;
        problems.extend(within("serve.preview.max_file", pv.max_file, lo, hi, show_b, "").err());
        if let Some(r) = &self.records {
            let previous: Vec<&str> = r.previous_keys.iter().map(|k| k.0.as_str()).collect();
            if let Err(e) = crate::seal::Sealer::new(&r.key.0, &previous) {
                problems.push(("serve.records".into(), e.to_string()));
            }
            let (lo, hi) = bounds::UPLOAD;
            problems.extend(within("serve.records.max_upload", r.max_upload, lo, hi, show_b, "").err());
        }
        if let Some(r) = &self.requests {
            problems.extend(r.problems());
        }
        if let Some(g) = &self.store {
            let (g, p) = g.compile("serve", rel);
            problems.extend(p);
            self.store = Some(g);
        }
        self.auth.public_key = self.auth.public_key.as_deref().map(rel);
        self.auth.jwks = self.auth.jwks.as_deref().map(rel);
        self.preview_cache = self.preview_cache.as_deref().map(rel);
        (self, problems)
    }
}
