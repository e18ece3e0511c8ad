//! One client connection: PRELOGIN → LOGIN7 → a loop of requests.
//!
//! Each request (SQL batch or `sp_executesql` RPC) is one message; its reply
//! is one message of tokens. Framing problems and a failed login close the
//! connection (as SQL Server does); anything wrong *inside* a well-framed
//! request is answered with an ERROR token and the connection stays usable.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rusqlite::types::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::packet::{self, kind, Message, DEFAULT_PACKET_SIZE};
use crate::rpc::{self, Param};
use crate::sqlite::{self, Outcome, SqlError};
use crate::tokens::{cmd, done, DoneKind, Tokens};
use crate::{login, prelogin, Shared};

/// Error numbers and classes used in replies.
const LOGIN_FAILED: u32 = 18456;
const CANNOT_OPEN_DATABASE: u32 = 4060;
const BAD_RPC: u32 = 8009;
const NO_SUCH_PROCEDURE: u32 = 2812;
const UNSUPPORTED: u32 = 40517;
const USER_ERROR_CLASS: u8 = 16;

struct Conn<S> {
    io: S,
    shared: Arc<Shared>,
    spid: u16,
    packet_size: usize,
}

/// Serves one connection until the client leaves or breaks the protocol.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(io: S, shared: Arc<Shared>, spid: u16) {
    let mut conn = Conn { io, shared, spid, packet_size: DEFAULT_PACKET_SIZE };
    match conn.run().await {
        Ok(()) => debug!(spid, "connection closed"),
        Err(e) => debug!(spid, error = %e, "connection ended"),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn run(&mut self) -> io::Result<()> {
        // PRELOGIN
        let Some(msg) = packet::read_message(&mut self.io).await? else {
            return Ok(());
        };
        if msg.kind != kind::PRELOGIN {
            return Err(packet::invalid(format!("expected PRELOGIN, got packet type {:#04x}", msg.kind)));
        }
        let client = prelogin::parse(&msg.payload).map_err(|e| packet::invalid(e.0))?;
        debug!(spid = self.spid, ?client, "prelogin");
        self.send(kind::TABULAR_RESULT, &prelogin::response()).await?;

        // LOGIN7
        let Some(msg) = packet::read_message(&mut self.io).await? else {
            return Ok(());
        };
        if msg.kind != kind::LOGIN7 {
            // E.g. a client that insists on TLS sends its handshake here.
            return Err(packet::invalid(format!(
                "expected LOGIN7, got packet type {:#04x} (TLS is not supported)",
                msg.kind
            )));
        }
        let Some(db) = self.login(&msg).await? else {
            return Ok(());
        };
        let mut db = Some(db);

        // Requests
        while let Some(msg) = packet::read_message(&mut self.io).await? {
            let reply = match msg.kind {
                kind::SQL_BATCH => {
                    self.shared.queries.fetch_add(1, Ordering::Relaxed);
                    match rpc::decode_batch(&msg.payload) {
                        Ok(sql) => {
                            let outcome = run(&mut db, sql, Vec::new()).await;
                            batch_reply(outcome)
                        }
                        Err(e) => error_reply(DoneKind::Done, BAD_RPC, &format!("malformed SQL batch: {e}")),
                    }
                }
                kind::RPC => {
                    self.shared.queries.fetch_add(1, Ordering::Relaxed);
                    match rpc::decode_rpc(&msg.payload) {
                        Ok(call) if call.procedure.is_sp_executesql() => {
                            match split_executesql(call.params) {
                                Ok((sql, params)) => rpc_reply(run(&mut db, sql, params).await),
                                Err(e) => rpc_reply(Err(e)),
                            }
                        }
                        Ok(call) => error_reply(
                            DoneKind::Proc,
                            NO_SUCH_PROCEDURE,
                            &format!(
                                "Could not find stored procedure: this test server only runs sp_executesql, not {}.",
                                call.procedure
                            ),
                        ),
                        Err(e) => error_reply(
                            DoneKind::Proc,
                            BAD_RPC,
                            &format!("The incoming tabular data stream (TDS) remote procedure call (RPC) protocol stream is incorrect: {e}"),
                        ),
                    }
                }
                kind::ATTENTION => {
                    // Requests run to completion before we read the next
                    // message, so there is nothing left to cancel.
                    let mut t = Tokens::new();
                    t.done(DoneKind::Done, done::ATTENTION, 0, 0);
                    t
                }
                other => error_reply(
                    DoneKind::Done,
                    UNSUPPORTED,
                    &format!("packet type {other:#04x} is not supported by this test server"),
                ),
            };
            if db.is_none() {
                return Err(io::Error::other("SQLite worker failed"));
            }
            self.send(kind::TABULAR_RESULT, reply.as_bytes()).await?;
        }
        Ok(())
    }

    /// Checks the login; on success answers it and returns the database
    /// connection, on failure answers with an ERROR (the caller closes).
    async fn login(&mut self, msg: &Message) -> io::Result<Option<rusqlite::Connection>> {
        let login = match login::parse(&msg.payload) {
            Ok(l) => l,
            Err(e) => {
                warn!(spid = self.spid, error = %e, "malformed LOGIN7");
                self.login_failed("", None).await?;
                return Ok(None);
            }
        };
        debug!(
            spid = self.spid,
            user = %login.user,
            database = %login.database,
            app = %login.app_name,
            tds_version = format_args!("{:#010x}", login.tds_version),
            "login"
        );
        let opts = &self.shared.options;
        if self.shared.refuse_logins.load(Ordering::SeqCst)
            || login.integrated_security
            || login.user != opts.user
            || login.password != opts.password
        {
            self.login_failed(&login.user, None).await?;
            return Ok(None);
        }
        if !login.database.is_empty() && !login.database.eq_ignore_ascii_case(&opts.database) {
            let why = format!("Cannot open database \"{}\" requested by the login. The login failed.", login.database);
            self.login_failed(&login.user, Some(why)).await?;
            return Ok(None);
        }
        let db = match sqlite::open(&self.shared.db) {
            Ok(db) => db,
            Err(e) => {
                let why = format!("Cannot open database \"{}\": {e}", opts.database);
                self.login_failed(&login.user, Some(why)).await?;
                return Ok(None);
            }
        };

        self.packet_size = match login.packet_size {
            0 => DEFAULT_PACKET_SIZE,
            n => (n as usize).clamp(512, 32767),
        };
        let database = opts.database.clone();
        let mut t = Tokens::new();
        t.env_change(1, &database, "master");
        t.info(5701, &format!("Changed database context to '{database}'."));
        t.env_collation();
        t.env_change(2, "us_english", "");
        t.info(5703, "Changed language setting to us_english.");
        t.login_ack();
        let size = self.packet_size.to_string();
        t.env_change(4, &size, &size);
        t.done(DoneKind::Done, done::FINAL, 0, 0);
        // Count before answering, so a client that sees LOGINACK sees the count.
        self.shared.logins.fetch_add(1, Ordering::SeqCst);
        self.send(kind::TABULAR_RESULT, t.as_bytes()).await?;
        Ok(Some(db))
    }

    async fn login_failed(&mut self, user: &str, first: Option<String>) -> io::Result<()> {
        let mut t = Tokens::new();
        if let Some(why) = first {
            t.error(CANNOT_OPEN_DATABASE, 11, &why);
        }
        t.error(LOGIN_FAILED, 14, &format!("Login failed for user '{user}'."));
        t.done(DoneKind::Done, done::ERROR, 0, 0);
        self.send(kind::TABULAR_RESULT, t.as_bytes()).await
    }

    async fn send(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        packet::write_message(&mut self.io, kind, payload, self.packet_size, self.spid).await
    }
}

