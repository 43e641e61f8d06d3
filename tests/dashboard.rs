//! The activity dashboard in a real browser (headless Chromium, driven by
//! `tests/clients/dashboard.mjs`): after a week of seeded history and real
//! traffic through the binary, `/dashboard` loads without a console error,
//! its tables and tiles show the ledger's numbers as the JSON endpoints
//! give them, the live feed shows a request sent during the test within
//! 2 s, the page fits a phone, `/dashboard/me` shows one developer only,
//! and on the main listener the page asks for the admin key (HTTP Basic).
//! Screenshots go to `target/dashboard-screenshots/`; with
//! `MODELGATE_UPDATE_SCREENSHOTS=1` also to `docs/img/` (the README's).
//! The pages' serving (headers, routes, refusals) is checked without a
//! browser too.

mod support;

use std::sync::Arc;
use std::time::Duration;

use modelgate::store::sqlite::Ledger;
use modelgate::usage::Record;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

const ADMIN_KEY: &str = "mg-admin-dashboard-key-00000000000000000000001";
const PROVIDER_KEY: &str = "sk-ant-dashboard-provider-secret-000000000001";
/// (name, team, key)
const DEVS: [(&str, &str, &str); 4] = [
    ("alice", "platform", "mg-alice-dashboard-key-0000000000000000000001"),
    ("bob", "platform", "mg-bob-dashboard-key-00000000000000000000001"),
    ("carol", "research", "mg-carol-dashboard-key-000000000000000000001"),
    ("dave", "research", "mg-dave-dashboard-key-0000000000000000000001"),
];
const HOUR: i64 = 3_600_000;
const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

fn sha(k: &str) -> String {
    hex::encode(Sha256::digest(k.as_bytes()))
}

/// Six and a half days of working hours for four developers, three models
/// and three providers, ending an hour ago: what the charts draw.
fn seed(path: &std::path::Path, now_ms: i64) {
    let ledger = Ledger::open(path, 4096).unwrap();
    let models = [
        ("claude-opus-4-5", "anthropic", 0.42),
        ("claude-sonnet-4-5", "bedrock", 0.09),
        ("claude-haiku-4-5", "vertex", 0.012),
    ];
    let mut n = 0u32;
    for h in 1..(6 * 24 + 12) {
        let ts = now_ms - h * HOUR;
        let hour_of_day = (ts / HOUR) % 24;
        if !(7..=19).contains(&hour_of_day) {
            continue;
        }
        for (d, (name, team, _)) in DEVS.iter().enumerate() {
            // A few requests an hour, different per developer and hour.
            let count = (h as usize * 7 + d * 3) % 4;
            for i in 0..count {
                n += 1;
                let (model, provider, cost) = models[(d + i + h as usize) % 3];
                let ok = !n.is_multiple_of(37);
                assert!(ledger.record(Arc::new(Record {
                    ts_ms: ts + (i as i64) * 60_000 + d as i64 * 1000,
                    request_id: format!("req_seed_{n}"),
                    key: Some(name.to_string()),
                    team: Some(team.to_string()),
                    session_id: Some(format!("{name}-session-{}", h / 8)),
                    model: model.into(),
                    provider: Some(provider.into()),
                    input_tokens: 1200 + 40 * u64::from(n % 50),
                    output_tokens: 300 + 11 * u64::from(n % 30),
                    cache_read_tokens: 20_000 + 500 * u64::from(n % 20),
                    cache_write_tokens: if n.is_multiple_of(5) { 4000 } else { 0 },
                    cost_usd: cost * (1.0 + f64::from(n % 9) / 10.0),
                    latency_ms: 900 + 37 * u64::from(n % 40),
                    ttft_ms: Some(250 + 13 * u64::from(n % 30)),
                    status: if ok { 200 } else { 529 },
                    attempts: if n.is_multiple_of(11) { 2 } else { 1 },
                    error: (!ok).then(|| "overloaded_error".to_string()),
                    ..Record::default()
                })));
            }
        }
    }
    ledger.close(Duration::from_secs(10)).unwrap();
}

