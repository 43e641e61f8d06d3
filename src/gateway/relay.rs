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
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::dialects::anthropic::is_hop_by_hop;
use crate::error::GatewayError;
use crate::upstream::{Exchange, UpstreamError};

pub async fn relay(session: &mut Session, ctx: &mut RequestCtx, mut exchange: Exchange<'_>, provider: &str) {
    let upstream = exchange.header();
    ctx.upstream_request_id = upstream
        .headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_sse = upstream
        .headers
        .get(http::header::CONTENT_TYPE)
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
    loop {
        match exchange.next_chunk().await {
            Ok(Some(chunk)) => {
                let n = chunk.len() as u64;
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
