//! The scan: walk the folder, match files to the manifest or the pattern,
//! and hand the result out in pages. Written against [`Site`] so that it
//! runs natively in tests; [`HostSite`](crate::HostSite) is the real one.
use std::collections::BTreeMap;

use ferry_plugin_sdk::fs::EntryKind;
use ferry_plugin_sdk::types::{Coding, DocumentFacts, FileRef, HostError, Item, PatientKey, StageError};
use ferry_plugin_sdk::{permanent, Context, Document, DocumentPage, Notice, NoticeOutcome};

use crate::config::{normalise_path, Format, Mode, Pattern, Settings};
use crate::manifest::{self, Row};

/// Attribute of an item from a manifest: its row (or JSON entry) number.
pub const ROW_ATTRIBUTE: &str = "folder-documents.row";

/// Deepest folder nesting walked.
pub const MAX_DEPTH: usize = 32;

/// Most files one scan takes (the plan of a scan is held in memory).
pub const MAX_FILES: usize = 200_000;

/// A directory entry as the scan needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
}

/// Why a file could not be read whole.
#[derive(Debug)]
pub enum ReadError {
    /// Larger than the limit asked for: its size.
    TooLarge(u64),
    Host(StageError),
}

/// What the scan needs from the host, paths relative to the root.
pub trait Site {
    fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, HostError>;
    /// The whole file, if it has at most `limit` bytes.
    fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, ReadError>;
}

/// A file found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    pub path: String,
    pub size: u64,
}

/// One entry of a scan, in path order: a document or a notice.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The sort key and cursor: the path (or, for a manifest row naming
    /// no file, `{manifest} row N`).
    pub key: String,
    pub what: What,
}

#[derive(Debug, Clone)]
pub enum What {
    Document(Box<Document>),
    Notice(Notice),
}

/// The MIME type of a file, by its extension (ASCII case-insensitive).
pub fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "pdf" => "application/pdf",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "tif" | "tiff" => "image/tiff",
        "txt" => "text/plain",
        _ => return None,
    })
}

/// The extensions [`content_type`] knows, for messages.
pub const EXTENSIONS: &str = "pdf, jpg, jpeg, png, tif, tiff, txt";

/// Hidden files and folders (a leading `.`): left out silently.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Files an application is still writing or keeps for itself (`~$x.pdf`,
/// `x.tmp`, `x.part`, `x.crdownload`): left out silently.
pub fn is_temporary(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("~$") || [".tmp", ".part", ".crdownload"].iter().any(|s| lower.ends_with(s))
}

