//! ferry store: a generic sink for practice platforms (CRUD APIs) that have
//! a document or file endpoint but no dedicated ferry plugin. Each request
//! is a *template* in the pipeline file: method, path, headers and body,
//! with placeholders filled from the item and its `document.*` metadata.
//!
//! Requests go through the host's `http` capability: the pipeline must
//! grant the platform's host in `grants.http`, and credentials live in
//! `grants.http_auth` (the host adds them to every request; the plugin never
//! sees them). The file's bytes never enter the plugin: the host streams
//! them into the request (`http.send-file`) as the raw body, base64 inside
//! a JSON body, or a `multipart/form-data` part. The SHA-256 used for
//! `{sha256}` is computed host-side (`fs.sha256`), so not even a hashing
//! pass pulls the file through the guest.
//!
//! ## The pipeline file
//!
//! The platform below, `docs.example-pms.test`, is **made up** to show the
//! shape; read your platform's API documentation for the real routes.
//! (Carepatron's public API, for one, has no document upload today: there
//! is nothing to configure for it yet.)
//!
//! ```toml
//! [store]
//! plugin = "http-store"
//! grants.http = ["docs.example-pms.test"]
//! # credentials: the host adds them, only over https (kinds: bearer, basic, header, oauth2)
//! grants.http_auth."docs.example-pms.test" = { kind = "header", name = "X-Api-Key", value = "${PMS_API_KEY}" }
//!
//! [store.config]
//! base_url = "https://docs.example-pms.test/api/v2"
//! # timeout_ms = 60000
//! # headers = { "Accept" = "application/json" }      # sent with every request
//!
//! [store.config.create]
//! method = "POST"
//! path = "/patients/{patient}/documents"
//! body = { kind = "multipart", parts = [
//!   { name = "file", file = true },                   # filename = "{file_name}", content_type = "{content_type}"
//!   { name = "title", value = "{title}" },
//!   { name = "note", value = "[ferry:{sha12}]" },      # the tag `find` looks for
//! ] }
//! id_pointer = "/id"
//! success = [200, 201]
//!
//! [store.config.update]                               # optional: changed documents
//! method = "PUT"
//! path = "/documents/{remote_id}/file"
//! body = { kind = "json", template = '{"name": "{title}", "note": "[ferry:{sha12}]", "data": "@FILE@"}' }
//!
//! [store.config.find]                                 # optional: no duplicates on re-runs
//! path = "/patients/{patient}/documents?search={sha12}"
//! results_pointer = "/items"
//! match_pointer = "/note"
//! match = "[ferry:{sha12}]"
//! id_pointer = "/id"
//! ```
//!
//! ## `[store.config]`
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | required | `http` or `https` API base, e.g. `https://docs.example-pms.test/api/v2`; no query, fragment, credentials or placeholders. Every path is appended to it, so every request stays on its host |
//! | `headers` | none | headers for every request, values may hold placeholders (see *Headers*) |
//! | `timeout_ms` | `60000` | per request, `1..=600000` (the host also caps it at the call's deadline) |
//! | `create` | required | the request that creates the document (a *request template*, below) |
//! | `update` | none | the request that replaces a document ferry stored before (`{remote_id}` available), see *Changed documents* |
//! | `find` | none | a GET that looks for a copy already there, see *Idempotency* |
//!
//! A request template (`create`, `update`):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `method` | `"POST"` (create), `"PUT"` (update) | `POST`, `PUT` or `PATCH` |
//! | `path` | required | starts with `/`, appended to `base_url`; may have a `?query`. Placeholders are percent-encoded (a `/` or `?` in a value stays inside its segment) |
//! | `headers` | none | more headers for this request (see *Headers*) |
//! | `body` | required | one of the three below |
//! | `id_pointer` | `"/id"` (create), none (update) | RFC 6901 JSON pointer to the remote id in the 2xx answer (a string or an integer). Without one in the answer, the last path segment of a `Location` header is used. For update, none keeps `{remote_id}` |
//! | `success` | `[200, 201]` (create), `[200, 201, 204]` (update) | the 2xx statuses that mean done |
//!
//! Bodies (`body = { kind = ... }`):
//!
//! - `{ kind = "multipart", parts = [...] }`: `multipart/form-data` (the
//!   host picks the boundary and sets `Content-Type`). Each part is
//!   `{ name = "...", value = "<text template>" }` or exactly one
//!   `{ name = "...", file = true, filename = "{file_name}", content_type = "{content_type}" }`
//!   (the defaults shown). Text values are inserted as they are; a
//!   filename loses quotes, backslashes and control characters.
//! - `{ kind = "json", template = '...', file_placeholder = "@FILE@", content_type = "application/json" }`:
//!   a JSON body with the file base64-encoded where `file_placeholder`
//!   stands (exactly once, inside a string: `"data": "@FILE@"`).
//!   Placeholders are inserted **JSON-escaped without quotes**, so write
//!   the quotes yourself: `"name": "{title}"`; `{size}` is a number and
//!   may go unquoted. The template must be valid JSON once filled in:
//!   checked at configure time with awkward dummy values (quotes, line
//!   breaks, non-ASCII).
//! - `{ kind = "raw", content_type = "{content_type}" }`: the file's bytes
//!   as the body, with this `Content-Type` (the default shown).
//!
//! `find` (a GET, sent with the host's retries):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `path` | required | as above; must contain `{patient}` unless `patient_pointer` is set |
//! | `headers` | none | as above |
//! | `results_pointer` | `""` (the whole answer) | JSON pointer to the list of candidates (an array; an object is one candidate; null or missing: none) |
//! | `match_pointer` | required | JSON pointer, in each candidate, to the field carrying the tag |
//! | `match` | `"{sha256}"` | the tag: a candidate matches when that field (a string, or an array of strings) *contains* it. Must use `{sha256}` or `{sha12}`, and `create` (and `update`) must send the same placeholder, so a match means the same bytes |
//! | `patient_pointer` | none | JSON pointer, in each candidate, to its patient; when set, only candidates of this patient match |
//! | `id_pointer` | `"/id"` | JSON pointer, in the matching candidate, to its remote id |
//! | `success` | `[200]` | statuses with a list to read |
//! | `not_found_status` | `[404]` | statuses meaning "no candidates" (4xx other than 401, 403, 408, 429, or a 2xx such as 204) |
//!
//! ## Placeholders
//!
//! `{name}` with a lowercase name is always a placeholder; an unknown name
//! is a configuration error (other braces, as in JSON, are literal; in a
//! path write a literal brace as `%7B`/`%7D`).
//!
//! | placeholder | value |
//! |---|---|
//! | `{patient}` | the patient guid the resolver found |
//! | `{item_id}` | the item's id in the source |
//! | `{title}` | `document.title`, else the item's display name |
//! | `{file_name}` | the item's display name without folders, quotes or control characters (`document` if empty) |
//! | `{content_type}` | `document.content-type`, else from the file extension, else `application/octet-stream` |
//! | `{date}` | `document.date` (empty when unknown) |
//! | `{type_code}`, `{type_display}`, `{type_system}` | `document.type.code` / `.display` / `.system` (empty when unknown) |
//! | `{author}` | `document.author` (empty when unknown) |
//! | `{sha256}`, `{sha12}` | hex SHA-256 of the file, whole and its first 12 characters |
//! | `{size}` | the file's size in bytes |
//! | `{remote_id}` | `update` only: the remote id ferry recorded for the previous version |
//!
//! Escaping: percent-encoded in paths and queries (a value that is only
//! dots is encoded too, so it cannot climb up the path); JSON-escaped in
//! JSON templates; in headers control characters become spaces and
//! non-ASCII is percent-encoded (UTF-8); multipart text values as they are.
//!
//! ## Headers
//!
//! At most 32 per request; `Accept: application/json` is added unless
//! given. No secrets in the pipeline's config: `Authorization`,
//! `Proxy-Authorization`, `Cookie` and names that look like credentials
//! (containing `token`, `secret`, `password`, `session`, `api-key`,
//! `apikey` or `api_key`) are refused; put the credential in
//! `grants.http_auth` (`kind = "header"` takes any header name). Headers
//! the host or the body manages (`Content-Type`, `Content-Length`, `Host`,
//! `Transfer-Encoding`, `Connection`) are refused too: set a body's
//! `content_type` instead.
//!
//! ## What ferry records
//!
//! The location of a stored item is `http-store:<remote id>` (the id at
//! `id_pointer`), e.g. `http-store:8812`.
//!
//! ## Idempotency
//!
//! Creating is not idempotent, so `create` and `update` are sent without
//! the host's retries (a retry after a lost answer would make a second
//! document). With `find`, every item is first looked for (with retries):
//! a candidate of this patient carrying the tag → `unchanged`, nothing
//! sent. So re-runs, and runs after a crash between the upload and ferry
//! writing it down, do not duplicate. Without `find` they may: configure
//! it if the platform can search by a field ferry fills in. Only the
//! first page of the answer is read, so make the query narrow (filter by
//! the tag when the platform can).
//!
//! ## Changed documents
//!
//! When a document ferry stored comes back with other bytes, the host
//! passes its previous location (`ferry.previous-location`, same patient
//! only). If it is `http-store:<id>` and `update` is configured, `update`
//! is sent with `{remote_id}` = `<id>`: 2xx in `update.success` → stored
//! (at the id from `update.id_pointer`, else the same id); 404 or 410 (it
//! is gone) → created anew. Without `update` a changed document is created
//! as a new one beside the old.
//!
//! ## Errors and retries
//!
//! - 401/403 → permanent: check `grants.http_auth` for the host;
//! - 408, 429, 5xx, transport failures → retryable (tried again later);
//! - 409 on create or update → with `find`, looked for once more (found:
//!   `unchanged`); otherwise permanent;
//! - other statuses (a 2xx not in `success`, 3xx, 4xx) → permanent, with
//!   a short excerpt of the answer: at most 300 characters, control
//!   characters removed, long base64-like runs (an echoed file or token),
//!   bearer/basic credentials and the document's title, file name and
//!   author blanked out;
//! - a success without a remote id → permanent (the document may exist:
//!   fix `id_pointer`, and configure `find` so the retry does not
//!   duplicate).
//!
//! Messages name the config key to fix and show templates, never the
//! rendered paths (they hold the patient guid) nor header values.
//!
//! The logic (settings, templates, answers, the flow) does not call the
//! host and is unit-tested natively; capability calls go through the
//! [`Transport`] trait.
use std::collections::BTreeMap;

