//! ferry resolver: patient keys to guids from a CSV export.
//!
//! The file (e.g. a card-id → patient-guid export of the practice
//! management system) is read through the host's `fs` capability on the
//! first `resolve` and kept in memory; it is read again when its size or
//! modification time changes.
//!
//! Format: a header row naming the columns, then one row per mapping.
//! Cells are trimmed; a UTF-8 byte order mark is skipped; the delimiter is
//! `,`, or `;` or tab when the header only makes sense that way (Excel in
//! many European locales writes `;`). Cells need not be valid UTF-8 outside
//! the two columns used.
use std::collections::{BTreeSet, HashMap};
use std::io::Read;

use ferry_plugin_sdk::types::{FileRef, PatientKey, StageError};
use ferry_plugin_sdk::{fs, parse_config, permanent, serde, warn, Context, FileReader, Resolution, Resolver};

/// The stage's `[config]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// fs grant holding the file.
    pub root: String,
    /// Path of the file inside `root`.
    pub path: String,
    #[serde(default = "default_key_column")]
    pub key_column: String,
    #[serde(default = "default_guid_column")]
    pub guid_column: String,
    /// The patient-key scheme the file's keys belong to.
    #[serde(default = "default_scheme")]
    pub scheme: String,
}

fn default_key_column() -> String {
    "cardId".into()
}
fn default_guid_column() -> String {
    "patientGuid".into()
}
fn default_scheme() -> String {
    "card-id".into()
}

impl Config {
    /// Parses and validates the JSON config (what `configure` does).
    pub fn parse(json: &str) -> Result<Config, StageError> {
        let config: Config = parse_config(json)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), StageError> {
        for (key, value) in [
            ("root", &self.root),
            ("path", &self.path),
            ("key_column", &self.key_column),
            ("guid_column", &self.guid_column),
            ("scheme", &self.scheme),
        ] {
            if value.trim().is_empty() {
                return Err(permanent(format!("invalid [config] {key}: must not be empty")));
            }
        }
        if self.key_column.trim() == self.guid_column.trim() {
            return Err(permanent("invalid [config]: key_column and guid_column name the same column"));
        }
        Ok(())
    }

    /// `root:path`, for messages.
    fn file_name(&self) -> String {
        format!("{}:{}", self.root, self.path)
    }
}

/// The file's mappings: key → distinct guids.
#[derive(Debug, Default)]
pub struct Table {
    map: HashMap<String, BTreeSet<String>>,
}

impl Table {
    pub fn resolve(&self, key: &str) -> Resolution {
        match self.map.get(key.trim()) {
            None => Resolution::NotFound,
            Some(guids) if guids.len() == 1 => Resolution::Resolved(guids.iter().next().unwrap().clone()),
            Some(guids) => Resolution::Ambiguous(guids.iter().cloned().collect()),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A problem with the file's content: the message names the file.
#[derive(Debug, PartialEq)]
pub struct Problem(pub String);

/// What parsing noticed but tolerated (logged as warnings, without PHI).
#[derive(Debug, Default, PartialEq)]
pub struct Tolerated {
    /// 1-based line numbers of rows whose guid cell is empty.
    pub empty_guid_lines: Vec<u64>,
}

/// Parses the whole file. `file` names it in messages.
pub fn parse_table(bytes: &[u8], config: &Config, file: &str) -> Result<(Table, Tolerated), Problem> {
    let key_col = config.key_column.trim();
    let guid_col = config.guid_column.trim();
    let mut chosen = None;
    let mut first_headers = None;
    for delimiter in [b',', b';', b'\t'] {
        let headers = read_headers(bytes, delimiter, file)?;
        if let (Some(k), Some(g)) = (find_column(&headers, key_col), find_column(&headers, guid_col)) {
            chosen = Some((delimiter, k, g));
            break;
        }
        first_headers.get_or_insert(headers);
    }
    let Some((delimiter, key_idx, guid_idx)) = chosen else {
        let headers = first_headers.unwrap_or_default();
        if headers.is_empty() || headers.iter().all(String::is_empty) {
            return Err(Problem(format!("{file}: no header row (expected columns `{key_col}` and `{guid_col}`)")));
        }
        let missing: Vec<&str> =
            [key_col, guid_col].into_iter().filter(|c| find_column(&headers, c).is_none()).collect();
        let missing = missing.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" and ");
        return Err(Problem(format!("{file}: no column {missing} in the header row")));
    };

    let mut reader = csv_reader(bytes, delimiter);
    let mut table = Table::default();
    let mut tolerated = Tolerated::default();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(Problem(format!("{file}: {}", csv_error(&e)))),
        }
        let line = record.position().map_or(0, |p| p.line());
        let cell = |i: usize| String::from_utf8_lossy(record.get(i).unwrap_or_default()).trim().to_string();
        let (key, guid) = (cell(key_idx), cell(guid_idx));
        if key.is_empty() {
            continue;
        }
        if guid.is_empty() {
            tolerated.empty_guid_lines.push(line);
            continue;
        }
        table.map.entry(key).or_default().insert(guid);
    }
    Ok((table, tolerated))
}

