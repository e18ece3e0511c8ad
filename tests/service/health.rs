//! `/healthz`, `/readyz` and `/metrics`; stopping.

use ferry::ledger::prelude::*;
use ferry::serve::auth::Role;

use crate::harness::{Service, DEMO};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let svc = Service::start().await;
    let res = svc.get("/healthz", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), r#"{"status":"ok"}"#);

    let v: serde_json::Value = serde_json::from_str(&svc.get("/readyz", None).await.text().await.unwrap()).unwrap();
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["checks"]["store"], "ok");
    assert_eq!(v["checks"]["ledger"], "ok");

    // S3 down: not ready (and no bucket name in the answer); back: ready
    svc.s3.set_down(true);
    let res = svc.get("/readyz", None).await;
    assert_eq!(res.status(), 503);
    let body = res.text().await.unwrap();
    assert!(body.contains("\"store\":\"unreachable\""), "{body}");
    assert!(!body.contains(crate::harness::BUCKET), "{body}");
    svc.s3.set_down(false);
    assert_eq!(svc.get("/readyz", None).await.status(), 200);

    // some API traffic, then the metrics
    svc.json(&format!("/api/v1/patients/{}/images", crate::harness::mueller()), Role::Viewer).await;
    let res = svc.get("/metrics", None).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let m = res.text().await.unwrap();
    let e = DEMO;
    for line in [
        format!("ferry_items_total{{outcome=\"stored\"}} {}", e.stored),
        format!("ferry_items_total{{outcome=\"unresolved\"}} {}", e.unresolved),
        format!("ferry_items_total{{outcome=\"quarantined\"}} {}", e.quarantined),
        format!("ferry_items_total{{outcome=\"skipped\"}} {}", e.skipped),
        "ferry_items_total{outcome=\"failed\"} 0".into(),
        "ferry_items_total{outcome=\"unchanged\"} 0".into(),
        "ferry_passes_total{kind=\"scheduled\"} 1".into(),
        "ferry_pass_running 0".into(),
        "ferry_items_in_flight 0".into(),
        format!("ferry_ledger_items{{state=\"stored\"}} {}", e.stored),
        "ferry_pass_duration_seconds_count 1".into(),
        "ferry_http_requests_total{route=\"/api/v1/patients/{patientGuid}/images\",method=\"GET\",status=\"200\"} 1"
            .into(),
        "ferry_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"503\"} 1".into(),
    ] {
        assert!(m.lines().any(|l| l == line), "metrics lack `{line}`:\n{m}");
    }
    let number = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}:\n{m}"))
            .parse()
            .unwrap()
    };
    let stored_bytes: u64 = svc.stored_guids().iter().flat_map(|g| svc.stored_for(g)).map(|i| i.size).sum();
    assert_eq!(number("ferry_stored_bytes_total") as u64, stored_bytes);
    assert!(number("ferry_resolver_cache_misses_total") > 0.0);
    assert!(number("ferry_last_pass_timestamp_seconds") > 1.7e9);
    assert!(!m.contains(&crate::harness::mueller()), "no guid in metric labels");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_the_pass_finish_and_closes_the_port() {
    // stop while the first pass is under way
    let svc =
        Service::start_with(ferry_tests::demo_site(), crate::harness::Setup { no_wait: true, ..Default::default() })
            .await;
    let addr = svc.running.addr();
    assert_eq!(svc.get("/healthz", None).await.status(), 200);
    let ledger_path = svc.pipeline.ledger_path();
    // the pass has begun (it opens a run in the ledger first)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while svc.ledger().status(0).unwrap().last_run.is_none() {
        assert!(std::time::Instant::now() < deadline, "no pass started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let Service { running, dir, s3, resolver, .. } = svc;
    tokio::time::timeout(std::time::Duration::from_secs(60), running.shutdown()).await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens any more");
    // every item the pass took on has an outcome in the ledger; the run is closed
    let st = ferry::ledger::SqliteLedger::open(&ledger_path).unwrap().status(0).unwrap();
    let run = st.last_run.expect("a run started");
    assert!(run.2.is_some(), "the interrupted run was closed: {run:?}");
    drop((dir, s3, resolver));
}
