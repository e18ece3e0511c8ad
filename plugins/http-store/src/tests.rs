use std::collections::VecDeque;

use super::*;
use ferry_plugin_sdk::serde_json::json;
use ferry_plugin_sdk::types::ErrorKind;

const SHA: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";
const PATIENT: &str = "guid-7";

fn base() -> Value {
    json!({
        "base_url": "https://docs.example-pms.test/api/v2/",
        "create": {
            "path": "/patients/{patient}/documents",
            "body": { "kind": "multipart", "parts": [
                { "name": "file", "file": true },
                { "name": "title", "value": "{title}" },
                { "name": "note", "value": "[ferry:{sha12}]" }
            ] }
        }
    })
}

fn with(mut c: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn settings(c: Value) -> Settings {
    Settings::new(serde_json::from_value(c).unwrap()).unwrap()
}

fn config_error(c: Value) -> String {
    match parse_config::<Config>(&c.to_string()) {
        Err(e) => e.message,
        Ok(c) => Settings::new(c).expect_err("refused").message,
    }
}

fn parse_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StageError> {
    ferry_plugin_sdk::parse_config(json)
}

fn find_cfg() -> Value {
    json!({
        "path": "/patients/{patient}/documents?search={sha12}",
        "results_pointer": "/items",
        "match_pointer": "/note",
        "match": "[ferry:{sha12}]"
    })
}

fn update_cfg() -> Value {
    json!({
        "path": "/documents/{remote_id}/file",
        "body": { "kind": "json", "template": "{\"name\": \"{title}\", \"note\": \"[ferry:{sha12}]\", \"data\": \"@FILE@\"}" }
    })
}

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs.iter().map(|(k, v)| (k.to_string(), MetaValue::Text(v.to_string()))).collect()
}

fn facts() -> Metadata {
    md(&[
        ("document.content-type", "application/pdf"),
        ("document.type.code", "11502-2"),
        ("document.type.display", "Laboratory report"),
        ("document.date", "2024-03-17"),
        ("document.title", "Blood panel \"Müller\"\nline 2 ✓"),
        ("document.author", "Labor Dr. Schmidt"),
    ])
}

fn item() -> Item {
    Item {
        id: "2024/blood-panel.pdf".into(),
        patient_keys: vec![],
        display_name: "scans/blood-panel.pdf".into(),
        file: FileRef { root: "inbox".into(), path: "2024/blood-panel.pdf".into() },
        size: 3,
        attributes: vec![],
    }
}

#[derive(Default)]
struct Fake {
    sent: Vec<(Request, Option<FileBody>)>,
    answers: VecDeque<Result<Response, HostError>>,
}

impl Fake {
    fn answer(mut self, status: u16, body: Value) -> Self {
        let body = if body.is_null() { vec![] } else { body.to_string().into_bytes() };
        self.answers.push_back(Ok(Response { status, headers: vec![], body }));
        self
    }
    fn answer_raw(mut self, r: Result<Response, HostError>) -> Self {
        self.answers.push_back(r);
        self
    }
}

