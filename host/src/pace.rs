//! Being a good neighbour on the clinic's network: the upload rate cap
//! (`[store] max_rate`) and the upload windows (`[schedule] windows`).
//!
//! A clinic shares one small uplink with its phones and card terminals,
//! so how fast and when ferry uploads is the clinic's choice, not the
//! plugin's: both are enforced host-side, where the bytes move.
//!
//! - [`Throttle`] is one token bucket per pipeline (GCRA: a "theoretical
//!   arrival time" that each chunk pushes forward by its size over the
//!   rate). Every upload body of the store stage — S3 parts, folder
//!   copies, HTTP bodies from files — takes its chunks from it one at a
//!   time, so concurrent uploads interleave chunk by chunk and share the
//!   rate fairly instead of the first one starving the rest.
//! - [`Windows`] are daily spans of local wall-clock time. Outside them
//!   new uploads wait for the next pass (the item is *deferred*, not
//!   failed); a multipart upload in flight pauses at its next part
//!   boundary until a window opens.
//! - [`Held`] counts the time the host made a plugin call wait on
//!   purpose; that time does not count against the stage's
//!   `limits.timeout` (a 300 MB image at 20 Mbit/s takes two minutes,
//!   which is not the plugin's fault).
//!
//! Imports nothing from ferry: the config, the caps and the CLI all use
//! it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most a burst may run ahead of the rate: small, so that a cap is a
/// cap over seconds, not only over minutes.
const BURST: Duration = Duration::from_millis(100);

/// Time the host held a plugin call back (throttle, closed window),
/// shared between the call's state and the futures doing its I/O.
#[derive(Debug, Clone, Default)]
pub struct Held(Arc<AtomicU64>);

impl Held {
    pub fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The pipeline's upload rate cap: a token bucket over all uploads.
#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second.
    rate: u64,
    /// When the bytes reserved so far have all "left" at the rate.
    tat: Mutex<Option<Instant>>,
    /// Bytes that went through (for `ferry status` and tests).
    sent: AtomicU64,
}

impl Throttle {
    pub fn new(bytes_per_second: u64) -> Arc<Throttle> {
        Arc::new(Throttle { rate: bytes_per_second.max(1), tat: Mutex::new(None), sent: AtomicU64::new(0) })
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Reserves `n` bytes at `now`: how long to wait before sending them.
    pub fn reserve_at(&self, now: Instant, n: u64) -> Duration {
        let cost = Duration::from_secs_f64(n as f64 / self.rate as f64);
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        // an idle bucket does not bank more than one burst
        let start = match *tat {
            Some(t) if t > now => t,
            _ => now,
        };
        let after = start + cost;
        *tat = Some(after);
        self.sent.fetch_add(n, Ordering::Relaxed);
        after.saturating_duration_since(now).saturating_sub(BURST + cost.min(BURST))
    }
}

/// The pipeline's upload limits, as the store stage's context holds them
/// (none for the other stages); [`PaceLimits::for_call`] pairs them with a
/// call's count of time held.
#[derive(Debug, Clone, Default)]
pub struct PaceLimits {
    pub throttle: Option<Arc<Throttle>>,
    pub windows: Option<Arc<Windows>>,
}

impl PaceLimits {
    /// These limits, counting time held into `held` (one plugin call's).
    pub fn for_call(&self, held: &Held) -> Pace {
        Pace { throttle: self.throttle.clone(), windows: self.windows.clone(), held: held.clone() }
    }
}

/// What an upload is paced by: the limits and the call's count of time
/// held.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    pub throttle: Option<Arc<Throttle>>,
    pub windows: Option<Arc<Windows>>,
    pub held: Held,
}

impl Pace {
    /// No cap, no windows (uploads through `ferry serve`, tests).
    pub fn none() -> Pace {
        Pace::default()
    }

    pub fn is_throttled(&self) -> bool {
        self.throttle.is_some()
    }

    /// Reserves `n` bytes now: how long to wait before sending them
    /// (zero without a cap), counted as held.
    pub fn reserve(&self, n: u64) -> Duration {
        let Some(t) = &self.throttle else { return Duration::ZERO };
        let wait = t.reserve_at(Instant::now(), n);
        self.held.add(wait);
        wait
    }

