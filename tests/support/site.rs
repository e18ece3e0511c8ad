//! The synthetic Sidexis site: a `PDATA` share, a `sidexis.db` and a
//! `card-map.csv`, written from a declarative [`SiteBuilder`].
//!
//! Why a builder: each test states exactly the situation it exercises (a
//! patient with two cards, an image without a mediabase row, a stray file)
//! and gets back a [`Site`] that knows every path, every expected SHA-256
//! and what the stock pipeline should do with each image ([`Fate`]).
//!
//! Output is deterministic: the same builder writes byte-identical files
//! (no clocks, no randomness, no hash-map ordering), so runs can be
//! compared and stored objects checked against [`SiteImage::sha256`].
//!
//! Layout written by [`SiteBuilder::build`] into `dir`:
//!
//! ```text
//! dir/.ferry-demo-site            marker: "this directory was generated"
//! dir/PDATA/P_0000{id}/0000_{imageId}.dcm
//! dir/PDATA/<odd folders, stray files>
//! dir/sidexis.db                  tables `patient` and `mediabase`
//! dir/card-map.csv                `cardId,patientGuid`
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::dicom::{self, DicomFacts};

/// Name of the marker file [`SiteBuilder::build`] writes at the top of a
/// site. Tools that wipe a site first (the `demo-site` binary) refuse to
/// delete a directory that lacks it.
pub const MARKER_FILE: &str = ".ferry-demo-site";

/// The Sidexis folder name of a patient: `P_0000` then the id, verbatim
/// (`17` → `P_000017`).
pub fn patient_folder(sidexis_id: u32) -> String {
    format!("P_0000{sidexis_id}")
}

/// The Sidexis file name of an image: `0000_` then the id (`101` →
/// `0000_101.dcm`).
pub fn image_file_name(image_id: u32) -> String {
    format!("0000_{image_id}.dcm")
}

/// A lowercase 8-4-4-4-12 hex guid derived from `seed` (SHA-256, shaped
/// like a version-4 UUID), for practice-system patient guids.
pub fn guid(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// One patient as Sidexis' `patient` table knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientSpec {
    pub sidexis_id: u32,
    /// One `patient` row per entry. Empty: a single row with `CardId`
    /// NULL. An entry `""` writes a row with an empty-string `CardId`.
    pub card_ids: Vec<String>,
    pub last_name: String,
    pub first_name: String,
    /// `YYYYMMDD` (DICOM DA). The database gets `YYYY-MM-DD`.
    pub birth_date: String,
    /// `F`, `M` or `O`.
    pub sex: String,
}

impl PatientSpec {
    /// A patient with one card id, born 1970-01-01, sex `O`; adjust with
    /// the chained setters.
    pub fn new(sidexis_id: u32, card_id: &str, last_name: &str, first_name: &str) -> Self {
        PatientSpec {
            sidexis_id,
            card_ids: vec![card_id.to_string()],
            last_name: last_name.to_string(),
            first_name: first_name.to_string(),
            birth_date: "19700101".to_string(),
            sex: "O".to_string(),
        }
    }

    /// Replaces the card ids (`&[]` → one row with `CardId` NULL).
    pub fn cards(mut self, card_ids: &[&str]) -> Self {
        self.card_ids = card_ids.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Birth date (`YYYYMMDD`) and sex (`F`/`M`/`O`).
    pub fn born(mut self, birth_date: &str, sex: &str) -> Self {
        self.birth_date = birth_date.to_string();
        self.sex = sex.to_string();
        self
    }

    /// The card ids the Sidexis source should emit as `card-id` keys
    /// (non-empty ones, first occurrence order, no duplicates).
    pub fn usable_card_ids(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.card_ids.iter().map(|c| c.as_str()).filter(|c| !c.trim().is_empty() && seen.insert(*c)).collect()
    }
}

/// What kind of file an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// Digital Intra-Oral X-Ray, For Presentation (modality `IO`).
    IntraOral,
    /// Digital X-Ray, For Presentation (modality `PX`).
    Panoramic,
    /// Starts like DICOM (preamble, `DICM`, meta group, a few elements),
    /// then an element runs past the end of the file.
    Corrupt,
    /// Plain text in a `.dcm` file.
    NotDicom,
}

