//! Anthropic Messages → Gemini `generateContent`, with tool schemas as
//! `parametersJsonSchema` and as sanitised legacy `parameters`, and the
//! `:countTokens` body (AI Studio and Vertex) made from each translation.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use modelgate::dialects::anthropic::MessagesRequest;
use modelgate::dialects::gemini::schema::{legacy_parameters, sanitize};
use modelgate::dialects::gemini::{count_tokens_body, translate_request, RequestOptions};
use modelgate_fuzz::is_json;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let model = MessagesRequest::parse(Bytes::copy_from_slice(data))
        .map(|r| r.model)
        .unwrap_or_else(|_| "gemini-2.5-pro".into());
    for legacy_schema in [false, true] {
        let Ok(t) = translate_request(
            data,
            &RequestOptions {
                upstream_model: &model,
                vertex: false,
                legacy_schema,
            },
        ) else {
            continue;
        };
        assert!(is_json(&t.body), "translated body is not JSON");
        for vertex in [false, true] {
            let count = count_tokens_body(&t.body, &model, vertex)
                .unwrap_or_else(|e| panic!("no countTokens body for a translation: {e}"));
            assert!(is_json(&count));
        }
    }
    // The schema sanitiser on its own, on any object.
    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(data) {
        let clean = Value::Object(sanitize(&v));
        assert!(serde_json::to_vec(&clean).is_ok());
        let _ = legacy_parameters(&v);
    }
});
