//! The logic of ferry's store plugins, whatever the destination.
//!
//! A store plugin puts each item into the object store the host grants (a
//! local folder, an S3 bucket: the pipeline's `grants.object_store` decides,
//! not the plugin) under a key built from a template, with a JSON sidecar
//! describing it. The `store` plugin is a thin crate over this one: its
//! [`Store`](ferry_plugin_sdk::Store) implementation and the
//! `store_plugin!` export.
//!
//! Idempotent: every object carries `ferry-item-id` metadata. An object
//! already at the key for the same item with the same content is left
//! alone (`unchanged`); different content of the same item overwrites it;
//! an object of another item (or of nobody) at the key is never touched:
//! the item goes to `{stem}~{8 hex of sha256(item id)}{ext}` instead.
//! New keys are claimed with `put-file-new`, so two instances storing
//! items with the same name cannot overwrite each other.
//!
//! "Same content" compares the SHA-256 of the item's file (computed by
//! the host) with the object's `object-info.sha256` (the host's S3 backend
//! keeps it as `ferry-sha256` user metadata); an object whose store knows
//! no checksum is rewritten (or, if it has no owner, left alone).
//!
//! Keys are boring: clinics copy buckets to Windows and Unix disks with
//! ordinary tools, so every segment ferry makes is a plain file name there
//! (no `..`, no leading dot, no trailing dot or space, no control
//! characters, none of `/\<>:"|?*`, no device name such as `CON` or
//! `com1.dcm`, at most [`MAX_SEGMENT`] bytes; see [`defect`]). Each value
//! is made so by [`sanitise`], literal template text is checked when the
//! pipeline is configured, and every key is checked again before use. A
//! name that was already boring keeps the key it always had, so changing
//! these rules never re-uploads an existing object under a new key.
//!
//! The sidecar goes **with the object** by default, as its
//! `ferry-sidecar` user metadata (see [`Sidecar::Inline`]): the retrieval
//! side reads it with the HEAD it needs anyway, and a new image costs one
//! request instead of two — the second PUT was half of a first pass over
//! small intra-oral images. A description too big for the store's metadata
//! limit goes to a separate `{key}.json` object, as `sidecar = "object"`
//! always does.
//!
//! The logic is written against the small [`Backend`] trait so that it can
//! be tested without a host; [`HostBackend`] is the real one.
use std::collections::BTreeMap;

use ferry_plugin_sdk::object_store::{self, ObjectInfo};
use ferry_plugin_sdk::types::{FileRef, HostError, Item, Metadata, StageError, Value};
use ferry_plugin_sdk::{debug, fs, parse_config, permanent, serde, serde_json, Context};
use sha2::{Digest, Sha256};

/// The `[config]` table of a store plugin.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `key` | [`Profile::default_key`] | key template: `{patientGuid}`, `{imageName}`, `{itemId}`, `{modality}`, `{clinicId}` |
/// | `sidecar` | `"inline"` | where the JSON describing the item goes: `"inline"` with the object (its `ferry-sidecar` metadata; `{key}.json` when too big), `"object"` always `{key}.json`, `"off"` nowhere (`true`/`false` mean `"object"`/`"off"`) |
/// | `clinic_id` | none | value of `{clinicId}`; required if the template uses it |
/// | `max_key_bytes` | 1024 | longest object key (sidecar key included), for stores with a shorter limit than S3's 1024 |
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub key: Option<String>,
    /// A string or a bool: see [`Sidecar::parse`].
    pub sidecar: Option<serde_json::Value>,
    pub clinic_id: Option<String>,
    pub max_key_bytes: Option<usize>,
}

/// The `[config]` defaults of a store plugin built on this crate.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Key template when the config has none.
    pub default_key: &'static str,
    /// Sidecar when the config does not say.
    pub default_sidecar: Sidecar,
}

/// `store`'s defaults, whatever the granted store (a folder, an S3 bucket).
pub const PROFILE: Profile =
    Profile { default_key: "images/{patientGuid}/{imageName}", default_sidecar: Sidecar::Inline };

