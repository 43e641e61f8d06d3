//! `bedrock`: Amazon Bedrock. Anthropic models through InvokeModel (the
//! Messages body edited for the platform, the event stream decoded into
//! Anthropic SSE); every other model through Converse (translated both
//! ways); CountTokens for both. Requests carry a Bedrock API key as a bearer
//! token, or are signed with SigV4 (service `bedrock`) from the standard AWS
//! variables.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::aws::AwsSigning;
use super::{
    bearer_header, broken, capabilities, cloud_claude_body, content_type_is, counted, header_str, json_post, log_notes,
    out_model, Adapter, Answer, Attempt, BaseFrom, Build, Built, Call, CredentialKind, Outgoing, Payload, ProviderType,
    Refusal, Reply, StreamTranslate, Translated, WithoutKey, MAX_SMALL_BODY, MAX_TRANSLATED_BODY,
};
use crate::config::ConfigError;
use crate::dialects::anthropic::cloud::{Capabilities, Platform};
use crate::dialects::bedrock::{self, converse, stream::BedrockStream};
use crate::dialects::Usage;
use crate::error::GatewayError;
use crate::secret::Secret;

pub static TYPE: ProviderType = ProviderType {
    name: "bedrock",

    gen_ai_system: "aws.bedrock",
    default_base: None,
    base_from: Some(BaseFrom {
        listed: "(from region: https://bedrock-runtime.REGION.amazonaws.com)",
        added: "from the region",
    }),
    key_env: None,
    standard_env: Some("AWS_BEARER_TOKEN_BEDROCK"),
    credential: CredentialKind::Key,
    without_key: WithoutKey::Signs,
    without_key_note: "from the environment (AWS_BEARER_TOKEN_BEDROCK, else AWS SigV4 keys)",
    build,
};

fn build(b: &mut Build<'_>) -> Result<Built, ConfigError> {
    let has_key = super::aws::has_api_key(b, "AWS_BEARER_TOKEN_BEDROCK");
    let aws = AwsSigning::required(b, has_key, "AWS_BEARER_TOKEN_BEDROCK")?;
    let derived_base = Some(format!("https://bedrock-runtime.{}.amazonaws.com", aws.region));
    Ok(Built {
        adapter: Arc::new(Bedrock {
            site: Arc::new(Site {
                aws,
                caps: capabilities(b.config, Capabilities::bedrock),
            }),
        }),
        derived_base,
        bearer: None,
    })
}

#[derive(Debug)]
pub struct Bedrock {
    site: Arc<Site>,
}

#[derive(Debug)]
struct Site {
    aws: AwsSigning,
    /// The betas (and so the paired body fields) its Claude models accept.
    caps: Capabilities,
}

impl Adapter for Bedrock {
    fn signs(&self) -> bool {
        self.site.aws.can_sign()
    }

    fn prepare(&self, out: &Outgoing<'_>) -> Result<Box<dyn Call>, GatewayError> {
        let model = out.upstream_model;
        let (op, body, estimated_input_tokens) = if bedrock::is_anthropic_model(model) {
            let invoke = cloud_claude_body(out, &self.site.caps, Platform::Bedrock)?;
            if out.count_tokens {
                (Op::CountTokens, bedrock::count_tokens_invoke(&invoke.body), 0)
            } else {
                (
                    Op::Invoke {
                        stream: out.request.stream,
                    },
                    invoke.body,
                    0,
                )
            }
        } else {
            let conv = converse::converse_request(&out.request.body)
                .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
            log_notes(out.request_id, "translating for Converse", out.provider, &conv.notes);
            if out.count_tokens {
                let body = bedrock::count_tokens_converse(&conv.body)
                    .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                (Op::CountTokens, body, conv.estimated_input_tokens)
            } else {
                (
                    Op::Converse { stream: conv.stream },
                    conv.body,
                    conv.estimated_input_tokens,
                )
            }
        };
        Ok(Box::new(BedrockCall {
            site: self.site.clone(),
            op,
            payload: Payload {
                body: Bytes::from(body),
                upstream_model: Some(model.to_string()),
            },
            estimated_input_tokens,
        }))
    }

    fn probe_auth(&self, head: &mut RequestHeader, key: Option<&Secret>, _bearer: Option<&str>) {
        if let Some(key) = key {
            let _ = head.insert_header(http::header::AUTHORIZATION, format!("Bearer {}", key.expose()));
        }
    }
}

/// Which Bedrock operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// InvokeModel with the Messages body (Anthropic models).
    Invoke {
        stream: bool,
    },
    /// Converse / ConverseStream (every other model).
    Converse {
        stream: bool,
    },
    CountTokens,
}

struct BedrockCall {
    site: Arc<Site>,
    op: Op,
    payload: Payload,
    /// Converse: seeds `message_start` before Bedrock reports the count.
    estimated_input_tokens: u64,
}

impl Call for BedrockCall {
    fn payload(&self) -> &Payload {
        &self.payload
    }

