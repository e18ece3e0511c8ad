//! PDF metadata: the document information dictionary, XMP, the page count.
//!
//! The path through the file: the last 4 KiB (`startxref`), the
//! cross-reference sections it chains to (`/Prev`, `/XRefStm`; classic
//! tables or PDF 1.5 cross-reference streams), then the few objects the
//! metadata live in (trailer → catalog → page tree root, info dictionary,
//! XMP stream), some of them inside object streams. Every byte comes
//! through the item's [`Source`] and counts against its budget; every
//! inflated byte against [`MAX_INFLATED`].
//!
//! A cross-reference that does not lead to the catalog (a lying
//! `startxref`, a damaged table) is not fatal: like PDF viewers, we then
//! scan the file (within the budget) for `N G obj` headers and trailers.
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use ferry_plugin_sdk::types::{Metadata, Value};

use crate::range::{RangeRead, Source};
use crate::ExtractError;

pub mod lex;
pub mod text;

use lex::{get, indirect, Dict, Lexer, Obj, PErr};

/// How far from the end `startxref` may be.
const TAIL: u64 = 4096;
/// Cross-reference sections followed through `/Prev` and `/XRefStm`.
const MAX_SECTIONS: usize = 64;
/// Objects a cross-reference may list (all sections together).
pub const MAX_OBJECTS: u64 = 1_000_000;
/// The largest window one object (outside streams) may need.
const MAX_OBJECT_BYTES: u64 = 1 << 20;
/// Raw bytes of one stream we decode.
const MAX_STREAM_BYTES: u64 = 4 << 20;
/// Decoded bytes of one stream.
const MAX_DECODED: usize = 8 << 20;
/// Decoded bytes of all streams of one file.
const MAX_INFLATED: usize = 32 << 20;
/// Objects resolved (loaded) for one file (the metadata need a few dozen).
const MAX_RESOLVES: usize = 256;
/// References followed in a chain (`1 0 R` → `2 0 R` → …).
const MAX_REF_DEPTH: usize = 16;
/// Objects one object stream may hold.
const MAX_OBJSTM_OBJECTS: u64 = 100_000;
/// Subsections of one classic cross-reference table.
const MAX_SUBSECTIONS: usize = 10_000;
/// Objects the fallback scan parses to learn their type, and the window
/// each gets (together they bound the scan's work, whatever the file).
const MAX_SCAN_PARSES: usize = 10_000;
const SCAN_WINDOW: usize = 8 << 10;
/// The largest believable page count.
const MAX_PAGES: i64 = 10_000_000;

#[derive(Debug, Clone, Copy)]
enum Entry {
    At(u64),
    InStream(u32, u32),
}

struct ObjStm {
    data: Vec<u8>,
    /// (object number, offset from the start of `data`)
    index: Vec<(u32, usize)>,
}

pub struct Pdf<'s, R> {
    src: &'s mut Source<R>,
    xref: HashMap<u32, Entry>,
    trailer: Dict,
    cache: HashMap<u32, Rc<Obj>>,
    objstms: HashMap<u32, Rc<ObjStm>>,
    resolving: HashSet<u32>,
    resolves: usize,
    inflated: usize,
    /// Objects found by the linear scan are checked against their header
    /// loosely (the scan found them by it).
    scanned: bool,
}

fn corrupt(msg: impl Into<String>) -> ExtractError {
    ExtractError::Content(format!("corrupt PDF: {}", msg.into()))
}

/// The metadata of the PDF behind `src` (already sniffed as one).
pub fn extract<R: RangeRead>(src: &mut Source<R>, head: &[u8]) -> Result<Metadata, ExtractError> {
    extract_with(src, head, true)
}

/// [`extract`]; `repair`: whether a broken cross-reference falls back to
/// scanning (tests turn it off to see the cross-reference's own verdict).
pub fn extract_with<R: RangeRead>(src: &mut Source<R>, head: &[u8], repair: bool) -> Result<Metadata, ExtractError> {
    let mut out: Metadata = Vec::new();
    let header_version = header_version(head);
    let startxref = find_startxref(src)?;
    let mut pdf = Pdf {
        src,
        xref: HashMap::new(),
        trailer: Dict::new(),
        cache: HashMap::new(),
        objstms: HashMap::new(),
        resolving: HashSet::new(),
        resolves: 0,
        inflated: 0,
        scanned: false,
    };
    let first = pdf.load_xref(startxref).and_then(|()| pdf.document());
    let doc = match first {
        Ok(doc) => doc,
        Err(e @ (ExtractError::Encrypted(_) | ExtractError::TooLarge(_) | ExtractError::Read(_))) => return Err(e),
        Err(e @ ExtractError::Content(_)) if !repair => return Err(e),
        Err(ExtractError::Content(why)) => {
            ferry_plugin_sdk::debug(&format!("{why}; scanning the file for objects"));
            pdf.reset();
            match pdf.scan().and_then(|()| pdf.document()) {
                Ok(doc) => doc,
                Err(ExtractError::Content(also)) => {
                    return Err(ExtractError::Content(format!(
                        "{why}; scanning the file for objects did not help either: {}",
                        also.trim_start_matches("corrupt PDF: ")
                    )))
                }
                Err(ExtractError::TooLarge(also)) => {
                    return Err(ExtractError::TooLarge(format!("{why}, and scanning for its objects: {also}")))
                }
                Err(e) => return Err(e),
            }
        }
    };
    let version = match (header_version, doc.catalog_version) {
        (Some(h), Some(c)) => Some(if version_key(&c) > version_key(&h) { c } else { h }),
        (h, c) => h.or(c),
    };
    if let Some(v) = version {
        out.push(("pdf.version".into(), Value::Text(v)));
    }
    out.push(("pdf.pages".into(), Value::Integer(doc.pages)));
    let info = doc.info;
    for (key, value) in [
        ("pdf.title", info.title),
        ("pdf.author", info.author),
        ("pdf.created", info.created),
        ("pdf.modified", info.modified),
        ("pdf.producer", info.producer),
    ] {
        if let Some(v) = value {
            out.push((key.into(), Value::Text(v)));
        }
    }
    Ok(out)
}

