//! The `ferry` binary as a clinic's IT person uses it: exit codes, the
//! summary line, `ferry check` output, and logs free of patient data.

use std::path::Path;
use std::process::{Command, Output};

use ferry_tests::{demo_site, ImageKind, ImageSpec, Site};

fn ferry(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(dir)
        .env("FERRY_CACHE_DIR", ferry_tests::workspace_root().join("target/ferry-test-cache"))
        .env("FERRY_PLUGIN_DIR", ferry_tests::plugin_dir())
        .env("FERRY_LOG", "info")
        .output()
        .expect("ferry runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const PIPELINE: &str = r#"
[pipeline]
name = "cli"
state_dir = "state"

[connections.sidexis]
kind = "sqlite"
path = "site/sidexis.db"

[source]
plugin = "sidexis"
grants.fs = { pdata = "site/PDATA" }
grants.sql = ["sidexis"]

[extractor]
plugin = "dicom-meta"

[resolver]
plugin = "csv-resolver"
grants.fs = { maps = "site" }
config = { root = "maps", path = "card-map.csv" }

[store]
plugin = "store"
grants.object_store = { kind = "fs", path = "store" }
"#;

fn setup(site: ferry_tests::SiteBuilder) -> (tempfile::TempDir, Site) {
    let dir = tempfile::tempdir().unwrap();
    let site = site.build(&dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), PIPELINE).unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    (dir, site)
}

#[test]
fn run_prints_one_summary_line_and_logs_no_phi() {
    let (dir, site) = setup(demo_site());
    let out = ferry(&["run", "pipeline.toml"], dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout.trim_end().lines().last().unwrap(),
        "done: scanned=39 stored=30 unchanged=0 skipped=5 unresolved=2 quarantined=2 failed=0 deferred=0"
    );
    // nothing identifying a patient in info-level logs
    for p in &site.patients {
        for needle in [&p.last_name, &p.first_name].into_iter().chain(p.card_ids.iter()) {
            if needle.len() >= 3 {
                assert!(!stderr.contains(needle.as_str()), "log leaks `{needle}`:\n{stderr}");
            }
        }
        assert!(!stderr.contains(&p.birth_date), "log leaks a birth date:\n{stderr}");
    }

    let again = ferry(&["run", "pipeline.toml"], dir.path());
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again.stdout).contains("stored=0 unchanged=30"), "{}", text(&again.stdout));
}

#[test]
fn failures_make_the_exit_code_non_zero() {
    let (dir, _site) = setup(
        ferry_tests::SiteBuilder::new()
            .patient(ferry_tests::PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 11, "broken", ImageKind::Corrupt))
            .map_card("C-1", &ferry_tests::demo_guid(1)),
    );
    let out = ferry(&["run", "pipeline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("failed=1"));
    assert!(text(&out.stderr).contains("P_00001/0000_11.dcm"), "the failed item is named");
}

#[test]
fn check_names_the_typo_and_the_missing_grant() {
    let (dir, _site) = setup(demo_site());
    std::fs::write(dir.path().join("typo.toml"), PIPELINE.replace("grants.sql", "grant.sql")).unwrap();
    let out = ferry(&["check", "typo.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("typo.toml: error at line 13"), "{err}");
    assert!(err.contains("unknown field `grant`"), "{err}");

    std::fs::write(dir.path().join("nogrant.toml"), PIPELINE.replace("grants.sql = [\"sidexis\"]", "")).unwrap();
    let out = ferry(&["check", "nogrant.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "FAIL  source     sidexis.wasm uses the `sql` capability but [source] grants none: add `grants.sql"
        ),
        "{stdout}"
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 3, "{stdout}");

    let out = ferry(&["check", "pipeline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn outside_the_upload_windows_items_wait_and_status_says_why() {
    let (dir, _site) = setup(demo_site());
    // a window that opens in an hour (local time, as the clinic writes it)
    let at = |h: i64| (chrono::Local::now() + chrono::Duration::hours(h)).format("%H:%M").to_string();
    let window = format!("{}-{}", at(1), at(2));
    let toml = format!("{PIPELINE}max_rate = \"20Mbit/s\"\n\n[schedule]\nwindows = [\"{window}\"]\n");
    std::fs::write(dir.path().join("windows.toml"), toml).unwrap();
    let out = ferry(&["run", "windows.toml"], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "waiting is not failing:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("stored=0") && stdout.contains("deferred=30"), "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path().join("store")).unwrap().count(), 0, "nothing uploaded");

    let out = ferry(&["status", "windows.toml"], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "uploads: at most 20Mbit/s ([store] max_rate); windows {window}: closed now, the next opens in "
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "waiting for a later pass:\n      30  outside the upload windows ([schedule] windows = {window}); stored by a pass inside one"
        )),
        "{stdout}"
    );
}

/// What a service manager does: `ferry run --every` keeps running until
/// SIGTERM (systemd's stop), then ends its pass and exits 0, and the next
/// start finds the work done.
#[test]
fn sigterm_stops_a_scheduled_run_cleanly() {
    let (dir, _site) = setup(demo_site());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--no-progress", "--every", "1h", "pipeline.toml"])
        .current_dir(dir.path())
        .env("FERRY_CACHE_DIR", ferry_tests::workspace_root().join("target/ferry-test-cache"))
        .env("FERRY_PLUGIN_DIR", ferry_tests::plugin_dir())
        .env("FERRY_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferry starts");
    // the first pass's summary line, then it waits for the next pass
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("done: scanned=39 stored=30"), "{line}");
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("ferry did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "a stop is not a failure: {status:?}\n{stderr}");
    assert!(stderr.contains("stopping: finishing items in flight"), "{stderr}");
    let again = ferry(&["run", "pipeline.toml"], dir.path());
    assert!(text(&again.stdout).contains("stored=0 unchanged=30"), "{}", text(&again.stdout));
}
