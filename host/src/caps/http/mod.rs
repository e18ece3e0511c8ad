//! `http`: outbound requests to allow-listed hosts only.
//!
//! The allow-list is checked on the parsed URL (scheme, host, port), not on
//! the string. Redirects are not followed: a redirect to another host
//! would step around the allow-list, so the plugin sees the 3xx instead.
//! Each request is bounded by the smaller of its own timeout and what is
//! left of the calling plugin's deadline.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

pub mod auth;
pub mod body;
pub mod config;
pub mod spool;

use auth::{Credential, OAuthClients};

use body::FileRequestBody;
use spool::{Spool, SpoolFile, Written};

use super::{Capability, Prepare, StageState};
use crate::bindings::http::{FileBody, Host, Request, Response, Spooled};
use crate::bindings::types::FileRef;
use crate::bindings::types::HostError;
use crate::retry::Backoff;

/// Largest response body handed to a guest.
pub const MAX_BODY: usize = 16 << 20;
/// Timeout when the plugin gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One client per pipeline: connection pooling across instances.
#[derive(Clone)]
pub struct Client(reqwest::Client);

impl Client {
    pub fn new() -> Self {
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("TLS backend available");
        Client(c)
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

/// A stage's http grant: the hosts it may reach, and the shared client.
pub struct Http {
    pub allowed: Vec<String>,
    /// Credentials by allow-list entry (`grants.http_auth`).
    credentials: Vec<(String, Arc<Credential>)>,
    client: Client,
    /// Where `send-to-spool` writes (none for the renderer).
    spool: Option<Spool>,
}

/// What every stage of a pipeline shares: one client (connection pooling
/// across instances) and the spool.
pub struct HttpShared {
    client: Client,
    spool: Option<Spool>,
    /// OAuth clients (and their tokens), shared by every stage.
    oauth: OAuthClients,
}

impl Capability for Http {
    const INTERFACE: &'static str = "http";
    const GRANT_HINT: &'static str = "grants.http = [\"<host>\"]";
    type Shared = HttpShared;

    fn init(pipeline: Option<&crate::config::Pipeline>) -> HttpShared {
        let spool = pipeline.map(|p| Spool { dir: p.spool_dir(), max: p.spool_max });
        HttpShared { client: Client::new(), spool, oauth: OAuthClients::default() }
    }

    fn prepare(shared: &HttpShared, cx: &Prepare<'_>) -> anyhow::Result<Option<Http>> {
        let hosts = &cx.stage.grants.http;
        if hosts.is_empty() {
            return Ok(None);
        }
        let mut credentials = Vec::new();
        for (host, auth) in &cx.stage.grants.http_auth {
            let c = shared
                .oauth
                .credential(auth)
                .map_err(|e| anyhow::anyhow!("[{}] grants.http_auth.\"{host}\": {e}", cx.section()))?;
            credentials.push((host.clone(), Arc::new(c)));
        }
        Ok(Some(Http {
            allowed: hosts.clone(),
            credentials,
            client: shared.client.clone(),
            spool: shared.spool.clone(),
        }))
    }

    /// Each host is reached (a TCP connection: the name resolves and
    /// the port answers; which path the plugin asks for is its business)
    /// and each credential proven (an OAuth2 client gets a token).
    async fn probe(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for h in &self.allowed {
            let reached = reach(h).await.map_err(|e| anyhow::anyhow!("http:{h}: {e}"))?;
            match self.credentials.iter().find(|(e, _)| e == h).map(|(_, c)| &**c) {
                None => out.push(format!("http:{h} ({reached})")),
                Some(Credential::Static { name, .. }) => out.push(format!("http:{h} ({reached}; sends {name})")),
                Some(Credential::OAuth(o)) => {
                    let life = o.probe(&self.client.0).await.map_err(|e| anyhow::anyhow!("http:{h}: {e}"))?;
                    out.push(format!(
                        "http:{h} ({reached}; oauth2 client `{}`: token issued, valid {})",
                        o.client_id(),
                        crate::util::humantime(life)
                    ));
                }
            }
        }
        Ok(out)
    }

    fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
        crate::bindings::http::add_to_linker::<StageState, HasSelf<StageState>>(linker, |s| s)
    }
}

/// Is `url` on the allow-list? Entries are `host` (any port) or `host:port`.
pub fn allowed(allow: &[String], url: &url::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = url.port_or_known_default();
    allow.iter().any(|a| {
        let (h, p) = split_entry(a);
        h == host && p.is_none_or(|p| Some(p) == port)
    })
}

/// An allow-list entry as host and port (none: any port).
fn split_entry(entry: &str) -> (&str, Option<u16>) {
    let bracketed = entry.starts_with('[');
    match entry.rsplit_once(':') {
        Some((h, p)) if (!bracketed && !h.contains(':')) || (bracketed && h.ends_with(']')) => match p.parse::<u16>() {
            Ok(port) => (h.trim_start_matches('[').trim_end_matches(']'), Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry.trim_start_matches('[').trim_end_matches(']'), None),
    }
}

/// How long `ferry check` waits for a host to answer.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Can this machine open a connection to an allow-list entry? An entry
/// with a port is tried on that port; one without on 443, then 80 (the
/// ports a URL without one uses). A loopback entry without a port means
/// any port on this machine: nothing to try.
async fn reach(entry: &str) -> Result<String, String> {
    let (host, port) = split_entry(entry);
    if port.is_none() && config::is_loopback(host) {
        return Ok("this machine, any port".into());
    }
    let ports: &[u16] = match &port {
        Some(p) => std::slice::from_ref(p),
        None => &[443, 80],
    };
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(REACH_TIMEOUT, tokio::net::lookup_host((host, 0))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(format!("the name does not resolve ({e}): is it spelled right?")),
            Err(_) => return Err("the name did not resolve in time: is DNS reachable?".into()),
        };
    let mut last = String::new();
    for &p in ports {
        let at: Vec<_> = addrs.iter().map(|a| std::net::SocketAddr::new(a.ip(), p)).collect();
        match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(&at[..])).await {
            Ok(Ok(_)) => return Ok(format!("port {p} answers")),
            Ok(Err(e)) => last = format!("cannot connect to port {p}: {e}"),
            Err(_) => last = format!("port {p} did not answer in {}", crate::util::humantime(REACH_TIMEOUT)),
        }
    }
    Err(format!("{last} (is the host up, and does the firewall let this machine out?)"))
}

/// Attempts for a request with `retry` set (the first included).
pub const MAX_ATTEMPTS: u32 = 5;
/// Waits between attempts: from 200 ms, doubling, at most 10 s, with full
/// jitter (the policy of [`crate::retry`]).
pub const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// `Retry-After`, in seconds or as an HTTP-date.
pub fn retry_after(headers: &[(String, String)]) -> Option<Duration> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| crate::retry::retry_after(v, std::time::SystemTime::now()))
}

