//! `application/vnd.amazon.eventstream` → Anthropic SSE, incrementally.
//!
//! Each `chunk` frame carries `{"bytes":"<base64>"}`, whose decoded bytes
//! are one Anthropic stream event, `message_start` to `message_stop`. The
//! event is written out as `event: TYPE\ndata: JSON\n\n` without being
//! re-serialised, except `message_stop`, whose Bedrock-only
//! `amazon-bedrock-invocationMetrics` is removed. An `exception` frame
//! becomes an in-stream `error` event and ends the stream. Framing (prelude
//! and message CRCs, frames split across reads) is `aws-smithy-eventstream`'s;
//! the buffer holds at most one frame.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use base64::Engine;
use bytes::{Buf, BytesMut};
use serde::Deserialize;

use super::map_exception;

/// Bedrock's own limit on one event-stream message.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("malformed Bedrock event stream: {0}")]
    Framing(String),
    #[error("Bedrock event-stream frame larger than {MAX_FRAME_BYTES} bytes")]
    TooLarge,
}

/// Whole event-stream messages out of bytes that arrive in any split. The
/// buffer holds at most one frame; a frame's prelude (length and CRC) is
/// checked as soon as it is in, so a corrupt length never makes the reader
/// wait for the gigabytes it claims.
pub struct FrameReader {
    decoder: MessageFrameDecoder,
    buf: BytesMut,
    /// The next byte in `buf` starts a frame whose prelude is not checked yet.
    at_frame_start: bool,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            decoder: MessageFrameDecoder::new(),
            buf: BytesMut::new(),
            at_frame_start: true,
        }
    }
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `None` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<aws_smithy_types::event_stream::Message>, StreamError> {
        loop {
            if self.at_frame_start && self.buf.len() >= 12 {
                check_prelude(&self.buf[..12])?;
                self.at_frame_start = false;
            }
            let before = self.buf.remaining();
            match self
                .decoder
                .decode_frame(&mut self.buf)
                .map_err(|e| StreamError::Framing(e.to_string()))?
            {
                DecodedFrame::Complete(message) => {
                    self.at_frame_start = true;
                    return Ok(Some(message));
                }
                DecodedFrame::Incomplete => {
                    if self.buf.len() > MAX_FRAME_BYTES {
                        return Err(StreamError::TooLarge);
                    }
                    // The decoder may have taken the prelude: try once more.
                    if self.buf.remaining() == before || self.buf.is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

#[derive(Default)]
pub struct EventStreamToSse {
    frames: FrameReader,
    /// `message_stop` or an exception was written: nothing more may follow.
    done: bool,
    /// `message_stop` was written (the answer is complete).
    stopped: bool,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: &'a str,
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

#[derive(Deserialize)]
struct ExceptionBody {
    #[serde(default, alias = "Message")]
    message: String,
}

/// Length and CRC of a frame's 12-byte prelude, checked before waiting for
/// the rest: a corrupt length must not make the decoder wait for gigabytes.
fn check_prelude(prelude: &[u8]) -> Result<(), StreamError> {
    let total = u32::from_be_bytes([prelude[0], prelude[1], prelude[2], prelude[3]]) as usize;
    let crc = u32::from_be_bytes([prelude[8], prelude[9], prelude[10], prelude[11]]);
    if crc32fast::hash(&prelude[..8]) != crc {
        return Err(StreamError::Framing("prelude checksum mismatch".into()));
    }
    if !(16..=MAX_FRAME_BYTES).contains(&total) {
        return Err(StreamError::TooLarge);
    }
    Ok(())
}

impl EventStreamToSse {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream ended properly (`message_stop` or a reported exception).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The answer is complete (`message_stop` arrived).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Decode `bytes` and append the SSE they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.done {
            return Ok(());
        }
        self.frames.push(bytes);
        while let Some(message) = self.frames.next_message()? {
            self.frame(&message, out)?;
            if self.done {
                return Ok(());
            }
        }
        Ok(())
    }

    fn frame(
        &mut self,
        message: &aws_smithy_types::event_stream::Message,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let header = |name: &str| header(message, name);
        match header(":message-type").as_deref() {
            Some("event") if header(":event-type").as_deref() == Some("chunk") => {
                let chunk: Chunk = serde_json::from_slice(message.payload())
                    .map_err(|e| StreamError::Framing(format!("chunk payload: {e}")))?;
                let event = base64::engine::general_purpose::STANDARD
                    .decode(chunk.bytes)
                    .map_err(|e| StreamError::Framing(format!("chunk bytes: {e}")))?;
                let kind = serde_json::from_slice::<Typed>(&event)
                    .map_err(|e| StreamError::Framing(format!("chunk event: {e}")))?
                    .kind
                    .to_string();
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(b"\ndata: ");
                if kind == "message_stop" {
                    let mut v: serde_json::Value = serde_json::from_slice(&event)
                        .map_err(|e| StreamError::Framing(format!("message_stop: {e}")))?;
                    if let Some(o) = v.as_object_mut() {
                        o.remove("amazon-bedrock-invocationMetrics");
                    }
                    out.extend_from_slice(v.to_string().as_bytes());
                    self.done = true;
                    self.stopped = true;
                } else if memchr::memchr2(b'\n', b'\r', &event).is_some() {
                    // SSE data is one line. In JSON that parsed, a line break
                    // can only be whitespace between tokens (inside a string
                    // it is escaped), so dropping it keeps the event intact.
                    out.extend(event.iter().filter(|&&b| b != b'\n' && b != b'\r'));
                } else {
                    out.extend_from_slice(&event);
                }
                out.extend_from_slice(b"\n\n");
            }
            Some("event") => {} // other event types (none today): nothing to relay
            Some("exception") | Some("error") => {
                let kind = header(":exception-type")
                    .or_else(|| header(":error-code"))
                    .unwrap_or_else(|| "internalServerException".into());
                let body: ExceptionBody = serde_json::from_slice(message.payload()).unwrap_or(ExceptionBody {
                    message: String::from_utf8_lossy(message.payload()).into_owned(),
                });
                let (_, k, text) = map_exception(&kind, &body.message);
                let data = serde_json::json!({"type": "error", "error": {"type": k.as_str(), "message": text}});
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(data.to_string().as_bytes());
                out.extend_from_slice(b"\n\n");
                self.done = true;
            }
            other => return Err(StreamError::Framing(format!("unexpected :message-type {other:?}"))),
        }
        Ok(())
    }
}

/// The whole stream stage for one response: frames → SSE, usage read from
/// the SSE produced, and the stream closed with an `error` event when it
/// breaks or ends early, so the client never sees a silent truncation.
pub struct BedrockStream {
    decoder: EventStreamToSse,
    tap: crate::dialects::anthropic::usage::UsageTap,
    failed: bool,
}

impl Default for BedrockStream {
    fn default() -> Self {
        BedrockStream {
            decoder: EventStreamToSse::new(),
            tap: crate::dialects::anthropic::usage::UsageTap::new(200, Some(b"text/event-stream")),
            failed: false,
        }
    }
}

impl BedrockStream {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.is_done() {
            return;
        }
        let start = out.len();
        if let Err(e) = self.decoder.push(chunk, out) {
            out.truncate(start);
            self.fail("api_error", &e.to_string(), out);
        }
        self.tap.observe(&bytes::Bytes::copy_from_slice(&out[start..]));
    }

    /// The upstream ended: anything short of `message_stop` is an error.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.is_done() {
            self.fail("api_error", "Bedrock ended the stream before message_stop", out);
        }
    }

    pub fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        if self.is_done() {
            return;
        }
        let data = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
        out.extend_from_slice(b"event: error\ndata: ");
        out.extend_from_slice(data.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
        self.failed = true;
    }

    pub fn is_done(&self) -> bool {
        self.failed || self.decoder.is_done()
    }

    pub fn completed(&self) -> bool {
        self.decoder.is_stopped()
    }

    pub fn take_usage(&mut self) -> Option<crate::dialects::Usage> {
        std::mem::replace(&mut self.tap, crate::dialects::anthropic::usage::UsageTap::Off).finish()
    }
}

/// A string header of an event-stream message.
pub(super) fn header(message: &aws_smithy_types::event_stream::Message, name: &str) -> Option<String> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str().to_string())
}

