//! ferry document source: a drop folder of a healthcare provider's exports.
//!
//! A primary care practice, a lab or a hospital drops its documents for a
//! clinic into a folder (a share, an SFTP target): PDF letters and lab
//! reports, JPEG/PNG/TIFF scans, plain text. This source turns each file
//! into a document with the patient's key and what is known of it (its
//! type as a LOINC or other coding, date, title, author), which the host
//! hands to the later stages as `document.*` metadata. Which file belongs
//! to which patient comes from a **manifest** next to the files, or from
//! the folder layout (a **pattern**).
//!
//! ```toml
//! [source]
//! plugin = "folder-documents"
//! grants.fs = { inbox = "/srv/exports/praxis-mueller" }
//!
//! [source.config]
//! root = "inbox"
//! manifest = "manifest.csv"
//! default_type = { code = "34133-9", display = "Summary of episode note" }
//! # a manifest `type` value (or a type folder) → a coding; `system`
//! # defaults to LOINC, `display` to the code
//! types.lab = { system = "http://loinc.org", code = "11502-2", display = "Laboratory report" }
//! types.letter = { code = "34109-9", display = "Note" }
//! types.xray = { system = "http://snomed.info/sct", code = "363680008", display = "Radiographic imaging" }
//!
//! [resolver]
//! plugin = "csv-resolver"
//! grants.fs = { maps = "/srv/maps" }
//! # the resolver's scheme is the source's key_scheme
//! config = { root = "maps", path = "praxis-mueller.csv", key_column = "providerId", scheme = "provider-patient-id" }
//! ```
//!
//! Or, for a provider that exports one folder per patient and document
//! type (`4711/lab/2024-03-07 blood.pdf`):
//!
//! ```toml
//! config = { root = "inbox", pattern = "{patient}/{type}/{file}", types = { lab = { code = "11502-2", display = "Laboratory report" } } }
//! ```
//!
//! ## Config
//!
//! | key | meaning |
//! |---|---|
//! | `root` | the fs grant of the drop folder (required) |
//! | `manifest` | path inside `root` of the manifest: CSV if it ends in `.csv`, JSON if `.json` |
//! | `pattern` | path segments: `{patient}` (once, required), `{type}` (at most once), `{file}` (the file name, last), literal folder names that must match exactly |
//! | `key_scheme` | scheme of the patient keys, default `provider-patient-id` |
//! | `types` | table: folder name or manifest `type` value → `{ system, code, display }`; `system` defaults to `http://loinc.org` (whose codes are checked, check digit included), `display` to the code |
//! | `default_type` | a coding for documents that name no type |
//! | `page_size` | documents per scan page, default 200, 1–1000 |
//!
//! Exactly one of `manifest` and `pattern`. A type value that is not a key
//! of `types` (matched exactly, else ASCII case-insensitively) but is a
//! LOINC code (`11502-2`) is used as it is, with the code as its display;
//! anything else fails that document.
//!
//! ## Manifest
//!
//! CSV: a header row, then one row per file. Columns (names ASCII
//! case-insensitive, any order): `file` (path inside `root`, `/` or `\`),
//! `patient` (the provider's patient id) are required; `type`, `date` (ISO
//! 8601: `2024-03-07` or `2024-03-07T14:30[:00][Z|+01:00]`), `title`,
//! `author`, `patient_scheme` (this row's key scheme instead of
//! `key_scheme`) are optional. Quoted cells may hold commas, quotes (`""`)
//! and line breaks; cells are trimmed; a UTF-8 byte order mark is skipped;
//! the delimiter is `,`, or `;` or tab when only that makes a header with
//! `file` and `patient`. Row numbers in messages are as a spreadsheet shows
//! them (the header is row 1).
//!
//! ```csv
//! file,patient,type,date,title,author
//! 2024/blood-0317.pdf,4711,lab,2024-03-17,"Blood panel, fasting",Labor Dr. Schmidt
//! 2024/letter-0320.pdf,4712,34109-9,2024-03-20T09:15:00+01:00,"Referral ""urgent""",Praxis Müller
//! ```
//!
//! JSON: an array of objects with the same fields (string values; `patient`
//! may be a number; `null` is an empty cell); entry numbers count from 1.
//! An unknown column or field is an error of the scan naming it; so is a
//! manifest over 16 MiB.
//!
//! ## What becomes of each file
//!
//! The folder is walked recursively. Hidden files and folders (a leading
//! `.`), temporary files (`~$…`, `*.tmp`, `*.part`, `*.crdownload`) and the
//! manifest itself are left out silently. Content types come from the
//! extension: `pdf` (application/pdf), `jpg`/`jpeg` (image/jpeg), `png`,
//! `tif`/`tiff`, `txt` (text/plain); any other file is a `skip` notice
//! saying so. With a manifest, a file it does not list is a `skip` ("not in
//! the manifest"); a row whose file is not in the folder, two rows for one
//! file, an empty `patient`, a bad `date` or an unknown `type` are `fail`
//! notices naming the row and the fix (a row with an empty `file` cell is
//! one with the subject `{manifest} row N`). With a pattern, a path that
//! does not match is a `skip`, a `{type}` folder that is neither a key of
//! `types` nor a LOINC code a `fail`.
//!
//! A document's item: `id` is its path in the folder (stable across scans),
//! `display_name` its file name, `patient_keys` one key (`key_scheme` or
//! the row's `patient_scheme`, the patient id), attribute
//! `folder-documents.row` the manifest row. Its facts: the content type,
//! the type coding (or `default_type`), the manifest's date, title (else
//! the file name without its extension) and author.
//!
//! **Ids and notices appear in logs**: they are the file's path, so a
//! provider must not put patient names or birth dates in file or folder
//! names (with a pattern, the patient id is a folder name; use an opaque
//! id, not a card number, there). Notice reasons never quote manifest
//! cells.
//!
//! Pages are in path order, at most `page_size` documents each; the cursor
//! is the last path handed out, and each notice is on the page where its
//! path falls. A scan walks the folder once and keeps the result for its
//! pages. Files still being written are the host's business (`[source]
//! min_age` defers files modified too recently).
use std::io::Read;

