//! The stock store `fhir-store`: documents from a drop folder
//! (`folder-documents`) for patients `csv-resolver` maps to Patient ids
//! become DocumentReferences on a FHIR R4 server (the test server, with a
//! static bearer token given as `${FHIR_TOKEN}`): a small PDF inline, a
//! file above `binary_threshold` as a Binary it references. Re-running
//! (with the same ledger or a fresh one) stores nothing new and uploads no
//! second Binary; a wrong token fails the items with a hint that does not
//! contain it; a 503 is waited out; a changed file updates its
//! DocumentReference (a new version of the same resource), never a second.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ferry::config::Pipeline;
use ferry::runner::Outcome;
use ferry_tests::{FhirFault, FhirServer, SiteBuilder};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{report, run, runtime, Fixture};

const TOKEN: &str = "fhir-test-token-7f3a9c";

/// A minimal PDF (enough for `folder-documents`, which goes by extension).
fn tiny_pdf(text: &str) -> Vec<u8> {
    format!("%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n% {text}\ntrailer << /Root 1 0 R >>\n%%EOF\n").into_bytes()
}

/// 50 KiB of text, over the 1 KiB threshold.
fn big_text() -> Vec<u8> {
    let line = b"Befund: unauffaellig. Kontrolle in 6 Monaten.\n";
    line.iter().copied().cycle().take(50 * 1024).collect()
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A drop folder with two documents, and the provider → Patient map.
fn setup(fx: &Fixture, p1: &str, p2: &str) {
    let map = format!("providerId,patientGuid\n4711,{p1}\n4712,{p2}\n");
    write(fx.dir.path(), "maps/patients.csv", map.as_bytes());
    let drop = fx.dir.path().join("drop");
    write(&drop, "2024/blood-panel.pdf", &tiny_pdf("Blood panel"));
    write(&drop, "2024/discharge.txt", &big_text());
    write(
        &drop,
        "manifest.csv",
        "file,patient,type,date,title,author\n\
         2024/blood-panel.pdf,4711,lab,2024-03-17,Blood panel,Labor Dr. Schmidt\n\
         2024/discharge.txt,4712,letter,2024-03-18T10:15:00+01:00,Discharge letter,Klinikum Nord\n"
            .as_bytes(),
    );
}

fn pipeline(server: &FhirServer) -> String {
    format!(
        r#"
[pipeline]
name = "fhir"
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
types.letter = {{ system = "http://loinc.org", code = "18842-5", display = "Discharge summary" }}

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "maps" }}
config = {{ root = "maps", path = "patients.csv", key_column = "providerId", scheme = "provider-patient-id" }}

[store]
plugin = "fhir-store"
grants.http = ["{host}"]

[store.config]
base_url = "{base}"
token = "${{FHIR_TOKEN}}"
binary_threshold = 1024
"#,
        plugins = ferry_tests::plugin_dir().display(),
        host = server.host(),
        base = server.base_url(),
    )
}

