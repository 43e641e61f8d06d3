//! `anthropic`: the Messages API itself, passed through; and the clouds
//! that serve Claude with the same API under another base URL:
//! `foundry` (Microsoft Foundry, `https://{resource}.services.ai.azure.com/anthropic`)
//! and `claude_aws` (Claude Platform on AWS,
//! `https://aws-external-anthropic.{region}.api.aws`, with its
//! `anthropic-workspace-id`), each with an API key as `x-api-key`
//! (`docs/protocol-notes.md` §5.5).
//!
//! The body goes upstream as the client sent it, with at most the `model`
//! string spliced (a route's rename) and `speed` added or removed for fast
//! mode. The client's headers go through under the policy of
//! `dialects::anthropic::forward_request_headers`, with the provider's key
//! or, in passthrough-auth, the client's own credential. The answer, any
//! status, is relayed byte for byte.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::{internal, Adapter, Answer, Attempt, Build, Built, Call, Outgoing, Payload, Refusal, Reply};
use crate::dialects::anthropic::{self, supports_fast_mode, SpeedEdit, UpstreamAuth, FAST_MODE_BETA};
use crate::error::GatewayError;
use crate::secret::Secret;

pub static TYPE: super::ProviderType = super::ProviderType {
    name: "anthropic",
    default_base: Some("https://api.anthropic.com"),
    base_from: None,
    key_env: Some("ANTHROPIC_API_KEY"),
    standard_env: None,
    credential: super::CredentialKind::Key,
    without_key: super::WithoutKey::ForwardsClient,
    without_key_note: "none: clients' own credentials are forwarded",
    build,
};

fn build(_: &mut Build<'_>) -> Result<Built, crate::config::ConfigError> {
    Ok(Built {
        adapter: Arc::new(Anthropic::default()),
        derived_base: None,
    })
}

pub static FOUNDRY: super::ProviderType = super::ProviderType {
    name: "foundry",
    default_base: None,
    base_from: Some(super::BaseFrom {
        listed: "(from resource: https://RESOURCE.services.ai.azure.com/anthropic)",
        added: "from the resource",
    }),
    key_env: Some("ANTHROPIC_FOUNDRY_API_KEY"),
    standard_env: None,
    credential: super::CredentialKind::Key,
    without_key: super::WithoutKey::Nothing,
    without_key_note: "none: set api_key_env_var (the Foundry resource's key)",
    build: build_foundry,
};

fn build_foundry(b: &mut Build<'_>) -> Result<Built, crate::config::ConfigError> {
    let derived_base = match (&b.config.resource, &b.config.api_base) {
        (Some(r), _) => Some(format!(
            "https://{}.services.ai.azure.com/anthropic",
            host_label(b, "resource", r)?
        )),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(crate::config::ConfigError::invalid(
                b.key,
                "a foundry provider needs `resource` (the Foundry resource name) or `api_base`",
            ))
        }
    };
    Ok(Built {
        adapter: Arc::new(Anthropic::default()),
        derived_base,
    })
}

pub static CLAUDE_AWS: super::ProviderType = super::ProviderType {
    name: "claude_aws",
    default_base: None,
    base_from: Some(super::BaseFrom {
        listed: "(from region: https://aws-external-anthropic.REGION.api.aws)",
        added: "from the region",
    }),
    key_env: Some("ANTHROPIC_AWS_API_KEY"),
    standard_env: None,
    credential: super::CredentialKind::Key,
    without_key: super::WithoutKey::Nothing,
    without_key_note: "none: set api_key_env_var (the workspace's API key)",
    build: build_claude_aws,
};

fn build_claude_aws(b: &mut Build<'_>) -> Result<Built, crate::config::ConfigError> {
    let Some(workspace) = &b.config.workspace_id else {
        return Err(crate::config::ConfigError::invalid(
            format!("{}.workspace_id", b.key),
            "Claude Platform on AWS needs the workspace (wrkspc_…)",
        ));
    };
    let value = http::HeaderValue::from_str(workspace).map_err(|_| {
        crate::config::ConfigError::invalid(format!("{}.workspace_id", b.key), "not a valid header value")
    })?;
    let derived_base = match (&b.config.region, &b.config.api_base) {
        (Some(r), _) => Some(format!(
            "https://aws-external-anthropic.{}.api.aws",
            host_label(b, "region", r)?
        )),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(crate::config::ConfigError::invalid(
                b.key,
                "a claude_aws provider needs `region` (or `api_base`)",
            ))
        }
    };
    Ok(Built {
        adapter: Arc::new(Anthropic {
            headers: vec![(http::HeaderName::from_static("anthropic-workspace-id"), value)],
        }),
        derived_base,
    })
}

