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
