//! The PMS resolver misbehaves: outages park items (never drop them) until
//! a later cycle stores them; 429 waits for Retry-After; a bad API key is a
//! clear, permanent error; malformed answers and slow servers are parked.

use ferry::ledger::prelude::*;
use std::time::Duration;

use ferry::runner::Outcome;
use ferry_tests::{demo_site, Fault, ResolverServer, S3Server, DEMO_EXPECTED};

use crate::harness::{run, runtime, Fixture, Sql};

const BUCKET: &str = "clinic-b";

fn setup() -> (Fixture, ResolverServer, S3Server) {
    let fx = Fixture::new(demo_site());
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    (fx, resolver, s3)
}

/// Items that reach the resolver in the demo (stored + unresolved + quarantined).
const RESOLVABLE: usize = DEMO_EXPECTED.stored + DEMO_EXPECTED.unresolved + DEMO_EXPECTED.quarantined;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_parks_items_until_the_next_cycle() {
    let (fx, resolver, s3) = setup();
    // a backoff longer than the outage run itself
    let toml = fx
        .production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "")
        .replace("retry_after = \"200ms\"", "retry_after = \"1m\"")
        .replace("retry_max = \"2s\"", "retry_max = \"1h\"");
    let rt = runtime(fx.load_with_env(&toml)).await;
    resolver.set_fault(Fault::Status(503));
    let down = run(&rt).await;
    assert_eq!(down.count(Outcome::Stored), 0, "{}", down.line());
    assert_eq!(down.count(Outcome::Failed) as usize, RESOLVABLE, "{}", down.line());
    let failed = down.reports().into_iter().find(|r| r.outcome == Outcome::Failed).unwrap();
    assert!(failed.detail.contains("503"), "{}", failed.detail);
    assert!(s3.list(BUCKET, "").await.is_empty());
    // parked in the ledger, with an attempt counted
    let parked = fx.ledger().items().unwrap().into_iter().filter(|r| r.state == Outcome::Failed).count();
    assert_eq!(parked, RESOLVABLE);

    // right away, parked items wait for their backoff and are not retried
    let asked = resolver.requests();
    let early = run(&rt).await;
    assert_eq!(early.count(Outcome::Failed) as usize, RESOLVABLE, "{}", early.line());
    assert_eq!(resolver.requests(), asked, "backoff respected");
    assert!(early.report(&failed.subject).unwrap().detail.starts_with("parked after 1 attempt(s)"));

    // the API is back; once the backoff is over (here: `ferry retry`
    // makes the parked items due now) the next cycle stores everything
    resolver.set_fault(Fault::None);
    assert_eq!(fx.ledger().requeue(&[Outcome::Failed]).unwrap(), RESOLVABLE);
    let up = run(&rt).await;
    assert_eq!(up.count(Outcome::Stored) as usize, DEMO_EXPECTED.stored, "{}", up.line());
    assert_eq!(up.count(Outcome::Failed), 0, "{}", up.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_waited_out() {
    let (fx, resolver, s3) = setup();
    let rt = runtime(fx.load_with_env(&fx.production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, ""))).await;
    resolver.set_fault(Fault::RateLimited { retry_after_secs: 1, times: 2 });
    let started = std::time::Instant::now();
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored) as usize, DEMO_EXPECTED.stored, "{}", s.line());
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    println!("run with two 429s took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_key_is_a_clear_permanent_error() {
    let (fx, resolver, s3) = setup();
    let resolver = resolver.with_api_key("right-key");
    let toml = fx
        .production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "")
        .replace("config = { url = ", "config = { headers = { \"X-Api-Key\" = \"wrong-key\" }, url = ");
    let rt = runtime(fx.load_with_env(&toml)).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 0);
    let failed: Vec<_> = s.reports().into_iter().filter(|r| r.outcome == Outcome::Failed).collect();
    assert_eq!(failed.len(), RESOLVABLE);
    for r in &failed {
        assert!(r.detail.contains("401"), "{}", r.detail);
        assert!(r.detail.to_lowercase().contains("api key"), "{}", r.detail);
        assert!(!r.detail.contains("wrong-key"), "no secrets in messages");
    }
    // ferry check finds it too
    let lines = ferry::check::check(&rt.pipeline, &crate::harness::options()).await.unwrap();
    let resolver_line = lines.iter().find(|l| l.section == ferry::config::Role::Resolver.section()).unwrap();
    assert!(!resolver_line.ok && resolver_line.message.contains("401"), "{resolver_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_slow_answers_are_parked() {
    let (fx, resolver, s3) = setup();
    let toml = fx.production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "").replace(
        "limits = { memory = \"64MiB\", timeout = \"5s\" }",
        "limits = { memory = \"64MiB\", timeout = \"1s\" }",
    );
    let rt = runtime(fx.load_with_env(&toml)).await;

    resolver.set_fault(Fault::Malformed);
    let s = run(&rt).await;
    let r = s.reports().into_iter().find(|r| r.outcome == Outcome::Failed).expect("failures");
    assert!(r.detail.contains("malformed"), "{}", r.detail);
    assert_eq!(s.count(Outcome::Stored), 0);

    resolver.set_fault(Fault::Slow(Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 0, "{}", s.line());
    let r = s
        .reports()
        .into_iter()
        .find(|r| r.outcome == Outcome::Failed && !r.detail.starts_with("parked"))
        .expect("failures");
    assert!(r.detail.contains("deadline") || r.detail.contains("timed out"), "{}", r.detail);
    let items = fx.ledger().items().unwrap();
    assert!(items.iter().filter(|i| i.state == Outcome::Failed).all(|i| i.attempts >= 1));
}
