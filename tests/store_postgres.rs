//! The PostgreSQL store through the real binary, against a real PostgreSQL
//! started by the test (`tests/support/postgres.rs`): the ledger lands in
//! the database from every replica, `/v1/usage`, `/admin/usage` and
//! `modelgate usage` report the fleet's figures, the database can go away
//! under load without a failed request or a lost or doubled row (the
//! spool), a shutdown while it is away keeps the records for the next
//! start, migrations are safe with replicas starting at once, and keys
//! created, changed and revoked with `modelgate keys` reach every replica
//! within seconds without a reload.

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
        assert_eq!(u["team_usage"]["requests"], 5, "{u}");
        let admin = get_json(gw, "/admin/usage?by=team&since=1h", ADMIN).await;
        assert_eq!(admin["shared"], true, "{admin}");
        assert_eq!(admin["rows"][0]["group"], "platform", "{admin}");
        assert_eq!(admin["rows"][0]["requests"], 5, "{admin}");
        assert!(!admin.to_string().contains(PASSWORD));
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
    // Every step once (1: requests, 2: gateway_keys), however many replicas raced.
    assert_eq!(pg.count(&db, "SELECT COUNT(*) FROM modelgate_schema"), 2);
    assert_eq!(pg.count(&db, "SELECT MAX(version) FROM modelgate_schema"), 2);
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
