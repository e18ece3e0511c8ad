//! Snapshot tests of pipeline files: every `tests/ui/*.toml` is loaded and
//! the result compared with the `.stderr` file beside it (`ok` for a good
//! file). Paths in messages are shown relative (`$UI`, `$PLUGINS`).
//! Regenerate after an intended change with `FERRY_BLESS=1`.

use std::path::Path;

use ferry::config::Pipeline;

#[test]
fn pipeline_files() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui").canonicalize().unwrap();
    let plugins = ferry_tests::workspace_root().join("target/plugins");
    let bless = std::env::var_os("FERRY_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&ui)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "ui cases found: {}", cases.len());
    let env = |k: &str| match k {
        "UI_TEST_DB" => Some("site.db".to_string()),
        _ => None,
    };
    let mut failures = Vec::new();
    for case in cases {
        let text = std::fs::read_to_string(&case).unwrap();
        let actual = match Pipeline::parse(&case, &text, &env) {
            Ok(p) => format!("ok: {} stages\n", p.stages.len()),
            Err(e) => format!("{e}\n"),
        };
        let actual = actual
            .replace(&ui.display().to_string(), "$UI")
            .replace(&plugins.display().to_string(), "$PLUGINS")
            .replace(&ferry_tests::workspace_root().display().to_string(), "$ROOT");
        let expected_path = case.with_extension("stderr");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("{}:\n--- expected\n{expected}--- actual\n{actual}", case.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} ui case(s) differ (FERRY_BLESS=1 to update):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The pipelines we ship parse, with every `${VAR}` they use set.
#[test]
fn shipped_pipelines_parse() {
    let dir = ferry_tests::workspace_root().join("pipelines");
    let env = |k: &str| match k {
        "FERRY_PLUGIN_DIR" => None,
        "PMS_RESOLVER_URL" => Some("https://pms.example.com/api/resolve".to_string()),
        // a real key: the compiler checks that a private key signs
        "PROVIDER_PRIVATE_KEY" => {
            std::fs::read_to_string(ferry_tests::workspace_root().join("tests/pipeline/keys/ec384-private.pem")).ok()
        }
        "DEMO_PROVIDER_HOST" | "DEMO_PLATFORM_HOST" => Some("127.0.0.1:18080".to_string()),
        "DEMO_PROVIDER_TOKEN_URL" => Some("http://127.0.0.1:18080/auth/token".to_string()),
        "DEMO_PROVIDER_BASE" | "DEMO_PLATFORM_BASE" => Some("http://127.0.0.1:18080/fhir".to_string()),
        _ => Some(format!("value-of-{k}")),
    };
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let p = Pipeline::parse(&path, &text, &env).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.stages.len() >= 3, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 4, "pipelines found: {n}");
}
