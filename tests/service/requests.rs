//! `POST /patients/{guid}/request-documents` over real HTTP, to real
//! peers on 127.0.0.1: a FHIR `Task` created on the provider's FHIR test
//! server (bearer token host-side, for the provider's Patient id from the
//! record), and an e-mail received by a local SMTP server. Each request is
//! one row in the patient's sync log; a record without the provider's id,
//! a refusing provider and a refusing mail server are answered with the
//! problem that says what to do — and logged as errors.

use ferry::serve::auth::Role;
use ferry_tests::{FhirFault, FhirServer, SmtpServer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{body, mueller, problem, Service, Setup};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const PROVIDER_TOKEN: &str = "provider-token-91b2";

/// dr-a (a registered practitioner) owns the demo patient's record, with
/// the provider's id when `provider_id` is given.
async fn owner(svc: &Service, provider_id: Option<&str>) -> (String, String) {
    let admin = svc.token_for("admin-1", Role::Admin);
    let dr = svc.token_for("dr-a", Role::Viewer);
    let u = json!({ "sub": "dr-a", "email": "dr-a@praxis.example", "name": "Dr. Anna Arzt", "type": "practitioner" });
    assert_eq!(svc.send(Method::POST, "/api/v1/users", &admin, Some(&u)).await.status(), 201);
    let other = json!({ "sub": "dr-b", "email": "dr-b@praxis.example", "name": "Dr. B", "type": "practitioner" });
    assert_eq!(svc.send(Method::POST, "/api/v1/users", &admin, Some(&other)).await.status(), 201);
    let pat =
        json!({ "sub": "pat-u", "email": "p@example.test", "name": "P", "type": "patient", "patientGuid": mueller() });
    assert_eq!(svc.send(Method::POST, "/api/v1/users", &admin, Some(&pat)).await.status(), 201);
    let mut rec = json!({ "patientGuid": mueller(), "family": "Müller", "given": "Anna" });
    if let Some(id) = provider_id {
        rec["externalIds"] = json!({ "hospital": id });
    }
    assert_eq!(svc.send(Method::POST, "/api/v1/patients", &dr, Some(&rec)).await.status(), 201);
    (admin, dr)
}

/// The mail's body, decoded from its transfer encoding (quoted-printable
/// or base64: the client picks one for non-ASCII text).
fn decoded_body(data: &str) -> String {
    use base64::Engine;
    let (head, body) = data.split_once("\r\n\r\n").unwrap_or((data, ""));
    let head = head.to_ascii_lowercase();
    if head.contains("content-transfer-encoding: base64") {
        let compact: String = body.split_whitespace().collect();
        return String::from_utf8(base64::engine::general_purpose::STANDARD.decode(compact).unwrap()).unwrap();
    }
    if head.contains("content-transfer-encoding: quoted-printable") {
        let joined = body.replace("=\r\n", "");
        let mut out = Vec::new();
        let b = joined.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        return String::from_utf8(out).unwrap();
    }
    body.to_owned()
}

async fn request_log(svc: &Service, admin: &str) -> Vec<Value> {
    let logs =
        body(svc.send(Method::GET, &format!("/api/v1/patients/{}/logs?limit=100", mueller()), admin, None).await).await;
    logs["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "request").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_becomes_a_task_on_the_providers_fhir_server() {
    let provider = FhirServer::builder().static_token(PROVIDER_TOKEN).start();
    let pid = provider.add_patient(&[("urn:oid:1.2.276.0.76.4.8", "A123456789")]);
    std::env::set_var("FERRY_TEST_PROVIDER_TOKEN", PROVIDER_TOKEN);
    let extra = format!(
        "[serve.records]\nkey = \"{KEY}\"\n\n[serve.requests.fhir]\nbase_url = \"{}\"\npatient_id = \"hospital\"\n\
         owner = \"Organization/records-office\"\nauth = {{ kind = \"bearer\", token = \"${{FERRY_TEST_PROVIDER_TOKEN}}\" }}\n",
        provider.base_url()
    );
    let svc = Service::start_with(ferry_tests::demo_site(), Setup { extra, ..Setup::default() }).await;
    let (admin, dr) = owner(&svc, Some(&pid)).await;
    let path = format!("/api/v1/patients/{}/request-documents", mueller());
    let ask = json!({ "what": "Laborbefunde seit 2025", "note": "Zöliakie-Abklärung" });

    // who may ask: the patient's practitioner (and admins), no one else
    for (who, t, want) in [
        ("the patient", svc.token_for("pat-u", Role::Viewer), 403),
        ("staff", svc.token_for("it-person", Role::Operator), 403),
        ("another practitioner", svc.token_for("dr-b", Role::Viewer), 404),
    ] {
        let res = svc.send(Method::POST, &path, &t, Some(&ask)).await;
        assert_eq!(res.status().as_u16(), want, "{who}");
    }
    assert_eq!(provider.count("Task"), 0);
    problem(svc.send(Method::POST, &path, &dr, Some(&json!({ "what": "" }))).await, 400).await;
    problem(svc.send(Method::POST, &path, &dr, Some(&json!({ "what": "a\nb" }))).await, 400).await;

    let res = svc.send(Method::POST, &path, &dr, Some(&ask)).await;
    assert_eq!(res.status(), 201);
    let sent = body(res).await;
    assert_eq!(sent["channel"], "fhir-task");
    let tasks = provider.resources("Task");
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(task["for"]["reference"], format!("Patient/{pid}"));
    assert_eq!((task["status"].as_str(), task["intent"].as_str()), (Some("requested"), Some("order")));
    assert_eq!(task["description"], "Laborbefunde seit 2025");
    assert_eq!(task["note"][0]["text"], "Zöliakie-Abklärung");
    assert_eq!(task["owner"]["reference"], "Organization/records-office");
    assert_eq!(task["requester"]["display"], "Dr. Anna Arzt");
    assert_eq!(task["identifier"][0]["value"], sent["id"]);
    assert_eq!(sent["sentTo"], format!("Task/{} at {}", task["id"].as_str().unwrap(), provider.host()));
    // in the sync log: sent, where to; not what was asked
    let log = request_log(&svc, &admin).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "sent");
    assert!(log[0]["details"].as_str().unwrap().contains("Task/"), "{log:?}");
    assert!(!log[0].to_string().contains("Labor"), "what was asked stays out of the log");

    // the provider fails: 502, logged as an error, no second Task
    provider.fault_next(1, FhirFault::Status(500));
    let v = problem(svc.send(Method::POST, &path, &dr, Some(&ask)).await, 502).await;
    assert!(v["detail"].as_str().unwrap().contains("500"), "{v}");
    assert_eq!(provider.count("Task"), 1);
    assert_eq!(request_log(&svc, &admin).await[0]["status"], "error");

    // a record without the provider's id cannot be asked for
    let rec = json!({ "patientGuid": mueller(), "family": "Müller", "given": "Anna" });
    assert_eq!(svc.send(Method::PUT, &format!("/api/v1/patients/{}", mueller()), &dr, Some(&rec)).await.status(), 200);
    let v = problem(svc.send(Method::POST, &path, &dr, Some(&ask)).await, 422).await;
    assert!(v["detail"].as_str().unwrap().contains("externalIds.hospital"), "{v}");
    assert_eq!(provider.count("Task"), 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_becomes_an_email_to_the_provider() {
    let smtp = SmtpServer::start(None);
    let extra = format!(
        "[serve.records]\nkey = \"{KEY}\"\n\n[serve.requests.smtp]\nserver = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\
         from = \"praxis@praxis.example\"\nto = \"records@hospital.example\"\npatient_id = \"hospital\"\n",
        smtp.port()
    );
    let svc = Service::start_with(ferry_tests::demo_site(), Setup { extra, ..Setup::default() }).await;
    let (admin, dr) = owner(&svc, Some("H-4711")).await;
    let path = format!("/api/v1/patients/{}/request-documents", mueller());
    let res = svc.send(Method::POST, &path, &dr, Some(&json!({ "what": "Entlassbrief 11/2026" }))).await;
    assert_eq!(res.status(), 201);
    let sent = body(res).await;
    assert_eq!((sent["channel"].as_str(), sent["sentTo"].as_str()), (Some("email"), Some("records@hospital.example")));
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(
        (m.from.as_str(), m.to.as_slice()),
        ("praxis@praxis.example", &["records@hospital.example".to_string()][..])
    );
    let id = sent["id"].as_str().unwrap();
    assert!(m.data.contains(&format!("Subject: Document request {id}")), "{}", m.data);
    let text = decoded_body(&m.data);
    assert!(text.contains("H-4711") && text.contains("Entlassbrief 11/2026"), "{text}");
    assert!(text.contains("Anna Müller"), "the provider is told whom: {text}");
    assert_eq!(request_log(&svc, &admin).await[0]["status"], "sent");

    // the mail server refuses the recipient: 502 naming the server's answer, logged
    smtp.reject_next();
    let v = problem(svc.send(Method::POST, &path, &dr, Some(&json!({ "what": "Befunde" }))).await, 502).await;
    assert!(v["detail"].as_str().unwrap().contains("550") || v["detail"].as_str().unwrap().contains("mailbox"), "{v}");
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(request_log(&svc, &admin).await[0]["status"], "error");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_serve_requests_the_route_says_what_to_add() {
    let svc = Service::start_with(
        ferry_tests::demo_site(),
        Setup { extra: format!("[serve.records]\nkey = \"{KEY}\"\n"), ..Setup::default() },
    )
    .await;
    let (_, dr) = owner(&svc, None).await;
    let path = format!("/api/v1/patients/{}/request-documents", mueller());
    let v = problem(svc.send(Method::POST, &path, &dr, Some(&json!({ "what": "x" }))).await, 403).await;
    assert!(v["detail"].as_str().unwrap().contains("[serve.requests"), "{v}");
    svc.stop().await;
}
