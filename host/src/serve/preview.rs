//! DICOM → PNG previews for the API and the web page.
//!
//! [`Previews::render`] turns one DICOM file into an 8-bit grayscale PNG,
//! optionally scaled down to fit a square box, and caches the result on
//! disk. What it does to the pixels, in order:
//!
//! 1. decode the first frame (multi-frame files such as CBCT volumes show
//!    their first slice) with `dicom-pixeldata`;
//! 2. monochrome: apply the modality rescale (RescaleSlope/Intercept),
//!    then a window: the file's first WindowCenter/WindowWidth (with its
//!    VOILUTFunction: LINEAR, LINEAR_EXACT or SIGMOID) if it has a usable
//!    one, otherwise — for more than 8 bits stored — the 0.5th to 99.5th
//!    percentile of the frame's values (percentiles rather than min/max so
//!    that burned-in markers and dead pixels do not flatten the contrast),
//!    and for 8 bits stored the full stored range; `MONOCHROME1` is
//!    inverted so that bone is always light;
//! 3. colour (RGB, YBR_FULL, JPEG-compressed YBR_FULL_422, 8-bit only,
//!    e.g. intra-oral camera pictures): the luma (Rec. 601 weights);
//! 4. scale down (never up) with a triangle (bilinear, widened with the
//!    scale factor so that it averages every source pixel) filter to fit
//!    `max_size` × `max_size`, keeping the aspect ratio;
//! 5. encode as PNG (grayscale, 8 bits, fast deflate).
//!
//! Transfer syntaxes: Implicit/Explicit VR Little Endian, Explicit VR Big
//! Endian, Deflated Explicit VR Little Endian, Encapsulated Uncompressed,
//! Deflated Image Frame Compression, RLE Lossless and JPEG baseline /
//! extended / lossless (processes 1, 2 & 4, 14 and 14 SV1). JPEG 2000
//! (incl. HTJ2K), JPEG-LS, JPEG XL and the video syntaxes are refused with
//! [`PreviewError::UnsupportedTransferSyntax`], which names them. JPEG 2000
//! is one `dicom-pixeldata` feature away (`openjp2`, pure Rust).
//!
//! The cache: `cache_dir/<hash>-<size>.png`, where `<hash>` is a SHA-256 of
//! the caller's `cache_key` (so keys need no sanitising and nothing about
//! the image shows in file names) and `<size>` is `max_size` or `full`.
//! Files are written to a temporary name and renamed into place, so a
//! reader never sees half a PNG. The key must change when the image does
//! (the API keys by stored object); bump [`CACHE_VERSION`] when rendering
//! changes. Failing to write the cache is logged, not an error.
//!
//! Errors never contain patient data: no paths, no attribute values other
//! than transfer syntax UIDs and photometric interpretation names.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions, ReadError, Tag};
use dicom_pixeldata::{
    DecodedPixelData, PhotometricInterpretation, PixelDecoder, PixelRepresentation,
    PlanarConfiguration, VoiLutFunction,
};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Largest DICOM file previewed. The whole file is read into memory, and
/// native pixel data are copied once more while decoding, so a render
/// peaks at about twice the file size.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Largest frame previewed, in pixels (8192 × 8192; a panoramic is
/// about 3000 × 1500, a CBCT slice at most about 1100 × 1100).
pub const MAX_FRAME_PIXELS: u64 = 8192 * 8192;

/// Part of every cache file's hash: change it when the rendering changes,
/// so that old previews are not served.
pub const CACHE_VERSION: &str = "ferry-preview-1";

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Why a preview could not be made. Messages name the problem, never the
/// file or any patient data.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// No `DICM` marker (with or without the 128-byte preamble).
    #[error("not a DICOM file")]
    NotDicom,
    /// DICOM, but the file cannot be parsed or contradicts itself.
    #[error("malformed DICOM file: {0}")]
    Malformed(String),
    #[error("unsupported transfer syntax: {name} ({uid})")]
    UnsupportedTransferSyntax { uid: String, name: String },
    #[error("unsupported photometric interpretation: {0}")]
    UnsupportedPhotometricInterpretation(String),
    /// E.g. 32 bits allocated, or 16-bit colour.
    #[error("unsupported pixel format: {0}")]
    UnsupportedPixelFormat(String),
    /// Not an image (a structured report, a PDF, a key object…).
    #[error("the DICOM file has no pixel data")]
    NoPixelData,
    /// Over [`MAX_FILE_BYTES`] or [`MAX_FRAME_PIXELS`].
    #[error("too large to preview: {0}")]
    TooLarge(String),
    /// Reading the DICOM file (e.g. `NotFound`) or encoding the PNG.
    #[error("preview I/O error: {0}")]
    Io(#[from] io::Error),
    /// The rendering task panicked (a bug, or a decoder choking on a
    /// hostile file).
    #[error("preview rendering failed unexpectedly")]
    Internal,
}

/// The preview renderer and its disk cache. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Previews {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cache_dir: PathBuf,
    /// At most one render per core at a time: renders are CPU-bound and
    /// hold a whole file in memory.
    permits: Semaphore,
    rendered: AtomicU64,
}

