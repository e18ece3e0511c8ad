//! The mutations: from seed files to hostile inputs.
//!
//! Each input is one seed with one or a few stacked mutations, chosen by
//! an [`Rng`] that depends only on `(--seed, input number)`, so any input
//! can be made again from its number. Most mutations aim at element
//! headers found by [`scan`]: lengths rewritten (zero, odd, undefined,
//! past the end, 0xFFFFFFF0), VRs and tags swapped, items and delimiters
//! inserted, elements duplicated or cut, sequences nested thousands deep,
//! pixel attributes (rows, bits, frames, photometric interpretation) set to
//! edge values, the transfer syntax swapped, two seeds spliced. Deflated
//! files are inflated, mutated and deflated again, so the parser behind
//! the inflater is reached too. The rest is classic byte-level noise.
use std::io::{Read, Write};

use crate::rng::Rng;
use crate::scan::{scan, scan_dataset, Header, Layout, Syntax};

/// Largest input made (bigger ones are cut).
pub const MAX_INPUT: usize = 1 << 20;

/// A seed file, walked once.
#[derive(Debug, Clone)]
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
    pub layout: Layout,
}

impl Seed {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Seed {
        let layout = scan(&bytes);
        Seed { name: name.into(), bytes, layout }
    }
}

/// An input and how it was made.
#[derive(Debug, Clone)]
pub struct Input {
    pub bytes: Vec<u8>,
    /// The seed it was made from.
    pub seed: String,
    /// The mutations applied, in order.
    pub mutations: Vec<String>,
}

const INTERESTING_U8: [u8; 10] = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF, 0x20, 0x10, 0x08];
const INTERESTING_U16: [u16; 14] = [0, 1, 2, 3, 7, 8, 12, 16, 17, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 0x00FF];
const INTERESTING_U32: [u32; 14] = [
    0,
    1,
    2,
    3,
    0xFF,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFF0,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
    0xFFFE_E000,
    0xFFFE_E0DD,
];

/// Tags worth putting where another tag was.
const TAGS: [(u16, u16); 22] = [
    (0x7FE0, 0x0010), // PixelData
    (0x0028, 0x0010), // Rows
    (0x0028, 0x0011), // Columns
    (0x0028, 0x0100), // BitsAllocated
    (0x0028, 0x0101), // BitsStored
    (0x0028, 0x0102), // HighBit
    (0x0028, 0x0002), // SamplesPerPixel
    (0x0028, 0x0008), // NumberOfFrames
    (0x0028, 0x0004), // PhotometricInterpretation
    (0x0028, 0x0006), // PlanarConfiguration
    (0x0028, 0x0103), // PixelRepresentation
    (0x0028, 0x1050), // WindowCenter
    (0x0028, 0x1052), // RescaleIntercept
    (0x0002, 0x0010), // TransferSyntaxUID
    (0x0002, 0x0000), // group length
    (0x0008, 0x0005), // SpecificCharacterSet
    (0x0008, 0x2218), // AnatomicRegionSequence
    (0xFFFE, 0xE000), // Item
    (0xFFFE, 0xE00D), // ItemDelimitationItem
    (0xFFFE, 0xE0DD), // SequenceDelimitationItem
    (0x0009, 0x0010), // private creator
    (0xFFFF, 0xFFFF),
];

const VRS: [&[u8; 2]; 20] = [
    b"SQ", b"OB", b"OW", b"OF", b"OD", b"UN", b"UT", b"UC", b"US", b"UL", b"SS", b"SL", b"FD", b"FL", b"AT", b"DS",
    b"IS", b"CS", b"XX", b"\0\0",
];

/// Value strings for IS/DS/CS pixel attributes and UIDs.
const STRINGS: [&str; 18] = [
    "0",
    "-1",
    "1",
    "99999999",
    "4294967296",
    "-2147483648",
    "1e308",
    "NaN",
    "inf",
    "RGB",
    "MONOCHROME1",
    "MONOCHROME2",
    "PALETTE COLOR",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_RCT",
    "",
    "\\\\\\",
];

