//! `anthropic`: the Messages API itself, passed through; and the clouds
//! that serve Claude with the same API under another base URL and their
//! own authentication (`docs/protocol-notes.md` §5.5):
//! - `foundry`: Microsoft Foundry,
//!   `https://{resource}.services.ai.azure.com/anthropic`; a key as
//!   `x-api-key`, or a Microsoft Entra ID token (`entra:`);
//! - `claude_aws`: Claude Platform on AWS,
//!   `https://aws-external-anthropic.{region}.api.aws`, with its
//!   `anthropic-workspace-id`; a key as `x-api-key`, or SigV4 (service
//!   `aws-external-anthropic`);
//! - `bedrock_messages`: Claude in Amazon Bedrock's Messages API, on
//!   Bedrock Runtime (`…/anthropic`, SigV4 service `bedrock` or a key as a
//!   bearer token) or the Mantle endpoint (a key as `x-api-key`, or SigV4
//!   service `bedrock-mantle`); Bedrock's model ids, and only the betas its
//!   table (`betas:`) lists, their paired fields stripped with them;
//! - `claude_gcp`: Claude on Google Cloud operated by Anthropic,
//!   `https://claude.googleapis.com/v1alpha/projects/{p}/locations/{l}/workspaces/{w}/invoke`,
//!   with a Google service account's OAuth token.
//!
//! The body goes upstream as the client sent it, with at most the `model`
//! string spliced (a route's rename) and `speed` added or removed for fast
//! mode, and on Bedrock only, unaccepted fields removed. The client's
//! headers go through under the policy of
//! `dialects::anthropic::forward_request_headers`, with the provider's
//! credential or, in passthrough-auth to Anthropic's own API, the client's.
//! The answer, any status, is relayed byte for byte; a cloud's error that
//! is not in Anthropic's shape (its front door's, say) is mapped to one.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::aws::{self, AwsSigning};
use super::{bearer_header, internal, Adapter, Answer, Attempt, Build, Built, Call, Outgoing, Payload, Refusal, Reply};
use crate::config::schema::BedrockEndpoint;
use crate::config::ConfigError;
use crate::dialects::anthropic::cloud::{self, Capabilities};
use crate::dialects::anthropic::{self, supports_fast_mode, SpeedEdit, UpstreamAuth, FAST_MODE_BETA};
use crate::error::{ErrorKind, GatewayError};
use crate::secret::Secret;

pub static TYPE: super::ProviderType = super::ProviderType {
    name: "anthropic",

    gen_ai_system: "anthropic",
    default_base: Some("https://api.anthropic.com"),
    base_from: None,
    key_env: Some("ANTHROPIC_API_KEY"),
    standard_env: None,
    credential: super::CredentialKind::Key,
    without_key: super::WithoutKey::ForwardsClient,
    without_key_note: "none: clients' own credentials are forwarded",
    build,
};

fn build(_: &mut Build<'_>) -> Result<Built, ConfigError> {
    Ok(Built {
        adapter: Arc::new(Anthropic::new(Site {
            first_party: true,
            auth_note: "x-api-key, else the client's own (passthrough-auth)",
            ..Site::default()
        })),
        derived_base: None,
        bearer: None,
    })
}

pub static FOUNDRY: super::ProviderType = super::ProviderType {
    name: "foundry",

    gen_ai_system: "az.ai.inference",
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

fn build_foundry(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    let derived_base = match (&b.config.resource, &b.config.api_base) {
        (Some(r), _) => Some(format!(
            "https://{}.services.ai.azure.com/anthropic",
            host_label(b, "resource", r)?
        )),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(ConfigError::invalid(
                b.key,
                "a foundry provider needs `resource` (the Foundry resource name) or `api_base`",
            ))
        }
    };
    let p = b.config;
    let bearer = match &p.entra {
        Some(_) if p.api_key.is_some() || p.api_key_env_var.is_some() || !p.keys.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{}.entra", b.key),
                "give either a key (`api_key_env_var`, `keys`) or `entra`, not both",
            ))
        }
        Some(entra) => Some(crate::upstream::Bearer::Entra(
            crate::upstream::entra::source_for(entra)
                .map_err(|e| ConfigError::invalid(format!("{}.entra", b.key), e.to_string()))?,
        )),
        None => None,
    };
    Ok(Built {
        adapter: Arc::new(Anthropic::new(Site {
            auth_note: if bearer.is_some() {
                "Entra ID token"
            } else {
                "x-api-key"
            },
            ..Site::default()
        })),
        derived_base,
        bearer,
    })
}

