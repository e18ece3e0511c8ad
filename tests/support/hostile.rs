//! DICOM files written to hurt a parser: the shapes of issue 7, made byte
//! by byte (dicom-object refuses to write most of them, which is the
//! point). Each is small on disk and large in what it asks for.

use std::io::Write as _;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";

/// Explicit VR little endian element with a 2-byte length.
fn short(out: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// Explicit VR little endian header with a 4-byte length (OB, OW, SQ, UN...).
fn long_header(out: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], len: u32) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
}

fn even(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// Preamble, `DICM` and a file meta group naming `transfer_syntax`.
fn preamble_and_meta(transfer_syntax: &str) -> Vec<u8> {
    let mut meta = Vec::new();
    long_header(&mut meta, 0x0002, 0x0001, b"OB", 2);
    meta.extend_from_slice(&[0, 1]);
    short(&mut meta, 0x0002, 0x0002, b"UI", &even("1.2.840.10008.5.1.4.1.1.1.3"));
    short(&mut meta, 0x0002, 0x0003, b"UI", &even("1.2.826.0.1.3680043.10.1234.7.1"));
    short(&mut meta, 0x0002, 0x0010, b"UI", &even(transfer_syntax));
    short(&mut meta, 0x0002, 0x0012, b"UI", &even("1.2.826.0.1.3680043.10.1234"));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    short(&mut out, 0x0002, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out
}

/// A plausible 16-bit monochrome image header (no pixel data yet).
fn image_header(out: &mut Vec<u8>, rows: u16, columns: u16) {
    short(out, 0x0008, 0x0060, b"CS", &even("IO"));
    short(out, 0x0028, 0x0002, b"US", &1u16.to_le_bytes());
    short(out, 0x0028, 0x0004, b"CS", &even("MONOCHROME2"));
    short(out, 0x0028, 0x0010, b"US", &rows.to_le_bytes());
    short(out, 0x0028, 0x0011, b"US", &columns.to_le_bytes());
    short(out, 0x0028, 0x0100, b"US", &16u16.to_le_bytes());
    short(out, 0x0028, 0x0101, b"US", &12u16.to_le_bytes());
    short(out, 0x0028, 0x0102, b"US", &11u16.to_le_bytes());
    short(out, 0x0028, 0x0103, b"US", &0u16.to_le_bytes());
}

/// Sequences nested `depth` deep (undefined lengths, properly closed),
/// then a small image. A recursive parser needs one stack frame chain
/// per level.
pub fn nested_sequences(depth: usize) -> Vec<u8> {
    let mut out = preamble_and_meta(EXPLICIT_LE);
    for _ in 0..depth {
        // (0008,1115) Referenced Series Sequence, undefined length, one item
        long_header(&mut out, 0x0008, 0x1115, b"SQ", 0xFFFF_FFFF);
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..depth {
        out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]); // item delimitation
        out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]); // sequence delimitation
    }
    image_header(&mut out, 8, 8);
    long_header(&mut out, 0x7FE0, 0x0010, b"OW", 128);
    out.extend(std::iter::repeat_n(0x10u8, 128));
    out
}

/// A ~1.3 KB file whose PixelData declares 0xFFFFFFF0 bytes.
pub fn lying_pixel_length() -> Vec<u8> {
    let mut out = preamble_and_meta(EXPLICIT_LE);
    image_header(&mut out, 4096, 4096);
    // padding so the file looks like a real header
    short(&mut out, 0x0008, 0x103E, b"LO", &even(&"x".repeat(400)));
    long_header(&mut out, 0x7FE0, 0x0010, b"OW", 0xFFFF_FFF0);
    out.extend(std::iter::repeat_n(0u8, 512));
    out
}

/// Deflated Explicit VR Little Endian whose data set inflates to about
/// `inflated` bytes of pixel data (declared consistently: a real bomb).
pub fn deflate_bomb(inflated: u32) -> Vec<u8> {
    let side = ((inflated / 2) as f64).sqrt() as u16;
    let pixels = u32::from(side) * u32::from(side) * 2;
    let mut dataset = Vec::new();
    image_header(&mut dataset, side, side);
    long_header(&mut dataset, 0x7FE0, 0x0010, b"OW", pixels);
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&dataset).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = pixels as usize;
    while left > 0 {
        let n = left.min(zeros.len());
        z.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    let mut out = preamble_and_meta(DEFLATED_LE);
    out.extend_from_slice(&z.finish().unwrap());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_are_what_they_claim() {
        let nested = nested_sequences(5000);
        assert!(nested.len() < 200_000, "{}", nested.len());
        assert_eq!(&nested[128..132], b"DICM");
        let lying = lying_pixel_length();
        assert!((1200..1500).contains(&lying.len()), "{}", lying.len());
        let bomb = deflate_bomb(64 << 20);
        assert!(bomb.len() < 200_000, "{}", bomb.len());
        // the meta group is readable by a real parser
        for f in [&nested, &lying, &bomb] {
            let meta = dicom_object::meta::FileMetaTable::from_reader(&f[128..]).unwrap();
            assert!(meta.transfer_syntax().starts_with("1.2.840.10008.1.2.1"));
        }
    }
}
