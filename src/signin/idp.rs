//! The organisation's identity provider, as the gateway's OpenID Connect
//! client (the `openidconnect` crate): discovery, the authorization URL
//! (code flow with PKCE S256, `state` and `nonce`), the code exchange with
//! the id_token verified against the provider's keys (signature, issuer,
//! audience, expiry with clock skew, nonce), the user's groups from a
//! configurable claim or, when the id_token lacks them, from userinfo, and
//! the refresh by which a user removed at the provider is found out.
//!
//! The provider's keys are re-read (with its discovery document) when an
//! id_token names a key they lack, at most once a minute: a provider that
//! rotates its signing key keeps working.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreProviderMetadata};
use openidconnect::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, TokenResponse,
};

use super::codes;

/// The client as discovery leaves it: an authorization endpoint, a token
/// and a userinfo endpoint when the provider names them.
type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two re-reads of the provider's keys, by default.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("the identity provider at {issuer} could not be reached or read: {detail}")]
    Unreachable { issuer: String, detail: String },
    /// The provider refused the grant (`invalid_grant` and the like): the
    /// user must sign in again.
    #[error("the identity provider refused: {0}")]
    Refused(String),
    /// What the provider sent does not verify (signature, issuer,
    /// audience, expiry, nonce).
    #[error("the identity provider's id_token did not verify: {0}")]
    Invalid(String),
    #[error("signin.oidc: {0}")]
    Config(String),
}

/// How the gateway is registered at the provider.
#[derive(Clone, PartialEq)]
pub struct IdpConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// `{public_url}/oauth/callback`.
    pub redirect_uri: String,
    pub groups_claim: String,
    /// Besides `openid`.
    pub scopes: Vec<String>,
    /// Extra parameters of the authorization request (Google's `access_type`).
    pub authorize_params: Vec<(String, String)>,
    /// The least time between two re-reads of the provider's keys when an
    /// id_token names one they lack ([`REDISCOVER_EVERY`]).
    pub rediscover_every: Duration,
}

impl std::fmt::Debug for IdpConfig {
    /// Without the client secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// An authorization request to send a browser to, and what the callback
/// needs to finish it.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// The provider's refresh token, when it issued one.
    pub refresh_token: Option<String>,
}

struct Discovered {
    client: Client,
    userinfo: Option<String>,
    at: Instant,
}

pub struct Idp {
    config: IdpConfig,
    http: openidconnect::reqwest::Client,
    discovered: ArcSwap<Discovered>,
}

