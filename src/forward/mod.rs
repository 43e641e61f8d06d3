//! `modelgate proxy`: an HTTP forward proxy (claude-code-model-gateway's
//! `proxy` command), for tools that take `HTTPS_PROXY`/`HTTP_PROXY` rather
//! than a base URL.
//!
//! **What it does.** Two kinds of request arrive (RFC 9110 §7.1, §9.3.6):
//! - `CONNECT host:port` opens a TCP tunnel ([`tunnel`]); HTTPS goes through
//!   it end to end, never decrypted or inspected.
//! - An absolute-form `GET http://host/path` (any method) is relayed
//!   ([`relay`]), with retries on connect errors and 502/503/504: idempotent
//!   methods retry on any of them, others (POST) only when the connection
//!   was never made, so no request is sent twice.
//! - `GET /health` (origin-form) answers `{"status":"ok"}` for readiness
//!   checks; any other origin-form request is not a proxy request (400).
//!
//! **Where it may go.** [`allow`]: public addresses, plus whatever the
//! allow rules name. Loopback and private ranges are refused with 403.
//!
//! **On Pingora.** The proxy is a Pingora listening service (a
//! [`pingora::apps::ServerApp`]) in a Pingora server of its own
//! (`server::run_forward_proxy`), so it has Pingora's listeners, daemon
//! mode, SIGTERM drain and graceful upgrade (`modelgate proxy -u` takes the
//! sockets over from a running proxy). The HTTP/1.1 framing inside each
//! connection is hyper's: Pingora's HTTP proxy refuses `CONNECT`, and its
//! HTTP/1 session cannot hand a connection over with the bytes it read
//! past the request head (`HttpSession::into_inner` drops them), which a
//! tunnel needs; hyper's server does upgrades.
//!
//! **Limits.** The gateway's own: `client_timeouts.head` for a request head
//! and `client_timeouts.body` for a body, `max_request_size` for a body
//! (bodies are read whole before the first attempt so that a retry can send
//! them again; larger ones get 413), `connect_timeout` per connection
//! attempt, `timeout` for an answer's head and for silence on a tunnel.
//!
//! **Records.** One access log line (target `modelgate::proxy`) per relayed
//! request, when its answer has been sent, and per tunnel, when it closes:
//! client, method, destination (no query string: it may hold a secret),
//! status, bytes each way, duration, attempts.

pub mod allow;
mod relay;
mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::config::Config;
use crate::error::ErrorKind;
use crate::upstream::dns::Dns;

pub use allow::AllowList;

/// The default listener, as claude-code-model-gateway's.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// What the proxy runs with: the gateway's limits and timeouts from the
/// config, the retry settings and allow rules (file and flags together).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub allow: AllowList,
    pub max_retries: u32,
    pub retry_delay: Duration,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub max_request_size: u64,
    pub pool_size: usize,
}

impl Settings {
    /// Settings from a config (its `proxy.allow` first, then `extra_allow`).
    pub fn from_config(c: &Config, listen: SocketAddr, extra_allow: &[String]) -> Result<Settings, String> {
        Ok(Settings {
            listen,
            allow: AllowList::new(c.proxy.allow.iter().chain(extra_allow))?,
            max_retries: c.max_retries,
            retry_delay: c.retry_delay.0,
            connect_timeout: c.connect_timeout.0,
            timeout: c.timeout.0,
            head_timeout: c.client_timeouts.head.0,
            body_timeout: c.client_timeouts.body.0,
            max_request_size: c.max_request_size,
            pool_size: c.pool_size,
        })
    }

    /// The wait before retry `n` (1-based): `retry_delay` doubling, at most 30 s.
    fn backoff(&self, n: u32) -> Duration {
        self.retry_delay
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(Duration::from_secs(30))
    }
}

/// The answer body every path produces: a relayed upstream body or the
/// proxy's own (an error, the health answer, a tunnel's empty 200).
type Body = BoxBody<Bytes, BoxError>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An answer the proxy writes itself, as an Anthropic-shaped error object
/// (`error::error_body`, the one writer of that shape).
fn refuse(status: StatusCode, message: &str) -> Response<Body> {
    let kind = match status.as_u16() {
        403 => ErrorKind::Permission,
        408 | 504 => ErrorKind::Timeout,
        413 => ErrorKind::RequestTooLarge,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Api,
    };
    let id = crate::error::new_request_id();
    let mut r = Response::new(full(crate::error::error_body(kind, message, &id)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The forward proxy as a Pingora application: one hyper HTTP/1.1
/// connection per accepted stream.
pub struct ForwardProxy {
    settings: Arc<Settings>,
    relay: relay::Relay,
    dns: Arc<Dns>,
    /// Client connections and tunnels open now; the drain waits for zero.
    open: Arc<AtomicUsize>,
}

/// Holds one unit of [`ForwardProxy::open`] until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::AcqRel);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ForwardProxy {
    pub fn new(settings: Settings) -> ForwardProxy {
        let settings = Arc::new(settings);
        let dns = Arc::new(Dns::new());
        ForwardProxy {
            relay: relay::Relay::new(settings.clone(), dns.clone()),
            settings,
            dns,
            open: Default::default(),
        }
    }

    /// Client connections and tunnels open now.
    pub fn open_count(&self) -> Arc<AtomicUsize> {
        self.open.clone()
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, client: Option<SocketAddr>) -> Response<Body> {
        let client = client.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        if req.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
            // RFC 9110 §4.2.4: user information is not sent on; it would
            // also land in the access log.
            return refuse(
                StatusCode::BAD_REQUEST,
                "the URI carries user information (user@host): not relayed",
            );
        }
        if req.method() == Method::CONNECT {
            return tunnel::open(&self, req, client).await;
        }
        if req.uri().scheme().is_some() {
            return self.relay.forward(req, client).await;
        }
        if req.uri().path() == "/health" && matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut r = Response::new(full(&br#"{"status":"ok"}"#[..]));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return r;
        }
        refuse(
            StatusCode::BAD_REQUEST,
            "this is a forward proxy: send an absolute URI (GET http://host/path) or CONNECT host:port",
        )
    }
}

#[async_trait]
impl ServerApp for ForwardProxy {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let _open = Open::new(&self.open);
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()));
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.handle(req, client).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.head_timeout)
            .max_buf_size(relay::MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut shutdown = shutdown.clone();
        let done = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = shutdown.changed() => None,
        };
        let result = match done {
            Some(r) => r,
            None => {
                // Draining: finish the request in hand, then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            log::debug!(target: "modelgate::proxy", "connection from {}: {e}", client.map(|a| a.to_string()).unwrap_or_default());
        }
        None
    }
}

