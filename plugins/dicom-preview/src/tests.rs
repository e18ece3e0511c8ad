//! The host's preview tests, moved with the renderer, plus the hostile
//! files it now has to survive by itself. Fixtures are built in memory by
//! [`fixture`] (the host's generator lives in a workspace plugins cannot
//! use).
use std::io::Cursor;
use std::time::Instant;

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, Tag};

use super::pixels::{fit, resize, Gray};
use super::*;
use ferry_testkit::peak_allocation;

mod fixture;
use fixture::{generate, variant, Kind, DEFLATED, PATIENT_NAME};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn gray(file: &[u8]) -> Result<Gray, RenderError> {
    render_gray(Cursor::new(file), &RenderLimits::default())
}

fn png(file: &[u8], max: Option<u32>) -> Result<Picture, RenderError> {
    render(Cursor::new(file), max, &RenderLimits::default())
}

fn set(obj: &mut DefaultDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

fn set_pixels_u16(obj: &mut DefaultDicomObject, values: Vec<u16>) {
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(values.into())));
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
    Decoded { width: info.width, height: info.height, color: info.color_type, depth: info.bit_depth, pixels: buf }
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

/// The error's message, checked for patient data.
fn message(e: &RenderError) -> String {
    let m = e.to_string();
    assert!(!m.contains(PATIENT_NAME) && !m.contains("Erika"), "patient data in {m}");
    m
}

// --- the host's rendering tests ------------------------------------------

#[test]
fn intra_oral_preview_is_8_bit_gray_png_scaled_to_fit() {
    // 300 rows × 400 columns: landscape, 4:3.
    let dcm = generate(Kind::IntraOral, Some((300, 400)));
    let picture = png(&dcm, Some(256)).unwrap();
    assert!(picture.png.starts_with(&PNG_SIGNATURE));
    assert_eq!((picture.width, picture.height), (256, 192));
    let img = decode(&picture.png);
    assert_eq!((img.width, img.height), (256, 192));
    assert_eq!(img.color, png::ColorType::Grayscale);
    assert_eq!(img.depth, png::BitDepth::Eight);
    assert_eq!(img.pixels.len(), 256 * 192);

    let full = decode(&png(&dcm, None).unwrap().png);
    assert_eq!((full.width, full.height), (400, 300));
    // Never enlarged.
    let big = decode(&png(&dcm, Some(4000)).unwrap().png);
    assert_eq!((big.width, big.height), (400, 300));
    assert_eq!(big.pixels, full.pixels);
    // Degenerate sizes still give an image.
    let tiny = decode(&png(&dcm, Some(0)).unwrap().png);
    assert_eq!((tiny.width, tiny.height), (1, 1));
}

#[test]
fn panoramic_and_portrait_keep_their_aspect_ratio() {
    // The default panoramic: 128 rows × 64 columns.
    let px = generate(Kind::Panoramic, None);
    let img = decode(&png(&px, Some(32)).unwrap().png);
    assert_eq!((img.width, img.height), (16, 32));
    // 1500 × 3000, as a real panoramic (cols × rows reversed here).
    let wide = generate(Kind::Panoramic, Some((1500, 3000)));
    let img = decode(&png(&wide, Some(256)).unwrap().png);
    assert_eq!((img.width, img.height), (256, 128));
}

#[test]
fn file_window_gives_a_full_histogram() {
    let dcm = generate(Kind::IntraOral, Some((300, 400)));
    let img = gray(&dcm).unwrap();
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
    let src = generate(Kind::IntraOral, Some((200, 300)));
    // Anatomy in 1000..=1400 of the 12-bit range, plus 20 saturated
    // marker pixels and 20 black ones (0.07 % of the image).
    let dcm = variant(&src, |obj| {
        obj.remove_element(tags::WINDOW_CENTER);
        obj.remove_element(tags::WINDOW_WIDTH);
        let mut values: Vec<u16> = (0..200 * 300_u32).map(|i| (1000 + (i % 300) * 400 / 299) as u16).collect();
        values[..20].fill(4095);
        values[20..40].fill(0);
        set_pixels_u16(obj, values);
    });
    let img = gray(&dcm).unwrap();
    let row = &img.pixels[300..600];
    assert!(row[0] <= 3 && row[299] >= 252, "{} .. {}", row[0], row[299]);
    assert!(distinct(&img.pixels[40..]) > 200);
    // (Min/max would have squeezed the anatomy into ~25 levels.)
}

