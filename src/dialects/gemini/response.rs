//! Gemini `GenerateContentResponse` JSON → Anthropic Message JSON
//! (`docs/protocol-notes.md` §4.2), for `stream: false` — which is also
//! what Claude Code falls back to after a broken stream, so it must be a
//! complete, valid Message. Also the wire shapes of a response, shared with
//! [`super::stream`].
//!
//! Block order follows Anthropic's: thinking, then text, then tool_use.
//! Function names are mapped back to the client's; each call's id is
//! Gemini's or synthesised from the seed and the call's position, with its
//! thought signature appended ([`super::encode_tool_id`]). A body that is
//! an array (Vertex's non-SSE stream) is folded like a stream.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{
    encode_tool_id, stop_reason, tool_base_id, wrap_thought_signature, GeminiError, ToolNames, Usage, UsageMetadata,
    NO_CONTENT,
};
use crate::dialects::openai::message_id;

pub struct ResponseContext<'a> {
    /// The model the client asked for; the response names it.
    pub model: &'a str,
    pub tool_names: &'a ToolNames,
    /// Seed for the message id (when Gemini sends no `responseId`) and for
    /// tool ids (Gemini rarely sends call ids).
    pub seed: &'a str,
}

// ---- wire shapes -----------------------------------------------------------
//
// Parsed once per response or SSE event, borrowing from it: strings
// allocate only when they contain escapes, function arguments stay raw.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Chunk<'a> {
    #[serde(default, borrow)]
    pub candidates: Vec<Candidate<'a>>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default, borrow)]
    pub prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub response_id: Option<Cow<'a, str>>,
}

impl<'a> Chunk<'a> {
    /// The first candidate (the gateway never asks for more than one).
    pub fn candidate(&self) -> Option<&Candidate<'a>> {
        self.candidates
            .iter()
            .find(|c| c.index.unwrap_or(0) == 0)
            .or(self.candidates.first())
    }

    /// `promptFeedback.blockReason`, when the prompt itself was blocked.
    pub fn block_reason(&self) -> Option<&str> {
        self.prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_deref())
            .filter(|r| !r.is_empty() && *r != "BLOCKED_REASON_UNSPECIFIED")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Candidate<'a> {
    #[serde(default, borrow)]
    pub content: Option<CandidateContent<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub index: Option<u32>,
}

#[derive(Deserialize)]
pub(crate) struct CandidateContent<'a> {
    #[serde(default, borrow)]
    pub parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Part<'a> {
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub thought: bool,
    #[serde(default, borrow)]
    pub thought_signature: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct FunctionCall<'a> {
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub args: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
}

