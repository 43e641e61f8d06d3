//! Prometheus metrics after real traffic (passthrough, streams, failover,
//! translation), checked with `promtool check metrics`.
//!
//! `scripts/test` installs promtool (Debian package `prometheus`) and sets
//! `MODELGATE_REQUIRE_PROMTOOL=1`; a bare `cargo test` without it checks
//! everything but the promtool lint.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_traffic_pass_promtool() {
    let anthropic = MockUpstream::start().await;
    let flaky = MockUpstream::start().await;
    let openai = MockUpstream::start().await;
    flaky.set_default(Reply::error(429, "rate_limit_error", "slow down").with_header("retry-after", "30"));
    anthropic.set_default(Reply::message("claude-opus-4-8", "ok"));
    openai.set_default(Reply::json(
        200,
        openai_completion_json(json!({"role": "assistant", "content": "hi"}), "stop"),
    ));
    let admin = free_port();
    let yaml = format!(
        "listen: \"{{listen}}\"\nadmin_listen: 127.0.0.1:{admin}\ndefault_provider: anthropic\nkeys:\n  - {{name: dev, key_env: MG_TEST_KEY}}\nproviders:\n  anthropic: {{type: anthropic, api_base: \"{}\", api_key: k}}\n  flaky: {{type: anthropic, api_base: \"{}\", api_key: k}}\n  oai: {{type: openai, api_base: \"{}/v1\", api_key: k}}\nroutes:\n  - {{match: 'claude-flaky-*', provider: flaky, fallbacks: [anthropic]}}\n  - {{match: claude-gpt, provider: oai, model: gpt-4o}}\n",
        anthropic.base_url(),
        flaky.base_url(),
        openai.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[("MG_TEST_KEY", "mg-dev")]).await;
    let c = client();
    for model in [
        "claude-opus-4-8",
        "claude-flaky-1",
        "claude-gpt",
        "a-model-nobody-configured",
    ] {
        let r = c
            .post(gw.url("/v1/messages"))
            .header("x-api-key", "mg-dev")
            .body(json!({"model": model, "max_tokens": 5, "messages": []}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        r.bytes().await.unwrap();
    }
    anthropic.push(Reply::sse_message("claude-opus-4-8", &["streamed"]));
    let r = c
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "mg-dev")
        .body(r#"{"model":"claude-opus-4-8","max_tokens":5,"stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    r.text().await.unwrap();

    // On the main listener /metrics needs an admin key; on admin_listen it is open.
    assert_eq!(
        c.get(gw.url("/metrics"))
            .header("x-api-key", "mg-dev")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let text = c
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"modelgate_requests_total{error_type="none",model="default_provider",provider="anthropic",status_class="2xx"} 3"#,
        r#"modelgate_requests_total{error_type="none",model="claude-gpt",provider="oai",status_class="2xx"} 1"#,
        r#"modelgate_upstream_attempts_total{outcome="status_429",provider="flaky"} 1"#,
        r#"modelgate_upstream_attempts_total{outcome="ok",provider="anthropic"}"#,
        r#"modelgate_tokens_total{kind="cache_read",provider="oai"} 1024"#,
        r#"modelgate_circuit_state{account="flaky",provider="flaky"} 3"#,
        "modelgate_time_to_first_token_seconds_bucket",
        r#"modelgate_stream_duration_seconds_count{provider="anthropic"} 1"#,
        "modelgate_build_info{version=",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(
        !text.contains("a-model-nobody-configured"),
        "free-form model ids never become labels"
    );
    assert!(
        !text.contains("mg-dev") && !text.contains("dev\""),
        "no per-key labels unless asked"
    );

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .output_with_input(text.as_bytes())
    {
        Some(out) => assert!(
            out.status.success(),
            "promtool:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        None => assert!(
            std::env::var("MODELGATE_REQUIRE_PROMTOOL").is_err(),
            "promtool is required but missing"
        ),
    }
}

trait OutputWithInput {
    fn output_with_input(&mut self, input: &[u8]) -> Option<std::process::Output>;
}

impl OutputWithInput for Command {
    /// Run with `input` on stdin; `None` when the program is not installed.
    fn output_with_input(&mut self, input: &[u8]) -> Option<std::process::Output> {
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
        child.stdin.take()?.write_all(input).ok()?;
        child.wait_with_output().ok()
    }
}