use ferry_plugin_sdk::http::{self, Base64Body, FileBody, FilePart, FormPart, PartValue, Request, Response};
use ferry_plugin_sdk::serde_json::{self, Value};
use ferry_plugin_sdk::status_reason as reason;
use ferry_plugin_sdk::types::{FileRef, HostError, Item, Metadata, StageError, Value as MetaValue};
use ferry_plugin_sdk::{debug, fs, permanent, retryable, serde, Store, StoreOutcome, Stored};

pub use ferry_plugin_sdk::percent_encode;

// ----------------------------------------------------------------- config

/// The stage's `[config]` table, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct Config {
    pub base_url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub timeout_ms: Option<u32>,
    pub create: RequestConfig,
    pub update: Option<RequestConfig>,
    pub find: Option<FindConfig>,
}

/// `create` / `update`, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct RequestConfig {
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: BodyConfig,
    pub id_pointer: Option<String>,
    pub success: Option<Vec<u16>>,
}

/// `body`, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BodyConfig {
    Multipart { parts: Vec<PartConfig> },
    Json { template: String, file_placeholder: Option<String>, content_type: Option<String> },
    Raw { content_type: Option<String> },
}

/// One multipart part, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct PartConfig {
    pub name: String,
    pub value: Option<String>,
    #[serde(default)]
    pub file: bool,
    pub filename: Option<String>,
    pub content_type: Option<String>,
}

/// `find`, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
pub struct FindConfig {
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub results_pointer: Option<String>,
    pub match_pointer: String,
    #[serde(rename = "match")]
    pub tag: Option<String>,
    pub patient_pointer: Option<String>,
    pub id_pointer: Option<String>,
    pub success: Option<Vec<u16>>,
    pub not_found_status: Option<Vec<u16>>,
}

pub const DEFAULT_TIMEOUT_MS: u32 = 60_000;
pub const MAX_TIMEOUT_MS: u32 = 600_000;
/// Longest `path` template.
pub const MAX_PATH: usize = 2048;
/// Longest rendered URL.
pub const MAX_URL: usize = 8192;
/// Longest JSON body template or multipart text value.
pub const MAX_TEMPLATE: usize = 64 * 1024;
/// Longest header value template.
pub const MAX_HEADER_VALUE: usize = 4096;
/// Most headers on one request (shared + own + defaults).
pub const MAX_HEADERS: usize = 32;
/// Most multipart parts.
pub const MAX_PARTS: usize = 32;
/// Longest JSON pointer.
pub const MAX_POINTER: usize = 256;
/// Longest remote id ferry accepts.
pub const MAX_REMOTE_ID: usize = 256;
/// Longest excerpt of an answer quoted in an error.
pub const MAX_EXCERPT: usize = 300;
/// The prefix of the locations this plugin records.
pub const LOCATION_PREFIX: &str = "http-store:";
/// The metadata key the host sets for a changed item.
pub const PREVIOUS_LOCATION: &str = "ferry.previous-location";
pub const DEFAULT_FILE_PLACEHOLDER: &str = "@FILE@";

/// Every placeholder name.
pub const PLACEHOLDERS: &[&str] = &[
    "patient",
    "item_id",
    "title",
    "file_name",
    "content_type",
    "date",
    "type_code",
    "type_display",
    "type_system",
    "author",
    "sha256",
    "sha12",
    "size",
    "remote_id",
];

// --------------------------------------------------------------- settings

/// A validated request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Multipart(Vec<Part>),
    /// The JSON template split at the file placeholder.
    Json {
        before: String,
        after: String,
        content_type: String,
    },
    Raw {
        content_type: String,
    },
}

