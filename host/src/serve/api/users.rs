//! `/users`: the service's users, keyed by their tokens' `sub`, managed
//! by admins; `/users/me` for everyone.

use super::*;
use crate::serve::records::User;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// At most this many users (default 100, at most 1000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A page of users, by `sub`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPage {
    pub items: Vec<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The caller as the service sees them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub sub: String,
    /// `viewer`, `operator` or `admin`, from the token.
    pub role: String,
    /// `practitioner`, `patient` or `staff` (no registry entry: staff).
    #[serde(rename = "type")]
    pub user_type: String,
    /// The registry entry, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

/// Who the caller is.
#[utoipa::path(
    get,
    path = "/users/me",
    tag = "users",
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn me(State(state): St, headers: HeaderMap) -> ApiResult<Json<Me>> {
    let (who, user) = caller_and_user(&state, &headers).await?;
    permit(&state, &who, Action::ReadSelf, None).await?;
    Ok(Json(Me {
        sub: who.subject().to_owned(),
        role: who.principal.role.to_string(),
        user_type: who.kind.as_str().to_owned(),
        user,
    }))
}

/// The users (admins).
#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    params(UserQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins manage users", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list_users(
    State(state): St,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> ApiResult<Json<UserPage>> {
    allow(&state, &headers, Action::ManageUsers, None).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let ledger = state.ledger.clone();
    let after = q.cursor.clone();
    let mut rows = blocking(move || ledger.users(after.as_deref(), limit + 1).map_err(Problem::ledger)).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more.then(|| rows.last().map(|u| u.sub.clone())).flatten();
    let next = next_cursor.as_ref().map(|c| format!("/api/v1/users?limit={limit}&cursor={}", seg(c)));
    Ok(Json(UserPage { items: rows.into_iter().map(User::from_row).collect(), next_cursor, next }))
}

async fn load_user(state: &AppState, sub: &str) -> ApiResult<Option<User>> {
    let ledger = state.ledger.clone();
    let s = sub.to_owned();
    Ok(blocking(move || ledger.user(&s).map_err(Problem::ledger)).await?.map(User::from_row))
}

async fn store_user(state: &AppState, u: &User) -> ApiResult<User> {
    u.validate()?;
    let ledger = state.ledger.clone();
    let row = u.to_row();
    let sub = u.sub.clone();
    let stored = blocking(move || {
        ledger.put_user(&row).map_err(Problem::ledger)?;
        ledger.user(&sub).map_err(Problem::ledger)
    })
    .await?;
    Ok(User::from_row(stored.expect("just stored")))
}

/// Register a user (admins).
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    request_body = User,
    responses(
        (status = 201, description = "Registered", body = User, headers(("Location" = String))),
        (status = 400, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins manage users", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This sub is registered already", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create_user(
    State(state): St,
    headers: HeaderMap,
    ApiJson(u): ApiJson<User>,
) -> ApiResult<Response> {
    let who = allow(&state, &headers, Action::ManageUsers, None).await?;
    u.validate()?;
    if load_user(&state, &u.sub).await?.is_some() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "user-exists",
            format!("user `{}` is registered already: PUT /users/{{sub}} changes it", u.sub),
        ));
    }
    let stored = store_user(&state, &u).await?;
    tracing::info!(user = %stored.sub, subject = %who.subject(), "user registered");
    let href = format!("/api/v1/users/{}", seg(&stored.sub));
    let mut res = (StatusCode::CREATED, Json(stored)).into_response();
    res.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&href).expect("ascii"));
    Ok(res)
}

/// A user (admins).
#[utoipa::path(
    get,
    path = "/users/{sub}",
    tag = "users",
    params(("sub" = String, Path, description = "The user's token subject")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins manage users", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_user(
    State(state): St,
    headers: HeaderMap,
    ApiPath(sub): ApiPath<String>,
) -> ApiResult<Json<User>> {
    allow(&state, &headers, Action::ManageUsers, None).await?;
    load_user(&state, &sub).await?.map(Json).ok_or_else(|| Problem::not_found(format!("no user `{sub}`")))
}

/// Change a user (admins).
#[utoipa::path(
    put,
    path = "/users/{sub}",
    tag = "users",
    params(("sub" = String, Path, description = "The user's token subject")),
    request_body = User,
    responses(
        (status = 200, description = "The user as stored", body = User),
        (status = 400, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins manage users", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn put_user(
    State(state): St,
    headers: HeaderMap,
    ApiPath(sub): ApiPath<String>,
    ApiJson(u): ApiJson<User>,
) -> ApiResult<Json<User>> {
    let who = allow(&state, &headers, Action::ManageUsers, None).await?;
    if u.sub != sub {
        return Err(Problem::bad_request("invalid-field", "`sub` is the user's key: it must match the path"));
    }
    if load_user(&state, &sub).await?.is_none() {
        return Err(Problem::not_found(format!("no user `{sub}` (POST /users registers one)")));
    }
    let stored = store_user(&state, &u).await?;
    tracing::info!(user = %stored.sub, subject = %who.subject(), "user changed");
    Ok(Json(stored))
}

/// Remove a user (admins). Their patient records stay, owned by them
/// until an admin gives them to another practitioner.
#[utoipa::path(
    delete,
    path = "/users/{sub}",
    tag = "users",
    params(("sub" = String, Path, description = "The user's token subject")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins manage users", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_user(
    State(state): St,
    headers: HeaderMap,
    ApiPath(sub): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let who = allow(&state, &headers, Action::ManageUsers, None).await?;
    let ledger = state.ledger.clone();
    let s = sub.clone();
    if !blocking(move || ledger.delete_user(&s).map_err(Problem::ledger)).await? {
        return Err(Problem::not_found(format!("no user `{sub}`")));
    }
    tracing::info!(user = %sub, subject = %who.subject(), "user removed");
    Ok(StatusCode::NO_CONTENT)
}
