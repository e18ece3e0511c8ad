use std::collections::VecDeque;

use super::*;
use ferry_plugin_sdk::types::ErrorKind;

const TOKEN: &str = "s3cr3t-token-value";

fn settings(extra: Value) -> Settings {
    let mut c = json!({ "base_url": "http://127.0.0.1:8080/fhir/", "token": TOKEN });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    Settings::new(serde_json::from_value(c).unwrap()).unwrap()
}

fn config_error(c: Value) -> String {
    let config: Result<Config, _> = serde_json::from_value(c);
    match config {
        Err(e) => e.to_string(),
        Ok(c) => Settings::new(c).err().expect("refused").message,
    }
}

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs.iter().map(|(k, v)| (k.to_string(), MetaValue::Text(v.to_string()))).collect()
}

fn lab_facts() -> Metadata {
    md(&[
        ("document.content-type", "application/pdf"),
        ("document.type.system", "http://loinc.org"),
        ("document.type.code", "11502-2"),
        ("document.type.display", "Laboratory report"),
        ("document.date", "2024-03-17"),
        ("document.title", "Blood panel"),
        ("document.author", "Labor Dr. Schmidt"),
    ])
}

#[test]
fn settings_defaults_and_refusals() {
    let s = settings(json!({}));
    assert_eq!(s.base_url, "http://127.0.0.1:8080/fhir");
    assert_eq!(s.api, "127.0.0.1:8080");
    assert_eq!(s.binary_threshold, DEFAULT_BINARY_THRESHOLD);
    assert_eq!(s.identifier_system, "urn:ferry:doc");
    assert!(!s.describe().contains(TOKEN));
    assert_eq!(s.identifier_query("ab12"), "identifier=urn%3Aferry%3Adoc|ab12");

    let e = config_error(json!({ "base_url": "http://x/fhir", "token": "t", "tokn": "x" }));
    assert!(e.contains("unknown field `tokn`"), "{e}");
    let e = config_error(json!({ "base_url": "ftp://x/fhir", "token": "t" }));
    assert!(e.contains("base_url"), "{e}");
    let e = config_error(json!({ "base_url": "http://x/fhir", "token": "  " }));
    assert!(e.contains("token") && e.contains("FHIR_TOKEN"), "{e}");
    let e = config_error(json!({ "base_url": "http://x/fhir", "token": "abc\ndef-secret" }));
    assert!(e.contains("token") && !e.contains("def-secret"), "{e}");
    let e = config_error(json!({ "base_url": "http://x/fhir", "token": "t", "binary_threshold": 1u64 << 40 }));
    assert!(e.contains("binary_threshold"), "{e}");
    let e = config_error(json!({ "base_url": "http://x/fhir", "token": "t", "identifier_system": "a|b" }));
    assert!(e.contains("identifier_system"), "{e}");
    let e = config_error(json!({ "base_url": "http://x/fhir", "token": "t", "timeout_ms": 0 }));
    assert!(e.contains("timeout_ms"), "{e}");
    let debug = format!("{:?}", serde_json::from_value::<Config>(json!({"base_url": "http://x", "token": TOKEN})));
    assert!(!debug.contains(TOKEN), "{debug}");
}

#[test]
fn dates_go_where_r4_allows_them() {
    assert_eq!(classify_date("2024-03-18T10:15:00+01:00"), DocDate::Instant("2024-03-18T10:15:00+01:00".into()));
    assert_eq!(classify_date("2024-03-18T10:15+01:00"), DocDate::Instant("2024-03-18T10:15:00+01:00".into()));
    assert_eq!(classify_date("2024-03-18T10:15:07.123Z"), DocDate::Instant("2024-03-18T10:15:07.123Z".into()));
    assert_eq!(classify_date("2024-03-18T10:15:07-0500"), DocDate::Instant("2024-03-18T10:15:07-05:00".into()));
    assert_eq!(classify_date("2024-03-17"), DocDate::Period("2024-03-17".into()));
    assert_eq!(classify_date("2024-03"), DocDate::Period("2024-03".into()));
    assert_eq!(classify_date("2024"), DocDate::Period("2024".into()));
    // a time without a zone is no instant, and a dateTime with a time needs a zone
    assert_eq!(classify_date("2024-03-18T10:15:00"), DocDate::Period("2024-03-18".into()));
    for bad in ["17.03.2024", "2024-13-01", "2024-03-18T25:00Z", "2024-03-18T10Z", "yesterday", "2024-03-18T10:15+1"] {
        assert_eq!(classify_date(bad), DocDate::Unusable, "{bad}");
    }
}

