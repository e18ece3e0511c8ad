//! Upload → platform as one flow: `ferry serve` over a documents pipeline
//! `registry-documents → doc-meta → fhir-resolver → fhir-store`. A
//! practitioner uploads through the API (the bytes go to the S3 server
//! on 127.0.0.1), the upload nudges a pass, and the document arrives at the
//! FHIR test platform as a DocumentReference of the record's patient —
//! whose guid is the platform's Patient id, confirmed with a read. A
//! patient the platform does not know gets nothing (unresolved, parked); a
//! document deleted before the pass is never sent; the document's listing
//! shows the remote id the sink reported.

use std::time::Duration;

use ferry::config::Pipeline;
use ferry::serve::auth::{self, Role};
use ferry_tests::{FhirServer, S3Server};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{options, AUDIENCE, CLINIC, ISSUER, SECRET};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const TOKEN: &str = "platform-token-5c1e";
const BUCKET: &str = "clinic-documents";
const BOUNDARY: &str = "ferry-upload-flow-boundary";

fn pipeline(server: &FhirServer, s3: &S3Server) -> String {
    let store = format!(
        r#"{{ kind = "s3", bucket = "{BUCKET}", endpoint = "{}", path_style = true, region = "us-east-1", access_key_id = "{}", secret_access_key = "{}" }}"#,
        s3.endpoint(),
        s3.access_key(),
        s3.secret_key()
    );
    format!(
        r#"
[pipeline]
name = "uploads"
plugin_path = ["{plugins}"]
state_dir = "state"
retry_after = "200ms"
retry_max = "2s"

[schedule]
every = "1h"

[source]
plugin = "registry-documents"
grants.object_store = {store}

[extractor]
plugin = "doc-meta"

[resolver]
plugin = "fhir-resolver"
grants.http = ["{host}"]
grants.http_auth."{host}" = {{ kind = "bearer", token = "${{PLATFORM_TOKEN}}" }}
config = {{ base_url = "{base}", patient_id_scheme = "ferry-patient" }}

[store]
plugin = "fhir-store"
grants.http = ["{host}"]
grants.http_auth."{host}" = {{ kind = "bearer", token = "${{PLATFORM_TOKEN}}" }}
config = {{ base_url = "{base}" }}

[serve]
listen = "127.0.0.1:0"
store = {store}

[serve.auth]
hs256_secret = "{SECRET}"
audience = "{AUDIENCE}"
issuer = "{ISSUER}"
clinic_id = "{CLINIC}"

[serve.records]
key = "{KEY}"
"#,
        plugins = ferry_tests::plugin_dir().display(),
        host = server.host(),
        base = server.base_url(),
    )
}

/// The ledger's items and sync log, for a failure message.
fn ledger_story(pipeline: &Pipeline) -> String {
    use ferry::ledger::prelude::*;
    let ledger = ferry::ledger::SqliteLedger::open(&pipeline.ledger_path()).unwrap();
    let mut out = format!("items: {:#?}\n", ledger.items().unwrap());
    for e in ledger.log_entries(None, 50).unwrap() {
        out.push_str(&format!("{} {} {} {}\n", e.item_id, e.action, e.status, e.details));
    }
    out
}

