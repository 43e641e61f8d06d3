//! A facade of `modelgate` (the golden tests see it under that name) whose
//! parsers record their input before calling the real ones. Each input is
//! written to `$CAPTURE_DIR/<fuzz target>/<hash>` in that target's layout.

pub use real::*;

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Write one seed for `target` (content-addressed, so repeats collapse).
pub fn record(target: &str, bytes: &[u8]) {
    let Some(dir) = std::env::var_os("CAPTURE_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let name = hex::encode(&Sha256::digest(bytes)[..10]);
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A Messages body with `model` set to the upstream model: the request
/// targets take the model to translate for from the body.
fn with_model(body: &[u8], model: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut o)) => {
            o.insert("model".into(), model.into());
            serde_json::to_vec(&o).unwrap()
        }
        _ => body.to_vec(),
    }
}

/// A request body every request target can start from.
fn request(body: &[u8]) {
    for target in [
        "anthropic_request",
        "anthropic_cloud",
        "converse_request",
        "openai_request",
        "gemini_request",
    ] {
        record(target, body);
    }
}

/// What a stream wrapper saw: the calls (as a `modelgate_fuzz::Plan`
/// head) and the bytes pushed, and the Anthropic SSE written.
#[derive(Default)]
pub struct Tape {
    start_first: bool,
    pushed: Vec<u8>,
    finished: bool,
    failed: bool,
    out: Vec<u8>,
}

impl Tape {
    fn start(&mut self) {
        if self.pushed.is_empty() {
            self.start_first = true;
        }
    }

    fn head(&self) -> Vec<u8> {
        let end = match (self.finished, self.failed) {
            (true, false) => 0,
            (false, true) => 1,
            (true, true) => 2,
            (false, false) => 3,
        };
        vec![u8::from(self.start_first) | (end << 1), 0]
    }

    /// Seeds: the upstream body for `target` (turned into records for the
    /// Bedrock targets), and the SSE written for the usage tap.
    fn save(&self, target: &str) {
        if self.pushed.is_empty() {
            return;
        }
        let mut seed = self.head();
        match target {
            "bedrock_stream" | "converse_stream" => seed.extend(records(target, &self.pushed)),
            _ => {
                seed.extend_from_slice(&self.pushed);
                let mut sse = vec![0, 0];
                sse.extend_from_slice(&self.pushed);
                record("sse_decoder", &sse);
            }
        }
        record(target, &seed);
        if !self.out.is_empty() {
            let mut tap = vec![0, 0];
            tap.extend_from_slice(&self.out);
            record("usage_tap", &tap);
        }
    }
}

