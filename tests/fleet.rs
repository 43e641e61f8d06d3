//! The fleet behind a load balancer, with real processes on 127.0.0.1:
//! one PostgreSQL (the ledger), one Redis (shared limits and budgets),
//! three gateways, and HAProxy in front (`tests/support/haproxy.rs`:
//! health checks on `/health`, retries of requests that met a replica
//! shutting down). Three replicas share one ledger and one budget; a
//! rolling restart under load fails nothing and loses no row; a replica
//! killed outright (SIGKILL) fails only the requests it had in flight, and
//! once it is back on its volume (as a killed container restarts in its
//! pod) every answer a client received has its row: each record was in the
//! replica's journal before its answer ended.
//!
//! Clients read which replica answered from HAProxy's `x-served-by`
//! header, and the gateway's request id from `request-id` (the mock
//! upstream sends none, so the gateway's own id, the ledger row's, is
//! relayed): every answer is matched to its row by id.
//!
//! The tests run one at a time (each starts a whole fleet; the machine may
//! have two cores).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::haproxy::Haproxy;
use support::postgres::Postgres;
use support::redis::RedisServer;
use support::*;

const ALICE: &str = "mg-aliceTestKey000000000000000000000000000001";
const PROVIDER_SECRET: &str = "sk-ant-api03-PROVIDERSECRETdonotlog0000000000";
const MODEL: &str = "claude-sonnet-4-5";
const REPLICAS: usize = 3;
/// What one answer costs: the mock's usage (25 input, 12 output, 16384
/// cache read, 2048 cache write) at claude-sonnet-4-5 list prices.
const COST: f64 = (25.0 * 3.0 + 12.0 * 15.0 + 16384.0 * 0.30 + 2048.0 * 3.75) / 1e6;
/// The most one request reserves before it goes upstream: `max_tokens`
/// (1,000) output tokens at $15/M plus the input estimate (a body of ~110
/// bytes at 4 bytes a token, $3/M), rounded up.
const MAX_RESERVE: f64 = (1000.0 * 15.0 + 64.0 * 3.0) / 1e6;

/// One fleet at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// One replica's config: the shared store and state, its own spool (kept
/// across its restarts, as a replica's volume would be).
fn config(upstream: &str, store_url: &str, redis_url: &str, spool: &Path, budget: Option<f64>) -> String {
    let budget = budget
        .map(|usd| format!("    budget: {{usd: {usd}, period: total}}\n"))
        .unwrap_or_default();
    format!(
        "listen: \"{{listen}}\"\ngrace_period: 20s\nlog_level: info\ndefault_provider: anthropic\n\
         providers:\n  anthropic: {{type: anthropic, api_base: \"{upstream}\", api_key: {PROVIDER_SECRET}}}\n\
         keys:\n  - name: alice\n    team: platform\n    key_sha256: \"{}\"\n{budget}\
         state: {{backend: redis, redis_url: \"{redis_url}\", redis_prefix: fleet}}\n\
         store:\n  url: \"{store_url}\"\n  spool: \"{}\"\n",
        hash(ALICE),
        spool.display()
    )
}

fn body(content: &str) -> String {
    format!(
        r#"{{"model":"{MODEL}","max_tokens":1000,"stream":true,"messages":[{{"role":"user","content":"{content}"}}]}}"#
    )
}

/// A complete Anthropic stream without a `request-id` header (so the
/// gateway relays its own), pausing `pause` after `message_start`.
fn stream(pause: Option<Duration>) -> Reply {
    let mut steps = anthropic_sse_chunks(MODEL, &["ok"]);
    if let Some(d) = pause {
        steps.insert(1, SseStep::Delay(d));
    }
    Reply::sse(steps)
}

struct Fleet {
    pg: Postgres,
    db: String,
    _redis: RedisServer,
    up: MockUpstream,
    yamls: Vec<String>,
    _spools: Vec<tempfile::TempDir>,
    gws: Vec<Gateway>,
    lb: Haproxy,
}

