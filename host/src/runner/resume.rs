//! Resume points: where a document source's next pass starts.
//!
//! A provider's FHIR server holds years of documents; reading all of them
//! every few minutes costs the provider and the clinic for nothing. So a
//! document source may say that its cursors are *positions that keep their
//! meaning* (the last seen `lastUpdated` and id, not a server's paging
//! link): it ends its scan with an empty page (no documents, no notices)
//! that carries a cursor. The host then remembers a cursor in the ledger
//! and starts the next pass there.
//!
//! Which cursor: the one that started the first page holding a document
//! that did not settle (failed, unresolved, quarantined, deferred, parked,
//! or a `fail` notice), so a document that needs another try is scanned
//! again; when every document settled (stored, unchanged, skipped), the
//! source's final cursor. A pass that was interrupted or whose scan broke
//! off leaves the old point as it was; a source that ends with no cursor
//! (a full scan) clears it. `--force`, and the single-patient syncs of
//! `ferry serve`, start from the top and leave the point alone.
//!
//! The point is keyed by the source's plugin and configuration, so
//! pointing the pipeline at another server (or changing its filters)
//! starts from the top.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::outcome::Outcome;

/// The key of a source's resume point: its plugin file's name and its
/// configuration, hashed.
pub fn source_key(plugin: &std::path::Path, config_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(plugin.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
    h.update([0]);
    h.update(config_json.as_bytes());
    format!("source:{}", &hex::encode(h.finalize())[..32])
}

/// Does an item that ended this way need to be scanned again?
pub fn settled(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Stored | Outcome::Unchanged | Outcome::Skipped)
}

/// The pages of one pass: the cursor each started from, which hold an
/// unsettled document, and how the scan ended.
#[derive(Debug, Default)]
pub struct Pages {
    starts: Vec<Option<String>>,
    unsettled: BTreeSet<usize>,
    /// The cursor of the final empty page, if the scan ended that way.
    end: Option<String>,
    /// The scan ended without a cursor (a full scan).
    ended_full: bool,
}

impl Pages {
    /// A page is about to be asked for with `cursor`: its index.
    pub fn begin(&mut self, cursor: Option<String>) -> usize {
        self.starts.push(cursor);
        self.starts.len() - 1
    }

    pub fn unsettled(&mut self, page: usize) {
        self.unsettled.insert(page);
    }

    /// The scan ended with an empty page carrying `cursor`.
    pub fn end_resumable(&mut self, cursor: String) {
        self.end = Some(cursor);
    }

    /// The scan ended with no cursor.
    pub fn end_full(&mut self) {
        self.ended_full = true;
    }

    /// What to remember once every item of the pass has an outcome:
    /// `None` to leave the point as it is, `Some(None)` to clear it,
    /// `Some(Some(c))` to set it.
    pub fn outcome(&self) -> Option<Option<String>> {
        if self.ended_full {
            return Some(None);
        }
        let end = self.end.as_ref()?;
        Some(match self.unsettled.first() {
            Some(&page) => self.starts.get(page).cloned().flatten(),
            None => Some(end.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_unsettled_page_wins() {
        let mut p = Pages::default();
        assert_eq!(p.begin(Some("a".into())), 0);
        assert_eq!(p.begin(Some("b".into())), 1);
        assert_eq!(p.begin(Some("c".into())), 2);
        p.unsettled(2);
        p.unsettled(1);
        p.end_resumable("d".into());
        assert_eq!(p.outcome(), Some(Some("b".into())));
    }

    #[test]
    fn all_settled_takes_the_end() {
        let mut p = Pages::default();
        p.begin(None);
        p.end_resumable("z".into());
        assert_eq!(p.outcome(), Some(Some("z".into())));
    }

    #[test]
    fn unsettled_first_page_from_the_top_clears() {
        let mut p = Pages::default();
        p.begin(None);
        p.unsettled(0);
        p.end_resumable("z".into());
        assert_eq!(p.outcome(), Some(None));
    }

    #[test]
    fn full_scan_clears_and_broken_scan_keeps() {
        let mut p = Pages::default();
        p.begin(None);
        p.end_full();
        assert_eq!(p.outcome(), Some(None));
        let mut p = Pages::default();
        p.begin(None);
        assert_eq!(p.outcome(), None);
    }

    #[test]
    fn keys_follow_plugin_and_config() {
        let a = source_key(std::path::Path::new("/x/fhir-documents.wasm"), r#"{"base_url":"a"}"#);
        let b = source_key(std::path::Path::new("/y/fhir-documents.wasm"), r#"{"base_url":"a"}"#);
        let c = source_key(std::path::Path::new("/x/fhir-documents.wasm"), r#"{"base_url":"b"}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(settled(Outcome::Skipped) && !settled(Outcome::Deferred) && !settled(Outcome::Failed));
    }
}
