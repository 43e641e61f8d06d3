//! Stage: relay the upstream response to the client as it arrives.
//!
//! Passthrough responses keep their status, body bytes and headers (minus
//! hop-by-hop ones), so Anthropic error bodies, `retry-after`,
//! `x-should-retry`, `request-id` and `anthropic-ratelimit-*` reach Claude
//! Code untouched. Bodies are forwarded chunk by chunk and each chunk is
//! flushed: SSE is never buffered. A body without a length goes out chunked.
//! Failures after the header are reported in-band (`event: error`) on event
//! streams, and by closing the connection otherwise.

use pingora::http::ResponseHeader;
use pingora::prelude::fast_timeout::{fast_sleep, fast_timeout};
use pingora::proxy::Session;

use super::attempt::{BedrockCall, Failure, GeminiCall};
use super::ctx::RequestCtx;
use crate::dialects::anthropic::is_hop_by_hop;
use crate::dialects::anthropic::usage::UsageTap;
use crate::error::GatewayError;
use crate::upstream::{Exchange, UpstreamError};

pub async fn relay(session: &mut Session, ctx: &mut RequestCtx, exchange: Exchange<'_>, provider: &str) {
    let upstream = exchange.header();
    ctx.upstream_request_id = upstream_id(upstream, "request-id");
    let upstream_content_type = upstream.headers.get(http::header::CONTENT_TYPE).cloned();
    let is_sse = upstream_content_type
        .as_ref()
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let head = match downstream_header(upstream, ctx, session.as_downstream().is_http2()) {
        Ok(h) => h,
        Err(e) => {
            exchange.abort().await;
            super::respond::error(session, ctx, &e).await;
            return;
        }
    };
    ctx.status = head.status.as_u16();
    if let Err(e) = session.write_response_header(Box::new(head), false).await {
        log::debug!("{}: client gone before the response header: {e}", ctx.request_id);
        ctx.client_gone = true;
        exchange.abort().await;
        return;
    }
    let _stream_gauge = is_sse.then(StreamGauge::new);
    let mut tap = if ctx.metered {
        UsageTap::new(ctx.status, upstream_content_type.as_ref().map(|v| v.as_bytes()))
    } else {
        UsageTap::Off
    };
    let outcome = relay_body(session, ctx, exchange, &mut tap, is_sse, provider).await;
    read_tap(ctx, &mut tap);
    outcome
}

/// The upstream's own request id (for correlating with its support), from
/// header `name`, cut to the length records keep.
fn upstream_id(head: &ResponseHeader, name: &str) -> Option<String> {
    let v = head.headers.get(name)?.to_str().ok()?;
    Some(super::meter::bounded(v).to_string())
}

/// Take the usage the tap read into `ctx` (once: the tap is off after).
/// An unmetered request's tap is off from the start.
fn read_tap(ctx: &mut RequestCtx, tap: &mut UsageTap) {
    ctx.usage = std::mem::replace(tap, UsageTap::Off).finish().or(ctx.usage);
}

/// Settle the request's usage before the response's end reaches the
/// client ([`super::meter::settle`]); the tap's reading is final here.
async fn settle_before_end(ctx: &mut RequestCtx, tap: &mut UsageTap) {
    read_tap(ctx, tap);
    super::meter::settle(ctx).await;
}