pub static CLAUDE_AWS: super::ProviderType = super::ProviderType {
    name: "claude_aws",

    gen_ai_system: "anthropic",
    default_base: None,
    base_from: Some(super::BaseFrom {
        listed: "(from region: https://aws-external-anthropic.REGION.api.aws)",
        added: "from the region",
    }),
    key_env: Some("ANTHROPIC_AWS_API_KEY"),
    standard_env: Some("ANTHROPIC_AWS_API_KEY"),
    credential: super::CredentialKind::Key,
    without_key: super::WithoutKey::Signs,
    without_key_note: "from the environment (ANTHROPIC_AWS_API_KEY, else AWS SigV4 keys)",
    build: build_claude_aws,
};

fn build_claude_aws(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    let Some(workspace) = &b.config.workspace_id else {
        return Err(ConfigError::invalid(
            format!("{}.workspace_id", b.key),
            "Claude Platform on AWS needs the workspace (wrkspc_…)",
        ));
    };
    let value = http::HeaderValue::from_str(workspace)
        .map_err(|_| ConfigError::invalid(format!("{}.workspace_id", b.key), "not a valid header value"))?;
    let derived_base = match (&b.config.region, &b.config.api_base) {
        (Some(r), _) => Some(format!(
            "https://aws-external-anthropic.{}.api.aws",
            host_label(b, "region", r)?
        )),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(ConfigError::invalid(
                b.key,
                "a claude_aws provider needs `region` (or `api_base`)",
            ))
        }
    };
    let has_key = aws::has_api_key(b, "ANTHROPIC_AWS_API_KEY");
    let signing = AwsSigning::from_build(b, has_key, "ANTHROPIC_AWS_API_KEY");
    if signing.is_none() && !has_key {
        b.warnings.push(format!(
            "{}: no API key (ANTHROPIC_AWS_API_KEY) and no region to sign in (`region` or AWS_REGION); `{}` will be called without a credential",
            b.key, b.name
        ));
    }
    Ok(Built {
        adapter: Arc::new(Anthropic::new(Site {
            headers: vec![(http::HeaderName::from_static("anthropic-workspace-id"), value)],
            signing: signing.map(|s| (s, SIGV4_CLAUDE_AWS)),
            auth_note: "x-api-key, else SigV4 (aws-external-anthropic)",
            ..Site::default()
        })),
        derived_base,
        bearer: None,
    })
}

/// SigV4 service names (`docs/protocol-notes.md` §5.5).
const SIGV4_CLAUDE_AWS: &str = "aws-external-anthropic";
const SIGV4_MANTLE: &str = "bedrock-mantle";

pub static BEDROCK_MESSAGES: super::ProviderType = super::ProviderType {
    name: "bedrock_messages",

    gen_ai_system: "aws.bedrock",
    default_base: None,
    base_from: Some(super::BaseFrom {
        listed: "(from region: https://bedrock-runtime.REGION.amazonaws.com/anthropic, or bedrock-mantle.REGION.api.aws/anthropic)",
        added: "from the region",
    }),
    key_env: Some("AWS_BEARER_TOKEN_BEDROCK"),
    standard_env: Some("AWS_BEARER_TOKEN_BEDROCK"),
    credential: super::CredentialKind::Key,
    without_key: super::WithoutKey::Signs,
    without_key_note: "from the environment (AWS_BEARER_TOKEN_BEDROCK, else AWS SigV4 keys)",
    build: build_bedrock_messages,
};

fn build_bedrock_messages(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    let has_key = aws::has_api_key(b, "AWS_BEARER_TOKEN_BEDROCK");
    let signing = AwsSigning::required(b, has_key, "AWS_BEARER_TOKEN_BEDROCK")?;
    let endpoint = b.config.endpoint.unwrap_or(if has_key {
        BedrockEndpoint::Mantle
    } else {
        BedrockEndpoint::Runtime
    });
    let region = host_label(b, "region", &signing.region)?;
    let (derived_base, service, key_as_bearer, auth_note) = match endpoint {
        BedrockEndpoint::Runtime => (
            format!("https://bedrock-runtime.{region}.amazonaws.com/anthropic"),
            crate::upstream::sigv4::BEDROCK,
            true,
            "Bedrock API key as a bearer token, else SigV4 (bedrock)",
        ),
        BedrockEndpoint::Mantle => (
            format!("https://bedrock-mantle.{region}.api.aws/anthropic"),
            SIGV4_MANTLE,
            false,
            "Bedrock API key as x-api-key, else SigV4 (bedrock-mantle)",
        ),
    };
    let caps = super::capabilities(b.config, Capabilities::none);
    Ok(Built {
        adapter: Arc::new(Anthropic::new(Site {
            signing: Some((signing, service)),
            key_as_bearer,
            caps: Some(caps),
            bedrock_ids: true,
            platform: "Claude in Amazon Bedrock",
            auth_note,
            ..Site::default()
        })),
        derived_base: Some(derived_base),
        bearer: None,
    })
}

