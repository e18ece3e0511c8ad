//! `GET /patients/{guid}/images/{name}`: the DICOM bytes, streamed, with
//! byte ranges; or a redirect to a presigned S3 URL.

use ferry::serve::auth::Role;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};

use crate::harness::{problem, Service, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_stored_bytes_with_ranges() {
    let svc = Service::start().await;
    let img = svc.site.image(103); // Müller's panoramic
    let path = svc.image_path(img);
    let file = std::fs::read(&img.path).unwrap();
    let token = svc.token(Role::Viewer);

    let res = svc.get(&path, Some(&token)).await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/dicom");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], file.len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{}\"", img.sha256).as_str());
    assert!(h["content-disposition"].to_str().unwrap().starts_with("attachment; filename=\"Panoramic.dcm\""));
    assert_eq!(res.bytes().await.unwrap().as_ref(), file.as_slice(), "the bytes of the source file");

    // If-None-Match
    let etag = h["etag"].to_str().unwrap();
    let res = svc.request(reqwest::Method::GET, &path, Some(&token), &[("if-none-match", etag)]).await;
    assert_eq!(res.status(), 304);

    // HEAD: the same headers, no body
    let res = svc.request(reqwest::Method::HEAD, &path, Some(&token), &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], file.len().to_string().as_str());

    let total = file.len();
    let range = |r: &str| {
        let r = r.to_owned();
        let svc = &svc;
        let path = path.clone();
        let token = token.clone();
        async move { svc.request(reqwest::Method::GET, &path, Some(&token), &[("range", &r)]).await }
    };
    for (asked, first, last) in [
        ("bytes=0-127", 0, 127),
        ("bytes=128-131", 128, 131),
        (&format!("bytes={}-", total - 10) as &str, total - 10, total - 1),
        ("bytes=-100", total - 100, total - 1),
        (&format!("bytes=1000-{}", total + 5000), 1000, total - 1),
    ] {
        let res = range(asked).await;
        assert_eq!(res.status(), 206, "{asked}");
        assert_eq!(res.headers()["content-range"], format!("bytes {first}-{last}/{total}").as_str(), "{asked}");
        assert_eq!(res.headers()["content-length"], (last - first + 1).to_string().as_str());
        assert_eq!(res.bytes().await.unwrap().as_ref(), &file[first..=last], "{asked}");
    }
    // unsatisfiable: 416 with the size, and the header is not echoed back
    for bad in [format!("bytes={total}-"), format!("bytes={}-{}", total + 1, total + 9), "bytes=-0".into()] {
        let res = range(&bad).await;
        assert_eq!(
            res.headers().get("content-range").map(|v| v.to_str().unwrap().to_owned()),
            Some(format!("bytes */{total}")),
            "{bad}"
        );
        let body = problem(res, 416).await;
        assert!(!body.to_string().contains(&bad), "{bad} echoed: {body}");
    }
    // RFC 9110 §14.2: a Range that cannot be parsed, several ranges, or
    // another unit are ignored: 200 with the whole file
    let huge = format!("bytes={}", "0-1,".repeat(4000));
    for ignored in ["bytes=9-1", "bytes=0-1,5-6", "lines=1-2", "bytes=x-y", "bytes=--1", huge.as_str()] {
        let res = range(ignored).await;
        assert_eq!(res.status(), 200, "{}", &ignored[..ignored.len().min(40)]);
        assert!(res.headers().get("content-range").is_none());
        assert_eq!(res.bytes().await.unwrap().len(), total);
    }
    // If-Range: the range only when the validator is the current strong ETag
    let if_range = |validator: String| {
        let svc = &svc;
        let path = path.clone();
        let token = token.clone();
        async move {
            svc.request(reqwest::Method::GET, &path, Some(&token), &[("range", "bytes=0-9"), ("if-range", &validator)])
                .await
        }
    };
    let res = if_range(etag.to_owned()).await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &file[..10]);
    for stale in ["\"0000\"", "W/\"0000\"", "Tue, 01 Dec 2026 10:00:00 GMT"] {
        let res = if_range(stale.to_owned()).await;
        assert_eq!(res.status(), 200, "{stale}");
        assert_eq!(res.bytes().await.unwrap().as_ref(), file.as_slice(), "{stale}");
    }

    // unknown image of a known patient, sidecar names: 404
    let guid = demo_guid(17);
    let res = svc.get(&format!("/api/v1/patients/{guid}/images/Nope.dcm"), Some(&token)).await;
    problem(res, 404).await;
    let res = svc.get(&format!("{path}.json"), Some(&token)).await;
    problem(res, 404).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_image_streams_whole() {
    // ~8 MB: larger than any buffer on the way
    let guid = demo_guid(1);
    let svc = Service::start_with(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Volumen", "Vera"))
            .image(ImageSpec::new(1, 11, "CBCT", ImageKind::IntraOral).pixels(2000, 2000))
            .map_card("C-1", &guid),
        Setup::default(),
    )
    .await;
    let img = svc.site.image(11);
    assert!(img.size > 7 << 20);
    let res = svc.get(&svc.image_path(img), Some(&svc.token(Role::Viewer))).await;
    assert_eq!(res.status(), 200);
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len() as u64, img.size);
    assert_eq!(sha256(&body), img.sha256);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presign_redirects_to_a_working_s3_url() {
    let svc = Service::start_with(ferry_tests::demo_site(), Setup { presign: true, ..Default::default() }).await;
    let img = svc.site.image(101);
    let token = svc.token(Role::Viewer);
    let res = svc.get(&svc.image_path(img), Some(&token)).await;
    assert_eq!(res.status(), 307);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&svc.s3.endpoint()), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // the URL works without ferry (and without a token)
    let res = reqwest::get(&location).await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap_or_default());
    assert_eq!(res.bytes().await.unwrap().as_ref(), std::fs::read(&img.path).unwrap().as_slice());
    // an image that is not there: 404 from ferry, not a URL to nothing
    let res = svc.get(&format!("/api/v1/patients/{}/images/Nope.dcm", demo_guid(17)), Some(&token)).await;
    problem(res, 404).await;
    svc.stop().await;
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}