/// Where the JSON describing an item goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sidecar {
    /// With the object, as its [`SIDECAR_META`] user metadata: the
    /// description without `key`, `sha256` and `size` (the object's own
    /// key, `ferry-sha256` and size), compact JSON percent-encoded by
    /// [`meta_encode`]. When it does not fit in [`MAX_METADATA_BYTES`], a
    /// `{key}.json` object instead, as [`Sidecar::Object`]. An unchanged
    /// object stored without one (by an older ferry) keeps its `{key}.json`.
    Inline,
    /// Always a separate `{key}.json` object (for readers of the bucket
    /// that expect files).
    Object,
    /// No description at all.
    Off,
}

impl Sidecar {
    /// `sidecar` of `[config]`: `"inline"`, `"object"`, `"off"`, or the
    /// older `true` (= `"object"`) and `false` (= `"off"`).
    pub fn parse(v: &serde_json::Value) -> Result<Sidecar, StageError> {
        use serde_json::Value as J;
        match v {
            J::Bool(true) => Ok(Sidecar::Object),
            J::Bool(false) => Ok(Sidecar::Off),
            J::String(s) if s == "inline" => Ok(Sidecar::Inline),
            J::String(s) if s == "object" => Ok(Sidecar::Object),
            J::String(s) if s == "off" => Ok(Sidecar::Off),
            other => Err(permanent(format!(
                "invalid [config] sidecar: {other}; expected \"inline\" (the default: with the object, as its \
                 {SIDECAR_META} metadata), \"object\" (a separate {{key}}.json) or \"off\""
            ))),
        }
    }
}

/// Object keys are at most this long (S3's limit and the host's rule).
pub const MAX_KEY: usize = 1024;
/// Smallest `max_key_bytes` accepted.
pub const MIN_KEY: usize = 64;
/// Each segment at most this long (file systems refuse longer names).
pub const MAX_SEGMENT: usize = 255;
/// Room kept for the sidecar's `.json`.
const SIDECAR_SUFFIX: &str = ".json";
/// The metadata key tying an object to its item.
pub const ITEM_ID_META: &str = "ferry-item-id";
/// The metadata key of an inline sidecar ([`Sidecar::Inline`]).
pub const SIDECAR_META: &str = "ferry-sidecar";
/// Most user metadata (keys + values, in bytes) the host's stores take for
/// one object: S3 allows 2 KiB, and the host keeps room for its own
/// `ferry-sha256`.
pub const MAX_METADATA_BYTES: usize = 1900;

/// A configured store: what `configure` decided.
#[derive(Debug, Clone)]
pub struct Settings {
    pub template: Template,
    pub sidecar: Sidecar,
    /// Sanitised `clinic_id`.
    pub clinic_id: Option<String>,
    pub max_key: usize,
}

impl Settings {
    /// Validates a plugin's `[config]` JSON against `profile`'s defaults.
    pub fn configure(json: &str, profile: &Profile) -> Result<Settings, StageError> {
        let config: Config = parse_config(json)?;
        Settings::new(config, profile)
    }

