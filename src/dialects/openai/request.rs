//! Anthropic Messages request → OpenAI Chat Completions request
//! (`docs/protocol-notes.md` §3.1).
//!
//! One pure function, [`translate_request`]. It owns every mapping decision
//! for the request direction: roles and block types, tool pairing and
//! naming, reasoning, token limits, and which Anthropic-only fields are
//! dropped. It never sees headers, credentials or the network; the caller
//! decides where the bytes go.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Flavor, ToolNames};
use crate::dialects::anthropic::types::{Block, Content, Request, Role, Source, Thinking, Tool};

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("request body does not match the Messages API: {0}")]
    Shape(String),
    #[error("{0}")]
    Unsupported(String),
}

pub struct RequestOptions<'a> {
    pub flavor: Flavor,
    /// The model id to send (after any route rename).
    pub upstream_model: &'a str,
}

/// A translated request and what the response direction needs to undo it.
#[derive(Debug)]
pub struct Translated {
    pub body: Vec<u8>,
    pub stream: bool,
    pub tool_names: ToolNames,
    /// A cheap estimate of prompt tokens (bytes / 4), to seed `message_start`.
    pub estimated_input_tokens: u64,
    /// What was dropped or changed and why, for the debug log.
    pub notes: Vec<String>,
}

/// What the gateway knows of an OpenAI model: whether it reasons (then it
/// takes `max_completion_tokens` and no sampling overrides) and its output cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
    pub reasoning: bool,
    pub max_output: Option<u64>,
}

/// Output-token caps from OpenAI's model pages (2026-11). Longest prefix first.
const MODELS: &[(&str, bool, u64)] = &[
    ("gpt-5", true, 128_000),
    ("o4-mini", true, 100_000),
    ("o3-mini", true, 100_000),
    ("o3", true, 100_000),
    ("o1-mini", true, 65_536),
    ("o1", true, 100_000),
    ("gpt-4.1", false, 32_768),
    ("gpt-4o", false, 16_384),
    ("chatgpt-4o", false, 16_384),
    ("gpt-4-turbo", false, 4_096),
    ("gpt-4", false, 8_192),
    ("gpt-3.5-turbo", false, 4_096),
];

pub fn model_info(model: &str) -> ModelInfo {
    // OpenRouter ids carry a vendor prefix: `openai/gpt-4o`.
    let bare = model.strip_prefix("openai/").unwrap_or(model);
    MODELS
        .iter()
        .find(|(prefix, _, _)| bare.starts_with(prefix))
        .map(|&(_, reasoning, max)| ModelInfo {
            reasoning,
            max_output: Some(max),
        })
        .unwrap_or(ModelInfo {
            reasoning: false,
            max_output: None,
        })
}

/// OpenAI accepts at most four stop sequences.
const MAX_STOP: usize = 4;
/// Claude Code's attribution block: billing metadata for Anthropic, noise elsewhere.
const ATTRIBUTION_PREFIX: &str = "x-anthropic-billing-header:";

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop: Vec<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ChatTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum ChatMessage<'a> {
    System {
        content: String,
    },
    User {
        content: UserContent<'a>,
    },
    Assistant {
        content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall<'a>>,
    },
    Tool {
        tool_call_id: Cow<'a, str>,
        content: String,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum UserContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrl<'a> },
    File { file: FilePart<'a> },
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: Cow<'a, str>,
}

#[derive(Serialize)]
struct FilePart<'a> {
    filename: Cow<'a, str>,
    file_data: String,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: String,
    /// OpenAI wants the arguments as a JSON *string*: the raw input, quoted.
    arguments: &'a str,
}

#[derive(Serialize)]
struct ChatTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDef<'a>,
}

#[derive(Serialize)]
struct FunctionDef<'a> {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// The tool's `input_schema`, copied as raw JSON — never merged with
    /// other keys (merging `type` in would clobber `"type":"object"`).
    parameters: &'a RawValue,
}

