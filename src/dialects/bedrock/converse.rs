//! Anthropic Messages ⇄ Bedrock Converse / ConverseStream, for every
//! Bedrock model that is not Anthropic's (`docs/protocol-notes.md` §5.2).
//! Pure functions and one incremental stream state machine; the
//! event-stream framing is [`super::stream::EventStreamToSse`]'s decoder.
//!
//! Converse rejects blank text, so empty and whitespace-only text is
//! dropped and a message left empty carries `"."`. Thinking blocks in the
//! history are dropped (other vendors' models cannot verify Anthropic
//! signatures). `cache_control` becomes a `cachePoint` after its block.

use serde_json::{json, Map, Value};

use super::stream::FrameReader;
use super::{map_exception, BedrockError};
use crate::dialects::anthropic::emit::{BlockKind, Emitter};
use crate::dialects::Usage;

/// A Converse request and what the relay needs to answer in Anthropic terms.
#[derive(Debug)]
pub struct ConverseRequest {
    pub body: Vec<u8>,
    pub stream: bool,
    /// For `message_start`, before Bedrock reports the real count at the end.
    pub estimated_input_tokens: u64,
    pub notes: Vec<String>,
}

/// The Converse path for `model_id`.
pub fn converse_path(model_id: &str, stream: bool) -> String {
    let invoke = super::invoke_path(model_id, false);
    let base = invoke.trim_end_matches("/invoke");
    format!("{base}/{}", if stream { "converse-stream" } else { "converse" })
}

fn nonblank(text: &str) -> bool {
    !text.trim().is_empty()
}

fn image(source: &Value, notes: &mut Vec<String>) -> Option<Value> {
    match source["type"].as_str() {
        Some("base64") => {
            let format = source["media_type"]
                .as_str()
                .unwrap_or("image/png")
                .trim_start_matches("image/");
            Some(json!({"image": {"format": format, "source": {"bytes": source["data"]}}}))
        }
        _ => {
            notes.push("dropped an image given by URL (Converse takes image bytes only)".into());
            None
        }
    }
}

fn cache_point(block: &Value, out: &mut Vec<Value>) {
    if block.get("cache_control").is_some_and(|c| !c.is_null()) {
        out.push(json!({"cachePoint": {"type": "default"}}));
    }
}

