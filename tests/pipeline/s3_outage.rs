//! S3 goes away in the middle of a run: nothing is recorded as stored
//! that is not in the bucket, and the next run completes the job with
//! every image exactly once.

use ferry::ledger::prelude::*;
use std::sync::Arc;

use ferry::runner::{Outcome, Summary};
use ferry_tests::{demo_site, ResolverServer, S3Server, DEMO_EXPECTED};
use tokio_util::sync::CancellationToken;

use crate::harness::{runtime, Fixture, Sql};

const BUCKET: &str = "clinic-b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_run_marks_nothing_stored_that_is_not_in_the_bucket() {
    let fx = Fixture::new(demo_site());
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = Arc::new(S3Server::start());
    s3.create_bucket(BUCKET);
    let toml = fx
        .production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "")
        .replace("concurrency = 4", "concurrency = 1\nretries = 0")
        .replace("path_style = true,", "path_style = true, max_attempts = 2,");
    let rt = runtime(fx.load_with_env(&toml)).await;

    let summary = Arc::new(Summary::keeping_reports());
    {
        // pull the plug after the fifth upload request
        let s3 = s3.clone();
        tokio::spawn(async move {
            while s3.put_requests() < 5 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            s3.set_down(true);
        });
    }
    rt.run_once(CancellationToken::new(), summary.clone()).await;
    assert!(summary.count(Outcome::Failed) > 0, "{}", summary.line());
    assert!(summary.count(Outcome::Stored) < DEMO_EXPECTED.stored as u64, "{}", summary.line());
    s3.set_down(false);

    // every item the ledger calls stored is in the bucket, byte for byte
    let ledger = fx.ledger();
    let stored: Vec<_> = ledger.items().unwrap().into_iter().filter(|r| r.state == Outcome::Stored).collect();
    assert_eq!(stored.len() as u64, summary.count(Outcome::Stored));
    for r in &stored {
        let key = r.location.as_deref().unwrap();
        let img = fx.site.images.iter().find(|i| i.rel_path == r.id).unwrap();
        assert_eq!(s3.get(BUCKET, key).await.as_deref(), Some(&std::fs::read(&img.path).unwrap()[..]), "{key}");
    }

    // after the backoff the next run finishes the job, each image once
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let s = crate::harness::run(&rt).await;
    assert_eq!(s.count(Outcome::Failed), 0, "{}", s.line());
    let images: Vec<_> = s3.list(BUCKET, "").await.into_iter().filter(|k| !k.ends_with(".json")).collect();
    assert_eq!(images.len(), DEMO_EXPECTED.stored, "{images:#?}");
    assert!(images.iter().all(|k| !k.contains('~') || k.contains("Zahn 16")), "no duplicate copies: {images:#?}");
}
