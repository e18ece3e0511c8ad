//! The live counters of one pass ([`Summary`]) and where its outcomes are
//! written down (the ledger's journal): what the progress bar, the summary
//! line, `/metrics` and the tests read.
//!
//! Per-item reports stream to the log and the ledger as items end; a
//! summary keeps them only when asked to ([`Summary::keeping_reports`]: a
//! sync job's few items, tests), so a pass over 100,000 unchanged images
//! holds counters, not 100,000 reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Work;
use crate::ledger::Backoff;
use crate::outcome::{Outcome, Report};

/// Live counters of a run, readable while it goes on (progress bar).
#[derive(Default)]
pub struct Summary {
    pub(super) scanned: AtomicU64,
    pub(super) counts: [AtomicU64; 7],
    pub(super) reports: Mutex<Vec<Report>>,
    /// Problems not tied to one item (the scan stopped, ...).
    pub(super) errors: Mutex<Vec<String>>,
    pub(super) interrupted: AtomicBool,
    /// Patient keys answered from the resolution cache / asked.
    pub(super) cache_hits: AtomicU64,
    pub(super) cache_misses: AtomicU64,
    pub(super) journal: std::sync::OnceLock<Journal>,
    /// Keep every [`Report`] (see [`Summary::keeping_reports`]).
    keep: bool,
    /// Bytes of the files stored in this pass.
    pub(super) stored_bytes: AtomicU64,
    /// The scan's pages, for the resume point of a document source.
    pub(super) pages: Mutex<super::resume::Pages>,
}

/// Where outcomes are written down besides the summary.
pub(super) struct Journal {
    pub(super) ledger: Arc<dyn super::RunLedger>,
    pub(super) run_id: i64,
    pub(super) backoff: Backoff,
    pub(super) quarantine_backoff: Backoff,
}

impl Summary {
    /// A summary that also keeps every item's report, for [`reports`](Self::reports)
    /// and [`report`](Self::report). [`Summary::default`] only counts.
    pub fn keeping_reports() -> Summary {
        Summary { keep: true, ..Summary::default() }
    }

    /// Bytes of the files stored in this pass (their size when scanned).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    pub fn scanned(&self) -> u64 {
        self.scanned.load(Ordering::Relaxed)
    }

    pub fn count(&self, o: Outcome) -> u64 {
        self.counts[o as usize].load(Ordering::Relaxed)
    }

    /// Every item's report, in the order they ended; empty unless the
    /// summary was made with [`keeping_reports`](Self::keeping_reports).
    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().unwrap().clone()
    }

    /// The report of one subject, if any.
    pub fn report(&self, subject: &str) -> Option<Report> {
        self.reports.lock().unwrap().iter().find(|r| r.subject == subject).cloned()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// (answered from the resolution cache, asked the resolver).
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.cache_hits.load(Ordering::Relaxed), self.cache_misses.load(Ordering::Relaxed))
    }

    /// Did anything fail (an item, or the scan itself)?
    pub fn has_failures(&self) -> bool {
        self.count(Outcome::Failed) > 0 || !self.errors.lock().unwrap().is_empty()
    }

    /// `done: scanned=N stored=N unchanged=N skipped=N unresolved=N quarantined=N failed=N deferred=N`
    pub fn line(&self) -> String {
        let mut s = format!("done: scanned={}", self.scanned());
        for o in Outcome::ALL {
            s.push_str(&format!(" {}={}", o.as_str(), self.count(o)));
        }
        if self.interrupted() {
            s.push_str(" (interrupted)");
        }
        s
    }

    pub(super) fn record(&self, r: Report, fingerprint: Option<&str>) {
        self.count_only(&r);
        if let Some(j) = self.journal.get() {
            let backoff = if r.outcome == Outcome::Quarantined { j.quarantine_backoff } else { j.backoff };
            let written = j.ledger.record(
                j.run_id,
                &r.subject,
                r.outcome,
                fingerprint,
                r.patient_guid.as_deref(),
                r.location.as_deref(),
                &r.detail,
                backoff,
            );
            if let Err(e) = written {
                // the item is done; only its record is missing: the next
                // run redoes it and the store finds it unchanged
                self.error(format!("{}: cannot record the outcome: {e}", r.subject));
            }
        }
        self.keep_report(r);
    }

    fn keep_report(&self, r: Report) {
        if self.keep {
            self.reports.lock().unwrap().push(r);
        }
    }

    /// Counts and logs an outcome without writing the ledger (for items
    /// whose ledger record already says it).
    pub(super) fn count_only(&self, r: &Report) {
        match r.outcome {
            Outcome::Failed => tracing::warn!(item = %r.subject, "failed: {}", r.detail),
            Outcome::Quarantined => tracing::warn!(item = %r.subject, "quarantined: {}", r.detail),
            Outcome::Unresolved => tracing::info!(item = %r.subject, "unresolved: {}", r.detail),
            Outcome::Skipped => tracing::debug!(item = %r.subject, "skipped: {}", r.detail),
            Outcome::Deferred => tracing::info!(item = %r.subject, "deferred: {}", r.detail),
            Outcome::Stored | Outcome::Unchanged => {
                tracing::debug!(item = %r.subject, location = r.location.as_deref().unwrap_or(""), "{}", r.outcome.as_str())
            }
        }
        self.counts[r.outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn remembered(&self, r: Report) {
        self.count_only(&r);
        self.keep_report(r);
    }

    pub(super) fn item(&self, w: &Work, outcome: Outcome, detail: impl Into<String>) {
        let r =
            Report { subject: w.item.id.clone(), outcome, detail: detail.into(), patient_guid: None, location: None };
        self.record_work(w, r);
    }

    /// Records the outcome of `w` (and whether its page must be scanned
    /// again).
    pub(super) fn record_work(&self, w: &Work, r: Report) {
        if !super::resume::settled(r.outcome) {
            self.pages.lock().unwrap().unsettled(w.page);
        }
        self.record(r, w.fingerprint.as_deref());
    }

    pub(super) fn error(&self, e: String) {
        tracing::error!("{e}");
        self.errors.lock().unwrap().push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: usize) -> Report {
        Report {
            subject: format!("P_1/0000_{n}.dcm"),
            outcome: Outcome::Stored,
            detail: String::new(),
            patient_guid: None,
            location: None,
        }
    }

    #[test]
    fn only_a_keeping_summary_holds_reports() {
        let counting = Summary::default();
        let keeping = Summary::keeping_reports();
        for n in 0..1000 {
            counting.record(report(n), None);
            keeping.record(report(n), None);
        }
        assert_eq!((counting.count(Outcome::Stored), counting.reports().len()), (1000, 0));
        assert_eq!((keeping.count(Outcome::Stored), keeping.reports().len()), (1000, 1000));
        assert_eq!(keeping.report("P_1/0000_7.dcm").unwrap().outcome, Outcome::Stored);
    }
}
