//! Running plugin instances under limits.
//!
//! Each stage owns a pool of instances (one `Store` each, so a crash or a
//! trap in one cannot touch another). Every call gets a fresh deadline
//! (epoch interruption: a background ticker advances the engine epoch, the
//! guest traps when its deadline passes, even in a tight loop) and runs
//! under a memory cap (`StoreLimits`, with growth failure trapping instead
//! of letting the guest abort in its allocator). An instance that trapped
//! is dropped, never reused: after a trap its state is unknown. The next
//! call gets a fresh instance, configured again. An instance whose memory
//! grew past [`KEEP_IDLE_BELOW`] (or half its limit) is dropped after its
//! call too: linear memory never shrinks, and one large item must not
//! leave every idle instance holding its peak.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::Linker;
use wasmtime::{Engine, Store, StoreLimitsBuilder};

use crate::bindings::document_source_world::exports::ferry::pipeline::document_source;
use crate::bindings::document_source_world::{DocumentSourcePlugin, DocumentSourcePluginPre};
use crate::bindings::extractor_world::{ExtractorPlugin, ExtractorPluginPre};
use crate::bindings::renderer_world::exports::ferry::pipeline::renderer::Picture;
use crate::bindings::renderer_world::{RendererPlugin, RendererPluginPre};
use crate::bindings::resolver_world::exports::ferry::pipeline::resolver::Resolution;
use crate::bindings::resolver_world::{ResolverPlugin, ResolverPluginPre};
use crate::bindings::source_world::exports::ferry::pipeline::source::{self, Page};
use crate::bindings::source_world::{SourcePlugin, SourcePluginPre};
use crate::bindings::store_world::exports::ferry::pipeline::store::Stored;
use crate::bindings::store_world::{StorePlugin, StorePluginPre};
use crate::bindings::types::DocumentFacts;
use crate::bindings::types::{ErrorKind, FileRef, Item, Metadata, PatientKey, StageError};
use crate::caps::{StageContext, StageState};
use crate::config::{Limits, Role};
use crate::plugin::Plugin;

/// Instances whose linear memory grew beyond this (or beyond half their
/// memory limit, if that is less) are not kept idle after a call.
pub const KEEP_IDLE_BELOW: usize = 64 << 20;

/// Engine epoch tick. Deadlines are accurate to about this much.
pub const TICK: Duration = Duration::from_millis(10);

/// Epoch ticks in `d` (rounded down).
fn ticks(d: Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()) as u64
}

/// Builds the engine all stages share, and starts its epoch ticker.
pub fn engine() -> anyhow::Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    // Compile once, optimised for speed; artefacts are cached on disk.
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    let engine = Engine::new(&config)?;
    let weak = engine.weak();
    std::thread::Builder::new().name("ferry-epoch".into()).spawn(move || loop {
        std::thread::sleep(TICK);
        match weak.upgrade() {
            Some(e) => e.increment_epoch(),
            None => return,
        }
    })?;
    Ok(engine)
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin returned a typed error.
    #[error("{}", .0.message)]
    Stage(StageError),
    /// The plugin was stopped (deadline, memory, trap). Its instance is gone.
    #[error("{0}")]
    Trapped(String),
    /// A fresh instance could not be made (instantiate or configure failed).
    #[error("{0}")]
    Setup(String),
}

impl CallError {
    pub fn retryable(&self) -> bool {
        matches!(self, CallError::Stage(StageError { kind: ErrorKind::Retryable, .. }))
    }
}

enum Guest {
    Source(SourcePlugin),
    DocumentSource(DocumentSourcePlugin),
    Extractor(ExtractorPlugin),
    Resolver(ResolverPlugin),
    Store(StorePlugin),
    Renderer(RendererPlugin),
}

enum Pre {
    Source(SourcePluginPre<StageState>),
    DocumentSource(DocumentSourcePluginPre<StageState>),
    Extractor(ExtractorPluginPre<StageState>),
    Resolver(ResolverPluginPre<StageState>),
    Store(StorePluginPre<StageState>),
    Renderer(RendererPluginPre<StageState>),
}

/// One live instance of a plugin.
struct Instance {
    store: Store<StageState>,
    guest: Guest,
}

