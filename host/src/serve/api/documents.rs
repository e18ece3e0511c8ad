//! A patient's documents and their shares: upload (multipart, checked on
//! disk, then to the store under `documents/{patientGuid}/{id}.{ext}`),
//! list, metadata, download (ranges), change, soft delete; shares with
//! other practitioners, with an expiry, revocable.
//!
//! Every document route decides with [`authz::decide_document`] on the
//! stored row (its patient, its source, the caller's shares), so the rule
//! "changed, deleted or shared only by its source" lives in one place.

use std::io::Write as _;

use axum::extract::Request;

use super::*;
use crate::ledger::{DocumentRow, ItemRecord, ShareRow};
use crate::serve::authz::DocumentScope;
use crate::serve::documents::{
    check_document_id, declared_agrees, extension, new_document_id, sniff, Document, DocumentFields, Share,
    ShareRequest, ACCEPTED,
};
use crate::serve::requests::{DocumentRequest, RequestError, SentRequest};

/// Where uploaded documents go: `documents/{patientGuid}/{id}.{ext}`.
pub const DOCUMENTS_PREFIX: &str = "documents/";
/// Bytes sniffed for the type.
const SNIFF: usize = 8 << 10;
/// Largest `metadata` part.
const MAX_METADATA: u64 = 64 << 10;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A document a pipeline moved for the patient (from their provider to a
/// platform): what the ledger knows, where it went.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncedDocument {
    /// The source's id of the document.
    pub item_id: String,
    /// `stored`, `unchanged`, `failed`, `quarantined`, …
    pub state: String,
    /// Where the platform keeps it (`DocumentReference/…`,
    /// `opendental:Document/…`, `http-store:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<String>,
    pub updated_at: String,
}

/// A page of a patient's documents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentPage {
    pub patient_guid: String,
    /// Uploaded here, newest first.
    pub documents: Vec<Document>,
    /// Moved by the pipeline (first page only; documents pipelines).
    pub synced: Vec<SyncedDocument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A document shared with the caller, with the share.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedDocument {
    pub share: Share,
    pub document: Document,
}

/// A page of shares.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedPage {
    pub shared: Vec<SharedDocument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn limit_of(q: &PageQuery) -> u32 {
    q.limit.unwrap_or(100).clamp(1, 1000)
}

fn sealer(state: &AppState) -> ApiResult<crate::serve::documents::DocumentSealer<'_>> {
    Ok(records(state)?.documents())
}

/// The document `id`, if the caller may do `action` to it: the access log
/// notes the decision against its patient; a document the caller may not
/// see is a 404, as one that does not exist.
async fn permit_document(state: &AppState, who: &Caller, action: Action, id: &str) -> ApiResult<DocumentRow> {
    check_document_id(id)?;
    let gone = || Problem::not_found(format!("no document {id}"));
    let ledger = state.ledger.clone();
    let (doc_id, sub, practitioner) = (id.to_owned(), who.subject().to_owned(), who.kind == Kind::Practitioner);
    let found = blocking(move || {
        let err = Problem::ledger;
        let Some(doc) = ledger.document(&doc_id).map_err(err)? else { return Ok(None) };
        let owner = ledger.patient(&doc.patient_guid).map_err(err)?.map(|p| p.owner_sub);
        let shared = practitioner
            && !ledger
                .active_shares(Some(&sub), None, Some(&doc_id), crate::ledger::now_ms(), None, 1)
                .map_err(err)?
                .is_empty();
        Ok(Some((doc, owner, shared)))
    })
    .await?;
    let Some((doc, owner, shared)) = found else {
        return Err(gone());
    };
    crate::serve::access::note(who, action, Some(&doc.patient_guid));
    let scope = DocumentScope {
        patient: authz::PatientScope { guid: &doc.patient_guid, owner: owner.as_deref() },
        source: &doc.uploaded_by,
        shared_with_caller: shared,
    };
    match authz::decide_document(who, action, scope) {
        Decision::Allow => Ok(doc),
        Decision::Forbidden(why) => Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", why)),
        Decision::Hidden => Err(gone()),
    }
}

