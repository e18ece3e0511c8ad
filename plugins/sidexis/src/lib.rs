//! ferry source for Dentsply Sirona Sidexis.
//!
//! Sidexis keeps its images on a share (`PDATA`) with one folder per patient,
//! `P_0000{SidexisPatientId}`, holding files `0000_{imageId}.dcm`, and keeps
//! who is who in its database: the patient table maps `SidexisPatientId` to
//! the `CardId` (the practice-management id), the image table maps `ImageId`
//! to the image's name. This source walks the share a page of patient
//! folders at a time and turns every image into an item whose patient keys
//! are the Sidexis id and the card ids.
//!
//! The scan logic is written against the small [`Site`] trait so that it
//! can be tested without a host; [`HostSite`] is the real one.
use std::collections::{BTreeMap, BTreeSet};

use ferry_plugin_sdk::fs::{self, EntryKind};
use ferry_plugin_sdk::sql::{self, SqlValue};
use ferry_plugin_sdk::types::{FileRef, HostError, Item, PatientKey, StageError};
use ferry_plugin_sdk::{parse_config, permanent, serde, Context, Notice, NoticeOutcome, Page, Source};

/// The stage's `[config]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields, default)]
pub struct Config {
    /// Name of the fs grant holding the PDATA share.
    pub pdata_root: String,
    /// Name of the SQL connection to the Sidexis database.
    pub connection: String,
    pub patient_table: String,
    pub patient_id_column: String,
    pub card_id_column: String,
    pub image_table: String,
    pub image_id_column: String,
    pub image_name_column: String,
    /// Patient folders per `scan` call.
    pub folders_per_page: u32,
}

/// Largest `folders_per_page`: one page is one plugin call, which must end
/// well within its deadline, with its SQL answers in memory.
pub const MAX_FOLDERS_PER_PAGE: u32 = 1000;

impl Default for Config {
    fn default() -> Self {
        Config {
            pdata_root: "pdata".into(),
            connection: "sidexis".into(),
            patient_table: "patient".into(),
            patient_id_column: "SidexisPatientId".into(),
            card_id_column: "CardId".into(),
            image_table: "mediabase".into(),
            image_id_column: "ImageId".into(),
            image_name_column: "ImageName".into(),
            folders_per_page: 50,
        }
    }
}

impl Config {
    /// Parses and validates the JSON config (what `configure` does).
    pub fn parse(json: &str) -> Result<Config, StageError> {
        let config: Config = parse_config(json)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), StageError> {
        // These are spliced into SQL text: only plain identifiers get in.
        for (key, value) in [
            ("patient_table", &self.patient_table),
            ("patient_id_column", &self.patient_id_column),
            ("card_id_column", &self.card_id_column),
            ("image_table", &self.image_table),
            ("image_id_column", &self.image_id_column),
            ("image_name_column", &self.image_name_column),
        ] {
            if !is_sql_identifier(value) {
                return Err(permanent(format!(
                    "invalid [config] {key} = {value:?}: expected an SQL identifier \
                     (letters, digits and `_`, optionally `schema.` and `[brackets]`)"
                )));
            }
        }
        if self.pdata_root.is_empty() {
            return Err(permanent("invalid [config] pdata_root: must name an fs grant"));
        }
        if self.connection.is_empty() {
            return Err(permanent("invalid [config] connection: must name an sql connection"));
        }
        if !(1..=MAX_FOLDERS_PER_PAGE).contains(&self.folders_per_page) {
            return Err(permanent(format!(
                "invalid [config] folders_per_page: {} is outside 1..={MAX_FOLDERS_PER_PAGE} (a page must fit well inside the call deadline)",
                self.folders_per_page
            )));
        }
        Ok(())
    }
}

/// `name`, `[name]`, `schema.name`, `[schema].[name]`, ... where each name
/// is letters, digits and `_` (not starting with a digit unless bracketed).
pub fn is_sql_identifier(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 2 {
        return false;
    }
    parts.iter().all(|part| {
        let (inner, bracketed) = match part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            Some(inner) => (inner, true),
            None => (*part, false),
        };
        !inner.is_empty()
            && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && (bracketed || !inner.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// `P_000017` → `17`: `P_` then one or more ASCII digits, leading zeros
/// stripped (`P_0000` → `0`). `None` for anything else.
pub fn patient_folder_id(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("P_")?;
    parse_digits(digits)
}

/// `0000_42.dcm` (extension case-insensitive) → `42`. `None` otherwise.
pub fn image_file_id(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("0000_")?;
    let dot = rest.len().checked_sub(4)?;
    if !rest.is_char_boundary(dot) || !rest[dot..].eq_ignore_ascii_case(".dcm") {
        return None;
    }
    parse_digits(&rest[..dot])
}

/// One or more ASCII digits that fit an SQL integer (i64).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = s.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some(0);
    }
    trimmed.parse::<u64>().ok().filter(|&n| n <= i64::MAX as u64)
}

/// A directory entry as the scan needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
}

