//! Previews of stored images for the API and the web page: a cache in
//! front of the **renderer stage**.
//!
//! Why a sandboxed stage and not a function: previews decode files that
//! nobody vetted (an object in the bucket may have been written by
//! anything), and decoding is where hostile files bite — sequences nested
//! thousands deep overflow a native stack, a PixelData length of
//! 0xFFFFFFF0 asks for 4 GiB, a JPEG header can declare 65535 × 65535
//! pixels, a deflate stream can inflate a thousandfold. In the host any of
//! those aborts the whole service. Inside a renderer instance (the
//! `renderer-plugin` world of `wit/ferry.wit`, stock plugin
//! `dicom-preview`) the same file hits the instance's memory cap or
//! deadline, the instance is thrown away, and the request gets a 422.
//!
//! Budgets: one render uses at most `[serve.preview] limits.memory`
//! (default 256 MiB) and `limits.timeout`; at most `concurrency` renders
//! run at once, so previews never hold more than `concurrency ×
//! limits.memory` of guest memory, whatever the files are.
//!
//! The cache: `cache_dir/<hash>-<size>.png`, where `<hash>` is a SHA-256
//! of the caller's `cache_key` (keys need no sanitising, and nothing about
//! the image shows in file names) and `<size>` is `max_size` or `full`.
//! Files are written to a temporary name and renamed into place, so a
//! reader never sees half a PNG. The key must change when the image does
//! (the API keys by stored object and its SHA-256). Failures that will
//! repeat (the renderer refused the file, or hit a limit) are cached too,
//! as `<hash>-<size>.fail`, so a hostile file costs one render, not one
//! per request; failures that may not repeat (the store was unreachable)
//! are not. Bump [`CACHE_VERSION`] when rendering changes.
//!
//! Errors never contain patient data: renderer messages are written to
//! name the problem, not the file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::metrics::Metrics;
use crate::bindings::types::{ErrorKind, FileRef};
use crate::stage::{CallError, StagePool};

mod cache;
pub use cache::CACHE_VERSION;
use cache::{cache_stem, read_cached, read_failure, write_atomically, MAX_FAILURE, PNG_SIGNATURE};

/// The fs root name under which the renderer sees downloaded files.
pub const DOWNLOAD_ROOT: &str = "download";

/// Why a preview could not be made. Messages name the problem, never the
/// file or any patient data.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The file or its frame is over what the renderer accepts.
    #[error("too large to preview: {0}")]
    TooLarge(String),
    /// The renderer refused the file (not DICOM, no pixels, unsupported
    /// encoding, malformed), or the file made it exceed a limit.
    #[error("{0}")]
    Cannot(String),
    /// Worth trying again later (the renderer could not start, a host
    /// read failed).
    #[error("{0}")]
    Unavailable(String),
    /// Reading the downloaded file or the cache.
    #[error("preview I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The preview renderer (a pool of sandboxed instances) and its disk
/// cache. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Previews {
    inner: Arc<Inner>,
}

struct Inner {
    cache_dir: PathBuf,
    /// Where downloads wait for the renderer: the renderer's only root.
    download_dir: PathBuf,
    renderer: Arc<StagePool>,
    /// Renders at once: each may use the renderer's whole memory limit.
    permits: Semaphore,
    /// `ferry_previews_total{outcome}`: rendered, cached, refused, …
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Previews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Previews").field("cache_dir", &self.inner.cache_dir).finish_non_exhaustive()
    }
}