/// All instances of one stage.
pub struct StagePool {
    ctx: Arc<StageContext>,
    engine: Engine,
    pre: Pre,
    limits: Limits,
    config_json: String,
    idle: Mutex<Vec<Instance>>,
    /// Instances created so far (for tests and stats).
    created: std::sync::atomic::AtomicU64,
    stopping: Arc<AtomicBool>,
}

impl StagePool {
    pub fn new(
        engine: &Engine,
        plugin: &Plugin,
        ctx: Arc<StageContext>,
        limits: Limits,
        config_json: String,
    ) -> anyhow::Result<StagePool> {
        plugin.check_role(ctx.role)?;
        let mut linker: Linker<StageState> = Linker::new(engine);
        crate::caps::Caps::add_to_linker(&mut linker)?;
        let ipre = linker
            .instantiate_pre(&plugin.component)
            .map_err(|e| anyhow::anyhow!("{}: cannot link {}: {e:#}", ctx.who(), plugin.path.display()))?;
        let pre = match ctx.role {
            Role::Source if plugin.is_document_source() => Pre::DocumentSource(DocumentSourcePluginPre::new(ipre)?),
            Role::Source => Pre::Source(SourcePluginPre::new(ipre)?),
            Role::Extractor => Pre::Extractor(ExtractorPluginPre::new(ipre)?),
            Role::Resolver => Pre::Resolver(ResolverPluginPre::new(ipre)?),
            Role::Store => Pre::Store(StorePluginPre::new(ipre)?),
            Role::Renderer => Pre::Renderer(RendererPluginPre::new(ipre)?),
        };
        Ok(StagePool {
            ctx,
            engine: engine.clone(),
            pre,
            limits,
            config_json,
            idle: Mutex::new(Vec::new()),
            created: Default::default(),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Does the plugin export `document-source` (not `source`)?
    pub fn is_document_source(&self) -> bool {
        matches!(self.pre, Pre::DocumentSource(_))
    }

    pub fn context(&self) -> &Arc<StageContext> {
        &self.ctx
    }

    /// How many instances were created (a trap costs one).
    pub fn instances_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    fn new_store(&self) -> Store<StageState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory as usize)
            .trap_on_grow_failure(true)
            .instances(16)
            .build();
        let mut store = Store::new(&self.engine, StageState::new(self.ctx.clone(), limits));
        store.limiter(|s| &mut s.limits);
        // the deadline is the state's (which host waits on purpose move
        // on), looked at whenever the epoch deadline passes
        store.epoch_deadline_callback(|cx| {
            let left = cx.data().deadline().saturating_duration_since(Instant::now());
            Ok(match ticks(left) {
                0 => wasmtime::UpdateDeadline::Interrupt,
                n => wasmtime::UpdateDeadline::Continue(n),
            })
        });
        store
    }

    fn arm(&self, store: &mut Store<StageState>) {
        store.set_epoch_deadline(ticks(self.limits.timeout).max(1));
        store.data_mut().held.reset();
        store.data_mut().deadline = Instant::now() + self.limits.timeout;
    }

    /// A configured instance: idle one or a fresh one.
    async fn checkout(&self) -> Result<Instance, CallError> {
        if let Some(i) = self.idle.lock().unwrap().pop() {
            return Ok(i);
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        let mut store = self.new_store();
        self.arm(&mut store);
        let setup = |e: wasmtime::Error| CallError::Setup(self.trap_message(&e, "starting"));
        let guest = match &self.pre {
            Pre::Source(p) => Guest::Source(p.instantiate_async(&mut store).await.map_err(setup)?),
            Pre::DocumentSource(p) => Guest::DocumentSource(p.instantiate_async(&mut store).await.map_err(setup)?),
            Pre::Extractor(p) => Guest::Extractor(p.instantiate_async(&mut store).await.map_err(setup)?),
            Pre::Resolver(p) => Guest::Resolver(p.instantiate_async(&mut store).await.map_err(setup)?),
            Pre::Store(p) => Guest::Store(p.instantiate_async(&mut store).await.map_err(setup)?),
            Pre::Renderer(p) => Guest::Renderer(p.instantiate_async(&mut store).await.map_err(setup)?),
        };
        let cfg = self.config_json.clone();
        let configured = match &guest {
            Guest::Source(g) => g.ferry_pipeline_source().call_configure(&mut store, &cfg).await,
            Guest::DocumentSource(g) => g.ferry_pipeline_document_source().call_configure(&mut store, &cfg).await,
            Guest::Extractor(g) => g.ferry_pipeline_extractor().call_configure(&mut store, &cfg).await,
            Guest::Resolver(g) => g.ferry_pipeline_resolver().call_configure(&mut store, &cfg).await,
            Guest::Store(g) => g.ferry_pipeline_store().call_configure(&mut store, &cfg).await,
            Guest::Renderer(g) => g.ferry_pipeline_renderer().call_configure(&mut store, &cfg).await,
        };
        match configured {
            Ok(Ok(())) => Ok(Instance { store, guest }),
            Ok(Err(e)) => Err(CallError::Setup(format!(
                "{} rejected its [{}.config]: {}",
                self.ctx.who(),
                self.ctx.role,
                e.message
            ))),
            Err(e) => Err(CallError::Setup(self.trap_message(&e, "configure"))),
        }
    }

    /// Creates and configures an instance, then keeps it (for `ferry check`).
    pub async fn warm_up(&self) -> Result<(), CallError> {
        let i = self.checkout().await?;
        self.idle.lock().unwrap().push(i);
        Ok(())
    }

    /// Explains a trap in terms of the limit that caused it.
    fn trap_message(&self, e: &wasmtime::Error, during: &str) -> String {
        let who = self.ctx.who();
        if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            match trap {
                wasmtime::Trap::Interrupt => {
                    return format!(
                        "{who} was stopped during {during}: it exceeded its {} call deadline (limits.timeout)",
                        humantime(self.limits.timeout)
                    )
                }
                wasmtime::Trap::AllocationTooLarge => {
                    return format!(
                        "{who} was stopped during {during}: it tried to use more than its {} MiB memory limit (limits.memory)",
                        self.limits.memory >> 20
                    )
                }
                _ => {}
            }
        }
        // the root cause, without the wasm backtrace wasmtime puts on top
        let text = e.chain().last().map(|c| c.to_string()).unwrap_or_else(|| e.to_string());
        if text.contains("growing memory") || text.contains("memory growth") {
            return format!(
                "{who} was stopped during {during}: it tried to use more than its {} MiB memory limit (limits.memory)",
                self.limits.memory >> 20
            );
        }
        let hint = if text.contains("unreachable") { " (the plugin panicked or aborted)" } else { "" };
        format!("{who} crashed during {during}: {}{hint}", first_line(&text))
    }

    /// Runs one export call on an instance with a fresh deadline; returns
    /// the instance to the pool unless it trapped.
    async fn call(&self, req: Request<'_>) -> Result<Response, CallError> {
        let mut inst = self.checkout().await?;
        self.arm(&mut inst.store);
        let (during, file) = match &req {
            Request::Scan(_) => ("scan", None),
            Request::Extract(item) => ("extract", Some(item.file.clone())),
            Request::Resolve(_) => ("resolve", None),
            Request::Store(item, ..) => ("store", Some(item.file.clone())),
            Request::Render(file, _) => ("render", Some((*file).clone())),
        };
        inst.store.data_mut().current_file = file;
        let store = &mut inst.store;
        let r: wasmtime::Result<Result<Response, StageError>> = match (&inst.guest, req) {
            (Guest::Source(g), Request::Scan(cursor)) => g
                .ferry_pipeline_source()
                .call_scan(&mut *store, cursor.as_deref())
                .await
                .map(|r| r.map(|p| Response::Page(ScanPage::from(p)))),
            (Guest::DocumentSource(g), Request::Scan(cursor)) => g
                .ferry_pipeline_document_source()
                .call_scan(&mut *store, cursor.as_deref())
                .await
                .map(|r| r.map(|p| Response::Page(ScanPage::from(p)))),
            (Guest::Extractor(g), Request::Extract(item)) => {
                g.ferry_pipeline_extractor().call_extract(&mut *store, item).await.map(|r| r.map(Response::Metadata))
            }
            (Guest::Resolver(g), Request::Resolve(keys)) => {
                g.ferry_pipeline_resolver().call_resolve(&mut *store, keys).await.map(|r| r.map(Response::Resolutions))
            }
            (Guest::Store(g), Request::Store(item, md, guid)) => {
                g.ferry_pipeline_store().call_store(&mut *store, item, md, guid).await.map(|r| r.map(Response::Stored))
            }
            (Guest::Renderer(g), Request::Render(file, max_size)) => g
                .ferry_pipeline_renderer()
                .call_render(&mut *store, file, max_size)
                .await
                .map(|r| r.map(Response::Picture)),
            _ => unreachable!("the plugin's role is checked when the pool is built"),
        };
        inst.store.data_mut().current_file = None;
        match r {
            Ok(r) => {
                let keep_below = KEEP_IDLE_BELOW.min(self.limits.memory as usize / 2);
                if !self.stopping.load(Ordering::Relaxed) && inst.store.data().limits.grown_to <= keep_below {
                    self.idle.lock().unwrap().push(inst);
                }
                r.map_err(CallError::Stage)
            }
            Err(e) => Err(CallError::Trapped(self.trap_message(&e, during))),
        }
    }

    pub async fn scan(&self, cursor: Option<String>) -> Result<ScanPage, CallError> {
        match self.call(Request::Scan(cursor)).await? {
            Response::Page(p) => Ok(p),
            _ => unreachable!(),
        }
    }

    pub async fn extract(&self, item: &Item) -> Result<Metadata, CallError> {
        match self.call(Request::Extract(item)).await? {
            Response::Metadata(m) => Ok(m),
            _ => unreachable!(),
        }
    }

    pub async fn resolve(&self, keys: &[PatientKey]) -> Result<Vec<Resolution>, CallError> {
        match self.call(Request::Resolve(keys)).await? {
            Response::Resolutions(r) => Ok(r),
            _ => unreachable!(),
        }
    }

    pub async fn store(&self, item: &Item, metadata: &Metadata, guid: &str) -> Result<Stored, CallError> {
        match self.call(Request::Store(item, metadata, guid)).await? {
            Response::Stored(s) => Ok(s),
            _ => unreachable!(),
        }
    }

    /// Renders `file` (readable by the renderer for this call only).
    pub async fn render(&self, file: &FileRef, max_size: Option<u32>) -> Result<Picture, CallError> {
        match self.call(Request::Render(file, max_size)).await? {
            Response::Picture(p) => Ok(p),
            _ => unreachable!(),
        }
    }
}

/// One page of a scan, whichever source world the plugin exports.
#[derive(Debug, Clone)]
pub struct ScanPage {
    pub items: Vec<Scanned>,
    pub notices: Vec<source::Notice>,
    pub next_cursor: Option<String>,
}

/// An item as the source reported it; `document` for document sources.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub item: Item,
    pub document: Option<DocumentFacts>,
}