fn dir_entry(e: fs::Entry) -> DirEntry {
    DirEntry { name: e.name, kind: e.kind, size: e.size }
}

/// What the scan needs from the host.
pub trait Site {
    fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, HostError>;
    /// Each folder's listing, in order; one host call for all of them
    /// where the host can (a share's wait per page, not per folder).
    fn list_dirs(&mut self, paths: &[&str]) -> Result<Vec<Result<Vec<DirEntry>, HostError>>, HostError> {
        Ok(paths.iter().map(|p| self.list_dir(p)).collect())
    }
    fn query(&mut self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, HostError>;
}

/// The real site: the host's `fs` and `sql` capabilities.
pub struct HostSite<'a> {
    pub config: &'a Config,
}

impl Site for HostSite<'_> {
    fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, HostError> {
        let dir = FileRef { root: self.config.pdata_root.clone(), path: path.to_string() };
        Ok(fs::list_dir(&dir)?.into_iter().map(dir_entry).collect())
    }

    fn list_dirs(&mut self, paths: &[&str]) -> Result<Vec<Result<Vec<DirEntry>, HostError>>, HostError> {
        let root = &self.config.pdata_root;
        let dirs: Vec<FileRef> = paths.iter().map(|p| FileRef { root: root.clone(), path: p.to_string() }).collect();
        Ok(fs::list_dirs(&dirs)?.into_iter().map(|r| r.map(|es| es.into_iter().map(dir_entry).collect())).collect())
    }

    fn query(&mut self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, HostError> {
        Ok(sql::query(&self.config.connection, statement, params)?.rows)
    }
}

/// Image ids per query (SQL Server allows 2100 parameters, old SQLite 999).
const IDS_PER_QUERY: usize = 200;

fn notice(subject: &str, outcome: NoticeOutcome, reason: impl Into<String>) -> Notice {
    Notice { subject: subject.to_string(), outcome, reason: reason.into() }
}

/// One page of the scan, after the top-level entry named `cursor`.
///
/// `listing` caches the PDATA root's entries between the pages of one scan
/// (an instance serves every page when it can), with the cursor the cache
/// is good for: listing tens of thousands of folders on a share once per
/// page would make a scan quadratic. A scan from the top, a cursor this
/// instance did not hand out last, or a fresh instance lists again.
pub fn scan_page(
    config: &Config,
    site: &mut dyn Site,
    cursor: Option<&str>,
    listing: &mut Option<(String, Vec<DirEntry>)>,
) -> Result<Page, StageError> {
    let top = match (cursor, listing.take()) {
        (Some(c), Some((next, top))) if next == c => top,
        _ => {
            let mut top =
                site.list_dir("").context(format_args!("listing the PDATA root (grant `{}`)", config.pdata_root))?;
            // The host sorts by name already; sort anyway so that the
            // cursor comparison and the order agree whatever the host does.
            top.sort_by(|a, b| a.name.cmp(&b.name));
            top
        }
    };
    let page = page_after(config, site, cursor, &top)?;
    if let Some(next) = &page.next_cursor {
        *listing = Some((next.clone(), top));
    }
    Ok(page)
}

