//! Plugins get nothing they were not granted: a missing grant is refused
//! at the call with a message naming the stage and the grant, and
//! `ferry check` finds it before a run.

use ferry::check::check;
use ferry::config::Role;
use ferry::runner::Outcome;
use ferry_tests::demo_site;

use crate::harness::{options, run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_pipeline_checks_clean() {
    let fx = Fixture::new(demo_site());
    let p = fx.load(&fx.stock_toml());
    let lines = check(&p, &options()).await.unwrap();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert!(l.ok, "{l}");
    }
    let source = lines.iter().find(|l| l.section == Role::Source.section()).unwrap();
    assert!(source.message.contains("fs:pdata sql:sidexis"), "{source}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_without_sql_grant_is_refused() {
    let fx = Fixture::new(demo_site());
    let toml = fx.stock_toml().replace("grants.sql = [\"sidexis\"]\n", "");
    let p = fx.load(&toml);

    let lines = check(&p, &options()).await.unwrap();
    let source = lines.iter().find(|l| l.section == Role::Source.section()).unwrap();
    assert!(!source.ok);
    assert!(source.message.contains("uses the `sql` capability but [source] grants none"), "{source}");

    // and at run time the call itself is refused, naming the grant
    let rt = runtime(p).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 0);
    let errors = s.errors().join("\n");
    assert!(errors.contains("stage `source` (sidexis.wasm) may not query connection `sidexis`"), "{errors}");
    assert!(errors.contains("add \"sidexis\" to `grants.sql` in [source]"), "{errors}");
    assert!(s.has_failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_reading_an_ungranted_root_fails_its_items() {
    let fx = Fixture::new(demo_site());
    let toml = fx.stock_toml().replace("grants.fs = { maps = \"site\" }\n", "");
    let rt = runtime(fx.load(&toml)).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 0, "{}", s.line());
    let failed: Vec<_> = s.reports().into_iter().filter(|r| r.outcome == Outcome::Failed).collect();
    assert!(!failed.is_empty());
    for r in failed {
        assert!(r.detail.contains("add `grants.fs.maps"), "{}", r.detail);
    }
    assert!(fx.stored().is_empty());
}
