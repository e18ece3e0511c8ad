//! The manifest: which file is which patient's document, CSV or JSON.
//!
//! Structural problems (no header, unknown or missing columns, JSON that
//! is not an array of objects) are errors of the whole manifest; problems
//! of one row (a cell that is not UTF-8, more cells than the header) stay
//! with the row, which then becomes a `fail` notice. Messages never quote
//! cell contents: they may be patient ids.
use crate::config::Format;

/// Largest manifest accepted (it is held in memory).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// The columns (CSV) or fields (JSON) of a manifest.
pub const FIELDS: [&str; 7] = ["file", "patient", "type", "date", "title", "author", "patient_scheme"];

/// One row of the manifest, cells trimmed, empty cells `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// CSV: the row as a spreadsheet numbers it (the header is row 1).
    /// JSON: the entry's position in the array, from 1.
    pub number: u64,
    pub file: Option<String>,
    pub patient: Option<String>,
    pub kind: Option<String>,
    pub date: Option<String>,
    pub title: Option<String>,
    pub author: Option<String>,
    pub patient_scheme: Option<String>,
    /// Why this row cannot be used, if it cannot.
    pub problem: Option<String>,
}

impl Row {
    fn set(&mut self, field: &str, value: Option<String>) {
        let value = value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        match field {
            "file" => self.file = value,
            "patient" => self.patient = value,
            "type" => self.kind = value,
            "date" => self.date = value,
            "title" => self.title = value,
            "author" => self.author = value,
            "patient_scheme" => self.patient_scheme = value,
            _ => unreachable!("only FIELDS are set"),
        }
    }

    fn is_empty(&self) -> bool {
        [&self.file, &self.patient, &self.kind, &self.date, &self.title, &self.author, &self.patient_scheme]
            .iter()
            .all(|v| v.is_none())
    }
}

/// The word for a row in messages: `row 3` (CSV), `entry 3` (JSON).
pub fn noun(format: Format) -> &'static str {
    match format {
        Format::Csv => "row",
        Format::Json => "entry",
    }
}

/// Parses a whole manifest; `name` names it in messages.
pub fn parse(bytes: &[u8], format: Format, name: &str) -> Result<Vec<Row>, String> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large(name, bytes.len() as u64));
    }
    match format {
        Format::Csv => parse_csv(bytes, name),
        Format::Json => parse_json(bytes, name),
    }
}

/// The error for a manifest over [`MAX_MANIFEST_BYTES`].
pub fn too_large(name: &str, size: u64) -> String {
    format!(
        "manifest {name} is {size} bytes, more than the {} MiB a manifest may have: split the drop folder \
         into several sources, each with its own manifest",
        MAX_MANIFEST_BYTES >> 20
    )
}

fn unknown(name: &str, what: &str, unknown: &[String]) -> String {
    let list: Vec<String> = unknown.iter().map(|u| format!("`{u}`")).collect();
    format!("manifest {name}: unknown {what} {}; the {what}s are {}", list.join(", "), FIELDS.join(", "))
}

fn csv_reader(bytes: &[u8], delimiter: u8) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

