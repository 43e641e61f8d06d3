//! OpenAI Chat Completions JSON → Anthropic Message JSON
//! (`docs/protocol-notes.md` §3.3), for `stream: false` — which is also
//! what Claude Code falls back to after a broken stream, so it must be a
//! complete, valid Message.
//!
//! Block order follows Anthropic's: thinking, then text, then tool_use.
//! Tool names are mapped back to the client's; tool inputs are parsed
//! (repairing truncated JSON where that is unambiguous) because Anthropic
//! carries `input` as an object, not a string.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{anthropic_tool_id, message_id, stop_reason, ToolNames, Usage};

#[derive(Debug, thiserror::Error)]
#[error("upstream answer is not a Chat Completions response: {0}")]
pub struct ResponseError(pub String);

pub struct ResponseContext<'a> {
    /// The model the client asked for; the response names it.
    pub model: &'a str,
    pub tool_names: &'a ToolNames,
    /// Seed for ids when the upstream gives none.
    pub seed: &'a str,
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
}

#[derive(Deserialize)]
struct ToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Function,
}

#[derive(Deserialize, Default)]
struct Function {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

pub struct Translated {
    pub body: Vec<u8>,
    pub usage: Usage,
    pub stop_reason: &'static str,
}

/// The Anthropic Message written, fields in Anthropic's order (serialised
/// straight from these, no `Value` tree).
#[derive(Serialize)]
struct Message<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block>,
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
    usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Thinking { thinking: String, signature: &'static str },
    Text { text: String },
    ToolUse { id: String, name: String, input: Value },
}

pub fn translate_response(body: &[u8], ctx: &ResponseContext<'_>) -> Result<Translated, ResponseError> {
    let c: Completion = serde_json::from_slice(body).map_err(|e| ResponseError(e.to_string()))?;
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ResponseError("no choices".into()))?;
    let msg = choice.message.unwrap_or_default();
    let mut content = Vec::new();

    if let Some(thinking) = msg.reasoning_content.or(msg.reasoning).filter(|t| !t.is_empty()) {
        // No signature exists for another vendor's reasoning; an empty one
        // marks it as unsigned, and the request side never sends it back.
        content.push(Block::Thinking {
            thinking,
            signature: "",
        });
    }
    let text = match msg.content {
        Some(Value::String(s)) => s,
        // Some compatible servers answer with content parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(Block::Text { text });
    }
    if let Some(refusal) = msg.refusal.filter(|r| !r.is_empty()) {
        content.push(Block::Text { text: refusal });
    }
    let saw_tool = !msg.tool_calls.is_empty();
    for (i, call) in msg.tool_calls.into_iter().enumerate() {
        let input = match call.function.arguments {
            Some(Value::String(s)) => parse_arguments(&s),
            Some(Value::Object(o)) => Value::Object(o),
            _ => Value::Object(Map::new()),
        };
        content.push(Block::ToolUse {
            id: anthropic_tool_id(call.id.as_deref(), &format!("{}:{i}", ctx.seed)),
            name: ctx.tool_names.to_original(&call.function.name).to_string(),
            input,
        });
    }

    let usage = c.usage.as_ref().and_then(Usage::from_openai).unwrap_or_default();
    let stop = stop_reason(choice.finish_reason.as_deref(), saw_tool);
    let message = Message {
        id: message_id(c.id.as_deref(), ctx.seed),
        kind: "message",
        role: "assistant",
        model: ctx.model,
        content,
        stop_reason: stop,
        stop_sequence: None,
        usage,
    };
    Ok(Translated {
        body: serde_json::to_vec(&message).map_err(|e| ResponseError(e.to_string()))?,
        usage,
        stop_reason: stop,
    })
}

/// Tool arguments as a JSON object. Some models stop mid-object or add
/// trailing prose; close what is open, or fall back to an empty object so
/// the tool reports a clear input error instead of the turn failing.
pub fn parse_arguments(s: &str) -> Value {
    let s = s.trim();
    if s.is_empty() {
        return Value::Object(Map::new());
    }
    if let Ok(v @ Value::Object(_)) = serde_json::from_str(s) {
        return v;
    }
    if let Some(v) = repair_json(s) {
        return v;
    }
    log::warn!(
        "tool arguments are not a JSON object and could not be repaired ({} bytes)",
        s.len()
    );
    Value::Object(Map::new())
}

/// Close unbalanced strings, arrays and objects of a truncated JSON object.
fn repair_json(s: &str) -> Option<Value> {
    let mut stack = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in s.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => stack.push('}'),
            '[' => stack.push(']'),
            '}' | ']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    let mut fixed = s.trim_end_matches([',', ':']).to_string();
    if in_string {
        fixed.push('"');
    }
    while let Some(c) = stack.pop() {
        fixed.push(c);
    }
    match serde_json::from_str(&fixed) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repairs_truncated_arguments() {
        assert_eq!(parse_arguments(r#"{"command":"ls -la"#), json!({"command": "ls -la"}));
        assert_eq!(parse_arguments(r#"{"a":[1,2"#), json!({"a": [1, 2]}));
        assert_eq!(parse_arguments(""), json!({}));
        assert_eq!(parse_arguments("not json"), json!({}));
    }
}
