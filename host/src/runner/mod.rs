//! The running topology: stages connected by bounded queues.
//!
//! ```text
//! source ──queue──▶ extractor ×N ──queue──▶ resolver (batches) ×N ──queue──▶ store ×N
//! ```
//!
//! Each stage is a dispatcher ([`dispatch`]) that starts a task per item
//! (or batch) as it arrives, up to the stage's `concurrency`; plugin
//! instances are likewise created on demand by the stage's pool.
//!
//! The source is paged, so a scan of 50,000 images never sits in memory;
//! bounded queues give back-pressure, so a slow store slows the scan
//! instead of filling RAM. Each item ends in exactly one outcome, counted
//! in the [`Summary`]. Patient attachment is decided here, not in a plugin,
//! so every resolver gets the same rule: an item is stored only when every
//! key that resolves agrees on one guid.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bindings::resolver_world::exports::ferry::pipeline::resolver::Resolution;
use crate::bindings::source_world::exports::ferry::pipeline::source::NoticeOutcome;
use crate::bindings::store_world::exports::ferry::pipeline::store::StoreOutcome;
use crate::bindings::types::{DocumentFacts, Item, Metadata, PatientKey, Value};
use crate::caps::http::spool::{self, SpoolFile};
use crate::config::CacheConfig;
use crate::ledger::{Backoff, CachedAnswer, Items, Resolutions, Runs, SyncLog};
use crate::outcome::{ImageFacts, StoredItem, StoredItemListener};
use crate::stage::StagePool;

mod decide;
pub mod resume;
mod retry;
mod summary;

pub use crate::outcome::{Outcome, Report};
pub use decide::{decide, valid_guid, Decision};
use retry::with_retries;
use summary::Journal;
pub use summary::Summary;

/// The stages of a pipeline, ready to run.
pub struct Stages {
    pub source: Arc<StagePool>,
    pub extractor: Option<Arc<StagePool>>,
    pub resolver: Arc<StagePool>,
    pub store: Arc<StagePool>,
    /// Where outcomes, the sync log and the resolution cache live.
    pub ledger: Arc<dyn RunLedger>,
    /// Told about every item the store acknowledged (the image index).
    pub on_stored: Vec<Arc<dyn StoredItemListener>>,
    /// Every fs root of the pipeline (to fingerprint item files).
    pub fs_roots: BTreeMap<String, PathBuf>,
    /// The ledger key of the source's resume point, for a document source
    /// ([`resume`]); none for other sources.
    pub resume_key: Option<String>,
}

/// The parts of the ledger a pass uses: outcomes, runs, the sync log and
/// the resolution cache (not the image index: that listens to
/// [`StoredItem`] events).
pub trait RunLedger: Items + Runs + SyncLog + Resolutions {}
impl<T: Items + Runs + SyncLog + Resolutions + ?Sized> RunLedger for T {}

/// An item on its way through the stages.
pub struct Work {
    pub item: Item,
    /// Size and modification time of its file, when it could be read.
    pub fingerprint: Option<String>,
    /// Its file, when that is in the spool: removed when the work is dropped.
    pub spool: SpoolFile,
    /// What a document source said of the document.
    pub document: Option<DocumentFacts>,
    /// The scan page it came on (for [`resume`]).
    pub page: usize,
    /// Where an earlier version of it was stored, and for whom.
    pub previous: Option<Previous>,
}

/// An earlier stored version of an item whose file has changed since: the
/// store is told (`ferry.previous-location`) so it can update that copy
/// instead of adding a second one, when the patient is the same.
#[derive(Debug, Clone)]
pub struct Previous {
    pub location: String,
    pub patient_guid: String,
}

/// The metadata key telling a store where the previous version of a
/// changed item is (its earlier `stored.location`, same patient).
pub const PREVIOUS_LOCATION: &str = "ferry.previous-location";

/// A document's facts as metadata for the later stages (`document.*`).
fn document_metadata(d: &DocumentFacts) -> Metadata {
    let text = |k: &str, v: &str| (format!("document.{k}"), Value::Text(v.to_owned()));
    let mut md = vec![text("content-type", &d.content_type)];
    if let Some(c) = &d.kind {
        md.extend([text("type.system", &c.system), text("type.code", &c.code), text("type.display", &c.display)]);
    }
    for (k, v) in [("date", &d.date), ("title", &d.title), ("author", &d.author)] {
        if let Some(v) = v {
            md.push(text(k, v));
        }
    }
    md
}

