//! An SMTP server on 127.0.0.1 with a random port (RFC 5321, the part a
//! mail client uses): `EHLO`/`HELO`, optional `AUTH PLAIN` against one
//! user, `MAIL FROM`, `RCPT TO`, `DATA` (dot-unstuffed, ended by
//! `<CRLF>.<CRLF>`), `RSET`, `NOOP`, `QUIT`; unknown commands are `500`,
//! commands out of order `503`, lines over 1000 octets `500`, a message
//! over 10 MiB `552`. Accepted messages are kept for the test to read.
//!
//! A real dialogue over a socket, so the client under test (lettre) talks
//! to it exactly as to a relay; no TLS (clients must be told `security =
//! "none"`, which ferry allows only to loopback). `reject_next` makes the
//! next `RCPT TO` answer `550`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body, CRLF line ends).
    pub data: String,
    /// The user that authenticated, if any.
    pub user: Option<String>,
}

#[derive(Default)]
struct State {
    mails: Vec<Mail>,
    reject_next: bool,
}

pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _rt: Option<std::thread::JoinHandle<()>>,
}

const MAX_LINE: usize = 1000;
const MAX_MESSAGE: usize = 10 << 20;

impl SmtpServer {
    /// Starts on its own thread and runtime. With `auth`, `MAIL` needs a
    /// prior `AUTH PLAIN` of that (user, password).
    pub fn start(auth: Option<(&str, &str)>) -> SmtpServer {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let st = state.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((sock, _)) = listener.accept().await else { continue };
                    let (st, auth) = (st.clone(), auth.clone());
                    tokio::spawn(async move {
                        let _ = session(sock, st, auth).await;
                    });
                }
            });
        });
        SmtpServer { addr, state, _rt: Some(handle) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.state.lock().unwrap().mails.clone()
    }

    /// The next `RCPT TO` is refused with `550`.
    pub fn reject_next(&self) {
        self.state.lock().unwrap().reject_next = true;
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    auth: Option<(String, String)>,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 ferry-test-smtp ESMTP ready\r\n").await?;
    let mut helo = false;
    let mut user: Option<String> = None;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            w.write_all(b"500 5.5.6 line too long\r\n").await?;
            continue;
        }
        let cmd = line.trim_end_matches(['\r', '\n']);
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            helo = true;
            let mut s = "250-ferry-test-smtp\r\n250-8BITMIME\r\n250-SIZE 10485760\r\n".to_string();
            s.push_str(if auth.is_some() { "250 AUTH PLAIN\r\n" } else { "250 HELP\r\n" });
            s
        } else if upper.starts_with("HELO") {
            helo = true;
            "250 ferry-test-smtp\r\n".into()
        } else if upper.starts_with("AUTH PLAIN") {
            let given = cmd.get(10..).unwrap_or_default().trim();
            let decoded = STANDARD.decode(given).unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            match (&auth, parts.as_slice()) {
                (Some((u, p)), [_, gu, gp]) if gu == &u.as_bytes() && gp == &p.as_bytes() => {
                    user = Some(u.clone());
                    "235 2.7.0 authenticated\r\n".into()
                }
                _ => "535 5.7.8 authentication failed\r\n".into(),
            }
        } else if upper.starts_with("MAIL FROM:") {
            if !helo {
                "503 5.5.1 EHLO first\r\n".into()
            } else if auth.is_some() && user.is_none() {
                "530 5.7.0 authentication required\r\n".into()
            } else {
                from = Some(address(&cmd[10..]));
                to.clear();
                "250 2.1.0 ok\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else if std::mem::take(&mut state.lock().unwrap().reject_next) {
                "550 5.1.1 no such mailbox\r\n".into()
            } else {
                to.push(address(&cmd[8..]));
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                "503 5.5.1 RCPT first\r\n".into()
            } else {
                w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                let mut too_big = false;
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    if data.len() + l.len() > MAX_MESSAGE {
                        too_big = true;
                    } else {
                        data.push_str(l);
                    }
                }
                if too_big {
                    "552 5.3.4 message too big\r\n".into()
                } else {
                    let mail = Mail {
                        from: from.take().unwrap_or_default(),
                        to: std::mem::take(&mut to),
                        data,
                        user: user.clone(),
                    };
                    state.lock().unwrap().mails.push(mail);
                    "250 2.0.0 queued\r\n".into()
                }
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.2 unknown command\r\n".into()
        };
        w.write_all(reply.as_bytes()).await?;
    }
}

/// `<a@b>` (with optional parameters after it) → `a@b`.
fn address(s: &str) -> String {
    let s = s.trim();
    match (s.find('<'), s.find('>')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].to_owned(),
        _ => s.split_whitespace().next().unwrap_or_default().to_owned(),
    }
}
