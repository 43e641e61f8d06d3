//! Scripted "models" for the real-client conformance suite: deterministic
//! upstreams that speak each dialect's real wire format.
//!
//! Each one reads the conversation it is sent and decides:
//! - a `tool_result` (Anthropic) / `tool` message (OpenAI) is in the last
//!   turn → answer with text quoting it (`The file says: …`);
//! - the last user text asks to "read the file PATH" → call Claude Code's
//!   `Read` tool with that path;
//! - otherwise → a short text (`pong`, when asked to say it).
//!
//! Streams use realistic chunking: every event its own write, one event
//! split across two writes, thinking/reasoning deltas before the answer, and
//! usage where the dialect puts it. Use with [`super::Reply::script`].

use serde_json::{json, Value};

use super::mock::{Recorded, Reply, SseStep};

/// What the scripted model does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    Text(String),
    Read(String),
}

/// The decision, from the last user text and the last tool result.
pub fn decide(user_text: &str, tool_result: Option<&str>) -> Turn {
    if let Some(result) = tool_result {
        return Turn::Text(format!("The file says: {result}"));
    }
    let lower = user_text.to_lowercase();
    if let Some(at) = lower.find("read the file ") {
        let rest = &user_text[at + "read the file ".len()..];
        let path: String = rest
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(|c: char| !c.is_alphanumeric())
            .to_string();
        if !path.is_empty() {
            return Turn::Read(path);
        }
    }
    if lower.contains("pong") {
        return Turn::Text("pong".into());
    }
    Turn::Text("ok".into())
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `text` cut in two at a character boundary near its middle.
fn halves(text: &str) -> (&str, &str) {
    let mid = (text.len() / 2..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text.split_at(mid)
}

fn event(name: &str, data: Value) -> SseStep {
    SseStep::Chunk(format!("event: {name}\ndata: {data}\n\n"))
}

/// Split the stream's second-to-last chunk in two (a realistic TCP split).
fn split_one(mut steps: Vec<SseStep>) -> Vec<SseStep> {
    let at = steps.len().saturating_sub(2);
    if let Some(SseStep::Chunk(c)) = steps.get(at).cloned() {
        let (a, b) = halves(&c);
        steps[at] = SseStep::Chunk(a.to_string());
        steps.insert(at + 1, SseStep::Chunk(b.to_string()));
    }
    steps
}

/// An Anthropic Messages upstream (also answers `count_tokens`).
pub fn anthropic(rec: &Recorded) -> Reply {
    if rec.path().ends_with("/count_tokens") {
        let n = rec.body.len() / 4;
        return Reply::json(200, json!({ "input_tokens": n }).to_string());
    }
    let req = rec.json();
    anthropic_answer(rec, &req, req["stream"] == true)
}

/// Bedrock InvokeModel with an Anthropic model: the same answers, the
/// stream as `application/vnd.amazon.eventstream` frames.
pub fn bedrock(rec: &Recorded) -> Reply {
    let req = rec.json();
    let stream = rec.path().ends_with("/invoke-with-response-stream");
    match anthropic_answer(rec, &req, stream) {
        Reply::Sse { chunks, .. } => {
            let frames = chunks
                .into_iter()
                .filter_map(|step| match step {
                    SseStep::Chunk(c) => Some(c),
                    _ => None,
                })
                .collect::<String>()
                .split("\n\n")
                .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string))
                .filter(|data| !data.contains("\"ping\""))
                .map(|data| SseStep::Bytes(modelgate::dialects::bedrock::stream::encode_chunk(&data).into()))
                .collect();
            Reply::sse(frames).with_header("content-type", "application/vnd.amazon.eventstream")
        }
        other => other,
    }
}

