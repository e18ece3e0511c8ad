//! Statement execution on SQLite and the mapping of SQLite values to the SQL
//! Server types announced in COLMETADATA.
//!
//! tiberius is strict about types (`Row::get::<i64>` fails on an `int`
//! column), so a column's type must be predictable. The rule:
//!
//! * a column with a declared type uses SQLite's affinity rules:
//!   INTEGER affinity (`INT` in the name) → `bigint` (`ColumnData::I64`),
//!   REAL (`REAL`/`FLOA`/`DOUB`) → `float` (`ColumnData::F64`),
//!   TEXT (`CHAR`/`CLOB`/`TEXT`) → `nvarchar` (`ColumnData::String`),
//!   `BLOB` → `varbinary` (`ColumnData::Binary`);
//! * expressions, columns without a declared type, NUMERIC-affinity columns
//!   (`DATE`, `DECIMAL`, `BOOLEAN`...) and columns holding a value that does
//!   not fit their declared type are typed by their values: only integers →
//!   `bigint`, integers and reals → `float`, only blobs → `varbinary`,
//!   anything with text (or nothing but NULLs) → `nvarchar`;
//! * `nvarchar` is `nvarchar(4000)` unless a value is longer than 4000 UTF-16
//!   units, then `nvarchar(max)`; `varbinary` likewise at 8000 bytes;
//! * NULL is a NULL of the column's type.
//!
//! Errors from SQLite become [`SqlError`]s carrying the SQLite message and a
//! SQL Server error number where an obvious one exists.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use crate::rpc::Param;
use crate::tokens::{Column, WireType};
use crate::translate;

/// What a statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A result set (possibly empty).
    Rows { columns: Vec<Column>, rows: Vec<Vec<Value>> },
    /// An INSERT/UPDATE/DELETE and the number of rows it changed.
    Affected(u64),
    /// Anything else (DDL, `SET ...`, an empty batch).
    Done,
}

/// An error to report to the client as an ERROR token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// SQL Server error number (50000 when there is no obvious one).
    pub number: u32,
    pub message: String,
}

impl SqlError {
    fn new(number: u32, message: impl Into<String>) -> Self {
        SqlError { number, message: message.into() }
    }
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        let message = match &e {
            rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
            rusqlite::Error::MultipleStatement => {
                "this test server runs one statement per request (SQLite: multiple statements provided)".to_string()
            }
            other => other.to_string(),
        };
        let lower = message.to_ascii_lowercase();
        let number = if lower.starts_with("no such table") {
            208 // Invalid object name
        } else if lower.starts_with("no such column") {
            207 // Invalid column name
        } else if lower.contains("syntax error") {
            102 // Incorrect syntax
        } else if lower.starts_with("unique constraint failed") {
            2627
        } else if lower.starts_with("not null constraint failed") {
            515
        } else if lower.contains("foreign key constraint failed") {
            547
        } else if lower.contains("database is locked") {
            1222 // Lock request time out period exceeded
        } else {
            50000
        };
        SqlError { number, message }
    }
}

