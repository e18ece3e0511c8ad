//! The API from its own OpenAPI document, property-based: schemathesis
//! (from PyPI; `cargo xtask test` installs it into `target/schemathesis`)
//! generates requests for every operation — valid ones, edge cases and
//! broken ones — against a running `ferry serve` with patient records, a
//! practitioner, a record and a document, and checks every answer: no 5xx,
//! only documented status codes and content types, bodies and headers
//! that match the schema.
//!
//! Without schemathesis the test fails, saying how to install it;
//! `FERRY_SKIP_SCHEMATHESIS=1` skips it instead. The run is seeded
//! (`FERRY_SCHEMATHESIS_SEED`, default 1) so CI repeats itself; its JUnit
//! reports are kept at `target/test-artifacts/schemathesis-{admin,practitioner}.xml`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use ferry::serve::auth::Role;
use ferry_tests::SmtpServer;
use serde_json::json;

use crate::harness::{mueller, Service, Setup};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

/// schemathesis's `st`: `$FERRY_SCHEMATHESIS`, the one `cargo xtask test`
/// installs, or one on PATH.
fn st() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let venv = ferry_tests::workspace_root().join("target/schemathesis/bin/st");
    if venv.is_file() {
        return Some(venv);
    }
    Command::new("st").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| PathBuf::from("st"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    if std::env::var("FERRY_SKIP_SCHEMATHESIS").is_ok_and(|v| v == "1") {
        eprintln!("schemathesis run skipped (FERRY_SKIP_SCHEMATHESIS=1)");
        return;
    }
    let st = st().unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed: run `cargo xtask test` (it installs it into target/schemathesis), \
             or `python3 -m venv target/schemathesis && target/schemathesis/bin/pip install schemathesis`, \
             or set FERRY_SKIP_SCHEMATHESIS=1 to skip this test"
        )
    });

    let smtp = SmtpServer::start(None);
    let extra = format!(
        "[serve.records]\nkey = \"{KEY}\"\nmax_upload = \"1MiB\"\n\n[serve.requests.smtp]\nserver = \"127.0.0.1\"\n\
         port = {}\nsecurity = \"none\"\nfrom = \"praxis@praxis.example\"\nto = \"records@hospital.example\"\n",
        smtp.port()
    );
    let svc = Service::start_with(ferry_tests::demo_site(), Setup { extra, ..Setup::default() }).await;
    let admin = svc.token_for("admin-1", Role::Admin);
    let dr = svc.token_for("dr-a", Role::Viewer);
    // something to find: a practitioner, their record of the demo patient, a document
    svc.created(
        "/api/v1/users",
        &admin,
        &json!({ "sub": "dr-a", "email": "dr-a@praxis.example", "name": "Dr. A", "type": "practitioner" }),
    )
    .await;
    let guid = mueller();
    svc.created("/api/v1/patients", &dr, &json!({ "patientGuid": guid, "family": "Müller", "given": "Anna" })).await;
    let boundary = "ferry-schemathesis";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"note.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nBefund\r\n--{boundary}--\r\n"
    );
    let res = svc
        .http
        .post(svc.url(&format!("/api/v1/patients/{guid}/documents")))
        .bearer_auth(&dr)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let root = ferry_tests::workspace_root();
    let artifacts = root.join("target").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let seed = std::env::var("FERRY_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let schema = svc.url("/api/v1/openapi.json");
    // the figures, and proof each run reached every operation
    let documented = {
        let res = svc.http.get(&schema).send().await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        let methods = ["get", "put", "post", "delete", "patch"];
        // schemathesis leaves out the operation that serves the schema itself
        let paths = doc["paths"].as_object().unwrap().iter().filter(|(p, _)| *p != "/api/v1/openapi.json");
        paths
            .map(|(_, item)| item.as_object().unwrap().keys().filter(|k| methods.contains(&k.as_str())).count())
            .sum::<usize>()
    };
    // as an admin (every route reaches its handler) and as a practitioner
    // (ownership decides: the other half of the code paths)
    for (who, token) in [("admin", &admin), ("practitioner", &dr)] {
        let junit = artifacts.join(format!("schemathesis-{who}.xml"));
        let mut cmd = Command::new(&st);
        cmd.arg("run")
            .arg(&schema)
            .args(["--checks", CHECKS])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--max-examples", "25", "--seed", &seed, "--workers", "2", "--request-timeout", "30"])
            .args(["--report", "junit", "--report-junit-path"])
            .arg(&junit)
            .args(["--output-truncate", "false", "--no-color"])
            .current_dir(&artifacts)
            .stdin(Stdio::null());
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("starting schemathesis")).await.unwrap();
        let took = started.elapsed();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("{text}");
        assert!(
            out.status.success(),
            "schemathesis found problems as {who} (above; JUnit report at {})",
            junit.display()
        );
        let tested = figure(&text, "Tested: ").unwrap_or_else(|| panic!("no `Tested:` line in the summary"));
        let cases =
            figure(&text, " generated, ").unwrap_or_else(|| panic!("no `N generated, M passed` line in the summary"));
        eprintln!(
            "schemathesis figures as {who}: {tested} of {documented} operations, {cases} test cases, 0 failures, \
             {:.1} s, seed {seed}",
            took.as_secs_f64(),
        );
        assert_eq!(tested, documented, "every documented operation is exercised");
        assert!(cases >= 20 * documented, "too few test cases to mean anything: {cases}");
    }
    eprintln!("{} mails sent by request-documents cases", smtp.mails().len());
    svc.stop().await;
}

/// The number next to `marker` in schemathesis's summary: after it
/// (`Tested: 31`) or, for a marker starting with a space, before it
/// (`1782 generated`).
fn figure(text: &str, marker: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.contains(marker))?;
    let at = line.find(marker)?;
    let digits: String = if marker.starts_with(' ') {
        let before: String = line[..at].chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        before.chars().rev().collect()
    } else {
        line[at + marker.len()..].chars().take_while(|c| c.is_ascii_digit()).collect()
    };
    digits.parse().ok()
}