#[test]
fn monochrome1_is_inverted() {
    let src = generate(Kind::IntraOral, Some((60, 80)));
    let m1 = variant(&src, |obj| set(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME1"));
    let normal = gray(&src).unwrap();
    let inverted = gray(&m1).unwrap();
    let flipped: Vec<u8> = normal.pixels.iter().map(|p| 255 - p).collect();
    assert_close(&inverted.pixels, &flipped, 1);
}

#[test]
fn rescale_is_applied_before_the_window() {
    let src = generate(Kind::IntraOral, Some((60, 80)));
    // Values shifted by +1000 and the window with them: same picture.
    let shifted = variant(&src, |obj| {
        set(obj, tags::RESCALE_INTERCEPT, VR::DS, "1000");
        set(obj, tags::WINDOW_CENTER, VR::DS, "3048");
    });
    assert_close(&gray(&shifted).unwrap().pixels, &gray(&src).unwrap().pixels, 1);
    // A window narrowed to the upper half: the darker half goes black.
    let narrow = variant(&src, |obj| {
        set(obj, tags::WINDOW_CENTER, VR::DS, "3072");
        set(obj, tags::WINDOW_WIDTH, VR::DS, "2048");
    });
    let img = gray(&narrow).unwrap();
    assert_eq!(img.pixels[0], 0);
    assert!(img.pixels.iter().filter(|&&p| p == 0).count() > img.pixels.len() / 3);
}

#[test]
fn voi_lut_functions_are_applied() {
    let src = generate(Kind::IntraOral, Some((60, 80)));
    let with = |function: &str| {
        let dcm = variant(&src, |obj| set(obj, tags::VOILUT_FUNCTION, VR::CS, function));
        gray(&dcm).unwrap().pixels
    };
    let linear = with("LINEAR");
    assert_eq!(linear, gray(&src).unwrap().pixels);
    // LINEAR_EXACT over the same window differs by at most rounding.
    assert_close(&with("LINEAR_EXACT"), &linear, 1);
    // SIGMOID has the same slope in the middle and never reaches black or
    // white: lighter darks, darker lights.
    let sigmoid = with("SIGMOID");
    let (dark, light) = (linear.iter().position(|&p| p < 32).unwrap(), linear.iter().position(|&p| p > 224).unwrap());
    assert!(sigmoid[dark] > linear[dark] + 8, "{} vs {}", sigmoid[dark], linear[dark]);
    assert!(sigmoid[light] + 8 < linear[light], "{} vs {}", sigmoid[light], linear[light]);
}

#[test]
fn eight_bit_images_without_a_window_use_the_full_range() {
    let src = generate(Kind::IntraOral, Some((2, 128)));
    let dcm = variant(&src, |obj| {
        obj.remove_element(tags::WINDOW_CENTER);
        obj.remove_element(tags::WINDOW_WIDTH);
        set(obj, tags::BITS_ALLOCATED, VR::US, 8_u16);
        set(obj, tags::BITS_STORED, VR::US, 8_u16);
        set(obj, tags::HIGH_BIT, VR::US, 7_u16);
        // 100..=227: a percentile window would stretch it to 0..=255.
        let values: Vec<u8> = (0..256u32).map(|i| (100 + i % 128) as u8).collect();
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(values.clone().into())));
    });
    let img = gray(&dcm).unwrap();
    assert_eq!(&img.pixels[..128], &(100..228).map(|v| v as u8).collect::<Vec<_>>()[..]);
}

