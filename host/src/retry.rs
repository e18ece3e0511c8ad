//! One backoff policy for everything ferry tries again: HTTP requests
//! within a plugin call (`caps::http`), plugin calls within a pass
//! (`runner::retry`) and parked items across passes (the ledger's
//! `next_attempt_at`). Doubling waits from a base, capped; retries inside a
//! pass add full jitter so that several stages (or clinics) hitting the
//! same server do not retry in step; parking stays deterministic so that
//! `ferry status` can say when an item is due.

use std::time::{Duration, SystemTime};

/// Waits that double from `base` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The wait after `attempts` failed attempts: base·2^(attempts−1),
    /// capped at `max` (`attempts` 0 counts as 1).
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// [`delay`](Self::delay) with full jitter: uniform in `0..=delay`.
    pub fn jittered(&self, attempts: u32) -> Duration {
        self.delay(attempts).mul_f64(rand::random::<f64>())
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an
/// HTTP-date (a date in the past means now). `None` when it is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_and_are_capped() {
        let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let waits: Vec<u128> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(waits, [200, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            Backoff::new(Duration::from_secs(60), Duration::from_secs(3600)).delay(u32::MAX),
            Duration::from_secs(3600)
        );
        for n in 1..8 {
            assert!(b.jittered(n) <= b.delay(n));
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 10:00:00 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("Tue, 01 Dec 2026 10:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Tue, 01 Dec 2026 09:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
