//! Anthropic Messages request → Gemini `generateContent` body
//! (`docs/protocol-notes.md` §4.1).
//!
//! One pure function, [`translate_request`]. It owns every decision of the
//! request direction: system text, roles and parts, tool-call/response
//! pairing, replayed thought signatures, tool declarations and names,
//! generation and thinking config, and which Anthropic-only fields are
//! dropped (each drop leaves a note for the debug log). It never sees
//! headers, credentials or the network.
//!
//! Choices worth knowing:
//! - Mid-conversation `role:"system"` entries become user text at their
//!   position (`docs/protocol-notes.md` §1.3): Gemini has one
//!   `systemInstruction`, and moving them there would reorder the
//!   conversation.
//! - Claude Code's attribution block (`x-anthropic-billing-header: …`) is
//!   left out of `systemInstruction`: it is billing metadata for Anthropic
//!   and would only break Gemini's implicit prompt caching.
//! - Every `functionCall` of a model turn gets exactly one
//!   `functionResponse` in the next user turn, in call order and before
//!   any other part; a missing result gets a placeholder error response,
//!   a result with no call in the turn before it is dropped (Gemini
//!   answers 400 on unequal counts, on every later turn of the session).
//! - Neither `functionCall.id` nor `functionResponse.id` is sent: Vertex
//!   rejects them, and Gemini pairs calls and responses by order.
//! - `thinking`: `enabled` → `thinkingBudget` clamped to the model's range
//!   on 2.5 (Pro 128..32768, Flash 0..24576, Flash-Lite 512..24576),
//!   `thinkingLevel` `low` (budget < 8192) or `high` on Gemini 3;
//!   `adaptive` → dynamic budget (-1) on 2.5, `thinkingLevel` from
//!   `output_config.effort` (`low` → `low`, else `high`) on Gemini 3; both
//!   with `includeThoughts: true`. `disabled`, absent, or a model with no
//!   thinking config (2.0, Gemma) → no `thinkingConfig`: the model default.
//! - `output_config.format` (structured output) → `responseMimeType:
//!   application/json` + `responseJsonSchema` (or the sanitised
//!   `responseSchema` in legacy mode).
//! - With function declarations present, `web_search` is dropped rather
//!   than sent as `googleSearch`: Gemini rejects built-in tools combined
//!   with function calling unless a per-model opt-in is set, and the
//!   client's own tools matter more than grounding.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{
    decode_tool_id, schema, unwrap_thought_signature, GeminiError, ModelFamily, Tier, ToolNames, GEMINI_NAMES,
    NO_CONTENT, SKIP_SIGNATURE_VALIDATOR,
};
use crate::dialects::anthropic::types::{Block, Content, OutputConfig, Role, Source, Thinking, ToolChoice};

pub struct RequestOptions<'a> {
    /// The model id to send (after any route rename); decides thinking
    /// config, output caps and signature placeholders.
    pub upstream_model: &'a str,
    /// Vertex AI rather than AI Studio. The `generateContent` body is the
    /// same for both (nothing this translator emits differs); the flag is
    /// here for [`super::count_tokens_body`]'s sake and future divergence.
    pub vertex: bool,
    /// Send tool schemas as the sanitised legacy `parameters` (see
    /// [`super::schema`]) instead of `parametersJsonSchema`.
    pub legacy_schema: bool,
}

/// A translated request and what the response direction needs to undo it.
#[derive(Debug)]
pub struct Translated {
    pub body: Vec<u8>,
    pub stream: bool,
    pub tool_names: ToolNames,
    /// A cheap estimate of prompt tokens (body bytes / 4), to seed `message_start`.
    pub estimated_input_tokens: u64,
    /// What was dropped or changed and why, for the debug log.
    pub notes: Vec<String>,
}

/// Claude Code's attribution block: billing metadata for Anthropic, noise elsewhere.
const ATTRIBUTION_PREFIX: &str = "x-anthropic-billing-header:";
/// Gemini accepts at most five stop sequences.
const MAX_STOP: usize = 5;
/// Result text for a tool call whose result the history lacks.
const MISSING_RESULT: &str = "No result was recorded for this tool call.";

