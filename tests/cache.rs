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

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn warmup_preloads_answers_that_live_requests_then_hit() {
    const ALICE: &str = "mg-alice-warmup-key-000000000000000000000000000";
    const BOB: &str = "mg-bob-warmup-key-00000000000000000000000000000";
    let up = MockUpstream::start().await;
    let admin = free_port();
    let yaml = format!(
        "{}keys:\n  - name: alice\n    key_sha256: \"{}\"\n  - name: bob\n    key_sha256: \"{}\"\n",
        yaml(&up.base_url(), admin),
        sha256_hex(ALICE),
        sha256_hex(BOB)
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let json_req = r#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"warm"}]}"#;
    let answer = anthropic_message_json("claude-sonnet-4-5", "from the warm-up file");
    let sse = sse_text(&anthropic_sse_chunks("claude-sonnet-4-5", &["warm ", "stream"]));
    let lines = [
        serde_json::json!({"request": serde_json::from_str::<Value>(json_req).unwrap(), "response": serde_json::from_str::<Value>(&answer).unwrap()}).to_string(),
        serde_json::json!({"request": STREAM, "response": sse, "headers": {"anthropic-version": "2023-06-01"}}).to_string(),
        serde_json::json!({"request": COUNT, "response": {"input_tokens": 7}, "endpoint": "count_tokens", "key": "alice"}).to_string(),
        String::new(),
        r#"{"request": {"model": "claude-sonnet-4-5"}, "response": {"type": "nope"}}"#.to_string(),
        "not json".to_string(),
        serde_json::json!({"request": STREAM, "response": "event: message_start\ndata: {}\n\n"}).to_string(),
        serde_json::json!({"request": json_req, "response": {"type": "message"}, "key": "carol"}).to_string(),
    ];
    let file = gw.dir.path().join("warm.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();

    let (code, json) = cli(
        &gw,
        &[
            "cache",
            "warmup",
            file.to_str().unwrap(),
            "--key",
            "alice",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["loaded"], 3, "{v}");
    let skipped: Vec<u64> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(skipped, [5, 6, 7, 8], "{v}");
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a Messages answer"),
        "{v}"
    );
    assert!(
        v["skipped"][2]["reason"].as_str().unwrap().contains("message_stop"),
        "{v}"
    );
    insta::assert_snapshot!("cache_warmup_json", json);
    let (code, text) = cli(&gw, &["cache", "warmup", file.to_str().unwrap(), "--key", "alice"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("cache_warmup_text", text);

    // Alice's identical requests are answered from the warm-up, nothing goes upstream.
    let send = |path: &'static str, body: &'static str| {
        client()
            .post(gw.url(path))
            .header("x-api-key", ALICE)
            .header("anthropic-version", "2023-06-01")
            .body(body)
            .send()
    };
    let r = send("/v1/messages", json_req).await.unwrap();
    assert_eq!(r.headers()["x-modelgate-cache"], "hit");
    assert_eq!(r.text().await.unwrap(), answer);
    let r = send("/v1/messages", STREAM).await.unwrap();
    assert_eq!(r.headers()["x-modelgate-cache"], "hit");
    assert_eq!(r.text().await.unwrap(), sse);
    let r = send("/v1/messages/count_tokens", COUNT).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["input_tokens"], 7);
    assert_eq!(up.request_count(), 0);
    // Entries are per key: Bob's identical request is not Alice's answer.
    up.set_default(Reply::message("claude-sonnet-4-5", "for bob"));
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", BOB)
        .header("anthropic-version", "2023-06-01")
        .body(json_req)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-modelgate-cache").is_none());
    assert!(r.text().await.unwrap().contains("for bob"));
    assert_eq!(up.request_count(), 1);

    // Without a key the lines are refused, each saying why.
    let (code, text) = cli(&gw, &["cache", "warmup", file.to_str().unwrap()]);
    assert_eq!(code, 0, "line 3 names its key");
    assert!(text.contains("skipped line 1: no gateway key"), "{text}");
    assert!(text.contains("skipped line 2: no gateway key"), "{text}");

    // In passthrough-auth mode answers belong to client credentials: refused.
    let open = Gateway::start_async(&self::yaml(&up.base_url(), free_port()), &[]).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .arg("-c")
        .arg(open.config_path())
        .args(["cache", "warmup", file.to_str().unwrap(), "--key", "alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs gateway keys"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_stats_count_requests_errors_and_latency_per_rule() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5", "ok"));
    let admin = free_port();
    let yaml = format!(
        "listen: \"{{listen}}\"\nadmin_listen: \"127.0.0.1:{admin}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{0}\", api_key: sk-test}}\n  b: {{type: anthropic, api_base: \"{0}\", api_key: sk-test}}\nroutes:\n  - {{match: \"claude-haiku-*\", provider: b}}\n  - {{match: \"*\", header: {{name: x-team, value: red}}, provider: b}}\n",
        up.base_url()
    );
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    let send = |model: &str, team: Option<&str>| {
        let mut r = client().post(gw.url("/v1/messages")).body(format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}]}}"#
        ));
        if let Some(t) = team {
            r = r.header("x-team", t);
        }
        r.send()
    };
    for _ in 0..3 {
        assert_eq!(send("claude-haiku-4-5", None).await.unwrap().status(), 200);
    }
    up.push(Reply::error(529, "overloaded_error", "busy"));
    up.push(Reply::error(529, "overloaded_error", "busy"));
    up.push(Reply::error(529, "overloaded_error", "busy"));
    let failed = send("claude-opus-4-5", Some("red")).await.unwrap();
    assert!(failed.status().as_u16() >= 500, "{}", failed.status());
    assert_eq!(send("claude-sonnet-4-5", None).await.unwrap().status(), 200);

    let stats = || async {
        // Counted in the logging phase, just after the answer.
        for _ in 0..200 {
            let (code, json) = cli(&gw, &["route", "stats", "--format", "json"]);
            assert_eq!(code, 0, "{json}");
            let v: Value = serde_json::from_str(&json).unwrap();
            let total: u64 = v["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["requests"].as_u64().unwrap())
                .sum();
            if total == 5 {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("route stats never counted 5 requests");
    };
    let v = stats().await;
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0]["rule"], "routes[0] (match `claude-haiku-*`)");
    assert_eq!(
        (rules[0]["requests"].as_u64(), rules[0]["errors"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(rules[1]["rule"], "routes[1] (match `*`, header x-team: red)");
    assert_eq!(
        (rules[1]["requests"].as_u64(), rules[1]["errors"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(rules[1]["error_rate"], 1.0);
    assert_eq!(
        (rules[2]["rule"].as_str(), rules[2]["provider"].as_str()),
        (Some("default_provider"), Some("a"))
    );
    assert!(rules[0]["avg_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(rules[0]["max_latency_ms"].as_f64() >= rules[0]["avg_latency_ms"].as_f64());

    // Goldens, the latencies and the uptime masked.
    let mut masked = v.clone();
    for r in masked["rules"].as_array_mut().unwrap() {
        r["avg_latency_ms"] = "<ms>".into();
        r["max_latency_ms"] = "<ms>".into();
    }
    masked["uptime_seconds"] = "<s>".into();
    insta::assert_snapshot!("route_stats_json", serde_json::to_string_pretty(&masked).unwrap());
    let (_, table) = cli(&gw, &["route", "stats"]);
    let latencies = regex::Regex::new(r"(?m) +\d+\.\d +\d+\.\d$").unwrap();
    let uptime = regex::Regex::new(r"started \d+ s ago").unwrap();
    let golden = latencies.replace_all(&table, "  <avg_ms>  <max_ms>").into_owned();
    let golden = uptime.replace(&golden, "started <n> s ago").into_owned();
    insta::assert_snapshot!("route_stats_text", golden);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("rule") && lines[0].contains("requests") && lines[0].contains("avg_ms"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("routes[0] (match `claude-haiku-*`)") && lines[1].contains(" b "),
        "{table}"
    );
    assert!(lines[2].contains("100.0%"), "{table}");
    assert!(lines[4].starts_with("since the gateway started"), "{table}");

    // A reload keeps the counts of rules it did not change.
    let edited = std::fs::read_to_string(gw.config_path())
        .unwrap()
        .replace("value: red", "value: blue");
    std::fs::write(gw.config_path(), edited).unwrap();
    assert!(gw.signal("HUP"));
    let mut reloaded = None;
    for _ in 0..200 {
        let (_, json) = cli(&gw, &["route", "stats", "--format", "json"]);
        let v: Value = serde_json::from_str(&json).unwrap();
        if v["rules"][1]["rule"] == "routes[1] (match `*`, header x-team: blue)" {
            reloaded = Some(v);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let v = reloaded.expect("the reload applied");
    assert_eq!(v["rules"][0]["requests"], 3);
    assert_eq!(v["rules"][1]["requests"], 0);
    assert_eq!(v["rules"][2]["requests"], 1);
    assert!(gw.is_running());
}
