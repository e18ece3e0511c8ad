//! ferry extractor: metadata of healthcare documents.
//!
//! Handles PDF, JPEG, PNG, TIFF, GIF, BMP, WebP and plain text. The format
//! is sniffed from the file's first bytes, never from its name. Everything
//! is read by ranged host reads (`fs.open`, `file.read`): a PDF costs its
//! last 4 KiB, its cross-reference and the handful of objects holding the
//! metadata; an image its header (TIFF: up to its first IFD, wherever it
//! is). No item costs more than `max-read-bytes` (default 8 MiB) of reads.
//!
//! # Metadata keys
//!
//! Every item:
//! - `doc.format`: `pdf`, `jpeg`, `png`, `tiff`, `gif`, `bmp`, `webp`, `text`
//! - `doc.content-type`: `application/pdf`, `image/jpeg`, `image/png`,
//!   `image/tiff`, `image/gif`, `image/bmp`, `image/webp`, `text/plain`
//! - `doc.size` (integer): the file's size in bytes
//!
//! PDF (those present; the text ones may be PHI):
//! - `pdf.version`: e.g. `1.7` (the header's, or the catalog's `/Version`
//!   when that is later)
//! - `pdf.pages` (integer): `/Count` of the page tree root
//! - `pdf.title`, `pdf.author`, `pdf.producer`: from the document
//!   information dictionary, else from XMP (`dc:title`, `dc:creator`,
//!   `pdf:Producer`); PDF text strings are decoded (PDFDocEncoding,
//!   UTF-16BE after its BOM, escapes, hex strings)
//! - `pdf.created`, `pdf.modified`: ISO 8601 (`2024-01-31T12:34:56+01:00`,
//!   or as much of it as the date gives) from `/CreationDate` and
//!   `/ModDate`, else from XMP (`xmp:CreateDate`, `xmp:ModifyDate`)
//!
//! Images: `image.width`, `image.height` (integers, pixels).
//!
//! Text (a file with no format magic, no NUL byte in its first 8 KiB):
//! - `text.encoding`: `utf-8` (ASCII included), `utf-16le`/`utf-16be`
//!   (after a BOM) or `unknown` (8-bit text that is not UTF-8)
//! - `text.lines` (integer): only when the whole file is at most 1 MiB
//!
//! # Errors
//!
//! All permanent, none naming a title, author or any other value of the
//! document (they may be PHI): byte offsets and what is wrong.
//! - `encrypted PDF: …` when the trailer has `/Encrypt` (ask the provider
//!   for an unencrypted copy);
//! - `corrupt PDF: …` (truncated, a cross-reference that is broken and a
//!   scan that cannot find the catalog either, a stream that lies about
//!   its `/Length`, dictionaries nested deeper than 32 levels, a page
//!   count that is not a sane integer, …);
//! - `too large: …` when finding the metadata would take more reads than
//!   the budget, or a stream inflates past its cap;
//! - `not a PDF: …` when the item's name or `content-type` attribute says
//!   PDF but its bytes do not; `unsupported format: …`; `empty file`.
//!
//! A host failure keeps its kind (`unavailable` is retryable).
//!
//! # Bounds
//!
//! Reads per item: `max-read-bytes`. PDF: `startxref` in the last 4 KiB;
//! 64 cross-reference sections (`/Prev` cycles are stopped); 1,000,000
//! objects; `/W` fields of at most 8 bytes; one object at most 1 MiB;
//! one stream at most 4 MiB raw and 8 MiB inflated, 32 MiB inflated per
//! file; 100,000 objects per object stream; 256 objects loaded;
//! reference chains of 16; nesting of 32; `/Count` at most 10,000,000.
//! Declared lengths and offsets are checked against the file size.
//!
//! Also a native library ([`extract_from`] over any [`RangeRead`]), for
//! tests and fuzzing.
use ferry_plugin_sdk::serde;
use ferry_plugin_sdk::types::{Metadata, StageError, Value};

pub mod pdf;
pub mod range;

pub use range::{RangeRead, Source};

/// Default read budget per item.
pub const DEFAULT_MAX_READ: u64 = 8 << 20;
/// Bytes sniffed at the start of a file.
const HEAD: u64 = 8192;
/// The most of a text file read to count lines and check the encoding.
const TEXT_CAP: u64 = 1 << 20;

/// The stage's `[config]`.
#[derive(Debug, Default, serde::Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Most bytes read of one file (default 8 MiB; 64 KiB to 256 MiB).
    pub max_read_bytes: Option<u64>,
}

impl Config {
    pub fn budget(&self) -> Result<u64, String> {
        match self.max_read_bytes {
            None => Ok(DEFAULT_MAX_READ),
            Some(n) if (64 << 10..=256 << 20).contains(&n) => Ok(n),
            Some(n) => Err(format!("invalid [config]: max-read-bytes = {n}, expected 65536 to 268435456")),
        }
    }
}

