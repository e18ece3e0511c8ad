//! Tests of the FHIR test server through a real HTTP client (reqwest): the
//! FHIR sink's end-to-end tests trust it to behave as the spec says, so
//! each behaviour a client relies on is pinned here.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::fhir_server::{FHIR_JSON, JWT_BEARER, OAUTH_URIS};
use super::*;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body[..self.body.len().min(500)])))
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The OperationOutcome's first issue code (panics if it is not one).
    fn issue_code(&self) -> String {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
        assert_eq!(v["issue"][0]["severity"], "error", "{v}");
        assert!(v["issue"][0]["diagnostics"].is_string(), "{v}");
        v["issue"][0]["code"].as_str().unwrap_or_default().to_owned()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Answer { status, headers, body: r.bytes().await.expect("body").to_vec() }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(url: &str) -> Answer {
    send(client().get(url)).await
}

fn post_json(url: &str, body: &Value) -> reqwest::RequestBuilder {
    client().post(url).header("content-type", FHIR_JSON).body(body.to_string())
}

fn put_json(url: &str, body: &Value) -> reqwest::RequestBuilder {
    client().put(url).header("content-type", FHIR_JSON).body(body.to_string())
}

/// `?a=b&…`, form-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    format!("?{}", serde_urlencoded::to_string(pairs).unwrap())
}

/// The ids of a searchset Bundle's entries (checking each entry's shape).
fn entry_ids(bundle: &Value, base: &str) -> Vec<String> {
    assert_eq!((&bundle["resourceType"], &bundle["type"]), (&json!("Bundle"), &json!("searchset")), "{bundle}");
    bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            let id = r["id"].as_str().expect("entry resource id");
            assert_eq!(e["fullUrl"], format!("{base}/{}/{id}", r["resourceType"].as_str().unwrap()));
            assert_eq!(e["search"]["mode"], "match");
            id.to_owned()
        })
        .collect()
}

fn link<'a>(bundle: &'a Value, relation: &str) -> Option<&'a str> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str()
}

