//! The shared state as deployed beyond one plain Redis: `rediss://` with a
//! private CA (`state.redis_ca_file`), the server name sent and checked,
//! and a Redis Cluster (`state.redis_cluster`), each with two gateways
//! enforcing one limit. Every Redis here is a real `redis-server` the test
//! starts on 127.0.0.1; without one the tests are skipped with a note
//! unless `MODELGATE_REQUIRE_REDIS=1`.

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::redis::{RedisCluster, RedisServer};
use support::*;

const ALICE: &str = "mg-aliceTestKey000000000000000000000000000001";
const CAROL: &str = "mg-carolTestKey000000000000000000000000000003";
/// What the mock's usage costs at claude-sonnet-4-5 list prices
/// (25 input, 12 output, 16384 cache read, 2048 cache write).
const COST: f64 = (25.0 * 3.0 + 12.0 * 15.0 + 16384.0 * 0.30 + 2048.0 * 3.75) / 1e6;

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// alice (team `platform`) with `alice_rpm`, carol (no team) with a total
/// budget of $0.50, and `state`.
fn config(upstream: &str, alice_rpm: u32, state: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ngrace_period: 0s\nlog_level: debug\ndefault_provider: anthropic\nproviders:\n  anthropic: {{type: anthropic, api_base: \"{upstream}\", api_key: sk-ant-test}}\nkeys:\n  - name: alice\n    team: platform\n    key_sha256: \"{}\"\n    rate_limit: {{rpm: {alice_rpm}}}\n  - name: carol\n    key_sha256: \"{}\"\n    budget: {{usd: 0.5, period: total}}\nstate: {state}\n",
        hash(ALICE),
        hash(CAROL)
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
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `n` requests at once, alternating over `gws`: how many were admitted.
/// Every refusal must be `refusal` (a 429 of that error type).
async fn burst(gws: &[&Gateway], key: &str, n: usize, max_tokens: u64, refusal: &str) -> u64 {
    let rs = join_all((0..n).map(|i| post(gws[i % gws.len()], key, body(max_tokens)))).await;
    let mut ok = 0;
    for r in rs {
        match r.status().as_u16() {
            200 => {
                ok += 1;
                r.text().await.unwrap();
            }
            429 => assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], refusal),
            s => panic!("unexpected status {s}: {}", r.text().await.unwrap()),
        }
    }
    ok
}

/// The caller's `/v1/usage` once `n` requests are counted (a request that
/// ends early settles just after its answer; bounded wait).
async fn usage_after(gw: &Gateway, key: &str, n: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = client()
            .get(gw.url("/v1/usage"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        last = r.json().await.unwrap();
        if last["usage"]["requests"] == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

/// Wait (bounded) until the gateway's log has `needle`.
async fn log_with(gw: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = gw.logs();
        if logs.contains(needle) || Instant::now() > deadline {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private CA and a server certificate for `localhost` (a DNS name only:
/// no IP address) that it signed, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    certs: support::pki::Pki,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let certs = support::pki::Pki::new(&["localhost"]);
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: certs.ca_pem.clone(),
            certs,
        };
        std::fs::write(pki.ca(), &pki.ca_pem).unwrap();
        std::fs::write(pki.path("server.crt"), pki.certs.leaf.pem()).unwrap();
        std::fs::write(pki.path("server.key"), pki.certs.leaf_key.serialize_pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    fn redis(&self) -> Option<RedisServer> {
        RedisServer::start_tls(
            &self.path("server.crt"),
            &self.path("server.key"),
            &self.ca(),
            self.ca_pem.as_bytes(),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_with_a_private_ca_two_gateways_share_one_limit_and_without_it_nothing_connects() {
    let pki = Pki::new();
    let Some(redis) = pki.redis() else { return };
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let state = |url: &str, ca: bool| {
        let ca = if ca {
            format!(", redis_ca_file: \"{}\"", pki.ca().display())
        } else {
            String::new()
        };
        config(
            &up.base_url(),
            20,
            &format!("{{backend: redis, redis_url: \"{url}\", redis_prefix: tls{ca}}}"),
        )
    };
    let by_name = format!("rediss://localhost:{}/0", redis.port);
    let a = Gateway::start_async(&state(&by_name, true), &[]).await;
    let b = Gateway::start_async(&state(&by_name, true), &[]).await;

    // 40 requests at once over both gateways: one limit of 20 a minute.
    let ok = burst(&[&a, &b], ALICE, 40, 10, "rate_limit_error").await;
    assert!((20..=22).contains(&ok), "{ok} admitted under one rpm limit of 20");
    // A budget, reserved and settled over TLS, read back by the other one.
    let ok = burst(&[&a, &b], CAROL, 4, 1000, "billing_error").await;
    assert_eq!(ok, 4);
    let u = usage_after(&b, CAROL, 4).await;
    let spent = u["usage"]["spend_usd"].as_f64().unwrap();
    assert!((spent - (4.0 * COST * 10_000.0).round() / 10_000.0).abs() < 1e-9, "{u}");

    // Without the CA file the server's certificate is not trusted: the
    // budget fails closed (529), a rate limit alone fails open.
    let c = Gateway::start_async(&state(&by_name, false), &[]).await;
    let r = post(&c, CAROL, body(10)).await;
    assert_eq!(r.status(), 529);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "overloaded_error");
    let r = post(&c, ALICE, body(10)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let logs = log_with(&c, "shared state error").await;
    assert!(logs.contains("UnknownIssuer"), "{logs}");

    // With the CA but by IP address: the certificate names only
    // `localhost`, so the host check fails.
    let d = Gateway::start_async(&state(&format!("rediss://127.0.0.1:{}/0", redis.port), true), &[]).await;
    let r = post(&d, CAROL, body(10)).await;
    assert_eq!(r.status(), 529);
    let logs = log_with(&d, "shared state error").await;
    assert!(logs.contains("not valid for name"), "{logs}");

    // The trusted gateways were never disturbed.
    let r = post(&a, CAROL, body(10)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_client_sends_the_url_host_as_sni() {
    // A TLS server for `localhost` that records the name each client
    // asks for, then hangs up (it is no Redis).
    let pki = Pki::new();
    let acceptor = pki.certs.acceptor(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let names: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = names.clone();
    tokio::spawn(async move {
        // Bounded: the gateway makes a handful of connection attempts.
        for _ in 0..32 {
            let Ok((tcp, _)) = listener.accept().await else { return };
            if let Ok(tls) = acceptor.accept(tcp).await {
                seen.lock()
                    .unwrap()
                    .push(tls.get_ref().1.server_name().map(str::to_string));
            }
        }
    });
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let gw = Gateway::start_async(
        &config(
            &up.base_url(),
            20,
            &format!(
                "{{backend: redis, redis_url: \"rediss://localhost:{port}/0\", redis_ca_file: \"{}\"}}",
                pki.ca().display()
            ),
        ),
        &[],
    )
    .await;
    // No Redis behind it: a rate limit alone fails open.
    let r = post(&gw, ALICE, body(10)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while names.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names = names.lock().unwrap().clone();
    assert!(!names.is_empty(), "no TLS handshake reached the server");
    assert!(names.iter().all(|n| n.as_deref() == Some("localhost")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_on_a_redis_cluster_enforce_one_rpm_and_one_budget() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(3)).await.unwrap() else {
        return;
    };
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let seeds = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = config(
        &up.base_url(),
        50,
        &format!("{{backend: redis, redis_cluster: [{seeds}], redis_prefix: c1}}"),
    );
    let a = Gateway::start_async(&yaml, &[]).await;
    let b = Gateway::start_async(&yaml, &[]).await;
    let gws = [&a, &b];

    // alice and her team `platform` in one script call: one slot.
    let ok = burst(&gws, ALICE, 100, 10, "rate_limit_error").await;
    assert!((50..=52).contains(&ok), "{ok} admitted under one rpm limit of 50");

    // carol's state lives on another node than alice's team; the scripts
    // are gone from every node, so the first calls load them again.
    let alice_rate = "c1:{team:platform}:rate:key:alice";
    let carol_spend = "c1:{key:carol}:spend:key:carol:0";
    let owner = cluster.owner(alice_rate);
    assert_ne!(owner, cluster.owner(carol_spend), "the test wants two nodes");
    let exists: bool = ::redis::cmd("EXISTS")
        .arg(alice_rate)
        .query(&mut cluster.nodes[owner].connection())
        .unwrap();
    assert!(exists, "{alice_rate} on node {owner}");
    for node in &cluster.nodes {
        ::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec(&mut node.connection())
            .unwrap();
    }

    // $0.50 total for carol. Each reservation ($0.015) covers its answer
    // ($0.0129), so the two gateways together may never overspend.
    let ok = burst(&gws, CAROL, 100, 1000, "billing_error").await;
    let v = usage_after(&b, CAROL, ok).await;
    let spent = v["usage"]["spend_usd"].as_f64().unwrap();
    assert!(spent <= 0.5, "overspent: ${spent} of $0.50");
    assert!(ok >= 30, "only {ok} admitted for ${spent}");
    assert!(
        (spent - (ok as f64 * COST * 10_000.0).round() / 10_000.0).abs() < 1e-3,
        "{ok} {spent}"
    );
    assert_eq!(v["usage"]["requests"], ok);
    let held: u64 = ::redis::cmd("HGET")
        .arg(carol_spend)
        .arg("requests")
        .query(&mut cluster.nodes[cluster.owner(carol_spend)].connection())
        .unwrap();
    assert_eq!(held, ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_started_before_its_cluster_is_formed_admits_once_it_is() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::unformed(3)).await.unwrap() else {
        return;
    };
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-sonnet-4-5", &["ok"]));
    let seeds = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let gw = Gateway::start_async(
        &config(
            &up.base_url(),
            50,
            &format!("{{backend: redis, redis_cluster: [{seeds}], redis_prefix: c2}}"),
        ),
        &[],
    )
    .await;
    // No slot is served yet: a budget fails closed.
    let r = post(&gw, CAROL, body(10)).await;
    assert_eq!(r.status(), 529);
    r.text().await.unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.form();
        cluster
    })
    .await
    .unwrap();
    // The client finds the slots on its own (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let r = post(&gw, CAROL, body(10)).await;
        let status = r.status().as_u16();
        r.text().await.unwrap();
        if status == 200 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{}", gw.logs());
    let u = usage_after(&gw, CAROL, 1).await;
    assert_eq!(u["usage"]["requests"], 1, "{u}");
    drop(cluster);
}