async fn relay_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut exchange: Exchange<'_>,
    tap: &mut UsageTap,
    is_sse: bool,
    provider: &str,
) {
    loop {
        match exchange.next_chunk().await {
            Ok(Some(chunk)) => {
                tap.observe(&chunk);
                if let Some(c) = ctx.reply_capture.as_mut() {
                    c.push(&chunk);
                }
                // Settle before the chunk that ends the answer for the
                // client: a length-delimited body's last chunk, or the
                // stream's final usage (`message_stop` follows it at once).
                if ctx.admission.is_some() && (exchange.body_done() || tap.has_final_usage()) {
                    settle_before_end(ctx, tap).await;
                }
                let n = chunk.len() as u64;
                ctx.first_byte_at.get_or_insert_with(std::time::Instant::now);
                if let Err(e) = session.write_response_body(Some(chunk), false).await {
                    log::debug!("{}: client gone mid-response: {e}", ctx.request_id);
                    ctx.client_gone = true;
                    session.set_keepalive(None);
                    exchange.abort().await;
                    return;
                }
                ctx.bytes_out += n;
            }
            Ok(None) => {
                if ctx.admission.is_some() {
                    settle_before_end(ctx, tap).await;
                }
                if let Err(e) = session.write_response_body(None, true).await {
                    log::debug!("{}: client gone at the end of the response: {e}", ctx.request_id);
                    ctx.client_gone = true;
                }
                exchange.finish().await;
                return;
            }
            Err(e) => {
                let err = match e {
                    UpstreamError::Timeout => GatewayError::UpstreamTimeout {
                        provider: provider.to_string(),
                        after: ctx.snapshot.as_ref().map(|s| s.timeout).unwrap_or_default(),
                    },
                    UpstreamError::Connect(d) | UpstreamError::Io(d) => GatewayError::UpstreamBroken {
                        provider: provider.to_string(),
                        detail: d,
                    },
                };
                log::warn!("{}: {err}", ctx.request_id);
                ctx.error = Some(err.kind());
                ctx.error_message = Some(err.to_string());
                exchange.abort().await;
                if is_sse {
                    let frame = err.sse_frame(&ctx.request_id);
                    let _ = session.write_response_body(Some(frame.into()), true).await;
                } else {
                    // A truncated JSON body must not look complete: close the connection.
                    session.set_keepalive(None);
                    let _ = session.as_downstream_mut().shutdown().await;
                }
                return;
            }
        }
    }
}

fn downstream_header(upstream: &ResponseHeader, ctx: &RequestCtx, h2: bool) -> Result<ResponseHeader, GatewayError> {
    let internal = |e: pingora::BError| GatewayError::Internal(format!("cannot build the response header: {e}"));
    let mut head = ResponseHeader::build(upstream.status, Some(upstream.headers.len() + 2)).map_err(internal)?;
    let connection = upstream.headers.get(http::header::CONNECTION);
    for (name, value) in upstream.headers.iter() {
        if is_hop_by_hop(name, connection) {
            continue;
        }
        head.append_header(name.clone(), value.clone()).map_err(internal)?;
    }
    if !head.headers.contains_key("request-id") {
        head.insert_header("request-id", ctx.request_id.as_str())
            .map_err(internal)?;
    }
    if !head.headers.contains_key(http::header::CONTENT_LENGTH) && !h2 {
        head.insert_header(http::header::TRANSFER_ENCODING, "chunked")
            .map_err(internal)?;
    }
    Ok(head)
}

const PING_FRAME: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
/// Upper bound on an upstream error body the gateway reads to translate.
const MAX_ERROR_BODY: usize = 1024 * 1024;
/// Upper bound on a non-streaming upstream answer the gateway buffers to translate.
const MAX_TRANSLATED_BODY: usize = 64 * 1024 * 1024;

/// Read the rest of an upstream body, refusing more than `cap` bytes.
async fn read_body(exchange: &mut Exchange<'_>, cap: usize, provider: &str) -> Result<bytes::Bytes, GatewayError> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match exchange.next_chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(GatewayError::UpstreamBroken {
                        provider: provider.to_string(),
                        detail: format!("response body exceeds {cap} bytes"),
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(UpstreamError::Timeout) => {
                return Err(GatewayError::UpstreamTimeout {
                    provider: provider.to_string(),
                    after: std::time::Duration::ZERO,
                })
            }
            Err(UpstreamError::Connect(d) | UpstreamError::Io(d)) => {
                return Err(GatewayError::UpstreamBroken {
                    provider: provider.to_string(),
                    detail: d,
                })
            }
        }
    }
}