pub fn translate_request(body: &[u8], opts: &RequestOptions<'_>) -> Result<Translated, TranslateError> {
    let req: Request = serde_json::from_slice(body).map_err(|e| TranslateError::Shape(e.to_string()))?;
    let info = model_info(opts.upstream_model);
    let mut notes = Vec::new();
    let mut names = ToolNames::default();

    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        let text = system_text(system);
        if !text.is_empty() {
            messages.push(ChatMessage::System { content: text });
        }
    }
    for m in &req.messages {
        match m.role {
            Role::System => {
                let text = system_text(&m.content);
                if !text.is_empty() {
                    messages.push(ChatMessage::System { content: text });
                }
            }
            Role::User => user_messages(&m.content, opts.flavor, &mut messages, &mut notes),
            Role::Assistant => {
                if let Some(msg) = assistant_message(&m.content, &mut names) {
                    messages.push(msg);
                }
            }
        }
    }

    let tools = translate_tools(&req.tools, &mut names, &mut notes);
    let (tool_choice, parallel_tool_calls) = match (&req.tool_choice, tools.is_empty()) {
        (Some(tc), false) => {
            let choice = match &*tc.kind {
                "any" => json!("required"),
                "none" => json!("none"),
                "tool" => match &tc.name {
                    Some(n) => json!({"type": "function", "function": {"name": names.to_upstream(n)}}),
                    None => json!("required"),
                },
                _ => json!("auto"),
            };
            (Some(choice), tc.disable_parallel_tool_use.then_some(false))
        }
        _ => (None, None),
    };

    let limit = |n: u64| info.max_output.map_or(n, |cap| n.min(cap));
    let (max_tokens, max_completion_tokens) = match req.max_tokens.map(limit) {
        Some(n) if info.reasoning => (None, Some(n)),
        other => (other, None),
    };
    if let (Some(asked), Some(cap)) = (req.max_tokens, info.max_output) {
        if asked > cap {
            notes.push(format!(
                "max_tokens {asked} clamped to {cap} for {}",
                opts.upstream_model
            ));
        }
    }
    // Reasoning models reject sampling overrides.
    let (temperature, top_p) = if info.reasoning {
        (req.temperature.filter(|t| (*t - 1.0).abs() < f64::EPSILON), None)
    } else {
        (req.temperature, req.top_p)
    };
    let top_k = if opts.flavor == Flavor::OpenRouter {
        req.top_k
    } else {
        None
    };

    let mut stop: Vec<&str> = req.stop_sequences.iter().map(|s| s.as_ref()).collect();
    if stop.len() > MAX_STOP {
        notes.push(format!("{} stop sequences truncated to {MAX_STOP}", stop.len()));
        stop.truncate(MAX_STOP);
    }

    let (reasoning_effort, reasoning) = reasoning_fields(&req, opts.flavor, info);
    let response_format = req
        .output_config
        .as_ref()
        .and_then(|o| o.format)
        .or(req.output_format)
        .and_then(response_format);
    let user = req
        .metadata
        .as_ref()
        .and_then(|m| m.user_id.as_deref())
        .filter(|u| !u.is_empty())
        .map(|u| hex::encode(Sha256::digest(u.as_bytes())));

    let chat = ChatRequest {
        model: opts.upstream_model,
        messages,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        top_k,
        stop,
        stream: req.stream,
        stream_options: req.stream.then(|| json!({"include_usage": true})),
        tools,
        tool_choice,
        parallel_tool_calls,
        reasoning_effort,
        reasoning,
        response_format,
        user,
    };
    let body = serde_json::to_vec(&chat).map_err(|e| TranslateError::Shape(e.to_string()))?;
    Ok(Translated {
        estimated_input_tokens: (body.len() as u64 / 4).max(1),
        body,
        stream: req.stream,
        tool_names: names,
        notes,
    })
}

/// System text: blocks joined by blank lines, the attribution block left out.
fn system_text(content: &Content<'_>) -> String {
    match content {
        Content::Text(t) => t.trim().to_string(),
        Content::Blocks(blocks) => {
            let mut out = String::new();
            for b in blocks {
                if let Block::Text { text } = b {
                    if text.trim().is_empty() || text.starts_with(ATTRIBUTION_PREFIX) {
                        continue;
                    }
                    if !out.is_empty() {
                        out.push_str("\n\n");
                    }
                    out.push_str(text);
                }
            }
            out
        }
    }
}

