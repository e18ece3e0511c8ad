//! The scan: searches, positions, downloads. Host calls go through
//! [`Transport`], so all of it runs natively in the unit tests.
use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ferry_plugin_sdk::http::{Request, Response, Spooled};
use ferry_plugin_sdk::serde_json::{self, Value};
use ferry_plugin_sdk::status_reason as reason;
use ferry_plugin_sdk::types::{DocumentFacts, HostError, Item, PatientKey, StageError};
use ferry_plugin_sdk::{
    debug, percent_encode, permanent, retryable, warn, Document, DocumentPage, Notice, NoticeOutcome,
};
use sha1::{Digest, Sha1};

use crate::config::{Settings, LOINC};
use crate::cursor::{Cursor, Position, MAX_CURSOR};
use crate::fhir::{self, Chosen, Source};

pub const FHIR_JSON: &str = "application/fhir+json";
/// Largest `_count` asked for (page size plus the ids to pass over).
pub const MAX_COUNT: usize = 1000;
/// Search pages followed in one call when none of them yields anything.
pub const MAX_HOPS: usize = 50;
/// Search pages one pass follows in paging mode: a server whose `next`
/// links go round in a circle cannot keep a pass going for ever.
pub const MAX_PAGES: usize = 10_000;
/// Patients whose keys are kept per instance.
pub const PATIENT_CACHE: usize = 10_000;
/// Largest inline attachment (decoded).
pub const MAX_INLINE: usize = 16 << 20;

/// The capability calls of the scan (the host, or a fake in tests).
pub trait Transport {
    fn send(&mut self, request: &Request) -> Result<Response, HostError>;
    fn send_to_spool(&mut self, request: &Request) -> Result<Spooled, HostError>;
    fn spool_bytes(&mut self, body: &[u8]) -> Result<Spooled, HostError>;
}

/// The configured source and what it keeps between calls.
pub struct Scanner {
    pub s: Settings,
    patients: HashMap<String, Vec<PatientKey>>,
    warned: bool,
}

/// What became of one DocumentReference.
enum Handled {
    Doc(Box<Document>),
    Notice(Notice),
}

#[derive(Default)]
struct Out {
    documents: Vec<Document>,
    notices: Vec<Notice>,
}

impl Out {
    fn len(&self) -> usize {
        self.documents.len() + self.notices.len()
    }
    fn push(&mut self, h: Handled) {
        match h {
            Handled::Doc(d) => self.documents.push(*d),
            Handled::Notice(n) => self.notices.push(n),
        }
    }
    fn page(self, next: Option<Cursor>) -> DocumentPage {
        DocumentPage { documents: self.documents, notices: self.notices, next_cursor: next.map(|c| c.encode()) }
    }
}

/// The diagnostics of an OperationOutcome body, at most 300 characters.
pub fn diagnostics(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let parts: Vec<&str> = v
        .get("issue")?
        .as_array()?
        .iter()
        .filter_map(|i| i.get("diagnostics").and_then(Value::as_str).or_else(|| i.pointer("/details/text")?.as_str()))
        .collect();
    if parts.is_empty() {
        return None;
    }
    let all = parts.join("; ");
    let mut out: String = all.chars().filter(|c| !c.is_control()).take(300).collect();
    if all.chars().count() > 300 {
        out.push('…');
    }
    Some(out)
}

/// `host[:port]` of an absolute url.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or_default().rsplit('@').next().unwrap_or_default().to_ascii_lowercase()
}

fn credentials_error(s: &Settings, status: u16, host: &str) -> StageError {
    permanent(format!(
        "FHIR server at {host} answered {status}{}: the credentials were refused; check the credential the \
         pipeline's http grant for {host} adds (fhir-documents at {} sends none of its own), that it has not \
         expired and may read DocumentReference, Patient and Binary",
        reason(status),
        s.api
    ))
}

/// The error for an unexpected status of a search or Patient read.
pub fn status_error(s: &Settings, status: u16, body: &[u8], what: &str) -> StageError {
    match status {
        401 | 403 => credentials_error(s, status, &s.api),
        408 | 429 | 500..=599 => retryable(format!(
            "FHIR server at {} answered {status}{} {what} after the host's retries; will try again later",
            s.api,
            reason(status)
        )),
        _ => {
            let why = diagnostics(body).map(|d| format!(": {d}")).unwrap_or_default();
            let hint = if s.server_filters && status == 400 {
                "; the server may not support searching DocumentReference by status or type: set server_filters = false"
            } else {
                "; check base_url in [source.config]"
            };
            permanent(format!("FHIR server at {} answered {status}{} {what}{why}{hint}", s.api, reason(status)))
        }
    }
}