/// Publishes a document's state to the store, next to its bytes:
/// `documents/{guid}/{id}.json`. This sidecar is what a pipeline's
/// `registry-documents` source reads (it has no access to this database),
/// so an upload reaches the platform sinks, a change of title or type
/// reaches them if it comes before the document was sent, and a deleted
/// document is not sent at all. It holds the title in the clear, beside the
/// document's own bytes; the database keeps it sealed.
async fn publish(state: &AppState, doc: &Document, object_key: &str, deleted: bool) -> ApiResult<()> {
    let sidecar = serde_json::json!({
        "ferry": "document",
        "version": 1,
        "id": doc.id,
        "patientGuid": doc.patient_guid,
        "key": object_key,
        "contentType": doc.content_type,
        "size": doc.size,
        "sha256": doc.sha256,
        "title": doc.title,
        "type": doc.kind,
        "date": doc.date,
        "deleted": deleted,
    });
    let key = format!("{DOCUMENTS_PREFIX}{}/{}.json", doc.patient_guid, doc.id);
    let body = serde_json::to_vec(&sidecar).expect("JSON serialises");
    state.store.put_bytes(&key, body, "application/json", Vec::new()).await.map_err(Problem::store)?;
    Ok(())
}

// ---------------------------------------------------------------- list, upload

