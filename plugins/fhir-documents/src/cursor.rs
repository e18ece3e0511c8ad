//! The scan's cursors: compact JSON, version 1.
//!
//! - A **position** `{"v":1,"since":"<lastUpdated>","seen":["id",…]}`:
//!   everything updated at or after `since`, except the ids in `seen`
//!   (those already handed out that carry exactly that `lastUpdated`). It
//!   means the same thing on any later day, which is what lets the host
//!   keep it as a resume point. `{"v":1}` is the top (from the configured
//!   `since`, if any).
//! - A **paging** cursor `{"v":1,"next":"<url>","skip":n,"pages":p}`: the
//!   server's `next` link (and how many of its entries were handed out
//!   already, and how many pages this pass has followed, so that links
//!   going round in a circle end the pass), for servers whose answers
//!   cannot be resumed (see the crate docs). It is only good within one
//!   pass; a scan in paging mode ends with no cursor.
use ferry_plugin_sdk::serde_json;
use ferry_plugin_sdk::types::StageError;
use ferry_plugin_sdk::{permanent, serde};

use crate::instant;

/// Most ids in `seen` (FHIR ids are at most 64 characters, so a cursor
/// stays under [`MAX_CURSOR`]).
pub const SEEN_CAP: usize = 900;
/// Longest cursor accepted or made.
pub const MAX_CURSOR: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    Position(Position),
    /// `pages`: search pages this pass has followed in paging mode.
    Paging {
        url: String,
        skip: usize,
        pages: usize,
    },
}

/// Where a resumable scan stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// The `lastUpdated` as the server wrote it, and parsed.
    pub since: Option<(String, i128)>,
    /// Ids with exactly `since` that were handed out.
    pub seen: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
struct Json {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    skip: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pages: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn bad(why: impl std::fmt::Display) -> StageError {
    permanent(format!(
        "the scan cursor is not one of fhir-documents' ({why}); start the source from the top (`--force`)"
    ))
}

impl Cursor {
    pub fn top() -> Cursor {
        Cursor::Position(Position::default())
    }

    pub fn decode(raw: Option<&str>) -> Result<Cursor, StageError> {
        let Some(raw) = raw else { return Ok(Cursor::top()) };
        if raw.len() > MAX_CURSOR {
            return Err(bad(format!("{} bytes, more than {MAX_CURSOR}", raw.len())));
        }
        let j: Json = serde_json::from_str(raw).map_err(bad)?;
        if j.v != 1 {
            return Err(bad(format!("version {}", j.v)));
        }
        match j.next {
            Some(url) => {
                if j.since.is_some() || !j.seen.is_empty() {
                    return Err(bad("both a position and a paging link"));
                }
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad("its paging link is not an http(s) URL"));
                }
                Ok(Cursor::Paging { url, skip: j.skip, pages: j.pages })
            }
            None => {
                if j.skip != 0 || j.pages != 0 {
                    return Err(bad("skip or pages without a paging link"));
                }
                let since = match j.since {
                    Some(s) => {
                        let ns =
                            instant::parse_date_or_instant(&s).ok_or_else(|| bad("its since is not an instant"))?;
                        Some((s, ns))
                    }
                    None if !j.seen.is_empty() => return Err(bad("seen without since")),
                    None => None,
                };
                if j.seen.len() > SEEN_CAP {
                    return Err(bad(format!("{} seen ids, more than {SEEN_CAP}", j.seen.len())));
                }
                Ok(Cursor::Position(Position { since, seen: j.seen }))
            }
        }
    }

    pub fn encode(&self) -> String {
        let j = match self {
            Cursor::Position(p) => Json {
                v: 1,
                since: p.since.as_ref().map(|(s, _)| s.clone()),
                seen: p.seen.clone(),
                next: None,
                skip: 0,
                pages: 0,
            },
            Cursor::Paging { url, skip, pages } => {
                Json { v: 1, since: None, seen: Vec::new(), next: Some(url.clone()), skip: *skip, pages: *pages }
            }
        };
        serde_json::to_string(&j).expect("a cursor serialises")
    }
}

impl Position {
    /// Already handed out, or before the position?
    pub fn covers(&self, last_updated: i128, key: &str) -> bool {
        match &self.since {
            None => false,
            Some((_, since)) => last_updated < *since || (last_updated == *since && self.seen.iter().any(|s| s == key)),
        }
    }

    /// Moves past an entry (which [`covers`](Self::covers) said is new).
    /// False when `seen` is full: the position cannot record it.
    pub fn advance(&mut self, raw: &str, last_updated: i128, key: &str) -> bool {
        match &self.since {
            Some((_, since)) if *since == last_updated => {
                if self.seen.len() >= SEEN_CAP {
                    return false;
                }
                self.seen.push(key.to_string());
            }
            _ => {
                self.since = Some((raw.to_string(), last_updated));
                self.seen = vec![key.to_string()];
            }
        }
        true
    }
}