/// A config value that becomes part of a host name: letters, digits, `-`.
fn host_label<'a>(b: &Build<'_>, field: &str, v: &'a str) -> Result<&'a str, crate::config::ConfigError> {
    let ok = !v.is_empty() && v.len() <= 63 && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    if ok {
        Ok(v)
    } else {
        Err(crate::config::ConfigError::invalid(
            format!("{}.{field}", b.key),
            format!("`{}` is not a host-name label (letters, digits, `-`)", v.escape_debug()),
        ))
    }
}

/// The Messages API passed through, with the headers a platform needs
/// besides the client's (Claude Platform on AWS's workspace).
#[derive(Debug, Default)]
pub struct Anthropic {
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Adapter for Anthropic {
    fn forwards_raw(&self) -> bool {
        true
    }

    fn prepare(&self, out: &Outgoing<'_>) -> Result<Box<dyn Call>, GatewayError> {
        // Fast mode where the model has it (with its beta); elsewhere
        // `speed` is dropped and the request runs at standard speed.
        let request = out.claude_request();
        let fast = out.wants_fast && supports_fast_mode(out.upstream_model);
        let speed = match (out.wants_fast, fast, request.speed_fast) {
            (true, true, false) => SpeedEdit::Insert,
            (true, false, true) => SpeedEdit::Remove,
            _ => SpeedEdit::Keep,
        };
        Ok(Box::new(Passthrough {
            payload: Payload {
                body: request.upstream_body(Some(out.upstream_model), speed),
                upstream_model: Some(out.upstream_model.to_string()),
            },
            beta: fast.then_some(FAST_MODE_BETA),
            headers: self.headers.clone(),
        }))
    }

    fn forward(&self, body: Bytes) -> Option<Box<dyn Call>> {
        Some(Box::new(Passthrough {
            payload: Payload {
                body,
                upstream_model: None,
            },
            beta: None,
            headers: self.headers.clone(),
        }))
    }

    fn probe_auth(&self, head: &mut RequestHeader, key: Option<&Secret>, _bearer: Option<&str>) {
        if let Some(key) = key {
            let _ = head.insert_header("anthropic-version", "2023-06-01");
            let _ = head.insert_header("x-api-key", key.expose());
        }
        for (name, value) in &self.headers {
            let _ = head.insert_header(name.clone(), value.clone());
        }
    }
}

/// A request to an Anthropic-type upstream.
struct Passthrough {
    payload: Payload,
    /// A beta to add to `anthropic-beta` (fast mode), if not already there.
    beta: Option<&'static str>,
    /// The platform's own headers.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Call for Passthrough {
    fn payload(&self) -> &Payload {
        &self.payload
    }

    fn fast(&self) -> bool {
        self.beta.is_some()
    }

    fn request_id_header(&self) -> &'static str {
        "request-id"
    }

    /// The client's method, path, query and headers under the header policy
    /// of [`anthropic::forward_request_headers`].
    fn head(&self, to: &Attempt<'_>) -> Result<RequestHeader, GatewayError> {
        let out = to.client;
        let auth = match (to.credential, to.client_credential) {
            (Some(key), _) => UpstreamAuth::ProviderKey(key.expose()),
            (None, true) => UpstreamAuth::ClientCredential,
            (None, false) => UpstreamAuth::None,
        };
        let mut headers = anthropic::forward_request_headers(out.headers, auth, to.headers);
        if let Some(beta) = self.beta {
            anthropic::add_beta(&mut headers, beta);
        }
        let path = to.base.join(out.path);
        let target = match out.query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut req =
            RequestHeader::build(out.method.clone(), target.as_bytes(), Some(headers.len() + 2)).map_err(internal)?;
        req.insert_header(http::header::HOST, &to.base.authority)
            .map_err(internal)?;
        for (name, value) in headers {
            req.append_header(name, value).map_err(internal)?;
        }
        for (name, value) in &self.headers {
            req.insert_header(name.clone(), value.clone()).map_err(internal)?;
        }
        if !self.payload.body.is_empty() || out.method == http::Method::POST {
            req.insert_header(http::header::CONTENT_LENGTH, self.payload.body.len().to_string())
                .map_err(internal)?;
        }
        Ok(req)
    }

    fn refusal(&self, _: &ResponseHeader, _: &[u8]) -> Refusal {
        Refusal::Verbatim
    }

    fn answer(&self, _: &ResponseHeader, _: &Reply<'_>) -> Answer {
        Answer::Relay
    }
}
