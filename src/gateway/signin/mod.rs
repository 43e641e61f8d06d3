//! The Claude Code gateway protocol's endpoints (`signin:`): discovery,
//! the device flow (RFC 8628) and its browser side, the token endpoint
//! (device and refresh grants), revocation (RFC 7009), managed settings,
//! and the process-wide sign-in state requests share ([`SigninState`]).
//!
//! ```text
//! claude                         gateway                         browser / IdP
//! GET  /.well-known/oauth-authorization-server
//! POST /oauth/device_authorization  → grant (store)
//! POST /oauth/token (polls)         ← pending …                  GET /device?user_code
//!                                                                 POST /device (confirm: approve/deny)
//!                                                                 → IdP (code + PKCE, state, nonce)
//!                                   grant approved (store)     ← GET /oauth/callback
//! POST /oauth/token                 → session (store) + access token (JWT) + refresh token
//! POST /oauth/token (refresh)       → IdP refresh → rotated tokens, or 401 invalid_grant
//! ```
//!
//! Everything a flow needs between two requests lives in the store
//! (`store::signin`), so any replica can answer any step. OAuth endpoints
//! answer RFC 6749 error bodies (`{"error","error_description"}`), the
//! bearer endpoints the Anthropic envelope (`crate::error`), the browser
//! pages HTML. Secrets (device codes, refresh tokens, the IdP's tokens)
//! are never logged; the store keeps only their digests, or seals them.
//! The browser pages are in [`pages`].

mod pages;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::{body, respond, Shared};
use crate::error::GatewayError;
use crate::policy::gcra::Gcra;
use crate::policy::period::now_ms;
use crate::runtime::snapshot::KeyEntry;
use crate::runtime::Snapshot;
use crate::signin::idp::{Idp, IdpError};
use crate::signin::policy::Signin;
use crate::signin::tokens::Claims;
use crate::signin::{codes, tokens};
use crate::store::signin::{Identity, NewGrant, Poll, RevokeBy, SigninStore};
use pages::{callback, device_form, device_page, send_page, set_cookie, Page};

/// The sign-in endpoints, decided from method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metadata,
    DeviceAuthorization,
    Token,
    Revoke,
    /// `GET /device`: the verification page.
    DevicePage,
    /// `POST /device`: its form.
    DeviceForm,
    Callback,
    ManagedSettings,
    /// `GET /api/oauth/usage`: the caller's spend against their caps.
    Usage,
}

impl Route {
    /// Whether the route answers for a signed-in caller (a bearer).
    pub fn needs_caller(self) -> bool {
        matches!(self, Route::ManagedSettings | Route::Usage)
    }
}

/// The largest form the sign-in endpoints read.
const FORM_LIMIT: u64 = 16 * 1024;
/// How long a browser round trip to the IdP may take.
pub(super) const FLOW_TTL_MS: i64 = 10 * 60 * 1000;
/// Per client address: device authorizations, and verification-page
/// requests, a minute.
const DEVICE_PER_MINUTE: u64 = 20;
const PAGES_PER_MINUTE: u64 = 60;
/// Addresses the rate limiter remembers at most.
const LIMITER_ADDRESSES: usize = 10_000;
/// Signed-in principals remembered at most (one per user and policy).
const PRINCIPALS: usize = 50_000;

/// Sign-in state shared by every request of the process.
#[derive(Default)]
pub struct SigninState {
    store: tokio::sync::OnceCell<SigninStore>,
    /// The identity provider as last discovered (for the config it was
    /// discovered for); `discovering` lets one request at a time discover.
    idp: ArcSwapOption<Idp>,
    discovering: tokio::sync::Mutex<()>,
    /// Sessions revoked recently (whose tokens may not have expired yet).
    revoked: ArcSwap<HashSet<String>>,
    principals: Mutex<Principals>,
    device_limiter: Mutex<Limiter>,
    page_limiter: Mutex<Limiter>,
}

