//! AWS event-stream frames (`application/vnd.amazon.eventstream`), written
//! with valid checksums, and the record layout the Bedrock stream targets
//! read their body in. Used by the targets and by `fuzz/capture` (which
//! includes this file by path), so it needs only `base64` and `crc32fast`.

use base64::Engine;

/// A header value. Only the types the targets need to vary.
pub enum Header<'a> {
    String(&'a [u8]),
    Bytes(&'a [u8]),
    Bool(bool),
    Int32(i32),
}

/// One frame: prelude (total and header lengths, CRC), headers,
/// payload, message CRC.
pub fn frame(headers: &[(&[u8], Header<'_>)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        let name = &name[..name.len().min(255)];
        h.push(name.len() as u8);
        h.extend_from_slice(name);
        match value {
            Header::Bool(b) => h.push(if *b { 0 } else { 1 }),
            Header::Int32(n) => {
                h.push(4);
                h.extend_from_slice(&n.to_be_bytes());
            }
            Header::String(s) | Header::Bytes(s) => {
                h.push(if matches!(value, Header::String(_)) { 7 } else { 6 });
                let s = &s[..s.len().min(u16::MAX as usize)];
                h.extend_from_slice(&(s.len() as u16).to_be_bytes());
                h.extend_from_slice(s);
            }
        }
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn event(event_type: &[u8], payload: &[u8]) -> Vec<u8> {
    frame(
        &[
            (b":event-type", Header::String(event_type)),
            (b":content-type", Header::String(b"application/json")),
            (b":message-type", Header::String(b"event")),
        ],
        payload,
    )
}

fn exception(body: &[u8]) -> Vec<u8> {
    let (kind, payload) = split_nul(body);
    frame(
        &[
            (b":exception-type", Header::String(kind)),
            (b":content-type", Header::String(b"application/json")),
            (b":message-type", Header::String(b"exception")),
        ],
        payload,
    )
}

/// `name=value` lines (a name starting with `#` gives a bytes header,
/// `?` a bool, `%` an int32), a blank line, then the payload.
fn generic(body: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    let mut rest = body;
    loop {
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        if line.is_empty() {
            break;
        }
        let (name, value) = match line.iter().position(|&b| b == b'=') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &line[line.len()..]),
        };
        let header = match name.first() {
            Some(b'#') => (&name[1..], Header::Bytes(value)),
            Some(b'?') => (&name[1..], Header::Bool(value == b"true")),
            Some(b'%') => (
                &name[1..],
                Header::Int32(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                ),
            ),
            _ => (name, Header::String(value)),
        };
        headers.push(header);
    }
    frame(&headers, rest)
}

fn split_nul(body: &[u8]) -> (&[u8], &[u8]) {
    match body.iter().position(|&b| b == 0) {
        Some(at) => (&body[..at], &body[at + 1..]),
        None => (body, &[]),
    }
}

/// Which Bedrock stream the records describe.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// InvokeModelWithResponseStream: `chunk` events carrying base64.
    Invoke,
    /// ConverseStream: one event type per frame, JSON payloads.
    Converse,
}

/// The wire bytes for a body of records `[tag][len: u16 LE][len bytes]`
/// (a short last record takes what is left). Tags, mod 5:
/// - 0: an event. Invoke: the bytes are one Anthropic event, sent as
///   `{"bytes":"<base64>"}` in a `chunk` frame. Converse: `TYPE\0JSON`.
/// - 1: an exception frame, `TYPE\0PAYLOAD`.
/// - 2: any frame (see `generic`).
/// - 3: raw bytes, no framing (corrupt frames, cut frames).
/// - 4: Invoke: a `chunk` frame with this payload as it is. Converse: as 0.
pub fn wire(api: Api, mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = body.split_first() {
        let len = match rest {
            [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => 0,
        };
        let rest = rest.get(2..).unwrap_or(&[]);
        let (record, tail) = rest.split_at(len.min(rest.len()));
        body = tail;
        match (tag % 5, api) {
            (0, Api::Invoke) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(record);
                out.extend(event(b"chunk", format!(r#"{{"bytes":"{b64}"}}"#).as_bytes()));
            }
            (4, Api::Invoke) => out.extend(event(b"chunk", record)),
            (0 | 4, Api::Converse) => {
                let (kind, payload) = split_nul(record);
                out.extend(event(kind, payload));
            }
            (1, _) => out.extend(exception(record)),
            (2, _) => out.extend(generic(record)),
            _ => out.extend_from_slice(record),
        }
    }
    out
}

/// One record of the layout [`wire`] reads.
pub fn record(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let len = bytes.len().min(u16::MAX as usize);
    let mut out = vec![tag];
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&bytes[..len]);
    out
}

/// The frames in `wire`, as (string headers, payload), for turning
/// captured streams into seeds; `None` past the first malformed frame.
#[allow(clippy::type_complexity)]
pub fn read(mut wire: &[u8]) -> Vec<Option<(Vec<(String, String)>, Vec<u8>)>> {
    let mut out = Vec::new();
    while wire.len() >= 16 {
        let total = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
        let hlen = u32::from_be_bytes([wire[4], wire[5], wire[6], wire[7]]) as usize;
        if total < 16 + hlen || total > wire.len() {
            out.push(None);
            return out;
        }
        let mut headers = Vec::new();
        let mut h = &wire[12..12 + hlen];
        while let Some((&n, rest)) = h.split_first() {
            let n = usize::from(n);
            if rest.len() < n + 3 {
                break;
            }
            let name = String::from_utf8_lossy(&rest[..n]).into_owned();
            let ty = rest[n];
            if ty != 6 && ty != 7 {
                break;
            }
            let vlen = usize::from(u16::from_be_bytes([rest[n + 1], rest[n + 2]]));
            let value = rest.get(n + 3..n + 3 + vlen).unwrap_or(&[]);
            if ty == 7 {
                headers.push((name, String::from_utf8_lossy(value).into_owned()));
            }
            h = rest.get(n + 3 + vlen..).unwrap_or(&[]);
        }
        out.push(Some((headers, wire[12 + hlen..total - 4].to_vec())));
        wire = &wire[total..];
    }
    out
}
