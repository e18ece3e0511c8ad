//! The demo site end to end: counts as documented, stored bytes identical
//! to the source, sidecars describing the image, and a second run that
//! writes nothing.

use ferry::runner::Outcome;
use ferry_tests::{demo_site, Fate, DEMO_EXPECTED};

use crate::harness::{report, run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_site_is_stored_then_unchanged() {
    let fx = Fixture::new(demo_site());
    let rt = runtime(fx.load(&fx.stock_toml())).await;

    let first = run(&rt).await;
    let e = DEMO_EXPECTED;
    assert_eq!(first.count(Outcome::Stored) as usize, e.stored, "{}", first.line());
    assert_eq!(first.count(Outcome::Skipped) as usize, e.skipped, "{}", first.line());
    assert_eq!(first.count(Outcome::Unresolved) as usize, e.unresolved, "{}", first.line());
    assert_eq!(first.count(Outcome::Quarantined) as usize, e.quarantined, "{}", first.line());
    assert_eq!(first.count(Outcome::Failed) as usize, e.failed, "{}", first.line());
    assert_eq!(first.count(Outcome::Unchanged), 0);
    assert!(!first.has_failures());

    // every image expected to be stored is, under its patient's guid, byte
    // for byte; nothing else is in the store
    let stored = fx.stored();
    let mut expected_objects = 0;
    for img in &fx.site.images {
        let Fate::Stored { guid } = fx.site.fate(img) else { continue };
        let r = report(&first, &img.rel_path);
        assert_eq!(r.outcome, Outcome::Stored);
        assert_eq!(r.patient_guid.as_deref(), Some(guid.as_str()));
        let key = r.location.expect("stored items have a location");
        assert!(key.starts_with(&format!("images/{guid}/")), "{key}");
        assert_eq!(stored.get(&key), Some(&img.sha256), "bytes of {key} equal the source file");
        // the sidecar says what the image is
        let sidecar = fx.sidecar(&key);
        let facts = img.dicom.as_ref().unwrap();
        assert_eq!(sidecar["patientGuid"], guid.as_str());
        assert_eq!(sidecar["itemId"], img.rel_path.as_str());
        assert_eq!(sidecar["metadata"]["modality"], facts.modality.as_str());
        assert_eq!(sidecar["metadata"]["sop.instance-uid"], facts.sop_instance_uid.as_str());
        assert_eq!(sidecar["metadata"]["rows"], facts.rows as i64);
        expected_objects += 1;
    }
    // the sidecars went with the objects
    assert_eq!(stored.len(), expected_objects, "only stored images: {stored:#?}");

    // keys are distinct even where names collide or are hostile
    let keys: std::collections::BTreeSet<_> = stored.keys().collect();
    assert_eq!(keys.len(), stored.len());
    assert!(stored.keys().all(|k| !k.split('/').any(|s| s == ".." || s == "." || s.is_empty())));

    // a second run over an unchanged site writes nothing
    let before = fx.stored();
    let second = run(&rt).await;
    assert_eq!(second.count(Outcome::Stored), 0, "{}", second.line());
    assert_eq!(second.count(Outcome::Unchanged) as usize, e.stored, "{}", second.line());
    assert_eq!(fx.stored(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_file_is_stored_again() {
    let fx = Fixture::new(demo_site());
    let rt = runtime(fx.load(&fx.stock_toml())).await;
    run(&rt).await;

    // a clinic re-exports one image: same name, new bytes
    let img = fx.site.image(101);
    let mut bytes = std::fs::read(&img.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    ferry_tests::write_settled(&img.path, &bytes).unwrap();

    let again = run(&rt).await;
    let r = report(&again, &img.rel_path);
    assert_eq!(r.outcome, Outcome::Stored, "{}", again.line());
    assert_eq!(again.count(Outcome::Stored), 1, "{}", again.line());
    let key = r.location.unwrap();
    assert_eq!(std::fs::read(fx.store_dir().join(&key)).unwrap(), bytes);
}
