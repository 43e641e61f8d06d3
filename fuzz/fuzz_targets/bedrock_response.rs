//! A Bedrock Converse JSON answer → an Anthropic Message, and the
//! CountTokens answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::bedrock::converse::converse_response;
use modelgate::dialects::bedrock::count_tokens_response;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let _ = count_tokens_response(data);
    let Ok((body, usage)) = converse_response(data, "nova-pro", "msg_fuzz") else {
        return;
    };
    let m: Value = serde_json::from_slice(&body).expect("message is not JSON");
    assert_eq!(m["type"], "message");
    assert_eq!(m["usage"], usage.to_json());
    assert!(m["content"].is_array() && m["stop_reason"].is_string());
});
