//! Hostile files sitting in the store (written by anything: a pipeline
//! without an extractor, another tool) cannot take `ferry serve` down or
//! make it balloon: their previews answer a 4xx problem, the process's
//! peak memory stays within the renderer's budget, and the next request
//! is answered. Runs the real binary, so that a crash is a dead process
//! and the peak RSS is the service's alone (`VmHWM`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::serve::auth::Role;
use ferry_tests::hostile;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, ResolverServer, S3Server, SiteBuilder};

use crate::harness::{problem, AUDIENCE, BUCKET, CLINIC, ISSUER, SECRET};

/// Renderer memory per render in this test, and renders at once.
const RENDER_MEMORY_MIB: u64 = 128;
const RENDERS: u64 = 2;

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident set of a process, from `/proc/PID/status` (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the service process is alive");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_in_the_store_cannot_crash_or_flood_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let guid = demo_guid(1);
    let site = SiteBuilder::new()
        .patient(PatientSpec::new(1, "C-1", "Probe", "Paula"))
        .image(ImageSpec::new(1, 11, "Bitewing", ImageKind::IntraOral))
        .map_card("C-1", &guid)
        .build(&dir.path().join("site"))
        .unwrap();
    let resolver = ResolverServer::start(site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let serve = format!(
        "[serve]\nlisten = \"127.0.0.1:0\"\npreview = {{ concurrency = {RENDERS}, limits = {{ memory = \"{RENDER_MEMORY_MIB}MiB\", timeout = \"20s\" }} }}\n\
         [serve.auth]\nhs256_secret = \"{SECRET}\"\naudience = \"{AUDIENCE}\"\nissuer = \"{ISSUER}\"\nclinic_id = \"{CLINIC}\"\n"
    );
    let text = ferry_tests::production_toml("hostile", ferry_tests::SQLITE_CONNECTION, &resolver, &s3, BUCKET, &serve);
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, &text).unwrap();
    let pipeline = ferry::config::Pipeline::load(&path).unwrap();
    let auth = pipeline.serve.as_ref().unwrap().auth.clone();
    let token =
        ferry::serve::auth::mint(&auth, "hostile-test", Role::Viewer, Duration::from_secs(3600), Some(CLINIC)).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve".as_ref(), path.as_os_str()])
        .env("FERRY_CACHE_DIR", ferry_tests::workspace_root().join("target/ferry-test-cache"))
        .env("FERRY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the address it bound, from its log
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let _ = tx.send(line[at + "listening on ".len()..].split_whitespace().next().unwrap_or("").to_owned());
            }
            eprintln!("[ferry serve] {line}");
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(120)).expect("ferry serve listens");
    let svc = Served { child, url };
    let pid = svc.child.id();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let get = |p: String| {
        let http = http.clone();
        let token = token.clone();
        let url = format!("{}{p}", svc.url);
        async move { http.get(url).bearer_auth(token).send().await.expect("the service answers") }
    };

    // the first pass stored the real image
    let started = Instant::now();
    let listing = format!("/api/v1/patients/{guid}/images");
    loop {
        let res = get(listing.clone()).await;
        let body: serde_json::Value =
            serde_json::from_slice(&res.bytes().await.unwrap_or_default()).unwrap_or_default();
        if body["images"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the first pass stored nothing: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline = peak_rss_mib(pid);

    // hostile objects, put straight into the bucket under the patient
    let files = [
        ("nested.dcm", hostile::nested_sequences(5000)),
        ("lying-length.dcm", hostile::lying_pixel_length()),
        ("deflate-bomb.dcm", hostile::deflate_bomb(1 << 30)),
    ];
    for (name, bytes) in &files {
        s3.client()
            .put_object()
            .bucket(BUCKET)
            .key(format!("images/{guid}/{name}"))
            .body(bytes.clone().into())
            .send()
            .await
            .unwrap();
    }
    for round in 0..2 {
        for (name, bytes) in &files {
            let started = Instant::now();
            let res = get(format!("/api/v1/patients/{guid}/images/{name}/preview?size=256")).await;
            let status = res.status().as_u16();
            assert!(matches!(status, 413 | 422), "{name} ({} bytes): {status}", bytes.len());
            let body = problem(res, status).await;
            eprintln!("{name} round {round}: {status} in {:?}: {}", started.elapsed(), body["detail"]);
            // still alive, still answering
            assert_eq!(get("/healthz".into()).await.status(), 200, "after {name}");
        }
    }

    // a real image previews fine afterwards
    let res = get(format!("/api/v1/patients/{guid}/images/Bitewing.dcm/preview?size=64")).await;
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap().starts_with(b"\x89PNG"));

    // each hostile file was rendered once; the second round came from the
    // remembered failures
    let metrics = http.get(format!("{}/metrics", svc.url)).send().await.unwrap().text().await.unwrap();
    let count = |outcome: &str| -> u64 {
        let prefix = format!("ferry_previews_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert_eq!((count("refused"), count("refused_cached"), count("rendered")), (3, 3, 1), "{metrics}");

    let peak = peak_rss_mib(pid);
    // what the renderers may hold at once, plus slack for the host's own
    // buffers; a native render of the lying length alone took 4.2 GB
    let budget = baseline + RENDERS * RENDER_MEMORY_MIB + 64;
    eprintln!("peak RSS: {baseline} MiB before the hostile previews, {peak} MiB after (budget {budget} MiB)");
    assert!(peak <= budget, "peak RSS {peak} MiB over the budget of {budget} MiB");
    drop(svc);
}
