//! Prometheus metrics of `ferry serve` at `/metrics` (OpenMetrics text).
//!
//! Why these: an operator watching a clinic wants to know that passes run
//! (`ferry_passes_total`, `ferry_pass_duration_seconds`,
//! `ferry_last_pass_timestamp_seconds`), what happens to items
//! (`ferry_items_total{outcome}`), whether anything waits
//! (`ferry_items_in_flight`, `ferry_ledger_items{state}` — parked items
//! are the retries still to come), whether the PMS is asked more than
//! needed (`ferry_resolver_cache_{hits,misses}_total`), how much goes up
//! (`ferry_stored_bytes_total`), whether previews fail
//! (`ferry_previews_total{outcome}`: a file refused once is answered from
//! the cache afterwards, `refused_cached`) and how the API is used
//! (`ferry_http_requests_total{route,method,status}`, durations). Item
//! counters are fed from each pass's [`Summary`] when the pass ends; the
//! in-flight gauge is sampled while it runs. Labels never carry a guid or
//! a name: routes are templates (`/api/v1/patients/{patientGuid}/images`).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::runner::{Outcome, Summary};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    /// `scheduled` or `job`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// The outcomes of `ferry_previews_total`.
pub const PREVIEW_OUTCOMES: [&str; 5] = ["rendered", "cached", "refused", "refused_cached", "unavailable"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    items: Family<OutcomeLabel, Counter>,
    scanned: Counter,
    passes: Family<KindLabel, Counter>,
    pass_duration: Histogram,
    pass_running: Gauge,
    last_pass: Gauge<f64, AtomicU64>,
    in_flight: Gauge,
    ledger_items: Family<StateLabel, Gauge>,
    cache_hits: Counter,
    cache_misses: Counter,
    stored_bytes: Counter,
    scan_errors: Counter,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabel>,
    previews: Family<OutcomeLabel, Counter>,
    /// Ledger states seen so far, so a state that empties goes to 0.
    known_states: Mutex<Vec<String>>,
}

fn pass_buckets() -> Histogram {
    // 0.5 s … ~4.5 h
    Histogram::new(exponential_buckets(0.5, 2.5, 12))
}

