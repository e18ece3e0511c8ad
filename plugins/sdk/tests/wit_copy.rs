//! The SDK carries its own copy of the contract (`plugins/sdk/wit/ferry.wit`,
//! what plugins are built against) so that a plugin needs no path to the
//! repository's `wit/`. This keeps the copy identical to `wit/ferry.wit`,
//! the file the host is built against.
use std::path::Path;

#[test]
fn embedded_wit_is_the_repositorys() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"));
    let original = sdk.join("../../wit/ferry.wit");
    let copy = sdk.join("wit/ferry.wit");
    let Ok(want) = std::fs::read_to_string(&original) else {
        // The SDK outside its repository (vendored): nothing to compare with.
        eprintln!("no {}: skipped", original.display());
        return;
    };
    let have = std::fs::read_to_string(&copy).unwrap_or_default();
    assert!(
        have == want,
        "plugins/sdk/wit/ferry.wit differs from wit/ferry.wit: plugins are built against the SDK's copy, \
         so copy it over: `cp wit/ferry.wit plugins/sdk/wit/ferry.wit`"
    );
}