impl Idp {
    /// Read the provider's discovery document and keys.
    pub async fn discover(config: IdpConfig) -> Result<Idp, IdpError> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            // A redirect from the provider's endpoints is not followed (SSRF).
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| IdpError::Config(e.to_string()))?;
        let discovered = fetch(&config, &http).await?;
        Ok(Idp {
            config,
            http,
            discovered: ArcSwap::from_pointee(discovered),
        })
    }

    /// What it was discovered for.
    pub fn config(&self) -> &IdpConfig {
        &self.config
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Where to send a browser: the code flow with PKCE, a fresh `state`
    /// and `nonce`.
    pub fn authorize(&self) -> Authorization {
        let d = self.discovered.load();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = d
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                || CsrfToken::new(codes::secret()),
                || Nonce::new(codes::secret()),
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        for (name, value) in &self.config.authorize_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        let (url, state, nonce) = request.url();
        Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        }
    }

    /// The callback's code, exchanged and verified.
    pub async fn finish(&self, code: &str, nonce: &str, pkce_verifier: &str) -> Result<User, IdpError> {
        let d = self.discovered.load_full();
        let response = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| IdpError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| token_error(&self.config.issuer, e))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| IdpError::Invalid("the token response has no id_token".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        self.verify(&d, id_token, &nonce).await?;
        // Verified above: its payload is what the provider signed.
        let claims = payload(&id_token.to_string())?;
        let refresh = response.refresh_token().map(|t| t.secret().clone());
        self.user(claims, response.access_token(), refresh).await
    }

    /// Refresh with the provider's refresh token: who the user is now (their
    /// groups may have changed), or [`IdpError::Refused`] when the provider
    /// no longer accepts them.
    pub async fn refresh(&self, refresh_token: &str) -> Result<User, IdpError> {
        let d = self.discovered.load_full();
        let token = RefreshToken::new(refresh_token.to_string());
        let response = d
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| IdpError::Config(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| token_error(&self.config.issuer, e))?;
        // A refresh's id_token is optional; without one, userinfo says who.
        let claims = match response.id_token() {
            Some(id_token) => {
                // No nonce on a refresh's id_token (OpenID Connect Core 12.2).
                self.verify(&d, id_token, |_: Option<&Nonce>| Ok(())).await?;
                payload(&id_token.to_string())?
            }
            None => serde_json::Value::Object(Default::default()),
        };
        let rotated = response
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| Some(refresh_token.to_string()));
        self.user(claims, response.access_token(), rotated).await
    }

    /// The user from verified id_token claims, asking userinfo for what they
    /// lack (email, groups, even the subject after a refresh).
    async fn user(
        &self,
        claims: serde_json::Value,
        access: &AccessToken,
        refresh_token: Option<String>,
    ) -> Result<User, IdpError> {
        let has = |k: &str| claims.get(k).is_some_and(|v| !v.is_null());
        let claims = if has("sub") && has("email") && has(&self.config.groups_claim) {
            claims
        } else {
            let info = self.userinfo(access).await?;
            if has("sub") && info.get("sub") != claims.get("sub") {
                return Err(IdpError::Invalid(
                    "userinfo is about another subject than the id_token".into(),
                ));
            }
            merge(claims, info)
        };
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let subject = text("sub").ok_or_else(|| IdpError::Invalid("no subject".into()))?;
        // An address the provider says it has not verified names no one.
        let verified = claims.get("email_verified").and_then(|v| v.as_bool()) != Some(false);
        Ok(User {
            subject,
            email: text("email").filter(|_| verified),
            name: text("name"),
            groups: groups(claims.get(&self.config.groups_claim)),
            refresh_token,
        })
    }

    async fn userinfo(&self, access: &AccessToken) -> Result<serde_json::Value, IdpError> {
        let d = self.discovered.load();
        let Some(url) = d.userinfo.clone() else {
            return Ok(serde_json::Value::Object(Default::default()));
        };
        let unreachable = |e: openidconnect::reqwest::Error| IdpError::Unreachable {
            issuer: self.config.issuer.clone(),
            detail: e.to_string(),
        };
        let resp = self
            .http
            .get(url)
            .bearer_auth(access.secret())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status().as_u16() == 401 {
            return Err(IdpError::Refused("userinfo refused the access token".into()));
        }
        let body = resp
            .error_for_status()
            .map_err(unreachable)?
            .bytes()
            .await
            .map_err(unreachable)?;
        serde_json::from_slice(&body).map_err(|e| IdpError::Invalid(format!("userinfo: {e}")))
    }

    /// Check an id_token's signature and claims (issuer, audience, expiry
    /// with clock skew, `nonce`); on a failure, once more with the
    /// provider's keys read again, in case it rotated in a new one.
    async fn verify<N: openidconnect::NonceVerifier + Copy>(
        &self,
        d: &Discovered,
        id_token: &openidconnect::core::CoreIdToken,
        nonce: N,
    ) -> Result<(), IdpError> {
        let Err(first) = id_token.claims(&d.client.id_token_verifier(), nonce) else {
            return Ok(());
        };
        match self.rediscover().await? {
            Some(fresh) => id_token
                .claims(&fresh.client.id_token_verifier(), nonce)
                .map(|_| ())
                .map_err(|e| IdpError::Invalid(e.to_string())),
            None => Err(IdpError::Invalid(first.to_string())),
        }
    }

    /// Read the discovery document and keys again, unless that was done in
    /// the last minute: the fresh client, or `None`.
    async fn rediscover(&self) -> Result<Option<Arc<Discovered>>, IdpError> {
        if self.discovered.load().at.elapsed() < self.config.rediscover_every {
            return Ok(None);
        }
        let fresh = Arc::new(fetch(&self.config, &self.http).await?);
        self.discovered.store(fresh.clone());
        Ok(Some(fresh))
    }
}