    pub fn new(config: Config, profile: &Profile) -> Result<Settings, StageError> {
        let template = Template::parse(config.key.as_deref().unwrap_or(profile.default_key))?;
        let clinic_id = match config.clinic_id {
            Some(c) if c.trim().is_empty() => {
                return Err(permanent("invalid [config] clinic_id: must not be empty"));
            }
            Some(c) => Some(sanitise(&c)),
            None if template.uses(Placeholder::ClinicId) => {
                return Err(permanent("invalid [config]: the key template uses {clinicId}, so clinic_id must be set"));
            }
            None => None,
        };
        let max_key = config.max_key_bytes.unwrap_or(MAX_KEY);
        if !(MIN_KEY..=MAX_KEY).contains(&max_key) {
            return Err(permanent(format!(
                "invalid [config] max_key_bytes: {max_key} is outside {MIN_KEY}..={MAX_KEY}"
            )));
        }
        let sidecar = match &config.sidecar {
            Some(v) => Sidecar::parse(v)?,
            None => profile.default_sidecar,
        };
        Ok(Settings { template, sidecar, clinic_id, max_key })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placeholder {
    PatientGuid,
    ImageName,
    ItemId,
    Modality,
    ClinicId,
}

impl Placeholder {
    const ALL: [(&'static str, Placeholder); 5] = [
        ("patientGuid", Placeholder::PatientGuid),
        ("imageName", Placeholder::ImageName),
        ("itemId", Placeholder::ItemId),
        ("modality", Placeholder::Modality),
        ("clinicId", Placeholder::ClinicId),
    ];
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Value(Placeholder),
}

/// A parsed key template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(template: &str) -> Result<Template, StageError> {
        let bad = |why: String| permanent(format!("invalid [config] key {template:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let open = rest.find('{');
            let close = rest.find('}');
            match (open, close) {
                (None, None) => {
                    parts.push(Part::Literal(rest.to_string()));
                    break;
                }
                (None, Some(_)) => return Err(bad("`}` without `{`".into())),
                (Some(o), Some(c)) if c < o => return Err(bad("`}` without `{`".into())),
                (Some(o), Some(c)) => {
                    let name = &rest[o + 1..c];
                    if name.contains('{') {
                        return Err(bad("`{` inside a placeholder".into()));
                    }
                    let Some((_, p)) = Placeholder::ALL.iter().find(|(n, _)| *n == name) else {
                        let known: Vec<String> = Placeholder::ALL.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                        return Err(bad(format!("unknown placeholder {{{name}}} (known: {})", known.join(", "))));
                    };
                    if o > 0 {
                        parts.push(Part::Literal(rest[..o].to_string()));
                    }
                    parts.push(Part::Value(*p));
                    rest = &rest[c + 1..];
                }
                (Some(_), None) => return Err(bad("`{` without `}`".into())),
            }
        }
        let t = Template { parts };
        // Literal text must make a valid key whatever the values are, and
        // a boring one: values never start or end with a dot or a blank,
        // so a sample value shows every defect literal text can cause
        // (a device name made of literal and value is fixed per key).
        let sample = t.render(|_| "x".to_string());
        if let Err(why) = check_key(&sample) {
            return Err(bad(why));
        }
        if let Some((segment, why)) = sample.split('/').find_map(|seg| defect(seg).map(|why| (seg, why))) {
            let shown = if t.parts.iter().any(|p| matches!(p, Part::Value(_))) {
                format!("segment {segment:?} (with `x` for each placeholder)")
            } else {
                format!("segment {segment:?}")
            };
            return Err(bad(format!("{shown} {why}: keys must be plain file and folder names")));
        }
        if !t.parts.iter().any(|p| matches!(p, Part::Value(v) if *v != Placeholder::ClinicId)) {
            return Err(bad("no per-item placeholder: every item would get the same key".into()));
        }
        Ok(t)
    }

    /// Does the template use `p`?
    pub fn uses(&self, p: Placeholder) -> bool {
        self.parts.contains(&Part::Value(p))
    }

    fn render(&self, value: impl Fn(Placeholder) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Value(p) => out.push_str(&value(*p)),
            }
        }
        out
    }
}

/// Why a key is not acceptable to the host, if it is not.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("empty path segment (leading, trailing or doubled `/`)".into()),
            "." | ".." => return Err(format!("`{segment}` path segment")),
            _ => {}
        }
    }
    Ok(())
}

/// Characters Windows refuses in a file name (`/` separates key segments).
const REFUSED: [char; 9] = ['/', '\\', '<', '>', ':', '"', '|', '?', '*'];

/// Names Windows gives to devices: a file called `CON`, `con.dcm` or
/// `Nul .tar.gz` cannot be created or copied there. Microsoft's list
/// ("Naming Files, Paths, and Namespaces") plus `CONIN$`/`CONOUT$`, which
/// `CreateFile` also treats as devices.
const DEVICE_NAMES: [&str; 32] = [
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    "COM0",
    "COM1",
    "COM2",
    "COM3",
    "COM4",
    "COM5",
    "COM6",
    "COM7",
    "COM8",
    "COM9",
    "COM\u{b9}",
    "COM\u{b2}",
    "COM\u{b3}",
    "LPT0",
    "LPT1",
    "LPT2",
    "LPT3",
    "LPT4",
    "LPT5",
    "LPT6",
    "LPT7",
    "LPT8",
    "LPT9",
    "LPT\u{b9}",
    "LPT\u{b2}",
    "LPT\u{b3}",
];

/// Is `segment`'s stem a device name? Windows looks at the part before
/// the first dot, ignores trailing spaces and case.
fn is_device_name(segment: &str) -> bool {
    let stem = segment.split('.').next().unwrap_or(segment).trim_end_matches(' ');
    DEVICE_NAMES.iter().any(|d| stem.eq_ignore_ascii_case(d))
}

