//! Google OAuth access tokens for Vertex AI, from a service-account key file
//! (the file `GOOGLE_APPLICATION_CREDENTIALS` names).
//!
//! This module owns reading and checking the key file, and handing out a
//! valid bearer token for the [`CLOUD_PLATFORM`] scope. It does not build
//! requests or know about Vertex URLs: the caller puts the token in an
//! `Authorization: Bearer` header.
//!
//! The JWT-bearer grant (RS256 assertion signed with the key, posted to the
//! file's `token_uri`) and the token cache are the `gcp_auth` crate's
//! ([`CustomServiceAccount`]). Why that crate:
//! - it posts to the file's `token_uri` as is, over `https` or plain `http`
//!   (hyper-rustls `https_or_http`), so tests point it at a loopback mock;
//! - TLS is rustls with the `ring` provider passed explicitly
//!   (`ClientConfig::builder_with_provider`), the stack Pingora already
//!   uses: no OpenSSL, no aws-lc-rs, and it neither needs nor changes the
//!   process-default `CryptoProvider` (Pingora installs ring's when it
//!   builds its connectors; only ring is compiled in, so the default can
//!   never be ambiguous);
//! - it caches per scope and refreshes 20 s before expiry, logs through
//!   `tracing` (no subscriber here, and no token is ever in its messages),
//!   and `Token`'s `Debug` hides the value;
//! - it is kept by rustls/hyper-rustls maintainers.
//!
//! `yup-oauth2` also honours `token_uri`, but logs token responses at debug
//! level through `log` (which we route to the log file) and builds its
//! authenticator asynchronously; `google-cloud-auth` signs service-account
//! JWTs itself and never calls `token_uri`, spawns a refresh task when it is
//! built, defaults to aws-lc-rs and needs a newer Rust than this crate.
//!
//! What is ours, and why:
//! - One fetch at a time per key: `gcp_auth` checks its cache, then queues
//!   for a write lock and fetches without checking again, so twenty callers
//!   on a cold cache would make twenty token requests. A mutex around the
//!   call lets the first fetch and the rest find its token in the cache.
//! - The last token `gcp_auth` returned, reused while `gcp_auth`'s own
//!   `has_expired` says it is good: a request then takes no lock and no hop
//!   to another thread. Expiry is still the crate's decision.
//! - Fetches run on a small runtime of our own, started on first use (so
//!   after the daemon fork), like the Redis state backend: hyper's pooled
//!   connection to the token endpoint is then driven by one thread, not by
//!   whichever Pingora worker happened to refresh first, and a fetch goes
//!   on to fill the cache when the request that started it goes away.
//! - A fetch is bounded by [`FETCH_TIMEOUT`] (the crate has none, and
//!   retries failures itself, about 0.75 s of backoff in all).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use gcp_auth::{CustomServiceAccount, TokenProvider};
use sha2::{Digest, Sha256};

/// Scope Vertex needs.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Where Google's tools look for the key file.
pub const CREDENTIALS_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// Longest wait for a token, queueing behind another fetch included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no token. Messages name the file, account and endpoint, never the
/// private key or a token.
#[derive(Debug, thiserror::Error)]
pub enum GoogleAuthError {
    #[error("cannot read service-account file {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("service-account file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot set up TLS for the Google token endpoint: {0}")]
    Tls(String),
    #[error("no access token for {client_email} from {token_uri}: {reason}")]
    Fetch {
        client_email: String,
        token_uri: String,
        reason: String,
    },
    #[error("no access token for {client_email}: {token_uri} did not answer within {timeout:?}")]
    Timeout {
        client_email: String,
        token_uri: String,
        timeout: Duration,
    },
    #[error("cannot start the Google auth runtime: {0}")]
    Runtime(String),
}

