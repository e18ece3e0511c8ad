//! `/api/v1/openapi.json` documents exactly the routes that exist.

use std::collections::BTreeSet;

use ferry::serve::auth::Role;

use crate::harness::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route() {
    let svc = Service::start().await;
    let res = svc.get("/api/v1/openapi.json", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "OpenAPI 3");
    assert_eq!(doc["info"]["title"], "ferry API");
    let mut got = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            got.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    // the X-ray routes, each called below; the records routes are called in records.rs and documents.rs
    let xray: BTreeSet<String> = [
        "GET /api/v1/patients",
        "GET /api/v1/patients/{patientGuid}/images",
        "GET /api/v1/patients/{patientGuid}/images/{name}",
        "GET /api/v1/patients/{patientGuid}/images/{name}/preview",
        "GET /api/v1/patients/{patientGuid}/logs",
        "POST /api/v1/patients/{patientGuid}/sync",
        "GET /api/v1/logs/{id}",
        "GET /api/v1/jobs/{id}",
        "GET /api/v1/openapi.json",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let records = [
        "POST /api/v1/patients",
        "GET /api/v1/patients/{patientGuid}",
        "PUT /api/v1/patients/{patientGuid}",
        "DELETE /api/v1/patients/{patientGuid}",
        "GET /api/v1/users",
        "POST /api/v1/users",
        "GET /api/v1/users/me",
        "GET /api/v1/users/{sub}",
        "PUT /api/v1/users/{sub}",
        "DELETE /api/v1/users/{sub}",
        "GET /api/v1/access-log",
        // documents.rs
        "GET /api/v1/patients/{patientGuid}/documents",
        "POST /api/v1/patients/{patientGuid}/documents",
        "GET /api/v1/documents/{id}",
        "PUT /api/v1/documents/{id}",
        "DELETE /api/v1/documents/{id}",
        "GET /api/v1/documents/{id}/content",
        "POST /api/v1/documents/{id}/share",
        "GET /api/v1/documents/{id}/shares",
        "DELETE /api/v1/shares/{id}",
        "GET /api/v1/shared-with-me",
        "GET /api/v1/patients/{patientGuid}/shared-documents",
        // requests.rs
        "POST /api/v1/patients/{patientGuid}/request-documents",
    ];
    let expected: BTreeSet<String> = xray.iter().cloned().chain(records.iter().map(|r| r.to_string())).collect();
    assert_eq!(got, expected);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["Problem"].is_object());

    // and each documented route answers (not the router's 404)
    let guid = crate::harness::mueller();
    let name = svc.image_path(svc.site.image(101)).rsplit('/').next().unwrap().to_owned();
    let admin = svc.token(Role::Admin);
    for route in &xray {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{patientGuid}", &guid).replace("{name}", &name).replace("{id}", "1");
        let path = if path == "/api/v1/patients" { format!("{path}?name=m") } else { path };
        let res = svc.request(method.parse().unwrap(), &path, Some(&admin), &[]).await;
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert!(
            matches!(status, 200 | 202) || (path.contains("/jobs/") && status == 404 && body.contains("no such job")),
            "{route}: {status} {body}"
        );
    }
    svc.stop().await;
}
