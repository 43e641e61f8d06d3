//! Golden tests for the Gemini dialect (`docs/protocol-notes.md` §4): the
//! body each Messages request becomes, the Message or SSE each Gemini answer
//! becomes, the legacy schema sanitiser, thought signatures going round,
//! and the error each Google error becomes. Review changes with
//! `cargo insta review` (or INSTA_UPDATE=always).

use modelgate::dialects::gemini::schema::{legacy_parameters, sanitize};
use modelgate::dialects::gemini::{
    count_tokens_body, count_tokens_path, count_tokens_response, generate_path, map_error, retry_after,
    translate_request, translate_response, GeminiStream, RequestOptions, ResponseContext, ToolNames,
};
use serde_json::{json, Value};

const SEED: &str = "req_golden";

fn translate(request: &Value, model: &str, legacy: bool) -> modelgate::dialects::gemini::Translated {
    translate_request(
        &serde_json::to_vec(request).unwrap(),
        &RequestOptions {
            upstream_model: model,
            vertex: false,
            legacy_schema: legacy,
        },
    )
    .unwrap()
}

/// The Gemini body (and the notes) for `request`.
fn req_on(request: Value, model: &str, legacy: bool) -> Value {
    let t = translate(&request, model, legacy);
    let body: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(t.estimated_input_tokens, (t.body.len() as u64 / 4).max(1));
    json!({"body": body, "stream": t.stream, "notes": t.notes})
}

fn req(request: Value) -> Value {
    req_on(request, "gemini-2.5-pro", false)
}

fn base(extra: Value) -> Value {
    let mut v =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn response(body: Value, names: &ToolNames) -> Value {
    match translate_response(
        &serde_json::to_vec(&body).unwrap(),
        &ResponseContext {
            model: "claude-sonnet-4-5",
            tool_names: names,
            seed: SEED,
        },
    ) {
        Ok((message, usage, stop)) => {
            let message: Value = serde_json::from_slice(&message).unwrap();
            assert_eq!(message["stop_reason"], stop);
            assert_eq!(message["usage"], usage.to_json());
            message
        }
        Err(e) => {
            let m = e.mapped();
            json!({"error": e.to_string(), "status": m.status, "type": m.kind.as_str()})
        }
    }
}

/// The SSE a Gemini stream becomes: each event a `data:` line (`\r\n`
/// endings, as AI Studio sends), the body fed in `split`-byte pieces.
fn sse_with(events: &[Value], split: usize, names: ToolNames) -> String {
    let mut wire = Vec::new();
    for e in events {
        wire.extend_from_slice(format!("data: {e}\r\n\r\n").as_bytes());
    }
    let mut s = GeminiStream::new("claude-sonnet-4-5", SEED, 1234, names);
    let mut out = Vec::new();
    s.start(&mut out);
    for piece in wire.chunks(split.max(1)) {
        s.push(piece, &mut out);
    }
    s.finish(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert_well_formed(&text);
    let usage = s.usage();
    format!(
        "{text}# completed={} usage={}\n",
        s.completed(),
        serde_json::to_string(&usage.to_json()).unwrap()
    )
}

fn sse(events: &[Value], split: usize) -> String {
    sse_with(events, split, ToolNames::default())
}

/// Anthropic's stream invariants: message_start first, sequential block
/// indices, one block open at a time, no empty deltas, one ending last.
fn assert_well_formed(text: &str) {
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap().to_string();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect();
    assert_eq!(events[0].0, "message_start");
    let mut open: Option<u64> = None;
    let mut next = 0;
    for (i, (name, data)) in events.iter().enumerate() {
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "block opened while another is open");
                assert_eq!(data["index"], next);
                open = Some(next);
                next += 1;
            }
            "content_block_delta" => {
                assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                let delta = &data["delta"];
                let field = ["text", "thinking", "partial_json", "signature"]
                    .iter()
                    .find_map(|f| delta.get(*f))
                    .unwrap();
                assert_ne!(field, "", "empty delta");
            }
            "content_block_stop" => {
                assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                open = None;
            }
            "message_delta" => assert_eq!(events[i + 1].0, "message_stop"),
            "message_stop" | "error" => assert_eq!(i, events.len() - 1, "{name} is not last"),
            other => assert_eq!(other, "message_start"),
        }
    }
}

