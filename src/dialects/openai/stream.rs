//! OpenAI Chat Completions stream → Anthropic Messages SSE
//! (`docs/protocol-notes.md` §2.3, §3.2, §3.3).
//!
//! [`StreamTranslator`] owns the incremental state machine only: it takes the
//! upstream body bytes as they arrive, in any split, and appends complete
//! Anthropic SSE events to a caller-provided buffer. It must not touch the
//! network, headers, timers or pings (the relay injects `ping` while the
//! upstream is silent), and it never decides retries: a failure it sees
//! becomes an `event: error`, and the caller learns it from [`is_done`].
//!
//! Guarantees to the client, whatever the upstream does:
//! - `message_start` first; block indices sequential from 0; each block is
//!   stopped before the next starts (parallel tool calls are serialised);
//! - no empty `text_delta`, `thinking_delta` or `input_json_delta`;
//! - `message_delta` then `message_stop` last, or a single `event: error`
//!   last; nothing after either.
//!
//! `message_start.usage.output_tokens` is 1, as Anthropic and LiteLLM send
//! it; `input_tokens` there is the caller's estimate, and the authoritative
//! counts (cache fields included) go in the final `message_delta`.
//!
//! [`is_done`]: StreamTranslator::is_done

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::map_error_parts;
use super::{anthropic_tool_id, message_id, stop_reason, ToolNames, Usage};
use crate::dialects::anthropic::emit::{
    write_delta, write_error, write_message_end, write_message_start, write_stop, write_text_start, write_tool_start,
};
use crate::dialects::sse::{SseDecoder, SseEvent};

/// What the translator needs to know about the request it answers.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// The model name the client asked for; goes in `message_start`.
    pub model: String,
    /// Seed for `message_id(None, seed)` when the upstream chunk has no id,
    /// and for tool ids when a tool call has none.
    pub message_seed: String,
    /// Seeds `message_start.usage.input_tokens`.
    pub estimated_input_tokens: u64,
    /// Maps upstream tool names back to the client's names.
    pub tool_names: ToolNames,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Text,
    Thinking,
    /// Position in `StreamTranslator::calls`.
    Tool(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// Not emitted yet: another tool block is streaming, or no name is known.
    Buffered,
    /// Its block is the open one; fragments stream through.
    Live,
    /// Its block has been stopped; late fragments are dropped.
    Done,
}

#[derive(Debug)]
struct ToolCall {
    /// The upstream `index` (or a synthetic one when the upstream omits it).
    key: u64,
    id: Option<String>,
    name: Option<String>,
    /// Arguments received while buffered.
    args: String,
    state: CallState,
}

/// See the module documentation.
#[derive(Debug)]
pub struct StreamTranslator {
    ctx: StreamContext,
    decoder: SseDecoder,
    started: bool,
    /// At least one upstream chunk arrived (`started` may be set earlier by [`Self::start`]).
    received: bool,
    done: bool,
    block: Block,
    /// Anthropic index of the open block, and of the next one.
    open_index: u32,
    next_index: u32,
    calls: Vec<ToolCall>,
    last_call: Option<usize>,
    saw_tool: bool,
    /// Set once the upstream finished (or the end was synthesised); while
    /// `done` is false, `message_delta` is being held for usage.
    stop: Option<&'static str>,
    usage: Option<Usage>,
    /// Bytes of generated text, reasoning and tool arguments written so far.
    generated: u64,
}

impl StreamTranslator {
    pub fn new(ctx: StreamContext) -> Self {
        StreamTranslator {
            ctx,
            decoder: SseDecoder::new(SseDecoder::DEFAULT_MAX_EVENT),
            started: false,
            received: false,
            done: false,
            block: Block::None,
            open_index: 0,
            next_index: 0,
            calls: Vec::new(),
            last_call: None,
            saw_tool: false,
            stop: None,
            usage: None,
            generated: 0,
        }
    }

    /// The usage of a stream cut short before its end ([`Usage::cut_short`]).
    pub fn usage_so_far(&self) -> Usage {
        Usage::cut_short(self.usage, self.ctx.estimated_input_tokens, self.generated)
    }