impl Transport for Fake {
    fn send(&mut self, request: Request) -> Result<Response, HostError> {
        self.sent.push((request, None));
        self.answers.pop_front().expect("an answer queued")
    }
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError> {
        assert!(request.body.is_none());
        self.sent.push((request, Some(body)));
        self.answers.pop_front().expect("an answer queued")
    }
    fn sha256(&mut self, _: &FileRef) -> Result<String, HostError> {
        Ok(SHA.into())
    }
    fn size(&mut self, _: &FileRef) -> Result<u64, HostError> {
        Ok(3)
    }
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn run(s: &Settings, fake: &mut Fake, metadata: &Metadata) -> Result<Stored, StageError> {
    store_item(s, fake, &item(), metadata, PATIENT)
}

// ---------------------------------------------------------------- config

#[test]
fn defaults() {
    let s = settings(base());
    assert_eq!(s.base_url, "https://docs.example-pms.test/api/v2");
    assert_eq!(s.api, "docs.example-pms.test");
    assert_eq!(s.timeout_ms, DEFAULT_TIMEOUT_MS);
    assert_eq!(s.create.method, "POST");
    assert_eq!(s.create.id_pointer.as_deref(), Some("/id"));
    assert_eq!(s.create.success, vec![200, 201]);
    assert!(s.update.is_none() && s.find.is_none());
    let s = settings(with(base(), json!({ "update": update_cfg(), "find": find_cfg() })));
    let u = s.update.as_ref().unwrap();
    assert_eq!((u.method.as_str(), u.id_pointer.as_deref()), ("PUT", None));
    assert_eq!(u.success, vec![200, 201, 204]);
    let f = s.find.as_ref().unwrap();
    assert_eq!((f.id_pointer.as_str(), f.success.clone(), f.not_found_status.clone()), ("/id", vec![200], vec![404]));
    assert!(s.describe().contains("find GET /patients/{patient}"), "{}", s.describe());
}

#[test]
fn toml_example_of_the_docs_parses() {
    // the same shape as the crate docs' example, written as the host hands it over (JSON)
    let c = json!({
        "base_url": "https://docs.example-pms.test/api/v2",
        "create": {
            "method": "POST",
            "path": "/patients/{patient}/documents",
            "body": { "kind": "multipart", "parts": [
                { "name": "file", "file": true },
                { "name": "title", "value": "{title}" },
                { "name": "note", "value": "[ferry:{sha12}]" }
            ] },
            "id_pointer": "/id",
            "success": [200, 201]
        },
        "update": {
            "method": "PUT",
            "path": "/documents/{remote_id}/file",
            "body": { "kind": "json", "template": "{\"name\": \"{title}\", \"note\": \"[ferry:{sha12}]\", \"data\": \"@FILE@\"}" }
        },
        "find": {
            "path": "/patients/{patient}/documents?search={sha12}",
            "results_pointer": "/items",
            "match_pointer": "/note",
            "match": "[ferry:{sha12}]",
            "id_pointer": "/id"
        }
    });
    settings(c);
}

#[test]
fn refusals_name_the_key() {
    let cases: Vec<(Value, &[&str])> = vec![
        (with(base(), json!({ "base_urll": "x" })), &["unknown field `base_urll`"]),
        (with(base(), json!({ "base_url": "ftp://x" })), &["base_url", "http://"]),
        (with(base(), json!({ "base_url": "https://x/api?key=1" })), &["base_url", "query"]),
        (with(base(), json!({ "base_url": "https://u:p@x/api" })), &["base_url", "grants.http_auth"]),
        (with(base(), json!({ "base_url": "https://x/{patient}" })), &["base_url", "placeholders"]),
        (with(base(), json!({ "timeout_ms": 0 })), &["timeout_ms"]),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "xml" } } }),
            &["unknown variant `xml`"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "raw", "mime": "a/b" } } }),
            &["unknown field `mime`"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "d", "body": { "kind": "raw" } } }),
            &["create.path", "start with `/`"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "//evil.test/d", "body": { "kind": "raw" } } }),
            &["create.path", "//"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/a/../admin", "body": { "kind": "raw" } } }),
            &["create.path", ".."],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/a\\b", "body": { "kind": "raw" } } }),
            &["create.path", "backslash"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d/{titel}", "body": { "kind": "raw" } } }),
            &["create.path", "unknown placeholder {titel}", "{title}"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d/{remote_id}", "body": { "kind": "raw" } } }),
            &["create.path", "only known in update"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d/{}", "body": { "kind": "raw" } } }),
            &["create.path", "%7B"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "method": "DELETE", "body": { "kind": "raw" } } }),
            &["create.method"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "success": [404], "body": { "kind": "raw" } } }),
            &["create.success", "404"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "id_pointer": "id", "body": { "kind": "raw" } } }),
            &["create.id_pointer", "JSON pointer"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "id_pointer": "/a~2", "body": { "kind": "raw" } } }),
            &["create.id_pointer", "~"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "json", "template": "{\"a\": 1}" } } }),
            &["create.body.template", "@FILE@", "exactly once"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "json", "template": "{\"a\": \"@FILE@\", \"b\": \"@FILE@\"}" } } }),
            &["create.body.template", "found 2 times"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "json", "template": "{\"a\": {title}, \"d\": \"@FILE@\"}" } } }),
            &["create.body.template", "not valid JSON", "in quotes"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "json", "template": "{\"d\": @FILE@}" } } }),
            &["create.body.template", "not valid JSON"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "json", "file_placeholder": "{x}", "template": "{}" } } }),
            &["create.body.file_placeholder"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": [] } } }),
            &["create.body.parts"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": [{ "name": "t", "value": "x" }] } } }),
            &["create.body.parts", "exactly one", "found 0"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": [{ "name": "a", "file": true }, { "name": "b", "file": true }] } } }),
            &["found 2"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": [{ "name": "a\"b", "file": true }] } } }),
            &["create.body.parts[0].name"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": [{ "name": "a", "file": true, "value": "x" }] } } }),
            &["create.body.parts[0]", "both"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": [{ "name": "a" }] } } }),
            &["create.body.parts[0]", "needs a value"],
        ),
        (
            json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": [{ "name": "a", "file": true, "filename": "{nope}" }] } } }),
            &["create.body.parts[0].filename", "unknown placeholder"],
        ),
        (
            with(base(), json!({ "update": { "path": "/documents/1", "body": { "kind": "raw" } } })),
            &["update", "{remote_id}"],
        ),
        (
            with(
                base(),
                json!({ "find": { "path": "/documents?tag={sha12}", "match_pointer": "/note", "match": "[ferry:{sha12}]" } }),
            ),
            &["find", "{patient}", "patient_pointer"],
        ),
        (
            with(
                base(),
                json!({ "find": { "path": "/p/{patient}/documents", "match_pointer": "/note", "match": "{item_id}" } }),
            ),
            &["find.match", "{sha256} or {sha12}"],
        ),
        // create sends {sha12}, not {sha256}: find would never match
        (
            with(base(), json!({ "find": { "path": "/p/{patient}/documents", "match_pointer": "/note" } })),
            &["find.match", "{sha256}", "create never sends it"],
        ),
        (
            with(base(), json!({ "find": with(find_cfg(), json!({ "not_found_status": [401] })) })),
            &["find.not_found_status", "401"],
        ),
        (with(base(), json!({ "find": with(find_cfg(), json!({ "method": "POST" })) })), &["unknown field `method`"]),
        // update must carry the tag too when find is on
        (
            with(
                base(),
                json!({ "find": find_cfg(), "update": { "path": "/d/{remote_id}", "body": { "kind": "raw" } } }),
            ),
            &["find.match", "update never sends it"],
        ),
    ];
    for (c, wants) in cases {
        let e = config_error(c.clone());
        for w in wants {
            assert!(e.contains(w), "{c}\n→ {e}\n(wanted {w:?})");
        }
    }
}

