//! ferry store: puts each item into the object store the host grants
//! under a key built from a template, with a JSON sidecar describing it.
//!
//! Which store that is, is the pipeline's business, never the plugin's:
//! the stage's grant decides the backend, and this plugin stores the same
//! way into either.
//!
//! - `grants.object_store = { kind = "fs", path = "/srv/ferry/store" }`: a
//!   local folder (or a mounted share). ferry never creates its root.
//! - `grants.object_store = { kind = "s3", bucket = "...", region = "..." }`:
//!   an S3 bucket (endpoint, credentials: the host's business). `.dcm`
//!   objects get `Content-Type: application/dicom`, sidecar objects
//!   `application/json`. Every object carries `ferry-item-id` user metadata
//!   (`x-amz-meta-ferry-item-id`); the host adds `ferry-sha256`, which tells
//!   `unchanged` items from changed ones without downloading anything.
//!
//! `[config]` (all optional):
//!
//! | key | default |
//! |---|---|
//! | `key` | `images/{patientGuid}/{imageName}` (placeholders `{patientGuid}`, `{imageName}`, `{itemId}`, `{modality}`, `{clinicId}`) |
//! | `sidecar` | `"inline"`: the JSON describing the item goes with the object as its `ferry-sidecar` metadata (`x-amz-meta-ferry-sidecar`, percent-encoded compact JSON; one request per new image), or as a `{key}.json` object when it is over the 1,900 bytes an object's metadata may hold. `"object"`: always `{key}.json` (for tools that read files). `"off"`: none. `true`/`false` mean `"object"`/`"off"`. |
//! | `clinic_id` | none; required if `key` uses `{clinicId}` |
//! | `max_key_bytes` | 1024 (S3's limit); lower it for S3-compatible stores with shorter keys |
//!
//! Every key segment is a plain file name on Windows and Unix disks (no
//! `..`, no leading dot, no trailing dot or space, no control characters,
//! none of `/\<>:"|?*`, no device names such as `CON` or `COM1`, at most
//! 255 bytes), so a bucket or folder can be copied anywhere with ordinary
//! tools; names that were already such keep the keys they always had.
//!
//! The logic (idempotence, collisions, boring keys, sidecar) is in
//! `ferry-store-common`, tested there without a host.
use ferry_plugin_sdk::types::{Item, Metadata, StageError};
use ferry_plugin_sdk::{Store, StoreOutcome, Stored};
use ferry_store_common::{store_item, Config, HostBackend, Outcome, Settings, PROFILE};

/// The configured stage.
struct ObjectStore(Settings);

impl Store for ObjectStore {
    type Config = Config;

    fn new(config: Config) -> Result<Self, StageError> {
        Settings::new(config, &PROFILE).map(ObjectStore)
    }

    fn store(&mut self, item: Item, metadata: Metadata, patient_guid: String) -> Result<Stored, StageError> {
        let placed = store_item(&self.0, &mut HostBackend, &item, &metadata, &patient_guid)?;
        let outcome = match placed.outcome {
            Outcome::Stored => StoreOutcome::Stored,
            Outcome::Unchanged => StoreOutcome::Unchanged,
        };
        Ok(Stored { location: placed.location, outcome })
    }
}

ferry_plugin_sdk::store_plugin!(ObjectStore);
