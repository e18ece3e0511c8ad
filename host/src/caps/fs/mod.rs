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
    /// The source's: what its listings saw of files (see [`Listed`]).
    pub listed: Option<Listed>,
}

/// Size and modification time (ns) of the files a source's listings saw,
/// by `(root, path)`, until the runner takes them for the page's
/// fingerprints.
///
/// Why: on a pass where nothing changed, the fingerprint of every item is
/// most of the work that is left, and it would `stat` each file a second
/// time moments after the listing did. The runner falls back to its own
/// `stat` for any item whose file the listings did not see (a source
/// that names files without listing them, a path spelt differently).
#[derive(Default)]
pub struct Listed(std::sync::Mutex<Seen>);

/// Size and mtime (ns) of files, by `(root, path)`: what a [`Listed`]
/// hands the runner.
pub type Seen = std::collections::HashMap<(String, String), (u64, u128)>;

impl Listed {
    /// Most files remembered between two takes: a source that lists far
    /// more than it returns does not grow the host without bound.
    pub const MAX: usize = 1 << 20;

    fn record(&self, root: &str, dir: &str, files: impl Iterator<Item = (String, u64, u128)>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let dir = dir.trim_end_matches('/');
        for (name, size, mtime) in files {
            if map.len() >= Self::MAX {
                return;
            }
            let path = if dir.is_empty() || dir == "." { name } else { format!("{dir}/{name}") };
            map.insert((root.to_owned(), path), (size, mtime));
        }
    }

    /// Everything recorded since the last take.
    pub fn take(&self) -> Seen {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
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
        let listed = (cx.stage.role == crate::config::Role::Source).then(Listed::default);
        Ok(Some(Fs { roots, listed }))
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
    /// The file's first [`READ_AHEAD`] bytes, read with the open: a
    /// parser reads a header first (all of a small X-ray), and this way
    /// that costs the stage one trip to a blocking thread, not two.
    head: Vec<u8>,
}

/// How much of a file `open` reads ahead (the SDK's `FileReader` asks in
/// 64 KiB chunks).
pub const READ_AHEAD: u64 = 64 << 10;

/// Most bytes one instance's open files hold read ahead: a guest that
/// keeps thousands of files open gets plain reads, not host memory.
pub const READ_AHEAD_BUDGET: u64 = 16 * READ_AHEAD;

/// `len` bytes at `offset` (fewer at the end of the file).
fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0usize;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// Resolves `r` to a real path inside its root, or says why not.
pub fn resolve(state: &StageState, r: &FileRef) -> Result<PathBuf, HostError> {
    resolve_in(root_of(state, r)?, &r.root, &r.path)
}

/// The canonical folder of `r`'s root, if this stage may read there (its
/// grants, its spool files, the file of its current item).
fn root_of<'a>(state: &'a StageState, r: &FileRef) -> Result<&'a PathBuf, HostError> {
    let ctx = &state.ctx;
    check_relative(&r.root, &r.path)?;
    match ctx.caps.fs.as_ref().and_then(|f| f.roots.get(&r.root)) {
        Some(root) => Ok(root),
        None if r.root == super::http::spool::ROOT && state.spooled.contains(&r.path) => {
            ctx.all_fs_roots.get(&r.root).ok_or_else(|| HostError::NotFound("this stage has no spool".into()))
        }
        None if state.current_file.as_ref().is_some_and(|c| c.root == r.root && c.path == r.path) => ctx
            .all_fs_roots
            .get(&r.root)
            .ok_or_else(|| HostError::NotFound(format!("no fs root named `{}` in this pipeline", r.root))),
        None => {
            Err(ctx.denied(&format!("read fs root `{}`", r.root), &format!("add `grants.fs.{} = \"/path\"`", r.root)))
        }
    }
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

/// Modification time in nanoseconds since the Unix epoch (the runner's
/// fingerprint).
pub fn mtime_ns(md: &std::fs::Metadata) -> Option<u128> {
    Some(md.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(HostError::Failed(format!("host task failed: {e}"))))
}

pub use crate::util::sha256_file;

/// Most directories in one `list-dirs` call.
pub const MAX_LIST_DIRS: usize = 1000;

/// A file seen by a listing: name, size, modification time in ns.
type SeenFile = (String, u64, u128);

/// The entries of the directory at `path`, sorted by name; with
/// `remember`, also the files' fingerprints (see [`Listed`]).
fn list(path: &Path, what: &str, remember: bool) -> Result<(Vec<Entry>, Vec<SeenFile>), HostError> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    for e in std::fs::read_dir(path).map_err(|e| io_error(what, e))? {
        let e = e.map_err(|e| io_error(what, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // relative to the open directory (no path walk); a link is
        // followed to report what it points at (still checked on open)
        let md = match e.file_type() {
            Ok(t) if t.is_symlink() => std::fs::metadata(e.path()).or_else(|_| e.metadata()),
            _ => e.metadata(),
        }
        .map_err(|e| io_error(what, e))?;
        if remember && md.is_file() {
            if let Some(mtime) = mtime_ns(&md) {
                files.push((name.clone(), md.len(), mtime));
            }
        }
        out.push(entry(name, &md));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, files))
}