/// One top-level entry of a page: a patient folder or something else.
enum Entry<'a> {
    Folder { name: &'a str, id: u64 },
    Other(&'a str),
}

/// A patient folder once listed: its images (id, entry, path) and what
/// else it holds, or why it could not be listed.
enum Listed {
    Images { images: Vec<(u64, DirEntry, String)>, notices: Vec<Notice> },
    Unlisted(Notice),
}

/// The page's folders, listed first; then the database is asked once per
/// page (not once per folder): one query for every patient on the page,
/// one for every image id, in chunks of [`IDS_PER_QUERY`]. On SQL Server
/// each query is a round trip, and a site's patient table may have no
/// index on the id: per page, either costs a page's worth once.
fn page_after(
    config: &Config,
    site: &mut dyn Site,
    cursor: Option<&str>,
    top: &[DirEntry],
) -> Result<Page, StageError> {
    let mut page = Page { items: Vec::new(), notices: Vec::new(), next_cursor: None };
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let mut folders = 0u32;
    let mut last: Option<&str> = None;
    let mut remaining = top.iter().filter(|e| cursor.is_none_or(|c| e.name.as_str() > c)).peekable();
    while let Some(entry) = remaining.peek() {
        let id = match (entry.kind, patient_folder_id(&entry.name)) {
            (EntryKind::Directory, Some(id)) => Some(id),
            _ => None,
        };
        if id.is_some() && folders == config.folders_per_page {
            // Page full and another patient folder waits: stop before it.
            page.next_cursor = last.map(str::to_string);
            break;
        }
        let entry = remaining.next().expect("peeked");
        last = Some(&entry.name);
        entries.push(match id {
            Some(id) => {
                folders += 1;
                Entry::Folder { name: &entry.name, id }
            }
            None => Entry::Other(&entry.name),
        });
    }

    let folders: Vec<(u64, &str)> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Folder { name, id } => Some((*id, *name)),
            Entry::Other(_) => None,
        })
        .collect();
    let names: Vec<&str> = folders.iter().map(|(_, name)| *name).collect();
    let listings = site.list_dirs(&names).context("listing the page's patient folders")?;
    if listings.len() != folders.len() {
        return Err(permanent(format!("the host listed {} of {} folders (host bug)", listings.len(), folders.len())));
    }
    let mut listed: Vec<(u64, Listed)> = Vec::new();
    for ((id, name), listing) in folders.into_iter().zip(listings) {
        listed.push((id, patient_folder(name, listing)?));
    }
    // who is who, for the folders that hold images; then the images' names
    // of the patients with a card id
    let holding = |l: &Listed| matches!(l, Listed::Images { images, .. } if !images.is_empty());
    let patient_ids: BTreeSet<u64> = listed.iter().filter(|(_, l)| holding(l)).map(|(id, _)| *id).collect();
    let patients = patients(config, site, &patient_ids)?;
    let mut image_ids = BTreeSet::new();
    for (id, l) in &listed {
        if let (Some(Patient::Cards(_)), Listed::Images { images, .. }) = (patients.get(id), l) {
            image_ids.extend(images.iter().map(|(image_id, _, _)| *image_id));
        }
    }
    let names = image_names(config, site, &image_ids)?;

    // the page in the order of the share
    let mut listed = listed.into_iter();
    for e in entries {
        match e {
            Entry::Other(name) => page.notices.push(notice(name, NoticeOutcome::Skip, "not a Sidexis patient folder")),
            Entry::Folder { id, .. } => match listed.next().expect("one listing per folder").1 {
                Listed::Unlisted(n) => page.notices.push(n),
                Listed::Images { images, notices } => {
                    page.notices.extend(notices);
                    folder_items(config, id, images, patients.get(&id), &names, &mut page);
                }
            },
        }
    }
    Ok(page)
}

/// What the patient table says about one patient.
enum Patient {
    NoCardId,
    Cards(Vec<String>),
}

fn patient_folder(folder: &str, listing: Result<Vec<DirEntry>, HostError>) -> Result<Listed, StageError> {
    let entries = match listing {
        Ok(entries) => entries,
        Err(e @ HostError::Unavailable(_)) => return Err(e).context(format_args!("listing {folder}")),
        Err(e) => {
            // Gone since the root was listed, or unreadable: a person should look.
            let e: StageError = e.into();
            return Ok(Listed::Unlisted(notice(
                folder,
                NoticeOutcome::Fail,
                format!("cannot list folder: {}", e.message),
            )));
        }
    };
    // Sort the folder's entries into images and the rest.
    let mut images: Vec<(u64, DirEntry, String)> = Vec::new();
    let mut notices = Vec::new();
    for entry in entries {
        let path = format!("{folder}/{}", entry.name);
        match (entry.kind, image_file_id(&entry.name)) {
            (EntryKind::File, Some(image_id)) => images.push((image_id, entry, path)),
            (EntryKind::Directory, _) => {
                notices.push(notice(&path, NoticeOutcome::Skip, "subdirectory in a patient folder"))
            }
            _ => notices.push(notice(&path, NoticeOutcome::Skip, "not a Sidexis image file")),
        }
    }
    images.sort_by(|a, b| a.2.cmp(&b.2));
    Ok(Listed::Images { images, notices })
}

