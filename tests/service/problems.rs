//! Errors are RFC 7807 problem documents; unknown guids are 404,
//! malformed ones 400; an image name is one key segment whatever the
//! encoding tricks (`..`, `%2e%2e`, `%2F`, `\`, control characters).

use ferry::serve::auth::Role;
use ferry_tests::demo_guid;

use crate::harness::{problem, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_guids() {
    let svc = Service::start().await;
    let token = svc.token(Role::Viewer);
    let unknown = ferry_tests::guid("never-a-patient");
    let p = problem(svc.get(&format!("/api/v1/patients/{unknown}/images"), Some(&token)).await, 404).await;
    assert_eq!(p["type"], "urn:ferry:problem:not-found");
    assert_eq!(p["title"], "Not Found");
    assert!(p["detail"].as_str().unwrap().contains(&unknown), "{p}");
    problem(svc.get(&format!("/api/v1/patients/{unknown}/images/x.dcm"), Some(&token)).await, 404).await;

    let p = problem(svc.get("/api/v1/patients/bad%20guid/images", Some(&token)).await, 400).await;
    assert_eq!(p["type"], "urn:ferry:problem:invalid-guid", "{p}");
    // sent byte for byte: a URL library would resolve `%2e%2e` as `..`
    for bad in ["bad%20guid", "%2e%2e", "..", ".hidden", "a%2Fb", "a%5Cb", "%00", &"x".repeat(129), "g%C3%BCid"] {
        for path in [format!("/api/v1/patients/{bad}/images"), format!("/api/v1/patients/{bad}/images/x.dcm")] {
            let (status, body) = svc.raw_get(&path, Some(&token)).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body.contains("urn:ferry:problem:invalid-guid"), "{path}: {body}");
        }
    }
    // unknown API routes and wrong methods are problems too
    problem(svc.get("/api/v1/nope", Some(&token)).await, 404).await;
    let res =
        svc.request(reqwest::Method::DELETE, &format!("/api/v1/patients/{unknown}/images"), Some(&token), &[]).await;
    assert_eq!(res.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("GET,HEAD"));
    problem(res, 405).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_names_cannot_leave_the_patients_folder() {
    let svc = Service::start().await;
    let token = svc.token(Role::Viewer);
    let guid = demo_guid(17);
    let other = svc.image_path(svc.site.image(105)); // Schmidt's image
    let other_name = other.rsplit('/').next().unwrap();
    let base = format!("/api/v1/patients/{guid}/images");
    for name in [
        "%2e%2e".to_string(),
        "%2E%2E".into(),
        ".".into(),
        "%2e".into(),
        format!("..%2F{}%2F{other_name}", demo_guid(23)),
        format!("%2e%2e%2F%2e%2e%2Fimages%2F{}%2F{other_name}", demo_guid(23)),
        "a%2Fb".into(),
        "a%5Cb".into(),
        "..%5C..%5Cx".into(),
        "%00x.dcm".into(),
        "x%0A.dcm".into(),
        ".hidden".into(),
        "%2Eenv".into(),
    ] {
        for suffix in ["", "/preview"] {
            // sent byte for byte: a URL library would resolve `%2e%2e` as `..`
            let path = format!("{base}/{name}{suffix}");
            let (status, body) = svc.raw_get(&path, Some(&token)).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body.contains("urn:ferry:problem:invalid-name"), "{path}: {body}");
        }
    }
    // literal `..` and `.` segments
    for target in [format!("{base}/.."), format!("{base}/../preview"), format!("{base}/./preview")] {
        let (status, body) = svc.raw_get(&target, Some(&token)).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("invalid-name"), "{target}: {body}");
    }
    // `/..` above the name climbs into another route's parameter: still refused or not found, never served
    let (status, body) =
        svc.raw_get(&format!("/api/v1/patients/{guid}/../{}/images", demo_guid(23)), Some(&token)).await;
    assert!(status == 400 || status == 404, "{status}: {body}");
    svc.stop().await;
}
