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
//! - one fetch at a time: concurrent requests on a cold or stale cache wait
//!   for the same fetch;
//! - a token that is stale but not yet expired is still used when a
//!   refresh fails, so an identity-platform blip costs nothing until the
//!   token really runs out;
//! - fetches run on the shared token runtime (`super::token_runtime`) and
//!   are bounded by [`FETCH_TIMEOUT`];
//! - errors name the tenant, the client id and Microsoft's error code
//!   (`AADSTS…`), never the secret or a token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};

use crate::config::schema::EntraConfig;

/// Longest wait for a token, queueing behind another fetch included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token is refreshed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Assumed lifetime when the endpoint gives none (Entra's shortest default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
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

type Client = BasicClient<oauth2::EndpointNotSet, oauth2::EndpointNotSet, oauth2::EndpointNotSet, oauth2::EndpointNotSet, oauth2::EndpointSet>;

/// Access tokens for one Entra ID application.
pub struct TokenSource {
    tenant: String,
    client_id: String,
    scope: String,
    client: Arc<Client>,
    http: oauth2::reqwest::Client,
    current: ArcSwapOption<Cached>,
    one_fetch: Arc<tokio::sync::Mutex<()>>,
    timeout: Duration,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraTokenSource")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Check the settings and build the client (at config load: no request
    /// is made and no task started).
    pub fn new(config: &EntraConfig) -> Result<TokenSource, EntraError> {
        let bad = |what: &str| EntraError::Config(what.to_string());
        let label = |v: &str| {
            !v.is_empty()
                && v.len() <= 253
                && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
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
        let parsed: http::Uri = authority
            .parse()
            .map_err(|_| bad("`authority` is not a URL"))?;
        match (parsed.scheme_str(), parsed.host()) {
            (Some("https"), Some(_)) => {}
            (Some("http"), Some(h)) if super::google_auth::is_loopback(h) => {}
            _ => return Err(bad("`authority` must be an https URL (plain http only to a loopback address)")),
        }
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
            tenant: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            scope: config.scope.clone(),
            client: Arc::new(client),
            http,
            current: ArcSwapOption::empty(),
            one_fetch: Arc::new(tokio::sync::Mutex::new(())),
            timeout: FETCH_TIMEOUT,
        })
    }

    /// A valid access token: the cached one while it is fresh, else one
    /// fetch shared by every caller (the stale one if that fetch fails and
    /// it has not expired).
    pub async fn token(&self) -> Result<String, EntraError> {
        if let Some(t) = self.fresh(Instant::now()) {
            return Ok(t);
        }
        let _only_fetch = match tokio::time::timeout(self.timeout, self.one_fetch.lock()).await {
            Ok(guard) => guard,
            Err(_) => return self.stale_or(self.timed_out()),
        };
        // Another caller may have fetched while this one waited.
        if let Some(t) = self.fresh(Instant::now()) {
            return Ok(t);
        }
        match self.fetch().await {
            Ok(cached) => {
                let value = cached.value.clone();
                self.current.store(Some(Arc::new(cached)));
                Ok(value)
            }
            Err(e) => self.stale_or(e),
        }
    }

    fn fresh(&self, now: Instant) -> Option<String> {
        self.current
            .load()
            .as_ref()
            .filter(|c| now < c.refresh_at)
            .map(|c| c.value.clone())
    }

    /// The cached token while it has not expired, else `e`.
    fn stale_or(&self, e: EntraError) -> Result<String, EntraError> {
        match self.current.load().as_ref() {
            Some(c) if Instant::now() < c.expires_at => {
                log::warn!("{e}; the current token (still valid) is used meanwhile");
                Ok(c.value.clone())
            }
            _ => Err(e),
        }
    }

    fn timed_out(&self) -> EntraError {
        EntraError::Timeout {
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            timeout: self.timeout,
        }
    }

    async fn fetch(&self) -> Result<Cached, EntraError> {
        let runtime = super::token_runtime().map_err(EntraError::Runtime)?;
        let client = self.client.clone();
        let http = self.http.clone();
        let scope = Scope::new(self.scope.clone());
        let task = runtime.spawn(async move {
            let started = Instant::now();
            let answer = client
                .exchange_client_credentials()
                .add_scope(scope)
                .request_async(&http)
                .await;
            (started, answer)
        });
        let (started, answer) = match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                return Err(self.failed(format!("token task failed: {e}")));
            }
            Err(_) => return Err(self.timed_out()),
        };
        let token = answer.map_err(|e| self.failed(describe(&e)))?;
        let lifetime = token.expires_in().unwrap_or(DEFAULT_LIFETIME);
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(Cached {
            value: token.access_token().secret().clone(),
            refresh_at: started + lifetime - margin,
            expires_at: started + lifetime,
        })
    }

    fn failed(&self, reason: String) -> EntraError {
        EntraError::Fetch {
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            reason,
        }
    }
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
