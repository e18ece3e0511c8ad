//! Hand-built files: every byte of a test's input is visible here, so each
//! test says exactly which lie it tells.
use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use super::*;
use ferry_testkit::{deflate_bomb, peak_allocation};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

const PATIENT_NAME: Tag = Tag(0x0010, 0x0010);
const REFERENCED_IMAGES: Tag = Tag(0x0008, 0x1140);

#[derive(Clone, Copy, PartialEq)]
enum E {
    Imp,
    Le,
    Be,
}

fn u16b(e: E, v: u16) -> [u8; 2] {
    if e == E::Be {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

fn u32b(e: E, v: u32) -> [u8; 4] {
    if e == E::Be {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

fn tag_bytes(e: E, t: Tag) -> Vec<u8> {
    [u16b(e, t.0), u16b(e, t.1)].concat()
}

/// An element header declaring `len` (not followed by a value).
fn head(e: E, t: Tag, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = tag_bytes(e, t);
    match e {
        E::Imp => out.extend(u32b(e, len)),
        _ if short_length(*vr) => {
            out.extend(vr);
            out.extend(u16b(e, len as u16));
        }
        _ => {
            out.extend(vr);
            out.extend([0, 0]);
            out.extend(u32b(e, len));
        }
    }
    out
}

fn el(e: E, t: Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    [head(e, t, vr, value.len() as u32), value.to_vec()].concat()
}

fn item(e: E, len: u32) -> Vec<u8> {
    [tag_bytes(e, ITEM), u32b(e, len).to_vec()].concat()
}

fn item_end(e: E) -> Vec<u8> {
    [tag_bytes(e, ITEM_END), vec![0; 4]].concat()
}

fn seq_end(e: E) -> Vec<u8> {
    [tag_bytes(e, SEQUENCE_END), vec![0; 4]].concat()
}

fn name(e: E) -> Vec<u8> {
    el(e, PATIENT_NAME, b"PN", b"Doe^Jane")
}

/// The group 0002 meta information (always explicit VR LE).
fn meta(ts: &str) -> Vec<u8> {
    let mut uid = ts.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    let body = [el(E::Le, Tag(2, 1), b"OB", &[0, 1]), el(E::Le, Tag(2, 0x10), b"UI", &uid)].concat();
    [el(E::Le, Tag(2, 0), b"UL", &(body.len() as u32).to_le_bytes()), body].concat()
}

/// Preamble, `DICM`, meta, then `dataset` as is.
fn file(ts: &str, dataset: &[u8]) -> Vec<u8> {
    [vec![0u8; 128], b"DICM".to_vec(), meta(ts), dataset.to_vec()].concat()
}

fn dataset_start(ts: &str) -> u64 {
    (132 + meta(ts).len()) as u64
}

fn scan_bytes(bytes: &[u8]) -> Result<Layout, GuardError> {
    scan(Cursor::new(bytes), &Limits::default())
}

fn scan_with(bytes: &[u8], limits: Limits) -> Result<Layout, GuardError> {
    scan(Cursor::new(bytes), &limits)
}

/// `depth` nested sequences of undefined length, one item each, with a
/// patient name innermost.
fn nested_undefined(e: E, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        out.extend(head(e, REFERENCED_IMAGES, b"SQ", UNDEFINED));
        out.extend(item(e, UNDEFINED));
    }
    out.extend(name(e));
    for _ in 0..depth {
        out.extend(item_end(e));
        out.extend(seq_end(e));
    }
    out
}

/// `depth` nested sequences and items, all of defined length.
fn nested_defined(e: E, depth: usize) -> Vec<u8> {
    let mut inner = name(e);
    for _ in 0..depth {
        let it = [item(e, inner.len() as u32), inner].concat();
        inner = [head(e, REFERENCED_IMAGES, b"SQ", it.len() as u32), it].concat();
    }
    inner
}

fn pixels(e: E, n: usize) -> Vec<u8> {
    el(e, PIXEL_DATA, b"OW", &vec![0x11; n])
}

fn expect_message(result: Result<Layout, GuardError>) -> (GuardError, String) {
    let e = result.expect_err("the scan should fail");
    let message = e.to_string();
    assert!(!message.contains("Doe") && !message.contains("Jane"), "patient data in {message}");
    (e, message)
}

// --- well-formed files -----------------------------------------------------

#[test]
fn native_pixel_data_are_located() {
    let ds = [name(E::Le), pixels(E::Le, 1000)].concat();
    let bytes = file(EXPLICIT_LE, &ds);
    let layout = scan_bytes(&bytes).unwrap();
    let start = dataset_start(EXPLICIT_LE);
    assert_eq!(layout.transfer_syntax, EXPLICIT_LE);
    assert_eq!(layout.dataset_start, start);
    assert_eq!(layout.file_size, bytes.len() as u64);
    // PN header 8 + 8 bytes, OW header 12.
    assert_eq!(layout.pixel_data, Some(PixelData::Native { offset: start + 16 + 12, length: 1000 }));
    assert!(!layout.is_deflated());
}

#[test]
fn without_preamble() {
    let bytes = file(EXPLICIT_LE, &[name(E::Le), pixels(E::Le, 10)].concat());
    let layout = scan_bytes(&bytes[128..]).unwrap();
    assert_eq!(layout.dataset_start, dataset_start(EXPLICIT_LE) - 128);
    assert!(matches!(layout.pixel_data, Some(PixelData::Native { length: 10, .. })));
}

#[test]
fn no_pixel_data_is_fine() {
    let layout = scan_bytes(&file(EXPLICIT_LE, &name(E::Le))).unwrap();
    assert_eq!(layout.pixel_data, None);
    // An empty data set too.
    assert_eq!(scan_bytes(&file(EXPLICIT_LE, &[])).unwrap().pixel_data, None);
}

#[test]
fn sequences_64_deep_pass_in_every_encoding() {
    for (e, ts) in [(E::Le, EXPLICIT_LE), (E::Be, EXPLICIT_BE), (E::Imp, IMPLICIT_LE)] {
        for bytes in [nested_undefined(e, 64), nested_defined(e, 64)] {
            let bytes = file(ts, &[bytes, pixels(e, 4)].concat());
            let layout = scan_bytes(&bytes).unwrap_or_else(|err| panic!("{ts}: {err}"));
            assert!(matches!(layout.pixel_data, Some(PixelData::Native { length: 4, .. })), "{ts}");
        }
    }
}

#[test]
fn big_endian_values_and_pixel_data() {
    let ds = [el(E::Be, Tag(0x0028, 0x0010), b"US", &512u16.to_be_bytes()), nested_defined(E::Be, 3), pixels(E::Be, 6)]
        .concat();
    let bytes = file(EXPLICIT_BE, &ds);
    let layout = scan_bytes(&bytes).unwrap();
    let end = bytes.len() as u64;
    assert_eq!(layout.pixel_data, Some(PixelData::Native { offset: end - 6, length: 6 }));
    // A big-endian length read as little-endian would be 0x06000000.
    let mut lying = bytes.clone();
    let at = lying.len() - 6 - 4;
    lying[at..at + 4].copy_from_slice(&0x0600_0000u32.to_be_bytes());
    let (e, message) = expect_message(scan_bytes(&lying));
    assert!(matches!(e, GuardError::Truncated { .. }), "{message}");
}

#[test]
fn implicit_vr_pixel_data_and_lengths() {
    let ds = [name(E::Imp), el(E::Imp, Tag(0x0028, 0x0010), b"US", &[0, 2]), pixels(E::Imp, 8)].concat();
    let bytes = file(IMPLICIT_LE, &ds);
    let layout = scan_bytes(&bytes).unwrap();
    assert_eq!(layout.pixel_data, Some(PixelData::Native { offset: bytes.len() as u64 - 8, length: 8 }));
    // Pixel data whose first bytes look like an item are still pixel data.
    let ds = [name(E::Imp), el(E::Imp, PIXEL_DATA, b"OW", &[0xFE, 0xFF, 0x00, 0xE0, 1, 2, 3, 4])].concat();
    assert!(scan_bytes(&file(IMPLICIT_LE, &ds)).is_ok());
}

#[test]
fn encapsulated_pixel_data_are_located() {
    let frag1 = vec![0xAA; 100];
    let frag2 = vec![0xBB; 50];
    let ds = [
        name(E::Le),
        head(E::Le, PIXEL_DATA, b"OB", UNDEFINED),
        item(E::Le, 8),
        [0u32.to_le_bytes(), 108u32.to_le_bytes()].concat(),
        item(E::Le, 100),
        frag1,
        item(E::Le, 50),
        frag2,
        seq_end(E::Le),
    ]
    .concat();
    let bytes = file(JPEG_BASELINE, &ds);
    let start = dataset_start(JPEG_BASELINE);
    let value = start + 16 + 12;
    let layout = scan_bytes(&bytes).unwrap();
    assert_eq!(
        layout.pixel_data,
        Some(PixelData::Encapsulated {
            offset: value,
            offset_table: vec![0, 108],
            fragments: vec![
                Fragment { offset: value + 16 + 8, length: 100 },
                Fragment { offset: value + 16 + 108 + 8, length: 50 },
            ],
        })
    );
    // An empty offset table, and nothing after the pixel data but padding.
    let ds = [
        head(E::Le, PIXEL_DATA, b"OB", UNDEFINED),
        item(E::Le, 0),
        item(E::Le, 4),
        vec![1, 2, 3, 4],
        seq_end(E::Le),
        el(E::Le, Tag(0xFFFC, 0xFFFC), b"OB", &[0; 6]),
    ]
    .concat();
    match scan_bytes(&file(JPEG_BASELINE, &ds)).unwrap().pixel_data {
        Some(PixelData::Encapsulated { offset_table, fragments, .. }) => {
            assert!(offset_table.is_empty());
            assert_eq!(fragments.len(), 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn icon_pixel_data_inside_a_sequence_are_checked_not_recorded() {
    // (0088,0200) IconImageSequence with its own encapsulated pixel data.
    let icon = [head(E::Le, PIXEL_DATA, b"OB", UNDEFINED), item(E::Le, 0), item(E::Le, 2), vec![9, 9], seq_end(E::Le)]
        .concat();
    let seq = [
        head(E::Le, Tag(0x0088, 0x0200), b"SQ", UNDEFINED),
        item(E::Le, UNDEFINED),
        icon,
        item_end(E::Le),
        seq_end(E::Le),
    ]
    .concat();
    let layout = scan_bytes(&file(JPEG_BASELINE, &[seq.clone(), pixels(E::Le, 2)].concat())).unwrap();
    assert!(matches!(layout.pixel_data, Some(PixelData::Native { length: 2, .. })));
    // The icon's fragments are bounded like any other.
    let mut bad = seq;
    let at = bad.len() - 8 - 8 - 8 - 2 - 4; // the 2-byte fragment's length
    bad[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let (e, message) = expect_message(scan_bytes(&file(JPEG_BASELINE, &bad)));
    assert!(matches!(e, GuardError::Truncated { .. }), "{message}");
}

#[test]
fn undefined_length_un_is_a_sequence() {
    let ds = [
        head(E::Le, Tag(0x0009, 0x1010), b"UN", UNDEFINED),
        item(E::Le, UNDEFINED),
        name(E::Le),
        item_end(E::Le),
        seq_end(E::Le),
        pixels(E::Le, 2),
    ]
    .concat();
    assert!(scan_bytes(&file(EXPLICIT_LE, &ds)).is_ok());
}

#[test]
fn an_item_delimiter_at_the_top_level_is_ignored() {
    let ds = [name(E::Le), item_end(E::Le), pixels(E::Le, 2)].concat();
    assert!(scan_bytes(&file(EXPLICIT_LE, &ds)).is_ok());
}

#[test]
fn odd_lengths_are_accepted_as_the_parser_accepts_them() {
    let ds = [el(E::Le, Tag(0x0008, 0x0070), b"LO", b"abc"), pixels(E::Le, 3)].concat();
    assert!(scan_bytes(&file(EXPLICIT_LE, &ds)).is_ok());
}

#[test]
fn numbers_whose_length_is_not_a_multiple_of_their_size_are_refused() {
    // dicom-parser would read len/size values but count len bytes, and
    // misread every header after it (a fuzz finding)
    for (vr, len) in [(b"US", 3usize), (b"UL", 2), (b"SL", 6), (b"FD", 4), (b"AT", 2), (b"OW", 5)] {
        let ds = [el(E::Le, Tag(0x0028, 0x0002), vr, &vec![1u8; len]), pixels(E::Le, 2)].concat();
        let err = scan_bytes(&file(EXPLICIT_LE, &ds)).unwrap_err();
        assert!(err.to_string().contains("not a multiple of"), "{vr:?} {len}: {err}");
    }
    // whole values are fine
    let ds = [el(E::Le, Tag(0x0028, 0x0002), b"UL", &[1, 0, 0, 0]), pixels(E::Le, 2)].concat();
    assert!(scan_bytes(&file(EXPLICIT_LE, &ds)).is_ok());
    // implicit VR: the dictionary's VR (SamplesPerPixel is US)
    let ds = [el(E::Imp, Tag(0x0028, 0x0002), b"US", &[1, 0, 0]), pixels(E::Imp, 2)].concat();
    let err = scan_bytes(&file(IMPLICIT_LE, &ds)).unwrap_err();
    assert!(err.to_string().contains("(0028,0002)"), "{err}");
}

// --- nesting -------------------------------------------------------------

#[test]
fn sequences_65_deep_are_refused() {
    for (e, ts) in [(E::Le, EXPLICIT_LE), (E::Be, EXPLICIT_BE), (E::Imp, IMPLICIT_LE)] {
        for bytes in [nested_undefined(e, 65), nested_defined(e, 65)] {
            let (err, message) = expect_message(scan_bytes(&file(ts, &bytes)));
            assert!(matches!(err, GuardError::TooDeep { limit: 64, tag: REFERENCED_IMAGES, .. }), "{ts}: {message}");
            assert!(
                message
                    .starts_with("the data set nests sequences deeper than 64 levels (sequence (0008,1140) at byte "),
                "{message}"
            );
            assert!(message.ends_with("would be level 65); refused rather than parsed"), "{message}");
        }
    }
}

#[test]
fn the_depth_is_the_limits_field() {
    let limits = Limits { max_depth: 3, ..Limits::default() };
    assert!(scan_with(&file(EXPLICIT_LE, &nested_undefined(E::Le, 3)), limits.clone()).is_ok());
    let err = scan_with(&file(EXPLICIT_LE, &nested_undefined(E::Le, 4)), limits).unwrap_err();
    assert!(matches!(err, GuardError::TooDeep { limit: 3, .. }), "{err}");
}

#[test]
fn thousands_of_levels_end_quickly_without_recursion() {
    // 5,000 levels: dicom-object overflows a thread's stack on these.
    let bytes = file(EXPLICIT_LE, &nested_undefined(E::Le, 5000));
    let err = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || scan_bytes(&bytes).unwrap_err().to_string())
        .unwrap()
        .join()
        .unwrap();
    assert!(err.contains("deeper than 64 levels"), "{err}");
    // Even with the limit lifted, the walk is iterative.
    let bytes = file(EXPLICIT_LE, &nested_undefined(E::Le, 100_000));
    let limits = Limits { max_depth: u32::MAX, ..Limits::default() };
    let ok = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || scan_with(&bytes, limits).is_ok())
        .unwrap()
        .join()
        .unwrap();
    assert!(ok);
}

#[test]
fn implicit_vr_sequences_of_defined_length_count_as_sequences() {
    // Implicit VR gives no VR on the wire; a value starting with an item
    // tag is walked as a sequence, so depth counts and lengths are checked.
    let (err, _) = expect_message(scan_bytes(&file(IMPLICIT_LE, &nested_defined(E::Imp, 65))));
    assert!(matches!(err, GuardError::TooDeep { .. }), "{err}");
    // A value that starts with a delimiter instead (a parser that knows
    // the tag is a sequence would read on from there) is refused too.
    let value = [item_end(E::Imp), item(E::Imp, UNDEFINED), name(E::Imp), item_end(E::Imp)].concat();
    let ds = el(E::Imp, REFERENCED_IMAGES, b"SQ", &value);
    let (err, message) = expect_message(scan_bytes(&file(IMPLICIT_LE, &ds)));
    assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
    assert!(message.contains("(FFFE,E00D) in sequence (0008,1140)"), "{message}");
}

// --- lengths that lie ----------------------------------------------------

#[test]
fn pixel_data_declaring_4_gib_on_a_small_file_are_truncated() {
    // The 1.3 KB file of issue 7: PixelData declaring 0xFFFFFFF0 bytes.
    let mut ds = Vec::new();
    while ds.len() < 1100 {
        ds.extend(el(E::Le, Tag(0x0008, 0x0070), b"LO", &[b'x'; 64]));
    }
    ds.extend(head(E::Le, PIXEL_DATA, b"OW", 0xFFFF_FFF0));
    ds.extend([0x22; 64]);
    let bytes = file(EXPLICIT_LE, &ds);
    let size = bytes.len() as u64;
    assert!((1200..1500).contains(&size), "{size}");
    let value = size - 64;
    let (peak, result) = peak_allocation(|| scan_bytes(&bytes));
    let (err, message) = expect_message(result);
    let at = value + 0xFFFF_FFF0;
    assert!(matches!(err, GuardError::Truncated { at: a, size: s, .. } if a == at && s == size), "{err:?}");
    assert_eq!(
        message,
        format!(
            "truncated at byte {at} of {size}: the pixel data (7FE0,0010) at byte {value} declares 4294967280 bytes"
        )
    );
    assert!(peak < 64 * 1024, "allocated {peak} bytes");
}

#[test]
fn a_file_cut_inside_its_pixel_data_is_truncated() {
    let bytes = file(EXPLICIT_LE, &[name(E::Le), pixels(E::Le, 10_000)].concat());
    let cut = &bytes[..bytes.len() - 3000];
    let (err, message) = expect_message(scan_bytes(cut));
    let expected_at = bytes.len() as u64;
    assert!(
        matches!(err, GuardError::Truncated { at, size, .. } if at == expected_at && size == cut.len() as u64),
        "{message}"
    );
    assert!(
        message.starts_with(&format!("truncated at byte {expected_at} of {}: the pixel data", cut.len())),
        "{message}"
    );
}

#[test]
fn a_file_cut_inside_a_header_is_truncated() {
    let bytes = file(EXPLICIT_LE, &[name(E::Le), pixels(E::Le, 10)].concat());
    let cut = &bytes[..bytes.len() - 10 - 5]; // 7 of the 12 header bytes
    let (err, message) = expect_message(scan_bytes(cut));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.contains("an element header at byte"), "{message}");
}

#[test]
fn a_top_level_element_past_the_end_is_truncated() {
    let mut ds = name(E::Le);
    ds[6..8].copy_from_slice(&0x0400u16.to_le_bytes()); // PN declares 1024 bytes, has 8
    let bytes = file(EXPLICIT_LE, &ds);
    let (err, message) = expect_message(scan_bytes(&bytes));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.contains("element (0010,0010) at byte"), "{message}");
}

#[test]
fn lying_lengths_at_each_level_are_caught() {
    // Level 1: a sequence of defined length longer than the file.
    let mut seq = nested_defined(E::Le, 1);
    seq[8..12].copy_from_slice(&5000u32.to_le_bytes());
    let (err, message) = expect_message(scan_bytes(&file(EXPLICIT_LE, &seq)));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.contains("sequence (0008,1140)"), "{message}");

    // Level 2: an item longer than its (defined-length) sequence.
    let mut two = nested_defined(E::Le, 2);
    let item_len_at = 12 + 4; // outer SQ header, then the item's tag
    let declared = u32::from_le_bytes(two[item_len_at..item_len_at + 4].try_into().unwrap());
    two[item_len_at..item_len_at + 4].copy_from_slice(&(declared + 2).to_le_bytes());
    let bytes = file(EXPLICIT_LE, &[two, pixels(E::Le, 100)].concat());
    let (err, message) = expect_message(scan_bytes(&bytes));
    assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
    assert!(message.contains("past the end of the enclosing sequence"), "{message}");

    // Level 3: an element longer than its (defined-length) item.
    let mut three = nested_defined(E::Le, 3);
    let pn_len_at = three.len() - 8 - 2;
    three[pn_len_at..pn_len_at + 2].copy_from_slice(&10u16.to_le_bytes());
    let bytes = file(EXPLICIT_LE, &[three, pixels(E::Le, 100)].concat());
    let (err, message) = expect_message(scan_bytes(&bytes));
    assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
    assert!(message.contains("element (0010,0010) at byte"), "{message}");
    assert!(message.contains("past the end of the enclosing item"), "{message}");

    // An item of undefined length in a sequence of undefined length, whose
    // element lies: only the file bounds it.
    let mut undefined = nested_undefined(E::Le, 2);
    let pn = undefined.len() - 4 * 8 - 8 - 2;
    undefined[pn..pn + 2].copy_from_slice(&0xFFFFu16.to_le_bytes());
    let (err, message) = expect_message(scan_bytes(&file(EXPLICIT_LE, &undefined)));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
}

#[test]
fn a_missing_sequence_delimiter_is_truncated() {
    let bytes = nested_undefined(E::Le, 3);
    let cut = file(EXPLICIT_LE, &bytes[..bytes.len() - 8]);
    let (err, message) = expect_message(scan_bytes(&cut));
    assert!(matches!(err, GuardError::Truncated { at, size, .. } if at == size), "{message}");
    assert!(message.contains("sequence (0008,1140) opened at byte"), "{message}");
    let cut = file(EXPLICIT_LE, &bytes[..bytes.len() - 16]);
    let (_, message) = expect_message(scan_bytes(&cut));
    assert!(message.contains("has no item delimiter"), "{message}");
}

#[test]
fn encapsulated_fragments_past_the_end_are_truncated() {
    let good = [
        head(E::Le, PIXEL_DATA, b"OB", UNDEFINED),
        item(E::Le, 0),
        item(E::Le, 100),
        vec![0xAA; 100],
        item(E::Le, 100),
        vec![0xBB; 100],
        seq_end(E::Le),
    ]
    .concat();
    let size_of = |ds: &[u8]| file(JPEG_BASELINE, ds).len() as u64;
    // The second fragment declares more than the file has.
    let mut lying = good.clone();
    let second = 12 + 8 + 8 + 100 + 4;
    lying[second..second + 4].copy_from_slice(&0x7FFF_0000u32.to_le_bytes());
    let (err, message) = expect_message(scan_bytes(&file(JPEG_BASELINE, &lying)));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.contains("pixel data fragment 2 at byte"), "{message}");
    // The file ends inside the second fragment.
    let cut = &good[..good.len() - 8 - 40];
    let (err, message) = expect_message(scan_bytes(&file(JPEG_BASELINE, cut)));
    assert!(matches!(err, GuardError::Truncated { size, .. } if size == size_of(cut)), "{message}");
    // The file ends inside a fragment's item header.
    let cut = &good[..12 + 8 + 8 + 100 + 5];
    let (err, message) = expect_message(scan_bytes(&file(JPEG_BASELINE, cut)));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.contains("an item header of the encapsulated pixel data"), "{message}");
    // The file ends after the last fragment, without the delimiter.
    let cut = &good[..good.len() - 8];
    let (err, message) = expect_message(scan_bytes(&file(JPEG_BASELINE, cut)));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.contains("no sequence delimiter"), "{message}");
}

