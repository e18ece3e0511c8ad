//! Who may call what, at the HTTP level: no token, a bad token, the wrong
//! role or clinic (the crypto details are unit-tested in `serve::auth`).

use std::time::Duration;

use ferry::serve::auth::Role;
use ferry_tests::demo_guid;

use crate::harness::{problem, Service, AUDIENCE, CLINIC, ISSUER, SECRET};

/// An HS256 token signed with `secret`, with these claims.
fn token(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(role: &str, exp: u64, aud: &str, clinic: &str) -> serde_json::Value {
    serde_json::json!({ "sub": "t", "iat": now(), "exp": exp, "aud": aud, "iss": ISSUER, "roles": [role], "clinic": clinic })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_matrix() {
    let svc = Service::start().await;
    let guid = demo_guid(17);
    let images = format!("/api/v1/patients/{guid}/images");
    let image = svc.image_path(svc.site.image(101));
    let sync = format!("/api/v1/patients/{guid}/sync");
    let logs = format!("/api/v1/patients/{guid}/logs");

    // no token, garbage, expired, wrong audience, wrong signature: 401 with a challenge
    let expired = token(SECRET, claims("admin", now() - 3600, AUDIENCE, CLINIC));
    let other_aud = token(SECRET, claims("admin", now() + 3600, "someone-else", CLINIC));
    let other_key = token("another-secret-another-secret-another", claims("admin", now() + 3600, AUDIENCE, CLINIC));
    for (what, t) in [
        ("no token", None),
        ("garbage", Some("not.a.jwt")),
        ("expired", Some(expired.as_str())),
        ("wrong audience", Some(other_aud.as_str())),
        ("wrong key", Some(other_key.as_str())),
    ] {
        for path in [&images, &image, &logs, &"/api/v1/patients?name=m".to_string()] {
            let res = svc.get(path, t).await;
            let challenge = res.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
            problem(res, 401).await;
            assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "{what} {path}: WWW-Authenticate");
        }
        problem(svc.post(&sync, t).await, 401).await;
    }

    // roles: viewer < operator < admin
    let viewer = svc.token(Role::Viewer);
    let operator = svc.token(Role::Operator);
    let admin = svc.token(Role::Admin);
    for t in [&viewer, &operator, &admin] {
        assert_eq!(svc.get(&images, Some(t)).await.status(), 200);
        assert_eq!(svc.get(&image, Some(t)).await.status(), 200);
    }
    problem(svc.post(&sync, Some(&viewer)).await, 403).await;
    problem(svc.get(&logs, Some(&viewer)).await, 403).await;
    for t in [&operator, &admin] {
        assert_eq!(svc.get(&logs, Some(t)).await.status(), 200);
        assert_eq!(svc.post(&sync, Some(t)).await.status(), 202);
    }

    // a token for another clinic: 403; without a clinic claim the service's
    // clinic is not contradicted
    let other_clinic = svc.mint(Role::Admin, Duration::from_secs(600), Some("clinic-8"));
    problem(svc.get(&images, Some(&other_clinic)).await, 403).await;
    problem(svc.get(&image, Some(&other_clinic)).await, 403).await;

    // no token needed here
    for open in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(svc.get(open, None).await.status(), 200, "{open}");
    }
    svc.stop().await;
}
