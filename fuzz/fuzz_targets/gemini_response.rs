//! A Gemini `GenerateContentResponse` (or Vertex's JSON array of them) →
//! an Anthropic Message, and the `:countTokens` answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::gemini::{count_tokens_response, translate_response, ResponseContext};
use modelgate_fuzz::tool_names;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let _ = count_tokens_response(data);
    let names = tool_names();
    let ctx = ResponseContext {
        model: "claude-sonnet-4-5",
        tool_names: &names,
        seed: "req_fuzz",
    };
    let (body, usage, stop) = match translate_response(data, &ctx) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.mapped();
            return;
        }
    };
    let m: Value = serde_json::from_slice(&body).expect("message is not JSON");
    assert_eq!(m["type"], "message");
    assert_eq!(m["stop_reason"], stop);
    assert_eq!(m["usage"], usage.to_json());
    for block in m["content"].as_array().expect("content") {
        match block["type"].as_str().expect("block type") {
            "text" => assert!(block["text"].as_str().is_some_and(|t| !t.is_empty()), "{block}"),
            "thinking" => assert!(block["thinking"].as_str().is_some_and(|t| !t.is_empty()), "{block}"),
            "tool_use" => {
                let id = block["id"].as_str().expect("tool_use.id");
                assert!(
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                    "tool_use.id {id:?}"
                );
                assert!(block["input"].is_object(), "{block}");
            }
            other => panic!("unexpected block {other}"),
        }
    }
});
