//! Golden tests for the Anthropic ⇄ OpenAI Chat Completions mapping
//! (`docs/protocol-notes.md` §3.1 and §3.3): each case pins the exact JSON
//! produced. Review changes with `cargo insta review` (or
//! INSTA_UPDATE=always).

use modelgate::dialects::openai::request::{translate_request, RequestOptions};
use modelgate::dialects::openai::response::{translate_response, ResponseContext};
use modelgate::dialects::openai::{upstream_tool_name, Flavor, ToolNames};
use serde_json::{json, Value};

fn req(flavor: Flavor, model: &str, body: Value) -> Value {
    let bytes = serde_json::to_vec(&body).unwrap();
    let t = translate_request(
        &bytes,
        &RequestOptions {
            flavor,
            upstream_model: model,
        },
    )
    .unwrap();
    let mut out: Value = serde_json::from_slice(&t.body).unwrap();
    if !t.notes.is_empty() {
        out["__notes"] = json!(t.notes);
    }
    out
}

fn openai(model: &str, body: Value) -> Value {
    req(Flavor::OpenAi, model, body)
}

fn base(messages: Value) -> Value {
    json!({"model": "claude-sonnet-5", "max_tokens": 1024, "messages": messages})
}

macro_rules! golden {
    ($name:ident, $value:expr) => {
        #[test]
        fn $name() {
            insta::assert_json_snapshot!(stringify!($name), $value);
        }
    };
}

golden!(req_system_string, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["system"] = json!("You are terse.");
    openai("gpt-4o", b)
});

golden!(req_system_blocks_drop_attribution_and_cache_control, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["system"] = json!([
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.abc; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": ""},
        {"type": "text", "text": "Be concise.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]);
    openai("gpt-4o", b)
});

golden!(
    req_mid_conversation_system_entry,
    openai(
        "gpt-4o",
        base(json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "system", "content": [{"type": "text", "text": "Reminder: run tests.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "second"}
        ]))
    )
);

golden!(
    req_user_images_base64_and_url,
    openai(
        "gpt-4o",
        base(json!([{"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
        ]}]))
    )
);

golden!(
    req_documents_openai,
    openai(
        "gpt-4o",
        base(json!([{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "spec.pdf"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}, "title": "notes"},
            {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
            {"type": "text", "text": "Summarise."}
        ]}]))
    )
);

golden!(
    req_documents_ollama_pdf_dropped,
    req(
        Flavor::Ollama,
        "qwen3-coder",
        base(json!([{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
            {"type": "text", "text": "Summarise."}
        ]}]))
    )
);

golden!(
    req_tool_results_become_tool_messages_before_user_text,
    openai(
        "gpt-4o",
        base(json!([
            {"role": "user", "content": "list and read"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Running both."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "Read", "input": {"file_path": "/tmp/a.txt"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a.txt\nb.txt"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]},
                {"type": "text", "text": "Now compare them."}
            ]}
        ]))
    )
);

golden!(
    req_tool_result_error_and_empty,
    openai(
        "gpt-4o",
        base(json!([
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "false"}}, {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "exit code 1", "is_error": true},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": ""}
            ]}
        ]))
    )
);

golden!(
    req_tool_result_images_follow_in_a_user_message,
    openai(
        "gpt-4o",
        base(json!([
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_s", "name": "Screenshot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_s", "content": [
                {"type": "text", "text": "captured"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo"}}
            ]}]}
        ]))
    )
);

golden!(
    req_assistant_thinking_dropped_text_kept,
    openai(
        "gpt-4o",
        base(json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBsig"},
                {"type": "redacted_thinking", "data": "abc"},
                {"type": "text", "text": "Hello!"},
                {"type": "text", "text": ""}
            ]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "only thoughts", "signature": "x"}]},
            {"role": "user", "content": [{"type": "text", "text": "  "}, {"type": "text", "text": "again"}]}
        ]))
    )
);

golden!(req_tools_to_functions, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["tools"] = json!([
        {"name": "Bash", "description": "Run a command", "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"], "additionalProperties": false}, "cache_control": {"type": "ephemeral"}},
        {"name": "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on", "description": "", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"description": "nameless"}
    ]);
    b["tool_choice"] =
        json!({"type": "tool", "name": "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on"});
    openai("gpt-4o", b)
});

golden!(
    req_long_tool_ids_hashed_consistently,
    openai(
        "gpt-4o",
        base(json!([
            {"role": "assistant", "content": [{"type": "tool_use", "id": "functions_Bash_0_a1b2c3d4_from_another_provider_session", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "functions_Bash_0_a1b2c3d4_from_another_provider_session", "content": "ok"}]}
        ]))
    )
);

