//! Credentials at request time: the header the host puts on a request to
//! a host with `grants.http_auth` ([`super::config`]), and the OAuth2
//! client that gets, caches and refreshes tokens.
//!
//! One [`OAuthClient`] per (token URL, client, scope) for the whole
//! pipeline: every instance of every stage shares its token, a fetch is
//! single-flight (the others wait for it), a token is renewed a minute (at
//! most a tenth of its life) before it expires, and a `401` from the
//! resource server drops the token that was refused and retries once with
//! a new one. Tokens, secrets and assertions are never logged or put into
//! errors; the token endpoint's own `error` / `error_description` are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use tokio::time::Instant;

use super::config::{HttpAuth, OAuth2Config};
use crate::bindings::types::HostError;

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a client assertion (SMART: at most five minutes).
const ASSERTION_LIFETIME: u64 = 300;
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Largest token endpoint answer read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// The credential for one granted host.
pub enum Credential {
    /// A header with a fixed value (bearer, basic, any header).
    Static {
        name: HeaderName,
        value: HeaderValue,
    },
    OAuth(Arc<OAuthClient>),
}

impl Credential {
    /// The header this credential sets.
    pub fn header_name(&self) -> &HeaderName {
        match self {
            Credential::Static { name, .. } => name,
            Credential::OAuth(_) => &AUTHORIZATION,
        }
    }

    /// The header's value for the next request, fetching a token if need be.
    pub async fn value(&self, client: &reqwest::Client, deadline: Instant) -> Result<HeaderValue, HostError> {
        match self {
            Credential::Static { value, .. } => Ok(value.clone()),
            Credential::OAuth(o) => o.bearer(client, deadline).await,
        }
    }
}

/// OAuth clients by (token URL, client id, scope), shared by the pipeline.
#[derive(Default)]
pub struct OAuthClients(Mutex<HashMap<String, Arc<OAuthClient>>>);

impl OAuthClients {
    /// The credential `auth` describes (an OAuth client shared with every
    /// stage configured alike).
    pub fn credential(&self, auth: &HttpAuth) -> anyhow::Result<Credential> {
        let fixed = |name: HeaderName, v: String| {
            let mut value = HeaderValue::from_str(&v).map_err(|_| anyhow::anyhow!("not a valid header value"))?;
            value.set_sensitive(true);
            Ok(Credential::Static { name, value })
        };
        match auth {
            HttpAuth::Bearer { token } => fixed(AUTHORIZATION, format!("Bearer {}", token.0)),
            HttpAuth::Basic { user, password } => {
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.0));
                fixed(AUTHORIZATION, format!("Basic {b}"))
            }
            HttpAuth::Header { name, value } => fixed(HeaderName::from_bytes(name.as_bytes())?, value.0.clone()),
            HttpAuth::OAuth2(o) => {
                let id = format!("{}\n{}\n{}", o.token_url, o.client_id, o.scope.as_deref().unwrap_or(""));
                let mut map = self.0.lock().unwrap();
                if let Some(c) = map.get(&id) {
                    return Ok(Credential::OAuth(c.clone()));
                }
                let key = match &o.private_key {
                    Some(k) => Some(signing_key(k, o.algorithm.as_deref()).map_err(|m| anyhow::anyhow!(m))?),
                    None => None,
                };
                let c = Arc::new(OAuthClient { config: o.clone(), key, token: Default::default() });
                map.insert(id, c.clone());
                Ok(Credential::OAuth(c))
            }
        }
    }
}

/// The signing key of a `private_key` PEM and its algorithm (`RS384` for
/// RSA, `ES384` for EC P-384 unless `algorithm` says), checked by signing.
pub fn signing_key(pem: &crate::units::Secret, algorithm: Option<&str>) -> Result<(EncodingKey, Algorithm), String> {
    let alg = match algorithm {
        None => None,
        Some("RS384") => Some(Algorithm::RS384),
        Some("ES384") => Some(Algorithm::ES384),
        Some("RS256") => Some(Algorithm::RS256),
        Some("ES256") => Some(Algorithm::ES256),
        Some(a) => return Err(format!("algorithm `{a}` is not one of RS384, ES384 (SMART), RS256, ES256")),
    };
    let pem = pem.0.as_bytes();
    let rsa = || EncodingKey::from_rsa_pem(pem).ok();
    let ec = || EncodingKey::from_ec_pem(pem).ok();
    let (key, alg) = match alg {
        Some(a @ (Algorithm::RS384 | Algorithm::RS256)) => (rsa(), a),
        Some(a) => (ec(), a),
        None => match rsa() {
            Some(k) => (Some(k), Algorithm::RS384),
            None => (ec(), Algorithm::ES384),
        },
    };
    let Some(key) = key else {
        return Err("is not a PEM private key of the algorithm's kind (RSA for RS*, EC for ES*)".into());
    };
    // a P-256 key given for ES384 fails here, not at the first token
    jsonwebtoken::encode(&Header::new(alg), &serde_json::json!({}), &key)
        .map_err(|_| format!("cannot sign with {alg:?} (for ES384 the key must be on curve P-384)"))?;
    Ok((key, alg))
}