use ferry_plugin_sdk::fs;
use ferry_plugin_sdk::types::{FileRef, HostError, StageError};
use ferry_plugin_sdk::{permanent, DocumentPage, DocumentSource, FileReader};

pub mod config;
pub mod manifest;
pub mod scan;

pub use config::{Config, Settings};
use scan::{DirEntry, Entry, ReadError, Site};

/// The real site: the host's `fs` capability on the configured root.
pub struct HostSite<'a> {
    pub root: &'a str,
}

impl HostSite<'_> {
    fn file(&self, path: &str) -> FileRef {
        FileRef { root: self.root.to_string(), path: path.to_string() }
    }
}

impl Site for HostSite<'_> {
    fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, HostError> {
        let entries = fs::list_dir(&self.file(path))?;
        Ok(entries.into_iter().map(|e| DirEntry { name: e.name, kind: e.kind, size: e.size }).collect())
    }

    fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, ReadError> {
        let mut reader = FileReader::open(&self.file(path)).map_err(|e| ReadError::Host(e.into()))?;
        if reader.size() > limit {
            return Err(ReadError::TooLarge(reader.size()));
        }
        let mut bytes = Vec::with_capacity(reader.size() as usize);
        // read one byte past the limit: the file may have grown since
        if let Err(e) = reader.by_ref().take(limit + 1).read_to_end(&mut bytes) {
            return Err(ReadError::Host(match reader.take_error() {
                Some(host) => host.into(),
                None => permanent(e.to_string()),
            }));
        }
        if bytes.len() as u64 > limit {
            return Err(ReadError::TooLarge(bytes.len() as u64));
        }
        Ok(bytes)
    }
}

/// The configured stage.
struct FolderDocuments {
    settings: Settings,
    /// The current scan's entries, with the cursor of its next page.
    plan: Option<(String, Vec<Entry>)>,
}

impl FolderDocuments {
    fn scan_page(&mut self, cursor: Option<String>, site: &mut dyn Site) -> Result<DocumentPage, StageError> {
        let entries = match (cursor.as_deref(), self.plan.take()) {
            (Some(c), Some((next, entries))) if next == c => entries,
            _ => scan::plan(&self.settings, site)?,
        };
        let page = scan::page(&entries, cursor.as_deref(), self.settings.page_size);
        if let Some(next) = &page.next_cursor {
            self.plan = Some((next.clone(), entries));
        }
        Ok(page)
    }
}

impl DocumentSource for FolderDocuments {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        Ok(FolderDocuments { settings: config.validate()?, plan: None })
    }

    fn scan(&mut self, cursor: Option<String>) -> Result<DocumentPage, StageError> {
        let root = self.settings.root.clone();
        self.scan_page(cursor, &mut HostSite { root: &root })
    }
}

ferry_plugin_sdk::document_source_plugin!(FolderDocuments);

#[cfg(test)]
mod tests;