const TRANSFER_SYNTAXES: [&str; 16] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.5",
    "1.2.3",
    "",
];

/// Nesting depths tried: shallow, around common caps, far past any stack.
const DEPTHS: [usize; 12] = [1, 2, 3, 8, 63, 64, 65, 128, 500, 1000, 2000, 5000];

fn put_u16(b: &mut [u8], at: usize, v: u16, little: bool) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32, little: bool) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
    }
}

fn tag_bytes(group: u16, element: u16, little: bool) -> [u8; 4] {
    let (g, e) = if little {
        (group.to_le_bytes(), element.to_le_bytes())
    } else {
        (group.to_be_bytes(), element.to_be_bytes())
    };
    [g[0], g[1], e[0], e[1]]
}

fn u32_bytes(v: u32, little: bool) -> [u8; 4] {
    if little {
        v.to_le_bytes()
    } else {
        v.to_be_bytes()
    }
}

/// Mutates `bytes` in place with one operator; returns its name (with
/// the detail that makes it reproducible by hand).
fn mutate_once(bytes: &mut Vec<u8>, corpus: &[Seed], rng: &mut Rng) -> String {
    let layout = scan(bytes);
    if layout.syntax == Some(Syntax::Deflated) && rng.one_in(2) {
        if let Some(name) = mutate_deflated(bytes, &layout, corpus, rng) {
            return name;
        }
    }
    let headers = &layout.headers;
    let data_headers: Vec<Header> = headers.iter().filter(|h| h.group != 0x0002).copied().collect();
    let little = data_headers.first().is_none_or(|h| h.little);
    let explicit = layout.syntax != Some(Syntax::ImplicitLe);
    // Structural mutations first, when there is structure.
    if !headers.is_empty() && rng.below(10) < 7 {
        if let Some(name) =
            mutate_structure(bytes, headers, &data_headers, layout.dataset_at, little, explicit, &layout, corpus, rng)
        {
            return name;
        }
    }
    mutate_bytes(bytes, corpus, rng)
}

