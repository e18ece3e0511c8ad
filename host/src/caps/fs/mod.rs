//! `fs`: read-only access to granted roots.
//!
//! A `file-ref` names a root and a relative path. The path is checked
//! lexically (no absolute paths, no `..`), then canonicalised and checked
//! again, so a symlink inside a root cannot lead out of it. Reads go
//! through `spawn_blocking` because PDATA is usually a network share.

use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use wasmtime::component::{HasSelf, Linker, Resource};

use super::{Capability, Prepare, StageState};
use crate::bindings::fs::{Entry, EntryKind, Host, HostFile};
use crate::bindings::types::{FileRef, HostError};

/// Largest single `read`.
pub const MAX_READ: u32 = 4 << 20;

/// A stage's fs grant: its roots, by name, as real paths.
pub struct Fs {
    pub roots: BTreeMap<String, PathBuf>,
}

impl Capability for Fs {
    const INTERFACE: &'static str = "fs";
    const GRANT_HINT: &'static str = "grants.fs = { <root> = \"/path\" }";
    const OPTIONAL: bool = true;
    type Shared = ();

    fn init(_: Option<&crate::config::Pipeline>) {}

    /// Refuses roots that would hand a plugin far more than it needs: the
    /// whole machine, or a folder holding ferry's own state.
    fn prepare(_: &(), cx: &Prepare<'_>) -> anyhow::Result<Option<Fs>> {
        let sec = cx.section();
        let grants = &cx.stage.grants.fs;
        if grants.is_empty() {
            return Ok(None);
        }
        let mut roots = BTreeMap::new();
        for (name, path) in grants {
            let real = path
                .canonicalize()
                .with_context(|| format!("[{sec}] grants.fs.{name}: folder {} is not accessible", path.display()))?;
            if !real.is_dir() {
                bail!("[{sec}] grants.fs.{name}: {} is not a folder", path.display());
            }
            if real.parent().is_none() {
                bail!(
                    "[{sec}] grants.fs.{name} = {:?} grants the whole machine; grant only the folder the plugin reads (e.g. the PDATA share)",
                    path.display().to_string()
                );
            }
            if cx.state_dir.starts_with(&real) {
                bail!(
                    "[{sec}] grants.fs.{name} ({}) contains ferry's state folder {} (the ledger); grant a narrower folder or move [pipeline] state_dir",
                    real.display(),
                    cx.state_dir.display()
                );
            }
            roots.insert(name.clone(), real);
        }
        Ok(Some(Fs { roots }))
    }

    async fn probe(&self) -> anyhow::Result<Vec<String>> {
        let mut granted = Vec::new();
        for (name, path) in &self.roots {
            drop(std::fs::read_dir(path).with_context(|| format!("grants.fs.{name}: cannot list {}", path.display()))?);
            granted.push(format!("fs:{name}"));
        }
        Ok(granted)
    }

    fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
        crate::bindings::fs::add_to_linker::<StageState, HasSelf<StageState>>(linker, |s| s)
    }
}

/// An open file handed to a guest as a `file` resource.
pub struct OpenFile {
    file: Arc<std::fs::File>,
    size: u64,
}

/// Resolves `r` to a real path inside its root, or says why not.
pub fn resolve(state: &StageState, r: &FileRef) -> Result<PathBuf, HostError> {
    let ctx = &state.ctx;
    check_relative(&r.root, &r.path)?;
    let root = match ctx.caps.fs.as_ref().and_then(|f| f.roots.get(&r.root)) {
        Some(root) => root,
        None if r.root == super::http::spool::ROOT && state.spooled.contains(&r.path) => {
            ctx.all_fs_roots.get(&r.root).ok_or_else(|| HostError::NotFound("this stage has no spool".into()))?
        }
        None if state.current_file.as_ref().is_some_and(|c| c.root == r.root && c.path == r.path) => ctx
            .all_fs_roots
            .get(&r.root)
            .ok_or_else(|| HostError::NotFound(format!("no fs root named `{}` in this pipeline", r.root)))?,
        None => {
            return Err(
                ctx.denied(&format!("read fs root `{}`", r.root), &format!("add `grants.fs.{} = \"/path\"`", r.root))
            )
        }
    };
    resolve_in(root, &r.root, &r.path)
}

/// Joins a relative, `/`-separated path to a canonical root, refusing
/// anything that would leave it.
pub fn resolve_in(root: &Path, root_name: &str, rel: &str) -> Result<PathBuf, HostError> {
    check_relative(root_name, rel)?;
    let joined = root.join(rel);
    let real = joined.canonicalize().map_err(|e| io_error(&format!("`{root_name}:{rel}`"), e))?;
    if !real.starts_with(root) {
        return Err(HostError::Denied(format!("path `{rel}` leads out of fs root `{root_name}` through a link")));
    }
    Ok(real)
}

/// Refuses absolute paths and `..` before anything touches the disk.
fn check_relative(root_name: &str, rel: &str) -> Result<(), HostError> {
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(HostError::Denied(format!(
                    "path `{rel}` leaves fs root `{root_name}` (absolute paths and `..` are refused)"
                )))
            }
        }
    }
    Ok(())
}