/// The guard of an item's spool file (empty for any other file).
fn spool_file(roots: &BTreeMap<String, PathBuf>, file: &crate::bindings::types::FileRef) -> SpoolFile {
    let path = (file.root == spool::ROOT).then(|| roots.get(spool::ROOT)).flatten();
    SpoolFile(path.and_then(|dir| spool::Spool::path_of(dir, &file.path)))
}

/// `size:mtime_ns` of an item's file: cheap, and changes when a clinic
/// re-exports an image. The store still compares checksums.
pub fn fingerprint(roots: &BTreeMap<String, PathBuf>, file: &crate::bindings::types::FileRef) -> Option<String> {
    let root = roots.get(&file.root)?;
    if file.root == spool::ROOT {
        // a download is new each pass: its content is what stays the same
        let (sha, size) = crate::util::sha256_file(&root.join(&file.path)).ok()?;
        return Some(format!("{size}:sha256:{sha}"));
    }
    let md = std::fs::metadata(root.join(&file.path)).ok()?;
    Some(format!("{}:{}", md.len(), crate::caps::fs::mtime_ns(&md)?))
}

/// [`fingerprint`] at scan time: from what the source's listing saw
/// moments ago when it saw the file, else by a `stat`.
fn scan_fingerprint(
    roots: &BTreeMap<String, PathBuf>,
    listed: &crate::caps::fs::Seen,
    file: &crate::bindings::types::FileRef,
) -> Option<String> {
    match listed.get(&(file.root.clone(), file.path.clone())) {
        Some((size, mtime)) if file.root != spool::ROOT => Some(format!("{size}:{mtime}")),
        _ => fingerprint(roots, file),
    }
}

/// How long ago the item's file was modified; `None` when it cannot be
/// read, or when its time is so far in the future that the clock of the
/// machine that wrote it must be wrong (the change check between scan and
/// upload still protects such files).
pub fn file_age(
    roots: &BTreeMap<String, PathBuf>,
    file: &crate::bindings::types::FileRef,
    min_age: Duration,
) -> Option<Duration> {
    let root = roots.get(&file.root)?;
    let modified = std::fs::metadata(root.join(&file.path)).ok()?.modified().ok()?;
    match std::time::SystemTime::now().duration_since(modified) {
        Ok(age) => Some(age),
        Err(ahead) if ahead.duration() <= min_age => Some(Duration::ZERO),
        Err(_) => None,
    }
}

/// Whether the item's file is no longer what the scan saw.
fn changed_since_scan(roots: &BTreeMap<String, PathBuf>, w: &Work) -> bool {
    // the host wrote a spool file whole and nothing writes it again
    w.item.file.root != spool::ROOT && w.fingerprint.is_some() && fingerprint(roots, &w.item.file) != w.fingerprint
}

/// Run settings taken from the pipeline file.
#[derive(Clone)]
pub struct Settings {
    pub queue_depth: usize,
    pub extractor_concurrency: usize,
    pub resolver_concurrency: usize,
    pub store_concurrency: usize,
    pub source_retries: u32,
    pub extractor_retries: u32,
    pub resolver_retries: u32,
    pub store_retries: u32,
    /// Distinct patient keys per resolver call.
    pub resolve_batch: usize,
    pub backoff: Backoff,
    pub quarantine_backoff: Backoff,
    pub cache: CacheConfig,
    /// Only these item ids (a re-sync of one patient from `ferry serve`):
    /// other items and the source's notices are passed over without being
    /// counted. `None`: everything.
    pub only: Option<Arc<std::collections::HashSet<String>>>,
    /// Process items even where the ledger says there is nothing to do
    /// (stored and unchanged, or parked), so the store re-verifies them.
    pub force: bool,
    /// `[source] min_age`: younger files wait for the next pass.
    pub min_age: Duration,
}

/// The facts the service shows for an image, from its metadata.
fn image_facts(item: &Item, md: &Metadata) -> ImageFacts {
    let text = |k: &str| {
        md.iter().rev().find(|(key, _)| key == k).and_then(|(_, v)| match v {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        })
    };
    let int = |k: &str| {
        md.iter().rev().find(|(key, _)| key == k).and_then(|(_, v)| match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        })
    };
    ImageFacts {
        name: item.display_name.clone(),
        patient_name: text("patient.name"),
        modality: text("modality"),
        study_date: text("study.date").or_else(|| text("acquisition.date")),
        rows: int("rows"),
        columns: int("columns"),
    }
}

