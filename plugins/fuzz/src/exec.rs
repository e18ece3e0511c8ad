//! Running one input with every failure caught in-process.
//!
//! The target runs on a worker thread with a known stack (so "deep
//! recursion" means the same thing on every machine), under the
//! allocation budget of [`crate::alloc`], inside `catch_unwind`, with a
//! deadline. A panic comes back as [`Outcome::Panic`] with its location
//! (and, the first time a location is seen, a backtrace); an allocation
//! over budget parks the worker, which is abandoned and replaced; a worker
//! past its deadline is abandoned too (and the caller should restart the
//! process, since it is still burning a core). A stack overflow cannot be
//! caught by anything in-process: it aborts, and the supervisor in `main`
//! finds the culprit in `current.dcm`.
use std::backtrace::Backtrace;
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use crate::alloc::{self, Guard, OverBudget};
use crate::target::Target;

/// How an input went.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The target accepted the input.
    Accepted,
    /// The target refused it with an error: fine.
    Rejected(String),
    Panic {
        message: String,
        location: String,
        backtrace: Option<String>,
    },
    OverBudget(OverBudget),
    /// Still running at the deadline.
    Hang,
}

impl Outcome {
    pub fn is_finding(&self) -> bool {
        matches!(self, Outcome::Panic { .. } | Outcome::OverBudget(_) | Outcome::Hang)
    }
}

/// One run of one input.
#[derive(Debug, Clone)]
pub struct Run {
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Most bytes the input had allocated at once (up to the budget).
    pub peak: usize,
}

/// Limits for every input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub budget: usize,
    pub stack: usize,
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { budget: 512 << 20, stack: 8 << 20, timeout: Duration::from_secs(10) }
    }
}

type Job = Box<dyn FnOnce() -> Result<(), String> + Send>;

struct Done {
    result: Result<Result<(), String>, ()>,
    elapsed: Duration,
    peak: usize,
}

struct Worker {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

/// The last panic on a worker, as the hook saw it.
static PANIC: Mutex<Option<(String, String, Option<Backtrace>)>> = Mutex::new(None);
/// One input at a time in the whole process: the allocator's budget is
/// process-wide (tests run in parallel threads).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Panic locations already seen (a backtrace is taken once per location).
static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static HOOK: Once = Once::new();
const WORKER: &str = "fuzz-target";

fn install_hook() {
    HOOK.call_once(|| {
        // Quiet for the worker (its panics are findings), as usual elsewhere.
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if thread::current().name() != Some(WORKER) {
                return default(info);
            }
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                s.to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(non-string panic payload)".to_string()
            };
            let location = info.location().map_or_else(|| "unknown location".to_string(), |l| l.to_string());
            let new =
                SEEN.lock().map(|mut s| s.get_or_insert_with(HashSet::new).insert(location.clone())).unwrap_or(false);
            // Captured here, resolved (the slow part) by the runner.
            let backtrace = new.then(Backtrace::force_capture);
            if let Ok(mut p) = PANIC.lock() {
                *p = Some((message, location, backtrace));
            }
        }));
    });
}

/// Runs inputs one at a time on a replaceable worker thread.
pub struct Executor {
    limits: Limits,
    worker: Option<Worker>,
    /// Workers given up on (over budget or hung).
    pub abandoned: usize,
    /// What abandoned workers still hold, roughly.
    pub abandoned_bytes: usize,
}

impl Executor {
    pub fn new(limits: Limits) -> Executor {
        install_hook();
        Executor { limits, worker: None, abandoned: 0, abandoned_bytes: 0 }
    }

    fn spawn(&self) -> Worker {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let budget = self.limits.budget;
        // Detached: a parked or hung worker is never joined.
        let _ = thread::Builder::new()
            .name(WORKER.into())
            .stack_size(self.limits.stack)
            .spawn(move || {
                for job in job_rx {
                    let guard = Guard::start(budget);
                    let started = Instant::now();
                    let result = panic::catch_unwind(AssertUnwindSafe(job)).map_err(drop);
                    let elapsed = started.elapsed();
                    let peak = guard.peak();
                    drop(guard);
                    if done_tx.send(Done { result, elapsed, peak }).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the fuzz worker thread");
        Worker { jobs, done }
    }

    /// Runs `target` on `input`.
    pub fn run(&mut self, target: Target, input: Arc<Vec<u8>>) -> Run {
        self.run_fn(Box::new(move || target.run(&input)))
    }

    /// Runs any function the way [`Executor::run`] runs a target.
    pub fn run_fn(&mut self, job: Job) -> Run {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let worker = match self.worker.take() {
            Some(w) => w,
            None => self.spawn(),
        };
        let base = alloc::live();
        let started = Instant::now();
        if worker.jobs.send(job).is_err() {
            return Run { outcome: died(), elapsed: Duration::ZERO, peak: 0 };
        }
        // Poll quickly at first (most inputs take microseconds), then calmly.
        let mut wait = Duration::from_micros(200);
        loop {
            match worker.done.recv_timeout(wait) {
                Ok(done) => {
                    self.worker = Some(worker);
                    let outcome = match done.result {
                        Ok(Ok(())) => Outcome::Accepted,
                        Ok(Err(e)) => Outcome::Rejected(e),
                        Err(()) => {
                            let (message, location, backtrace) = PANIC
                                .lock()
                                .ok()
                                .and_then(|mut p| p.take())
                                .unwrap_or_else(|| ("(no message)".into(), "unknown location".into(), None));
                            Outcome::Panic { message, location, backtrace: backtrace.map(|b| b.to_string()) }
                        }
                    };
                    return Run { outcome, elapsed: done.elapsed, peak: done.peak };
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Run { outcome: died(), elapsed: started.elapsed(), peak: 0 };
                }
                Err(RecvTimeoutError::Timeout) => {
                    if alloc::is_over() {
                        let elapsed = started.elapsed();
                        if let Some(over) = alloc::over_budget() {
                            // The worker is parked for good: leave it. Its
                            // peak is what it really had, not the refused ask.
                            self.abandoned += 1;
                            let held = over.live.saturating_sub(base);
                            self.abandoned_bytes += held;
                            return Run { outcome: Outcome::OverBudget(over), elapsed, peak: held };
                        }
                    }
                    if started.elapsed() > self.limits.timeout {
                        self.abandoned += 1;
                        return Run { outcome: Outcome::Hang, elapsed: started.elapsed(), peak: 0 };
                    }
                    wait = (wait * 2).min(Duration::from_millis(20));
                }
            }
        }
    }
}

fn died() -> Outcome {
    Outcome::Panic { message: "the worker thread died".into(), location: "harness".into(), backtrace: None }
}

/// Misbehaves on purpose, for the harness's own tests: `panic`, `alloc`
/// (1 GiB at once), `hang`, or `ok` (2 MiB, freed).
#[doc(hidden)]
#[inline(never)]
pub fn probe(what: &str) -> Result<(), String> {
    match what {
        "panic" => panic!("probe panics"),
        "alloc" => {
            let v = std::hint::black_box(vec![1u8; 1 << 30]);
            Err(format!("allocated {}", v.len()))
        }
        "hang" => loop {
            thread::sleep(Duration::from_secs(3600));
        },
        _ => {
            let v = std::hint::black_box(vec![1u8; 2 << 20]);
            drop(v);
            Ok(())
        }
    }
}
