//! ferry extractor: DICOM header metadata.
//!
//! Reads the item's file through ranged host reads and parses the data set
//! only up to the pixel data, so a 300 MB image costs a few kilobytes. It
//! emits the well-known keys documented on `types.metadata` (those present
//! in the file) plus `transfer-syntax`.
//!
//! Before `dicom-object` sees a byte, [`dicom_guard::scan`] walks the whole
//! file's structure (seeking past values, so the pixel data are not
//! fetched): `dicom-object` recurses once per nested sequence and believes
//! every declared length, and this stage is what decides whether a file
//! gets stored. So a file that nests sequences too deep, declares more than
//! it holds, or is cut short — typically inside its pixel data, because
//! the imaging software is still writing it — fails here, with the byte
//! counts, instead of being uploaded as a broken image.
//!
//! Also a native library (`extract_from`), for the fuzz harness.
use std::io::{Read, Seek, SeekFrom};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_guard::{GuardError, Layout, Limits};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use ferry_plugin_sdk::serde;
use ferry_plugin_sdk::types::{Metadata, Value};

/// The stage's `[config]`: nothing to configure (yet), unknown keys refused.
#[derive(Debug, Default, serde::Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
struct Config {}

/// Where the file's preamble ends and the `DICM` magic sits.
const PREAMBLE: usize = 128;

/// Checks the structure of the whole DICOM file behind `reader` with
/// [`dicom_guard::scan`] (default [`Limits`]), then parses it up to (not
/// including) the pixel data and extracts its metadata.
///
/// Content errors are permanent; an I/O error the host caused is returned
/// as the host error, so the caller can tell a retry from a bad file.
pub fn extract_from<R: Read + Seek>(mut reader: R) -> Result<Metadata, ExtractError> {
    check(&mut reader, &Limits::default())?;
    reader.seek(SeekFrom::Start(0)).map_err(ExtractError::Io)?;
    let mut head = [0u8; PREAMBLE + 4];
    let got = read_full(&mut reader, &mut head).map_err(ExtractError::Io)?;
    let preamble = if got == head.len() && &head[PREAMBLE..] == b"DICM" {
        true
    } else if got >= 4 && &head[..4] == b"DICM" {
        // No preamble (seen in the wild, not in Sidexis): tolerated.
        false
    } else {
        return Err(ExtractError::Content(if got < head.len() {
            format!("not a DICOM file: only {got} bytes, too short for a preamble and DICM magic")
        } else {
            format!("not a DICOM file: no DICM magic at offset {PREAMBLE}")
        }));
    };
    let already = if preamble { &head[PREAMBLE..got] } else { &head[..got] };
    let rest = std::io::Cursor::new(already.to_vec()).chain(reader);
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .read_until(tags::PIXEL_DATA)
        .from_reader(rest)
        .map_err(|e| ExtractError::Content(format!("corrupt DICOM file: {}", error_chain(&e))))?;
    Ok(metadata_of(&obj))
}

/// Runs the guard over the file: its verdict as an [`ExtractError`].
///
/// Structural refusals say `corrupt DICOM file: ` and then the guard's
/// reason, e.g. `… truncated at byte N of M: the pixel data (7FE0,0010) at
/// byte O declare L bytes (…)` or `… the data set nests sequences deeper
/// than 64 levels …`.
pub fn check<R: Read + Seek>(reader: R, limits: &Limits) -> Result<Layout, ExtractError> {
    dicom_guard::scan(reader, limits).map_err(|e| match e {
        GuardError::Io { source, .. } => ExtractError::Io(source),
        e @ (GuardError::NotDicom(_) | GuardError::UnsupportedTransferSyntax { .. }) => {
            ExtractError::Content(e.to_string())
        }
        e @ GuardError::Truncated { .. } => ExtractError::Content(format!(
            "corrupt DICOM file: {e} (cut short, or still being written when it was read)"
        )),
        e => ExtractError::Content(format!("corrupt DICOM file: {e}")),
    })
}

/// Why extraction failed.
#[derive(Debug)]
pub enum ExtractError {
    /// The bytes are not a readable DICOM file (the message says why,
    /// without attribute values).
    Content(String),
    /// Reading failed (the caller knows whether the host caused it).
    Io(std::io::Error),
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtractError::Content(message) => f.write_str(message),
            ExtractError::Io(e) => write!(f, "reading the file: {e}"),
        }
    }
}

impl std::error::Error for ExtractError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExtractError::Io(e) => Some(e),
            ExtractError::Content(_) => None,
        }
    }
}

fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// `outer: inner: innermost`, deduplicating messages that repeat.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The well-known keys present in `obj`.
pub fn metadata_of(obj: &DefaultDicomObject) -> Metadata {
    let mut out: Metadata = Vec::new();
    let text = |out: &mut Metadata, key: &str, tag: Tag| {
        if let Some(v) = text_of(obj, tag) {
            out.push((key.to_string(), Value::Text(v)));
        }
    };
    text(&mut out, "patient.id", tags::PATIENT_ID);
    text(&mut out, "patient.name", tags::PATIENT_NAME);
    if let Some(d) = text_of(obj, tags::PATIENT_BIRTH_DATE) {
        out.push(("patient.birth-date".into(), Value::Text(iso_date(&d))));
    }
    text(&mut out, "patient.sex", tags::PATIENT_SEX);
    text(&mut out, "study.uid", tags::STUDY_INSTANCE_UID);
    text(&mut out, "series.uid", tags::SERIES_INSTANCE_UID);
    text(&mut out, "sop.instance-uid", tags::SOP_INSTANCE_UID);
    text(&mut out, "sop.class-uid", tags::SOP_CLASS_UID);
    text(&mut out, "modality", tags::MODALITY);
    if let Some(d) = text_of(obj, tags::STUDY_DATE) {
        out.push(("study.date".into(), Value::Text(iso_date(&d))));
    }
    if let Some(d) = text_of(obj, tags::ACQUISITION_DATE) {
        out.push(("acquisition.date".into(), Value::Text(iso_date(&d))));
    }
    text(&mut out, "manufacturer", tags::MANUFACTURER);
    text(&mut out, "model", tags::MANUFACTURER_MODEL_NAME);
    for (key, tag) in [("rows", tags::ROWS), ("columns", tags::COLUMNS), ("bits-stored", tags::BITS_STORED)] {
        if let Some(n) = obj.get(tag).and_then(|e| e.to_int::<i64>().ok()) {
            out.push((key.to_string(), Value::Integer(n)));
        }
    }
    // Intraoral sensors often only give the spacing at the detector.
    if let Some(spacing) = reals_of(obj, tags::PIXEL_SPACING).or_else(|| reals_of(obj, tags::IMAGER_PIXEL_SPACING)) {
        out.push(("pixel-spacing".into(), Value::Reals(spacing)));
    }
    if let Some(l) = text_of(obj, tags::IMAGE_LATERALITY).or_else(|| text_of(obj, tags::LATERALITY)) {
        out.push(("laterality".into(), Value::Text(l)));
    }
    let codes = anatomy_codes(obj);
    if !codes.is_empty() {
        out.push(("anatomy.codes".into(), Value::Texts(codes)));
    }
    let ts = obj.meta().transfer_syntax();
    if !ts.is_empty() {
        out.push(("transfer-syntax".into(), Value::Text(ts.to_string())));
    }
    out
}

/// Trimmed text of an element; `None` when absent, empty or not text.
fn text_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let value = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!value.is_empty()).then(|| value.to_string())
}

/// All finite numbers of a decimal-string element, if any.
fn reals_of(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let values = obj.get(tag)?.to_multi_float64().ok()?;
    (!values.is_empty() && values.iter().all(|v| v.is_finite())).then_some(values)
}

/// Code values of the anatomic region and primary anatomic structure
/// sequences (e.g. ISO 3950 tooth numbers), in file order, deduplicated.
fn anatomy_codes(obj: &InMemDicomObject) -> Vec<String> {
    let mut codes: Vec<String> = Vec::new();
    for seq in [tags::ANATOMIC_REGION_SEQUENCE, tags::PRIMARY_ANATOMIC_STRUCTURE_SEQUENCE] {
        let Some(items) = obj.get(seq).and_then(|e| e.items()) else {
            continue;
        };
        for item in items {
            if let Some(code) = text_of(item, tags::CODE_VALUE) {
                if !codes.contains(&code) {
                    codes.push(code);
                }
            }
        }
    }
    codes
}

/// `20240131` → `2024-01-31` (also the old `2024.01.31`); anything else as is.
pub fn iso_date(da: &str) -> String {
    let digits: String = da.chars().filter(|&c| c != '.').collect();
    if digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
        let (y, m, d) = (&digits[..4], &digits[4..6], &digits[6..]);
        let (mi, di): (u32, u32) = (m.parse().unwrap_or(0), d.parse().unwrap_or(0));
        if (1..=12).contains(&mi) && (1..=31).contains(&di) {
            return format!("{y}-{m}-{d}");
        }
    }
    da.to_string()
}

/// The component's export side. Only on wasm32: natively (tests, the fuzz
/// harness) wit-bindgen's export symbols, named like
/// `ferry:pipeline/extractor@0.1.0#extract`, cannot be linked into a
/// shared library, and nothing there would call them.
#[cfg(target_arch = "wasm32")]
mod guest {
    use ferry_plugin_sdk::types::{Item, Metadata, StageError};
    use ferry_plugin_sdk::{permanent, Context, Extractor, FileReader};

    use super::{extract_from, Config, ExtractError};

    struct DicomMeta;

    impl Extractor for DicomMeta {
        type Config = Config;

        fn new(_config: Config) -> Result<Self, StageError> {
            Ok(DicomMeta)
        }

        fn extract(&mut self, item: Item) -> Result<Metadata, StageError> {
            let mut reader = FileReader::open(&item.file).context(format_args!("opening {}", item.file.path))?;
            let result = extract_from(&mut reader);
            let (fetched, size) = (reader.fetched(), reader.size());
            match (result, reader.take_error()) {
                (Ok(metadata), _) => {
                    ferry_plugin_sdk::trace(&format!(
                        "{}: {} keys from {fetched} of {size} bytes",
                        item.id,
                        metadata.len()
                    ));
                    Ok(metadata)
                }
                // The host failed behind the parser's I/O error: keep its kind
                // (`unavailable` is worth a retry, a bad file is not).
                (Err(_), Some(host)) => Err(host).context(format_args!("reading {}", item.file.path)),
                (Err(ExtractError::Io(e)), None) => Err(permanent(format!("reading {}: {e}", item.file.path))),
                (Err(ExtractError::Content(message)), None) => Err(permanent(message)),
            }
        }
    }

    ferry_plugin_sdk::extractor_plugin!(DicomMeta);
}

#[cfg(test)]
mod tests;
