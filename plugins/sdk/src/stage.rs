//! One trait per stage world, and the types of their answers.
//!
//! A plugin implements the trait of its world for a type holding whatever
//! its `configure` decided, and exports it with the world's macro
//! ([`source_plugin!`](crate::source_plugin) etc.). The macro generates the
//! WIT export glue: `configure` parses the stage's `config` table into
//! [`Source::Config`] (the error names the key; put
//! `#[serde(deny_unknown_fields)]` on it to refuse typos), calls `new` and
//! keeps the instance; every later call goes to that instance (a permanent
//! error if `configure` has not succeeded first; the host always calls it
//! first). A component instance is single-threaded and calls are never
//! re-entrant, so methods take `&mut self`.
//!
//! The answer types mirror the records and variants of the world's
//! interface in `wit/ferry.wit` field for field (the macro converts them);
//! the shared ones (`item`, `metadata`, `file-ref`, ...) are
//! [`types`](crate::types).
use serde::de::DeserializeOwned;

use crate::types::{DocumentFacts, FileRef, Item, Metadata, PatientKey, StageError};

/// `source-plugin`: enumerate items, page by page.
pub trait Source: Sized {
    /// The stage's `[*.config]` table.
    type Config: DeserializeOwned;
    /// Validates the config; called once per instance.
    fn new(config: Self::Config) -> Result<Self, StageError>;
    /// One page of the scan, starting after `cursor` (none: from the top).
    /// Aim for pages that take well under the call deadline.
    fn scan(&mut self, cursor: Option<String>) -> Result<Page, StageError>;
}

/// `document-source-plugin`: a source whose items are healthcare
/// documents, each with its [`DocumentFacts`] (type, date, title, author,
/// content type). The host hands the facts to the later stages as
/// `document.*` metadata.
pub trait DocumentSource: Sized {
    type Config: DeserializeOwned;
    fn new(config: Self::Config) -> Result<Self, StageError>;
    /// One page of documents, starting after `cursor` (none: from the top).
    fn scan(&mut self, cursor: Option<String>) -> Result<DocumentPage, StageError>;
}

/// `document-source.document`: an item and what the source knows of it.
#[derive(Debug, Clone)]
pub struct Document {
    pub item: Item,
    pub facts: DocumentFacts,
}

/// `document-source.page`.
#[derive(Debug, Clone)]
pub struct DocumentPage {
    pub documents: Vec<Document>,
    pub notices: Vec<Notice>,
    pub next_cursor: Option<String>,
}

/// `extractor-plugin`: metadata from the item's file.
pub trait Extractor: Sized {
    type Config: DeserializeOwned;
    fn new(config: Self::Config) -> Result<Self, StageError>;
    /// Reads what it needs through `fs.open` (ranges, never the whole
    /// file, see [`FileReader`](crate::FileReader)) and returns metadata.
    /// Corrupt input is a permanent error.
    fn extract(&mut self, item: Item) -> Result<Metadata, StageError>;
}

/// `resolver-plugin`: patient keys to the PMS patient guid.
pub trait Resolver: Sized {
    type Config: DeserializeOwned;
    fn new(config: Self::Config) -> Result<Self, StageError>;
    /// Resolves a batch of distinct keys: one resolution per key, in the
    /// same order.
    fn resolve(&mut self, keys: Vec<PatientKey>) -> Result<Vec<Resolution>, StageError>;
}

/// `store-plugin`: choose the destination and have the host put it there.
pub trait Store: Sized {
    type Config: DeserializeOwned;
    fn new(config: Self::Config) -> Result<Self, StageError>;
    /// Stores one item for the patient `patient_guid`.
    fn store(&mut self, item: Item, metadata: Metadata, patient_guid: String) -> Result<Stored, StageError>;
}

/// `renderer-plugin`: a picture of a stored file (`ferry serve`'s previews).
pub trait Renderer: Sized {
    type Config: DeserializeOwned;
    fn new(config: Self::Config) -> Result<Self, StageError>;
    /// Renders `file` to fit in `max_size` × `max_size` pixels, keeping the
    /// aspect ratio and never enlarging (none: full size). A file that
    /// cannot be rendered is a permanent error saying why, starting with
    /// `too large:` when it exceeds what the renderer accepts.
    fn render(&mut self, file: FileRef, max_size: Option<u32>) -> Result<Picture, StageError>;
}

/// `source.page`: one page of a scan.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Item>,
    pub notices: Vec<Notice>,
    /// Opaque cursor for the next page; none when the scan is complete.
    pub next_cursor: Option<String>,
}

/// `source.notice`: an entry the source met but did not turn into an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Which entry (a path or id; no PHI).
    pub subject: String,
    pub outcome: NoticeOutcome,
    pub reason: String,
}

/// `source.notice-outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeOutcome {
    /// Deliberately left out (e.g. a patient without a card id).
    Skip,
    /// Something is wrong and a person should look.
    Fail,
}

/// `resolver.resolution`: what the PMS says about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The key belongs to exactly this patient guid.
    Resolved(String),
    /// The PMS does not know the key.
    NotFound,
    /// The PMS knows several patients for this key (guids listed).
    Ambiguous(Vec<String>),
    /// The resolver does not handle this key's scheme.
    Unsupported,
}

/// `store.stored`: where an item now lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Object key, URL or remote id.
    pub location: String,
    pub outcome: StoreOutcome,
}

/// `store.store-outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Written now.
    Stored,
    /// Already at the destination with the same content; nothing written.
    Unchanged,
}

/// `renderer.picture`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// MIME type of `body`, e.g. `image/png`.
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub body: Vec<u8>,
}
