//! Getting encoded exports to the collector: the bounded span queue the
//! request path pushes to, and the one export thread that drains it and
//! the metric series on their schedules and sends them over OTLP/HTTP
//! (`reqwest`) or gRPC (`tonic`, with the bytes already encoded).
//!
//! The request path's part is [`SpanQueue::push`]: a short lock (shared by
//! the workers, held for a `Vec` push) that wakes the export thread only
//! when a batch is full, so a busy gateway wakes it a few times a second,
//! not per request. A full queue drops the request's spans (counted).
//! Exports run one at a time, each bounded by [`EXPORT_TIMEOUT`]; a
//! collector that is down costs a failed export per batch, counted in
//! `modelgate_otlp_exports_total`, and one warning when exports start
//! failing (one line when they recover).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::series::Table;
use super::spans::Envelope;
use crate::config::schema::{OtlpConfig, OtlpProtocol};

/// How long one export may take.
pub(super) const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests whose spans wait for export, at most.
const MAX_QUEUE: usize = 8192;
/// Requests' spans in one export, at most (and the queue length that wakes
/// the export thread early)...
const MAX_BATCH: usize = 2048;
/// ...and its encoded size, at most: under the 4 MiB a gRPC server (the
/// OpenTelemetry Collector's default) accepts in one message, whatever the
/// requests' attempt counts and model names. 2,048 requests of one attempt
/// each (about 1.3 KB) fit.
const MAX_BATCH_BYTES: usize = 3 << 20;

/// Finished requests' encoded spans, waiting for the export thread.
#[derive(Debug, Default)]
pub(super) struct SpanQueue {
    items: Mutex<Vec<Vec<u8>>>,
    full: tokio::sync::Notify,
}

impl SpanQueue {
    pub(super) fn push(&self, item: Vec<u8>) {
        let len = {
            let mut q = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            if q.len() >= MAX_QUEUE {
                drop(q);
                crate::telemetry::METRICS.otlp_spans_dropped.inc();
                return;
            }
            q.push(item);
            q.len()
        };
        if len == MAX_BATCH {
            self.full.notify_one();
        }
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[derive(Clone, Copy, Debug)]
enum Signal {
    Traces = 0,
    Metrics = 1,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    fn grpc_path(self) -> http::uri::PathAndQuery {
        http::uri::PathAndQuery::from_static(match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        })
    }
}

/// How exports reach the collector.
enum Transport {
    Http {
        client: reqwest::Client,
        traces: String,
        metrics: String,
        headers: http::HeaderMap,
    },
    Grpc {
        channel: tonic::transport::Channel,
        metadata: tonic::metadata::MetadataMap,
    },
}

impl Transport {
    /// Must run inside the export runtime (the gRPC channel's workers are
    /// spawned on it).
    fn new(config: &OtlpConfig) -> Result<Transport, String> {
        use crate::error::with_causes;
        let endpoint = config.endpoint.trim_end_matches('/');
        let shown = crate::config::load::redact_url_password(endpoint);
        match endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => {
                return Err(format!(
                    "telemetry.otlp.endpoint {shown:?} is not an http:// or https:// URL"
                ))
            }
        }
        let mut headers = http::HeaderMap::new();
        for (k, v) in &config.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("telemetry.otlp.headers: {k:?} is not a header name"))?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|_| format!("telemetry.otlp.headers: the value of {k} is not a header value"))?;
            headers.insert(name, value);
        }
        match config.protocol {
            OtlpProtocol::HttpProtobuf => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                Ok(Transport::Http {
                    client: reqwest::Client::builder()
                        .timeout(EXPORT_TIMEOUT)
                        .tcp_keepalive(Duration::from_secs(60))
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(|e| format!("OTLP HTTP client: {}", with_causes(&e)))?,
                    traces: format!("{endpoint}/v1/traces"),
                    metrics: format!("{endpoint}/v1/metrics"),
                    headers,
                })
            }
            OtlpProtocol::Grpc => {
                // Keep-alives: a collector that vanished without a reset
                // (a replaced pod, a dropped NAT entry) is noticed and the
                // channel reconnects, instead of every export timing out.
                let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                    .map_err(|e| format!("telemetry.otlp.endpoint {shown:?}: {}", with_causes(&e)))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(EXPORT_TIMEOUT)
                    .tcp_keepalive(Some(Duration::from_secs(60)))
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true);
                if endpoint.starts_with("https://") {
                    // The system's roots and the Mozilla roots built in, as
                    // the HTTP client has.
                    let tls = tonic::transport::ClientTlsConfig::new()
                        .with_native_roots()
                        .with_webpki_roots();
                    ep = ep
                        .tls_config(tls)
                        .map_err(|e| format!("telemetry.otlp: TLS: {}", with_causes(&e)))?;
                }
                Ok(Transport::Grpc {
                    channel: ep.connect_lazy(),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                })
            }
        }
    }

    async fn send(&self, signal: Signal, body: Vec<u8>) -> Result<(), String> {
        use crate::error::with_causes;
        match self {
            Transport::Http {
                client,
                traces,
                metrics,
                headers,
            } => {
                let url = match signal {
                    Signal::Traces => traces,
                    Signal::Metrics => metrics,
                };
                let mut r = client
                    .post(url)
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| with_causes(&e.without_url()))?;
                let status = r.status();
                // Read the (small) answer so the connection is reused; a
                // collector that sends more than 64 KiB loses its connection.
                let mut read = 0;
                while let Ok(Some(chunk)) = r.chunk().await {
                    read += chunk.len();
                    if read > 64 << 10 {
                        break;
                    }
                }
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {status}"))
                }
            }
            Transport::Grpc { channel, metadata } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.map_err(|e| with_causes(&e))?;
                let mut request = tonic::Request::new(Bytes::from(body));
                *request.metadata_mut() = metadata.clone();
                grpc.unary(request, signal.grpc_path(), Encoded)
                    .await
                    .map(drop)
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
        }
    }
}