    /// Waits until `n` more bytes may go (no-op without a cap).
    pub async fn take(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// At a part boundary: waits while the upload windows are closed.
    pub async fn window(&self) {
        let Some(w) = &self.windows else { return };
        loop {
            let Some(opens_in) = w.closed_now() else { return };
            // wall-clock time: look again at least every minute (the clock
            // may be set, summer time may begin)
            let nap = opens_in.min(Duration::from_secs(60));
            self.held.add(nap);
            tokio::time::sleep(nap).await;
        }
    }
}

const DAY: u32 = 24 * 3600;

/// `[schedule] windows`: when uploads may run, in local time.
///
/// ```toml
/// [schedule]
/// every = "5m"
/// windows = ["19:00-07:00", "12:00-13:00"]   # HH:MM[:SS]-HH:MM[:SS], local time; may cross midnight
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// `(start, end)` in seconds after local midnight; `end` may be less
    /// than `start` (the span crosses midnight); `end` may be 86400.
    spans: Vec<(u32, u32)>,
    text: Vec<String>,
}

impl Windows {
    /// Parses the spans as written; the message names the bad one.
    pub fn parse(list: &[String]) -> Result<Windows, String> {
        if list.is_empty() {
            return Err("give at least one window like \"19:00-07:00\", or leave `windows` out".into());
        }
        let mut spans = Vec::new();
        for w in list {
            let bad = |why: &str| format!("`{w}`: {why}; write HH:MM-HH:MM in local time, e.g. \"19:00-07:00\"");
            let (a, b) = w.split_once('-').ok_or_else(|| bad("no `-` between start and end"))?;
            let start = clock(a.trim()).ok_or_else(|| bad("the start is not a time of day"))?;
            let end = clock(b.trim()).ok_or_else(|| bad("the end is not a time of day"))?;
            if start == DAY {
                return Err(bad("a window cannot start at 24:00"));
            }
            if start == end {
                return Err(bad("start and end are the same (for all day write 00:00-24:00)"));
            }
            spans.push((start, end));
        }
        Ok(Windows { spans, text: list.to_vec() })
    }

    /// The spans as written, for messages: `19:00-07:00, 12:00-13:00`.
    pub fn describe(&self) -> String {
        self.text.join(", ")
    }

    /// Is a moment `secs` after local midnight inside a window?
    pub fn open_at(&self, secs: u32) -> bool {
        self.spans.iter().any(|&(s, e)| if s < e { secs >= s && secs < e } else { secs >= s || secs < e })
    }

    /// How long until a window opens, from `secs` after midnight (zero
    /// when one is open).
    pub fn opens_in_at(&self, secs: u32) -> Duration {
        if self.open_at(secs) {
            return Duration::ZERO;
        }
        let wait = self.spans.iter().map(|&(s, _)| (s + DAY - secs) % DAY).min().unwrap_or(0);
        Duration::from_secs(wait as u64)
    }

    /// `None` while a window is open; else how long until one opens.
    pub fn closed_now(&self) -> Option<Duration> {
        let secs = local_secs_now();
        (!self.open_at(secs)).then(|| self.opens_in_at(secs))
    }

    /// Why an upload waits now, or `None` if it may go. The same words
    /// for every item (`ferry status` counts them together).
    pub fn closed_reason(&self) -> Option<String> {
        self.closed_now().map(|_| {
            format!(
                "outside the upload windows ([schedule] windows = {}); stored by a pass inside one",
                self.describe()
            )
        })
    }
}

/// `HH:MM` or `HH:MM:SS` → seconds after midnight (`24:00` is the end of
/// the day).
fn clock(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(99)).collect();
    let (h, m, sec) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    if h == 24 && m == 0 && sec == 0 {
        return Some(DAY);
    }
    (h < 24 && m < 60 && sec < 60).then_some(h * 3600 + m * 60 + sec)
}

/// Seconds after local midnight, now (the machine's time zone: `TZ`, else
/// the system's).
pub fn local_secs_now() -> u32 {
    use chrono::Timelike;
    chrono::Local::now().num_seconds_from_midnight()
}

