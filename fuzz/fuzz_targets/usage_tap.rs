//! The usage tap read on the side of every Anthropic passthrough answer
//! (`anthropic::usage::UsageTap`), SSE or JSON, fed in fuzzer-chosen chunks
//! (see `modelgate_fuzz::Plan`; flag bits 3-7 pick the status and content
//! type). What it reports must not depend on how the body was split.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use modelgate::dialects::anthropic::usage::UsageTap;
use modelgate::dialects::Usage;
use modelgate_fuzz::Plan;

const TYPES: [Option<&[u8]>; 5] = [
    Some(b"text/event-stream"),
    Some(b"application/json"),
    Some(b"text/event-stream; charset=utf-8"),
    Some(b"text/plain"),
    None,
];
const STATUSES: [u16; 4] = [200, 201, 299, 429];

fn tap(status: u16, content_type: Option<&[u8]>, chunks: &[&[u8]]) -> Option<Usage> {
    let mut t = UsageTap::new(status, content_type);
    let mut final_usage = false;
    for c in chunks {
        t.observe(&Bytes::copy_from_slice(c));
        // Once the final usage is known, it stays known.
        assert!(!final_usage || t.has_final_usage());
        final_usage = t.has_final_usage();
    }
    let usage = t.finish();
    assert!(
        !final_usage || usage.is_some(),
        "final usage reported but none returned"
    );
    usage
}

fuzz_target!(|data: &[u8]| {
    let plan = Plan::parse(data);
    let flags = data.first().copied().unwrap_or(0) >> 3;
    let content_type = TYPES[usize::from(flags) % TYPES.len()];
    let status = STATUSES[usize::from(flags / 5) % STATUSES.len()];
    let split = tap(status, content_type, &plan.chunks());
    let whole = tap(status, content_type, &[plan.body]);
    assert_eq!(split, whole, "the usage depends on how the body was split");
    if let Some(u) = whole {
        let _ = u.total();
    }
});
