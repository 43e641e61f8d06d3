//! Anthropic clients against OpenAI-family upstreams, through the real
//! binary: text, streaming, tool round trips (parallel calls), reasoning,
//! errors, mid-stream failure, pings, local count_tokens, and the Azure and
//! Ollama request shapes.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn config(up: &MockUpstream, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ntimeout: 5s\nping_interval: 300ms\ndefault_provider: oai\nproviders:\n  oai:\n    type: openai\n    api_base: {base}/v1\n    api_key_env_var: MG_TEST_OPENAI_KEY\n  az:\n    type: azure\n    api_base: {base}\n    api_key: az-secret\n    deployment: gpt4o-prod\n  local:\n    type: ollama\n    api_base: {base}/v1\nroutes:\n  - {{match: 'claude-haiku-*', provider: oai, model: gpt-4o-mini}}\n  - {{match: 'azure-*', provider: az}}\n  - {{match: 'local-*', provider: local, model: qwen3-coder}}\n  - {{match: '*', provider: oai, model: gpt-4o}}\n{extra}",
        base = up.base_url()
    )
}

const KEY: (&str, &str) = ("MG_TEST_OPENAI_KEY", "sk-openai-secret");

fn msg(model: &str, stream: bool, messages: Value) -> String {
    json!({"model": model, "max_tokens": 32000, "stream": stream, "messages": messages}).to_string()
}

