//! Absolute-form requests (`GET http://host/path`), relayed to the origin.
//!
//! The body is read whole first (bounded by `max_request_size` and
//! `client_timeouts.body`) so that a retry can send it again. Attempts go
//! through hyper's pooled client, whose connector resolves, checks the
//! allow rules and connects to exactly the addresses it checked
//! (`super::vetted`). An attempt is retried after `retry_delay` (doubling)
//! up to `max_retries` times when
//! - the connection could not be made (nothing was sent: any method), or
//! - for an idempotent method (RFC 9110 §9.2.2), the origin answered 502,
//!   503 or 504, or the connection failed mid-exchange.
//!
//! An origin that sends no answer head within `timeout` gets 504 at once
//! (no retry: it already took that long), and one that goes silent for
//! `timeout` mid-answer has its answer cut off.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) are removed both ways: those the
//! `Connection` field names, and `Connection`, `Keep-Alive`,
//! `Proxy-Connection`, `Proxy-Authorization`, `TE`, `Trailer`,
//! `Transfer-Encoding` and `Upgrade`; hyper frames each leg itself. Both
//! ways gain `Via: 1.1 modelgate`, and `Host` is the URI's authority.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{connect, loggable, refuse, target, vetted, Body, BoxError, Refusal, Settings};
use crate::upstream::dns::Dns;

/// The largest request or answer head the proxy reads, in bytes.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) struct Relay {
    settings: Arc<Settings>,
    dns: Arc<Dns>,
    client: Client<Connector, Full<Bytes>>,
}

impl Relay {
    pub(super) fn new(settings: Arc<Settings>, dns: Arc<Dns>) -> Relay {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(settings.pool_size)
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_max_buf_size(MAX_HEAD)
            .build(Connector {
                settings: settings.clone(),
                dns: dns.clone(),
            });
        Relay { settings, dns, client }
    }

    pub(super) async fn forward(&self, req: Request<Incoming>, client: String) -> Response<Body> {
        let line = AccessLine {
            client,
            method: req.method().clone(),
            target: loggable(req.uri()),
            started: Instant::now(),
            attempts: 0,
            status: 0,
            sent: 0,
        };
        if req.uri().scheme_str() != Some("http") {
            let why = "only http:// URIs are relayed; send CONNECT host:443 for https";
            return line.answered(refuse(StatusCode::BAD_REQUEST, why));
        }
        let Some((host, port)) = target(req.uri(), Some(80)) else {
            return line.answered(refuse(StatusCode::BAD_REQUEST, "the URI names no host"));
        };
        // Refuse a forbidden destination before reading its body.
        if let Err(r) = vetted(&self.settings, &self.dns, &host, port).await {
            return line.answered(r.response());
        }
        let (parts, body) = req.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(r) => return line.answered(r.response()),
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The body is already here: nothing for the origin to wait for.
        headers.remove(header::EXPECT);
        headers.append(header::VIA, HeaderValue::from_static("1.1 modelgate"));
        // The origin is told the authority of the URI (RFC 9112 §3.2.2),
        // whatever Host the client sent beside it.
        if let Some(authority) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, authority);
        }
        self.attempts(line, parts.method, parts.uri, headers, body, &host, port)
            .await
    }

    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Refusal> {
        let max = self.settings.max_request_size;
        let too_large = || {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than max_request_size ({max} bytes)"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        match tokio::time::timeout(self.settings.body_timeout, Limited::new(body, limit).collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )),
            Err(_) => Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within client_timeouts.body ({:?})",
                    self.settings.body_timeout
                ),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        mut line: AccessLine,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        host: &str,
        port: u16,
    ) -> Response<Body> {
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        line.sent = body.len() as u64;
        let outcome = loop {
            line.attempts += 1;
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            *req.headers_mut() = headers.clone();
            let outcome = tokio::time::timeout(self.settings.timeout, self.client.request(req)).await;
            let retry = match &outcome {
                Ok(Ok(resp)) => idempotent && matches!(resp.status().as_u16(), 502..=504),
                Ok(Err(e)) => refusal_in(e).is_none() && (e.is_connect() || idempotent),
                // A silent origin already took `timeout`: not again.
                Err(_) => false,
            };
            if !retry || line.attempts > self.settings.max_retries {
                break outcome;
            }
            log::debug!(target: "modelgate::proxy", "{} {}: attempt {} failed; retrying", line.method, line.target, line.attempts);
            tokio::time::sleep(self.settings.backoff(line.attempts)).await;
        };
        match outcome {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .append(header::VIA, HeaderValue::from_static("1.1 modelgate"));
                line.status = parts.status.as_u16();
                let idle = self.settings.timeout;
                let logged = Logged {
                    inner: body,
                    line,
                    received: 0,
                    idle,
                    last: tokio::time::Instant::now(),
                    silence: Box::pin(tokio::time::sleep(idle)),
                };
                Response::from_parts(parts, logged.boxed())
            }
            Ok(Err(e)) => {
                let answer = match refusal_in(&e) {
                    Some(r) => r.response(),
                    None => refuse(
                        StatusCode::BAD_GATEWAY,
                        &format!("{host}:{port} could not be reached: {}", crate::error::with_causes(&e)),
                    ),
                };
                line.answered(answer)
            }
            Err(_) => line.answered(refuse(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "{host}:{port} sent no answer within timeout ({:?})",
                    self.settings.timeout
                ),
            )),
        }
    }
}

