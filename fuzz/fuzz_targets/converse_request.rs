//! Anthropic Messages → Bedrock Converse (non-Anthropic Bedrock models),
//! and the CountTokens body made from the Converse body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::bedrock::converse::converse_request;
use modelgate::dialects::bedrock::count_tokens_converse;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = converse_request(data) else {
        return;
    };
    let v: Value = serde_json::from_slice(&r.body).expect("Converse body is not JSON");
    assert!(v.is_object());
    let count = count_tokens_converse(&r.body).expect("no CountTokens body for a Converse body");
    assert!(serde_json::from_slice::<Value>(&count).is_ok());
});