#[test]
fn malformed_encapsulated_pixel_data_are_invalid() {
    let undefined_fragment =
        [head(E::Le, PIXEL_DATA, b"OB", UNDEFINED), item(E::Le, 0), item(E::Le, UNDEFINED), seq_end(E::Le)].concat();
    let odd_table = [head(E::Le, PIXEL_DATA, b"OB", UNDEFINED), item(E::Le, 6), vec![0; 6], seq_end(E::Le)].concat();
    let stray = [head(E::Le, PIXEL_DATA, b"OB", UNDEFINED), item(E::Le, 0), name(E::Le)].concat();
    for (ds, expected) in [
        (undefined_fragment, "has an undefined length"),
        (odd_table, "not a multiple of 4"),
        (stray, "where a fragment item (FFFE,E000) or the sequence delimiter was expected"),
    ] {
        let (err, message) = expect_message(scan_bytes(&file(JPEG_BASELINE, &ds)));
        assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn undefined_lengths_only_where_the_standard_allows_them() {
    let ds = [head(E::Le, PATIENT_NAME, b"UT", UNDEFINED), name(E::Le)].concat();
    let (err, message) = expect_message(scan_bytes(&file(EXPLICIT_LE, &ds)));
    assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
    assert!(message.contains("element (0010,0010) has VR UT and an undefined length"), "{message}");
}

#[test]
fn delimiters_out_of_place_are_invalid() {
    // A sequence delimiter in a data set; an item delimiter in a
    // defined-length item; a sequence delimiter in a defined-length sequence.
    let stray_seq_end = [name(E::Le), seq_end(E::Le)].concat();
    let inner = [name(E::Le), item_end(E::Le)].concat();
    let item_end_in_defined =
        [head(E::Le, REFERENCED_IMAGES, b"SQ", 8 + inner.len() as u32), item(E::Le, inner.len() as u32), inner]
            .concat();
    let seq_end_in_defined = [head(E::Le, REFERENCED_IMAGES, b"SQ", 8), seq_end(E::Le)].concat();
    let not_an_item = [head(E::Le, REFERENCED_IMAGES, b"SQ", UNDEFINED), name(E::Le)].concat();
    for (ds, expected) in [
        (stray_seq_end, "(FFFE,E0DD) where a data element was expected"),
        (item_end_in_defined, "inside an item of defined length"),
        (seq_end_in_defined, "which has a defined length"),
        (not_an_item, "(0010,0010) in sequence (0008,1140) where an item"),
    ] {
        let (err, message) = expect_message(scan_bytes(&file(EXPLICIT_LE, &ds)));
        assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

// --- element count -------------------------------------------------------

#[test]
fn a_million_empty_items_end_quickly() {
    let mut ds = head(E::Le, REFERENCED_IMAGES, b"SQ", UNDEFINED);
    for _ in 0..1_100_000 {
        ds.extend(item(E::Le, 0));
    }
    ds.extend(seq_end(E::Le));
    let bytes = file(EXPLICIT_LE, &ds);
    let start = Instant::now();
    let (err, message) = expect_message(scan_bytes(&bytes));
    assert!(matches!(err, GuardError::TooManyElements { limit: 1_000_000 }), "{message}");
    assert_eq!(
        message,
        "the data set has more than 1000000 element and item headers; refused rather than walked to the end"
    );
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    // Under the limit it passes.
    let limits = Limits { max_elements: 2_000_000, ..Limits::default() };
    assert!(scan_with(&bytes, limits).is_ok());
}

// --- meta information and magic -------------------------------------------

#[test]
fn not_dicom() {
    let (err, message) = expect_message(scan_bytes(&[0u8; 1000]));
    assert!(matches!(err, GuardError::NotDicom(_)));
    assert_eq!(message, "not a DICOM file: no DICM magic at offset 128");
    let (_, message) = expect_message(scan_bytes(b"hello"));
    assert_eq!(message, "not a DICOM file: only 5 bytes, too short for a preamble and DICM magic");
    let (_, message) = expect_message(scan_bytes(b""));
    assert!(message.contains("only 0 bytes"), "{message}");
}

#[test]
fn meta_information_is_bounded() {
    // A meta element declaring more than the file holds (dicom-object
    // allocates (0002,0102) PrivateInformation as declared).
    let mut bytes = [vec![0u8; 128], b"DICM".to_vec(), el(E::Le, Tag(2, 0), b"UL", &100u32.to_le_bytes())].concat();
    bytes.extend(head(E::Le, Tag(2, 0x0102), b"OB", 0xFFFF_FF00));
    bytes.extend([0; 16]);
    let (err, message) = expect_message(scan_bytes(&bytes));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.contains("file meta element (0002,0102)"), "{message}");
    // The group length must come first.
    let bytes = [vec![0u8; 128], b"DICM".to_vec(), name(E::Le)].concat();
    let (err, message) = expect_message(scan_bytes(&bytes));
    assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
    assert!(message.contains("not (0002,0000)"), "{message}");
    // No transfer syntax.
    let body = el(E::Le, Tag(2, 1), b"OB", &[0, 1]);
    let bytes =
        [vec![0u8; 128], b"DICM".to_vec(), el(E::Le, Tag(2, 0), b"UL", &(body.len() as u32).to_le_bytes()), body]
            .concat();
    let (_, message) = expect_message(scan_bytes(&bytes));
    assert!(message.contains("no TransferSyntaxUID"), "{message}");
    // A group length larger than the file: the walk runs into the end.
    let mut bytes = file(EXPLICIT_LE, &[]);
    bytes[132 + 8..132 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let (err, message) = expect_message(scan_bytes(&bytes));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
}

#[test]
fn unknown_transfer_syntaxes_are_named() {
    let (err, message) = expect_message(scan_bytes(&file("1.2.3.4.5", &name(E::Le))));
    assert!(matches!(&err, GuardError::UnsupportedTransferSyntax { uid } if uid == "1.2.3.4.5"), "{message}");
    let odd = file("1.2.840.10008.1.2.1", &name(E::Le)); // padded with NUL
    assert_eq!(scan_bytes(&odd).unwrap().transfer_syntax, "1.2.840.10008.1.2.1");
}

// --- reading discipline --------------------------------------------------

use ferry_testkit::Counting;

#[test]
fn pixel_data_are_skipped_not_read() {
    let bytes = file(EXPLICIT_LE, &[name(E::Le), pixels(E::Le, 10 << 20), name(E::Le)].concat());
    let mut reader = Counting { inner: Cursor::new(&bytes), read: 0 };
    scan(&mut reader, &Limits::default()).unwrap();
    assert!(reader.read < 512, "read {} bytes", reader.read);
}

// --- deflate ---------------------------------------------------------------

/// Raw deflate of `bytes` (what Deflated Explicit VR Little Endian holds).
fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn inflate_len(stream: &[u8]) -> u64 {
    std::io::copy(&mut flate2::read::DeflateDecoder::new(stream), &mut std::io::sink()).unwrap()
}

#[test]
fn the_hand_made_bomb_inflates_as_designed() {
    let stream = deflate_bomb(b"abcd", 1000);
    assert_eq!(inflate_len(&stream), 4 + 1 + 258 * 1000);
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(&stream[..]).read_to_end(&mut out).unwrap();
    assert_eq!(&out[..4], b"abcd");
    assert!(out[4..].iter().all(|&b| b == 0));
}

#[test]
fn deflated_data_sets_are_walked_inflated() {
    let ds = [name(E::Le), nested_undefined(E::Le, 3), pixels(E::Le, 3000)].concat();
    let bytes = [file(DEFLATED, &[]), deflate(&ds)].concat();
    let layout = scan_bytes(&bytes).unwrap();
    assert!(layout.is_deflated());
    let start = dataset_start(DEFLATED);
    assert_eq!(layout.dataset_start, start);
    assert_eq!(layout.pixel_data, Some(PixelData::Native { offset: start + ds.len() as u64 - 3000, length: 3000 }));
    // Nesting is checked in there too.
    let bytes = [file(DEFLATED, &[]), deflate(&nested_undefined(E::Le, 65))].concat();
    assert!(matches!(scan_bytes(&bytes), Err(GuardError::TooDeep { .. })));
    // A deflated data set that ends early.
    let cut = deflate(&ds[..ds.len() - 1000]);
    let (err, message) = expect_message(scan_bytes(&[file(DEFLATED, &[]), cut].concat()));
    assert!(matches!(err, GuardError::Truncated { .. }), "{message}");
    assert!(message.ends_with("(offsets in the inflated data set)"), "{message}");
    // Garbage instead of a deflate stream.
    let (err, message) = expect_message(scan_bytes(&[file(DEFLATED, &[]), vec![0xFF; 64]].concat()));
    assert!(matches!(err, GuardError::Invalid { .. }), "{message}");
}

#[test]
fn a_deflate_bomb_declaring_its_size_is_refused_at_once() {
    // 1 GiB of pixel data, honestly declared, in about a megabyte.
    let gib = 1u64 << 30;
    let matches = (gib - 1).div_ceil(258);
    let prefix = [name(E::Le), head(E::Le, PIXEL_DATA, b"OB", (1 + 258 * matches) as u32)].concat();
    let bytes = [file(DEFLATED, &[]), deflate_bomb(&prefix, matches)].concat();
    assert!(bytes.len() < 1_100_000, "{} bytes", bytes.len());
    let start = Instant::now();
    let (peak, result) = peak_allocation(|| scan_bytes(&bytes));
    let (err, message) = expect_message(result);
    assert!(matches!(err, GuardError::InflateLimit { limit } if limit == 256 << 20), "{message}");
    assert_eq!(
        message,
        "the deflated data set inflates to more than 256 MiB (268435456 bytes), the limit; refused as a possible deflate bomb"
    );
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(peak < 1 << 20, "allocated {peak} bytes");
}

#[test]
fn a_deflate_bomb_hiding_its_size_is_cut_off_at_the_limit() {
    // A private OB declares 15 MiB, honestly; the gigabyte of zeros after
    // it parses as empty elements of unknown VR, so no declared length is
    // too big. Only the inflate cap (and the element count) stop it: here
    // the cap, at 16 MiB.
    let gib = 1u64 << 30;
    let matches = gib / 258;
    let prefix = [name(E::Le), head(E::Le, Tag(0x0009, 0x1010), b"OB", (15 << 20) as u32)].concat();
    let bytes = [file(DEFLATED, &[]), deflate_bomb(&prefix, matches)].concat();
    let limits = Limits { max_inflated: 16 << 20, max_elements: u64::MAX, ..Limits::default() };
    let (peak, result) = peak_allocation(|| scan_with(&bytes, limits));
    let (err, message) = expect_message(result);
    assert!(matches!(err, GuardError::InflateLimit { limit } if limit == 16 << 20), "{message}");
    assert!(peak < 1 << 20, "allocated {peak} bytes");
    // With the default element cap, the zero "elements" stop it first.
    let limits = Limits { max_inflated: 64 << 20, ..Limits::default() };
    let err = scan_with(&bytes, limits).unwrap_err();
    assert!(matches!(err, GuardError::TooManyElements { .. }), "{err}");
}

// --- allocation accounting ---------------------------------------------------

#[global_allocator]
static TRACKING: ferry_testkit::Tracking = ferry_testkit::Tracking;