/// One image: a file `P_0000{sidexis_id}/0000_{image_id}.dcm` and,
/// usually, a `mediabase` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub sidexis_id: u32,
    /// Unique across the site (it is `mediabase`'s primary key).
    pub image_id: u32,
    /// Sidexis' `ImageName`: what the user typed; may be anything.
    pub image_name: String,
    pub kind: ImageKind,
    /// `false`: the file exists but `mediabase` has no row for it.
    pub with_mediabase_row: bool,
    /// `(rows, columns)`; `None`: 64×48 intra-oral, 128×64 panoramic.
    /// 16 bits per pixel, so 1024×1280 makes a realistic 2.6 MB file.
    pub pixels: Option<(u16, u16)>,
}

impl ImageSpec {
    /// An image with a mediabase row and default (small) pixel size.
    pub fn new(sidexis_id: u32, image_id: u32, image_name: &str, kind: ImageKind) -> Self {
        ImageSpec {
            sidexis_id,
            image_id,
            image_name: image_name.to_string(),
            kind,
            with_mediabase_row: true,
            pixels: None,
        }
    }

    /// Leaves the image out of the `mediabase` table.
    pub fn without_mediabase_row(mut self) -> Self {
        self.with_mediabase_row = false;
        self
    }

    /// Overrides the pixel matrix size.
    pub fn pixels(mut self, rows: u16, columns: u16) -> Self {
        self.pixels = Some((rows, columns));
        self
    }
}

/// Declares a site; [`SiteBuilder::build`] writes it.
#[derive(Debug, Clone, Default)]
pub struct SiteBuilder {
    patients: Vec<PatientSpec>,
    images: Vec<ImageSpec>,
    stray_files: Vec<(String, Vec<u8>)>,
    odd_folders: Vec<String>,
    card_map: Vec<(String, String)>,
}

