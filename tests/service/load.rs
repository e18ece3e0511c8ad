//! Latency and throughput of listing and streaming under `wrk` (127.0.0.1,
//! bounded runs). Not a check: run by hand and read the figures,
//!
//! ```sh
//! cargo test -p ferry --test service -- --ignored --nocapture load
//! ```
//!
//! Everything shares the machine: wrk, ferry and the S3 test server.

use std::process::Command;

use ferry::serve::auth::Role;
use ferry_tests::{demo_guid, demo_site, ImageKind, ImageSpec, PatientSpec};

use crate::harness::{Service, Setup};

fn wrk(url: &str, token: &str, extra: &[&str]) -> String {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "-d5s", "--latency", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(extra)
        .arg(url)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Non-2xx"), "errors under load:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load figures, run by hand with wrk installed"]
async fn load_list_and_stream() {
    // the demo site plus one ~8 MB image
    let big = demo_guid(1);
    let svc = Service::start_with(
        demo_site()
            .patient(PatientSpec::new(1, "C-1", "Volumen", "Vera"))
            .image(ImageSpec::new(1, 11, "CBCT", ImageKind::IntraOral).pixels(2000, 2000))
            .map_card("C-1", &big),
        Setup::default(),
    )
    .await;
    let token = svc.token(Role::Viewer);
    let list = svc.url(&format!("/api/v1/patients/{}/images", demo_guid(151)));
    let small = svc.url(&svc.image_path(svc.site.image(133)));
    let large = svc.url(&svc.image_path(svc.site.image(11)));
    eprintln!("small image {} bytes, large image {} bytes", svc.site.image(133).size, svc.site.image(11).size);
    for (what, url, extra) in [
        ("list (5 images)", &list, &[][..]),
        ("stream small", &small, &[][..]),
        ("stream small, range 0-1023", &small, &["-H", "Range: bytes=0-1023"][..]),
        ("stream 8 MB", &large, &[][..]),
        ("healthz", &svc.url("/healthz"), &[][..]),
    ] {
        eprintln!("=== {what}\n{}", wrk(url, &token, extra));
    }
    svc.stop().await;
}