    fn request_id_header(&self) -> &'static str {
        "x-amzn-requestid"
    }

    /// A Bedrock API key as a bearer token, or a SigV4 signature (service
    /// `bedrock`) over method, path, host, date and body hash. `aws-sigv4`
    /// encodes the path a second time for the canonical request, as Bedrock
    /// expects (`%3A` is signed as `%253A`).
    fn head(&self, to: &Attempt<'_>) -> Result<RequestHeader, GatewayError> {
        let model = out_model(&self.payload);
        let (path, stream) = match self.op {
            Op::Invoke { stream } => (bedrock::invoke_path(model, stream), stream),
            Op::Converse { stream } => (converse::converse_path(model, stream), stream),
            Op::CountTokens => (bedrock::count_tokens_path(model), false),
        };
        let path = to.base.join(&path);
        let accept = if stream {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        };
        let mut req = json_post(to, &path, accept, self.payload.body.len())?;
        if let Some(key) = to.credential {
            bearer_header(&mut req, to, key.expose())?;
            return Ok(req);
        }
        self.site
            .aws
            .sign(crate::upstream::sigv4::BEDROCK, &mut req, to, &path, &self.payload.body)?;
        Ok(req)
    }

    /// A Bedrock error (`{"message": …}`, the type in `x-amzn-ErrorType`).
    fn refusal(&self, head: &ResponseHeader, body: &[u8]) -> Refusal {
        let status = head.status.as_u16();
        let kind = header_str(head, "x-amzn-errortype")
            .map(str::to_string)
            .unwrap_or_else(|| {
                match status {
                    429 => "ThrottlingException",
                    400 => "ValidationException",
                    403 => "AccessDeniedException",
                    503 => "ServiceUnavailableException",
                    _ => "InternalServerException",
                }
                .to_string()
            });
        let message = super::error_text(body);
        let (status, kind, message) = bedrock::map_exception(&kind, &message);
        Refusal::Mapped(GatewayError::Upstream {
            status,
            kind,
            message,
            retry_after: if status == 429 { super::retry_after(head) } else { None },
        })
    }

    /// InvokeModel's JSON is an Anthropic message already (relayed); its
    /// event stream is decoded; Converse is translated; a count rewritten.
    fn answer(&self, head: &ResponseHeader, reply: &Reply<'_>) -> Answer {
        if head.status.as_u16() >= 400 {
            return Answer::Refuse;
        }
        let eventstream = content_type_is(head, b"application/vnd.amazon.eventstream");
        let provider = reply.provider.to_string();
        match self.op {
            Op::CountTokens => Answer::Whole {
                limit: MAX_SMALL_BODY,
                translate: Box::new(move |body| {
                    let n = bedrock::count_tokens_response(body).map_err(|e| broken(&provider, e))?;
                    Ok(counted(n, "Bedrock count-tokens"))
                }),
            },
            Op::Converse { .. } => {
                let message_id = crate::dialects::openai::message_id(None, reply.request_id);
                if eventstream {
                    return Answer::Stream(Box::new(converse::ConverseStream::new(
                        reply.client_model,
                        &message_id,
                        self.estimated_input_tokens,
                    )));
                }
                let model = reply.client_model.to_string();
                Answer::Whole {
                    limit: MAX_TRANSLATED_BODY,
                    translate: Box::new(move |body| {
                        let (body, usage) =
                            converse::converse_response(body, &model, &message_id).map_err(|e| broken(&provider, e))?;
                        Ok(Translated {
                            body,
                            usage: Some(usage),
                            counted_by: None,
                        })
                    }),
                }
            }
            Op::Invoke { .. } if eventstream => Answer::Stream(Box::new(BedrockStream::default())),
            Op::Invoke { .. } => Answer::Relay,
        }
    }
}

impl StreamTranslate for BedrockStream {
    /// InvokeModel's stream carries Anthropic's own `message_start`.
    fn start(&mut self, _out: &mut Vec<u8>) {}
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        BedrockStream::push(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        BedrockStream::finish(self, out)
    }
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        BedrockStream::fail(self, kind, message, out)
    }
    fn is_done(&self) -> bool {
        BedrockStream::is_done(self)
    }
    fn completed(&self) -> bool {
        BedrockStream::completed(self)
    }
    fn usage(&mut self) -> Option<Usage> {
        self.take_usage()
    }
    fn usage_so_far(&mut self) -> Usage {
        self.take_usage().unwrap_or_default()
    }
}

impl StreamTranslate for converse::ConverseStream {
    fn start(&mut self, out: &mut Vec<u8>) {
        converse::ConverseStream::start(self, out)
    }
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        converse::ConverseStream::push(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        converse::ConverseStream::finish(self, out)
    }
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        converse::ConverseStream::fail(self, kind, message, out)
    }
    fn is_done(&self) -> bool {
        converse::ConverseStream::is_done(self)
    }
    fn completed(&self) -> bool {
        converse::ConverseStream::completed(self)
    }
    fn usage(&mut self) -> Option<Usage> {
        Some(converse::ConverseStream::usage(self))
    }
    fn usage_so_far(&mut self) -> Usage {
        converse::ConverseStream::usage_so_far(self)
    }
}