async fn search(server: &FhirServer, type_: &str, pairs: &[(&str, &str)]) -> (u64, Vec<String>) {
    let a = get(&format!("{}{}", server.url(type_), query(pairs))).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let b = a.json();
    (b["total"].as_u64().expect("total"), entry_ids(&b, &server.base_url()))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ------------------------------------------------------------- patients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_patient_create_read_and_search_by_identifier() {
    let server = FhirServer::start();
    let p1 = server.add_patient(&[("urn:pms", "C-1"), ("urn:ssn", "123")]);
    let p2 = server.add_patient(&[("", "C-1")]);
    let created = send(post_json(
        &server.url("Patient"),
        &json!({"resourceType": "Patient", "id": "ignored", "identifier": [{"system": "urn:pms", "value": "C-2"}]}),
    ))
    .await;
    assert_eq!(created.status, 201);
    assert!(created.header("content-type").starts_with(FHIR_JSON));
    let p3 = created.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(p3, "ignored", "the server assigns ids on create");
    assert_eq!(created.header("location"), format!("{}/Patient/{p3}/_history/1", server.base_url()));

    assert_eq!(search(&server, "Patient", &[("identifier", "urn:pms|C-1")]).await, (1, vec![p1.clone()]));
    let (total, ids) = search(&server, "Patient", &[("identifier", "C-1")]).await;
    assert_eq!((total, sorted(ids)), (2, sorted(vec![p1.clone(), p2.clone()])), "no system: any system");
    assert_eq!(search(&server, "Patient", &[("identifier", "|C-1")]).await, (1, vec![p2.clone()]), "|v: no system");
    let (total, ids) = search(&server, "Patient", &[("identifier", "urn:pms|")]).await;
    assert_eq!((total, sorted(ids)), (2, sorted(vec![p1.clone(), p3.clone()])), "s|: any value in s");
    let (total, ids) = search(&server, "Patient", &[("identifier", "urn:pms|C-1,urn:pms|C-2")]).await;
    assert_eq!((total, sorted(ids)), (2, sorted(vec![p1.clone(), p3.clone()])), "commas OR");
    assert_eq!(search(&server, "Patient", &[("identifier", "urn:ssn|123")]).await, (1, vec![p1.clone()]));
    assert_eq!(search(&server, "Patient", &[("identifier", "urn:pms|C-9")]).await, (0, vec![]));
    assert_eq!(search(&server, "Patient", &[("_id", &p2)]).await, (1, vec![p2.clone()]));
    // `|` sent unencoded, as many clients do.
    let a = get(&format!("{}?identifier=urn:pms|C-1", server.url("Patient"))).await;
    assert_eq!(entry_ids(&a.json(), &server.base_url()), vec![p1.clone()]);

    let read = get(&format!("{}/{p3}", server.url("Patient"))).await;
    assert_eq!((read.status, read.header("etag")), (200, "W/\"1\""));
    assert_eq!(read.json(), created.json());
    assert!(read.header("last-modified").ends_with(" GMT"));

    // Errors are OperationOutcomes.
    let a = get(&format!("{}/nope", server.url("Patient"))).await;
    assert_eq!((a.status, a.issue_code()), (404, "not-found".into()));
    let a = get(&format!("{}/Observation/1", server.base_url())).await;
    assert_eq!((a.status, a.issue_code()), (404, "not-supported".into()));
    let a = send(post_json(&server.url("Patient"), &json!({"resourceType": "DocumentReference"}))).await;
    assert_eq!((a.status, a.issue_code()), (400, "invalid".into()));
    let a =
        send(client().post(server.url("Patient")).header("content-type", FHIR_JSON).body("{\"resourceType\":")).await;
    assert_eq!((a.status, a.issue_code()), (400, "structure".into()));
    let a =
        send(client().post(server.url("Patient")).header("content-type", "application/fhir+xml").body("<Patient/>"))
            .await;
    assert_eq!((a.status, a.issue_code()), (415, "not-supported".into()));
    let a = get(&format!("{}?name=Smith", server.url("Patient"))).await;
    assert_eq!((a.status, a.issue_code()), (400, "not-supported".into()), "unknown parameters are refused");
    let a = send(client().delete(format!("{}/{p1}", server.url("Patient")))).await;
    assert_eq!((a.status, a.issue_code()), (405, "not-supported".into()));
    assert_eq!(server.count("Patient"), 3);
}

// ---------------------------------------------------- document references

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_conditional_create_201_then_200_then_412() {
    let server = FhirServer::start();
    let patient = server.add_patient(&[("urn:pms", "C-1")]);
    let doc = document_reference(&patient, "urn:ferry", "img-1");
    let create =
        || post_json(&server.url("DocumentReference"), &doc).header("if-none-exist", "identifier=urn:ferry|img-1");

    let first = send(create()).await;
    assert_eq!(first.status, 201);
    let stored = first.json();
    let id = stored["id"].as_str().unwrap().to_owned();
    assert_eq!(first.header("location"), format!("{}/DocumentReference/{id}/_history/1", server.base_url()));
    assert_eq!(first.header("etag"), "W/\"1\"");
    assert_eq!(stored["meta"]["versionId"], "1");
    assert!(stored["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(stored["subject"]["reference"], format!("Patient/{patient}"));
    // The Location works when followed.
    let followed = get(first.header("location")).await;
    assert_eq!((followed.status, followed.json()), (200, stored.clone()));

    let second = send(create()).await;
    assert_eq!(second.status, 200, "an existing match is returned, not created");
    assert_eq!(second.json(), stored);
    assert_eq!((server.count("DocumentReference"), server.history("DocumentReference", &id).len()), (1, 1));

    // A second resource with the same identifier: the condition is ambiguous.
    server.add_resource(document_reference(&patient, "urn:ferry", "img-1"));
    let third = send(create()).await;
    assert_eq!((third.status, third.issue_code()), (412, "multiple-matches".into()));
    assert_eq!(server.count("DocumentReference"), 2);

    // A non-matching condition creates; no condition always creates.
    let other = send(
        post_json(&server.url("DocumentReference"), &document_reference(&patient, "urn:ferry", "img-2"))
            .header("if-none-exist", "identifier=urn:ferry|img-2"),
    )
    .await;
    assert_eq!(other.status, 201);
    assert_eq!(send(post_json(&server.url("DocumentReference"), &doc)).await.status, 201);
    assert_eq!(server.count("DocumentReference"), 4);

    // Checked: required elements and the subject's existence.
    let mut no_status = doc.clone();
    no_status.as_object_mut().unwrap().remove("status");
    let a = send(post_json(&server.url("DocumentReference"), &no_status)).await;
    assert_eq!((a.status, a.issue_code()), (400, "required".into()));
    let a = send(post_json(&server.url("DocumentReference"), &document_reference("nobody", "urn:ferry", "x"))).await;
    assert_eq!((a.status, a.issue_code()), (400, "processing".into()));
    assert_eq!(server.count("DocumentReference"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_update_checks_if_match_and_versions() {
    let server = FhirServer::start();
    let patient = server.add_patient(&[("urn:pms", "C-1")]);
    let created =
        send(post_json(&server.url("DocumentReference"), &document_reference(&patient, "urn:ferry", "a"))).await.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let url = format!("{}/{id}", server.url("DocumentReference"));
    let mut changed = created.clone();
    changed["description"] = json!("re-sent");

    let v2 = send(put_json(&url, &changed).header("if-match", "W/\"1\"")).await;
    assert_eq!((v2.status, v2.header("etag")), (200, "W/\"2\""));
    let v2 = v2.json();
    assert_eq!((&v2["meta"]["versionId"], &v2["description"]), (&json!("2"), &json!("re-sent")));
    assert!(v2["meta"]["lastUpdated"].as_str() > created["meta"]["lastUpdated"].as_str(), "lastUpdated moves on");

    // A stale version is refused and changes nothing.
    let stale = send(put_json(&url, &created).header("if-match", "W/\"1\"")).await;
    assert_eq!((stale.status, stale.issue_code()), (412, "conflict".into()));
    assert_eq!(server.resource("DocumentReference", &id).unwrap()["description"], "re-sent");

    // Without If-Match the update is unconditional.
    let v3 = send(put_json(&url, &created)).await;
    assert_eq!((v3.status, v3.json()["meta"]["versionId"].clone()), (200, json!("3")));
    assert_eq!(server.history("DocumentReference", &id).len(), 3);
    let vread = get(&format!("{url}/_history/2")).await;
    assert_eq!((vread.status, vread.json()["description"].clone()), (200, json!("re-sent")));
    assert_eq!(get(&format!("{url}/_history/9")).await.status, 404);

    // The body's id must be the path's.
    let a = send(put_json(&format!("{}/other", server.url("DocumentReference")), &created)).await;
    assert_eq!((a.status, a.issue_code()), (400, "invalid".into()));
    // Update of an unknown id: If-Match fails, otherwise it creates.
    let mut new = document_reference(&patient, "urn:ferry", "b");
    new["id"] = json!("client-7");
    let url7 = format!("{}/client-7", server.url("DocumentReference"));
    assert_eq!(send(put_json(&url7, &new).header("if-match", "W/\"1\"")).await.status, 412);
    let a = send(put_json(&url7, &new)).await;
    assert_eq!((a.status, a.header("location").ends_with("/DocumentReference/client-7/_history/1")), (201, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_paging_through_next_links_collects_every_document_once() {
    let server = FhirServer::builder().base_path("/fhir/r4/").page_size(10).start();
    assert!(server.base_url().ends_with("/fhir/r4"));
    let (p1, p2) = (server.add_patient(&[("urn:pms", "C-1")]), server.add_patient(&[("urn:pms", "C-2")]));
    let seed = |patient: &str, n: usize, last_updated: Option<String>| {
        let mut d = document_reference(patient, "urn:ferry", &format!("{patient}-{n}"));
        if let Some(t) = last_updated {
            d["meta"] = json!({ "lastUpdated": t });
        }
        server.add_resource(d)
    };
    // 15 sharing one timestamp (ties broken by id), 15 spread out, 15 on
    // the server's clock, and 5 of another patient in between.
    for n in 0..15 {
        seed(&p1, n, Some("2025-01-01T00:00:00.000Z".into()));
    }
    for n in 15..30 {
        seed(&p1, n, Some(format!("2024-06-{:02}T12:00:00.{:03}+02:00", n - 14, n)));
    }
    for n in 0..5 {
        seed(&p2, n, None);
    }
    for n in 30..45 {
        let a =
            send(post_json(&server.url("DocumentReference"), &document_reference(&p1, "urn:ferry", &n.to_string())))
                .await;
        assert_eq!(a.status, 201);
    }
    let expected: Vec<String> = server
        .resources("DocumentReference")
        .iter()
        .filter(|d| d["subject"]["reference"] == format!("Patient/{p1}"))
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(expected.len(), 45);

    let patient_ref = format!("Patient/{p1}");
    let first = format!(
        "{}{}",
        server.url("DocumentReference"),
        query(&[("patient", &patient_ref), ("_sort", "_lastUpdated"), ("_count", "7")])
    );
    let (mut url, mut seen, mut pages, mut stamps) = (Some(first.clone()), Vec::new(), 0, Vec::new());
    while let Some(u) = url.take() {
        let a = get(&u).await;
        assert_eq!(a.status, 200, "{u}");
        let bundle = a.json();
        assert_eq!(bundle["total"], 45, "total counts every match, on every page");
        assert_eq!(link(&bundle, "self"), Some(u.as_str()));
        let ids = entry_ids(&bundle, &server.base_url());
        assert!(!ids.is_empty() && ids.len() <= 7);
        for e in bundle["entry"].as_array().unwrap() {
            stamps.push(e["resource"]["meta"]["lastUpdated"].as_str().unwrap().to_owned());
        }
        seen.extend(ids);
        pages += 1;
        url = link(&bundle, "next").map(|n| {
            assert!(n.starts_with(&format!("{}/DocumentReference?", server.base_url())), "absolute, on the base: {n}");
            n.to_owned()
        });
    }
    assert_eq!(pages, 7);
    assert_eq!(seen, expected, "every document once, in (lastUpdated, id) order");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 45);
    assert!(stamps[15..30].iter().all(|s| s == "2025-01-01T00:00:00.000Z"), "the ties stay together");

    // Descending order is the reverse.
    let (_, desc) =
        search(&server, "DocumentReference", &[("patient", &p1), ("_sort", "-_lastUpdated"), ("_count", "100")]).await;
    assert_eq!(desc, expected.iter().rev().cloned().collect::<Vec<_>>());

    // A document updated while a client pages moves behind the cursor: it
    // is seen again, and nothing is skipped.
    let a = get(&first).await.json();
    let on_page_one = entry_ids(&a, &server.base_url())[0].clone();
    let mut doc = server.resource("DocumentReference", &on_page_one).unwrap();
    doc["description"] = json!("changed");
    let doc_url = format!("{}/{on_page_one}", server.url("DocumentReference"));
    assert_eq!(send(put_json(&doc_url, &doc)).await.status, 200);
    let (mut url, mut seen) = (link(&a, "next").map(str::to_owned), entry_ids(&a, &server.base_url()));
    while let Some(u) = url.take() {
        let b = get(&u).await.json();
        seen.extend(entry_ids(&b, &server.base_url()));
        url = link(&b, "next").map(str::to_owned);
    }
    assert_eq!(seen.len(), 46);
    assert_eq!(seen.iter().filter(|i| **i == on_page_one).count(), 2);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 45);

    // The other spellings of the patient, and `subject`.
    for (name, value) in [
        ("patient", p2.clone()),
        ("patient", format!("{}/Patient/{p2}", server.base_url())),
        ("subject", format!("Patient/{p2}")),
        ("subject", p2.clone()),
    ] {
        let (total, ids) = search(&server, "DocumentReference", &[(name, &value)]).await;
        assert_eq!((total, ids.len()), (5, 5), "{name}={value}");
    }
    // Default page size and `_count=0`.
    let b = get(&format!("{}{}", server.url("DocumentReference"), query(&[("subject", &patient_ref)]))).await.json();
    assert_eq!((b["total"].as_u64(), entry_ids(&b, &server.base_url()).len()), (Some(45), 10));
    let b = get(&format!("{}?_count=0", server.url("DocumentReference"))).await.json();
    assert_eq!((b["total"].as_u64(), b.get("entry"), link(&b, "next")), (Some(50), None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_last_updated_filters_by_prefix_and_precision() {
    let server = FhirServer::start();
    let p = server.add_patient(&[("urn:pms", "C-1")]);
    let at = |t: &str, n: &str| {
        let mut d = document_reference(&p, "urn:ferry", n);
        d["meta"] = json!({ "lastUpdated": t });
        server.add_resource(d)
    };
    let t1 = at("2025-03-01T10:00:00.000Z", "t1");
    let t2 = at("2025-03-01T10:00:00.001Z", "t2");
    let t3 = at("2025-03-02T08:30:00.000Z", "t3");
    let created = send(post_json(&server.url("DocumentReference"), &document_reference(&p, "urn:ferry", "new"))).await;
    let new = created.json()["id"].as_str().unwrap().to_owned();
    let new_stamp = created.json()["meta"]["lastUpdated"].as_str().unwrap().to_owned();

    let ids = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    type Params<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Params, Vec<String>); 9] = [
        (&[("_lastUpdated", "gt2025-03-01T10:00:00.000Z")], ids(&[&t2, &t3, &new])),
        (&[("_lastUpdated", "ge2025-03-01T10:00:00.000Z")], ids(&[&t1, &t2, &t3, &new])),
        (&[("_lastUpdated", "gt2025-03-02T08:30:00.000Z")], ids(&[&new])),
        (&[("_lastUpdated", "lt2025-03-02")], ids(&[&t1, &t2])),
        // Day precision: "after that day".
        (&[("_lastUpdated", "gt2025-03-01")], ids(&[&t3, &new])),
        (&[("_lastUpdated", "2025-03-01")], ids(&[&t1, &t2])),
        // Second precision covers the whole second; offsets are honoured.
        (&[("_lastUpdated", "gt2025-03-01T11:00:00+01:00")], ids(&[&t3, &new])),
        (&[("_lastUpdated", "ge2025-03-01T10:00:00.001Z"), ("_lastUpdated", "lt2025-03-02T08:30:00Z")], ids(&[&t2])),
        (&[("_lastUpdated", &format!("gt{new_stamp}"))], vec![]),
    ];
    for (params, want) in cases {
        let (total, got) = search(&server, "DocumentReference", params).await;
        assert_eq!((total as usize, got), (want.len(), want), "{params:?}");
    }
    // The incremental sync: after the last seen stamp, only what is newer.
    let later = send(post_json(&server.url("DocumentReference"), &document_reference(&p, "urn:ferry", "later"))).await;
    let later = later.json()["id"].as_str().unwrap().to_owned();
    let since = format!("gt{new_stamp}");
    assert_eq!(search(&server, "DocumentReference", &[("_lastUpdated", &since)]).await, (1, vec![later]));

    let a = get(&format!("{}?_lastUpdated=gt2025-13-01", server.url("DocumentReference"))).await;
    assert_eq!((a.status, a.issue_code()), (400, "invalid".into()));
    let a = get(&format!("{}?_lastUpdated=ap2025-03-01", server.url("DocumentReference"))).await;
    assert_eq!(a.status, 400);
}

// --------------------------------------------------------------- binary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_binary_round_trips_20_mb_raw_and_as_json() {
    let server = FhirServer::start();
    let bytes: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let url = server.url("Binary");

    // Raw bytes in, raw bytes and the resource out.
    let created = send(client().post(&url).header("content-type", "application/dicom").body(bytes.clone())).await;
    assert_eq!(created.status, 201);
    let resource = created.json();
    let id = resource["id"].as_str().unwrap().to_owned();
    assert_eq!((&resource["resourceType"], &resource["contentType"]), (&json!("Binary"), &json!("application/dicom")));
    assert!(STANDARD.decode(resource["data"].as_str().unwrap()).unwrap() == bytes);
    let raw = get(&format!("{url}/{id}")).await;
    assert_eq!((raw.status, raw.header("content-type"), raw.header("etag")), (200, "application/dicom", "W/\"1\""));
    assert!(raw.body == bytes, "raw bytes differ ({} bytes back)", raw.body.len());
    let as_json = send(client().get(format!("{url}/{id}")).header("accept", FHIR_JSON)).await;
    assert!(as_json.header("content-type").starts_with(FHIR_JSON));
    let v = as_json.json();
    assert_eq!((&v["id"], &v["contentType"]), (&json!(id), &json!("application/dicom")));
    assert!(STANDARD.decode(v["data"].as_str().unwrap()).unwrap() == bytes);
    assert!(server.binary(&id) == Some(("application/dicom".into(), bytes.clone())));

    // A Binary resource in, the bytes out.
    let body = json!({ "resourceType": "Binary", "contentType": "application/pdf", "data": STANDARD.encode(&bytes) });
    let created = send(post_json(&url, &body).header("prefer", "return=minimal")).await;
    assert_eq!((created.status, created.body.len()), (201, 0));
    let location = created.header("location").to_owned();
    let id2 = location.split('/').rev().nth(2).unwrap().to_owned();
    let raw = get(&format!("{url}/{id2}")).await;
    assert_eq!((raw.status, raw.header("content-type")), (200, "application/pdf"));
    assert!(raw.body == bytes);
    assert_eq!(get(&location).await.body.len(), bytes.len(), "vread answers raw too");

    // `data` must be base64; a Binary resource must say its contentType.
    let a =
        send(post_json(&url, &json!({ "resourceType": "Binary", "contentType": "text/plain", "data": "%%" }))).await;
    assert_eq!((a.status, a.issue_code()), (400, "value".into()));
    let a = send(post_json(&url, &json!({ "resourceType": "Binary" }))).await;
    assert_eq!((a.status, a.issue_code()), (400, "required".into()));
}

// ----------------------------------------------------------------- auth

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

fn token_request(server: &FhirServer, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    client().post(server.token_url()).header("content-type", "application/x-www-form-urlencoded").body(form(pairs))
}

/// A JWT with these claims and a signature that is not one.
fn jwt(claims: &Value) -> String {
    let header = json!({ "alg": "RS384", "typ": "JWT", "kid": "k1" });
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{}", enc(&header), enc(claims), URL_SAFE_NO_PAD.encode("not-a-signature"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn get_with_token(url: &str, token: &str) -> Answer {
    send(client().get(url).bearer_auth(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_token_endpoint_issues_tokens_that_expire() {
    let server = FhirServer::builder()
        .client_secret("ferry", "s3cret")
        .jwt_client("ferry-jwt")
        .token_lifetime(Duration::from_millis(800))
        .start();
    let patients = server.url("Patient");

    // No token: 401 with a challenge and an OperationOutcome.
    let a = get(&patients).await;
    assert_eq!((a.status, a.issue_code()), (401, "login".into()));
    assert!(a.header("www-authenticate").starts_with("Bearer realm="));
    // Discovery is public.
    let smart = get(&format!("{}/.well-known/smart-configuration", server.base_url())).await;
    assert_eq!((smart.status, smart.json()["token_endpoint"].clone()), (200, json!(server.token_url())));

    // Client secret as HTTP Basic.
    let a =
        send(token_request(&server, &[("grant_type", "client_credentials")]).basic_auth("ferry", Some("s3cret"))).await;
    assert_eq!((a.status, a.header("cache-control")), (200, "no-store"));
    let t = a.json();
    assert_eq!((&t["token_type"], &t["expires_in"]), (&json!("Bearer"), &json!(1)));
    let basic_token = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get_with_token(&patients, &basic_token).await.status, 200);
    // … and as form fields, with a scope echoed back.
    let a = send(token_request(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "ferry"),
            ("client_secret", "s3cret"),
            ("scope", "system/DocumentReference.write"),
        ],
    ))
    .await;
    assert_eq!((a.status, a.json()["scope"].clone()), (200, json!("system/DocumentReference.write")));

    // A JWT client assertion: shape and claims checked, signature not.
    let claims = |aud: &str, sub: &str| json!({ "iss": sub, "sub": sub, "aud": aud, "exp": now_secs() + 300, "jti": format!("j-{sub}-{aud}") });
    let assertion = |jwt: String| {
        token_request(
            &server,
            &[("grant_type", "client_credentials"), ("client_assertion_type", JWT_BEARER), ("client_assertion", &jwt)],
        )
    };
    let a = send(assertion(jwt(&claims(&server.token_url(), "ferry-jwt")))).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let jwt_token = a.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get_with_token(&patients, &jwt_token).await.status, 200);
    let seen = server.client_assertions();
    assert_eq!(
        (seen.len(), &seen[0]["claims"]["sub"], &seen[0]["header"]["alg"]),
        (1, &json!("ferry-jwt"), &json!("RS384"))
    );

    // Refusals, as RFC 6749 words them.
    let refusals = [
        (assertion(jwt(&claims("https://elsewhere/token", "ferry-jwt"))), 401, "invalid_client"),
        (assertion(jwt(&claims(&server.token_url(), "stranger"))), 401, "invalid_client"),
        (assertion("only.two".into()), 401, "invalid_client"),
        (
            token_request(&server, &[("grant_type", "client_credentials")]).basic_auth("ferry", Some("wrong")),
            401,
            "invalid_client",
        ),
        (token_request(&server, &[("grant_type", "client_credentials")]), 401, "invalid_client"),
        (
            token_request(
                &server,
                &[("grant_type", "client_credentials"), ("client_id", "ferry"), ("client_secret", "s3cret")],
            )
            .basic_auth("ferry", Some("s3cret")),
            400,
            "invalid_request",
        ),
        (
            token_request(&server, &[("grant_type", "password")]).basic_auth("ferry", Some("s3cret")),
            400,
            "unsupported_grant_type",
        ),
        (
            client()
                .post(server.token_url())
                .header("content-type", "application/json")
                .body("{}")
                .basic_auth("ferry", Some("s3cret")),
            400,
            "invalid_request",
        ),
    ];
    for (i, (req, status, error)) in refusals.into_iter().enumerate() {
        let a = send(req).await;
        assert_eq!((a.status, a.json()["error"].clone()), (status, json!(error)), "refusal {i}");
    }
    assert_eq!(server.tokens_issued(), 3);

    // An unknown token, then expiry.
    let a = get_with_token(&patients, "forged").await;
    assert_eq!((a.status, a.header("www-authenticate").contains("error=\"invalid_token\"")), (401, true));
    tokio::time::sleep(Duration::from_millis(900)).await;
    let a = get_with_token(&patients, &basic_token).await;
    assert_eq!((a.status, a.issue_code()), (401, "login".into()));
    assert!(a.header("www-authenticate").contains("token expired"), "{}", a.header("www-authenticate"));
    // A fresh token works until the test expires it.
    let fresh = server.issue_token();
    assert_eq!(get_with_token(&patients, &fresh).await.status, 200);
    server.expire_tokens();
    assert_eq!(get_with_token(&patients, &fresh).await.status, 401);
    assert_eq!(server.tokens_issued(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_static_token_and_capability_statement() {
    let server = FhirServer::builder().static_token("fixed-token").start();
    assert_eq!(server.static_token().as_deref(), Some("fixed-token"));
    assert_eq!(get_with_token(&server.url("Patient"), "fixed-token").await.status, 200);
    assert_eq!(get_with_token(&server.url("Patient"), "other").await.status, 401);
    assert_eq!(get(&server.url("Patient")).await.status, 401);
    let a = send(token_request(&server, &[("grant_type", "client_credentials")])).await;
    assert_eq!(a.status, 404, "no token endpoint in static mode");

    // Without auth: no security; with OAuth: the token endpoint in it.
    let open = FhirServer::start();
    let cs = get(&format!("{}/metadata", open.base_url())).await.json();
    assert_eq!(
        (&cs["resourceType"], &cs["fhirVersion"], &cs["kind"]),
        (&json!("CapabilityStatement"), &json!("4.0.1"), &json!("instance"))
    );
    assert!(cs["date"].is_string() && cs["format"].as_array().unwrap().contains(&json!(FHIR_JSON)));
    let rest = &cs["rest"][0];
    assert_eq!((&rest["mode"], rest.get("security")), (&json!("server"), None));
    let types: Vec<&str> = rest["resource"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Patient", "DocumentReference", "Binary", "Task"]);
    let doc_ref = &rest["resource"][1];
    let interactions: Vec<&str> =
        doc_ref["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert_eq!(interactions, ["read", "vread", "update", "create", "search-type"]);
    assert_eq!(doc_ref["conditionalCreate"], true);
    let params: Vec<&str> =
        doc_ref["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(params, ["_id", "_lastUpdated", "identifier", "patient", "subject"]);

    let oauth = FhirServer::builder().client_secret("c", "s").start();
    let a = get(&format!("{}/metadata", oauth.base_url())).await;
    assert_eq!(a.status, 200, "metadata is public");
    let security = &a.json()["rest"][0]["security"];
    assert_eq!(security["extension"][0]["url"], OAUTH_URIS);
    assert_eq!(security["extension"][0]["extension"][0], json!({ "url": "token", "valueUri": oauth.token_url() }));
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
}

// --------------------------------------------------------------- faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_fault_switches_and_counters() {
    let server = FhirServer::start();
    let p = server.add_patient(&[("urn:pms", "C-1")]);
    let read_url = format!("{}/{p}", server.url("Patient"));

    // The next N answer 401 (as for a revoked token), then normally.
    server.fault_next(2, FhirFault::Status(401));
    assert_eq!(server.pending_faults(), 2);
    for _ in 0..2 {
        let a = get(&read_url).await;
        assert_eq!((a.status, a.issue_code()), (401, "login".into()));
        assert!(a.header("www-authenticate").contains("invalid_token"));
    }
    assert_eq!((get(&read_url).await.status, server.pending_faults()), (200, 0));

    // 429 with Retry-After.
    server.fault_next(1, FhirFault::RateLimited { retry_after_secs: 7 });
    let a = get(&read_url).await;
    assert_eq!((a.status, a.header("retry-after"), a.issue_code()), (429, "7", "throttled".into()));

    // Queued faults apply in order, to every FHIR route.
    server.fault_next(1, FhirFault::Status(500));
    server.fault_next(2, FhirFault::Status(503));
    let a = get(&read_url).await;
    assert_eq!((a.status, a.issue_code()), (500, "exception".into()));
    let a = send(post_json(&server.url("Patient"), &json!({"resourceType": "Patient"}))).await;
    assert_eq!((a.status, a.issue_code()), (503, "transient".into()));
    assert_eq!(get(&format!("{}/metadata", server.base_url())).await.status, 503);
    assert_eq!(get(&read_url).await.status, 200);
    assert_eq!(server.count("Patient"), 1, "the faulted create stored nothing");

    // A slow server.
    server.set_delay(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(get(&read_url).await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    server.clear_faults();
    let start = Instant::now();
    assert_eq!(get(&read_url).await.status, 200);
    assert!(start.elapsed() < Duration::from_millis(300));

    // Counters and the log.
    assert_eq!(server.request_count("GET /Patient/{id}"), 8);
    assert_eq!(server.request_count("POST /Patient"), 1);
    assert_eq!(server.request_count("GET /metadata"), 1);
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 200, 429, 500, 503, 503, 200, 200, 200]);
    let first = &server.requests()[0];
    assert_eq!(
        (first.method.as_str(), first.path.clone(), first.query.clone()),
        ("GET", format!("/Patient/{p}"), None)
    );
    assert_eq!(server.route_counts().values().sum::<u64>(), 10);
    server.reset_counts();
    assert!(server.requests().is_empty() && server.route_counts().is_empty());

    // Token faults hit the token endpoint only, and faults come before auth.
    let oauth = FhirServer::builder().client_secret("c", "s").start();
    oauth.fault_token_next(1, FhirFault::Status(503));
    oauth.fault_next(1, FhirFault::Status(500));
    let token = oauth.issue_token();
    let a = get(&oauth.url("Patient")).await;
    assert_eq!(a.status, 500, "a fault answers before the bearer check");
    assert_eq!(get_with_token(&oauth.url("Patient"), &token).await.status, 200);
    let a = send(token_request(&oauth, &[("grant_type", "client_credentials")]).basic_auth("c", Some("s"))).await;
    assert_eq!((a.status, a.json()["error"].clone()), (503, json!("temporarily_unavailable")));
    let a = send(token_request(&oauth, &[("grant_type", "client_credentials")]).basic_auth("c", Some("s"))).await;
    assert_eq!(a.status, 200);
    assert_eq!((oauth.request_count("POST /auth/token"), oauth.tokens_issued()), (2, 2));
    let query = oauth.requests().into_iter().find(|r| r.route == "GET /Patient").unwrap();
    assert_eq!((query.status, query.query), (500, None));
}

#[test]
fn fhir_server_works_from_a_sync_test_and_stops_on_drop() {
    let server = FhirServer::start();
    let url = format!("{}/metadata", server.base_url());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { assert_eq!(get(&url).await.status, 200) });
    drop(server);
    rt.block_on(async {
        let e = client().get(&url).timeout(Duration::from_secs(5)).send().await;
        assert!(e.is_err(), "{url} still answers");
    });
}