/// Why `segment` would not be a boring file name on Windows and Unix disks
/// (or in tools that copy keys there), if it would not. Length is checked
/// separately ([`is_boring`]).
pub fn defect(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        Some("is empty")
    } else if segment.contains("..") {
        Some("contains `..`")
    } else if segment.starts_with('.') {
        Some("starts with a dot")
    } else if segment.ends_with(['.', ' ']) {
        Some("ends with a dot or a space")
    } else if segment.chars().any(char::is_control) {
        Some("contains a control character")
    } else if segment.contains(REFUSED) {
        Some("contains one of `/\\<>:\"|?*`")
    } else if is_device_name(segment) {
        Some("is a Windows device name (CON, PRN, AUX, NUL, COM1, LPT1, ...)")
    } else {
        None
    }
}

/// Can `segment` be a file or folder name everywhere a clinic syncs its
/// bucket to: no [`defect`], at most [`MAX_SEGMENT`] bytes.
pub fn is_boring(segment: &str) -> bool {
    segment.len() <= MAX_SEGMENT && defect(segment).is_none()
}

/// What `sanitise` has always done (kept byte for byte, so that every
/// name it already made boring keeps its key): `/\<>:"|?*` and control
/// characters become `_`; surrounding blanks, leading dots and trailing
/// dots and spaces go; `_` if nothing is left.
fn replace_and_trim(value: &str) -> String {
    let replaced: String = value
        .chars()
        .map(|c| match c {
            c if REFUSED.contains(&c) => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    let trimmed = replaced.trim().trim_start_matches('.').trim_end_matches(['.', ' ']).trim();
    if trimmed.is_empty() {
        "_".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Removes what [`replace_and_trim`] leaves and [`defect`] refuses: every
/// run of two or more dots becomes `_`; the ends are trimmed until no
/// blank, leading dot or trailing dot/space is left; a device-name stem
/// gets `_` after it (`CON.dcm` → `CON_.dcm`).
fn make_boring(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut dots = 0;
    let flush = |out: &mut String, dots: usize| match dots {
        0 => {}
        1 => out.push('.'),
        _ => out.push('_'),
    };
    for c in s.chars() {
        if c == '.' {
            dots += 1;
        } else {
            flush(&mut out, dots);
            dots = 0;
            out.push(c);
        }
    }
    flush(&mut out, dots);
    loop {
        let t = out.trim().trim_start_matches('.').trim_end_matches(['.', ' ']);
        if t.len() == out.len() {
            break;
        }
        out = t.to_string();
    }
    if out.is_empty() {
        out.push('_');
    }
    if is_device_name(&out) {
        let at = out.find('.').unwrap_or(out.len());
        out.insert(at, '_');
    }
    out
}

/// `name~1a2b3c4d.ext` (or `name~1a2b3c4d` without an extension).
fn with_hash(name: &str, hash: &str) -> String {
    let at = match name.rfind('.') {
        Some(dot)
            if dot > 0
                && (2..=11).contains(&(name.len() - dot))
                && name[dot + 1..].bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            dot
        }
        _ => name.len(),
    };
    format!("{}~{hash}{}", &name[..at], &name[at..])
}

/// One substituted value (`{imageName}`, `{itemId}`, `{modality}`,
/// `{patientGuid}`, `clinic_id`) made a boring key segment, or part of one
/// (see [`defect`]). Unicode letters are kept as they come (no
/// normalisation: `ü` stays the code points it was sent as).
///
/// Refused characters and controls become `_` and the ends are trimmed,
/// as they always were; a name that leaves boring keeps exactly the key
/// it always had. What that used to let through (`a..b`, `CON`, a dot
/// left at an end by inner blanks) is made boring too, and then the value
/// gets `~` and 8 hex digits of the SHA-256 of the original value before
/// its extension (`CON.dcm` → `CON_~1a2b3c4d.dcm`): such a name can never
/// take the key of a name that was boring, and two such names only share
/// a key if they were equal. Distinct values that sanitise alike
/// (`a?b`, `a*b`) are kept apart when stored, like two items of the same
/// name: the second goes to `name~<8 hex of its item id>`.
pub fn sanitise(value: &str) -> String {
    let cleaned = replace_and_trim(value);
    if defect(&cleaned).is_none() {
        return cleaned;
    }
    with_hash(&make_boring(&cleaned), &short_hash(value, 8))
}

/// `.dcm` for `P_1/0000_2.DCM`: the lowercased extension of a path's last
/// segment (up to 10 ASCII alphanumerics), or `""`.
pub fn extension(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rfind('.') {
        Some(dot) if dot > 0 => {
            let ext = &name[dot + 1..];
            if !ext.is_empty() && ext.len() <= 10 && ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
                format!(".{}", ext.to_ascii_lowercase())
            } else {
                String::new()
            }
        }
        _ => String::new(),
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.is_char_boundary(s.len() - suffix.len())
        && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The content type of an object at `key`: `application/dicom` for
/// `.dcm`, `application/octet-stream` otherwise.
pub fn content_type(key: &str) -> &'static str {
    if ends_with_ignore_case(key, ".dcm") {
        "application/dicom"
    } else {
        "application/octet-stream"
    }
}

/// First `n` hex digits of the SHA-256 of `s`.
fn short_hash(s: &str, n: usize) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.truncate(n);
    hex
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A key split into its folder part and its file name's stem and extension.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Everything up to and including the last `/` (may be empty).
    pub dir: String,
    pub stem: String,
    pub ext: String,
}

impl Key {
    /// Builds the key for one item from the rendered template: appends
    /// the source file's extension if missing and splits it up.
    pub fn new(rendered: &str, source_ext: &str) -> Result<Key, StageError> {
        check_key(rendered).map_err(|why| permanent(format!("bad object key: {why}")))?;
        let (dir, name) = match rendered.rfind('/') {
            Some(i) => (&rendered[..=i], &rendered[i + 1..]),
            None => ("", rendered),
        };
        let mut name = name.to_string();
        let ext = if source_ext.is_empty() {
            extension(&name)
        } else {
            if !ends_with_ignore_case(&name, source_ext) {
                name.push_str(source_ext);
            }
            // As the name spells it (`.DCM` stays `.DCM`).
            name[name.len() - source_ext.len()..].to_string()
        };
        let mut stem = name[..name.len() - ext.len()].to_string();
        // Values are sanitised one by one; what literal text next to them
        // can still make (`COM{modality}` with `1`) is fixed here, for the
        // stem only, so that the extension stays. A boring stem makes a
        // boring name with any `.alnum` extension.
        if defect(&name).is_some() {
            stem = sanitise(&stem);
        }
        // Folder segments too long for a file system: shorten with a hash.
        let dir: Vec<String> = dir
            .split_terminator('/')
            .map(|seg| if defect(seg).is_some() { sanitise(seg) } else { seg.to_string() })
            .map(|seg| {
                if seg.len() <= MAX_SEGMENT {
                    seg.to_string()
                } else {
                    let hash = short_hash(&seg, 8);
                    format!("{}~{hash}", truncate(&seg, MAX_SEGMENT - 9))
                }
            })
            .map(|seg| seg + "/")
            .collect();
        Ok(Key { dir: dir.concat(), stem, ext })
    }

    /// The object key, with `tag` (e.g. `~1a2b3c4d`) after the stem, at
    /// most [`MAX_KEY`] bytes with the sidecar's `.json`. See [`Key::render_within`].
    pub fn render(&self, tag: &str) -> Result<String, StageError> {
        self.render_checked(tag, MAX_KEY)
    }

    /// The object key, with `tag` after the stem. Keeps the file name
    /// within [`MAX_SEGMENT`] and the key (plus `.json`) within `max_key`
    /// bytes by truncating the stem and adding a short hash of it, so the
    /// result is deterministic.
    pub fn render_within(&self, tag: &str, max_key: usize) -> Result<String, StageError> {
        let budget = MAX_SEGMENT
            .min(max_key.saturating_sub(self.dir.len() + SIDECAR_SUFFIX.len()))
            .saturating_sub(SIDECAR_SUFFIX.len());
        let full = format!("{}{tag}{}", self.stem, self.ext);
        if full.len() <= budget {
            return Ok(format!("{}{full}", self.dir));
        }
        let hash = format!("~{}", short_hash(&format!("{}{}", self.stem, self.ext), 8));
        let fixed = hash.len() + tag.len() + self.ext.len();
        if budget < fixed + 8 {
            return Err(permanent(format!(
                "object key too long: the folder part alone is {} bytes (at most {} with the file name)",
                self.dir.len(),
                max_key
            )));
        }
        let stem = truncate(&self.stem, budget - fixed);
        Ok(format!("{}{stem}{hash}{tag}{}", self.dir, self.ext))
    }

    /// [`Key::render_within`], checked: every segment of the key and of
    /// its sidecar's key is boring ([`is_boring`]). `Key::new` and
    /// [`sanitise`] make sure of that; this turns a mistake there into a
    /// failed item instead of an object no clinic disk can hold.
    pub fn render_checked(&self, tag: &str, max_key: usize) -> Result<String, StageError> {
        let key = self.render_within(tag, max_key)?;
        let sidecar = format!("{key}{SIDECAR_SUFFIX}");
        if let Some(seg) = sidecar.split('/').find(|seg| !is_boring(seg)) {
            return Err(permanent(format!(
                "bug: object key {key:?} has a segment {seg:?} that {}",
                defect(seg).unwrap_or("is too long")
            )));
        }
        Ok(key)
    }
}

/// Percent-encodes what is not printable ASCII (and `%`), for metadata.
pub fn percent_encode(s: &str) -> String {
    encode_except(s, |b| (0x20..0x7f).contains(&b) && b != b'%')
}

/// Percent-encodes what is not printable ASCII, `%` and spaces: a value
/// that survives HTTP header handling (which trims and may fold spaces)
/// byte for byte. Decoded by any percent-decoder.
pub fn meta_encode(s: &str) -> String {
    encode_except(s, |b| (0x21..0x7f).contains(&b) && b != b'%')
}

fn encode_except(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn meta_get<'a>(info: &'a ObjectInfo, key: &str) -> Option<&'a str> {
    info.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn metadata_text<'a>(metadata: &'a Metadata, key: &str) -> Option<&'a str> {
    metadata.iter().rev().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        Value::Text(t) if !t.trim().is_empty() => Some(t.as_str()),
        _ => None,
    })
}

