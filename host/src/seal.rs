//! Sealing PHI at rest: the records' free-text fields (contact details,
//! medical history, dietary preferences) are stored AES-256-GCM encrypted,
//! so a copied database file, a backup or a support dump does not carry
//! them readable.
//!
//! Why this shape:
//! - **The key comes from the environment** (`[serve.records] key =
//!   "${FERRY_RECORDS_KEY}"`, 32 bytes in standard base64: `openssl rand
//!   -base64 32`), never from a file next to the database it protects.
//! - **Each value names its key** by a key id (the first 8 hex digits of
//!   the key's SHA-256, so no key is ever written down), which is what makes
//!   rotation possible: the new key becomes `key`, the old one moves to
//!   `previous_keys`; values sealed with either open, every write seals with
//!   the new one, and `ferry reseal PIPELINE` rewrites the rest so the old
//!   key can go.
//! - **Bound to where it is stored**: the associated data is the table,
//!   column and row (`patients.medical_history:<guid>`), so a ciphertext
//!   copied into another patient's row or another column does not open.
//! - The cipher comes from aws-lc-rs, already in the tree for TLS.
//!
//! Format: `fs1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

const PREFIX: &str = "fs1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A configured key is not usable (the message says which and why).
    #[error("{0}")]
    Key(String),
    /// A stored value does not open: another key, moved, or damaged.
    #[error("a sealed value {0}")]
    Open(String),
}

/// The keys: one to seal with, any number more to open with.
pub struct Sealer {
    /// (key id, key); the first seals.
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key_ids", &self.key_ids()).finish()
    }
}

/// The key id of a raw key: the first 8 hex digits of its SHA-256.
fn key_id(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))[..8].to_owned()
}

impl Sealer {
    /// `current` seals; `previous` (older keys, after a rotation) only
    /// open. Each is 32 bytes in standard base64; `what` names each one in
    /// errors (`[serve.records] key`, `previous_keys[0]`).
    pub fn new(current: &str, previous: &[&str]) -> Result<Sealer, SealError> {
        let mut keys = Vec::new();
        let all = std::iter::once(("[serve.records] key".to_string(), current))
            .chain(previous.iter().enumerate().map(|(i, k)| (format!("[serve.records] previous_keys[{i}]"), *k)));
        for (what, b64) in all {
            let raw = STANDARD.decode(b64.trim()).map_err(|_| {
                SealError::Key(format!(
                    "{what} is not base64; make one with `openssl rand -base64 32` and put it in the environment"
                ))
            })?;
            if raw.len() != 32 {
                return Err(SealError::Key(format!(
                    "{what} is {} bytes; AES-256 needs exactly 32 (`openssl rand -base64 32`)",
                    raw.len()
                )));
            }
            let id = key_id(&raw);
            if keys.iter().any(|(k, _)| *k == id) {
                continue;
            }
            let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| SealError::Key(format!("{what} is refused")))?;
            keys.push((id, LessSafeKey::new(key)));
        }
        Ok(Sealer { keys, rng: SystemRandom::new() })
    }

    /// The ids of the keys, the sealing one first (for `ferry check`).
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Seals `plain` for the place `aad` names (`table.column:row`).
    pub fn seal(&self, aad: &str, plain: &str) -> String {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system's random source works");
        let mut buf = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .expect("AES-GCM seals any length ferry stores");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}.{id}.{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value [`seal`](Self::seal) made for the same `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<String, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(PREFIX), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Open("is not in ferry's sealed format".into()));
        };
        let Some((_, key)) = self.keys.iter().find(|(k, _)| k == id) else {
            return Err(SealError::Open(format!(
                "was sealed with key {id}, which is not configured (add it to [serve.records] previous_keys)"
            )));
        };
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| SealError::Open("is damaged (not base64)".into()))?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Open("is damaged (too short)".into()));
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open("is damaged".into()))?;
        let mut buf = rest.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open("does not open: damaged, or moved from another row or column".into()))?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open("is not text".into()))
    }

    /// Was `sealed` made with the key that seals now? (`false`: reseal it.)
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) == Some(self.keys[0].0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // "0123456789abcdef0123456789abcdef"
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn seals_open_only_in_place_and_with_a_known_key() {
        let s = Sealer::new(K1, &[]).unwrap();
        let a = s.seal("patients.medical_history:g1", "Diabetes Typ 2");
        let b = s.seal("patients.medical_history:g1", "Diabetes Typ 2");
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.contains("Diabetes"));
        assert!(a.starts_with(&format!("fs1.{}.", s.key_ids()[0])));
        assert_eq!(s.open("patients.medical_history:g1", &a).unwrap(), "Diabetes Typ 2");
        // moved to another row or column
        assert!(s.open("patients.medical_history:g2", &a).is_err());
        assert!(s.open("patients.dietary_preferences:g1", &a).is_err());
        // damaged
        let mut bad = a.clone();
        bad.pop();
        bad.push(if a.ends_with('A') { 'B' } else { 'A' });
        assert!(s.open("patients.medical_history:g1", &bad).is_err());
        for junk in ["", "fs1", "fs1.x.y", "plain text", "fs1.00000000.AAAA"] {
            assert!(s.open("x", junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let old = Sealer::new(K1, &[]).unwrap();
        let v = old.seal("users.x:1", "old secret");
        let rotated = Sealer::new(K2, &[K1]).unwrap();
        assert_eq!(rotated.open("users.x:1", &v).unwrap(), "old secret");
        assert!(!rotated.is_current(&v));
        let w = rotated.seal("users.x:1", "new");
        assert!(rotated.is_current(&w));
        let e = old.open("users.x:1", &w).unwrap_err();
        assert!(e.to_string().contains("previous_keys"), "{e}");
    }

    #[test]
    fn bad_keys_are_named() {
        let e = Sealer::new("not base64!", &[]).unwrap_err().to_string();
        assert!(e.contains("[serve.records] key") && e.contains("openssl rand -base64 32"), "{e}");
        let e = Sealer::new(K1, &["c2hvcnQ="]).unwrap_err().to_string();
        assert!(e.contains("previous_keys[0]") && e.contains("5 bytes"), "{e}");
    }
}