impl Fleet {
    /// `None` (skipped, with a note) when PostgreSQL, Redis or HAProxy is
    /// not installed and not required.
    async fn start(reply: Reply, budget: Option<f64>) -> Option<Fleet> {
        if !support::haproxy::available() {
            return None;
        }
        let pg = tokio::task::block_in_place(Postgres::start)?;
        let redis = tokio::task::block_in_place(RedisServer::start)?;
        let db = pg.create_db("fleet");
        let up = MockUpstream::start().await;
        up.set_default(reply);
        let spools: Vec<_> = (0..REPLICAS).map(|_| tempfile::tempdir().unwrap()).collect();
        let yamls: Vec<String> = spools
            .iter()
            .map(|s| config(&up.base_url(), &pg.url(&db), &redis.url(), s.path(), budget))
            .collect();
        let gws = join_all(yamls.iter().map(|y| Gateway::start_async(y, &[]))).await;
        let ports: Vec<u16> = gws.iter().map(Gateway::port).collect();
        let lb = tokio::task::block_in_place(|| Haproxy::start(&ports))?;
        let up_all = tokio::task::block_in_place(|| lb.wait_all_up(Duration::from_secs(10)));
        assert!(up_all, "HAProxy never saw every replica up: {:?}", lb.stats());
        Some(Fleet {
            pg,
            db,
            _redis: redis,
            up,
            yamls,
            _spools: spools,
            gws,
            lb,
        })
    }

    fn count(&self, sql: &str) -> i64 {
        tokio::task::block_in_place(|| self.pg.count(&self.db, sql))
    }

    /// The ledger's request ids, or the error (until the first replica's
    /// writer has migrated the database, there is no table to read).
    fn try_row_ids(&self) -> Result<HashSet<String>, String> {
        let rows = tokio::task::block_in_place(|| self.pg.query_in(&self.db, "SELECT request_id FROM requests"))?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// Poll the ledger until it holds `want` rows, bounded; the count reached.
    async fn wait_rows(&self, want: usize, within: Duration) -> usize {
        self.wait_until(within, |ids| ids.len() == want).await.len()
    }

    /// Poll the ledger until it holds every id of `want`, bounded; the ids it holds.
    async fn wait_ids(&self, want: &HashSet<&str>, within: Duration) -> HashSet<String> {
        self.wait_until(within, |ids| want.iter().all(|id| ids.contains(*id)))
            .await
    }

    /// Poll the ledger's request ids until `done` says so or `within`
    /// passes; the last ids read. Panics (with PostgreSQL's log) if the
    /// ledger could never be read.
    async fn wait_until(&self, within: Duration, done: impl Fn(&HashSet<String>) -> bool) -> HashSet<String> {
        let deadline = Instant::now() + within;
        loop {
            let read = self.try_row_ids();
            if let Ok(ids) = &read {
                if done(ids) {
                    return ids.clone();
                }
            }
            if Instant::now() >= deadline {
                return read.unwrap_or_else(|e| panic!("cannot read the ledger: {e}\n{}", tail(&self.pg.log(), 4000)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every request id in the ledger.
    fn row_ids(&self) -> HashSet<String> {
        self.try_row_ids()
            .unwrap_or_else(|e| panic!("{e}\n{}", tail(&self.pg.log(), 4000)))
    }

    /// Rows per writer (one random id per process).
    fn rows_by_writer(&self) -> Vec<i64> {
        let counts = tokio::task::block_in_place(|| {
            self.pg
                .query_in(&self.db, "SELECT COUNT(*) FROM requests GROUP BY writer")
        })
        .unwrap();
        let mut v: Vec<i64> = counts.into_iter().flatten().map(|c| c.parse().unwrap()).collect();
        v.sort_unstable();
        v
    }

    /// The replicas' and HAProxy's logs, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, gw) in self.gws.iter().enumerate() {
            out.push_str(&format!("===== replica g{i} =====\n{}\n", tail(&gw.logs(), 8000)));
        }
        out.push_str(&tail(&self.lb.logs(), 8000));
        out
    }
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    s[start..].to_string()
}

/// What one request came to, as its client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    slow: bool,
    /// `None`: no response head at all.
    status: Option<u16>,
    request_id: Option<String>,
    /// HAProxy's `x-served-by`.
    server: Option<String>,
    /// A 200 whose stream ended with `message_stop`.
    complete: bool,
    error_type: Option<String>,
    /// A transport or body error.
    error: Option<String>,
    done_at: Instant,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.status == Some(200) && self.complete
    }
}

/// Send one request through `url` with the prompt `content` (the mock
/// answers by it: `fast`, or a slow or held stream), read its answer to the
/// end. `on_head` hears which replica answered as soon as the head arrives.
async fn send(
    client: &reqwest::Client,
    url: &str,
    content: &str,
    on_head: Option<tokio::sync::oneshot::Sender<Option<String>>>,
) -> Outcome {
    let sent = client
        .post(url)
        .header("x-api-key", ALICE)
        .header("content-type", "application/json")
        .body(body(content))
        .send()
        .await;
    let mut o = Outcome {
        slow: content != "fast",
        status: None,
        request_id: None,
        server: None,
        complete: false,
        error_type: None,
        error: None,
        done_at: Instant::now(),
    };
    let r = match sent {
        Ok(r) => r,
        Err(e) => {
            o.error = Some(format!("{e:?}"));
            o.done_at = Instant::now();
            return o;
        }
    };
    o.status = Some(r.status().as_u16());
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    o.request_id = header("request-id");
    o.server = header("x-served-by");
    if let Some(tx) = on_head {
        let _ = tx.send(o.server.clone());
    }
    match r.bytes().await {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            if o.status == Some(200) {
                o.complete = text.contains("event: message_stop");
            } else {
                o.error_type = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["type"].as_str().map(str::to_string));
            }
        }
        Err(e) => o.error = Some(format!("{e:?}")),
    }
    o.done_at = Instant::now();
    o
}