/// A validated multipart part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text { name: String, value: String },
    File { name: String, filename: String, content_type: String },
}

/// A validated `create` or `update`.
#[derive(Debug, Clone)]
pub struct Req {
    /// `create` or `update`, for messages.
    pub key: &'static str,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    pub id_pointer: Option<String>,
    pub success: Vec<u16>,
}

/// A validated `find`.
#[derive(Debug, Clone)]
pub struct Find {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub results_pointer: String,
    pub match_pointer: String,
    pub tag: String,
    pub patient_pointer: Option<String>,
    pub id_pointer: String,
    pub success: Vec<u16>,
    pub not_found_status: Vec<u16>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Without a trailing `/`.
    pub base_url: String,
    /// `host[:port]`, lowercase: every request must go there.
    pub api: String,
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u32,
    pub create: Req,
    pub update: Option<Req>,
    pub find: Option<Find>,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> StageError {
    permanent(format!("invalid [store.config] {key}: {why}"))
}

impl Settings {
    pub fn new(c: Config) -> Result<Settings, StageError> {
        let base_url = c.base_url.trim().trim_end_matches('/').to_string();
        let api = check_base_url(&base_url).map_err(|why| invalid("base_url", why))?;
        let timeout_ms = c.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}")));
        }
        let headers = check_headers("headers", &c.headers, false)?;
        let create = check_request("create", c.create, headers.len())?;
        let update = c.update.map(|u| check_request("update", u, headers.len())).transpose()?;
        let find = c.find.map(|f| check_find(f, headers.len())).transpose()?;
        if let Some(u) = &update {
            if !u.texts().any(|t| uses(t, "remote_id")) {
                return Err(invalid(
                    "update",
                    "never uses {remote_id}, so it cannot say which document to replace (e.g. path = \"/documents/{remote_id}\")",
                ));
            }
        }
        if let Some(f) = &find {
            let tags: Vec<&str> = ["sha256", "sha12"].into_iter().filter(|p| uses(&f.tag, p)).collect();
            for r in std::iter::once(&create).chain(update.as_ref()) {
                for p in &tags {
                    if !r.texts().any(|t| uses(t, p)) {
                        return Err(invalid(
                            "find.match",
                            format!(
                                "uses {{{p}}} but {} never sends it, so find would never recognise what ferry \
                                 stored; put the tag into a field of {}, e.g. a note \"[ferry:{{{p}}}]\"",
                                r.key, r.key
                            ),
                        ));
                    }
                }
            }
        }
        Ok(Settings { base_url, api, headers, timeout_ms, create, update, find })
    }

    /// One line for the log (no header values).
    pub fn describe(&self) -> String {
        format!(
            "HTTP store at {}: create {} {}{}{}",
            self.api,
            self.create.method,
            self.create.path,
            self.update.as_ref().map(|u| format!(", update {} {}", u.method, u.path)).unwrap_or_default(),
            self.find.as_ref().map(|f| format!(", find GET {}", f.path)).unwrap_or_default(),
        )
    }
}

impl Req {
    /// Every template text of the request (path, header values, body).
    fn texts(&self) -> impl Iterator<Item = &str> {
        let body: Vec<&str> = match &self.body {
            Body::Multipart(parts) => parts
                .iter()
                .flat_map(|p| match p {
                    Part::Text { value, .. } => vec![value.as_str()],
                    Part::File { filename, content_type, .. } => vec![filename.as_str(), content_type.as_str()],
                })
                .collect(),
            Body::Json { before, after, content_type } => vec![before, after, content_type],
            Body::Raw { content_type } => vec![content_type],
        };
        std::iter::once(self.path.as_str()).chain(self.headers.iter().map(|(_, v)| v.as_str())).chain(body)
    }
}

fn check_request(key: &'static str, c: RequestConfig, shared_headers: usize) -> Result<Req, StageError> {
    let k = |sub: &str| format!("{key}.{sub}");
    let method = match c.method.as_deref().map(str::trim) {
        None if key == "create" => "POST".to_string(),
        None => "PUT".to_string(),
        Some(m) if ["POST", "PUT", "PATCH"].iter().any(|x| m.eq_ignore_ascii_case(x)) => m.to_ascii_uppercase(),
        Some(m) => {
            return Err(invalid(&k("method"), format!("{m:?} is not supported (\"POST\", \"PUT\" or \"PATCH\")")))
        }
    };
    let remote_ok = key == "update";
    check_path(&c.path, remote_ok).map_err(|why| invalid(&k("path"), why))?;
    let headers = check_headers(&k("headers"), &c.headers, remote_ok)?;
    if shared_headers + headers.len() + 1 > MAX_HEADERS {
        return Err(invalid(&k("headers"), format!("more than {MAX_HEADERS} headers with the shared ones")));
    }
    let body = check_body(key, c.body, remote_ok)?;
    let id_pointer = match (key, c.id_pointer) {
        ("create", None) => Some("/id".to_string()),
        (_, p) => p,
    };
    if let Some(p) = &id_pointer {
        check_pointer(p).map_err(|why| invalid(&k("id_pointer"), why))?;
    }
    let default_success: &[u16] = if key == "create" { &[200, 201] } else { &[200, 201, 204] };
    let success = c.success.unwrap_or_else(|| default_success.to_vec());
    check_statuses(&success, |s| (200..=299).contains(&s), "2xx statuses")
        .map_err(|why| invalid(&k("success"), why))?;
    Ok(Req { key, method, path: c.path, headers, body, id_pointer, success })
}