async fn post(gw: &Gateway, body: String) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages?beta=true"))
        .header("x-api-key", "client-anthropic-key")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn text_turn_is_translated_both_ways() {
    let up = MockUpstream::start().await;
    up.push(Reply::json(
        200,
        openai_completion_json(json!({"role": "assistant", "content": "Hi from GPT."}), "stop"),
    ));
    let gw = Gateway::start_async(&config(&up, ""), &[KEY]).await;
    let r = post(
        &gw,
        msg("claude-haiku-4-5", false, json!([{"role": "user", "content": "hello"}])),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-haiku-4-5");
    assert_eq!(v["content"], json!([{"type": "text", "text": "Hi from GPT."}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 476);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 1024);
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));

    let got = &up.wait_requests(1, WAIT).await[0];
    assert_eq!(got.uri, "/v1/chat/completions");
    assert_eq!(got.header("authorization").as_deref(), Some("Bearer sk-openai-secret"));
    assert_eq!(
        got.header("x-api-key"),
        None,
        "the client's Anthropic credential never goes to OpenAI"
    );
    assert_eq!(got.header("anthropic-beta"), None);
    let sent = got.json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["max_tokens"], 16384, "clamped to the model's output cap");
    assert_eq!(sent["messages"], json!([{"role": "user", "content": "hello"}]));
    assert!(!gw.logs().contains("sk-openai-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_turn_with_reasoning_and_usage() {
    let up = MockUpstream::start().await;
    let c = |delta: Value, finish: Value| json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    up.push(Reply::sse(openai_sse_chunks(&[
        c(json!({"role": "assistant", "content": ""}), Value::Null),
        c(json!({"reasoning_content": "Think"}), Value::Null),
        c(json!({"reasoning_content": "ing."}), Value::Null),
        c(json!({"content": "Hel"}), Value::Null),
        c(json!({"content": "lo"}), json!("stop")),
        json!({"id": "chatcmpl-s1", "choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 100}}}),
    ])));
    let gw = Gateway::start_async(&config(&up, ""), &[KEY]).await;
    let r = post(
        &gw,
        msg("claude-opus-4-8", true, json!([{"role": "user", "content": "hello"}])),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0].1["message"]["model"], "claude-opus-4-8");
    assert!(
        events[0].1["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "estimated, never 0"
    );
    assert_eq!(events[1].1["content_block"]["type"], "thinking");
    assert_eq!(events[5].1["content_block"]["type"], "text");
    assert_eq!(events[5].1["index"], 1);
    let delta = &events[9].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["input_tokens"], 800);
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 100);
    assert_eq!(delta["usage"]["output_tokens"], 7);
    let sent = up.wait_requests(1, WAIT).await[0].json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_tool_calls_round_trip_streaming_and_not() {
    let up = MockUpstream::start().await;
    let c = |delta: Value, finish: Value| json!({"id": "chatcmpl-t", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    // Two calls, interleaved by index, as OpenAI sends parallel calls.
    up.push(Reply::sse(openai_sse_chunks(&[
        c(json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "Read", "arguments": ""}}]}), Value::Null),
        c(json!({"tool_calls": [{"index": 1, "id": "call_B", "type": "function", "function": {"name": "Bash", "arguments": "{\"comm"}}]}), Value::Null),
        c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"file_path\":"}}]}), Value::Null),
        c(json!({"tool_calls": [{"index": 1, "function": {"arguments": "and\":\"ls\"}"}}]}), Value::Null),
        c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"/tmp/a\"}"}}]}), json!("tool_calls")),
        json!({"id": "chatcmpl-t", "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 20}}),
    ])));
    let gw = Gateway::start_async(&config(&up, ""), &[KEY]).await;
    let tools = json!([
        {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}},
        {"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}
    ]);
    let mut first = json!({"model": "claude-opus-4-8", "max_tokens": 1000, "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "read and list"}]});
    let r = post(&gw, first.to_string()).await;
    let events = parse_sse(&r.text().await.unwrap());
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["content_block"]["name"], "Read");
    assert_eq!(starts[1]["content_block"]["name"], "Bash");
    let json_for = |index: u64| -> Value {
        let partial: String = events
            .iter()
            .filter(|(n, v)| n == "content_block_delta" && v["index"] == index)
            .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap().to_string())
            .collect();
        serde_json::from_str(&partial).unwrap()
    };
    assert_eq!(json_for(0), json!({"file_path": "/tmp/a"}));
    assert_eq!(json_for(1), json!({"command": "ls"}));
    // Blocks never interleave: every event of block 0 comes before block 1's start.
    let last_of_0 = events.iter().rposition(|(_, v)| v["index"] == 0).unwrap();
    let first_of_1 = events.iter().position(|(_, v)| v["index"] == 1).unwrap();
    assert!(last_of_0 < first_of_1);
    let stop = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");

    // Second turn, non-streaming: the results go back as tool messages.
    up.push(Reply::json(
        200,
        openai_completion_json(json!({"role": "assistant", "content": "a.txt has 3 lines"}), "stop"),
    ));
    first["stream"] = json!(false);
    first["messages"] = json!([
        {"role": "user", "content": "read and list"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": starts[0]["content_block"]["id"], "name": "Read", "input": {"file_path": "/tmp/a"}},
            {"type": "tool_use", "id": starts[1]["content_block"]["id"], "name": "Bash", "input": {"command": "ls"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": starts[0]["content_block"]["id"], "content": "1\n2\n3"},
            {"type": "tool_result", "tool_use_id": starts[1]["content_block"]["id"], "content": "a.txt"},
            {"type": "text", "text": "summarise"}
        ]}
    ]);
    let r = post(&gw, first.to_string()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "a.txt has 3 lines");
    let sent = up.wait_requests(2, WAIT).await[1].json();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "tool", "user"]);
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_A");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_A");
    assert_eq!(sent["messages"][3]["tool_call_id"], "call_B");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_and_context_errors_are_anthropic_shaped() {
    let up = MockUpstream::start().await;
    up.push(Reply::json(
        400,
        r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130123 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
    ));
    up.push(
        Reply::json(
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","code":"rate_limit_exceeded"}}"#,
        )
        .with_header("x-ratelimit-reset-requests", "1m30s")
        .with_header("x-ratelimit-reset-tokens", "6s"),
    );
    // No retries, so the 429 itself reaches the client.
    let gw = Gateway::start_async(&config(&up, "max_retries: 0\n"), &[KEY]).await;
    let r = post(
        &gw,
        msg("claude-opus-4-8", false, json!([{"role": "user", "content": "x"}])),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "prompt is too long: 130123 tokens > 128000 maximum"
    );
    assert_eq!(
        up.request_count(),
        1,
        "a context overflow is the client's error: not retried"
    );

    let r = post(
        &gw,
        msg("claude-opus-4-8", true, json!([{"role": "user", "content": "x"}])),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "90", "from OpenAI's reset durations");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["request_id"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn mid_stream_disconnect_gives_a_well_formed_error_event() {
    let up = MockUpstream::start().await;
    let mut steps = openai_sse_chunks(&[
        json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": null}]}),
    ]);
    steps.pop();
    steps.push(SseStep::Abort);
    up.push(Reply::sse(steps));
    let gw = Gateway::start_async(&config(&up, ""), &[KEY]).await;
    let r = post(
        &gw,
        msg("claude-opus-4-8", true, json!([{"role": "user", "content": "x"}])),
    )
    .await;
    let text = tokio::time::timeout(WAIT, r.text()).await.expect("no hang").unwrap();
    let events = parse_sse(&text);
    let (last_name, last) = events.last().unwrap();
    assert_eq!(last_name, "error");
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert_eq!(events[0].0, "message_start");
}

#[tokio::test(flavor = "multi_thread")]
async fn silence_is_filled_with_pings() {
    let up = MockUpstream::start().await;
    let c = |delta: Value, finish: Value| json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let gate = Gate::new();
    // Like OpenAI: the role chunk at once, then silence while the model reasons.
    let mut steps = openai_sse_chunks(&[
        c(json!({"role": "assistant", "content": ""}), Value::Null),
        c(json!({"content": "after a long think"}), json!("stop")),
    ]);
    steps.insert(1, SseStep::Gate(gate.clone()));
    up.push(Reply::sse(steps));
    let gw = Gateway::start_async(&config(&up, ""), &[KEY]).await;
    let r = post(
        &gw,
        msg("claude-opus-4-8", true, json!([{"role": "user", "content": "x"}])),
    )
    .await;
    let mut stream = r.bytes_stream();
    use futures_util::StreamExt;
    let mut seen = String::new();
    // ping_interval is 300 ms here: wait (bounded) for two pings, then release the upstream.
    for _ in 0..50 {
        if seen.matches("event: ping").count() >= 2 {
            break;
        }
        let chunk = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.matches("event: ping").count() >= 2, "{seen}");
    gate.open();
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events = parse_sse(&seen);
    assert!(events
        .iter()
        .any(|(n, v)| n == "content_block_delta" && v["delta"]["text"] == "after a long think"));
    assert_eq!(events.last().unwrap().0, "message_stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_is_local_for_openai_routes() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, ""), &[KEY]).await;
    let body = fixture("claude_code_request.json");
    let r = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-modelgate-token-count"]
        .to_str()
        .unwrap()
        .contains("o200k_base"));
    let v: Value = r.json().await.unwrap();
    let n = v["input_tokens"].as_u64().unwrap();
    assert!(
        (10_000..60_000).contains(&n),
        "a 105 KB prompt counts in the tens of thousands: {n}"
    );
    assert_eq!(up.request_count(), 0, "never sent upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_and_ollama_request_shapes() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up, ""), &[KEY]).await;
    for _ in 0..2 {
        up.push(Reply::json(
            200,
            openai_completion_json(json!({"role": "assistant", "content": "ok"}), "stop"),
        ));
    }
    assert_eq!(
        post(
            &gw,
            msg("azure-gpt4o", false, json!([{"role": "user", "content": "x"}]))
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        post(
            &gw,
            msg("local-coder", false, json!([{"role": "user", "content": "x"}]))
        )
        .await
        .status(),
        200
    );
    let got = up.wait_requests(2, WAIT).await;
    assert_eq!(
        got[0].uri,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(got[0].header("api-key").as_deref(), Some("az-secret"));
    assert_eq!(got[0].header("authorization"), None);
    assert_eq!(got[1].uri, "/v1/chat/completions");
    assert_eq!(got[1].json()["model"], "qwen3-coder");
    assert_eq!(got[1].header("authorization"), None, "ollama gets no key");
}
