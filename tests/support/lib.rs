//! Test support for ferry.
//!
//! Ferry's end-to-end behaviour depends on what a Sidexis 4 installation
//! looks like, and real installations hold patient data that can never be
//! checked in. This crate therefore *generates* installations:
//!
//! * [`SiteBuilder`] writes a synthetic site — a `PDATA` share of DICOM
//!   files, a SQLite `sidexis.db` with Sidexis' `patient` and `mediabase`
//!   tables, and the practice system's `card-map.csv` — deterministically,
//!   and returns a [`Site`] that knows every path, checksum and expected
//!   outcome;
//! * [`demo_site`] is the standard demo practice (also written by the
//!   `demo-site` binary for `cargo xtask demo`);
//! * [`plugin_dir`] finds the built WASM plugins; [`build_guest`] builds
//!   a plugin crate of a test's own (with the toolchain `cargo xtask`
//!   picked).
//!
//! It also runs the real peers of ferry's production path on 127.0.0.1
//! with random ports, for integration tests (each with its own tokio
//! runtime, stopped on drop):
//!
//! * [`ResolverServer`]: the practice system's patient resolver API
//!   (card id → patient guid), with switchable [`Fault`]s;
//! * [`S3Server`]: an S3 server (s3s-fs over a temp dir, SigV4 checked),
//!   with outage and failed-upload injection and `aws-sdk-s3` assertion
//!   helpers;
//! * [`FhirServer`]: a FHIR R4 server (an in-memory, versioned store of
//!   `Patient`, `DocumentReference` and `Binary`, searches with paging,
//!   conditional create, OAuth2 client credentials), with [`FhirFault`]s
//!   and request counters.

mod demo;
mod dicom;
pub mod docs_platform;
pub mod fhir_server;
pub mod guest;
pub mod hostile;
pub mod opendental_server;
pub mod pdf;
mod pipelines;
pub mod resolver_server;
mod runtime;
pub mod s3_server;
mod site;
pub mod smtp_server;

use std::path::PathBuf;

pub use demo::{demo_guid, demo_site, DEMO_EXPECTED};
pub use dicom::{DicomFacts, IO_DEFAULT_PIXELS, PX_DEFAULT_PIXELS, UID_ROOT};
pub use docs_platform::{DocsPlatform, PlatformDoc};
pub use fhir_server::{document_reference, FhirFault, FhirServer, FhirServerBuilder, LoggedRequest};
pub use guest::build_guest;
pub use opendental_server::{OdDocument, OdFault, OdPatient, OdRequest, OpenDentalServer, OpenDentalServerBuilder};
pub use pipelines::{production_toml, SQLITE_CONNECTION};
pub use resolver_server::{Fault, ResolverServer};
pub use s3_server::S3Server;
pub use site::{
    guid, image_file_name, patient_folder, settle, write_settled, ExpectedCounts, Fate, ImageKind, ImageSpec,
    PatientSpec, Site, SiteBuilder, SiteImage, SourceFailure, MARKER_FILE, SETTLED_AGE,
};
pub use smtp_server::{Mail, SmtpServer};

/// The user metadata key of a sidecar stored with its object (the
/// `store` plugin's default, `sidecar = "inline"`).
pub const SIDECAR_META: &str = "ferry-sidecar";

/// Decodes an inline sidecar (percent-encoded compact JSON), asserting
/// that it is a value HTTP carries byte for byte (printable ASCII, no
/// spaces).
pub fn decode_inline_sidecar(value: &str) -> serde_json::Value {
    assert!(value.bytes().all(|b| (0x21..0x7f).contains(&b)), "not header-safe: {value}");
    let mut bytes = Vec::with_capacity(value.len());
    let mut it = value.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex: String = it.by_ref().take(2).map(char::from).collect();
            bytes.push(u8::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("bad escape %{hex} in {value}")));
        } else {
            bytes.push(b);
        }
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("inline sidecar is not JSON ({e}): {value}"))
}

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where the built plugins are: `$FERRY_PLUGIN_DIR`, or
/// `<workspace>/target/plugins` (where `cargo xtask plugins` puts them).
///
/// Panics if `sidexis.wasm` is not there, so that a test fails with the
/// fix rather than with a confusing load error.
pub fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("FERRY_PLUGIN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("plugins"));
    if !dir.join("sidexis.wasm").is_file() {
        panic!("plugins not built: run `cargo xtask plugins` (no sidexis.wasm in {})", dir.display());
    }
    dir
}

#[cfg(test)]
mod fhir_server_tests;
#[cfg(test)]
mod opendental_server_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;