impl FunctionCall<'_> {
    /// The arguments' JSON text (`{}` when Gemini sent none).
    pub fn args_json(&self) -> &str {
        match self.args.map(|a| a.get().trim()) {
            Some(a) if a.starts_with('{') => a,
            _ => "{}",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PromptFeedback<'a> {
    #[serde(default, borrow)]
    pub block_reason: Option<Cow<'a, str>>,
}

// ---- translation -----------------------------------------------------------

#[derive(Default)]
struct Collected {
    /// Thinking blocks: text and Gemini signature.
    thinking: Vec<(String, Option<String>)>,
    text: String,
    tools: Vec<Value>,
    finish: Option<String>,
    blocked: bool,
    usage: Option<UsageMetadata>,
    response_id: Option<String>,
}

/// The Anthropic Message JSON, its usage, and its `stop_reason`.
pub fn translate_response(
    body: &[u8],
    ctx: &ResponseContext<'_>,
) -> Result<(Vec<u8>, Usage, &'static str), GeminiError> {
    // One response, or many (Vertex's JSON-array stream). Not an untagged
    // enum: serde buffers those, and buffered input cannot lend raw values.
    let bad = |e: serde_json::Error| GeminiError::BadUpstream(e.to_string());
    let chunks: Vec<Chunk> = if body.trim_ascii_start().starts_with(b"[") {
        serde_json::from_slice(body).map_err(bad)?
    } else {
        vec![serde_json::from_slice(body).map_err(bad)?]
    };
    let mut c = Collected::default();
    for chunk in &chunks {
        if let Some(error) = chunk.error {
            let error: Value = serde_json::from_str(error.get()).unwrap_or(Value::Null);
            let mapped = super::error::map_error_value(0, &error);
            return Err(GeminiError::BadUpstream(mapped.message));
        }
        collect(chunk, ctx, &mut c);
    }

    let saw_tool = !c.tools.is_empty();
    let produced = saw_tool || !c.text.is_empty() || !c.thinking.is_empty();
    let stop = if c.blocked {
        "refusal"
    } else {
        match stop_reason(c.finish.as_deref().unwrap_or("STOP"), saw_tool) {
            Some(s) => s,
            None if produced => "end_turn",
            None => {
                return Err(GeminiError::NoOutput(format!(
                    "Gemini could not produce a usable tool call ({})",
                    c.finish.as_deref().unwrap_or("unknown")
                )))
            }
        }
    };

    let mut content = Vec::with_capacity(c.thinking.len() + 1 + c.tools.len());
    for (text, sig) in c.thinking {
        let text = if text.is_empty() { NO_CONTENT.to_string() } else { text };
        let signature = sig.map(|s| wrap_thought_signature(&s)).unwrap_or_default();
        content.push(json!({"type": "thinking", "thinking": text, "signature": signature}));
    }
    if !c.text.is_empty() {
        content.push(json!({"type": "text", "text": c.text}));
    }
    content.extend(c.tools);

    let usage = c.usage.map(UsageMetadata::to_usage).unwrap_or_default();
    let message = json!({
        "id": message_id(c.response_id.as_deref(), ctx.seed),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage.to_json(),
    });
    let body = serde_json::to_vec(&message).map_err(|e| GeminiError::BadUpstream(e.to_string()))?;
    Ok((body, usage, stop))
}

fn collect(chunk: &Chunk<'_>, ctx: &ResponseContext<'_>, c: &mut Collected) {
    if let Some(u) = chunk.usage_metadata {
        c.usage = Some(u);
    }
    if c.response_id.is_none() {
        c.response_id = chunk.response_id.as_deref().map(str::to_string);
    }
    let Some(candidate) = chunk.candidate() else {
        c.blocked |= chunk.block_reason().is_some();
        return;
    };
    for part in candidate.content.iter().flat_map(|content| &content.parts) {
        if let Some(call) = &part.function_call {
            let base = tool_base_id(call.id.as_deref(), ctx.seed, c.tools.len());
            let input: Value = serde_json::from_str(call.args_json()).unwrap_or_else(|_| Value::Object(Map::new()));
            c.tools.push(json!({
                "type": "tool_use",
                "id": encode_tool_id(&base, part.thought_signature.as_deref()),
                "name": ctx.tool_names.to_original(&call.name),
                "input": input,
            }));
        } else if part.thought {
            let text = part.text.as_deref().unwrap_or("");
            // A signature ends a thinking block; text after it starts another.
            match c.thinking.last_mut() {
                Some((t, None)) => t.push_str(text),
                _ if text.is_empty() && part.thought_signature.is_none() => {}
                _ => c.thinking.push((text.to_string(), None)),
            }
            if let Some(sig) = part.thought_signature.as_deref().filter(|s| !s.is_empty()) {
                if let Some(last) = c.thinking.last_mut() {
                    last.1 = Some(sig.to_string());
                }
            }
        } else if let Some(text) = &part.text {
            // A plain text part's signature is dropped (see the module docs of `gemini`).
            c.text.push_str(text);
        }
    }
    if let Some(reason) = candidate.finish_reason.as_deref().filter(|r| !r.is_empty()) {
        c.finish = Some(reason.to_string());
    }
}
