//! Compiled plugins are cached: the second load is a deserialise, not a
//! compile. (Times are printed, not asserted.)

use ferry::plugin;

#[test]
fn second_load_comes_from_the_cache() {
    let engine = ferry::stage::engine().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let wasm = ferry_tests::plugin_dir().join("dicom-meta.wasm");

    let t = std::time::Instant::now();
    let cold = plugin::load(&engine, &wasm, Some(cache.path())).unwrap();
    let cold_time = t.elapsed();
    assert!(!cold.cached);

    let t = std::time::Instant::now();
    let warm = plugin::load(&engine, &wasm, Some(cache.path())).unwrap();
    let warm_time = t.elapsed();
    assert!(warm.cached);
    assert_eq!(cold.exports, warm.exports);
    println!("dicom-meta.wasm ({} KiB): compile {cold_time:?}, cached load {warm_time:?}", cold.size / 1024);

    // a plugin in the wrong section is named as such
    let err = warm.check_role(ferry::config::Role::Source).unwrap_err().to_string();
    assert!(err.contains("it exports the extractor world: put it in the [extractor] section"), "{err}");
}

#[test]
fn core_modules_are_componentised_at_load() {
    // what wit-bindgen on wasm32-unknown-unknown produces before
    // `cargo xtask plugins` wraps it: a core module with the WIT embedded
    let core = ferry_tests::workspace_root().join("target/wasm32-unknown-unknown/release/csv_resolver.wasm");
    let bytes = std::fs::read(&core).expect("cargo xtask plugins leaves the core module here");
    assert!(!wasmparser_is_component(&bytes), "the fixture is a core module");
    let engine = ferry::stage::engine().unwrap();
    let p = plugin::load(&engine, &core, None).unwrap();
    p.check_role(ferry::config::Role::Resolver).unwrap();
    assert!(p.imports_capability("fs"), "imports: {:?}", p.imports);
    assert!(!p.imports_capability("sql"), "only what it uses is imported: {:?}", p.imports);
}

fn wasmparser_is_component(bytes: &[u8]) -> bool {
    // component layer byte: version 0x0d 0x00 0x01 0x00
    bytes.len() > 8 && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}
