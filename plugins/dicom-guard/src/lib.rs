//! # dicom-guard: walk a DICOM file's structure without trusting it
//!
//! `dicom-object` (like most DICOM parsers) believes what a file says: it
//! recurses once per nested sequence (a few thousand levels overflow any
//! stack), and reserves or reads as many bytes as a length field declares
//! (0xFFFFFFF0 on a 1.3 KB file is a 4 GiB allocation). Files reach ferry
//! from imaging software that may be writing them while we read, and from
//! anything else that can put an object into a store, so every parser of
//! those bytes gets this scanner in front of it.
//!
//! [`scan`] walks the element *headers* of a Part 10 file — preamble and
//! `DICM` (or `DICM` alone), the group 0002 meta information, then the data
//! set in the transfer syntax the meta names — and seeks past every value,
//! so it costs a few reads however large the pixel data are. On the way it:
//!
//! - compares every declared length with the bytes left, in the file or in
//!   the enclosing defined-length sequence or item, *before* reading or
//!   skipping anything ([`GuardError::Truncated`] when the file end is the
//!   bound, [`GuardError::Invalid`] when a container is);
//! - accepts undefined lengths only where the standard does: sequences,
//!   items, encapsulated pixel data, and UN (PS3.5 §6.2.2);
//! - caps sequence nesting ([`Limits::max_depth`]), the number of element
//!   and item headers visited ([`Limits::max_elements`]: a file of a million
//!   empty items ends quickly) and, for Deflated Explicit VR Little Endian,
//!   the inflated size ([`Limits::max_inflated`]: a deflate bomb is refused
//!   after at most that many bytes, streamed through a fixed buffer);
//! - records where the top-level pixel data are ([`Layout`]), so that a
//!   renderer can read one frame instead of the whole file.
//!
//! The scanner is iterative (its own stack is a `Vec`), so no limit, however
//! high, can overflow the caller's stack.
//!
//! ## Agreeing with the parser behind it
//!
//! A guard is only as good as its agreement with the parser it protects:
//! where the two read the same bytes differently, the parser walks a
//! structure nobody checked. So the element grammar here is
//! `dicom-parser` 0.10's, and where the two could diverge the guard refuses:
//!
//! - explicit VR: the same 2-byte/4-byte length split, and an unknown VR
//!   code read as UN (4-byte length), as `dicom-encoding` does;
//! - any element of undefined length other than the pixel data is a
//!   sequence (the parser's rule), but only SQ, UN and unknown VRs may have
//!   one here; the content of an undefined-length UN is read in the data
//!   set's own transfer syntax, as the parser reads it;
//! - implicit VR has no VR on the wire and the parser looks SQ up in its
//!   dictionary; without one, the guard treats every defined-length value
//!   that starts with a group FFFE tag as a sequence and checks it as one
//!   (a real sequence with items always does; anything else starting with
//!   those bytes is refused rather than guessed about);
//! - delimiters where the standard puts none (an item delimiter inside a
//!   defined-length item, a sequence delimiter in a defined-length sequence,
//!   an item tag in a data set) are errors; the one oddity the parser
//!   tolerates silently, an item delimiter at the top level, is skipped.
//!
//! Errors name tags, offsets, byte counts and transfer syntax UIDs, never an
//! attribute value: messages end up in logs and ledgers, and values are
//! patient data.
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

mod source;
#[cfg(test)]
mod tests;

use source::{FileSource, Source, StreamSource};

/// What was being read, for an error message; only built when one is.
type What<'a> = &'a dyn Fn() -> String;

/// Bounds on what one file may make [`scan`] do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deepest sequence nesting accepted: a top-level sequence is level 1.
    /// Real files rarely exceed 5; structured reports reach perhaps 20.
    pub max_depth: u32,
    /// Element, item and delimiter headers visited, in total.
    pub max_elements: u64,
    /// Bytes a deflated data set may inflate to.
    pub max_inflated: u64,
}

impl Default for Limits {
    /// 64 levels, 1,000,000 headers, 256 MiB inflated.
    fn default() -> Self {
        Limits { max_depth: 64, max_elements: 1_000_000, max_inflated: 256 << 20 }
    }
}

