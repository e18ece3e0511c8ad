use std::collections::VecDeque;
use std::io::Cursor;

use super::*;
use ferry_plugin_sdk::serde_json::json;
use ferry_plugin_sdk::types::ErrorKind;

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const TAG: &str = "[ferry:0123456789ab]";

fn settings(extra: Value) -> Settings {
    let mut c = json!({ "base_url": "http://127.0.0.1:9/api/v1/", "doc_category": 190 });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    Settings::new(serde_json::from_value(c).unwrap()).unwrap()
}

fn config_error(c: Value) -> String {
    match serde_json::from_value::<Config>(c) {
        Err(e) => e.to_string(),
        Ok(c) => Settings::new(c).expect_err("refused").message,
    }
}

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs.iter().map(|(k, v)| (k.to_string(), MetaValue::Text(v.to_string()))).collect()
}

fn item(name: &str) -> Item {
    Item {
        id: "sidexis:17".into(),
        patient_keys: vec![],
        display_name: name.into(),
        file: FileRef { root: "pdata".into(), path: "P_00001/0000_17.dcm".into() },
        size: 1000,
        attributes: vec![],
    }
}

/// What the fake API answers, in order, and what it was asked.
#[derive(Default)]
struct Fake {
    /// `(status, body)` per spooled GET.
    listings: VecDeque<(u16, Vec<u8>)>,
    uploads: VecDeque<Result<(u16, Vec<u8>), HostError>>,
    head: Vec<u8>,
    urls: Vec<String>,
    sent: Vec<(Request, FileBody)>,
}

impl Host for Fake {
    fn sha256(&mut self, _: &FileRef) -> Result<String, HostError> {
        Ok(SHA.into())
    }
    fn head(&mut self, _: &FileRef, len: u32) -> Result<Vec<u8>, HostError> {
        Ok(self.head.iter().copied().take(len as usize).collect())
    }
    fn send_spooled(&mut self, r: Request) -> Result<(u16, Box<dyn Read>), HostError> {
        assert_eq!(r.method, "GET");
        assert!(r.retry, "listing is idempotent: host retry on");
        assert!(r.headers.iter().any(|(k, v)| k == "Content-Type" && v == "application/json"));
        self.urls.push(r.url.clone());
        let (status, body) = self.listings.pop_front().expect("a listing answer queued");
        Ok((status, Box::new(Cursor::new(body))))
    }
    fn send_file(&mut self, r: Request, body: FileBody) -> Result<Response, HostError> {
        assert!(!r.retry, "creates are not idempotent: host retry off");
        self.urls.push(r.url.clone());
        self.sent.push((r, body));
        let (status, body) = self.uploads.pop_front().expect("an upload answer queued")?;
        Ok(Response { status, headers: vec![], body })
    }
}

fn listing(docs: &[(u64, &str)]) -> Vec<u8> {
    let v: Vec<Value> = docs
        .iter()
        .map(|(n, d)| {
            json!({ "DocNum": n, "MountNum": 0, "Description": d, "PatNum": "15",
                    "Note": "_rawBase64_:.jpg_AAAA", "DateCreated": "2024-01-01 00:00:00", "DocCategory": 190 })
        })
        .collect();
    serde_json::to_vec(&v).unwrap()
}

fn created(n: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({ "DocNum": n, "Description": "x", "PatNum": 15, "ImgType": "Radiograph" })).unwrap()
}

fn template_of(b: &FileBody) -> (Value, String) {
    match b {
        FileBody::Base64(b) => {
            assert_eq!(b.template.matches(&b.placeholder).count(), 1);
            (serde_json::from_str(&b.template).unwrap(), b.placeholder.clone())
        }
        _ => panic!("a base64 body"),
    }
}