/// Read an OpenAI-family error response and map it to the client's error,
/// with an integer `retry-after` on 429s (OpenAI's reset durations when the
/// upstream sent none).
pub async fn openai_error(mut exchange: Exchange<'_>, provider: &str) -> GatewayError {
    use crate::dialects::openai::error;
    let head = exchange.header();
    let status = head.status.as_u16();
    let header_str = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    let retry_after = header_str("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or_else(|| {
            error::retry_after_from_resets(
                ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
                    .into_iter()
                    .filter_map(header_str),
            )
        });
    let body = read_body(&mut exchange, MAX_ERROR_BODY, provider)
        .await
        .unwrap_or_default();
    exchange.finish().await;
    let mapped = error::map_error(status, &body);
    GatewayError::Upstream {
        status: mapped.status,
        kind: mapped.kind,
        message: mapped.message,
        retry_after: if status == 429 { retry_after } else { None },
    }
}

/// Read a Bedrock error (`{"message": …}`, the type in `x-amzn-ErrorType`)
/// and map it to the client's error.
pub async fn bedrock_error(mut exchange: Exchange<'_>, provider: &str) -> GatewayError {
    let head = exchange.header();
    let status = head.status.as_u16();
    let header_str = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let kind = header_str("x-amzn-errortype").unwrap_or_else(|| match status {
        429 => "ThrottlingException".into(),
        400 => "ValidationException".into(),
        403 => "AccessDeniedException".into(),
        503 => "ServiceUnavailableException".into(),
        _ => "InternalServerException".into(),
    });
    let retry_after = header_str("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
    let body = read_body(&mut exchange, MAX_ERROR_BODY, provider)
        .await
        .unwrap_or_default();
    exchange.finish().await;
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    let (status, kind, message) = crate::dialects::bedrock::map_exception(&kind, &message);
    GatewayError::Upstream {
        status,
        kind,
        message,
        retry_after: if status == 429 { retry_after } else { None },
    }
}

/// Relay a Bedrock answer: errors mapped; InvokeModel's JSON message (the
/// Anthropic shape already) passed through and its event stream decoded into
/// Anthropic SSE; Converse's JSON and stream translated; a count-tokens
/// answer rewritten. Pings on silence.
pub async fn relay_bedrock(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut exchange: Exchange<'_>,
    provider: &str,
    call: BedrockCall,
    reply: Reply<'_>,
) -> Result<(), GatewayError> {
    let head = exchange.header();
    ctx.upstream_request_id = upstream_id(head, "x-amzn-requestid");
    if head.status.as_u16() >= 400 {
        return Err(bedrock_error(exchange, provider).await);
    }
    let eventstream = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/vnd.amazon.eventstream"));
    match call {
        BedrockCall::CountTokens => {
            let body = read_body(&mut exchange, MAX_ERROR_BODY, provider).await?;
            exchange.finish().await;
            let n =
                crate::dialects::bedrock::count_tokens_response(&body).map_err(|e| GatewayError::UpstreamBroken {
                    provider: provider.to_string(),
                    detail: e.to_string(),
                })?;
            answer_count(session, ctx, n, "Bedrock count-tokens").await;
            Ok(())
        }
        BedrockCall::Converse { .. } => {
            use crate::dialects::bedrock::converse::{converse_response, ConverseStream};
            let message_id = crate::dialects::openai::message_id(None, &ctx.request_id);
            if eventstream {
                let t = ConverseStream::new(reply.client_model, &message_id, reply.estimated_input_tokens);
                return relay_translated_stream(session, ctx, exchange, provider, Translator::Converse(t)).await;
            }
            let body = read_body(&mut exchange, MAX_TRANSLATED_BODY, provider).await?;
            exchange.finish().await;
            let (body, usage) = converse_response(&body, reply.client_model, &message_id).map_err(|e| {
                GatewayError::UpstreamBroken {
                    provider: provider.to_string(),
                    detail: e.to_string(),
                }
            })?;
            answer_translated(session, ctx, body, usage).await;
            Ok(())
        }
        BedrockCall::Invoke { .. } if eventstream => {
            let translator = Translator::Bedrock(crate::dialects::bedrock::stream::BedrockStream::default());
            relay_translated_stream(session, ctx, exchange, provider, translator).await
        }
        BedrockCall::Invoke { .. } => {
            relay(session, ctx, exchange, provider).await;
            Ok(())
        }
    }
}

/// What answering a translated request needs from the request side.
pub struct Reply<'a> {
    /// The model the client asked for; the translated answer names it.
    pub client_model: &'a str,
    /// Seeds `message_start` before the upstream reports the count.
    pub estimated_input_tokens: u64,
}