const USER: &str = "user";
const MODEL: &str = "model";

// ---- the inbound view ------------------------------------------------------
//
// The request fields this translator reads; message content is
// `anthropic::types`' borrowing view, shared with the OpenAI translator.

#[derive(Deserialize)]
struct Req<'a> {
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default, borrow)]
    messages: Vec<Msg<'a>>,
    #[serde(default, borrow)]
    system: Option<Content<'a>>,
    #[serde(default, borrow)]
    tools: Vec<ToolDef<'a>>,
    #[serde(default, borrow)]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(default)]
    thinking: Option<Thinking>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u64>,
    #[serde(default, borrow)]
    stop_sequences: Vec<Cow<'a, str>>,
    #[serde(default)]
    stream: bool,
    #[serde(default, borrow)]
    output_config: Option<OutputConfig<'a>>,
    #[serde(default, borrow)]
    output_format: Option<&'a RawValue>,
    // Anthropic-only: noted, never sent.
    #[serde(default)]
    metadata: Option<IgnoredAny>,
    #[serde(default)]
    context_management: Option<IgnoredAny>,
    #[serde(default)]
    service_tier: Option<IgnoredAny>,
    #[serde(default)]
    speed: Option<IgnoredAny>,
    #[serde(default)]
    container: Option<IgnoredAny>,
    #[serde(default)]
    mcp_servers: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Msg<'a> {
    role: Role,
    #[serde(borrow)]
    content: Content<'a>,
}

#[derive(Deserialize)]
struct ToolDef<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    input_schema: Option<&'a RawValue>,
    #[serde(default)]
    cache_control: Option<IgnoredAny>,
    #[serde(default)]
    strict: Option<IgnoredAny>,
    #[serde(default)]
    defer_loading: Option<IgnoredAny>,
    #[serde(default)]
    eager_input_streaming: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct OutputFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
}

// ---- the Gemini body -------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    contents: Vec<GContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<GTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig<'a>>,
}

#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: Vec<GPart<'a>>,
}

#[derive(Serialize)]
struct GContent<'a> {
    role: &'static str,
    parts: Vec<GPart<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum GPart<'a> {
    Text {
        text: Cow<'a, str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        thought: bool,
        #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
        thought_signature: Option<Cow<'a, str>>,
    },
    InlineData {
        #[serde(rename = "inlineData")]
        inline_data: Blob<'a>,
    },
    FileData {
        #[serde(rename = "fileData")]
        file_data: FileRef<'a>,
    },
    FunctionCall {
        #[serde(rename = "functionCall")]
        function_call: Call<'a>,
        #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
        thought_signature: Option<String>,
        /// The Anthropic `tool_use.id`, for pairing only.
        #[serde(skip)]
        id: Cow<'a, str>,
    },
    FunctionResponse {
        #[serde(rename = "functionResponse")]
        function_response: Response,
        #[serde(skip)]
        id: Cow<'a, str>,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: Cow<'a, str>,
    data: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileRef<'a> {
    mime_type: Cow<'a, str>,
    file_uri: Cow<'a, str>,
}

#[derive(Serialize)]
struct Call<'a> {
    name: String,
    args: Args<'a>,
}

/// The client's tool input as raw JSON, or `{}` when it is not an object
/// (Gemini's `args` is a Struct).
enum Args<'a> {
    Raw(&'a RawValue),
    Empty,
}

impl Serialize for Args<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Args::Raw(raw) => raw.serialize(s),
            Args::Empty => serde::ser::SerializeMap::end(s.serialize_map(Some(0))?),
        }
    }
}

#[derive(Serialize)]
struct Response {
    name: String,
    response: ResponseBody,
}

#[derive(Serialize)]
struct ResponseBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GTool<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    function_declarations: Vec<FunctionDeclaration<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    google_search: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// The client's `input_schema`, copied as raw JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<Value>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.stop_sequences.is_empty()
            && self.response_mime_type.is_none()
            && self.thinking_config.is_none()
    }
}

