//! `documents-demo <ferry binary>`: the documents half of `cargo xtask
//! demo`. Starts two FHIR test servers on 127.0.0.1 — a hospital (the
//! patients' primary provider, OAuth2 client credentials) and a practice
//! platform (bearer token) — seeds the hospital with documents, runs
//! `ferry run pipelines/demo-documents.toml` twice and prints what landed
//! on the platform: the second run stores nothing new.

use std::process::Command;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ferry_tests::pdf::pdf;
use ferry_tests::FhirServer;
use serde_json::json;

const KVNR: &str = "urn:oid:1.2.276.0.76.4.8";
const CLIENT: &str = "ferry-demo-clinic";
const SECRET: &str = "demo-client-secret";
const PLATFORM_TOKEN: &str = "demo-platform-token";

fn main() -> Result<()> {
    let ferry = std::env::args().nth(1).context("usage: documents-demo <path of the ferry binary>")?;
    let root = ferry_tests::workspace_root();
    let hospital = FhirServer::builder().client_secret(CLIENT, SECRET).start();
    let platform = FhirServer::builder().static_token(PLATFORM_TOKEN).start();

    // three patients at the hospital; the platform knows two of them
    let patients = [("A123456789", "Weber", "Anna"), ("B987654321", "Kaya", "Ben"), ("C555555555", "Roth", "Cleo")];
    let mut ids = Vec::new();
    for (kvnr, family, given) in patients {
        ids.push(hospital.add_resource(json!({
            "resourceType": "Patient",
            "identifier": [{ "system": KVNR, "value": kvnr }],
            "name": [{ "use": "official", "family": family, "given": [given] }],
            "birthDate": "1980-04-02",
        })));
    }
    platform.add_patient(&[(KVNR, "A123456789")]);
    platform.add_patient(&[(KVNR, "B987654321")]);
    let docs = [
        (0, "11502-2", "Laboratory report", pdf("Blood panel", "D:20241103", 1, "Hb 14.1 g/dl"), true),
        (0, "18842-5", "Discharge summary", pdf("Discharge letter", "D:20241110", 3, "Entlassbrief"), false),
        (1, "11506-3", "Progress note", pdf("Physiotherapy note", "D:20241115", 2, "Knee flexion 110"), true),
        (2, "11502-2", "Laboratory report", pdf("Lipid panel", "D:20241120", 1, "LDL 2.9 mmol/l"), true),
        (1, "11502-2", "Laboratory report", b"%PDF-1.7\ncut off in transfer".to_vec(), true),
    ];
    for (who, code, display, bytes, inline) in &docs {
        let attachment = if *inline {
            json!({ "contentType": "application/pdf", "title": format!("{display}.pdf"), "data": STANDARD.encode(bytes) })
        } else {
            let b = hospital.add_binary("application/pdf", bytes.clone());
            json!({ "contentType": "application/pdf", "title": format!("{display}.pdf"), "url": format!("Binary/{b}") })
        };
        hospital.add_resource(json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "type": { "coding": [{ "system": "http://loinc.org", "code": code, "display": display }] },
            "subject": { "reference": format!("Patient/{}", ids[*who]) },
            "date": "2024-11-20T09:30:00+01:00",
            "author": [{ "display": "Klinikum Nord" }],
            "content": [{ "attachment": attachment }],
        }));
    }
    println!(
        "==> hospital FHIR server {} ({} documents for 3 patients), practice platform {} (knows 2 of them)",
        hospital.base_url(),
        docs.len(),
        platform.base_url()
    );

    let run = |what: &str| -> Result<()> {
        println!("==> {what}: ferry run pipelines/demo-documents.toml");
        let status = Command::new(&ferry)
            .current_dir(&root)
            .args(["run", "pipelines/demo-documents.toml"])
            .env("DEMO_PROVIDER_HOST", hospital.host())
            .env("DEMO_PROVIDER_BASE", hospital.base_url())
            .env("DEMO_PROVIDER_TOKEN_URL", hospital.token_url())
            .env("DEMO_PROVIDER_SECRET", SECRET)
            .env("DEMO_PLATFORM_HOST", platform.host())
            .env("DEMO_PLATFORM_BASE", platform.base_url())
            .env("DEMO_PLATFORM_TOKEN", PLATFORM_TOKEN)
            .status()
            .context("running ferry")?;
        // unresolved and failed documents make the exit status 1; the demo
        // has one of each on purpose (2 is an error)
        if !matches!(status.code(), Some(0 | 1)) {
            bail!("ferry run failed ({status})");
        }
        Ok(())
    };
    let _ = std::fs::remove_dir_all(root.join("target/demo/documents-state"));
    run("first pass")?;
    println!("\nOn the practice platform now:");
    for d in platform.resources("DocumentReference") {
        let a = &d["content"][0]["attachment"];
        println!(
            "  {:<36} {:<24} {:<18} {} ({} bytes)",
            format!("DocumentReference/{}", d["id"].as_str().unwrap_or("?")),
            d["subject"]["reference"].as_str().unwrap_or("?"),
            d["type"]["coding"][0]["display"].as_str().unwrap_or("?"),
            a["title"].as_str().unwrap_or("?"),
            a["size"],
        );
    }
    println!(
        "  (Cleo is unknown to the platform: unresolved, not attached to anyone; the cut-off PDF failed in doc-meta)\n"
    );
    hospital.reset_counts();
    run("second pass")?;
    println!(
        "  the platform still has {2} documents; the hospital was asked {0} time(s) for DocumentReferences and \
         {1} Binary downloaded (a pass starts before the first document that did not settle, here the \
         unresolved and the failed one, so they are looked at again)",
        hospital.request_count("GET /DocumentReference"),
        hospital.request_count("GET /Binary/{id}"),
        platform.count("DocumentReference")
    );
    Ok(())
}