impl StageState {
    /// The source's record of what its listings saw (none for other stages).
    fn listed(&self) -> Option<&Listed> {
        self.ctx.caps.fs.as_ref().and_then(|f| f.listed.as_ref())
    }

    /// Records what a listing of `dir` saw of its files, for the source.
    fn remember(&self, dir: &FileRef, files: Vec<SeenFile>) {
        if let Some(listed) = self.listed() {
            listed.record(&dir.root, &dir.path, files.into_iter());
        }
    }
}

impl Host for StageState {
    async fn roots(&mut self) -> Vec<String> {
        self.ctx.caps.fs.as_ref().map(|f| f.roots.keys().cloned().collect()).unwrap_or_default()
    }

    async fn list_dir(&mut self, dir: FileRef) -> Result<Vec<Entry>, HostError> {
        let path = resolve(self, &dir)?;
        let remember = self.listed().is_some();
        let what = format!("`{}:{}`", dir.root, dir.path);
        let (entries, files) =
            self.bounded("listing a directory", blocking(move || list(&path, &what, remember))).await?;
        self.remember(&dir, files);
        Ok(entries)
    }

    async fn list_dirs(&mut self, dirs: Vec<FileRef>) -> Result<Vec<Result<Vec<Entry>, HostError>>, HostError> {
        if dirs.len() > MAX_LIST_DIRS {
            return Err(HostError::Invalid(format!(
                "list-dirs of {} directories: at most {MAX_LIST_DIRS} per call",
                dirs.len()
            )));
        }
        // grants are checked here; the paths are resolved and listed in
        // one blocking task (a share's round trips, not a thread hand-off
        // per folder)
        let jobs: Vec<_> =
            dirs.iter().map(|d| root_of(self, d).map(|root| (root.clone(), d.root.clone(), d.path.clone()))).collect();
        let remember = self.listed().is_some();
        let listed = self
            .bounded(
                "listing directories",
                blocking(move || {
                    Ok(jobs
                        .into_iter()
                        .map(|job| {
                            let (root, name, rel) = job?;
                            let path = resolve_in(&root, &name, &rel)?;
                            list(&path, &format!("`{name}:{rel}`"), remember)
                        })
                        .collect::<Vec<_>>())
                }),
            )
            .await?;
        Ok(dirs
            .iter()
            .zip(listed)
            .map(|(dir, r)| {
                r.map(|(entries, files)| {
                    self.remember(dir, files);
                    entries
                })
            })
            .collect())
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
        let ahead = READ_AHEAD.min(READ_AHEAD_BUDGET.saturating_sub(self.read_ahead));
        let open = self
            .bounded(
                "opening a file",
                blocking(move || {
                    let f = std::fs::File::open(&path).map_err(|e| io_error(&what, e))?;
                    let md = f.metadata().map_err(|e| io_error(&what, e))?;
                    if !md.is_file() {
                        return Err(HostError::Invalid(format!("{what} is not a file")));
                    }
                    let head = read_at(&f, 0, md.len().min(ahead) as usize).map_err(|e| io_error(&what, e))?;
                    Ok(OpenFile { file: Arc::new(f), size: md.len(), head })
                }),
            )
            .await?;
        self.read_ahead += open.head.len() as u64;
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
        if let Some(ahead) = offset.checked_add(len as u64).filter(|end| *end <= f.head.len() as u64) {
            return Ok(f.head[offset as usize..ahead as usize].to_vec());
        }
        self.bounded(
            "reading a file",
            blocking(move || read_at(&file, offset, len as usize).map_err(|e| io_error("reading", e))),
        )
        .await
    }

    async fn drop(&mut self, this: Resource<OpenFile>) -> wasmtime::Result<()> {
        let f = self.table.delete(this)?;
        self.read_ahead = self.read_ahead.saturating_sub(f.head.len() as u64);
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

    #[test]
    fn listings_remember_files_by_the_path_a_source_names_them_with() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("P_1")).unwrap();
        std::fs::write(dir.path().join("P_1").join("a.dcm"), b"12345").unwrap();
        let (entries, files) = list(&dir.path().join("P_1"), "`pdata:P_1`", true).unwrap();
        assert_eq!(entries.len(), 1);
        let md = std::fs::metadata(dir.path().join("P_1").join("a.dcm")).unwrap();
        assert_eq!(files, vec![("a.dcm".to_string(), 5, mtime_ns(&md).unwrap())]);
        let listed = Listed::default();
        listed.record("pdata", "P_1/", files.clone().into_iter());
        listed.record("pdata", "", files.clone().into_iter());
        listed.record("pdata", ".", vec![("b".to_string(), 1, 2)].into_iter());
        let seen = listed.take();
        assert_eq!(seen.get(&("pdata".into(), "P_1/a.dcm".into())), Some(&(5, mtime_ns(&md).unwrap())));
        assert!(seen.contains_key(&("pdata".into(), "a.dcm".into())));
        assert!(seen.contains_key(&("pdata".into(), "b".into())));
        assert!(listed.take().is_empty(), "a take empties it");
        // bounded: a source listing far more than it returns
        let many = (0..Listed::MAX + 10).map(|i| (format!("f{i}"), 1, 1));
        listed.record("pdata", "big", many);
        assert_eq!(listed.take().len(), Listed::MAX);
    }
}