#[test]
fn authorization_and_secret_headers_are_refused() {
    for name in [
        "Authorization",
        "authorization",
        "Proxy-Authorization",
        "Cookie",
        "X-Api-Key",
        "X-Auth-Token",
        "cp-api-key",
        "Client-Secret",
    ] {
        let c = with(base(), json!({ "headers": { name: "Bearer s3cr3t-value" } }));
        let e = config_error(c);
        assert!(e.contains("grants.http_auth") && e.contains(name), "{name}: {e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let mut c = base();
        c["create"]["headers"] = json!({ name: "s3cr3t-value" });
        let e = config_error(c);
        assert!(e.contains("create.headers") && e.contains("grants.http_auth") && !e.contains("s3cr3t"), "{e}");
    }
    for name in ["Content-Type", "Content-Length", "Host"] {
        let e = config_error(with(base(), json!({ "headers": { name: "x" } })));
        assert!(e.contains("set by the host or the body"), "{e}");
    }
    let e = config_error(with(base(), json!({ "headers": { "X-A": "a\r\nX-B: b" } })));
    assert!(e.contains("line break"), "{e}");
    let e = config_error(with(base(), json!({ "headers": { "Bad Name": "a" } })));
    assert!(e.contains("not a valid header name"), "{e}");
    // a non-secret header, with placeholders, is fine
    settings(with(base(), json!({ "headers": { "Idempotency-Key": "{sha256}", "X-Title": "{title}" } })));
}

#[test]
fn bounds() {
    let long = format!("/{}", "a".repeat(MAX_PATH));
    let e = config_error(json!({ "base_url": "https://x", "create": { "path": long, "body": { "kind": "raw" } } }));
    assert!(e.contains("create.path") && e.contains("longer"), "{e}");
    let big = format!("{{\"d\": \"@FILE@\", \"x\": \"{}\"}}", "a".repeat(MAX_TEMPLATE));
    let e = config_error(
        json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "json", "template": big } } }),
    );
    assert!(e.contains("create.body.template") && e.contains("longer"), "{e}");
    let many: serde_json::Map<String, Value> = (0..MAX_HEADERS).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    let e = config_error(with(base(), json!({ "headers": many })));
    assert!(e.contains("headers") && e.contains("more than"), "{e}");
    let some: serde_json::Map<String, Value> = (0..20).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    let mut c = with(base(), json!({ "headers": some.clone() }));
    c["create"]["headers"] = Value::Object(some);
    let e = config_error(c);
    assert!(e.contains("create.headers") && e.contains("with the shared ones"), "{e}");
    let parts: Vec<Value> = (0..=MAX_PARTS).map(|i| json!({ "name": format!("p{i}"), "value": "x" })).collect();
    let e = config_error(
        json!({ "base_url": "https://x", "create": { "path": "/d", "body": { "kind": "multipart", "parts": parts } } }),
    );
    assert!(e.contains("create.body.parts"), "{e}");
    let e = config_error(
        json!({ "base_url": "https://x", "create": { "path": "/d", "id_pointer": format!("/{}", "a".repeat(300)), "body": { "kind": "raw" } } }),
    );
    assert!(e.contains("create.id_pointer") && e.contains("longer"), "{e}");
    let e = config_error(with(base(), json!({ "timeout_ms": MAX_TIMEOUT_MS + 1 })));
    assert!(e.contains("timeout_ms"), "{e}");
}

