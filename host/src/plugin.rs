//! Loading plugins: bytes → checked, compiled component, cached.
//!
//! Compiling a component with Cranelift takes a few hundred milliseconds;
//! a service restarted every few minutes should not pay that each time. So
//! compiled code is cached on disk, keyed by the plugin's SHA-256 and the
//! engine's compatibility hash (a precompiled artifact only loads into an
//! engine with the same configuration). A warm load is a memory map.
//!
//! Core wasm modules with an embedded WIT world (what `wit-bindgen` on
//! `wasm32-unknown-unknown` produces) are turned into components here, so
//! plugin authors can ship either.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::config::Role;

/// The WIT package every plugin is built against.
pub const PACKAGE: &str = "ferry:pipeline";
/// The version of the package this host implements (`wit/ferry.wit`).
pub const VERSION: &str = "0.1.3";

/// Whether a plugin built against `version` runs on this host: the same
/// 0.1 series (the component model's rule for 0.x: patch releases are
/// additive, and wasmtime links `@0.1.0` imports and exports to `@0.1.1`).
pub fn compatible(version: &str) -> bool {
    match semver::Version::parse(version) {
        Ok(v) => v.major == 0 && v.minor == 1,
        Err(_) => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a WebAssembly component or module")]
    NotWasm { path: PathBuf },
    #[error("{path}: cannot turn the core module into a component (was it built with wit-bindgen against wit/ferry.wit?): {message}")]
    Componentize { path: PathBuf, message: String },
    #[error("{path}: compiling failed: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("{path} cannot be the [{role}] stage: it does not export `{wanted}` ({found}); {hint}")]
    WrongWorld { path: PathBuf, role: Role, wanted: String, found: String, hint: String },
}

/// A compiled plugin and what it imports/exports.
#[derive(Clone)]
pub struct Plugin {
    pub path: PathBuf,
    pub component: Component,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Size of the `.wasm` file.
    pub size: u64,
    /// Whether compiled code came from the cache.
    pub cached: bool,
}

impl Plugin {
    /// File name, for messages.
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Does the plugin import the capability interface `cap` (`sql`, `fs`...)?
    pub fn imports_capability(&self, cap: &str) -> bool {
        let prefix = format!("{PACKAGE}/{cap}@");
        self.imports.iter().any(|i| i.starts_with(&prefix))
    }

    /// Does it export `document-source` (a `[source]` yielding documents)?
    pub fn is_document_source(&self) -> bool {
        let prefix = format!("{PACKAGE}/document-source@");
        self.exports.iter().any(|e| e.strip_prefix(&prefix).is_some_and(compatible))
    }

    /// Checks the plugin implements the world of `role`.
    pub fn check_role(&self, role: Role) -> Result<(), PluginError> {
        let prefix = format!("{PACKAGE}/{}@", role.export());
        if self.exports.iter().any(|e| e.strip_prefix(&prefix).is_some_and(compatible)) {
            return Ok(());
        }
        if role == Role::Source && self.is_document_source() {
            return Ok(());
        }
        let wanted = format!("{prefix}{VERSION}");
        let other = Role::ALL
            .into_iter()
            .find(|r| self.exports.iter().any(|e| e.starts_with(&format!("{PACKAGE}/{}@", r.export()))));
        let hint = match other {
            Some(r) if r != role => format!("it exports the {r} world: put it in the [{r}] section"),
            Some(_) => format!(
                "it was built against another version of {PACKAGE}; rebuild it against 0.1.x (this host: {VERSION})"
            ),
            None => format!("build it with the ferry plugin SDK's `{}_plugin!` macro", role.export()),
        };
        Err(PluginError::WrongWorld {
            path: self.path.clone(),
            role,
            wanted,
            found: if self.exports.is_empty() {
                "it exports nothing".into()
            } else {
                format!("exports: {}", self.exports.join(", "))
            },
            hint,
        })
    }
}

/// Where compiled plugins are cached: `$FERRY_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/ferry`, else `~/.cache/ferry`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FERRY_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("ferry"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("ferry"))
}

/// Loads, componentises if needed, compiles (or fetches from cache).
pub fn load(engine: &Engine, path: &Path, cache_dir: Option<&Path>) -> Result<Plugin, PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_owned(), source })?;
    let size = bytes.len() as u64;
    let bytes = if wasmparser::Parser::is_component(&bytes) {
        bytes
    } else if wasmparser::Parser::is_core_wasm(&bytes) {
        wit_component::ComponentEncoder::default()
            .module(&bytes)
            .and_then(|e| e.validate(true).encode())
            .map_err(|e| PluginError::Componentize { path: path.to_owned(), message: format!("{e:#}") })?
    } else {
        return Err(PluginError::NotWasm { path: path.to_owned() });
    };

    let cache_file = cache_dir.map(|dir| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let digest = hex::encode(Sha256::digest(&bytes));
        dir.join(format!("{}-{:016x}.cwasm", &digest[..32], h.finish()))
    });
    if let Some(file) = &cache_file {
        if file.is_file() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (it is in the name),
            // in a cache directory only ferry writes to.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, file) } {
                return Ok(describe(engine, path, component, size, true));
            }
        }
    }
    let component = Component::new(engine, &bytes)
        .map_err(|e| PluginError::Compile { path: path.to_owned(), message: format!("{e:#}") })?;
    if let Some(file) = &cache_file {
        // best effort: a read-only cache dir only costs start-up time
        if let Ok(serialized) = component.serialize() {
            if std::fs::create_dir_all(file.parent().unwrap()).is_ok() {
                let tmp = file.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, serialized).is_ok() {
                    let _ = std::fs::rename(&tmp, file);
                }
            }
        }
    }
    Ok(describe(engine, path, component, size, false))
}

fn describe(engine: &Engine, path: &Path, component: Component, size: u64, cached: bool) -> Plugin {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    Plugin { path: path.to_owned(), component, imports, exports, size, cached }
}
