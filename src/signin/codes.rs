//! The device flow's codes (RFC 8628).
//!
//! A device code is 256 random bits, base64url: only Claude Code sees it,
//! and the store keeps only its SHA-256. A user code is what a person
//! reads and types: 8 letters from 20 consonants (RFC 8628 §6.1: no
//! vowels, so no words; no look-alike digits), shown as two groups of
//! four (`WDJB-MJHT`), about 34.6 bits. With a code valid for 10 minutes and the verification page
//! limited per IP, guessing a live code is out of reach; a user code is
//! also only ever a pointer to a grant the person still has to approve.

use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

/// RFC 8628 §6.1's base-20 alphabet.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;

/// A new device code: 32 random bytes, base64url without padding.
pub fn device_code() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new user code: two groups of four letters, `WDJB-MJHT`.
pub fn user_code() -> String {
    let mut rng = rand::thread_rng();
    let mut out = String::with_capacity(USER_CODE_LEN + 1);
    for i in 0..USER_CODE_LEN {
        if i == USER_CODE_LEN / 2 {
            out.push('-');
        }
        out.push(USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())] as char);
    }
    out
}

/// What a person typed, as stored: upper case, separators and spaces
/// dropped, hyphen in the middle. `None` when it cannot be a user code.
pub fn normalize_user_code(typed: &str) -> Option<String> {
    let letters: Vec<u8> = typed
        .bytes()
        .filter(|b| !matches!(b, b'-' | b' ' | b'\t'))
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if letters.len() != USER_CODE_LEN || !letters.iter().all(|b| USER_CODE_ALPHABET.contains(b)) {
        return None;
    }
    let mut out = String::with_capacity(USER_CODE_LEN + 1);
    for (i, b) in letters.iter().enumerate() {
        if i == USER_CODE_LEN / 2 {
            out.push('-');
        }
        out.push(*b as char);
    }
    Some(out)
}

/// A secret's SHA-256, hex: what the store keeps of device codes, refresh
/// tokens and browser cookies.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A random opaque secret (refresh tokens, browser cookies, `state`,
/// `nonce`, CSRF tokens): 32 bytes, base64url.
pub fn secret() -> String {
    device_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_codes_are_256_bits_and_distinct() {
        let a = device_code();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&a).unwrap();
        assert_eq!(raw.len(), 32);
        assert_ne!(a, device_code());
    }

    #[test]
    fn user_codes_use_the_base20_alphabet_and_normalize() {
        for _ in 0..200 {
            let c = user_code();
            assert_eq!(c.len(), 9);
            assert_eq!(&c[4..5], "-");
            assert!(c
                .bytes()
                .filter(|b| *b != b'-')
                .all(|b| USER_CODE_ALPHABET.contains(&b)));
            assert_eq!(normalize_user_code(&c).as_deref(), Some(c.as_str()));
            assert_eq!(
                normalize_user_code(&c.to_lowercase().replace('-', " ")).as_deref(),
                Some(c.as_str())
            );
        }
        assert_eq!(normalize_user_code("wdjb mjht").as_deref(), Some("WDJB-MJHT"));
        assert_eq!(normalize_user_code("WDJB-MJH"), None);
        assert_eq!(normalize_user_code("WDJB-MJHA"), None, "vowels are not in the alphabet");
        assert_eq!(normalize_user_code("WDJB-MJH1"), None);
    }

    #[test]
    fn user_codes_spread_over_the_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            seen.extend(user_code().bytes().filter(|b| *b != b'-'));
        }
        assert_eq!(seen.len(), 20);
    }
}
