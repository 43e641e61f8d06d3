//! The foundation's promises, through the real binary against a mock
//! Anthropic upstream: byte-exact passthrough, header policy, streaming
//! without buffering, Anthropic-shaped errors, and resilience to clients
//! and upstreams that misbehave.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn config(upstream: &MockUpstream, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ntimeout: 5s\nconnect_timeout: 2s\ndefault_provider: up\nproviders:\n  up:\n    type: anthropic\n    api_base: {}\n    api_key_env_var: MG_TEST_PROVIDER_KEY\n    models: [claude-opus-4-8]\n{extra}",
        upstream.base_url()
    )
}

const PROVIDER_KEY: (&str, &str) = ("MG_TEST_PROVIDER_KEY", "sk-ant-provider-secret");

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    assert!(
        resp.headers().contains_key("request-id"),
        "every response carries request-id"
    );
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["type"], "error", "{body}");
    assert!(
        body["request_id"].as_str().is_some_and(|r| r.starts_with("req_")),
        "{body}"
    );
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn fixture_is_forwarded_byte_exact_with_header_policy() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, ""), &[PROVIDER_KEY]).await;
    let body = fixture("claude_code_request.json");
    assert!(body.len() >= 100 * 1024);
    let resp = client()
        .post(gw.url("/v1/messages?beta=true"))
        .header("authorization", "Bearer client-oauth-token")
        .header("x-api-key", "client-api-key")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14,context-1m-2025-08-07",
        )
        .header("anthropic-dangerous-direct-browser-access", "true")
        .header("x-claude-code-session-id", "5d1f1c3e-1f5e-4c1e-9f61-2d7b1b8c1a10")
        .header("x-app", "cli")
        .header("user-agent", "claude-cli/2.1.197 (external, cli)")
        .header("x-stainless-lang", "js")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("x-some-future-header", "kept")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["request-id"], "req_mock_message");
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["type"], "message");

    let got = &up.wait_requests(1, WAIT).await[0];
    assert_eq!(got.uri, "/v1/messages?beta=true");
    assert!(got.body == body, "body must reach the upstream byte for byte");
    assert_eq!(got.header("x-api-key").as_deref(), Some("sk-ant-provider-secret"));
    assert_eq!(got.header_all("x-api-key").len(), 1);
    assert_eq!(
        got.header("authorization"),
        None,
        "client credential is dropped when a provider key is set"
    );
    assert_eq!(got.header("accept-encoding").as_deref(), Some("identity"));
    assert_eq!(got.header("host"), Some(up.addr().to_string()));
    assert_eq!(got.header("content-length"), Some(body.len().to_string()));
    for (name, value) in [
        ("anthropic-version", "2023-06-01"),
        (
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14,context-1m-2025-08-07",
        ),
        ("anthropic-dangerous-direct-browser-access", "true"),
        ("x-claude-code-session-id", "5d1f1c3e-1f5e-4c1e-9f61-2d7b1b8c1a10"),
        ("x-app", "cli"),
        ("user-agent", "claude-cli/2.1.197 (external, cli)"),
        ("x-stainless-lang", "js"),
        ("x-some-future-header", "kept"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(got.header(name).as_deref(), Some(value), "{name} goes through verbatim");
    }
    let logs = gw.logs();
    assert!(
        !logs.contains("sk-ant-provider-secret") && !logs.contains("client-oauth-token"),
        "no secrets in logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rename_changes_only_the_model_bytes() {
    let up = MockUpstream::start().await;
    let yaml = config(
        &up,
        "routes:\n  - {match: 'claude-opus-*', provider: up, model: claude-sonnet-5}\n",
    );
    let gw = Gateway::start_async(&yaml, &[PROVIDER_KEY]).await;
    let body = fixture("claude_code_request.json");
    let resp = client()
        .post(gw.url("/v1/messages"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = &up.wait_requests(1, WAIT).await[0];
    let want = String::from_utf8(body.to_vec()).unwrap().replacen(
        r#""model":"claude-opus-4-8""#,
        r#""model":"claude-sonnet-5""#,
        1,
    );
    assert_eq!(got.body_str(), want, "only the model string changes");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_sse_event_arrives_before_the_upstream_finishes() {
    let up = MockUpstream::start().await;
    // Everything after message_start waits until the client has seen message_start.
    let (reply, gate) = gated_sse_message("claude-opus-4-8", &["Hel", "lo"]);
    up.push(reply.with_header("request-id", "req_upstream_sse"));
    let gw = Gateway::start_async(&config(&up, ""), &[PROVIDER_KEY]).await;
    let resp = client()
        .post(gw.url("/v1/messages"))
        .body(
            r#"{"model":"claude-opus-4-8","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.headers()["request-id"], "req_upstream_sse");
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\n\n") {
        let chunk = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("first event in time");
        seen.extend_from_slice(&chunk.expect("stream open").unwrap());
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("event: message_start"));
    assert!(
        !gate.is_open(),
        "the client saw message_start while the upstream was still holding the rest"
    );
    gate.open();
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.next()).await.expect("rest in time") {
        seen.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(seen).unwrap();
    let upstream_text = sse_text(&anthropic_sse_chunks("claude-opus-4-8", &["Hel", "lo"]));
    assert_eq!(text, upstream_text, "the stream is relayed byte for byte");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_keys_auth_and_model_allowlist() {
    let up = MockUpstream::start().await;
    let alice = hex_sha256("mg-alice-key");
    let bob = hex_sha256("mg-bob-key");
    let yaml = config(
        &up,
        &format!(
            "keys:\n  - {{name: alice, team: platform, key_sha256: {alice}, models: ['claude-opus-*']}}\n  - {{name: bob, key_sha256: {bob}, enabled: false}}\n"
        ),
    );
    let gw = Gateway::start_async(&yaml, &[PROVIDER_KEY]).await;
    let c = client();
    let msg = |model: &str| format!(r#"{{"model":"{model}","max_tokens":5,"messages":[]}}"#);

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u16, &'a str);
    let cases: [Case; 4] = [
        (&[], "claude-opus-4-8", 401, "authentication_error"),
        (
            &[("x-api-key", "wrong")],
            "claude-opus-4-8",
            401,
            "authentication_error",
        ),
        (
            &[("x-api-key", "mg-bob-key")],
            "claude-opus-4-8",
            403,
            "permission_error",
        ),
        (
            &[("authorization", "Bearer mg-alice-key")],
            "claude-haiku-4-5",
            403,
            "permission_error",
        ),
    ];
    for (headers, model, want_status, want_type) in cases {
        let mut req = c.post(gw.url("/v1/messages")).body(msg(model));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let (status, body) = error_of(req.send().await.unwrap()).await;
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (want_status, Some(want_type)),
            "{headers:?} {model}"
        );
    }

    for (header, value) in [("x-api-key", "mg-alice-key"), ("authorization", "Bearer mg-alice-key")] {
        let r = c
            .post(gw.url("/v1/messages"))
            .header(header, value)
            .body(msg("claude-opus-4-8"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{header} is accepted");
    }
    let got = up.wait_requests(2, WAIT).await;
    assert_eq!(got.len(), 2, "rejected requests never reach the upstream");
    for g in &got {
        assert_eq!(g.header("x-api-key").as_deref(), Some("sk-ant-provider-secret"));
        assert_eq!(g.header("authorization"), None, "the gateway key never goes upstream");
    }
    assert!(gw.logs().contains("key=alice"), "access log names the key");
    assert!(!gw.logs().contains("mg-alice-key"), "never the secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_auth_forwards_the_client_credential() {
    let up = MockUpstream::start().await;
    // No keys: section and no provider key in the environment.
    let gw = Gateway::start_async(&config(&up, ""), &[]).await;
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("authorization", "Bearer sk-ant-oat01-user-oauth")
        .body(r#"{"model":"claude-opus-4-8","max_tokens":5,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = &up.wait_requests(1, WAIT).await[0];
    assert_eq!(
        got.header("authorization").as_deref(),
        Some("Bearer sk-ant-oat01-user-oauth")
    );
    assert_eq!(got.header("x-api-key"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_anthropic_errors() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, "max_request_size: 1000\n"), &[PROVIDER_KEY]).await;
    let c = client();

    let r = c
        .post(gw.url("/v1/messages"))
        .body(vec![b' '; 2000])
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (413, Some("request_too_large"))
    );

    // A chunked body over the cap is refused as it arrives, with no Content-Length to go by.
    let chunks = futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 100])));
    let r = c
        .post(gw.url("/v1/messages"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 413);

    for (bad, needle) in [
        (r#"{"model":"claude-opus-4-8","#, "not valid JSON"),
        (r#"{"max_tokens":1}"#, "model"),
        ("[]", "JSON object"),
        ("", "empty"),
    ] {
        let r = c.post(gw.url("/v1/messages")).body(bad).send().await.unwrap();
        let (status, body) = error_of(r).await;
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (400, Some("invalid_request_error")),
            "{bad}"
        );
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{body}");
    }

    let r = c.get(gw.url("/v1/files")).send().await.unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["error"]["type"].as_str()), (404, Some("not_found_error")));
    let r = c.get(gw.url("/v1/messages")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(error_of(r).await.0, 405);
    assert_eq!(up.request_count(), 0, "none of these reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_502_504_and_upstream_errors_pass_through() {
    let up = MockUpstream::start().await;
    let dead = free_port();
    let yaml = format!(
        "{}routes:\n  - {{match: 'dead-*', provider: dead}}\n",
        config(
            &up,
            &format!("  dead:\n    type: anthropic\n    api_base: http://127.0.0.1:{dead}\n")
        )
        .replace("timeout: 5s", "timeout: 1s\nmax_retries: 0")
    );
    let gw = Gateway::start_async(&yaml, &[PROVIDER_KEY]).await;
    let c = client();

    let r = c
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"dead-1","max_tokens":1,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["error"]["type"].as_str()), (502, Some("api_error")));

    up.push(Reply::Stall {
        hold: Duration::from_secs(3),
    });
    let r = c
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"claude-opus-4-8","max_tokens":1,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["error"]["type"].as_str()), (504, Some("timeout_error")));

    let upstream_error = anthropic_error_json(
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
    );
    up.push(
        Reply::json(429, upstream_error.clone())
            .with_header("retry-after", "17")
            .with_header("x-should-retry", "true")
            .with_header("request-id", "req_upstream_429")
            .with_header("anthropic-ratelimit-tokens-remaining", "0"),
    );
    let r = c
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"claude-opus-4-8","max_tokens":1,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    for (h, v) in [
        ("retry-after", "17"),
        ("x-should-retry", "true"),
        ("request-id", "req_upstream_429"),
        ("anthropic-ratelimit-tokens-remaining", "0"),
    ] {
        assert_eq!(r.headers()[h], v, "{h} is kept");
    }
    assert_eq!(
        r.text().await.unwrap(),
        upstream_error,
        "upstream error bodies pass through unmodified"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn models_health_status_and_count_tokens() {
    let up = MockUpstream::start().await;
    let yaml = config(&up, "routes:\n  - {match: claude-gw-fast, provider: up, model: claude-haiku-4-5}\n  - {match: 'claude-*', provider: up}\n");
    let gw = Gateway::start_async(&yaml, &[PROVIDER_KEY]).await;
    let c = client();

    let r = c.get(gw.url("/v1/models?limit=1000")).send().await.unwrap();
    assert_eq!(r.status(), 200, "never a redirect");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], "claude-gw-fast");
    assert_eq!(v["last_id"], "claude-opus-4-8");
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["type"], "model");
        assert!(m["id"].as_str().unwrap().contains("claude"));
        assert!(m["display_name"].is_string() && m["created_at"].is_string());
    }

    let r = c.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!({"status": "ok"}));
    let s: Value = c.get(gw.url("/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(s["providers"][0]["name"], "up");
    assert!(s["config"]["version"].is_string());

    up.push(Reply::json(200, r#"{"input_tokens":2095}"#));
    let r = c
        .post(gw.url("/v1/messages/count_tokens?beta=true"))
        .body(r#"{"model":"claude-gw-fast","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"input_tokens":2095}"#);
    let got = &up.wait_requests(1, WAIT).await[0];
    assert_eq!(got.uri, "/v1/messages/count_tokens?beta=true");
    assert_eq!(got.json()["model"], "claude-haiku-4-5");

    let r = c.head(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "Claude Code's startup probe");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_mid_stream_leaves_the_gateway_healthy() {
    let up = MockUpstream::start().await;
    let (reply, gate) = gated_sse_message("claude-opus-4-8", &["partial"]);
    up.push(reply);
    let gw = Gateway::start_async(&config(&up, ""), &[PROVIDER_KEY]).await;
    let body = r#"{"model":"claude-opus-4-8","max_tokens":10,"stream":true,"messages":[]}"#;
    {
        let resp = client().post(gw.url("/v1/messages")).body(body).send().await.unwrap();
        let mut stream = resp.bytes_stream();
        let first = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
        assert!(first.is_some());
        // Dropping the stream and its client closes the connection mid-response.
    }
    gate.open();
    // The gateway keeps serving, streams included, on new connections.
    for _ in 0..3 {
        up.push(Reply::sse_message("claude-opus-4-8", &["fine"]));
        let r = client().post(gw.url("/v1/messages")).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("message_stop"));
    }
    let r = client().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn mid_stream_upstream_failure_becomes_an_sse_error_event() {
    let up = MockUpstream::start().await;
    let mut steps = anthropic_sse_chunks("claude-opus-4-8", &["par"]);
    steps.truncate(3);
    steps.push(SseStep::Abort);
    up.push(Reply::sse(steps));
    let gw = Gateway::start_async(&config(&up, ""), &[PROVIDER_KEY]).await;
    let r = client()
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"claude-opus-4-8","max_tokens":10,"stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = tokio::time::timeout(WAIT, r.text()).await.expect("no hang").unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    let data: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(data["error"]["type"], "api_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, "threads: 1\n"), &[PROVIDER_KEY]).await;
    let c = client();
    for _ in 0..5 {
        let r = c
            .post(gw.url("/v1/messages"))
            .body(r#"{"model":"claude-opus-4-8","max_tokens":1,"messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(up.request_count(), 5);
    assert_eq!(
        up.connections_accepted(),
        1,
        "sequential requests reuse one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_mode_forwards_other_v1_paths() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, "passthrough_mode: true\n"), &[PROVIDER_KEY]).await;
    up.push(Reply::json(200, r#"{"data":[]}"#));
    let r = client().get(gw.url("/v1/files?limit=2")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"data":[]}"#);
    let got = &up.wait_requests(1, WAIT).await[0];
    assert_eq!((got.method.as_str(), got.uri.as_str()), ("GET", "/v1/files?limit=2"));
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}
