//! Stopping (Ctrl-C) lets the items already scanned finish: the source
//! stops paging, nothing in flight is dropped, the summary still adds up.

use std::sync::Arc;

use ferry::runner::{Outcome, Summary};
use ferry_tests::demo_site;
use tokio_util::sync::CancellationToken;

use crate::harness::{runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drains_in_flight_items() {
    let fx = Fixture::new(demo_site());
    // a short queue, so that the scan cannot run far ahead of the store
    let toml = fx.stock_toml().replace("name = \"test\"", "name = \"test\"\nqueue_depth = 1");
    let rt = runtime(fx.load(&toml)).await;
    let summary = Arc::new(Summary::keeping_reports());
    let cancel = CancellationToken::new();
    {
        // stop as soon as the first item is stored
        let (summary, cancel) = (summary.clone(), cancel.clone());
        tokio::spawn(async move {
            while summary.count(Outcome::Stored) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            cancel.cancel();
        });
    }
    rt.run_once(cancel, summary.clone()).await;
    assert!(summary.interrupted(), "{}", summary.line());
    let total: u64 = Outcome::ALL.iter().map(|o| summary.count(*o)).sum();
    assert_eq!(summary.scanned(), total, "every scanned entry has an outcome: {}", summary.line());
    assert!(summary.scanned() < 39, "the scan stopped early: {}", summary.line());
    // what was stored is complete on disk
    let stored = fx.stored();
    assert_eq!(stored.keys().filter(|k| !k.ends_with(".json")).count() as u64, summary.count(Outcome::Stored));
}