/// One Anthropic user message becomes: a `tool` message per `tool_result`
/// (first, so they follow the assistant's `tool_calls` directly), then one
/// user message with the remaining text, images and documents, plus any
/// images the tool results carried (tool messages take text only).
fn user_messages<'a>(
    content: &'a Content<'a>,
    flavor: Flavor,
    out: &mut Vec<ChatMessage<'a>>,
    notes: &mut Vec<String>,
) {
    let blocks = match content {
        Content::Text(t) => {
            if !t.trim().is_empty() {
                out.push(ChatMessage::User {
                    content: UserContent::Text(Cow::Borrowed(t)),
                });
            }
            return;
        }
        Content::Blocks(b) => b,
    };
    let mut parts = Vec::new();
    let mut result_images = Vec::new();
    for b in blocks {
        match b {
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut text = match content {
                    Some(Content::Text(t)) => t.to_string(),
                    Some(Content::Blocks(inner)) => {
                        let mut text = String::new();
                        for ib in inner {
                            match ib {
                                Block::Text { text: t } if !t.trim().is_empty() => {
                                    if !text.is_empty() {
                                        text.push('\n');
                                    }
                                    text.push_str(t);
                                }
                                Block::Image { source } => {
                                    if let Some(p) = image_part(source) {
                                        result_images.push(p);
                                    }
                                }
                                _ => {}
                            }
                        }
                        text
                    }
                    None => String::new(),
                };
                if *is_error {
                    text.insert_str(0, "Error: ");
                }
                if text.trim().is_empty() {
                    text.push_str("(no output)");
                }
                out.push(ChatMessage::Tool {
                    tool_call_id: upstream_call_id(tool_use_id),
                    content: text,
                });
            }
            Block::Text { text } if !text.trim().is_empty() => parts.push(Part::Text {
                text: Cow::Borrowed(text),
            }),
            Block::Image { source } => match image_part(source) {
                Some(p) => parts.push(p),
                None => notes.push(format!("image with source `{}` dropped", source.kind)),
            },
            Block::Document { source, title } => match document_part(source, title.as_deref(), flavor) {
                Ok(p) => parts.push(p),
                Err(why) => notes.push(why),
            },
            _ => {}
        }
    }
    parts.extend(result_images);
    match parts.len() {
        0 => {}
        1 if matches!(parts[0], Part::Text { .. }) => {
            if let Some(Part::Text { text }) = parts.pop() {
                out.push(ChatMessage::User {
                    content: UserContent::Text(text),
                });
            }
        }
        _ => out.push(ChatMessage::User {
            content: UserContent::Parts(parts),
        }),
    }
}

fn image_part<'a>(source: &'a Source<'a>) -> Option<Part<'a>> {
    let url = match (&*source.kind, &source.data, &source.url) {
        ("base64", Some(data), _) => Cow::Owned(format!(
            "data:{};base64,{data}",
            source.media_type.as_deref().unwrap_or("image/png")
        )),
        ("url", _, Some(url)) => Cow::Borrowed(url.as_ref()),
        _ => return None,
    };
    Some(Part::ImageUrl {
        image_url: ImageUrl { url },
    })
}

/// PDFs go as OpenAI `file` parts where the upstream takes them; plain-text
/// documents become text. Anything else is dropped, with the reason noted.
fn document_part<'a>(source: &'a Source<'a>, title: Option<&'a str>, flavor: Flavor) -> Result<Part<'a>, String> {
    match (&*source.kind, &source.data) {
        ("text", Some(data)) => Ok(Part::Text {
            text: match title {
                Some(t) => Cow::Owned(format!("{t}\n\n{data}")),
                None => Cow::Borrowed(data.as_ref()),
            },
        }),
        ("base64", Some(data)) if flavor != Flavor::Ollama => {
            let media = source.media_type.as_deref().unwrap_or("application/pdf");
            Ok(Part::File {
                file: FilePart {
                    filename: Cow::Borrowed(title.unwrap_or("document.pdf")),
                    file_data: format!("data:{media};base64,{data}"),
                },
            })
        }
        (kind, _) => Err(format!(
            "document with source `{kind}` dropped: not supported by this upstream"
        )),
    }
}

