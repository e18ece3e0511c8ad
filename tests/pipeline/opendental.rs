//! Open Dental as the destination, through `opendental-store` against the
//! Open Dental API double (`tests/support/opendental_server.rs`), its
//! `ODFHIR` key pair held by the host (`grants.http_auth`, kind header):
//!
//! - a provider's drop folder → Open Dental documents (ImgType Document),
//!   byte for byte, tagged `[ferry:…]`; a re-run, even with a fresh
//!   ledger, uploads nothing (the tag is found); a 500 on the listing is
//!   waited out;
//! - Sidexis X-rays → Open Dental (ImgType Radiograph): every image the
//!   S3 pipeline would store lands on the right PatNum, nothing else does.

use std::collections::BTreeMap;
use std::path::Path;

use ferry::config::Pipeline;
use ferry::runner::Outcome;
use ferry_tests::pdf::pdf;
use ferry_tests::{demo_site, Fate, OdFault, OpenDentalServer, SiteBuilder, DEMO_EXPECTED};
use sha2::{Digest, Sha256};

use crate::harness::{report, run, runtime, Fixture};

const DEV: &str = "devKey1234";
const CUST: &str = "custKey5678";
/// The double's "Xray" and "Lab Cases" image categories.
const XRAY: u64 = 190;
const LAB: u64 = 14;

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn store_section(od: &OpenDentalServer, category: u64, img_type: &str) -> String {
    format!(
        r#"
[store]
plugin = "opendental-store"
concurrency = 2
grants.http = ["{host}"]

[store.grants.http_auth."{host}"]
kind = "header"
name = "Authorization"
value = "ODFHIR ${{OD_DEVELOPER_KEY}}/${{OD_CUSTOMER_KEY}}"

[store.config]
base_url = "{base}"
doc_category = {category}
img_type = "{img_type}"
"#,
        host = od.host(),
        base = od.base_url(),
    )
}

fn load(dir: &Path, text: &str) -> Pipeline {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let env = |k: &str| match k {
        "OD_DEVELOPER_KEY" => Some(DEV.to_string()),
        "OD_CUSTOMER_KEY" => Some(CUST.to_string()),
        _ => None,
    };
    Pipeline::parse(&path, text, &env).unwrap_or_else(|e| panic!("pipeline loads: {e}"))
}

fn folder_pipeline(od: &OpenDentalServer) -> String {
    format!(
        r#"
[pipeline]
name = "documents-opendental"
plugin_path = ["{plugins}"]
state_dir = "state"

[source]
plugin = "folder-documents"
grants.fs = {{ inbox = "drop" }}
min_age = "0s"

[source.config]
root = "inbox"
manifest = "manifest.csv"
types.lab = {{ system = "http://loinc.org", code = "11502-2", display = "Laboratory report" }}

[extractor]
plugin = "doc-meta"

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "maps" }}
config = {{ root = "maps", path = "patients.csv", key_column = "providerId", scheme = "provider-patient-id" }}
{store}"#,
        plugins = ferry_tests::plugin_dir().display(),
        store = store_section(od, LAB, "Document"),
    )
}

