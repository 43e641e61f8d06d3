//! What the fuzz targets share: the input layout of the stream targets
//! ([`Plan`]), a strict reader of the Anthropic SSE the gateway writes
//! ([`check_translated`], [`check_passthrough`]), and an AWS event-stream
//! frame writer so the Bedrock targets get frames with valid checksums
//! ([`frames`]).
//!
//! Only invariants the code documents are asserted: a failed assertion is a
//! finding just like a panic inside the gateway.

use serde_json::Value;

/// How a stream target drives its translator, read from the input's head:
///
/// ```text
/// byte 0      flags: bit 0 call start() first; bits 1-2 the end:
///             0 finish(), 1 fail(), 2 finish() then fail(), 3 none
/// byte 1      n: the number of cut lengths (mod 33)
/// n bytes     chunk lengths (0 is an empty push)
/// the rest    the upstream body; what the cuts leave is pushed last
/// ```
///
/// A seed is therefore `\0\0` followed by a real upstream body.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub start: bool,
    pub end: End,
    cuts: &'a [u8],
    pub body: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Finish,
    Fail,
    FinishThenFail,
    Open,
}

impl<'a> Plan<'a> {
    pub fn parse(data: &'a [u8]) -> Plan<'a> {
        let flags = data.first().copied().unwrap_or(0);
        let n = data.get(1).map_or(0, |&n| usize::from(n) % 33);
        let rest = data.get(2..).unwrap_or(&[]);
        let n = n.min(rest.len());
        Plan {
            start: flags & 1 != 0,
            end: match (flags >> 1) & 3 {
                0 => End::Finish,
                1 => End::Fail,
                2 => End::FinishThenFail,
                _ => End::Open,
            },
            cuts: &rest[..n],
            body: &rest[n..],
        }
    }

    /// The body in the chunks the cut lengths describe.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        self.cut(self.body)
    }

    /// Any bytes (a body turned into wire bytes) cut by the same lengths.
    pub fn cut<'b>(&self, bytes: &'b [u8]) -> Vec<&'b [u8]> {
        let mut out = Vec::with_capacity(self.cuts.len() + 1);
        let mut rest = bytes;
        for &len in self.cuts {
            let (head, tail) = rest.split_at(usize::from(len).min(rest.len()));
            out.push(head);
            rest = tail;
        }
        if !rest.is_empty() {
            out.push(rest);
        }
        out
    }
}

/// A stream translator as the stream targets drive it.
pub trait Translator {
    fn start(&mut self, out: &mut Vec<u8>);
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>);
    fn finish(&mut self, out: &mut Vec<u8>);
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>);
    fn is_done(&self) -> bool;
}

/// Run `t` over `chunks` as `plan` says, checking after every call that
/// output is only ever appended in whole events. Returns the output.
pub fn drive<T: Translator>(t: &mut T, plan: &Plan<'_>, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    if plan.start {
        t.start(&mut out);
        assert_whole_events(&out);
    }
    for c in chunks {
        let done_before = t.is_done();
        let len = out.len();
        t.push(c, &mut out);
        assert_whole_events(&out);
        if done_before {
            assert_eq!(out.len(), len, "a push after the end wrote output");
        }
    }
    let ended = match plan.end {
        End::Finish => {
            t.finish(&mut out);
            true
        }
        End::Fail => {
            t.fail("api_error", "the upstream connection broke", &mut out);
            true
        }
        End::FinishThenFail => {
            t.finish(&mut out);
            let len = out.len();
            t.fail("api_error", "the upstream connection broke", &mut out);
            assert_eq!(out.len(), len, "fail() after finish() wrote output");
            true
        }
        End::Open => false,
    };
    assert_whole_events(&out);
    if ended {
        assert!(t.is_done(), "not done after finish()/fail()");
    }
    out
}

fn assert_whole_events(out: &[u8]) {
    assert!(out.is_empty() || out.ends_with(b"\n\n"), "output ends inside an event");
}

/// One event of the SSE the gateway writes.
#[derive(Debug)]
pub struct Event {
    pub name: String,
    /// The data as a tree; `Null` when it is valid JSON that a `Value`
    /// cannot hold (a number out of `f64` range, relayed as it came).
    pub data: Value,
}

/// Whether `bytes` are one JSON value, by the same validator the gateway's
/// typed parses use (it accepts numbers a `Value` cannot hold).
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

