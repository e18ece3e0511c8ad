//! A counting global allocator with a per-input budget.
//!
//! Why: the bugs issue 7 is about are as much "a 1.3 KB file allocates
//! 4 GB" as "a file panics", and the process must see them without dying
//! of them. Every allocation goes through [`Counting`], which keeps the
//! live byte count and its peak. While a target runs, the thread running it
//! is *guarded* ([`Guard`]): an allocation that would take the live count
//! past the input's limit is never made. Returning null would abort the
//! whole process (`handle_alloc_error`), and unwinding out of an allocator
//! is undefined behaviour, so the allocator records the request
//! ([`over_budget`]) and parks the thread for good instead: the call never
//! returns, nothing is corrupted, and the runner gives up on that thread
//! and starts another (see `exec`). What the parked thread had allocated
//! stays allocated, bounded by the budget; the runner restarts the process
//! once too much is held that way.
use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// The allocator: [`System`] plus accounting.
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Live bytes a guarded thread may not exceed.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Set by the allocation that was refused.
static OVER: AtomicBool = AtomicBool::new(false);
static OVER_REQUEST: AtomicUsize = AtomicUsize::new(0);
static OVER_LIVE: AtomicUsize = AtomicUsize::new(0);
/// Where the refused allocation came from, captured before parking.
static OVER_BACKTRACE: Mutex<Option<Backtrace>> = Mutex::new(None);

thread_local! {
    /// Is this thread running a target under the budget?
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

fn guarded() -> bool {
    GUARDED.try_with(Cell::get).unwrap_or(false)
}

/// Accounts for `size` more bytes; parks the thread if it is guarded and
/// over the limit.
fn grow(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    if live > LIMIT.load(Relaxed) && guarded() {
        LIVE.fetch_sub(size, Relaxed);
        OVER_REQUEST.store(size, Relaxed);
        OVER_LIVE.store(live - size, Relaxed);
        // From here on this thread allocates freely (the backtrace needs
        // memory) and never returns to the target. The backtrace is only
        // captured here; the runner resolves its symbols.
        let _ = GUARDED.try_with(|g| g.set(false));
        OVER.store(true, Relaxed);
        let trace = Backtrace::force_capture();
        if let Ok(mut slot) = OVER_BACKTRACE.lock() {
            *slot = Some(trace);
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    PEAK.fetch_max(live, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            // The old block is still there: undo.
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Relaxed);
            }
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        p
    }
}

/// Bytes allocated and not freed, process-wide.
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// An allocation refused for being over budget.
#[derive(Debug, Clone)]
pub struct OverBudget {
    /// Bytes asked for.
    pub request: usize,
    /// Live bytes at the time, the input's share of them included.
    pub live: usize,
    pub backtrace: String,
}

/// Has a guarded thread been refused an allocation (not yet collected)?
pub fn is_over() -> bool {
    OVER.load(Relaxed)
}

/// The refused allocation, once the parked thread has recorded it; clears it.
pub fn over_budget() -> Option<OverBudget> {
    if !OVER.load(Relaxed) {
        return None;
    }
    // The flag goes up before the backtrace is taken: wait for it (briefly;
    // a thread that cannot take one still counts as over budget).
    let mut backtrace = String::new();
    for _ in 0..400 {
        if let Some(t) = OVER_BACKTRACE.lock().ok().and_then(|mut s| s.take()) {
            backtrace = t.to_string();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    OVER.store(false, Relaxed);
    Some(OverBudget { request: OVER_REQUEST.load(Relaxed), live: OVER_LIVE.load(Relaxed), backtrace })
}

/// Marks the current thread as running one input with `budget` bytes to
/// spend beyond what is live now; measures its peak. Only one guard at a
/// time (the runner has one worker).
pub struct Guard {
    base: usize,
}

impl Guard {
    pub fn start(budget: usize) -> Guard {
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        LIMIT.store(base.saturating_add(budget), Relaxed);
        GUARDED.with(|g| g.set(true));
        Guard { base }
    }

    /// The most this input had allocated at once, beyond the base.
    pub fn peak(&self) -> usize {
        PEAK.load(Relaxed).saturating_sub(self.base)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = GUARDED.try_with(|g| g.set(false));
        LIMIT.store(usize::MAX, Relaxed);
    }
}