/// A gRPC codec for a message encoded beforehand; the answer (an
/// `Export*ServiceResponse`, whose partial-success details the gateway has
/// no use for) is read and dropped.
#[derive(Clone, Copy, Debug, Default)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// What the export thread drains, and how it sends.
pub(super) struct Pipeline {
    pub spans: Option<(Arc<SpanQueue>, Envelope)>,
    pub series: Option<Arc<Table>>,
    pub resource: opentelemetry_proto::tonic::resource::v1::Resource,
    pub scope: opentelemetry_proto::tonic::common::v1::InstrumentationScope,
    /// How long spans may wait.
    pub span_delay: Duration,
    pub metric_interval: Duration,
}

/// The running export thread: asked to stop, it exports what is left.
#[derive(Debug)]
pub(super) struct Exporter {
    stop: Option<tokio::sync::oneshot::Sender<Instant>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Exporter {
    /// Start the export thread. Blocking (it builds a runtime): call it off
    /// the async workers.
    pub(super) fn start(config: &OtlpConfig, pipeline: Pipeline) -> Result<Exporter, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP runtime: {e}"))?;
        let transport = {
            let _entered = runtime.enter();
            Transport::new(config)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (finished, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                runtime.block_on(run(pipeline, transport, stopped));
                let _ = finished.send(());
            })
            .map_err(|e| format!("cannot start the OTLP export thread: {e}"))?;
        Ok(Exporter { stop: Some(stop), done })
    }

    /// Export what is queued and end the thread, in about `limit`: an
    /// export already under way finishes (bounded by [`EXPORT_TIMEOUT`]),
    /// then the last spans and metrics go out together, in what is left of
    /// `limit`.
    pub(super) fn stop(&mut self, limit: Duration) {
        let Some(stop) = self.stop.take() else { return };
        let _ = stop.send(Instant::now() + limit);
        match self.done.recv_timeout(limit + Duration::from_secs(1)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                log::warn!("OTLP: the last export did not finish within {limit:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                log::error!("OTLP: the export thread ended without its last export (a bug)")
            }
        }
    }
}