#[allow(clippy::too_many_arguments)]
fn mutate_structure(
    bytes: &mut Vec<u8>,
    headers: &[Header],
    data_headers: &[Header],
    dataset_at: usize,
    little: bool,
    explicit: bool,
    layout: &Layout,
    corpus: &[Seed],
    rng: &mut Rng,
) -> Option<String> {
    let h = *rng.pick(headers);
    let len = bytes.len();
    Some(match rng.below(12) {
        0 | 1 => {
            // A declared length: the first thing a parser trusts.
            let remaining = len.saturating_sub(h.value_at) as u32;
            let v = match rng.below(9) {
                0 => 0,
                1 => h.len.wrapping_add(1),
                2 => h.len.wrapping_sub(1),
                3 => h.len.wrapping_mul(2),
                4 => remaining.wrapping_add(rng.below(64) as u32 + 1),
                5 => remaining.wrapping_sub(rng.below(8) as u32),
                6 => 0xFFFF_FFFF,
                7 => 0xFFFF_FFF0,
                _ => *rng.pick(&INTERESTING_U32),
            };
            if h.len_width == 2 {
                let v = if v == 0xFFFF_FFFF { 0xFFFF } else { v as u16 };
                put_u16(bytes, h.len_at, v, h.little);
                format!("length of ({:04X},{:04X}) at {} -> {v:#x}", h.group, h.element, h.at)
            } else {
                put_u32(bytes, h.len_at, v, h.little);
                format!("length of ({:04X},{:04X}) at {} -> {v:#x}", h.group, h.element, h.at)
            }
        }
        2 => {
            let (g, e) = *rng.pick(&TAGS);
            let t = tag_bytes(g, e, h.little);
            bytes[h.at..h.at + 4].copy_from_slice(&t);
            format!("tag at {} ({:04X},{:04X}) -> ({g:04X},{e:04X})", h.at, h.group, h.element)
        }
        3 => {
            let vr = **rng.pick(&VRS);
            match h.vr {
                Some(old) => {
                    bytes[h.at + 4..h.at + 6].copy_from_slice(&vr);
                    format!("VR at {} {} -> {}", h.at, String::from_utf8_lossy(&old), String::from_utf8_lossy(&vr))
                }
                None => return None,
            }
        }
        4 => {
            // Pixel attributes: values a renderer multiplies and allocates by.
            let pixel: Vec<&Header> =
                data_headers.iter().filter(|h| h.group == 0x0028 && h.len > 0 && h.len < 64).collect();
            let p = **rng.pick(if pixel.is_empty() {
                return None;
            } else {
                &pixel
            });
            let end = p.value_at + p.len as usize;
            if end > len {
                return None;
            }
            let numeric =
                matches!(p.vr.as_ref().map(|v| &v[..]), Some(b"US") | Some(b"SS")) || (p.vr.is_none() && p.len == 2);
            if numeric {
                let v = *rng.pick(&INTERESTING_U16);
                put_u16(bytes, p.value_at, v, p.little);
                format!("value of ({:04X},{:04X}) -> {v}", p.group, p.element)
            } else {
                let s = *rng.pick(&STRINGS);
                let mut v = s.as_bytes().to_vec();
                v.resize(p.len as usize, b' ');
                bytes[p.value_at..end].copy_from_slice(&v);
                format!("value of ({:04X},{:04X}) -> {s:?}", p.group, p.element)
            }
        }
        5 => {
            // An item or delimiter where none belongs.
            let (e, l) = match rng.below(4) {
                0 => (0xE000, 0xFFFF_FFFF),
                1 => (0xE000, *rng.pick(&INTERESTING_U32)),
                2 => (0xE00D, 0),
                _ => (0xE0DD, 0),
            };
            let mut ins = tag_bytes(0xFFFE, e, h.little).to_vec();
            ins.extend_from_slice(&u32_bytes(l, h.little));
            let at = if rng.one_in(2) { h.at } else { h.value_at.min(len) };
            bytes.splice(at..at, ins);
            format!("insert (FFFE,{e:04X}) len {l:#x} at {at}")
        }
        6 => {
            // A whole element, duplicated (sometimes many times) or cut out.
            let end = element_end(headers, &h, len);
            let n = if rng.one_in(8) { *rng.pick(&[16, 100, 1000]) } else { rng.small(4) };
            if rng.one_in(3) {
                bytes.drain(h.at..end);
                format!("delete element ({:04X},{:04X}) at {}..{end}", h.group, h.element, h.at)
            } else {
                let chunk = bytes[h.at..end].to_vec();
                if chunk.len().saturating_mul(n) > MAX_INPUT {
                    return None;
                }
                let ins: Vec<u8> = chunk.iter().copied().cycle().take(chunk.len() * n).collect();
                bytes.splice(end..end, ins);
                format!("duplicate element ({:04X},{:04X}) at {} x{n}", h.group, h.element, h.at)
            }
        }
        7 => {
            // Sequences nested deep, closed or left open.
            let depth = *rng.pick(&DEPTHS);
            let candidates: Vec<&Header> = data_headers.iter().filter(|h| !h.is_item_or_delimiter()).collect();
            let at = candidates.get(rng.below(candidates.len().max(1))).map_or(dataset_at.max(len.min(132)), |h| h.at);
            let closed = rng.below(3) != 0;
            let defined = closed && rng.one_in(3);
            let ins = nested(depth, little, explicit, closed, defined);
            if len + ins.len() > MAX_INPUT {
                return None;
            }
            bytes.splice(at..at, ins);
            format!(
                "nest {depth} sequences at {at} ({})",
                if defined {
                    "defined lengths"
                } else if closed {
                    "undefined, closed"
                } else {
                    "undefined, unclosed"
                }
            )
        }
        8 => {
            // Splice: this input up to a header, another seed from one of its headers.
            let other = rng.pick(corpus);
            let theirs = other.layout.headers.get(rng.below(other.layout.headers.len().max(1))).map_or(0, |h| h.at);
            bytes.truncate(h.at);
            bytes.extend_from_slice(&other.bytes[theirs.min(other.bytes.len())..]);
            format!("splice at {} with {} from {theirs}", h.at, other.name)
        }
        9 => {
            let at = match rng.below(3) {
                0 => h.at,
                1 => h.value_at,
                _ => h.value_at.saturating_add(h.len as usize / 2),
            }
            .saturating_add(rng.below(3))
            .min(len);
            bytes.truncate(at);
            format!("truncate at {at} (near ({:04X},{:04X}))", h.group, h.element)
        }
        10 => {
            let ts = layout.transfer_syntax?;
            let uid = *rng.pick(&TRANSFER_SYNTAXES);
            let mut v = uid.as_bytes().to_vec();
            if v.len() % 2 == 1 {
                v.push(0);
            }
            let end = ts.value_at.saturating_add(ts.len as usize);
            if ts.len_width != 2 || end > len {
                return None;
            }
            let delta = v.len() as i64 - ts.len as i64;
            bytes.splice(ts.value_at..end, v.iter().copied());
            put_u16(bytes, ts.len_at, v.len() as u16, true);
            // Keep the meta group length right half the time.
            if rng.one_in(2) {
                if let Some(gl) = headers.iter().find(|h| (h.group, h.element) == (0x0002, 0x0000) && h.len == 4) {
                    if let Some(old) = bytes.get(gl.value_at..gl.value_at + 4) {
                        let old = u32::from_le_bytes(old.try_into().unwrap());
                        put_u32(bytes, gl.value_at, (old as i64 + delta) as u32, true);
                    }
                }
            }
            format!("transfer syntax -> {uid:?}")
        }
        _ => {
            // Encapsulated pixel data: a fragment or offset table lying.
            let items: Vec<&Header> =
                data_headers.iter().filter(|h| (h.group, h.element) == (0xFFFE, 0xE000)).collect();
            let it = **rng.pick(if items.is_empty() {
                return None;
            } else {
                &items
            });
            let v = match rng.below(4) {
                0 => (len - it.value_at.min(len)) as u32 + 1 + rng.below(1 << 20) as u32,
                1 => 0,
                2 => 3,
                _ => 0xFFFF_FFF0,
            };
            put_u32(bytes, it.len_at, v, it.little);
            format!("item length at {} -> {v:#x}", it.at)
        }
    })
}

