//! The upstream leg: one HTTP exchange with a provider over Pingora's pooled
//! [`Connector`].
//!
//! This module owns connecting (async DNS, TLS, h1/h2, pooling), sending a
//! fully built request, and handing back the response header and a body
//! reader. It knows nothing about dialects, routing or the downstream client:
//! the gateway decides *what* to send and *where*; this decides *how*. Keeping
//! the interface this small is what lets the leg move onto Pingora's native
//! proxy phases later without touching the stages around it.

pub mod balance;
pub mod base;
pub mod dns;
pub mod entra;
pub mod google_auth;
pub mod health;
pub mod sigv4;

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as Http1Session};
use pingora::upstreams::peer::Peer;
use pingora::upstreams::peer::{HttpPeer, ALPN};
use pingora::RetryType;
use pingora::{Error as PError, ErrorType};
use tokio::io::AsyncWriteExt;

pub use base::UpstreamBase;

/// Where an account's OAuth bearer tokens come from: a Google service
/// account (Vertex, Claude on Google Cloud) or a Microsoft Entra ID
/// application (Microsoft Foundry). Each source caches its token and
/// refreshes it before it expires; a request waits only when there is none.
#[derive(Debug, Clone)]
pub enum Bearer {
    Google(std::sync::Arc<google_auth::TokenSource>),
    Entra(std::sync::Arc<entra::TokenSource>),
}

impl Bearer {
    /// Whose tokens these are, as errors name them.
    pub fn kind(&self) -> &'static str {
        match self {
            Bearer::Google(_) => "Google",
            Bearer::Entra(_) => "Entra ID",
        }
    }

    /// A valid token. The error names the account and the endpoint, never
    /// a secret.
    pub async fn token(&self) -> Result<String, String> {
        match self {
            Bearer::Google(source) => source.token().await.map_err(|e| e.to_string()),
            Bearer::Entra(source) => source.token().await.map_err(|e| e.to_string()),
        }
    }
}

/// A credential endpoint's URL (`field` names the setting): `https`, or
/// plain `http` to a loopback host only, so a grant never crosses a
/// network in clear.
pub(crate) fn https_or_loopback(field: &str, url: &str) -> Result<(), String> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|e| format!("`{field}` `{url}` is not a URL: {e}"))?;
    let host = parsed.host().ok_or_else(|| format!("`{field}` `{url}` has no host"))?;
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "`{field}` `{url}` must use https (plain http only to a loopback address)"
        )),
        _ => Err(format!("`{field}` `{url}` must be an https URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The runtime token fetches (Google, Entra) run on, started on first use
/// (so after the daemon fork): a token endpoint's pooled connection is then
/// driven by one thread, not by whichever Pingora worker happened to
/// refresh first, and a fetch goes on to fill the cache when the request
/// that started it goes away.
pub(crate) fn token_runtime() -> Result<&'static tokio::runtime::Handle, String> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Handle, String>> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("token-fetch")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let handle = runtime.handle().clone();
            // Lives as long as the process; dropping a runtime from inside
            // an async context would panic at shutdown.
            std::mem::forget(runtime);
            Ok(handle)
        })
        .as_ref()
        .map_err(String::clone)
}

/// How long an idle pooled upstream connection is kept. Providers close idle
/// keep-alive connections after roughly a minute; staying below that avoids
/// writing into a socket the far end is closing.
const POOL_IDLE: Duration = Duration::from_secs(50);
/// Bodies up to this size are copied behind the request head so both leave
/// in one write.
const COALESCE_BODY: usize = 16 * 1024;
/// HTTP/2 streams multiplexed on one upstream connection (Pingora's default is 1).
const MAX_H2_STREAMS: usize = 100;

/// Why an exchange failed. The variant decides the client-facing error and,
/// once failover lands, whether another candidate may be tried.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(String),
}

impl UpstreamError {
    fn from_pingora(e: &PError, connecting: bool) -> Self {
        match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamError::Timeout,
            _ if connecting => UpstreamError::Connect(describe(e)),
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError => UpstreamError::Connect(describe(e)),
            _ => UpstreamError::Io(describe(e)),
        }
    }
}