fn chunk(parts: Value) -> Value {
    json!({"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}], "usageMetadata": {"promptTokenCount": 1200, "totalTokenCount": 1200}, "modelVersion": "gemini-2.5-pro", "responseId": "resp-1"})
}

fn finish(parts: Value, reason: &str) -> Value {
    json!({"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": reason, "index": 0}], "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 40, "thoughtsTokenCount": 60, "cachedContentTokenCount": 1000, "totalTokenCount": 1300}, "modelVersion": "gemini-2.5-pro", "responseId": "resp-1"})
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

// ---- request ---------------------------------------------------------------

golden!(
    req_system_and_mid_conversation_system,
    req(json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.abc; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "  "},
        {"type": "text", "text": "Be brief."}
    ],
    "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": [{"type": "text", "text": "<system-reminder>todo list is empty</system-reminder>", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "text", "text": "list files"}]}
    ]}))
);
golden!(
    req_system_string_roles_merged_blank_text_stripped,
    req(
        json!({"model": "m", "max_tokens": 100, "system": "Plain system.", "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": [{"type": "text", "text": " "}]},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": ""},
            {"role": "user", "content": "three"}
        ]})
    )
);
golden!(
    req_images_and_documents,
    req(base(json!({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.webp?size=2"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_01"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="}},
        {"type": "document", "title": "notes.txt", "source": {"type": "text", "media_type": "text/plain", "data": "line one"}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "text", "text": "What is in these?"}
    ]}]})))
);
golden!(
    req_tool_pairing_unequal_counts,
    req_on(
        json!({"model": "m", "max_tokens": 100, "messages": [
            {"role": "user", "content": "read three files"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_a", "name": "Read", "input": {"file_path": "/a"}},
                {"type": "tool_use", "id": "toolu_b", "name": "Read", "input": {"file_path": "/b"}},
                {"type": "tool_use", "id": "toolu_c", "name": "Bash", "input": {"command": "ls"}}
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "(interrupted)"},
                {"type": "tool_result", "tool_use_id": "toolu_c", "content": [{"type": "text", "text": "a\nb"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}]},
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "permission denied", "is_error": true},
                {"type": "tool_result", "tool_use_id": "toolu_old", "content": "from an earlier turn"}
            ]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_d", "name": "Read", "input": {"file_path": "/d"}}]},
            {"role": "assistant", "content": "Trailing text in a second assistant message."},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_d", "content": []}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_e", "name": "Glob", "input": {"pattern": "*"}}]}
        ]}),
        "gemini-2.5-pro",
        false
    )
);
golden!(
    req_thinking_history_ours_and_foreign,
    req_on(
        json!({"model": "m", "max_tokens": 100, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Anthropic-signed thought", "signature": "EqQBCkgIBxABGAIiQM9"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy"},
                {"type": "thinking", "thinking": "Unsigned thought from an OpenAI route", "signature": ""},
                {"type": "thinking", "thinking": "**Plan** read it", "signature": "gemini-thought:CiQBjz1rX+/8w9Q="},
                {"type": "thinking", "thinking": "(no content)", "signature": "gemini-thought:Eg8KDQ=="},
                {"type": "text", "text": "Done."}
            ]},
            {"role": "user", "content": "next"}
        ]}),
        "gemini-3-pro-preview",
        false
    )
);
golden!(
    req_tools_json_schema_and_names,
    req(base(json!({
        "tools": [
            {"name": "Read", "description": "Read a file", "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": {"file_path": {"type": "string"}, "offset": {"type": "integer", "exclusiveMinimum": 0}}, "required": ["file_path"], "additionalProperties": false}, "cache_control": {"type": "ephemeral"}},
            {"name": "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on_and_on", "description": "", "input_schema": {"type": "object"}, "strict": true},
            {"name": "1password-lookup", "input_schema": {"type": "object", "properties": {}}, "defer_loading": true, "eager_input_streaming": true},
            {"name": "server.tool:v2", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
            {"name": "NoSchema"},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            {"type": "code_execution_20250522", "name": "code_execution"},
            {"type": "bash_20250124", "name": "bash"}
        ],
        "tool_choice": {"type": "tool", "name": "1password-lookup", "disable_parallel_tool_use": true}
    })))
);
golden!(
    req_web_search_alone_is_google_search,
    req(base(
        json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}], "tool_choice": {"type": "auto"}})
    ))
);
golden!(
    req_tool_choices,
    ["auto", "any", "none"]
        .iter()
        .map(|kind| json!({"type": kind}))
        .chain([json!({"type": "tool", "name": "Bash"}), json!({"type": "tool"})])
        .map(|choice| {
            let v = req(base(json!({"tools": [{"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}], "tool_choice": choice.clone()})));
            json!({"tool_choice": choice, "toolConfig": v["body"]["toolConfig"]})
        })
        .chain([{
            // No declarations: no toolConfig at all.
            let v = req(base(json!({"tool_choice": {"type": "any"}})));
            json!({"tool_choice": {"type": "any", "tools": []}, "toolConfig": v["body"].get("toolConfig")})
        }])
        .collect::<Vec<_>>()
);
golden!(
    req_generation_config,
    json!({
        "gemini-2.5-flash": req_on(base(json!({"max_tokens": 100000, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop_sequences": ["a", "b", "c", "d", "e", "f"]})), "gemini-2.5-flash", false),
        "gemini-2.0-flash": req_on(base(json!({"max_tokens": 32000})), "gemini-2.0-flash", false)["body"]["generationConfig"],
        "unknown-model": req_on(base(json!({"max_tokens": 32000})), "my-tuned-model", false)["body"]["generationConfig"],
    })
);
golden!(req_thinking_matrix, {
    let cases = [
        json!({"type": "enabled", "budget_tokens": 31999}),
        json!({"type": "enabled", "budget_tokens": 1024}),
        json!({"type": "enabled", "budget_tokens": 100}),
        json!({"type": "adaptive"}),
        json!({"type": "disabled"}),
    ];
    let models = [
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-3-pro-preview",
        "gemini-2.0-flash",
    ];
    let mut rows = Vec::new();
    for model in models {
        for thinking in &cases {
            let v = req_on(base(json!({"thinking": thinking, "max_tokens": 64000})), model, false);
            rows.push(json!({
                "model": model,
                "thinking": thinking,
                "thinkingConfig": v["body"]["generationConfig"].get("thinkingConfig"),
                "notes": v["notes"],
            }));
        }
    }
    for effort in ["low", "medium", "high", "max"] {
        let v = req_on(
            base(json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": effort}})),
            "gemini-3-flash-preview",
            false,
        );
        rows.push(json!({"model": "gemini-3-flash-preview", "effort": effort, "thinkingConfig": v["body"]["generationConfig"]["thinkingConfig"]}));
    }
    rows
});
golden!(req_structured_output, {
    let format = json!({"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 50}, "kind": {"const": "title"}}, "required": ["title"], "additionalProperties": false}});
    json!({
        "json_schema": req(base(json!({"output_config": {"format": format}})))["body"]["generationConfig"],
        "legacy": req_on(base(json!({"output_config": {"format": format}})), "gemini-2.5-flash", true)["body"]["generationConfig"],
        "output_format_beta": req(base(json!({"output_format": format})))["body"]["generationConfig"],
        "not_json_schema": req(base(json!({"output_config": {"format": {"type": "text"}}}))),
    })
});
golden!(
    req_anthropic_only_fields_dropped,
    req(base(json!({
        "metadata": {"user_id": "{\"device_id\":\"abc\"}"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "service_tier": "auto",
        "speed": "fast",
        "container": "container_01",
        "mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}],
        "thinking": {"type": "adaptive"}
    })))
);
golden!(
    req_legacy_schema_tools,
    req_on(
        base(json!({"tools": [
            {"name": "Bash", "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "number", "maximum": 600000, "exclusiveMinimum": 0}, "mode": {"type": ["string", "null"], "enum": ["fast", "slow", null]}}, "required": ["command"], "additionalProperties": false}},
            {"name": "EnterPlanMode", "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": {}, "additionalProperties": false}}
        ]})),
        "gemini-2.5-pro",
        true
    )
);
golden!(
    schema_sanitiser,
    [
        json!({"type": ["string", "null"]}),
        json!({"type": ["integer", "string"], "description": "either"}),
        json!({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100}),
        json!({"type": "number", "minimum": 1.5, "exclusiveMinimum": 2.5}),
        json!({"type": "number", "multipleOf": 0.5, "default": 1}),
        json!({"const": "only"}),
        json!({"const": 3, "type": "integer"}),
        json!({"type": "integer", "enum": [1, 2, 4]}),
        json!({"enum": [true, "x", 2]}),
        json!({"anyOf": [{"const": "error"}, {"const": "warning"}, {"const": "hint"}], "description": "Minimum severity"}),
        json!({"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}], "description": "Optional URL"}),
        json!({"oneOf": [{"type": "string"}, {"type": "object", "properties": {"path": {"type": "string"}}}]}),
        json!({"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]}),
        json!({"type": "array"}),
        json!({"type": "array", "items": [{"type": "string"}, {"type": "number"}]}),
        json!({"type": "array", "prefixItems": [{"type": "integer"}]}),
        json!({"type": "object", "additionalProperties": {"type": "string"}, "propertyNames": {"pattern": "^[a-z]+$"}}),
        json!({"type": "object", "properties": {}}),
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "missing"], "propertyOrdering": ["missing", "a"]}),
        json!({"type": "string", "format": "date-time", "title": "When", "pattern": "^\\d", "minLength": 1, "maxLength": 30, "example": "2026-01-01T00:00:00Z"}),
        json!({"type": "string", "format": "email"}),
        json!({"type": "integer", "format": "int64", "minimum": 0}),
        json!({"properties": {"node": {"$ref": "#/$defs/Leaf", "description": "overridden"}}, "$defs": {"Leaf": {"type": "object", "description": "leaf", "properties": {"v": {"type": "string"}}}}}),
        json!({"properties": {"x": {"$ref": "#/definitions/X"}}, "definitions": {"X": {"type": "integer", "minimum": 1}}}),
        json!({"properties": {"x": {"$ref": "#/$defs/Missing"}}}),
        json!({"type": "null"}),
        json!(true),
        json!({"type": "object", "properties": {"default": {"type": "string", "default": "d"}, "type": {"type": "string"}}}),
    ]
    .into_iter()
    .map(|input| json!({"in": input, "out": Value::Object(sanitize(&input)), "parameters": legacy_parameters(&input)}))
    .collect::<Vec<_>>()
);

golden!(paths_and_count_tokens, {
    let t = translate(
        &base(
            json!({"system": "sys", "tools": [{"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}], "tool_choice": {"type": "any"}, "thinking": {"type": "enabled", "budget_tokens": 2048}}),
        ),
        "gemini-2.5-flash",
        false,
    );
    let body = |vertex| -> Value {
        serde_json::from_slice(&count_tokens_body(&t.body, "gemini-2.5-flash", vertex).unwrap()).unwrap()
    };
    json!({
        "generate": generate_path("gemini-2.5-pro", false),
        "stream": generate_path("gemini-2.5-pro", true),
        "prefixed": generate_path("models/gemini-2.5-flash", true),
        "escaped": generate_path("tuned/my model:v1", false),
        "count": count_tokens_path("gemini-2.5-pro"),
        "count_body_ai_studio": body(false),
        "count_body_vertex": body(true),
        "count_response": count_tokens_response(br#"{"totalTokens": 2095, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2095}]}"#).unwrap(),
        "count_response_zero": count_tokens_response(b"{}").unwrap(),
    })
});

// ---- the Claude Code fixture ------------------------------------------------

fn fixture() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/claude_code_request.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

/// Every legacy-schema rule, checked at every schema node (property names
/// are data, so `properties` values are walked as schemas, not keywords).
fn assert_legacy_clean(schema: &Value, at: &str) {
    const FORBIDDEN: &[&str] = &[
        "$schema",
        "$id",
        "$ref",
        "$defs",
        "definitions",
        "additionalProperties",
        "const",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "propertyNames",
        "multipleOf",
        "oneOf",
        "allOf",
        "default",
        "examples",
    ];
    const ALLOWED: &[&str] = &[
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "items",
        "minimum",
        "maximum",
    ];
    let obj = schema.as_object().unwrap_or_else(|| panic!("{at}: not an object"));
    for key in obj.keys() {
        assert!(!FORBIDDEN.contains(&key.as_str()), "{at}: forbidden `{key}`");
        assert!(ALLOWED.contains(&key.as_str()), "{at}: unknown `{key}`");
    }
    if let Some(t) = obj.get("type") {
        let t = t.as_str().unwrap_or_else(|| panic!("{at}: type is not a string"));
        assert!(
            ["STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"].contains(&t),
            "{at}: type {t}"
        );
        if t == "ARRAY" {
            assert!(obj.contains_key("items"), "{at}: array without items");
        }
    }
    if let Some(e) = obj.get("enum") {
        assert!(
            e.as_array().unwrap().iter().all(Value::is_string),
            "{at}: non-string enum"
        );
    }
    if let Some(f) = obj.get("format") {
        assert!(
            ["enum", "date-time", "float", "double", "int32", "int64"].contains(&f.as_str().unwrap()),
            "{at}: format {f}"
        );
    }
    if let Some(props) = obj.get("properties") {
        let props = props.as_object().unwrap();
        assert!(!props.is_empty(), "{at}: empty properties");
        for (name, sub) in props {
            assert_legacy_clean(sub, &format!("{at}.{name}"));
        }
        for r in obj.get("required").and_then(Value::as_array).into_iter().flatten() {
            assert!(
                props.contains_key(r.as_str().unwrap()),
                "{at}: required {r} is not a property"
            );
        }
    }
    if let Some(items) = obj.get("items") {
        assert_legacy_clean(items, &format!("{at}[]"));
    }
    for (i, m) in obj
        .get("anyOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        assert_legacy_clean(m, &format!("{at}|{i}"));
    }
}

fn fixture_summary(model: &str, legacy: bool) -> Value {
    let request = fixture();
    let t = translate(&request, model, legacy);
    let body: Value = serde_json::from_slice(&t.body).unwrap();
    let declarations = body["tools"][0]["functionDeclarations"].as_array().unwrap();
    let originals = request["tools"].as_array().unwrap();
    assert_eq!(declarations.len(), originals.len());
    for (d, o) in declarations.iter().zip(originals) {
        if legacy {
            assert!(d.get("parametersJsonSchema").is_none());
            if let Some(p) = d.get("parameters") {
                assert_legacy_clean(p, d["name"].as_str().unwrap());
            }
        } else {
            assert!(d.get("parameters").is_none());
            assert_eq!(d["parametersJsonSchema"], o["input_schema"], "{}", d["name"]);
        }
    }
    let kinds = |parts: &Value| -> Vec<String> {
        parts
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let key = p
                    .as_object()
                    .unwrap()
                    .keys()
                    .find(|k| k.as_str() != "thoughtSignature" && k.as_str() != "thought")
                    .unwrap()
                    .clone();
                match (p.get("thought"), p.get("thoughtSignature")) {
                    (Some(_), _) => format!("thought:{key}"),
                    (None, Some(s)) => format!("{key}+signature({})", s.as_str().unwrap()),
                    _ => key,
                }
            })
            .collect()
    };
    json!({
        "stream": t.stream,
        "notes": t.notes,
        "systemInstruction": kinds(&body["systemInstruction"]["parts"]),
        "contents": body["contents"].as_array().unwrap().iter().map(|c| json!({"role": c["role"], "parts": kinds(&c["parts"])})).collect::<Vec<_>>(),
        "functionResponse": body["contents"][2]["parts"][0]["functionResponse"]["name"],
        "declarations": declarations.iter().map(|d| d["name"].clone()).collect::<Vec<_>>(),
        "read_tool": if legacy { declarations[5]["parameters"].clone() } else { Value::Null },
        "generationConfig": body["generationConfig"],
        "toolConfig": body.get("toolConfig"),
    })
}

golden!(
    claude_code_fixture_json_schema,
    fixture_summary("gemini-3-pro-preview", false)
);
golden!(
    claude_code_fixture_legacy_schema,
    fixture_summary("gemini-2.5-pro", true)
);

// ---- response (JSON) --------------------------------------------------------

golden!(resp_thinking_text_and_parallel_calls, {
    let t = translate(
        &base(
            json!({"tools": [{"name": "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on", "input_schema": {"type": "object"}}, {"name": "Read", "input_schema": {"type": "object"}}]}),
        ),
        "gemini-2.5-pro",
        false,
    );
    let long = t.tool_names.clone();
    let upstream_long = json!(modelgate::dialects::openai::upstream_tool_name_with(
        "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on",
        &modelgate::dialects::gemini::GEMINI_NAMES
    ));
    response(
        json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "**Reading**\n\nBoth files are needed.", "thought": true},
                {"text": " Then compare.", "thought": true, "thoughtSignature": "CiQBjz1rX+/8w9Q="},
                {"text": "I'll read "},
                {"text": "both files."},
                {"functionCall": {"name": "Read", "args": {"file_path": "/a.rs"}}, "thoughtSignature": "EtYBCtMBAXLI2nw="},
                {"functionCall": {"name": upstream_long, "args": {}}},
                {"functionCall": {"name": "Read", "args": {"file_path": "/b.rs", "limit": 20}, "id": "fc_7"}}
            ]}, "finishReason": "STOP", "index": 0, "safetyRatings": []}],
            "usageMetadata": {"promptTokenCount": 25000, "candidatesTokenCount": 40, "totalTokenCount": 25160, "cachedContentTokenCount": 24000, "thoughtsTokenCount": 120, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 25000}]},
            "modelVersion": "gemini-2.5-pro", "responseId": "mJAzaOHBLsqbmecP"}),
        &long,
    )
});
golden!(resp_finish_reasons, {
    let text = json!([{"text": "partial"}]);
    let call = json!([{"functionCall": {"name": "Bash", "args": {"command": "ls"}}}]);
    let cases = [
        ("STOP", text.clone()),
        ("STOP", call.clone()),
        ("MAX_TOKENS", text.clone()),
        ("SAFETY", text.clone()),
        ("SAFETY", json!([])),
        ("RECITATION", text.clone()),
        ("PROHIBITED_CONTENT", json!([])),
        ("MALFORMED_FUNCTION_CALL", text.clone()),
        ("MALFORMED_FUNCTION_CALL", json!([])),
        ("UNEXPECTED_TOOL_CALL", json!([])),
        ("OTHER", text.clone()),
        ("FINISH_REASON_UNSPECIFIED", text),
    ];
    let mut rows: Vec<Value> = cases
            .into_iter()
            .map(|(reason, parts)| {
                let m = response(
                    json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": reason}], "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 12}}),
                    &ToolNames::default(),
                );
                json!({"finishReason": reason, "stop_reason": m.get("stop_reason"), "content": m.get("content"), "error": m.get("error"), "status": m.get("status")})
            })
            .collect();
    let blocked = response(
        json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}}),
        &ToolNames::default(),
    );
    rows.push(json!({"promptFeedback.blockReason": "PROHIBITED_CONTENT", "message": blocked}));
    rows.push(json!({"not a response": response(json!("hello"), &ToolNames::default())}));
    rows
});
golden!(
    resp_vertex_array_body,
    response(
        json!([
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}},
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 2, "totalTokenCount": 10}}
        ]),
        &ToolNames::default()
    )
);