impl Previews {
    /// Previews cached in `cache_dir` (created on first write).
    pub fn new(cache_dir: PathBuf) -> Previews {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Previews {
            inner: Arc::new(Inner {
                cache_dir,
                permits: Semaphore::new(cores),
                rendered: AtomicU64::new(0),
            }),
        }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    /// How many previews were rendered (cache misses that succeeded).
    pub fn rendered(&self) -> u64 {
        self.inner.rendered.load(Ordering::Relaxed)
    }

    /// The cached PNG for `(cache_key, max_size)`, if there is one; never
    /// renders (for callers that must fetch the DICOM file first).
    pub async fn cached(&self, cache_key: &str, max_size: Option<u32>) -> Option<Vec<u8>> {
        let max_size = max_size.map(|s| s.max(1));
        read_cached(
            &self
                .inner
                .cache_dir
                .join(cache_file_name(cache_key, max_size)),
        )
        .await
    }

    /// The PNG preview of `dicom`, from the cache if it holds one for
    /// `(cache_key, max_size)`.
    ///
    /// `max_size`: the longest side in pixels (`Some(0)` counts as 1);
    /// smaller images are not enlarged. `None`: full size.
    pub async fn render(
        &self,
        dicom: &Path,
        cache_key: &str,
        max_size: Option<u32>,
    ) -> Result<Vec<u8>, PreviewError> {
        let max_size = max_size.map(|s| s.max(1));
        let cached = self
            .inner
            .cache_dir
            .join(cache_file_name(cache_key, max_size));
        if let Some(png) = read_cached(&cached).await {
            return Ok(png);
        }
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| PreviewError::Internal)?;
        // Another request may have rendered it while this one waited.
        if let Some(png) = read_cached(&cached).await {
            return Ok(png);
        }
        let dicom = dicom.to_path_buf();
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let png = render_png(&dicom, max_size)?;
            inner.rendered.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = write_atomically(&cached, &png) {
                tracing::warn!(error = %e, cache = %cached.display(), "could not cache a preview");
            }
            Ok(png)
        })
        .await
        .map_err(|_| PreviewError::Internal)?
    }
}