/// What the store needs from the host.
pub trait Backend {
    fn head(&mut self, key: &str) -> Result<Option<ObjectInfo>, HostError>;
    /// Writes `file` at `key`, replacing what is there.
    fn put_file(
        &mut self,
        key: &str,
        file: &FileRef,
        content_type: &str,
        meta: &[(String, String)],
    ) -> Result<ObjectInfo, HostError>;
    /// Writes `file` at `key` only if no object is there: `None` if one is.
    /// Of two concurrent calls for one key, at most one may write.
    fn create_file(
        &mut self,
        key: &str,
        file: &FileRef,
        content_type: &str,
        meta: &[(String, String)],
    ) -> Result<Option<ObjectInfo>, HostError>;
    fn put_bytes(
        &mut self,
        key: &str,
        body: &[u8],
        content_type: &str,
        meta: &[(String, String)],
    ) -> Result<ObjectInfo, HostError>;
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError>;
}

/// The host's `object-store` and `fs` capabilities.
pub struct HostBackend;

impl Backend for HostBackend {
    fn head(&mut self, key: &str) -> Result<Option<ObjectInfo>, HostError> {
        object_store::head(key)
    }
    fn put_file(
        &mut self,
        key: &str,
        file: &FileRef,
        content_type: &str,
        meta: &[(String, String)],
    ) -> Result<ObjectInfo, HostError> {
        object_store::put_file(key, file, content_type, meta)
    }
    fn create_file(
        &mut self,
        key: &str,
        file: &FileRef,
        content_type: &str,
        meta: &[(String, String)],
    ) -> Result<Option<ObjectInfo>, HostError> {
        object_store::put_file_new(key, file, content_type, meta)
    }
    fn put_bytes(
        &mut self,
        key: &str,
        body: &[u8],
        content_type: &str,
        meta: &[(String, String)],
    ) -> Result<ObjectInfo, HostError> {
        object_store::put_bytes(key, body, content_type, meta)
    }
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError> {
        fs::sha256(file)
    }
}

