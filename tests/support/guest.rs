//! Building a guest plugin crate from a test, the way `cargo xtask plugins`
//! builds the stock ones.
//!
//! `cargo xtask test` picks the wasm toolchain (rustup's target, or
//! Debian's `rustc-web` with `-Zbuild-std`) and tells the tests which one
//! in the environment: [`RUSTC_VAR`] and [`LINKER_VAR`] are set for the
//! `-Zbuild-std` toolchain and unset for rustup's, which is also what a
//! test run without xtask gets.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The `rustc` that builds `std` from source (the `-Zbuild-std` toolchain).
pub const RUSTC_VAR: &str = "FERRY_WASM_RUSTC";
/// The wasm linker (`rust-lld`) for that toolchain.
pub const LINKER_VAR: &str = "FERRY_WASM_LINKER";

/// Builds the `cdylib` crate in `crate_dir` (its own workspace) in release
/// mode for [`WASM_TARGET`] into `target_dir` and returns the core module,
/// `<target_dir>/wasm32-unknown-unknown/release/<lib_name>.wasm` (the host
/// turns core modules into components when it loads them).
pub fn build_guest(crate_dir: &Path, target_dir: &Path, lib_name: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate_dir)
        .args(["build", "--release", "--quiet", "--target", WASM_TARGET])
        .env("CARGO_TARGET_DIR", target_dir)
        // the host build's flags are not the guest's
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER");
    match (std::env::var_os(RUSTC_VAR), std::env::var_os(LINKER_VAR)) {
        (Some(rustc), Some(linker)) => {
            cmd.arg("-Zbuild-std=std,panic_abort")
                .env("RUSTC", rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker);
        }
        (None, None) => {}
        _ => bail!("set both {RUSTC_VAR} and {LINKER_VAR} (the -Zbuild-std toolchain), or neither (rustup's target)"),
    }
    let output = cmd.output().with_context(|| format!("running cargo build in {}", crate_dir.display()))?;
    if !output.status.success() {
        bail!(
            "building {} for {WASM_TARGET} failed ({}); `cargo xtask test` picks a wasm toolchain that works here:\n{}",
            crate_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let module = target_dir.join(WASM_TARGET).join("release").join(format!("{lib_name}.wasm"));
    if !module.is_file() {
        bail!("cargo built {} but there is no {}", crate_dir.display(), module.display());
    }
    Ok(module)
}
