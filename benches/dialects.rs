//! Dialect translation costs: the 105 KB Claude Code request to Chat
//! Completions (and to Gemini), a Chat Completions answer back, and the
//! stream translators per upstream event.
//!
//! Run: `cargo bench --bench dialects`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use modelgate::dialects::openai::request::{translate_request, RequestOptions};
use modelgate::dialects::openai::response::{translate_response, ResponseContext};
use modelgate::dialects::openai::stream::{StreamContext, StreamTranslator};
use modelgate::dialects::openai::{Flavor, ToolNames};

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/claude_code_request.json"
    ))
    .expect("fixture")
}

fn request(c: &mut Criterion) {
    let body = fixture();
    let mut g = c.benchmark_group("openai");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("translate_request_claude_code_105KB", |b| {
        b.iter(|| {
            translate_request(
                black_box(&body),
                &RequestOptions {
                    flavor: Flavor::OpenAi,
                    upstream_model: "gpt-5",
                },
            )
            .expect("translates")
        })
    });
    g.finish();
}

fn response(c: &mut Criterion) {
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"I'll read the file first.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"Read","arguments":"{\"file_path\":\"/src/main.rs\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":25000,"completion_tokens":40,"prompt_tokens_details":{"cached_tokens":24000}}}"#;
    let names = ToolNames::default();
    c.bench_function("openai/translate_response", |b| {
        b.iter(|| {
            translate_response(
                black_box(body),
                &ResponseContext {
                    model: "claude-sonnet-5",
                    tool_names: &names,
                    seed: "req_x",
                },
            )
            .expect("translates")
        })
    });
}

fn stream(c: &mut Criterion) {
    // 200 realistic text-delta chunks, as OpenAI sends them.
    let mut upstream = Vec::new();
    for i in 0..200 {
        upstream.extend_from_slice(
            format!("data: {{\"id\":\"chatcmpl-AbCdEf0123456789\",\"object\":\"chat.completion.chunk\",\"created\":1763769600,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_0123456789\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n").as_bytes(),
        );
    }
    let events = 200u64;
    let mut g = c.benchmark_group("openai_stream");
    g.throughput(Throughput::Elements(events));
    g.bench_function("translate_200_text_events", |b| {
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            let mut t = StreamTranslator::new(StreamContext {
                model: "claude-sonnet-5".into(),
                message_seed: "req_x".into(),
                estimated_input_tokens: 1000,
                tool_names: ToolNames::default(),
            });
            out.clear();
            t.push(black_box(&upstream), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

/// Bedrock: the InvokeModel body edit of Claude Code's 105 KB request, and
/// event-stream frames decoded into Anthropic SSE (bytes/s and events/s).
fn bedrock(c: &mut Criterion) {
    use modelgate::dialects::bedrock::{self, stream};
    let body = fixture();
    let caps = bedrock::Capabilities::bedrock();
    let betas = ["claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"];
    c.bench_function("bedrock_invoke_body_claude_code_fixture", |b| {
        b.iter(|| {
            black_box(
                modelgate::dialects::anthropic::cloud::edit_body(
                    black_box(&body),
                    &betas,
                    &caps,
                    modelgate::dialects::anthropic::cloud::Platform::Bedrock,
                )
                .expect("body"),
            )
        })
    });
    let mut wire = stream::encode_chunk(
        r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"usage":{"input_tokens":10,"output_tokens":1}}}"#,
    );
    const DELTAS: usize = 1000;
    for i in 0..DELTAS {
        let e = format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"token {i} of a longer answer "}}}}"#
        );
        wire.extend(stream::encode_chunk(&e));
    }
    wire.extend(stream::encode_chunk(r#"{"type":"message_stop"}"#));
    let mut group = c.benchmark_group("bedrock_eventstream_to_sse");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    let decode = |b: &mut criterion::Bencher| {
        b.iter(|| {
            let mut s = stream::BedrockStream::default();
            let mut out = Vec::with_capacity(wire.len());
            for chunk in wire.chunks(1400) {
                s.push(chunk, &mut out);
            }
            black_box(out)
        })
    };
    group.bench_function("bytes", decode);
    group.throughput(Throughput::Elements(DELTAS as u64 + 2));
    group.bench_function("events", decode);
    group.finish();
}

/// Gemini: the Claude Code request to `generateContent` (JSON-schema and
/// legacy sanitised tool schemas), and the SSE translator per event.
fn gemini(c: &mut Criterion) {
    use modelgate::dialects::gemini::{translate_request, GeminiStream, RequestOptions};
    let body = fixture();
    let mut g = c.benchmark_group("gemini");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for (name, legacy_schema) in [
        ("translate_request_claude_code_105KB", false),
        ("translate_request_claude_code_105KB_legacy_schema", true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                translate_request(
                    black_box(&body),
                    &RequestOptions {
                        upstream_model: "gemini-2.5-pro",
                        vertex: false,
                        legacy_schema,
                    },
                )
                .expect("translates")
            })
        });
    }
    g.finish();

    // 200 text events as AI Studio sends them (usage on every chunk, CRLF).
    let mut upstream = Vec::new();
    for i in 0..200 {
        upstream.extend_from_slice(
            format!("data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"token{i} of the answer \"}}],\"role\": \"model\"}},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 2400,\"totalTokenCount\": 2400,\"promptTokensDetails\": [{{\"modality\": \"TEXT\",\"tokenCount\": 2400}}]}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"aBcD1234efGh\"}}\r\n\r\n").as_bytes(),
        );
    }
    let mut g = c.benchmark_group("gemini_stream");
    g.throughput(Throughput::Elements(200));
    g.bench_function("translate_200_text_events", |b| {
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            let mut s = GeminiStream::new("claude-sonnet-5", "req_x", 1000, Default::default());
            out.clear();
            s.push(black_box(&upstream), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, request, response, stream, bedrock, gemini);
criterion_main!(benches);
