//! Regression tests for the hardening fixes since aa902c7, one per defect,
//! through the real binary against mock upstreams: open relays refused,
//! quick stops, per-model 429 cool-downs, metering of translated streams cut
//! short, released probe slots, passthrough_mode under gateway keys, Redis
//! holds that never leak, fast-mode pricing, secrets kept out of trace logs,
//! refused gateway credentials, cache correctness, redacted config output,
//! budgets across a graceful upgrade, and bounded header values in records.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::redis::RedisServer;
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const ALICE: &str = "mg-hardeningAliceKey00000000000000000000000001";
const ADMIN: &str = "mg-hardeningAdminKey00000000000000000000000001";
/// claude-opus-4-6 at list prices for the mock's usage (25 input, 12
/// output, 16384 cache read, 2048 cache write): $5 / $25 / $0.50 / $6.25.
const OPUS_46_STANDARD: f64 = (25.0 * 5.0 + 12.0 * 25.0 + 16384.0 * 0.5 + 2048.0 * 6.25) / 1e6;

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn anthropic_body(model: &str, stream: bool) -> String {
    format!(r#"{{"model":"{model}","max_tokens":10,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

/// An Anthropic-shaped error body: `(error.type, error.message)`.
async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(v["type"], "error", "{text}");
    (
        status,
        v["error"]["type"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"].as_str().unwrap_or_default().to_string(),
    )
}

async fn status_json(gw: &Gateway) -> Value {
    client()
        .get(gw.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Wait (bounded) until no request but the `/status` poll itself is in
/// flight: every earlier request has passed its logging phase (records
/// queued, cache stored, budgets settled).
async fn wait_idle(gw: &Gateway) {
    for _ in 0..250 {
        if status_json(gw).await["counters"]["in_flight"] == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("requests still in flight after 5 s:\n{}", gw.logs());
}

/// One row of the SQLite usage ledger.
#[derive(Debug)]
struct Row {
    session_id: Option<String>,
    model: String,
    upstream_model: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    status: i64,
}

fn read_ledger(path: &std::path::Path) -> Result<Vec<Row>, rusqlite::Error> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT session_id, model, upstream_model, input_tokens, output_tokens, cost_usd, status FROM requests ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Row {
            session_id: r.get(0)?,
            model: r.get(1)?,
            upstream_model: r.get(2)?,
            input_tokens: r.get(3)?,
            output_tokens: r.get(4)?,
            cost_usd: r.get(5)?,
            status: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// The ledger's rows once there are at least `n` (the writer commits in
/// groups, off the request path); panics after 10 s.
async fn ledger_rows(path: &std::path::Path, n: usize) -> Vec<Row> {
    let mut last = String::new();
    for _ in 0..200 {
        match read_ledger(path) {
            Ok(rows) if rows.len() >= n => return rows,
            Ok(rows) => last = format!("{} rows", rows.len()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the ledger {} never had {n} rows ({last})", path.display());
}

/// `/v1/usage` for `key`.
async fn usage(gw_url: &str, key: &str) -> Value {
    let r = client()
        .get(format!("{gw_url}/v1/usage"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Run `modelgate ARGS` (no config placeholders); waits at most 20 s.
fn modelgate(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_child(&mut child, Duration::from_secs(20));
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    (code.map(|s| s.code().unwrap_or(-1)), out)
}

/// Poll (bounded) for `child` to exit.
fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    for _ in 0..(limit.as_millis() / 20 + 2) {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.try_wait().ok().flatten()
}

/// Kills the processes it holds when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Open relays
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_non_loopback_listener_with_a_provider_key_and_no_gateway_keys_refuses_to_start() {
    let up = MockUpstream::start().await;
    let provider = format!(
        "default_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\n",
        up.base_url()
    );
    // The refused config, checked by `config validate` and by `serve`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.yaml");
    std::fs::write(&path, format!("listen: \"0.0.0.0:{}\"\n{provider}", free_port())).unwrap();
    let path_s = path.to_str().unwrap();
    let (code, out) = modelgate(&["config", "validate", "-c", path_s]);
    assert!(
        code.is_some_and(|c| c != 0),
        "validate accepted an open relay ({code:?}): {out}"
    );
    assert!(out.contains("keys") && out.contains("allow_unauthenticated"), "{out}");
    let started = Instant::now();
    let (code, out) = modelgate(&["serve", "-c", path_s]);
    assert!(
        code.is_some_and(|c| c != 0),
        "serve started an open relay ({code:?}): {out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused, but slowly: {:?}",
        started.elapsed()
    );
    assert!(out.contains("keys") && out.contains("allow_unauthenticated"), "{out}");

    // Opted in: starts.
    let gw = Gateway::start_async(
        &format!("listen: \"0.0.0.0:{{port}}\"\nallow_unauthenticated: true\n{provider}"),
        &[],
    )
    .await;
    drop(gw);
    // With gateway keys: starts.
    let keys = format!("keys:\n  - {{name: alice, key_sha256: \"{}\"}}\n", hash(ALICE));
    let gw = Gateway::start_async(&format!("listen: \"0.0.0.0:{{port}}\"\n{provider}{keys}"), &[]).await;
    drop(gw);

    // Pure passthrough-auth (no provider key): starts, and the admin
    // endpoints are not served on that listener without an admin key.
    let passthrough = format!(
        "listen: \"0.0.0.0:{{port}}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\"}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&passthrough, &[]).await;
    let c = client();
    let admin_calls = [
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/admin/errors"),
        ("PUT", "/admin/logging?level=trace"),
        ("POST", "/admin/circuits/reset"),
    ];
    for (method, path) in admin_calls {
        let r = c.request(method.parse().unwrap(), gw.url(path)).send().await.unwrap();
        let (status, kind, _) = error_of(r).await;
        assert_eq!((status, kind.as_str()), (404, "not_found_error"), "{method} {path}");
    }
    assert_eq!(c.get(gw.url("/health")).send().await.unwrap().status(), 200);
    assert!(
        !gw.logs().contains("log level set to trace"),
        "the refused PUT changed the level"
    );
    drop(gw);

    // With an admin key they answer, to that key only.
    let gw = Gateway::start_async(
        &format!(
            "listen: \"0.0.0.0:{{port}}\"\n{provider}{keys}admin_keys_sha256: [\"{}\"]\n",
            hash(ADMIN)
        ),
        &[],
    )
    .await;
    for (method, path) in admin_calls {
        let r = c.request(method.parse().unwrap(), gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without a key");
        let r = c
            .request(method.parse().unwrap(), gw.url(path))
            .header("x-api-key", ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method} {path} with the admin key");
    }
    assert_eq!(c.get(gw.url("/health")).send().await.unwrap().status(), 200);
}

// ---------------------------------------------------------------------------
// 2. Quick stops
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_an_idle_gateway_at_once_and_a_busy_one_when_its_stream_ends() {
    let up = MockUpstream::start().await;
    // grace_period left at its default (900 s).
    let yaml = format!(
        "listen: \"{{listen}}\"\nstate: {{path: \"{{dir}}/usage.db\"}}\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\n",
        up.base_url()
    );

    // Idle: a request just before, then SIGTERM.
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    up.push(Reply::message("claude-sonnet-4-5", "ok"));
    let r = client()
        .post(gw.url("/v1/messages"))
        .body(anthropic_body("claude-sonnet-4-5", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let db = gw.dir.path().join("usage.db");
    assert!(gw.signal("TERM"));
    let exited = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(5)));
    assert!(
        exited.is_some_and(|s| s.success()),
        "an idle gateway did not exit 0 within 5 s of SIGTERM: {exited:?}\n{}",
        gw.logs()
    );
    let rows = read_ledger(&db).unwrap();
    assert_eq!(rows.len(), 1, "the last request was flushed to the ledger: {rows:?}");
    assert_eq!(rows[0].model, "claude-sonnet-4-5");

    // Busy: a stream open across the SIGTERM.
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    let (reply, gate) = gated_sse_message("claude-sonnet-4-5", &["still ", "streaming"]);
    up.push(reply);
    let r = client()
        .post(gw.url("/v1/messages"))
        .body(anthropic_body("claude-sonnet-4-5", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next()).await.unwrap().unwrap().unwrap();
    let mut text = String::from_utf8_lossy(&first).into_owned();
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(gw.signal("TERM"));
    // Pingora has stopped accepting and entered its grace period...
    let mut in_grace = false;
    for _ in 0..200 {
        if gw.logs().contains("grace period") {
            in_grace = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(in_grace, "no grace period began:\n{}", gw.logs());
    // ...and stays up while the stream runs.
    let early = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_millis(500)));
    assert!(early.is_none(), "exited with a stream open: {early:?}");
    gate.open();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next()).await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events = parse_sse(&text);
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"), "{text}");
    assert!(text.contains("streaming"), "{text}");
    let exited = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(5)));
    assert!(
        exited.is_some_and(|s| s.success()),
        "did not exit 0 within 5 s of its last stream ending: {exited:?}\n{}",
        gw.logs()
    );
    assert_eq!(read_ledger(&gw.dir.path().join("usage.db")).unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// 3. 429 cool-downs per model
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_429_cools_down_only_the_model_it_was_for() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\nmax_retries: 0\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    up.push(Reply::error(429, "rate_limit_error", "Number of requests exceeded").with_header("retry-after", "7"));
    let post = |model: &str| {
        client()
            .post(gw.url("/v1/messages"))
            .body(anthropic_body(model, false))
            .send()
    };
    let throttled_at = Instant::now();
    let r = post("claude-opus-x").await.unwrap();
    assert_eq!(r.status(), 429, "max_retries 0: relayed");
    assert_eq!(r.headers()["retry-after"], "7");

    // A second Opus request waits out the cool-down...
    let opus = tokio::spawn(post("claude-opus-x"));
    // ...while Haiku on the same account goes at once.
    let started = Instant::now();
    let r = post("claude-haiku-x").await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(took < Duration::from_secs(3), "haiku held up by opus's 429: {took:?}");
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "the second opus request is still waiting");
    assert_eq!(seen[1].json()["model"], "claude-haiku-x");

    let status = status_json(&gw).await;
    let circuits = status["circuits"].as_array().unwrap();
    assert_eq!(circuits.len(), 1, "{status}");
    assert_eq!(circuits[0]["state"], "cooling_down", "{status}");
    let cooling = circuits[0]["cooling_down"].as_array().unwrap();
    assert_eq!(cooling.len(), 1, "{status}");
    assert_eq!(cooling[0]["model"], "claude-opus-x", "{status}");

    let r = tokio::time::timeout(Duration::from_secs(20), opus)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        throttled_at.elapsed() >= Duration::from_secs(6),
        "opus went before its cool-down ended: {:?}",
        throttled_at.elapsed()
    );
    assert_eq!(up.request_count(), 3);
}

// ---------------------------------------------------------------------------
// 4. Translated streams cut short are metered
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_translated_stream_the_client_leaves_is_metered() {
    let up = MockUpstream::start().await;
    let chunk = |delta: Value| {
        SseStep::Chunk(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
        ))
    };
    let mut steps = vec![chunk(json!({"role": "assistant", "content": ""}))];
    let words = "The quick brown fox jumps over the lazy dog. ".repeat(8);
    for _ in 0..40 {
        steps.push(chunk(json!({ "content": words })));
        steps.push(SseStep::Delay(Duration::from_millis(100)));
    }
    // No usage chunk yet; the upstream stays open until the mock is dropped.
    steps.push(SseStep::Gate(Gate::new()));
    up.push(Reply::sse(steps));
    let yaml = format!(
        "listen: \"{{listen}}\"\nping_interval: 100ms\nstate: {{path: \"{{dir}}/usage.db\"}}\ndefault_provider: oai\nproviders:\n  oai: {{type: openai, api_base: \"{}/v1\", api_key: sk-openai}}\nkeys:\n  - name: alice\n    key_sha256: \"{}\"\n    budget: {{usd: 10, period: total}}\n",
        up.base_url(),
        hash(ALICE)
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let prompt = "Summarise this for me please. ".repeat(1400);
    let body = json!({"model": "gpt-4o", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": prompt}]})
        .to_string();
    let c = client();
    let r = c
        .post(gw.url("/v1/messages"))
        .header("x-api-key", ALICE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    for _ in 0..100 {
        if text.matches("event: content_block_delta").count() >= 2 {
            break;
        }
        let next = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
        text.push_str(&String::from_utf8_lossy(&next.unwrap().unwrap()));
    }
    assert!(text.matches("event: content_block_delta").count() >= 2, "{text}");
    // The client leaves mid-answer.
    drop(stream);
    drop(c);

    let rows = ledger_rows(&gw.dir.path().join("usage.db"), 1).await;
    let row = &rows[0];
    assert!(row.input_tokens > 0, "{row:?}");
    assert!(row.output_tokens > 0, "{row:?}");
    assert!(row.cost_usd > 0.0, "a cut-short answer priced at $0: {row:?}");
    let u = usage(&gw.url(""), ALICE).await;
    assert_eq!(u["usage"]["requests"], 1, "{u}");
    assert!(u["usage"]["spend_usd"].as_f64().unwrap() > 0.0, "{u}");
    assert!(u["usage"]["tokens"]["output"].as_u64().unwrap() > 0, "{u}");
}

// ---------------------------------------------------------------------------
// 5. Probe slots
// ---------------------------------------------------------------------------

async fn circuit_state(gw: &Gateway) -> String {
    let s = status_json(gw).await;
    s["circuits"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(|c| c["state"].as_str())
        .unwrap_or("none")
        .to_string()
}

async fn wait_circuit(gw: &Gateway, want: &str) {
    let mut last = String::new();
    for _ in 0..250 {
        last = circuit_state(gw).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("circuit never became {want} (last {last}):\n{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_slot_taken_for_a_request_never_sent_is_released() {
    let up = MockUpstream::start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    up.set_default(Reply::script(move |rec| {
        if rec.path().ends_with("/hc") {
            let status = if h.load(Ordering::SeqCst) { 200 } else { 500 };
            return Reply::json(status, "{}");
        }
        support::model::openai(rec)
    }));
    // An active health check trips the circuit, then (once it passes)
    // lets the next request probe at once, instead of after 30 s.
    let yaml = format!(
        "listen: \"{{listen}}\"\ntimeout: 5s\ndefault_provider: oai\nproviders:\n  oai:\n    type: openai\n    api_base: \"{}/v1\"\n    api_key: sk-openai\n    health_check: {{type: http, path: /hc, interval: 1s}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    wait_circuit(&gw, "open").await;
    healthy.store(true, Ordering::SeqCst);
    wait_circuit(&gw, "half_open_pending").await;

    // This request takes the probe slot, but its Chat Completions request
    // cannot be built (`messages` is not a list): it is never sent.
    let sent_before = up
        .requests()
        .iter()
        .filter(|r| r.path().ends_with("/chat/completions"))
        .count();
    let r = client()
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"gpt-4o","max_tokens":10,"messages":5}"#)
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(r).await;
    assert_eq!((status, kind.as_str()), (400, "invalid_request_error"), "{message}");
    assert_eq!(
        circuit_state(&gw).await,
        "half_open_pending",
        "the slot went back: the next request probes"
    );

    let r = client()
        .post(gw.url("/v1/messages"))
        .body(
            json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "say pong"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a stuck half-open circuit refuses every request");
    let v: Value = r.json().await.unwrap();
    let text = v["content"].as_array().unwrap().iter().find(|b| b["type"] == "text");
    assert_eq!(text.map(|b| &b["text"]), Some(&json!("pong")), "{v}");
    let sent = up
        .requests()
        .iter()
        .filter(|r| r.path().ends_with("/chat/completions"))
        .count();
    assert_eq!(sent, sent_before + 1);
    assert_eq!(circuit_state(&gw).await, "closed");
}

// ---------------------------------------------------------------------------
// 6. passthrough_mode under gateway keys
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_mode_obeys_key_allowlists_and_rates_and_never_resends_a_post() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ntimeout: 5s\nretry_delay: 10ms\npassthrough_mode: true\ndefault_provider: up\nproviders:\n  up: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\nkeys:\n  - {{name: free, key_sha256: \"{}\"}}\n  - {{name: narrow, key_sha256: \"{}\", models: [\"claude-haiku-*\"]}}\n  - {{name: slow, key_sha256: \"{}\", rate_limit: {{rpm: 1}}}}\n",
        up.base_url(),
        hash("mg-free"),
        hash("mg-narrow"),
        hash("mg-slow")
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let c = client();
    let get = |path: &str, key: &str| c.get(gw.url(path)).header("x-api-key", key).send();

    up.push(Reply::json(200, r#"{"data":[]}"#));
    let r = get("/v1/files", "mg-free").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"data":[]}"#);
    let got = &up.wait_requests(1, WAIT).await[0];
    assert_eq!((got.method.as_str(), got.path()), ("GET", "/v1/files"));
    assert_eq!(got.header("x-api-key").as_deref(), Some("sk-test"));

    let (status, kind, message) = error_of(get("/v1/files", "mg-narrow").await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (403, "permission_error"), "{message}");
    assert_eq!(up.request_count(), 1, "a refused request never goes upstream");

    up.push(Reply::json(200, r#"{"data":[]}"#));
    assert_eq!(get("/v1/files", "mg-slow").await.unwrap().status(), 200);
    let (status, kind, _) = error_of(get("/v1/files", "mg-slow").await.unwrap()).await;
    assert_eq!(
        (status, kind.as_str()),
        (429, "rate_limit_error"),
        "rpm 1 counts passthrough calls"
    );
    assert_eq!(up.request_count(), 2);

    // A POST the upstream may have acted on is never sent twice (a
    // resend would meet the mock's default 200).
    up.clear_requests();
    up.push(Reply::error(503, "api_error", "Service unavailable"));
    let r = c
        .post(gw.url("/v1/messages/batches"))
        .header("x-api-key", "mg-free")
        .body(r#"{"requests":[]}"#)
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(r).await;
    assert_eq!((status, kind.as_str()), (503, "api_error"), "the 503 is relayed");
    // Any retry would have come before the answer was committed.
    assert_eq!(up.request_count(), 1, "the POST went upstream exactly once");

    // A GET is retried.
    up.clear_requests();
    up.push(Reply::error(503, "api_error", "Service unavailable"));
    up.push(Reply::json(200, r#"{"id":"file_abc"}"#));
    let r = get("/v1/files/abc", "mg-free").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"id":"file_abc"}"#);
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{:?}", seen.iter().map(|r| &r.uri).collect::<Vec<_>>());
    assert!(seen.iter().all(|r| r.path() == "/v1/files/abc"));
}

// ---------------------------------------------------------------------------
// 7. Redis holds
// ---------------------------------------------------------------------------

/// A reply from Redis (RESP2), as much as these tests need.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Resp>),
}

impl Resp {
    fn text(&self) -> String {
        match self {
            Resp::Simple(s) | Resp::Error(s) | Resp::Bulk(Some(s)) => s.clone(),
            Resp::Int(i) => i.to_string(),
            other => panic!("not text: {other:?}"),
        }
    }
}

fn read_resp(r: &mut impl BufRead) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("redis: read");
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().unwrap()),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                return Resp::Bulk(None);
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).expect("redis: read bulk");
            buf.truncate(n as usize);
            Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
        }
        "*" => {
            let n: i64 = rest.parse().unwrap();
            Resp::Array((0..n.max(0)).map(|_| read_resp(r)).collect())
        }
        _ => panic!("redis: unexpected reply {line:?}"),
    }
}

/// One command on a fresh connection (blocking; 10 s read timeout).
fn redis(port: u16, args: &[&str]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("redis: connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).expect("redis: write");
    read_resp(&mut BufReader::new(s))
}

async fn redis_async(port: u16, args: &[&str]) -> Resp {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis(port, &args)
    })
    .await
    .unwrap()
}

fn spent(port: u16, key: &str) -> i64 {
    match redis(port, &["HGET", key, "spent"]) {
        Resp::Bulk(None) => 0,
        r => r.text().parse().unwrap(),
    }
}

/// EVALSHA calls Redis has executed so far.
fn evalsha_calls(port: u16) -> u64 {
    let info = redis(port, &["INFO", "commandstats"]).text();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_budget_holds_never_outlive_their_request() {
    let Some(server) = RedisServer::start() else { return };
    let port = server.port;
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5", "ok"));
    let yaml = format!(
        "listen: \"{{listen}}\"\nstate: {{backend: redis, redis_url: \"{}\", path: \"{{dir}}/usage.db\"}}\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\nkeys:\n  - name: carol\n    key_sha256: \"{}\"\n    budget: {{usd: 100, period: total}}\n",
        server.url(),
        up.base_url(),
        hash("mg-carol")
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let post = || {
        client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", "mg-carol")
            .body(anthropic_body("claude-sonnet-4-5", false))
            .send()
    };
    // A first request loads the scripts and names the period's keys.
    let r = post().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let Resp::Array(keys) = redis_async(port, &["KEYS", "modelgate:spend:key:carol:*"]).await else {
        panic!("KEYS")
    };
    assert_eq!(keys.len(), 1, "{keys:?}");
    let spend_key = keys[0].text();
    let holds_key = spend_key.replacen(":spend:", ":holds:", 1);
    let cost = tokio::task::spawn_blocking({
        let k = spend_key.clone();
        move || spent(port, &k)
    })
    .await
    .unwrap();
    assert!(cost > 0, "the first request was charged");
    let zcard = |p| {
        let k = holds_key.clone();
        async move { redis_async(p, &["ZCARD", k.as_str()]).await }
    };
    assert_eq!(zcard(port).await, Resp::Int(0), "settled: no hold left");

    // (a) Redis stalls past the gateway's 1.5 s: the admission fails closed.
    let calls_before = tokio::task::spawn_blocking(move || evalsha_calls(port)).await.unwrap();
    assert_eq!(
        redis_async(port, &["CLIENT", "PAUSE", "2500"]).await,
        Resp::Simple("OK".into())
    );
    let r = post().await.unwrap();
    let (status, kind, _) = error_of(r).await;
    assert_eq!(
        (status, kind.as_str()),
        (529, "overloaded_error"),
        "budgets fail closed"
    );
    // Blocks until the pause is over; the stalled admission then runs.
    assert_eq!(redis_async(port, &["PING"]).await, Resp::Simple("PONG".into()));
    let mut state = (0, 0, Resp::Int(-1));
    let mut released = false;
    for _ in 0..100 {
        let k = spend_key.clone();
        let (calls, now) = tokio::task::spawn_blocking(move || (evalsha_calls(port), spent(port, &k)))
            .await
            .unwrap();
        state = (calls, now, zcard(port).await);
        if calls > calls_before && now == cost && state.2 == Resp::Int(0) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "(evalsha calls, spent, holds) = {state:?}; before: ({calls_before}, {cost}, 0)\n{}",
        gw.logs()
    );

    // (b) A lapsed hold (its request never settled) is swept at the next admission.
    let member = "0000000000000001:5000000";
    assert_eq!(
        redis_async(port, &["ZADD", holds_key.as_str(), "1", member]).await,
        Resp::Int(1)
    );
    assert_eq!(
        redis_async(port, &["HINCRBY", spend_key.as_str(), "spent", "5000000"]).await,
        Resp::Int(cost + 5_000_000)
    );
    // Redis is back; the gateway uses it again once its background PING is
    // answered (every 0.5 s). Until then budgets fail closed, charging nothing.
    let mut status = 0;
    for _ in 0..50 {
        let r = post().await.unwrap();
        status = r.status().as_u16();
        r.text().await.unwrap();
        if status != 529 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "{}", gw.logs());
    let k = spend_key.clone();
    let now = tokio::task::spawn_blocking(move || spent(port, &k)).await.unwrap();
    assert_eq!(now, 2 * cost, "the lapsed hold was credited back");
    assert_eq!(
        redis_async(port, &["ZSCORE", holds_key.as_str(), member]).await,
        Resp::Bulk(None)
    );
    assert_eq!(zcard(port).await, Resp::Int(0));
}

// ---------------------------------------------------------------------------
// 8. Fast mode pricing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fast_mode_is_priced_from_the_decoded_speed_and_the_request_that_answered() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-opus-4-6", "ok"));
    let yaml = format!(
        "listen: \"{{listen}}\"\nstate: {{path: \"{{dir}}/usage.db\"}}\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\nroutes:\n  - {{header: {{name: x-route, value: slow}}, provider: a, model: claude-opus-4-8}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    // `"f\u0061st"` is "fast" once decoded.
    let body = r#"{"model":"claude-opus-4-6","speed":"f\u0061st","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = client().post(gw.url("/v1/messages")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let got = &up.wait_requests(1, WAIT).await[0];
    assert!(
        got.header_all("anthropic-beta")
            .iter()
            .any(|v| v.contains("fast-mode-2026-02-01")),
        "{:?}",
        got.headers
    );
    let rows = ledger_rows(&gw.dir.path().join("usage.db"), 1).await;
    assert!(
        (rows[0].cost_usd - 6.0 * OPUS_46_STANDARD).abs() < 1e-9,
        "fast: 6x ${OPUS_46_STANDARD}: {:?}",
        rows[0]
    );

    // Routed to a model without fast mode: `speed` goes, standard price.
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-route", "slow")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let got = &up.wait_requests(2, WAIT).await[1];
    let sent = got.json();
    assert_eq!(sent["model"], "claude-opus-4-8");
    assert!(sent.get("speed").is_none(), "{sent}");
    assert!(
        !got.header_all("anthropic-beta").iter().any(|v| v.contains("fast-mode")),
        "{:?}",
        got.headers
    );
    let rows = ledger_rows(&gw.dir.path().join("usage.db"), 2).await;
    assert_eq!(rows[1].upstream_model.as_deref(), Some("claude-opus-4-8"));
    assert!(
        (rows[1].cost_usd - OPUS_46_STANDARD).abs() < 1e-9,
        "standard ${OPUS_46_STANDARD}: {:?}",
        rows[1]
    );
}

// ---------------------------------------------------------------------------
// 9. Trace logs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_carry_no_credentials() {
    const PROVIDER_KEY: &str = "sk-ant-provider-SECRET123";
    let up = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: {PROVIDER_KEY}}}\nkeys:\n  - {{name: alice, key_sha256: \"{}\"}}\nadmin_keys_sha256: [\"{}\"]\n",
        up.base_url(),
        hash(ALICE),
        hash(ADMIN)
    );
    let gw = Gateway::start_async(&yaml, &[("RUST_LOG", "trace")]).await;
    let c = client();
    // Raised through the admin API too (already trace from RUST_LOG).
    let r = c
        .put(gw.url("/admin/logging?level=trace"))
        .header("x-api-key", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    up.push(Reply::message("claude-sonnet-4-5", "ok"));
    up.push(Reply::sse_message("claude-sonnet-4-5", &["o", "k"]));
    for (stream, auth) in [(false, "x-api-key"), (true, "authorization")] {
        let value = if auth == "authorization" {
            format!("Bearer {ALICE}")
        } else {
            ALICE.to_string()
        };
        let r = c
            .post(gw.url("/v1/messages"))
            .header(auth, value)
            .body(anthropic_body("claude-sonnet-4-5", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    let got = up.wait_requests(2, WAIT).await;
    assert_eq!(got[0].header("x-api-key").as_deref(), Some(PROVIDER_KEY));
    wait_idle_admin(&gw).await;
    let logs = gw.logs();
    assert!(logs.contains("TRACE"), "trace logging was on:\n{logs}");
    assert!(!logs.contains("SECRET123"), "the provider key reached the log:\n{logs}");
    assert!(!logs.contains(ALICE), "the gateway key reached the log:\n{logs}");
    assert!(!logs.contains(ADMIN), "the admin key reached the log");
}

/// [`wait_idle`] with the admin key.
async fn wait_idle_admin(gw: &Gateway) {
    for _ in 0..250 {
        let s: Value = client()
            .get(gw.url("/status"))
            .header("x-api-key", ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["counters"]["in_flight"] == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("requests still in flight after 5 s");
}

// ---------------------------------------------------------------------------
// 10. Refused gateway credentials
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_401_on_the_gateways_credential_fails_over_and_is_worded_for_the_operator() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::script(|rec| {
        if rec.header("x-api-key").as_deref() == Some("acct-a") {
            Reply::error(401, "authentication_error", "invalid x-api-key")
        } else {
            Reply::message("claude-sonnet-4-5", "ok")
        }
    }));
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: up\nproviders:\n  up:\n    type: anthropic\n    api_base: \"{}\"\n    keys: [{{api_key: acct-a}}, {{api_key: acct-b}}]\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    // Sessions stick to a ranked account: find one ranked `acct-a` first.
    let mut failed_over = false;
    for i in 0..20 {
        up.clear_requests();
        let r = client()
            .post(gw.url("/v1/messages"))
            .header("x-claude-code-session-id", format!("3f1e0c1a-0000-4000-8000-{i:012}"))
            .body(anthropic_body("claude-sonnet-4-5", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "session {i}");
        r.text().await.unwrap();
        let keys: Vec<Option<String>> = up.requests().iter().map(|r| r.header("x-api-key")).collect();
        if keys.first().is_some_and(|k| k.as_deref() == Some("acct-a")) {
            assert_eq!(keys, [Some("acct-a".to_string()), Some("acct-b".to_string())]);
            failed_over = true;
            break;
        }
        assert_eq!(keys, [Some("acct-b".to_string())]);
    }
    assert!(failed_over, "no session ranked acct-a first in 20 tries");
    assert!(gw.logs().contains("up#1"), "the refusal is logged with its account");

    // One account, refused: a 502 for the operator, not a 401 for the developer.
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: solo\nproviders:\n  solo: {{type: anthropic, api_base: \"{}\", api_key: acct-a}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    up.clear_requests();
    let r = client()
        .post(gw.url("/v1/messages"))
        .body(anthropic_body("claude-sonnet-4-5", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers().get("x-should-retry").map(|v| v.to_str().unwrap()),
        Some("false")
    );
    let (status, kind, message) = error_of(r).await;
    assert_eq!((status, kind.as_str()), (502, "api_error"), "{message}");
    assert!(
        message.contains("refused the gateway's credential") && message.contains("`solo`"),
        "{message}"
    );
    assert!(!message.contains("/login"), "{message}");
    assert_eq!(up.request_count(), 1, "a refused credential is not asked again");

    // Passthrough-auth: the client's own credential; its 401 is relayed verbatim.
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: pass\nproviders:\n  pass: {{type: anthropic, api_base: \"{}\"}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "acct-a")
        .body(anthropic_body("claude-sonnet-4-5", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.text().await.unwrap(),
        anthropic_error_json("authentication_error", "invalid x-api-key")
    );
}

// ---------------------------------------------------------------------------
// 11. Response cache
// ---------------------------------------------------------------------------

async fn cache_entries(gw: &Gateway) -> u64 {
    let v: Value = client()
        .get(gw.url("/admin/cache"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["response"]["entries"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_response_cache_keeps_only_whole_streams_and_keys_by_route() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-a}}\n  b: {{type: anthropic, api_base: \"{}\", api_key: sk-b}}\nroutes:\n  - {{header: {{name: x-route, value: b}}, provider: b}}\ncache:\n  response: {{enabled: true}}\n",
        a.base_url(),
        b.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;

    // A stream that ends in an in-band error is not kept.
    let mut failed = anthropic_sse_chunks("claude-sonnet-4-5", &["part"]);
    failed.truncate(4);
    failed.push(sse_event(
        "error",
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ));
    a.push(Reply::sse(failed.clone()));
    a.push(Reply::sse(failed));
    let body = anthropic_body("claude-sonnet-4-5", true);
    for i in 0..2 {
        let r = client()
            .post(gw.url("/v1/messages"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("x-modelgate-cache").is_none(),
            "request {i} was a cache hit"
        );
        assert!(r.text().await.unwrap().contains("event: error"));
        wait_idle(&gw).await;
    }
    assert_eq!(a.request_count(), 2, "the failed stream was served from the cache");
    assert_eq!(cache_entries(&gw).await, 0);

    // The same body routed elsewhere by a header is its own entry.
    let body = anthropic_body("claude-haiku-4-5", false);
    a.push(Reply::message("claude-haiku-4-5", "from a"));
    b.push(Reply::message("claude-haiku-4-5", "from b"));
    let r = client()
        .post(gw.url("/v1/messages"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("from a"));
    wait_idle(&gw).await;
    assert_eq!(cache_entries(&gw).await, 1, "a whole answer is kept");
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-route", "b")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-modelgate-cache").is_none(), "a hit across routes");
    assert!(r.text().await.unwrap().contains("from b"));
    assert_eq!(b.request_count(), 1);
    // Each route's entry now answers its own requests.
    wait_idle(&gw).await;
    let r = client().post(gw.url("/v1/messages")).body(body).send().await.unwrap();
    assert_eq!(r.headers()["x-modelgate-cache"], "hit");
    assert!(r.text().await.unwrap().contains("from a"));
    assert_eq!(a.request_count(), 3);
}

// ---------------------------------------------------------------------------
// 12. Config output
// ---------------------------------------------------------------------------

#[test]
fn config_export_and_diff_hide_the_redis_and_store_passwords_and_broken_references_hide_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = |port: u16| {
        format!(
            "listen: 127.0.0.1:1\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_key: sk-test}}\nstate:\n  backend: redis\n  redis_url: \"redis://:hunter2@127.0.0.1:{port}/0\"\nstore:\n  url: \"postgres://mg:hunter3@db{port}.internal/mg?sslmode=require\"\n"
        )
    };
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, config(6379)).unwrap();
    std::fs::write(&b, config(6380)).unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    for format in ["yaml", "json"] {
        let (code, out) = modelgate(&["config", "export", "--format", format, "-c", a]);
        assert_eq!(code, Some(0), "{out}");
        assert!(!out.contains("hunter2") && !out.contains("hunter3"), "{out}");
        assert!(out.contains("redis://:***@127.0.0.1:6379/0"), "{out}");
        assert!(
            out.contains("postgres://mg:***@db6379.internal/mg?sslmode=require"),
            "{out}"
        );
    }
    let (code, out) = modelgate(&["config", "diff", a, b]);
    assert!(code.is_some(), "{out}");
    assert!(!out.contains("hunter2") && !out.contains("hunter3"), "{out}");
    assert!(out.contains("state.redis_url") && out.contains("***"), "{out}");
    assert!(out.contains("store.url"), "{out}");

    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "listen: 127.0.0.1:1\ndefault_provider: a\nproviders:\n  a: {type: anthropic, api_key: \"sk-ant-SECRET${\"}\n",
    )
    .unwrap();
    let (code, out) = modelgate(&["config", "validate", "-c", broken.to_str().unwrap()]);
    assert!(code.is_some_and(|c| c != 0), "{out}");
    assert!(out.contains("providers.a.api_key"), "{out}");
    assert!(!out.contains("SECRET"), "{out}");
}

// ---------------------------------------------------------------------------
// 13. Budgets across a graceful upgrade
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn after_an_upgrade_the_budget_counts_what_the_old_process_records_while_draining() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\nupgrade_sock: \"{{dir}}/upgrade.sock\"\npid_file: \"{{dir}}/modelgate.pid\"\nstate: {{path: \"{{dir}}/usage.db\"}}\nadmin_keys_sha256: [\"{}\"]\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\nkeys:\n  - name: dana\n    key_sha256: \"{}\"\n    budget: {{usd: 10, period: total}}\n",
        hash(ADMIN),
        up.base_url(),
        hash("mg-dana")
    );
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    let old_pid = gw.child.id();

    // A stream on the old process, held open across the upgrade.
    let (reply, gate) = gated_sse_message("claude-sonnet-4-5", &["drained ", "answer"]);
    up.push(reply);
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "mg-dana")
        .body(anthropic_body("claude-sonnet-4-5", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next()).await.unwrap().unwrap().unwrap();
    let mut text = String::from_utf8_lossy(&first).into_owned();

    let sock = gw.dir.path().join("upgrade.sock");
    let _ = std::fs::remove_file(&sock);
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .args(["serve", "-u", "-c"])
            .arg(gw.config_path())
            .current_dir(gw.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(gw.dir.path().join("new.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let new_pid = u64::from(procs.0[0].id());
    let mut ready = false;
    for _ in 0..400 {
        if sock.exists() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "the new process never opened the upgrade socket");
    assert!(gw.signal("QUIT"));

    // The old process stops accepting after its hand-over window; from then
    // on every connection reaches the new one.
    let mut closed = false;
    for _ in 0..600 {
        if gw.logs().contains("grace period") {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(closed, "the old process never stopped accepting:\n{}", gw.logs());
    // One keep-alive connection to the new process, checked by its pid.
    let new_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut pid = 0;
    for _ in 0..200 {
        let s: Value = new_client
            .get(gw.url("/status"))
            .header("x-api-key", ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pid = s["pid"].as_u64().unwrap();
        if pid == new_pid {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(pid, new_pid, "the new process never answered (old pid {old_pid})");
    let before = usage(&gw.url(""), "mg-dana").await;
    assert_eq!(before["usage"]["requests"], 0, "{before}");

    // The old process finishes its stream and records it.
    gate.open();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next()).await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("event: message_stop"), "{text}");
    // It exits once drained (its ledger flushed): from here only the new
    // process can answer.
    let exited = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the drained old process did not exit 0: {exited:?}"
    );
    let mut counted = Value::Null;
    for _ in 0..100 {
        let r = new_client
            .get(gw.url("/v1/usage"))
            .header("x-api-key", "mg-dana")
            .send()
            .await
            .unwrap();
        counted = r.json().await.unwrap();
        if counted["usage"]["requests"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counted["usage"]["requests"],
        1,
        "the new process never counted the old one's stream: {counted}\nold:\n{}\nnew:\n{}",
        gw.logs(),
        std::fs::read_to_string(gw.dir.path().join("new.log")).unwrap_or_default()
    );
    assert!(counted["usage"]["spend_usd"].as_f64().unwrap() > 0.0, "{counted}");
}

// ---------------------------------------------------------------------------
// 14. Header values in records
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn header_values_kept_in_records_are_bounded() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5", "ok"));
    let yaml = format!(
        "listen: \"{{listen}}\"\nstate: {{path: \"{{dir}}/usage.db\"}}\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let session = "s".repeat(10 * 1024);
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-claude-code-session-id", &session)
        .body(anthropic_body("claude-sonnet-4-5", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let rows = ledger_rows(&gw.dir.path().join("usage.db"), 1).await;
    let kept = rows[0].session_id.clone().unwrap_or_default();
    assert!(kept.len() <= 256, "session_id kept {} bytes", kept.len());
    assert!(!kept.is_empty() && session.starts_with(&kept), "{kept}");
    assert_eq!(rows[0].status, 200);
}
