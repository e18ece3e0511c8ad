//! ferry store: puts each item into the object store the host grants
//! (a local folder, S3, ...) under a key built from a template, with an
//! optional JSON sidecar.
//!
//! Idempotent: every object carries `ferry-item-id` metadata. An object
//! already at the key for the same item with the same content is left
//! alone (`unchanged`); different content of the same item overwrites it;
//! an object of another item (or of nobody) at the key is never touched:
//! the item goes to `{stem}~{8 hex of sha256(item id)}{ext}` instead.
//!
//! The logic is written against the small [`Backend`] trait so that it can
//! be tested without a host; [`HostBackend`] is the real one.
use std::collections::BTreeMap;

use ferry_plugin_sdk::object_store::{self, ObjectInfo};
use ferry_plugin_sdk::types::{FileRef, HostError, Item, Metadata, StageError, Value};
use ferry_plugin_sdk::{debug, fs, parse_config, permanent, serde, serde_json, Context, Slot};
use sha2::{Digest, Sha256};

use ferry_exports::store::{Guest, StoreOutcome, Stored};

/// The stage's `[config]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields, default)]
pub struct Config {
    /// Key template: `{patientGuid}`, `{imageName}`, `{itemId}`, `{modality}`.
    pub key: String,
    /// Also write `{key}.json` describing the item.
    pub sidecar: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { key: "images/{patientGuid}/{imageName}".into(), sidecar: true }
    }
}

/// Object keys are at most this long (the host's rule).
pub const MAX_KEY: usize = 1024;
/// Each segment at most this long (file systems refuse longer names).
pub const MAX_SEGMENT: usize = 255;
/// Room kept for the sidecar's `.json`.
const SIDECAR_SUFFIX: &str = ".json";
/// The metadata key tying an object to its item.
pub const ITEM_ID_META: &str = "ferry-item-id";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placeholder {
    PatientGuid,
    ImageName,
    ItemId,
    Modality,
}

impl Placeholder {
    const ALL: [(&'static str, Placeholder); 4] = [
        ("patientGuid", Placeholder::PatientGuid),
        ("imageName", Placeholder::ImageName),
        ("itemId", Placeholder::ItemId),
        ("modality", Placeholder::Modality),
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
        // Literal text must make a valid key whatever the values are.
        let sample = t.render(|_| "x".to_string());
        if let Err(why) = check_key(&sample) {
            return Err(bad(why));
        }
        if !t.parts.iter().any(|p| matches!(p, Part::Value(_))) {
            return Err(bad("no placeholder: every item would get the same key".into()));
        }
        Ok(t)
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

/// One substituted value made safe as (part of) a key segment: no `/` or
/// `\`, no control characters, none of `<>:"|?*` (refused by Windows), no
/// leading dots, no surrounding blanks or trailing dots; `_` if nothing is
/// left. Other Unicode is kept.
pub fn sanitise(value: &str) -> String {
    let replaced: String = value
        .chars()
        .map(|c| match c {
            '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*' => '_',
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
        let stem = name[..name.len() - ext.len()].to_string();
        // Folder segments too long for a file system: shorten with a hash.
        let dir: Vec<String> = dir
            .split_terminator('/')
            .map(|seg| {
                if seg.len() <= MAX_SEGMENT {
                    seg.to_string()
                } else {
                    let hash = short_hash(seg, 8);
                    format!("{}~{hash}", truncate(seg, MAX_SEGMENT - 9))
                }
            })
            .map(|seg| seg + "/")
            .collect();
        Ok(Key { dir: dir.concat(), stem, ext })
    }

    /// The object key, with `tag` (e.g. `~1a2b3c4d`) after the stem. Keeps
    /// the file name within [`MAX_SEGMENT`] and the key (plus `.json`)
    /// within [`MAX_KEY`] by truncating the stem and adding a short hash of
    /// it, so the result is deterministic.
    pub fn render(&self, tag: &str) -> Result<String, StageError> {
        let budget = MAX_SEGMENT
            .min(MAX_KEY.saturating_sub(self.dir.len() + SIDECAR_SUFFIX.len()))
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
                MAX_KEY
            )));
        }
        let stem = truncate(&self.stem, budget - fixed);
        Ok(format!("{}{stem}{hash}{tag}{}", self.dir, self.ext))
    }
}