pub static CLAUDE_GCP: super::ProviderType = super::ProviderType {
    name: "claude_gcp",

    gen_ai_system: "anthropic",
    default_base: None,
    base_from: Some(super::BaseFrom {
        listed: "(from project, location, workspace_id: https://claude.googleapis.com/v1alpha/projects/P/locations/L/workspaces/W/invoke)",
        added: "from the project, location and workspace",
    }),
    key_env: None,
    standard_env: Some(crate::upstream::google_auth::CREDENTIALS_ENV),
    credential: super::CredentialKind::ServiceAccountFile,
    without_key: super::WithoutKey::Nothing,
    without_key_note: "the service account named by $GOOGLE_APPLICATION_CREDENTIALS",
    build: build_claude_gcp,
};

fn build_claude_gcp(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    let p = b.config;
    let derived_base = if p.api_base.is_some() {
        None
    } else {
        let project = p
            .project
            .clone()
            .or_else(|| b.nonempty_env("ANTHROPIC_GOOGLE_CLOUD_PROJECT"))
            .or_else(|| b.nonempty_env("GOOGLE_CLOUD_PROJECT"))
            .ok_or_else(|| ConfigError::invalid(format!("{}.project", b.key), "required for type `claude_gcp`"))?;
        let workspace = p
            .workspace_id
            .clone()
            .or_else(|| b.nonempty_env("ANTHROPIC_GOOGLE_CLOUD_WORKSPACE_ID"))
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{}.workspace_id", b.key),
                    "required for type `claude_gcp` (the Claude workspace on Google Cloud)",
                )
            })?;
        let location = p.location.clone().unwrap_or_else(|| "global".to_string());
        Some(format!(
            "https://claude.googleapis.com/v1alpha/projects/{}/locations/{}/workspaces/{}/invoke",
            host_label(b, "project", &project)?,
            host_label(b, "location", &location)?,
            path_label(b, "workspace_id", &workspace)?,
        ))
    };
    Ok(Built {
        adapter: Arc::new(Anthropic::new(Site {
            platform: "Claude on Google Cloud",
            auth_note: "Google service-account token",
            ..Site::default()
        })),
        derived_base,
        bearer: None,
    })
}

/// A config value that becomes part of a host name: letters, digits, `-`.
fn host_label<'a>(b: &Build<'_>, field: &str, v: &'a str) -> Result<&'a str, ConfigError> {
    let ok = !v.is_empty() && v.len() <= 63 && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    if ok {
        Ok(v)
    } else {
        Err(ConfigError::invalid(
            format!("{}.{field}", b.key),
            format!("`{}` is not a host-name label (letters, digits, `-`)", v.escape_debug()),
        ))
    }
}

/// A config value that becomes one path segment: letters, digits, `-`, `_`.
fn path_label<'a>(b: &Build<'_>, field: &str, v: &'a str) -> Result<&'a str, ConfigError> {
    let ok = !v.is_empty() && v.len() <= 128 && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(v)
    } else {
        Err(ConfigError::invalid(
            format!("{}.{field}", b.key),
            format!(
                "`{}` is not a path segment (letters, digits, `-`, `_`)",
                v.escape_debug()
            ),
        ))
    }
}

/// The Messages API passed through, on Anthropic's API or a cloud's.
#[derive(Debug)]
pub struct Anthropic {
    site: Arc<Site>,
}

