//! Requests for a patient's documents, sent to their primary provider
//! (`POST /api/v1/patients/{guid}/request-documents`): a FHIR `Task` on the
//! provider's FHIR server, or an e-mail to the provider's records office.
//! Either way the request is one row in the synchronization log (`request`,
//! `sent` or `error`, where it went — never what was asked or for whom);
//! the documents that answer it arrive through the provider's pipeline as
//! usual.
//!
//! Why the host and not a plugin: this is the service acting for a person
//! at the moment they ask, with an answer they wait for, not a pipeline
//! stage over items. The credentials follow the pipeline's rules all the
//! same: secrets only from `${VAR}`, sent over TLS (plain only to this
//! machine), the OAuth2 machinery of `grants.http_auth`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::config::{FhirRequests, RequestsConfig, SmtpRequests};
use crate::caps::http::auth::{Credential, OAuthClients};

/// How long one request to the provider may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the provider's FHIR server.
const MAX_ANSWER: usize = 1 << 20;

/// `POST /patients/{guid}/request-documents`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentRequest {
    /// What is asked for, one line: "Laborbefunde seit 2025", "discharge letter of 11/2026".
    pub what: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// A request as sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SentRequest {
    /// This request's id (in the Task's identifier `urn:ferry:request`, or the mail's subject).
    pub id: String,
    pub patient_guid: String,
    /// `fhir-task` or `email`.
    pub channel: String,
    /// `Task/{id}` on the provider's server, or the address mailed.
    pub sent_to: String,
    pub sent_at: String,
}

/// Why a request did not go out.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The record lacks what the provider needs to know the patient.
    #[error("{0}")]
    Record(String),
    /// The provider's side refused or failed.
    #[error("{0}")]
    Provider(String),
}

/// Who the request is for, as far as the provider is told.
pub struct Subject<'a> {
    pub guid: &'a str,
    pub family: &'a str,
    pub given: &'a str,
    /// The record's ids per platform.
    pub external_ids: &'a std::collections::BTreeMap<String, String>,
    /// The practitioner asking: name and e-mail from the registry.
    pub practitioner: &'a str,
}

/// The configured channel.
pub enum Requests {
    Fhir { cfg: FhirRequests, client: reqwest::Client, credential: Option<Credential> },
    Smtp { cfg: SmtpRequests },
}

impl Requests {
    pub fn new(cfg: &RequestsConfig) -> anyhow::Result<Requests> {
        if let Some(f) = &cfg.fhir {
            let credential = f.auth.as_ref().map(|a| OAuthClients::default().credential(a)).transpose()?;
            let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
            return Ok(Requests::Fhir { cfg: f.clone(), client, credential });
        }
        let smtp = cfg.smtp.clone().ok_or_else(|| anyhow::anyhow!("[serve.requests] has neither fhir nor smtp"))?;
        Ok(Requests::Smtp { cfg: smtp })
    }

    /// Where requests go, for `ferry check` and the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Requests::Fhir { cfg, .. } => format!("FHIR Task at {}", cfg.base_url),
            Requests::Smtp { cfg } => format!("e-mail to {} via {}", cfg.to, cfg.server),
        }
    }

    /// Sends one request.
    pub async fn send(&self, id: &str, who: &Subject<'_>, ask: &DocumentRequest) -> Result<SentRequest, RequestError> {
        let now = crate::ledger::now_ms();
        let (channel, sent_to) = match self {
            Requests::Fhir { cfg, client, credential } => {
                ("fhir-task", send_task(cfg, client, credential.as_ref(), id, who, ask).await?)
            }
            Requests::Smtp { cfg } => ("email", send_mail(cfg, id, who, ask).await?),
        };
        Ok(SentRequest {
            id: id.to_owned(),
            patient_guid: who.guid.to_owned(),
            channel: channel.into(),
            sent_to,
            sent_at: super::passes::rfc3339(now),
        })
    }
}

