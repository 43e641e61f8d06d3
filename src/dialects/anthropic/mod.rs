//! The Anthropic Messages dialect: the gateway's own inbound format, and the
//! passthrough upstream format.
//!
//! Inbound, it extracts only what routing needs (`model`, `stream`) from the
//! raw body in one validating pass and remembers where the `model` string's
//! bytes are, so a rename splices those bytes instead of re-serialising the
//! body. Outbound to an Anthropic-type upstream the body is the client's,
//! byte for byte, and headers follow [`forward_request_headers`].

use std::ops::Range;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;

pub mod cloud;
pub mod emit;
pub mod types;
pub mod usage;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("model: Field required")]
    MissingModel,
    #[error("model: Input should be a valid string")]
    ModelNotString,
    #[error("model: String should have at least 1 character")]
    EmptyModel,
}

/// A Messages (or count_tokens) request: the raw body plus the fields routing reads.
#[derive(Debug, Clone)]
pub struct MessagesRequest {
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    /// `speed: "fast"` was asked for (fast mode).
    pub speed_fast: bool,
    /// The output cap the client set (budgets reserve against it).
    pub max_tokens: Option<u64>,
    /// Byte range of the `model` value (including its quotes) within `body`.
    model_span: Range<usize>,
    /// Byte range of the whole `"speed": …` member, with one adjoining comma.
    speed_member: Option<Range<usize>>,
    /// Byte ranges of the `tags` value and of its whole member (with one
    /// adjoining comma): the request tags of the Claude Code gateway
    /// protocol's billing group.
    tags: Option<(Range<usize>, Range<usize>)>,
    /// Just after the body's opening `{`.
    object_start: usize,
}

#[derive(Deserialize)]
struct View<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default, borrow)]
    speed: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default, borrow)]
    tags: Option<&'a RawValue>,
}

/// The fast-mode beta (`docs/protocol-notes.md` §2.1) and the models that
/// support it (capability data: Claude Opus 4.6 and 4.7, any dated
/// snapshot).
pub const FAST_MODE_BETA: &str = "fast-mode-2026-02-01";
const FAST_MODE_MODELS: &[&str] = &["claude-opus-4-6", "claude-opus-4-7"];

pub fn supports_fast_mode(model: &str) -> bool {
    FAST_MODE_MODELS
        .iter()
        .any(|m| model == *m || model.starts_with(&format!("{m}-")))
}

/// What to do with `speed` on the way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeedEdit {
    /// Leave the body's `speed` as the client sent it (or absent).
    Keep,
    /// Add `"speed":"fast"` (the client asked via a `-fast` model id).
    Insert,
    /// Remove `speed`: the target does not support fast mode.
    Remove,
}

/// The member `"key": value` around a value at `value`, plus one comma, so
/// removing the range leaves valid JSON.
fn member_span(text: &str, value: Range<usize>) -> Option<Range<usize>> {
    let before = text[..value.start].trim_end();
    let before = before.strip_suffix(':')?.trim_end();
    let key_start = before.rfind('"').and_then(|close| before[..close].rfind('"'))?;
    let head = text[..key_start].trim_end();
    if head.ends_with(',') {
        return Some(head.len() - 1..value.end);
    }
    // First member: take the comma after it instead.
    let rest = &text[value.end..];
    let after = rest.len() - rest.trim_start().len();
    match rest.trim_start().strip_prefix(',') {
        Some(_) => Some(key_start..value.end + after + 1),
        None => Some(key_start..value.end),
    }
}

