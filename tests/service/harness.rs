//! Shared set-up: the demo site, the production pipeline (sidexis →
//! dicom-meta → http-resolver → store) into a real S3 server with a
//! real resolver API, and `ferry serve` started in-process on
//! `127.0.0.1:0` with an HS256 `[serve.auth]`, after its first pass.
//! Requests go through real HTTP with `reqwest`.
//!
//! ```ignore
//! let svc = Service::start().await;                 // demo site, first pass done
//! let res = svc.get("/api/v1/patients?name=mul", Some(&svc.token(Role::Viewer))).await;
//! svc.stop().await;
//! ```

use ferry::ledger::prelude::*;
use std::path::PathBuf;
use std::time::Duration;

use ferry::config::{AuthConfig, Pipeline};
use ferry::runtime::Options;
use ferry::serve::auth::{self, Role};
use ferry::serve::Running;
use ferry_tests::{demo_guid, demo_site, Fate, ResolverServer, S3Server, Site, SiteBuilder, SiteImage};

pub const BUCKET: &str = "clinic-images";
pub const SECRET: &str = "ferry-service-tests-secret-0123456789abcdef";
pub const AUDIENCE: &str = "ferry";
pub const ISSUER: &str = "ferry-tests";
pub const CLINIC: &str = "clinic-7";
/// What the first pass over the demo site does.
pub const DEMO: ferry_tests::ExpectedCounts = ferry_tests::DEMO_EXPECTED;

/// Demo patient 17 (Müller, Anna): four images, all stored.
pub fn mueller() -> String {
    demo_guid(17)
}

/// How to start a service.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// `[serve] presign = true`.
    pub presign: bool,
    /// Lines appended to `[serve.auth]`.
    pub auth_extra: String,
    /// Lines appended to the pipeline file (after `[serve.auth]`, so start
    /// them with a table header).
    pub extra: String,
    /// Don't wait for the first pass before returning.
    pub no_wait: bool,
}

pub struct Service {
    pub dir: tempfile::TempDir,
    pub site: Site,
    pub s3: S3Server,
    pub resolver: ResolverServer,
    pub pipeline: Pipeline,
    pub running: Running,
    /// Follows no redirects (so 307s can be checked).
    pub http: reqwest::Client,
}

impl Service {
    /// The demo site through the production pipeline, served.
    pub async fn start() -> Service {
        Service::start_with(demo_site(), Setup::default()).await
    }

    pub async fn start_with(builder: SiteBuilder, setup: Setup) -> Service {
        let dir = tempfile::tempdir().expect("temp dir");
        let site = builder.build(&dir.path().join("site")).expect("site builds");
        let resolver = ResolverServer::start(site.card_map.clone());
        let s3 = S3Server::start();
        s3.create_bucket(BUCKET);
        let text = pipeline_toml(&resolver, &s3, &setup);
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, &text).unwrap();
        let pipeline = Pipeline::load(&path).unwrap_or_else(|e| panic!("pipeline loads: {e}"));
        let running = ferry::serve::start(pipeline.clone(), None, &options())
            .await
            .unwrap_or_else(|e| panic!("ferry serve starts: {e}"));
        if !setup.no_wait {
            tokio::time::timeout(Duration::from_secs(120), running.wait_for_passes(1))
                .await
                .expect("the first pass finishes within 2 minutes");
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Service { dir, site, s3, resolver, pipeline, running, http }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    pub fn auth_config(&self) -> AuthConfig {
        self.pipeline.serve.as_ref().expect("[serve]").auth.clone()
    }

    /// A valid token for this service's clinic.
    pub fn token(&self, role: Role) -> String {
        self.mint(role, Duration::from_secs(3600), Some(CLINIC))
    }

    pub fn mint(&self, role: Role, ttl: Duration, clinic: Option<&str>) -> String {
        auth::mint(&self.auth_config(), "service-test", role, ttl, clinic).expect("minting a token")
    }

    /// A token of this clinic for the user `sub` (the registry's key).
    pub fn token_for(&self, sub: &str, role: Role) -> String {
        auth::mint(&self.auth_config(), sub, role, Duration::from_secs(3600), Some(CLINIC)).expect("minting a token")
    }

    /// `method path` with the bearer `token` and, if given, a JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(b).unwrap());
        }
        req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// POSTs `body` as JSON, expecting `201 Created`; the created resource.
    pub async fn created(&self, path: &str, token: &str, body: &serde_json::Value) -> serde_json::Value {
        let res = self.send(reqwest::Method::POST, path, token, Some(body)).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 201, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"))
    }