/// What one attempt brought back.
enum Answer {
    Memory(Response),
    /// The body is in the spool; `file` removes it unless it is kept.
    Spooled {
        status: u16,
        headers: Vec<(String, String)>,
        written: Written,
        file: SpoolFile,
    },
}

impl Answer {
    fn status(&self) -> u16 {
        match self {
            Answer::Memory(r) => r.status,
            Answer::Spooled { status, .. } => *status,
        }
    }

    fn headers(&self) -> &[(String, String)] {
        match self {
            Answer::Memory(r) => &r.headers,
            Answer::Spooled { headers, .. } => headers,
        }
    }
}

impl StageState {
    /// One request, retried as `req.retry` says, within the call deadline:
    /// the body from `req.body` or made from a file, the answer in memory
    /// or (`to_spool`) in a spool file.
    async fn exchange(
        &mut self,
        req: Request,
        file_body: Option<FileBody>,
        to_spool: bool,
    ) -> Result<Answer, HostError> {
        let url = url::Url::parse(&req.url).map_err(|e| HostError::Invalid(format!("bad URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HostError::Invalid(format!("scheme `{}` is not allowed (http or https)", url.scheme())));
        }
        let host_port = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => return Err(HostError::Invalid("URL has no host".into())),
        };
        let grant = self.ctx.caps.http.as_ref();
        let Some(grant) = grant.filter(|g| allowed(&g.allowed, &url)) else {
            return Err(self.ctx.denied(
                &format!("connect to `{host_port}`"),
                &format!("add \"{}\" to `grants.http`", url.host_str().unwrap_or_default()),
            ));
        };
        // credentials the grant holds for this host, never over plain http
        let cred =
            grant.credentials.iter().find(|(e, _)| allowed(std::slice::from_ref(e), &url)).map(|(_, c)| c.clone());
        if cred.is_some() && url.scheme() == "http" && !url.host_str().is_some_and(config::is_loopback) {
            return Err(HostError::Denied(format!(
                "grants.http_auth has credentials for `{host_port}`; ferry sends them only over https \
                 (plain http only to 127.0.0.1 / localhost): use an https URL"
            )));
        }
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| HostError::Invalid(format!("bad HTTP method `{}`", req.method)))?;
        if file_body.is_some() && req.body.is_some() {
            return Err(HostError::Invalid("give the body either in the request or from a file, not both".into()));
        }
        let file_body = file_body.map(|b| FileRequestBody::prepare(self, &b)).transpose()?;
        let spool = match (to_spool, &grant.spool) {
            (false, _) => None,
            (true, Some(s)) => Some(s.clone()),
            (true, None) => return Err(HostError::Denied(format!("{} has no spool to write to", self.ctx.who()))),
        };
        let per_request = req.timeout_ms.map(|ms| Duration::from_millis(ms as u64)).unwrap_or(DEFAULT_TIMEOUT);
        let client = grant.client.0.clone();
        let deadline = tokio::time::Instant::from_std(self.deadline());
        // a throttled body takes the time the cap says: no per-request
        // timeout then, the call's deadline (which moves on by the time
        // held) still bounds it
        let pace = self.pace();
        let paced_body = file_body.is_some() && pace.is_throttled();
        let attempts = if req.retry { MAX_ATTEMPTS } else { 1 };
        let fut = async move {
            let mut attempt = 0;
            // a refused OAuth2 token is replaced once per request
            let mut renewed = false;
            loop {
                let auth = match &cred {
                    Some(c) => Some(c.value(&client, deadline).await?),
                    None => None,
                };
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let mut b = client.request(method.clone(), url.clone());
                if !paced_body {
                    b = b.timeout(per_request.min(remaining));
                }
                for (k, v) in &req.headers {
                    // the grant's credential replaces the plugin's
                    if cred.as_ref().is_some_and(|c| c.header_name().as_str().eq_ignore_ascii_case(k)) {
                        continue;
                    }
                    b = b.header(k, v);
                }
                if let (Some(c), Some(v)) = (&cred, &auth) {
                    b = b.header(c.header_name().clone(), v.clone());
                }
                if let Some(body) = &req.body {
                    b = b.body(body.clone());
                }
                if let Some(fb) = &file_body {
                    let has_type = req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
                    if let (Some(ct), false) = (&fb.content_type, has_type) {
                        b = b.header(reqwest::header::CONTENT_TYPE, ct);
                    }
                    b = b
                        .header(reqwest::header::CONTENT_LENGTH, fb.content_length())
                        .body(reqwest::Body::wrap_stream(fb.stream(pace.clone())));
                }
                let result = match &spool {
                    None => send_once(b, &host_port).await.map(Answer::Memory),
                    Some(spool) => send_to_spool(b, &host_port, spool).await,
                };
                if let (Some(Credential::OAuth(o)), Some(v), Ok(r)) = (cred.as_deref(), &auth, &result) {
                    if r.status() == 401 && !renewed {
                        tracing::debug!(host = %host_port, "token refused (401): getting a new one");
                        o.refused(v).await;
                        renewed = true;
                        drop(result);
                        continue;
                    }
                }
                attempt += 1;
                // what to wait before trying again, if worth it
                let wait = match &result {
                    Err(HostError::Unavailable(_)) => Some(BACKOFF.jittered(attempt)),
                    Ok(r) if r.status() == 429 => {
                        Some(retry_after(r.headers()).unwrap_or_else(|| BACKOFF.jittered(attempt)))
                    }
                    Ok(r) if matches!(r.status(), 500 | 502 | 503 | 504) => Some(BACKOFF.jittered(attempt)),
                    _ => None,
                };
                let Some(wait) = wait else { return result };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if attempt >= attempts || wait + Duration::from_millis(50) >= left {
                    return result;
                }
                // a spooled answer not kept is removed here (its guard drops)
                drop(result);
                tracing::debug!(host = %host_port, attempt, ?wait, "retrying HTTP request");
                tokio::time::sleep(wait).await;
            }
        };
        self.bounded("an HTTP request", fut).await
    }
}

