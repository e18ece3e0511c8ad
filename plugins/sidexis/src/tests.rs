use super::*;

#[test]
fn folder_names() {
    assert_eq!(patient_folder_id("P_000017"), Some(17));
    assert_eq!(patient_folder_id("P_17"), Some(17));
    assert_eq!(patient_folder_id("P_0000"), Some(0));
    assert_eq!(patient_folder_id("P_"), None);
    assert_eq!(patient_folder_id("p_000017"), None);
    assert_eq!(patient_folder_id("P_00a17"), None);
    assert_eq!(patient_folder_id("P_-17"), None);
    assert_eq!(patient_folder_id("P_99999999999999999999999"), None);
    assert_eq!(patient_folder_id("Thumbs.db"), None);
}

#[test]
fn image_names_of_files() {
    assert_eq!(image_file_id("0000_42.dcm"), Some(42));
    assert_eq!(image_file_id("0000_0042.DCM"), Some(42));
    assert_eq!(image_file_id("0000_42.Dcm"), Some(42));
    assert_eq!(image_file_id("0000_.dcm"), None);
    assert_eq!(image_file_id("0000_42.jpg"), None);
    assert_eq!(image_file_id("0001_42.dcm"), None);
    assert_eq!(image_file_id("0000_4x2.dcm"), None);
    assert_eq!(image_file_id("0000_42.dcm.bak"), None);
    assert_eq!(image_file_id("0000_ü.dcm"), None);
    assert_eq!(image_file_id("0000_"), None);
}

#[test]
fn identifiers() {
    for ok in ["patient", "dbo.patient", "[dbo].[Patient Id]".replace(' ', "_").as_str(), "[1x]", "_x1"] {
        assert!(is_sql_identifier(ok), "{ok}");
    }
    for bad in ["", "a b", "a;drop", "a.b.c", "[a", "a]", "1x", "a--", "[]", "a.", ".a", "\"a\""] {
        assert!(!is_sql_identifier(bad), "{bad}");
    }
}