// A Gemini answer → the Anthropic message Claude Code keeps → replayed as
// history → the Gemini body: every signature back on its own part.
golden!(signature_round_trip, {
    let names = ToolNames::default();
    let message = response(
        json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Need both files.", "thought": true, "thoughtSignature": "Cq0CAY89a1+4SxkW/v8fA=="},
                {"text": "Reading.", "thoughtSignature": "Eg0KCwFyyNp8advisory"},
                {"functionCall": {"name": "Read", "args": {"file_path": "/a"}}, "thoughtSignature": "EtYBCtMBAXLI2nw="},
                {"functionCall": {"name": "Read", "args": {"file_path": "/b"}}}
            ]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 100, "totalTokenCount": 150}}),
        &names,
    );
    let content = message["content"].clone();
    let ids: Vec<Value> = content
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| b["id"].clone())
        .collect();
    let history = json!({"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [
        {"role": "user", "content": "compare /a and /b"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": ids[1], "content": "B"},
            {"type": "tool_result", "tool_use_id": ids[0], "content": "A"}
        ]}
    ]});
    let replayed = req_on(history, "gemini-3-pro-preview", false);
    json!({"anthropic_content": content, "gemini_contents": replayed["body"]["contents"], "notes": replayed["notes"]})
});

// ---- stream -----------------------------------------------------------------

