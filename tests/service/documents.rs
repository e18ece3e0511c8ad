//! Documents of the records API over real HTTP: a practitioner uploads
//! (multipart, as a browser's FormData sends it), the bytes land in the
//! S3 server under `documents/{guid}/`, come back whole and by range,
//! and only the document's source changes, deletes or shares it; hostile
//! uploads (a renamed executable, a lying part type, too large, a broken
//! form) are refused with a problem naming the fix. Shares are walked
//! through expiry and revocation.

use std::time::Duration;

use ferry::serve::auth::Role;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{body, mueller, problem, Service, Setup};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const TITLE: &str = "Befund Zöliakie-Serologie";
const BOUNDARY: &str = "ferry-test-boundary-7MA4YWxkTrZu0gW";

fn setup() -> Setup {
    Setup { extra: format!("[serve.records]\nkey = \"{KEY}\"\nmax_upload = \"256KiB\"\n"), ..Setup::default() }
}

/// A part of a `multipart/form-data` body: (name, file name, type, bytes).
type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, file, ct, bytes) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = file {
            out.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = ct {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

async fn upload(svc: &Service, guid: &str, token: &str, parts: &[Part<'_>]) -> reqwest::Response {
    svc.http
        .post(svc.url(&format!("/api/v1/patients/{guid}/documents")))
        .bearer_auth(token)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(form(parts))
        .send()
        .await
        .unwrap()
}

/// The keys under `documents/` in the S3 server's bucket (s3s-fs keeps
/// objects as files).
fn document_keys(svc: &Service) -> Vec<String> {
    let root = svc.s3.root().join(crate::harness::BUCKET);
    let mut out = Vec::new();
    let mut dirs = vec![root.join("documents")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

fn user(sub: &str, kind: &str, extra: Value) -> Value {
    let mut u = json!({ "sub": sub, "email": format!("{sub}@praxis.example"), "name": sub, "type": kind });
    u.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    u
}

struct People {
    admin: String,
    dr_a: String,
    dr_b: String,
    dr_c: String,
    patient: String,
    staff: String,
    guid: String,
}

/// dr-a owns the demo patient's record; dr-b and dr-c are colleagues; the
/// patient has a user of their own.
async fn people(svc: &Service) -> People {
    let guid = mueller();
    let p = People {
        admin: svc.token_for("admin-1", Role::Admin),
        dr_a: svc.token_for("dr-a", Role::Viewer),
        dr_b: svc.token_for("dr-b", Role::Viewer),
        dr_c: svc.token_for("dr-c", Role::Viewer),
        patient: svc.token_for("pat-u", Role::Viewer),
        staff: svc.token_for("it-person", Role::Operator),
        guid: guid.clone(),
    };
    for u in [
        user("dr-a", "practitioner", json!({ "profession": "Dietician" })),
        user("dr-b", "practitioner", json!({ "profession": "Dentist" })),
        user("dr-c", "practitioner", json!({ "profession": "Physiotherapist" })),
        user("pat-u", "patient", json!({ "patientGuid": guid })),
        user("clerk", "staff", json!({})),
    ] {
        let res = svc.send(Method::POST, "/api/v1/users", &p.admin, Some(&u)).await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    }
    let record = json!({ "patientGuid": guid, "family": "Müller", "given": "Anna" });
    assert_eq!(svc.send(Method::POST, "/api/v1/patients", &p.dr_a, Some(&record)).await.status(), 201);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_list_download_change_delete() {
    let svc = Service::start_with(ferry_tests::demo_site(), setup()).await;
    let p = people(&svc).await;
    let g = p.guid.clone();
    let pdf = ferry_tests::pdf::pdf("Serologie", "D:20261130090000Z", 2, "tTG-IgA 3 U/ml");
    let meta = json!({ "title": TITLE, "type": { "system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report" }, "date": "2026-11-30", "description": "vom Hausarzt" });
    let meta = serde_json::to_vec(&meta).unwrap();

    let res = upload(
        &svc,
        &g,
        &p.dr_a,
        &[
            ("metadata", None, Some("application/json"), &meta),
            ("file", Some("befund.pdf"), Some("application/pdf"), &pdf),
        ],
    )
    .await;
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let doc: Value = body(res).await;
    let id = doc["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/documents/{id}"));
    assert_eq!(doc["title"], TITLE);
    assert_eq!(doc["fileName"], "befund.pdf");
    assert_eq!(doc["contentType"], "application/pdf");
    assert_eq!(doc["size"], pdf.len());
    assert_eq!(doc["type"]["code"], "11502-2");
    assert_eq!((doc["uploadedBy"].as_str(), doc["source"].as_str()), (Some("dr-a"), Some("upload")));
    // in the bucket, under the patient's documents, named by id (no file name, no title)
    let keys = document_keys(&svc);
    let key = format!("documents/{g}/{id}.pdf");
    assert!(keys.contains(&key), "{key} not in {keys:?}");
    // and its sidecar, what a pipeline's registry-documents source reads
    let sidecar = svc.s3.root().join(crate::harness::BUCKET).join(format!("documents/{g}/{id}.json"));
    let sidecar: Value = serde_json::from_slice(&std::fs::read(sidecar).unwrap()).unwrap();
    assert_eq!((sidecar["key"].as_str(), sidecar["deleted"].as_bool()), (Some(key.as_str()), Some(false)));
    assert_eq!(sidecar["sha256"], doc["sha256"]);

    // a second one, without metadata: the title is the file name, the type sniffed
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde";
    let res = upload(&svc, &g, &p.dr_a, &[("file", Some("C:\\Scans\\foto.png"), None, png)]).await;
    assert_eq!(res.status(), 201);
    let second: Value = body(res).await;
    assert_eq!((second["title"].as_str(), second["contentType"].as_str()), (Some("foto.png"), Some("image/png")));

    // the list: newest first, paginated
    let list =
        body(svc.send(Method::GET, &format!("/api/v1/patients/{g}/documents?limit=1"), &p.dr_a, None).await).await;
    assert_eq!(list["documents"][0]["id"], second["id"]);
    let next = list["nextCursor"].as_str().expect("a second page").to_owned();
    let list = body(
        svc.send(Method::GET, &format!("/api/v1/patients/{g}/documents?limit=1&cursor={next}"), &p.dr_a, None).await,
    )
    .await;
    assert_eq!(list["documents"][0]["id"], id.as_str());
    assert!(list.get("nextCursor").is_none());

    // the bytes: whole, by range, with the ETag; inline for a PDF, never sniffed by the browser
    let res = svc.send(Method::GET, &format!("/api/v1/documents/{id}/content"), &p.patient, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/pdf");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert!(res.headers()["content-disposition"].to_str().unwrap().starts_with("inline"));
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", doc["sha256"].as_str().unwrap()));
    assert_eq!(res.bytes().await.unwrap().as_ref(), pdf.as_slice());
    let res = svc
        .http
        .get(svc.url(&format!("/api/v1/documents/{id}/content")))
        .bearer_auth(&p.dr_a)
        .header("range", "bytes=0-4")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], format!("bytes 0-4/{}", pdf.len()));
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"%PDF-");

    // who sees it: the owner and the patient; not a colleague (404: it does not exist for them), not staff
    for (who, t, want) in [
        ("admin", &p.admin, 200),
        ("dr-a", &p.dr_a, 200),
        ("patient", &p.patient, 200),
        ("dr-b", &p.dr_b, 404),
        ("staff", &p.staff, 403),
    ] {
        for path in [format!("/api/v1/documents/{id}"), format!("/api/v1/documents/{id}/content")] {
            let res = svc.send(Method::GET, &path, t, None).await;
            assert_eq!(res.status().as_u16(), want, "GET {path} as {who}");
        }
        let res = svc.send(Method::GET, &format!("/api/v1/patients/{g}/documents"), t, None).await;
        assert_eq!(res.status().as_u16(), want, "the list as {who}");
    }
    // who changes it: its source only
    let change = json!({ "title": "Befund (korrigiert)", "date": "2026-11-29" });
    for (who, t, want) in [("patient", &p.patient, 403), ("dr-b", &p.dr_b, 404), ("staff", &p.staff, 403)] {
        let res = svc.send(Method::PUT, &format!("/api/v1/documents/{id}"), t, Some(&change)).await;
        assert_eq!(res.status().as_u16(), want, "PUT as {who}");
        let res = svc.send(Method::DELETE, &format!("/api/v1/documents/{id}"), t, None).await;
        assert_eq!(res.status().as_u16(), want, "DELETE as {who}");
    }
    let res = svc.send(Method::PUT, &format!("/api/v1/documents/{id}"), &p.dr_a, Some(&change)).await;
    assert_eq!(res.status(), 200);
    let changed: Value = body(res).await;
    assert_eq!(
        (changed["title"].as_str(), changed["date"].as_str()),
        (Some("Befund (korrigiert)"), Some("2026-11-29"))
    );
    assert_eq!(changed.get("type"), None, "a PUT sets the whole set");
    assert_eq!(changed["sha256"], doc["sha256"], "the bytes do not change");
    problem(
        svc.send(Method::PUT, &format!("/api/v1/documents/{id}"), &p.dr_a, Some(&json!({ "date": "30.11.2026" })))
            .await,
        400,
    )
    .await;
    problem(
        svc.send(Method::PUT, &format!("/api/v1/documents/{id}"), &p.dr_a, Some(&json!({ "owner": "x" }))).await,
        422,
    )
    .await;

    // uploads that are refused, each naming why
    let exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00\xb8\0\0\0\0\0\0\0";
    let big = {
        let mut b = b"%PDF-1.4\n".to_vec();
        b.resize(300 << 10, b'x');
        b
    };
    let cases: Vec<(&str, &String, Vec<Part<'_>>, u16, &str)> = vec![
        (
            "a renamed executable",
            &p.dr_a,
            vec![("file", Some("befund.pdf"), Some("application/pdf"), exe)],
            415,
            "unsupported-type",
        ),
        (
            "a PNG sent as a PDF",
            &p.dr_a,
            vec![("file", Some("x.pdf"), Some("application/pdf"), png)],
            415,
            "type-mismatch",
        ),
        ("over max_upload", &p.dr_a, vec![("file", Some("big.pdf"), Some("application/pdf"), &big)], 413, "too-large"),
        ("an empty file", &p.dr_a, vec![("file", Some("e.pdf"), None, b"")], 400, "empty-file"),
        ("no file part", &p.dr_a, vec![("metadata", None, None, &meta)], 400, "missing-file"),
        ("an unknown part", &p.dr_a, vec![("virus", None, None, b"x")], 400, "invalid-body"),
        (
            "metadata after the file",
            &p.dr_a,
            vec![("file", Some("a.png"), None, png), ("metadata", None, None, &meta)],
            400,
            "invalid-body",
        ),
        (
            "bad metadata",
            &p.dr_a,
            vec![("metadata", None, None, b"{\"title\": 7}"), ("file", Some("a.png"), None, png)],
            400,
            "invalid-field",
        ),
        ("a patient uploading", &p.patient, vec![("file", Some("a.png"), None, png)], 403, "forbidden"),
        ("a colleague uploading", &p.dr_b, vec![("file", Some("a.png"), None, png)], 404, "not-found"),
        ("staff uploading", &p.staff, vec![("file", Some("a.png"), None, png)], 403, "forbidden"),
    ];
    for (what, t, parts, want, slug) in cases {
        let res = upload(&svc, &g, t, &parts).await;
        let v = problem(res, want).await;
        assert!(v["type"].as_str().unwrap_or_default().ends_with(slug), "{what}: {v}");
    }
    let res = svc.send(Method::POST, &format!("/api/v1/patients/{g}/documents"), &p.dr_a, Some(&json!({}))).await;
    problem(res, 415).await;
    // a patient without a record has no documents to add to
    let bare = svc.stored_guids().into_iter().find(|x| *x != g).unwrap();
    problem(upload(&svc, &bare, &p.admin, &[("file", Some("a.png"), None, png)]).await, 404).await;
    // nothing refused reached the bucket
    let docs = document_keys(&svc).into_iter().filter(|k| !k.ends_with(".json")).count();
    assert_eq!(docs, 2);

    // PHI at rest: titles, file names and descriptions are sealed
    let raw = std::fs::read(svc.pipeline.ledger_path()).unwrap();
    let wal = std::fs::read(svc.pipeline.ledger_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        let hay = String::from_utf8_lossy(bytes);
        assert!(
            !hay.contains("Zöliakie") && !hay.contains("befund.pdf") && !hay.contains("Hausarzt"),
            "PHI in the clear"
        );
    }

    // delete (soft): gone from reads and the list, logged
    assert_eq!(svc.send(Method::DELETE, &format!("/api/v1/documents/{id}"), &p.dr_a, None).await.status(), 204);
    problem(svc.send(Method::GET, &format!("/api/v1/documents/{id}"), &p.dr_a, None).await, 404).await;
    problem(svc.send(Method::DELETE, &format!("/api/v1/documents/{id}"), &p.dr_a, None).await, 404).await;
    let list = body(svc.send(Method::GET, &format!("/api/v1/patients/{g}/documents"), &p.dr_a, None).await).await;
    assert_eq!(list["documents"].as_array().unwrap().len(), 1);
    problem(svc.send(Method::GET, "/api/v1/documents/not-an-id", &p.dr_a, None).await, 400).await;
    let log =
        body(svc.send(Method::GET, &format!("/api/v1/access-log?patient={g}&limit=1000"), &p.admin, None).await).await;
    let entries = log["entries"].as_array().unwrap();
    let seen = |action: &str, subject: &str, status: u64| {
        entries.iter().any(|e| e["action"] == action && e["subject"] == subject && e["status"] == status)
    };
    assert!(seen("add-document", "dr-a", 201), "{log}");
    assert!(seen("change-document", "dr-a", 204));
    assert!(seen("read-document", "dr-b", 404), "a refusal is logged as what it was");
    assert!(!log.to_string().contains("Zöliakie"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_expire_and_are_revoked() {
    let svc = Service::start_with(ferry_tests::demo_site(), setup()).await;
    let p = People { ..people(&svc).await };
    let g = p.guid.clone();
    let pdf = ferry_tests::pdf::pdf("Brief", "D:20261130090000Z", 1, "Überweisung");
    let res = upload(&svc, &g, &p.dr_a, &[("file", Some("brief.pdf"), Some("application/pdf"), &pdf)]).await;
    let id = body(res).await["id"].as_str().unwrap().to_owned();
    let doc = format!("/api/v1/documents/{id}");
    let share_path = format!("{doc}/share");

    // before: dr-b sees nothing of it
    assert_eq!(svc.send(Method::GET, &doc, &p.dr_b, None).await.status(), 404);
    // refused shares
    for (what, t, ask, want) in [
        ("by a non-source", &p.patient, json!({ "practitioner": "dr-b" }), 403),
        ("by a colleague", &p.dr_b, json!({ "practitioner": "dr-c" }), 404),
        ("to a patient user", &p.dr_a, json!({ "practitioner": "pat-u" }), 400),
        ("to staff", &p.dr_a, json!({ "practitioner": "clerk" }), 400),
        ("to nobody", &p.dr_a, json!({ "practitioner": "ghost" }), 400),
        ("to oneself", &p.dr_a, json!({ "practitioner": "dr-a" }), 400),
        ("expired already", &p.dr_a, json!({ "practitioner": "dr-b", "expiresAt": "2020-01-01T00:00:00Z" }), 400),
        ("a bad expiry", &p.dr_a, json!({ "practitioner": "dr-b", "expiresAt": "tomorrow" }), 400),
    ] {
        let res = svc.send(Method::POST, &share_path, t, Some(&ask)).await;
        assert_eq!(res.status().as_u16(), want, "{what}: {}", res.text().await.unwrap());
    }

    // shared with dr-b until revoked, with dr-c for two seconds
    let res = svc
        .send(Method::POST, &share_path, &p.dr_a, Some(&json!({ "practitioner": "dr-b", "note": "zur Mitbehandlung" })))
        .await;
    assert_eq!(res.status(), 201);
    let share: Value = body(res).await;
    assert_eq!((share["practitioner"].as_str(), share["note"].as_str()), (Some("dr-b"), Some("zur Mitbehandlung")));
    let soon = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(2)).to_string();
    let res =
        svc.send(Method::POST, &share_path, &p.dr_a, Some(&json!({ "practitioner": "dr-c", "expiresAt": soon }))).await;
    assert_eq!(res.status(), 201);

    // dr-b reads it, downloads it, finds it in both lists; cannot change or re-share it
    assert_eq!(svc.send(Method::GET, &doc, &p.dr_b, None).await.status(), 200);
    let res = svc.send(Method::GET, &format!("{doc}/content"), &p.dr_b, None).await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), pdf.as_slice());
    let mine = body(svc.send(Method::GET, "/api/v1/shared-with-me", &p.dr_b, None).await).await;
    assert_eq!(mine["shared"][0]["document"]["id"], id.as_str());
    assert_eq!(mine["shared"][0]["share"]["sharedBy"], "dr-a");
    let of_patient =
        body(svc.send(Method::GET, &format!("/api/v1/patients/{g}/shared-documents"), &p.dr_b, None).await).await;
    assert_eq!(of_patient["shared"].as_array().unwrap().len(), 1, "dr-b sees the share to them: {of_patient}");
    // the owner sees every share of the patient; the patient's documents list stays closed to dr-b
    let all = body(svc.send(Method::GET, &format!("/api/v1/patients/{g}/shared-documents"), &p.dr_a, None).await).await;
    assert_eq!(all["shared"].as_array().unwrap().len(), 2);
    assert_eq!(svc.send(Method::GET, &format!("/api/v1/patients/{g}/documents"), &p.dr_b, None).await.status(), 404);
    assert_eq!(svc.send(Method::PUT, &doc, &p.dr_b, Some(&json!({ "title": "mine" }))).await.status(), 403);
    assert_eq!(
        svc.send(Method::POST, &share_path, &p.dr_b, Some(&json!({ "practitioner": "dr-c" }))).await.status(),
        403
    );
    assert_eq!(svc.send(Method::GET, &format!("{doc}/shares"), &p.dr_b, None).await.status(), 403);
    let shares = body(svc.send(Method::GET, &format!("{doc}/shares"), &p.dr_a, None).await).await;
    assert_eq!(shares.as_array().unwrap().len(), 2);

    // dr-c's share expires: the document vanishes for them
    assert_eq!(svc.send(Method::GET, &doc, &p.dr_c, None).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(svc.send(Method::GET, &doc, &p.dr_c, None).await.status(), 404);
    let theirs = body(svc.send(Method::GET, "/api/v1/shared-with-me", &p.dr_c, None).await).await;
    assert!(theirs["shared"].as_array().unwrap().is_empty(), "{theirs}");

    // revoked: dr-b loses it; revoking twice, or by dr-b, is refused
    let revoke = share["href"].as_str().unwrap().to_owned();
    assert_eq!(svc.send(Method::DELETE, &revoke, &p.dr_b, None).await.status(), 403);
    assert_eq!(svc.send(Method::DELETE, &revoke, &p.dr_a, None).await.status(), 204);
    assert_eq!(svc.send(Method::DELETE, &revoke, &p.dr_a, None).await.status(), 404);
    assert_eq!(svc.send(Method::GET, &doc, &p.dr_b, None).await.status(), 404);
    assert_eq!(svc.send(Method::GET, &format!("{doc}/content"), &p.dr_b, None).await.status(), 404);
    let mine = body(svc.send(Method::GET, "/api/v1/shared-with-me", &p.dr_b, None).await).await;
    assert!(mine["shared"].as_array().unwrap().is_empty());

    // a new share, then the document is deleted: the share ends with it
    let res = svc.send(Method::POST, &share_path, &p.dr_a, Some(&json!({ "practitioner": "dr-b" }))).await;
    assert_eq!(res.status(), 201);
    assert_eq!(svc.send(Method::GET, &doc, &p.dr_b, None).await.status(), 200);
    assert_eq!(svc.send(Method::DELETE, &doc, &p.dr_a, None).await.status(), 204);
    assert_eq!(svc.send(Method::GET, &doc, &p.dr_b, None).await.status(), 404);
    // notes are sealed at rest
    let raw = std::fs::read(svc.pipeline.ledger_path()).unwrap();
    let wal = std::fs::read(svc.pipeline.ledger_path().with_extension("db-wal")).unwrap_or_default();
    assert!(![&raw, &wal].iter().any(|b| String::from_utf8_lossy(b).contains("Mitbehandlung")));
    svc.stop().await;
}

/// The documents' rows of the authorization table (`serve::authz`),
/// walked as a matrix: every document route × admin, the owning
/// practitioner (the document's source), a colleague it is shared with,
/// a colleague it is not, the patient, staff viewer, staff operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_routes_as_a_matrix() {
    let smtp = ferry_tests::SmtpServer::start(None);
    let mut setup = setup();
    setup.extra.push_str(&format!(
        "\n[serve.requests.smtp]\nserver = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\
         from = \"praxis@praxis.example\"\nto = \"records@hospital.example\"\n",
        smtp.port()
    ));
    let svc = Service::start_with(ferry_tests::demo_site(), setup).await;
    let p = people(&svc).await;
    let g = p.guid.clone();
    let d = user("dr-d", "practitioner", json!({}));
    assert_eq!(svc.status(Method::POST, "/api/v1/users", &p.admin, Some(&d)).await, 201);
    let viewer = svc.token_for("front-desk", Role::Viewer);
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    let res = upload(&svc, &g, &p.dr_a, &[("file", Some("a.png"), None, png)]).await;
    assert_eq!(res.status(), 201);
    let id = body(res).await["id"].as_str().unwrap().to_owned();
    let share = json!({ "practitioner": "dr-b" });
    let res = svc.send(Method::POST, &format!("/api/v1/documents/{id}/share"), &p.dr_a, Some(&share)).await;
    assert_eq!(res.status(), 201);
    let share_id = body(res).await["id"].as_i64().unwrap();

    let callers = [
        ("admin", &p.admin),
        ("dr-a (owner, source)", &p.dr_a),
        ("dr-b (shared with)", &p.dr_b),
        ("dr-c (not shared with)", &p.dr_c),
        ("patient", &p.patient),
        ("staff viewer", &viewer),
        ("staff operator", &p.staff),
    ];
    let docs = format!("/api/v1/patients/{g}/documents");
    let doc = format!("/api/v1/documents/{id}");
    let change = json!({ "title": "Zahnfoto" });
    let to_d = json!({ "practitioner": "dr-d" });
    let ask = json!({ "what": "Röntgenbefunde" });
    type Row = (Method, String, Option<Value>, [u16; 7]);
    let rows: Vec<Row> = vec![
        (Method::GET, docs.clone(), None, [200, 200, 404, 404, 200, 403, 403]),
        (Method::GET, doc.clone(), None, [200, 200, 200, 404, 200, 403, 403]),
        (Method::GET, format!("{doc}/content"), None, [200, 200, 200, 404, 200, 403, 403]),
        (Method::PUT, doc.clone(), Some(change), [200, 200, 403, 404, 403, 403, 403]),
        (Method::POST, format!("{doc}/share"), Some(to_d), [201, 201, 403, 404, 403, 403, 403]),
        (Method::GET, format!("{doc}/shares"), None, [200, 200, 403, 404, 403, 403, 403]),
        (Method::GET, format!("/api/v1/patients/{g}/shared-documents"), None, [200, 200, 200, 200, 200, 200, 200]),
        (Method::GET, "/api/v1/shared-with-me".into(), None, [200, 200, 200, 200, 200, 200, 200]),
        (
            Method::POST,
            format!("/api/v1/patients/{g}/request-documents"),
            Some(ask),
            [201, 201, 404, 404, 403, 403, 403],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, want) in &rows {
        for ((who, t), want) in callers.iter().zip(want) {
            let got = svc.status(method.clone(), path, t, body.as_ref()).await;
            if got != *want {
                wrong.push(format!("{method} {path} as {who}: {got}, want {want}"));
            }
        }
    }
    // uploading, as a multipart form
    for ((who, t), want) in callers.iter().zip([201, 201, 404, 404, 403, 403, 403]) {
        let got = upload(&svc, &g, t, &[("file", Some("b.png"), None, png)]).await.status().as_u16();
        if got != want {
            wrong.push(format!("POST {docs} as {who}: {got}, want {want}"));
        }
    }
    // what is shared with whom, as each sees it
    let shared_with = |t: &str| {
        let (svc, t) = (&svc, t.to_owned());
        async move {
            let v = body(svc.send(Method::GET, "/api/v1/shared-with-me", &t, None).await).await;
            v["shared"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["share"]["practitioner"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(shared_with(&p.dr_b).await, ["dr-b"]);
    assert!(shared_with(&p.dr_c).await.is_empty());
    assert!(shared_with(&viewer).await.is_empty());
    // the destructive rows: refused first, then the source; once the share
    // is revoked dr-b no longer reaches the document at all (404)
    for (path, want) in
        [(format!("/api/v1/shares/{share_id}"), [403, 404, 403, 403, 403]), (doc.clone(), [404, 404, 403, 403, 403])]
    {
        for ((who, t), want) in callers[2..].iter().zip(want) {
            let got = svc.status(Method::DELETE, &path, t, None).await;
            if got != want {
                wrong.push(format!("DELETE {path} as {who}: {got}, want {want}"));
            }
        }
        assert_eq!(svc.status(Method::DELETE, &path, &p.dr_a, None).await, 204, "DELETE {path} as its source");
    }
    assert!(wrong.is_empty(), "the matrix differs from the table:\n  {}", wrong.join("\n  "));
    assert_eq!(svc.status(Method::GET, &doc, &p.admin, None).await, 404, "deleted: gone for everyone");
    assert_eq!(smtp.mails().len(), 2, "the admin's and dr-a's requests");
    svc.stop().await;
}
