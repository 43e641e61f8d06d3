//! Governance through the real binary: budgets (reservation, billing_error,
//! exact settlement after a stream), rpm/tpm limits with accurate
//! retry-after, the ledger across a restart, `/v1/usage`, the audit log
//! without secrets, and two gateways sharing one real redis-server.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::redis::RedisServer;
use support::*;

const ALICE: &str = "mg-aliceTestKey000000000000000000000000000001";
const PROVIDER_SECRET: &str = "sk-ant-api03-PROVIDERSECRETdonotlog0000000000";
/// What the mock's usage costs at claude-sonnet-4-5 list prices
/// (25 input, 12 output, 16384 cache read, 2048 cache write).
const COST: f64 = (25.0 * 3.0 + 12.0 * 15.0 + 16384.0 * 0.30 + 2048.0 * 3.75) / 1e6;

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn config(upstream: &str, key_extra: &str, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ngrace_period: 0s\nlog_level: debug\ndefault_provider: anthropic\nproviders:\n  anthropic: {{type: anthropic, api_base: \"{upstream}\", api_key: {PROVIDER_SECRET}}}\nkeys:\n  - name: alice\n    team: platform\n    key_sha256: \"{}\"\n{key_extra}{extra}",
        hash(ALICE)
    )
}

fn body(max_tokens: u64) -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":{max_tokens},"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

async fn post(gw: &Gateway, key: &str, body: String) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key)
        .header("x-claude-code-session-id", "3f1e0c1a-0000-4000-8000-000000000001")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn usage(gw: &Gateway) -> Value {
    let r = client()
        .get(gw.url("/v1/usage"))
        .header("authorization", format!("Bearer {ALICE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `/v1/usage` once `n` requests are counted. A relayed answer is settled
/// before its last byte leaves, but a request that ends early (an error, a
/// refusal) settles in the logging phase just after; wait for it, bounded.
async fn usage_after(gw: &Gateway, n: u64) -> Value {
    let mut u = usage(gw).await;
    for _ in 0..100 {
        if u["usage"]["requests"] == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        u = usage(gw).await;
    }
    u
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_blocks_overspend_and_settlement_is_exact() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    // $0.05 a day. Each answer costs ~$0.0129; each reservation (1,000
    // output tokens at $15/M plus the input estimate) ~$0.015.
    let gw = Gateway::start_async(
        &config(&up.base_url(), "    budget: {usd: 0.05, period: daily}\n", ""),
        &[],
    )
    .await;
    for i in 0..3 {
        let r = post(&gw, ALICE, body(1000)).await;
        assert_eq!(r.status(), 200, "request {i}");
        r.text().await.unwrap();
    }
    // $0.0386 spent: below $0.05, but not with another $0.015 reserved.
    let r = post(&gw, ALICE, body(1000)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-should-retry").as_deref(), Some("false"));
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "billing_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("daily budget of $0.05 for key `alice`") && msg.contains("resets at"),
        "{msg}"
    );
    assert_eq!(up.request_count(), 3, "the refused request never went upstream");
    // A small request still fits.
    let r = post(&gw, ALICE, body(10)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();

    let u = usage_after(&gw, 4).await;
    let spent = u["usage"]["spend_usd"].as_f64().unwrap();
    assert!((spent - (4.0 * COST * 10_000.0).round() / 10_000.0).abs() < 1e-9, "{u}");
    assert_eq!(u["usage"]["tokens"]["cache_read"], 4 * 16384);
    assert_eq!(u["usage"]["tokens"]["output"], 4 * 12);
    assert_eq!(u["usage"]["requests"], 4);
    assert_eq!(u["usage"]["budget_usd"], 0.05);
    assert_eq!(u["team"], "platform");
    let text = client()
        .get(gw.url("/v1/usage?format=text"))
        .header("x-api-key", ALICE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.starts_with("$0.05 of $0.05 daily"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rpm_and_tpm_limits_answer_429_with_an_accurate_retry_after() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let gw = Gateway::start_async(
        &config(
            &up.base_url(),
            "",
            "  - name: bob\n    key_sha256: \"BOB\"\n    rate_limit: {tpm: 10000}\nteams:\n  platform:\n    rate_limit: {rpm: 2}\nadmin_keys_sha256: [\"ADMIN\"]\n"
                .replace("BOB", &hash("mg-bob"))
                .replace("ADMIN", &hash("mg-admin"))
                .as_str(),
        ),
        &[],
    )
    .await;
    // rpm 2 on alice's team: the third request in the same instant waits ~30 s.
    for _ in 0..2 {
        let r = post(&gw, ALICE, body(10)).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    let r = post(&gw, ALICE, body(10)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((25..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&r, "anthropic-ratelimit-requests-limit").as_deref(), Some("2"));
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("0")
    );
    assert!(header(&r, "anthropic-ratelimit-requests-reset").unwrap().ends_with('Z'));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("team `platform`"),
        "{v}"
    );

    // tpm 10,000 for bob: one answer uses 18,469 tokens (input + output +
    // cache), so the next request waits until that debt has drained.
    let r = post(&gw, "mg-bob", body(10)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    // Settled before the answer's last byte left: the very next request,
    // on any connection, meets the debt.
    let r = post(&gw, "mg-bob", body(10)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    // Debt: 18,469 tokens at 6 ms each = 110.8 s, minus the 60 s window.
    assert!((45..=52).contains(&retry), "retry-after {retry}");
    assert!(header(&r, "anthropic-ratelimit-tokens-limit").as_deref() == Some("10000"));
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tokens per minute"),
        "{v}"
    );
    let metrics = client()
        .get(gw.url("/metrics"))
        .header("x-api-key", "mg-admin")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("modelgate_policy_refusals_total{reason=\"rate_limit\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_keeps_every_record_across_a_restart_and_budgets_resume() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5", "ok"));
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("ledger.db");
    let yaml = config(
        &up.base_url(),
        "    budget: {usd: 100, period: monthly}\n",
        &format!("state: {{path: \"{}\"}}\n", db.display()),
    );
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    const N: usize = 1000;
    let json_body = r#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    for batch in 0..(N / 50) {
        let rs = join_all((0..50).map(|_| {
            client()
                .post(gw.url("/v1/messages"))
                .header("x-api-key", ALICE)
                .body(json_body)
                .send()
        }))
        .await;
        for r in rs {
            assert_eq!(r.unwrap().status(), 200, "batch {batch}");
        }
    }
    let before = usage_after(&gw, N as u64).await["usage"]["spend_usd"].as_f64().unwrap();
    assert!(gw.signal("TERM"));
    assert!(gw.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()));
    let reader = modelgate::store::sqlite::Reader::open(&db).unwrap();
    assert_eq!(reader.count().unwrap(), N as u64, "every request has its ledger row");
    let gw = Gateway::start_async(&yaml, &[]).await;
    let after = usage(&gw).await;
    assert_eq!(after["usage"]["spend_usd"].as_f64().unwrap(), before, "{after}");
    assert_eq!(after["usage"]["requests"], N as u64);
    // The CLI reads the same ledger.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["usage", "--by", "key", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["group"], "alice", "{rows}");
    assert_eq!(rows[0]["requests"], N as u64, "{rows}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_log_or_the_audit_trail() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let gw = Gateway::start_async(
        &config(&up.base_url(), "", "audit: {path: audit.jsonl, log_prompts: true}\n"),
        &[],
    )
    .await;
    let pasted = "sk-ant-api03-USERPASTEDSECRET0000000000000000000000";
    let prompt = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[{{"role":"user","content":"my key is {pasted}"}}]}}"#
    );
    let r = post(&gw, ALICE, prompt).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let wrong = "mg-wrongKeyNotConfigured0000000000000000000000";
    let r = post(&gw, wrong, body(10)).await;
    assert_eq!(r.status(), 401);
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("authorization", format!("Bearer {ALICE}"))
        .body(body(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    // The audit line for the last request is written off the request path.
    let audit_path = gw.dir.path().join("audit.jsonl");
    let mut audit = String::new();
    for _ in 0..100 {
        audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
        // Complete lines only: the writer may be mid-line.
        if audit.matches('\n').count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{audit}");
    // Each line is written when its request is logged, which for two
    // requests on two connections need not be the order they were sent in.
    let first = lines
        .iter()
        .find(|l| l["request_body"].to_string().contains("my key is"))
        .unwrap_or_else(|| panic!("the prompt is logged when asked for: {audit}"));
    assert_eq!(first["key"], "alice");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["cache_read_tokens"], 16384);
    assert!(first["request_body"].is_object());
    assert_eq!(lines.iter().filter(|l| l["status"] == 401).count(), 1, "{audit}");
    let logs = gw.logs();
    for secret in [ALICE, PROVIDER_SECRET, wrong, pasted] {
        assert!(!logs.contains(secret), "a secret in the process logs");
        assert!(!audit.contains(secret), "a secret in the audit log: {audit}");
    }
    assert_eq!(up.requests()[0].header("x-api-key").as_deref(), Some(PROVIDER_SECRET));
    assert!(up
        .requests()
        .iter()
        .all(|r| !r.body_str().contains(ALICE) && r.header("authorization").is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_on_one_redis_enforce_one_rpm_and_one_budget() {
    let Some(redis) = RedisServer::start() else { return };
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let shared = format!(
        "state: {{backend: redis, redis_url: \"{}\", redis_prefix: t1}}\n",
        redis.url()
    );
    let yaml = config(
        &up.base_url(),
        "    rate_limit: {rpm: 50}\n",
        &format!(
            "  - name: carol\n    key_sha256: \"{}\"\n    budget: {{usd: 0.5, period: total}}\n{shared}",
            hash("mg-carol")
        ),
    );
    let a = Gateway::start_async(&yaml, &[]).await;
    let b = Gateway::start_async(&yaml, &[]).await;
    let gws = [&a, &b];

    // 100 requests at once, alternating gateways: one limit of 50 a minute.
    let rs = join_all((0..100).map(|i| post(gws[i % 2], ALICE, body(10)))).await;
    let mut ok = 0;
    for r in rs {
        match r.status().as_u16() {
            200 => {
                ok += 1;
                r.text().await.unwrap();
            }
            429 => assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "rate_limit_error"),
            s => panic!("unexpected status {s}"),
        }
    }
    assert!((50..=52).contains(&ok), "{ok} admitted under one rpm limit of 50");

    // $0.50 total for carol. Each reservation ($0.015) covers its answer
    // ($0.0129), so the two gateways together may never overspend.
    let rs = join_all((0..100).map(|i| post(gws[i % 2], "mg-carol", body(1000)))).await;
    let mut ok = 0;
    for r in rs {
        match r.status().as_u16() {
            200 => {
                ok += 1;
                r.text().await.unwrap();
            }
            429 => {
                assert_eq!(header(&r, "x-should-retry").as_deref(), Some("false"));
                assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "billing_error");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let v: Value = client()
        .get(b.url("/v1/usage"))
        .header("x-api-key", "mg-carol")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spent = v["usage"]["spend_usd"].as_f64().unwrap();
    assert!(spent <= 0.5, "overspent: ${spent} of $0.50");
    assert!(ok >= 30, "only {ok} admitted for ${spent}");
    assert!(
        (spent - (ok as f64 * COST * 10_000.0).round() / 10_000.0).abs() < 1e-3,
        "{ok} {spent}"
    );
    assert_eq!(v["usage"]["requests"], ok);

    // Redis gone: budgets fail closed (529), limits alone fail open.
    drop(redis);
    let r = post(&a, "mg-carol", body(10)).await;
    assert_eq!(r.status(), 529);
    let r = post(&a, ALICE, body(10)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
}