/// How `store` went for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written now.
    Stored,
    /// Already there with the same content; nothing written.
    Unchanged,
}

/// Where an item went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The object key.
    pub location: String,
    pub outcome: Outcome,
}

/// Files up to this size are created without looking first (see
/// [`Placer::place`]).
pub const CREATE_FIRST_MAX: u64 = 1 << 20;

/// Puts one item's file at a key, if the key is free for it.
struct Placer<'a> {
    item: &'a Item,
    /// `ferry-item-id` of this item (percent-encoded id).
    item_meta: String,
    /// SHA-256 of the item's file, once computed.
    content_sha: Option<String>,
    /// The inline sidecar, when it goes with the object.
    inline: Option<String>,
}

impl Placer<'_> {
    /// The item file's SHA-256 (asked of the host once).
    fn sha(&mut self, backend: &mut dyn Backend) -> Result<String, StageError> {
        if let Some(sha) = &self.content_sha {
            return Ok(sha.clone());
        }
        let file = &self.item.file;
        let sha = backend.sha256(file).context(format_args!("hashing {}", file.path))?;
        Ok(self.content_sha.insert(sha).clone())
    }

    fn object_meta(&self) -> Vec<(String, String)> {
        let mut meta = vec![(ITEM_ID_META.to_string(), self.item_meta.clone())];
        if let Some(inline) = &self.inline {
            meta.push((SIDECAR_META.to_string(), inline.clone()));
        }
        meta
    }

    /// Stores at `key` unless another item's (or nobody's) object is
    /// there: `None` then.
    fn place(&mut self, backend: &mut dyn Backend, key: &str) -> Result<Option<(ObjectInfo, Outcome)>, StageError> {
        let content_type = content_type(key);
        let file = &self.item.file;
        // A small file is created first: the store refuses a key that is
        // taken, so a new image costs one request, not a look and a put
        // (most of a first pass over intra-oral images). A big file looks
        // first: a refused create would have sent its bytes for nothing.
        let create_first = self.item.size <= CREATE_FIRST_MAX;
        // A create that loses a race looks again: twice at most, after the
        // blind first create of a small file.
        for round in 0..2 + usize::from(create_first) {
            let found = if create_first && round == 0 {
                None
            } else {
                backend.head(key).context(format_args!("looking up {key}"))?
            };
            let Some(info) = found else {
                match backend
                    .create_file(key, file, content_type, &self.object_meta())
                    .context(format_args!("storing {key}"))?
                {
                    Some(info) => return Ok(Some((info, Outcome::Stored))),
                    None => continue,
                }
            };
            let owner = meta_get(&info, ITEM_ID_META);
            if owner.is_some_and(|o| o != self.item_meta) {
                return Ok(None);
            }
            let sha = self.sha(backend)?;
            let same_bytes = info.sha256.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&sha));
            if owner.is_none() {
                // An object without an owner (put there by hand, or a crash
                // between the bytes and their record): ours only if it holds
                // exactly our bytes; never overwrite it otherwise.
                return Ok(same_bytes.then_some((info, Outcome::Unchanged)));
            }
            if same_bytes {
                return Ok(Some((info, Outcome::Unchanged)));
            }
            // An older version of this item: replace it.
            let info = backend
                .put_file(key, file, content_type, &self.object_meta())
                .context(format_args!("storing {key}"))?;
            return Ok(Some((info, Outcome::Stored)));
        }
        Ok(None)
    }
}

