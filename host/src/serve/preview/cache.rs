//! The preview cache on disk: `<hash>-<size>.png`, and `<hash>-<size>.fail`
//! for failures that will repeat. Names are a hash of the cache version
//! and the caller's key, so nothing about the image shows in file names;
//! files are written to a temporary name and renamed into place
//! (`tempfile`'s `persist`), so a reader never sees half a PNG.

use std::io::{self, Write as _};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::PreviewError;

/// Part of every cache file's hash: change it when the rendering changes,
/// so that old previews are not served.
pub const CACHE_VERSION: &str = "ferry-preview-2";

pub(super) const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Longest failure message kept in the negative cache.
pub(super) const MAX_FAILURE: usize = 500;

/// `<hash>-<size>`: 128 bits of SHA-256 over the cache version and the key.
pub(super) fn cache_stem(key: &str, max_size: Option<u32>) -> String {
    let mut hash = Sha256::new();
    hash.update(CACHE_VERSION.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    let hash = hex::encode(&hash.finalize()[..16]);
    match max_size {
        Some(size) => format!("{hash}-{size}"),
        None => format!("{hash}-full"),
    }
}

/// A cached PNG, or `None` (missing, unreadable or not a PNG: render).
pub(super) async fn read_cached(path: &Path) -> Option<Vec<u8>> {
    match tokio::fs::read(path).await {
        Ok(bytes) if bytes.starts_with(&PNG_SIGNATURE) => Some(bytes),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(error = %e, cache = %path.display(), "could not read a cached preview");
            None
        }
    }
}

/// A remembered failure (`kind\nmessage`), or `None`.
pub(super) async fn read_failure(path: &Path) -> Option<PreviewError> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    let (kind, message) = text.split_once('\n')?;
    Some(match kind {
        "too-large" => PreviewError::TooLarge(message.to_owned()),
        _ => PreviewError::Cannot(message.to_owned()),
    })
}

/// Writes `bytes` to a temporary file next to `path`, flushes it and
/// renames it over `path`.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".preview-").suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_depend_on_key_and_size_only() {
        assert_eq!(cache_stem("a", Some(256)), cache_stem("a", Some(256)));
        assert_ne!(cache_stem("a", Some(256)), cache_stem("b", Some(256)));
        assert_ne!(cache_stem("a", Some(256)), cache_stem("a", Some(128)));
        assert_ne!(cache_stem("a", Some(256)), cache_stem("a", None));
        assert!(cache_stem("a", None).ends_with("-full"));
        let stem = cache_stem("../../etc/passwd\0 patient 17/0000_101.dcm", Some(64));
        assert_eq!(stem.len(), 32 + "-64".len(), "{stem}");
        assert!(stem[..32].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[tokio::test]
    async fn remembered_failures_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fail");
        write_atomically(&path, b"too-large\n9 pixels").unwrap();
        assert!(matches!(read_failure(&path).await, Some(PreviewError::TooLarge(m)) if m == "9 pixels"));
        write_atomically(&path, b"cannot\nnot a DICOM file").unwrap();
        assert!(matches!(read_failure(&path).await, Some(PreviewError::Cannot(m)) if m == "not a DICOM file"));
        assert!(read_failure(&dir.path().join("missing")).await.is_none());
        // no temporary files left behind
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
