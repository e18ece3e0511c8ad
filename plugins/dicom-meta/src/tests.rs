use std::cell::Cell;
use std::io::{Cursor, Read, Seek, SeekFrom};

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::*;

fn elem(tag: Tag, vr: VR, value: PrimitiveValue) -> dicom_object::mem::InMemElement {
    DataElement::new(tag, vr, value)
}

fn code(value: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        elem(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
        elem(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PrimitiveValue::from("ISO3950")),
    ])
}

/// A small intraoral X-ray with `pixels` bytes of pixel data.
fn sample(pixels: usize) -> Vec<u8> {
    let mut obj = InMemDicomObject::from_element_iter([
        elem(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.1.3")),
        elem(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4.5")),
        elem(tags::STUDY_DATE, VR::DA, PrimitiveValue::from("20240131")),
        elem(tags::MODALITY, VR::CS, PrimitiveValue::from("IO")),
        elem(tags::MANUFACTURER, VR::LO, PrimitiveValue::from("Sirona")),
        elem(tags::MANUFACTURER_MODEL_NAME, VR::LO, PrimitiveValue::from("XIOS")),
        elem(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Doe^Jane")),
        elem(tags::PATIENT_ID, VR::LO, PrimitiveValue::from("17")),
        elem(tags::PATIENT_BIRTH_DATE, VR::DA, PrimitiveValue::from("19800229")),
        elem(tags::PATIENT_SEX, VR::CS, PrimitiveValue::from("F")),
        elem(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3")),
        elem(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4")),
        elem(tags::IMAGE_LATERALITY, VR::CS, PrimitiveValue::from("R")),
        elem(tags::ROWS, VR::US, PrimitiveValue::from(1000u16)),
        elem(tags::COLUMNS, VR::US, PrimitiveValue::from((pixels / 2000) as u16)),
        elem(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        elem(tags::IMAGER_PIXEL_SPACING, VR::DS, PrimitiveValue::Strs(["0.0185".into(), "0.0185".into()].into())),
        elem(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U8(vec![7u8; pixels].into())),
    ]);
    obj.put(DataElement::new(
        tags::ANATOMIC_REGION_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![code("T-D0123")], Length::UNDEFINED),
    ));
    obj.put(DataElement::new(
        tags::PRIMARY_ANATOMIC_STRUCTURE_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![code("16"), code("17"), code("16")], Length::UNDEFINED),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1.3")
        .media_storage_sop_instance_uid("1.2.3.4.5")
        .transfer_syntax("1.2.840.10008.1.2.1")
        .build()
        .unwrap();
    let mut out = Vec::new();
    obj.with_exact_meta(meta).write_all(&mut out).unwrap();
    out
}

/// Counts the bytes a parser pulls.
struct Counting<'a, R> {
    inner: R,
    read: &'a Cell<usize>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n);
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

fn get<'a>(m: &'a Metadata, key: &str) -> Option<&'a Value> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn text<'a>(m: &'a Metadata, key: &str) -> &'a str {
    match get(m, key) {
        Some(Value::Text(t)) => t,
        _ => panic!("{key} is not text"),
    }
}

#[test]
fn well_known_keys() {
    let m = extract_from(Cursor::new(&sample(2000 * 1000)[..])).unwrap();
    assert_eq!(text(&m, "patient.name"), "Doe^Jane");
    assert_eq!(text(&m, "patient.id"), "17");
    assert_eq!(text(&m, "patient.birth-date"), "1980-02-29");
    assert_eq!(text(&m, "patient.sex"), "F");
    assert_eq!(text(&m, "study.date"), "2024-01-31");
    assert_eq!(text(&m, "modality"), "IO");
    assert_eq!(text(&m, "manufacturer"), "Sirona");
    assert_eq!(text(&m, "model"), "XIOS");
    assert_eq!(text(&m, "sop.instance-uid"), "1.2.3.4.5");
    assert_eq!(text(&m, "sop.class-uid"), "1.2.840.10008.5.1.4.1.1.1.3");
    assert_eq!(text(&m, "study.uid"), "1.2.3");
    assert_eq!(text(&m, "series.uid"), "1.2.3.4");
    assert_eq!(text(&m, "laterality"), "R");
    assert_eq!(text(&m, "transfer-syntax"), "1.2.840.10008.1.2.1");
    assert!(get(&m, "acquisition.date").is_none());
    assert!(matches!(get(&m, "rows"), Some(Value::Integer(1000))));
    assert!(matches!(get(&m, "columns"), Some(Value::Integer(1000))));
    assert!(matches!(get(&m, "bits-stored"), Some(Value::Integer(12))));
    match get(&m, "pixel-spacing") {
        Some(Value::Reals(r)) => assert_eq!(r, &[0.0185, 0.0185]),
        _ => panic!("pixel-spacing"),
    }
    match get(&m, "anatomy.codes") {
        Some(Value::Texts(t)) => assert_eq!(t, &["T-D0123", "16", "17"]),
        _ => panic!("anatomy.codes"),
    }
}

#[test]
fn stops_at_pixel_data() {
    let file = sample(2000 * 1000);
    let read = Cell::new(0);
    extract_from(Counting { inner: Cursor::new(&file[..]), read: &read }).unwrap();
    assert!(read.get() < 64 * 1024, "read {} of {} bytes", read.get(), file.len());
}

#[test]
fn not_dicom() {
    let e = extract_from(Cursor::new(&[0u8; 1000][..])).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m == "not a DICOM file: no DICM magic at offset 128"), "{e:?}");
    let e = extract_from(Cursor::new(&b"hello"[..])).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m.contains("too short")), "{e:?}");
}

#[test]
fn truncated_and_garbage() {
    let file = sample(2000);
    let e = extract_from(Cursor::new(&file[..200])).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m.starts_with("corrupt DICOM file: ")), "{e:?}");
    let mut bad = file[..132].to_vec();
    bad.extend_from_slice(&[0xff; 300]);
    let e = extract_from(Cursor::new(&bad[..])).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m.starts_with("corrupt DICOM file: ")), "{e:?}");
}

