//! A scriptable mock upstream: hyper 1 HTTP/1.1 server on 127.0.0.1:0.
//!
//! Replies are scripted FIFO with [`MockUpstream::push`]; when the queue is
//! empty the default reply (see [`MockUpstream::set_default`]) is used. Every
//! request is recorded byte-exact (method, path+query, headers in order with raw
//! values, whole body) before the reply is produced.
//!
//! Dropping the [`MockUpstream`] stops the accept loop and closes every open
//! connection (including stalled or gated ones).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// Longest time an [`SseStep::Gate`] waits before the mock gives up and aborts
/// the stream (a safety net for tests that forget to open a gate).
pub const GATE_MAX_WAIT: Duration = Duration::from_secs(60);

/// Usage numbers used by [`anthropic_message_json`] and [`anthropic_sse_chunks`].
pub const USAGE_INPUT_TOKENS: u64 = 25;
pub const USAGE_CACHE_CREATION_INPUT_TOKENS: u64 = 2048;
pub const USAGE_CACHE_READ_INPUT_TOKENS: u64 = 16384;
pub const USAGE_OUTPUT_TOKENS: u64 = 12;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// One request as received by the mock.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub uri: String,
    /// Lowercase names, in arrival order (values of a repeated name are grouped
    /// at its first occurrence, as hyper's `HeaderMap` keeps them), raw values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole request body, byte-exact.
    pub body: Bytes,
    /// 0-based ordinal of the TCP connection this request arrived on (the
    /// accept order); equal values mean the client reused a connection.
    pub conn: usize,
}

impl Recorded {
    /// First value of header `name` (case-insensitive), lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// All values of header `name` (case-insensitive), in order, lossy UTF-8.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// First raw value of header `name` (case-insensitive).
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The request path without the query string.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// The body parsed as JSON; panics (showing the start of the body) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            let n = self.body.len().min(500);
            panic!(
                "mock: body of {} {} is not JSON ({e}): {:?}",
                self.method,
                self.uri,
                String::from_utf8_lossy(&self.body[..n])
            )
        })
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete response with a `content-length` body. `content-type:
    /// application/json` is added unless `headers` has a content-type.
    Json {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// SSE response (content-type text/event-stream unless `headers` has one,
    /// chunked, no content-length). Each [`SseStep::Chunk`] becomes one HTTP
    /// chunk; output is flushed whenever the script waits (Delay, Gate) and
    /// before an Abort.
    Sse {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<SseStep>,
    },
    /// Read the whole request, then close the connection without answering.
    Hangup,
    /// Read the whole request, then never answer; after `hold` the connection is closed.
    Stall { hold: Duration },
    /// Decide from the request itself (a scripted "model", see `model.rs`).
    Script(Responder),
}

/// A reply computed from the recorded request. Cheap to clone.
#[derive(Clone)]
pub struct Responder(pub Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder(..)")
    }
}

