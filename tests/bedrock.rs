//! Bedrock InvokeModel through the real binary against a mock Bedrock that
//! verifies SigV4 (recomputing the signature with `aws-sigv4` and known test
//! credentials) and answers in its real formats: JSON, and
//! `application/vnd.amazon.eventstream` frames, exceptions included.

mod support;

use std::time::Duration;

use modelgate::dialects::bedrock::stream::{encode_chunk, encode_exception};
use serde_json::Value;
use support::clouds::{ACCESS_KEY, SECRET_KEY};
use support::*;

const MODEL: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

/// Recompute the request's SigV4 signature; `None` when it matches.
fn signature_problem(rec: &Recorded) -> Option<String> {
    support::clouds::sigv4_problem(rec, "bedrock", "us-east-1")
}

fn events(texts: &[&str]) -> Vec<SseStep> {
    let mut v = vec![SseStep::Bytes(
        encode_chunk(r#"{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":21,"cache_read_input_tokens":100,"output_tokens":1}}}"#).into(),
    )];
    v.push(SseStep::Bytes(
        encode_chunk(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#).into(),
    ));
    for t in texts {
        let e = serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}});
        v.push(SseStep::Bytes(encode_chunk(&e.to_string()).into()));
    }
    for e in [
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":7}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":21,"outputTokenCount":7,"invocationLatency":300,"firstByteLatency":90}}"#,
    ] {
        v.push(SseStep::Bytes(encode_chunk(e).into()));
    }
    v
}

fn eventstream(steps: Vec<SseStep>) -> Reply {
    Reply::sse(steps).with_header("content-type", "application/vnd.amazon.eventstream")
}