/// A translated non-streaming answer: metered, captured, written.
async fn answer_translated(session: &mut Session, ctx: &mut RequestCtx, body: Vec<u8>, usage: crate::dialects::Usage) {
    ctx.usage = Some(usage);
    super::meter::settle(ctx).await;
    let body = bytes::Bytes::from(body);
    if let Some(c) = ctx.reply_capture.as_mut() {
        c.push(&body);
    }
    super::respond::complete(session, ctx, 200, "application/json", body, &[]).await;
}

/// A `count_tokens` answer from an upstream's own counter, in Anthropic
/// shape; the header names the counter.
async fn answer_count(session: &mut Session, ctx: &mut RequestCtx, n: u64, counter: &str) {
    let body = bytes::Bytes::from(format!("{{\"input_tokens\":{n}}}"));
    if let Some(c) = ctx.reply_capture.as_mut() {
        c.push(&body);
    }
    let note = [("x-modelgate-token-count", format!("upstream; {counter}"))];
    super::respond::complete(session, ctx, 200, "application/json", body, &note).await;
}

/// Read a Google error (`{"error": {"code", "message", "status"}}`) and map
/// it, with `retry-after` from the header or `RetryInfo.retryDelay`.
pub async fn gemini_error(mut exchange: Exchange<'_>, provider: &str) -> GatewayError {
    let head = exchange.header();
    let status = head.status.as_u16();
    let header_retry = head
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = read_body(&mut exchange, MAX_ERROR_BODY, provider)
        .await
        .unwrap_or_default();
    exchange.finish().await;
    google_error(status, header_retry, &body)
}

fn google_error(status: u16, header_retry: Option<u64>, body: &[u8]) -> GatewayError {
    use crate::dialects::gemini;
    let mapped = gemini::map_error(status, body);
    let retry_after = header_retry.or_else(|| gemini::retry_after(body));
    GatewayError::Upstream {
        status: mapped.status,
        retry_after: if mapped.status == 429 { retry_after } else { None },
        kind: mapped.kind,
        message: mapped.message,
    }
}

/// A failed Vertex `publishers/anthropic` answer: the model's own
/// Anthropic-shaped errors are relayed verbatim (Claude Code reads their
/// wording); Google's platform errors (quota, permissions) are mapped.
pub async fn vertex_claude_error(exchange: Exchange<'_>, provider: &str) -> Failure {
    let buffered = buffer(exchange, provider).await;
    let anthropic_shaped = serde_json::from_slice::<serde_json::Value>(&buffered.body)
        .is_ok_and(|v| v["type"] == "error" && v["error"]["type"].is_string());
    if anthropic_shaped {
        return Failure::Upstream(buffered);
    }
    let header_retry = buffered
        .head
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    Failure::Gateway(google_error(
        buffered.head.status.as_u16(),
        header_retry,
        &buffered.body,
    ))
}