#[test]
fn signed_samples_are_sign_extended() {
    let src = generate(Kind::IntraOral, Some((10, 100)));
    // 12-bit two's complement, -2000..=2000 left to right, window 0/4096.
    let dcm = variant(&src, |obj| {
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
    let img = gray(&dcm).unwrap();
    let row = &img.pixels[..100];
    assert!(row[0] < 10 && row[99] > 245, "{} .. {}", row[0], row[99]);
    assert!(row.windows(2).all(|w| w[0] <= w[1]), "not monotonic: {row:?}");
}

#[test]
fn multi_frame_shows_the_first_frame() {
    let src = generate(Kind::IntraOral, Some((40, 50)));
    let dcm = variant(&src, |obj| {
        let mut values: Vec<u16> = obj.get(tags::PIXEL_DATA).unwrap().to_multi_int::<u16>().unwrap();
        values.extend(std::iter::repeat_n(4095, 40 * 50));
        set_pixels_u16(obj, values);
        set(obj, tags::NUMBER_OF_FRAMES, VR::IS, "2");
    });
    assert_eq!(gray(&dcm).unwrap(), gray(&src).unwrap());
}

#[test]
fn rgb_is_rendered_as_luma() {
    let src = generate(Kind::IntraOral, Some((2, 2)));
    let dcm = variant(&src, |obj| {
        set(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
        set(obj, tags::SAMPLES_PER_PIXEL, VR::US, 3_u16);
        set(obj, tags::PLANAR_CONFIGURATION, VR::US, 0_u16);
        set(obj, tags::BITS_ALLOCATED, VR::US, 8_u16);
        set(obj, tags::BITS_STORED, VR::US, 8_u16);
        set(obj, tags::HIGH_BIT, VR::US, 7_u16);
        obj.remove_element(tags::WINDOW_CENTER);
        obj.remove_element(tags::WINDOW_WIDTH);
        let rgb: Vec<u8> = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(rgb.into())));
    });
    assert_eq!(gray(&dcm).unwrap().pixels, vec![76, 150, 29, 255]);
}

/// `src` transcoded to JPEG baseline (8 bits, so without the 12-bit window).
fn jpeg_of(src: &[u8]) -> Vec<u8> {
    use dicom_pixeldata::Transcode;
    variant(src, |obj| {
        obj.remove_element(tags::WINDOW_CENTER);
        obj.remove_element(tags::WINDOW_WIDTH);
        let ts = TransferSyntaxRegistry.get("1.2.840.10008.1.2.4.50").unwrap();
        obj.transcode(ts).unwrap();
    })
}

#[test]
fn jpeg_baseline_is_decoded() {
    let dcm = jpeg_of(&generate(Kind::IntraOral, Some((120, 160))));
    let obj = dicom_object::from_reader(&dcm[128..]).unwrap();
    assert_eq!(obj.meta().transfer_syntax(), "1.2.840.10008.1.2.4.50");
    let img = gray(&dcm).unwrap();
    assert_eq!((img.width, img.height), (160, 120));
    assert!(distinct(&img.pixels) > 50);
    assert!(img.pixels[0] < img.pixels[img.pixels.len() - 1]);
}

#[test]
fn unsupported_transfer_syntax_is_named() {
    let src = generate(Kind::IntraOral, None);
    let dcm = variant(&src, |obj| {
        obj.update_meta(|meta| meta.transfer_syntax = "1.2.840.10008.1.2.4.90".to_string());
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new_fragments(vec![vec![0xff, 0x4f, 0xff, 0x51]]),
        ));
    });
    let err = png(&dcm, None).unwrap_err();
    assert!(
        matches!(&err, RenderError::UnsupportedTransferSyntax { uid, .. } if uid == "1.2.840.10008.1.2.4.90"),
        "{err:?}"
    );
    assert!(message(&err).contains("JPEG 2000"), "{err}");
}

