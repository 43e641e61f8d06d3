//! Stamping a signed-in client's own OpenTelemetry export (OTLP/HTTP,
//! protobuf or JSON) with the identity the gateway verified, before it is
//! forwarded to the organisation's collector.
//!
//! Claude Code labels its telemetry with `user.id`, `user.email` and
//! `user.groups` read, unverified, from its token; whatever the client
//! says under those keys, on a resource, a scope, a span, an event, a log
//! record or a data point, is dropped, and every resource gets what the
//! gateway verified (the protocol's advice: overwrite, never trust), with
//! `modelgate.team` and `identity.source` (`gateway-oidc` for a signed-in
//! developer, `gateway-key` for a gateway key). Everything else in the
//! export is kept as sent. Pure functions over bytes.

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{json, Value};

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Logs,
    Traces,
}

impl Signal {
    pub fn path(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
            Signal::Traces => "traces",
        }
    }

    /// The request's top-level list of resources, in the JSON encoding.
    fn json_list(self) -> &'static str {
        match self {
            Signal::Metrics => "resourceMetrics",
            Signal::Logs => "resourceLogs",
            Signal::Traces => "resourceSpans",
        }
    }
}

/// Who the export is from, as the gateway verified it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub user_id: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub team: Option<String>,
    /// How the caller was verified: `gateway-oidc` or `gateway-key`.
    pub source: &'static str,
}

impl Stamp {
    /// The attributes set on every resource, by key.
    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("user.id", self.user_id.clone()),
            ("identity.source", self.source.to_string()),
        ];
        if let Some(e) = &self.email {
            out.push(("user.email", e.clone()));
        }
        if !self.groups.is_empty() {
            out.push(("user.groups", self.groups.join(",")));
        }
        if let Some(t) = &self.team {
            out.push(("modelgate.team", t.clone()));
        }
        out
    }
}

/// Keys a client may not set itself: these are the gateway's to say.
const OWNED: [&str; 5] = [
    "user.id",
    "user.email",
    "user.groups",
    "modelgate.team",
    "identity.source",
];

/// How the export is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    pub fn of(content_type: &str) -> Option<Encoding> {
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/x-protobuf") || mime.eq_ignore_ascii_case("application/protobuf") {
            Some(Encoding::Protobuf)
        } else if mime.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

/// `body` with every resource stamped, in the same encoding.
pub fn stamp(signal: Signal, encoding: Encoding, body: &[u8], who: &Stamp) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Json => stamp_json(signal, body, who),
        Encoding::Protobuf => stamp_protobuf(signal, body, who),
    }
}

fn stamp_json(signal: Signal, body: &[u8], who: &Stamp) -> Result<Vec<u8>, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| format!("not OTLP JSON: {e}"))?;
    let list = v
        .get_mut(signal.json_list())
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("not an OTLP {} export: no `{}`", signal.path(), signal.json_list()))?;
    for entry in list.iter_mut() {
        strip_owned(entry);
    }
    for entry in list {
        let Some(entry) = entry.as_object_mut() else {
            return Err("a resource entry is not an object".into());
        };
        let resource = entry.entry("resource").or_insert_with(|| json!({}));
        let Some(resource) = resource.as_object_mut() else {
            return Err("a `resource` is not an object".into());
        };
        let attributes = resource.entry("attributes").or_insert_with(|| json!([]));
        let Some(attributes) = attributes.as_array_mut() else {
            return Err("`attributes` is not a list".into());
        };
        attributes.retain(|a| !a.get("key").and_then(Value::as_str).is_some_and(|k| OWNED.contains(&k)));
        for (k, value) in who.attributes() {
            attributes.push(json!({"key": k, "value": {"stringValue": value}}));
        }
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

/// Drop the gateway's keys from every `attributes` list under `v`.
fn strip_owned(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "attributes" {
                    if let Value::Array(attrs) = child {
                        attrs.retain(|a| !a.get("key").and_then(Value::as_str).is_some_and(|k| OWNED.contains(&k)));
                    }
                }
                strip_owned(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_owned),
        _ => {}
    }
}

fn strip_kv(attrs: &mut Vec<KeyValue>) {
    attrs.retain(|a| !OWNED.contains(&a.key.as_str()));
}

fn stamp_resource(resource: &mut Option<Resource>, who: &Stamp) {
    let r = resource.get_or_insert_with(Resource::default);
    r.attributes.retain(|a| !OWNED.contains(&a.key.as_str()));
    for (k, value) in who.attributes() {
        r.attributes.push(KeyValue {
            key: k.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }),
        });
    }
}

