//! Stage: send the request to a candidate upstream.
//!
//! Builds the upstream request for one [`Candidate`] — path, query, headers
//! and credential per the dialect — and hands it to the upstream leg. What
//! comes back is either an [`Exchange`] whose response header has arrived or
//! the [`GatewayError`] the client should see. Failover across candidates
//! builds on this function; it never touches the downstream session.

use bytes::Bytes;
use http::header::HeaderMap;
use pingora::http::RequestHeader;

use crate::config::snapshot::Candidate;
use crate::config::{ProviderKind, Snapshot};
use crate::dialects::anthropic::{self, UpstreamAuth};
use crate::error::GatewayError;
use crate::gateway::auth::Caller;
use crate::upstream::{Exchange, Limits, UpstreamError, Upstreams};

/// What the client asked for, in the form every attempt reads.
pub struct Outbound<'r> {
    pub method: &'r http::Method,
    /// Client path without the query, e.g. `/v1/messages`.
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
    pub body: Bytes,
}

pub async fn send<'u>(
    upstreams: &'u Upstreams,
    snap: &Snapshot,
    caller: &Caller,
    candidate: &Candidate,
    out: &Outbound<'_>,
) -> Result<Exchange<'u>, GatewayError> {
    let provider = &candidate.provider;
    let header = match provider.kind {
        ProviderKind::Anthropic => {
            let auth = match (&provider.credential, caller) {
                (Some(key), _) => UpstreamAuth::ProviderKey(key.expose()),
                (None, Caller::Passthrough) => UpstreamAuth::ClientCredential,
                (None, Caller::Key(_)) => UpstreamAuth::None,
            };
            let headers = anthropic::forward_request_headers(out.headers, auth, &provider.headers);
            build_header(
                out,
                &provider.base.join(out.path),
                &provider.base.authority,
                headers,
                out.body.len(),
            )?
        }
    };
    let limits = Limits {
        connect: snap.connect_timeout,
        idle: snap.timeout,
    };
    upstreams
        .send(&provider.base, header, out.body.clone(), limits)
        .await
        .map_err(|e| upstream_error(&provider.name, e, snap))
}

fn build_header(
    out: &Outbound<'_>,
    path: &str,
    authority: &str,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let target = match out.query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let internal = |e: pingora::BError| GatewayError::Internal(format!("cannot build the upstream request: {e}"));
    let mut req =
        RequestHeader::build(out.method.clone(), target.as_bytes(), Some(headers.len() + 2)).map_err(internal)?;
    req.insert_header(http::header::HOST, authority).map_err(internal)?;
    for (name, value) in headers {
        req.append_header(name, value).map_err(internal)?;
    }
    if body_len > 0 || out.method == http::Method::POST {
        req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
            .map_err(internal)?;
    }
    Ok(req)
}

/// Map an upstream failure before any response byte to the client's error.
pub fn upstream_error(provider: &str, e: UpstreamError, snap: &Snapshot) -> GatewayError {
    match e {
        UpstreamError::Connect(detail) => GatewayError::UpstreamUnreachable {
            provider: provider.to_string(),
            detail,
        },
        UpstreamError::Timeout => GatewayError::UpstreamTimeout {
            provider: provider.to_string(),
            after: snap.timeout,
        },
        UpstreamError::Io(detail) => GatewayError::UpstreamBroken {
            provider: provider.to_string(),
            detail,
        },
    }
}
