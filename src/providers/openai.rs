//! `openai`, `azure`, `openrouter`, `ollama`: OpenAI Chat Completions.
//!
//! Four rows of one adapter, told apart by their `Flavor` (what each vendor
//! accepts differs in details the dialect knows). The request is translated
//! to Chat Completions (`dialects::openai::request`), the answer back to an
//! Anthropic message or stream; errors are mapped to Anthropic's. These
//! upstreams have no token counter: `count_tokens` is counted locally.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};

use super::{
    accept, bearer_header, broken, content_type_is, credential_header, header_str, json_post, log_notes, out_model,
    Adapter, Answer, Attempt, Build, Built, Call, CredentialKind, Outgoing, Payload, ProviderType, Refusal, Reply,
    StreamTranslate, Translated, WithoutKey, MAX_TRANSLATED_BODY,
};
use crate::config::ConfigError;
use crate::dialects::openai::request::{translate_request, RequestOptions};
use crate::dialects::openai::{error, response, stream, Flavor, ToolNames};
use crate::dialects::Usage;
use crate::error::GatewayError;
use crate::secret::Secret;

/// Azure OpenAI's data-plane API version when the config names none.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

const fn row(
    name: &'static str,
    gen_ai_system: &'static str,
    default_base: Option<&'static str>,
    key_env: Option<&'static str>,
    without_key: WithoutKey,
    build: fn(&mut Build<'_>) -> Result<Built, ConfigError>,
) -> ProviderType {
    ProviderType {
        name,
        gen_ai_system,
        default_base,
        base_from: None,
        key_env,
        standard_env: None,
        credential: CredentialKind::Key,
        without_key,
        without_key_note: "none",
        build,
    }
}

pub static OPENAI: ProviderType = row(
    "openai",
    "openai",
    Some("https://api.openai.com/v1"),
    Some("OPENAI_API_KEY"),
    WithoutKey::Nothing,
    build_openai,
);
pub static AZURE: ProviderType = row(
    "azure",
    "az.ai.openai",
    None,
    Some("AZURE_OPENAI_API_KEY"),
    WithoutKey::Nothing,
    build_azure,
);
pub static OPENROUTER: ProviderType = row(
    "openrouter",
    "openrouter",
    Some("https://openrouter.ai/api/v1"),
    Some("OPENROUTER_API_KEY"),
    WithoutKey::Nothing,
    build_openrouter,
);
pub static OLLAMA: ProviderType = row(
    "ollama",
    "ollama",
    Some("http://127.0.0.1:11434/v1"),
    None,
    WithoutKey::NeedsNone,
    build_ollama,
);

fn build_openai(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    build(b, Flavor::OpenAi)
}
fn build_azure(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    build(b, Flavor::Azure)
}
fn build_openrouter(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    build(b, Flavor::OpenRouter)
}
fn build_ollama(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    build(b, Flavor::Ollama)
}

fn build(b: &mut Build<'_>, flavor: Flavor) -> Result<Built, ConfigError> {
    let api_version = match flavor {
        Flavor::Azure => Some(
            b.config
                .api_version
                .clone()
                .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_string()),
        ),
        _ => b.config.api_version.clone(),
    };
    Ok(Built {
        adapter: Arc::new(OpenAi {
            site: Arc::new(Site {
                flavor,
                deployment: b.config.deployment.clone(),
                api_version,
            }),
        }),
        derived_base: None,
        bearer: None,
    })
}

#[derive(Debug)]
pub struct OpenAi {
    site: Arc<Site>,
}

/// What every request of one provider shares.
#[derive(Debug)]
struct Site {
    flavor: Flavor,
    /// Azure: the deployment named in the path (default: the upstream model).
    deployment: Option<String>,
    /// Azure: the `api-version` query parameter.
    api_version: Option<String>,
}

/// The Chat Completions body a local token count reads.
pub fn chat_body_for_count(body: &[u8], upstream_model: &str, flavor: Flavor) -> Result<Vec<u8>, GatewayError> {
    translate_request(body, &RequestOptions { flavor, upstream_model })
        .map(|t| t.body)
        .map_err(|e| GatewayError::InvalidRequest(e.to_string()))
}

impl Adapter for OpenAi {
    fn counts_tokens(&self) -> bool {
        false
    }

    fn local_count_body(&self, body: &[u8], upstream_model: &str) -> Result<Vec<u8>, GatewayError> {
        chat_body_for_count(body, upstream_model, self.site.flavor)
    }

    fn prepare(&self, out: &Outgoing<'_>) -> Result<Box<dyn Call>, GatewayError> {
        if out.count_tokens {
            return Err(GatewayError::Internal(format!(
                "`{}` has no token counter of its own",
                out.provider
            )));
        }
        let mut translated = translate_request(
            &out.request.body,
            &RequestOptions {
                flavor: self.site.flavor,
                upstream_model: out.upstream_model,
            },
        )
        .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        log_notes(out.request_id, "translating for", out.provider, &translated.notes);
        Ok(Box::new(ChatCall {
            site: self.site.clone(),
            payload: Payload {
                body: Bytes::from(std::mem::take(&mut translated.body)),
                upstream_model: Some(out.upstream_model.to_string()),
            },
            stream: translated.stream,
            estimated_input_tokens: translated.estimated_input_tokens,
            tool_names: translated.tool_names,
        }))
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let site = &self.site;
        [("deployment", &site.deployment), ("api_version", &site.api_version)]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect()
    }

