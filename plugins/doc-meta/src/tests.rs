use std::cell::Cell;

use ferry_plugin_sdk::types::{ErrorKind, StageError};
use lopdf::{dictionary, Document, Object, Stream, StringFormat};

use super::*;
use crate::pdf::text::{decode_text, pdf_date, xmp};

// ----- helpers -----------------------------------------------------------

/// In-memory file counting every byte handed out.
struct Mem<'a> {
    bytes: &'a [u8],
    read: &'a Cell<u64>,
}

impl RangeRead for Mem<'_> {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, StageError> {
        let mut s = self.bytes;
        let v = s.read_at(offset, len)?;
        self.read.set(self.read.get() + v.len() as u64);
        Ok(v)
    }
}

fn run_with(bytes: &[u8], budget: u64, claim: Option<&str>) -> (Result<Metadata, ExtractError>, u64) {
    let read = Cell::new(0);
    let r = extract_from(Mem { bytes, read: &read }, budget, claim).map(|(m, fetched)| {
        assert_eq!(fetched, read.get());
        m
    });
    (r, read.get())
}

fn run(bytes: &[u8]) -> Result<Metadata, ExtractError> {
    run_with(bytes, DEFAULT_MAX_READ, None).0
}

fn ok(bytes: &[u8]) -> Metadata {
    run(bytes).unwrap_or_else(|e| panic!("extraction failed: {e}"))
}

fn err(bytes: &[u8]) -> String {
    match run(bytes) {
        Ok(m) => panic!("expected an error, got {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn text_of<'a>(m: &'a Metadata, key: &str) -> Option<&'a str> {
    m.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        Value::Text(t) => Some(t.as_str()),
        _ => None,
    })
}

fn int_of(m: &Metadata, key: &str) -> Option<i64> {
    m.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    })
}

// ----- PDF fixtures made with lopdf ------------------------------------------

struct Spec {
    pages: usize,
    info: bool,
    xmp: Option<&'static str>,
    modern: bool,
    encrypt: bool,
    /// Bytes of incompressible padding in a stream object (to make big files).
    padding: usize,
}

impl Default for Spec {
    fn default() -> Self {
        Spec { pages: 3, info: true, xmp: None, modern: false, encrypt: false, padding: 0 }
    }
}

const TITLE_UTF16: &[u8] = b"\xfe\xff\x00B\x00e\x00f\x00u\x00n\x00d\x00 \x00M\x00\xfc\x00l\x00l\x00e\x00r";

fn make_pdf(spec: &Spec) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let content = doc.add_object(Stream::new(dictionary! {}, b"BT /F1 12 Tf (hello) Tj ET".to_vec()));
    let kids: Vec<Object> = (0..spec.pages)
        .map(|_| {
            doc.add_object(dictionary! {
                "Type" => "Page",
                "Parent" => pages_id,
                "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
                "Contents" => content,
            })
            .into()
        })
        .collect();
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! { "Type" => "Pages", "Kids" => kids, "Count" => spec.pages as i64 }),
    );
    let mut catalog = dictionary! { "Type" => "Catalog", "Pages" => pages_id };
    if let Some(x) = spec.xmp {
        let m = doc
            .add_object(Stream::new(dictionary! { "Type" => "Metadata", "Subtype" => "XML" }, x.as_bytes().to_vec()));
        catalog.set("Metadata", m);
    }
    if spec.padding > 0 {
        // xorshift noise: deflate cannot shrink it
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..spec.padding)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let pad = doc.add_object(Stream::new(dictionary! {}, noise).with_compression(false));
        catalog.set("PieceInfo", pad);
    }
    let catalog_id = doc.add_object(catalog);
    doc.trailer.set("Root", catalog_id);
    if spec.info {
        let info = doc.add_object(dictionary! {
            "Title" => Object::String(TITLE_UTF16.to_vec(), StringFormat::Hexadecimal),
            "Author" => Object::String(b"Dr. A. Z\xfcrcher (Radiologie)".to_vec(), StringFormat::Literal),
            "CreationDate" => Object::string_literal("D:20240131123456+01'00'"),
            "ModDate" => Object::string_literal("D:20240201080000Z"),
            "Producer" => Object::string_literal("lopdf test"),
        });
        doc.trailer.set("Info", info);
    }
    doc.trailer.set(
        "ID",
        vec![
            Object::String(vec![1; 16], StringFormat::Hexadecimal),
            Object::String(vec![1; 16], StringFormat::Hexadecimal),
        ],
    );
    if spec.encrypt {
        let state = lopdf::EncryptionState::try_from(lopdf::EncryptionVersion::V2 {
            document: &doc,
            owner_password: "owner",
            user_password: "",
            key_length: 128,
            permissions: lopdf::Permissions::all(),
        })
        .unwrap();
        doc.encrypt(&state).unwrap();
    }
    let mut out = Vec::new();
    if spec.modern {
        let options = lopdf::SaveOptions::builder().use_object_streams(true).use_xref_streams(true).build();
        doc.save_with_options(&mut out, options).unwrap();
    } else {
        doc.reference_table.cross_reference_type = lopdf::xref::XrefType::CrossReferenceTable;
        doc.save_to(&mut out).unwrap();
    }
    out
}

