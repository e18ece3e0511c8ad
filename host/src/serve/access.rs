//! The access log's writer: every API request that the authorization
//! layer decided for a patient (a record, its images, its sync log, a
//! sync) leaves one row — who, what, which patient, the status answered —
//! written after the response is known, so a refused or failed request
//! is logged as what it was.
//!
//! Why a task-local: the decision is made deep in a handler
//! ([`super::api`]'s `permit`), the status only exists once the handler has
//! returned. The middleware opens a slot for the request, `permit` notes
//! the decision in it ([`note`]), the middleware writes the row. No handler
//! has to remember to log.

use std::cell::RefCell;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::authz::{Action, Caller};
use super::AppState;
use crate::ledger::AccessEntry;

tokio::task_local! {
    static SLOT: RefCell<Option<AccessEntry>>;
}

/// Notes an authorization decision about `guid` for the access log (the
/// last one of a request wins; requests about no patient are not logged).
pub fn note(who: &Caller, action: Action, guid: Option<&str>) {
    let Some(guid) = guid else { return };
    let entry = AccessEntry {
        id: 0,
        at: 0,
        subject: who.subject().to_owned(),
        kind: who.kind.as_str().to_owned(),
        action: action.as_str().to_owned(),
        patient_guid: Some(guid.to_owned()),
        method: String::new(),
        path: String::new(),
        status: 0,
    };
    let _ = SLOT.try_with(|s| *s.borrow_mut() = Some(entry));
}

/// The middleware: a slot per request, the row once the answer is known.
pub async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let slot = RefCell::new(None);
    let (response, slot) = SLOT
        .scope(slot, async move {
            let r = next.run(req).await;
            (r, SLOT.with(|s| s.borrow_mut().take()))
        })
        .await;
    if let Some(mut e) = slot {
        e.method = method;
        e.path = path;
        e.status = response.status().as_u16();
        let ledger = state.ledger.clone();
        // off the async threads; an access log that cannot be written is
        // an error in the log, not a failed request
        let written = tokio::task::spawn_blocking(move || ledger.record_access(&e)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("cannot write the access log: {err}"),
            Err(err) => tracing::error!("cannot write the access log: {err}"),
        }
    }
    response
}