/// Captured event-stream frames as the records `modelgate_fuzz::frames::wire`
/// reads (that module, included here by path).
fn records(target: &str, wire: &[u8]) -> Vec<u8> {
    use base64::Engine;
    use frames::record;
    let mut out = Vec::new();
    let mut rest = wire;
    for frame in frames::read(wire) {
        let Some((headers, payload)) = frame else {
            // Not a frame: the rest goes as raw bytes.
            out.extend(record(3, rest));
            break;
        };
        let h = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let invoke_chunk = || -> Option<Vec<u8>> {
            let v: serde_json::Value = serde_json::from_slice(&payload).ok()?;
            base64::engine::general_purpose::STANDARD
                .decode(v.get("bytes")?.as_str()?)
                .ok()
        };
        match (target, h(":message-type"), h(":event-type"), h(":exception-type")) {
            ("bedrock_stream", Some("event"), Some("chunk"), _) if invoke_chunk().is_some() => {
                out.extend(record(0, &invoke_chunk().unwrap()))
            }
            ("converse_stream", Some("event"), Some(kind), _) => {
                let mut r = kind.as_bytes().to_vec();
                r.push(0);
                r.extend_from_slice(&payload);
                out.extend(record(0, &r));
            }
            (_, Some("exception"), _, Some(kind)) => {
                let mut r = kind.as_bytes().to_vec();
                r.push(0);
                r.extend_from_slice(&payload);
                out.extend(record(1, &r));
            }
            _ => {
                let mut r = Vec::new();
                for (n, v) in &headers {
                    r.extend_from_slice(format!("{n}={v}\n").as_bytes());
                }
                r.push(b'\n');
                r.extend_from_slice(&payload);
                out.extend(record(2, &r));
            }
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[len..];
    }
    out
}

#[path = "../../src/frames.rs"]
#[allow(dead_code)]
mod frames;

macro_rules! stream_wrapper {
    ($name:ident, $real:ty, $target:literal) => {
        pub struct $name {
            inner: $real,
            tape: $crate::Tape,
        }

        impl $name {
            pub fn start(&mut self, out: &mut Vec<u8>) {
                self.tape.start();
                let at = out.len();
                self.inner.start(out);
                self.tape.out.extend_from_slice(&out[at..]);
            }
            pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
                self.tape.pushed.extend_from_slice(bytes);
                let at = out.len();
                self.inner.push(bytes, out);
                self.tape.out.extend_from_slice(&out[at..]);
            }
            pub fn finish(&mut self, out: &mut Vec<u8>) {
                self.tape.finished = true;
                let at = out.len();
                self.inner.finish(out);
                self.tape.out.extend_from_slice(&out[at..]);
            }
            pub fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
                self.tape.failed = true;
                let at = out.len();
                self.inner.fail(kind, message, out);
                self.tape.out.extend_from_slice(&out[at..]);
            }
            pub fn is_done(&self) -> bool {
                self.inner.is_done()
            }
            pub fn completed(&self) -> bool {
                self.inner.completed()
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.tape.save($target);
            }
        }
    };
}

pub mod dialects {
    pub use real::dialects::*;

    pub mod anthropic {
        pub use real::dialects::anthropic::*;

        pub mod cloud {
            pub use real::dialects::anthropic::cloud::*;

            pub fn edit_body(
                body: &[u8],
                beta_headers: &[&str],
                caps: &Capabilities,
                platform: Platform,
            ) -> Result<Edited, EditError> {
                crate::request(body);
                real::dialects::anthropic::cloud::edit_body(body, beta_headers, caps, platform)
            }
        }
    }

    pub mod openai {
        pub use real::dialects::openai::*;

        pub mod request {
            pub use real::dialects::openai::request::*;

            pub fn translate_request(body: &[u8], opts: &RequestOptions<'_>) -> Result<Translated, TranslateError> {
                crate::request(body);
                crate::record("openai_request", &crate::with_model(body, opts.upstream_model));
                real::dialects::openai::request::translate_request(body, opts)
            }
        }

        pub mod response {
            pub use real::dialects::openai::response::*;

            pub fn translate_response(body: &[u8], ctx: &ResponseContext<'_>) -> Result<Translated, ResponseError> {
                crate::record("openai_response", body);
                let t = real::dialects::openai::response::translate_response(body, ctx)?;
                crate::record("usage_tap", &[&[8u8, 0][..], &t.body].concat());
                Ok(t)
            }
        }
    }

    pub mod gemini {
        pub use real::dialects::gemini::*;
        use real::dialects::openai::error::MappedError;

        pub fn translate_request(body: &[u8], opts: &RequestOptions<'_>) -> Result<Translated, GeminiError> {
            crate::request(body);
            crate::record("gemini_request", &crate::with_model(body, opts.upstream_model));
            real::dialects::gemini::translate_request(body, opts)
        }

        pub fn translate_response(
            body: &[u8],
            ctx: &ResponseContext<'_>,
        ) -> Result<(Vec<u8>, Usage, &'static str), GeminiError> {
            crate::record("gemini_response", body);
            real::dialects::gemini::translate_response(body, ctx)
        }

        pub fn count_tokens_response(body: &[u8]) -> Result<u64, GeminiError> {
            crate::record("gemini_response", body);
            real::dialects::gemini::count_tokens_response(body)
        }

