//! Small, valid PDF files for document tests and the demo: a catalog, a
//! page tree of `pages` pages each showing a line of text (Helvetica), an
//! Info dictionary with `Title` and `CreationDate`, and a cross-reference
//! table whose offsets are computed, so a strict reader (doc-meta, qpdf,
//! a browser) opens them. Deterministic: the same arguments give the same
//! bytes, so tests can compare hashes.

/// A PDF 1.4 file with `pages` pages (at least one) showing `text`.
/// `created` is a PDF date such as `D:20240317101500+01'00'`.
pub fn pdf(title: &str, created: &str, pages: usize, text: &str) -> Vec<u8> {
    let pages = pages.max(1);
    let esc = |s: &str| s.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)");
    // objects: 1 catalog, 2 pages, 3 font, 4 info, then (page, content) pairs
    let mut objects: Vec<String> = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        format!(
            "<< /Type /Pages /Count {pages} /Kids [{}] >>",
            (0..pages).map(|i| format!("{} 0 R", 5 + 2 * i)).collect::<Vec<_>>().join(" ")
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into(),
        format!("<< /Title ({}) /CreationDate ({created}) /Producer (ferry tests) >>", esc(title)),
    ];
    for i in 0..pages {
        let content = format!("BT /F1 12 Tf 72 720 Td ({} - page {}) Tj ET", esc(text), i + 1);
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            6 + 2 * i
        ));
        objects.push(format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()));
    }
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R /Info 4 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1)
            .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_point_at_their_objects() {
        let b = super::pdf("Blood (panel)", "D:20240317101500+01'00'", 3, "Hb 14.1");
        let tail = String::from_utf8(b[20..].to_vec()).unwrap();
        let xref: usize = tail.rsplit("startxref\n").next().unwrap().lines().next().unwrap().parse().unwrap();
        let table = String::from_utf8(b[xref..].to_vec()).unwrap();
        assert!(table.starts_with("xref\n0 11\n"), "{table}");
        for (n, line) in table.lines().skip(3).take(10).enumerate() {
            let off: usize = line[..10].parse().unwrap();
            assert!(b[off..].starts_with(format!("{} 0 obj", n + 1).as_bytes()), "object {}", n + 1);
        }
        assert!(tail.contains("/Count 3") && tail.contains("(Blood \\(panel\\))"));
    }
}
