//! The S3 backend of `object-store` (AWS S3 or any S3-compatible server).
//!
//! Files up to `multipart_threshold` go up in one `PutObject`: a small one
//! (≤ 1 MiB, an intra-oral X-ray) read once into memory, hashed and sent from
//! those bytes, a larger one streamed from the file; larger ones in parts of
//! `part_size`, each read from its offset, so memory stays constant for a
//! 300 MB CBCT volume. The SHA-256 of the whole file is computed host-side
//! first and sent with the object (`x-amz-checksum-sha256` for single puts,
//! per-part checksums for multipart, and always as `ferry-sha256` user
//! metadata so `head` can compare without downloading). The SDK retries
//! 5xx, throttling and timeouts with backoff; what still fails comes back
//! as `unavailable` (retryable) or a permanent error with the reason.
//!
//! `ferry serve` reads objects back through `get` (a streamed, optionally
//! ranged GetObject) or hands out presigned GET URLs (`presign_get`).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::body::SdkBody;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{check_key, ByteRange, ByteStream as ObjectBytes, Listing, Metadata, ObjectInfo, ObjectStore, Pace};
use crate::caps::CapError;

use crate::config::S3Grant;

/// Marks the error of a conditional put that found the key taken.
const PRECONDITION: &str = "PreconditionFailed";

/// Files up to this size are read once, into memory, hashed and sent from
/// the same bytes: one blocking task per upload instead of one per chunk
/// read, and the checksum is of exactly what went up. Larger files stream
/// from disk. Extra memory: at most the store's concurrency × this.
const READ_WHOLE: u64 = 1 << 20;

/// User metadata key holding the hex SHA-256 of the object.
pub const SHA_META: &str = "ferry-sha256";