/// `host:port` of a request target, with `default_port` when it has none.
fn target(uri: &http::Uri, default_port: Option<u16>) -> Option<(String, u16)> {
    let auth = uri.authority()?;
    let port = auth.port_u16().or(default_port)?;
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Resolve `host:port` and check the answer against the allow rules; the
/// addresses returned are the only ones to connect to.
async fn vetted(settings: &Settings, dns: &Dns, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
    let addrs = match tokio::time::timeout(settings.connect_timeout, dns.resolve(host, port)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(Refusal::new(StatusCode::BAD_GATEWAY, e)),
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("resolving `{host}` took longer than connect_timeout"),
            ))
        }
    };
    settings
        .allow
        .check(host, port, &addrs)
        .map_err(|e| Refusal::new(StatusCode::FORBIDDEN, e.to_string()))?;
    if addrs.iter().any(|a| is_self(a, settings.listen)) {
        return Err(Refusal::new(
            StatusCode::LOOP_DETECTED,
            "the destination is this proxy itself".to_string(),
        ));
    }
    Ok(addrs)
}

/// Whether connecting to `a` would reach the proxy's own listener.
fn is_self(a: &SocketAddr, listen: SocketAddr) -> bool {
    a.port() == listen.port() && (a.ip() == listen.ip() || (listen.ip().is_unspecified() && !allow::is_public(a.ip())))
}

/// Connect to the first of `addrs` that answers, each within `timeout`.
async fn connect(addrs: &[SocketAddr], timeout: Duration) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to");
    for a in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = std::io::Error::new(e.kind(), format!("{a}: {e}")),
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{a}: connect timed out")),
        }
    }
    Err(last)
}

/// Why the proxy answered itself instead of relaying.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: String) -> Refusal {
        Refusal { status, message }
    }

    fn response(&self) -> Response<Body> {
        refuse(self.status, &self.message)
    }
}

/// The path of a URI for the access log: never its query, which may carry a secret.
fn loggable(uri: &http::Uri) -> String {
    let mut s = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    );
    if uri.query().is_some() {
        s.push_str("?…");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_default_ports_and_strip_brackets() {
        let u: http::Uri = "http://example.com/x".parse().unwrap();
        assert_eq!(target(&u, Some(80)), Some(("example.com".into(), 80)));
        let u: http::Uri = "example.com:443".parse().unwrap();
        assert_eq!(target(&u, None), Some(("example.com".into(), 443)));
        let u: http::Uri = "[::1]:8443".parse().unwrap();
        assert_eq!(target(&u, None), Some(("::1".into(), 8443)));
        let u: http::Uri = "example.com".parse().unwrap();
        assert_eq!(target(&u, None), None);
    }

    #[test]
    fn the_log_never_shows_a_query() {
        let u: http::Uri = "http://h:8/p/a?key=sk-secret".parse().unwrap();
        assert_eq!(loggable(&u), "http://h:8/p/a?…");
    }

    #[test]
    fn backoff_doubles_and_stops_at_thirty_seconds() {
        let c = crate::config::load::parse_str("{}", &|_| None).unwrap();
        let mut s = Settings::from_config(&c, DEFAULT_LISTEN.parse().unwrap(), &[]).unwrap();
        s.retry_delay = Duration::from_millis(500);
        assert_eq!(s.backoff(1), Duration::from_millis(500));
        assert_eq!(s.backoff(3), Duration::from_secs(2));
        assert_eq!(s.backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn own_listener_is_detected() {
        let listen: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        assert!(is_self(&"127.0.0.1:3000".parse().unwrap(), listen));
        assert!(!is_self(&"127.0.0.1:3001".parse().unwrap(), listen));
        let any: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        assert!(is_self(&"10.0.0.5:3000".parse().unwrap(), any));
        assert!(!is_self(&"1.1.1.1:3000".parse().unwrap(), any));
    }
}
