//! Tests of the Open Dental API double through a real HTTP client
//! (reqwest): the Open Dental plugins' end-to-end tests trust it to behave
//! as Open Dental's API documentation says, so each behaviour they rely on
//! is pinned here.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::opendental_server::{CUSTOMER_KEY, DEVELOPER_KEY, MAX_BODY};
use super::*;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body[..self.body.len().min(500)])))
    }

    /// The error explanation (a JSON string).
    fn explanation(&self) -> String {
        match self.json() {
            Value::String(s) => s,
            other => panic!("not a JSON string: {other}"),
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

struct Client {
    base: String,
    auth: String,
    http: reqwest::Client,
}

impl Client {
    fn new(od: &OpenDentalServer) -> Client {
        Client { base: od.base_url(), auth: od.authorization(), http: reqwest::Client::new() }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
    }

    async fn get(&self, path: &str) -> Answer {
        send(self.req(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        send(self.req(reqwest::Method::POST, path).body(body.to_string())).await
    }

    async fn put(&self, path: &str, body: &Value) -> Answer {
        send(self.req(reqwest::Method::PUT, path).body(body.to_string())).await
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Answer { status, headers, body: r.bytes().await.expect("body").to_vec() }
}

fn upload_body(pat: u64, bytes: &[u8]) -> Value {
    json!({
        "PatNum": pat, "rawBase64": STANDARD.encode(bytes), "extension": ".dcm",
        "Description": "Pano [ferry:0123456789ab]", "DateCreated": "2024-01-31 08:15:00",
        "DocCategory": 190, "ImgType": "Radiograph",
    })
}

#[tokio::test]
async fn credentials_and_content_type_are_checked() {
    let od = OpenDentalServer::start();
    let pat = od.add_patient("Smith", "Jane", "1976-05-24");
    assert_eq!(od.authorization(), format!("ODFHIR {DEVELOPER_KEY}/{CUSTOMER_KEY}"));
    let url = format!("{}/patients/{pat}", od.base_url());
    let http = reqwest::Client::new();
    for auth in [None, Some("Bearer x"), Some("ODFHIR wrong/keys"), Some(&*format!("ODFHIR {DEVELOPER_KEY}/"))] {
        let mut r = http.get(&url).header("Content-Type", "application/json");
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let a = send(r).await;
        assert_eq!(a.status, 401, "{auth:?}");
        assert!(a.explanation().contains("ODFHIR"));
    }
    // the scheme is case-insensitive
    let a = send(
        http.get(&url)
            .header("Content-Type", "application/json")
            .header("Authorization", format!("odfhir {DEVELOPER_KEY}/{CUSTOMER_KEY}")),
    )
    .await;
    assert_eq!(a.status, 200);
    // no Content-Type: 400
    let a = send(http.get(&url).header("Authorization", od.authorization())).await;
    assert_eq!(a.status, 400);
    assert!(a.explanation().contains("Content-Type"));

    let other = OpenDentalServer::builder().keys("d1", "c1").start();
    let c = Client::new(&other);
    assert_eq!(c.auth, "ODFHIR d1/c1");
    assert_eq!(c.get("/patients").await.status, 200);
    assert_eq!(other.request_count("GET /patients"), 1);
}

#[tokio::test]
async fn patients_single_and_search() {
    let od = OpenDentalServer::start();
    let jane = od.add_patient("Smith", "Jane", "1976-05-24");
    let john = od.add_patient("Smith", "John", "1979-06-23");
    let smithers = od.add_patient("Smithers", "Jane", "1976-05-24");
    let archived = od.add_patient("Smith", "Jane", "1976-05-24");
    od.set_patient_status(archived, "Archived");
    let c = Client::new(&od);

    let a = c.get(&format!("/patients/{jane}")).await;
    assert_eq!(a.status, 200);
    let p = a.json();
    assert_eq!(
        (p["PatNum"].as_u64(), p["LName"].as_str(), p["Birthdate"].as_str()),
        (Some(jane), Some("Smith"), Some("1976-05-24"))
    );
    assert_eq!(p["PatStatus"], "Patient");
    let a = c.get("/patients/9999").await;
    assert_eq!((a.status, a.explanation().as_str()), (404, "Patient not found"));
    assert_eq!(c.get("/patients/abc").await.status, 400);

    // partial, case-insensitive names; exact birth date; archived hidden
    let nums =
        |a: &Answer| a.json().as_array().unwrap().iter().map(|p| p["PatNum"].as_u64().unwrap()).collect::<Vec<_>>();
    let a = c.get("/patients?LName=smi&FName=j&Birthdate=1976-05-24").await;
    assert_eq!(a.status, 200);
    assert_eq!(nums(&a), vec![jane, smithers]);
    assert_eq!(nums(&c.get("/patients?LName=SMITH&FName=jo").await), vec![john]);
    assert_eq!(nums(&c.get("/patients?LName=Smith&FName=Jane&showArchived=true").await).len(), 3);
    od.set_patient_status(john, "Inactive");
    assert_eq!(nums(&c.get("/patients?LName=Smith&FName=John&hideInactive=true").await), Vec::<u64>::new());
    assert_eq!(nums(&c.get("/patients?LName=Smith&FName=John").await), vec![john]);
    assert_eq!(c.get("/patients?LName=Nobody").await.json(), json!([]));
    // the multiple shape has no Guarantor, the single one does
    let row = &c.get("/patients?LName=Smithers").await.json()[0];
    assert!(row.get("Guarantor").is_none() && row["TxtMsgOk"] == "Unknown", "{row}");

    // refusals: a bad date, unimplemented and unknown parameters
    assert_eq!(c.get("/patients?Birthdate=24.05.1976").await.status, 400);
    assert_eq!(c.get("/patients?Phone=555").await.status, 400);
    assert_eq!(c.get("/patients?LNmae=Smith").await.status, 400);
    assert_eq!(c.get("/patients?Offset=x").await.status, 400);
}

#[tokio::test]
async fn patient_search_pages_with_offset_and_limit() {
    let od = OpenDentalServer::start();
    let nums: Vec<u64> = (0..250).map(|i| od.add_patient("Nguyen", &format!("A{i:03}"), "1990-01-01")).collect();
    let c = Client::new(&od);
    let page =
        |a: Answer| a.json().as_array().unwrap().iter().map(|p| p["PatNum"].as_u64().unwrap()).collect::<Vec<_>>();
    let first = page(c.get("/patients?LName=Nguyen").await);
    assert_eq!(first, nums[..100].to_vec(), "default: items 0 through 99");
    assert_eq!(page(c.get("/patients?LName=Nguyen&Offset=200").await), nums[200..].to_vec());
    assert_eq!(page(c.get("/patients?LName=Nguyen&Offset=10&Limit=5").await), nums[10..15].to_vec());
    assert_eq!(page(c.get("/patients?LName=Nguyen&Limit=1000").await).len(), 100, "capped at 100");
    assert_eq!(page(c.get("/patients?LName=Nguyen&Offset=900").await), Vec::<u64>::new());

    let small = OpenDentalServer::builder().page_size(3).start();
    for i in 0..5 {
        small.add_patient("Lee", &i.to_string(), "2000-01-01");
    }
    let c = Client::new(&small);
    assert_eq!(c.get("/patients?LName=Lee").await.json().as_array().unwrap().len(), 3);
    assert_eq!(c.get("/patients?LName=Lee&Offset=3").await.json().as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn upload_stores_the_bytes_and_lists_them() {
    let od = OpenDentalServer::start();
    let pat = od.add_patient("Smith", "John", "1979-06-23");
    let c = Client::new(&od);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();

    let a = c.post("/documents/Upload", &upload_body(pat, &bytes)).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let doc = a.json();
    let n = doc["DocNum"].as_u64().unwrap();
    assert_eq!(a.header("location"), format!("{}/documents/{n}", od.base_url()));
    assert_eq!(doc["PatNum"].as_u64(), Some(pat));
    assert_eq!(doc["Description"], "Pano [ferry:0123456789ab]");
    assert_eq!(doc["DateCreated"], "2024-01-31 08:15:00");
    assert_eq!((doc["DocCategory"].as_u64(), doc["docCategory"].as_str()), (Some(190), Some("Xray")));
    assert_eq!(doc["ImgType"], "Radiograph");
    assert_eq!(doc["PrintHeading"], "false");
    assert_eq!(od.document_bytes(n).unwrap(), bytes, "byte for byte");
    assert_eq!(od.document(n).unwrap().extension, ".dcm");

    // not idempotent: the same upload again is a second document
    let again = c.post("/documents/Upload", &upload_body(pat, &bytes)).await;
    assert_eq!(again.status, 201);
    assert_ne!(again.json()["DocNum"].as_u64(), Some(n));
    assert_eq!(od.documents_of(pat).len(), 2);

    // listed with the file still in Note until someone opens it
    let list = c.get(&format!("/documents?PatNum={pat}")).await;
    assert_eq!(list.status, 200);
    let rows = list.json();
    let row = &rows[0];
    assert_eq!(row["DocNum"].as_u64(), Some(n));
    assert_eq!(row["PatNum"], pat.to_string(), "a string in the list, as documented");
    assert_eq!(row["MountNum"], 0);
    assert_eq!(row["filePath"], "");
    assert_eq!(row["Note"], format!("_rawBase64_:.dcm_{}", STANDARD.encode(&bytes)));
    assert!(row["serverDateTime"].is_string());
    assert!(od.open_document(n));
    let row = &c.get(&format!("/documents?PatNum={pat}")).await.json()[0];
    assert_eq!(row["Note"], "");
    assert_eq!(row["filePath"], format!("\\\\server\\OpenDentImages\\S\\SmithJohn{pat}\\SmithJohn{n}.dcm"));
    assert_eq!(c.get(&format!("/documents/{n}")).await.json()["FileName"], format!("SmithJohn{n}.dcm"));

    // defaults: first category, Document, today
    let a = c
        .post("/documents/Upload", &json!({ "PatNum": pat.to_string(), "rawBase64": "JVBERi0=", "extension": "pdf" }))
        .await;
    assert_eq!(a.status, 201);
    let d = a.json();
    assert_eq!((d["DocCategory"].as_u64(), d["ImgType"].as_str()), (Some(14), Some("Document")));
    assert_eq!(d["DateCreated"].as_str().unwrap().len(), 19);
    let n = d["DocNum"].as_u64().unwrap();
    assert_eq!(od.document(n).unwrap().extension, ".pdf");
    assert_eq!(od.document_bytes(n).unwrap(), b"%PDF-");
    assert_eq!(od.request_count("POST /documents/Upload"), 3);
}

#[tokio::test]
async fn upload_validates_like_the_api() {
    let od = OpenDentalServer::start();
    let pat = od.add_patient("Smith", "John", "1979-06-23");
    let c = Client::new(&od);
    let ok = upload_body(pat, b"DICM");
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    for (body, status, says) in [
        (without("PatNum"), 400, "PatNum is required"),
        (without("rawBase64"), 400, "rawBase64 is required"),
        (without("extension"), 400, "extension is required"),
        (with("PatNum", json!(999)), 404, "Patient not found"),
        (with("rawBase64", json!("not base64!")), 400, "rawBase64"),
        (with("extension", json!(".d/cm")), 400, "extension"),
        (with("DocCategory", json!(12345)), 400, "DocCategory"),
        (with("ImgType", json!("Xray")), 400, "ImgType"),
        (with("ImgType", json!("radiograph")), 400, "ImgType"),
        (with("DateCreated", json!("2024-01-31")), 400, "DateCreated"),
        (with("DateCreated", json!("2024-01-31T08:15:00")), 400, "DateCreated"),
        (with("ToothNumbers", json!("1-40")), 400, "ToothNumbers"),
        (with("PrintHeading", json!("yes")), 400, "PrintHeading"),
        (with("Extension", json!(".dcm")), 400, "Extension"),
    ] {
        let a = c.post("/documents/Upload", &body).await;
        assert_eq!(a.status, status, "{body}");
        assert!(a.explanation().contains(says), "{}: {}", says, a.explanation());
    }
    let a = send(c.req(reqwest::Method::POST, "/documents/Upload").body("{not json")).await;
    assert_eq!(a.status, 400);
    assert!(od.documents().is_empty(), "nothing stored by a refused upload");

    let a = c.post("/documents/Upload", &with("ToothNumbers", json!("1-5,8,A"))).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.json()["ToothNumbers"], "1,2,3,4,5,8,A");

    od.add_doc_category(300, "Referrals");
    assert_eq!(c.post("/documents/Upload", &with("DocCategory", json!(300))).await.status, 201);
}

#[tokio::test]
async fn upload_body_limit() {
    let od = OpenDentalServer::start();
    let pat = od.add_patient("Big", "File", "2000-01-01");
    let c = Client::new(&od);
    let too_big = vec![0u8; MAX_BODY / 4 * 3 + 3];
    let a = c.post("/documents/Upload", &upload_body(pat, &too_big)).await;
    assert_eq!(a.status, 413);
    let fits = vec![7u8; 10 << 20];
    let a = c.post("/documents/Upload", &upload_body(pat, &fits)).await;
    assert_eq!(a.status, 201);
    assert_eq!(od.document_bytes(a.json()["DocNum"].as_u64().unwrap()).unwrap(), fits);
}

#[tokio::test]
async fn document_list_single_put_delete() {
    let od = OpenDentalServer::start();
    let pat = od.add_patient("Smith", "John", "1979-06-23");
    let other = od.add_patient("Doe", "Ann", "1980-01-01");
    let c = Client::new(&od);
    let n1 = c.post("/documents/Upload", &upload_body(pat, b"one")).await.json()["DocNum"].as_u64().unwrap();
    let mut early = upload_body(pat, b"two");
    early["DateCreated"] = json!("2020-01-01 00:00:00");
    let n2 = c.post("/documents/Upload", &early).await.json()["DocNum"].as_u64().unwrap();
    od.add_document(other, "not John's", ".pdf", b"x");

    // ordered by DateCreated
    let rows = c.get(&format!("/documents?PatNum={pat}")).await.json();
    let order: Vec<u64> = rows.as_array().unwrap().iter().map(|r| r["DocNum"].as_u64().unwrap()).collect();
    assert_eq!(order, vec![n2, n1]);
    let a = c.get("/documents").await;
    assert_eq!((a.status, a.explanation().as_str()), (400, "PatNum is required"));
    let a = c.get("/documents?PatNum=777").await;
    assert_eq!((a.status, a.explanation().as_str()), (404, "Patient not found"));
    assert_eq!(
        c.get(&format!("/documents?PatNum={pat}&Limit=1&Offset=1")).await.json()[0]["DocNum"].as_u64(),
        Some(n1)
    );

    let single = c.get(&format!("/documents/{n1}")).await.json();
    assert_eq!(single["PatNum"].as_u64(), Some(pat));
    let a = c.get("/documents/4242").await;
    assert_eq!((a.status, a.explanation().as_str()), (404, "Document not found"));

    // PUT changes only what it names, never the file
    let a = c
        .put(&format!("/documents/{n1}"), &json!({ "Description": "Pano (replaces DocNum 2)", "DocCategory": 47 }))
        .await;
    assert_eq!(a.status, 200);
    let d = a.json();
    assert_eq!((d["Description"].as_str(), d["DocCategory"].as_u64()), (Some("Pano (replaces DocNum 2)"), Some(47)));
    assert_eq!(d["ImgType"], "Radiograph", "unchanged");
    assert_eq!(od.document_bytes(n1).unwrap(), b"one");
    assert_eq!(c.put(&format!("/documents/{n1}"), &json!({ "rawBase64": "AAAA" })).await.status, 400);
    assert_eq!(c.put(&format!("/documents/{n1}"), &json!({ "ImgType": "Scan" })).await.status, 400);
    assert_eq!(c.put("/documents/4242", &json!({ "Description": "x" })).await.status, 404);

    assert_eq!(send(c.req(reqwest::Method::DELETE, &format!("/documents/{n2}"))).await.status, 200);
    assert_eq!(send(c.req(reqwest::Method::DELETE, &format!("/documents/{n2}"))).await.status, 404);
    assert_eq!(od.documents_of(pat).len(), 1);

    // unknown routes and methods
    assert_eq!(c.get("/appointments").await.status, 404);
    assert_eq!(c.get("/documents/Upload").await.status, 405);
}

#[tokio::test]
async fn faults_delay_and_counters() {
    let od = OpenDentalServer::start();
    let pat = od.add_patient("Smith", "Jane", "1976-05-24");
    let c = Client::new(&od);
    od.fault_next(1, OdFault::Status(401));
    od.fault_next(2, OdFault::RateLimited { retry_after_secs: 7 });
    od.fault_next(1, OdFault::Status(500));
    assert_eq!(od.pending_faults(), 4);
    let path = format!("/patients/{pat}");
    assert_eq!(c.get(&path).await.status, 401);
    for _ in 0..2 {
        let a = c.get(&path).await;
        assert_eq!((a.status, a.header("retry-after")), (429, "7"));
    }
    assert_eq!(c.get(&path).await.status, 500);
    assert_eq!(c.get(&path).await.status, 200);
    assert_eq!(od.pending_faults(), 0);

    od.set_delay(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(c.get(&path).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    od.fault_next(3, OdFault::Status(503));
    od.clear_faults();
    let t = Instant::now();
    assert_eq!(c.get(&path).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(300));

    assert_eq!(od.request_count("GET /patients/{PatNum}"), 7);
    c.get("/documents?PatNum=1").await;
    let log = od.requests();
    let last = log.last().unwrap();
    assert_eq!((last.route.as_str(), last.query.as_deref(), last.status), ("GET /documents", Some("PatNum=1"), 200));
    assert_eq!(log.iter().map(|r| r.status).take(4).collect::<Vec<_>>(), vec![401, 429, 429, 500]);
    assert_eq!(od.route_counts().values().sum::<u64>(), 8);
    od.reset_counts();
    assert!(od.requests().is_empty() && od.request_count("GET /documents") == 0);
}
