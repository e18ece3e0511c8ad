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
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

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

fn read_key_file(path: &Path, what: &str) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|e| AuthError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// A PEM public key; its type fixes the algorithm.
fn load_public_pem(path: &Path) -> Result<VerifyKey, AuthError> {
    let pem = read_key_file(path, "public_key")?;
    let bad = |m: &str| AuthError::Config(format!("public_key {}: {m}", path.display()));
    if pem.contains("PRIVATE KEY-----") {
        return Err(bad("this is a private key; give ferry only the public key (`openssl pkey -in KEY.pem -pubout`)"));
    }
    if pem.contains("BEGIN CERTIFICATE") {
        return Err(bad("this is a certificate; extract its public key (`openssl x509 -in CERT.pem -pubkey -noout`)"));
    }
    if !pem.contains("PUBLIC KEY-----") {
        return Err(bad("expected a PEM `PUBLIC KEY` (RSA or EC P-256)"));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        if key.family() == jsonwebtoken::AlgorithmFamily::Rsa && rsa_key_ok(&key) {
            return Ok(VerifyKey { kid: None, alg: Algorithm::RS256, key });
        }
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        let curve = Jwk::from_decoding_key(&key, None).ok().and_then(|j| match j.algorithm {
            AlgorithmParameters::EllipticCurve(p) => Some(p.curve),
            _ => None,
        });
        return match curve {
            Some(EllipticCurve::P256) => Ok(VerifyKey { kid: None, alg: Algorithm::ES256, key }),
            Some(EllipticCurve::P384) => Ok(VerifyKey { kid: None, alg: Algorithm::ES384, key }),
            _ => Err(bad("unsupported elliptic curve (use P-256 for ES256)")),
        };
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem.as_bytes()) {
        return Ok(VerifyKey { kid: None, alg: Algorithm::EdDSA, key });
    }
    Err(bad("not a usable RSA, EC or Ed25519 public key"))
}

/// An RSA key whose modulus and exponent can be read back.
fn rsa_key_ok(key: &DecodingKey) -> bool {
    matches!(Jwk::from_decoding_key(key, None).map(|j| j.algorithm), Ok(AlgorithmParameters::RSA(_)))
}

/// The public signing keys of a JWKS file.
fn load_jwks(path: &Path) -> Result<Vec<VerifyKey>, AuthError> {
    let text = read_key_file(path, "jwks")?;
    let bad = |m: String| AuthError::Config(format!("jwks {}: {m}", path.display()));
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(k) => format!("key `{k}`"),
            None => format!("key #{i}"),
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let by_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err(bad(format!("{name}: unsupported curve"))),
            },
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            AlgorithmParameters::OctetKey(_) => {
                return Err(bad(format!(
                    "{name} is a symmetric (oct) key; a JWKS must hold public keys only (use hs256_secret for a shared secret)"
                )))
            }
            _ => return Err(bad(format!("{name}: unsupported key type"))),
        };
        let alg = match &jwk.common.key_algorithm {
            None => by_type,
            Some(ka) => {
                let alg = Algorithm::try_from(*ka)
                    .map_err(|_| bad(format!("{name}: algorithm {ka} cannot verify signatures")))?;
                if alg.family() != by_type.family() {
                    return Err(bad(format!("{name}: algorithm {ka} does not fit its key type")));
                }
                alg
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("{name}: {e}")))?;
        keys.push(VerifyKey { kid: jwk.common.key_id.clone(), alg, key });
    }
    if keys.is_empty() {
        return Err(bad("no signing keys".into()));
    }
    Ok(keys)
}