fn stamp_protobuf(signal: Signal, body: &[u8], who: &Stamp) -> Result<Vec<u8>, String> {
    let bad = |e: prost::DecodeError| format!("not an OTLP {} export: {e}", signal.path());
    Ok(match signal {
        Signal::Traces => {
            let mut m = ExportTraceServiceRequest::decode(body).map_err(bad)?;
            for r in &mut m.resource_spans {
                stamp_resource(&mut r.resource, who);
                for s in &mut r.scope_spans {
                    if let Some(scope) = &mut s.scope {
                        strip_kv(&mut scope.attributes);
                    }
                    for span in &mut s.spans {
                        strip_kv(&mut span.attributes);
                        span.events.iter_mut().for_each(|e| strip_kv(&mut e.attributes));
                        span.links.iter_mut().for_each(|l| strip_kv(&mut l.attributes));
                    }
                }
            }
            m.encode_to_vec()
        }
        Signal::Metrics => {
            use opentelemetry_proto::tonic::metrics::v1::metric::Data;
            let mut m = ExportMetricsServiceRequest::decode(body).map_err(bad)?;
            for r in &mut m.resource_metrics {
                stamp_resource(&mut r.resource, who);
                for s in &mut r.scope_metrics {
                    if let Some(scope) = &mut s.scope {
                        strip_kv(&mut scope.attributes);
                    }
                    for metric in &mut s.metrics {
                        match &mut metric.data {
                            Some(Data::Gauge(g)) => g.data_points.iter_mut().for_each(|p| strip_kv(&mut p.attributes)),
                            Some(Data::Sum(x)) => x.data_points.iter_mut().for_each(|p| strip_kv(&mut p.attributes)),
                            Some(Data::Histogram(h)) => {
                                h.data_points.iter_mut().for_each(|p| strip_kv(&mut p.attributes))
                            }
                            Some(Data::ExponentialHistogram(h)) => {
                                h.data_points.iter_mut().for_each(|p| strip_kv(&mut p.attributes))
                            }
                            Some(Data::Summary(x)) => {
                                x.data_points.iter_mut().for_each(|p| strip_kv(&mut p.attributes))
                            }
                            None => {}
                        }
                    }
                }
            }
            m.encode_to_vec()
        }
        Signal::Logs => {
            let mut m = ExportLogsServiceRequest::decode(body).map_err(bad)?;
            for r in &mut m.resource_logs {
                stamp_resource(&mut r.resource, who);
                for s in &mut r.scope_logs {
                    if let Some(scope) = &mut s.scope {
                        strip_kv(&mut scope.attributes);
                    }
                    s.log_records.iter_mut().for_each(|l| strip_kv(&mut l.attributes));
                }
            }
            m.encode_to_vec()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;

    fn who() -> Stamp {
        Stamp {
            user_id: "u-1".into(),
            email: Some("ada@corp.example".into()),
            groups: vec!["eng".into(), "data".into()],
            team: Some("platform".into()),
            source: "gateway-oidc",
        }
    }

    fn attr(attrs: &[Value], key: &str) -> Vec<String> {
        attrs
            .iter()
            .filter(|a| a["key"] == key)
            .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn json_overwrites_what_the_client_claims_and_keeps_the_rest() {
        let body = json!({"resourceLogs": [
            {"resource": {"attributes": [
                {"key": "user.email", "value": {"stringValue": "mallory@evil.example"}},
                {"key": "service.name", "value": {"stringValue": "claude-code"}}]},
             "scopeLogs": [{"logRecords": [{"body": {"stringValue": "hi"},
                 "attributes": [{"key": "user.email", "value": {"stringValue": "mallory@evil.example"}},
                                {"key": "event.name", "value": {"stringValue": "api_request"}}]}]}]},
            {"scopeLogs": []}]});
        let out = stamp(
            Signal::Logs,
            Encoding::Json,
            &serde_json::to_vec(&body).unwrap(),
            &who(),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let first = v["resourceLogs"][0]["resource"]["attributes"].as_array().unwrap();
        assert_eq!(attr(first, "user.email"), ["ada@corp.example"]);
        assert_eq!(attr(first, "service.name"), ["claude-code"]);
        assert_eq!(attr(first, "user.groups"), ["eng,data"]);
        assert_eq!(attr(first, "modelgate.team"), ["platform"]);
        assert_eq!(
            v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"]["stringValue"],
            "hi"
        );
        let second = v["resourceLogs"][1]["resource"]["attributes"].as_array().unwrap();
        assert_eq!(attr(second, "user.id"), ["u-1"]);
        assert!(stamp(Signal::Traces, Encoding::Json, &out, &who()).is_err());
        assert!(stamp(Signal::Logs, Encoding::Json, b"{", &who()).is_err());
    }

    #[test]
    fn protobuf_round_trips_with_the_identity() {
        let mut resource = Resource::default();
        resource.attributes.push(KeyValue {
            key: "user.id".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("forged".into())),
            }),
        });
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource),
                ..Default::default()
            }],
        };
        let out = stamp(Signal::Metrics, Encoding::Protobuf, &req.encode_to_vec(), &who()).unwrap();
        let back = ExportMetricsServiceRequest::decode(out.as_slice()).unwrap();
        let attrs = &back.resource_metrics[0].resource.as_ref().unwrap().attributes;
        let ids: Vec<_> = attrs.iter().filter(|a| a.key == "user.id").collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(
            ids[0].value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("u-1".into()))
        );
        assert!(stamp(Signal::Metrics, Encoding::Protobuf, b"\xff\xff", &who()).is_err());
        assert_eq!(Encoding::of("application/json; charset=utf-8"), Some(Encoding::Json));
        assert_eq!(Encoding::of("text/plain"), None);
    }
}