/// The proxy's own refusal (a denied destination) inside a client error.
fn refusal_in(e: &hyper_util::client::legacy::Error) -> Option<&Refusal> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

/// Remove the hop-by-hop fields (module docs).
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        h.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
}

/// hyper's connector for the relay: resolve, check, connect (`super::vetted`).
#[derive(Clone)]
struct Connector {
    settings: Arc<Settings>,
    dns: Arc<Dns>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (host, port) = target(&uri, Some(80)).ok_or("the URI names no host")?;
            let addrs = vetted(&this.settings, &this.dns, &host, port).await?;
            Ok(TokioIo::new(connect(&addrs, this.settings.connect_timeout).await?))
        })
    }
}

/// One access log line, written when the answer has been sent (or dropped).
struct AccessLine {
    client: String,
    method: Method,
    target: String,
    started: Instant,
    attempts: u32,
    status: u16,
    sent: u64,
}

impl AccessLine {
    fn write(&self, received: u64) {
        log::info!(
            target: "modelgate::proxy",
            "{} {} {} {} sent={} received={} {}ms attempts={}",
            self.client,
            self.method,
            self.target,
            self.status,
            self.sent,
            received,
            self.started.elapsed().as_millis(),
            self.attempts
        );
    }

    /// Log an answer the proxy wrote itself, and return it.
    fn answered(mut self, answer: Response<Body>) -> Response<Body> {
        self.status = answer.status().as_u16();
        self.write(0);
        answer
    }
}

/// A relayed answer body that writes its access line once it is done, and
/// ends with an error when the origin is silent for `idle`.
struct Logged {
    inner: Incoming,
    line: AccessLine,
    received: u64,
    idle: std::time::Duration,
    /// When the origin last sent a frame.
    last: tokio::time::Instant,
    silence: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(d)) = frame.as_ref().map(|f| f.as_ref().map(|f| f.data_ref())) {
                    this.received += d.map_or(0, |d| d.len() as u64);
                }
                this.last = tokio::time::Instant::now();
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            // The timer is moved only when it fires (not per frame): if
            // something arrived since it was set, it is set again from then.
            Poll::Pending => loop {
                if this.silence.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = this.last + this.idle;
                if due <= tokio::time::Instant::now() {
                    let why = format!("the origin sent nothing for {:?}", this.idle);
                    return Poll::Ready(Some(Err(why.into())));
                }
                this.silence.as_mut().reset(due);
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.line.write(self.received);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-end-to-end", "kept"),
            ("authorization", "Bearer origin"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-end-to-end"]);
    }
}
