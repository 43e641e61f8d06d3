//! Vertex AI through the real binary: a service-account file whose
//! `token_uri` points at a mock OAuth endpoint (which verifies the signed
//! JWT assertion), and a mock Vertex that accepts only bearer tokens that
//! endpoint issued. Claude (`publishers/anthropic`, `rawPredict` /
//! `streamRawPredict`) and Gemini (`publishers/google`) models both.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::google::{write_service_account, MockTokenEndpoint};
use support::*;

const CLAUDE: &str = "claude-sonnet-4-5@20250929";

fn config(up: &MockUpstream) -> String {
    format!(
        "listen: \"{{listen}}\"\nping_interval: 200ms\nretry_delay: 10ms\nmax_retries: 0\nproviders:\n  vertex: {{type: vertex, project: proj-1, location: us-east5, api_base: \"{}\"}}\nroutes:\n  - {{match: 'gemini-*', provider: vertex}}\n  - {{match: 'claude-sonnet-*', provider: vertex, model: \"{CLAUDE}\"}}\n",
        up.base_url()
    )
}

/// A Vertex that wants a bearer token from the mock OAuth endpoint.
fn bearer(ok: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Reply {
    Reply::script(move |rec| match rec.header("authorization") {
        Some(a) if a.starts_with("Bearer ya29.mock-") => ok(rec),
        _ => Reply::json(
            401,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
        ),
    })
}

struct Setup {
    up: MockUpstream,
    tokens: MockTokenEndpoint,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let up = MockUpstream::start().await;
    let tokens = MockTokenEndpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sa = write_service_account(dir.path(), &tokens.url());
    let gw = Gateway::start_async(
        &config(&up),
        &[("GOOGLE_APPLICATION_CREDENTIALS", sa.to_str().unwrap())],
    )
    .await;
    Setup {
        up,
        tokens,
        gw,
        _dir: dir,
    }
}

fn issued(s: &Setup, rec: &Recorded) -> bool {
    rec.header("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
        .is_some_and(|t| s.tokens.is_issued(&t))
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_on_vertex_streams_with_an_oauth_token_and_filtered_betas() {
    let s = setup().await;
    let mut steps = anthropic_sse_chunks("claude-sonnet-4-5", &["Hello", " from Vertex"]);
    steps.insert(2, SseStep::Delay(Duration::from_millis(50)));
    s.up.set_default(bearer(move |_| Reply::sse(steps.clone())));
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": true, "output_config": {"effort": "high"},
        "context_management": {"edits": []}, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let r = client()
            .post(s.gw.url("/v1/messages"))
            .header("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("from Vertex") && text.contains("message_stop"), "{text}");
    }
    let sent = s.up.requests();
    assert_eq!(
        sent[0].uri,
        format!("/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/{CLAUDE}:streamRawPredict")
    );
    assert!(issued(&s, &sent[0]) && issued(&s, &sent[1]));
    assert_eq!(s.tokens.token_requests(), 1, "the token is cached across requests");
    let b = sent[0].json();
    assert_eq!(b["anthropic_version"], "vertex-2023-10-16");
    assert_eq!(b["stream"], true);
    assert!(b.get("model").is_none(), "{b}");
    assert!(
        b.get("output_config").is_none() && b.get("context_management").is_none(),
        "paired fields without accepted betas are stripped: {b}"
    );
    assert_eq!(
        sent[0].header("anthropic-beta").as_deref(),
        Some("interleaved-thinking-2025-05-14")
    );
    assert!(sent[0].header("x-api-key").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_on_vertex_errors_and_count_tokens() {
    let s = setup().await;
    s.up.push(bearer(|_| {
        let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi from Gemini on Vertex"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 6, "totalTokenCount": 11}});
        Reply::sse(vec![SseStep::Bytes(format!("data: {chunk}\r\n\r\n").into_bytes().into())])
            .with_header("content-type", "text/event-stream")
    }));
    let body = json!({"model": "gemini-2.5-flash", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .post(s.gw.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("Hi from Gemini on Vertex") && text.contains("message_stop"),
        "{text}"
    );
    let sent = &s.up.requests()[0];
    assert_eq!(
        sent.uri,
        "/v1/projects/proj-1/locations/us-east5/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert!(issued(&s, sent));
    assert!(sent.header("x-goog-api-key").is_none());

    // Claude's own errors on Vertex are Anthropic-shaped: relayed as they are.
    s.up.push(bearer(|_| {
        Reply::json(
            400,
            anthropic_error_json(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
            ),
        )
    }));
    let claude =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .post(s.gw.url("/v1/messages"))
        .json(&claude)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "prompt is too long: 210000 tokens > 200000 maximum"
    );

    // Google's platform errors are mapped.
    s.up.push(bearer(|_| {
        Reply::json(429, r#"{"error":{"code":429,"message":"Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model.","status":"RESOURCE_EXHAUSTED"}}"#)
    }));
    let r = client()
        .post(s.gw.url("/v1/messages"))
        .json(&claude)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");

    // count_tokens: Claude through the count-tokens model, Gemini through :countTokens.
    s.up.push(bearer(|_| Reply::json(200, r#"{"input_tokens":12}"#)));
    let r = client()
        .post(s.gw.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["input_tokens"], 12);
    let sent = s.up.requests().pop().unwrap();
    assert_eq!(
        sent.uri,
        "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    );
    assert_eq!(sent.json()["model"], CLAUDE);
    s.up.push(bearer(|_| Reply::json(200, r#"{"totalTokens":7}"#)));
    let r = client()
        .post(s.gw.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["input_tokens"], 7);
    assert!(s
        .up
        .requests()
        .pop()
        .unwrap()
        .uri
        .ends_with("/gemini-2.5-flash:countTokens"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_token_endpoint_is_a_clear_error_and_no_secret_leaks() {
    let up = MockUpstream::start().await;
    up.set_default(bearer(|_| Reply::message("claude-sonnet-4-5", "never")));
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port (bound, then dropped).
    let port = free_port();
    let sa = write_service_account(dir.path(), &format!("http://127.0.0.1:{port}/token"));
    let gw = Gateway::start_async(
        &config(&up),
        &[("GOOGLE_APPLICATION_CREDENTIALS", sa.to_str().unwrap())],
    )
    .await;
    let r = client()
        .post(gw.url("/v1/messages"))
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Google access token"),
        "{v}"
    );
    assert_eq!(up.request_count(), 0, "nothing goes upstream without a token");
    let logs = gw.logs();
    assert!(
        !logs.contains("PRIVATE KEY") && !logs.contains("MII"),
        "no key material in logs"
    );
}