/// Why extraction failed. All but `Read` are permanent.
#[derive(Debug)]
pub enum ExtractError {
    /// `encrypted PDF: …`
    Encrypted(String),
    /// The bytes are not what they should be (the message says why).
    Content(String),
    /// The metadata lie further than the budget reaches.
    TooLarge(String),
    /// The host failed to read.
    Read(StageError),
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtractError::Encrypted(m) | ExtractError::Content(m) => f.write_str(m),
            ExtractError::TooLarge(m) => write!(f, "too large: {m}"),
            ExtractError::Read(e) => write!(f, "reading the file: {}", e.message),
        }
    }
}

impl std::error::Error for ExtractError {}

impl From<ExtractError> for StageError {
    fn from(e: ExtractError) -> Self {
        match e {
            ExtractError::Read(e) => e,
            e => ferry_plugin_sdk::permanent(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pdf,
    Jpeg,
    Png,
    Tiff,
    Gif,
    Bmp,
    Webp,
    Text,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Tiff => "tiff",
            Format::Gif => "gif",
            Format::Bmp => "bmp",
            Format::Webp => "webp",
            Format::Text => "text",
        }
    }
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pdf => "application/pdf",
            Format::Text => "text/plain",
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Tiff => "image/tiff",
            Format::Gif => "image/gif",
            Format::Bmp => "image/bmp",
            Format::Webp => "image/webp",
        }
    }
}

/// The format by magic bytes (`None`: none we know).
pub fn sniff(head: &[u8]) -> Option<Format> {
    let h = head;
    Some(if h.starts_with(b"%PDF-") || pdf::find(&h[..h.len().min(1024)], b"%PDF-").is_some() {
        Format::Pdf
    } else if h.starts_with(&[0xff, 0xd8, 0xff]) {
        Format::Jpeg
    } else if h.starts_with(b"\x89PNG\r\n\x1a\n") {
        Format::Png
    } else if h.starts_with(b"II*\0") || h.starts_with(b"MM\0*") {
        Format::Tiff
    } else if h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a") {
        Format::Gif
    } else if h.len() >= 18
        && h.starts_with(b"BM")
        && matches!(u32::from_le_bytes([h[14], h[15], h[16], h[17]]), 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
    {
        Format::Bmp
    } else if h.len() >= 12 && h.starts_with(b"RIFF") && &h[8..12] == b"WEBP" {
        Format::Webp
    } else if h.starts_with(&[0xfe, 0xff]) || h.starts_with(&[0xff, 0xfe]) || !h.contains(&0) {
        Format::Text
    } else {
        return None;
    })
}

/// What the item says it is, if PDF: `Some(reason)` for messages.
pub fn claims_pdf(name: &str, content_type: Option<&str>) -> Option<&'static str> {
    if content_type.is_some_and(|c| c.trim().eq_ignore_ascii_case("application/pdf")) {
        Some("its content type is application/pdf")
    } else if name.rsplit_once('.').is_some_and(|(_, ext)| ext.eq_ignore_ascii_case("pdf")) {
        Some("its name ends in .pdf")
    } else {
        None
    }
}

/// The metadata of the file behind `file`, reading at most `budget` bytes.
/// `claim`: why the item is supposed to be a PDF, if it is (see
/// [`claims_pdf`]).
pub fn extract_from<R: RangeRead>(file: R, budget: u64, claim: Option<&str>) -> Result<(Metadata, u64), ExtractError> {
    let mut src = Source::new(file, budget);
    let result = extract_source(&mut src, claim);
    result.map(|m| (m, src.fetched()))
}

fn extract_source<R: RangeRead>(src: &mut Source<R>, claim: Option<&str>) -> Result<Metadata, ExtractError> {
    let size = src.size();
    if size == 0 {
        return Err(ExtractError::Content("empty file (0 bytes)".into()));
    }
    let head = src.bytes(0, HEAD)?;
    let format = sniff(&head);
    if let (Some(why), false) = (claim, format == Some(Format::Pdf)) {
        return Err(ExtractError::Content(format!(
            "not a PDF: {why}, but its bytes do not start with %PDF- (they look like {})",
            format.map_or("no known format", Format::name)
        )));
    }
    let Some(format) = format else {
        let magic: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(ExtractError::Content(format!(
            "unsupported format: not PDF, JPEG, PNG, TIFF, GIF, BMP, WebP or text (first bytes {})",
            magic.join(" ")
        )));
    };
    let mut out: Metadata = vec![
        ("doc.format".into(), Value::Text(format.name().into())),
        ("doc.content-type".into(), Value::Text(format.content_type().into())),
        ("doc.size".into(), Value::Integer(size.min(i64::MAX as u64) as i64)),
    ];
    match format {
        Format::Pdf => out.extend(pdf::extract(src, &head)?),
        Format::Text => out.extend(text(src)?),
        image => out.extend(image_size(src, image)?),
    }
    Ok(out)
}

