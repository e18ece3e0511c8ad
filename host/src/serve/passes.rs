//! Pipeline passes inside `ferry serve`: the schedule and sync jobs.
//!
//! One pass at a time, whoever asks: the schedule and `POST
//! /patients/{guid}/sync` jobs take turns on one lock, because two passes
//! at once would scan the same source twice and race on the same objects.
//! A job is a pass restricted to the ledger items attached to one patient,
//! with the ledger's shortcut off (`Settings::force`), so each of those
//! images is re-read, re-resolved and re-verified by the store (stored
//! again if the object is missing or differs). Jobs live in memory: they
//! are progress reports for a caller waiting on them, not state to keep
//! (the ledger and the sync log keep what happened).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::metrics::Metrics;
use crate::ledger::Ledger;
use crate::runner::{self, Outcome, Settings, Summary};
use crate::runtime::Runtime;

/// Jobs kept for `GET /jobs/{id}` (oldest finished ones are forgotten).
const KEEP_JOBS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    Scheduled,
    Job,
}

impl PassKind {
    fn label(self) -> &'static str {
        match self {
            PassKind::Scheduled => "scheduled",
            PassKind::Job => "job",
        }
    }
}

/// Runs passes one at a time and reports them to the metrics.
pub struct Passes {
    runtime: Arc<Runtime>,
    lock: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    ledger: Arc<dyn Ledger>,
    /// The service's stop signal: a pass under way finishes its in-flight
    /// items and ends; no new pass starts.
    cancel: CancellationToken,
    completed: watch::Sender<u64>,
    /// Wakes the schedule for a pass now ([`Passes::nudge`]).
    nudged: tokio::sync::Notify,
}