fn anthropic_answer(rec: &Recorded, req: &Value, stream: bool) -> Reply {
    let last = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or(Value::Null);
    let tool_result = last["content"].as_array().and_then(|blocks| {
        blocks
            .iter()
            .find(|b| b["type"] == "tool_result")
            .map(|b| text_of(&b["content"]))
    });
    let turn = decide(&text_of(&last["content"]), tool_result.as_deref());
    let model = req["model"].as_str().unwrap_or("claude").to_string();
    let thinking = req["thinking"]["type"] == "enabled" || req["thinking"]["type"] == "adaptive";
    let input_tokens = (rec.body.len() / 4) as u64;
    let (block, stop) = match &turn {
        Turn::Text(t) => (json!({"type": "text", "text": t}), "end_turn"),
        Turn::Read(path) => (
            json!({"type": "tool_use", "id": format!("toolu_mock{:08}", input_tokens % 100_000_000), "name": "Read", "input": {"file_path": path}}),
            "tool_use",
        ),
    };
    let usage = json!({"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 17});
    if !stream {
        let mut content = Vec::new();
        if thinking {
            content.push(json!({"type": "thinking", "thinking": "Deciding.", "signature": "c2lnbmF0dXJl"}));
        }
        content.push(block);
        let msg = json!({"id": "msg_mockmodel", "type": "message", "role": "assistant", "model": model, "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage});
        return Reply::json(200, msg.to_string());
    }
    let mut steps = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mockmodel", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    )];
    steps.push(event("ping", json!({"type": "ping"})));
    let mut index = 0;
    if thinking {
        steps.push(event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
        steps.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Deciding."}})));
        steps.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}})));
        steps.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        index = 1;
    }
    match &turn {
        Turn::Text(t) => {
            steps.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
            ));
            let (a, b) = halves(t);
            for piece in [a, b] {
                if !piece.is_empty() {
                    steps.push(event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})));
                }
            }
        }
        Turn::Read(path) => {
            let mut start = block.clone();
            start["input"] = json!({});
            steps.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            let args = json!({ "file_path": path }).to_string();
            let (a, b) = halves(&args);
            for piece in [a, b] {
                steps.push(event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})));
            }
        }
    }
    steps.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
    steps.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
    ));
    steps.push(event("message_stop", json!({"type": "message_stop"})));
    Reply::sse(split_one(steps))
}

/// An OpenAI Chat Completions upstream.
pub fn openai(rec: &Recorded) -> Reply {
    let req = rec.json();
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let tool_result = (last["role"] == "tool").then(|| text_of(&last["content"]));
    let user_text = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let turn = decide(&user_text, tool_result.as_deref());
    let model = req["model"].as_str().unwrap_or("gpt").to_string();
    let prompt_tokens = (rec.body.len() / 4) as u64;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": 17, "total_tokens": prompt_tokens + 17, "prompt_tokens_details": {"cached_tokens": 0}});
    let (finish, tool_call) = match &turn {
        Turn::Text(_) => ("stop", None),
        Turn::Read(path) => (
            "tool_calls",
            Some(
                json!({"id": "call_mockread", "type": "function", "function": {"name": "Read", "arguments": json!({"file_path": path}).to_string()}}),
            ),
        ),
    };
    if req["stream"] != true {
        let mut message = json!({"role": "assistant", "content": null, "reasoning_content": "Deciding."});
        match (&turn, &tool_call) {
            (Turn::Text(t), _) => message["content"] = json!(t),
            (_, Some(call)) => message["tool_calls"] = json!([call]),
            _ => {}
        }
        let body = json!({"id": "chatcmpl-mockmodel", "object": "chat.completion", "created": 1_700_000_000u64, "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
        return Reply::json(200, body.to_string());
    }
    let chunk = |delta: Value, finish: Value| json!({"id": "chatcmpl-mockmodel", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let mut chunks = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"reasoning_content": "Deciding."}), Value::Null),
    ];
    match &turn {
        Turn::Text(t) => {
            let (a, b) = halves(t);
            chunks.push(chunk(json!({"content": a}), Value::Null));
            chunks.push(chunk(json!({"content": b}), json!("stop")));
        }
        Turn::Read(path) => {
            let args = json!({ "file_path": path }).to_string();
            let (a, b) = halves(&args);
            chunks.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_mockread", "type": "function", "function": {"name": "Read", "arguments": a}}]}),
                Value::Null,
            ));
            chunks.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
                Value::Null,
            ));
            chunks.push(chunk(json!({}), json!("tool_calls")));
        }
    }
    let mut steps = super::mock::openai_sse_chunks(&chunks);
    // The usage chunk (stream_options.include_usage) comes before [DONE].
    let done = steps.pop();
    steps.push(SseStep::Chunk(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-mockmodel", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
    )));
    steps.extend(done);
    Reply::sse(split_one(steps))
}

