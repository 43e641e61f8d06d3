//! Gemini `streamGenerateContent?alt=sse` → Anthropic Messages SSE
//! (`docs/protocol-notes.md` §2.3, §4.2).
//!
//! [`GeminiStream`] owns the translation of one stream: it takes upstream
//! bytes in any split (`\n` or `\r\n` lines), decodes `data:` events (each
//! a whole `GenerateContentResponse`) and appends Anthropic events to a
//! caller buffer. Block bookkeeping (message_start first, sequential
//! indices, one open block, no empty deltas, nothing after the end) is
//! [`Emitter`]'s; this file decides what each Gemini part means. It never
//! touches the network, timers or pings, and never decides retries.
//!
//! - Text parts stream into one text block; thought parts into a thinking
//!   block, which a thought signature ends (`signature_delta` carrying
//!   [`super::THINKING_SIGNATURE_PREFIX`]); a signature with no thought
//!   text gets the text `(no content)` so no thinking block is empty.
//! - A `functionCall` arrives whole: one `tool_use` block with a single
//!   `input_json_delta`, its id carrying the part's thought signature.
//! - Content in a chunk is emitted before that chunk's `finishReason`.
//!   `message_delta` is held until a chunk with both a finish reason and
//!   usage (Gemini's last), or EOF; usage is the last one seen.
//! - `MALFORMED_FUNCTION_CALL` / `UNEXPECTED_TOOL_CALL` before any content
//!   → `event: error` `api_error` (retryable); after content → `end_turn`.
//! - A blocked prompt (`promptFeedback.blockReason`) ends with `refusal`;
//!   an `error` object in a chunk becomes `event: error` via
//!   [`super::error::map_error_value`]; EOF without a finish reason is an
//!   `api_error`.

use serde_json::Value;

use super::response::{Chunk, Part};
use super::{encode_tool_id, stop_reason, tool_base_id, wrap_thought_signature, ToolNames, Usage, NO_CONTENT};
use crate::dialects::anthropic::emit::{BlockKind, Emitter};
use crate::dialects::openai::message_id;
use crate::dialects::sse::{SseDecoder, SseEvent};

/// See the module documentation.
#[derive(Debug)]
pub struct GeminiStream {
    decoder: SseDecoder,
    emitter: Emitter,
    tool_names: ToolNames,
    seed: String,
    estimated_input_tokens: u64,
    usage: Option<Usage>,
    /// The stop reason, once Gemini finished; `message_delta` waits for usage.
    stop: Option<&'static str>,
    /// Function calls seen, for their synthesised ids.
    calls: usize,
    /// Emitter key of the current text/thinking run; bumped when a
    /// signature seals a thinking block, so later thoughts open a new one.
    segment: u64,
    /// Some content block was emitted.
    produced: bool,
}

impl GeminiStream {
    pub fn new(model: &str, seed: &str, estimated_input_tokens: u64, tool_names: ToolNames) -> Self {
        GeminiStream {
            decoder: SseDecoder::new(SseDecoder::DEFAULT_MAX_EVENT),
            emitter: Emitter::new(&message_id(None, seed), model, estimated_input_tokens),
            tool_names,
            seed: seed.to_string(),
            estimated_input_tokens,
            usage: None,
            stop: None,
            calls: 0,
            segment: 0,
            produced: false,
        }
    }