fn classic() -> Vec<u8> {
    make_pdf(&Spec::default())
}

fn modern() -> Vec<u8> {
    make_pdf(&Spec { modern: true, ..Spec::default() })
}

fn assert_full_metadata(m: &Metadata, pages: i64) {
    assert_eq!(text_of(m, "doc.format"), Some("pdf"));
    assert_eq!(text_of(m, "doc.content-type"), Some("application/pdf"));
    assert_eq!(int_of(m, "pdf.pages"), Some(pages));
    assert_eq!(text_of(m, "pdf.title"), Some("Befund Müller"));
    assert_eq!(text_of(m, "pdf.author"), Some("Dr. A. Zürcher (Radiologie)"));
    assert_eq!(text_of(m, "pdf.created"), Some("2024-01-31T12:34:56+01:00"));
    assert_eq!(text_of(m, "pdf.modified"), Some("2024-02-01T08:00:00Z"));
    assert_eq!(text_of(m, "pdf.producer"), Some("lopdf test"));
    assert!(text_of(m, "pdf.version").is_some());
}

// ----- hand-built PDFs ---------------------------------------------------

#[derive(Default)]
struct Hand {
    out: Vec<u8>,
    offsets: Vec<(u32, u64)>,
}

impl Hand {
    fn new() -> Self {
        Hand { out: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec(), offsets: Vec::new() }
    }
    fn obj(&mut self, num: u32, body: &[u8]) -> &mut Self {
        self.offsets.push((num, self.out.len() as u64));
        self.out.extend_from_slice(format!("{num} 0 obj\n").as_bytes());
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\nendobj\n");
        self
    }
    fn stream(&mut self, num: u32, dict: &str, data: &[u8]) -> &mut Self {
        let mut body = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\nendstream");
        self.obj(num, &body)
    }
    /// A classic table and trailer (`{XREF}` in `extra` becomes the table's offset).
    fn classic(&mut self, extra: &str) -> Vec<u8> {
        let xref = self.out.len();
        let max = self.offsets.iter().map(|o| o.0).max().unwrap_or(0);
        let mut t = format!("xref\n0 {}\n0000000000 65535 f \n", max + 1);
        for n in 1..=max {
            match self.offsets.iter().rev().find(|o| o.0 == n) {
                Some((_, off)) => t.push_str(&format!("{off:010} 00000 n \n")),
                None => t.push_str("0000000000 65535 f \n"),
            }
        }
        let extra = extra.replace("{XREF}", &xref.to_string());
        t.push_str(&format!("trailer\n<< /Size {} {extra} >>\nstartxref\n{xref}\n%%EOF\n", max + 1));
        let mut out = self.out.clone();
        out.extend_from_slice(t.as_bytes());
        out
    }
    /// An uncompressed cross-reference stream (`/W [1 4 2]`) as object
    /// `num`, listing the objects written plus `compressed` (num, stream, index).
    fn xref_stream(&mut self, num: u32, extra: &str, compressed: &[(u32, u32, u32)]) -> Vec<u8> {
        let xref = self.out.len() as u64;
        let mut rows: Vec<(u32, [u8; 7])> = Vec::new();
        let mut row = |n: u32, t: u8, f2: u32, f3: u16| {
            let mut r = [0u8; 7];
            r[0] = t;
            r[1..5].copy_from_slice(&f2.to_be_bytes());
            r[5..].copy_from_slice(&f3.to_be_bytes());
            rows.push((n, r));
        };
        for &(n, off) in &self.offsets {
            row(n, 1, off as u32, 0);
        }
        row(num, 1, xref as u32, 0);
        for &(n, s, i) in compressed {
            row(n, 2, s, i as u16);
        }
        rows.sort_by_key(|r| r.0);
        let size = rows.last().unwrap().0 + 1;
        let mut data = Vec::new();
        let mut index = String::new();
        for (n, r) in &rows {
            index.push_str(&format!("{n} 1 "));
            data.extend_from_slice(r);
        }
        let dict = format!("/Type /XRef /Size {size} /W [1 4 2] /Index [{index}] {extra}");
        self.stream(num, &dict, &data);
        let mut out = self.out.clone();
        out.extend_from_slice(format!("startxref\n{xref}\n%%EOF\n").as_bytes());
        out
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(data, 6)
}

/// Objects 1 (catalog), 2 (pages), 3 (page) as plain objects.
fn basic(h: &mut Hand, count: &str) {
    h.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    h.obj(2, format!("<< /Type /Pages /Kids [3 0 R] /Count {count} >>").as_bytes());
    h.obj(3, b"<< /Type /Page /Parent 2 0 R >>");
}

// ----- PDF: real files -------------------------------------------------------

#[test]
fn classic_xref_pdf() {
    let pdf = classic();
    assert!(pdf.windows(5).any(|w| w == b"\nxref"), "fixture has a classic table");
    assert_full_metadata(&ok(&pdf), 3);
}

#[test]
fn xref_stream_and_object_stream_pdf() {
    let pdf = modern();
    assert!(pdf.windows(7).any(|w| w == b"/ObjStm"), "fixture has object streams");
    assert!(pdf.windows(5).any(|w| w == b"/XRef"), "fixture has an xref stream");
    let m = ok(&pdf);
    assert_full_metadata(&m, 3);
    // the strict path (no repair scan) gets there too
    let read = Cell::new(0);
    let mut src = Source::new(Mem { bytes: &pdf, read: &read }, DEFAULT_MAX_READ);
    let m = pdf::extract_with(&mut src, &pdf[..64], false).unwrap();
    assert_eq!(int_of(&m, "pdf.pages"), Some(3));
}

#[test]
fn many_pages_and_no_info() {
    for modern in [false, true] {
        let m = ok(&make_pdf(&Spec { pages: 250, info: false, modern, ..Spec::default() }));
        assert_eq!(int_of(&m, "pdf.pages"), Some(250));
        assert_eq!(text_of(&m, "pdf.title"), None);
    }
}

#[test]
fn zero_pages() {
    assert_eq!(int_of(&ok(&make_pdf(&Spec { pages: 0, ..Spec::default() })), "pdf.pages"), Some(0));
}

#[test]
fn xmp_fills_what_info_lacks() {
    let packet = r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreateDate="2023-05-06T07:08:09+02:00">
<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Arztbrief &amp; Befund</rdf:li></rdf:Alt></dc:title>
<dc:creator><rdf:Seq><rdf:li>Praxis Nord</rdf:li></rdf:Seq></dc:creator>
<xmp:ModifyDate>2023-05-07T00:00:00Z</xmp:ModifyDate>
</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>"#;
    for modern in [false, true] {
        let m = ok(&make_pdf(&Spec { info: false, xmp: Some(packet), modern, ..Spec::default() }));
        assert_eq!(text_of(&m, "pdf.title"), Some("Arztbrief & Befund"));
        assert_eq!(text_of(&m, "pdf.author"), Some("Praxis Nord"));
        assert_eq!(text_of(&m, "pdf.created"), Some("2023-05-06T07:08:09+02:00"));
        assert_eq!(text_of(&m, "pdf.modified"), Some("2023-05-07T00:00:00Z"));
    }
    // the info dictionary wins over XMP
    let m = ok(&make_pdf(&Spec { xmp: Some(packet), ..Spec::default() }));
    assert_eq!(text_of(&m, "pdf.title"), Some("Befund Müller"));
}

#[test]
fn encrypted_pdf_is_a_permanent_error() {
    for modern in [false, true] {
        let pdf = make_pdf(&Spec { encrypt: true, modern, ..Spec::default() });
        let e = run(&pdf).unwrap_err();
        assert!(matches!(e, ExtractError::Encrypted(_)), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("encrypted PDF: "), "{msg}");
        assert!(msg.contains("unencrypted copy"), "{msg}");
        let stage: StageError = e.into();
        assert_eq!(stage.kind, ErrorKind::Permanent);
    }
    // hand-built: /Encrypt in the trailer, nothing else needed
    let mut h = Hand::new();
    basic(&mut h, "1");
    h.obj(4, b"<< /Filter /Standard /V 2 /R 3 /O <00> /U <00> /P -4 >>");
    assert!(err(&h.classic("/Root 1 0 R /Encrypt 4 0 R")).starts_with("encrypted PDF: "));
}

#[test]
fn errors_never_carry_the_title() {
    let pdf = classic();
    let cut = &pdf[..pdf.len() - 30];
    for bytes in [cut, &pdf[..pdf.len() / 2]] {
        let e = err(bytes);
        assert!(!e.contains("Befund") && !e.contains("Zürcher"), "{e}");
    }
}

#[test]
fn big_pdf_reads_only_a_little() {
    let pdf = make_pdf(&Spec { padding: 20 << 20, ..Spec::default() });
    assert!(pdf.len() > 20 << 20);
    let (m, read) = run_with(&pdf, DEFAULT_MAX_READ, None);
    assert_full_metadata(&m.unwrap(), 3);
    assert!(read < 256 << 10, "read {read} bytes of {}", pdf.len());
}

// ----- PDF: hostile ----------------------------------------------------------

#[test]
fn truncated_pdf() {
    let pdf = classic();
    for cut in [pdf.len() / 2, 40, 9] {
        let e = err(&pdf[..cut]);
        assert!(e.starts_with("corrupt PDF: "), "{e}");
    }
    assert!(err(&pdf[..pdf.len() / 2]).contains("truncated"));
}

#[test]
fn lying_startxref_is_repaired_by_scanning() {
    for fixture in [classic(), modern()] {
        let at = fixture.windows(9).rposition(|w| w == b"startxref").unwrap();
        let mut bad = fixture[..at].to_vec();
        bad.extend_from_slice(b"startxref\n17\n%%EOF\n");
        assert_full_metadata(&ok(&bad), 3);
        let mut past = fixture[..at].to_vec();
        past.extend_from_slice(b"startxref\n999999999\n%%EOF\n");
        assert_full_metadata(&ok(&past), 3);
        // without repair: the lie is named
        let read = Cell::new(0);
        let mut src = Source::new(Mem { bytes: &past, read: &read }, DEFAULT_MAX_READ);
        let e = pdf::extract_with(&mut src, &past[..64], false).unwrap_err().to_string();
        assert!(e.contains("999999999") && e.contains("past the end"), "{e}");
    }
}

#[test]
fn prev_cycle_terminates() {
    let mut h = Hand::new();
    basic(&mut h, "1");
    let pdf = h.classic("/Root 1 0 R /Prev {XREF}");
    assert_eq!(int_of(&ok(&pdf), "pdf.pages"), Some(1));
    // two sections pointing at each other (offsets written with leading
    // zeros, so patching one in keeps every other offset right)
    let mut h = Hand::new();
    basic(&mut h, "1");
    let first = h.classic("/Root 1 0 R /Prev 0000000000");
    let a = first.windows(6).position(|w| w == b"\nxref\n").unwrap() + 1;
    let mut two = first[..first.windows(9).rposition(|w| w == b"startxref").unwrap()].to_vec();
    let b = two.len();
    two.extend_from_slice(
        format!("xref\n0 1\n0000000000 65535 f \ntrailer\n<< /Size 4 /Root 1 0 R /Prev {a} >>\n").as_bytes(),
    );
    two.extend_from_slice(format!("startxref\n{b}\n%%EOF\n").as_bytes());
    let at = two.windows(16).position(|w| w == b"/Prev 0000000000").unwrap();
    two[at..at + 16].copy_from_slice(format!("/Prev {b:010}").as_bytes());
    let read = Cell::new(0);
    let mut src = Source::new(Mem { bytes: &two, read: &read }, DEFAULT_MAX_READ);
    let m = pdf::extract_with(&mut src, &two[..64], false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(int_of(&m, "pdf.pages"), Some(1));
}

#[test]
fn huge_length_is_refused_not_believed() {
    // the page count lives in an object stream whose /Length is absurd
    let mut h = Hand::new();
    h.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    h.obj(2, b"<< /Type /Pages /Kids [] /Count 5 0 R >>");
    h.obj(4, b"<< /Type /ObjStm /N 1 /First 4 /Length 99999999999 >>\nstream\n5 0 7\nendstream");
    let pdf = h.xref_stream(6, "/Root 1 0 R", &[(5, 4, 0)]);
    let (r, read) = run_with(&pdf, DEFAULT_MAX_READ, None);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("/Length 99999999999") && e.contains("past the end"), "{e}");
    assert!(read <= pdf.len() as u64);
}

#[test]
fn deep_nesting_is_refused() {
    let mut h = Hand::new();
    let deep = format!("<< /Type /Catalog /Pages 2 0 R /Deep {}1{} >>", "[".repeat(200), "]".repeat(200));
    h.obj(1, deep.as_bytes());
    h.obj(2, b"<< /Type /Pages /Kids [] /Count 0 >>");
    let e = err(&h.classic("/Root 1 0 R"));
    assert!(e.contains("deeper than 32"), "{e}");
    let mut h = Hand::new();
    let deep = format!("{}>>", "<< /A ".repeat(10_000));
    h.obj(1, deep.as_bytes());
    assert!(err(&h.classic("/Root 1 0 R")).contains("deeper than 32"));
}

#[test]
fn absurd_xref_stream_fields() {
    for (extra, needle) in [
        ("/W [1 200 2]", "/W"),
        ("/W [1 4]", "/W"),
        ("/Size 99999999999999", "/Size"),
        ("/Index [0 99999999999]", "/Index"),
    ] {
        let mut h = Hand::new();
        basic(&mut h, "1");
        let xref = h.out.len();
        // a stream dictionary with the absurd entry first (the first of duplicate keys wins)
        h.stream(7, &format!("{extra} /Type /XRef /Size 8 /W [1 4 2] /Root 1 0 R"), &[0u8; 14]);
        let mut pdf = h.out.clone();
        pdf.extend_from_slice(format!("startxref\n{xref}\n%%EOF\n").as_bytes());
        let read = Cell::new(0);
        let mut src = Source::new(Mem { bytes: &pdf, read: &read }, DEFAULT_MAX_READ);
        let e = pdf::extract_with(&mut src, &pdf[..64], false).unwrap_err().to_string();
        assert!(e.contains(needle), "{extra}: {e}");
        // with repair the objects are found by scanning
        assert_eq!(int_of(&ok(&pdf), "pdf.pages"), Some(1), "{extra}");
    }
}

#[test]
fn deflate_bomb_in_object_stream() {
    let mut h = Hand::new();
    h.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    // ~1 GiB of zeros after the index: far past the 8 MiB cap
    let bomb = ferry_testkit::deflate_bomb(b"2 0 << /Type /Pages /Kids [] /Count 1 >>", 4_000_000);
    let mut body =
        format!("<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length {} >>\nstream\n", bomb.len()).into_bytes();
    body.extend_from_slice(&bomb);
    body.extend_from_slice(b"\nendstream");
    h.obj(4, &body);
    let pdf = h.xref_stream(6, "/Root 1 0 R", &[(2, 4, 0)]);
    let (peak, (r, _)) = ferry_testkit::peak_allocation(|| run_with(&pdf, DEFAULT_MAX_READ, None));
    let e = r.unwrap_err().to_string();
    assert!(e.starts_with("too large: ") && e.contains("inflates to more than"), "{e}");
    assert!(peak < 64 << 20, "peak allocation {peak}");
}

#[test]
fn page_count_must_be_sane() {
    for (count, needle) in
        [("-3", "/Count -3"), ("99999999999", "/Count 99999999999"), ("(x)", "a string"), ("2.5", "real")]
    {
        let mut h = Hand::new();
        basic(&mut h, count);
        let e = err(&h.classic("/Root 1 0 R"));
        assert!(e.contains(needle), "{count}: {e}");
    }
}

#[test]
fn compressed_xref_stream_with_png_predictor() {
    // objects 1..3 plain, the xref stream Flate + PNG Up predictor, as Acrobat writes it
    let mut h = Hand::new();
    basic(&mut h, "1");
    let xref = h.out.len() as u32;
    let mut rows = vec![[0u8, 0, 0, 0, 0, 0xff, 0xff]];
    for &(_, off) in &h.offsets {
        let o = (off as u32).to_be_bytes();
        rows.push([1, o[0], o[1], o[2], o[3], 0, 0]);
    }
    let o = xref.to_be_bytes();
    rows.push([1, o[0], o[1], o[2], o[3], 0, 0]);
    let mut predicted = Vec::new();
    let mut prev = [0u8; 7];
    for r in &rows {
        predicted.push(2u8);
        predicted.extend(r.iter().zip(prev).map(|(a, b)| a.wrapping_sub(b)));
        prev = *r;
    }
    let data = zlib(&predicted);
    h.stream(
        4,
        "/Type /XRef /Size 5 /W [1 4 2] /Root 1 0 R /Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 7 >>",
        &data,
    );
    let mut pdf = h.out.clone();
    pdf.extend_from_slice(format!("startxref\n{xref}\n%%EOF\n").as_bytes());
    let read = Cell::new(0);
    let mut src = Source::new(Mem { bytes: &pdf, read: &read }, DEFAULT_MAX_READ);
    let m = pdf::extract_with(&mut src, &pdf[..64], false).unwrap();
    assert_eq!(int_of(&m, "pdf.pages"), Some(1));
    assert_eq!(text_of(&m, "pdf.version"), Some("1.7"));
}

#[test]
fn broken_xref_in_big_file_needs_more_than_budget() {
    let pdf = make_pdf(&Spec { padding: 12 << 20, ..Spec::default() });
    // padding sits before the catalog; break the table
    let at = pdf.windows(9).rposition(|w| w == b"startxref").unwrap();
    let mut bad = pdf[..at].to_vec();
    bad.extend_from_slice(b"startxref\n3\n%%EOF\n");
    let (r, read) = run_with(&bad, DEFAULT_MAX_READ, None);
    let e = r.unwrap_err();
    assert!(matches!(e, ExtractError::TooLarge(_)), "{e}");
    assert!(e.to_string().starts_with("too large: "), "{e}");
    assert!(read <= DEFAULT_MAX_READ, "read {read}");
}

#[test]
fn not_a_pdf_despite_its_name() {
    let (r, _) = run_with(b"<html>hello</html>", DEFAULT_MAX_READ, claims_pdf("report.PDF", None));
    let e = r.unwrap_err().to_string();
    assert!(e.starts_with("not a PDF: its name ends in .pdf"), "{e}");
    let (r, _) = run_with(&png(3, 4), DEFAULT_MAX_READ, claims_pdf("x", Some("application/pdf")));
    assert!(r.unwrap_err().to_string().contains("they look like png"));
    assert_eq!(claims_pdf("a.txt", None), None);
}

#[test]
fn empty_and_binary_garbage() {
    assert_eq!(err(b""), "empty file (0 bytes)");
    let e = err(&[0x00, 0x01, 0x02, 0x03, 0x00, 0x10]);
    assert!(e.starts_with("unsupported format: ") && e.contains("00 01 02 03"), "{e}");
}

// ----- PDF strings and dates ------------------------------------------------

#[test]
fn text_strings() {
    assert_eq!(decode_text(b"Caf\xe9").as_deref(), Some("Café"));
    assert_eq!(decode_text(b"\x93quoted\x94 \x80\xa0").as_deref(), Some("ﬁquotedﬂ •€"));
    assert_eq!(decode_text(b"\xfe\xff\x00A\xd8\x3d\xde\x00").as_deref(), Some("A😀"));
    assert_eq!(decode_text(b"\xfe\xff\x00\x1bde\x00\x1b\x00X").as_deref(), Some("X"));
    assert_eq!(decode_text(b"\xef\xbb\xbf\xc3\xa4").as_deref(), Some("ä"));
    assert_eq!(decode_text(b"  \0 "), None);
    // escapes and hex strings, through the lexer
    let parse = |s: &[u8]| {
        let mut lx = pdf::lex::Lexer::new(s, 0, true);
        match lx.object(0).unwrap() {
            pdf::lex::Obj::Str(b) => b,
            o => panic!("{o:?}"),
        }
    };
    assert_eq!(parse(b"(a\\(b\\)c\\\\d\\n\\101\\0617 (nested) x\\\ny)"), b"a(b)c\\d\nA17 (nested) xy");
    assert_eq!(parse(b"<48 65 6c6C 6>"), b"Hell`");
    assert_eq!(parse(b"(line\r\nbreak)"), b"line\nbreak");
}

#[test]
fn dates() {
    assert_eq!(pdf_date("D:20240131123456+01'00'").as_deref(), Some("2024-01-31T12:34:56+01:00"));
    assert_eq!(pdf_date("D:20240131123456-05'30").as_deref(), Some("2024-01-31T12:34:56-05:30"));
    assert_eq!(pdf_date("D:20240131123456Z").as_deref(), Some("2024-01-31T12:34:56Z"));
    assert_eq!(pdf_date("D:202401311234").as_deref(), Some("2024-01-31T12:34:00"));
    assert_eq!(pdf_date("D:20240131").as_deref(), Some("2024-01-31"));
    assert_eq!(pdf_date("D:2024").as_deref(), Some("2024"));
    assert_eq!(pdf_date("20240131").as_deref(), Some("2024-01-31"));
    assert_eq!(pdf_date("D:20241331"), None);
    assert_eq!(pdf_date("yesterday"), None);
    assert_eq!(pdf_date("D:20240131256000"), None);
}

#[test]
fn xmp_attributes_and_entities() {
    let x = xmp(br#"<rdf:Description xmp:CreateDate='2020-01-02' pdf:Producer="P &#x26; Q"/><dc:title><rdf:Alt><rdf:li>T&lt;1&gt;</rdf:li></rdf:Alt></dc:title>"#);
    assert_eq!(x.title.as_deref(), Some("T<1>"));
    assert_eq!(x.created.as_deref(), Some("2020-01-02"));
    assert_eq!(x.producer.as_deref(), Some("P & Q"));
    assert_eq!(xmp(b"<dc:title/>"), Default::default());
}

// ----- images ----------------------------------------------------------------

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    v
}

fn jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut v = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16];
    v.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    // a big APP1 before the frame header
    v.extend_from_slice(&[0xff, 0xe1, 0xff, 0xff]);
    v.extend(std::iter::repeat_n(0u8, 0xfffd));
    v.extend_from_slice(&[0xff, 0xc0, 0, 17, 8]);
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);
    v
}

