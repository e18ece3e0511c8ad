use super::*;
use ferry_plugin_sdk::types::ErrorKind;

fn settings(json: &str) -> Settings {
    Settings::parse(json).unwrap_or_else(|e| panic!("{json}: {}", e.message))
}

fn config_error(json: &str) -> String {
    match Settings::parse(json) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Permanent);
            e.message
        }
    }
}

fn show(r: &Resolution) -> String {
    match r {
        Resolution::Resolved(g) => format!("resolved {g}"),
        Resolution::NotFound => "not-found".into(),
        Resolution::Ambiguous(g) => format!("ambiguous {}", g.join(",")),
        Resolution::Unsupported => "unsupported".into(),
    }
}

fn key(scheme: &str, value: &str) -> PatientKey {
    PatientKey { scheme: scheme.into(), value: value.into() }
}

const URL: &str = "https://pms.example.com/api/app/patient-pms-resolver/resolve";

#[test]
fn defaults() {
    let s = settings(&format!(r#"{{"url": "{URL}"}}"#));
    assert_eq!(s.method, Method::Post);
    assert_eq!(s.body.as_deref(), Some(DEFAULT_BODY));
    assert_eq!(s.guid_pointer, "/patientGuid");
    assert_eq!(s.not_found_status, [404]);
    assert_eq!(s.scheme, "card-id");
    assert_eq!(s.timeout_ms, 10_000);
    assert!(s.batch.is_none());
    assert_eq!(s.api, "pms.example.com");
    assert_eq!(
        s.headers,
        [
            ("Accept".to_string(), "application/json".to_string()),
            ("Content-Type".to_string(), "application/json".to_string())
        ]
    );

    let s = settings(
        r#"{"url": "http://127.0.0.1:8080/r?cardId={cardId}", "method": "get",
            "headers": {"X-Api-Key": "secret", "accept": "*/*"}}"#,
    );
    assert_eq!(s.method, Method::Get);
    assert_eq!(s.body, None);
    assert_eq!(s.api, "127.0.0.1:8080");
    assert_eq!(s.headers, [("X-Api-Key".to_string(), "secret".to_string()), ("accept".to_string(), "*/*".to_string())]);

    let s = settings(&format!(r#"{{"url": "{URL}-batch", "batch": {{}}}}"#));
    let b = s.batch.as_ref().unwrap();
    assert_eq!(
        (b.body.as_str(), b.results_pointer.as_str(), b.key_pointer.as_str(), b.guid_pointer.as_str(), b.max),
        (DEFAULT_BATCH_BODY, "/results", "/cardId", "/patientGuid", 50)
    );
    assert!(s.headers.iter().any(|(k, _)| k == "Content-Type"));
}

#[test]
fn config_errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (r#"{}"#, "`url`"),
        (r#"{"url": "https://x/", "urll": 1}"#, "urll"),
        (r#"{"url": "ftp://x/"}"#, "url"),
        (r#"{"url": "https:///x"}"#, "no host"),
        (r#"{"url": "https://x:99999/"}"#, "port"),
        (r#"{"url": "https://u:p@x/"}"#, "headers"),
        (r#"{"url": "https://x/a b"}"#, "url"),
        (r#"{"url": "https://x/{card}"}"#, "{cardId}"),
        (r#"{"url": "https://{cardId}.x/"}"#, "url"),
        (r#"{"url": "https://x/#frag"}"#, "fragment"),
        (r#"{"url": "https://x/", "method": "PUT"}"#, "method"),
        (r#"{"url": "https://x/", "method": "GET"}"#, "{cardId}"),
        (r#"{"url": "https://x/{cardId}", "method": "GET", "body": "{}"}"#, "body"),
        (r#"{"url": "https://x/", "body": "{\"cardId\": {cardId}}"}"#, "in quotes"),
        (r#"{"url": "https://x/", "body": "{\"cardId\": \"1\"}"}"#, "{cardId}"),
        (r#"{"url": "https://x/", "body": "{\"cardIds\": {cardIds}}"}"#, "batch.body"),
        (r#"{"url": "https://x/", "guid_pointer": "patientGuid"}"#, "guid_pointer"),
        (r#"{"url": "https://x/", "guid_pointer": "/a~2"}"#, "guid_pointer"),
        (r#"{"url": "https://x/", "not_found_status": [500]}"#, "not_found_status"),
        (r#"{"url": "https://x/", "not_found_status": [200]}"#, "not_found_status"),
        (r#"{"url": "https://x/", "not_found_status": [429]}"#, "not_found_status"),
        (r#"{"url": "https://x/", "scheme": " "}"#, "scheme"),
        (r#"{"url": "https://x/", "timeout_ms": 0}"#, "timeout_ms"),
        (r#"{"url": "https://x/", "headers": {"X Key": "v"}}"#, "headers"),
        (r#"{"url": "https://x/", "headers": {"X-Key": 5}}"#, "invalid type"),
        (r#"{"url": "https://x/", "batch": {"max": 0}}"#, "batch.max"),
        (r#"{"url": "https://x/", "batch": {"max": 5000}}"#, "batch.max"),
        (r#"{"url": "https://x/", "batch": {"maxx": 5}}"#, "maxx"),
        (r#"{"url": "https://x/", "batch": {"body": "{\"ids\": []}"}}"#, "batch.body"),
        (r#"{"url": "https://x/", "batch": {"body": "{\"ids\": [{cardIds}"}}"#, "batch.body"),
        (r#"{"url": "https://x/", "batch": {"body": "{\"ids\": \"{cardIds}\"}"}}"#, "without quotes"),
        (r#"{"url": "https://x/", "batch": {"results_pointer": "results"}}"#, "batch.results_pointer"),
        (r#"{"url": "https://x/", "batch": {"key_pointer": "/id", "guid_pointer": "/id"}}"#, "batch.guid_pointer"),
        (r#"{"url": "https://x/", "batch": {}, "guid_pointer": "/g"}"#, "batch.guid_pointer"),
        (r#"{"url": "https://x/", "batch": {}, "body": "{}"}"#, "batch.body"),
        (r#"{"url": "https://x/", "batch": {}, "not_found_status": [404]}"#, "not_found_status"),
        (r#"{"url": "https://x/", "batch": {}, "method": "GET"}"#, "method"),
        (r#"{"url": "https://x/{cardId}", "batch": {}}"#, "url"),
    ];
    for (json, needle) in cases {
        let m = config_error(json);
        assert!(m.contains(needle), "{json}: {m}");
        assert!(m.starts_with("invalid [config]"), "{json}: {m}");
    }
    // Header values are secrets: never echoed.
    let m = config_error(r#"{"url": "https://x/", "headers": {"X-Api-Key": "s3cr3t\nInjected: 1"}}"#);
    assert!(m.contains("X-Api-Key") && !m.contains("s3cr3t"), "{m}");
}

#[test]
fn urls() {
    assert_eq!(check_url("https://PMS.example.com:8443/x?a=1").unwrap(), "pms.example.com:8443");
    assert_eq!(check_url("http://[::1]:8080/x").unwrap(), "[::1]:8080");
    assert_eq!(check_url("HTTPS://h").unwrap(), "h");
    assert_eq!(render_url("https://h/r?cardId={cardId}", "C 1/ä&x=?"), "https://h/r?cardId=C%201%2F%C3%A4%26x%3D%3F");
    assert_eq!(render_url("https://h/p/{cardId}", "A-1_b.c~"), "https://h/p/A-1_b.c~");
}

#[test]
fn bodies() {
    assert_eq!(render_body(DEFAULT_BODY, "C-1"), r#"{"cardId": "C-1"}"#);
    let body = render_body(DEFAULT_BODY, "a\"b\\c\nd</");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cardId"], "a\"b\\c\nd</");
    assert_eq!(json_escape("ü\u{1}"), "ü\\u0001");
    let v: Value = serde_json::from_str(&render_batch_body(DEFAULT_BATCH_BODY, &["1".into(), "x\"y".into()])).unwrap();
    assert_eq!(v["cardIds"], serde_json::json!(["1", "x\"y"]));
}

#[test]
fn pointers() {
    for ok in ["", "/", "/a", "/a/0/b", "/a~0b/c~1d"] {
        assert!(check_pointer(ok).is_ok(), "{ok}");
    }
    for bad in ["a", "/a~", "/a~x", "#/a"] {
        assert!(check_pointer(bad).is_err(), "{bad}");
    }
    // RFC 6901 escapes are honoured when looking up.
    let doc: Value = serde_json::from_str(r#"{"a/b": {"c~d": "g-1"}}"#).unwrap();
    assert_eq!(show(&resolution_of(guids_of(doc.pointer("/a~1b/c~0d")).unwrap())), "resolved g-1");
}

#[test]
fn guid_values() {
    let r = |json: &str| parse_single(json.as_bytes(), 200, "/patientGuid").map(|r| show(&r));
    assert_eq!(r(r#"{"patientGuid": "g-1"}"#).unwrap(), "resolved g-1");
    assert_eq!(r(r#"{"patientGuid": " g-1 "}"#).unwrap(), "resolved g-1");
    assert_eq!(r(r#"{"patientGuid": 12345}"#).unwrap(), "resolved 12345");
    assert_eq!(r(r#"{"patientGuid": null}"#).unwrap(), "not-found");
    assert_eq!(r(r#"{"patientGuid": ""}"#).unwrap(), "not-found");
    assert_eq!(r(r#"{"other": 1}"#).unwrap(), "not-found");
    assert_eq!(r(r#"{"patientGuid": []}"#).unwrap(), "not-found");
    assert_eq!(r(r#"{"patientGuid": ["g-1"]}"#).unwrap(), "resolved g-1");
    assert_eq!(r(r#"{"patientGuid": ["g-1", "g-1", ""]}"#).unwrap(), "resolved g-1");
    assert_eq!(r(r#"{"patientGuid": ["g-2", "g-1"]}"#).unwrap(), "ambiguous g-2,g-1");
    assert_eq!(r(r#"[{"patientGuid": "g"}]"#).unwrap(), "not-found");
    for bad in [
        r#"{"patientGuid": true}"#,
        r#"{"patientGuid": {"id": "g"}}"#,
        r#"{"patientGuid": 1.5}"#,
        r#"{"patientGuid": [["g"]]}"#,
        r#"{"patientGuid": "g""#,
        r#""g-1""#,
        "",
        "  ",
        "<html>oops</html>",
    ] {
        assert!(r(bad).is_err(), "{bad}");
    }
    // The whole document as the guid.
    assert_eq!(show(&parse_single(br#""g-1""#, 200, "").unwrap()), "resolved g-1");
    // Errors carry no content.
    let Malformed(m) = parse_single(br#"{"patientGuid": "Doe, Jane"#, 200, "/patientGuid").unwrap_err();
    assert!(!m.contains("Doe"), "{m}");

    assert!(usable_guid("0d6f2a1e-7c1b-4e1e-9a55-2b1f0c9d8e7f"));
    for bad in ["", ".x", "a b", "a/b", &"x".repeat(129), "Doe, Jane"] {
        assert!(!usable_guid(bad), "{bad}");
    }
}

#[test]
fn batch_answers() {
    let s = settings(r#"{"url": "https://x/b", "batch": {}}"#);
    let b = s.batch.as_ref().unwrap();
    let m = parse_batch(
        br#"{"results": [
            {"cardId": "1", "patientGuid": "g-1"},
            {"cardId": "2", "patientGuid": "g-2"},
            {"cardId": "2", "patientGuid": "g-3"},
            {"cardId": "3", "patientGuid": null},
            {"cardId": 4, "patientGuid": ["g-4", "g-4"]},
            {"cardId": "5", "patientGuid": "g-5"},
            {"cardId": "5", "patientGuid": "g-5"}
        ]}"#,
        200,
        b,
    )
    .unwrap();
    assert_eq!(m["1"], ["g-1"]);
    assert_eq!(m["2"], ["g-2", "g-3"]);
    assert!(m["3"].is_empty());
    assert_eq!(m["4"], ["g-4"]);
    assert_eq!(m["5"], ["g-5"]);
    assert!(parse_batch(br#"{"results": null}"#, 200, b).unwrap().is_empty());
    assert!(parse_batch(br#"{"results": []}"#, 200, b).unwrap().is_empty());
    for bad in [
        &br#"{"result": []}"#[..],
        br#"{"results": {}}"#,
        br#"{"results": [{"patientGuid": "g"}]}"#,
        br#"{"results": [{"cardId": null, "patientGuid": "g"}]}"#,
        br#"{"results": ["1"]}"#,
        br#"{"results": [{"cardId": "1", "patientGuid": true}]}"#,
        b"[]",
        b"",
    ] {
        assert!(parse_batch(bad, 200, b).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    // Other shapes.
    let s = settings(
        r#"{"url": "https://x/b", "batch": {"body": "{cardIds}", "results_pointer": "", "key_pointer": "/card/id", "guid_pointer": "/patient/guid", "max": 2}}"#,
    );
    let m =
        parse_batch(br#"[{"card": {"id": "1"}, "patient": {"guid": "g"}}]"#, 200, s.batch.as_ref().unwrap()).unwrap();
    assert_eq!(m["1"], ["g"]);
}

#[test]
fn statuses() {
    let c = |status| classify(status, &[404], "pms:443");
    assert_eq!(c(200).unwrap(), Verdict::Answer);
    assert_eq!(c(203).unwrap(), Verdict::Answer);
    assert_eq!(c(404).unwrap(), Verdict::NotFound);
    assert_eq!(classify(204, &[404, 204], "pms").unwrap(), Verdict::NotFound);
    assert_eq!(classify(404, &[], "pms").unwrap_err().kind, ErrorKind::Permanent);
    for (status, kind, needle) in [
        (429, ErrorKind::Retryable, "429 Too Many Requests"),
        (500, ErrorKind::Retryable, "500 Internal Server Error"),
        (503, ErrorKind::Retryable, "503"),
        (599, ErrorKind::Retryable, "599"),
        (408, ErrorKind::Retryable, "408"),
        (401, ErrorKind::Permanent, "check the API key / credentials"),
        (403, ErrorKind::Permanent, "check the API key / credentials"),
        (400, ErrorKind::Permanent, "check url, method and body in [resolver.config]"),
        (405, ErrorKind::Permanent, "check url, method and body in [resolver.config]"),
        (418, ErrorKind::Permanent, "check url, method and body in [resolver.config]"),
        (301, ErrorKind::Permanent, "redirect"),
        (101, ErrorKind::Permanent, "101"),
    ] {
        let e = c(status).unwrap_err();
        assert_eq!(e.kind, kind, "{status}");
        assert!(e.message.contains(needle) && e.message.contains("pms:443"), "{status}: {}", e.message);
    }
}

/// A fake API: answers from a function, records requests.
struct Fake<F: FnMut(&Request) -> Result<Response, HostError>> {
    answer: F,
    requests: Vec<Request>,
}

impl<F: FnMut(&Request) -> Result<Response, HostError>> Transport for Fake<F> {
    fn send(&mut self, request: Request) -> Result<Response, HostError> {
        let r = (self.answer)(&request);
        self.requests.push(request);
        r
    }
}

fn fake<F: FnMut(&Request) -> Result<Response, HostError>>(answer: F) -> Fake<F> {
    Fake { answer, requests: Vec::new() }
}

fn json(status: u16, body: &str) -> Result<Response, HostError> {
    Ok(Response { status, headers: vec![], body: body.as_bytes().to_vec() })
}

/// The demo PMS: cards 1001 → g-1, 1002 → g-2 or g-3.
fn pms(card: &str) -> Result<Response, HostError> {
    match card {
        "1001" => json(200, r#"{"patientGuid": "g-1"}"#),
        "1002" => json(200, r#"{"patientGuid": ["g-2", "g-3"]}"#),
        _ => json(404, r#"{"error": "not found"}"#),
    }
}

fn body_json(r: &Request) -> Value {
    serde_json::from_slice(r.body.as_deref().unwrap()).unwrap()
}

#[test]
fn one_request_per_distinct_card() {
    let s = settings(&format!(r#"{{"url": "{URL}", "headers": {{"X-Api-Key": "k"}}}}"#));
    let mut t = fake(|r| pms(body_json(r)["cardId"].as_str().unwrap()));
    let keys = [
        key("card-id", "1001"),
        key("sidexis-id", "17"),
        key("card-id", " 1001 "),
        key("card-id", "1002"),
        key("card-id", "9999"),
        key("card-id", "  "),
    ];
    let out: Vec<String> = resolve_keys(&s, &mut t, &keys).unwrap().iter().map(show).collect();
    assert_eq!(out, ["resolved g-1", "unsupported", "resolved g-1", "ambiguous g-2,g-3", "not-found", "not-found"]);
    assert_eq!(t.requests.len(), 3);
    let r = &t.requests[0];
    assert_eq!((r.method.as_str(), r.url.as_str(), r.retry, r.timeout_ms), ("POST", URL, true, Some(10_000)));
    assert!(r.headers.contains(&("X-Api-Key".into(), "k".into())));
    assert!(r.headers.contains(&("Content-Type".into(), "application/json".into())));
    assert_eq!(body_json(r), serde_json::json!({"cardId": "1001"}));
}

#[test]
fn get_requests() {
    let s = settings(r#"{"url": "http://127.0.0.1:1/resolve?cardId={cardId}", "method": "GET", "timeout_ms": 500}"#);
    let mut t = fake(|r| pms(r.url.rsplit('=').next().unwrap()));
    let out: Vec<String> =
        resolve_keys(&s, &mut t, &[key("card-id", "1001"), key("card-id", "a b")]).unwrap().iter().map(show).collect();
    assert_eq!(out, ["resolved g-1", "not-found"]);
    assert_eq!(t.requests[1].url, "http://127.0.0.1:1/resolve?cardId=a%20b");
    assert_eq!(t.requests[1].body, None);
    assert_eq!(t.requests[1].timeout_ms, Some(500));
    assert!(!t.requests[1].headers.iter().any(|(k, _)| k == "Content-Type"));
}

#[test]
fn batches() {
    let s = settings(r#"{"url": "https://x/resolve-batch", "batch": {"max": 2}}"#);
    let mut t = fake(|r| {
        let cards = body_json(r)["cardIds"].as_array().unwrap().clone();
        let results: Vec<Value> = cards
            .iter()
            .filter_map(|c| match c.as_str().unwrap() {
                "1001" => Some(serde_json::json!({"cardId": "1001", "patientGuid": "g-1"})),
                "1002" => Some(serde_json::json!({"cardId": "1002", "patientGuid": ["g-2", "g-3"]})),
                "1003" => Some(serde_json::json!({"cardId": "1003", "patientGuid": null})),
                _ => None,
            })
            .collect();
        json(200, &serde_json::json!({ "results": results }).to_string())
    });
    let keys = [
        key("card-id", "1001"),
        key("card-id", "1002"),
        key("other", "1001"),
        key("card-id", "1003"),
        key("card-id", "1001"),
        key("card-id", "4"),
    ];
    let out: Vec<String> = resolve_keys(&s, &mut t, &keys).unwrap().iter().map(show).collect();
    assert_eq!(out, ["resolved g-1", "ambiguous g-2,g-3", "unsupported", "not-found", "resolved g-1", "not-found"]);
    assert_eq!(t.requests.len(), 2);
    assert_eq!(body_json(&t.requests[0]), serde_json::json!({"cardIds": ["1001", "1002"]}));
    assert_eq!(body_json(&t.requests[1]), serde_json::json!({"cardIds": ["1003", "4"]}));
    assert!(t.requests.iter().all(|r| r.method == "POST" && r.url == "https://x/resolve-batch" && r.retry));

    // Nothing to ask: no request.
    let mut t = fake(|_| panic!("no request expected"));
    let out = resolve_keys(&s, &mut t, &[key("other", "1"), key("card-id", "")]).unwrap();
    assert_eq!(out.iter().map(show).collect::<Vec<_>>(), ["unsupported", "not-found"]);

    // A batch endpoint answering 404 is misconfigured, not "nobody known".
    let mut t = fake(|_| json(404, "{}"));
    let e = resolve_keys(&s, &mut t, &[key("card-id", "1")]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("404") && e.message.contains("check url"), "{}", e.message);
}

#[test]
fn failures_are_classified_without_phi() {
    let s = settings(&format!(r#"{{"url": "{URL}"}}"#));
    let keys = [key("card-id", "CARD-4711")];
    let run = |answer: Result<Response, HostError>| {
        let mut t = fake(move |_| answer.clone());
        let e = resolve_keys(&s, &mut t, &keys).unwrap_err();
        assert!(!e.message.contains("CARD-4711") && !e.message.contains("Jane"), "{}", e.message);
        assert!(e.message.contains("pms.example.com"), "{}", e.message);
        (e.kind, e.message)
    };
    let (kind, m) = run(json(200, r#"{"patientGuid": "Jane"#));
    assert_eq!(kind, ErrorKind::Retryable);
    assert!(m.contains("resolver API at pms.example.com returned malformed JSON"), "{m}");
    let (kind, m) = run(json(200, r#"{"patientGuid": {"name": "Jane"}}"#));
    assert_eq!(kind, ErrorKind::Retryable);
    assert!(m.contains("malformed JSON"), "{m}");
    let (kind, m) = run(json(503, "Jane's record is locked"));
    assert_eq!(kind, ErrorKind::Retryable);
    assert!(m.contains("503"), "{m}");
    let (kind, m) = run(json(429, ""));
    assert_eq!(kind, ErrorKind::Retryable);
    assert!(m.contains("429"), "{m}");
    let (kind, m) = run(json(401, r#"{"error": "bad key for Jane"}"#));
    assert_eq!(kind, ErrorKind::Permanent);
    assert!(m.contains("401") && m.contains("API key"), "{m}");
    let (kind, m) = run(json(400, ""));
    assert_eq!(kind, ErrorKind::Permanent);
    assert!(m.contains("check url, method and body"), "{m}");
    let (kind, m) = run(Err(HostError::Unavailable("cannot connect to pms.example.com:443: refused".into())));
    assert_eq!(kind, ErrorKind::Retryable);
    assert!(m.contains("calling the resolver API"), "{m}");
    let (kind, _) = run(Err(HostError::Denied("add \"pms.example.com\" to `grants.http`".into())));
    assert_eq!(kind, ErrorKind::Permanent);

    // A failure on the second card fails the call (the host retries it).
    let mut n = 0;
    let mut t = fake(move |_| {
        n += 1;
        if n == 1 {
            json(200, r#"{"patientGuid": "g-1"}"#)
        } else {
            json(500, "")
        }
    });
    let e = resolve_keys(&s, &mut t, &[key("card-id", "1"), key("card-id", "2")]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Retryable);
}

#[test]
fn unusable_guids_go_to_the_host() {
    // The host fails the item (it validates every guid); the plugin only
    // warns, so one odd record does not fail a whole batch.
    let s = settings(&format!(r#"{{"url": "{URL}"}}"#));
    let mut t = fake(|_| json(200, r#"{"patientGuid": "Doe, Jane"}"#));
    let out = resolve_keys(&s, &mut t, &[key("card-id", "1")]).unwrap();
    assert_eq!(show(&out[0]), "resolved Doe, Jane");
}
