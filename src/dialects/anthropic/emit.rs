//! Anthropic Messages SSE, written: the event writers every translated
//! stream uses, and [`Emitter`], the block bookkeeping shared by streams
//! whose upstream hands over whole blocks or one block at a time (Gemini,
//! Bedrock Converse). The OpenAI translator keeps its own state machine
//! (it must buffer interleaved tool-call fragments) but writes through the
//! same functions.
//!
//! Every event is written by hand into `out`: no `Value` tree, no
//! intermediate `String`. Field order follows Anthropic's
//! (`docs/protocol-notes.md` §2.3).
//!
//! What [`Emitter`] guarantees, whatever its caller does: `message_start`
//! first; block indices sequential from 0; a block stopped before the next
//! starts; no empty deltas; `message_delta` + `message_stop`, or a single
//! `event: error`, last and nothing after either.

use crate::dialects::Usage;

pub fn write_head(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
}

/// `message_start`: the message's id and model, no content yet, and the
/// input estimate as its usage (the upstream's own figure comes with
/// `message_delta`).
pub fn write_message_start(out: &mut Vec<u8>, id: &str, model: &str, estimated_input_tokens: u64) {
    write_head(out, "message_start");
    out.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
    push_json_str(out, id);
    out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    push_json_str(out, model);
    out.extend_from_slice(b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":");
    push_usage(
        out,
        Usage {
            input_tokens: estimated_input_tokens,
            output_tokens: 1,
            ..Usage::default()
        },
    );
    out.extend_from_slice(b"}}\n\n");
}

/// `message_delta` with the final stop reason and usage, then `message_stop`.
pub fn write_message_end(out: &mut Vec<u8>, stop_reason: &str, usage: Usage) {
    write_head(out, "message_delta");
    out.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
    push_json_str(out, stop_reason);
    out.extend_from_slice(b",\"stop_sequence\":null},\"usage\":");
    push_usage(out, usage);
    out.extend_from_slice(b"}\n\n");
    out.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
}

/// A usage object, in [`Usage`]'s own (Anthropic's) field order.
fn push_usage(out: &mut Vec<u8>, u: Usage) {
    // Four integers into a Vec: serialising cannot fail.
    if let Err(e) = serde_json::to_writer(&mut *out, &u) {
        log::error!("cannot serialise a usage object: {e}");
    }
}

pub fn write_text_start(out: &mut Vec<u8>, index: u32, thinking: bool) {
    write_head(out, "content_block_start");
    out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
    push_u32(out, index);
    out.extend_from_slice(if thinking {
        b",\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n" as &[u8]
    } else {
        b",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
    });
}

pub fn write_tool_start(out: &mut Vec<u8>, index: u32, id: &str, name: &str) {
    write_head(out, "content_block_start");
    out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
    push_u32(out, index);
    out.extend_from_slice(b",\"content_block\":{\"type\":\"tool_use\",\"id\":");
    push_json_str(out, id);
    out.extend_from_slice(b",\"name\":");
    push_json_str(out, name);
    out.extend_from_slice(b",\"input\":{}}}\n\n");
}

pub fn write_delta(out: &mut Vec<u8>, index: u32, kind: &str, field: &str, text: &str) {
    write_head(out, "content_block_delta");
    out.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
    push_u32(out, index);
    out.extend_from_slice(b",\"delta\":{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b"\":");
    push_json_str(out, text);
    out.extend_from_slice(b"}}\n\n");
}

pub fn write_stop(out: &mut Vec<u8>, index: u32) {
    write_head(out, "content_block_stop");
    out.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
    push_u32(out, index);
    out.extend_from_slice(b"}\n\n");
}

pub fn write_error(out: &mut Vec<u8>, kind: &str, message: &str) {
    write_head(out, "error");
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
    push_json_str(out, kind);
    out.extend_from_slice(b",\"message\":");
    push_json_str(out, message);
    out.extend_from_slice(b"}}\n\n");
}

pub fn push_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A JSON string literal, escaped exactly as serde_json does.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut unicode = *b"\\u00XX";
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                unicode[4] = HEX[(b >> 4) as usize];
                unicode[5] = HEX[(b & 0xf) as usize];
                &unicode
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(escape);
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// The kind of the open content block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Text,
    Thinking,
    Tool,
}

