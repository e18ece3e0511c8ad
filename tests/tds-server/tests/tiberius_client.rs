//! The real tiberius 0.13 client against the test server: login, queries,
//! parameters, types, errors and injected faults. These are exactly the
//! situations ferry's SQL Server source must handle with a real Sidexis
//! database, so they pin down what the server promises.

use std::path::PathBuf;
use std::time::Duration;

use ferry_tds_server::{Options, TdsServer};
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

type Tds = Client<Compat<TcpStream>>;

struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    server: TdsServer,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pdata.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE patient (
             SidexisPatientId INTEGER PRIMARY KEY,
             CardId TEXT,
             Name NVARCHAR(100),
             Weight REAL,
             Photo BLOB
         );
         INSERT INTO patient VALUES (42, 'C-42', 'Jürgen Groß', 71.5, x'DEADBEEF');
         INSERT INTO patient VALUES (43, NULL, 'Anna Müller', NULL, NULL);
         INSERT INTO patient VALUES (44, 'C-44', 'Zoë Straße', 60, NULL);
         CREATE TABLE mediabase (imageId INTEGER PRIMARY KEY, SidexisPatientId INTEGER, imageName TEXT);
         INSERT INTO mediabase VALUES (7, 42, 'pano.dcm'), (8, 42, 'bitewing.dcm');",
    )
    .unwrap();
    drop(conn);
    let server = TdsServer::start(&db, Options::default()).await.unwrap();
    Fixture { _dir: dir, db, server }
}

fn config(server: &TdsServer, user: &str, password: &str, database: &str) -> Config {
    let mut config = Config::new();
    config.host("127.0.0.1");
    config.port(server.port());
    config.database(database);
    config.application_name("ferry-test");
    config.authentication(AuthMethod::sql_server(user, password));
    config.encryption(EncryptionLevel::NotSupported);
    config.trust_cert();
    config
}

async fn connect_with(server: &TdsServer, config: Config) -> tiberius::Result<Tds> {
    let tcp = TcpStream::connect(server.addr()).await?;
    tcp.set_nodelay(true)?;
    tokio::time::timeout(Duration::from_secs(20), Client::connect(config, tcp.compat_write()))
        .await
        .expect("connect must not hang")
}

async fn connect(server: &TdsServer) -> Tds {
    connect_with(server, config(server, "ferry", "ferry-test-pw", "PDATA")).await.expect("login")
}

async fn one_row(client: &mut Tds, sql: &str, params: &[&dyn tiberius::ToSql]) -> Option<tiberius::Row> {
    client.query(sql, params).await.unwrap().into_row().await.unwrap()
}

#[tokio::test]
async fn select_one_as_batch_and_as_rpc() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;
    assert_eq!(f.server.logins(), 1);

    let row = c.simple_query("SELECT 1").await.unwrap().into_row().await.unwrap().unwrap();
    assert_eq!(row.get::<i64, _>(0), Some(1));

    let row = one_row(&mut c, "SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), Some(1));
    assert!(matches!(row.cells().next().unwrap().1, ColumnData::I64(Some(1))));
    assert_eq!(f.server.queries(), 2);
}

#[tokio::test]
async fn parameter_as_integer_and_as_string() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;
    let sql = "SELECT CardId FROM patient WHERE SidexisPatientId = @P1";

    let row = one_row(&mut c, sql, &[&42i32]).await.unwrap();
    assert_eq!(row.get::<&str, _>("CardId"), Some("C-42"));
    let row = one_row(&mut c, sql, &[&44i64]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), Some("C-44"));
    // A string compared with an INTEGER column: SQLite converts, like SQL
    // Server's implicit conversion.
    let row = one_row(&mut c, sql, &[&"42"]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), Some("C-42"));
    assert!(one_row(&mut c, sql, &[&"4711"]).await.is_none());

    let row = one_row(&mut c, "SELECT SidexisPatientId FROM patient WHERE CardId = @P1", &[&"C-44"]).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), Some(44));
}

#[tokio::test]
async fn in_list() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;
    let rows = c
        .query(
            "SELECT SidexisPatientId, CardId FROM patient WHERE SidexisPatientId IN (@P1, @P2, @P3) ORDER BY SidexisPatientId",
            &[&42i32, &44i32, &99i32],
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(0).unwrap()).collect();
    assert_eq!(ids, vec![42, 44]);
}

