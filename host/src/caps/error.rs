//! The host-side error of every capability backend.
//!
//! Backends (a folder, S3, SQLite, SQL Server, an HTTP peer) say what went
//! wrong in these five words; the guest glue turns them into WIT's
//! `host-error` for plugins, the service into HTTP problems, `ferry check`
//! into a line. Keeping the WIT type out of the backends means the same
//! backend serves plugins, the service and the CLI without depending on
//! generated bindings.

use crate::bindings::types::HostError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// Not allowed (grants, read-only rules, a refused login).
    #[error("denied: {0}")]
    Denied(String),
    /// Nothing there.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request itself is wrong (a key, a statement, a size).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Try again later: a timeout, a refused connection, a 503.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Failed and will fail again until a person acts.
    #[error("failed: {0}")]
    Failed(String),
}

impl CapError {
    /// The message without its kind.
    pub fn message(&self) -> &str {
        match self {
            CapError::Denied(m)
            | CapError::NotFound(m)
            | CapError::Invalid(m)
            | CapError::Unavailable(m)
            | CapError::Failed(m) => m,
        }
    }
}

impl From<CapError> for HostError {
    fn from(e: CapError) -> HostError {
        match e {
            CapError::Denied(m) => HostError::Denied(m),
            CapError::NotFound(m) => HostError::NotFound(m),
            CapError::Invalid(m) => HostError::Invalid(m),
            CapError::Unavailable(m) => HostError::Unavailable(m),
            CapError::Failed(m) => HostError::Failed(m),
        }
    }
}

impl CapError {
    /// An I/O error, classified: missing → not found, timeouts → unavailable,
    /// the rest failed. `what` names the file or call.
    pub fn io(what: &str, e: std::io::Error) -> CapError {
        match e.kind() {
            std::io::ErrorKind::NotFound => CapError::NotFound(format!("{what} does not exist")),
            std::io::ErrorKind::PermissionDenied => {
                CapError::Failed(format!("{what}: permission denied by the operating system"))
            }
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => {
                CapError::Unavailable(format!("{what}: {e}"))
            }
            _ => CapError::Failed(format!("{what}: {e}")),
        }
    }
}
