//! Hostile clients, through the real binary: bodies built to break the JSON
//! pass or the translators, framing the HTTP layer must refuse, and clients
//! that trickle or stall. Every request must end in an Anthropic-shaped 4xx
//! (or, for broken framing, a clean 4xx or a closed connection) without
//! reaching an upstream it should not reach, and afterwards the gateway must
//! still serve, report `/health` 200, have logged no panic and show its
//! in-flight gauges back at their idle value.
//!
//! Each test runs its own gateway with three routes, each to its own mock:
//! `claude-x` → an Anthropic-type provider (passthrough), `claude-oai-x` →
//! OpenAI (translated), `claude-gem-x` → Gemini (translated). The Anthropic
//! mock judges bodies roughly as the real API does (400
//! `invalid_request_error` for a malformed request), so a body the gateway
//! may pass through untouched still ends in the upstream's 400, relayed.
//!
//! The rules the cases hold the gateway to:
//! - a body that is not UTF-8, not JSON, not an object, nested without end,
//!   with a duplicate `model`/`stream`/`max_tokens`, a non-boolean `stream`,
//!   or a `model` over 256 bytes or holding control characters is refused
//!   by the gateway itself (400 `invalid_request_error`, nothing upstream,
//!   the oversized id neither logged nor kept in `/admin/errors`);
//! - well-formed JSON that is not a valid request (`messages` of the wrong
//!   shape, 10,000-deep nesting, absurd `max_tokens`) may pass through an
//!   Anthropic-type route (the upstream judges it, its 400 is relayed), but a
//!   translating route (and a local token count) must refuse it itself;
//! - NUL and CR/LF escaped inside message text are legitimate and served;
//! - bad chunked framing gets a 4xx or a bare close, and the connection is
//!   closed either way (a connection whose framing is lost is not reused);
//! - `client_timeouts` cut off a trickled head, a stalled body and an answer
//!   the client never reads (a bare close or 408).
//!
//! `/metrics` scrapes count themselves in `modelgate_requests_in_flight`, so
//! the gauges are compared with an idle scrape taken before any traffic.
//!
//! Failures are collected per case and reported together, so one run shows
//! every case that fails.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// The longest `model` the gateway accepts, in bytes.
const MODEL_CAP: usize = 256;
/// `client_timeouts` of the slow-client test (head, body and write).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How late after its timeout the gateway may close a slow connection.
const SLACK: Duration = Duration::from_secs(4);
/// Per-request bound for the JSON battery (none should take near this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a framing attack may wait for its answer or the close.
const FRAMING_WAIT: Duration = Duration::from_secs(5);
/// How long the in-flight gauges may take to come back to idle.
const SETTLE: Duration = Duration::from_secs(10);
/// An error body never needs to be this large (it must not echo the input).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Filler of the refused (oversized) model ids; a run of it in the logs or
/// in `/admin/errors` means one was kept.
const FILLER: char = 'Z';
/// Filler of the longest model id that is accepted (and so may be logged).
const ACCEPTED_FILLER: char = 'Y';
/// Marker of a log line forged through a CR/LF in the model id.
const INJECTED: &str = "INJECTED-LOG-LINE";
/// Content with NUL and CR/LF that legitimate requests carry (as JSON escapes).
const CONTROL_TEXT: &str = "a\u{0}b\r\nc";

// ---------------------------------------------------------------------------
// Gateway, routes and mocks
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Provider {
    Anthropic,
    OpenAi,
    Gemini,
}

#[derive(Clone, Copy, Debug)]
struct Route {
    provider: Provider,
    model: &'static str,
}

impl Route {
    fn translated(self) -> bool {
        self.provider != Provider::Anthropic
    }
}

const ROUTES: [Route; 3] = [
    Route {
        provider: Provider::Anthropic,
        model: "claude-x",
    },
    Route {
        provider: Provider::OpenAi,
        model: "claude-oai-x",
    },
    Route {
        provider: Provider::Gemini,
        model: "claude-gem-x",
    },
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoint {
    Messages,
    CountTokens,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
        }
    }
}

struct Upstreams {
    anthropic: MockUpstream,
    openai: MockUpstream,
    gemini: MockUpstream,
}

impl Upstreams {
    async fn start() -> Upstreams {
        let ups = Upstreams {
            anthropic: MockUpstream::start().await,
            openai: MockUpstream::start().await,
            gemini: MockUpstream::start().await,
        };
        ups.anthropic.set_default(Reply::script(anthropic_like));
        ups.openai.set_default(Reply::json(
            200,
            openai_completion_json(json!({"role": "assistant", "content": "ok"}), "stop"),
        ));
        ups.gemini.set_default(Reply::script(gemini_like));
        ups
    }

    /// Requests received so far, per provider.
    fn counts(&self) -> [usize; 3] {
        [
            self.anthropic.request_count(),
            self.openai.request_count(),
            self.gemini.request_count(),
        ]
    }