// ------------------------------------------------------------- templates

#[test]
fn placeholders_are_found_and_json_braces_are_literal() {
    let t = r#"{"a": {"b": "{title}"}, "c": {}, "d": "{Title}{x-y}{size}"}"#;
    let names: Vec<&str> = placeholders(t).map(|(_, _, n)| n).collect();
    assert_eq!(names, vec!["title", "size"]);
    assert!(placeholders("{1a}{_a}").next().is_none());
}

#[test]
fn json_templates_stay_valid_with_awkward_titles() {
    let mut c = base();
    c["create"]["body"] = json!({ "kind": "json", "template": "{\"name\": \"{title}\", \"by\": \"{author}\", \"size\": {size}, \"data\": \"@FILE@\"}" });
    let s = settings(c);
    let metadata = facts();
    let doc = Doc::new(&item(), &metadata, PATIENT, SHA, 3);
    let (request, body) = s.build(&s.create, &doc, &item().file).unwrap();
    assert_eq!(header(&request, "content-type"), Some("application/json"));
    assert!(!request.retry, "create is not idempotent");
    let FileBody::Base64(b) = body else { panic!("base64 body") };
    assert_eq!(b.template.matches(&b.placeholder).count(), 1);
    assert_eq!(b.file.path, item().file.path);
    let v: Value = serde_json::from_str(&b.template.replace(&b.placeholder, "QUJD")).unwrap();
    assert_eq!(v["name"], "Blood panel \"Müller\"\nline 2 ✓");
    assert_eq!(v["size"], 3);
    assert_eq!(v["data"], "QUJD");
}

#[test]
fn a_title_holding_the_file_placeholder_does_not_break_the_body() {
    let mut c = base();
    c["create"]["body"] = json!({ "kind": "json", "template": "{\"name\": \"{title}\", \"data\": \"@FILE@\"}" });
    let s = settings(c);
    let metadata = md(&[("document.title", "@FILE@ @ferry-file-0@")]);
    let doc = Doc::new(&item(), &metadata, PATIENT, SHA, 3);
    let (_, body) = s.build(&s.create, &doc, &item().file).unwrap();
    let FileBody::Base64(b) = body else { panic!() };
    assert_eq!(b.template.matches(&b.placeholder).count(), 1, "{}", b.template);
    let v: Value = serde_json::from_str(&b.template.replace(&b.placeholder, "QUJD")).unwrap();
    assert_eq!(v["name"], "@FILE@ @ferry-file-0@");
    assert_eq!(v["data"], "QUJD");
}

