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

/// How [`serve_object`] labels what it sends.
pub(super) struct ObjectAnswer<'a> {
    pub content_type: HeaderValue,
    pub disposition: HeaderValue,
    /// The problem when the object is not there.
    pub missing: &'a (dyn Fn() -> Problem + Sync),
}

/// An object of the store as a download: streamed, one `Range` (RFC
/// 9110: a malformed or multi-range header is ignored and the whole file
/// sent), `If-Range` and `If-None-Match` against its SHA-256 ETag.
pub(super) async fn serve_object(
    state: &AppState,
    headers: &HeaderMap,
    key: &str,
    answer: ObjectAnswer<'_>,
) -> ApiResult<Response> {
    let mut asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
    // the object's facts, when a decision about the range needs them
    let mut head = None;
    if asked.is_some() {
        if let Some(if_range) = headers.get(header::IF_RANGE) {
            let info = state.store.head(key).await.map_err(Problem::store)?.ok_or_else(answer.missing)?;
            let current = info.sha256.as_ref().map(|s| format!("\"{s}\""));
            if !if_range_allows(if_range, current.as_deref()) {
                asked = None;
            }
            head = Some(info);
        }
    }
    let range: Option<ByteRange> = match asked {
        None => None,
        Some(RangeAsk::From(first, last)) => Some((first, last)),
        Some(RangeAsk::Suffix(n)) => {
            let total = match head {
                Some(info) => info.size,
                None => state.store.head(key).await.map_err(Problem::store)?.ok_or_else(answer.missing)?.size,
            };
            if n == 0 || total == 0 {
                return Ok(unsatisfiable(Some(total), "an empty suffix range selects nothing".into()));
            }
            Some((total.saturating_sub(n), None))
        }
    };
    let (info, total, body) = state.store.get(key, range).await.map_err(Problem::store)?.ok_or_else(answer.missing)?;
    let etag = info.sha256.as_ref().map(|s| format!("\"{s}\""));
    if range.is_none() {
        if let Some(etag) = &etag {
            if etag_matches(headers, etag) {
                return Ok(not_modified(etag, DOWNLOAD_CACHE));
            }
        }
    }
    let (offset, len) = range_span(range, total);
    let mut res = if let Some((first, _)) = range {
        if len == 0 {
            return Ok(unsatisfiable(
                Some(total),
                format!("the range starts at byte {first}; the file has {total} bytes"),
            ));
        }
        let mut res = Response::new(Body::from_stream(body));
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = format!("bytes {offset}-{}/{total}", offset + len - 1);
        res.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ascii"));
        res
    } else {
        Response::new(Body::from_stream(body))
    };
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, answer.content_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(DOWNLOAD_CACHE));
    h.insert(header::CONTENT_DISPOSITION, answer.disposition);
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, etag);
    }
    Ok(res)
}
