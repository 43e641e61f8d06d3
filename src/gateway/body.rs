//! Stage: read the request body — whole, once, and never more than
//! `max_request_size` bytes.
//!
//! A declared `Content-Length` above the cap is refused before reading a
//! byte; a chunked body is counted as it arrives. The result is one `Bytes`
//! that every later stage (and every retry) shares without copying.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use crate::error::GatewayError;

/// Read the whole body: at most `limit` bytes, within `deadline` in all
/// (`client_timeouts.body`). A client that is slower than that gets a 408
/// and its connection closed; nothing it sent is kept.
pub async fn read(session: &mut Session, limit: u64, deadline: Duration) -> Result<Bytes, GatewayError> {
    match pingora::prelude::fast_timeout::fast_timeout(deadline, read_all(session, limit)).await {
        Ok(read) => read,
        Err(_) => {
            crate::telemetry::METRICS
                .client_timeouts
                .with_label_values(&["body"])
                .inc();
            session.set_keepalive(None);
            Err(GatewayError::ClientTimeout {
                phase: "body",
                after: deadline,
            })
        }
    }
}

async fn read_all(session: &mut Session, limit: u64) -> Result<Bytes, GatewayError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::RequestTooLarge { limit });
    }
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total: u64 = 0;
    loop {
        let chunk = match session.read_request_body().await {
            Ok(chunk) => chunk,
            Err(e) => {
                // The framing is lost (a bad chunk size, a body cut short):
                // whatever follows on this connection is not a request.
                session.set_keepalive(None);
                return Err(GatewayError::InvalidRequest(format!(
                    "could not read the request body: {}",
                    e.etype().as_str()
                )));
            }
        };
        let Some(chunk) = chunk else { break };
        total += chunk.len() as u64;
        if total > limit {
            return Err(GatewayError::RequestTooLarge { limit });
        }
        // The common case is one chunk: keep it as is, copy only when a second arrives.
        if let Some(b) = buf.as_mut() {
            b.extend_from_slice(&chunk);
        } else if let Some(f) = first.take() {
            let cap = declared.unwrap_or(total).min(limit) as usize;
            let mut b = BytesMut::with_capacity(cap.max(f.len() + chunk.len()));
            b.extend_from_slice(&f);
            b.extend_from_slice(&chunk);
            buf = Some(b);
        } else {
            first = Some(chunk);
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// True when the request declares a body the gateway does not want to drain
/// (answering early, e.g. 401): larger than the cap, or chunked of unknown size.
pub fn not_worth_draining(session: &Session, limit: u64) -> bool {
    let h = &session.req_header().headers;
    let chunked = h
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let large = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit);
    chunked || large
}
