//! The gateway's own OpenTelemetry export (`telemetry.otlp`): a span per
//! request with a child per upstream attempt, and GenAI metrics, over OTLP
//! (HTTP/protobuf or gRPC), named by the OpenTelemetry GenAI semantic
//! conventions (`gen_ai.*`) plus the gateway's own attributes
//! (`modelgate.*`).
//!
//! This module owns the SDK (the `opentelemetry_sdk` tracer and meter
//! providers and the `opentelemetry-otlp` exporters), the per-request trace
//! ids and attempt records ([`RequestTrace`]), and turning a finished
//! request ([`Finished`], plain data) into spans and measurements. It does
//! not know the request path: `gateway/` fills those in.
//!
//! Nothing here blocks a request:
//! - spans are built when the request has ended (the logging phase), with
//!   the times recorded on the way, and handed to the SDK's batch
//!   processor, a bounded queue drained by its own thread (a full queue
//!   drops spans);
//! - metrics aggregate in memory and a periodic reader thread exports them;
//! - the HTTP exporter's blocking client runs on those threads; the gRPC
//!   exporter's channel lives on a one-thread runtime of its own;
//! - an unreachable collector costs a failed export per batch, counted in
//!   `modelgate_otlp_exports_total{outcome="failed"}`.

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::config::schema::{OtlpConfig, OtlpProtocol};

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The export pipeline, opened once the server runs.
pub struct Otel {
    tracer: Option<(SdkTracerProvider, SdkTracer)>,
    meters: Option<(SdkMeterProvider, Instruments)>,
    /// Send `traceparent` to upstreams.
    pub propagate: bool,
    /// The share of requests without a client `traceparent` that are sampled.
    sample_ratio: f64,
    /// The gRPC exporters' runtime, kept alive with them.
    _runtime: Option<tokio::runtime::Runtime>,
}

struct Instruments {
    tokens: Histogram<u64>,
    duration: Histogram<f64>,
    ttft: Histogram<f64>,
    requests: Counter<u64>,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otel")
            .field("traces", &self.tracer.is_some())
            .field("metrics", &self.meters.is_some())
            .finish()
    }
}

/// Counts each export batch's outcome.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    signal: &'static str,
}

fn count(signal: &str, ok: bool) {
    crate::telemetry::METRICS
        .otlp_exports
        .with_label_values(&[signal, if ok { "ok" } else { "failed" }])
        .inc();
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            log::debug!("OTLP {} export failed: {e}", self.signal);
        }
        count(self.signal, result.is_ok());
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

impl<E: opentelemetry_sdk::metrics::exporter::PushMetricExporter>
    opentelemetry_sdk::metrics::exporter::PushMetricExporter for Counted<E>
{
    async fn export(&self, metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        if let Err(e) = &result {
            log::debug!("OTLP {} export failed: {e}", self.signal);
        }
        count(self.signal, result.is_ok());
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.inner.temporality()
    }
}

