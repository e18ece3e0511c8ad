//! DICOM → PNG previews for the API and the web page. (Being written.)
//!
//! Agreed interface (used by `api`):
//! - `Previews::new(cache_dir: PathBuf) -> Previews`;
//! - `Previews::render(&self, dicom: &Path, cache_key: &str, max_size: Option<u32>) -> Result<Vec<u8>, PreviewError>`
//!   (async; PNG bytes, windowed for 12/16-bit X-rays, scaled to fit `max_size`, cached on disk by key and size).
