//! The gateway's own access tokens: HS256 JWTs that say who signed in.
//!
//! A token carries the user (`sub`, `email`, `name`), their IdP groups at
//! sign-in or last refresh, and the sign-in it belongs to (`session_id`),
//! for `session.ttl` (1 h by default). It is signed with the first of
//! `session.secret` and verified with any of them, so a secret is rotated
//! by putting the new one first and dropping the old one after a ttl.
//!
//! The audience is `claude-gateway`: Claude Code reads it (without
//! verifying) to know a token is a gateway's, also in launcher mode
//! (`CLAUDE_CODE_USE_GATEWAY=1` with `ANTHROPIC_AUTH_TOKEN`). The issuer is
//! `signin.public_url`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The audience every gateway token carries.
pub const AUDIENCE: &str = "claude-gateway";

/// Clock skew tolerated on `exp` and `iat`, in seconds.
const LEEWAY_S: u64 = 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The IdP's subject.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The sign-in this token belongs to (revoking it ends the token).
    pub session_id: String,
    /// Where Claude Code puts the developer's `attributionProject` in a
    /// request's `tags` (`signin.billing_group_tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_group_tag: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not one this gateway signed")]
    Invalid,
}

/// Signs with the first secret, verifies with any.
pub struct Signer {
    issuer: String,
    sign: EncodingKey,
    verify: Vec<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("issuer", &self.issuer)
            .field("secrets", &self.verify.len())
            .finish()
    }
}

impl Signer {
    /// `secrets` is non-empty (config validation sees to it).
    pub fn new(issuer: &str, secrets: &[String]) -> Signer {
        let first = secrets.first().map(String::as_bytes).unwrap_or_default();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
        validation.leeway = LEEWAY_S;
        Signer {
            issuer: issuer.to_string(),
            sign: EncodingKey::from_secret(first),
            verify: secrets.iter().map(|s| DecodingKey::from_secret(s.as_bytes())).collect(),
            validation,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A signed token for `claims` (whose `iss` and `aud` are set here).
    pub fn sign(&self, mut claims: Claims) -> String {
        claims.iss = self.issuer.clone();
        claims.aud = AUDIENCE.to_string();
        // HMAC over serialisable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.sign).unwrap_or_default()
    }

    /// The claims of a token this gateway signed with any of its secrets
    /// and that has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut expired = false;
        for key in &self.verify {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) {
                        expired = true;
                    }
                }
            }
        }
        Err(if expired {
            TokenError::Expired
        } else {
            TokenError::Invalid
        })
    }
}

/// Whether `token` looks like a JWT (three base64url parts), as opposed to
/// a gateway key: only those are tried as sign-in tokens.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() < 16 * 1024
        && token.split('.').count() == 3
        && token.starts_with("eyJ")
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a-secret-of-at-least-thirty-two-characters";
    const B: &str = "another-secret-of-thirty-two-characters!";

    fn claims(exp_in: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: String::new(),
            aud: String::new(),
            sub: "00u1".into(),
            email: Some("ada@corp.example".into()),
            name: None,
            groups: vec!["eng".into()],
            session_id: "s1".into(),
            billing_group_tag: None,
            iat: now,
            exp: now + exp_in,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_carries_the_claims() {
        let s = Signer::new("https://gw.corp.example", &[A.into()]);
        let token = s.sign(claims(3600));
        assert!(looks_like_jwt(&token));
        let c = s.verify(&token).unwrap();
        assert_eq!(c.aud, AUDIENCE);
        assert_eq!(c.iss, "https://gw.corp.example");
        assert_eq!(c.email.as_deref(), Some("ada@corp.example"));
        assert_eq!(c.groups, ["eng"]);
    }

    #[test]
    fn rotation_the_first_signs_and_every_secret_verifies() {
        let old = Signer::new("https://gw", &[A.into()]);
        let rotated = Signer::new("https://gw", &[B.into(), A.into()]);
        let old_token = old.sign(claims(3600));
        assert!(
            rotated.verify(&old_token).is_ok(),
            "tokens of the old secret still work"
        );
        let new_token = rotated.sign(claims(3600));
        assert_eq!(old.verify(&new_token), Err(TokenError::Invalid), "the new secret signs");
        let dropped = Signer::new("https://gw", &[B.into()]);
        assert_eq!(dropped.verify(&old_token), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let s = Signer::new("https://gw", &[A.into()]);
        assert_eq!(s.verify(&s.sign(claims(-120))), Err(TokenError::Expired));
        let token = s.sign(claims(3600));
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert_eq!(s.verify(&parts.join(".")), Err(TokenError::Invalid));
        let other_issuer = Signer::new("https://elsewhere", &[A.into()]);
        assert_eq!(s.verify(&other_issuer.sign(claims(3600))), Err(TokenError::Invalid));
        assert_eq!(s.verify("sk-not-a-jwt"), Err(TokenError::Invalid));
        assert!(!looks_like_jwt("sk-ant-api03-abc"));
    }
}