impl Otel {
    /// Build the exporters and start the SDK's export threads. Blocking
    /// (the HTTP exporter builds a blocking client): call it off the async
    /// workers, after the daemon fork.
    pub fn open(config: &OtlpConfig) -> Result<Otel, String> {
        let resource = Resource::builder()
            .with_service_name("modelgate")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let endpoint = config.endpoint.trim_end_matches('/');
        let runtime = match config.protocol {
            OtlpProtocol::Grpc => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-grpc")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the OTLP runtime: {e}"))?,
            ),
            OtlpProtocol::HttpProtobuf => None,
        };
        let _entered = runtime.as_ref().map(|r| r.enter());
        let headers: std::collections::HashMap<String, String> =
            config.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let metadata = || {
            let mut map = http::HeaderMap::new();
            for (k, v) in &config.headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(v),
                ) {
                    map.insert(k, v);
                }
            }
            opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map)
        };
        let tracer = if config.traces {
            let exporter = match config.protocol {
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{endpoint}/v1/traces"))
                    .with_headers(headers.clone())
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
                OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_metadata(metadata())
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
            }
            .map_err(|e| format!("OTLP trace exporter: {e}"))?;
            // Spans leave within 5 s, or `interval` when that is shorter.
            // Large batches: one export (one HTTP request or gRPC call)
            // carries up to 2,048 spans, so a busy gateway sends a few a
            // second, not dozens.
            let batches = opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_max_queue_size(8192)
                .with_max_export_batch_size(2048)
                .with_scheduled_delay(
                    config
                        .interval
                        .0
                        .clamp(Duration::from_millis(100), Duration::from_secs(5)),
                )
                .build();
            let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(Counted {
                inner: exporter,
                signal: "traces",
            })
            .with_batch_config(batches)
            .build();
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_span_processor(processor)
                .build();
            let tracer = provider.tracer("modelgate");
            Some((provider, tracer))
        } else {
            None
        };
        let meters = if config.metrics {
            let exporter = match config.protocol {
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{endpoint}/v1/metrics"))
                    .with_headers(headers)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
                OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_metadata(metadata())
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
            }
            .map_err(|e| format!("OTLP metric exporter: {e}"))?;
            let reader = PeriodicReader::builder(Counted {
                inner: exporter,
                signal: "metrics",
            })
            .with_interval(config.interval.0.max(Duration::from_millis(100)))
            .build();
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(reader)
                .build();
            let meter = provider.meter("modelgate");
            let instruments = Instruments {
                tokens: meter
                    .u64_histogram("gen_ai.client.token.usage")
                    .with_unit("{token}")
                    .with_description("Tokens used per request, by type (input, output, cache_read, cache_write)")
                    .with_boundaries(vec![
                        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
                    ])
                    .build(),
                duration: meter
                    .f64_histogram("gen_ai.client.operation.duration")
                    .with_unit("s")
                    .with_description("Request duration, through the end of the answer")
                    .build(),
                ttft: meter
                    .f64_histogram("gen_ai.server.time_to_first_token")
                    .with_unit("s")
                    .with_description("Time to the first byte of the answer")
                    .build(),
                requests: meter
                    .u64_counter("modelgate.requests")
                    .with_description("Requests, by provider, status and cache hit")
                    .build(),
            };
            Some((provider, instruments))
        } else {
            None
        };
        drop(_entered);
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(format!(
                "telemetry.otlp.sample_ratio {} is not between 0 and 1",
                config.sample_ratio
            ));
        }
        Ok(Otel {
            tracer,
            meters,
            propagate: config.propagate,
            sample_ratio: config.sample_ratio,
            _runtime: runtime,
        })
    }

    /// Whether requests carry a [`RequestTrace`].
    pub fn traces(&self) -> bool {
        self.tracer.is_some() || self.propagate
    }

    /// A new request's trace: under the client's `traceparent` (and its
    /// sampling decision) when it sent a valid one, else sampled at
    /// `sample_ratio`.
    pub fn begin(&self, traceparent: Option<&[u8]>) -> RequestTrace {
        RequestTrace::new(traceparent, self.sample_ratio)
    }

    /// A finished request: its spans to the batch queue, its measurements
    /// to the aggregators. Cheap and non-blocking.
    pub fn record(&self, f: &Finished<'_>) {
        if let (Some((_, tracer)), Some(trace)) = (&self.tracer, f.trace.filter(|t| t.sampled)) {
            spans(tracer, f, trace);
        }
        if let Some((_, m)) = &self.meters {
            measure(m, f);
        }
    }

    /// Flush what is queued and stop the export threads (at shutdown).
    /// Blocking: call it off the async workers.
    pub fn shutdown(&self) {
        if let Some((p, _)) = &self.tracer {
            if let Err(e) = p.shutdown_with_timeout(EXPORT_TIMEOUT) {
                log::debug!("OTLP traces at shutdown: {e}");
            }
        }
        if let Some((p, _)) = &self.meters {
            if let Err(e) = p.shutdown_with_timeout(EXPORT_TIMEOUT) {
                log::debug!("OTLP metrics at shutdown: {e}");
            }
        }
    }
}

