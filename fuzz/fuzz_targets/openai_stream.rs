//! A Chat Completions SSE stream → Anthropic SSE (`openai::stream`), fed in
//! fuzzer-chosen chunks (see `modelgate_fuzz::Plan`). The output must keep
//! the stream guarantees and be the same however the body was split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::openai::stream::{StreamContext, StreamTranslator};
use modelgate_fuzz::{check_translated, drive, tool_names, Plan};

fn translator() -> StreamTranslator {
    StreamTranslator::new(StreamContext {
        model: "claude-sonnet-4-5".into(),
        message_seed: "req_fuzz".into(),
        estimated_input_tokens: 1234,
        tool_names: tool_names(),
    })
}

fuzz_target!(|data: &[u8]| {
    let plan = Plan::parse(data);
    let mut t = translator();
    let out = drive(&mut t, &plan, &plan.chunks());
    check_translated(&out, t.is_done(), true);
    let _ = (t.usage(), t.stop_reason());
    let mut whole = translator();
    assert_eq!(
        drive(&mut whole, &plan, &[plan.body]),
        out,
        "the output depends on how the body was split"
    );
});
