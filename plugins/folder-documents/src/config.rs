//! The stage's `[config]` table and what `configure` makes of it.
use std::collections::BTreeMap;

use ferry_plugin_sdk::types::{Coding, StageError};
use ferry_plugin_sdk::{parse_config, permanent, serde};

/// The code system of LOINC, the default `system` of a coding.
pub const LOINC: &str = "http://loinc.org";

/// Largest `page_size`: a page is one plugin call.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The stage's `[config]` table, as the clinic writes it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// Name of the fs grant holding the drop folder.
    pub root: String,
    /// Path (inside `root`) of a `.csv` or `.json` manifest.
    #[serde(default)]
    pub manifest: Option<String>,
    /// Path pattern, e.g. `{patient}/{type}/{file}`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Scheme of the patient keys.
    #[serde(default = "default_key_scheme")]
    pub key_scheme: String,
    /// Folder name or manifest `type` value → coding.
    #[serde(default)]
    pub types: BTreeMap<String, CodingConfig>,
    /// Coding of documents that name no type.
    #[serde(default)]
    pub default_type: Option<CodingConfig>,
    /// Documents per `scan` page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

/// A coding as written in the config: `{ system, code, display }`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct CodingConfig {
    #[serde(default = "default_system")]
    pub system: String,
    pub code: String,
    /// Defaults to the code.
    #[serde(default)]
    pub display: Option<String>,
}

fn default_key_scheme() -> String {
    "provider-patient-id".into()
}
fn default_page_size() -> u32 {
    200
}
fn default_system() -> String {
    LOINC.into()
}

/// How a file finds its patient and type.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// A manifest file inside the root (normalised relative path).
    Manifest { path: String, format: Format },
    /// Path segments.
    Pattern(Pattern),
}

/// A manifest's format, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: String,
    pub mode: Mode,
    pub key_scheme: String,
    pub types: BTreeMap<String, Coding>,
    pub default_type: Option<Coding>,
    pub page_size: usize,
}

impl Config {
    /// Parses and validates the JSON config (what `configure` does).
    pub fn parse(json: &str) -> Result<Settings, StageError> {
        let config: Config = parse_config(json)?;
        config.validate()
    }

    /// Checks every key; the error names the key and the fix.
    pub fn validate(self) -> Result<Settings, StageError> {
        let bad = |key: &str, why: String| permanent(format!("invalid [config] {key}: {why}"));
        if self.root.trim().is_empty() {
            return Err(bad("root", "must name an fs grant".into()));
        }
        if self.key_scheme.trim().is_empty() {
            return Err(bad("key_scheme", "must not be empty".into()));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(bad("page_size", format!("{} is outside 1..={MAX_PAGE_SIZE}", self.page_size)));
        }
        let mode = match (&self.manifest, &self.pattern) {
            (Some(_), Some(_)) => {
                return Err(permanent("invalid [config]: give either `manifest` or `pattern`, not both"));
            }
            (None, None) => {
                return Err(permanent(
                    "invalid [config]: give `manifest` (a .csv or .json file in the folder) or `pattern` \
                     (e.g. \"{patient}/{type}/{file}\")",
                ));
            }
            (Some(m), None) => {
                let path = normalise_path(m).ok_or_else(|| {
                    bad("manifest", format!("{m:?} is not a relative path inside the root (no `..`, no leading `/`)"))
                })?;
                let lower = path.to_ascii_lowercase();
                let format = if lower.ends_with(".csv") {
                    Format::Csv
                } else if lower.ends_with(".json") {
                    Format::Json
                } else {
                    return Err(bad("manifest", format!("{m:?} must end in .csv or .json (that says its format)")));
                };
                Mode::Manifest { path, format }
            }
            (None, Some(p)) => Mode::Pattern(Pattern::parse(p).map_err(|why| bad("pattern", why))?),
        };
        let mut types = BTreeMap::new();
        for (name, coding) in &self.types {
            if name.trim().is_empty() {
                return Err(bad("types", "a key is empty".into()));
            }
            let coding = coding.to_coding().map_err(|why| bad(&format!("types.{name}"), why))?;
            types.insert(name.trim().to_string(), coding);
        }
        let default_type = match &self.default_type {
            Some(c) => Some(c.to_coding().map_err(|why| bad("default_type", why))?),
            None => None,
        };
        Ok(Settings {
            root: self.root.trim().to_string(),
            mode,
            key_scheme: self.key_scheme.trim().to_string(),
            types,
            default_type,
            page_size: self.page_size as usize,
        })
    }
}

