//! The upstream leg: one HTTP exchange with a provider over Pingora's pooled
//! [`Connector`].
//!
//! This module owns connecting (async DNS, TLS, h1/h2, pooling), sending a
//! fully built request, and handing back the response header and a body
//! reader. It knows nothing about dialects, routing or the downstream client:
//! the gateway decides *what* to send and *where*; this decides *how*. Keeping
//! the interface this small is what lets the leg move onto Pingora's native
//! proxy phases later without touching the stages around it.

pub mod dns;

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, ALPN};
use pingora::{Error as PError, ErrorType};

use crate::config::snapshot::UpstreamBase;

/// How long an idle pooled upstream connection is kept. Providers close idle
/// keep-alive connections after roughly a minute; staying below that avoids
/// writing into a socket the far end is closing.
const POOL_IDLE: Duration = Duration::from_secs(50);
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

/// Per-attempt limits, from the request's config snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    /// Time to the first response byte and the longest silence mid-body.
    pub idle: Duration,
}

/// The process-wide upstream client: connection pools and resolver.
pub struct Upstreams {
    connector: Connector,
    dns: dns::Dns,
}

impl Upstreams {
    pub fn new(options: ConnectorOptions) -> Self {
        Upstreams {
            connector: Connector::new(Some(options)),
            dns: dns::Dns::new(),
        }
    }

    async fn peer(&self, base: &UpstreamBase, limits: Limits) -> Result<HttpPeer, UpstreamError> {
        let addr = self
            .dns
            .resolve(&base.host, base.port)
            .await
            .map_err(UpstreamError::Connect)?;
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
        Ok(peer)
    }

    /// Send `header` + `body` and wait for the response header. A pooled
    /// connection that turns out to be dead before answering is retried once
    /// on a fresh one: the request never reached the provider's application.
    pub async fn send(
        &self,
        base: &UpstreamBase,
        header: RequestHeader,
        body: Bytes,
        limits: Limits,
    ) -> Result<Exchange<'_>, UpstreamError> {
        let peer = self.peer(base, limits).await?;
        let mut header = Some(header);
        let mut last = None;
        for _ in 0..2 {
            let (mut session, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| UpstreamError::from_pingora(&e, true))?;
            session.set_read_timeout(Some(limits.idle));
            session.set_write_timeout(Some(limits.idle));
            // Only a reused connection can be retried, so only then keep a copy.
            let head = match header.take() {
                Some(h) if reused => {
                    header = Some(h.clone());
                    h
                }
                Some(h) => h,
                None => break,
            };
            match exchange_head(&mut session, head, body.clone()).await {
                Ok(()) => {
                    return Ok(Exchange {
                        upstreams: self,
                        session: Some(session),
                        peer,
                    })
                }
                Err(mut e) => {
                    e.retry.decide_reuse(reused);
                    let stale = reused && e.retry() && !matches!(e.etype(), ErrorType::ReadTimedout);
                    last = Some(UpstreamError::from_pingora(&e, false));
                    session.shutdown().await;
                    if !stale {
                        break;
                    }
                    log::debug!("pooled upstream connection was stale ({}), reconnecting", describe(&e));
                }
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Io("no attempt made".into())))
    }
}

async fn exchange_head(session: &mut HttpSession, header: RequestHeader, body: Bytes) -> pingora::Result<()> {
    session.write_request_header(Box::new(header)).await?;
    if !body.is_empty() {
        session.write_request_body(body, true).await?;
    }
    session.finish_request_body().await?;
    // Skip informational (1xx) heads; a provider sends at most one or two.
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
    session: Option<HttpSession>,
    peer: HttpPeer,
}

impl Exchange<'_> {
    pub fn header(&self) -> &ResponseHeader {
        // `send` only builds an Exchange after a final header was read.
        self.session
            .as_ref()
            .and_then(|s| s.response_header())
            .expect("exchange holds a response header")
    }

    /// The next body chunk, `None` at the end. A silence longer than the idle
    /// limit is [`UpstreamError::Timeout`].
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        session
            .read_response_body()
            .await
            .map_err(|e| UpstreamError::from_pingora(&e, false))
    }

    /// Return the connection to the pool when the response was read to its
    /// end; otherwise close it.
    pub async fn finish(mut self) {
        if let Some(mut session) = self.session.take() {
            if session.response_done() {
                self.upstreams
                    .connector
                    .release_http_session(session, &self.peer, Some(POOL_IDLE))
                    .await;
            } else {
                session.shutdown().await;
            }
        }
    }

    /// Abandon the response (client went away, or an error): close, never pool.
    pub async fn abort(mut self) {
        if let Some(mut session) = self.session.take() {
            session.shutdown().await;
        }
    }
}
