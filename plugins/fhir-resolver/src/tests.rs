use ferry_plugin_sdk::http::{Request, Response};
use ferry_plugin_sdk::serde_json::{json, to_vec};
use ferry_plugin_sdk::types::{ErrorKind, HostError, PatientKey};
use ferry_plugin_sdk::Resolution;

use crate::*;

struct Fake {
    status: u16,
    ids: Vec<&'static str>,
    urls: Vec<String>,
}

impl Transport for Fake {
    fn send(&mut self, r: &Request) -> Result<Response, HostError> {
        assert!(r.retry);
        self.urls.push(r.url.clone());
        let entries: Vec<_> = self
            .ids
            .iter()
            .map(|id| json!({ "resource": { "resourceType": "Patient", "id": id }, "search": { "mode": "match" } }))
            .collect();
        let body = to_vec(&json!({ "resourceType": "Bundle", "entry": entries })).unwrap();
        Ok(Response { status: self.status, headers: vec![], body })
    }
}

fn settings(card: Option<&str>) -> Settings {
    Settings::new(Config {
        base_url: "http://fhir.test/r4/".into(),
        card_id_system: card.map(str::to_string),
        ..Config::default()
    })
    .unwrap()
}

fn key(scheme: &str, value: &str) -> PatientKey {
    PatientKey { scheme: scheme.into(), value: value.into() }
}

#[test]
fn one_several_none_and_unsupported() {
    let s = settings(Some("urn:card"));
    let keys = [
        key("fhir-identifier", "urn:mrn|4711"),
        key("fhir-identifier", "urn:mrn|4711"),
        key("sidexis-id", "1"),
        key("card-id", "C 1"),
    ];
    let mut t = Fake { status: 200, ids: vec!["p1"], urls: vec![] };
    let r = resolve_keys(&s, &mut t, &keys).unwrap();
    assert_eq!(
        r,
        [
            Resolution::Resolved("p1".into()),
            Resolution::Resolved("p1".into()),
            Resolution::Unsupported,
            Resolution::Resolved("p1".into())
        ]
    );
    assert_eq!(
        t.urls,
        [
            "http://fhir.test/r4/Patient?identifier=urn%3Amrn%7C4711&_count=10",
            "http://fhir.test/r4/Patient?identifier=urn%3Acard%7CC%201&_count=10"
        ]
    );
    let mut t = Fake { status: 200, ids: vec!["p1", "p2"], urls: vec![] };
    assert_eq!(resolve_keys(&s, &mut t, &keys[..1]).unwrap(), [Resolution::Ambiguous(vec!["p1".into(), "p2".into()])]);
    let mut t = Fake { status: 200, ids: vec![], urls: vec![] };
    assert_eq!(resolve_keys(&s, &mut t, &keys[..1]).unwrap(), [Resolution::NotFound]);
    assert_eq!(resolve_keys(&settings(None), &mut t, &[key("card-id", "1")]).unwrap(), [Resolution::Unsupported]);
}

#[test]
fn errors() {
    let s = settings(None);
    let k = [key("fhir-identifier", "urn:mrn|4711")];
    let kind = |status| resolve_keys(&s, &mut Fake { status, ids: vec![], urls: vec![] }, &k).unwrap_err();
    assert_eq!(kind(401).kind, ErrorKind::Permanent);
    assert!(kind(403).message.contains("http grant"));
    assert!(!kind(403).message.contains("4711"));
    assert_eq!(kind(503).kind, ErrorKind::Retryable);
    assert_eq!(kind(429).kind, ErrorKind::Retryable);
    assert!(parse(b"nope").is_err());
    assert!(Settings::new(Config { base_url: "ftp://x".into(), ..Config::default() }).is_err());
    assert!(ferry_plugin_sdk::parse_config::<Config>(r#"{"base_url":"http://x","token":"t"}"#).is_err());
}

/// A server that answers `GET Patient/{id}` for the ids it holds.
struct Reader {
    ids: Vec<&'static str>,
    status: Option<u16>,
    urls: Vec<String>,
}

impl Transport for Reader {
    fn send(&mut self, r: &Request) -> Result<Response, HostError> {
        self.urls.push(r.url.clone());
        let id = r.url.rsplit('/').next().unwrap();
        if let Some(status) = self.status {
            return Ok(Response { status, headers: vec![], body: vec![] });
        }
        if !self.ids.contains(&id) {
            return Ok(Response { status: 404, headers: vec![], body: b"{}".to_vec() });
        }
        let body = to_vec(&json!({ "resourceType": "Patient", "id": id })).unwrap();
        Ok(Response { status: 200, headers: vec![], body })
    }
}

#[test]
fn platform_patient_ids_are_confirmed_by_reading_them() {
    let s = Settings::new(Config {
        base_url: "http://fhir.test/r4".into(),
        patient_id_scheme: Some("ferry-patient".into()),
        ..Config::default()
    })
    .unwrap();
    let mut t = Reader { ids: vec!["p-1"], status: None, urls: vec![] };
    let keys = [
        key("ferry-patient", "p-1"),
        key("ferry-patient", "p-2"),
        key("ferry-patient", "../x"),
        key("ferry-patient", "p-1"),
    ];
    let got = resolve_keys(&s, &mut t, &keys).unwrap();
    assert_eq!(
        got,
        [
            Resolution::Resolved("p-1".into()),
            Resolution::NotFound,
            Resolution::Unsupported,
            Resolution::Resolved("p-1".into())
        ]
    );
    assert_eq!(t.urls, ["http://fhir.test/r4/Patient/p-1", "http://fhir.test/r4/Patient/p-2"], "each id read once");
    let mut down = Reader { ids: vec![], status: Some(503), urls: vec![] };
    assert_eq!(resolve_keys(&s, &mut down, &keys[..1]).unwrap_err().kind, ErrorKind::Retryable);
    let mut refused = Reader { ids: vec![], status: Some(401), urls: vec![] };
    assert_eq!(resolve_keys(&s, &mut refused, &keys[..1]).unwrap_err().kind, ErrorKind::Permanent);
    // without the option the scheme is not this resolver's
    let plain = settings(None);
    assert_eq!(resolve_keys(&plain, &mut t, &keys[..1]).unwrap(), [Resolution::Unsupported]);
    for bad in ["", "fhir-identifier", "a b"] {
        let c = Config { base_url: "http://x".into(), patient_id_scheme: Some(bad.into()), ..Config::default() };
        assert!(Settings::new(c).is_err(), "{bad:?}");
    }
}