#[test]
fn unsupported_photometric_interpretation_is_named() {
    let src = generate(Kind::IntraOral, None);
    let dcm = variant(&src, |obj| set(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "PALETTE COLOR"));
    let err = png(&dcm, None).unwrap_err();
    assert!(matches!(err, RenderError::UnsupportedPhotometricInterpretation(_)));
    assert_eq!(err.to_string(), "unsupported photometric interpretation: PALETTE COLOR");
}

#[test]
fn broken_and_foreign_files_are_errors_without_patient_data() {
    let src = generate(Kind::IntraOral, None);
    let corrupt = generate(Kind::Corrupt, None);
    let text = generate(Kind::NotDicom, None);
    let no_pixels = variant(&src, |obj| {
        obj.remove_element(tags::PIXEL_DATA);
    });
    let not_an_image = variant(&src, |obj| {
        for tag in [tags::PIXEL_DATA, tags::ROWS, tags::COLUMNS] {
            obj.remove_element(tag);
        }
    });
    let short = variant(&src, |obj| set_pixels_u16(obj, vec![0; 100]));

    let check = |file: &[u8], expected: &dyn Fn(&RenderError) -> bool| {
        let err = png(file, Some(64)).unwrap_err();
        assert!(expected(&err), "{err:?}");
        message(&err)
    };
    // The header claims 1024 bytes for PatientName, with 9 left.
    let m = check(&corrupt, &|e| matches!(e, RenderError::Malformed(_)));
    assert!(m.starts_with("malformed DICOM file: truncated at byte "), "{m}");
    assert!(m.contains("element (0010,0010) at byte"), "{m}");
    let m = check(&text, &|e| matches!(e, RenderError::NotDicom(_)));
    assert_eq!(m, "not a DICOM file: no DICM magic at offset 128");
    check(b"", &|e| matches!(e, RenderError::NotDicom(_)));
    check(&no_pixels, &|e| matches!(e, RenderError::NoPixelData));
    check(&not_an_image, &|e| matches!(e, RenderError::NoPixelData));
    let m = check(&short, &|e| matches!(e, RenderError::Malformed(_)));
    assert!(m.contains("shorter"), "{m}");
}

#[test]
fn oversized_frames_are_refused_before_decoding() {
    let src = generate(Kind::IntraOral, None);
    let dcm = variant(&src, |obj| {
        set(obj, tags::ROWS, VR::US, 60000_u16);
        set(obj, tags::COLUMNS, VR::US, 60000_u16);
    });
    let err = png(&dcm, None).unwrap_err();
    assert!(matches!(err, RenderError::TooLarge(_)), "{err:?}");
    assert_eq!(err.to_string(), "too large: 60000 × 60000 pixels; the limit is 64 megapixels (max_frame_pixels)");
}

#[test]
fn resize_averages_and_keeps_flat_areas_flat() {
    let flat = Gray { width: 97, height: 31, pixels: vec![137; 97 * 31] };
    let small = resize(&flat, 10, 3);
    assert!(small.pixels.iter().all(|&p| p == 137), "{:?}", small.pixels);
    // A 1-pixel checkerboard averages to mid-gray.
    let checker = Gray {
        width: 64,
        height: 64,
        pixels: (0..64 * 64).map(|i| if (i % 64 + i / 64) % 2 == 0 { 0 } else { 255 }).collect(),
    };
    let small = resize(&checker, 8, 8);
    assert!(small.pixels.iter().all(|&p| p.abs_diff(128) <= 2), "{:?}", small.pixels);
}

// --- transfer syntaxes ---------------------------------------------------

#[test]
fn every_native_encoding_renders_the_same_picture() {
    let src = generate(Kind::IntraOral, Some((50, 70)));
    let reference = gray(&src).unwrap();
    for ts in ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", DEFLATED] {
        let dcm = fixture::retarget(&src, ts);
        let obj = dicom_object::from_reader(&dcm[128..]).unwrap();
        assert_eq!(obj.meta().transfer_syntax(), ts);
        assert_eq!(gray(&dcm).unwrap_or_else(|e| panic!("{ts}: {e}")), reference, "{ts}");
    }
}

