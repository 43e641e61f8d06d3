//! The PostgreSQL store through the real binary, against a real PostgreSQL
//! started by the test (`tests/support/postgres.rs`): the ledger lands in
//! the database from every replica, `/v1/usage`, `/admin/usage` and
//! `modelgate usage` report the fleet's figures, the database can go away
//! under load without a failed request or a lost or doubled row (the
//! spool), a shutdown while it is away keeps the records for the next
//! start, migrations are safe with replicas starting at once, a new binary
//! upgrades an old schema and keeps its rows, keys created, changed and
//! revoked with `modelgate keys` reach every replica within seconds without
//! a reload, and so do teams made with `modelgate teams`, whose budgets
//! start from the fleet's history.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::postgres::{Postgres, PASSWORD};
use support::*;

const ALICE: &str = "mg-aliceTestKey000000000000000000000000000001";
const ADMIN: &str = "mg-adminTestKey000000000000000000000000000009";
const PROVIDER_SECRET: &str = "sk-ant-api03-PROVIDERSECRETdonotlog0000000000";

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A gateway on `store_url`, keys alice (team platform) and an admin key.
fn config(upstream: &str, store_url: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ngrace_period: 0s\nlog_level: debug\ndefault_provider: anthropic\n\
         providers:\n  anthropic: {{type: anthropic, api_base: \"{upstream}\", api_key: {PROVIDER_SECRET}}}\n\
         keys:\n  - name: alice\n    team: platform\n    key_sha256: \"{}\"\n\
         admin_keys_sha256: [\"{}\"]\n\
         store:\n  url: \"{store_url}\"\n",
        hash(ALICE),
        hash(ADMIN)
    )
}

fn body() -> String {
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#.into()
}

/// The status of one streamed request, read to its end.
async fn post(gw: &Gateway) -> u16 {
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", ALICE)
        .body(body())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    status
}

/// Poll `count(sql)` until it is `want`, bounded.
async fn wait_count(pg: &Postgres, db: &str, sql: &str, want: i64, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    let mut last = -1;
    for _ in 0..2000 {
        last = pg.count(db, sql);
        if last == want || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

async fn get_json(gw: &Gateway, path: &str, key: &str) -> Value {
    let r = client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_write_one_ledger_and_every_replica_reports_the_fleet() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_db("fleet");
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    // The password comes from the environment, as the config contract says.
    let yaml = config(&up.base_url(), &pg.url_with_env_password(&db));
    let env = [("PGPASSWORD", PASSWORD)];
    let a = Gateway::start_async(&yaml, &env).await;
    let b = Gateway::start_async(&yaml, &env).await;
    for i in 0..5 {
        assert_eq!(post(if i < 3 { &a } else { &b }).await, 200);
    }
    let rows = wait_count(&pg, &db, "SELECT COUNT(*) FROM requests", 5, Duration::from_secs(10)).await;
    assert_eq!(rows, 5);
    let stored: HashSet<String> = pg
        .query_in(&db, "SELECT request_id FROM requests")
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(stored.len(), 5, "one row per request, by request id");

    // Every replica answers with the fleet's five requests.
    for gw in [&a, &b] {
        let u = get_json(gw, "/v1/usage", ALICE).await;
        assert_eq!(u["usage"]["requests"], 5, "{u}");
        let mine = get_json(gw, "/v1/usage?recent=3", ALICE).await;
        assert_eq!(mine["recent"].as_array().unwrap().len(), 3, "{mine}");
        assert_eq!(u["team_usage"]["requests"], 5, "{u}");
        let admin = get_json(gw, "/admin/usage?by=team&since=1h", ADMIN).await;
        assert_eq!(admin["shared"], true, "{admin}");
        assert_eq!(admin["rows"][0]["group"], "platform", "{admin}");
        assert_eq!(admin["rows"][0]["requests"], 5, "{admin}");
        assert!(!admin.to_string().contains(PASSWORD));
        // The dashboard's windows and groups, read in PostgreSQL.
        let hours = get_json(gw, "/admin/usage?group_by=hour&from=2h&to=0s", ADMIN).await;
        let rows = hours["rows"].as_array().unwrap();
        let total: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        assert_eq!(total, 5, "{hours}");
        for r in rows {
            let g = r["group"].as_str().unwrap();
            assert!(g.len() == 17 && g.ends_with(":00Z") && g.as_bytes()[10] == b'T', "{g}");
        }
        let series = get_json(gw, "/admin/usage?group_by=hour&split=key&from=2h&to=0s", ADMIN).await;
        let rows = series["rows"].as_array().unwrap();
        assert!(rows.iter().all(|r| r["split"] == "alice"), "{series}");
        assert_eq!(
            rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum::<u64>(),
            5,
            "{series}"
        );
        let providers = get_json(gw, "/admin/usage?group_by=provider&from=1h&limit=1", ADMIN).await;
        assert_eq!(providers["rows"].as_array().unwrap().len(), 1, "{providers}");
        let rel = get_json(gw, "/admin/reliability?from=1h", ADMIN).await;
        let total: u64 = rel["providers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 5, "{rel}");
    }
    let bad = client()
        .get(a.url("/admin/usage?by=colour"))
        .header("x-api-key", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // `modelgate usage` reads the same store from the config file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["usage", "--by", "key", "--json", "-c"])
        .arg(a.config_path())
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["group"], "alice");
    assert_eq!(rows[0]["requests"], 5);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["usage", "-c"])
        .arg(a.config_path())
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("from postgres://postgres@127.0.0.1:{}/fleet", pg.port)),
        "{table}"
    );

    for gw in [&a, &b] {
        let logs = gw.logs();
        assert!(!logs.contains(PASSWORD), "the store password leaked into the logs");
        assert!(!logs.contains(PROVIDER_SECRET));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_going_away_under_load_fails_nothing_and_loses_nothing() {
    let Some(mut pg) = Postgres::start() else { return };
    let db = pg.create_db("outage");
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let gw = Gateway::start_async(&config(&up.base_url(), &pg.url(&db)), &[]).await;
    let gw = std::sync::Arc::new(gw);

    // Four clients sending back to back until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match post(&gw).await {
                    200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_outage = pg.count(&db, "SELECT COUNT(*) FROM requests");
    assert!(before_outage > 0, "rows reach the database while it is up");
    // Ten seconds without the database.
    tokio::task::block_in_place(|| pg.stop());
    tokio::time::sleep(Duration::from_secs(10)).await;
    tokio::task::block_in_place(|| pg.restart());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "no request failed while the database was away");
    assert!(ok > before_outage as u64);

    // The spool drains: exactly one row per request, none doubled.
    let rows = wait_count(
        &pg,
        &db,
        "SELECT COUNT(*) FROM requests",
        ok as i64,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(rows, ok as i64, "every request has its row");
    assert_eq!(
        pg.count(&db, "SELECT COUNT(DISTINCT request_id) FROM requests"),
        ok as i64
    );
    let logs = gw.logs();
    assert!(logs.contains("spooling records"), "the outage is logged");
    assert!(logs.contains("replayed"), "the replay is logged");
    let spool = gw.dir.path().join("spool");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Segments in the spool, and the intake's journal files (each goes
    // once its records are written and it is rotated, 2 s at most).
    let files = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.path().is_file()).count())
            .unwrap_or(0)
    };
    let leftover = loop {
        let n = (files(&spool), files(&spool.join("intake")));
        if n == (0, 0) || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(leftover, (0, 0), "the spool and the journal are empty once replayed");
    assert!(!logs.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn records_spooled_at_shutdown_are_replayed_by_the_next_start() {
    let Some(mut pg) = Postgres::start() else { return };
    let db = pg.create_db("restart");
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let yaml = config(&up.base_url(), &pg.url(&db)).replace("store:\n", "store:\n  spool: \"{dir}/../spool-shared\"\n");
    // A spool directory that outlives the first gateway's temp dir.
    let shared = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("{dir}/../spool-shared", &shared.path().display().to_string());
    let mut first = Gateway::start_async(&yaml, &[]).await;
    assert_eq!(post(&first).await, 200);
    assert_eq!(
        wait_count(&pg, &db, "SELECT COUNT(*) FROM requests", 1, Duration::from_secs(10)).await,
        1
    );
    tokio::task::block_in_place(|| pg.stop());
    for _ in 0..7 {
        assert_eq!(post(&first).await, 200);
    }
    // SIGTERM while the database is away: the records go to the spool.
    assert!(first.signal("TERM"));
    let status = tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(30)));
    assert!(status.is_some_and(|s| s.success()), "{}", first.logs());
    let spooled: usize = std::fs::read_dir(shared.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
        .sum();
    assert_eq!(spooled, 7, "sealed in the spool at shutdown:\n{}", first.logs());
    let journal = std::fs::read_dir(shared.path().join("intake")).unwrap().count();
    assert_eq!(journal, 0, "a clean stop leaves no journal behind");

    tokio::task::block_in_place(|| pg.restart());
    let second = Gateway::start_async(&yaml, &[]).await;
    assert_eq!(
        wait_count(&pg, &db, "SELECT COUNT(*) FROM requests", 8, Duration::from_secs(20)).await,
        8
    );
    assert_eq!(pg.count(&db, "SELECT COUNT(DISTINCT request_id) FROM requests"), 8);
    drop(second);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_db("migrations");
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let yaml = config(&up.base_url(), &pg.url(&db));
    let starts = (0..3).map(|_| Gateway::start_async(&yaml, &[]));
    let gws = futures_util::future::join_all(starts).await;
    // Each replica's first request meets an empty database at the same time.
    let firsts = gws.iter().map(post);
    for status in futures_util::future::join_all(firsts).await {
        assert_eq!(status, 200);
    }
    assert_eq!(
        wait_count(&pg, &db, "SELECT COUNT(*) FROM requests", 3, Duration::from_secs(10)).await,
        3
    );
    // Every step once (1: requests, 2: gateway_keys, 3: gateway_teams,
    // 4: the sign-in's tables), however many replicas raced.
    let latest = i64::from(modelgate::store::postgres::schema_version());
    assert_eq!(latest, 4);
    assert_eq!(pg.count(&db, "SELECT COUNT(*) FROM modelgate_schema"), latest);
    assert_eq!(pg.count(&db, "SELECT MAX(version) FROM modelgate_schema"), latest);
    for gw in &gws {
        assert!(!gw.logs().contains("ERROR"), "{}", gw.logs());
    }

    // A database a newer modelgate migrated: this build says so plainly.
    pg.query_in(
        &db,
        "INSERT INTO modelgate_schema (version, build) VALUES (99, 'future')",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["usage", "-c"])
        .arg(gws[0].config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema version 99 is newer"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

/// `modelgate ARGS -c CONFIG`: (exit code, stdout, stderr).
fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .arg("-c")
        .arg(config)
        .env("USER", "ops-tester")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status_with(gw: &Gateway, key: &str, model: &str) -> (u16, Option<String>) {
    let body = format!(r#"{{"model":"{model}","max_tokens":8,"messages":[{{"role":"user","content":"hi"}}]}}"#);
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key)
        .body(body)
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    (status, retry)
}

/// Poll until every gateway answers `key` with `want`, bounded by 5 s (the
/// contract), returning how long it took.
async fn until_all(gws: &[&Gateway], key: &str, model: &str, want: u16) -> Duration {
    let started = Instant::now();
    for _ in 0..500 {
        let mut all = true;
        for gw in gws {
            if status_with(gw, key, model).await.0 != want {
                all = false;
            }
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not {want} on every replica within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not {want} on every replica");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_created_changed_and_revoked_in_the_store_reach_every_replica() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_db("keys");
    let up = MockUpstream::start().await;
    up.set_default(Reply::json(200, anthropic_message_json("claude-sonnet-4-5", "ok")));
    let yaml = config(&up.base_url(), &pg.url(&db));
    let a = Gateway::start_async(&yaml, &[]).await;
    let b = Gateway::start_async(&yaml, &[]).await;
    let config_path = a.config_path();
    let config_before = std::fs::read_to_string(&config_path).unwrap();

    // Created through the CLI: printed once, only its hash stored.
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            &config_path,
            &[
                "keys",
                "create",
                "bob",
                "--team",
                "platform",
                "--models",
                "claude-*,gpt-4o",
                "--rpm",
                "100",
                "--budget-usd",
                "5",
                "--period",
                "daily",
                "--expires",
                "30d",
            ],
        )
    });
    assert_eq!(code, 0, "{err}");
    let bob = out.trim().to_string();
    assert!(bob.starts_with("mg-") && bob.len() == 46, "{out}");
    assert!(err.contains("within seconds"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&config_path).unwrap(),
        config_before,
        "no config edit"
    );
    assert_eq!(
        pg.count(
            &db,
            &format!("SELECT COUNT(*) FROM gateway_keys WHERE key_sha256 = '{}'", hash(&bob))
        ),
        1
    );
    let took = until_all(&[&a, &b], &bob, "claude-sonnet-4-5", 200).await;
    eprintln!("a new key worked on both replicas after {took:?}");
    // Its allowlist holds, its usage counts for its team.
    assert_eq!(status_with(&a, &bob, "claude-opus-4").await.0, 200);
    assert_eq!(status_with(&a, &bob, "mistral-large").await.0, 403);

    // A duplicate name is refused; the config's own key names too.
    let (code, _, err) = tokio::task::block_in_place(|| cli(&config_path, &["keys", "create", "bob"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = tokio::task::block_in_place(|| cli(&config_path, &["keys", "create", "alice"]));
    assert_eq!(code, 1, "{err}");

    // Listed beside the config's keys, never a secret.
    let (code, out, _) = tokio::task::block_in_place(|| cli(&config_path, &["keys", "list", "--json"]));
    assert_eq!(code, 0);
    let rows: Value = serde_json::from_str(&out).unwrap();
    let by_name = |n: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("alice")["source"], "config");
    let b_row = by_name("bob");
    assert_eq!(b_row["source"], "store");
    assert_eq!(b_row["team"], "platform");
    assert_eq!(b_row["rpm"], 100);
    assert_eq!(b_row["budget"]["usd"], 5.0);
    assert!(b_row["created_by"].as_str().unwrap().starts_with("ops-tester@"));
    assert!(!out.contains(&bob) && !out.contains(&hash(&bob)));

    // Changed: the new allowlist applies on every replica.
    let (code, _, err) =
        tokio::task::block_in_place(|| cli(&config_path, &["keys", "update", "bob", "--models", "gpt-*"]));
    assert_eq!(code, 0, "{err}");
    until_all(&[&a, &b], &bob, "claude-sonnet-4-5", 403).await;

    // Revoked: 401, not to be retried, on every replica.
    let (code, _, err) = tokio::task::block_in_place(|| cli(&config_path, &["keys", "revoke", "bob"]));
    assert_eq!(code, 0, "{err}");
    let took = until_all(&[&a, &b], &bob, "gpt-4o", 401).await;
    eprintln!("a revoked key was refused on both replicas after {took:?}");
    assert_eq!(status_with(&b, &bob, "gpt-4o").await.1.as_deref(), Some("false"));
    let (code, _, err) = tokio::task::block_in_place(|| cli(&config_path, &["keys", "revoke", "bob"]));
    assert_eq!(code, 1, "{err}");
    let (_, out, _) = tokio::task::block_in_place(|| cli(&config_path, &["keys", "list", "--json", "--all"]));
    assert!(out.contains("\"revoked_by\": \"ops-tester@"), "{out}");

    // An expiring key stops by itself.
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&config_path, &["keys", "create", "carol", "--expires", "3s"]));
    assert_eq!(code, 0, "{err}");
    let carol = out.trim().to_string();
    until_all(&[&a, &b], &carol, "claude-sonnet-4-5", 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = client()
        .post(a.url("/v1/messages"))
        .header("x-api-key", &carol)
        .body(body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"), "{v}");

    for gw in [&a, &b] {
        let logs = gw.logs();
        assert!(
            !logs.contains(&bob) && !logs.contains(&carol),
            "a key leaked into the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_binary_on_a_schema_version_1_database_upgrades_it_and_keeps_its_rows() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_db("oldschema");
    // The database as the first build with a PostgreSQL store left it: the
    // migrator's bookkeeping table at version 1, and the ledger with a row.
    let (version, v1) = modelgate::store::postgres::MIGRATIONS[0];
    assert_eq!(version, 1);
    pg.query_in(
        &db,
        &format!(
            "CREATE TABLE modelgate_schema (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                build TEXT NOT NULL
            );
            INSERT INTO modelgate_schema (version, build) VALUES (1, '0.0.1-old');
            {v1};
            INSERT INTO requests (ts_ms, request_id, \"key\", team, model, provider, input_tokens, output_tokens,
                cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, status, attempts, stream)
            VALUES ((extract(epoch from now()) * 1000)::bigint, 'req_from_version_1', 'alice', 'platform',
                'claude-sonnet-4-5', 'anthropic', 1000, 200, 0, 0, 0.25, 42, 200, 1, false);"
        ),
    )
    .unwrap();
    assert_eq!(pg.count(&db, "SELECT MAX(version) FROM modelgate_schema"), 1);

    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let gw = Gateway::start_async(&config(&up.base_url(), &pg.url(&db)), &[]).await;
    let latest = i64::from(modelgate::store::postgres::schema_version());
    assert_eq!(
        wait_count(
            &pg,
            &db,
            "SELECT MAX(version) FROM modelgate_schema",
            latest,
            Duration::from_secs(10)
        )
        .await,
        latest,
        "{}",
        gw.logs()
    );
    // Each missing step once, after the old one.
    assert_eq!(pg.count(&db, "SELECT COUNT(*) FROM modelgate_schema"), latest);
    assert_eq!(pg.count(&db, "SELECT COUNT(*) FROM gateway_keys"), 0);
    assert_eq!(pg.count(&db, "SELECT COUNT(*) FROM gateway_teams"), 0);
    assert!(gw.logs().contains(&format!("schema migrated to version {latest}")));

    // The old row is still there and counts.
    assert_eq!(
        pg.count(
            &db,
            "SELECT COUNT(*) FROM requests WHERE request_id = 'req_from_version_1'"
        ),
        1
    );
    let u = get_json(&gw, "/v1/usage", ALICE).await;
    assert_eq!(u["usage"]["requests"], 1, "{u}");
    assert_eq!(u["usage"]["spend_usd"], 0.25, "{u}");
    assert_eq!(u["team_usage"]["requests"], 1, "{u}");

    // A new request is recorded beside it.
    assert_eq!(post(&gw).await, 200);
    assert_eq!(
        wait_count(&pg, &db, "SELECT COUNT(*) FROM requests", 2, Duration::from_secs(10)).await,
        2
    );
    let u = get_json(&gw, "/v1/usage", ALICE).await;
    assert_eq!(u["usage"]["requests"], 2, "{u}");
    let (code, out, err) = tokio::task::block_in_place(|| cli(&gw.config_path(), &["usage", "--by", "key", "--json"]));
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["group"], "alice", "{rows}");
    assert_eq!(rows[0]["requests"], 2, "{rows}");
    assert!(!gw.logs().contains("ERROR"), "{}", gw.logs());
}

/// Send `n` requests with `key` to `gw`; the last status and its answer.
async fn last_of(gw: &Gateway, key: &str, n: usize) -> (u16, reqwest::header::HeaderMap, Value) {
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut last = None;
    for _ in 0..n {
        let r = client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", key)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        last = Some((status, headers, v));
    }
    last.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_created_changed_and_deleted_in_the_store_reach_every_replica() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_db("teams");
    let up = MockUpstream::start().await;
    up.set_default(Reply::json(200, anthropic_message_json("claude-sonnet-4-5", "ok")));
    // alice (a config key) names team `platform`, which is defined nowhere
    // yet; the file defines team `ops`.
    let yaml = format!(
        "{}teams:\n  ops: {{rate_limit: {{rpm: 1000}}}}\n",
        config(&up.base_url(), &pg.url(&db))
    );
    let a = Gateway::start_async(&yaml, &[]).await;
    let b = Gateway::start_async(&yaml, &[]).await;
    let config_path = a.config_path();
    let config_before = std::fs::read_to_string(&config_path).unwrap();
    assert_eq!(last_of(&a, ALICE, 3).await.0, 200, "no team limits yet");

    // A store key in the same team: it works, and the CLI says the team
    // exists nowhere yet.
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&config_path, &["keys", "create", "bob", "--team", "platform"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("modelgate teams create platform"), "{err}");
    let bob = out.trim().to_string();
    until_all(&[&a, &b], &bob, "claude-sonnet-4-5", 200).await;

    // The team is created with an rpm of 2: within 5 s both replicas
    // answer 429 for its keys, config key and store key alike.
    let (code, _, err) =
        tokio::task::block_in_place(|| cli(&config_path, &["teams", "create", "platform", "--rpm", "2"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("within seconds"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&config_path).unwrap(),
        config_before,
        "no config edit"
    );
    let took = until_all(&[&a, &b], ALICE, "claude-sonnet-4-5", 429).await;
    eprintln!("a new team's rpm applied on both replicas after {took:?}");
    let (status, headers, v) = last_of(&a, &bob, 1).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("team `platform`"),
        "{v}"
    );
    assert_eq!(
        headers
            .get("anthropic-ratelimit-requests-limit")
            .and_then(|h| h.to_str().ok()),
        Some("2")
    );
    let u = get_json(&b, "/v1/usage", ALICE).await;
    assert_eq!(u["team_usage"]["rate_limit"]["rpm"], 2, "{u}");

    // Refusals: a duplicate, a team of the file, a bad name, a zero limit.
    for (args, code_want, needle) in [
        (&["teams", "create", "platform"][..], 1, "already exists"),
        (&["teams", "create", "ops"], 1, "is in"),
        (&["teams", "update", "ops", "--rpm", "5"], 1, "is in"),
        (&["teams", "delete", "ops"], 1, "is in"),
        (&["teams", "create", "two words"], 1, "invalid team name"),
        (&["teams", "create", "zed", "--rpm", "0"], 1, "at least 1"),
        (
            &["teams", "update", "nobody", "--rpm", "5"],
            1,
            "no team named `nobody`",
        ),
        (&["teams", "update", "platform"], 1, "nothing to change"),
    ] {
        let (code, out, err) = tokio::task::block_in_place(|| cli(&config_path, args));
        assert_eq!(code, code_want, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }

    // Listed beside the file's teams, with who made them.
    let (code, out, err) = tokio::task::block_in_place(|| cli(&config_path, &["teams", "list", "--json"]));
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let row = |n: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no team {n} in {rows}"))
    };
    assert_eq!(row("ops")["source"], "config");
    assert_eq!(row("ops")["rpm"], 1000);
    let platform = row("platform");
    assert_eq!(platform["source"], "store");
    assert_eq!(platform["rpm"], 2);
    assert_eq!(platform["keys"], 2, "alice and bob: {platform}");
    assert!(platform["created_by"].as_str().unwrap().starts_with("ops-tester@"));
    let (code, table, _) = tokio::task::block_in_place(|| cli(&config_path, &["teams", "list"]));
    assert_eq!(code, 0);
    assert!(
        table.contains("platform") && table.contains("store") && table.contains("ops"),
        "{table}"
    );

    // The rpm cleared: lifted within 5 s; set again: back within 5 s.
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(
            &config_path,
            &["teams", "update", "platform", "--no-rpm", "--tpm", "1000000"],
        )
    });
    assert_eq!(code, 0, "{err}");
    until_all(&[&a, &b], ALICE, "claude-sonnet-4-5", 200).await;
    let (code, _, err) =
        tokio::task::block_in_place(|| cli(&config_path, &["teams", "update", "platform", "--rpm", "2"]));
    assert_eq!(code, 0, "{err}");
    until_all(&[&a, &b], ALICE, "claude-sonnet-4-5", 429).await;
    let (_, out, _) = tokio::task::block_in_place(|| cli(&config_path, &["teams", "list", "--json"]));
    assert!(out.contains("\"tpm\": 1000000"), "{out}");

    // Deleted: the limit is lifted on every replica within 5 s; the keys
    // keep working; the row stays, marked.
    let (code, _, err) = tokio::task::block_in_place(|| cli(&config_path, &["teams", "delete", "platform"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 key(s) still name team `platform`"), "{err}");
    let took = until_all(&[&a, &b], ALICE, "claude-sonnet-4-5", 200).await;
    eprintln!("a deleted team's rpm was lifted on both replicas after {took:?}");
    until_all(&[&a, &b], &bob, "claude-sonnet-4-5", 200).await;
    let (code, _, err) = tokio::task::block_in_place(|| cli(&config_path, &["teams", "delete", "platform"]));
    assert_eq!(code, 1, "{err}");
    let (_, out, _) = tokio::task::block_in_place(|| cli(&config_path, &["teams", "list", "--json", "--all"]));
    assert!(out.contains("\"deleted_by\": \"ops-tester@"), "{out}");
    assert_eq!(
        pg.count(
            &db,
            "SELECT COUNT(*) FROM gateway_teams WHERE deleted_at_ms IS NOT NULL"
        ),
        1
    );
    for gw in [&a, &b] {
        assert!(!gw.logs().contains(&bob), "a key leaked into the logs");
        assert!(!gw.logs().contains(PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_teams_budget_starts_from_the_fleets_history() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_db("teambudget");
    let up = MockUpstream::start().await;
    up.set_default(Reply::json(200, anthropic_message_json("claude-sonnet-4-5", "ok")));
    let yaml = config(&up.base_url(), &pg.url(&db)).replace("team: platform", "team: research");
    // The team made through the command line before any gateway runs (the
    // CLI migrates the empty database), with a $0.50 budget for all time.
    let path = tempfile::tempdir().unwrap();
    let file = path.path().join("modelgate.yaml");
    std::fs::write(&file, yaml.replace("{listen}", "127.0.0.1:1")).unwrap();
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(
            &file,
            &[
                "teams",
                "create",
                "research",
                "--budget-usd",
                "0.5",
                "--period",
                "total",
            ],
        )
    });
    assert_eq!(code, 0, "{err}");
    // The fleet already spent $0.60 in that team.
    pg.query_in(
        &db,
        "INSERT INTO requests (ts_ms, request_id, \"key\", team, model, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, status, attempts, stream)
         VALUES ((extract(epoch from now()) * 1000)::bigint, 'req_earlier', 'someone', 'research',
            'claude-sonnet-4-5', 1000, 200, 0, 0, 0.6, 42, 200, 1, false)",
    )
    .unwrap();

    // A new gateway (embedded state) starts the team's budget from that.
    let gw = Gateway::start_async(&yaml, &[]).await;
    let (status, _, v) = last_of(&gw, ALICE, 1).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "billing_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("team `research`"),
        "{v}"
    );
    assert_eq!(up.request_count(), 0, "nothing went upstream");
    let u = get_json(&gw, "/v1/usage", ALICE).await;
    assert_eq!(u["team_usage"]["budget_usd"], 0.5, "{u}");
    assert_eq!(u["team_usage"]["remaining_usd"], 0.0, "{u}");

    // Raised through the CLI: the key works again within 5 s.
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(
            &gw.config_path(),
            &[
                "teams",
                "update",
                "research",
                "--budget-usd",
                "100",
                "--period",
                "total",
            ],
        )
    });
    assert_eq!(code, 0, "{err}");
    until_all(&[&gw], ALICE, "claude-sonnet-4-5", 200).await;
}