fn check_body(key: &str, c: BodyConfig, remote_ok: bool) -> Result<Body, StageError> {
    let k = |sub: &str| format!("{key}.body.{sub}");
    let check_ct = |sub: &str, t: Option<String>, default: &str| -> Result<String, StageError> {
        let t = t.unwrap_or_else(|| default.to_string());
        check_text(&t, remote_ok, MAX_HEADER_VALUE).map_err(|why| invalid(&k(sub), why))?;
        if t.trim().is_empty() {
            return Err(invalid(&k(sub), "must not be empty"));
        }
        Ok(t)
    };
    match c {
        BodyConfig::Raw { content_type } => {
            Ok(Body::Raw { content_type: check_ct("content_type", content_type, "{content_type}")? })
        }
        BodyConfig::Json { template, file_placeholder, content_type } => {
            let content_type = check_ct("content_type", content_type, "application/json")?;
            let marker = file_placeholder.unwrap_or_else(|| DEFAULT_FILE_PLACEHOLDER.into());
            if marker.len() < 3 || marker.contains(['{', '}', '"', '\\']) || marker.chars().any(char::is_control) {
                return Err(invalid(
                    &k("file_placeholder"),
                    "must be at least 3 characters without braces, quotes, backslashes or control characters, e.g. \"@FILE@\"",
                ));
            }
            check_text(&template, remote_ok, MAX_TEMPLATE).map_err(|why| invalid(&k("template"), why))?;
            let pieces: Vec<&str> = template.split(marker.as_str()).collect();
            let [before, after] = pieces[..] else {
                return Err(invalid(
                    &k("template"),
                    format!(
                        "must contain {marker:?} exactly once, inside a string where the file's base64 goes \
                         (found {} times), e.g. '{{\"data\": \"{marker}\"}}'",
                        pieces.len() - 1
                    ),
                ));
            };
            let (before, after) = (before.to_string(), after.to_string());
            let dummy = Doc::dummy();
            let rendered =
                format!("{}QUJD{}", render(&before, &dummy, Escape::Json), render(&after, &dummy, Escape::Json));
            serde_json::from_str::<Value>(&rendered).map_err(|e| {
                invalid(
                    &k("template"),
                    format!(
                        "not valid JSON once filled in ({}); placeholders are inserted JSON-escaped without \
                         quotes, so write \"{{title}}\" in quotes, and {marker:?} must be inside a string",
                        json_error(&e)
                    ),
                )
            })?;
            Ok(Body::Json { before, after, content_type })
        }
        BodyConfig::Multipart { parts } => {
            if parts.is_empty() || parts.len() > MAX_PARTS {
                return Err(invalid(&k("parts"), format!("needs 1 to {MAX_PARTS} parts, one of them file = true")));
            }
            let mut out = Vec::new();
            for (i, p) in parts.into_iter().enumerate() {
                let pk = format!("parts[{i}]");
                if p.name.is_empty()
                    || p.name.len() > 100
                    || p.name.chars().any(|c| c == '"' || c == '\\' || c == '{' || c == '}' || c.is_control())
                {
                    return Err(invalid(
                        &k(&format!("{pk}.name")),
                        "must be 1 to 100 characters without quotes, backslashes, braces or control characters",
                    ));
                }
                match (p.file, p.value) {
                    (true, None) => {
                        let filename = p.filename.unwrap_or_else(|| "{file_name}".into());
                        check_text(&filename, remote_ok, MAX_HEADER_VALUE)
                            .map_err(|why| invalid(&k(&format!("{pk}.filename")), why))?;
                        let content_type = check_ct(&format!("{pk}.content_type"), p.content_type, "{content_type}")?;
                        out.push(Part::File { name: p.name, filename, content_type });
                    }
                    (false, Some(value)) => {
                        if p.filename.is_some() || p.content_type.is_some() {
                            return Err(invalid(
                                &k(&pk),
                                "filename and content_type are for the file part (file = true)",
                            ));
                        }
                        check_text(&value, remote_ok, MAX_TEMPLATE)
                            .map_err(|why| invalid(&k(&format!("{pk}.value")), why))?;
                        out.push(Part::Text { name: p.name, value });
                    }
                    (true, Some(_)) => {
                        return Err(invalid(&k(&pk), "has both file = true and a value; the file part has no value"))
                    }
                    (false, None) => {
                        return Err(invalid(&k(&pk), "needs a value = \"...\" (a text part) or file = true (the file)"))
                    }
                }
            }
            let files = out.iter().filter(|p| matches!(p, Part::File { .. })).count();
            if files != 1 {
                return Err(invalid(&k("parts"), format!("needs exactly one part with file = true (found {files})")));
            }
            Ok(Body::Multipart(out))
        }
    }
}

fn check_find(c: FindConfig, shared_headers: usize) -> Result<Find, StageError> {
    check_path(&c.path, false).map_err(|why| invalid("find.path", why))?;
    let headers = check_headers("find.headers", &c.headers, false)?;
    if shared_headers + headers.len() + 1 > MAX_HEADERS {
        return Err(invalid("find.headers", format!("more than {MAX_HEADERS} headers with the shared ones")));
    }
    let results_pointer = c.results_pointer.unwrap_or_default();
    let id_pointer = c.id_pointer.unwrap_or_else(|| "/id".into());
    for (key, p) in [
        ("find.results_pointer", Some(&results_pointer)),
        ("find.match_pointer", Some(&c.match_pointer)),
        ("find.patient_pointer", c.patient_pointer.as_ref()),
        ("find.id_pointer", Some(&id_pointer)),
    ] {
        if let Some(p) = p {
            check_pointer(p).map_err(|why| invalid(key, why))?;
        }
    }
    let tag = c.tag.unwrap_or_else(|| "{sha256}".into());
    check_text(&tag, false, MAX_HEADER_VALUE).map_err(|why| invalid("find.match", why))?;
    if !uses(&tag, "sha256") && !uses(&tag, "sha12") {
        return Err(invalid(
            "find.match",
            "must contain {sha256} or {sha12}: a match must mean the same bytes (e.g. \"[ferry:{sha12}]\")",
        ));
    }
    if !uses(&c.path, "patient") && c.patient_pointer.is_none() {
        return Err(invalid(
            "find",
            "must be limited to the patient: put {patient} in find.path or set find.patient_pointer (the same \
             file filed for another patient is not a copy for this one)",
        ));
    }
    let success = c.success.unwrap_or_else(|| vec![200]);
    check_statuses(&success, |s| (200..=299).contains(&s), "2xx statuses")
        .map_err(|why| invalid("find.success", why))?;
    let not_found_status = c.not_found_status.unwrap_or_else(|| vec![404]);
    check_statuses(
        &not_found_status,
        |s| ((400..=499).contains(&s) && !matches!(s, 401 | 403 | 408 | 429)) || (200..=299).contains(&s),
        "4xx statuses other than 401, 403, 408, 429 (or a 2xx such as 204)",
    )
    .map_err(|why| invalid("find.not_found_status", why))?;
    if let Some(s) = not_found_status.iter().find(|s| success.contains(s)) {
        return Err(invalid("find.not_found_status", format!("{s} is also in find.success")));
    }
    Ok(Find {
        path: c.path,
        headers,
        results_pointer,
        match_pointer: c.match_pointer,
        tag,
        patient_pointer: c.patient_pointer,
        id_pointer,
        success,
        not_found_status,
    })
}

fn check_statuses(list: &[u16], ok: impl Fn(u16) -> bool, what: &str) -> Result<(), String> {
    if list.is_empty() || list.len() > 16 {
        return Err(format!("needs 1 to 16 {what}"));
    }
    match list.iter().find(|&&s| !ok(s)) {
        Some(s) => Err(format!("{s} is not allowed here (only {what})")),
        None => Ok(()),
    }
}

/// Checks an `http(s)` base URL and returns its `host[:port]`, lowercase.
pub fn check_base_url(url: &str) -> Result<String, String> {
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains {c:?}"));
    }
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    if url.contains(['?', '#']) {
        return Err("must not have a query or fragment (paths go in the request templates)".into());
    }
    if url.contains(['{', '}']) {
        return Err("must not contain placeholders (they go in the request templates' paths)".into());
    }
    if url.contains('\\') {
        return Err("must not contain a backslash".into());
    }
    let authority = authority_of(rest);
    if authority.contains('@') {
        return Err("must not contain credentials (user@); use grants.http_auth".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => return Err("unclosed `[` in the host".into()),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("bad port {p:?}"));
        }
    }
    Ok(authority.to_ascii_lowercase())
}