/// Relay Claude on Vertex: its answers are Anthropic's own (JSON or SSE,
/// passed through with the usage tap); errors per [`vertex_claude_error`].
pub async fn relay_vertex_claude(
    session: &mut Session,
    ctx: &mut RequestCtx,
    exchange: Exchange<'_>,
    provider: &str,
) -> Result<(), GatewayError> {
    if exchange.header().status.as_u16() >= 400 {
        return match vertex_claude_error(exchange, provider).await {
            Failure::Upstream(buffered) => {
                relay_buffered(session, ctx, buffered).await;
                Ok(())
            }
            Failure::Gateway(e) => Err(e),
        };
    }
    relay(session, ctx, exchange, provider).await;
    Ok(())
}

/// What translating a Gemini answer needs from the request side.
pub struct GeminiReply<'a> {
    pub translated: &'a crate::dialects::gemini::Translated,
    pub client_model: &'a str,
    pub provider: &'a str,
    pub call: GeminiCall,
}

/// Relay a Gemini answer (AI Studio or Vertex `publishers/google`) as an
/// Anthropic one: errors mapped, JSON translated whole, SSE translated
/// event by event with pings on silence, `countTokens` rewritten.
pub async fn relay_gemini(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut exchange: Exchange<'_>,
    reply: GeminiReply<'_>,
) -> Result<(), GatewayError> {
    use crate::dialects::gemini;
    let head = exchange.header();
    ctx.upstream_request_id = upstream_id(head, "x-goog-request-id");
    let is_sse = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if head.status.as_u16() >= 400 {
        return Err(gemini_error(exchange, reply.provider).await);
    }
    // An answer that cannot be translated, or one with no output (a
    // malformed function call): a retryable `api_error`.
    let broken = |e: gemini::GeminiError| {
        let mapped = e.mapped();
        GatewayError::Upstream {
            status: mapped.status,
            kind: mapped.kind,
            message: format!("provider `{}`: {}", reply.provider, mapped.message),
            retry_after: None,
        }
    };
    match reply.call {
        GeminiCall::CountTokens => {
            let body = read_body(&mut exchange, MAX_ERROR_BODY, reply.provider).await?;
            exchange.finish().await;
            let n = gemini::count_tokens_response(&body).map_err(broken)?;
            answer_count(session, ctx, n, "Gemini countTokens").await;
            Ok(())
        }
        GeminiCall::Generate { stream: true } if is_sse => {
            let t = gemini::GeminiStream::new(
                reply.client_model,
                &ctx.request_id,
                reply.translated.estimated_input_tokens,
                reply.translated.tool_names.clone(),
            );
            relay_translated_stream(session, ctx, exchange, reply.provider, Translator::Gemini(t)).await
        }
        GeminiCall::Generate { .. } => {
            let body = read_body(&mut exchange, MAX_TRANSLATED_BODY, reply.provider).await?;
            exchange.finish().await;
            let (body, usage, _) = gemini::translate_response(
                &body,
                &gemini::ResponseContext {
                    model: reply.client_model,
                    tool_names: &reply.translated.tool_names,
                    seed: &ctx.request_id,
                },
            )
            .map_err(broken)?;
            answer_translated(session, ctx, body, usage).await;
            Ok(())
        }
    }
}

/// A complete upstream response held in memory: a failed attempt's answer,
/// kept in case it turns out to be the last one and must reach the client.
pub struct Buffered {
    pub head: ResponseHeader,
    pub body: bytes::Bytes,
}

/// Read an (error) response whole, bounded, and release the connection.
pub async fn buffer(mut exchange: Exchange<'_>, provider: &str) -> Buffered {
    let head = exchange.header().clone();
    let body = read_body(&mut exchange, MAX_ERROR_BODY, provider)
        .await
        .unwrap_or_default();
    exchange.finish().await;
    Buffered { head, body }
}

