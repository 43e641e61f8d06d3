//! A finished request's spans, written straight into OTLP protobuf
//! (`opentelemetry.proto.trace.v1`) with prost's wire-format primitives,
//! and the export envelope around a batch of them.
//!
//! Why not the SDK's spans: a span built through `opentelemetry_sdk` is an
//! owned `SpanData` (a `String` per attribute value, a `Vec` of them),
//! queued, cloned once more when the exporter groups a batch by resource,
//! then converted into `opentelemetry-proto`'s structs (another `String`
//! per key and value) and encoded. Here the request's own borrowed names go
//! into one buffer, once: a request's spans are one `Vec<u8>` holding its
//! `ScopeSpans.spans` fields, and a batch is those buffers concatenated
//! inside a `ResourceSpans`/`ScopeSpans` envelope whose lengths are summed,
//! not re-encoded. The tests decode the result with `opentelemetry-proto`.
//!
//! Pure: no I/O, no clock.

use std::time::SystemTime;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{unix_nanos, AttemptRecord, Finished, RequestTrace};

/// `Span.kind`: `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// `Status.code`: `STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;
/// `Span.flags`: the W3C sampled flag, "whether the parent is remote" is
/// known, and the parent is remote.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// An attribute's value (`AnyValue`).
#[derive(Clone, Copy, Debug)]
enum Val<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl Val<'_> {
    /// The encoded `AnyValue` message's length.
    fn len(self) -> usize {
        match self {
            Val::Str(s) => key_len(1) + encoded_len_varint(s.len() as u64) + s.len(),
            Val::Bool(_) => key_len(2) + 1,
            Val::Int(i) => key_len(3) + encoded_len_varint(i as u64),
            Val::Double(_) => key_len(4) + 8,
        }
    }

    fn encode(self, buf: &mut Vec<u8>) {
        match self {
            Val::Str(s) => bytes_field(1, s.as_bytes(), buf),
            Val::Bool(b) => {
                encode_key(2, WireType::Varint, buf);
                encode_varint(u64::from(b), buf);
            }
            Val::Int(i) => {
                encode_key(3, WireType::Varint, buf);
                encode_varint(i as u64, buf);
            }
            Val::Double(d) => {
                encode_key(4, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&d.to_le_bytes());
            }
        }
    }
}

fn bytes_field(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

/// A length-delimited field holding `parts` concatenated (a name made of
/// two pieces, written without joining them first).
fn joined_field(tag: u32, parts: &[&str], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(parts.iter().map(|p| p.len()).sum::<usize>() as u64, buf);
    for p in parts {
        buf.extend_from_slice(p.as_bytes());
    }
}

/// A `KeyValue` message as field `tag` of the message being written.
fn attr(tag: u32, key: &str, value: Val<'_>, buf: &mut Vec<u8>) {
    let value_len = value.len();
    let body = key_len(1)
        + encoded_len_varint(key.len() as u64)
        + key.len()
        + key_len(2)
        + encoded_len_varint(value_len as u64)
        + value_len;
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
    bytes_field(1, key.as_bytes(), buf);
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(value_len as u64, buf);
    value.encode(buf);
}

fn fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// `Span.attributes` is field 9.
fn span_attr(key: &str, value: Val<'_>, buf: &mut Vec<u8>) {
    attr(9, key, value, buf)
}

/// The fields every span has, in field order up to the attributes.
struct Head<'a> {
    trace_id: &'a [u8; 16],
    span_id: &'a [u8; 8],
    parent: Option<&'a [u8; 8]>,
    name: &'a [&'a str],
    kind: u64,
    start: SystemTime,
    end: SystemTime,
}

fn head(h: &Head<'_>, buf: &mut Vec<u8>) {
    bytes_field(1, h.trace_id, buf);
    bytes_field(2, h.span_id, buf);
    if let Some(p) = h.parent {
        bytes_field(4, p, buf);
    }
    joined_field(5, h.name, buf);
    encode_key(6, WireType::Varint, buf);
    encode_varint(h.kind, buf);
    fixed64(7, unix_nanos(h.start), buf);
    fixed64(8, unix_nanos(h.end), buf);
}

