//! The SSE decoder every translated stream reads through
//! (`dialects::sse::SseDecoder`), against a plain reference implementation
//! of the same rules, for a body fed in fuzzer-chosen chunks (see
//! `modelgate_fuzz::Plan`; flag bits 3-5 pick the event size limit); and
//! the same body re-framed for a Bedrock-format client
//! (`bedrock::stream::SseToEventStream`): every frame reads back, one
//! `chunk` per event that is not a ping, carrying the event's data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::dialects::sse::{SseDecoder, SseEvent};
use modelgate_fuzz::Plan;

const LIMITS: [usize; 6] = [SseDecoder::DEFAULT_MAX_EVENT, 65536, 1024, 64, 8, 0];

/// Events of `chunks`, or None if the decoder reported an oversized event.
fn decode(chunks: &[&[u8]], max: usize) -> Option<Vec<SseEvent>> {
    let mut d = SseDecoder::new(max);
    let mut events = Vec::new();
    let mut failed = false;
    for c in chunks {
        if d.push(c).is_err() {
            failed = true;
            // It stays failed: no resynchronising.
            assert!(d.push(b"data: x\n\n").is_err());
        }
        while let Some(e) = d.next_event() {
            events.push(e);
        }
        if failed {
            break;
        }
    }
    if let Some(e) = d.finish() {
        events.push(e);
    }
    while let Some(e) = d.next_event() {
        events.push(e);
    }
    // An oversized last event is reported, not dropped silently.
    failed |= d.error().is_some();
    for e in &events {
        assert!(!e.data.contains('\r'), "{e:?}");
        if let Some(name) = &e.event {
            assert!(!name.is_empty() && !name.contains(['\r', '\n']), "{e:?}");
        }
        assert!(
            e.data.len() + e.event.as_ref().map_or(0, String::len) <= max,
            "{e:?} over {max}"
        );
    }
    (!failed).then_some(events)
}

/// The WHATWG event-stream rules as the decoder documents them, on the
/// whole body at once: a leading BOM dropped, lines ended by CRLF, LF or
/// CR, `:` comments, `data` joined with LF, `event` naming the next
/// dispatch, a blank line dispatching when a `data` line was seen, and a
/// last event without its blank line still delivered at EOF.
fn reference(body: &[u8]) -> Vec<SseEvent> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\n' => {
                lines.push(&body[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&body[start..i]);
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < body.len() {
        lines.push(&body[start..]);
    }
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    let mut name = String::new();
    let dispatch = |data: &mut Option<String>, name: &mut String, events: &mut Vec<SseEvent>| {
        if let Some(d) = data.take() {
            events.push(SseEvent {
                event: (!name.is_empty()).then(|| name.clone()),
                data: d,
            });
        }
        name.clear();
    };
    for line in lines {
        if line.is_empty() {
            dispatch(&mut data, &mut name, &mut events);
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (
                &line[..at],
                line[at + 1..].strip_prefix(b" ").unwrap_or(&line[at + 1..]),
            ),
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => data = Some(value.into_owned()),
            },
            b"event" => name = value.into_owned(),
            _ => {}
        }
    }
    dispatch(&mut data, &mut name, &mut events);
    events
}

/// The body re-framed as event-stream frames, chunk by chunk, and read
/// back: the `chunk` frames' payloads, decoded.
fn reframed(chunks: &[&[u8]]) -> Vec<String> {
    use base64::Engine;
    use modelgate::dialects::bedrock::stream::{FrameReader, SseToEventStream};
    let mut writer = SseToEventStream::default();
    let mut frames = Vec::new();
    for c in chunks {
        writer.push(c, &mut frames);
    }
    writer.finish(&mut frames);
    let mut reader = FrameReader::default();
    reader.push(&frames);
    let mut out = Vec::new();
    while let Some(message) = reader.next_message().expect("a frame the writer made reads back") {
        let payload: serde_json::Value = serde_json::from_slice(message.payload()).expect("a JSON payload");
        if let Some(b64) = payload["bytes"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
            out.push(String::from_utf8(bytes).expect("UTF-8"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let plan = Plan::parse(data);
    if let Some(events) = decode(&[plan.body], SseDecoder::DEFAULT_MAX_EVENT) {
        let expected: Vec<String> = events
            .iter()
            .filter(|e| !matches!(e.event.as_deref(), Some("ping") | Some("error")) && !e.data.is_empty())
            .map(|e| e.data.clone())
            .collect();
        assert_eq!(reframed(&plan.chunks()), expected, "re-framing lost or changed events");
    }
    let max = LIMITS[usize::from(data.first().copied().unwrap_or(0) >> 3) % LIMITS.len()];
    let split = decode(&plan.chunks(), max);
    let whole = decode(&[plan.body], max);
    // Splitting can only add checks of an unfinished line against the limit.
    if let Some(split) = split {
        let whole = whole.expect("the whole body failed where its chunks did not");
        assert_eq!(split, whole, "the events depend on how the body was split");
        assert_eq!(whole, reference(plan.body), "the decoder differs from the reference");
    }
});
