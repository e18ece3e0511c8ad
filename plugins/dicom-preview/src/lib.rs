//! # ferry renderer: DICOM → PNG previews, inside the sandbox
//!
//! `ferry serve` shows previews of stored images, and stored images come
//! from anywhere that can write to the store. Decoding them used to happen
//! in the host process, where one hostile file took the service down (a
//! stack overflow on thousands of nested sequences, 4 GiB reserved for a
//! PixelData length that lies, decoder allocations sized by a JPEG header).
//! As a `renderer` stage the same code runs in a disposable instance under
//! the stage's memory cap and deadline; and it is bounded by itself, so
//! that a hostile file gets a clear error rather than a trap:
//!
//! 1. [`dicom_guard::scan`] walks the file's structure first (lengths vs
//!    bytes left, nesting depth, element count, inflated size) and notes
//!    where the pixel data are — seeking past them, not reading them;
//! 2. `dicom-object` parses the header only, up to the pixel data;
//! 3. the frame's size (Rows × Columns × SamplesPerPixel × BitsAllocated)
//!    is checked against [`RenderLimits`] before anything is decoded
//!    (`too large: …` otherwise);
//! 4. only the **first frame's** bytes are read (native: one frame at the
//!    pixel data's offset; encapsulated: that frame's fragments, found
//!    through the Basic Offset Table, the one-fragment-per-frame rule or
//!    the JPEG end-of-image marker), so a 300 MB CBCT volume costs one
//!    slice; compressed data are checked against what the header says
//!    (JPEG frame header dimensions, RLE segment table, deflated frames
//!    inflated under a cap) before a decoder sizes anything by them;
//! 5. an in-memory object holding just that frame (NumberOfFrames 1) is
//!    decoded by `dicom-pixeldata` and turned into the picture.
//!
//! What it does to the pixels (unchanged from the host's renderer):
//! monochrome frames get the modality rescale (RescaleSlope/Intercept),
//! then a window: the file's first WindowCenter/WindowWidth (with its
//! VOILUTFunction: LINEAR, LINEAR_EXACT or SIGMOID) if it has a usable one,
//! otherwise — for more than 8 bits stored — the 0.5th to 99.5th percentile
//! of the frame's values (so burned-in markers and dead pixels do not
//! flatten the contrast), and for 8 bits stored the full stored range;
//! `MONOCHROME1` is inverted so that bone is always light. Colour (RGB,
//! YBR_FULL, JPEG-compressed YBR_FULL_422, 8-bit) becomes its luma (Rec.
//! 601). The result is scaled down (never up) with a triangle filter to fit
//! `max_size` × `max_size` and encoded as an 8-bit grayscale PNG (fast
//! deflate).
//!
//! Transfer syntaxes: Implicit/Explicit VR Little Endian, Explicit VR Big
//! Endian, Deflated Explicit VR Little Endian, Encapsulated Uncompressed,
//! Deflated Image Frame Compression, RLE Lossless and JPEG baseline /
//! extended / lossless (processes 1, 2 & 4, 14 and 14 SV1). JPEG 2000
//! (incl. HTJ2K), JPEG-LS, JPEG XL and the video syntaxes are refused with
//! [`RenderError::UnsupportedTransferSyntax`], which names them.
//!
//! Memory: a render peaks at about twice the decoded frame's bytes plus
//! one byte per pixel (plus the compressed frame for encapsulated data, and
//! the PNG), so the default budget of 64 MiB per frame fits a renderer
//! stage with `memory = "256MiB"`.
//!
//! Errors never contain patient data: no paths, no attribute values other
//! than transfer syntax UIDs and photometric interpretation names.
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

use dicom_dictionary_std::tags;
use dicom_guard::GuardError;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions, ReadError};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntax, TransferSyntaxIndex, TransferSyntaxRegistry};
use ferry_plugin_sdk::serde;

mod frame;
mod pixels;
#[cfg(test)]
mod tests;

use pixels::{encode_png, fit, to_gray, Gray};

/// What one render may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderLimits {
    /// Largest frame rendered, in pixels (Rows × Columns): config key
    /// `max_frame_pixels`, default 8192 × 8192 (a panoramic is about
    /// 3000 × 1500, a CBCT slice at most about 1100 × 1100).
    pub max_frame_pixels: u64,
    /// Largest frame rendered, in bytes: decoded (Rows × Columns ×
    /// SamplesPerPixel × BitsAllocated / 8), and also its compressed
    /// fragments: config key `max_frame_bytes`, default 64 MiB.
    pub max_frame_bytes: u64,
    /// What the structural scan accepts (nesting depth, element count,
    /// inflated size).
    pub guard: dicom_guard::Limits,
}

impl Default for RenderLimits {
    fn default() -> Self {
        RenderLimits { max_frame_pixels: 8192 * 8192, max_frame_bytes: 64 << 20, guard: dicom_guard::Limits::default() }
    }
}