#[derive(serde::Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// The events of `out`, which must be exactly `event: NAME\ndata: JSON\n\n`
/// repeated: one `data` line each (an SSE client would split a data line
/// at a CR or LF), the JSON an object whose `type` is the event's name.
/// The bytes are not required to be UTF-8: a relayed event is the
/// upstream's bytes, which the gateway validates only as its JSON parser
/// does (it does not check strings it skips).
pub fn parse_events(out: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let end = find(rest, b"\n\n").unwrap_or_else(|| panic!("unterminated event: {:?}", lossy(rest)));
        let event = &rest[..end];
        rest = &rest[end + 2..];
        let nl = find(event, b"\n").unwrap_or_else(|| panic!("an event without a data line: {:?}", lossy(event)));
        let name = event[..nl]
            .strip_prefix(b"event: ")
            .unwrap_or_else(|| panic!("an event that does not start with its name: {:?}", lossy(event)));
        let data = event[nl + 1..]
            .strip_prefix(b"data: ")
            .unwrap_or_else(|| panic!("a second line that is not data: {:?}", lossy(event)));
        assert!(
            !name.contains(&b'\r') && !data.contains(&b'\r') && !data.contains(&b'\n'),
            "an event split over lines: {:?}",
            lossy(event)
        );
        let typed: TypeOnly = serde_json::from_slice(data)
            .unwrap_or_else(|e| panic!("data is not a typed JSON object ({e}): {:?}", lossy(event)));
        assert_eq!(
            typed.kind.as_bytes(),
            name,
            "the data's type is not the event's name: {:?}",
            lossy(event)
        );
        events.push(Event {
            name: typed.kind.into_owned(),
            data: serde_json::from_slice(data).unwrap_or(Value::Null),
        });
    }
    events
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Checks for a stream the gateway relays from an upstream that already
/// speaks Anthropic (Bedrock InvokeModel): framing, and nothing after the end.
pub fn check_passthrough(out: &[u8], done: bool) -> Vec<Event> {
    let events = parse_events(out);
    if let Some(at) = events
        .iter()
        .position(|e| e.name == "message_stop" || e.name == "error")
    {
        assert_eq!(at + 1, events.len(), "events after the end: {events:?}");
        assert!(done, "ended but not done");
    } else {
        assert!(!done, "done without an ending event");
    }
    events
}

/// The guarantees every translated stream documents (`openai::stream`,
/// `anthropic::emit`): `message_start` first; block indices sequential from
/// 0; one block open at a time, stopped before the next starts; deltas of
/// the open block's kind, never empty; `message_delta` + `message_stop`, or
/// a single `error`, last and nothing after; `done` exactly when ended.
/// With `clean_tool_ids`, every `tool_use.id` matches `^[A-Za-z0-9_-]+$`.
pub fn check_translated(out: &[u8], done: bool, clean_tool_ids: bool) -> Vec<Event> {
    assert!(std::str::from_utf8(out).is_ok(), "the SSE written is not UTF-8");
    let events = parse_events(out);
    for e in &events {
        assert!(e.data.is_object(), "the gateway wrote data a Value cannot hold: {e:?}");
    }
    let mut started = false;
    let mut open: Option<(u64, String)> = None;
    let mut next_index = 0u64;
    let mut ended = false;
    let mut held_delta = false;
    for (i, e) in events.iter().enumerate() {
        assert!(!ended, "event {i} after the end: {events:?}");
        if held_delta {
            assert_eq!(e.name, "message_stop", "message_delta not followed by message_stop");
        }
        let d = &e.data;
        match e.name.as_str() {
            "message_start" => {
                assert!(!started, "a second message_start");
                assert_eq!(i, 0, "message_start is not first");
                started = true;
            }
            "error" => {
                assert!(
                    d["error"]["type"].is_string() && d["error"]["message"].is_string(),
                    "{d}"
                );
                ended = true;
            }
            name => {
                assert!(started, "{name} before message_start");
                match name {
                    "content_block_start" => {
                        assert!(open.is_none(), "a block starts while another is open");
                        let index = d["index"].as_u64().expect("index");
                        assert_eq!(index, next_index, "block indices are not sequential");
                        next_index += 1;
                        let block = &d["content_block"];
                        let kind = block["type"].as_str().expect("content_block.type").to_string();
                        match kind.as_str() {
                            "text" => assert_eq!(block["text"], "", "{d}"),
                            "thinking" => assert_eq!(block["thinking"], "", "{d}"),
                            "tool_use" => {
                                let id = block["id"].as_str().expect("tool_use.id");
                                assert!(block["name"].is_string(), "{d}");
                                assert!(block["input"].is_object(), "{d}");
                                if clean_tool_ids {
                                    assert!(
                                        !id.is_empty()
                                            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                                        "tool_use.id {id:?} is not ^[A-Za-z0-9_-]+$"
                                    );
                                }
                            }
                            other => panic!("unexpected block type {other}"),
                        }
                        open = Some((index, kind));
                    }
                    "content_block_delta" => {
                        let index = d["index"].as_u64().expect("index");
                        let (open_index, kind) = open.as_ref().expect("a delta with no open block");
                        assert_eq!(index, *open_index, "a delta for a block that is not open");
                        let delta = &d["delta"];
                        let (field, allowed): (&str, &[&str]) = match delta["type"].as_str().expect("delta.type") {
                            "text_delta" => ("text", &["text"]),
                            "thinking_delta" => ("thinking", &["thinking"]),
                            "signature_delta" => ("signature", &["thinking"]),
                            "input_json_delta" => ("partial_json", &["tool_use"]),
                            other => panic!("unexpected delta type {other}"),
                        };
                        assert!(allowed.contains(&kind.as_str()), "{d} in a {kind} block");
                        let value = delta[field].as_str().expect("delta text");
                        assert!(!value.is_empty(), "an empty delta: {d}");
                    }
                    "content_block_stop" => {
                        let index = d["index"].as_u64().expect("index");
                        let (open_index, _) = open.take().expect("a stop with no open block");
                        assert_eq!(index, open_index, "a stop for a block that is not open");
                    }
                    "message_delta" => {
                        assert!(open.is_none(), "message_delta with a block open");
                        assert!(d["delta"]["stop_reason"].is_string(), "{d}");
                        for k in [
                            "input_tokens",
                            "output_tokens",
                            "cache_read_input_tokens",
                            "cache_creation_input_tokens",
                        ] {
                            assert!(d["usage"][k].is_u64(), "usage.{k} in {d}");
                        }
                        held_delta = true;
                    }
                    "message_stop" => {
                        assert!(held_delta, "message_stop without message_delta");
                        held_delta = false;
                        ended = true;
                    }
                    other => panic!("unexpected event {other}"),
                }
            }
        }
    }
    assert!(!held_delta, "message_delta is the last event");
    assert_eq!(done, ended, "done={done} but the stream ended={ended}: {events:?}");
    events
}

