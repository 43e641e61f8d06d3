//! Gemini (AI Studio) through the real binary against a mock Gemini API
//! that checks `x-goog-api-key` and answers in its real formats:
//! `generateContent` JSON, `streamGenerateContent?alt=sse` events (each a
//! whole `GenerateContentResponse`), Google error objects, `countTokens`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const KEY: &str = "gemini-test-key-0123456789";

fn config(up: &MockUpstream) -> String {
    format!(
        "listen: \"{{listen}}\"\nping_interval: 200ms\nretry_delay: 10ms\nmax_retries: 0\nproviders:\n  gemini: {{type: gemini, api_base: \"{}/v1beta\"}}\nroutes:\n  - {{match: 'claude-*', provider: gemini, model: gemini-2.5-pro}}\n",
        up.base_url()
    )
}

/// A Gemini API that refuses a wrong key as Google does, then answers with `ok`.
fn keyed(ok: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Reply {
    Reply::script(move |rec| {
        if rec.header("x-goog-api-key").as_deref() == Some(KEY) && rec.header("authorization").is_none() {
            ok(rec)
        } else {
            Reply::json(
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
            )
        }
    })
}

/// Gemini's SSE: one `data:` line per whole response, CRLF-separated.
fn gemini_sse(chunks: &[Value], pause_after_first: Option<Duration>) -> Reply {
    let mut steps = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        steps.push(SseStep::Bytes(format!("data: {c}\r\n\r\n").into_bytes().into()));
        if i == 0 {
            if let Some(d) = pause_after_first {
                steps.push(SseStep::Delay(d));
            }
        }
    }
    Reply::sse(steps).with_header("content-type", "text/event-stream")
}

fn part_chunk(parts: Value) -> Value {
    json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}], "modelVersion": "gemini-2.5-pro"})
}

fn usage(prompt: u64, cached: u64, total: u64) -> Value {
    json!({"promptTokenCount": prompt, "cachedContentTokenCount": cached, "candidatesTokenCount": total - prompt, "totalTokenCount": total})
}

