//! A test OpenTelemetry collector: an OTLP/HTTP receiver on a loopback
//! port ([`MockUpstream`]) whose exports are decoded with
//! `opentelemetry-proto`.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::mock::{MockUpstream, Reply};

pub struct Collector {
    pub mock: MockUpstream,
}

impl Collector {
    pub async fn start() -> Collector {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::json(200, "").with_header("content-type", "application/x-protobuf"));
        Collector { mock }
    }

    pub fn endpoint(&self) -> String {
        self.mock.base_url()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.mock
            .requests()
            .iter()
            .filter(|r| r.path() == "/v1/traces")
            .filter_map(|r| ExportTraceServiceRequest::decode(&r.body[..]).ok())
            .flat_map(|e| e.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    /// The names of every metric received so far.
    pub fn metric_names(&self) -> Vec<String> {
        self.mock
            .requests()
            .iter()
            .filter(|r| r.path() == "/v1/metrics")
            .filter_map(|r| ExportMetricsServiceRequest::decode(&r.body[..]).ok())
            .flat_map(|e| e.resource_metrics)
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .map(|m| m.name)
            .collect()
    }
}

/// An attribute's value as text (strings as they are, numbers and
/// booleans printed).
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}
