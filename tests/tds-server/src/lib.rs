//! A small TDS server (the SQL Server wire protocol) over SQLite, for tests.
//!
//! ferry reads Sidexis, whose database is Microsoft SQL Server, through the
//! `tiberius` client. No SQL Server can run on the build machines, so tests
//! point the real tiberius client at [`TdsServer`] instead: it speaks enough
//! TDS 7.4 for tiberius 0.13 and answers from a SQLite file holding the
//! fixture tables (`patient`, `mediabase`, ...).
//!
//! What is implemented (MS-TDS section numbers in brackets):
//!
//! * framing in 4096-byte packets with continuation [2.2.3] — [`packet`];
//! * PRELOGIN, always answering "encryption not supported" [2.2.6.5] —
//!   [`prelogin`]; clients must use `EncryptionLevel::NotSupported`;
//! * LOGIN7 with SQL authentication, checked against [`Options`] [2.2.6.4]
//!   — [`login`]; failures answer error 18456 like SQL Server;
//! * SQL batches and `sp_executesql` RPCs with `@P1..` parameters of the
//!   types tiberius sends [2.2.6.6, 2.2.6.7, 2.2.5] — [`rpc`];
//! * replies as LOGINACK, ENVCHANGE, INFO, ERROR, COLMETADATA, ROW, DONE*,
//!   RETURNSTATUS tokens [2.2.7] — [`tokens`];
//! * execution on SQLite with a fixed type mapping — [`sqlite`], after cheap
//!   T-SQL → SQLite rewrites — [`translate`].
//!
//! Not implemented: TLS, MARS, transaction manager requests, bulk load, multiple
//! result sets, cursors, output parameters, date/time parameters.
//!
//! Fault injection for tests: [`TdsServer::drop_connections`] and
//! [`TdsServer::set_refuse_logins`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use ferry_tds_server::{Options, TdsServer};
//! let server = TdsServer::start("fixture.sqlite".as_ref(), Options::default()).await?;
//! // tiberius: Config::new(); host 127.0.0.1, port server.port(),
//! // AuthMethod::sql_server("ferry", "ferry-test-pw"), database "PDATA",
//! // encryption(EncryptionLevel::NotSupported), trust_cert().
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};

mod connection;
pub mod login;
pub mod packet;
pub mod prelogin;
pub mod rpc;
pub mod sqlite;
pub mod tokens;
pub mod translate;

/// Credentials and database name the server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// SQL login name.
    pub user: String,
    /// SQL login password.
    pub password: String,
    /// The one database served; a login naming another database fails with
    /// error 4060 (an empty name in the login means this one).
    pub database: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { user: "ferry".into(), password: "ferry-test-pw".into(), database: "PDATA".into() }
    }
}

/// State shared by the accept loop, the connections and the handle.
pub(crate) struct Shared {
    pub(crate) db: PathBuf,
    pub(crate) options: Options,
    pub(crate) logins: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) refuse_logins: AtomicBool,
    /// A clone of every open socket, so that `drop_connections` can shut
    /// them down synchronously.
    sockets: Mutex<HashMap<u64, std::net::TcpStream>>,
    next_id: AtomicU64,
}

impl Shared {
    fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shutdown_all(&self) {
        for s in self.sockets().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Removes a connection's socket from the registry when its task ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.sockets().remove(&self.id);
    }
}

/// A running TDS server. Dropping it stops accepting and closes all
/// connections.
///
/// The server runs on its own thread with its own (single-threaded) tokio
/// runtime, so it keeps answering even while the test's thread blocks — on
/// a `std::process::Command` running the `ferry` binary, or inside a
/// `#[tokio::test]` whose runtime is busy elsewhere.
pub struct TdsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl TdsServer {
    /// Serves the SQLite database at `db` on 127.0.0.1:<random port>, in
    /// background tokio tasks. Fails if the database cannot be opened (it is
    /// never created).
    pub async fn start(db: &Path, options: Options) -> io::Result<TdsServer> {
        Self::start_blocking_on(db, options, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Like [`TdsServer::start`], on a given address (port 0 = any).
    pub async fn start_on(db: &Path, options: Options, addr: SocketAddr) -> io::Result<TdsServer> {
        Self::start_blocking_on(db, options, addr)
    }

    /// [`TdsServer::start`] for tests without an async context.
    pub fn start_blocking(db: &Path, options: Options) -> io::Result<TdsServer> {
        Self::start_blocking_on(db, options, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn start_blocking_on(db: &Path, options: Options, addr: SocketAddr) -> io::Result<TdsServer> {
        sqlite::open(db).map_err(|e| io::Error::other(format!("cannot open {}: {e}", db.display())))?;
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            db: db.to_path_buf(),
            options,
            logins: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            refuse_logins: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task_shared = shared.clone();
        std::thread::Builder::new().name(format!("tds-server-{}", addr.port())).spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "cannot listen");
                        return;
                    }
                };
                tokio::select! {
                    _ = accept_loop(listener, task_shared) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here cancels the connection tasks.
        })?;
        debug!(%addr, db = %db.display(), "TDS test server listening");
        Ok(TdsServer { addr, shared, stop: Some(stop) })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Fault injection: drop every open connection now (a "lost
    /// connection"). The sockets are shut down before this returns; later
    /// connections work.
    pub fn drop_connections(&self) {
        self.shared.shutdown_all();
    }

    /// While true, refuse new logins with a login-failed ERROR (error 18456)
    /// and close them. Open connections are not affected.
    pub fn set_refuse_logins(&self, on: bool) {
        self.shared.refuse_logins.store(on, Ordering::SeqCst);
    }

    /// Number of logins accepted so far.
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// Number of requests (SQL batches and RPCs) received after login,
    /// including ones that failed.
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TdsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.shared.shutdown_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = match register(stream, &shared, id) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot set up connection");
                continue;
            }
        };
        let registration = Registration { shared: shared.clone(), id };
        let spid = 51 + (id % 30_000) as u16;
        tokio::spawn(async move {
            connection::serve(stream, registration.shared.clone(), spid).await;
            drop(registration);
        });
    }
}

/// Keeps a clone of the socket for `drop_connections`.
fn register(stream: TcpStream, shared: &Shared, id: u64) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    let std = stream.into_std()?;
    let clone = std.try_clone()?;
    let stream = TcpStream::from_std(std)?;
    shared.sockets().insert(id, clone);
    Ok(stream)
}
