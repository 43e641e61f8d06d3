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
use crate::store::signin::{Decision, Flow, Identity, NewGrant, Poll, RevokeBy, SigninStore};

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

/// The browser-binding cookie: `__Host-` on https (no other host of the
/// domain can set or shadow it), a plain name on loopback http.
const COOKIE: &str = "mg_signin";
const HOST_COOKIE: &str = "__Host-mg_signin";

fn cookie_name(signin: &Signin) -> &'static str {
    if signin.secure_cookies {
        HOST_COOKIE
    } else {
        COOKIE
    }
}
/// The largest form the sign-in endpoints read.
const FORM_LIMIT: u64 = 16 * 1024;
/// How long a browser round trip to the IdP may take.
const FLOW_TTL_MS: i64 = 10 * 60 * 1000;
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

async fn read_form(session: &mut Session, snap: &Snapshot) -> Result<HashMap<String, String>, OAuthError> {
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
const IDP_REFRESH: &str = "idp-refresh";
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
// The browser side.

/// A page to show.
struct Page {
    status: u16,
    title: &'static str,
    /// HTML, escaped where it holds anything not ours.
    body: String,
    /// A redirect instead (`303 See Other`).
    location: Option<String>,
}

impl Page {
    fn new(status: u16, title: &'static str, text: &str) -> Page {
        Page {
            status,
            title,
            body: format!("<p>{}</p>", esc(text)),
            location: None,
        }
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn send_page(
    session: &mut Session,
    ctx: &mut RequestCtx,
    page: Page,
    extra: &[(&'static str, String)],
) -> Result<(), GatewayError> {
    let mut headers = vec![
        ("cache-control", "no-store".to_string()),
        ("x-frame-options", "DENY".to_string()),
        ("referrer-policy", "no-referrer".to_string()),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'".to_string(),
        ),
    ];
    headers.extend(extra.iter().cloned());
    if let Some(to) = page.location {
        headers.push(("location", to));
        respond::complete(session, ctx, 303, "text/plain; charset=utf-8", Bytes::new(), &headers).await;
        return Ok(());
    }
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{title} · modelgate</title><style>body{{font:16px system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;color:#222}}\
         input{{font:inherit;font-size:1.4em;letter-spacing:.1em;width:10em;text-transform:uppercase}}\
         button{{font:inherit;padding:.4em 1.2em;margin-right:.6em}}code{{font-size:1.3em}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = page.title,
        body = page.body
    );
    respond::complete(
        session,
        ctx,
        page.status,
        "text/html; charset=utf-8",
        Bytes::from(html),
        &headers,
    )
    .await;
    Ok(())
}

fn set_cookie(signin: &Signin, value: &str) -> String {
    format!(
        "{}={value}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax{}",
        cookie_name(signin),
        if signin.secure_cookies { "; Secure" } else { "" }
    )
}

/// The browser-binding cookie the request carries.
fn cookie(session: &Session, signin: &Signin) -> Option<String> {
    let wanted = cookie_name(signin);
    session
        .req_header()
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, value)| *name == wanted && value.len() >= 32 && value.len() <= 64)
        .map(|(_, value)| value.to_string())
}

/// Whether a form post comes from the gateway's own pages: a browser says
/// where a post comes from (`Origin`, `Sec-Fetch-Site`); one from another
/// site, even a sibling host of the same domain, is refused.
fn same_origin(session: &Session, signin: &Signin) -> bool {
    let h = &session.req_header().headers;
    let origin_ok = h
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|o| o.trim_end_matches('/') == signin.origin);
    let site_ok = h
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| matches!(s, "same-origin" | "none"));
    origin_ok && site_ok
}

fn query(session: &Session) -> HashMap<String, String> {
    url::form_urlencoded::parse(session.req_header().uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The form asking for the user code, pre-filled from the link Claude
/// Code opened; the person still submits it (RFC 8628 §5.4).
fn code_form(signin: &Signin, cookie: &str, code: &str, note: &str) -> String {
    format!(
        "{note}<p>Enter the code Claude Code shows to sign it in with your organisation's account.</p>\
         <form method=\"post\" action=\"{url}/device\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"step\" value=\"code\">\
         <p><input name=\"user_code\" value=\"{code}\" autocomplete=\"off\" autofocus required maxlength=\"16\" placeholder=\"XXXX-XXXX\"></p>\
         <p><button type=\"submit\">Continue</button></p></form>",
        url = esc(&signin.public_url),
        csrf = signin.csrf_token(cookie),
        code = esc(code),
    )
}

fn device_page(session: &Session, signin: &Signin) -> (Page, Option<String>) {
    let (cookie, fresh) = match cookie(session, signin) {
        Some(c) => (c, None),
        None => {
            let c = codes::secret();
            (c.clone(), Some(c))
        }
    };
    let q = query(session);
    let code = q
        .get("user_code")
        .and_then(|c| codes::normalize_user_code(c))
        .unwrap_or_default();
    let page = Page {
        status: 200,
        title: "Sign in Claude Code",
        body: code_form(signin, &cookie, &code, ""),
        location: None,
    };
    (page, fresh)
}

async fn device_form(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
    signin: &Signin,
) -> (Page, Option<String>) {
    if !same_origin(session, signin) {
        ctx.error_message = Some("verification form: posted from another site".into());
        return (
            Page::new(
                403,
                "Start again",
                "This form was sent from another site. Open the link Claude Code shows and continue on this gateway's own page.",
            ),
            None,
        );
    }
    let Some(cookie) = cookie(session, signin) else {
        return (
            Page::new(
                400,
                "Start again",
                "This browser did not keep the sign-in cookie. Open the link Claude Code shows again.",
            ),
            None,
        );
    };
    let form = match read_form(session, snap).await {
        Ok(f) => f,
        Err(e) => return (Page::new(400, "Bad request", &e.description), None),
    };
    if !form.get("csrf").is_some_and(|t| signin.csrf_ok(&cookie, t)) {
        ctx.error_message = Some("verification form: CSRF token mismatch".into());
        return (
            Page::new(
                403,
                "Start again",
                "This form did not come from this gateway's sign-in page (or the page is stale). Open the link Claude Code shows again.",
            ),
            None,
        );
    }
    let Some(code) = form.get("user_code").and_then(|c| codes::normalize_user_code(c)) else {
        return ask_again(
            signin,
            &cookie,
            "That is not a code Claude Code shows: it is eight letters, like WDJB-MJHT.",
        );
    };
    let store = match shared.signin.store(shared, snap).await {
        Ok(s) => s,
        Err(e) => return (service_down(e), None),
    };
    let now = now_ms();
    let pending = match store.pending(code.clone(), now).await {
        Ok(p) => p,
        Err(e) => return (service_down(e), None),
    };
    let Some(grant) = pending else {
        return ask_again(
            signin,
            &cookie,
            "That code is unknown, expired or already used. Check it, or start the sign-in in Claude Code again.",
        );
    };
    match form.get("step").map(String::as_str) {
        Some("approve") => {
            let idp = match shared.signin.idp(signin).await {
                Ok(i) => i,
                Err(e) => return (service_down(e), None),
            };
            let auth = idp.authorize();
            let flow = Flow {
                state_hash: codes::digest(&auth.state),
                user_code: grant.user_code,
                browser_hash: codes::digest(&cookie),
                nonce: auth.nonce,
                pkce_verifier: auth.pkce_verifier,
                expires_ms: now + FLOW_TTL_MS,
            };
            if let Err(e) = store.put_flow(flow).await {
                return (service_down(e), None);
            }
            let page = Page {
                status: 303,
                title: "Signing in",
                body: String::new(),
                location: Some(auth.url),
            };
            (page, None)
        }
        Some("deny") => {
            let _ = store.decide(grant.user_code, Decision::Deny, now).await;
            (
                Page::new(
                    200,
                    "Sign-in denied",
                    "Claude Code was not signed in. You can close this window.",
                ),
                None,
            )
        }
        _ => {
            let what = match grant.surface.as_deref() {
                Some("claude_code") | None => "Claude Code".to_string(),
                Some(other) => other.to_string(),
            };
            let csrf = signin.csrf_token(&cookie);
            let body = format!(
                "<p>{what} is asking to sign in with code</p><p><code>{code}</code></p>\
                 <p>Continue only if this is the code your own terminal or editor shows.</p>\
                 <form method=\"post\" action=\"{url}/device\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"user_code\" value=\"{code}\">\
                 <button type=\"submit\" name=\"step\" value=\"approve\">Sign in</button>\
                 <button type=\"submit\" name=\"step\" value=\"deny\">Deny</button></form>",
                what = esc(&what),
                code = esc(&code),
                url = esc(&signin.public_url),
            );
            (
                Page {
                    status: 200,
                    title: "Confirm the code",
                    body,
                    location: None,
                },
                None,
            )
        }
    }
}

/// The code form again, with why the last code was not taken.
fn ask_again(signin: &Signin, cookie: &str, why: &str) -> (Page, Option<String>) {
    let note = format!("<p><strong>{}</strong></p>", esc(why));
    let page = Page {
        status: 400,
        title: "Sign in Claude Code",
        body: code_form(signin, cookie, "", &note),
        location: None,
    };
    (page, None)
}

fn service_down(e: impl std::fmt::Display) -> Page {
    log::warn!("sign-in page: {e}");
    Page::new(
        503,
        "Try again shortly",
        "The gateway cannot reach its sign-in store or the identity provider right now. Try again in a minute.",
    )
}

/// The identity provider's redirect back: finish its code flow, check the
/// user against `allowed_groups`, and approve (or deny) the grant.
async fn callback(shared: &Shared, session: &mut Session, snap: &Snapshot, signin: &Signin) -> (Page, Option<String>) {
    let q = query(session);
    let Some(state) = q.get("state").filter(|s| !s.is_empty()) else {
        return (
            Page::new(400, "Sign-in failed", "The identity provider's answer has no `state`."),
            None,
        );
    };
    let store = match shared.signin.store(shared, snap).await {
        Ok(s) => s,
        Err(e) => return (service_down(e), None),
    };
    let now = now_ms();
    let flow = match store.take_flow(codes::digest(state), now).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return (
                Page::new(
                    400,
                    "Sign-in failed",
                    "This sign-in link has expired or was already used. Start the sign-in in Claude Code again.",
                ),
                None,
            )
        }
        Err(e) => return (service_down(e), None),
    };
    if cookie(session, signin).is_none_or(|c| codes::digest(&c) != flow.browser_hash) {
        // Not this browser's: the flow stays for the one that started it.
        let _ = store.put_flow(flow).await;
        return (
            Page::new(
                400,
                "Sign-in failed",
                "This sign-in was started in another browser. Open the link Claude Code shows in this one.",
            ),
            None,
        );
    }
    if let Some(error) = q.get("error") {
        let _ = store.decide(flow.user_code, Decision::Deny, now).await;
        let why = q.get("error_description").unwrap_or(error);
        return (
            Page::new(
                400,
                "Sign-in failed",
                &format!("The identity provider did not sign you in: {why}"),
            ),
            None,
        );
    }
    let Some(code) = q.get("code").filter(|c| !c.is_empty()) else {
        return (
            Page::new(400, "Sign-in failed", "The identity provider's answer has no `code`."),
            None,
        );
    };
    let idp = match shared.signin.idp(signin).await {
        Ok(i) => i,
        Err(e) => return (service_down(e), None),
    };
    let user = match idp.finish(code, &flow.nonce, &flow.pkce_verifier).await {
        Ok(u) => u,
        Err(e @ IdpError::Unreachable { .. }) => return (service_down(e), None),
        Err(e) => {
            log::warn!("sign-in callback: {e}");
            let _ = store.decide(flow.user_code, Decision::Deny, now).await;
            return (
                Page::new(
                    400,
                    "Sign-in failed",
                    "The identity provider's answer did not verify, so the sign-in was refused. Start it again in Claude Code.",
                ),
                None,
            );
        }
    };
    let who = user.email.clone().unwrap_or_else(|| user.subject.clone());
    if !signin.allows(&user.groups) {
        let _ = store.decide(flow.user_code, Decision::Deny, now).await;
        log::info!("sign-in: refused {who}: not in signin.allowed_groups");
        let text = format!("{who} is not in a group allowed to use this gateway. Ask your administrator for access.");
        return (Page::new(403, "Not allowed", &text), None);
    }
    let identity = Identity {
        subject: user.subject,
        email: user.email,
        name: user.name,
        groups: user.groups,
        idp_refresh: user.refresh_token.and_then(|t| signin.sealer.seal(IDP_REFRESH, &t)),
        current_refresh: None,
    };
    match store.decide(flow.user_code, Decision::Approve(identity), now).await {
        Ok(true) => (
            Page::new(
                200,
                "Signed in",
                &format!("Claude Code is signed in as {who}. You can close this window and return to it."),
            ),
            None,
        ),
        Ok(false) => (
            Page::new(
                400,
                "Sign-in failed",
                "The code expired before the sign-in finished. Start it again in Claude Code.",
            ),
            None,
        ),
        Err(e) => (service_down(e), None),
    }
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
    fn routes_and_escaping() {
        assert_eq!(route(&http::Method::POST, "/oauth/token"), Some(Ok(Route::Token)));
        assert_eq!(route(&http::Method::GET, "/oauth/token"), Some(Err("POST")));
        assert_eq!(route(&http::Method::POST, "/device"), Some(Ok(Route::DeviceForm)));
        assert_eq!(route(&http::Method::GET, "/v1/messages"), None);
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