/// Access tokens for one service account.
pub struct TokenSource {
    client_email: String,
    token_uri: String,
    account: Arc<CustomServiceAccount>,
    /// The token `gcp_auth` last returned (see the module doc).
    current: ArcSwapOption<gcp_auth::Token>,
    /// Held across a call into `gcp_auth`, so a cold cache costs one fetch.
    one_fetch: Arc<tokio::sync::Mutex<()>>,
    timeout: Duration,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("token", &self.current.load().as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Parse and validate a service-account JSON file (called at config
    /// load, so errors surface at `config lint`/reload). Reads the file and
    /// the system's root certificates synchronously; starts no thread or
    /// task and needs no runtime.
    pub fn from_file(path: &Path) -> Result<TokenSource, GoogleAuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| GoogleAuthError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(path, &text)
    }

    fn from_json(path: &Path, text: &str) -> Result<TokenSource, GoogleAuthError> {
        let invalid = |reason: String| GoogleAuthError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let key = KeyFile::parse(text).map_err(invalid)?;
        let account = CustomServiceAccount::from_json(text).map_err(|e| match e {
            gcp_auth::Error::Io(what, io) => GoogleAuthError::Tls(format!("{what}: {io}")),
            // Key parse errors may quote a line of the key: say what is wrong, not what is there.
            _ => invalid(
                "`private_key` is not an RSA private key in PKCS#8 PEM form (-----BEGIN PRIVATE KEY-----)".into(),
            ),
        })?;
        Ok(TokenSource {
            client_email: key.client_email,
            token_uri: key.token_uri,
            account: Arc::new(account),
            current: ArcSwapOption::empty(),
            one_fetch: Arc::new(tokio::sync::Mutex::new(())),
            timeout: FETCH_TIMEOUT,
        })
    }

    /// Bound fetches by `timeout` instead of [`FETCH_TIMEOUT`] (tests).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> TokenSource {
        self.timeout = timeout;
        self
    }

    /// A valid access token, fetched or refreshed as needed (cached by
    /// `gcp_auth`; concurrent callers share one fetch). Waits at most the
    /// fetch timeout.
    pub async fn token(&self) -> Result<String, GoogleAuthError> {
        if let Some(token) = self.current.load().as_ref() {
            if !token.has_expired() {
                return Ok(token.as_str().to_owned());
            }
        }
        let token = self.fetch().await?;
        let value = token.as_str().to_owned();
        self.current.store(Some(token));
        Ok(value)
    }

    /// The service account's email, for logs (not secret).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// Ask `gcp_auth` (cache first) on the auth runtime, one call at a time.
    async fn fetch(&self) -> Result<Arc<gcp_auth::Token>, GoogleAuthError> {
        let runtime = super::token_runtime().map_err(GoogleAuthError::Runtime)?;
        let account = self.account.clone();
        let one_fetch = self.one_fetch.clone();
        let timeout = self.timeout;
        let task = runtime.spawn(async move {
            tokio::time::timeout(timeout, async move {
                let _only_fetch = one_fetch.lock().await;
                account.token(&[CLOUD_PLATFORM]).await
            })
            .await
        });
        let fetch_failed = |reason: String| GoogleAuthError::Fetch {
            client_email: self.client_email.clone(),
            token_uri: self.token_uri.clone(),
            reason,
        };
        match task.await {
            Ok(Ok(Ok(token))) => Ok(token),
            Ok(Ok(Err(e))) => Err(fetch_failed(describe(&e))),
            Ok(Err(_)) => Err(GoogleAuthError::Timeout {
                client_email: self.client_email.clone(),
                token_uri: self.token_uri.clone(),
                timeout,
            }),
            Err(e) => Err(fetch_failed(format!("token task failed: {e}"))),
        }
    }
}

/// The fields we check before handing the file to `gcp_auth`. Read from a
/// `Value` rather than derived, so no error can quote a value (a misplaced
/// key, say) back to the log.
struct KeyFile {
    client_email: String,
    token_uri: String,
}

