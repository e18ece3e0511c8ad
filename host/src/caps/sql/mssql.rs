//! The SQL Server backend of `sql` (tiberius over tokio, rustls TLS).
//!
//! Read-only is checked on the statement's syntax tree (sqlparser, MS SQL
//! dialect): exactly one statement, and it must be a query. Clinics should
//! still give ferry a login that can only read; this check is so that a
//! plugin bug cannot write even where the login could.
//!
//! Connections are pooled. A connection that fails with an I/O error is
//! dropped and the query is tried once more on a fresh connection, so a
//! server restart or a network blip costs one retry, not the run.

use std::sync::Mutex;

use futures_util::TryStreamExt as _;
use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;
use tiberius::{AuthMethod, Client, ColumnData, EncryptionLevel, Query};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::bindings::sql::{Column, Rows, SqlValue};
use crate::caps::CapError;
use crate::config::{Encrypt, MssqlConfig};

type Conn = Client<Compat<TcpStream>>;

pub struct MssqlPool {
    name: String,
    cfg: MssqlConfig,
    idle: Mutex<Vec<Conn>>,
    /// Statements already found read-only: a source asks the same few
    /// statements thousands of times a pass, and parsing each is the
    /// costly part of the check. Bounded; only successes are kept.
    checked: Mutex<std::collections::HashSet<String>>,
}

/// How many distinct checked statements [`MssqlPool`] remembers.
const CHECKED_STATEMENTS: usize = 256;

/// Refuses anything but one read-only query.
pub fn check_read_only(statement: &str) -> Result<(), CapError> {
    let parsed = Parser::parse_sql(&MsSqlDialect {}, statement)
        .map_err(|e| CapError::Invalid(format!("cannot parse the statement: {e}")))?;
    match parsed.as_slice() {
        [sqlparser::ast::Statement::Query(q)] => {
            // SELECT ... INTO creates a table
            if let sqlparser::ast::SetExpr::Select(s) = q.body.as_ref() {
                if s.into.is_some() {
                    return Err(CapError::Denied("SELECT ... INTO writes; only read statements are allowed".into()));
                }
            }
            Ok(())
        }
        [] => Err(CapError::Invalid("empty statement".into())),
        [_] => Err(CapError::Denied("only read statements (SELECT) are allowed on sql connections".into())),
        _ => Err(CapError::Invalid("only one statement per query is allowed".into())),
    }
}

impl MssqlPool {
    pub fn new(name: &str, cfg: MssqlConfig) -> Self {
        MssqlPool { name: name.to_owned(), cfg, idle: Mutex::new(Vec::new()), checked: Mutex::default() }
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        match (&c.instance, c.port) {
            (Some(i), _) => format!("{}\\{i}/{}", c.host, c.database),
            (None, Some(p)) => format!("{}:{p}/{}", c.host, c.database),
            (None, None) => format!("{}/{}", c.host, c.database),
        }
    }

    async fn connect(&self) -> Result<Conn, CapError> {
        let c = &self.cfg;
        let mut config = tiberius::Config::new();
        config.host(&c.host);
        if let Some(p) = c.port {
            config.port(p);
        }
        if let Some(i) = &c.instance {
            config.instance_name(i);
        }
        config.database(&c.database);
        config.application_name("ferry");
        config.authentication(AuthMethod::sql_server(&c.user, &c.password.0));
        config.encryption(match c.encrypt {
            Encrypt::Required => EncryptionLevel::Required,
            Encrypt::Off => EncryptionLevel::Off,
            Encrypt::NotSupported => EncryptionLevel::NotSupported,
        });
        if c.trust_server_certificate {
            config.trust_cert();
        }
        let what = format!("SQL Server {} (connection `{}`)", self.describe(), self.name);
        let attempt = async {
            let tcp = if c.instance.is_some() {
                use tiberius::SqlBrowser;
                TcpStream::connect_named(&config).await.map_err(|e| {
                    CapError::Unavailable(format!(
                        "{what}: cannot find the named instance through SQL Browser (UDP 1434): {e}"
                    ))
                })?
            } else {
                TcpStream::connect(config.get_addr())
                    .await
                    .map_err(|e| CapError::Unavailable(format!("{what}: cannot connect: {e}")))?
            };
            tcp.set_nodelay(true).ok();
            Client::connect(config, tcp.compat_write()).await.map_err(|e| login_error(&what, &c.user, e))
        };
        match tokio::time::timeout(c.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(CapError::Unavailable(format!(
                "{what}: no answer within {} (connect_timeout)",
                crate::util::humantime(c.connect_timeout)
            ))),
        }
    }

    async fn take(&self) -> Result<Conn, CapError> {
        let idle = self.idle.lock().unwrap().pop();
        match idle {
            Some(c) => Ok(c),
            None => self.connect().await,
        }
    }

    fn give_back(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.cfg.pool.max(1) {
            idle.push(c);
        }
    }

    pub async fn query_on(&self, statement: &str, params: &[SqlValue]) -> Result<Rows, CapError> {
        if !self.checked.lock().unwrap().contains(statement) {
            check_read_only(statement)?;
            let mut checked = self.checked.lock().unwrap();
            if checked.len() >= CHECKED_STATEMENTS {
                checked.clear();
            }
            checked.insert(statement.to_owned());
        }
        for attempt in 0..2 {
            let mut conn = self.take().await?;
            match run(&mut conn, statement, params).await {
                Ok(rows) => {
                    self.give_back(conn);
                    return Ok(rows);
                }
                // the connection is gone: drop it, try a fresh one once
                Err(tiberius::error::Error::Io { message, .. }) if attempt == 0 => {
                    tracing::debug!(connection = %self.name, "SQL connection lost ({message}); reconnecting");
                }
                Err(e) => {
                    let server_side = matches!(e, tiberius::error::Error::Server(_));
                    if server_side {
                        // the connection is still good after a statement error
                        self.give_back(conn);
                    }
                    return Err(query_error(&self.name, e));
                }
            }
        }
        Err(CapError::Unavailable(format!("connection `{}` lost twice in a row", self.name)))
    }
}