pub fn io_error(what: &str, e: std::io::Error) -> HostError {
    super::CapError::io(what, e).into()
}

fn entry(name: String, md: &std::fs::Metadata) -> Entry {
    let kind = if md.is_file() {
        EntryKind::File
    } else if md.is_dir() {
        EntryKind::Directory
    } else {
        EntryKind::Other
    };
    let modified = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
    Entry { name, kind, size: md.len(), modified }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(HostError::Failed(format!("host task failed: {e}"))))
}

pub use crate::util::sha256_file;

impl Host for StageState {
    async fn roots(&mut self) -> Vec<String> {
        self.ctx.caps.fs.as_ref().map(|f| f.roots.keys().cloned().collect()).unwrap_or_default()
    }

    async fn list_dir(&mut self, dir: FileRef) -> Result<Vec<Entry>, HostError> {
        let path = resolve(self, &dir)?;
        let what = format!("`{}:{}`", dir.root, dir.path);
        self.bounded(
            "listing a directory",
            blocking(move || {
                let mut out = Vec::new();
                for e in std::fs::read_dir(&path).map_err(|e| io_error(&what, e))? {
                    let e = e.map_err(|e| io_error(&what, e))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    // follow links to report what they point at (still checked on open)
                    let md = match std::fs::metadata(e.path()) {
                        Ok(md) => md,
                        Err(_) => e.metadata().map_err(|e| io_error(&what, e))?,
                    };
                    out.push(entry(name, &md));
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }),
        )
        .await
    }

    async fn stat(&mut self, target: FileRef) -> Result<Entry, HostError> {
        let path = resolve(self, &target)?;
        let what = format!("`{}:{}`", target.root, target.path);
        let name = Path::new(&target.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.bounded(
            "stat",
            blocking(move || {
                let md = std::fs::metadata(&path).map_err(|e| io_error(&what, e))?;
                Ok(entry(name, &md))
            }),
        )
        .await
    }

    async fn sha256(&mut self, target: FileRef) -> Result<String, HostError> {
        let path = resolve(self, &target)?;
        let what = format!("`{}:{}`", target.root, target.path);
        self.bounded(
            "hashing a file",
            blocking(move || sha256_file(&path).map(|(h, _)| h).map_err(|e| io_error(&what, e))),
        )
        .await
    }

    async fn open(&mut self, target: FileRef) -> Result<Resource<OpenFile>, HostError> {
        let path = resolve(self, &target)?;
        let what = format!("`{}:{}`", target.root, target.path);
        let open = self
            .bounded(
                "opening a file",
                blocking(move || {
                    let f = std::fs::File::open(&path).map_err(|e| io_error(&what, e))?;
                    let md = f.metadata().map_err(|e| io_error(&what, e))?;
                    if !md.is_file() {
                        return Err(HostError::Invalid(format!("{what} is not a file")));
                    }
                    Ok(OpenFile { file: Arc::new(f), size: md.len() })
                }),
            )
            .await?;
        self.table.push(open).map_err(|e| HostError::Failed(format!("too many open files in this instance: {e}")))
    }
}

impl HostFile for StageState {
    async fn size(&mut self, this: Resource<OpenFile>) -> u64 {
        self.table.get(&this).map(|f| f.size).unwrap_or(0)
    }

    async fn read(&mut self, this: Resource<OpenFile>, offset: u64, len: u32) -> Result<Vec<u8>, HostError> {
        let f = self.table.get(&this).map_err(|e| HostError::Invalid(format!("bad file handle: {e}")))?;
        let file = f.file.clone();
        let len = len.min(MAX_READ).min(f.size.saturating_sub(offset) as u32);
        self.bounded(
            "reading a file",
            blocking(move || {
                let mut buf = vec![0u8; len as usize];
                let mut done = 0usize;
                while done < buf.len() {
                    let n = file.read_at(&mut buf[done..], offset + done as u64).map_err(|e| io_error("reading", e))?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                buf.truncate(done);
                Ok(buf)
            }),
        )
        .await
    }

    async fn drop(&mut self, this: Resource<OpenFile>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_their_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("P_000017")).unwrap();
        std::fs::write(root.join("P_000017/0000_1.dcm"), b"x").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link")).unwrap();
        let root = root.canonicalize().unwrap();

        assert!(resolve_in(&root, "pdata", "P_000017/0000_1.dcm").is_ok());
        let msg = |r: Result<PathBuf, HostError>| match r.unwrap_err() {
            HostError::Denied(m) => m,
            e => panic!("expected denied, got {e:?}"),
        };
        assert!(msg(resolve_in(&root, "pdata", "../secret.txt")).contains("leaves fs root `pdata`"));
        assert!(msg(resolve_in(&root, "pdata", "/etc/passwd")).contains("absolute paths"));
        assert!(msg(resolve_in(&root, "pdata", "P_000017/../../secret.txt")).contains("leaves"));
        assert!(msg(resolve_in(&root, "pdata", "link")).contains("through a link"));
        assert!(matches!(resolve_in(&root, "pdata", "nope"), Err(HostError::NotFound(_))));
    }
}