#[test]
fn encapsulated_uncompressed_and_deflated_frames_render() {
    let src = generate(Kind::IntraOral, Some((50, 70)));
    let reference = gray(&src).unwrap();
    let raw = fixture::pixel_bytes(&src);
    for (ts, fragment) in [("1.2.840.10008.1.2.1.98", raw.clone()), ("1.2.840.10008.1.2.8.1", fixture::deflate(&raw))] {
        let dcm = fixture::encapsulate(&src, ts, vec![fragment], &[]);
        assert_eq!(gray(&dcm).unwrap_or_else(|e| panic!("{ts}: {e}")), reference, "{ts}");
    }
}

#[test]
fn rle_lossless_renders() {
    let src = generate(Kind::IntraOral, Some((50, 70)));
    let reference = gray(&src).unwrap();
    let rle = fixture::rle(&fixture::pixel_bytes(&src), 2);
    let dcm = fixture::encapsulate(&src, "1.2.840.10008.1.2.5", vec![rle.clone()], &[]);
    assert_eq!(gray(&dcm).unwrap(), reference);
    // A segment table pointing past the fragment: an error, not a panic.
    let mut bad = rle.clone();
    bad[8..12].copy_from_slice(&(rle.len() as u32 + 100).to_le_bytes());
    let err = gray(&fixture::encapsulate(&src, "1.2.840.10008.1.2.5", vec![bad], &[])).unwrap_err();
    assert!(message(&err).contains("the RLE data are invalid"), "{err}");
    // Segments that decode short (the registry would index past them).
    let short = fixture::rle(&fixture::pixel_bytes(&src)[..2 * 50 * 60], 2);
    let err = gray(&fixture::encapsulate(&src, "1.2.840.10008.1.2.5", vec![short], &[])).unwrap_err();
    assert!(message(&err).contains("decodes to 3000 bytes for 3500 pixels"), "{err}");
}

#[test]
fn packbits_lengths() {
    assert_eq!(frame::packbits_len(&[2, 1, 2, 3], 100), 3); // literal run
    assert_eq!(frame::packbits_len(&[0xFE, 7], 100), 3); // repeat run
    assert_eq!(frame::packbits_len(&[0x80, 0, 9], 100), 1); // no-op, literal
    assert_eq!(frame::packbits_len(&[0x81, 7, 0x81, 7, 0x81, 7], 1000), 384);
    assert!(frame::packbits_len(&[0x81, 7].repeat(1000), 300) < 500); // stops counting
}

// --- multi-frame: one frame's bytes ----------------------------------------

use ferry_testkit::Counting;

#[test]
fn only_the_first_frame_is_read() {
    // 40 frames of 200 × 300 × 16 bits: 4.8 MB of pixel data.
    let src = generate(Kind::IntraOral, Some((200, 300)));
    let frame_bytes = 200 * 300 * 2;
    let dcm = variant(&src, |obj| {
        let first: Vec<u16> = obj.get(tags::PIXEL_DATA).unwrap().to_multi_int::<u16>().unwrap();
        let mut values = first.clone();
        for _ in 1..40 {
            values.extend(std::iter::repeat_n(4095, first.len()));
        }
        set_pixels_u16(obj, values);
        set(obj, tags::NUMBER_OF_FRAMES, VR::IS, "40");
    });
    let mut reader = Counting { inner: Cursor::new(&dcm), read: 0 };
    let picture = render(&mut reader, Some(64), &RenderLimits::default()).unwrap();
    assert_eq!((picture.width, picture.height), (64, 43));
    assert!(reader.read < frame_bytes + 16 * 1024, "read {} of {} bytes", reader.read, dcm.len());
    assert_eq!(gray(&dcm).unwrap(), gray(&src).unwrap());
}

