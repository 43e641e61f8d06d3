//! Golden tests for Bedrock InvokeModel (`docs/protocol-notes.md` §5.1): the
//! body each Messages request becomes, the SSE each event-stream answer
//! becomes, and the error each exception becomes. Review changes with
//! `cargo insta review` (or INSTA_UPDATE=always).

use modelgate::dialects::anthropic::cloud::{edit_body, Platform};
use modelgate::dialects::bedrock::stream::{encode_chunk, encode_exception, BedrockStream};
use modelgate::dialects::bedrock::{invoke_path, map_exception, Capabilities};
use serde_json::{json, Value};

fn body(request: Value, betas: &[&str]) -> Value {
    let out = edit_body(
        &serde_json::to_vec(&request).unwrap(),
        betas,
        &Capabilities::bedrock(),
        Platform::Bedrock,
    )
    .unwrap();
    let mut v: Value = serde_json::from_slice(&out.body).unwrap();
    if !out.dropped.is_empty() {
        v["__dropped"] = json!(out.dropped);
    }
    v
}

fn base(extra: Value) -> Value {
    let mut v =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The SSE a sequence of event-stream frames becomes, fed in `split`-byte pieces.
fn sse(frames: &[Vec<u8>], split: usize) -> String {
    let wire: Vec<u8> = frames.concat();
    let mut s = BedrockStream::default();
    let mut out = Vec::new();
    for piece in wire.chunks(split.max(1)) {
        s.push(piece, &mut out);
    }
    s.finish(&mut out);
    String::from_utf8(out).unwrap()
}

fn chunk(v: Value) -> Vec<u8> {
    encode_chunk(&v.to_string())
}

macro_rules! golden {
    ($name:ident, $value:expr) => {
        #[test]
        fn $name() {
            insta::assert_json_snapshot!(stringify!($name), $value);
        }
    };
}

macro_rules! golden_text {
    ($name:ident, $value:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), $value);
        }
    };
}

golden!(req_minimal, body(base(json!({})), &[]));
golden!(
    req_stream_flag_and_model_removed,
    body(base(json!({"stream": true})), &[])
);
golden!(
    req_system_blocks_with_cache_control,
    body(
        base(
            json!({"system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}]})
        ),
        &[]
    )
);
golden!(
    req_thinking_and_interleaved_beta,
    body(
        base(json!({"thinking": {"type": "enabled", "budget_tokens": 4000}})),
        &["interleaved-thinking-2025-05-14"]
    )
);
golden!(
    req_claude_code_beta_header_filtered,
    body(
        base(json!({})),
        &["claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,prompt-caching-scope-2026-01-05"]
    )
);
golden!(
    req_betas_from_several_headers,
    body(
        base(json!({})),
        &[
            "context-1m-2025-08-07",
            " token-efficient-tools-2025-02-19 , output-128k-2025-02-19"
        ]
    )
);
golden!(
    req_context_management_without_its_beta,
    body(
        base(json!({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}})),
        &[]
    )
);
golden!(
    req_context_management_with_its_beta,
    body(
        base(json!({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}})),
        &["context-management-2025-06-27"]
    )
);
golden!(
    req_output_config_effort_dropped,
    body(
        base(json!({"output_config": {"effort": "medium"}})),
        &["effort-2025-11-24"]
    )
);
golden!(
    req_speed_fast_dropped,
    body(base(json!({"speed": "fast"})), &["fast-mode-2026-02-01"])
);
golden!(
    req_service_tier_dropped,
    body(base(json!({"service_tier": "auto"})), &[])
);
golden!(
    req_tools_eager_streaming_and_strict_dropped,
    body(
        base(json!({"tools": [
            {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}, "eager_input_streaming": true},
            {"name": "Emit", "input_schema": {"type": "object"}, "strict": true}
        ]})),
        &["fine-grained-tool-streaming-2025-05-14"]
    )
);
golden!(
    req_custom_tool_type_unwrapped,
    body(
        base(json!({"tools": [{"type": "custom", "name": "Bash", "input_schema": {"type": "object"}}]})),
        &[]
    )
);
golden!(
    req_defer_loading_with_tool_search_beta,
    body(
        base(json!({"tools": [{"name": "mcp__db__query", "input_schema": {"type": "object"}, "defer_loading": true}]})),
        &["tool-search-tool-2025-10-19"]
    )
);
golden!(
    req_defer_loading_without_beta,
    body(
        base(json!({"tools": [{"name": "mcp__db__query", "input_schema": {"type": "object"}, "defer_loading": true}]})),
        &[]
    )
);
golden!(
    req_tool_loop_history_kept_verbatim,
    body(
        json!({"model": "claude-sonnet-4-5", "max_tokens": 512, "tool_choice": {"type": "auto"}, "messages": [
            {"role": "user", "content": "read /tmp/a"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Need the file.", "signature": "c2ln"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/tmp/a"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "hello", "is_error": false}]}
        ]}),
        &[]
    )
);
golden!(
    req_sampling_and_stop_sequences_kept,
    body(
        base(
            json!({"temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}})
        ),
        &[]
    )
);

golden!(
    paths,
    json!([
        invoke_path("anthropic.claude-3-5-haiku-20241022-v1:0", false),
        invoke_path("us.anthropic.claude-sonnet-4-5-20250929-v1:0", true),
        invoke_path(
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-1-20250805-v1:0",
            true
        ),
    ])
);

golden!(
    exceptions,
    json!([
        "throttlingException",
        "ThrottlingException",
        "validationException",
        "modelTimeoutException",
        "serviceUnavailableException",
        "modelStreamErrorException",
        "internalServerException",
        "AccessDeniedException",
        "ResourceNotFoundException",
        "ServiceQuotaExceededException",
        "ModelNotReadyException",
        "UnrecognizedClientException",
    ]
    .iter()
    .map(|k| {
        let (status, kind, message) = map_exception(k, "m");
        json!({"exception": k, "status": status, "type": kind.as_str(), "message": message})
    })
    .collect::<Vec<_>>())
);

fn text_stream() -> Vec<Vec<u8>> {
    vec![
        chunk(
            json!({"type": "message_start", "message": {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 12, "cache_read_input_tokens": 2048, "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
        ),
        chunk(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        chunk(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello, "}})),
        chunk(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "wörld ✓"}})),
        chunk(json!({"type": "content_block_stop", "index": 0})),
        chunk(
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 6}}),
        ),
        chunk(
            json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 12, "outputTokenCount": 6, "invocationLatency": 420, "firstByteLatency": 180}}),
        ),
    ]
}