impl From<Page> for ScanPage {
    fn from(p: Page) -> ScanPage {
        let items = p.items.into_iter().map(|item| Scanned { item, document: None }).collect();
        ScanPage { items, notices: p.notices, next_cursor: p.next_cursor }
    }
}

impl From<document_source::Page> for ScanPage {
    fn from(p: document_source::Page) -> ScanPage {
        let items = p.documents.into_iter().map(|d| Scanned { item: d.item, document: Some(d.facts) }).collect();
        let notices = p
            .notices
            .into_iter()
            .map(|n| source::Notice {
                subject: n.subject,
                outcome: match n.outcome {
                    document_source::NoticeOutcome::Skip => source::NoticeOutcome::Skip,
                    document_source::NoticeOutcome::Fail => source::NoticeOutcome::Fail,
                },
                reason: n.reason,
            })
            .collect();
        ScanPage { items, notices, next_cursor: p.next_cursor }
    }
}

enum Request<'a> {
    Scan(Option<String>),
    Extract(&'a Item),
    Resolve(&'a [PatientKey]),
    Store(&'a Item, &'a Metadata, &'a str),
    Render(&'a FileRef, Option<u32>),
}

enum Response {
    Page(ScanPage),
    Metadata(Metadata),
    Resolutions(Vec<Resolution>),
    Stored(Stored),
    Picture(Picture),
}

use crate::util::first_line;
pub use crate::util::humantime;