impl Previews {
    /// Previews cached in `cache_dir`, rendered by `renderer` (whose
    /// context must have [`DOWNLOAD_ROOT`] = `download_dir` as a root),
    /// at most `concurrency` at a time.
    pub fn new(
        cache_dir: PathBuf,
        download_dir: PathBuf,
        renderer: Arc<StagePool>,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Previews {
        Previews {
            inner: Arc::new(Inner {
                cache_dir,
                download_dir,
                renderer,
                permits: Semaphore::new(concurrency.max(1)),
                metrics,
            }),
        }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    /// Where [`render`](Self::render)'s files must be.
    pub fn download_dir(&self) -> &Path {
        &self.inner.download_dir
    }

    /// The cached answer for `(cache_key, max_size)`, if there is one:
    /// a PNG, or the remembered failure. Never renders (for callers that
    /// must fetch the file first).
    pub async fn cached(&self, cache_key: &str, max_size: Option<u32>) -> Option<Result<Vec<u8>, PreviewError>> {
        let max_size = max_size.map(|s| s.max(1));
        let (png, fail) = self.paths(cache_key, max_size);
        if let Some(png) = read_cached(&png).await {
            self.inner.metrics.preview("cached");
            return Some(Ok(png));
        }
        let failure = read_failure(&fail).await?;
        self.inner.metrics.preview("refused_cached");
        Some(Err(failure))
    }

    fn paths(&self, cache_key: &str, max_size: Option<u32>) -> (PathBuf, PathBuf) {
        let stem = cache_stem(cache_key, max_size);
        (self.inner.cache_dir.join(format!("{stem}.png")), self.inner.cache_dir.join(format!("{stem}.fail")))
    }

    /// The PNG preview of `dicom` (a file in [`download_dir`](Self::download_dir)).
    /// Callers look in the cache first ([`cached`](Self::cached)): they
    /// need the file only on a miss.
    ///
    /// `max_size`: the longest side in pixels (`Some(0)` counts as 1);
    /// smaller images are not enlarged. `None`: full size.
    pub async fn render(&self, dicom: &Path, cache_key: &str, max_size: Option<u32>) -> Result<Vec<u8>, PreviewError> {
        let max_size = max_size.map(|s| s.max(1));
        let _permit =
            self.inner.permits.acquire().await.map_err(|_| PreviewError::Unavailable("shutting down".into()))?;
        // another request may have rendered it since the caller looked,
        // while this one waited for a permit
        if let Some(answer) = self.cached(cache_key, max_size).await {
            return answer;
        }
        let name = dicom
            .strip_prefix(&self.inner.download_dir)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| io::Error::other("the file to preview is not in the download folder"))?;
        let file = FileRef { root: DOWNLOAD_ROOT.into(), path: name.replace(std::path::MAIN_SEPARATOR, "/") };
        let (png_path, fail_path) = self.paths(cache_key, max_size);
        match self.inner.renderer.render(&file, max_size).await {
            Ok(picture) if picture.body.starts_with(&PNG_SIGNATURE) => {
                self.inner.metrics.preview("rendered");
                let png = picture.body;
                let (path, bytes) = (png_path, png.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = write_atomically(&path, &bytes) {
                        tracing::warn!(error = %e, cache = %path.display(), "could not cache a preview");
                    }
                })
                .await;
                Ok(png)
            }
            Ok(picture) => {
                let e = PreviewError::Cannot(format!(
                    "the renderer answered {} instead of a PNG (renderer bug)",
                    printable(&picture.content_type, 40)
                ));
                self.remember(fail_path, &e).await;
                Err(e)
            }
            Err(e) => {
                let (e, repeatable) = classify(e);
                if repeatable {
                    self.remember(fail_path, &e).await;
                } else {
                    self.inner.metrics.preview("unavailable");
                }
                Err(e)
            }
        }
    }

    async fn remember(&self, path: PathBuf, e: &PreviewError) {
        self.inner.metrics.preview("refused");
        let text = match e {
            PreviewError::TooLarge(m) => format!("too-large\n{m}"),
            other => format!("cannot\n{other}"),
        };
        let text: String = text.chars().take(MAX_FAILURE).collect();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = write_atomically(&path, text.as_bytes()) {
                tracing::warn!(error = %e, cache = %path.display(), "could not remember a failed preview");
            }
        })
        .await;
    }
}

/// A renderer failure as a preview error, and whether it will repeat for
/// the same bytes (then it is cached).
fn classify(e: CallError) -> (PreviewError, bool) {
    match e {
        CallError::Stage(s) if s.kind == ErrorKind::Retryable => (PreviewError::Unavailable(s.message), false),
        CallError::Stage(s) => match s.message.strip_prefix("too large:") {
            Some(rest) => (PreviewError::TooLarge(rest.trim().to_owned()), true),
            None => (PreviewError::Cannot(s.message), true),
        },
        // a limit or a crash: the same bytes do the same again
        CallError::Trapped(m) => (PreviewError::Cannot(format!("the file could not be rendered safely: {m}")), true),
        CallError::Setup(m) => (PreviewError::Unavailable(m), false),
    }
}

/// At most `max` printable ASCII characters of `s`.
fn printable(s: &str, max: usize) -> String {
    s.chars().take(max).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_that_repeat_are_the_ones_remembered() {
        use crate::bindings::types::StageError;
        let stage = |kind, m: &str| CallError::Stage(StageError { kind, message: m.into() });
        let (e, again) = classify(stage(ErrorKind::Permanent, "too large: 60000 × 60000 pixels"));
        assert!(again && matches!(&e, PreviewError::TooLarge(m) if m == "60000 × 60000 pixels"), "{e:?}");
        let (e, again) = classify(stage(ErrorKind::Permanent, "not a DICOM file"));
        assert!(again && matches!(e, PreviewError::Cannot(_)));
        let (e, again) = classify(CallError::Trapped("it tried to use more than its 256 MiB memory limit".into()));
        assert!(again && e.to_string().contains("256 MiB"), "{e}");
        let (_, again) = classify(stage(ErrorKind::Retryable, "unavailable: read timed out"));
        assert!(!again);
        let (_, again) = classify(CallError::Setup("cannot start".into()));
        assert!(!again);
    }
}