golden_text!(stream_text, sse(&text_stream(), 4096));
golden_text!(stream_text_split_every_7_bytes, sse(&text_stream(), 7));
golden_text!(
    stream_thinking_then_tool_use,
    sse(
        &[
            chunk(
                json!({"type": "message_start", "message": {"id": "msg_bdrk_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "usage": {"input_tokens": 30, "output_tokens": 1}}})
            ),
            chunk(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            ),
            chunk(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Read it."}})
            ),
            chunk(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCkgIBxAB"}})
            ),
            chunk(json!({"type": "content_block_stop", "index": 0})),
            chunk(
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_bdrk_1", "name": "Read", "input": {}}})
            ),
            chunk(
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"file_path\": \"/tm"}})
            ),
            chunk(
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "p/a\"}"}})
            ),
            chunk(json!({"type": "content_block_stop", "index": 1})),
            chunk(
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 40}})
            ),
            chunk(json!({"type": "message_stop"})),
        ],
        64
    )
);
golden_text!(
    stream_validation_exception_mid_stream,
    sse(
        &[
            text_stream()[0].clone(),
            encode_exception("validationException", "Input is too long for requested model."),
        ],
        4096
    )
);
golden_text!(
    stream_model_stream_error,
    sse(
        &[
            text_stream()[0].clone(),
            text_stream()[1].clone(),
            encode_exception("modelStreamErrorException", "The model stream failed.")
        ],
        4096
    )
);
golden_text!(stream_cut_before_message_stop, sse(&text_stream()[..4], 4096));
golden_text!(
    stream_garbage_is_an_error_event,
    sse(&[b"not an event stream frame at all".to_vec()], 4096)
);

// ---- Converse (non-Anthropic Bedrock models) ----

use modelgate::dialects::bedrock::converse::{
    converse_path, converse_request, converse_response, encode_event, ConverseStream,
};

fn conv(request: Value) -> Value {
    let r = converse_request(&serde_json::to_vec(&request).unwrap()).unwrap();
    let mut v: Value = serde_json::from_slice(&r.body).unwrap();
    if !r.notes.is_empty() {
        v["__notes"] = json!(r.notes);
    }
    v
}

fn conv_stream(frames: &[Vec<u8>], split: usize) -> String {
    let wire: Vec<u8> = frames.concat();
    let mut s = ConverseStream::new("nova-pro", "msg_conv_1", 42);
    let mut out = Vec::new();
    for piece in wire.chunks(split.max(1)) {
        s.push(piece, &mut out);
    }
    s.finish(&mut out);
    String::from_utf8(out).unwrap()
}

