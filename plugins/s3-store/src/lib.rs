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
//! Every key segment is a plain file name on Windows and Unix disks (no
//! `..`, no leading dot, no trailing dot or space, no control characters,
//! none of `/\<>:"|?*`, no device names such as `CON` or `COM1`, at most
//! 255 bytes), so a bucket or folder can be copied anywhere with ordinary
//! tools; names that were already such keep the keys they always had.
//!
//! The logic (idempotence, collisions, boring keys, sidecar) is shared
//! with `fs-store` in `ferry-store-common`.
ferry_store_common::export_store!(S3Store, ferry_store_common::S3_PROFILE, wit = "../../wit");
