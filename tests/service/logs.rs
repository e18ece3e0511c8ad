//! `GET /patients/{guid}/logs` and `GET /logs/{id}`: the synchronization
//! log, for operators.

use ferry::serve::auth::Role;
use ferry_tests::demo_guid;

use crate::harness::{problem, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_synchronization_log_newest_first() {
    let svc = Service::start().await;
    let guid = demo_guid(17);
    let v = svc.json(&format!("/api/v1/patients/{guid}/logs"), Role::Operator).await;
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "one upload per stored image: {v}");
    let mut items: Vec<&str> = entries.iter().map(|e| e["itemId"].as_str().unwrap()).collect();
    items.sort();
    assert_eq!(
        items,
        ["P_000017/0000_101.dcm", "P_000017/0000_102.dcm", "P_000017/0000_103.dcm", "P_000017/0000_104.dcm"]
    );
    for e in entries {
        assert_eq!(e["action"], "upload");
        assert_eq!(e["status"], "ok");
        assert_eq!(e["patientGuid"], guid.as_str());
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // pages
    let p1 = svc.json(&format!("/api/v1/patients/{guid}/logs?limit=3"), Role::Operator).await;
    assert_eq!(p1["entries"].as_array().unwrap().len(), 3);
    let p2 = svc.json(p1["next"].as_str().unwrap(), Role::Operator).await;
    assert_eq!(p2["entries"].as_array().unwrap().len(), 1);
    assert!(p2.get("next").is_none());

    // one entry by id, through its href
    let e = svc.json(entries[0]["href"].as_str().unwrap(), Role::Operator).await;
    assert_eq!(e, entries[0]);

    let op = svc.token(Role::Operator);
    problem(svc.get("/api/v1/logs/999999", Some(&op)).await, 404).await;
    problem(svc.get("/api/v1/logs/abc", Some(&op)).await, 400).await;
    // a patient the ledger never heard of
    problem(svc.get(&format!("/api/v1/patients/{}/logs", ferry_tests::guid("nobody")), Some(&op)).await, 404).await;
    // viewers may not read the log
    problem(svc.get(&format!("/api/v1/patients/{guid}/logs"), Some(&svc.token(Role::Viewer))).await, 403).await;
    svc.stop().await;
}