/// Write a buffered Anthropic-type response as it came: status, headers and
/// body unmodified (Claude Code's recovery matches on the wording).
pub async fn relay_buffered(session: &mut Session, ctx: &mut RequestCtx, buffered: Buffered) {
    ctx.upstream_request_id = buffered
        .head
        .headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut head = match downstream_header(&buffered.head, ctx, true) {
        Ok(h) => h,
        Err(e) => {
            super::respond::error(session, ctx, &e).await;
            return;
        }
    };
    let _ = head.remove_header(&http::header::TRANSFER_ENCODING);
    let _ = head.insert_header(http::header::CONTENT_LENGTH, buffered.body.len().to_string());
    ctx.status = head.status.as_u16();
    if session
        .write_response_header(Box::new(head), buffered.body.is_empty())
        .await
        .is_err()
    {
        ctx.client_gone = true;
        return;
    }
    if !buffered.body.is_empty() {
        let n = buffered.body.len() as u64;
        match session.write_response_body(Some(buffered.body), true).await {
            Ok(()) => ctx.bytes_out += n,
            Err(_) => ctx.client_gone = true,
        }
    }
}

/// What translating an OpenAI-family answer needs from the request side.
pub struct OpenAiReply<'a> {
    pub translated: &'a crate::dialects::openai::request::Translated,
    /// The model the client asked for; the translated answer names it.
    pub client_model: &'a str,
    pub provider: &'a str,
}

/// Relay a Chat Completions answer as an Anthropic one: errors mapped,
/// JSON translated whole, SSE translated event by event with pings on silence.
pub async fn relay_openai(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut exchange: Exchange<'_>,
    reply: OpenAiReply<'_>,
) -> Result<(), GatewayError> {
    use crate::dialects::openai::{response, stream};
    let head = exchange.header();
    let status = head.status.as_u16();
    let header_str = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    ctx.upstream_request_id = upstream_id(head, "x-request-id");
    let is_sse = header_str("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
    if status >= 400 {
        return Err(openai_error(exchange, reply.provider).await);
    }

    if !(reply.translated.stream && is_sse) {
        let body = read_body(&mut exchange, MAX_TRANSLATED_BODY, reply.provider).await?;
        exchange.finish().await;
        let t = response::translate_response(
            &body,
            &response::ResponseContext {
                model: reply.client_model,
                tool_names: &reply.translated.tool_names,
                seed: &ctx.request_id,
            },
        )
        .map_err(|e| GatewayError::UpstreamBroken {
            provider: reply.provider.to_string(),
            detail: e.to_string(),
        })?;
        answer_translated(session, ctx, t.body, t.usage).await;
        return Ok(());
    }

    let translator = stream::StreamTranslator::new(stream::StreamContext {
        model: reply.client_model.to_string(),
        message_seed: ctx.request_id.clone(),
        estimated_input_tokens: reply.translated.estimated_input_tokens,
        tool_names: reply.translated.tool_names.clone(),
    });
    relay_translated_stream(session, ctx, exchange, reply.provider, Translator::OpenAi(translator)).await
}

/// A stream stage that turns an upstream dialect's stream into Anthropic SSE.
pub enum Translator {
    OpenAi(crate::dialects::openai::stream::StreamTranslator),
    Bedrock(crate::dialects::bedrock::stream::BedrockStream),
    Converse(crate::dialects::bedrock::converse::ConverseStream),
    Gemini(crate::dialects::gemini::GeminiStream),
}

impl Translator {
    fn start(&mut self, out: &mut Vec<u8>) {
        match self {
            Translator::OpenAi(t) => t.start(out),
            Translator::Converse(t) => t.start(out),
            Translator::Gemini(t) => t.start(out),
            // InvokeModel's stream carries Anthropic's own message_start.
            Translator::Bedrock(_) => {}
        }
    }
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match self {
            Translator::OpenAi(t) => t.push(chunk, out),
            Translator::Bedrock(t) => t.push(chunk, out),
            Translator::Converse(t) => t.push(chunk, out),
            Translator::Gemini(t) => t.push(chunk, out),
        }
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Translator::OpenAi(t) => t.finish(out),
            Translator::Bedrock(t) => t.finish(out),
            Translator::Converse(t) => t.finish(out),
            Translator::Gemini(t) => t.finish(out),
        }
    }
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        match self {
            Translator::OpenAi(t) => t.fail(kind, message, out),
            Translator::Bedrock(t) => t.fail(kind, message, out),
            Translator::Converse(t) => t.fail(kind, message, out),
            Translator::Gemini(t) => t.fail(kind, message, out),
        }
    }
    fn is_done(&self) -> bool {
        match self {
            Translator::OpenAi(t) => t.is_done(),
            Translator::Bedrock(t) => t.is_done(),
            Translator::Converse(t) => t.is_done(),
            Translator::Gemini(t) => t.is_done(),
        }
    }
    fn completed(&self) -> bool {
        match self {
            Translator::OpenAi(t) => t.stop_reason().is_some(),
            Translator::Bedrock(t) => t.completed(),
            Translator::Converse(t) => t.completed(),
            Translator::Gemini(t) => t.completed(),
        }
    }
    /// What the answer used when it ends before the translator's end: the
    /// client left, so the upstream's final usage will never arrive.
    fn usage_so_far(&mut self) -> crate::dialects::Usage {
        match self {
            Translator::OpenAi(t) => t.usage_so_far(),
            Translator::Bedrock(t) => t.take_usage().unwrap_or_default(),
            Translator::Converse(t) => t.usage_so_far(),
            Translator::Gemini(t) => t.usage_so_far(),
        }
    }
    fn usage(&mut self) -> Option<crate::dialects::Usage> {
        match self {
            Translator::OpenAi(t) => Some(t.usage()),
            Translator::Bedrock(t) => t.take_usage(),
            Translator::Converse(t) => Some(t.usage()),
            Translator::Gemini(t) => Some(t.usage()),
        }
    }
}

