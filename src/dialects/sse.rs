//! Incremental Server-Sent Events decoder, shared by every dialect that reads
//! an upstream `text/event-stream` body.
//!
//! It owns the byte-level framing only (the WHATWG "event stream
//! interpretation" rules): line terminators (`\n`, `\r\n`, `\r`, even when a
//! `\r\n` pair or a UTF-8 character is split across network reads), comment
//! lines, the `event:` and `data:` fields, and dispatch on a blank line. It
//! knows nothing about what the `data` means, and it never touches the
//! network: callers push bytes and pull [`SseEvent`]s.
//!
//! Memory is bounded: the event being assembled (its data, its name and the
//! unterminated line) may not exceed the `max_event_bytes` given to
//! [`SseDecoder::new`]. Each pushed byte is scanned once, however the input
//! is split.

use std::collections::VecDeque;

/// One dispatched event. `event` is `None` for the default (`message`) type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The event under construction, kept apart from the byte buffer so a line
/// borrowed from the buffer can be applied to it.
#[derive(Debug, Default)]
struct Pending {
    data: String,
    /// `data:` with an empty value still makes an event, so emptiness of
    /// `data` cannot tell whether a data line was seen.
    has_data: bool,
    event: String,
}

impl Pending {
    fn size(&self) -> usize {
        self.data.len() + self.event.len()
    }

    /// Apply one line (without its terminator). Returns false when the event
    /// outgrows `max`.
    fn line(&mut self, line: &[u8], events: &mut VecDeque<SseEvent>, max: usize) -> bool {
        if line.is_empty() {
            self.dispatch(events);
            return true;
        }
        if line[0] == b':' {
            return true;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                push_lossy(&mut self.data, value);
            }
            b"event" => {
                self.event.clear();
                push_lossy(&mut self.event, value);
            }
            // `id` and `retry` drive browser reconnection, which no caller does.
            _ => {}
        }
        self.size() <= max
    }

    fn dispatch(&mut self, events: &mut VecDeque<SseEvent>) {
        if self.has_data {
            let event = (!self.event.is_empty()).then(|| std::mem::take(&mut self.event));
            events.push_back(SseEvent {
                event,
                data: std::mem::take(&mut self.data),
            });
            self.has_data = false;
        }
        self.event.clear();
    }
}

/// `from_utf8` has an ASCII fast path that `from_utf8_lossy` lacks; invalid
/// input is rare enough to pay for the second pass.
fn push_lossy(dst: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => dst.push_str(s),
        Err(_) => dst.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of the current, unterminated line (complete lines are consumed
    /// by `push` itself).
    buf: Vec<u8>,
    /// `buf[..scan]` is known to hold no line terminator, so a long line fed
    /// in small pieces is not rescanned from its start on every push.
    scan: usize,
    /// The previous line ended with a `\r` at the end of a push; a `\n`
    /// starting the next push belongs to that terminator.
    skip_lf: bool,
    bom_checked: bool,
    pending: Pending,
    events: VecDeque<SseEvent>,
    max: usize,
    failed: bool,
}

impl SseDecoder {
    pub const DEFAULT_MAX_EVENT: usize = 16 * 1024 * 1024;

    pub fn new(max_event_bytes: usize) -> Self {
        SseDecoder {
            buf: Vec::new(),
            scan: 0,
            skip_lf: false,
            bom_checked: false,
            pending: Pending::default(),
            events: VecDeque::new(),
            max: max_event_bytes,
            failed: false,
        }
    }

    /// Feed bytes split anywhere (even inside a UTF-8 char or a CRLF); call
    /// `next_event` until None.
    ///
    /// After an error the stream cannot be resynchronised: events completed
    /// before the oversized one can still be taken with `next_event`, and
    /// every later `push` fails again.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        self.buf.extend_from_slice(bytes);
        if !self.bom_checked {
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Ok(());
            }
            self.strip_bom();
        }
        let mut pos = 0;
        loop {
            if self.skip_lf {
                match self.buf.get(pos) {
                    None => break,
                    Some(&b) => {
                        if b == b'\n' {
                            pos += 1;
                        }
                        self.skip_lf = false;
                    }
                }
            }
            let from = pos.max(self.scan);
            let Some(offset) = self.buf[from..].iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.scan = self.buf.len();
                break;
            };
            let end = from + offset;
            self.skip_lf = self.buf[end] == b'\r';
            if !self.pending.line(&self.buf[pos..end], &mut self.events, self.max) {
                return Err(self.fail());
            }
            pos = end + 1;
            self.scan = pos;
        }
        // Only the unterminated line is kept: a copy of at most what this
        // push added.
        self.buf.drain(..pos);
        self.scan -= pos;
        if self.pending.size() + self.buf.len() > self.max {
            return Err(self.fail());
        }
        Ok(())
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.events.pop_front()
    }

    /// At EOF: a final event without its blank line is still delivered
    /// (return it). Should events pushed earlier not have been taken yet, the
    /// oldest is returned and the rest stay for `next_event`. A final event
    /// that outgrows the limit is not delivered: [`Self::error`] says so.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.failed {
            if !self.bom_checked {
                self.strip_bom();
            }
            let line = std::mem::take(&mut self.buf);
            let ok = line.is_empty() || self.pending.line(&line, &mut self.events, self.max);
            if ok {
                self.pending.dispatch(&mut self.events);
            } else {
                self.fail();
            }
            self.scan = 0;
            self.skip_lf = false;
        }
        self.events.pop_front()
    }

    /// The error an oversized event caused, if one did: the one `push`
    /// returned, or the one `finish` found in the last, unterminated event
    /// (its line can outgrow the limit only as it is decoded: each invalid
    /// UTF-8 byte becomes a three-byte U+FFFD).
    pub fn error(&self) -> Option<SseError> {
        self.failed.then(|| self.too_large())
    }

    fn strip_bom(&mut self) {
        if self.buf.starts_with(BOM) {
            self.buf.drain(..BOM.len());
        }
        self.bom_checked = true;
    }

    fn fail(&mut self) -> SseError {
        self.failed = true;
        self.buf = Vec::new();
        self.pending = Pending::default();
        self.too_large()
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge { limit: self.max }
    }
}