/// Pingora errors render with their cause chain; keep the short form.
fn describe(e: &PError) -> String {
    let mut s = e.etype().as_str().to_string();
    if let Some(ctx) = e.context.as_ref() {
        s.push_str(": ");
        s.push_str(&ctx.to_string());
    }
    s
}

/// A complete upstream answer held in memory: a failed attempt's, kept in
/// case it turns out to be the last one and must reach the client.
pub struct Buffered {
    pub head: ResponseHeader,
    pub body: Bytes,
}

/// Per-attempt limits, from the request's config snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    /// Time to the first response byte and the longest silence mid-body.
    pub idle: Duration,
}

/// The process-wide upstream client: connection pools and resolver.
///
/// TLS upstreams go through Pingora's HTTP [`Connector`] (ALPN h2 with h1
/// fallback). Plaintext HTTP/1.1 upstreams (Ollama, sidecars, tests) take a
/// pooled stream from the [`TransportConnector`] directly, so the request
/// head and a small body leave in one write: Pingora's h1 client flushes the
/// head on its own, which costs a packet and a wake-up per request.
pub struct Upstreams {
    connector: Connector,
    plain: TransportConnector,
    dns: dns::Dns,
}

/// Which pool a session goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Http,
    Plain,
}

impl Upstreams {
    pub fn new(options: ConnectorOptions) -> Self {
        Upstreams {
            connector: Connector::new(Some(options.clone())),
            plain: TransportConnector::new(Some(options)),
            dns: dns::Dns::new(),
        }
    }

    /// The upstream's addresses, resolution bounded by the connect timeout.
    async fn addresses(&self, base: &UpstreamBase, limits: Limits) -> Result<Vec<std::net::SocketAddr>, UpstreamError> {
        tokio::time::timeout(limits.connect, self.dns.resolve(&base.host, base.port))
            .await
            .map_err(|_| UpstreamError::Connect(format!("DNS lookup of `{}` timed out", base.host)))?
            .map_err(UpstreamError::Connect)
    }

