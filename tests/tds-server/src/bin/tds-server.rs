//! `tds-server DB [--port N] [--user U] [--password P] [--database D]`
//!
//! Serves a SQLite file over TDS for manual experiments with SQL Server
//! clients (tiberius, or `sqlcmd -N disable`-style clients that can go
//! without TLS). Runs until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use ferry_tds_server::{Options, TdsServer};

const USAGE: &str = "usage: tds-server DB [--port N] [--user U] [--password P] [--database D]

Serves the SQLite database DB as a SQL Server (TDS 7.4, no TLS) on 127.0.0.1.
Defaults: a random port, user 'ferry', password 'ferry-test-pw', database 'PDATA'.";

fn parse(args: impl Iterator<Item = String>) -> Result<(PathBuf, u16, Options), String> {
    let mut db = None;
    let mut port = 0u16;
    let mut opts = Options::default();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--port" => port = value("--port")?.parse().map_err(|e| format!("--port: {e}"))?,
            "--user" => opts.user = value("--user")?,
            "--password" => opts.password = value("--password")?,
            "--database" => opts.database = value("--database")?,
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if db.is_none() => db = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    let db = db.ok_or("missing DB")?;
    Ok((db, port, opts))
}

fn main() -> ExitCode {
    let (db, port, opts) = match parse(std::env::args().skip(1)) {
        Ok(x) => x,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("tds-server: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tds-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let user = opts.user.clone();
        let database = opts.database.clone();
        let server = match TdsServer::start_on(&db, opts, SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tds-server: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "serving {} as database {database} on {} (user {user}, no TLS); Ctrl-C to stop",
            db.display(),
            server.addr()
        );
        let _ = tokio::signal::ctrl_c().await;
        println!("stopping after {} logins and {} queries", server.logins(), server.queries());
        ExitCode::SUCCESS
    })
}