/// Notes in first-seen order, each once.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn add(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }
}

// ---- translation -----------------------------------------------------------

const CACHE_CONTROL: &[u8] = b"\"cache_control\"";

pub fn translate_request(body: &[u8], opts: &RequestOptions<'_>) -> Result<Translated, GeminiError> {
    let req: Req = serde_json::from_slice(body).map_err(|e| GeminiError::Malformed(e.to_string()))?;
    let family = ModelFamily::of(opts.upstream_model);
    let mut notes = Notes::default();
    let mut names = ToolNames::default();
    if memchr::memmem::find(body, CACHE_CONTROL).is_some() {
        notes.add("cache_control dropped: Gemini caches implicitly");
    }

    // Function names for results come from the calls, over the whole
    // history: never derived from an id (`docs/protocol-notes.md` pitfall 6).
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in &req.messages {
        if let Content::Blocks(blocks) = &m.content {
            for b in blocks {
                if let Block::ToolUse { id, name, .. } = b {
                    call_names.insert(id, name);
                }
            }
        }
    }

    let system_instruction = system_parts(req.system.as_ref(), &mut notes);
    let mut contents: Vec<GContent> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let (role, parts) = match m.role {
            Role::System => (USER, text_parts(&m.content, &mut notes)),
            Role::User => (USER, user_parts(&m.content, &call_names, &mut names, &mut notes)),
            Role::Assistant => (MODEL, model_parts(&m.content, &mut names, &mut notes)),
        };
        push_merged(&mut contents, role, parts);
    }
    let mut contents = pair_tool_turns(contents, &mut notes);
    if family.is_3_or_later() {
        sign_unsigned_calls(&mut contents, &mut notes);
    }
    if contents.is_empty() {
        return Err(GeminiError::Malformed(
            "messages: no message has content Gemini can take".into(),
        ));
    }

    let (tools, declared) = translate_tools(&req.tools, opts.legacy_schema, &mut names, &mut notes)?;
    let tool_config = match (&req.tool_choice, declared) {
        (Some(tc), true) => {
            if tc.disable_parallel_tool_use {
                notes.add("tool_choice.disable_parallel_tool_use dropped: Gemini has no equivalent");
            }
            Some(match &*tc.kind {
                "any" => json!({"functionCallingConfig": {"mode": "ANY"}}),
                "none" => json!({"functionCallingConfig": {"mode": "NONE"}}),
                "tool" => match tc.name.as_deref() {
                    Some(n) => json!({"functionCallingConfig": {
                        "mode": "ANY",
                        "allowedFunctionNames": [names.to_upstream_with(n, &GEMINI_NAMES)],
                    }}),
                    None => json!({"functionCallingConfig": {"mode": "ANY"}}),
                },
                _ => json!({"functionCallingConfig": {"mode": "AUTO"}}),
            })
        }
        _ => None,
    };

    let generation_config = generation_config(&req, family, opts, &mut notes)?;
    anthropic_only_notes(&req, &mut notes);

    let out = Body {
        contents,
        system_instruction,
        tools,
        tool_config,
        generation_config: Some(generation_config).filter(|g| !g.is_empty()),
    };
    let body = serde_json::to_vec(&out).map_err(|e| GeminiError::Malformed(e.to_string()))?;
    Ok(Translated {
        estimated_input_tokens: (body.len() as u64 / 4).max(1),
        body,
        stream: req.stream,
        tool_names: names,
        notes: notes.0,
    })
}

fn nonblank(text: &str) -> bool {
    !text.trim().is_empty()
}

fn text_part(text: Cow<'_, str>) -> GPart<'_> {
    GPart::Text {
        text,
        thought: false,
        thought_signature: None,
    }
}

fn push_merged<'a>(contents: &mut Vec<GContent<'a>>, role: &'static str, parts: Vec<GPart<'a>>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => contents.push(GContent { role, parts }),
    }
}

