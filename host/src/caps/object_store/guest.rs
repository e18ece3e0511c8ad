//! The `object-store` interface as guests see it: every call checked
//! (grant, key, metadata, size) and bounded by the call's deadline, then
//! handed to the stage's backend.

use std::sync::Arc;

use super::{check_key, check_metadata, Metadata, ObjectStore, MAX_PUT_BYTES};
use crate::bindings::object_store::{Fetched, Host, Listing, ObjectInfo};
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
        let pace = self.pace();
        self.bounded("an object-store upload", async move {
            Ok(wit_info(store.put_file(&key, &path, &content_type, metadata, &pace).await?))
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
        let pace = self.pace();
        self.bounded("an object-store upload", async move {
            Ok(store.put_file_new(&key, &path, &content_type, metadata, &pace).await?.map(wit_info))
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

    async fn get_to_spool(&mut self, key: String) -> Result<Option<Fetched>, HostError> {
        let store = self.store()?;
        check_key(&key).map_err(HostError::from)?;
        let spool = self
            .ctx
            .caps
            .object_store
            .as_ref()
            .and_then(|s| s.spool.clone())
            .ok_or_else(|| HostError::Denied(format!("{} has no spool to copy objects to", self.ctx.who())))?;
        let got = self
            .bounded("an object-store download", async move {
                let Some((info, _, body)) = store.get(&key, None).await? else { return Ok(None) };
                let written = spool.write(body, &format!("the object store ({key})")).await?;
                Ok(Some((info, written)))
            })
            .await?;
        let Some((info, written)) = got else { return Ok(None) };
        self.spooled.insert(written.name.clone());
        let mut info = wit_info(info);
        info.size = written.size;
        info.sha256 = Some(written.sha256);
        Ok(Some(Fetched { file: FileRef { root: crate::caps::http::spool::ROOT.into(), path: written.name }, info }))
    }

    async fn get_bytes(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        use futures_util::StreamExt as _;
        let store = self.store()?;
        check_key(&key).map_err(HostError::from)?;
        self.bounded("an object-store download", async move {
            let Some((_, total, mut body)) = store.get(&key, None).await? else { return Ok(None) };
            let too_large = || {
                HostError::Invalid(format!(
                    "`{key}` is larger than {MAX_PUT_BYTES} bytes, get-bytes' limit (use get-to-spool for files)"
                ))
            };
            if total > MAX_PUT_BYTES as u64 {
                return Err(too_large());
            }
            let mut out = Vec::with_capacity(total as usize);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| HostError::Unavailable(format!("reading `{key}`: {e}")))?;
                // the declared size is the store's word; the bytes are counted too
                if out.len() + chunk.len() > MAX_PUT_BYTES {
                    return Err(too_large());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Some(out))
        })
        .await
    }
}

fn wit_info(i: super::ObjectInfo) -> ObjectInfo {
    ObjectInfo { key: i.key, size: i.size, sha256: i.sha256, metadata: i.metadata }
}