/// The authority of what follows `scheme://`, ending where a URL parser
/// (WHATWG: `\` counts as `/`) ends it.
fn authority_of(rest: &str) -> &str {
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    &rest[..end]
}

/// Checks a path template: `/…`, placeholders known, stays under the base.
pub fn check_path(path: &str, remote_ok: bool) -> Result<(), String> {
    if path.len() > MAX_PATH {
        return Err(format!("longer than {MAX_PATH} characters"));
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with `/` (it is appended to base_url)"));
    }
    if path.starts_with("//") {
        return Err("must not start with `//` (it is appended to base_url, on its host)".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains {c:?} (percent-encode it)"));
    }
    if path.contains('\\') {
        return Err("contains a backslash (percent-encode it as %5C)".into());
    }
    if path.contains('#') {
        return Err("a #fragment is never sent; remove it".into());
    }
    check_placeholders(path, remote_ok)?;
    let literal = strip_placeholders(path);
    if literal.contains(['{', '}']) {
        return Err("a brace that is not a placeholder (write a literal brace as %7B / %7D)".into());
    }
    let path_part = literal.split('?').next().unwrap_or_default();
    if path_part.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("must not contain `.` or `..` segments".into());
    }
    Ok(())
}

/// Checks a text template (body, header value): bounded, placeholders known.
fn check_text(t: &str, remote_ok: bool, max: usize) -> Result<(), String> {
    if t.len() > max {
        return Err(format!("longer than {max} bytes"));
    }
    check_placeholders(t, remote_ok)
}

fn check_placeholders(t: &str, remote_ok: bool) -> Result<(), String> {
    for (_, _, name) in placeholders(t) {
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!("unknown placeholder {{{name}}} (known: {})", known_list()));
        }
        if name == "remote_id" && !remote_ok {
            return Err("{remote_id} is only known in update".into());
        }
    }
    Ok(())
}

fn known_list() -> String {
    PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
}

fn strip_placeholders(t: &str) -> String {
    let mut out = String::new();
    let mut last = 0;
    for (start, end, _) in placeholders(t) {
        out.push_str(&t[last..start]);
        last = end;
    }
    out.push_str(&t[last..]);
    out
}

fn uses(t: &str, name: &str) -> bool {
    placeholders(t).any(|(_, _, n)| n == name)
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Header names that carry credentials: refused in config.
fn is_credential_header(lower: &str) -> bool {
    matches!(lower, "authorization" | "proxy-authorization" | "cookie")
        || ["token", "secret", "password", "session", "api-key", "apikey", "api_key"].iter().any(|w| lower.contains(w))
}

fn check_headers(
    key: &str,
    h: &BTreeMap<String, String>,
    remote_ok: bool,
) -> Result<Vec<(String, String)>, StageError> {
    if h.len() > MAX_HEADERS - 1 {
        return Err(invalid(key, format!("more than {} headers", MAX_HEADERS - 1)));
    }
    let mut out = Vec::new();
    for (name, value) in h {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(key, format!("{name:?} is not a valid header name")));
        }
        let lower = name.to_ascii_lowercase();
        if is_credential_header(&lower) {
            // never echo the value
            return Err(invalid(
                key,
                format!(
                    "{name:?} carries credentials, which do not belong in [store.config]: put them in \
                     grants.http_auth of [store] for the API's host (kind = \"bearer\", \"basic\", \"oauth2\", \
                     or kind = \"header\" with name = \"{name}\"); the host adds them to every request"
                ),
            ));
        }
        if matches!(lower.as_str(), "content-type" | "content-length" | "host" | "transfer-encoding" | "connection") {
            return Err(invalid(
                key,
                format!("{name:?} is set by the host or the body (use the body's content_type to choose the type)"),
            ));
        }
        if value.len() > MAX_HEADER_VALUE {
            return Err(invalid(key, format!("the value of {name:?} is longer than {MAX_HEADER_VALUE} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(key, format!("the value of {name:?} contains a line break or control character")));
        }
        check_placeholders(value, remote_ok).map_err(|why| invalid(key, format!("{name:?}: {why}")))?;
        out.push((name.clone(), value.clone()));
    }
    Ok(out)
}

/// Checks an RFC 6901 JSON pointer: `""` (the whole document) or
/// `/`-prefixed tokens where `~` is only followed by `0` or `1`.
pub fn check_pointer(p: &str) -> Result<(), String> {
    if p.len() > MAX_POINTER {
        return Err(format!("longer than {MAX_POINTER} characters"));
    }
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!("{p:?} is not a JSON pointer (it starts with `/`, e.g. \"/id\")"));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!("{p:?}: `~` must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)"));
        }
    }
    Ok(())
}

/// A serde_json error without any of the document's content.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "unexpected end",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected data",
        Category::Io => "read error",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

// -------------------------------------------------------------- templates

/// `(start, end, name)` of each `{name}` in `t` (name: `[a-z0-9_]+`
/// starting with a letter); other braces are literal.
pub fn placeholders(t: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let bytes = t.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] == b'{' {
                let start = i;
                let mut j = i + 1;
                while j < bytes.len()
                    && (bytes[j].is_ascii_lowercase() || bytes[j].is_ascii_digit() || bytes[j] == b'_')
                {
                    j += 1;
                }
                if j > start + 1 && j < bytes.len() && bytes[j] == b'}' && bytes[start + 1].is_ascii_lowercase() {
                    i = j + 1;
                    return Some((start, j + 1, &t[start + 1..j]));
                }
            }
            i += 1;
        }
        None
    })
}

/// How a placeholder's value is inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Percent-encoded (paths and queries).
    Url,
    /// JSON-escaped without quotes.
    Json,
    /// Control characters → spaces, non-ASCII percent-encoded.
    Header,
    /// As it is (multipart text).
    None,
}

/// What the placeholders stand for, for one item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Doc {
    pub patient: String,
    pub item_id: String,
    pub title: String,
    pub file_name: String,
    pub content_type: String,
    pub date: String,
    pub type_code: String,
    pub type_display: String,
    pub type_system: String,
    pub author: String,
    pub sha256: String,
    pub size: u64,
    pub remote_id: Option<String>,
}

fn text<'a>(metadata: &'a Metadata, key: &str) -> Option<&'a str> {
    metadata.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        MetaValue::Text(s) if !s.trim().is_empty() => Some(s.trim()),
        _ => None,
    })
}

impl Doc {
    pub fn new(item: &Item, metadata: &Metadata, patient: &str, sha256: &str, size: u64) -> Doc {
        let get = |k: &str| text(metadata, k).unwrap_or_default().to_string();
        let file_name = file_name_of(&item.display_name);
        let content_type = text(metadata, "document.content-type")
            .filter(|ct| usable_content_type(ct))
            .map(str::to_string)
            .unwrap_or_else(|| content_type_of(&file_name).to_string());
        Doc {
            patient: patient.to_string(),
            item_id: item.id.clone(),
            title: text(metadata, "document.title").unwrap_or(item.display_name.trim()).to_string(),
            file_name,
            content_type,
            date: get("document.date"),
            type_code: get("document.type.code"),
            type_display: get("document.type.display"),
            type_system: get("document.type.system"),
            author: get("document.author"),
            sha256: sha256.to_ascii_lowercase(),
            size,
            remote_id: None,
        }
    }

