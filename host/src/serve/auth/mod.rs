//! JWT bearer authentication and roles for the API.
//!
//! Every API call carries `Authorization: Bearer <JWT>`. The token is
//! checked against exactly one key source from `[serve.auth]`:
//!
//! | setting | accepted algorithm |
//! |---|---|
//! | `hs256_secret = "${FERRY_JWT_SECRET}"` | HS256 |
//! | `public_key = "jwt.pem"` (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`) | RS256 for RSA keys, ES256 for P-256 keys (ES384 for P-384, EdDSA for Ed25519) |
//! | `jwks = "jwks.json"` | per key: its `alg`, else RS256 (RSA), ES256/ES384 (EC by curve), EdDSA (OKP) |
//!
//! The accepted algorithm is fixed by the key, never by the token: a token
//! whose header names another algorithm (`none`, or HS256 "signed" with an
//! RSA public key's bytes) is refused before any signature check. Symmetric
//! keys in a JWKS are refused at start (they would reopen that confusion).
//! Header fields that carry keys (`jwk`, `jku`, `x5c`, `x5u`) are ignored.
//!
//! Claims:
//! - `exp` is required and checked, `nbf` is checked when present (60 s of
//!   clock skew tolerated either way);
//! - `aud` and `iss` are required and must match when `audience` / `issuer`
//!   are configured, and are not looked at otherwise (configure both in
//!   production);
//! - the role comes from `roles_claim` (default `roles`; a dotted path such as
//!   `realm_access.roles` reaches into objects): a string (several roles may
//!   be separated by spaces or commas) or an array of strings. Names are
//!   `viewer < operator < admin` (case-insensitive); unknown names are
//!   ignored and the most powerful known one wins. No known role → 403;
//! - the clinic comes from `clinic_claim` (default `clinic`). A token naming
//!   another clinic than `clinic_id` is refused (403). A token with **no**
//!   clinic claim is accepted for any clinic: tokens are issued per
//!   deployment by default, and the clinic claim is how an issuer that
//!   serves several clinics narrows one down;
//! - `sub` becomes the principal's subject (`unknown` when absent).
//!
//! A missing or malformed header, a bad signature, an expired token or a
//! wrong audience/issuer is 401 (`Unauthenticated`); a valid token without
//! the needed role or for another clinic is 403 (`Forbidden`). Error
//! messages say what is wrong and never contain the token.
//!
//! `dev_mode = true` turns all of this off: every call is `Admin` with
//! subject `dev` (a warning is logged at start). For a demo on 127.0.0.1.

use std::collections::HashSet;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

mod keys;
#[cfg(test)]
mod tests;
mod token;

use keys::{load_jwks, load_public_pem};
pub use token::{mint, token_command};

/// Tolerated clock skew for `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 60;

/// What a caller may do. Ordered by power: `Viewer < Operator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Search patients, see images, previews, logs; download.
    Viewer,
    /// Also: trigger a re-sync, retry parked items.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}`: expected viewer, operator or admin")),
        }
    }
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
    /// The token's clinic claim, if it has one.
    pub clinic: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No usable credentials: HTTP 401.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Valid credentials without the right: HTTP 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// `[serve.auth]` cannot be used as written.
    #[error("[serve.auth]: {0}")]
    Config(String),
}

impl AuthError {
    /// The HTTP status this error maps to (401, 403, or 500 for configuration).
    pub fn status_code(&self) -> u16 {
        match self {
            AuthError::Unauthenticated(_) => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::Config(_) => 500,
        }
    }
}

fn unauth(msg: impl Into<String>) -> AuthError {
    AuthError::Unauthenticated(msg.into())
}

/// One verification key and the one algorithm it accepts.
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

enum Mode {
    Dev,
    /// A single key (secret or PEM): the token's `kid` is not looked at.
    Single(VerifyKey),
    /// A JWKS: the key is chosen by the token's `kid`.
    Set(Vec<VerifyKey>),
}