#[test]
fn settings_defaults_and_refusals() {
    let s = settings(json!({}));
    assert_eq!(s.base_url, "http://127.0.0.1:9/api/v1");
    assert_eq!(s.api, "127.0.0.1:9");
    assert_eq!(s.img_type, "Document");
    assert_eq!(s.template, vec![Piece::Title]);
    assert_eq!(s.timeout_ms, DEFAULT_TIMEOUT_MS);
    assert_eq!(settings(json!({ "img_type": "radiograph" })).img_type, "Radiograph");

    let base = json!({ "base_url": "https://api.opendental.com/api/v1", "doc_category": 1 });
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    assert!(config_error(with("api_key", json!("x"))).contains("unknown field `api_key`"));
    assert!(config_error(json!({ "base_url": "https://x" })).contains("doc_category"));
    assert!(config_error(with("doc_category", json!(0))).contains("doc_category"));
    assert!(config_error(with("img_type", json!("Xray"))).contains("img_type"));
    assert!(config_error(with("base_url", json!("ftp://x"))).contains("base_url"));
    assert!(config_error(with("base_url", json!("https://k:s@x/api"))).contains("credentials"));
    assert!(config_error(with("description", json!("{title} {patient}"))).contains("{patient}"));
    assert!(config_error(with("description", json!("{title"))).contains("not closed"));
    assert!(config_error(with("timeout_ms", json!(0))).contains("timeout_ms"));
}

#[test]
fn templates() {
    assert_eq!(
        parse_template("{{x}} {type}: {name} ({date}) {modality}").unwrap(),
        vec![
            Piece::Text("{x} ".into()),
            Piece::Type,
            Piece::Text(": ".into()),
            Piece::Name,
            Piece::Text(" (".into()),
            Piece::Date,
            Piece::Text(") ".into()),
            Piece::Modality
        ]
    );
    assert!(parse_template("a } b").is_err());
}

#[test]
fn descriptions() {
    let s = settings(json!({}));
    let lab = Facts::from_metadata(&md(&[
        ("document.title", "Blood\npanel"),
        ("document.type.display", "Laboratory report"),
        ("document.date", "2024-03-17T09:30:00+01:00"),
    ]));
    assert_eq!(description(&s, &lab, "lab.pdf", TAG), format!("Blood panel {TAG}"));
    // no title: the type, then the display name
    let typed = Facts { type_display: Some("Referral".into()), ..Facts::default() };
    assert_eq!(description(&s, &typed, "x.pdf", TAG), format!("Referral {TAG}"));
    let xray = Facts::from_metadata(&md(&[("modality", "PX"), ("study.date", "2024-01-31")]));
    assert_eq!(description(&s, &xray, "Pano  2024", TAG), format!("Pano 2024 {TAG}"));
    let s2 = settings(json!({ "description": "{type} {date} – {name}" }));
    assert_eq!(description(&s2, &xray, "pano.dcm", TAG), format!("PX 2024-01-31 – pano.dcm {TAG}"));
    // empty template result: the display name; nothing at all: "document"
    let s3 = settings(json!({ "description": "{modality}" }));
    assert_eq!(description(&s3, &Facts::default(), "a.pdf", TAG), format!("a.pdf {TAG}"));
    assert_eq!(description(&s3, &Facts::default(), " ", TAG), format!("document {TAG}"));
    // a replaced document says which
    let again = Facts::from_metadata(&md(&[(PREVIOUS_LOCATION, "opendental:Document/93")]));
    assert_eq!(description(&s, &again, "a.pdf", TAG), format!("a.pdf (replaces DocNum 93) {TAG}"));
    // long: cut, the suffix kept whole
    let long = Facts { title: Some("é".repeat(400)), replaces: Some(7), ..Facts::default() };
    let d = description(&s, &long, "a.pdf", TAG);
    assert_eq!(d.chars().count(), MAX_DESCRIPTION);
    assert!(d.ends_with(&format!("… (replaces DocNum 7) {TAG}")), "{d}");
}

#[test]
fn previous_locations() {
    assert_eq!(previous_doc_num(&md(&[(PREVIOUS_LOCATION, "opendental:Document/12")])), Some(12));
    for other in ["DocumentReference/12", "opendental:Document/", "opendental:Document/1x", "opendental:Document/0"] {
        assert_eq!(previous_doc_num(&md(&[(PREVIOUS_LOCATION, other)])), None, "{other}");
    }
}