impl SiteBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds rows to the `patient` table. Images need no patient: an image
    /// of an unknown patient makes a folder without database rows.
    pub fn patient(mut self, patient: PatientSpec) -> Self {
        self.patients.push(patient);
        self
    }

    /// Adds an image file (and its `mediabase` row unless disabled).
    pub fn image(mut self, image: ImageSpec) -> Self {
        self.images.push(image);
        self
    }

    /// Adds a file that is not `0000_{id}.dcm`, at `rel_path` under
    /// `PDATA` (`/`-separated, e.g. `P_000017/notes.txt` or `Thumbs.db`).
    pub fn stray_file(mut self, rel_path: &str, content: &[u8]) -> Self {
        self.stray_files.push((rel_path.to_string(), content.to_vec()));
        self
    }

    /// Adds an (empty) top-level folder under `PDATA` that is not a
    /// patient folder (e.g. `Backup`).
    pub fn odd_folder(mut self, name: &str) -> Self {
        self.odd_folders.push(name.to_string());
        self
    }

    /// Adds a `card-map.csv` row. The same card may be mapped twice (to
    /// make the resolver see an ambiguous card).
    pub fn map_card(mut self, card_id: &str, patient_guid: &str) -> Self {
        self.card_map.push((card_id.to_string(), patient_guid.to_string()));
        self
    }

    pub fn patients(&self) -> &[PatientSpec] {
        &self.patients
    }

    pub fn images(&self) -> &[ImageSpec] {
        &self.images
    }

    /// Writes the site into `dir`, which must be missing or empty. Files
    /// get a modification time an hour in the past, as on a real share
    /// where images were taken before ferry looks (`[source] min_age`
    /// defers younger files).
    pub fn build(&self, dir: &Path) -> Result<Site> {
        self.validate()?;
        if dir.exists() {
            let mut entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            ensure!(
                entries.next().is_none(),
                "{} is not empty; a site is built into an empty directory",
                dir.display()
            );
        }
        let pdata = dir.join("PDATA");
        fs::create_dir_all(&pdata).with_context(|| format!("creating {}", pdata.display()))?;
        fs::write(dir.join(MARKER_FILE), "Generated by ferry-tests (synthetic Sidexis site). Safe to delete.\n")?;

        let patients: BTreeMap<u32, &PatientSpec> = self.patients.iter().map(|p| (p.sidexis_id, p)).collect();
        let mut images = Vec::with_capacity(self.images.len());
        for spec in &self.images {
            let folder = patient_folder(spec.sidexis_id);
            let rel_path = format!("{folder}/{}", image_file_name(spec.image_id));
            let (bytes, dicom) = dicom::encode(patients.get(&spec.sidexis_id).copied(), spec)
                .with_context(|| format!("encoding image {}", spec.image_id))?;
            let path = pdata.join(&folder).join(image_file_name(spec.image_id));
            fs::create_dir_all(pdata.join(&folder))?;
            fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            settle(&path)?;
            images.push(SiteImage {
                spec: spec.clone(),
                rel_path,
                path,
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
                dicom,
            });
        }
        for name in &self.odd_folders {
            fs::create_dir_all(pdata.join(name))?;
        }
        for (rel, content) in &self.stray_files {
            let path = pdata.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            settle(&path)?;
        }

        let db = dir.join("sidexis.db");
        write_db(&db, &self.patients, &self.images)?;
        let csv = dir.join("card-map.csv");
        fs::write(&csv, card_map_csv(&self.card_map)).with_context(|| format!("writing {}", csv.display()))?;

        Ok(Site {
            root: dir.to_path_buf(),
            pdata,
            db,
            csv,
            patients: self.patients.clone(),
            images,
            card_map: self.card_map.clone(),
            stray_files: self.stray_files.iter().map(|(p, _)| p.clone()).collect(),
            odd_folders: self.odd_folders.clone(),
        })
    }

    fn validate(&self) -> Result<()> {
        let mut ids = BTreeSet::new();
        for p in &self.patients {
            ensure!(ids.insert(p.sidexis_id), "patient {} declared twice", p.sidexis_id);
            ensure!(
                p.birth_date.is_empty()
                    || (p.birth_date.len() == 8 && p.birth_date.bytes().all(|b| b.is_ascii_digit())),
                "patient {}: birth date must be YYYYMMDD",
                p.sidexis_id
            );
        }
        let mut files = BTreeSet::new();
        let mut image_ids = BTreeSet::new();
        for i in &self.images {
            ensure!(image_ids.insert(i.image_id), "image id {} declared twice", i.image_id);
            files.insert(format!("{}/{}", patient_folder(i.sidexis_id), image_file_name(i.image_id)));
        }
        for name in &self.odd_folders {
            ensure!(is_plain_relative(name) && !name.contains('/'), "odd folder {name:?} must be a single folder name");
            ensure!(files.insert(name.clone()), "odd folder {name:?} declared twice");
        }
        for (rel, _) in &self.stray_files {
            ensure!(is_plain_relative(rel), "stray file {rel:?} must be a relative path without `..`");
            if files.contains(rel) || files.iter().any(|f| f.starts_with(&format!("{rel}/"))) {
                bail!("stray file {rel:?} collides with an image, folder or another stray file");
            }
            files.insert(rel.clone());
        }
        Ok(())
    }
}

fn is_plain_relative(p: &str) -> bool {
    !p.is_empty() && !p.contains('\\') && Path::new(p).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Writes Sidexis' two tables, rows in declaration order.
fn write_db(path: &Path, patients: &[PatientSpec], images: &[ImageSpec]) -> Result<()> {
    let mut conn = rusqlite::Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    conn.execute_batch(
        "CREATE TABLE patient (
             SidexisPatientId INTEGER NOT NULL,
             CardId TEXT,
             LastName TEXT,
             FirstName TEXT,
             BirthDate TEXT
         );
         CREATE TABLE mediabase (
             ImageId INTEGER PRIMARY KEY,
             ImageName TEXT NOT NULL,
             SidexisPatientId INTEGER
         );",
    )?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO patient (SidexisPatientId, CardId, LastName, FirstName, BirthDate) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for p in patients {
            let birth = match p.birth_date.len() {
                8 => Some(format!("{}-{}-{}", &p.birth_date[0..4], &p.birth_date[4..6], &p.birth_date[6..8])),
                _ => None,
            };
            let cards: Vec<Option<&str>> =
                if p.card_ids.is_empty() { vec![None] } else { p.card_ids.iter().map(|c| Some(c.as_str())).collect() };
            for card in cards {
                insert.execute(rusqlite::params![p.sidexis_id, card, p.last_name, p.first_name, birth])?;
            }
        }
        let mut insert =
            tx.prepare("INSERT INTO mediabase (ImageId, ImageName, SidexisPatientId) VALUES (?1, ?2, ?3)")?;
        for i in images.iter().filter(|i| i.with_mediabase_row) {
            insert.execute(rusqlite::params![i.image_id, i.image_name, i.sidexis_id])?;
        }
    }
    tx.commit()?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// `cardId,patientGuid` rows, RFC 4180 quoting, `\n` line ends.
