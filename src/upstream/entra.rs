//! Microsoft Entra ID access tokens for Microsoft Foundry, by the OAuth 2.0
//! client-credentials grant of one application (`providers.<name>.entra`).
//!
//! This module owns asking the tenant's token endpoint
//! (`{authority}/{tenant}/oauth2/v2.0/token`, scope
//! `https://ai.azure.com/.default` by default) for a token and keeping it
//! until shortly before it expires. It does not build requests: the caller
//! puts the token in an `Authorization: Bearer` header.
//!
//! The grant itself is the `oauth2` crate's (already in the build for the
//! sign-in's OpenID client), with the client secret in the request body
//! (`client_secret_post`, Microsoft's documented form). What is ours:
//! - the cache: one token, used until five minutes before it expires (or
//!   halfway through a short lifetime), so a request normally takes no lock
//!   and makes no call;
//! - past that point, a token still valid is handed out at once while one
//!   refresh runs in the background; a request waits only when there is no
//!   valid token, and then for one fetch shared by every waiter, within
//!   [`FETCH_TIMEOUT`] in all;
//! - a failed fetch is remembered for [`FAILURE_HOLD`]: requests meanwhile
//!   get its error at once instead of each asking the identity platform
//!   again (a wrong secret must not become a request per request);
//! - fetches run on the shared token runtime (`super::token_runtime`) and
//!   fill the cache themselves, so a fetch whose request went away still
//!   leaves its token for the next;
//! - sources are shared across config reloads ([`source_for`]) while the
//!   application's settings are unchanged, so a reload keeps the token;
//! - errors name the tenant, the client id and Microsoft's error code
//!   (`AADSTS…`), never the secret or a token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use sha2::{Digest, Sha256};

use crate::config::schema::EntraConfig;

/// Longest wait for a token, queueing behind another fetch included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed fetch answers for the identity platform.
pub const FAILURE_HOLD: Duration = Duration::from_secs(5);
/// A token is refreshed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Assumed lifetime when the endpoint gives none (Entra's shortest default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The lifetimes believed: Entra's are 60–90 minutes; a value outside
/// this range is taken as its nearest bound.
const LIFETIME_BOUNDS: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(24 * 3600));

#[derive(Debug, Clone, thiserror::Error)]
pub enum EntraError {
    #[error("entra: {0}")]
    Config(String),
    #[error("no Entra ID token for client {client_id} in tenant {tenant}: {reason}")]
    Fetch {
        tenant: String,
        client_id: String,
        reason: String,
    },
    #[error("no Entra ID token for client {client_id} in tenant {tenant}: the token endpoint did not answer within {timeout:?}")]
    Timeout {
        tenant: String,
        client_id: String,
        timeout: Duration,
    },
    #[error("{0}")]
    Runtime(String),
}

struct Cached {
    value: String,
    refresh_at: Instant,
    expires_at: Instant,
}

type Client = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// Access tokens for one Entra ID application.
pub struct TokenSource {
    inner: Arc<Inner>,
    timeout: Duration,
}

