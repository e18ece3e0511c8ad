//! The first frame: what the header says it is, where its bytes are, and
//! an in-memory object holding just those bytes for `dicom-pixeldata`.
//!
//! Everything a decoder would size an allocation by is checked here first:
//! the header's Rows × Columns × SamplesPerPixel × BitsAllocated against
//! [`RenderLimits`], the compressed bytes against the same byte budget,
//! a JPEG frame header's dimensions against the DICOM header's (the JPEG
//! decoder allocates by its own header, and the registry copies its output
//! into a buffer sized by DICOM's), an RLE segment table against the
//! fragment (the registry's RLE decoder slices by it and indexes by Rows ×
//! Columns), and deflated frames are inflated here under a cap (the
//! registry's adapter inflates without one).
use std::io::{self, Read, Seek, SeekFrom};

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_guard::{Fragment, Layout, PixelData};
use dicom_object::{DefaultDicomObject, Tag};
use flate2::read::DeflateDecoder;

use crate::{malformed, printable, transfer_syntax, RenderError, RenderLimits};

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
const ENCAPSULATED_UNCOMPRESSED: &str = "1.2.840.10008.1.2.1.98";
const DEFLATED_IMAGE_FRAME: &str = "1.2.840.10008.1.2.8.1";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// JPEG baseline, extended, lossless and lossless SV1 (and the retired
/// processes the registry may know).
fn is_jpeg(uid: &str) -> bool {
    uid.strip_prefix("1.2.840.10008.1.2.4.").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (50..=70).contains(&n))
}

/// What the header says about one frame.
#[derive(Debug, Clone)]
pub(crate) struct FrameSpec {
    pub rows: u16,
    pub cols: u16,
    pub samples: u16,
    pub allocated: u16,
    /// NumberOfFrames (1 when absent or not a positive number).
    pub frames: u64,
    /// Bytes of one decoded frame.
    pub bytes: u64,
    pub ts_uid: String,
    pub ts_name: String,
    pub encapsulated: bool,
}

fn attr_u16(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<Option<u16>, RenderError> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => {
            e.to_int::<u16>().map(Some).map_err(|_| RenderError::Malformed(format!("{name} is not a valid number")))
        }
    }
}

fn required_u16(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<u16, RenderError> {
    attr_u16(obj, tag, name)?.ok_or_else(|| RenderError::Malformed(format!("{name} is missing")))
}

/// `64 megapixels`, or plain pixels when not a whole number of them.
fn pixels_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} megapixels", n >> 20)
    } else {
        format!("{n} pixels")
    }
}

/// `12.5 MiB`.
fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
}