/// Text and tool calls of an assistant turn; thinking is dropped (it is
/// bound to the model that wrote it). `None` when nothing is left.
fn assistant_message<'a>(content: &'a Content<'a>, names: &mut ToolNames) -> Option<ChatMessage<'a>> {
    let (text, tool_calls) = match content {
        Content::Text(t) => (t.to_string(), Vec::new()),
        Content::Blocks(blocks) => {
            let mut calls = Vec::new();
            for b in blocks {
                if let Block::ToolUse { id, name, input } = b {
                    calls.push(ToolCall {
                        id: upstream_call_id(id),
                        kind: "function",
                        function: FunctionCall {
                            name: names.to_upstream(name),
                            arguments: input.get(),
                        },
                    });
                }
            }
            (content.joined_text("\n"), calls)
        }
    };
    let text = (!text.trim().is_empty()).then_some(text);
    if text.is_none() && tool_calls.is_empty() {
        return None;
    }
    Some(ChatMessage::Assistant {
        content: text,
        tool_calls,
    })
}

/// OpenAI rejects tool-call ids over 40 characters. Longer ids (from other
/// providers earlier in the session) are replaced by a hash, the same on the
/// `tool_calls` entry and its `tool` message, so the pairing survives.
const MAX_CALL_ID: usize = 40;

fn upstream_call_id(id: &str) -> Cow<'_, str> {
    if id.len() <= MAX_CALL_ID && !id.is_empty() {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(format!("call_{}", &hex::encode(Sha256::digest(id.as_bytes()))[..32]))
    }
}

fn translate_tools<'a>(tools: &'a [Tool<'a>], names: &mut ToolNames, notes: &mut Vec<String>) -> Vec<ChatTool<'a>> {
    static EMPTY_SCHEMA: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    let empty = EMPTY_SCHEMA.get_or_init(|| {
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_string()).unwrap_or_else(|_| unreachable!())
    });
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
            notes.push(format!("server tool `{kind}` dropped: no OpenAI equivalent"));
            continue;
        }
        let original = match t.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("tool_{i}")),
        };
        out.push(ChatTool {
            kind: "function",
            function: FunctionDef {
                name: names.to_upstream(&original),
                description: t.description.as_deref().filter(|d| !d.is_empty()),
                parameters: t.input_schema.unwrap_or(empty),
            },
        });
    }
    out
}

/// `thinking` → `reasoning_effort` (OpenAI reasoning models, Ollama) or
/// `reasoning` (OpenRouter). Budgets bucket like LiteLLM's, capped at `high`.
fn reasoning_fields(req: &Request<'_>, flavor: Flavor, info: ModelInfo) -> (Option<&'static str>, Option<Value>) {
    let from_budget = |b: u64| match b {
        0..=2047 => "low",
        2048..=8191 => "medium",
        _ => "high",
    };
    let adaptive_effort = || match req.output_config.as_ref().and_then(|o| o.effort.as_deref()) {
        Some("low") => "low",
        Some("high") | Some("max") => "high",
        _ => "medium",
    };
    match (&req.thinking, flavor) {
        (Some(Thinking::Enabled { budget_tokens }), Flavor::OpenRouter) => {
            (None, Some(json!({"max_tokens": budget_tokens})))
        }
        (Some(Thinking::Adaptive), Flavor::OpenRouter) => (None, Some(json!({"effort": adaptive_effort()}))),
        (Some(Thinking::Enabled { budget_tokens }), Flavor::Ollama) => (Some(from_budget(*budget_tokens)), None),
        (Some(Thinking::Enabled { budget_tokens }), _) if info.reasoning => (Some(from_budget(*budget_tokens)), None),
        (Some(Thinking::Adaptive), Flavor::OpenAi | Flavor::Azure) if info.reasoning => (Some(adaptive_effort()), None),
        _ => (None, None),
    }
}

/// `output_config.format` `{type:"json_schema", schema}` → strict
/// `response_format`: strict mode needs `additionalProperties:false` and
/// every property required, at every level.
fn response_format(raw: &RawValue) -> Option<Value> {
    let format: Value = serde_json::from_str(raw.get()).ok()?;
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    let mut schema = format.get("schema").cloned()?;
    make_strict(&mut schema);
    Some(json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}))
}

fn make_strict(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("object") {
                if let Some(Value::Object(props)) = map.get("properties") {
                    let required: Vec<Value> = props.keys().map(|k| Value::String(k.clone())).collect();
                    map.insert("required".into(), Value::Array(required));
                }
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for child in map.values_mut() {
                make_strict(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_strict),
        _ => {}
    }
}
