//! `count_tokens` on Gemini routes: the translated `generateContent` body
//! reshaped for `:countTokens`, and its answer read back.
//!
//! AI Studio counts a whole request only through `generateContentRequest`
//! (which needs `model`); Vertex takes `contents`, `systemInstruction` and
//! `tools` at the top level. Generation and tool-calling config do not
//! change the count and are left out, so the count call cannot fail on a
//! setting (thinking, structured output) the endpoint does not know.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::GeminiError;

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Countable<'a> {
    #[serde(borrow)]
    contents: &'a RawValue,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    system_instruction: Option<&'a RawValue>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    tools: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StudioRequest<'a> {
    model: String,
    #[serde(flatten)]
    request: Countable<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StudioBody<'a> {
    generate_content_request: StudioRequest<'a>,
}

/// The `:countTokens` body for a body [`super::translate_request`] produced.
pub fn count_tokens_body(
    translated_generate_body: &[u8],
    upstream_model: &str,
    vertex: bool,
) -> Result<Vec<u8>, GeminiError> {
    let request: Countable =
        serde_json::from_slice(translated_generate_body).map_err(|e| GeminiError::Malformed(e.to_string()))?;
    let out = if vertex {
        serde_json::to_vec(&request)
    } else {
        let bare = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
        serde_json::to_vec(&StudioBody {
            generate_content_request: StudioRequest {
                model: format!("models/{bare}"),
                request,
            },
        })
    };
    out.map_err(|e| GeminiError::Malformed(e.to_string()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CountResponse<'a> {
    /// proto3 JSON leaves zero out.
    #[serde(default)]
    total_tokens: u64,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

/// `totalTokens` of a `:countTokens` answer.
pub fn count_tokens_response(body: &[u8]) -> Result<u64, GeminiError> {
    let r: CountResponse = serde_json::from_slice(body).map_err(|e| GeminiError::BadUpstream(e.to_string()))?;
    if r.error.is_some() {
        return Err(GeminiError::BadUpstream("countTokens answered with an error".into()));
    }
    Ok(r.total_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn shapes_per_api() {
        let generate = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"systemInstruction":{"parts":[{"text":"s"}]},"tools":[{"functionDeclarations":[{"name":"f"}]}],"toolConfig":{"functionCallingConfig":{"mode":"AUTO"}},"generationConfig":{"maxOutputTokens":5}}"#;
        let studio: Value =
            serde_json::from_slice(&count_tokens_body(generate, "gemini-2.5-pro", false).unwrap()).unwrap();
        assert_eq!(
            studio,
            json!({"generateContentRequest": {"model": "models/gemini-2.5-pro", "contents": [{"role": "user", "parts": [{"text": "hi"}]}], "systemInstruction": {"parts": [{"text": "s"}]}, "tools": [{"functionDeclarations": [{"name": "f"}]}]}})
        );
        let vertex: Value =
            serde_json::from_slice(&count_tokens_body(generate, "gemini-2.5-pro", true).unwrap()).unwrap();
        assert_eq!(
            vertex,
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "systemInstruction": {"parts": [{"text": "s"}]}, "tools": [{"functionDeclarations": [{"name": "f"}]}]})
        );
        assert_eq!(
            count_tokens_response(br#"{"totalTokens": 31, "totalBillableCharacters": 96}"#),
            Ok(31)
        );
        assert!(count_tokens_response(br#"{"error":{"code":400}}"#).is_err());
        assert!(count_tokens_body(b"{}", "m", false).is_err());
    }
}
