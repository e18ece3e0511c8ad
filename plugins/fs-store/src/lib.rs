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
//! Every key segment is a plain file name on Windows and Unix disks (no
//! `..`, no leading dot, no trailing dot or space, no control characters,
//! none of `/\<>:"|?*`, no device names such as `CON` or `COM1`, at most
//! 255 bytes), so a bucket or folder can be copied anywhere with ordinary
//! tools; names that were already such keep the keys they always had.
//!
//! The logic (idempotence, collisions, boring keys, sidecar) is shared
//! with `s3-store` in `ferry-store-common`.
ferry_store_common::export_store!(FsStore, ferry_store_common::FS_PROFILE, wit = "../../wit");
