//! OpenAI error responses → Anthropic error objects (`docs/protocol-notes.md`
//! §1.5, §2.4).
//!
//! Claude Code recovers from some errors by their wording, so a context
//! overflow is rewritten to Anthropic's `prompt is too long: N tokens > M
//! maximum` (which triggers auto-compaction), and 429s carry an integer
//! `retry-after` derived from OpenAI's `x-ratelimit-reset-*` durations when
//! the upstream sent no `retry-after` of its own.

use serde_json::{json, Value};

use crate::error::ErrorKind;

/// An error ready to be written in Anthropic shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
}

impl MappedError {
    /// `{"type":"error","error":{"type","message"}}` (the caller adds `request_id`).
    pub fn body(&self, request_id: Option<&str>) -> Value {
        let mut v = json!({"type": "error", "error": {"type": self.kind.as_str(), "message": self.message}});
        if let Some(id) = request_id {
            v["request_id"] = json!(id);
        }
        v
    }
}

/// Map an upstream status and (possibly non-JSON) error body.
pub fn map_error(status: u16, body: &[u8]) -> MappedError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().map(|v| v.get("error").unwrap_or(v));
    let message = err
        .and_then(|e| e.get("message").and_then(Value::as_str).or_else(|| e.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("upstream returned HTTP {status} with no body")
            } else {
                text.chars().take(500).collect()
            }
        });
    let code = err.and_then(|e| e.get("code").and_then(Value::as_str)).unwrap_or("");
    let etype = err.and_then(|e| e.get("type").and_then(Value::as_str)).unwrap_or("");
    map_error_parts(status, code, etype, &message)
}

/// The mapping itself, shared with the stream translator's error chunks.
pub fn map_error_parts(status: u16, code: &str, etype: &str, message: &str) -> MappedError {
    if code == "context_length_exceeded" || looks_like_context_overflow(message) {
        return MappedError {
            status: 400,
            kind: ErrorKind::InvalidRequest,
            message: prompt_too_long(message),
        };
    }
    // Anthropic-compatible upstreams already speak Anthropic's types; keep
    // them. `invalid_request_error` is excluded: OpenAI uses that name too,
    // for 401s and 404s, so there the status decides.
    if let Some(kind) = ErrorKind::from_anthropic(etype).filter(|k| *k != ErrorKind::InvalidRequest) {
        return MappedError {
            status: if status == 500 { kind.status() } else { status },
            kind,
            message: message.to_string(),
        };
    }
    // Mid-stream error chunks carry a code but no HTTP status.
    let status = match code {
        "rate_limit_exceeded" if status == 500 => 429,
        "overloaded" if status == 500 => 503,
        _ => status,
    };
    let (status, kind) = match status {
        429 if code == "insufficient_quota" || etype == "insufficient_quota" => (429, ErrorKind::Billing),
        s => ErrorKind::for_status(s),
    };
    MappedError {
        status,
        kind,
        message: message.to_string(),
    }
}

fn looks_like_context_overflow(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("maximum context length")
        || m.contains("context length exceeded")
        || m.contains("context_length_exceeded")
        || m.contains("context window")
        || m.contains("too many tokens")
        || m.contains("prompt is too long")
}

/// Anthropic's wording, with the numbers when the upstream gave them
/// ("maximum context length is 128000 tokens. However, your messages
/// resulted in 130123 tokens").
fn prompt_too_long(message: &str) -> String {
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .filter(|n| *n >= 100)
        .collect();
    match (numbers.iter().min(), numbers.iter().max()) {
        (Some(&limit), Some(&actual)) if actual > limit => {
            format!("prompt is too long: {actual} tokens > {limit} maximum")
        }
        _ => format!("prompt is too long: {message}"),
    }
}

/// Seconds to put in `retry-after` when the upstream sent none: the larger of
/// OpenAI's `x-ratelimit-reset-requests` / `-tokens` durations (`6s`,
/// `1m30s`, `250ms`), rounded up.
pub fn retry_after_from_resets<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    values
        .into_iter()
        .filter_map(parse_reset)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .max()
}

fn parse_reset(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs).ok();
    }
    humantime::parse_duration(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_overflow_gets_anthropic_wording() {
        let body = br#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130123 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let m = map_error(400, body);
        assert_eq!(m.status, 400);
        assert_eq!(m.kind, ErrorKind::InvalidRequest);
        assert_eq!(m.message, "prompt is too long: 130123 tokens > 128000 maximum");
    }

    #[test]
    fn statuses_map_to_anthropic_types() {
        assert_eq!(
            map_error(429, br#"{"error":{"message":"slow down","type":"requests"}}"#).kind,
            ErrorKind::RateLimit
        );
        assert_eq!(
            map_error(
                429,
                br#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#
            )
            .kind,
            ErrorKind::Billing
        );
        assert_eq!(map_error(401, b"").kind, ErrorKind::Authentication);
        assert_eq!(map_error(503, b"<html>down</html>").message, "<html>down</html>");
        assert_eq!(map_error(500, b"").kind, ErrorKind::Api);
        assert_eq!(map_error(404, br#"{"error":"no such model"}"#).message, "no such model");
        let auth = map_error(
            401,
            br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        );
        assert_eq!((auth.status, auth.kind), (401, ErrorKind::Authentication));
        let overloaded = map_error_parts(500, "", "overloaded_error", "Overloaded");
        assert_eq!((overloaded.status, overloaded.kind), (529, ErrorKind::Overloaded));
        let limited = map_error_parts(500, "rate_limit_exceeded", "tokens", "slow down");
        assert_eq!((limited.status, limited.kind), (429, ErrorKind::RateLimit));
    }

    #[test]
    fn retry_after_from_openai_reset_durations() {
        assert_eq!(retry_after_from_resets(["6s", "1m30s"]), Some(90));
        assert_eq!(retry_after_from_resets(["250ms"]), Some(1));
        assert_eq!(retry_after_from_resets(["nonsense"]), None);
    }
}
