//! `object-store`: the destination a store stage writes to.
//!
//! Plugins decide, the host moves: a plugin names a key and a `file-ref`,
//! and the bytes go from disk to the store here, streamed, hashed on the
//! way, never through the guest. Backends implement [`ObjectStore`], one
//! file each: [`fs`] (a local folder) and [`s3`] (S3 and S3-compatible
//! servers); [`guest`] is the WIT glue that checks what a plugin asks and
//! hands it to the stage's backend.

pub mod config;
pub mod fs;
mod guest;
pub mod s3;

pub use fs::FsStore;

use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::caps::CapError;
pub use crate::pace::Pace;
use wasmtime::component::{HasSelf, Linker};

use super::{Capability, Prepare, StageState};
use crate::config::ObjectStoreGrant;

/// Largest `put-bytes` body.
pub const MAX_PUT_BYTES: usize = 1 << 20;
/// Longest key (as on S3).
pub const MAX_KEY: usize = 1024;

pub type Metadata = Vec<(String, String)>;

/// Facts about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the content, when the store knows it.
    pub sha256: Option<String>,
    /// User metadata stored with the object.
    pub metadata: Metadata,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<ObjectInfo>,
    /// Pass back to get the next page; `None` when done.
    pub next_cursor: Option<String>,
}

/// A place objects are written to and read back from.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// For messages: `fs:/srv/store`, `s3://bucket/prefix`.
    fn describe(&self) -> String;
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, CapError>;
    /// Writes the file at `source` under `key`, its bytes read under
    /// `pace` (the pipeline's rate cap; a multipart upload waits at its
    /// part boundaries while the upload windows are closed).
    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        content_type: &str,
        metadata: Metadata,
        pace: &Pace,
    ) -> Result<ObjectInfo, CapError>;
    /// Writes only if `key` is free; `None` if an object is there.
    /// Must be atomic with respect to concurrent calls for the same key.
    async fn put_file_new(
        &self,
        key: &str,
        source: &Path,
        content_type: &str,
        metadata: Metadata,
        pace: &Pace,
    ) -> Result<Option<ObjectInfo>, CapError>;
    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: Metadata,
    ) -> Result<ObjectInfo, CapError>;
    async fn list(&self, prefix: &str, cursor: Option<String>, limit: u32) -> Result<Listing, CapError>;
    /// Checks the store is usable (for `ferry check`).
    async fn probe(&self) -> Result<(), CapError>;
    /// Reads an object back (for `ferry serve`), streamed: `None` if there
    /// is none; else its info, its total size and the bytes of `range`
    /// (`(first, Some(last))` inclusive, `(first, None)` to the end; a
    /// `last` past the end is clamped). A range starting at or past the
    /// end yields an empty stream: the caller compares with the total size
    /// and answers 416.
    async fn get(&self, key: &str, range: Option<ByteRange>)
        -> Result<Option<(ObjectInfo, u64, ByteStream)>, CapError>;
    /// A short-lived URL that downloads the object without ferry in the
    /// way, where the backend has such a thing (S3: a presigned GET);
    /// `None` otherwise. It does not check that the object exists.
    async fn presign_get(&self, key: &str, ttl: std::time::Duration) -> Result<Option<String>, CapError>;
}

/// `(first, last)` byte offsets, `last` inclusive; `None` means to the end.
pub type ByteRange = (u64, Option<u64>);

/// Object bytes on their way out, in chunks, never all in memory.
pub type ByteStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>>;

/// The bytes `first..=last` of a range over an object of `total` bytes,
/// as `(offset, length)`; length 0 when the range starts past the end.
pub fn range_span(range: Option<ByteRange>, total: u64) -> (u64, u64) {
    match range {
        None => (0, total),
        Some((first, _)) if first >= total => (first, 0),
        Some((first, last)) => {
            let end = last.map(|l| l.saturating_add(1).min(total)).unwrap_or(total);
            (first, end.saturating_sub(first))
        }
    }
}

/// Streams `len` bytes of an open file from where it stands, in 64 KiB
/// chunks.
pub fn file_stream(file: tokio::fs::File, len: u64) -> ByteStream {
    const CHUNK: usize = 64 * 1024;
    let reader = file.take(len);
    Box::pin(futures_util::stream::try_unfold(reader, |mut r| async move {
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some((buf.freeze(), r)))
    }))
}

