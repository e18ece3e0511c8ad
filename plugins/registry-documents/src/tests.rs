use std::collections::BTreeMap;

use ferry_plugin_sdk::object_store::{Fetched, Listing, ObjectInfo};
use ferry_plugin_sdk::types::{FileRef, HostError};

use super::*;

/// A bucket in memory: key → bytes; `get_to_spool` names the spool file
/// after the key and reports the bytes' checksum (given per key).
#[derive(Default)]
struct Fake {
    objects: BTreeMap<String, Vec<u8>>,
    sha: BTreeMap<String, String>,
    lists: usize,
}

impl Bucket for Fake {
    fn list(&mut self, prefix: &str, cursor: Option<String>, limit: u32) -> Result<Listing, HostError> {
        self.lists += 1;
        let keys: Vec<&String> = self
            .objects
            .keys()
            .filter(|k| k.starts_with(prefix) && cursor.as_ref().is_none_or(|c| *k > c))
            .take(limit as usize)
            .collect();
        let next = (keys.len() == limit as usize).then(|| keys.last().unwrap().to_string());
        let objects =
            keys.into_iter().map(|k| ObjectInfo { key: k.clone(), size: 0, sha256: None, metadata: vec![] }).collect();
        Ok(Listing { objects, next_cursor: next })
    }
    fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.objects.get(key).cloned())
    }
    fn get_to_spool(&mut self, key: &str) -> Result<Option<Fetched>, HostError> {
        let Some(bytes) = self.objects.get(key) else { return Ok(None) };
        Ok(Some(Fetched {
            file: FileRef { root: "spool".into(), path: format!("http-{}", key.replace('/', "_")) },
            info: ObjectInfo {
                key: key.into(),
                size: bytes.len() as u64,
                sha256: self.sha.get(key).cloned(),
                metadata: vec![],
            },
        }))
    }
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn id(ms: u64, n: u16) -> String {
    let f = floor_id(ms);
    format!("{}-7000-8000-{n:012x}", &f[..13])
}

impl Fake {
    fn upload(&mut self, guid: &str, id: &str, deleted: bool) {
        let key = format!("documents/{guid}/{id}.pdf");
        let sidecar = serde_json::json!({
            "ferry": "document", "version": 1, "id": id, "patientGuid": guid, "key": key,
            "contentType": "application/pdf", "size": 4, "sha256": SHA, "title": "Befund",
            "type": { "system": "http://loinc.org", "code": "11502-2", "display": "Lab" }, "date": "2026-11-30",
            "deleted": deleted,
        });
        self.objects.insert(format!("documents/{guid}/{id}.json"), serde_json::to_vec(&sidecar).unwrap());
        self.objects.insert(key.clone(), b"test".to_vec());
        self.sha.insert(key, SHA.into());
    }
}

fn source(page_size: u32, overlap_minutes: u32) -> RegistryDocuments {
    RegistryDocuments {
        s: Settings::new(Config { prefix: None, page_size: Some(page_size), overlap_minutes: Some(overlap_minutes) })
            .unwrap(),
    }
}

#[test]
fn pages_in_id_order_then_a_resumable_end_with_the_overlap() {
    let mut b = Fake::default();
    let base = 1_764_000_000_000u64;
    let ids: Vec<String> = (0..5).map(|i| id(base + i * 60_000, i as u16)).collect();
    // uploaded for two patients, listed by key (guid first): the source orders by id
    for (i, d) in ids.iter().enumerate() {
        b.upload(if i % 2 == 0 { "p-b" } else { "p-a" }, d, false);
    }
    let mut s = source(2, 2);
    let p1 = s.scan_page(None, &mut b).unwrap();
    let got: Vec<&str> = p1.documents.iter().map(|d| d.item.id.as_str()).collect();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    let d = &p1.documents[0];
    assert_eq!(d.item.patient_keys[0].scheme, "ferry-patient");
    assert_eq!(d.item.patient_keys[0].value, "p-b");
    assert_eq!(d.item.file.root, "spool");
    assert_eq!(d.facts.content_type, "application/pdf");
    assert_eq!(d.facts.kind.as_ref().unwrap().code, "11502-2");
    assert_eq!(d.facts.title.as_deref(), Some("Befund"));
    assert_eq!(p1.next_cursor.as_deref(), Some(ids[1].as_str()));
    let p2 = s.scan_page(p1.next_cursor, &mut b).unwrap();
    let p3 = s.scan_page(p2.next_cursor, &mut b).unwrap();
    assert_eq!(p3.documents.len(), 1);
    assert_eq!(p3.next_cursor.as_deref(), Some(ids[4].as_str()));
    // the end: no documents, a cursor 2 minutes before the newest
    let end = s.scan_page(p3.next_cursor, &mut b).unwrap();
    assert!(end.documents.is_empty() && end.notices.is_empty());
    let resume = end.next_cursor.unwrap();
    assert_eq!(resume, floor_id(base + 4 * 60_000 - 120_000));
    // the next pass from there looks again at the last two minutes: ids[2] was at +2 min
    let again = s.scan_page(Some(resume.clone()), &mut b).unwrap();
    let got: Vec<&str> = again.documents.iter().map(|d| d.item.id.as_str()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[3].as_str()]);
    // an empty bucket ends at once, keeping the cursor
    let mut empty = Fake::default();
    assert_eq!(s.scan_page(Some(resume.clone()), &mut empty).unwrap().next_cursor, Some(resume));
    // and with no cursor it is a complete scan: from the top next time
    assert_eq!(s.scan_page(None, &mut empty).unwrap().next_cursor, None);
}

