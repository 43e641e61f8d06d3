//! The Gemini dialect: Anthropic Messages ⇄ `generateContent` /
//! `streamGenerateContent?alt=sse`, for AI Studio and Vertex AI
//! (`docs/protocol-notes.md` §4).
//!
//! Pure functions only, one concern per file: `request` builds the Gemini
//! body (roles, parts, tool pairing, tools, generation and thinking
//! config), `schema` sanitises tool schemas for the legacy `parameters`
//! field, `response` turns a `GenerateContentResponse` into an Anthropic
//! Message, `stream` is the incremental SSE translator (its event
//! bookkeeping is [`crate::dialects::anthropic::emit::Emitter`]'s), `error`
//! maps Google errors onto Anthropic ones, and `tokens` shapes
//! `:countTokens`. This file holds what several of them share: paths, the
//! error type, tool-name rules, model families, the finish-reason and usage
//! mappings, and the thought-signature carriers.
//!
//! # Thought signatures
//!
//! Gemini 3 answers 400 when a function-call step comes back without the
//! `thoughtSignature` it was issued with, and Claude Code carries no Gemini
//! fields. The gateway keeps no state, so signatures ride inside what
//! Claude Code replays byte for byte:
//! - a `functionCall` part's signature is appended to the `tool_use.id`
//!   ([`encode_tool_id`]: `…__sigb_<base64url>`, so ids stay
//!   `^[A-Za-z0-9_-]+$`) and restored as a Part-level sibling of that
//!   `functionCall` when the id comes back in history;
//! - a thought part (`thought: true`) becomes a `thinking` block whose
//!   `signature` is [`THINKING_SIGNATURE_PREFIX`] + the Gemini signature,
//!   replayed as `{text, thought: true, thoughtSignature}`. Thinking blocks
//!   without the prefix (Anthropic's, other vendors') are dropped;
//! - a signature on a plain (non-thought) text part is **dropped**: Gemini
//!   validates function-call signatures only, a text part's is advisory,
//!   and carrying it would mean a synthetic thinking block after the text.
//! - On Gemini 3, a model turn whose first `functionCall` has no signature
//!   (history written by another model, or a signature lost) gets Google's
//!   documented placeholder [`SKIP_SIGNATURE_VALIDATOR`].

pub mod error;
pub mod request;
pub mod response;
pub mod schema;
pub mod stream;
pub mod tokens;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::dialects::openai::error::MappedError;
use crate::dialects::openai::NameRules;
pub use crate::dialects::openai::ToolNames;
pub use crate::dialects::Usage;
use crate::error::ErrorKind;

pub use error::{map_error, retry_after};
pub use request::{translate_request, RequestOptions, Translated};
pub use response::{translate_response, ResponseContext};
pub use stream::GeminiStream;
pub use tokens::{count_tokens_body, count_tokens_response};

/// Everything that can go wrong in this dialect. `Display` is safe to show
/// the client; [`GeminiError::mapped`] gives the Anthropic error for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeminiError {
    /// The client's body is not a Messages request Gemini can be sent.
    #[error("request body does not match the Messages API: {0}")]
    Malformed(String),
    /// Gemini's answer is not the shape its API documents.
    #[error("Gemini returned an unexpected answer: {0}")]
    BadUpstream(String),
    /// Gemini ended without usable output (`MALFORMED_FUNCTION_CALL` and
    /// the like before any content): worth a retry.
    #[error("{0}")]
    NoOutput(String),
}

impl GeminiError {
    /// The Anthropic error to answer with.
    pub fn mapped(&self) -> MappedError {
        let (status, kind) = match self {
            GeminiError::Malformed(_) => (400, ErrorKind::InvalidRequest),
            GeminiError::BadUpstream(_) | GeminiError::NoOutput(_) => (500, ErrorKind::Api),
        };
        MappedError {
            status,
            kind,
            message: self.to_string(),
        }
    }
}

/// `models/{m}:generateContent`, or `models/{m}:streamGenerateContent?alt=sse`,
/// relative to AI Studio's `…/v1beta/` or Vertex's
/// `…/v1/projects/P/locations/L/publishers/google/`. A leading `models/` in
/// the configured name is tolerated; the rest is one path segment.
pub fn generate_path(model: &str, stream: bool) -> String {
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    format!("models/{}:{method}", path_segment(model))
}

/// `models/{m}:countTokens`, relative like [`generate_path`].
pub fn count_tokens_path(model: &str) -> String {
    format!("models/{}:countTokens", path_segment(model))
}

/// The model as one path segment (a leading `models/` tolerated).
fn path_segment(model: &str) -> String {
    crate::dialects::path_segment(model.strip_prefix("models/").unwrap_or(model), b"")
}

/// Gemini function names: start with a letter or `_`, then
/// `[A-Za-z0-9_.:-]`, at most 64 characters.
pub const GEMINI_NAMES: NameRules = NameRules {
    max_len: 64,
    valid_char: gemini_name_char,
    valid_first: gemini_name_first,
};

