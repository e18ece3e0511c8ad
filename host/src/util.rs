//! Small helpers more than one module needs, kept in one place so that
//! capabilities, the runner and the service do not grow private copies
//! (and so that a module does not import another only for a helper).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The innermost error of a chain: what actually went wrong (a refused
/// connection, a DNS failure), without the wrappers around it.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The first line of a message (wasmtime puts backtraces after it).
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// `1.5s`, `30s`, `2m`, `6h`: durations as the pipeline file writes them.
pub fn humantime(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.as_secs().is_multiple_of(3600) && d.as_secs() >= 3600 && d.subsec_millis() == 0 {
        format!("{}h", d.as_secs() / 3600)
    } else if d.as_secs().is_multiple_of(60) && d.as_secs() >= 60 {
        format!("{}m", d.as_secs() / 60)
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// SHA-256s the host already knows, of files it wrote whole and that
/// nothing writes again (the http spool: [`remember_sha256`] when a
/// download is complete, [`forget_sha256`] when the file is removed), so
/// that the stages after a download (the runner's fingerprint, `fs.sha256`,
/// the object store's checksum) do not read a 50 MB PDF three more times.
/// Keyed by real path; an entry whose size is not the file's is not used.
static KNOWN_SHA256: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, (String, u64)>>> =
    std::sync::LazyLock::new(Default::default);

fn known() -> std::sync::MutexGuard<'static, std::collections::HashMap<PathBuf, (String, u64)>> {
    KNOWN_SHA256.lock().unwrap_or_else(|p| p.into_inner())
}

/// `path` was written whole with these bytes and will not change until it
/// is removed.
pub fn remember_sha256(path: &Path, sha256: &str, size: u64) {
    known().insert(real_path(path), (sha256.to_owned(), size));
}

/// `path` is removed (or may change).
pub fn forget_sha256(path: &Path) {
    known().remove(&real_path(path));
}

/// A file's bytes and their hex SHA-256, read in one go, when it has at
/// most `limit` bytes; `None` for a larger one (hash it with
/// [`sha256_file`] and stream it). The digest is of exactly the bytes
/// returned, so a file rewritten meanwhile cannot make them disagree.
pub fn read_whole(path: &Path, limit: u64) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len > limit {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // one byte more than the limit tells a file that grew since the stat
    f.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some((hex::encode(Sha256::digest(&bytes)), bytes)))
}

/// Hex SHA-256 of a file and its size, streamed (256 KiB at a time), or
/// as remembered for a file the host wrote ([`remember_sha256`]).
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let remembered = known().get(&real_path(path)).cloned();
    if let Some((sha, size)) = remembered {
        if std::fs::metadata(path)?.len() == size {
            return Ok((sha, size));
        }
    }
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), n_total))
}

#[cfg(test)]
mod sha256_tests {
    use super::*;

    #[test]
    fn a_remembered_digest_is_used_until_forgotten_or_the_size_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http-abc");
        std::fs::write(&path, b"hello").unwrap();
        let real = sha256_file(&path).unwrap();
        assert_eq!(real.1, 5);
        // a value nobody could compute proves the file was not read
        remember_sha256(&path, "remembered", 5);
        assert_eq!(sha256_file(&dir.path().join(".").join("http-abc")).unwrap(), ("remembered".into(), 5));
        std::fs::write(&path, b"hello!").unwrap();
        assert_ne!(sha256_file(&path).unwrap().0, "remembered", "another size: read again");
        std::fs::write(&path, b"hello").unwrap();
        forget_sha256(&path);
        assert_eq!(sha256_file(&path).unwrap(), real);
    }

    #[test]
    fn a_small_file_is_read_whole_with_its_digest_and_a_large_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.dcm");
        std::fs::write(&path, b"hello").unwrap();
        let (sha, bytes) = read_whole(&path, 5).unwrap().expect("at the limit: read");
        assert_eq!((sha, bytes), (sha256_file(&path).unwrap().0, b"hello".to_vec()));
        assert_eq!(read_whole(&path, 4).unwrap(), None, "over the limit: left to stream");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read_whole(&path, 4).unwrap().unwrap().1, b"");
        assert!(read_whole(&dir.path().join("gone"), 4).is_err());
    }
}

/// `p` with symlinks resolved as far as it exists, the rest appended:
/// paths that do not exist yet (a state folder before the first run) can
/// still be compared with real ones.
pub fn real_path(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    let mut missing = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(real) = cur.canonicalize() {
            let mut out = real;
            for m in missing.iter().rev() {
                out.push(m);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_pipeline_file() {
        assert_eq!(humantime(Duration::from_millis(250)), "250ms");
        assert_eq!(humantime(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humantime(Duration::from_secs(30)), "30s");
        assert_eq!(humantime(Duration::from_secs(120)), "2m");
        assert_eq!(humantime(Duration::from_secs(6 * 3600)), "6h");
        assert_eq!(humantime(Duration::from_secs(90 * 60)), "90m");
    }
}