/// `"20Mbit/s"`, `"512kbit/s"`, `"2MB/s"`, `"1MiB/s"` → bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a rate like \"20Mbit/s\" or \"2MB/s\"");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let per_second: f64 = match unit.trim() {
        "bit/s" | "bps" => 1.0 / 8.0,
        "kbit/s" | "Kbit/s" | "kbps" => 1e3 / 8.0,
        "Mbit/s" | "Mbps" => 1e6 / 8.0,
        "Gbit/s" | "Gbps" => 1e9 / 8.0,
        "B/s" => 1.0,
        "kB/s" | "KB/s" => 1e3,
        "MB/s" => 1e6,
        "GB/s" => 1e9,
        "KiB/s" => 1024.0,
        "MiB/s" => (1u64 << 20) as f64,
        "GiB/s" => (1u64 << 30) as f64,
        u => return Err(format!("unknown rate unit `{u}` in `{s}` (use kbit/s, Mbit/s, Gbit/s, kB/s, MB/s or MiB/s)")),
    };
    let v = n * per_second;
    if !v.is_finite() || v < 1.0 {
        return Err(bad());
    }
    Ok(v.min(u64::MAX as f64) as u64)
}

/// Formats bytes per second the way the file writes it.
pub fn show_rate(b: u64) -> String {
    let bits = b as f64 * 8.0;
    if bits >= 1e9 {
        format!("{:.3}Gbit/s", bits / 1e9).replace(".000", "")
    } else if bits >= 1e6 {
        format!("{:.3}Mbit/s", bits / 1e6).replace(".000", "")
    } else {
        format!("{:.3}kbit/s", bits / 1e3).replace(".000", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(list: &[&str]) -> Windows {
        Windows::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn windows_cross_midnight_and_say_when_they_open() {
        let night = w(&["19:00-07:00"]);
        assert!(night.open_at(23 * 3600) && night.open_at(0) && night.open_at(6 * 3600 + 3599));
        assert!(!night.open_at(7 * 3600) && !night.open_at(12 * 3600) && night.open_at(19 * 3600));
        assert_eq!(night.opens_in_at(18 * 3600 + 59 * 60), Duration::from_secs(60));
        assert_eq!(night.opens_in_at(7 * 3600), Duration::from_secs(12 * 3600));
        let two = w(&["19:00-07:00", "12:00-13:00:30"]);
        assert!(two.open_at(13 * 3600 + 29) && !two.open_at(13 * 3600 + 30));
        assert_eq!(two.opens_in_at(8 * 3600), Duration::from_secs(4 * 3600));
        let all = w(&["00:00-24:00"]);
        assert!((0..DAY).step_by(601).all(|s| all.open_at(s)));
    }

    #[test]
    fn bad_windows_say_what_to_write() {
        for (bad, why) in [
            ("19:00", "no `-`"),
            ("7pm-7am", "not a time of day"),
            ("19:00-25:00", "not a time of day"),
            ("19:00-19:00", "the same"),
            ("24:00-07:00", "cannot start at 24:00"),
            ("9:00-17:00", "not a time of day"),
        ] {
            let e = Windows::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.contains(why) && e.contains("HH:MM-HH:MM"), "{bad}: {e}");
        }
        assert!(Windows::parse(&[]).is_err());
    }

    #[test]
    fn rates_read_as_written() {
        assert_eq!(parse_rate("20Mbit/s"), Ok(2_500_000));
        assert_eq!(parse_rate("512 kbit/s"), Ok(64_000));
        assert_eq!(parse_rate("2MB/s"), Ok(2_000_000));
        assert_eq!(parse_rate("1MiB/s"), Ok(1 << 20));
        assert_eq!(parse_rate("1.5Gbit/s"), Ok(187_500_000));
        assert!(parse_rate("20Mb").unwrap_err().contains("unknown rate unit"));
        assert!(parse_rate("fast").is_err() && parse_rate("0Mbit/s").is_err());
        assert_eq!(show_rate(2_500_000), "20Mbit/s");
    }

    #[test]
    fn the_bucket_spaces_chunks_at_the_rate_after_one_burst() {
        let t = Throttle::new(1_000_000);
        let now = Instant::now();
        // the first burst goes at once
        assert_eq!(t.reserve_at(now, 100_000), Duration::ZERO);
        // then each 100 kB waits its 100 ms behind the last
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(t.reserve_at(now, 100_000).as_millis());
        }
        assert_eq!(waits, vec![0, 100, 200, 300, 400]);
        // an idle bucket banks no more than the burst
        let later = now + Duration::from_secs(60);
        assert_eq!(t.reserve_at(later, 100_000), Duration::ZERO);
        assert_eq!(t.reserve_at(later, 100_000), Duration::ZERO);
        assert_eq!(t.reserve_at(later, 100_000).as_millis(), 100);
        assert_eq!(t.sent(), 900_000);
    }
}
