//! Claude on Bedrock (InvokeModel) and Vertex AI (`rawPredict`): the body
//! edits and the beta table (`anthropic::cloud::edit_body`), and the
//! CountTokens body wrapped around an InvokeModel body. Claude in Bedrock's
//! Messages API: what it refuses stripped (`strip_unaccepted`). Clients in
//! Bedrock's format: a CountTokens body unwrapped
//! (`bedrock_count_tokens_input`) and its answer re-framed (`CountAnswer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::anthropic::cloud::{
    bedrock_count_tokens_input, edit_body, strip_unaccepted, Capabilities, Platform,
};
use modelgate::dialects::bedrock::{count_tokens_invoke, CountAnswer};
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
    for betas in BETAS {
        if let Ok(s) = strip_unaccepted(data, betas, &Capabilities::none(), "Bedrock") {
            assert!(s.betas.is_empty());
            if let Some(body) = s.body {
                let v: Value = serde_json::from_slice(&body).expect("stripped body is not JSON");
                for field in ["context_management", "output_config", "speed", "service_tier", "container", "mcp_servers"] {
                    assert!(v.get(field).is_none(), "{field} kept");
                }
            }
        }
    }
    if let Ok(inner) = bedrock_count_tokens_input(data) {
        let v: Value = serde_json::from_slice(&inner).expect("unwrapped body is not JSON");
        assert!(v.get("max_tokens").is_none() && v.get("stream").is_none());
    }
    // The answer re-framed in two pieces: the whole input comes out, as a
    // count or as it was.
    let mut answer = CountAnswer::default();
    let mut out = Vec::new();
    let (a, b) = data.split_at(data.len() / 2);
    answer.push(a, &mut out);
    answer.push(b, &mut out);
    answer.finish(&mut out);
    if out != data {
        let v: Value = serde_json::from_slice(&out).expect("a count is JSON");
        assert!(v["inputTokens"].is_u64(), "{v}");
    }
});
