//! The production pipeline file, as tests and the bench run it.
//!
//! One text for every consumer (pipeline tests, service tests, bench), so
//! that they exercise the same wiring: sidexis → dicom-meta →
//! http-resolver → store, with the site in `site/` next to the file and
//! the ledger in `state/`.

use crate::{plugin_dir, ResolverServer, S3Server};

/// `connection` is the body of `[connections.sidexis]`; `extra` is
/// appended (e.g. a `[serve]` section). The clinic id is `clinic-7`.
pub fn production_toml(
    name: &str,
    connection: &str,
    resolver: &ResolverServer,
    s3: &S3Server,
    bucket: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
plugin_path = ["{plugins}"]
state_dir = "state"
retry_after = "200ms"
retry_max = "2s"

[connections.sidexis]
{connection}

[source]
plugin = "sidexis"
grants.fs = {{ pdata = "site/PDATA" }}
grants.sql = ["sidexis"]
config = {{ pdata_root = "pdata", connection = "sidexis", folders_per_page = 3 }}

[extractor]
plugin = "dicom-meta"
concurrency = 2

[resolver]
plugin = "http-resolver"
grants.http = ["127.0.0.1"]
limits = {{ memory = "64MiB", timeout = "5s" }}
config = {{ url = "{url}" }}

[store]
plugin = "store"
concurrency = 4
grants.object_store = {{ kind = "s3", bucket = "{bucket}", endpoint = "{endpoint}", path_style = true, region = "us-east-1", access_key_id = "{ak}", secret_access_key = "{sk}" }}
config = {{ clinic_id = "clinic-7" }}
{extra}
"#,
        plugins = plugin_dir().display(),
        url = resolver.url(),
        endpoint = s3.endpoint(),
        ak = s3.access_key(),
        sk = s3.secret_key(),
    )
}

/// The `[connections.sidexis]` body for the site's SQLite file.
pub const SQLITE_CONNECTION: &str = "kind = \"sqlite\"\npath = \"site/sidexis.db\"";