#[derive(Default)]
struct Principals {
    version: String,
    by_user: HashMap<(String, Option<String>, Vec<String>), Arc<KeyEntry>>,
}

/// A per-address GCRA, bounded in the addresses it remembers.
#[derive(Default)]
struct Limiter {
    tat: HashMap<IpAddr, f64>,
}

impl Limiter {
    fn admit(&mut self, ip: IpAddr, per_minute: u64, now: f64) -> Result<(), u64> {
        let Some(gcra) = Gcra::per_minute(per_minute) else {
            return Ok(());
        };
        if self.tat.len() >= LIMITER_ADDRESSES {
            self.tat.retain(|_, tat| *tat > now);
            if self.tat.len() >= LIMITER_ADDRESSES {
                self.tat.clear();
            }
        }
        // An IPv6 client holds a whole /64: limit the prefix, not each address.
        let ip = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(o))
            }
            other => other,
        };
        let tat = self.tat.get(&ip).copied().unwrap_or(0.0);
        match gcra.check(tat, now, 1) {
            Ok(next) => {
                self.tat.insert(ip, next);
                Ok(())
            }
            Err(wait_ms) => Err((wait_ms / 1000.0).ceil().max(1.0) as u64),
        }
    }
}

/// An OAuth error answer (RFC 6749 §5.2, RFC 8628 §3.5).
#[derive(Debug)]
pub struct OAuthError {
    status: u16,
    code: &'static str,
    description: String,
}

fn oauth(status: u16, code: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status,
        code,
        description: description.into(),
    }
}

impl SigninState {
    /// The sign-in store: the PostgreSQL store's pool, or the SQLite
    /// ledger's file (a connection of its own), opened on first use.
    pub async fn store(&self, shared: &Shared, snap: &Snapshot) -> Result<&SigninStore, String> {
        self.store
            .get_or_try_init(|| async {
                if let Some(pg) = shared.sinks.get().and_then(|s| s.ledger.signin_store()) {
                    return Ok(pg);
                }
                match crate::store::Location::of(&snap.config.store, &snap.config.state)? {
                    crate::store::Location::Sqlite(path) => {
                        tokio::task::spawn_blocking(move || SigninStore::sqlite(&path).map_err(|e| e.to_string()))
                            .await
                            .map_err(|e| e.to_string())?
                    }
                    crate::store::Location::Postgres { target, .. } => {
                        SigninStore::connect(&target).await.map_err(|e| e.to_string())
                    }
                }
            })
            .await
    }

    /// The identity provider of `signin`, discovered on first use (and
    /// again when the config names another).
    pub async fn idp(&self, signin: &Signin) -> Result<Arc<Idp>, IdpError> {
        if let Some(idp) = self.idp.load_full().filter(|i| i.config() == &signin.idp) {
            return Ok(idp);
        }
        let _one = self.discovering.lock().await;
        if let Some(idp) = self.idp.load_full().filter(|i| i.config() == &signin.idp) {
            return Ok(idp);
        }
        let idp = Arc::new(Idp::discover(signin.idp.clone()).await?);
        self.idp.store(Some(Arc::clone(&idp)));
        Ok(idp)
    }

