//! A Chat Completions JSON answer → an Anthropic Message (`stream: false`,
//! and Claude Code's fallback after a broken stream), and the repair of
//! truncated tool arguments on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::openai::response::{parse_arguments, translate_response, ResponseContext};
use modelgate_fuzz::tool_names;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        assert!(parse_arguments(s).is_object());
    }
    let names = tool_names();
    let ctx = ResponseContext {
        model: "claude-sonnet-4-5",
        tool_names: &names,
        seed: "req_fuzz",
    };
    let Ok(t) = translate_response(data, &ctx) else {
        return;
    };
    let m: Value = serde_json::from_slice(&t.body).expect("message is not JSON");
    check_message(&m);
    assert_eq!(m["stop_reason"], t.stop_reason);
    assert_eq!(m["usage"], t.usage.to_json());
});

fn check_message(m: &Value) {
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    for block in m["content"].as_array().expect("content") {
        match block["type"].as_str().expect("block type") {
            "text" => assert!(block["text"].as_str().is_some_and(|t| !t.is_empty()), "{block}"),
            "thinking" => assert!(block["thinking"].is_string() && block["signature"].is_string()),
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
}
