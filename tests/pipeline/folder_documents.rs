//! The stock document source `folder-documents`: a drop folder of a
//! primary care provider's exports (a real PDF, a PNG, plain text) with a
//! CSV manifest becomes documents for the patients `csv-resolver` maps,
//! with their `document.*` facts in the store's sidecars; what it cannot
//! take (an unsupported `.docx`, a file not in the manifest, a row whose
//! file is missing) are notices counted in the summary. A second run
//! writes nothing. The same folder layout also works with a path pattern.

use std::path::Path;

use ferry::runner::Outcome;
use ferry_tests::{demo_guid, SiteBuilder};
use sha2::{Digest, Sha256};

use crate::harness::{report, run, runtime, Fixture};

/// A minimal valid PDF: one page showing `text`, with a correct xref.
fn tiny_pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    let mut table = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for o in offsets {
        table.push_str(&format!("{o:010} 00000 n \n"));
    }
    table.push_str(&format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1));
    pdf.extend_from_slice(table.as_bytes());
    pdf
}

/// A 2×2 RGB PNG (red, green / blue, white), chunks and CRCs as written
/// by zlib and a PNG encoder.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0xfd, 0xd4, 0x9a, 0x73, 0x00, 0x00, 0x00, 0x13, 0x49,
    0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xcf, 0xc0, 0xc0, 0x00, 0xc2, 0x40, 0xe2, 0xff, 0xff, 0xff, 0x00, 0x22,
    0xec, 0x05, 0xfb, 0xd2, 0xfb, 0xdd, 0x9b, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Provider patient ids 4711 and 4712 are known to the PMS; 9999 is not.
fn write_map(fx: &Fixture) {
    let map = format!("providerId,patientGuid\n4711,{}\n4712,{}\n", demo_guid(1), demo_guid(2));
    write(fx.dir.path(), "maps/patients.csv", map.as_bytes());
}

fn pipeline(source_config: &str) -> String {
    format!(
        r#"
[pipeline]
name = "documents"
plugin_path = ["{plugins}"]
state_dir = "state"

[source]
plugin = "folder-documents"
grants.fs = {{ inbox = "drop" }}
min_age = "0s"

[source.config]
root = "inbox"
page_size = 2
types.lab = {{ system = "http://loinc.org", code = "11502-2", display = "Laboratory report" }}
types.image = {{ system = "http://snomed.info/sct", code = "363679005", display = "Imaging" }}
types.letter = {{ code = "34109-9", display = "Note" }}
{source_config}

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "maps" }}
config = {{ root = "maps", path = "patients.csv", key_column = "providerId", scheme = "provider-patient-id" }}

[store]
plugin = "store"
grants.object_store = {{ kind = "fs", path = "store" }}
"#,
        plugins = ferry_tests::plugin_dir().display(),
    )
}