#[async_trait::async_trait]
impl super::SqlBackend for MssqlPool {
    async fn query(&self, statement: String, params: Vec<SqlValue>) -> Result<Rows, CapError> {
        self.query_on(&statement, &params).await
    }
}

async fn run(conn: &mut Conn, statement: &str, params: &[SqlValue]) -> tiberius::Result<Rows> {
    let mut q = Query::new(statement);
    for p in params {
        match p {
            SqlValue::Null => q.bind(Option::<&str>::None),
            SqlValue::Boolean(b) => q.bind(*b),
            SqlValue::Integer(i) => q.bind(*i),
            SqlValue::Real(r) => q.bind(*r),
            SqlValue::Text(t) => q.bind(t.clone()),
            SqlValue::Blob(b) => q.bind(b.clone()),
        }
    }
    let mut stream = q.query(conn).await?;
    let columns: Vec<Column> = stream
        .columns()
        .await?
        .map(|cols| {
            cols.iter()
                .map(|c| Column { name: c.name().to_owned(), declared_type: format!("{:?}", c.column_type()) })
                .collect()
        })
        .unwrap_or_default();
    // counted while they arrive: a query that returns a million rows is
    // refused at row MAX_ROWS + 1, not after all of them are in memory
    // (the connection is then dropped, not reused, with the rest unread)
    let mut rows = Vec::new();
    let mut stream = stream.into_row_stream();
    while let Some(row) = stream.try_next().await? {
        if rows.len() >= super::MAX_ROWS {
            return Err(tiberius::error::Error::Conversion(
                format!("query returned more than {} rows; page it", super::MAX_ROWS).into(),
            ));
        }
        rows.push(row.cells().map(|(_, v)| value(v)).collect());
    }
    Ok(Rows { columns, rows })
}

fn value(v: &ColumnData<'static>) -> SqlValue {
    match v {
        ColumnData::U8(x) => x.map(|x| SqlValue::Integer(x as i64)),
        ColumnData::I16(x) => x.map(|x| SqlValue::Integer(x as i64)),
        ColumnData::I32(x) => x.map(|x| SqlValue::Integer(x as i64)),
        ColumnData::I64(x) => x.map(SqlValue::Integer),
        ColumnData::F32(x) => x.map(|x| SqlValue::Real(x as f64)),
        ColumnData::F64(x) => x.map(SqlValue::Real),
        ColumnData::Bit(x) => x.map(SqlValue::Boolean),
        ColumnData::String(x) => x.as_ref().map(|s| SqlValue::Text(s.to_string())),
        ColumnData::Guid(x) => x.map(|g| SqlValue::Text(g.to_string())),
        ColumnData::Binary(x) => x.as_ref().map(|b| SqlValue::Blob(b.to_vec())),
        ColumnData::Numeric(x) => x.map(|n| SqlValue::Real(f64::from(n))),
        ColumnData::Xml(x) => x.as_ref().map(|s| SqlValue::Text(s.to_string())),
        // dates and times: their debug form is exact, and no stock plugin
        // reads them; a plugin that needs them should CONVERT in SQL
        other => Some(SqlValue::Text(format!("{other:?}"))),
    }
    .unwrap_or(SqlValue::Null)
}

fn login_error(what: &str, user: &str, e: tiberius::error::Error) -> CapError {
    match e {
        tiberius::error::Error::Server(t) if t.code() == 18456 => CapError::Failed(format!(
            "{what}: login failed for user `{user}`: check user and password (SQL Server authentication must be enabled)"
        )),
        tiberius::error::Error::Server(t) => CapError::Failed(format!("{what}: the server refused the login: {}", t.message())),
        tiberius::error::Error::Tls(m) => CapError::Failed(format!(
            "{what}: TLS failed ({m}); for a self-signed server certificate set trust_server_certificate = true"
        )),
        tiberius::error::Error::Io { message, .. } => CapError::Unavailable(format!("{what}: {message}")),
        other => CapError::Unavailable(format!("{what}: {other}")),
    }
}

fn query_error(name: &str, e: tiberius::error::Error) -> CapError {
    match e {
        tiberius::error::Error::Server(t) => {
            CapError::Invalid(format!("connection `{name}`: SQL Server error {}: {}", t.code(), t.message()))
        }
        tiberius::error::Error::Io { message, .. } => CapError::Unavailable(format!("connection `{name}`: {message}")),
        other => CapError::Failed(format!("connection `{name}`: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::check_read_only;

    #[test]
    fn only_queries_pass() {
        assert!(check_read_only("SELECT CardId FROM patient WHERE SidexisPatientId = @P1").is_ok());
        assert!(check_read_only("SELECT [ImageName] FROM [dbo].[mediabase] WHERE ImageId IN (@P1, @P2)").is_ok());
        assert!(check_read_only("WITH x AS (SELECT 1 AS a) SELECT a FROM x").is_ok());
        for bad in [
            "DELETE FROM patient",
            "UPDATE patient SET CardId = ''",
            "DROP TABLE patient",
            "SELECT 1; DROP TABLE patient",
            "SELECT * INTO copy FROM patient",
            "EXEC xp_cmdshell 'dir'",
            "",
        ] {
            assert!(check_read_only(bad).is_err(), "{bad}");
        }
    }
}
