//! Provider FHIR → platform FHIR: `fhir-documents` reads the provider's
//! DocumentReferences (two FHIR test servers on 127.0.0.1), `doc-meta`
//! checks each PDF, `fhir-resolver` finds the platform's Patient by the
//! shared identifier, `fhir-store` files the document there.
//!
//! - documents arrive once, with the provider's bytes, type, date and
//!   title, for the platform's own Patient; inline data and Binaries both;
//! - a patient the platform does not know is unresolved, one it knows
//!   twice is quarantined: neither is attached to a guess;
//! - the next pass starts at the resume point: it asks the provider only
//!   for what was updated since, downloads nothing old; a new document
//!   and a corrected one arrive, the corrected one updating its
//!   DocumentReference on the platform;
//! - a corrupt PDF fails in `doc-meta`, named, and blocks nothing else;
//! - `kill -9` mid-run, then a re-run: each document on the platform once;
//! - the provider's OAuth2 (client credentials) is the host's business.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ferry::config::Pipeline;
use ferry::runner::Outcome;
use ferry_tests::pdf::pdf;
use ferry_tests::{FhirServer, SiteBuilder};
use serde_json::{json, Value};

use crate::harness::{report, run, runtime, Fixture};

/// The identifier both systems know the patient by (the German health
/// insurance number, KVNR).
const KVNR: &str = "urn:oid:1.2.276.0.76.4.8";
const CLIENT: &str = "ferry-clinic";
const SECRET: &str = "provider-s3cr3t";

fn pipeline(provider: &FhirServer, platform: &FhirServer, page_size: usize) -> String {
    format!(
        r#"
[pipeline]
name = "documents-fhir"
plugin_path = ["{plugins}"]
state_dir = "state"

[source]
plugin = "fhir-documents"
grants.http = ["{provider_host}"]

[source.grants.http_auth."{provider_host}"]
kind = "oauth2"
token_url = "{token_url}"
client_id = "{CLIENT}"
client_secret = "${{PROVIDER_SECRET}}"
scope = "system/DocumentReference.read system/Binary.read system/Patient.read"

[source.config]
base_url = "{provider}"
page_size = {page_size}
identifier_systems = ["{KVNR}"]

[extractor]
plugin = "doc-meta"

[resolver]
plugin = "fhir-resolver"
grants.http = ["{platform_host}"]
config = {{ base_url = "{platform}", identifier_systems = ["{KVNR}"] }}

[store]
plugin = "fhir-store"
grants.http = ["{platform_host}"]
config = {{ base_url = "{platform}", binary_threshold = 2048 }}
"#,
        plugins = ferry_tests::plugin_dir().display(),
        provider_host = provider.host(),
        platform_host = platform.host(),
        token_url = provider.token_url(),
        provider = provider.base_url(),
        platform = platform.base_url(),
    )
}

fn load(fx: &Fixture, text: &str) -> Pipeline {
    let path = fx.dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let env = |k: &str| (k == "PROVIDER_SECRET").then(|| SECRET.to_string());
    Pipeline::parse(&path, text, &env).unwrap_or_else(|e| panic!("pipeline loads: {e}"))
}

fn patient(server: &FhirServer, kvnr: &str, family: &str) -> String {
    server.add_resource(json!({
        "resourceType": "Patient",
        "identifier": [{ "system": KVNR, "value": kvnr }, { "system": "urn:provider:mrn", "value": format!("M-{kvnr}") }],
        "name": [{ "use": "official", "family": family, "given": ["Anna"] }],
        "birthDate": "1980-04-02",
    }))
}

/// A DocumentReference on the provider with its PDF inline or as a Binary.
fn document(provider: &FhirServer, patient: &str, code: &str, title: &str, bytes: &[u8], inline: bool) -> String {
    let attachment = if inline {
        json!({ "contentType": "application/pdf", "title": format!("{title}.pdf"), "data": STANDARD.encode(bytes), "size": bytes.len() })
    } else {
        let binary = provider.add_binary("application/pdf", bytes.to_vec());
        json!({ "contentType": "application/pdf", "title": format!("{title}.pdf"), "url": format!("Binary/{binary}"), "size": bytes.len() })
    };
    provider.add_resource(json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "type": { "coding": [{ "system": "http://loinc.org", "code": code, "display": title }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "date": "2024-03-17T10:15:00+01:00",
        "author": [{ "display": "Labor Dr. Schmidt" }],
        "content": [{ "attachment": attachment }],
    }))
}

