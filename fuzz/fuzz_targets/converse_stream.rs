//! A Bedrock ConverseStream event stream → Anthropic SSE
//! (`bedrock::converse::ConverseStream`). The body after the `Plan` head is
//! a list of records that become frames with valid checksums, or raw bytes
//! (`modelgate_fuzz::frames::wire`); the wire bytes are fed in the plan's
//! chunks. The output must keep the stream guarantees and be the same
//! however the stream was split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::bedrock::converse::ConverseStream;
use modelgate_fuzz::frames::{wire, Api};
use modelgate_fuzz::{check_translated, drive, Plan};

fuzz_target!(|data: &[u8]| {
    let plan = Plan::parse(data);
    let wire = wire(Api::Converse, plan.body);
    let mut t = ConverseStream::new("nova-pro", "msg_fuzz", 42);
    let out = drive(&mut t, &plan, &plan.cut(&wire));
    // Converse passes the upstream's tool ids through as they came.
    check_translated(&out, t.is_done(), false);
    assert!(!t.completed() || t.is_done());
    let _ = t.usage();
    let mut whole = ConverseStream::new("nova-pro", "msg_fuzz", 42);
    assert_eq!(
        drive(&mut whole, &plan, &[&wire]),
        out,
        "the output depends on how the stream was split"
    );
});
