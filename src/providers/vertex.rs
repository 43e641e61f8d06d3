//! `vertex`: Vertex AI, with OAuth tokens from a service account. Gemini
//! models (`publishers/google`) through the Gemini dialect
//! ([`super::gemini::gemini_call`]); Claude models (`publishers/anthropic`,
//! ids starting `claude-`) by `rawPredict` / `streamRawPredict`, the
//! Messages body edited for the platform and the accepted betas sent as
//! `anthropic-beta`, the answer Anthropic's own.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

pub use super::google::VertexSite;
use super::{
    accept, bearer_header, capabilities, cloud_claude_body, internal, json_post, out_model, Adapter, Answer, Attempt,
    BaseFrom, Build, Built, Call, CredentialKind, Outgoing, Payload, ProviderType, Refusal, Reply, WithoutKey,
};
use crate::config::ConfigError;
use crate::dialects::anthropic::cloud::{Capabilities, Platform};
use crate::error::GatewayError;
use crate::secret::Secret;

pub static TYPE: ProviderType = ProviderType {
    name: "vertex",

    gen_ai_system: "gcp.vertex_ai",
    default_base: None,
    base_from: Some(BaseFrom {
        listed: "(from location: https://LOCATION-aiplatform.googleapis.com)",
        added: "from the location",
    }),
    key_env: None,
    standard_env: Some(crate::upstream::google_auth::CREDENTIALS_ENV),
    credential: CredentialKind::ServiceAccountFile,
    without_key: WithoutKey::Nothing,
    without_key_note: "the service account named by $GOOGLE_APPLICATION_CREDENTIALS",
    build,
};

fn build(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    let site = vertex_site(b)?;
    let derived_base = Some(if site.location == "global" {
        "https://aiplatform.googleapis.com".to_string()
    } else {
        format!("https://{}-aiplatform.googleapis.com", site.location)
    });
    Ok(Built {
        adapter: Arc::new(Vertex {
            site: Arc::new(site),
            caps: Arc::new(capabilities(b.config, Capabilities::vertex)),
        }),
        derived_base,
        bearer: None,
    })
}

fn vertex_site(b: &Build<'_>) -> Result<VertexSite, ConfigError> {
    let (key, p) = (b.key, b.config);
    let project = p
        .project
        .clone()
        .or_else(|| b.nonempty_env("GOOGLE_CLOUD_PROJECT"))
        .ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.project"),
                "required for type `vertex` (or set GOOGLE_CLOUD_PROJECT)",
            )
        })?;
    let location = p
        .location
        .clone()
        .or_else(|| b.nonempty_env("GOOGLE_CLOUD_LOCATION"))
        .unwrap_or_else(|| "global".to_string());
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    if !valid(&project) {
        return Err(ConfigError::invalid(
            format!("{key}.project"),
            "not a Google Cloud project id",
        ));
    }
    if !valid(&location) {
        return Err(ConfigError::invalid(
            format!("{key}.location"),
            "not a Google Cloud location",
        ));
    }
    Ok(VertexSite { project, location })
}

#[derive(Debug)]
pub struct Vertex {
    site: Arc<VertexSite>,
    /// The betas (and so the paired body fields) its Claude models accept.
    caps: Arc<Capabilities>,
}

/// Whether a Vertex model id names Claude (`publishers/anthropic`) rather
/// than a Google model: `claude-sonnet-4-5@20250929`.
fn is_claude(model: &str) -> bool {
    model.starts_with("claude-")
}

impl Adapter for Vertex {
    fn prepare(&self, out: &Outgoing<'_>) -> Result<Box<dyn Call>, GatewayError> {
        let model = out.upstream_model;
        if !is_claude(model) {
            return super::gemini::gemini_call(out, Some(self.site.clone()));
        }
        let edited = cloud_claude_body(out, &self.caps, Platform::Vertex)?;
        let (op, body) = if out.count_tokens {
            // The count-tokens model takes the model in the body.
            let body = with_model(&edited.body, model).map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
            (Op::CountTokens, body)
        } else {
            (
                Op::Predict {
                    stream: out.request.stream,
                },
                edited.body,
            )
        };
        Ok(Box::new(ClaudeCall {
            site: self.site.clone(),
            op,
            betas: edited.betas,
            payload: Payload {
                body: Bytes::from(body),
                upstream_model: Some(model.to_string()),
            },
        }))
    }

    fn probe_auth(&self, head: &mut RequestHeader, _key: Option<&Secret>, bearer: Option<&str>) {
        if let Some(token) = bearer {
            let _ = head.insert_header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
    }
}

/// `body` (a JSON object) with `model` set: Vertex's count-tokens model
/// takes the model in the body, where every other call has it in the path.
fn with_model(body: &[u8], model: &str) -> Result<Vec<u8>, serde_json::Error> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    v.insert("model".into(), model.into());
    serde_json::to_vec(&v)
}

/// Which `publishers/anthropic` operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Predict { stream: bool },
    CountTokens,
}

/// Claude on Vertex AI.
struct ClaudeCall {
    site: Arc<VertexSite>,
    op: Op,
    /// The accepted `anthropic-beta` values (sent as the header).
    betas: Vec<String>,
    payload: Payload,
}

impl Call for ClaudeCall {
    fn payload(&self) -> &Payload {
        &self.payload
    }

    fn request_id_header(&self) -> &'static str {
        "request-id"
    }

    /// `rawPredict`, `streamRawPredict` or the `count-tokens` model, with
    /// the accepted betas and an OAuth bearer token.
    fn head(&self, to: &Attempt<'_>) -> Result<RequestHeader, GatewayError> {
        let (model, method, stream) = match self.op {
            Op::Predict { stream: true } => (out_model(&self.payload), "streamRawPredict", true),
            Op::Predict { stream: false } => (out_model(&self.payload), "rawPredict", false),
            Op::CountTokens => ("count-tokens", "rawPredict", false),
        };
        let path = to.base.join(&self.site.model_path("anthropic", model, method));
        let mut req = json_post(to, &path, accept(stream), self.payload.body.len())?;
        if !self.betas.is_empty() {
            req.insert_header("anthropic-beta", self.betas.join(","))
                .map_err(internal)?;
        }
        if let Some(token) = to.bearer {
            bearer_header(&mut req, to, token)?;
        }
        Ok(req)
    }

    /// The model's own Anthropic-shaped errors are relayed verbatim (Claude
    /// Code reads their wording); Google's platform errors (quota,
    /// permissions) are mapped.
    fn refusal(&self, head: &ResponseHeader, body: &[u8]) -> Refusal {
        let anthropic_shaped = serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|v| v["type"] == "error" && v["error"]["type"].is_string());
        if anthropic_shaped {
            Refusal::Verbatim
        } else {
            Refusal::Mapped(super::google::google_error(head, body))
        }
    }

    /// Anthropic's own answers, JSON or SSE, passed through.
    fn answer(&self, head: &ResponseHeader, _: &Reply<'_>) -> Answer {
        if head.status.as_u16() >= 400 {
            Answer::Refuse
        } else {
            Answer::Relay
        }
    }
}
