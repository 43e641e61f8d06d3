//! `gemini`: the Gemini API (AI Studio), `generateContent` and
//! `countTokens` with `x-goog-api-key`. The same calls serve Vertex AI's
//! `publishers/google` models ([`super::vertex`]), with an OAuth token and
//! Vertex's paths: [`gemini_call`] builds both.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};

use super::google::{google_error, VertexSite};
use super::{
    accept, bearer_header, content_type_is, counted, credential_header, json_post, log_notes, out_model, Adapter,
    Answer, Attempt, Build, Built, Call, CredentialKind, Outgoing, Payload, ProviderType, Refusal, Reply,
    StreamTranslate, Translated, WithoutKey, MAX_SMALL_BODY, MAX_TRANSLATED_BODY,
};
use crate::config::ConfigError;
use crate::dialects::gemini::{self, GeminiError, GeminiStream, ToolNames};
use crate::dialects::Usage;
use crate::error::GatewayError;
use crate::secret::Secret;

pub static TYPE: ProviderType = ProviderType {
    name: "gemini",

    gen_ai_system: "gcp.gemini",
    default_base: Some("https://generativelanguage.googleapis.com/v1beta"),
    base_from: None,
    key_env: Some("GEMINI_API_KEY"),
    standard_env: Some("GEMINI_API_KEY"),
    credential: CredentialKind::Key,
    without_key: WithoutKey::Nothing,
    without_key_note: "none",
    build,
};

fn build(_: &mut Build<'_>) -> Result<Built, ConfigError> {
    Ok(Built {
        adapter: Arc::new(Gemini),
        derived_base: None,
        bearer: None,
    })
}

#[derive(Debug)]
pub struct Gemini;

impl Adapter for Gemini {
    fn prepare(&self, out: &Outgoing<'_>) -> Result<Box<dyn Call>, GatewayError> {
        gemini_call(out, None)
    }

    fn probe_auth(&self, head: &mut RequestHeader, key: Option<&Secret>, _bearer: Option<&str>) {
        if let Some(key) = key {
            let _ = head.insert_header("x-goog-api-key", key.expose());
        }
    }
}

/// A Gemini-dialect call: AI Studio when `vertex` is `None`, else Vertex AI
/// (`publishers/google`).
pub fn gemini_call(out: &Outgoing<'_>, vertex: Option<Arc<VertexSite>>) -> Result<Box<dyn Call>, GatewayError> {
    let model = out.upstream_model;
    let mut translated = gemini::translate_request(
        &out.request.body,
        &gemini::RequestOptions {
            upstream_model: model,
            vertex: vertex.is_some(),
            legacy_schema: false,
        },
    )
    .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
    log_notes(
        out.request_id,
        "translating for Gemini",
        out.provider,
        &translated.notes,
    );
    let (op, body) = if out.count_tokens {
        let body = gemini::count_tokens_body(&translated.body, model, vertex.is_some())
            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        (Op::CountTokens, body)
    } else {
        let stream = translated.stream;
        (Op::Generate { stream }, std::mem::take(&mut translated.body))
    };
    Ok(Box::new(GeminiCall {
        vertex,
        op,
        payload: Payload {
            body: Bytes::from(body),
            upstream_model: Some(model.to_string()),
        },
        estimated_input_tokens: translated.estimated_input_tokens,
        tool_names: translated.tool_names,
    }))
}

/// Which Gemini operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Generate { stream: bool },
    CountTokens,
}

struct GeminiCall {
    vertex: Option<Arc<VertexSite>>,
    op: Op,
    payload: Payload,
    estimated_input_tokens: u64,
    tool_names: ToolNames,
}

impl Call for GeminiCall {
    fn payload(&self) -> &Payload {
        &self.payload
    }