fn form(file_name: &str, content_type: &str, bytes: &[u8], meta: &Value) -> Vec<u8> {
    let mut out = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reaches_the_platform_as_a_document_reference() {
    let platform = FhirServer::builder().static_token(TOKEN).start();
    let patient_id = platform.add_patient(&[("urn:oid:1.2.276.0.76.4.8", "A123456789")]);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    let text = pipeline(&platform, &s3);
    std::fs::write(&path, &text).unwrap();
    let env = |k: &str| (k == "PLATFORM_TOKEN").then(|| TOKEN.to_string());
    let pipeline = Pipeline::parse(&path, &text, &env).unwrap_or_else(|e| panic!("pipeline loads: {e}"));
    let running = ferry::serve::start(pipeline.clone(), None, &options()).await.expect("ferry serve starts");
    tokio::time::timeout(Duration::from_secs(60), running.wait_for_passes(1)).await.expect("the first (empty) pass");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", running.url());
    let auth_cfg = pipeline.serve.as_ref().unwrap().auth.clone();
    let tok = |sub: &str, role| auth::mint(&auth_cfg, sub, role, Duration::from_secs(3600), Some(CLINIC)).unwrap();
    let (admin, dr) = (tok("admin-1", Role::Admin), tok("dr-a", Role::Viewer));
    let send = |method: Method, p: &str, t: &str, body: Option<Value>| {
        let mut req = http.request(method, url(p)).bearer_auth(t);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).unwrap());
        }
        req.send()
    };
    let user = json!({ "sub": "dr-a", "email": "dr-a@praxis.example", "name": "Dr. A", "type": "practitioner" });
    assert_eq!(send(Method::POST, "/api/v1/users", &admin, Some(user)).await.unwrap().status(), 201);
    // the record's guid is the platform's Patient id; a second patient the platform does not know
    for guid in [patient_id.as_str(), "not-on-the-platform"] {
        let rec = json!({ "patientGuid": guid, "family": "Muster", "given": "Erika" });
        assert_eq!(send(Method::POST, "/api/v1/patients", &dr, Some(rec)).await.unwrap().status(), 201);
    }
    let upload = |guid: &str, name: &str, ct: &str, bytes: Vec<u8>, meta: Value| {
        http.post(url(&format!("/api/v1/patients/{guid}/documents")))
            .bearer_auth(&dr)
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(form(name, ct, &bytes, &meta))
            .send()
    };
    let pdf = ferry_tests::pdf::pdf("Laborbefund", "D:20261130090000Z", 1, "tTG-IgA negativ");
    let meta = json!({ "title": "Laborbefund Zöliakie", "type": { "system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report" }, "date": "2026-11-30" });
    let passes_before = running.passes_completed();
    let res = upload(&patient_id, "labor.pdf", "application/pdf", pdf.clone(), meta).await.unwrap();
    assert_eq!(res.status(), 201);
    let doc: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    let id = doc["id"].as_str().unwrap().to_owned();
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde".to_vec();
    let res = upload("not-on-the-platform", "foto.png", "image/png", png, json!({})).await.unwrap();
    assert_eq!(res.status(), 201);

    // the upload nudged a pass: no waiting for the hourly schedule
    let arrived = async {
        loop {
            if platform.count("DocumentReference") >= 1 && running.passes_completed() > passes_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), arrived).await.is_err() {
        panic!("the document did not reach the platform; the ledger says:\n{}", ledger_story(&pipeline));
    }
    // let a pass run that saw both uploads
    let seen = running.passes_completed();
    let res = upload(
        &patient_id,
        "notiz.txt",
        "text/plain",
        "Rückruf erbeten".as_bytes().to_vec(),
        json!({ "title": "Notiz" }),
    )
    .await
    .unwrap();
    let note: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    let note_id = note["id"].as_str().unwrap().to_owned();
    tokio::time::timeout(Duration::from_secs(60), running.wait_for_passes(seen + 1)).await.expect("a nudged pass");
    tokio::time::timeout(Duration::from_secs(60), async {
        while platform.count("DocumentReference") < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the note arrives too");

    let refs = platform.resources("DocumentReference");
    let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let lab: Vec<&Value> = refs.iter().filter(|r| r["identifier"][0]["value"] == sha(&pdf).as_str()).collect();
    assert_eq!(lab.len(), 1, "{refs:#?}");
    let lab = lab[0];
    assert_eq!(lab["subject"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(lab["type"]["coding"][0]["code"], "11502-2");
    assert!(lab.to_string().contains("Laborbefund"), "the title reaches the platform: {lab}");
    // the PNG's patient is unknown there: nothing attached, the item parked
    assert!(refs.iter().all(|r| r["subject"]["reference"] == format!("Patient/{patient_id}")));
    let ledger = ferry::ledger::SqliteLedger::open(&pipeline.ledger_path()).unwrap();
    use ferry::ledger::prelude::*;
    let items = ledger.items().unwrap();
    let state_of = |item: &str| items.iter().find(|i| i.id == item).map(|i| i.state.as_str().to_owned());
    assert_eq!(state_of(&id).as_deref(), Some("stored"), "{items:?}");
    assert_eq!(state_of(&note_id).as_deref(), Some("stored"));
    let unresolved: Vec<_> = items.iter().filter(|i| i.state.as_str() == "unresolved").collect();
    assert_eq!(unresolved.len(), 1, "the PNG of the unknown patient: {items:?}");

    // the listing shows where it went
    let res = send(Method::GET, &format!("/api/v1/patients/{patient_id}/documents"), &dr, None).await.unwrap();
    let list: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    let synced = list["synced"].as_array().unwrap();
    let lab_id = lab["id"].as_str().unwrap();
    assert!(
        synced.iter().any(|s| s["itemId"] == id.as_str() && s["remoteId"] == format!("DocumentReference/{lab_id}")),
        "{list}"
    );

    // a document deleted before it was sent is never sent: the parked PNG is deleted, then its
    // patient appears on the platform and it is retried
    let png_id = unresolved[0].id.clone();
    assert_eq!(send(Method::DELETE, &format!("/api/v1/documents/{png_id}"), &dr, None).await.unwrap().status(), 204);
    let sidecar = s3.root().join(BUCKET).join(format!("documents/not-on-the-platform/{png_id}.json"));
    let sc: Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(sc["deleted"], true);
    // the platform learns the patient now: had the document not been deleted, it would go there
    platform.add_resource(json!({ "resourceType": "Patient", "id": "not-on-the-platform" }));
    let before = running.passes_completed();
    ledger.requeue(&[ferry::runner::Outcome::Unresolved]).unwrap();
    // a nudge through a new upload for the known patient
    let res = upload(&patient_id, "b.txt", "text/plain", b"zweite Notiz".to_vec(), json!({})).await.unwrap();
    assert_eq!(res.status(), 201);
    tokio::time::timeout(Duration::from_secs(60), running.wait_for_passes(before + 1)).await.expect("a pass");
    tokio::time::timeout(Duration::from_secs(60), async {
        while platform.count("DocumentReference") < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the second note arrives");
    let refs = platform.resources("DocumentReference");
    assert!(
        refs.iter().all(|r| r["subject"]["reference"] != "Patient/not-on-the-platform"),
        "a deleted document was sent: {refs:#?}"
    );
    tokio::time::timeout(Duration::from_secs(60), running.shutdown()).await.unwrap().unwrap();
}