impl MessagesRequest {
    /// Validate the whole body as JSON and pick out `model` and `stream`.
    /// Unknown fields are skipped (validated, not allocated).
    pub fn parse(body: Bytes) -> Result<Self, ParseError> {
        let text = std::str::from_utf8(&body).map_err(|e| ParseError::Malformed(e.to_string()))?;
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            return Err(if trimmed.is_empty() {
                ParseError::Malformed("the body is empty".into())
            } else {
                ParseError::NotAnObject
            });
        }
        let view: View = serde_json::from_str(text).map_err(|e| ParseError::Malformed(e.to_string()))?;
        let raw = view.model.ok_or(ParseError::MissingModel)?;
        let model: String = serde_json::from_str(raw.get()).map_err(|_| ParseError::ModelNotString)?;
        if model.is_empty() {
            return Err(ParseError::EmptyModel);
        }
        // `raw` borrows from `text`, so its offset in the body is pointer arithmetic.
        let offset = |r: &RawValue| r.get().as_ptr() as usize - text.as_ptr() as usize;
        let start = offset(raw);
        let model_span = start..start + raw.get().len();
        // Decoded, not compared as bytes: `"f\u0061st"` is fast mode upstream.
        let speed_fast = view
            .speed
            .is_some_and(|v| serde_json::from_str::<std::borrow::Cow<'_, str>>(v.get()).is_ok_and(|s| s == "fast"));
        let speed_member = view
            .speed
            .and_then(|v| member_span(text, offset(v)..offset(v) + v.get().len()));
        let tags = view.tags.and_then(|v| {
            let value = offset(v)..offset(v) + v.get().len();
            Some((value.clone(), member_span(text, value)?))
        });
        let object_start = text.len() - trimmed.len() + 1;
        Ok(MessagesRequest {
            tags,
            model,
            stream: view.stream.unwrap_or(false),
            speed_fast,
            max_tokens: view.max_tokens.as_ref().and_then(serde_json::Value::as_u64),
            model_span,
            speed_member,
            object_start,
            body,
        })
    }

    /// The body to send upstream: the client's bytes with at most two
    /// splices — the model string replaced (`rename`), and `speed` added or
    /// removed — and nothing else touched.
    pub fn upstream_body(&self, rename: Option<&str>, speed: SpeedEdit) -> Bytes {
        let quoted = rename
            .filter(|r| *r != self.model)
            .map(|r| serde_json::to_string(r).unwrap_or_default());
        let mut edits: Vec<(Range<usize>, &[u8])> = Vec::with_capacity(2);
        if let Some(q) = &quoted {
            edits.push((self.model_span.clone(), q.as_bytes()));
        }
        match (speed, &self.speed_member) {
            (SpeedEdit::Remove, Some(span)) => edits.push((span.clone(), b"")),
            (SpeedEdit::Insert, None) => edits.push((self.object_start..self.object_start, b"\"speed\":\"fast\",")),
            _ => {}
        }
        if edits.is_empty() {
            return self.body.clone();
        }
        edits.sort_by_key(|(r, _)| r.start);
        let mut out = BytesMut::with_capacity(self.body.len() + 32);
        let mut at = 0;
        for (range, with) in edits {
            out.extend_from_slice(&self.body[at..range.start]);
            out.extend_from_slice(with);
            at = range.end;
        }
        out.extend_from_slice(&self.body[at..]);
        out.freeze()
    }

    /// This request as a Claude upstream may see it: `None` when it is fine
    /// as it is (the common case, decided by a byte scan), else a copy
    /// without the thinking blocks Claude did not produce
    /// ([`strip_foreign_thinking`]).
    pub fn for_claude(&self) -> Option<MessagesRequest> {
        let stripped = strip_foreign_thinking(&self.body)?;
        MessagesRequest::parse(Bytes::from(stripped)).ok()
    }

    /// The request's `tags` object, when it has one.
    pub fn tags(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let (value, _) = self.tags.as_ref()?;
        serde_json::from_slice(&self.body[value.clone()]).ok()
    }

    /// The same request without its `tags` member (the bytes around it
    /// untouched); `None` when it has none.
    pub fn without_tags(&self) -> Option<MessagesRequest> {
        let (_, member) = self.tags.as_ref()?;
        let mut out = BytesMut::with_capacity(self.body.len());
        out.extend_from_slice(&self.body[..member.start]);
        out.extend_from_slice(&self.body[member.end..]);
        MessagesRequest::parse(out.freeze()).ok()
    }

    /// The body to send upstream: the client's bytes, with only the model
    /// string replaced when `rename` differs from the requested model.
    pub fn body_with_model(&self, rename: Option<&str>) -> Bytes {
        self.upstream_body(rename, SpeedEdit::Keep)
    }
}

