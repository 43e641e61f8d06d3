//! The official Anthropic Python SDK against the gateway on an OpenAI
//! upstream: it must parse every response and every streamed event.
//!
//! `scripts/test` installs the SDK into `tests/clients/venv` and sets
//! `MODELGATE_REQUIRE_SDK=1`; a bare `cargo test` without the venv skips
//! this test with a message instead of failing.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn python() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("MODELGATE_REQUIRE_SDK").is_err(),
        "MODELGATE_REQUIRE_SDK is set but tests/clients/venv is missing: run scripts/test"
    );
    eprintln!("skipping: no tests/clients/venv (scripts/test installs the Anthropic SDK there)");
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_python_sdk_parses_everything() {
    let Some(python) = python() else { return };
    let up = MockUpstream::start().await;
    up.push(Reply::json(
        200,
        openai_completion_json(json!({"role": "assistant", "content": "Hi from GPT."}), "stop"),
    ));
    let c = |delta: Value, finish: Value| json!({"id": "chatcmpl-p", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    up.push(Reply::sse(openai_sse_chunks(&[
        c(json!({"role": "assistant", "content": "Reading it."}), Value::Null),
        c(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "Read", "arguments": ""}}]}), Value::Null),
        c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"file_path\":\"/tmp/x\"}"}}]}), json!("tool_calls")),
        json!({"id": "chatcmpl-p", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9}}),
    ])));
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: oai\nproviders:\n  oai: {{type: openai, api_base: \"{}/v1\", api_key: sk-test, models: [claude-gw-gpt]}}\nroutes:\n  - {{match: 'claude-*', provider: oai, model: gpt-4o}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let base = gw.url("");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sdk_check.py"))
            .args([&base, "client-key", "claude-gw-gpt"])
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "SDK failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["create"]["text"], "Hi from GPT.");
    assert_eq!(v["create"]["stop_reason"], "end_turn");
    assert_eq!(v["stream"]["blocks"], json!(["text", "tool_use"]));
    assert_eq!(v["stream"]["text"], "Reading it.");
    assert_eq!(v["stream"]["tool_input"], json!([{"file_path": "/tmp/x"}]));
    assert_eq!(v["stream"]["stop_reason"], "tool_use");
    assert_eq!(v["stream"]["output_tokens"], 9);
    assert!(v["count_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["models"], json!(["claude-gw-gpt"]));
}

/// The same SDK against the scripted model in each landed dialect:
/// create, `messages.stream()` with a tool call, `count_tokens`, and the
/// error classes for the gateway's own 429 and 401.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_python_sdk_against_every_dialect() {
    let Some(python) = python() else { return };
    let key = "mg-sdkConformance000000000000000000000000000001";
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    for (dialect, provider) in [
        (
            "anthropic",
            "{type: anthropic, api_base: \"BASE\", api_key: sk-ant-mock}",
        ),
        ("openai", "{type: openai, api_base: \"BASE/v1\", api_key: sk-mock}"),
    ] {
        let up = MockUpstream::start().await;
        up.set_default(match dialect {
            "anthropic" => Reply::script(support::model::anthropic),
            _ => Reply::script(support::model::openai),
        });
        let yaml = format!(
            "listen: \"{{listen}}\"\ndefault_provider: p\nproviders:\n  p: {}\nroutes:\n  - {{match: '*', provider: p}}\nkeys:\n  - {{name: sdk, key_sha256: \"{hash}\", rate_limit: {{rpm: 2}}}}\n",
            provider.replace("BASE", &up.base_url())
        );
        let gw = Gateway::start_async(&yaml, &[]).await;
        let base = gw.url("");
        let python = python.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sdk_conformance.py"))
                .args([&base, key, "claude-sonnet-4-5"])
                .output()
                .unwrap()
        });
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .unwrap()
            .unwrap();
        assert!(
            output.status.success(),
            "{dialect}: SDK failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let v: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(v["create"]["text"], "pong", "{dialect}: {v}");
        assert_eq!(v["create"]["stop_reason"], "end_turn", "{dialect}: {v}");
        assert_eq!(
            v["stream"]["tool"],
            json!([["Read", {"file_path": "/tmp/conformance.txt"}]]),
            "{dialect}: {v}"
        );
        assert_eq!(v["stream"]["stop_reason"], "tool_use", "{dialect}: {v}");
        assert!(
            v["stream"]["events"].as_array().unwrap().contains(&json!("input_json")),
            "{dialect}: {v}"
        );
        assert!(v["count_tokens"].as_u64().unwrap() > 0, "{dialect}: {v}");
        assert_eq!(v["rate_limit"]["class"], "RateLimitError", "{dialect}: {v}");
        assert_eq!(v["rate_limit"]["type"], "rate_limit_error", "{dialect}: {v}");
        assert_eq!(v["auth"]["class"], "AuthenticationError", "{dialect}: {v}");
    }
}