impl Host for StageState {
    async fn send(&mut self, req: Request) -> Result<Response, HostError> {
        match self.exchange(req, None, false).await? {
            Answer::Memory(r) => Ok(r),
            Answer::Spooled { .. } => Err(HostError::Failed("internal: a spooled answer to `send`".into())),
        }
    }

    async fn send_file(&mut self, req: Request, body: FileBody) -> Result<Response, HostError> {
        match self.exchange(req, Some(body), false).await? {
            Answer::Memory(r) => Ok(r),
            Answer::Spooled { .. } => Err(HostError::Failed("internal: a spooled answer to `send-file`".into())),
        }
    }

    async fn send_to_spool(&mut self, req: Request, body: Option<FileBody>) -> Result<Spooled, HostError> {
        match self.exchange(req, body, true).await? {
            Answer::Spooled { status, headers, written, mut file } => {
                // kept: the runner removes it with its item (or ferry at start)
                file.0 = None;
                self.spooled.insert(written.name.clone());
                Ok(Spooled {
                    status,
                    headers,
                    body: FileRef { root: spool::ROOT.into(), path: written.name },
                    size: written.size,
                    sha256: written.sha256,
                })
            }
            Answer::Memory(_) => Err(HostError::Failed("internal: an in-memory answer to `send-to-spool`".into())),
        }
    }

