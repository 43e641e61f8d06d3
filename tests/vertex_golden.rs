//! Golden tests for Claude on Vertex AI (`publishers/anthropic`): the body
//! each Messages request becomes, the betas sent as `anthropic-beta`, what
//! is dropped, and the paths. Gemini models on Vertex use the Gemini
//! translator (`tests/gemini_golden.rs`). Review with `cargo insta review`.

use modelgate::dialects::anthropic::cloud::{edit_body, Capabilities, Platform};
use modelgate::providers::vertex::VertexSite;
use serde_json::{json, Value};

fn edit(request: Value, betas: &[&str]) -> Value {
    edit_with(request, betas, &Capabilities::vertex())
}

fn edit_with(request: Value, betas: &[&str], caps: &Capabilities) -> Value {
    let out = edit_body(&serde_json::to_vec(&request).unwrap(), betas, caps, Platform::Vertex).unwrap();
    json!({
        "body": serde_json::from_slice::<Value>(&out.body).unwrap(),
        "anthropic-beta": out.betas,
        "dropped": out.dropped,
    })
}

fn base(extra: Value) -> Value {
    let mut v = json!({"model": "claude-sonnet-4-5@20250929", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[test]
fn minimal() {
    insta::assert_json_snapshot!(edit(base(json!({})), &[]));
}

#[test]
fn stream_stays_in_the_body() {
    insta::assert_json_snapshot!(edit(base(json!({"stream": true})), &[]));
}

#[test]
fn claude_code_betas_filtered() {
    insta::assert_json_snapshot!(edit(
        base(json!({})),
        &[
            "claude-code-20250219,interleaved-thinking-2025-05-14",
            "fine-grained-tool-streaming-2025-05-14"
        ]
    ));
}

#[test]
fn context_management_travels_with_its_beta() {
    insta::assert_json_snapshot!(edit(
        base(json!({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}})),
        &["context-management-2025-06-27"]
    ));
}

#[test]
fn context_management_without_its_beta_is_dropped() {
    insta::assert_json_snapshot!(edit(base(json!({"context_management": {"edits": []}})), &[]));
}

#[test]
fn never_accepted_fields_dropped() {
    insta::assert_json_snapshot!(edit(
        base(json!({"output_config": {"effort": "high"}, "speed": "fast", "service_tier": "auto", "container": "c1"})),
        &["effort-2025-11-24", "fast-mode-2026-02-01"]
    ));
}

#[test]
fn tool_fields_and_custom_type() {
    insta::assert_json_snapshot!(edit(
        base(json!({"tools": [
            {"type": "custom", "name": "Read", "input_schema": {"type": "object"}, "eager_input_streaming": true, "strict": true},
            {"name": "Grep", "input_schema": {"type": "object"}, "defer_loading": true}
        ]})),
        &["tool-search-tool-2025-10-19"]
    ));
}

#[test]
fn mcp_servers_need_their_beta_in_the_table() {
    let caps = Capabilities {
        betas: vec!["mcp-client-2025-04-04".into()],
    };
    insta::assert_json_snapshot!(edit_with(
        base(json!({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]})),
        &["mcp-client-2025-04-04"],
        &caps
    ));
}

#[test]
fn thinking_and_signed_blocks_untouched() {
    insta::assert_json_snapshot!(edit(
        base(
            json!({"thinking": {"type": "enabled", "budget_tokens": 2048}, "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "EqQBCkYIBxgC"}, {"type": "text", "text": "hello"}]},
                {"role": "user", "content": "again"}
            ]})
        ),
        &["interleaved-thinking-2025-05-14"]
    ));
}

#[test]
fn web_search_beta_accepted_on_vertex() {
    insta::assert_json_snapshot!(edit(
        base(json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]})),
        &["web-search-2025-03-05"]
    ));
}

#[test]
fn paths() {
    let site = VertexSite {
        project: "my-project".into(),
        location: "us-east5".into(),
    };
    insta::assert_json_snapshot!(json!([
        site.model_path("anthropic", "claude-sonnet-4-5@20250929", "rawPredict"),
        site.model_path("anthropic", "claude-sonnet-4-5@20250929", "streamRawPredict"),
        site.model_path("anthropic", "count-tokens", "rawPredict"),
        site.model_path("google", "gemini-2.5-pro", "streamGenerateContent?alt=sse"),
        site.model_path("google", "gemini 2.5/evil", "generateContent"),
    ]));
}