fn card_map_csv(rows: &[(String, String)]) -> String {
    let mut out = String::from("cardId,patientGuid\n");
    for (card, guid) in rows {
        out.push_str(&csv_field(card));
        out.push(',');
        out.push_str(&csv_field(guid));
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) || s.trim() != s {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A site on disk, and what was put into it.
#[derive(Debug, Clone)]
pub struct Site {
    /// The directory passed to [`SiteBuilder::build`].
    pub root: PathBuf,
    /// `root/PDATA`: grant it to the source as its `pdata` root.
    pub pdata: PathBuf,
    /// `root/sidexis.db` (SQLite).
    pub db: PathBuf,
    /// `root/card-map.csv`.
    pub csv: PathBuf,
    pub patients: Vec<PatientSpec>,
    /// In declaration order.
    pub images: Vec<SiteImage>,
    pub card_map: Vec<(String, String)>,
    /// Paths relative to `pdata`.
    pub stray_files: Vec<String>,
    pub odd_folders: Vec<String>,
}

/// One image file as written.
#[derive(Debug, Clone)]
pub struct SiteImage {
    pub spec: ImageSpec,
    /// Relative to `Site::pdata`, `/`-separated: `P_000017/0000_101.dcm`.
    pub rel_path: String,
    /// Absolute path.
    pub path: PathBuf,
    pub size: u64,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Header values, for intra-oral and panoramic images.
    pub dicom: Option<DicomFacts>,
}

/// What the stock pipeline (sidexis → dicom-meta → csv-resolver →
/// store) is expected to do with one image file. These are this
/// crate's reading of the plugin contract in `wit/ferry.wit`:
///
/// 1. The source decides per patient first: a patient without a
///    non-empty `CardId` is skipped (`skip` notice per image file).
/// 2. Then per image: no `mediabase` row → `fail` notice; a folder whose
///    patient has no `patient` rows → `fail` notice.
/// 3. Everything else is emitted as an item (counted as *scanned*) with
///    keys `sidexis-id` and one `card-id` per usable card.
/// 4. The extractor runs before the resolver: corrupt / non-DICOM files
///    fail there.
/// 5. Resolution: every card key that resolves must agree on one guid.
///    No card resolves → unresolved; two guids, or a card mapped to two
///    guids in the CSV → quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Skipped,
    /// The source reports a failure notice; no item.
    SourceFailed(SourceFailure),
    /// Emitted, but the extractor fails.
    ExtractFailed,
    Unresolved,
    Quarantined {
        guids: Vec<String>,
    },
    Stored {
        guid: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFailure {
    NoMediabaseRow,
    NoPatientRows,
}

/// Expected counts of one first run over a site (see [`Fate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpectedCounts {
    /// Items emitted by the source.
    pub scanned: usize,
    /// Skip notices: images of patients without a card id, plus each
    /// stray entry and odd folder the source meets.
    pub skipped: usize,
    /// Source failure notices plus items that fail in a stage.
    pub failed: usize,
    pub unresolved: usize,
    pub quarantined: usize,
    pub stored: usize,
}

impl Site {
    /// The image with `image_id`; panics if there is none.
    pub fn image(&self, image_id: u32) -> &SiteImage {
        self.images
            .iter()
            .find(|i| i.spec.image_id == image_id)
            .unwrap_or_else(|| panic!("the site has no image {image_id}"))
    }

    pub fn patient(&self, sidexis_id: u32) -> Option<&PatientSpec> {
        self.patients.iter().find(|p| p.sidexis_id == sidexis_id)
    }

    /// Guids `card-map.csv` gives `card_id`, distinct, in file order.
    pub fn guids_for_card(&self, card_id: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (c, g) in &self.card_map {
            if c == card_id && !out.contains(&g.as_str()) {
                out.push(g);
            }
        }
        out
    }

    /// What the stock pipeline should do with this image (see [`Fate`]).
    pub fn fate(&self, image: &SiteImage) -> Fate {
        let spec = &image.spec;
        let Some(patient) = self.patient(spec.sidexis_id) else {
            return Fate::SourceFailed(SourceFailure::NoPatientRows);
        };
        let cards = patient.usable_card_ids();
        if cards.is_empty() {
            return Fate::Skipped;
        }
        if !spec.with_mediabase_row {
            return Fate::SourceFailed(SourceFailure::NoMediabaseRow);
        }
        if matches!(spec.kind, ImageKind::Corrupt | ImageKind::NotDicom) {
            return Fate::ExtractFailed;
        }
        let mut guids: Vec<String> = Vec::new();
        let mut ambiguous = false;
        for card in cards {
            let found = self.guids_for_card(card);
            ambiguous |= found.len() > 1;
            for g in found {
                if !guids.iter().any(|x| x == g) {
                    guids.push(g.to_string());
                }
            }
        }
        match guids.len() {
            0 => Fate::Unresolved,
            1 if !ambiguous => Fate::Stored { guid: guids.remove(0) },
            _ => Fate::Quarantined { guids },
        }
    }

    /// Entries other than image files that the source meets while walking
    /// `PDATA` and skips: odd top-level folders, stray top-level files,
    /// and stray entries directly inside patient folders (a stray file
    /// deeper down counts once, as its sub-folder). Stray files inside odd
    /// folders are never seen.
    pub fn skipped_entries(&self) -> BTreeSet<String> {
        let odd: BTreeSet<&str> = self.odd_folders.iter().map(String::as_str).collect();
        let mut out: BTreeSet<String> = self.odd_folders.iter().cloned().collect();
        for rel in &self.stray_files {
            let parts: Vec<&str> = rel.split('/').collect();
            if odd.contains(parts[0]) {
                continue;
            }
            if parts.len() >= 2 && is_patient_folder(parts[0]) {
                out.insert(format!("{}/{}", parts[0], parts[1]));
            } else {
                out.insert(parts[0].to_string());
            }
        }
        out
    }

    /// Expected counts for a first run with the stock plugins.
    pub fn expected(&self) -> ExpectedCounts {
        let mut c = ExpectedCounts { skipped: self.skipped_entries().len(), ..Default::default() };
        for image in &self.images {
            match self.fate(image) {
                Fate::Skipped => c.skipped += 1,
                Fate::SourceFailed(_) => c.failed += 1,
                Fate::ExtractFailed => {
                    c.scanned += 1;
                    c.failed += 1;
                }
                Fate::Unresolved => {
                    c.scanned += 1;
                    c.unresolved += 1;
                }
                Fate::Quarantined { .. } => {
                    c.scanned += 1;
                    c.quarantined += 1;
                }
                Fate::Stored { .. } => {
                    c.scanned += 1;
                    c.stored += 1;
                }
            }
        }
        c
    }

    /// Images expected to be stored for `guid`.
    pub fn stored_for(&self, guid: &str) -> Vec<&SiteImage> {
        self.images.iter().filter(|i| matches!(self.fate(i), Fate::Stored { guid: g } if g == guid)).collect()
    }
}

fn is_patient_folder(name: &str) -> bool {
    name.strip_prefix("P_").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// How far in the past [`settle`] puts a file's modification time.
pub const SETTLED_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Sets `path`'s modification time to [`SETTLED_AGE`] ago: a file the
/// imaging software finished writing a while back.
pub fn settle(path: &Path) -> Result<()> {
    let when = std::time::SystemTime::now() - SETTLED_AGE;
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(when))
        .with_context(|| format!("setting the modification time of {}", path.display()))
}

/// Writes `bytes` to `path` like a re-export that finished a little while
/// ago: new content, a modification time in the past but newer than
/// [`settle`]'s (so size+mtime fingerprints change).
pub fn write_settled(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(when))
        .with_context(|| format!("setting the modification time of {}", path.display()))
}
