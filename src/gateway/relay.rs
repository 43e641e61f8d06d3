//! Stage: relay the committed answer to the client as it arrives.
//!
//! [`answer`] asks the candidate's `Call` how its answer becomes the
//! client's (`providers::Answer`) and runs one of four generic engines:
//! - **relay** ([`relay`]): the upstream's status, body bytes and headers
//!   (minus hop-by-hop ones) as they come, so Anthropic error bodies,
//!   `retry-after`, `x-should-retry`, `request-id` and
//!   `anthropic-ratelimit-*` reach Claude Code untouched; usage is read on
//!   the side. Chunks are flushed as they arrive: SSE is never buffered. A
//!   body without a length goes out chunked.
//! - **stream translation**: a `StreamTranslate` turns the upstream's
//!   stream into Anthropic SSE chunk by chunk, with pings on silence.
//! - **whole translation**: the body read (bounded) and translated at once.
//! - **refusal**: the answer read whole (bounded) and judged by the `Call`:
//!   relayed verbatim, or a mapped Anthropic error.
//!
//! Failures after the header are reported in-band (`event: error`) on event
//! streams, and by closing the connection otherwise. Nothing here knows a
//! provider type.

use pingora::http::ResponseHeader;
use pingora::prelude::fast_timeout::{fast_sleep, fast_timeout};
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::failure::ClientAnswer;
use crate::dialects::anthropic::is_hop_by_hop;
use crate::dialects::anthropic::usage::UsageTap;
use crate::error::GatewayError;
use crate::providers::{Answer, Reply, StreamTranslate, Translated};
use crate::upstream::{Buffered, Exchange, UpstreamError};

/// The answer the attempt loop settled on; the relay takes it from here.
pub struct Committed<'u> {
    pub exchange: Exchange<'u>,
    pub provider: std::sync::Arc<crate::runtime::Provider>,
    pub account: String,
    pub call: Box<dyn crate::providers::Call>,
    pub attempts: u32,
}

/// Turn the committed answer into the client's (see the module docs).
pub async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    committed: Committed<'_>,
    reply: &Reply<'_>,
) -> Result<(), GatewayError> {
    let Committed { exchange, call, .. } = committed;
    let provider = reply.provider;
    ctx.upstream_request_id = upstream_id(exchange.header(), call.request_id_header());
    match call.answer(exchange.header(), reply) {
        Answer::Relay => {
            relay(session, ctx, exchange, provider).await;
            Ok(())
        }
        Answer::Refuse => {
            let buffered = exchange.buffer(crate::providers::MAX_SMALL_BODY).await;
            match super::failure::client_answer(call.as_ref(), buffered) {
                ClientAnswer::Verbatim(buffered) => {
                    relay_buffered(session, ctx, *buffered).await;
                    Ok(())
                }
                ClientAnswer::Error(e) => Err(e),
            }
        }
        Answer::Stream(translator) => relay_translated_stream(session, ctx, exchange, provider, translator).await,
        Answer::Whole { limit, translate } => {
            let mut exchange = exchange;
            let body = read_body(&mut exchange, limit, provider, ctx).await?;
            exchange.finish().await;
            answer_translated(session, ctx, translate(&body)?).await;
            Ok(())
        }
    }
}

