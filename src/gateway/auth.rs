//! Stage: who is calling.
//!
//! Reads the gateway key from `x-api-key` or `Authorization: Bearer` and
//! resolves it to a [`KeyEntry`] (the principal later stages meter and limit);
//! with `signin:`, a developer's signed-in access token (a JWT the gateway
//! signed) resolves to one too ([`signed_in`]).
//! With no `keys:` section the gateway runs in passthrough-auth mode and the
//! caller is anonymous. This stage never forwards or logs the presented
//! secret; only its sha256 is ever compared.

use std::sync::Arc;

use http::header::{HeaderMap, AUTHORIZATION};

use super::signin::SigninState;
use crate::error::GatewayError;
use crate::runtime::keyring::KeyRing;
use crate::runtime::snapshot::{sha256, KeyEntry};
use crate::runtime::Snapshot;
use crate::signin::tokens::{self, Claims};

pub enum Caller {
    /// A configured gateway key.
    Key(Arc<KeyEntry>),
    /// Passthrough-auth mode: no gateway keys; the client's own credential
    /// (if any) is for the upstream.
    Passthrough,
}

/// Every credential the client presented, `x-api-key` first. Claude Code's
/// `apiKeyHelper` sends the same value in both headers.
fn presented(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    let api_key = headers.get("x-api-key").map(|v| v.as_bytes());
    let bearer = headers.get(AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| trim(&v[7..]))
    });
    api_key.into_iter().chain(bearer).filter(|k| !k.is_empty())
}