fn gemini_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn gemini_name_first(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

/// What the gateway knows of a Gemini model from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFamily {
    /// `(major, minor)` of `gemini-X.Y-…`; `None` for other names (Gemma,
    /// tuned models), which get no thinking config.
    pub version: Option<(u32, u32)>,
    pub tier: Tier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Pro,
    Flash,
    FlashLite,
    Other,
}

impl ModelFamily {
    pub fn of(model: &str) -> ModelFamily {
        let bare = model.rsplit('/').next().unwrap_or(model);
        let version = bare.find("gemini-").and_then(|at| {
            let rest = &bare[at + "gemini-".len()..];
            let number = rest.split('-').next().unwrap_or("");
            let mut it = number.split('.');
            let major = it.next()?.parse().ok()?;
            let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
            Some((major, minor))
        });
        let tier = if bare.contains("flash-lite") {
            Tier::FlashLite
        } else if bare.contains("flash") {
            Tier::Flash
        } else if bare.contains("pro") {
            Tier::Pro
        } else {
            Tier::Other
        };
        ModelFamily { version, tier }
    }

    /// Gemini 3 and later: `thinkingLevel`, and function-call signatures
    /// are validated.
    pub fn is_3_or_later(self) -> bool {
        self.version.is_some_and(|(major, _)| major >= 3)
    }

    pub fn is_2_5(self) -> bool {
        self.version == Some((2, 5))
    }

    /// The output-token cap (model cards, 2026-11); `None` when unknown.
    pub fn max_output_tokens(self) -> Option<u64> {
        match self.version? {
            (major, _) if major >= 3 => Some(65_536),
            (2, 5) => Some(65_536),
            (2, 0) | (1, _) => Some(8_192),
            _ => None,
        }
    }
}

/// `finishReason` → `stop_reason` (`docs/protocol-notes.md` §4.2). `None`
/// for the reasons that mean "the model's tool call was unusable", which
/// the caller turns into a retryable error when nothing was produced,
/// `end_turn` otherwise.
pub fn stop_reason(finish_reason: &str, saw_tool_call: bool) -> Option<&'static str> {
    Some(match finish_reason {
        "MAX_TOKENS" => "max_tokens",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "LANGUAGE"
        | "MODEL_ARMOR" => "refusal",
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => return None,
        _ if saw_tool_call => "tool_use",
        // STOP, OTHER, FINISH_REASON_UNSPECIFIED and anything newer.
        _ => "end_turn",
    })
}

/// `usageMetadata` in Anthropic terms (`docs/protocol-notes.md` §4.2):
/// input excludes cached tokens; output is derived from the total, since
/// AI Studio and Vertex disagree on whether `candidatesTokenCount` includes
/// thoughts. Tokens of
/// built-in tool results (`toolUsePromptTokenCount`, e.g. search results)
/// are billed as input, so they count as input.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UsageMetadata {
    pub prompt_token_count: u64,
    pub candidates_token_count: u64,
    pub thoughts_token_count: u64,
    pub cached_content_token_count: u64,
    pub tool_use_prompt_token_count: u64,
    pub total_token_count: u64,
}

impl UsageMetadata {
    pub fn to_usage(self) -> Usage {
        let prompt = self.prompt_token_count;
        let output = if self.total_token_count > 0 {
            self.total_token_count
                .saturating_sub(prompt)
                .saturating_sub(self.tool_use_prompt_token_count)
        } else {
            self.candidates_token_count + self.thoughts_token_count
        };
        Usage {
            input_tokens: prompt.saturating_sub(self.cached_content_token_count) + self.tool_use_prompt_token_count,
            output_tokens: output,
            cache_read_input_tokens: self.cached_content_token_count,
            cache_creation_input_tokens: 0,
        }
    }
}

/// Marks a `thinking.signature` as a Gemini thought signature carried by
/// this gateway (Anthropic signatures are base64 and never contain `:`).
pub const THINKING_SIGNATURE_PREFIX: &str = "gemini-thought:";

/// Google's documented placeholder for function calls Gemini did not sign.
pub const SKIP_SIGNATURE_VALIDATOR: &str = "skip_thought_signature_validator";

/// Text of a thinking block that only carries a signature.
pub const NO_CONTENT: &str = "(no content)";

/// Separators between a tool id and the signature it carries: the
/// signature's bytes (it was canonical base64), or its text (it was not).
const SIG_BYTES: &str = "__sigb_";
const SIG_TEXT: &str = "__sigt_";
/// No base id contains this, so the first occurrence is the separator.
const SIG_MARK: &str = "__sig";

pub fn wrap_thought_signature(signature: &str) -> String {
    format!("{THINKING_SIGNATURE_PREFIX}{signature}")
}

/// The Gemini signature inside a thinking block's signature, if it is ours.
pub fn unwrap_thought_signature(signature: &str) -> Option<&str> {
    signature
        .strip_prefix(THINKING_SIGNATURE_PREFIX)
        .filter(|s| !s.is_empty())
}