/// Most fragments recorded for the top-level encapsulated pixel data; a
/// file with more is refused (a CBCT volume has a few hundred frames).
pub const MAX_FRAGMENTS: usize = 1_000_000;

/// Most entries read from a Basic Offset Table.
pub const MAX_OFFSET_TABLE: usize = 1_000_000;

/// Where things are in a file that passed [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The meta information's TransferSyntaxUID, trimmed (printable ASCII).
    pub transfer_syntax: String,
    /// Offset of the first data set byte (after the meta information).
    pub dataset_start: u64,
    /// The top-level PixelData (7FE0,0010), if any. For the deflated
    /// transfer syntaxes ([`Layout::is_deflated`]) its offsets count
    /// `dataset_start` plus bytes of the *inflated* data set, not file
    /// bytes: such a file can only be read from `dataset_start` on through
    /// an inflater.
    pub pixel_data: Option<PixelData>,
    /// Size of the file in bytes.
    pub file_size: u64,
}

impl Layout {
    /// Whether the data set is deflated (Deflated Explicit VR Little
    /// Endian, JPIP Referenced Deflate).
    pub fn is_deflated(&self) -> bool {
        encoding_of(&self.transfer_syntax).is_ok_and(|(_, deflated)| deflated)
    }
}

/// Where the top-level pixel data sit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PixelData {
    /// A defined-length value: `length` bytes from `offset`.
    Native { offset: u64, length: u64 },
    /// Undefined length: a Basic Offset Table item and fragment items.
    Encapsulated {
        /// Offset of the first item header (just after the element header).
        offset: u64,
        /// The Basic Offset Table's entries (often empty): for each frame,
        /// the offset of its first fragment's item header, counted from the
        /// first fragment's item header.
        offset_table: Vec<u32>,
        /// Every fragment after the offset table, in file order.
        fragments: Vec<Fragment>,
    },
}

/// One fragment of encapsulated pixel data: its bytes (after the 8-byte
/// item header) are `length` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub offset: u64,
    pub length: u64,
}

/// A DICOM tag, shown as `(gggg,eeee)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u16, pub u16);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:04X},{:04X})", self.0, self.1)
    }
}

pub const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Why a file was refused. Messages carry tags, offsets, byte counts and
/// transfer syntax UIDs only.
#[derive(Debug)]
#[non_exhaustive]
pub enum GuardError {
    /// No `DICM` magic where Part 10 puts it.
    NotDicom(String),
    /// The transfer syntax is not a standard one, so its encoding is unknown.
    UnsupportedTransferSyntax { uid: String },
    /// Something declared (a value, an item, a header, a delimiter) runs
    /// past the end of the file: `at` is where it would end, `size` the
    /// file size (for a deflated data set: positions in the inflated data,
    /// see [`Layout::pixel_data`]).
    Truncated { at: u64, size: u64, what: String },
    /// Sequences nested deeper than [`Limits::max_depth`].
    TooDeep { limit: u32, tag: Tag, offset: u64 },
    /// More headers than [`Limits::max_elements`].
    TooManyElements { limit: u64 },
    /// The deflated data set inflates (or declares values) past
    /// [`Limits::max_inflated`].
    InflateLimit { limit: u64 },
    /// The structure contradicts itself (lengths that overrun their
    /// container, delimiters out of place, undefined lengths where the
    /// standard allows none).
    Invalid { offset: u64, what: String },
    /// Reading failed (`offset`: where).
    Io { offset: u64, source: io::Error },
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::NotDicom(why) => write!(f, "not a DICOM file: {why}"),
            GuardError::UnsupportedTransferSyntax { uid } => write!(
                f,
                "unsupported transfer syntax {uid}: not a standard DICOM transfer syntax, so its encoding is unknown"
            ),
            GuardError::Truncated { at, size, what } => write!(f, "truncated at byte {at} of {size}: {what}"),
            GuardError::TooDeep { limit, tag, offset } => write!(
                f,
                "the data set nests sequences deeper than {limit} levels (sequence {tag} at byte {offset} would be level {}); refused rather than parsed",
                u64::from(*limit) + 1
            ),
            GuardError::TooManyElements { limit } => write!(
                f,
                "the data set has more than {limit} element and item headers; refused rather than walked to the end"
            ),
            GuardError::InflateLimit { limit } => write!(
                f,
                "the deflated data set inflates to more than {} ({limit} bytes), the limit; refused as a possible deflate bomb",
                human(*limit)
            ),
            GuardError::Invalid { offset, what } => write!(f, "invalid DICOM structure at byte {offset}: {what}"),
            GuardError::Io { offset, source } => write!(f, "reading at byte {offset}: {source}"),
        }
    }
}