/// One request's trace: its ids (continuing the client's `traceparent`
/// when it sent one) and its upstream attempts as they happen.
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// Whether this request's spans are exported (and `traceparent` says so).
    pub sampled: bool,
    attempts: Mutex<Vec<AttemptRecord>>,
}

/// One upstream attempt, as a child span.
#[derive(Debug)]
pub struct AttemptRecord {
    pub span_id: [u8; 8],
    pub n: u32,
    pub provider: String,
    pub account: String,
    pub server: String,
    pub model: Option<String>,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub status: Option<u16>,
    /// The attempt's outcome label (`ok`, `rate_limited`, `connect_error`, …).
    pub outcome: &'static str,
}

impl RequestTrace {
    /// New ids, under the client's `traceparent` when it is valid (its
    /// sampled flag decides), else sampled at `ratio`.
    pub fn new(traceparent: Option<&[u8]>, ratio: f64) -> RequestTrace {
        let (trace_id, parent, sampled) = match traceparent.and_then(parse_traceparent) {
            Some((t, p, sampled)) => (t, Some(p), sampled),
            None => (random_nonzero(), None, ratio >= 1.0 || rand::random::<f64>() < ratio),
        };
        RequestTrace {
            trace_id,
            span_id: random_nonzero(),
            parent,
            sampled,
            attempts: Mutex::new(Vec::new()),
        }
    }

    /// Record an attempt's start; its span id. An unsampled trace only
    /// names the span (for `traceparent`): nothing is kept for it.
    pub fn begin_attempt(&self, n: u32, provider: &str, account: &str, server: &str, model: Option<&str>) -> [u8; 8] {
        let span_id = random_nonzero();
        if !self.sampled {
            return span_id;
        }
        let mut a = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the attempt loop (max_retries), and again here.
        if a.len() < 64 {
            a.push(AttemptRecord {
                span_id,
                n,
                provider: provider.to_string(),
                account: account.to_string(),
                server: server.to_string(),
                model: model.map(str::to_string),
                start: SystemTime::now(),
                end: None,
                status: None,
                outcome: "sent",
            });
        }
        span_id
    }

    /// Record how an attempt ended (its answer's head, or a failure).
    pub fn end_attempt(&self, span_id: [u8; 8], status: Option<u16>, outcome: &'static str) {
        if !self.sampled {
            return;
        }
        let mut a = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = a.iter_mut().rev().find(|r| r.span_id == span_id) {
            r.end = Some(SystemTime::now());
            r.status = status;
            r.outcome = outcome;
        }
    }

    /// The W3C `traceparent` naming `span` as the parent
    /// (`00-{trace}-{span}-{flags}`, 55 bytes, written in place).
    pub fn traceparent(&self, span: [u8; 8]) -> http::HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        let _ = hex::encode_to_slice(span, &mut out[36..52]);
        out[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        // Hex digits and dashes: always a valid header value.
        http::HeaderValue::from_bytes(&out).unwrap_or_else(|_| http::HeaderValue::from_static("00-0-0-00"))
    }

    /// The attempts recorded, taken (the spans are built once, at the end).
    fn take_attempts(&self) -> Vec<AttemptRecord> {
        std::mem::take(&mut *self.attempts.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut id = [0u8; N];
    // All zeros is invalid; at 2^-64 odds, one byte set is enough.
    rand::thread_rng().fill_bytes(&mut id);
    if id.iter().all(|b| *b == 0) {
        id[N - 1] = 1;
    }
    id
}

/// `00-{32 hex}-{16 hex}-{2 hex}` with non-zero ids (W3C Trace Context):
/// the trace, the parent span and the sampled flag.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || flags.len() != 2 || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let mut t = [0u8; 16];
    let mut p = [0u8; 8];
    let mut f = [0u8; 1];
    hex::decode_to_slice(trace, &mut t).ok()?;
    hex::decode_to_slice(span, &mut p).ok()?;
    hex::decode_to_slice(flags, &mut f).ok()?;
    (t.iter().any(|b| *b != 0) && p.iter().any(|b| *b != 0)).then_some((t, p, f[0] & 1 == 1))
}

/// A finished request as the exporters see it: names, never secrets.
pub struct Finished<'a> {
    pub trace: Option<&'a RequestTrace>,
    /// When the request started and ended (wall clock).
    pub start: SystemTime,
    pub end: SystemTime,
    pub ttft: Option<Duration>,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// `gen_ai.system` of the provider that answered.
    pub system: Option<&'static str>,
    pub provider: Option<&'a str>,
    pub account: Option<&'a str>,
    pub request_model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub key: Option<&'a str>,
    pub team: Option<&'a str>,
    pub attempts: u32,
    pub cache_hit: bool,
    pub stream: bool,
    pub error: Option<&'a str>,
    pub usage: Option<crate::dialects::Usage>,
    pub cost_usd: Option<f64>,
}

fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

fn spans(tracer: &SdkTracer, f: &Finished<'_>, trace: &RequestTrace) {
    let trace_id = TraceId::from_bytes(trace.trace_id);
    let root_id = SpanId::from_bytes(trace.span_id);
    let parent_cx = match trace.parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(p),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let name: Cow<'static, str> = match f.request_model {
        Some(m) => format!("chat {m}").into(),
        None => format!("{} {}", f.method, f.path).into(),
    };
    let mut attrs = vec![
        kv("gen_ai.operation.name", "chat"),
        kv("http.request.method", f.method.to_string()),
        kv("url.path", f.path.to_string()),
        kv("http.response.status_code", i64::from(f.status)),
        kv("modelgate.request_id", f.request_id.to_string()),
        kv("modelgate.attempts", i64::from(f.attempts)),
        kv("modelgate.cache_hit", f.cache_hit),
        kv("modelgate.stream", f.stream),
    ];
    push_common(&mut attrs, f);
    for (k, v) in [("modelgate.key", f.key), ("modelgate.team", f.team)] {
        if let Some(v) = v {
            attrs.push(kv(k, v.to_string()));
        }
    }
    if let Some(p) = f.provider {
        attrs.push(kv("modelgate.provider", p.to_string()));
    }
    if let Some(a) = f.account {
        attrs.push(kv("modelgate.account", a.to_string()));
    }
    if let Some(c) = f.cost_usd {
        attrs.push(kv("modelgate.cost_usd", c));
    }
    if let Some(t) = f.ttft {
        attrs.push(kv("gen_ai.server.time_to_first_token", t.as_secs_f64()));
    }
    if let Some(u) = f.usage {
        attrs.push(kv("gen_ai.usage.input_tokens", u.input_tokens as i64));
        attrs.push(kv("gen_ai.usage.output_tokens", u.output_tokens as i64));
        attrs.push(kv(
            "gen_ai.usage.cache_read.input_tokens",
            u.cache_read_input_tokens as i64,
        ));
        attrs.push(kv(
            "gen_ai.usage.cache_creation.input_tokens",
            u.cache_creation_input_tokens as i64,
        ));
    }
    let status = match f.error {
        Some(e) => {
            attrs.push(kv("error.type", e.to_string()));
            Status::error(e.to_string())
        }
        None if f.status >= 500 => Status::error(format!("HTTP {}", f.status)),
        None => Status::Unset,
    };
    let root = SpanBuilder::from_name(name)
        .with_kind(SpanKind::Server)
        .with_trace_id(trace_id)
        .with_span_id(root_id)
        .with_start_time(f.start)
        .with_attributes(attrs)
        .with_status(status)
        .start_with_context(tracer, &parent_cx);
    let root_cx = Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        root_id,
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ));
    for a in trace.take_attempts() {
        let mut attrs = vec![
            kv("gen_ai.operation.name", "chat"),
            kv("modelgate.attempt", i64::from(a.n)),
            kv("modelgate.provider", a.provider.clone()),
            kv("modelgate.account", a.account.clone()),
            kv("modelgate.outcome", a.outcome),
            kv("server.address", a.server.clone()),
        ];
        if let Some(s) = a.status {
            attrs.push(kv("http.response.status_code", i64::from(s)));
        }
        if let Some(m) = &a.model {
            attrs.push(kv("gen_ai.request.model", m.clone()));
        }
        let failed = !matches!(a.outcome, "ok" | "sent") && a.status.is_none_or(|s| s >= 400);
        let span = SpanBuilder::from_name(format!("chat {}", a.model.as_deref().unwrap_or(&a.provider)))
            .with_kind(SpanKind::Client)
            .with_span_id(SpanId::from_bytes(a.span_id))
            .with_start_time(a.start)
            .with_attributes(attrs)
            .with_status(if failed {
                Status::error(a.outcome)
            } else {
                Status::Unset
            })
            .start_with_context(tracer, &root_cx);
        opentelemetry::trace::Span::end_with_timestamp(&mut { span }, a.end.unwrap_or(f.end));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut { root }, f.end);
}