pub struct S3Store {
    grant: S3Grant,
    client: OnceCell<aws_sdk_s3::Client>,
    /// Keys with a create-only put in flight (one writer per key).
    claims: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl S3Store {
    pub fn new(grant: S3Grant) -> Self {
        S3Store { grant, client: OnceCell::new(), claims: Mutex::new(HashMap::new()) }
    }

    async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                let g = &self.grant;
                let region = aws_config::meta::region::RegionProviderChain::first_try(
                    g.region.clone().map(aws_sdk_s3::config::Region::new),
                )
                .or_default_provider()
                .or_else("us-east-1");
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(region)
                    .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(g.max_attempts.max(1)))
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(10))
                            .read_timeout(Duration::from_secs(120))
                            .build(),
                    );
                if let (Some(k), Some(s)) = (&g.access_key_id, &g.secret_access_key) {
                    loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                        &k.0,
                        &s.0,
                        None,
                        None,
                        "ferry-pipeline-file",
                    ));
                }
                let sdk = loader.load().await;
                let mut b = aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(g.path_style)
                    // checksums are sent explicitly where ferry wants them
                    .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
                if let Some(ep) = &g.endpoint {
                    b = b.endpoint_url(ep);
                }
                aws_sdk_s3::Client::from_conf(b.build())
            })
            .await
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.grant.prefix)
    }

    fn user_metadata(metadata: &Metadata, sha256: &str) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = metadata.iter().cloned().collect();
        m.insert(SHA_META.into(), sha256.into());
        m
    }

    fn info(&self, key: &str, size: u64, meta: Option<&HashMap<String, String>>) -> ObjectInfo {
        let mut metadata: Metadata = meta
            .map(|m| m.iter().filter(|(k, _)| k.as_str() != SHA_META).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        metadata.sort();
        ObjectInfo { key: key.to_owned(), size, sha256: meta.and_then(|m| m.get(SHA_META).cloned()), metadata }
    }

    /// One `PutObject`: from `bytes` when the file was read whole (and the
    /// upload is not paced, which wants the file's chunks), else streamed
    /// from the file.
    #[allow(clippy::too_many_arguments)]
    async fn put_single(
        &self,
        key: &str,
        source: &Path,
        bytes: Option<Vec<u8>>,
        content_type: &str,
        meta: HashMap<String, String>,
        sha: &[u8],
        create_only: bool,
        pace: &Pace,
    ) -> Result<Option<String>, CapError> {
        let body = match bytes {
            Some(b) if !pace.is_throttled() => ByteStream::from(b),
            _ => paced(
                ByteStream::from_path(source)
                    .await
                    .map_err(|e| CapError::Failed(format!("reading {}: {e}", source.display())))?,
                pace,
            ),
        };
        let out = self
            .client()
            .await
            .put_object()
            .bucket(&self.grant.bucket)
            .key(self.full_key(key))
            .content_type(content_type)
            .set_metadata(Some(meta))
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha))
            .set_if_none_match(create_only.then(|| "*".to_string()))
            .body(body)
            .send()
            .await
            .map_err(|e| s3_error(&self.grant.bucket, key, e))?;
        // the checksum the server computed over what it received
        Ok(out.checksum_sha256().map(str::to_owned))
    }

    /// Uploads `source` in parts. Each part is hashed as it is read and
    /// sent with that checksum (S3 refuses a part whose bytes differ); the
    /// parts' bytes together must hash to `sha` (what the object's
    /// metadata says), else the upload is aborted: a file that changed
    /// while it was uploaded never becomes an object.
    #[allow(clippy::too_many_arguments)]
    async fn put_multipart(
        &self,
        key: &str,
        source: &Path,
        size: u64,
        content_type: &str,
        meta: HashMap<String, String>,
        sha: &[u8],
        pace: &Pace,
    ) -> Result<(), CapError> {
        let client = self.client().await;
        let bucket = &self.grant.bucket;
        let full = self.full_key(key);
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(&full)
            .content_type(content_type)
            .set_metadata(Some(meta))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| s3_error(bucket, key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            let part_size = self.grant.part_size;
            let mut offset = 0u64;
            let mut number = 1i32;
            let mut whole = Sha256::new();
            while offset < size {
                if number > 1 {
                    // a window that closed mid-upload: wait here, at a
                    // part boundary, for the next one
                    pace.window().await;
                }
                let len = part_size.min(size - offset);
                let (part_sha, w) = hash_range(source, offset, len, whole).await?;
                whole = w;
                let body = ByteStream::read_from()
                    .path(source)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| CapError::Failed(format!("reading {}: {e}", source.display())))?;
                let body = paced(body, pace);
                let sha_b64 = base64::engine::general_purpose::STANDARD.encode(part_sha);
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_sha256(&sha_b64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| s3_error(bucket, key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .checksum_sha256(sha_b64)
                        .build(),
                );
                offset += len;
                number += 1;
            }
            if whole.finalize().as_slice() != sha {
                return Err(changed_during_upload(&self.grant.bucket, key));
            }
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(&full)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| s3_error(bucket, key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // don't leave paid-for parts behind
            let _ = client.abort_multipart_upload().bucket(bucket).key(&full).upload_id(&upload_id).send().await;
        }
        result
    }

    /// Puts `source` at `key`; with `create_only`, only where the key is
    /// free (`None`: it was taken).
    async fn put_file_inner(
        &self,
        key: &str,
        source: &Path,
        content_type: &str,
        metadata: Metadata,
        create_only: bool,
        pace: &Pace,
    ) -> Result<Option<ObjectInfo>, CapError> {
        check_key(&self.full_key(key))?;
        let src = source.to_owned();
        let what = source.display().to_string();
        // one blocking task per upload: a small file is read once, hashed
        // and sent from memory; a larger one is hashed here and streamed
        let whole = READ_WHOLE.min(self.grant.multipart_threshold);
        let (sha_hex, size, bytes) = tokio::task::spawn_blocking(move || match crate::util::read_whole(&src, whole)? {
            Some((sha, bytes)) => Ok((sha, bytes.len() as u64, Some(bytes))),
            None => crate::util::sha256_file(&src).map(|(sha, size)| (sha, size, None)),
        })
        .await
        .map_err(|e| CapError::Failed(format!("host task failed: {e}")))?
        .map_err(|e| CapError::io(&what, e))?;
        let sha = hex::decode(&sha_hex).expect("hex we made");
        let meta = Self::user_metadata(&metadata, &sha_hex);
        if size <= self.grant.multipart_threshold {
            let echoed = match self.put_single(key, source, bytes, content_type, meta, &sha, create_only, pace).await {
                // single-part puts carry `If-None-Match: *`: the server
                // refuses an existing key itself
                Err(CapError::Failed(m)) if create_only && m.contains(PRECONDITION) => return Ok(None),
                r => r?,
            };
            let ours = base64::engine::general_purpose::STANDARD.encode(&sha);
            match echoed {
                // S3 checked the body against our checksum and says so: no
                // need to ask again
                Some(e) if e == ours => {
                    let mut info = self.info(key, size, None);
                    info.sha256 = Some(sha_hex);
                    info.metadata = metadata;
                    info.metadata.sort();
                    return Ok(Some(info));
                }
                // the server hashed other bytes than ours (a server that
                // does not enforce the checksum, and a file that changed
                // after it was hashed): the object's metadata would lie,
                // so it must not stay
                Some(_) => {
                    let _ = self
                        .client()
                        .await
                        .delete_object()
                        .bucket(&self.grant.bucket)
                        .key(self.full_key(key))
                        .send()
                        .await;
                    return Err(changed_during_upload(&self.grant.bucket, key));
                }
                None => {}
            }
        } else {
            // a multipart upload cannot be conditional: look first (under
            // the claim, see `put_file_new`)
            if create_only && self.head(key).await?.is_some() {
                return Ok(None);
            }
            self.put_multipart(key, source, size, content_type, meta, &sha, pace).await?;
        }
        // trust, then verify: the object is there with the size we sent
        match self.head(key).await? {
            Some(info) if info.size == size && info.sha256.as_deref() == Some(sha_hex.as_str()) => Ok(Some(info)),
            Some(info) => Err(CapError::Unavailable(format!(
                "s3://{}/{key}: after upload the object has {} bytes (sent {size}) / checksum {:?}",
                self.grant.bucket, info.size, info.sha256
            ))),
            None => {
                Err(CapError::Unavailable(format!("s3://{}/{key}: not found right after upload", self.grant.bucket)))
            }
        }
    }

    fn claim(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.claims.lock().unwrap().entry(key.to_owned()).or_default().clone()
    }

    fn release(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut claims = self.claims.lock().unwrap();
        drop(lock);
        if claims.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            claims.remove(key);
        }
    }
}