#[test]
fn path_values_are_encoded_and_stay_on_the_host() {
    let mut c = base();
    c["create"]["path"] = json!("/patients/{patient}/documents?title={title}&kind={type_code}");
    let s = settings(c);
    let metadata = md(&[("document.title", "a/b?c=d&e#f"), ("document.type.code", "..")]);
    let doc = Doc::new(&item(), &metadata, "../../admin@evil.test/x?y", SHA, 3);
    let url = s.url("create", &s.create.path, &doc).unwrap();
    assert_eq!(
        url,
        "https://docs.example-pms.test/api/v2/patients/..%2F..%2Fadmin%40evil.test%2Fx%3Fy/documents?title=a%2Fb%3Fc%3Dd%26e%23f&kind=%2E%2E"
    );
    let doc = Doc::new(&item(), &md(&[]), "..", SHA, 3);
    let url = s.url("create", &s.create.path, &doc).unwrap();
    assert!(url.starts_with("https://docs.example-pms.test/api/v2/patients/%2E%2E/documents"), "{url}");
    // too long for this item: refused, naming the key
    let doc = Doc::new(&item(), &md(&[("document.title", &"t".repeat(MAX_URL))]), PATIENT, SHA, 3);
    let e = s.url("create", &s.create.path, &doc).unwrap_err();
    assert!(e.message.contains("create.path") && e.kind == ErrorKind::Permanent, "{}", e.message);
}

#[test]
fn headers_and_multipart_parts() {
    let mut c = with(base(), json!({ "headers": { "X-Title": "{title}", "X-Tag": "ferry-{sha12}" } }));
    c["create"]["body"]["parts"][0] = json!({ "name": "file", "file": true, "filename": "{title}.pdf" });
    let s = settings(c);
    let metadata = facts();
    let doc = Doc::new(&item(), &metadata, PATIENT, SHA, 3);
    let (request, body) = s.build(&s.create, &doc, &item().file).unwrap();
    assert_eq!(request.url, "https://docs.example-pms.test/api/v2/patients/guid-7/documents");
    assert_eq!(request.method, "POST");
    assert_eq!(header(&request, "x-title"), Some("Blood panel \"M%C3%BCller\" line 2 %E2%9C%93"));
    assert_eq!(header(&request, "x-tag"), Some("ferry-ab12cd34ef56"));
    assert_eq!(header(&request, "accept"), Some("application/json"));
    assert_eq!(header(&request, "content-type"), None, "the host sets multipart/form-data");
    assert_eq!(request.timeout_ms, Some(DEFAULT_TIMEOUT_MS));
    let FileBody::Multipart(parts) = body else { panic!("multipart") };
    assert_eq!(parts.len(), 3);
    let PartValue::File(f) = &parts[0].value else { panic!("file part first") };
    assert_eq!(f.filename, "Blood panel _Müller__line 2 ✓.pdf");
    assert_eq!(f.content_type, "application/pdf");
    assert_eq!(f.file.path, item().file.path);
    let PartValue::Text(t) = &parts[1].value else { panic!() };
    assert_eq!(t, "Blood panel \"Müller\"\nline 2 ✓");
    let PartValue::Text(t) = &parts[2].value else { panic!() };
    assert_eq!(t, "[ferry:ab12cd34ef56]");
}

#[test]
fn raw_bodies_and_document_facts() {
    let mut c = base();
    c["create"]["body"] = json!({ "kind": "raw" });
    c["create"]["path"] =
        json!("/files?name={file_name}&date={date}&type={type_display}&by={author}&item={item_id}&n={size}&s={sha256}");
    let s = settings(c);
    let doc = Doc::new(&item(), &md(&[]), PATIENT, SHA, 3);
    assert_eq!(doc.title, "scans/blood-panel.pdf");
    assert_eq!(doc.file_name, "blood-panel.pdf");
    assert_eq!(doc.content_type, "application/pdf", "from the extension");
    let (request, body) = s.build(&s.create, &doc, &item().file).unwrap();
    assert!(matches!(body, FileBody::Raw(ref f) if f.path == item().file.path));
    assert_eq!(header(&request, "content-type"), Some("application/pdf"));
    assert!(
        request
            .url
            .ends_with(&format!("/files?name=blood-panel.pdf&date=&type=&by=&item=2024%2Fblood-panel.pdf&n=3&s={SHA}")),
        "{}",
        request.url
    );
    let metadata = facts();
    let doc = Doc::new(&item(), &metadata, PATIENT, SHA, 3);
    let (request, _) = s.build(&s.create, &doc, &item().file).unwrap();
    assert!(
        request.url.contains("date=2024-03-17&type=Laboratory%20report&by=Labor%20Dr.%20Schmidt"),
        "{}",
        request.url
    );
    // a content type the host would refuse falls back to the extension
    let doc = Doc::new(&item(), &md(&[("document.content-type", "text/\"x\"")]), PATIENT, SHA, 3);
    assert_eq!(doc.content_type, "application/pdf");
}