/// `gen_ai.system`, the models and the provider, on spans and metrics alike.
fn push_common(attrs: &mut Vec<KeyValue>, f: &Finished<'_>) {
    if let Some(s) = f.system {
        attrs.push(kv("gen_ai.system", s));
    }
    if let Some(m) = f.request_model {
        attrs.push(kv("gen_ai.request.model", m.to_string()));
    }
    if let Some(m) = f.response_model {
        attrs.push(kv("gen_ai.response.model", m.to_string()));
    }
}

/// A finished request's measurements: at most six records, on attribute
/// lists built once and edited in place (no clone per record).
fn measure(m: &Instruments, f: &Finished<'_>) {
    let mut attrs = Vec::with_capacity(8);
    attrs.push(kv("gen_ai.operation.name", "chat"));
    push_common(&mut attrs, f);
    if let Some(t) = f.ttft {
        m.ttft.record(t.as_secs_f64(), &attrs);
    }
    if let Some(u) = f.usage {
        // Input and output always; the cache kinds when the answer used the
        // prompt cache (a zero there is not a sample of cache use).
        attrs.push(kv("gen_ai.token.type", "input"));
        for (kind, n, always) in [
            ("input", u.input_tokens, true),
            ("output", u.output_tokens, true),
            ("cache_read", u.cache_read_input_tokens, false),
            ("cache_write", u.cache_creation_input_tokens, false),
        ] {
            if always || n > 0 {
                if let Some(last) = attrs.last_mut() {
                    last.value = kind.into();
                }
                m.tokens.record(n, &attrs);
            }
        }
        attrs.pop();
    }
    if let Some(e) = f.error {
        attrs.push(kv("error.type", e.to_string()));
    }
    let elapsed = f.end.duration_since(f.start).unwrap_or_default();
    m.duration.record(elapsed.as_secs_f64(), &attrs);
    attrs.push(kv("http.response.status_code", i64::from(f.status)));
    attrs.push(kv("modelgate.cache_hit", f.cache_hit));
    if let Some(p) = f.provider {
        attrs.push(kv("modelgate.provider", p.to_string()));
    }
    m.requests.add(1, &attrs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_as_w3c_says() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, sampled) = parse_traceparent(ok).unwrap();
        assert!(sampled);
        assert_eq!(hex::encode(t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(p), "00f067aa0ba902b7");
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
            b"\xff\xfe",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
        let trace = RequestTrace::new(Some(ok), 0.0);
        assert_eq!(trace.parent, Some(p));
        assert!(trace.sampled, "the client's decision wins");
        let span = trace.begin_attempt(1, "a", "a", "h", None);
        let sent = trace.traceparent(span);
        let sent = sent.to_str().unwrap();
        assert_eq!(sent.len(), 55);
        assert_eq!(
            parse_traceparent(sent.as_bytes()).map(|(t, s, _)| (t, s)),
            Some((trace.trace_id, span))
        );
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"));
        let unsampled = RequestTrace::new(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), 1.0);
        assert!(!unsampled.sampled && unsampled.traceparent(span).to_str().unwrap().ends_with("-00"));
        assert!(!RequestTrace::new(None, 0.0).sampled && RequestTrace::new(None, 1.0).sampled);
    }
}