/// Encode one JSON frame as Bedrock does: `:message-type`, a type header
/// (`:event-type` or `:exception-type`) and `:content-type`. For tests and
/// mock upstreams.
pub fn encode_frame(message_type: &str, type_header: (&str, &str), payload: &str) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let string = |v: &str| HeaderValue::String(v.to_string().into());
    let message = Message::new(payload.as_bytes().to_vec())
        .add_header(Header::new(type_header.0.to_string(), string(type_header.1)))
        .add_header(Header::new(":content-type", string("application/json")))
        .add_header(Header::new(":message-type", string(message_type)));
    let mut out = Vec::new();
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut out);
    out
}

/// An InvokeModel `chunk` frame carrying one Anthropic event.
pub fn encode_chunk(event_json: &str) -> Vec<u8> {
    let payload = serde_json::json!({ "bytes": base64::engine::general_purpose::STANDARD.encode(event_json) });
    encode_frame("event", (":event-type", "chunk"), &payload.to_string())
}

/// An exception frame.
pub fn encode_exception(kind: &str, message: &str) -> Vec<u8> {
    let payload = serde_json::json!({ "message": message });
    encode_frame("exception", (":exception-type", kind), &payload.to_string())
}

/// Anthropic SSE re-framed as InvokeModelWithResponseStream's event
/// stream, for a client that speaks Bedrock to the gateway (Claude Code's
/// Bedrock mode): each event's JSON in a `chunk` frame, an `error` event
/// as an exception frame (`:exception-type` from the error's type), pings
/// dropped (Bedrock sends none). Events are re-framed as they complete;
/// the bytes of one split across pushes wait for the rest.
pub struct SseToEventStream {
    sse: crate::dialects::sse::SseDecoder,
    failed: bool,
}

impl Default for SseToEventStream {
    fn default() -> Self {
        SseToEventStream {
            sse: crate::dialects::sse::SseDecoder::new(MAX_FRAME_BYTES),
            failed: false,
        }
    }
}

