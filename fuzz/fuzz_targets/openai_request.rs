//! Anthropic Messages → Chat Completions for every OpenAI flavour, the
//! upstream model taken from the body (it decides reasoning and caps), and
//! the local token count `count_tokens` gives on those routes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use modelgate::dialects::anthropic::MessagesRequest;
use modelgate::dialects::openai::request::{translate_request, RequestOptions};
use modelgate::dialects::openai::tokens::{count_chat_tokens, Encoding};
use modelgate::dialects::openai::Flavor;
use modelgate_fuzz::is_json;

fuzz_target!(|data: &[u8]| {
    let model = MessagesRequest::parse(Bytes::copy_from_slice(data))
        .map(|r| r.model)
        .unwrap_or_else(|_| "gpt-4o".into());
    for flavor in [Flavor::OpenAi, Flavor::Azure, Flavor::OpenRouter, Flavor::Ollama] {
        let Ok(t) = translate_request(
            data,
            &RequestOptions {
                flavor,
                upstream_model: &model,
            },
        ) else {
            continue;
        };
        assert!(is_json(&t.body), "translated body is not JSON");
        // `count_tokens` counts the OpenAI translation; tokenising is slow,
        // so only small bodies.
        if flavor == Flavor::OpenAi && t.body.len() <= 4096 {
            let _ = count_chat_tokens(&t.body, Encoding::for_model(&model));
        }
    }
});
