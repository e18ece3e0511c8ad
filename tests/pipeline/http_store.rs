//! `http-store`, the sink configured by request templates, against a
//! made-up practice platform on 127.0.0.1 (`tests/support/docs_platform.rs`:
//! multipart create, search, JSON update, an API key header):
//!
//! - a drop folder's documents land on the right patients byte for byte
//!   (multipart, parsed by a real parser), the key sent by the host from
//!   `grants.http_auth`; a 503 on the first request is waited out;
//! - a document for a patient the platform does not know fails with the
//!   platform's answer and does not hold up the others;
//! - a changed document updates its remote copy (`PUT`, base64 in JSON),
//!   never a second one; a reinstalled ferry (fresh ledger) finds every
//!   copy by its tag and sends nothing;
//! - a wrong key is a permanent error naming `grants.http_auth`, and
//!   nothing lands.

use std::path::Path;

use ferry::config::Pipeline;
use ferry::runner::Outcome;
use ferry_tests::pdf::pdf;
use ferry_tests::{DocsPlatform, SiteBuilder};
use sha2::{Digest, Sha256};

use crate::harness::{report, run, runtime, Fixture};

const KEY: &str = "platform-key-5521";

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn pipeline(platform: &DocsPlatform) -> String {
    format!(
        r#"
[pipeline]
name = "documents-platform"
plugin_path = ["{plugins}"]
state_dir = "state"

[source]
plugin = "folder-documents"
grants.fs = {{ inbox = "drop" }}
min_age = "0s"

[source.config]
root = "inbox"
manifest = "manifest.csv"
types.lab = {{ system = "http://loinc.org", code = "11502-2", display = "Laboratory report" }}

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "maps" }}
config = {{ root = "maps", path = "patients.csv", key_column = "providerId", scheme = "provider-patient-id" }}

[store]
plugin = "http-store"
concurrency = 2
grants.http = ["{host}"]
grants.http_auth."{host}" = {{ kind = "header", name = "X-Api-Key", value = "${{PLATFORM_API_KEY}}" }}

[store.config]
base_url = "{base}"

[store.config.create]
path = "/patients/{{patient}}/documents"
body = {{ kind = "multipart", parts = [
  {{ name = "file", file = true }},
  {{ name = "title", value = "{{title}}" }},
  {{ name = "note", value = "{{type_display}} [ferry:{{sha12}}]" }},
] }}
id_pointer = "/id"

[store.config.update]
method = "PUT"
path = "/documents/{{remote_id}}/file"
body = {{ kind = "json", template = '{{"name": "{{title}}", "note": "{{type_display}} [ferry:{{sha12}}]", "data": "@FILE@"}}' }}

[store.config.find]
path = "/patients/{{patient}}/documents?search={{sha12}}"
results_pointer = "/items"
match_pointer = "/note"
match = "[ferry:{{sha12}}]"
patient_pointer = "/patient"
"#,
        plugins = ferry_tests::plugin_dir().display(),
        host = platform.host(),
        base = platform.base_url(),
    )
}

fn load(dir: &Path, text: &str, key: &str) -> Pipeline {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let env = |k: &str| (k == "PLATFORM_API_KEY").then(|| key.to_string());
    Pipeline::parse(&path, text, &env).unwrap_or_else(|e| panic!("pipeline loads: {e}"))
}

/// Three documents: two for patients the platform knows, one for a
/// patient it does not (`pat-9`).
fn setup(dir: &Path) -> [Vec<u8>; 3] {
    write(dir, "maps/patients.csv", b"providerId,patientGuid\n4711,pat-1\n4712,pat-2\n4713,pat-9\n");
    let a = pdf("Blood panel", "D:20240317101500+01'00'", 1, "Hb 14.1");
    let b = pdf("Thyroid panel", "D:20240318", 2, "TSH 2.1");
    let c = pdf("Lipids", "D:20240319", 1, "LDL 2.9");
    write(dir, "drop/a/blood.pdf", &a);
    write(dir, "drop/b/thyroid.pdf", &b);
    write(dir, "drop/c/lipids.pdf", &c);
    write(
        dir,
        "drop/manifest.csv",
        b"file,patient,type,date,title\n\
          a/blood.pdf,4711,lab,2024-03-17,Blood panel\n\
          b/thyroid.pdf,4712,lab,2024-03-18,Thyroid panel\n\
          c/lipids.pdf,4713,lab,2024-03-19,Lipids\n",
    );
    [a, b, c]
}