/// Checks what can be checked before any pixel data are read: transfer
/// syntax, photometric interpretation, sample format, size and budget.
pub(crate) fn check_header(obj: &DefaultDicomObject, limits: &RenderLimits) -> Result<FrameSpec, RenderError> {
    let ts = transfer_syntax(obj)?;

    // An object without an image matrix is not an image at all.
    let (Some(rows), Some(cols)) = (attr_u16(obj, tags::ROWS, "Rows")?, attr_u16(obj, tags::COLUMNS, "Columns")?)
    else {
        return Err(RenderError::NoPixelData);
    };
    if rows == 0 || cols == 0 {
        return Err(malformed("Rows or Columns is zero"));
    }
    let pixels = u64::from(rows) * u64::from(cols);
    if pixels > limits.max_frame_pixels {
        return Err(RenderError::TooLarge(format!(
            "{cols} × {rows} pixels; the limit is {} (max_frame_pixels)",
            pixels_text(limits.max_frame_pixels)
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
        _ => return Err(RenderError::UnsupportedPhotometricInterpretation(pi)),
    };
    let expected_samples = if colour { 3 } else { 1 };
    if samples != expected_samples {
        return Err(RenderError::UnsupportedPixelFormat(format!("{samples} samples per pixel for {pi}")));
    }
    if !matches!(allocated, 8 | 16) || (colour && allocated != 8) {
        return Err(RenderError::UnsupportedPixelFormat(format!("{allocated} bits allocated per sample for {pi}")));
    }
    if stored == 0 || stored > allocated {
        return Err(malformed("BitsStored is out of range"));
    }
    let bytes = pixels * u64::from(samples) * u64::from(allocated / 8);
    if bytes > limits.max_frame_bytes {
        return Err(RenderError::TooLarge(format!(
            "a frame of {cols} × {rows} pixels × {samples} samples × {} bytes is {}; the limit is {} (max_frame_bytes)",
            allocated / 8,
            mib(bytes),
            mib(limits.max_frame_bytes)
        )));
    }
    let frames =
        obj.get(tags::NUMBER_OF_FRAMES).and_then(|e| e.to_int::<i64>().ok()).filter(|&n| n >= 1).unwrap_or(1) as u64;
    Ok(FrameSpec {
        rows,
        cols,
        samples,
        allocated,
        frames,
        bytes,
        ts_uid: ts.uid().to_string(),
        ts_name: ts.name().to_string(),
        encapsulated: ts.is_encapsulated_pixel_data(),
    })
}

/// Reads the first frame's bytes (only those) and puts them into `obj` as
/// its pixel data, with NumberOfFrames 1 and a transfer syntax the decoder
/// takes them in.
pub(crate) fn load_first_frame<R: Read + Seek>(
    reader: &mut R,
    layout: &Layout,
    spec: &FrameSpec,
    limits: &RenderLimits,
    obj: &mut DefaultDicomObject,
) -> Result<(), RenderError> {
    match &layout.pixel_data {
        None => Err(RenderError::NoPixelData),
        Some(PixelData::Native { offset, length }) => {
            if spec.encapsulated {
                return Err(RenderError::Malformed(format!(
                    "the pixel data have a defined length, but {} encapsulates them",
                    spec.ts_name
                )));
            }
            if *length < spec.bytes {
                return Err(malformed("the pixel data is shorter than Rows × Columns declare"));
            }
            let mut bytes = read_native(reader, layout, *offset, spec.bytes)?;
            if spec.ts_uid == EXPLICIT_VR_BE && spec.allocated == 16 {
                bytes.chunks_exact_mut(2).for_each(|pair| pair.swap(0, 1));
            }
            put_native(obj, bytes, spec);
            Ok(())
        }
        Some(PixelData::Encapsulated { offset_table, fragments, .. }) => {
            if !spec.encapsulated {
                return Err(RenderError::Malformed(format!(
                    "the pixel data are encapsulated, but {} does not encapsulate them",
                    spec.ts_name
                )));
            }
            let frame = first_frame_fragments(reader, offset_table, fragments, spec, limits)?;
            match spec.ts_uid.as_str() {
                ENCAPSULATED_UNCOMPRESSED => {
                    let mut bytes = frame.concat();
                    if (bytes.len() as u64) < spec.bytes {
                        return Err(malformed("the pixel data is shorter than Rows × Columns declare"));
                    }
                    bytes.truncate(spec.bytes as usize);
                    put_native(obj, bytes, spec);
                }
                DEFLATED_IMAGE_FRAME => {
                    let bytes = inflate_frame(&frame.concat(), spec.bytes)?;
                    put_native(obj, bytes, spec);
                }
                RLE_LOSSLESS => {
                    let first = frame.into_iter().next().unwrap_or_default();
                    check_rle(&first, spec)?;
                    put_fragments(obj, vec![first]);
                }
                uid if is_jpeg(uid) => {
                    check_jpeg(&frame, spec)?;
                    put_fragments(obj, frame);
                }
                _ => put_fragments(obj, frame),
            }
            Ok(())
        }
    }
}

/// `len` bytes of native pixel data at `offset` (for a deflated data set:
/// inflated from `dataset_start`, the guard having bounded the distance).
fn read_native<R: Read + Seek>(reader: &mut R, layout: &Layout, offset: u64, len: u64) -> Result<Vec<u8>, RenderError> {
    let mut out = vec![0u8; len as usize];
    let result = if layout.is_deflated() {
        reader.seek(SeekFrom::Start(layout.dataset_start))?;
        let mut inflater = DeflateDecoder::new(&mut *reader);
        let before = offset - layout.dataset_start;
        io::copy(&mut (&mut inflater).take(before), &mut io::sink()).and_then(|skipped| {
            if skipped < before {
                Err(io::ErrorKind::UnexpectedEof.into())
            } else {
                inflater.read_exact(&mut out)
            }
        })
    } else {
        reader.seek(SeekFrom::Start(offset))?;
        reader.read_exact(&mut out)
    };
    result.map_err(ended_early)?;
    Ok(out)
}

/// The file was whole when the guard looked; ending now means it shrank.
fn ended_early(e: io::Error) -> RenderError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        malformed("the file ended while its first frame was read (is it being written?)")
    } else if e.kind() == io::ErrorKind::InvalidData {
        malformed("the deflated data set is corrupt")
    } else {
        RenderError::Io(e)
    }
}

fn put_native(obj: &mut DefaultDicomObject, bytes: Vec<u8>, spec: &FrameSpec) {
    let vr = if spec.allocated == 8 { VR::OB } else { VR::OW };
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, PrimitiveValue::U8(bytes.into())));
    obj.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("1")));
    obj.update_meta(|meta| meta.transfer_syntax = EXPLICIT_VR_LE.to_string());
}

