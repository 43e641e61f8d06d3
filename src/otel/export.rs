//! Getting encoded exports to the collector: the bounded span queue the
//! request path pushes to, and the one export thread that drains it and
//! the metric series on their schedules and sends them over OTLP/HTTP
//! (`reqwest`) or gRPC (`tonic`, with the bytes already encoded).
//!
//! The request path's part is [`SpanQueue::push`]: one uncontended lock and
//! a `Vec` push; it wakes the export thread only when a batch is full, so a
//! busy gateway wakes it a few times a second, not per request. A full
//! queue drops the request's spans (counted). Exports run one at a time,
//! each bounded by [`EXPORT_TIMEOUT`]; a collector that is down costs a
//! failed export per batch, counted in `modelgate_otlp_exports_total`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

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
/// the export thread early).
const MAX_BATCH: usize = 2048;

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
    Traces,
    Metrics,
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
        let endpoint = config.endpoint.trim_end_matches('/');
        let mut headers = http::HeaderMap::new();
        for (k, v) in &config.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("telemetry.otlp.headers: {k:?} is not a header name"))?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|_| format!("telemetry.otlp.headers: the value of {k} is not a header value"))?;
            headers.insert(name, value);
        }
        match config.protocol {
            OtlpProtocol::HttpProtobuf => Ok(Transport::Http {
                client: reqwest::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("OTLP HTTP client: {e}"))?,
                traces: format!("{endpoint}/v1/traces"),
                metrics: format!("{endpoint}/v1/metrics"),
                headers,
            }),
            OtlpProtocol::Grpc => {
                let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                    .map_err(|e| format!("telemetry.otlp.endpoint: {e}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(EXPORT_TIMEOUT);
                if endpoint.starts_with("https://") {
                    ep = ep
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                        .map_err(|e| format!("telemetry.otlp: TLS: {e}"))?;
                }
                Ok(Transport::Grpc {
                    channel: ep.connect_lazy(),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                })
            }
        }
    }

    async fn send(&self, signal: Signal, body: Vec<u8>) -> Result<(), String> {
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
                let r = client
                    .post(url)
                    .headers(headers.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {}", r.status()))
                }
            }
            Transport::Grpc { channel, metadata } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.map_err(|e| e.to_string())?;
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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
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

    /// Export what is queued and end the thread, waiting at most `limit`.
    pub(super) fn stop(&mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            if self.done.recv_timeout(limit).is_err() {
                log::warn!("OTLP: the last export did not finish within {limit:?}");
            }
        }
    }
}

async fn run(p: Pipeline, transport: Transport, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut span_tick = tokio::time::interval(p.span_delay);
    let mut metric_tick = tokio::time::interval(p.metric_interval);
    for t in [&mut span_tick, &mut metric_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = span_tick.tick(), if p.spans.is_some() => export_spans(&p, &transport).await,
            _ = batch_full(&p.spans) => export_spans(&p, &transport).await,
            _ = metric_tick.tick(), if p.series.is_some() => export_metrics(&p, &transport).await,
            _ = &mut stop => break,
        }
    }
    export_spans(&p, &transport).await;
    export_metrics(&p, &transport).await;
}

/// Resolves when the span queue reached a batch (never without traces).
async fn batch_full(spans: &Option<(Arc<SpanQueue>, Envelope)>) {
    match spans {
        Some((q, _)) => q.full.notified().await,
        None => std::future::pending().await,
    }
}

async fn export_spans(p: &Pipeline, transport: &Transport) {
    let Some((q, envelope)) = &p.spans else { return };
    let items = q.take();
    for batch in items.chunks(MAX_BATCH) {
        send(transport, Signal::Traces, envelope.traces(batch)).await;
    }
}

async fn export_metrics(p: &Pipeline, transport: &Transport) {
    let Some(table) = &p.series else { return };
    if let Some(export) = table.export(&p.resource, &p.scope, SystemTime::now()) {
        send(transport, Signal::Metrics, export.encode_to_vec()).await;
    }
}

async fn send(transport: &Transport, signal: Signal, body: Vec<u8>) {
    let result = match tokio::time::timeout(EXPORT_TIMEOUT, transport.send(signal, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
    };
    if let Err(e) = &result {
        log::debug!("OTLP {} export failed: {e}", signal.name());
    }
    crate::telemetry::METRICS
        .otlp_exports
        .with_label_values(&[signal.name(), if result.is_ok() { "ok" } else { "failed" }])
        .inc();
}