/// Stream a translated answer: the SSE head, then the translator's output
/// as the upstream's bytes arrive, with pings on silence, and an in-band
/// error when the upstream breaks.
async fn relay_translated_stream(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut exchange: Exchange<'_>,
    provider: &str,
    mut translator: Translator,
) -> Result<(), GatewayError> {
    let mut head = ResponseHeader::build(200, Some(5)).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let _ = head.insert_header("content-type", "text/event-stream");
    let _ = head.insert_header("cache-control", "no-cache");
    let _ = head.insert_header("request-id", ctx.request_id.as_str());
    if !session.as_downstream().is_http2() {
        let _ = head.insert_header("transfer-encoding", "chunked");
    }
    ctx.status = 200;
    if session.write_response_header(Box::new(head), false).await.is_err() {
        ctx.client_gone = true;
        exchange.abort().await;
        return Ok(());
    }
    // Pings keep Claude Code's 300 s idle abort from firing while an
    // upstream reasons quietly (OpenAI sends nothing during reasoning).
    let ping_after = ctx
        .snapshot
        .as_ref()
        .map_or(std::time::Duration::from_secs(10), |s| s.config.ping_interval.0);
    let mut out = Vec::with_capacity(4096);
    // message_start leads whatever is written first — the first translated
    // events, or a ping — so nothing ever precedes it, and it costs no write
    // of its own.
    translator.start(&mut out);
    let mut upstream_eof = false;
    let mut upstream_failed = false;
    let _stream_gauge = StreamGauge::new();
    // Pingora's timer wheel, not tokio's: arming a tokio timer due sooner
    // than every other one wakes the runtime's parked driver thread (an
    // eventfd write and a context switch per stream). The timer is armed
    // once per interval and checks how long the stream has been quiet,
    // instead of being re-armed on every chunk.
    let mut last_sent = std::time::Instant::now();
    let ping_timer = fast_sleep(ping_after);
    tokio::pin!(ping_timer);
    loop {
        let next = {
            // The same read future survives each ping, so no upstream bytes
            // are lost to cancellation.
            let read = exchange.next_chunk();
            tokio::pin!(read);
            loop {
                tokio::select! {
                    r = &mut read => break Some(r),
                    _ = &mut ping_timer => {
                        let quiet = last_sent.elapsed();
                        if quiet < ping_after {
                            ping_timer.set(fast_sleep(ping_after - quiet));
                            continue;
                        }
                        out.extend_from_slice(PING_FRAME);
                        let data = bytes::Bytes::from(std::mem::take(&mut out));
                        ctx.bytes_out += data.len() as u64;
                        if session.write_response_body(Some(data), false).await.is_err() {
                            break None;
                        }
                        last_sent = std::time::Instant::now();
                        ping_timer.set(fast_sleep(ping_after));
                    }
                }
            }
        };
        match next {
            None => {
                ctx.client_gone = true;
                ctx.usage = Some(translator.usage_so_far());
                exchange.abort().await;
                return Ok(());
            }
            Some(Ok(Some(chunk))) => translator.push(&chunk, &mut out),
            Some(Ok(None)) => {
                upstream_eof = true;
                translator.finish(&mut out);
            }
            Some(Err(e)) => {
                let (kind, message) = match &e {
                    UpstreamError::Timeout => ("timeout_error", format!("upstream provider `{provider}` went silent")),
                    UpstreamError::Connect(d) | UpstreamError::Io(d) => (
                        "api_error",
                        format!("upstream provider `{provider}` failed mid-stream: {d}"),
                    ),
                };
                log::warn!("{}: {message}", ctx.request_id);
                translator.fail(kind, &message, &mut out);
                ctx.error_message = Some(message);
                upstream_failed = true;
            }
        }
        let end = translator.is_done();
        if end {
            // Settled before message_stop goes out (see `meter::settle`).
            ctx.usage = if translator.completed() {
                translator.usage()
            } else {
                Some(translator.usage_so_far())
            };
            super::meter::settle(ctx).await;
        }
        if !out.is_empty() || end {
            let n = out.len() as u64;
            ctx.first_byte_at.get_or_insert_with(std::time::Instant::now);
            let data = bytes::Bytes::from(std::mem::take(&mut out));
            if let Some(c) = ctx.reply_capture.as_mut() {
                c.push(&data);
            }
            if session.write_response_body(Some(data), end).await.is_err() {
                ctx.client_gone = true;
                if !end {
                    ctx.usage = Some(translator.usage_so_far());
                }
                exchange.abort().await;
                return Ok(());
            }
            ctx.bytes_out += n;
            last_sent = std::time::Instant::now();
        }
        if end {
            if !translator.completed() {
                ctx.error.get_or_insert(crate::error::ErrorKind::Api);
            }
            if upstream_failed {
                exchange.abort().await;
            } else {
                finish_after_done(exchange, upstream_eof).await;
            }
            return Ok(());
        }
    }
}

/// How long a finished translated stream waits for the upstream's own end
/// (`[DONE]`, EOF) so the connection can go back to the pool.
const DRAIN_AFTER_DONE: std::time::Duration = std::time::Duration::from_secs(1);

/// The client already has `message_stop`; read what little the upstream
/// still sends so its connection can be reused, but never wait long for it.
async fn finish_after_done(mut exchange: Exchange<'_>, upstream_eof: bool) {
    if upstream_eof {
        exchange.finish().await;
        return;
    }
    let drained = fast_timeout(DRAIN_AFTER_DONE, async {
        let mut budget = 64usize;
        while budget > 0 {
            match exchange.next_chunk().await {
                Ok(Some(_)) => budget -= 1,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if drained {
        exchange.finish().await;
    } else {
        exchange.abort().await;
    }
}

/// Counts a relayed stream in `modelgate_streams_in_flight` while alive.
struct StreamGauge;

impl StreamGauge {
    fn new() -> Self {
        crate::telemetry::METRICS.streams_in_flight.inc();
        StreamGauge
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        crate::telemetry::METRICS.streams_in_flight.dec();
    }
}