async fn run(p: Pipeline, transport: Transport, mut stop: tokio::sync::oneshot::Receiver<Instant>) {
    let mut span_tick = tokio::time::interval(p.span_delay);
    let mut metric_tick = tokio::time::interval(p.metric_interval);
    for t in [&mut span_tick, &mut metric_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let deadline = loop {
        tokio::select! {
            _ = span_tick.tick(), if p.spans.is_some() => export_spans(&p, &transport, None).await,
            _ = batch_full(&p.spans) => export_spans(&p, &transport, None).await,
            _ = metric_tick.tick(), if p.series.is_some() => export_metrics(&p, &transport, None).await,
            d = &mut stop => break d.ok(),
        }
    };
    let deadline = deadline.unwrap_or_else(|| Instant::now() + EXPORT_TIMEOUT);
    tokio::join!(
        export_spans(&p, &transport, Some(deadline)),
        export_metrics(&p, &transport, Some(deadline))
    );
}

/// Resolves when the span queue reached a batch (never without traces).
async fn batch_full(spans: &Option<(Arc<SpanQueue>, Envelope)>) {
    match spans {
        Some((q, _)) => q.full.notified().await,
        None => std::future::pending().await,
    }
}

/// Everything queued, in exports of at most [`MAX_BATCH`] requests and
/// [`MAX_BATCH_BYTES`] bytes.
async fn export_spans(p: &Pipeline, transport: &Transport, deadline: Option<Instant>) {
    let Some((q, envelope)) = &p.spans else { return };
    let items = q.take();
    let mut rest = &items[..];
    while !rest.is_empty() {
        let (batch, later) = rest.split_at(batch_len(rest, MAX_BATCH, MAX_BATCH_BYTES));
        send(transport, Signal::Traces, envelope.traces(batch), deadline).await;
        rest = later;
    }
}

/// How many of `items` the next export takes: at most `count`, and no more
/// than `bytes` together unless the first alone is larger (it goes alone).
fn batch_len(items: &[Vec<u8>], count: usize, bytes: usize) -> usize {
    let mut n = 0;
    let mut size = 0;
    while n < items.len() && n < count && (n == 0 || size + items[n].len() <= bytes) {
        size += items[n].len();
        n += 1;
    }
    n
}

async fn export_metrics(p: &Pipeline, transport: &Transport, deadline: Option<Instant>) {
    let Some(table) = &p.series else { return };
    if let Some(export) = table.export(&p.resource, &p.scope, SystemTime::now()) {
        send(transport, Signal::Metrics, export.encode_to_vec(), deadline).await;
    }
}

/// Whether each signal's last export failed: a change is logged once.
static FAILING: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

async fn send(transport: &Transport, signal: Signal, body: Vec<u8>, deadline: Option<Instant>) {
    let limit = deadline.map_or(EXPORT_TIMEOUT, |d| {
        d.saturating_duration_since(Instant::now()).min(EXPORT_TIMEOUT)
    });
    let result = match tokio::time::timeout(limit, transport.send(signal, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {limit:?}")),
    };
    let was_failing = FAILING[signal as usize].swap(result.is_err(), Ordering::Relaxed);
    match (&result, was_failing) {
        (Err(e), false) => log::warn!(
            "OTLP {} export failed: {e}; until one succeeds, failures are counted in modelgate_otlp_exports_total and logged at debug level",
            signal.name()
        ),
        (Err(e), true) => log::debug!("OTLP {} export failed: {e}", signal.name()),
        (Ok(()), true) => log::info!("OTLP {} exports succeed again", signal.name()),
        (Ok(()), false) => {}
    }
    crate::telemetry::METRICS
        .otlp_exports
        .with_label_values(&[signal.name(), if result.is_ok() { "ok" } else { "failed" }])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let items = |sizes: &[usize]| sizes.iter().map(|n| vec![0u8; *n]).collect::<Vec<_>>();
        assert_eq!(batch_len(&items(&[10, 10, 10]), 2, 100), 2);
        assert_eq!(batch_len(&items(&[40, 40, 40]), 10, 100), 2);
        assert_eq!(
            batch_len(&items(&[150, 10]), 10, 100),
            1,
            "an oversized item goes alone"
        );
        assert_eq!(batch_len(&items(&[]), 10, 100), 0);
        // Whole exports at the real bounds: 2,048 one-attempt requests fit; 3 KB ones are cut at 3 MiB.
        assert_eq!(batch_len(&items(&[1_300; 3000]), MAX_BATCH, MAX_BATCH_BYTES), MAX_BATCH);
        assert_eq!(
            batch_len(&items(&[3_000; 3000]), MAX_BATCH, MAX_BATCH_BYTES),
            (3 << 20) / 3_000
        );
    }
}