impl std::error::Error for GuardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuardError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `256 MiB`, `1 KiB`, or plain bytes.
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Walks `reader` (a whole file, from offset 0) and returns its layout, or
/// why it must not be given to a parser. Reads headers only: values —
/// pixel data included — are skipped with `seek`, except the transfer
/// syntax UID and the Basic Offset Table of the top-level pixel data.
/// Reads are exact (no read-ahead), so give it a buffered reader if each
/// `read` is expensive (ferry's `FileReader` is).
pub fn scan<R: Read + Seek>(mut reader: R, limits: &Limits) -> Result<Layout, GuardError> {
    let size = reader.seek(SeekFrom::End(0)).map_err(|source| GuardError::Io { offset: 0, source })?;
    reader.seek(SeekFrom::Start(0)).map_err(|source| GuardError::Io { offset: 0, source })?;
    let mut file = FileSource::new(&mut reader, size);
    let mut elements = 0u64;
    check_magic(&mut file)?;
    let transfer_syntax = read_meta(&mut file, limits, &mut elements)?;
    let dataset_start = file.pos();
    let (encoding, deflated) = encoding_of(&transfer_syntax)?;
    let pixel_data = if deflated {
        let stream = StreamSource::new(file.into_inner(), dataset_start, limits.max_inflated);
        let bound =
            Bound::Inflated { end: dataset_start.saturating_add(limits.max_inflated), limit: limits.max_inflated };
        Scanner::new(stream, encoding, limits, elements, bound).run()?
    } else {
        Scanner::new(file, encoding, limits, elements, Bound::File(size)).run()?
    };
    Ok(Layout { transfer_syntax, dataset_start, pixel_data, file_size: size })
}

/// Where the 128-byte preamble ends and `DICM` sits.
const PREAMBLE: usize = 128;

/// `DICM` at 128 (after the preamble) or, tolerated, at 0; leaves the
/// source just after it.
fn check_magic<R: Read + Seek>(src: &mut FileSource<R>) -> Result<(), GuardError> {
    let mut head = [0u8; PREAMBLE + 4];
    let got = src.read_up_to(&mut head)?;
    if got == head.len() && &head[PREAMBLE..] == b"DICM" {
        Ok(())
    } else if got >= 4 && &head[..4] == b"DICM" {
        src.seek_to(4)
    } else if got < head.len() {
        Err(GuardError::NotDicom(format!("only {got} bytes, too short for a preamble and DICM magic")))
    } else {
        Err(GuardError::NotDicom(format!("no DICM magic at offset {PREAMBLE}")))
    }
}

