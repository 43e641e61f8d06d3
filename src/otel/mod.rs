//! The gateway's own OpenTelemetry export (`telemetry.otlp`): a span per
//! request with a child per upstream attempt, and GenAI metrics, over OTLP
//! (HTTP/protobuf or gRPC), named by the OpenTelemetry GenAI semantic
//! conventions (`gen_ai.*`) plus the gateway's own attributes
//! (`modelgate.*`).
//!
//! This module owns the per-request trace ids and attempt records
//! ([`RequestTrace`]) and turning a finished request ([`Finished`], plain
//! data) into spans (`spans.rs`: written straight into OTLP protobuf) and
//! measurements (`series.rs`: in-memory series), and getting them to the
//! collector (`export.rs`: one export thread). It does not know the request
//! path: `gateway/` fills those in.
//!
//! Nothing here blocks a request, and a request pays little:
//! - a sampled request's spans are encoded once, into one buffer, when the
//!   request has ended, and pushed onto a bounded queue (a full queue drops
//!   them, counted in `modelgate_otlp_spans_dropped_total`);
//! - its measurements are a few additions to its series, found by a hash
//!   of its borrowed names under one lock;
//! - batching, the export envelope and sending happen on the export thread,
//!   which wakes on its schedule or when a batch is full;
//! - an unreachable collector costs a failed export per batch, counted in
//!   `modelgate_otlp_exports_total{outcome="failed"}`.
//!
//! The OpenTelemetry SDK is not used: its per-span and per-record costs
//! (owned attribute values, a clone of every span when a batch is grouped,
//! a hash of every record's attributes) were most of what export cost a
//! request (see the README's "What export costs").

mod export;
mod series;
mod spans;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::config::schema::OtlpConfig;

thread_local! {
    /// A span's body and a request's spans, while they are encoded.
    static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The export pipeline, opened once the server runs.
pub struct Otel {
    spans: Option<Arc<export::SpanQueue>>,
    series: Option<Arc<series::Table>>,
    /// Send `traceparent` to upstreams.
    pub propagate: bool,
    /// The share of requests without a client `traceparent` that are sampled.
    sample_ratio: f64,
    exporter: Mutex<Option<export::Exporter>>,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otel")
            .field("traces", &self.spans.is_some())
            .field("metrics", &self.series.is_some())
            .finish()
    }
}

impl Otel {
    /// Check the config and start the export thread. Blocking (it builds
    /// the thread's runtime): call it off the async workers, after the
    /// daemon fork.
    pub fn open(config: &OtlpConfig) -> Result<Otel, String> {
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(format!(
                "telemetry.otlp.sample_ratio {} is not between 0 and 1",
                config.sample_ratio
            ));
        }
        let spans = config.traces.then(|| Arc::new(export::SpanQueue::default()));
        let series = config
            .metrics
            .then(|| Arc::new(series::Table::new(series::MAX_SERIES, SystemTime::now())));
        let exporter = if spans.is_some() || series.is_some() {
            let resource = Resource {
                attributes: resource_attributes(
                    std::env::var("OTEL_SERVICE_NAME").ok().as_deref(),
                    std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().as_deref(),
                    &instance_id(),
                )
                .into_iter()
                .map(|(k, v)| kv(&k, any_value::Value::StringValue(v)))
                .collect(),
                ..Resource::default()
            };
            let scope = InstrumentationScope {
                name: "modelgate".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..InstrumentationScope::default()
            };
            let pipeline = export::Pipeline {
                spans: spans.clone().map(|q| (q, spans::Envelope::new(&resource, &scope))),
                series: series.clone(),
                resource,
                scope,
                // Spans leave within 5 s, or `interval` when that is shorter.
                span_delay: config
                    .interval
                    .0
                    .clamp(Duration::from_millis(100), Duration::from_secs(5)),
                metric_interval: config.interval.0.max(Duration::from_millis(100)),
            };
            Some(export::Exporter::start(config, pipeline)?)
        } else {
            None
        };
        Ok(Otel {
            spans,
            series,
            propagate: config.propagate,
            sample_ratio: config.sample_ratio,
            exporter: Mutex::new(exporter),
        })
    }

    /// Whether requests carry a [`RequestTrace`].
    pub fn traces(&self) -> bool {
        self.spans.is_some() || self.propagate
    }

    /// A new request's trace: under the client's `traceparent` (and its
    /// sampling decision) when it sent a valid one, else sampled at
    /// `sample_ratio`.
    ///
    /// Without span export (`traces: false`, `propagate: true`) a trace the
    /// gateway starts is unsampled, so upstreams do not record children of
    /// spans no collector will see; a client's decision passes through.
    pub fn begin(&self, traceparent: Option<&[u8]>) -> RequestTrace {
        let export = self.spans.is_some();
        RequestTrace::new(traceparent, if export { self.sample_ratio } else { 0.0 }, export)
    }

    /// A finished request: its spans onto the export queue, its
    /// measurements into their series. Cheap and non-blocking.
    pub fn record(&self, f: &Finished<'_>) {
        if let (Some(q), Some(trace)) = (&self.spans, f.trace.filter(|t| t.sampled)) {
            let attempts = trace.take_attempts();
            // Encoded in this thread's buffers (kept between requests, as
            // large as the largest request's spans), then copied out once
            // at its exact size.
            let item = BUFFERS.with_borrow_mut(|(scratch, out)| {
                out.clear();
                spans::encode(f, trace, &attempts, scratch, out);
                out.as_slice().to_vec()
            });
            q.push(item);
        }
        if let Some(series) = &self.series {
            series.record(f);
        }
    }

    /// Export what is queued and stop the export thread (at shutdown), in
    /// at most [`export::EXPORT_TIMEOUT`]. Blocking: call it off the async
    /// workers.
    pub fn shutdown(&self) {
        if let Some(e) = self.exporter.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            e.stop(export::EXPORT_TIMEOUT);
        }
    }
}