fn doc_json(metadata: &Metadata, payload: &Payload) -> Value {
    let facts = Facts::from_metadata(metadata);
    Document {
        facts: &facts,
        patient: "pat-1",
        display_name: "blood-panel.pdf",
        identifier_system: "urn:ferry:doc",
        sha256: "abc123",
        sha1_base64: "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        size: 42,
    }
    .to_json(payload)
}

#[test]
fn the_document_reference_from_metadata() {
    let d = doc_json(&lab_facts(), &Payload::Inline("@P@".into()));
    assert_eq!(
        d,
        json!({
            "resourceType": "DocumentReference",
            "identifier": [{ "system": "urn:ferry:doc", "value": "abc123" }],
            "status": "current",
            "type": {
                "coding": [{ "system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report" }],
                "text": "Laboratory report"
            },
            "subject": { "reference": "Patient/pat-1" },
            "author": [{ "display": "Labor Dr. Schmidt" }],
            "description": "Blood panel",
            "content": [{ "attachment": {
                "contentType": "application/pdf",
                "data": "@P@",
                "size": 42,
                "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
                "title": "blood-panel.pdf"
            }}],
            "context": { "period": { "start": "2024-03-17" } }
        })
    );

    let mut m = lab_facts();
    m.retain(|(k, _)| k != "document.date");
    m.push(("document.date".into(), MetaValue::Text("2024-03-18T10:15:00+01:00".into())));
    let d = doc_json(&m, &Payload::Binary("b1".into()));
    assert_eq!(d["date"], "2024-03-18T10:15:00+01:00");
    assert!(d.get("context").is_none(), "{d:#}");
    assert_eq!(d["content"][0]["attachment"]["url"], "Binary/b1");
    assert!(d["content"][0]["attachment"].get("data").is_none());
}

#[test]
fn missing_facts_are_left_out_or_defaulted() {
    let d = doc_json(&md(&[("document.date", "not a date"), ("document.title", "  ")]), &Payload::Inline("@".into()));
    for absent in ["type", "date", "context", "author"] {
        assert!(d.get(absent).is_none(), "{absent}: {d:#}");
    }
    assert_eq!(d["description"], "blood-panel.pdf", "no title: the display name");
    assert_eq!(d["content"][0]["attachment"]["contentType"], "application/pdf", "from the extension");
    // a code without system or display
    let d = doc_json(&md(&[("document.type.code", "X1")]), &Payload::Inline("@".into()));
    assert_eq!(d["type"], json!({ "coding": [{ "code": "X1" }] }));
    assert_eq!(content_type_of("scan.JPG"), "image/jpeg");
    assert_eq!(content_type_of("noext"), "application/octet-stream");
}

#[test]
fn the_placeholder_never_collides() {
    let json = r#"{"description":"@ferry-file-base64-0@"}"#;
    assert_eq!(placeholder_for(json), "@ferry-file-base64-1@");
    assert_eq!(placeholder_for("{}"), "@ferry-file-base64-0@");
}