/// Block bookkeeping over the writers above; see the module documentation.
#[derive(Debug)]
pub struct Emitter {
    message_id: String,
    model: String,
    estimated_input_tokens: u64,
    started: bool,
    /// The open block: the caller's key for it (an upstream index), its kind
    /// and its Anthropic index.
    open: Option<(u64, BlockKind, u32)>,
    next_index: u32,
    saw_tool: bool,
    done: bool,
    completed: bool,
    /// Bytes of generated text, thinking and tool input written so far.
    generated: u64,
}

impl Emitter {
    pub fn new(message_id: &str, model: &str, estimated_input_tokens: u64) -> Self {
        Emitter {
            message_id: message_id.to_string(),
            model: model.to_string(),
            estimated_input_tokens,
            started: false,
            open: None,
            next_index: 0,
            saw_tool: false,
            done: false,
            completed: false,
            generated: 0,
        }
    }

    /// Bytes of generated text, thinking and tool input emitted so far: what
    /// an answer cut short is estimated from, when the upstream never
    /// reported its usage.
    pub fn generated_bytes(&self) -> u64 {
        self.generated
    }

    /// Emit `message_start` if it has not been (idempotent).
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started && !self.done {
            self.started = true;
            write_message_start(out, &self.message_id, &self.model, self.estimated_input_tokens);
        }
    }

    /// Close the open block, if any.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, _, index)) = self.open.take() {
            write_stop(out, index);
        }
    }

    /// The open block, if it is of `kind` under `key`.
    pub fn open_index(&self, key: u64, kind: BlockKind) -> Option<u32> {
        self.open.filter(|&(k, b, _)| k == key && b == kind).map(|(_, _, i)| i)
    }

    /// Whether the open block is the one under `key`.
    pub fn is_open(&self, key: u64) -> bool {
        self.open.is_some_and(|(k, _, _)| k == key)
    }

    fn open_block(&mut self, key: u64, kind: BlockKind, out: &mut Vec<u8>) -> u32 {
        self.start(out);
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((key, kind, index));
        index
    }

    /// Make a text or thinking block under `key` the open one (closing
    /// another) and return its index.
    fn enter(&mut self, key: u64, kind: BlockKind, out: &mut Vec<u8>) -> u32 {
        if let Some(index) = self.open_index(key, kind) {
            return index;
        }
        let index = self.open_block(key, kind, out);
        write_text_start(out, index, kind == BlockKind::Thinking);
        index
    }

    /// Append text to the text block under `key`; empty text emits nothing.
    pub fn text(&mut self, key: u64, text: &str, out: &mut Vec<u8>) {
        if !text.is_empty() && !self.done {
            let index = self.enter(key, BlockKind::Text, out);
            self.generated += text.len() as u64;
            write_delta(out, index, "text_delta", "text", text);
        }
    }

    /// Append thinking text to the thinking block under `key`.
    pub fn thinking(&mut self, key: u64, text: &str, out: &mut Vec<u8>) {
        if !text.is_empty() && !self.done {
            let index = self.enter(key, BlockKind::Thinking, out);
            self.generated += text.len() as u64;
            write_delta(out, index, "thinking_delta", "thinking", text);
        }
    }

    /// Add a signature to the thinking block under `key` (opening one if
    /// the upstream sent a signature with no thought text).
    pub fn signature(&mut self, key: u64, signature: &str, out: &mut Vec<u8>) {
        if !signature.is_empty() && !self.done {
            let index = self.enter(key, BlockKind::Thinking, out);
            write_delta(out, index, "signature_delta", "signature", signature);
        }
    }

    /// Open a `tool_use` block under `key`; its input follows as
    /// [`Self::tool_input`] fragments.
    pub fn tool_start(&mut self, key: u64, id: &str, name: &str, out: &mut Vec<u8>) -> u32 {
        if self.done {
            return self.next_index;
        }
        let index = self.open_block(key, BlockKind::Tool, out);
        self.saw_tool = true;
        write_tool_start(out, index, id, name);
        index
    }

    /// A fragment of the open tool block's input JSON.
    pub fn tool_input(&mut self, index: u32, partial_json: &str, out: &mut Vec<u8>) {
        if !partial_json.is_empty() && !self.done {
            self.generated += partial_json.len() as u64;
            write_delta(out, index, "input_json_delta", "partial_json", partial_json);
        }
    }

    /// A whole `tool_use` block at once: start, the input as one delta, stop.
    pub fn tool(&mut self, key: u64, id: &str, name: &str, input_json: &str, out: &mut Vec<u8>) {
        let index = self.tool_start(key, id, name, out);
        self.tool_input(index, input_json, out);
        self.close(out);
    }

    /// Whether a `tool_use` block was emitted (`STOP` then means `tool_use`).
    pub fn saw_tool(&self) -> bool {
        self.saw_tool
    }

    /// Close everything and emit `message_delta` + `message_stop`.
    pub fn end(&mut self, stop_reason: &str, usage: Usage, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(out);
        self.close(out);
        write_message_end(out, stop_reason, usage);
        self.done = true;
        self.completed = true;
    }

    /// A well-formed `event: error` (Anthropic error type `kind`), last.
    /// Open blocks stay open, as in Anthropic's own mid-stream errors.
    pub fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        if !self.done {
            write_error(out, kind, message);
            self.done = true;
        }
    }

    /// Whether anything has been written (`message_start` at least).
    pub fn started(&self) -> bool {
        self.started
    }

    /// True once `message_stop` or an error has been emitted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True once the message ended normally (`message_stop`).
    pub fn completed(&self) -> bool {
        self.completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| l.strip_prefix("event: ").map(str::to_string))
            .collect()
    }

    #[test]
    fn blocks_never_interleave_and_nothing_follows_the_end() {
        let mut e = Emitter::new("msg_1", "m", 10);
        let mut out = Vec::new();
        e.thinking(0, "hmm", &mut out);
        e.signature(0, "sig", &mut out);
        e.text(1, "", &mut out);
        e.text(1, "hi", &mut out);
        e.text(1, " there", &mut out);
        e.tool(2, "toolu_1", "Read", "{}", &mut out);
        e.end("tool_use", Usage::default(), &mut out);
        e.text(3, "late", &mut out);
        e.fail("api_error", "late", &mut out);
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(e.completed() && e.saw_tool());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"Read","input":{}}"#)
        );
    }

    #[test]
    fn json_strings_are_escaped_like_serde_json() {
        for s in ["", "plain", "q\"b\\s/", "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}", "é✓😀"] {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap());
        }
        for n in [0, 7, 10, 4_294_967_295] {
            let mut out = Vec::new();
            push_u32(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    /// The events as a `Value` tree would serialise them (`preserve_order`:
    /// the fields in the order written here, Anthropic's).
    fn as_values(id: &str, model: &str, estimate: u64, stop: &str, u: Usage) -> String {
        let start = serde_json::json!({
            "type": "message_start",
            "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": estimate, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1},
            },
        });
        let delta = serde_json::json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_creation_input_tokens,
                      "cache_read_input_tokens": u.cache_read_input_tokens, "output_tokens": u.output_tokens},
        });
        format!(
            "event: message_start\ndata: {start}\n\nevent: message_delta\ndata: {delta}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        )
    }

    proptest::proptest! {
        #[test]
        fn escaping_matches_serde_json(s in proptest::prelude::any::<String>()) {
            let mut out = Vec::new();
            push_json_str(&mut out, &s);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn start_and_end_match_their_value_trees(
            id in proptest::prelude::any::<String>(),
            model in proptest::prelude::any::<String>(),
            stop in proptest::prelude::any::<String>(),
            n in proptest::prelude::any::<[u64; 5]>(),
        ) {
            let u = Usage {
                input_tokens: n[1],
                output_tokens: n[2],
                cache_read_input_tokens: n[3],
                cache_creation_input_tokens: n[4],
            };
            let mut out = Vec::new();
            write_message_start(&mut out, &id, &model, n[0]);
            write_message_end(&mut out, &stop, u);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), as_values(&id, &model, n[0], &stop, u));
        }
    }

    #[test]
    fn an_error_is_last() {
        let mut e = Emitter::new("msg_1", "m", 10);
        let mut out = Vec::new();
        e.text(0, "a", &mut out);
        e.fail("overloaded_error", "busy", &mut out);
        e.end("end_turn", Usage::default(), &mut out);
        assert_eq!(names(&out).last().map(String::as_str), Some("error"));
        assert!(e.is_done() && !e.completed());
    }
}