    /// Emit `message_start` now, so nothing the relay adds (pings) precedes it.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        self.emitter.start(out);
    }

    /// Feed upstream bytes (any split); complete Anthropic events go to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.emitter.is_done() {
            return;
        }
        let pushed = self.decoder.push(bytes);
        // Events completed before an oversized one are still translated.
        while !self.emitter.is_done() {
            let Some(event) = self.decoder.next_event() else { break };
            self.on_event(event, out);
        }
        if let Err(e) = pushed {
            self.fail("api_error", &format!("upstream stream is malformed: {e}"), out);
        }
    }

    /// Upstream EOF: the end if Gemini sent a finish reason, else an error.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.emitter.is_done() {
            return;
        }
        let mut next = self.decoder.finish();
        while let (Some(event), false) = (next, self.emitter.is_done()) {
            self.on_event(event, out);
            next = self.decoder.next_event();
        }
        if self.emitter.is_done() {
            return;
        }
        // The last event outgrew the limit: as `push` does with one.
        if let Some(e) = self.decoder.error() {
            self.fail("api_error", &format!("upstream stream is malformed: {e}"), out);
            return;
        }
        match self.stop {
            Some(stop) => self.emitter.end(stop, self.usage(), out),
            None => self.fail(
                "api_error",
                "Gemini ended the stream before it finished the response",
                out,
            ),
        }
    }

    /// Upstream failed (connection dropped, timeout): a well-formed
    /// `event: error` of Anthropic type `kind`, and nothing after it.
    pub fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        self.emitter.fail(kind, message, out);
    }

    /// True once `message_stop` or an error has been emitted.
    pub fn is_done(&self) -> bool {
        self.emitter.is_done()
    }

    /// True once the message ended normally (`message_stop`).
    pub fn completed(&self) -> bool {
        self.emitter.completed()
    }

    /// Usage as known so far: the last Gemini reported, or the estimate.
    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            input_tokens: self.estimated_input_tokens,
            ..Usage::default()
        })
    }

    /// The usage of a stream cut short before its end ([`Usage::cut_short`]).
    pub fn usage_so_far(&self) -> Usage {
        Usage::cut_short(self.usage, self.estimated_input_tokens, self.emitter.generated_bytes())
    }

    fn on_event(&mut self, event: SseEvent, out: &mut Vec<u8>) {
        let chunk: Chunk = match serde_json::from_str(&event.data) {
            Ok(chunk) => chunk,
            Err(e) => {
                log::debug!("skipping an unparseable Gemini chunk: {e}");
                return;
            }
        };
        if let Some(error) = chunk.error {
            let error: Value = serde_json::from_str(error.get()).unwrap_or(Value::Null);
            let mapped = super::error::map_error_value(0, &error);
            self.fail(mapped.kind.as_str(), &mapped.message, out);
            return;
        }
        self.emitter.start(out);
        if let Some(u) = chunk.usage_metadata {
            self.usage = Some(u.to_usage());
        }
        match chunk.candidate() {
            Some(candidate) => {
                // Content after the finish reason is not part of the message.
                if self.stop.is_none() {
                    for part in candidate.content.iter().flat_map(|c| &c.parts) {
                        self.on_part(part, out);
                    }
                }
                if let Some(reason) = candidate.finish_reason.as_deref().filter(|r| !r.is_empty()) {
                    self.on_finish(reason, out);
                }
            }
            None if chunk.block_reason().is_some() && self.stop.is_none() => self.stop = Some("refusal"),
            None => {}
        }
        if self.stop.is_some() && chunk.usage_metadata.is_some() {
            self.emitter.end(self.stop.unwrap_or("end_turn"), self.usage(), out);
        }
    }

    fn on_part(&mut self, part: &Part<'_>, out: &mut Vec<u8>) {
        if let Some(call) = &part.function_call {
            let base = tool_base_id(call.id.as_deref(), &self.seed, self.calls);
            self.calls += 1;
            let id = encode_tool_id(&base, part.thought_signature.as_deref());
            let name = self.tool_names.to_original(&call.name);
            self.segment += 1;
            self.emitter.tool(self.segment, &id, name, call.args_json(), out);
            self.segment += 1;
            self.produced = true;
            return;
        }
        let text = part.text.as_deref().unwrap_or("");
        if !part.thought {
            // A plain text part's signature is dropped (see `gemini`'s docs).
            if !text.is_empty() {
                self.emitter.text(self.segment, text, out);
                self.produced = true;
            }
            return;
        }
        self.emitter.thinking(self.segment, text, out);
        self.produced |= !text.is_empty();
        if let Some(sig) = part.thought_signature.as_deref().filter(|s| !s.is_empty()) {
            if self.emitter.open_index(self.segment, BlockKind::Thinking).is_none() {
                self.emitter.thinking(self.segment, NO_CONTENT, out);
            }
            self.emitter.signature(self.segment, &wrap_thought_signature(sig), out);
            self.emitter.close(out);
            self.segment += 1;
            self.produced = true;
        }
    }

    fn on_finish(&mut self, reason: &str, out: &mut Vec<u8>) {
        if self.stop.is_some() {
            return;
        }
        match stop_reason(reason, self.emitter.saw_tool()) {
            Some(stop) => self.stop = Some(stop),
            None if self.produced => self.stop = Some("end_turn"),
            None => self.fail(
                "api_error",
                &format!("Gemini could not produce a usable tool call ({reason}); retry the request"),
                out,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A realistic AI Studio stream: thoughts with a signature, text over
    /// several chunks, two parallel calls (only the first signed), then the
    /// finish chunk with usage.
    fn realistic_events() -> Vec<String> {
        vec![
            r#"{"candidates": [{"content": {"parts": [{"text": "**Planning**\n\nI should read both files.","thought": true}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 2400,"totalTokenCount": 2400,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 2400}]},"modelVersion": "gemini-2.5-pro","responseId": "aBcD1234"}"#.to_string(),
            r#"{"candidates": [{"content": {"parts": [{"text": "","thought": true,"thoughtSignature": "CiQBjz1rX+/8w9Q="}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 2400,"totalTokenCount": 2400},"modelVersion": "gemini-2.5-pro","responseId": "aBcD1234"}"#.to_string(),
            r#"{"candidates": [{"content": {"parts": [{"text": "Reading them — ✓ \"both\"."}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 2400,"totalTokenCount": 2400},"modelVersion": "gemini-2.5-pro","responseId": "aBcD1234"}"#.to_string(),
            r#"{"candidates": [{"content": {"parts": [{"functionCall": {"name": "Read","args": {"file_path": "/src/a.rs"}},"thoughtSignature": "EtYBCtMBAXLI2nw="},{"functionCall": {"name": "Read","args": {"file_path": "/src/b.rs"}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 2400,"candidatesTokenCount": 60,"totalTokenCount": 2580,"cachedContentTokenCount": 2000,"thoughtsTokenCount": 120},"modelVersion": "gemini-2.5-pro","responseId": "aBcD1234"}"#.to_string(),
        ]
    }

    fn join(events: &[String], sep: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(e.as_bytes());
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(sep.as_bytes());
        }
        out
    }

    fn translate(chunks: &[&[u8]]) -> (String, GeminiStream) {
        let mut s = GeminiStream::new("claude-sonnet-4-5", "req_1", 2500, ToolNames::default());
        let mut out = Vec::new();
        s.start(&mut out);
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        (String::from_utf8(out).unwrap(), s)
    }

    #[test]
    fn realistic_stream_is_well_formed() {
        let (text, s) = translate(&[join(&realistic_events(), "\r\n").as_slice()]);
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(s.completed());
        assert!(text.contains(r#""signature":"gemini-thought:CiQBjz1rX+/8w9Q=""#));
        assert!(text.contains(r#""stop_reason":"tool_use""#));
        assert_eq!(
            s.usage(),
            Usage {
                input_tokens: 400,
                output_tokens: 180,
                cache_read_input_tokens: 2000,
                cache_creation_input_tokens: 0
            }
        );
    }

    /// Found by fuzz/fuzz_targets/sse_decoder.rs: a last event without its
    /// blank line that outgrew the limit only as it was decoded was dropped
    /// at EOF, and a stream that had its finish reason ended as complete.
    #[test]
    fn oversized_last_event_at_eof_fails_the_stream() {
        let mut s = GeminiStream::new("claude-sonnet-4-5", "req_1", 2500, ToolNames::default());
        s.decoder = SseDecoder::new(200);
        let mut out = Vec::new();
        let done = r#"{"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"},"finishReason": "STOP","index": 0}]}"#;
        s.push(format!("data: {done}\n\n").as_bytes(), &mut out);
        s.push(&[&b"data: "[..], &[0xff; 150]].concat(), &mut out);
        s.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!s.completed());
        assert!(
            text.ends_with("\"message\":\"upstream stream is malformed: SSE event larger than 200 bytes\"}}\n\n"),
            "{text}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_split_and_line_ending_gives_identical_output(
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let reference = translate(&[join(&realistic_events(), "\n").as_slice()]).0;
            let input = join(&realistic_events(), if crlf { "\r\n" } else { "\n" });
            let chunks = crate::dialects::sse::split_at(&input, &cuts);
            prop_assert_eq!(translate(&chunks).0, reference.clone());
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(translate(&bytewise).0, reference);
        }
    }

    /// `cargo test --release --lib dialects::gemini::stream -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn cost_per_event() {
        let event = r#"{"candidates": [{"content": {"parts": [{"text": " some more tokens of the answer"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 2400,"totalTokenCount": 2400,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 2400}]},"modelVersion": "gemini-2.5-flash","responseId": "aBcD1234"}"#;
        let events: Vec<String> = (0..10_000).map(|_| event.to_string()).collect();
        let input = join(&events, "\r\n");
        let started = std::time::Instant::now();
        let (text, _) = translate(&[input.as_slice()]);
        let per = started.elapsed() / 10_000;
        println!("{per:?} per event ({} bytes out)", text.len());
    }
}