/// Percent-encodes what is not printable ASCII (and `%`), for metadata.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
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
    fn put_file(&mut self, key: &str, file: &FileRef, content_type: &str, meta: &[(String, String)])
        -> Result<ObjectInfo, HostError>;
    /// Writes `file` at `key` only if no object is there: `None` if one is.
    /// Of two concurrent calls for one key, at most one may write.
    fn create_file(&mut self, key: &str, file: &FileRef, content_type: &str, meta: &[(String, String)])
        -> Result<Option<ObjectInfo>, HostError>;
    fn put_bytes(&mut self, key: &str, body: &[u8], content_type: &str, meta: &[(String, String)])
        -> Result<ObjectInfo, HostError>;
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError>;
}

/// The host's `object-store` and `fs` capabilities.
pub struct HostBackend;

impl Backend for HostBackend {
    fn head(&mut self, key: &str) -> Result<Option<ObjectInfo>, HostError> {
        object_store::head(key)
    }
    fn put_file(&mut self, key: &str, file: &FileRef, content_type: &str, meta: &[(String, String)])
        -> Result<ObjectInfo, HostError> {
        object_store::put_file(key, file, content_type, meta)
    }
    fn create_file(&mut self, key: &str, file: &FileRef, content_type: &str, meta: &[(String, String)])
        -> Result<Option<ObjectInfo>, HostError> {
        object_store::put_file_new(key, file, content_type, meta)
    }
    fn put_bytes(&mut self, key: &str, body: &[u8], content_type: &str, meta: &[(String, String)])
        -> Result<ObjectInfo, HostError> {
        object_store::put_bytes(key, body, content_type, meta)
    }
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError> {
        fs::sha256(file)
    }
}

/// Puts one item's file at a key, if the key is free for it.
struct Placer<'a> {
    item: &'a Item,
    /// `ferry-item-id` of this item (percent-encoded id).
    item_meta: String,
    /// SHA-256 of the item's file, once computed.
    content_sha: Option<String>,
}

impl Placer<'_> {
    fn object_meta(&self) -> Vec<(String, String)> {
        vec![(ITEM_ID_META.to_string(), self.item_meta.clone())]
    }

    /// Stores at `key` unless another item's (or nobody's) object is
    /// there: `None` then.
    fn place(&mut self, backend: &mut dyn Backend, key: &str) -> Result<Option<(ObjectInfo, StoreOutcome)>, StageError> {
        let content_type = if ends_with_ignore_case(key, ".dcm") { "application/dicom" } else { "application/octet-stream" };
        let file = &self.item.file;
        // Twice at most: a create that loses a race looks again.
        for _ in 0..2 {
            let Some(info) = backend.head(key).context(format_args!("looking up {key}"))? else {
                match backend
                    .create_file(key, file, content_type, &self.object_meta())
                    .context(format_args!("storing {key}"))?
                {
                    Some(info) => return Ok(Some((info, StoreOutcome::Stored))),
                    None => continue,
                }
            };
            let owner = meta_get(&info, ITEM_ID_META);
            if owner.is_some_and(|o| o != self.item_meta) {
                return Ok(None);
            }
            let sha = match &self.content_sha {
                Some(sha) => sha.clone(),
                None => {
                    let sha = backend.sha256(file).context(format_args!("hashing {}", file.path))?;
                    self.content_sha.insert(sha).clone()
                }
            };
            let same_bytes = info.sha256.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&sha));
            if owner.is_none() {
                // An object without an owner (put there by hand, or a crash
                // between the bytes and their record): ours only if it holds
                // exactly our bytes; never overwrite it otherwise.
                return Ok(same_bytes.then_some((info, StoreOutcome::Unchanged)));
            }
            if same_bytes {
                return Ok(Some((info, StoreOutcome::Unchanged)));
            }
            // An older version of this item: replace it.
            let info = backend
                .put_file(key, file, content_type, &self.object_meta())
                .context(format_args!("storing {key}"))?;
            return Ok(Some((info, StoreOutcome::Stored)));
        }
        Ok(None)
    }
}

