use std::collections::BTreeMap;

use ferry_plugin_sdk::fs::EntryKind;
use ferry_plugin_sdk::types::HostError;
use ferry_plugin_sdk::{Document, DocumentPage, NoticeOutcome};

use super::*;
use crate::config::{is_loinc, normalise_path, Format, Mode, Pattern, LOINC};
use crate::manifest::{is_iso_date, parse, Row, MAX_MANIFEST_BYTES};
use crate::scan::{content_type, is_hidden, is_temporary, page, plan, ReadError, ROW_ATTRIBUTE};

fn settings(extra: &str) -> Settings {
    Config::parse(&format!(
        r#"{{"root": "inbox", "types": {{"lab": {{"code": "11502-2", "display": "Laboratory report"}},
            "xray": {{"system": "http://snomed.info/sct", "code": "363680008", "display": "X-ray"}}}}{extra}}}"#
    ))
    .unwrap_or_else(|e| panic!("{}", e.message))
}

fn manifest_settings() -> Settings {
    settings(r#", "manifest": "manifest.csv""#)
}

fn config_error(json: &str) -> String {
    Config::parse(json).map(|_| ()).unwrap_err().message
}

#[test]
fn config_defaults_and_errors() {
    let s = manifest_settings();
    assert_eq!(s.key_scheme, "provider-patient-id");
    assert_eq!(s.page_size, 200);
    assert_eq!(s.mode, Mode::Manifest { path: "manifest.csv".into(), format: Format::Csv });
    assert_eq!(s.types["lab"].system, LOINC);
    assert_eq!(s.types["xray"].system, "http://snomed.info/sct");
    let s = Config::parse(r#"{"root": "r", "manifest": "./exports\\List.JSON"}"#).unwrap();
    assert_eq!(s.mode, Mode::Manifest { path: "exports/List.JSON".into(), format: Format::Json });
    let s =
        Config::parse(r#"{"root": "r", "pattern": "{patient}/{file}", "default_type": {"code": "34133-9"}}"#).unwrap();
    let d = s.default_type.unwrap();
    assert_eq!((d.system.as_str(), d.code.as_str(), d.display.as_str()), (LOINC, "34133-9", "34133-9"));

    for (json, wanted) in [
        (r#"{"root": "r", "manifest": "m.csv", "patern": "x"}"#, "patern"),
        (r#"{"root": "r"}"#, "give `manifest`"),
        (r#"{"root": "r", "manifest": "m.csv", "pattern": "{patient}/{file}"}"#, "not both"),
        (r#"{"root": "r", "manifest": "m.xlsx"}"#, ".csv or .json"),
        (r#"{"root": "r", "manifest": "../m.csv"}"#, "manifest"),
        (r#"{"root": "r", "manifest": "/etc/m.csv"}"#, "manifest"),
        (r#"{"root": "", "manifest": "m.csv"}"#, "root"),
        (r#"{"root": "r", "manifest": "m.csv", "page_size": 0}"#, "page_size: 0 is outside 1..=1000"),
        (r#"{"root": "r", "manifest": "m.csv", "page_size": 1001}"#, "page_size"),
        (r#"{"root": "r", "manifest": "m.csv", "key_scheme": " "}"#, "key_scheme"),
        (r#"{"root": "r", "manifest": "m.csv", "types": {"lab": {"code": "11502-3"}}}"#, "types.lab"),
        (r#"{"root": "r", "manifest": "m.csv", "types": {"lab": {"code": "1", "sytem": "x"}}}"#, "sytem"),
        (r#"{"root": "r", "manifest": "m.csv", "default_type": {"display": "x"}}"#, "code"),
        (r#"{"root": "r", "pattern": "{type}/{file}"}"#, "{patient} exactly once"),
        (r#"{"root": "r", "pattern": "{patient}/{file}/x"}"#, "must end with {file}"),
        (r#"{"root": "r", "pattern": "{patient}/{type}/{type}/{file}"}"#, "at most once"),
        (r#"{"root": "r", "pattern": "P_{patient}/{file}"}"#, "whole segments"),
        (r#"{"root": "r", "pattern": "{patient}//{file}"}"#, "empty"),
    ] {
        let e = config_error(json);
        assert!(e.contains(wanted), "{json}: {e}");
    }
}

#[test]
fn loinc_codes_and_type_lookup() {
    for ok in ["11502-2", "34133-9", "34109-9", "18842-5", "1-8"] {
        assert!(is_loinc(ok), "{ok}");
    }
    for bad in ["11502-3", "11502", "-2", "11502-22", "a1502-2", "12345678-9", ""] {
        assert!(!is_loinc(bad), "{bad}");
    }
    let s = manifest_settings();
    assert_eq!(s.coding_for("lab").unwrap().display, "Laboratory report");
    assert_eq!(s.coding_for("LAB").unwrap().code, "11502-2");
    let c = s.coding_for("18842-5").unwrap();
    assert_eq!((c.system.as_str(), c.code.as_str(), c.display.as_str()), (LOINC, "18842-5", "18842-5"));
    let e = s.coding_for("letter").unwrap_err();
    assert!(e.contains("`letter`") && e.contains("lab, xray") && e.contains("add it"), "{e}");
}

#[test]
fn paths_are_normalised() {
    assert_eq!(normalise_path("a\\b/./c.pdf").as_deref(), Some("a/b/c.pdf"));
    assert_eq!(normalise_path(" ./a//b.pdf ").as_deref(), Some("a/b.pdf"));
    assert_eq!(normalise_path("../a.pdf"), None);
    assert_eq!(normalise_path("/a.pdf"), None);
    assert_eq!(normalise_path("C:\\a.pdf"), None);
    assert_eq!(normalise_path(""), None);
}

#[test]
fn csv_manifest_with_quoting() {
    let text = "\u{feff}File,Patient,type,date,title,author,patient_scheme,\n\
                a.pdf,4711,lab,2024-03-17,\"Blood panel, fasting\",\"Labor \"\"Dr.\"\" Schmidt\",,\n\
                b.pdf, 4712 ,,,\"two\nlines\",,card-id\n\
                ,,,,,,,\n\
                c.pdf,4713\n";
    let rows = parse(text.as_bytes(), Format::Csv, "inbox:manifest.csv").unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        Row {
            number: 2,
            file: Some("a.pdf".into()),
            patient: Some("4711".into()),
            kind: Some("lab".into()),
            date: Some("2024-03-17".into()),
            title: Some("Blood panel, fasting".into()),
            author: Some("Labor \"Dr.\" Schmidt".into()),
            ..Row::default()
        }
    );
    assert_eq!(rows[1].patient.as_deref(), Some("4712"));
    assert_eq!(rows[1].title.as_deref(), Some("two\nlines"));
    assert_eq!(rows[1].patient_scheme.as_deref(), Some("card-id"));
    // numbered as a spreadsheet shows rows: the header is 1, the empty row 4
    assert_eq!(rows[1].number, 3);
    assert_eq!((rows[2].number, rows[2].kind.as_deref()), (5, None));

    // `;` when the header only makes sense that way
    let rows = parse(b"file;patient;title\r\nx.pdf;1;\"a;b\"\r\n", Format::Csv, "m").unwrap();
    assert_eq!(rows[0].title.as_deref(), Some("a;b"));
}

#[test]
fn csv_manifest_problems() {
    let e = parse(b"file,patient,Notes,colour\nx.pdf,1,,\n", Format::Csv, "inbox:m.csv").unwrap_err();
    assert_eq!(
        e,
        "manifest inbox:m.csv: unknown column `Notes`, `colour`; the columns are file, patient, type, date, title, \
         author, patient_scheme"
    );
    let e = parse(b"file,patiend\n", Format::Csv, "m").unwrap_err();
    assert!(e.contains("no column `patient`"), "{e}");
    let e = parse(b"", Format::Csv, "m").unwrap_err();
    assert!(e.contains("no header row"), "{e}");
    let e = parse(b"file,patient,file\n", Format::Csv, "m").unwrap_err();
    assert!(e.contains("`file` appears twice"), "{e}");
    // an unquoted comma shifts the row: a problem of that row only
    let rows = parse(b"file,patient,title\nx.pdf,1,Blood, fasting\ny.pdf,2,ok\n", Format::Csv, "m").unwrap();
    assert!(rows[0].problem.as_deref().unwrap().contains("row 2 has more cells"), "{rows:?}");
    assert_eq!(rows[1].problem, None);
    let rows = parse(b"file,patient\nx.pdf,M\xfcller\n", Format::Csv, "m").unwrap();
    assert!(rows[0].problem.as_deref().unwrap().contains("not valid UTF-8"), "{rows:?}");
    assert!(!rows[0].problem.as_deref().unwrap().contains("ller"));
    let big = vec![b'x'; MAX_MANIFEST_BYTES as usize + 1];
    assert!(parse(&big, Format::Csv, "m").unwrap_err().contains("more than the 16 MiB"));
}

#[test]
fn json_manifest() {
    let text = r#"[{"file": "a.pdf", "patient": 4711, "type": "lab", "title": "Blood, \"fasting\""},
                   {"file": "b.pdf", "patient": "4712", "date": null, "patient_scheme": "card-id"}]"#;
    let rows = parse(text.as_bytes(), Format::Json, "m").unwrap();
    assert_eq!(rows[0].patient.as_deref(), Some("4711"));
    assert_eq!(rows[0].title.as_deref(), Some("Blood, \"fasting\""));
    assert_eq!((rows[1].number, rows[1].date.as_deref()), (2, None));
    let e =
        parse(br#"[{"file": "a.pdf", "patient": "1"}, {"file": "b", "pateint": "2"}]"#, Format::Json, "m").unwrap_err();
    assert!(e.contains("unknown field `pateint`") && e.contains("entry 2"), "{e}");
    assert!(parse(br#"{"file": "a"}"#, Format::Json, "m").unwrap_err().contains("array"));
    assert!(parse(br#"[{"file": 3}]"#, Format::Json, "m").unwrap_err().contains("`file` must be a string"));
    assert!(parse(b"[", Format::Json, "m").unwrap_err().contains("not valid JSON"));
}

#[test]
fn dates() {
    for ok in [
        "2024-03-07",
        "2024-02-29",
        "2024-03-07T14:30",
        "2024-03-07T14:30:59",
        "2024-03-07T14:30:59.123Z",
        "2024-03-07T14:30:00+01:00",
        "2024-03-07T23:59:60-05:30",
    ] {
        assert!(is_iso_date(ok), "{ok}");
    }
    for bad in [
        "07.03.2024",
        "2023-02-29",
        "2024-13-01",
        "2024-3-7",
        "2024-03-07T25:00",
        "2024-03-07T14",
        "2024-03-07T14:30.5",
        "2024-03-07T14:30:00+1",
        "2024-03-07 14:30",
        "2024-03",
        "",
    ] {
        assert!(!is_iso_date(bad), "{bad}");
    }
}

#[test]
fn content_types_and_silent_names() {
    assert_eq!(content_type("a/Letter.PDF"), Some("application/pdf"));
    assert_eq!(content_type("x.jpeg"), Some("image/jpeg"));
    assert_eq!(content_type("x.JPG"), Some("image/jpeg"));
    assert_eq!(content_type("x.png"), Some("image/png"));
    assert_eq!(content_type("x.tif"), Some("image/tiff"));
    assert_eq!(content_type("x.tiff"), Some("image/tiff"));
    assert_eq!(content_type("notes.txt"), Some("text/plain"));
    assert_eq!(content_type("x.docx"), None);
    assert_eq!(content_type("README"), None);
    assert!(is_hidden(".DS_Store") && !is_hidden("a.pdf"));
    for t in ["~$letter.docx", "a.pdf.tmp", "a.pdf.PART", "b.crdownload"] {
        assert!(is_temporary(t), "{t}");
    }
    assert!(!is_temporary("partial.pdf"));
}

#[test]
fn pattern_matching() {
    let p = Pattern::parse("exports/{patient}/{type}/{file}").unwrap();
    let m = p.matches("exports/4711/lab/blood.pdf").unwrap();
    assert_eq!((m.patient, m.kind), ("4711", Some("lab")));
    assert_eq!(p.matches("Exports/4711/lab/blood.pdf"), None);
    assert_eq!(p.matches("exports/4711/blood.pdf"), None);
    assert_eq!(p.matches("exports/4711/lab/2024/blood.pdf"), None);
    let p = Pattern::parse("{patient}/{file}").unwrap();
    assert_eq!(p.matches("4711/a.pdf").unwrap().kind, None);
    assert_eq!(p.matches("a.pdf"), None);
}

/// An in-memory drop folder.
#[derive(Default)]
struct Fake {
    dirs: BTreeMap<String, Vec<DirEntry>>,
    files: BTreeMap<String, Vec<u8>>,
    listings: usize,
}

impl Fake {
    fn new(paths: &[&str]) -> Fake {
        let mut fake = Fake::default();
        fake.dirs.insert(String::new(), vec![]);
        for path in paths {
            fake.add(path, b"%PDF-1.4");
        }
        fake
    }

    fn add(&mut self, path: &str, bytes: &[u8]) {
        let mut dir = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i == parts.len() - 1;
            let kind = if last { EntryKind::File } else { EntryKind::Directory };
            let entries = self.dirs.get_mut(&dir).unwrap();
            if !entries.iter().any(|e| e.name == *part) {
                entries.push(DirEntry { name: part.to_string(), kind, size: bytes.len() as u64 });
                entries.sort_by(|a, b| a.name.cmp(&b.name));
            }
            dir = if dir.is_empty() { part.to_string() } else { format!("{dir}/{part}") };
            if !last {
                self.dirs.entry(dir.clone()).or_default();
            }
        }
        self.files.insert(path.to_string(), bytes.to_vec());
    }
}

impl Site for Fake {
    fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, HostError> {
        self.listings += 1;
        self.dirs.get(path).cloned().ok_or_else(|| HostError::NotFound(path.into()))
    }

    fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, ReadError> {
        let bytes = self.files.get(path).ok_or_else(|| ReadError::Host(HostError::NotFound(path.into()).into()))?;
        if bytes.len() as u64 > limit {
            return Err(ReadError::TooLarge(bytes.len() as u64));
        }
        Ok(bytes.clone())
    }
}

/// `subject outcome: reason` of every notice, and the documents.
fn outline(page: &DocumentPage) -> (Vec<String>, Vec<String>) {
    let notices = page
        .notices
        .iter()
        .map(|n| {
            let o = if n.outcome == NoticeOutcome::Skip { "skip" } else { "fail" };
            format!("{} {o}: {}", n.subject, n.reason)
        })
        .collect();
    (page.documents.iter().map(|d| d.item.id.clone()).collect(), notices)
}

fn doc<'a>(page: &'a DocumentPage, id: &str) -> &'a Document {
    page.documents.iter().find(|d| d.item.id == id).unwrap_or_else(|| panic!("no document {id}"))
}

#[test]
fn manifest_mode_documents_and_notices() {
    let mut fake = Fake::new(&[
        "2024/blood.pdf",
        "2024/scan.PNG",
        "2024/notes.txt",
        "2024/letter.docx",
        "2024/.hidden.pdf",
        ".git/config.pdf",
        "~$draft.pdf",
        "upload.pdf.part",
        "stray.pdf",
        "dup.pdf",
        "baddate.pdf",
        "badtype.pdf",
        "nopatient.pdf",
    ]);
    let manifest = "file,patient,type,date,title,author,patient_scheme\n\
                    2024/blood.pdf,4711,lab,2024-03-17,\"Blood panel, fasting\",Labor Schmidt,\n\
                    2024\\scan.PNG,4711,xray,2024-03-18T10:00:00Z,,,card-id\n\
                    2024/notes.txt,4712,,,,,\n\
                    2024/letter.docx,4712,,,,,\n\
                    missing.pdf,4713,lab,,,,\n\
                    dup.pdf,1,,,,,\n\
                    dup.pdf,2,,,,,\n\
                    baddate.pdf,1,,07.03.2024,,,\n\
                    badtype.pdf,1,letter,,,,\n\
                    nopatient.pdf,,,,,,\n\
                    ,5,,,,,\n";
    fake.add("manifest.csv", manifest.as_bytes());
    let s = manifest_settings();
    let entries = plan(&s, &mut fake).unwrap();
    let p = page(&entries, None, 100);
    let (docs, notices) = outline(&p);
    assert_eq!(docs, ["2024/blood.pdf", "2024/notes.txt", "2024/scan.PNG"]);
    assert_eq!(
        notices,
        [
            "2024/letter.docx skip: unsupported file type `.docx`: folder-documents takes pdf, jpg, jpeg, png, tif, tiff, txt",
            "baddate.pdf fail: manifest row 9: `date` is not an ISO 8601 date: write it as YYYY-MM-DD (2024-03-07) \
             or YYYY-MM-DDThh:mm[:ss] (2024-03-07T14:30:00, optionally with Z or +01:00)",
            "badtype.pdf fail: manifest row 10: type `letter` is neither a key of [config] types (lab, xray) nor \
             a LOINC code (like 11502-2): add it to [config] types",
            "dup.pdf fail: manifest rows 7, 8 all name this file: keep one of them",
            "manifest.csv row 12 fail: manifest row 12: the `file` cell is empty: name the file, or delete the row",
            "missing.pdf fail: manifest row 6 names this file, which is not in the folder: export it again or fix \
             the row",
            "nopatient.pdf fail: manifest row 11: the `patient` cell is empty: give the patient's id",
            "stray.pdf skip: not in the manifest",
        ]
    );
    let blood = doc(&p, "2024/blood.pdf");
    assert_eq!(blood.item.display_name, "blood.pdf");
    assert_eq!((blood.item.file.root.as_str(), blood.item.file.path.as_str()), ("inbox", "2024/blood.pdf"));
    assert_eq!(blood.item.size, 8);
    let key = &blood.item.patient_keys[0];
    assert_eq!((key.scheme.as_str(), key.value.as_str()), ("provider-patient-id", "4711"));
    assert_eq!(blood.item.attributes, [(ROW_ATTRIBUTE.to_string(), "2".to_string())]);
    let f = &blood.facts;
    assert_eq!(f.content_type, "application/pdf");
    assert_eq!(f.kind.as_ref().map(|k| k.code.as_str()), Some("11502-2"));
    assert_eq!(f.date.as_deref(), Some("2024-03-17"));
    assert_eq!(f.title.as_deref(), Some("Blood panel, fasting"));
    assert_eq!(f.author.as_deref(), Some("Labor Schmidt"));
    let scan = doc(&p, "2024/scan.PNG");
    assert_eq!(scan.facts.content_type, "image/png");
    assert_eq!(scan.item.patient_keys[0].scheme, "card-id");
    assert_eq!(scan.facts.kind.as_ref().map(|k| k.system.as_str()), Some("http://snomed.info/sct"));
    let notes = doc(&p, "2024/notes.txt");
    assert_eq!(notes.facts.title.as_deref(), Some("notes"), "the file stem");
    assert!(notes.facts.kind.is_none() && notes.facts.date.is_none() && notes.facts.author.is_none());
    // no notice quotes a cell
    assert!(p.notices.iter().all(|n| !n.reason.contains("07.03.2024") && !n.reason.contains("4713")));
}

#[test]
fn default_type_and_manifest_errors() {
    let mut fake = Fake::new(&["a.pdf"]);
    fake.add("m.json", br#"[{"file": "a.pdf", "patient": "1"}]"#);
    let s = settings(r#", "manifest": "m.json", "default_type": {"code": "34133-9", "display": "Summary"}"#);
    let p = page(&plan(&s, &mut fake).unwrap(), None, 10);
    assert_eq!(p.documents[0].facts.kind.as_ref().map(|k| k.display.as_str()), Some("Summary"));
    assert_eq!(p.documents[0].item.attributes[0].1, "1");

    let mut fake = Fake::new(&["a.pdf"]);
    fake.add("manifest.csv", b"file,patient,ward\n");
    let e = plan(&manifest_settings(), &mut fake).unwrap_err();
    assert!(e.message.contains("unknown column `ward`"), "{}", e.message);

    let mut fake = Fake::new(&["a.pdf"]);
    fake.add("manifest.csv", &vec![b' '; MAX_MANIFEST_BYTES as usize + 1]);
    let e = plan(&manifest_settings(), &mut fake).unwrap_err();
    assert!(e.message.contains("16777217 bytes, more than the 16 MiB"), "{}", e.message);

    let e = plan(&manifest_settings(), &mut Fake::new(&["a.pdf"])).unwrap_err();
    assert!(e.message.contains("reading the manifest inbox:manifest.csv: not found"), "{}", e.message);
}

#[test]
fn pattern_mode() {
    let mut fake = Fake::new(&["4711/lab/blood.pdf", "4711/LAB/b2.pdf", "4711/misc/x.pdf", "4712/11502-2/y.tif"]);
    fake.add("readme.txt", b"hi");
    fake.add("4712/z.pdf", b"z");
    let s = settings(r#", "pattern": "{patient}/{type}/{file}""#);
    let p = page(&plan(&s, &mut fake).unwrap(), None, 10);
    let (docs, notices) = outline(&p);
    assert_eq!(docs, ["4711/LAB/b2.pdf", "4711/lab/blood.pdf", "4712/11502-2/y.tif"]);
    assert_eq!(notices.len(), 3, "{notices:#?}");
    assert!(notices[0].starts_with("4711/misc/x.pdf fail: folder type `misc` is neither"), "{notices:#?}");
    assert_eq!(notices[1], "4712/z.pdf skip: does not match pattern `{patient}/{type}/{file}`");
    assert_eq!(notices[2], "readme.txt skip: does not match pattern `{patient}/{type}/{file}`");
    let y = doc(&p, "4712/11502-2/y.tif");
    assert_eq!(y.item.patient_keys[0].value, "4712");
    assert_eq!(y.facts.content_type, "image/tiff");
    assert_eq!(y.facts.kind.as_ref().map(|k| k.display.as_str()), Some("11502-2"));
    assert!(y.item.attributes.is_empty());
}

#[test]
fn pages_follow_path_order_and_notices_are_not_repeated() {
    // documents a, c, e, g; notices b (unsupported), d and f (not in the
    // manifest), h (a row whose file is missing), after the last document
    let mut fake = Fake::new(&["a.pdf", "b.docx", "c.pdf", "d.pdf", "e.pdf", "f.pdf", "g.pdf"]);
    fake.add("list.csv", b"file,patient\na.pdf,1\nc.pdf,1\ne.pdf,1\ng.pdf,1\nh.pdf,1\n");
    let s = settings(r#", "manifest": "list.csv", "page_size": 2"#);
    let entries = plan(&s, &mut fake).unwrap();
    let mut cursor = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let p = page(&entries, cursor.as_deref(), 2);
        pages += 1;
        assert!(p.documents.len() <= 2);
        let (docs, notices) = outline(&p);
        seen.push((docs, notices.iter().map(|n| n.split(' ').next().unwrap().to_string()).collect::<Vec<_>>()));
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(seen[0], (vec!["a.pdf".to_string(), "c.pdf".into()], vec!["b.docx".to_string(), "d.pdf".into()]));
    assert_eq!(seen[1], (vec!["e.pdf".to_string(), "g.pdf".into()], vec!["f.pdf".to_string(), "h.pdf".into()]));
    // the cursor is the last path handed out
    assert_eq!(page(&entries, None, 2).next_cursor.as_deref(), Some("d.pdf"));
    // a cursor from elsewhere still works: everything after it
    assert_eq!(outline(&page(&entries, Some("e"), 10)).0, ["e.pdf", "g.pdf"]);
}

#[test]
fn one_walk_serves_the_pages_of_a_scan() {
    let mut fake = Fake::new(&["a/1.pdf", "a/2.pdf", "b/3.pdf"]);
    let s = settings(r#", "pattern": "{patient}/{file}", "page_size": 1"#);
    let mut stage = FolderDocuments { settings: s, plan: None };
    let first = stage.scan_page(None, &mut fake).unwrap();
    let listed = fake.listings;
    let second = stage.scan_page(first.next_cursor.clone(), &mut fake).unwrap();
    let third = stage.scan_page(second.next_cursor.clone(), &mut fake).unwrap();
    assert_eq!(fake.listings, listed, "later pages reuse the walk");
    let ids: Vec<String> = [&first, &second, &third].iter().map(|p| p.documents[0].item.id.clone()).collect();
    assert_eq!(ids, ["a/1.pdf", "a/2.pdf", "b/3.pdf"]);
    assert_eq!(third.next_cursor, None);
    // a scan from the top walks again
    stage.scan_page(None, &mut fake).unwrap();
    assert!(fake.listings > listed);
}

#[test]
fn unlistable_folders_and_deep_trees() {
    let mut fake = Fake::new(&["x/a.pdf", "y/b.pdf"]);
    fake.dirs.remove("y");
    let s = settings(r#", "pattern": "{patient}/{file}""#);
    let p = page(&plan(&s, &mut fake).unwrap(), None, 10);
    let (docs, notices) = outline(&p);
    assert_eq!(docs, ["x/a.pdf"]);
    assert_eq!(notices, ["y fail: cannot list folder: not found: y"]);
    let deep = (0..40).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/") + "/a.pdf";
    let mut fake = Fake::new(&[deep.as_str()]);
    let p = page(&plan(&s, &mut fake).unwrap(), None, 10);
    assert!(p.notices[0].reason.contains("more than 32 levels"), "{:?}", p.notices);
}