/// The history without thinking blocks another vendor's model produced:
/// the gateway's Gemini blocks (signature [`GEMINI_THOUGHT`]-prefixed) and
/// unsigned ones (OpenAI-family reasoning). A Claude upstream rejects both
/// with "Invalid signature in thinking block" (`docs/protocol-notes.md`
/// pitfall 8), which happens when a session moves from another vendor to
/// Claude (failover, a route change). Claude's own blocks are never touched.
/// `None` (no copy, no parse) when the body holds no such block.
pub fn strip_foreign_thinking(body: &[u8]) -> Option<Vec<u8>> {
    // One SIMD pass over the body: only thinking blocks carry `"signature"`.
    // The searcher is built once, not per request (where it showed in the
    // CPU profile).
    static SIGNATURE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"signature\""));
    let foreign_signature = SIGNATURE.find_iter(body).any(|at| {
        let rest = &body[at + b"\"signature\"".len()..];
        let value = rest
            .trim_ascii_start()
            .strip_prefix(b":")
            .unwrap_or(b"")
            .trim_ascii_start();
        value.starts_with(b"\"\"") || value[1.min(value.len())..].starts_with(GEMINI_THOUGHT.as_bytes())
    });
    if !foreign_signature {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let foreign = |b: &serde_json::Value| {
        b["type"] == "thinking"
            && b["signature"]
                .as_str()
                .is_none_or(|s| s.is_empty() || s.starts_with(GEMINI_THOUGHT))
    };
    let mut changed = false;
    // `get_mut`, never `IndexMut`: indexing a value that is not an object
    // (a message that is a number, say) panics.
    for m in v.get_mut("messages")?.as_array_mut()?.iter_mut() {
        let Some(blocks) = m.get_mut("content").and_then(|c| c.as_array_mut()) else {
            continue;
        };
        let before = blocks.len();
        blocks.retain(|b| !foreign(b));
        if blocks.len() != before {
            changed = true;
            if blocks.is_empty() {
                // An assistant turn that was only thinking keeps its place.
                blocks.push(serde_json::json!({"type": "text", "text": "(no content)"}));
            }
        }
    }
    changed.then(|| serde_json::to_vec(&v).ok()).flatten()
}

/// The signature prefix of thinking blocks the gateway made from Gemini
/// thoughts (`dialects::gemini::THINKING_SIGNATURE_PREFIX`).
const GEMINI_THOUGHT: &str = crate::dialects::gemini::THINKING_SIGNATURE_PREFIX;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// True for hop-by-hop headers, including any the `Connection` header names.
pub fn is_hop_by_hop(name: &HeaderName, connection: Option<&HeaderValue>) -> bool {
    if HOP_BY_HOP.contains(&name.as_str()) {
        return true;
    }
    connection
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(name.as_str())))
}

/// Which credential the upstream request carries.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamAuth<'a> {
    /// The provider's own key, sent as `x-api-key`. The client's credential is dropped.
    ProviderKey(&'a str),
    /// Passthrough-auth: forward the client's `x-api-key` / `Authorization` unchanged.
    ClientCredential,
    /// The client's credential was a gateway key and there is no provider key:
    /// send no credential at all.
    None,
}

/// The headers an Anthropic-type upstream receives: every client header
/// except hop-by-hop ones, `host`, `content-length` (the caller frames the
/// body), `accept-encoding` (replaced by `identity` so the gateway can read
/// the stream) and, unless passthrough-auth applies, the client's credential
/// and its AWS signing headers (`x-amz-*`: a session token is a credential,
/// and the rest would clash with the gateway's own signature).
/// `anthropic-*`, `x-claude-code-*` and unknown headers go through verbatim.
pub fn forward_request_headers(
    client: &HeaderMap,
    auth: UpstreamAuth<'_>,
    extra: &[(HeaderName, HeaderValue)],
) -> Vec<(HeaderName, HeaderValue)> {
    let connection = client.get(header::CONNECTION);
    let keep_client_credential = matches!(auth, UpstreamAuth::ClientCredential);
    let mut out = Vec::with_capacity(client.len() + extra.len() + 2);
    for (name, value) in client {
        if is_hop_by_hop(name, connection)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::ACCEPT_ENCODING
            || (!keep_client_credential && (is_credential(name) || name.as_str().starts_with("x-amz-")))
        {
            continue;
        }
        out.push((name.clone(), value.clone()));
    }
    out.push((header::ACCEPT_ENCODING, HeaderValue::from_static("identity")));
    if let UpstreamAuth::ProviderKey(key) = auth {
        if let Ok(mut v) = HeaderValue::from_str(key) {
            v.set_sensitive(true);
            out.push((HeaderName::from_static("x-api-key"), v));
        }
    }
    for (n, v) in extra {
        out.retain(|(existing, _)| existing != n);
        out.push((n.clone(), v.clone()));
    }
    out
}

