//! Writing locally made responses: JSON bodies and the Anthropic-shaped error
//! for every [`GatewayError`]. All gateway-made responses leave through here,
//! so each carries `request-id` and a correct `content-length`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::error::GatewayError;

/// Write a complete non-JSON response (e.g. the metrics text).
pub async fn body(session: &mut Session, ctx: &mut RequestCtx, status: u16, content_type: &str, body: Vec<u8>) {
    complete(session, ctx, status, content_type, Bytes::from(body), &[]).await
}

/// Write a complete JSON response.
pub async fn json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: Vec<u8>,
    extra: &[(&'static str, String)],
) {
    complete(session, ctx, status, "application/json", Bytes::from(body), extra).await
}

/// Write a complete response with a known length. Errors writing to a
/// departed client are not the request's problem: they are logged at debug
/// and dropped.
pub async fn complete(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) {
    // An answer made here (a cache hit, a translated or local token
    // count) in the client's format.
    let framed = ctx
        .reframe
        .as_ref()
        .filter(|r| r.reframes(content_type.as_bytes()))
        .map(|r| r.content_type());
    let (body, content_type) = match framed {
        Some(framed) if status < 300 => (super::relay::reframe(ctx, body, true), framed),
        _ => {
            ctx.reframe = None;
            (body, content_type)
        }
    };
    let mut head = match ResponseHeader::build(status, Some(4 + extra.len())) {
        Ok(h) => h,
        Err(e) => {
            log::error!("cannot build a {status} response header: {e}");
            return;
        }
    };
    let len = body.len();
    let _ = head.insert_header("content-type", content_type);
    let _ = head.insert_header("content-length", len.to_string());
    let _ = head.insert_header("request-id", ctx.request_id.as_str());
    for (name, value) in extra {
        let _ = head.insert_header(*name, value.as_str());
    }
    if status < 300 {
        for (name, value) in ctx.unified.iter().flatten() {
            let _ = head.insert_header(*name, value.as_str());
        }
    }
    ctx.status = status;
    super::meter::before_end(session, ctx).await;
    if let Err(e) = session.write_response_header(Box::new(head), len == 0).await {
        log::debug!("{}: client gone before the response header: {e}", ctx.request_id);
        return;
    }
    if len > 0 {
        ctx.first_byte_at.get_or_insert_with(std::time::Instant::now);
        match session.write_response_body(Some(body), true).await {
            Ok(()) => ctx.bytes_out += len as u64,
            Err(e) => log::debug!("{}: client gone during the response body: {e}", ctx.request_id),
        }
    }
}

pub async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &GatewayError) {
    error_with(session, ctx, err, &[]).await
}

/// [`error`] with headers of the caller's beside the error's own (the
/// dashboard's `WWW-Authenticate` challenge).
pub async fn error_with(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &GatewayError,
    extra: &[(&'static str, String)],
) {
    ctx.error = Some(err.kind());
    ctx.error_message = Some(err.to_string());
    if matches!(
        err,
        GatewayError::RequestTooLarge { .. } | GatewayError::ClientTimeout { .. }
    ) {
        // The rest of an oversized or stalled body is not worth reading: close instead.
        session.set_keepalive(None);
    }
    if session.response_written().is_some() {
        // Too late for a status: the stream relay reports mid-stream errors itself.
        return;
    }
    let body = err.body(&ctx.request_id);
    let mut headers = err.headers();
    headers.extend(extra.iter().cloned());
    json(session, ctx, err.status(), body, &headers).await;
}