fn system_parts<'a>(system: Option<&'a Content<'a>>, notes: &mut Notes) -> Option<SystemInstruction<'a>> {
    let system = system?;
    if let Content::Blocks(blocks) = system {
        if blocks
            .iter()
            .any(|b| matches!(b, Block::Text { text: t } if t.starts_with(ATTRIBUTION_PREFIX)))
        {
            notes.add("attribution block (x-anthropic-billing-header) left out of systemInstruction");
        }
    }
    let parts: Vec<GPart> = text_parts(system, notes)
        .into_iter()
        .filter(|p| !matches!(p, GPart::Text { text, .. } if text.starts_with(ATTRIBUTION_PREFIX)))
        .collect();
    (!parts.is_empty()).then_some(SystemInstruction { parts })
}

/// Text blocks only (system prompts and mid-conversation system entries).
fn text_parts<'a>(content: &'a Content<'a>, notes: &mut Notes) -> Vec<GPart<'a>> {
    match content {
        Content::Text(t) if nonblank(t) => vec![text_part(Cow::Borrowed(t))],
        Content::Text(_) => Vec::new(),
        Content::Blocks(blocks) => blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text { text: t } if nonblank(t) => Some(text_part(Cow::Borrowed(t))),
                Block::Text { .. } => None,
                other => {
                    notes.add(format!("`{}` block in a system entry dropped", block_name(other)));
                    None
                }
            })
            .collect(),
    }
}

fn block_name<'b>(kind: &'b Block<'_>) -> &'b str {
    match kind {
        Block::Text { .. } => "text",
        Block::Image { .. } => "image",
        Block::Document { .. } => "document",
        Block::ToolUse { .. } => "tool_use",
        Block::ToolResult { .. } => "tool_result",
        Block::Thinking { .. } => "thinking",
        Block::RedactedThinking => "redacted_thinking",
        Block::Other(kind) => kind,
    }
}

fn image_part<'a>(source: &'a Source<'a>, notes: &mut Notes) -> Option<GPart<'a>> {
    match (&*source.kind, &source.data, &source.url) {
        ("base64", Some(data), _) => Some(GPart::InlineData {
            inline_data: Blob {
                mime_type: Cow::Borrowed(source.media_type.as_deref().unwrap_or("image/png")),
                data: Cow::Borrowed(data),
            },
        }),
        ("url", _, Some(url)) => Some(GPart::FileData {
            file_data: FileRef {
                mime_type: Cow::Borrowed(source.media_type.as_deref().unwrap_or_else(|| image_mime_from_url(url))),
                file_uri: Cow::Borrowed(url),
            },
        }),
        (kind, _, _) => {
            notes.add(format!(
                "image with source `{kind}` dropped: Gemini takes base64 or URL images"
            ));
            None
        }
    }
}

/// `fileData` needs a MIME type; a URL source has none, so guess from the
/// extension.
fn image_mime_from_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        _ => "image/jpeg",
    }
}

fn document_part<'a>(source: &'a Source<'a>, title: Option<&'a str>, notes: &mut Notes) -> Option<GPart<'a>> {
    match (&*source.kind, &source.data) {
        ("base64", Some(data)) => Some(GPart::InlineData {
            inline_data: Blob {
                mime_type: Cow::Borrowed(source.media_type.as_deref().unwrap_or("application/pdf")),
                data: Cow::Borrowed(data),
            },
        }),
        ("text", Some(data)) if nonblank(data) => Some(text_part(match title {
            Some(t) => Cow::Owned(format!("{t}\n\n{data}")),
            None => Cow::Borrowed(data),
        })),
        (kind, _) => {
            notes.add(format!(
                "document with source `{kind}` dropped: Gemini takes base64 or text documents"
            ));
            None
        }
    }
}

