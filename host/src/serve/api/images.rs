//! A patient's images: the listing (from the store, with facts from the
//! index or the sidecar), the DICOM bytes (ranges, presigned redirects)
//! and previews (through the sandboxed renderer).

use super::*;

// ---------------------------------------------------------------- images

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Images per page (default 100, at most 1000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One stored image.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The object's file name (the last segment of its key).
    pub name: String,
    /// The image's title in the imaging software, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Bytes.
    pub size: u64,
    /// DICOM modality (`IO`, `PX`, …).
    pub modality: Option<String>,
    /// `YYYY-MM-DD`.
    pub study_date: Option<String>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    /// The DICOM file.
    pub href: String,
    /// A PNG preview.
    pub preview_href: String,
}

/// A page of images.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePage {
    pub patient_guid: String,
    pub images: Vec<Image>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The metadata key of a sidecar stored with its object (the `store`
/// plugin's default; percent-encoded compact JSON).
const SIDECAR_META: &str = "ferry-sidecar";

/// Facts of an image from its sidecar (images stored before the ledger
/// indexed them, or by another uploader): the one stored with the object
/// (its `ferry-sidecar` metadata), else the `{key}.json` object next to it.
pub(super) async fn sidecar_facts(state: &AppState, key: &str) -> Option<ImageFacts> {
    let inline = match state.store.head(key).await {
        Ok(Some(info)) => info.metadata.into_iter().find(|(k, _)| k == SIDECAR_META).map(|(_, v)| v),
        _ => None,
    };
    let bytes = match inline {
        // bounded by the store's metadata limit (2 KiB on S3)
        Some(v) => percent_encoding::percent_decode_str(&v).collect::<Vec<u8>>(),
        None => sidecar_object(state, key).await?,
    };
    // serde_json caps nesting at 128 levels
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let md = &v["metadata"];
    let text = |k: &str| md[k].as_str().map(str::to_owned);
    Some(ImageFacts {
        name: v["sourceName"].as_str().unwrap_or_default().to_owned(),
        patient_name: None,
        modality: text("modality"),
        study_date: text("study.date").or_else(|| text("acquisition.date")),
        rows: md["rows"].as_i64(),
        columns: md["columns"].as_i64(),
    })
}

/// The bytes of `{key}.json`, at most 1 MiB.
async fn sidecar_object(state: &AppState, key: &str) -> Option<Vec<u8>> {
    let (_, total, mut body) = state.store.get(&format!("{key}.json"), None).await.ok()??;
    if total > 1 << 20 {
        return None;
    }
    let mut bytes = Vec::with_capacity(total as usize);
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.ok()?);
        // the declared size is the store's word; the bytes are checked too
        if bytes.len() > 1 << 20 {
            return None;
        }
    }
    Some(bytes)
}