/// What differs between the platforms that serve the Messages API.
#[derive(Debug)]
struct Site {
    /// Anthropic's own API: fast mode, the client's own credential in
    /// passthrough-auth, and every error relayed as it comes.
    first_party: bool,
    /// Headers the platform needs besides the client's (Claude Platform on
    /// AWS's workspace).
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A configured key goes as `Authorization: Bearer` rather than
    /// `x-api-key` (Bedrock Runtime's API keys).
    key_as_bearer: bool,
    /// SigV4 for accounts without a key: the keys and the service name.
    signing: Option<(AwsSigning, &'static str)>,
    /// The betas the platform takes, when it does not take them all.
    caps: Option<Capabilities>,
    /// Model ids in Bedrock's form (`anthropic.claude-…`).
    bedrock_ids: bool,
    /// How logs and `provider show` name the platform.
    platform: &'static str,
    /// How `provider show` describes the credential.
    auth_note: &'static str,
}

impl Default for Site {
    fn default() -> Site {
        Site {
            first_party: false,
            headers: Vec::new(),
            key_as_bearer: false,
            signing: None,
            caps: None,
            bedrock_ids: false,
            platform: "the Messages API",
            auth_note: "x-api-key",
        }
    }
}

impl Anthropic {
    fn new(site: Site) -> Anthropic {
        Anthropic { site: Arc::new(site) }
    }
}

impl Adapter for Anthropic {
    fn forwards_raw(&self) -> bool {
        true
    }

    fn signs(&self) -> bool {
        self.site.signing.as_ref().is_some_and(|(aws, _)| aws.can_sign())
    }

    fn prepare(&self, out: &Outgoing<'_>) -> Result<Box<dyn Call>, GatewayError> {
        let site = &self.site;
        // Fast mode where the model has it (with its beta); elsewhere
        // `speed` is dropped and the request runs at standard speed.
        let request = out.claude_request();
        let fast = site.first_party && out.wants_fast && supports_fast_mode(out.upstream_model);
        let speed = match (out.wants_fast, fast, request.speed_fast) {
            (true, true, false) => SpeedEdit::Insert,
            (true, false, true) => SpeedEdit::Remove,
            _ => SpeedEdit::Keep,
        };
        let model = if site.bedrock_ids {
            cloud::bedrock_messages_model(out.upstream_model)
        } else {
            std::borrow::Cow::Borrowed(out.upstream_model)
        };
        let mut body = request.upstream_body(Some(&model), speed);
        let mut betas = None;
        if let Some(caps) = &site.caps {
            let stripped = cloud::strip_unaccepted(&body, &out.betas(), caps, site.platform)
                .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
            if !stripped.dropped.is_empty() {
                log::info!(
                    "{}: for {} `{}`: dropped {}",
                    out.request_id,
                    site.platform,
                    out.provider,
                    stripped.dropped.join(", ")
                );
            }
            if let Some(edited) = stripped.body {
                body = Bytes::from(edited);
            }
            betas = Some(
                (!stripped.betas.is_empty())
                    .then(|| http::HeaderValue::from_str(&stripped.betas.join(",")).ok())
                    .flatten(),
            );
        }
        Ok(Box::new(Passthrough {
            payload: Payload {
                body,
                upstream_model: Some(model.into_owned()),
            },
            beta: fast.then_some(FAST_MODE_BETA),
            betas,
            site: site.clone(),
        }))
    }

    /// An unparsed body goes only where no body edit is needed.
    fn forward(&self, body: Bytes) -> Option<Box<dyn Call>> {
        if self.site.caps.is_some() || self.site.bedrock_ids {
            return None;
        }
        Some(Box::new(Passthrough {
            payload: Payload {
                body,
                upstream_model: None,
            },
            beta: None,
            betas: None,
            site: self.site.clone(),
        }))
    }