/// A user message: `functionResponse` parts first, then the media the tool
/// results carried, then the rest in order.
fn user_parts<'a>(
    content: &'a Content<'a>,
    call_names: &HashMap<&str, &str>,
    names: &mut ToolNames,
    notes: &mut Notes,
) -> Vec<GPart<'a>> {
    let blocks = match content {
        Content::Text(t) if nonblank(t) => return vec![text_part(Cow::Borrowed(t))],
        Content::Text(_) => return Vec::new(),
        Content::Blocks(blocks) => blocks,
    };
    let mut responses = Vec::new();
    let mut media = Vec::new();
    let mut rest = Vec::new();
    for b in blocks {
        match b {
            Block::Text { text: t } if nonblank(t) => rest.push(text_part(Cow::Borrowed(t))),
            Block::Text { .. } => {}
            Block::Image { source } => rest.extend(image_part(source, notes)),
            Block::Document { source, title } => rest.extend(document_part(source, title.as_deref(), notes)),
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut text = String::new();
                match content {
                    Some(Content::Text(t)) => text.push_str(t),
                    Some(Content::Blocks(inner)) => {
                        for ib in inner {
                            match ib {
                                Block::Text { text: t } if nonblank(t) => {
                                    if !text.is_empty() {
                                        text.push('\n');
                                    }
                                    text.push_str(t);
                                }
                                Block::Image { source } => media.extend(image_part(source, notes)),
                                Block::Document { source, title } => {
                                    match document_part(source, title.as_deref(), notes) {
                                        Some(GPart::Text { text: t, .. }) => {
                                            if !text.is_empty() {
                                                text.push('\n');
                                            }
                                            text.push_str(&t);
                                        }
                                        other => media.extend(other),
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    None => {}
                }
                if !nonblank(&text) {
                    text = String::from(if media.is_empty() {
                        "(no output)"
                    } else {
                        "(see the attached content)"
                    });
                }
                // Unknown ids are orphans; pairing drops them.
                let name = call_names
                    .get(&**tool_use_id)
                    .map(|n| names.to_upstream_with(n, &GEMINI_NAMES))
                    .unwrap_or_default();
                let response = if *is_error {
                    ResponseBody {
                        result: None,
                        error: Some(text),
                    }
                } else {
                    ResponseBody {
                        result: Some(text),
                        error: None,
                    }
                };
                responses.push(GPart::FunctionResponse {
                    function_response: Response { name, response },
                    id: Cow::Borrowed(tool_use_id),
                });
            }
            other => notes.add(format!(
                "`{}` block in a user message dropped: no Gemini equivalent",
                block_name(other)
            )),
        }
    }
    responses.extend(media);
    responses.extend(rest);
    responses
}

/// An assistant message: our thinking (with its signature), text, and
/// function calls with the signature their id carries.
fn model_parts<'a>(content: &'a Content<'a>, names: &mut ToolNames, notes: &mut Notes) -> Vec<GPart<'a>> {
    let blocks = match content {
        Content::Text(t) if nonblank(t) => return vec![text_part(Cow::Borrowed(t))],
        Content::Text(_) => return Vec::new(),
        Content::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for b in blocks {
        match b {
            Block::Text { text: t } if nonblank(t) => parts.push(text_part(Cow::Borrowed(t))),
            Block::Text { .. } => {}
            Block::Thinking { thinking, signature } => {
                match signature.as_deref().and_then(unwrap_thought_signature) {
                    // Never an empty text part: Vertex rejects those.
                    Some(sig) => parts.push(GPart::Text {
                        text: if nonblank(thinking) {
                            Cow::Borrowed(thinking)
                        } else {
                            Cow::Borrowed(NO_CONTENT)
                        },
                        thought: true,
                        thought_signature: Some(Cow::Borrowed(sig)),
                    }),
                    None => notes.add(
                        "thinking blocks not produced by Gemini dropped (their signatures are bound to another model)",
                    ),
                }
            }
            Block::RedactedThinking => {
                notes.add("redacted_thinking blocks dropped: only Anthropic models can read them")
            }
            Block::ToolUse { id, name, input } => {
                let args = if input.get().trim_start().starts_with('{') {
                    Args::Raw(input)
                } else {
                    notes.add("non-object tool_use input sent as {}");
                    Args::Empty
                };
                parts.push(GPart::FunctionCall {
                    function_call: Call {
                        name: names.to_upstream_with(name, &GEMINI_NAMES),
                        args,
                    },
                    thought_signature: decode_tool_id(id),
                    id: Cow::Borrowed(id),
                });
            }
            Block::Image { source } => parts.extend(image_part(source, notes)),
            other => notes.add(format!(
                "`{}` block in an assistant message dropped: no Gemini equivalent",
                block_name(other)
            )),
        }
    }
    parts
}

/// Give every model turn with function calls a user turn with exactly one
/// response per call, in call order and first; drop responses that answer
/// no call of the turn before them.
fn pair_tool_turns<'a>(contents: Vec<GContent<'a>>, notes: &mut Notes) -> Vec<GContent<'a>> {
    let mut out: Vec<GContent<'a>> = Vec::with_capacity(contents.len() + 1);
    let mut it = contents.into_iter().peekable();
    while let Some(content) = it.next() {
        if content.role == USER {
            let (responses, rest) = split_responses(content.parts);
            if !responses.is_empty() {
                notes.add("tool_result blocks without a tool_use in the turn before dropped");
            }
            push_merged(&mut out, USER, rest);
            continue;
        }
        let calls: Vec<(Cow<'a, str>, String)> = content
            .parts
            .iter()
            .filter_map(|p| match p {
                GPart::FunctionCall { function_call, id, .. } => Some((id.clone(), function_call.name.clone())),
                _ => None,
            })
            .collect();
        push_merged(&mut out, MODEL, content.parts);
        if calls.is_empty() {
            continue;
        }
        let next = match it.peek() {
            Some(c) if c.role == USER => it.next().map(|c| c.parts).unwrap_or_default(),
            _ => Vec::new(),
        };
        let (mut responses, rest) = split_responses(next);
        let mut parts = Vec::with_capacity(calls.len() + rest.len());
        for (id, name) in calls {
            match responses
                .iter()
                .position(|r| matches!(r, GPart::FunctionResponse { id: rid, .. } if *rid == id))
            {
                Some(at) => parts.push(responses.remove(at)),
                None => {
                    notes.add("tool_use without a tool_result answered with a placeholder error");
                    parts.push(GPart::FunctionResponse {
                        function_response: Response {
                            name,
                            response: ResponseBody {
                                result: None,
                                error: Some(MISSING_RESULT.into()),
                            },
                        },
                        id,
                    });
                }
            }
        }
        if !responses.is_empty() {
            notes.add("tool_result blocks without a tool_use in the turn before dropped");
        }
        parts.extend(rest);
        push_merged(&mut out, USER, parts);
    }
    out
}

fn split_responses(parts: Vec<GPart<'_>>) -> (Vec<GPart<'_>>, Vec<GPart<'_>>) {
    parts
        .into_iter()
        .partition(|p| matches!(p, GPart::FunctionResponse { .. }))
}

/// Gemini 3 rejects a step whose first function call has no signature;
/// calls it did not sign (another model's history) get Google's placeholder.
fn sign_unsigned_calls(contents: &mut [GContent<'_>], notes: &mut Notes) {
    for c in contents.iter_mut().filter(|c| c.role == MODEL) {
        let first = c.parts.iter_mut().find(|p| matches!(p, GPart::FunctionCall { .. }));
        if let Some(GPart::FunctionCall { thought_signature, .. }) = first {
            if thought_signature.is_none() {
                *thought_signature = Some(SKIP_SIGNATURE_VALIDATOR.to_string());
                notes.add(
                    "function calls Gemini did not sign sent with the skip_thought_signature_validator placeholder",
                );
            }
        }
    }
}

/// Function declarations (and `googleSearch`); the flag says whether any
/// function was declared.
fn translate_tools<'a>(
    tools: &'a [ToolDef<'a>],
    legacy: bool,
    names: &mut ToolNames,
    notes: &mut Notes,
) -> Result<(Vec<GTool<'a>>, bool), GeminiError> {
    let mut declarations = Vec::with_capacity(tools.len());
    let mut search = false;
    for (i, t) in tools.iter().enumerate() {
        match t.kind.as_deref() {
            None | Some("custom") => {}
            Some(k) if k.starts_with("web_search") => {
                search = true;
                continue;
            }
            Some(k) => {
                notes.add(format!("server tool `{k}` dropped: no Gemini equivalent"));
                continue;
            }
        }
        for (present, field) in [
            (t.cache_control.is_some(), "cache_control"),
            (t.strict.is_some(), "strict"),
            (t.defer_loading.is_some(), "defer_loading"),
            (t.eager_input_streaming.is_some(), "eager_input_streaming"),
        ] {
            if present {
                notes.add(format!("tool field `{field}` dropped: Anthropic-only"));
            }
        }
        let original = match t.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("tool_{i}")),
        };
        let (parameters_json_schema, parameters) = match (t.input_schema, legacy) {
            (None, _) => (None, None),
            (Some(raw), false) => (Some(raw), None),
            (Some(raw), true) => {
                let v: Value = serde_json::from_str(raw.get()).map_err(|e| GeminiError::Malformed(e.to_string()))?;
                (None, schema::legacy_parameters(&v))
            }
        };
        declarations.push(FunctionDeclaration {
            name: names.to_upstream_with(&original, &GEMINI_NAMES),
            description: t.description.as_deref().filter(|d| !d.is_empty()),
            parameters_json_schema,
            parameters,
        });
    }
    let declared = !declarations.is_empty();
    let mut out = Vec::new();
    if declared {
        out.push(GTool {
            function_declarations: declarations,
            google_search: None,
        });
        if search {
            notes.add("web_search dropped: Gemini does not combine googleSearch with function declarations by default");
        }
    } else if search {
        out.push(GTool {
            function_declarations: Vec::new(),
            google_search: Some(json!({})),
        });
    }
    Ok((out, declared))
}