/// What the ledger says to do with a scanned item.
enum Verdict {
    /// Process it (with where an earlier version was stored, if any).
    Process(Option<Previous>),
    /// Already stored, file unchanged: nothing to do.
    Done(Report),
    /// A parked problem whose backoff has not run out: report as is.
    Parked(Report),
}

/// `rec`: the ledger's record of the item (read for the whole page).
fn verdict(rec: Option<&crate::ledger::ItemRecord>, w: &Work) -> Verdict {
    let Some(rec) = rec else { return Verdict::Process(None) };
    if rec.fingerprint.is_none() || rec.fingerprint != w.fingerprint {
        return Verdict::Process(previous(rec));
    }
    let report = |outcome, detail: String| Report {
        subject: w.item.id.clone(),
        outcome,
        detail,
        patient_guid: rec.patient_guid.clone(),
        location: rec.location.clone(),
    };
    match rec.state {
        Outcome::Stored | Outcome::Unchanged => Verdict::Done(report(Outcome::Unchanged, String::new())),
        Outcome::Unresolved | Outcome::Quarantined | Outcome::Failed
            if rec.next_attempt_at > crate::ledger::now_ms() =>
        {
            let wait = Duration::from_millis((rec.next_attempt_at - crate::ledger::now_ms()).max(0) as u64);
            Verdict::Parked(report(
                rec.state,
                format!(
                    "parked after {} attempt(s), next in {}: {}",
                    rec.attempts,
                    crate::util::humantime(Duration::from_secs(wait.as_secs().max(1))),
                    rec.last_error.as_deref().unwrap_or("")
                ),
            ))
        }
        _ => Verdict::Process(previous(rec)),
    }
}

/// Where the item was stored before, when it was.
fn previous(rec: &crate::ledger::ItemRecord) -> Option<Previous> {
    Some(Previous { location: rec.location.clone()?, patient_guid: rec.patient_guid.clone()? })
}

fn answer_of(r: &Resolution) -> Option<CachedAnswer> {
    match r {
        Resolution::Resolved(g) => Some(CachedAnswer::Resolved(g.clone())),
        Resolution::NotFound => Some(CachedAnswer::NotFound),
        Resolution::Ambiguous(gs) => Some(CachedAnswer::Ambiguous(gs.clone())),
        Resolution::Unsupported => None,
    }
}

fn resolution_of(a: CachedAnswer) -> Resolution {
    match a {
        CachedAnswer::Resolved(g) => Resolution::Resolved(g),
        CachedAnswer::NotFound => Resolution::NotFound,
        CachedAnswer::Ambiguous(gs) => Resolution::Ambiguous(gs),
    }
}