/// Where the element of `h` ends: at the next header at its level or
/// after its value, whichever the walk says.
fn element_end(headers: &[Header], h: &Header, len: usize) -> usize {
    if h.len != u32::MAX && h.vr != Some(*b"SQ") && !h.is_item_or_delimiter() {
        return h.value_at.saturating_add(h.len as usize).min(len);
    }
    headers.iter().map(|x| x.at).filter(|&a| a > h.at).min().unwrap_or(len).min(len)
}

/// `depth` levels of sequence > item, opened with undefined lengths (and
/// closed, or not), or with correct defined lengths.
pub fn nested(depth: usize, little: bool, explicit: bool, closed: bool, defined: bool) -> Vec<u8> {
    // (0008,1140) ReferencedImageSequence: a sequence in every dictionary,
    // so implicit VR parsers treat it as one too.
    let seq_header = |len: u32| {
        let mut h = tag_bytes(0x0008, 0x1140, little).to_vec();
        if explicit {
            h.extend_from_slice(b"SQ\0\0");
        }
        h.extend_from_slice(&u32_bytes(len, little));
        h
    };
    let item_header = |len: u32| {
        let mut h = tag_bytes(0xFFFE, 0xE000, little).to_vec();
        h.extend_from_slice(&u32_bytes(len, little));
        h
    };
    if defined {
        // Inside out, so each level knows its length.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut item = item_header(inner.len() as u32);
            item.extend_from_slice(&inner);
            let mut seq = seq_header(item.len() as u32);
            seq.extend_from_slice(&item);
            inner = seq;
        }
        return inner;
    }
    let mut out = Vec::with_capacity(depth * 36);
    for _ in 0..depth {
        out.extend_from_slice(&seq_header(u32::MAX));
        out.extend_from_slice(&item_header(u32::MAX));
    }
    if closed {
        for _ in 0..depth {
            out.extend_from_slice(&tag_bytes(0xFFFE, 0xE00D, little));
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&tag_bytes(0xFFFE, 0xE0DD, little));
            out.extend_from_slice(&[0; 4]);
        }
    }
    out
}

