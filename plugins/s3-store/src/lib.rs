//! ferry store for S3: puts each item into the bucket the host grants
//! (`grants.object_store = { kind = "s3", ... }`: bucket, endpoint and
//! credentials are the host's business, never the plugin's) under a key
//! built from a template, with an optional JSON sidecar.
//!
//! `[config]` (all optional):
//!
//! | key | default |
//! |---|---|
//! | `key` | `images/{patientGuid}/{imageName}` (placeholders `{patientGuid}`, `{imageName}`, `{itemId}`, `{modality}`, `{clinicId}`) |
//! | `sidecar` | `true` |
//! | `clinic_id` | none; required if `key` uses `{clinicId}` |
//! | `max_key_bytes` | 1024 (S3's limit); lower it for S3-compatible stores with shorter keys |
//!
//! `.dcm` objects get `Content-Type: application/dicom`, sidecars
//! `application/json`. Every object carries `ferry-item-id` user metadata
//! (`x-amz-meta-ferry-item-id`); the host adds `ferry-sha256`, which tells
//! `unchanged` items from changed ones without downloading anything.
//!
//! The logic (idempotence, collisions, sidecar) is shared with `fs-store`
//! in `ferry-store-common`.
use ferry_plugin_sdk::types::{Item, Metadata, StageError};
use ferry_plugin_sdk::Slot;
use ferry_store_common::{store_item, HostBackend, Outcome, Settings, S3_PROFILE};

use ferry_exports::store::{Guest, StoreOutcome, Stored};

static STATE: Slot<Settings> = Slot::new();

struct S3Store;

impl Guest for S3Store {
    fn configure(config: String) -> Result<(), StageError> {
        STATE.set(Settings::configure(&config, &S3_PROFILE)?);
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

ferry_plugin_sdk::store_plugin!(S3Store, wit = "../../wit");
