//! Native tests against a fake FHIR server (a [`Transport`]) that answers
//! searches like the test server: (lastUpdated, id) order, `ge` on
//! `_lastUpdated`, `_count`, keyset `next` links.
use std::collections::HashMap;

use ferry_plugin_sdk::http::{Request, Response, Spooled};
use ferry_plugin_sdk::serde_json::{self, json, Value};
use ferry_plugin_sdk::types::{ErrorKind, FileRef, HostError};
use ferry_plugin_sdk::{DocumentPage, NoticeOutcome};

use crate::config::{Config, Settings};
use crate::cursor::{Cursor, Position, SEEN_CAP};
use crate::instant::parse_instant;
use crate::scan::{Scanner, Transport};

const BASE: &str = "http://fhir.test/r4";

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[derive(Default)]
struct Fake {
    docs: Vec<Value>,
    patients: HashMap<String, Value>,
    /// url → (status, bytes) of downloads.
    files: HashMap<String, (u16, Vec<u8>)>,
    /// Hosts the grant refuses.
    denied: Vec<String>,
    /// Search answers in a fixed, unsorted order.
    ignore_sort: bool,
    /// Cap on `_count`.
    max_count: Option<usize>,
    /// Status of every search (0: normal).
    search_status: u16,
    requests: Vec<Request>,
    spooled: Vec<Vec<u8>>,
    /// Answers every search with these bytes instead (hostile servers):
    /// given the search URL.
    raw_search: Option<fn(&str) -> Vec<u8>>,
}

fn doc(id: &str, last: &str) -> Value {
    json!({
        "resourceType": "DocumentReference",
        "id": id,
        "meta": { "versionId": "1", "lastUpdated": last },
        "status": "current",
        "type": { "coding": [{ "system": "http://snomed.info/sct", "code": "1" }, { "system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report" }] },
        "subject": { "reference": "Patient/p1" },
        "date": "2024-03-17T10:00:00Z",
        "author": [{ "display": "Labor Dr. Schmidt" }],
        "description": "Blood panel",
        "content": [{ "attachment": { "contentType": "application/pdf", "url": format!("Binary/{id}"), "title": "blood.pdf", "size": 3 } }],
    })
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient", "id": "p1",
        "identifier": [{ "system": "urn:mrn", "value": "4711" }, { "system": "urn:other", "value": "x" }, { "value": "nosystem" }],
        "name": [{ "use": "usual", "family": "Nick", "given": ["N"] }, { "use": "official", "family": "Muster", "given": ["Erika", "M"] }],
        "birthDate": "1970-05-01",
    })
}

impl Fake {
    fn with(docs: Vec<Value>) -> Fake {
        let mut f = Fake { docs, ..Fake::default() };
        f.patients.insert("p1".into(), patient());
        for d in &f.docs {
            let id = d["id"].as_str().unwrap_or_default();
            f.files.insert(format!("{BASE}/Binary/{id}"), (200, b"pdf".to_vec()));
        }
        f
    }

