//! `/admin/usage` (the dashboard's JSON) on a seeded SQLite ledger, through
//! the binary: totals per key, team, model, provider, session, day and
//! hour within `from`/`to`, with `limit`; golden. `/admin/budgets` after
//! real traffic, closest to its limit first; `/admin/reliability`, golden. The same usage reads on
//! PostgreSQL are in `tests/store_postgres.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use modelgate::store::sqlite::Ledger;
use modelgate::usage::Record;
use serde_json::Value;
use support::*;

/// 2026-11-02T09:00:00Z.
const T: i64 = 1_793_610_000_000;
const HOUR: i64 = 3_600_000;

#[allow(clippy::too_many_arguments)]
fn record(
    i: u32,
    ts_ms: i64,
    key: &str,
    team: &str,
    model: &str,
    provider: &str,
    session: &str,
    cost: f64,
    status: u16,
) -> Arc<Record> {
    Arc::new(Record {
        ts_ms,
        request_id: format!("req_seed_{i}"),
        key: Some(key.into()),
        team: Some(team.into()),
        session_id: Some(session.into()),
        model: model.into(),
        provider: Some(provider.into()),
        input_tokens: 1000 * u64::from(i),
        output_tokens: 100 * u64::from(i),
        cache_read_tokens: 5000,
        cache_write_tokens: 10,
        cost_usd: cost,
        latency_ms: 400 * u64::from(i),
        ttft_ms: Some(100),
        status,
        // The second request failed over.
        attempts: if i == 2 { 2 } else { 1 },
        error: (status >= 400).then(|| "overloaded_error".to_string()),
        ..Record::default()
    })
}

fn seed(path: &std::path::Path) {
    let ledger = Ledger::open(path, 64).unwrap();
    for r in [
        record(
            1,
            T,
            "alice",
            "platform",
            "claude-opus-4-5",
            "anthropic",
            "s-a1",
            0.50,
            200,
        ),
        record(
            2,
            T + 10 * 60_000,
            "alice",
            "platform",
            "claude-opus-4-5",
            "bedrock",
            "s-a1",
            0.25,
            200,
        ),
        record(
            3,
            T + HOUR,
            "bob",
            "mobile",
            "claude-haiku-4-5",
            "anthropic",
            "s-b1",
            0.01,
            529,
        ),
        record(
            4,
            T + 2 * HOUR,
            "carol",
            "mobile",
            "claude-sonnet-4-5",
            "openai",
            "s-c1",
            0.10,
            200,
        ),
        // Outside the window asked for below.
        record(
            5,
            T - 48 * HOUR,
            "alice",
            "platform",
            "claude-opus-4-5",
            "anthropic",
            "s-old",
            99.0,
            200,
        ),
    ] {
        assert!(ledger.record(r));
    }
    ledger.close(Duration::from_secs(10)).unwrap();
}