fn notice(subject: &str, outcome: NoticeOutcome, reason: impl Into<String>) -> Entry {
    Entry {
        key: subject.to_string(),
        what: What::Notice(Notice { subject: subject.to_string(), outcome, reason: reason.into() }),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Every file under the root but hidden and temporary ones and the
/// manifest, sorted by path; folders that cannot be listed become notices.
pub fn walk(
    settings: &Settings,
    site: &mut dyn Site,
    skip: Option<&str>,
    notices: &mut Vec<Entry>,
) -> Result<Vec<FoundFile>, StageError> {
    let mut files = Vec::new();
    let top = site.list_dir("").context(format_args!("listing the drop folder (grant `{}`)", settings.root))?;
    let mut pending = vec![(String::new(), top, 0usize)];
    while let Some((dir, entries, depth)) = pending.pop() {
        for entry in entries {
            if is_hidden(&entry.name) {
                continue;
            }
            let path = join(&dir, &entry.name);
            match entry.kind {
                EntryKind::Directory if depth + 1 >= MAX_DEPTH => notices.push(notice(
                    &path,
                    NoticeOutcome::Fail,
                    format!("folder nested more than {MAX_DEPTH} levels deep: not scanned"),
                )),
                EntryKind::Directory => match site.list_dir(&path) {
                    Ok(children) => pending.push((path, children, depth + 1)),
                    Err(e @ HostError::Unavailable(_)) => return Err(e).context(format_args!("listing {path}")),
                    Err(e) => {
                        let e: StageError = e.into();
                        notices.push(notice(&path, NoticeOutcome::Fail, format!("cannot list folder: {}", e.message)));
                    }
                },
                EntryKind::File if is_temporary(&entry.name) || Some(path.as_str()) == skip => {}
                EntryKind::File => {
                    if files.len() == MAX_FILES {
                        return Err(permanent(format!(
                            "more than {MAX_FILES} files in the drop folder (grant `{}`): split it into several \
                             sources",
                            settings.root
                        )));
                    }
                    files.push(FoundFile { path, size: entry.size });
                }
                EntryKind::Other => {
                    notices.push(notice(&path, NoticeOutcome::Skip, "not a regular file or folder"));
                }
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// What a document is made from, whichever way it was matched.
struct Facts<'a> {
    patient: &'a str,
    scheme: &'a str,
    kind: Option<Coding>,
    date: Option<&'a str>,
    title: Option<&'a str>,
    author: Option<&'a str>,
    row: Option<u64>,
}

fn document(settings: &Settings, file: &FoundFile, content_type: &str, f: Facts) -> Entry {
    let name = file.path.rsplit('/').next().unwrap_or(&file.path);
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    };
    let attributes = f.row.map(|n| (ROW_ATTRIBUTE.to_string(), n.to_string())).into_iter().collect();
    let item = Item {
        id: file.path.clone(),
        patient_keys: vec![PatientKey { scheme: f.scheme.to_string(), value: f.patient.to_string() }],
        display_name: name.to_string(),
        file: FileRef { root: settings.root.clone(), path: file.path.clone() },
        size: file.size,
        attributes,
    };
    let facts = DocumentFacts {
        content_type: content_type.to_string(),
        kind: f.kind.or_else(|| settings.default_type.clone()),
        date: f.date.map(str::to_string),
        title: Some(f.title.unwrap_or(stem).to_string()),
        author: f.author.map(str::to_string),
    };
    Entry { key: file.path.clone(), what: What::Document(Box::new(Document { item, facts })) }
}

/// The whole scan, sorted by key: reads the manifest (if any) and walks.
pub fn plan(settings: &Settings, site: &mut dyn Site) -> Result<Vec<Entry>, StageError> {
    let mut entries = Vec::new();
    match &settings.mode {
        Mode::Manifest { path, format } => {
            let name = format!("{}:{path}", settings.root);
            let bytes = match site.read(path, manifest::MAX_MANIFEST_BYTES) {
                Ok(bytes) => bytes,
                Err(ReadError::TooLarge(size)) => return Err(permanent(manifest::too_large(&name, size))),
                Err(ReadError::Host(e)) => return Err(e).context(format_args!("reading the manifest {name}")),
            };
            let rows = manifest::parse(&bytes, *format, &name).map_err(permanent)?;
            let files = walk(settings, site, Some(path), &mut entries)?;
            plan_manifest(settings, path, *format, rows, &files, &mut entries);
        }
        Mode::Pattern(pattern) => {
            let files = walk(settings, site, None, &mut entries)?;
            plan_pattern(settings, pattern, &files, &mut entries);
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(entries)
}

fn unsupported(file: &FoundFile) -> Entry {
    let ext = file.path.rsplit('/').next().and_then(|n| n.rsplit_once('.')).map(|(_, e)| e);
    let what = match ext {
        Some(e) => format!("unsupported file type `.{e}`"),
        None => "no file extension".to_string(),
    };
    notice(&file.path, NoticeOutcome::Skip, format!("{what}: folder-documents takes {EXTENSIONS}"))
}

/// Files matched to manifest rows (`manifest` is its path in the root).
pub fn plan_manifest(
    settings: &Settings,
    manifest: &str,
    format: Format,
    rows: Vec<Row>,
    files: &[FoundFile],
    entries: &mut Vec<Entry>,
) {
    let noun = manifest::noun(format);
    let mut by_file: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in rows {
        let file = row.file.as_deref().map(|f| (f, normalise_path(f)));
        match file {
            Some((_, Some(path))) => by_file.entry(path).or_default().push(row),
            Some((_, None)) => entries.push(notice(
                &format!("{manifest} {noun} {}", row.number),
                NoticeOutcome::Fail,
                format!(
                    "manifest {noun} {}: `file` must be a path inside the folder (no `..`, no leading `/`)",
                    row.number
                ),
            )),
            None => entries.push(notice(
                &format!("{manifest} {noun} {}", row.number),
                NoticeOutcome::Fail,
                row.problem.clone().unwrap_or_else(|| {
                    format!(
                        "manifest {noun} {}: the `file` cell is empty: name the file, or delete the row",
                        row.number
                    )
                }),
            )),
        }
    }
    let numbers = |rows: &[Row]| rows.iter().map(|r| r.number.to_string()).collect::<Vec<_>>().join(", ");
    for file in files {
        let rows = by_file.remove(&file.path);
        let Some(content_type) = content_type(&file.path) else {
            entries.push(unsupported(file));
            continue;
        };
        let row = match rows.as_deref() {
            None | Some([]) => {
                entries.push(notice(&file.path, NoticeOutcome::Skip, "not in the manifest"));
                continue;
            }
            Some([row]) => row,
            Some(rows) => {
                entries.push(notice(
                    &file.path,
                    NoticeOutcome::Fail,
                    format!("manifest {noun}s {} all name this file: keep one of them", numbers(rows)),
                ));
                continue;
            }
        };
        match row_facts(settings, row, noun) {
            Ok(facts) => entries.push(document(settings, file, content_type, facts)),
            Err(reason) => entries.push(notice(&file.path, NoticeOutcome::Fail, reason)),
        }
    }
    // rows whose file is not in the folder
    for (path, rows) in by_file {
        let which =
            if rows.len() == 1 { format!("{noun} {}", rows[0].number) } else { format!("{noun}s {}", numbers(&rows)) };
        entries.push(notice(
            &path,
            NoticeOutcome::Fail,
            format!("manifest {which} names this file, which is not in the folder: export it again or fix the row"),
        ));
    }
}

fn row_facts<'a>(settings: &'a Settings, row: &'a Row, noun: &str) -> Result<Facts<'a>, String> {
    let n = row.number;
    if let Some(problem) = &row.problem {
        return Err(problem.clone());
    }
    let Some(patient) = row.patient.as_deref() else {
        return Err(format!("manifest {noun} {n}: the `patient` cell is empty: give the patient's id"));
    };
    if let Some(date) = row.date.as_deref() {
        if !manifest::is_iso_date(date) {
            return Err(format!(
                "manifest {noun} {n}: `date` is not an ISO 8601 date: write it as YYYY-MM-DD (2024-03-07) \
                 or YYYY-MM-DDThh:mm[:ss] (2024-03-07T14:30:00, optionally with Z or +01:00)"
            ));
        }
    }
    let kind = match row.kind.as_deref() {
        Some(t) => Some(settings.coding_for(t).map_err(|e| format!("manifest {noun} {n}: {e}"))?),
        None => None,
    };
    Ok(Facts {
        patient,
        scheme: row.patient_scheme.as_deref().unwrap_or(&settings.key_scheme),
        kind,
        date: row.date.as_deref(),
        title: row.title.as_deref(),
        author: row.author.as_deref(),
        row: Some(n),
    })
}

/// Files matched to the pattern.
pub fn plan_pattern(settings: &Settings, pattern: &Pattern, files: &[FoundFile], entries: &mut Vec<Entry>) {
    for file in files {
        let Some(content_type) = content_type(&file.path) else {
            entries.push(unsupported(file));
            continue;
        };
        let Some(found) = pattern.matches(&file.path) else {
            entries.push(notice(&file.path, NoticeOutcome::Skip, format!("does not match pattern `{}`", pattern.text)));
            continue;
        };
        let kind = match found.kind.map(|t| settings.coding_for(t)) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                entries.push(notice(&file.path, NoticeOutcome::Fail, format!("folder {e}")));
                continue;
            }
            None => None,
        };
        let facts = Facts {
            patient: found.patient.trim(),
            scheme: &settings.key_scheme,
            kind,
            date: None,
            title: None,
            author: None,
            row: None,
        };
        entries.push(document(settings, file, content_type, facts));
    }
}

/// The page after `cursor`: at most `page_size` documents, with the
/// notices among and after them up to the next document; the cursor is
/// the key of the last entry handed out.
pub fn page(entries: &[Entry], cursor: Option<&str>, page_size: usize) -> DocumentPage {
    let mut page = DocumentPage { documents: Vec::new(), notices: Vec::new(), next_cursor: None };
    let start = cursor.map_or(0, |c| entries.partition_point(|e| e.key.as_str() <= c));
    let mut last: Option<&str> = None;
    for entry in &entries[start..] {
        let is_document = matches!(entry.what, What::Document(_));
        // entries of one key stay on one page: the cursor is a key
        if is_document && page.documents.len() == page_size && last != Some(entry.key.as_str()) {
            page.next_cursor = last.map(str::to_string);
            return page;
        }
        last = Some(&entry.key);
        match &entry.what {
            What::Document(d) => page.documents.push(Document::clone(d)),
            What::Notice(n) => page.notices.push(n.clone()),
        }
    }
    page
}
