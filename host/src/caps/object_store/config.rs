//! `grants.object_store`: where a store stage's objects go, next to the
//! backends that write there ([`super::fs`], [`super::s3`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::units::{bounds, de_bytes, show_b, show_n, within, Problem, Secret};

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

impl ObjectStoreGrant {
    /// Checks the grant of section `sec` and resolves its paths with
    /// `rel`; every problem is returned.
    pub fn compile(&self, sec: &str, rel: &dyn Fn(&Path) -> PathBuf) -> (ObjectStoreGrant, Vec<Problem>) {
        match self {
            ObjectStoreGrant::Fs { path } => (ObjectStoreGrant::Fs { path: rel(path) }, Vec::new()),
            ObjectStoreGrant::S3(g) => {
                (ObjectStoreGrant::S3(g.clone()), g.problems(&format!("{sec}.grants.object_store")))
            }
        }
    }
}

impl S3Grant {
    fn problems(&self, key: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.bucket.trim().is_empty() {
            out.push((format!("{key}.bucket"), "must not be empty".into()));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            out.push((
                key.to_owned(),
                "give both access_key_id and secret_access_key, or neither (standard AWS credential chain)".into(),
            ));
        }
        let (lo, hi) = bounds::S3_PART;
        out.extend(
            within(&format!("{key}.part_size"), self.part_size, lo, hi, show_b, " (S3's part size limits)").err(),
        );
        out.extend(within(&format!("{key}.multipart_threshold"), self.multipart_threshold, lo, hi, show_b, "").err());
        let (lo, hi) = bounds::S3_ATTEMPTS;
        out.extend(within(&format!("{key}.max_attempts"), self.max_attempts, lo, hi, show_n, " attempts").err());
        if !self.prefix.is_empty() && (self.prefix.starts_with('/') || !self.prefix.ends_with('/')) {
            out.push((format!("{key}.prefix"), "must not start with / and must end with /".into()));
        }
        out
    }
}
