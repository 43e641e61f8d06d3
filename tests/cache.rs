//! The response and token-count caches through the real binary, and the
//! admin commands that read them (`cache stats|clear`, `health errors`).

mod support;

use serde_json::Value;
use support::*;

const STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const COUNT: &str = r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"count me"}]}"#;

fn yaml(upstream: &str, admin: u16) -> String {
    format!(
        "listen: \"{{listen}}\"\nadmin_listen: \"127.0.0.1:{admin}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{upstream}\", api_key: sk-test}}\ncache:\n  response: {{enabled: true, ttl: 1h, max_entries: 16}}\n  token_count: {{enabled: true}}\n"
    )
}

async fn post(gw: &Gateway, path: &str, body: &'static str, beta: Option<&str>) -> reqwest::Response {
    let mut req = client().post(gw.url(path)).body(body);
    if let Some(b) = beta {
        req = req.header("anthropic-beta", b);
    }
    req.send().await.unwrap()
}

/// Answers are stored once the response is complete (in the logging
/// phase), which can trail the client's receipt by a moment. Polled, at
/// most 2 s.
async fn wait_entries(admin: u16, cache: &str, n: u64) {
    for _ in 0..200 {
        // The admin listener may still be starting: that is "not yet" too.
        let v: Option<Value> = match client()
            .get(format!("http://127.0.0.1:{admin}/admin/cache"))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        if v.is_some_and(|v| v[cache]["entries"].as_u64() == Some(n)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{cache} cache never reached {n} entries");
}

fn cli(gw: &Gateway, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .arg("-c")
        .arg(gw.config_path())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_requests_are_answered_from_the_cache() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["cached ", "answer"]));
    let admin = free_port();
    let gw = Gateway::start_async(&yaml(&up.base_url(), admin), &[]).await;

    let first = post(&gw, "/v1/messages", STREAM, None).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("x-modelgate-cache").is_none());
    let first = first.text().await.unwrap();
    wait_entries(admin, "response", 1).await;
    let second = post(&gw, "/v1/messages", STREAM, None).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-modelgate-cache"], "hit");
    assert!(second.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(second.text().await.unwrap(), first, "the replay is byte-identical");
    assert_eq!(up.request_count(), 1);
    // A beta header changes the answer, so it is a different entry.
    let third = post(&gw, "/v1/messages", STREAM, Some("context-1m-2025-08-07")).await;
    assert!(third.headers().get("x-modelgate-cache").is_none());
    third.text().await.unwrap();
    assert_eq!(up.request_count(), 2);
    wait_entries(admin, "response", 2).await;

    // Token counts: forwarded once, then answered locally.
    up.set_default(Reply::json(200, r#"{"input_tokens":42}"#));
    for hit in [false, true] {
        let r = post(&gw, "/v1/messages/count_tokens", COUNT, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers().get("x-modelgate-cache").is_some(), hit);
        assert_eq!(r.json::<Value>().await.unwrap()["input_tokens"], 42);
        wait_entries(admin, "token_count", 1).await;
    }
    assert_eq!(up.request_count(), 3);

    let (code, stats) = cli(&gw, &["cache", "stats", "--json"]);
    assert_eq!(code, 0, "{stats}");
    let v: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["response"]["entries"], 2);
    assert_eq!(v["response"]["hits"], 1);
    assert_eq!(v["token_count"]["hits"], 1);
    let (code, table) = cli(&gw, &["cache", "stats"]);
    assert_eq!(code, 0);
    assert!(
        table.lines().any(|l| l.starts_with("response") && l.contains("true")),
        "{table}"
    );
    // The seed's names: one cache's figures, the file's settings, and a
    // purge that keeps what is still fresh.
    let (code, one) = cli(&gw, &["cache", "response-stats", "--format", "json"]);
    assert_eq!(code, 0, "{one}");
    assert_eq!(serde_json::from_str::<Value>(&one).unwrap()["entries"], 2);
    let (code, one) = cli(&gw, &["cache", "token-count-stats"]);
    assert_eq!(code, 0);
    assert!(one.lines().nth(1).unwrap().starts_with("token_count"), "{one}");
    assert!(!one.contains("\nresponse"), "{one}");
    let (code, info) = cli(&gw, &["cache", "info", "--format", "json"]);
    assert_eq!(code, 0, "{info}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["response"]["enabled"], true);
    assert_eq!(info["response"]["ttl_seconds"], v["response"]["ttl_seconds"]);
    let (code, purged) = cli(&gw, &["cache", "purge"]);
    assert_eq!((code, purged.trim()), (0, "purged 0 expired cache entries"));
    let (code, cleared) = cli(&gw, &["cache", "clear"]);
    assert_eq!((code, cleared.trim()), (0, "cleared 3 cache entries"));
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["fresh"]));
    let again = post(&gw, "/v1/messages", STREAM, None).await;
    assert!(again.headers().get("x-modelgate-cache").is_none());
    again.text().await.unwrap();
    assert_eq!(up.request_count(), 4);
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"modelgate_cache_requests_total{cache="response",result="hit"} 1"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_not_cached_and_show_in_health_errors() {
    let up = MockUpstream::start().await;
    up.push(Reply::error(400, "invalid_request_error", "prompt is too long"));
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let admin = free_port();
    let gw = Gateway::start_async(&yaml(&up.base_url(), admin), &[]).await;
    let r = post(&gw, "/v1/messages", STREAM, None).await;
    assert_eq!(r.status(), 400);
    r.text().await.unwrap();
    let r = post(&gw, "/v1/messages", STREAM, None).await;
    assert_eq!(r.status(), 200, "an error answer is never replayed");
    r.text().await.unwrap();
    let r = client().get(gw.url("/v1/nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let (code, out) = cli(&gw, &["health", "errors"]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains(" 400 ") && lines[0].contains("provider=a"), "{out}");
    assert!(lines[1].contains(" 404 not_found_error"), "{out}");
    let (_, json) = cli(&gw, &["health", "errors", "--json", "--limit", "1"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["error_type"], "not_found_error");
    // Grouped by category (the seed's `health categories`).
    let r = client().get(gw.url("/v1/nothing-else")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let (code, json) = cli(&gw, &["health", "categories", "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["category"], "not_found_error", "{v}");
    assert_eq!(v[0]["count"], 2);
    assert_eq!(v[0]["statuses"], serde_json::json!([404]));
    assert_eq!(v[1]["category"], "upstream_400", "the provider's own 400, relayed");
    assert_eq!(v[1]["providers"], serde_json::json!(["a"]));
    // `health status`: the /status JSON, or a summary.
    let (code, json) = cli(&gw, &["health", "status", "--format", "json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap()["status"], "ok");
    let (_, summary) = cli(&gw, &["health", "status", "--format", "text"]);
    assert!(
        summary.contains("provider: a (enabled)") && summary.contains("requests: "),
        "{summary}"
    );
    let (_, table) = cli(&gw, &["health", "categories"]);
    assert!(table.starts_with("CATEGORY") && table.lines().count() == 3, "{table}");
}