    /// Emit `message_start` now, before the first upstream chunk, so that
    /// nothing the relay adds (pings) can precede it. The message id then
    /// comes from the seed rather than the upstream's id.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started && !self.done {
            write_message_start(
                out,
                &message_id(None, &self.ctx.message_seed),
                &self.ctx.model,
                self.ctx.estimated_input_tokens,
            );
            self.started = true;
        }
    }

    /// Feed upstream bytes (any split). Appends complete Anthropic SSE bytes to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let pushed = self.decoder.push(bytes);
        // Events completed before an oversized one are still translated.
        while !self.done {
            let Some(event) = self.decoder.next_event() else { break };
            self.on_event(event, out);
        }
        if let Err(e) = pushed {
            self.fail("api_error", &format!("upstream stream is malformed: {e}"), out);
        }
    }

    /// Upstream body ended cleanly (EOF). Closes everything still open.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let mut next = self.decoder.finish();
        while let (Some(event), false) = (next, self.done) {
            self.on_event(event, out);
            next = self.decoder.next_event();
        }
        // The last event outgrew the limit: as `push` does with one.
        if let Some(e) = self.decoder.error() {
            self.fail("api_error", &format!("upstream stream is malformed: {e}"), out);
        }
        self.end(out);
    }

    /// Upstream failed mid-stream (connection dropped, timeout): emit a
    /// well-formed `event: error` with Anthropic error type `kind` (e.g.
    /// "api_error", "timeout_error") and message; nothing after it.
    pub fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        // Open blocks are left open: Anthropic's own mid-stream errors do the
        // same, and a client treats the error as the end of the message.
        write_error(out, kind, message);
        self.done = true;
    }

    /// True once `message_stop` or an error has been emitted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Final usage as known so far (for metering). Before the upstream
    /// reports usage, the input is the caller's estimate and output is 0.
    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            input_tokens: self.ctx.estimated_input_tokens,
            ..Usage::default()
        })
    }

    /// The Anthropic `stop_reason`, once the upstream finished (or the end
    /// was synthesised). `None` while streaming and after an error.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop
    }

    fn on_event(&mut self, event: SseEvent, out: &mut Vec<u8>) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.end(out);
            return;
        }
        let error_event = event.event.as_deref() == Some("error");
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) if error_event => {
                log::debug!("upstream error event is not JSON: {e}");
                let message: String = data.chars().take(500).collect();
                let message = if message.is_empty() {
                    "upstream stream error".into()
                } else {
                    message
                };
                self.fail("api_error", &message, out);
                return;
            }
            Err(e) => {
                log::debug!("skipping an unparseable upstream chunk: {e}");
                return;
            }
        };
        if let Some(error) = chunk.error {
            let error: Value = serde_json::from_str(error.get()).unwrap_or(Value::Null);
            self.upstream_error(&error, out);
            return;
        }
        if error_event {
            // Some servers name the event and put the error object at the top.
            let whole: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            self.upstream_error(&whole, out);
            return;
        }
        self.on_chunk(chunk, out);
    }

    fn on_chunk(&mut self, chunk: Chunk<'_>, out: &mut Vec<u8>) {
        self.received = true;
        if !self.started {
            write_message_start(
                out,
                &message_id(chunk.id.get(), &self.ctx.message_seed),
                &self.ctx.model,
                self.ctx.estimated_input_tokens,
            );
            self.started = true;
        }
        // After `finish_reason` only usage is still awaited.
        if let (Some(choice), None) = (chunk.choices.0, self.stop) {
            if let Some(delta) = &choice.delta {
                self.on_delta(delta, out);
            }
            let finish = choice.finish_reason.as_str();
            if finish == "error" {
                self.fail(
                    "api_error",
                    "upstream ended the response with finish_reason \"error\"",
                    out,
                );
                return;
            }
            if !finish.is_empty() {
                self.close_all(out);
                self.stop = Some(stop_reason(Some(finish), self.saw_tool));
            }
        }
        let usage = chunk
            .usage
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
        if let Some(usage) = usage.as_ref().and_then(Usage::from_openai) {
            self.usage = Some(usage);
            if self.stop.is_some() {
                self.release(out);
            }
        }
    }

    fn on_delta(&mut self, delta: &Delta<'_>, out: &mut Vec<u8>) {
        // DeepSeek and vLLM say `reasoning_content`, OpenRouter `reasoning`;
        // a server sending both sends the same text twice.
        let reasoning = match delta.reasoning_content.as_str() {
            "" => delta.reasoning.as_str(),
            r => r,
        };
        if !reasoning.is_empty() {
            self.enter(Block::Thinking, out);
            self.generated += reasoning.len() as u64;
            write_delta(out, self.open_index, "thinking_delta", "thinking", reasoning);
        }
        for text in [delta.content.as_str(), delta.refusal.as_str()] {
            if !text.is_empty() {
                self.enter(Block::Text, out);
                self.generated += text.len() as u64;
                write_delta(out, self.open_index, "text_delta", "text", text);
            }
        }
        for call in delta.tool_calls.iter().flatten() {
            self.on_tool_fragment(call, out);
        }
    }

    /// Make a text or thinking block the open one.
    fn enter(&mut self, kind: Block, out: &mut Vec<u8>) {
        if self.block == kind {
            return;
        }
        self.close_all(out);
        self.open_index = self.next_index;
        self.next_index += 1;
        self.block = kind;
        write_text_start(out, self.open_index, kind == Block::Thinking);
    }

    fn on_tool_fragment(&mut self, fragment: &ToolCallDelta<'_>, out: &mut Vec<u8>) {
        let id = fragment.id.as_str();
        let (name, args) = match &fragment.function {
            Some(f) => (f.name.as_str(), arguments_text(f.arguments)),
            None => ("", Cow::Borrowed("")),
        };
        let i = self.call_for(fragment.index, id);
        let call = &mut self.calls[i];
        if call.id.is_none() && !id.is_empty() {
            call.id = Some(id.to_string());
        }
        // Some servers repeat the name on every fragment; the first one counts.
        if call.name.is_none() && !name.is_empty() {
            call.name = Some(name.to_string());
        }
        match call.state {
            CallState::Live => {
                if !args.is_empty() {
                    self.generated += args.len() as u64;
                    write_delta(out, self.open_index, "input_json_delta", "partial_json", &args);
                }
            }
            CallState::Done => {
                if !args.is_empty() {
                    log::debug!("dropping arguments for tool call {} after its block closed", call.key);
                }
            }
            CallState::Buffered => {
                call.args.push_str(&args);
                // The first call to show up streams live (its start is flushed
                // at once, litellm#32004); the others wait for it to close,
                // since Anthropic blocks cannot interleave.
                if call.name.is_some() && !matches!(self.block, Block::Tool(_)) {
                    self.close_block(out);
                    self.open_tool(i, out);
                }
            }
        }
    }

    /// The call a fragment belongs to. Without an `index`, a new `id` means a
    /// new call and no `id` means the latest one (CCR's `index ?? 0`).
    fn call_for(&mut self, index: Option<u64>, id: &str) -> usize {
        let found = match index {
            // Consecutive fragments of one call are the common case.
            Some(key) if self.last_call.is_some_and(|i| self.calls[i].key == key) => self.last_call,
            Some(key) => self.calls.iter().position(|c| c.key == key),
            None if id.is_empty() => self.last_call,
            None => self.calls.iter().position(|c| c.id.as_deref() == Some(id)).or_else(|| {
                // An id arriving after id-less fragments names that call.
                self.last_call.filter(|&i| self.calls[i].id.is_none())
            }),
        };
        let i = found.unwrap_or_else(|| {
            let key = index.unwrap_or_else(|| self.calls.iter().map(|c| c.key.saturating_add(1)).max().unwrap_or(0));
            self.calls.push(ToolCall {
                key,
                id: None,
                name: None,
                args: String::new(),
                state: CallState::Buffered,
            });
            self.calls.len() - 1
        });
        self.last_call = Some(i);
        i
    }

    fn open_tool(&mut self, i: usize, out: &mut Vec<u8>) {
        self.open_index = self.next_index;
        self.next_index += 1;
        self.block = Block::Tool(i);
        self.saw_tool = true;
        let call = &mut self.calls[i];
        call.state = CallState::Live;
        let seed = format!("{}:{}", self.ctx.message_seed, call.key);
        let id = anthropic_tool_id(call.id.as_deref(), &seed);
        let name = self.ctx.tool_names.to_original(call.name.as_deref().unwrap_or(""));
        write_tool_start(out, self.open_index, &id, name);
        if !call.args.is_empty() {
            self.generated += call.args.len() as u64;
            write_delta(out, self.open_index, "input_json_delta", "partial_json", &call.args);
            call.args = String::new();
        }
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        match self.block {
            Block::None => return,
            Block::Tool(i) => self.calls[i].state = CallState::Done,
            Block::Text | Block::Thinking => {}
        }
        write_stop(out, self.open_index);
        self.block = Block::None;
    }

    /// Close the open block and emit every buffered tool call, one complete
    /// block each.
    fn close_all(&mut self, out: &mut Vec<u8>) {
        self.close_block(out);
        for i in 0..self.calls.len() {
            if self.calls[i].state == CallState::Buffered {
                self.open_tool(i, out);
                self.close_block(out);
            }
        }
    }

    /// `[DONE]` or EOF: synthesise whatever the upstream did not send.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.received {
            self.fail("api_error", "upstream closed the stream before sending anything", out);
            return;
        }
        if self.stop.is_none() {
            self.close_all(out);
            self.stop = Some(stop_reason(None, self.saw_tool));
        }
        self.release(out);
    }

    /// Emit the held `message_delta` and `message_stop`.
    fn release(&mut self, out: &mut Vec<u8>) {
        write_message_end(out, self.stop.unwrap_or("end_turn"), self.usage());
        self.done = true;
    }

    fn upstream_error(&mut self, error: &Value, out: &mut Vec<u8>) {
        fn text<'v>(error: &'v Value, key: &str) -> &'v str {
            error.get(key).and_then(Value::as_str).unwrap_or("")
        }
        fn status_of(v: Option<&Value>) -> Option<u16> {
            let v = v?;
            let n = v.as_u64().or_else(|| v.as_str()?.parse().ok())?;
            u16::try_from(n).ok().filter(|s| (100..600).contains(s))
        }
        // OpenRouter puts the HTTP status in `code`; others use `status`.
        let status = status_of(error.get("code"))
            .or_else(|| status_of(error.get("status")))
            .unwrap_or(500);
        let message = match (text(error, "message"), error.as_str()) {
            ("", Some(s)) if !s.is_empty() => s,
            ("", _) => "upstream reported an error mid-stream",
            (m, _) => m,
        };
        let mapped = map_error_parts(status, text(error, "code"), text(error, "type"), message);
        self.fail(mapped.kind.as_str(), &mapped.message, out);
    }
}

