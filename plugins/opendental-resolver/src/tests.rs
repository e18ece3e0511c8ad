use std::collections::VecDeque;

use ferry_plugin_sdk::http::{Request, Response};
use ferry_plugin_sdk::serde_json::{json, to_vec};
use ferry_plugin_sdk::types::{ErrorKind, HostError, PatientKey};
use ferry_plugin_sdk::Resolution;

use crate::*;

#[derive(Default)]
struct Fake {
    answers: VecDeque<(u16, Vec<u8>)>,
    urls: Vec<String>,
}

impl Transport for Fake {
    fn send(&mut self, r: &Request) -> Result<Response, HostError> {
        assert!(r.retry);
        assert_eq!(r.method, "GET");
        assert!(r.headers.iter().any(|(k, v)| k == "Content-Type" && v == "application/json"));
        self.urls.push(r.url.clone());
        let (status, body) = self.answers.pop_front().expect("an answer queued");
        Ok(Response { status, headers: vec![], body })
    }
}

fn settings(patnum_scheme: Option<&str>) -> Settings {
    Settings::new(Config {
        base_url: "http://od.test/api/v1/".into(),
        patnum_scheme: patnum_scheme.map(str::to_string),
        ..Config::default()
    })
    .unwrap()
}

fn key(scheme: &str, value: &str) -> PatientKey {
    PatientKey { scheme: scheme.into(), value: value.into() }
}

fn patients(rows: &[(u64, &str, &str, &str)]) -> Vec<u8> {
    let v: Vec<_> = rows
        .iter()
        .map(|(n, l, f, b)| json!({ "PatNum": n, "LName": l, "FName": f, "Birthdate": b, "PatStatus": "Patient" }))
        .collect();
    to_vec(&v).unwrap()
}

