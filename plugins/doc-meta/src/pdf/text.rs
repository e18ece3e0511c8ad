//! PDF text strings, PDF dates and the few XMP properties we read.

/// Longest text value kept, in characters.
pub const MAX_TEXT: usize = 4096;

/// A PDF text string's bytes as text: UTF-16BE (or, seen in the wild,
/// UTF-16LE) after a byte order mark, UTF-8 after its BOM (PDF 2.0),
/// PDFDocEncoding otherwise. Language escapes (`ESC … ESC` in UTF-16)
/// are dropped, control characters become spaces, the result is trimmed
/// and cut at [`MAX_TEXT`] characters. `None` when nothing is left.
pub fn decode_text(bytes: &[u8]) -> Option<String> {
    let raw: String = if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
        utf16(rest, u16::from_be_bytes)
    } else if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        utf16(rest, u16::from_le_bytes)
    } else if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        bytes.iter().map(|&b| pdfdoc(b)).collect()
    };
    clean(&raw)
}

fn utf16(bytes: &[u8], from: fn([u8; 2]) -> u16) -> String {
    let units: Vec<u16> = bytes.chunks_exact(2).map(|p| from([p[0], p[1]])).collect();
    let mut out = String::new();
    let mut in_escape = false;
    for c in char::decode_utf16(units.iter().copied()) {
        let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
        if c == '\u{1b}' {
            in_escape = !in_escape;
        } else if !in_escape {
            out.push(c);
        }
    }
    out
}

/// Control characters to spaces, trimmed, capped; `None` if empty.
pub fn clean(s: &str) -> Option<String> {
    let s: String =
        s.chars().filter(|&c| c != '\0').map(|c| if c.is_control() { ' ' } else { c }).take(MAX_TEXT).collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// One byte of PDFDocEncoding (PDF 32000-1:2008, Annex D.2).
fn pdfdoc(b: u8) -> char {
    const HIGH: [u32; 33] = [
        0x2022, 0x2020, 0x2021, 0x2026, 0x2014, 0x2013, 0x0192, 0x2044, 0x2039, 0x203A, 0x2212, 0x2030, 0x201E, 0x201C,
        0x201D, 0x2018, 0x2019, 0x201A, 0x2122, 0xFB01, 0xFB02, 0x0141, 0x0152, 0x0160, 0x0178, 0x017D, 0x0131, 0x0142,
        0x0153, 0x0161, 0x017E, 0xFFFD, 0x20AC,
    ];
    const LOW: [u32; 8] = [0x02D8, 0x02C7, 0x02C6, 0x02D9, 0x02DD, 0x02DB, 0x02DA, 0x02DC];
    let code = match b {
        0x18..=0x1f => LOW[(b - 0x18) as usize],
        0x80..=0xa0 => HIGH[(b - 0x80) as usize],
        0xad => 0xFFFD,
        _ => b as u32,
    };
    char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// A PDF date (`D:YYYYMMDDHHmmSSOHH'mm'`, every part after the year
/// optional) as ISO 8601: `2024`, `2024-01`, `2024-01-31`,
/// `2024-01-31T12:34:56`, with `Z` or `+01:00` when the offset is given.
/// `None` when it is not a date.
pub fn pdf_date(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("D:").unwrap_or(s);
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0, |a, d| a * 10 + (d - b'0') as u32))
    };
    let year = digits(0, 4)?;
    let mut out = format!("{year:04}");
    let mut i = 4;
    let Some(month) = digits(i, 2) else {
        return (i == b.len()).then_some(out);
    };
    if !(1..=12).contains(&month) {
        return None;
    }
    out.push_str(&format!("-{month:02}"));
    i += 2;
    let Some(day) = digits(i, 2) else {
        return (i == b.len()).then_some(out);
    };
    if !(1..=31).contains(&day) {
        return None;
    }
    out.push_str(&format!("-{day:02}"));
    i += 2;
    let Some(hour) = digits(i, 2) else {
        return (i == b.len()).then_some(out);
    };
    i += 2;
    let minute = digits(i, 2).inspect(|_| i += 2).unwrap_or(0);
    let second = digits(i, 2).inspect(|_| i += 2).unwrap_or(0);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    out.push_str(&format!("T{hour:02}:{minute:02}:{second:02}"));
    match b.get(i) {
        None => {}
        Some(b'Z') => out.push('Z'),
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(i + 1, 2)?;
            let mut j = i + 3;
            if b.get(j) == Some(&b'\'') {
                j += 1;
            }
            let om = digits(j, 2).unwrap_or(0);
            if oh > 23 || om > 59 {
                return None;
            }
            out.push_str(&format!("{}{oh:02}:{om:02}", sign as char));
        }
        Some(_) => return None,
    }
    Some(out)
}

/// An XMP date (already ISO 8601), when it looks like one.
pub fn xmp_date(s: &str) -> Option<String> {
    let s = s.trim();
    let b = s.as_bytes();
    let ok = b.len() >= 4
        && b.len() <= 40
        && b[..4].iter().all(u8::is_ascii_digit)
        && b.iter().all(|c| c.is_ascii_digit() || b"-:T+Z.".contains(c));
    ok.then(|| s.to_string())
}

/// What we read from an XMP packet.
#[derive(Debug, Default, PartialEq)]
pub struct Xmp {
    pub title: Option<String>,
    pub author: Option<String>,
    pub created: Option<String>,
    pub modified: Option<String>,
    pub producer: Option<String>,
}

/// The properties we need from an XMP packet, by plain text search (no
/// XML parser: a packet is small and its layout fixed enough), both as
/// elements (`<dc:title><rdf:Alt><rdf:li …>T</rdf:li>`) and as attributes
/// (`xmp:CreateDate="…"`).
pub fn xmp(packet: &[u8]) -> Xmp {
    let text = String::from_utf8_lossy(packet);
    let first_li = |prop: &str| -> Option<String> {
        let inner = element(&text, prop)?;
        let value = match element(inner, "rdf:li") {
            Some(li) => li,
            None if !inner.contains('<') => inner,
            None => return None,
        };
        clean(&unescape(value))
    };
    let simple = |prop: &str| -> Option<String> {
        element(&text, prop).filter(|v| !v.contains('<')).map(unescape).or_else(|| attribute(&text, prop).map(unescape))
    };
    Xmp {
        title: first_li("dc:title"),
        author: first_li("dc:creator"),
        created: simple("xmp:CreateDate").and_then(|d| xmp_date(&d)),
        modified: simple("xmp:ModifyDate").and_then(|d| xmp_date(&d)),
        producer: simple("pdf:Producer").and_then(|p| clean(&p)),
    }
}

/// The content of the first `<tag …>…</tag>`.
fn element<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let mut from = 0;
    while let Some(at) = text[from..].find(&open) {
        let start = from + at + open.len();
        let rest = &text[start..];
        // `<dc:title>` or `<dc:title attr…>`, not `<dc:titles>`
        match rest.as_bytes().first() {
            Some(b'>') | Some(b' ') | Some(b'\t') | Some(b'\r') | Some(b'\n') => {}
            Some(b'/') => return None,
            _ => {
                from = start;
                continue;
            }
        }
        let gt = rest.find('>')?;
        if rest[..gt].ends_with('/') {
            return None;
        }
        let body = &rest[gt + 1..];
        let end = body.find(&format!("</{tag}>"))?;
        return Some(&body[..end]);
    }
    None
}

/// The value of the first ` tag="…"` (or `'…'`).
fn attribute<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let at = text.find(&key)?;
    let rest = &text[at + key.len()..];
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(quote)?])
}

/// XML character and entity references.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