/// Opens the database read-write (never creating it), waiting up to 5 s for
/// locks held by a test writing to the same file.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Runs one (T-SQL flavoured) statement with named or positional parameters.
pub fn execute(conn: &Connection, sql: &str, params: &[Param]) -> Result<Outcome, SqlError> {
    if translate::is_empty(sql) || translate::is_noop(sql) {
        return Ok(Outcome::Done);
    }
    let sql = translate::translate(sql);
    let mut stmt = conn.prepare(&sql)?;

    for idx in 1..=stmt.parameter_count() {
        let value = match stmt.parameter_name(idx) {
            Some(name) if !name.starts_with('?') => {
                // `@P1`, `:P1` or `$P1` in the SQL; tiberius names them `@P1`.
                let bare = &name[1..];
                params
                    .iter()
                    .find(|p| p.name.trim_start_matches(['@', ':', '$']).eq_ignore_ascii_case(bare))
                    .map(|p| p.value.clone())
                    .ok_or_else(|| {
                        SqlError::new(
                            8178,
                            format!("The parameterized query expects the parameter '{name}', which was not supplied."),
                        )
                    })?
            }
            _ => params
                .get(idx - 1)
                .map(|p| p.value.clone())
                .ok_or_else(|| SqlError::new(8178, format!("parameter {idx} was not supplied")))?,
        };
        stmt.raw_bind_parameter(idx, value)?;
    }

    if stmt.column_count() == 0 {
        let before = conn.total_changes();
        stmt.raw_execute()?;
        let changed = conn.total_changes() - before;
        let first_word = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let dml = matches!(first_word.as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH");
        return Ok(if dml || changed > 0 { Outcome::Affected(changed) } else { Outcome::Done });
    }

    let decls: Vec<(String, Option<String>)> =
        stmt.columns().iter().map(|c| (c.name().to_string(), c.decl_type().map(str::to_string))).collect();
    let n = decls.len();
    let mut rows = Vec::new();
    let mut cursor = stmt.raw_query();
    while let Some(row) = cursor.next()? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(row.get::<_, Value>(i)?);
        }
        rows.push(values);
    }

    let mut columns = Vec::with_capacity(n);
    for (i, (name, decl)) in decls.into_iter().enumerate() {
        let kind = column_kind(decl.as_deref(), rows.iter().map(|r| &r[i]));
        for r in rows.iter_mut() {
            let v = std::mem::replace(&mut r[i], Value::Null);
            r[i] = convert(kind, v);
        }
        let ty = wire_type(kind, rows.iter().map(|r| &r[i]));
        columns.push(Column { name, ty });
    }
    Ok(Outcome::Rows { columns, rows })
}

/// The value class of a column, before its width is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    BigInt,
    Float,
    Text,
    Blob,
}

/// SQLite's affinity rules (https://sqlite.org/datatype3.html §3.1), minus
/// NUMERIC, which has no single SQL Server counterpart.
fn declared_kind(decl: Option<&str>) -> Option<Kind> {
    let d = decl?.to_ascii_uppercase();
    if d.contains("INT") {
        Some(Kind::BigInt)
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Some(Kind::Text)
    } else if d.contains("BLOB") {
        Some(Kind::Blob)
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Some(Kind::Float)
    } else {
        None
    }
}

fn fits(kind: Kind, v: &Value) -> bool {
    matches!(
        (kind, v),
        (_, Value::Null)
            | (Kind::BigInt, Value::Integer(_))
            | (Kind::Float, Value::Integer(_) | Value::Real(_))
            | (Kind::Text, Value::Integer(_) | Value::Real(_) | Value::Text(_))
            | (Kind::Blob, Value::Blob(_))
    )
}

fn column_kind<'a>(decl: Option<&str>, values: impl Iterator<Item = &'a Value> + Clone) -> Kind {
    if let Some(k) = declared_kind(decl) {
        if values.clone().all(|v| fits(k, v)) {
            return k;
        }
    }
    let (mut int, mut real, mut text, mut blob) = (false, false, false, false);
    for v in values {
        match v {
            Value::Null => {}
            Value::Integer(_) => int = true,
            Value::Real(_) => real = true,
            Value::Text(_) => text = true,
            Value::Blob(_) => blob = true,
        }
    }
    if text || (blob && (int || real)) {
        Kind::Text
    } else if blob {
        Kind::Blob
    } else if real {
        Kind::Float
    } else if int {
        Kind::BigInt
    } else {
        Kind::Text
    }
}

fn convert(kind: Kind, v: Value) -> Value {
    match (kind, v) {
        (_, Value::Null) => Value::Null,
        (Kind::Float, Value::Integer(i)) => Value::Real(i as f64),
        (Kind::Text, Value::Integer(i)) => Value::Text(i.to_string()),
        (Kind::Text, Value::Real(f)) => Value::Text(format!("{f:?}")),
        (Kind::Text, Value::Blob(b)) => Value::Text(String::from_utf8_lossy(&b).into_owned()),
        (_, v) => v,
    }
}

