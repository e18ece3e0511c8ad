//! Tests of the test servers themselves, through real clients (reqwest,
//! aws-sdk-s3): if a fake peer lies, every end-to-end test built on it does.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde_json::{json, Value};

use super::resolver_server::API_KEY_HEADER;
use super::s3_server::describe;
use super::*;

// ---------------------------------------------------------------- resolver

async fn post(url: &str, body: Value, key: Option<&str>) -> (u16, Vec<(String, String)>, String) {
    let mut req = reqwest::Client::new().post(url).header("content-type", "application/json").body(body.to_string());
    if let Some(k) = key {
        req = req.header(API_KEY_HEADER, k);
    }
    answer(req.send().await.expect("request")).await
}

async fn answer(r: reqwest::Response) -> (u16, Vec<(String, String)>, String) {
    let status = r.status().as_u16();
    let headers =
        r.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned())).collect();
    (status, headers, r.text().await.expect("body"))
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn demo_resolver() -> ResolverServer {
    ResolverServer::start([("C-1001", "g-1"), ("C-1002", "g-2"), ("C-1002", "g-3"), ("C 7/ü", "g-7")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_answers() {
    let server = demo_resolver();
    assert!(server.url().ends_with("/api/app/patient-pms-resolver/resolve"));
    assert_eq!(server.host(), server.addr().to_string());

    let (status, headers, body) = post(&server.url(), json!({"cardId": "C-1001"}), None).await;
    assert_eq!((status, parse(&body)), (200, json!({"patientGuid": "g-1"})));
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    let (status, _, body) = post(&server.url(), json!({"cardId": "C-9"}), None).await;
    assert_eq!((status, parse(&body)), (404, json!({"error": "not found"})));
    let (status, _, body) = post(&server.url(), json!({"cardId": "C-1002"}), None).await;
    assert_eq!((status, parse(&body)), (200, json!({"patientGuid": ["g-2", "g-3"]})));
    let (status, _, _) = post(&server.url(), json!({"card": "C-1001"}), None).await;
    assert_eq!(status, 400);

    // GET, with the card id percent-encoded as http-resolver does.
    let url = server.get_url().replace("{cardId}", "C%207%2F%C3%BC");
    let (status, _, body) = answer(reqwest::get(&url).await.unwrap()).await;
    assert_eq!((status, parse(&body)), (200, json!({"patientGuid": "g-7"})));

    // Batch: known cards only, one result per guid.
    let (status, _, body) = post(&server.batch_url(), json!({"cardIds": ["C-1001", "C-9", "C-1002"]}), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        parse(&body),
        json!({"results": [
            {"cardId": "C-1001", "patientGuid": "g-1"},
            {"cardId": "C-1002", "patientGuid": "g-2"},
            {"cardId": "C-1002", "patientGuid": "g-3"},
        ]})
    );
    assert_eq!(post(&server.batch_url(), json!({"cardIds": "C-1"}), None).await.0, 400);

    assert_eq!(server.requests(), 7);
    assert_eq!(server.requests_for("C-1001"), 2);
    assert_eq!(server.requests_for("C-9"), 2);
    assert_eq!(server.requests_for("C 7/ü"), 1);
    assert_eq!(server.requests_for("C-5"), 0);
    server.reset_counts();
    assert_eq!(server.requests(), 0);

    // Answers change at runtime.
    server.set_mapping("C-1002", "g-4");
    server.add_mapping("C-9", "g-9");
    server.remove_mapping("C-1001");
    assert_eq!(parse(&post(&server.url(), json!({"cardId": "C-1002"}), None).await.2), json!({"patientGuid": "g-4"}));
    assert_eq!(parse(&post(&server.url(), json!({"cardId": "C-9"}), None).await.2), json!({"patientGuid": "g-9"}));
    assert_eq!(post(&server.url(), json!({"cardId": "C-1001"}), None).await.0, 404);

    // Wrong method.
    let r = reqwest::Client::new().get(server.batch_url()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_faults() {
    let server = demo_resolver();
    let url = server.url();
    let ask = || post(&url, json!({"cardId": "C-1001"}), None);

    server.set_fault(Fault::Status(500));
    for _ in 0..3 {
        let (status, _, body) = ask().await;
        assert_eq!((status, parse(&body)), (500, json!({"error": "injected fault"})));
    }
    server.set_fault(Fault::StatusTimes(503, 2));
    assert_eq!(ask().await.0, 503);
    assert_eq!(server.fault(), Fault::StatusTimes(503, 1));
    assert_eq!(ask().await.0, 503);
    assert_eq!(server.fault(), Fault::None);
    assert_eq!(ask().await.0, 200);

    server.set_fault(Fault::RateLimited { retry_after_secs: 2, times: 1 });
    let (status, headers, _) = ask().await;
    assert_eq!(status, 429);
    assert!(headers.contains(&("retry-after".into(), "2".into())), "{headers:?}");
    assert_eq!(ask().await.0, 200);

    server.set_fault(Fault::Slow(Duration::from_millis(300)));
    let t = Instant::now();
    assert_eq!(ask().await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    server.set_fault(Fault::Malformed);
    let (status, _, body) = ask().await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    let (status, _, body) = post(&server.batch_url(), json!({"cardIds": ["C-1001"]}), None).await;
    assert!(status == 200 && serde_json::from_str::<Value>(&body).is_err());

    server.set_fault(Fault::Status(401));
    assert_eq!(ask().await.0, 401);
    server.set_fault(Fault::None);
    assert_eq!(ask().await.0, 200);
    assert_eq!(server.requests(), 13);
    assert_eq!(server.requests_for("C-1001"), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_api_key() {
    let server = demo_resolver().with_api_key("k-123");
    let body = json!({"cardId": "C-1001"});
    let (status, _, text) = post(&server.url(), body.clone(), None).await;
    assert_eq!((status, parse(&text)), (401, json!({"error": "missing or wrong API key"})));
    assert_eq!(post(&server.url(), body.clone(), Some("wrong")).await.0, 401);
    assert_eq!(post(&server.url(), body.clone(), Some("k-123")).await.0, 200);
    assert_eq!(post(&server.batch_url(), json!({"cardIds": []}), Some("k-123")).await.0, 200);
    server.set_api_key(None);
    assert_eq!(post(&server.url(), body, None).await.0, 200);
}

#[test]
fn servers_work_from_sync_tests_and_stop_on_drop() {
    let resolver = demo_resolver();
    let s3 = S3Server::start();
    let urls = [resolver.url(), s3.endpoint()];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        assert_eq!(post(&urls[0], json!({"cardId": "C-1001"}), None).await.0, 200);
        // Unsigned: refused, but answered.
        assert_eq!(reqwest::get(&urls[1]).await.unwrap().status().as_u16(), 403);
    });
    drop(resolver);
    drop(s3);
    rt.block_on(async {
        for url in &urls {
            let e = reqwest::Client::new().get(url).timeout(Duration::from_secs(5)).send().await;
            assert!(e.is_err(), "{url} still answers");
        }
    });
}

// ---------------------------------------------------------------------- S3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_put_get_list_multipart() {
    let server = S3Server::start();
    server.create_bucket("ferry");
    assert_eq!(server.region(), "us-east-1");
    let c = server.client();

    c.put_object()
        .bucket("ferry")
        .key("images/g-1/Pano.dcm")
        .body(ByteStream::from(b"DICM bytes".to_vec()))
        .content_type("application/dicom")
        .metadata("ferry-item-id", "P_1/0000_5.dcm")
        .send()
        .await
        .map_err(|e| describe(&e))
        .unwrap();
    for (key, body) in [("images/g-1/Pano.dcm.json", "{}"), ("images/g-2/a b ü.dcm", "x"), ("other/x", "y")] {
        c.put_object().bucket("ferry").key(key).body(ByteStream::from_static(body.as_bytes())).send().await.unwrap();
    }

    assert_eq!(server.get("ferry", "images/g-1/Pano.dcm").await.as_deref(), Some(&b"DICM bytes"[..]));
    assert_eq!(server.get("ferry", "images/g-1/nothing").await, None);
    let head = server.head("ferry", "images/g-1/Pano.dcm").await.unwrap();
    assert_eq!(head.size, 10);
    assert_eq!(head.content_type.as_deref(), Some("application/dicom"));
    assert_eq!(head.metadata.get("ferry-item-id").map(String::as_str), Some("P_1/0000_5.dcm"));
    assert_eq!(server.head("ferry", "images/nothing").await, None);
    assert_eq!(
        server.list("ferry", "images/").await,
        ["images/g-1/Pano.dcm", "images/g-1/Pano.dcm.json", "images/g-2/a b ü.dcm"]
    );
    assert_eq!(server.list("ferry", "").await.len(), 4);
    assert!(server.list("ferry", "nope/").await.is_empty());
    // Stored as plain files.
    assert!(server.root().join("ferry/images/g-2/a b ü.dcm").is_file());

    // Pagination with a small page size, through the public client.
    let page = c.list_objects_v2().bucket("ferry").max_keys(2).send().await.unwrap();
    assert_eq!(page.contents().len(), 2);
    assert_eq!(page.is_truncated(), Some(true));

    // Conditional create (what a store's put-file-new relies on).
    let e = c
        .put_object()
        .bucket("ferry")
        .key("other/x")
        .if_none_match("*")
        .body(ByteStream::from_static(b"z"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412), "{}", describe(&e));
    assert_eq!(server.get("ferry", "other/x").await.as_deref(), Some(&b"y"[..]));

    // Multipart: a 5 MiB part and a small last one.
    let big: Vec<u8> = (0..5 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let up = c
        .create_multipart_upload()
        .bucket("ferry")
        .key("images/g-3/ct.dcm")
        .metadata("ferry-sha256", "abc")
        .content_type("application/dicom")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (n, chunk) in big.chunks(5 * 1024 * 1024).enumerate() {
        let n = n as i32 + 1;
        let part = c
            .upload_part()
            .bucket("ferry")
            .key("images/g-3/ct.dcm")
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(CompletedPart::builder().part_number(n).set_e_tag(part.e_tag().map(str::to_owned)).build());
    }
    c.complete_multipart_upload()
        .bucket("ferry")
        .key("images/g-3/ct.dcm")
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map_err(|e| describe(&e))
        .unwrap();
    assert_eq!(server.get("ferry", "images/g-3/ct.dcm").await.unwrap(), big);
    let head = server.head("ferry", "images/g-3/ct.dcm").await.unwrap();
    assert_eq!(head.size, big.len() as u64);
    assert_eq!(head.metadata.get("ferry-sha256").map(String::as_str), Some("abc"));
    assert_eq!(server.put_requests(), 7, "4 puts, 1 refused conditional put, 2 parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_checks_signatures() {
    let server = S3Server::start();
    server.create_bucket("ferry");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .credentials_provider(aws_sdk_s3::config::Credentials::new(server.access_key(), "wrong", None, None, "t"))
        .force_path_style(true)
        .build();
    let c = aws_sdk_s3::Client::from_conf(config);
    let e = c.put_object().bucket("ferry").key("k").body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403), "{}", describe(&e));
    assert!(server.list("ferry", "").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults() {
    let server = S3Server::start();
    server.create_bucket("ferry");
    let c = server.client();
    let put = |key: &'static str| c.put_object().bucket("ferry").key(key).body(ByteStream::from_static(b"data")).send();
    put("a").await.unwrap();

    // Down: 503 SlowDown for everything, nothing stored; helpers still see.
    server.set_down(true);
    let e = put("b").await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(e.as_service_error().and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s)), Some("SlowDown"));
    let e = c.head_object().bucket("ferry").key("a").send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503));
    let e = c.list_objects_v2().bucket("ferry").send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(server.list("ferry", "").await, ["a"]);
    assert_eq!(server.get("ferry", "a").await.as_deref(), Some(&b"data"[..]));
    server.set_down(false);
    put("b").await.unwrap();

    // Failed uploads: the next two data PUTs get 500, reads are untouched.
    server.fail_next_puts(2);
    let before = server.put_requests();
    for key in ["c", "c"] {
        let e = put(key).await.unwrap_err();
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
        assert_eq!(
            e.as_service_error().and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s)),
            Some("InternalError")
        );
    }
    c.head_object().bucket("ferry").key("a").send().await.unwrap();
    assert_eq!(server.get("ferry", "c").await, None);
    put("c").await.unwrap();
    assert_eq!(server.put_requests() - before, 3);

    // An upload part fails too.
    server.fail_next_puts(1);
    let up = c.create_multipart_upload().bucket("ferry").key("m").send().await.unwrap();
    let e = c
        .upload_part()
        .bucket("ferry")
        .key("m")
        .upload_id(up.upload_id().unwrap())
        .part_number(1)
        .body(ByteStream::from_static(b"part"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(server.list("ferry", "").await, ["a", "b", "c"]);
    assert_eq!(server.requests(), 11, "helpers are not counted");
}