/// The password of `Authorization: Basic`: how a browser presents the
/// admin key to the dashboard (it cannot add a header to a navigation).
/// Admin endpoints only; the user name is ignored.
fn basic_password(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let v = headers.get(AUTHORIZATION)?.as_bytes();
    if v.len() <= 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(trim(&v[6..])).ok()?;
    let colon = decoded.iter().position(|&c| c == b':')?;
    Some(decoded[colon + 1..].to_vec()).filter(|p| !p.is_empty())
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// The caller: a config key, else a store key (`ring`, which also gives a
/// config key its store team's limits), else refused. Keys
/// are on when the config has a `keys:` section (`[]` included); without one
/// the gateway is in passthrough-auth mode and store keys are not used.
pub fn authenticate(snap: &Snapshot, ring: &KeyRing, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    if !snap.keys_enabled() {
        return Ok(Caller::Passthrough);
    }
    let mut any = false;
    for key in presented(headers) {
        any = true;
        let hash = sha256(key);
        let found = ring.find(snap, &hash);
        if let Some(entry) = found {
            if !entry.enabled {
                return Err(GatewayError::Permission(format!(
                    "gateway key `{}` is disabled",
                    entry.name
                )));
            }
            // The clock is read only for a key that can expire.
            if entry
                .expires_at_ms
                .is_some_and(|at| crate::policy::period::now_ms() >= at)
            {
                return Err(GatewayError::Authentication(format!(
                    "gateway key `{}` expired at {}; ask for a new key",
                    entry.name,
                    entry
                        .expires_at_ms
                        .map(crate::policy::period::rfc3339)
                        .unwrap_or_default()
                )));
            }
            return Ok(Caller::Key(entry));
        }
    }
    Err(GatewayError::Authentication(if any {
        "invalid gateway key".into()
    } else {
        "missing gateway key: send it as `x-api-key` or `Authorization: Bearer`".into()
    }))
}

/// A developer signed in through `signin:`: the principal their verified
/// access token stands for, its claims, and whether the principal is new
/// to this process (its budgets not yet read from the ledger).
pub struct SignedIn {
    pub principal: Arc<KeyEntry>,
    pub claims: Arc<Claims>,
    pub fresh: bool,
}

/// The caller, when it presents a token that looks like one of the
/// gateway's own (a JWT) and sign-in is on: `None` otherwise (gateway keys
/// then decide). A token this gateway did not sign, that expired, or whose
/// session was revoked is refused (401, `x-should-retry: false`).
pub fn signed_in(snap: &Snapshot, state: &SigninState, headers: &HeaderMap) -> Option<Result<SignedIn, GatewayError>> {
    let signin = snap.signin.as_deref()?;
    let token = presented(headers)
        .filter_map(|t| std::str::from_utf8(t).ok())
        .find(|t| tokens::looks_like_jwt(t))?;
    let claims = match signin.signer.verify(token) {
        Ok(c) => c,
        Err(tokens::TokenError::Expired) => {
            return Some(Err(GatewayError::Authentication(
                "your gateway sign-in has expired; Claude Code refreshes it on its own, so if this persists run /login"
                    .into(),
            )))
        }
        Err(tokens::TokenError::Invalid) => return Some(Err(GatewayError::Authentication(
            "this token was not issued by this gateway (or its signing secret has changed); sign in again with /login"
                .into(),
        ))),
    };
    if state.is_revoked(&claims.session_id) {
        return Some(Err(GatewayError::Authentication(
            "this sign-in has ended (signed out, or ended by an administrator or the identity provider); sign in again with /login"
                .into(),
        )));
    }
    let (principal, fresh) = state.principal(snap, signin, &claims);
    Some(Ok(SignedIn {
        principal,
        claims: Arc::new(claims),
        fresh,
    }))
}

/// Admin endpoints on the main listener (`/status`, `/metrics`, `/admin/*`).
/// With a key from `admin_keys_sha256` they answer anywhere. Without any
/// admin key they are not served at all on a main listener that is not
/// loopback (404: anyone on the network could otherwise reset circuits or
/// raise the log level), and on loopback they are open only while the
/// gateway has no credentials at all (a local, passthrough-auth setup).
pub fn authorize_admin(snap: &Snapshot, headers: &HeaderMap) -> Result<(), GatewayError> {
    if !snap.has_admin_keys() && !snap.listen.ip().is_loopback() {
        return Err(GatewayError::NotFound(
            "admin endpoints are not served on a listener that is not loopback without `admin_keys_sha256`; \
             use `admin_listen` (on a private address) or add an admin key"
                .into(),
        ));
    }
    if !snap.has_admin_keys() && !snap.keys_enabled() {
        return Ok(());
    }
    let mut any = false;
    let basic = basic_password(headers);
    for key in presented(headers).chain(basic.as_deref()) {
        any = true;
        if snap.is_admin_key(&sha256(key)) {
            return Ok(());
        }
    }
    if !snap.has_admin_keys() {
        return Err(GatewayError::Permission(
            "admin endpoints need `admin_keys_sha256` or a separate `admin_listen`".into(),
        ));
    }
    Err(if any {
        GatewayError::Permission("this key is not an admin key".into())
    } else {
        GatewayError::Authentication("missing admin key".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse_str;
    use http::HeaderValue;

    fn snap(extra: &str) -> Snapshot {
        let env = |_: &str| None;
        let yaml = format!("providers:\n  a: {{type: anthropic}}\ndefault_provider: a\n{extra}");
        Snapshot::build(parse_str(&yaml, &env).unwrap(), &env).unwrap()
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn accepts_either_header_and_rejects_others() {
        let hash = hex::encode(sha256(b"mg-alice"));
        let off = hex::encode(sha256(b"mg-off"));
        let s = snap(&format!(
            "keys:\n  - {{name: alice, key_sha256: {hash}}}\n  - {{name: off, key_sha256: {off}, enabled: false}}\n"
        ));
        assert!(
            matches!(authenticate(&s, &KeyRing::default(), &h(&[("x-api-key", "mg-alice")])), Ok(Caller::Key(k)) if k.name == "alice")
        );
        assert!(matches!(
            authenticate(&s, &KeyRing::default(), &h(&[("authorization", "Bearer  mg-alice ")])),
            Ok(Caller::Key(_))
        ));
        assert!(authenticate(
            &s,
            &KeyRing::default(),
            &h(&[("x-api-key", "nope"), ("authorization", "bearer mg-alice")])
        )
        .is_ok());
        assert!(
            matches!(authenticate(&s, &KeyRing::default(), &h(&[])), Err(GatewayError::Authentication(m)) if m.contains("missing"))
        );
        assert!(matches!(
            authenticate(&s, &KeyRing::default(), &h(&[("x-api-key", "nope")])),
            Err(GatewayError::Authentication(_))
        ));
        assert!(matches!(
            authenticate(&s, &KeyRing::default(), &h(&[("x-api-key", "mg-off")])),
            Err(GatewayError::Permission(_))
        ));
        assert!(matches!(
            authenticate(&snap(""), &KeyRing::default(), &h(&[])),
            Ok(Caller::Passthrough)
        ));
    }

    #[test]
    fn admin_is_open_only_without_any_credentials() {
        assert!(authorize_admin(&snap(""), &h(&[])).is_ok());
        let admin = hex::encode(sha256(b"mg-admin"));
        let s = snap(&format!("admin_keys_sha256: [{admin}]\n"));
        assert!(authorize_admin(&s, &h(&[("x-api-key", "mg-admin")])).is_ok());
        assert!(matches!(
            authorize_admin(&s, &h(&[])),
            Err(GatewayError::Authentication(_))
        ));
        assert!(matches!(
            authorize_admin(&s, &h(&[("x-api-key", "x")])),
            Err(GatewayError::Permission(_))
        ));
        // A browser's Basic credentials: the password is the admin key.
        use base64::Engine as _;
        let basic = |user_pass: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass));
        assert!(authorize_admin(&s, &h(&[("authorization", &basic("admin:mg-admin"))])).is_ok());
        assert!(authorize_admin(&s, &h(&[("authorization", &basic(":mg-admin"))])).is_ok());
        for refused in [
            basic("mg-admin"),
            basic("admin:"),
            basic("admin:mg-x"),
            "Basic !!".into(),
        ] {
            assert!(
                authorize_admin(&s, &h(&[("authorization", &refused)])).is_err(),
                "{refused}"
            );
        }
    }
}