fn mutate_bytes(bytes: &mut Vec<u8>, corpus: &[Seed], rng: &mut Rng) -> String {
    if bytes.is_empty() {
        bytes.extend_from_slice(&rng.pick(corpus).bytes);
        return "replace empty input by a seed".into();
    }
    let len = bytes.len();
    // Headers sit in the first kilobytes: aim there half the time.
    let at = if rng.one_in(2) { rng.below(len.min(2048)) } else { rng.below(len) };
    match rng.below(8) {
        0 => {
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            format!("flip bit {bit} at {at}")
        }
        1 => {
            let v = *rng.pick(&INTERESTING_U8);
            bytes[at] = v;
            format!("byte at {at} -> {v:#04x}")
        }
        2 => {
            let little = rng.one_in(2);
            if rng.one_in(2) {
                let v = *rng.pick(&INTERESTING_U16);
                put_u16(bytes, at, v, little);
                format!("u16 at {at} -> {v:#x}")
            } else {
                let v = *rng.pick(&INTERESTING_U32);
                put_u32(bytes, at, v, little);
                format!("u32 at {at} -> {v:#x}")
            }
        }
        3 => {
            let d = rng.below(33) as u8;
            bytes[at] = if rng.one_in(2) { bytes[at].wrapping_add(d) } else { bytes[at].wrapping_sub(d) };
            format!("byte at {at} +/- {d}")
        }
        4 => {
            let n = rng.below((len - at).min(512)) + 1;
            bytes.drain(at..at + n);
            format!("delete {n} bytes at {at}")
        }
        5 => {
            // A chunk from this input or another seed.
            let src = if rng.one_in(2) { bytes.clone() } else { rng.pick(corpus).bytes.clone() };
            let from = rng.below(src.len().max(1));
            let n = (rng.below(256) + 1).min(src.len() - from.min(src.len()));
            bytes.splice(at..at, src[from..from + n].iter().copied());
            format!("insert {n} bytes at {at}")
        }
        6 => {
            let n = rng.below((len - at).min(256)) + 1;
            let v = *rng.pick(&[0x00u8, 0xFF, 0x41]);
            bytes[at..at + n].fill(v);
            format!("fill {n} bytes at {at} with {v:#04x}")
        }
        _ => {
            bytes.truncate(at);
            format!("truncate at {at}")
        }
    }
}

