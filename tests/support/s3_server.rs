//! A real S3 server in-process: `s3s-fs` over a temp dir, served with
//! hyper on 127.0.0.1 with a random port, checking SigV4 signatures made
//! with fixed credentials ([`S3Server::access_key`], [`S3Server::secret_key`]).
//! Path-style addressing only (`http://127.0.0.1:port/bucket/key`); any
//! region name signs correctly, use [`REGION`].
//!
//! Fault injection, for the endpoint given to the code under test:
//! [`S3Server::set_down`] answers every request `503 SlowDown` (an S3 XML
//! error) without touching storage, [`S3Server::fail_next_puts`] answers
//! the next PutObject/UploadPart requests `500 InternalError`.
//!
//! The assertion helpers ([`S3Server::get`], [`S3Server::head`],
//! [`S3Server::list`]) use `aws-sdk-s3` through a second, private
//! listener: they see what is stored whatever the faults, and are not
//! counted in [`S3Server::requests`].
//!
//! Limitation of s3s-fs: it keeps each object's metadata in a file named
//! after the base64 of bucket and key, so keys longer than about 160 bytes
//! fail with a 500 (real S3 allows 1024).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::Client;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

use crate::runtime::ServerRuntime;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "FERRYTESTACCESSKEY";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "ferry-test-secret-key-0123456789abcdef";
/// The region to sign for.
pub const REGION: &str = "us-east-1";

#[derive(Default)]
struct Faults {
    down: AtomicBool,
    fail_puts: AtomicU64,
    requests: AtomicU64,
    data_puts: AtomicU64,
}

/// Facts about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    /// User metadata (`x-amz-meta-*`, without the prefix).
    pub metadata: HashMap<String, String>,
    pub content_type: Option<String>,
}

/// The S3 server. Stops (and deletes its data) when dropped.
pub struct S3Server {
    addr: SocketAddr,
    faults: Arc<Faults>,
    /// Talks to the private, fault-free listener.
    helper: Client,
    rt: ServerRuntime,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server with no buckets. Works from sync and async tests
    /// alike (the server has its own runtime).
    pub fn start() -> S3Server {
        let dir = tempfile::Builder::new().prefix("ferry-s3-").tempdir().expect("temp dir for the S3 server");
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs over the temp dir");
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let faults = Arc::new(Faults::default());
        let rt = ServerRuntime::new("s3");
        let (public, addr) = rt.bind();
        let (private, private_addr) = rt.bind();
        rt.spawn(serve(public, service.clone(), Some(faults.clone())));
        rt.spawn(serve(private, service, None));
        let helper = {
            let _in_rt = rt.handle().enter();
            client(&format!("http://{private_addr}"))
        };
        S3Server { addr, faults, helper, rt, dir }
    }