/// The Task: requested, to fulfil (send the documents), for the
/// provider's Patient, identified by the request id so that a repeat
/// (`If-None-Exist`) never makes a second one.
pub fn task(
    cfg: &FhirRequests,
    id: &str,
    patient_id: &str,
    who: &Subject<'_>,
    ask: &DocumentRequest,
) -> serde_json::Value {
    let mut task = serde_json::json!({
        "resourceType": "Task",
        "identifier": [{ "system": "urn:ferry:request", "value": id }],
        "status": "requested",
        "intent": "order",
        "priority": "routine",
        "code": {
            "coding": [{ "system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill", "display": "Fulfill the focal request" }],
            "text": "Send the patient's documents"
        },
        "description": ask.what,
        "for": { "reference": format!("Patient/{patient_id}") },
        "authoredOn": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "requester": { "display": who.practitioner },
    });
    if let Some(owner) = &cfg.owner {
        task["owner"] = serde_json::json!({ "reference": owner });
    }
    if let Some(note) = ask.note.as_ref().filter(|n| !n.trim().is_empty()) {
        task["note"] = serde_json::json!([{ "text": note }]);
    }
    task
}

async fn send_task(
    cfg: &FhirRequests,
    client: &reqwest::Client,
    credential: Option<&Credential>,
    id: &str,
    who: &Subject<'_>,
    ask: &DocumentRequest,
) -> Result<String, RequestError> {
    let patient_id = who.external_ids.get(&cfg.patient_id).ok_or_else(|| {
        RequestError::Record(format!(
            "the record has no externalIds.{}: the provider's id of this patient, which the Task names \
             (PUT the record with it)",
            cfg.patient_id
        ))
    })?;
    let base = cfg.base_url.trim_end_matches('/');
    let mut req = client
        .post(format!("{base}/Task"))
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .header("if-none-exist", format!("identifier=urn:ferry:request|{id}"))
        .body(serde_json::to_vec(&task(cfg, id, patient_id, who, ask)).expect("JSON serialises"));
    if let Some(c) = credential {
        let value = c.value(client, tokio::time::Instant::now() + TIMEOUT).await.map_err(|e| {
            use crate::bindings::types::HostError as H;
            let (H::Denied(m) | H::NotFound(m) | H::Invalid(m) | H::Unavailable(m) | H::Failed(m)) = e;
            RequestError::Provider(format!("no credential for the provider: {m}"))
        })?;
        req = req.header(c.header_name().clone(), value);
    }
    // host[:port] of the server, for the messages and `sentTo`
    let host = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| Some(format!("{}{}", u.host_str()?, u.port().map(|p| format!(":{p}")).unwrap_or_default())))
        .unwrap_or_else(|| base.to_owned());
    let res = req.send().await.map_err(|e| {
        RequestError::Provider(format!(
            "cannot reach the provider's FHIR server at {host}: {}",
            crate::util::root_cause(&e)
        ))
    })?;
    let status = res.status().as_u16();
    let location = res.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = crate::caps::http::read_capped(res, MAX_ANSWER).await.unwrap_or_default();
    if !(200..300).contains(&status) {
        let hint = match status {
            401 | 403 => "the credential was refused; check [serve.requests.fhir] auth",
            404 => "check [serve.requests.fhir] base_url",
            422 | 400 => "the server did not accept the Task (does it know this Patient id?)",
            _ => "try again later",
        };
        return Err(RequestError::Provider(format!("the provider's FHIR server at {host} answered {status}: {hint}")));
    }
    // the id: from the answer's resource, else its Location
    let from_body = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
    let from_location =
        location.as_deref().and_then(|l| l.split("/Task/").nth(1)).map(|r| r.split('/').next().unwrap_or(r).to_owned());
    let task_id = from_body.or(from_location).unwrap_or_default();
    Ok(format!("Task/{task_id} at {host}"))
}

