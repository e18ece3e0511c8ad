//! Where the element headers of a DICOM file are, found cheaply.
//!
//! Why: random bit flips mostly land in pixel bytes and exercise nothing.
//! The bugs worth finding sit where a parser trusts a header: a length, a
//! VR, an item tag. This walks a file the way a parser would (file meta in
//! explicit VR little endian, then the data set in the transfer syntax the
//! meta names), descending into sequences and items, and records every
//! header so the mutator can aim at them. It trusts nothing and stops at
//! the first header that makes no sense; a deflated data set is not
//! inflated here (the mutator does that itself).

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
    /// Deflated explicit VR little endian: not walkable without inflating.
    Deflated,
}

impl Syntax {
    /// From a transfer syntax UID (as stored: maybe NUL- or space-padded).
    pub fn of_uid(uid: &[u8]) -> Syntax {
        let uid = trim_uid(uid);
        match uid {
            b"1.2.840.10008.1.2" => Syntax::ImplicitLe,
            b"1.2.840.10008.1.2.2" => Syntax::ExplicitBe,
            b"1.2.840.10008.1.2.1.99" => Syntax::Deflated,
            _ => Syntax::ExplicitLe,
        }
    }

    fn little(self) -> bool {
        self != Syntax::ExplicitBe
    }
}

pub fn trim_uid(uid: &[u8]) -> &[u8] {
    let end = uid.iter().rposition(|&b| b != 0 && b != b' ').map_or(0, |i| i + 1);
    &uid[..end]
}

/// One element (or item / delimiter) header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the tag.
    pub at: usize,
    pub group: u16,
    pub element: u16,
    /// The VR as written (explicit syntaxes), `None` for implicit VR and
    /// for items and delimiters.
    pub vr: Option<[u8; 2]>,
    /// Offset and width (2 or 4) of the length field.
    pub len_at: usize,
    pub len_width: u8,
    /// Declared length (0xFFFF_FFFF: undefined).
    pub len: u32,
    /// Offset of the value.
    pub value_at: usize,
    pub little: bool,
}

impl Header {
    pub fn is_item_or_delimiter(&self) -> bool {
        self.group == 0xFFFE
    }
}

/// A walked file.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub headers: Vec<Header>,
    /// Where the file meta group ends and the data set starts (0 if there
    /// is no `DICM` magic).
    pub dataset_at: usize,
    pub syntax: Option<Syntax>,
    /// The transfer syntax UID element, if found.
    pub transfer_syntax: Option<Header>,
}

/// VRs with a 2-byte reserved field and a 4-byte length: the guard's
/// grammar (unknown codes included), so mutations aim where it reads.
pub fn long_vr(vr: [u8; 2]) -> bool {
    !dicom_guard::short_length(vr)
}

const MAX_HEADERS: usize = 20_000;

fn u16_at(b: &[u8], at: usize, little: bool) -> Option<u16> {
    let x: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if little { u16::from_le_bytes(x) } else { u16::from_be_bytes(x) })
}

fn u32_at(b: &[u8], at: usize, little: bool) -> Option<u32> {
    let x: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if little { u32::from_le_bytes(x) } else { u32::from_be_bytes(x) })
}

/// Walks a whole file (preamble and `DICM`, or a bare data set).
pub fn scan(bytes: &[u8]) -> Layout {
    let mut layout = Layout::default();
    let start = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.get(..4) == Some(b"DICM") {
        4
    } else {
        // No magic: a bare data set, guessed explicit VR little endian.
        walk(bytes, 0, Syntax::ExplicitLe, &mut layout.headers, None);
        return layout;
    };
    // The meta group, always explicit VR little endian.
    let end = walk(bytes, start, Syntax::ExplicitLe, &mut layout.headers, Some(0x0002));
    layout.dataset_at = end;
    let ts = layout.headers.iter().find(|h| h.group == 0x0002 && h.element == 0x0010).copied();
    let syntax = ts
        .and_then(|h| bytes.get(h.value_at..h.value_at.saturating_add(h.len as usize)))
        .map_or(Syntax::ExplicitLe, Syntax::of_uid);
    layout.transfer_syntax = ts;
    layout.syntax = Some(syntax);
    if syntax != Syntax::Deflated {
        walk(bytes, end, syntax, &mut layout.headers, None);
    }
    layout
}

/// Walks a bare data set encoded in `syntax` (an inflated deflated one).
pub fn scan_dataset(bytes: &[u8], syntax: Syntax) -> Vec<Header> {
    let mut headers = Vec::new();
    walk(bytes, 0, syntax, &mut headers, None);
    headers
}