    /// Awkward values for checking templates at configure time.
    pub fn dummy() -> Doc {
        let awkward = "a \"quoted\"\\ line\nbreak / ? & # % é 日本 \u{1}";
        Doc {
            patient: "p/1?x".into(),
            item_id: awkward.into(),
            title: awkward.into(),
            file_name: "r\u{e9}sum\u{e9}.pdf".into(),
            content_type: "application/pdf".into(),
            date: "2024-03-17".into(),
            type_code: awkward.into(),
            type_display: awkward.into(),
            type_system: "http://loinc.org".into(),
            author: awkward.into(),
            sha256: "0".repeat(64),
            size: 12345,
            remote_id: Some(awkward.into()),
        }
    }

    /// The raw value of a placeholder.
    pub fn value(&self, name: &str) -> String {
        match name {
            "patient" => self.patient.clone(),
            "item_id" => self.item_id.clone(),
            "title" => self.title.clone(),
            "file_name" => self.file_name.clone(),
            "content_type" => self.content_type.clone(),
            "date" => self.date.clone(),
            "type_code" => self.type_code.clone(),
            "type_display" => self.type_display.clone(),
            "type_system" => self.type_system.clone(),
            "author" => self.author.clone(),
            "sha256" => self.sha256.clone(),
            "sha12" => self.sha256.chars().take(12).collect(),
            "size" => self.size.to_string(),
            "remote_id" => self.remote_id.clone().unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Values that may identify a patient, blanked out of quoted answers.
    fn sensitive(&self) -> Vec<&str> {
        [self.title.as_str(), self.file_name.as_str(), self.author.as_str(), self.type_display.as_str()]
            .into_iter()
            .filter(|v| v.chars().count() >= 4)
            .collect()
    }
}

/// `t` with its placeholders filled in.
pub fn render(t: &str, doc: &Doc, escape: Escape) -> String {
    let mut out = String::with_capacity(t.len());
    let mut last = 0;
    for (start, end, name) in placeholders(t) {
        out.push_str(&t[last..start]);
        let v = doc.value(name);
        match escape {
            Escape::Url => out.push_str(&url_value(&v)),
            Escape::Json => out.push_str(&json_escape(&v)),
            Escape::Header => out.push_str(&header_value(&v)),
            Escape::None => out.push_str(&v),
        }
        last = end;
    }
    out.push_str(&t[last..]);
    out
}

/// Percent-encoded; a value of dots only is encoded too (no `..` segment).
pub fn url_value(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|b| b == b'.') {
        return "%2E".repeat(v.len());
    }
    percent_encode(v)
}

/// The JSON string literal of `s` without its quotes.
pub fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("strings always serialise");
    quoted[1..quoted.len() - 1].to_string()
}

/// Control characters → spaces, non-ASCII percent-encoded (UTF-8).
pub fn header_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_control() {
            out.push(' ');
        } else if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// For a multipart `filename`: quotes, backslashes and control characters
/// → `_`, at most 255 characters.
pub fn safe_filename(v: &str) -> String {
    let s: String =
        v.chars().map(|c| if c == '"' || c == '\\' || c.is_control() { '_' } else { c }).take(255).collect();
    if s.trim().is_empty() {
        "document".into()
    } else {
        s
    }
}

/// The display name without folders, quotes or control characters.
pub fn file_name_of(display_name: &str) -> String {
    let base = display_name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    safe_filename(base)
}

/// A content type the host accepts in a header or part.
fn usable_content_type(ct: &str) -> bool {
    ct.len() <= 255 && ct.contains('/') && ct.is_ascii() && !ct.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

/// A content type from a file name's extension.
pub fn content_type_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "webp" => "image/webp",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "xml" => "application/xml",
        "json" => "application/json",
        "rtf" => "application/rtf",
        "dcm" => "application/dicom",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _ => "application/octet-stream",
    }
}

/// A placeholder for the base64 bytes such that `before + placeholder +
/// after` holds it exactly once (the host splits the body there).
pub fn fresh_placeholder(before: &str, after: &str) -> String {
    let mut n = 0u32;
    loop {
        let p = format!("@ferry-file-{n}@");
        if format!("{before}{p}{after}").matches(&p).count() == 1 {
            return p;
        }
        n += 1;
    }
}

impl Settings {
    /// The full URL for a path template; refused if it would leave the
    /// base URL's host or grow too long.
    pub fn url(&self, key: &str, path: &str, doc: &Doc) -> Result<String, StageError> {
        let url = format!("{}{}", self.base_url, render(path, doc, Escape::Url));
        if url.len() > MAX_URL {
            return Err(permanent(format!(
                "{key}.path in [store.config] makes a URL longer than {MAX_URL} characters for this item; \
                 use shorter placeholders there"
            )));
        }
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        if !authority_of(rest).eq_ignore_ascii_case(&self.api) {
            return Err(permanent(format!("{key}.path in [store.config] would send the request off {}", self.api)));
        }
        Ok(url)
    }

    /// Headers for a request: shared, own, `Accept` unless given, and a content type.
    pub fn headers(&self, own: &[(String, String)], doc: &Doc, content_type: Option<String>) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> =
            self.headers.iter().chain(own).map(|(k, v)| (k.clone(), render(v, doc, Escape::Header))).collect();
        if !h.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
            h.push(("Accept".into(), "application/json".into()));
        }
        if let Some(ct) = content_type {
            h.push(("Content-Type".into(), ct));
        }
        h
    }

    /// The request and file body of `create` / `update`.
    pub fn build(&self, r: &Req, doc: &Doc, file: &FileRef) -> Result<(Request, FileBody), StageError> {
        let url = self.url(r.key, &r.path, doc)?;
        let (body, content_type) = match &r.body {
            Body::Raw { content_type } => {
                let ct = render(content_type, doc, Escape::Header);
                (FileBody::Raw(file.clone()), Some(ct))
            }
            Body::Json { before, after, content_type } => {
                let (before, after) = (render(before, doc, Escape::Json), render(after, doc, Escape::Json));
                let placeholder = fresh_placeholder(&before, &after);
                if serde_json::from_str::<Value>(&format!("{before}QUJD{after}")).is_err() {
                    return Err(permanent(format!(
                        "{}.body.template in [store.config] is not valid JSON for this item; check the \
                         placeholders outside quotes",
                        r.key
                    )));
                }
                if before.len() + after.len() > 4 * MAX_TEMPLATE {
                    return Err(permanent(format!("{}.body.template in [store.config] grows too large", r.key)));
                }
                let template = format!("{before}{placeholder}{after}");
                let ct = render(content_type, doc, Escape::Header);
                (FileBody::Base64(Base64Body { template, placeholder, file: file.clone() }), Some(ct))
            }
            Body::Multipart(parts) => {
                let parts = parts
                    .iter()
                    .map(|p| match p {
                        Part::Text { name, value } => {
                            FormPart { name: name.clone(), value: PartValue::Text(render(value, doc, Escape::None)) }
                        }
                        Part::File { name, filename, content_type } => {
                            let ct = render(content_type, doc, Escape::None);
                            let ct = if usable_content_type(&ct) { ct } else { "application/octet-stream".into() };
                            FormPart {
                                name: name.clone(),
                                value: PartValue::File(FilePart {
                                    file: file.clone(),
                                    filename: safe_filename(&render(filename, doc, Escape::None)),
                                    content_type: ct,
                                }),
                            }
                        }
                    })
                    .collect();
                // the host sets multipart/form-data with its boundary
                (FileBody::Multipart(parts), None)
            }
        };
        let request = Request {
            method: r.method.clone(),
            url,
            headers: self.headers(&r.headers, doc, content_type),
            body: None,
            timeout_ms: Some(self.timeout_ms),
            // not idempotent: a retry after a lost answer would duplicate
            retry: false,
        };
        Ok((request, body))
    }

    /// The `find` request.
    pub fn find_request(&self, f: &Find, doc: &Doc) -> Result<Request, StageError> {
        Ok(Request {
            method: "GET".into(),
            url: self.url("find", &f.path, doc)?,
            headers: self.headers(&f.headers, doc, None),
            body: None,
            timeout_ms: Some(self.timeout_ms),
            retry: true,
        })
    }
}