/// Test helper: split `input` at the positions `cuts` pick (sorted), so
/// property tests can feed a stream in every possible chunking.
#[cfg(test)]
pub(crate) fn split_at<'a>(input: &'a [u8], cuts: &[proptest::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::with_capacity(points.len() + 1);
    let mut last = 0;
    for p in points {
        chunks.push(&input[last..p]);
        last = p;
    }
    chunks.push(&input[last..]);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new(SseDecoder::DEFAULT_MAX_EVENT);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c).unwrap();
            while let Some(e) = d.next_event() {
                out.push(e);
            }
        }
        out.extend(d.finish());
        while let Some(e) = d.next_event() {
            out.push(e);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Vec<SseEvent> {
        decode_chunks(&[bytes])
    }

    #[test]
    fn fields_comments_and_dispatch() {
        let input = b": OPENROUTER PROCESSING\n\nevent: ping\ndata: {\"a\":1}\n\ndata:no-space\ndata:  two spaces\n\n";
        assert_eq!(
            decode(input),
            vec![ev(Some("ping"), "{\"a\":1}"), ev(None, "no-space\n two spaces")]
        );
    }

    #[test]
    fn all_line_terminators() {
        for sep in ["\n", "\r\n", "\r"] {
            let input = format!("event: x{sep}data: 1{sep}data: 2{sep}{sep}data: 3{sep}{sep}");
            assert_eq!(
                decode(input.as_bytes()),
                vec![ev(Some("x"), "1\n2"), ev(None, "3")],
                "{sep:?}"
            );
        }
    }

    #[test]
    fn crlf_split_across_pushes_is_one_terminator() {
        // Were the `\n` taken as a second terminator, "a" would be dispatched
        // early and "b" would make a second event.
        assert_eq!(
            decode_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r\n"]),
            vec![ev(None, "a\nb")]
        );
        // A lone `\r` at the end of a push followed by a non-LF byte.
        assert_eq!(decode_chunks(&[b"data: a\r", b"\r"]), vec![ev(None, "a")]);
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert_eq!(decode(b"event: ping\n\nid: 7\n\n: hi\n\n"), vec![]);
        // An empty data field is still data.
        assert_eq!(decode(b"data:\n\n"), vec![ev(None, "")]);
        // The event name does not leak into the next event.
        assert_eq!(decode(b"event: ping\n\ndata: x\n\n"), vec![ev(None, "x")]);
    }

    #[test]
    fn field_without_colon_and_unknown_fields() {
        assert_eq!(decode(b"data\n\n"), vec![ev(None, "")]);
        assert_eq!(decode(b"retry: 10\nfoo: bar\ndata: x\n\n"), vec![ev(None, "x")]);
    }

    #[test]
    fn final_event_without_blank_line_is_delivered() {
        assert_eq!(decode(b"data: [DONE]"), vec![ev(None, "[DONE]")]);
        assert_eq!(decode(b"data: [DONE]\n"), vec![ev(None, "[DONE]")]);
        let mut d = SseDecoder::new(100);
        d.push(b"data: a\n\n").unwrap();
        assert_eq!(
            d.finish(),
            Some(ev(None, "a")),
            "undrained events come out of finish first"
        );
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn utf8_split_inside_a_character_and_invalid_bytes() {
        let text = "data: héllo ✓\n\n".as_bytes();
        let split = text.iter().position(|&b| b == 0xE2).unwrap() + 1;
        assert_eq!(
            decode_chunks(&[&text[..split], &text[split..]]),
            vec![ev(None, "héllo ✓")]
        );
        assert_eq!(decode(b"data: a\xFFb\n\n"), vec![ev(None, "a\u{FFFD}b")]);
    }

    #[test]
    fn leading_bom_is_ignored_even_when_split() {
        assert_eq!(decode_chunks(&[b"\xEF", b"\xBB\xBFdata: x\n\n"]), vec![ev(None, "x")]);
        assert_eq!(decode(b"\xEF\xBB\xBFdata: x\n\n"), vec![ev(None, "x")]);
    }

    #[test]
    fn oversized_event_is_an_error() {
        let limit = || SseError::EventTooLarge { limit: 16 };
        // An unterminated line.
        let mut d = SseDecoder::new(16);
        d.push(b"data: 0123456789").unwrap();
        assert_eq!(d.push(b"abcdef"), Err(limit()));
        assert_eq!(d.push(b"\n\n"), Err(limit()));
        assert_eq!(d.finish(), None);
        // Many short data lines.
        let mut d = SseDecoder::new(16);
        assert_eq!(d.push(b"data: 0123456789\ndata: 0123456789\n"), Err(limit()));
        // Completed events stay available; small events never fail however many.
        let mut d = SseDecoder::new(16);
        assert_eq!(d.push(b"data: ok\n\ndata: 01234567890123456789\n"), Err(limit()));
        assert_eq!(d.next_event(), Some(ev(None, "ok")));
        let mut d = SseDecoder::new(16);
        for _ in 0..1000 {
            d.push(b"data: 0123456789\n\n").unwrap();
            assert_eq!(d.next_event(), Some(ev(None, "0123456789")));
        }
    }

    /// Found by fuzz/fuzz_targets/sse_decoder.rs: a last, unterminated line
    /// within the limit as bytes but over it decoded (each invalid UTF-8
    /// byte becomes a three-byte U+FFFD) was dropped at EOF without a word.
    #[test]
    fn oversized_last_event_at_eof_is_an_error() {
        let mut d = SseDecoder::new(16);
        d.push(b"data: ok\n\ndata: \xff\xff\xff\xff\xff\xff").unwrap();
        assert_eq!(d.error(), None);
        assert_eq!(d.finish(), Some(ev(None, "ok")));
        assert_eq!(d.next_event(), None);
        assert_eq!(d.error(), Some(SseError::EventTooLarge { limit: 16 }));
        // Within the limit decoded too: delivered.
        let mut d = SseDecoder::new(18);
        d.push(b"data: \xff\xff\xff\xff\xff\xff").unwrap();
        assert_eq!(d.finish(), Some(ev(None, &"\u{FFFD}".repeat(6))));
        assert_eq!(d.error(), None);
    }

    #[test]
    fn long_line_fed_bytewise_is_linear() {
        let mut d = SseDecoder::new(SseDecoder::DEFAULT_MAX_EVENT);
        let line = vec![b'x'; 200_000];
        d.push(b"data: ").unwrap();
        for b in &line {
            d.push(std::slice::from_ref(b)).unwrap();
        }
        d.push(b"\n\n").unwrap();
        assert_eq!(d.next_event().map(|e| e.data.len()), Some(line.len()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_split_gives_the_same_events(
            lines in proptest::collection::vec(
                prop_oneof![
                    "data: [a-z{}\":é✓ ]{0,12}",
                    "event: [a-z_]{1,8}",
                    ": [A-Z ]{0,10}",
                    Just(String::new()),
                ],
                0..24,
            ),
            seps in proptest::collection::vec(prop_oneof![Just("\n"), Just("\r\n"), Just("\r")], 24),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut input = Vec::new();
            for (line, sep) in lines.iter().zip(&seps) {
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(sep.as_bytes());
            }
            let whole = decode(&input);
            let chunks = split_at(&input, &cuts);
            prop_assert_eq!(decode_chunks(&chunks), whole.clone());
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(decode_chunks(&bytewise), whole);
        }
    }
}
