//! `GET /patients?name=`: first/last name prefixes, case and accents
//! ignored, from the ledger's index.

use ferry::serve::auth::Role;
use ferry_tests::demo_guid;

use crate::harness::{problem, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_patients_by_name_prefix_ignoring_case_and_accents() {
    let svc = Service::start().await;
    let search = |q: &'static str| {
        let svc = &svc;
        async move {
            let v = svc.json(&format!("/api/v1/patients?name={q}"), Role::Viewer).await;
            v.as_array().unwrap().iter().map(|h| h["patientGuid"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    let mueller = demo_guid(17);
    for q in ["m%C3%BCller", "MULLER", "mueller", "M%C3%BCl", "anna", "anna%20m%C3%BC", "M%C3%9CLLER%20ANNA"] {
        assert_eq!(search(q).await, vec![mueller.clone()], "{q}");
    }
    // Schmidt, Jürgen; Weiß, Hans-Peter
    assert_eq!(search("jurgen").await, vec![demo_guid(23)]);
    assert_eq!(search("weiss").await, vec![demo_guid(58)]);
    assert_eq!(search("hans-peter").await, vec![demo_guid(58)]);
    // prefix, not substring; patients with no stored image are not indexed
    assert!(search("ller").await.is_empty());
    assert!(search("yilmaz").await.is_empty(), "quarantined: never stored, never indexed");

    let v = svc.json("/api/v1/patients?name=m%C3%BCller", Role::Viewer).await;
    assert_eq!(v[0]["name"], "Müller, Anna");
    assert_eq!(v[0]["imageCount"], 4);
    assert_eq!(v[0]["imagesHref"], format!("/api/v1/patients/{mueller}/images"));

    let token = svc.token(Role::Viewer);
    for bad in ["/api/v1/patients", "/api/v1/patients?name=", "/api/v1/patients?name=%20%20"] {
        let p = problem(svc.get(bad, Some(&token)).await, 400).await;
        assert!(p["detail"].as_str().unwrap().contains("name"), "{p}");
    }
    svc.stop().await;
}