    /// The status [`Service::send`] gets.
    pub async fn status(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> u16 {
        self.send(method, path, token, body).await.status().as_u16()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.request(reqwest::Method::GET, path, token, &[]).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.request(reqwest::Method::POST, path, token, &[]).await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// GET as a viewer, expecting 200 and JSON.
    pub async fn json(&self, path: &str, role: Role) -> serde_json::Value {
        let res = self.get(path, Some(&self.token(role))).await;
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
    }

    /// Images the pipeline stored for `guid`, per the site.
    pub fn stored_for(&self, guid: &str) -> Vec<&SiteImage> {
        self.site.stored_for(guid)
    }

    /// The object key the pipeline stored `img` under (from the ledger).
    pub fn key_of(&self, img: &SiteImage) -> String {
        self.ledger()
            .item(&img.rel_path)
            .unwrap()
            .and_then(|r| r.location)
            .unwrap_or_else(|| panic!("{} was stored", img.rel_path))
    }

    /// `/api/v1/patients/{guid}/images/{name}` of a stored image, encoded.
    pub fn image_path(&self, img: &SiteImage) -> String {
        let key = self.key_of(img);
        let (_, guid, name) = split_key(&key);
        format!("/api/v1/patients/{guid}/images/{}", enc(name))
    }

    pub fn ledger(&self) -> ferry::ledger::SqliteLedger {
        ferry::ledger::SqliteLedger::open(&self.pipeline.ledger_path()).unwrap()
    }

    /// Guids of stored patients.
    pub fn stored_guids(&self) -> Vec<String> {
        let mut g: Vec<String> = self
            .site
            .images
            .iter()
            .filter_map(|i| match self.site.fate(i) {
                Fate::Stored { guid } => Some(guid),
                _ => None,
            })
            .collect();
        g.sort();
        g.dedup();
        g
    }

    /// Sends `GET target` byte for byte (no URL normalisation: `..` stays
    /// `..`); returns the status and body.
    pub async fn raw_get(&self, target: &str, token: Option<&str>) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.running.addr()).await.unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {text}"));
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    pub async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(60), self.running.shutdown())
            .await
            .expect("stops within a minute")
            .expect("stops cleanly");
    }
}

/// Compiled plugins are cached across tests (and runs) here.
pub fn options() -> Options {
    Options { cache_dir: Some(ferry_tests::workspace_root().join("target").join("ferry-test-cache")) }
}

/// The production pipeline with a `[serve]` section on 127.0.0.1:0.
pub fn pipeline_toml(resolver: &ResolverServer, s3: &S3Server, setup: &Setup) -> String {
    let serve = format!(
        r#"
[serve]
listen = "127.0.0.1:0"
presign = {presign}

[serve.auth]
hs256_secret = "{SECRET}"
audience = "{AUDIENCE}"
issuer = "{ISSUER}"
clinic_id = "{CLINIC}"
{auth_extra}
{extra}
"#,
        presign = setup.presign,
        auth_extra = setup.auth_extra,
        extra = setup.extra,
    );
    ferry_tests::production_toml("served", ferry_tests::SQLITE_CONNECTION, resolver, s3, BUCKET, &serve)
}

/// Asserts an RFC 7807 problem document with `status`; returns it.
/// The JSON body of a response (any status), or a panic showing the text.
pub async fn body(res: reqwest::Response) -> serde_json::Value {
    let text = res.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub async fn problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    let got = res.status().as_u16();
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "status; body: {body}");
    assert_eq!(ct, "application/problem+json", "content type; body: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["status"], status, "{v}");
    for k in ["type", "title", "detail"] {
        assert!(v[k].as_str().is_some_and(|s| !s.is_empty()), "problem document without `{k}`: {v}");
    }
    v
}

/// Where the workspace's `target/` is (for scratch files).
#[allow(dead_code)]
pub fn target_dir() -> PathBuf {
    ferry_tests::workspace_root().join("target")
}

/// `images/{guid}/{name}` → ("images", guid, name).
pub fn split_key(key: &str) -> (&str, &str, &str) {
    let mut it = key.splitn(3, '/');
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