/// `<hash>-<size>.png`: 128 bits of SHA-256 over the cache version and
/// the key.
fn cache_file_name(key: &str, max_size: Option<u32>) -> String {
    let mut hash = Sha256::new();
    hash.update(CACHE_VERSION.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    let hash = hex::encode(&hash.finalize()[..16]);
    match max_size {
        Some(size) => format!("{hash}-{size}.png"),
        None => format!("{hash}-full.png"),
    }
}

/// A cached PNG, or `None` (missing, unreadable or not a PNG: render).
async fn read_cached(path: &Path) -> Option<Vec<u8>> {
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

/// Writes `bytes` to a unique temporary file next to `path`, flushes it
/// and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("preview");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An 8-bit grayscale image, row-major.
#[derive(Debug, Clone, PartialEq)]
struct Gray {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

/// The whole pipeline, synchronously: file → PNG bytes.
fn render_png(path: &Path, max_size: Option<u32>) -> Result<Vec<u8>, PreviewError> {
    let image = render_gray(path)?;
    let image = match max_size {
        Some(max) => fit(image, max),
        None => image,
    };
    encode_png(&image)
}

/// Reads, checks and decodes the first frame of `path` into 8-bit gray.
fn render_gray(path: &Path) -> Result<Gray, PreviewError> {
    let size = fs::metadata(path)?.len();
    if size > MAX_FILE_BYTES {
        return Err(PreviewError::TooLarge(format!(
            "the file is {} MiB; the limit is {} MiB",
            size >> 20,
            MAX_FILE_BYTES >> 20
        )));
    }
    // The header first (stopping before the pixel data), so that big files
    // of an unsupported kind are refused without reading them whole.
    let header = open(path, Some(tags::PIXEL_DATA))?;
    let frame_bytes = check_header(&header)?;
    drop(header);

    let obj = open(path, None)?;
    let pixel_data = obj.get(tags::PIXEL_DATA).ok_or(PreviewError::NoPixelData)?;
    if let Some(native) = pixel_data.value().primitive() {
        if (native.calculate_byte_len() as u64) < frame_bytes {
            return Err(malformed(
                "the pixel data is shorter than Rows × Columns declare",
            ));
        }
    }
    let decoded = obj
        .decode_pixel_data_frame(0)
        .map_err(|_| malformed("the pixel data could not be decoded"))?;
    to_gray(&decoded)
}

fn malformed(what: &str) -> PreviewError {
    PreviewError::Malformed(what.to_string())
}

/// Opens `path` (with or without the 128-byte preamble), reading up to
/// `until` if given.
fn open(path: &Path, until: Option<Tag>) -> Result<DefaultDicomObject, PreviewError> {
    let mut options = OpenFileOptions::new();
    if let Some(tag) = until {
        options = options.read_until(tag);
    }
    options.open_file(path).map_err(read_error)
}

/// dicom-object's errors carry file names and parser tokens (values):
/// keep the kind only.
fn read_error(e: ReadError) -> PreviewError {
    use dicom_object::meta::Error as Meta;
    match e {
        ReadError::OpenFile { source, .. } => PreviewError::Io(source),
        ReadError::ReadFile { source, .. } | ReadError::ReadPreambleBytes { source, .. } => {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                PreviewError::NotDicom
            } else {
                PreviewError::Io(source)
            }
        }
        ReadError::ParseMetaDataSet {
            source: Meta::NotDicom { .. } | Meta::ReadMagicCode { .. },
        } => PreviewError::NotDicom,
        ReadError::ParseMetaDataSet { .. } => {
            malformed("the file meta information could not be parsed")
        }
        ReadError::ReadUnrecognizedTransferSyntax { uid, .. } => {
            PreviewError::UnsupportedTransferSyntax {
                uid: printable(&uid, 64),
                name: "unknown".to_string(),
            }
        }
        ReadError::ReadUnsupportedTransferSyntax { uid, name, .. }
        | ReadError::ReadUnsupportedTransferSyntaxWithSuggestion { uid, name, .. } => {
            PreviewError::UnsupportedTransferSyntax {
                uid: uid.to_string(),
                name: name.to_string(),
            }
        }
        _ => malformed("the data set could not be parsed (truncated or invalid element)"),
    }
}

/// At most `max` printable ASCII characters of `s` (values from files are
/// only ever shown through this).
fn printable(s: &str, max: usize) -> String {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn attr_u16(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<Option<u16>, PreviewError> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => e
            .to_int::<u16>()
            .map(Some)
            .map_err(|_| PreviewError::Malformed(format!("{name} is not a valid number"))),
    }
}

fn required_u16(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<u16, PreviewError> {
    attr_u16(obj, tag, name)?.ok_or_else(|| PreviewError::Malformed(format!("{name} is missing")))
}

/// Checks what can be checked before the pixel data are read: transfer
/// syntax, photometric interpretation, sample format, size. Returns the
/// size in bytes of one native frame.
fn check_header(obj: &DefaultDicomObject) -> Result<u64, PreviewError> {
    let uid = obj.meta().transfer_syntax();
    let ts =
        TransferSyntaxRegistry
            .get(uid)
            .ok_or_else(|| PreviewError::UnsupportedTransferSyntax {
                uid: printable(uid, 64),
                name: "unknown".to_string(),
            })?;
    if !ts.can_decode_all() {
        return Err(PreviewError::UnsupportedTransferSyntax {
            uid: ts.uid().to_string(),
            name: ts.name().to_string(),
        });
    }

    // An object without an image matrix is not an image at all.
    let (Some(rows), Some(cols)) = (
        attr_u16(obj, tags::ROWS, "Rows")?,
        attr_u16(obj, tags::COLUMNS, "Columns")?,
    ) else {
        return Err(PreviewError::NoPixelData);
    };
    if rows == 0 || cols == 0 {
        return Err(malformed("Rows or Columns is zero"));
    }
    let pixels = u64::from(rows) * u64::from(cols);
    if pixels > MAX_FRAME_PIXELS {
        return Err(PreviewError::TooLarge(format!(
            "{cols} × {rows} pixels; the limit is {} megapixels",
            MAX_FRAME_PIXELS >> 20
        )));
    }

    let pi = obj
        .get(tags::PHOTOMETRIC_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .map(|s| printable(&s, 16).to_ascii_uppercase())
        .ok_or_else(|| malformed("PhotometricInterpretation is missing"))?;
    let samples = attr_u16(obj, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1);
    let allocated = required_u16(obj, tags::BITS_ALLOCATED, "BitsAllocated")?;
    let stored = required_u16(obj, tags::BITS_STORED, "BitsStored")?;
    required_u16(obj, tags::HIGH_BIT, "HighBit")?;
    required_u16(obj, tags::PIXEL_REPRESENTATION, "PixelRepresentation")?;

    let colour = match pi.as_str() {
        "MONOCHROME1" | "MONOCHROME2" => false,
        "RGB" | "YBR_FULL" => true,
        // Uncompressed 4:2:2 packs two pixels in four bytes; only the JPEG
        // decoder's RGB output is handled.
        "YBR_FULL_422" if ts.is_encapsulated_pixel_data() => true,
        _ => return Err(PreviewError::UnsupportedPhotometricInterpretation(pi)),
    };
    let expected_samples = if colour { 3 } else { 1 };
    if samples != expected_samples {
        return Err(PreviewError::UnsupportedPixelFormat(format!(
            "{samples} samples per pixel for {pi}"
        )));
    }
    if !matches!(allocated, 8 | 16) || (colour && allocated != 8) {
        return Err(PreviewError::UnsupportedPixelFormat(format!(
            "{allocated} bits allocated per sample for {pi}"
        )));
    }
    if stored == 0 || stored > allocated {
        return Err(malformed("BitsStored is out of range"));
    }
    Ok(pixels * u64::from(samples) * u64::from(allocated / 8))
}

/// The first (only) frame of `px` as 8-bit gray.
fn to_gray(px: &DecodedPixelData<'_>) -> Result<Gray, PreviewError> {
    let (width, height) = (px.columns(), px.rows());
    let n = width as usize * height as usize;
    let data = px.data();
    let pixels = match px.photometric_interpretation() {
        PhotometricInterpretation::Monochrome1 => monochrome(px, n, true)?,
        PhotometricInterpretation::Monochrome2 => monochrome(px, n, false)?,
        pi @ (PhotometricInterpretation::Rgb | PhotometricInterpretation::YbrFull) => {
            if px.samples_per_pixel() != 3 || px.bits_allocated() != 8 {
                return Err(PreviewError::UnsupportedPixelFormat(format!(
                    "{} samples of {} bits for {pi}",
                    px.samples_per_pixel(),
                    px.bits_allocated()
                )));
            }
            if data.len() < 3 * n {
                return Err(malformed(
                    "the decoded pixel data are shorter than the image",
                ));
            }
            let planar = px.planar_configuration() == PlanarConfiguration::PixelFirst;
            let sample = |i: usize, c: usize| {
                f32::from(if planar {
                    data[c * n + i]
                } else {
                    data[3 * i + c]
                })
            };
            if *pi == PhotometricInterpretation::YbrFull {
                // Y is the luma already.
                (0..n).map(|i| sample(i, 0) as u8).collect()
            } else {
                (0..n)
                    .map(|i| {
                        let y = 0.299 * sample(i, 0) + 0.587 * sample(i, 1) + 0.114 * sample(i, 2);
                        y.round().clamp(0.0, 255.0) as u8
                    })
                    .collect()
            }
        }
        pi => {
            return Err(PreviewError::UnsupportedPhotometricInterpretation(
                printable(pi.as_str(), 16),
            ))
        }
    };
    Ok(Gray {
        width,
        height,
        pixels,
    })
}

/// Monochrome samples → rescale → window → (inversion) → 8 bits, through
/// a lookup table over every possible stored value (at most 65536).
fn monochrome(px: &DecodedPixelData<'_>, n: usize, invert: bool) -> Result<Vec<u8>, PreviewError> {
    let allocated = px.bits_allocated();
    let stored = px.bits_stored().clamp(1, allocated.clamp(1, 16));
    let high_bit = px.high_bit();
    // Samples whose stored bits do not start at bit 0 (rare).
    let shift = if high_bit + 1 >= stored && high_bit < allocated {
        high_bit + 1 - stored
    } else {
        0
    };
    let levels = 1usize << stored;
    let mask = (levels - 1) as u32;
    let signed = px.pixel_representation() == PixelRepresentation::Signed;
    // Offset binary: flipping the sign bit maps two's complement values
    // -2^(b-1)..2^(b-1)-1 onto table indices 0..2^b-1, in order.
    let flip = if signed { (levels / 2) as u32 } else { 0 };
    let index = |raw: u32| (((raw >> shift) & mask) ^ flip) as u16;

    let data = px.data();
    let indices: Vec<u16> = match allocated {
        8 if data.len() >= n => data[..n].iter().map(|&b| index(u32::from(b))).collect(),
        16 if data.len() >= 2 * n => data[..2 * n]
            .chunks_exact(2)
            .map(|b| index(u32::from(u16::from_ne_bytes([b[0], b[1]]))))
            .collect(),
        8 | 16 => {
            return Err(malformed(
                "the decoded pixel data are shorter than the image",
            ))
        }
        bits => {
            return Err(PreviewError::UnsupportedPixelFormat(format!(
                "{bits} bits allocated per sample"
            )))
        }
    };

    let rescale = px
        .rescale()
        .ok()
        .and_then(|r| r.first().copied())
        .filter(|r| r.slope.is_finite() && r.intercept.is_finite() && r.slope != 0.0);
    let (slope, intercept) = rescale.map_or((1.0, 0.0), |r| (r.slope, r.intercept));
    let offset = if signed { (levels / 2) as f64 } else { 0.0 };
    let value = |i: usize| (i as f64 - offset) * slope + intercept;

    let voi = file_window(px).unwrap_or_else(|| {
        if stored > 8 {
            percentile_window(&indices, levels, &value)
        } else {
            Voi::Range {
                lo: value(0).min(value(levels - 1)),
                hi: value(0).max(value(levels - 1)),
            }
        }
    });
    let lut: Vec<u8> = (0..levels)
        .map(|i| {
            let y = voi.apply(value(i));
            let y = if invert { 1.0 - y } else { y };
            (y * 255.0).round() as u8
        })
        .collect();
    Ok(indices.iter().map(|&i| lut[usize::from(i)]).collect())
}

/// A VOI transformation onto 0.0..=1.0 (PS3.3 C.11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Voi {
    Linear { center: f64, width: f64 },
    LinearExact { center: f64, width: f64 },
    Sigmoid { center: f64, width: f64 },
    Range { lo: f64, hi: f64 },
}

impl Voi {
    fn apply(self, x: f64) -> f64 {
        let y = match self {
            Voi::Linear { center, width } => {
                let lo = center - 0.5 - (width - 1.0) / 2.0;
                let hi = center - 0.5 + (width - 1.0) / 2.0;
                if x <= lo {
                    0.0
                } else if x > hi {
                    1.0
                } else {
                    (x - (center - 0.5)) / (width - 1.0) + 0.5
                }
            }
            Voi::LinearExact { center, width } => (x - center) / width + 0.5,
            Voi::Sigmoid { center, width } => 1.0 / (1.0 + (-4.0 * (x - center) / width).exp()),
            Voi::Range { lo, hi } => (x - lo) / (hi - lo),
        };
        y.clamp(0.0, 1.0)
    }
}

/// The file's first window, if it has a usable one.
fn file_window(px: &DecodedPixelData<'_>) -> Option<Voi> {
    let window = *px.window().ok()??.first()?;
    let (center, width) = (window.center, window.width);
    if !center.is_finite() || !width.is_finite() {
        return None;
    }
    let function = px
        .voi_lut_function()
        .ok()
        .flatten()
        .and_then(|f| f.first().copied())
        .unwrap_or_default();
    match function {
        VoiLutFunction::Linear if width >= 1.0 => Some(Voi::Linear { center, width }),
        VoiLutFunction::LinearExact if width > 0.0 => Some(Voi::LinearExact { center, width }),
        VoiLutFunction::Sigmoid if width > 0.0 => Some(Voi::Sigmoid { center, width }),
        _ => None,
    }
}

/// The window from the 0.5th to the 99.5th percentile of the frame.
fn percentile_window(indices: &[u16], levels: usize, value: &dyn Fn(usize) -> f64) -> Voi {
    let mut histogram = vec![0u32; levels];
    for &i in indices {
        histogram[usize::from(i)] += 1;
    }
    let n = indices.len() as u64;
    let low_rank = n * 5 / 1000; // pixels allowed below the window
    let high_rank = n - n * 5 / 1000; // pixels at or below the top
    let (mut lo, mut hi, mut seen) = (None, 0, 0u64);
    for (i, &count) in histogram.iter().enumerate() {
        if count == 0 {
            continue;
        }
        seen += u64::from(count);
        if lo.is_none() && seen > low_rank {
            lo = Some(i);
        }
        hi = i;
        if seen >= high_rank.max(1) {
            break;
        }
    }
    let lo_index = lo.unwrap_or(0);
    let (a, b) = (value(lo_index), value(hi));
    let (lo, hi) = (a.min(b), a.max(b));
    if hi <= lo {
        // A flat image: mid-gray rather than a division by zero.
        Voi::Range {
            lo: lo - 0.5,
            hi: lo + 0.5,
        }
    } else {
        Voi::Range { lo, hi }
    }
}

/// Scales `image` down to fit `max` × `max` (never up), keeping the
/// aspect ratio (the longer side becomes `max`).
fn fit(image: Gray, max: u32) -> Gray {
    let (w, h) = (u64::from(image.width), u64::from(image.height));
    let longest = w.max(h);
    if longest <= u64::from(max) {
        return image;
    }
    let scaled = |side: u64| ((side * u64::from(max) + longest / 2) / longest).max(1) as u32;
    resize(&image, scaled(w), scaled(h))
}

/// For each output position along one axis: the first source index and
/// the normalised weights of a triangle filter whose radius is one output
/// pixel (so every source pixel contributes when shrinking).
fn taps(src: u32, dst: u32) -> Vec<(usize, Vec<f32>)> {
    let scale = f64::from(src) / f64::from(dst);
    let radius = scale.max(1.0);
    (0..dst)
        .map(|i| {
            let center = (f64::from(i) + 0.5) * scale;
            let start = (center - radius).floor().max(0.0) as usize;
            let end = ((center + radius).ceil() as usize).min(src as usize);
            let mut weights: Vec<f32> = (start..end)
                .map(|j| {
                    let d = ((j as f64 + 0.5) - center).abs() / radius;
                    (1.0 - d).max(0.0) as f32
                })
                .collect();
            let sum: f32 = weights.iter().sum();
            if sum > 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            (start, weights)
        })
        .collect()
}

/// Separable triangle-filter resampling (horizontal, then vertical).
fn resize(image: &Gray, width: u32, height: u32) -> Gray {
    let (sw, sh) = (image.width as usize, image.height as usize);
    let (dw, dh) = (width as usize, height as usize);
    let horizontal = taps(image.width, width);
    let mut tmp = vec![0f32; sh * dw];
    for (src_row, out_row) in image.pixels.chunks_exact(sw).zip(tmp.chunks_exact_mut(dw)) {
        for (out, (start, weights)) in out_row.iter_mut().zip(&horizontal) {
            *out = weights
                .iter()
                .zip(&src_row[*start..])
                .map(|(w, &p)| w * f32::from(p))
                .sum();
        }
    }
    let vertical = taps(image.height, height);
    let mut pixels = Vec::with_capacity(dw * dh);
    let mut acc = vec![0f32; dw];
    for (start, weights) in &vertical {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (k, w) in weights.iter().enumerate() {
            let row = &tmp[(start + k) * dw..(start + k + 1) * dw];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += w * p;
            }
        }
        pixels.extend(acc.iter().map(|a| a.round().clamp(0.0, 255.0) as u8));
    }
    Gray {
        width,
        height,
        pixels,
    }
}

fn encode_png(image: &Gray) -> Result<Vec<u8>, PreviewError> {
    let mut out = Vec::with_capacity(image.pixels.len() / 2 + 1024);
    let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let png_error = |e: png::EncodingError| io::Error::other(format!("PNG encoding: {e}"));
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&image.pixels).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::{Duration, Instant};

    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use ferry_tests::{ImageKind, ImageSpec, SiteBuilder};

    /// One generated Sidexis image (12 bits in 16, MONOCHROME2, window
    /// 2048/4096) in a fresh site under `dir/name`; returns its path.
    fn generate(dir: &Path, name: &str, kind: ImageKind, pixels: Option<(u16, u16)>) -> PathBuf {
        let mut spec = ImageSpec::new(7, 101, "Preview test", kind);
        if let Some((rows, cols)) = pixels {
            spec = spec.pixels(rows, cols);
        }
        let site = SiteBuilder::new()
            .image(spec)
            .build(&dir.join(name))
            .unwrap();
        site.images[0].path.clone()
    }

    /// A copy of the DICOM file `src` at `dir/name`, changed by `change`.
    fn variant(
        src: &Path,
        dir: &Path,
        name: &str,
        change: impl FnOnce(&mut DefaultDicomObject),
    ) -> PathBuf {
        let mut obj = dicom_object::open_file(src).unwrap();
        change(&mut obj);
        let path = dir.join(name);
        obj.write_to_file(&path).unwrap();
        path
    }

    fn set(obj: &mut DefaultDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
        obj.put(DataElement::new(tag, vr, value.into()));
    }

    fn set_pixels_u16(obj: &mut DefaultDicomObject, values: Vec<u16>) {
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(values.into()),
        ));
    }

    struct Decoded {
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        pixels: Vec<u8>,
    }

    fn decode(bytes: &[u8]) -> Decoded {
        assert!(bytes.starts_with(&PNG_SIGNATURE), "not a PNG");
        let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        Decoded {
            width: info.width,
            height: info.height,
            color: info.color_type,
            depth: info.bit_depth,
            pixels: buf,
        }
    }

    fn distinct(pixels: &[u8]) -> usize {
        let mut seen = [false; 256];
        pixels.iter().for_each(|&p| seen[usize::from(p)] = true);
        seen.iter().filter(|&&s| s).count()
    }

    fn assert_close(a: &[u8], b: &[u8], tolerance: u8) {
        assert_eq!(a.len(), b.len());
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(x.abs_diff(y) <= tolerance, "pixel {i}: {x} vs {y}");
        }
    }

    #[tokio::test]
    async fn intra_oral_preview_is_8_bit_gray_png_scaled_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        // 300 rows × 400 columns: landscape, 4:3.
        let dcm = generate(dir.path(), "site", ImageKind::IntraOral, Some((300, 400)));
        let previews = Previews::new(dir.path().join("cache"));

        let png = previews.render(&dcm, "io", Some(256)).await.unwrap();
        assert!(png.starts_with(&PNG_SIGNATURE));
        let img = decode(&png);
        assert_eq!((img.width, img.height), (256, 192));
        assert_eq!(img.color, png::ColorType::Grayscale);
        assert_eq!(img.depth, png::BitDepth::Eight);
        assert_eq!(img.pixels.len(), 256 * 192);

        let full = decode(&previews.render(&dcm, "io", None).await.unwrap());
        assert_eq!((full.width, full.height), (400, 300));
        // Never enlarged.
        let big = decode(&previews.render(&dcm, "io", Some(4000)).await.unwrap());
        assert_eq!((big.width, big.height), (400, 300));
        assert_eq!(big.pixels, full.pixels);
        // Degenerate sizes still give an image.
        let tiny = decode(&previews.render(&dcm, "io", Some(0)).await.unwrap());
        assert_eq!((tiny.width, tiny.height), (1, 1));
    }

    #[tokio::test]
    async fn panoramic_and_portrait_keep_their_aspect_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let previews = Previews::new(dir.path().join("cache"));
        // The default panoramic: 128 rows × 64 columns.
        let px = generate(dir.path(), "px", ImageKind::Panoramic, None);
        let img = decode(&previews.render(&px, "px", Some(32)).await.unwrap());
        assert_eq!((img.width, img.height), (16, 32));
        // 1500 × 3000, as a real panoramic (cols × rows reversed here).
        let wide = generate(dir.path(), "wide", ImageKind::Panoramic, Some((1500, 3000)));
        let img = decode(&previews.render(&wide, "wide", Some(256)).await.unwrap());
        assert_eq!((img.width, img.height), (256, 128));
    }

    #[test]
    fn file_window_gives_a_full_histogram() {
        let dir = tempfile::tempdir().unwrap();
        let dcm = generate(dir.path(), "site", ImageKind::IntraOral, Some((300, 400)));
        let img = render_gray(&dcm).unwrap();
        let levels = distinct(&img.pixels);
        assert!(levels > 200, "only {levels} gray levels");
        let n = img.pixels.len();
        let clipped = img.pixels.iter().filter(|&&p| p == 0 || p == 255).count();
        assert!(clipped * 20 < n, "{clipped} of {n} pixels clipped");
        // The generated gradient runs from dark (top left) to light.
        assert!(img.pixels[0] < 64 && img.pixels[n - 1] > 192);
        // The scaled preview keeps the spread.
        let small = fit(img, 64);
        assert!(distinct(&small.pixels) > 50);
    }

    #[test]
    fn without_a_window_percentiles_ignore_burned_in_markers() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, Some((200, 300)));
        // Anatomy in 1000..=1400 of the 12-bit range, plus 20 saturated
        // marker pixels and 20 black ones (0.07 % of the image).
        let dcm = variant(&src, dir.path(), "no-window.dcm", |obj| {
            obj.remove_element(tags::WINDOW_CENTER);
            obj.remove_element(tags::WINDOW_WIDTH);
            let mut values: Vec<u16> = (0..200 * 300_u32)
                .map(|i| (1000 + (i % 300) * 400 / 299) as u16)
                .collect();
            values[..20].fill(4095);
            values[20..40].fill(0);
            set_pixels_u16(obj, values);
        });
        let img = render_gray(&dcm).unwrap();
        let row = &img.pixels[300..600];
        assert!(row[0] <= 3 && row[299] >= 252, "{} .. {}", row[0], row[299]);
        assert!(distinct(&img.pixels[40..]) > 200);
        // (Min/max would have squeezed the anatomy into ~25 levels.)
    }

    #[test]
    fn monochrome1_is_inverted() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, Some((60, 80)));
        let m1 = variant(&src, dir.path(), "m1.dcm", |obj| {
            set(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME1");
        });
        let normal = render_gray(&src).unwrap();
        let inverted = render_gray(&m1).unwrap();
        let flipped: Vec<u8> = normal.pixels.iter().map(|p| 255 - p).collect();
        assert_close(&inverted.pixels, &flipped, 1);
    }

    #[test]
    fn rescale_is_applied_before_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, Some((60, 80)));
        // Values shifted by +1000 and the window with them: same picture.
        let shifted = variant(&src, dir.path(), "shifted.dcm", |obj| {
            set(obj, tags::RESCALE_INTERCEPT, VR::DS, "1000");
            set(obj, tags::WINDOW_CENTER, VR::DS, "3048");
        });
        assert_close(
            &render_gray(&shifted).unwrap().pixels,
            &render_gray(&src).unwrap().pixels,
            1,
        );
        // A window narrowed to the upper half: the darker half goes black.
        let narrow = variant(&src, dir.path(), "narrow.dcm", |obj| {
            set(obj, tags::WINDOW_CENTER, VR::DS, "3072");
            set(obj, tags::WINDOW_WIDTH, VR::DS, "2048");
        });
        let img = render_gray(&narrow).unwrap();
        assert_eq!(img.pixels[0], 0);
        assert!(img.pixels.iter().filter(|&&p| p == 0).count() > img.pixels.len() / 3);
    }

    #[test]
    fn signed_samples_are_sign_extended() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, Some((10, 100)));
        // 12-bit two's complement, -2000..=2000 left to right, window 0/4096.
        let dcm = variant(&src, dir.path(), "signed.dcm", |obj| {
            set(obj, tags::PIXEL_REPRESENTATION, VR::US, 1_u16);
            set(obj, tags::WINDOW_CENTER, VR::DS, "0");
            let values = (0..10 * 100)
                .map(|i| {
                    let v = -2000 + (i % 100) * 4000 / 99;
                    (v as i16 as u16) & 0x0fff
                })
                .collect();
            set_pixels_u16(obj, values);
        });
        let img = render_gray(&dcm).unwrap();
        let row = &img.pixels[..100];
        assert!(row[0] < 10 && row[99] > 245, "{} .. {}", row[0], row[99]);
        assert!(
            row.windows(2).all(|w| w[0] <= w[1]),
            "not monotonic: {row:?}"
        );
    }

    #[test]
    fn multi_frame_shows_the_first_frame() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, Some((40, 50)));
        let dcm = variant(&src, dir.path(), "frames.dcm", |obj| {
            let mut values: Vec<u16> = obj
                .get(tags::PIXEL_DATA)
                .unwrap()
                .to_multi_int::<u16>()
                .unwrap();
            values.extend(std::iter::repeat_n(4095, 40 * 50));
            set_pixels_u16(obj, values);
            set(obj, tags::NUMBER_OF_FRAMES, VR::IS, "2");
        });
        assert_eq!(render_gray(&dcm).unwrap(), render_gray(&src).unwrap());
    }

    #[test]
    fn rgb_is_rendered_as_luma() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, Some((2, 2)));
        let dcm = variant(&src, dir.path(), "rgb.dcm", |obj| {
            set(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
            set(obj, tags::SAMPLES_PER_PIXEL, VR::US, 3_u16);
            set(obj, tags::PLANAR_CONFIGURATION, VR::US, 0_u16);
            set(obj, tags::BITS_ALLOCATED, VR::US, 8_u16);
            set(obj, tags::BITS_STORED, VR::US, 8_u16);
            set(obj, tags::HIGH_BIT, VR::US, 7_u16);
            obj.remove_element(tags::WINDOW_CENTER);
            obj.remove_element(tags::WINDOW_WIDTH);
            let rgb: Vec<u8> = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::U8(rgb.into()),
            ));
        });
        assert_eq!(render_gray(&dcm).unwrap().pixels, vec![76, 150, 29, 255]);
    }

    #[test]
    fn jpeg_baseline_is_decoded() {
        use dicom_pixeldata::Transcode;
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, Some((120, 160)));
        let dcm = variant(&src, dir.path(), "jpeg.dcm", |obj| {
            // JPEG baseline narrows to 8 bits; the 12-bit window no longer fits.
            obj.remove_element(tags::WINDOW_CENTER);
            obj.remove_element(tags::WINDOW_WIDTH);
            let ts = TransferSyntaxRegistry
                .get("1.2.840.10008.1.2.4.50")
                .unwrap();
            obj.transcode(ts).unwrap();
        });
        let obj = dicom_object::open_file(&dcm).unwrap();
        assert_eq!(obj.meta().transfer_syntax(), "1.2.840.10008.1.2.4.50");
        let img = render_gray(&dcm).unwrap();
        assert_eq!((img.width, img.height), (160, 120));
        assert!(distinct(&img.pixels) > 50);
        assert!(img.pixels[0] < img.pixels[img.pixels.len() - 1]);
    }

    #[test]
    fn unsupported_transfer_syntax_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, None);
        let dcm = variant(&src, dir.path(), "j2k.dcm", |obj| {
            obj.update_meta(|meta| meta.transfer_syntax = "1.2.840.10008.1.2.4.90".to_string());
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new_fragments(vec![vec![0xff, 0x4f, 0xff, 0x51]]),
            ));
        });
        let err = render_png(&dcm, None).unwrap_err();
        assert!(
            matches!(&err, PreviewError::UnsupportedTransferSyntax { uid, .. } if uid == "1.2.840.10008.1.2.4.90"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("JPEG 2000"), "{message}");
    }

    #[test]
    fn unsupported_photometric_interpretation_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, None);
        let dcm = variant(&src, dir.path(), "palette.dcm", |obj| {
            set(
                obj,
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                "PALETTE COLOR",
            );
        });
        let err = render_png(&dcm, None).unwrap_err();
        assert!(matches!(
            err,
            PreviewError::UnsupportedPhotometricInterpretation(_)
        ));
        assert_eq!(
            err.to_string(),
            "unsupported photometric interpretation: PALETTE COLOR"
        );
    }

    #[test]
    fn broken_and_foreign_files_are_errors_without_patient_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, None);
        let corrupt = generate(dir.path(), "corrupt", ImageKind::Corrupt, None);
        let text = generate(dir.path(), "text", ImageKind::NotDicom, None);
        let no_pixels = variant(&src, dir.path(), "no-pixels.dcm", |obj| {
            obj.remove_element(tags::PIXEL_DATA);
        });
        let not_an_image = variant(&src, dir.path(), "sr.dcm", |obj| {
            for tag in [tags::PIXEL_DATA, tags::ROWS, tags::COLUMNS] {
                obj.remove_element(tag);
            }
        });
        let short = variant(&src, dir.path(), "short.dcm", |obj| {
            set_pixels_u16(obj, vec![0; 100]);
        });
        let empty = dir.path().join("empty.dcm");
        fs::write(&empty, b"").unwrap();

        let patient_name = dicom_object::open_file(&src)
            .unwrap()
            .get(tags::PATIENT_NAME)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let check = |path: &Path, expected: &dyn Fn(&PreviewError) -> bool| {
            let err = render_png(path, Some(64)).unwrap_err();
            assert!(expected(&err), "{}: {err:?}", path.display());
            let message = err.to_string();
            assert!(!message.contains(&*path.to_string_lossy()), "{message}");
            assert!(!message.contains("P_0000"), "{message}");
            assert!(!message.contains(&patient_name), "{message}");
            message
        };
        let message = check(&corrupt, &|e| matches!(e, PreviewError::Malformed(_)));
        assert_eq!(
            message,
            "malformed DICOM file: the data set could not be parsed (truncated or invalid element)"
        );
        let message = check(&text, &|e| matches!(e, PreviewError::NotDicom));
        assert_eq!(message, "not a DICOM file");
        check(&empty, &|e| matches!(e, PreviewError::NotDicom));
        check(&no_pixels, &|e| matches!(e, PreviewError::NoPixelData));
        check(&not_an_image, &|e| matches!(e, PreviewError::NoPixelData));
        let message = check(&short, &|e| matches!(e, PreviewError::Malformed(_)));
        assert!(message.contains("shorter"), "{message}");
        check(
            &dir.path().join("missing.dcm"),
            &|e| matches!(e, PreviewError::Io(io) if io.kind() == io::ErrorKind::NotFound),
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let src = generate(dir.path(), "site", ImageKind::IntraOral, None);
        let dcm = variant(&src, dir.path(), "huge.dcm", |obj| {
            set(obj, tags::ROWS, VR::US, 60000_u16);
            set(obj, tags::COLUMNS, VR::US, 60000_u16);
        });
        let err = render_png(&dcm, None).unwrap_err();
        assert!(matches!(err, PreviewError::TooLarge(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "too large to preview: 60000 × 60000 pixels; the limit is 64 megapixels"
        );
    }

    #[tokio::test]
    async fn cache_hits_return_the_same_bytes_without_rendering() {
        let dir = tempfile::tempdir().unwrap();
        let dcm = generate(dir.path(), "site", ImageKind::IntraOral, Some((90, 120)));
        let cache = dir.path().join("cache");
        let previews = Previews::new(cache.clone());
        let key = "../../etc/passwd\0 patient 17/0000_101.dcm";

        let first = previews.render(&dcm, key, Some(64)).await.unwrap();
        assert_eq!(previews.rendered(), 1);
        let files: Vec<PathBuf> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name.len(), 32 + "-64.png".len(), "{name}");
        assert!(name.ends_with("-64.png") && name[..32].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fs::read(&files[0]).unwrap(), first);
        let written = fs::metadata(&files[0]).unwrap().modified().unwrap();

        std::thread::sleep(Duration::from_millis(20));
        let second = previews.render(&dcm, key, Some(64)).await.unwrap();
        assert_eq!(second, first);
        assert_eq!(previews.rendered(), 1, "rendered again");
        assert_eq!(
            fs::metadata(&files[0]).unwrap().modified().unwrap(),
            written
        );

        assert_eq!(previews.cached(key, Some(64)).await, Some(first.clone()));
        assert_eq!(previews.cached(key, Some(65)).await, None);
        // Even with the DICOM file gone: the cache answers.
        fs::remove_file(&dcm).unwrap();
        assert_eq!(previews.render(&dcm, key, Some(64)).await.unwrap(), first);
        // Another size or key is another entry (and needs the file).
        let err = previews.render(&dcm, key, Some(32)).await.unwrap_err();
        assert!(matches!(err, PreviewError::Io(_)));
        // A clone shares the cache and the counter.
        let clone = previews.clone();
        assert_eq!(clone.render(&dcm, key, Some(64)).await.unwrap(), first);
        assert_eq!(clone.rendered(), 1);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_damaged_cache_entry_is_rendered_again() {
        let dir = tempfile::tempdir().unwrap();
        let dcm = generate(dir.path(), "site", ImageKind::IntraOral, None);
        let previews = Previews::new(dir.path().join("cache"));
        let good = previews.render(&dcm, "k", None).await.unwrap();
        let entry = previews.cache_dir().join(cache_file_name("k", None));
        fs::write(&entry, b"garbage").unwrap();
        assert_eq!(previews.render(&dcm, "k", None).await.unwrap(), good);
        assert_eq!(previews.rendered(), 2);
        assert_eq!(fs::read(&entry).unwrap(), good);
    }

    #[test]
    fn cache_names_depend_on_key_and_size_only() {
        assert_eq!(
            cache_file_name("a", Some(256)),
            cache_file_name("a", Some(256))
        );
        assert_ne!(
            cache_file_name("a", Some(256)),
            cache_file_name("b", Some(256))
        );
        assert_ne!(
            cache_file_name("a", Some(256)),
            cache_file_name("a", Some(128))
        );
        assert_ne!(cache_file_name("a", Some(256)), cache_file_name("a", None));
        assert!(cache_file_name("a", None).ends_with("-full.png"));
    }

    #[test]
    fn resize_averages_and_keeps_flat_areas_flat() {
        let flat = Gray {
            width: 97,
            height: 31,
            pixels: vec![137; 97 * 31],
        };
        let small = resize(&flat, 10, 3);
        assert!(small.pixels.iter().all(|&p| p == 137), "{:?}", small.pixels);
        // A 1-pixel checkerboard averages to mid-gray.
        let checker = Gray {
            width: 64,
            height: 64,
            pixels: (0..64 * 64)
                .map(|i| if (i % 64 + i / 64) % 2 == 0 { 0 } else { 255 })
                .collect(),
        };
        let small = resize(&checker, 8, 8);
        assert!(
            small.pixels.iter().all(|&p| p.abs_diff(128) <= 2),
            "{:?}",
            small.pixels
        );
    }

    /// `cargo test -p ferry --lib preview::tests::timing -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "timing report, not a check"]
    async fn timing() {
        let dir = tempfile::tempdir().unwrap();
        let dcm = generate(dir.path(), "site", ImageKind::IntraOral, Some((1024, 1280)));
        let size = fs::metadata(&dcm).unwrap().len();
        let previews = Previews::new(dir.path().join("cache"));
        for (label, max) in [("256", Some(256)), ("full", None)] {
            let mut best = Duration::MAX;
            let mut bytes = 0;
            for round in 0..5 {
                let start = Instant::now();
                let png = previews
                    .render(&dcm, &format!("t{round}"), max)
                    .await
                    .unwrap();
                best = best.min(start.elapsed());
                bytes = png.len();
            }
            let start = Instant::now();
            previews.render(&dcm, "t0", max).await.unwrap();
            let hit = start.elapsed();
            println!(
                "{size} B intra-oral 1280x1024 @ {label}: render {best:?} (best of 5), PNG {bytes} B, cache hit {hit:?}"
            );
        }
        // Where the time goes.
        let t = Instant::now();
        let gray = render_gray(&dcm).unwrap();
        let t_gray = t.elapsed();
        let t = Instant::now();
        let small = fit(gray.clone(), 256);
        let t_fit = t.elapsed();
        let t = Instant::now();
        encode_png(&small).unwrap();
        let t_small = t.elapsed();
        let t = Instant::now();
        encode_png(&gray).unwrap();
        let t_full = t.elapsed();
        println!(
            "read+decode+window {t_gray:?}, resize to 256 {t_fit:?}, PNG 256 {t_small:?}, PNG full {t_full:?}"
        );
    }
}