/// A patient's documents: uploaded ones (newest first, paginated) and, for
/// a documents pipeline, the ones it moved.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/documents",
    tag = "documents",
    params(("patientGuid" = String, Path, description = "The patient guid"), PageQuery),
    responses(
        (status = 200, description = "A page of documents", body = DocumentPage),
        (status = 400, description = "Malformed guid or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not read documents", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patient (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list_documents(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<DocumentPage>> {
    allow(&state, &headers, Action::ReadDocuments, Some(&guid)).await?;
    let sealer = sealer(&state)?;
    let limit = limit_of(&q);
    if let Some(c) = &q.cursor {
        check_document_id(c)
            .map_err(|_| Problem::bad_request("invalid-cursor", "`cursor` is not one this API gave out"))?;
    }
    let ledger = state.ledger.clone();
    let (g, cursor, with_synced) = (guid.clone(), q.cursor.clone(), state.documents_pipeline && q.cursor.is_none());
    let (rows, items) = blocking(move || {
        let rows = ledger.documents_of(&g, cursor.as_deref(), limit + 1).map_err(Problem::ledger)?;
        let items: Vec<ItemRecord> =
            if with_synced { ledger.items_of(&g).map_err(Problem::ledger)? } else { Vec::new() };
        Ok((rows, items))
    })
    .await?;
    let more = rows.len() > limit as usize;
    let mut documents = Vec::new();
    for r in rows.into_iter().take(limit as usize) {
        documents.push(sealer.document(r)?);
    }
    let synced = items
        .into_iter()
        .map(|i| SyncedDocument {
            item_id: i.id,
            state: i.state.as_str().to_owned(),
            remote_id: i.location,
            updated_at: rfc3339(i.updated_at),
        })
        .collect();
    let next_cursor = if more { documents.last().map(|d| d.id.clone()) } else { None };
    Ok(Json(DocumentPage { patient_guid: guid, documents, synced, next_cursor }))
}

/// The upload form (`multipart/form-data`).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct UploadForm {
    /// Optional, first: title, description, type, date as JSON
    /// (`DocumentFields`).
    metadata: Option<String>,
    /// The file: PDF, JPEG, PNG, TIFF, GIF, DICOM or UTF-8 text, sniffed
    /// from its bytes (a part `Content-Type` that disagrees is refused).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// An upload's file, checked and on disk.
struct Received {
    file: tempfile::NamedTempFile,
    name: String,
    size: u64,
    sha256: String,
    content_type: &'static str,
}

fn too_large(max: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("the document is larger than {max} bytes, this service's limit ([serve.records] max_upload)"),
    )
}

fn multipart_problem(e: multer::Error, max: u64) -> Problem {
    use multer::Error as E;
    match e {
        E::FieldSizeExceeded { field_name, .. } if field_name.as_deref() == Some("metadata") => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the metadata part is larger than {MAX_METADATA} bytes"),
        ),
        E::FieldSizeExceeded { .. } | E::StreamSizeExceeded { .. } => too_large(max),
        E::UnknownField { field_name } => Problem::bad_request(
            "invalid-body",
            format!(
                "unexpected part {:?}: the form has `metadata` (optional, JSON) and `file`",
                field_name.unwrap_or_default()
            ),
        ),
        other => Problem::bad_request("invalid-body", format!("the multipart body cannot be read: {other}")),
    }
}

/// Reads the form: `metadata` (optional, before the file) and `file`,
/// streamed to a temporary file with its hash and the first bytes for
/// sniffing. Nothing reaches the store before every check passed.
async fn receive(state: &AppState, req: Request) -> ApiResult<(DocumentFields, Received)> {
    let max = state.max_upload;
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let boundary = multer::parse_boundary(ct).map_err(|_| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the document as multipart/form-data with a `file` part (and optionally a `metadata` JSON part first)",
        )
    })?;
    let limits = multer::Constraints::new().allowed_fields(vec!["metadata", "file"]).size_limit(
        multer::SizeLimit::new()
            .whole_stream(max + MAX_METADATA + (64 << 10))
            .for_field("metadata", MAX_METADATA)
            .for_field("file", max),
    );
    let mut form = multer::Multipart::with_constraints(req.into_body().into_data_stream(), boundary, limits);
    let mut fields = DocumentFields::default();
    let mut received: Option<Received> = None;
    while let Some(mut part) = form.next_field().await.map_err(|e| multipart_problem(e, max))? {
        let part_name = part.name().unwrap_or_default().to_owned();
        if received.is_some() {
            return Err(Problem::bad_request("invalid-body", "`file` is the last part: send `metadata` before it"));
        }
        if part_name == "metadata" {
            let bytes = part.bytes().await.map_err(|e| multipart_problem(e, max))?;
            fields = serde_json::from_slice(&bytes)
                .map_err(|e| Problem::bad_request("invalid-field", format!("the metadata part: {e}")))?;
            fields.validate()?;
            continue;
        }
        // part_name == "file" (the constraints allow nothing else)
        let name = part.file_name().map(|n| n.rsplit(['/', '\\']).next().unwrap_or_default().trim().to_owned());
        let name = name.filter(|n| !n.is_empty()).unwrap_or_else(|| "document".to_owned());
        if name.chars().count() > 255 || name.chars().any(char::is_control) {
            return Err(Problem::bad_request(
                "invalid-name",
                "the file name is at most 255 characters, without control characters",
            ));
        }
        let declared = part.content_type().map(|m| m.to_string());
        std::fs::create_dir_all(&state.uploads_dir)
            .map_err(|e| Problem::internal(format!("cannot make the uploads folder: {e}")))?;
        let mut file = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&state.uploads_dir)
            .map_err(|e| Problem::internal(format!("cannot keep the upload: {e}")))?;
        let mut hash = sha2::Sha256::new();
        let mut head: Vec<u8> = Vec::with_capacity(SNIFF);
        let mut size = 0u64;
        while let Some(chunk) = part.chunk().await.map_err(|e| multipart_problem(e, max))? {
            use sha2::Digest as _;
            size += chunk.len() as u64;
            if head.len() < SNIFF {
                let n = (SNIFF - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..n]);
            }
            hash.update(&chunk);
            file.write_all(&chunk).map_err(|e| Problem::internal(format!("cannot keep the upload: {e}")))?;
        }
        file.flush().map_err(|e| Problem::internal(format!("cannot keep the upload: {e}")))?;
        if size == 0 {
            return Err(Problem::bad_request("empty-file", "the file is empty"));
        }
        let accepted = || ACCEPTED.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ");
        let Some(content_type) = sniff(&head) else {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-type",
                format!("the file is none of the accepted types ({}), judged by its first bytes", accepted()),
            ));
        };
        if !declared_agrees(declared.as_deref(), content_type) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "type-mismatch",
                format!(
                    "the file was sent as {} but its bytes are {content_type}; send it with its real type",
                    declared.unwrap_or_default()
                ),
            ));
        }
        use sha2::Digest as _;
        received = Some(Received { file, name, size, sha256: hex::encode(hash.finalize()), content_type });
    }
    let received = received.ok_or_else(|| Problem::bad_request("missing-file", "the form has no `file` part"))?;
    Ok((fields, received))
}