fn text_events() -> Vec<Value> {
    vec![
        chunk(json!([{"text": "Hello"}])),
        chunk(json!([{"text": ", wörld ✓ \"quoted\"\n"}])),
        finish(json!([{"text": "Bye."}]), "STOP"),
    ]
}

golden_text!(stream_text, sse(&text_events(), 4096));
golden_text!(stream_text_split_every_7_bytes, sse(&text_events(), 7));
golden_text!(
    stream_thoughts_then_text,
    sse(
        &[
            chunk(json!([{"text": "**Thinking**\n\nThe user wants", "thought": true}])),
            chunk(json!([{"text": " a greeting.", "thought": true}])),
            chunk(json!([{"text": "", "thought": true, "thoughtSignature": "CiQBjz1rX+/8w9Q="}])),
            chunk(json!([{"text": "", "thought": true, "thoughtSignature": "Eg8KDQ=="}])),
            chunk(json!([{"text": "Second thought.", "thought": true}])),
            chunk(json!([{"text": "Hi there"}])),
            finish(json!([{"text": "", "thoughtSignature": "EgkKBwFyyNp8"}]), "STOP"),
        ],
        4096
    )
);
golden_text!(stream_parallel_function_calls, {
    let t = translate(
        &base(
            json!({"tools": [{"name": "1password-lookup", "input_schema": {"type": "object"}}, {"name": "Read", "input_schema": {"type": "object"}}]}),
        ),
        "gemini-3-pro-preview",
        false,
    );
    sse_with(
        &[
            chunk(json!([{"text": "Checking both."}])),
            chunk(json!([
                {"functionCall": {"name": "Read", "args": {"file_path": "/a.rs"}}, "thoughtSignature": "EtYBCtMBAXLI2nw="},
                {"functionCall": {"name": "Read", "args": {"file_path": "/b.rs"}}}
            ])),
            finish(
                json!([{"functionCall": {"name": modelgate::dialects::openai::upstream_tool_name_with("1password-lookup", &modelgate::dialects::gemini::GEMINI_NAMES), "args": {}}}]),
                "STOP",
            ),
        ],
        5,
        t.tool_names,
    )
});
golden_text!(
    stream_finish_reasons,
    [
        ("MAX_TOKENS", json!([{"text": "cut off"}])),
        ("SAFETY", json!([{"text": "I can"}])),
        ("RECITATION", json!([])),
        ("MALFORMED_FUNCTION_CALL", json!([])),
        ("MALFORMED_FUNCTION_CALL", json!([{"text": "Let me call"}])),
        ("UNEXPECTED_TOOL_CALL", json!([])),
        ("OTHER", json!([{"text": "odd"}])),
    ]
    .into_iter()
    .map(|(reason, parts)| format!(
        "## {reason} after {parts}\n{}",
        sse(&[finish(parts.clone(), reason)], 4096)
    ))
    .collect::<Vec<_>>()
    .join("\n")
);
golden_text!(
    stream_usage_held_until_the_final_chunk,
    sse(
        &[
            chunk(json!([{"text": "Answer"}])),
            // The finish reason without usage: message_delta waits.
            json!({"candidates": [{"content": {"parts": [{"text": "."}], "role": "model"}, "finishReason": "STOP", "index": 0}]}),
            json!({"usageMetadata": {"promptTokenCount": 5000, "candidatesTokenCount": 7, "totalTokenCount": 5007, "cachedContentTokenCount": 4096, "toolUsePromptTokenCount": 0}}),
            // Nothing after the end.
            chunk(json!([{"text": "late"}])),
        ],
        4096
    )
);
golden_text!(
    stream_error_chunk,
    sse(
        &[
            chunk(json!([{"text": "Partial"}])),
            json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}),
            chunk(json!([{"text": "never"}])),
        ],
        4096
    )
);
golden_text!(
    stream_error_chunk_overloaded_before_content,
    sse(
        &[
            json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})
        ],
        4096
    )
);
golden_text!(
    stream_cut_before_finish,
    sse(&[chunk(json!([{"text": "Half an ans"}]))], 4096)
);
golden_text!(
    stream_blocked_prompt,
    sse(
        &[
            json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}, "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}})
        ],
        4096
    )
);
golden_text!(stream_empty_body, sse(&[], 4096));