/// One folder's images as items (or notices saying why not).
fn folder_items(
    config: &Config,
    patient_id: u64,
    images: Vec<(u64, DirEntry, String)>,
    patient: Option<&Patient>,
    names: &BTreeMap<u64, String>,
    page: &mut Page,
) {
    let cards = match patient {
        Some(Patient::Cards(cards)) => cards,
        None => {
            let reason =
                format!("no row in {} table for {} {patient_id}", config.patient_table, config.patient_id_column);
            for (_, _, path) in &images {
                page.notices.push(notice(path, NoticeOutcome::Fail, reason.clone()));
            }
            return;
        }
        Some(Patient::NoCardId) => {
            for (_, _, path) in &images {
                page.notices.push(notice(path, NoticeOutcome::Skip, "patient has no CardId"));
            }
            return;
        }
    };
    let mut keys = vec![PatientKey { scheme: "sidexis-id".into(), value: patient_id.to_string() }];
    keys.extend(cards.iter().map(|value| PatientKey { scheme: "card-id".into(), value: value.clone() }));

    for (image_id, entry, path) in images {
        let Some(name) = names.get(&image_id) else {
            page.notices.push(notice(
                &path,
                NoticeOutcome::Fail,
                format!("no row in {} table for {} {image_id}", config.image_table, config.image_id_column),
            ));
            continue;
        };
        let display_name = if name.is_empty() { entry.name.clone() } else { name.clone() };
        page.items.push(Item {
            id: path.clone(),
            patient_keys: keys.clone(),
            display_name,
            file: FileRef { root: config.pdata_root.clone(), path },
            size: entry.size,
            attributes: vec![
                ("sidexis.patient-id".into(), patient_id.to_string()),
                ("sidexis.image-id".into(), image_id.to_string()),
            ],
        });
    }
}

/// The card ids of each patient the table knows (absent: no row).
fn patients(config: &Config, site: &mut dyn Site, ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, Patient>, StageError> {
    let ids: Vec<u64> = ids.iter().copied().collect();
    let mut cards: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("@P{i}")).collect();
        let statement = format!(
            "SELECT {}, {} FROM {} WHERE {} IN ({})",
            config.patient_id_column,
            config.card_id_column,
            config.patient_table,
            config.patient_id_column,
            placeholders.join(", ")
        );
        let params: Vec<SqlValue> = chunk.iter().map(|&id| SqlValue::Integer(id as i64)).collect();
        let rows =
            site.query(&statement, &params).context(format_args!("reading the {} table", config.patient_table))?;
        for row in rows {
            let Some(id) = row.first().and_then(value_id) else { continue };
            let entry = cards.entry(id).or_default();
            if let Some(card) = row.get(1).and_then(value_text).filter(|c| !c.is_empty()) {
                entry.insert(card);
            }
        }
    }
    Ok(cards
        .into_iter()
        .map(|(id, c)| (id, if c.is_empty() { Patient::NoCardId } else { Patient::Cards(c.into_iter().collect()) }))
        .collect())
}

/// Image names by id, for the ids the table knows (trimmed; may be empty).
fn image_names(config: &Config, site: &mut dyn Site, ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, String>, StageError> {
    let ids: Vec<u64> = ids.iter().copied().collect();
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("@P{i}")).collect();
        let statement = format!(
            "SELECT {}, {} FROM {} WHERE {} IN ({})",
            config.image_id_column,
            config.image_name_column,
            config.image_table,
            config.image_id_column,
            placeholders.join(", ")
        );
        let params: Vec<SqlValue> = chunk.iter().map(|&id| SqlValue::Integer(id as i64)).collect();
        let rows = site.query(&statement, &params).context(format_args!("reading the {} table", config.image_table))?;
        for row in rows {
            let Some(id) = row.first().and_then(value_id) else { continue };
            let name = row.get(1).and_then(value_text).unwrap_or_default();
            // Several rows for one id: prefer a non-empty name, then the
            // smallest, so the result does not depend on row order.
            let better = match names.get(&id) {
                None => true,
                Some(old) => old.is_empty() || (!name.is_empty() && name < *old),
            };
            if better {
                names.insert(id, name);
            }
        }
    }
    Ok(names)
}

/// A text-ish SQL value, trimmed (integers become their decimal form).
fn value_text(v: &SqlValue) -> Option<String> {
    match v {
        SqlValue::Text(s) => Some(s.trim().to_string()),
        SqlValue::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An id column, integer or text.
fn value_id(v: &SqlValue) -> Option<u64> {
    match v {
        SqlValue::Integer(n) => u64::try_from(*n).ok(),
        SqlValue::Text(s) => s.trim().parse().ok(),
        SqlValue::Real(r) if r.fract() == 0.0 && *r >= 0.0 => Some(*r as u64),
        _ => None,
    }
}

/// The configured stage.
struct Sidexis {
    config: Config,
    /// The PDATA root's entries while a scan is under way, with the
    /// cursor of the next page.
    listing: Option<(String, Vec<DirEntry>)>,
}

impl Source for Sidexis {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        config.validate()?;
        Ok(Sidexis { config, listing: None })
    }

    fn scan(&mut self, cursor: Option<String>) -> Result<Page, StageError> {
        let Sidexis { config, listing } = self;
        scan_page(config, &mut HostSite { config }, cursor.as_deref(), listing)
    }
}

ferry_plugin_sdk::source_plugin!(Sidexis);

#[cfg(test)]
mod tests;
