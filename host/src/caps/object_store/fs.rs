//! The local-folder backend of `object-store` (tests, the demo, a NAS).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    check_key, file_stream, range_span, ByteRange, ByteStream, Listing, Metadata, ObjectInfo, ObjectStore, Pace,
};
use crate::caps::CapError;

/// A local folder. Object bytes live at `root/key`; what S3 would keep as
/// object attributes (checksum, user metadata) lives in
/// `root/.ferry/meta/key.json`. Writes go to a temporary file first and are
/// renamed into place, so a crash never leaves a half-written object under
/// its final name.
/// Refuses a store folder that is missing, is `/`, or overlaps a folder
/// the pipeline reads (ferry would read back what it writes).
pub(super) fn check_folder(cx: &crate::caps::Prepare<'_>, path: &Path) -> anyhow::Result<()> {
    let sec = cx.section();
    let real = path.canonicalize().map_err(|e| {
        anyhow::anyhow!(
            "[{sec}] grants.object_store: the store folder {} does not exist or is not accessible ({e}); create it \
             (ferry never creates the store's root, so that a share that is not mounted is not filled from the local disk)",
            path.display()
        )
    })?;
    if !real.is_dir() {
        anyhow::bail!("[{sec}] grants.object_store: {} is not a folder", path.display());
    }
    if real.parent().is_none() {
        anyhow::bail!(
            "[{sec}] grants.object_store: the store folder must not be / itself; give it a folder of its own"
        );
    }
    for s in &cx.pipeline.stages {
        for (name, root) in &s.grants.fs {
            let root_real = crate::util::real_path(root);
            if real.starts_with(&root_real) || root_real.starts_with(&real) {
                anyhow::bail!(
                    "[{sec}] grants.object_store: the store folder {} overlaps fs root `{name}` ({}) granted to [{}]; \
                     ferry would read back what it writes: keep the destination outside every source folder",
                    real.display(),
                    root_real.display(),
                    s.role
                );
            }
        }
    }
    Ok(())
}

pub struct FsStore {
    pub root: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FsMeta {
    size: u64,
    sha256: String,
    content_type: String,
    metadata: Metadata,
}

impl FsStore {
    fn object_path(&self, key: &str) -> Result<PathBuf, CapError> {
        check_key(key)?;
        if key == ".ferry" || key.starts_with(".ferry/") {
            return Err(CapError::Invalid(format!("object key `{key}` is reserved")));
        }
        Ok(self.root.join(key))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.root.join(".ferry").join("meta").join(format!("{key}.json"))
    }

    fn tmp_path(&self) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root.join(".ferry").join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    /// Copies `source` to a temporary file in the store, hashing on the
    /// way: (temp path, size, hex SHA-256).
    async fn copy_to_tmp(&self, key: &str, source: &Path, pace: &Pace) -> Result<(PathBuf, u64, String), CapError> {
        let what = source.display().to_string();
        let tmp = self.tmp_path();
        create_parent(&tmp).await?;
        let mut src = tokio::fs::File::open(source).await.map_err(|e| CapError::io(&what, e))?;
        let mut out = tokio::fs::File::create(&tmp).await.map_err(|e| CapError::io(key, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf).await.map_err(|e| CapError::io(&what, e))?;
            if n == 0 {
                break;
            }
            pace.take(n as u64).await;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).await.map_err(|e| CapError::io(key, e))?;
            size += n as u64;
        }
        out.sync_all().await.map_err(|e| CapError::io(key, e))?;
        Ok((tmp, size, hex::encode(hasher.finalize())))
    }

    async fn write_meta(&self, key: &str, meta: &FsMeta) -> Result<(), CapError> {
        let path = self.meta_path(key);
        let json = serde_json::to_vec_pretty(meta).expect("serialisable");
        self.atomic_write(&path, &json).await
    }

    async fn atomic_write(&self, dest: &Path, bytes: &[u8]) -> Result<(), CapError> {
        let tmp = self.tmp_path();
        let what = dest.display().to_string();
        create_parent(&tmp).await?;
        create_parent(dest).await?;
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| CapError::io(&what, e))?;
        f.write_all(bytes).await.map_err(|e| CapError::io(&what, e))?;
        f.sync_all().await.map_err(|e| CapError::io(&what, e))?;
        drop(f);
        tokio::fs::rename(&tmp, dest).await.map_err(|e| CapError::io(&what, e))
    }
}