/// Stores one item: the object (with its inline sidecar), then the
/// sidecar object where one is needed.
pub fn store_item(
    settings: &Settings,
    backend: &mut dyn Backend,
    item: &Item,
    metadata: &Metadata,
    patient_guid: &str,
) -> Result<Placed, StageError> {
    let rendered = settings.template.render(|p| {
        sanitise(match p {
            Placeholder::PatientGuid => patient_guid,
            Placeholder::ImageName => &item.display_name,
            Placeholder::ItemId => &item.id,
            Placeholder::Modality => metadata_text(metadata, "modality").unwrap_or("unknown"),
            // Checked by `Settings::new`; sanitised there.
            Placeholder::ClinicId => settings.clinic_id.as_deref().unwrap_or("_"),
        })
    });
    let key = Key::new(&rendered, &extension(&item.file.path))?;
    let inline = (settings.sidecar == Sidecar::Inline)
        .then(|| meta_encode(&description(item, metadata, patient_guid, settings.clinic_id.as_deref()).to_string()));
    let mut placer = Placer { item, item_meta: percent_encode(&item.id), content_sha: None, inline };
    // the host's rule, over the very metadata the object would carry
    if placer.object_meta().iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_METADATA_BYTES {
        placer.inline = None;
    }

    let primary = key.render_checked("", settings.max_key)?;
    let (object_key, (info, outcome)) = match placer.place(backend, &primary)? {
        Some(placed) => (primary, placed),
        None => {
            // Another item's object holds the key: go next to it.
            let alt = key.render_checked(&format!("~{}", short_hash(&item.id, 8)), settings.max_key)?;
            match placer.place(backend, &alt)? {
                Some(placed) => (alt, placed),
                None => {
                    return Err(permanent(format!(
                        "key collision: {primary} and {alt} both hold objects of other items"
                    )))
                }
            }
        }
    };
    debug(&format!("{}: {} ({object_key})", item.id, if outcome == Outcome::Stored { "stored" } else { "unchanged" }));

    let object_sidecar = match settings.sidecar {
        Sidecar::Off => false,
        Sidecar::Object => true,
        // an unchanged object keeps what it was stored with: its inline
        // sidecar, or (stored by an older ferry, or too big) its object
        Sidecar::Inline => match outcome {
            Outcome::Stored => placer.inline.is_none(),
            Outcome::Unchanged => meta_get(&info, SIDECAR_META).is_none(),
        },
    };
    if object_sidecar {
        let sidecar_key = format!("{object_key}{SIDECAR_SUFFIX}");
        let missing = outcome == Outcome::Stored
            || backend.head(&sidecar_key).context(format_args!("looking up {sidecar_key}"))?.is_none();
        if missing {
            let sha = match (&info.sha256, &placer.content_sha) {
                (Some(s), _) | (None, Some(s)) => s.clone(),
                (None, None) => placer.sha(backend)?,
            };
            let body =
                sidecar(item, metadata, patient_guid, settings.clinic_id.as_deref(), &object_key, &sha, info.size);
            backend
                .put_bytes(&sidecar_key, &body, "application/json", &placer.object_meta())
                .context(format_args!("storing {sidecar_key}"))?;
        }
    }
    Ok(Placed { location: object_key, outcome })
}