    fn search(&self, query: &str) -> Value {
        let mut ge: Option<i128> = None;
        let mut count = 20;
        let mut after: Option<(i128, String)> = None;
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            let v = decode(v);
            match k {
                "_lastUpdated" => {
                    ge = Some(crate::instant::parse_date_or_instant(v.strip_prefix("ge").unwrap()).unwrap())
                }
                "_count" => count = v.parse().unwrap(),
                "_sort" => assert_eq!(v, "_lastUpdated"),
                "_cursor" => {
                    let (t, id) = v.split_once('_').unwrap();
                    after = Some((t.parse().unwrap(), id.into()));
                    continue;
                }
                other => panic!("unknown search parameter {other}"),
            }
            kept.push(pair.to_string());
        }
        if let Some(m) = self.max_count {
            count = count.min(m);
        }
        let stamp = |d: &Value| d["meta"]["lastUpdated"].as_str().and_then(parse_instant);
        let mut hits: Vec<&Value> =
            self.docs.iter().filter(|d| ge.is_none_or(|g| stamp(d).is_none_or(|s| s >= g))).collect();
        if !self.ignore_sort {
            hits.sort_by_key(|d| (stamp(d), d["id"].as_str().unwrap_or_default().to_string()));
        }
        let key = |d: &Value| (stamp(d).unwrap_or(0), d["id"].as_str().unwrap_or_default().to_string());
        let mut rest: Vec<&Value> = match &after {
            None => hits,
            Some(a) if self.ignore_sort => {
                let i = hits.iter().position(|d| key(d) == *a).unwrap();
                hits[i + 1..].to_vec()
            }
            Some(a) => hits.into_iter().filter(|d| key(d) > *a).collect(),
        };
        let more = rest.len() > count;
        rest.truncate(count);
        let mut links = vec![json!({ "relation": "self", "url": "x" })];
        if let (true, Some(last)) = (more, rest.last()) {
            let (t, id) = key(last);
            kept.push(format!("_cursor={t}_{id}"));
            links.push(json!({ "relation": "next", "url": format!("{BASE}/DocumentReference?{}", kept.join("&")) }));
        }
        let entries: Vec<Value> =
            rest.iter().map(|d| json!({ "resource": d, "search": { "mode": "match" } })).collect();
        json!({ "resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries })
    }
}

fn spooled(n: usize, size: usize) -> Spooled {
    Spooled {
        status: 200,
        headers: vec![],
        body: FileRef { root: "spool".into(), path: format!("f{n}") },
        size: size as u64,
        sha256: String::new(),
    }
}

impl Transport for Fake {
    fn send(&mut self, r: &Request) -> Result<Response, HostError> {
        self.requests.push(r.clone());
        assert!(r.retry);
        assert_eq!(r.method, "GET");
        let ok = |v: Value| Ok(Response { status: 200, headers: vec![], body: serde_json::to_vec(&v).unwrap() });
        let path = r.url.strip_prefix(BASE).expect("on the base");
        if let Some(q) = path.strip_prefix("/DocumentReference?") {
            if self.search_status != 0 {
                return Ok(Response { status: self.search_status, headers: vec![], body: vec![] });
            }
            if let Some(raw) = self.raw_search {
                return Ok(Response { status: 200, headers: vec![], body: raw(&r.url) });
            }
            return ok(self.search(q));
        }
        if let Some(id) = path.strip_prefix("/Patient/") {
            return match self.patients.get(id) {
                Some(p) => ok(p.clone()),
                None => Ok(Response { status: 404, headers: vec![], body: vec![] }),
            };
        }
        panic!("unexpected request {}", r.url)
    }

    fn send_to_spool(&mut self, r: &Request) -> Result<Spooled, HostError> {
        self.requests.push(r.clone());
        let host = crate::scan::host_of(&r.url);
        if self.denied.contains(&host) {
            return Err(HostError::Denied(format!("may not reach {host}: add it to grants.http in [source]")));
        }
        let (status, bytes) = self.files.get(&r.url).cloned().unwrap_or((404, vec![]));
        let mut sp = spooled(self.spooled.len(), bytes.len());
        sp.status = status;
        self.spooled.push(bytes);
        Ok(sp)
    }