fn wire_type<'a>(kind: Kind, mut values: impl Iterator<Item = &'a Value>) -> WireType {
    match kind {
        Kind::BigInt => WireType::BigInt,
        Kind::Float => WireType::Float,
        Kind::Text => {
            let long = values.any(|v| matches!(v, Value::Text(s) if s.len() > 4000 && s.encode_utf16().count() > 4000));
            if long {
                WireType::NVarCharMax
            } else {
                WireType::NVarChar
            }
        }
        Kind::Blob => {
            if values.any(|v| matches!(v, Value::Blob(b) if b.len() > 8000)) {
                WireType::VarBinaryMax
            } else {
                WireType::VarBinary
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, d DATETIME, n);
             INSERT INTO t VALUES (1, 1.5, 'ä', x'0102', '2020-01-02', 7);
             INSERT INTO t VALUES (NULL, 2, NULL, NULL, NULL, NULL);",
        )
        .unwrap();
        c
    }

    fn p(name: &str, v: Value) -> Param {
        Param { name: name.into(), value: v }
    }

    #[test]
    fn declared_types_decide() {
        let c = db();
        let Outcome::Rows { columns, rows } = execute(&c, "SELECT i, r, s, b, d, n FROM t", &[]).unwrap() else {
            panic!()
        };
        let types: Vec<_> = columns.iter().map(|c| c.ty).collect();
        use WireType::*;
        assert_eq!(types, vec![BigInt, Float, NVarChar, VarBinary, NVarChar, BigInt]);
        assert_eq!(rows[1][1], Value::Real(2.0));
        assert_eq!(rows[0][3], Value::Blob(vec![1, 2]));
        assert_eq!(rows[1][0], Value::Null);
    }

    #[test]
    fn values_that_do_not_fit_fall_back() {
        let c = db();
        c.execute("INSERT INTO t (i) VALUES ('abc')", []).unwrap();
        let Outcome::Rows { columns, rows } = execute(&c, "SELECT i FROM t", &[]).unwrap() else { panic!() };
        assert_eq!(columns[0].ty, WireType::NVarChar);
        assert_eq!(rows[0][0], Value::Text("1".into()));
    }

    #[test]
    fn expressions_and_params() {
        let c = db();
        let Outcome::Rows { columns, rows } = execute(
            &c,
            "SELECT 1 AS one, @P1 AS a, @p2 AS b, @P3 AS c",
            &[p("@P1", Value::Integer(5)), p("@P2", Value::Text("x".into())), p("@P3", Value::Null)],
        )
        .unwrap() else {
            panic!()
        };
        use WireType::*;
        assert_eq!(columns.iter().map(|c| c.ty).collect::<Vec<_>>(), vec![BigInt, BigInt, NVarChar, NVarChar]);
        assert_eq!(rows, vec![vec![Value::Integer(1), Value::Integer(5), Value::Text("x".into()), Value::Null]]);
    }

    #[test]
    fn missing_param_dml_ddl_and_errors() {
        let c = db();
        let e = execute(&c, "SELECT @P1", &[]).unwrap_err();
        assert_eq!(e.number, 8178);
        assert_eq!(execute(&c, "UPDATE t SET n = 1", &[]).unwrap(), Outcome::Affected(2));
        assert_eq!(execute(&c, "DELETE FROM t WHERE 0", &[]).unwrap(), Outcome::Affected(0));
        assert_eq!(execute(&c, "CREATE TABLE u (x)", &[]).unwrap(), Outcome::Done);
        assert_eq!(execute(&c, "SET NOCOUNT ON", &[]).unwrap(), Outcome::Done);
        assert_eq!(execute(&c, "  ", &[]).unwrap(), Outcome::Done);
        let e = execute(&c, "SELECT * FROM nope", &[]).unwrap_err();
        assert_eq!((e.number, e.message.as_str()), (208, "no such table: nope"));
        assert_eq!(execute(&c, "SELEC 1", &[]).unwrap_err().number, 102);
        assert!(execute(&c, "SELECT 1; SELECT 2", &[]).is_err());
    }

    #[test]
    fn long_text_is_max() {
        let c = db();
        let long = "ß".repeat(4001);
        let Outcome::Rows { columns, .. } = execute(&c, "SELECT @P1", &[p("@P1", Value::Text(long))]).unwrap() else {
            panic!()
        };
        assert_eq!(columns[0].ty, WireType::NVarCharMax);
        // 4000 units is still nvarchar(4000) even though it is 8000 UTF-8 bytes.
        let Outcome::Rows { columns, .. } =
            execute(&c, "SELECT @P1", &[p("@P1", Value::Text("ß".repeat(4000)))]).unwrap()
        else {
            panic!()
        };
        assert_eq!(columns[0].ty, WireType::NVarChar);
    }
}