type Outcomes = Arc<Mutex<Vec<Outcome>>>;

/// A client sending `content` back to back through `url` until `stop`,
/// `max` requests or `deadline`, whichever comes first.
fn spawn_load(
    url: String,
    content: &'static str,
    stop: Arc<AtomicBool>,
    max: usize,
    deadline: Instant,
    outcomes: Outcomes,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        for _ in 0..max {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            let o = send(&client, &url, content, None).await;
            outcomes.lock().unwrap().push(o);
        }
    })
}

fn ok_count(outcomes: &Outcomes) -> usize {
    outcomes.lock().unwrap().iter().filter(|o| o.ok()).count()
}

/// Poll until `n` requests have succeeded, bounded; the count reached.
async fn wait_ok(outcomes: &Outcomes, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let have = ok_count(outcomes);
        if have >= n || Instant::now() >= deadline {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests per replica (`x-served-by`).
fn per_server(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(o.server.clone().unwrap_or_else(|| "-".into())).or_insert(0) += 1;
    }
    m
}

async fn usage(gw: &Gateway) -> Value {
    let r = client()
        .get(gw.url("/v1/usage"))
        .header("x-api-key", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_ledger_and_one_budget() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // $0.50 for the fleet: room for about 37 answers of $0.0129.
    const BUDGET: f64 = 0.5;
    const BATCH: usize = 6;
    const N: usize = 60;
    let Some(fleet) = Fleet::start(stream(None), Some(BUDGET)).await else {
        return;
    };
    let url = fleet.lb.url("/v1/messages");
    let client = client();

    // Sixty requests through HAProxy, six at a time.
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut ok_before_batch = Vec::new();
    for _ in 0..N / BATCH {
        ok_before_batch.push(outcomes.iter().filter(|o| o.ok()).count());
        let batch = join_all((0..BATCH).map(|_| send(&client, &url, "fast", None))).await;
        outcomes.extend(batch);
    }
    let ok = outcomes.iter().filter(|o| o.ok()).count();
    let refused = outcomes.iter().filter(|o| o.status == Some(429)).count();
    eprintln!(
        "{ok} answered, {refused} refused by the budget; per replica {:?}",
        per_server(&outcomes)
    );
    // Every request is answered: 200 with a whole stream, or the budget's 429.
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.error.is_none(), "request {i} failed: {o:?}\n{}", fleet.logs());
        match o.status {
            Some(200) => assert!(o.complete, "request {i}: a cut stream {o:?}"),
            Some(429) => assert_eq!(o.error_type.as_deref(), Some("billing_error"), "request {i}: {o:?}"),
            _ => panic!("request {i}: {o:?}\n{}", fleet.logs()),
        }
        assert!(o.request_id.is_some() && o.server.is_some(), "request {i}: {o:?}");
    }
    // 200 until the budget stops them: the first refusal comes only once
    // what was spent, plus what a batch in flight reserves, passes the budget…
    let first_refused = outcomes
        .iter()
        .position(|o| o.status == Some(429))
        .expect("the budget stops them");
    let spent_then = ok_before_batch[first_refused / BATCH] as f64 * COST;
    assert!(
        spent_then + BATCH as f64 * MAX_RESERVE > BUDGET,
        "refused with ${spent_then:.4} spent of ${BUDGET}"
    );
    // …and the budget stops them: the last batch is refused whole.
    assert!(outcomes[N - BATCH..].iter().all(|o| o.status == Some(429)));

    // One ledger row per answered request (refusals included), by request id.
    let rows = fleet.wait_rows(N, Duration::from_secs(15)).await;
    assert_eq!(rows, N, "one ledger row per request\n{}", fleet.logs());
    assert_eq!(fleet.count("SELECT COUNT(DISTINCT request_id) FROM requests"), N as i64);
    let ids: HashSet<String> = outcomes.iter().filter_map(|o| o.request_id.clone()).collect();
    assert_eq!(ids.len(), N, "a request id per answer");
    assert_eq!(fleet.row_ids(), ids, "the ledger's request ids are the answers'");
    assert_eq!(
        fleet.count("SELECT COUNT(*) FROM requests WHERE status = 200"),
        ok as i64
    );
    assert_eq!(
        fleet.count("SELECT COUNT(*) FROM requests WHERE status = 429"),
        refused as i64
    );

    // Never overspent by more than a batch in flight (each at most one
    // answer's cost); a reservation covers its answer, so not at all.
    let spent: f64 = tokio::task::block_in_place(|| {
        fleet
            .pg
            .query_in(&fleet.db, "SELECT SUM(cost_usd)::text FROM requests")
            .unwrap()[0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    });
    let bound = BUDGET + BATCH as f64 * COST;
    eprintln!("spent ${spent:.6} of ${BUDGET} (bound ${bound:.6})");
    assert!(spent <= bound, "overspent: ${spent} > ${bound}");
    assert!(
        spent <= BUDGET,
        "a reservation covers its answer, yet ${spent} > ${BUDGET}"
    );
    assert!((spent - ok as f64 * COST).abs() < 1e-9, "{ok} answers cost ${spent}");

    // Every replica, asked directly, gives the fleet's one answer.
    let answers = join_all(fleet.gws.iter().map(usage)).await;
    for (i, u) in answers.iter().enumerate() {
        assert_eq!(
            u["usage"], answers[0]["usage"],
            "replica g{i} disagrees: {u} vs {}",
            answers[0]
        );
        assert_eq!(u["team_usage"], answers[0]["team_usage"], "replica g{i}: {u}");
    }
    let u = &answers[0]["usage"];
    assert_eq!(u["requests"], N as u64, "{u}");
    assert!(
        (u["spend_usd"].as_f64().unwrap() - (spent * 10_000.0).round() / 10_000.0).abs() < 1e-9,
        "{u}"
    );
    assert_eq!(u["tokens"]["output"], ok as u64 * 12, "{u}");
    assert_eq!(u["budget_usd"], BUDGET, "{u}");

    // Spread over all three: each replica answered its share (round
    // robin), wrote those rows itself, and logged each request once.
    let served = per_server(&outcomes);
    assert_eq!(served.len(), REPLICAS, "{served:?}");
    for (name, n) in &served {
        assert!(*n >= N / REPLICAS / 2, "replica {name} answered only {n}: {served:?}");
    }
    let mut by_server: Vec<i64> = served.values().map(|n| *n as i64).collect();
    by_server.sort_unstable();
    assert_eq!(
        fleet.rows_by_writer(),
        by_server,
        "each replica wrote the rows of what it answered"
    );
    for (i, gw) in fleet.gws.iter().enumerate() {
        let logged = gw.logs().matches(" POST /v1/messages ").count();
        assert_eq!(logged, served[&format!("g{i}")], "g{i}'s access log");
    }
    eprintln!("HAProxy: {:?}", fleet.lb.stats());
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_fails_nothing_and_loses_no_rows() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // Short streams with a pause, so requests are in flight at each
    // SIGTERM; one client sends longer ones (1 s); and before each restart
    // a stream is held open on the replica that stops (`hold0`…), until
    // after HAProxy has taken it out of rotation.
    let gates: Vec<Gate> = (0..REPLICAS).map(|_| Gate::new()).collect();
    let held = gates.clone();
    let reply = Reply::script(move |r| {
        let text = r.body_str();
        if text.contains("\"slow\"") {
            return stream(Some(Duration::from_secs(1)));
        }
        for (i, gate) in held.iter().enumerate() {
            if text.contains(&format!("\"hold{i}\"")) {
                let mut steps = anthropic_sse_chunks(MODEL, &["ok"]);
                steps.insert(1, SseStep::Gate(gate.clone()));
                return Reply::sse(steps);
            }
        }
        stream(Some(Duration::from_millis(20)))
    });
    let Some(mut fleet) = Fleet::start(reply, None).await else {
        return;
    };
    let url = fleet.lb.url("/v1/messages");
    let outcomes: Outcomes = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut clients: Vec<_> = (0..4)
        .map(|i| {
            let content = if i == 3 { "slow" } else { "fast" };
            spawn_load(url.clone(), content, stop.clone(), 5_000, deadline, outcomes.clone())
        })
        .collect();
    assert!(
        wait_ok(&outcomes, 20, Duration::from_secs(10)).await >= 20,
        "{}",
        fleet.logs()
    );

    // Restart every replica in turn: SIGTERM, wait for it to exit, a new
    // process on the same port, back in rotation before the next.
    let mut old_logs = Vec::new();
    for i in 0..REPLICAS {
        let name = format!("g{i}");
        let port = fleet.gws[i].port();
        let content: &'static str = ["hold0", "hold1", "hold2"][i];
        let (tasks, landed) = hold_on(&url, content, &name, 1, 30, &outcomes).await;
        clients.extend(tasks);
        assert_eq!(landed, 1, "no held stream landed on {name}");
        let sigterm_at = Instant::now();
        assert!(fleet.gws[i].signal("TERM"));
        let down = tokio::task::block_in_place(|| fleet.lb.wait_status(&name, "DOWN", Duration::from_secs(5)));
        assert!(down, "HAProxy still sees {name} up: {:?}", fleet.lb.stats());
        // Out of rotation, and still serving the held stream.
        assert!(
            fleet.gws[i].is_running(),
            "{name} exited with a stream open\n{}",
            fleet.logs()
        );
        gates[i].open();
        let exited = tokio::task::block_in_place(|| fleet.gws[i].wait_exit(Duration::from_secs(25)));
        assert!(
            exited.is_some_and(|s| s.success()),
            "{name} did not exit cleanly after SIGTERM: {exited:?}\n{}",
            fleet.logs()
        );
        let drained_in = sigterm_at.elapsed();
        old_logs.push(fleet.gws[i].logs());
        let fresh = Gateway::start_on_async(port, &fleet.yamls[i], &[]).await;
        drop(std::mem::replace(&mut fleet.gws[i], fresh));
        let up = tokio::task::block_in_place(|| fleet.lb.wait_status(&name, "UP", Duration::from_secs(10)));
        assert!(up, "HAProxy never saw the new {name} up: {:?}", fleet.lb.stats());
        eprintln!(
            "{name}: drained and exited {drained_in:?} after SIGTERM, back in rotation {:?} after",
            sigterm_at.elapsed()
        );
        // Some load on the new process before the next restart.
        let before = ok_count(&outcomes);
        wait_ok(&outcomes, before + 20, Duration::from_secs(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for gate in &gates {
        gate.open();
    }
    for c in clients {
        c.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok()).collect();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    let stats = fleet.lb.stats().unwrap_or_default();
    eprintln!(
        "{} requests, {} failed, {} slow or held; per replica {:?}; HAProxy retries {}, redispatches {}",
        outcomes.len(),
        failed.len(),
        outcomes.iter().filter(|o| o.slow).count(),
        per_server(&outcomes),
        stats.iter().map(|s| s.retries).sum::<u64>(),
        stats.iter().map(|s| s.redispatches).sum::<u64>(),
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling restart: {failed:#?}\n{}\n===== the replaced processes =====\n{}",
        failed.len(),
        outcomes.len(),
        fleet.logs(),
        old_logs.iter().map(|l| tail(l, 6000)).collect::<Vec<_>>().join("\n")
    );
    assert!(ok.len() >= 80, "too little load to mean anything: {}", ok.len());

    // Every answer has its row, once, and the upstream was asked once per answer.
    let rows = fleet.wait_rows(ok.len(), Duration::from_secs(15)).await;
    assert_eq!(rows, ok.len(), "rows vs answers\n{}", fleet.logs());
    assert_eq!(
        fleet.count("SELECT COUNT(DISTINCT request_id) FROM requests"),
        ok.len() as i64
    );
    let ids: HashSet<String> = ok.iter().filter_map(|o| o.request_id.clone()).collect();
    assert_eq!(ids.len(), ok.len());
    assert_eq!(fleet.row_ids(), ids, "the ledger's request ids are the answers'");
    assert_eq!(fleet.up.request_count(), ok.len(), "upstream requests vs answers");
    // Six processes wrote rows: each original and each restarted replica.
    let writers = fleet.rows_by_writer();
    assert_eq!(writers.len(), 2 * REPLICAS, "rows per writer: {writers:?}");
    for log in &old_logs {
        assert!(log.contains("drained: no request in flight"), "{}", tail(log, 4000));
    }
    eprintln!("took {:?}", started.elapsed());
}

/// Open streams with the prompt `content` one at a time, until `want` of
/// them are answered by replica `target` or `tries` are open. Each task
/// pushes its outcome when its stream ends. Returns the tasks and how many
/// landed on `target`. (Round robin among concurrent clients puts each on
/// any replica: 30 tries all miss one with a chance of (2/3)^30, under 1e-5.)
async fn hold_on(
    url: &str,
    content: &'static str,
    target: &str,
    want: usize,
    tries: usize,
    outcomes: &Outcomes,
) -> (Vec<tokio::task::JoinHandle<()>>, usize) {
    let mut tasks = Vec::new();
    let mut landed = 0;
    for _ in 0..tries {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (url, outcomes) = (url.to_string(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let o = send(&client(), &url, content, Some(tx)).await;
            outcomes.lock().unwrap().push(o);
        }));
        let server = tokio::time::timeout(Duration::from_secs(10), rx).await;
        let server = server.expect("a held stream's head within 10 s").ok().flatten();
        if server.as_deref() == Some(target) {
            landed += 1;
            if landed == want {
                break;
            }
        }
    }
    (tasks, landed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_loses_only_its_in_flight_rows() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // Slow streams hold after `message_start` until the gate opens (after
    // the kill); the others pause 20 ms, so some are in flight too.
    let gate = Gate::new();
    let held = gate.clone();
    let reply = Reply::script(move |r| {
        if r.body_str().contains("\"slow\"") {
            let mut steps = anthropic_sse_chunks(MODEL, &["ok"]);
            steps.insert(1, SseStep::Gate(held.clone()));
            Reply::sse(steps)
        } else {
            stream(Some(Duration::from_millis(20)))
        }
    });
    let Some(mut fleet) = Fleet::start(reply, None).await else {
        return;
    };
    let url = fleet.lb.url("/v1/messages");
    let outcomes: Outcomes = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut clients: Vec<_> = (0..3)
        .map(|_| spawn_load(url.clone(), "fast", stop.clone(), 5_000, deadline, outcomes.clone()))
        .collect();
    assert!(
        wait_ok(&outcomes, 20, Duration::from_secs(10)).await >= 20,
        "{}",
        fleet.logs()
    );

    // Slow streams until two are held on the victim (bounded).
    const VICTIM: usize = 1;
    let victim = format!("g{VICTIM}");
    let (tasks, on_victim) = hold_on(&url, "slow", &victim, 2, 30, &outcomes).await;
    clients.extend(tasks);
    assert!(on_victim >= 1, "no slow stream landed on {victim}");

    // SIGKILL: no drain, no flush.
    let pid = fleet.gws[VICTIM].child.id();
    let kill_at = Instant::now();
    fleet.gws[VICTIM].child.kill().unwrap();
    let killed = tokio::task::block_in_place(|| fleet.gws[VICTIM].wait_exit(Duration::from_secs(5)));
    assert!(killed.is_some(), "pid {pid} survived SIGKILL");
    let down = tokio::task::block_in_place(|| fleet.lb.wait_status(&victim, "DOWN", Duration::from_secs(5)));
    assert!(down, "HAProxy still sees {victim} up: {:?}", fleet.lb.stats());
    // The survivors carry the load on.
    let before = ok_count(&outcomes);
    wait_ok(&outcomes, before + 30, Duration::from_secs(10)).await;
    gate.open();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let on_victim = |o: &&Outcome| o.server.as_deref() == Some(victim.as_str());
    // The victim comes back on its volume, as a killed container does in
    // its pod: it adopts what its journal holds and the store lacks.
    let port = fleet.gws[VICTIM].port();
    fleet.gws[VICTIM] = Gateway::start_on_async(port, &fleet.yamls[VICTIM], &[]).await;
    for line in fleet.gws[VICTIM].logs().lines().filter(|l| l.contains("adopting")) {
        eprintln!("  {victim} back: {line}");
    }

    // In flight on the victim when it died: its answer came from the victim
    // (so it began before the kill) and its client had not read it all by
    // then. (When the client saw the head is no guide: a head the victim
    // wrote just before it died may be read just after.)
    let in_flight: Vec<&Outcome> = outcomes
        .iter()
        .filter(on_victim)
        .filter(|o| o.done_at >= kill_at)
        .collect();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok()).collect();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    let stats = fleet.lb.stats().unwrap_or_default();
    eprintln!(
        "{} requests, {} ok, {} failed, {} in flight on {victim} when killed ({} slow); per replica {:?}; \
         HAProxy retries {}, redispatches {}",
        outcomes.len(),
        ok.len(),
        failed.len(),
        in_flight.len(),
        in_flight.iter().filter(|o| o.slow).count(),
        per_server(&outcomes),
        stats.iter().map(|s| s.retries).sum::<u64>(),
        stats.iter().map(|s| s.redispatches).sum::<u64>(),
    );
    // Only requests cut on the victim fail: every other one was retried
    // elsewhere by HAProxy or answered by a survivor.
    for o in &failed {
        assert!(
            on_victim(o) && o.done_at >= kill_at,
            "a request failed that was not in flight on {victim}: {o:?}\n{}",
            fleet.logs()
        );
    }
    assert!(failed.len() <= in_flight.len());
    for o in outcomes.iter().filter(|o| o.slow) {
        if on_victim(&o) {
            assert!(!o.ok(), "a stream held on {victim} completed after SIGKILL: {o:?}");
        } else {
            assert!(o.ok(), "a stream on a survivor failed: {o:?}");
        }
    }

    // The ledger: a row for every answer a client received, the victim's
    // included (each record was journaled before its answer ended).
    let answered: HashSet<&str> = ok.iter().filter_map(|o| o.request_id.as_deref()).collect();
    let ids = fleet.wait_ids(&answered, Duration::from_secs(20)).await;
    let lost: Vec<&Outcome> = ok
        .iter()
        .copied()
        .filter(|o| !ids.contains(o.request_id.as_deref().unwrap_or("")))
        .collect();
    for o in &lost {
        eprintln!(
            "  answered {:?} before the kill by {}, no row: {}",
            kill_at.saturating_duration_since(o.done_at),
            o.server.as_deref().unwrap_or("-"),
            o.request_id.as_deref().unwrap_or("-")
        );
    }
    assert!(lost.is_empty(), "answers without a row\n{}", fleet.logs());
    // No row for a request no client completed, but for those cut on the victim.
    let ok_ids: HashSet<&str> = ok.iter().filter_map(|o| o.request_id.as_deref()).collect();
    let killed_ids: HashSet<&str> = in_flight.iter().filter_map(|o| o.request_id.as_deref()).collect();
    let extra: Vec<&String> = ids
        .iter()
        .filter(|id| !ok_ids.contains(id.as_str()) && !killed_ids.contains(id.as_str()))
        .collect();
    assert!(extra.is_empty(), "rows for requests no client completed: {extra:?}");
    let rows = ids.len();
    let cut_with_row = ids
        .iter()
        .filter(|id| killed_ids.contains(id.as_str()) && !ok_ids.contains(id.as_str()))
        .count();
    assert_eq!(rows, ok.len() + cut_with_row);
    assert!(rows <= ok.len() + killed_ids.len());
    assert_eq!(
        fleet.count("SELECT COUNT(*) FROM requests"),
        rows as i64,
        "no request has two rows"
    );

    let upstream = fleet.up.request_count();
    eprintln!(
        "ledger: {rows} rows for {} completed requests ({cut_with_row} cut with a row); the upstream was \
         asked {upstream} times: {} requests have no row",
        ok.len(),
        upstream - rows
    );
    for o in &in_flight {
        eprintln!(
            "  in flight on {victim}: {} {} {}",
            o.request_id.as_deref().unwrap_or("-"),
            if o.slow { "slow" } else { "fast" },
            if o.ok() {
                "(completed: read from buffers after the kill)"
            } else {
                "(cut)"
            },
        );
    }
    assert!(
        upstream >= rows + failed.len(),
        "the cut requests reached the upstream and have no row"
    );
    eprintln!("took {:?}", started.elapsed());
}
