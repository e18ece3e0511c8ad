//! Values with units in the pipeline file — sizes, durations, secrets, the
//! per-call limits made of them — and the bounds every number is checked
//! against. The bottom of the configuration: the pipeline file
//! ([`crate::config`]) and the schemas that live next to their code
//! (`caps::*::config`, `serve::config`) all use it, and it uses nothing.

use std::time::Duration;

use serde::Deserialize;

/// A problem with one key: `(key, message)`. Schemas next to their code
/// return these; [`crate::config`] collects them with the file's name.
pub type Problem = (String, String);

/// The bounds of every number a pipeline file takes, with why.
///
/// | key | bounds |
/// |---|---|
/// | `pipeline.queue_depth` | 1 – 4096 items between two stages |
/// | `pipeline.retry_after` | 100ms – 24h |
/// | `pipeline.retry_max` | retry_after – 720h (30 days) |
/// | `schedule.every` | 1s – 168h |
/// | `store.max_rate` | 64kbit/s – 100Gbit/s |
/// | `<stage>.concurrency` | 1 – 64 instances (each may use `limits.memory`) |
/// | `<stage>.retries` | 0 – 10 |
/// | `<stage>.limits.memory` | 1MiB – 4GiB (a wasm32 memory cannot grow further) |
/// | `<stage>.limits.timeout` | up to 1h per call |
/// | `source.min_age` | 0s – 24h |
/// | `resolver.cache.ttl`, `not_found_ttl` | up to 720h |
/// | S3 `multipart_threshold`, `part_size` | 5MiB – 5GiB (S3's part limits) |
/// | S3 `max_attempts` | 1 – 20 |
/// | mssql `pool` | 1 – 64; `connect_timeout` up to 5m |
/// | `serve.preview.concurrency` | 1 – 64 renders at once |
/// | `serve.preview.max_file` | 1MiB – 4GiB |
/// | `pipeline.spool_max` | 1MiB – 64GiB per response body |
pub mod bounds {
    use std::time::Duration;

    pub const QUEUE_DEPTH: (usize, usize) = (1, 4096);
    pub const RETRY_AFTER: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(24 * 3600));
    pub const RETRY_MAX: Duration = Duration::from_secs(720 * 3600);
    pub const EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(168 * 3600));
    pub const CONCURRENCY: (usize, usize) = (1, 64);
    pub const RETRIES: u32 = 10;
    pub const MEMORY: (u64, u64) = (1 << 20, 4 << 30);
    pub const TIMEOUT: Duration = Duration::from_secs(3600);
    pub const MIN_AGE: Duration = Duration::from_secs(24 * 3600);
    pub const CACHE_TTL: Duration = Duration::from_secs(720 * 3600);
    pub const S3_PART: (u64, u64) = (5 << 20, 5 << 30);
    pub const S3_ATTEMPTS: (u32, u32) = (1, 20);
    pub const POOL: (usize, usize) = (1, 64);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
    pub const PREVIEW_FILE: (u64, u64) = (1 << 20, 4 << 30);
    /// `[serve.records] max_upload`.
    pub const UPLOAD: (u64, u64) = (1 << 10, 4 << 30);
    pub const SPOOL_MAX: (u64, u64) = (1 << 20, 64 << 30);
    /// `[store] max_rate`, bytes per second.
    pub const MAX_RATE: (u64, u64) = (8_000, 12_500_000_000);
}

/// `Err((key, message))` unless `lo <= v <= hi`; `show` formats values.
pub fn within<T: PartialOrd + Copy>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
    show: impl Fn(T) -> String,
    what: &str,
) -> Result<(), (String, String)> {
    if v < lo {
        Err((key.to_owned(), format!("{} is under the lower bound of {}{what}", show(v), show(lo))))
    } else if v > hi {
        Err((key.to_owned(), format!("{} is over the upper bound of {}{what}", show(v), show(hi))))
    } else {
        Ok(())
    }
}

pub fn show_n<T: std::fmt::Display>(v: T) -> String {
    v.to_string()
}

pub fn show_d(d: Duration) -> String {
    crate::util::humantime(d)
}

pub fn show_b(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}GiB", b >> 30)
    } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{}MiB", b >> 20)
    } else {
        format!("{b} bytes")
    }
}

/// A string that never shows in logs or `Debug` output.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Per-call limits a plugin instance runs under.
///
/// ```toml
/// limits = { memory = "256MiB", timeout = "60s" }
/// ```
/// `memory` caps the instance's linear memory; `timeout` is the deadline of
/// one call (one page of a scan, one item, one batch), host I/O included.
/// A call over either limit is stopped, its instance discarded, and the
/// item fails with an error saying which limit it hit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_memory", deserialize_with = "de_bytes")]
    pub memory: u64,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory: default_memory(), timeout: default_timeout() }
    }
}

fn default_memory() -> u64 {
    256 << 20
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The numbers every stage section (and `[serve.preview]`) has.
pub fn check_stage_numbers(
    sec: &str,
    concurrency: usize,
    retries: u32,
    limits: &Limits,
) -> Result<(), (String, String)> {
    let (lo, hi) = bounds::CONCURRENCY;
    within(&format!("{sec}.concurrency"), concurrency, lo, hi, show_n, " instances (each may use limits.memory)")?;
    within(&format!("{sec}.retries"), retries, 0, bounds::RETRIES, show_n, " extra attempts")?;
    let (lo, hi) = bounds::MEMORY;
    within(&format!("{sec}.limits.memory"), limits.memory, lo, hi, show_b, "")?;
    within(&format!("{sec}.limits.timeout"), limits.timeout, Duration::ZERO, bounds::TIMEOUT, show_d, " per call")
}

pub fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_bytes(&s).map_err(serde::de::Error::custom)
}

pub fn de_opt_duration_or_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration_or_zero(&s).map(Some).map_err(serde::de::Error::custom)
}

pub fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// `"64MiB"`, `"1GiB"`, `"512KiB"`, `"1000000"` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size like \"256MiB\""))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("unknown size unit `{u}` in `{s}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("`{s}` is too large"))
}

/// `"500ms"`, `"30s"`, `"5m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be more than zero"));
    }
    Ok(d)
}

/// Like [`parse_duration`], for settings where `"0s"` means "off".
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like \"30s\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(|| format!("`{s}` is too long"))?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(|| format!("`{s}` is too long"))?),
        u => return Err(format!("unknown duration unit `{u}` in `{s}` (use ms, s, m or h)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("64 parsecs").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration_or_zero("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_zero("10s").unwrap(), Duration::from_secs(10));
        assert!(parse_duration_or_zero("0parsecs").is_err());
    }
}
