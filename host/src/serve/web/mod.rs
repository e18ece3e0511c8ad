//! The web page ferry serves at `/`: find a patient, look at the X-rays,
//! download the DICOM, read the synchronization log, ask for a re-sync.
//!
//! Plain HTML, CSS and vanilla JavaScript embedded in the binary
//! (`include_str!`): no build step, nothing to install, nothing fetched
//! from elsewhere. The page itself is public; everything it shows comes
//! from `/api/v1` with the bearer token the user pastes (kept in
//! `sessionStorage`, so it is gone when the tab closes). Images are
//! fetched with the token and shown through object URLs, since an `<img>`
//! cannot send an `Authorization` header.
//!
//! | path | what |
//! |---|---|
//! | `/` | `index.html` |
//! | `/assets/app.js`, `/assets/app.css`, `/assets/favicon.svg` | the rest |
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles
//! and connections only from this origin, images and frames also from
//! `blob:` — the page shows a document it fetched with the token as an
//! object URL, PDFs in a frame), and
//! an `ETag` so a browser revalidates instead of downloading again.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

const INDEX: Asset = Asset { body: include_bytes!("index.html"), content_type: "text/html; charset=utf-8" };
const APP_JS: Asset = Asset { body: include_bytes!("app.js"), content_type: "text/javascript; charset=utf-8" };
const APP_CSS: Asset = Asset { body: include_bytes!("app.css"), content_type: "text/css; charset=utf-8" };
const FAVICON: Asset = Asset { body: include_bytes!("favicon.svg"), content_type: "image/svg+xml" };

/// What the page may load and where it may connect.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
                       frame-src blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
                       frame-ancestors 'none'";

/// The page's routes, without state; merged into the service's router.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, 0, &h) }))
        .route("/index.html", get(|h: HeaderMap| async move { serve(&INDEX, 0, &h) }))
        .route("/assets/app.js", get(|h: HeaderMap| async move { serve(&APP_JS, 1, &h) }))
        .route("/assets/app.css", get(|h: HeaderMap| async move { serve(&APP_CSS, 2, &h) }))
        .route("/assets/favicon.svg", get(|h: HeaderMap| async move { serve(&FAVICON, 3, &h) }))
        .route("/favicon.ico", get(|h: HeaderMap| async move { serve(&FAVICON, 3, &h) }))
}

/// `"<16 hex of sha256>"`, computed once per asset.
fn etag(slot: usize, asset: &Asset) -> &'static str {
    static TAGS: [OnceLock<String>; 4] = [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    TAGS[slot].get_or_init(|| format!("\"{}\"", &hex::encode(Sha256::digest(asset.body))[..16]))
}

fn serve(asset: &'static Asset, slot: usize, req: &HeaderMap) -> Response {
    let tag = etag(slot, asset);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == tag));
    let mut res = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = res.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    h.insert(header::ETAG, HeaderValue::from_static(tag));
    // always revalidate: the binary (and so the page) may change on upgrade
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_only_embedded_assets() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for link in ["/assets/app.js", "/assets/app.css", "/assets/favicon.svg"] {
            assert!(html.contains(link), "index.html does not link {link}");
        }
        // nothing from elsewhere, no inline script (the CSP forbids it)
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains(" style=\""), "inline style");
        let handler = html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let word: String = rest.chars().take_while(|c| c.is_ascii_lowercase()).collect();
            !word.is_empty() && rest[word.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
    }

    #[test]
    fn etags_differ_per_asset() {
        let tags = [etag(0, &INDEX), etag(1, &APP_JS), etag(2, &APP_CSS), etag(3, &FAVICON)];
        for (i, a) in tags.iter().enumerate() {
            assert!(a.starts_with('"') && a.len() == 18);
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn not_modified_when_the_tag_matches() {
        let mut h = HeaderMap::new();
        let res = serve(&APP_JS, 1, &h);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert!(res.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        let tag = res.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve(&APP_JS, 1, &h).status(), StatusCode::NOT_MODIFIED);
    }
}