/// Answers for `keys`: from the ledger's cache where fresh, the rest from
/// the resolver (then cached). A key whose answer names another patient
/// than before is logged: the PMS changed its mind.
async fn resolve_keys(
    resolver: &StagePool,
    ledger: &dyn RunLedger,
    settings: &Settings,
    summary: &Summary,
    cancel: &CancellationToken,
    keys: Vec<PatientKey>,
) -> Result<HashMap<(String, String), Resolution>, String> {
    let mut answers = HashMap::new();
    let mut ask = Vec::new();
    for k in keys {
        match ledger.cached(&k.scheme, &k.value) {
            Ok(Some(a)) => {
                summary.cache_hits.fetch_add(1, Ordering::Relaxed);
                answers.insert((k.scheme, k.value), resolution_of(a));
            }
            _ => ask.push(k),
        }
    }
    if ask.is_empty() {
        return Ok(answers);
    }
    summary.cache_misses.fetch_add(ask.len() as u64, Ordering::Relaxed);
    let got = with_retries(settings.resolver_retries, cancel, || resolver.resolve(&ask))
        .await
        .map_err(|e| format!("resolve: {e}"))?;
    if got.len() != ask.len() {
        return Err(format!(
            "resolve: {} answered {} resolutions for {} keys (plugin bug)",
            resolver.context().who(),
            got.len(),
            ask.len()
        ));
    }
    for (k, r) in ask.into_iter().zip(got) {
        if let Some(a) = answer_of(&r) {
            let ttl = match a {
                CachedAnswer::Resolved(_) => settings.cache.ttl,
                _ => settings.cache.not_found_ttl,
            };
            match ledger.remember(&k.scheme, &k.value, &a, ttl) {
                Ok(Some(CachedAnswer::Resolved(old))) => {
                    let new = match &a {
                        CachedAnswer::Resolved(g) => g.as_str(),
                        _ => "",
                    };
                    tracing::warn!(scheme = %k.scheme, "a patient key now resolves to another patient guid than before");
                    if let Some(j) = summary.journal.get() {
                        let _ = ledger.log(
                            j.run_id,
                            &format!("{}-key", k.scheme),
                            Some(new),
                            "resolution-changed",
                            "warning",
                            &format!("a `{}` key resolved to {old} before and to {new} now", k.scheme),
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot cache a resolution: {e}"),
            }
        }
        answers.insert((k.scheme, k.value), r);
    }
    Ok(answers)
}

/// Runs one pass over the source. Returns when every item has an outcome,
/// or, after `cancel`, when the items already scanned have drained.
pub async fn run_once(stages: &Stages, settings: &Settings, cancel: CancellationToken, summary: Arc<Summary>) {
    match stages.ledger.begin_run() {
        Ok(run_id) => {
            let _ = summary.journal.set(Journal {
                ledger: stages.ledger.clone(),
                run_id,
                backoff: settings.backoff,
                quarantine_backoff: settings.quarantine_backoff,
            });
        }
        Err(e) => {
            summary.error(format!("cannot start a run in the ledger: {e}"));
            return;
        }
    }
    run_stages(stages, settings, cancel, summary.clone()).await;
    save_resume_point(stages, settings, &summary);
    if let Some(j) = summary.journal.get() {
        if let Err(e) = j.ledger.end_run(j.run_id, &summary.line()) {
            summary.error(format!("cannot close the run in the ledger: {e}"));
        }
    }
}

/// Remembers where the next pass of a document source starts, once every
/// item of this one has its outcome ([`resume`]).
fn save_resume_point(stages: &Stages, settings: &Settings, summary: &Summary) {
    let Some(key) = &stages.resume_key else { return };
    if settings.force || settings.only.is_some() || summary.interrupted() || !summary.errors().is_empty() {
        return;
    }
    let Some(point) = summary.pages.lock().unwrap().outcome() else { return };
    if let Err(e) = stages.ledger.set_resume_point(key, point.as_deref()) {
        summary.error(format!("cannot save the resume point (the next pass scans more than it must): {e}"));
    }
}

/// Runs `work` on what arrives on `rx` (up to `batch` queued messages at
/// a time), at most `max` at once. Tasks start as messages arrive and end
/// with their message: an idle stage holds nothing, and a large
/// `concurrency` costs only what is really in flight.
async fn dispatch<T, F, Fut>(mut rx: mpsc::Receiver<T>, max: usize, batch: usize, summary: Arc<Summary>, work: F)
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(max.max(1)));
    let mut running = tokio::task::JoinSet::new();
    let failed = |r: Result<(), tokio::task::JoinError>| {
        if let Err(e) = r {
            summary.error(format!("internal error: a pipeline task failed: {e}"));
        }
    };
    loop {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let Some(first) = rx.recv().await else { break };
        let mut taken = vec![first];
        while taken.len() < batch.max(1) {
            match rx.try_recv() {
                Ok(x) => taken.push(x),
                Err(_) => break,
            }
        }
        let fut = work(taken);
        running.spawn(async move {
            fut.await;
            drop(permit);
        });
        while let Some(r) = running.try_join_next() {
            failed(r);
        }
    }
    while let Some(r) = running.join_next().await {
        failed(r);
    }
}

/// One item through the store stage, recorded in the summary.
#[allow(clippy::too_many_arguments)]
async fn store_one(
    store: &StagePool,
    listeners: &[Arc<dyn StoredItemListener>],
    roots: &BTreeMap<String, PathBuf>,
    summary: &Summary,
    cancel: &CancellationToken,
    retries: u32,
    w: Work,
    mut md: Metadata,
    guid: String,
) {
    if let Some(d) = &w.document {
        md.extend(document_metadata(d));
    }
    if let Some(p) = w.previous.as_ref().filter(|p| p.patient_guid == guid) {
        md.push((PREVIOUS_LOCATION.to_owned(), Value::Text(p.location.clone())));
    }
    // a file that changes under ferry is not stored this pass: what would
    // land is a half-written image
    if changed_since_scan(roots, &w) {
        summary.item(
            &w,
            Outcome::Deferred,
            "the file changed after it was scanned (size or modification time); next pass",
        );
        return;
    }
    // outside the upload windows the item waits for a pass inside one;
    // it was extracted and resolved all the same, so that what a person
    // must sort out (an unknown card, two patients) shows during the day
    if let Some(why) = store.context().pace.windows.as_ref().and_then(|w| w.closed_reason()) {
        summary.item(&w, Outcome::Deferred, why);
        return;
    }
    // recorded as stored only once the store said so
    let result = with_retries(retries, cancel, || store.store(&w.item, &md, &guid)).await;
    if changed_since_scan(roots, &w) {
        // whatever was uploaded is replaced on the next pass, which sees
        // the new fingerprint
        summary.item(
            &w,
            Outcome::Deferred,
            "the file changed while it was being stored; it is stored again on the next pass",
        );
        return;
    }
    let report = match result {
        Ok(stored) => {
            if !listeners.is_empty() {
                let event = StoredItem {
                    item_id: w.item.id.clone(),
                    patient_guid: guid.clone(),
                    location: stored.location.clone(),
                    facts: image_facts(&w.item, &md),
                };
                for l in listeners {
                    l.stored(&event);
                }
            }
            if stored.outcome == StoreOutcome::Stored {
                // the size the fingerprint was taken with (what was hashed)
                let size =
                    w.fingerprint.as_deref().and_then(|f| f.split(':').next()?.parse().ok()).unwrap_or(w.item.size);
                summary.stored_bytes.fetch_add(size, Ordering::Relaxed);
            }
            Report {
                subject: w.item.id.clone(),
                outcome: match stored.outcome {
                    StoreOutcome::Stored => Outcome::Stored,
                    StoreOutcome::Unchanged => Outcome::Unchanged,
                },
                detail: String::new(),
                patient_guid: Some(guid),
                location: Some(stored.location),
            }
        }
        Err(e) => Report {
            subject: w.item.id.clone(),
            outcome: Outcome::Failed,
            detail: format!("store: {e}"),
            patient_guid: Some(guid),
            location: None,
        },
    };
    summary.record_work(&w, report);
}

async fn run_stages(stages: &Stages, settings: &Settings, cancel: CancellationToken, summary: Arc<Summary>) {
    let depth = settings.queue_depth;
    let (to_extract, extract_rx) = mpsc::channel::<Work>(depth);
    let (to_resolve, resolve_rx) = mpsc::channel::<(Work, Metadata)>(depth);
    let (to_store, store_rx) = mpsc::channel::<(Work, Metadata, String)>(depth);
    let mut tasks = tokio::task::JoinSet::new();

    // source: page after page until done or cancelled
    {
        let source = stages.source.clone();
        let summary = summary.clone();
        let cancel = cancel.clone();
        let retries = settings.source_retries;
        let ledger = stages.ledger.clone();
        let roots = stages.fs_roots.clone();
        let only = settings.only.clone();
        let force = settings.force;
        let min_age = settings.min_age;
        // a document source may start where the last pass left off
        let resumable = stages.resume_key.clone().filter(|_| !force && only.is_none());
        let start = match &resumable {
            Some(key) => stages.ledger.resume_point(key).unwrap_or_else(|e| {
                tracing::warn!("cannot read the resume point, scanning from the top: {e}");
                None
            }),
            None => None,
        };
        if start.is_some() {
            tracing::debug!("the scan starts at the resume point of the last pass");
        }
        let document_source = stages.resume_key.is_some();
        tasks.spawn(async move {
            let mut cursor: Option<String> = start;
            // with `only`, the scan ends once every wanted item was seen
            let mut wanted = only.as_ref().map(|o| o.len());
            loop {
                if cancel.is_cancelled() {
                    summary.interrupted.store(true, Ordering::Relaxed);
                    break;
                }
                // only a document source's pages can give a resume point
                let page_no = if document_source { summary.pages.lock().unwrap().begin(cursor.clone()) } else { 0 };
                let page = with_retries(retries, &cancel, || source.scan(cursor.clone())).await;
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        summary.error(format!("scan stopped: {e}"));
                        break;
                    }
                };
                let empty = page.items.is_empty() && page.notices.is_empty();
                let listed = source.context().caps.fs.as_ref().and_then(|f| f.listed.as_ref()).map(|l| l.take());
                let listed = listed.unwrap_or_default();
                for n in page.notices {
                    if only.is_some() {
                        continue;
                    }
                    summary.scanned.fetch_add(1, Ordering::Relaxed);
                    let outcome = match n.outcome {
                        NoticeOutcome::Skip => Outcome::Skipped,
                        NoticeOutcome::Fail => Outcome::Failed,
                    };
                    if !resume::settled(outcome) {
                        summary.pages.lock().unwrap().unsettled(page_no);
                    }
                    summary.record(
                        Report { subject: n.subject, outcome, detail: n.reason, patient_guid: None, location: None },
                        None,
                    );
                }
                // what the ledger knows of the page's items, in one read
                // (a pass where nothing changed is mostly this)
                let known = if force {
                    std::collections::HashMap::new()
                } else {
                    let ids: Vec<&str> = page
                        .items
                        .iter()
                        .map(|s| s.item.id.as_str())
                        .filter(|id| only.as_ref().is_none_or(|o| o.contains(*id)))
                        .collect();
                    ledger.items_by_id(&ids).unwrap_or_else(|e| {
                        tracing::warn!("ledger lookup failed, processing the page's items: {e}");
                        std::collections::HashMap::new()
                    })
                };
                for crate::stage::Scanned { item, document } in page.items {
                    // a spooled file goes when its item does, however it ends
                    let spool = spool_file(&roots, &item.file);
                    if let Some(only) = &only {
                        if !only.contains(&item.id) {
                            continue;
                        }
                        wanted = wanted.map(|n| n.saturating_sub(1));
                    }
                    let fp = scan_fingerprint(&roots, &listed, &item.file);
                    let mut work = Work { item, fingerprint: fp, spool, document, page: page_no, previous: None };
                    let verdict = if force { Verdict::Process(None) } else { verdict(known.get(&work.item.id), &work) };
                    match verdict {
                        Verdict::Done(r) => {
                            summary.scanned.fetch_add(1, Ordering::Relaxed);
                            summary.remembered(r);
                            continue;
                        }
                        Verdict::Parked(r) => {
                            summary.scanned.fetch_add(1, Ordering::Relaxed);
                            summary.pages.lock().unwrap().unsettled(page_no);
                            summary.remembered(r);
                            continue;
                        }
                        Verdict::Process(previous) => work.previous = previous,
                    }
                    // the host wrote a spool file whole: nothing to wait for
                    if !min_age.is_zero() && work.item.file.root != spool::ROOT {
                        if let Some(age) = file_age(&roots, &work.item.file, min_age).filter(|a| *a < min_age) {
                            summary.scanned.fetch_add(1, Ordering::Relaxed);
                            summary.item(
                                &work,
                                Outcome::Deferred,
                                format!(
                                    "the file was modified {} ago, less than [source] min_age = {}: it may still be being written; next pass",
                                    crate::util::humantime(age),
                                    crate::util::humantime(min_age)
                                ),
                            );
                            continue;
                        }
                    }
                    // items not handed on are simply not scanned: the next
                    // run finds them again
                    let sent = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => false,
                        permit = to_extract.reserve() => match permit {
                            Ok(permit) => {
                                summary.scanned.fetch_add(1, Ordering::Relaxed);
                                permit.send(work);
                                true
                            }
                            Err(_) => return,
                        },
                    };
                    if !sent {
                        summary.interrupted.store(true, Ordering::Relaxed);
                        return;
                    }
                }
                if wanted == Some(0) {
                    break;
                }
                let Some(next) = &page.next_cursor else {
                    summary.pages.lock().unwrap().end_full();
                    break;
                };
                // a document source's empty page with a cursor: nothing
                // more now, and the cursor is where to look next time
                if document_source && empty {
                    summary.pages.lock().unwrap().end_resumable(next.clone());
                    break;
                }
                if page.next_cursor == cursor {
                    summary.error(format!(
                        "scan stopped: {} returned the same cursor twice (plugin bug)",
                        source.context().who()
                    ));
                    break;
                }
                cursor = page.next_cursor;
            }
        });
    }

    // extractor (or a pass-through when the pipeline has none)
    {
        let tx = to_resolve.clone();
        let extractor = stages.extractor.clone();
        let summary2 = summary.clone();
        let cancel = cancel.clone();
        let retries = settings.extractor_retries;
        let roots = stages.fs_roots.clone();
        let work = move |mut batch: Vec<Work>| {
            let (tx, extractor, summary, cancel, roots) =
                (tx.clone(), extractor.clone(), summary2.clone(), cancel.clone(), roots.clone());
            async move {
                let Some(work) = batch.pop() else { return };
                let metadata = match &extractor {
                    None => Ok(Vec::new()),
                    Some(x) => with_retries(retries, &cancel, || x.extract(&work.item)).await,
                };
                match metadata {
                    // the resolver's queue is open while anything can send
                    Ok(md) => drop(tx.send((work, md)).await),
                    Err(_) if changed_since_scan(&roots, &work) => summary.item(
                        &work,
                        Outcome::Deferred,
                        "the file changed while it was being read (size or modification time); next pass",
                    ),
                    Err(e) => summary.item(&work, Outcome::Failed, format!("extract: {e}")),
                }
            }
        };
        tasks.spawn(dispatch(extract_rx, settings.extractor_concurrency, 1, summary.clone(), work));
    }
    drop(to_resolve);

    // resolver: take what is queued (up to a batch), ask once per distinct
    // key not in the cache, decide per item
    {
        let tx = to_store.clone();
        let resolver = stages.resolver.clone();
        let summary2 = summary.clone();
        let cancel = cancel.clone();
        let ledger = stages.ledger.clone();
        let settings2 = settings.clone();
        let work = move |batch: Vec<(Work, Metadata)>| {
            let (tx, resolver, summary, cancel, ledger, settings) =
                (tx.clone(), resolver.clone(), summary2.clone(), cancel.clone(), ledger.clone(), settings2.clone());
            async move {
                let mut keys: Vec<PatientKey> = Vec::new();
                for (w, _) in &batch {
                    for k in &w.item.patient_keys {
                        if !keys.iter().any(|x| x.scheme == k.scheme && x.value == k.value) {
                            keys.push(k.clone());
                        }
                    }
                }
                let answers = resolve_keys(&resolver, &*ledger, &settings, &summary, &cancel, keys).await;
                let answers = match answers {
                    Ok(a) => a,
                    Err(msg) => {
                        // parked as failed: retried on a later run
                        for (w, _) in &batch {
                            summary.item(w, Outcome::Failed, msg.clone());
                        }
                        return;
                    }
                };
                for (w, md) in batch {
                    match decide(&w.item.patient_keys, &answers) {
                        Decision::Attach(guid) => drop(tx.send((w, md, guid)).await),
                        Decision::Unresolved(why) => summary.item(&w, Outcome::Unresolved, why),
                        Decision::Quarantine(why) => summary.item(&w, Outcome::Quarantined, why),
                        Decision::Invalid(why) => summary.item(&w, Outcome::Failed, format!("resolve: {why}")),
                    }
                }
            }
        };
        tasks.spawn(dispatch(resolve_rx, settings.resolver_concurrency, settings.resolve_batch, summary.clone(), work));
    }
    drop(to_store);

    // store
    {
        let store = stages.store.clone();
        let summary2 = summary.clone();
        let cancel = cancel.clone();
        let retries = settings.store_retries;
        let listeners: Arc<[Arc<dyn StoredItemListener>]> = stages.on_stored.clone().into();
        let roots = stages.fs_roots.clone();
        let work = move |mut batch: Vec<(Work, Metadata, String)>| {
            let (store, summary, cancel, listeners, roots) =
                (store.clone(), summary2.clone(), cancel.clone(), listeners.clone(), roots.clone());
            async move {
                let Some((w, md, guid)) = batch.pop() else { return };
                store_one(&store, &listeners, &roots, &summary, &cancel, retries, w, md, guid).await
            }
        };
        tasks.spawn(dispatch(store_rx, settings.store_concurrency, 1, summary.clone(), work));
    }

    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            summary.error(format!("internal error: a pipeline task failed: {e}"));
        }
    }
}