async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    client().post(gw.url("/v1/messages")).json(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_turn_and_a_stream_with_thoughts_and_pings() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up), &[("GEMINI_API_KEY", KEY)]).await;

    up.push(keyed(|_| {
        let mut answer = part_chunk(json!([{"text": "Hello from Gemini"}]));
        answer["candidates"][0]["finishReason"] = json!("STOP");
        answer["usageMetadata"] = usage(20, 8, 30);
        Reply::json(200, answer.to_string())
    }));
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "Hello from Gemini");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(v["usage"]["input_tokens"], 12);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 8);
    assert_eq!(v["usage"]["output_tokens"], 10);
    let sent = &up.requests()[0];
    assert_eq!(sent.uri, "/v1beta/models/gemini-2.5-pro:generateContent");
    let b = sent.json();
    assert_eq!(b["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(b["contents"][0], json!({"role": "user", "parts": [{"text": "hi"}]}));
    assert_eq!(b["generationConfig"]["maxOutputTokens"], 100);
    assert!(b.get("model").is_none() && b.get("max_tokens").is_none(), "{b}");

    up.push(keyed(|_| {
        let mut last = part_chunk(json!([{"text": " world"}]));
        last["candidates"][0]["finishReason"] = json!("STOP");
        last["usageMetadata"] = usage(20, 0, 41);
        gemini_sse(
            &[
                part_chunk(json!([{"text": "Considering the greeting", "thought": true}])),
                part_chunk(json!([{"text": "Hello"}])),
                last,
            ],
            Some(Duration::from_millis(600)),
        )
    }));
    let mut body = body.clone();
    body["stream"] = json!(true);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let evs = parse_sse(&text);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert!(names.contains(&"ping"), "600 ms of silence gets a ping: {text}");
    let blocks: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(blocks, ["thinking", "text"], "{text}");
    let said: String = evs.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect();
    assert_eq!(said, "Hello world");
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["usage"]["output_tokens"], 21);
    let sent = &up.requests()[1];
    assert_eq!(sent.uri, "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
    let b = sent.json();
    assert_eq!(b["generationConfig"]["thinkingConfig"]["includeThoughts"], true);
    assert_eq!(b["generationConfig"]["thinkingConfig"]["thinkingBudget"], 2048);
}

/// Claude Code's tool loop: a functionCall (with Gemini 3's thought
/// signature) becomes `tool_use`; the `tool_result` goes back as a named
/// `functionResponse`, with the signature replayed on the call.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_round_trip_keeps_names_and_thought_signatures() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up), &[("GEMINI_API_KEY", KEY)]).await;
    up.push(keyed(|_| {
        let mut last = part_chunk(json!([
            {"functionCall": {"name": "Read", "args": {"file_path": "/tmp/a.txt"}}, "thoughtSignature": "c2lnbmF0dXJlLW9uZQ=="},
            {"functionCall": {"name": "Read", "args": {"file_path": "/tmp/b.txt"}}}
        ]));
        last["candidates"][0]["finishReason"] = json!("STOP");
        last["usageMetadata"] = usage(50, 0, 70);
        gemini_sse(&[part_chunk(json!([{"text": "Reading both."}])), last], None)
    }));
    let tools = json!([{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}, "offset": {"type": "integer", "exclusiveMinimum": 0}}, "required": ["file_path"], "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"}}]);
    let first = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true, "tools": tools, "messages": [{"role": "user", "content": "read a and b"}]});
    let text = post(&gw, &first).await.text().await.unwrap();
    let evs = parse_sse(&text);
    let uses: Vec<Value> = evs
        .iter()
        .filter(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .map(|(_, d)| d["content_block"].clone())
        .collect();
    assert_eq!(uses.len(), 2, "{text}");
    for u in &uses {
        assert_eq!(u["name"], "Read");
        let id = u["id"].as_str().unwrap();
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{id}"
        );
    }
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(
        delta.1["delta"]["stop_reason"], "tool_use",
        "STOP with calls is tool_use"
    );
    let inputs: Vec<Value> = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(inputs[0]["file_path"], "/tmp/a.txt");
    let decl = &up.requests()[0].json()["tools"][0]["functionDeclarations"][0];
    assert_eq!(decl["name"], "Read");
    assert!(
        decl["parametersJsonSchema"]["properties"]["offset"]["exclusiveMinimum"] == 0,
        "real JSON Schema goes as parametersJsonSchema: {decl}"
    );

    up.push(keyed(|_| {
        let mut answer = part_chunk(json!([{"text": "a says 1, b says 2"}]));
        answer["candidates"][0]["finishReason"] = json!("STOP");
        Reply::json(200, answer.to_string())
    }));
    let second = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "read a and b"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Reading both."},
            {"type": "tool_use", "id": uses[0]["id"], "name": "Read", "input": {"file_path": "/tmp/a.txt"}},
            {"type": "tool_use", "id": uses[1]["id"], "name": "Read", "input": {"file_path": "/tmp/b.txt"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "1"},
            {"type": "tool_result", "tool_use_id": uses[1]["id"], "content": [{"type": "text", "text": "2"}]}
        ]}
    ]});
    let r = post(&gw, &second).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "a says 1, b says 2");
    let b = up.requests()[1].json();
    let model_turn = &b["contents"][1];
    assert_eq!(model_turn["role"], "model");
    let calls: Vec<&Value> = model_turn["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("functionCall").is_some())
        .collect();
    assert_eq!(calls.len(), 2, "{model_turn}");
    assert_eq!(calls[0]["thoughtSignature"], "c2lnbmF0dXJlLW9uZQ==", "{model_turn}");
    assert!(calls[0]["functionCall"].get("thoughtSignature").is_none());
    let responses: Vec<&Value> = b["contents"][2]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.get("functionResponse"))
        .collect();
    assert_eq!(responses.len(), 2, "as many responses as calls: {b}");
    assert!(responses.iter().all(|r| r["name"] == "Read"), "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_count_tokens_and_a_cut_stream() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up), &[("GEMINI_API_KEY", KEY)]).await;
    let body =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});

    // Quota: 429 with Google's RetryInfo becomes a rate_limit_error with retry-after.
    up.push(keyed(|_| {
        Reply::json(429, r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"17s"}]}}"#)
    }));
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "17");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");

    // Context overflow in the words Claude Code compacts on.
    up.push(keyed(|_| {
        Reply::json(400, r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#)
    }));
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "prompt is too long: 1200000 tokens > 1048576 maximum"
    );

    // count_tokens goes to :countTokens.
    up.push(keyed(|_| Reply::json(200, r#"{"totalTokens":31}"#)));
    let r = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"input_tokens": 31}));
    let sent = up.requests().pop().unwrap();
    assert_eq!(sent.uri, "/v1beta/models/gemini-2.5-pro:countTokens");
    assert!(sent.body_str().contains("contents"), "{}", sent.body_str());

    // A stream that ends before any finishReason: a well-formed error event.
    up.push(keyed(|_| gemini_sse(&[part_chunk(json!([{"text": "partial"}]))], None)));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = post(&gw, &streamed).await.text().await.unwrap();
    let evs = parse_sse(&text);
    assert_eq!(evs.last().map(|(n, _)| n.as_str()), Some("error"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");

    // A wrong key never reaches the model; the client hears an Anthropic error.
    let gw2 = Gateway::start_async(&config(&up), &[("GEMINI_API_KEY", "wrong")]).await;
    up.set_default(keyed(|_| Reply::json(200, "{}")));
    let r = post(&gw2, &body).await;
    assert_eq!(
        r.status(),
        401,
        "Google's `API key not valid` is an authentication error"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(!v.to_string().contains("wrong"), "{v}");
}

/// A session that moves from Gemini to Claude (a failover, a route change)
/// carries Gemini's thinking blocks in its history; Claude would refuse
/// them ("Invalid signature in thinking block"), so they are left out of
/// what a Claude upstream sees, and Claude's own blocks pass unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_moving_to_claude_sheds_gemini_thinking() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5", "hello from Claude"));
    let yaml = format!(
        "listen: \"{{listen}}\"\nproviders:\n  claude: {{type: anthropic, api_base: \"{}\", api_key: sk-ant-test}}\nroutes:\n  - {{match: '*', provider: claude}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Gemini thought", "signature": "gemini-thought:c2lnbmF0dXJl"},
            {"type": "text", "text": "Hi from Gemini"}
        ]},
        {"role": "user", "content": "and now?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Claude thought", "signature": "EqQBCkYIBxgCKkA"},
            {"type": "text", "text": "Hi from Claude"}
        ]},
        {"role": "user", "content": "again"}
    ]});
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 200);
    let sent = up.requests()[0].json();
    let blocks = &sent["messages"][1]["content"];
    assert_eq!(blocks, &json!([{"type": "text", "text": "Hi from Gemini"}]), "{sent}");
    assert_eq!(sent["messages"][3]["content"][0]["signature"], "EqQBCkYIBxgCKkA");
    // A history without foreign blocks goes byte for byte.
    let plain =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let raw = serde_json::to_string(&plain).unwrap();
    client()
        .post(gw.url("/v1/messages"))
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(up.requests()[1].body_str(), raw);
}