fn csv_reader(bytes: &[u8], delimiter: u8) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

fn read_headers(bytes: &[u8], delimiter: u8, file: &str) -> Result<Vec<String>, Problem> {
    let mut reader = csv_reader(bytes, delimiter);
    let headers = reader.byte_headers().map_err(|e| Problem(format!("{file}: {}", csv_error(&e))))?;
    Ok(headers.iter().map(|h| String::from_utf8_lossy(h).trim().to_string()).collect())
}

/// Exact match first, then ASCII case-insensitive if that is unique.
fn find_column(headers: &[String], name: &str) -> Option<usize> {
    if let Some(i) = headers.iter().position(|h| h == name) {
        return Some(i);
    }
    let mut matches = headers.iter().enumerate().filter(|(_, h)| h.eq_ignore_ascii_case(name));
    match (matches.next(), matches.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// A csv error without cell contents (they may be card ids).
fn csv_error(e: &csv::Error) -> String {
    let at = e.position().map(|p| format!(" at line {}", p.line())).unwrap_or_default();
    match e.kind() {
        csv::ErrorKind::Io(io) => format!("read error{at}: {io}"),
        csv::ErrorKind::Utf8 { .. } => format!("invalid UTF-8{at}"),
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("row{at} has {len} fields, expected {expected_len}")
        }
        _ => format!("malformed CSV{at}"),
    }
}

/// Largest file accepted (the whole file is held in memory).
const MAX_BYTES: u64 = 256 << 20;

fn load(config: &Config) -> Result<Table, StageError> {
    let file = config.file_name();
    let target = FileRef { root: config.root.clone(), path: config.path.clone() };
    let mut reader = FileReader::open(&target).context(format_args!("opening {file}"))?;
    if reader.size() > MAX_BYTES {
        return Err(permanent(format!("{file}: {} bytes is too large (at most {MAX_BYTES})", reader.size())));
    }
    let mut bytes = Vec::with_capacity(reader.size() as usize);
    if let Err(e) = reader.read_to_end(&mut bytes) {
        return match reader.take_error() {
            Some(host) => Err(host).context(format_args!("reading {file}")),
            None => Err(permanent(format!("reading {file}: {e}"))),
        };
    }
    let (table, tolerated) = parse_table(&bytes, config, &file).map_err(|Problem(m)| permanent(m))?;
    for line in &tolerated.empty_guid_lines {
        warn(&format!("{file}: line {line} has an empty `{}` cell; row ignored", config.guid_column.trim()));
    }
    ferry_plugin_sdk::info(&format!("{file}: {} keys loaded", table.len()));
    Ok(table)
}

/// The configured stage.
struct CsvResolver {
    config: Config,
    /// The loaded table and the file's (size, modified) when it was read.
    table: Option<((u64, Option<u64>), Table)>,
}

impl Resolver for CsvResolver {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        config.validate()?;
        Ok(CsvResolver { config, table: None })
    }

    fn resolve(&mut self, keys: Vec<PatientKey>) -> Result<Vec<Resolution>, StageError> {
        // Instances may live across runs: re-read the file when it changed.
        let target = FileRef { root: self.config.root.clone(), path: self.config.path.clone() };
        let entry = fs::stat(&target).context(format_args!("looking at {}", self.config.file_name()))?;
        let stamp = (entry.size, entry.modified);
        if self.table.as_ref().is_none_or(|(seen, _)| *seen != stamp) {
            self.table = Some((stamp, load(&self.config)?));
        }
        let (_, table) = self.table.as_ref().expect("loaded above");
        Ok(keys
            .iter()
            .map(|k| if k.scheme == self.config.scheme { table.resolve(&k.value) } else { Resolution::Unsupported })
            .collect())
    }
}

ferry_plugin_sdk::resolver_plugin!(CsvResolver);

#[cfg(test)]
mod tests;
