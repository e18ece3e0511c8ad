//! Plugins built against an older 0.1.x of the WIT contract keep working:
//! `tests/fixtures/plugins-0.1.0/csv-resolver.wasm` is the stock resolver
//! as built against `ferry:pipeline@0.1.0` (before `http.send-file` and
//! `send-to-spool` came in 0.1.1). It imports `fs`/`log` and exports
//! `resolver` at 0.1.0; the host (0.1.1) links and calls it.

use ferry::runner::Outcome;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};

use crate::harness::{run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_built_against_0_1_0_runs_on_this_host() {
    let old = ferry_tests::workspace_root().join("tests/fixtures/plugins-0.1.0/csv-resolver.wasm");
    // the artifact really is a 0.1.0 build (else this test proves nothing)
    let engine = ferry::stage::engine().unwrap();
    let plugin = ferry::plugin::load(&engine, &old, None).unwrap();
    assert!(plugin.exports.iter().any(|e| e == "ferry:pipeline/resolver@0.1.0"), "{:?}", plugin.exports);
    assert!(plugin.imports.iter().all(|i| !i.starts_with("ferry:") || i.ends_with("@0.1.0")), "{:?}", plugin.imports);
    assert_ne!(ferry::plugin::VERSION, "0.1.0", "the host is newer than the plugin");

    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 11, "Bitewing", ImageKind::IntraOral))
            .patient(PatientSpec::new(2, "C-2", "Beispiel", "Bernd"))
            .image(ImageSpec::new(2, 21, "Pano", ImageKind::Panoramic))
            .map_card("C-1", &demo_guid(1)),
    );
    let toml = fx.stock_toml();
    assert!(toml.contains("plugin = \"csv-resolver\""));
    let toml = toml.replace("plugin = \"csv-resolver\"", &format!("plugin = \"{}\"", old.display()));
    let rt = runtime(fx.load(&toml)).await;
    let s = run(&rt).await;
    // C-1 resolves through the old plugin, C-2 is not in the map
    assert_eq!((s.count(Outcome::Stored), s.count(Outcome::Unresolved)), (1, 1), "{}", s.line());
    assert!(fx.stored().keys().any(|k| k.starts_with(&format!("images/{}/", demo_guid(1)))));
}
