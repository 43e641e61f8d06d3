//! `/admin/usage` (the dashboard's JSON) on a seeded SQLite ledger, through
//! the binary: totals per key, team, model, provider, session, day and
//! hour within `from`/`to`, with `limit`; golden. The same reads on
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
        attempts: 1,
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
    for by in ["key", "team", "model", "provider", "session", "day", "hour"] {
        let (status, mut v) = get(&gw, admin, &format!("group_by={by}&{window}")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["since"], "2026-11-02T00:00:00Z");
        assert_eq!(v["to"], "2026-11-03T00:00:00Z");
        v["store"] = Value::from("sqlite:<ledger>");
        golden.insert(by.to_string(), v);
    }
    insta::assert_json_snapshot!("admin_usage_windows", golden);

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
    ] {
        let (status, v) = get(&gw, admin, bad).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}
