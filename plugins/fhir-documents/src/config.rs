//! The `[source.config]` table and its validation.
use ferry_plugin_sdk::types::StageError;
use ferry_plugin_sdk::{permanent, serde};

use crate::instant;

/// The stage's `[config]` table, as written.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub base_url: String,
    pub page_size: Option<u32>,
    pub since: Option<String>,
    pub types: Option<Vec<String>>,
    pub status: Option<String>,
    pub server_filters: Option<bool>,
    pub identifier_systems: Option<Vec<String>>,
    pub content_types: Option<Vec<String>>,
    pub timeout_ms: Option<u32>,
}

pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest `page_size`: each scan call downloads the attachments of its page.
pub const MAX_PAGE_SIZE: u32 = 200;
pub const DEFAULT_STATUS: &str = "current";
pub const STATUSES: [&str; 3] = ["current", "superseded", "entered-in-error"];
pub const DEFAULT_CONTENT_TYPES: [&str; 5] = ["application/pdf", "image/jpeg", "image/png", "image/tiff", "text/plain"];
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
pub const MAX_TIMEOUT_MS: u32 = 600_000;
/// Most entries of `types`, `identifier_systems` and `content_types`.
pub const MAX_LIST: usize = 64;
pub const LOINC: &str = "http://loinc.org";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The FHIR base, without a trailing `/`.
    pub base_url: String,
    /// `scheme://host[:port]` of the base, for origin-relative urls.
    pub origin: String,
    /// `host[:port]`, for messages and grants.
    pub api: String,
    pub page_size: u32,
    /// As written (a date or an instant) and as nanoseconds since the epoch.
    pub since: Option<(String, i128)>,
    /// LOINC codes; empty: every type.
    pub types: Vec<String>,
    pub status: String,
    pub server_filters: bool,
    /// Allowed `Patient.identifier` systems; none: all.
    pub identifier_systems: Option<Vec<String>>,
    /// Lower-case MIME types, best first.
    pub content_types: Vec<String>,
    pub timeout_ms: u32,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> StageError {
    permanent(format!("invalid [source.config] {key}: {why}"))
}

/// Checks an `http(s)` base URL; returns `(origin, host[:port])`.
pub fn check_url(url: &str) -> Result<(String, String), String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains spaces or control characters".into());
    }
    if url.contains(['?', '#']) {
        return Err("must not have a query or fragment (it is the FHIR base)".into());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("must not contain credentials (the pipeline's http grant adds them host-side)".into());
    }
    let authority = authority.to_ascii_lowercase();
    Ok((format!("{scheme}://{authority}"), authority))
}

/// `123-4`: the shape of a LOINC code.
pub fn is_loinc_code(code: &str) -> bool {
    match code.split_once('-') {
        Some((num, check)) => {
            (1..=7).contains(&num.len())
                && num.bytes().all(|b| b.is_ascii_digit())
                && check.len() == 1
                && check.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// `type/subtype`, lower-cased, without parameters.
pub fn mime_base(raw: &str) -> String {
    raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn list(key: &str, v: Option<Vec<String>>) -> Result<Option<Vec<String>>, StageError> {
    let Some(v) = v else { return Ok(None) };
    if v.is_empty() {
        return Err(invalid(key, "is empty (leave it out instead)"));
    }
    if v.len() > MAX_LIST {
        return Err(invalid(key, format!("has {} entries; at most {MAX_LIST}", v.len())));
    }
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for s in v {
        let s = s.trim().to_string();
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) || s.contains('|') {
            return Err(invalid(key, format!("{s:?} is empty, too long or has spaces or `|`")));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(Some(out))
}

impl Settings {
    pub fn new(c: Config) -> Result<Settings, StageError> {
        let base_url = c.base_url.trim().trim_end_matches('/').to_string();
        let (origin, api) = check_url(&base_url).map_err(|why| invalid("base_url", why))?;
        let page_size = c.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(invalid(
                "page_size",
                format!(
                    "{page_size} is outside 1..={MAX_PAGE_SIZE} (each scan call downloads the attachments of its page)"
                ),
            ));
        }
        let since = match c.since {
            None => None,
            Some(s) => {
                let s = s.trim().to_string();
                let ns = instant::parse_date_or_instant(&s).ok_or_else(|| {
                    invalid(
                        "since",
                        format!(
                            "{s:?} is not an ISO 8601 date (2024-01-31) or instant with a time zone \
                             (2024-01-31T08:00:00Z)"
                        ),
                    )
                })?;
                Some((s, ns))
            }
        };
        let types = list("types", c.types)?.unwrap_or_default();
        if let Some(bad) = types.iter().find(|t| !is_loinc_code(t)) {
            return Err(invalid("types", format!("{bad:?} is not a LOINC code like \"11502-2\"")));
        }
        let status = c.status.map(|s| s.trim().to_string()).unwrap_or_else(|| DEFAULT_STATUS.into());
        if !STATUSES.contains(&status.as_str()) {
            return Err(invalid("status", format!("{status:?} is not one of {}", STATUSES.join(", "))));
        }
        let identifier_systems = list("identifier_systems", c.identifier_systems)?;
        let content_types = match list("content_types", c.content_types)? {
            None => DEFAULT_CONTENT_TYPES.iter().map(|s| s.to_string()).collect(),
            Some(v) => {
                let v: Vec<String> = v.iter().map(|s| mime_base(s)).collect();
                if let Some(bad) = v.iter().find(|t| t.split('/').filter(|p| !p.is_empty()).count() != 2) {
                    return Err(invalid(
                        "content_types",
                        format!("{bad:?} is not a MIME type like \"application/pdf\""),
                    ));
                }
                v
            }
        };
        let timeout_ms = c.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}")));
        }
        Ok(Settings {
            base_url,
            origin,
            api,
            page_size,
            since,
            types,
            status,
            server_filters: c.server_filters.unwrap_or(false),
            identifier_systems,
            content_types,
            timeout_ms,
        })
    }

    /// One line for the log (no PHI; the base is configuration).
    pub fn describe(&self) -> String {
        format!(
            "FHIR DocumentReferences at {} (status {}, {} types, {} per page{}{})",
            self.api,
            self.status,
            if self.types.is_empty() { "all".to_string() } else { self.types.len().to_string() },
            self.page_size,
            match &self.since {
                Some((s, _)) => format!(", since {s}"),
                None => String::new(),
            },
            if self.server_filters { ", filtered by the server" } else { "" },
        )
    }
}
