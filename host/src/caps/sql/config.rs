//! `[connections.<name>]`: the databases `grants.sql` names, next to the
//! backends that open them ([`super::sqlite`], [`super::mssql`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{bounds, de_duration, show_d, show_n, within, Problem, Secret};

/// A named database connection, granted to stages by name.
///
/// ```toml
/// [connections.sidexis]
/// kind = "sqlite"
/// path = "sidexis.db"     # opened read-only
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum ConnectionConfig {
    #[serde(rename = "sqlite")]
    Sqlite { path: PathBuf },
    /// Microsoft SQL Server (Sidexis 4 keeps its database there). Use a
    /// login that can only read:
    ///
    /// ```toml
    /// [connections.sidexis]
    /// kind = "mssql"
    /// host = "sidexis-server"        # or host = "10.0.0.5", port = 1433
    /// instance = "SIDEXIS_SQL"       # named instance (asks SQL Browser, UDP 1434)
    /// database = "PDATA"
    /// user = "ferry_reader"
    /// password = "${SIDEXIS_SQL_PASSWORD}"
    /// encrypt = "required"           # "required" | "off" | "not_supported"
    /// trust_server_certificate = true   # self-signed certificates (typical on-prem)
    /// ```
    #[serde(rename = "mssql")]
    Mssql(MssqlConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MssqlConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default = "default_database")]
    pub database: String,
    pub user: String,
    pub password: Secret,
    #[serde(default = "default_encrypt")]
    pub encrypt: Encrypt,
    #[serde(default)]
    pub trust_server_certificate: bool,
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Connections kept open for reuse.
    #[serde(default = "default_pool")]
    pub pool: usize,
}

fn default_database() -> String {
    "PDATA".into()
}
fn default_encrypt() -> Encrypt {
    Encrypt::Required
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_pool() -> usize {
    4
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encrypt {
    /// TLS for everything (the default; needs a server certificate the
    /// machine trusts, or `trust_server_certificate = true`).
    Required,
    /// TLS for the login only.
    Off,
    /// No TLS at all (test servers).
    NotSupported,
}

impl ConnectionConfig {
    /// Checks one connection (`name` for messages) and resolves its paths
    /// with `rel`; every problem is returned, none stops the others.
    pub fn compile(self, name: &str, rel: &dyn Fn(&Path) -> PathBuf) -> (ConnectionConfig, Vec<Problem>) {
        let mut problems = Vec::new();
        let c = match self {
            ConnectionConfig::Sqlite { path } => ConnectionConfig::Sqlite { path: rel(&path) },
            ConnectionConfig::Mssql(m) => {
                let (lo, hi) = bounds::POOL;
                problems
                    .extend(within(&format!("connections.{name}.pool"), m.pool, lo, hi, show_n, " connections").err());
                problems.extend(
                    within(
                        &format!("connections.{name}.connect_timeout"),
                        m.connect_timeout,
                        Duration::ZERO,
                        bounds::CONNECT_TIMEOUT,
                        show_d,
                        "",
                    )
                    .err(),
                );
                if m.host.trim().is_empty() {
                    problems.push((format!("connections.{name}.host"), "must not be empty".into()));
                }
                if m.port.is_some() && m.instance.is_some() {
                    problems.push((format!("connections.{name}"), "give either `port` or `instance`, not both".into()));
                }
                ConnectionConfig::Mssql(m)
            }
        };
        (c, problems)
    }
}
