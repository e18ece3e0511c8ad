//! The records API over real HTTP: users registered by an admin, patient
//! records owned by the practitioner who made them, and the authorization
//! table of `serve::authz` walked as a matrix — every route × caller kind ×
//! owner or not → the status it must answer. PHI fields are sealed in the
//! SQLite file (read raw).

use ferry::serve::auth::Role;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{body, mueller, problem, Service, Setup};

/// 32 bytes in base64, for the tests only.
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const HISTORY: &str = "Zöliakie seit 2019, Laktoseintoleranz";

fn records_setup() -> Setup {
    Setup { extra: format!("[serve.records]\nkey = \"{KEY}\"\n"), ..Setup::default() }
}

fn user(sub: &str, kind: &str, extra: Value) -> Value {
    let mut u = json!({ "sub": sub, "email": format!("{sub}@praxis.example"), "name": sub, "type": kind });
    u.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_table_route_by_route() {
    let svc = Service::start_with(ferry_tests::demo_site(), records_setup()).await;
    let admin = svc.token_for("admin-1", Role::Admin);
    let dr_a = svc.token_for("dr-a", Role::Viewer);
    let dr_b = svc.token_for("dr-b", Role::Viewer);
    let pat = svc.token_for("pat-u", Role::Viewer);
    let staff_v = svc.token_for("front-desk", Role::Viewer);
    let staff_o = svc.token_for("it-person", Role::Operator);

    // the registry: two practitioners and a patient user (admins only)
    let own = mueller(); // a demo patient with X-rays: images, logs and sync are real
    for (u, want) in [
        (
            user(
                "dr-a",
                "practitioner",
                json!({ "profession": "Dietician", "externalIds": { "carepatron": "cp-77" } }),
            ),
            201,
        ),
        (user("dr-b", "practitioner", json!({ "profession": "Dentist" })), 201),
        (user("pat-u", "patient", json!({ "patientGuid": own })), 201),
        (user("dr-a", "practitioner", json!({})), 409),
        (user("x", "patient", json!({})), 400),
        (user("y", "wizard", json!({})), 422),
    ] {
        let res = svc.send(Method::POST, "/api/v1/users", &admin, Some(&u)).await;
        assert_eq!(res.status().as_u16(), want, "{u}: {}", res.text().await.unwrap());
    }
    assert_eq!(svc.status(Method::POST, "/api/v1/users", &dr_a, Some(&user("z", "staff", json!({})))).await, 403);

    // records: dr-a owns the demo patient's record, dr-b one of their own
    let record = json!({
        "patientGuid": own, "family": "Müller", "given": "Anna", "email": "anna@example.test",
        "contactDetails": "+49 30 1234567", "medicalHistory": HISTORY, "dietaryPreferences": "glutenfrei",
        "externalIds": { "opendental": "4711" },
    });
    let res = svc.send(Method::POST, "/api/v1/patients", &dr_a, Some(&record)).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], format!("/api/v1/patients/{own}"));
    let created: Value = body(res).await;
    assert_eq!(created["owner"], "dr-a");
    assert_eq!(created["medicalHistory"], HISTORY);
    let res =
        svc.send(Method::POST, "/api/v1/patients", &dr_b, Some(&json!({ "family": "Kaya", "given": "Cem" }))).await;
    assert_eq!(res.status(), 201);
    let other: Value = body(res).await;
    let other_guid = other["patientGuid"].as_str().unwrap().to_owned();
    assert_eq!(other_guid.len(), 36, "a UUID made by the server: {other_guid}");
    // taken guid, a practitioner naming another owner, bad fields
    assert_eq!(svc.status(Method::POST, "/api/v1/patients", &dr_b, Some(&record)).await, 409);
    let mut given_away = json!({ "family": "A", "given": "B", "owner": "dr-b" });
    assert_eq!(svc.status(Method::POST, "/api/v1/patients", &dr_a, Some(&given_away)).await, 403);
    given_away["owner"] = json!("nobody");
    assert_eq!(svc.status(Method::POST, "/api/v1/patients", &admin, Some(&given_away)).await, 400);
    for bad in [
        json!({ "family": "", "given": "B" }),
        json!({ "family": "A", "given": "B", "email": "nope" }),
        json!({ "family": "A" }),
    ] {
        let res = svc.send(Method::POST, "/api/v1/patients", &dr_a, Some(&bad)).await;
        problem(res, if bad.get("given").is_none() { 422 } else { 400 }).await;
    }

    let bare = svc.stored_guids().into_iter().find(|g| *g != own).expect("another stored patient");
    // the matrix on dr-a's patient: (method, path, body) × [admin, dr-a, dr-b, patient, staff viewer, staff operator]
    let put = json!({ "family": "Müller", "given": "Anna Maria", "medicalHistory": HISTORY });
    let rows: Vec<(Method, String, Option<Value>, [u16; 6])> = vec![
        (Method::GET, format!("/api/v1/patients/{own}"), None, [200, 200, 404, 200, 403, 403]),
        (Method::PUT, format!("/api/v1/patients/{own}"), Some(put.clone()), [200, 200, 404, 403, 403, 403]),
        (Method::GET, format!("/api/v1/patients/{own}/images"), None, [200, 200, 404, 200, 200, 200]),
        (Method::GET, format!("/api/v1/patients/{own}/logs"), None, [200, 200, 404, 403, 403, 200]),
        (Method::POST, format!("/api/v1/patients/{own}/sync"), None, [202, 202, 404, 403, 403, 202]),
        (Method::GET, "/api/v1/users".into(), None, [200, 403, 403, 403, 403, 403]),
        (Method::GET, "/api/v1/users/dr-a".into(), None, [200, 403, 403, 403, 403, 403]),
        (Method::GET, "/api/v1/users/me".into(), None, [200, 200, 200, 200, 200, 200]),
        // a patient without a record (X-rays only): staff and admins as before, practitioners not at all
        (Method::GET, format!("/api/v1/patients/{bare}/images"), None, [200, 404, 404, 404, 200, 200]),
        (Method::GET, format!("/api/v1/patients/{bare}"), None, [404, 404, 404, 404, 403, 403]),
    ];
    let callers = [
        ("admin", &admin),
        ("dr-a", &dr_a),
        ("dr-b", &dr_b),
        ("patient", &pat),
        ("staff viewer", &staff_v),
        ("staff operator", &staff_o),
    ];
    for (method, path, body, want) in &rows {
        for ((who, t), want) in callers.iter().zip(want) {
            let res = svc.send(method.clone(), path, t, body.as_ref()).await;
            let got = res.status().as_u16();
            let text = res.text().await.unwrap();
            assert_eq!(got, *want, "{method} {path} as {who}: {text}");
        }
    }
    // a sync job and a log entry of dr-a's patient: dr-b cannot see them either
    let job: Value = body(svc.send(Method::POST, &format!("/api/v1/patients/{own}/sync"), &dr_a, None).await).await;
    let job_path = job["href"].as_str().unwrap().to_owned();
    assert_eq!(svc.status(Method::GET, &job_path, &dr_a, None).await, 200);
    assert_eq!(svc.status(Method::GET, &job_path, &dr_b, None).await, 404);
    assert_eq!(svc.status(Method::GET, &job_path, &staff_v, None).await, 403);
    let logs: Value = body(svc.send(Method::GET, &format!("/api/v1/patients/{own}/logs"), &dr_a, None).await).await;
    let entry = format!("/api/v1/logs/{}", logs["entries"][0]["id"]);
    assert_eq!(svc.status(Method::GET, &entry, &dr_a, None).await, 200);
    assert_eq!(svc.status(Method::GET, &entry, &dr_b, None).await, 404);

    // the lists: each caller their own
    let list = |t: &str, q: &str| {
        let path = format!("/api/v1/patients{q}");
        let t = t.to_owned();
        let svc = &svc;
        async move {
            let res = svc.send(Method::GET, &path, &t, None).await;
            assert_eq!(res.status(), 200, "{path}");
            let v: Value = body(res).await;
            v.as_array().unwrap().iter().map(|h| h["patientGuid"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(&dr_a, "").await, std::slice::from_ref(&own));
    assert_eq!(list(&dr_a, "?name=mül").await, std::slice::from_ref(&own));
    assert!(list(&dr_a, "?name=kaya").await.is_empty());
    assert_eq!(list(&dr_b, "").await, std::slice::from_ref(&other_guid));
    assert_eq!(list(&pat, "").await, std::slice::from_ref(&own));
    let all = list(&admin, "").await;
    assert!(all.contains(&own) && all.contains(&other_guid), "{all:?}");
    assert!(list(&staff_v, "?name=mul").await.contains(&own), "staff search the image index as before");
    problem(svc.send(Method::GET, "/api/v1/patients", &staff_v, None).await, 400).await;

    // the stored record after the PUT: the owner kept, the name changed
    let got: Value = body(svc.send(Method::GET, &format!("/api/v1/patients/{own}"), &pat, None).await).await;
    assert_eq!((got["given"].as_str(), got["owner"].as_str()), (Some("Anna Maria"), Some("dr-a")));
    assert_eq!(got.get("email"), None, "the PUT replaced the record's fields");

    // PHI at rest: sealed in the SQLite file; names (what search works on) are not
    let raw = std::fs::read(svc.pipeline.ledger_path()).unwrap();
    let wal = std::fs::read(svc.pipeline.ledger_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        let hay = String::from_utf8_lossy(bytes);
        assert!(
            !hay.contains("Zöliakie") && !hay.contains("glutenfrei") && !hay.contains("+49 30"),
            "PHI in the clear"
        );
    }

    // the access log: every decision about the patient, refusals too, ids only (admins)
    assert_eq!(svc.status(Method::GET, "/api/v1/access-log", &dr_a, None).await, 403);
    let log =
        body(svc.send(Method::GET, &format!("/api/v1/access-log?patient={own}&limit=1000"), &admin, None).await).await;
    let entries = log["entries"].as_array().unwrap();
    let seen = |sub: &str, action: &str, method: &str, code: u16| {
        entries
            .iter()
            .any(|e| e["subject"] == sub && e["action"] == action && e["method"] == method && e["status"] == code)
    };
    assert!(seen("dr-a", "change-patient", "PUT", 200), "{log}");
    assert!(seen("dr-b", "read-patient", "GET", 404), "a refused read is logged: {log}");
    assert!(seen("pat-u", "read-images", "GET", 200), "{log}");
    assert!(seen("front-desk", "read-logs", "GET", 403), "{log}");
    assert!(entries.iter().all(|e| e["patientGuid"] == own.as_str()), "{log}");
    let text = log.to_string();
    assert!(!text.contains("Müller") && !text.contains("Zöliakie"), "no names or PHI in the access log");
    let mine = body(svc.send(Method::GET, "/api/v1/access-log?subject=dr-b&limit=1000", &admin, None).await).await;
    assert!(mine["entries"].as_array().unwrap().iter().all(|e| e["subject"] == "dr-b"), "{mine}");

    // delete: soft, then gone for everyone; the guid stays taken
    assert_eq!(svc.status(Method::DELETE, &format!("/api/v1/patients/{own}"), &dr_b, None).await, 404);
    assert_eq!(svc.status(Method::DELETE, &format!("/api/v1/patients/{own}"), &dr_a, None).await, 204);
    assert_eq!(svc.status(Method::GET, &format!("/api/v1/patients/{own}"), &admin, None).await, 404);
    assert_eq!(svc.status(Method::POST, "/api/v1/patients", &dr_a, Some(&record)).await, 409);
    assert_eq!(svc.status(Method::DELETE, "/api/v1/users/dr-b", &admin, None).await, 204);
    assert_eq!(svc.status(Method::DELETE, "/api/v1/users/dr-b", &admin, None).await, 404);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_serve_records_there_are_no_patient_records() {
    let svc = Service::start_with(ferry_tests::demo_site(), Setup { no_wait: true, ..Setup::default() }).await;
    let admin = svc.token_for("admin-1", Role::Admin);
    let res = svc.send(Method::POST, "/api/v1/patients", &admin, Some(&json!({ "family": "A", "given": "B" }))).await;
    let p = problem(res, 403).await;
    assert!(p["detail"].as_str().unwrap().contains("[serve.records]"), "{p}");
    svc.stop().await;
}

/// Every page of `GET /patients` as the caller, following the `Link`
/// headers: the patients' guids in order.
async fn walk_pages(svc: &Service, first: &str, token: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages < 100, "the pages do not end: {out:?}");
        let res = svc.send(Method::GET, &path, token, None).await;
        assert_eq!(res.status(), 200, "{path}");
        next = res.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l.trim_start_matches('<').split('>').next().unwrap().to_owned()
        });
        let page = body(res).await;
        let page = page.as_array().unwrap();
        assert!(!page.is_empty() || next.is_none(), "an empty page with a next one: {path}");
        out.extend(page.iter().map(|h| h["patientGuid"].as_str().unwrap().to_owned()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_lists_page_by_name_with_a_link_to_the_next() {
    let svc = Service::start_with(ferry_tests::demo_site(), records_setup()).await;
    let admin = svc.token_for("admin-1", Role::Admin);
    let dr = svc.token_for("dr-a", Role::Viewer);
    let staff = svc.token_for("front-desk", Role::Viewer);
    let res = svc.send(Method::POST, "/api/v1/users", &admin, Some(&user("dr-a", "practitioner", json!({})))).await;
    assert_eq!(res.status(), 201);
    // five records named M… (two of them the demo's patients with X-rays), so
    // an admin's search for `m` runs through records into the image index
    let demo = svc.stored_guids();
    for (i, given) in ["Ada", "Bea", "Cem", "Dan", "Eva"].iter().enumerate() {
        let mut r = json!({ "family": "Mertens", "given": given });
        if i < 2 {
            r["patientGuid"] = json!(demo[i]);
        }
        assert_eq!(svc.status(Method::POST, "/api/v1/patients", &dr, Some(&r)).await, 201);
    }
    for (token, query) in [(&dr, ""), (&dr, "name=mer"), (&admin, "name=m"), (&admin, ""), (&staff, "name=m")] {
        let whole =
            body(svc.send(Method::GET, &format!("/api/v1/patients?limit=200&{query}"), token, None).await).await;
        let whole: Vec<String> =
            whole.as_array().unwrap().iter().map(|h| h["patientGuid"].as_str().unwrap().to_owned()).collect();
        for limit in [1, 2, 3] {
            let paged = walk_pages(&svc, &format!("/api/v1/patients?limit={limit}&{query}"), token).await;
            assert_eq!(paged, whole, "limit {limit}, {query}: pages are the whole list, in order, once each");
        }
        if query == "name=m" && token == &admin {
            // records first, then patients only the image index knows, none twice
            assert!(whole.len() > 5, "{whole:?}");
            let mut seen = whole.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), whole.len(), "{whole:?}");
        }
    }
    let p = problem(svc.send(Method::GET, "/api/v1/patients?cursor=x:nope", &dr, None).await, 400).await;
    assert_eq!(p["type"], "urn:ferry:problem:invalid-cursor");
    svc.stop().await;
}
