//! A corrupt or non-DICOM file fails that item, with the reason; the rest
//! of the run is unaffected.

use ferry::runner::Outcome;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};

use crate::harness::{report, run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_dicom_fails_alone() {
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 11, "good", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 12, "truncated", ImageKind::Corrupt))
            .image(ImageSpec::new(1, 13, "text file", ImageKind::NotDicom))
            .image(ImageSpec::new(1, 14, "also good", ImageKind::Panoramic))
            .map_card("C-1", &demo_guid(1)),
    );
    let rt = runtime(fx.load(&fx.stock_toml())).await;
    let s = run(&rt).await;

    let path = |id: u32| fx.site.image(id).rel_path.clone();
    for id in [11, 14] {
        assert_eq!(report(&s, &path(id)).outcome, Outcome::Stored, "{}", s.line());
    }
    for id in [12, 13] {
        let r = report(&s, &path(id));
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.detail.starts_with("extract: "), "{}", r.detail);
        assert!(r.detail.len() > "extract: ".len() + 10, "the reason is given: {}", r.detail);
    }
    assert!(s.report(&path(13)).unwrap().detail.to_lowercase().contains("dicom"));
    assert!(s.has_failures());
    assert_eq!(s.count(Outcome::Stored), 2);
}