        pub fn map_error(status: u16, body: &[u8]) -> MappedError {
            crate::record("error_mappers", &[&status.to_be_bytes()[..], body].concat());
            real::dialects::gemini::map_error(status, body)
        }

        pub fn retry_after(body: &[u8]) -> Option<u64> {
            crate::record("error_mappers", &[&429u16.to_be_bytes()[..], body].concat());
            real::dialects::gemini::retry_after(body)
        }

        stream_wrapper!(GeminiStream, real::dialects::gemini::GeminiStream, "gemini_stream");

        impl GeminiStream {
            pub fn new(model: &str, seed: &str, estimated_input_tokens: u64, tool_names: ToolNames) -> Self {
                GeminiStream {
                    inner: real::dialects::gemini::GeminiStream::new(model, seed, estimated_input_tokens, tool_names),
                    tape: Default::default(),
                }
            }
            pub fn usage(&self) -> Usage {
                self.inner.usage()
            }
        }
    }

    pub mod bedrock {
        pub use real::dialects::bedrock::*;
        use real::error::ErrorKind;

        pub fn map_exception(kind: &str, message: &str) -> (u16, ErrorKind, String) {
            crate::record(
                "error_mappers",
                &[&400u16.to_be_bytes()[..], format!("{kind}\0{message}").as_bytes()].concat(),
            );
            real::dialects::bedrock::map_exception(kind, message)
        }

        pub mod stream {
            pub use real::dialects::bedrock::stream::*;

            /// Stands in for the real `BedrockStream`, which has no `start`.
            pub struct Inner(real::dialects::bedrock::stream::BedrockStream);

            impl Inner {
                fn start(&mut self, _: &mut Vec<u8>) {}
                fn push(&mut self, b: &[u8], out: &mut Vec<u8>) {
                    self.0.push(b, out)
                }
                fn finish(&mut self, out: &mut Vec<u8>) {
                    self.0.finish(out)
                }
                fn fail(&mut self, k: &str, m: &str, out: &mut Vec<u8>) {
                    self.0.fail(k, m, out)
                }
                fn is_done(&self) -> bool {
                    self.0.is_done()
                }
                fn completed(&self) -> bool {
                    self.0.completed()
                }
            }

            stream_wrapper!(BedrockStream, Inner, "bedrock_stream");

            impl Default for BedrockStream {
                fn default() -> Self {
                    BedrockStream {
                        inner: Inner(Default::default()),
                        tape: Default::default(),
                    }
                }
            }

            impl BedrockStream {
                pub fn take_usage(&mut self) -> Option<real::dialects::Usage> {
                    self.inner.0.take_usage()
                }
            }
        }

        pub mod converse {
            pub use real::dialects::bedrock::converse::*;
            use real::dialects::bedrock::BedrockError;
            use real::dialects::Usage;

            pub fn converse_request(body: &[u8]) -> Result<ConverseRequest, BedrockError> {
                crate::request(body);
                real::dialects::bedrock::converse::converse_request(body)
            }

            pub fn converse_response(
                body: &[u8],
                client_model: &str,
                message_id: &str,
            ) -> Result<(Vec<u8>, Usage), BedrockError> {
                crate::record("bedrock_response", body);
                real::dialects::bedrock::converse::converse_response(body, client_model, message_id)
            }

            stream_wrapper!(
                ConverseStream,
                real::dialects::bedrock::converse::ConverseStream,
                "converse_stream"
            );

            impl ConverseStream {
                pub fn new(model: &str, message_id: &str, estimated_input_tokens: u64) -> Self {
                    ConverseStream {
                        inner: real::dialects::bedrock::converse::ConverseStream::new(
                            model,
                            message_id,
                            estimated_input_tokens,
                        ),
                        tape: Default::default(),
                    }
                }
                pub fn usage(&self) -> Usage {
                    self.inner.usage()
                }
            }
        }
    }
}