#[test]
fn sha1_is_streamed_and_base64() {
    // SHA-1("") and SHA-1("abc"), base64
    assert_eq!(sha1_base64(&b""[..]).unwrap(), ("2jmj7l5rSw0yVb/vlWAYkK/YBwk=".to_string(), 0));
    assert_eq!(sha1_base64(&b"abc"[..]).unwrap().0, "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
    // larger than a chunk: same as hashing at once
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let whole: [u8; 20] = Sha1::digest(&big).into();
    assert_eq!(sha1_base64(&big[..]).unwrap(), (BASE64.encode(whole), 200_000));
}

#[test]
fn statuses_are_classified() {
    let s = settings(json!({}));
    let e = status_error(&s, 401, b"", "creating the DocumentReference");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("token") && !e.message.contains(TOKEN), "{}", e.message);
    assert_eq!(status_error(&s, 403, b"", "x").kind, ErrorKind::Permanent);
    for st in [408, 429, 500, 502, 503, 504] {
        assert_eq!(status_error(&s, st, b"", "x").kind, ErrorKind::Retryable, "{st}");
    }
    let e = status_error(&s, 412, b"", "creating the DocumentReference");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("a person must merge them"), "{}", e.message);
    let outcome = json!({ "resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "processing",
        "diagnostics": format!("Patient/x does not exist; token {TOKEN} {}", "y".repeat(1000)) }] });
    let e = status_error(&s, 422, outcome.to_string().as_bytes(), "creating the DocumentReference");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("422 Unprocessable Content") && e.message.contains("Patient/x does not exist"));
    assert!(!e.message.contains(TOKEN), "{}", e.message);
    assert!(e.message.len() < 600, "bounded: {}", e.message.len());
    let e = status_error(&s, 400, b"<html>nope</html>", "x");
    assert_eq!(e.kind, ErrorKind::Permanent);

    let e = host_error(&s, HostError::Unavailable(format!("connection refused ({TOKEN})")), "x");
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert!(!e.message.contains(TOKEN), "{}", e.message);
}