    fn mock(&self, p: Provider) -> &MockUpstream {
        match p {
            Provider::Anthropic => &self.anthropic,
            Provider::OpenAi => &self.openai,
            Provider::Gemini => &self.gemini,
        }
    }

    fn yaml(&self, extra: &str) -> String {
        format!(
            concat!(
                "listen: \"{{listen}}\"\n",
                "timeout: 5s\n",
                "connect_timeout: 2s\n",
                "max_retries: 0\n",
                "default_provider: anthropic\n",
                "providers:\n",
                "  anthropic: {{type: anthropic, api_base: \"{}\", api_key: sk-ant-hostile-test}}\n",
                "  openai: {{type: openai, api_base: \"{}/v1\", api_key: sk-oai-hostile-test}}\n",
                "  gemini: {{type: gemini, api_base: \"{}/v1beta\", api_key: gemini-hostile-test}}\n",
                "routes:\n",
                "  - {{match: 'claude-oai-*', provider: openai}}\n",
                "  - {{match: 'claude-gem-*', provider: gemini}}\n",
                "{}"
            ),
            self.anthropic.base_url(),
            self.openai.base_url(),
            self.gemini.base_url(),
            extra
        )
    }
}

/// An Anthropic API that refuses malformed requests the way the real one
/// does: 400 `invalid_request_error`, message prefixed `mock anthropic:`.
fn anthropic_like(rec: &Recorded) -> Reply {
    match judge_anthropic_body(&rec.body) {
        Ok(_) if rec.path().ends_with("/count_tokens") => Reply::json(200, r#"{"input_tokens":3}"#),
        Ok(model) => Reply::message(&model, "ok"),
        Err(why) => Reply::error(400, "invalid_request_error", &format!("mock anthropic: {why}")),
    }
}

fn judge_anthropic_body(body: &[u8]) -> Result<String, String> {
    // serde_json's own recursion limit refuses deep nesting, as a real API would.
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("model: Field required")?;
    if let Some(n) = v.get("max_tokens") {
        n.as_u64()
            .filter(|n| (1..=1 << 20).contains(n))
            .ok_or("max_tokens: out of range")?;
    }
    if let Some(s) = v.get("stream") {
        s.as_bool().ok_or("stream: Input should be a valid boolean")?;
    }
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: Input should be a valid list")?;
    for m in messages {
        let role = m.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "assistant")) {
            return Err("messages: role".into());
        }
        let content_ok = match m.get("content") {
            Some(Value::String(_)) => true,
            Some(Value::Array(blocks)) => blocks.iter().all(|b| b.get("type").and_then(Value::as_str).is_some()),
            _ => false,
        };
        if !content_ok {
            return Err("messages: content".into());
        }
    }
    Ok(model.to_string())
}

/// A Gemini API that answers every `generateContent` and `countTokens`.
fn gemini_like(rec: &Recorded) -> Reply {
    if rec.uri.contains(":countTokens") {
        return Reply::json(200, r#"{"totalTokens":3}"#);
    }
    Reply::json(
        200,
        json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4},
            "modelVersion": "gemini-2.5-pro"
        })
        .to_string(),
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build reqwest client")
}

// ---------------------------------------------------------------------------
// The JSON battery
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    /// The gateway answers 400 `invalid_request_error` itself; no upstream sees it.
    Refused,
    /// Well-formed JSON that is not a valid request. A translating route must
    /// refuse it itself (400, nothing upstream); the Anthropic passthrough
    /// route may instead forward it, and then relays the upstream's 400.
    RefusedOrPassedThrough,
    /// Well-formed JSON with a field no dialect knows, however deep: the
    /// Anthropic route forwards it (and relays the upstream's verdict); a
    /// translating route drops the field, as it does every unknown field, or
    /// refuses the body. The gateway's parse skips it without recursing.
    UnknownFieldDropped,
    /// A legitimate request: answered 200 from the route's upstream.
    Served,
}

type BodyFn = Box<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

struct Case {
    name: String,
    want: Want,
    /// The body, given the route's model id.
    body: BodyFn,
    /// For `Served`: a string the upstream request must carry intact.
    needle: Option<&'static str>,
}