fn put_fragments(obj: &mut DefaultDicomObject, fragments: Vec<Vec<u8>>) {
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PixelFragmentSequence::new(Vec::<u32>::new(), fragments)));
    obj.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("1")));
}

/// Which fragments hold the first frame, read. In order of preference: all
/// of them for a single frame; the first when there is one per frame; the
/// Basic Offset Table's first entry; for JPEG, up to the fragment that
/// ends with the end-of-image marker.
fn first_frame_fragments<R: Read + Seek>(
    reader: &mut R,
    offset_table: &[u32],
    fragments: &[Fragment],
    spec: &FrameSpec,
    limits: &RenderLimits,
) -> Result<Vec<Vec<u8>>, RenderError> {
    let Some(first) = fragments.first() else {
        return Err(malformed("the encapsulated pixel data have no fragments"));
    };
    let chosen: &[Fragment] = if spec.frames == 1 {
        fragments
    } else if fragments.len() as u64 == spec.frames {
        &fragments[..1]
    } else if offset_table.len() >= 2 {
        // Offsets count from the first fragment's item header.
        let base = first.offset - 8;
        let (from, to) = (u64::from(offset_table[0]), u64::from(offset_table[1]));
        let start = fragments.iter().position(|f| f.offset - 8 - base >= from);
        let end = fragments.iter().position(|f| f.offset - 8 - base >= to).unwrap_or(fragments.len());
        match start {
            Some(start) if start < end => &fragments[start..end],
            _ => return Err(malformed("the basic offset table points at no fragment for the first frame")),
        }
    } else if is_jpeg(&spec.ts_uid) {
        return jpeg_fragments_until_eoi(reader, fragments, limits);
    } else {
        return Err(RenderError::Malformed(format!(
            "cannot tell which of the {} fragments hold the first of {} frames (no basic offset table)",
            fragments.len(),
            spec.frames
        )));
    };
    let total: u64 = chosen.iter().map(|f| f.length).sum();
    check_compressed(total, limits)?;
    chosen.iter().map(|f| read_fragment(reader, f)).collect()
}

fn check_compressed(total: u64, limits: &RenderLimits) -> Result<(), RenderError> {
    if total > limits.max_frame_bytes {
        return Err(RenderError::TooLarge(format!(
            "the first frame's compressed data are {}; the limit is {} (max_frame_bytes)",
            mib(total),
            mib(limits.max_frame_bytes)
        )));
    }
    Ok(())
}

fn read_fragment<R: Read + Seek>(reader: &mut R, f: &Fragment) -> Result<Vec<u8>, RenderError> {
    let mut bytes = vec![0u8; f.length as usize];
    reader.seek(SeekFrom::Start(f.offset))?;
    reader.read_exact(&mut bytes).map_err(ended_early)?;
    Ok(bytes)
}

/// Fragments from the first up to one ending with EOI (`FF D9`, maybe
/// followed by a padding byte), within the byte budget.
fn jpeg_fragments_until_eoi<R: Read + Seek>(
    reader: &mut R,
    fragments: &[Fragment],
    limits: &RenderLimits,
) -> Result<Vec<Vec<u8>>, RenderError> {
    let mut out = Vec::new();
    let mut total = 0;
    for f in fragments {
        total += f.length;
        check_compressed(total, limits)?;
        let bytes = read_fragment(reader, f)?;
        let trimmed = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
        let done = trimmed.ends_with(&[0xFF, 0xD9]);
        out.push(bytes);
        if done {
            return Ok(out);
        }
    }
    Err(malformed("no JPEG end-of-image marker ends the first frame (and there is no basic offset table)"))
}

/// Inflates a Deflated Image Frame Compression frame, refusing to produce
/// more than the frame's size.
fn inflate_frame(deflated: &[u8], bytes: u64) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::with_capacity(bytes as usize);
    DeflateDecoder::new(deflated)
        .take(bytes + 1)
        .read_to_end(&mut out)
        .map_err(|_| malformed("the deflated frame is corrupt"))?;
    match (out.len() as u64).cmp(&bytes) {
        std::cmp::Ordering::Greater => {
            Err(malformed("the deflated frame inflates to more than Rows × Columns declare"))
        }
        std::cmp::Ordering::Less => Err(malformed("the deflated frame is shorter than Rows × Columns declare")),
        std::cmp::Ordering::Equal => Ok(out),
    }
}