#[tokio::test]
async fn nulls_in_results_and_parameters() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;

    let row =
        one_row(&mut c, "SELECT CardId, Weight, Photo FROM patient WHERE SidexisPatientId = 43", &[]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), None);
    assert_eq!(row.get::<f64, _>(1), None);
    assert_eq!(row.get::<&[u8], _>(2), None);
    let cells: Vec<_> = row.cells().map(|(_, d)| d.clone()).collect();
    assert_eq!(cells, vec![ColumnData::String(None), ColumnData::F64(None), ColumnData::Binary(None)]);

    let none_i32: Option<i32> = None;
    let none_str: Option<&str> = None;
    let none_f64: Option<f64> = None;
    let row = one_row(&mut c, "SELECT @P1 AS a, @P2 AS b, @P3 AS c", &[&none_i32, &none_str, &none_f64]).await.unwrap();
    assert!(row
        .cells()
        .all(|(_, d)| matches!(d, ColumnData::String(None) | ColumnData::I64(None) | ColumnData::F64(None))));

    let n = c
        .execute(
            "INSERT INTO patient (SidexisPatientId, CardId, Name) VALUES (@P1, @P2, @P3)",
            &[&50i32, &none_str, &"Null Card"],
        )
        .await
        .unwrap()
        .total();
    assert_eq!(n, 1);
    let row = one_row(&mut c, "SELECT COUNT(*) FROM patient WHERE CardId IS NULL", &[]).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), Some(2));
}

#[tokio::test]
async fn unicode_both_ways() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;

    let row = one_row(&mut c, "SELECT Name FROM patient WHERE SidexisPatientId = @P1", &[&42i32]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), Some("Jürgen Groß"));

    let row = one_row(&mut c, "SELECT SidexisPatientId FROM patient WHERE Name = @P1", &[&"Zoë Straße"]).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), Some(44));

    let text = "Ärger über Öl, Maß – €, 𝄞 and 日本";
    c.execute("INSERT INTO patient (SidexisPatientId, Name) VALUES (60, @P1)", &[&text]).await.unwrap();
    let row = one_row(&mut c, "SELECT Name FROM patient WHERE SidexisPatientId = 60", &[]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), Some(text));
    // And as a literal in a batch.
    let row = c
        .simple_query("SELECT COUNT(*) FROM patient WHERE Name = N'Anna Müller'")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), Some(1));
}

#[tokio::test]
async fn long_strings_and_blobs() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;

    // > 4000 characters: sent by tiberius as nvarchar(max) (PLP), returned as
    // nvarchar(max); also bigger than one 4096-byte packet both ways.
    let long: String = "Große Übersicht; ".repeat(700);
    assert!(long.chars().count() > 4000);
    c.execute("INSERT INTO patient (SidexisPatientId, Name) VALUES (70, @P1)", &[&long.as_str()]).await.unwrap();
    let row = one_row(&mut c, "SELECT Name FROM patient WHERE SidexisPatientId = @P1", &[&70i32]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), Some(long.as_str()));
    let row = one_row(&mut c, "SELECT @P1", &[&long.as_str()]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0).map(str::len), Some(long.len()));

    let row = one_row(&mut c, "SELECT Photo, Weight FROM patient WHERE SidexisPatientId = 42", &[]).await.unwrap();
    assert_eq!(row.get::<&[u8], _>(0), Some(&[0xDE, 0xAD, 0xBE, 0xEF][..]));
    assert_eq!(row.get::<f64, _>(1), Some(71.5));

    let blob: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let row = one_row(&mut c, "SELECT @P1", &[&blob.as_slice()]).await.unwrap();
    assert_eq!(row.get::<&[u8], _>(0), Some(blob.as_slice()));

    let row = one_row(&mut c, "SELECT @P1, @P2, @P3", &[&true, &2.25f64, &7u8]).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), Some(1));
    assert_eq!(row.get::<f64, _>(1), Some(2.25));
    assert_eq!(row.get::<i64, _>(2), Some(7));
}

#[tokio::test]
async fn many_rows_span_packets() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;
    let rows = c
        .simple_query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             SELECT i, 'image ' || i AS name FROM n",
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    assert_eq!(rows.len(), 3000);
    assert_eq!(rows[2999].get::<&str, _>("name"), Some("image 3000"));
}

#[tokio::test]
async fn sql_server_isms() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;
    let row = one_row(
        &mut c,
        "SELECT TOP 1 [p].[CardId], ISNULL(m.imageName, N'') AS img FROM [dbo].[patient] p \
         LEFT JOIN PDATA.dbo.mediabase m ON m.SidexisPatientId = p.SidexisPatientId \
         WHERE p.Name = N'Jürgen Groß' ORDER BY m.imageId;",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(row.get::<&str, _>(0), Some("C-42"));
    assert_eq!(row.get::<&str, _>(1), Some("pano.dcm"));
    c.simple_query("SET NOCOUNT ON").await.unwrap().into_results().await.unwrap();
}