/// What a sidecar says of an item, whichever way it is stored: item id,
/// patient guid, source name, the extractor's metadata, the source's
/// attributes, the clinic id when configured. Keys sort (serde_json's
/// map), so the same item always gives the same bytes.
pub fn description(item: &Item, metadata: &Metadata, patient_guid: &str, clinic_id: Option<&str>) -> serde_json::Value {
    use serde_json::{json, Map, Value as J};
    let value = |v: &Value| -> J {
        let real = |r: f64| serde_json::Number::from_f64(r).map_or(J::Null, J::Number);
        match v {
            Value::Text(t) => J::String(t.clone()),
            Value::Integer(n) => J::from(*n),
            Value::Real(r) => real(*r),
            Value::Texts(ts) => J::Array(ts.iter().cloned().map(J::String).collect()),
            Value::Reals(rs) => J::Array(rs.iter().map(|r| real(*r)).collect()),
        }
    };
    let metadata: Map<String, J> = metadata.iter().map(|(k, v)| (k.clone(), value(v))).collect();
    let attributes: BTreeMap<&str, &str> = item.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut doc = json!({
        "itemId": item.id,
        "patientGuid": patient_guid,
        "sourceName": item.display_name,
        "metadata": metadata,
        "attributes": attributes,
    });
    if let (Some(clinic), Some(obj)) = (clinic_id, doc.as_object_mut()) {
        obj.insert("clinicId".into(), J::String(clinic.to_string()));
    }
    doc
}

/// The sidecar object: a pretty, deterministic JSON object (sorted keys, no
/// timestamps), so re-runs produce the same bytes. `clinicId` is there
/// only when the store is configured with one.
pub fn sidecar(
    item: &Item,
    metadata: &Metadata,
    patient_guid: &str,
    clinic_id: Option<&str>,
    key: &str,
    sha256: &str,
    size: u64,
) -> Vec<u8> {
    use serde_json::Value as J;
    let mut doc = description(item, metadata, patient_guid, clinic_id);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("key".into(), J::String(key.to_string()));
        obj.insert("sha256".into(), J::String(sha256.to_string()));
        obj.insert("size".into(), J::from(size));
    }
    let mut body = serde_json::to_vec_pretty(&doc).expect("JSON values always serialise");
    body.push(b'\n');
    body
}

#[cfg(test)]
mod tests;
