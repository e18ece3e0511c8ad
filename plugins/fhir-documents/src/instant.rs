//! ISO 8601 dates and instants as nanoseconds since the Unix epoch, so
//! `lastUpdated` values written with other precisions or time zones
//! compare correctly (`2024-01-01T10:00:00+01:00` = `2024-01-01T09:00:00Z`).
//! There is no clock in a guest, and none is needed: only the server's
//! stamps are compared.

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`: the day its range starts.
fn date_days(s: &str) -> Option<i64> {
    let mut parts = s.split('-');
    let y = num(parts.next()?, 4)? as i64;
    let m = match parts.next() {
        Some(p) => num(p, 2)?,
        None => 1,
    };
    let d = match parts.next() {
        Some(p) => num(p, 2)?,
        None => 1,
    };
    if parts.next().is_some() || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// An instant with a time zone (`2024-01-31T08:00:00.123Z`, seconds and
/// fraction optional, `Z` or `±hh:mm`): nanoseconds since the epoch.
pub fn parse_instant(s: &str) -> Option<i128> {
    let (date, rest) = s.split_once('T')?;
    if date.len() != 10 {
        return None;
    }
    let days = date_days(date)?;
    let (time, offset_s): (&str, i64) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let z = &rest[i + 1..];
        let (h, m) = z.split_once(':')?;
        let (h, m) = (num(h, 2)? as i64, num(m, 2)? as i64);
        if h > 14 || m > 59 {
            return None;
        }
        let sign = if rest.as_bytes()[i] == b'-' { -1 } else { 1 };
        (&rest[..i], sign * (h * 3600 + m * 60))
    };
    let (hms, frac) = match time.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (time, None),
    };
    let mut parts = hms.split(':');
    let h = num(parts.next()?, 2)?;
    let mi = num(parts.next()?, 2)?;
    let sec = match parts.next() {
        Some(p) => num(p, 2)?,
        None if frac.is_none() => 0,
        None => return None,
    };
    if parts.next().is_some() || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let nanos: i128 = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{f:0<9}").parse::<i128>().ok()?
        }
        Some(_) => return None,
    };
    let secs = days as i128 * 86_400 + (h * 3600 + mi * 60 + sec) as i128 - offset_s as i128;
    Some(secs * 1_000_000_000 + nanos)
}

/// A date (its first instant, UTC) or an instant.
pub fn parse_date_or_instant(s: &str) -> Option<i128> {
    if s.contains('T') {
        parse_instant(s)
    } else {
        Some(date_days(s)? as i128 * 86_400 * 1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_compare_across_zones_and_precisions() {
        let a = parse_instant("2024-01-01T10:00:00+01:00").unwrap();
        let b = parse_instant("2024-01-01T09:00:00Z").unwrap();
        let c = parse_instant("2024-01-01T09:00:00.000Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert!(parse_instant("2024-01-01T09:00:00.001Z").unwrap() > c);
        assert_eq!(parse_instant("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_date_or_instant("1970-01-02"), Some(86_400_000_000_000));
        assert_eq!(parse_date_or_instant("2024"), parse_date_or_instant("2024-01-01"));
        assert!(parse_instant("2024-02-30T00:00:00Z").is_none());
        assert!(parse_instant("2024-01-01T09:00:00").is_none(), "an instant needs a zone");
        assert!(parse_instant("2024-01-01T25:00:00Z").is_none());
        assert!(parse_instant("2024-01-01T09:00:00.Z").is_none());
        assert!(parse_date_or_instant("yesterday").is_none());
        assert_eq!(parse_instant("2024-02-29T00:00Z"), parse_date_or_instant("2024-02-29"));
    }
}