/// The configured verifier. Cheap to share (`Arc<Auth>`).
pub struct Auth {
    mode: Mode,
    source: String,
    audience: Option<String>,
    issuer: Option<String>,
    roles_claim: String,
    clinic_claim: String,
    clinic_id: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the verifier from `[serve.auth]`: reads and checks the key
    /// files now, so a bad key fails at start and not on the first request.
    pub fn from_config(cfg: &AuthConfig) -> Result<Auth, AuthError> {
        let secret = cfg.hs256_secret.as_ref().map(|s| s.0.as_str());
        let configured =
            [secret.is_some(), cfg.public_key.is_some(), cfg.jwks.is_some()].iter().filter(|b| **b).count();
        if cfg.dev_mode && configured > 0 {
            return Err(AuthError::Config(
                "dev_mode = true turns authentication off, yet a key is configured too: remove dev_mode to check tokens \
                 with the key, or remove the key for a local demo"
                    .into(),
            ));
        }
        let (mode, source) = if cfg.dev_mode {
            tracing::warn!(
                "authentication is OFF ([serve.auth] dev_mode = true): every caller is admin; use only for a demo on 127.0.0.1"
            );
            (Mode::Dev, "dev mode (authentication off)".to_string())
        } else if configured == 0 {
            return Err(AuthError::Config(
                "no key to check tokens with: set hs256_secret, public_key (PEM) or jwks (or dev_mode = true for a local demo)"
                    .into(),
            ));
        } else if configured > 1 {
            return Err(AuthError::Config("set only one of hs256_secret, public_key and jwks".into()));
        } else if let Some(secret) = secret {
            if secret.is_empty() {
                return Err(AuthError::Config("hs256_secret is empty".into()));
            }
            if secret.len() < 32 {
                tracing::warn!("[serve.auth] hs256_secret is shorter than 32 bytes; use a long random secret");
            }
            let key = VerifyKey { kid: None, alg: Algorithm::HS256, key: DecodingKey::from_secret(secret.as_bytes()) };
            (Mode::Single(key), "HS256 secret".to_string())
        } else if let Some(path) = &cfg.public_key {
            let key = load_public_pem(path)?;
            let source = format!("{:?} public key {}", key.alg, path.display());
            (Mode::Single(key), source)
        } else {
            let path = cfg.jwks.as_ref().expect("one source is configured");
            let keys = load_jwks(path)?;
            let source = format!("JWKS {} ({} keys)", path.display(), keys.len());
            (Mode::Set(keys), source)
        };
        Ok(Auth {
            mode,
            source,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
            roles_claim: cfg.roles_claim.clone(),
            clinic_claim: cfg.clinic_claim.clone(),
            clinic_id: cfg.clinic_id.clone(),
        })
    }

    /// True when authentication is off (`dev_mode = true`).
    pub fn is_dev_mode(&self) -> bool {
        matches!(self.mode, Mode::Dev)
    }

    /// What tokens are checked against, for the startup log (no secrets).
    pub fn describe(&self) -> &str {
        &self.source
    }

    /// Checks the `Authorization` header value and that its principal has at
    /// least `needed`. See the module documentation for the rules.
    pub fn authorize(&self, authorization_header: Option<&str>, needed: Role) -> Result<Principal, AuthError> {
        if let Mode::Dev = self.mode {
            return Ok(Principal { subject: "dev".into(), role: Role::Admin, clinic: self.clinic_id.clone() });
        }
        let token = bearer_token(authorization_header)?;
        let claims = self.verify(token)?;
        let principal = self.principal(&claims)?;
        if principal.role < needed {
            return Err(AuthError::Forbidden(format!(
                "this needs the {needed} role; the token grants {}",
                principal.role
            )));
        }
        Ok(principal)
    }