/// List a patient's images.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/images",
    tag = "patients",
    params(
        ("patientGuid" = String, Path, description = "The practice system's patient guid"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "A page of images, by name", body = ImagePage),
        (status = 400, description = "Malformed guid or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown patient", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store or the ledger cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list_images(
    State(state): St,
    headers: HeaderMap,
    ApiPath(guid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ImagePage>> {
    allow(&state, &headers, Action::ReadImages, Some(&guid)).await?;
    if let Some(c) = &q.cursor {
        check_name(c).map_err(|_| Problem::bad_request("invalid-cursor", "`cursor` is not one this API gave out"))?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let prefix = prefix_of(&guid);
    // one more than asked, to know whether there is a next page
    let mut found = Vec::new();
    let mut store_cursor = q.cursor.as_ref().map(|c| format!("{prefix}{c}"));
    loop {
        let want = ((limit + 1 - found.len()) * 2).clamp(2, 1000) as u32;
        let page = state.store.list(&prefix, store_cursor.clone(), want).await.map_err(Problem::store)?;
        for o in page.objects {
            let Some(name) = o.key.strip_prefix(&prefix) else { continue };
            // direct children only, images only
            if name.contains('/') || is_sidecar(name) || check_name(name).is_err() {
                continue;
            }
            found.push((name.to_owned(), o));
            if found.len() > limit {
                break;
            }
        }
        if found.len() > limit || page.next_cursor.is_none() {
            break;
        }
        store_cursor = page.next_cursor;
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let facts: HashMap<String, ImageFacts> = {
        let ledger = state.ledger.clone();
        let g = guid.clone();
        blocking(move || ledger.images_of(&g).map_err(Problem::ledger))
            .await?
            .into_iter()
            .map(|i| (i.location, i.facts))
            .collect()
    };
    if found.is_empty() && q.cursor.is_none() {
        let ledger = state.ledger.clone();
        let g = guid.clone();
        if !blocking(move || ledger.knows_patient(&g).map_err(Problem::ledger)).await? {
            return Err(Problem::not_found(format!("no images of patient {guid}: ferry has not stored any")));
        }
    }
    let mut images = Vec::with_capacity(found.len());
    for (name, o) in &found {
        let f = match facts.get(&o.key) {
            Some(f) => Some(f.clone()),
            None => sidecar_facts(&state, &o.key).await,
        }
        .unwrap_or_default();
        let href = format!("/api/v1/patients/{}/images/{}", seg(&guid), seg(name));
        images.push(Image {
            name: name.clone(),
            display_name: Some(f.name).filter(|n| !n.is_empty()),
            size: o.size,
            modality: f.modality,
            study_date: f.study_date,
            rows: f.rows,
            columns: f.columns,
            preview_href: format!("{href}/preview"),
            href,
        });
    }
    let next_cursor = more.then(|| found.last().map(|(n, _)| n.clone())).flatten();
    let next =
        next_cursor.as_ref().map(|c| format!("/api/v1/patients/{}/images?limit={limit}&cursor={}", seg(&guid), seg(c)));
    Ok(Json(ImagePage { patient_guid: guid, images, next_cursor, next }))
}

/// The DICOM bytes as a binary body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct DicomFile(#[allow(dead_code)] Vec<u8>);

/// A PNG image.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Png(#[allow(dead_code)] Vec<u8>);

pub(super) const DOWNLOAD_CACHE: &str = "private, max-age=3600";

/// Download an image (DICOM).
///
/// Supports one byte range (`Range: bytes=first-last`, `first-`, `-suffix`)
/// and `If-Range` with the ETag; a Range header that is malformed, asks
/// for several ranges, or fails `If-Range` is ignored (200, whole file).
/// With `[serve] presign = true` and an S3 store, answers `307` to a
/// presigned S3 URL valid for 5 minutes instead of streaming.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/images/{name}",
    tag = "patients",
    params(
        ("patientGuid" = String, Path, description = "The practice system's patient guid"),
        ("name" = String, Path, description = "The image's `name` from the listing (one path segment)"),
        ("Range" = Option<String>, Header, description = "`bytes=first-last`, `bytes=first-` or `bytes=-suffix`"),
    ),
    responses(
        (status = 200, description = "The whole file", body = DicomFile, content_type = "application/dicom",
            headers(("ETag" = String, description = "The SHA-256 of the content"), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested range", body = DicomFile, content_type = "application/dicom",
            headers(("Content-Range" = String, description = "`bytes first-last/total`"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 307, description = "Download from this presigned URL (S3 with `presign = true`)",
            headers(("Location" = String))),
        (status = 400, description = "Malformed guid or name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range starts beyond the end of the file", body = Problem, content_type = "application/problem+json",
            headers(("Content-Range" = String, description = "`bytes */total`"))),
    )
)]
pub(super) async fn get_image(
    State(state): St,
    headers: HeaderMap,
    ApiPath((guid, name)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    allow(&state, &headers, Action::ReadImages, Some(&guid)).await?;
    let key = image_key(&guid, &name)?;
    let missing = || Problem::not_found(format!("patient {guid} has no image named `{name}`"));
    if is_sidecar(&name) {
        return Err(missing());
    }
    if state.presign {
        // check first: a presigned URL to nothing would answer S3's 404
        if state.store.head(&key).await.map_err(Problem::store)?.is_none() {
            return Err(missing());
        }
        if let Some(url) = state.store.presign_get(&key, PRESIGN_TTL).await.map_err(Problem::store)? {
            let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
            let location = HeaderValue::from_str(&url)
                .map_err(|_| Problem::internal("the presigned URL is not a valid header"))?;
            res.headers_mut().insert(header::LOCATION, location);
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(res);
        }
    }
    serve_object(
        &state,
        &headers,
        &key,
        ObjectAnswer {
            content_type: HeaderValue::from_static("application/dicom"),
            disposition: disposition(&name),
            missing: &missing,
        },
    )
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// Longest side in pixels, 16 to 4096 (default 256); never enlarged.
    size: Option<u32>,
}

pub(super) const PREVIEW_CACHE: &str = "private, max-age=86400";

/// A PNG preview of an image.
#[utoipa::path(
    get,
    path = "/patients/{patientGuid}/images/{name}/preview",
    tag = "patients",
    params(
        ("patientGuid" = String, Path, description = "The practice system's patient guid"),
        ("name" = String, Path, description = "The image's `name` from the listing"),
        PreviewQuery,
    ),
    responses(
        (status = 200, description = "The preview", body = Png, content_type = "image/png",
            headers(("ETag" = String, description = "From the image's SHA-256 and the size"), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 400, description = "Malformed guid, name or size", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The image is too large to preview", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file cannot be previewed (not DICOM, no pixels, unsupported encoding)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn preview(
    State(state): St,
    headers: HeaderMap,
    ApiPath((guid, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<PreviewQuery>,
) -> ApiResult<Response> {
    allow(&state, &headers, Action::ReadImages, Some(&guid)).await?;
    let key = image_key(&guid, &name)?;
    let missing = || Problem::not_found(format!("patient {guid} has no image named `{name}`"));
    if is_sidecar(&name) {
        return Err(missing());
    }
    let size = q.size.unwrap_or(256);
    if !(16..=4096).contains(&size) {
        return Err(Problem::bad_request("invalid-size", "`size` is 16 to 4096 pixels"));
    }
    let info = state.store.head(&key).await.map_err(Problem::store)?.ok_or_else(missing)?;
    let max = state.max_preview;
    if info.size > max {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "the image has {} bytes; previews are made of images up to {} MiB ([serve.preview] max_file)",
                info.size,
                max >> 20
            ),
        ));
    }
    let etag = info.sha256.as_ref().map(|s| format!("\"{s}-{size}\""));
    if let Some(etag) = &etag {
        if etag_matches(&headers, etag) {
            return Ok(not_modified(etag, PREVIEW_CACHE));
        }
    }
    // the cache is keyed by object and content, so a re-stored image gets
    // a new preview
    let cache_key = format!("{key}\n{}", info.sha256.clone().unwrap_or_else(|| format!("size:{}", info.size)));
    let previews = &state.previews;
    // a cached preview needs no download
    let png = match previews.cached(&cache_key, Some(size)).await {
        Some(answer) => answer.map_err(preview_problem)?,
        None => {
            let tmp = download(&state, &key, previews.download_dir()).await?.ok_or_else(missing)?;
            previews.render(tmp.path(), &cache_key, Some(size)).await.map_err(preview_problem)?
        }
    };
    let mut res = Response::new(Body::from(png));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(PREVIEW_CACHE));
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, etag);
    }
    Ok(res)
}

/// Copies an object to a temporary file in `dir` (deleted on drop),
/// refusing more than `[serve.preview] max_file`.
pub(super) async fn download(state: &AppState, key: &str, dir: &Path) -> ApiResult<Option<tempfile::NamedTempFile>> {
    let Some((_, total, mut body)) = state.store.get(key, None).await.map_err(Problem::store)? else {
        return Ok(None);
    };
    let max = state.max_preview;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("previews are made of images up to {} MiB", max >> 20),
        )
    };
    if total > max {
        return Err(too_large());
    }
    let tmp_dir = dir;
    let io = |e: std::io::Error| Problem::internal(format!("cannot write a temporary file for the preview: {e}"));
    tokio::fs::create_dir_all(&tmp_dir).await.map_err(io)?;
    let tmp = tempfile::Builder::new().prefix("download-").suffix(".dcm").tempfile_in(tmp_dir).map_err(io)?;
    let mut out = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Problem::unavailable(format!("reading the image from the store: {e}")))?;
        written += chunk.len() as u64;
        if written > max {
            return Err(too_large());
        }
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    Ok(Some(tmp))
}

pub(super) fn preview_problem(e: crate::serve::preview::PreviewError) -> Problem {
    use crate::serve::preview::PreviewError::*;
    match e {
        TooLarge(m) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", format!("too large to preview: {m}")),
        Cannot(m) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cannot-preview",
            format!("this image cannot be previewed: {m}"),
        ),
        Unavailable(m) => {
            tracing::warn!("preview unavailable: {m}");
            Problem::unavailable(format!("the preview could not be made now: {m}"))
        }
        e @ Io(_) => {
            tracing::error!("preview failed: {e}");
            Problem::internal(format!("the preview could not be made: {e}"))
        }
    }
}
