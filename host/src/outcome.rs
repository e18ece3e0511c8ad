//! How an item ended: the vocabulary every part of ferry shares (runner,
//! ledger, service, CLI). Plain data, so that the ledger can store
//! outcomes without depending on the runner that produces them.

/// How one item (or one entry the source reported) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Written to the destination in this run.
    Stored,
    /// Already at the destination, identical; nothing written.
    Unchanged,
    /// Deliberately left out by the source (no card id, stray file).
    Skipped,
    /// No key of the item resolved to a patient.
    Unresolved,
    /// Keys resolved to different patients (or one key to several):
    /// never stored until a person sorts it out.
    Quarantined,
    /// Something went wrong; the detail says what.
    Failed,
    /// Not stored this pass because its file is still being written
    /// (younger than `[source] min_age`, or it changed between scan and
    /// upload); tried again on the next pass. Not a failure.
    Deferred,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Stored,
        Outcome::Unchanged,
        Outcome::Skipped,
        Outcome::Unresolved,
        Outcome::Quarantined,
        Outcome::Failed,
        Outcome::Deferred,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Unresolved => "unresolved",
            Outcome::Quarantined => "quarantined",
            Outcome::Failed => "failed",
            Outcome::Deferred => "deferred",
        }
    }
}

/// One line of the run report. `subject` is the source's item id or the
/// path a notice is about; `detail` explains (no PHI), `location` is where
/// a stored item went.
#[derive(Debug, Clone)]
pub struct Report {
    pub subject: String,
    pub outcome: Outcome,
    pub detail: String,
    pub patient_guid: Option<String>,
    pub location: Option<String>,
}

/// What the service needs to know about a stored image without opening it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageFacts {
    pub name: String,
    /// DICOM person name as stored (`Last^First^Middle`), if any.
    pub patient_name: Option<String>,
    pub modality: Option<String>,
    pub study_date: Option<String>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
}

/// The event the runner publishes when the store acknowledged an item
/// (stored or unchanged): who listens (the image index today, a shared
/// index or a webhook tomorrow) is the caller's business, not the runner's.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub item_id: String,
    pub patient_guid: String,
    /// Where the store put it (its key).
    pub location: String,
    pub facts: ImageFacts,
}

/// Something told about every stored item. Called on the runner's tasks:
/// keep it short, and never fail the item (log instead).
pub trait StoredItemListener: Send + Sync {
    fn stored(&self, event: &StoredItem);
}