fn http_buckets() -> Histogram {
    // 0.5 ms … ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.7, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry");
        let items = Family::<OutcomeLabel, Counter>::default();
        registry.register("items", "Items by the outcome of the pass that handled them", items.clone());
        // every outcome shows from the start, at 0
        for o in Outcome::ALL {
            let _ = items.get_or_create(&OutcomeLabel { outcome: o.as_str() });
        }
        let scanned = Counter::default();
        registry.register("items_scanned", "Entries the source reported", scanned.clone());
        let passes = Family::<KindLabel, Counter>::default();
        registry.register("passes", "Finished pipeline passes, scheduled or for a sync job", passes.clone());
        for kind in ["scheduled", "job"] {
            let _ = passes.get_or_create(&KindLabel { kind });
        }
        let pass_duration = pass_buckets();
        registry.register("pass_duration_seconds", "How long passes take", pass_duration.clone());
        let pass_running = Gauge::default();
        registry.register("pass_running", "1 while a pass runs", pass_running.clone());
        let last_pass = Gauge::<f64, AtomicU64>::default();
        registry.register("last_pass_timestamp_seconds", "When the last pass finished (Unix time)", last_pass.clone());
        let in_flight = Gauge::default();
        registry.register(
            "items_in_flight",
            "Items scanned in the current pass without an outcome yet (queued or in a stage)",
            in_flight.clone(),
        );
        let ledger_items = Family::<StateLabel, Gauge>::default();
        registry.register(
            "ledger_items",
            "Items in the ledger by state after the last pass; unresolved, quarantined and failed ones are retried later",
            ledger_items.clone(),
        );
        let cache_hits = Counter::default();
        registry.register("resolver_cache_hits", "Patient keys answered from the resolution cache", cache_hits.clone());
        let cache_misses = Counter::default();
        registry.register("resolver_cache_misses", "Patient keys the resolver was asked", cache_misses.clone());
        let stored_bytes = Counter::default();
        registry.register("stored_bytes", "Bytes of image files written to the store", stored_bytes.clone());
        let scan_errors = Counter::default();
        registry.register("pass_errors", "Problems not tied to one item (the scan stopped, ...)", scan_errors.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by route, method and status", http_requests.clone());
        let http_duration = HistogramFamily::<RouteLabel>::new_with_constructor(http_buckets as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by route",
            http_duration.clone(),
        );
        let previews = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "previews",
            "Preview requests by outcome: rendered, cached, refused (the renderer refused the file or hit a limit), refused_cached, unavailable",
            previews.clone(),
        );
        for outcome in PREVIEW_OUTCOMES {
            let _ = previews.get_or_create(&OutcomeLabel { outcome });
        }
        Metrics {
            registry,
            previews,
            items,
            scanned,
            passes,
            pass_duration,
            pass_running,
            last_pass,
            in_flight,
            ledger_items,
            cache_hits,
            cache_misses,
            stored_bytes,
            scan_errors,
            http_requests,
            http_duration,
            known_states: Mutex::new(Vec::new()),
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn pass_started(&self) {
        self.pass_running.set(1);
        self.in_flight.set(0);
    }

    /// Samples the pass under way.
    pub fn pass_progress(&self, s: &Summary) {
        let done: u64 = Outcome::ALL.iter().map(|o| s.count(*o)).sum();
        self.in_flight.set(s.scanned().saturating_sub(done) as i64);
    }

    /// A pass ended: its counts, its duration, the bytes it stored.
    pub fn pass_finished(&self, kind: &'static str, s: &Summary, took: Duration, stored_bytes: u64) {
        for o in Outcome::ALL {
            self.items.get_or_create(&OutcomeLabel { outcome: o.as_str() }).inc_by(s.count(o));
        }
        self.scanned.inc_by(s.scanned());
        let (hits, misses) = s.cache_stats();
        self.cache_hits.inc_by(hits);
        self.cache_misses.inc_by(misses);
        self.stored_bytes.inc_by(stored_bytes);
        self.scan_errors.inc_by(s.errors().len() as u64);
        self.passes.get_or_create(&KindLabel { kind }).inc();
        self.pass_duration.observe(took.as_secs_f64());
        self.pass_running.set(0);
        self.in_flight.set(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_pass.set(now.as_secs_f64());
    }

    /// The ledger's items by state (after a pass).
    pub fn ledger_states(&self, by_state: &[(String, u64)]) {
        let mut known = self.known_states.lock().unwrap_or_else(|p| p.into_inner());
        for (state, _) in by_state {
            if !known.contains(state) {
                known.push(state.clone());
            }
        }
        for state in known.iter() {
            let n = by_state.iter().find(|(s, _)| s == state).map(|(_, n)| *n).unwrap_or(0);
            self.ledger_items.get_or_create(&StateLabel { state: state.clone() }).set(n as i64);
        }
    }

    /// One preview answered (`outcome` is one of [`PREVIEW_OUTCOMES`]).
    pub fn preview(&self, outcome: &'static str) {
        debug_assert!(PREVIEW_OUTCOMES.contains(&outcome), "{outcome}");
        self.previews.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    fn http(&self, route: String, method: String, status: u16, took: Duration) {
        self.http_duration.get_or_create(&RouteLabel { route: route.clone() }).observe(took.as_secs_f64());
        self.http_requests.get_or_create(&HttpLabels { route, method, status }).inc();
    }
}

/// The route template a response came from (set by [`tag_route`]).
#[derive(Clone)]
struct RouteTag(String);

/// Route layer: remembers the matched route template on the response, for
/// [`track`] (which runs outside routing, where it is not known yet).
pub async fn tag_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let mut res = next.run(req).await;
    if let Some(route) = route {
        res.extensions_mut().insert(RouteTag(route));
    }
    res
}

/// Middleware: counts every request by its route template.
pub async fn track(State(metrics): State<std::sync::Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let res = next.run(req).await;
    // unmatched paths share one label, so scanners cannot grow the family
    let route = res.extensions().get::<RouteTag>().map(|r| r.0.clone()).unwrap_or_else(|| "unmatched".into());
    let method = if matches!(method.as_str(), "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH") {
        method
    } else {
        "other".into()
    };
    metrics.http(route, method, res.status().as_u16(), started.elapsed());
    res
}

/// `GET /metrics`.
pub async fn handler(State(metrics): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        metrics.encode(),
    )
}