/// `Span.status` (15, an error with its message) and `Span.flags` (16),
/// the fields after the attributes.
fn tail(error: Option<&[&str]>, flags: u32, buf: &mut Vec<u8>) {
    if let Some(message) = error {
        let len: usize = message.iter().map(|p| p.len()).sum();
        let body = if len > 0 {
            key_len(2) + encoded_len_varint(len as u64) + len
        } else {
            0
        } + key_len(3)
            + 1;
        encode_key(15, WireType::LengthDelimited, buf);
        encode_varint(body as u64, buf);
        if len > 0 {
            joined_field(2, message, buf);
        }
        encode_key(3, WireType::Varint, buf);
        encode_varint(STATUS_ERROR, buf);
    }
    encode_key(16, WireType::ThirtyTwoBit, buf);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// `gen_ai.system` and the models.
fn common<'a>(f: &Finished<'a>) -> [(&'static str, Option<&'a str>); 3] {
    [
        ("gen_ai.system", f.system),
        ("gen_ai.request.model", f.request_model),
        ("gen_ai.response.model", f.response_model),
    ]
}

/// The request's server span and a client span per attempt, appended to
/// `out` as `ScopeSpans.spans` fields. `scratch` holds one span's body at a
/// time (its length precedes it).
pub(super) fn encode(
    f: &Finished<'_>,
    trace: &RequestTrace,
    attempts: &[AttemptRecord],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    scratch.clear();
    let name = match f.request_model {
        Some(m) => ["chat ", m, ""],
        None => [f.method, " ", f.path],
    };
    head(
        &Head {
            trace_id: &trace.trace_id,
            span_id: &trace.span_id,
            parent: trace.parent.as_ref(),
            name: &name,
            kind: KIND_SERVER,
            start: f.start,
            end: f.end,
        },
        scratch,
    );
    let buf = &mut *scratch;
    span_attr("gen_ai.operation.name", Val::Str("chat"), buf);
    span_attr("http.request.method", Val::Str(f.method), buf);
    span_attr("url.path", Val::Str(f.path), buf);
    span_attr("http.response.status_code", Val::Int(i64::from(f.status)), buf);
    span_attr("modelgate.request_id", Val::Str(f.request_id), buf);
    span_attr("modelgate.attempts", Val::Int(i64::from(f.attempts)), buf);
    span_attr("modelgate.cache_hit", Val::Bool(f.cache_hit), buf);
    span_attr("modelgate.stream", Val::Bool(f.stream), buf);
    let named = common(f).into_iter().chain([
        ("modelgate.key", f.key),
        ("modelgate.team", f.team),
        ("modelgate.provider", f.provider),
        ("modelgate.account", f.account),
    ]);
    for (k, v) in named {
        if let Some(v) = v {
            span_attr(k, Val::Str(v), buf);
        }
    }
    if let Some(c) = f.cost_usd {
        span_attr("modelgate.cost_usd", Val::Double(c), buf);
    }
    if let Some(t) = f.ttft {
        span_attr("gen_ai.server.time_to_first_token", Val::Double(t.as_secs_f64()), buf);
    }
    if let Some(u) = f.usage {
        for (k, n) in [
            ("gen_ai.usage.input_tokens", u.input_tokens),
            ("gen_ai.usage.output_tokens", u.output_tokens),
            ("gen_ai.usage.cache_read.input_tokens", u.cache_read_input_tokens),
            (
                "gen_ai.usage.cache_creation.input_tokens",
                u.cache_creation_input_tokens,
            ),
        ] {
            span_attr(k, Val::Int(i64::try_from(n).unwrap_or(i64::MAX)), buf);
        }
    }
    if let Some(e) = f.error {
        span_attr("error.type", Val::Str(e), buf);
    }
    let code = http::StatusCode::from_u16(f.status).ok();
    let error: Option<[&str; 2]> = match (f.error, &code) {
        (Some(e), _) => Some([e, ""]),
        (None, Some(c)) if f.status >= 500 => Some(["HTTP ", c.as_str()]),
        (None, _) => None,
    };
    let remote = if trace.parent.is_some() { FLAG_IS_REMOTE } else { 0 };
    tail(
        error.as_ref().map(|e| &e[..]),
        FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote,
        buf,
    );
    bytes_field(2, scratch, out);

    for a in attempts {
        scratch.clear();
        let buf = &mut *scratch;
        head(
            &Head {
                trace_id: &trace.trace_id,
                span_id: &a.span_id,
                parent: Some(&trace.span_id),
                name: &["chat ", a.model.as_deref().unwrap_or(&a.provider)],
                kind: KIND_CLIENT,
                start: a.start,
                end: a.end.unwrap_or(f.end),
            },
            buf,
        );
        span_attr("gen_ai.operation.name", Val::Str("chat"), buf);
        span_attr("modelgate.attempt", Val::Int(i64::from(a.n)), buf);
        span_attr("modelgate.provider", Val::Str(&a.provider), buf);
        span_attr("modelgate.account", Val::Str(&a.account), buf);
        span_attr("modelgate.outcome", Val::Str(a.outcome), buf);
        span_attr("server.address", Val::Str(&a.server), buf);
        if let Some(s) = a.status {
            span_attr("http.response.status_code", Val::Int(i64::from(s)), buf);
        }
        if let Some(m) = &a.model {
            span_attr("gen_ai.request.model", Val::Str(m), buf);
        }
        let failed = !matches!(a.outcome, "ok" | "sent") && a.status.is_none_or(|s| s >= 400);
        tail(
            failed.then_some(&[a.outcome][..]),
            FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
            buf,
        );
        bytes_field(2, scratch, out);
    }
}

