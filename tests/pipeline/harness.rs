//! Shared set-up: a generated site in a temp dir, a pipeline file written
//! next to it, a run through the real runtime, and ways to look at what
//! the store holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry::config::Pipeline;
use ferry::runner::{Outcome, Summary};
use ferry::runtime::{Options, Runtime};
use ferry_tests::{Site, SiteBuilder};
use tokio_util::sync::CancellationToken;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub site: Site,
}

impl Fixture {
    pub fn new(builder: SiteBuilder) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let site = builder.build(&dir.path().join("site")).expect("site builds");
        // ferry never creates a store's root folder (a share that is not
        // mounted must not fill the local disk): the clinic makes it
        std::fs::create_dir(dir.path().join("store")).expect("store folder");
        Fixture { dir, site }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The stock pipeline over this fixture's site. `extractor` is a
    /// plugin name (`dicom-meta`, `fixture-hostile`); `extra` is appended.
    pub fn pipeline_toml(&self, extractor: &str, extractor_limits: &str, extra: &str) -> String {
        format!(
            r#"
[pipeline]
name = "test"
plugin_path = ["{plugins}"]
state_dir = "state"

[connections.sidexis]
kind = "sqlite"
path = "site/sidexis.db"

[source]
plugin = "sidexis"
grants.fs = {{ pdata = "site/PDATA" }}
grants.sql = ["sidexis"]
config = {{ pdata_root = "pdata", connection = "sidexis", folders_per_page = 3 }}

[extractor]
plugin = "{extractor}"
concurrency = 2
limits = {extractor_limits}

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "site" }}
config = {{ root = "maps", path = "card-map.csv" }}

[store]
plugin = "store"
concurrency = 2
grants.object_store = {{ kind = "fs", path = "store" }}
{extra}
"#,
            plugins = ferry_tests::plugin_dir().display(),
        )
    }

    pub fn stock_toml(&self) -> String {
        self.pipeline_toml("dicom-meta", "{ memory = \"64MiB\", timeout = \"30s\" }", "")
    }

    /// Writes `text` as `pipeline.toml` in the fixture dir and loads it.
    pub fn load(&self, text: &str) -> Pipeline {
        let path = self.dir.path().join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        Pipeline::load(&path).unwrap_or_else(|e| panic!("pipeline loads: {e}"))
    }

    /// What the fs store's sidecar of `key` says: the one stored with the
    /// object (its `ferry-sidecar` metadata, which the fs store keeps in
    /// `.ferry/meta/{key}.json`), else the `{key}.json` object.
    pub fn sidecar(&self, key: &str) -> serde_json::Value {
        let meta = self.store_dir().join(".ferry/meta").join(format!("{key}.json"));
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&meta).unwrap_or_else(|e| panic!("{key} is stored ({}: {e})", meta.display())),
        )
        .unwrap();
        let inline = meta["metadata"]
            .as_array()
            .and_then(|pairs| pairs.iter().find(|p| p[0] == ferry_tests::SIDECAR_META).and_then(|p| p[1].as_str()));
        match inline {
            Some(v) => ferry_tests::decode_inline_sidecar(v),
            None => {
                let path = self.store_dir().join(format!("{key}.json"));
                serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
                    .unwrap()
            }
        }
    }

    /// Objects in the fs store: key → bytes' SHA-256 (sidecar objects
    /// included).
    pub fn stored(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let root = self.store_dir();
        walk(&root, &root, &mut out);
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == ".ferry" {
            continue;
        }
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let (sha, _) = ferry::caps::fs::sha256_file(&p).unwrap();
            out.insert(rel, sha);
        }
    }
}

/// Compiled plugins are cached across tests (and runs) here.
pub fn options() -> Options {
    Options { cache_dir: Some(ferry_tests::workspace_root().join("target").join("ferry-test-cache")) }
}

pub async fn runtime(p: Pipeline) -> Runtime {
    Runtime::new(p, &options()).await.unwrap_or_else(|e| panic!("runtime starts: {e:#}"))
}

/// One full run; checks the summary adds up.
pub async fn run(rt: &Runtime) -> Arc<Summary> {
    let summary = Arc::new(Summary::keeping_reports());
    rt.run_once(CancellationToken::new(), summary.clone()).await;
    let total: u64 = Outcome::ALL.iter().map(|o| summary.count(*o)).sum();
    assert_eq!(summary.scanned(), total, "every scanned entry has exactly one outcome: {}", summary.line());
    assert_eq!(summary.reports().len() as u64, total);
    summary
}

/// The report of `subject`, which must exist.
pub fn report(s: &Summary, subject: &str) -> ferry::runner::Report {
    s.report(subject).unwrap_or_else(|| {
        let all: Vec<String> = s.reports().iter().map(|r| format!("{} {:?}", r.subject, r.outcome)).collect();
        panic!("no report for {subject}; reports:\n{}", all.join("\n"))
    })
}

/// Where the production pipeline's Sidexis database is.
pub enum Sql {
    /// The site's SQLite file, directly.
    Sqlite,
    /// The same file behind the TDS test server (the tiberius path).
    SqlServer(u16),
}

impl Fixture {
    /// The production pipeline (sidexis → dicom-meta → http-resolver →
    /// store) over this site, a resolver server and an S3 server.
    pub fn production_toml(
        &self,
        sql: &Sql,
        resolver: &ferry_tests::ResolverServer,
        s3: &ferry_tests::S3Server,
        bucket: &str,
        extra: &str,
    ) -> String {
        let connection = match sql {
            Sql::Sqlite => ferry_tests::SQLITE_CONNECTION.to_string(),
            Sql::SqlServer(port) => format!(
                "kind = \"mssql\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"ferry\"\npassword = \"${{TEST_SQL_PASSWORD}}\"\nencrypt = \"not_supported\"\ndatabase = \"PDATA\""
            ),
        };
        ferry_tests::production_toml("prod", &connection, resolver, s3, bucket, extra)
    }

    /// Loads a pipeline text with `${TEST_SQL_PASSWORD}` set.
    pub fn load_with_env(&self, text: &str) -> Pipeline {
        let path = self.dir.path().join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        let env = |k: &str| match k {
            "TEST_SQL_PASSWORD" => Some(ferry_tds_server::Options::default().password),
            k => std::env::var(k).ok(),
        };
        Pipeline::parse(&path, text, &env).unwrap_or_else(|e| panic!("pipeline loads: {e}"))
    }

    pub fn ledger(&self) -> ferry::ledger::SqliteLedger {
        ferry::ledger::SqliteLedger::open(&self.dir.path().join("state/ledger.db")).unwrap()
    }
}
