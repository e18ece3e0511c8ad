//! Minting tokens (`ferry token`): HS256 with `[serve.auth] hs256_secret`,
//! carrying the claims this pipeline's verifier expects.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use super::{AuthError, Role};
use crate::config::AuthConfig;

pub(super) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Signs an HS256 token with `[serve.auth] hs256_secret` carrying the
/// configured roles/clinic claim names, `aud` and `iss`, so that this
/// pipeline's service accepts it.
pub fn mint(
    cfg: &AuthConfig,
    subject: &str,
    role: Role,
    ttl: Duration,
    clinic: Option<&str>,
) -> Result<String, AuthError> {
    let secret = match &cfg.hs256_secret {
        Some(s) if !s.0.is_empty() => s,
        Some(_) => return Err(AuthError::Config("hs256_secret is empty".into())),
        None if cfg.public_key.is_some() || cfg.jwks.is_some() => {
            return Err(AuthError::Config(
                "minting a token needs hs256_secret; with public_key/jwks, tokens come from the identity provider that holds the private key"
                    .into(),
            ))
        }
        None => return Err(AuthError::Config("minting a token needs hs256_secret".into())),
    };
    if ttl.is_zero() {
        return Err(AuthError::Config("the token's lifetime must be longer than 0".into()));
    }
    let now = now_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), subject.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl.as_secs().max(1)).into());
    if let Some(a) = &cfg.audience {
        claims.insert("aud".into(), a.as_str().into());
    }
    if let Some(i) = &cfg.issuer {
        claims.insert("iss".into(), i.as_str().into());
    }
    insert_path(&mut claims, &cfg.roles_claim, Value::Array(vec![role.as_str().into()]));
    if let Some(c) = clinic {
        insert_path(&mut claims, &cfg.clinic_claim, c.into());
    }
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.0.as_bytes()))
        .map_err(|e| AuthError::Config(format!("cannot sign the token: {e}")))
}

/// Sets `a.b.c` as nested objects (the inverse of [`claim`]).
pub(super) fn insert_path(claims: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut map = claims;
    for p in parts {
        let entry = map.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        map = entry.as_object_mut().expect("just made an object");
    }
    map.insert(last.to_string(), value);
}

/// `ferry token`: a signed token from the pipeline's `[serve.auth]`.
pub fn token_command(
    pipeline: &crate::config::Pipeline,
    role: &str,
    ttl: std::time::Duration,
    subject: &str,
    clinic: Option<&str>,
) -> anyhow::Result<String> {
    let role: Role = role.parse().map_err(anyhow::Error::msg)?;
    let Some(serve) = &pipeline.serve else {
        anyhow::bail!(
            "{}: no [serve.auth] section; `ferry token` signs with [serve.auth] hs256_secret",
            pipeline.path.display()
        );
    };
    mint(&serve.auth, subject, role, ttl, clinic).map_err(|e| anyhow::anyhow!("{}: {e}", pipeline.path.display()))
}
