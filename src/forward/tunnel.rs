//! `CONNECT host:port`: a TCP tunnel, bytes copied both ways untouched.
//!
//! The destination is resolved and checked (`super::vetted`) and connected
//! (with the retries a connect error allows: nothing has been sent) before
//! the client is told `200`; a refusal or failure is an error answer on the
//! still-plain connection. After the `200` the connection leaves hyper
//! (with any bytes the client sent early) and the two sockets are joined.
//! The tunnel closes when both sides have finished (each side's end of
//! stream is passed on as a half-close), when either fails, or after
//! `timeout` with no byte either way. While it is open it counts as open
//! for the drain.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{connect, full, target, vetted, Body, ForwardProxy, Open, Refusal};

pub(super) async fn open(proxy: &Arc<ForwardProxy>, mut req: Request<Incoming>, client: String) -> Response<Body> {
    let started = Instant::now();
    let shown = req.uri().to_string();
    let log_refusal = |status: StatusCode, attempts: u32| {
        log::info!(
            target: "modelgate::proxy",
            "{client} CONNECT {shown} {} sent=0 received=0 {}ms attempts={attempts}",
            status.as_u16(),
            started.elapsed().as_millis()
        );
    };
    let Some((host, port)) = target(req.uri(), None) else {
        log_refusal(StatusCode::BAD_REQUEST, 0);
        return super::refuse(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let settings = &proxy.settings;
    let addrs = match vetted(settings, &proxy.dns, &host, port).await {
        Ok(a) => a,
        Err(r) => {
            log_refusal(r.status, 0);
            return r.response();
        }
    };
    let mut attempts = 0;
    let upstream = loop {
        attempts += 1;
        match connect(&addrs, settings.connect_timeout).await {
            Ok(s) => break s,
            Err(e) if attempts > settings.max_retries => {
                let r = Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    format!("{host}:{port} could not be reached: {e}"),
                );
                log_refusal(r.status, attempts);
                return r.response();
            }
            Err(e) => {
                log::debug!(target: "modelgate::proxy", "CONNECT {host}:{port}: attempt {attempts} failed ({e}); retrying");
                tokio::time::sleep(settings.backoff(attempts)).await;
            }
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let open = Open::new(&proxy.open);
    let idle = settings.timeout;
    tokio::spawn(async move {
        let _open = open;
        let (sent, received, end) = match upgrade.await {
            Ok(upgraded) => join(TokioIo::new(upgraded), upstream, idle).await,
            Err(e) => (0, 0, format!("upgrade failed: {e}")),
        };
        log::info!(
            target: "modelgate::proxy",
            "{client} CONNECT {shown} 200 sent={sent} received={received} {}ms attempts={attempts} {end}",
            started.elapsed().as_millis()
        );
    });
    Response::new(full(Vec::new()))
}

/// Copy both ways until both sides finish, one fails, or `idle` passes with
/// no byte either way. Returns the bytes sent (client to destination),
/// received, and how it ended.
async fn join<C, U>(client: C, upstream: U, idle: Duration) -> (u64, u64, String)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Arc::new(Clock::new());
    let mut client = Watched {
        inner: client,
        clock: clock.clone(),
        read: 0,
    };
    let mut upstream = Watched {
        inner: upstream,
        clock: clock.clone(),
        read: 0,
    };
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok(_) => "closed".to_string(),
            Err(e) => format!("ended: {e}"),
        },
        () = clock.silent_for(idle) => format!("idle for {idle:?}, closed"),
    };
    (client.read, upstream.read, end)
}

/// When a tunnel last moved a byte, in milliseconds since it opened.
struct Clock {
    opened: Instant,
    last: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            opened: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn silent_for(&self, idle: Duration) {
        let idle_ms = idle.as_millis() as u64;
        loop {
            let due = self.last.load(Ordering::Relaxed).saturating_add(idle_ms);
            let now = self.now_ms();
            if now >= due {
                return;
            }
            tokio::time::sleep(Duration::from_millis(due - now)).await;
        }
    }
}

/// One side of a tunnel: counts what is read from it and tells the clock.
struct Watched<T> {
    inner: T,
    clock: Arc<Clock>,
    read: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.clock.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_and_half_closes_pass_on() {
        let (mut a, a_end) = tokio::io::duplex(64);
        let (b_end, mut b) = tokio::io::duplex(64);
        let joined = tokio::spawn(join(a_end, b_end, Duration::from_secs(5)));
        a.write_all(b"hello").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        b.write_all(b"world!").await.unwrap();
        b.shutdown().await.unwrap();
        let mut back = Vec::new();
        a.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let (sent, received, end) = joined.await.unwrap();
        assert_eq!((sent, received, end.as_str()), (5, 6, "closed"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_closes_after_the_idle_time() {
        let (_a, a_end) = tokio::io::duplex(64);
        let (b_end, _b) = tokio::io::duplex(64);
        let (_, _, end) = join(a_end, b_end, Duration::from_secs(300)).await;
        assert!(end.starts_with("idle for 300s"), "{end}");
    }
}