#[test]
fn without_preamble() {
    let file = sample(2000);
    let m = extract_from(Cursor::new(&file[128..])).unwrap();
    assert_eq!(text(&m, "modality"), "IO");
}

#[test]
fn dates() {
    assert_eq!(iso_date("20240131"), "2024-01-31");
    assert_eq!(iso_date("2024.01.31"), "2024-01-31");
    assert_eq!(iso_date("20241331"), "20241331");
    assert_eq!(iso_date("2024"), "2024");
}

// --- hostile files: the guard runs before dicom-object -----------------------

/// `sample(pixels)` with `raw` (explicit VR LE bytes) inserted just before
/// the pixel data element.
fn with_raw(pixels: usize, raw: &[u8]) -> Vec<u8> {
    let file = sample(pixels);
    let at = file.len() - pixels - 12;
    assert_eq!(&file[at..at + 6], &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']);
    [&file[..at], raw, &file[at..]].concat()
}

/// `depth` nested (0008,1140) sequences of undefined length.
fn nested_raw(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        out.extend([0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        out.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..depth {
        out.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        out.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    out
}

/// `depth` sequences nested by dicom-object itself.
fn nested_object(depth: usize) -> InMemDicomObject {
    let mut inner = code("innermost");
    for _ in 0..depth {
        inner = InMemDicomObject::from_element_iter([DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![inner], Length::UNDEFINED),
        )]);
    }
    inner
}

fn content(e: ExtractError) -> String {
    match e {
        ExtractError::Content(m) => {
            assert!(!m.contains("Doe") && !m.contains("Jane"), "patient data in {m}");
            m
        }
        ExtractError::Io(e) => panic!("expected a content error, got I/O: {e}"),
    }
}

#[test]
fn a_file_truncated_inside_its_pixel_data_fails() {
    let file = sample(2000 * 1000);
    let cut = &file[..file.len() - 1000];
    let message = content(extract_from(Cursor::new(cut)).unwrap_err());
    let value = file.len() - 2000 * 1000;
    assert_eq!(
        message,
        format!(
            "corrupt DICOM file: truncated at byte {} of {}: the pixel data (7FE0,0010) at byte {value} declares 2000000 bytes (cut short, or still being written when it was read)",
            file.len(),
            cut.len()
        )
    );
    // Whole, it passes.
    assert!(extract_from(Cursor::new(&file[..])).is_ok());
}

#[test]
fn pixel_data_declaring_4_gib_are_truncated() {
    let mut file = sample(2000);
    let len_at = file.len() - 2000 - 4;
    file[len_at..len_at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let message = content(extract_from(Cursor::new(&file[..])).unwrap_err());
    let value = file.len() as u64 - 2000;
    let expected = format!("truncated at byte {} of {}: the pixel data", value + 0xFFFF_FFF0, file.len());
    assert!(message.contains(&expected), "{message}");
    assert!(message.contains("declares 4294967280 bytes"), "{message}");
}

#[test]
fn sequences_nested_64_deep_are_read() {
    let mut obj = dicom_object::from_reader(&sample(2000)[128..]).unwrap();
    obj.put(DataElement::new(
        tags::REFERENCED_IMAGE_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![nested_object(63)], Length::UNDEFINED),
    ));
    let mut file = Vec::new();
    obj.write_all(&mut file).unwrap();
    let m = extract_from(Cursor::new(&file[..])).unwrap();
    assert_eq!(text(&m, "modality"), "IO");
}

#[test]
fn sequences_nested_65_deep_are_refused() {
    let message = content(extract_from(Cursor::new(&with_raw(2000, &nested_raw(65))[..])).unwrap_err());
    assert!(
        message.starts_with(
            "corrupt DICOM file: the data set nests sequences deeper than 64 levels (sequence (0008,1140) at byte "
        ),
        "{message}"
    );
    assert!(extract_from(Cursor::new(&with_raw(2000, &nested_raw(64))[..])).is_ok());
}

#[test]
fn thousands_of_nested_sequences_fail_without_recursing() {
    // 5,000 levels overflow dicom-object's recursion; the guard refuses the
    // file before dicom-object sees it, so a small stack is enough.
    let file = with_raw(2000, &nested_raw(5000));
    let message = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || content(extract_from(Cursor::new(&file[..])).unwrap_err()))
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert!(message.contains("nests sequences deeper than 64 levels"), "{message}");
}

#[test]
fn lying_lengths_inside_sequences_are_refused() {
    // An item of defined length 100 inside a sequence of defined length 20.
    let mut raw = vec![0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 20, 0, 0, 0];
    raw.extend([0xFE, 0xFF, 0x00, 0xE0, 100, 0, 0, 0]);
    raw.extend([0u8; 12]);
    let message = content(extract_from(Cursor::new(&with_raw(2000, &raw)[..])).unwrap_err());
    assert!(message.starts_with("corrupt DICOM file: invalid DICOM structure at byte "), "{message}");
    assert!(message.contains("an item of sequence (0008,1140)"), "{message}");
}