/// Stores one item: the object, then the sidecar.
pub fn store_item(
    config: &Config,
    template: &Template,
    backend: &mut dyn Backend,
    item: &Item,
    metadata: &Metadata,
    patient_guid: &str,
) -> Result<Stored, StageError> {
    let rendered = template.render(|p| {
        sanitise(match p {
            Placeholder::PatientGuid => patient_guid,
            Placeholder::ImageName => &item.display_name,
            Placeholder::ItemId => &item.id,
            Placeholder::Modality => metadata_text(metadata, "modality").unwrap_or("unknown"),
        })
    });
    let key = Key::new(&rendered, &extension(&item.file.path))?;
    let mut placer = Placer { item, item_meta: percent_encode(&item.id), content_sha: None };

    let primary = key.render("")?;
    let (object_key, (info, outcome)) = match placer.place(backend, &primary)? {
        Some(placed) => (primary, placed),
        None => {
            // Another item's object holds the key: go next to it.
            let alt = key.render(&format!("~{}", short_hash(&item.id, 8)))?;
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
    debug(&format!("{}: {} ({object_key})", item.id, if outcome == StoreOutcome::Stored { "stored" } else { "unchanged" }));

    if config.sidecar {
        let sidecar_key = format!("{object_key}{SIDECAR_SUFFIX}");
        let missing = outcome == StoreOutcome::Stored
            || backend.head(&sidecar_key).context(format_args!("looking up {sidecar_key}"))?.is_none();
        if missing {
            let sha = match (&info.sha256, &placer.content_sha) {
                (Some(s), _) | (None, Some(s)) => s.clone(),
                (None, None) => backend.sha256(&item.file).context(format_args!("hashing {}", item.file.path))?,
            };
            let body = sidecar(item, metadata, patient_guid, &object_key, &sha, info.size);
            backend
                .put_bytes(&sidecar_key, &body, "application/json", &placer.object_meta())
                .context(format_args!("storing {sidecar_key}"))?;
        }
    }
    Ok(Stored { location: object_key, outcome })
}

/// The sidecar: a pretty, deterministic JSON object (sorted keys, no
/// timestamps), so re-runs produce the same bytes.
pub fn sidecar(item: &Item, metadata: &Metadata, patient_guid: &str, key: &str, sha256: &str, size: u64) -> Vec<u8> {
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
    let doc = json!({
        "itemId": item.id,
        "patientGuid": patient_guid,
        "key": key,
        "sha256": sha256,
        "size": size,
        "sourceName": item.display_name,
        "metadata": metadata,
        "attributes": attributes,
    });
    let mut body = serde_json::to_vec_pretty(&doc).expect("JSON values always serialise");
    body.push(b'\n');
    body
}

struct State {
    config: Config,
    template: Template,
}

static STATE: Slot<State> = Slot::new();

struct FsStore;

impl Guest for FsStore {
    fn configure(config: String) -> Result<(), StageError> {
        let config: Config = parse_config(&config)?;
        let template = Template::parse(&config.key)?;
        STATE.set(State { config, template });
        Ok(())
    }

    fn store(item: Item, metadata: Metadata, patient_guid: String) -> Result<Stored, StageError> {
        STATE.with(|s| store_item(&s.config, &s.template, &mut HostBackend, &item, &metadata, &patient_guid))?
    }
}

ferry_plugin_sdk::store_plugin!(FsStore, wit = "../../wit");

#[cfg(test)]
mod tests;