    async fn spool_bytes(&mut self, body: Vec<u8>) -> Result<Spooled, HostError> {
        let spool = match self.ctx.caps.http.as_ref() {
            Some(Http { spool: Some(s), .. }) => s.clone(),
            Some(_) => return Err(HostError::Denied(format!("{} has no spool to write to", self.ctx.who()))),
            None => return Err(self.ctx.denied("keep bytes in the spool", "grant the stage `grants.http` (any host)")),
        };
        if body.len() > MAX_BODY {
            return Err(HostError::Invalid(format!(
                "spool-bytes takes at most {MAX_BODY} bytes, not {}: download large files with send-to-spool",
                body.len()
            )));
        }
        let chunks = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(body))]);
        let written = spool.write(chunks, "the plugin").await?;
        self.spooled.insert(written.name.clone());
        Ok(Spooled {
            status: 200,
            headers: Vec::new(),
            body: FileRef { root: spool::ROOT.into(), path: written.name },
            size: written.size,
            sha256: written.sha256,
        })
    }
}

/// One attempt whose body goes to the spool.
async fn send_to_spool(b: reqwest::RequestBuilder, host_port: &str, spool: &Spool) -> Result<Answer, HostError> {
    let resp = b.send().await.map_err(|e| transport_error(host_port, e))?;
    let status = resp.status().as_u16();
    let headers = header_list(&resp);
    let written = spool.write(resp.bytes_stream(), host_port).await?;
    let file = SpoolFile(Some(spool.dir.join(&written.name)));
    Ok(Answer::Spooled { status, headers, written, file })
}

