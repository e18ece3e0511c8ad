//! Credentials held by the host (`grants.http_auth`), against the FHIR test
//! server's OAuth2 token endpoint: documents go from a drop folder to a
//! FHIR platform through `fhir-store`, which is given no token at all.
//!
//! - client credentials with a secret: one token for the whole run (every
//!   instance shares it); an expired token is refused with 401 and the host
//!   gets a new one and sends the request again;
//! - SMART Backend Services `private_key_jwt`, ES384 and RS384: the
//!   assertion is signed with the configured key (verified here with the
//!   public key), `kid`, `aud` = the token URL, at most five minutes;
//! - a wrong secret: every item fails with the token endpoint's
//!   `invalid_client`, the secret nowhere in what ferry says;
//! - the pipeline compiler refuses credentials for a host the stage may
//!   not reach, and a token URL over plain http to another machine.

use std::path::Path;

use ferry::config::Pipeline;
use ferry::runner::Outcome;
use ferry_tests::{FhirServer, SiteBuilder};

use crate::harness::{report, run, runtime, Fixture};

const CLIENT: &str = "ferry-clinic-12";
const SECRET: &str = "client-s3cr3t-5e1f0a";

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `n` letters for the two patients (alternating), with their manifest.
fn documents(fx: &Fixture, p1: &str, p2: &str, n: usize) {
    write(fx.dir.path(), "maps/patients.csv", format!("providerId,patientGuid\n4711,{p1}\n4712,{p2}\n").as_bytes());
    let drop = fx.dir.path().join("drop");
    let mut manifest = String::from("file,patient,type,title\n");
    for i in 0..n {
        let body = format!("%PDF-1.4\n% letter {i}\ntrailer << >>\n%%EOF\n");
        write(&drop, &format!("letters/{i}.pdf"), body.as_bytes());
        manifest.push_str(&format!("letters/{i}.pdf,{},letter,Letter {i}\n", if i % 2 == 0 { 4711 } else { 4712 }));
    }
    write(&drop, "manifest.csv", manifest.as_bytes());
}

/// The pipeline, with `auth` as the store's `http_auth` for the server.
fn pipeline(server: &FhirServer, auth: &str) -> String {
    format!(
        r#"
[pipeline]
name = "fhir-auth"
plugin_path = ["{plugins}"]
state_dir = "state"

[source]
plugin = "folder-documents"
grants.fs = {{ inbox = "drop" }}
min_age = "0s"

[source.config]
root = "inbox"
manifest = "manifest.csv"
types.letter = {{ system = "http://loinc.org", code = "34133-9", display = "Summary of episode note" }}

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "maps" }}
config = {{ root = "maps", path = "patients.csv", key_column = "providerId", scheme = "provider-patient-id" }}

[store]
plugin = "fhir-store"
concurrency = 4
grants.http = ["{host}"]

[store.grants.http_auth."{host}"]
{auth}

[store.config]
base_url = "{base}"
"#,
        plugins = ferry_tests::plugin_dir().display(),
        host = server.host(),
        base = server.base_url(),
    )
}

fn load(fx: &Fixture, text: &str, env: &[(&str, &str)]) -> Result<Pipeline, String> {
    let path = fx.dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let env = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    Pipeline::parse(&path, text, &env).map_err(|e| e.to_string())
}