#[test]
fn dates() {
    let d = |s: &str| date_created_of(s);
    assert_eq!(d("2024-03-17").as_deref(), Some("2024-03-17 00:00:00"));
    assert_eq!(d("2024-03-17T09:30").as_deref(), Some("2024-03-17 09:30:00"));
    assert_eq!(d("2024-03-17T09:30:15.250Z").as_deref(), Some("2024-03-17 09:30:15"));
    assert_eq!(d("2024-03-17T09:30:15-05:00").as_deref(), Some("2024-03-17 09:30:15"));
    assert_eq!(d("2024-03-17 23:59:60").as_deref(), Some("2024-03-17 23:59:59"));
    assert_eq!(d("2024-02-29").as_deref(), Some("2024-02-29 00:00:00"));
    for bad in ["2024", "2024-03", "2023-02-29", "2024-13-01", "2024-03-17T25:00", "17.03.2024", "20240317", ""] {
        assert_eq!(d(bad), None, "{bad}");
    }
    // document.date first, then the DICOM dates; unusable ones are skipped
    let f = Facts::from_metadata(&md(&[("document.date", "2024"), ("acquisition.date", "2023-05-02")]));
    assert_eq!(f.date_created.as_deref(), Some("2023-05-02 00:00:00"));
    let f = Facts::from_metadata(&md(&[("study.date", "2022-01-02"), ("acquisition.date", "2022-01-03")]));
    assert_eq!(f.date_created.as_deref(), Some("2022-01-03 00:00:00"));
}