    fn peer(&self, addr: std::net::SocketAddr, base: &UpstreamBase, limits: Limits) -> HttpPeer {
        let sni = if base.tls { base.host.clone() } else { String::new() };
        let mut peer = HttpPeer::new(addr, base.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(limits.connect);
        o.total_connection_timeout = Some(limits.connect);
        o.read_timeout = Some(limits.idle);
        o.write_timeout = Some(limits.idle);
        o.idle_timeout = Some(POOL_IDLE);
        if base.tls {
            o.alpn = ALPN::H2H1;
            o.max_h2_streams = MAX_H2_STREAMS;
        }
        peer
    }

    /// Open (and drop) a connection to `base`, TLS handshake included: the
    /// `tcp` health check.
    pub async fn probe_connect(&self, base: &UpstreamBase, limits: Limits) -> Result<(), String> {
        let mut last = String::from("no address");
        for addr in self.addresses(base, limits).await.map_err(|e| e.to_string())? {
            match self.plain.new_stream(&self.peer(addr, base, limits)).await {
                Ok(_) => return Ok(()),
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }

    /// Send `header` + `body` and wait for the response header. A pooled
    /// connection that turns out to be dead before answering is retried once
    /// on a fresh one: the request never reached the provider's application.
    ///
    /// A name with several addresses (IPv6 and IPv4, say) is tried address
    /// by address until one accepts the connection.
    pub async fn send(
        &self,
        base: &UpstreamBase,
        header: RequestHeader,
        body: Bytes,
        limits: Limits,
    ) -> Result<Exchange<'_>, UpstreamError> {
        let addrs = self.addresses(base, limits).await?;
        let mut header = Some(header);
        let mut refused = None;
        for (i, addr) in addrs.iter().enumerate() {
            let last = i + 1 == addrs.len();
            let head = match header.take() {
                Some(h) if !last => {
                    header = Some(h.clone());
                    h
                }
                Some(h) => h,
                None => break,
            };
            match self
                .send_to(self.peer(*addr, base, limits), base, head, body.clone(), limits)
                .await
            {
                Err(UpstreamError::Connect(e)) if !last => {
                    log::debug!("{addr} ({}): {e}; trying the next address", base.host);
                    refused = Some(e);
                }
                other => return other,
            }
        }
        Err(UpstreamError::Connect(
            refused.unwrap_or_else(|| format!("no address for `{}`", base.host)),
        ))
    }

    async fn send_to(
        &self,
        peer: HttpPeer,
        base: &UpstreamBase,
        header: RequestHeader,
        body: Bytes,
        limits: Limits,
    ) -> Result<Exchange<'_>, UpstreamError> {
        // A HEAD answer has a length but no body; Pingora's h1 client must
        // know the method to read it, so HEAD keeps to the Connector.
        let pool = if base.tls || header.method == http::Method::HEAD {
            Pool::Http
        } else {
            Pool::Plain
        };
        let mut header = Some(header);
        let mut last = None;
        for _ in 0..2 {
            // Connecting is the largest state of this future by far
            // (Pingora's connectors keep the TLS handshake's): boxed, it
            // costs its memory only while a connection is being made, and
            // the future of an attempt on a pooled plaintext connection,
            // which only looks the pool up, stays small.
            let (mut stream_or_session, reused) = match pool {
                Pool::Http => Box::pin(self.connector.get_http_session(&peer))
                    .await
                    .map(|(s, r)| (Opened::Session(Box::new(s)), r)),
                Pool::Plain => match self.plain.reused_stream(&peer).await {
                    Some(s) => Ok((Opened::Stream(s), true)),
                    None => Box::pin(self.plain.new_stream(&peer))
                        .await
                        .map(|s| (Opened::Stream(s), false)),
                },
            }
            .map_err(|e| UpstreamError::from_pingora(&e, true))?;
            let sent = match &mut stream_or_session {
                Opened::Session(session) => {
                    // Pingora's session takes the header; only a reused
                    // connection can be retried, so only then keep a copy.
                    let head = match header.take() {
                        Some(h) if reused => {
                            header = Some(h.clone());
                            h
                        }
                        Some(h) => h,
                        None => break,
                    };
                    session.set_write_timeout(Some(limits.idle));
                    write_request(session, head, body.clone()).await
                }
                Opened::Stream(stream) => {
                    let Some(head) = header.as_ref() else { break };
                    write_request_at_once(stream, head, &body, limits.idle).await
                }
            };
            let mut session = match stream_or_session {
                Opened::Session(s) => s,
                Opened::Stream(stream) => Box::new(HttpSession::H1(Http1Session::new_with_options(stream, &peer))),
            };
            session.set_read_timeout(Some(limits.idle));
            session.set_write_timeout(Some(limits.idle));
            let result = match sent {
                Ok(()) => read_final_head(&mut session).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    return Ok(Exchange {
                        upstreams: self,
                        session: Some(session),
                        peer: Box::new(peer),
                        pool,
                        pending: None,
                    })
                }
                Err(e) => {
                    if !self.failed_attempt(&mut session, e, reused, &mut last).await {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Io("no attempt made".into())))
    }

    /// Close a failed attempt's session and say whether another attempt on
    /// a fresh connection is safe: only when a *pooled* connection turned
    /// out dead, since then the request never reached the provider.
    async fn failed_attempt(
        &self,
        session: &mut HttpSession,
        mut e: Box<PError>,
        reused: bool,
        last: &mut Option<UpstreamError>,
    ) -> bool {
        e.retry.decide_reuse(reused);
        let stale = reused && e.retry() && !matches!(e.etype(), ErrorType::ReadTimedout);
        *last = Some(UpstreamError::from_pingora(&e, false));
        session.shutdown().await;
        if stale {
            log::debug!("pooled upstream connection was stale ({}), reconnecting", describe(&e));
        }
        stale
    }
}

/// A fresh attempt: an HTTP session from Pingora's connector, or a raw
/// pooled stream the request is written to before it becomes a session.
enum Opened {
    Session(Box<HttpSession>),
    Stream(pingora::protocols::Stream),
}

async fn write_request(session: &mut HttpSession, mut header: RequestHeader, body: Bytes) -> pingora::Result<()> {
    if matches!(session, HttpSession::H2(_)) {
        as_h2_request(&mut header)?;
    }
    session.write_request_header(Box::new(header)).await?;
    if !body.is_empty() {
        session.write_request_body(body, true).await?;
    }
    session.finish_request_body().await
}

/// HTTP/2 carries the authority in `:authority`. Pingora's h2 client copies
/// `Host` there but leaves the header too, and servers such as nginx reject
/// the pair as a duplicate host: move it instead.
fn as_h2_request(header: &mut RequestHeader) -> pingora::Result<()> {
    if header.uri.authority().is_none() {
        if let Some(host) = header.headers.get(http::header::HOST) {
            let path = header.uri.path_and_query().map_or("/", |p| p.as_str());
            let uri = http::Uri::builder()
                .scheme("https")
                .authority(host.as_bytes())
                .path_and_query(path)
                .build()
                .map_err(|e| PError::explain(ErrorType::InvalidHTTPHeader, format!("bad authority for h2: {e}")))?;
            header.set_uri(uri);
        }
    }
    header.remove_header(&http::header::HOST);
    Ok(())
}

/// Write head and body to a plaintext h1 stream and flush once. The body is
/// framed by the head's `Content-Length`, which the caller always sets.
async fn write_request_at_once(
    stream: &mut pingora::protocols::Stream,
    header: &RequestHeader,
    body: &Bytes,
    idle: Duration,
) -> pingora::Result<()> {
    let mut wire = http_req_header_to_wire(header)
        .ok_or_else(|| PError::explain(ErrorType::InvalidHTTPHeader, "request target has forbidden bytes"))?;
    // Small bodies ride in the head's buffer: one write, one packet. A large
    // body is not worth the copy; it goes out in its own writes.
    let separate_body = body.len() > COALESCE_BODY;
    if !separate_body {
        wire.extend_from_slice(body);
    }
    let write = async {
        stream.write_all(&wire).await?;
        if separate_body {
            stream.write_all(body).await?;
        }
        stream.flush().await
    };
    let result = tokio::time::timeout(idle, write).await;
    let mut e = match result {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(io)) => PError::because(ErrorType::WriteError, "writing the upstream request", io),
        Err(_) => PError::explain(ErrorType::WriteTimedout, "writing the upstream request"),
    };
    // Like Pingora's own client: a write that fails on a pooled connection may be retried.
    e.retry = RetryType::ReusedOnly;
    Err(e)
}

/// Read the final response head, skipping informational (1xx) ones.
async fn read_final_head(session: &mut HttpSession) -> pingora::Result<()> {
    for _ in 0..4 {
        session.read_response_header().await?;
        match session.response_header() {
            Some(h) if h.status.is_informational() => continue,
            Some(_) => return Ok(()),
            None => break,
        }
    }
    Err(PError::explain(
        ErrorType::InvalidHTTPHeader,
        "upstream sent no final response header",
    ))
}

/// An upstream response in progress. Dropping it without [`Exchange::finish`]
/// closes the connection rather than pooling a half-read one.
pub struct Exchange<'a> {
    upstreams: &'a Upstreams,
    // Boxed, both: the relay passes the exchange down by value through
    // several async functions, and each keeps a copy's worth of room in its
    // future for the stream's whole life (~1.1 KB per level inline).
    session: Option<Box<HttpSession>>,
    peer: Box<HttpPeer>,
    pool: Pool,
    /// A body chunk read ahead by [`Exchange::peek`], returned first by `next_chunk`.
    pending: Option<Bytes>,
}