#[tokio::test]
async fn execute_reports_rows_affected() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;
    let r = c.execute("UPDATE patient SET Weight = @P1 WHERE Weight IS NOT NULL", &[&1.0f64]).await.unwrap();
    assert_eq!(r.rows_affected(), &[2]);
    let r = c.execute("DELETE FROM patient WHERE 0", &[]).await.unwrap();
    assert_eq!(r.total(), 0);
}

#[tokio::test]
async fn wrong_password_or_user_is_login_failed() {
    let f = fixture().await;
    for (user, pw) in [("ferry", "wrong"), ("sa", "ferry-test-pw"), ("ferry", "")] {
        let err = connect_with(&f.server, config(&f.server, user, pw, "PDATA")).await.expect_err("login must fail");
        let text = err.to_string();
        assert!(text.contains("Login failed for user"), "{text}");
        match err {
            tiberius::error::Error::Server(e) => {
                assert_eq!(e.code(), 18456);
                assert_eq!(e.class(), 14);
                assert_eq!(e.message(), format!("Login failed for user '{user}'."));
            }
            other => panic!("expected a server error, got {other:?}"),
        }
    }
    assert_eq!(f.server.logins(), 0);
    // The server is still fine.
    connect(&f.server).await;
    assert_eq!(f.server.logins(), 1);
}

#[tokio::test]
async fn unknown_database_is_refused() {
    let f = fixture().await;
    let err = connect_with(&f.server, config(&f.server, "ferry", "ferry-test-pw", "SIDEXIS")).await.err().unwrap();
    match err {
        tiberius::error::Error::Server(e) => assert_eq!(e.code(), 4060, "{e}"),
        other => panic!("{other:?}"),
    }
    // Database names are case-insensitive, as with a default collation.
    connect_with(&f.server, config(&f.server, "ferry", "ferry-test-pw", "pdata")).await.unwrap();
}

#[tokio::test]
async fn refused_logins_while_set() {
    let f = fixture().await;
    let mut old = connect(&f.server).await;
    f.server.set_refuse_logins(true);
    let err = connect_with(&f.server, config(&f.server, "ferry", "ferry-test-pw", "PDATA")).await.err().unwrap();
    assert!(err.to_string().contains("Login failed"), "{err}");
    // Open connections keep working.
    assert!(one_row(&mut old, "SELECT 1", &[]).await.is_some());
    f.server.set_refuse_logins(false);
    connect(&f.server).await;
    assert_eq!(f.server.logins(), 2);
}