    /// Signature, algorithm and registered claims; returns the claims.
    fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        if token.split('.').count() != 3 {
            return Err(unauth("the bearer token is not a JWT (expected three dot-separated parts)"));
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return Err(unauth(describe_bad_header(token))),
        };
        if let Some(names) = critical_extensions(token) {
            // RFC 7515 §4.1.11: a recipient that does not understand a
            // critical extension must reject the token; ferry knows none
            return Err(unauth(format!(
                "the token's header marks extensions as critical (`crit`: {names}); this server understands none, so it refuses the token"
            )));
        }
        let key = match &self.mode {
            Mode::Dev => unreachable!("dev mode does not verify"),
            Mode::Single(k) => k,
            Mode::Set(keys) => select_key(keys, header.kid.as_deref())?,
        };
        if header.alg != key.alg {
            return Err(unauth(format!(
                "token algorithm {:?} is not accepted: this server accepts only {:?}",
                header.alg, key.alg
            )));
        }
        let validation = self.validation(key.alg);
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(unauth(self.describe_jwt_error(&e))),
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required: HashSet<String> = HashSet::from(["exp".to_string()]);
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.insert("iss".into());
        }
        v.required_spec_claims = required;
        v
    }

    fn describe_jwt_error(&self, e: &jsonwebtoken::errors::Error) -> String {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => "the token has expired".into(),
            K::ImmatureSignature => "the token is not valid yet (its nbf is in the future)".into(),
            K::InvalidSignature => "the token's signature does not verify with the configured key".into(),
            K::InvalidAudience => match &self.audience {
                Some(a) => format!("the token is not meant for this service (aud must be `{a}`)"),
                None => "the token's audience is not accepted".into(),
            },
            K::InvalidIssuer => match &self.issuer {
                Some(i) => format!("the token was not issued by `{i}` (iss)"),
                None => "the token's issuer is not accepted".into(),
            },
            K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
            K::InvalidClaimFormat(c) => format!("the token's `{c}` claim is malformed"),
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm | K::MissingAlgorithm => {
                "the token's algorithm is not accepted".into()
            }
            K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
                "the configured key cannot check this token".into()
            }
            _ => "the token is malformed".into(),
        }
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => "unknown".into(),
        };
        let role = match claim(claims, &self.roles_claim) {
            None => {
                return Err(AuthError::Forbidden(format!(
                    "the token has no `{}` claim naming a role (viewer, operator or admin)",
                    self.roles_claim
                )))
            }
            Some(v) => highest_role(v).ok_or_else(|| {
                AuthError::Forbidden(format!(
                    "the token's `{}` claim names no ferry role (viewer, operator or admin)",
                    self.roles_claim
                ))
            })?,
        };
        let clinic = match claim(claims, &self.clinic_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(AuthError::Forbidden(format!("the token's `{}` claim is not a string", self.clinic_claim)))
            }
        };
        if let (Some(theirs), Some(ours)) = (&clinic, &self.clinic_id) {
            if theirs != ours {
                return Err(AuthError::Forbidden(format!("the token is for another clinic than this one (`{ours}`)")));
            }
        }
        Ok(Principal { subject, role, clinic })
    }
}

/// `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let Some(header) = header else {
        return Err(unauth("no Authorization header: send `Authorization: Bearer <token>`"));
    };
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauth("the Authorization header is not a Bearer token: send `Authorization: Bearer <token>`"));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(unauth("the Authorization header has an empty Bearer token"));
    }
    if token.contains(char::is_whitespace) {
        return Err(unauth("the bearer token contains spaces"));
    }
    Ok(token)
}

/// Why the header did not parse, without quoting the token.
fn describe_bad_header(token: &str) -> String {
    use base64::Engine;
    let first = token.split('.').next().unwrap_or("");
    let alg = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
    match alg {
        Some(a) if a.eq_ignore_ascii_case("none") => "unsigned tokens (alg: none) are refused".into(),
        Some(a) if a.len() <= 16 && a.chars().all(|c| c.is_ascii_alphanumeric()) => {
            format!("token algorithm `{a}` is not supported")
        }
        _ => "the token's header is malformed".into(),
    }
}

fn select_key<'a>(keys: &'a [VerifyKey], kid: Option<&str>) -> Result<&'a VerifyKey, AuthError> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or_else(|| {
            let shown = if kid.len() <= 64 && kid.chars().all(|c| c.is_ascii_graphic()) {
                format!(" `{kid}`")
            } else {
                String::new()
            };
            unauth(format!("the token's key id{shown} is not in the configured JWKS"))
        }),
        None if keys.len() == 1 => Ok(&keys[0]),
        None => Err(unauth(format!("the token has no key id (kid) and the configured JWKS has {} keys", keys.len()))),
    }
}

/// A claim by name, or by dotted path into objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn highest_role(v: &Value) -> Option<Role> {
    let names: Vec<&str> = match v {
        Value::String(s) => s.split(|c: char| c.is_whitespace() || c == ',').collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    names.into_iter().filter_map(|n| n.parse::<Role>().ok()).max()
}

/// The `crit` header parameter, if the token has one (as text for the
/// message). The header was already decoded once by `decode_header`, so
/// it is valid base64url JSON of bounded size here.
fn critical_extensions(token: &str) -> Option<String> {
    use base64::Engine as _;
    let head = token.split('.').next()?;
    if head.len() > MAX_HEADER_CHARS {
        return Some("(header too large to read)".into());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head.trim_end_matches('=')).ok()?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    header.get("crit").map(|c| {
        let text = c.to_string();
        text.chars().take(80).collect()
    })
}

/// Longest JWT header read for `crit` (base64url characters).
const MAX_HEADER_CHARS: usize = 8192;