/// A stage's object-store grant: the backend it names, opened.
pub struct Store {
    pub store: Arc<dyn ObjectStore>,
    /// Where `get-to-spool` copies objects (none for the renderer).
    pub spool: Option<crate::caps::http::spool::Spool>,
}

impl Capability for Store {
    const INTERFACE: &'static str = "object-store";
    const GRANT_HINT: &'static str = "grants.object_store = { kind = \"fs\", path = \"...\" }";
    /// The pipeline's spool (`get-to-spool`).
    type Shared = Option<crate::caps::http::spool::Spool>;

    fn init(pipeline: Option<&crate::config::Pipeline>) -> Self::Shared {
        pipeline.map(|p| crate::caps::http::spool::Spool { dir: p.spool_dir(), max: p.spool_max })
    }

    /// A folder store must exist (ferry never creates the store's root, so
    /// that a share that is not mounted is not filled from the local disk)
    /// and stay clear of every folder the pipeline reads.
    fn prepare(spool: &Self::Shared, cx: &Prepare<'_>) -> anyhow::Result<Option<Store>> {
        let Some(grant) = &cx.stage.grants.object_store else { return Ok(None) };
        if let ObjectStoreGrant::Fs { path } = grant {
            fs::check_folder(cx, path)?;
        }
        Ok(Some(Store { store: open(grant), spool: spool.clone() }))
    }

    async fn probe(&self) -> anyhow::Result<Vec<String>> {
        self.store.probe().await.map_err(|e| {
            anyhow::anyhow!("grants.object_store: {} is not writable: {}", self.store.describe(), e.message())
        })?;
        Ok(vec![format!("store:{}", self.store.describe())])
    }

    fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
        crate::bindings::object_store::add_to_linker::<StageState, HasSelf<StageState>>(linker, |s| s)
    }
}

/// Builds the backend a grant names.
pub fn open(grant: &ObjectStoreGrant) -> Arc<dyn ObjectStore> {
    match grant {
        ObjectStoreGrant::Fs { path } => Arc::new(FsStore { root: path.clone() }),
        ObjectStoreGrant::S3(g) => Arc::new(s3::S3Store::new(g.clone())),
    }
}

/// Checks a key is a clean relative `/`-separated path.
pub fn check_key(key: &str) -> Result<(), CapError> {
    let bad = |why: &str| Err(CapError::Invalid(format!("object key `{key}` {why}")));
    if key.is_empty() {
        return bad("is empty");
    }
    if key.len() > MAX_KEY {
        return bad(&format!("is longer than {MAX_KEY} bytes"));
    }
    if key.contains('\\') || key.chars().any(|c| c.is_control()) {
        return bad("contains a backslash or control character");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("has an empty, `.` or `..` segment");
        }
    }
    Ok(())
}

/// Most user metadata (keys + values, bytes) a guest may give one object:
/// S3 takes 2 KiB, and the host keeps room for its own `ferry-sha256`.
pub const MAX_METADATA_BYTES: usize = 1900;

pub(crate) fn check_metadata(md: &Metadata) -> Result<(), CapError> {
    let total: usize = md.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_METADATA_BYTES {
        return Err(CapError::Invalid(format!(
            "metadata of {total} bytes (keys + values) is over the {MAX_METADATA_BYTES} an object may carry \
             (S3 takes 2 KiB); put a longer description in an object of its own"
        )));
    }
    for (k, v) in md {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(CapError::Invalid(format!("metadata key `{k}` must be lowercase ascii letters, digits or -")));
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(CapError::Invalid(format!(
                "metadata value of `{k}` must be printable ascii (percent-encode it)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn metadata_rules() {
        assert!(check_metadata(&md(&[("ferry-item-id", "P_1/0000_5.dcm"), ("ferry-sidecar", "%7B%7D")])).is_ok());
        let e = check_metadata(&md(&[("Ferry", "x")])).unwrap_err().to_string();
        assert!(e.contains("`Ferry`") && e.contains("lowercase"), "{e}");
        let e = check_metadata(&md(&[("a", "Müller")])).unwrap_err().to_string();
        assert!(e.contains("percent-encode"), "{e}");
        // keys and values count, up to S3's 2 KiB less the host's own
        let fits = "v".repeat(MAX_METADATA_BYTES - 2);
        assert!(check_metadata(&md(&[("ab", &fits)])).is_ok());
        let e = check_metadata(&md(&[("abc", &fits)])).unwrap_err().to_string();
        assert!(e.contains(&format!("{} bytes", MAX_METADATA_BYTES + 1)) && e.contains("2 KiB"), "{e}");
    }
}