async fn fetch(config: &IdpConfig, http: &openidconnect::reqwest::Client) -> Result<Discovered, IdpError> {
    let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| IdpError::Config(format!("issuer: {e}")))?;
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|e| IdpError::Unreachable {
            issuer: config.issuer.clone(),
            detail: e.to_string(),
        })?;
    let userinfo = metadata.userinfo_endpoint().map(|u| u.url().to_string());
    let redirect =
        RedirectUrl::new(config.redirect_uri.clone()).map_err(|e| IdpError::Config(format!("redirect: {e}")))?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(config.client_id.clone()),
        config.client_secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(redirect);
    Ok(Discovered {
        client,
        userinfo,
        at: Instant::now(),
    })
}

/// A token endpoint's failure. Only `invalid_grant` is the provider
/// refusing the user (removed, disabled, the grant revoked or used); any
/// other answer (a 5xx's `server_error`, `invalid_client` after the
/// gateway's client secret expired) is an outage, so that it never ends
/// everyone's sign-in at once.
fn token_error<RE: std::error::Error + 'static>(
    issuer: &str,
    e: RequestTokenError<RE, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> IdpError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let what = match r.error_description() {
                Some(d) => format!("{}: {d}", r.error().as_ref()),
                None => r.error().as_ref().to_string(),
            };
            if *r.error() == CoreErrorResponseType::InvalidGrant {
                IdpError::Refused(what)
            } else {
                if matches!(
                    r.error(),
                    CoreErrorResponseType::InvalidClient | CoreErrorResponseType::UnauthorizedClient
                ) {
                    log::error!(
                        "the identity provider at {issuer} refuses the gateway's client ({what}): check signin.oidc.client_id and client_secret"
                    );
                }
                IdpError::Unreachable {
                    issuer: issuer.to_string(),
                    detail: format!("it answered {what}"),
                }
            }
        }
        other => IdpError::Unreachable {
            issuer: issuer.to_string(),
            detail: other.to_string(),
        },
    }
}

/// A JWT's payload as JSON (the signature is checked by the caller).
fn payload(jwt: &str) -> Result<serde_json::Value, IdpError> {
    let part = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| IdpError::Invalid("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| IdpError::Invalid(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| IdpError::Invalid(e.to_string()))
}

/// The id_token's claims, with userinfo's filling what they lack.
fn merge(mut claims: serde_json::Value, info: serde_json::Value) -> serde_json::Value {
    if let (Some(c), serde_json::Value::Object(i)) = (claims.as_object_mut(), info) {
        for (k, v) in i {
            c.entry(k).or_insert(v);
        }
    }
    claims
}

/// A groups claim: a list of names, or one name, or a space- or
/// comma-separated string (as some providers send it).
fn groups(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|g| g.as_str().map(str::to_string)).collect(),
        Some(serde_json::Value::String(s)) => s
            .split([',', ' '])
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_claims_in_their_usual_shapes() {
        assert_eq!(groups(Some(&json!(["eng", "data", 7]))), ["eng", "data"]);
        assert_eq!(groups(Some(&json!("eng,data ops"))), ["eng", "data", "ops"]);
        assert!(groups(Some(&json!({"eng": true}))).is_empty());
        assert!(groups(None).is_empty());
    }

    #[test]
    fn userinfo_fills_only_what_the_id_token_lacks() {
        let merged = merge(
            json!({"sub": "a", "email": "a@x"}),
            json!({"sub": "b", "groups": ["g"]}),
        );
        assert_eq!(merged, json!({"sub": "a", "email": "a@x", "groups": ["g"]}));
    }
}
