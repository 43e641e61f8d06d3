//! Google API errors → Anthropic error objects (`docs/protocol-notes.md`
//! §1.5, §2.4, §4.3).
//!
//! Google's body is `{"error":{"code","message","status","details"}}`
//! (Vertex sometimes wraps it in an array); `status` is the canonical
//! gRPC code name, which decides the Anthropic type before the HTTP
//! status does. Claude Code recovers by wording, so a context overflow
//! ("The input token count (N) exceeds the maximum number of tokens
//! allowed (M)") becomes `prompt is too long: N tokens > M maximum`, which
//! triggers auto-compaction. The same mapping serves error chunks inside a
//! stream ([`map_error_value`]).

use serde_json::Value;

use crate::dialects::openai::error::{map_error_parts, MappedError};
use crate::error::ErrorKind;

/// Map an upstream status and (possibly non-JSON) error body.
pub fn map_error(status: u16, body: &[u8]) -> MappedError {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let error = google_error(&v);
            if error.get("message").is_some() || error.get("status").is_some() {
                return map_error_value(status, error);
            }
            map_parts(status, "", &fallback_message(status, body), &[])
        }
        Err(_) => map_parts(status, "", &fallback_message(status, body), &[]),
    }
}

/// Map a Google error object (the value of `error`). `status` is the HTTP
/// status, or 0 inside a stream, where `code` stands in for it.
pub fn map_error_value(status: u16, error: &Value) -> MappedError {
    let code = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c));
    let http = match (status, code) {
        (s, _) if s >= 400 => s,
        (_, Some(c)) => c,
        _ => 500,
    };
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("Gemini reported an error");
    let name = error.get("status").and_then(Value::as_str).unwrap_or("");
    let details = error
        .get("details")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    map_parts(http, name, message, details)
}

/// `retry-after` seconds from `google.rpc.RetryInfo.retryDelay` (`"13s"`,
/// `"0.5s"`), rounded up.
pub fn retry_after(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    google_error(&v)
        .get("details")?
        .as_array()?
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| d.get("retryDelay")?.as_str().and_then(parse_delay))
}

fn parse_delay(delay: &str) -> Option<u64> {
    let secs: f64 = delay.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64)
}

/// The error object of a Google error body: `{"error":{…}}`, `[{"error":{…}}]`.
fn google_error(v: &Value) -> &Value {
    let v = match v {
        Value::Array(items) => items.first().unwrap_or(v),
        other => other,
    };
    v.get("error").unwrap_or(v)
}

fn fallback_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("Gemini returned HTTP {status} with no body")
    } else {
        text.chars().take(500).collect()
    }
}

fn map_parts(http: u16, name: &str, message: &str, details: &[Value]) -> MappedError {
    let mapped = |status, kind| MappedError {
        status,
        kind,
        message: message.to_string(),
    };
    if let Some(text) = prompt_too_long(message) {
        return MappedError {
            status: 400,
            kind: ErrorKind::InvalidRequest,
            message: text,
        };
    }
    // AI Studio answers a bad key with 400 INVALID_ARGUMENT.
    let bad_key = details.iter().any(|d| {
        matches!(
            d.get("reason").and_then(Value::as_str),
            Some("API_KEY_INVALID" | "API_KEY_EXPIRED")
        )
    }) || message.contains("API key not valid")
        || message.contains("API key expired");
    if bad_key {
        return mapped(401, ErrorKind::Authentication);
    }
    match name {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" | "UNIMPLEMENTED" => {
            mapped(400, ErrorKind::InvalidRequest)
        }
        "UNAUTHENTICATED" => mapped(401, ErrorKind::Authentication),
        "PERMISSION_DENIED" => mapped(403, ErrorKind::Permission),
        "NOT_FOUND" => mapped(404, ErrorKind::NotFound),
        "RESOURCE_EXHAUSTED" => mapped(429, ErrorKind::RateLimit),
        "UNAVAILABLE" => mapped(529, ErrorKind::Overloaded),
        "DEADLINE_EXCEEDED" => mapped(504, ErrorKind::Timeout),
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" | "ABORTED" | "CANCELLED" => mapped(500, ErrorKind::Api),
        _ => map_error_parts(http, "", "", message),
    }
}

/// Anthropic's overflow wording, with Gemini's numbers in Anthropic's order.
fn prompt_too_long(message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    let overflow = m.contains("exceeds the maximum number of tokens")
        || (m.contains("input token count") && (m.contains("exceeds") || m.contains("only supports up to")))
        || m.contains("context window")
        || m.contains("prompt is too long");
    if !overflow {
        return None;
    }
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .filter(|n| *n >= 100)
        .collect();
    Some(match numbers.as_slice() {
        [actual, limit, ..] if actual > limit => format!("prompt is too long: {actual} tokens > {limit} maximum"),
        _ => format!("prompt is too long: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_gets_anthropic_wording() {
        let body = br#"{"error":{"code":400,"message":"The input token count (1234567) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        let m = map_error(400, body);
        assert_eq!((m.status, m.kind), (400, ErrorKind::InvalidRequest));
        assert_eq!(m.message, "prompt is too long: 1234567 tokens > 1048576 maximum");
    }

    #[test]
    fn statuses_and_retry_info() {
        let body = br#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"13.2s"}]}}]"#;
        let m = map_error(429, body);
        assert_eq!((m.status, m.kind), (429, ErrorKind::RateLimit));
        assert_eq!(retry_after(body), Some(14));
        assert_eq!(retry_after(b"{}"), None);
        let key = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
        assert_eq!(map_error(400, key).kind, ErrorKind::Authentication);
        assert_eq!(map_error(503, b"").kind, ErrorKind::Overloaded);
        assert_eq!(
            map_error(502, b"<html>bad gateway</html>").message,
            "<html>bad gateway</html>"
        );
    }
}