fn generation_config<'a>(
    req: &'a Req<'a>,
    family: ModelFamily,
    opts: &RequestOptions<'_>,
    notes: &mut Notes,
) -> Result<GenerationConfig<'a>, GeminiError> {
    let mut g = GenerationConfig::default();
    if let Some(asked) = req.max_tokens {
        g.max_output_tokens = Some(match family.max_output_tokens() {
            Some(cap) if asked > cap => {
                notes.add(format!(
                    "max_tokens {asked} clamped to {cap} for {}",
                    opts.upstream_model
                ));
                cap
            }
            _ => asked,
        });
    }
    g.temperature = req.temperature;
    g.top_p = req.top_p;
    g.top_k = req.top_k;
    g.stop_sequences = req.stop_sequences.iter().map(|s| s.as_ref()).collect();
    if g.stop_sequences.len() > MAX_STOP {
        notes.add(format!(
            "{} stop sequences truncated to {MAX_STOP}",
            g.stop_sequences.len()
        ));
        g.stop_sequences.truncate(MAX_STOP);
    }

    let format = req.output_config.as_ref().and_then(|o| o.format).or(req.output_format);
    if let Some(raw) = format {
        match serde_json::from_str::<OutputFormat>(raw.get()) {
            Ok(OutputFormat {
                kind,
                schema: Some(schema),
            }) if kind == "json_schema" => {
                g.response_mime_type = Some("application/json");
                if opts.legacy_schema {
                    let v: Value =
                        serde_json::from_str(schema.get()).map_err(|e| GeminiError::Malformed(e.to_string()))?;
                    g.response_schema = Some(Value::Object(schema::sanitize(&v)));
                } else {
                    g.response_json_schema = Some(schema);
                }
            }
            _ => notes.add("output format dropped: only json_schema maps to Gemini"),
        }
    }

    let effort = req.output_config.as_ref().and_then(|o| o.effort.as_deref());
    g.thinking_config = thinking_config(req.thinking.as_ref(), effort, family, opts.upstream_model, notes);
    if effort.is_some() && !(matches!(req.thinking, Some(Thinking::Adaptive)) && family.is_3_or_later()) {
        notes.add("output_config.effort dropped: used only for adaptive thinking on Gemini 3");
    }
    Ok(g)
}