    /// Whether session `id` was revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.load().contains(id)
    }

    /// Serve `ids` as the revoked sessions.
    pub fn set_revoked(&self, ids: HashSet<String>) {
        self.revoked.store(Arc::new(ids));
    }

    fn add_revoked(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut set = (**self.revoked.load()).clone();
        set.extend(ids.iter().cloned());
        self.revoked.store(Arc::new(set));
    }

    /// The principal of verified `claims` under `snap`, and whether it is
    /// new to this process (its budgets not yet seeded from the ledger).
    pub fn principal(&self, snap: &Snapshot, signin: &Signin, claims: &Claims) -> (Arc<KeyEntry>, bool) {
        let key = (claims.sub.clone(), claims.email.clone(), claims.groups.clone());
        let mut p = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        if p.version != snap.version || p.by_user.len() >= PRINCIPALS {
            p.version.clone_from(&snap.version);
            p.by_user.clear();
        }
        if let Some(entry) = p.by_user.get(&key) {
            return (Arc::clone(entry), false);
        }
        let entry = Arc::new(KeyEntry::of_claims(signin, claims));
        p.by_user.insert(key, Arc::clone(&entry));
        (entry, true)
    }

    fn limit(&self, which: &Mutex<Limiter>, session: &Session, per_minute: u64) -> Result<(), u64> {
        let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) else {
            return Ok(());
        };
        which
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(ip, per_minute, now_ms() as f64)
    }
}

/// The route at `path` for `method`, if it is a sign-in endpoint: `Ok`,
/// or `Err(allow)` for a method the path does not take.
pub fn route(method: &http::Method, path: &str) -> Option<Result<Route, &'static str>> {
    use http::Method as M;
    let r = match path {
        "/.well-known/oauth-authorization-server" => match *method {
            M::GET | M::HEAD => Ok(Route::Metadata),
            _ => Err("GET"),
        },
        "/oauth/device_authorization" => match *method {
            M::POST => Ok(Route::DeviceAuthorization),
            _ => Err("POST"),
        },
        "/oauth/token" => match *method {
            M::POST => Ok(Route::Token),
            _ => Err("POST"),
        },
        "/oauth/revoke" => match *method {
            M::POST => Ok(Route::Revoke),
            _ => Err("POST"),
        },
        "/device" => match *method {
            M::GET | M::HEAD => Ok(Route::DevicePage),
            M::POST => Ok(Route::DeviceForm),
            _ => Err("GET, POST"),
        },
        "/oauth/callback" => match *method {
            M::GET => Ok(Route::Callback),
            _ => Err("GET"),
        },
        "/managed/settings" => match *method {
            M::GET | M::HEAD => Ok(Route::ManagedSettings),
            _ => Err("GET"),
        },
        "/api/oauth/usage" => match *method {
            M::GET => Ok(Route::Usage),
            _ => Err("GET"),
        },
        _ => return None,
    };
    Some(r)
}

/// Answer a sign-in endpoint. Without `signin:` they are not served (404;
/// `/managed/settings` too, which the protocol reads as "no policy").
pub async fn serve(
    shared: &Shared,
    route: Route,
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Arc<Snapshot>,
    principal: Option<(Arc<KeyEntry>, Option<Arc<Claims>>)>,
) -> Result<(), GatewayError> {
    let Some(signin) = snap.signin.clone() else {
        return Err(GatewayError::NotFound(
            "sign-in is not configured on this gateway (no `signin:`); use a gateway key".into(),
        ));
    };
    let state = &shared.signin;
    match route {
        Route::Metadata => {
            let extra = [("cache-control", "no-store".to_string())];
            respond::complete(session, ctx, 200, "application/json", signin.metadata.clone(), &extra).await;
            Ok(())
        }
        Route::ManagedSettings => managed_settings(session, ctx, &signin, principal).await,
        Route::Usage => {
            let Some((key, _)) = principal else {
                return Err(GatewayError::NotFound("usage is reported to a signed-in caller".into()));
            };
            let body = usage(shared, snap, &key).await?;
            let extra = [("cache-control", "no-store".to_string())];
            respond::complete(session, ctx, 200, "application/json", Bytes::from(body), &extra).await;
            Ok(())
        }
        Route::DeviceAuthorization | Route::Token | Route::Revoke => {
            let answer = match route {
                Route::DeviceAuthorization => device_authorization(shared, session, snap, &signin).await,
                Route::Token => token(shared, session, snap, &signin).await,
                _ => revoke(shared, session, snap, &signin).await,
            };
            let (status, body, extra) = match answer {
                Ok(body) => (200, body, None),
                Err(e) => {
                    let body = serde_json::to_vec(&serde_json::json!({
                        "error": e.code,
                        "error_description": e.description,
                    }))
                    .unwrap_or_default();
                    ctx.error_message = Some(format!("{}: {}", e.code, e.description));
                    let retry = (e.code == "slow_down").then(|| ("retry-after", signin.interval.as_secs().to_string()));
                    (e.status, body, retry)
                }
            };
            let mut headers = vec![
                ("cache-control", "no-store".to_string()),
                ("pragma", "no-cache".to_string()),
            ];
            headers.extend(extra);
            respond::complete(session, ctx, status, "application/json", Bytes::from(body), &headers).await;
            Ok(())
        }
        Route::DevicePage | Route::DeviceForm | Route::Callback => {
            if let Err(wait) = state.limit(&state.page_limiter, session, PAGES_PER_MINUTE) {
                let page = Page::new(
                    429,
                    "Too many attempts",
                    "Too many sign-in attempts from this address. Wait a minute and try again.",
                );
                return send_page(session, ctx, page, &[("retry-after", wait.to_string())]).await;
            }
            let (page, cookie) = match route {
                Route::DevicePage => device_page(session, &signin),
                Route::DeviceForm => device_form(shared, session, ctx, snap, &signin).await,
                _ => callback(shared, session, snap, &signin).await,
            };
            let mut extra = Vec::new();
            if let Some(value) = cookie {
                extra.push(("set-cookie", set_cookie(&signin, &value)));
            }
            send_page(session, ctx, page, &extra).await
        }
    }
}

