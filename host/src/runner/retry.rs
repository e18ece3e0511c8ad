//! Retries of a plugin call within one pass: a retryable error (the
//! plugin or a host capability said `unavailable`) is tried again after a
//! doubling, jittered wait ([`crate::retry`]), until the stage's `retries`
//! run out or the pass is cancelled. What still fails is parked by the
//! ledger for a later pass.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;
use crate::stage::CallError;

/// From 200 ms, doubling, at most 12.8 s (before the jitter).
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_millis(12_800));

/// Calls `f` again on retryable errors, with exponential backoff.
pub(super) async fn with_retries<T, F, Fut>(retries: u32, cancel: &CancellationToken, mut f: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.retryable() && attempt < retries && !cancel.is_cancelled() => {
                let backoff = BACKOFF.jittered(attempt + 1);
                tracing::debug!("retrying in {backoff:?}: {e}");
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}