#[test]
fn encapsulated_multi_frame_finds_the_first_frame() {
    let one = generate(Kind::IntraOral, Some((60, 80)));
    let jpeg = jpeg_of(&one);
    let reference = gray(&jpeg).unwrap();
    let first = fixture::fragments(&jpeg).remove(0);
    let other = fixture::fragments(&jpeg_of(&variant(&one, |obj| {
        set_pixels_u16(obj, vec![4095; 60 * 80]);
    })))
    .remove(0);
    let three = |fragments: Vec<Vec<u8>>, table: &[u32]| {
        let dcm = fixture::encapsulate(&jpeg, "1.2.840.10008.1.2.4.50", fragments, table);
        variant(&dcm, |obj| set(obj, tags::NUMBER_OF_FRAMES, VR::IS, "3"))
    };
    // One fragment per frame.
    let dcm = three(vec![first.clone(), other.clone(), other.clone()], &[]);
    assert_eq!(gray(&dcm).unwrap(), reference);
    // The first frame split in two fragments, found through the offset table.
    let (a, b) = first.split_at((first.len() / 2) & !1);
    let second = (a.len() + 8 + b.len() + 8) as u32;
    let table = [0, second, second + other.len() as u32 + 8];
    let dcm = three(vec![a.to_vec(), b.to_vec(), other.clone(), other.clone()], &table);
    assert_eq!(gray(&dcm).unwrap(), reference);
    // ... or, without an offset table, through the end-of-image marker.
    let dcm = three(vec![a.to_vec(), b.to_vec(), other.clone(), other.clone()], &[]);
    assert_eq!(gray(&dcm).unwrap(), reference);
    // Without either, an error that says why.
    let cut = first[..first.len() - 2].to_vec();
    let dcm = three(vec![cut.clone(), cut.clone(), cut.clone(), cut], &[]);
    let err = gray(&dcm).unwrap_err();
    assert!(message(&err).contains("no JPEG end-of-image marker"), "{err}");
}

#[test]
fn jpeg_headers_must_match_the_dicom_header() {
    let jpeg = jpeg_of(&generate(Kind::IntraOral, Some((120, 160))));
    // A JPEG decoder sizes its buffers by the JPEG header; the registry
    // copies its output into Rows × Columns. A mismatch is refused.
    let dcm = variant(&jpeg, |obj| set(obj, tags::ROWS, VR::US, 100_u16));
    let err = gray(&dcm).unwrap_err();
    assert_eq!(
        message(&err),
        "malformed DICOM file: the JPEG data are 160 × 120 pixels with 1 components of 8 bits, but the header says 160 × 100 with 1 samples of 8 bits allocated"
    );
    // A JPEG header claiming 65535 × 65535 pixels, the same.
    let mut fragment = fixture::fragments(&jpeg).remove(0);
    let sof = fragment.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    fragment[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let dcm = fixture::encapsulate(&jpeg, "1.2.840.10008.1.2.4.50", vec![fragment], &[]);
    let err = gray(&dcm).unwrap_err();
    assert!(message(&err).contains("the JPEG data are 65535 × 65535 pixels"), "{err}");
    // Not JPEG at all.
    let dcm = fixture::encapsulate(&jpeg, "1.2.840.10008.1.2.4.50", vec![vec![1, 2, 3, 4]], &[]);
    let err = gray(&dcm).unwrap_err();
    assert!(message(&err).contains("not a JPEG stream"), "{err}");
    assert_eq!(frame::jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]), None);
}

// --- hostile files -------------------------------------------------------

#[test]
fn thousands_of_nested_sequences_are_an_error_not_an_overflow() {
    let dcm = fixture::with_raw(&generate(Kind::IntraOral, None), &fixture::nested(5000));
    let err = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || gray(&dcm).unwrap_err().to_string())
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert!(err.starts_with("malformed DICOM file: the data set nests sequences deeper than 64 levels"), "{err}");
    // 64 levels are fine.
    let dcm = fixture::with_raw(&generate(Kind::IntraOral, None), &fixture::nested(64));
    assert!(gray(&dcm).is_ok());
}

