//! Stage: send the request to a candidate upstream.
//!
//! Builds the upstream request head for one provider — path, query, headers
//! and credential per its dialect — and hands head and body to the upstream
//! leg. What comes back is an [`Exchange`] whose response header has arrived,
//! or the [`GatewayError`] the client should see. Body translation happens
//! before this stage; reading the answer happens after it. Failover across
//! candidates builds on [`send`]; nothing here touches the downstream.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::config::snapshot::Provider;
use crate::config::Snapshot;
use crate::dialects::anthropic::{self, UpstreamAuth};
use crate::dialects::openai::Flavor;
use crate::error::GatewayError;
use crate::gateway::auth::Caller;
use crate::upstream::{Exchange, Limits, UpstreamError, Upstreams};

/// What the client asked for, in the form a passthrough attempt reads.
pub struct Outbound<'r> {
    pub method: &'r http::Method,
    /// Client path without the query, e.g. `/v1/messages`.
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
}

fn internal(e: pingora::BError) -> GatewayError {
    GatewayError::Internal(format!("cannot build the upstream request: {e}"))
}

/// The head of a passthrough request to an Anthropic-type provider: the
/// client's method, path, query and headers under the header policy of
/// [`anthropic::forward_request_headers`].
pub fn anthropic_head(
    out: &Outbound<'_>,
    caller: &Caller,
    provider: &Provider,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let auth = match (&provider.credential, caller) {
        (Some(key), _) => UpstreamAuth::ProviderKey(key.expose()),
        (None, Caller::Passthrough) => UpstreamAuth::ClientCredential,
        (None, Caller::Key(_)) => UpstreamAuth::None,
    };
    let headers = anthropic::forward_request_headers(out.headers, auth, &provider.headers);
    let path = provider.base.join(out.path);
    let target = match out.query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut req =
        RequestHeader::build(out.method.clone(), target.as_bytes(), Some(headers.len() + 2)).map_err(internal)?;
    req.insert_header(http::header::HOST, &provider.base.authority)
        .map_err(internal)?;
    for (name, value) in headers {
        req.append_header(name, value).map_err(internal)?;
    }
    if body_len > 0 || out.method == http::Method::POST {
        req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
            .map_err(internal)?;
    }
    Ok(req)
}

/// The head of a Chat Completions request. No client header crosses over:
/// `anthropic-*` headers mean nothing here and the client's credential is
/// never sent to a non-Anthropic provider.
pub fn openai_head(
    provider: &Provider,
    flavor: Flavor,
    upstream_model: &str,
    stream: bool,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let target = match flavor {
        Flavor::Azure => {
            let deployment = provider.deployment.as_deref().unwrap_or(upstream_model);
            let encoded: String = url::form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
            let version = provider
                .api_version
                .as_deref()
                .unwrap_or(crate::config::snapshot::DEFAULT_AZURE_API_VERSION);
            let path = provider
                .base
                .join(&format!("/openai/deployments/{encoded}/chat/completions"));
            let version: String = url::form_urlencoded::byte_serialize(version.as_bytes()).collect();
            format!("{path}?api-version={version}")
        }
        _ => provider.base.join("/chat/completions"),
    };
    let mut req = RequestHeader::build(http::Method::POST, target.as_bytes(), Some(8 + provider.headers.len()))
        .map_err(internal)?;
    req.insert_header(http::header::HOST, &provider.base.authority)
        .map_err(internal)?;
    req.insert_header(http::header::CONTENT_TYPE, "application/json")
        .map_err(internal)?;
    req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
        .map_err(internal)?;
    req.insert_header(
        http::header::ACCEPT,
        if stream {
            "text/event-stream"
        } else {
            "application/json"
        },
    )
    .map_err(internal)?;
    req.insert_header(http::header::ACCEPT_ENCODING, "identity")
        .map_err(internal)?;
    req.insert_header(
        http::header::USER_AGENT,
        concat!("modelgate/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(internal)?;
    if let Some(key) = &provider.credential {
        let (name, value) = match flavor {
            Flavor::Azure => (HeaderName::from_static("api-key"), HeaderValue::from_str(key.expose())),
            _ => (
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", key.expose())),
            ),
        };
        let mut value = value.map_err(|_| {
            GatewayError::Internal(format!(
                "provider `{}` has a credential that is not a valid header value",
                provider.name
            ))
        })?;
        value.set_sensitive(true);
        req.insert_header(name, value).map_err(internal)?;
    }
    for (n, v) in &provider.headers {
        req.insert_header(n.clone(), v.clone()).map_err(internal)?;
    }
    Ok(req)
}

/// Send a built request to `provider` and wait for its response header.
pub async fn send<'u>(
    upstreams: &'u Upstreams,
    snap: &Snapshot,
    provider: &Provider,
    head: RequestHeader,
    body: Bytes,
) -> Result<Exchange<'u>, GatewayError> {
    let limits = Limits {
        connect: snap.connect_timeout,
        idle: snap.timeout,
    };
    upstreams
        .send(&provider.base, head, body, limits)
        .await
        .map_err(|e| upstream_error(&provider.name, e, snap))
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
