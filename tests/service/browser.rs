//! The web page: served with its assets and a strict CSP (plain HTTP), and
//! used end to end in headless Chromium (`tests/browser/e2e.mjs`): sign in
//! with a pasted token, search `mull`, open Müller's images, wait for the
//! previews, open one, read its metadata, download the DICOM, re-sync.
//!
//! A second walk covers the records tabs (`tests/browser/records.mjs`): an
//! admin manages users, a practitioner uploads, opens, shares, deletes and
//! requests documents (the request reaches a real SMTP server), a
//! colleague reads what was shared with them.
//!
//! The browser half needs `node`, `tests/browser/node_modules/playwright-core`
//! and Debian's `/usr/bin/chromium` (`.ci/run` installs both). Without them
//! it fails, saying so; `FERRY_SKIP_BROWSER=1` skips it instead. The
//! screenshot is kept at `target/test-artifacts/browser-e2e.png`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::serve::auth::Role;
use ferry_tests::SmtpServer;
use serde_json::json;

use crate::harness::{body, mueller, Service, Setup};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_without_a_token() {
    let svc = Service::start().await;
    let res = svc.get("/", None).await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "img-src 'self' blob:",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "CSP without {part}: {csp}");
    }
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = res.text().await.unwrap();
    assert!(html.contains("<title>ferry"), "{html}");

    for (path, ct) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let res = svc.get(path, None).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], ct, "{path}");
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        assert!(!res.bytes().await.unwrap().is_empty(), "{path}");
        // revalidation: same content, 304
        let again = svc.request(reqwest::Method::GET, path, None, &[("If-None-Match", &etag)]).await;
        assert_eq!(again.status(), 304, "{path}");
    }
    assert_eq!(svc.get("/assets/nope.js", None).await.status(), 404);
    svc.stop().await;
}

/// What is missing for the browser test, if anything.
fn missing_prerequisites(browser_dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => missing.push("`node` (Node.js 20 or newer) is not on PATH".into()),
    }
    if !browser_dir.join("node_modules/playwright-core/package.json").is_file() {
        missing.push(format!("playwright-core is not installed in {}", browser_dir.join("node_modules").display()));
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push(format!("{CHROMIUM} is not installed (Debian package `chromium`)"));
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_end_to_end_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let svc = Service::start().await;
    let token = svc.token(Role::Operator);
    walk(&svc, "e2e.mjs", token, "browser-e2e.png").await;
    svc.stop().await;
}

/// Whether the browser test runs here: false when skipped, a panic naming
/// what to install when it cannot.
fn browser_available() -> bool {
    if std::env::var("FERRY_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("browser test skipped (FERRY_SKIP_BROWSER=1)");
        return false;
    }
    let missing = missing_prerequisites(&ferry_tests::workspace_root().join("tests").join("browser"));
    assert!(
        missing.is_empty(),
        "the browser test cannot run:\n  - {}\nRun the install step of .ci/run \
         (`apt-get install -y chromium` and `npm ci --prefix tests/browser`), \
         or set FERRY_SKIP_BROWSER=1 to skip this test.",
        missing.join("\n  - ")
    );
    true
}

/// Runs `tests/browser/{script}` against the service with `arg`; asserts
/// it passed and left a real screenshot at `target/test-artifacts/{shot}`.
async fn walk(svc: &Service, script: &str, arg: String, shot: &str) {
    let root = ferry_tests::workspace_root();
    let shot: PathBuf = root.join("target").join("test-artifacts").join(shot);
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let failure_shot = shot.with_file_name(format!("{}-failure.png", shot.file_stem().unwrap().to_string_lossy()));
    let _ = std::fs::remove_file(&failure_shot);

    let url = svc.running.url();
    let script = root.join("tests").join("browser").join(script);
    let shot2 = shot.clone();
    // the service keeps serving on the runtime's workers meanwhile
    let (status, out) =
        tokio::task::spawn_blocking(move || run_node(&script, &url, &arg, &shot2, Duration::from_secs(300)))
            .await
            .unwrap();
    eprintln!("{out}");
    assert!(
        status,
        "the browser test failed (see above; a screenshot of the failure may be at {})",
        failure_shot.display()
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "the screenshot is not a real PNG");
    eprintln!("screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_tabs_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let smtp = SmtpServer::start(None);
    let extra = format!(
        "[serve.records]\nkey = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n\n[serve.requests.smtp]\n\
         server = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nfrom = \"praxis@praxis.example\"\n\
         to = \"records@hospital.example\"\n",
        smtp.port()
    );
    let svc = Service::start_with(ferry_tests::demo_site(), Setup { extra, ..Setup::default() }).await;
    let (admin, owner, colleague) = (
        svc.token_for("admin-1", Role::Admin),
        svc.token_for("dr-a", Role::Viewer),
        svc.token_for("dr-b", Role::Viewer),
    );
    for (sub, name) in [("dr-a", "Dr. Anna Albers"), ("dr-b", "Dr. Bernd Brandt")] {
        let u = json!({ "sub": sub, "email": format!("{sub}@praxis.example"), "name": name, "type": "practitioner" });
        svc.created("/api/v1/users", &admin, &u).await;
    }
    let guid = mueller();
    svc.created("/api/v1/patients", &owner, &json!({ "patientGuid": guid, "family": "Müller", "given": "Anna" })).await;

    let tokens = json!({
        "admin": admin, "owner": owner, "ownerSub": "dr-a", "colleague": colleague, "colleagueSub": "dr-b",
        "patient": "Müller",
    });
    walk(&svc, "records.mjs", tokens.to_string(), "browser-records.png").await;

    // what the page did is what the service holds
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one request mailed");
    assert!(mails[0].data.contains("Subject: Document request"), "{}", mails[0].data);
    let docs =
        body(svc.send(reqwest::Method::GET, &format!("/api/v1/patients/{guid}/documents"), &owner, None).await).await;
    let titles: Vec<&str> =
        docs["documents"].as_array().unwrap().iter().map(|d| d["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Befund Labor"], "the picture was deleted, the refused file never stored");
    assert_eq!(docs["documents"][0]["date"], "2026-11-30");
    let shared = body(svc.send(reqwest::Method::GET, "/api/v1/shared-with-me", &colleague, None).await).await;
    assert_eq!(shared["shared"][0]["share"]["note"], "Bitte ansehen");
    svc.stop().await;
}

/// Runs the script; returns success and its combined output. Killed after
/// `limit`.
fn run_node(script: &Path, url: &str, token: &str, shot: &Path, limit: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new("node")
        .arg(script)
        .arg(url)
        .arg(token)
        .arg(shot)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("starting node");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = std::fs::read_to_string(&out_path).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(&err_path).unwrap_or_default());
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("{text}\ne2e: killed after {limit:?}")),
    }
}
