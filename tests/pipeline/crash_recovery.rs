//! `kill -9` in the middle of a run, then a re-run: every image is in the
//! bucket exactly once, none missing, and the ledger agrees.

use ferry::ledger::prelude::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::runner::Outcome;
use ferry_tests::{demo_site, ResolverServer, S3Server, DEMO_EXPECTED};

use crate::harness::{Fixture, Sql};

const BUCKET: &str = "clinic-b";

fn ferry(fx: &Fixture) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(["run", "pipeline.toml", "--no-progress"])
        .current_dir(fx.dir.path())
        .env("FERRY_CACHE_DIR", ferry_tests::workspace_root().join("target/ferry-test-cache"))
        .env("TEST_SQL_PASSWORD", "unused")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_then_rerun_is_exactly_once() {
    let fx = Fixture::new(demo_site());
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // one upload at a time, so there is a middle to kill in
    let toml =
        fx.production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "").replace("concurrency = 4", "concurrency = 1");
    std::fs::write(fx.dir.path().join("pipeline.toml"), &toml).unwrap();

    let mut child = ferry(&fx).spawn().unwrap();
    let started = Instant::now();
    while s3.put_requests() < 8 {
        assert!(started.elapsed() < Duration::from_secs(60), "ferry made no progress");
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "ferry ended before it could be killed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = s3.list(BUCKET, "").await.len();
    assert!(after_kill < 2 * DEMO_EXPECTED.stored, "killed mid-run ({after_kill} objects)");

    let out = ferry(&fx).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    // exactly the expected images, once each, each with its sidecar
    let listed = s3.list(BUCKET, "").await;
    assert_eq!(listed.len(), DEMO_EXPECTED.stored, "{listed:#?}\n({after_kill} after the kill)\n{stdout}");
    for key in &listed {
        assert!(s3.sidecar(BUCKET, key).await.is_some_and(|s| s["itemId"].is_string()), "{key} has its sidecar");
    }
    let ledger = fx.ledger();
    let items = ledger.items().unwrap();
    let stored = items.iter().filter(|r| matches!(r.state, Outcome::Stored | Outcome::Unchanged)).count();
    assert_eq!(stored, DEMO_EXPECTED.stored);
    for r in items.iter().filter(|r| matches!(r.state, Outcome::Stored | Outcome::Unchanged)) {
        assert!(listed.contains(r.location.as_ref().unwrap()), "{:?}", r);
    }
    let status = ledger.status(5).unwrap();
    assert!(status.last_run.unwrap().2.is_some(), "the re-run finished");
}