fn header_list(resp: &reqwest::Response) -> Vec<(String, String)> {
    resp.headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

async fn send_once(b: reqwest::RequestBuilder, host_port: &str) -> Result<Response, HostError> {
    let resp = b.send().await.map_err(|e| transport_error(host_port, e))?;
    let status = resp.status().as_u16();
    let headers = header_list(&resp);
    let body = read_capped(resp, MAX_BODY).await.map_err(|e| match e {
        Capped::Transport(e) => transport_error(host_port, e),
        Capped::TooLarge => HostError::Failed(format!("response from {host_port} is larger than {MAX_BODY} bytes")),
    })?;
    Ok(Response { status, headers, body })
}

/// Why [`read_capped`] gave up.
pub(crate) enum Capped {
    Transport(reqwest::Error),
    TooLarge,
}

/// A response body in memory, at most `max` bytes: a declared length over
/// it is refused before reading, an undeclared one as soon as it runs over.
pub(crate) async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Capped> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(Capped::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Capped::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_error(host: &str, e: reqwest::Error) -> HostError {
    if e.is_timeout() {
        HostError::Unavailable(format!("request to {host} timed out"))
    } else if e.is_connect() {
        HostError::Unavailable(format!("cannot connect to {host}: {}", crate::util::root_cause(&e)))
    } else {
        HostError::Unavailable(format!("request to {host} failed: {}", crate::util::root_cause(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::{allowed, reach, read_capped, split_entry, Capped};

    /// A one-shot HTTP server on 127.0.0.1 answering `body`, with its
    /// length declared or chunked.
    async fn answer(body: usize, declared: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let head = if declared {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {body}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
            };
            let _ = c.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 1024];
            for _ in 0..body / 1024 {
                let r = if declared {
                    c.write_all(&chunk).await
                } else {
                    c.write_all(format!("400\r\n{}\r\n", "x".repeat(1024)).as_bytes()).await
                };
                if r.is_err() {
                    return;
                }
            }
            if !declared {
                let _ = c.write_all(b"0\r\n\r\n").await;
            }
        });
        url
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_cap_declared_or_not() {
        let client = reqwest::Client::new();
        for declared in [true, false] {
            let resp = client.get(answer(64 << 10, declared).await).send().await.unwrap();
            assert_eq!(read_capped(resp, 64 << 10).await.ok().map(|b| b.len()), Some(64 << 10), "{declared}");
            let resp = client.get(answer(1 << 20, declared).await).send().await.unwrap();
            assert!(matches!(read_capped(resp, 64 << 10).await, Err(Capped::TooLarge)), "{declared}");
        }
    }

    #[test]
    fn entries_split_into_host_and_port() {
        assert_eq!(split_entry("fhir.example"), ("fhir.example", None));
        assert_eq!(split_entry("fhir.example:8443"), ("fhir.example", Some(8443)));
        assert_eq!(split_entry("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_entry("[::1]"), ("::1", None));
        assert_eq!(split_entry("::1"), ("::1", None));
    }

    #[tokio::test]
    async fn check_reaches_an_open_port_and_names_a_closed_one() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = open.local_addr().unwrap().port();
        assert_eq!(reach(&format!("127.0.0.1:{port}")).await.unwrap(), format!("port {port} answers"));
        // a port nobody listens on (bound, then released)
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = reach(&format!("127.0.0.1:{closed}")).await.unwrap_err();
        assert!(e.contains(&format!("cannot connect to port {closed}")), "{e}");
        assert!(reach("127.0.0.1").await.unwrap().contains("any port"));
    }

    #[test]
    fn allow_list() {
        let allow = vec!["pms.example.com".to_string(), "127.0.0.1:8080".to_string()];
        let ok = |u: &str| allowed(&allow, &url::Url::parse(u).unwrap());
        assert!(ok("https://pms.example.com/resolve"));
        assert!(ok("http://PMS.example.com:9000/x"));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("http://127.0.0.1:8081/x"));
        assert!(!ok("https://pms.example.com.evil.net/"));
        assert!(!ok("https://evil.net/?pms.example.com"));
        assert!(!ok("https://pms.example.com@evil.net/"));
    }
}