/// The platform's DocumentReference holding these bytes.
fn on_platform(platform: &FhirServer, bytes: &[u8]) -> Value {
    let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    let found: Vec<Value> = platform
        .resources("DocumentReference")
        .into_iter()
        .filter(|d| d["identifier"][0]["value"] == sum.as_str())
        .collect();
    assert_eq!(found.len(), 1, "one DocumentReference for {sum}");
    found.into_iter().next().unwrap()
}

fn attachment_bytes(platform: &FhirServer, d: &Value) -> Vec<u8> {
    let a = &d["content"][0]["attachment"];
    match a["data"].as_str() {
        Some(b64) => STANDARD.decode(b64).unwrap(),
        None => platform.binary(a["url"].as_str().unwrap().strip_prefix("Binary/").unwrap()).unwrap().1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_documents_arrive_once_for_the_right_patient() {
    let provider = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let platform = FhirServer::builder().no_auth().start();
    let anna = patient(&provider, "A123456789", "Weber");
    let ben = patient(&provider, "B987654321", "Kaya");
    let cleo = patient(&provider, "C555555555", "Roth");
    // the platform knows Anna once, Ben not at all, Cleo twice
    let anna_there = platform.add_patient(&[(KVNR, "A123456789")]);
    platform.add_patient(&[(KVNR, "C555555555")]);
    platform.add_patient(&[(KVNR, "C555555555")]);

    let lab = pdf("Blood panel", "D:20240317101500+01'00'", 1, "Hb 14.1 g/dl");
    let letter = pdf("Discharge letter", "D:20240318090000+01'00'", 3, "Entlassbrief");
    let lab_id = document(&provider, &anna, "11502-2", "Laboratory report", &lab, true);
    document(&provider, &anna, "18842-5", "Discharge summary", &letter, false);
    let ben_doc = document(&provider, &ben, "11502-2", "Laboratory report", &pdf("Ben", "D:2024", 1, "x"), true);
    let cleo_doc = document(&provider, &cleo, "11502-2", "Laboratory report", &pdf("Cleo", "D:2024", 1, "y"), true);
    let corrupt = document(&provider, &anna, "11506-3", "Progress note", b"%PDF-1.7\nthis is no PDF at all", true);

    let fx = Fixture::new(SiteBuilder::new());
    let rt = runtime(load(&fx, &pipeline(&provider, &platform, 20))).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    assert_eq!(s.count(Outcome::Unresolved), 1, "{}", s.line());
    assert_eq!(s.count(Outcome::Quarantined), 1, "{}", s.line());
    assert_eq!(s.count(Outcome::Failed), 1, "{}", s.line());
    assert_eq!(report(&s, &format!("DocumentReference/{ben_doc}")).outcome, Outcome::Unresolved);
    assert_eq!(report(&s, &format!("DocumentReference/{cleo_doc}")).outcome, Outcome::Quarantined);
    let bad = report(&s, &format!("DocumentReference/{corrupt}"));
    assert!(bad.detail.contains("PDF"), "doc-meta says what is wrong: {}", bad.detail);
    assert_eq!(provider.tokens_issued(), 1);

    // on the platform: Anna's two documents, nothing for anyone else
    assert_eq!(platform.count("DocumentReference"), 2);
    for (bytes, code) in [(&lab, "11502-2"), (&letter, "18842-5")] {
        let d = on_platform(&platform, bytes);
        assert_eq!(d["subject"]["reference"], format!("Patient/{anna_there}"));
        assert_eq!(d["type"]["coding"][0]["code"], code);
        assert_eq!(d["author"][0]["display"], "Labor Dr. Schmidt");
        assert_eq!(d["date"], "2024-03-17T10:15:00+01:00");
        assert!(&attachment_bytes(&platform, &d) == bytes, "the provider's bytes");
    }
    assert_eq!(report(&s, &format!("DocumentReference/{lab_id}")).patient_guid.as_deref(), Some(anna_there.as_str()));

    // again: nothing new on the platform
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 0, "{}", s.line());
    assert_eq!(platform.count("DocumentReference"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_pass_reads_only_what_changed_and_updates_what_was_corrected() {
    let provider = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let platform = FhirServer::builder().no_auth().start();
    let anna = patient(&provider, "A123456789", "Weber");
    let anna_there = platform.add_patient(&[(KVNR, "A123456789")]);
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..5 {
        let b = pdf(&format!("Report {i}"), "D:20240317", 1, &format!("value {i}"));
        ids.push(document(&provider, &anna, "11502-2", &format!("Report {i}"), &b, i % 2 == 0));
        bodies.push(b);
    }
    let fx = Fixture::new(SiteBuilder::new());
    // pages of two: five documents are three pages and an empty one
    let rt = runtime(load(&fx, &pipeline(&provider, &platform, 2))).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 5, "{}", s.line());

    // nothing changed: one search from the resume point, no download
    provider.reset_counts();
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.scanned(), 0, "nothing new to look at: {}", s.line());
    let searches: Vec<_> = provider.requests().into_iter().filter(|r| r.route == "GET /DocumentReference").collect();
    assert_eq!(searches.len(), 1, "{searches:#?}");
    assert!(searches[0].query.as_deref().unwrap_or("").contains("_lastUpdated=ge"), "{searches:#?}");
    assert_eq!(provider.request_count("GET /Binary/{id}"), 0, "{:#?}", provider.route_counts());

    // a new document, and report 1 corrected (a new version, new bytes)
    let new = pdf("Report 5", "D:20240320", 2, "value 5");
    let new_id = document(&provider, &anna, "11502-2", "Report 5", &new, true);
    let corrected = pdf("Report 1 (corrected)", "D:20240317", 1, "value 1, corrected");
    let mut dr = provider.resource("DocumentReference", &ids[1]).unwrap();
    dr["content"][0]["attachment"] = json!({
        "contentType": "application/pdf", "title": "Report 1.pdf",
        "data": STANDARD.encode(&corrected), "size": corrected.len(),
    });
    dr.as_object_mut().unwrap().remove("meta");
    provider.add_resource(dr);
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    assert_eq!(s.scanned(), 2, "only the two changed documents: {}", s.line());
    assert_eq!(report(&s, &format!("DocumentReference/{new_id}")).outcome, Outcome::Stored);
    assert_eq!(platform.count("DocumentReference"), 6, "the corrected one updated its copy");
    let d = on_platform(&platform, &corrected);
    assert_eq!(d["subject"]["reference"], format!("Patient/{anna_there}"));
    assert_eq!(d["meta"]["versionId"], "2");
    assert!(attachment_bytes(&platform, &d) == corrected);
}

/// `kill -9` while documents go to the platform, then a re-run: every
/// document is on the platform exactly once (the conditional create finds
/// what the killed run stored but never wrote down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_run_then_rerun_files_each_document_exactly_once() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    const N: usize = 30;
    let provider = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let platform = FhirServer::builder().no_auth().start();
    let anna = patient(&provider, "A123456789", "Weber");
    platform.add_patient(&[(KVNR, "A123456789")]);
    let mut bodies = Vec::new();
    for i in 0..N {
        let b = pdf(&format!("Report {i}"), "D:20240317", 1, &format!("value {i}"));
        document(&provider, &anna, "11502-2", &format!("Report {i}"), &b, i % 3 != 0);
        bodies.push(b);
    }
    let fx = Fixture::new(SiteBuilder::new());
    let text = pipeline(&provider, &platform, 5)
        .replace("[store]\nplugin = \"fhir-store\"", "[store]\nplugin = \"fhir-store\"\nconcurrency = 1");
    std::fs::write(fx.dir.path().join("pipeline.toml"), &text).unwrap();
    let ferry = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.args(["run", "pipeline.toml", "--no-progress"])
            .current_dir(fx.dir.path())
            .env("FERRY_CACHE_DIR", ferry_tests::workspace_root().join("target/ferry-test-cache"))
            .env("PROVIDER_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    // a slow platform, so there is a middle to kill in
    platform.set_delay(Duration::from_millis(40));
    let mut child = ferry().spawn().unwrap();
    let started = Instant::now();
    while platform.count("DocumentReference") < 6 {
        assert!(started.elapsed() < Duration::from_secs(60), "ferry made no progress");
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!("ferry ended before it could be killed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = platform.count("DocumentReference");
    assert!(after_kill < N, "killed mid-run ({after_kill} documents)");

    platform.set_delay(Duration::ZERO);
    let out = ferry().output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(platform.count("DocumentReference"), N, "every document, none twice");
    for b in &bodies {
        let d = on_platform(&platform, b); // asserts exactly one
        assert!(attachment_bytes(&platform, &d) == *b);
    }
}
