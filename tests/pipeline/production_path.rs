//! The production job end to end: Sidexis (SQLite, and SQL Server through
//! the TDS test server and the real tiberius client) → the PMS resolver API
//! over HTTP → a real S3 server, checked through the S3 API.

use ferry::ledger::prelude::*;
use ferry::runner::Outcome;
use ferry_tests::{demo_site, Fate, ResolverServer, S3Server, DEMO_EXPECTED};

use crate::harness::{report, run, runtime, Fixture, Sql};

const BUCKET: &str = "clinic-images";

async fn end_to_end(fx: &Fixture, sql: Sql) {
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let rt = runtime(fx.load_with_env(&fx.production_toml(&sql, &resolver, &s3, BUCKET, ""))).await;

    let first = run(&rt).await;
    let e = DEMO_EXPECTED;
    assert_eq!(first.count(Outcome::Stored) as usize, e.stored, "{}", first.line());
    assert_eq!(first.count(Outcome::Unresolved) as usize, e.unresolved, "{}", first.line());
    assert_eq!(first.count(Outcome::Quarantined) as usize, e.quarantined, "{}", first.line());
    assert_eq!(first.count(Outcome::Skipped) as usize, e.skipped, "{}", first.line());
    assert!(!first.has_failures(), "{}\n{:?}", first.line(), first.errors());

    // through the S3 API: bytes, content type, checksum, sidecar
    let mut expected_keys = Vec::new();
    for img in &fx.site.images {
        let Fate::Stored { guid } = fx.site.fate(img) else { continue };
        let key = report(&first, &img.rel_path).location.unwrap();
        assert!(key.starts_with(&format!("images/{guid}/")), "{key}");
        let body = s3.get(BUCKET, &key).await.unwrap_or_else(|| panic!("{key} is in the bucket"));
        assert_eq!(body, std::fs::read(&img.path).unwrap(), "bytes of {key}");
        let head = s3.head(BUCKET, &key).await.unwrap();
        assert_eq!(head.content_type.as_deref(), Some("application/dicom"));
        assert_eq!(head.metadata.get("ferry-sha256"), Some(&img.sha256));
        // the sidecar travels with the object, through S3's metadata
        let inline = head.metadata.get(ferry_tests::SIDECAR_META).unwrap_or_else(|| panic!("{key}: {head:?}"));
        let sidecar = ferry_tests::decode_inline_sidecar(inline);
        assert_eq!(sidecar["patientGuid"], guid.as_str());
        assert_eq!(sidecar["sourceName"], img.spec.image_name.as_str());
        assert_eq!(sidecar["metadata"]["sop.instance-uid"], img.dicom.as_ref().unwrap().sop_instance_uid.as_str());
        assert_eq!(sidecar["clinicId"], "clinic-7");
        expected_keys.push(key.clone());
    }
    // nothing else: no sidecar objects, not the quarantined, not the unresolved; names with
    // `/`, `..`, unicode and duplicates became distinct, safe keys
    let mut listed = s3.list(BUCKET, "").await;
    listed.sort();
    expected_keys.sort();
    assert_eq!(listed, expected_keys);
    assert!(listed.iter().all(|k| k.split('/').all(|s| !s.is_empty() && s != "." && s != "..")));

    // the incremental re-run uploads nothing and asks nobody
    let puts = s3.put_requests();
    let asked = resolver.requests();
    let second = run(&rt).await;
    assert_eq!(second.count(Outcome::Stored), 0, "{}", second.line());
    assert_eq!(second.count(Outcome::Unchanged) as usize, e.stored);
    assert_eq!(s3.put_requests(), puts, "no upload on a no-op run");
    assert_eq!(resolver.requests(), asked, "no resolver call on a no-op run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidexis_sqlite_to_s3() {
    let fx = Fixture::new(demo_site());
    end_to_end(&fx, Sql::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidexis_sql_server_to_s3() {
    let fx = Fixture::new(demo_site());
    let tds = ferry_tds_server::TdsServer::start(&fx.site.db, Default::default()).await.unwrap();
    end_to_end(&fx, Sql::SqlServer(tds.port())).await;
    assert!(tds.queries() > 0, "the SQL went through the TDS server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_file_is_uploaded_again_and_new_images_use_the_cache() {
    let fx = Fixture::new(demo_site());
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let rt = runtime(fx.load_with_env(&fx.production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, ""))).await;
    run(&rt).await;

    let img = fx.site.image(101);
    let mut bytes = std::fs::read(&img.path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x5a;
    ferry_tests::write_settled(&img.path, &bytes).unwrap();
    let asked = resolver.requests();

    let again = run(&rt).await;
    assert_eq!(again.count(Outcome::Stored), 1, "{}", again.line());
    let key = report(&again, &img.rel_path).location.unwrap();
    assert_eq!(s3.get(BUCKET, &key).await.unwrap(), bytes);
    assert_eq!(resolver.requests(), asked, "the patient's card came from the resolution cache");
    // the sync log says what happened, newest first
    let log = fx.ledger().log_entries(None, 5).unwrap();
    assert_eq!(log[0].item_id, img.rel_path);
    assert_eq!(log[0].action, "upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_file_goes_up_in_parts() {
    use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Volumen", "Vera"))
            // ~12.5 MB: three 5 MiB parts
            .image(ImageSpec::new(1, 11, "CBCT", ImageKind::IntraOral).pixels(2500, 2500))
            .map_card("C-1", &demo_guid(1)),
    );
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let toml = fx
        .production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "")
        .replace("path_style = true,", "path_style = true, multipart_threshold = \"5MiB\", part_size = \"5MiB\",");
    let rt = runtime(fx.load_with_env(&toml)).await;
    let puts = s3.put_requests();
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 1, "{}", s.line());
    let img = fx.site.image(11);
    assert!(img.size > 10 << 20, "{}", img.size);
    let key = report(&s, &img.rel_path).location.unwrap();
    assert_eq!(s3.get(BUCKET, &key).await.unwrap(), std::fs::read(&img.path).unwrap());
    // three parts at least
    assert!(s3.put_requests() - puts >= 3, "multipart upload used ({} puts)", s3.put_requests() - puts);
    let head = s3.head(BUCKET, &key).await.unwrap();
    assert_eq!(head.metadata.get("ferry-sha256"), Some(&img.sha256));
    // the sidecar came with the upload's metadata
    assert_eq!(s3.sidecar(BUCKET, &key).await.unwrap()["itemId"], img.rel_path.as_str());
    assert!(s3.get(BUCKET, &format!("{key}.json")).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_sql_server_connections_are_retried() {
    let fx = Fixture::new(demo_site());
    let tds = ferry_tds_server::TdsServer::start(&fx.site.db, Default::default()).await.unwrap();
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let rt =
        runtime(fx.load_with_env(&fx.production_toml(&Sql::SqlServer(tds.port()), &resolver, &s3, BUCKET, ""))).await;
    run(&rt).await;
    let logins = tds.logins();
    // the server restarts, say: every pooled connection is dead
    tds.drop_connections();
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Unchanged) as usize, DEMO_EXPECTED.stored, "{}", s.line());
    assert!(tds.logins() > logins, "ferry logged in again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_that_changes_patient_is_noticed() {
    let fx = Fixture::new(demo_site());
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // answers expire at once, so the second run asks again
    let toml = fx.production_toml(&Sql::Sqlite, &resolver, &s3, BUCKET, "").replace(
        "limits = { memory = \"64MiB\", timeout = \"5s\" }",
        "limits = { memory = \"64MiB\", timeout = \"5s\" }\ncache = { ttl = \"1ms\", not_found_ttl = \"1ms\" }",
    );
    let rt = runtime(fx.load_with_env(&toml)).await;
    run(&rt).await;

    // the PMS now says card C-1001 belongs to someone else; its image is re-exported
    let new_guid = ferry_tests::guid("someone-else");
    resolver.set_mapping("C-1001", &new_guid);
    let img = fx.site.image(101);
    let mut bytes = std::fs::read(&img.path).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    ferry_tests::write_settled(&img.path, &bytes).unwrap();
    let s = run(&rt).await;
    assert_eq!(report(&s, &img.rel_path).patient_guid.as_deref(), Some(new_guid.as_str()));
    let log = fx.ledger().log_entries(None, 200).unwrap();
    let changed: Vec<_> = log.iter().filter(|e| e.action == "resolution-changed").collect();
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert!(changed[0].details.contains(&new_guid), "{}", changed[0].details);
    assert!(!changed[0].details.contains("C-1001"), "no card id in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tests_sql_login_resolver_and_bucket() {
    use ferry::config::Role;
    let fx = Fixture::new(demo_site());
    let tds = ferry_tds_server::TdsServer::start(&fx.site.db, Default::default()).await.unwrap();
    let resolver = ResolverServer::start(fx.site.card_map.clone());
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let good = fx.production_toml(&Sql::SqlServer(tds.port()), &resolver, &s3, BUCKET, "");
    let lines = ferry::check::check(&fx.load_with_env(&good), &crate::harness::options()).await.unwrap();
    for l in &lines {
        assert!(l.ok, "{l}");
    }
    let line =
        |lines: &[ferry::check::CheckLine], r: Role| lines.iter().find(|l| l.section == r.section()).unwrap().clone();
    assert!(line(&lines, Role::Resolver).message.contains("test lookup answered"));
    assert!(line(&lines, Role::Store).message.contains(&format!("s3://{BUCKET}/")));

    // wrong password, missing bucket: each on its stage's line, with the fix
    tds.set_refuse_logins(true);
    let bad = good.replace(&format!("bucket = \"{BUCKET}\""), "bucket = \"no-such-bucket\"");
    let lines = ferry::check::check(&fx.load_with_env(&bad), &crate::harness::options()).await.unwrap();
    let source = line(&lines, Role::Source);
    assert!(!source.ok && source.message.contains("login failed"), "{source}");
    assert!(source.message.contains("check user and password"), "{source}");
    let store = line(&lines, Role::Store);
    assert!(!store.ok && store.message.contains("no-such-bucket"), "{store}");
    assert!(line(&lines, Role::Extractor).ok);
}