// ---------------------------------------------------------------------------
// Device authorization and the token endpoint.

pub(super) async fn read_form(session: &mut Session, snap: &Snapshot) -> Result<HashMap<String, String>, OAuthError> {
    let body = body::read(session, FORM_LIMIT, snap.config.client_timeouts.body.0)
        .await
        .map_err(|e| oauth(400, "invalid_request", e.to_string()))?;
    // Unknown parameters are ignored; one the gateway reads may not repeat
    // (RFC 6749 §3.1): a repeated one reads as absent-and-invalid.
    let mut form = HashMap::new();
    let mut repeated = Vec::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            repeated.push(k.to_string());
        }
    }
    for k in repeated {
        if READ_PARAMS.contains(&k.as_str()) {
            return Err(oauth(400, "invalid_request", format!("parameter `{k}` is repeated")));
        }
        form.remove(&k);
    }
    Ok(form)
}

/// The form parameters the sign-in endpoints read.
const READ_PARAMS: [&str; 8] = [
    "grant_type",
    "device_code",
    "refresh_token",
    "token",
    "surface",
    "user_code",
    "csrf",
    "step",
];

fn unavailable(e: impl std::fmt::Display) -> OAuthError {
    log::warn!("sign-in: {e}");
    oauth(
        503,
        "temporarily_unavailable",
        "the gateway cannot reach its sign-in store or identity provider right now; try again shortly",
    )
}