fn host_error(s: &Settings, e: HostError, what: &str) -> StageError {
    let mut e: StageError = e.into();
    e.message = format!("calling the FHIR server at {} ({what}): {}", s.api, e.message);
    e
}

/// Has the attachment title an extension already (`scan.pdf`)?
fn has_extension(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

impl Scanner {
    pub fn new(s: Settings) -> Scanner {
        Scanner { s, patients: HashMap::new(), warned: false }
    }

    fn request(&self, url: String, accept: &str) -> Request {
        Request {
            method: "GET".into(),
            url,
            headers: vec![("Accept".into(), accept.into())],
            body: None,
            timeout_ms: Some(self.s.timeout_ms),
            retry: true,
        }
    }

    /// The search from a position.
    pub fn search_url(&self, pos: &Position) -> String {
        let s = &self.s;
        let mut q = Vec::new();
        if let Some((since, _)) = &pos.since {
            q.push(format!("_lastUpdated=ge{}", percent_encode(since)));
        }
        q.push("_sort=_lastUpdated".to_string());
        let count = (s.page_size as usize + pos.seen.len()).min(MAX_COUNT);
        q.push(format!("_count={count}"));
        if s.server_filters {
            q.push(format!("status={}", percent_encode(&s.status)));
            if !s.types.is_empty() {
                let tokens: Vec<String> = s.types.iter().map(|t| percent_encode(&format!("{LOINC}|{t}"))).collect();
                q.push(format!("type={}", tokens.join(",")));
            }
        }
        format!("{}/DocumentReference?{}", s.base_url, q.join("&"))
    }

    fn get_json(&self, t: &mut dyn Transport, url: &str, what: &str) -> Result<(u16, Value, Vec<u8>), StageError> {
        let r = t.send(&self.request(url.to_string(), FHIR_JSON)).map_err(|e| host_error(&self.s, e, what))?;
        if r.status != 200 {
            return Ok((r.status, Value::Null, r.body));
        }
        let v = serde_json::from_slice(&r.body).map_err(|_| {
            retryable(format!("FHIR server at {} answered {what} with something that is not JSON", self.s.api))
        })?;
        Ok((200, v, Vec::new()))
    }

    fn bundle(&self, t: &mut dyn Transport, url: &str) -> Result<fhir::Bundle, StageError> {
        let what = "searching DocumentReference";
        let (status, v, body) = self.get_json(t, url, what)?;
        if status != 200 {
            return Err(status_error(&self.s, status, &body, what));
        }
        fhir::parse_bundle(&self.s, &v).map_err(|why| retryable(format!("FHIR server at {}: {why}", self.s.api)))
    }

    fn warn_degraded(&mut self, why: &str) {
        if !self.warned {
            self.warned = true;
            warn(&format!(
                "FHIR server at {}: {why}; fhir-documents pages through the server's links instead, so every \
                 pass reads all DocumentReferences (no resume point)",
                self.s.api
            ));
        }
    }

    /// One page of the scan.
    pub fn scan(&mut self, t: &mut dyn Transport, cursor: Option<&str>) -> Result<DocumentPage, StageError> {
        let page = match Cursor::decode(cursor)? {
            Cursor::Position(pos) => self.scan_from(t, pos)?,
            Cursor::Paging { url, skip, pages } => self.scan_paging(t, url, skip, pages)?,
        };
        if let Some(c) = &page.next_cursor {
            if c.len() > MAX_CURSOR {
                return Err(permanent(format!("internal: a cursor of {} bytes", c.len())));
            }
        }
        debug(&format!(
            "fhir-documents: {} documents, {} notices, {}",
            page.documents.len(),
            page.notices.len(),
            if page.next_cursor.is_some() { "more to come" } else { "scan complete" }
        ));
        Ok(page)
    }

    /// A resumable scan from `pos`.
    fn scan_from(&mut self, t: &mut dyn Transport, mut pos: Position) -> Result<DocumentPage, StageError> {
        // the configured `since` is a floor, whatever the cursor says
        if let Some((raw, floor)) = &self.s.since {
            if pos.since.as_ref().is_none_or(|(_, at)| at < floor) {
                pos = Position { since: Some((raw.clone(), *floor)), seen: Vec::new() };
            }
        }
        let start = pos.clone();
        let mut url = self.search_url(&pos);
        let mut out = Out::default();
        let mut hops = 0;
        loop {
            let bundle = self.bundle(t, &url)?;
            let stamps: Vec<fhir::Stamp> = bundle.entries.iter().map(fhir::stamp).collect();
            let sorted = stamps.iter().all(|st| st.last_updated.is_some())
                && stamps
                    .windows(2)
                    .all(|w| w[0].last_updated.as_ref().unwrap().1 <= w[1].last_updated.as_ref().unwrap().1);
            if !sorted {
                // only ever after nothing was handed out in this call
                self.warn_degraded(if stamps.iter().any(|st| st.last_updated.is_none()) {
                    "a DocumentReference has no meta.lastUpdated"
                } else {
                    "the search answer is not sorted by _lastUpdated (the server ignores _sort)"
                });
                return self.scan_paging(t, url, 0, 0);
            }
            for (i, (doc, st)) in bundle.entries.iter().zip(&stamps).enumerate() {
                if out.len() >= self.s.page_size as usize {
                    return Ok(out.page(Some(Cursor::Position(pos))));
                }
                let (raw, at) = st.last_updated.clone().expect("checked above");
                let key = seen_key(doc, st);
                if pos.covers(at, &key) {
                    continue;
                }
                if !pos.advance(&raw, at, &key) {
                    warn(&format!(
                        "FHIR server at {}: more than {} DocumentReferences share lastUpdated {raw}; this pass \
                         pages through the server's links from here and the next one starts from the top",
                        self.s.api,
                        crate::cursor::SEEN_CAP
                    ));
                    if out.len() > 0 {
                        return Ok(out.page(Some(Cursor::Paging { url, skip: i, pages: 0 })));
                    }
                    return self.scan_paging(t, url, i, 0);
                }
                if let Some(h) = self.entry(t, doc, st, &raw)? {
                    out.push(h);
                }
            }
            if out.len() > 0 {
                return Ok(out.page(Some(Cursor::Position(pos))));
            }
            match bundle.next {
                // the end: nothing new (or only filtered out) — the host ends the pass here
                None => return Ok(out.page(Some(Cursor::Position(pos)))),
                Some(next) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        if pos != start {
                            // progress made: the pass ends here, the next one goes on from `pos`
                            return Ok(out.page(Some(Cursor::Position(pos))));
                        }
                        warn(&format!(
                            "FHIR server at {}: {MAX_HOPS} search pages in a row held only documents handed out \
                             before; this pass pages through the server's links from here",
                            self.s.api
                        ));
                        return self.scan_paging(t, next, 0, 0);
                    }
                    url = next;
                }
            }
        }
    }

    /// A scan through the server's links: never resumable, ends with no
    /// cursor. `pages`: pages this pass followed before this call.
    fn scan_paging(
        &mut self,
        t: &mut dyn Transport,
        mut url: String,
        mut skip: usize,
        mut pages: usize,
    ) -> Result<DocumentPage, StageError> {
        let mut out = Out::default();
        let mut hops = 0;
        loop {
            let bundle = self.bundle(t, &url)?;
            for (i, doc) in bundle.entries.iter().enumerate().skip(skip) {
                if out.len() >= self.s.page_size as usize {
                    return Ok(out.page(Some(Cursor::Paging { url, skip: i, pages })));
                }
                let st = fhir::stamp(doc);
                let raw = st.last_updated.as_ref().map(|(r, _)| r.clone()).unwrap_or_default();
                if let (Some((_, at)), Some((_, floor))) = (&st.last_updated, &self.s.since) {
                    if at < floor {
                        continue;
                    }
                }
                if let Some(h) = self.entry(t, doc, &st, &raw)? {
                    out.push(h);
                }
            }
            let Some(next) = bundle.next else { return Ok(out.page(None)) };
            pages += 1;
            // a link back to the page itself, or more pages than any real
            // search has: the server's links go round; the pass ends here
            let looping = if next == url {
                Some("the search answer's next link is the page itself".to_string())
            } else if pages >= MAX_PAGES {
                Some(format!("{MAX_PAGES} search pages in one pass (do the server's next links go round?)"))
            } else {
                None
            };
            if let Some(why) = looping {
                warn(&format!("FHIR server at {}: {why}; this pass ends here", self.s.api));
                out.notices.push(Notice {
                    subject: "DocumentReference search".into(),
                    outcome: NoticeOutcome::Fail,
                    reason: format!("{why}; the pass ended there, so later documents may be missing"),
                });
                return Ok(out.page(None));
            }
            if out.len() > 0 {
                return Ok(out.page(Some(Cursor::Paging { url: next, skip: 0, pages })));
            }
            hops += 1;
            if hops > MAX_HOPS {
                // an empty page with a cursor would end the pass as if resumable
                out.notices.push(Notice {
                    subject: "DocumentReference search".into(),
                    outcome: NoticeOutcome::Skip,
                    reason: format!("{MAX_HOPS} search pages without a wanted document; paging on"),
                });
                return Ok(out.page(Some(Cursor::Paging { url: next, skip: 0, pages })));
            }
            url = next;
            skip = 0;
        }
    }

    /// One entry that is new: none if `status`/`types` leave it out.
    fn entry(
        &mut self,
        t: &mut dyn Transport,
        doc: &Value,
        st: &fhir::Stamp,
        last_updated: &str,
    ) -> Result<Option<Handled>, StageError> {
        let Some(id) = &st.id else {
            return Ok(Some(Handled::Notice(Notice {
                subject: "DocumentReference (no valid id)".into(),
                outcome: NoticeOutcome::Fail,
                reason: "the search returned a DocumentReference without a FHIR id".into(),
            })));
        };
        if let Err(why) = fhir::wanted(&self.s, doc) {
            debug(&format!("DocumentReference/{id} left out: {why}"));
            return Ok(None);
        }
        self.document(t, doc, id, last_updated).map(Some)
    }

    fn document(
        &mut self,
        t: &mut dyn Transport,
        doc: &Value,
        id: &str,
        last_updated: &str,
    ) -> Result<Handled, StageError> {
        let subject = format!("DocumentReference/{id}");
        let notice =
            |outcome, reason: String| Ok(Handled::Notice(Notice { subject: subject.clone(), outcome, reason }));
        let chosen = match fhir::choose(&self.s, doc) {
            Ok(c) => c,
            Err(why) => return notice(NoticeOutcome::Skip, why),
        };
        let patient = match fhir::subject_patient(&self.s, doc) {
            Ok(p) => p,
            Err(why) => return notice(NoticeOutcome::Skip, why),
        };
        let Some(keys) = self.patient_keys(t, &patient)? else {
            debug(&format!("{subject}: subject Patient/{patient} is not on the server"));
            return notice(NoticeOutcome::Fail, "its subject Patient is not on the server (404/410)".into());
        };
        let spooled = match &chosen.source {
            Source::Url(url) => self.download(t, url, &chosen)?,
            Source::Inline(data) => self.inline(t, data, &chosen)?,
        };
        let spooled = match spooled {
            Ok(sp) => sp,
            Err(why) => return notice(NoticeOutcome::Fail, why),
        };
        if let Some(size) = chosen.size {
            if size != spooled.size {
                return notice(
                    NoticeOutcome::Fail,
                    format!("attachment.size says {size} bytes, but {} bytes arrived", spooled.size),
                );
            }
        }
        let ext = fhir::extension(&chosen.content_type);
        let display_name = match &chosen.title {
            Some(t) if has_extension(t) || ext == "bin" => t.clone(),
            Some(t) => format!("{t}.{ext}"),
            None => format!("{id}.{ext}"),
        };
        let mut attributes = vec![("fhir.id".to_string(), id.to_string())];
        if let Some(v) = doc.pointer("/meta/versionId").and_then(Value::as_str) {
            attributes.push(("fhir.version-id".into(), v.to_string()));
        }
        if !last_updated.is_empty() {
            attributes.push(("fhir.last-updated".into(), last_updated.to_string()));
        }
        attributes.push(("fhir.source".into(), self.s.base_url.clone()));
        let facts = DocumentFacts {
            content_type: chosen.content_type.clone(),
            kind: fhir::kind(doc),
            date: fhir::string(doc, "date").or_else(|| chosen.creation.clone()),
            title: chosen.title.clone().or_else(|| fhir::string(doc, "description")),
            author: fhir::author(doc),
        };
        let item =
            Item { id: subject, patient_keys: keys, display_name, file: spooled.body, size: spooled.size, attributes };
        Ok(Handled::Doc(Box::new(Document { item, facts })))
    }

    /// The keys of a Patient of the server (cached); none if it is not there.
    fn patient_keys(&mut self, t: &mut dyn Transport, patient: &str) -> Result<Option<Vec<PatientKey>>, StageError> {
        if let Some(keys) = self.patients.get(patient) {
            return Ok(Some(keys.clone()));
        }
        let what = "reading the subject Patient";
        let url = format!("{}/Patient/{patient}", self.s.base_url);
        let (status, v, body) = self.get_json(t, &url, what)?;
        match status {
            200 => {}
            404 | 410 => return Ok(None),
            _ => return Err(status_error(&self.s, status, &body, what)),
        }
        if v.get("resourceType").and_then(Value::as_str) != Some("Patient") {
            return Err(retryable(format!(
                "FHIR server at {} answered {what} with something that is not a Patient",
                self.s.api
            )));
        }
        let keys = fhir::patient_keys(&self.s, patient, &v);
        debug(&format!(
            "Patient/{patient}: keys {}",
            keys.iter().map(|k| format!("{}={}", k.scheme, k.value)).collect::<Vec<_>>().join(", ")
        ));
        if self.patients.len() >= PATIENT_CACHE {
            self.patients.clear();
        }
        self.patients.insert(patient.to_string(), keys.clone());
        Ok(Some(keys))
    }

    /// Downloads an attachment into the spool; `Ok(Err(reason))` for a fail notice.
    fn download(
        &mut self,
        t: &mut dyn Transport,
        url: &str,
        chosen: &Chosen,
    ) -> Result<Result<Spooled, String>, StageError> {
        let host = host_of(url);
        let ours = host == self.s.api;
        let sp = match t.send_to_spool(&self.request(url.to_string(), &chosen.content_type)) {
            Ok(sp) => sp,
            Err(HostError::Denied(m)) => {
                return Ok(Err(format!(
                    "its attachment is on {host}, which the source may not reach: add \"{host}\" to the \
                     source's grants.http ({m})"
                )))
            }
            Err(HostError::Invalid(m)) => return Ok(Err(format!("its attachment could not be downloaded: {m}"))),
            Err(HostError::NotFound(m)) => return Ok(Err(format!("its attachment was not found on {host}: {m}"))),
            Err(e) => {
                let mut e: StageError = e.into();
                e.kind = ferry_plugin_sdk::types::ErrorKind::Retryable;
                e.message = format!("downloading an attachment from {host}: {}", e.message);
                return Err(e);
            }
        };
        match sp.status {
            200..=299 => Ok(Ok(sp)),
            401 | 403 if ours => Err(credentials_error(&self.s, sp.status, &host)),
            408 | 429 | 500..=599 => Err(retryable(format!(
                "{host} answered {}{} downloading an attachment after the host's retries; will try again later",
                sp.status,
                reason(sp.status)
            ))),
            status => Ok(Err(format!("downloading its attachment, {host} answered {status}{}", reason(status)))),
        }
    }

    /// Keeps an inline attachment; `Ok(Err(reason))` for a fail notice.
    fn inline(
        &mut self,
        t: &mut dyn Transport,
        data: &str,
        chosen: &Chosen,
    ) -> Result<Result<Spooled, String>, StageError> {
        let b64: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if b64.len() > MAX_INLINE.div_ceil(3) * 4 {
            return Ok(Err(format!("its inline attachment is larger than {} MiB", MAX_INLINE >> 20)));
        }
        let Ok(bytes) = BASE64.decode(b64.as_bytes()) else {
            return Ok(Err("its inline attachment is not valid base64".into()));
        };
        if let Some(want) = &chosen.hash {
            let got = BASE64.encode(<[u8; 20]>::from(Sha1::digest(&bytes)));
            if got != *want {
                return Ok(Err("its inline attachment does not match attachment.hash (SHA-1)".into()));
            }
        }
        match t.spool_bytes(&bytes) {
            Ok(sp) => Ok(Ok(sp)),
            Err(HostError::Invalid(m)) => Ok(Err(format!("its inline attachment could not be kept: {m}"))),
            Err(HostError::Unavailable(m)) => Err(retryable(format!("keeping an inline attachment: {m}"))),
            Err(e) => Err(StageError::from(e)),
        }
    }
}

/// What identifies an entry in `seen`: its id (an entry without a valid
/// one gets a digest of its JSON, so it is not handed out twice either).
fn seen_key(doc: &Value, st: &fhir::Stamp) -> String {
    match &st.id {
        Some(id) => id.clone(),
        None => {
            let digest = Sha1::digest(serde_json::to_vec(doc).unwrap_or_default());
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("#{hex}")
        }
    }
}