fn tag(bytes: &[u8]) -> String {
    format!("[ferry:{}]", &hex::encode(Sha256::digest(bytes))[..12])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_documents_reach_a_template_configured_platform_once() {
    let platform = DocsPlatform::start(KEY);
    platform.add_patient("pat-1");
    platform.add_patient("pat-2");
    platform.fault_next(&[503]);
    let fx = Fixture::new(SiteBuilder::new());
    let [a, b, _] = setup(fx.dir.path());
    let rt = runtime(load(fx.dir.path(), &pipeline(&platform), KEY)).await;
    let s = run(&rt).await;
    assert_eq!(platform.pending_faults(), 0);
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());

    for (patient, bytes, subject, title) in
        [("pat-1", &a, "a/blood.pdf", "Blood panel"), ("pat-2", &b, "b/thyroid.pdf", "Thyroid panel")]
    {
        let docs = platform.documents_of(patient);
        assert_eq!(docs.len(), 1, "{docs:#?}");
        let d = &docs[0];
        assert!(&d.bytes == bytes, "the file's bytes, through multipart");
        assert_eq!(d.title, title);
        assert_eq!(d.content_type, "application/pdf");
        assert!(subject.ends_with(&d.file_name), "{}", d.file_name);
        assert_eq!(d.note, format!("Laboratory report {}", tag(bytes)));
        let r = report(&s, subject);
        assert_eq!(r.location.as_deref(), Some(format!("http-store:{}", d.id).as_str()));
        assert_eq!(r.patient_guid.as_deref(), Some(patient));
    }

    // the unknown patient: the platform's 404, named; nothing attached anywhere else
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Failed), 1, "{}", s.line());
    let r = report(&s, "c/lipids.pdf");
    assert!(r.detail.contains("404") && r.detail.contains("no such patient"), "{}", r.detail);
    assert_eq!(platform.documents().len(), 2);

    // the lab sends a corrected blood panel under the same name: updated in place
    let a2 = pdf("Blood panel", "D:20240317101500+01'00'", 1, "Hb 14.3 (corrected)");
    write(fx.dir.path(), "drop/a/blood.pdf", &a2);
    let posts = platform.request_count("POST /patients/{patient}/documents");
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 1, "{}", s.line());
    let docs = platform.documents_of("pat-1");
    assert_eq!(docs.len(), 1, "updated, not duplicated: {docs:#?}");
    assert!(docs[0].bytes == a2, "the corrected bytes, through base64 in JSON");
    assert_eq!(docs[0].version, 2);
    assert_eq!(docs[0].note, format!("Laboratory report {}", tag(&a2)));
    assert_eq!(platform.request_count("PUT /documents/{id}/file"), 1);
    // nothing is posted: the failed document is parked until its retry wait is over
    assert_eq!(platform.request_count("POST /patients/{patient}/documents"), posts);
    drop(rt);

    // a reinstalled ferry: every copy found by its tag, nothing created or replaced
    let fresh = Fixture::new(SiteBuilder::new());
    setup(fresh.dir.path());
    write(fresh.dir.path(), "drop/a/blood.pdf", &a2);
    platform.add_patient("pat-9");
    std::fs::remove_file(fresh.dir.path().join("drop/c/lipids.pdf")).unwrap();
    write(fresh.dir.path(), "drop/manifest.csv", b"file,patient,type,date,title\na/blood.pdf,4711,lab,2024-03-17,Blood panel\nb/thyroid.pdf,4712,lab,2024-03-18,Thyroid panel\n");
    let posts = platform.request_count("POST /patients/{patient}/documents");
    let rt = runtime(load(fresh.dir.path(), &pipeline(&platform), KEY)).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Unchanged), 2, "{}", s.line());
    assert_eq!(platform.request_count("POST /patients/{patient}/documents"), posts);
    assert_eq!(platform.request_count("PUT /documents/{id}/file"), 1);
    assert_eq!(platform.documents().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_a_permanent_error_that_names_the_grant() {
    let platform = DocsPlatform::start(KEY);
    platform.add_patient("pat-1");
    platform.add_patient("pat-2");
    let fx = Fixture::new(SiteBuilder::new());
    setup(fx.dir.path());
    let rt = runtime(load(fx.dir.path(), &pipeline(&platform), "not-the-key-0001")).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 0, "{}", s.line());
    assert_eq!(s.count(Outcome::Failed), 3, "{}", s.line());
    for subject in ["a/blood.pdf", "b/thyroid.pdf", "c/lipids.pdf"] {
        let e = report(&s, subject).detail;
        assert!(e.contains("401") && e.contains("grants.http_auth"), "{e}");
        assert!(!e.contains("not-the-key-0001"), "{e}");
    }
    assert!(platform.documents().is_empty());
}