impl CodingConfig {
    fn to_coding(&self) -> Result<Coding, String> {
        let (system, code) = (self.system.trim(), self.code.trim());
        if system.is_empty() {
            return Err("`system` must not be empty".into());
        }
        if code.is_empty() {
            return Err("`code` must not be empty".into());
        }
        if system == LOINC && !is_loinc(code) {
            return Err(format!(
                "`code` {code:?} is not a LOINC code (digits, `-`, a check digit, e.g. 11502-2); \
                 for another code system set `system`"
            ));
        }
        let display = self.display.as_deref().map(str::trim).filter(|d| !d.is_empty()).unwrap_or(code);
        Ok(Coding { system: system.into(), code: code.into(), display: display.into() })
    }
}

impl Settings {
    /// The coding of a folder name or manifest `type` value: a key of
    /// `types` (exactly, else ASCII case-insensitively if that is unique),
    /// else a LOINC code as it is. The error says what would fix it.
    pub fn coding_for(&self, value: &str) -> Result<Coding, String> {
        let value = value.trim();
        if let Some(c) = self.types.get(value) {
            return Ok(c.clone());
        }
        let mut matches = self.types.iter().filter(|(k, _)| k.eq_ignore_ascii_case(value));
        if let (Some((_, c)), None) = (matches.next(), matches.next()) {
            return Ok(c.clone());
        }
        if is_loinc(value) {
            return Ok(Coding { system: LOINC.into(), code: value.into(), display: value.into() });
        }
        let keys: Vec<&str> = self.types.keys().map(String::as_str).collect();
        let known = if keys.is_empty() { "none configured".to_string() } else { keys.join(", ") };
        Err(format!(
            "type `{value}` is neither a key of [config] types ({known}) nor a LOINC code (like 11502-2): \
             add it to [config] types"
        ))
    }
}

/// A LOINC code: 1–7 digits, `-`, the mod-10 check digit (`11502-2`).
pub fn is_loinc(code: &str) -> bool {
    let Some((number, check)) = code.split_once('-') else { return false };
    if number.is_empty() || number.len() > 7 || check.len() != 1 {
        return false;
    }
    if !number.bytes().chain(check.bytes()).all(|b| b.is_ascii_digit()) {
        return false;
    }
    // Luhn over the number: double every other digit from the right.
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let twice = d * 2;
                twice / 10 + twice % 10
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10 == u32::from(check.as_bytes()[0] - b'0')
}

/// A relative path with `/` separators: `\` becomes `/`, a leading `./`
/// and empty segments go; `None` for absolute paths, `..`, or nothing.
pub fn normalise_path(path: &str) -> Option<String> {
    let path = path.trim().replace('\\', "/");
    // `/x` and Windows drive paths (`C:/x`) are absolute
    if path.starts_with('/') || path.as_bytes().get(1) == Some(&b':') {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if segments.is_empty() || segments.contains(&"..") {
        return None;
    }
    Some(segments.join("/"))
}

/// One segment of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Patient,
    Type,
    File,
    Literal(String),
}

/// `{patient}/{type}/{file}`: whole path segments, `{patient}` once,
/// `{type}` at most once, `{file}` last; other segments must match as
/// they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub segments: Vec<Segment>,
}

/// What a path that matches a pattern says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternMatch<'a> {
    pub patient: &'a str,
    pub kind: Option<&'a str>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let text = text.trim();
        let mut segments = Vec::new();
        for part in text.split('/') {
            let segment = match part {
                "{patient}" => Segment::Patient,
                "{type}" => Segment::Type,
                "{file}" => Segment::File,
                "" | "." | ".." => return Err(format!("{text:?} has an empty, `.` or `..` segment")),
                p if p.contains(['{', '}']) => {
                    return Err(format!(
                        "segment {p:?} of {text:?}: placeholders are whole segments, one of {{patient}}, \
                         {{type}}, {{file}}"
                    ))
                }
                p => Segment::Literal(p.to_string()),
            };
            segments.push(segment);
        }
        let count = |s: &Segment| segments.iter().filter(|x| *x == s).count();
        if count(&Segment::Patient) != 1 {
            return Err(format!("{text:?} must contain {{patient}} exactly once"));
        }
        if count(&Segment::Type) > 1 {
            return Err(format!("{text:?} may contain {{type}} at most once"));
        }
        if count(&Segment::File) != 1 || segments.last() != Some(&Segment::File) {
            return Err(format!("{text:?} must end with {{file}} (the file name), once"));
        }
        Ok(Pattern { text: text.to_string(), segments })
    }

    /// The patient and type of `path`, if it matches.
    pub fn matches<'a>(&self, path: &'a str) -> Option<PatternMatch<'a>> {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut found = PatternMatch { patient: "", kind: None };
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Patient => found.patient = part,
                Segment::Type => found.kind = Some(part),
                Segment::File => {}
                Segment::Literal(l) => {
                    if l != part {
                        return None;
                    }
                }
            }
        }
        (!found.patient.trim().is_empty()).then_some(found)
    }
}