fn tool_result_content(content: &Value, notes: &mut Vec<String>) -> Vec<Value> {
    let mut out = Vec::new();
    match content {
        Value::String(s) if nonblank(s) => out.push(json!({ "text": s })),
        Value::Array(blocks) => {
            for b in blocks {
                match b["type"].as_str() {
                    Some("text") if b["text"].as_str().is_some_and(nonblank) => out.push(json!({"text": b["text"]})),
                    Some("image") => out.extend(image(&b["source"], notes)),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if out.is_empty() {
        out.push(json!({"text": "[No output]"}));
    }
    out
}

fn blocks(content: &Value, notes: &mut Vec<String>, documents: &mut usize) -> Vec<Value> {
    let mut out = Vec::new();
    match content {
        Value::String(s) if nonblank(s) => out.push(json!({ "text": s })),
        Value::Array(items) => {
            for b in items {
                match b["type"].as_str() {
                    Some("text") => {
                        if b["text"].as_str().is_some_and(nonblank) {
                            out.push(json!({"text": b["text"]}));
                        }
                    }
                    Some("image") => out.extend(image(&b["source"], notes)),
                    Some("document") => match b["source"]["type"].as_str() {
                        Some("base64") => {
                            *documents += 1;
                            out.push(json!({"document": {"format": "pdf", "name": format!("document-{documents}"), "source": {"bytes": b["source"]["data"]}}}));
                        }
                        Some("text") if b["source"]["data"].as_str().is_some_and(nonblank) => {
                            out.push(json!({"text": b["source"]["data"]}))
                        }
                        _ => notes.push("dropped a document Converse cannot take (URL or file reference)".into()),
                    },
                    Some("tool_use") => {
                        out.push(json!({"toolUse": {"toolUseId": b["id"], "name": b["name"], "input": b["input"]}}))
                    }
                    Some("tool_result") => out.push(json!({"toolResult": {
                        "toolUseId": b["tool_use_id"],
                        "content": tool_result_content(&b["content"], notes),
                        "status": if b["is_error"] == true { "error" } else { "success" },
                    }})),
                    Some("thinking") | Some("redacted_thinking") => notes
                        .push("dropped thinking blocks from the history (only Anthropic models verify them)".into()),
                    other => notes.push(format!(
                        "dropped a `{}` block Converse has no form for",
                        other.unwrap_or("?")
                    )),
                }
                cache_point(b, &mut out);
            }
        }
        _ => {}
    }
    out
}

/// The Converse body for an Anthropic Messages `body`.
pub fn converse_request(body: &[u8]) -> Result<ConverseRequest, BedrockError> {
    let req: Value = serde_json::from_slice(body).map_err(|e| BedrockError::Malformed(e.to_string()))?;
    if !req.is_object() {
        return Err(BedrockError::Malformed("expected a JSON object".into()));
    }
    let mut notes = Vec::new();
    let mut documents = 0;
    let mut out = Map::new();
    let mut system = Vec::new();
    match &req["system"] {
        Value::String(s) if nonblank(s) => system.push(json!({ "text": s })),
        Value::Array(items) => {
            for b in items {
                if b["text"].as_str().is_some_and(nonblank) {
                    system.push(json!({"text": b["text"]}));
                }
                cache_point(b, &mut system);
            }
        }
        _ => {}
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut messages = Vec::new();
    for m in req["messages"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let mut content = blocks(&m["content"], &mut notes, &mut documents);
        if content.iter().all(|b| b.get("cachePoint").is_some()) {
            content.insert(0, json!({"text": "."}));
        }
        messages.push(json!({"role": m["role"], "content": content}));
    }
    out.insert("messages".into(), Value::Array(messages));
    let mut inference = Map::new();
    if let Some(n) = req["max_tokens"].as_u64() {
        inference.insert("maxTokens".into(), n.into());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = req.get(from).filter(|v| v.is_number()) {
            inference.insert(to.into(), v.clone());
        }
    }
    if let Some(stops) = req["stop_sequences"].as_array().filter(|s| !s.is_empty()) {
        inference.insert("stopSequences".into(), Value::Array(stops.clone()));
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    for field in ["top_k", "thinking", "output_config", "context_management"] {
        if req.get(field).is_some_and(|v| !v.is_null()) {
            notes.push(format!("dropped `{field}` (no Converse equivalent for this model)"));
        }
    }
    let tools: Vec<Value> = req["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| match t.get("input_schema") {
            Some(schema) => {
                let mut spec = json!({"name": t["name"], "inputSchema": {"json": schema}});
                if let Some(d) = t["description"].as_str().filter(|d| nonblank(d)) {
                    spec["description"] = json!(d);
                }
                Some(json!({ "toolSpec": spec }))
            }
            None => {
                notes.push(format!("dropped server tool `{}`", t["name"].as_str().unwrap_or("?")));
                None
            }
        })
        .collect();
    if !tools.is_empty() {
        // Converse wants `toolConfig` whenever the history has tool blocks,
        // even when the client turned tool use off (`none`).
        let mut config = json!({ "tools": tools });
        match req["tool_choice"]["type"].as_str() {
            Some("any") => config["toolChoice"] = json!({"any": {}}),
            Some("tool") => config["toolChoice"] = json!({"tool": {"name": req["tool_choice"]["name"]}}),
            Some("auto") => config["toolChoice"] = json!({"auto": {}}),
            _ => {}
        }
        out.insert("toolConfig".into(), config);
    }
    notes.sort();
    notes.dedup();
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| BedrockError::Malformed(e.to_string()))?;
    Ok(ConverseRequest {
        estimated_input_tokens: (body.len() / 4) as u64,
        stream: req["stream"] == true,
        body,
        notes,
    })
}

/// Converse's `stopReason` in Anthropic terms.
pub fn stop_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("tool_use") => "tool_use",
        Some("max_tokens") => "max_tokens",
        Some("stop_sequence") => "stop_sequence",
        Some("guardrail_intervened") | Some("content_filtered") => "refusal",
        Some("model_context_window_exceeded") => "model_context_window_exceeded",
        _ => "end_turn",
    }
}

fn usage(u: &Value) -> Usage {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    Usage {
        input_tokens: n("inputTokens"),
        output_tokens: n("outputTokens"),
        cache_read_input_tokens: n("cacheReadInputTokens"),
        cache_creation_input_tokens: n("cacheWriteInputTokens"),
    }
}

/// A Converse (non-streaming) answer as an Anthropic message.
pub fn converse_response(body: &[u8], client_model: &str, message_id: &str) -> Result<(Vec<u8>, Usage), BedrockError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| BedrockError::Malformed(e.to_string()))?;
    let mut content = Vec::new();
    for b in v["output"]["message"]["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(t) = b["text"].as_str().filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": t}));
        } else if let Some(tu) = b.get("toolUse") {
            content.push(json!({"type": "tool_use", "id": tu["toolUseId"], "name": tu["name"], "input": tu["input"]}));
        } else if let Some(r) = b["reasoningContent"].get("reasoningText") {
            content.push(
                json!({"type": "thinking", "thinking": r["text"], "signature": r["signature"].as_str().unwrap_or("")}),
            );
        }
    }
    let u = usage(&v["usage"]);
    let out = json!({
        "id": message_id, "type": "message", "role": "assistant", "model": client_model, "content": content,
        "stop_reason": stop_reason(v["stopReason"].as_str()), "stop_sequence": null, "usage": u.to_json(),
    });
    Ok((serde_json::to_vec(&out).unwrap_or_default(), u))
}