#[test]
fn searches_and_ids_are_read() {
    let bundle = |total: u64, ids: &[&str]| {
        let entry: Vec<Value> =
            ids.iter().map(|id| json!({ "resource": { "id": id }, "search": { "mode": "match" } })).collect();
        json!({ "resourceType": "Bundle", "type": "searchset", "total": total, "entry": entry }).to_string()
    };
    assert_eq!(parse_search(bundle(0, &[]).as_bytes()), Ok(Found::None));
    assert_eq!(parse_search(bundle(1, &["d1"]).as_bytes()), Ok(Found::One("d1".into())));
    assert_eq!(parse_search(bundle(3, &["d1", "d2"]).as_bytes()), Ok(Found::Several(3)));
    assert!(parse_search(b"{}").is_err());

    let r = Response {
        status: 201,
        headers: vec![("location".into(), "http://h/fhir/Binary/b7/_history/1".into())],
        body: vec![],
    };
    assert_eq!(created_id(&r, "Binary").as_deref(), Some("b7"));
    let r = Response { status: 200, headers: vec![], body: br#"{"id":"d9"}"#.to_vec() };
    assert_eq!(created_id(&r, "DocumentReference").as_deref(), Some("d9"));
}

/// A host that answers from a queue and records what it was asked.
#[derive(Default)]
struct Fake {
    answers: VecDeque<Response>,
    sent: Vec<(Request, Option<String>)>,
}

fn answer(status: u16, body: Value) -> Response {
    Response { status, headers: vec![], body: body.to_string().into_bytes() }
}

impl Host for Fake {
    fn send(&mut self, request: Request) -> Result<Response, HostError> {
        self.sent.push((request, None));
        Ok(self.answers.pop_front().expect("an answer queued"))
    }
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError> {
        let kind = match body {
            FileBody::Raw(_) => "raw".to_string(),
            FileBody::Base64(b) => {
                assert_eq!(b.template.matches(&b.placeholder).count(), 1);
                b.template.replace(&b.placeholder, "QUJD")
            }
            FileBody::Multipart(_) => "multipart".to_string(),
        };
        self.sent.push((request, Some(kind)));
        Ok(self.answers.pop_front().expect("an answer queued"))
    }
    fn sha256(&mut self, _: &FileRef) -> Result<String, HostError> {
        Ok("ff00".into())
    }
    fn sha1(&mut self, _: &FileRef) -> Result<(String, u64), StageError> {
        Ok(("qZk+NkcGgWq6PiVxeFDCbJzQ2J0=".into(), 3))
    }
}

fn item() -> Item {
    Item {
        id: "2024/blood-panel.pdf".into(),
        patient_keys: vec![],
        display_name: "blood-panel.pdf".into(),
        file: FileRef { root: "inbox".into(), path: "2024/blood-panel.pdf".into() },
        size: 3,
        attributes: vec![],
    }
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[test]
fn small_files_are_one_conditional_create() {
    let s = settings(json!({}));
    let mut host = Fake::default();
    host.answers.push_back(answer(201, json!({ "resourceType": "DocumentReference", "id": "d1" })));
    let stored = store_item(&s, &mut host, &item(), &lab_facts(), "pat-1").unwrap();
    assert_eq!(stored, Stored { location: "DocumentReference/d1".into(), outcome: StoreOutcome::Stored });
    assert_eq!(host.sent.len(), 1);
    let (r, body) = &host.sent[0];
    assert_eq!(
        (r.method.as_str(), r.url.as_str(), r.retry),
        ("POST", "http://127.0.0.1:8080/fhir/DocumentReference", true)
    );
    assert_eq!(header(r, "If-None-Exist"), Some("identifier=urn%3Aferry%3Adoc|ff00&subject=Patient%2Fpat-1"));
    assert_eq!(header(r, "Authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(header(r, "Content-Type"), Some("application/fhir+json"));
    let doc: Value = serde_json::from_str(body.as_deref().unwrap()).unwrap();
    assert_eq!(doc["content"][0]["attachment"]["data"], "QUJD");
    assert_eq!(doc["identifier"][0]["value"], "ff00");

    host.answers.push_back(answer(200, json!({ "resourceType": "DocumentReference", "id": "d1" })));
    let again = store_item(&s, &mut host, &item(), &lab_facts(), "pat-1").unwrap();
    assert_eq!(again.outcome, StoreOutcome::Unchanged);

    host.answers.push_back(answer(412, json!({ "resourceType": "OperationOutcome" })));
    let e = store_item(&s, &mut host, &item(), &lab_facts(), "pat-1").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("several DocumentReferences already carry this identifier"), "{}", e.message);
}

#[test]
fn large_files_look_first_then_upload_a_binary() {
    let s = settings(json!({ "binary_threshold": 2 }));
    let empty = json!({ "resourceType": "Bundle", "type": "searchset", "total": 0 });
    let mut host = Fake::default();
    host.answers.push_back(answer(200, empty));
    host.answers.push_back(answer(201, json!({ "resourceType": "Binary", "id": "b1" })));
    host.answers.push_back(answer(201, json!({ "resourceType": "DocumentReference", "id": "d2" })));
    let stored = store_item(&s, &mut host, &item(), &lab_facts(), "pat-1").unwrap();
    assert_eq!(stored, Stored { location: "DocumentReference/d2".into(), outcome: StoreOutcome::Stored });
    let [(search, _), (upload, raw), (create, _)] = host.sent.as_slice() else { panic!("3 requests") };
    assert_eq!(search.method, "GET");
    assert!(search.retry);
    assert!(
        search.url.ends_with("/DocumentReference?identifier=urn%3Aferry%3Adoc|ff00&subject=Patient%2Fpat-1&_count=2"),
        "{}",
        search.url
    );
    assert_eq!((upload.method.as_str(), upload.retry, raw.as_deref()), ("POST", false, Some("raw")));
    assert!(upload.url.ends_with("/Binary"));
    assert_eq!(header(upload, "Content-Type"), Some("application/pdf"));
    assert!(create.retry);
    let doc: Value = serde_json::from_slice(create.body.as_ref().unwrap()).unwrap();
    assert_eq!(doc["content"][0]["attachment"]["url"], "Binary/b1");

    // found: unchanged, no upload
    let mut host = Fake::default();
    let one = json!({ "resourceType": "Bundle", "total": 1, "entry": [{ "resource": { "id": "d2" } }] });
    host.answers.push_back(answer(200, one));
    let again = store_item(&s, &mut host, &item(), &lab_facts(), "pat-1").unwrap();
    assert_eq!(again, Stored { location: "DocumentReference/d2".into(), outcome: StoreOutcome::Unchanged });
    assert_eq!(host.sent.len(), 1);

    // a refused token on the search
    let mut host = Fake::default();
    host.answers.push_back(answer(401, json!({})));
    let e = store_item(&s, &mut host, &item(), &lab_facts(), "pat-1").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("token") && !e.message.contains(TOKEN), "{}", e.message);
}
