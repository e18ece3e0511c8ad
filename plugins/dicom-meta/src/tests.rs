use std::cell::Cell;
use std::io::Read;

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
    let m = extract_from(&sample(2000 * 1000)[..]).unwrap();
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
    extract_from(Counting { inner: &file[..], read: &read }).unwrap();
    assert!(read.get() < 64 * 1024, "read {} of {} bytes", read.get(), file.len());
}

#[test]
fn not_dicom() {
    let e = extract_from(&[0u8; 1000][..]).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m == "not a DICOM file: no DICM magic at offset 128"), "{e:?}");
    let e = extract_from(&b"hello"[..]).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m.contains("too short")), "{e:?}");
}

#[test]
fn truncated_and_garbage() {
    let file = sample(2000);
    let e = extract_from(&file[..200]).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m.starts_with("corrupt DICOM file: ")), "{e:?}");
    let mut bad = file[..132].to_vec();
    bad.extend_from_slice(&[0xff; 300]);
    let e = extract_from(&bad[..]).unwrap_err();
    assert!(matches!(&e, ExtractError::Content(m) if m.starts_with("corrupt DICOM file: ")), "{e:?}");
}

#[test]
fn without_preamble() {
    let file = sample(2000);
    let m = extract_from(&file[128..]).unwrap();
    assert_eq!(text(&m, "modality"), "IO");
}

#[test]
fn dates() {
    assert_eq!(iso_date("20240131"), "2024-01-31");
    assert_eq!(iso_date("2024.01.31"), "2024-01-31");
    assert_eq!(iso_date("20241331"), "20241331");
    assert_eq!(iso_date("2024"), "2024");
}
