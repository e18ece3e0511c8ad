//! `http.send-file` and `http.send-to-spool` (WIT 0.1.1): bytes stay
//! host-side both ways. A source plugin (`fixtures/http-spool`) running
//! with a 16 MiB memory limit downloads a 40 MB file from a real HTTP
//! server on 127.0.0.1 into the spool, uploads it back three ways (raw,
//! base64 inside JSON, multipart) and emits it as an item the stock store
//! stores: if the bytes crossed into the guest, the instance would hit its
//! limit. The spool is empty once the item has its outcome. The source is
//! a document source: its facts (type, date, title, author) reach the
//! store as `document.*` metadata.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use ferry::runner::Outcome;
use ferry_tests::{demo_guid, SiteBuilder};
use sha2::{Digest, Sha256};

use crate::harness::{run, runtime, Fixture};

#[derive(Default)]
struct Seen {
    gets: usize,
    /// (how, content-type, body)
    uploads: Vec<(String, String, Vec<u8>)>,
}

struct Peer {
    file: Vec<u8>,
    seen: Mutex<Seen>,
}

async fn serve_file(State(p): State<Arc<Peer>>) -> (StatusCode, Vec<u8>) {
    let first = {
        let mut s = p.seen.lock().unwrap();
        s.gets += 1;
        s.gets == 1
    };
    // the first answer is a 503 with a body: spooled, then thrown away
    // when the host retries
    if first {
        return (StatusCode::SERVICE_UNAVAILABLE, b"busy, try again".to_vec());
    }
    (StatusCode::OK, p.file.clone())
}

async fn upload(
    State(p): State<Arc<Peer>>,
    UrlPath(how): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    p.seen.lock().unwrap().uploads.push((how, ct, body.to_vec()));
    StatusCode::OK
}

async fn start(file: Vec<u8>) -> (SocketAddr, Arc<Peer>) {
    let peer = Arc::new(Peer { file, seen: Mutex::new(Seen::default()) });
    let app = Router::new()
        .route("/file", get(serve_file))
        .route("/upload/{how}", post(upload))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(peer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, peer)
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn pipeline(fx: &Fixture, addr: SocketAddr, pipeline_extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "spool"
plugin_path = ["{plugins}"]
state_dir = "state"
{pipeline_extra}

[source]
plugin = "fixture-http-spool"
grants.http = ["127.0.0.1:{port}"]
limits = {{ memory = "16MiB", timeout = "60s" }}
config = {{ download = "http://{addr}/file", upload = "http://{addr}/upload", card_id = "C-1" }}

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "site" }}
config = {{ root = "maps", path = "card-map.csv" }}

[store]
plugin = "store"
grants.object_store = {{ kind = "fs", path = "store" }}
"#,
        plugins = ferry_tests::plugin_dir().display(),
        port = addr.port(),
    )
    .replace("{fx}", &fx.dir.path().display().to_string())
}

fn spool_files(fx: &Fixture) -> Vec<String> {
    let dir = fx.dir.path().join("state/spool");
    std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// 40 MB that do not compress and differ per offset.
fn big_file() -> Vec<u8> {
    let mut out = Vec::with_capacity(40 << 20);
    let mut block = Sha256::digest(b"ferry").to_vec();
    while out.len() < 40 << 20 {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_megabytes_pass_through_a_sixteen_megabyte_guest_both_ways() {
    let file = big_file();
    let (addr, peer) = start(file.clone()).await;
    let fx = Fixture::new(SiteBuilder::new().map_card("C-1", &demo_guid(1)));
    let rt = runtime(fx.load(&pipeline(&fx, addr, ""))).await;
    let s = run(&rt).await;
    assert!(!s.has_failures(), "{} {:?} {:?}", s.line(), s.errors(), s.reports());
    assert_eq!(s.count(Outcome::Stored), 1, "{}", s.line());

    // stored: the very bytes the server sent
    let key = format!("images/{}/downloaded.bin", demo_guid(1));
    let stored = fx.stored();
    assert_eq!(stored.get(&key), Some(&sha(&file)), "{stored:#?}");
    // the document's facts reached the store as `document.*` metadata
    let sidecar = fx.sidecar(&key);
    let md = &sidecar["metadata"];
    assert_eq!(md["document.type.system"], "http://loinc.org", "{sidecar:#}");
    assert_eq!(md["document.type.code"], "11502-2");
    assert_eq!(md["document.type.display"], "Laboratory report");
    assert_eq!(md["document.content-type"], "application/pdf");
    assert_eq!(md["document.date"], "2026-11-30");
    assert_eq!(md["document.title"], "Blood panel");
    assert_eq!(md["document.author"], "Praxis Dr. Beispiel");

    let seen = peer.seen.lock().unwrap();
    assert_eq!(seen.gets, 2, "the 503 was retried once");
    let uploads: Vec<&str> = seen.uploads.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(uploads, ["raw", "base64", "multipart"]);
    // raw: the file as it is
    assert_eq!(sha(&seen.uploads[0].2), sha(&file));
    // base64: inside the JSON template, decodable
    let json: serde_json::Value = serde_json::from_slice(&seen.uploads[1].2).expect("the template stays JSON");
    assert_eq!(json["resourceType"], "Binary");
    let decoded = base64::engine::general_purpose::STANDARD.decode(json["data"].as_str().unwrap()).unwrap();
    assert_eq!(sha(&decoded), sha(&file));
    // multipart: a text field, then the file, as RFC 7578 lays them out
    let (_, ct, body) = &seen.uploads[2];
    let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap_or_else(|| panic!("content type {ct}"));
    let mut want = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\npanoramic\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"pano.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    want.extend_from_slice(&file);
    want.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(sha(body), sha(&want), "multipart body ({} bytes, want {})", body.len(), want.len());
    drop(seen);

    // nothing left in the spool: the 503's body went at the retry, the
    // file with its item
    assert_eq!(spool_files(&fx), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_spool_max_is_refused_and_not_kept() {
    let (addr, _peer) = start(big_file()).await;
    let fx = Fixture::new(SiteBuilder::new().map_card("C-1", &demo_guid(1)));
    let rt = runtime(fx.load(&pipeline(&fx, addr, "spool_max = \"8MiB\""))).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 0, "{}", s.line());
    let errors = s.errors().join("\n");
    assert!(errors.contains("larger than 8388608 bytes") && errors.contains("spool_max"), "{errors}");
    assert!(fx.stored().is_empty());
    assert_eq!(spool_files(&fx), Vec::<String>::new(), "the partial body was removed");
}
