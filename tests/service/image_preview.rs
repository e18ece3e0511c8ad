//! `GET /patients/{guid}/images/{name}/preview`: a PNG of the stored
//! image, sized, cacheable.

use ferry::serve::auth::Role;

use crate::harness::{problem, Service};

const PNG: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Width and height from the PNG's IHDR.
fn png_size(b: &[u8]) -> (u32, u32) {
    assert_eq!(&b[..8], &PNG, "PNG signature");
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_are_pngs_of_the_asked_size() {
    let svc = Service::start().await;
    let token = svc.token(Role::Viewer);
    let img = svc.site.image(103); // panoramic, 128 rows × 64 columns
    let facts = img.dicom.clone().unwrap();
    let path = format!("{}/preview", svc.image_path(img));

    let res = svc.get(&format!("{path}?size=32"), Some(&token)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    let cc = res.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cc.starts_with("private, max-age="), "{cc}");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.contains(&img.sha256), "ETag from the object's sha256: {etag}");
    let (w, h) = png_size(&res.bytes().await.unwrap());
    assert_eq!(w.max(h), 32, "longest side is the size asked");
    assert_eq!(
        (w as f64 / h as f64 * 100.0).round(),
        (facts.columns as f64 / facts.rows as f64 * 100.0).round(),
        "aspect kept"
    );

    // default size: never enlarged (the image is smaller than 256)
    let res = svc.get(&path, Some(&token)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(png_size(&res.bytes().await.unwrap()), (facts.columns as u32, facts.rows as u32));

    // cached: same bytes; conditional: 304
    let a = svc.get(&format!("{path}?size=32"), Some(&token)).await.bytes().await.unwrap();
    let b = svc.get(&format!("{path}?size=32"), Some(&token)).await.bytes().await.unwrap();
    assert_eq!(a, b);
    let res =
        svc.request(reqwest::Method::GET, &format!("{path}?size=32"), Some(&token), &[("if-none-match", &etag)]).await;
    assert_eq!(res.status(), 304);
    // another size is another ETag
    let res = svc.get(&format!("{path}?size=48"), Some(&token)).await;
    assert_ne!(res.headers()["etag"].to_str().unwrap(), etag);

    for bad in ["size=0", "size=abc", "size=100000"] {
        let res = svc.get(&format!("{path}?{bad}"), Some(&token)).await;
        problem(res, 400).await;
    }
    let res = svc
        .get(&format!("/api/v1/patients/{}/images/Nope.dcm/preview", ferry_tests::demo_guid(17)), Some(&token))
        .await;
    problem(res, 404).await;
    svc.stop().await;
}
