//! The OpenAI Chat Completions dialect, spoken by `openai`, `azure`,
//! `openrouter` and `ollama` providers (`docs/protocol-notes.md` §3).
//!
//! Pure functions only: `request` turns an Anthropic Messages body into a
//! Chat Completions body, `response` turns a Chat Completions JSON answer
//! into an Anthropic Message, `stream` is the incremental state machine from
//! Chat Completions chunks to Anthropic SSE events, and `error` maps OpenAI
//! errors onto Anthropic ones. This file holds what all of them share: the
//! flavour of upstream, the tool-name map, and the stop-reason and usage
//! mappings.

pub mod error;
pub mod request;
pub mod response;
pub mod stream;
pub mod tokens;

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Which OpenAI-compatible upstream is being spoken to. The wire format is
/// the same; a few fields differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Azure,
    OpenRouter,
    Ollama,
}

/// OpenAI limits function names to 64 characters of `[a-zA-Z0-9_-]`.
pub const MAX_TOOL_NAME: usize = 64;

/// Tool names as the upstream sees them, and the way back.
///
/// A name that is too long or has characters the upstream rejects becomes
/// its first valid characters (55 for OpenAI's 64) + `_` + 8 hex digits of
/// its sha256: stable across turns, so history and responses agree without
/// any stored state. [`NameRules`] says what "valid" means per upstream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ToolNames {
    upstream_to_original: HashMap<String, String>,
}

/// What an upstream accepts as a function name.
#[derive(Debug, Clone, Copy)]
pub struct NameRules {
    pub max_len: usize,
    pub valid_char: fn(char) -> bool,
    /// Whether a name may start with this (already valid) character.
    pub valid_first: fn(char) -> bool,
}

/// OpenAI: at most 64 characters of `[a-zA-Z0-9_-]`.
pub const OPENAI_NAMES: NameRules = NameRules {
    max_len: MAX_TOOL_NAME,
    valid_char: valid_name_char,
    valid_first: any_char,
};

fn any_char(_: char) -> bool {
    true
}

impl ToolNames {
    /// The upstream name for `original`, remembering the mapping.
    pub fn to_upstream(&mut self, original: &str) -> String {
        self.to_upstream_with(original, &OPENAI_NAMES)
    }

    /// [`Self::to_upstream`] under another upstream's name rules.
    pub fn to_upstream_with(&mut self, original: &str, rules: &NameRules) -> String {
        let upstream = upstream_tool_name_with(original, rules);
        if upstream != original {
            self.upstream_to_original.insert(upstream.clone(), original.to_string());
        }
        upstream
    }

    /// The client's name for a name the upstream used.
    pub fn to_original<'a>(&'a self, upstream: &'a str) -> &'a str {
        self.upstream_to_original
            .get(upstream)
            .map(String::as_str)
            .unwrap_or(upstream)
    }
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

pub fn upstream_tool_name(original: &str) -> String {
    upstream_tool_name_with(original, &OPENAI_NAMES)
}

pub fn upstream_tool_name_with(original: &str, rules: &NameRules) -> String {
    if original.is_empty() {
        return "tool".to_string();
    }
    let fits = original.len() <= rules.max_len
        && original.chars().all(rules.valid_char)
        && original.chars().next().is_some_and(rules.valid_first);
    if fits {
        return original.to_string();
    }
    let digest = Sha256::digest(original.as_bytes());
    let suffix = hex::encode(&digest[..4]);
    let mut out = String::with_capacity(rules.max_len);
    let mut chars = original
        .chars()
        .map(|c| if (rules.valid_char)(c) { c } else { '_' })
        .peekable();
    // `_` is valid everywhere, first position included.
    if chars.peek().is_some_and(|&c| !(rules.valid_first)(c)) {
        out.push('_');
    }
    let room = rules.max_len - 9 - out.len();
    out.extend(chars.take(room));
    out.push('_');
    out.push_str(&suffix);
    out
}

/// Anthropic `tool_use.id` must match `^[a-zA-Z0-9_-]+$`. Upstream ids that
/// do not (Kimi's `functions.Bash:0`) are rewritten deterministically, so the
/// same upstream id always maps to the same Anthropic id.
pub fn anthropic_tool_id(upstream_id: Option<&str>, fallback_seed: &str) -> String {
    match upstream_id {
        Some(id) if !id.is_empty() && id.chars().all(valid_name_char) => id.to_string(),
        Some(id) if !id.is_empty() => {
            let digest = Sha256::digest(id.as_bytes());
            let clean: String = id.chars().map(|c| if valid_name_char(c) { c } else { '_' }).collect();
            format!("{clean}_{}", hex::encode(&digest[..4]))
        }
        _ => {
            let digest = Sha256::digest(fallback_seed.as_bytes());
            format!("toolu_{}", hex::encode(&digest[..12]))
        }
    }
}

/// `finish_reason` → `stop_reason` (`docs/protocol-notes.md` §3.3). `stop`
/// with a tool call emitted is `tool_use`: several compatible servers
/// report it that way.
pub fn stop_reason(finish_reason: Option<&str>, saw_tool_call: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ if saw_tool_call => "tool_use",
        _ => "end_turn",
    }
}

