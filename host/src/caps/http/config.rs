//! `grants.http_auth`: credentials the host adds to a stage's requests to
//! one granted host, so the plugin never holds them.
//!
//! A plugin that held an API key or a client secret could send it
//! anywhere it may connect, print it into an error, or keep a token past
//! its life; a host that holds them can refuse all three. So credentials
//! are part of the grant, next to the host they are for: the host puts
//! them on every request to that host (replacing an `Authorization` the
//! plugin set), only over `https` (or to the loopback interface), and
//! fetches, caches and refreshes OAuth2 tokens itself
//! ([`super::auth`]). Values come from the environment (`${VAR}`) and are
//! never printed.

use serde::Deserialize;

use crate::units::{Problem, Secret};

/// Credentials for one granted host.
///
/// ```toml
/// [source.grants]
/// http = ["fhir.provider.example", "api.opendental.com"]
///
/// # OAuth2 client credentials; SMART Backend Services' private_key_jwt:
/// [source.grants.http_auth."fhir.provider.example"]
/// kind = "oauth2"
/// token_url = "https://fhir.provider.example/auth/token"
/// client_id = "ferry-clinic-12"
/// private_key = "${PROVIDER_PRIVATE_KEY}"  # PEM, RSA (RS384) or EC P-384 (ES384)
/// key_id = "ferry-2026-12"                 # the `kid` of the key in your JWKS
/// scope = "system/DocumentReference.read system/Binary.read system/Patient.read"
/// # or a shared secret: client_secret = "${PROVIDER_CLIENT_SECRET}"
///
/// # A fixed header (Open Dental: ODFHIR {DeveloperKey}/{CustomerKey}):
/// [store.grants.http_auth."api.opendental.com"]
/// kind = "header"
/// name = "Authorization"
/// value = "ODFHIR ${OD_DEVELOPER_KEY}/${OD_CUSTOMER_KEY}"
///
/// # also: kind = "bearer", token = "${TOKEN}"
/// #       kind = "basic", user = "ferry", password = "${PASSWORD}"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum HttpAuth {
    /// `Authorization: Bearer <token>`.
    #[serde(rename = "bearer")]
    Bearer { token: Secret },
    /// `Authorization: Basic base64(user:password)`.
    #[serde(rename = "basic")]
    Basic { user: String, password: Secret },
    /// Any one header, e.g. an API key header.
    #[serde(rename = "header")]
    Header { name: String, value: Secret },
    /// OAuth2 client credentials (RFC 6749 §4.4), the client authenticated
    /// by a secret or by a signed JWT (RFC 7523, SMART Backend Services).
    #[serde(rename = "oauth2")]
    OAuth2(OAuth2Config),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub token_url: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// How a `client_secret` is sent: `"basic"` (HTTP Basic, the default)
    /// or `"post"` (form fields).
    #[serde(default)]
    pub secret_method: Option<String>,
    #[serde(default)]
    pub private_key: Option<Secret>,
    #[serde(default)]
    pub key_id: Option<String>,
    /// `RS384` or `ES384` (SMART's two); by default from the key's type.
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// Is `host` the loopback interface (where plain http is acceptable)?
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl HttpAuth {
    /// What is wrong with it, each problem under `key`
    /// (`source.grants.http_auth."host"`).
    pub fn problems(&self, key: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut fail = |k: &str, m: String| out.push((format!("{key}{k}"), m));
        match self {
            HttpAuth::Bearer { token } => {
                if token.0.trim().is_empty() || !header_safe(&token.0) {
                    fail(".token", "must be a non-empty token without line breaks".into());
                }
            }
            HttpAuth::Basic { user, password } => {
                if user.is_empty() || user.contains(':') || !header_safe(user) || !header_safe(&password.0) {
                    fail("", "user must be non-empty without `:`; neither may hold line breaks".into());
                }
            }
            HttpAuth::Header { name, value } => {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    fail(".name", format!("`{name}` is not a valid HTTP header name"));
                }
                if value.0.is_empty() || !header_safe(&value.0) {
                    fail(".value", "must be non-empty, without line breaks or control characters".into());
                }
            }
            HttpAuth::OAuth2(o) => o.problems(&mut fail),
        }
        out
    }
}

impl OAuth2Config {
    fn problems(&self, fail: &mut dyn FnMut(&str, String)) {
        match url::Url::parse(&self.token_url) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && u.host_str().is_some_and(is_loopback) => {}
            Ok(_) => fail(".token_url", "must be an https URL (http only to 127.0.0.1 / localhost)".into()),
            Err(e) => fail(".token_url", format!("`{}` is not a URL: {e}", self.token_url)),
        }
        if self.client_id.trim().is_empty() {
            fail(".client_id", "must not be empty".into());
        }
        match (&self.client_secret, &self.private_key) {
            (Some(_), Some(_)) => fail("", "give client_secret or private_key, not both".into()),
            (None, None) => fail(
                "",
                "give client_secret = \"${…}\" (a shared secret) or private_key = \"${…}\" (private_key_jwt)".into(),
            ),
            (Some(s), None) => {
                if s.0.is_empty() {
                    fail(".client_secret", "is empty (is the environment variable set to nothing?)".into());
                }
                if self.key_id.is_some() || self.algorithm.is_some() {
                    fail("", "key_id and algorithm go with private_key, not client_secret".into());
                }
                match self.secret_method.as_deref() {
                    None | Some("basic") | Some("post") => {}
                    Some(m) => fail(".secret_method", format!("`{m}` is not \"basic\" or \"post\"")),
                }
            }
            (None, Some(k)) => {
                if self.secret_method.is_some() {
                    fail(".secret_method", "goes with client_secret, not private_key".into());
                }
                if self.key_id.as_deref().is_none_or(|k| k.trim().is_empty()) {
                    fail(
                        ".key_id",
                        "is needed with private_key: the `kid` under which the server knows the key".into(),
                    );
                }
                if let Err(m) = super::auth::signing_key(k, self.algorithm.as_deref()) {
                    fail(".private_key", m);
                }
            }
        }
        if let Some(s) = &self.scope {
            if !header_safe(s) {
                fail(".scope", "must not hold line breaks".into());
            }
        }
    }
}

fn header_safe(v: &str) -> bool {
    !v.chars().any(|c| c.is_control())
}