/// Loads the pipeline with `FHIR_TOKEN` set to `token`.
fn load(fx: &Fixture, text: &str, token: &str) -> Pipeline {
    let path = fx.dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let env = |k: &str| (k == "FHIR_TOKEN").then(|| token.to_string());
    Pipeline::parse(&path, text, &env).unwrap_or_else(|e| panic!("pipeline loads: {e}"))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn sha1_b64(b: &[u8]) -> String {
    STANDARD.encode(<sha1::Sha1 as sha1::Digest>::digest(b))
}

/// The DocumentReference whose identifier is this file's SHA-256.
fn doc_for<'a>(docs: &'a [Value], bytes: &[u8]) -> &'a Value {
    let sum = sha256_hex(bytes);
    let found: Vec<&Value> = docs.iter().filter(|d| d["identifier"][0]["value"] == sum.as_str()).collect();
    assert_eq!(found.len(), 1, "one DocumentReference for {sum}: {docs:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_become_document_references() {
    let server = FhirServer::builder().static_token(TOKEN).start();
    let p1 = server.add_patient(&[("urn:provider", "4711")]);
    let p2 = server.add_patient(&[("urn:provider", "4712")]);
    let fx = Fixture::new(SiteBuilder::new());
    setup(&fx, &p1, &p2);
    let (pdf, big) = (tiny_pdf("Blood panel"), big_text());

    // the very first request meets a 503: the host's retry waits it out
    server.fault_next(1, FhirFault::Status(503));
    let rt = runtime(load(&fx, &pipeline(&server), TOKEN)).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    assert_eq!(server.pending_faults(), 0);
    assert_eq!(server.requests()[0].status, 503, "{:#?}", server.requests());

    let docs = server.resources("DocumentReference");
    assert_eq!(docs.len(), 2, "{docs:#?}");
    assert_eq!(server.count("Binary"), 1, "only the large file is a Binary");

    // the small PDF: inline
    let d = doc_for(&docs, &pdf);
    assert_eq!(report(&s, "2024/blood-panel.pdf").patient_guid.as_deref(), Some(p1.as_str()));
    assert_eq!(d["status"], "current");
    assert_eq!(d["subject"]["reference"], format!("Patient/{p1}"));
    assert_eq!(d["identifier"][0]["system"], "urn:ferry:doc");
    assert_eq!(
        d["type"]["coding"][0],
        serde_json::json!({ "system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report" })
    );
    assert_eq!(d["description"], "Blood panel");
    assert_eq!(d["author"][0]["display"], "Labor Dr. Schmidt");
    assert!(d.get("date").is_none(), "a date alone is no instant: {d:#}");
    assert_eq!(d["context"]["period"]["start"], "2024-03-17");
    let a = &d["content"][0]["attachment"];
    assert_eq!(a["contentType"], "application/pdf");
    assert_eq!(a["size"], pdf.len());
    assert_eq!(a["hash"], sha1_b64(&pdf));
    assert_eq!(a["title"], "blood-panel.pdf");
    assert_eq!(STANDARD.decode(a["data"].as_str().expect("inline data")).unwrap(), pdf);
    assert!(a.get("url").is_none());
    let r = report(&s, "2024/blood-panel.pdf");
    assert_eq!(r.outcome, Outcome::Stored);
    assert_eq!(r.location.as_deref(), Some(format!("DocumentReference/{}", d["id"].as_str().unwrap()).as_str()));

    // the large file: a Binary, referenced
    let d = doc_for(&docs, &big);
    assert_eq!(d["subject"]["reference"], format!("Patient/{p2}"));
    assert_eq!(d["type"]["coding"][0]["code"], "18842-5");
    assert_eq!(d["date"], "2024-03-18T10:15:00+01:00");
    let a = &d["content"][0]["attachment"];
    assert_eq!(a["contentType"], "text/plain");
    assert_eq!(a["size"], big.len());
    assert_eq!(a["hash"], sha1_b64(&big));
    assert!(a.get("data").is_none(), "{a:#}");
    let binary = a["url"].as_str().expect("url").strip_prefix("Binary/").expect("Binary/<id>");
    let (ct, bytes) = server.binary(binary).expect("the Binary");
    assert_eq!(ct, "text/plain");
    assert!(bytes == big, "the Binary holds the file's bytes");

    // again, same ledger: nothing new
    server.reset_counts();
    let second = run(&rt).await;
    assert_eq!(second.count(Outcome::Stored), 0, "{}", second.line());
    assert_eq!(second.count(Outcome::Unchanged), 2, "{}", second.line());
    assert_eq!(server.count("DocumentReference"), 2);
    assert_eq!(server.count("Binary"), 1);
    assert_eq!(server.request_count("POST /Binary"), 0);
    drop(rt);

    // a fresh ledger (a reinstalled ferry): the server says unchanged, no second Binary
    let fresh = Fixture::new(SiteBuilder::new());
    setup(&fresh, &p1, &p2);
    server.reset_counts();
    let rt = runtime(load(&fresh, &pipeline(&server), TOKEN)).await;
    let third = run(&rt).await;
    assert!(third.errors().is_empty(), "{:?}", third.errors());
    assert_eq!(third.count(Outcome::Unchanged), 2, "{}", third.line());
    assert_eq!(third.count(Outcome::Stored), 0, "{}", third.line());
    assert_eq!(server.count("DocumentReference"), 2);
    assert_eq!(server.count("Binary"), 1);
    assert_eq!(server.request_count("POST /Binary"), 0, "{:#?}", server.route_counts());
    assert_eq!(server.request_count("POST /DocumentReference"), 1, "the inline one: a conditional create");
    assert_eq!(server.request_count("GET /DocumentReference"), 1, "the large one: found by its identifier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_for_two_patients_is_two_documents_never_the_other_ones() {
    let server = FhirServer::builder().static_token(TOKEN).start();
    let p1 = server.add_patient(&[("urn:provider", "4711")]);
    let p2 = server.add_patient(&[("urn:provider", "4712")]);
    let fx = Fixture::new(SiteBuilder::new());
    let map = format!("providerId,patientGuid\n4711,{p1}\n4712,{p2}\n");
    write(fx.dir.path(), "maps/patients.csv", map.as_bytes());
    let drop = fx.dir.path().join("drop");
    // one generic form letter, byte for byte the same, for two patients
    let letter = tiny_pdf("Vaccination reminder");
    write(&drop, "a/reminder.pdf", &letter);
    write(&drop, "b/reminder.pdf", &letter);
    write(
        &drop,
        "manifest.csv",
        "file,patient,type,title\na/reminder.pdf,4711,letter,Reminder\nb/reminder.pdf,4712,letter,Reminder\n"
            .as_bytes(),
    );
    let rt = runtime(load(&fx, &pipeline(&server), TOKEN)).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "each patient gets the letter: {}", s.line());
    let mut subjects: Vec<String> = server
        .resources("DocumentReference")
        .iter()
        .map(|d| d["subject"]["reference"].as_str().unwrap_or_default().to_owned())
        .collect();
    subjects.sort();
    let mut want = vec![format!("Patient/{p1}"), format!("Patient/{p2}")];
    want.sort();
    assert_eq!(subjects, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_the_items_without_showing_it() {
    let server = FhirServer::builder().static_token(TOKEN).start();
    let p1 = server.add_patient(&[]);
    let p2 = server.add_patient(&[]);
    let fx = Fixture::new(SiteBuilder::new());
    setup(&fx, &p1, &p2);
    let wrong = "wrong-token-4d2e8b1";
    let rt = runtime(load(&fx, &pipeline(&server), wrong)).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Failed), 2, "{}", s.line());
    for subject in ["2024/blood-panel.pdf", "2024/discharge.txt"] {
        let r = report(&s, subject);
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.detail.contains("401") && r.detail.contains("token"), "{}", r.detail);
        assert!(!r.detail.contains(wrong), "the token must not show: {}", r.detail);
    }
    assert_eq!(server.count("DocumentReference"), 0);
    assert_eq!(server.count("Binary"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_document_updates_its_document_reference_instead_of_adding_one() {
    let server = FhirServer::builder().static_token(TOKEN).start();
    let p1 = server.add_patient(&[]);
    let p2 = server.add_patient(&[]);
    let fx = Fixture::new(SiteBuilder::new());
    setup(&fx, &p1, &p2);
    let rt = runtime(load(&fx, &pipeline(&server), TOKEN)).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    let before = report(&s, "2024/blood-panel.pdf").location.unwrap();
    let big_before = report(&s, "2024/discharge.txt").location.unwrap();

    // the lab corrects the report; the discharge letter grows
    let corrected = tiny_pdf("Blood panel (corrected: potassium 4.1)");
    let mut longer = big_text();
    longer.extend_from_slice(b"Nachtrag: Kontrolle vorgezogen.\n");
    ferry_tests::write_settled(&fx.dir.path().join("drop/2024/blood-panel.pdf"), &corrected).unwrap();
    ferry_tests::write_settled(&fx.dir.path().join("drop/2024/discharge.txt"), &longer).unwrap();
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    assert_eq!(report(&s, "2024/blood-panel.pdf").location.as_deref(), Some(before.as_str()), "the same resource");
    assert_eq!(report(&s, "2024/discharge.txt").location.as_deref(), Some(big_before.as_str()));
    assert_eq!(server.count("DocumentReference"), 2, "updated, not duplicated");

    let docs = server.resources("DocumentReference");
    let d = doc_for(&docs, &corrected);
    assert_eq!(format!("DocumentReference/{}", d["id"].as_str().unwrap()), before);
    assert_eq!(d["meta"]["versionId"], "2");
    assert_eq!(d["subject"]["reference"], format!("Patient/{p1}"));
    let a = &d["content"][0]["attachment"];
    assert_eq!(STANDARD.decode(a["data"].as_str().unwrap()).unwrap(), corrected);
    assert_eq!(a["hash"], sha1_b64(&corrected));
    assert_eq!(
        server.history("DocumentReference", d["id"].as_str().unwrap()).len(),
        2,
        "the old version stays in the history"
    );
    let d = doc_for(&docs, &longer);
    let binary = d["content"][0]["attachment"]["url"].as_str().unwrap().strip_prefix("Binary/").unwrap();
    assert!(server.binary(binary).unwrap().1 == longer, "the new Binary holds the new bytes");

    // nothing changed since: nothing written
    server.reset_counts();
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Unchanged), 2, "{}", s.line());
    assert_eq!(server.request_count("PUT /DocumentReference/{id}"), 0, "{:#?}", server.route_counts());
}