    /// `http://127.0.0.1:port`: the endpoint for the code under test.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn access_key(&self) -> &'static str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &'static str {
        SECRET_KEY
    }

    pub fn region(&self) -> &'static str {
        REGION
    }

    /// The folder s3s-fs stores into (bucket = folder, key = path).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a bucket (directly on disk: no request, never faulted).
    pub fn create_bucket(&self, name: &str) {
        assert!(
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "bad bucket name {name:?}"
        );
        std::fs::create_dir_all(self.dir.path().join(name)).expect("creating the bucket folder");
    }

    /// While `true`, every request gets `503 SlowDown` and storage is not touched.
    pub fn set_down(&self, down: bool) {
        self.faults.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` PutObject / UploadPart requests get `500 InternalError`
    /// (after their body is read; nothing is stored).
    pub fn fail_next_puts(&self, n: u64) {
        self.faults.fail_puts.store(n, Ordering::SeqCst);
    }

    /// Requests to [`S3Server::endpoint`] so far (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.faults.requests.load(Ordering::SeqCst)
    }

    /// PutObject / UploadPart requests to [`S3Server::endpoint`] so far
    /// (failed ones included): how many times data was sent.
    pub fn put_requests(&self) -> u64 {
        self.faults.data_puts.load(Ordering::SeqCst)
    }

    /// An `aws-sdk-s3` client for [`S3Server::endpoint`] (faults apply; the
    /// SDK's own retries are off so that a test sees them). Use it on any
    /// tokio runtime.
    pub fn client(&self) -> Client {
        client(&self.endpoint())
    }

    /// The object's bytes, or `None` if there is none.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (c, b, k) = (self.helper.clone(), bucket.to_owned(), key.to_owned());
        self.rt
            .run(async move {
                match c.get_object().bucket(&b).key(&k).send().await {
                    Ok(out) => Some(out.body.collect().await.expect("reading the object body").into_bytes().to_vec()),
                    Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
                    Err(e) => panic!("GET {b}/{k}: {}", describe(&e)),
                }
            })
            .await
    }

    /// Size, user metadata and content type of the object, or `None`.
    pub async fn head(&self, bucket: &str, key: &str) -> Option<Head> {
        let (c, b, k) = (self.helper.clone(), bucket.to_owned(), key.to_owned());
        self.rt
            .run(async move {
                match c.head_object().bucket(&b).key(&k).send().await {
                    Ok(out) => Some(Head {
                        size: out.content_length().unwrap_or_default() as u64,
                        metadata: out.metadata().cloned().unwrap_or_default(),
                        content_type: out.content_type().map(str::to_owned),
                    }),
                    Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => None,
                    Err(e) => panic!("HEAD {b}/{k}: {}", describe(&e)),
                }
            })
            .await
    }

    /// What the object's sidecar says: the one stored with it (its
    /// `ferry-sidecar` metadata, decoded), else `{key}.json`.
    pub async fn sidecar(&self, bucket: &str, key: &str) -> Option<serde_json::Value> {
        let head = self.head(bucket, key).await?;
        if let Some(v) = head.metadata.get(crate::SIDECAR_META) {
            return Some(crate::decode_inline_sidecar(v));
        }
        let bytes = self.get(bucket, &format!("{key}.json")).await?;
        Some(serde_json::from_slice(&bytes).expect("the sidecar object is JSON"))
    }

    /// Writes an object with `metadata` (as another uploader would).
    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>, metadata: &[(&str, &str)]) {
        let (c, b, k) = (self.helper.clone(), bucket.to_owned(), key.to_owned());
        let md: std::collections::HashMap<String, String> =
            metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.rt
            .run(async move {
                c.put_object()
                    .bucket(&b)
                    .key(&k)
                    .set_metadata(Some(md))
                    .body(body.into())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("PUT {b}/{k}: {}", describe(&e)));
            })
            .await
    }

    /// Keys starting with `prefix`, sorted (all pages).
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (c, b, p) = (self.helper.clone(), bucket.to_owned(), prefix.to_owned());
        self.rt
            .run(async move {
                let mut keys = Vec::new();
                let mut token = None;
                loop {
                    let out = c
                        .list_objects_v2()
                        .bucket(&b)
                        .prefix(&p)
                        .set_continuation_token(token)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("LIST {b}/{p}: {}", describe(&e)));
                    keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
                    match out.next_continuation_token() {
                        Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                        _ => break,
                    }
                }
                keys.sort();
                keys
            })
            .await
    }
}

/// An SDK error with the S3 code and message when there are some.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(e: &aws_sdk_s3::error::SdkError<E>) -> String {
    match e.as_service_error() {
        Some(s) => format!("{} ({})", s.code().unwrap_or("?"), s.message().unwrap_or_default()),
        None => format!("{e:?}"),
    }
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "ferry-tests"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// Does this request carry object data (PutObject or UploadPart)?
fn is_data_put(req: &Request<Incoming>) -> bool {
    if req.method() != Method::PUT || req.headers().contains_key("x-amz-copy-source") {
        return false;
    }
    // Path style: /bucket/key...
    let has_key = req.uri().path().trim_start_matches('/').split_once('/').is_some_and(|(_, k)| !k.is_empty());
    if !has_key {
        return false;
    }
    let params: Vec<&str> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or_default())
        .collect();
    let upload_part = params.contains(&"uploadId") && params.contains(&"partNumber");
    let put_object = params.iter().all(|p| *p == "x-id");
    upload_part || put_object
}

fn xml_error(status: StatusCode, code: &str, message: &str, resource: &str) -> Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <Resource>{resource}</Resource><RequestId>ferry-test-fault</RequestId></Error>"
    );
    let mut r = Response::new(s3s::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/xml"));
    r
}

/// Reads and discards a request body, so that the client sees the answer
/// rather than a connection cut mid-upload.
async fn drain(req: Request<Incoming>) {
    let _ = req.into_body().collect().await;
}

fn take_one(n: &AtomicU64) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
}

async fn handle(
    req: Request<Incoming>,
    s3: S3Service,
    faults: Option<Arc<Faults>>,
) -> Result<Response<s3s::Body>, s3s::HttpError> {
    if let Some(f) = faults {
        f.requests.fetch_add(1, Ordering::SeqCst);
        let data_put = is_data_put(&req);
        if data_put {
            f.data_puts.fetch_add(1, Ordering::SeqCst);
        }
        let resource = req.uri().path().to_owned();
        if f.down.load(Ordering::SeqCst) {
            drain(req).await;
            return Ok(xml_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
                &resource,
            ));
        }
        if data_put && take_one(&f.fail_puts) {
            drain(req).await;
            return Ok(xml_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
                &resource,
            ));
        }
    }
    // S3 commits a request it has taken in whole, whether or not the
    // client waits for the answer. s3s-fs does its work in steps (the
    // object's bytes, then its metadata): a handler dropped with the
    // connection (a client killed mid-request) would leave an object
    // without its metadata, which no real S3 does. So it runs to its end.
    let call = tokio::spawn(async move { s3.call(req.map(s3s::Body::from)).await });
    match call.await {
        Ok(r) => r,
        Err(e) => Ok(xml_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string(), "")),
    }
}

async fn serve(listener: tokio::net::TcpListener, s3: S3Service, faults: Option<Arc<Faults>>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            // Out of file descriptors, say: don't spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // small responses would otherwise wait for Nagle + delayed ACK (~40 ms)
        socket.set_nodelay(true).ok();
        let (s3, faults) = (s3.clone(), faults.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, s3.clone(), faults.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service).await;
        });
    }
}
