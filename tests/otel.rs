//! The gateway's own OpenTelemetry export (`telemetry.otlp`), through the
//! binary, to a test collector (`support::otlp`): a request becomes a
//! server span with the GenAI attributes and a client span per upstream
//! attempt, continuing the client's `traceparent` and propagating each
//! attempt's to the upstream; GenAI metrics arrive; and a collector that
//! is down costs requests nothing but a counter.

mod support;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::otlp::{attr, Collector};
use support::*;

const KEY: &str = "mg-otelKey000000000000000000000000000000001";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn config(upstream: &str, collector: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\nretry_delay: 10ms\nmax_retries: 1\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{upstream}\", api_key: sk-ant-test}}\n\
         keys:\n  - {{name: dev, team: core, key_sha256: \"{}\"}}\nteams:\n  core: {{}}\n\
         telemetry:\n  otlp: {{endpoint: \"{collector}\", interval: 200ms, propagate: true}}\n",
        hex::encode(Sha256::digest(KEY.as_bytes()))
    )
}

async fn ask(gw: &Gateway) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap()
}

/// Poll `f` until it is true, for at most `limit`.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test]
async fn a_request_is_a_server_span_with_a_client_span_per_attempt_and_genai_metrics() {
    let collector = Collector::start().await;
    let up = MockUpstream::start().await;
    up.push(Reply::error(529, "overloaded_error", "Overloaded"));
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    let gw = Gateway::start_async(&config(&up.base_url(), &collector.endpoint()), &[]).await;
    // The exporter starts beside the listener: wait until a request is traced.
    let r = ask(&gw).await;
    assert_eq!(r.status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || collector
            .spans()
            .iter()
            .any(|s| s.name == "chat claude-sonnet-4-5" && s.kind == 2))
        .await,
        "no span arrived\n{}",
        gw.logs()
    );
    let spans = collector.spans();
    let root = spans
        .iter()
        .find(|s| s.name == "chat claude-sonnet-4-5" && s.kind == 2)
        .unwrap();
    assert_eq!(
        hex::encode(&root.trace_id),
        CLIENT_TRACE,
        "the client's trace continues"
    );
    assert_eq!(hex::encode(&root.parent_span_id), CLIENT_SPAN);
    for (key, want) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.system", "anthropic"),
        ("gen_ai.request.model", "claude-sonnet-4-5"),
        ("gen_ai.response.model", "claude-sonnet-4-5"),
        ("http.response.status_code", "200"),
        ("modelgate.key", "dev"),
        ("modelgate.team", "core"),
        ("modelgate.provider", "a"),
        ("modelgate.account", "a"),
        ("modelgate.attempts", "2"),
        ("modelgate.cache_hit", "false"),
    ] {
        assert_eq!(attr(&root.attributes, key).as_deref(), Some(want), "{key}: {root:?}");
    }
    assert!(attr(&root.attributes, "gen_ai.usage.input_tokens").is_some());
    assert!(attr(&root.attributes, "modelgate.cost_usd").is_some_and(|c| c.parse::<f64>().is_ok_and(|c| c > 0.0)));
    assert!(attr(&root.attributes, "gen_ai.usage.output_tokens").is_some());
    let mut children: Vec<_> = spans.iter().filter(|s| s.parent_span_id == root.span_id).collect();
    children.sort_by_key(|s| attr(&s.attributes, "modelgate.attempt"));
    assert_eq!(children.len(), 2, "{spans:?}");
    assert_eq!(children[0].kind, 3, "CLIENT");
    assert_eq!(
        attr(&children[0].attributes, "http.response.status_code").as_deref(),
        Some("529")
    );
    assert_eq!(
        attr(&children[1].attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    // Each attempt went upstream with its own span as the parent.
    let sent: Vec<String> = up.requests().iter().filter_map(|r| r.header("traceparent")).collect();
    let want: Vec<String> = children
        .iter()
        .map(|c| format!("00-{CLIENT_TRACE}-{}-01", hex::encode(&c.span_id)))
        .collect();
    assert_eq!(sent, want);
    // No secret in any span.
    let text = format!("{spans:?}");
    assert!(!text.contains(KEY) && !text.contains("sk-ant-test"));

    assert!(
        eventually(Duration::from_secs(10), || {
            let names = collector.metric_names();
            [
                "gen_ai.client.token.usage",
                "gen_ai.client.operation.duration",
                "modelgate.requests",
            ]
            .iter()
            .all(|m| names.iter().any(|n| n == m))
        })
        .await,
        "metrics: {:?}",
        collector.metric_names()
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing_but_a_counter() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    let admin = free_port();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let yaml = format!(
        "{}admin_listen: \"127.0.0.1:{admin}\"\n",
        config(&up.base_url(), &closed)
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    for _ in 0..20 {
        assert_eq!(ask(&gw).await.status(), 200);
    }
    let failed = || async {
        client()
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .any(|l| l.starts_with("modelgate_otlp_exports_total{outcome=\"failed\""))
    };
    let until = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while Instant::now() < until && !seen {
        seen = failed().await;
        if !seen {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(seen, "no failed export counted\n{}", gw.logs());
    assert_eq!(ask(&gw).await.status(), 200);
}

#[tokio::test]
async fn the_same_over_grpc() {
    let collector = support::otlp::GrpcCollector::start().await;
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    let yaml =
        config(&up.base_url(), &collector.endpoint()).replace("interval: 200ms", "protocol: grpc, interval: 200ms");
    let gw = Gateway::start_async(&yaml, &[]).await;
    assert_eq!(ask(&gw).await.status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || {
            let spans = collector.spans();
            spans
                .iter()
                .any(|s| s.kind == 2 && attr(&s.attributes, "gen_ai.system").as_deref() == Some("anthropic"))
                && spans.iter().any(|s| s.kind == 3)
                && collector
                    .metric_names()
                    .iter()
                    .any(|n| n == "gen_ai.client.token.usage")
        })
        .await,
        "spans {:?}, metrics {:?}\n{}",
        collector.spans(),
        collector.metric_names(),
        gw.logs()
    );
}

#[tokio::test]
async fn unsampled_requests_export_metrics_and_propagate_but_no_spans() {
    let collector = Collector::start().await;
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    let yaml =
        config(&up.base_url(), &collector.endpoint()).replace("propagate: true", "propagate: true, sample_ratio: 0");
    let gw = Gateway::start_async(&yaml, &[]).await;
    for _ in 0..3 {
        let r = client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", KEY)
            .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || collector
            .metric_names()
            .iter()
            .any(|n| n == "modelgate.requests"))
        .await
    );
    assert!(collector.spans().is_empty(), "{:?}", collector.spans());
    let sent = up.requests().pop().unwrap().header("traceparent").unwrap_or_default();
    assert!(sent.starts_with("00-") && sent.ends_with("-00"), "{sent}");
}

// Multi-threaded: the collector answers while this thread waits for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_exports_what_it_still_holds() {
    let collector = Collector::start().await;
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    // Spans would wait 5 s and metrics a minute: only the stop sends them.
    let yaml = format!(
        "{}grace_period: 1s\n",
        config(&up.base_url(), &collector.endpoint()).replace("interval: 200ms", "interval: 60s")
    );
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    assert_eq!(ask(&gw).await.status(), 200);
    assert!(gw.signal("TERM"));
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", gw.logs());
    assert!(
        collector
            .spans()
            .iter()
            .any(|s| s.name == "chat claude-sonnet-4-5" && s.kind == 2),
        "{:?}\n{}",
        collector.spans(),
        gw.logs()
    );
    assert!(collector.metric_names().iter().any(|n| n == "modelgate.requests"));
}