#[test]
fn deleted_missing_lying_and_foreign_entries() {
    let mut b = Fake::default();
    let base = 1_764_000_000_000u64;
    let (gone, missing, lying, wrong, ok) =
        (id(base, 1), id(base + 1, 2), id(base + 2, 3), id(base + 3, 4), id(base + 4, 5));
    b.upload("p", &gone, true);
    b.upload("p", &missing, false);
    b.objects.remove(&format!("documents/p/{missing}.pdf"));
    b.upload("p", &lying, false);
    b.sha.insert(format!("documents/p/{lying}.pdf"), "00".repeat(32));
    // a sidecar whose key points at another patient's document
    b.upload("p", &wrong, false);
    let mut v: serde_json::Value = serde_json::from_slice(&b.objects[&format!("documents/p/{wrong}.json")]).unwrap();
    v["key"] = serde_json::json!(format!("documents/other/{wrong}.pdf"));
    b.objects.insert(format!("documents/p/{wrong}.json"), serde_json::to_vec(&v).unwrap());
    b.upload("p", &ok, false);
    // not sidecars: the bytes, other files, bad names
    b.objects.insert("documents/p/readme.json".into(), b"{}".to_vec());
    b.objects.insert("documents/../x.json".into(), b"{}".to_vec());
    b.objects.insert("images/p/a.dcm".into(), b"x".to_vec());
    let mut s = source(20, 10);
    let page = s.scan_page(None, &mut b).unwrap();
    assert_eq!(page.documents.iter().map(|d| d.item.id.as_str()).collect::<Vec<_>>(), [ok.as_str()]);
    let notes: Vec<(String, NoticeOutcome, &str)> =
        page.notices.iter().map(|n| (n.subject.clone(), n.outcome, n.reason.as_str())).collect();
    assert_eq!(notes.len(), 4, "{notes:?}");
    assert_eq!(notes[0].1, NoticeOutcome::Skip, "deleted: {notes:?}");
    assert!(notes[1].2.contains("not in the store"), "{notes:?}");
    assert!(notes[2].2.contains("SHA-256"), "{notes:?}");
    assert!(notes[3].2.contains("not the document's own"), "{notes:?}");
    assert!(!format!("{notes:?}").contains("Befund"), "no titles in notices");
}

#[test]
fn config_and_cursor_checks() {
    for bad in [
        Config { prefix: Some("/abs/".into()), ..Config::default() },
        Config { prefix: Some("documents".into()), ..Config::default() },
        Config { page_size: Some(0), ..Config::default() },
        Config { overlap_minutes: Some(5000), ..Config::default() },
    ] {
        assert!(Settings::new(bad).is_err());
    }
    let mut s = source(5, 0);
    assert!(s.scan_page(Some("not-an-id".into()), &mut Fake::default()).is_err());
    assert_eq!(id_ms(&floor_id(1_764_000_000_123)), Some(1_764_000_000_123));
    assert!(valid_id(&floor_id(0)));
    assert!(entry("documents/", "documents/p/ABCDEF00-0000-0000-0000-000000000000.json").is_none(), "uppercase");
}
