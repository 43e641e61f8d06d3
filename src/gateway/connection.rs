//! What Pingora's HTTP application does not do for a connection: bound the
//! time to a whole request head, and let kept-alive connections finish
//! when the process drains.
//!
//! **The head deadline** (`client_timeouts.head`). Pingora bounds each
//! *read* of a request head (60 s), not the whole head, so a client that
//! trickles a byte every few seconds holds a connection, a task and a file
//! descriptor for as long as it likes (slowloris). Each connection runs
//! under a deadline that is armed when the connection opens, disarmed when
//! a request's head has arrived ([`head_arrived`], from `request_filter`),
//! and armed again when the answer is done ([`answer_done`], from the
//! logging phase) for the next request on the kept-alive connection: the
//! idle time Pingora allows, plus the head limit. A connection whose
//! deadline passes is dropped, which closes it; nothing is written (the
//! head never arrived, so there is no request to answer).
//!
//! **The drain.** When the process stops accepting (SIGTERM, or after
//! handing its sockets to a new process), Pingora's clean-up makes every
//! kept-alive connection close as soon as its current answer ends, at once.
//! A client that already sent its next request on such a connection (the
//! usual case right after a stream ends) meets a closed socket and no
//! answer. So the clean-up is held back until the process has been quiet
//! (nothing in flight) for [`DRAIN_QUIET`]: until then a request arriving
//! on a kept-alive connection is served, with `Connection: close` (the
//! gateway marks every answer of a draining process so), and the connection
//! then closes. Only then does Pingora drop the idle connections, and the
//! process exits (`server::DrainWatch`). Pingora's `grace_period` still
//! bounds the whole drain.
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
/// How long a draining process must have had nothing in flight before its
/// kept-alive connections are closed.
pub const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// How often the drain looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(50);
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

/// The HTTP application, each connection under its head deadline, drained
/// as the module docs say.
pub struct Connections<A> {
    pub inner: Arc<A>,
    pub shared: Arc<Shared>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Connections<A> {
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

    /// Called once the service has stopped accepting: see "The drain".
    async fn cleanup(&self) {
        let in_flight = &self.shared.counters.in_flight;
        let mut quiet_since: Option<Instant> = None;
        loop {
            if in_flight.load(Ordering::Acquire) > 0 {
                quiet_since = None;
            } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= DRAIN_QUIET {
                break;
            }
            fast_sleep(DRAIN_POLL).await;
        }
        self.inner.cleanup().await;
        self.shared.services_draining.fetch_sub(1, Ordering::AcqRel);
    }
}