#[tokio::test]
async fn sql_error_then_the_connection_still_works() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;

    let err = c.query("SELECT * FROM no_such_table WHERE x = @P1", &[&1i32]).await.err().unwrap();
    assert!(err.to_string().contains("no such table: no_such_table"), "{err}");
    match &err {
        tiberius::error::Error::Server(e) => {
            assert_eq!(e.code(), 208);
            assert_eq!(e.class(), 16);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(one_row(&mut c, "SELECT 2", &[]).await.unwrap().get::<i64, _>(0), Some(2));

    let err = c.simple_query("SELEC oops").await.err().unwrap();
    assert!(err.to_string().contains("syntax error"), "{err}");
    let err = c.execute("INSERT INTO patient (SidexisPatientId) VALUES (42)", &[]).await.err().unwrap();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    assert_eq!(one_row(&mut c, "SELECT 3", &[]).await.unwrap().get::<i64, _>(0), Some(3));
}

#[tokio::test]
async fn dropped_connections_fail_and_new_ones_work() {
    let f = fixture().await;
    let mut old = connect(&f.server).await;
    assert!(one_row(&mut old, "SELECT 1", &[]).await.is_some());

    f.server.drop_connections();
    let res = tokio::time::timeout(Duration::from_secs(20), async {
        match old.query("SELECT 1", &[]).await {
            Ok(stream) => stream.into_first_result().await.map(|_| ()),
            Err(e) => Err(e),
        }
    })
    .await
    .expect("a dropped connection must fail, not hang");
    // An I/O error (what ferry's pool takes as "reconnect and retry").
    match res {
        Err(tiberius::error::Error::Io { .. }) => {}
        other => panic!("expected an I/O error on a dropped connection, got {other:?}"),
    }

    let mut new = connect(&f.server).await;
    assert_eq!(one_row(&mut new, "SELECT 5", &[]).await.unwrap().get::<i64, _>(0), Some(5));
    assert_eq!(f.server.logins(), 2);
}

#[tokio::test]
async fn a_client_requiring_tls_gets_a_clean_error() {
    let f = fixture().await;
    let mut cfg = config(&f.server, "ferry", "ferry-test-pw", "PDATA");
    cfg.encryption(EncryptionLevel::Required);
    let err = connect_with(&f.server, cfg).await.expect_err("TLS is not offered");
    assert!(err.to_string().contains("encryption"), "{err}");
    // `Off` (encrypt the login only) still needs TLS: tiberius tries a
    // handshake, the server hangs up, the client gets an error, not a hang.
    for level in [EncryptionLevel::Off, EncryptionLevel::On] {
        let mut cfg = config(&f.server, "ferry", "ferry-test-pw", "PDATA");
        cfg.encryption(level);
        let err = connect_with(&f.server, cfg).await.expect_err("TLS is not offered");
        eprintln!("{level:?}: {err}");
    }
    assert_eq!(f.server.logins(), 0);
}

#[tokio::test]
async fn garbage_from_a_client_closes_only_that_connection() {
    let f = fixture().await;
    let inputs: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x12, 0x01, 0x00, 0x03, 0, 0, 0, 0], // length shorter than a header
        &[0x12, 0x01, 0x00, 0x0A, 0, 0, 0, 0, 0x01, 0x00], // option table cut short
        &[0x12, 0x01, 0x00, 0x0E, 0, 0, 0, 0, 0x01, 0x00, 0x40, 0x00, 0x01, 0xFF], // option outside
        &[0x16, 0x03, 0x01, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], // TLS hello
    ];
    for input in inputs {
        let mut tcp = TcpStream::connect(f.server.addr()).await.unwrap();
        tcp.write_all(input).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "server kept a broken connection open for {input:?}");
    }

    // A valid PRELOGIN followed by a truncated LOGIN7.
    let mut tcp = TcpStream::connect(f.server.addr()).await.unwrap();
    let prelogin = [0x12, 0x01, 0x00, 0x0F, 0, 0, 1, 0, 0x01, 0x00, 0x06, 0x00, 0x01, 0xFF, 0x02];
    tcp.write_all(&prelogin).await.unwrap();
    let mut header = [0u8; 8];
    tcp.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 0x04);
    let mut body = vec![0u8; u16::from_be_bytes([header[2], header[3]]) as usize - 8];
    tcp.read_exact(&mut body).await.unwrap();
    tcp.write_all(&[0x10, 0x01, 0x00, 0x10, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut rest))
        .await
        .expect("closed after a malformed login")
        .ok();
    // The answer to a malformed login is a login-failed error.
    assert!(rest.windows(2).any(|w| w == [0x18, 0x48]), "no error 18456 in {rest:?}");

    let mut c = connect(&f.server).await;
    assert!(one_row(&mut c, "SELECT 1", &[]).await.is_some());
    assert_eq!(f.server.logins(), 1);
}

#[tokio::test]
async fn start_fails_for_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sqlite");
    assert!(TdsServer::start(&missing, Options::default()).await.is_err());
    assert!(!missing.exists(), "start must not create a database");
}

#[tokio::test]
async fn writes_by_the_test_are_visible_to_the_client() {
    let f = fixture().await;
    let mut c = connect(&f.server).await;
    let w = rusqlite::Connection::open(&f.db).unwrap();
    w.execute("INSERT INTO patient (SidexisPatientId, CardId) VALUES (90, 'C-90')", []).unwrap();
    let row = one_row(&mut c, "SELECT CardId FROM patient WHERE SidexisPatientId = @P1", &[&90i32]).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), Some("C-90"));
}

/// The server has its own thread: a test may block its thread (waiting for a
/// `ferry` child process, say) while a client talks to the server.
#[test]
fn server_answers_while_the_test_thread_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.sqlite");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE patient (SidexisPatientId INTEGER, CardId TEXT); INSERT INTO patient VALUES (1, 'C-1');",
        )
        .unwrap();
    let server = TdsServer::start_blocking(&db, Options::default()).unwrap();
    let port = server.port();
    // Another thread plays the child process; this one just blocks on it.
    let card = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut config = Config::new();
            config.host("127.0.0.1");
            config.port(port);
            config.authentication(AuthMethod::sql_server("ferry", "ferry-test-pw"));
            config.encryption(EncryptionLevel::NotSupported);
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut c = Client::connect(config, tcp.compat_write()).await.unwrap();
            let row =
                one_row(&mut c, "SELECT CardId FROM patient WHERE SidexisPatientId = @P1", &[&1i32]).await.unwrap();
            row.get::<&str, _>(0).map(str::to_string)
        })
    })
    .join()
    .unwrap();
    assert_eq!(card.as_deref(), Some("C-1"));
    assert_eq!(server.queries(), 1);
}
