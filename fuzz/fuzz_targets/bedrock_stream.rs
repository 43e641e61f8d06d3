//! A Bedrock InvokeModel event stream (Anthropic events in base64 `chunk`
//! frames, exceptions) → Anthropic SSE (`bedrock::stream::BedrockStream`).
//!
//! The body after the `Plan` head is a list of records that become frames
//! with valid checksums, or raw bytes (`modelgate_fuzz::frames::wire`); the
//! wire bytes are then fed in the plan's chunks. The SSE relayed must be
//! well framed with nothing after its end, and, for a stream that did not
//! break, the same however it was split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::bedrock::stream::BedrockStream;
use modelgate_fuzz::frames::{wire, Api};
use modelgate_fuzz::{check_passthrough, drive, Plan};

fuzz_target!(|data: &[u8]| {
    let plan = Plan::parse(data);
    let wire = wire(Api::Invoke, plan.body);
    let mut t = BedrockStream::default();
    let out = drive(&mut t, &plan, &plan.cut(&wire));
    check_passthrough(&out, t.is_done());
    assert!(!t.completed() || t.is_done());
    let _ = t.take_usage();
    let mut whole = BedrockStream::default();
    let reference = drive(&mut whole, &plan, &[&wire]);
    // A frame that breaks takes the SSE written earlier in the same push
    // with it, so only a stream without an error is split-independent.
    if !check_passthrough(&reference, whole.is_done())
        .iter()
        .any(|e| e.name == "error")
    {
        assert_eq!(reference, out, "the output depends on how the stream was split");
    }
});
