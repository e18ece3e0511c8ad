//! `POST /patients/{guid}/sync` → a job → `GET /jobs/{id}` until done: the
//! patient's items go through the pipeline again and are re-verified (an
//! object that went missing is stored again).

use std::time::Duration;

use ferry::serve::auth::Role;
use ferry_tests::demo_guid;

use crate::harness::{problem, Service, BUCKET};

async fn wait_done(svc: &Service, href: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = svc.json(href, Role::Operator).await;
        match v["state"].as_str().unwrap() {
            "done" | "failed" => return v,
            "queued" | "running" => {}
            s => panic!("unknown state {s}"),
        }
        assert!(std::time::Instant::now() < deadline, "the job did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_re_verifies_and_restores_a_patients_images() {
    let svc = Service::start().await;
    let guid = demo_guid(17);
    let img = svc.site.image(102);
    let key = svc.key_of(img);
    // someone deleted one of the patient's objects in the bucket
    svc.s3.client().delete_object().bucket(BUCKET).key(&key).send().await.unwrap();
    assert!(svc.s3.get(BUCKET, &key).await.is_none());
    let passes = svc.running.passes_completed();

    let res = svc.post(&format!("/api/v1/patients/{guid}/sync"), Some(&svc.token(Role::Operator))).await;
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let v: serde_json::Value = res.json_body().await;
    let job_id = v["jobId"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/jobs/{job_id}"));
    assert_eq!(v["href"], location.as_str());
    assert_eq!(v["itemsTotal"], 4);
    assert!(matches!(v["state"].as_str(), Some("queued")));

    let done = wait_done(&svc, &location).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["patientGuid"], guid.as_str());
    let c = &done["counts"];
    assert_eq!(
        (c["scanned"].as_u64(), c["stored"].as_u64(), c["unchanged"].as_u64(), c["failed"].as_u64()),
        (Some(4), Some(1), Some(3), Some(0)),
        "only the patient's items, re-verified: {done}"
    );
    assert_eq!(done["items"].as_array().unwrap().len(), 4);
    assert!(done["startedAt"].is_string() && done["finishedAt"].is_string());
    assert_eq!(svc.s3.get(BUCKET, &key).await.unwrap(), std::fs::read(&img.path).unwrap(), "stored again");
    assert!(svc.running.passes_completed() > passes);

    // the log says so
    let log = svc.json(&format!("/api/v1/patients/{guid}/logs?limit=4"), Role::Operator).await;
    let actions: Vec<&str> = log["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"upload") && actions.contains(&"verify"), "{actions:?}");

    let op = svc.token(Role::Operator);
    // no items for this guid; malformed; unknown job; viewers may not
    problem(svc.post(&format!("/api/v1/patients/{}/sync", ferry_tests::guid("nobody")), Some(&op)).await, 404).await;
    problem(svc.post("/api/v1/patients/bad%20guid/sync", Some(&op)).await, 400).await;
    problem(svc.get("/api/v1/jobs/0123456789abcdef", Some(&op)).await, 404).await;
    problem(svc.post(&format!("/api/v1/patients/{guid}/sync"), Some(&svc.token(Role::Viewer))).await, 403).await;
    svc.stop().await;
}

trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        let text = self.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}
