//! Claude on Bedrock (InvokeModel) and Vertex AI (`rawPredict`): the body
//! edits and the beta table (`anthropic::cloud::edit_body`), and the
//! CountTokens body wrapped around an InvokeModel body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::anthropic::cloud::{edit_body, Capabilities, Platform};
use modelgate::dialects::bedrock::count_tokens_invoke;
use serde_json::Value;

const BETAS: [&[&str]; 3] = [
    &[],
    &["claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"],
    &[
        " tool-search-tool-2025-10-19 ,, mcp-client-2025-04-04",
        "tool-examples-2025-10-29,web-search-2025-03-05,made-up-2099-01-01",
    ],
];

fuzz_target!(|data: &[u8]| {
    for platform in [Platform::Bedrock, Platform::Vertex] {
        let caps = Capabilities::for_platform(platform);
        for betas in BETAS {
            let Ok(edited) = edit_body(data, betas, &caps, platform) else {
                continue;
            };
            let v: Value = serde_json::from_slice(&edited.body).expect("edited body is not JSON");
            let obj = v.as_object().expect("edited body is not an object");
            assert_eq!(obj.keys().next().map(String::as_str), Some("anthropic_version"));
            assert_eq!(obj["anthropic_version"], platform.anthropic_version());
            assert!(!obj.contains_key("model"));
            if platform == Platform::Bedrock {
                assert!(!obj.contains_key("stream"));
            } else {
                assert!(!obj.contains_key("anthropic_beta"));
            }
            assert!(edited.betas.iter().all(|b| caps.accepts(b)), "{:?}", edited.betas);
            let count: Value = serde_json::from_slice(&count_tokens_invoke(&edited.body)).unwrap();
            assert!(count["input"]["invokeModel"]["body"].is_string());
        }
    }
});