fn setup_folder(dir: &Path, pat1: u64, pat2: u64) -> (Vec<u8>, Vec<u8>) {
    write(dir, "maps/patients.csv", format!("providerId,patientGuid\n4711,{pat1}\n4712,{pat2}\n").as_bytes());
    let a = pdf("Blood panel", "D:20240317101500+01'00'", 1, "Hb 14.1");
    let b = pdf("Thyroid panel", "D:20240318", 2, "TSH 2.1");
    write(dir, "drop/a/blood.pdf", &a);
    write(dir, "drop/b/thyroid.pdf", &b);
    write(
        dir,
        "drop/manifest.csv",
        b"file,patient,type,date,title\na/blood.pdf,4711,lab,2024-03-17,Blood panel\nb/thyroid.pdf,4712,lab,2024-03-18,Thyroid panel\n",
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_folder_documents_become_open_dental_documents_once() {
    let od = OpenDentalServer::builder().keys(DEV, CUST).start();
    let pat1 = od.add_patient("Weber", "Anna", "1980-04-02");
    let pat2 = od.add_patient("Kaya", "Ben", "1975-11-30");
    let fx = Fixture::new(SiteBuilder::new());
    let (a, b) = setup_folder(fx.dir.path(), pat1, pat2);
    od.fault_next(1, OdFault::Status(500));
    let rt = runtime(load(fx.dir.path(), &folder_pipeline(&od))).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    assert_eq!(od.pending_faults(), 0);

    for (pat, bytes, subject) in [(pat1, &a, "a/blood.pdf"), (pat2, &b, "b/thyroid.pdf")] {
        let docs = od.documents_of(pat);
        assert_eq!(docs.len(), 1, "{docs:#?}");
        let d = &docs[0];
        assert_eq!(d.img_type, "Document");
        assert_eq!(d.doc_category, LAB);
        let tag = format!("[ferry:{}]", &hex::encode(Sha256::digest(bytes))[..12]);
        assert!(d.description.contains(&tag), "{}", d.description);
        assert!(&od.document_bytes(d.doc_num).unwrap() == bytes, "the file's bytes");
        let r = report(&s, subject);
        assert_eq!(r.location.as_deref(), Some(format!("opendental:Document/{}", d.doc_num).as_str()));
        assert_eq!(r.patient_guid.as_deref(), Some(pat.to_string().as_str()));
    }
    drop(rt);

    // a reinstalled ferry (fresh ledger): found by the tag, nothing uploaded
    let fresh = Fixture::new(SiteBuilder::new());
    setup_folder(fresh.dir.path(), pat1, pat2);
    od.reset_counts();
    let rt = runtime(load(fresh.dir.path(), &folder_pipeline(&od))).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Unchanged), 2, "{}", s.line());
    assert_eq!(od.request_count("POST /documents/Upload"), 0, "{:#?}", od.route_counts());
    assert_eq!(od.documents().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidexis_x_rays_go_to_open_dental_as_radiographs() {
    let od = OpenDentalServer::builder().keys(DEV, CUST).start();
    let fx = Fixture::new(demo_site());
    // the practice's patients in Open Dental: one PatNum per patient guid,
    // and the card map in PatNums (a card mapped twice stays ambiguous)
    let mut patnums: BTreeMap<String, u64> = BTreeMap::new();
    let mut csv = String::from("cardId,patientGuid\n");
    for (card, guid) in &fx.site.card_map {
        let n = patnums.len();
        let pat = *patnums
            .entry(guid.clone())
            .or_insert_with(|| od.add_patient(&format!("Patient{n}"), "Test", "1970-01-01"));
        csv.push_str(&format!("{card},{pat}\n"));
    }
    write(fx.dir.path(), "maps/od-map.csv", csv.as_bytes());
    let text = format!(
        r#"
[pipeline]
name = "sidexis-opendental"
plugin_path = ["{plugins}"]
state_dir = "state"

[connections.sidexis]
kind = "sqlite"
path = "site/sidexis.db"

[source]
plugin = "sidexis"
grants.fs = {{ pdata = "site/PDATA" }}
grants.sql = ["sidexis"]
config = {{ pdata_root = "pdata", connection = "sidexis", folders_per_page = 3 }}

[extractor]
plugin = "dicom-meta"

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "maps" }}
config = {{ root = "maps", path = "od-map.csv" }}
{store}"#,
        plugins = ferry_tests::plugin_dir().display(),
        store = store_section(&od, XRAY, "Radiograph"),
    );
    let rt = runtime(load(fx.dir.path(), &text)).await;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    let e = DEMO_EXPECTED;
    assert_eq!(s.count(Outcome::Stored) as usize, e.stored, "{}", s.line());
    assert_eq!(s.count(Outcome::Quarantined) as usize, e.quarantined, "{}", s.line());
    assert_eq!(s.count(Outcome::Unresolved) as usize, e.unresolved, "{}", s.line());

    let mut expected = 0;
    for img in &fx.site.images {
        let Fate::Stored { guid } = fx.site.fate(img) else { continue };
        let pat = patnums[&guid];
        let r = report(&s, &img.rel_path);
        let doc_num: u64 =
            r.location.as_deref().and_then(|l| l.strip_prefix("opendental:Document/")).unwrap().parse().unwrap();
        let d = od.document(doc_num).expect("the document");
        assert_eq!(d.pat_num, pat, "{} on its patient's PatNum", img.rel_path);
        assert_eq!(d.img_type, "Radiograph");
        assert_eq!(d.doc_category, XRAY);
        let bytes = od.document_bytes(doc_num).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), img.sha256, "{} byte for byte", img.rel_path);
        expected += 1;
    }
    assert_eq!(od.documents().len(), expected, "nothing but the stored images");

    // again: nothing new
    od.reset_counts();
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 0, "{}", s.line());
    assert_eq!(od.request_count("POST /documents/Upload"), 0);
}