async fn device_authorization(
    shared: &Shared,
    session: &mut Session,
    snap: &Snapshot,
    signin: &Signin,
) -> Result<Vec<u8>, OAuthError> {
    let state = &shared.signin;
    if let Err(wait) = state.limit(&state.device_limiter, session, DEVICE_PER_MINUTE) {
        return Err(oauth(
            429,
            "slow_down",
            format!("too many sign-in attempts from this address; try again in {wait} s"),
        ));
    }
    let form = read_form(session, snap).await?;
    let store = state.store(shared, snap).await.map_err(unavailable)?;
    let device_code = codes::device_code();
    let now = now_ms();
    // A user code is short: draw again on the rare collision.
    for _ in 0..8 {
        let user_code = codes::user_code();
        let grant = NewGrant {
            device_hash: codes::digest(&device_code),
            user_code: user_code.clone(),
            created_ms: now,
            expires_ms: now + signin.device_ttl.as_millis() as i64,
            interval_ms: signin.interval.as_millis() as i64,
            // What the client says it is, shown on the confirmation page:
            // a short identifier, nothing a page could be made to say.
            surface: form
                .get("surface")
                .filter(|s| !s.is_empty() && s.len() <= 32)
                .filter(|s| {
                    s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
                .cloned(),
        };
        if store.create_grant(grant).await.map_err(unavailable)? {
            let mut answer = serde_json::json!({
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": format!("{}/device", signin.public_url),
                "verification_uri_complete": format!("{}/device?user_code={user_code}", signin.public_url),
                "expires_in": signin.device_ttl.as_secs(),
                "interval": signin.interval.as_secs(),
            });
            if let Some(n) = &signin.login_notice {
                answer["login_notice"] = n.clone().into();
            }
            return Ok(serde_json::to_vec(&answer).unwrap_or_default());
        }
    }
    Err(unavailable("could not draw a free user code in 8 tries"))
}

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn token(
    shared: &Shared,
    session: &mut Session,
    snap: &Snapshot,
    signin: &Signin,
) -> Result<Vec<u8>, OAuthError> {
    let form = read_form(session, snap).await?;
    let param = |name: &str| {
        form.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| oauth(400, "invalid_request", format!("`{name}` is missing")))
    };
    let store = shared.signin.store(shared, snap).await.map_err(unavailable)?;
    let now = now_ms();
    match param("grant_type")?.as_str() {
        DEVICE_GRANT => {
            let device_code = param("device_code")?;
            match store.poll(codes::digest(device_code), now).await.map_err(unavailable)? {
                Poll::Unknown | Poll::Expired => Err(oauth(
                    400,
                    "expired_token",
                    "this sign-in code has expired or was already used; start the sign-in again",
                )),
                Poll::SlowDown => Err(oauth(429, "slow_down", "polling faster than the interval allows")),
                Poll::Pending => Err(oauth(
                    400,
                    "authorization_pending",
                    "waiting for the sign-in to be approved in the browser",
                )),
                Poll::Denied => Err(oauth(400, "access_denied", "the sign-in was denied in the browser")),
                Poll::Approved { mut identity, surface } => {
                    let session_id = codes::secret();
                    let refresh = codes::secret();
                    identity.current_refresh = signin.sealer.seal(GATEWAY_REFRESH, &refresh);
                    let s = crate::store::signin::Session {
                        id: session_id.clone(),
                        identity: identity.clone(),
                        surface,
                        created_ms: now,
                        refreshed_ms: now,
                        expires_ms: now + signin.lifetime.as_millis() as i64,
                        revoked_ms: None,
                        revoked_by: None,
                        revoked_why: None,
                    };
                    store
                        .create_session(s, codes::digest(&refresh))
                        .await
                        .map_err(unavailable)?;
                    log::info!(
                        "sign-in: {} signed in (groups: {})",
                        identity.email.as_deref().unwrap_or(&identity.subject),
                        identity.groups.join(",")
                    );
                    Ok(tokens_answer(signin, &identity, &session_id, &refresh, now, true))
                }
            }
        }
        "refresh_token" => refresh(shared, store, signin, param("refresh_token")?, now).await,
        other => Err(oauth(
            400,
            "unsupported_grant_type",
            format!(
                "grant_type `{}` is not supported: use the device grant or refresh_token",
                other.chars().take(100).collect::<String>()
            ),
        )),
    }
}

/// The token response: a fresh access token for `identity`'s session and
/// its refresh token (and on sign-in, the account's email to confirm).
fn tokens_answer(
    signin: &Signin,
    identity: &Identity,
    session_id: &str,
    refresh: &str,
    now: i64,
    with_email: bool,
) -> Vec<u8> {
    let ttl = signin.access_ttl.as_secs() as i64;
    let claims = Claims {
        iss: String::new(),
        aud: String::new(),
        sub: identity.subject.clone(),
        email: identity.email.clone(),
        name: identity.name.clone(),
        groups: signin.relevant_groups(&identity.groups),
        session_id: session_id.to_string(),
        billing_group_tag: signin.billing_group_tag.clone(),
        iat: now / 1000,
        exp: now / 1000 + ttl,
    };
    let mut answer = serde_json::json!({
        "access_token": signin.signer.sign(claims),
        "token_type": "Bearer",
        "expires_in": ttl,
        "refresh_token": refresh,
    });
    if with_email {
        if let Some(email) = &identity.email {
            answer["email"] = email.clone().into();
        }
    }
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// A refresh: through the identity provider, so that a user removed there
/// (or moved out of `allowed_groups`) is refused now; an outage of the
/// provider is not a refusal (`503`, the client tries again later).
async fn refresh(
    shared: &Shared,
    store: &SigninStore,
    signin: &Signin,
    refresh_token: &str,
    now: i64,
) -> Result<Vec<u8>, OAuthError> {
    let invalid = |why: &str| oauth(401, "invalid_grant", format!("{why}; sign in again"));
    let presented = codes::digest(refresh_token);
    let Some(r) = store.refreshing(presented.clone(), now).await.map_err(unavailable)? else {
        return Err(invalid("this refresh token is unknown, expired or revoked"));
    };
    if r.replaced {
        // Already rotated within the last minute (a lost answer, or two
        // processes refreshing at once): the rotation that happened, again.
        return again(signin, &r.session, now).ok_or_else(|| invalid("this refresh token was replaced"));
    }
    let session = r.session;
    let who = session
        .identity
        .email
        .clone()
        .unwrap_or_else(|| session.identity.subject.clone());
    let session_id = session.id.clone();
    let end = |why: &'static str| {
        let id = session_id.clone();
        async move {
            match store
                .revoke(RevokeBy::Id(id), "identity provider".into(), why.into(), now)
                .await
            {
                Ok(ids) => shared.signin.add_revoked(&ids),
                Err(e) => log::warn!("sign-in: cannot end a session: {e}"),
            }
        }
    };
    let Some(sealed) = session.identity.idp_refresh.as_deref() else {
        end("the identity provider issued no refresh token").await;
        log::info!("sign-in: {who} must sign in again (the identity provider gave no refresh token)");
        return Err(invalid(
            "the identity provider issued no refresh token to check this sign-in with (the gateway asks for `offline_access`)",
        ));
    };
    let Some(idp_refresh) = signin.sealer.open(IDP_REFRESH, sealed) else {
        end("the sealed refresh token does not open (session secrets changed)").await;
        return Err(invalid("this sign-in was made under another session secret"));
    };
    let idp = shared.signin.idp(signin).await.map_err(unavailable)?;
    let user = match idp.refresh(&idp_refresh).await {
        Ok(user) => user,
        Err(IdpError::Refused(why)) => {
            end("the identity provider refused the refresh").await;
            log::info!("sign-in: the identity provider refused {who}'s refresh ({why}); session ended");
            return Err(invalid("the identity provider no longer accepts this sign-in"));
        }
        Err(e) => return Err(unavailable(e)),
    };
    if user.subject != session.identity.subject {
        end("the identity provider answered for another subject").await;
        return Err(invalid("the identity provider answered for another user"));
    }
    if !signin.allows(&user.groups) {
        end("no longer in signin.allowed_groups").await;
        log::info!("sign-in: {who} is no longer in an allowed group; session ended");
        return Err(invalid(
            "your account is no longer in a group allowed to use this gateway",
        ));
    }
    let next = codes::secret();
    let identity = Identity {
        subject: user.subject,
        email: user.email.or(session.identity.email.clone()),
        name: user.name.or(session.identity.name.clone()),
        groups: user.groups,
        idp_refresh: user
            .refresh_token
            .and_then(|t| signin.sealer.seal(IDP_REFRESH, &t))
            .or(Some(sealed.to_string())),
        current_refresh: signin.sealer.seal(GATEWAY_REFRESH, &next),
    };
    if store
        .rotate(
            session.id.clone(),
            presented.clone(),
            codes::digest(&next),
            identity.clone(),
            now,
        )
        .await
        .map_err(unavailable)?
    {
        return Ok(tokens_answer(signin, &identity, &session.id, &next, now, false));
    }
    // Another refresh of the same token won the rotation: its result.
    match store.refreshing(presented, now).await.map_err(unavailable)? {
        Some(r) if r.replaced => {
            again(signin, &r.session, now).ok_or_else(|| invalid("this refresh token was replaced"))
        }
        _ => Err(invalid("this sign-in was revoked")),
    }
}

/// Seal purposes of the tokens a session keeps.
pub(super) const IDP_REFRESH: &str = "idp-refresh";
const GATEWAY_REFRESH: &str = "gateway-refresh";

/// The answer to a refresh token that a rotation replaced moments ago: a
/// new access token and the session's current refresh token.
fn again(signin: &Signin, session: &crate::store::signin::Session, now: i64) -> Option<Vec<u8>> {
    let current = signin
        .sealer
        .open(GATEWAY_REFRESH, session.identity.current_refresh.as_deref()?)?;
    Some(tokens_answer(
        signin,
        &session.identity,
        &session.id,
        &current,
        now,
        false,
    ))
}

/// RFC 7009: an access token ends its session, a refresh token too.
/// Unknown tokens are answered as revoked (§2.2).
async fn revoke(
    shared: &Shared,
    session: &mut Session,
    snap: &Snapshot,
    signin: &Signin,
) -> Result<Vec<u8>, OAuthError> {
    let form = read_form(session, snap).await?;
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return Err(oauth(400, "invalid_request", "`token` is missing"));
    };
    let store = shared.signin.store(shared, snap).await.map_err(unavailable)?;
    let by = if tokens::looks_like_jwt(token) {
        match signin.signer.verify(token) {
            Ok(claims) => Some(RevokeBy::Id(claims.session_id)),
            // Expired or foreign: nothing it could still do.
            Err(_) => None,
        }
    } else {
        Some(RevokeBy::RefreshHash(codes::digest(token)))
    };
    if let Some(by) = by {
        let ids = store
            .revoke(by, "the signed-in user".into(), "signed out".into(), now_ms())
            .await
            .map_err(unavailable)?;
        shared.signin.add_revoked(&ids);
    }
    Ok(b"{}".to_vec())
}