impl SseToEventStream {
    /// Frames for the events `bytes` completes, appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        if self.sse.push(bytes).is_err() {
            self.failed = true;
            out.extend(encode_exception(
                "internalServerException",
                "a stream event was larger than the gateway relays",
            ));
            return;
        }
        while let Some(event) = self.sse.next_event() {
            frame(&event, out);
        }
    }

    /// Frames for an event the stream ended in the middle of.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(event) = self.sse.finish().filter(|_| !self.failed) {
            frame(&event, out);
        }
    }
}

fn frame(event: &crate::dialects::sse::SseEvent, out: &mut Vec<u8>) {
    match event.event.as_deref() {
        Some("ping") => {}
        Some("error") => {
            let v: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
            let kind = match v["error"]["type"].as_str().unwrap_or("") {
                "rate_limit_error" => "throttlingException",
                "overloaded_error" => "serviceUnavailableException",
                "invalid_request_error" | "request_too_large" => "validationException",
                "timeout_error" => "modelTimeoutException",
                _ => "internalServerException",
            };
            let message = v["error"]["message"].as_str().unwrap_or("the stream failed");
            out.extend(encode_exception(kind, message));
        }
        _ if event.data.is_empty() => {}
        _ => out.extend(encode_chunk(&event.data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn anthropic_sse_becomes_bedrock_frames_and_back() {
        let (_, sse) = sample();
        let with_ping = sse.replacen("\n\n", "\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n", 1);
        for cut in [1, 7, 64, with_ping.len()] {
            let mut writer = SseToEventStream::default();
            let mut frames = Vec::new();
            for piece in with_ping.as_bytes().chunks(cut) {
                writer.push(piece, &mut frames);
            }
            writer.finish(&mut frames);
            // Decoded again by the gateway's own Bedrock reader: the same events.
            let mut back = BedrockStream::default();
            let mut decoded = Vec::new();
            back.push(&frames, &mut decoded);
            let text = String::from_utf8(decoded).unwrap();
            for line in sse.lines().filter(|l| l.starts_with("data: ")) {
                assert!(text.contains(line), "{line} missing (cut {cut})");
            }
            assert!(!text.contains("ping"));
        }
        let mut writer = SseToEventStream::default();
        let mut out = Vec::new();
        writer.push(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n",
            &mut out,
        );
        let mut reader = FrameReader::default();
        reader.push(&out);
        let message = reader.next_message().unwrap().unwrap();
        assert_eq!(
            header(&message, ":exception-type").as_deref(),
            Some("serviceUnavailableException")
        );
    }

    fn sample() -> (Vec<u8>, String) {
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello ✓"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}"#,
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":9,"outputTokenCount":4,"invocationLatency":310,"firstByteLatency":120}}"#,
        ];
        let mut wire = Vec::new();
        let mut sse = String::new();
        for e in events {
            wire.extend(encode_chunk(e));
            let kind = serde_json::from_str::<serde_json::Value>(e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string();
            let data = if kind == "message_stop" {
                r#"{"type":"message_stop"}"#
            } else {
                e
            };
            sse.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
        }
        (wire, sse)
    }

    #[test]
    fn frames_become_sse_events_verbatim() {
        let (wire, want) = sample();
        let mut d = EventStreamToSse::new();
        let mut out = Vec::new();
        d.push(&wire, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert!(d.is_done());
    }

    #[test]
    fn exceptions_end_the_stream_as_anthropic_errors() {
        let mut wire = encode_chunk(r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":1}}}"#);
        wire.extend(encode_exception(
            "throttlingException",
            "Too many tokens, please wait before trying again.",
        ));
        let mut d = EventStreamToSse::new();
        let mut out = Vec::new();
        d.push(&wire, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Too many tokens, please wait before trying again.\"}}\n\n"), "{text}");
        assert!(d.is_done());
    }

    /// Found by fuzz/fuzz_targets/bedrock_stream.rs: an event pretty-printed
    /// over lines was written as it came, so its `data:` line ended at the
    /// first line break and the client read a truncated event.
    #[test]
    fn an_event_over_several_lines_stays_one_data_line() {
        let wire = encode_chunk("{\"type\":\r\n\"content_block_stop\",\n\n\"index\":0}\n");
        let mut d = EventStreamToSse::new();
        let mut out = Vec::new();
        d.push(&wire, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
        );
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let (mut wire, _) = sample();
        wire[20] ^= 0xff;
        let mut d = EventStreamToSse::new();
        assert!(matches!(d.push(&wire, &mut Vec::new()), Err(StreamError::Framing(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any split of the wire bytes gives the same SSE.
        #[test]
        fn split_invariance(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
            let (wire, want) = sample();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            points.sort_unstable();
            let mut d = EventStreamToSse::new();
            let mut out = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([wire.len()]) {
                d.push(&wire[last..p], &mut out).unwrap();
                last = p;
            }
            prop_assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn every_single_byte_split() {
        let (wire, want) = sample();
        let mut d = EventStreamToSse::new();
        let mut out = Vec::new();
        for b in wire.chunks(1) {
            d.push(b, &mut out).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