    fn probe_auth(&self, head: &mut RequestHeader, key: Option<&Secret>, bearer: Option<&str>) {
        let _ = head.insert_header("anthropic-version", "2023-06-01");
        match (key, bearer) {
            (Some(key), _) if self.site.key_as_bearer => {
                let _ = head.insert_header(http::header::AUTHORIZATION, format!("Bearer {}", key.expose()));
            }
            (Some(key), _) => {
                let _ = head.insert_header("x-api-key", key.expose());
            }
            (None, Some(token)) => {
                let _ = head.insert_header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            (None, None) => {}
        }
        for (name, value) in &self.site.headers {
            let _ = head.insert_header(name.clone(), value.clone());
        }
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("credential", self.site.auth_note.to_string())];
        if let Some(caps) = &self.site.caps {
            let list = if caps.betas.is_empty() {
                "none".to_string()
            } else {
                caps.betas.join(", ")
            };
            out.push(("betas", list));
        }
        out
    }
}

/// A request to an Anthropic-type upstream.
struct Passthrough {
    payload: Payload,
    /// A beta to add to `anthropic-beta` (fast mode), if not already there.
    beta: Option<&'static str>,
    /// The `anthropic-beta` a platform that filters betas gets instead of
    /// the client's (`Some(None)`: none at all).
    betas: Option<Option<http::HeaderValue>>,
    site: Arc<Site>,
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
    /// of [`anthropic::forward_request_headers`], and the platform's
    /// credential: a key (`x-api-key`, or a bearer token), an OAuth token,
    /// or a SigV4 signature over the final head and body.
    fn head(&self, to: &Attempt<'_>) -> Result<RequestHeader, GatewayError> {
        let out = to.client;
        let site = &*self.site;
        let auth = match (to.credential, to.client_credential && site.first_party) {
            (Some(key), _) if !site.key_as_bearer => UpstreamAuth::ProviderKey(key.expose()),
            (None, true) => UpstreamAuth::ClientCredential,
            _ => UpstreamAuth::None,
        };
        let mut headers = anthropic::forward_request_headers(out.headers, auth, to.headers);
        if let Some(betas) = &self.betas {
            // The client's betas give way to the accepted ones; an
            // `anthropic-beta` the operator configured stays.
            let configured = to.headers.iter().any(|(n, _)| n.as_str() == "anthropic-beta");
            headers.retain(|(n, _)| configured || n.as_str() != "anthropic-beta");
            if let (Some(v), false) = (betas, configured) {
                headers.push((http::HeaderName::from_static("anthropic-beta"), v.clone()));
            }
        }
        if let Some(beta) = self.beta {
            anthropic::add_beta(&mut headers, beta);
        }
        let path = to.base.join(out.path);
        let target = match out.query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        // Without a case map: every name below is an `http::HeaderName`,
        // which Pingora writes exactly as the map would have kept it (its
        // title-cased standard names, the rest lower-case), and the map would
        // cost an allocation per header.
        let mut req = RequestHeader::build_no_case(out.method.clone(), target.as_bytes(), Some(headers.len() + 4))
            .map_err(internal)?;
        req.insert_header(http::header::HOST, &to.base.authority)
            .map_err(internal)?;
        for (name, value) in headers {
            req.append_header(name, value).map_err(internal)?;
        }
        for (name, value) in &site.headers {
            req.insert_header(name.clone(), value.clone()).map_err(internal)?;
        }
        if !self.payload.body.is_empty() || out.method == http::Method::POST {
            req.insert_header(http::header::CONTENT_LENGTH, self.payload.body.len().to_string())
                .map_err(internal)?;
        }
        match (to.credential, to.bearer) {
            (Some(key), _) if site.key_as_bearer => bearer_header(&mut req, to, key.expose())?,
            (None, Some(token)) => bearer_header(&mut req, to, token)?,
            (None, None) => {
                if let Some((aws, service)) = &site.signing {
                    aws.sign(service, &mut req, to, &target, &self.payload.body)?;
                }
            }
            _ => {}
        }
        Ok(req)
    }

    /// Anthropic's own errors, and a cloud's in Anthropic's shape, go to the
    /// client as they came (Claude Code's recovery reads their wording); a
    /// cloud's other errors (its front door's signature or quota refusals)
    /// are mapped to one.
    fn refusal(&self, head: &ResponseHeader, body: &[u8]) -> Refusal {
        if self.site.first_party || anthropic_error_shape(body) {
            return Refusal::Verbatim;
        }
        let status = head.status.as_u16();
        let message = super::error_text(body);
        // AWS's signature refusals go on to quote the canonical request,
        // signed headers (a session token) included: the first paragraph,
        // at most 300 characters.
        let message: String = message
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .split("The Canonical String")
            .next()
            .unwrap_or_default()
            .trim()
            .chars()
            .take(300)
            .collect();
        let (status, kind) = ErrorKind::for_status(status);
        Refusal::Mapped(GatewayError::Upstream {
            status,
            kind,
            message: format!("{}: {message}", self.site.platform),
            retry_after: if status == 429 { super::retry_after(head) } else { None },
        })
    }

    fn answer(&self, _: &ResponseHeader, _: &Reply<'_>) -> Answer {
        Answer::Relay
    }
}

/// Whether `body` is an Anthropic error: `{"type": "error", "error": {"type": …}}`.
fn anthropic_error_shape(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v["type"] == "error" && v["error"]["type"].is_string())
}