fn thinking_config(
    thinking: Option<&Thinking>,
    effort: Option<&str>,
    family: ModelFamily,
    model: &str,
    notes: &mut Notes,
) -> Option<Value> {
    let wanted = matches!(thinking, Some(Thinking::Enabled { .. } | Thinking::Adaptive));
    if wanted && !family.is_3_or_later() && !family.is_2_5() {
        notes.add(format!("thinking dropped: {model} takes no thinking config"));
        return None;
    }
    match thinking? {
        Thinking::Enabled { budget_tokens } if family.is_3_or_later() => {
            let level = if *budget_tokens < 8192 { "low" } else { "high" };
            Some(json!({"includeThoughts": true, "thinkingLevel": level}))
        }
        Thinking::Enabled { budget_tokens } => {
            let (min, max) = match family.tier {
                Tier::Pro => (128, 32_768),
                Tier::FlashLite => (512, 24_576),
                Tier::Flash | Tier::Other => (0, 24_576),
            };
            let budget = (*budget_tokens).clamp(min, max);
            if budget != *budget_tokens {
                notes.add(format!(
                    "thinking budget {budget_tokens} clamped to {budget} for {model}"
                ));
            }
            Some(json!({"includeThoughts": true, "thinkingBudget": budget}))
        }
        Thinking::Adaptive if family.is_3_or_later() => {
            let level = if effort == Some("low") { "low" } else { "high" };
            Some(json!({"includeThoughts": true, "thinkingLevel": level}))
        }
        Thinking::Adaptive => Some(json!({"includeThoughts": true, "thinkingBudget": -1})),
        Thinking::Disabled => None,
        Thinking::Unknown => {
            notes.add("thinking of an unknown type dropped");
            None
        }
    }
}