/// Upload a document for a patient (their practitioner; the uploader is
/// its source).
#[utoipa::path(
    post,
    path = "/patients/{patientGuid}/documents",
    tag = "documents",
    params(("patientGuid" = String, Path, description = "The patient guid")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = Document, headers(("Location" = String))),
        (status = 400, description = "A bad form or field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller may not add documents", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patient (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than [serve.records] max_upload", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart, or a file of no accepted type (or not the declared one)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn upload_document(
    State(state): St,
    ApiPath(guid): ApiPath<String>,
    req: Request,
) -> ApiResult<Response> {
    let headers = req.headers().clone();
    let who = allow(&state, &headers, Action::AddDocument, Some(&guid)).await?;
    let sealer = sealer(&state)?;
    // documents belong to a record: the patient must have one
    let ledger = state.ledger.clone();
    let g = guid.clone();
    if blocking(move || ledger.patient(&g).map_err(Problem::ledger)).await?.is_none() {
        return Err(Problem::not_found(format!("no patient {guid} (create the record first: POST /patients)")));
    }
    let (fields, got) = receive(&state, req).await?;
    let id = new_document_id();
    let key = format!("{DOCUMENTS_PREFIX}{guid}/{id}.{}", extension(got.content_type));
    check_key(&key).map_err(|_| Problem::bad_request("invalid-guid", "the patient guid cannot be part of a key"))?;
    let metadata = vec![("ferry-document-id".to_owned(), id.clone()), ("ferry-patient-guid".to_owned(), guid.clone())];
    let info = state
        .store
        .put_file(&key, got.file.path(), got.content_type, metadata, &crate::pace::Pace::none())
        .await
        .map_err(Problem::store)?;
    if info.sha256.as_deref().is_some_and(|s| s != got.sha256) {
        return Err(Problem::internal("the store holds other bytes than were uploaded; try again"));
    }
    let row =
        sealer.new_row(&id, &guid, &fields, &got.name, got.content_type, got.size, &got.sha256, &key, who.subject());
    let ledger = state.ledger.clone();
    let stored = blocking(move || {
        ledger.create_document(&row).map_err(Problem::ledger)?;
        ledger.document(&row.id).map_err(Problem::ledger)
    })
    .await?
    .ok_or_else(|| Problem::internal("the document was not kept"))?;
    let out = sealer.document(stored)?;
    if let Err(e) = publish(&state, &out, &key, false).await {
        // not published, so not kept: nothing half-done stays behind
        let ledger = state.ledger.clone();
        let doc_id = id.clone();
        let _ = blocking(move || ledger.delete_document(&doc_id).map_err(Problem::ledger)).await;
        return Err(e);
    }
    tracing::info!(patient = %guid, document = %id, size = got.size, subject = %who.subject(), "document uploaded");
    // a documents pipeline may send uploads on (`registry-documents`): soon
    if state.documents_pipeline {
        state.passes.nudge();
    }
    let mut res = (StatusCode::CREATED, Json(out.clone())).into_response();
    res.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&out.href).expect("ascii"));
    Ok(res)
}

// ---------------------------------------------------------------- one document

