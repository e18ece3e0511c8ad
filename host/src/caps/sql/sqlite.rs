//! The SQLite backend of `sql` (the demo, tests, and sites that export
//! their database): read-only connections, a small pool, statements that
//! SQLite itself says are read-only, rows counted while they stream.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::types::ValueRef;
use rusqlite::OpenFlags;

use super::MAX_ROWS;
use crate::bindings::sql::{Column, Rows, SqlValue};
use crate::caps::CapError;

pub(super) struct SqlitePool {
    pub(super) path: PathBuf,
    pub(super) idle: Mutex<Vec<rusqlite::Connection>>,
}

impl SqlitePool {
    /// A pool for the database at `path` (opened read-only, on first use).
    pub(super) fn backend(path: PathBuf) -> std::sync::Arc<dyn super::SqlBackend> {
        // the pool itself moves into blocking tasks, hence the inner Arc
        std::sync::Arc::new(std::sync::Arc::new(SqlitePool { path, idle: Mutex::new(Vec::new()) }))
    }

    pub(super) fn take(&self) -> Result<rusqlite::Connection, CapError> {
        if let Some(c) = self.idle.lock().unwrap().pop() {
            return Ok(c);
        }
        // Refuse to create a database that is not there: a typo'd path
        // would otherwise look like an empty Sidexis.
        if !self.path.is_file() {
            return Err(CapError::Unavailable(format!("SQLite database {} does not exist", self.path.display())));
        }
        let c = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| CapError::Unavailable(format!("cannot open SQLite database {}: {e}", self.path.display())))?;
        c.busy_timeout(std::time::Duration::from_secs(5)).ok();
        Ok(c)
    }

    pub(super) fn give_back(&self, c: rusqlite::Connection) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < 8 {
            idle.push(c);
        }
    }
}

#[async_trait::async_trait]
impl super::SqlBackend for std::sync::Arc<SqlitePool> {
    /// Blocking work happens off the async threads.
    async fn query(&self, statement: String, params: Vec<SqlValue>) -> Result<Rows, CapError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = sqlite_query(&conn, &statement, &params);
            pool.give_back(conn);
            result
        })
        .await
        .unwrap_or_else(|e| Err(CapError::Failed(format!("host task failed: {e}"))))
    }
}

pub(super) fn sqlite_query(conn: &rusqlite::Connection, sql: &str, params: &[SqlValue]) -> Result<Rows, CapError> {
    // cached: a source asks the same few statements thousands of times
    let mut stmt = conn.prepare_cached(sql).map_err(|e| match e {
        rusqlite::Error::MultipleStatement => CapError::Invalid("only one statement per query is allowed".into()),
        e => CapError::Invalid(format!("cannot prepare statement: {e}")),
    })?;
    if !stmt.readonly() {
        return Err(CapError::Denied("only read statements are allowed on sql connections".into()));
    }
    for i in 1..=stmt.parameter_count() {
        let name = stmt.parameter_name(i).unwrap_or("?");
        let n: usize =
            name.strip_prefix("@P").and_then(|n| n.parse().ok()).filter(|n| *n >= 1 && *n <= params.len()).ok_or_else(
                || {
                    CapError::Invalid(format!(
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
        r.map_err(|e| CapError::Invalid(format!("cannot bind @P{n}: {e}")))?;
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
            return Err(CapError::Invalid(format!("query returned more than {MAX_ROWS} rows; page it")));
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

fn sqlite_err(e: rusqlite::Error) -> CapError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            CapError::Unavailable(format!("database busy: {e}"))
        }
        _ => CapError::Failed(format!("query failed: {e}")),
    }
}
