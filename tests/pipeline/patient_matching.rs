//! Never attach an image to a patient we are not sure of: no card id →
//! skipped, unknown card → unresolved, cards disagreeing → quarantined,
//! and none of those reach the store.

use ferry::runner::Outcome;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};

use crate::harness::{report, run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certain_patients_are_stored() {
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .patient(PatientSpec::new(2, "", "Ohne", "Karte"))
            .patient(PatientSpec::new(3, "C-3", "Unbekannt", "Uwe"))
            .patient(PatientSpec::new(4, "C-4a", "Zwei", "Zoe").cards(&["C-4a", "C-4b"]))
            .patient(PatientSpec::new(5, "C-5a", "Gleich", "Gerd").cards(&["C-5a", "C-5b"]))
            .image(ImageSpec::new(1, 11, "ok", ImageKind::IntraOral))
            .image(ImageSpec::new(2, 21, "no card", ImageKind::IntraOral))
            .image(ImageSpec::new(3, 31, "unknown card", ImageKind::IntraOral))
            .image(ImageSpec::new(4, 41, "two patients", ImageKind::Panoramic))
            .image(ImageSpec::new(5, 51, "same patient", ImageKind::IntraOral))
            .map_card("C-1", &demo_guid(1))
            .map_card("C-4a", &demo_guid(4))
            .map_card("C-4b", &demo_guid(40))
            .map_card("C-5a", &demo_guid(5))
            .map_card("C-5b", &demo_guid(5)),
    );
    let rt = runtime(fx.load(&fx.stock_toml())).await;
    let s = run(&rt).await;

    let path = |id: u32| fx.site.image(id).rel_path.clone();
    assert_eq!(report(&s, &path(11)).outcome, Outcome::Stored);
    assert_eq!(report(&s, &path(21)).outcome, Outcome::Skipped);
    assert_eq!(report(&s, &path(31)).outcome, Outcome::Unresolved);
    let q = report(&s, &path(41));
    assert_eq!(q.outcome, Outcome::Quarantined);
    assert!(q.detail.contains("different patients"), "{}", q.detail);
    assert!(!q.detail.contains("C-4"), "no card ids in messages: {}", q.detail);
    let same = report(&s, &path(51));
    assert_eq!(same.outcome, Outcome::Stored);
    assert_eq!(same.patient_guid, Some(demo_guid(5)));

    // only the two certain images are in the store, under their guids
    let stored = fx.stored();
    let images: Vec<_> = stored.keys().filter(|k| !k.ends_with(".json")).collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(images.iter().any(|k| k.starts_with(&format!("images/{}/", demo_guid(1)))));
    assert!(images.iter().any(|k| k.starts_with(&format!("images/{}/", demo_guid(5)))));
    assert!(!stored.keys().any(|k| k.contains(&demo_guid(4)) || k.contains(&demo_guid(40))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_mapped_twice_in_the_csv_is_quarantined() {
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(7, "C-7", "Doppelt", "Dora"))
            .image(ImageSpec::new(7, 71, "x", ImageKind::IntraOral))
            .map_card("C-7", &demo_guid(7))
            .map_card("C-7", &demo_guid(70)),
    );
    let rt = runtime(fx.load(&fx.stock_toml())).await;
    let s = run(&rt).await;
    assert_eq!(report(&s, &fx.site.image(71).rel_path).outcome, Outcome::Quarantined);
    assert!(fx.stored().is_empty());
}