/// A Bedrock that checks every signature, then answers with `ok`.
fn verifying(ok: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Reply {
    Reply::script(move |rec| match signature_problem(rec) {
        None => ok(rec),
        Some(why) => Reply::json(403, serde_json::json!({ "message": why }).to_string())
            .with_header("x-amzn-errortype", "InvalidSignatureException"),
    })
}

fn config(up: &MockUpstream, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\nping_interval: 200ms\nretry_delay: 10ms\ndefault_provider: bedrock\nproviders:\n  bedrock: {{type: bedrock, region: us-east-1, api_base: \"{}\"}}\nroutes:\n  - {{match: 'claude-sonnet-*', provider: bedrock, model: \"{MODEL}\"}}\n{extra}",
        up.base_url()
    )
}

const ENV: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];

async fn post(gw: &Gateway, body: &str, beta: Option<&str>) -> reqwest::Response {
    let mut r = client().post(gw.url("/v1/messages")).body(body.to_string());
    if let Some(b) = beta {
        r = r.header("anthropic-beta", b);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_stream_becomes_anthropic_sse_with_pings() {
    let up = MockUpstream::start().await;
    let mut steps = events(&["Hello", " from Bedrock"]);
    steps.insert(2, SseStep::Delay(Duration::from_millis(600)));
    up.set_default(verifying(move |_| eventstream(steps.clone())));
    let gw = Gateway::start_async(&config(&up, ""), ENV).await;
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"context_management":{"edits":[]},"tools":[{"name":"Read","input_schema":{"type":"object"},"eager_input_streaming":true}],"messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(
        &gw,
        body,
        Some("interleaved-thinking-2025-05-14,context-management-2025-06-27,fine-grained-tool-streaming-2025-05-14"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let evs = parse_sse(&text);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert!(names.contains(&"ping"), "600 ms of silence gets a ping: {text}");
    assert!(!text.contains("invocationMetrics"), "{text}");
    let said: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(said, "Hello from Bedrock");

    let sent = &up.requests()[0];
    assert_eq!(
        sent.uri,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    );
    assert_eq!(
        sent.header("accept").as_deref(),
        Some("application/vnd.amazon.eventstream")
    );
    let b = sent.json();
    assert_eq!(b["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(
        b["anthropic_beta"],
        serde_json::json!(["interleaved-thinking-2025-05-14", "context-management-2025-06-27"])
    );
    assert!(b.get("model").is_none() && b.get("stream").is_none(), "{b}");
    assert!(b["context_management"].is_object(), "kept with its accepted beta: {b}");
    assert!(b["tools"][0].get("eager_input_streaming").is_none(), "{b}");
    assert!(sent.header("anthropic-beta").is_none());
    assert!(sent.header("x-amz-content-sha256").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_answers_errors_and_exceptions() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, ""), ENV).await;
    let plain = r#"{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let streamed =
        r#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    up.push(verifying(|_| {
        Reply::json(200, anthropic_message_json("claude-sonnet-4-5", "plain answer"))
    }));
    let r = post(&gw, plain, None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "plain answer");
    assert!(up.requests()[0].uri.ends_with("%3A0/invoke"));

    // Bedrock's context error keeps its wording (Claude Code knows it).
    up.push(verifying(|_| {
        Reply::json(400, r#"{"message":"Input is too long for requested model."}"#).with_header(
            "x-amzn-errortype",
            "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
        )
    }));
    let r = post(&gw, plain, None).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "Input is too long for requested model.");

    // A throttling exception mid-stream ends the stream with an error event.
    up.push(verifying(|_| {
        let mut steps = events(&["partial"]);
        steps.truncate(3);
        steps.push(SseStep::Bytes(
            encode_exception(
                "throttlingException",
                "Too many tokens, please wait before trying again.",
            )
            .into(),
        ));
        eventstream(steps)
    }));
    let r = post(&gw, streamed, None).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let evs = parse_sse(&text);
    let (name, data) = evs.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_eq!(data["error"]["type"], "rate_limit_error");

    // A stream cut before message_stop is reported, never silently truncated.
    up.push(verifying(|_| {
        let mut steps = events(&["cut"]);
        steps.truncate(3);
        eventstream(steps)
    }));
    let text = post(&gw, streamed, None).await.text().await.unwrap();
    assert_eq!(parse_sse(&text).last().unwrap().0, "error", "{text}");

    // 429 before the first byte: relayed as rate_limit_error with retry-after.
    up.set_default(verifying(|_| {
        Reply::json(
            429,
            r#"{"message":"Too many requests, please wait before trying again."}"#,
        )
        .with_header("x-amzn-errortype", "ThrottlingException")
        .with_header("retry-after", "1")
    }));
    let r = post(&gw, plain, None).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_is_refused_by_the_signature_check() {
    let up = MockUpstream::start().await;
    up.set_default(verifying(|_| Reply::json(200, anthropic_message_json("x", "never"))));
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let gw = Gateway::start_async(&config(&up, ""), &env).await;
    let r = post(
        &gw,
        r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        None,
    )
    .await;
    // InvalidSignatureException is the gateway's credential refused: not the
    // client's error, and said in words for the gateway's operator.
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("signature mismatch"), "{v}");
    assert!(message.contains("refused the gateway's credential"), "{v}");
    assert_eq!(up.request_count(), 1);
    let logs = gw.logs();
    assert!(!logs.contains("not-the-secret") && !logs.contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_goes_as_a_bearer_token_and_other_models_speak_converse() {
    use modelgate::dialects::bedrock::converse::encode_event;
    let up = MockUpstream::start().await;
    up.set_default(Reply::script(|rec| {
        let path = rec.path().to_string();
        if path.ends_with("/converse") {
            Reply::json(
                200,
                serde_json::json!({
                    "output": {"message": {"role": "assistant", "content": [{"text": "Nova says hi"}]}},
                    "stopReason": "end_turn",
                    "usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15}
                })
                .to_string(),
            )
        } else if path.ends_with("/converse-stream") {
            let frames = [
                encode_event("messageStart", &serde_json::json!({"role": "assistant"})),
                encode_event("contentBlockDelta", &serde_json::json!({"contentBlockIndex": 0, "delta": {"text": "Reading."}})),
                encode_event("contentBlockStop", &serde_json::json!({"contentBlockIndex": 0})),
                encode_event("contentBlockStart", &serde_json::json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "Read"}}})),
                encode_event("contentBlockDelta", &serde_json::json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"file_path\":"}}})),
                encode_event("contentBlockDelta", &serde_json::json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"/tmp/x\"}"}}})),
                encode_event("contentBlockStop", &serde_json::json!({"contentBlockIndex": 1})),
                encode_event("messageStop", &serde_json::json!({"stopReason": "tool_use"})),
                encode_event("metadata", &serde_json::json!({"usage": {"inputTokens": 30, "outputTokens": 12}, "metrics": {"latencyMs": 200}})),
            ];
            eventstream(frames.into_iter().map(|f| SseStep::Bytes(f.into())).collect())
        } else {
            Reply::json(200, anthropic_message_json("x", "via api key"))
        }
    }));
    let gw = Gateway::start_async(
        &config(
            &up,
            "  - {match: 'nova-*', provider: bedrock, model: amazon.nova-pro-v1:0}\n",
        ),
        &[("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-123")],
    )
    .await;
    let r = post(
        &gw,
        r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = &up.requests()[0];
    assert_eq!(
        sent.header("authorization").as_deref(),
        Some("Bearer bedrock-api-key-123")
    );

    // Converse, JSON.
    let r = post(
        &gw,
        r#"{"model":"nova-pro","max_tokens":5,"system":"Be brief.","messages":[{"role":"user","content":"hi"}]}"#,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "Nova says hi", "{v}");
    assert_eq!(v["model"], "nova-pro");
    assert_eq!(v["usage"]["input_tokens"], 11);
    let sent = up.requests().last().unwrap().clone();
    assert_eq!(sent.uri, "/model/amazon.nova-pro-v1%3A0/converse");
    let b = sent.json();
    assert_eq!(b["system"], serde_json::json!([{"text": "Be brief."}]));
    assert_eq!(b["inferenceConfig"]["maxTokens"], 5);

    // Converse, streamed: a text block, then a tool call, message_stop held for the usage.
    let r = post(
        &gw,
        r#"{"model":"nova-pro","max_tokens":50,"stream":true,"tools":[{"name":"Read","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"read /tmp/x"}]}"#,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let evs = parse_sse(&text);
    assert_eq!(evs.first().unwrap().0, "message_start", "{text}");
    assert_eq!(evs.last().unwrap().0, "message_stop", "{text}");
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta.1["usage"]["output_tokens"], 12);
    let args: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str().map(str::to_string))
        .collect();
    assert_eq!(args, r#"{"file_path":"/tmp/x"}"#);
    let sent = up.requests().last().unwrap().json();
    assert_eq!(sent["toolConfig"]["tools"][0]["toolSpec"]["name"], "Read");

    // count_tokens asks CountTokens (with the API key); this mock does not
    // answer it in shape, so the local estimate does.
    let r = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .body(r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"how many tokens is this"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-modelgate-token-count"]
        .to_str()
        .unwrap()
        .starts_with("estimate"));
    assert!(r.json::<Value>().await.unwrap()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(up.request_count(), 4);
    let counted = up.requests().last().unwrap().clone();
    assert!(counted.uri.ends_with("/count-tokens"), "{}", counted.uri);
    assert!(counted.json()["input"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_accepted_betas_come_from_config_when_given() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::json(200, anthropic_message_json("x", "ok")));
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: bedrock\nproviders:\n  bedrock: {{type: bedrock, region: eu-west-1, api_base: \"{}\", api_key: k, betas: [new-feature-2027-01-01, context-management-2025-06-27]}}\nroutes:\n  - {{match: '*', provider: bedrock, model: \"{MODEL}\"}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":5,"context_management":{"edits":[]},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(
        &gw,
        body,
        Some("interleaved-thinking-2025-05-14,new-feature-2027-01-01,context-management-2025-06-27"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let b = up.requests()[0].json();
    assert_eq!(
        b["anthropic_beta"],
        serde_json::json!(["new-feature-2027-01-01", "context-management-2025-06-27"])
    );
    assert!(b["context_management"].is_object(), "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_goes_through_count_tokens_and_falls_back_to_an_estimate() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, ""), ENV).await;
    let body = r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"how many tokens is this?"}]}"#;
    let count = || async {
        client()
            .post(gw.url("/v1/messages/count_tokens"))
            .header("anthropic-beta", "context-1m-2025-08-07,claude-code-20250219")
            .body(body)
            .send()
            .await
            .unwrap()
    };
    up.push(verifying(|_| Reply::json(200, r#"{"inputTokens":42}"#)));
    let r = count().await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-modelgate-token-count"]
        .to_str()
        .unwrap()
        .starts_with("upstream"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"input_tokens": 42})
    );
    let sent = &up.requests()[0];
    assert_eq!(
        sent.uri,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/count-tokens"
    );
    use base64::Engine;
    let blob = sent.json()["input"]["invokeModel"]["body"]
        .as_str()
        .unwrap()
        .to_string();
    let inner: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(blob).unwrap()).unwrap();
    assert_eq!(inner["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(inner["anthropic_beta"], serde_json::json!(["context-1m-2025-08-07"]));
    assert!(inner.get("model").is_none(), "{inner}");

    // A model CountTokens does not serve: the local estimate answers.
    up.push(verifying(|_| {
        Reply::json(
            400,
            r#"{"message":"The provided model doesn't support counting tokens."}"#,
        )
        .with_header("x-amzn-errortype", "ValidationException")
    }));
    let r = count().await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-modelgate-token-count"]
        .to_str()
        .unwrap()
        .starts_with("estimate"));
    let n = r.json::<Value>().await.unwrap()["input_tokens"].as_u64().unwrap();
    assert!((5..100).contains(&n), "{n}");
}

/// `anthropic-version: 2026-10-21` (no sampling parameters) on the legacy
/// InvokeModel path: the request is valid under the platform's own version,
/// which the body names; the client's header does not go to Bedrock.
#[tokio::test]
async fn a_newer_anthropic_version_is_sent_under_the_platforms_own() {
    let up = MockUpstream::start().await;
    up.set_default(verifying(|_| Reply::message("claude-sonnet-4-5-20250929", "ok")));
    let gw = Gateway::start_async(&config(&up, ""), ENV).await;
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2026-10-21")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.requests().pop().unwrap();
    assert!(seen.header("anthropic-version").is_none());
    assert_eq!(seen.json()["anthropic_version"], "bedrock-2023-05-31");
}