impl Exchange<'_> {
    pub fn header(&self) -> &ResponseHeader {
        // `send` only builds an Exchange after a final header was read; were
        // that ever not so, a 502 head makes the attempt loop move on
        // instead of the worker panicking.
        static MISSING: std::sync::LazyLock<ResponseHeader> = std::sync::LazyLock::new(|| {
            let (mut parts, ()) = http::Response::new(()).into_parts();
            parts.status = http::StatusCode::BAD_GATEWAY;
            ResponseHeader::from(parts)
        });
        self.session
            .as_ref()
            .and_then(|s| s.response_header())
            .unwrap_or(&MISSING)
    }

    /// The next body chunk, `None` at the end. A silence longer than the idle
    /// limit is [`UpstreamError::Timeout`].
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        if let Some(chunk) = self.pending.take() {
            return Ok(Some(chunk));
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        session
            .read_response_body()
            .await
            .map_err(|e| UpstreamError::from_pingora(&e, false))
    }

    /// The rest of the body, at most `cap` bytes (more is an error).
    pub async fn read_to_end(&mut self, cap: usize) -> Result<Bytes, UpstreamError> {
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            if buf.len() + chunk.len() > cap {
                return Err(UpstreamError::Io(format!("response body exceeds {cap} bytes")));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// The whole answer, held in memory (at most `cap` bytes of body; a body
    /// that breaks or is larger is kept as empty), and the connection given
    /// back.
    pub async fn buffer(mut self, cap: usize) -> Buffered {
        let head = self.header().clone();
        let body = self.read_to_end(cap).await.unwrap_or_default();
        self.finish().await;
        Buffered { head, body }
    }

    /// The upstream's body has been read to its end (the chunk just
    /// returned, if any, was the last), with no chunk held back by `peek`.
    pub fn body_done(&mut self) -> bool {
        self.pending.is_none() && self.session.as_mut().is_some_and(|s| s.response_done())
    }

    /// Read the first body chunk ahead, so a response that dies before its
    /// first byte can still be retried elsewhere. `Ok(false)`: the body is
    /// empty. The chunk is not lost: `next_chunk` returns it first.
    pub async fn peek(&mut self) -> Result<bool, UpstreamError> {
        if self.pending.is_some() {
            return Ok(true);
        }
        loop {
            match self.next_chunk().await? {
                Some(chunk) if chunk.is_empty() => continue,
                Some(chunk) => {
                    self.pending = Some(chunk);
                    return Ok(true);
                }
                None => return Ok(false),
            }
        }
    }

    /// Return the connection to the pool when the response was read to its
    /// end; otherwise close it.
    ///
    /// Boxed, like sending (`gateway::attempt`): every relay awaits this
    /// at its end, and inline its ~7 KB (Pingora's shutdown and pool
    /// release) would be part of each open stream's memory for the
    /// stream's whole life.
    pub async fn finish(self) {
        Box::pin(self.finish_inline()).await
    }

    async fn finish_inline(mut self) {
        if let Some(mut session) = self.session.take() {
            if !session.response_done() {
                session.shutdown().await;
                return;
            }
            match (self.pool, *session) {
                (Pool::Plain, HttpSession::H1(mut h1)) => {
                    h1.respect_keepalive();
                    if let Some(stream) = h1.reuse().await {
                        self.upstreams
                            .plain
                            .release_stream(stream, self.peer.reuse_hash(), Some(POOL_IDLE));
                    }
                }
                (_, session) => {
                    self.upstreams
                        .connector
                        .release_http_session(session, &*self.peer, Some(POOL_IDLE))
                        .await
                }
            }
        }
    }

    /// Abandon the response (client went away, or an error): close, never
    /// pool. Boxed for the reason [`Exchange::finish`] is.
    pub async fn abort(self) {
        Box::pin(self.abort_inline()).await
    }

    async fn abort_inline(mut self) {
        if let Some(mut session) = self.session.take() {
            session.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_requests_carry_the_authority_once() {
        let mut req = RequestHeader::build("POST", b"/v1/messages?beta=true", None).unwrap();
        req.insert_header(http::header::HOST, "api.anthropic.com").unwrap();
        req.insert_header("x-api-key", "k").unwrap();
        as_h2_request(&mut req).unwrap();
        assert_eq!(req.uri.to_string(), "https://api.anthropic.com/v1/messages?beta=true");
        assert!(
            req.headers.get(http::header::HOST).is_none(),
            "no duplicate of :authority"
        );
        assert_eq!(req.headers.get("x-api-key").unwrap(), "k");
    }
}
