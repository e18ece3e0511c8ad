//! `sql`: parameterised, read-only queries on named connections.
//!
//! Backends share one contract: placeholders `@P1..@Pn`, typed values in
//! and out, one read statement per call. SQLite is embedded (the demo and
//! clinics with an export, [`sqlite`]); SQL Server (tiberius, [`mssql`])
//! plugs in as another `Backend` variant. Read-only is enforced by the database, not by
//! pattern-matching SQL text: SQLite connections are opened read-only and
//! each prepared statement must report itself read-only.

pub mod mssql;
mod sqlite;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::StageState;
use crate::bindings::sql::{Host, Rows, SqlValue};
use crate::bindings::types::HostError;
use crate::config::ConnectionConfig;
use sqlite::{sqlite_query, SqlitePool};

/// Most rows one query may return; a plugin should page beyond that.
pub const MAX_ROWS: usize = 100_000;

/// All connections of a pipeline, by name. Opened lazily.
pub struct Connections {
    map: BTreeMap<String, Backend>,
}

enum Backend {
    Sqlite(Arc<sqlite::SqlitePool>),
    Mssql(Arc<mssql::MssqlPool>),
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
                    ConnectionConfig::Mssql(m) => Backend::Mssql(Arc::new(mssql::MssqlPool::new(name, m.clone()))),
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