/// The pieces of an export every batch repeats, encoded once: the
/// `Resource` and `InstrumentationScope` messages' bodies.
#[derive(Debug)]
pub(super) struct Envelope {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Envelope {
    pub(super) fn new(resource: &Resource, scope: &InstrumentationScope) -> Envelope {
        Envelope {
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
        }
    }

    /// An `ExportTraceServiceRequest` holding the requests' spans (each
    /// item as [`encode`] wrote it), in one buffer of the exact size.
    pub(super) fn traces(&self, items: &[Vec<u8>]) -> Vec<u8> {
        fn field_len(len: usize) -> usize {
            key_len(1) + encoded_len_varint(len as u64) + len
        }
        let scope_spans = field_len(self.scope.len()) + items.iter().map(Vec::len).sum::<usize>();
        let resource_spans = field_len(self.resource.len()) + field_len(scope_spans);
        let mut out = Vec::with_capacity(field_len(resource_spans));
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(resource_spans as u64, &mut out);
        bytes_field(1, &self.resource, &mut out);
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(scope_spans as u64, &mut out);
        bytes_field(1, &self.scope, &mut out);
        for item in items {
            out.extend_from_slice(item);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
    };
    use prost::Message;

    use super::*;
    use crate::dialects::Usage;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn nanos(secs: u64) -> u64 {
        (1_700_000_000 + secs) * 1_000_000_000
    }

    fn finished<'a>(trace: &'a RequestTrace) -> Finished<'a> {
        Finished {
            trace: Some(trace),
            start: at(0),
            end: at(3),
            ttft: Some(Duration::from_millis(250)),
            request_id: "req_1",
            method: "POST",
            path: "/v1/messages",
            status: 200,
            system: Some("anthropic"),
            provider: Some("a"),
            account: Some("a#2"),
            request_model: Some("claude-sonnet-4-5"),
            response_model: Some("claude-sonnet-4-5-20250929"),
            key: Some("dev"),
            team: None,
            attempts: 2,
            cache_hit: false,
            stream: true,
            error: None,
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 34,
                cache_read_input_tokens: 0,
                cache_creation_input_tokens: 5,
            }),
            cost_usd: Some(0.25),
        }
    }

    fn attempt(n: u32, span: u8, status: Option<u16>, outcome: &'static str, end: Option<u64>) -> AttemptRecord {
        AttemptRecord {
            span_id: [span; 8],
            n,
            provider: "a".into(),
            account: "a#1".into(),
            server: "api.anthropic.com".into(),
            model: Some("claude-sonnet-4-5".into()),
            start: at(u64::from(n)),
            end: end.map(at),
            status,
            outcome,
        }
    }

    fn decode(envelope: &Envelope, items: &[Vec<u8>]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(&envelope.traces(items)[..]).unwrap()
    }

    #[test]
    fn a_request_decodes_as_the_spans_the_sdk_would_have_sent() {
        let trace = RequestTrace {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent: Some([5; 8]),
            sampled: true,
            keep: true,
            attempts: Default::default(),
        };
        let attempts = [
            attempt(1, 1, Some(529), "status_529", Some(2)),
            attempt(2, 2, None, "connect_error", None),
        ];
        let (mut scratch, mut item) = (Vec::new(), Vec::new());
        encode(&finished(&trace), &trace, &attempts, &mut scratch, &mut item);
        let resource = Resource {
            attributes: vec![kv("service.name", s("modelgate")), kv("service.version", s("1.2.3"))],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "modelgate".into(),
            version: "1.2.3".into(),
            ..Default::default()
        };
        let envelope = Envelope::new(&resource, &scope);
        let got = decode(&envelope, &[item]);
        let root = Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            parent_span_id: vec![5; 8],
            name: "chat claude-sonnet-4-5".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: nanos(0),
            end_time_unix_nano: nanos(3),
            attributes: vec![
                kv("gen_ai.operation.name", s("chat")),
                kv("http.request.method", s("POST")),
                kv("url.path", s("/v1/messages")),
                kv("http.response.status_code", Value::IntValue(200)),
                kv("modelgate.request_id", s("req_1")),
                kv("modelgate.attempts", Value::IntValue(2)),
                kv("modelgate.cache_hit", Value::BoolValue(false)),
                kv("modelgate.stream", Value::BoolValue(true)),
                kv("gen_ai.system", s("anthropic")),
                kv("gen_ai.request.model", s("claude-sonnet-4-5")),
                kv("gen_ai.response.model", s("claude-sonnet-4-5-20250929")),
                kv("modelgate.key", s("dev")),
                kv("modelgate.provider", s("a")),
                kv("modelgate.account", s("a#2")),
                kv("modelgate.cost_usd", Value::DoubleValue(0.25)),
                kv("gen_ai.server.time_to_first_token", Value::DoubleValue(0.25)),
                kv("gen_ai.usage.input_tokens", Value::IntValue(12)),
                kv("gen_ai.usage.output_tokens", Value::IntValue(34)),
                kv("gen_ai.usage.cache_read.input_tokens", Value::IntValue(0)),
                kv("gen_ai.usage.cache_creation.input_tokens", Value::IntValue(5)),
            ],
            flags: 0x301,
            ..Default::default()
        };
        let child = |n: u32, id: u8, status: Option<i64>, outcome: &str, end: u64| Span {
            trace_id: vec![7; 16],
            span_id: vec![id; 8],
            parent_span_id: vec![9; 8],
            name: "chat claude-sonnet-4-5".into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: nanos(u64::from(n)),
            end_time_unix_nano: nanos(end),
            attributes: [
                kv("gen_ai.operation.name", s("chat")),
                kv("modelgate.attempt", Value::IntValue(i64::from(n))),
                kv("modelgate.provider", s("a")),
                kv("modelgate.account", s("a#1")),
                kv("modelgate.outcome", s(outcome)),
                kv("server.address", s("api.anthropic.com")),
            ]
            .into_iter()
            .chain(status.map(|c| kv("http.response.status_code", Value::IntValue(c))))
            .chain([kv("gen_ai.request.model", s("claude-sonnet-4-5"))])
            .collect(),
            status: Some(Status {
                message: outcome.into(),
                code: StatusCode::Error as i32,
            }),
            flags: 0x101,
            ..Default::default()
        };
        let want = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("modelgate")), kv("service.version", s("1.2.3"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "modelgate".into(),
                        version: "1.2.3".into(),
                        ..Default::default()
                    }),
                    spans: vec![
                        root,
                        child(1, 1, Some(529), "status_529", 2),
                        // An attempt that never ended on its own ends with the request.
                        child(2, 2, None, "connect_error", 3),
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(got, want);
    }

    #[test]
    fn errors_names_and_batches() {
        let trace = RequestTrace {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            sampled: true,
            keep: true,
            attempts: Default::default(),
        };
        let envelope = Envelope::new(&Resource::default(), &InstrumentationScope::default());
        let mut items = Vec::new();
        let mut scratch = Vec::new();
        for (status, error, model) in [
            (502, None, None),
            (429, Some("rate_limited"), Some("m")),
            (200, None, Some("m")),
        ] {
            let mut f = finished(&trace);
            f.status = status;
            f.error = error;
            f.request_model = model;
            f.usage = None;
            let mut item = Vec::new();
            encode(
                &f,
                &trace,
                &[attempt(1, 3, Some(200), "ok", Some(1))],
                &mut scratch,
                &mut item,
            );
            items.push(item);
        }
        let got = decode(&envelope, &items);
        let spans = &got.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 6, "two spans a request, one batch");
        let roots: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Server as i32).collect();
        assert_eq!(roots[0].name, "POST /v1/messages", "no model: the method and path");
        assert_eq!(
            roots[0].status,
            Some(Status {
                message: "HTTP 502".into(),
                code: StatusCode::Error as i32
            })
        );
        assert_eq!(roots[0].flags, 0x101, "a root without a remote parent");
        assert!(roots[0].parent_span_id.is_empty());
        assert_eq!(
            roots[1].status.as_ref().map(|s| s.message.as_str()),
            Some("rate_limited")
        );
        assert!(roots[1].attributes.contains(&kv("error.type", s("rate_limited"))));
        assert_eq!(roots[2].status, None, "2xx without an error is unset");
        assert!(spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .all(|s| s.status.is_none()));
        assert!(!roots[2].attributes.iter().any(|a| a.key.starts_with("gen_ai.usage")));
        assert_eq!(decode(&envelope, &[]).resource_spans[0].scope_spans[0].spans, vec![]);
    }
}