// ---------------------------------------------------------------- answers

/// A short, printable excerpt of an answer's body for an error: the
/// message fields of a JSON answer (else the text), control characters
/// removed, base64-like runs (an echoed file or token), credentials after
/// `Bearer`/`Basic` and `sensitive` values blanked, at most
/// [`MAX_EXCERPT`] characters. None for an empty, binary or HTML answer.
pub fn excerpt(body: &[u8], sensitive: &[&str]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() || text.starts_with('<') {
        return None;
    }
    let raw = match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let mut found = Vec::new();
            messages(&v, 0, &mut found);
            if found.is_empty() {
                return None;
            }
            found.join("; ")
        }
        Err(_) => text.chars().take(4 * MAX_EXCERPT).collect(),
    };
    // control characters → spaces, runs of white space → one: the same
    // for the answer and the values blanked out of it
    let normal = |t: &str| {
        t.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
    };
    let mut s = normal(&raw);
    for v in sensitive {
        let v = normal(v);
        if !v.is_empty() {
            s = s.replace(&v, "<…>");
        }
    }
    s = blank_credentials(&s);
    let s = blank_base64_runs(&s);
    let mut out: String = s.chars().take(MAX_EXCERPT).collect();
    if s.chars().count() > MAX_EXCERPT {
        out.push('…');
    }
    (!out.is_empty()).then_some(out)
}

/// Strings under the usual error-message keys of a JSON answer.
fn messages(v: &Value, depth: usize, out: &mut Vec<String>) {
    const KEYS: &[&str] = &["message", "error", "error_description", "detail", "title", "errors", "msg", "description"];
    if depth > 3 || out.len() >= 5 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if KEYS.contains(&k.to_ascii_lowercase().as_str()) {
                    match v {
                        Value::String(s) if out.len() < 5 => out.push(s.clone()),
                        Value::Array(_) | Value::Object(_) => messages(v, depth + 1, out),
                        _ => {}
                    }
                }
            }
        }
        Value::Array(a) => {
            for v in a.iter().take(5) {
                match v {
                    Value::String(s) if out.len() < 5 => out.push(s.clone()),
                    _ => messages(v, depth + 1, out),
                }
            }
        }
        _ => {}
    }
}

fn blank_credentials(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut words = s.split(' ').peekable();
    let mut first = true;
    while let Some(w) = words.next() {
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(w);
        let lw = w.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_ascii_lowercase();
        if (lw == "bearer" || lw == "basic") && words.peek().is_some() {
            words.next();
            out.push_str(" <…>");
        }
    }
    out
}

/// Runs of 40+ base64 characters → `<…>`.
fn blank_base64_runs(s: &str) -> String {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 40 {
            out.push_str("<…>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if is_b64(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The error for an answer that is not what was hoped for.
pub fn status_error(s: &Settings, what: &str, key: &str, response: &Response, doc: &Doc) -> StageError {
    let status = response.status;
    let said = format!("{} answered {status}{} to {what}", s.api, reason(status));
    let quote = || match excerpt(&response.body, &doc.sensitive()) {
        Some(e) => format!(" ({e})"),
        None => String::new(),
    };
    match status {
        401 | 403 => permanent(format!(
            "{said}: the credentials were refused; check grants.http_auth.\"{}\" of [store] (the host adds them), \
             that they have not expired and may write documents",
            s.api.split(':').next().unwrap_or_default()
        )),
        408 | 429 | 500..=599 => retryable(format!("{said}; will try again later")),
        200..=299 => permanent(format!(
            "{said}, which is not in {key}.success; if it means done, add it to {key}.success in [store.config]{}",
            quote()
        )),
        300..=399 => {
            permanent(format!("{said}: a redirect, which ferry does not follow; check base_url and {key}.path"))
        }
        _ => permanent(format!(
            "{said}{}; check {key} in [store.config] against the platform's API documentation",
            quote()
        )),
    }
}

/// A host error, with what was being done.
pub fn host_error(s: &Settings, what: &str, e: HostError) -> StageError {
    let mut e: StageError = e.into();
    e.message = format!("calling {} ({what}): {}", s.api, e.message);
    e
}

/// A remote id as found at a pointer: a non-empty string or an integer.
fn id_value(v: Option<&Value>) -> Option<String> {
    let id = match v? {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return None,
    };
    usable_id(&id).then_some(id)
}

fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REMOTE_ID && !id.chars().any(char::is_control)
}

/// The remote id in a success: at `pointer` in the body, else the last
/// path segment of `Location`.
pub fn remote_id(response: &Response, pointer: Option<&str>) -> Option<String> {
    let from_body = pointer.and_then(|p| {
        let v: Value = serde_json::from_slice(&response.body).ok()?;
        id_value(v.pointer(p))
    });
    from_body.or_else(|| {
        let loc = response.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("location"))?.1.as_str();
        let path = loc.split(['?', '#']).next()?;
        let last = path.trim_end_matches('/').rsplit('/').next()?;
        (usable_id(last) && !last.contains(':')).then(|| last.to_string())
    })
}

/// What `find` saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    None,
    /// The remote id of the first matching candidate.
    One(String),
}