impl Reply {
    /// A reply made by `f` from each request.
    pub fn script(f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Reply {
        Reply::Script(Responder(Arc::new(f)))
    }
}

/// One step of an SSE script.
#[derive(Debug, Clone)]
pub enum SseStep {
    /// Raw bytes of one chunk, e.g. `"event: ping\ndata: {\"type\":\"ping\"}\n\n"`.
    Chunk(String),
    /// Binary bytes of one chunk (e.g. a Bedrock event-stream frame).
    Bytes(Bytes),
    /// Pause (output so far is flushed first).
    Delay(Duration),
    /// Wait until the test calls [`Gate::open`] (output so far is flushed
    /// first). Gives up after [`GATE_MAX_WAIT`] and aborts the stream.
    Gate(Gate),
    /// Drop the connection mid-stream (no terminating zero-length chunk).
    Abort,
}

/// A one-shot latch the test opens; stays open once opened. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    /// Open the gate (idempotent). Works before or after the mock reaches it.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Wait until the gate is open. Returns false if `max` elapsed first.
    pub async fn wait(&self, max: Duration) -> bool {
        let mut rx = self.0.subscribe();
        let wait = async move {
            // Bounded by the timeout below; every iteration awaits a change.
            loop {
                let open = *rx.borrow_and_update();
                if open {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(max, wait).await.is_ok() && self.is_open()
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Reply {
    /// `Reply::Json` with the given status and body, no extra headers.
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Json {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// 200 with a realistic non-streaming Anthropic Message ([`anthropic_message_json`]).
    pub fn message(model: &str, text: &str) -> Reply {
        Reply::json(200, anthropic_message_json(model, text)).with_header("request-id", "req_mock_message")
    }

    /// An Anthropic error body `{"type":"error","error":{...},"request_id":...}`.
    pub fn error(status: u16, error_type: &str, message: &str) -> Reply {
        Reply::json(status, anthropic_error_json(error_type, message)).with_header("request-id", "req_mock_error")
    }

    /// 200 SSE reply with the given steps.
    pub fn sse(chunks: Vec<SseStep>) -> Reply {
        Reply::Sse {
            status: 200,
            headers: Vec::new(),
            chunks,
        }
    }

    /// 200 SSE reply with a complete Anthropic text stream ([`anthropic_sse_chunks`]).
    pub fn sse_message(model: &str, texts: &[&str]) -> Reply {
        Reply::sse(anthropic_sse_chunks(model, texts)).with_header("request-id", "req_mock_stream")
    }

    /// Add a response header (no effect on `Hangup` / `Stall`).
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Json { headers, .. } | Reply::Sse { headers, .. } => {
                headers.push((name.to_string(), value.to_string()))
            }
            Reply::Hangup | Reply::Stall { .. } | Reply::Script(_) => {}
        }
        self
    }

    /// Set the status (no effect on `Hangup` / `Stall`).
    pub fn with_status(mut self, new_status: u16) -> Reply {
        match &mut self {
            Reply::Json { status, .. } | Reply::Sse { status, .. } => *status = new_status,
            Reply::Hangup | Reply::Stall { .. } | Reply::Script(_) => {}
        }
        self
    }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

struct State {
    queue: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    recorded: Mutex<Vec<Recorded>>,
    /// Number of recorded requests, for waiters.
    count: watch::Sender<usize>,
    accepted: AtomicUsize,
}

impl State {
    fn next_reply(&self) -> Reply {
        let scripted = self.queue.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| self.default.lock().unwrap().clone())
    }

    fn record(&self, r: Recorded) {
        let n = {
            let mut v = self.recorded.lock().unwrap();
            v.push(r);
            v.len()
        };
        self.count.send_replace(n);
    }
}

pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    /// Dropping this stops the accept loop and every connection task.
    _shutdown: watch::Sender<()>,
}

impl MockUpstream {
    /// Bind 127.0.0.1:0 and spawn the accept loop on the current tokio runtime.
    pub async fn start() -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("mock: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock: local_addr");
        let state = Arc::new(State {
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::message("claude-mock-1", "Hello from the mock upstream.")),
            recorded: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            accepted: AtomicUsize::new(0),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
        MockUpstream {
            addr,
            state,
            _shutdown: shutdown_tx,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Append a scripted reply (FIFO; one per request).
    pub fn push(&self, reply: Reply) {
        self.state.queue.lock().unwrap().push_back(reply);
    }

    /// Replace the reply used when the FIFO is empty. The initial default is
    /// `Reply::message("claude-mock-1", "Hello from the mock upstream.")`.
    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// Scripted replies not consumed yet.
    pub fn pending_replies(&self) -> usize {
        self.state.queue.lock().unwrap().len()
    }

    /// Everything received so far, in order of completion of the request body.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.state.recorded.lock().unwrap().len()
    }

    /// Forget the recorded requests (the connection counter is kept).
    pub fn clear_requests(&self) {
        self.state.recorded.lock().unwrap().clear();
        self.state.count.send_replace(0);
    }

    /// Wait until at least `n` requests are recorded; panics after `timeout`.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let mut rx = self.state.count.subscribe();
        let wait = async move {
            // Bounded by the timeout below; every iteration awaits a change.
            loop {
                let have = *rx.borrow_and_update();
                if have >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            let got = self.requests();
            let summary: Vec<String> = got.iter().map(|r| format!("{} {}", r.method, r.uri)).collect();
            panic!(
                "mock: expected >= {n} requests within {timeout:?}, got {}: {summary:?}",
                got.len()
            );
        }
        self.requests()
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<()>) {
    // Runs until the MockUpstream is dropped (the shutdown sender goes away).
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("mock: accept error: {e}");
                // Avoid a hot loop on persistent errors (e.g. EMFILE).
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn_id = state.accepted.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), conn_id, req));
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

async fn handle(state: Arc<State>, conn: usize, req: Request<Incoming>) -> Result<Response<RespBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let recorded = Recorded {
        method: parts.method.as_str().to_string(),
        uri,
        headers,
        body,
        conn,
    };
    let reply = match state.next_reply() {
        Reply::Script(f) => (f.0)(&recorded),
        other => other,
    };
    state.record(recorded);

    match reply {
        Reply::Json { status, headers, body } => {
            let full = Full::new(Bytes::from(body)).map_err(|never| match never {});
            build_response(status, &headers, "application/json", None, full.boxed_unsync())
        }
        Reply::Sse {
            status,
            headers,
            chunks,
        } => build_response(
            status,
            &headers,
            "text/event-stream",
            Some("no-cache"),
            sse_body(chunks),
        ),
        // Returning an error makes hyper close the connection without a response.
        Reply::Hangup => Err("mock: scripted hangup".into()),
        Reply::Script(_) => Err("mock: a script answered with another script".into()),
        Reply::Stall { hold } => {
            tokio::time::sleep(hold).await;
            Err("mock: scripted stall elapsed".into())
        }
    }
}

fn build_response(
    status: u16,
    headers: &[(String, String)],
    default_content_type: &str,
    default_cache_control: Option<&str>,
    body: RespBody,
) -> Result<Response<RespBody>, BoxError> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut b = Response::builder().status(StatusCode::from_u16(status)?);
    if !has("content-type") {
        b = b.header("content-type", default_content_type);
    }
    if let Some(cc) = default_cache_control {
        if !has("cache-control") {
            b = b.header("cache-control", cc);
        }
    }
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(body).map_err(|e| {
        eprintln!("mock: invalid scripted response: {e}");
        e.into()
    })
}

fn sse_body(steps: Vec<SseStep>) -> RespBody {
    let stream = futures_util::stream::unfold(Some(steps.into_iter()), |state| async move {
        let mut steps = state?;
        // Bounded: each iteration consumes one step.
        loop {
            match steps.next()? {
                SseStep::Chunk(s) => {
                    return Some((Ok(Frame::data(Bytes::from(s))), Some(steps)));
                }
                SseStep::Bytes(b) => {
                    return Some((Ok(Frame::data(b)), Some(steps)));
                }
                SseStep::Delay(d) => tokio::time::sleep(d).await,
                SseStep::Gate(g) => {
                    if !g.wait(GATE_MAX_WAIT).await {
                        eprintln!("mock: SSE gate not opened within {GATE_MAX_WAIT:?}; aborting");
                        let e: BoxError = "mock: gate timeout".into();
                        return Some((Err(e), None));
                    }
                }
                SseStep::Abort => {
                    // Yield once so hyper flushes what was already written
                    // before the error tears the connection down.
                    tokio::task::yield_now().await;
                    let e: BoxError = "mock: scripted abort".into();
                    return Some((Err(e), None));
                }
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

// ---------------------------------------------------------------------------
// Anthropic payload helpers
// ---------------------------------------------------------------------------

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn usage_json(output_tokens: u64) -> String {
    format!(
        concat!(
            r#"{{"input_tokens":{},"cache_creation_input_tokens":{},"cache_read_input_tokens":{},"#,
            r#""cache_creation":{{"ephemeral_5m_input_tokens":{},"ephemeral_1h_input_tokens":0}},"#,
            r#""output_tokens":{},"service_tier":"standard"}}"#
        ),
        USAGE_INPUT_TOKENS,
        USAGE_CACHE_CREATION_INPUT_TOKENS,
        USAGE_CACHE_READ_INPUT_TOKENS,
        USAGE_CACHE_CREATION_INPUT_TOKENS,
        output_tokens
    )
}

/// A realistic non-streaming Anthropic Message (compact JSON, fields in API order).
/// Usage: the `USAGE_*` constants of this module.
pub fn anthropic_message_json(model: &str, text: &str) -> String {
    format!(
        concat!(
            r#"{{"id":"msg_01MockUpstreamMessage0001","type":"message","role":"assistant","model":{},"#,
            r#""content":[{{"type":"text","text":{}}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{}}}"#
        ),
        js(model),
        js(text),
        usage_json(USAGE_OUTPUT_TOKENS)
    )
}

/// An Anthropic error body.
pub fn anthropic_error_json(error_type: &str, message: &str) -> String {
    format!(
        r#"{{"type":"error","error":{{"type":{},"message":{}}},"request_id":"req_mock_error"}}"#,
        js(error_type),
        js(message)
    )
}

/// One complete SSE event: `event: NAME\ndata: DATA\n\n` (DATA is used verbatim).
pub fn sse_event(event: &str, data: &str) -> SseStep {
    SseStep::Chunk(format!("event: {event}\ndata: {data}\n\n"))
}

/// A complete Anthropic text stream: message_start, ping, content_block_start,
/// one text_delta per entry of `texts`, content_block_stop, message_delta (with
/// cumulative usage), message_stop; each event is its own [`SseStep::Chunk`].
pub fn anthropic_sse_chunks(model: &str, texts: &[&str]) -> Vec<SseStep> {
    let mut v = Vec::with_capacity(texts.len() + 6);
    v.push(sse_event(
        "message_start",
        &format!(
            concat!(
                r#"{{"type":"message_start","message":{{"id":"msg_01MockUpstreamStream00001","type":"message","#,
                r#""role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{}}}}}"#
            ),
            js(model),
            usage_json(1)
        ),
    ));
    v.push(sse_event("ping", r#"{"type": "ping"}"#));
    v.push(sse_event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    ));
    for t in texts {
        v.push(sse_event(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{}}}}}"#,
                js(t)
            ),
        ));
    }
    v.push(sse_event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    v.push(sse_event(
        "message_delta",
        &format!(
            concat!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"#,
                r#""usage":{{"input_tokens":{},"cache_creation_input_tokens":{},"cache_read_input_tokens":{},"output_tokens":{}}}}}"#
            ),
            USAGE_INPUT_TOKENS,
            USAGE_CACHE_CREATION_INPUT_TOKENS,
            USAGE_CACHE_READ_INPUT_TOKENS,
            USAGE_OUTPUT_TOKENS
        ),
    ));
    v.push(sse_event("message_stop", r#"{"type":"message_stop"}"#));
    v
}

/// Concatenation of the `Chunk` steps (what a client should receive in full).
pub fn sse_text(steps: &[SseStep]) -> String {
    steps
        .iter()
        .filter_map(|s| match s {
            SseStep::Chunk(c) => Some(c.as_str()),
            _ => None,
        })
        .collect()
}

/// An Anthropic SSE reply that sends `message_start`, then holds the rest
/// until the returned gate opens: the test decides when the upstream finishes.
pub fn gated_sse_message(model: &str, texts: &[&str]) -> (Reply, Gate) {
    let gate = Gate::new();
    let mut steps = anthropic_sse_chunks(model, texts);
    steps.insert(1, SseStep::Gate(gate.clone()));
    (Reply::sse(steps), gate)
}

/// An OpenAI Chat Completions stream: each JSON chunk as its own `data:`
/// event, then `data: [DONE]`.
pub fn openai_sse_chunks(chunks: &[serde_json::Value]) -> Vec<SseStep> {
    let mut steps: Vec<SseStep> = chunks
        .iter()
        .map(|c| SseStep::Chunk(format!("data: {c}\n\n")))
        .collect();
    steps.push(SseStep::Chunk("data: [DONE]\n\n".to_string()));
    steps
}

/// A complete non-streaming Chat Completions answer.
pub fn openai_completion_json(message: serde_json::Value, finish_reason: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-mock1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1500, "completion_tokens": 40, "total_tokens": 1540,
                  "prompt_tokens_details": {"cached_tokens": 1024}}
    })
    .to_string()
}

/// Parse an Anthropic SSE body into `(event, data)` pairs.
pub fn parse_sse(text: &str) -> Vec<(String, serde_json::Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad SSE data {data:?}: {e}"));
            (name, value)
        })
        .collect()
}