    fn spool_bytes(&mut self, body: &[u8]) -> Result<Spooled, HostError> {
        let sp = spooled(self.spooled.len(), body.len());
        self.spooled.push(body.to_vec());
        Ok(sp)
    }
}

fn settings(f: impl FnOnce(&mut Config)) -> Settings {
    let mut c = Config { base_url: format!("{BASE}/"), ..Config::default() };
    f(&mut c);
    Settings::new(c).unwrap()
}

fn scanner(f: impl FnOnce(&mut Config)) -> Scanner {
    Scanner::new(settings(f))
}

/// Scans until the empty page; the pages (the last one included).
fn pass(s: &mut Scanner, t: &mut Fake, mut cursor: Option<String>) -> Vec<(Option<String>, DocumentPage)> {
    let mut pages = Vec::new();
    for _ in 0..100 {
        let page = s.scan(t, cursor.as_deref()).unwrap();
        let next = page.next_cursor.clone();
        let empty = page.documents.is_empty() && page.notices.is_empty();
        pages.push((cursor.clone(), page));
        if next.is_none() || empty {
            return pages;
        }
        cursor = next;
    }
    panic!("the scan does not end");
}

fn ids(pages: &[(Option<String>, DocumentPage)]) -> Vec<String> {
    pages.iter().flat_map(|(_, p)| p.documents.iter().map(|d| d.item.id.clone())).collect()
}

fn ts(n: u32) -> String {
    format!("2024-01-01T00:00:{n:02}.000Z")
}

#[test]
fn config_is_checked() {
    let bad = |f: fn(&mut Config), word: &str| {
        let mut c = Config { base_url: BASE.into(), ..Config::default() };
        f(&mut c);
        let e = Settings::new(c).unwrap_err();
        assert!(e.message.contains(word), "{} lacks {word}", e.message);
    };
    bad(|c| c.base_url = "ftp://x".into(), "base_url");
    bad(|c| c.base_url = "https://user:pw@x/fhir".into(), "credentials");
    bad(|c| c.page_size = Some(0), "page_size");
    bad(|c| c.page_size = Some(201), "page_size");
    bad(|c| c.since = Some("last week".into()), "since");
    bad(|c| c.since = Some("2024-01-01T10:00:00".into()), "since");
    bad(|c| c.types = Some(vec!["lab".into()]), "LOINC");
    bad(|c| c.types = Some(vec![]), "empty");
    bad(|c| c.status = Some("final".into()), "status");
    bad(|c| c.content_types = Some(vec!["pdf".into()]), "content_types");
    bad(|c| c.timeout_ms = Some(0), "timeout_ms");
    bad(|c| c.identifier_systems = Some(vec!["a|b".into()]), "identifier_systems");
    let e = ferry_plugin_sdk::parse_config::<Config>(r#"{"base_url":"http://x","token":"t"}"#).unwrap_err();
    assert!(e.message.contains("token"), "{}", e.message);
    let s = settings(|c| c.since = Some("2024-01-01".into()));
    assert_eq!(s.base_url, BASE);
    assert_eq!(s.page_size, 20);
    assert_eq!(s.status, "current");
    assert_eq!(s.content_types[0], "application/pdf");
}

#[test]
fn search_url_has_only_parameters_the_test_server_knows() {
    let s = scanner(|c| c.since = Some("2024-01-01T10:00:00+01:00".into()));
    let pos = Position { since: s.s.since.clone(), seen: vec!["a".into(), "b".into()] };
    assert_eq!(
        s.search_url(&pos),
        format!(
            "{BASE}/DocumentReference?_lastUpdated=ge2024-01-01T10%3A00%3A00%2B01%3A00&_sort=_lastUpdated&_count=22"
        )
    );
    assert_eq!(s.search_url(&Position::default()), format!("{BASE}/DocumentReference?_sort=_lastUpdated&_count=20"));
    let s = scanner(|c| {
        c.server_filters = Some(true);
        c.types = Some(vec!["11502-2".into(), "18842-5".into()]);
    });
    assert!(s
        .search_url(&Position::default())
        .ends_with("&status=current&type=http%3A%2F%2Floinc.org%7C11502-2,http%3A%2F%2Floinc.org%7C18842-5"));
}

#[test]
fn cursor_round_trips_and_rejects_strangers() {
    let c = Cursor::Position(Position { since: Some((ts(1), parse_instant(&ts(1)).unwrap())), seen: vec!["a".into()] });
    let raw = c.encode();
    assert_eq!(raw, r#"{"v":1,"since":"2024-01-01T00:00:01.000Z","seen":["a"]}"#);
    assert_eq!(Cursor::decode(Some(&raw)).unwrap(), c);
    assert_eq!(Cursor::top().encode(), r#"{"v":1}"#);
    let p = Cursor::Paging { url: format!("{BASE}/DocumentReference?_cursor=1_a"), skip: 2, pages: 7 };
    assert_eq!(Cursor::decode(Some(&p.encode())).unwrap(), p);
    for bad in [
        r#"{"v":2}"#,
        "nonsense",
        r#"{"v":1,"seen":["a"]}"#,
        r#"{"v":1,"since":"x"}"#,
        r#"{"v":1,"next":"file:///x"}"#,
        r#"{"v":1,"other":1}"#,
    ] {
        let e = Cursor::decode(Some(bad)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{bad}");
    }
    let huge = format!(r#"{{"v":1,"since":"{}","seen":[{}]}}"#, ts(1), vec!["\"a\""; SEEN_CAP + 1].join(","));
    assert!(Cursor::decode(Some(&huge)).is_err());
    assert!(Cursor::decode(Some(&"x".repeat(70_000))).unwrap_err().message.contains("65536"));
}

#[test]
fn a_pass_hands_out_everything_once_then_ends_with_an_empty_resumable_page() {
    let mut t = Fake::with((0..5).map(|i| doc(&format!("d{i}"), &ts(i))).collect());
    let mut s = scanner(|c| c.page_size = Some(2));
    let pages = pass(&mut s, &mut t, None);
    assert_eq!(
        ids(&pages),
        [
            "DocumentReference/d0",
            "DocumentReference/d1",
            "DocumentReference/d2",
            "DocumentReference/d3",
            "DocumentReference/d4"
        ]
    );
    let (_, last) = pages.last().unwrap();
    assert!(last.documents.is_empty() && last.notices.is_empty());
    let end = last.next_cursor.clone().expect("resumable");
    assert_eq!(end, format!(r#"{{"v":1,"since":"{}","seen":["d4"]}}"#, ts(4)));
    // the cursor of the last non-empty page equals the end: nothing new
    assert_eq!(pages[pages.len() - 2].1.next_cursor.as_deref(), Some(end.as_str()));

    // the next pass from the end: nothing, same cursor
    let again = pass(&mut s, &mut t, Some(end.clone()));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.next_cursor.as_deref(), Some(end.as_str()));

    // a new document and an update of an old one
    t.docs.push(doc("d9", &ts(9)));
    let mut updated = doc("d1", &ts(10));
    updated["meta"]["versionId"] = json!("2");
    t.docs.retain(|d| d["id"] != "d1");
    t.docs.push(updated);
    t.files.insert(format!("{BASE}/Binary/d9"), (200, b"pdf".to_vec()));
    let more = pass(&mut s, &mut t, Some(end));
    assert_eq!(ids(&more), ["DocumentReference/d9", "DocumentReference/d1"]);
    let d1 = &more[0].1.documents[1].item;
    assert!(d1.attributes.contains(&("fhir.version-id".into(), "2".into())));

    // a remembered cursor from the middle replays the same documents
    let mid = pages[1].0.clone();
    let replay = s.scan(&mut t, mid.as_deref()).unwrap();
    assert_eq!(
        replay.documents.iter().map(|d| d.item.id.as_str()).collect::<Vec<_>>(),
        ["DocumentReference/d2", "DocumentReference/d3"]
    );
}

#[test]
fn an_item_carries_keys_facts_and_attributes() {
    let mut t = Fake::with(vec![doc("d0", &ts(0))]);
    let mut s = scanner(|_| {});
    let page = s.scan(&mut t, None).unwrap();
    let d = &page.documents[0];
    assert_eq!(d.item.id, "DocumentReference/d0");
    assert_eq!(d.item.display_name, "blood.pdf");
    assert_eq!(d.item.size, 3);
    assert_eq!(d.item.file.root, "spool");
    let keys: Vec<(String, String)> = d.item.patient_keys.iter().map(|k| (k.scheme.clone(), k.value.clone())).collect();
    assert_eq!(
        keys,
        [
            ("fhir-identifier".to_string(), "urn:mrn|4711".to_string()),
            ("fhir-identifier".into(), "urn:other|x".into()),
            ("fhir-patient".into(), format!("{BASE}/Patient/p1")),
            ("name-birthdate".into(), "Muster|Erika|1970-05-01".into()),
        ]
    );
    assert_eq!(
        d.item.attributes,
        [
            ("fhir.id".to_string(), "d0".to_string()),
            ("fhir.version-id".into(), "1".into()),
            ("fhir.last-updated".into(), ts(0)),
            ("fhir.source".into(), BASE.into()),
        ]
    );
    assert_eq!(d.facts.content_type, "application/pdf");
    let kind = d.facts.kind.as_ref().unwrap();
    assert_eq!(
        (kind.system.as_str(), kind.code.as_str(), kind.display.as_str()),
        ("http://loinc.org", "11502-2", "Laboratory report")
    );
    assert_eq!(d.facts.date.as_deref(), Some("2024-03-17T10:00:00Z"));
    assert_eq!(d.facts.title.as_deref(), Some("blood.pdf"));
    assert_eq!(d.facts.author.as_deref(), Some("Labor Dr. Schmidt"));
    // the download: the relative url under the base, Accept the content type
    let dl = t.requests.iter().find(|r| r.url.contains("/Binary/")).unwrap();
    assert_eq!(dl.url, format!("{BASE}/Binary/d0"));
    assert_eq!(dl.headers, [("Accept".to_string(), "application/pdf".to_string())]);
    assert!(dl.retry);
    // no credentials are sent by the plugin
    assert!(t.requests.iter().all(|r| r.headers.iter().all(|(k, _)| !k.eq_ignore_ascii_case("authorization"))));

    // the patient is read once
    t.docs.push(doc("d1", &ts(1)));
    t.files.insert(format!("{BASE}/Binary/d1"), (200, b"pdf".to_vec()));
    s.scan(&mut t, page.next_cursor.as_deref()).unwrap();
    assert_eq!(t.requests.iter().filter(|r| r.url.ends_with("/Patient/p1")).count(), 1);

    // identifier_systems filters the identifier keys
    let mut s = scanner(|c| c.identifier_systems = Some(vec!["urn:mrn".into()]));
    let page = s.scan(&mut t, None).unwrap();
    let schemes: Vec<&str> = page.documents[0].item.patient_keys.iter().map(|k| k.value.as_str()).collect();
    assert_eq!(schemes[0], "urn:mrn|4711");
    assert_eq!(page.documents[0].item.patient_keys.len(), 3);
}

#[test]
fn ties_across_pages_are_handed_out_once() {
    // 7 documents with one lastUpdated, a server that pages by 2 at most
    let mut docs: Vec<Value> = (0..7).map(|i| doc(&format!("t{i}"), &ts(5))).collect();
    docs.push(doc("after", &ts(6)));
    let mut t = Fake::with(docs);
    t.max_count = Some(2);
    let mut s = scanner(|c| c.page_size = Some(2));
    let pages = pass(&mut s, &mut t, None);
    let got = ids(&pages);
    assert_eq!(got.len(), 8, "{got:?}");
    let mut dedup = got.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 8);
    assert_eq!(got.last().unwrap(), "DocumentReference/after");
    let end = pages.last().unwrap().1.next_cursor.clone().unwrap();
    assert_eq!(end, format!(r#"{{"v":1,"since":"{}","seen":["after"]}}"#, ts(6)));
    // mid-tie cursors carry the seen ids
    let mid = Cursor::decode(pages[1].1.next_cursor.as_deref()).unwrap();
    let Cursor::Position(p) = mid else { panic!() };
    assert_eq!(p.seen, ["t0", "t1", "t2", "t3"]);
    // and the search passes over them by following next within the call
    let page = s.scan(&mut t, pages[1].1.next_cursor.as_deref()).unwrap();
    assert_eq!(
        page.documents.iter().map(|d| d.item.id.as_str()).collect::<Vec<_>>(),
        ["DocumentReference/t4", "DocumentReference/t5"]
    );
}

#[test]
fn filtered_entries_advance_the_position_silently() {
    let mut a = doc("a", &ts(1));
    a["status"] = json!("entered-in-error");
    let mut b = doc("b", &ts(2));
    b["type"] = json!({ "coding": [{ "system": "http://loinc.org", "code": "18842-5" }] });
    let c = doc("c", &ts(3));
    let mut t = Fake::with(vec![a, b, c]);
    let mut s = scanner(|c| c.types = Some(vec!["11502-2".into()]));
    let pages = pass(&mut s, &mut t, None);
    assert_eq!(ids(&pages), ["DocumentReference/c"]);
    assert!(pages.iter().all(|(_, p)| p.notices.is_empty()));
    // only filtered entries left: an empty page whose position moved on
    let mut t = Fake::with(vec![{
        let mut a = doc("a", &ts(1));
        a["status"] = json!("superseded");
        a
    }]);
    let page = s.scan(&mut t, None).unwrap();
    assert!(page.documents.is_empty() && page.notices.is_empty());
    assert_eq!(page.next_cursor.unwrap(), format!(r#"{{"v":1,"since":"{}","seen":["a"]}}"#, ts(1)));
}

#[test]
fn since_is_a_floor() {
    let mut t = Fake::with((0..4).map(|i| doc(&format!("d{i}"), &ts(i))).collect());
    let mut s = scanner(|c| c.since = Some(ts(2)));
    assert_eq!(ids(&pass(&mut s, &mut t, None)), ["DocumentReference/d2", "DocumentReference/d3"]);
    let old =
        Cursor::Position(Position { since: Some((ts(0), parse_instant(&ts(0)).unwrap())), seen: vec![] }).encode();
    assert_eq!(ids(&pass(&mut s, &mut t, Some(old))), ["DocumentReference/d2", "DocumentReference/d3"]);
    assert!(t.requests.iter().any(|r| r.url.contains("_lastUpdated=ge2024-01-01T00%3A00%3A02.000Z")));
}

#[test]
fn a_server_ignoring_sort_degrades_to_a_full_paging_scan() {
    let docs = vec![doc("b", &ts(3)), doc("a", &ts(1)), doc("c", &ts(2)), doc("d", &ts(4)), doc("e", &ts(0))];
    let mut t = Fake::with(docs);
    t.ignore_sort = true;
    let mut s = scanner(|c| c.page_size = Some(2));
    let pages = pass(&mut s, &mut t, None);
    assert_eq!(ids(&pages).len(), 5);
    let (_, last) = pages.last().unwrap();
    assert_eq!(last.next_cursor, None, "a full scan ends without a cursor");
    for (_, p) in &pages[..pages.len() - 1] {
        let c = p.next_cursor.as_deref().unwrap();
        assert!(c.starts_with(r#"{"v":1,"next":"#), "{c}");
    }
    // entries without lastUpdated likewise
    let mut x = doc("x", &ts(1));
    x["meta"] = json!({});
    let mut t = Fake::with(vec![doc("w", &ts(0)), x]);
    let pages = pass(&mut s, &mut t, None);
    let mut got = ids(&pages);
    got.sort();
    assert_eq!(got, ["DocumentReference/w", "DocumentReference/x"]);
    assert_eq!(pages.last().unwrap().1.next_cursor, None);
    let x = &pages.iter().flat_map(|(_, p)| &p.documents).find(|d| d.item.id.ends_with("/x")).unwrap().item;
    assert!(!x.attributes.iter().any(|(k, _)| k == "fhir.last-updated"));
}

#[test]
fn more_ties_than_seen_holds_go_on_by_paging() {
    let docs: Vec<Value> = (0..SEEN_CAP + 3).map(|i| doc(&format!("t{i:04}"), &ts(1))).collect();
    let mut t = Fake::with(docs);
    let mut s = scanner(|c| c.page_size = Some(200));
    let pages = pass(&mut s, &mut t, None);
    let got = ids(&pages);
    assert_eq!(got.len(), SEEN_CAP + 3);
    assert_eq!(pages.last().unwrap().1.next_cursor, None);
    assert!(pages.iter().all(|(_, p)| p.next_cursor.as_ref().is_none_or(|c| c.len() <= 64 * 1024)));
}

#[test]
fn inline_data_is_decoded_checked_and_spooled() {
    let mut d = doc("i", &ts(0));
    // "hello", SHA-1 base64 qvTGHdzF6KLavt4PO0gs2a6pQ00=
    d["content"] = json!([{ "attachment": { "contentType": "text/plain; charset=utf-8", "data": "aGVs\nbG8=", "size": 5, "hash": "qvTGHdzF6KLavt4PO0gs2a6pQ00=" } }]);
    let mut t = Fake::with(vec![d.clone()]);
    let mut s = scanner(|_| {});
    let page = s.scan(&mut t, None).unwrap();
    assert_eq!(page.notices, []);
    assert_eq!(t.spooled, [b"hello".to_vec()]);
    let item = &page.documents[0].item;
    assert_eq!(item.display_name, "i.txt");
    assert_eq!(page.documents[0].facts.content_type, "text/plain");
    assert_eq!(page.documents[0].facts.title.as_deref(), Some("Blood panel"));

    let notice = |d: Value| {
        let mut t = Fake::with(vec![d]);
        let page = scanner(|_| {}).scan(&mut t, None).unwrap();
        assert!(page.documents.is_empty());
        page.notices[0].clone()
    };
    let mut bad = d.clone();
    bad["content"][0]["attachment"]["hash"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let n = notice(bad);
    assert_eq!((n.subject.as_str(), n.outcome), ("DocumentReference/i", NoticeOutcome::Fail));
    assert!(n.reason.contains("hash"));
    let mut bad = d.clone();
    bad["content"][0]["attachment"]["data"] = json!("not base64!");
    assert!(notice(bad).reason.contains("base64"));
    let mut big = d.clone();
    big["content"][0]["attachment"]["data"] = json!("A".repeat((16 << 20) / 3 * 4 + 8));
    assert!(notice(big).reason.contains("16 MiB"));
    let mut bad = d;
    bad["content"][0]["attachment"]["size"] = json!(6);
    bad["content"][0]["attachment"]["hash"] = Value::Null;
    assert!(notice(bad).reason.contains("attachment.size says 6 bytes, but 5"));
}

#[test]
fn urls_relative_absolute_and_denied() {
    let mut d = doc("a", &ts(0));
    d["content"][0]["attachment"]["url"] = json!("https://files.example/x/1.pdf");
    let mut t = Fake::with(vec![d.clone()]);
    t.files.insert("https://files.example/x/1.pdf".into(), (200, b"pdf".to_vec()));
    let page = scanner(|_| {}).scan(&mut t, None).unwrap();
    assert_eq!(page.documents.len(), 1);
    assert!(t.requests.iter().any(|r| r.url == "https://files.example/x/1.pdf"));

    t.denied.push("files.example".into());
    let page = scanner(|_| {}).scan(&mut t, None).unwrap();
    let n = &page.notices[0];
    assert_eq!(n.outcome, NoticeOutcome::Fail);
    assert!(n.reason.contains("\"files.example\" to the source's grants.http"), "{}", n.reason);

    let mut d = doc("a", &ts(0));
    d["content"][0]["attachment"]["url"] = json!("/other/Binary/a");
    let mut t = Fake::with(vec![d]);
    t.files.insert("http://fhir.test/other/Binary/a".into(), (200, b"pdf".to_vec()));
    assert_eq!(scanner(|_| {}).scan(&mut t, None).unwrap().documents.len(), 1);

    let mut d = doc("a", &ts(0));
    d["content"][0]["attachment"]["url"] = json!("urn:uuid:1234");
    let mut t = Fake::with(vec![d]);
    let n = scanner(|_| {}).scan(&mut t, None).unwrap().notices[0].clone();
    assert_eq!(n.outcome, NoticeOutcome::Skip);
    assert!(n.reason.contains("urn"));
}

#[test]
fn download_statuses() {
    let run = |status: u16| {
        let mut t = Fake::with(vec![doc("a", &ts(0))]);
        t.files.insert(format!("{BASE}/Binary/a"), (status, vec![]));
        scanner(|_| {}).scan(&mut t, None)
    };
    let n = run(404).unwrap().notices[0].clone();
    assert_eq!(n.outcome, NoticeOutcome::Fail);
    assert!(n.reason.contains("404"));
    assert_eq!(run(410).unwrap().notices[0].outcome, NoticeOutcome::Fail);
    assert_eq!(run(503).unwrap_err().kind, ErrorKind::Retryable);
    assert_eq!(run(429).unwrap_err().kind, ErrorKind::Retryable);
    let e = run(401).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("http grant"));
    // the size check of a download
    let mut t = Fake::with(vec![doc("a", &ts(0))]);
    t.files.insert(format!("{BASE}/Binary/a"), (200, b"pdfx".to_vec()));
    let n = scanner(|_| {}).scan(&mut t, None).unwrap().notices[0].clone();
    assert!(n.reason.contains("attachment.size says 3 bytes, but 4"), "{}", n.reason);
}

#[test]
fn subjects_and_attachments_that_cannot_be_used() {
    let reason = |f: &dyn Fn(&mut Value)| {
        let mut d = doc("a", &ts(0));
        f(&mut d);
        let mut t = Fake::with(vec![d]);
        let page = scanner(|_| {}).scan(&mut t, None).unwrap();
        assert!(page.documents.is_empty());
        let n = page.notices[0].clone();
        assert_eq!(n.subject, "DocumentReference/a");
        (n.outcome, n.reason)
    };
    assert_eq!(
        reason(&|d| d.as_object_mut().unwrap().remove("subject").map(|_| ()).unwrap()),
        (NoticeOutcome::Skip, "no subject".into())
    );
    let (o, r) = reason(&|d| d["subject"] = json!({ "reference": "Group/g1" }));
    assert_eq!(o, NoticeOutcome::Skip);
    assert!(r.contains("Group"));
    let (o, r) = reason(&|d| d["subject"] = json!({ "reference": "https://elsewhere/Patient/p1" }));
    assert_eq!(o, NoticeOutcome::Skip);
    assert!(r.contains("another server"));
    let (o, r) = reason(&|d| d["subject"] = json!({ "reference": "Patient/nobody" }));
    assert_eq!(o, NoticeOutcome::Fail);
    assert!(!r.contains("nobody"), "no patient id in notices: {r}");
    let (o, r) = reason(&|d| d["content"] = json!([]));
    assert_eq!((o, r.as_str()), (NoticeOutcome::Skip, "no attachment"));
    let (o, r) = reason(&|d| d["content"][0]["attachment"]["contentType"] = json!("application/dicom"));
    assert_eq!(o, NoticeOutcome::Skip);
    assert!(r.contains("application/dicom"));
    // absolute subject on this server and a history reference are fine
    for r in [format!("{BASE}/Patient/p1"), "Patient/p1/_history/3".into()] {
        let mut d = doc("a", &ts(0));
        d["subject"] = json!({ "reference": r });
        let mut t = Fake::with(vec![d]);
        assert_eq!(scanner(|_| {}).scan(&mut t, None).unwrap().documents.len(), 1);
    }
}

#[test]
fn the_best_content_type_wins() {
    let mut d = doc("a", &ts(0));
    d["content"] = json!([
        { "attachment": { "contentType": "image/png", "url": "Binary/png" } },
        { "attachment": { "contentType": "application/pdf", "url": "Binary/pdf" } },
    ]);
    let mut t = Fake::with(vec![d]);
    t.files.insert(format!("{BASE}/Binary/pdf"), (200, b"pdf".to_vec()));
    let page = scanner(|_| {}).scan(&mut t, None).unwrap();
    assert_eq!(page.documents[0].item.display_name, "a.pdf");
    let page = scanner(|c| c.content_types = Some(vec!["image/png".into()])).scan(&mut t, None);
    let _ = page;
    assert!(t.requests.iter().any(|r| r.url.ends_with("Binary/png")));
}

#[test]
fn search_errors() {
    let run = |status: u16| {
        let mut t = Fake::with(vec![]);
        t.search_status = status;
        scanner(|_| {}).scan(&mut t, None).unwrap_err()
    };
    assert_eq!(run(503).kind, ErrorKind::Retryable);
    let e = run(403);
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("fhir.test") && e.message.contains("http grant"), "{}", e.message);
    assert_eq!(run(400).kind, ErrorKind::Permanent);
}

#[test]
fn an_empty_server_ends_at_once_with_the_top_position() {
    let mut t = Fake::with(vec![]);
    let page = scanner(|_| {}).scan(&mut t, None).unwrap();
    assert!(page.documents.is_empty() && page.notices.is_empty());
    assert_eq!(page.next_cursor.as_deref(), Some(r#"{"v":1}"#));
}

/// A search answer as a hostile (or broken) server might send it.
fn hostile(body: fn(&str) -> Vec<u8>) -> Fake {
    let mut t = Fake::with(vec![doc("a", &ts(0))]);
    t.raw_search = Some(body);
    t
}

#[test]
fn answers_that_are_not_bundles_are_refused_without_harm() {
    let refused = |body: fn(&str) -> Vec<u8>| {
        let mut t = hostile(body);
        let e = scanner(|_| {}).scan(&mut t, None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Retryable, "{}", e.message);
        assert!(e.message.contains("fhir.test"), "{}", e.message);
        e.message
    };
    // nested 100,000 deep: the JSON parser's depth limit, not the stack
    let m = refused(|_| {
        let mut b = br#"{"resourceType":"Bundle","entry":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', 100_000));
        b.extend(std::iter::repeat_n(b']', 100_000));
        b.push(b'}');
        b
    });
    assert!(m.contains("not JSON"), "{m}");
    assert!(refused(|_| b"{\"resourceType\":\"Bundle\",\"entry\":[".to_vec()).contains("not JSON"));
    assert!(refused(|_| b"\xff\xfe{}".to_vec()).contains("not JSON"));
    assert!(refused(|_| br#"{"resourceType":"OperationOutcome"}"#.to_vec()).contains("not a Bundle"));
    assert!(refused(|_| br#"{"resourceType":"Bundle","entry":{"resource":{}}}"#.to_vec()).contains("not a list"));
}

#[test]
fn entries_that_lie_become_notices_never_items() {
    let mut t = hostile(|_| {
        let bad_ids = [json!("../../etc/passwd"), json!("x".repeat(65)), json!(7), json!("")];
        let mut entries: Vec<Value> = bad_ids
            .iter()
            .map(|id| {
                let mut d = doc("a", &ts(0));
                d["id"] = id.clone();
                json!({ "resource": d })
            })
            .collect();
        // not DocumentReferences, included resources, garbage entries: passed over
        entries.push(json!({ "resource": { "resourceType": "Patient", "id": "p1" } }));
        entries.push(json!({ "resource": doc("b", &ts(0)), "search": { "mode": "include" } }));
        entries.push(json!("just a string"));
        entries.push(json!({ "resource": [1, 2, 3] }));
        serde_json::to_vec(&json!({ "resourceType": "Bundle", "entry": entries })).unwrap()
    });
    let page = scanner(|_| {}).scan(&mut t, None).unwrap();
    assert!(page.documents.is_empty(), "{:?}", page.documents.iter().map(|d| &d.item.id).collect::<Vec<_>>());
    assert_eq!(page.notices.len(), 4, "{:?}", page.notices);
    assert!(page.notices.iter().all(|n| n.outcome == NoticeOutcome::Fail && !n.subject.contains("passwd")));
    // nothing was downloaded for them
    assert!(t.spooled.is_empty());
}

#[test]
fn next_links_that_go_round_end_the_pass() {
    // a page whose next link is the page itself (entries without
    // meta.lastUpdated: paging mode)
    let mut t = hostile(|url| {
        let mut d = doc("a", &ts(0));
        d["meta"].as_object_mut().unwrap().remove("lastUpdated");
        let links = [json!({ "relation": "next", "url": url })];
        serde_json::to_vec(&json!({ "resourceType": "Bundle", "link": links, "entry": [{ "resource": d }] })).unwrap()
    });
    let pages = pass(&mut scanner(|_| {}), &mut t, None);
    let last = &pages.last().unwrap().1;
    assert_eq!(last.next_cursor, None, "the pass ends");
    assert!(last.notices.iter().any(|n| n.reason.contains("next link is the page itself")), "{:?}", last.notices);
    assert!(t.requests.len() < 10, "{} requests", t.requests.len());

    // two pages pointing at each other: the pass ends after MAX_PAGES pages
    let mut t = hostile(|url| {
        let mut d = doc(if url.contains("page=b") { "b" } else { "a" }, &ts(0));
        d["meta"].as_object_mut().unwrap().remove("lastUpdated");
        let other = if url.contains("page=b") { "a" } else { "b" };
        let links = [json!({ "relation": "next", "url": format!("{BASE}/DocumentReference?page={other}") })];
        serde_json::to_vec(&json!({ "resourceType": "Bundle", "link": links, "entry": [{ "resource": d }] })).unwrap()
    });
    t.files.insert(format!("{BASE}/Binary/b"), (200, b"pdf".to_vec()));
    let mut s = scanner(|_| {});
    let mut cursor = None;
    let mut calls = 0;
    let last = loop {
        let page = s.scan(&mut t, cursor.as_deref()).unwrap();
        match page.next_cursor.clone() {
            Some(c) => cursor = Some(c),
            None => break page,
        }
        calls += 1;
        assert!(calls < 2 * crate::scan::MAX_PAGES, "the pass does not end");
    };
    assert!(last.notices.iter().any(|n| n.reason.contains("search pages in one pass")), "{:?}", last.notices);
    let searches = t.requests.iter().filter(|r| r.url.contains("/DocumentReference?")).count();
    assert_eq!(searches, crate::scan::MAX_PAGES + 1, "the first page and MAX_PAGES links");
}
