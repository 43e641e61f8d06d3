//! Failover through the real binary with fault-injecting mock upstreams: a
//! 429 or a dead provider never reaches the developer while another
//! candidate can answer; the client's own errors are never retried; a
//! session sticks to one account; circuits keep traffic off a dead account.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const BODY: &str =
    r#"{"model":"claude-opus-4-8","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn two_providers(primary: &str, fallback: &str, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ntimeout: 1s\nconnect_timeout: 1s\nretry_delay: 20ms\ndefault_provider: primary\nproviders:\n  primary: {{type: anthropic, api_base: \"{primary}\", api_key: sk-primary}}\n  backup: {{type: anthropic, api_base: \"{fallback}\", api_key: sk-backup}}\nroutes:\n  - {{match: 'claude-*', provider: primary, fallbacks: [backup]}}\n{extra}"
    )
}

async fn post(gw: &Gateway, body: &'static str) -> reqwest::Response {
    client().post(gw.url("/v1/messages")).body(body).send().await.unwrap()
}

fn assert_clean_stream(text: &str) {
    let events = parse_sse(text);
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"), "{text}");
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"), "{text}");
    assert!(!events.iter().any(|(n, _)| n == "error"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_429_then_fallback_succeeds() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.push(Reply::error(429, "rate_limit_error", "Number of requests exceeded").with_header("retry-after", "1"));
    b.push(Reply::sse_message("claude-opus-4-8", &["from ", "backup"]));
    let gw = Gateway::start_async(&two_providers(&a.base_url(), &b.base_url(), ""), &[]).await;
    let r = post(&gw, BODY).await;
    assert_eq!(r.status(), 200);
    assert_clean_stream(&r.text().await.unwrap());
    assert_eq!(a.request_count(), 1);
    assert_eq!(
        b.wait_requests(1, WAIT).await[0].header("x-api-key").as_deref(),
        Some("sk-backup")
    );
    assert!(gw.logs().contains("attempt 1 to `primary` answered 429"));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_hanging_primaries_fail_over() {
    let b = MockUpstream::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start_async(&two_providers(&dead, &b.base_url(), ""), &[]).await;
    b.push(Reply::sse_message("claude-opus-4-8", &["ok"]));
    let r = post(&gw, BODY).await;
    assert_eq!(r.status(), 200);
    assert_clean_stream(&r.text().await.unwrap());

    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.push(Reply::Stall {
        hold: Duration::from_secs(3),
    });
    b.push(Reply::sse_message("claude-opus-4-8", &["ok"]));
    let gw = Gateway::start_async(&two_providers(&a.base_url(), &b.base_url(), ""), &[]).await;
    let r = post(&gw, BODY).await;
    assert_eq!(r.status(), 200, "a first-byte timeout (1 s) moves on");
    assert_clean_stream(&r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_dies_before_its_first_event_is_retried() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.push(Reply::sse(vec![SseStep::Abort]));
    b.push(Reply::sse_message("claude-opus-4-8", &["ok"]));
    let gw = Gateway::start_async(&two_providers(&a.base_url(), &b.base_url(), ""), &[]).await;
    let r = post(&gw, BODY).await;
    assert_eq!(r.status(), 200);
    assert_clean_stream(&r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_are_final() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let body = anthropic_error_json(
        "invalid_request_error",
        "messages: text content blocks must be non-empty",
    );
    a.push(Reply::json(400, body.clone()));
    let gw = Gateway::start_async(&two_providers(&a.base_url(), &b.base_url(), ""), &[]).await;
    let r = post(&gw, BODY).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), body, "relayed verbatim");
    assert_eq!(b.request_count(), 0, "no failover on the client's own error");
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_return_the_last_upstream_error() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let overloaded = anthropic_error_json("overloaded_error", "Overloaded");
    a.set_default(Reply::json(529, overloaded.clone()).with_header("x-should-retry", "true"));
    b.set_default(Reply::json(529, overloaded.clone()).with_header("request-id", "req_backup_529"));
    let gw = Gateway::start_async(&two_providers(&a.base_url(), &b.base_url(), "max_retries: 1\n"), &[]).await;
    let r = post(&gw, BODY).await;
    assert_eq!(r.status(), 529);
    assert_eq!(
        r.headers()["request-id"],
        "req_backup_529",
        "the last upstream's answer"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert_eq!(
        a.request_count() + b.request_count(),
        2,
        "max_retries bounds the attempts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_account_retry_after_a_5xx() {
    let a = MockUpstream::start().await;
    a.push(Reply::error(500, "api_error", "Internal server error"));
    a.push(Reply::sse_message("claude-opus-4-8", &["second try"]));
    let yaml = format!(
        "listen: \"{{listen}}\"\nretry_delay: 10ms\ndefault_provider: only\nproviders:\n  only: {{type: anthropic, api_base: \"{}\", api_key: k}}\n",
        a.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let r = post(&gw, BODY).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("second try"));
    assert_eq!(a.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn circuit_keeps_load_off_a_dead_primary() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Reply::error(503, "api_error", "upstream connect error"));
    b.set_default(Reply::message("claude-opus-4-8", "from backup"));
    let gw = Gateway::start_async(&two_providers(&a.base_url(), &b.base_url(), ""), &[]).await;
    let body = r#"{"model":"claude-opus-4-8","max_tokens":10,"messages":[]}"#;
    let c = client();
    let mut ok = 0;
    for _ in 0..4 {
        // 200 requests, 50 in flight at a time.
        let batch = (0..50).map(|_| c.post(gw.url("/v1/messages")).body(body).send());
        for r in join_all(batch).await {
            ok += usize::from(r.unwrap().status() == 200);
        }
    }
    assert_eq!(ok, 200, "every request succeeds");
    let seen = a.request_count();
    assert!(
        (5..200).contains(&seen),
        "the primary saw a few attempts before its circuit opened: {seen}"
    );
    for _ in 0..2 {
        let batch = (0..50).map(|_| c.post(gw.url("/v1/messages")).body(body).send());
        for r in join_all(batch).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    assert_eq!(
        a.request_count(),
        seen,
        "no attempts on an open circuit until its cool-down ends"
    );
    let status: Value = c.get(gw.url("/status")).send().await.unwrap().json().await.unwrap();
    let circuits = status["circuits"].as_array().unwrap();
    assert!(
        circuits
            .iter()
            .any(|c| c["account"] == "primary" && c["state"] == "open"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_stick_to_one_account_and_spread_by_weight() {
    let a = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: pool\nproviders:\n  pool:\n    type: anthropic\n    api_base: \"{}\"\n    keys:\n      - {{api_key: key-one, weight: 1}}\n      - {{api_key: key-two, weight: 1}}\n      - {{api_key: key-four, weight: 2}}\n",
        a.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let c = client();
    let body = r#"{"model":"claude-opus-4-8","max_tokens":10,"messages":[]}"#;
    for _ in 0..50 {
        let r = c
            .post(gw.url("/v1/messages"))
            .header("x-claude-code-session-id", "session-fixed")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let keys: std::collections::HashSet<String> = a.requests().iter().map(|r| r.header("x-api-key").unwrap()).collect();
    assert_eq!(keys.len(), 1, "one session, one account: {keys:?}");
    a.clear_requests();

    let sessions = 400;
    for i in 0..sessions {
        let r = c
            .post(gw.url("/v1/messages"))
            .header("x-claude-code-session-id", format!("s-{i}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let share = |k: &str| {
        a.requests()
            .iter()
            .filter(|r| r.header("x-api-key").as_deref() == Some(k))
            .count() as f64
            / sessions as f64
    };
    let (one, two, four) = (share("key-one"), share("key-two"), share("key-four"));
    assert!(
        (0.15..0.35).contains(&one) && (0.15..0.35).contains(&two),
        "{one} {two}"
    );
    assert!((0.40..0.60).contains(&four), "weight 2 of 4 carries about half: {four}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fast_mode_is_added_where_supported_and_dropped_elsewhere() {
    let a = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: anthropic\nproviders:\n  anthropic: {{type: anthropic, api_base: \"{}\", api_key: k}}\n",
        a.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let c = client();
    let send = |body: &'static str, beta: Option<&'static str>| {
        let mut r = c.post(gw.url("/v1/messages")).body(body);
        if let Some(b) = beta {
            r = r.header("anthropic-beta", b);
        }
        r.send()
    };
    // A `-fast` id: the base model, `speed: fast`, and the beta appended.
    let r = send(
        r#"{"model":"claude-opus-4-6-fast","max_tokens":5,"messages":[]}"#,
        Some("claude-code-20250219"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // `speed: fast` on a model without fast mode: dropped, standard speed.
    let r = send(
        r#"{"model":"claude-opus-4-8","speed":"fast","max_tokens":5,"messages":[]}"#,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Supported, beta already present: nothing to add, body untouched.
    let r = send(
        r#"{"model":"claude-opus-4-7","speed":"fast","max_tokens":5,"messages":[]}"#,
        Some("fast-mode-2026-02-01"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    let got = a.wait_requests(3, WAIT).await;
    assert_eq!(
        got[0].body_str(),
        r#"{"speed":"fast","model":"claude-opus-4-6","max_tokens":5,"messages":[]}"#
    );
    assert_eq!(
        got[0].header("anthropic-beta").as_deref(),
        Some("claude-code-20250219,fast-mode-2026-02-01")
    );
    assert_eq!(
        got[1].body_str(),
        r#"{"model":"claude-opus-4-8","max_tokens":5,"messages":[]}"#
    );
    assert_eq!(got[1].header("anthropic-beta"), None);
    assert_eq!(
        got[2].body_str(),
        r#"{"model":"claude-opus-4-7","speed":"fast","max_tokens":5,"messages":[]}"#
    );
    assert_eq!(got[2].header_all("anthropic-beta"), ["fast-mode-2026-02-01"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn active_health_check_opens_the_circuit_before_any_request() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Reply::error(503, "api_error", "down for maintenance"));
    b.set_default(Reply::message("claude-opus-4-8", "from backup"));
    let yaml = two_providers(&a.base_url(), &b.base_url(), "").replace(
        "api_key: sk-primary}",
        "api_key: sk-primary, health_check: {type: http, path: /v1/models, interval: 1s, expect_status: 200}}",
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let c = client();
    let mut open = false;
    for _ in 0..100 {
        let s: Value = c.get(gw.url("/status")).send().await.unwrap().json().await.unwrap();
        if s["circuits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["account"] == "primary" && c["state"] == "open")
        {
            open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(open, "the failed probe opened the circuit");
    let probe = &a.requests()[0];
    assert_eq!((probe.method.as_str(), probe.uri.as_str()), ("GET", "/v1/models"));
    assert_eq!(probe.header("x-api-key").as_deref(), Some("sk-primary"));
    for _ in 0..5 {
        let r = c
            .post(gw.url("/v1/messages"))
            .body(r#"{"model":"claude-opus-4-8","max_tokens":1,"messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        a.requests().iter().all(|r| r.method == "GET"),
        "no request traffic to an unhealthy provider"
    );
}