impl KeyFile {
    fn parse(text: &str) -> Result<KeyFile, String> {
        // Syntax errors carry a position, never content.
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let Some(fields) = value.as_object() else {
            return Err("not a JSON object".into());
        };
        let field = |name: &str| match fields.get(name) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.as_str()),
            Some(_) => Err(format!("`{name}` must be a non-empty string")),
            None => Err(format!("`{name}` is missing")),
        };
        match fields.get("type") {
            None => {}
            Some(serde_json::Value::String(t)) if t == "service_account" => {}
            Some(serde_json::Value::String(t)) if t.len() <= 40 => {
                return Err(format!(
                    "the file holds `{t}` credentials; Vertex needs a service-account key file (`\"type\": \"service_account\"`)"
                ))
            }
            Some(_) => return Err("`type` must be \"service_account\"".into()),
        }
        field("private_key")?;
        let client_email = field("client_email")?.to_string();
        let token_uri = field("token_uri")?.to_string();
        check_token_uri(&token_uri)?;
        Ok(KeyFile {
            client_email,
            token_uri,
        })
    }
}

/// `https`, or plain `http` to a loopback host only: the signed assertion
/// is a grant for an hour of tokens and must not cross a network in clear.
fn check_token_uri(uri: &str) -> Result<(), String> {
    super::https_or_loopback("token_uri", uri)
}

/// A `gcp_auth` error and its causes, in one line. A response that is not
/// a token is described by position only: serde may quote the body.
fn describe(e: &gcp_auth::Error) -> String {
    match e {
        gcp_auth::Error::Json(what, json) => {
            return format!(
                "{what} ({:?} error at line {} column {})",
                json.classify(),
                json.line(),
                json.column()
            )
        }
        // gcp_auth keeps the status and body of a refusal to itself.
        gcp_auth::Error::Str("token request failed") => {
            return "the token endpoint answered with an error status (a deleted or disabled key, an unknown \
                    account, or a server error)"
                .into()
        }
        _ => {}
    }
    crate::error::with_causes(e)
}

/// A source handed out by [`source_for`], and the file contents it was made from.
struct Shared {
    path: PathBuf,
    digest: [u8; 32],
    source: Weak<TokenSource>,
}

/// Process-wide cache so a config reload does not throw away cached tokens:
/// returns the same `Arc` for the same path while the file's contents are
/// unchanged and some config still holds it. Once no config does, the
/// source (and its key) is dropped.
pub fn source_for(path: &Path) -> Result<Arc<TokenSource>, GoogleAuthError> {
    static SHARED: Mutex<Vec<Shared>> = Mutex::new(Vec::new());
    let text = std::fs::read_to_string(path).map_err(|e| GoogleAuthError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    shared.retain(|s| s.source.strong_count() > 0);
    if let Some(source) = shared
        .iter()
        .find(|s| s.path == path && s.digest == digest)
        .and_then(|s| s.source.upgrade())
    {
        return Ok(source);
    }
    let source = Arc::new(TokenSource::from_json(path, &text)?);
    shared.retain(|s| s.path != path);
    shared.push(Shared {
        path: path.to_path_buf(),
        digest,
        source: Arc::downgrade(&source),
    });
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_token_uri("https://oauth2.googleapis.com/token").is_ok());
        assert!(check_token_uri("http://127.0.0.1:8080/token").is_ok());
        assert!(check_token_uri("http://[::1]:8080/token").is_ok());
        assert!(check_token_uri("http://localhost/token").is_ok());
        assert!(check_token_uri("http://oauth2.googleapis.com/token").is_err());
        assert!(check_token_uri("ftp://127.0.0.1/token").is_err());
        assert!(check_token_uri("/token").is_err());
        assert!(check_token_uri("not a url").is_err());
    }

    #[test]
    fn key_file_errors_name_the_field_not_the_value() {
        let secret = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n-----END PRIVATE KEY-----\n";
        let cases = [
            serde_json::json!(secret).to_string(),
            serde_json::json!({"type": "service_account", "private_key": secret, "token_uri": "https://x/token"})
                .to_string(),
            serde_json::json!({"type": "service_account", "private_key": secret, "client_email": 5,
                "token_uri": "https://x/token"})
            .to_string(),
            serde_json::json!({"type": secret, "private_key": secret}).to_string(),
        ];
        for text in &cases {
            let e = KeyFile::parse(text).err().unwrap_or_default();
            assert!(!e.is_empty(), "{text} was accepted");
            assert!(!e.contains("MIIEvQ") && !e.contains("PRIVATE KEY"), "{e}");
        }
    }
}