fn anthropic_only_notes(req: &Req<'_>, notes: &mut Notes) {
    for (present, field) in [
        (req.metadata.is_some(), "metadata"),
        (req.context_management.is_some(), "context_management"),
        (req.service_tier.is_some(), "service_tier"),
        (req.speed.is_some(), "speed"),
        (req.container.is_some(), "container"),
        (req.mcp_servers.is_some(), "mcp_servers"),
    ] {
        if present {
            notes.add(format!("`{field}` dropped: Anthropic-only"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: Value) -> (Value, Translated) {
        let t = translate_request(
            &serde_json::to_vec(&body).unwrap(),
            &RequestOptions {
                upstream_model: "gemini-3-pro-preview",
                vertex: false,
                legacy_schema: false,
            },
        )
        .unwrap();
        (serde_json::from_slice(&t.body).unwrap(), t)
    }

    #[test]
    fn responses_match_calls_one_for_one() {
        let (v, t) = translate(json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "a", "name": "Read", "input": {"file_path": "/a"}},
                {"type": "tool_use", "id": "b", "name": "Read", "input": {"file_path": "/b"}}
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "also"},
                {"type": "tool_result", "tool_use_id": "zz", "content": "orphan"},
                {"type": "tool_result", "tool_use_id": "b", "content": "B"}
            ]}
        ]}));
        let parts = &v["contents"][2]["parts"];
        assert_eq!(parts[0]["functionResponse"]["response"]["error"], MISSING_RESULT);
        assert_eq!(parts[0]["functionResponse"]["name"], "Read");
        assert_eq!(parts[1]["functionResponse"]["response"]["result"], "B");
        assert_eq!(parts[2]["text"], "also");
        assert_eq!(parts.as_array().unwrap().len(), 3);
        assert_eq!(
            v["contents"][1]["parts"][0]["thoughtSignature"],
            SKIP_SIGNATURE_VALIDATOR
        );
        assert!(v["contents"][1]["parts"][1].get("thoughtSignature").is_none());
        assert!(t.notes.iter().any(|n| n.contains("without a tool_use")));
    }

    #[test]
    fn empty_conversations_are_refused() {
        let e = translate_request(
            br#"{"model":"m","messages":[{"role":"user","content":"  "}]}"#,
            &RequestOptions {
                upstream_model: "gemini-2.5-pro",
                vertex: false,
                legacy_schema: false,
            },
        )
        .unwrap_err();
        assert!(matches!(e, GeminiError::Malformed(_)));
    }
}
