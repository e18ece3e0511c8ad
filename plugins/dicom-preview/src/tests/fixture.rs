//! Synthetic dental images for the renderer's tests, built with
//! dicom-object's in-memory objects: the same shapes as the host's
//! `ferry_tests::dicom` generator (12 bits in 16, MONOCHROME2, window
//! 2048/4096, a seeded gradient), which plugins cannot depend on.
use std::io::{Cursor, Write};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence};
use dicom_core::{dicom_value, DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_guard::{Limits, PixelData};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
/// In every generated header; no error message may contain it.
pub const PATIENT_NAME: &str = "Mustermann^Erika";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    IntraOral,
    Panoramic,
    /// Starts like DICOM, then an element whose length runs past the end.
    Corrupt,
    NotDicom,
}

/// One image file: (rows, columns) default to 64 × 48 (intra-oral) or
/// 128 × 64 (panoramic).
pub fn generate(kind: Kind, pixels: Option<(u16, u16)>) -> Vec<u8> {
    match kind {
        Kind::IntraOral | Kind::Panoramic => {
            let (rows, cols) = pixels.unwrap_or(if kind == Kind::IntraOral { (64, 48) } else { (128, 64) });
            write(image(kind, rows, cols), EXPLICIT_LE)
        }
        Kind::Corrupt => {
            let obj = InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::SOP_CLASS_UID,
                    VR::UI,
                    uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
                ),
                DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.1234.3.7.101"),
                DataElement::new(tags::MODALITY, VR::CS, "IO"),
            ]);
            let mut out = write(obj, EXPLICIT_LE);
            // (0010,0010) PN, length 0x0400, followed by only 9 bytes.
            out.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 0x00, 0x04]);
            out.extend_from_slice(b"Trunc\0\xff\xfe\x00");
            out
        }
        Kind::NotDicom => b"Sidexis export placeholder for image 101.\nThis is not a DICOM file.\n".repeat(4),
    }
}

fn image(kind: Kind, rows: u16, cols: u16) -> InMemDicomObject {
    let (modality, sop_class) = match kind {
        Kind::Panoramic => ("PX", uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
        _ => ("IO", uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
    };
    let mut obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        DataElement::new(tags::IMAGE_TYPE, VR::CS, dicom_value!(Strs, ["ORIGINAL", "PRIMARY"])),
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, sop_class),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.1234.3.7.101"),
        DataElement::new(tags::STUDY_DATE, VR::DA, "20240131"),
        DataElement::new(tags::MODALITY, VR::CS, modality),
        DataElement::new(tags::MANUFACTURER, VR::LO, "Sirona"),
        DataElement::new(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
        DataElement::new(tags::PATIENT_ID, VR::LO, "7"),
        DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, "19800229"),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.1234.1.7"),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.1234.2.7"),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12_u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11_u16)),
        DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0_u16)),
        DataElement::new(tags::WINDOW_CENTER, VR::DS, "2048"),
        DataElement::new(tags::WINDOW_WIDTH, VR::DS, "4096"),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "0"),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(gradient(rows, cols, 101).into())),
    ]);
    obj.put(DataElement::new(
        tags::ANATOMIC_REGION_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![InMemDicomObject::from_element_iter([
            DataElement::new(tags::CODE_VALUE, VR::SH, "T-11170"),
            DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "SRT"),
        ])]),
    ));
    obj
}

/// A deterministic 12-bit gradient with a little seeded noise (the host
/// generator's formula).
fn gradient(rows: u16, cols: u16, seed: u32) -> Vec<u16> {
    let (rows, cols) = (u32::from(rows.max(1)), u32::from(cols.max(1)));
    let mut state = u64::from(seed) ^ 0x9E37_79B9_7F4A_7C15;
    let offset = seed.wrapping_mul(53) % 512;
    let mut out = Vec::with_capacity((rows * cols) as usize);
    for r in 0..rows {
        for c in 0..cols {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let noise = ((state >> 33) % 64) as u32;
            let gradient = (r * 3583 / rows + c * 3583 / cols) / 2;
            out.push((gradient + offset + noise).min(4095) as u16);
        }
    }
    out
}

/// Preamble, `DICM`, meta and data set in `ts`, by dicom-object's writer.
fn write(obj: InMemDicomObject, ts: &str) -> Vec<u8> {
    let file = obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts)).unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