/// The thought signature the scripted Gemini puts on its function calls,
/// and insists on seeing again (as Gemini 3 does).
pub const GEMINI_SIGNATURE: &str = "bW9ja2dlbWluaXNpZ25hdHVyZQ==";

/// A Gemini API (`generateContent` / `streamGenerateContent?alt=sse`)
/// upstream. Like Gemini 3, it refuses a history whose function call lost
/// its thought signature.
pub fn gemini(rec: &Recorded) -> Reply {
    let req = rec.json();
    let contents = req["contents"].as_array().cloned().unwrap_or_default();
    let unsigned = contents.iter().filter(|c| c["role"] == "model").any(|c| {
        c["parts"].as_array().is_some_and(|parts| {
            parts
                .iter()
                .any(|p| p.get("functionCall").is_some() && p["thoughtSignature"] != GEMINI_SIGNATURE)
        })
    });
    if unsigned {
        return Reply::json(
            400,
            r#"{"error":{"code":400,"message":"Function call is missing a thought_signature in functionCall parts.","status":"INVALID_ARGUMENT"}}"#,
        );
    }
    let last = contents.last().cloned().unwrap_or(Value::Null);
    let parts = last["parts"].as_array().cloned().unwrap_or_default();
    let tool_result = parts.iter().find_map(|p| {
        let r = &p["functionResponse"]["response"];
        r.get("result")
            .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
    });
    let user_text: String = parts
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let turn = decide(&user_text, tool_result.as_deref());
    let prompt = (rec.body.len() / 4) as u64;
    let usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": 17, "thoughtsTokenCount": 5, "totalTokenCount": prompt + 22});
    let answer: Vec<Value> = match &turn {
        Turn::Text(t) => vec![json!({ "text": t })],
        Turn::Read(path) => {
            vec![
                json!({"functionCall": {"name": "Read", "args": {"file_path": path}}, "thoughtSignature": GEMINI_SIGNATURE}),
            ]
        }
    };
    let chunk = |parts: Vec<Value>, last: bool| {
        let mut c = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}], "modelVersion": "gemini-2.5-pro"});
        if last {
            c["candidates"][0]["finishReason"] = json!("STOP");
            c["usageMetadata"] = usage.clone();
        }
        c
    };
    if !rec.uri.contains(":streamGenerateContent") {
        let mut all = vec![json!({"text": "Deciding.", "thought": true})];
        all.extend(answer);
        return Reply::json(200, chunk(all, true).to_string());
    }
    let mut chunks = vec![chunk(vec![json!({"text": "Deciding.", "thought": true})], false)];
    match &turn {
        Turn::Text(t) => {
            let (a, b) = halves(t);
            chunks.push(chunk(vec![json!({ "text": a })], false));
            chunks.push(chunk(vec![json!({ "text": b })], true));
        }
        Turn::Read(_) => chunks.push(chunk(answer, true)),
    }
    let steps: Vec<SseStep> = chunks
        .iter()
        .map(|c| SseStep::Chunk(format!("data: {c}\r\n\r\n")))
        .collect();
    Reply::sse(split_one(steps)).with_header("content-type", "text/event-stream")
}