#[test]
fn settings_refusals() {
    let s = settings(None);
    assert_eq!(s.base_url, "http://od.test/api/v1");
    assert_eq!(s.api, "od.test");
    let bad = |c: Config| Settings::new(c).unwrap_err().message;
    assert!(bad(Config { base_url: "ftp://x".into(), ..Config::default() }).contains("base_url"));
    assert!(bad(Config { base_url: "http://a:b@x".into(), ..Config::default() }).contains("base_url"));
    let c = |p: &str| Config { base_url: "http://x".into(), patnum_scheme: Some(p.into()), ..Config::default() };
    assert!(bad(c(" ")).contains("patnum_scheme"));
    assert!(bad(c("name-birthdate")).contains("patnum_scheme"));
    let e = ferry_plugin_sdk::parse_config::<Config>(r#"{"base_url":"http://x","api_key":"k"}"#).unwrap_err();
    assert!(e.message.contains("unknown field `api_key`"), "{}", e.message);
}

#[test]
fn queries() {
    let s = settings(Some("card-id"));
    assert_eq!(
        s.query(&key("name-birthdate", " De  Angelo |Ann|1980-02-29")),
        Some(Query::Name { family: "De Angelo".into(), given: "Ann".into(), birthdate: "1980-02-29".into() })
    );
    for bad in ["Smith|Jane", "Smith||1976-05-24", "Smith|Jane|1976-02-30", "Smith|Jane|24.05.1976", "a|b|c|d"] {
        assert!(matches!(s.query(&key("name-birthdate", bad)), Some(Query::Malformed(_))), "{bad}");
    }
    assert_eq!(s.query(&key("card-id", " 48 ")), Some(Query::PatNum(48)));
    assert!(matches!(s.query(&key("card-id", "C-48")), Some(Query::Malformed(_))));
    assert!(matches!(s.query(&key("card-id", "0")), Some(Query::Malformed(_))));
    assert_eq!(s.query(&key("sidexis-id", "1")), None);
    assert_eq!(settings(None).query(&key("card-id", "48")), None);
}

#[test]
fn exact_match_after_the_partial_search() {
    let s = settings(None);
    let mut t = Fake::default();
    // the API matched by prefix: Smithers and Janet come back too
    t.answers.push_back((
        200,
        patients(&[
            (16, "Smith", "Jane", "1976-05-24"),
            (17, "Smithers", "Jane", "1976-05-24"),
            (18, "Smith", "Janet", "1976-05-24"),
            (19, "SMITH", "jane", "1977-05-24"),
        ]),
    ));
    let r = resolve_keys(&s, &mut t, &[key("name-birthdate", "smith|JANE|1976-05-24")]).unwrap();
    assert_eq!(r, vec![Resolution::Resolved("16".into())]);
    assert_eq!(t.urls, vec!["http://od.test/api/v1/patients?LName=smith&FName=JANE&Birthdate=1976-05-24"]);
}

#[test]
fn several_none_unsupported_and_deduplicated() {
    let s = settings(None);
    let mut t = Fake::default();
    t.answers.push_back((200, patients(&[(21, "Lee", "Kim", "2001-01-01"), (20, "lee", "kim ", "2001-01-01")])));
    t.answers.push_back((200, b"[]".to_vec()));
    let keys = [
        key("name-birthdate", "Lee|Kim|2001-01-01"),
        key("name-birthdate", "Lee|Kim|2001-01-01"),
        key("name-birthdate", "Müller|Jörg|1950-12-31"),
        key("sidexis-id", "7"),
        key("name-birthdate", "broken"),
    ];
    let r = resolve_keys(&s, &mut t, &keys).unwrap();
    assert_eq!(
        r,
        vec![
            Resolution::Ambiguous(vec!["20".into(), "21".into()]),
            Resolution::Ambiguous(vec!["20".into(), "21".into()]),
            Resolution::NotFound,
            Resolution::Unsupported,
            Resolution::NotFound,
        ]
    );
    assert_eq!(t.urls.len(), 2);
    assert_eq!(t.urls[1], "http://od.test/api/v1/patients?LName=M%C3%BCller&FName=J%C3%B6rg&Birthdate=1950-12-31");
}

#[test]
fn every_page_is_read() {
    let s = settings(None);
    let mut t = Fake::default();
    let full: Vec<(u64, &str, &str, &str)> = (1..=100).map(|n| (n, "Nguyen", "An", "1990-01-01")).collect();
    let mut other: Vec<(u64, &str, &str, &str)> = full.iter().map(|(n, _, _, b)| (*n, "Nguyenova", "An", *b)).collect();
    other[99] = (100, "Nguyen", "An", "1990-01-02");
    t.answers.push_back((200, patients(&other)));
    t.answers.push_back((200, patients(&[(200, "Nguyen", "An", "1990-01-01")])));
    let r = resolve_keys(&s, &mut t, &[key("name-birthdate", "Nguyen|An|1990-01-01")]).unwrap();
    assert_eq!(r, vec![Resolution::Resolved("200".into())]);
    assert!(t.urls[1].ends_with("&Offset=100"), "{}", t.urls[1]);
}

#[test]
fn patnum_keys_are_confirmed() {
    let s = settings(Some("card-id"));
    let mut t = Fake::default();
    t.answers.push_back((200, to_vec(&json!({ "PatNum": 48, "LName": "Smith" })).unwrap()));
    t.answers.push_back((404, b"\"Patient not found\"".to_vec()));
    let r = resolve_keys(&s, &mut t, &[key("card-id", "48"), key("card-id", "49"), key("card-id", "x")]).unwrap();
    assert_eq!(r, vec![Resolution::Resolved("48".into()), Resolution::NotFound, Resolution::NotFound]);
    assert_eq!(t.urls, vec!["http://od.test/api/v1/patients/48", "http://od.test/api/v1/patients/49"]);
}

#[test]
fn failures_carry_no_phi() {
    let s = settings(Some("card-id"));
    let name = key("name-birthdate", "Secretname|Jane|1976-05-24");
    let run = |status: u16, body: &[u8]| {
        let mut t = Fake::default();
        t.answers.push_back((status, body.to_vec()));
        resolve_keys(&s, &mut t, std::slice::from_ref(&name)).unwrap_err()
    };
    for (status, body, kind) in [
        (401, &b""[..], ErrorKind::Permanent),
        (403, b"", ErrorKind::Permanent),
        (400, b"\"Invalid Birthdate\"", ErrorKind::Permanent),
        (400, b"\"The eConnector is not running.\"", ErrorKind::Retryable),
        (429, b"", ErrorKind::Retryable),
        (503, b"", ErrorKind::Retryable),
        (200, b"<html>", ErrorKind::Retryable),
        (200, b"{\"PatNum\":1}", ErrorKind::Retryable),
    ] {
        let e = run(status, body);
        assert_eq!(e.kind, kind, "{status}: {}", e.message);
        assert!(!e.message.contains("Secretname") && !e.message.contains("1976"), "{}", e.message);
    }
    assert!(run(401, b"").message.contains("ODFHIR"));
    assert!(run(400, b"\"Invalid Birthdate\"").message.contains("Invalid Birthdate"));
    // a patient read that answers another patient
    let mut t = Fake::default();
    t.answers.push_back((200, to_vec(&json!({ "PatNum": 2 })).unwrap()));
    assert_eq!(resolve_keys(&s, &mut t, &[key("card-id", "1")]).unwrap_err().kind, ErrorKind::Retryable);
}
