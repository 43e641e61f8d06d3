//! Anthropic models on AWS Bedrock through InvokeModel: the Messages body
//! with Bedrock's edits (`docs/protocol-notes.md` §5.1), the `anthropic-beta`
//! values and paired body fields Bedrock accepts ([`Capabilities`]),
//! Bedrock's exceptions in Anthropic terms, and the event stream decoded
//! into Anthropic SSE ([`stream`]). Pure functions: no I/O, no Pingora types.

pub mod converse;
pub mod stream;

#[cfg(test)]
use serde_json::Value;

use crate::error::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum BedrockError {
    #[error("the request body is not a JSON object: {0}")]
    Malformed(String),
}

/// Whether InvokeModel serves `model_id` with the Messages body: Anthropic
/// models and their inference profiles (`us.anthropic.…`, ARNs naming one).
pub fn is_anthropic_model(model_id: &str) -> bool {
    model_id.contains("anthropic.")
}

pub use crate::dialects::anthropic::cloud::Capabilities;

/// The InvokeModel path for `model_id`. The id is percent-encoded once on
/// the wire (`:` → `%3A`); SigV4 signs it encoded once more.
pub fn invoke_path(model_id: &str, stream: bool) -> String {
    let id = crate::dialects::path_segment(model_id, b"");
    let action = if stream {
        "invoke-with-response-stream"
    } else {
        "invoke"
    };
    format!("/model/{id}/{action}")
}

/// The CountTokens path for `model_id` (encoded as [`invoke_path`] does).
pub fn count_tokens_path(model_id: &str) -> String {
    let invoke = invoke_path(model_id, false);
    format!("{}/count-tokens", invoke.trim_end_matches("/invoke"))
}

/// A CountTokens body over an InvokeModel body (Anthropic models): the
/// body travels base64-encoded, as InvokeModel's blob.
pub fn count_tokens_invoke(invoke_body: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.encode(invoke_body);
    format!(r#"{{"input":{{"invokeModel":{{"body":"{blob}"}}}}}}"#).into_bytes()
}

/// A CountTokens body over a Converse body (other models): the fields
/// CountTokens' Converse input takes.
pub fn count_tokens_converse(converse_body: &[u8]) -> Result<Vec<u8>, BedrockError> {
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(converse_body).map_err(|e| BedrockError::Malformed(e.to_string()))?;
    let input: serde_json::Map<String, serde_json::Value> = v
        .into_iter()
        .filter(|(k, _)| matches!(k.as_str(), "messages" | "system" | "toolConfig"))
        .collect();
    serde_json::to_vec(&serde_json::json!({"input": {"converse": input}}))
        .map_err(|e| BedrockError::Malformed(e.to_string()))
}

/// `inputTokens` from a CountTokens answer.
pub fn count_tokens_response(body: &[u8]) -> Result<u64, BedrockError> {
    #[derive(serde::Deserialize)]
    struct Count {
        #[serde(rename = "inputTokens")]
        input_tokens: u64,
    }
    serde_json::from_slice::<Count>(body)
        .map(|c| c.input_tokens)
        .map_err(|e| BedrockError::Malformed(format!("not a CountTokens answer: {e}")))
}

/// A token count (`{"input_tokens": N}`, Anthropic's) as Bedrock's
/// CountTokens answers it (`{"inputTokens": N}`), for clients that speak
/// Bedrock's API to the gateway. The answer is small; more than
/// [`CountAnswer::LIMIT`] bytes is not a count and goes as it came.
#[derive(Debug, Default)]
pub struct CountAnswer {
    buf: Vec<u8>,
    overflow: bool,
}

impl CountAnswer {
    pub const LIMIT: usize = 64 * 1024;

    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.overflow {
            out.extend_from_slice(bytes);
        } else if self.buf.len() + bytes.len() > Self::LIMIT {
            self.overflow = true;
            out.append(&mut self.buf);
            out.extend_from_slice(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        #[derive(serde::Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        match serde_json::from_slice::<Count>(&self.buf) {
            Ok(c) if !self.overflow => {
                out.extend_from_slice(format!("{{\"inputTokens\":{}}}", c.input_tokens).as_bytes())
            }
            _ => out.append(&mut self.buf),
        }
        self.buf.clear();
    }
}

/// A Bedrock exception (a stream frame's `:exception-type`, or a
/// non-streaming error's `x-amzn-ErrorType`) as the Anthropic error Claude
/// Code acts on. Bedrock's own words are kept: Claude Code recognises
/// "Input is too long for requested model".
pub fn map_exception(kind: &str, message: &str) -> (u16, ErrorKind, String) {
    // `x-amzn-ErrorType` may carry a suffix: `ThrottlingException:http://…`.
    let kind = kind.split(':').next().unwrap_or(kind);
    let (status, k) = match kind.to_ascii_lowercase().as_str() {
        "throttlingexception" | "servicequotaexceededexception" => (429, ErrorKind::RateLimit),
        "validationexception" => (400, ErrorKind::InvalidRequest),
        "accessdeniedexception" => (403, ErrorKind::Permission),
        "unrecognizedclientexception" | "expiredtokenexception" => (401, ErrorKind::Authentication),
        "resourcenotfoundexception" => (404, ErrorKind::NotFound),
        "modeltimeoutexception" => (504, ErrorKind::Timeout),
        "serviceunavailableexception" | "modelnotreadyexception" => (529, ErrorKind::Overloaded),
        _ => (500, ErrorKind::Api),
    };
    let message = if message.is_empty() {
        format!("Bedrock answered {kind}")
    } else {
        message.to_string()
    };
    (status, k, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_tokens_wraps_the_invoke_body() {
        assert_eq!(
            count_tokens_path("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/count-tokens"
        );
        let v: Value = serde_json::from_slice(&count_tokens_invoke(br#"{"a":1}"#)).unwrap();
        assert_eq!(v["input"]["invokeModel"]["body"], "eyJhIjoxfQ==");
        let v: Value = serde_json::from_slice(
            &count_tokens_converse(br#"{"messages":[],"system":[],"inferenceConfig":{"maxTokens":5}}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"input": {"converse": {"messages": [], "system": []}}})
        );
        assert_eq!(count_tokens_response(br#"{"inputTokens":42}"#).unwrap(), 42);
        assert!(count_tokens_response(b"{}").is_err());
    }

    #[test]
    fn paths_are_encoded_once() {
        assert_eq!(
            invoke_path("us.anthropic.claude-sonnet-4-5-20250929-v1:0", true),
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
        );
        assert_eq!(
            invoke_path("anthropic.claude-3-haiku", false),
            "/model/anthropic.claude-3-haiku/invoke"
        );
    }

    #[test]
    fn exceptions_map_to_anthropic_errors() {
        assert_eq!(map_exception("throttlingException", "slow down").0, 429);
        let (s, k, m) = map_exception(
            "ValidationException:http://internal",
            "Input is too long for requested model.",
        );
        assert_eq!(
            (s, k, m.as_str()),
            (400, ErrorKind::InvalidRequest, "Input is too long for requested model.")
        );
        assert_eq!(
            map_exception("serviceUnavailableException", "").1,
            ErrorKind::Overloaded
        );
        assert_eq!(map_exception("modelStreamErrorException", "x").0, 500);
    }
}
