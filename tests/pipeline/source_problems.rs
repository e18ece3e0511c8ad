//! Odd things in PDATA and missing database rows are reported per entry;
//! the scan never stops because of them.

use ferry::runner::Outcome;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};

use crate::harness::{report, run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_are_reported_per_entry() {
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 11, "fine", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 12, "no name row", ImageKind::IntraOral).without_mediabase_row())
            // a folder whose patient is not in the database at all
            .image(ImageSpec::new(9, 91, "orphan", ImageKind::IntraOral))
            .stray_file("P_00001/Thumbs.db", b"junk")
            .odd_folder("Backup")
            .map_card("C-1", &demo_guid(1)),
    );
    let rt = runtime(fx.load(&fx.stock_toml())).await;
    let s = run(&rt).await;

    let path = |id: u32| fx.site.image(id).rel_path.clone();
    assert_eq!(report(&s, &path(11)).outcome, Outcome::Stored, "{}", s.line());
    let no_row = report(&s, &path(12));
    assert_eq!(no_row.outcome, Outcome::Failed);
    assert!(no_row.detail.contains("12"), "names the image id: {}", no_row.detail);
    let orphan = report(&s, &path(91));
    assert_eq!(orphan.outcome, Outcome::Failed);
    assert!(orphan.detail.contains('9'), "names the Sidexis id: {}", orphan.detail);
    assert_eq!(report(&s, "P_00001/Thumbs.db").outcome, Outcome::Skipped);
    assert_eq!(report(&s, "Backup").outcome, Outcome::Skipped);
    assert!(s.errors().is_empty(), "the scan itself went through: {:?}", s.errors());
}
