//! Capabilities the host grants to plugins, one module per WIT interface.
//!
//! A plugin gets no ambient authority: every call lands here, is checked
//! against the stage's grants from the pipeline file, and is refused with
//! `host-error.denied` naming the grant that would allow it. Host I/O runs
//! on tokio and is bounded by the remaining call deadline, so an outbound
//! call never outlives the plugin call that made it.

mod error;
pub mod fs;
pub mod http;
pub mod log;
pub mod object_store;
pub mod sql;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;

use crate::bindings::types::{FileRef, HostError};
use crate::config::{Grants, Role};
pub use error::CapError;

/// What every instance of one stage shares: its grants, resolved.
pub struct StageContext {
    pub role: Role,
    /// The plugin's file name, for messages.
    pub plugin_name: String,
    pub grants: Grants,
    /// Canonical folder of each fs root granted to this stage.
    pub fs_roots: BTreeMap<String, PathBuf>,
    /// Canonical folder of every fs root in the pipeline, for the file of
    /// the item under processing.
    pub all_fs_roots: BTreeMap<String, PathBuf>,
    pub sql: Arc<sql::Connections>,
    pub http: http::Client,
    pub object_store: Option<Arc<dyn object_store::ObjectStore>>,
}

impl StageContext {
    /// `stage `extractor` (dicom-meta.wasm)`, for messages.
    pub fn who(&self) -> String {
        format!("stage `{}` ({})", self.role, self.plugin_name)
    }

    pub fn denied(&self, what: &str, fix: &str) -> HostError {
        HostError::Denied(format!("{} may not {what}: {fix} in [{}]", self.who(), self.role))
    }
}

/// The memory cap of one instance ([`StoreLimits`]), remembering how far
/// its linear memory grew: an instance left large by one big item is not
/// kept idle (see `stage::StagePool`).
pub struct Limiter {
    inner: StoreLimits,
    /// Largest linear memory granted so far, in bytes.
    pub grown_to: usize,
}

impl Limiter {
    pub fn new(inner: StoreLimits) -> Self {
        Limiter { inner, grown_to: 0 }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            self.grown_to = self.grown_to.max(desired);
        }
        Ok(ok)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The data of one plugin instance's `Store`.
pub struct StageState {
    pub ctx: Arc<StageContext>,
    pub limits: Limiter,
    pub table: ResourceTable,
    /// The file of the item the current call is about (readable without a
    /// grant: handing the item to the stage is the grant).
    pub current_file: Option<FileRef>,
    /// When the current call must be over; host I/O is cut off then too.
    pub deadline: Instant,
}

impl StageState {
    pub fn new(ctx: Arc<StageContext>, limits: StoreLimits) -> Self {
        StageState {
            ctx,
            limits: Limiter::new(limits),
            table: ResourceTable::new(),
            current_file: None,
            deadline: Instant::now(),
        }
    }

    /// Time left in the current call.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs host I/O under the call's deadline. The returned future does
    /// not borrow the state, so it is `Send`.
    pub fn bounded<T, F>(
        &self,
        what: &str,
        fut: F,
    ) -> impl std::future::Future<Output = Result<T, HostError>> + use<T, F>
    where
        F: std::future::Future<Output = Result<T, HostError>>,
    {
        let remaining = self.remaining();
        let late = format!("{what} did not finish before the call deadline of {}", self.ctx.who());
        async move {
            match tokio::time::timeout(remaining, fut).await {
                Ok(r) => r,
                Err(_) => Err(HostError::Unavailable(late)),
            }
        }
    }
}

impl crate::bindings::types::Host for StageState {}