// ---- upstream chunk shapes -------------------------------------------------
//
// Parsed once per event, borrowing from the event's data; strings allocate
// only when they contain escapes.

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Str<'a>,
    #[serde(default, borrow)]
    choices: FirstChoice<'a>,
    // Raw, so the common chunk does not carry two `Value`s' worth of stack
    // through every move; parsed only when present (a few times a stream).
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Str<'a>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Str<'a>,
    #[serde(default, borrow)]
    reasoning_content: Str<'a>,
    #[serde(default, borrow)]
    reasoning: Str<'a>,
    #[serde(default, borrow)]
    refusal: Str<'a>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    id: Str<'a>,
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Str<'a>,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

/// Arguments are a JSON string on the wire, but some servers send the object
/// itself; its JSON text is what the client needs either way.
fn arguments_text<'a>(raw: Option<&'a RawValue>) -> Cow<'a, str> {
    let Some(raw) = raw else { return Cow::Borrowed("") };
    let json = raw.get();
    if json.starts_with('"') {
        serde_json::from_str::<Str<'a>>(json)
            .ok()
            .and_then(|s| s.0)
            .unwrap_or_default()
    } else if json == "null" {
        Cow::Borrowed("")
    } else {
        Cow::Borrowed(json)
    }
}

/// A string field that tolerates `null` and wrong types (as absent), so one
/// odd field does not cost the whole chunk.
#[derive(Default)]
struct Str<'a>(Option<Cow<'a, str>>);