golden!(conv_minimal, conv(base(json!({}))));
golden!(
    conv_system_string_and_blocks_with_cache_point,
    json!([
        conv(base(json!({"system": "You are terse."}))),
        conv(base(
            json!({"system": [{"type": "text", "text": "Rules."}, {"type": "text", "text": "Context.", "cache_control": {"type": "ephemeral"}}]})
        ))
    ])
);
golden!(
    conv_inference_config,
    conv(base(
        json!({"temperature": 0.3, "top_p": 0.8, "top_k": 5, "stop_sequences": ["###"]})
    ))
);
golden!(
    conv_blank_text_dropped_and_empty_message_filled,
    conv(json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": " \n "}, {"type": "text", "text": "real"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": "next"}
    ]}))
);
golden!(
    conv_images_base64_and_url,
    conv(base(json!({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/a.png"}},
        {"type": "text", "text": "what is this?"}
    ]}]})))
);
golden!(
    conv_documents,
    conv(base(json!({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
        {"type": "text", "text": "summarise"}
    ]}]})))
);
golden!(
    conv_tool_loop,
    conv(json!({"model": "m", "max_tokens": 100, "tool_choice": {"type": "auto"},
    "tools": [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}],
    "messages": [
        {"role": "user", "content": "read /tmp/a"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "need it", "signature": "sig"},
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/tmp/a"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "hello"}]},
            {"type": "text", "text": "go on"}
        ]}
    ]}))
);
golden!(
    conv_tool_result_error_and_empty,
    conv(base(
        json!({"tools": [{"name": "Bash", "input_schema": {"type": "object"}}], "messages": [
            {"role": "user", "content": "run it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "", "is_error": true}]}
        ]})
    ))
);
golden!(
    conv_tool_choices,
    json!([
        conv(base(
            json!({"tools": [{"name": "A", "input_schema": {}}], "tool_choice": {"type": "any"}})
        ))["toolConfig"],
        conv(base(
            json!({"tools": [{"name": "A", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "A"}})
        ))["toolConfig"],
        conv(base(
            json!({"tools": [{"name": "A", "input_schema": {}}], "tool_choice": {"type": "none"}})
        ))["toolConfig"],
    ])
);
golden!(
    conv_server_tools_and_anthropic_only_fields_dropped,
    conv(base(json!({
        "tools": [{"type": "web_search_20250305", "name": "web_search"}, {"name": "Read", "input_schema": {"type": "object"}}],
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "context_management": {"edits": []},
        "output_config": {"effort": "low"}
    })))
);
golden!(
    conv_paths,
    json!([
        converse_path("amazon.nova-pro-v1:0", false),
        converse_path("meta.llama3-3-70b-instruct-v1:0", true)
    ])
);
golden!(
    conv_response_text_tool_and_reasoning,
    serde_json::from_slice::<Value>(
        &converse_response(
            json!({
                "output": {"message": {"role": "assistant", "content": [
                    {"reasoningContent": {"reasoningText": {"text": "think", "signature": "s1"}}},
                    {"text": "Let me read it."},
                    {"toolUse": {"toolUseId": "tooluse_9", "name": "Read", "input": {"file_path": "/a"}}}
                ]}},
                "stopReason": "tool_use",
                "usage": {"inputTokens": 100, "outputTokens": 20, "cacheReadInputTokens": 50, "cacheWriteInputTokens": 10}
            })
            .to_string()
            .as_bytes(),
            "nova-pro",
            "msg_conv_2"
        )
        .unwrap()
        .0
    )
    .unwrap()
);
golden!(
    conv_stop_reasons,
    json!([
        "end_turn",
        "tool_use",
        "max_tokens",
        "stop_sequence",
        "guardrail_intervened",
        "content_filtered",
        "model_context_window_exceeded",
        "something_new"
    ]
    .iter()
    .map(|r| json!([r, modelgate::dialects::bedrock::converse::stop_reason(Some(r))]))
    .collect::<Vec<_>>())
);

fn conv_frames() -> Vec<Vec<u8>> {
    vec![
        encode_event("messageStart", &json!({"role": "assistant"})),
        encode_event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Thinking."}}}),
        ),
        encode_event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig=="}}}),
        ),
        encode_event("contentBlockStop", &json!({"contentBlockIndex": 0})),
        encode_event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"text": ""}}),
        ),
        encode_event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"text": "Hello "}}),
        ),
        encode_event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"text": "there"}}),
        ),
        encode_event("contentBlockStop", &json!({"contentBlockIndex": 1})),
        encode_event("messageStop", &json!({"stopReason": "end_turn"})),
        encode_event(
            "metadata",
            &json!({"usage": {"inputTokens": 40, "outputTokens": 9, "cacheReadInputTokens": 8}, "metrics": {"latencyMs": 320}}),
        ),
    ]
}

golden_text!(conv_stream_reasoning_then_text, conv_stream(&conv_frames(), 4096));
golden_text!(conv_stream_split_every_3_bytes, conv_stream(&conv_frames(), 3));
golden_text!(
    conv_stream_message_stop_without_metadata,
    conv_stream(&conv_frames()[..9], 4096)
);
golden_text!(
    conv_stream_cut_before_message_stop,
    conv_stream(&conv_frames()[..6], 4096)
);
golden_text!(
    conv_stream_throttled,
    conv_stream(
        &[
            conv_frames()[0].clone(),
            encode_exception("throttlingException", "Rate exceeded")
        ],
        4096
    )
);