fn image_size<R: RangeRead>(src: &mut Source<R>, format: Format) -> Result<Metadata, ExtractError> {
    use imagesize::ImageType;
    let kind = match format {
        Format::Jpeg => ImageType::Jpeg,
        Format::Png => ImageType::Png,
        Format::Tiff => ImageType::Tiff,
        Format::Gif => ImageType::Gif,
        Format::Bmp => ImageType::Bmp,
        _ => ImageType::Webp,
    };
    // imagesize's per-format readers expect to start after the 12 bytes
    // its own sniffing consumed (some seek absolutely, WebP does not)
    let mut reader = range::SeekReader { source: src, pos: 12, error: None };
    let result = {
        let mut buffered = std::io::BufReader::with_capacity(4096, &mut reader);
        kind.reader_size(&mut buffered)
    };
    let name = format.name().to_uppercase();
    // a top-down BMP stores its height negated
    let result = result.map(|mut s| {
        if format == Format::Bmp && s.height > i32::MAX as usize && s.height <= u32::MAX as usize {
            s.height = (s.height as u32).wrapping_neg() as usize;
        }
        s
    });
    match (result, reader.error.take()) {
        (Ok(s), _) if s.width > 0 && s.height > 0 => Ok(vec![
            ("image.width".into(), Value::Integer(s.width.min(i64::MAX as usize) as i64)),
            ("image.height".into(), Value::Integer(s.height.min(i64::MAX as usize) as i64)),
        ]),
        (Ok(s), _) => {
            Err(ExtractError::Content(format!("corrupt {name}: it declares a {}×{} image", s.width, s.height)))
        }
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(ExtractError::Content(format!(
            "corrupt {name}: no image size found ({})",
            match e {
                imagesize::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "the file ends before it".to_string()
                }
                imagesize::ImageError::IoError(e) => e.to_string(),
                imagesize::ImageError::NotSupported => "a variant this stage does not read".to_string(),
                imagesize::ImageError::CorruptedImage => "the header is malformed".to_string(),
            }
        ))),
    }
}

fn text<R: RangeRead>(src: &mut Source<R>) -> Result<Metadata, ExtractError> {
    let size = src.size();
    let bytes = src.bytes(0, TEXT_CAP)?;
    let whole = bytes.len() as u64 == size;
    let (encoding, lines) = if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
        ("utf-16be", rest.chunks_exact(2).filter(|p| p == &[0, b'\n']).count())
    } else if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        ("utf-16le", rest.chunks_exact(2).filter(|p| p == &[b'\n', 0]).count())
    } else {
        let body = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(&bytes);
        let utf8 = match std::str::from_utf8(body) {
            Ok(_) => true,
            // cut inside a character at the cap
            Err(e) => !whole && e.error_len().is_none(),
        };
        (if utf8 { "utf-8" } else { "unknown" }, body.iter().filter(|&&b| b == b'\n').count())
    };
    let mut out: Metadata = vec![("text.encoding".into(), Value::Text(encoding.into()))];
    if whole {
        let unterminated = match encoding {
            "utf-16be" => bytes.len() > 2 && !bytes.ends_with(&[0, b'\n']),
            "utf-16le" => bytes.len() > 2 && !bytes.ends_with(&[b'\n', 0]),
            _ => !bytes.is_empty() && !bytes.ends_with(b"\n"),
        };
        out.push(("text.lines".into(), Value::Integer((lines + unterminated as usize) as i64)));
    }
    Ok(out)
}

/// The component's export side (wasm32 only, as in dicom-meta).
#[cfg(target_arch = "wasm32")]
mod guest {
    use ferry_plugin_sdk::types::{Item, Metadata, StageError};
    use ferry_plugin_sdk::{attribute, fs, permanent, Context, Extractor};

    use super::{claims_pdf, extract_from, Config, RangeRead};

    struct HostFile {
        file: fs::File,
        size: u64,
    }

    impl RangeRead for HostFile {
        fn size(&self) -> u64 {
            self.size
        }
        fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, StageError> {
            // the host caps one read at 4 MiB: loop until `len` or the end
            let mut out = Vec::new();
            while (out.len() as u32) < len {
                let at = offset + out.len() as u64;
                let want = (len - out.len() as u32).min(4 << 20);
                let got = self.file.read(at, want).context(format_args!("reading at byte {at}"))?;
                if got.is_empty() {
                    break;
                }
                out.extend_from_slice(&got);
            }
            Ok(out)
        }
    }

    struct DocMeta {
        budget: u64,
    }

    impl Extractor for DocMeta {
        type Config = Config;

        fn new(config: Config) -> Result<Self, StageError> {
            Ok(DocMeta { budget: config.budget().map_err(permanent)? })
        }

        fn extract(&mut self, item: Item) -> Result<Metadata, StageError> {
            let file = fs::open(&item.file).context("opening the item's file")?;
            let size = file.size();
            let content_type = attribute(&item, "content-type").or_else(|| attribute(&item, "document.content-type"));
            let claim = claims_pdf(&item.display_name, content_type).or_else(|| claims_pdf(&item.file.path, None));
            let (metadata, fetched) = extract_from(HostFile { file, size }, self.budget, claim)?;
            ferry_plugin_sdk::trace(&format!("{}: {} keys from {fetched} of {size} bytes", item.id, metadata.len()));
            Ok(metadata)
        }
    }

    ferry_plugin_sdk::extractor_plugin!(DocMeta);
}

#[cfg(test)]
mod tests;
