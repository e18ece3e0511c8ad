//! A provider's FHIR server that answers with something meant to hurt:
//! JSON nested 100,000 deep, a 15 MB Bundle of five million empty
//! entries (far more memory as parsed JSON than the source may have), a
//! `next` link back to the page itself. Each run ends, with a clear error
//! or notice naming the server; the process lives on and the next run
//! against a sane server works.

use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferry::config::Pipeline;
use ferry::runner::Outcome;
use ferry_tests::SiteBuilder;

use crate::harness::{run, runtime, Fixture};

#[derive(Clone, Copy, Debug)]
enum Answer {
    Deep,
    Huge,
    SelfLink,
    Empty,
}

struct Peer {
    answer: Mutex<Answer>,
    base: String,
}

async fn search(State(p): State<Arc<Peer>>, RawQuery(q): RawQuery) -> Response {
    let answer = *p.answer.lock().unwrap();
    let body: Vec<u8> = match answer {
        Answer::Deep => {
            let mut b = br#"{"resourceType":"Bundle","entry":"#.to_vec();
            b.extend(std::iter::repeat_n(b'[', 100_000));
            b.extend(std::iter::repeat_n(b']', 100_000));
            b.push(b'}');
            b
        }
        Answer::Huge => {
            let mut b = br#"{"resourceType":"Bundle","type":"searchset","entry":["#.to_vec();
            for i in 0..5_000_000 {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(b"{}");
            }
            b.extend_from_slice(b"]}");
            b
        }
        Answer::SelfLink => {
            // an entry without meta.lastUpdated (paging mode), and a next
            // link to this very page
            let me = format!("{}/DocumentReference?{}", p.base, q.unwrap_or_default());
            serde_json::to_vec(&serde_json::json!({
                "resourceType": "Bundle", "type": "searchset",
                "link": [{ "relation": "next", "url": me }],
                "entry": [{ "resource": { "resourceType": "DocumentReference", "id": "d1", "status": "current" } }],
            }))
            .unwrap()
        }
        Answer::Empty => br#"{"resourceType":"Bundle","type":"searchset","total":0}"#.to_vec(),
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/fhir+json")], body).into_response()
}

async fn start() -> (String, Arc<Peer>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = Arc::new(Peer { answer: Mutex::new(Answer::Deep), base: format!("http://{addr}/r4") });
    let app = Router::new().route("/r4/DocumentReference", get(search)).with_state(peer.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr.to_string(), peer)
}

fn pipeline(fx: &Fixture, host: &str) -> Pipeline {
    let text = format!(
        r#"
[pipeline]
name = "hostile-provider"
plugin_path = ["{plugins}"]
state_dir = "state"

[source]
plugin = "fhir-documents"
grants.http = ["{host}"]
limits = {{ memory = "64MiB", timeout = "20s" }}
config = {{ base_url = "http://{host}/r4" }}

[resolver]
plugin = "csv-resolver"
grants.fs = {{ maps = "maps" }}
config = {{ root = "maps", path = "patients.csv" }}

[store]
plugin = "store"
grants.object_store = {{ kind = "fs", path = "out" }}
"#,
        plugins = ferry_tests::plugin_dir().display(),
    );
    std::fs::create_dir_all(fx.dir.path().join("maps")).unwrap();
    std::fs::create_dir_all(fx.dir.path().join("out")).unwrap();
    std::fs::write(fx.dir.path().join("maps/patients.csv"), "cardId,patientGuid\n").unwrap();
    let path = fx.dir.path().join("pipeline.toml");
    std::fs::write(&path, &text).unwrap();
    Pipeline::parse(&path, &text, &|_| None).unwrap_or_else(|e| panic!("pipeline loads: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_provider_ends_each_run_with_a_clear_error() {
    let (host, peer) = start().await;
    let fx = Fixture::new(SiteBuilder::new());
    let rt = runtime(pipeline(&fx, &host)).await;

    *peer.answer.lock().unwrap() = Answer::Deep;
    let s = run(&rt).await;
    let errors = s.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("not JSON") && errors[0].contains(&host), "{errors:?}");

    // five million entries: the source runs out of its 64 MiB, the run says so
    *peer.answer.lock().unwrap() = Answer::Huge;
    let s = run(&rt).await;
    let errors = s.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("source"), "{errors:?}");
    assert!(errors[0].contains("memory"), "the error names the limit: {errors:?}");

    // a next link to the page itself: the pass ends, with a failed notice saying why
    *peer.answer.lock().unwrap() = Answer::SelfLink;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    let r = crate::harness::report(&s, "DocumentReference search");
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r.detail.contains("next link is the page itself"), "{}", r.detail);

    // and the same runtime (the same instances' pool) works on
    *peer.answer.lock().unwrap() = Answer::Empty;
    let s = run(&rt).await;
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    assert_eq!(s.count(Outcome::Stored), 0);
}