/// A whole answer translated: metered (a count is not), captured, written.
async fn answer_translated(session: &mut Session, ctx: &mut RequestCtx, translated: Translated) {
    // Settled and recorded by `respond::complete`, before the body goes out.
    if let Some(usage) = translated.usage {
        ctx.usage = Some(usage);
    }
    let body = bytes::Bytes::from(translated.body);
    if let Some(c) = ctx.reply_capture.as_mut() {
        c.push(&body);
    }
    let note: Vec<(&'static str, String)> = translated
        .counted_by
        .map(|counter| ("x-modelgate-token-count", format!("upstream; {counter}")))
        .into_iter()
        .collect();
    super::respond::complete(session, ctx, 200, "application/json", body, &note).await;
}

/// An Anthropic answer relayed as it comes.
pub async fn relay(session: &mut Session, ctx: &mut RequestCtx, exchange: Exchange<'_>, provider: &str) {
    let upstream = exchange.header();
    let upstream_content_type = upstream.headers.get(http::header::CONTENT_TYPE).cloned();
    let is_sse = upstream_content_type
        .as_ref()
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let h2 = session.as_downstream().is_http2();
    let mut head = match downstream_header(upstream, ctx, h2) {
        Ok(h) => h,
        Err(e) => {
            exchange.abort().await;
            super::respond::error(session, ctx, &e).await;
            return;
        }
    };
    reframe_head(&mut head, ctx, h2);
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

/// Whether the answer's end still waits for [`super::meter::before_end`].
fn end_pending(ctx: &RequestCtx) -> bool {
    ctx.admission.is_some() || (ctx.metered && ctx.sealed.is_none())
}

/// Settle and record the request before the response's end reaches the
/// client ([`super::meter::before_end`]); the tap's reading is final here.
async fn before_end(session: &Session, ctx: &mut RequestCtx, tap: &mut UsageTap) {
    read_tap(ctx, tap);
    super::meter::before_end(session, ctx).await;
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
                if end_pending(ctx) && (exchange.body_done() || tap.has_final_usage()) {
                    before_end(session, ctx, tap).await;
                }
                let chunk = reframe(ctx, chunk, false);
                if chunk.is_empty() {
                    continue;
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
                if end_pending(ctx) {
                    before_end(session, ctx, tap).await;
                }
                let tail = reframe(ctx, bytes::Bytes::new(), true);
                if let Err(e) = session
                    .write_response_body((!tail.is_empty()).then_some(tail), true)
                    .await
                {
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
                    before_end(session, ctx, tap).await;
                    let frame = reframe(ctx, err.sse_frame(&ctx.request_id).into(), true);
                    let _ = session.write_response_body(Some(frame), true).await;
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
    // Without a case map: the names below are `http::HeaderName`s or
    // lower-case non-standard names, which Pingora writes as the map would
    // have kept them, and the map would cost an allocation per header.
    let mut head =
        ResponseHeader::build_no_case(upstream.status, Some(upstream.headers.len() + 2)).map_err(internal)?;
    let connection = upstream.headers.get(http::header::CONNECTION);
    for (name, value) in upstream.headers.iter() {
        if is_hop_by_hop(name, connection) {
            continue;
        }
        // A signed-in developer sees their own caps, never the provider
        // account's limits as if they were theirs (the gateway protocol).
        if ctx.unified.is_some() && name.as_str().starts_with("anthropic-ratelimit-") {
            continue;
        }
        head.append_header(name.clone(), value.clone()).map_err(internal)?;
    }
    if upstream.status.is_success() {
        for (name, value) in ctx.unified.iter().flatten() {
            head.insert_header(*name, value.as_str()).map_err(internal)?;
        }
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

/// The head of an answer re-framed for the client's format (`ctx.reframe`:
/// Bedrock's event stream, or its token count): its content type, and no
/// length (the re-framed one differs). An answer the re-framer does not
/// take (an error, say) goes as it is.
fn reframe_head(head: &mut ResponseHeader, ctx: &mut RequestCtx, h2: bool) {
    let Some(r) = ctx.reframe.as_ref() else { return };
    let taken = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| r.reframes(v.as_bytes()));
    if !(head.status.is_success() && taken) {
        ctx.reframe = None;
        return;
    }
    let _ = head.insert_header(http::header::CONTENT_TYPE, r.content_type());
    let _ = head.remove_header(&http::header::CONTENT_LENGTH);
    if !h2 {
        let _ = head.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
}

/// A piece of the answer's body as the client's format has it
/// (`ctx.reframe`), with what the stream's end adds when `end`.
pub(super) fn reframe(ctx: &mut RequestCtx, chunk: bytes::Bytes, end: bool) -> bytes::Bytes {
    let Some(r) = ctx.reframe.as_mut() else { return chunk };
    let mut out = Vec::with_capacity(chunk.len() + 64);
    r.push(&chunk, &mut out);
    if end {
        r.finish(&mut out);
    }
    bytes::Bytes::from(out)
}

/// Read the rest of an upstream body, refusing more than `cap` bytes.
async fn read_body(
    exchange: &mut Exchange<'_>,
    cap: usize,
    provider: &str,
    ctx: &RequestCtx,
) -> Result<bytes::Bytes, GatewayError> {
    let timeout = ctx.snapshot.as_ref().map(|s| s.timeout).unwrap_or_default();
    exchange
        .read_to_end(cap)
        .await
        .map_err(|e| super::failure::upstream_error(provider, e, timeout))
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
    super::meter::before_end(session, ctx).await;
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

/// Stream a translated answer: the SSE head, then the translator's output
/// as the upstream's bytes arrive, with pings on silence, and an in-band
/// error when the upstream breaks.
async fn relay_translated_stream(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut exchange: Exchange<'_>,
    provider: &str,
    mut translator: Box<dyn StreamTranslate>,
) -> Result<(), GatewayError> {
    let mut head = ResponseHeader::build(200, Some(5)).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let _ = head.insert_header("content-type", "text/event-stream");
    let _ = head.insert_header("cache-control", "no-cache");
    let _ = head.insert_header("request-id", ctx.request_id.as_str());
    for (name, value) in ctx.unified.iter().flatten() {
        let _ = head.insert_header(*name, value.as_str());
    }
    let h2 = session.as_downstream().is_http2();
    if !h2 {
        let _ = head.insert_header("transfer-encoding", "chunked");
    }
    reframe_head(&mut head, ctx, h2);
    ctx.status = 200;
    if session.write_response_header(Box::new(head), false).await.is_err() {
        ctx.client_gone = true;
        exchange.abort().await;
        return Ok(());
    }
    // Pings keep Claude Code's 300 s idle abort from firing while an
    // upstream reasons quietly (some send nothing while they reason).
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
                        let data = reframe(ctx, bytes::Bytes::from(std::mem::take(&mut out)), false);
                        ctx.bytes_out += data.len() as u64;
                        if !data.is_empty() && session.write_response_body(Some(data), false).await.is_err() {
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
            // Settled and recorded before message_stop goes out.
            ctx.usage = if translator.completed() {
                translator.usage()
            } else {
                Some(translator.usage_so_far())
            };
            if !translator.completed() {
                ctx.error.get_or_insert(crate::error::ErrorKind::Api);
            }
            super::meter::before_end(session, ctx).await;
        }
        if !out.is_empty() || end {
            ctx.first_byte_at.get_or_insert_with(std::time::Instant::now);
            let data = bytes::Bytes::from(std::mem::take(&mut out));
            if let Some(c) = ctx.reply_capture.as_mut() {
                c.push(&data);
            }
            let data = reframe(ctx, data, end);
            let n = data.len() as u64;
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