/// The frame header of a JPEG stream: (precision, height, width,
/// components), if one comes before the first scan.
pub(crate) fn jpeg_frame_header(data: &[u8]) -> Option<(u8, u16, u16, u8)> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        // Markers may be preceded by fill bytes.
        while *data.get(i)? == 0xFF && *data.get(i + 1)? == 0xFF {
            i += 1;
        }
        if *data.get(i)? != 0xFF {
            return None;
        }
        let marker = *data.get(i + 1)?;
        i += 2;
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            continue; // no length
        }
        let len = usize::from(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let p = data.get(i + 2..i + 8)?;
                return Some((p[0], u16::from_be_bytes([p[1], p[2]]), u16::from_be_bytes([p[3], p[4]]), p[5]));
            }
            0xDA | 0xD9 => return None, // a scan (or the end) before any frame header
            _ => i += len,
        }
    }
}

/// The JPEG decoder sizes its buffers by the JPEG frame header, and the
/// registry copies its output into one sized by Rows × Columns: they must
/// agree.
fn check_jpeg(frame: &[Vec<u8>], spec: &FrameSpec) -> Result<(), RenderError> {
    // The frame header sits in the first few hundred bytes.
    let mut head = Vec::new();
    for f in frame {
        head.extend_from_slice(&f[..f.len().min(65536 - head.len())]);
        if head.len() >= 65536 {
            break;
        }
    }
    let Some((precision, height, width, components)) = jpeg_frame_header(&head) else {
        return Err(malformed("the first frame is not a JPEG stream with a frame header"));
    };
    let sample_bytes = if precision > 8 { 2 } else { 1 };
    if height != spec.rows
        || width != spec.cols
        || u16::from(components) != spec.samples
        || sample_bytes > spec.allocated / 8
    {
        return Err(RenderError::Malformed(format!(
            "the JPEG data are {width} × {height} pixels with {components} components of {precision} bits, \
             but the header says {} × {} with {} samples of {} bits allocated",
            spec.cols, spec.rows, spec.samples, spec.allocated
        )));
    }
    Ok(())
}

/// The registry's RLE decoder slices the fragment by the segment table and
/// indexes each decoded segment by pixel: check both before it runs.
fn check_rle(fragment: &[u8], spec: &FrameSpec) -> Result<(), RenderError> {
    let bad = |what: String| Err(RenderError::Malformed(format!("the RLE data are invalid: {what}")));
    if fragment.len() < 64 {
        return bad(format!("{} bytes, shorter than the 64-byte RLE header", fragment.len()));
    }
    let word = |i: usize| u32::from_le_bytes([fragment[i], fragment[i + 1], fragment[i + 2], fragment[i + 3]]);
    let segments = word(0) as usize;
    let needed = usize::from(spec.samples) * usize::from(spec.allocated / 8);
    if segments < needed || segments > 15 {
        return bad(format!("{segments} segments, where the header needs {needed}"));
    }
    let mut offsets: Vec<usize> = (0..segments).map(|s| word(4 + 4 * s) as usize).collect();
    offsets.push(fragment.len());
    if offsets.windows(2).any(|w| w[0] > w[1]) || offsets[0] < 64 {
        return bad("the segment offsets are out of order or outside the fragment".to_string());
    }
    let pixels = usize::from(spec.rows) * usize::from(spec.cols);
    for s in 0..needed {
        let decoded = packbits_len(&fragment[offsets[s]..offsets[s + 1]], 2 * pixels + 16);
        if decoded < pixels {
            return bad(format!("segment {} decodes to {decoded} bytes for {pixels} pixels", s + 1));
        }
        if decoded > 2 * pixels + 16 {
            return bad(format!("segment {} decodes to more than twice its {pixels} pixels", s + 1));
        }
    }
    Ok(())
}

/// The length a PackBits segment decodes to (as the registry's reader
/// decodes it), counting no further than `stop`.
pub(crate) fn packbits_len(segment: &[u8], stop: usize) -> usize {
    let (mut i, mut out) = (0, 0);
    while i < segment.len() && out <= stop {
        let h = segment[i] as i8;
        i += 1;
        match h {
            -127..=-1 => {
                if i >= segment.len() {
                    break;
                }
                out += (1 - isize::from(h)) as usize;
                i += 1;
            }
            0..=127 => {
                let n = h as usize + 1;
                out += n.min(segment.len() - i);
                i += n;
            }
            -128 => {}
        }
    }
    out
}
