//! The standard demo site: what `cargo xtask demo` runs the pipeline on and
//! what end-to-end tests start from.
//!
//! Why one fixed site: a single, small, realistic practice where every
//! branch of the stock pipeline happens at least once, with counts that
//! are written down (and checked by a test against [`Site::expected`](crate::Site::expected)).

use crate::site::{guid, ExpectedCounts, ImageKind::*, ImageSpec, PatientSpec, SiteBuilder};

/// The practice-system guid of demo patient `sidexis_id`.
pub fn demo_guid(sidexis_id: u32) -> String {
    guid(&format!("ferry-demo/patient/{sidexis_id}"))
}

/// What a first run of `pipelines/demo.toml` with the stock plugins over
/// [`demo_site`] should report. Every later run stores nothing new.
pub const DEMO_EXPECTED: ExpectedCounts =
    ExpectedCounts { scanned: 34, skipped: 5, failed: 0, unresolved: 2, quarantined: 2, stored: 30 };

/// The demo practice: 14 patients (13 with a `PDATA` folder), 37 images,
/// one stray file, one odd folder. Guids are [`demo_guid`]`(sidexis id)`.
///
/// | Sidexis id | CardId rows            | images         | exercises |
/// |-----------:|------------------------|----------------|-----------|
/// | 17  | `C-1001`                      | 101–104 (3 IO, 1 PX) | normal patient; stray file `P_000017/notes.txt` |
/// | 23  | `C-1002`                      | 105–107        | awkward names: `Pano 2024/05/01`, `Bißflügel rechts`, `WK 46: Messaufnahme "final"` |
/// | 42  | `C-1003`                      | 108–111        | two images named `Zahn 16`; an image named `..`; apostrophe in the last name |
/// | 58  | `C-1004`                      | 112–116        | five images (maximum), `Status 1/4` … |
/// | 61  | `C-1005`                      | 117            | a single panoramic |
/// | 75  | `C-1006`, `''`                | 118–119        | an extra row with an empty-string CardId (ignored) → stored |
/// | 88  | `C-1007`, `C-2007`            | 120–122        | two cards mapped to the **same** guid → stored |
/// | 93  | `C-1008`, `C-2008`            | 123–124        | two cards mapped to **different** guids → **quarantined** |
/// | 104 | `C-1009`                      | 125–126        | card not in `card-map.csv` → **unresolved** |
/// | 112 | NULL                          | 127–128        | no CardId at all → **skipped** |
/// | 127 | `''`                          | 129            | only an empty-string CardId → **skipped** |
/// | 133 | `C-0933`, `C-1012`            | 130–132        | old card not in the CSV, current one is → stored |
/// | 140 | `C-1013`                      | none           | in the database and the CSV, no folder → nothing |
/// | 151 | `C-1014`                      | 133–137        | five images |
///
/// Plus: an empty top-level folder `PDATA/Backup`, and a CSV row for a
/// practice patient without X-rays (`C-1099`).
///
/// Expected first run with the stock plugins ([`DEMO_EXPECTED`]):
///
/// * **scanned 34**: items emitted by the source (37 images − 3 skipped);
/// * **skipped 5**: images 127, 128, 129 + the stray file + the odd folder;
/// * **unresolved 2**: images 125, 126;
/// * **quarantined 2**: images 123, 124;
/// * **stored 30**, **failed 0**.
///
/// Not in the demo, available through the builder for tests: corrupt or
/// non-DICOM files ([`ImageKind::Corrupt`](crate::ImageKind::Corrupt),
/// [`ImageKind::NotDicom`](crate::ImageKind::NotDicom)), images without a
/// `mediabase` row ([`ImageSpec::without_mediabase_row`]) and folders
/// without `patient` rows (an image whose patient was never declared), all
/// of which are reported as failures.
pub fn demo_site() -> SiteBuilder {
    let p = |id: u32, cards: &[&str], last: &str, first: &str, birth: &str, sex: &str| {
        PatientSpec::new(id, "", last, first).cards(cards).born(birth, sex)
    };
    let img = ImageSpec::new;
    let mut b = SiteBuilder::new()
        .patient(p(17, &["C-1001"], "Müller", "Anna", "19800131", "F"))
        .image(img(17, 101, "Bitewing left", IntraOral))
        .image(img(17, 102, "Bitewing right", IntraOral))
        .image(img(17, 103, "Panoramic", Panoramic))
        .image(img(17, 104, "Zahn 36 Kontrolle", IntraOral))
        .stray_file("P_000017/notes.txt", b"Patientin brachte alte Aufnahmen auf CD mit.\r\n")
        .patient(p(23, &["C-1002"], "Schmidt", "Jürgen", "19650714", "M"))
        .image(img(23, 105, "Pano 2024/05/01", Panoramic))
        .image(img(23, 106, "Bißflügel rechts", IntraOral))
        .image(img(23, 107, "WK 46: Messaufnahme \"final\"", IntraOral))
        .patient(p(42, &["C-1003"], "O'Brien", "Siobhan", "19921102", "F"))
        .image(img(42, 108, "Zahn 16", IntraOral))
        .image(img(42, 109, "Zahn 16", IntraOral))
        .image(img(42, 110, "..", IntraOral))
        .image(img(42, 111, "OPG", Panoramic))
        .patient(p(58, &["C-1004"], "Weiß", "Hans-Peter", "19480309", "M"))
        .image(img(58, 112, "OPG 2019", Panoramic))
        .image(img(58, 113, "Status 1/4", IntraOral))
        .image(img(58, 114, "Status 2/4", IntraOral))
        .image(img(58, 115, "Status 3/4", IntraOral))
        .image(img(58, 116, "Status 4/4", IntraOral))
        .patient(p(61, &["C-1005"], "Nguyen", "Thi Lan", "20010630", "F"))
        .image(img(61, 117, "Panorama", Panoramic))
        .patient(p(75, &["C-1006", ""], "Fischer", "Lukas", "20150921", "M"))
        .image(img(75, 118, "Milchzahn 55", IntraOral))
        .image(img(75, 119, "Milchzahn 65", IntraOral))
        .patient(p(88, &["C-1007", "C-2007"], "Becker", "Marie", "19751224", "F"))
        .image(img(88, 120, "OPG Erstbefund", Panoramic))
        .image(img(88, 121, "Bitewing left", IntraOral))
        .image(img(88, 122, "Bitewing right", IntraOral))
        .patient(p(93, &["C-1008", "C-2008"], "Yılmaz", "Mehmet", "19830415", "M"))
        .image(img(93, 123, "Zahn 47", IntraOral))
        .image(img(93, 124, "Panoramic", Panoramic))
        .patient(p(104, &["C-1009"], "Smith", "John", "19590808", "M"))
        .image(img(104, 125, "Implant 36 check", IntraOral))
        .image(img(104, 126, "Pano pre-op", Panoramic))
        .patient(p(112, &[], "Hoffmann", "Greta", "19380211", "F"))
        .image(img(112, 127, "OPG", Panoramic))
        .image(img(112, 128, "Zahn 44", IntraOral))
        .patient(p(127, &[""], "Schäfer", "Ole", "19991005", "M"))
        .image(img(127, 129, "Weisheitszahn 38", IntraOral))
        .patient(p(133, &["C-0933", "C-1012"], "Wagner", "Sophie", "19880519", "F"))
        .image(img(133, 130, "Zahn 11", IntraOral))
        .image(img(133, 131, "Zahn 21", IntraOral))
        .image(img(133, 132, "OPG 2023", Panoramic))
        .patient(p(140, &["C-1013"], "Koch", "Emil", "19700101", "M"))
        .patient(p(151, &["C-1014"], "Richter", "Paul", "19770303", "M"))
        .image(img(151, 133, "OPG", Panoramic))
        .image(img(151, 134, "Bitewing left", IntraOral))
        .image(img(151, 135, "Bitewing right", IntraOral))
        .image(img(151, 136, "Zahn 26", IntraOral))
        .image(img(151, 137, "Zahn 27", IntraOral))
        .odd_folder("Backup");
    for (card, id) in [
        ("C-1001", 17),
        ("C-1002", 23),
        ("C-1003", 42),
        ("C-1004", 58),
        ("C-1005", 61),
        ("C-1006", 75),
        ("C-1007", 88),
        ("C-2007", 88),
        ("C-1008", 93),
        ("C-1012", 133),
        ("C-1013", 140),
        ("C-1014", 151),
    ] {
        b = b.map_card(card, &demo_guid(id));
    }
    // Patient 93's second card belongs to a duplicate record in the
    // practice system; C-1099 is a practice patient without X-rays.
    b.map_card("C-2008", &guid("ferry-demo/patient/93/duplicate-record"))
        .map_card("C-1099", &guid("ferry-demo/patient/no-xrays"))
}