fn now_secs() -> u64 {
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
fn insert_path(claims: &mut Map<String, Value>, path: &str, value: Value) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use base64::Engine;
    use serde_json::json;
    use std::path::PathBuf;

    const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

    fn keys_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/service/keys")
    }
    fn key_file(name: &str) -> PathBuf {
        keys_dir().join(name)
    }
    fn key_text(name: &str) -> String {
        std::fs::read_to_string(key_file(name)).unwrap()
    }

    fn hs_cfg() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(Secret(SECRET.into())),
            roles_claim: "roles".into(),
            clinic_claim: "clinic".into(),
            ..AuthConfig::default()
        }
    }
    fn pem_cfg(file: &str) -> AuthConfig {
        AuthConfig { hs256_secret: None, public_key: Some(key_file(file)), ..hs_cfg() }
    }

    fn claims(role: Value) -> Value {
        json!({ "sub": "alice", "exp": now_secs() + 600, "roles": role })
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }
    fn hs(claims: &Value) -> String {
        sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
    }
    fn rsa_key(name: &str) -> EncodingKey {
        EncodingKey::from_rsa_pem(key_text(name).as_bytes()).unwrap()
    }
    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(key_text("ec-private.pem").as_bytes()).unwrap()
    }
    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }
    /// A JWT with any header, signed with HMAC-SHA256 over `secret` by hand.
    fn hand_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
        let msg = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let tag = aws_lc_hmac(secret, msg.as_bytes());
        format!("{msg}.{}", b64(&tag))
    }
    fn aws_lc_hmac(secret: &[u8], msg: &[u8]) -> Vec<u8> {
        // jsonwebtoken's own HS256 signer over arbitrary key bytes.
        let key = EncodingKey::from_secret(secret);
        let sig = jsonwebtoken::crypto::sign(msg, &key, Algorithm::HS256).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap()
    }

    fn unauthenticated(r: Result<Principal, AuthError>) -> String {
        match r {
            Err(AuthError::Unauthenticated(m)) => m,
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
    }
    fn forbidden(r: Result<Principal, AuthError>) -> String {
        match r {
            Err(AuthError::Forbidden(m)) => m,
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }
    fn config_err(r: Result<Auth, AuthError>) -> String {
        match r {
            Err(AuthError::Config(m)) => m,
            Ok(_) => panic!("expected a configuration error, got Ok"),
            Err(e) => panic!("expected a configuration error, got {e:?}"),
        }
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert_eq!("Operator".parse::<Role>(), Ok(Role::Operator));
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().unwrap_err().contains("viewer, operator or admin"));
    }

    #[test]
    fn hs256_token_grants_its_role_and_no_more() {
        let auth = Auth::from_config(&hs_cfg()).unwrap();
        let t = hs(&claims(json!("viewer")));
        let p = auth.authorize(Some(&bearer(&t)), Role::Viewer).unwrap();
        assert_eq!(p, Principal { subject: "alice".into(), role: Role::Viewer, clinic: None });
        let m = forbidden(auth.authorize(Some(&bearer(&t)), Role::Operator));
        assert!(m.contains("operator") && m.contains("viewer"), "{m}");
        let admin = hs(&claims(json!("admin")));
        assert_eq!(auth.authorize(Some(&bearer(&admin)), Role::Operator).unwrap().role, Role::Admin);
        // scheme is case-insensitive
        assert!(auth.authorize(Some(&format!("bearer  {t}")), Role::Viewer).is_ok());
    }

    #[test]
    fn missing_or_malformed_header_is_unauthenticated() {
        let auth = Auth::from_config(&hs_cfg()).unwrap();
        assert!(unauthenticated(auth.authorize(None, Role::Viewer)).contains("Authorization"));
        let t = hs(&claims(json!("viewer")));
        assert!(unauthenticated(auth.authorize(Some(&format!("Basic {t}")), Role::Viewer)).contains("Bearer"));
        assert!(unauthenticated(auth.authorize(Some("Bearer"), Role::Viewer)).contains("empty"));
        assert!(unauthenticated(auth.authorize(Some("Bearer   "), Role::Viewer)).contains("empty"));
        assert!(unauthenticated(auth.authorize(Some("Bearer abc"), Role::Viewer)).contains("not a JWT"));
        assert!(unauthenticated(auth.authorize(Some("Bearer a.b.c"), Role::Viewer)).contains("malformed"));
        assert!(unauthenticated(auth.authorize(Some(&t), Role::Viewer)).contains("Bearer"));
    }

    #[test]
    fn alg_none_is_refused() {
        let auth = Auth::from_config(&hs_cfg()).unwrap();
        let body = b64(claims(json!("admin")).to_string().as_bytes());
        for alg in ["none", "None", "NONE"] {
            let header = b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
            for sig in ["", "AAAA"] {
                let t = format!("{header}.{body}.{sig}");
                let m = unauthenticated(auth.authorize(Some(&bearer(&t)), Role::Viewer));
                assert!(m.contains("alg: none"), "{m}");
            }
        }
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let cfg = hs_cfg();
        let auth = Auth::from_config(&cfg).unwrap();
        let secret = cfg.hs256_secret.as_ref().unwrap().0.as_bytes().to_vec();
        let good = claims(json!("admin"));
        // the same token without `crit` is accepted: the refusal is about crit
        let plain = hand_hs256(&json!({ "alg": "HS256", "typ": "JWT" }), &good, &secret);
        assert!(auth.authorize(Some(&bearer(&plain)), Role::Viewer).is_ok());
        for crit in [json!(["exp"]), json!(["b64"]), json!(["http://example.com/ext"]), json!([])] {
            let header =
                json!({ "alg": "HS256", "typ": "JWT", "crit": crit, "b64": false, "http://example.com/ext": 1 });
            let t = hand_hs256(&header, &good, &secret);
            let m = unauthenticated(auth.authorize(Some(&bearer(&t)), Role::Viewer));
            assert!(m.contains("crit"), "{m}");
        }
    }

    #[test]
    fn dev_mode_with_a_key_is_a_configuration_error() {
        let mut cfg = hs_cfg();
        cfg.dev_mode = true;
        let m = config_err(Auth::from_config(&cfg));
        assert!(m.contains("dev_mode") && m.contains("key"), "{m}");
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // The attacker knows the RSA public key and "signs" an HS256 token
        // with its bytes as the HMAC secret.
        let auth = Auth::from_config(&pem_cfg("rsa-public.pem")).unwrap();
        let public_pem = key_text("rsa-public.pem");
        let c = claims(json!("admin"));
        for secret in [public_pem.as_bytes(), public_pem.trim_end().as_bytes()] {
            let t = hand_hs256(&json!({ "alg": "HS256", "typ": "JWT" }), &c, secret);
            let m = unauthenticated(auth.authorize(Some(&bearer(&t)), Role::Viewer));
            assert!(m.contains("HS256") && m.contains("RS256"), "{m}");
        }
        // and an RS256 token is not accepted where an HS256 secret is configured
        let hs_auth = Auth::from_config(&hs_cfg()).unwrap();
        let t = sign(Algorithm::RS256, None, &rsa_key("rsa-private.pem"), &c);
        assert!(unauthenticated(hs_auth.authorize(Some(&bearer(&t)), Role::Viewer)).contains("RS256"));
        // nor an ES256 token where an RSA key is configured, nor PS256 with the right RSA key
        let t = sign(Algorithm::ES256, None, &ec_key(), &c);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&t)), Role::Viewer)).contains("ES256"));
        let t = sign(Algorithm::PS256, None, &rsa_key("rsa-private.pem"), &c);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&t)), Role::Viewer)).contains("PS256"));
    }

    #[test]
    fn bad_signature_is_unauthenticated() {
        let auth = Auth::from_config(&hs_cfg()).unwrap();
        let other = sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"another secret"), &claims(json!("admin")));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&other)), Role::Viewer)).contains("signature"));
        // a tampered payload under a valid signature
        let good = hs(&claims(json!("viewer")));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(claims(json!("admin")).to_string().as_bytes()), parts[2]);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&forged)), Role::Viewer)).contains("signature"));
    }

    #[test]
    fn exp_is_required_and_checked_nbf_is_checked() {
        let auth = Auth::from_config(&hs_cfg()).unwrap();
        let now = now_secs();
        let expired = hs(&json!({ "sub": "a", "roles": "admin", "exp": now - 3600 }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&expired)), Role::Viewer)).contains("expired"));
        let no_exp = hs(&json!({ "sub": "a", "roles": "admin" }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&no_exp)), Role::Viewer)).contains("`exp`"));
        let bad_exp = hs(&json!({ "sub": "a", "roles": "admin", "exp": "tomorrow" }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&bad_exp)), Role::Viewer)).contains("exp"));
        let future = hs(&json!({ "sub": "a", "roles": "admin", "exp": now + 7200, "nbf": now + 3600 }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&future)), Role::Viewer)).contains("nbf"));
        let started = hs(&json!({ "sub": "a", "roles": "admin", "exp": now + 7200, "nbf": now - 10 }));
        assert!(auth.authorize(Some(&bearer(&started)), Role::Viewer).is_ok());
        // within the clock-skew leeway
        let skewed = hs(&json!({ "sub": "a", "roles": "admin", "exp": now - 5 }));
        assert!(auth.authorize(Some(&bearer(&skewed)), Role::Viewer).is_ok());
    }

    #[test]
    fn aud_and_iss_are_checked_when_configured() {
        let cfg = AuthConfig { audience: Some("ferry".into()), issuer: Some("https://pms.example".into()), ..hs_cfg() };
        let auth = Auth::from_config(&cfg).unwrap();
        let exp = now_secs() + 600;
        let ok = hs(&json!({ "roles": "viewer", "exp": exp, "aud": "ferry", "iss": "https://pms.example" }));
        assert!(auth.authorize(Some(&bearer(&ok)), Role::Viewer).is_ok());
        let ok_list =
            hs(&json!({ "roles": "viewer", "exp": exp, "aud": ["other", "ferry"], "iss": "https://pms.example" }));
        assert!(auth.authorize(Some(&bearer(&ok_list)), Role::Viewer).is_ok());
        let wrong_aud = hs(&json!({ "roles": "viewer", "exp": exp, "aud": "other", "iss": "https://pms.example" }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&wrong_aud)), Role::Viewer)).contains("aud"));
        let no_aud = hs(&json!({ "roles": "viewer", "exp": exp, "iss": "https://pms.example" }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&no_aud)), Role::Viewer)).contains("`aud`"));
        let wrong_iss = hs(&json!({ "roles": "viewer", "exp": exp, "aud": "ferry", "iss": "https://evil.example" }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&wrong_iss)), Role::Viewer)).contains("iss"));
        let no_iss = hs(&json!({ "roles": "viewer", "exp": exp, "aud": "ferry" }));
        assert!(unauthenticated(auth.authorize(Some(&bearer(&no_iss)), Role::Viewer)).contains("`iss`"));
        // not configured: not looked at
        let plain = Auth::from_config(&hs_cfg()).unwrap();
        assert!(plain.authorize(Some(&bearer(&wrong_aud)), Role::Viewer).is_ok());
    }

    #[test]
    fn rs256_and_es256_public_keys() {
        let rsa = Auth::from_config(&pem_cfg("rsa-public.pem")).unwrap();
        assert!(rsa.describe().starts_with("RS256"), "{}", rsa.describe());
        let c = claims(json!(["operator"]));
        let t = sign(Algorithm::RS256, None, &rsa_key("rsa-private.pem"), &c);
        assert_eq!(rsa.authorize(Some(&bearer(&t)), Role::Operator).unwrap().role, Role::Operator);
        let other = sign(Algorithm::RS256, None, &rsa_key("rsa2-private.pem"), &c);
        assert!(unauthenticated(rsa.authorize(Some(&bearer(&other)), Role::Viewer)).contains("signature"));

        let ec = Auth::from_config(&pem_cfg("ec-public.pem")).unwrap();
        assert!(ec.describe().starts_with("ES256"), "{}", ec.describe());
        let t = sign(Algorithm::ES256, None, &ec_key(), &c);
        assert_eq!(ec.authorize(Some(&bearer(&t)), Role::Viewer).unwrap().subject, "alice");
        let rs = sign(Algorithm::RS256, None, &rsa_key("rsa-private.pem"), &c);
        assert!(unauthenticated(ec.authorize(Some(&bearer(&rs)), Role::Viewer)).contains("ES256"));
    }

    fn jwk_for(public_pem: &str, kid: &str, alg: Algorithm) -> Value {
        let text = key_text(public_pem);
        let key = match alg {
            Algorithm::ES256 => DecodingKey::from_ec_pem(text.as_bytes()).unwrap(),
            _ => DecodingKey::from_rsa_pem(text.as_bytes()).unwrap(),
        };
        let mut jwk = serde_json::to_value(Jwk::from_decoding_key(&key, None).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk
    }

    fn write_jwks(doc: &Value) -> (tempfile::TempDir, AuthConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        (dir, AuthConfig { hs256_secret: None, jwks: Some(path), ..hs_cfg() })
    }

    #[test]
    fn jwks_selects_the_key_by_kid() {
        let doc = json!({ "keys": [
            jwk_for("rsa-public.pem", "one", Algorithm::RS256),
            jwk_for("rsa2-public.pem", "two", Algorithm::RS256),
            jwk_for("ec-public.pem", "three", Algorithm::ES256),
        ]});
        let (_dir, cfg) = write_jwks(&doc);
        let auth = Auth::from_config(&cfg).unwrap();
        assert!(auth.describe().contains("3 keys"), "{}", auth.describe());
        let c = claims(json!("viewer"));
        let two = sign(Algorithm::RS256, Some("two"), &rsa_key("rsa2-private.pem"), &c);
        assert!(auth.authorize(Some(&bearer(&two)), Role::Viewer).is_ok());
        let one = sign(Algorithm::RS256, Some("one"), &rsa_key("rsa-private.pem"), &c);
        assert!(auth.authorize(Some(&bearer(&one)), Role::Viewer).is_ok());
        let three = sign(Algorithm::ES256, Some("three"), &ec_key(), &c);
        assert!(auth.authorize(Some(&bearer(&three)), Role::Viewer).is_ok());
        // the right key under the wrong kid
        let swapped = sign(Algorithm::RS256, Some("one"), &rsa_key("rsa2-private.pem"), &c);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&swapped)), Role::Viewer)).contains("signature"));
        // an ES256 token naming an RSA key's kid
        let mixed = sign(Algorithm::ES256, Some("one"), &ec_key(), &c);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&mixed)), Role::Viewer)).contains("ES256"));
        let unknown = sign(Algorithm::RS256, Some("four"), &rsa_key("rsa-private.pem"), &c);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&unknown)), Role::Viewer)).contains("`four`"));
        let no_kid = sign(Algorithm::RS256, None, &rsa_key("rsa-private.pem"), &c);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&no_kid)), Role::Viewer)).contains("kid"));
        // HS256 signed with an RSA key's JWK (or PEM) bytes under its kid
        let pem = key_text("rsa-public.pem");
        let forged = hand_hs256(&json!({ "alg": "HS256", "kid": "one" }), &c, pem.as_bytes());
        assert!(unauthenticated(auth.authorize(Some(&bearer(&forged)), Role::Viewer)).contains("HS256"));
    }

    #[test]
    fn jwks_single_key_needs_no_kid_and_symmetric_keys_are_refused() {
        let (_dir, cfg) = write_jwks(&json!({ "keys": [jwk_for("ec-public.pem", "only", Algorithm::ES256)] }));
        let auth = Auth::from_config(&cfg).unwrap();
        let t = sign(Algorithm::ES256, None, &ec_key(), &claims(json!("viewer")));
        assert!(auth.authorize(Some(&bearer(&t)), Role::Viewer).is_ok());

        let oct = json!({ "keys": [{ "kty": "oct", "kid": "s", "k": b64(SECRET.as_bytes()) }] });
        let (_dir, cfg) = write_jwks(&oct);
        assert!(config_err(Auth::from_config(&cfg)).contains("symmetric"));

        let mut wrong_alg = jwk_for("rsa-public.pem", "r", Algorithm::RS256);
        wrong_alg["alg"] = "ES256".into();
        let (_dir, cfg) = write_jwks(&json!({ "keys": [wrong_alg] }));
        assert!(config_err(Auth::from_config(&cfg)).contains("does not fit"));

        let mut hs_on_rsa = jwk_for("rsa-public.pem", "r", Algorithm::RS256);
        hs_on_rsa["alg"] = "HS256".into();
        let (_dir, cfg) = write_jwks(&json!({ "keys": [hs_on_rsa] }));
        assert!(config_err(Auth::from_config(&cfg)).contains("does not fit"));

        let (_dir, cfg) = write_jwks(&json!({ "keys": [] }));
        assert!(config_err(Auth::from_config(&cfg)).contains("no signing keys"));
        let (_dir, cfg) = write_jwks(&json!({ "nokeys": 1 }));
        assert!(config_err(Auth::from_config(&cfg)).contains("not a JWKS"));
    }

    #[test]
    fn jwks_alg_pins_the_algorithm() {
        let mut jwk = jwk_for("rsa-public.pem", "ps", Algorithm::RS256);
        jwk["alg"] = "PS256".into();
        let (_dir, cfg) = write_jwks(&json!({ "keys": [jwk] }));
        let auth = Auth::from_config(&cfg).unwrap();
        let c = claims(json!("viewer"));
        let ps = sign(Algorithm::PS256, Some("ps"), &rsa_key("rsa-private.pem"), &c);
        assert!(auth.authorize(Some(&bearer(&ps)), Role::Viewer).is_ok());
        let rs = sign(Algorithm::RS256, Some("ps"), &rsa_key("rsa-private.pem"), &c);
        assert!(unauthenticated(auth.authorize(Some(&bearer(&rs)), Role::Viewer)).contains("RS256"));
    }

    #[test]
    fn roles_claim_string_array_and_path() {
        let auth = Auth::from_config(&hs_cfg()).unwrap();
        let role = |v: Value| auth.authorize(Some(&bearer(&hs(&claims(v)))), Role::Viewer);
        assert_eq!(role(json!(["viewer", "operator"])).unwrap().role, Role::Operator);
        assert_eq!(role(json!(["billing", "ADMIN", "viewer"])).unwrap().role, Role::Admin);
        assert_eq!(role(json!("viewer operator")).unwrap().role, Role::Operator);
        assert!(forbidden(role(json!(["billing"]))).contains("no ferry role"));
        assert!(forbidden(role(json!([]))).contains("no ferry role"));
        assert!(forbidden(role(json!(7))).contains("no ferry role"));
        let none = hs(&json!({ "sub": "a", "exp": now_secs() + 60 }));
        assert!(forbidden(auth.authorize(Some(&bearer(&none)), Role::Viewer)).contains("`roles`"));

        let cfg = AuthConfig { roles_claim: "realm_access.roles".into(), ..hs_cfg() };
        let nested = Auth::from_config(&cfg).unwrap();
        let t = hs(&json!({ "exp": now_secs() + 60, "realm_access": { "roles": ["offline", "operator"] } }));
        assert_eq!(nested.authorize(Some(&bearer(&t)), Role::Operator).unwrap().role, Role::Operator);
        assert_eq!(nested.authorize(Some(&bearer(&t)), Role::Operator).unwrap().subject, "unknown");
    }

    #[test]
    fn clinic_claim_must_match_the_configured_clinic() {
        let cfg = AuthConfig { clinic_id: Some("clinic-7".into()), ..hs_cfg() };
        let auth = Auth::from_config(&cfg).unwrap();
        let with = |clinic: Value| {
            let mut c = claims(json!("viewer"));
            c["clinic"] = clinic;
            auth.authorize(Some(&bearer(&hs(&c))), Role::Viewer)
        };
        assert_eq!(with(json!("clinic-7")).unwrap().clinic.as_deref(), Some("clinic-7"));
        let m = forbidden(with(json!("clinic-8")));
        assert!(m.contains("another clinic") && m.contains("clinic-7"), "{m}");
        assert!(forbidden(with(json!(["clinic-7"]))).contains("not a string"));
        // no clinic claim: accepted (tokens are per deployment by default)
        assert_eq!(with(Value::Null).unwrap().clinic, None);
        // no clinic configured: any clinic claim is accepted and reported
        let open = Auth::from_config(&hs_cfg()).unwrap();
        let mut c = claims(json!("viewer"));
        c["clinic"] = "clinic-9".into();
        assert_eq!(open.authorize(Some(&bearer(&hs(&c))), Role::Viewer).unwrap().clinic.as_deref(), Some("clinic-9"));
        // a custom claim name
        let cfg = AuthConfig { clinic_claim: "https://pms/clinic".into(), clinic_id: Some("c1".into()), ..hs_cfg() };
        let custom = Auth::from_config(&cfg).unwrap();
        let mut c = claims(json!("viewer"));
        c["https://pms/clinic"] = "c2".into();
        assert!(forbidden(custom.authorize(Some(&bearer(&hs(&c))), Role::Viewer)).contains("c1"));
    }

    #[test]
    fn dev_mode_lets_everyone_in_as_admin() {
        let cfg = AuthConfig { hs256_secret: None, dev_mode: true, ..hs_cfg() };
        let auth = Auth::from_config(&cfg).unwrap();
        assert!(auth.is_dev_mode());
        let p = auth.authorize(None, Role::Admin).unwrap();
        assert_eq!((p.subject.as_str(), p.role), ("dev", Role::Admin));
        assert_eq!(auth.authorize(Some("Bearer garbage"), Role::Admin).unwrap().role, Role::Admin);
    }

    #[test]
    fn configuration_errors() {
        let nothing = AuthConfig { hs256_secret: None, ..hs_cfg() };
        assert!(config_err(Auth::from_config(&nothing)).contains("dev_mode"));
        let two = AuthConfig { public_key: Some(key_file("rsa-public.pem")), ..hs_cfg() };
        assert!(config_err(Auth::from_config(&two)).contains("only one"));
        let empty = AuthConfig { hs256_secret: Some(Secret(String::new())), ..hs_cfg() };
        assert!(config_err(Auth::from_config(&empty)).contains("empty"));
        assert!(config_err(Auth::from_config(&pem_cfg("rsa-private.pem"))).contains("private key"));
        assert!(config_err(Auth::from_config(&pem_cfg("no-such.pem"))).contains("cannot read"));
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        let cfg = AuthConfig { hs256_secret: None, public_key: Some(junk), ..hs_cfg() };
        assert!(config_err(Auth::from_config(&cfg)).contains("not a usable"));
    }

    #[test]
    fn errors_never_echo_the_token() {
        let cfg = AuthConfig { audience: Some("ferry".into()), clinic_id: Some("c1".into()), ..hs_cfg() };
        let auth = Auth::from_config(&cfg).unwrap();
        let now = now_secs();
        let tokens = [
            hs(&json!({ "roles": "viewer", "exp": now - 999, "aud": "ferry" })),
            hs(&json!({ "roles": "viewer", "exp": now + 99, "aud": "nope" })),
            hs(&json!({ "roles": "viewer", "exp": now + 99, "aud": "ferry", "clinic": "c2" })),
            hs(&json!({ "roles": "nothing", "exp": now + 99, "aud": "ferry" })),
            sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"x"), &json!({ "exp": now + 99 })),
        ];
        for t in tokens {
            let e = auth.authorize(Some(&bearer(&t)), Role::Admin).unwrap_err().to_string();
            for part in t.split('.') {
                assert!(!e.contains(part), "error `{e}` quotes the token");
            }
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_the_configured_claims() {
        let cfg = AuthConfig {
            audience: Some("ferry".into()),
            issuer: Some("ferry-cli".into()),
            clinic_id: Some("c1".into()),
            ..hs_cfg()
        };
        let auth = Auth::from_config(&cfg).unwrap();
        let t = mint(&cfg, "bob", Role::Operator, Duration::from_secs(3600), Some("c1")).unwrap();
        let p = auth.authorize(Some(&bearer(&t)), Role::Operator).unwrap();
        assert_eq!(p, Principal { subject: "bob".into(), role: Role::Operator, clinic: Some("c1".into()) });
        assert!(forbidden(auth.authorize(Some(&bearer(&t)), Role::Admin)).contains("admin"));
        let elsewhere = mint(&cfg, "bob", Role::Admin, Duration::from_secs(60), Some("c2")).unwrap();
        assert!(forbidden(auth.authorize(Some(&bearer(&elsewhere)), Role::Viewer)).contains("another clinic"));

        let nested_cfg = AuthConfig { roles_claim: "realm_access.roles".into(), ..hs_cfg() };
        let nested = mint(&nested_cfg, "n", Role::Admin, Duration::from_secs(60), None).unwrap();
        let a = Auth::from_config(&nested_cfg).unwrap();
        assert_eq!(a.authorize(Some(&bearer(&nested)), Role::Admin).unwrap().role, Role::Admin);

        let err = mint(&pem_cfg("rsa-public.pem"), "x", Role::Viewer, Duration::from_secs(60), None).unwrap_err();
        assert!(matches!(&err, AuthError::Config(m) if m.contains("hs256_secret")), "{err}");
        let err = mint(&AuthConfig::default(), "x", Role::Viewer, Duration::from_secs(60), None).unwrap_err();
        assert!(err.to_string().contains("hs256_secret"), "{err}");
        assert!(mint(&cfg, "x", Role::Viewer, Duration::ZERO, None).is_err());
    }

    #[test]
    fn token_command_uses_the_pipeline_serve_auth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for name in ["sidexis", "dicom-meta", "csv-resolver", "store"] {
            std::fs::write(dir.path().join("plugins").join(format!("{name}.wasm")), b"").unwrap();
        }
        let base = r#"
[pipeline]
name = "t"
plugin_path = ["plugins"]
state_dir = "state"
[source]
plugin = "sidexis"
[extractor]
plugin = "dicom-meta"
[resolver]
plugin = "csv-resolver"
[store]
plugin = "store"
"#;
        let env = |_: &str| None;
        let plain = crate::config::Pipeline::parse(&path, base, &env).unwrap();
        let e = token_command(&plain, "viewer", Duration::from_secs(60), "me", None).unwrap_err().to_string();
        assert!(e.contains("[serve.auth]"), "{e}");

        let with = format!("{base}\n[serve.auth]\nhs256_secret = \"{SECRET}\"\naudience = \"ferry\"\n");
        let p = crate::config::Pipeline::parse(&path, &with, &env).unwrap();
        assert!(token_command(&p, "root", Duration::from_secs(60), "me", None)
            .unwrap_err()
            .to_string()
            .contains("unknown role"));
        let t = token_command(&p, "operator", Duration::from_secs(60), "me", None).unwrap();
        let auth = Auth::from_config(&p.serve.as_ref().unwrap().auth).unwrap();
        assert_eq!(auth.authorize(Some(&bearer(&t)), Role::Operator).unwrap().subject, "me");
    }
}