golden!(req_tool_choice_variants, {
    let tools = json!([{"name": "Bash", "input_schema": {"type": "object"}}]);
    let choices = [
        json!({"type": "auto"}),
        json!({"type": "any"}),
        json!({"type": "none"}),
        json!({"type": "auto", "disable_parallel_tool_use": true}),
    ];
    choices
        .into_iter()
        .map(|c| {
            let mut b = base(json!([{"role": "user", "content": "hi"}]));
            b["tools"] = tools.clone();
            b["tool_choice"] = c;
            let out = openai("gpt-4o", b);
            json!({"tool_choice": out["tool_choice"], "parallel_tool_calls": out["parallel_tool_calls"]})
        })
        .collect::<Vec<_>>()
});

golden!(req_tool_choice_without_tools_is_dropped, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["tool_choice"] = json!({"type": "any"});
    openai("gpt-4o", b)
});

golden!(req_thinking_enabled_on_o3, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["max_tokens"] = json!(32000);
    b["thinking"] = json!({"type": "enabled", "budget_tokens": 31999});
    b["temperature"] = json!(0.2);
    b["top_p"] = json!(0.9);
    openai("o3", b)
});

golden!(req_thinking_budgets_bucket, {
    [1024, 4096, 16000]
        .into_iter()
        .map(|budget| {
            let mut b = base(json!([{"role": "user", "content": "hi"}]));
            b["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
            json!({"budget": budget, "effort": openai("o4-mini", b)["reasoning_effort"]})
        })
        .collect::<Vec<_>>()
});

golden!(req_adaptive_thinking_dropped_for_non_reasoning_model, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["thinking"] = json!({"type": "adaptive"});
    b["output_config"] = json!({"effort": "high"});
    b["context_management"] = json!({"edits": [{"type": "clear_thinking_20251015"}]});
    b["service_tier"] = json!("auto");
    b["speed"] = json!("fast");
    openai("gpt-4o", b)
});

golden!(req_adaptive_thinking_on_gpt5_uses_effort, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["max_tokens"] = json!(64000);
    b["thinking"] = json!({"type": "adaptive"});
    b["output_config"] = json!({"effort": "low"});
    openai("gpt-5.1", b)
});

golden!(req_openrouter_reasoning_and_top_k, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["thinking"] = json!({"type": "enabled", "budget_tokens": 8000});
    b["top_k"] = json!(40);
    let enabled = req(Flavor::OpenRouter, "deepseek/deepseek-r1", b.clone());
    b["thinking"] = json!({"type": "adaptive"});
    let adaptive = req(Flavor::OpenRouter, "openai/gpt-5", b);
    json!({"enabled": enabled, "adaptive": adaptive})
});

golden!(req_ollama_thinking_and_no_top_k, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    b["top_k"] = json!(40);
    let enabled = req(Flavor::Ollama, "qwen3", b.clone());
    b["thinking"] = json!({"type": "adaptive"});
    let adaptive = req(Flavor::Ollama, "qwen3", b);
    json!({"enabled": enabled, "adaptive": adaptive})
});

golden!(req_max_tokens_clamped, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["max_tokens"] = json!(32000);
    json!({"gpt-4o": openai("gpt-4o", b.clone()), "unknown-model": openai("my-local-model", b)})
});

golden!(req_stop_sequences_truncated_to_four, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["stop_sequences"] = json!(["a", "b", "c", "d", "e"]);
    openai("gpt-4o", b)
});

golden!(req_metadata_user_id_hashed, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["metadata"] = json!({"user_id": "{\"device_id\":\"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b\",\"account_uuid\":\"a\",\"session_id\":\"s\"}"});
    openai("gpt-4o", b)
});

golden!(req_stream_always_asks_for_usage, {
    let mut b = base(json!([{"role": "user", "content": "hi"}]));
    b["stream"] = json!(true);
    openai("gpt-4o", b)
});

golden!(req_structured_output_becomes_strict_response_format, {
    let mut b = base(json!([{"role": "user", "content": "title this"}]));
    b["output_config"] = json!({"format": {"type": "json_schema", "schema": {
        "type": "object",
        "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}
    }}});
    openai("gpt-4o-mini", b)
});

