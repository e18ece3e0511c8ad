//! `sql`: parameterised, read-only queries on named connections.
//!
//! Backends share one contract: placeholders `@P1..@Pn`, typed values in
//! and out, one read statement per call. SQLite is embedded (the demo and
//! clinics with an export, [`sqlite`]); SQL Server (tiberius, [`mssql`])
//! plugs in as another [`SqlBackend`]. Read-only is enforced by the database, not by
//! pattern-matching SQL text: SQLite connections are opened read-only and
//! each prepared statement must report itself read-only.

pub mod config;
pub mod mssql;
mod sqlite;
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::anyhow;
use wasmtime::component::{HasSelf, Linker};

use super::{Capability, Prepare, StageState};
use crate::bindings::sql::{Host, Rows, SqlValue};
use crate::bindings::types::HostError;
use crate::caps::CapError;
use crate::config::ConnectionConfig;
use sqlite::SqlitePool;

/// Most rows one query may return; a plugin should page beyond that.
pub const MAX_ROWS: usize = 100_000;

/// One kind of database: a pool of connections that answers one read
/// query at a time. A new kind (PostgreSQL, ODBC) is a file implementing
/// this and a variant of [`ConnectionConfig`].
#[async_trait::async_trait]
pub trait SqlBackend: Send + Sync {
    /// Runs one read statement with `@P1..@Pn` parameters; at most
    /// [`MAX_ROWS`] rows, counted as they arrive.
    async fn query(&self, statement: String, params: Vec<SqlValue>) -> Result<Rows, CapError>;
}

/// Opens the backend a connection's config names (lazily: nothing
/// connects before the first query).
fn backend(name: &str, config: &ConnectionConfig) -> Arc<dyn SqlBackend> {
    match config {
        ConnectionConfig::Sqlite { path } => SqlitePool::backend(path.clone()),
        ConnectionConfig::Mssql(m) => Arc::new(mssql::MssqlPool::new(name, m.clone())),
    }
}

/// All connections of a pipeline, by name. Opened lazily.
pub struct Connections {
    map: BTreeMap<String, Arc<dyn SqlBackend>>,
}

impl Connections {
    pub fn new(configs: &BTreeMap<String, ConnectionConfig>) -> Self {
        Connections { map: configs.iter().map(|(name, c)| (name.clone(), backend(name, c))).collect() }
    }

    /// Runs one query on the connection called `name`.
    pub async fn query(&self, name: &str, statement: String, params: Vec<SqlValue>) -> Result<Rows, CapError> {
        let backend = self.map.get(name).ok_or_else(|| CapError::NotFound(format!("no connection named `{name}`")))?;
        backend.query(statement, params).await
    }

    /// Checks that a connection works (for `ferry check`).
    pub async fn probe(&self, name: &str) -> Result<(), CapError> {
        self.query(name, "SELECT 1".into(), vec![]).await.map(|_| ())
    }
}

/// A stage's sql grant: the connections it may query.
pub struct Sql {
    pub granted: Vec<String>,
    connections: Arc<Connections>,
}

impl Capability for Sql {
    const INTERFACE: &'static str = "sql";
    const GRANT_HINT: &'static str = "grants.sql = [\"<connection>\"]";
    type Shared = Arc<Connections>;

    fn init(pipeline: Option<&crate::config::Pipeline>) -> Arc<Connections> {
        Arc::new(Connections::new(&pipeline.map(|p| p.connections.clone()).unwrap_or_default()))
    }

    fn prepare(connections: &Arc<Connections>, cx: &Prepare<'_>) -> anyhow::Result<Option<Sql>> {
        let names = &cx.stage.grants.sql;
        Ok((!names.is_empty()).then(|| Sql { granted: names.clone(), connections: connections.clone() }))
    }

    /// `SELECT 1` on every granted connection: proves the server answers
    /// and the login works.
    async fn probe(&self) -> anyhow::Result<Vec<String>> {
        let mut granted = Vec::new();
        for c in &self.granted {
            self.connections.probe(c).await.map_err(|e| {
                anyhow!("grants.sql: connection `{c}` does not work: {} (see [connections.{c}])", e.message())
            })?;
            granted.push(format!("sql:{c}"));
        }
        Ok(granted)
    }

    fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
        crate::bindings::sql::add_to_linker::<StageState, HasSelf<StageState>>(linker, |s| s)
    }
}

impl Host for StageState {
    async fn query(&mut self, connection: String, statement: String, params: Vec<SqlValue>) -> Result<Rows, HostError> {
        let grant = self.ctx.caps.sql.as_ref().filter(|g| g.granted.contains(&connection));
        let Some(grant) = grant else {
            return Err(self.ctx.denied(
                &format!("query connection `{connection}`"),
                &format!("add \"{connection}\" to `grants.sql`"),
            ));
        };
        let sql = grant.connections.clone();
        self.bounded("an SQL query", async move { Ok(sql.query(&connection, statement, params).await?) }).await
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
        let err = |r: Result<Rows, CapError>| format!("{:?}", r.unwrap_err());
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
