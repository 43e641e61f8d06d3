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

/// A test collector over OTLP/gRPC (HTTP/2, prior knowledge): the trace
/// and metric services' `Export` calls, each body's gRPC frame decoded.
/// Answers an empty `Export*ServiceResponse` with `grpc-status: 0`.
pub struct GrpcCollector {
    addr: std::net::SocketAddr,
    /// `(method path, message bytes)` of every call.
    calls: std::sync::Arc<std::sync::Mutex<Vec<(String, bytes::Bytes)>>>,
    _shutdown: tokio::sync::watch::Sender<()>,
}

impl GrpcCollector {
    pub async fn start() -> GrpcCollector {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls: std::sync::Arc<std::sync::Mutex<Vec<(String, bytes::Bytes)>>> = Default::default();
        let (tx, mut rx) = tokio::sync::watch::channel(());
        let seen = calls.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = rx.changed() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            // One gRPC frame: flag, big-endian length, message.
                            if body.len() >= 5 {
                                let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
                                if body.len() >= 5 + len {
                                    seen.lock().unwrap().push((path, body.slice(5..5 + len)));
                                }
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                                Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(hyper::body::Frame::trailers(trailers)),
                            ];
                            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        GrpcCollector {
            addr,
            calls,
            _shutdown: tx,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            .filter_map(|(_, b)| ExportTraceServiceRequest::decode(&b[..]).ok())
            .flat_map(|e| e.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    pub fn metric_names(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
            .filter_map(|(_, b)| ExportMetricsServiceRequest::decode(&b[..]).ok())
            .flat_map(|e| e.resource_metrics)
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .map(|m| m.name)
            .collect()
    }
}
