//! Capabilities the host grants to plugins, one folder per WIT interface.
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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::StoreLimits;

use crate::bindings::types::{FileRef, HostError};
use crate::config::{Pipeline, Role, Stage};
pub use error::CapError;

/// One capability: a WIT interface plugins import, the grant that allows
/// it, and its host side, in one folder. The shape of Spin's `Factor`:
/// [`init`](Capability::init) once per pipeline (pools, clients),
/// [`prepare`](Capability::prepare) once per stage (its grant, checked,
/// becomes its part of the stage context), [`probe`](Capability::probe)
/// for `ferry check`, [`add_to_linker`](Capability::add_to_linker) once
/// per linker. The guest glue (`impl Host for StageState`) reads the
/// stage's part from [`StageContext::caps`].
///
/// Adding a capability: the interface in `wit/ferry.wit` (and in the
/// `capabilities` world and `bindings.rs`' `with:` list), a folder here
/// implementing this trait, its grant's key in `config::Grants`, and one
/// line in the [`capabilities!`] list below.
pub trait Capability: Sized + Send + Sync + 'static {
    /// The interface's name in `wit/ferry.wit` (`sql`, `object-store`).
    const INTERFACE: &'static str;
    /// What to add to a stage section to grant it.
    const GRANT_HINT: &'static str;
    /// Whether a plugin may import the interface without a grant and still
    /// work (fs: the file of the item in hand is readable without one).
    const OPTIONAL: bool = false;
    /// What every stage of a pipeline shares (connection pools, a client).
    type Shared: Send + Sync + 'static;

    fn init(pipeline: Option<&Pipeline>) -> Self::Shared;

    /// The stage's part, from its grant; `None` when it has no grant.
    /// Errors refuse the stage with a message naming the key and the fix.
    fn prepare(shared: &Self::Shared, cx: &Prepare<'_>) -> anyhow::Result<Option<Self>>;

    /// For `ferry check`: proves the grant works as far as it can without
    /// running the plugin; returns what is granted (`sql:sidexis`).
    fn probe(&self) -> impl std::future::Future<Output = anyhow::Result<Vec<String>>> + Send;

    fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()>;
}

/// What [`Capability::prepare`] sees of the pipeline.
pub struct Prepare<'a> {
    pub pipeline: &'a Pipeline,
    pub stage: &'a Stage,
    /// Where ferry keeps its state, as a real path (grants must not reach it).
    pub state_dir: &'a Path,
}

impl Prepare<'_> {
    /// `[store]`, for messages.
    pub fn section(&self) -> &'static str {
        self.stage.role.section()
    }
}

/// Declares the capability list once: the per-stage and shared structs,
/// and the loops over every capability that the runtime and `ferry check`
/// use instead of naming them.
macro_rules! capabilities {
    ($($field:ident: $cap:ty),* $(,)?) => {
        /// What every stage of a pipeline shares, per capability.
        pub struct SharedCaps {
            $(pub $field: <$cap as Capability>::Shared,)*
        }

        impl SharedCaps {
            /// `None`: no pipeline (the renderer `ferry serve` runs).
            pub fn init(pipeline: Option<&Pipeline>) -> SharedCaps {
                SharedCaps { $($field: <$cap>::init(pipeline),)* }
            }
        }

        /// One stage's capabilities: `None` where it has no grant.
        #[derive(Default)]
        pub struct Caps {
            $(pub $field: Option<$cap>,)*
        }

        impl Caps {
            /// Every granted capability of a stage, checked.
            pub fn prepare(shared: &SharedCaps, cx: &Prepare<'_>) -> anyhow::Result<Caps> {
                Ok(Caps { $($field: <$cap>::prepare(&shared.$field, cx)?,)* })
            }

            /// The first interface the plugin imports without a grant it
            /// needs: `(interface, what to add)`.
            pub fn missing(&self, imports: impl Fn(&str) -> bool) -> Option<(&'static str, &'static str)> {
                $(
                    if self.$field.is_none() && !<$cap>::OPTIONAL && imports(<$cap>::INTERFACE) {
                        return Some((<$cap>::INTERFACE, <$cap>::GRANT_HINT));
                    }
                )*
                None
            }

            /// Probes every granted capability, in list order.
            pub async fn probe(&self) -> anyhow::Result<Vec<String>> {
                let mut granted = Vec::new();
                $(
                    if let Some(c) = &self.$field {
                        granted.extend(c.probe().await?);
                    }
                )*
                Ok(granted)
            }

            /// Links every interface (granted or not: an ungranted call is
            /// refused with the grant to add, not a link error).
            pub fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
                crate::bindings::types::add_to_linker::<StageState, wasmtime::component::HasSelf<StageState>>(
                    linker,
                    |s| s,
                )?;
                log::add_to_linker(linker)?;
                $(<$cap>::add_to_linker(linker)?;)*
                Ok(())
            }
        }
    };
}

capabilities! {
    fs: fs::Fs,
    sql: sql::Sql,
    http: http::Http,
    object_store: object_store::Store,
}

/// What every instance of one stage shares: its capabilities, prepared.
pub struct StageContext {
    pub role: Role,
    /// The plugin's file name, for messages.
    pub plugin_name: String,
    /// Canonical folder of every fs root in the pipeline, for the file of
    /// the item under processing.
    pub all_fs_roots: BTreeMap<String, PathBuf>,
    pub caps: Caps,
    /// The pipeline's upload pace (`[store] max_rate`, `[schedule]
    /// windows`); the store stage's only, none for the others.
    pub pace: crate::pace::PaceLimits,
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
    /// When the current call must be over, not counting [`Self::held`];
    /// host I/O is cut off then too.
    pub deadline: Instant,
    /// Time the host held the current call back on purpose (the upload
    /// rate cap, a closed window): added to the deadline.
    pub held: crate::pace::Held,
    /// Spool files this instance wrote (`http.send-to-spool`): it may read them.
    pub spooled: std::collections::HashSet<String>,
    /// Bytes its open files hold read ahead (`fs::OpenFile`), bounded by
    /// `fs::READ_AHEAD_BUDGET` however many files a guest keeps open.
    pub read_ahead: u64,
}

impl StageState {
    pub fn new(ctx: Arc<StageContext>, limits: StoreLimits) -> Self {
        StageState {
            ctx,
            limits: Limiter::new(limits),
            table: ResourceTable::new(),
            current_file: None,
            deadline: Instant::now(),
            held: Default::default(),
            spooled: Default::default(),
            read_ahead: 0,
        }
    }

    /// When the current call must be over, time held included.
    pub fn deadline(&self) -> Instant {
        self.deadline + self.held.get()
    }

    /// Time left in the current call.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// The stage's upload pace, counting into this call's held time.
    pub fn pace(&self) -> crate::pace::Pace {
        self.ctx.pace.for_call(&self.held)
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
        let (base, held) = (self.deadline, self.held.clone());
        let late = format!("{what} did not finish before the call deadline of {}", self.ctx.who());
        async move {
            let mut fut = std::pin::pin!(fut);
            // the deadline moves on by what the host holds the call back
            // while it runs (a throttled upload)
            loop {
                let until = base + held.get();
                tokio::select! {
                    r = &mut fut => return r,
                    _ = tokio::time::sleep_until(until.into()) => {
                        if base + held.get() <= Instant::now() {
                            return Err(HostError::Unavailable(late));
                        }
                    }
                }
            }
        }
    }
}

impl crate::bindings::types::Host for StageState {}
