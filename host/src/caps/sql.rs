//! `sql`: parameterised, read-only queries on named connections.
//!
//! Backends share one contract: placeholders `@P1..@Pn`, typed values in
//! and out, one read statement per call. SQLite is embedded (the demo and
//! clinics with an export); SQL Server (tiberius) plugs in as another
//! `Backend` variant. Read-only is enforced by the database, not by
//! pattern-matching SQL text: SQLite connections are opened read-only and
//! each prepared statement must report itself read-only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::types::ValueRef;
use rusqlite::OpenFlags;

use super::StageState;
use crate::bindings::sql::{Column, Host, Rows, SqlValue};
use crate::bindings::types::HostError;
use crate::config::ConnectionConfig;

/// Most rows one query may return; a plugin should page beyond that.
pub const MAX_ROWS: usize = 100_000;

/// All connections of a pipeline, by name. Opened lazily.
pub struct Connections {
    map: BTreeMap<String, Backend>,
}

enum Backend {
    Sqlite(Arc<SqlitePool>),
    Mssql(Arc<super::mssql::MssqlPool>),
}

struct SqlitePool {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl SqlitePool {
    fn take(&self) -> Result<rusqlite::Connection, HostError> {
        if let Some(c) = self.idle.lock().unwrap().pop() {
            return Ok(c);
        }
        // Refuse to create a database that is not there: a typo'd path
        // would otherwise look like an empty Sidexis.
        if !self.path.is_file() {
            return Err(HostError::Unavailable(format!("SQLite database {} does not exist", self.path.display())));
        }
        let c = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| HostError::Unavailable(format!("cannot open SQLite database {}: {e}", self.path.display())))?;
        c.busy_timeout(std::time::Duration::from_secs(5)).ok();
        Ok(c)
    }

    fn give_back(&self, c: rusqlite::Connection) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < 8 {
            idle.push(c);
        }
    }
}

impl Connections {
    pub fn new(configs: &BTreeMap<String, ConnectionConfig>) -> Self {
        let map = configs
            .iter()
            .map(|(name, c)| {
                let b = match c {
                    ConnectionConfig::Sqlite { path } => {
                        Backend::Sqlite(Arc::new(SqlitePool { path: path.clone(), idle: Mutex::new(Vec::new()) }))
                    }
                    ConnectionConfig::Mssql(m) => {
                        Backend::Mssql(Arc::new(super::mssql::MssqlPool::new(name, m.clone())))
                    }
                };
                (name.clone(), b)
            })
            .collect();
        Connections { map }
    }

    /// Runs one query. Blocking work happens off the async threads.
    pub async fn query(&self, name: &str, statement: String, params: Vec<SqlValue>) -> Result<Rows, HostError> {
        let backend = self.map.get(name).ok_or_else(|| HostError::NotFound(format!("no connection named `{name}`")))?;
        match backend {
            Backend::Sqlite(pool) => {
                let pool = pool.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = pool.take()?;
                    let result = sqlite_query(&conn, &statement, &params);
                    pool.give_back(conn);
                    result
                })
                .await
                .unwrap_or_else(|e| Err(HostError::Failed(format!("host task failed: {e}"))))
            }
            Backend::Mssql(pool) => pool.query(&statement, &params).await,
        }
    }

    /// Checks that a connection works (for `ferry check`).
    pub async fn probe(&self, name: &str) -> Result<(), HostError> {
        self.query(name, "SELECT 1".into(), vec![]).await.map(|_| ())
    }
}