/// The resource every export names: `service.name` (`OTEL_SERVICE_NAME`,
/// else `OTEL_RESOURCE_ATTRIBUTES`' own, else `modelgate`),
/// `service.version`, `service.instance.id` (this process: replicas, and
/// the old and new process of an upgrade, send apart cumulative streams)
/// and the rest of `OTEL_RESOURCE_ATTRIBUTES` (`key=value,…`, values
/// percent-encoded; malformed entries are skipped with a warning).
fn resource_attributes(service_name: Option<&str>, env: Option<&str>, instance: &str) -> Vec<(String, String)> {
    let mut extra: Vec<(String, String)> = Vec::new();
    for entry in env
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let parsed = entry.split_once('=').and_then(|(k, v)| {
            let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8().ok()?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.into_owned()))
        });
        match parsed {
            Some((k, v)) => {
                extra.retain(|(o, _)| *o != k);
                extra.push((k, v));
            }
            None => log::warn!("OTEL_RESOURCE_ATTRIBUTES: {entry:?} is not key=value; skipped"),
        }
    }
    let name = service_name
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| extra.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
        .unwrap_or_else(|| "modelgate".into());
    let own = ["service.name", "service.version", "service.instance.id"];
    extra.retain(|(k, _)| !own.contains(&k.as_str()));
    let values = [name, env!("CARGO_PKG_VERSION").into(), instance.into()];
    own.iter().map(|k| k.to_string()).zip(values).chain(extra).collect()
}

/// A random UUID (version 4) naming this process.
fn instance_id() -> String {
    uuid::Builder::from_random_bytes(random_nonzero())
        .into_uuid()
        .to_string()
}

/// An OTLP attribute.
fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// Nanoseconds since the Unix epoch, as OTLP times are (0 before it).
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One request's trace: its ids (continuing the client's `traceparent`
/// when it sent one) and its upstream attempts as they happen.
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The sampled flag `traceparent` carries.
    pub sampled: bool,
    /// Whether this request's spans are exported (sampled, and span export
    /// on): only then are its attempts recorded.
    keep: bool,
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
    /// sampled flag decides), else sampled at `ratio`; attempts are kept
    /// when sampled and `export`ed.
    pub fn new(traceparent: Option<&[u8]>, ratio: f64, export: bool) -> RequestTrace {
        let (trace_id, parent, sampled) = match traceparent.and_then(parse_traceparent) {
            Some((t, p, sampled)) => (t, Some(p), sampled),
            None => (
                random_nonzero(),
                None,
                ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio),
            ),
        };
        RequestTrace {
            trace_id,
            span_id: random_nonzero(),
            parent,
            sampled,
            keep: sampled && export,
            attempts: Mutex::new(Vec::new()),
        }
    }

    /// Record an attempt's start; its span id. A trace whose spans are not
    /// exported only names the span (for `traceparent`): nothing is kept.
    pub fn begin_attempt(&self, n: u32, provider: &str, account: &str, server: &str, model: Option<&str>) -> [u8; 8] {
        let span_id = random_nonzero();
        if !self.keep {
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
        if !self.keep {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_names_this_process_and_takes_the_environment_s_attributes() {
        let get = |attrs: &[(String, String)], k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        let plain = resource_attributes(None, None, "i-1");
        assert_eq!(
            plain.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["service.name", "service.version", "service.instance.id"]
        );
        assert_eq!(get(&plain, "service.name").as_deref(), Some("modelgate"));
        let env = resource_attributes(
            None,
            Some("deployment.environment=prod, service.name=gw-eu ,team=a%2Cb,broken,=x,service.instance.id=mine"),
            "i-2",
        );
        assert_eq!(get(&env, "service.name").as_deref(), Some("gw-eu"));
        assert_eq!(get(&env, "deployment.environment").as_deref(), Some("prod"));
        assert_eq!(get(&env, "team").as_deref(), Some("a,b"), "percent-decoded");
        assert_eq!(
            get(&env, "service.instance.id").as_deref(),
            Some("i-2"),
            "the process's own id wins"
        );
        assert_eq!(env.iter().filter(|(k, _)| k == "service.name").count(), 1);
        let named = resource_attributes(Some("from-var"), Some("service.name=gw-eu"), "i-3");
        assert_eq!(get(&named, "service.name").as_deref(), Some("from-var"));
        let id = instance_id();
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
        assert_ne!(id, instance_id());
    }

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
        let trace = RequestTrace::new(Some(ok), 0.0, true);
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
        let unsampled = RequestTrace::new(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            1.0,
            true,
        );
        assert!(!unsampled.sampled && unsampled.traceparent(span).to_str().unwrap().ends_with("-00"));
        assert!(!RequestTrace::new(None, 0.0, true).sampled && RequestTrace::new(None, 1.0, true).sampled);
        // Without span export, a client's sampled trace is passed on but its attempts are not kept.
        let passed = RequestTrace::new(Some(ok), 1.0, false);
        assert!(passed.sampled && !passed.keep);
        passed.begin_attempt(1, "a", "a", "h", None);
        assert!(passed.take_attempts().is_empty());
    }
}