// ------------------------------------------------------------------ flow

#[test]
fn create_records_the_remote_id() {
    let s = settings(base());
    let mut fake = Fake::default().answer(201, json!({ "id": 8812, "name": "x" }));
    let stored = run(&s, &mut fake, &facts()).unwrap();
    assert_eq!(stored, Stored { location: "http-store:8812".into(), outcome: StoreOutcome::Stored });
    assert_eq!(fake.sent.len(), 1);
    let (r, body) = &fake.sent[0];
    assert!(!r.retry && r.method == "POST" && matches!(body, Some(FileBody::Multipart(_))));
}

#[test]
fn the_id_comes_from_the_pointer_or_location() {
    let mut c = base();
    c["create"]["id_pointer"] = json!("/data/document~1id");
    let s = settings(c);
    let mut fake = Fake::default().answer(200, json!({ "data": { "document/id": "d-1" } }));
    assert_eq!(run(&s, &mut fake, &facts()).unwrap().location, "http-store:d-1");
    let mut fake = Fake::default().answer_raw(Ok(Response {
        status: 201,
        headers: vec![("Location".into(), "https://docs.example-pms.test/api/v2/documents/77?v=1".into())],
        body: vec![],
    }));
    assert_eq!(run(&s, &mut fake, &facts()).unwrap().location, "http-store:77");
    let mut fake = Fake::default().answer(201, json!({ "ok": true }));
    let e = run(&s, &mut fake, &facts()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("create.id_pointer") && e.message.contains("configure find"), "{}", e.message);
}

#[test]
fn find_a_copy_is_unchanged_and_nothing_is_uploaded() {
    let s = settings(with(base(), json!({ "find": find_cfg() })));
    let mut fake = Fake::default().answer(
        200,
        json!({ "items": [
            { "id": 1, "note": "[ferry:000000000000]" },
            { "id": 2, "note": "scan [ferry:ab12cd34ef56]" }
        ] }),
    );
    let stored = run(&s, &mut fake, &facts()).unwrap();
    assert_eq!(stored, Stored { location: "http-store:2".into(), outcome: StoreOutcome::Unchanged });
    assert_eq!(fake.sent.len(), 1);
    let (r, body) = &fake.sent[0];
    assert!(r.retry && r.method == "GET" && body.is_none());
    assert_eq!(r.url, "https://docs.example-pms.test/api/v2/patients/guid-7/documents?search=ab12cd34ef56");
}

#[test]
fn find_nothing_then_create() {
    let s = settings(with(base(), json!({ "find": find_cfg() })));
    for first in
        [(200, json!({ "items": [{ "id": 1, "note": "other" }] })), (200, json!({ "items": null })), (404, json!({}))]
    {
        let mut fake = Fake::default().answer(first.0, first.1).answer(201, json!({ "id": "n" }));
        let stored = run(&s, &mut fake, &facts()).unwrap();
        assert_eq!(stored, Stored { location: "http-store:n".into(), outcome: StoreOutcome::Stored });
        assert_eq!(fake.sent.len(), 2);
    }
}

#[test]
fn find_checks_the_patient_when_asked() {
    let mut f = find_cfg();
    f["path"] = json!("/documents?search={sha12}");
    f["patient_pointer"] = json!("/patientId");
    f["results_pointer"] = json!("");
    let s = settings(with(base(), json!({ "find": f })));
    let someone_else = json!([{ "id": 5, "note": "[ferry:ab12cd34ef56]", "patientId": "guid-other" }]);
    let mut fake = Fake::default().answer(200, someone_else).answer(201, json!({ "id": 6 }));
    assert_eq!(run(&s, &mut fake, &facts()).unwrap().location, "http-store:6");
    let this_one = json!([{ "id": 5, "note": "[ferry:ab12cd34ef56]", "patientId": PATIENT }]);
    let mut fake = Fake::default().answer(200, this_one);
    assert_eq!(run(&s, &mut fake, &facts()).unwrap().outcome, StoreOutcome::Unchanged);
}