/// A document's metadata.
#[utoipa::path(
    get,
    path = "/documents/{id}",
    tag = "documents",
    params(("id" = String, Path, description = "The document id")),
    responses(
        (status = 200, description = "The document", body = Document),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_document(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Document>> {
    let who = caller(&state, &headers).await?;
    let sealer = sealer(&state)?;
    let row = permit_document(&state, &who, Action::ReadDocument, &id).await?;
    Ok(Json(sealer.document(row)?))
}

/// A document's bytes.
#[utoipa::path(
    get,
    path = "/documents/{id}/content",
    tag = "documents",
    params(
        ("id" = String, Path, description = "The document id"),
        ("Range" = Option<String>, Header, description = "`bytes=first-last`, `bytes=first-` or `bytes=-suffix`"),
    ),
    responses(
        (status = 200, description = "The whole file, as the type sniffed from its bytes (`contentType`)", content_type = "*/*",
            headers(("ETag" = String, description = "The SHA-256 of the content"), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested range", content_type = "*/*",
            headers(("Content-Range" = String, description = "`bytes first-last/total`"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range starts beyond the end of the file", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn document_content(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let who = caller(&state, &headers).await?;
    let sealer = sealer(&state)?;
    let row = permit_document(&state, &who, Action::ReadDocument, &id).await?;
    let doc = sealer.document(row.clone())?;
    let missing = || Problem::not_found(format!("the bytes of document {id} are not in the store"));
    let content_type =
        HeaderValue::from_str(&row.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // PDFs and pictures open in the browser; everything is a download by name
    let inline = matches!(row.content_type.as_str(), "application/pdf" | "image/jpeg" | "image/png" | "image/gif");
    let mut disposition = disposition(&doc.file_name);
    if inline {
        if let Ok(v) =
            HeaderValue::from_str(&disposition.to_str().unwrap_or("attachment").replacen("attachment", "inline", 1))
        {
            disposition = v;
        }
    }
    let mut res =
        serve_object(&state, &headers, &row.object_key, ObjectAnswer { content_type, disposition, missing: &missing })
            .await?;
    // a document is never a page of this origin
    let h = res.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    Ok(res)
}

/// Change a document's title, description, type and date (its source).
#[utoipa::path(
    put,
    path = "/documents/{id}",
    tag = "documents",
    params(("id" = String, Path, description = "The document id")),
    request_body = DocumentFields,
    responses(
        (status = 200, description = "The document as stored", body = Document),
        (status = 400, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only its source changes it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn put_document(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(fields): ApiJson<DocumentFields>,
) -> ApiResult<Json<Document>> {
    let who = caller(&state, &headers).await?;
    let sealer = sealer(&state)?;
    let mut row = permit_document(&state, &who, Action::ChangeDocument, &id).await?;
    fields.validate()?;
    sealer.set_fields(&mut row, &fields);
    let ledger = state.ledger.clone();
    let stored = blocking(move || {
        if !ledger.update_document(&row).map_err(Problem::ledger)? {
            return Ok(None);
        }
        ledger.document(&row.id).map_err(Problem::ledger)
    })
    .await?
    .ok_or_else(|| Problem::not_found(format!("no document {id}")))?;
    let key = stored.object_key.clone();
    let out = sealer.document(stored)?;
    publish(&state, &out, &key, false).await?;
    tracing::info!(document = %id, subject = %who.subject(), "document changed");
    Ok(Json(out))
}

/// Delete a document (its source; soft: its shares end, the bytes stay
/// in the store for the retention the clinic keeps).
#[utoipa::path(
    delete,
    path = "/documents/{id}",
    tag = "documents",
    params(("id" = String, Path, description = "The document id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only its source deletes it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_document(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let who = caller(&state, &headers).await?;
    let sealer = sealer(&state)?;
    let row = permit_document(&state, &who, Action::ChangeDocument, &id).await?;
    // first the store: a pipeline must not send what is being deleted
    let key = row.object_key.clone();
    publish(&state, &sealer.document(row)?, &key, true).await?;
    let ledger = state.ledger.clone();
    let doc_id = id.clone();
    if !blocking(move || ledger.delete_document(&doc_id).map_err(Problem::ledger)).await? {
        return Err(Problem::not_found(format!("no document {id}")));
    }
    tracing::info!(document = %id, subject = %who.subject(), "document deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- shares

/// Share a document with another practitioner (its source), optionally
/// until a time.
#[utoipa::path(
    post,
    path = "/documents/{id}/share",
    tag = "documents",
    params(("id" = String, Path, description = "The document id")),
    request_body = ShareRequest,
    responses(
        (status = 201, description = "Shared", body = Share, headers(("Location" = String))),
        (status = 400, description = "Not a practitioner, or a bad field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only its source shares it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn share_document(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(ask): ApiJson<ShareRequest>,
) -> ApiResult<Response> {
    let who = caller(&state, &headers).await?;
    let sealer = sealer(&state)?;
    let doc = permit_document(&state, &who, Action::ShareDocument, &id).await?;
    let now = crate::ledger::now_ms();
    let expires_at = ask.validate(now)?;
    if ask.practitioner == who.subject() {
        return Err(Problem::bad_request("invalid-field", "`practitioner` is the caller: share with someone else"));
    }
    let ledger = state.ledger.clone();
    let to = ask.practitioner.clone();
    let user = blocking(move || ledger.user(&to).map_err(Problem::ledger)).await?;
    if user.map(crate::serve::records::User::from_row).map(|u| u.kind()) != Some(Kind::Practitioner) {
        return Err(Problem::bad_request(
            "invalid-field",
            "`practitioner` is not a registered practitioner (an admin adds them: POST /users)",
        ));
    }
    let row = ShareRow {
        id: 0,
        document_id: doc.id.clone(),
        patient_guid: doc.patient_guid.clone(),
        recipient_sub: ask.practitioner.clone(),
        shared_by: who.subject().to_owned(),
        note_sealed: ask.note.as_deref().map(|n| sealer.seal_note(&doc.id, &ask.practitioner, n)),
        expires_at,
        created_at: 0,
        revoked_at: None,
    };
    let ledger = state.ledger.clone();
    let stored = blocking(move || {
        let id = ledger.create_share(&row).map_err(Problem::ledger)?;
        ledger.share(id).map_err(Problem::ledger)
    })
    .await?
    .ok_or_else(|| Problem::internal("the share was not kept"))?;
    let out = sealer.share(stored)?;
    tracing::info!(document = %id, share = out.id, subject = %who.subject(), "document shared");
    let mut res = (StatusCode::CREATED, Json(out.clone())).into_response();
    res.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&out.href).expect("ascii"));
    Ok(res)
}

/// The shares in force of a document (its source, admins).
#[utoipa::path(
    get,
    path = "/documents/{id}/shares",
    tag = "documents",
    params(("id" = String, Path, description = "The document id")),
    responses(
        (status = 200, description = "Shares in force, newest first", body = [Share]),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only its source sees its shares", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn document_shares(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<Share>>> {
    let who = caller(&state, &headers).await?;
    let sealer = sealer(&state)?;
    permit_document(&state, &who, Action::ShareDocument, &id).await?;
    let ledger = state.ledger.clone();
    let doc_id = id.clone();
    let rows = blocking(move || {
        ledger.active_shares(None, None, Some(&doc_id), crate::ledger::now_ms(), None, 1000).map_err(Problem::ledger)
    })
    .await?;
    Ok(Json(rows.into_iter().map(|s| sealer.share(s)).collect::<ApiResult<_>>()?))
}

/// Revoke a share (the document's source, admins).
#[utoipa::path(
    delete,
    path = "/shares/{id}",
    tag = "documents",
    params(("id" = i64, Path, description = "The share id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only the document's source revokes", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such share in force", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn revoke_share(
    State(state): St,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let who = caller(&state, &headers).await?;
    sealer(&state)?;
    let gone = || Problem::not_found(format!("no share {id} in force"));
    let ledger = state.ledger.clone();
    let share = blocking(move || ledger.share(id).map_err(Problem::ledger)).await?.ok_or_else(gone)?;
    if share.revoked_at.is_some() {
        return Err(gone());
    }
    permit_document(&state, &who, Action::ShareDocument, &share.document_id).await.map_err(|e| {
        if e.status == 404 {
            gone()
        } else {
            e
        }
    })?;
    let ledger = state.ledger.clone();
    if !blocking(move || ledger.revoke_share(id).map_err(Problem::ledger)).await? {
        return Err(gone());
    }
    tracing::info!(share = id, subject = %who.subject(), "share revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Shares in force with their documents: `recipient` and/or `patient`.
async fn shared_page(
    state: &AppState,
    recipient: Option<String>,
    patient: Option<String>,
    q: &PageQuery,
) -> ApiResult<SharedPage> {
    let sealer = sealer(state)?;
    let limit = limit_of(q);
    let before = id_cursor(q.cursor.as_deref())?;
    let ledger = state.ledger.clone();
    let pairs = blocking(move || {
        let err = Problem::ledger;
        let shares = ledger
            .active_shares(recipient.as_deref(), patient.as_deref(), None, crate::ledger::now_ms(), before, limit + 1)
            .map_err(err)?;
        let mut out = Vec::new();
        for s in shares {
            if let Some(d) = ledger.document(&s.document_id).map_err(err)? {
                out.push((s, d));
            }
        }
        Ok(out)
    })
    .await?;
    let more = pairs.len() > limit as usize;
    let mut shared = Vec::new();
    for (s, d) in pairs.into_iter().take(limit as usize) {
        shared.push(SharedDocument { share: sealer.share(s)?, document: sealer.document(d)? });
    }
    let next_cursor = if more { shared.last().map(|s| s.share.id.to_string()) } else { None };
    Ok(SharedPage { shared, next_cursor })
}

/// Documents shared with the caller, across patients.
#[utoipa::path(
    get,
    path = "/shared-with-me",
    tag = "documents",
    params(PageQuery),
    responses(
        (status = 200, description = "Shares in force to the caller, newest first", body = SharedPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn shared_with_me(
    State(state): St,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<SharedPage>> {
    let who = allow(&state, &headers, Action::ReadShares, None).await?;
    Ok(Json(shared_page(&state, Some(who.subject().to_owned()), None, &q).await?))
}

/// A patient's shared documents: to the caller; the patient's own
/// practitioner (and the patient, and admins) see every share in force.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/shared-documents",
    tag = "documents",
    params(("patientGuid" = String, Path, description = "The patient guid"), PageQuery),
    responses(
        (status = 200, description = "Shares in force, newest first", body = SharedPage),
        (status = 400, description = "Malformed guid or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn patient_shared_documents(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<SharedPage>> {
    let who = allow(&state, &headers, Action::ReadShares, Some(&guid)).await?;
    // every share of the patient for whoever reads their documents
    let all = permit(&state, &who, Action::ReadDocuments, Some(&guid)).await.is_ok();
    // the decision that counts for the access log is the one answered
    crate::serve::access::note(&who, Action::ReadShares, Some(&guid));
    let recipient = (!all).then(|| who.subject().to_owned());
    Ok(Json(shared_page(&state, recipient, Some(guid), &q).await?))
}

// ---------------------------------------------------------------- requests

/// Ask the patient's primary provider for documents: a FHIR `Task` on
/// their server or an e-mail, as `[serve.requests]` says. The request is
/// in the patient's synchronization log; what the provider sends arrives
/// through the documents pipeline.
#[utoipa::path(
    post,
    path = "/patients/{patientGuid}/request-documents",
    tag = "documents",
    params(("patientGuid" = String, Path, description = "The patient guid")),
    request_body = DocumentRequest,
    responses(
        (status = 201, description = "Sent", body = SentRequest),
        (status = 400, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only the patient's practitioner asks; or requests are not configured", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patient (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The record lacks what the provider needs (their id of the patient)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider's server (or the mail server) refused or failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn request_documents(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiJson(ask): ApiJson<DocumentRequest>,
) -> ApiResult<Response> {
    let (who, user) = caller_and_user(&state, &headers).await?;
    permit(&state, &who, Action::RequestDocuments, Some(&guid)).await?;
    records(&state)?;
    let Some(requests) = state.requests.as_ref() else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "requests-disabled",
            "document requests are not configured: add [serve.requests.fhir] (a Task on the provider's FHIR server) \
             or [serve.requests.smtp] (an e-mail)",
        ));
    };
    let bad = |why: &str| Problem::bad_request("invalid-field", why.to_owned());
    let what = ask.what.trim();
    if what.is_empty() || what.chars().count() > 500 || what.chars().any(char::is_control) {
        return Err(bad("`what` is one line of 1 to 500 characters: what to send"));
    }
    if ask.note.as_ref().is_some_and(|n| n.chars().count() > 5000 || n.chars().any(|c| c.is_control() && c != '\n')) {
        return Err(bad("`note` is at most 5000 characters, without control characters"));
    }
    let ledger = state.ledger.clone();
    let g = guid.clone();
    let record = blocking(move || ledger.patient(&g).map_err(Problem::ledger))
        .await?
        .ok_or_else(|| Problem::not_found(format!("no patient {guid} (create the record first: POST /patients)")))?;
    let external_ids: crate::serve::records::ExternalIds =
        serde_json::from_str(&record.external_ids).unwrap_or_default();
    let practitioner = user.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| who.subject().to_owned());
    let subject = crate::serve::requests::Subject {
        guid: &guid,
        family: &record.family,
        given: &record.given,
        external_ids: &external_ids,
        practitioner: &practitioner,
    };
    let id = new_document_id();
    let item = format!("request:{id}");
    let asked = DocumentRequest { what: what.to_owned(), note: ask.note.clone() };
    let result = requests.send(&id, &subject, &asked).await;
    let (status, details) = match &result {
        Ok(sent) => ("sent", format!("{}: {} (by {})", sent.channel, sent.sent_to, who.subject())),
        Err(e) => ("error", format!("{e} (by {})", who.subject())),
    };
    let ledger = state.ledger.clone();
    let g = guid.clone();
    blocking(move || ledger.log(0, &item, Some(&g), "request", status, &details).map_err(Problem::ledger)).await?;
    match result {
        Ok(sent) => {
            tracing::info!(patient = %guid, request = %id, channel = %sent.channel, "documents requested");
            Ok((StatusCode::CREATED, Json(sent)).into_response())
        }
        Err(RequestError::Record(m)) => Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "record-incomplete", m)),
        Err(RequestError::Provider(m)) => {
            tracing::warn!(patient = %guid, request = %id, "a document request failed: {m}");
            Err(Problem::new(StatusCode::BAD_GATEWAY, "provider-failed", m))
        }
    }
}
