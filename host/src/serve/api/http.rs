//! HTTP details shared by the handlers: byte ranges and `If-Range`
//! (RFC 9110 §13–14), ETags and `If-None-Match`, `Content-Disposition`.

use super::*;

pub(super) fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag))
}

pub(super) fn not_modified(etag: &str, cache_control: &'static str) -> Response {
    let mut res = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    res
}

/// One byte range as asked (RFC 9110 §14.1.2); suffix ranges need the
/// size to resolve.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RangeAsk {
    From(u64, Option<u64>),
    Suffix(u64),
}

/// The single range of `bytes=a-b`, `bytes=a-` or `bytes=-n`.
///
/// `None` means "ignore the header and send the whole file" (RFC 9110
/// §14.2: a server may ignore Range, and must for a range-set it cannot
/// parse): other units, syntax errors, `last < first`, and several ranges
/// (answered whole rather than as `multipart/byteranges`: viewers ask for
/// one range at a time, and a whole DICOM file is always a correct answer).
pub(super) fn parse_range(value: &str) -> Option<RangeAsk> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let num = |s: &str| {
        let s = s.trim();
        // 1*DIGIT only: no signs, no spaces inside, at most u64
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeAsk::Suffix(num(b)?)),
        (false, true) => Some(RangeAsk::From(num(a)?, None)),
        (false, false) => {
            let (first, last) = (num(a)?, num(b)?);
            (last >= first).then_some(RangeAsk::From(first, Some(last)))
        }
    }
}

/// `If-Range` (RFC 9110 §13.1.5): the range is served only if the
/// validator is a strong entity tag equal to the current one. Dates are
/// never honoured (these responses carry no Last-Modified), weak tags
/// never match: in both cases the whole file is sent.
pub(super) fn if_range_allows(if_range: &HeaderValue, current_etag: Option<&str>) -> bool {
    let Ok(v) = if_range.to_str() else { return false };
    let v = v.trim();
    v.starts_with('"') && current_etag == Some(v)
}

pub(super) fn unsatisfiable(total: Option<u64>, detail: String) -> Response {
    let mut res = Problem::new(StatusCode::RANGE_NOT_SATISFIABLE, "range-not-satisfiable", detail).into_response();
    if let Some(total) = total {
        res.headers_mut()
            .insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{total}")).expect("ascii"));
    }
    res
}

/// `attachment; filename="Zahn 16.dcm"; filename*=UTF-8''Zahn%2016.dcm`
pub(super) fn disposition(name: &str) -> HeaderValue {
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{}", seg(name)))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}