/// A little-endian TIFF whose first IFD sits after `gap` bytes of strip data.
fn tiff(w: u32, h: u32, gap: usize) -> Vec<u8> {
    let ifd = 8 + gap as u32;
    let mut v = b"II*\0".to_vec();
    v.extend_from_slice(&ifd.to_le_bytes());
    v.extend(std::iter::repeat_n(0x55u8, gap));
    v.extend_from_slice(&2u16.to_le_bytes());
    for (tag, value) in [(256u16, w), (257u16, h)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&4u16.to_le_bytes()); // LONG
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
    }
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

#[test]
fn images() {
    let gif = [b"GIF89a".as_slice(), &7u16.to_le_bytes(), &9u16.to_le_bytes(), &[0, 0, 0]].concat();
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0; 12]);
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&640i32.to_le_bytes());
    bmp.extend_from_slice(&(-480i32).to_le_bytes());
    bmp.extend_from_slice(&[1, 0, 24, 0, 0, 0, 0, 0]);
    let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
    webp.extend_from_slice(&[99, 0, 0, 49, 0, 0]); // 100 × 50, stored minus one
    for (bytes, format, w, h) in [
        (png(1024, 768), "png", 1024, 768),
        (jpeg(3000, 2000), "jpeg", 3000, 2000),
        (tiff(2048, 1536, 100), "tiff", 2048, 1536),
        (gif, "gif", 7, 9),
        (bmp, "bmp", 640, 480),
        (webp, "webp", 100, 50),
    ] {
        let m = ok(&bytes);
        assert_eq!(text_of(&m, "doc.format"), Some(format));
        assert_eq!(text_of(&m, "doc.content-type"), Some(Format::content_type(sniff(&bytes).unwrap())));
        assert_eq!((int_of(&m, "image.width"), int_of(&m, "image.height")), (Some(w), Some(h)), "{format}");
    }
}