#[test]
fn config_defaults_and_errors() {
    let c = Config::parse("{}").unwrap();
    assert_eq!(c.pdata_root, "pdata");
    assert_eq!(c.folders_per_page, 50);
    let e = Config::parse(r#"{"patient_tabel": "x"}"#).unwrap_err();
    assert!(e.message.contains("patient_tabel"), "{}", e.message);
    let e = Config::parse(r#"{"image_table": "x; DROP TABLE y"}"#).unwrap_err();
    assert!(e.message.contains("image_table"), "{}", e.message);
    let e = Config::parse(r#"{"folders_per_page": 0}"#).unwrap_err();
    assert!(e.message.contains("folders_per_page"), "{}", e.message);
    let e = Config::parse(r#"{"folders_per_page": 3000000}"#).unwrap_err();
    assert!(e.message.contains("folders_per_page: 3000000 is outside 1..=1000"), "{}", e.message);
    assert!(Config::parse(r#"{"folders_per_page": 1000}"#).is_ok());
}

/// An in-memory Sidexis site.
#[derive(Default)]
struct Fake {
    dirs: BTreeMap<String, Vec<DirEntry>>,
    patients: Vec<(i64, SqlValue)>,
    images: Vec<(SqlValue, SqlValue)>,
    queries: Vec<String>,
    listings: Vec<String>,
}

impl Fake {
    fn dir(&mut self, path: &str, entries: &[(&str, EntryKind)]) {
        let entries = entries.iter().map(|(n, k)| DirEntry { name: n.to_string(), kind: *k, size: 100 }).collect();
        self.dirs.insert(path.to_string(), entries);
    }
}

impl Site for Fake {
    fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, HostError> {
        self.listings.push(path.to_string());
        self.dirs.get(path).cloned().ok_or_else(|| HostError::NotFound(path.to_string()))
    }

    fn query(&mut self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, HostError> {
        self.queries.push(statement.to_string());
        let int = |v: &SqlValue| match v {
            SqlValue::Integer(n) => *n,
            _ => panic!("non-integer param"),
        };
        if statement.starts_with("SELECT SidexisPatientId, CardId FROM patient WHERE SidexisPatientId IN (@P1") {
            assert_eq!(statement.matches("@P").count(), params.len());
            let ids: Vec<i64> = params.iter().map(int).collect();
            Ok(self
                .patients
                .iter()
                .filter(|(p, _)| ids.contains(p))
                .map(|(p, c)| vec![SqlValue::Integer(*p), c.clone()])
                .collect())
        } else if statement.starts_with("SELECT ImageId, ImageName FROM mediabase WHERE ImageId IN (@P1") {
            assert_eq!(statement.matches("@P").count(), params.len());
            let ids: Vec<i64> = params.iter().map(int).collect();
            Ok(self
                .images
                .iter()
                .filter(|(id, _)| value_id(id).is_some_and(|id| ids.contains(&(id as i64))))
                .map(|(id, name)| vec![id.clone(), name.clone()])
                .collect())
        } else {
            Err(HostError::Invalid(format!("unexpected SQL: {statement}")))
        }
    }
}

use EntryKind::{Directory as D, File as F};

fn site() -> Fake {
    let mut s = Fake::default();
    s.dir("", &[("P_000001", D), ("P_000002", D), ("P_000003", D), ("P_000004", D), ("Thumbs.db", F), ("backup", D)]);
    s.dir("P_000001", &[("0000_10.dcm", F), ("0000_11.DCM", F), ("notes.txt", F), ("old", D)]);
    s.dir("P_000002", &[("0000_20.dcm", F)]);
    s.dir("P_000003", &[("0000_30.dcm", F)]);
    s.dir("P_000004", &[("0000_40.dcm", F)]);
    s.patients = vec![
        (1, SqlValue::Text(" 1234 ".into())),
        (1, SqlValue::Integer(1234)),
        (1, SqlValue::Text("77".into())),
        (1, SqlValue::Null),
        (2, SqlValue::Text("  ".into())),
        (2, SqlValue::Null),
        (4, SqlValue::Text("4444".into())),
    ];
    s.images = vec![
        (SqlValue::Integer(10), SqlValue::Text(" Pano ".into())),
        (SqlValue::Text("11".into()), SqlValue::Text("".into())),
        (SqlValue::Integer(20), SqlValue::Text("x".into())),
        (SqlValue::Integer(30), SqlValue::Text("y".into())),
    ];
    s
}

fn outcome(n: &Notice) -> &'static str {
    match n.outcome {
        NoticeOutcome::Skip => "skip",
        NoticeOutcome::Fail => "fail",
    }
}

fn notices(p: &Page) -> Vec<(String, &'static str, String)> {
    p.notices.iter().map(|n| (n.subject.clone(), outcome(n), n.reason.clone())).collect()
}

#[test]
fn one_page_scan() {
    let mut s = site();
    let page = scan_page(&Config::default(), &mut s, None, &mut None).unwrap();
    assert_eq!(page.next_cursor, None);
    let ids: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["P_000001/0000_10.dcm", "P_000001/0000_11.DCM"]);
    let first = &page.items[0];
    assert_eq!(first.display_name, "Pano");
    assert_eq!(page.items[1].display_name, "0000_11.DCM");
    assert_eq!(first.file.root, "pdata");
    assert_eq!(first.file.path, "P_000001/0000_10.dcm");
    assert_eq!(first.size, 100);
    let keys: Vec<(&str, &str)> = first.patient_keys.iter().map(|k| (k.scheme.as_str(), k.value.as_str())).collect();
    assert_eq!(keys, [("sidexis-id", "1"), ("card-id", "1234"), ("card-id", "77")]);
    assert_eq!(
        first.attributes,
        [("sidexis.patient-id".to_string(), "1".to_string()), ("sidexis.image-id".to_string(), "10".to_string())]
    );
    let n = notices(&page);
    let expect = [
        ("P_000001/notes.txt", "skip", "not a Sidexis image file"),
        ("P_000001/old", "skip", "subdirectory in a patient folder"),
        ("P_000002/0000_20.dcm", "skip", "patient has no CardId"),
        ("P_000003/0000_30.dcm", "fail", "no row in patient table for SidexisPatientId 3"),
        ("P_000004/0000_40.dcm", "fail", "no row in mediabase table for ImageId 40"),
        ("Thumbs.db", "skip", "not a Sidexis patient folder"),
        ("backup", "skip", "not a Sidexis patient folder"),
    ];
    let expect: Vec<(String, &str, String)> =
        expect.iter().map(|(a, b, c)| (a.to_string(), *b, c.to_string())).collect();
    assert_eq!(n, expect);
}

#[test]
fn paging() {
    let mut s = site();
    let config = Config { folders_per_page: 2, ..Config::default() };
    let p1 = scan_page(&config, &mut s, None, &mut None).unwrap();
    assert_eq!(p1.next_cursor.as_deref(), Some("P_000002"));
    assert_eq!(p1.items.len(), 2);
    let p2 = scan_page(&config, &mut s, p1.next_cursor.as_deref(), &mut None).unwrap();
    // The last page takes the trailing non-patient entries too.
    assert_eq!(p2.next_cursor, None);
    assert!(p2.items.is_empty());
    let subjects: Vec<&str> = p2.notices.iter().map(|n| n.subject.as_str()).collect();
    assert_eq!(subjects, ["P_000003/0000_30.dcm", "P_000004/0000_40.dcm", "Thumbs.db", "backup"]);

    // Exactly full last page: no cursor.
    let mut s = site();
    s.dir("", &[("P_000001", D), ("P_000002", D)]);
    let p = scan_page(&config, &mut s, None, &mut None).unwrap();
    assert_eq!(p.next_cursor, None);

    // A page boundary before a stray entry; the stray entry goes with
    // the next page.
    let config = Config { folders_per_page: 1, ..Config::default() };
    let mut s = site();
    s.dir("", &[("A", F), ("P_000001", D), ("P_000002", D), ("Z", F)]);
    let p1 = scan_page(&config, &mut s, None, &mut None).unwrap();
    assert_eq!(p1.next_cursor.as_deref(), Some("P_000001"));
    assert_eq!(p1.notices[0].subject, "A");
    let p2 = scan_page(&config, &mut s, Some("P_000001"), &mut None).unwrap();
    assert_eq!(p2.next_cursor, None);
    assert_eq!(p2.notices.last().unwrap().subject, "Z");

    // A cursor past everything: an empty, final page.
    let p = scan_page(&config, &mut s, Some("ZZ"), &mut None).unwrap();
    assert!(p.items.is_empty() && p.notices.is_empty() && p.next_cursor.is_none());
}

#[test]
fn no_sql_for_folders_without_images() {
    let mut s = site();
    s.dir("", &[("P_000009", D)]);
    s.dir("P_000009", &[("readme.txt", F)]);
    let p = scan_page(&Config::default(), &mut s, None, &mut None).unwrap();
    assert!(s.queries.is_empty());
    assert_eq!(p.notices.len(), 1);
}

#[test]
fn vanished_folder_is_a_notice_and_sql_errors_fail_the_page() {
    let mut s = site();
    s.dirs.remove("P_000002");
    let p = scan_page(&Config::default(), &mut s, None, &mut None).unwrap();
    assert!(p.notices.iter().any(|n| n.subject == "P_000002" && matches!(n.outcome, NoticeOutcome::Fail)));

    let config = Config { patient_table: "nope".into(), ..Config::default() };
    let e = scan_page(&config, &mut site(), None, &mut None).unwrap_err();
    assert!(matches!(e.kind, ferry_plugin_sdk::types::ErrorKind::Permanent));
    assert!(e.message.contains("reading the nope table"), "{}", e.message);
}

#[test]
fn many_images_are_queried_in_chunks() {
    let mut s = site();
    s.dir("", &[("P_000001", D)]);
    let files: Vec<String> = (0..450).map(|i| format!("0000_{i}.dcm")).collect();
    let entries: Vec<(&str, EntryKind)> = files.iter().map(|f| (f.as_str(), F)).collect();
    s.dir("P_000001", &entries);
    s.images = (0..450).map(|i| (SqlValue::Integer(i), SqlValue::Text(format!("img{i}")))).collect();
    let p = scan_page(&Config::default(), &mut s, None, &mut None).unwrap();
    assert_eq!(p.items.len(), 450);
    assert_eq!(s.queries.len(), 1 + 3);
}

#[test]
fn a_page_asks_the_database_once_per_table_not_once_per_folder() {
    let mut s = site();
    let names: Vec<String> = (1..=40).map(|p| format!("P_{p:06}")).collect();
    let top: Vec<(&str, EntryKind)> = names.iter().map(|n| (n.as_str(), D)).collect();
    s.dir("", &top);
    let files: Vec<String> = (1..=40).map(|p| format!("0000_{}.dcm", 1000 + p)).collect();
    for (n, f) in names.iter().zip(&files) {
        s.dir(n, &[(f.as_str(), F)]);
    }
    s.patients = (1..=40).map(|p| (p, SqlValue::Text(format!("C{p}")))).collect();
    s.images = (1..=40).map(|p| (SqlValue::Integer(1000 + p), SqlValue::Text(format!("img{p}")))).collect();
    let p = scan_page(&Config::default(), &mut s, None, &mut None).unwrap();
    assert_eq!(p.items.len(), 40);
    assert_eq!(s.queries.len(), 2, "{:?}", s.queries);
    // each item keeps its own patient's keys
    let item = p.items.iter().find(|i| i.id == "P_000007/0000_1007.dcm").unwrap();
    assert!(item.patient_keys.iter().any(|k| k.scheme == "card-id" && k.value == "C7"));
    assert!(item.patient_keys.iter().any(|k| k.scheme == "sidexis-id" && k.value == "7"));
}

#[test]
fn the_root_is_listed_once_per_scan() {
    let config = Config { folders_per_page: 1, ..Config::default() };
    let mut s = site();
    let mut listing = None;
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = scan_page(&config, &mut s, cursor.as_deref(), &mut listing).unwrap();
        pages += 1;
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(s.listings.iter().filter(|p| p.is_empty()).count(), 1);
    assert!(listing.is_none(), "dropped when the scan is done");

    // A cursor other than the one handed out last lists again.
    let p1 = scan_page(&config, &mut s, None, &mut listing).unwrap();
    assert_eq!(p1.next_cursor.as_deref(), Some("P_000001"));
    scan_page(&config, &mut s, Some("P_000002"), &mut listing).unwrap();
    assert_eq!(s.listings.iter().filter(|p| p.is_empty()).count(), 3);
    assert_eq!(listing.as_ref().map(|(c, _)| c.as_str()), Some("P_000003"));

    // A fresh instance in the middle of a scan lists again.
    let p = scan_page(&config, &mut s, Some("P_000002"), &mut None).unwrap();
    assert_eq!(p.next_cursor.as_deref(), Some("P_000003"));
    assert_eq!(s.listings.iter().filter(|p| p.is_empty()).count(), 4);
}