/// ConverseStream → Anthropic SSE, incrementally: one Anthropic block per
/// Converse block (text blocks often arrive without a start event),
/// `messageStop` held until `metadata` brings the usage. Block bookkeeping
/// is [`Emitter`]'s; a Converse block's `contentBlockIndex` is its key.
pub struct ConverseStream {
    frames: FrameReader,
    emit: Emitter,
    estimated_input_tokens: u64,
    held_stop: Option<String>,
    usage: Usage,
}

impl ConverseStream {
    pub fn new(model: &str, message_id: &str, estimated_input_tokens: u64) -> Self {
        ConverseStream {
            frames: FrameReader::default(),
            emit: Emitter::new(message_id, model, estimated_input_tokens),
            estimated_input_tokens,
            held_stop: None,
            usage: Usage::default(),
        }
    }

    /// Emit `message_start` now, so nothing the relay adds (pings) precedes it.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        self.emit.start(out);
    }

    /// The usage of a stream cut short before `metadata` ([`Usage::cut_short`]).
    pub fn usage_so_far(&self) -> Usage {
        let reported = (self.usage != Usage::default()).then_some(self.usage);
        Usage::cut_short(reported, self.estimated_input_tokens, self.emit.generated_bytes())
    }

    fn on_event(&mut self, kind: &str, v: &Value, out: &mut Vec<u8>) {
        let at = v["contentBlockIndex"].as_u64().unwrap_or(0);
        let e = &mut self.emit;
        match kind {
            "messageStart" => e.start(out),
            "contentBlockStart" => {
                if let Some(tu) = v["start"].get("toolUse") {
                    let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
                    e.tool_start(at, &str_of(&tu["toolUseId"]), &str_of(&tu["name"]), out);
                }
            }
            "contentBlockDelta" => {
                let d = &v["delta"];
                if let Some(t) = d["text"].as_str() {
                    e.text(at, t, out);
                } else if let Some(input) = d["toolUse"]["input"].as_str().filter(|i| !i.is_empty()) {
                    let index = match e.open_index(at, BlockKind::Tool) {
                        Some(index) => index,
                        None => e.tool_start(at, &format!("toolu_bdrk_{at}"), "", out),
                    };
                    e.tool_input(index, input, out);
                } else if let Some(r) = d.get("reasoningContent") {
                    if let Some(t) = r["text"].as_str() {
                        e.thinking(at, t, out);
                    } else if let Some(s) = r["signature"].as_str() {
                        e.signature(at, s, out);
                    }
                }
            }
            "contentBlockStop" if e.is_open(at) => e.close(out),
            "messageStop" => self.held_stop = Some(v["stopReason"].as_str().unwrap_or("end_turn").to_string()),
            "metadata" => {
                self.usage = usage(&v["usage"]);
                self.end(out);
            }
            _ => {}
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        let reason = stop_reason(self.held_stop.as_deref());
        self.emit.end(reason, self.usage, out);
    }

    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.emit.is_done() {
            return;
        }
        self.frames.push(bytes);
        loop {
            let message = match self.frames.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    self.fail("api_error", &e.to_string(), out);
                    return;
                }
            };
            let header = |name: &str| super::stream::header(&message, name);
            if header(":message-type").as_deref() == Some("event") {
                let v: Value = serde_json::from_slice(message.payload()).unwrap_or(Value::Null);
                self.on_event(header(":event-type").as_deref().unwrap_or(""), &v, out);
            } else {
                let kind = header(":exception-type").unwrap_or_else(|| "internalServerException".into());
                let m: Value = serde_json::from_slice(message.payload()).unwrap_or(Value::Null);
                let (_, k, text) = map_exception(&kind, m["message"].as_str().unwrap_or(""));
                self.fail(k.as_str(), &text, out);
            }
            if self.emit.is_done() {
                return;
            }
        }
    }

    /// The upstream ended: a held `messageStop` still completes the message
    /// (usage estimated); anything else is an error.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.emit.is_done() {
            return;
        }
        if self.held_stop.is_some() {
            self.usage.input_tokens = self.estimated_input_tokens;
            self.end(out);
        } else {
            self.fail("api_error", "Bedrock ended the stream before messageStop", out);
        }
    }

    pub fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        self.emit.fail(kind, message, out);
    }

    pub fn is_done(&self) -> bool {
        self.emit.is_done()
    }

    pub fn completed(&self) -> bool {
        self.emit.completed()
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }
}