/// Records headers from `pos` on; with `only_group`, stops before the first
/// element of another group. Returns where it stopped.
fn walk(b: &[u8], mut pos: usize, syntax: Syntax, out: &mut Vec<Header>, only_group: Option<u16>) -> usize {
    let little = syntax.little();
    let explicit = syntax != Syntax::ImplicitLe;
    // Inside encapsulated pixel data: items are fragments, not data sets.
    let mut encapsulated = false;
    while out.len() < MAX_HEADERS {
        // Items and delimiters are little endian unless the syntax is big.
        let (Some(group), Some(element)) = (u16_at(b, pos, little), u16_at(b, pos + 2, little)) else {
            break;
        };
        if only_group.is_some_and(|g| g != group) {
            break;
        }
        if group == 0xFFFE {
            let Some(len) = u32_at(b, pos + 4, little) else {
                break;
            };
            out.push(Header {
                at: pos,
                group,
                element,
                vr: None,
                len_at: pos + 4,
                len_width: 4,
                len,
                value_at: pos + 8,
                little,
            });
            pos += 8;
            match element {
                0xE000 if encapsulated && len != u32::MAX => pos = pos.saturating_add(len as usize),
                0xE000 => {} // an item of a sequence: its elements follow
                0xE0DD => encapsulated = false,
                _ => {}
            }
            continue;
        }
        let (vr, len_at, len_width) = if explicit {
            let Some(vr) = b.get(pos + 4..pos + 6) else {
                break;
            };
            let vr = [vr[0], vr[1]];
            if !vr.iter().all(u8::is_ascii_uppercase) {
                break;
            }
            if long_vr(vr) {
                (Some(vr), pos + 8, 4u8)
            } else {
                (Some(vr), pos + 6, 2u8)
            }
        } else {
            (None, pos + 4, 4u8)
        };
        let len = if len_width == 2 {
            let Some(l) = u16_at(b, len_at, little) else {
                break;
            };
            u32::from(l)
        } else {
            let Some(l) = u32_at(b, len_at, little) else {
                break;
            };
            l
        };
        let value_at = len_at + len_width as usize;
        out.push(Header { at: pos, group, element, vr, len_at, len_width, len, value_at, little });
        let pixel_data = group == 0x7FE0 && element == 0x0010;
        pos = if len == u32::MAX {
            // A sequence (or encapsulated pixel data): its items follow.
            encapsulated = pixel_data;
            value_at
        } else if vr == Some(*b"SQ") {
            value_at
        } else {
            value_at.saturating_add(len as usize)
        };
        if pos > b.len() {
            break;
        }
    }
    pos.min(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/seeds/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn walks_the_seeds() {
        let l = scan(&seed("explicit_le_16bit_nested_sq.dcm"));
        assert_eq!(l.syntax, Some(Syntax::ExplicitLe));
        let pixel = l.headers.iter().find(|h| (h.group, h.element) == (0x7FE0, 0x0010)).expect("pixel data");
        assert_eq!(pixel.len, 40 * 48 * 2);
        // Items of the nested code sequences, three deep.
        assert!(l.headers.iter().filter(|h| (h.group, h.element) == (0xFFFE, 0xE000)).count() >= 5);
        assert!(l.headers.iter().any(|h| (h.group, h.element) == (0x0008, 0x0100)));

        let l = scan(&seed("implicit_le_8bit.dcm"));
        assert_eq!(l.syntax, Some(Syntax::ImplicitLe));
        assert!(l.headers.iter().any(|h| (h.group, h.element, h.vr) == (0x0028, 0x0010, None)));

        let l = scan(&seed("explicit_be_16bit.dcm"));
        assert_eq!(l.syntax, Some(Syntax::ExplicitBe));
        assert!(l.headers.iter().any(|h| (h.group, h.element) == (0x0028, 0x0010) && !h.little));

        let l = scan(&seed("jpeg_baseline_rgb_3fragments.dcm"));
        let items = l.headers.iter().filter(|h| h.group == 0xFFFE && h.element == 0xE000).count();
        assert_eq!(items, 4, "offset table and three fragments");

        let l = scan(&seed("deflated_8bit.dcm"));
        assert_eq!(l.syntax, Some(Syntax::Deflated));
        assert!(l.headers.iter().all(|h| h.group == 0x0002));
    }

    #[test]
    fn garbage_is_harmless() {
        for n in 0..300 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            scan(&junk);
        }
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM\x02\x00\x10\x00UI\xff\xff");
        scan(&f);
    }
}