/// Reads a `find` answer body.
pub fn parse_find(f: &Find, body: &[u8], doc: &Doc) -> Result<Found, StageError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        retryable("find: the answer is not JSON; will try again later (check find.path if it persists)")
    })?;
    let candidates: Vec<&Value> = match v.pointer(&f.results_pointer) {
        None | Some(Value::Null) => return Ok(Found::None),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        Some(_) => {
            return Err(permanent(format!(
            "find: the value at find.results_pointer {:?} is neither a list nor an object; check it in [store.config]",
            f.results_pointer
        )))
        }
    };
    let tag = render(&f.tag, doc, Escape::None);
    let carries = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.contains(&tag),
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str().is_some_and(|s| s.contains(&tag))),
        Some(Value::Number(n)) => n.to_string() == tag,
        _ => false,
    };
    let of_patient = |c: &Value| match &f.patient_pointer {
        None => true,
        Some(p) => match c.pointer(p) {
            Some(Value::String(s)) => s.trim() == doc.patient,
            Some(Value::Number(n)) => n.to_string() == doc.patient,
            _ => false,
        },
    };
    for c in candidates {
        if carries(c.pointer(&f.match_pointer)) && of_patient(c) {
            return match id_value(c.pointer(&f.id_pointer)) {
                Some(id) => Ok(Found::One(id)),
                None => Err(permanent(format!(
                    "find: a copy carries the tag but has no id at find.id_pointer {:?}; check it in [store.config]",
                    f.id_pointer
                ))),
            };
        }
    }
    Ok(Found::None)
}

/// The remote id in `ferry.previous-location`, if it is this plugin's.
pub fn previous_id(metadata: &Metadata) -> Option<String> {
    let id = text(metadata, PREVIOUS_LOCATION)?.strip_prefix(LOCATION_PREFIX)?;
    usable_id(id).then(|| id.to_string())
}

/// The location ferry records for a remote id.
pub fn location(id: &str) -> String {
    format!("{LOCATION_PREFIX}{id}")
}

// ------------------------------------------------------------------- flow

/// The capability calls the store makes (the host, or a fake in tests).
pub trait Transport {
    fn send(&mut self, request: Request) -> Result<Response, HostError>;
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError>;
    /// Hex SHA-256 of a file, computed host-side.
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError>;
    /// Size of a file in bytes.
    fn size(&mut self, file: &FileRef) -> Result<u64, HostError>;
}

/// The real host.
pub struct HostTransport;

impl Transport for HostTransport {
    fn send(&mut self, request: Request) -> Result<Response, HostError> {
        http::send(&request)
    }
    fn send_file(&mut self, request: Request, body: FileBody) -> Result<Response, HostError> {
        http::send_file(&request, &body)
    }
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError> {
        fs::sha256(file)
    }
    fn size(&mut self, file: &FileRef) -> Result<u64, HostError> {
        fs::stat(file).map(|e| e.size)
    }
}

/// Runs `find`: the remote id of a copy of this item's bytes for this patient.
fn find_copy(s: &Settings, t: &mut dyn Transport, f: &Find, doc: &Doc) -> Result<Option<String>, StageError> {
    let what = format!("find (GET {})", f.path);
    let r = t.send(s.find_request(f, doc)?).map_err(|e| host_error(s, &what, e))?;
    if f.not_found_status.contains(&r.status) {
        return Ok(None);
    }
    if !f.success.contains(&r.status) {
        return Err(status_error(s, &what, "find", &r, doc));
    }
    Ok(match parse_find(f, &r.body, doc)? {
        Found::One(id) => Some(id),
        Found::None => None,
    })
}

/// Sends `create` or `update`: `Ok(None)` for an update whose document is gone.
fn send(s: &Settings, t: &mut dyn Transport, r: &Req, doc: &Doc, file: &FileRef) -> Result<Sent, StageError> {
    let what = format!("{} ({} {})", r.key, r.method, r.path);
    let (request, body) = s.build(r, doc, file)?;
    let response = t.send_file(request, body).map_err(|e| host_error(s, &what, e))?;
    if r.success.contains(&response.status) {
        let id = remote_id(&response, r.id_pointer.as_deref()).or_else(|| doc.remote_id.clone());
        return match id {
            Some(id) => Ok(Sent::Done(id)),
            None => Err(permanent(format!(
                "{} answered {} to {what} but no remote id was found at {}.id_pointer {:?} nor in a Location \
                 header; the document may exist now: fix {}.id_pointer in [store.config] (and configure find, \
                 so the retry does not duplicate it)",
                s.api,
                response.status,
                r.key,
                r.id_pointer.as_deref().unwrap_or_default(),
                r.key
            ))),
        };
    }
    match response.status {
        404 | 410 if r.key == "update" => Ok(Sent::Gone),
        409 => Ok(Sent::Conflict(status_error(s, &what, r.key, &response, doc))),
        _ => Err(status_error(s, &what, r.key, &response, doc)),
    }
}

enum Sent {
    Done(String),
    Gone,
    Conflict(StageError),
}

/// Stores one item: find, then update or create.
pub fn store_item(
    s: &Settings,
    t: &mut dyn Transport,
    item: &Item,
    metadata: &Metadata,
    patient: &str,
) -> Result<Stored, StageError> {
    let sha256 = t.sha256(&item.file).map_err(|e| host_error(s, "hashing the item's file", e))?;
    let size = t.size(&item.file).map_err(|e| host_error(s, "reading the item's file size", e))?;
    let mut doc = Doc::new(item, metadata, patient, &sha256, size);
    let unchanged = |id: String| Stored { location: location(&id), outcome: StoreOutcome::Unchanged };

    if let Some(f) = &s.find {
        if let Some(id) = find_copy(s, t, f, &doc)? {
            debug(&format!("{} is already at {} as {id}", item.id, s.api));
            return Ok(unchanged(id));
        }
    }
    let mut order = Vec::new();
    if let (Some(u), Some(old)) = (&s.update, previous_id(metadata)) {
        order.push((u, Some(old)));
    }
    order.push((&s.create, None));
    for (r, old) in order {
        doc.remote_id = old;
        match send(s, t, r, &doc, &item.file)? {
            Sent::Done(id) => {
                debug(&format!("{} {} at {} as {id}", item.id, r.key, s.api));
                return Ok(Stored { location: location(&id), outcome: StoreOutcome::Stored });
            }
            Sent::Gone => {
                debug(&format!("the previous version of {} is gone from {}; creating it anew", item.id, s.api));
            }
            Sent::Conflict(e) => {
                // the platform says it exists: look once more
                if let Some(f) = &s.find {
                    doc.remote_id = None;
                    if let Some(id) = find_copy(s, t, f, &doc)? {
                        return Ok(unchanged(id));
                    }
                    return Err(permanent(format!("{}; find found no copy carrying the tag", e.message)));
                }
                return Err(permanent(format!(
                    "{}; configure find so ferry can recognise a copy already there",
                    e.message
                )));
            }
        }
    }
    // `create` never answers `Gone`
    Err(permanent(format!("{}: create gave no answer", s.api)))
}

/// The configured stage.
struct HttpStore(Settings);

impl Store for HttpStore {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        let settings = Settings::new(config)?;
        debug(&settings.describe());
        Ok(HttpStore(settings))
    }

    fn store(&mut self, item: Item, metadata: Metadata, patient_guid: String) -> Result<Stored, StageError> {
        store_item(&self.0, &mut HostTransport, &item, &metadata, &patient_guid)
    }
}

ferry_plugin_sdk::store_plugin!(HttpStore);

#[cfg(test)]
mod tests;
