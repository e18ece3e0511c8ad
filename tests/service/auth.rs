//! Authentication as configured in a pipeline file and seen over HTTP:
//! RS256/ES256 public keys and a JWKS named relative to the file, dev mode
//! (loopback only), `ferry token`, and configurations refused at start.
//! (The rules themselves are unit-tested in `ferry::serve::auth`; who may
//! call which route is in `access`.)

use std::path::PathBuf;
use std::time::Duration;

use ferry::config::Pipeline;
use ferry::serve::auth::Role;
use ferry::serve::{Running, ServeError};
use ferry_tests::{demo_site, ResolverServer, S3Server};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::{self, Service, Setup, AUDIENCE, BUCKET, CLINIC, ISSUER, SECRET};

fn keys_dir() -> PathBuf {
    ferry_tests::workspace_root().join("tests").join("service").join("keys")
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(role: &str) -> serde_json::Value {
    json!({ "sub": "idp-user", "exp": now() + 600, "aud": AUDIENCE, "iss": ISSUER, "roles": [role], "clinic": CLINIC })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

/// A service over the demo site whose `[serve.auth]` key line is
/// `key_line` (instead of the harness's HS256 secret); the key files are
/// copied next to the pipeline file and named relative to it. Does not
/// wait for the first pass.
struct Custom {
    _dir: tempfile::TempDir,
    _s3: S3Server,
    _resolver: ResolverServer,
    path: PathBuf,
    running: Option<Running>,
    http: reqwest::Client,
}

async fn start_custom(key_line: &str, listen: Option<&str>) -> Result<Custom, (ServeError, tempfile::TempDir)> {
    start_with_files(key_line, listen, &[]).await
}

/// [`start_custom`] with more files in `keys/`.
async fn start_with_files(
    key_line: &str,
    listen: Option<&str>,
    files: &[(&str, String)],
) -> Result<Custom, (ServeError, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let site = demo_site().build(&dir.path().join("site")).unwrap();
    let resolver = ResolverServer::start(site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    for entry in std::fs::read_dir(keys_dir()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, keys.join(p.file_name().unwrap())).unwrap();
    }
    for (name, text) in files {
        std::fs::write(keys.join(name), text).unwrap();
    }
    let text = harness::pipeline_toml(&resolver, &s3, &Setup::default());
    let secret_line = format!("hs256_secret = \"{SECRET}\"");
    assert!(text.contains(&secret_line));
    let text = text.replace(&secret_line, key_line);
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let pipeline = Pipeline::load(&path).unwrap_or_else(|e| panic!("pipeline loads: {e}"));
    let running = match ferry::serve::start(pipeline, listen.map(str::to_owned), &harness::options()).await {
        Ok(r) => r,
        Err(e) => return Err((e, dir)),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    Ok(Custom { _dir: dir, _s3: s3, _resolver: resolver, path, running: Some(running), http })
}

impl Custom {
    async fn status(&self, path: &str, token: Option<&str>) -> u16 {
        let mut req = self.http.get(format!("{}{path}", self.running.as_ref().unwrap().url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().status().as_u16()
    }

    async fn stop(mut self) {
        let running = self.running.take().unwrap();
        tokio::time::timeout(Duration::from_secs(120), running.shutdown())
            .await
            .expect("stops")
            .expect("stops cleanly");
    }
}

const SEARCH: &str = "/api/v1/patients?name=mull";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_public_key_named_in_the_pipeline_file() {
    let svc = start_custom("public_key = \"keys/rsa-public.pem\"", None).await.map_err(|(e, _)| e).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&key("rsa-private.pem")).unwrap();
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::RS256, None, &rsa, &claims("viewer")))).await, 200);
    // the wrong private key, another algorithm, HS256 keyed with the public key's bytes
    let other = EncodingKey::from_rsa_pem(&key("rsa2-private.pem")).unwrap();
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::RS256, None, &other, &claims("viewer")))).await, 401);
    let ec = EncodingKey::from_ec_pem(&key("ec-private.pem")).unwrap();
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::ES256, None, &ec, &claims("viewer")))).await, 401);
    let confused = EncodingKey::from_secret(&key("rsa-public.pem"));
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::HS256, None, &confused, &claims("admin")))).await, 401);
    // `ferry token` cannot sign for this pipeline: it has no secret
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["token".as_ref(), svc.path.as_os_str()])
        .env("FERRY_PLUGIN_DIR", ferry_tests::plugin_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hs256_secret"), "{err}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es256_key_in_a_jwks_file_chosen_by_kid() {
    // a JWKS with two keys, written as an identity provider publishes it
    let ec_pub = jsonwebtoken::DecodingKey::from_ec_pem(&key("ec-public.pem")).unwrap();
    let rsa_pub = jsonwebtoken::DecodingKey::from_rsa_pem(&key("rsa2-public.pem")).unwrap();
    let mut ec_jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_decoding_key(&ec_pub, Some(Algorithm::ES256)).unwrap())
            .unwrap();
    ec_jwk["kid"] = "ec-2026".into();
    ec_jwk["use"] = "sig".into();
    let mut rsa_jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_decoding_key(&rsa_pub, Some(Algorithm::RS256)).unwrap())
            .unwrap();
    rsa_jwk["kid"] = "rsa-2025".into();
    let jwks = json!({ "keys": [rsa_jwk, ec_jwk] });
    let svc = start_with_files("jwks = \"keys/jwks.json\"", None, &[("jwks.json", jwks.to_string())])
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let ec = EncodingKey::from_ec_pem(&key("ec-private.pem")).unwrap();
    let rsa2 = EncodingKey::from_rsa_pem(&key("rsa2-private.pem")).unwrap();
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::ES256, Some("ec-2026"), &ec, &claims("viewer")))).await, 200);
    assert_eq!(
        svc.status(SEARCH, Some(&sign(Algorithm::RS256, Some("rsa-2025"), &rsa2, &claims("viewer")))).await,
        200
    );
    // right key, wrong kid; unknown kid; no kid with two keys
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::ES256, Some("rsa-2025"), &ec, &claims("viewer")))).await, 401);
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::ES256, Some("ec-2027"), &ec, &claims("viewer")))).await, 401);
    assert_eq!(svc.status(SEARCH, Some(&sign(Algorithm::ES256, None, &ec, &claims("viewer")))).await, 401);
    // roles still count
    let logs = format!("/api/v1/patients/{}/logs", harness::mueller());
    assert_eq!(svc.status(&logs, Some(&sign(Algorithm::ES256, Some("ec-2026"), &ec, &claims("viewer")))).await, 403);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_needs_no_token_and_only_listens_on_loopback() {
    let svc = start_custom("dev_mode = true", None).await.map_err(|(e, _)| e).unwrap();
    assert_eq!(svc.status(SEARCH, None).await, 200);
    assert_eq!(svc.status(SEARCH, Some("garbage")).await, 200);
    svc.stop().await;

    let (e, _dir) = match start_custom("dev_mode = true", Some("0.0.0.0:0")).await {
        Ok(_) => panic!("dev mode must not listen on every interface"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("loopback"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_configurations_stop_the_start() {
    for (line, expected) in [
        ("", "no key"),
        ("public_key = \"keys/rsa-private.pem\"", "private key"),
        ("public_key = \"keys/missing.pem\"", "cannot read"),
        ("jwks = \"keys/rsa-public.pem\"", "not a JWKS"),
        ("hs256_secret = \"\"", "empty"),
    ] {
        let e = match start_custom(line, None).await {
            Ok(svc) => {
                svc.stop().await;
                panic!("`{line}` was accepted")
            }
            Err((e, _dir)) => e,
        };
        assert!(matches!(e, ServeError::Auth(_)), "`{line}`: {e:?}");
        assert!(e.to_string().contains(expected), "`{line}`: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_token_mints_what_the_service_accepts() {
    let svc = Service::start_with(demo_site(), Setup { no_wait: true, ..Setup::default() }).await;
    let token = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("token")
            .arg(&svc.pipeline.path)
            .args(args)
            .env("FERRY_PLUGIN_DIR", ferry_tests::plugin_dir())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let logs = format!("/api/v1/patients/{}/logs", harness::mueller());

    let (ok, viewer, err) = token(&["--clinic", CLINIC]);
    assert!(ok, "{err}");
    assert_eq!(viewer.split('.').count(), 3, "{viewer}");
    assert_eq!(svc.get(SEARCH, Some(&viewer)).await.status(), 200);
    assert_eq!(svc.get(&logs, Some(&viewer)).await.status(), 403);

    let (ok, operator, err) = token(&["--role", "operator", "--ttl", "10m", "--subject", "front-desk"]);
    assert!(ok, "{err}");
    let res = svc.get(&logs, Some(&operator)).await;
    assert!(res.status() == 200 || res.status() == 404, "{}", res.status());

    let (ok, other, err) = token(&["--role", "admin", "--clinic", "clinic-8"]);
    assert!(ok, "{err}");
    assert_eq!(svc.get(SEARCH, Some(&other)).await.status(), 403);

    let (ok, _, err) = token(&["--role", "root"]);
    assert!(!ok && err.contains("viewer, operator or admin"), "{err}");

    // what the CLI mints, the library mints (same claims, same checks)
    assert_eq!(svc.get(SEARCH, Some(&svc.token(Role::Viewer))).await.status(), 200);
    svc.stop().await;
}