/// The value of (0002,0010), read like `dicom-object` 0.10 reads the meta
/// group: (0002,0000) with a 4-byte value first, then elements (of any
/// group) until that many bytes were consumed.
fn read_meta<S: Source>(src: &mut S, limits: &Limits, elements: &mut u64) -> Result<String, GuardError> {
    let bound = Bound::File(src.end().unwrap_or(u64::MAX));
    let start = src.pos();
    let Header { tag, vr, len, .. } = read_header(src, Encoding::ExplicitLe, bound, &|| {
        "the file meta information's first element header".to_string()
    })?;
    count(elements, limits)?;
    if tag != Tag(0x0002, 0x0000) || len != 4 {
        return Err(GuardError::Invalid {
            offset: start,
            what: format!(
                "the file meta information starts with {tag} {} of {} bytes, not (0002,0000) FileMetaInformationGroupLength of 4",
                vr_name(vr),
                len_text(len)
            ),
        });
    }
    let mut value = [0u8; 4];
    let what = || "the FileMetaInformationGroupLength value".to_string();
    need(src.pos(), 4, bound, &what)?;
    src.read_exact(&mut value, &what)?;
    let group_length = u32::from_le_bytes(value);

    let mut consumed: u32 = 0;
    let mut transfer_syntax = None;
    while consumed < group_length {
        let at = src.pos();
        let Header { tag, len, size, .. } =
            read_header(src, Encoding::ExplicitLe, bound, &|| "a file meta element header".to_string())?;
        count(elements, limits)?;
        if len == UNDEFINED {
            return Err(GuardError::Invalid {
                offset: at,
                what: format!("file meta element {tag} has an undefined length"),
            });
        }
        let what = || format!("file meta element {tag} at byte {at} declares {len} bytes");
        need(src.pos(), u64::from(len), bound, &what)?;
        if tag == Tag(0x0002, 0x0010) {
            if len > 1024 {
                return Err(GuardError::Invalid {
                    offset: at,
                    what: format!("TransferSyntaxUID (0002,0010) declares {len} bytes; a UID has at most 64"),
                });
            }
            let mut uid = vec![0u8; len as usize];
            src.read_exact(&mut uid, &what)?;
            transfer_syntax = Some(printable_uid(&uid));
        } else {
            src.skip(u64::from(len), &what)?;
        }
        consumed = consumed.saturating_add(size as u32).saturating_add(len);
    }
    transfer_syntax.filter(|ts| !ts.is_empty()).ok_or_else(|| GuardError::Invalid {
        offset: start,
        what: "the file meta information has no TransferSyntaxUID (0002,0010)".to_string(),
    })
}

/// A UID from the file, trimmed of padding, non-printable bytes replaced
/// by `?`, at most 64 characters (UIDs are not patient data, but the bytes
/// are still untrusted).
fn printable_uid(bytes: &[u8]) -> String {
    let text: String =
        bytes.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' || b == 0 { b as char } else { '?' }).collect();
    text.trim_matches(|c: char| c == '\0' || c == ' ').chars().take(64).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
}

/// The data set encoding of a transfer syntax, and whether it is deflated.
fn encoding_of(uid: &str) -> Result<(Encoding, bool), GuardError> {
    Ok(match uid {
        "1.2.840.10008.1.2" => (Encoding::ImplicitLe, false),
        "1.2.840.10008.1.2.2" => (Encoding::ExplicitBe, false),
        // Deflated Explicit VR Little Endian; JPIP Referenced Deflate.
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => (Encoding::ExplicitLe, true),
        // Explicit VR Little Endian and every encapsulated syntax (JPEG,
        // JPEG-LS, JPEG 2000, HTJ2K, JPEG XL, RLE, MPEG, HEVC, deflated
        // image frames, ...): the data set itself is explicit VR LE.
        uid if uid.starts_with("1.2.840.10008.1.2.") => (Encoding::ExplicitLe, false),
        uid => return Err(GuardError::UnsupportedTransferSyntax { uid: uid.to_string() }),
    })
}

fn count(elements: &mut u64, limits: &Limits) -> Result<(), GuardError> {
    *elements += 1;
    if *elements > limits.max_elements {
        return Err(GuardError::TooManyElements { limit: limits.max_elements });
    }
    Ok(())
}

/// What ends the bytes available to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// The end of the file.
    File(u64),
    /// `dataset_start + limit` of a deflated data set (`limit`:
    /// [`Limits::max_inflated`]).
    Inflated { end: u64, limit: u64 },
    /// A defined-length sequence or item.
    Container { end: u64, item: bool, tag: Tag, start: u64 },
}

impl Bound {
    fn end(self) -> u64 {
        match self {
            Bound::File(end) | Bound::Inflated { end, .. } | Bound::Container { end, .. } => end,
        }
    }

    /// `self`, or the container ending at `end` if that is tighter (or
    /// as tight as another container: the innermost is named).
    fn within(self, end: u64, item: bool, tag: Tag, start: u64) -> Bound {
        let tighter = match self {
            Bound::Container { .. } => end <= self.end(),
            _ => end < self.end(),
        };
        if tighter {
            Bound::Container { end, item, tag, start }
        } else {
            self
        }
    }
}

