//! The `object-store` interface as guests see it: every call checked
//! (grant, key, metadata, size) and bounded by the call's deadline, then
//! handed to the stage's backend.

use std::sync::Arc;

use super::{check_key, check_metadata, Metadata, ObjectStore, MAX_PUT_BYTES};
use crate::bindings::object_store::{Host, Listing, ObjectInfo};
use crate::bindings::types::{FileRef, HostError};
use crate::caps::fs::resolve;
use crate::caps::StageState;

impl StageState {
    fn store(&self) -> Result<Arc<dyn ObjectStore>, HostError> {
        self.ctx.object_store.clone().ok_or_else(|| {
            self.ctx.denied("use an object store", "add `grants.object_store = { kind = \"fs\", path = \"...\" }`")
        })
    }
}

impl Host for StageState {
    async fn head(&mut self, key: String) -> Result<Option<ObjectInfo>, HostError> {
        let store = self.store()?;
        check_key(&key)?;
        self.bounded("an object-store head", async move { store.head(&key).await }).await
    }

    async fn put_file(
        &mut self,
        key: String,
        source: FileRef,
        content_type: String,
        metadata: Metadata,
    ) -> Result<ObjectInfo, HostError> {
        let store = self.store()?;
        check_key(&key)?;
        check_metadata(&metadata)?;
        let path = resolve(self, &source)?;
        self.bounded(
            "an object-store upload",
            async move { store.put_file(&key, &path, &content_type, metadata).await },
        )
        .await
    }

    async fn put_file_new(
        &mut self,
        key: String,
        source: FileRef,
        content_type: String,
        metadata: Metadata,
    ) -> Result<Option<ObjectInfo>, HostError> {
        let store = self.store()?;
        check_key(&key)?;
        check_metadata(&metadata)?;
        let path = resolve(self, &source)?;
        self.bounded(
            "an object-store upload",
            async move { store.put_file_new(&key, &path, &content_type, metadata).await },
        )
        .await
    }

    async fn put_bytes(
        &mut self,
        key: String,
        body: Vec<u8>,
        content_type: String,
        metadata: Metadata,
    ) -> Result<ObjectInfo, HostError> {
        let store = self.store()?;
        check_key(&key)?;
        check_metadata(&metadata)?;
        if body.len() > MAX_PUT_BYTES {
            return Err(HostError::Invalid(format!(
                "put-bytes body is {} bytes; the limit is {MAX_PUT_BYTES} (use put-file for files)",
                body.len()
            )));
        }
        self.bounded(
            "an object-store upload",
            async move { store.put_bytes(&key, body, &content_type, metadata).await },
        )
        .await
    }

    async fn list_objects(&mut self, prefix: String, cursor: Option<String>, limit: u32) -> Result<Listing, HostError> {
        let store = self.store()?;
        self.bounded("an object-store listing", async move { store.list(&prefix, cursor, limit).await }).await
    }
}