async fn create_parent(p: &Path) -> Result<(), CapError> {
    if let Some(parent) = p.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| CapError::io(&parent.display().to_string(), e))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl ObjectStore for FsStore {
    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, CapError> {
        let path = self.object_path(key)?;
        let md = match tokio::fs::metadata(&path).await {
            Ok(md) if md.is_file() => md,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CapError::io(key, e)),
        };
        let meta: Option<FsMeta> = tokio::fs::read(self.meta_path(key))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|m: &FsMeta| m.size == md.len());
        Ok(Some(match meta {
            Some(m) => ObjectInfo { key: key.to_owned(), size: m.size, sha256: Some(m.sha256), metadata: m.metadata },
            // bytes without a matching record (a crash between the two
            // writes, or a file put there by hand): hash what is there
            None => {
                let (sha256, size) = tokio::task::spawn_blocking(move || crate::util::sha256_file(&path))
                    .await
                    .map_err(|e| CapError::Failed(format!("host task failed: {e}")))?
                    .map_err(|e| CapError::io(key, e))?;
                ObjectInfo { key: key.to_owned(), size, sha256: Some(sha256), metadata: vec![] }
            }
        }))
    }

    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        content_type: &str,
        metadata: Metadata,
        pace: &Pace,
    ) -> Result<ObjectInfo, CapError> {
        let dest = self.object_path(key)?;
        let (tmp, size, sha256) = self.copy_to_tmp(key, source, pace).await?;
        create_parent(&dest).await?;
        // bytes first, then their record: a crash in between leaves a
        // record that does not match, which `head` notices
        tokio::fs::rename(&tmp, &dest).await.map_err(|e| CapError::io(key, e))?;
        let meta =
            FsMeta { size, sha256: sha256.clone(), content_type: content_type.to_owned(), metadata: metadata.clone() };
        self.write_meta(key, &meta).await?;
        Ok(ObjectInfo { key: key.to_owned(), size, sha256: Some(sha256), metadata })
    }

    async fn put_file_new(
        &self,
        key: &str,
        source: &Path,
        content_type: &str,
        metadata: Metadata,
        pace: &Pace,
    ) -> Result<Option<ObjectInfo>, CapError> {
        let dest = self.object_path(key)?;
        let (tmp, size, sha256) = self.copy_to_tmp(key, source, pace).await?;
        create_parent(&dest).await?;
        // a hard link fails if the name exists: the atomic claim
        let linked = tokio::fs::hard_link(&tmp, &dest).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(CapError::io(key, e)),
        }
        let meta =
            FsMeta { size, sha256: sha256.clone(), content_type: content_type.to_owned(), metadata: metadata.clone() };
        self.write_meta(key, &meta).await?;
        Ok(Some(ObjectInfo { key: key.to_owned(), size, sha256: Some(sha256), metadata }))
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: Metadata,
    ) -> Result<ObjectInfo, CapError> {
        let dest = self.object_path(key)?;
        let sha256 = hex::encode(Sha256::digest(&body));
        let size = body.len() as u64;
        self.atomic_write(&dest, &body).await?;
        let meta =
            FsMeta { size, sha256: sha256.clone(), content_type: content_type.to_owned(), metadata: metadata.clone() };
        self.write_meta(key, &meta).await?;
        Ok(ObjectInfo { key: key.to_owned(), size, sha256: Some(sha256), metadata })
    }

    async fn list(&self, prefix: &str, cursor: Option<String>, limit: u32) -> Result<Listing, CapError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let mut keys = tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(CapError::io(&dir.display().to_string(), e)),
                };
                for e in rd.flatten() {
                    let p = e.path();
                    let rel = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
                    if rel == ".ferry" {
                        continue;
                    }
                    let ft = match e.file_type() {
                        Ok(ft) => ft,
                        Err(_) => continue,
                    };
                    if ft.is_dir() {
                        // descend only where keys can still match the prefix
                        let as_dir = format!("{rel}/");
                        if as_dir.starts_with(&prefix) || prefix.starts_with(&as_dir) {
                            stack.push(p);
                        }
                    } else if ft.is_file() && rel.starts_with(&prefix) {
                        keys.push(rel);
                    }
                }
            }
            Ok(keys)
        })
        .await
        .unwrap_or_else(|e| Err(CapError::Failed(format!("host task failed: {e}"))))?;
        keys.sort();
        if let Some(c) = &cursor {
            keys.retain(|k| k > c);
        }
        let limit = limit.clamp(1, 1000) as usize;
        let more = keys.len() > limit;
        keys.truncate(limit);
        let mut objects = Vec::with_capacity(keys.len());
        for k in &keys {
            if let Some(info) = self.head(k).await? {
                objects.push(info);
            }
        }
        let next_cursor = if more { keys.last().cloned() } else { None };
        Ok(Listing { objects, next_cursor })
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(ObjectInfo, u64, ByteStream)>, CapError> {
        let path = self.object_path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CapError::io(key, e)),
        };
        let md = file.metadata().await.map_err(|e| CapError::io(key, e))?;
        if !md.is_file() {
            return Ok(None);
        }
        // the open file is what is streamed, even if it is replaced meanwhile
        let total = md.len();
        let Some(info) = self.head(key).await? else { return Ok(None) };
        let (offset, len) = range_span(range, total);
        if len > 0 && offset > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| CapError::io(key, e))?;
        }
        Ok(Some((info, total, file_stream(file, len))))
    }

    async fn presign_get(&self, _key: &str, _ttl: std::time::Duration) -> Result<Option<String>, CapError> {
        Ok(None)
    }

    /// Proves the root exists and is writable without leaving anything
    /// behind (`ferry check` must not create folders): an anonymous
    /// temporary file (O_TMPFILE where the OS has it).
    async fn probe(&self) -> Result<(), CapError> {
        let root = self.root.clone();
        let what = root.display().to_string();
        tokio::task::spawn_blocking(move || {
            if !root.is_dir() {
                return Err(CapError::NotFound(format!("the store folder {} does not exist", root.display())));
            }
            tempfile::tempfile_in(&root).map(drop).map_err(|e| CapError::io(&what, e))
        })
        .await
        .map_err(|e| CapError::Failed(format!("host task failed: {e}")))?
    }
}