#[test]
fn find_answers_that_cannot_be_read() {
    let s = settings(with(base(), json!({ "find": find_cfg() })));
    let mut fake = Fake::default().answer_raw(Ok(Response { status: 200, headers: vec![], body: b"<html>".to_vec() }));
    assert_eq!(run(&s, &mut fake, &facts()).unwrap_err().kind, ErrorKind::Retryable);
    let mut fake = Fake::default().answer(200, json!({ "items": "many" }));
    let e = run(&s, &mut fake, &facts()).unwrap_err();
    assert!(e.kind == ErrorKind::Permanent && e.message.contains("find.results_pointer"), "{}", e.message);
    let mut fake = Fake::default().answer(200, json!({ "items": [{ "note": "[ferry:ab12cd34ef56]" }] }));
    let e = run(&s, &mut fake, &facts()).unwrap_err();
    assert!(e.message.contains("find.id_pointer"), "{}", e.message);
    let mut fake = Fake::default().answer(503, json!({}));
    assert_eq!(run(&s, &mut fake, &facts()).unwrap_err().kind, ErrorKind::Retryable);
}

#[test]
fn a_changed_document_is_updated_in_place() {
    let s = settings(with(base(), json!({ "update": update_cfg() })));
    let mut metadata = facts();
    metadata.push((PREVIOUS_LOCATION.into(), MetaValue::Text("http-store:id/41".into())));
    let mut fake = Fake::default().answer(204, Value::Null);
    let stored = run(&s, &mut fake, &metadata).unwrap();
    assert_eq!(stored, Stored { location: "http-store:id/41".into(), outcome: StoreOutcome::Stored });
    let (r, body) = &fake.sent[0];
    assert_eq!((r.method.as_str(), r.retry), ("PUT", false));
    assert_eq!(r.url, "https://docs.example-pms.test/api/v2/documents/id%2F41/file");
    assert!(matches!(body, Some(FileBody::Base64(_))));

    // gone: created anew
    let mut fake =
        Fake::default().answer(404, json!({ "message": "no such document" })).answer(201, json!({ "id": 42 }));
    assert_eq!(run(&s, &mut fake, &metadata).unwrap().location, "http-store:42");
    assert_eq!(fake.sent[1].0.method, "POST");

    // another plugin's location, or no update configured: create
    let mut other = facts();
    other.push((PREVIOUS_LOCATION.into(), MetaValue::Text("DocumentReference/9".into())));
    let mut fake = Fake::default().answer(201, json!({ "id": 43 }));
    assert_eq!(run(&s, &mut fake, &other).unwrap().location, "http-store:43");
    let plain = settings(base());
    let mut fake = Fake::default().answer(201, json!({ "id": 44 }));
    assert_eq!(run(&plain, &mut fake, &metadata).unwrap().location, "http-store:44");
    assert_eq!(fake.sent.len(), 1);

    // an update that answers with a new id
    let mut u = update_cfg();
    u["id_pointer"] = json!("/version/id");
    let s = settings(with(base(), json!({ "update": u })));
    let mut fake = Fake::default().answer(200, json!({ "version": { "id": "41-v2" } }));
    assert_eq!(run(&s, &mut fake, &metadata).unwrap().location, "http-store:41-v2");
}

#[test]
fn find_runs_before_update_so_a_crashed_update_is_unchanged() {
    let s = settings(with(base(), json!({ "update": update_cfg(), "find": find_cfg() })));
    let mut metadata = facts();
    metadata.push((PREVIOUS_LOCATION.into(), MetaValue::Text("http-store:41".into())));
    let mut fake = Fake::default().answer(200, json!({ "items": [{ "id": 41, "note": "[ferry:ab12cd34ef56]" }] }));
    assert_eq!(run(&s, &mut fake, &metadata).unwrap().outcome, StoreOutcome::Unchanged);
    assert_eq!(fake.sent.len(), 1);
}

#[test]
fn conflicts() {
    let s = settings(with(base(), json!({ "find": find_cfg() })));
    let found = json!({ "items": [{ "id": 9, "note": "[ferry:ab12cd34ef56]" }] });
    let mut fake = Fake::default()
        .answer(200, json!({ "items": [] }))
        .answer(409, json!({ "message": "duplicate" }))
        .answer(200, found);
    assert_eq!(
        run(&s, &mut fake, &facts()).unwrap(),
        Stored { location: "http-store:9".into(), outcome: StoreOutcome::Unchanged }
    );
    let mut fake = Fake::default()
        .answer(200, json!({ "items": [] }))
        .answer(409, json!({ "message": "duplicate" }))
        .answer(200, json!({ "items": [] }));
    let e = run(&s, &mut fake, &facts()).unwrap_err();
    assert!(
        e.kind == ErrorKind::Permanent && e.message.contains("409 Conflict") && e.message.contains("duplicate"),
        "{}",
        e.message
    );
    let plain = settings(base());
    let mut fake = Fake::default().answer(409, json!({}));
    let e = run(&plain, &mut fake, &facts()).unwrap_err();
    assert!(e.kind == ErrorKind::Permanent && e.message.contains("configure find"), "{}", e.message);
}

