//! A Gemini `streamGenerateContent?alt=sse` stream → Anthropic SSE
//! (`gemini::stream`), fed in fuzzer-chosen chunks (see
//! `modelgate_fuzz::Plan`). The output must keep the stream guarantees,
//! carry whole tool inputs, and be the same however the body was split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::gemini::GeminiStream;
use modelgate_fuzz::{check_translated, drive, is_json, tool_inputs, tool_names, Plan};

fuzz_target!(|data: &[u8]| {
    let plan = Plan::parse(data);
    let mut t = GeminiStream::new("claude-sonnet-4-5", "req_fuzz", 1234, tool_names());
    let out = drive(&mut t, &plan, &plan.chunks());
    let events = check_translated(&out, t.is_done(), true);
    for input in tool_inputs(&events) {
        assert!(
            input.starts_with('{') && is_json(input.as_bytes()),
            "a tool input that is not a JSON object: {input:?}"
        );
    }
    assert!(!t.completed() || t.is_done());
    let _ = t.usage();
    let mut whole = GeminiStream::new("claude-sonnet-4-5", "req_fuzz", 1234, tool_names());
    assert_eq!(
        drive(&mut whole, &plan, &[plan.body]),
        out,
        "the output depends on how the body was split"
    );
});
