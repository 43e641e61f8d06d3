//! The golden tests, run against the recording facade, plus streams the
//! unit tests of `openai::stream` feed (no golden file has OpenAI streams).

extern crate modelgate_capture as modelgate;

#[path = "../../../tests/bedrock_golden.rs"]
mod bedrock_golden;
#[path = "../../../tests/gemini_golden.rs"]
mod gemini_golden;
#[path = "../../../tests/openai_golden.rs"]
mod openai_golden;
#[path = "../../../tests/vertex_golden.rs"]
mod vertex_golden;

mod openai_streams {
    //! Bodies built as `src/dialects/openai/stream.rs`'s tests build them.
    use modelgate::dialects::openai::stream::{StreamContext, StreamTranslator};
    use modelgate::dialects::openai::ToolNames;
    use modelgate::record;

    fn chunk(delta: &str) -> String {
        format!(
            r#"{{"id":"chatcmpl-abc","object":"chat.completion.chunk","model":"gpt-4o","choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}"#
        )
    }

    fn finish(reason: &str) -> String {
        format!(r#"{{"id":"chatcmpl-abc","choices":[{{"index":0,"delta":{{}},"finish_reason":"{reason}"}}]}}"#)
    }

    const USAGE: &str = r#"{"id":"chatcmpl-abc","choices":[],"usage":{"prompt_tokens":2600,"completion_tokens":42,"total_tokens":2642,"prompt_tokens_details":{"cached_tokens":2048}}}"#;

    fn tool(index: u64, id: &str, name: &str, args: &str) -> String {
        let args = serde_json::to_string(args).unwrap();
        chunk(&format!(
            r#"{{"tool_calls":[{{"index":{index},"id":"{id}","type":"function","function":{{"name":"{name}","arguments":{args}}}}}]}}"#
        ))
    }

    fn args(index: u64, args: &str) -> String {
        let args = serde_json::to_string(args).unwrap();
        chunk(&format!(
            r#"{{"tool_calls":[{{"index":{index},"function":{{"arguments":{args}}}}}]}}"#
        ))
    }

    fn text(s: &str) -> String {
        chunk(&format!(r#"{{"content":{}}}"#, serde_json::to_string(s).unwrap()))
    }

    fn reasoning(field: &str, s: &str) -> String {
        chunk(&format!(r#"{{"{field}":{}}}"#, serde_json::to_string(s).unwrap()))
    }

    /// `body()` of the unit tests: `data:` per entry; comments and `event:`
    /// lines as given.
    fn body(lines: &[String], sep: &str) -> Vec<u8> {
        let mut s = String::new();
        for line in lines {
            if line.starts_with(':') || line.starts_with("event:") {
                s.push_str(line);
                s.push_str(sep);
                if line.starts_with(':') {
                    s.push_str(sep);
                }
            } else {
                s.push_str("data: ");
                s.push_str(line);
                s.push_str(sep);
                s.push_str(sep);
            }
        }
        s.into_bytes()
    }

    fn save(lines: &[String], sep: &str) {
        let body = body(lines, sep);
        record("openai_stream", &[&[0u8, 0][..], &body].concat());
        record("sse_decoder", &[&[0u8, 0][..], &body].concat());
        let mut t = StreamTranslator::new(StreamContext {
            model: "claude-sonnet-4-5".into(),
            message_seed: "req_01".into(),
            estimated_input_tokens: 2500,
            tool_names: ToolNames::default(),
        });
        let mut out = Vec::new();
        t.push(&body, &mut out);
        t.finish(&mut out);
        record("usage_tap", &[&[0u8, 0][..], &out].concat());
    }

    #[test]
    fn openai_stream_seeds() {
        let s = |v: &str| v.to_string();
        let cases: Vec<Vec<String>> = vec![
            // realistic_lines
            vec![
                s(": OPENROUTER PROCESSING"),
                chunk(r#"{"role":"assistant","content":""}"#),
                reasoning("reasoning_content", "Let me think \"hard\"\n"),
                reasoning("reasoning", "about it — ✓"),
                text("I'll run two commands: é😀"),
                tool(0, "call_a", "Bash", ""),
                tool(1, "call_b", "Read", ""),
                args(0, "{\"command\""),
                args(1, "{\"file_path\":"),
                args(0, ": \"ls\"}"),
                args(1, "\"/tmp/x\"}"),
                finish("tool_calls"),
                s(USAGE),
                s("[DONE]"),
            ],
            vec![
                chunk(r#"{"role":"assistant","content":""}"#),
                text("Hello"),
                text(" world"),
                finish("stop"),
                s(USAGE),
                s("[DONE]"),
            ],
            vec![
                chunk(r#"{"content":"Done.","reasoning":null,"reasoning_details":[]}"#),
                s(
                    r#"{"id":"gen-1","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop","native_finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":60}}}"#,
                ),
            ],
            vec![
                chunk(
                    r#"{"tool_calls":[{"index":0,"id":"call_x","type":"function","function":{"name":"Glob","arguments":"{\"pattern\":\"*.rs\"}"}},{"index":1,"id":"call_y","type":"function","function":{"name":"Grep","arguments":"{\"pattern\":\"fn\"}"}}]}"#,
                ),
                finish("stop"),
            ],
            vec![s(
                r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant","content":"All at once."},"finish_reason":"length"}],"usage":{"prompt_tokens":10,"completion_tokens":3}}"#,
            )],
            vec![
                chunk(r#"{"role":"assistant","refusal":""}"#),
                chunk(r#"{"refusal":"I can't help with that."}"#),
                finish("content_filter"),
            ],
            vec![
                text("partial"),
                s(
                    r#"{"id":"gen-1","object":"chat.completion.chunk","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#,
                ),
            ],
            vec![
                s("event: error"),
                s(r#"{"error":{"code":429,"message":"Rate limit exceeded upstream"}}"#),
            ],
            vec![s(
                r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130123 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            )],
            vec![
                chunk(
                    r#"{"tool_calls":[{"index":1,"type":"function","function":{"name":"mcp__a_very_long_server_name__with_an_even_longer_to_1a2b3c4d","arguments":"{}"}}]}"#,
                ),
                chunk(
                    r#"{"tool_calls":[{"index":2,"id":"functions.Bash:0","type":"function","function":{"name":"Bash","arguments":"{}"}}]}"#,
                ),
            ],
            vec![
                chunk(r#"{"tool_calls":[{"id":"a","function":{"name":"Bash","arguments":"{\"command\":"}}]}"#),
                chunk(r#"{"tool_calls":[{"function":{"arguments":"\"pwd\"}"}}]}"#),
                chunk(r#"{"tool_calls":[{"id":"b","function":{"name":"Read","arguments":{"file_path":"/x"}}}]}"#),
            ],
            vec![
                chunk(r#"{"role":"assistant","content":"","reasoning_content":"","tool_calls":[]}"#),
                chunk(r#"{"content":null}"#),
                s(r#"{"choices":"nonsense"}"#),
                chunk(r#"{"content":"ok","reasoning":{"summary":[1]},"refusal":7}"#),
                finish("error"),
            ],
            vec![
                s(
                    r#"{"choices":[{"index":0,"delta":{"content":"t"}}],"usage":{"prompt_tokens":10,"completion_tokens":1}}"#,
                ),
                s(
                    r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":3}}"#,
                ),
                s(
                    r#"{"choices":[{"index":0,"delta":{"content":"t"}}],"usage":{"prompt_tokens":10,"completion_tokens":9}}"#,
                ),
            ],
            vec![],
        ];
        for (i, lines) in cases.iter().enumerate() {
            save(lines, ["\n", "\r\n", "\r"][i % 3]);
        }
    }
}

mod files {
    //! Seeds that are files, not test inputs: configs, and SSE edge cases.
    use modelgate::record;

    fn repo(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path)
    }

    #[test]
    fn config_seeds() {
        for f in [
            "conf/modelgate.yaml",
            "conf/example-full.yaml",
            "tests/fixtures/cli/modelgate.yaml",
        ] {
            record("config", &std::fs::read(repo(f)).unwrap());
        }
        // The README's config examples.
        let readme = std::fs::read_to_string(repo("README.md")).unwrap();
        for block in readme.split("```yaml\n").skip(1) {
            record("config", block.split("```").next().unwrap().as_bytes());
        }
    }

    #[test]
    fn sse_edge_seeds() {
        for body in [
            &b"\xEF\xBB\xBFdata: bom\n\n"[..],
            b"event: a\rdata: 1\rdata: 2\r\r: comment\r\ndata\r\n\r\nid: 7\nretry: 10\nevent\ndata:x",
            b"data:no space\n\ndata: \xff\xfe invalid\n\nevent: message_delta\ndata: {}\n",
        ] {
            record("sse_decoder", &[&[0u8, 0][..], body].concat());
        }
        // Flag bits 3-5 = 3: a 64-byte event limit, which this event exceeds.
        let long = format!("event: a\ndata: {}\n\n", "0123456789".repeat(7));
        record("sse_decoder", &[&[0x18u8, 0][..], long.as_bytes()].concat());
    }
}