fn secret_auth(server: &FhirServer) -> String {
    format!(
        "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"${{FHIR_CLIENT_SECRET}}\"\nscope = \"system/DocumentReference.write system/Binary.write\"",
        server.token_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_for_the_run_and_a_new_one_when_it_is_refused() {
    let server = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let p1 = server.add_patient(&[]);
    let p2 = server.add_patient(&[]);
    let fx = Fixture::new(SiteBuilder::new());
    documents(&fx, &p1, &p2, 6);
    let p = load(&fx, &pipeline(&server, &secret_auth(&server)), &[("FHIR_CLIENT_SECRET", SECRET)]).unwrap();
    let rt = runtime(p).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 6, "{}", s.line());
    assert_eq!(server.count("DocumentReference"), 6);
    assert_eq!(server.tokens_issued(), 1, "one token, shared by the store's instances");
    assert_eq!(server.request_count("POST /auth/token"), 1, "{:#?}", server.route_counts());

    // the server forgets the token early: 401, a new token, the same request again
    server.expire_tokens();
    documents(&fx, &p1, &p2, 8);
    server.reset_counts();
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    assert_eq!(s.count(Outcome::Failed), 0, "{}", s.line());
    assert_eq!(server.count("DocumentReference"), 8);
    assert_eq!(server.tokens_issued(), 2);
    let refused = server.requests().iter().filter(|r| r.status == 401).count();
    assert!((1..=4).contains(&refused), "the stale token was tried, then replaced: {:#?}", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_backend_services_private_key_jwt() {
    let root = ferry_tests::workspace_root();
    for (alg, private, public) in [
        ("ES384", "tests/pipeline/keys/ec384-private.pem", "tests/pipeline/keys/ec384-public.pem"),
        ("RS384", "tests/service/keys/rsa-private.pem", "tests/service/keys/rsa-public.pem"),
    ] {
        let server = FhirServer::builder().jwt_client(CLIENT).start();
        let p1 = server.add_patient(&[]);
        let p2 = server.add_patient(&[]);
        let fx = Fixture::new(SiteBuilder::new());
        documents(&fx, &p1, &p2, 3);
        let key = std::fs::read_to_string(root.join(private)).unwrap();
        let auth = format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"{CLIENT}\"\nprivate_key = \"${{FHIR_KEY}}\"\nkey_id = \"ferry-2026-12\"\nscope = \"system/*.write\"",
            server.token_url()
        );
        let p = load(&fx, &pipeline(&server, &auth), &[("FHIR_KEY", &key)]).unwrap();
        let rt = runtime(p).await;
        let s = run(&rt).await;
        assert!(s.errors().is_empty(), "{alg}: {:?}", s.errors());
        assert_eq!(s.count(Outcome::Stored), 3, "{alg}: {}", s.line());

        let assertions = server.client_assertions();
        assert_eq!(assertions.len(), 1, "{alg}: one token for the run");
        let a = &assertions[0];
        assert_eq!(a["header"]["alg"], alg);
        assert_eq!(a["header"]["kid"], "ferry-2026-12");
        assert_eq!(a["header"]["typ"], "JWT");
        let claims = &a["claims"];
        assert_eq!(claims["iss"], CLIENT);
        assert_eq!(claims["sub"], CLIENT);
        assert_eq!(claims["aud"], server.token_url());
        let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
        assert!(exp > iat && exp - iat <= 300, "{alg}: at most five minutes: {claims}");
        // signed with the configured key
        let pem = std::fs::read(root.join(public)).unwrap();
        let (algorithm, key) = match alg {
            "ES384" => (jsonwebtoken::Algorithm::ES384, jsonwebtoken::DecodingKey::from_ec_pem(&pem).unwrap()),
            _ => (jsonwebtoken::Algorithm::RS384, jsonwebtoken::DecodingKey::from_rsa_pem(&pem).unwrap()),
        };
        let mut v = jsonwebtoken::Validation::new(algorithm);
        v.set_audience(&[server.token_url()]);
        let jwt = a["jwt"].as_str().expect("the assertion as sent");
        jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
            .unwrap_or_else(|e| panic!("{alg}: the assertion verifies with the public key: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_clear_error_that_never_shows_it() {
    let server = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let p1 = server.add_patient(&[]);
    let p2 = server.add_patient(&[]);
    let fx = Fixture::new(SiteBuilder::new());
    documents(&fx, &p1, &p2, 2);
    let wrong = "not-the-s3cr3t-9b7c";
    let p = load(&fx, &pipeline(&server, &secret_auth(&server)), &[("FHIR_CLIENT_SECRET", wrong)]).unwrap();
    let rt = runtime(p).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Failed), 2, "{}", s.line());
    let r = report(&s, "letters/0.pdf");
    assert!(r.detail.contains("token endpoint") && r.detail.contains("invalid_client"), "{}", r.detail);
    assert!(r.detail.contains(CLIENT) && r.detail.contains("grants.http_auth"), "{}", r.detail);
    for r in s.reports() {
        assert!(!r.detail.contains(wrong) && !r.detail.contains(SECRET), "{}", r.detail);
    }
    assert_eq!(server.count("DocumentReference"), 0);
}

#[test]
fn credentials_go_only_to_granted_hosts_over_https() {
    let server = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let fx = Fixture::new(SiteBuilder::new());
    let env = [("FHIR_CLIENT_SECRET", SECRET)];

    // for a host the stage may not reach
    let text = pipeline(&server, &secret_auth(&server)).replace(
        &format!("[store.grants.http_auth.\"{}\"]", server.host()),
        "[store.grants.http_auth.\"evil.example\"]",
    );
    let e = load(&fx, &text, &env).unwrap_err();
    assert!(e.contains("store.grants.http_auth.\"evil.example\"") && e.contains("not in store.grants.http"), "{e}");

    // a token URL in the clear to another machine
    let text = pipeline(&server, &secret_auth(&server)).replace(&server.token_url(), "http://auth.example/token");
    let e = load(&fx, &text, &env).unwrap_err();
    assert!(e.contains("token_url") && e.contains("https"), "{e}");

    // both a secret and a key; an unknown key
    let text = pipeline(&server, &format!("{}\nprivate_key = \"x\"", secret_auth(&server)));
    let e = load(&fx, &text, &env).unwrap_err();
    assert!(e.contains("not both"), "{e}");
    let text = pipeline(&server, &format!("{}\nclient_secrte = \"x\"", secret_auth(&server)));
    let e = load(&fx, &text, &env).unwrap_err();
    assert!(e.contains("client_secrte"), "{e}");
    assert!(!e.contains(SECRET), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_gets_a_token_and_says_so_in_one_line_per_stage() {
    let server = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let fx = Fixture::new(SiteBuilder::new());
    documents(&fx, "p1", "p2", 1);
    let text = pipeline(&server, &secret_auth(&server));
    let p = load(&fx, &text, &[("FHIR_CLIENT_SECRET", SECRET)]).unwrap();
    let lines = ferry::check::check(&p, &crate::harness::options()).await.unwrap();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let store = lines.iter().find(|l| l.section == "store").unwrap();
    assert!(store.ok, "{store}");
    assert!(store.message.contains(&format!("oauth2 client `{CLIENT}`: token issued")), "{store}");
    // the host itself is reached too
    assert!(
        store.message.contains(&format!("http:{} (port {} answers;", server.host(), server.addr().port())),
        "{store}"
    );
    assert_eq!(server.tokens_issued(), 1);

    // a wrong secret: the store's line fails, naming the client, not the secret
    let p = load(&fx, &text, &[("FHIR_CLIENT_SECRET", "wrong-one-77")]).unwrap();
    let lines = ferry::check::check(&p, &crate::harness::options()).await.unwrap();
    let store = lines.iter().find(|l| l.section == "store").unwrap();
    assert!(!store.ok, "{store}");
    assert!(store.message.contains("invalid_client") && !store.message.contains("wrong-one-77"), "{store}");
}