impl Str<'_> {
    fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Str::deserialize(d)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Str(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Str(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `choices[]` reduced to the choice with index 0, without allocating a Vec
/// per chunk (Claude Code never asks for `n > 1`).
#[derive(Default)]
struct FirstChoice<'a>(Option<Choice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = FirstChoice<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstChoice(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut first = None;
                while let Some(choice) = seq.next_element::<Choice<'a>>()? {
                    if first.is_none() && choice.index.unwrap_or(0) == 0 {
                        first = Some(choice);
                    }
                }
                Ok(FirstChoice(first))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx() -> StreamContext {
        StreamContext {
            model: "claude-sonnet-4-5".into(),
            message_seed: "req_01".into(),
            estimated_input_tokens: 2500,
            tool_names: ToolNames::default(),
        }
    }

    /// An upstream body: each chunk is a `data:` event. Lines starting with
    /// `:` or `event:`, or the `[DONE]` marker, are written as given.
    fn body(lines: &[&str]) -> String {
        let mut s = String::new();
        for line in lines {
            if line.starts_with(':') || line.starts_with("event:") {
                s.push_str(line);
                s.push('\n');
                if line.starts_with(':') {
                    s.push('\n');
                }
            } else {
                s.push_str("data: ");
                s.push_str(line);
                s.push_str("\n\n");
            }
        }
        s
    }

    fn translate_with(ctx: StreamContext, chunks: &[&[u8]]) -> (String, StreamTranslator) {
        let mut t = StreamTranslator::new(ctx);
        let mut out = Vec::new();
        for c in chunks {
            t.push(c, &mut out);
        }
        t.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_well_formed(&text);
        (text, t)
    }

    fn run(lines: &[&str]) -> String {
        translate_with(ctx(), &[body(lines).as_bytes()]).0
    }

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

    /// The Anthropic stream contract, checked on every output.
    fn assert_well_formed(out: &str) {
        assert!(out.is_empty() || out.ends_with("\n\n"), "unterminated output: {out:?}");
        let mut events = Vec::new();
        for raw in out.split_terminator("\n\n") {
            let (head, data) = raw.split_once('\n').expect("event and data lines");
            let name = head.strip_prefix("event: ").expect("event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
            assert_eq!(data["type"], name, "event name matches its type");
            events.push((name.to_string(), data));
        }
        if events.is_empty() {
            return;
        }
        let last = events.len() - 1;
        let mut open: Option<(u64, String)> = None;
        let mut next_index = 0;
        for (i, (name, data)) in events.iter().enumerate() {
            if i == 0 && name != "error" {
                assert_eq!(name, "message_start", "message_start comes first");
            }
            match name.as_str() {
                "message_start" => assert_eq!(i, 0, "message_start comes first"),
                "error" => {
                    assert_eq!(i, last, "nothing after an error");
                    assert!(data["error"]["type"].is_string() && data["error"]["message"].is_string());
                    return;
                }
                "content_block_start" => {
                    assert!(open.is_none(), "blocks never interleave: {out}");
                    assert_eq!(data["index"], next_index, "indices are sequential");
                    next_index += 1;
                    let kind = data["content_block"]["type"].as_str().unwrap().to_string();
                    open = Some((data["index"].as_u64().unwrap(), kind));
                }
                "content_block_delta" => {
                    let (index, kind) = open.as_ref().expect("delta inside a block");
                    assert_eq!(data["index"], *index);
                    let (delta_kind, field) = match kind.as_str() {
                        "text" => ("text_delta", "text"),
                        "thinking" => ("thinking_delta", "thinking"),
                        "tool_use" => ("input_json_delta", "partial_json"),
                        other => panic!("unexpected block type {other}"),
                    };
                    assert_eq!(data["delta"]["type"], delta_kind);
                    assert_ne!(data["delta"][field], "", "no empty deltas");
                }
                "content_block_stop" => {
                    let (index, _) = open.take().expect("stop inside a block");
                    assert_eq!(data["index"], index);
                }
                "message_delta" => {
                    assert!(open.is_none(), "blocks closed before message_delta");
                    assert_eq!(i + 1, last, "message_stop right after message_delta");
                    assert!(data["delta"]["stop_reason"].is_string());
                }
                "message_stop" => assert_eq!(i, last, "nothing after message_stop"),
                other => panic!("unexpected event {other}"),
            }
        }
        assert_eq!(
            events[last].0, "message_stop",
            "a finished stream ends with message_stop"
        );
    }

    // ---- whole streams (insta snapshots) ----------------------------------

    #[test]
    fn plain_text() {
        insta::assert_snapshot!(run(&[
            &chunk(r#"{"role":"assistant","content":""}"#),
            &text("Hello"),
            &text(", world.\n"),
            &finish("stop"),
            USAGE,
            "[DONE]",
        ]));
    }

    #[test]
    fn reasoning_then_text_keeps_the_first_token() {
        // DeepSeek-style `reasoning_content`; the first content token arrives
        // in the chunk that switches the block and must be its first delta.
        insta::assert_snapshot!(run(&[
            &chunk(r#"{"role":"assistant","content":null,"reasoning_content":""}"#),
            &reasoning("reasoning_content", "The user wants"),
            &reasoning("reasoning_content", " a greeting."),
            &chunk(r#"{"content":"Hi","reasoning_content":null}"#),
            &text("!"),
            &finish("stop"),
            USAGE,
            "[DONE]",
        ]));
    }

    #[test]
    fn openrouter_reasoning_comments_and_usage_on_the_final_chunk() {
        insta::assert_snapshot!(run(&[
            ": OPENROUTER PROCESSING",
            &reasoning("reasoning", "Thinking"),
            ": OPENROUTER PROCESSING",
            &chunk(r#"{"content":"Done.","reasoning":null,"reasoning_details":[]}"#),
            r#"{"id":"gen-1","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop","native_finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":60}}}"#,
            "[DONE]",
        ]));
    }

    #[test]
    fn text_then_one_streamed_tool_call() {
        insta::assert_snapshot!(run(&[
            &text("Running it."),
            &tool(0, "call_1", "Bash", ""),
            &args(0, "{\"command\""),
            &args(0, ": \"ls -la\"}"),
            &finish("tool_calls"),
            USAGE,
            "[DONE]",
        ]));
    }

    #[test]
    fn parallel_tool_calls_interleaved_by_index() {
        // The first call streams live; the second is buffered and emitted
        // whole once the first closes.
        insta::assert_snapshot!(run(&[
            &tool(0, "call_a", "Bash", ""),
            &tool(1, "call_b", "Read", ""),
            &args(0, "{\"command\":"),
            &args(1, "{\"file_path\":"),
            &args(0, " \"ls\"}"),
            &args(1, " \"/tmp/x\"}"),
            &finish("tool_calls"),
            USAGE,
            "[DONE]",
        ]));
    }

    #[test]
    fn whole_tool_calls_in_one_chunk_with_finish_stop() {
        // xAI / Gemini-compat: id, name and full arguments at once, two calls
        // in one chunk, and `stop` although tools were called.
        insta::assert_snapshot!(run(&[
            &chunk(
                r#"{"tool_calls":[{"index":0,"id":"call_x","type":"function","function":{"name":"Glob","arguments":"{\"pattern\":\"*.rs\"}"}},{"index":1,"id":"call_y","type":"function","function":{"name":"Grep","arguments":"{\"pattern\":\"fn\"}"}}]}"#
            ),
            &finish("stop"),
            USAGE,
            "[DONE]",
        ]));
    }

    #[test]
    fn tool_call_with_empty_arguments_is_started_at_once() {
        let first = body(&[&tool(0, "call_1", "TodoRead", "")]);
        let mut t = StreamTranslator::new(ctx());
        let mut out = Vec::new();
        t.push(first.as_bytes(), &mut out);
        let head = String::from_utf8(out.clone()).unwrap();
        assert!(head.contains(r#""content_block":{"type":"tool_use","id":"call_1","name":"TodoRead","input":{}}"#));
        insta::assert_snapshot!(run(&[
            &tool(0, "call_1", "TodoRead", ""),
            &args(0, ""),
            &finish("tool_calls"),
            USAGE,
            "[DONE]"
        ]));
    }

    #[test]
    fn content_and_finish_in_the_same_chunk() {
        // Fake-streaming providers put everything in one chunk.
        insta::assert_snapshot!(run(&[
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant","content":"All at once."},"finish_reason":"length"}],"usage":{"prompt_tokens":10,"completion_tokens":3}}"#,
            "[DONE]",
        ]));
    }

    #[test]
    fn eof_without_finish_reason_synthesises_the_end() {
        insta::assert_snapshot!("eof_without_finish_text", run(&[&text("cut short")]));
        insta::assert_snapshot!(
            "eof_without_finish_tool",
            run(&[
                &text("Let me look."),
                &tool(0, "call_1", "Read", "{\"file_path\":\"a\"}")
            ])
        );
    }

    #[test]
    fn refusal_and_content_filter() {
        insta::assert_snapshot!(run(&[
            &chunk(r#"{"role":"assistant","refusal":""}"#),
            &chunk(r#"{"refusal":"I can't help with that."}"#),
            &finish("content_filter"),
            USAGE,
            "[DONE]",
        ]));
    }

    #[test]
    fn openrouter_mid_stream_error_chunk() {
        insta::assert_snapshot!(run(&[
            &text("Partial"),
            r#"{"id":"gen-1","object":"chat.completion.chunk","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#,
            &text("ignored"),
            "[DONE]",
        ]));
    }

    #[test]
    fn error_event_with_numeric_code() {
        insta::assert_snapshot!(run(&[
            &text("Hi"),
            "event: error",
            r#"{"error":{"code":429,"message":"Rate limit exceeded upstream"}}"#,
        ]));
    }

    #[test]
    fn context_overflow_error_chunk_gets_anthropic_wording() {
        insta::assert_snapshot!(run(&[
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130123 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
        ]));
    }

    #[test]
    fn empty_upstream_is_an_error() {
        insta::assert_snapshot!("empty_upstream", run(&[]));
        assert_eq!(run(&[": OPENROUTER PROCESSING", "[DONE]"]), run(&[]));
        assert_eq!(run(&["not json"]), run(&[]));
    }

    #[test]
    fn tool_names_restored_and_ids_sanitised() {
        let mut ctx = ctx();
        let original = "mcp__some_really_long_server_name__and_an_even_longer_tool_name_here";
        let upstream = ctx.tool_names.to_upstream(original);
        assert_ne!(upstream, original);
        let input = body(&[
            &tool(0, "functions.Bash:0", &upstream, "{}"),
            &chunk(r#"{"tool_calls":[{"index":1,"type":"function","function":{"name":"Read","arguments":"{}"}}]}"#),
            &finish("tool_calls"),
            "[DONE]",
        ]);
        let (out, _) = translate_with(ctx, &[input.as_bytes()]);
        assert!(out.contains(&format!(r#""name":"{original}""#)));
        insta::assert_snapshot!(out);
    }

    #[test]
    fn tool_calls_without_index() {
        // A new id is a new call; fragments without id or index extend the
        // latest call; arguments sent as an object are passed as JSON text.
        insta::assert_snapshot!(run(&[
            &chunk(r#"{"tool_calls":[{"id":"a","function":{"name":"Bash","arguments":"{\"command\":"}}]}"#),
            &chunk(r#"{"tool_calls":[{"function":{"arguments":"\"pwd\"}"}}]}"#),
            &chunk(r#"{"tool_calls":[{"id":"b","function":{"name":"Read","arguments":{"file_path":"/x"}}}]}"#),
            &finish("tool_calls"),
            "[DONE]",
        ]));
    }

    #[test]
    fn empty_fragments_are_skipped() {
        insta::assert_snapshot!(run(&[
            &chunk(r#"{"role":"assistant","content":"","reasoning_content":"","tool_calls":[]}"#),
            &reasoning("reasoning", ""),
            &text(""),
            &text("x"),
            &text(""),
            &chunk(r#"{"content":null}"#),
            &finish("stop"),
            USAGE,
        ]));
    }

    #[test]
    fn block_changes_close_and_reopen() {
        // thinking → text → thinking → tool → text: five blocks, 0..=4; the
        // buffered second call is flushed when text interrupts the first.
        insta::assert_snapshot!(run(&[
            &reasoning("reasoning_content", "a"),
            &text("b"),
            &reasoning("reasoning_content", "c"),
            &tool(0, "call_1", "Bash", "{\"command\":"),
            &tool(1, "call_2", "Read", "{}"),
            &text("d"),
            &args(0, "\"late\"}"),
            &finish("tool_calls"),
            USAGE,
        ]));
    }

    // ---- focused behaviour -------------------------------------------------

    #[test]
    fn message_start_uses_the_client_model_the_estimate_and_the_upstream_id() {
        let out = run(&[&text("x"), &finish("stop"), "[DONE]"]);
        let start = out.lines().nth(1).unwrap();
        assert_eq!(
            start,
            r#"data: {"type":"message_start","message":{"id":"msg_chatcmpl-abc","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2500,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#
        );
        let no_id = run(&[r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#]);
        assert!(no_id.contains(&format!(r#""id":"{}""#, message_id(None, "req_01"))));
    }

    #[test]
    fn message_delta_is_held_until_usage() {
        let mut t = StreamTranslator::new(ctx());
        let mut out = Vec::new();
        t.push(body(&[&text("hi"), &finish("stop")]).as_bytes(), &mut out);
        let before = String::from_utf8(out.clone()).unwrap();
        assert!(
            before.ends_with("{\"type\":\"content_block_stop\",\"index\":0}\n\n"),
            "{before}"
        );
        assert!(!t.is_done());
        assert_eq!(t.stop_reason(), Some("end_turn"));
        t.push(body(&[USAGE]).as_bytes(), &mut out);
        assert!(t.is_done());
        let after = String::from_utf8(out.clone()).unwrap();
        assert!(after.ends_with(concat!(
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},",
            "\"usage\":{\"input_tokens\":552,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2048,\"output_tokens\":42}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        )));
        assert_eq!(
            t.usage(),
            Usage {
                input_tokens: 552,
                output_tokens: 42,
                cache_read_input_tokens: 2048,
                cache_creation_input_tokens: 0
            }
        );
        // Anything after message_stop is dropped.
        let len = out.len();
        t.push(body(&[&text("more"), USAGE, "[DONE]"]).as_bytes(), &mut out);
        t.finish(&mut out);
        t.fail("api_error", "late", &mut out);
        assert_eq!(out.len(), len);
    }

    #[test]
    fn done_or_eof_releases_a_held_delta_with_the_estimate() {
        for end in [&["[DONE]"][..], &[]] {
            let mut lines = vec![text("hi"), finish("length")];
            lines.extend(end.iter().map(|s| s.to_string()));
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let (out, t) = translate_with(ctx(), &[body(&refs).as_bytes()]);
            assert!(out.contains(r#""delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"input_tokens":2500,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}"#), "{out}");
            assert_eq!(t.stop_reason(), Some("max_tokens"));
            assert_eq!(t.usage().input_tokens, 2500);
        }
    }

    #[test]
    fn fail_mid_stream_emits_one_error_and_nothing_after() {
        let mut t = StreamTranslator::new(ctx());
        let mut out = Vec::new();
        t.push(body(&[&text("partial")]).as_bytes(), &mut out);
        t.fail("timeout_error", "upstream stopped sending for 300s", &mut out);
        assert!(t.is_done());
        assert_eq!(t.stop_reason(), None);
        t.push(body(&[&text("more")]).as_bytes(), &mut out);
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert_well_formed(&out);
        insta::assert_snapshot!(out);
    }

    #[test]
    fn unparseable_chunks_and_comments_are_skipped() {
        let with_noise = run(&[
            ": keep-alive",
            &text("a"),
            "{not json",
            "42",
            r#"{"choices":"nonsense"}"#,
            &text("b"),
            &finish("stop"),
            USAGE,
        ]);
        assert_eq!(with_noise, run(&[&text("a"), &text("b"), &finish("stop"), USAGE]));
        // Odd field types cost the field, not the chunk.
        let odd = run(&[&chunk(r#"{"content":"ok","reasoning":{"summary":[1]},"refusal":7}"#)]);
        assert!(odd.contains(r#""text":"ok""#));
        assert!(!odd.contains("thinking"));
    }

    #[test]
    fn oversized_upstream_event_fails_the_stream() {
        let mut t = StreamTranslator::new(ctx());
        t.decoder = SseDecoder::new(64);
        let mut out = Vec::new();
        t.push(
            body(&[r#"{"choices":[{"delta":{"content":"ok"}}]}"#]).as_bytes(),
            &mut out,
        );
        t.push(&[b'x'; 100], &mut out);
        assert!(t.is_done());
        let out = String::from_utf8(out).unwrap();
        assert_well_formed(&out);
        assert!(out.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream stream is malformed: SSE event larger than 64 bytes\"}}\n\n"
        ));
    }

    /// Found by fuzz/fuzz_targets/sse_decoder.rs: a last event without its
    /// blank line that outgrew the limit only as it was decoded (invalid
    /// UTF-8 becomes U+FFFD) was dropped at EOF, and the stream ended as if
    /// complete.
    #[test]
    fn oversized_last_event_at_eof_fails_the_stream() {
        let mut t = StreamTranslator::new(ctx());
        t.decoder = SseDecoder::new(64);
        let mut out = Vec::new();
        t.push(
            body(&[r#"{"choices":[{"delta":{"content":"ok"}}]}"#]).as_bytes(),
            &mut out,
        );
        t.push(&[&b"data: "[..], &[0xff; 58]].concat(), &mut out);
        assert!(!t.is_done());
        t.finish(&mut out);
        assert!(t.is_done());
        let out = String::from_utf8(out).unwrap();
        assert_well_formed(&out);
        assert!(out.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream stream is malformed: SSE event larger than 64 bytes\"}}\n\n"
        ), "{out}");
    }

    #[test]
    fn vllm_usage_on_every_chunk_takes_the_last() {
        let u = |n: u64| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"t"}}}}],"usage":{{"prompt_tokens":10,"completion_tokens":{n}}}}}"#
            )
        };
        let (out, t) = translate_with(
            ctx(),
            &[body(&[&u(1), &u(2), r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":3}}"#, &u(9)]).as_bytes()],
        );
        assert!(out.contains(r#""usage":{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":3}"#));
        assert_eq!(t.usage().output_tokens, 3);
    }

    #[test]
    fn finish_reason_error_without_error_object() {
        let out = run(&[&text("a"), &finish("error")]);
        assert!(out.ends_with(
            "\"type\":\"api_error\",\"message\":\"upstream ended the response with finish_reason \\\"error\\\"\"}}\n\n"
        ));
    }

    // ---- split invariance ----------------------------------------------------

    /// Text, reasoning, two interleaved parallel tool calls, usage and
    /// `[DONE]`, with keep-alive comments and non-ASCII text; one line per
    /// entry so line terminators can be varied.
    fn realistic_lines() -> Vec<String> {
        let mut lines = vec![": OPENROUTER PROCESSING".to_string(), String::new()];
        for c in [
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
            USAGE.to_string(),
            "[DONE]".to_string(),
        ] {
            lines.push(format!("data: {c}"));
            lines.push(String::new());
        }
        lines
    }

    fn join(lines: &[String], seps: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut previous = "";
        for (i, line) in lines.iter().enumerate() {
            // `\r` then `\n` would be one CRLF terminator and swallow the
            // blank line; the mix `\r`, `\r\n` keeps both.
            let sep = match seps[i % seps.len()] {
                "\n" if previous == "\r" && line.is_empty() => "\r\n",
                sep => sep,
            };
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(sep.as_bytes());
            previous = sep;
        }
        out
    }

    #[test]
    fn single_byte_feeding_matches_whole() {
        let input = join(&realistic_lines(), &["\n"]);
        let (whole, _) = translate_with(ctx(), &[&input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (bytewise, t) = translate_with(ctx(), &bytes);
        assert_eq!(bytewise, whole);
        assert_eq!(t.stop_reason(), Some("tool_use"));
        insta::assert_snapshot!("realistic_stream", whole);
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_split_and_line_endings_give_identical_output(
            seps in proptest::collection::vec(prop_oneof![Just("\n"), Just("\r\n"), Just("\r")], 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let lines = realistic_lines();
            let reference = translate_with(ctx(), &[&join(&lines, &["\n"])]).0;
            let input = join(&lines, &seps);
            let chunks = crate::dialects::sse::split_at(&input, &cuts);
            prop_assert_eq!(translate_with(ctx(), &chunks).0, reference);
        }
    }

    /// `cargo test --release --lib dialects::openai::stream -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn cost_per_event() {
        // Real OpenAI chunk shapes, with the fields nobody reads.
        let full = |delta: &str| {
            format!(
                r#"{{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_c7ca0ebaca","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
            )
        };
        let mut lines = Vec::new();
        for i in 0..10_000 {
            lines.push(full(if i % 2 == 0 {
                r#"{"content":" some tokens"}"#
            } else {
                r#"{"reasoning_content":"hmm, \"so\"\n"}"#
            }));
        }
        lines.push(full(
            r#"{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"Bash","arguments":""}}]}"#,
        ));
        for _ in 0..10_000 {
            lines.push(full(
                r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"k\": 1"}}]}"#,
            ));
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let input = body(&refs);
        let rounds = 20;
        let mut out = Vec::with_capacity(8 << 20);
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            out.clear();
            let mut t = StreamTranslator::new(ctx());
            for piece in input.as_bytes().chunks(1400) {
                t.push(piece, &mut out);
            }
            t.finish(&mut out);
        }
        let per = start.elapsed() / (rounds * lines.len() as u32);
        println!("{per:?} per upstream event");
    }
}