struct Inner {
    tenant: String,
    client_id: String,
    scope: String,
    client: Client,
    http: oauth2::reqwest::Client,
    current: ArcSwapOption<Cached>,
    /// The last failed fetch and when it failed.
    failed: std::sync::Mutex<Option<(Instant, EntraError)>>,
    /// Held by the one fetch in flight.
    one_fetch: tokio::sync::Mutex<()>,
    /// A background refresh is running.
    refreshing: AtomicBool,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraTokenSource")
            .field("tenant", &self.inner.tenant)
            .field("client_id", &self.inner.client_id)
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Check the settings and build the client (at config load: no request
    /// is made and no task started).
    pub fn new(config: &EntraConfig) -> Result<TokenSource, EntraError> {
        let bad = |what: &str| EntraError::Config(what.to_string());
        let label = |v: &str| {
            !v.is_empty() && v.len() <= 253 && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        };
        if !label(&config.tenant_id) {
            return Err(bad("`tenant_id` must be the tenant's id or domain"));
        }
        if config.client_id.trim().is_empty() {
            return Err(bad("`client_id` is empty"));
        }
        if config.client_secret.is_empty() {
            return Err(bad("`client_secret` is empty (is its ${VAR} set?)"));
        }
        let authority = config.authority.trim_end_matches('/');
        super::https_or_loopback("authority", authority).map_err(EntraError::Config)?;
        let token_url = TokenUrl::new(format!("{authority}/{}/oauth2/v2.0/token", config.tenant_id))
            .map_err(|_| bad("`authority` does not make a token URL"))?;
        let client = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(config.client_secret.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(token_url);
        let http = oauth2::reqwest::ClientBuilder::new()
            .redirect(oauth2::reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| EntraError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(TokenSource {
            inner: Arc::new(Inner {
                tenant: config.tenant_id.clone(),
                client_id: config.client_id.clone(),
                scope: config.scope.clone(),
                client,
                http,
                current: ArcSwapOption::empty(),
                failed: std::sync::Mutex::new(None),
                one_fetch: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
            }),
            timeout: FETCH_TIMEOUT,
        })
    }

    /// A valid access token: the cached one (refreshed in the background
    /// once it is due), else one fetch shared by every caller, within the
    /// fetch timeout in all.
    pub async fn token(&self) -> Result<String, EntraError> {
        let now = Instant::now();
        if let Some(c) = self.inner.current.load().as_ref() {
            if now < c.refresh_at {
                return Ok(c.value.clone());
            }
            if now < c.expires_at {
                self.refresh_in_background();
                return Ok(c.value.clone());
            }
        }
        if let Some(e) = self.inner.recent_failure(now) {
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let Ok(_only_fetch) = tokio::time::timeout_at(deadline, self.inner.one_fetch.lock()).await else {
            return Err(self.inner.timed_out(self.timeout));
        };
        // Another caller's fetch may have ended while this one waited.
        let now = Instant::now();
        if let Some(c) = self.inner.current.load().as_ref().filter(|c| now < c.expires_at) {
            return Ok(c.value.clone());
        }
        if let Some(e) = self.inner.recent_failure(now) {
            return Err(e);
        }
        let task = Inner::spawn_fetch(&self.inner, false)?;
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(self.inner.failed_with(format!("token task failed: {e}"))),
            // The fetch goes on and fills the cache for the next caller.
            Err(_) => Err(self.inner.timed_out(self.timeout)),
        }
    }

    /// One refresh at a time, off the request.
    fn refresh_in_background(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = Inner::spawn_fetch(&self.inner, true) {
            log::warn!("{e}");
            self.inner.refreshing.store(false, Ordering::Release);
        }
    }
}

impl Inner {
    fn recent_failure(&self, now: Instant) -> Option<EntraError> {
        let failed = self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failed
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < FAILURE_HOLD)
            .map(|(_, e)| e.clone())
    }

    fn timed_out(&self, timeout: Duration) -> EntraError {
        EntraError::Timeout {
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            timeout,
        }
    }

    fn failed_with(&self, reason: String) -> EntraError {
        EntraError::Fetch {
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            reason,
        }
    }

    /// Start a fetch on the token runtime; it stores its token (or its
    /// failure) itself, whoever waits for it. A `background` fetch clears
    /// `refreshing` when it ends.
    fn spawn_fetch(
        inner: &Arc<Inner>,
        background: bool,
    ) -> Result<tokio::task::JoinHandle<Result<String, EntraError>>, EntraError> {
        let runtime = super::token_runtime().map_err(EntraError::Runtime)?;
        let inner = inner.clone();
        Ok(runtime.spawn(async move {
            let started = Instant::now();
            let answer = inner
                .client
                .exchange_client_credentials()
                .add_scope(Scope::new(inner.scope.clone()))
                .request_async(&inner.http)
                .await;
            let result = match answer {
                Ok(token) => {
                    let value = token.access_token().secret().clone();
                    let lifetime = token
                        .expires_in()
                        .unwrap_or(DEFAULT_LIFETIME)
                        .clamp(LIFETIME_BOUNDS.0, LIFETIME_BOUNDS.1);
                    let margin = REFRESH_MARGIN.min(lifetime / 2);
                    inner.current.store(Some(Arc::new(Cached {
                        value: value.clone(),
                        refresh_at: started + (lifetime - margin),
                        expires_at: started + lifetime,
                    })));
                    *inner.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                    Ok(value)
                }
                Err(e) => {
                    let e = inner.failed_with(describe(&e));
                    log::warn!("{e}");
                    *inner.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((Instant::now(), e.clone()));
                    Err(e)
                }
            };
            if background {
                inner.refreshing.store(false, Ordering::Release);
            }
            result
        }))
    }
}

/// Process-wide cache so a config reload does not throw away the token: the
/// same source for the same application settings (the secret compared by
/// its digest) while some config still holds it.
pub fn source_for(config: &EntraConfig) -> Result<Arc<TokenSource>, EntraError> {
    struct Shared {
        key: [u8; 32],
        source: Weak<TokenSource>,
    }
    static SHARED: std::sync::Mutex<Vec<Shared>> = std::sync::Mutex::new(Vec::new());
    let mut h = Sha256::new();
    for part in [
        &config.authority,
        &config.tenant_id,
        &config.client_id,
        &config.scope,
        &config.client_secret,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key: [u8; 32] = h.finalize().into();
    let mut shared = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    shared.retain(|s| s.source.strong_count() > 0);
    if let Some(source) = shared.iter().find(|s| s.key == key).and_then(|s| s.source.upgrade()) {
        return Ok(source);
    }
    let source = Arc::new(TokenSource::new(config)?);
    shared.push(Shared {
        key,
        source: Arc::downgrade(&source),
    });
    Ok(source)
}
/// A failed grant in one line: Microsoft's error code and the first line
/// of its description (which carries the `AADSTS…` number), or the
/// transport error. No request content is quoted.
fn describe<RE: std::error::Error + 'static>(
    e: &oauth2::RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> String {
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            let code = r.error().as_ref().to_string();
            match r.error_description().and_then(|d| d.lines().next()) {
                Some(d) => format!("{code}: {}", d.chars().take(300).collect::<String>()),
                None => code,
            }
        }
        oauth2::RequestTokenError::Request(e) => format!("the token endpoint could not be reached: {e}"),
        oauth2::RequestTokenError::Parse(e, _) => format!(
            "the answer is not a token response ({:?} error at `{}`, line {} column {})",
            e.inner().classify(),
            e.path(),
            e.inner().line(),
            e.inner().column()
        ),
        oauth2::RequestTokenError::Other(e) => e.clone(),
    }
}