/// A ConverseStream event frame (for tests and mock upstreams).
pub fn encode_event(event_type: &str, payload: &Value) -> Vec<u8> {
    super::stream::encode_frame("event", (":event-type", event_type), &payload.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_text_never_reaches_converse() {
        let r = converse_request(br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"  "}]},{"role":"assistant","content":""},{"role":"user","content":"hi"}]}"#).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["messages"][0]["content"], json!([{"text": "."}]));
        assert_eq!(v["messages"][1]["content"], json!([{"text": "."}]));
        assert_eq!(v["messages"][2]["content"], json!([{"text": "hi"}]));
    }

    #[test]
    fn a_stream_holds_message_stop_until_metadata() {
        let frames = [
            encode_event("messageStart", &json!({"role": "assistant"})),
            encode_event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            ),
            encode_event("contentBlockStop", &json!({"contentBlockIndex": 0})),
            encode_event(
                "contentBlockStart",
                &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "Read"}}}),
            ),
            encode_event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"file_path\":\"/a\"}"}}}),
            ),
            encode_event("contentBlockStop", &json!({"contentBlockIndex": 1})),
            encode_event("messageStop", &json!({"stopReason": "tool_use"})),
            encode_event(
                "metadata",
                &json!({"usage": {"inputTokens": 10, "outputTokens": 5}, "metrics": {"latencyMs": 100}}),
            ),
        ]
        .concat();
        for split in [1, 5, 64, frames.len()] {
            let mut s = ConverseStream::new("nova-pro", "msg_1", 9);
            let mut out = Vec::new();
            for c in frames.chunks(split) {
                s.push(c, &mut out);
            }
            let text = String::from_utf8(out).unwrap();
            let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
            assert_eq!(
                names,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ],
                "split {split}"
            );
            assert!(text.contains(r#""stop_reason":"tool_use""#));
            assert!(s.completed());
            assert_eq!(s.usage().output_tokens, 5);
        }
    }
}