impl Passes {
    pub fn new(
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        ledger: Arc<dyn Ledger>,
        cancel: CancellationToken,
    ) -> Passes {
        Passes {
            runtime,
            lock: tokio::sync::Mutex::new(()),
            metrics,
            ledger,
            cancel,
            completed: watch::Sender::new(0),
            nudged: tokio::sync::Notify::new(),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Passes finished so far (scheduled and jobs).
    pub fn completed(&self) -> u64 {
        *self.completed.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.completed.subscribe()
    }

    /// Waits until no pass runs and none can start (after the stop signal).
    pub async fn drained(&self) {
        let _ = self.lock.lock().await;
    }

    /// Runs one pass with `settings` when it is this one's turn; `started`
    /// gets the live summary as the pass begins. `None` if the service
    /// stopped before the pass could start.
    pub async fn run(
        &self,
        kind: PassKind,
        settings: Settings,
        started: impl FnOnce(Arc<Summary>),
    ) -> Option<Arc<Summary>> {
        let _turn = self.lock.lock().await;
        if self.cancel.is_cancelled() {
            return None;
        }
        // a sync job reports its (few) items; a scheduled pass only counts
        let summary = Arc::new(match kind {
            PassKind::Job => Summary::keeping_reports(),
            PassKind::Scheduled => Summary::default(),
        });
        started(summary.clone());
        self.metrics.pass_started();
        let begun = Instant::now();
        let sampler = {
            let metrics = self.metrics.clone();
            let summary = summary.clone();
            tokio::spawn(async move {
                loop {
                    metrics.pass_progress(&summary);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        runner::run_once(&self.runtime.stages, &settings, self.cancel.child_token(), summary.clone()).await;
        sampler.abort();
        let took = begun.elapsed();
        let (bytes, states) = {
            let ledger = self.ledger.clone();
            let summary = summary.clone();
            tokio::task::spawn_blocking(move || {
                let bytes = summary.stored_bytes();
                let states = ledger.status(0).map(|s| s.by_state).unwrap_or_default();
                (bytes, states)
            })
            .await
            .unwrap_or_default()
        };
        self.metrics.pass_finished(kind.label(), &summary, took, bytes);
        self.metrics.ledger_states(&states);
        let (hits, misses) = summary.cache_stats();
        tracing::info!(
            kind = kind.label(),
            elapsed = ?took,
            resolution_cache_hits = hits,
            resolver_calls_keys = misses,
            "pass finished: {}",
            summary.line()
        );
        for e in summary.errors() {
            tracing::error!("{e}");
        }
        self.completed.send_modify(|n| *n += 1);
        Some(summary)
    }

    /// Asks for a scheduled pass now rather than at its time (an upload a
    /// documents pipeline sends on): one pass serves any number of nudges
    /// made before it starts; during a pass, one more follows it.
    pub fn nudge(&self) {
        self.nudged.notify_one();
    }

    /// A pass now and then one every `every` (start to start), or sooner
    /// when nudged, until the stop signal.
    pub async fn schedule(self: Arc<Self>, every: Duration) {
        loop {
            let begun = Instant::now();
            let settings = self.runtime.settings();
            if self.run(PassKind::Scheduled, settings, |_| {}).await.is_none() {
                return;
            }
            let next = every.saturating_sub(begun.elapsed());
            tracing::info!("next pass in {}", crate::util::humantime(next.max(Duration::from_secs(1))));
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
                _ = self.nudged.notified() => tracing::debug!("a pass now: nudged"),
            }
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for the pass under way to finish.
    Queued,
    Running,
    /// Every item got an outcome and nothing failed.
    Done,
    /// An item failed, the scan stopped, or the service stopped first.
    Failed,
}

/// Counts of a job's pass so far.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct JobCounts {
    pub scanned: u64,
    pub stored: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub unresolved: u64,
    pub quarantined: u64,
    pub failed: u64,
}

impl JobCounts {
    fn of(s: &Summary) -> JobCounts {
        JobCounts {
            scanned: s.scanned(),
            stored: s.count(Outcome::Stored),
            unchanged: s.count(Outcome::Unchanged),
            skipped: s.count(Outcome::Skipped),
            unresolved: s.count(Outcome::Unresolved),
            quarantined: s.count(Outcome::Quarantined),
            failed: s.count(Outcome::Failed),
        }
    }
}

/// What happened to one item of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobItem {
    pub item_id: String,
    /// `stored`, `unchanged`, `skipped`, `unresolved`, `quarantined`, `failed`.
    pub outcome: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// `GET /jobs/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub job_id: String,
    pub patient_guid: String,
    pub state: JobState,
    /// Source items attached to the patient when the job was made.
    pub items_total: u64,
    pub counts: JobCounts,
    /// Items with an outcome so far.
    pub items: Vec<JobItem>,
    /// Problems not tied to one item.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub href: String,
}

struct Job {
    id: String,
    guid: String,
    items_total: u64,
    state: JobState,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    summary: Option<Arc<Summary>>,
    error: Option<String>,
}

impl Job {
    fn status(&self) -> JobStatus {
        let (counts, items, mut errors) = match &self.summary {
            Some(s) => (
                JobCounts::of(s),
                s.reports()
                    .into_iter()
                    .map(|r| JobItem {
                        item_id: r.subject,
                        outcome: r.outcome.as_str().to_owned(),
                        detail: r.detail,
                        location: r.location,
                    })
                    .collect(),
                s.errors(),
            ),
            None => (JobCounts::default(), Vec::new(), Vec::new()),
        };
        errors.extend(self.error.clone());
        JobStatus {
            job_id: self.id.clone(),
            patient_guid: self.guid.clone(),
            state: self.state,
            items_total: self.items_total,
            counts,
            items,
            errors,
            created_at: rfc3339(self.created_at),
            started_at: self.started_at.map(rfc3339),
            finished_at: self.finished_at.map(rfc3339),
            href: format!("/api/v1/jobs/{}", self.id),
        }
    }
}

/// The sync jobs of this process.
pub struct Jobs {
    passes: Arc<Passes>,
    jobs: Mutex<VecDeque<Job>>,
}

impl Jobs {
    pub fn new(passes: Arc<Passes>) -> Jobs {
        Jobs { passes, jobs: Mutex::new(VecDeque::new()) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut VecDeque<Job>) -> T) -> T {
        f(&mut self.jobs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) {
        self.with(|jobs| {
            if let Some(j) = jobs.iter_mut().find(|j| j.id == id) {
                f(j)
            }
        })
    }

    pub fn status(&self, id: &str) -> Option<JobStatus> {
        self.with(|jobs| jobs.iter().find(|j| j.id == id).map(Job::status))
    }

    /// Queues a re-sync of `items` (ids) for `guid`; a job for the same
    /// patient still queued is reused, as it will see the same items.
    pub fn submit(self: &Arc<Self>, guid: &str, items: HashSet<String>) -> JobStatus {
        let id = {
            let queued =
                self.with(|jobs| jobs.iter().find(|j| j.guid == guid && j.state == JobState::Queued).map(Job::status));
            if let Some(s) = queued {
                return s;
            }
            hex::encode(rand::random::<[u8; 16]>())
        };
        let job = Job {
            id: id.clone(),
            guid: guid.to_owned(),
            items_total: items.len() as u64,
            state: JobState::Queued,
            created_at: crate::ledger::now_ms(),
            started_at: None,
            finished_at: None,
            summary: None,
            error: None,
        };
        let status = job.status();
        self.with(|jobs| {
            jobs.push_back(job);
            while jobs.len() > KEEP_JOBS {
                match jobs.iter().position(|j| matches!(j.state, JobState::Done | JobState::Failed)) {
                    Some(i) => {
                        jobs.remove(i);
                    }
                    None => break,
                }
            }
        });
        tracing::info!(job = %id, items = items.len(), "sync job queued");
        let this = self.clone();
        let mut settings = self.passes.runtime().settings();
        settings.only = Some(Arc::new(items));
        settings.force = true;
        tokio::spawn(async move {
            let ran = this
                .passes
                .run(PassKind::Job, settings, |summary| {
                    this.update(&id, |j| {
                        j.state = JobState::Running;
                        j.started_at = Some(crate::ledger::now_ms());
                        j.summary = Some(summary);
                    })
                })
                .await;
            this.update(&id, |j| {
                j.finished_at = Some(crate::ledger::now_ms());
                j.state = match &ran {
                    None => {
                        j.error = Some("the service stopped before the job could run".into());
                        JobState::Failed
                    }
                    Some(s) if s.has_failures() || s.interrupted() => JobState::Failed,
                    Some(_) => JobState::Done,
                };
                tracing::info!(job = %j.id, state = ?j.state, "sync job finished");
            });
        });
        status
    }
}

/// `2024-05-01T12:34:56.789Z` for ms since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::rfc3339(1_714_566_896_789), "2024-05-01T12:34:56.789Z");
    }
}
