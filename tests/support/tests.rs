//! Unit tests of the generator itself: if the fixtures are wrong, every
//! end-to-end test built on them is wrong too.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::open_file;

use super::*;

/// A scratch directory under the system temp dir, removed on drop (no
/// `tempfile` dependency for this one use).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferry-tests-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            if path.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn str_of(obj: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

#[test]
fn demo_dicom_files_reopen_with_the_expected_headers() {
    let dir = Scratch::new("reopen");
    let site = demo_site().build(&dir.0).unwrap();
    assert_eq!(site.images.len(), 37);
    for image in &site.images {
        let facts = image.dicom.as_ref().expect("the demo has only well-formed DICOM");
        let obj = open_file(&image.path).unwrap_or_else(|e| panic!("{}: {e}", image.rel_path));
        assert_eq!(obj.meta().transfer_syntax().trim_end_matches('\0'), "1.2.840.10008.1.2.1");
        assert_eq!(obj.meta().media_storage_sop_instance_uid().trim_end_matches('\0'), facts.sop_instance_uid);
        assert_eq!(str_of(&obj, tags::PATIENT_ID), image.spec.sidexis_id.to_string());
        assert_eq!(str_of(&obj, tags::PATIENT_NAME), facts.patient_name);
        assert_eq!(str_of(&obj, tags::PATIENT_BIRTH_DATE), facts.patient_birth_date);
        assert_eq!(str_of(&obj, tags::SOP_CLASS_UID), facts.sop_class_uid);
        assert_eq!(str_of(&obj, tags::STUDY_INSTANCE_UID), facts.study_uid);
        assert_eq!(str_of(&obj, tags::SERIES_INSTANCE_UID), facts.series_uid);
        assert_eq!(str_of(&obj, tags::MODALITY), facts.modality);
        assert_eq!(str_of(&obj, tags::STUDY_DATE), facts.study_date);
        assert_eq!(str_of(&obj, tags::ACQUISITION_DATE), facts.study_date);
        assert_eq!(str_of(&obj, tags::MANUFACTURER), "Sirona");
        assert_eq!(str_of(&obj, tags::MANUFACTURER_MODEL_NAME), facts.model);
        assert_eq!(str_of(&obj, tags::IMAGE_COMMENTS), image.spec.image_name);
        assert_eq!(obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(), facts.rows);
        assert_eq!(obj.element(tags::COLUMNS).unwrap().to_int::<u16>().unwrap(), facts.columns);
        assert_eq!(obj.element(tags::BITS_STORED).unwrap().to_int::<u16>().unwrap(), 12);
        assert_eq!(obj.element(tags::HIGH_BIT).unwrap().to_int::<u16>().unwrap(), 11);
        let pixels = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        assert_eq!(pixels.len(), usize::from(facts.rows) * usize::from(facts.columns) * 2);
        match image.spec.kind {
            ImageKind::IntraOral => {
                assert_eq!(facts.modality, "IO");
                assert_eq!(facts.sop_class_uid, "1.2.840.10008.5.1.4.1.1.1.3");
                assert_eq!(str_of(&obj, tags::IMAGE_LATERALITY), facts.laterality.clone().unwrap());
                let Value::Sequence(seq) = obj.element(tags::PRIMARY_ANATOMIC_STRUCTURE_SEQUENCE).unwrap().value()
                else {
                    panic!("not a sequence")
                };
                let item = &seq.items()[0];
                assert_eq!(
                    item.element(tags::CODE_VALUE).unwrap().to_str().unwrap().trim(),
                    facts.tooth.clone().unwrap()
                );
                assert_eq!(item.element(tags::CODING_SCHEME_DESIGNATOR).unwrap().to_str().unwrap().trim(), "ISO3950");
                let Value::Sequence(seq) = obj.element(tags::ANATOMIC_REGION_SEQUENCE).unwrap().value() else {
                    panic!("not a sequence")
                };
                let region = seq.items()[0].element(tags::CODE_VALUE).unwrap().to_str().unwrap();
                assert_eq!(region.trim(), facts.anatomic_region.clone().unwrap());
            }
            ImageKind::Panoramic => {
                assert_eq!(facts.modality, "PX");
                assert_eq!(facts.sop_class_uid, "1.2.840.10008.5.1.4.1.1.1.1");
                assert!(obj.element_opt(tags::IMAGE_LATERALITY).unwrap().is_none());
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn the_same_builder_writes_byte_identical_sites() {
    let (a, b) = (Scratch::new("det-a"), Scratch::new("det-b"));
    let builder = demo_site().image(ImageSpec::new(17, 900, "corrupt", ImageKind::Corrupt)).image(ImageSpec::new(
        17,
        901,
        "text",
        ImageKind::NotDicom,
    ));
    let site_a = builder.build(&a.0).unwrap();
    let site_b = builder.build(&b.0).unwrap();
    let (ta, tb) = (read_tree(&a.0), read_tree(&b.0));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{k} differs between two builds");
    }
    for (x, y) in site_a.images.iter().zip(&site_b.images) {
        assert_eq!(x.sha256, y.sha256);
    }
    // Every image has distinct bytes.
    let mut sums: Vec<_> = site_a.images.iter().map(|i| &i.sha256).collect();
    sums.sort();
    sums.dedup();
    assert_eq!(sums.len(), site_a.images.len());
}

#[test]
fn site_records_paths_sizes_and_checksums() {
    use sha2::{Digest, Sha256};
    let dir = Scratch::new("paths");
    let site = demo_site().build(&dir.0).unwrap();
    assert_eq!(site.pdata, dir.0.join("PDATA"));
    assert!(site.db.is_file() && site.csv.is_file() && dir.0.join(MARKER_FILE).is_file());
    let img = site.image(101);
    assert_eq!(img.rel_path, "P_000017/0000_101.dcm");
    assert_eq!(img.path, site.pdata.join("P_000017").join("0000_101.dcm"));
    let bytes = fs::read(&img.path).unwrap();
    assert_eq!(bytes.len() as u64, img.size);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), img.sha256);
    assert_eq!(&bytes[128..132], b"DICM");
    assert!(bytes[..128].iter().all(|b| *b == 0));
    assert!(site.pdata.join("P_000017/notes.txt").is_file());
    assert!(site.pdata.join("Backup").is_dir());
    // Patient 140 is in the database but has no folder.
    assert!(!site.pdata.join("P_0000140").exists());
    assert!(site.pdata.join("P_0000151/0000_137.dcm").is_file());
}

#[test]
fn database_has_sidexis_tables() {
    let dir = Scratch::new("db");
    let site = demo_site().build(&dir.0).unwrap();
    let conn = rusqlite::Connection::open(&site.db).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    // One row per card id, one NULL row for the patient without cards.
    let expected_rows: usize = site.patients.iter().map(|p| p.card_ids.len().max(1)).sum();
    assert_eq!(count("SELECT count(*) FROM patient") as usize, expected_rows);
    assert_eq!(count("SELECT count(*) FROM patient WHERE SidexisPatientId = 112 AND CardId IS NULL"), 1);
    assert_eq!(count("SELECT count(*) FROM patient WHERE SidexisPatientId = 127 AND CardId = ''"), 1);
    assert_eq!(count("SELECT count(*) FROM patient WHERE SidexisPatientId = 88"), 2);
    assert_eq!(count("SELECT count(*) FROM mediabase"), 37);
    let (name, pid): (String, i64) = conn
        .query_row("SELECT ImageName, SidexisPatientId FROM mediabase WHERE ImageId = 106", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((name.as_str(), pid), ("Bißflügel rechts", 23));
    let birth: String =
        conn.query_row("SELECT BirthDate FROM patient WHERE SidexisPatientId = 17", [], |r| r.get(0)).unwrap();
    assert_eq!(birth, "1980-01-31");
}

#[test]
fn demo_counts_match_the_documented_ones() {
    let dir = Scratch::new("counts");
    let site = demo_site().build(&dir.0).unwrap();
    assert_eq!(site.expected(), DEMO_EXPECTED);
    assert_eq!(site.fate(site.image(101)), Fate::Stored { guid: demo_guid(17) });
    assert_eq!(site.fate(site.image(118)), Fate::Stored { guid: demo_guid(75) });
    assert_eq!(site.fate(site.image(120)), Fate::Stored { guid: demo_guid(88) });
    assert!(matches!(site.fate(site.image(123)), Fate::Quarantined { ref guids } if guids.len() == 2));
    assert_eq!(site.fate(site.image(125)), Fate::Unresolved);
    assert_eq!(site.fate(site.image(127)), Fate::Skipped);
    assert_eq!(site.fate(site.image(129)), Fate::Skipped);
    assert_eq!(site.fate(site.image(130)), Fate::Stored { guid: demo_guid(133) });
    assert_eq!(site.stored_for(&demo_guid(42)).len(), 4);
    assert_eq!(
        site.skipped_entries().into_iter().collect::<Vec<_>>(),
        vec!["Backup".to_string(), "P_000017/notes.txt".to_string()]
    );
}

#[test]
fn failure_cases_are_available_to_tests() {
    let dir = Scratch::new("failures");
    let site = SiteBuilder::new()
        .patient(PatientSpec::new(5, "C-5", "Test", "Tina").born("20000101", "F"))
        .image(ImageSpec::new(5, 1, "ok", ImageKind::IntraOral))
        .image(ImageSpec::new(5, 2, "broken", ImageKind::Corrupt))
        .image(ImageSpec::new(5, 3, "text", ImageKind::NotDicom))
        .image(ImageSpec::new(5, 4, "no row", ImageKind::IntraOral).without_mediabase_row())
        .image(ImageSpec::new(6, 5, "nobody", ImageKind::Panoramic))
        .stray_file("Thumbs.db", b"\0\0")
        .stray_file("Backup/P_000005/0000_1.dcm", b"old copy")
        .odd_folder("Backup")
        .map_card("C-5", &guid("t"))
        .build(&dir.0)
        .unwrap();
    let corrupt = fs::read(&site.image(2).path).unwrap();
    assert_eq!(&corrupt[128..132], b"DICM");
    assert!(open_file(&site.image(2).path).is_err(), "the corrupt file must not parse");
    assert!(site.image(2).dicom.is_none());
    assert!(open_file(&site.image(3).path).is_err());
    assert!(open_file(&site.image(4).path).is_ok());
    assert!(open_file(&site.image(5).path).is_ok(), "a folder without DB rows still holds good DICOM");
    assert!(site.pdata.join("P_00006/0000_5.dcm").is_file());
    assert_eq!(site.fate(site.image(2)), Fate::ExtractFailed);
    assert_eq!(site.fate(site.image(4)), Fate::SourceFailed(SourceFailure::NoMediabaseRow));
    assert_eq!(site.fate(site.image(5)), Fate::SourceFailed(SourceFailure::NoPatientRows));
    assert_eq!(
        site.expected(),
        ExpectedCounts { scanned: 3, skipped: 2, failed: 4, unresolved: 0, quarantined: 0, stored: 1 }
    );
    let conn = rusqlite::Connection::open(&site.db).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM mediabase", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 4);
}

#[test]
fn pixel_override_makes_realistic_sizes() {
    let dir = Scratch::new("big");
    let site = SiteBuilder::new()
        .patient(PatientSpec::new(1, "C-1", "Big", "Ben"))
        .image(ImageSpec::new(1, 1, "big", ImageKind::IntraOral).pixels(1024, 1280))
        .build(&dir.0)
        .unwrap();
    let img = site.image(1);
    assert!((2_621_440..2_700_000).contains(&img.size), "{}", img.size);
    let obj = open_file(&img.path).unwrap();
    assert_eq!(obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(), 1024);
}

#[test]
fn card_map_is_quoted_csv() {
    let dir = Scratch::new("csv");
    let site = SiteBuilder::new()
        .map_card("C-1", "g1")
        .map_card("A,B", "say \"hi\"")
        .map_card(" padded ", "g3")
        .build(&dir.0)
        .unwrap();
    assert_eq!(
        fs::read_to_string(&site.csv).unwrap(),
        "cardId,patientGuid\nC-1,g1\n\"A,B\",\"say \"\"hi\"\"\"\n\" padded \",g3\n"
    );
}

#[test]
fn builder_refuses_bad_input() {
    let dir = Scratch::new("refuse");
    let dup = SiteBuilder::new().image(ImageSpec::new(1, 7, "a", ImageKind::IntraOral)).image(ImageSpec::new(
        2,
        7,
        "b",
        ImageKind::IntraOral,
    ));
    assert!(dup.build(&dir.0).unwrap_err().to_string().contains("image id 7"));
    assert!(SiteBuilder::new().stray_file("../escape", b"x").build(&dir.0).is_err());
    assert!(SiteBuilder::new().stray_file("/abs", b"x").build(&dir.0).is_err());
    let clash = SiteBuilder::new()
        .image(ImageSpec::new(1, 7, "a", ImageKind::IntraOral))
        .stray_file("P_00001/0000_7.dcm", b"x");
    assert!(clash.build(&dir.0).is_err());
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(dir.0.join("something"), b"x").unwrap();
    assert!(SiteBuilder::new().build(&dir.0).unwrap_err().to_string().contains("not empty"));
}

#[test]
fn names_and_guids_have_the_sidexis_and_pms_shapes() {
    assert_eq!(patient_folder(17), "P_000017");
    assert_eq!(patient_folder(1234), "P_00001234");
    assert_eq!(image_file_name(101), "0000_101.dcm");
    let g = guid("x");
    assert_eq!(g.len(), 36);
    assert_eq!(g.split('-').map(str::len).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
    assert!(g.chars().all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert_eq!(g, guid("x"));
    assert_ne!(demo_guid(17), demo_guid(23));
}
