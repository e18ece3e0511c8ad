//! Files the imaging software is still writing are never stored half:
//! a file younger than `[source] min_age`, or one that changes between
//! scan and upload, is `deferred` (counted, logged, not failed) and stored
//! whole on a later pass; a file cut short inside its pixel data is
//! `failed` with the byte counts.

use std::time::Duration;

use ferry::ledger::prelude::*;
use ferry::runner::Outcome;
use ferry_tests::{demo_guid, Fault, ImageKind, ImageSpec, PatientSpec, ResolverServer, S3Server, SiteBuilder};

use crate::harness::{report, run, runtime, Fixture, Sql};

const BUCKET: &str = "partial";

fn two_patients() -> SiteBuilder {
    SiteBuilder::new()
        .patient(PatientSpec::new(1, "C-1", "Erste", "Eva"))
        .patient(PatientSpec::new(2, "C-2", "Zweite", "Zoe"))
        .image(ImageSpec::new(1, 11, "Bitewing", ImageKind::IntraOral))
        .image(ImageSpec::new(2, 21, "Panoramic", ImageKind::Panoramic))
        .map_card("C-1", &demo_guid(1))
        .map_card("C-2", &demo_guid(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_younger_than_min_age_waits_for_the_next_pass() {
    let fx = Fixture::new(two_patients());
    let toml = fx.stock_toml().replace("config = { pdata_root", "min_age = \"1h\"\nconfig = { pdata_root");
    let young = fx.site.image(21);
    // written "just now" by the imaging software
    std::fs::write(&young.path, std::fs::read(&young.path).unwrap()).unwrap();
    let rt = runtime(fx.load(&toml)).await;

    let first = run(&rt).await;
    assert_eq!((first.count(Outcome::Stored), first.count(Outcome::Deferred)), (1, 1), "{}", first.line());
    assert!(!first.has_failures(), "deferred is not a failure: {}", first.line());
    let r = report(&first, &young.rel_path);
    assert_eq!(r.outcome, Outcome::Deferred);
    assert!(r.detail.contains("min_age = 1h"), "{}", r.detail);
    assert!(!fx.stored().keys().any(|k| k.contains("Panoramic")), "{:?}", fx.stored());
    let logged = fx.ledger().log_entries(None, 50).unwrap();
    assert!(
        logged.iter().any(|e| e.item_id == young.rel_path && e.action == "defer" && e.status == "waiting"),
        "{logged:?}"
    );

    // the software finished long ago: stored, whole
    ferry_tests::settle(&young.path).unwrap();
    let second = run(&rt).await;
    assert_eq!(report(&second, &young.rel_path).outcome, Outcome::Stored, "{}", second.line());
    let stored = fx.stored();
    let key = stored.keys().find(|k| k.ends_with("Panoramic.dcm")).expect("stored").clone();
    assert_eq!(stored[&key], young.sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_growing_between_scan_and_upload_is_stored_whole_next_pass() {
    let fx = Fixture::new(two_patients());
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let toml =
        fx.production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "").replace("timeout = \"5s\"", "timeout = \"20s\"");
    let rt = runtime(fx.load_with_env(&toml)).await;
    // answers take long enough for the file to change while its item
    // waits to be resolved (after the scan, before the upload)
    resolver.set_fault(Fault::Slow(Duration::from_millis(1500)));
    let growing = fx.site.image(21);
    // what the file becomes: the same image at a higher resolution
    let later = tempfile::tempdir().unwrap();
    let bigger = SiteBuilder::new()
        .patient(PatientSpec::new(2, "C-2", "Zweite", "Zoe"))
        .image(ImageSpec::new(2, 21, "Panoramic", ImageKind::Panoramic).pixels(400, 800))
        .build(&later.path().join("site"))
        .unwrap();
    let whole = std::fs::read(&bigger.image(21).path).unwrap();
    assert!(whole.len() as u64 > growing.size);

    let pass = {
        let rt = &rt;
        async move { run(rt).await }
    };
    let grow = async {
        // the item was scanned and extracted once its card is asked for
        while resolver.requests_for("C-2") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // the imaging software rewrites the file: a longer image
        ferry_tests::write_settled(&growing.path, &whole).unwrap();
    };
    let (first, ()) = tokio::join!(pass, grow);
    let r = report(&first, &growing.rel_path);
    assert_eq!(r.outcome, Outcome::Deferred, "{}: {}", first.line(), r.detail);
    assert!(r.detail.contains("changed"), "{}", r.detail);
    assert!(!first.has_failures(), "{}", first.line());
    assert_eq!(report(&first, &fx.site.image(11).rel_path).outcome, Outcome::Stored);

    resolver.set_fault(Fault::None);
    let second = run(&rt).await;
    let r = report(&second, &growing.rel_path);
    assert_eq!(r.outcome, Outcome::Stored, "{}: {}", second.line(), r.detail);
    let key = r.location.unwrap();
    assert_eq!(s3.get(BUCKET, &key).await.unwrap(), whole, "the bytes stored are the whole, final file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_short_in_its_pixel_data_fails_with_the_byte_counts() {
    let fx = Fixture::new(two_patients());
    let cut = fx.site.image(21);
    let bytes = std::fs::read(&cut.path).unwrap();
    let size = bytes.len() - 1000;
    ferry_tests::write_settled(&cut.path, &bytes[..size]).unwrap();
    let rt = runtime(fx.load(&fx.stock_toml())).await;
    let s = run(&rt).await;
    let r = report(&s, &cut.rel_path);
    assert_eq!(r.outcome, Outcome::Failed, "{}", s.line());
    assert!(r.detail.contains(&format!("truncated at byte {} of {size}", bytes.len())), "{}", r.detail);
    assert!(!fx.stored().keys().any(|k| k.contains("Panoramic")));
    assert_eq!(report(&s, &fx.site.image(11).rel_path).outcome, Outcome::Stored);
}