fn config(up: &MockUpstream, admin: u16, db: &std::path::Path) -> String {
    let mut keys = String::new();
    for (name, team, key) in DEVS {
        let budget = match name {
            "alice" => "budget: {usd: 40, period: monthly}",
            "bob" => "budget: {usd: 5, period: daily}",
            "carol" => "budget: {usd: 120, period: monthly}",
            _ => "budget: {usd: 300, period: monthly}",
        };
        keys.push_str(&format!(
            "  - {{name: {name}, team: {team}, key_sha256: \"{}\", {budget}}}\n",
            sha(key)
        ));
    }
    format!(
        "listen: \"{{listen}}\"\nadmin_listen: \"127.0.0.1:{admin}\"\nadmin_keys_sha256: [\"{}\"]\n\
         store: {{url: \"sqlite:{}\"}}\ndefault_provider: anthropic\n\
         providers:\n  anthropic: {{type: anthropic, api_base: \"{}\", api_key: {PROVIDER_KEY}}}\n\
         keys:\n{keys}teams:\n  platform: {{budget: {{usd: 500, period: monthly}}}}\n  research: {{budget: {{usd: 250, period: monthly}}}}\n",
        sha(ADMIN_KEY),
        db.display(),
        up.base_url(),
    )
}

async fn admin_json(admin: u16, path: &str) -> Value {
    let r = client()
        .get(format!("http://127.0.0.1:{admin}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// "$1,234.56" → 1234.56
fn dollars(s: &str) -> f64 {
    s.trim_start_matches('$').replace(',', "").parse().unwrap_or(f64::NAN)
}

fn integer(s: &str) -> u64 {
    s.replace(',', "").parse().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let Some(chromium) = browser::chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    seed(&db, now);
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    let admin = free_port();
    let gw = Gateway::start_async(&config(&up, admin, &db), &[]).await;

    // Real traffic through the binary: every developer, bob the most.
    let mut sent = 0;
    for (i, (_, _, key)) in DEVS.iter().enumerate() {
        for _ in 0..(1 + i % 3) {
            let r = client()
                .post(gw.url("/v1/messages"))
                .header("x-api-key", *key)
                .header("x-claude-code-session-id", format!("real-session-{i}"))
                .body(BODY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            sent += 1;
        }
    }
    // The ledger writes in batches: wait until it holds them all.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = admin_json(admin, "/admin/usage?group_by=provider&from=2h").await;
        let real = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == "anthropic")
            .map_or(0, |r| r["requests"].as_u64().unwrap());
        // Seeded anthropic rows are at least an hour old.
        let seeded_recent = admin_json(admin, "/admin/usage?group_by=provider&from=2h&to=30m").await["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == "anthropic")
            .map_or(0, |r| r["requests"].as_u64().unwrap());
        if real - seeded_recent >= sent || std::time::Instant::now() > until {
            assert_eq!(real - seeded_recent, sent, "the ledger never caught up");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the JSON endpoints say, for the page to agree with.
    let by_model = admin_json(admin, "/admin/usage?group_by=model&from=7d").await;
    let by_key = admin_json(admin, "/admin/usage?group_by=key&from=7d").await;
    let budgets = admin_json(admin, "/admin/budgets").await;
    let sessions = admin_json(admin, "/admin/usage?group_by=session&limit=10&from=7d").await;
    let reliability = admin_json(admin, "/admin/reliability?from=7d").await;

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let settings = json!({
        "admin": format!("http://127.0.0.1:{admin}"),
        "main": gw.url(""),
        "admin_key": ADMIN_KEY,
        "dev_key": DEVS[1].2,
        "live": {"key": DEVS[0].2, "body": BODY},
        "out": shots,
        "chromium": chromium,
    });
    let seen =
        tokio::task::spawn_blocking(move || browser::drive("dashboard.mjs", &settings, Duration::from_secs(150)))
            .await
            .unwrap();
    assert!(seen["error"].is_null(), "the browser run failed: {}", seen["error"]);

    // The activity page: served with its headers, no console error.
    assert_eq!(seen["activity_status"], 200);
    let csp = seen["activity_headers"]["content-security-policy"].as_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(seen["activity_problems"], json!([]), "{seen:#}");
    let page = &seen["activity"];
    assert!(page["problem"].is_null(), "{}", page["problem"]);
    assert_eq!(page["store"], "Usage from this node's SQLite ledger");

    // Tiles: the window's totals.
    let rows = by_model["rows"].as_array().unwrap();
    let sum = |f: &str| rows.iter().map(|r| r[f].as_f64().unwrap_or(0.0)).sum::<f64>();
    let tiles = &page["tiles"];
    assert!(
        (dollars(tiles["Spend"].as_str().unwrap()) - sum("cost_usd")).abs() < 0.006,
        "{tiles}"
    );
    assert_eq!(
        integer(tiles["Requests"].as_str().unwrap()) as f64,
        sum("requests"),
        "{tiles}"
    );
    assert!(
        (dollars(tiles["Cache savings"].as_str().unwrap()) - sum("cache_savings_usd")).abs() < 0.006,
        "{tiles}"
    );
    assert!(sum("cache_savings_usd") > 0.0);

    // By developer: the same names in the same order, the same counts.
    assert_eq!(page["breakdown_title"], "By developer");
    let shown: Vec<(String, u64)> = page["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), integer(r[1].as_str().unwrap())))
        .collect();
    let want: Vec<(String, u64)> = by_key["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, want);

    // Budgets, closest to the limit first, as /admin/budgets orders them.
    let shown: Vec<String> = page["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{} {}", b["scope"].as_str().unwrap(), b["name"].as_str().unwrap()))
        .collect();
    assert_eq!(shown, want);
    assert_eq!(want.len(), 6);

    // Top sessions, reliability, cache savings.
    let shown: Vec<&str> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    let want: Vec<&str> = sessions["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(shown, want);
    assert_eq!(
        page["providers"].as_array().unwrap().len(),
        reliability["providers"].as_array().unwrap().len()
    );
    assert_eq!(page["ttft"].as_array().unwrap().len(), 3);
    assert_eq!(page["circuits"][0][0], "anthropic");
    // Per account, this node's attempts since start: the real traffic.
    let account = &reliability["circuits"][0];
    assert_eq!(account["attempts"], sent, "{account}");
    assert_eq!(account["failures"], 0);
    assert_eq!(account["error_rate"], 0.0);
    assert_eq!(page["circuits"][0][2], sent.to_string());
    assert_eq!(page["circuits"][0][3], "0.0%");
    assert_eq!(page["savings"].as_array().unwrap().len(), 3);

    // Two charts drawn; the main one's series are the developers.
    assert!(page["charts"].as_u64().unwrap() >= 2, "{}", page["charts"]);
    let legend: Vec<&str> = page["legend"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (name, _, _) in DEVS {
        assert!(legend.contains(&name), "{legend:?}");
    }

    // The live feed: the request the browser run sent, within 2 s.
    assert_eq!(seen["live_request"]["status"], 200);
    let live_ms = seen["live_ms"].as_u64().unwrap();
    assert!(live_ms <= 2000, "{live_ms} ms");
    let row = seen["live_row"].as_array().unwrap();
    assert!(row[1].as_str().unwrap().starts_with("alice"), "{row:?}");
    assert!(
        row[2].as_str().unwrap().starts_with("claude-sonnet-4-5 → anthropic"),
        "{row:?}"
    );
    assert_eq!(row[3], "200");

    // No secret in the page: no key, no provider credential.
    let html = page["html"].as_str().unwrap();
    for secret in [ADMIN_KEY, PROVIDER_KEY, DEVS[0].2, DEVS[1].2, DEVS[2].2, DEVS[3].2] {
        assert!(!html.contains(secret));
    }

    // A phone: nothing wider than the screen (tables scroll in their box).
    assert!(seen["phone"]["overflow_x"].as_i64().unwrap() <= 0, "{}", seen["phone"]);
    assert!(seen["phone"]["charts"].as_u64().unwrap() >= 2);
    assert_eq!(seen["phone_problems"], json!([]));

    // The developer's own page: bob's figures only.
    assert_eq!(seen["me_status"], 200);
    let me = &seen["me"];
    assert_eq!(me["who"], "bob · team platform");
    let bob = client()
        .get(gw.url("/v1/usage?recent=50"))
        .header("x-api-key", DEVS[1].2)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let want: Vec<&str> = bob["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(me["recent"], json!(want));
    let text = me["text"].as_str().unwrap();
    for other in ["alice", "carol", "dave"] {
        assert!(!text.contains(other), "{other} on bob's page");
    }
    assert_eq!(me["key_field"], "");
    assert_eq!(me["storage"], "[[],[]]");
    for secret in [ADMIN_KEY, PROVIDER_KEY, DEVS[1].2] {
        assert!(!me["html"].as_str().unwrap().contains(secret));
    }
    assert!(
        me["tiles"]["Budget"].as_str().unwrap().starts_with("$5.00"),
        "{}",
        me["tiles"]
    );
    assert!(
        seen["me_refused"]["problem"]
            .as_str()
            .unwrap()
            .contains("did not accept"),
        "{}",
        seen["me_refused"]
    );
    assert_eq!(seen["me_refused"]["form_shown"], true);
    assert_eq!(seen["me_problems"], json!([]));

    // The main listener: a challenge without the admin key, the page with it.
    assert_eq!(seen["main_anonymous"]["status"], 401);
    assert!(seen["main_anonymous"]["challenge"]
        .as_str()
        .unwrap()
        .starts_with("Basic "));
    assert_eq!(seen["main_admin"]["status"], 200);
    assert!(seen["main_admin"]["problem"].is_null(), "{}", seen["main_admin"]);
    assert_eq!(seen["main_admin"]["rows"], 4);
    assert_eq!(seen["main_admin_problems"], json!([]));

    for name in ["dashboard.png", "dashboard-phone.png", "dashboard-me.png"] {
        let shot = shots.join(name);
        let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{name}: {len} bytes");
        if std::env::var("MODELGATE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::copy(&shot, docs.join(name)).unwrap();
        }
    }
}

/// The pages' serving, without a browser: types, headers, routes and the
/// main listener's refusals.
#[tokio::test]
async fn pages_assets_and_refusals() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let gw = Gateway::start_async(&config(&up, admin, &dir.path().join("u.db")), &[]).await;
    let get = |url: String| async move { client().get(url).send().await.unwrap() };
    let a = format!("http://127.0.0.1:{admin}");
    for (path, kind) in [
        ("/dashboard", "text/html; charset=utf-8"),
        ("/dashboard/", "text/html; charset=utf-8"),
        ("/dashboard/assets/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/assets/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/dashboard/assets/style.css", "text/css; charset=utf-8"),
    ] {
        let r = get(format!("{a}{path}")).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'"));
    }
    // The developer's page is on the main listener only, and public (it
    // holds no data); the activity page needs the admin key there.
    assert_eq!(get(format!("{a}/dashboard/me")).await.status(), 404);
    assert_eq!(get(gw.url("/dashboard/me")).await.status(), 200);
    assert_eq!(get(gw.url("/dashboard/assets/me.js")).await.status(), 200);
    let r = get(gw.url("/dashboard")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"modelgate admin\", charset=\"UTF-8\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    // A developer's key is not an admin key: asked again.
    let r = client()
        .get(gw.url("/dashboard"))
        .basic_auth("admin", Some(DEVS[0].2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(gw.url("/dashboard"))
        .basic_auth("admin", Some(ADMIN_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The admin JSON takes the browser's Basic credentials too.
    let r = client()
        .get(gw.url("/admin/budgets"))
        .basic_auth("", Some(ADMIN_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unknown asset, wrong method.
    assert_eq!(get(format!("{a}/dashboard/assets/nope.js")).await.status(), 404);
    let r = client().post(format!("{a}/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}