    fn probe_auth(&self, head: &mut RequestHeader, key: Option<&Secret>, _bearer: Option<&str>) {
        if let Some(key) = key {
            let _ = match self.site.flavor {
                Flavor::Azure => head.insert_header("api-key", key.expose()),
                _ => head.insert_header(http::header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            };
        }
    }
}

/// A Chat Completions request.
struct ChatCall {
    site: Arc<Site>,
    payload: Payload,
    stream: bool,
    estimated_input_tokens: u64,
    tool_names: ToolNames,
}

impl Call for ChatCall {
    fn payload(&self) -> &Payload {
        &self.payload
    }

    fn request_id_header(&self) -> &'static str {
        "x-request-id"
    }

    /// `POST {base}/chat/completions` (Azure: the deployment in the path,
    /// `api-version` in the query, the key as `api-key`).
    fn head(&self, to: &Attempt<'_>) -> Result<RequestHeader, GatewayError> {
        let target = match self.site.flavor {
            Flavor::Azure => {
                let deployment = self.site.deployment.as_deref().unwrap_or(out_model(&self.payload));
                let encoded: String = url::form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
                let version = self.site.api_version.as_deref().unwrap_or(DEFAULT_AZURE_API_VERSION);
                let path = to.base.join(&format!("/openai/deployments/{encoded}/chat/completions"));
                let version: String = url::form_urlencoded::byte_serialize(version.as_bytes()).collect();
                format!("{path}?api-version={version}")
            }
            _ => to.base.join("/chat/completions"),
        };
        let mut req = json_post(to, &target, accept(self.stream), self.payload.body.len())?;
        if let Some(key) = to.credential {
            match self.site.flavor {
                Flavor::Azure => credential_header(&mut req, to, HeaderName::from_static("api-key"), key.expose())?,
                _ => bearer_header(&mut req, to, key.expose())?,
            }
        }
        Ok(req)
    }

    /// OpenAI's error mapped, with an integer `retry-after` on a 429 (from
    /// OpenAI's reset durations when the upstream sent none).
    fn refusal(&self, head: &ResponseHeader, body: &[u8]) -> Refusal {
        let status = head.status.as_u16();
        let retry_after = super::retry_after(head).or_else(|| {
            error::retry_after_from_resets(
                ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
                    .into_iter()
                    .filter_map(|name| header_str(head, name)),
            )
        });
        let mapped = error::map_error(status, body);
        Refusal::Mapped(GatewayError::Upstream {
            status: mapped.status,
            kind: mapped.kind,
            message: mapped.message,
            retry_after: if status == 429 { retry_after } else { None },
        })
    }

    /// JSON translated whole, SSE event by event.
    fn answer(&self, head: &ResponseHeader, reply: &Reply<'_>) -> Answer {
        if head.status.as_u16() >= 400 {
            return Answer::Refuse;
        }
        if self.stream && content_type_is(head, b"text/event-stream") {
            return Answer::Stream(Box::new(stream::StreamTranslator::new(stream::StreamContext {
                model: reply.client_model.to_string(),
                message_seed: reply.request_id.to_string(),
                estimated_input_tokens: self.estimated_input_tokens,
                tool_names: self.tool_names.clone(),
            })));
        }
        let tool_names = self.tool_names.clone();
        let model = reply.client_model.to_string();
        let seed = reply.request_id.to_string();
        let provider = reply.provider.to_string();
        Answer::Whole {
            limit: MAX_TRANSLATED_BODY,
            translate: Box::new(move |body| {
                let t = response::translate_response(
                    body,
                    &response::ResponseContext {
                        model: &model,
                        tool_names: &tool_names,
                        seed: &seed,
                    },
                )
                .map_err(|e| broken(&provider, e))?;
                Ok(Translated {
                    body: t.body,
                    usage: Some(t.usage),
                    counted_by: None,
                })
            }),
        }
    }
}

impl StreamTranslate for stream::StreamTranslator {
    fn start(&mut self, out: &mut Vec<u8>) {
        stream::StreamTranslator::start(self, out)
    }
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        stream::StreamTranslator::push(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        stream::StreamTranslator::finish(self, out)
    }
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        stream::StreamTranslator::fail(self, kind, message, out)
    }
    fn is_done(&self) -> bool {
        stream::StreamTranslator::is_done(self)
    }
    fn completed(&self) -> bool {
        self.stop_reason().is_some()
    }
    fn usage(&mut self) -> Option<Usage> {
        Some(stream::StreamTranslator::usage(self))
    }
    fn usage_so_far(&mut self) -> Usage {
        stream::StreamTranslator::usage_so_far(self)
    }
}
