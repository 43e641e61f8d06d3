//! A typed, borrowing view of an Anthropic Messages request, for translators.
//!
//! Passthrough never builds this (it keeps the raw bytes). Translators do:
//! strings borrow from the body where JSON escaping allows, and payloads the
//! translators copy through untouched — tool schemas and tool inputs — stay
//! raw JSON (`&RawValue`), so they are neither parsed into trees nor
//! re-formatted. Unknown fields are ignored; unknown block types parse as
//! [`Block::Other`] so a new Anthropic block never breaks a translated route.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
pub struct Request<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default, borrow)]
    pub messages: Vec<Message<'a>>,
    #[serde(default, borrow)]
    pub system: Option<Content<'a>>,
    #[serde(default, borrow)]
    pub tools: Vec<Tool<'a>>,
    #[serde(default, borrow)]
    pub tool_choice: Option<ToolChoice<'a>>,
    #[serde(default)]
    pub thinking: Option<Thinking>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u64>,
    #[serde(default, borrow)]
    pub stop_sequences: Vec<Cow<'a, str>>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, borrow)]
    pub metadata: Option<Metadata<'a>>,
    #[serde(default, borrow)]
    pub output_config: Option<OutputConfig<'a>>,
    /// The older structured-outputs beta field.
    #[serde(default, borrow)]
    pub output_format: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    /// Claude Code's mid-conversation system entries (beta `mid-conversation-system`).
    System,
}

#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    pub role: Role,
    #[serde(borrow)]
    pub content: Content<'a>,
}

/// `content` (and `system`): a plain string or a list of blocks.
///
/// Deserialised by hand rather than as an untagged enum: serde buffers
/// untagged and internally tagged enums, which would copy every string and
/// cannot hold the raw JSON of tool inputs.
#[derive(Debug)]
pub enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Block<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of content blocks")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(b) = seq.next_element::<Block<'a>>()? {
                    blocks.push(b);
                }
                Ok(Content::Blocks(blocks))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One content block. Unknown types (and ones a translator never needs,
/// such as server-tool results) are [`Block::Other`].
#[derive(Debug)]
pub enum Block<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: Source<'a>,
    },
    Document {
        source: Source<'a>,
        title: Option<Cow<'a, str>>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: &'a RawValue,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        content: Option<Content<'a>>,
        is_error: bool,
    },
    Thinking {
        thinking: Cow<'a, str>,
        signature: Option<Cow<'a, str>>,
    },
    RedactedThinking,
    Other(Cow<'a, str>),
}

/// The union of every block's fields: a plain struct deserialises without
/// buffering, so strings borrow and `input` stays raw.
#[derive(Deserialize)]
struct BlockFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    source: Option<Source<'a>>,
    #[serde(default, borrow)]
    title: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Option<Content<'a>>,
    #[serde(default)]
    is_error: bool,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    signature: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Block<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let f = BlockFields::deserialize(d)?;
        let kind = f.kind;
        let missing = |field: &str| D::Error::custom(format!("`{kind}` block: missing field `{field}`"));
        Ok(match &*kind {
            "text" => Block::Text {
                text: f.text.ok_or_else(|| missing("text"))?,
            },
            "image" => Block::Image {
                source: f.source.ok_or_else(|| missing("source"))?,
            },
            "document" => Block::Document {
                source: f.source.ok_or_else(|| missing("source"))?,
                title: f.title,
            },
            "tool_use" => Block::ToolUse {
                id: f.id.ok_or_else(|| missing("id"))?,
                name: f.name.ok_or_else(|| missing("name"))?,
                input: f.input.ok_or_else(|| missing("input"))?,
            },
            "tool_result" => Block::ToolResult {
                tool_use_id: f.tool_use_id.ok_or_else(|| missing("tool_use_id"))?,
                content: f.content,
                is_error: f.is_error,
            },
            "thinking" => Block::Thinking {
                thinking: f.thinking.unwrap_or_default(),
                signature: f.signature,
            },
            "redacted_thinking" => Block::RedactedThinking,
            _ => Block::Other(kind.clone()),
        })
    }
}

/// An image or document source. `type` is `base64`, `url`, `text`, or
/// something a translator cannot carry (`file`, `content`).
#[derive(Debug, Deserialize)]
pub struct Source<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub media_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub data: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub url: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct Tool<'a> {
    /// Server tools (`web_search_20250305`, …) carry a type; custom tools have none or `custom`.
    #[serde(rename = "type", default, borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub description: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub input_schema: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct ToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default)]
    pub disable_parallel_tool_use: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Thinking {
    Enabled {
        #[serde(default)]
        budget_tokens: u64,
    },
    Disabled,
    Adaptive,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
pub struct Metadata<'a> {
    #[serde(default, borrow)]
    pub user_id: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct OutputConfig<'a> {
    #[serde(default, borrow)]
    pub effort: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub format: Option<&'a RawValue>,
}

impl<'a> Content<'a> {
    /// The text of a string, or of the text blocks joined by `sep`.
    pub fn joined_text(&self, sep: &str) -> String {
        match self {
            Content::Text(t) => t.to_string(),
            Content::Blocks(blocks) => {
                let mut out = String::new();
                for b in blocks {
                    if let Block::Text { text } = b {
                        if text.trim().is_empty() {
                            continue;
                        }
                        if !out.is_empty() {
                            out.push_str(sep);
                        }
                        out.push_str(text);
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_claude_code_fixture_borrowing_and_raw() {
        let body = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/claude_code_request.json"
        ))
        .unwrap();
        let r: Request = serde_json::from_str(&body).unwrap();
        assert_eq!(r.model, "claude-opus-4-8");
        assert!(r.stream);
        assert!(matches!(r.thinking, Some(Thinking::Adaptive)));
        assert_eq!(r.tools.len(), 25);
        assert!(r.messages.iter().any(|m| m.role == Role::System));
        let tool_use = r
            .messages
            .iter()
            .filter_map(|m| match &m.content {
                Content::Blocks(b) => Some(b),
                Content::Text(_) => None,
            })
            .flatten()
            .find_map(|b| match b {
                Block::ToolUse { input, .. } => Some(*input),
                _ => None,
            })
            .unwrap();
        assert!(tool_use.get().starts_with('{'));
        assert!(matches!(r.system, Some(Content::Blocks(ref b)) if b.len() == 3));
    }

    #[test]
    fn unknown_blocks_and_bad_shapes() {
        let r: Request = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"future_block","x":1}]}]}"#,
        )
        .unwrap();
        assert!(
            matches!(&r.messages[0].content, Content::Blocks(b) if matches!(&b[0], Block::Other(k) if k == "future_block"))
        );
        let e = serde_json::from_str::<Request>(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing field `text`"), "{e}");
        assert!(serde_json::from_str::<Request>(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).is_err());
    }
}
