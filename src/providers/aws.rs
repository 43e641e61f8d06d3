//! AWS request signing for the provider types hosted on AWS: Bedrock
//! Runtime (`bedrock`, `bedrock_messages`), Bedrock's Mantle endpoint and
//! Claude Platform on AWS (`claude_aws`). Each signs with its own service
//! name (`upstream::sigv4`); this module owns where the keys come from (the
//! standard AWS variables, read at config load) and adding the signature to
//! a built request head.

use pingora::http::RequestHeader;

use super::{credential_header, Attempt, Build};
use crate::config::ConfigError;
use crate::error::GatewayError;
use crate::secret::Secret;

/// The region and the keys SigV4 signs with.
pub struct AwsSigning {
    pub region: String,
    access_key_id: Option<String>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
}

impl std::fmt::Debug for AwsSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSigning")
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id.is_some())
            .finish_non_exhaustive()
    }
}

impl AwsSigning {
    /// The region from the config (else `AWS_REGION`, `AWS_DEFAULT_REGION`)
    /// and the keys from the environment; `None` without a region. A
    /// provider with neither an API key (`has_api_key`) nor signing keys
    /// gets a warning naming `key_hint`, the variable its API key is
    /// usually in.
    pub fn from_build(b: &mut Build<'_>, has_api_key: bool, key_hint: &str) -> Option<AwsSigning> {
        let region = b
            .config
            .region
            .clone()
            .or_else(|| b.nonempty_env("AWS_REGION"))
            .or_else(|| b.nonempty_env("AWS_DEFAULT_REGION"));
        let region = region?;
        let signing = AwsSigning {
            region,
            access_key_id: b.nonempty_env("AWS_ACCESS_KEY_ID"),
            secret_access_key: b.nonempty_env("AWS_SECRET_ACCESS_KEY").map(|s| Secret::new(&s)),
            session_token: b.nonempty_env("AWS_SESSION_TOKEN").map(|s| Secret::new(&s)),
        };
        if !has_api_key && !signing.can_sign() {
            b.warnings.push(format!(
                "{}: no credentials: set {key_hint} (or `api_key_env_var`), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; `{}` will be called unsigned",
                b.key, b.name
            ));
        }
        Some(signing)
    }

    /// [`AwsSigning::from_build`] for a type that cannot do without a region.
    pub fn required(b: &mut Build<'_>, has_api_key: bool, key_hint: &str) -> Result<AwsSigning, ConfigError> {
        Self::from_build(b, has_api_key, key_hint).ok_or_else(|| {
            ConfigError::invalid(
                format!("{}.region", b.key),
                format!("required for type `{}` (or set AWS_REGION)", b.config.kind),
            )
        })
    }

    /// Whether both signing keys are there.
    pub fn can_sign(&self) -> bool {
        self.access_key_id.is_some() && self.secret_access_key.is_some()
    }

    /// Sign `req` (for `path_and_query` at the attempt's base, with `body`)
    /// for `service`: adds `authorization`, `x-amz-date`,
    /// `x-amz-content-sha256` and, for temporary keys,
    /// `x-amz-security-token`, all marked sensitive. Without keys the head
    /// is left as it is.
    pub fn sign(
        &self,
        service: &str,
        req: &mut RequestHeader,
        to: &Attempt<'_>,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), GatewayError> {
        let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) else {
            return Ok(());
        };
        let url = format!("https://{}{}", to.base.authority, path_and_query);
        let signed = crate::upstream::sigv4::sign(
            service,
            &url,
            req,
            body,
            &crate::upstream::sigv4::Credentials {
                access_key_id: id,
                secret_access_key: secret.expose(),
                session_token: self.session_token.as_ref().map(|t| t.expose()),
                region: &self.region,
            },
            std::time::SystemTime::now(),
        )
        .map_err(|e| GatewayError::Internal(format!("cannot sign the request to `{}`: {e}", to.provider)))?;
        for (name, value) in signed {
            let name =
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| GatewayError::Internal(e.to_string()))?;
            credential_header(req, to, name, &value)?;
        }
        Ok(())
    }
}

/// Whether the config names an API key for this provider, or `env_var`
/// (the type's standard variable) holds one.
pub fn has_api_key(b: &Build<'_>, env_var: &str) -> bool {
    let p = b.config;
    p.api_key.is_some() || p.api_key_env_var.is_some() || !p.keys.is_empty() || b.nonempty_env(env_var).is_some()
}
