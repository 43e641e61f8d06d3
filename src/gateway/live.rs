//! `GET /admin/live`: requests as they finish, as server-sent events, for
//! the activity dashboard's live feed (and `curl -N`).
//!
//! This module owns the feed: one broadcast channel the logging phase
//! publishes each model request's summary to (names and numbers, never a
//! key, a credential or prompt text), and the admin endpoint that streams
//! it. Publishing costs nothing while nobody listens (no summary is even
//! built); a listener that falls behind is told how many it missed
//! (`event: lagged`) instead of holding memory for it. At most
//! [`MAX_LISTENERS`] listen at once. The stream ends when the process
//! starts draining, so a stop or upgrade never waits for a dashboard tab.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use tokio::sync::broadcast;

use super::ctx::RequestCtx;
use super::Shared;
use crate::error::GatewayError;

/// Listeners at once; more are refused (529, `overloaded_error`).
pub const MAX_LISTENERS: usize = 32;
/// Summaries held for a slow listener before it misses some.
const BACKLOG: usize = 1024;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub struct Live {
    tx: broadcast::Sender<Arc<str>>,
    listeners: AtomicUsize,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            tx: broadcast::channel(BACKLOG).0,
            listeners: AtomicUsize::new(0),
        }
    }
}

impl Live {
    /// A finished model request, to whoever listens.
    pub fn publish(&self, session: &Session, ctx: &RequestCtx) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let Some(model) = ctx.model.as_deref() else { return };
        let usage = ctx.usage.unwrap_or_default();
        let principal = ctx.principal.as_ref();
        let summary = serde_json::json!({
            "ts": crate::policy::period::rfc3339(crate::policy::period::now_ms()),
            "request_id": ctx.request_id,
            "key": principal.map(|k| k.name.as_str()),
            "team": principal.and_then(|k| k.team.as_deref()),
            "session": session.req_header().headers.get("x-claude-code-session-id").and_then(|v| v.to_str().ok()),
            "model": model,
            "provider": ctx.provider,
            "account": ctx.account,
            "upstream_model": ctx.upstream_model,
            "status": ctx.reported_status(),
            "error": ctx.error.map(|e| e.as_str()),
            "stream": ctx.stream,
            "cache_hit": ctx.cache_hit(),
            "attempts": ctx.attempts,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_input_tokens,
            "cache_write_tokens": usage.cache_creation_input_tokens,
            "cost_usd": ctx.sealed.as_ref().map(|r| r.cost_usd),
            "ttft_ms": ctx.first_byte_at.map(|t| t.duration_since(ctx.started).as_millis() as u64),
            "duration_ms": ctx.started.elapsed().as_millis() as u64,
            "inbound": ctx.inbound_format.map(|f| f.name()),
        });
        // No receiver left since the check: nothing to do.
        let _ = self.tx.send(summary.to_string().into());
    }
}

/// Counts a listener for as long as it streams.
struct Listening<'a>(&'a AtomicUsize);

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stream the feed to this admin request until the client goes or the
/// process drains.
pub async fn serve(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let live = &shared.live;
    if live.listeners.fetch_add(1, Ordering::AcqRel) >= MAX_LISTENERS {
        live.listeners.fetch_sub(1, Ordering::AcqRel);
        return Err(GatewayError::Unavailable {
            message: format!("the live feed has {MAX_LISTENERS} listeners already"),
            retry_after: Some(10),
        });
    }
    let _listening = Listening(&live.listeners);
    let mut rx = live.tx.subscribe();
    let mut head = ResponseHeader::build(200, Some(4)).map_err(|e| GatewayError::Internal(e.to_string()))?;
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("request-id", ctx.request_id.as_str()),
    ] {
        let _ = head.insert_header(name, value);
    }
    if session.req_header().version != http::Version::HTTP_2 {
        let _ = head.insert_header("transfer-encoding", "chunked");
    }
    ctx.status = 200;
    ctx.stream = true;
    if session.write_response_header(Box::new(head), false).await.is_err() {
        ctx.client_gone = true;
        return Ok(());
    }
    let mut out = Some(Bytes::from_static(b": modelgate live feed\n\n"));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut idle = Duration::ZERO;
    loop {
        if let Some(chunk) = out.take() {
            let n = chunk.len() as u64;
            if session.write_response_body(Some(chunk), false).await.is_err() {
                ctx.client_gone = true;
                session.set_keepalive(None);
                return Ok(());
            }
            ctx.bytes_out += n;
            idle = Duration::ZERO;
        }
        tokio::select! {
            got = rx.recv() => {
                out = match got {
                    Ok(summary) => Some(Bytes::from(format!("event: request\ndata: {summary}\n\n"))),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        Some(Bytes::from(format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n")))
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
            }
            _ = tick.tick() => {
                if shared.draining.load(Ordering::Relaxed) || session.is_process_shutting_down() {
                    break;
                }
                idle += Duration::from_secs(1);
                if idle >= KEEPALIVE {
                    out = Some(Bytes::from_static(b": keepalive\n\n"));
                }
            }
        }
    }
    session.set_keepalive(None);
    let _ = session.write_response_body(None, true).await;
    Ok(())
}
