//! The verifier and the minting of tokens, against real keys.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};

use super::token::now_secs;
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
        let header = json!({ "alg": "HS256", "typ": "JWT", "crit": crit, "b64": false, "http://example.com/ext": 1 });
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
