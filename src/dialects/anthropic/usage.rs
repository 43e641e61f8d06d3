//! Token usage read from an Anthropic-format response while it is relayed.
//!
//! Passthrough responses go to the client byte for byte; this tap looks at
//! the same chunks on the side. For an event stream it decodes the SSE
//! framing and parses only `message_start` (input and cache tokens) and
//! `message_delta` (cumulative output, and the final input/cache figures
//! where the upstream reports them there); every other event is skipped
//! unparsed. For a JSON body it keeps references to the chunks (no copy) up
//! to a cap and reads `usage` at the end. A stream cut off before its
//! `message_delta` still yields the input side and a lower bound on output
//! (one token per content delta).

use bytes::Bytes;
use serde::Deserialize;

use crate::dialects::sse::SseDecoder;
use crate::dialects::Usage;

/// Largest single event the tap decodes (a `message_start` is small; a big
/// tool-input delta is skipped without harm if it exceeds this).
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Largest JSON body the tap holds on to for its `usage`.
const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;

pub enum UsageTap {
    Sse {
        decoder: SseDecoder,
        usage: Option<Usage>,
        deltas: u64,
        finished: bool,
    },
    Json {
        chunks: Vec<Bytes>,
        len: usize,
    },
    Off,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    fn apply(&self, u: &mut Usage) {
        let set = |dst: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut u.input_tokens, self.input_tokens);
        set(&mut u.output_tokens, self.output_tokens);
        set(&mut u.cache_read_input_tokens, self.cache_read_input_tokens);
        set(&mut u.cache_creation_input_tokens, self.cache_creation_input_tokens);
    }
}

#[derive(Deserialize)]
struct MessageStart {
    message: WithUsage,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

impl UsageTap {
    /// A tap for a successful response of this content type; error
    /// responses carry no usage.
    pub fn new(status: u16, content_type: Option<&[u8]>) -> UsageTap {
        if !(200..300).contains(&status) {
            return UsageTap::Off;
        }
        match content_type {
            Some(ct) if ct.starts_with(b"text/event-stream") => UsageTap::Sse {
                decoder: SseDecoder::new(MAX_EVENT_BYTES),
                usage: None,
                deltas: 0,
                finished: false,
            },
            Some(ct) if ct.starts_with(b"application/json") => UsageTap::Json {
                chunks: Vec::new(),
                len: 0,
            },
            _ => UsageTap::Off,
        }
    }

    pub fn observe(&mut self, chunk: &Bytes) {
        match self {
            UsageTap::Sse {
                decoder,
                usage,
                deltas,
                finished,
            } => {
                if decoder.push(chunk).is_err() {
                    // An oversized event: start afresh on the next one.
                    *decoder = SseDecoder::new(MAX_EVENT_BYTES);
                    return;
                }
                while let Some(ev) = decoder.next_event() {
                    match ev.event.as_deref() {
                        Some("message_start") => {
                            if let Ok(m) = serde_json::from_str::<MessageStart>(&ev.data) {
                                let u = usage.get_or_insert_with(Usage::default);
                                if let Some(w) = m.message.usage {
                                    w.apply(u);
                                }
                            }
                        }
                        Some("message_delta") => {
                            if let Ok(m) = serde_json::from_str::<WithUsage>(&ev.data) {
                                if let Some(w) = m.usage {
                                    w.apply(usage.get_or_insert_with(Usage::default));
                                    *finished = true;
                                }
                            }
                        }
                        Some("content_block_delta") => *deltas += 1,
                        _ => {}
                    }
                }
            }
            UsageTap::Json { chunks, len } => {
                if *len + chunk.len() <= MAX_JSON_BYTES {
                    *len += chunk.len();
                    chunks.push(chunk.clone());
                } else {
                    *self = UsageTap::Off;
                }
            }
            UsageTap::Off => {}
        }
    }

    /// The stream has reported its final usage (`message_delta`): what
    /// follows (`message_stop`) changes nothing [`UsageTap::finish`] returns.
    pub fn has_final_usage(&self) -> bool {
        matches!(self, UsageTap::Sse { finished: true, .. })
    }

    /// The usage the response reported, if it reported any.
    pub fn finish(self) -> Option<Usage> {
        match self {
            UsageTap::Sse {
                usage,
                deltas,
                finished,
                ..
            } => usage.map(|mut u| {
                if !finished {
                    u.output_tokens = u.output_tokens.max(deltas);
                }
                u
            }),
            UsageTap::Json { chunks, len } => {
                let body: std::borrow::Cow<'_, [u8]> = match chunks.as_slice() {
                    [one] => one.as_ref().into(),
                    many => {
                        let mut all = Vec::with_capacity(len);
                        for c in many {
                            all.extend_from_slice(c);
                        }
                        all.into()
                    }
                };
                let parsed: WithUsage = serde_json::from_slice(&body).ok()?;
                let mut u = Usage::default();
                parsed.usage?.apply(&mut u);
                Some(u)
            }
            UsageTap::Off => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn tap(ct: &str, parts: &[&str]) -> Option<Usage> {
        let mut t = UsageTap::new(200, Some(ct.as_bytes()));
        for p in parts {
            t.observe(&Bytes::copy_from_slice(p.as_bytes()));
        }
        t.finish()
    }

    #[test]
    fn stream_usage_survives_any_split() {
        let want = Usage {
            input_tokens: 12,
            output_tokens: 42,
            cache_read_input_tokens: 2000,
            cache_creation_input_tokens: 100,
        };
        assert_eq!(tap("text/event-stream", &[STREAM]), Some(want));
        for at in [1, 7, 50, 133, 200, STREAM.len() - 3] {
            let (a, b) = STREAM.split_at(at);
            assert_eq!(
                tap("text/event-stream; charset=utf-8", &[a, b]),
                Some(want),
                "split at {at}"
            );
        }
    }

    #[test]
    fn final_usage_is_known_at_message_delta() {
        let at = STREAM.find("event: message_stop").unwrap();
        let mut t = UsageTap::new(200, Some(b"text/event-stream"));
        t.observe(&Bytes::copy_from_slice(&STREAM.as_bytes()[..at - 40]));
        assert!(!t.has_final_usage());
        t.observe(&Bytes::copy_from_slice(&STREAM.as_bytes()[at - 40..at]));
        assert!(t.has_final_usage());
        assert_eq!(t.finish().map(|u| u.output_tokens), Some(42));
    }

    #[test]
    fn a_cut_stream_counts_input_and_a_lower_bound_of_output() {
        let cut = &STREAM[..STREAM.find("event: message_delta").unwrap()];
        let u = tap("text/event-stream", &[cut]).unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_input_tokens, u.output_tokens),
            (12, 2000, 2)
        );
    }

    #[test]
    fn json_usage_and_non_success() {
        let body = r#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"\"usage\": fake"}],"usage":{"input_tokens":5,"output_tokens":7,"cache_read_input_tokens":3}}"#;
        let (a, b) = body.split_at(40);
        let u = tap("application/json", &[a, b]).unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.cache_read_input_tokens), (5, 7, 3));
        let mut t = UsageTap::new(429, Some(b"application/json"));
        t.observe(&Bytes::from_static(br#"{"usage":{"input_tokens":1}}"#));
        assert_eq!(t.finish(), None);
        assert_eq!(tap("text/plain", &["x"]), None);
    }
}