#[test]
fn pixel_data_declaring_4_gib_are_truncated_without_allocating_them() {
    let mut dcm = generate(Kind::IntraOral, Some((10, 10)));
    let len_at = dcm.len() - 200 - 4;
    dcm[len_at..len_at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let (peak, result) = peak_allocation(|| gray(&dcm));
    let err = result.unwrap_err();
    let m = message(&err);
    let value = dcm.len() as u64 - 200;
    assert_eq!(
        m,
        format!(
            "malformed DICOM file: truncated at byte {} of {}: the pixel data (7FE0,0010) at byte {value} declares 4294967280 bytes",
            value + 0xFFFF_FFF0,
            dcm.len()
        )
    );
    assert!(peak < 1 << 20, "allocated {peak} bytes");
}

#[test]
fn a_file_cut_inside_its_pixel_data_is_malformed() {
    let dcm = generate(Kind::IntraOral, Some((100, 100)));
    let err = gray(&dcm[..dcm.len() - 5000]).unwrap_err();
    assert!(message(&err).starts_with("malformed DICOM file: truncated at byte"), "{err}");
}

#[test]
fn a_deflate_bomb_is_refused_quickly() {
    // 1 GiB of pixel data, honestly declared, in about a megabyte.
    let dcm = fixture::deflate_bomb(&generate(Kind::IntraOral, Some((10, 10))), 1 << 30);
    assert!(dcm.len() < 1_200_000, "{} bytes", dcm.len());
    let start = Instant::now();
    let (peak, result) = peak_allocation(|| gray(&dcm));
    let err = result.unwrap_err();
    assert!(matches!(err, RenderError::TooLarge(_)), "{err:?}");
    assert!(message(&err).starts_with("too large: the deflated data set inflates to more than 256 MiB"), "{err}");
    assert!(start.elapsed().as_secs() < 2, "{:?}", start.elapsed());
    assert!(peak < 2 << 20, "allocated {peak} bytes");
}

#[test]
fn a_deflated_frame_bomb_is_cut_off_at_the_frame_size() {
    let src = generate(Kind::IntraOral, Some((50, 70)));
    let bomb = fixture::deflate(&vec![0u8; 64 << 20]);
    let dcm = fixture::encapsulate(&src, "1.2.840.10008.1.2.8.1", vec![bomb], &[]);
    let (peak, result) = peak_allocation(|| gray(&dcm));
    let err = result.unwrap_err();
    assert!(message(&err).contains("inflates to more than Rows × Columns declare"), "{err}");
    assert!(peak < 2 << 20, "allocated {peak} bytes");
}

#[test]
fn the_byte_budget_refuses_big_frames_with_too_large() {
    let dcm = generate(Kind::IntraOral, Some((300, 400)));
    let limits = RenderLimits { max_frame_bytes: 100_000, ..RenderLimits::default() };
    let err = render(Cursor::new(&dcm), None, &limits).map(|p| p.width).unwrap_err();
    assert_eq!(
        message(&err),
        "too large: a frame of 400 × 300 pixels × 1 samples × 2 bytes is 0.2 MiB; the limit is 0.1 MiB (max_frame_bytes)"
    );
    let limits = RenderLimits { max_frame_pixels: 1000, ..RenderLimits::default() };
    let err = render(Cursor::new(&dcm), None, &limits).map(|p| p.width).unwrap_err();
    assert_eq!(message(&err), "too large: 400 × 300 pixels; the limit is 1000 pixels (max_frame_pixels)");
    // Compressed data count against the budget too.
    let jpeg = jpeg_of(&dcm);
    let limits = RenderLimits { max_frame_bytes: 240_000, ..RenderLimits::default() };
    let fragment = fixture::fragments(&jpeg).remove(0);
    let copies = 240_000 / fragment.len() + 1;
    let big = fixture::encapsulate(&jpeg, "1.2.840.10008.1.2.4.50", vec![fragment; copies], &[]);
    let err = render(Cursor::new(&big), None, &limits).map(|p| p.width).unwrap_err();
    assert!(message(&err).starts_with("too large: the first frame's compressed data are"), "{err}");
}

#[test]
fn a_render_peaks_at_two_frames_and_one_byte_per_pixel() {
    // The documented budget: the frame read from the file, the decoder's
    // copy of it, and the 8-bit picture; nothing proportional to the file.
    let (rows, cols) = (1024u16, 1024u16);
    let src = generate(Kind::IntraOral, Some((rows, cols)));
    let dcm = variant(&src, |obj| {
        let first: Vec<u16> = obj.get(tags::PIXEL_DATA).unwrap().to_multi_int::<u16>().unwrap();
        let mut values = first.clone();
        values.extend(std::iter::repeat_n(7, 3 * first.len()));
        set_pixels_u16(obj, values);
        set(obj, tags::NUMBER_OF_FRAMES, VR::IS, "4");
    });
    let (pixels, frame) = (usize::from(rows) * usize::from(cols), 2 * usize::from(rows) * usize::from(cols));
    let (peak, picture) = peak_allocation(|| png(&dcm, Some(256)).unwrap());
    assert_eq!((picture.width, picture.height), (256, 256));
    assert!(peak < 2 * frame + pixels + (512 << 10), "peak {peak} bytes for a {frame}-byte frame");
    assert!(peak > 2 * frame, "peak {peak}: the measurement is off");
}

// --- config --------------------------------------------------------------

#[test]
fn config_keys_and_their_bounds() {
    assert_eq!(RenderLimits::from_config("{}").unwrap(), RenderLimits::default());
    let limits = RenderLimits::from_config(r#"{"max_frame_pixels": 1000000, "max_frame_bytes": 4096}"#).unwrap();
    assert_eq!((limits.max_frame_pixels, limits.max_frame_bytes), (1_000_000, 4096));
    let err = RenderLimits::from_config(r#"{"max_frame_bytes": 2147483648}"#).unwrap_err();
    assert_eq!(
        err,
        "invalid [config]: max_frame_bytes = 2147483648 is out of range; it must be between 1 and 1073741824"
    );
    let err = RenderLimits::from_config(r#"{"max_frame_pixels": 0}"#).unwrap_err();
    assert!(err.contains("max_frame_pixels = 0 is out of range"), "{err}");
    let err = RenderLimits::from_config(r#"{"max_pixels": 5}"#).unwrap_err();
    assert!(err.starts_with("invalid [config]: unknown field `max_pixels`"), "{err}");
}

// --- allocation accounting -------------------------------------------------

#[global_allocator]
static TRACKING: ferry_testkit::Tracking = ferry_testkit::Tracking;

/// `cargo test -p dicom-preview --release timing -- --ignored --nocapture`
#[test]
#[ignore = "timing report, not a check"]
fn timing() {
    let dcm = generate(Kind::IntraOral, Some((1024, 1280)));
    for (label, max) in [("256", Some(256)), ("full", None)] {
        let mut best = std::time::Duration::MAX;
        let mut bytes = 0;
        for _ in 0..5 {
            let start = Instant::now();
            bytes = png(&dcm, max).unwrap().png.len();
            best = best.min(start.elapsed());
        }
        println!("{} B intra-oral 1280x1024 @ {label}: render {best:?} (best of 5), PNG {bytes} B", dcm.len());
    }
    let t = Instant::now();
    let img = gray(&dcm).unwrap();
    let t_gray = t.elapsed();
    let t = Instant::now();
    let small = fit(img.clone(), 256);
    let t_fit = t.elapsed();
    let t = Instant::now();
    pixels::encode_png(&small).unwrap();
    let t_small = t.elapsed();
    println!("scan+read+decode+window {t_gray:?}, resize to 256 {t_fit:?}, PNG 256 {t_small:?}");
}
