//! JWT bearer authentication and roles for the API. (Being written.)
//!
//! Agreed interface (used by `api`):
//! - `Role { Viewer, Operator, Admin }` ordered by power;
//! - `Principal { subject, role, clinic }`;
//! - `Auth::from_config(&AuthConfig) -> Result<Auth, AuthError>`;
//! - `Auth::authorize(&self, authorization: Option<&str>, needed: Role) -> Result<Principal, AuthError>`
//!   (`AuthError::Unauthenticated(_)` → 401, `AuthError::Forbidden(_)` → 403);
//! - `mint(&AuthConfig, subject, role, ttl, clinic) -> Result<String, AuthError>` for `ferry token`.

/// `ferry token`: a signed token from the pipeline's `[serve.auth]`.
pub fn token_command(
    pipeline: &crate::config::Pipeline,
    role: &str,
    ttl: std::time::Duration,
    subject: &str,
    clinic: Option<&str>,
) -> anyhow::Result<String> {
    let _ = (pipeline, role, ttl, subject, clinic);
    anyhow::bail!("ferry token is not available yet")
}