async fn get(gw: &Gateway, admin: u16, query: &str) -> (u16, Value) {
    let _ = gw;
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/admin/usage?{query}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn totals_per_group_in_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed(&db);
    let admin = free_port();
    let yaml = format!(
        "listen: \"{{listen}}\"\nadmin_listen: \"127.0.0.1:{admin}\"\nstore: {{url: \"sqlite:{}\"}}\n",
        db.display()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let window = "from=2026-11-02&to=2026-11-03";
    let mut golden = serde_json::Map::new();
    for by in [
        "key",
        "team",
        "model",
        "provider",
        "session",
        "day",
        "hour",
        "hour&split=model",
        "day&split=team",
    ] {
        let (status, mut v) = get(&gw, admin, &format!("group_by={by}&{window}")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["since"], "2026-11-02T00:00:00Z");
        assert_eq!(v["to"], "2026-11-03T00:00:00Z");
        v["store"] = Value::from("sqlite:<ledger>");
        golden.insert(by.to_string(), v);
    }
    insta::assert_json_snapshot!("admin_usage_windows", golden);

    // Reliability in the same window: errors and failovers per provider,
    // TTFT percentiles per model.
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/admin/reliability?{window}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    insta::assert_json_snapshot!("admin_reliability_window", v);

    // `limit` keeps the biggest spenders; the older names still work.
    let (_, v) = get(&gw, admin, &format!("group_by=session&limit=1&{window}")).await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    assert_eq!(v["rows"][0]["group"], "s-a1");
    let (_, v) = get(&gw, admin, "by=key&since=2026-10-01").await;
    assert_eq!(v["rows"][0]["group"], "alice");
    assert_eq!(v["rows"][0]["requests"], 3);

    for bad in [
        "group_by=colour",
        "from=soon",
        "to=2026-10-01&from=2026-11-01",
        "limit=0",
        "limit=x",
        "split=colour",
        "group_by=model&split=model",
    ] {
        let (status, v) = get(&gw, admin, bad).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn budgets_closest_to_their_limit_first() {
    use sha2::{Digest, Sha256};
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    let admin = free_port();
    let sha = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    let yaml = format!(
        "listen: \"{{listen}}\"\nadmin_listen: \"127.0.0.1:{admin}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-ant-test}}\n\
         keys:\n  - {{name: alice, team: platform, key_sha256: \"{}\", budget: {{usd: 1, period: monthly}}}}\n  - {{name: bob, key_sha256: \"{}\", budget: {{usd: 0.001, period: daily}}}}\n  - {{name: carol, key_sha256: \"{}\"}}\n\
         teams:\n  platform: {{budget: {{usd: 10, period: total}}}}\n",
        up.base_url(),
        sha("mg-alice-budget-key-0000000000000000000000001"),
        sha("mg-bob-budget-key-000000000000000000000000001"),
        sha("mg-carol-budget-key-0000000000000000000000001"),
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    for key in [
        "mg-alice-budget-key-0000000000000000000000001",
        "mg-bob-budget-key-000000000000000000000000001",
    ] {
        let r = client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", key)
            .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let v: Value = client()
        .get(format!("http://127.0.0.1:{admin}/admin/budgets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = v["budgets"].as_array().unwrap();
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["scope"].as_str().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("key", "bob"), ("key", "alice"), ("team", "platform")], "{v}");
    let bob = &rows[0];
    assert_eq!(bob["period"], "daily");
    assert_eq!(bob["limit_usd"], 0.001);
    assert!(
        bob["spent_usd"].as_f64().unwrap() > 0.001 && bob["left_usd"].as_f64().unwrap() < 0.0,
        "{bob}"
    );
    assert_eq!(bob["requests"], 1);
    // A developer's own recent requests: theirs only (once the ledger has
    // written them: it writes in batches).
    for (key, name) in [
        ("mg-alice-budget-key-0000000000000000000000001", "alice"),
        ("mg-bob-budget-key-000000000000000000000000001", "bob"),
    ] {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let u = loop {
            let r = client()
                .get(gw.url("/v1/usage?recent=5"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let u: Value = r.json().await.unwrap();
            if !u["recent"].as_array().unwrap().is_empty() || std::time::Instant::now() > until {
                break u;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(u["key"], name);
        let recent = u["recent"].as_array().unwrap();
        assert_eq!(recent.len(), 1, "{u}");
        assert_eq!(recent[0]["model"], "claude-sonnet-4-5");
        assert!(recent[0]["cost_usd"].as_f64().unwrap() > 0.0);
    }
    let r = client()
        .get(gw.url("/v1/usage?recent=0"))
        .header("x-api-key", "mg-bob-budget-key-000000000000000000000000001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let platform = &rows[2];
    assert_eq!(platform["period"], "total");
    assert!(platform["period_start"].is_null());
    assert!((platform["left_usd"].as_f64().unwrap() + platform["spent_usd"].as_f64().unwrap() - 10.0).abs() < 1e-9);
}