fn sidecar(fx: &Fixture, key: &str) -> serde_json::Value {
    fx.sidecar(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_folder_with_a_manifest_becomes_documents() {
    let fx = Fixture::new(SiteBuilder::new());
    write_map(&fx);
    let drop = fx.dir.path().join("drop");
    let pdf = tiny_pdf("Blood panel");
    let text = "Hausarztbrief: keine Befunde.\n".as_bytes();
    write(&drop, "2024/blood-panel.pdf", &pdf);
    write(&drop, "2024/scan.png", PNG);
    write(&drop, "2024/notes.txt", text);
    write(&drop, "2024/unknown-patient.txt", b"for a patient the PMS does not know\n");
    write(&drop, "2024/letter.docx", b"PK\x03\x04 not really a docx");
    write(&drop, "stray.pdf", &tiny_pdf("not listed"));
    write(&drop, ".DS_Store", b"\0\0\0\x01Bud1");
    write(&drop, "2024/~$draft.pdf", b"lock");
    // quoted cells: a comma, doubled quotes, a line break; a Windows path
    write(
        &drop,
        "manifest.csv",
        "file,patient,type,date,title,author\r\n\
         2024/blood-panel.pdf,4711,lab,2024-03-17,\"Blood panel, fasting\",\"Labor \"\"Dr. Schmidt\"\"\"\r\n\
         2024\\scan.png,4711,image,2024-03-18T10:15:00+01:00,\"Wound photo\nleft knee\",Praxis Müller\r\n\
         2024/notes.txt,4712,34109-9,2024-03-20,,Praxis Müller\r\n\
         2024/unknown-patient.txt,9999,letter,2024-03-21,,\r\n\
         2024/missing.pdf,4712,lab,2024-03-22,,\r\n"
            .as_bytes(),
    );

    let rt = runtime(fx.load(&pipeline("manifest = \"manifest.csv\""))).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 3, "{}", s.line());
    assert_eq!(s.count(Outcome::Unresolved), 1, "{}", s.line());
    assert_eq!(s.count(Outcome::Skipped), 2, "{}", s.line());
    assert_eq!(s.count(Outcome::Failed), 1, "{}", s.line());
    assert_eq!(s.scanned(), 7, "hidden and temporary files and the manifest are not scanned: {}", s.line());

    let docx = report(&s, "2024/letter.docx");
    assert_eq!(docx.outcome, Outcome::Skipped);
    assert!(docx.detail.contains("unsupported file type `.docx`"), "{}", docx.detail);
    let stray = report(&s, "stray.pdf");
    assert_eq!((stray.outcome, stray.detail.as_str()), (Outcome::Skipped, "not in the manifest"));
    let missing = report(&s, "2024/missing.pdf");
    assert_eq!(missing.outcome, Outcome::Failed);
    assert!(
        missing.detail.contains("manifest row 6") && missing.detail.contains("not in the folder"),
        "{}",
        missing.detail
    );
    assert_eq!(report(&s, "2024/unknown-patient.txt").outcome, Outcome::Unresolved);
    assert_eq!(report(&s, "2024/blood-panel.pdf").patient_guid, Some(demo_guid(1)));

    // the stored objects are the very files, their sidecars with them
    let (g1, g2) = (demo_guid(1), demo_guid(2));
    let stored = fx.stored();
    let want = [
        (format!("images/{g1}/blood-panel.pdf"), sha(&pdf)),
        (format!("images/{g1}/scan.png"), sha(PNG)),
        (format!("images/{g2}/notes.txt"), sha(text)),
    ];
    for (key, sum) in &want {
        assert_eq!(stored.get(key), Some(sum), "{key}: {stored:#?}");
    }
    assert_eq!(stored.len(), 3, "only the documents: {stored:#?}");

    // the document facts, as `document.*` metadata
    let doc = sidecar(&fx, &want[0].0);
    let md = &doc["metadata"];
    assert_eq!(md["document.content-type"], "application/pdf", "{doc:#}");
    assert_eq!(md["document.type.system"], "http://loinc.org");
    assert_eq!(md["document.type.code"], "11502-2");
    assert_eq!(md["document.type.display"], "Laboratory report");
    assert_eq!(md["document.date"], "2024-03-17");
    assert_eq!(md["document.title"], "Blood panel, fasting");
    assert_eq!(md["document.author"], "Labor \"Dr. Schmidt\"");
    assert_eq!(doc["itemId"], "2024/blood-panel.pdf");
    assert_eq!(doc["attributes"]["folder-documents.row"], "2");

    let doc = sidecar(&fx, &want[1].0);
    let md = &doc["metadata"];
    assert_eq!(md["document.content-type"], "image/png", "{doc:#}");
    assert_eq!(md["document.type.system"], "http://snomed.info/sct");
    assert_eq!(md["document.type.code"], "363679005");
    assert_eq!(md["document.type.display"], "Imaging");
    assert_eq!(md["document.date"], "2024-03-18T10:15:00+01:00");
    assert_eq!(md["document.title"], "Wound photo\nleft knee");
    assert_eq!(md["document.author"], "Praxis Müller");
    assert_eq!(doc["itemId"], "2024/scan.png");

    let doc = sidecar(&fx, &want[2].0);
    let md = &doc["metadata"];
    assert_eq!(md["document.content-type"], "text/plain", "{doc:#}");
    // a LOINC code that is not a key of `types`: as it is
    assert_eq!(md["document.type.system"], "http://loinc.org");
    assert_eq!(md["document.type.code"], "34109-9");
    assert_eq!(md["document.type.display"], "34109-9");
    assert_eq!(md["document.title"], "notes", "no title: the file name without its extension");
    assert_eq!(md["document.author"], "Praxis Müller");

    // a second run: nothing new, the stored documents unchanged
    let before = fx.stored();
    let second = run(&rt).await;
    assert_eq!(second.count(Outcome::Stored), 0, "{}", second.line());
    assert_eq!(second.count(Outcome::Unchanged), 3, "{}", second.line());
    assert_eq!(second.count(Outcome::Unresolved), 1, "{}", second.line());
    assert_eq!(second.count(Outcome::Skipped), 2, "{}", second.line());
    assert_eq!(second.count(Outcome::Failed), 1, "{}", second.line());
    assert_eq!(fx.stored(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_folder_laid_out_by_patient_and_type() {
    let fx = Fixture::new(SiteBuilder::new());
    write_map(&fx);
    let drop = fx.dir.path().join("drop");
    let pdf = tiny_pdf("Blood panel");
    write(&drop, "4711/lab/2024-03-17 blood.pdf", &pdf);
    write(&drop, "4712/Letter/referral.txt", b"Please see this patient.\n");
    write(&drop, "4712/unsorted.pdf", &tiny_pdf("no type folder"));
    write(&drop, "4712/misc/x.pdf", &tiny_pdf("unknown type folder"));

    let rt = runtime(fx.load(&pipeline("pattern = \"{patient}/{type}/{file}\""))).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    let skip = report(&s, "4712/unsorted.pdf");
    assert_eq!(skip.outcome, Outcome::Skipped);
    assert_eq!(skip.detail, "does not match pattern `{patient}/{type}/{file}`");
    let fail = report(&s, "4712/misc/x.pdf");
    assert_eq!(fail.outcome, Outcome::Failed);
    assert!(fail.detail.contains("type `misc`"), "{}", fail.detail);

    let key = format!("images/{}/2024-03-17 blood.pdf", demo_guid(1));
    assert_eq!(fx.stored().get(&key), Some(&sha(&pdf)), "{:#?}", fx.stored());
    let doc = sidecar(&fx, &key);
    let md = &doc["metadata"];
    assert_eq!(md["document.type.code"], "11502-2", "{doc:#}");
    assert_eq!(md["document.title"], "2024-03-17 blood");
    assert!(md.get("document.date").is_none() && md.get("document.author").is_none(), "{doc:#}");
    // type folders match `types` keys case-insensitively
    let doc = sidecar(&fx, &format!("images/{}/referral.txt", demo_guid(2)));
    assert_eq!(doc["metadata"]["document.type.code"], "34109-9", "{doc:#}");
    assert_eq!(doc["metadata"]["document.type.display"], "Note");
    assert_eq!(doc["metadata"]["document.content-type"], "text/plain");
}