/// Checks that `len` bytes from `at` fit within `bound`; `what` says what
/// declared them.
fn need(at: u64, len: u64, bound: Bound, what: What) -> Result<(), GuardError> {
    let end = at.saturating_add(len);
    if end <= bound.end() {
        return Ok(());
    }
    Err(match bound {
        Bound::File(size) => GuardError::Truncated { at: end, size, what: what() },
        Bound::Inflated { limit, .. } => GuardError::InflateLimit { limit },
        Bound::Container { end: container_end, item, tag, start } => GuardError::Invalid {
            offset: at,
            what: format!(
                "{}, past the end of the enclosing {} at byte {container_end} ({} {tag} opened at byte {start})",
                what(),
                if item { "item" } else { "sequence" },
                if item { "an item of sequence" } else { "sequence" },
            ),
        },
    })
}

fn vr_name(vr: Option<[u8; 2]>) -> String {
    match vr {
        Some(code) if code.iter().all(|b| b.is_ascii_uppercase()) => {
            format!("VR {}{}", code[0] as char, code[1] as char)
        }
        Some(code) => format!("VR bytes {:02X}{:02X}", code[0], code[1]),
        None => "(implicit VR)".to_string(),
    }
}

fn len_text(len: u32) -> String {
    if len == UNDEFINED {
        "undefined length".to_string()
    } else {
        len.to_string()
    }
}

/// VRs with a 2-byte length in explicit VR (PS3.5 Table 7.1-2), exactly
/// as `dicom-encoding` lists them; everything else, unknown codes
/// included, has 2 reserved bytes and a 4-byte length.
pub fn short_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Bytes per value of the VRs `dicom-parser` reads as arrays of binary
/// numbers (`read_value_us`, `_ul`, `_od`, …).
fn value_size(vr: [u8; 2]) -> Option<u64> {
    match &vr {
        b"US" | b"SS" | b"OW" => Some(2),
        b"UL" | b"SL" | b"FL" | b"OF" | b"OL" | b"AT" => Some(4),
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => Some(8),
        _ => None,
    }
}

/// The VR the parser gives `tag` in implicit VR: the standard
/// dictionary's (relaxed, as `dicom-encoding` does), none for unknown tags.
fn implicit_vr(tag: Tag) -> Option<[u8; 2]> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(dicom_core::Tag(tag.0, tag.1))?;
    let code = entry.vr().relaxed().to_bytes();
    Some(code)
}

/// VR codes `dicom-core` knows; others are read as UN.
fn known_vr(vr: [u8; 2]) -> bool {
    short_length(vr)
        || matches!(
            &vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
        )
}

fn u16_of(enc: Encoding, b: [u8; 2]) -> u16 {
    match enc {
        Encoding::ExplicitBe => u16::from_be_bytes(b),
        _ => u16::from_le_bytes(b),
    }
}

fn u32_of(enc: Encoding, b: [u8; 4]) -> u32 {
    match enc {
        Encoding::ExplicitBe => u32::from_be_bytes(b),
        _ => u32::from_le_bytes(b),
    }
}

/// An element, item or delimiter header.
#[derive(Debug, Clone, Copy)]
struct Header {
    tag: Tag,
    /// The VR code, in explicit VR (never for group FFFE).
    vr: Option<[u8; 2]>,
    len: u32,
    /// Bytes the header took: 8 or 12.
    size: u64,
}

/// Reads one header after checking it fits in `bound`. Group FFFE tags
/// (items, delimiters) have no VR in any encoding.
fn read_header<S: Source>(src: &mut S, enc: Encoding, bound: Bound, what: What) -> Result<Header, GuardError> {
    let at = src.pos();
    need(at, 8, bound, &|| format!("{} at byte {at} needs 8 bytes", what()))?;
    let mut b = [0u8; 8];
    src.read_exact(&mut b, &|| format!("{} at byte {at}", what()))?;
    let tag = Tag(u16_of(enc, [b[0], b[1]]), u16_of(enc, [b[2], b[3]]));
    if tag.0 == 0xFFFE || enc == Encoding::ImplicitLe {
        return Ok(Header { tag, vr: None, len: u32_of(enc, [b[4], b[5], b[6], b[7]]), size: 8 });
    }
    let vr = [b[4], b[5]];
    if short_length(vr) {
        return Ok(Header { tag, vr: Some(vr), len: u32::from(u16_of(enc, [b[6], b[7]])), size: 8 });
    }
    need(at, 12, bound, &|| format!("{} at byte {at} ({tag} {}) needs 12 bytes", what(), vr_name(Some(vr))))?;
    let mut l = [0u8; 4];
    src.read_exact(&mut l, &|| format!("{} at byte {at}", what()))?;
    Ok(Header { tag, vr: Some(vr), len: u32_of(enc, l), size: 12 })
}