fn case(name: &str, want: Want, body: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Case {
    Case {
        name: name.to_string(),
        want,
        body: Box::new(body),
        needle: None,
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// `{"model":<model>,"max_tokens":1,<rest>}`
fn req(model: &str, rest: &str) -> Vec<u8> {
    format!(r#"{{"model":{},"max_tokens":1,{rest}}}"#, q(model)).into_bytes()
}

/// `{"model":"<raw model bytes>","max_tokens":1,"messages":[]}`, the model not escaped.
fn raw_model(model: &str, tail: &[u8]) -> Vec<u8> {
    let mut b = format!(r#"{{"model":"{model}"#).into_bytes();
    b.extend_from_slice(tail);
    b.extend_from_slice(br#"","max_tokens":1,"messages":[]}"#);
    b
}

/// `<model>-` then `filler` up to exactly `len` bytes.
fn long_model(model: &str, len: usize, filler: char) -> String {
    let mut m = format!("{model}-");
    let fill = len.saturating_sub(m.len());
    m.extend(std::iter::repeat_n(filler, fill));
    m
}

fn nested(open: &str, close: &str, depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

fn battery() -> Vec<Case> {
    use Want::*;
    let mut v = Vec::new();

    // Bodies that are not objects.
    for body in ["[0]", "\"x\"", "1", "null"] {
        v.push(case(&format!("body {body}"), Refused, move |_| {
            body.as_bytes().to_vec()
        }));
    }

    // `messages` entries of every wrong type.
    for messages in [
        "[0]",
        "[null]",
        "[\"s\"]",
        "[[1]]",
        r#"[{"role":1,"content":{}}]"#,
        r#"{"role":"user","content":"hi"}"#,
        "\"s\"",
        r#"[{"role":"user","content":[0,null,"s",[1]]}]"#,
    ] {
        v.push(case(
            &format!("messages {messages}"),
            RefusedOrPassedThrough,
            move |m| req(m, &format!(r#""messages":{messages}"#)),
        ));
    }
    v.push(case("messages [0], streamed", RefusedOrPassedThrough, |m| {
        req(m, r#""stream":true,"messages":[0]"#)
    }));

    // The crafted body that panicked the request task, and its neighbours
    // (a `signature` makes the gateway look for foreign thinking blocks).
    v.push(case(
        "crafted messages [0] with z.signature",
        RefusedOrPassedThrough,
        |m| req(m, r#""messages":[0],"z":{"signature":""}"#),
    ));
    v.push(case(
        "crafted content [0, thinking] with signature",
        RefusedOrPassedThrough,
        |m| {
            req(
                m,
                r#""messages":[{"role":"assistant","content":[0,{"type":"thinking","thinking":"t","signature":""}]}]"#,
            )
        },
    ));
    v.push(case(
        "crafted messages object with signature",
        RefusedOrPassedThrough,
        |m| req(m, r#""messages":{"signature":""}"#),
    ));
    v.push(case(
        "crafted content object with signature",
        RefusedOrPassedThrough,
        |m| {
            req(
                m,
                r#""messages":[{"role":"assistant","content":{"signature":"","thinking":""}}]"#,
            )
        },
    ));
    v.push(case(
        "crafted messages [null, \"thinking\"] streamed",
        RefusedOrPassedThrough,
        |m| req(m, r#""stream":true,"messages":[null,"thinking"],"z":{"signature":"x"}"#),
    ));

    // Deep nesting: 10,000 levels.
    v.push(case("10,000 nested [ in a field", UnknownFieldDropped, |m| {
        req(m, &format!(r#""messages":[],"x":{}"#, nested("[", "]", 10_000, "")))
    }));
    v.push(case(
        "10,000 nested [ as message content",
        RefusedOrPassedThrough,
        |m| {
            req(
                m,
                &format!(
                    r#""messages":[{{"role":"user","content":{}}}]"#,
                    nested("[", "]", 10_000, "")
                ),
            )
        },
    ));
    v.push(case("10,000 nested objects in a field", UnknownFieldDropped, |m| {
        req(
            m,
            &format!(r#""messages":[],"x":{}"#, nested(r#"{"a":"#, "}", 10_000, "1")),
        )
    }));
    v.push(case("10,000 unclosed [ in a field", Refused, |m| {
        req(m, &format!(r#""messages":[],"x":{}"#, "[".repeat(10_000)))
    }));

    // Invalid UTF-8 and invalid Unicode.
    v.push(case("invalid UTF-8 in model", Refused, |m| raw_model(m, b"\xff\xfe")));
    v.push(case("invalid UTF-8 in content", Refused, |m| {
        let mut b = req(m, r#""messages":[{"role":"user","content":"hi"}]"#);
        let at = b.windows(2).position(|w| w == b"hi").expect("hi");
        b.splice(at..at + 2, b"\xc3\x28".iter().copied());
        b
    }));
    v.push(case("body ends inside a UTF-8 sequence", Refused, |m| {
        let mut b = req(m, r#""messages":[]"#);
        b.extend_from_slice(b"\xe2\x82");
        b
    }));
    v.push(case("lone surrogate in model", Refused, |m| {
        format!(r#"{{"model":"{m}\ud800","max_tokens":1,"messages":[]}}"#).into_bytes()
    }));
    v.push(case("lone surrogate in content", RefusedOrPassedThrough, |m| {
        req(m, r#""messages":[{"role":"user","content":"hi \udc00"}]"#)
    }));

    // Model length: the cap is 256 bytes.
    v.push(case("10 MB model", Refused, |m| {
        req(&long_model(m, 10 * 1024 * 1024, FILLER), r#""messages":[]"#)
    }));
    v.push(case("257-byte model", Refused, |m| {
        req(
            &long_model(m, MODEL_CAP + 1, FILLER),
            r#""messages":[{"role":"user","content":"hi"}]"#,
        )
    }));
    v.push(case("256-byte model", Served, |m| {
        req(
            &long_model(m, MODEL_CAP, ACCEPTED_FILLER),
            r#""messages":[{"role":"user","content":"hi"}]"#,
        )
    }));

    // NUL and CR/LF inside strings.
    v.push(case("raw NUL byte in model", Refused, |m| raw_model(m, b"\0")));
    v.push(case("raw CR/LF in content", Refused, |m| {
        req(m, "\"messages\":[{\"role\":\"user\",\"content\":\"a\r\nb\"}]")
    }));
    v.push(case("escaped NUL in model", Refused, |m| {
        req(&format!("{m}\u{0}"), r#""messages":[{"role":"user","content":"hi"}]"#)
    }));
    v.push(case("escaped CR/LF in model", Refused, |m| {
        req(
            &format!("{m}\r\n{INJECTED} level=ERROR\r\n"),
            r#""messages":[{"role":"user","content":"hi"}]"#,
        )
    }));
    let mut c = case("escaped NUL and CR/LF in content", Served, |m| {
        req(
            m,
            &format!(r#""messages":[{{"role":"user","content":{}}}]"#, q(CONTROL_TEXT)),
        )
    });
    c.needle = Some(CONTROL_TEXT);
    v.push(c);

    // Duplicate keys: which one the gateway routes by must not be a guess.
    v.push(case("duplicate model", Refused, |m| {
        format!(
            r#"{{"model":{},"model":"claude-dup-other","max_tokens":1,"messages":[]}}"#,
            q(m)
        )
        .into_bytes()
    }));
    v.push(case("duplicate stream", Refused, |m| {
        req(m, r#""stream":false,"stream":true,"messages":[]"#)
    }));
    v.push(case("duplicate max_tokens", Refused, |m| {
        format!(r#"{{"model":{},"max_tokens":1,"max_tokens":2,"messages":[]}}"#, q(m)).into_bytes()
    }));

    // `stream` of the wrong type.
    v.push(case("stream \"true\"", Refused, |m| {
        req(m, r#""stream":"true","messages":[]"#)
    }));
    v.push(case("stream 1", Refused, |m| req(m, r#""stream":1,"messages":[]"#)));

    // Huge and negative max_tokens.
    for n in ["1e30", "18446744073709551616", "-1"] {
        v.push(case(&format!("max_tokens {n}"), RefusedOrPassedThrough, move |m| {
            format!(
                r#"{{"model":{},"max_tokens":{n},"messages":[{{"role":"user","content":"hi"}}]}}"#,
                q(m)
            )
            .into_bytes()
        }));
    }
    v
}

struct Answer {
    status: u16,
    request_id: Option<String>,
    content_type: Option<String>,
    body: bytes::Bytes,
}

async fn post(c: &reqwest::Client, gw: &Gateway, path: &str, body: Vec<u8>) -> Result<Answer, String> {
    let r = c
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("no HTTP answer: {}", error_chain(&e)))?;
    let status = r.status().as_u16();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let request_id = header("request-id");
    let content_type = header("content-type");
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("{status}, then the body failed: {}", error_chain(&e)))?;
    Ok(Answer {
        status,
        request_id,
        content_type,
        body,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn excerpt(b: &[u8]) -> String {
    let n = b.len().min(300);
    let more = if b.len() > n {
        format!("… ({} bytes)", b.len())
    } else {
        String::new()
    };
    format!("{:?}{more}", String::from_utf8_lossy(&b[..n]))
}

/// The Anthropic error object of `a`: `(error.type, error.message)`.
fn anthropic_error(a: &Answer) -> Result<(String, String), String> {
    let shown = || format!("{} {}", a.status, excerpt(&a.body));
    if !(400..600).contains(&a.status) {
        return Err(format!("not an error status: {}", shown()));
    }
    if a.body.len() > MAX_ERROR_BODY {
        return Err(format!("error body of {} bytes (echoes the input?)", a.body.len()));
    }
    if !a
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(format!("content-type {:?}: {}", a.content_type, shown()));
    }
    if a.request_id.is_none() {
        return Err(format!("no request-id header: {}", shown()));
    }
    let v: Value = serde_json::from_slice(&a.body).map_err(|_| format!("error body is not JSON: {}", shown()))?;
    let ok = v["type"] == "error"
        && v["error"]["type"].is_string()
        && v["error"]["message"].is_string()
        && v["request_id"].as_str().is_some_and(|r| !r.is_empty());
    if !ok {
        return Err(format!("not an Anthropic error object: {}", shown()));
    }
    Ok((
        v["error"]["type"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The gateway's own 400 `invalid_request_error`.
fn refused(a: &Answer) -> Result<(), String> {
    let (kind, _) = anthropic_error(a)?;
    if (a.status, kind.as_str()) != (400, "invalid_request_error") {
        return Err(format!(
            "want 400 invalid_request_error, got {} {kind}: {}",
            a.status,
            excerpt(&a.body)
        ));
    }
    Ok(())
}

/// Checks one case's answer against what the upstreams received meanwhile.
fn judge(
    route: Route,
    endpoint: Endpoint,
    case: &Case,
    answer: Result<Answer, String>,
    before: [usize; 3],
    after: [usize; 3],
    ups: &Upstreams,
) -> Result<(), String> {
    let a = answer?;
    let sent: usize = after.iter().sum::<usize>() - before.iter().sum::<usize>();
    let idx = route.provider as usize;
    let on_route = after[idx] - before[idx];
    let locally_counted = endpoint == Endpoint::CountTokens && route.provider == Provider::OpenAi;
    match case.want {
        Want::Refused => {
            refused(&a)?;
            if sent != 0 {
                return Err(format!("refused, but {sent} request(s) reached an upstream"));
            }
        }
        Want::UnknownFieldDropped if route.translated() && a.status != 200 => refused(&a)?,
        Want::UnknownFieldDropped if route.translated() => {
            // Served: upstream, or counted locally (a count's estimate).
            if sent > 1 || on_route != sent {
                return Err(format!(
                    "want the unknown field dropped and the request served, got {} after {sent} upstream request(s): {}",
                    a.status,
                    excerpt(&a.body)
                ));
            }
            if sent == 1 {
                let got = ups.mock(route.provider).requests().pop().expect("recorded");
                if got.body.len() > 4096 {
                    return Err(format!(
                        "the unknown field reached the upstream: {} bytes",
                        got.body.len()
                    ));
                }
            }
        }
        Want::RefusedOrPassedThrough | Want::UnknownFieldDropped if sent == 0 => refused(&a)?,
        Want::RefusedOrPassedThrough | Want::UnknownFieldDropped => {
            if route.translated() || on_route != 1 || sent != 1 {
                return Err(format!(
                    "a translating route forwarded an invalid body ({sent} upstream request(s)); answered {} {}",
                    a.status,
                    excerpt(&a.body)
                ));
            }
            let (kind, message) = anthropic_error(&a)?;
            if a.status != 400 || kind != "invalid_request_error" || !message.starts_with("mock anthropic:") {
                return Err(format!(
                    "passed through, but the upstream's 400 was not relayed: {} {}",
                    a.status,
                    excerpt(&a.body)
                ));
            }
        }
        Want::Served => {
            if a.status != 200 {
                return Err(format!("want 200, got {} {}", a.status, excerpt(&a.body)));
            }
            let v: Value =
                serde_json::from_slice(&a.body).map_err(|_| format!("200 but not JSON: {}", excerpt(&a.body)))?;
            let shaped = match endpoint {
                Endpoint::Messages => v["type"] == "message",
                Endpoint::CountTokens => v["input_tokens"].is_u64(),
            };
            if !shaped {
                return Err(format!("200 but not a {endpoint:?} answer: {}", excerpt(&a.body)));
            }
            let want_sent = usize::from(!locally_counted);
            if sent != want_sent || on_route != want_sent {
                return Err(format!(
                    "{sent} upstream request(s), {on_route} on the route's own; want {want_sent}"
                ));
            }
            if let (Some(needle), 1) = (case.needle, sent) {
                let got = ups.mock(route.provider).requests().pop().expect("recorded");
                if !contains_string(&got.json(), needle) {
                    return Err(format!(
                        "{needle:?} did not reach the upstream intact: {}",
                        excerpt(&got.body)
                    ));
                }
            }
        }
    }
    Ok(())
}

fn contains_string(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(a) => a.iter().any(|x| contains_string(x, needle)),
        Value::Object(o) => o.values().any(|x| contains_string(x, needle)),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_json_bodies_get_anthropic_errors() {
    let ups = Upstreams::start().await;
    let mut gw = Gateway::start_async(&ups.yaml(""), &[]).await;
    let idle = gauges(&gw).await.expect("/metrics before any traffic");
    let c = http();
    let mut failures = Vec::new();
    let cases = battery();
    for route in ROUTES {
        for endpoint in [Endpoint::Messages, Endpoint::CountTokens] {
            for case in &cases {
                let before = ups.counts();
                let answer = post(&c, &gw, endpoint.path(), (case.body)(route.model)).await;
                let after = ups.counts();
                if let Err(why) = judge(route, endpoint, case, answer, before, after, &ups) {
                    failures.push(format!(
                        "{:?} {} [{}]: {why}",
                        route.provider,
                        endpoint.path(),
                        case.name
                    ));
                }
            }
        }
    }

    // Nothing of the oversized or control-character model ids was kept or logged.
    let logs = gw.logs();
    let run: String = std::iter::repeat_n(FILLER, 64).collect();
    if let Some(line) = logs.lines().find(|l| l.contains(&run)) {
        failures.push(format!(
            "logs: an oversized model id was logged: {}",
            shorten(line, 200)
        ));
    }
    if let Some(line) = logs.lines().find(|l| l.starts_with(INJECTED)) {
        failures.push(format!("logs: a CR/LF in a model id forged a log line: {line:?}"));
    }
    if logs.contains('\0') {
        failures.push("logs: a raw NUL from a model id was logged".into());
    }
    match c.get(gw.url("/admin/errors")).send().await {
        Ok(r) => {
            let body = r.bytes().await.unwrap_or_default();
            if body.len() > 1024 * 1024 || String::from_utf8_lossy(&body).contains(&run) {
                failures.push(format!(
                    "/admin/errors kept an oversized model id ({} bytes)",
                    body.len()
                ));
            }
        }
        Err(e) => failures.push(format!("/admin/errors: {}", error_chain(&e))),
    }

    still_serving(&mut gw, &ups, idle, &mut failures).await;
    report(&mut gw, failures);
}

// ---------------------------------------------------------------------------
// Framing the HTTP layer must refuse
// ---------------------------------------------------------------------------

/// What a raw connection saw.
struct Wire {
    /// The first bytes the server wrote (at most 64 KiB kept).
    bytes: Vec<u8>,
    /// EOF or reset seen before the deadline.
    closed: bool,
    /// From connecting until the close (or the deadline).
    elapsed: Duration,
    note: String,
}

impl Wire {
    fn status(&self) -> Option<u16> {
        let line = self.bytes.split(|&b| b == b'\n').next()?;
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split_whitespace();
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    fn describe(&self) -> String {
        format!(
            "closed={} after {:?}, {} byte(s) {}{}",
            self.closed,
            self.elapsed,
            self.bytes.len(),
            excerpt(&self.bytes),
            if self.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.note)
            }
        )
    }
}

const KEEP: usize = 64 * 1024;

/// Read until EOF/reset or `deadline`; returns whether the connection closed.
/// Bounded: every pass reads or waits at most the socket's 200 ms read timeout.
fn read_until_closed(s: &mut TcpStream, deadline: Instant, bytes: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let max_passes = 100_000;
    for _ in 0..max_passes {
        if Instant::now() >= deadline {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let room = KEEP.saturating_sub(bytes.len());
                bytes.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    s
}

/// Send `payload` (then half-close if asked) and wait up to `wait` for the close.
fn exchange(addr: SocketAddr, payload: &[u8], half_close: bool, wait: Duration) -> Wire {
    let start = Instant::now();
    let mut s = connect(addr);
    let mut note = String::new();
    if let Err(e) = s.write_all(payload) {
        note = format!("the write stopped: {e}");
    }
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut bytes = Vec::new();
    let closed = read_until_closed(&mut s, start + wait, &mut bytes);
    Wire {
        bytes,
        closed,
        elapsed: start.elapsed(),
        note,
    }
}

/// A clean refusal: a 4xx, or nothing; either way the connection is closed.
fn judge_framing(w: &Wire) -> Result<(), String> {
    if !w.closed {
        return Err(format!("the connection was held open: {}", w.describe()));
    }
    if w.bytes.is_empty() {
        return Ok(());
    }
    match w.status() {
        Some(s) if (400..500).contains(&s) => Ok(()),
        _ => Err(format!("want a 4xx or a bare close: {}", w.describe())),
    }
}

const VALID: &str = r#"{"model":"claude-x","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;

fn head(addr: SocketAddr, extra: &str) -> String {
    format!("POST /v1/messages HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nanthropic-version: 2023-06-01\r\n{extra}\r\n")
}

fn chunked(addr: SocketAddr, size_line: &str) -> Vec<u8> {
    format!(
        "{}{size_line}\r\n{VALID}\r\n0\r\n\r\n",
        head(addr, "Transfer-Encoding: chunked\r\n")
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_framing_is_refused_cleanly() {
    let ups = Upstreams::start().await;
    let mut gw = Gateway::start_async(&ups.yaml(""), &[]).await;
    let idle = gauges(&gw).await.expect("/metrics before any traffic");
    let addr = gw.addr;
    let cl = |extra: &str| {
        format!(
            "{}{VALID}",
            head(addr, &format!("{extra}Content-Length: {}\r\n", VALID.len()))
        )
        .into_bytes()
    };
    let many: String = (0..20_000).map(|i| format!("X-Hostile-{i}: v\r\n")).collect();
    let big = format!("X-Hostile: {}\r\n", "a".repeat(1024 * 1024));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("20,000 headers", cl(&many), false),
        ("a 1 MB header value", cl(&big), false),
        ("chunk size not hex", chunked(addr, "zz"), false),
        ("chunk size 0x-prefixed", chunked(addr, "0x10"), false),
        ("chunk size negative", chunked(addr, "-5"), false),
        (
            "chunk size overflowing u64",
            chunked(addr, "fffffffffffffffffffffffff"),
            false,
        ),
        ("chunk size larger than the data, then EOF", chunked(addr, "ffff"), true),
    ];
    let before = ups.counts();
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(name, payload, half_close)| {
            tokio::task::spawn_blocking(move || (name, exchange(addr, &payload, half_close, FRAMING_WAIT)))
        })
        .collect();
    let mut failures = Vec::new();
    for run in runs {
        let (name, wire) = run.await.expect("framing case thread");
        if let Err(why) = judge_framing(&wire) {
            failures.push(format!("[{name}]: {why}"));
        }
    }
    if ups.counts() != before {
        failures.push(format!(
            "framing attacks reached an upstream: {:?} → {:?}",
            before,
            ups.counts()
        ));
    }
    still_serving(&mut gw, &ups, idle, &mut failures).await;
    report(&mut gw, failures);
}

// ---------------------------------------------------------------------------
// Slow clients and client_timeouts
// ---------------------------------------------------------------------------

/// Trickle a request head one byte per read-timeout tick (200 ms, well under
/// `client_timeouts.head`) until the gateway closes, or `wait` passes.
fn slowloris(addr: SocketAddr, wait: Duration) -> Wire {
    let start = Instant::now();
    let deadline = start + wait;
    let mut s = connect(addr);
    let mut note = String::new();
    let mut bytes = Vec::new();
    let mut closed = false;
    if let Err(e) = s.write_all(format!("POST /v1/messages HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes()) {
        note = format!("the first write failed: {e}");
        closed = true;
    }
    let mut buf = [0u8; 4096];
    // Bounded by the deadline: each pass waits at most one 200 ms read timeout.
    let max_passes = 1_000;
    for _ in 0..max_passes {
        if closed || Instant::now() >= deadline {
            break;
        }
        if let Err(e) = s.write_all(b"a") {
            note = format!("a write failed: {e}");
            closed = true;
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                note = format!("read: {e}");
                closed = true;
            }
        }
    }
    if !closed && !bytes.is_empty() {
        // An answer came: wait for the close behind it.
        closed = read_until_closed(&mut s, deadline, &mut bytes);
    }
    Wire {
        bytes,
        closed,
        elapsed: start.elapsed(),
        note,
    }
}

/// Closed within `limit`, with at most a 408 written.
fn judge_timed_out(w: &Wire, limit: Duration) -> Result<(), String> {
    if !w.closed || w.elapsed > limit {
        return Err(format!("not closed within {limit:?}: {}", w.describe()));
    }
    if !w.bytes.is_empty() && w.status() != Some(408) {
        return Err(format!("want a bare close or 408: {}", w.describe()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_by_client_timeouts() {
    let ups = Upstreams::start().await;
    let yaml = ups.yaml("client_timeouts: {head: 2s, body: 2s, write: 2s}\n");
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    let idle = gauges(&gw).await.expect("/metrics before any traffic");
    let addr = gw.addr;
    let limit = CLIENT_TIMEOUT + SLACK;
    // The bound of each case: its limit plus a second, so a late close is still seen and timed.
    let wait = limit + Duration::from_secs(1);

    // The write case: an answer far larger than the socket buffers, never read.
    let huge = "x".repeat(16 * 1024 * 1024);
    ups.anthropic.push(Reply::message("claude-x", &huge));
    drop(huge);
    let mut unread = connect(addr);
    let request = format!("{}{VALID}", head(addr, &format!("Content-Length: {}\r\n", VALID.len())));
    unread
        .write_all(request.as_bytes())
        .expect("send the request whose answer is never read");

    let slow_head = tokio::task::spawn_blocking(move || slowloris(addr, wait));
    let half_body = tokio::task::spawn_blocking(move || {
        let mut p = head(addr, "Content-Length: 1000\r\n").into_bytes();
        p.extend_from_slice(&VALID.as_bytes()[..20]);
        exchange(addr, &p, false, wait)
    });
    let half_chunk = tokio::task::spawn_blocking(move || {
        let mut p = head(addr, "Transfer-Encoding: chunked\r\n").into_bytes();
        p.extend_from_slice(format!("{:x}\r\n", VALID.len() * 10).as_bytes());
        p.extend_from_slice(&VALID.as_bytes()[..20]);
        exchange(addr, &p, false, wait)
    });

    let mut failures = Vec::new();
    for (name, run) in [
        ("slowloris head", slow_head),
        ("Content-Length body stops halfway", half_body),
        ("chunked body stops halfway", half_chunk),
    ] {
        let wire = run.await.expect("slow case thread");
        if let Err(why) = judge_timed_out(&wire, limit) {
            failures.push(format!("[{name}]: {why}"));
        }
    }

    // The unread answer: the gateway gives up writing, the request leaves the
    // in-flight gauges while the client still holds its socket, and the
    // connection is closed (what is buffered ends in EOF or a reset).
    if ups.anthropic.request_count() != 1 {
        failures.push(format!(
            "[unread answer]: want exactly its 1 upstream request, got {:?}",
            ups.counts()
        ));
    }
    let t0 = Instant::now();
    if let Err(why) = settle(&gw, idle, limit + SLACK).await {
        failures.push(format!("[unread answer]: {why} with the client still connected"));
    }
    let drained = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        let closed = read_until_closed(&mut unread, Instant::now() + FRAMING_WAIT, &mut bytes);
        (closed, bytes)
    })
    .await
    .expect("drain thread");
    if !drained.0 {
        failures.push(format!(
            "[unread answer]: the connection was still open {:?} after the wait began (the answer was never cut off)",
            t0.elapsed()
        ));
    }
    if ups.counts().iter().sum::<usize>() != 1 {
        failures.push(format!("slow clients reached an upstream: {:?}", ups.counts()));
    }

    still_serving(&mut gw, &ups, idle, &mut failures).await;
    report(&mut gw, failures);
}

// ---------------------------------------------------------------------------
// Afterwards: still serving, no panic, gauges back at idle
// ---------------------------------------------------------------------------

/// `(modelgate_requests_in_flight, modelgate_streams_in_flight)` from `/metrics`.
/// A scrape may count itself, so compare against an idle scrape, not 0.
async fn gauges(gw: &Gateway) -> Option<(i64, i64)> {
    let text = http().get(gw.url("/metrics")).send().await.ok()?.text().await.ok()?;
    let read = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .map(|v| v as i64)
    };
    Some((
        read("modelgate_requests_in_flight")?,
        read("modelgate_streams_in_flight")?,
    ))
}

/// Poll `/metrics` (every 100 ms, bounded by `within`) until the gauges are back at `idle`.
async fn settle(gw: &Gateway, idle: (i64, i64), within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = None;
    let max_polls = within.as_millis() / 100 + 2;
    for _ in 0..max_polls {
        last = gauges(gw).await;
        if last == Some(idle) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if last == Some(idle) {
        Ok(())
    } else {
        Err(format!(
            "in-flight gauges (requests, streams) not back at idle {idle:?} within {within:?}: last {last:?}"
        ))
    }
}

async fn still_serving(gw: &mut Gateway, ups: &Upstreams, idle: (i64, i64), failures: &mut Vec<String>) {
    if !gw.is_running() {
        failures.push(format!("the gateway exited: {:?}", gw.child.try_wait()));
        return;
    }
    let c = http();
    for route in ROUTES {
        let before = ups.counts();
        let body = req(route.model, r#""messages":[{"role":"user","content":"hi"}]"#);
        let answer = post(&c, gw, "/v1/messages", body).await;
        let normal = case("a normal request afterwards", Want::Served, |_| Vec::new());
        if let Err(why) = judge(route, Endpoint::Messages, &normal, answer, before, ups.counts(), ups) {
            failures.push(format!("{:?} [afterwards]: {why}", route.provider));
        }
    }
    match c.get(gw.url("/health")).send().await {
        Ok(r) if r.status() == 200 => {}
        Ok(r) => failures.push(format!("/health answered {}", r.status())),
        Err(e) => failures.push(format!("/health: {}", error_chain(&e))),
    }
    if let Err(why) = settle(gw, idle, SETTLE).await {
        failures.push(why);
    }
    let logs = gw.logs();
    let panics: Vec<String> = logs
        .lines()
        .filter(|l| l.contains("panicked"))
        .take(5)
        .map(|l| shorten(l, 500))
        .collect();
    if !panics.is_empty() {
        failures.push(format!("the log has panics:\n  {}", panics.join("\n  ")));
    }
}

/// Panic with every failure and the end of the log. The gateway is stopped
/// first and its log files cut to short lines, since `Gateway`'s `Drop`
/// prints them whole while panicking and a hostile case may have put
/// megabytes into one line.
fn report(gw: &mut Gateway, failures: Vec<String>) {
    if failures.is_empty() {
        return;
    }
    gw.stop();
    for name in ["stdout.log", "stderr.log"] {
        let path = gw.dir.path().join(name);
        if let Ok(raw) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&raw);
            let cut: Vec<String> = text.lines().map(|l| shorten(l, 1000)).collect();
            let _ = std::fs::write(&path, cut.join("\n"));
        }
    }
    let logs = gw.logs();
    let tail: Vec<&str> = logs
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    panic!(
        "{} failure(s):\n- {}\n\nlast log lines:\n{}",
        failures.len(),
        failures.join("\n- "),
        tail.join("\n")
    );
}

fn shorten(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &line[..end], line.len())
}
