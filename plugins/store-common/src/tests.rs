use super::*;

/// Boring keys: every rule, today's keys pinned, a property test.
mod boring;

#[test]
fn sanitising() {
    assert_eq!(sanitise("Pano 2021/01\\02"), "Pano 2021_01_02");
    assert_eq!(sanitise("a\u{0}b\nc\u{7f}"), "a_b_c_");
    assert_eq!(sanitise("..hidden"), "hidden");
    assert_eq!(sanitise("."), "_");
    assert_eq!(sanitise(".."), "_");
    assert_eq!(sanitise(""), "_");
    assert_eq!(sanitise("   "), "_");
    assert_eq!(sanitise("Zahn 16: Röntgen?"), "Zahn 16_ Röntgen_");
    assert_eq!(sanitise("名前.dcm"), "名前.dcm");
    assert_eq!(sanitise("trailing. . "), "trailing");
}

#[test]
fn extensions() {
    assert_eq!(extension("P_1/0000_2.DCM"), ".dcm");
    assert_eq!(extension("P_1/0000_2"), "");
    assert_eq!(extension("P_1.x/file"), "");
    assert_eq!(extension(".bashrc"), "");
    assert_eq!(extension("a.tar gz"), "");
}

#[test]
fn templates() {
    assert!(Template::parse("images/{patientGuid}/{imageName}").is_ok());
    assert!(Template::parse("{modality}-{itemId}").is_ok());
    let e = Template::parse("images/{patientGUID}/{imageName}").unwrap_err();
    assert!(e.message.contains("{patientGUID}"), "{}", e.message);
    for bad in [
        "images/{imageName",
        "images/}{imageName}",
        "/{imageName}",
        "a//{imageName}",
        "{imageName}/",
        "../{imageName}",
        "images",
        "{a{imageName}}",
    ] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn keys() {
    let k = Key::new("images/g/Pano", ".dcm").unwrap();
    assert_eq!(k.render("").unwrap(), "images/g/Pano.dcm");
    assert_eq!(k.render("~abcd1234").unwrap(), "images/g/Pano~abcd1234.dcm");
    let k = Key::new("images/g/Pano.DCM", ".dcm").unwrap();
    assert_eq!(k.render("~t").unwrap(), "images/g/Pano~t.DCM");
    let k = Key::new("images/g/pano.jpg", "").unwrap();
    assert_eq!(k.render("~t").unwrap(), "images/g/pano~t.jpg");

    // Long names: truncated with a hash, deterministic, within limits.
    let long = "ä".repeat(300);
    let k = Key::new(&format!("images/g/{long}"), ".dcm").unwrap();
    let a = k.render("").unwrap();
    assert_eq!(a, k.render("").unwrap());
    let name = a.rsplit('/').next().unwrap();
    assert!(name.len() <= MAX_SEGMENT - 5 && name.ends_with(".dcm") && name.contains('~'), "{name}");
    let b = k.render("~12345678").unwrap();
    assert!(b.ends_with("~12345678.dcm") && b.len() <= MAX_KEY, "{b}");
    let other = Key::new(&format!("images/g/{long}x"), ".dcm").unwrap().render("").unwrap();
    assert_ne!(a, other);

    // Long folders.
    let dirs = format!("{}/", "d".repeat(250)).repeat(3);
    let k = Key::new(&format!("{dirs}{long}"), ".dcm").unwrap();
    let key = k.render("~12345678").unwrap();
    assert!(key.len() + 5 <= MAX_KEY, "{}", key.len());
    let k = Key::new(&format!("{}/x", "d".repeat(400)), ".dcm").unwrap();
    let key = k.render("").unwrap();
    assert!(key.split('/').all(|s| s.len() <= MAX_SEGMENT), "{key}");
    let too_deep = format!("{}/", "d".repeat(200)).repeat(6);
    assert!(Key::new(&format!("{too_deep}x"), ".dcm").unwrap().render("").is_err());
}

#[test]
fn percent() {
    assert_eq!(percent_encode("P_000017/0000_5.dcm"), "P_000017/0000_5.dcm");
    assert_eq!(percent_encode("a%b ü\n"), "a%25b %C3%BC%0A");
}

/// Body, content type, metadata.
type Object = (Vec<u8>, String, Vec<(String, String)>);

/// An in-memory object store.
#[derive(Default)]
struct Fake {
    objects: BTreeMap<String, Object>,
    files: BTreeMap<String, Vec<u8>>,
    puts: Vec<String>,
    /// Another instance creating this object just before our create.
    race: Option<(String, Object)>,
    /// A store that knows no checksums.
    no_checksums: bool,
    /// Requests, in order (`head KEY`, `create KEY`), for counting.
    requests: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Fake {
    fn info(&self, key: &str) -> Option<ObjectInfo> {
        self.objects.get(key).map(|(body, _, meta)| ObjectInfo {
            key: key.to_string(),
            size: body.len() as u64,
            sha256: (!self.no_checksums).then(|| hex(body)),
            metadata: meta.clone(),
        })
    }
}

impl Backend for Fake {
    fn head(&mut self, key: &str) -> Result<Option<ObjectInfo>, HostError> {
        self.requests.push(format!("head {key}"));
        Ok(self.info(key))
    }
    fn put_file(
        &mut self,
        key: &str,
        file: &FileRef,
        ct: &str,
        meta: &[(String, String)],
    ) -> Result<ObjectInfo, HostError> {
        let body = self.files.get(&file.path).cloned().ok_or_else(|| HostError::NotFound(file.path.clone()))?;
        self.puts.push(key.to_string());
        self.objects.insert(key.to_string(), (body, ct.to_string(), meta.to_vec()));
        Ok(self.info(key).unwrap())
    }
    fn create_file(
        &mut self,
        key: &str,
        file: &FileRef,
        ct: &str,
        meta: &[(String, String)],
    ) -> Result<Option<ObjectInfo>, HostError> {
        self.requests.push(format!("create {key}"));
        if let Some((k, object)) = self.race.take_if(|(k, _)| k == key) {
            self.objects.insert(k, object);
        }
        if self.objects.contains_key(key) {
            return Ok(None);
        }
        self.put_file(key, file, ct, meta).map(Some)
    }
    fn put_bytes(
        &mut self,
        key: &str,
        body: &[u8],
        ct: &str,
        meta: &[(String, String)],
    ) -> Result<ObjectInfo, HostError> {
        self.puts.push(key.to_string());
        self.objects.insert(key.to_string(), (body.to_vec(), ct.to_string(), meta.to_vec()));
        Ok(self.info(key).unwrap())
    }
    fn sha256(&mut self, file: &FileRef) -> Result<String, HostError> {
        self.files.get(&file.path).map(|b| hex(b)).ok_or_else(|| HostError::NotFound(file.path.clone()))
    }
}

fn item(id: &str, name: &str) -> Item {
    Item {
        id: id.to_string(),
        patient_keys: vec![],
        display_name: name.to_string(),
        file: FileRef { root: "pdata".into(), path: id.to_string() },
        size: 3,
        attributes: vec![("sidexis.image-id".into(), "5".into()), ("a".into(), "b".into())],
    }
}

/// Settings of `profile` from a `[config]` JSON.
fn settings_of(json: &str, profile: &Profile) -> Settings {
    Settings::configure(json, profile).unwrap()
}

fn fs_settings(json: &str) -> Settings {
    settings_of(json, &PROFILE)
}

fn run(fake: &mut Fake, config: &Settings, item: &Item) -> (String, Outcome) {
    let metadata = vec![("modality".to_string(), Value::Text("IO".into())), ("rows".to_string(), Value::Integer(2))];
    let s = store_item(config, fake, item, &metadata, "guid-1").unwrap();
    (s.location, s.outcome)
}

/// The inline sidecar of the object at `key`, decoded.
fn inline_sidecar(fake: &Fake, key: &str) -> Option<serde_json::Value> {
    let (_, _, meta) = &fake.objects[key];
    let v = &meta.iter().find(|(k, _)| k == SIDECAR_META)?.1;
    assert!(v.bytes().all(|b| (0x21..0x7f).contains(&b)), "header-safe: {v}");
    let mut bytes = Vec::new();
    let mut it = v.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let h: String = [it.next().unwrap() as char, it.next().unwrap() as char].into_iter().collect();
            bytes.push(u8::from_str_radix(&h, 16).unwrap());
        } else {
            bytes.push(b);
        }
    }
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn the_sidecar_goes_with_the_object() {
    let config = fs_settings("{}");
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    let mut a = item("P_1/0000_5.dcm", "Pano  Müller 100%");
    a.attributes.push(("note".into(), " leading and trailing ".into()));
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Stored);
    let key = "images/guid-1/Pano  Müller 100%.dcm";
    assert_eq!(fake.objects.keys().collect::<Vec<_>>(), [key], "one object, no {{key}}.json");
    let (_, ct, meta) = &fake.objects[key];
    assert_eq!(ct, "application/dicom");
    assert_eq!(meta[0], ("ferry-item-id".to_string(), "P_1/0000_5.dcm".to_string()));
    let doc = inline_sidecar(&fake, key).unwrap();
    assert_eq!(doc["itemId"], "P_1/0000_5.dcm");
    assert_eq!(doc["sourceName"], "Pano  Müller 100%", "spaces, non-ASCII and % survive");
    assert_eq!(doc["attributes"]["note"], " leading and trailing ");
    assert_eq!(doc["patientGuid"], "guid-1");
    assert_eq!(doc["metadata"]["rows"], 2);
    assert_eq!(doc["metadata"]["modality"], "IO");
    // the object's own facts are not repeated
    assert!(doc.get("key").is_none() && doc.get("sha256").is_none() && doc.get("size").is_none(), "{doc}");

    // unchanged: one look, nothing written, no sidecar object looked for
    fake.puts.clear();
    fake.requests.clear();
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Unchanged);
    assert!(fake.puts.is_empty());
    assert_eq!(fake.requests, [format!("create {key}"), format!("head {key}")]);

    // changed content: replaced, with its sidecar
    fake.files.insert("P_1/0000_5.dcm".into(), b"one, fixed".to_vec());
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Stored);
    assert_eq!(fake.objects[key].0, b"one, fixed");
    assert_eq!(inline_sidecar(&fake, key).unwrap()["itemId"], "P_1/0000_5.dcm");
    assert_eq!(fake.objects.len(), 1);
}

