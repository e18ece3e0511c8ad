//! # ferry plugin SDK
//!
//! Everything a ferry stage plugin needs besides its own logic, so that the
//! stock plugins (and yours) stay thin:
//!
//! - the capability bindings (`log`, `fs`, `sql`, `http`, `object-store`)
//!   generated once from `wit/ferry.wit`, re-exported at the crate root;
//! - one macro per stage world ([`source_plugin!`], [`extractor_plugin!`],
//!   [`resolver_plugin!`], [`store_plugin!`], [`renderer_plugin!`]) that
//!   generates the export side for your type and wires it to the shared
//!   types;
//! - helpers: typed config parsing ([`parse_config`]), error constructors,
//!   a `Read + Seek` adapter over host files ([`FileReader`]), logging.
//!
//! A minimal extractor:
//!
//! ```ignore
//! use ferry_plugin_sdk::types::{Item, Metadata, StageError, Value};
//! struct Sizes;
//! // `ferry_exports` is the module the macro below generates.
//! impl ferry_exports::extractor::Guest for Sizes {
//!     fn configure(_config: String) -> Result<(), StageError> { Ok(()) }
//!     fn extract(item: Item) -> Result<Metadata, StageError> {
//!         Ok(vec![("size".into(), Value::Integer(item.size as i64))])
//!     }
//! }
//! ferry_plugin_sdk::extractor_plugin!(Sizes, wit = "../../wit");
//! ```
//!
//! State decided in `configure` lives in a static [`Slot`]. The plugin's
//! pure logic compiles natively too (capability calls panic there, logging
//! goes to stderr), so `cargo test` in `plugins/` runs plugin unit tests.
//!
//! Why macros instead of a trait in this crate: `wit-bindgen` embeds the
//! world a component exports as a custom section; generating all the
//! stage worlds here would make every plugin claim to export all of them.
//! So this crate generates only the imports, and each plugin generates its
//! own export world with `with:` pointing back here.

pub use serde;
pub use serde_json;
#[doc(hidden)]
pub use wit_bindgen;

pub mod bindings {
    //! Raw bindings of the `capabilities` world (imports only).
    wit_bindgen::generate!({
        path: "../../wit",
        world: "capabilities",
        generate_unused_types: true,
    });
}

pub use bindings::ferry::pipeline::{fs, http, object_store, sql, types};
use types::{ErrorKind, HostError, StageError};

mod file_reader;
mod log;
mod slot;
pub use file_reader::FileReader;
pub use log::{debug, error, info, trace, warn};
pub use slot::Slot;

/// Parses the stage's `config` table (JSON, as the host passes it) into `T`.
///
/// Use `#[serde(deny_unknown_fields)]` on `T`: the error then names the
/// offending key, which the host shows to the person editing the pipeline.
pub fn parse_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StageError> {
    serde_json::from_str(json).map_err(|e| permanent(format!("invalid [config]: {e}")))
}

/// A stage error that will not go away by retrying.
pub fn permanent(message: impl Into<String>) -> StageError {
    StageError { kind: ErrorKind::Permanent, message: message.into() }
}

/// A stage error worth retrying later.
pub fn retryable(message: impl Into<String>) -> StageError {
    StageError { kind: ErrorKind::Retryable, message: message.into() }
}

impl HostError {
    /// The message, whatever the variant.
    pub fn message(&self) -> &str {
        match self {
            HostError::Denied(m)
            | HostError::NotFound(m)
            | HostError::Invalid(m)
            | HostError::Unavailable(m)
            | HostError::Failed(m) => m,
        }
    }
}

impl From<HostError> for StageError {
    /// `unavailable` is retryable; everything else needs a person.
    fn from(e: HostError) -> Self {
        let kind = match e {
            HostError::Unavailable(_) => ErrorKind::Retryable,
            _ => ErrorKind::Permanent,
        };
        let label = match e {
            HostError::Denied(_) => "denied",
            HostError::NotFound(_) => "not found",
            HostError::Invalid(_) => "invalid",
            HostError::Unavailable(_) => "unavailable",
            HostError::Failed(_) => "failed",
        };
        StageError { kind, message: format!("{label}: {}", e.message()) }
    }
}

/// Adds context to a host or stage error: `ctx("reading patient table")`.
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T, StageError>;
}

impl<T, E: Into<StageError>> Context<T> for Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T, StageError> {
        self.map_err(|e| {
            let mut e: StageError = e.into();
            e.message = format!("{what}: {}", e.message);
            e
        })
    }
}

/// Looks up an attribute of an item by key.
pub fn attribute<'a>(item: &'a types::Item, key: &str) -> Option<&'a str> {
    item.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[doc(hidden)]
#[macro_export]
macro_rules! __plugin {
    ($world:literal, $ty:ident, $wit:literal) => {
        #[doc(hidden)]
        pub mod ferry_exports {
            ::ferry_plugin_sdk::wit_bindgen::generate!({
                path: $wit,
                world: $world,
                runtime_path: "::ferry_plugin_sdk::wit_bindgen::rt",
                with: {
                    "ferry:pipeline/types@0.1.0": ::ferry_plugin_sdk::bindings::ferry::pipeline::types,
                    "ferry:pipeline/log@0.1.0": ::ferry_plugin_sdk::bindings::ferry::pipeline::log,
                    "ferry:pipeline/fs@0.1.0": ::ferry_plugin_sdk::bindings::ferry::pipeline::fs,
                    "ferry:pipeline/sql@0.1.0": ::ferry_plugin_sdk::bindings::ferry::pipeline::sql,
                    "ferry:pipeline/http@0.1.0": ::ferry_plugin_sdk::bindings::ferry::pipeline::http,
                    "ferry:pipeline/object-store@0.1.0": ::ferry_plugin_sdk::bindings::ferry::pipeline::object_store,
                },
            });
            pub use self::exports::ferry::pipeline::*;
        }
        ferry_exports::export!($ty with_types_in ferry_exports);
    };
}

/// Exports `$ty` (a type name implementing `ferry_exports::source::Guest`)
/// as a source plugin. `wit` is the path to ferry's `wit/` folder, relative
/// to the plugin crate's `Cargo.toml`.
#[macro_export]
macro_rules! source_plugin {
    ($ty:ident, wit = $wit:literal) => {
        $crate::__plugin!("source-plugin", $ty, $wit);
    };
}

/// Exports `$ty` (implementing `ferry_exports::extractor::Guest`).
#[macro_export]
macro_rules! extractor_plugin {
    ($ty:ident, wit = $wit:literal) => {
        $crate::__plugin!("extractor-plugin", $ty, $wit);
    };
}

/// Exports `$ty` (implementing `ferry_exports::resolver::Guest`).
#[macro_export]
macro_rules! resolver_plugin {
    ($ty:ident, wit = $wit:literal) => {
        $crate::__plugin!("resolver-plugin", $ty, $wit);
    };
}

/// Exports `$ty` (implementing `ferry_exports::store::Guest`).
#[macro_export]
macro_rules! store_plugin {
    ($ty:ident, wit = $wit:literal) => {
        $crate::__plugin!("store-plugin", $ty, $wit);
    };
}

/// Exports `$ty` (implementing `ferry_exports::renderer::Guest`).
#[macro_export]
macro_rules! renderer_plugin {
    ($ty:ident, wit = $wit:literal) => {
        $crate::__plugin!("renderer-plugin", $ty, $wit);
    };
}