/// Mutates the inflated data set of a deflated file and deflates it again.
fn mutate_deflated(bytes: &mut Vec<u8>, layout: &Layout, corpus: &[Seed], rng: &mut Rng) -> Option<String> {
    let start = layout.dataset_at;
    let mut inflated = Vec::new();
    flate2::read::DeflateDecoder::new(&bytes[start..]).take(4 << 20).read_to_end(&mut inflated).ok()?;
    let mut names = Vec::new();
    for _ in 0..rng.small(3) {
        let headers = scan_dataset(&inflated, Syntax::ExplicitLe);
        if rng.one_in(40) {
            // A small bomb: megabytes of zeros inside a value.
            let mib = *rng.pick(&[1usize, 4, 16]);
            let at = headers.last().map_or(inflated.len(), |h| h.value_at.min(inflated.len()));
            inflated.splice(at..at, std::iter::repeat_n(0u8, mib << 20));
            names.push(format!("{mib} MiB of zeros at {at}"));
        } else if !headers.is_empty() {
            let fake = Layout {
                headers: headers.clone(),
                dataset_at: 0,
                syntax: Some(Syntax::ExplicitLe),
                transfer_syntax: None,
            };
            let name = mutate_structure(&mut inflated, &headers, &headers, 0, true, true, &fake, corpus, rng)
                .unwrap_or_else(|| mutate_bytes(&mut inflated, corpus, rng));
            names.push(name);
        }
    }
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&inflated).ok()?;
    let deflated = enc.finish().ok()?;
    bytes.truncate(start);
    bytes.extend_from_slice(&deflated);
    Some(format!("inflated data set: {}", names.join("; ")))
}

/// Input number `index` of a run: seed `index` as it is for the first
/// inputs (so every seed is tried whole), then mutated seeds.
pub fn generate(corpus: &[Seed], seed: u64, index: u64) -> Input {
    if (index as usize) < corpus.len() {
        let s = &corpus[index as usize];
        return Input { bytes: s.bytes.clone(), seed: s.name.clone(), mutations: vec![] };
    }
    let mut rng = Rng::for_input(seed, index);
    let s = rng.pick(corpus);
    let mut bytes = s.bytes.clone();
    let mut mutations = Vec::new();
    for _ in 0..rng.small(6) {
        mutations.push(mutate_once(&mut bytes, corpus, &mut rng));
        if bytes.len() > MAX_INPUT {
            bytes.truncate(MAX_INPUT);
            mutations.push(format!("cut to {MAX_INPUT} bytes"));
        }
    }
    Input { bytes, seed: s.name.clone(), mutations }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Seed> {
        let dir = format!("{}/seeds", env!("CARGO_MANIFEST_DIR"));
        crate::load_dir(std::path::Path::new(&dir)).unwrap()
    }

    #[test]
    fn deterministic() {
        let c = corpus();
        for i in 0..300 {
            let a = generate(&c, 42, i);
            let b = generate(&c, 42, i);
            assert_eq!(a.bytes, b.bytes, "input {i}");
            assert_eq!(a.mutations, b.mutations);
            assert!(a.bytes.len() <= MAX_INPUT);
        }
        assert_ne!(generate(&c, 42, 100).bytes, generate(&c, 43, 100).bytes);
    }

    #[test]
    fn seeds_first_then_every_kind_of_mutation() {
        let c = corpus();
        for (i, s) in c.iter().enumerate() {
            assert_eq!(generate(&c, 1, i as u64).bytes, s.bytes);
        }
        let mut kinds = std::collections::BTreeSet::new();
        for i in c.len() as u64..c.len() as u64 + 3000 {
            for m in generate(&c, 1, i).mutations {
                kinds.insert(m.split(' ').next().unwrap().to_string());
            }
        }
        for k in [
            "length",
            "tag",
            "VR",
            "value",
            "insert",
            "duplicate",
            "delete",
            "nest",
            "splice",
            "truncate",
            "transfer",
            "item",
            "inflated",
            "flip",
        ] {
            assert!(kinds.contains(k), "{k} never chosen: {kinds:?}");
        }
    }

    #[test]
    fn nested_sequences_are_well_formed() {
        let body = nested(3, true, true, true, true);
        // Three sequences with correct lengths: the walk sees 3 SQ and 3 items.
        let h = scan_dataset(&body, Syntax::ExplicitLe);
        assert_eq!(h.iter().filter(|h| h.vr == Some(*b"SQ")).count(), 3);
        assert_eq!(h.iter().filter(|h| h.group == 0xFFFE).count(), 3);
        assert_eq!(h[0].len as usize, body.len() - 12);
        assert_eq!(nested(5000, true, true, true, false).len(), 5000 * 36);
    }
}
