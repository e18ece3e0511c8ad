//! The spool: response bodies written to disk (`http.send-to-spool`), so
//! a 50 MB PDF goes from the socket to a file and never into a guest.
//!
//! Files are flat (`spool/http-XXXXXX`) in the pipeline's state folder,
//! seen by plugins as fs root [`ROOT`]. The instance that made a file may
//! read it; when it becomes an item's file, the stages after it read it as
//! the item in hand. The runner deletes an item's spool file when the
//! item has an outcome ([`SpoolFile`]); what a crash leaves is cleared
//! when ferry starts ([`Spool::clear`]).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::caps::CapError;

/// The fs root name of the spool.
pub const ROOT: &str = "spool";

/// Where spooled bodies go and how large one may be.
#[derive(Clone, Debug)]
pub struct Spool {
    pub dir: PathBuf,
    pub max: u64,
}

/// A body written to the spool.
pub struct Written {
    /// The file's name in the spool (its `file-ref` path).
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl Spool {
    /// Removes what earlier runs left behind (creating the folder).
    pub fn clear(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                crate::util::forget_sha256(&e.path());
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }

    /// Writes `chunks` to a new spool file, hashing on the way; over
    /// [`Spool::max`] bytes the file is removed and the call is `invalid`.
    pub async fn write<S, E>(&self, mut chunks: S, from: &str) -> Result<Written, CapError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt as _;
        std::fs::create_dir_all(&self.dir).map_err(|e| CapError::io("the spool folder", e))?;
        let tmp = tempfile::Builder::new()
            .prefix("http-")
            .tempfile_in(&self.dir)
            .map_err(|e| CapError::io("a spool file", e))?;
        let (file, path) = tmp.keep().map_err(|e| CapError::io("a spool file", e.error))?;
        // from here on the file is ours to remove on every error
        let mut guard = SpoolFile(Some(path.clone()));
        let mut file = tokio::fs::File::from_std(file);
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| CapError::Unavailable(format!("reading the response from {from}: {e}")))?;
            size += chunk.len() as u64;
            if size > self.max {
                return Err(CapError::Invalid(format!(
                    "the response from {from} is larger than {} bytes, the spool's limit per response; \
                     raise [pipeline] spool_max if such files are expected",
                    self.max
                )));
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| CapError::io("a spool file", e))?;
        }
        file.flush().await.map_err(|e| CapError::io("a spool file", e))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        guard.0 = None;
        let sha256 = hex::encode(hash.finalize());
        crate::util::remember_sha256(&path, &sha256, size);
        Ok(Written { name, size, sha256 })
    }

    /// The path of spool file `name`, if `name` is one (a plain file name
    /// made by [`Spool::write`], never a path that leads elsewhere).
    pub fn path_of(dir: &Path, name: &str) -> Option<PathBuf> {
        let plain = name.starts_with("http-")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !name.contains("..");
        plain.then(|| dir.join(name))
    }
}

/// A spool file that is removed when this is dropped: the runner holds one
/// per item whose file is in the spool, so the file goes when the item
/// ends, whichever way it ends.
#[derive(Debug)]
pub struct SpoolFile(pub Option<PathBuf>);

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            crate::util::forget_sha256(&p);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove spool file {}: {e}", p.display());
                }
            }
        }
    }
}
