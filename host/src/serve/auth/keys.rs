//! Where verification keys come from: an HS256 secret, a PEM public key,
//! or a JWKS document. Each key fixes the one algorithm it accepts, so a
//! token can never choose its own.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{AuthError, VerifyKey};

pub(super) fn read_key_file(path: &Path, what: &str) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|e| AuthError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// A PEM public key; its type fixes the algorithm.
pub(super) fn load_public_pem(path: &Path) -> Result<VerifyKey, AuthError> {
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
pub(super) fn rsa_key_ok(key: &DecodingKey) -> bool {
    matches!(Jwk::from_decoding_key(key, None).map(|j| j.algorithm), Ok(AlgorithmParameters::RSA(_)))
}

/// The public signing keys of a JWKS file.
pub(super) fn load_jwks(path: &Path) -> Result<Vec<VerifyKey>, AuthError> {
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