golden!(req_claude_code_fixture_summary, {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/claude_code_request.json"
    ))
    .unwrap();
    let t = translate_request(
        &body,
        &RequestOptions {
            flavor: Flavor::OpenAi,
            upstream_model: "gpt-5",
        },
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    let roles: Vec<String> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap().to_string();
            match m.get("tool_calls").and_then(Value::as_array) {
                Some(calls) => format!("{role}+{}calls", calls.len()),
                None => role,
            }
        })
        .collect();
    let system = v["messages"][0]["content"].as_str().unwrap();
    let dropped_keys_absent = ["thinking", "context_management", "output_config", "metadata", "system"]
        .iter()
        .all(|k| v.get(*k).is_none());
    json!({
        "roles": roles,
        "system_starts_with_attribution": system.starts_with("x-anthropic-billing-header"),
        "tools": v["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].clone()).collect::<Vec<_>>(),
        "first_tool_parameters_keys": v["tools"][0]["function"]["parameters"].as_object().unwrap().keys().collect::<Vec<_>>(),
        "max_completion_tokens": v["max_completion_tokens"],
        "reasoning_effort": v["reasoning_effort"],
        "stream": v["stream"],
        "stream_options": v["stream_options"],
        "user_len": v["user"].as_str().unwrap().len(),
        "dropped_keys_absent": dropped_keys_absent,
        "notes": t.notes,
    })
});

#[test]
fn fixture_translation_keeps_non_ascii_and_tool_inputs_exact() {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/claude_code_request.json"
    ))
    .unwrap();
    let t = translate_request(
        &body,
        &RequestOptions {
            flavor: Flavor::OpenAi,
            upstream_model: "gpt-4o",
        },
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&t.body).unwrap();
    let original: Value = serde_json::from_slice(&body).unwrap();
    // Tool schemas arrive unchanged as parameters.
    for (i, tool) in original["tools"].as_array().unwrap().iter().enumerate() {
        assert_eq!(out["tools"][i]["function"]["parameters"], tool["input_schema"]);
        assert_eq!(
            out["tools"][i]["function"]["name"],
            json!(upstream_tool_name(tool["name"].as_str().unwrap()))
        );
    }
    // Every tool_use input reaches the upstream as the same JSON, stringified.
    let inputs: Vec<&Value> = original["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| &b["input"])
        .collect();
    let args: Vec<Value> = out["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .map(|c| serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(inputs.len(), args.len());
    for (a, b) in inputs.iter().zip(&args) {
        assert_eq!(*a, b);
    }
    assert_eq!(out["max_tokens"], 16384, "clamped for gpt-4o");
}

fn resp(body: Value, names: &ToolNames) -> Value {
    let bytes = serde_json::to_vec(&body).unwrap();
    let t = translate_response(
        &bytes,
        &ResponseContext {
            model: "claude-sonnet-5",
            tool_names: names,
            seed: "seed",
        },
    )
    .unwrap();
    serde_json::from_slice(&t.body).unwrap()
}

fn completion(message: Value, finish: &str) -> Value {
    json!({"id": "chatcmpl-abc123", "object": "chat.completion", "model": "gpt-4o", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
           "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280, "prompt_tokens_details": {"cached_tokens": 1024}}})
}

golden!(
    resp_text,
    resp(
        completion(json!({"role": "assistant", "content": "Hello there."}), "stop"),
        &ToolNames::default()
    )
);

golden!(resp_reasoning_text_and_parallel_tools_with_long_name, {
    let mut names = ToolNames::default();
    let long = "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on";
    let up = names.to_upstream(long);
    resp(
        completion(
            json!({"role": "assistant", "reasoning_content": "Need two tools.", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": up, "arguments": "{\"q\":\"x\"}"}}
            ]}),
            "tool_calls",
        ),
        &names,
    )
});

golden!(
    resp_stop_with_tool_calls_is_tool_use,
    resp(
        completion(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "functions.Bash:0", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"pwd\"}"}}
            ]}),
            "stop"
        ),
        &ToolNames::default()
    )
);

golden!(
    resp_length_is_max_tokens,
    resp(
        completion(json!({"role": "assistant", "content": "cut"}), "length"),
        &ToolNames::default()
    )
);

golden!(
    resp_content_filter_is_refusal,
    resp(
        completion(
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
            "content_filter"
        ),
        &ToolNames::default()
    )
);

golden!(
    resp_truncated_arguments_repaired_and_openrouter_reasoning,
    resp(
        completion(
            json!({"role": "assistant", "reasoning": "hmm", "content": "", "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "Write", "arguments": "{\"file_path\":\"/tmp/x\",\"content\":\"abc"}}
            ]}),
            "tool_calls"
        ),
        &ToolNames::default()
    )
);

golden!(
    resp_no_id_no_usage_content_parts,
    resp(
        json!({"choices": [{"message": {"role": "assistant", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]}, "finish_reason": null}]}),
        &ToolNames::default()
    )
);

#[test]
fn resp_without_choices_is_an_error() {
    let err = translate_response(
        br#"{"id":"x","choices":[]}"#,
        &ResponseContext {
            model: "m",
            tool_names: &ToolNames::default(),
            seed: "s",
        },
    );
    assert!(err.is_err());
}
