//! Sealing secrets the store keeps for the gateway alone: the identity
//! provider's refresh tokens, which a refresh needs and nobody else should
//! read from a database dump or backup.
//!
//! AES-256-GCM (ring) with a key derived by HKDF-SHA256 from each of
//! `signin.session.secret`: sealed with the first, opened with whichever
//! fits, so rotating the session secret keeps existing sign-ins working
//! until the old secret is dropped. A sealed value is base64url of
//! `version ‖ nonce ‖ ciphertext ‖ tag`; what it protects is bound to its
//! purpose (the associated data), so a value sealed for one use cannot be
//! replayed as another.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;
const INFO: &[u8] = b"modelgate signin seal v1";

/// Seals with the first secret, opens with any.
pub struct Sealer {
    keys: Vec<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("secrets", &self.keys.len()).finish()
    }
}

/// HKDF's output length for AES-256.
struct KeyLen;

impl ring::hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        AES_256_GCM.key_len()
    }
}

fn key(secret: &str) -> Option<LessSafeKey> {
    let mut bytes = [0u8; 32];
    let prk = Salt::new(HKDF_SHA256, b"modelgate").extract(secret.as_bytes());
    prk.expand(&[INFO], KeyLen).ok()?.fill(&mut bytes).ok()?;
    Some(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).ok()?))
}

impl Sealer {
    /// `secrets` is non-empty (config validation sees to it).
    pub fn new(secrets: &[String]) -> Sealer {
        Sealer {
            keys: secrets.iter().filter_map(|s| key(s)).collect(),
            rng: SystemRandom::new(),
        }
    }

    /// `plain` sealed for `purpose`.
    pub fn seal(&self, purpose: &str, plain: &str) -> Option<String> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut data = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut data,
        )
        .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// What `sealed` protects, when one of the secrets sealed it for
    /// `purpose`.
    pub fn open(&self, purpose: &str, sealed: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sealed).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, data) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.keys.iter().find_map(|key| {
            let mut buf = data.to_vec();
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(purpose.as_bytes()),
                    &mut buf,
                )
                .ok()?;
            String::from_utf8(plain.to_vec()).ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a-secret-of-at-least-thirty-two-characters";
    const B: &str = "another-secret-of-thirty-two-characters!";

    #[test]
    fn sealed_values_open_with_their_purpose_only() {
        let s = Sealer::new(&[A.into()]);
        let sealed = s.seal("idp-refresh", "rt-123").unwrap();
        assert!(!sealed.contains("rt-123"));
        assert_ne!(
            sealed,
            s.seal("idp-refresh", "rt-123").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(s.open("idp-refresh", &sealed).as_deref(), Some("rt-123"));
        assert_eq!(s.open("something-else", &sealed), None);
    }

    #[test]
    fn rotation_the_first_seals_and_every_secret_opens() {
        let old = Sealer::new(&[A.into()]);
        let sealed = old.seal("p", "v").unwrap();
        let rotated = Sealer::new(&[B.into(), A.into()]);
        assert_eq!(rotated.open("p", &sealed).as_deref(), Some("v"));
        let new = rotated.seal("p", "w").unwrap();
        assert_eq!(old.open("p", &new), None);
        assert_eq!(Sealer::new(&[B.into()]).open("p", &sealed), None);
    }

    #[test]
    fn tampered_truncated_and_foreign_values_do_not_open() {
        let s = Sealer::new(&[A.into()]);
        let sealed = s.seal("p", "value").unwrap();
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(s.open("p", &tampered), None);
        assert_eq!(s.open("p", &sealed[..10]), None);
        assert_eq!(s.open("p", "not base64 !"), None);
        assert_eq!(s.open("p", ""), None);
    }
}
