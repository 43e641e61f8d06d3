//! Upstream error answers → Anthropic errors: OpenAI-family bodies and
//! their reset headers, Google errors and `RetryInfo`, Bedrock exceptions.
//!
//! Input: a status (2 bytes, big-endian), then the body. The body's text
//! split at NUL bytes also gives the fields the part-wise mappers take.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::bedrock::map_exception;
use modelgate::dialects::gemini;
use modelgate::dialects::openai::error::{map_error, map_error_parts, retry_after_from_resets};

fuzz_target!(|data: &[u8]| {
    let status = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 500,
    };
    let body = data.get(2..).unwrap_or(&[]);
    for m in [map_error(status, body), gemini::map_error(status, body)] {
        let v = m.body(Some("req_1"));
        assert_eq!(v["error"]["message"], m.message.as_str());
    }
    let _ = gemini::retry_after(body);
    let text = String::from_utf8_lossy(body);
    let mut fields = text.split('\0');
    let (a, b, c) = (
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
    );
    let _ = map_error_parts(status, a, b, c);
    let (_, _, message) = map_exception(a, b);
    assert!(!message.is_empty());
    let _ = retry_after_from_resets(text.split(['\0', '\n']));
});
