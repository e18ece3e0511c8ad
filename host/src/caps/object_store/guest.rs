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
        self.ctx.caps.object_store.as_ref().map(|s| s.store.clone()).ok_or_else(|| {
            self.ctx.denied("use an object store", "add `grants.object_store = { kind = \"fs\", path = \"...\" }`")
        })
    }
}

impl Host for StageState {
    async fn head(&mut self, key: String) -> Result<Option<ObjectInfo>, HostError> {
        let store = self.store()?;
        check_key(&key).map_err(HostError::from)?;
        self.bounded("an object-store head", async move { Ok(store.head(&key).await?.map(wit_info)) }).await
    }

    async fn put_file(
        &mut self,
        key: String,
        source: FileRef,
        content_type: String,
        metadata: Metadata,
    ) -> Result<ObjectInfo, HostError> {
        let store = self.store()?;
        check_key(&key).map_err(HostError::from)?;
        check_metadata(&metadata).map_err(HostError::from)?;
        let path = resolve(self, &source)?;
        self.bounded("an object-store upload", async move {
            Ok(wit_info(store.put_file(&key, &path, &content_type, metadata).await?))
        })
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
        check_key(&key).map_err(HostError::from)?;
        check_metadata(&metadata).map_err(HostError::from)?;
        let path = resolve(self, &source)?;
        self.bounded("an object-store upload", async move {
            Ok(store.put_file_new(&key, &path, &content_type, metadata).await?.map(wit_info))
        })
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
        check_key(&key).map_err(HostError::from)?;
        check_metadata(&metadata).map_err(HostError::from)?;
        if body.len() > MAX_PUT_BYTES {
            return Err(HostError::Invalid(format!(
                "put-bytes body is {} bytes; the limit is {MAX_PUT_BYTES} (use put-file for files)",
                body.len()
            )));
        }
        self.bounded("an object-store upload", async move {
            Ok(wit_info(store.put_bytes(&key, body, &content_type, metadata).await?))
        })
        .await
    }

    async fn list_objects(&mut self, prefix: String, cursor: Option<String>, limit: u32) -> Result<Listing, HostError> {
        let store = self.store()?;
        self.bounded("an object-store listing", async move {
            let l = store.list(&prefix, cursor, limit).await?;
            Ok(Listing { objects: l.objects.into_iter().map(wit_info).collect(), next_cursor: l.next_cursor })
        })
        .await
    }
}

fn wit_info(i: super::ObjectInfo) -> ObjectInfo {
    ObjectInfo { key: i.key, size: i.size, sha256: i.sha256, metadata: i.metadata }
}