// ---------------------------------------------------------------------------
// Usage against the caller's caps.

/// `GET /api/oauth/usage`: the caller's caps as the headers describe them,
/// or, without caps, what they spent this UTC month, day and week (from
/// the ledger).
async fn usage(shared: &Shared, snap: &Snapshot, key: &KeyEntry) -> Result<Vec<u8>, GatewayError> {
    use crate::policy::period::Window;
    let now = now_ms();
    let caps = super::meter::caps(shared, key, now)
        .await
        .ok_or_else(|| GatewayError::Unavailable {
            message: "the gateway cannot read its budget state right now; try again shortly".into(),
            retry_after: Some(5),
        })?;
    let body = if caps.is_empty() {
        let reader = super::meter::ledger_reader(shared, snap)
            .await
            .map_err(GatewayError::Internal)?;
        let id = key.scope.id.to_string();
        let starts = [
            crate::config::schema::BudgetPeriod::Monthly,
            crate::config::schema::BudgetPeriod::Daily,
            crate::config::schema::BudgetPeriod::Weekly,
        ]
        .map(|p| (id.clone(), Window::of(p, now).start_ms));
        let history = reader
            .history(starts.to_vec())
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let spent = |n: usize| history.totals.get(n).map_or(0, |t| t.standing().spent_nanos);
        crate::signin::caps::usage_without_caps(spent(0), spent(1), spent(2))
    } else {
        crate::signin::caps::usage_with_caps(&caps)
    };
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

// ---------------------------------------------------------------------------
// Managed settings.

async fn managed_settings(
    session: &mut Session,
    ctx: &mut RequestCtx,
    signin: &Signin,
    principal: Option<(Arc<KeyEntry>, Option<Arc<Claims>>)>,
) -> Result<(), GatewayError> {
    let claims = principal.and_then(|(_, c)| c);
    let settings = claims
        .as_ref()
        .and_then(|c| signin.policy_for(&c.groups))
        .and_then(|(_, p)| p.settings.as_ref());
    let Some(settings) = settings else {
        return Err(GatewayError::NotFound(
            "no managed settings for this caller: no group policy under `signin.groups` has `managed_settings`".into(),
        ));
    };
    let etag = [("etag", settings.etag.clone())];
    let matches = session
        .req_header()
        .headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == settings.etag));
    if matches {
        respond::complete(session, ctx, 304, "application/json", Bytes::new(), &etag).await;
    } else {
        respond::complete(session, ctx, 200, "application/json", settings.body.clone(), &etag).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Keeping the revoked sessions and the store tidy.

/// Keeps [`SigninState`]'s revoked sessions in step with the store (at
/// once on PostgreSQL's notification, every few seconds regardless), and
/// sweeps ended grants, flows and sessions every ten minutes.
pub struct SessionSync {
    pub shared: Arc<Shared>,
}

const REVOKED_REFRESH: std::time::Duration = std::time::Duration::from_secs(3);
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SessionSync {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut listening = crate::store::postgres::Listening::default();
        let mut swept = std::time::Instant::now();
        loop {
            let snap = self.shared.config.snapshot();
            let store = match &snap.signin {
                Some(_) => self.shared.signin.store(&self.shared, &snap).await.ok(),
                None => None,
            };
            if let (Some(signin), Some(store)) = (&snap.signin, store) {
                // Tokens live `ttl`: sessions revoked longer ago than that
                // (and a minute's skew) have no token left to refuse.
                let since = now_ms() - signin.access_ttl.as_millis() as i64 - 60_000;
                match store.revoked_since(since).await {
                    Ok(ids) => self.shared.signin.set_revoked(ids.into_iter().collect()),
                    Err(e) => log::debug!("sign-in: cannot read revoked sessions: {e}"),
                }
                if swept.elapsed() >= SWEEP_EVERY {
                    swept = std::time::Instant::now();
                    if let Err(e) = store.sweep(now_ms()).await {
                        log::debug!("sign-in: sweep: {e}");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = listening.round(REVOKED_REFRESH, || async {
                    match store {
                        Some(s) => s.watch().await,
                        None => None,
                    }
                }) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_past_the_rate_and_stays_bounded() {
        let mut l = Limiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = 1_000_000.0;
        let admitted = (0..30).filter(|_| l.admit(ip, 20, now).is_ok()).count();
        assert!((1..=20).contains(&admitted), "{admitted}");
        assert!(l.admit("10.0.0.2".parse().unwrap(), 20, now).is_ok());
        for n in 0..(LIMITER_ADDRESSES as u32 + 10) {
            let _ = l.admit(IpAddr::from(n.to_be_bytes()), 20, now);
        }
        assert!(l.tat.len() <= LIMITER_ADDRESSES);
    }

    #[test]
    fn routes() {
        assert_eq!(route(&http::Method::POST, "/oauth/token"), Some(Ok(Route::Token)));
        assert_eq!(route(&http::Method::GET, "/oauth/token"), Some(Err("POST")));
        assert_eq!(route(&http::Method::POST, "/device"), Some(Ok(Route::DeviceForm)));
        assert_eq!(route(&http::Method::GET, "/v1/messages"), None);
    }
}