/// Make sure `beta` is among the `anthropic-beta` values, appending it to
/// the last such header (or adding one) when it is missing.
pub fn add_beta(headers: &mut Vec<(HeaderName, HeaderValue)>, beta: &str) {
    const NAME: &str = "anthropic-beta";
    let present = headers
        .iter()
        .filter(|(n, _)| n.as_str() == NAME)
        .filter_map(|(_, v)| v.to_str().ok())
        .any(|v| v.split(',').any(|b| b.trim() == beta));
    if present {
        return;
    }
    match headers.iter_mut().rev().find(|(n, _)| n.as_str() == NAME) {
        Some((_, v)) => {
            let joined = format!("{},{beta}", v.to_str().unwrap_or_default());
            if let Ok(new) = HeaderValue::from_str(&joined) {
                *v = new;
            }
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(beta) {
                headers.push((HeaderName::from_static(NAME), v));
            }
        }
    }
}

/// Client credential headers (a gateway key, or a token bound for Anthropic).
pub fn is_credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION || name.as_str() == "x-api-key"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_thinking_is_stripped_for_claude_and_claude_s_own_kept() {
        let plain = br#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"EqQBCkYIBxgC"},{"type":"text","text":"hi"}]}]}"#;
        assert!(strip_foreign_thinking(plain).is_none(), "Claude's own blocks: no copy");
        let schema = br#"{"model":"m","tools":[{"name":"t","input_schema":{"properties":{"signature":{"type":"string"}}}}],"messages":[]}"#;
        assert!(
            strip_foreign_thinking(schema).is_none(),
            "a property named signature is no block"
        );
        let spaced = br#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"o","signature" : ""},{"type":"text","text":"a"}]}]}"#;
        assert!(strip_foreign_thinking(spaced).is_some(), "whitespace around the colon");
        let mixed = br#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"g","signature":"gemini-thought:c2ln"},{"type":"tool_use","id":"t1","name":"Read","input":{}}]},{"role":"assistant","content":[{"type":"thinking","thinking":"o","signature":""}]},{"role":"assistant","content":[{"type":"thinking","thinking":"c","signature":"EqQB"}]}]}"#;
        let out: serde_json::Value = serde_json::from_slice(&strip_foreign_thinking(mixed).unwrap()).unwrap();
        assert_eq!(
            out["messages"][0]["content"],
            serde_json::json!([{"type":"tool_use","id":"t1","name":"Read","input":{}}])
        );
        assert_eq!(
            out["messages"][1]["content"],
            serde_json::json!([{"type":"text","text":"(no content)"}])
        );
        assert_eq!(out["messages"][2]["content"][0]["signature"], "EqQB");
        let req = MessagesRequest::parse(Bytes::from_static(mixed)).unwrap();
        assert_eq!(req.for_claude().unwrap().model, "m");
    }

    #[test]
    fn tags_come_out_with_the_bytes_around_them_untouched() {
        for (body, want) in [
            (
                r#"{"model":"m","tags":{"billing_group":"proj-x"},"messages":[]}"#,
                r#"{"model":"m","messages":[]}"#,
            ),
            (
                r#"{ "tags" : {"a":"b"} , "model":"m","messages":[]}"#,
                r#"{  "model":"m","messages":[]}"#,
            ),
            (r#"{"model":"m","tags":{}}"#, r#"{"model":"m"}"#),
        ] {
            let r = MessagesRequest::parse(Bytes::from(body)).unwrap();
            assert!(r.tags().is_some(), "{body}");
            let stripped = r.without_tags().unwrap();
            assert_eq!(&stripped.body[..], want.as_bytes());
            assert!(stripped.tags().is_none() && stripped.without_tags().is_none());
            assert_eq!(stripped.model, "m");
        }
        let r = MessagesRequest::parse(Bytes::from_static(br#"{"model":"m","tags":{"billing_group":"p"}}"#)).unwrap();
        assert_eq!(r.tags().unwrap()["billing_group"], "p");
        assert!(MessagesRequest::parse(Bytes::from_static(br#"{"model":"m"}"#))
            .unwrap()
            .tags()
            .is_none());
    }

    #[test]
    fn finds_model_and_stream_without_touching_bytes() {
        let body = Bytes::from_static(br#"{"max_tokens":5, "model" : "claude-x\u00e9" ,"stream":true,"messages":[]}"#);
        let r = MessagesRequest::parse(body.clone()).unwrap();
        assert_eq!(r.model, "claude-xé");
        assert!(r.stream);
        assert_eq!(r.body_with_model(None), body);
        assert_eq!(r.body_with_model(Some("claude-xé")), body);
        assert_eq!(
            &r.body_with_model(Some("gpt-\"4o\""))[..],
            &br#"{"max_tokens":5, "model" : "gpt-\"4o\"" ,"stream":true,"messages":[]}"#[..]
        );
    }

    #[test]
    fn speed_is_added_or_removed_by_splicing() {
        let parse = |s: &'static str| MessagesRequest::parse(Bytes::from_static(s.as_bytes())).unwrap();
        let r = parse(r#"{"model":"claude-opus-4-6","speed":"fast","max_tokens":1}"#);
        assert!(r.speed_fast);
        assert_eq!(
            &r.upstream_body(None, SpeedEdit::Remove)[..],
            br#"{"model":"claude-opus-4-6","max_tokens":1}"#
        );
        let r = parse(r#"{ "speed" : "fast" , "model":"m"}"#);
        assert_eq!(
            &r.upstream_body(Some("x"), SpeedEdit::Remove)[..],
            br#"{  "model":"x"}"#
        );
        assert!(
            parse(r#"{"model":"m","speed":"f\u0061st"}"#).speed_fast,
            "escapes are decoded"
        );
        assert!(!parse(r#"{"model":"m","speed":"standard"}"#).speed_fast);
        let r = parse(r#"{"model":"claude-opus-4-6-fast","max_tokens":1}"#);
        let out = r.upstream_body(Some("claude-opus-4-6"), SpeedEdit::Insert);
        assert_eq!(
            &out[..],
            br#"{"speed":"fast","model":"claude-opus-4-6","max_tokens":1}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["speed"], "fast");
        assert!(supports_fast_mode("claude-opus-4-6") && supports_fast_mode("claude-opus-4-7-20260301"));
        assert!(!supports_fast_mode("claude-opus-4-8") && !supports_fast_mode("claude-opus-4-60"));
    }

    #[test]
    fn rejects_bad_bodies_with_reasons() {
        let p = |s: &'static str| MessagesRequest::parse(Bytes::from_static(s.as_bytes())).unwrap_err();
        assert_eq!(p(r#"{"messages":[]}"#), ParseError::MissingModel);
        assert_eq!(p(r#"{"model":5}"#), ParseError::ModelNotString);
        assert_eq!(p(r#"{"model":""}"#), ParseError::EmptyModel);
        assert_eq!(p("[1]"), ParseError::NotAnObject);
        assert!(matches!(p(r#"{"model":"a","#), ParseError::Malformed(_)));
        assert!(matches!(p(r#"{"model":"a","model":"b"}"#), ParseError::Malformed(_)));
        assert!(matches!(p(r#"{"model":"a","stream":"yes"}"#), ParseError::Malformed(_)));
        assert!(matches!(p(""), ParseError::Malformed(_)));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwards_all_but_hop_by_hop_host_encoding_and_credentials() {
        let client = headers(&[
            ("host", "gw"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("content-length", "10"),
            ("accept-encoding", "gzip, br"),
            ("x-api-key", "mg-gateway-key"),
            ("authorization", "Bearer mg-gateway-key"),
            ("anthropic-beta", "a-1,b-2"),
            ("anthropic-version", "2023-06-01"),
            ("x-claude-code-session-id", "s"),
            ("x-unknown", "u"),
        ]);
        let out = forward_request_headers(&client, UpstreamAuth::ProviderKey("sk-provider"), &[]);
        let names: Vec<_> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "anthropic-beta",
                "anthropic-version",
                "x-claude-code-session-id",
                "x-unknown",
                "accept-encoding",
                "x-api-key"
            ]
        );
        assert_eq!(out[4].1, "identity");
        assert_eq!(out[5].1, "sk-provider");

        let pass = forward_request_headers(&client, UpstreamAuth::ClientCredential, &[]);
        assert!(pass
            .iter()
            .any(|(n, v)| n == "authorization" && v == "Bearer mg-gateway-key"));
        let none = forward_request_headers(&client, UpstreamAuth::None, &[]);
        assert!(!none.iter().any(|(n, _)| is_credential(n)));
    }
}
