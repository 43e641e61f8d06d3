//! Local token counting for `count_tokens` on OpenAI-family routes.
//!
//! OpenAI has no count endpoint, so the gateway counts the *translated*
//! prompt with the upstream model's BPE (`o200k_base` for the GPT-4o, 4.1,
//! 5 and o-series families, `cl100k_base` for GPT-4 and 3.5), using OpenAI's
//! published per-message framing. For models with another tokenizer
//! (OpenRouter, Ollama) it is an o200k estimate, and the response header
//! says so. CPU-heavy: call it off the async workers.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Framing tokens per chat message, and for priming the reply (OpenAI cookbook).
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;
/// A typical high-detail image tile set; the exact cost depends on pixel
/// dimensions the gateway does not decode.
const PER_IMAGE: u64 = 765;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

impl Encoding {
    pub fn for_model(model: &str) -> Encoding {
        let bare = model.rsplit('/').next().unwrap_or(model);
        if bare.starts_with("gpt-4-") || bare == "gpt-4" || bare.starts_with("gpt-3.5") {
            Encoding::Cl100k
        } else {
            Encoding::O200k
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200k => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

/// Count the prompt tokens of a translated Chat Completions body.
pub fn count_chat_tokens(chat_body: &[u8], encoding: Encoding) -> Result<u64, serde_json::Error> {
    let body: Value = serde_json::from_slice(chat_body)?;
    let bpe = encoding.bpe();
    let count = |s: &str| bpe.encode_ordinary(s).len() as u64;
    let mut total = REPLY_PRIMING;
    for m in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        total += PER_MESSAGE;
        if let Some(role) = m.get("role").and_then(Value::as_str) {
            total += count(role);
        }
        match m.get("content") {
            Some(Value::String(s)) => total += count(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => total += p.get("text").and_then(Value::as_str).map_or(0, count),
                        Some("image_url") => total += PER_IMAGE,
                        Some("file") => {
                            // Base64 file data: roughly what the provider bills for extracted text.
                            let len = p.pointer("/file/file_data").and_then(Value::as_str).map_or(0, str::len);
                            total += (len as u64 * 3 / 4) / 4;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            total += call.pointer("/function/name").and_then(Value::as_str).map_or(0, count);
            total += call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .map_or(0, count);
        }
    }
    if let Some(tools) = body
        .get("tools")
        .filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))
    {
        total += count(&tools.to_string());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_with_framing() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello world"}]}"#;
        // "user" = 1, "Hello world" = 2, framing 3 + priming 3.
        assert_eq!(count_chat_tokens(body, Encoding::O200k).unwrap(), 9);
        assert_eq!(Encoding::for_model("gpt-4-turbo"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("openai/gpt-5"), Encoding::O200k);
    }
}
