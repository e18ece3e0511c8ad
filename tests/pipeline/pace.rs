//! Being a good neighbour on the clinic's network: `[store] max_rate`
//! holds the uploads of a whole pipeline to the cap (through a real S3
//! server on 127.0.0.1), and an upload window that closes mid-run stops
//! new uploads — the rest wait, deferred, for a pass inside a window.

use std::time::Instant;

use ferry::ledger::prelude::*;
use ferry::runner::Outcome;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, ResolverServer, S3Server, SiteBuilder};

use crate::harness::{run, runtime, Fixture, Sql};

const BUCKET: &str = "paced";

/// `n` patients with one ~1.25 MB image each.
fn site(n: u32) -> SiteBuilder {
    let mut b = SiteBuilder::new();
    for i in 1..=n {
        let card = format!("C-{i}");
        b = b
            .patient(PatientSpec::new(i, &card, "Takt", "Tina"))
            .image(ImageSpec::new(i, 100 + i, "Pano", ImageKind::Panoramic).pixels(790, 790))
            .map_card(&card, &demo_guid(i));
    }
    b
}

fn image_bytes(fx: &Fixture) -> u64 {
    fx.site.images.iter().map(|i| i.size).sum()
}

/// The store section's extra keys.
fn store_keys(fx: &Fixture, resolver: &ResolverServer, s3: &S3Server, keys: &str, tail: &str) -> String {
    fx.production_toml(&Sql::Sqlite, resolver, s3, BUCKET, tail)
        .replace("[store]\nplugin = \"store\"\nconcurrency = 4", &format!("[store]\nplugin = \"store\"\n{keys}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_cap_holds_all_uploads_of_the_pipeline_to_it() {
    let fx = Fixture::new(site(8));
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // 2 MB/s shared by four uploads: each file takes ~2.5 s, longer than
    // the store's 2 s call deadline — time spent held back by the cap is
    // not the plugin's and does not count
    let cap = 2_000_000f64;
    let toml = store_keys(
        &fx,
        &resolver,
        &s3,
        "concurrency = 4\nmax_rate = \"16Mbit/s\"\nlimits = { memory = \"64MiB\", timeout = \"2s\" }",
        "",
    );
    assert!(toml.contains("max_rate"), "{toml}");
    let rt = runtime(fx.load_with_env(&toml)).await;
    let started = Instant::now();
    let s = run(&rt).await;
    let took = started.elapsed();
    assert_eq!(s.count(Outcome::Stored), 8, "{}", s.line());
    let bytes = image_bytes(&fx);
    let rate = bytes as f64 / took.as_secs_f64();
    println!(
        "max_rate 16Mbit/s: {bytes} bytes in {:.2} s = {:.0} B/s, {:.3} of the cap",
        took.as_secs_f64(),
        rate,
        rate / cap
    );
    assert!((0.85..=1.15).contains(&(rate / cap)), "measured {rate:.0} B/s against a cap of {cap} B/s");
    // every image is there, whole
    for img in &fx.site.images {
        let key = crate::harness::report(&s, &img.rel_path).location.unwrap();
        assert_eq!(s3.head(BUCKET, &key).await.unwrap().metadata.get("ferry-sha256"), Some(&img.sha256));
    }
}

/// `HH:MM:SS` local time, `secs` from now (wrapping at midnight).
fn local_clock(from_now: i64) -> String {
    let t = chrono::Local::now() + chrono::Duration::seconds(from_now);
    t.format("%H:%M:%S").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_closes_mid_run_stops_new_uploads() {
    let fx = Fixture::new(site(8));
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // 10 MB at 1 MB/s would take ~10 s; the window closes after ~6
    let window = format!("{}-{}", local_clock(-3600), local_clock(6));
    let toml = store_keys(
        &fx,
        &resolver,
        &s3,
        "concurrency = 2\nmax_rate = \"8Mbit/s\"",
        &format!("\n[schedule]\nwindows = [\"{window}\"]\n"),
    );
    let rt = runtime(fx.load_with_env(&toml)).await;
    let s = run(&rt).await;
    let stored = s.count(Outcome::Stored);
    let deferred = s.count(Outcome::Deferred);
    assert!(stored >= 1, "uploads ran while the window was open: {}", s.line());
    assert!(deferred >= 1, "uploads stopped when it closed: {}", s.line());
    assert_eq!(stored + deferred, 8, "nothing failed, nothing lost: {}", s.line());
    let why = s.reports().into_iter().find(|r| r.outcome == Outcome::Deferred).unwrap().detail;
    assert!(why.contains("outside the upload windows") && why.contains(&window), "{why}");
    // what the bucket has is exactly what the run says it stored
    let images: Vec<_> = s3.list(BUCKET, "").await.into_iter().filter(|k| !k.ends_with(".json")).collect();
    assert_eq!(images.len() as u64, stored, "{images:?}");

    // `ferry status` counts them, with the reason
    let status = fx.ledger().status(5).unwrap();
    assert_eq!(status.waiting, vec![(why.clone(), deferred)], "{:?}", status.waiting);

    // the window closed: a pass now uploads nothing new
    let again = run(&rt).await;
    assert_eq!(again.count(Outcome::Stored), 0, "{}", again.line());
    assert_eq!(again.count(Outcome::Deferred), deferred, "{}", again.line());

    // inside a window the rest go up
    let open = toml.replace(&window, "00:00-24:00");
    drop(rt);
    let rt = runtime(fx.load_with_env(&open)).await;
    let last = run(&rt).await;
    assert_eq!(last.count(Outcome::Stored), deferred, "{}", last.line());
    assert_eq!(last.count(Outcome::Unchanged), stored, "{}", last.line());
    assert!(fx.ledger().status(5).unwrap().waiting.is_empty());
}