/// One open container of the walk.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// A data set: the top level, or an item of a sequence.
    DataSet { root: bool, start: u64, end: Option<u64>, bound: Bound, seq: Tag },
    /// A sequence, expecting items or its delimiter.
    Sequence { tag: Tag, start: u64, end: Option<u64>, bound: Bound },
    /// Encapsulated pixel data, expecting the offset table, fragments or the
    /// delimiter. `record`: the top-level pixel data, kept in the layout.
    Pixels { tag: Tag, start: u64, bound: Bound, items: u64, record: bool },
}

struct Scanner<'l, S: Source> {
    src: S,
    enc: Encoding,
    limits: &'l Limits,
    elements: u64,
    stack: Vec<Frame>,
    depth: u32,
    pixel_data: Option<PixelData>,
}

impl<'l, S: Source> Scanner<'l, S> {
    fn new(src: S, enc: Encoding, limits: &'l Limits, elements: u64, root: Bound) -> Self {
        let start = src.pos();
        Scanner {
            src,
            enc,
            limits,
            elements,
            stack: vec![Frame::DataSet { root: true, start, end: None, bound: root, seq: Tag(0, 0) }],
            depth: 0,
            pixel_data: None,
        }
    }

    fn count(&mut self) -> Result<(), GuardError> {
        count(&mut self.elements, self.limits)
    }

    fn header(&mut self, bound: Bound, what: What) -> Result<Header, GuardError> {
        let header = read_header(&mut self.src, self.enc, bound, what)?;
        self.count()?;
        Ok(header)
    }

    fn eof(&mut self) -> Result<bool, GuardError> {
        self.src.at_eof()
    }

    fn truncated_here(&mut self, what: String) -> GuardError {
        let at = self.src.pos();
        GuardError::Truncated { at, size: self.src.end().unwrap_or(at), what }
    }

    fn open_sequence(&mut self, tag: Tag, at: u64, end: Option<u64>, bound: Bound) -> Result<(), GuardError> {
        if self.depth >= self.limits.max_depth {
            return Err(GuardError::TooDeep { limit: self.limits.max_depth, tag, offset: at });
        }
        self.depth += 1;
        let bound = match end {
            Some(end) => bound.within(end, false, tag, at),
            None => bound,
        };
        self.stack.push(Frame::Sequence { tag, start: at, end, bound });
        Ok(())
    }

    fn close(&mut self) {
        if let Some(Frame::Sequence { .. }) = self.stack.pop() {
            self.depth -= 1;
        }
    }

    fn run(mut self) -> Result<Option<PixelData>, GuardError> {
        loop {
            let pos = self.src.pos();
            let frame = *self.stack.last().expect("the root frame is never popped");
            match frame {
                Frame::DataSet { end: Some(end), .. } if pos == end => self.close(),
                Frame::DataSet { root: true, .. } if self.eof()? => return Ok(self.pixel_data),
                Frame::DataSet { root: false, end: None, start, seq, .. } if self.eof()? => {
                    return Err(self.truncated_here(format!(
                        "an item of sequence {seq} opened at byte {start} has no item delimiter (FFFE,E00D) before the end"
                    )))
                }
                Frame::DataSet { root, end, bound, .. } => self.element(root, end.is_some(), bound)?,
                Frame::Sequence { end: Some(end), .. } if pos == end => self.close(),
                Frame::Sequence { end: None, tag, start, .. } if self.eof()? => {
                    return Err(self.truncated_here(format!(
                        "sequence {tag} opened at byte {start} has no sequence delimiter (FFFE,E0DD) before the end"
                    )))
                }
                Frame::Sequence { tag, end, bound, .. } => self.item(tag, end.is_some(), bound)?,
                Frame::Pixels { tag, start, .. } if self.eof()? => {
                    return Err(self.truncated_here(format!(
                        "the encapsulated pixel data {tag} at byte {start} have no sequence delimiter (FFFE,E0DD) before the end"
                    )))
                }
                Frame::Pixels { tag, start, bound, items, record } => self.fragment(tag, start, bound, items, record)?,
            }
        }
    }