/// A benchmark, not a check (`cargo test -p ferry --test pipeline --release
/// -- --ignored --nocapture documents_per_second`): 300 small PDFs from a
/// drop folder to the FHIR test server through ferry, next to a plain loop
/// of conditional-create POSTs of the same DocumentReferences (4 at once,
/// like the store's concurrency) in the same run. Prints both rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn documents_per_second_next_to_a_plain_post_loop() {
    const N: usize = 300;
    let server = FhirServer::builder().static_token(TOKEN).start();
    let p1 = server.add_patient(&[]);
    let p2 = server.add_patient(&[]);
    let fx = Fixture::new(SiteBuilder::new());
    write(fx.dir.path(), "maps/patients.csv", format!("providerId,patientGuid\n4711,{p1}\n4712,{p2}\n").as_bytes());
    let mut manifest = String::from("file,patient,type,title\n");
    let mut bodies = Vec::new();
    for i in 0..N {
        let b = ferry_tests::pdf::pdf(&format!("Report {i}"), "D:20240317", 1, &format!("value {i}"));
        write(&fx.dir.path().join("drop"), &format!("r/{i}.pdf"), &b);
        manifest.push_str(&format!("r/{i}.pdf,4711,lab,Report {i}\n"));
        bodies.push(b);
    }
    write(&fx.dir.path().join("drop"), "manifest.csv", manifest.as_bytes());
    let text = pipeline(&server)
        .replace("[store]\nplugin = \"fhir-store\"", "[store]\nplugin = \"fhir-store\"\nconcurrency = 4");
    let rt = runtime(load(&fx, &text, TOKEN)).await;
    let t = std::time::Instant::now();
    let s = run(&rt).await;
    let ferry = t.elapsed();
    assert_eq!(s.count(Outcome::Stored) as usize, N, "{}", s.line());

    // the baseline: the same JSON a client would send, conditional create, 4 at once
    let client = reqwest::Client::new();
    let url = format!("{}/DocumentReference", server.base_url());
    let t = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    for (i, b) in bodies.into_iter().enumerate() {
        let (client, url, sem, p2) = (client.clone(), url.clone(), sem.clone(), p2.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let sum = sha256_hex(&b);
            let doc = serde_json::json!({
                "resourceType": "DocumentReference", "status": "current",
                "identifier": [{ "system": "urn:bench", "value": sum }],
                "subject": { "reference": format!("Patient/{p2}") }, "description": format!("Report {i}"),
                "content": [{ "attachment": { "contentType": "application/pdf", "data": STANDARD.encode(&b),
                    "size": b.len(), "hash": sha1_b64(&b) } }],
            });
            let r = client
                .post(&url)
                .bearer_auth(TOKEN)
                .header("Content-Type", "application/fhir+json")
                .header("If-None-Exist", format!("identifier=urn:bench|{sum}&subject=Patient/{p2}"))
                .body(serde_json::to_vec(&doc).unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let plain = t.elapsed();
    let rate = |d: std::time::Duration| N as f64 / d.as_secs_f64();
    println!(
        "documents to the FHIR test server: ferry {:.0} docs/s ({:.2?} for {N}), plain POST loop {:.0} docs/s ({:.2?}); ferry / plain = {:.2}",
        rate(ferry),
        ferry,
        rate(plain),
        plain,
        ferry.as_secs_f64() / plain.as_secs_f64()
    );
}