#[test]
fn statuses_map_to_retryable_or_permanent() {
    let s = settings(base());
    let cases = [
        (401, ErrorKind::Permanent, "grants.http_auth.\"docs.example-pms.test\""),
        (403, ErrorKind::Permanent, "grants.http_auth"),
        (408, ErrorKind::Retryable, "try again"),
        (429, ErrorKind::Retryable, "try again"),
        (500, ErrorKind::Retryable, "try again"),
        (503, ErrorKind::Retryable, "try again"),
        (400, ErrorKind::Permanent, "check create in [store.config]"),
        (422, ErrorKind::Permanent, "422 Unprocessable Content"),
        (202, ErrorKind::Permanent, "create.success"),
        (302, ErrorKind::Permanent, "redirect"),
    ];
    for (status, kind, want) in cases {
        let mut fake = Fake::default().answer(status, json!({ "message": "nope" }));
        let e = run(&s, &mut fake, &facts()).unwrap_err();
        assert_eq!(e.kind, kind, "{status}: {}", e.message);
        assert!(e.message.contains(want), "{status}: {}", e.message);
        assert!(e.message.contains("create (POST /patients/{patient}/documents)"), "{}", e.message);
        assert!(!e.message.contains(PATIENT), "the rendered path is not quoted: {}", e.message);
    }
    let mut fake = Fake::default().answer_raw(Err(HostError::Unavailable("connection reset".into())));
    let e = run(&s, &mut fake, &facts()).unwrap_err();
    assert!(e.kind == ErrorKind::Retryable && e.message.contains("connection reset"), "{}", e.message);
    let mut fake =
        Fake::default().answer_raw(Err(HostError::Denied("add \"docs.example-pms.test\" to grants.http".into())));
    assert_eq!(run(&s, &mut fake, &facts()).unwrap_err().kind, ErrorKind::Permanent);
}

#[test]
fn excerpts_are_bounded_and_leak_nothing() {
    let s = settings(base());
    let base64 = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZURlY29kZT4+";
    let body = json!({
        "errors": [
            { "message": format!("bad data {base64}") },
            { "message": "echo: Authorization: Bearer abc.def.ghi\u{7}\nfor Blood panel \"Müller\"\nline 2 ✓" }
        ],
        "input": { "data": base64 }
    });
    let mut fake = Fake::default().answer(400, body);
    let e = run(&s, &mut fake, &facts()).unwrap_err();
    let m = &e.message;
    assert!(m.contains("bad data <…>"), "{m}");
    assert!(!m.contains("JVBERi0"), "{m}");
    assert!(!m.contains("abc.def.ghi"), "{m}");
    assert!(!m.contains("Müller"), "{m}");
    assert!(!m.chars().any(char::is_control), "{m:?}");
    let long = json!({ "message": "x ".repeat(1000) });
    let e = excerpt(long.to_string().as_bytes(), &[]).unwrap();
    assert!(e.chars().count() <= MAX_EXCERPT + 1, "{}", e.len());
    assert_eq!(excerpt(b"<html><body>oops</body></html>", &[]), None);
    assert_eq!(excerpt(&[0xff, 0xfe, 0x00], &[]), None);
    assert_eq!(excerpt(b"", &[]), None);
    assert_eq!(excerpt(br#"{"id": 1}"#, &[]), None, "only message fields of JSON are quoted");
    assert_eq!(excerpt(b"plain\ttext\r\nanswer", &[]).as_deref(), Some("plain text answer"));
}

#[test]
fn previous_ids_and_locations() {
    assert_eq!(location("8812"), "http-store:8812");
    let p = |v: &str| previous_id(&md(&[(PREVIOUS_LOCATION, v)]));
    assert_eq!(p("http-store:8812"), Some("8812".into()));
    assert_eq!(p("http-store:"), None);
    assert_eq!(p("DocumentReference/1"), None);
    assert_eq!(p(&format!("http-store:{}", "a".repeat(MAX_REMOTE_ID + 1))), None);
    assert_eq!(previous_id(&md(&[])), None);
}