pub use crate::dialects::Usage;

impl Usage {
    pub fn from_openai(usage: &Value) -> Option<Usage> {
        let obj = usage.as_object()?;
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let prompt = n(obj.get("prompt_tokens"));
        let cached = n(usage.pointer("/prompt_tokens_details/cached_tokens"));
        // OpenRouter/Anthropic-backed models may report cache writes.
        // DeepSeek reports cache hits at the top level.
        let cached = cached.max(n(obj.get("prompt_cache_hit_tokens")));
        let written = n(usage.pointer("/prompt_tokens_details/cache_write_tokens"));
        Some(Usage {
            input_tokens: prompt.saturating_sub(cached).saturating_sub(written),
            output_tokens: n(obj.get("completion_tokens")),
            cache_read_input_tokens: cached,
            cache_creation_input_tokens: written,
        })
    }
}

/// An Anthropic message id from the upstream's id (`chatcmpl-…`), so a
/// response can be traced back; a hash of the seed when there is none.
pub fn message_id(upstream_id: Option<&str>, seed: &str) -> String {
    match upstream_id {
        Some(id) if id.chars().any(valid_name_char) => {
            let clean: String = id.chars().filter(|c| valid_name_char(*c)).take(60).collect();
            format!("msg_{clean}")
        }
        _ => format!("msg_{}", hex::encode(&Sha256::digest(seed.as_bytes())[..12])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_and_odd_tool_names_round_trip() {
        let mut names = ToolNames::default();
        let long = "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on";
        let up = names.to_upstream(long);
        assert_eq!(up.len(), MAX_TOOL_NAME);
        assert!(up.chars().all(valid_name_char));
        assert_eq!(names.to_original(&up), long);
        assert_eq!(names.to_upstream("Bash"), "Bash");
        assert_eq!(names.to_original("Bash"), "Bash");
        let dotted = names.to_upstream("server.tool");
        assert!(dotted.starts_with("server_tool_"));
        assert_eq!(names.to_original(&dotted), "server.tool");
        assert_eq!(upstream_tool_name(long), up, "stable across turns");
    }

    #[test]
    fn tool_ids_are_sanitised_deterministically() {
        assert_eq!(anthropic_tool_id(Some("call_abc"), "x"), "call_abc");
        let kimi = anthropic_tool_id(Some("functions.Bash:0"), "x");
        assert!(kimi.starts_with("functions_Bash_0_"));
        assert_eq!(kimi, anthropic_tool_id(Some("functions.Bash:0"), "y"));
        assert!(anthropic_tool_id(None, "seed").starts_with("toolu_"));
    }

    #[test]
    fn usage_splits_cached_tokens_out() {
        let u = Usage::from_openai(
            &json!({"prompt_tokens": 1000, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 800}}),
        )
        .unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_input_tokens, u.output_tokens),
            (200, 800, 50)
        );
        assert_eq!(stop_reason(Some("stop"), true), "tool_use");
        assert_eq!(stop_reason(Some("length"), false), "max_tokens");
        assert_eq!(stop_reason(None, false), "end_turn");
        assert_eq!(stop_reason(Some("content_filter"), false), "refusal");
    }
}