#[test]
fn extensions() {
    assert_eq!(extension_of_name("0000_17.DCM").as_deref(), Some(".dcm"));
    assert_eq!(extension_of_name("dir/Letter.v2.pdf").as_deref(), Some(".pdf"));
    for none in ["Pano 2024", ".hidden", "scan.2024", "a.toolongextension", "a.b-c"] {
        assert_eq!(extension_of_name(none), None, "{none}");
    }
    assert_eq!(extension_of_content_type("application/pdf; charset=binary"), Some(".pdf"));
    assert_eq!(extension_of_content_type("application/x-unknown"), None);
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM");
    assert_eq!(extension_of_bytes(&dicom), Some(".dcm"));
    assert_eq!(extension_of_bytes(b"%PDF-1.7"), Some(".pdf"));
    assert_eq!(extension_of_bytes(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(".jpg"));
    assert_eq!(extension_of_bytes(b"hello"), None);

    let mut host = Fake { head: dicom, ..Fake::default() };
    let none = Facts::default();
    assert_eq!(extension(&mut host, &item("Pano 2024"), &none).unwrap(), ".dcm");
    let pdf = Facts { content_type: Some("application/pdf".into()), ..Facts::default() };
    assert_eq!(extension(&mut host, &item("Letter"), &pdf).unwrap(), ".pdf");
    let mut host = Fake { head: b"????".to_vec(), ..Fake::default() };
    let dicom_md = Facts { dicom: true, ..Facts::default() };
    assert_eq!(extension(&mut host, &item("Pano"), &dicom_md).unwrap(), ".dcm");
    let e = extension(&mut host, &item("Pano"), &none).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
}

#[test]
fn listings_stream_and_skip_mounts() {
    let body = json!([
        { "DocNum": 34, "Description": "Scanned image", "Note": "x".repeat(10_000) },
        { "DocNum": 0, "MountNum": 15, "Description": " 5/11/2021: 4BW" },
        { "DocNum": "35", "Description": null },
    ]);
    let (docs, rows) = parse_listing(Cursor::new(serde_json::to_vec(&body).unwrap())).unwrap();
    assert_eq!(rows, 3);
    assert_eq!(docs, vec![(34, "Scanned image".to_string()), (35, String::new())]);
    assert!(parse_listing(Cursor::new(b"{\"a\":1}".to_vec())).is_err());
    assert!(parse_listing(Cursor::new(b"[".to_vec())).is_err());
}

#[test]
fn explanations() {
    assert_eq!(explanation(b"\"PatNum is required\"").as_deref(), Some("PatNum is required"));
    assert_eq!(explanation(br#"{"Message":"bad"}"#).as_deref(), Some("bad"));
    assert_eq!(explanation(b"plain\r\ntext").as_deref(), Some("plain text"));
    assert_eq!(explanation(b"").as_deref(), None);
    let long = explanation(&serde_json::to_vec(&"x".repeat(500)).unwrap()).unwrap();
    assert_eq!(long.chars().count(), MAX_EXPLANATION + 1);

    let s = settings(json!({}));
    let kind = |status: u16, body: &[u8]| status_error(&s, status, body, "uploading").kind;
    assert_eq!(kind(401, b""), ErrorKind::Permanent);
    assert_eq!(kind(403, b""), ErrorKind::Permanent);
    assert_eq!(kind(404, b"\"Patient not found\""), ErrorKind::Permanent);
    assert_eq!(kind(400, b"\"DocCategory is invalid\""), ErrorKind::Permanent);
    assert_eq!(kind(400, b"\"The eConnector is not running\""), ErrorKind::Retryable);
    assert_eq!(kind(429, b""), ErrorKind::Retryable);
    assert_eq!(kind(500, b""), ErrorKind::Retryable);
    assert_eq!(kind(504, b""), ErrorKind::Retryable);
    assert_eq!(kind(410, b""), ErrorKind::Permanent);
    let m = status_error(&s, 401, b"", "uploading").message;
    assert!(m.contains("ODFHIR") && m.contains("grants.http_auth"), "{m}");
    let m = status_error(&s, 400, b"\"ImgType is invalid\"", "uploading").message;
    assert!(m.contains("ImgType is invalid"), "{m}");
}

#[test]
fn patnums() {
    assert_eq!(pat_num(" 15 ").unwrap(), 15);
    for bad in ["", "0", "P15", "1.5", "-3", "99999999999999999999"] {
        assert_eq!(pat_num(bad).unwrap_err().kind, ErrorKind::Permanent, "{bad}");
    }
}

#[test]
fn new_document_is_uploaded_without_retry() {
    let s = settings(json!({ "img_type": "Radiograph" }));
    let mut host = Fake::default();
    host.listings.push_back((200, listing(&[(3, "Other [ferry:ffffffffffff]")])));
    host.uploads.push_back(Ok((201, created(93))));
    let metadata = md(&[("modality", "IO"), ("acquisition.date", "2024-01-31"), ("document.title", "Bitewing")]);
    let stored = store_item(&s, &mut host, &item("0000_17.dcm"), &metadata, "15").unwrap();
    assert_eq!(stored, Stored { location: "opendental:Document/93".into(), outcome: StoreOutcome::Stored });
    assert_eq!(host.urls[0], "http://127.0.0.1:9/api/v1/documents?PatNum=15");
    assert_eq!(host.urls[1], "http://127.0.0.1:9/api/v1/documents/Upload");
    let (req, body) = &host.sent[0];
    assert_eq!(req.method, "POST");
    assert!(req.body.is_none());
    let (json, placeholder) = template_of(body);
    assert_eq!(
        json,
        json!({
            "PatNum": 15, "rawBase64": placeholder, "extension": ".dcm",
            "Description": format!("Bitewing {TAG}"), "DateCreated": "2024-01-31 00:00:00",
            "DocCategory": 190, "ImgType": "Radiograph",
        })
    );
    match body {
        FileBody::Base64(b) => {
            assert_eq!((b.file.root.as_str(), b.file.path.as_str()), ("pdata", "P_00001/0000_17.dcm"))
        }
        _ => unreachable!(),
    }
}

#[test]
fn tagged_document_is_unchanged_and_every_page_is_read() {
    let s = settings(json!({}));
    let mut host = Fake::default();
    let page1: Vec<(u64, String)> = (1..=100).map(|n| (n, format!("doc {n}"))).collect();
    let page1: Vec<(u64, &str)> = page1.iter().map(|(n, d)| (*n, d.as_str())).collect();
    host.listings.push_back((200, listing(&page1)));
    host.listings.push_back((200, listing(&[(101, &format!("X-ray {TAG}"))])));
    let stored = store_item(&s, &mut host, &item("a.dcm"), &vec![], "15").unwrap();
    assert_eq!(stored, Stored { location: "opendental:Document/101".into(), outcome: StoreOutcome::Unchanged });
    assert_eq!(host.urls[1], "http://127.0.0.1:9/api/v1/documents?PatNum=15&Offset=100");
    assert!(host.sent.is_empty());
}

#[test]
fn failures() {
    let s = settings(json!({}));
    // bad guid: nothing is sent
    let mut host = Fake::default();
    assert_eq!(store_item(&s, &mut host, &item("a.pdf"), &vec![], "abc").unwrap_err().kind, ErrorKind::Permanent);
    assert!(host.urls.is_empty());

    // unknown patient on the listing
    host.listings.push_back((404, b"\"Patient not found\"".to_vec()));
    let e = store_item(&s, &mut host, &item("a.pdf"), &vec![], "15").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("Patient not found") && e.message.contains("PatNum 15"), "{}", e.message);

    // the upload's answer lost: retryable, and the next attempt finds it
    host.listings.push_back((200, listing(&[])));
    host.uploads.push_back(Err(HostError::Unavailable("timed out".into())));
    let e = store_item(&s, &mut host, &item("a.pdf"), &vec![], "15").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Retryable);
    host.listings.push_back((200, listing(&[(7, &format!("a.pdf {TAG}"))])));
    let stored = store_item(&s, &mut host, &item("a.pdf"), &vec![], "15").unwrap();
    assert_eq!(stored.outcome, StoreOutcome::Unchanged);
    assert_eq!(host.sent.len(), 1, "no second upload");

    // a validation error is permanent and quotes the API
    host.listings.push_back((200, listing(&[])));
    host.uploads.push_back(Ok((400, b"\"DocCategory is invalid.\"".to_vec())));
    let e = store_item(&s, &mut host, &item("a.pdf"), &vec![], "15").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("DocCategory is invalid."), "{}", e.message);

    // throttled, busy: retryable
    host.listings.push_back((429, Vec::new()));
    assert_eq!(store_item(&s, &mut host, &item("a.pdf"), &vec![], "15").unwrap_err().kind, ErrorKind::Retryable);
    // a 201 without a DocNum
    host.listings.push_back((200, listing(&[])));
    host.uploads.push_back(Ok((201, b"{}".to_vec())));
    assert_eq!(store_item(&s, &mut host, &item("a.pdf"), &vec![], "15").unwrap_err().kind, ErrorKind::Retryable);
    // not JSON
    host.listings.push_back((200, b"<html>".to_vec()));
    assert_eq!(store_item(&s, &mut host, &item("a.pdf"), &vec![], "15").unwrap_err().kind, ErrorKind::Retryable);
}

#[test]
fn tags() {
    assert_eq!(tag(SHA).unwrap(), TAG);
    assert_eq!(tag(&SHA.to_uppercase()).unwrap(), TAG);
    assert!(tag("xyz").is_err());
}

#[test]
fn body_limit() {
    assert!(check_body_size(12_000_000, 300).is_ok());
    let e = check_body_size(12_600_000, 300).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("UploadSftp"), "{}", e.message);
    // nothing is uploaded for a too-large item
    let s = settings(json!({}));
    let mut host = Fake::default();
    host.listings.push_back((200, listing(&[])));
    let mut big = item("a.dcm");
    big.size = 13 << 20;
    assert_eq!(store_item(&s, &mut host, &big, &vec![], "15").unwrap_err().kind, ErrorKind::Permanent);
    assert!(host.sent.is_empty());
}
