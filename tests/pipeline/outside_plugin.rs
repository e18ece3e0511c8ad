//! A plugin written outside ferry's plugin workspace, against the SDK
//! alone (`tests/fixtures/outside-plugin`: an extractor depending on the
//! SDK under another name, as README "Writing a plugin" shows), built with
//! cargo the documented way and dropped on `plugin_path`, runs as a stage:
//! what it extracts lands in the stored sidecars.

use ferry::runner::Outcome;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};

use crate::harness::{report, run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_outside_the_repository_runs_as_a_stage() {
    let root = ferry_tests::workspace_root();
    // its own target dir: built once, then cargo finds nothing to do
    let module = ferry_tests::build_guest(
        &root.join("tests/fixtures/outside-plugin"),
        &root.join("target/outside-plugin"),
        "stamp",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));

    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 11, "Bitewing", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 12, "Pano", ImageKind::Panoramic))
            .map_card("C-1", &demo_guid(1)),
    );
    // "drop it in": NAME.wasm in a folder on plugin_path, next to the stock plugins
    let mine = fx.dir.path().join("my-plugins");
    std::fs::create_dir(&mine).unwrap();
    std::fs::copy(&module, mine.join("stamp.wasm")).unwrap();
    let stock = ferry_tests::plugin_dir().display().to_string();
    let extra = "[extractor.config]\nkey = \"outside.stamp\"\nvalue = \"stamped outside\"\n";
    let toml = fx.pipeline_toml("stamp", "{ memory = \"32MiB\", timeout = \"10s\" }", extra);
    let one_path = format!("plugin_path = [\"{stock}\"]");
    assert!(toml.contains(&one_path), "the harness pipeline has one plugin_path entry: {toml}");
    let toml = toml.replace(&one_path, &format!("plugin_path = [\"{stock}\", \"{}\"]", mine.display()));

    let rt = runtime(fx.load(&toml)).await;
    let s = run(&rt).await;
    assert!(!s.has_failures(), "{}", s.line());
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    for id in [11, 12] {
        let img = fx.site.image(id);
        let key = report(&s, &img.rel_path).location.expect("stored items have a location");
        let sidecar = fx.sidecar(&key);
        // the stamp, with the size of this item: the plugin's configured
        // instance ran on each item
        let want = format!("stamped outside ({} bytes)", img.size);
        assert_eq!(sidecar["metadata"]["outside.stamp"], want.as_str(), "{key}: {sidecar:#}");
    }
}
