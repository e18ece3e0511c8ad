use super::*;

fn config() -> Config {
    Config::parse(r#"{"root": "maps", "path": "card-map.csv"}"#).unwrap()
}

fn parse(text: &str) -> Result<(Table, Tolerated), Problem> {
    parse_table(text.as_bytes(), &config(), "maps:card-map.csv")
}

fn resolved(r: Resolution) -> String {
    match r {
        Resolution::Resolved(g) => format!("resolved {g}"),
        Resolution::NotFound => "not-found".into(),
        Resolution::Ambiguous(g) => format!("ambiguous {}", g.join(",")),
        Resolution::Unsupported => "unsupported".into(),
    }
}

#[test]
fn config_rules() {
    let c = config();
    assert_eq!(
        (c.key_column.as_str(), c.guid_column.as_str(), c.scheme.as_str()),
        ("cardId", "patientGuid", "card-id")
    );
    let e = Config::parse(r#"{"root": "maps"}"#).unwrap_err();
    assert!(e.message.contains("`path`"), "{}", e.message);
    let e = Config::parse(r#"{"root": "maps", "path": "x", "colum": "y"}"#).unwrap_err();
    assert!(e.message.contains("colum"), "{}", e.message);
    let e = Config::parse(r#"{"root": "", "path": "x"}"#).unwrap_err();
    assert!(e.message.contains("root"), "{}", e.message);
}

#[test]
fn basic_mapping() {
    let (t, tol) = parse(
        "\u{feff}cardId,patientGuid,name\n\
         1001, g-1 ,Doe\n\
         1002,g-2,Roe\n\
         1002,g-3,Roe\n\
         1003,g-4,\n\
         1003,g-4,x\n\
         1004,,x\n\
         ,g-9,x\n\
         \"1005\",\"g-5\"\n",
    )
    .unwrap();
    assert_eq!(resolved(t.resolve("1001")), "resolved g-1");
    assert_eq!(resolved(t.resolve(" 1001 ")), "resolved g-1");
    assert_eq!(resolved(t.resolve("1002")), "ambiguous g-2,g-3");
    assert_eq!(resolved(t.resolve("1003")), "resolved g-4");
    assert_eq!(resolved(t.resolve("1004")), "not-found");
    assert_eq!(resolved(t.resolve("1005")), "resolved g-5");
    assert_eq!(resolved(t.resolve("")), "not-found");
    assert_eq!(tol.empty_guid_lines, [7]);
}

#[test]
fn semicolons_crlf_and_case() {
    let (t, _) = parse("CardID;PatientGUID\r\n1001;g-1\r\n").unwrap();
    assert_eq!(resolved(t.resolve("1001")), "resolved g-1");
    let (t, _) = parse("cardId\tpatientGuid\n1001\tg-1\n").unwrap();
    assert_eq!(resolved(t.resolve("1001")), "resolved g-1");
}

#[test]
fn latin1_outside_the_columns_is_fine() {
    let mut bytes = b"cardId,patientGuid,name\n1001,g-1,M".to_vec();
    bytes.push(0xfc); // ü in Windows-1252
    bytes.extend_from_slice(b"ller\n");
    let (t, _) = parse_table(&bytes, &config(), "f").unwrap();
    assert_eq!(resolved(t.resolve("1001")), "resolved g-1");
}

#[test]
fn missing_columns_are_named() {
    let e = parse("cardId,guid\n1,2\n").unwrap_err();
    assert_eq!(e, Problem("maps:card-map.csv: no column `patientGuid` in the header row".into()));
    let e = parse("id,guid\n").unwrap_err();
    assert_eq!(e, Problem("maps:card-map.csv: no column `cardId` and `patientGuid` in the header row".into()));
    let e = parse("").unwrap_err();
    assert!(e.0.contains("no header row"), "{e:?}");
}

#[test]
fn header_only_is_an_empty_table() {
    let (t, _) = parse("cardId,patientGuid\n").unwrap();
    assert!(t.is_empty());
}