    fn request_id_header(&self) -> &'static str {
        "x-goog-request-id"
    }

    fn head(&self, to: &Attempt<'_>) -> Result<RequestHeader, GatewayError> {
        let model = out_model(&self.payload);
        let path = match (&self.vertex, self.op) {
            (Some(site), Op::Generate { stream: true }) => {
                site.model_path("google", model, "streamGenerateContent?alt=sse")
            }
            (Some(site), Op::Generate { stream: false }) => site.model_path("google", model, "generateContent"),
            (Some(site), Op::CountTokens) => site.model_path("google", model, "countTokens"),
            (None, Op::Generate { stream }) => format!("/{}", gemini::generate_path(model, stream)),
            (None, Op::CountTokens) => format!("/{}", gemini::count_tokens_path(model)),
        };
        let stream = matches!(self.op, Op::Generate { stream: true });
        let mut req = json_post(to, &to.base.join(&path), accept(stream), self.payload.body.len())?;
        if let Some(token) = to.bearer {
            bearer_header(&mut req, to, token)?;
        } else if let Some(key) = to.credential {
            credential_header(&mut req, to, HeaderName::from_static("x-goog-api-key"), key.expose())?;
        }
        Ok(req)
    }

    fn refusal(&self, head: &ResponseHeader, body: &[u8]) -> Refusal {
        Refusal::Mapped(google_error(head, body))
    }

    /// JSON translated whole, SSE event by event, `countTokens` rewritten.
    fn answer(&self, head: &ResponseHeader, reply: &Reply<'_>) -> Answer {
        if head.status.as_u16() >= 400 {
            return Answer::Refuse;
        }
        let provider = reply.provider.to_string();
        match self.op {
            Op::CountTokens => Answer::Whole {
                limit: MAX_SMALL_BODY,
                translate: Box::new(move |body| {
                    let n = gemini::count_tokens_response(body).map_err(|e| untranslatable(&provider, e))?;
                    Ok(counted(n, "Gemini countTokens"))
                }),
            },
            Op::Generate { stream: true } if content_type_is(head, b"text/event-stream") => {
                Answer::Stream(Box::new(GeminiStream::new(
                    reply.client_model,
                    reply.request_id,
                    self.estimated_input_tokens,
                    self.tool_names.clone(),
                )))
            }
            Op::Generate { .. } => {
                let tool_names = self.tool_names.clone();
                let model = reply.client_model.to_string();
                let seed = reply.request_id.to_string();
                Answer::Whole {
                    limit: MAX_TRANSLATED_BODY,
                    translate: Box::new(move |body| {
                        let (body, usage, _) = gemini::translate_response(
                            body,
                            &gemini::ResponseContext {
                                model: &model,
                                tool_names: &tool_names,
                                seed: &seed,
                            },
                        )
                        .map_err(|e| untranslatable(&provider, e))?;
                        Ok(Translated {
                            body,
                            usage: Some(usage),
                            counted_by: None,
                        })
                    }),
                }
            }
        }
    }
}

/// An answer that cannot be translated, or one with no output (a malformed
/// function call): the error Gemini's own words map to.
fn untranslatable(provider: &str, e: GeminiError) -> GatewayError {
    let mapped = e.mapped();
    GatewayError::Upstream {
        status: mapped.status,
        kind: mapped.kind,
        message: format!("provider `{provider}`: {}", mapped.message),
        retry_after: None,
    }
}

impl StreamTranslate for GeminiStream {
    fn start(&mut self, out: &mut Vec<u8>) {
        GeminiStream::start(self, out)
    }
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        GeminiStream::push(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        GeminiStream::finish(self, out)
    }
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        GeminiStream::fail(self, kind, message, out)
    }
    fn is_done(&self) -> bool {
        GeminiStream::is_done(self)
    }
    fn completed(&self) -> bool {
        GeminiStream::completed(self)
    }
    fn usage(&mut self) -> Option<Usage> {
        Some(GeminiStream::usage(self))
    }
    fn usage_so_far(&mut self) -> Usage {
        GeminiStream::usage_so_far(self)
    }
}
