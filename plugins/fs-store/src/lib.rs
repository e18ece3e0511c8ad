//! ferry store: puts each item into the object store the host grants
//! (usually a local folder: `grants.object_store = { kind = "fs", ... }`)
//! under a key built from a template, with an optional JSON sidecar.
//!
//! `[config]` (all optional):
//!
//! | key | default |
//! |---|---|
//! | `key` | `images/{patientGuid}/{imageName}` (placeholders `{patientGuid}`, `{imageName}`, `{itemId}`, `{modality}`, `{clinicId}`) |
//! | `sidecar` | `true` |
//! | `clinic_id` | none; required if `key` uses `{clinicId}` |
//! | `max_key_bytes` | 1024 |
//!
//! The logic (idempotence, collisions, sidecar) is shared with `s3-store`
//! in `ferry-store-common`.
use ferry_plugin_sdk::types::{Item, Metadata, StageError};
use ferry_plugin_sdk::Slot;
use ferry_store_common::{store_item, HostBackend, Outcome, Settings, FS_PROFILE};

use ferry_exports::store::{Guest, StoreOutcome, Stored};

static STATE: Slot<Settings> = Slot::new();

struct FsStore;

impl Guest for FsStore {
    fn configure(config: String) -> Result<(), StageError> {
        STATE.set(Settings::configure(&config, &FS_PROFILE)?);
        Ok(())
    }

    fn store(item: Item, metadata: Metadata, patient_guid: String) -> Result<Stored, StageError> {
        let placed = STATE.with(|s| store_item(s, &mut HostBackend, &item, &metadata, &patient_guid))??;
        let outcome = match placed.outcome {
            Outcome::Stored => StoreOutcome::Stored,
            Outcome::Unchanged => StoreOutcome::Unchanged,
        };
        Ok(Stored { location: placed.location, outcome })
    }
}

ferry_plugin_sdk::store_plugin!(FsStore, wit = "../../wit");