/// `body` with its chunks taken from the pace's throttle (as it is
/// when there is none). Still retryable: each attempt re-reads the file
/// and pays again.
fn paced(body: ByteStream, pace: &Pace) -> ByteStream {
    if !pace.is_throttled() {
        return body;
    }
    let base = body.into_inner();
    let pace = pace.clone();
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(Paced {
            inner: base.try_clone().unwrap_or_else(SdkBody::taken),
            pace: pace.clone(),
            wait: None,
        })
    }))
}

/// An upload body that sends each chunk only when the throttle lets it.
struct Paced {
    inner: SdkBody,
    pace: Pace,
    /// A chunk taken from the file, and when it may go.
    wait: Option<(Pin<Box<tokio::time::Sleep>>, http_body::Frame<bytes::Bytes>)>,
}

impl http_body::Body for Paced {
    type Data = bytes::Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some((sleep, _)) = &mut this.wait {
            ready!(sleep.as_mut().poll(cx));
            let (_, frame) = this.wait.take().expect("just polled");
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let wait = this.pace.reserve(frame.data_ref().map_or(0, |d| d.len() as u64));
        if wait.is_zero() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let mut sleep = Box::pin(tokio::time::sleep(wait));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => {
                this.wait = Some((sleep, frame));
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.wait.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some((_, f)) = &self.wait {
            let n = f.data_ref().map_or(0, |d| d.len() as u64);
            hint.set_lower(hint.lower() + n);
            if let Some(u) = hint.upper() {
                hint.set_upper(u + n);
            }
        }
        hint
    }
}

fn changed_during_upload(bucket: &str, key: &str) -> CapError {
    CapError::Unavailable(format!(
        "s3://{bucket}/{key}: the file changed while it was uploaded (its bytes no longer match the checksum taken before); \
         upload aborted, tried again later"
    ))
}

/// SHA-256 of `len` bytes at `offset`, read in blocks; the same bytes also
/// go into `whole` (returned), the running hash of the entire file.
async fn hash_range(path: &Path, offset: u64, len: u64, mut whole: Sha256) -> Result<([u8; 32], Sha256), CapError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let what = path.display().to_string();
        let mut f = std::fs::File::open(&path).map_err(|e| CapError::io(&what, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| CapError::io(&what, e))?;
        let mut f = f.take(len);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|e| CapError::io(&what, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            whole.update(&buf[..n]);
        }
        Ok((h.finalize().into(), whole))
    })
    .await
    .unwrap_or_else(|e| Err(CapError::Failed(format!("host task failed: {e}"))))
}