/// A `tool_use.id` for a Gemini function call: `base` (which must not
/// contain `__sig`; see [`tool_base_id`]) plus the call's signature, if any.
pub fn encode_tool_id(base: &str, signature: Option<&str>) -> String {
    let Some(sig) = signature.filter(|s| !s.is_empty()) else {
        return base.to_string();
    };
    match STANDARD.decode(sig) {
        // Gemini sends proto3-JSON bytes: standard base64 with padding. Its
        // bytes re-encoded URL-safe keep the id no longer than the signature.
        Ok(bytes) if STANDARD.encode(&bytes) == sig => {
            format!("{base}{SIG_BYTES}{}", URL_SAFE_NO_PAD.encode(bytes))
        }
        _ => format!("{base}{SIG_TEXT}{}", URL_SAFE_NO_PAD.encode(sig.as_bytes())),
    }
}

/// The thought signature a `tool_use.id` carries, exactly as Gemini sent it.
pub fn decode_tool_id(id: &str) -> Option<String> {
    let at = id.find(SIG_MARK)?;
    let rest = &id[at..];
    if let Some(payload) = rest.strip_prefix(SIG_BYTES) {
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        return Some(STANDARD.encode(bytes)).filter(|s| !s.is_empty());
    }
    let payload = rest.strip_prefix(SIG_TEXT)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// The id part of a function call's `tool_use.id`: Gemini's own call id
/// when it sent a usable one, else `toolu_` + a hash of `seed` and the
/// call's position (the same in JSON and stream answers).
pub fn tool_base_id(gemini_id: Option<&str>, seed: &str, position: usize) -> String {
    let fallback = format!("{seed}:{position}");
    let id = crate::dialects::openai::anthropic_tool_id(gemini_id.filter(|i| !i.is_empty()), &fallback);
    if id.contains(SIG_MARK) {
        crate::dialects::openai::anthropic_tool_id(None, &fallback)
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escape_the_model() {
        assert_eq!(
            generate_path("gemini-2.5-pro", true),
            "models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            generate_path("models/gemini-2.5-flash", false),
            "models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(count_tokens_path("a b/c:d"), "models/a%20b%2Fc%3Ad:countTokens");
    }

    #[test]
    fn families() {
        let f = ModelFamily::of("gemini-2.5-flash-lite-preview-06-17");
        assert_eq!((f.version, f.tier), (Some((2, 5)), Tier::FlashLite));
        let f = ModelFamily::of("gemini-3-pro-preview");
        assert_eq!((f.version, f.tier), (Some((3, 0)), Tier::Pro));
        assert!(f.is_3_or_later());
        assert_eq!(ModelFamily::of("gemini-3.1-flash").version, Some((3, 1)));
        assert_eq!(
            ModelFamily::of("publishers/google/models/gemini-2.0-flash-001").version,
            Some((2, 0))
        );
        assert_eq!(ModelFamily::of("gemma-3-27b-it").version, None);
        assert_eq!(ModelFamily::of("gemini-exp-1206").version, None);
    }

    #[test]
    fn tool_ids_carry_signatures_both_ways() {
        let base = tool_base_id(None, "req_1", 0);
        assert!(base.starts_with("toolu_") && base.len() == 30);
        assert_eq!(encode_tool_id(&base, None), base);
        assert_eq!(decode_tool_id(&base), None);
        for sig in [
            "CiQBjz1rX+/8w9Q=",
            "EtYBCtMBAXLI2nw",
            "a",
            "skip_thought_signature_validator",
        ] {
            let id = encode_tool_id(&base, Some(sig));
            assert!(id.starts_with(&base));
            assert!(
                id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{id}"
            );
            assert_eq!(decode_tool_id(&id).as_deref(), Some(sig), "{id}");
        }
        // Foreign ids carry nothing.
        assert_eq!(decode_tool_id("toolu_01A09q90qw90lq917835lq9"), None);
        assert_eq!(decode_tool_id("call__sigb_!!"), None);
        // A Gemini id that looks like ours is not trusted as a base.
        assert!(!tool_base_id(Some("x__sigb_y"), "s", 1).contains("__sig"));
        assert_eq!(tool_base_id(Some("fc_1"), "s", 1), "fc_1");
    }

    #[test]
    fn usage_derives_output_from_the_total() {
        let u = UsageMetadata {
            prompt_token_count: 1000,
            candidates_token_count: 50,
            thoughts_token_count: 200,
            cached_content_token_count: 800,
            tool_use_prompt_token_count: 30,
            total_token_count: 1280,
        }
        .to_usage();
        assert_eq!(
            (u.input_tokens, u.cache_read_input_tokens, u.output_tokens),
            (230, 800, 250)
        );
        assert_eq!(stop_reason("STOP", true), Some("tool_use"));
        assert_eq!(stop_reason("SAFETY", true), Some("refusal"));
        assert_eq!(stop_reason("MALFORMED_FUNCTION_CALL", false), None);
    }
}
