//! `GET /patients/{guid}/images`: what the store holds under
//! `images/{guid}/`, sidecars left out, joined with the ledger's facts,
//! in pages.

use std::collections::BTreeMap;

use ferry::serve::auth::Role;
use ferry_tests::demo_guid;

use crate::harness::{split_key, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_images_with_their_facts_and_pages_through_them() {
    let svc = Service::start().await;
    let guid = demo_guid(58); // five images: OPG 2019 (PX), Status 1/4 … 4/4 (IO)
    let expected: BTreeMap<String, &ferry_tests::SiteImage> =
        svc.stored_for(&guid).into_iter().map(|img| (split_key(&svc.key_of(img)).2.to_owned(), img)).collect();
    assert_eq!(expected.len(), 5);

    let page = svc.json(&format!("/api/v1/patients/{guid}/images"), Role::Viewer).await;
    assert_eq!(page["patientGuid"], guid.as_str());
    assert!(page.get("nextCursor").is_none(), "one page: {page}");
    let images = page["images"].as_array().unwrap();
    let names: Vec<&str> = images.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, expected.keys().map(String::as_str).collect::<Vec<_>>(), "sorted by name, no sidecars");
    for i in images {
        let img = expected[i["name"].as_str().unwrap()];
        let facts = img.dicom.as_ref().unwrap();
        assert_eq!(i["size"], img.size, "{i}");
        assert_eq!(i["modality"], facts.modality.as_str(), "{i}");
        let d = &facts.study_date;
        assert_eq!(i["studyDate"], format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..]), "{i}");
        assert_eq!(i["rows"], facts.rows, "{i}");
        assert_eq!(i["columns"], facts.columns, "{i}");
        assert_eq!(i["displayName"], img.spec.image_name.as_str(), "{i}");
        let href = i["href"].as_str().unwrap();
        assert!(href.starts_with(&format!("/api/v1/patients/{guid}/images/")), "{href}");
        assert_eq!(i["previewHref"], format!("{href}/preview"));
        // the link works
        let res = svc.get(href, Some(&svc.token(Role::Viewer))).await;
        assert_eq!(res.status(), 200, "{href}");
        assert_eq!(res.bytes().await.unwrap().len() as u64, img.size);
    }

    // pages of two: 2 + 2 + 1, the same images in the same order
    let mut paged = Vec::new();
    let mut path = format!("/api/v1/patients/{guid}/images?limit=2");
    let mut pages = 0;
    loop {
        let page = svc.json(&path, Role::Viewer).await;
        pages += 1;
        let batch = page["images"].as_array().unwrap();
        assert!(batch.len() <= 2);
        paged.extend(batch.iter().map(|i| i["name"].as_str().unwrap().to_owned()));
        match page.get("next").and_then(|n| n.as_str()) {
            Some(next) => {
                assert!(page["nextCursor"].is_string());
                path = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, names);

    // a cursor that is not a name: 400
    let res = svc.get(&format!("/api/v1/patients/{guid}/images?cursor=..%2Fx"), Some(&svc.token(Role::Viewer))).await;
    crate::harness::problem(res, 400).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_not_in_the_index_get_their_facts_from_the_sidecar() {
    let svc = Service::start().await;
    let guid = demo_guid(61); // one panoramic
                              // forget the index (as for images stored by an older ferry)
    assert_eq!(forget_index(&svc, &guid), 1);
    let page = svc.json(&format!("/api/v1/patients/{guid}/images"), Role::Viewer).await;
    let i = &page["images"][0];
    assert_eq!(i["name"], "Panorama.dcm");
    assert_eq!(i["modality"], "PX");
    assert_eq!(i["rows"], 128);
    assert_eq!(i["studyDate"].as_str().map(str::len), Some(10));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_with_a_sidecar_object_get_their_facts_from_it() {
    // as an older ferry (or `sidecar = "object"`) stored them: no inline
    // sidecar, a `{key}.json` next to the object
    let svc = Service::start().await;
    let (guid, item_id, key, bytes) = unindexed_image(&svc).await;
    let bucket = crate::harness::BUCKET;
    svc.s3.put(bucket, &key, bytes, &[("ferry-item-id", &item_id)]).await;
    let sidecar = serde_json::json!({"sourceName": "Älter", "metadata": {"modality": "XX", "rows": 7}});
    svc.s3.put(bucket, &format!("{key}.json"), sidecar.to_string().into_bytes(), &[]).await;
    let page = svc.json(&format!("/api/v1/patients/{guid}/images"), Role::Viewer).await;
    let images = page["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "the sidecar object is not an image: {page:#}");
    assert_eq!(images[0]["displayName"], "Älter");
    assert_eq!((images[0]["modality"].as_str(), images[0]["rows"].as_i64()), (Some("XX"), Some(7)));
    svc.stop().await;
}

#[tokio::test]
async fn a_malformed_inline_sidecar_leaves_the_image_listed_without_its_facts() {
    // the `ferry-sidecar` value is a peer's bytes: broken escapes, bytes
    // that are no UTF-8, JSON of the wrong shape or nested past serde's cap
    let svc = Service::start().await;
    let (guid, item_id, key, bytes) = unindexed_image(&svc).await;
    let bucket = crate::harness::BUCKET;
    let deep = format!("{}{}", "%5B".repeat(300), "%5D".repeat(300));
    for hostile in ["%ZZ%", "%FF%FE%7B", "%7B%22metadata%22%3A5%7D", "null", deep.as_str()] {
        svc.s3.put(bucket, &key, bytes.clone(), &[("ferry-item-id", &item_id), ("ferry-sidecar", hostile)]).await;
        let page = svc.json(&format!("/api/v1/patients/{guid}/images"), Role::Viewer).await;
        let images = page["images"].as_array().unwrap();
        assert_eq!(images.len(), 1, "{hostile}: {page:#}");
        assert_eq!(images[0]["modality"], serde_json::Value::Null, "{hostile}: no facts made up");
        assert_eq!(images[0]["size"], bytes.len(), "{hostile}");
    }
    svc.stop().await;
}

/// One stored image of a demo patient whose index rows are gone, so that
/// the listing reads its facts from the bucket: (guid, item id, key, bytes).
async fn unindexed_image(svc: &Service) -> (String, String, String, Vec<u8>) {
    let guid = demo_guid(61);
    let img = svc.stored_for(&guid)[0];
    let key = svc.key_of(img);
    assert_eq!(forget_index(svc, &guid), 1);
    let bytes = svc.s3.get(crate::harness::BUCKET, &key).await.unwrap();
    (guid, img.rel_path.clone(), key, bytes)
}

/// Deletes the patient's rows from the ledger's image index (the ledger
/// has no API to forget; a second SQLite connection, as WAL allows).
fn forget_index(svc: &Service, guid: &str) -> usize {
    let conn = rusqlite::Connection::open(svc.pipeline.ledger_path()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    conn.execute("DELETE FROM images WHERE patient_guid = ?1", [guid]).unwrap()
}