/// Maps an SDK error to what a plugin can act on.
fn s3_error<E>(bucket: &str, key: &str, e: SdkError<E, HttpResponse>) -> CapError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = match e.code() {
        Some(c) => c.to_owned(),
        // HEAD answers have no body to carry a code: name the status
        None => status
            .map(|s| match s {
                404 => "NotFound".to_owned(),
                412 => PRECONDITION.to_owned(),
                403 => "AccessDenied".to_owned(),
                503 => "ServiceUnavailable".to_owned(),
                s => format!("HTTP{s}"),
            })
            .unwrap_or_default(),
    };
    let msg = e.message().map(str::to_owned).unwrap_or_else(|| crate::util::root_cause(&e));
    let what = format!("s3://{bucket}/{key}");
    match (&e, status) {
        (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_), _) => {
            CapError::Unavailable(format!("{what}: cannot reach the S3 endpoint: {}", crate::util::root_cause(&e)))
        }
        (_, Some(s)) if s >= 500 || s == 429 => CapError::Unavailable(format!("{what}: S3 answered {s} {code}: {msg}")),
        _ if code == "SlowDown" || code == "RequestTimeout" => CapError::Unavailable(format!("{what}: {code}: {msg}")),
        (_, Some(403)) => CapError::Failed(format!(
            "{what}: access denied ({code}): check the credentials and that the bucket policy allows s3:GetObject, s3:PutObject and s3:ListBucket"
        )),
        _ if code == "NoSuchBucket" => CapError::NotFound(format!("bucket `{bucket}` does not exist")),
        (_, Some(412)) => CapError::Failed(format!("{what}: {PRECONDITION}: the key exists already")),
        (_, Some(s)) => CapError::Failed(format!("{what}: S3 answered {s} {code}: {msg}")),
        _ => CapError::Unavailable(format!("{what}: {}", crate::util::root_cause(&e))),
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        match &self.grant.endpoint {
            Some(ep) => format!("s3://{}/{} at {ep}", self.grant.bucket, self.grant.prefix),
            None => format!("s3://{}/{}", self.grant.bucket, self.grant.prefix),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, CapError> {
        check_key(key)?;
        let r = self.client().await.head_object().bucket(&self.grant.bucket).key(self.full_key(key)).send().await;
        match r {
            Ok(out) => Ok(Some(self.info(key, out.content_length().unwrap_or(0).max(0) as u64, out.metadata()))),
            Err(SdkError::ServiceError(se)) if se.err().is_not_found() => Ok(None),
            Err(e) => Err(s3_error(&self.grant.bucket, key, e)),
        }
    }

    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        content_type: &str,
        metadata: Metadata,
        pace: &Pace,
    ) -> Result<ObjectInfo, CapError> {
        self.put_file_inner(key, source, content_type, metadata, false, pace).await?.ok_or_else(|| {
            CapError::Failed(format!("s3://{}/{key}: an unconditional put was refused", self.grant.bucket))
        })
    }
    async fn put_file_new(
        &self,
        key: &str,
        source: &Path,
        content_type: &str,
        metadata: Metadata,
        pace: &Pace,
    ) -> Result<Option<ObjectInfo>, CapError> {
        // one writer per key in this process; on top of that the server
        // refuses to overwrite (single part), or a HEAD under the claim
        // checks first (multipart).
        let lock = self.claim(key);
        let result = async {
            let _guard = lock.lock().await;
            self.put_file_inner(key, source, content_type, metadata, true, pace).await
        }
        .await;
        self.release(key, lock);
        result
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: Metadata,
    ) -> Result<ObjectInfo, CapError> {
        check_key(&self.full_key(key))?;
        let sha = Sha256::digest(&body);
        let sha_hex = hex::encode(sha);
        let size = body.len() as u64;
        self.client()
            .await
            .put_object()
            .bucket(&self.grant.bucket)
            .key(self.full_key(key))
            .content_type(content_type)
            .set_metadata(Some(Self::user_metadata(&metadata, &sha_hex)))
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error(&self.grant.bucket, key, e))?;
        let mut info = self.info(key, size, None);
        info.sha256 = Some(sha_hex);
        info.metadata = metadata;
        Ok(info)
    }

    async fn list(&self, prefix: &str, cursor: Option<String>, limit: u32) -> Result<Listing, CapError> {
        let out = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.grant.bucket)
            .prefix(self.full_key(prefix))
            .set_start_after(cursor.map(|c| self.full_key(&c)))
            .max_keys(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| s3_error(&self.grant.bucket, prefix, e))?;
        let strip = self.grant.prefix.len();
        let objects: Vec<ObjectInfo> = out
            .contents()
            .iter()
            .filter_map(|o| {
                let k = o.key()?;
                Some(self.info(&k[strip.min(k.len())..], o.size().unwrap_or(0).max(0) as u64, None))
            })
            .collect();
        let next_cursor =
            if out.is_truncated().unwrap_or(false) { objects.last().map(|o| o.key.clone()) } else { None };
        Ok(Listing { objects, next_cursor })
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(ObjectInfo, u64, ObjectBytes)>, CapError> {
        check_key(key)?;
        let header = range.map(|(first, last)| match last {
            Some(last) => format!("bytes={first}-{last}"),
            None => format!("bytes={first}-"),
        });
        let r = self
            .client()
            .await
            .get_object()
            .bucket(&self.grant.bucket)
            .key(self.full_key(key))
            .set_range(header)
            .send()
            .await;
        let out = match r {
            Ok(out) => out,
            Err(SdkError::ServiceError(se)) if se.err().is_no_such_key() => return Ok(None),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                // the range starts past the end: say how long the object is
                return Ok(self.head(key).await?.map(|info| {
                    let total = info.size;
                    (info, total, Box::pin(futures_util::stream::empty()) as ObjectBytes)
                }));
            }
            Err(e) => return Err(s3_error(&self.grant.bucket, key, e)),
        };
        let length = out.content_length().unwrap_or(0).max(0) as u64;
        // `bytes 0-9/1234` on a ranged answer, else the length is the size
        let total = out
            .content_range()
            .and_then(|cr| cr.rsplit_once('/'))
            .and_then(|(_, t)| t.trim().parse::<u64>().ok())
            .unwrap_or(length);
        let info = self.info(key, total, out.metadata());
        let what = format!("s3://{}/{key}", self.grant.bucket);
        let body = futures_util::stream::unfold((out.body, what), |(mut body, what)| async move {
            let chunk = body.next().await?;
            let chunk = chunk.map_err(|e| std::io::Error::other(format!("reading {what}: {e}")));
            Some((chunk, (body, what)))
        });
        Ok(Some((info, total, Box::pin(body))))
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>, CapError> {
        check_key(key)?;
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| CapError::Invalid(format!("presigned URL lifetime {ttl:?}: {e}")))?;
        let req = self
            .client()
            .await
            .get_object()
            .bucket(&self.grant.bucket)
            .key(self.full_key(key))
            .presigned(config)
            .await
            .map_err(|e| s3_error(&self.grant.bucket, key, e))?;
        Ok(Some(req.uri().to_string()))
    }

    async fn probe(&self) -> Result<(), CapError> {
        let bucket = &self.grant.bucket;
        self.client().await.head_bucket().bucket(bucket).send().await.map_err(|e| s3_error(bucket, "", e))?;
        self.list("", None, 1).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(s3: &ferry_tests::S3Server, bucket: &str) -> S3Store {
        let toml = format!(
            "bucket = \"{bucket}\"\nendpoint = \"{}\"\npath_style = true\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nmultipart_threshold = \"5MiB\"\npart_size = \"5MiB\"",
            s3.endpoint(),
            s3.access_key(),
            s3.secret_key()
        );
        S3Store::new(toml::from_str(&toml).unwrap())
    }

    /// The parts' bytes are hashed as they are sent; when they do not add
    /// up to the checksum taken before (the file changed in between), the
    /// upload is aborted and no object appears.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multipart_upload_of_other_bytes_than_were_hashed_is_aborted() {
        let s3 = ferry_tests::S3Server::start();
        s3.create_bucket("parts");
        let store = store(&s3, "parts");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.dcm");
        let bytes: Vec<u8> = (0..(11u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        let right = Sha256::digest(&bytes);
        let mut wrong = right;
        wrong[0] ^= 1;

        let meta = S3Store::user_metadata(&Vec::new(), &hex::encode(wrong));
        let err = store
            .put_multipart("a/b.dcm", &file, bytes.len() as u64, "application/dicom", meta, &wrong, &Pace::none())
            .await
            .unwrap_err();
        assert!(matches!(&err, CapError::Unavailable(m) if m.contains("changed while it was uploaded")), "{err:?}");
        assert!(s3.list("parts", "").await.is_empty(), "an object appeared");
        // s3s-fs keeps the parts of an open upload as files; abort removes them
        let left: Vec<_> = walk(s3.root()).into_iter().filter(|p| !p.ends_with("parts")).collect();
        assert!(left.is_empty(), "the multipart upload was not aborted: {left:?}");

        // the same file with its real checksum goes up
        let meta = S3Store::user_metadata(&Vec::new(), &hex::encode(right));
        store
            .put_multipart("a/b.dcm", &file, bytes.len() as u64, "application/dicom", meta, &right, &Pace::none())
            .await
            .unwrap();
        assert_eq!(s3.get("parts", "a/b.dcm").await.unwrap(), bytes);
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