/// The mail: what is asked, for whom (name, and the provider's id when the
/// record has it), who asks and how to answer.
pub fn mail_text(cfg: &SmtpRequests, id: &str, who: &Subject<'_>, ask: &DocumentRequest) -> (String, String) {
    let subject = format!("Document request {id}");
    let mut body = format!("Please send the following documents of your patient {} {}", who.given, who.family);
    if let Some(pid) = cfg.patient_id.as_ref().and_then(|k| who.external_ids.get(k)) {
        body.push_str(&format!(" (your patient id: {pid})"));
    }
    body.push_str(&format!(":\r\n\r\n  {}\r\n", ask.what));
    if let Some(note) = ask.note.as_ref().filter(|n| !n.trim().is_empty()) {
        body.push_str(&format!("\r\nNote: {note}\r\n"));
    }
    body.push_str(&format!(
        "\r\nRequested by {} through ferry; reply to {}.\r\nReference: {id}\r\n",
        who.practitioner, cfg.from
    ));
    (subject, body)
}

async fn send_mail(
    cfg: &SmtpRequests,
    id: &str,
    who: &Subject<'_>,
    ask: &DocumentRequest,
) -> Result<String, RequestError> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let bad = |what: &str| RequestError::Provider(format!("[serve.requests.smtp] {what}"));
    let (subject, body) = mail_text(cfg, id, who, ask);
    let message = Message::builder()
        .from(cfg.from.parse().map_err(|_| bad("from is not an e-mail address"))?)
        .to(cfg.to.parse().map_err(|_| bad("to is not an e-mail address"))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| RequestError::Provider(format!("the mail cannot be made: {e}")))?;
    type Transport = AsyncSmtpTransport<Tokio1Executor>;
    let (builder, default_port) = match cfg.security.as_str() {
        "tls" => (Transport::relay(&cfg.server), 465),
        "none" => (Ok(Transport::builder_dangerous(&cfg.server)), 25),
        _ => (Transport::starttls_relay(&cfg.server), 587),
    };
    let builder = builder.map_err(|e| RequestError::Provider(format!("the mail server {}: {e}", cfg.server)))?;
    let mut builder = builder.port(cfg.port.unwrap_or(default_port)).timeout(Some(TIMEOUT));
    if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
        builder = builder.credentials(Credentials::new(user.clone(), pass.0.clone()));
    }
    builder.build().send(message).await.map_err(|e| {
        // lettre's errors name the server's answer, never the password
        RequestError::Provider(format!("the mail server {} did not take the mail: {e}", cfg.server))
    })?;
    Ok(cfg.to.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_names_the_provider_patient_and_the_request() {
        let cfg = FhirRequests {
            base_url: "https://fhir.hospital.example/r4".into(),
            patient_id: "hospital".into(),
            owner: Some("Organization/records".into()),
            auth: None,
        };
        let ids = [("hospital".to_string(), "p-77".to_string())].into_iter().collect();
        let who = Subject { guid: "g1", family: "Muster", given: "Erika", external_ids: &ids, practitioner: "Dr. A" };
        let ask = DocumentRequest { what: "Laborbefunde seit 2025".into(), note: Some("dringend".into()) };
        let t = task(&cfg, "r-1", "p-77", &who, &ask);
        assert_eq!(t["for"]["reference"], "Patient/p-77");
        assert_eq!(t["identifier"][0]["value"], "r-1");
        assert_eq!((t["status"].as_str(), t["intent"].as_str()), (Some("requested"), Some("order")));
        assert_eq!(t["owner"]["reference"], "Organization/records");
        assert_eq!(t["note"][0]["text"], "dringend");
        assert!(!t.to_string().contains("Muster"), "the Task names the patient by the provider's id only");
        let smtp = SmtpRequests {
            server: "127.0.0.1".into(),
            port: None,
            security: "none".into(),
            username: None,
            password: None,
            from: "praxis@example.test".into(),
            to: "records@hospital.test".into(),
            patient_id: Some("hospital".into()),
        };
        let (subject, body) = mail_text(&smtp, "r-1", &who, &ask);
        assert_eq!(subject, "Document request r-1");
        assert!(body.contains("Erika Muster") && body.contains("p-77") && body.contains("Laborbefunde seit 2025"));
    }
}