#[test]
fn tiff_ifd_far_into_the_file_is_read_by_range() {
    let t = tiff(5000, 4000, 3 << 20);
    let (m, read) = run_with(&t, DEFAULT_MAX_READ, None);
    let m = m.unwrap();
    assert_eq!(int_of(&m, "image.width"), Some(5000));
    assert!(read < 128 << 10, "read {read} of {}", t.len());
}

#[test]
fn corrupt_images() {
    let e = err(&png(1, 1)[..12]);
    assert!(e.starts_with("corrupt PNG"), "{e}");
    let e = err(&png(0, 5));
    assert!(e.contains("0×5"), "{e}");
    let j = jpeg(10, 10);
    assert!(err(&j[..j.len() / 2]).starts_with("corrupt JPEG"));
    // an IFD offset past the end
    let mut t = tiff(1, 1, 0);
    t[4..8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    assert!(err(&t).starts_with("corrupt TIFF"));
}

// ----- text --------------------------------------------------------------------

#[test]
fn text_files() {
    let m = ok(b"Befund\nzweite Zeile\n");
    assert_eq!(text_of(&m, "doc.format"), Some("text"));
    assert_eq!(text_of(&m, "doc.content-type"), Some("text/plain"));
    assert_eq!(text_of(&m, "text.encoding"), Some("utf-8"));
    assert_eq!(int_of(&m, "text.lines"), Some(2));
    assert_eq!(int_of(&m, "text.lines"), Some(2));
    let m = ok("ä\nö\nü".as_bytes());
    assert_eq!(int_of(&m, "text.lines"), Some(3));
    let m = ok(b"M\xfcller\n");
    assert_eq!(text_of(&m, "text.encoding"), Some("unknown"));
    let m = ok(b"\xff\xfeA\0\n\0B\0");
    assert_eq!(text_of(&m, "text.encoding"), Some("utf-16le"));
    assert_eq!(int_of(&m, "text.lines"), Some(2));
    // large: no line count, bounded read
    let big = "x".repeat(1000).repeat(3000);
    let (m, read) = run_with(big.as_bytes(), DEFAULT_MAX_READ, None);
    let m = m.unwrap();
    assert_eq!(int_of(&m, "text.lines"), None);
    assert_eq!(int_of(&m, "doc.size"), Some(3_000_000));
    assert!(read <= (1 << 20) + 16384);
}

#[test]
fn config_budget() {
    assert_eq!(Config::default().budget(), Ok(DEFAULT_MAX_READ));
    assert!(Config { max_read_bytes: Some(10) }.budget().is_err());
    let c: Config = ferry_plugin_sdk::parse_config(r#"{"max-read-bytes": 1048576}"#).unwrap();
    assert_eq!(c.budget(), Ok(1 << 20));
    assert!(ferry_plugin_sdk::parse_config::<Config>(r#"{"max-read": 1}"#).is_err());
}

// ----- fuzz-like property test ------------------------------------------------

#[test]
fn mutated_fixtures_never_panic_and_stay_in_budget() {
    let mut h = Hand::new();
    basic(&mut h, "2");
    let hand = h.classic("/Root 1 0 R");
    let fixtures = [
        classic(),
        modern(),
        make_pdf(&Spec { encrypt: true, ..Spec::default() }),
        hand,
        png(3, 3),
        tiff(4, 4, 50),
        jpeg(5, 5),
    ];
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let budget = 256 << 10;
    // DOC_META_FUZZ_ITERATIONS=1000000 for a longer run
    let iterations = std::env::var("DOC_META_FUZZ_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(6000);
    for i in 0..iterations {
        let base = &fixtures[i % fixtures.len()];
        let mut m = base.clone();
        for _ in 0..1 + rand() % 8 {
            if m.is_empty() {
                break;
            }
            let at = (rand() % m.len() as u64) as usize;
            match rand() % 6 {
                0 => m[at] = rand() as u8,
                1 => m.truncate(at),
                2 => {
                    let n = (rand() % 16) as usize;
                    m.drain(at..(at + n).min(m.len()));
                }
                3 => {
                    let tokens: [&[u8]; 8] = [b"99999999", b"-1", b"<<", b"[", b"R", b"0 R", b"/Prev 9 ", b"stream\n"];
                    let t = tokens[(rand() % 8) as usize];
                    m.splice(at..at, t.iter().copied());
                }
                4 => m[at] = b"0123456789"[(rand() % 10) as usize],
                _ => {
                    let from = (rand() % m.len() as u64) as usize;
                    let n = ((rand() % 64) as usize).min(m.len() - from.max(at));
                    let piece = m[from..from + n].to_vec();
                    m.splice(at..at, piece);
                }
            }
        }
        let (result, read) = run_with(&m, budget, None);
        assert!(read <= budget, "iteration {i}: read {read} bytes, budget {budget}");
        if let Err(e) = result {
            let e = e.to_string();
            assert!(!e.contains("Befund") && !e.contains("Radiologie"), "iteration {i}: PHI in {e}");
        }
    }
}

#[test]
fn host_failures_keep_their_kind() {
    struct Flaky;
    impl RangeRead for Flaky {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&mut self, _: u64, _: u32) -> Result<Vec<u8>, StageError> {
            Err(ferry_plugin_sdk::retryable("unavailable: share offline"))
        }
    }
    let e = extract_from(Flaky, DEFAULT_MAX_READ, None).unwrap_err();
    assert!(matches!(e, ExtractError::Read(_)));
    let stage: StageError = e.into();
    assert_eq!(stage.kind, ErrorKind::Retryable);
}

#[test]
fn mutated_object_streams_never_panic() {
    // the hand-built xref-stream + object-stream file, its stream flate-compressed
    let mut h = Hand::new();
    h.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    let inner = b"2 0 3 40 << /Type /Pages /Kids [3 0 R] /Count 1 >> << /Type /Page /Parent 2 0 R >>";
    h.stream(4, "/Type /ObjStm /N 2 /First 9 /Filter /FlateDecode", &zlib(inner));
    h.obj(5, b"<< /Title (T) /CreationDate (D:2020) >>");
    let pdf = h.xref_stream(6, "/Root 1 0 R /Info 5 0 R", &[(2, 4, 0), (3, 4, 1)]);
    let m = ok(&pdf);
    assert_eq!(int_of(&m, "pdf.pages"), Some(1));
    assert_eq!(text_of(&m, "pdf.created"), Some("2020"));
    let mut seed = 42u64;
    for i in 0..4000 {
        let mut m = pdf.clone();
        for _ in 0..1 + i % 4 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let at = (seed >> 33) as usize % m.len();
            m[at] = (seed >> 20) as u8;
        }
        let (_, read) = run_with(&m, 128 << 10, None);
        assert!(read <= 128 << 10);
    }
}

#[test]
fn scan_work_is_bounded() {
    // a broken cross-reference over 4 MiB of object headers each opening a
    // string that never closes: the repair scan must not go quadratic
    let mut pdf = b"%PDF-1.4\n".to_vec();
    while pdf.len() < 4 << 20 {
        pdf.extend_from_slice(b"1 0 obj (<<\n");
    }
    pdf.extend_from_slice(b"startxref\n5\n%%EOF\n");
    let started = std::time::Instant::now();
    let (r, read) = run_with(&pdf, DEFAULT_MAX_READ, None);
    assert!(r.unwrap_err().to_string().starts_with("corrupt PDF: "));
    assert!(read <= DEFAULT_MAX_READ);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
}
