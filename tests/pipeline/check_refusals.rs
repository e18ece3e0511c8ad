//! `ferry check` says no to everything `run` and `serve` would refuse, and
//! says it before anything runs: grants of the whole machine or of the
//! state folder, a store folder that does not exist (and `check` creates
//! nothing), a destination inside a source folder, and `[serve]` settings
//! that `serve` would stop on.

use ferry::check::{check, CheckLine};
use ferry::config::Role;
use ferry::runtime::Runtime;
use ferry_tests::demo_site;

use crate::harness::{options, Fixture};

fn line<'a>(lines: &'a [CheckLine], section: &str) -> &'a CheckLine {
    lines.iter().find(|l| l.section == section).unwrap_or_else(|| panic!("no `{section}` line in {lines:?}"))
}

/// `check` fails `section` with a message containing every `needle`, and
/// `run` refuses to start with the same reason.
async fn refused(fx: &Fixture, toml: &str, section: &str, needles: &[&str]) -> String {
    let p = fx.load(toml);
    let lines = check(&p, &options()).await.unwrap();
    let l = line(&lines, section);
    assert!(!l.ok, "check passed: {l}");
    for n in needles {
        assert!(l.message.contains(n), "`{n}` not in: {l}");
    }
    if section != "serve" {
        let err = match Runtime::new(p, &options()).await {
            Ok(_) => panic!("run started although check refused: {l}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(needles[0]), "run refused differently: {err}");
    }
    l.message.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_of_the_whole_machine_is_refused() {
    let fx = Fixture::new(demo_site());
    let toml = fx.stock_toml().replace("grants.fs = { maps = \"site\" }", "grants.fs = { maps = \"/\" }");
    let m = refused(&fx, &toml, Role::Resolver.section(), &["grants.fs.maps", "whole machine"]).await;
    assert!(m.contains("[resolver]"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_containing_the_state_folder_is_refused() {
    let fx = Fixture::new(demo_site());
    // the state folder (`state`, not created yet) lies inside the fixture dir
    let toml = fx.stock_toml().replace("grants.fs = { maps = \"site\" }", "grants.fs = { maps = \".\" }");
    refused(&fx, &toml, Role::Resolver.section(), &["grants.fs.maps", "state folder"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_store_folder_is_named_and_not_created() {
    let fx = Fixture::new(demo_site());
    let toml = fx.stock_toml().replace("path = \"store\"", "path = \"nas/ferry-store\"");
    let m = refused(&fx, &toml, Role::Store.section(), &["grants.object_store", "does not exist"]).await;
    assert!(m.contains("nas/ferry-store"), "{m}");
    assert!(!fx.dir.path().join("nas").exists(), "check or run created the store folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_leaves_nothing_in_a_good_store_folder() {
    let fx = Fixture::new(demo_site());
    let p = fx.load(&fx.stock_toml());
    let lines = check(&p, &options()).await.unwrap();
    assert!(line(&lines, "store").ok, "{lines:?}");
    let left: Vec<_> = std::fs::read_dir(fx.store_dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "check left {left:?} in the store folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_inside_a_source_folder_is_refused() {
    let fx = Fixture::new(demo_site());
    std::fs::create_dir(fx.site.pdata.join("ferry-out")).unwrap();
    let toml = fx.stock_toml().replace("path = \"store\"", "path = \"site/PDATA/ferry-out\"");
    let m = refused(&fx, &toml, Role::Store.section(), &["grants.object_store", "overlaps fs root `pdata`"]).await;
    assert!(m.contains("[source]"), "{m}");
}

const SECRET: &str = "a-long-enough-secret-for-the-check-tests-0123456789";

async fn serve_refused(serve: &str, needles: &[&str]) -> String {
    let fx = Fixture::new(demo_site());
    let toml = format!("{}\n{serve}\n", fx.stock_toml());
    refused(&fx, &toml, "serve", needles).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_settings_that_serve_would_refuse_fail_check() {
    serve_refused(
        "[serve]\nlisten = \"0.0.0.0:8080\"\nauth = { dev_mode = true }",
        &["dev_mode", "loopback", "0.0.0.0"],
    )
    .await;
    serve_refused(&format!("[serve]\nauth = {{ dev_mode = true, hs256_secret = \"{SECRET}\" }}"), &["dev_mode", "key"])
        .await;
    serve_refused(
        &format!("[serve]\nauth = {{ hs256_secret = \"{SECRET}\", jwks = \"jwks.json\" }}"),
        &["only one of hs256_secret, public_key and jwks"],
    )
    .await;
    serve_refused("[serve]\nauth = { }", &["no key to check tokens with"]).await;
    serve_refused("[serve]\nlisten = \"not an address\"\nauth = { dev_mode = true }", &["listen", "not an address"])
        .await;

    // a private key where the public key belongs
    let fx = Fixture::new(demo_site());
    let keys = ferry_tests::workspace_root().join("tests/service/keys");
    let private = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("PRIVATE KEY-----")))
        .expect("a private key among the test keys");
    let toml = format!("{}\n[serve]\nauth = {{ public_key = \"{}\" }}\n", fx.stock_toml(), private.display());
    let m = refused(&fx, &toml, "serve", &["public_key", "private key"]).await;
    assert!(m.contains("-pubout"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_serve_settings_pass_check_with_the_renderer_loaded() {
    let fx = Fixture::new(demo_site());
    let toml = format!(
        "{}\n[serve]\nauth = {{ hs256_secret = \"{SECRET}\" }}\npreview = {{ concurrency = 3 }}\n",
        fx.stock_toml()
    );
    let p = fx.load(&toml);
    let lines = check(&p, &options()).await.unwrap();
    let l = line(&lines, "serve");
    assert!(l.ok, "{l}");
    assert!(l.message.contains("HS256") && l.message.contains("dicom-preview.wasm (3 at once, 256 MiB each)"), "{l}");
}