// ---- errors -----------------------------------------------------------------

golden!(
    errors,
    [
        (400, json!({"error": {"code": 400, "message": "The input token count (1234567) exceeds the maximum number of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}).to_string()),
        (400, json!([{"error": {"code": 400, "message": "Unable to submit request because the input token count is 1100000 but model only supports up to 1048576. Reduce the input token count and try again.", "status": "INVALID_ARGUMENT"}}]).to_string()),
        (400, json!({"error": {"code": 400, "message": "* GenerateContentRequest.tools[0].function_declarations[5].parameters.properties[offset].exclusive_minimum: Cannot find field.", "status": "INVALID_ARGUMENT"}}).to_string()),
        (400, json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}).to_string()),
        (400, json!({"error": {"code": 400, "message": "User location is not supported for the API use.", "status": "FAILED_PRECONDITION"}}).to_string()),
        (401, json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}).to_string()),
        (403, json!({"error": {"code": 403, "message": "Permission denied on resource project p.", "status": "PERMISSION_DENIED"}}).to_string()),
        (404, json!({"error": {"code": 404, "message": "models/gemini-9 is not found for API version v1beta", "status": "NOT_FOUND"}}).to_string()),
        (429, json!([{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}]}}]).to_string()),
        (429, json!({"error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}]}}).to_string()),
        (500, json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}).to_string()),
        (503, json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}).to_string()),
        (504, json!({"error": {"code": 504, "message": "Deadline expired before operation could complete.", "status": "DEADLINE_EXCEEDED"}}).to_string()),
        (502, "<html><body>Bad Gateway</body></html>".to_string()),
        (500, String::new()),
        (418, json!({"error": {"code": 418, "message": "odd"}}).to_string()),
    ]
    .into_iter()
    .map(|(status, body)| {
        let m = map_error(status, body.as_bytes());
        json!({"http": status, "in": body, "status": m.status, "type": m.kind.as_str(), "message": m.message, "retry_after": retry_after(body.as_bytes())})
    })
    .collect::<Vec<_>>()
);