/// CSV with a header row. The delimiter is `,`, or `;` or tab when only
/// that makes a header with `file` and `patient` (Excel in many European
/// locales writes `;`). Column names are matched ASCII case-insensitively.
fn parse_csv(bytes: &[u8], name: &str) -> Result<Vec<Row>, String> {
    let mut chosen = None;
    let mut first = None;
    for delimiter in [b',', b';', b'\t'] {
        let mut reader = csv_reader(bytes, delimiter);
        let headers = reader.byte_headers().map_err(|e| format!("manifest {name}: {}", csv_error(&e)))?;
        let headers: Vec<String> = headers.iter().map(|h| String::from_utf8_lossy(h).trim().to_string()).collect();
        let has = |c: &str| headers.iter().any(|h| h.eq_ignore_ascii_case(c));
        if has("file") && has("patient") {
            chosen = Some((delimiter, headers));
            break;
        }
        first.get_or_insert(headers);
    }
    let Some((delimiter, headers)) = chosen else {
        let headers = first.unwrap_or_default();
        if headers.iter().all(String::is_empty) {
            return Err(format!("manifest {name}: no header row (the columns `file` and `patient` are required)"));
        }
        let missing: Vec<&str> =
            ["file", "patient"].into_iter().filter(|c| !headers.iter().any(|h| h.eq_ignore_ascii_case(c))).collect();
        let missing: Vec<String> = missing.iter().map(|c| format!("`{c}`")).collect();
        return Err(format!("manifest {name}: no column {} in the header row", missing.join(" and ")));
    };
    // each header cell: the field it is, or none (an empty header cell,
    // as spreadsheets leave after the last column)
    let mut columns: Vec<Option<&'static str>> = Vec::new();
    let mut unknown_columns = Vec::new();
    for h in &headers {
        if h.is_empty() {
            columns.push(None);
            continue;
        }
        match FIELDS.iter().find(|f| f.eq_ignore_ascii_case(h)) {
            Some(f) if columns.contains(&Some(*f)) => {
                return Err(format!("manifest {name}: the column `{f}` appears twice in the header row"));
            }
            Some(f) => columns.push(Some(*f)),
            None => unknown_columns.push(h.clone()),
        }
    }
    if !unknown_columns.is_empty() {
        return Err(unknown(name, "column", &unknown_columns));
    }

    let mut reader = csv_reader(bytes, delimiter);
    let mut record = csv::ByteRecord::new();
    let mut rows = Vec::new();
    let mut number = 1u64;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(format!("manifest {name}: {}", csv_error(&e))),
        }
        number += 1;
        let mut row = Row { number, ..Row::default() };
        let mut bad_utf8 = false;
        for (i, cell) in record.iter().enumerate() {
            match columns.get(i) {
                Some(Some(field)) => match std::str::from_utf8(cell) {
                    Ok(text) => row.set(field, Some(text.to_string())),
                    Err(_) => {
                        bad_utf8 = true;
                        row.set(field, Some(String::from_utf8_lossy(cell).into_owned()));
                    }
                },
                Some(None) => {}
                None if cell.iter().all(u8::is_ascii_whitespace) => {}
                None => {
                    row.problem = Some(format!(
                        "manifest row {number} has more cells than the header row ({}): put a cell that \
                         contains `{}` in double quotes",
                        headers.len(),
                        delimiter as char
                    ));
                }
            }
        }
        if bad_utf8 && row.problem.is_none() {
            row.problem = Some(format!("manifest row {number} is not valid UTF-8: save the manifest as UTF-8"));
        }
        if row.is_empty() && row.problem.is_none() {
            continue;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A csv error without cell contents (they may be patient ids).
fn csv_error(e: &csv::Error) -> String {
    let at = e.position().map(|p| format!(" at line {}", p.line())).unwrap_or_default();
    match e.kind() {
        csv::ErrorKind::Io(io) => format!("read error{at}: {io}"),
        csv::ErrorKind::Utf8 { .. } => format!("invalid UTF-8{at}: save the manifest as UTF-8"),
        _ => format!("malformed CSV{at}"),
    }
}

/// JSON: an array of objects with the fields of [`FIELDS`], string values
/// (`patient` may be a number; `null` is an empty cell).
fn parse_json(bytes: &[u8], name: &str) -> Result<Vec<Row>, String> {
    use serde_json::Value;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf".as_slice()).unwrap_or(bytes);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        format!("manifest {name}: not valid JSON at line {} column {}: {:?}", e.line(), e.column(), e.classify())
    })?;
    let Value::Array(entries) = value else {
        return Err(format!("manifest {name}: expected a JSON array of objects, one per file"));
    };
    let mut rows = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let number = i as u64 + 1;
        let Value::Object(fields) = entry else {
            return Err(format!("manifest {name}: entry {number} is not an object"));
        };
        let unknown_fields: Vec<String> = fields.keys().filter(|k| !FIELDS.contains(&k.as_str())).cloned().collect();
        if !unknown_fields.is_empty() {
            return Err(format!("{} (entry {number})", unknown(name, "field", &unknown_fields)));
        }
        let mut row = Row { number, ..Row::default() };
        for (key, value) in fields {
            let field = *FIELDS.iter().find(|f| **f == key).expect("checked above");
            let text = match value {
                Value::Null => None,
                Value::String(s) => Some(s),
                Value::Number(n) if field == "patient" => Some(n.to_string()),
                _ => return Err(format!("manifest {name}: entry {number}: `{field}` must be a string")),
            };
            row.set(field, text);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// An ISO 8601 calendar date (`2024-03-07`) or date-time
/// (`2024-03-07T14:30`, with optional seconds, fraction and `Z` or
/// `±hh:mm`), each part in range (`2023-02-29` is not a date).
pub fn is_iso_date(s: &str) -> bool {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    valid_date(date) && time.is_none_or(valid_time)
}

fn number(s: &str, digits: usize) -> Option<u32> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn valid_date(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Some(y), Some(m), Some(d)) = (number(y, 4), number(m, 2), number(d, 2)) else { return false };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

fn valid_time(s: &str) -> bool {
    // the zone: `Z`, `+hh:mm`, `-hh:mm`, or none (local time)
    let (clock, zone) = if let Some(c) = s.strip_suffix('Z') {
        (c, None)
    } else if let Some(i) = s.rfind(['+', '-']) {
        (&s[..i], Some(&s[i + 1..]))
    } else {
        (s, None)
    };
    if let Some(zone) = zone {
        let Some((h, m)) = zone.split_once(':') else { return false };
        let (Some(h), Some(m)) = (number(h, 2), number(m, 2)) else { return false };
        if h > 14 || m > 59 {
            return false;
        }
    }
    let (clock, fraction) = match clock.split_once('.') {
        Some((c, f)) => (c, Some(f)),
        None => (clock, None),
    };
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let parts: Vec<&str> = clock.split(':').collect();
    let limits = [23, 59, 60];
    if !(2..=3).contains(&parts.len()) || fraction.is_some() && parts.len() != 3 {
        return false;
    }
    parts.iter().zip(limits).all(|(p, max)| number(p, 2).is_some_and(|n| n <= max))
}