/// A token and when to stop using it.
struct Token {
    value: HeaderValue,
    renew_at: Instant,
}

impl Token {
    /// A token that lives `lifetime` from now, renewed a minute (at most a
    /// tenth of its life) before it ends.
    fn new(value: HeaderValue, lifetime: Duration) -> Token {
        let margin = Duration::from_secs(60).min(lifetime / 10);
        Token { value, renew_at: Instant::now() + lifetime.saturating_sub(margin) }
    }
}

pub struct OAuthClient {
    config: OAuth2Config,
    key: Option<(EncodingKey, Algorithm)>,
    token: tokio::sync::Mutex<Option<Token>>,
}

impl OAuthClient {
    /// `Bearer <token>`, from the cache or the token endpoint.
    pub async fn bearer(&self, client: &reqwest::Client, deadline: Instant) -> Result<HeaderValue, HostError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(t.value.clone());
        }
        let (token, lifetime) = self.fetch(client, deadline).await?;
        *slot = Some(Token::new(token.clone(), lifetime));
        Ok(token)
    }

    /// Forgets `refused` (if it is still the cached token), after a 401.
    pub async fn refused(&self, refused: &HeaderValue) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == refused) {
            *slot = None;
        }
    }

    /// For `ferry check`: a fresh token's lifetime.
    pub async fn probe(&self, client: &reqwest::Client) -> Result<Duration, HostError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (token, lifetime) = self.fetch(client, deadline).await?;
        *self.token.lock().await = Some(Token::new(token, lifetime));
        Ok(lifetime)
    }

    pub fn client_id(&self) -> &str {
        &self.config.client_id
    }

    /// One token from the endpoint: transport failures, 429 and 5xx are
    /// tried again (three attempts, within the deadline).
    async fn fetch(&self, client: &reqwest::Client, deadline: Instant) -> Result<(HeaderValue, Duration), HostError> {
        let c = &self.config;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut b = client
                .post(&c.token_url)
                .timeout(remaining.min(Duration::from_secs(30)))
                .header(reqwest::header::ACCEPT, "application/json");
            let body = {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "client_credentials");
                if let Some(s) = &c.scope {
                    form.append_pair("scope", s);
                }
                match (&c.client_secret, &self.key) {
                    (Some(secret), _) if c.secret_method.as_deref() == Some("post") => {
                        form.append_pair("client_id", &c.client_id);
                        form.append_pair("client_secret", &secret.0);
                    }
                    (Some(secret), _) => b = b.basic_auth(form_encode(&c.client_id), Some(form_encode(&secret.0))),
                    (None, Some((key, alg))) => {
                        form.append_pair("client_assertion_type", JWT_BEARER);
                        form.append_pair("client_assertion", &self.assertion(key, *alg)?);
                    }
                    (None, None) => return Err(HostError::Invalid("oauth2 without a secret or key".into())),
                }
                form.finish()
            };
            let b = b.header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(body);
            let answer = async {
                let resp = b.send().await.map_err(|e| self.unavailable(&e))?;
                let status = resp.status().as_u16();
                let body = super::read_capped(resp, MAX_TOKEN_ANSWER).await.map_err(|e| match e {
                    super::Capped::Transport(e) => self.unavailable(&e),
                    super::Capped::TooLarge => HostError::Failed(format!(
                        "the token endpoint {} answered more than {MAX_TOKEN_ANSWER} bytes",
                        c.token_url
                    )),
                })?;
                Ok((status, body))
            }
            .await;
            let retry = match &answer {
                Err(HostError::Unavailable(_)) => true,
                Ok((s, _)) => *s == 429 || *s >= 500,
                Err(_) => false,
            };
            let wait = super::BACKOFF.jittered(attempt);
            if retry && attempt < 3 && Instant::now() + wait + Duration::from_millis(50) < deadline {
                tracing::debug!(url = %c.token_url, attempt, "retrying the token request");
                tokio::time::sleep(wait).await;
                continue;
            }
            let (status, body) = answer?;
            return self.token_of(status, &body);
        }
    }

    /// The token endpoint's answer → a bearer header and its lifetime.
    fn token_of(&self, status: u16, body: &[u8]) -> Result<(HeaderValue, Duration), HostError> {
        let c = &self.config;
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        if status != 200 {
            let field = |k: &str| json.as_ref().and_then(|j| j.get(k)).and_then(|v| v.as_str()).map(clip);
            let why = match (field("error"), field("error_description")) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e,
                _ => format!("HTTP {status}"),
            };
            let msg = format!(
                "the token endpoint {} refused client `{}` ({why}); check the client id, its secret or key, \
                 and the scope in grants.http_auth",
                c.token_url, c.client_id
            );
            return Err(if status == 429 || status >= 500 {
                HostError::Unavailable(msg)
            } else {
                HostError::Denied(msg)
            });
        }
        let json = json.ok_or_else(|| {
            HostError::Failed(format!("the token endpoint {} answered 200 without JSON", c.token_url))
        })?;
        let token = json.get("access_token").and_then(|v| v.as_str()).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(HostError::Failed(format!("the token endpoint {} gave no access_token", c.token_url)));
        };
        let kind = json.get("token_type").and_then(|v| v.as_str()).unwrap_or("Bearer");
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(HostError::Failed(format!(
                "the token endpoint {} gave a `{}` token; ferry sends bearer tokens only",
                c.token_url,
                clip(kind)
            )));
        }
        let lifetime = match json.get("expires_in") {
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_LIFETIME),
            None => DEFAULT_LIFETIME,
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            HostError::Failed(format!("the token endpoint {} gave a token that is not a header value", c.token_url))
        })?;
        value.set_sensitive(true);
        Ok((value, lifetime.max(Duration::from_secs(1))))
    }

    /// A fresh client assertion (RFC 7523; SMART Backend Services).
    fn assertion(&self, key: &EncodingKey, alg: Algorithm) -> Result<String, HostError> {
        let c = &self.config;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = serde_json::json!({
            "iss": c.client_id,
            "sub": c.client_id,
            "aud": c.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
        });
        let mut header = Header::new(alg);
        header.typ = Some("JWT".into());
        header.kid = c.key_id.clone();
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| HostError::Failed(format!("cannot sign the client assertion: {e}")))
    }

    fn unavailable(&self, e: &reqwest::Error) -> HostError {
        HostError::Unavailable(format!(
            "the token endpoint {} cannot be reached: {}",
            self.config.token_url,
            crate::util::root_cause(e)
        ))
    }
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before Basic.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A peer's text, short and on one line.
fn clip(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> OAuthClient {
        OAuthClient {
            config: OAuth2Config {
                token_url: "https://auth.example/token".into(),
                client_id: "ferry".into(),
                client_secret: Some(crate::units::Secret("s3cr3t".into())),
                secret_method: None,
                private_key: None,
                key_id: None,
                algorithm: None,
                scope: None,
            },
            key: None,
            token: Default::default(),
        }
    }

    #[test]
    fn token_answers() {
        let c = client();
        let (v, life) = c.token_of(200, br#"{"access_token":"abc","token_type":"bearer","expires_in":"120"}"#).unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer abc");
        assert!(v.is_sensitive());
        assert_eq!(life, Duration::from_secs(120));
        let (_, life) = c.token_of(200, br#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(life, DEFAULT_LIFETIME);
        let e = c.token_of(401, br#"{"error":"invalid_client","error_description":"unknown client"}"#).unwrap_err();
        let HostError::Denied(m) = e else { panic!("{e:?}") };
        assert!(m.contains("invalid_client: unknown client") && m.contains("`ferry`") && !m.contains("s3cr3t"), "{m}");
        assert!(matches!(c.token_of(503, b"busy"), Err(HostError::Unavailable(_))));
        assert!(matches!(c.token_of(200, br#"{"access_token":"a","token_type":"mac"}"#), Err(HostError::Failed(_))));
        assert!(matches!(c.token_of(200, b"<html>"), Err(HostError::Failed(_))));
    }

    #[test]
    fn keys_are_checked_by_signing() {
        let bad = crate::units::Secret("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into());
        assert!(signing_key(&bad, None).is_err());
        assert!(signing_key(&bad, Some("HS256")).unwrap_err().contains("HS256"));
    }

    #[test]
    fn loopback() {
        use super::super::config::is_loopback;
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.5") && !is_loopback("fhir.example"));
    }
}