fn sqlite_query(conn: &rusqlite::Connection, sql: &str, params: &[SqlValue]) -> Result<Rows, HostError> {
    let mut stmt = conn.prepare(sql).map_err(|e| match e {
        rusqlite::Error::MultipleStatement => HostError::Invalid("only one statement per query is allowed".into()),
        e => HostError::Invalid(format!("cannot prepare statement: {e}")),
    })?;
    if !stmt.readonly() {
        return Err(HostError::Denied("only read statements are allowed on sql connections".into()));
    }
    for i in 1..=stmt.parameter_count() {
        let name = stmt.parameter_name(i).unwrap_or("?");
        let n: usize =
            name.strip_prefix("@P").and_then(|n| n.parse().ok()).filter(|n| *n >= 1 && *n <= params.len()).ok_or_else(
                || {
                    HostError::Invalid(format!(
                        "placeholder `{name}` has no parameter: use @P1..@P{} for the {} parameters given",
                        params.len(),
                        params.len()
                    ))
                },
            )?;
        let v = &params[n - 1];
        let r = match v {
            SqlValue::Null => stmt.raw_bind_parameter(i, rusqlite::types::Null),
            SqlValue::Boolean(b) => stmt.raw_bind_parameter(i, *b),
            SqlValue::Integer(x) => stmt.raw_bind_parameter(i, *x),
            SqlValue::Real(x) => stmt.raw_bind_parameter(i, *x),
            SqlValue::Text(s) => stmt.raw_bind_parameter(i, s.as_str()),
            SqlValue::Blob(b) => stmt.raw_bind_parameter(i, b.as_slice()),
        };
        r.map_err(|e| HostError::Invalid(format!("cannot bind @P{n}: {e}")))?;
    }
    let columns: Vec<Column> = stmt
        .columns()
        .iter()
        .map(|c| Column { name: c.name().to_owned(), declared_type: c.decl_type().unwrap_or("").to_owned() })
        .collect();
    let ncols = columns.len();
    let mut rows_out = Vec::new();
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(sqlite_err)? {
        if rows_out.len() >= MAX_ROWS {
            return Err(HostError::Invalid(format!("query returned more than {MAX_ROWS} rows; page it")));
        }
        let mut vals = Vec::with_capacity(ncols);
        for i in 0..ncols {
            vals.push(match row.get_ref(i).map_err(sqlite_err)? {
                ValueRef::Null => SqlValue::Null,
                ValueRef::Integer(x) => SqlValue::Integer(x),
                ValueRef::Real(x) => SqlValue::Real(x),
                ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            });
        }
        rows_out.push(vals);
    }
    Ok(Rows { columns, rows: rows_out })
}

fn sqlite_err(e: rusqlite::Error) -> HostError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            HostError::Unavailable(format!("database busy: {e}"))
        }
        _ => HostError::Failed(format!("query failed: {e}")),
    }
}

impl Host for StageState {
    async fn query(&mut self, connection: String, statement: String, params: Vec<SqlValue>) -> Result<Rows, HostError> {
        if !self.ctx.grants.sql.contains(&connection) {
            return Err(self.ctx.denied(
                &format!("query connection `{connection}`"),
                &format!("add \"{connection}\" to `grants.sql`"),
            ));
        }
        let sql = self.ctx.sql.clone();
        self.bounded("an SQL query", sql.query(&connection, statement, params)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connections) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE patient (SidexisPatientId INTEGER, CardId TEXT);
             INSERT INTO patient VALUES (17, 'C-1'), (17, NULL), (18, 'C-2');",
        )
        .unwrap();
        let mut configs = BTreeMap::new();
        configs.insert("s".to_string(), ConnectionConfig::Sqlite { path });
        (dir, Connections::new(&configs))
    }

    #[tokio::test]
    async fn typed_parameters_and_columns() {
        let (_d, c) = db();
        let rows = c
            .query(
                "s",
                "SELECT CardId, SidexisPatientId FROM patient WHERE SidexisPatientId = @P1 ORDER BY CardId".into(),
                vec![SqlValue::Integer(17)],
            )
            .await
            .unwrap();
        assert_eq!(rows.columns[0].name, "CardId");
        assert_eq!(rows.columns[0].declared_type, "TEXT");
        assert!(matches!(rows.rows[0][0], SqlValue::Null));
        assert!(matches!(&rows.rows[1][0], SqlValue::Text(t) if t == "C-1"));
        assert!(matches!(rows.rows[1][1], SqlValue::Integer(17)));
    }

    #[tokio::test]
    async fn only_single_read_statements() {
        let (_d, c) = db();
        let err = |r: Result<Rows, HostError>| format!("{:?}", r.unwrap_err());
        let e = err(c.query("s", "DELETE FROM patient".into(), vec![]).await);
        assert!(e.contains("only read statements"), "{e}");
        let e = err(c.query("s", "SELECT 1; DROP TABLE patient".into(), vec![]).await);
        assert!(e.contains("only one statement"), "{e}");
        let e = err(c.query("s", "SELECT * FROM patient WHERE CardId = ?".into(), vec![]).await);
        assert!(e.contains("use @P1"), "{e}");
        let e = err(c.query("s", "SELECT @P2".into(), vec![SqlValue::Integer(1)]).await);
        assert!(e.contains("placeholder `@P2` has no parameter"), "{e}");
        // the table is intact
        let rows = c.query("s", "SELECT count(*) FROM patient".into(), vec![]).await.unwrap();
        assert!(matches!(rows.rows[0][0], SqlValue::Integer(3)));
    }
}