/// Upper bounds of the config keys: a guest has at most 4 GiB of memory,
/// and Rows and Columns are 16-bit.
pub const MAX_FRAME_PIXELS_BOUND: u64 = 65535 * 65535;
pub const MAX_FRAME_BYTES_BOUND: u64 = 1 << 30;

/// The stage's `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
struct Config {
    max_frame_pixels: Option<u64>,
    max_frame_bytes: Option<u64>,
}

impl RenderLimits {
    /// The limits a stage's `config` JSON sets (missing keys: defaults).
    /// The error names the key and its bounds.
    pub fn from_config(json: &str) -> Result<RenderLimits, String> {
        let config: Config =
            ferry_plugin_sdk::serde_json::from_str(json).map_err(|e| format!("invalid [config]: {e}"))?;
        RenderLimits::from_table(config)
    }

    /// The limits of a parsed `config` table (what `configure` does after
    /// parsing it).
    fn from_table(config: Config) -> Result<RenderLimits, String> {
        let mut limits = RenderLimits::default();
        let bounded = |key: &str, value: Option<u64>, default: u64, max: u64| match value {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(format!("invalid [config]: {key} = {v} is out of range; it must be between 1 and {max}")),
        };
        limits.max_frame_pixels =
            bounded("max_frame_pixels", config.max_frame_pixels, limits.max_frame_pixels, MAX_FRAME_PIXELS_BOUND)?;
        limits.max_frame_bytes =
            bounded("max_frame_bytes", config.max_frame_bytes, limits.max_frame_bytes, MAX_FRAME_BYTES_BOUND)?;
        Ok(limits)
    }
}

/// A rendered preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    /// 8-bit grayscale PNG.
    pub png: Vec<u8>,
}

/// Why a preview could not be made. Messages name the problem, never the
/// file or any patient data.
#[derive(Debug)]
#[non_exhaustive]
pub enum RenderError {
    /// No `DICM` magic (with or without the 128-byte preamble).
    NotDicom(String),
    /// DICOM, but the file cannot be parsed, contradicts itself or is cut
    /// short (the structural scan's findings land here too).
    Malformed(String),
    UnsupportedTransferSyntax {
        uid: String,
        name: String,
    },
    UnsupportedPhotometricInterpretation(String),
    /// E.g. 32 bits allocated, or 16-bit colour.
    UnsupportedPixelFormat(String),
    /// Not an image (a structured report, a PDF, a key object…).
    NoPixelData,
    /// Over [`RenderLimits`] (or the scan's element or inflate limits).
    TooLarge(String),
    /// Reading the file failed.
    Io(io::Error),
    /// Encoding the PNG failed.
    Encode(String),
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::NotDicom(why) => write!(f, "not a DICOM file: {why}"),
            RenderError::Malformed(what) => write!(f, "malformed DICOM file: {what}"),
            RenderError::UnsupportedTransferSyntax { uid, name } => {
                write!(f, "unsupported transfer syntax: {name} ({uid})")
            }
            RenderError::UnsupportedPhotometricInterpretation(pi) => {
                write!(f, "unsupported photometric interpretation: {pi}")
            }
            RenderError::UnsupportedPixelFormat(what) => {
                write!(f, "unsupported pixel format: {what}")
            }
            RenderError::NoPixelData => f.write_str("the DICOM file has no pixel data"),
            RenderError::TooLarge(what) => write!(f, "too large: {what}"),
            RenderError::Io(e) => write!(f, "reading the DICOM file: {e}"),
            RenderError::Encode(e) => write!(f, "encoding the PNG: {e}"),
        }
    }
}

impl std::error::Error for RenderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RenderError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for RenderError {
    fn from(e: io::Error) -> Self {
        RenderError::Io(e)
    }
}

impl From<GuardError> for RenderError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::NotDicom(why) => RenderError::NotDicom(why),
            GuardError::UnsupportedTransferSyntax { uid } => {
                RenderError::UnsupportedTransferSyntax { uid, name: "unknown".to_string() }
            }
            GuardError::Io { source, .. } => RenderError::Io(source),
            e @ (GuardError::TooManyElements { .. } | GuardError::InflateLimit { .. }) => {
                RenderError::TooLarge(e.to_string())
            }
            e => RenderError::Malformed(e.to_string()),
        }
    }
}

pub(crate) fn malformed(what: &str) -> RenderError {
    RenderError::Malformed(what.to_string())
}

/// Renders the first frame of the DICOM file behind `reader` as an 8-bit
/// grayscale PNG that fits in `max_size` × `max_size` (`Some(0)` counts as
/// 1; never enlarged; `None`: full size).
pub fn render<R: Read + Seek>(reader: R, max_size: Option<u32>, limits: &RenderLimits) -> Result<Picture, RenderError> {
    let image = render_gray(reader, limits)?;
    let image = match max_size {
        Some(max) => fit(image, max.max(1)),
        None => image,
    };
    let png = encode_png(&image)?;
    Ok(Picture { width: image.width, height: image.height, png })
}