/// `sp_executesql` parameters: statement, declarations, then the values.
fn split_executesql(mut params: Vec<Param>) -> Result<(String, Vec<Param>), SqlError> {
    if params.is_empty() {
        return Err(SqlError {
            number: 201,
            message: "Procedure or function 'sp_executesql' expects parameter '@statement', which was not supplied."
                .into(),
        });
    }
    let rest = params.split_off(params.len().min(2));
    match params.swap_remove(0).value {
        Value::Text(sql) => Ok((sql, rest)),
        _ => Err(SqlError {
            number: 214,
            message: "Procedure expects parameter '@statement' of type 'ntext/nchar/nvarchar'.".into(),
        }),
    }
}

/// Runs a statement on the blocking pool, moving the SQLite connection there
/// and back. Leaves `db` empty only if the worker panicked.
async fn run(db: &mut Option<rusqlite::Connection>, sql: String, params: Vec<Param>) -> Result<Outcome, SqlError> {
    let Some(conn) = db.take() else {
        return Err(SqlError { number: 50000, message: "database connection lost".into() });
    };
    match tokio::task::spawn_blocking(move || {
        let out = sqlite::execute(&conn, &sql, &params);
        (conn, out)
    })
    .await
    {
        Ok((conn, out)) => {
            *db = Some(conn);
            out
        }
        Err(e) => Err(SqlError { number: 50000, message: format!("SQLite worker failed: {e}") }),
    }
}

fn result_tokens(t: &mut Tokens, outcome: &Outcome, kind: DoneKind, more: u16) {
    match outcome {
        Outcome::Rows { columns, rows } => {
            t.col_metadata(columns);
            for r in rows {
                t.row(columns, r);
            }
            t.done(kind, more | done::COUNT, cmd::SELECT, rows.len() as u64);
        }
        Outcome::Affected(n) => t.done(kind, more | done::COUNT, cmd::INSERT, *n),
        Outcome::Done => t.done(kind, more, 0, 0),
    }
}

fn batch_reply(outcome: Result<Outcome, SqlError>) -> Tokens {
    match outcome {
        Ok(o) => {
            let mut t = Tokens::new();
            result_tokens(&mut t, &o, DoneKind::Done, 0);
            t
        }
        Err(e) => error_reply(DoneKind::Done, e.number, &e.message),
    }
}

fn rpc_reply(outcome: Result<Outcome, SqlError>) -> Tokens {
    match outcome {
        Ok(o) => {
            let mut t = Tokens::new();
            result_tokens(&mut t, &o, DoneKind::InProc, done::MORE);
            t.return_status(0);
            t.done(DoneKind::Proc, done::FINAL, cmd::EXECUTE, 0);
            t
        }
        Err(e) => error_reply(DoneKind::Proc, e.number, &e.message),
    }
}

fn error_reply(kind: DoneKind, number: u32, message: &str) -> Tokens {
    let mut t = Tokens::new();
    t.error(number, USER_ERROR_CLASS, message);
    if kind == DoneKind::Proc {
        t.return_status(1);
    }
    t.done(kind, done::ERROR, 0, 0);
    t
}