    /// An element header in a data set, and what it opens or skips.
    fn element(&mut self, root: bool, defined_item: bool, bound: Bound) -> Result<(), GuardError> {
        let at = self.src.pos();
        let Header { tag, vr, len, .. } = self.header(bound, &|| "an element header".to_string())?;
        let value_at = self.src.pos();

        if tag.0 == 0xFFFE {
            return match tag {
                ITEM_END if root => Ok(()), // tolerated (and ignored) by the parser too
                ITEM_END if !defined_item => {
                    self.stack.pop();
                    Ok(())
                }
                ITEM_END => Err(GuardError::Invalid {
                    offset: at,
                    what: "an item delimiter (FFFE,E00D) inside an item of defined length".to_string(),
                }),
                tag => {
                    Err(GuardError::Invalid { offset: at, what: format!("{tag} where a data element was expected") })
                }
            };
        }

        let explicit_sq = vr == Some(*b"SQ");
        if len == UNDEFINED {
            if !explicit_sq && tag == PIXEL_DATA {
                let record = root && self.pixel_data.is_none();
                if record {
                    self.pixel_data = Some(PixelData::Encapsulated {
                        offset: value_at,
                        offset_table: Vec::new(),
                        fragments: Vec::new(),
                    });
                }
                self.stack.push(Frame::Pixels { tag, start: at, bound, items: 0, record });
                return Ok(());
            }
            let allowed = match vr {
                None => true, // implicit VR: the parser makes any such element a sequence
                Some(code) => code == *b"SQ" || code == *b"UN" || !known_vr(code),
            };
            if !allowed {
                return Err(GuardError::Invalid {
                    offset: at,
                    what: format!(
                        "element {tag} has {} and an undefined length; only SQ, UN, items and encapsulated pixel data may",
                        vr_name(vr)
                    ),
                });
            }
            return self.open_sequence(tag, at, None, bound);
        }

        let len64 = u64::from(len);
        let what = || {
            if tag == PIXEL_DATA && root {
                format!("the pixel data {tag} at byte {value_at} declares {len} bytes")
            } else if explicit_sq {
                format!("sequence {tag} at byte {at} declares {len} bytes")
            } else {
                format!("element {tag} at byte {at} declares {len} bytes")
            }
        };
        need(value_at, len64, bound, &what)?;
        if explicit_sq {
            return self.open_sequence(tag, at, Some(value_at + len64), bound);
        }
        if tag == PIXEL_DATA && root && self.pixel_data.is_none() {
            self.pixel_data = Some(PixelData::Native { offset: value_at, length: len64 });
        }
        // Implicit VR: the parser knows SQ from its dictionary; a value
        // that starts like an item (or a delimiter) is checked as a
        // sequence. Pixel and overlay data are always OW there.
        let forced_ow = tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000);
        if vr.is_none() && len > 0 && !forced_ow {
            if let Some(first) = self.src.peek2(bound.end())? {
                if first == [0xFE, 0xFF] {
                    return self.open_sequence(tag, at, Some(value_at + len64), bound);
                }
            }
        }
        // The parser reads binary numbers as `len / size` values but counts
        // `len` bytes: with a remainder it loses its place, and every later
        // header (and the allocation it declares) is garbage.
        let read_as = vr.or_else(|| if forced_ow { Some(*b"OW") } else { implicit_vr(tag) });
        // (Odd pixel data that end the file are tolerated: nothing follows
        // them to be misread, and sloppy writers produce them.)
        let ends_file = root && tag == PIXEL_DATA && value_at + len64 == bound.end();
        if let Some(size) = read_as.and_then(value_size).filter(|_| !ends_file) {
            if len64 % size != 0 {
                return Err(GuardError::Invalid {
                    offset: at,
                    what: format!(
                        "element {tag} is read as {} with {len} bytes, not a multiple of its {size}-byte values",
                        vr_name(read_as)
                    ),
                });
            }
        }
        self.src.skip(len64, &what)
    }

    /// An item header (or the delimiter) in a sequence.
    fn item(&mut self, seq: Tag, defined: bool, bound: Bound) -> Result<(), GuardError> {
        let at = self.src.pos();
        let Header { tag, len, .. } = self.header(bound, &|| format!("an item header of sequence {seq}"))?;
        match tag {
            ITEM if len == UNDEFINED => {
                self.stack.push(Frame::DataSet { root: false, start: at, end: None, bound, seq });
                Ok(())
            }
            ITEM => {
                let value_at = self.src.pos();
                let len = u64::from(len);
                need(value_at, len, bound, &|| format!("an item of sequence {seq} at byte {at} declares {len} bytes"))?;
                let end = value_at + len;
                self.stack.push(Frame::DataSet {
                    root: false,
                    start: at,
                    end: Some(end),
                    bound: bound.within(end, true, seq, at),
                    seq,
                });
                Ok(())
            }
            SEQUENCE_END if !defined => {
                self.close();
                Ok(())
            }
            SEQUENCE_END => Err(GuardError::Invalid {
                offset: at,
                what: format!("a sequence delimiter (FFFE,E0DD) in sequence {seq}, which has a defined length"),
            }),
            tag => Err(GuardError::Invalid {
                offset: at,
                what: format!("{tag} in sequence {seq} where an item (FFFE,E000) or its end was expected"),
            }),
        }
    }

    /// The offset table, a fragment, or the delimiter of encapsulated pixel data.
    fn fragment(&mut self, pixels: Tag, start: u64, bound: Bound, items: u64, record: bool) -> Result<(), GuardError> {
        let at = self.src.pos();
        let Header { tag, len, .. } =
            self.header(bound, &|| format!("an item header of the encapsulated pixel data {pixels} at byte {start}"))?;
        match tag {
            ITEM if len == UNDEFINED => Err(GuardError::Invalid {
                offset: at,
                what: format!("a fragment of the encapsulated pixel data {pixels} has an undefined length"),
            }),
            ITEM => {
                let value_at = self.src.pos();
                let len64 = u64::from(len);
                let what = || {
                    if items == 0 {
                        format!("the basic offset table of the pixel data {pixels} at byte {at} declares {len} bytes")
                    } else {
                        format!("pixel data fragment {items} at byte {at} declares {len} bytes")
                    }
                };
                need(value_at, len64, bound, &what)?;
                if let Some(Frame::Pixels { items, .. }) = self.stack.last_mut() {
                    *items += 1;
                }
                if items == 0 {
                    if len % 4 != 0 {
                        return Err(GuardError::Invalid {
                            offset: at,
                            what: format!("the basic offset table of the pixel data {pixels} has {len} bytes, not a multiple of 4"),
                        });
                    }
                    if len as usize / 4 > MAX_OFFSET_TABLE {
                        return Err(GuardError::Invalid {
                            offset: at,
                            what: format!(
                                "the basic offset table of the pixel data {pixels} lists {} frames, more than the limit of {MAX_OFFSET_TABLE}",
                                len / 4
                            ),
                        });
                    }
                    if record {
                        let mut bytes = vec![0u8; len as usize];
                        self.src.read_exact(&mut bytes, &what)?;
                        let enc = self.enc;
                        let table: Vec<u32> =
                            bytes.chunks_exact(4).map(|b| u32_of(enc, [b[0], b[1], b[2], b[3]])).collect();
                        if let Some(PixelData::Encapsulated { offset_table, .. }) = &mut self.pixel_data {
                            *offset_table = table;
                        }
                        return Ok(());
                    }
                } else if record {
                    if let Some(PixelData::Encapsulated { fragments, .. }) = &mut self.pixel_data {
                        if fragments.len() >= MAX_FRAGMENTS {
                            return Err(GuardError::Invalid {
                                offset: at,
                                what: format!(
                                    "the pixel data {pixels} have more than {MAX_FRAGMENTS} fragments, the limit"
                                ),
                            });
                        }
                        fragments.push(Fragment { offset: value_at, length: len64 });
                    }
                }
                self.src.skip(len64, &what)
            }
            SEQUENCE_END => {
                self.stack.pop();
                Ok(())
            }
            tag => Err(GuardError::Invalid {
                offset: at,
                what: format!(
                    "{tag} in the encapsulated pixel data {pixels} where a fragment item (FFFE,E000) or the sequence delimiter was expected"
                ),
            }),
        }
    }
}