/// Scans, checks, reads and decodes the first frame into 8-bit gray.
pub(crate) fn render_gray<R: Read + Seek>(mut reader: R, limits: &RenderLimits) -> Result<Gray, RenderError> {
    let layout = dicom_guard::scan(&mut reader, &limits.guard)?;
    let mut header = open_header(&mut reader)?;
    let spec = frame::check_header(&header, limits)?;
    frame::load_first_frame(&mut reader, &layout, &spec, limits, &mut header)?;
    let decoded = header.decode_pixel_data_frame(0).map_err(|_| malformed("the pixel data could not be decoded"))?;
    to_gray(&decoded)
}

/// The file's header, parsed up to (not including) the pixel data. The
/// guard has vouched for its structure.
fn open_header<R: Read + Seek>(reader: &mut R) -> Result<DefaultDicomObject, RenderError> {
    let mut head = [0u8; 132];
    reader.seek(SeekFrom::Start(0))?;
    let got = read_full(reader, &mut head)?;
    let magic = if got == head.len() && &head[128..] == b"DICM" { 128 } else { 0 };
    reader.seek(SeekFrom::Start(magic))?;
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .read_until(tags::PIXEL_DATA)
        .from_reader(&mut *reader)
        .map_err(read_error)
}

fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// dicom-object's errors carry file names and parser tokens (values):
/// keep the kind only.
fn read_error(e: ReadError) -> RenderError {
    use dicom_object::meta::Error as Meta;
    match e {
        ReadError::OpenFile { source, .. } => RenderError::Io(source),
        ReadError::ReadFile { source, .. } | ReadError::ReadPreambleBytes { source, .. } => {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                malformed("the file ends before its header does")
            } else {
                RenderError::Io(source)
            }
        }
        ReadError::ParseMetaDataSet { source: Meta::NotDicom { .. } | Meta::ReadMagicCode { .. } } => {
            RenderError::NotDicom("no DICM magic".to_string())
        }
        ReadError::ParseMetaDataSet { .. } => malformed("the file meta information could not be parsed"),
        ReadError::ReadUnrecognizedTransferSyntax { uid, .. } => {
            RenderError::UnsupportedTransferSyntax { uid: printable(&uid, 64), name: "unknown".to_string() }
        }
        ReadError::ReadUnsupportedTransferSyntax { uid, name, .. }
        | ReadError::ReadUnsupportedTransferSyntaxWithSuggestion { uid, name, .. } => {
            RenderError::UnsupportedTransferSyntax { uid: uid.to_string(), name: name.to_string() }
        }
        _ => malformed("the data set could not be parsed (truncated or invalid element)"),
    }
}

/// At most `max` printable ASCII characters of `s` (values from files are
/// only ever shown through this).
pub(crate) fn printable(s: &str, max: usize) -> String {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

/// The registry's entry for the header's transfer syntax, or why not.
pub(crate) fn transfer_syntax(obj: &DefaultDicomObject) -> Result<&'static TransferSyntax, RenderError> {
    let uid = obj.meta().transfer_syntax();
    let ts = TransferSyntaxRegistry.get(uid).ok_or_else(|| RenderError::UnsupportedTransferSyntax {
        uid: printable(uid, 64),
        name: "unknown".to_string(),
    })?;
    if !ts.can_decode_all() {
        return Err(RenderError::UnsupportedTransferSyntax { uid: ts.uid().to_string(), name: ts.name().to_string() });
    }
    Ok(ts)
}

/// The component's export side (wasm32 only: natively, wit-bindgen's
/// export symbols cannot be linked into a shared library, and nothing
/// there would call them).
#[cfg(target_arch = "wasm32")]
mod guest {
    use ferry_plugin_sdk::types::{FileRef, StageError};
    use ferry_plugin_sdk::{permanent, Context, FileReader, Picture, Renderer};

    use super::{render, Config, RenderLimits};

    struct DicomPreview(RenderLimits);

    impl Renderer for DicomPreview {
        type Config = Config;

        fn new(config: Config) -> Result<Self, StageError> {
            Ok(DicomPreview(RenderLimits::from_table(config).map_err(permanent)?))
        }

        fn render(&mut self, file: FileRef, max_size: Option<u32>) -> Result<Picture, StageError> {
            let mut reader = FileReader::open(&file).context("opening the file to preview")?;
            let result = render(&mut reader, max_size, &self.0);
            match (result, reader.take_error()) {
                (Ok(p), _) => {
                    Ok(Picture { content_type: "image/png".to_string(), width: p.width, height: p.height, body: p.png })
                }
                // The host failed behind the decoder's I/O error: keep its
                // kind (`unavailable` is worth a retry, a bad file is not).
                (Err(_), Some(host)) => Err(host).context("reading the file to preview"),
                (Err(e), None) => Err(permanent(e.to_string())),
            }
        }
    }

    ferry_plugin_sdk::renderer_plugin!(DicomPreview);
}
