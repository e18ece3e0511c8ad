//! Project chores: `cargo xtask <plugins|test|demo|check|bench|fuzz>`.
//!
//! Why an xtask and not a shell script: building the guest plugins needs a
//! wasm target, and a fresh machine may have only rustup's stable host
//! toolchain. This picks, in order: an installed rustup wasm target; one
//! that `rustup target add` can fetch; Debian's `rustc-web` + `rust-web-src`
//! building `std` from source (installed with apt-get when we are root).
//! Then it turns each core module into a component with `wit-component`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("plugins") => build_plugins(&root).map(|_| ()),
        Some("test") => test(&root, &args[1..]),
        Some("demo") => demo(&root),
        Some("bench") => bench(&root, &args[1..]),
        Some("dist") => dist(&root, args.iter().any(|a| a == "--debug")),
        Some("lint") => lint(&root),
        Some("fuzz") => fuzz(&root, &args[1..]),
        Some("check") => {
            build_plugins(&root)?;
            cargo(&root, &["run", "--quiet", "-p", "ferry", "--", "check", "pipelines/demo.toml"], &[])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 plugins   build every plugin in plugins/ into target/plugins/*.wasm\n  \
                 test      build plugins, then run every test (extra args go to cargo test)\n  \
                 demo      build plugins, generate a synthetic Sidexis site, run pipelines/demo.toml, then a documents pipeline\n  \
                 check     build plugins, then `ferry check pipelines/demo.toml`\n  \
                 bench     release build; ferry next to rclone and a PutObject loop on one S3 server: small, large, 100,000-image sites (--quick, --small-only, --large-only, --noop-only, --noop-site N, --scale-site [N], --debug)\n  \
                 dist      a release build for a Linux server in target/dist/ (binary, plugins, their compiled code, systemd units, install.sh) and its .tar.gz;\n            \
                 --debug: the same from the test build, to check the packaging (CI)\n  \
                 lint      house rules: cargo fmt --check and clippy -D warnings in both workspaces (CI runs it)\n  \
                 fuzz      fuzz the DICOM parsers natively: --seconds N [--target extract|render|all] (args go to plugins/fuzz)"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn plugin_out_dir(root: &Path) -> PathBuf {
    root.join("target").join("plugins")
}

/// The browser test drives the web page in headless Chromium: Debian's
/// `chromium` package and playwright-core from npm (which never downloads
/// a browser). Installed here when missing, like the wasm target.
fn browser_prerequisites(root: &Path) -> Result<()> {
    if std::env::var_os("FERRY_SKIP_BROWSER").is_some() {
        return Ok(());
    }
    if !Path::new("/usr/bin/chromium").exists() {
        apt_install(&["chromium"])?;
    }
    let browser = root.join("tests").join("browser");
    if !browser.join("node_modules").is_dir() {
        eprintln!("==> npm ci --prefix tests/browser (playwright-core)");
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&browser)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .status()
            .context("running npm (install Node.js 20 or newer for the browser test, or set FERRY_SKIP_BROWSER=1)")?;
        if !status.success() {
            bail!("npm ci in tests/browser failed ({status})");
        }
    }
    Ok(())
}

/// The API's property-based run (`tests/service/schemathesis.rs`) uses
/// schemathesis from PyPI, installed here into `target/schemathesis` (a
/// virtual environment, nothing system-wide) when missing.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

fn schemathesis_prerequisites(root: &Path) -> Result<()> {
    if std::env::var_os("FERRY_SKIP_SCHEMATHESIS").is_some() {
        return Ok(());
    }
    let venv = root.join("target").join("schemathesis");
    if venv.join("bin").join("st").is_file() {
        return Ok(());
    }
    eprintln!("==> python3 -m venv target/schemathesis; pip install schemathesis=={SCHEMATHESIS_VERSION}");
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 (install Python 3.9 or newer for the API's property-based test, or set FERRY_SKIP_SCHEMATHESIS=1)")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status})");
    }
    let status = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}"))
        .status()
        .context("running pip in target/schemathesis")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&venv);
        bail!("pip install schemathesis failed ({status})");
    }
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let (out, toolchain) = build_plugins(root)?;
    browser_prerequisites(root)?;
    schemathesis_prerequisites(root)?;
    // plugin logic that needs no host is unit-tested natively
    eprintln!("==> plugin unit tests (native)");
    cargo(&root.join("plugins"), &["test", "--workspace", "--quiet"], &[])?;
    eprintln!("==> host, integration and config tests");
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    // Tests that build a guest of their own (the outside-plugin test) use
    // the toolchain picked here: `ferry_tests::build_guest` reads these.
    let mut envs = vec![("FERRY_PLUGIN_DIR", out.as_os_str().to_owned())];
    if let Toolchain::BuildStd { rustc, linker } = &toolchain {
        envs.push(("FERRY_WASM_RUSTC", rustc.as_os_str().to_owned()));
        envs.push(("FERRY_WASM_LINKER", linker.as_os_str().to_owned()));
    }
    cargo(root, &args, &envs)
}

fn demo(root: &Path) -> Result<()> {
    let (out, _) = build_plugins(root)?;
    // Build exactly what `cargo xtask test` builds (tests included), so the
    // two commands share one build: with a narrower `cargo run -p ferry`,
    // cargo would unify features differently and compile dependencies twice.
    cargo(root, &["build", "--workspace", "--bins", "--tests", "--quiet"], &[])?;
    let bin = root.join("target").join("debug");
    let demo = root.join("target").join("demo");
    eprintln!("==> generating a synthetic Sidexis site in {}", demo.join("site").display());
    let status = Command::new(bin.join("demo-site")).current_dir(root).arg("target/demo/site").status()?;
    if !status.success() {
        bail!("demo-site failed ({status})");
    }
    // the demo's destination folder (ferry never creates a store's root)
    std::fs::create_dir_all(demo.join("store"))?;
    eprintln!("==> running pipelines/demo.toml");
    let started = std::time::Instant::now();
    let status = Command::new(bin.join("ferry"))
        .current_dir(root)
        .args(["run", "pipelines/demo.toml"])
        .env("FERRY_PLUGIN_DIR", &out)
        .status()
        .context("running ferry")?;
    eprintln!("==> ferry run took {:.2?}", started.elapsed());
    eprintln!(
        "\nLook at:\n  \
         target/demo/store/images/<patientGuid>/  the stored images (sidecars in .ferry/meta/)\n  \
         target/demo/site/                        the synthetic PDATA share, sidexis.db, card-map.csv\n  \
         pipelines/demo.toml                      the pipeline that did it\n\
         Run `cargo xtask demo` again: nothing new is stored (unchanged=30).\n\n\
         The service on the demo data (API, web page, metrics):\n  \
         target/debug/ferry serve pipelines/demo.toml   then open http://127.0.0.1:8080\n  \
         (search `mull`; authentication is off in the demo, on 127.0.0.1 only)"
    );
    if !status.success() {
        bail!("ferry run failed ({status})");
    }
    // the documents job: a hospital's FHIR server -> a practice platform
    eprintln!("\n==> documents: pipelines/demo-documents.toml (two FHIR test servers on 127.0.0.1)");
    let status = Command::new(bin.join("documents-demo"))
        .current_dir(root)
        .arg(bin.join("ferry"))
        .env("FERRY_PLUGIN_DIR", &out)
        .status()
        .context("running documents-demo")?;
    if !status.success() {
        bail!("the documents demo failed ({status})");
    }
    Ok(())
}

/// `cargo xtask bench [--quick] [--debug] [--small-only] [--noop-only] [--noop-site N] [--scale-site [N]]`:
/// the release build (a debug build's figures say little about a
/// clinic's), with rclone — the peer the figures are read against —
/// installed from the distribution's packages when missing.
fn bench(root: &Path, extra: &[String]) -> Result<()> {
    let (out, _) = build_plugins(root)?;
    let release = !extra.iter().any(|a| a == "--debug");
    if Command::new("rclone").arg("version").output().map(|o| !o.status.success()).unwrap_or(true) {
        if let Err(e) = apt_install(&["rclone"]) {
            eprintln!("==> no rclone ({e:#}): the bench leaves out its rows");
        }
    }
    // the same build as `cargo xtask test` (see `demo`)
    let mut build = vec!["build", "--workspace", "--bins", "--tests"];
    if release {
        build.push("--release");
    }
    cargo(root, &build, &[])?;
    let profile = if release { "release" } else { "debug" };
    let target = root.join("target").join(profile);
    let mut cmd = Command::new(target.join("bench"));
    cmd.arg(target.join("ferry")).current_dir(root).env("FERRY_PLUGIN_DIR", &out);
    cmd.args(extra.iter().filter(|a| *a != "--debug" && *a != "--release"));
    eprintln!("==> bench ({profile} build)");
    let status = cmd.status().context("running the bench")?;
    if !status.success() {
        bail!("bench failed ({status})");
    }
    Ok(())
}

/// `cargo xtask dist`: what a clinic's server gets, in
/// `target/dist/ferry-VERSION-linux-ARCH/` and a `.tar.gz` of it: the
/// release binary, the stock plugins (not the test fixtures), their code
/// compiled ahead of time by that binary (`ferry precompile`; a CPU that
/// cannot use it compiles again at first start), the systemd units and
/// `ferry-admin` from `dist/`, the production pipeline examples, the
/// README and `install.sh`. Then it checks what it made: a staged install
/// (`install.sh --root`) whose binary finds every plugin already compiled,
/// and `systemd-analyze verify` of the units where systemd is installed.
///
/// `--debug` packages the debug binary of the test build instead (the
/// same build as `test` and `demo`, nothing compiled again), so that CI
/// checks the packaging without building every crate a second time in
/// release; its archive is named `…-debug` and is not for servers.
fn dist(root: &Path, debug: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let (plugins, _) = build_plugins(root)?;
    if debug {
        cargo(root, &["build", "--workspace", "--bins", "--tests", "--quiet"], &[])?;
    } else {
        cargo(root, &["build", "--release", "-p", "ferry", "--bin", "ferry"], &[])?;
    }
    let bin = root.join("target").join(if debug { "debug" } else { "release" }).join("ferry");
    let version = String::from_utf8(Command::new(&bin).arg("--version").output()?.stdout)?;
    let version = version.split_whitespace().nth(1).context("ferry --version printed no version")?.to_owned();
    let name = format!("ferry-{version}-linux-{}{}", std::env::consts::ARCH, if debug { "-debug" } else { "" });
    let dist = root.join("target").join("dist");
    let out = dist.join(&name);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    for sub in ["bin", "plugins", "cache", "systemd", "pipelines"] {
        std::fs::create_dir_all(out.join(sub))?;
    }
    let copy = |from: &Path, to: &Path| -> Result<()> {
        std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    };
    copy(&bin, &out.join("bin").join("ferry"))?;
    let mut stock = Vec::new();
    for e in std::fs::read_dir(&plugins)? {
        let p = e?.path();
        let file = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if file.ends_with(".wasm") && !file.starts_with("fixture-") {
            stock.push(file);
        }
    }
    stock.sort();
    for f in &stock {
        copy(&plugins.join(f), &out.join("plugins").join(f))?;
    }
    let src = root.join("dist");
    for f in ["ferry-run@.service", "ferry-serve@.service"] {
        copy(&src.join("systemd").join(f), &out.join("systemd").join(f))?;
    }
    for f in ["install.sh", "ferry-admin", "ferry.env.example"] {
        copy(&src.join(f), &out.join(f))?;
    }
    for f in ["sidexis-s3.toml", "documents-fhir.toml", "documents-opendental.toml"] {
        copy(&root.join("pipelines").join(f), &out.join("pipelines").join(f))?;
    }
    copy(&root.join("README.md"), &out.join("README.md"))?;
    eprintln!("==> compiling {} plugins ahead of time", stock.len());
    let status = Command::new(out.join("bin").join("ferry"))
        .arg("precompile")
        .arg(out.join("plugins"))
        .env("FERRY_CACHE_DIR", out.join("cache"))
        .status()?;
    if !status.success() {
        bail!("ferry precompile failed ({status})");
    }

    // what an install looks like, checked
    let staged = dist.join("staged");
    if staged.exists() {
        std::fs::remove_dir_all(&staged)?;
    }
    let status = Command::new("sh").arg(out.join("install.sh")).arg("--root").arg(&staged).status()?;
    if !status.success() {
        bail!("install.sh --root failed ({status})");
    }
    let check = Command::new(staged.join("usr/local/bin/ferry"))
        .arg("precompile")
        .arg(staged.join("usr/lib/ferry/plugins"))
        .env("FERRY_CACHE_DIR", staged.join("var/cache/ferry"))
        .output()?;
    let said = String::from_utf8_lossy(&check.stdout);
    let cached = said.lines().filter(|l| l.ends_with(": already compiled")).count();
    if !check.status.success() || cached != stock.len() {
        bail!("the installed binary did not find every plugin compiled ({cached} of {}):\n{said}", stock.len());
    }
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => verify_units(&staged)?,
        _ => eprintln!("==> no systemd-analyze here: the units were not verified"),
    }

    let tarball = dist.join(format!("{name}.tar.gz"));
    let status = Command::new("tar").arg("-C").arg(&dist).arg("-czf").arg(&tarball).arg(&name).status()?;
    if !status.success() {
        bail!("tar failed ({status})");
    }
    let size = std::fs::metadata(&tarball)?.len();
    eprintln!(
        "==> {} ({:.1} MiB) in {:.0?}\n    on the server: tar xzf {name}.tar.gz && sudo ./{name}/install.sh",
        tarball.display(),
        size as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    Ok(())
}

/// `systemd-analyze verify` of the installed units as instances, with
/// their `ExecStart` pointing at the staged binary (verify checks that it
/// exists); any complaint about them (an unknown key is only a warning to
/// systemd) fails.
fn verify_units(staged: &Path) -> Result<()> {
    let dir = staged.join("verify");
    std::fs::create_dir_all(&dir)?;
    let bin = staged.join("usr/local/bin/ferry");
    let mut units = Vec::new();
    for kind in ["run", "serve"] {
        let text = std::fs::read_to_string(staged.join(format!("etc/systemd/system/ferry-{kind}@.service")))?;
        let unit = dir.join(format!("ferry-{kind}@sidexis-s3.service"));
        std::fs::write(&unit, text.replace("/usr/local/bin/ferry", &bin.display().to_string()))?;
        units.push(unit);
    }
    let out = Command::new("systemd-analyze").arg("verify").args(&units).output()?;
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.contains("ferry-"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        bail!("systemd-analyze verify of the units failed ({}):\n{}", out.status, complaints.join("\n"));
    }
    std::fs::remove_dir_all(&dir)?;
    eprintln!("==> systemd-analyze verify: both units are valid");
    Ok(())
}

/// `cargo xtask fuzz --seconds N [--target T] ...`: the DICOM fuzz harness
/// (`plugins/fuzz`), run natively in an optimised build, every argument
/// passed on (`--help` lists them). The plugins workspace's release profile
/// aborts on panic (right for wasm guests, fatal for a harness that
/// catches panics), so this uses a `fuzz` profile defined here: release
/// optimisation, unwinding panics, line tables for backtraces, no LTO (a
/// quicker build). Findings land in `target/fuzz-out/` (`--out` to change).
fn fuzz(root: &Path, extra: &[String]) -> Result<()> {
    // profile `fuzz` is defined in plugins/Cargo.toml
    let mut cmd = Command::new(env_or("CARGO", "cargo"));
    cmd.current_dir(root.join("plugins"));
    cmd.args(["run", "--profile", "fuzz", "-p", "ferry-fuzz", "--bin", "fuzz", "--"]).args(extra);
    cmd.env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    eprintln!("==> fuzz (plugins/fuzz, profile fuzz)");
    let status = cmd.status().context("running cargo run -p ferry-fuzz")?;
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => {
            // Not an error of xtask's: the report above says what was found.
            eprintln!("==> the fuzz run has findings (see the report above)");
            std::process::exit(1)
        }
        _ => bail!("fuzz failed ({status})"),
    }
}

/// The house rules, as CI checks them: one formatting style
/// (`rustfmt.toml`) and no clippy warnings, in the host workspace and in
/// the guest workspace (natively and for the wasm target, where the export
/// glue lives).
fn lint(root: &Path) -> Result<()> {
    let has = |component: &str| {
        Command::new(env_or("CARGO", "cargo")).args([component, "--version"]).output().is_ok_and(|o| o.status.success())
    };
    if !has("fmt") || !has("clippy") {
        eprintln!("==> rustup component add rustfmt clippy");
        let status = Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]).status();
        if !matches!(status, Ok(s) if s.success()) {
            bail!("rustfmt and clippy are needed: `rustup component add rustfmt clippy`");
        }
    }
    let plugins = root.join("plugins");
    // a workspace of its own: the plugin README "Writing a plugin" shows
    let outside = root.join("tests").join("fixtures").join("outside-plugin");
    eprintln!("==> cargo fmt --check (host, plugins, tests/fixtures/outside-plugin)");
    cargo(root, &["fmt", "--all", "--check"], &[])?;
    cargo(&plugins, &["fmt", "--all", "--check"], &[])?;
    cargo(&outside, &["fmt", "--check"], &[])?;
    eprintln!("==> cargo clippy -D warnings (host, plugins native, outside plugin, plugins {WASM_TARGET})");
    cargo(root, &["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"], &[])?;
    cargo(&plugins, &["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"], &[])?;
    let outside_target = root.join("target").join("outside-plugin");
    cargo(
        &outside,
        &["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"],
        &[("CARGO_TARGET_DIR", outside_target.into_os_string())],
    )?;
    // clippy for the wasm target needs rustup's target: the build-std
    // fallback (Debian's rustc-web) brings no clippy of its own
    if !rustup_has_target() {
        eprintln!("==> skipping clippy for {WASM_TARGET}: rustup has no {WASM_TARGET} target here");
        return Ok(());
    }
    cargo(
        &plugins,
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "ferry-fuzz",
            "--exclude",
            "ferry-testkit",
            "--target",
            WASM_TARGET,
            "--quiet",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}

fn env_or(key: &str, default: &str) -> OsString {
    std::env::var_os(key).unwrap_or_else(|| default.into())
}

fn cargo(root: &Path, args: &[&str], envs: &[(&str, OsString)]) -> Result<()> {
    let mut cmd = Command::new(env_or("CARGO", "cargo"));
    cmd.current_dir(root).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let status = cmd.status().with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// How to compile for the wasm target on this machine.
enum Toolchain {
    /// rustup has the target: plain cargo.
    Rustup,
    /// Debian rustc-web with std built from source.
    BuildStd { rustc: PathBuf, linker: PathBuf },
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET))
        .unwrap_or(false)
}

fn pick_toolchain() -> Result<Toolchain> {
    if std::env::var_os("FERRY_FORCE_BUILD_STD").is_none() {
        if rustup_has_target() {
            return Ok(Toolchain::Rustup);
        }
        eprintln!("==> trying `rustup target add {WASM_TARGET}`");
        let added = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
        if matches!(added, Ok(s) if s.success()) && rustup_has_target() {
            return Ok(Toolchain::Rustup);
        }
        eprintln!("==> rustup could not add {WASM_TARGET}; using Debian rustc-web with -Zbuild-std");
    }
    let rustc = PathBuf::from("/usr/bin/rustc");
    let std_src = Path::new("/usr/lib/rustlib/src/rust/library");
    if !rustc.exists() || !std_src.exists() {
        apt_install(&["rustc-web", "rust-web-src"]).with_context(|| {
            format!("installing Debian's rustc-web for {WASM_TARGET} (or run `rustup target add {WASM_TARGET}`)")
        })?;
    }
    // rust-lld ships with every rustup host toolchain.
    let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output().context("rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim());
    let host = Command::new("rustc").args(["-vV"]).output().context("rustc -vV")?;
    let host = String::from_utf8(host.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("no host triple in rustc -vV")?;
    let linker = sysroot.join("lib/rustlib").join(host).join("bin/rust-lld");
    if !linker.exists() {
        bail!("rust-lld not found at {}; install a rustup toolchain", linker.display());
    }
    Ok(Toolchain::BuildStd { rustc, linker })
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    eprintln!("==> apt-get install {}", pkgs.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let run = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend_from_slice(args);
        let status = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running {}", all.join(" ")))?;
        if !status.success() {
            bail!("`{}` failed; install {} by hand", all.join(" "), pkgs.join(" "));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq"];
    install.extend_from_slice(pkgs);
    run(&install)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Plugin crates: every `cdylib` package in the guest workspace.
fn plugin_crates(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let plugins = root.join("plugins");
    let mut dirs = vec![plugins.clone(), plugins.join("fixtures")];
    dirs.retain(|d| d.is_dir());
    for dir in dirs {
        for entry in std::fs::read_dir(&dir)? {
            let manifest = entry?.path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
            if !text.contains("cdylib") {
                continue;
            }
            let name = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = ").map(|v| v.trim_matches('"').to_owned()))
                .with_context(|| format!("no package name in {}", manifest.display()))?;
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Builds every plugin into `target/plugins`; returns that folder and the
/// toolchain used.
fn build_plugins(root: &Path) -> Result<(PathBuf, Toolchain)> {
    let toolchain = pick_toolchain()?;
    let crates = plugin_crates(root)?;
    let target_dir = root.join("target");
    let mut cmd = Command::new(env_or("CARGO", "cargo"));
    cmd.current_dir(root.join("plugins"))
        .args(["build", "--release", "--target", WASM_TARGET, "--target-dir"])
        .arg(&target_dir);
    for c in &crates {
        cmd.args(["-p", c]);
    }
    // Don't let the host workspace's flags leak into the guest build.
    cmd.env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    match &toolchain {
        Toolchain::Rustup => {}
        Toolchain::BuildStd { rustc, linker } => {
            cmd.arg("-Zbuild-std=std,panic_abort")
                .env("RUSTC", rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker);
        }
    }
    eprintln!("==> building {} plugins for {WASM_TARGET}", crates.len());
    let status = cmd.status().context("running cargo build for plugins")?;
    if !status.success() {
        bail!("building plugins failed ({status})");
    }
    let out = plugin_out_dir(root);
    std::fs::create_dir_all(&out)?;
    // a plugin that was renamed or removed (fs-store and s3-store became
    // store) must not linger and keep being loaded under its old name
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if path.extension().is_some_and(|e| e == "wasm") && !crates.contains(&stem) {
            eprintln!("    removing {} (no such plugin crate any more)", path.display());
            std::fs::remove_file(&path)?;
        }
    }
    let built = target_dir.join(WASM_TARGET).join("release");
    for c in &crates {
        let module = built.join(format!("{}.wasm", c.replace('-', "_")));
        let bytes = std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&bytes)
            .and_then(|e| e.validate(true).encode())
            .with_context(|| format!("turning {} into a component", module.display()))?;
        let dest = out.join(format!("{c}.wasm"));
        // Only rewrite on change so the host's compile cache stays warm.
        if std::fs::read(&dest).ok().as_deref() != Some(&component[..]) {
            std::fs::write(&dest, &component)?;
        }
        eprintln!("    {:<24} {:>8} KiB", format!("{c}.wasm"), component.len() / 1024);
    }
    Ok((out, toolchain))
}
