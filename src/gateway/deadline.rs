//! The request-head deadline (`client_timeouts.head`): the one client
//! limit Pingora does not keep.
//!
//! Pingora bounds each *read* of a request head (60 s), not the whole head,
//! so a client that trickles a byte every few seconds holds a connection, a
//! task and a file descriptor for as long as it likes (slowloris). This
//! wraps the HTTP application: each connection runs under a deadline that
//! is armed when the connection opens, disarmed when a request's head has
//! arrived ([`head_arrived`], from `request_filter`), and armed again when
//! the answer is done ([`answer_done`], from the logging phase) for the next
//! request on the kept-alive connection: the idle time Pingora allows, plus
//! the head limit. A connection whose deadline passes is dropped, which
//! closes it; nothing is written (the head never arrived, so there is no
//! request to answer).
//!
//! Body and write limits live where the body is read (`body.rs`) and on the
//! session (`request_filter`). Downstream connections are plaintext
//! HTTP/1.1 (no TLS or h2c listener), so one request at a time runs in the
//! connection's task, which is what the task-local relies on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::prelude::fast_timeout::fast_sleep;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use super::Shared;

/// How long Pingora keeps an idle HTTP/1.1 connection open between
/// requests (its default `set_keepalive(Some(60))`).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const DISARMED: u64 = u64::MAX;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn ms_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_millis() as u64
}

tokio::task_local! {
    static CONNECTION: Arc<Deadline>;
}

/// One connection's deadline, in milliseconds since [`EPOCH`].
struct Deadline {
    at: AtomicU64,
    rearmed: tokio::sync::Notify,
}

impl Deadline {
    fn arm(&self, at: Instant) {
        self.at.store(ms_since_epoch(at), Ordering::Relaxed);
        self.rearmed.notify_one();
    }

    /// Resolves once the deadline has passed while armed.
    async fn passed(&self) {
        loop {
            let at = self.at.load(Ordering::Relaxed);
            if at == DISARMED {
                self.rearmed.notified().await;
                continue;
            }
            let now = ms_since_epoch(Instant::now());
            if now >= at {
                return;
            }
            fast_sleep(Duration::from_millis(at - now)).await;
        }
    }
}

/// A request's head has arrived: its connection is no longer on the head clock.
pub fn head_arrived() {
    let _ = CONNECTION.try_with(|d| d.at.store(DISARMED, Ordering::Relaxed));
}

/// A request is answered: the connection may idle, then must deliver the
/// next head within `head`.
pub fn answer_done(head: Duration) {
    let _ = CONNECTION.try_with(|d| d.arm(Instant::now() + KEEPALIVE_IDLE + head));
}

/// The HTTP application, each connection under its head deadline.
pub struct HeadDeadlines<A> {
    pub inner: Arc<A>,
    pub shared: Arc<Shared>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadDeadlines<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let head = self.shared.config.snapshot().config.client_timeouts.head.0;
        let deadline = Arc::new(Deadline {
            at: AtomicU64::new(ms_since_epoch(Instant::now() + head)),
            rearmed: tokio::sync::Notify::new(),
        });
        let serve = CONNECTION.scope(deadline.clone(), self.inner.process_new(stream, shutdown));
        tokio::select! {
            biased;
            reused = serve => reused,
            () = deadline.passed() => {
                log::debug!("closing a connection that did not send a request head within {head:?}");
                crate::telemetry::METRICS.client_timeouts.with_label_values(&["head"]).inc();
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
