//! Golden tests for the answers a client in a cloud's format gets
//! (`inbound:`, `docs/protocol-notes.md` §5.6): Bedrock's event-stream
//! frames, decoded back (headers and the Anthropic event inside each), for
//! a stream with thinking, a tool call and a mid-stream error; and
//! Bedrock's CountTokens answer. Vertex AI's and Foundry's answers are the
//! Messages API's own, relayed unchanged (`tests/inbound.rs`). Review
//! changes with `cargo insta review` (or INSTA_UPDATE=always).

use base64::Engine;
use modelgate::dialects::anthropic::cloud::ClientFormat;
use modelgate::dialects::bedrock::stream::FrameReader;
use serde_json::{json, Value};

fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

/// The stream re-framed for a Bedrock client, fed in `split`-byte pieces,
/// each frame decoded: its headers, and its payload (a chunk's Anthropic
/// event unwrapped).
fn bedrock_frames(stream: &str, split: usize) -> Value {
    let mut reframe = ClientFormat::Bedrock.stream_reframer().unwrap();
    let mut wire = Vec::new();
    for piece in stream.as_bytes().chunks(split) {
        reframe.push(piece, &mut wire);
    }
    reframe.finish(&mut wire);
    let mut reader = FrameReader::default();
    reader.push(&wire);
    let mut frames = Vec::new();
    while let Some(m) = reader.next_message().unwrap() {
        let headers: Vec<(String, String)> = m
            .headers()
            .iter()
            .map(|h| {
                (
                    h.name().as_str().to_string(),
                    h.value().as_string().unwrap().as_str().to_string(),
                )
            })
            .collect();
        let payload: Value = serde_json::from_slice(m.payload()).unwrap();
        let event = payload["bytes"].as_str().map(|b| {
            serde_json::from_slice::<Value>(&base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
        });
        frames.push(
            json!({"headers": headers, "event": event, "payload": if event.is_none() { payload } else { Value::Null }}),
        );
    }
    Value::Array(frames)
}

fn thinking_tool_stream() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-opus-4-5-20251101", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 120, "cache_read_input_tokens": 2000, "output_tokens": 1}}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Read the file first."}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCkYIBxgCKkD"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"file_path\": \"/tmp/a\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
        json!({"type": "message_stop"}),
    ]
}

#[test]
fn bedrock_stream_with_thinking_and_a_tool_call() {
    let stream = sse(&thinking_tool_stream());
    let whole = bedrock_frames(&stream, stream.len());
    // Any split of the SSE gives the same frames.
    for split in [1, 5, 64] {
        assert_eq!(bedrock_frames(&stream, split), whole, "split {split}");
    }
    // Every event but the ping comes back, unchanged.
    let events: Vec<&Value> = whole.as_array().unwrap().iter().map(|f| &f["event"]).collect();
    let sent: Vec<Value> = thinking_tool_stream()
        .into_iter()
        .filter(|e| e["type"] != "ping")
        .collect();
    assert_eq!(events, sent.iter().collect::<Vec<_>>());
    insta::assert_json_snapshot!("bedrock_stream_with_thinking_and_a_tool_call", whole);
}

#[test]
fn bedrock_stream_that_fails_midway() {
    let mut events = thinking_tool_stream();
    events.truncate(4);
    events.push(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    insta::assert_json_snapshot!("bedrock_stream_that_fails_midway", bedrock_frames(&sse(&events), 7));
}

#[test]
fn bedrock_count_tokens_answer() {
    let mut reframe = ClientFormat::Bedrock.count_reframer().unwrap();
    assert!(reframe.reframes(b"application/json") && !reframe.reframes(b"text/event-stream"));
    let mut out = Vec::new();
    reframe.push(br#"{"input_tokens":"#, &mut out);
    reframe.push(b"4217}", &mut out);
    reframe.finish(&mut out);
    insta::assert_snapshot!("bedrock_count_tokens_answer", String::from_utf8(out).unwrap());
    assert!(ClientFormat::Vertex.count_reframer().is_none() && ClientFormat::Foundry.stream_reframer().is_none());
}