#[test]
fn a_sidecar_too_big_for_metadata_goes_next_to_the_object() {
    let config = fs_settings("{}");
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    let mut a = item("P_1/0000_5.dcm", "Pano");
    a.attributes.push(("comment".into(), "ä".repeat(400)));
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Stored);
    let meta = &fake.objects["images/guid-1/Pano.dcm"].2;
    assert!(meta.iter().all(|(k, _)| k != SIDECAR_META), "{meta:?}");
    let total: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(total <= MAX_METADATA_BYTES);
    let doc: serde_json::Value = serde_json::from_slice(&fake.objects["images/guid-1/Pano.dcm.json"].0).unwrap();
    assert_eq!(doc["attributes"]["comment"], "ä".repeat(400));
    assert_eq!(doc["sha256"], hex(b"one"));

    // unchanged: its sidecar object is looked up (and rewritten if lost)
    fake.objects.remove("images/guid-1/Pano.dcm.json");
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Unchanged);
    assert!(fake.objects.contains_key("images/guid-1/Pano.dcm.json"));
}

#[test]
fn an_object_stored_with_a_sidecar_object_keeps_it() {
    // stored by an older ferry (or with sidecar = "object"), then run with
    // the inline default: the object is unchanged, its sidecar object stays
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    let a = item("P_1/0000_5.dcm", "Pano");
    run(&mut fake, &fs_settings(r#"{"sidecar": true}"#), &a);
    let before = fake.objects["images/guid-1/Pano.dcm.json"].clone();
    fake.puts.clear();
    assert_eq!(run(&mut fake, &fs_settings("{}"), &a).1, Outcome::Unchanged);
    assert!(fake.puts.is_empty(), "{:?}", fake.puts);
    assert_eq!(fake.objects["images/guid-1/Pano.dcm.json"], before);
    assert!(inline_sidecar(&fake, "images/guid-1/Pano.dcm").is_none());
}

#[test]
fn store_is_idempotent_and_avoids_collisions() {
    let config = fs_settings(r#"{"sidecar": "object"}"#);
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    fake.files.insert("P_1/0000_6.dcm".into(), b"two".to_vec());
    let a = item("P_1/0000_5.dcm", "Pano");
    let b = item("P_1/0000_6.dcm", "Pano.dcm");

    assert_eq!(run(&mut fake, &config, &a), ("images/guid-1/Pano.dcm".into(), Outcome::Stored));
    let (_, ct, meta) = &fake.objects["images/guid-1/Pano.dcm"];
    assert_eq!(ct, "application/dicom");
    assert_eq!(meta, &[("ferry-item-id".to_string(), "P_1/0000_5.dcm".to_string())]);
    let sidecar = String::from_utf8(fake.objects["images/guid-1/Pano.dcm.json"].0.clone()).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&sidecar).unwrap();
    assert_eq!(doc["itemId"], "P_1/0000_5.dcm");
    assert_eq!(doc["key"], "images/guid-1/Pano.dcm");
    assert_eq!(doc["sha256"], hex(b"one"));
    assert_eq!(doc["size"], 3);
    assert_eq!(doc["sourceName"], "Pano");
    assert_eq!(doc["patientGuid"], "guid-1");
    assert_eq!(doc["metadata"]["rows"], 2);
    assert_eq!(doc["attributes"]["a"], "b");
    assert!(sidecar.find("\"attributes\"").unwrap() < sidecar.find("\"itemId\"").unwrap(), "sorted keys");

    // Same item, same content: nothing written.
    fake.puts.clear();
    assert_eq!(run(&mut fake, &config, &a), ("images/guid-1/Pano.dcm".into(), Outcome::Unchanged));
    assert!(fake.puts.is_empty());

    // Sidecar lost: rewritten, object left alone, same bytes as before.
    fake.objects.remove("images/guid-1/Pano.dcm.json");
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Unchanged);
    assert_eq!(fake.puts, ["images/guid-1/Pano.dcm.json"]);
    assert_eq!(fake.objects["images/guid-1/Pano.dcm.json"].0, sidecar.as_bytes());

    // Another item wanting the same key: goes next to it.
    fake.puts.clear();
    let alt = format!("images/guid-1/Pano~{}.dcm", &hex(b"P_1/0000_6.dcm")[..8]);
    assert_eq!(run(&mut fake, &config, &b), (alt.clone(), Outcome::Stored));
    assert_eq!(fake.objects["images/guid-1/Pano.dcm"].0, b"one");
    assert_eq!(run(&mut fake, &config, &b), (alt.clone(), Outcome::Unchanged));

    // Content of an item changed: overwritten in place.
    fake.files.insert("P_1/0000_6.dcm".into(), b"two, fixed".to_vec());
    assert_eq!(run(&mut fake, &config, &b), (alt.clone(), Outcome::Stored));
    assert_eq!(fake.objects[&alt].0, b"two, fixed");

    // A foreign object at both keys: refused, nothing touched.
    let c = item("P_1/0000_6.dcm", "Other");
    fake.objects.insert("images/guid-1/Other.dcm".into(), (b"x".to_vec(), String::new(), vec![]));
    let alt_c = format!("images/guid-1/Other~{}.dcm", &hex(b"P_1/0000_6.dcm")[..8]);
    fake.objects.insert(alt_c, (b"y".to_vec(), String::new(), vec![]));
    let e = store_item(&config, &mut fake, &c, &vec![], "guid-1").unwrap_err();
    assert!(e.message.contains("collision"), "{}", e.message);
}

#[test]
fn a_new_small_image_is_created_without_looking_first_and_a_big_one_looks() {
    let config = fs_settings("{}");
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    assert_eq!(run(&mut fake, &config, &item("P_1/0000_5.dcm", "Pano")).1, Outcome::Stored);
    // the image and its sidecar in one request
    assert_eq!(fake.requests, ["create images/guid-1/Pano.dcm"]);
    assert_eq!(fake.puts, ["images/guid-1/Pano.dcm"]);

    // again: the refused create looks, finds its own bytes
    fake.requests.clear();
    assert_eq!(run(&mut fake, &config, &item("P_1/0000_5.dcm", "Pano")).1, Outcome::Unchanged);
    assert_eq!(fake.requests, ["create images/guid-1/Pano.dcm", "head images/guid-1/Pano.dcm"]);

    // a CBCT: looked up before its bytes go anywhere
    let mut big = item("P_2/0000_7.dcm", "CBCT");
    big.size = CREATE_FIRST_MAX + 1;
    fake.files.insert("P_2/0000_7.dcm".into(), b"volume".to_vec());
    fake.requests.clear();
    assert_eq!(run(&mut fake, &config, &big).1, Outcome::Stored);
    assert_eq!(fake.requests, ["head images/guid-1/CBCT.dcm", "create images/guid-1/CBCT.dcm"]);
}

#[test]
fn losing_a_create_race_goes_next_to_the_winner() {
    let config = fs_settings("{}");
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    let winner = (
        b"two".to_vec(),
        "application/dicom".to_string(),
        vec![(ITEM_ID_META.to_string(), "P_1/0000_6.dcm".to_string())],
    );
    fake.race = Some(("images/guid-1/Pano.dcm".into(), winner));
    let (key, outcome) = run(&mut fake, &config, &item("P_1/0000_5.dcm", "Pano"));
    assert_eq!(key, format!("images/guid-1/Pano~{}.dcm", &hex(b"P_1/0000_5.dcm")[..8]));
    assert_eq!(outcome, Outcome::Stored);
    assert_eq!(fake.objects["images/guid-1/Pano.dcm"].0, b"two");
}

#[test]
fn other_templates() {
    let config = fs_settings(r#"{"key": "{modality}/{itemId}", "sidecar": false}"#);
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    let (key, _) = run(&mut fake, &config, &item("P_1/0000_5.dcm", ".."));
    assert_eq!(key, "IO/P_1_0000_5.dcm");
    assert_eq!(fake.objects.len(), 1);

    let config = fs_settings(r#"{"key": "x/{modality}/{imageName}", "sidecar": true}"#);
    let s = store_item(&config, &mut fake, &item("P_1/0000_5.dcm", "../../etc"), &vec![], "g").unwrap();
    assert_eq!(s.location, format!("x/unknown/___etc~{}.dcm", &hex(b"../../etc")[..8]));
    assert!(fake.objects.contains_key(&format!("{}.json", s.location)));

    let config = fs_settings(r#"{"key": "y/{itemId}", "sidecar": "off"}"#);
    let s = store_item(&config, &mut fake, &item("P_1/0000_5.dcm", "Pano"), &vec![], "g").unwrap();
    assert_eq!(fake.objects[&s.location].2.len(), 1, "only the item id");
    assert!(!fake.objects.contains_key(&format!("{}.json", s.location)));
}

#[test]
fn config_errors() {
    let c = fs_settings("{}");
    assert!(c.sidecar == Sidecar::Inline && c.clinic_id.is_none() && c.max_key == MAX_KEY);
    assert!(c.template.uses(Placeholder::PatientGuid) && c.template.uses(Placeholder::ImageName));
    for (json, want) in [
        (r#"{"sidecar": true}"#, Sidecar::Object),
        (r#"{"sidecar": false}"#, Sidecar::Off),
        (r#"{"sidecar": "object"}"#, Sidecar::Object),
        (r#"{"sidecar": "inline"}"#, Sidecar::Inline),
        (r#"{"sidecar": "off"}"#, Sidecar::Off),
    ] {
        assert_eq!(fs_settings(json).sidecar, want, "{json}");
    }
    for bad in [r#"{"sidecar": "yes"}"#, r#"{"sidecar": 1}"#] {
        let e = Settings::configure(bad, &PROFILE).unwrap_err();
        assert!(e.message.contains("sidecar") && e.message.contains("\"inline\""), "{bad}: {}", e.message);
    }
    let e = Settings::configure(r#"{"sidecars": false}"#, &PROFILE).unwrap_err();
    assert!(e.message.contains("sidecars"), "{}", e.message);
    let e = Settings::configure(r#"{"key": "images/{patientGuid}/{imageNme}"}"#, &PROFILE).unwrap_err();
    assert!(e.message.contains("{imageNme}") && e.message.contains("{clinicId}"), "{}", e.message);
    let e = Settings::configure(r#"{"max_key_bytes": 20}"#, &PROFILE).unwrap_err();
    assert!(e.message.contains("max_key_bytes"), "{}", e.message);
    let e = Settings::configure(r#"{"max_key_bytes": 2000}"#, &PROFILE).unwrap_err();
    assert!(e.message.contains("max_key_bytes"), "{}", e.message);
}

#[test]
fn clinic_id() {
    // Required when the template uses it, sanitised like other values.
    let e = Settings::configure(r#"{"key": "{clinicId}/{patientGuid}/{imageName}"}"#, &PROFILE).unwrap_err();
    assert!(e.message.contains("clinic_id"), "{}", e.message);
    let e = Settings::configure(r#"{"key": "{clinicId}/{patientGuid}/{imageName}", "clinic_id": " "}"#, &PROFILE)
        .unwrap_err();
    assert!(e.message.contains("clinic_id"), "{}", e.message);
    // Not enough on its own: every item would share a key.
    assert!(Settings::configure(r#"{"key": "c/{clinicId}", "clinic_id": "c"}"#, &PROFILE).is_err());

    {
        let profile = PROFILE;
        let config =
            settings_of(r#"{"key": "{clinicId}/{patientGuid}/{imageName}", "clinic_id": "Praxis/Süd: 1"}"#, &profile);
        assert_eq!(config.clinic_id.as_deref(), Some("Praxis_Süd_ 1"));
        let mut fake = Fake::default();
        fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
        let (key, _) = run(&mut fake, &config, &item("P_1/0000_5.dcm", "Pano"));
        assert_eq!(key, "Praxis_Süd_ 1/guid-1/Pano.dcm");
        assert_eq!(inline_sidecar(&fake, &key).unwrap()["clinicId"], "Praxis_Süd_ 1");
    }

    // Without a clinic id the sidecar has no such field.
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    run(&mut fake, &fs_settings("{}"), &item("P_1/0000_5.dcm", "Pano"));
    assert!(inline_sidecar(&fake, "images/guid-1/Pano.dcm").unwrap().get("clinicId").is_none());

    // Set but unused by the template: only in the sidecar.
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    run(&mut fake, &fs_settings(r#"{"clinic_id": "c-7", "sidecar": "object"}"#), &item("P_1/0000_5.dcm", "Pano"));
    let doc: serde_json::Value = serde_json::from_slice(&fake.objects["images/guid-1/Pano.dcm.json"].0).unwrap();
    assert_eq!(doc["clinicId"], "c-7");
}

#[test]
fn key_limit() {
    let long = "n".repeat(400);
    let mut fake = Fake::default();
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    fake.files.insert("P_1/0000_6.dcm".into(), b"two".to_vec());
    let config = fs_settings(r#"{"max_key_bytes": 150, "sidecar": "object"}"#);
    let (a, _) = run(&mut fake, &config, &item("P_1/0000_5.dcm", &long));
    let (b, _) = run(&mut fake, &config, &item("P_1/0000_6.dcm", &long));
    assert_ne!(a, b);
    for k in [&a, &b] {
        assert!(k.len() + ".json".len() <= 150 && k.starts_with("images/guid-1/nnn") && k.ends_with(".dcm"), "{k}");
        assert!(fake.objects.contains_key(&format!("{k}.json")));
    }
    // The default: S3's 1024 bytes, file names within 255.
    let (c, _) = run(&mut fake, &fs_settings("{}"), &item("P_1/0000_5.dcm", &"m".repeat(2000)));
    assert!(c.len() <= MAX_KEY && c.rsplit('/').next().unwrap().len() <= MAX_SEGMENT - 5, "{}", c.len());
    // A folder part that leaves no room.
    let config = fs_settings(
        r#"{"key": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/{patientGuid}/{imageName}", "max_key_bytes": 64}"#,
    );
    let e = store_item(&config, &mut fake, &item("P_1/0000_5.dcm", "Pano"), &vec![], "guid-1").unwrap_err();
    assert!(e.message.contains("too long"), "{}", e.message);
}

#[test]
fn without_store_checksums_an_own_object_is_rewritten() {
    let config = fs_settings(r#"{"sidecar": "object"}"#);
    let mut fake = Fake { no_checksums: true, ..Fake::default() };
    fake.files.insert("P_1/0000_5.dcm".into(), b"one".to_vec());
    let a = item("P_1/0000_5.dcm", "Pano");
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Stored);
    // The sidecar still gets the file's checksum.
    let doc: serde_json::Value = serde_json::from_slice(&fake.objects["images/guid-1/Pano.dcm.json"].0).unwrap();
    assert_eq!(doc["sha256"], hex(b"one"));
    assert_eq!(run(&mut fake, &config, &a).1, Outcome::Stored);
    // An ownerless object is never overwritten when its content is unknown.
    fake.objects.insert("images/guid-1/Other.dcm".into(), (b"one".to_vec(), String::new(), vec![]));
    let (key, _) = run(&mut fake, &config, &item("P_1/0000_5.dcm", "Other"));
    assert_ne!(key, "images/guid-1/Other.dcm");
}