fn header_version(head: &[u8]) -> Option<String> {
    let at = find(head, b"%PDF-")?;
    let v: Vec<u8> = head[at + 5..].iter().take(4).take_while(|b| b.is_ascii_digit() || **b == b'.').copied().collect();
    let v = String::from_utf8(v).ok()?;
    let (major, minor) = v.split_once('.')?;
    (!major.is_empty() && !minor.is_empty()).then_some(v)
}

fn version_key(v: &str) -> (u32, u32) {
    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// The offset after the last `startxref` in the file's tail.
fn find_startxref<R: RangeRead>(src: &mut Source<R>) -> Result<u64, ExtractError> {
    let size = src.size();
    let from = size.saturating_sub(TAIL);
    let tail = src.bytes(from, TAIL)?;
    let Some(at) = rfind(&tail, b"startxref") else {
        return Err(corrupt(format!(
            "no `startxref` in the last {} bytes: the file is truncated (cut short, or still being written), \
             or not a complete PDF",
            tail.len()
        )));
    };
    let mut lx = Lexer::new(&tail[at + 9..], from + at as u64 + 9, true);
    let offset = match lx.uint() {
        Ok(Some(n)) => n,
        _ => return Err(corrupt(format!("`startxref` at byte {} is not followed by an offset", from + at as u64))),
    };
    if !tail[at..].windows(5).any(|w| w == b"%%EOF") {
        ferry_plugin_sdk::debug("PDF: no %%EOF after startxref");
    }
    Ok(offset)
}

struct Doc {
    pages: i64,
    catalog_version: Option<String>,
    info: Info,
}

#[derive(Default)]
struct Info {
    title: Option<String>,
    author: Option<String>,
    created: Option<String>,
    modified: Option<String>,
    producer: Option<String>,
}

impl<R: RangeRead> Pdf<'_, R> {
    fn reset(&mut self) {
        self.xref.clear();
        self.trailer.clear();
        self.cache.clear();
        self.objstms.clear();
        self.resolving.clear();
    }

    // ----- reading objects -------------------------------------------------

    /// Parses with `f` a window of the file from `offset`, growing the
    /// window while the object runs past it.
    fn parse_at<T>(
        &mut self,
        offset: u64,
        what: &str,
        mut f: impl FnMut(&mut Lexer) -> Result<T, PErr>,
    ) -> Result<T, ExtractError> {
        let size = self.src.size();
        if offset >= size {
            return Err(corrupt(format!("{what} at byte {offset} lies past the end of the file ({size} bytes)")));
        }
        let mut window = 4096u64;
        loop {
            let buf = self.src.bytes(offset, window)?;
            let complete = offset + buf.len() as u64 >= size;
            let mut lx = Lexer::new(&buf, offset, complete);
            match f(&mut lx) {
                Ok(v) => return Ok(v),
                Err(PErr::Bad(why)) => return Err(corrupt(format!("{what} at byte {offset}: {why}"))),
                Err(PErr::Incomplete) if window >= MAX_OBJECT_BYTES => {
                    return Err(corrupt(format!("{what} at byte {offset} is larger than {MAX_OBJECT_BYTES} bytes")))
                }
                Err(PErr::Incomplete) => window *= 4,
            }
        }
    }

    /// The indirect object at `offset`: number, object (a stream's data
    /// offset resolved to the file).
    fn object_at(&mut self, offset: u64, what: &str) -> Result<(u32, Obj), ExtractError> {
        self.parse_at(offset, what, |lx| {
            let (num, _gen, obj, data) = indirect(lx)?;
            Ok(match (obj, data) {
                (Obj::Dict(d), Some(at)) => (num, Obj::Stream(d, offset + at as u64)),
                (obj, _) => (num, obj),
            })
        })
    }

    /// Object `num`, loaded once.
    fn load(&mut self, num: u32, depth: usize) -> Result<Rc<Obj>, ExtractError> {
        if let Some(o) = self.cache.get(&num) {
            return Ok(o.clone());
        }
        if depth > MAX_REF_DEPTH {
            return Err(corrupt(format!("references nest deeper than {MAX_REF_DEPTH} levels at object {num}")));
        }
        if !self.resolving.insert(num) {
            return Err(corrupt(format!("object {num} depends on itself")));
        }
        let result = self.load_uncached(num, depth);
        self.resolving.remove(&num);
        let obj = Rc::new(result?);
        self.cache.insert(num, obj.clone());
        Ok(obj)
    }

    fn load_uncached(&mut self, num: u32, depth: usize) -> Result<Obj, ExtractError> {
        self.resolves += 1;
        if self.resolves > MAX_RESOLVES {
            return Err(corrupt(format!("more than {MAX_RESOLVES} objects needed for the metadata")));
        }
        match self.xref.get(&num).copied() {
            // an object missing from the cross-reference is null (PDF 7.3.10)
            None => Ok(Obj::Null),
            Some(Entry::At(offset)) => {
                let (found, obj) = self.object_at(offset, &format!("object {num}"))?;
                if found != num && !self.scanned {
                    return Err(corrupt(format!(
                        "the cross-reference puts object {num} at byte {offset}, but object {found} is there"
                    )));
                }
                Ok(obj)
            }
            Some(Entry::InStream(stm, idx)) => {
                let os = self.objstm(stm, depth + 1)?;
                let Some(&(found, at)) = os.index.get(idx as usize) else {
                    return Err(corrupt(format!(
                        "object {num} is said to be number {idx} in object stream {stm}, which holds {}",
                        os.index.len()
                    )));
                };
                let start = if found == num {
                    at
                } else {
                    // tolerate a wrong index if the object is in the stream at all
                    match os.index.iter().find(|(n, _)| *n == num) {
                        Some(&(_, at)) => at,
                        None => return Err(corrupt(format!("object {num} is not in object stream {stm}"))),
                    }
                };
                let place = format!(" of object stream {stm}");
                let mut lx = Lexer::new(&os.data[start..], start as u64, true);
                lx.place = &place;
                match lx.object(0) {
                    Ok(Obj::Stream(..)) => Err(corrupt(format!("object stream {stm} holds a stream"))),
                    Ok(o) => Ok(o),
                    Err(PErr::Bad(why)) => Err(corrupt(format!("object {num}: {why}"))),
                    Err(PErr::Incomplete) => Err(corrupt(format!("object {num} is cut short in object stream {stm}"))),
                }
            }
        }
    }

    /// Follows references: the object `obj` stands for.
    fn resolve(&mut self, obj: &Obj, depth: usize) -> Result<Rc<Obj>, ExtractError> {
        let mut current = Rc::new(obj.clone());
        for _ in 0..=MAX_REF_DEPTH {
            match *current {
                Obj::Ref(num, _) => current = self.load(num, depth + 1)?,
                _ => return Ok(current),
            }
        }
        Err(corrupt(format!("a chain of more than {MAX_REF_DEPTH} references")))
    }

    /// `dict[key]`, references followed; `None` when absent or null.
    fn lookup(&mut self, dict: &Dict, key: &[u8], depth: usize) -> Result<Option<Rc<Obj>>, ExtractError> {
        match get(dict, key) {
            None | Some(Obj::Null) => Ok(None),
            Some(v) => {
                let v = self.resolve(v, depth)?;
                Ok((!matches!(*v, Obj::Null)).then_some(v))
            }
        }
    }

    // ----- streams -----------------------------------------------------------

    /// The decoded data of a stream object (`what` for messages).
    fn stream_data(&mut self, obj: &Obj, what: &str, depth: usize) -> Result<Vec<u8>, ExtractError> {
        let Obj::Stream(dict, data_at) = obj else {
            return Err(corrupt(format!("{what} is {}, not a stream", obj.kind())));
        };
        let (dict, data_at) = (dict.clone(), *data_at);
        let size = self.src.size();
        let length = match self.lookup(&dict, b"Length", depth)?.as_deref() {
            Some(Obj::Int(n)) => *n,
            Some(o) => return Err(corrupt(format!("{what} has a /Length that is {}", o.kind()))),
            None => return Err(corrupt(format!("{what} has no /Length"))),
        };
        if length < 0 || length as u64 > size.saturating_sub(data_at) {
            return Err(corrupt(format!(
                "{what} declares /Length {length} from byte {data_at}, past the end of the file ({size} bytes)"
            )));
        }
        let length = length as u64;
        if length > MAX_STREAM_BYTES {
            return Err(ExtractError::TooLarge(format!(
                "{what} is {length} bytes, more than the {MAX_STREAM_BYTES} bytes read of one stream"
            )));
        }
        let raw = self.src.bytes(data_at, length)?;
        let filters = match self.lookup(&dict, b"Filter", depth)?.as_deref() {
            None => Vec::new(),
            Some(Obj::Name(n)) => vec![n.clone()],
            Some(Obj::Array(a)) => a.iter().map(|f| f.as_name().map(<[u8]>::to_vec).unwrap_or_default()).collect(),
            Some(o) => return Err(corrupt(format!("{what} has a /Filter that is {}", o.kind()))),
        };
        let parms: Vec<Option<Dict>> = match self.lookup(&dict, b"DecodeParms", depth)?.as_deref() {
            Some(Obj::Dict(d)) => vec![Some(d.clone())],
            Some(Obj::Array(a)) => a.iter().map(|p| p.as_dict().cloned()).collect(),
            _ => Vec::new(),
        };
        if filters.len() > 4 {
            return Err(corrupt(format!("{what} chains {} filters", filters.len())));
        }
        let mut data = raw;
        for (i, f) in filters.iter().enumerate() {
            data = match f.as_slice() {
                b"FlateDecode" | b"Fl" => {
                    let limit = MAX_DECODED.min(MAX_INFLATED - self.inflated);
                    let out = inflate(&data, limit).map_err(|e| match e {
                        Inflate::Limit => ExtractError::TooLarge(format!(
                            "{what} inflates to more than {limit} bytes (a compression bomb, or far larger than \
                             metadata needs)"
                        )),
                        Inflate::Bad => corrupt(format!("{what} is not valid Flate data")),
                    })?;
                    self.inflated += out.len();
                    match parms.get(i).cloned().flatten() {
                        Some(p) => unpredict(out, &p).map_err(|why| corrupt(format!("{what}: {why}")))?,
                        None => out,
                    }
                }
                b"ASCIIHexDecode" | b"AHx" => ascii_hex(&data),
                other => {
                    return Err(corrupt(format!(
                        "{what} uses the filter /{}, which this stage does not decode",
                        String::from_utf8_lossy(&other[..other.len().min(32)])
                    )))
                }
            };
        }
        Ok(data)
    }

    /// Object stream `num`, decoded and indexed once.
    fn objstm(&mut self, num: u32, depth: usize) -> Result<Rc<ObjStm>, ExtractError> {
        if let Some(os) = self.objstms.get(&num) {
            return Ok(os.clone());
        }
        let what = format!("object stream {num}");
        let obj = self.load(num, depth + 1)?;
        let dict = obj.as_dict().cloned().unwrap_or_default();
        if get(&dict, b"Type").and_then(Obj::as_name) != Some(b"ObjStm") {
            return Err(corrupt(format!("{what} is not a /Type /ObjStm stream")));
        }
        let n = match self.lookup(&dict, b"N", depth)?.as_deref() {
            Some(Obj::Int(n)) if *n >= 0 && (*n as u64) <= MAX_OBJSTM_OBJECTS => *n as usize,
            _ => return Err(corrupt(format!("{what} has no sane /N (at most {MAX_OBJSTM_OBJECTS})"))),
        };
        let first = match self.lookup(&dict, b"First", depth)?.as_deref() {
            Some(Obj::Int(f)) if *f >= 0 => *f as usize,
            _ => return Err(corrupt(format!("{what} has no sane /First"))),
        };
        let data = self.stream_data(&obj, &what, depth)?;
        if first > data.len() || n > data.len() / 2 + 1 {
            return Err(corrupt(format!("{what} declares /N {n} and /First {first} but holds {} bytes", data.len())));
        }
        let mut index = Vec::with_capacity(n);
        {
            let mut lx = Lexer::new(&data[..first], 0, true);
            for _ in 0..n {
                let (Ok(Some(obj)), Ok(Some(off))) = (lx.uint(), lx.uint()) else {
                    return Err(corrupt(format!("{what}: its header lists fewer than /N {n} objects")));
                };
                let at = (first as u64).saturating_add(off);
                if obj > u32::MAX as u64 || at >= data.len() as u64 {
                    return Err(corrupt(format!("{what}: an object offset {off} lies past its {} bytes", data.len())));
                }
                index.push((obj as u32, at as usize));
            }
        }
        let os = Rc::new(ObjStm { data, index });
        self.objstms.insert(num, os.clone());
        Ok(os)
    }

    // ----- the cross-reference ---------------------------------------------

    fn load_xref(&mut self, startxref: u64) -> Result<(), ExtractError> {
        let mut next = vec![startxref];
        let mut seen = HashSet::new();
        let mut sections = 0;
        while let Some(offset) = next.pop() {
            if !seen.insert(offset) {
                ferry_plugin_sdk::debug(&format!("PDF: cross-reference at byte {offset} already read (a /Prev cycle)"));
                continue;
            }
            sections += 1;
            if sections > MAX_SECTIONS {
                return Err(corrupt(format!("more than {MAX_SECTIONS} cross-reference sections")));
            }
            let trailer = self.xref_section(offset)?;
            // hybrid files: /XRefStm first (it supplements this table), then /Prev
            if let Some(Obj::Int(p)) = get(&trailer, b"Prev") {
                if *p >= 0 {
                    next.push(*p as u64);
                }
            }
            if let Some(Obj::Int(x)) = get(&trailer, b"XRefStm") {
                if *x >= 0 {
                    next.push(*x as u64);
                }
            }
            for (k, v) in trailer {
                if get(&self.trailer, &k).is_none() && k != b"Prev" && k != b"XRefStm" {
                    self.trailer.push((k, v));
                }
            }
        }
        Ok(())
    }

    /// One section at `offset`: its entries merged (newer first wins), its
    /// trailer dictionary returned.
    fn xref_section(&mut self, offset: u64) -> Result<Dict, ExtractError> {
        let size = self.src.size();
        if offset >= size {
            return Err(corrupt(format!(
                "the cross-reference offset {offset} lies past the end of the file ({size} bytes)"
            )));
        }
        let probe = self.src.bytes(offset, 4)?;
        if probe.starts_with(b"xref") {
            return self.xref_table(offset);
        }
        let (num, obj) = self.object_at(offset, "the cross-reference stream")?;
        self.xref_stream(num, &obj, offset)
    }

    fn add(&mut self, num: u64, entry: Entry) {
        if num == 0 || num > u32::MAX as u64 {
            return;
        }
        self.xref.entry(num as u32).or_insert(entry);
    }

    fn check_count(&self, more: u64, what: &str) -> Result<(), ExtractError> {
        if self.xref.len() as u64 + more > MAX_OBJECTS {
            return Err(corrupt(format!("{what} lists more than {MAX_OBJECTS} objects")));
        }
        Ok(())
    }

    fn xref_table(&mut self, offset: u64) -> Result<Dict, ExtractError> {
        let size = self.src.size();
        let what = "the cross-reference table";
        let mut pos = offset + 4;
        let mut entries: Vec<(u64, Entry)> = Vec::new();
        for subsection in 0.. {
            if subsection > MAX_SUBSECTIONS {
                return Err(corrupt(format!("{what} at byte {offset} has more than {MAX_SUBSECTIONS} subsections")));
            }
            // one subsection header, or the trailer
            let (start, count, after) = self.parse_at(pos, what, |lx| {
                if lx.keyword(b"trailer")? {
                    return Ok((u64::MAX, 0, lx.pos));
                }
                let at = lx.at();
                let bad = || PErr::Bad(format!("no subsection header or `trailer` at {at}"));
                let start = lx.uint()?.ok_or_else(bad)?;
                let count = lx.uint()?.ok_or_else(bad)?;
                Ok((start, count, lx.pos))
            })?;
            pos += after as u64;
            if start == u64::MAX {
                break;
            }
            // an entry is 20 bytes (some writers: 19); a count the rest of the file cannot hold is a lie
            if count > MAX_OBJECTS || count.saturating_mul(18) > size - pos.min(size) {
                return Err(corrupt(format!(
                    "{what} at byte {offset} declares a subsection of {count} entries at byte {pos}, more than the \
                     file holds"
                )));
            }
            self.check_count(entries.len() as u64 + count, what)?;
            let window = count * 21 + 64;
            if !self.src.affordable(pos, window) {
                return Err(ExtractError::TooLarge(format!(
                    "{what} at byte {offset} lists {count} objects, more than this stage reads"
                )));
            }
            let buf = self.src.bytes(pos, window)?;
            let mut lx = Lexer::new(&buf, pos, true);
            for i in 0..count {
                let at = lx.at();
                let parsed = (|| {
                    let off = lx.uint().ok()??;
                    let _gen = lx.uint().ok()??;
                    lx.skip_ws();
                    let kind = lx.peek()?;
                    lx.pos += 1;
                    Some((off, kind))
                })();
                match parsed {
                    Some((off, b'n')) if off > 0 => entries.push((start.saturating_add(i), Entry::At(off))),
                    Some((_, b'n' | b'f')) => {}
                    _ => return Err(corrupt(format!("{what}: entry {i} of the subsection at {at} is malformed"))),
                }
            }
            pos += lx.pos as u64;
        }
        for (num, e) in entries {
            self.add(num, e);
        }
        self.parse_at(pos, "the trailer", |lx| match lx.object(0)? {
            Obj::Dict(d) => Ok(d),
            o => Err(PErr::Bad(format!("the trailer is {}, not a dictionary", o.kind()))),
        })
    }

    fn xref_stream(&mut self, num: u32, obj: &Obj, offset: u64) -> Result<Dict, ExtractError> {
        let what = format!("the cross-reference stream (object {num} at byte {offset})");
        let Obj::Stream(dict, _) = obj else {
            return Err(corrupt(format!(
                "the cross-reference offset {offset} points to neither `xref` nor a cross-reference stream"
            )));
        };
        if get(dict, b"Type").and_then(Obj::as_name) != Some(b"XRef") {
            return Err(corrupt(format!("{what} is not a /Type /XRef stream")));
        }
        let ints = |o: Option<&Obj>| -> Option<Vec<i64>> {
            match o? {
                Obj::Array(a) => a.iter().map(Obj::as_int).collect(),
                _ => None,
            }
        };
        let size_entry = match get(dict, b"Size") {
            Some(Obj::Int(s)) if *s >= 0 && (*s as u64) <= MAX_OBJECTS => *s as u64,
            Some(o) => {
                return Err(corrupt(format!(
                    "{what} has /Size {}, not an object count up to {MAX_OBJECTS}",
                    match o {
                        Obj::Int(i) => i.to_string(),
                        o => o.kind().to_string(),
                    }
                )))
            }
            None => return Err(corrupt(format!("{what} has no /Size"))),
        };
        let w = ints(get(dict, b"W")).unwrap_or_default();
        if w.len() != 3 || w.iter().any(|&x| !(0..=8).contains(&x)) || w[1] == 0 {
            return Err(corrupt(format!("{what} has /W {w:?}; three field widths of 0 to 8 bytes are expected")));
        }
        let w: Vec<usize> = w.iter().map(|&x| x as usize).collect();
        let row = w[0] + w[1] + w[2];
        let index = match get(dict, b"Index") {
            None => vec![0, size_entry as i64],
            Some(o) => ints(Some(o)).unwrap_or_default(),
        };
        if index.len() % 2 != 0 || index.iter().any(|&x| x < 0 || x as u64 > MAX_OBJECTS * 4) {
            return Err(corrupt(format!("{what} has a malformed /Index")));
        }
        let total: u64 = index.chunks(2).map(|p| p[1] as u64).sum();
        if total > MAX_OBJECTS {
            return Err(corrupt(format!("{what} lists {total} objects, more than {MAX_OBJECTS}")));
        }
        self.check_count(total, &what)?;
        let data = self.stream_data(obj, &what, 0)?;
        if (data.len() as u64) < total * row as u64 {
            return Err(corrupt(format!(
                "{what} holds {} bytes, too few for the {total} entries of {row} bytes it declares",
                data.len()
            )));
        }
        let field = |bytes: &[u8]| bytes.iter().fold(0u64, |a, &b| a << 8 | b as u64);
        let mut rows = data.chunks_exact(row);
        let mut entries = Vec::new();
        for pair in index.chunks(2) {
            for i in 0..pair[1] as u64 {
                let Some(r) = rows.next() else { break };
                let kind = if w[0] == 0 { 1 } else { field(&r[..w[0]]) };
                let f2 = field(&r[w[0]..w[0] + w[1]]);
                let f3 = field(&r[w[0] + w[1]..]);
                let num = pair[0] as u64 + i;
                match kind {
                    1 if f2 > 0 => entries.push((num, Entry::At(f2))),
                    2 if f2 <= u32::MAX as u64 && f3 <= u32::MAX as u64 => {
                        entries.push((num, Entry::InStream(f2 as u32, f3 as u32)))
                    }
                    _ => {}
                }
            }
        }
        for (num, e) in entries {
            self.add(num, e);
        }
        Ok(dict.clone())
    }

    /// The fallback: `N G obj` headers and `trailer`s found by reading the
    /// file from the start, as far as the budget allows.
    fn scan(&mut self) -> Result<(), ExtractError> {
        self.scanned = true;
        let size = self.src.size();
        let left = self.src.budget().saturating_sub(self.src.fetched());
        // already-fetched chunks are free; stay a chunk under the budget
        let mut len = size;
        while len > 0 && !self.src.affordable(0, len) {
            len = len.min(left).saturating_sub(16 * 1024);
        }
        let buf = self.src.bytes(0, len)?;
        let complete = len == size;
        let mut found: Vec<(u64, u64)> = Vec::new();
        let mut trailers: Vec<usize> = Vec::new();
        let mut i = 0;
        while let Some(at) = find(&buf[i..], b"obj").map(|a| a + i) {
            i = at + 3;
            if buf.get(at + 3).is_some_and(|&b| !lex::is_ws(b) && !lex::is_delim(b)) {
                continue;
            }
            if let Some((num, start)) = header_before(&buf, at) {
                if found.len() as u64 >= MAX_OBJECTS {
                    return Err(corrupt(format!("more than {MAX_OBJECTS} objects found by scanning")));
                }
                found.push((num, start as u64));
            }
        }
        let mut i = 0;
        while let Some(at) = find(&buf[i..], b"trailer").map(|a| a + i) {
            trailers.push(at + 7);
            i = at + 7;
        }
        // later definitions win
        for &(num, offset) in found.iter().rev() {
            self.add(num, Entry::At(offset));
        }
        // the last trailer with a /Root (or, for xref-stream files, a /Type /XRef or /ObjStm)
        let window = |start: usize| {
            let end = (start + SCAN_WINDOW).min(buf.len());
            (&buf[start..end], complete && end == buf.len())
        };
        for &t in trailers.iter().rev().take(MAX_SCAN_PARSES) {
            let (w, complete) = window(t);
            let mut lx = Lexer::new(w, t as u64, complete);
            if let Ok(Obj::Dict(d)) = lx.object(0) {
                for (k, v) in d {
                    if get(&self.trailer, &k).is_none() {
                        self.trailer.push((k, v));
                    }
                }
            }
        }
        // cross-reference stream dictionaries are trailers too; object streams hold objects
        let mut objstms = Vec::new();
        let mut catalog = None;
        for &(num, offset) in found.iter().rev().take(MAX_SCAN_PARSES) {
            let (w, complete) = window(offset as usize);
            let mut lx = Lexer::new(w, offset, complete);
            let Ok((_, _, Obj::Dict(d), stream)) = indirect(&mut lx) else { continue };
            if stream.is_none() {
                if catalog.is_none() && get(&d, b"Type").and_then(Obj::as_name) == Some(b"Catalog") {
                    catalog = Some(num);
                }
                continue;
            }
            match get(&d, b"Type").and_then(Obj::as_name) {
                Some(b"XRef") => {
                    for (k, v) in d {
                        if matches!(k.as_slice(), b"Root" | b"Info" | b"Encrypt") && get(&self.trailer, &k).is_none() {
                            self.trailer.push((k, v));
                        }
                    }
                }
                Some(b"ObjStm") => objstms.push(num),
                _ => {}
            }
        }
        for stm in objstms {
            let Ok(os) = self.objstm(stm as u32, 0) else { continue };
            for (i, &(num, _)) in os.index.iter().enumerate() {
                self.add(num as u64, Entry::InStream(stm as u32, i as u32));
            }
        }
        if get(&self.trailer, b"Root").is_none() {
            // no trailer at all: the catalog found by its type
            if let Some(num) = catalog {
                self.trailer.push((b"Root".to_vec(), Obj::Ref(num as u32, 0)));
            }
        }
        if get(&self.trailer, b"Root").is_none() && !complete {
            return Err(ExtractError::TooLarge(format!(
                "no document catalog in the first {len} bytes of {size}, as far as this stage reads"
            )));
        }
        Ok(())
    }

    // ----- the document ----------------------------------------------------

    fn document(&mut self) -> Result<Doc, ExtractError> {
        if get(&self.trailer, b"Encrypt").is_some_and(|e| !matches!(e, Obj::Null)) {
            return Err(ExtractError::Encrypted(
                "encrypted PDF: the trailer has an /Encrypt dictionary, so its metadata and content cannot be read \
                 (ask the provider for an unencrypted copy)"
                    .into(),
            ));
        }
        let trailer = self.trailer.clone();
        let catalog = self.lookup(&trailer, b"Root", 0)?.ok_or_else(|| corrupt("the trailer has no /Root catalog"))?;
        let Some(catalog) = catalog.as_dict().cloned() else {
            return Err(corrupt(format!("the document catalog is {}, not a dictionary", catalog.kind())));
        };
        let catalog_version = get(&catalog, b"Version").and_then(Obj::as_name).and_then(|v| {
            let v = std::str::from_utf8(v).ok()?;
            (v.len() <= 4 && v.contains('.') && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
                .then(|| v.to_string())
        });
        let pages = self.lookup(&catalog, b"Pages", 0)?.ok_or_else(|| corrupt("the catalog has no /Pages tree"))?;
        let Some(pages) = pages.as_dict().cloned() else {
            return Err(corrupt(format!("the page tree root is {}, not a dictionary", pages.kind())));
        };
        let count = match self.lookup(&pages, b"Count", 0)?.as_deref() {
            Some(Obj::Int(n)) if (0..=MAX_PAGES).contains(n) => *n,
            Some(Obj::Int(n)) => return Err(corrupt(format!("the page tree root has /Count {n}, not a page count"))),
            Some(o) => return Err(corrupt(format!("the page tree root's /Count is {}, not an integer", o.kind()))),
            None => return Err(corrupt("the page tree root has no /Count")),
        };
        let mut info = Info::default();
        match self.lookup(&trailer, b"Info", 0) {
            Ok(Some(d)) => {
                if let Some(d) = d.as_dict().cloned() {
                    info = self.info(&d)?;
                }
            }
            Ok(None) => {}
            // a broken info dictionary loses metadata, not the document
            Err(ExtractError::Content(why)) => ferry_plugin_sdk::debug(&format!("PDF info dictionary: {why}")),
            Err(e) => return Err(e),
        }
        if info.title.is_none() || info.created.is_none() || info.author.is_none() || info.modified.is_none() {
            match self.xmp(&catalog) {
                Ok(Some(x)) => {
                    info.title = info.title.or(x.title);
                    info.author = info.author.or(x.author);
                    info.created = info.created.or(x.created);
                    info.modified = info.modified.or(x.modified);
                    info.producer = info.producer.or(x.producer);
                }
                Ok(None) => {}
                Err(ExtractError::Content(why) | ExtractError::TooLarge(why)) => {
                    ferry_plugin_sdk::debug(&format!("PDF XMP metadata: {why}"))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Doc { pages: count, catalog_version, info })
    }

    fn info(&mut self, d: &Dict) -> Result<Info, ExtractError> {
        let mut text = |key: &[u8]| -> Result<Option<String>, ExtractError> {
            Ok(match self.lookup(d, key, 0) {
                Ok(Some(v)) => match &*v {
                    Obj::Str(s) => text::decode_text(s),
                    _ => None,
                },
                Ok(None) | Err(ExtractError::Content(_)) => None,
                Err(e) => return Err(e),
            })
        };
        Ok(Info {
            title: text(b"Title")?,
            author: text(b"Author")?,
            created: text(b"CreationDate")?.and_then(|s| text::pdf_date(&s)),
            modified: text(b"ModDate")?.and_then(|s| text::pdf_date(&s)),
            producer: text(b"Producer")?,
        })
    }

    fn xmp(&mut self, catalog: &Dict) -> Result<Option<text::Xmp>, ExtractError> {
        let Some(m) = self.lookup(catalog, b"Metadata", 0)? else {
            return Ok(None);
        };
        if !matches!(*m, Obj::Stream(..)) {
            return Ok(None);
        }
        let data = self.stream_data(&m, "the XMP metadata stream", 0)?;
        Ok(Some(text::xmp(&data)))
    }
}

/// `N G ` before `obj` at `at`: the object number and where `N` starts.
fn header_before(buf: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut i = at;
    let ws = |i: &mut usize| {
        let s = *i;
        while *i > 0 && lex::is_ws(buf[*i - 1]) {
            *i -= 1;
        }
        s != *i
    };
    let digits = |i: &mut usize| {
        let s = *i;
        while *i > 0 && buf[*i - 1].is_ascii_digit() && s - *i < 10 {
            *i -= 1;
        }
        (s != *i).then(|| lex::parse_uint(&buf[*i..s]))?
    };
    if !ws(&mut i) {
        return None;
    }
    digits(&mut i)?;
    if !ws(&mut i) {
        return None;
    }
    let num = digits(&mut i)?;
    if i > 0 && !lex::is_ws(buf[i - 1]) && !lex::is_delim(buf[i - 1]) {
        return None;
    }
    Some((num, i))
}

enum Inflate {
    Limit,
    Bad,
}

/// Zlib (or, failing that, raw deflate) data inflated to at most `limit` bytes.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, Inflate> {
    use miniz_oxide::inflate::{decompress_to_vec_with_limit, decompress_to_vec_zlib_with_limit, TINFLStatus};
    let judge = |r: Result<Vec<u8>, miniz_oxide::inflate::DecompressError>| match r {
        Ok(v) => Ok(v),
        Err(e) if e.status == TINFLStatus::HasMoreOutput => Err(Inflate::Limit),
        // a bad checksum, or input cut short: take what inflated
        Err(e)
            if !e.output.is_empty()
                && matches!(e.status, TINFLStatus::Adler32Mismatch | TINFLStatus::FailedCannotMakeProgress) =>
        {
            Ok(e.output)
        }
        Err(_) => Err(Inflate::Bad),
    };
    match judge(decompress_to_vec_zlib_with_limit(data, limit)) {
        Err(Inflate::Bad) => judge(decompress_to_vec_with_limit(data, limit)),
        other => other,
    }
}

fn ascii_hex(data: &[u8]) -> Vec<u8> {
    let mut lx_buf = Vec::with_capacity(data.len() + 2);
    lx_buf.push(b'<');
    lx_buf.extend(data.iter().copied().take_while(|&b| b != b'>').filter(|b| b.is_ascii_hexdigit()));
    lx_buf.push(b'>');
    let mut lx = Lexer::new(&lx_buf, 0, true);
    match lx.object(0) {
        Ok(Obj::Str(s)) => s,
        _ => Vec::new(),
    }
}

/// Undoes a PNG predictor (`/Predictor` 10–15); 1 is none; TIFF (2) is refused.
fn unpredict(data: Vec<u8>, parms: &Dict) -> Result<Vec<u8>, String> {
    let int = |k: &[u8], default: i64| get(parms, k).and_then(Obj::as_int).unwrap_or(default);
    let predictor = int(b"Predictor", 1);
    if predictor == 1 {
        return Ok(data);
    }
    if !(10..=15).contains(&predictor) {
        return Err(format!("the predictor {predictor} is not supported"));
    }
    let (colors, bpc, columns) = (int(b"Colors", 1), int(b"BitsPerComponent", 8), int(b"Columns", 1));
    if !(1..=32).contains(&colors) || ![1, 2, 4, 8, 16].contains(&bpc) || !(1..=1 << 20).contains(&columns) {
        return Err("the predictor's /Colors, /BitsPerComponent or /Columns is out of range".into());
    }
    let bpp = ((colors * bpc + 7) / 8) as usize;
    let row = ((colors * bpc * columns + 7) / 8) as usize;
    if row >= data.len() {
        // not one whole row (and no allocation of what /Columns claims)
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(data.len());
    let mut prev = vec![0u8; row];
    for line in data.chunks(row + 1) {
        if line.len() < row + 1 {
            break;
        }
        let (tag, src) = (line[0], &line[1..]);
        let mut cur = vec![0u8; row];
        for i in 0..row {
            let a = if i >= bpp { cur[i - bpp] } else { 0 };
            let b = prev[i];
            let c = if i >= bpp { prev[i - bpp] } else { 0 };
            cur[i] = src[i].wrapping_add(match tag {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((a as u16 + b as u16) / 2) as u8,
                4 => {
                    let p = a as i16 + b as i16 - c as i16;
                    let (pa, pb, pc) = ((p - a as i16).abs(), (p - b as i16).abs(), (p - c as i16).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                t => return Err(format!("a PNG predictor row has the filter type {t}")),
            });
        }
        out.extend_from_slice(&cur);
        prev = cur;
    }
    Ok(out)
}