fn open(file: &[u8]) -> DefaultDicomObject {
    dicom_object::from_reader(&file[128..]).unwrap()
}

fn write_file(obj: &DefaultDicomObject) -> Vec<u8> {
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

/// A copy of `src` changed by `change`.
pub fn variant(src: &[u8], change: impl FnOnce(&mut DefaultDicomObject)) -> Vec<u8> {
    let mut obj = open(src);
    change(&mut obj);
    write_file(&obj)
}

/// `src` written in another (native) transfer syntax.
pub fn retarget(src: &[u8], ts: &str) -> Vec<u8> {
    variant(src, |obj| obj.update_meta(|meta| meta.transfer_syntax = ts.to_string()))
}

/// The native pixel data of `src`, little-endian bytes.
pub fn pixel_bytes(src: &[u8]) -> Vec<u8> {
    open(src).get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec()
}

/// The fragments of `src`'s encapsulated pixel data.
pub fn fragments(src: &[u8]) -> Vec<Vec<u8>> {
    open(src).get(tags::PIXEL_DATA).unwrap().fragments().unwrap().to_vec()
}

/// `src` with encapsulated pixel data in transfer syntax `ts`.
pub fn encapsulate(src: &[u8], ts: &str, fragments: Vec<Vec<u8>>, offset_table: &[u32]) -> Vec<u8> {
    variant(src, |obj| {
        obj.update_meta(|meta| meta.transfer_syntax = ts.to_string());
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new(offset_table.to_vec(), fragments),
        ));
    })
}

/// Raw deflate.
pub fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An RLE Lossless fragment of one-sample little-endian `raw` data with
/// `bytes` bytes per sample (PackBits literal runs only).
pub fn rle(raw: &[u8], bytes: usize) -> Vec<u8> {
    let mut segments = Vec::new();
    for k in (0..bytes).rev() {
        let plane: Vec<u8> = raw.chunks_exact(bytes).map(|s| s[k]).collect();
        let mut seg = Vec::new();
        for run in plane.chunks(128) {
            seg.push((run.len() - 1) as u8);
            seg.extend_from_slice(run);
        }
        if seg.len() % 2 == 1 {
            seg.push(0x80); // a no-op, for even length
        }
        segments.push(seg);
    }
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut at = 64u32;
    for (i, seg) in segments.iter().enumerate() {
        header[4 + 4 * i..8 + 4 * i].copy_from_slice(&at.to_le_bytes());
        at += seg.len() as u32;
    }
    [header, segments.concat()].concat()
}

/// `src` with `raw` (explicit VR LE element bytes) inserted just before
/// its pixel data element.
pub fn with_raw(src: &[u8], raw: &[u8]) -> Vec<u8> {
    let layout = dicom_guard::scan(Cursor::new(src), &Limits::default()).unwrap();
    let Some(PixelData::Native { offset, .. }) = layout.pixel_data else { panic!("native pixel data expected") };
    let at = offset as usize - 12;
    [&src[..at], raw, &src[at..]].concat()
}

/// `depth` nested (0008,1140) sequences of undefined length, explicit VR LE.
pub fn nested(depth: usize) -> Vec<u8> {
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

/// `src` as Deflated Explicit VR Little Endian whose pixel data declare
/// (and inflate to) about `size` zero bytes, in about `size / 1024` bytes
/// of file.
pub fn deflate_bomb(src: &[u8], size: u64) -> Vec<u8> {
    let layout = dicom_guard::scan(Cursor::new(src), &Limits::default()).unwrap();
    let Some(PixelData::Native { offset, .. }) = layout.pixel_data else { panic!("native pixel data expected") };
    let matches = (size - 1) / 258;
    let declared = 1 + 258 * matches;
    let mut prefix = src[layout.dataset_start as usize..offset as usize - 4].to_vec();
    prefix.extend((declared as u32).to_le_bytes());
    // The meta information of a deflated file.
    let deflated = variant(src, |obj| {
        obj.update_meta(|meta| meta.transfer_syntax = DEFLATED.to_string());
        obj.remove_element(tags::PIXEL_DATA);
    });
    let start = dicom_guard::scan(Cursor::new(&deflated), &Limits::default()).unwrap().dataset_start as usize;
    [&deflated[..start], &ferry_testkit::deflate_bomb(&prefix, matches)[..]].concat()
}