/// AWS event-stream frames (`application/vnd.amazon.eventstream`), written
/// with valid checksums, and the record layout the Bedrock stream targets
/// read their body in.
pub mod frames;

/// Each `tool_use` block's input: its `input_json_delta` fragments joined.
pub fn tool_inputs(events: &[Event]) -> Vec<String> {
    let mut inputs = Vec::new();
    let mut in_tool = false;
    for e in events {
        match e.name.as_str() {
            "content_block_start" => {
                in_tool = e.data["content_block"]["type"] == "tool_use";
                if in_tool {
                    inputs.push(String::new());
                }
            }
            "content_block_delta" if in_tool => {
                if let (Some(s), Some(last)) = (e.data["delta"]["partial_json"].as_str(), inputs.last_mut()) {
                    last.push_str(s);
                }
            }
            "content_block_stop" => in_tool = false,
            _ => {}
        }
    }
    inputs
}

/// Tool names as a translated request would have mapped them: one too long
/// for OpenAI and Gemini, one with characters neither accepts.
pub fn tool_names() -> modelgate::dialects::openai::ToolNames {
    let mut names = modelgate::dialects::openai::ToolNames::default();
    names.to_upstream("mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_on");
    names.to_upstream("read file");
    names.to_upstream_with("1password-lookup", &modelgate::dialects::gemini::GEMINI_NAMES);
    names
}

mod impls {
    use super::Translator;
    use modelgate::dialects::bedrock::converse::ConverseStream;
    use modelgate::dialects::bedrock::stream::BedrockStream;
    use modelgate::dialects::gemini::GeminiStream;
    use modelgate::dialects::openai::stream::StreamTranslator;

    macro_rules! translator {
        ($t:ty, $start:expr) => {
            impl Translator for $t {
                fn start(&mut self, out: &mut Vec<u8>) {
                    #[allow(clippy::redundant_closure_call)]
                    ($start)(self, out)
                }
                fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
                    <$t>::push(self, bytes, out)
                }
                fn finish(&mut self, out: &mut Vec<u8>) {
                    <$t>::finish(self, out)
                }
                fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
                    <$t>::fail(self, kind, message, out)
                }
                fn is_done(&self) -> bool {
                    <$t>::is_done(self)
                }
            }
        };
    }

    translator!(StreamTranslator, |t: &mut StreamTranslator, out| t.start(out));
    translator!(GeminiStream, |t: &mut GeminiStream, out| t.start(out));
    translator!(ConverseStream, |t: &mut ConverseStream, out| t.start(out));
    // InvokeModel streams relay Anthropic's own message_start.
    translator!(BedrockStream, |_: &mut BedrockStream, _: &mut Vec<u8>| {});
}
