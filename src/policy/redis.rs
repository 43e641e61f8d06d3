//! The shared state backend: rate-limit TATs and period spend in Redis, so
//! every replica behind a load balancer enforces one limit and one budget.
//!
//! This module owns the connection to Redis ([`Target`]: one node by
//! `state.redis_url`, or a Redis Cluster by `state.redis_cluster`, either
//! over TLS with `rediss://`), the key layout ([`KeyNames`]) and the Lua
//! scripts. [`super`] owns the decision and the refusal.
//!
//! Each admission is one `EVALSHA` of [`ADMIT`] (check every scope, then
//! charge every scope, atomically), each settlement one of [`SETTLE`]. The
//! scripts run the same steps as [`super::memory`] and [`super::gcra`], on
//! Redis's clock so replicas with skewed clocks still agree. A script that
//! is not loaded on the node that gets the call (`NOSCRIPT`: a restarted
//! node, a failover, a cluster node seen for the first time) is loaded
//! there and called again (`Script::invoke_async`; in a cluster `SCRIPT
//! LOAD` goes to every node).
//!
//! Keys (`PREFIX` is `state.redis_prefix`), on one node:
//! - `PREFIX:rate:key:NAME` / `PREFIX:rate:team:NAME` — hash `r` (request
//!   TAT, ms) and `t` (token TAT, ms); expires a minute after it is idle.
//! - `PREFIX:spend:key:NAME:START_MS` — hash `spent` (nano-USD, incl.
//!   open reservations), `requests`, `input`, `output`, `cache_read`,
//!   `cache_write` for the period starting at START_MS; expires 35 days
//!   after the period ends (`total` never does).
//! - `PREFIX:holds:key:NAME:START_MS` — the open budget reservations of
//!   that period: a sorted set of `HOLD:NANOS` members scored by when the
//!   hold lapses ([`HOLD_TTL`] after admission).
//! - `PREFIX:settled:HOLD` — set once a request's settlement has been
//!   applied (ten minutes), so a settlement retried after a timeout is
//!   applied exactly once.
//!
//! In a Redis Cluster, a script may only touch keys of one hash slot, and
//! one admission touches the key's *and* its team's rate, spend and holds.
//! So every name carries a hash tag after the prefix: the scope's group
//! ([`ScopeLimits::group`]), which is the team for a key in a team and the
//! key itself otherwise: `PREFIX:{team:T}:rate:key:NAME`,
//! `PREFIX:{team:T}:spend:team:T:START_MS`, `PREFIX:{key:K}:holds:key:K:START_MS`,
//! `PREFIX:{team:T}:settled:HOLD`, and so on. The costs of that choice:
//! - A team and all its keys live in one slot, so on one node: the cluster
//!   spreads teams (and keys without a team) over its nodes, not the
//!   requests of one team. Each call is one script of a few dozen hash
//!   and sorted-set operations on that node (its cost on one node:
//!   `MODELGATE_BENCH_REDIS_URL=redis://… cargo bench --bench request_path --
//!   policy_auth_admit_settle_redis`); a single very large team does not
//!   get faster from more nodes.
//! - Moving a key to another team (or into or out of one) moves its state
//!   to another slot: in cluster mode its current rate windows and period
//!   spend start again from zero. The team's own state does not move.
//!
//! The single-node layout keeps the untagged names of earlier releases, so
//! an upgrade loses nothing; switching one deployment from a single node to
//! a cluster starts every current rate window and period from zero (the
//! ledgers keep every request).
//!
//! A reservation is never counted for longer than its request needs. A
//! settlement takes its hold out of the set and credits it back; an
//! admission that timed out on the gateway's side (Redis may have applied
//! it) is followed by a release that does the same if, and only if, the
//! hold is there; a settlement that failed is retried in the background;
//! and every admission first sweeps holds that have lapsed, whose requests
//! ended without any settlement reaching Redis. A request that outlives its
//! hold is charged its full cost when it settles. An admission whose hold
//! is already there (the cluster client resent it after a lost reply) is
//! not charged again.
//!
//! TLS (`rediss://`) uses rustls with the system roots, plus the CA
//! certificates of `state.redis_ca_file`; the server name sent (SNI) and
//! checked is the URL's host (an IP address is checked against the
//! certificate's IP names, and no SNI is sent). `rediss://…#insecure`,
//! which would turn every check off, is refused when the config loads.
//!
//! Sentinel is not built in: the `redis` crate's Sentinel client hands out
//! a connection to the primary of the moment, and following a failover
//! (noticing it, asking the sentinels again, reconnecting) would be ours
//! to build and test. Point `state.redis_url` at an address that follows
//! the primary instead (a managed Redis endpoint, or a proxy that tracks
//! the primary), or use a cluster.
//!
//! All Redis I/O runs on one small runtime of its own: the multiplexed
//! connection's driver (and the cluster client's) then never depends on
//! which Pingora worker thread happens to be polling.
//!
//! A Redis that stops answering costs one wait, not one per request: after
//! an operation times out or its connection fails, operations fail at once
//! (the fail modes decide as they would after the wait) until a `PING` in
//! the background, sent every [`PROBE_EVERY`], is answered ([`Outage`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Script, TlsCertificates};

use crate::config::schema::StateConfig;

use super::gcra::Quota;
use super::period::Window;
use super::{Actual, Ask, Charge, Refusal, ScopeLimits, Standing};

/// Upper bound on one state operation, connection included. A request never
/// waits longer than this on Redis before `on_redis_error` decides.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Connecting to one node, and waiting for one reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// After an operation finds Redis away (no answer within [`OP_TIMEOUT`], or
/// the connection refused or broken), operations fail at once instead of
/// each waiting out its own timeout, until a `PING` in the background finds
/// it back; one is sent this often ([`Outage`]).
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Spend keys outlive their period this long, for late reports.
const KEEP_AFTER_PERIOD_MS: i64 = 35 * 24 * 3600 * 1000;
/// How long a budget reservation holds without a settlement: longer than
/// any request (streams included) runs.
pub const HOLD_TTL: Duration = Duration::from_secs(3600);
/// Background attempts at a settlement or release Redis did not take.
const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

/// KEYS: (rate, spend, holds) per scope. ARGV: n, tokens, reserve, hold
/// member, hold ttl (ms), then per scope rpm, tpm, budget (-1: none),
/// expire_at (0: never).
/// Returns {0} admitted, {1, i, spent} budget refusal, {2, i, retry_ms,
/// request_tat, token_tat, now} rate refusal. A call whose hold member is
/// already in a holds set was applied before: {0}, nothing charged again.
pub const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local reserve = tonumber(ARGV[3])
local member = ARGV[4]
local ttl = tonumber(ARGV[5])
local P = 60000
local function arg(i, k) return tonumber(ARGV[5 + (i - 1) * 4 + k]) end
if reserve > 0 then
  for i = 1, n do
    if arg(i, 3) >= 0 and redis.call('ZSCORE', KEYS[3 * i], member) then return {0} end
  end
end
for i = 1, n do
  if arg(i, 3) >= 0 then
    local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3 * i], '-inf', now, 'LIMIT', 0, 100)
    for _, m in ipairs(lapsed) do
      local amount = tonumber(string.match(m, ':(%d+)$') or '0')
      redis.call('HINCRBY', KEYS[3 * i - 1], 'spent', -amount)
      redis.call('ZREM', KEYS[3 * i], m)
    end
  end
end
for i = 1, n do
  local budget = arg(i, 3)
  if budget >= 0 then
    local spent = tonumber(redis.call('HGET', KEYS[3 * i - 1], 'spent') or '0')
    if spent + reserve > budget then return {1, i, spent} end
  end
end
local worst, worst_i, rt, tt = 0, 0, 0, 0
local new_r, new_t = {}, {}
for i = 1, n do
  local rpm = arg(i, 1)
  local tpm = arg(i, 2)
  local tats = redis.call('HMGET', KEYS[3 * i - 2], 'r', 't')
  local r, tk = tonumber(tats[1] or '0'), tonumber(tats[2] or '0')
  local wait = 0
  if rpm > 0 then
    new_r[i] = math.max(r, now) + P / rpm
    wait = math.max(wait, new_r[i] - now - P)
  end
  if tpm > 0 then
    new_t[i] = math.max(tk, now) + math.min(tokens, tpm) * P / tpm
    wait = math.max(wait, new_t[i] - now - P)
  end
  if wait > worst then worst, worst_i, rt, tt = wait, i, r, tk end
end
if worst > 0 then return {2, worst_i, math.ceil(worst), math.floor(rt), math.floor(tt), now} end
for i = 1, n do
  local ttl_rate = 0
  if new_r[i] then
    redis.call('HSET', KEYS[3 * i - 2], 'r', string.format('%.3f', new_r[i]))
    ttl_rate = math.max(ttl_rate, new_r[i] - now)
  end
  if new_t[i] then
    redis.call('HSET', KEYS[3 * i - 2], 't', string.format('%.3f', new_t[i]))
    ttl_rate = math.max(ttl_rate, new_t[i] - now)
  end
  if ttl_rate > 0 then redis.call('PEXPIRE', KEYS[3 * i - 2], math.ceil(ttl_rate) + P) end
  if arg(i, 3) >= 0 and reserve > 0 then
    redis.call('HINCRBY', KEYS[3 * i - 1], 'spent', reserve)
    redis.call('ZADD', KEYS[3 * i], now + ttl, member)
    local exp = arg(i, 4)
    if exp > 0 then
      redis.call('PEXPIREAT', KEYS[3 * i - 1], exp)
      redis.call('PEXPIREAT', KEYS[3 * i], exp)
    end
  end
end
return {0}
"#;

/// KEYS: (rate, spend, holds) per scope, then the settled marker. ARGV: n,
/// used tokens, cost, input, output, cache_read, cache_write, hold member,
/// then per scope tpm, charged tokens, reserved, expire_at (0: never).
/// Returns 0 when applied, 1 when this settlement was applied before.
pub const SETTLE: &str = r#"
local n = tonumber(ARGV[1])
if not redis.call('SET', KEYS[3 * n + 1], '1', 'NX', 'PX', 600000) then return 1 end
local used, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
local member = ARGV[8]
for i = 1, n do
  local b = 8 + (i - 1) * 4
  local tpm, charged = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local reserved, exp = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if tpm > 0 and used ~= charged then
    local tat = tonumber(redis.call('HGET', KEYS[3 * i - 2], 't') or '0')
    tat = math.max(tat + (used - charged) * 60000 / tpm, 0)
    redis.call('HSET', KEYS[3 * i - 2], 't', string.format('%.3f', tat))
    if redis.call('PTTL', KEYS[3 * i - 2]) < 0 then redis.call('PEXPIRE', KEYS[3 * i - 2], 120000) end
  end
  local credit = 0
  if reserved > 0 and redis.call('ZREM', KEYS[3 * i], member) == 1 then credit = reserved end
  local k = KEYS[3 * i - 1]
  redis.call('HINCRBY', k, 'spent', cost - credit)
  redis.call('HINCRBY', k, 'requests', 1)
  redis.call('HINCRBY', k, 'input', ARGV[4])
  redis.call('HINCRBY', k, 'output', ARGV[5])
  redis.call('HINCRBY', k, 'cache_read', ARGV[6])
  redis.call('HINCRBY', k, 'cache_write', ARGV[7])
  if exp > 0 then redis.call('PEXPIREAT', k, exp) end
end
return 0
"#;

/// KEYS: (spend, holds) per scope. ARGV: n, hold member, then per scope the
/// reserved amount. Credits back a hold an admission may have taken, if it
/// is there; nothing otherwise.
pub const RELEASE: &str = r#"
local n = tonumber(ARGV[1])
local released = 0
for i = 1, n do
  local reserved = tonumber(ARGV[2 + i])
  if reserved > 0 and redis.call('ZREM', KEYS[2 * i], ARGV[2]) == 1 then
    redis.call('HINCRBY', KEYS[2 * i - 1], 'spent', -reserved)
    released = released + 1
  end
end
return released
"#;

/// A hold's member in the holds set: its id and the nano-dollars it reserves.
fn hold_member(hold: u64, reserve: u64) -> String {
    format!("{hold:016x}:{reserve}")
}

/// Key names. One node: the untagged layout of earlier releases. Cluster:
/// the scope's group as a hash tag after the prefix, so that everything one
/// script call touches is in one slot (see the module doc).
pub struct KeyNames {
    prefix: String,
    tagged: bool,
}

impl KeyNames {
    pub fn new(prefix: &str, cluster: bool) -> KeyNames {
        KeyNames {
            prefix: prefix.to_string(),
            tagged: cluster,
        }
    }

    /// `PREFIX`, or `PREFIX:{GROUP}` in a cluster.
    fn head(&self, s: &ScopeLimits) -> String {
        if self.tagged {
            format!("{}:{{{}}}", self.prefix, s.group)
        } else {
            self.prefix.clone()
        }
    }

    pub fn rate(&self, s: &ScopeLimits) -> String {
        format!("{}:rate:{}", self.head(s), s.id)
    }

    pub fn spend(&self, s: &ScopeLimits, w: Window) -> String {
        format!("{}:spend:{}:{}", self.head(s), s.id, w.start_ms)
    }

    pub fn holds(&self, s: &ScopeLimits, w: Window) -> String {
        format!("{}:holds:{}:{}", self.head(s), s.id, w.start_ms)
    }

    /// The settled marker of `hold`, with the state of `s` (the request's
    /// first scope).
    pub fn settled(&self, s: &ScopeLimits, hold: u64) -> String {
        format!("{}:settled:{hold:016x}", self.head(s))
    }
}

/// Where the shared state lives, checked and ready to connect.
pub enum Target {
    /// One Redis primary (`state.redis_url`).
    Node(Box<redis::Client>),
    /// A Redis Cluster, found from its seed nodes (`state.redis_cluster`).
    Cluster(Box<ClusterClient>),
}

impl Target {
    /// Check `state.redis_url` / `state.redis_cluster` and
    /// `state.redis_ca_file`, and build the client. An error names the
    /// config key; it never quotes a URL (URLs may carry a password).
    pub fn from_config(state: &StateConfig) -> Result<Target, (String, String)> {
        let urls: Vec<(String, &str)> = match (&state.redis_url, &state.redis_cluster) {
            (Some(_), Some(_)) => {
                return Err((
                    "state.redis_cluster".into(),
                    "give either `state.redis_url` (one node) or `state.redis_cluster` (the seed nodes of a \
                     cluster), not both"
                        .into(),
                ))
            }
            (None, None) => {
                return Err((
                    "state.redis_url".into(),
                    "is required with `state.backend: redis` (or `state.redis_cluster` for a Redis Cluster)".into(),
                ))
            }
            (Some(url), None) => vec![("state.redis_url".into(), url.as_str())],
            (None, Some(seeds)) if seeds.is_empty() => {
                return Err((
                    "state.redis_cluster".into(),
                    "lists no seed node; give at least one `redis://host:port` (or `rediss://`)".into(),
                ))
            }
            (None, Some(seeds)) => seeds
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("state.redis_cluster[{i}]"), u.as_str()))
                .collect(),
        };
        let mut tls = false;
        for (key, url) in &urls {
            tls |= check_url(url).map_err(|m| (key.clone(), m))?;
        }
        let certs = match &state.redis_ca_file {
            None => None,
            Some(_) if !tls => {
                return Err((
                    "state.redis_ca_file".into(),
                    "is set, but no Redis URL uses TLS; write `rediss://` to connect over TLS".into(),
                ))
            }
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(trust_bundle(path).map_err(|m| ("state.redis_ca_file".to_string(), m))?),
            }),
        };
        match state.redis_cluster {
            None => {
                let (key, url) = (&urls[0].0, urls[0].1);
                let client = match certs {
                    Some(certs) => redis::Client::build_with_tls(url, certs),
                    None => redis::Client::open(url),
                };
                client
                    .map(|c| Target::Node(Box::new(c)))
                    .map_err(|e| (key.clone(), e.to_string()))
            }
            Some(_) => {
                let mut builder = ClusterClientBuilder::new(urls.iter().map(|(_, u)| *u))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .overall_response_timeout(Some(OP_TIMEOUT))
                    // MOVED / ASK after a resharding, a failover: a few quick
                    // tries, all within OP_TIMEOUT.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                builder
                    .build()
                    .map(|c| Target::Cluster(Box::new(c)))
                    .map_err(|e| ("state.redis_cluster".into(), e.to_string()))
            }
        }
    }
}

/// Whether `url` is a TLS URL; an error when the redis client cannot use
/// it or it asks for `#insecure`.
fn check_url(url: &str) -> Result<bool, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    let tls = matches!(parsed.scheme(), "rediss" | "valkeys");
    if parsed.fragment() == Some("insecure") {
        return Err(concat!(
            "`#insecure` (TLS without any certificate or host name check) is not supported; ",
            "trust a private CA with `state.redis_ca_file` instead"
        )
        .into());
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    Ok(tls)
}

/// The system roots and the certificates of the PEM file at `path`, as one
/// PEM bundle: the redis client takes its roots in that form, and trusts
/// only them when given any.
fn trust_bundle(path: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let extra = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path} is not a PEM certificate file: {e}"))?;
    if extra.is_empty() {
        return Err(format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    for (i, cert) in extra.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("certificate {} of {path} cannot be a trust anchor: {e}", i + 1))?;
    }
    // Roots that fail to load or parse are left out, as the redis client
    // would refuse the whole set for one of them.
    let system = rustls_native_certs::load_native_certs().certs;
    let mut bundle = Vec::with_capacity(pem.len() + system.len() * 2048);
    for cert in system {
        if rustls::RootCertStore::empty().add(cert.clone()).is_ok() {
            pem_encode(&cert, &mut bundle);
        }
    }
    for cert in &extra {
        pem_encode(cert, &mut bundle);
    }
    Ok(bundle)
}

fn pem_encode(der: &[u8], out: &mut Vec<u8>) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
}

/// The connection every operation clones: a reconnecting connection to one
/// node, or the cluster client's (which follows the slot map).
#[derive(Clone)]
enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether Redis is known to be away. While it is, every keyed request
/// would otherwise wait up to [`OP_TIMEOUT`] before its fail mode decides;
/// with this, only the requests already waiting when Redis went away wait,
/// and the rest are decided at once (admitted unchecked with `fail_open`,
/// refused with `fail_closed`), as they would have been after the wait. No
/// request is used to find out whether Redis is back: one prober in the
/// background `PING`s it every [`PROBE_EVERY`] and ends the outage.
#[derive(Default)]
struct Outage {
    away: AtomicBool,
}

impl Outage {
    fn is_away(&self) -> bool {
        self.away.load(Ordering::Acquire)
    }

    /// Redis did not answer or the connection failed (not an error Redis
    /// itself replied with). True for the call that began the outage: it
    /// starts the prober.
    fn began(&self) -> bool {
        self.away
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Redis answered.
    fn ended(&self) {
        self.away.store(false, Ordering::Release);
    }
}

pub struct RedisState {
    target: Target,
    outage: std::sync::Arc<Outage>,
    /// Started on first use, in the serving process: a runtime's threads do
    /// not survive the daemon fork.
    io: std::sync::OnceLock<Result<(tokio::runtime::Handle, Conn), String>>,
    keys: KeyNames,
    admit: Script,
    settle: Script,
    release: Script,
}

impl RedisState {
    pub fn new(state: &StateConfig) -> Result<RedisState, String> {
        let target = Target::from_config(state).map_err(|(key, message)| format!("{key}: {message}"))?;
        let cluster = matches!(target, Target::Cluster(_));
        Ok(RedisState {
            target,
            outage: Default::default(),
            io: std::sync::OnceLock::new(),
            keys: KeyNames::new(&state.redis_prefix, cluster),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            release: Script::new(RELEASE),
        })
    }

    fn io(&self) -> Result<&(tokio::runtime::Handle, Conn), String> {
        self.io
            .get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("redis-state")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the Redis state runtime: {e}"))?;
                let conn = {
                    let _inside = runtime.enter();
                    match &self.target {
                        Target::Node(client) => {
                            let config = ConnectionManagerConfig::new()
                                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                                .set_number_of_retries(1)
                                .set_max_delay(Duration::from_millis(500));
                            Conn::Node(
                                ConnectionManager::new_lazy_with_config((**client).clone(), config)
                                    .map_err(|e| format!("state.redis_url: {e}"))?,
                            )
                        }
                        // Connects in the background; until it has, calls wait
                        // (bounded by OP_TIMEOUT) or fail.
                        Target::Cluster(client) => Conn::Cluster(
                            client.get_pending_async_connection_with_config(
                                ClusterConfig::new()
                                    .set_connection_timeout(CONNECT_TIMEOUT)
                                    .set_response_timeout(RESPONSE_TIMEOUT),
                            ),
                        ),
                    }
                };
                let handle = runtime.handle().clone();
                // The runtime lives as long as the process: it drives the
                // shared connection for every request, and dropping a runtime
                // from inside an async context would panic at shutdown.
                std::mem::forget(runtime);
                Ok((handle, conn))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Run `op` on the state runtime, bounded by [`OP_TIMEOUT`]; at once
    /// an error while Redis is known to be away ([`Outage`]).
    async fn run<T: Send + 'static>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, String> {
        let (runtime, conn) = self.io()?;
        if self.outage.is_away() {
            return Err("Redis stopped answering; not waiting for it until it answers a PING again".into());
        }
        let task = runtime.spawn(async move { tokio::time::timeout(OP_TIMEOUT, op).await });
        let (result, away) = match task.await {
            Ok(Ok(Ok(v))) => (Ok(v), false),
            Ok(Ok(Err(e))) => {
                let away = e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal();
                (Err(e.to_string()), away)
            }
            Ok(Err(_)) => (
                Err(format!("Redis did not answer within {} ms", OP_TIMEOUT.as_millis())),
                true,
            ),
            Err(e) => (Err(format!("Redis task failed: {e}")), false),
        };
        if away && self.outage.began() {
            self.probe(runtime, conn);
        }
        result
    }

    /// `PING` Redis every [`PROBE_EVERY`] until it answers, then end the
    /// outage. One prober runs at a time (the one the outage began with).
    fn probe(&self, runtime: &tokio::runtime::Handle, conn: &Conn) {
        let outage = std::sync::Arc::clone(&self.outage);
        let conn = conn.clone();
        runtime.spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let mut conn = conn.clone();
                let ping = redis::cmd("PING");
                let answer = tokio::time::timeout(OP_TIMEOUT, ping.query_async::<redis::Value>(&mut conn)).await;
                if matches!(answer, Ok(Ok(_))) {
                    log::info!(
                        "shared state: Redis answers again after {} s",
                        started.elapsed().as_secs()
                    );
                    outage.ended();
                    return;
                }
            }
        });
    }

    /// Invoke `script` with `keys` and `args` on the state runtime (EVALSHA,
    /// loading the script on first use).
    async fn invoke<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, String> {
        let script = script.clone();
        let mut conn = self.io()?.1.clone();
        self.run(async move {
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            inv.invoke_async(&mut conn).await
        })
        .await
    }

    /// Check and charge every scope; `hold` names the reservation. When
    /// Redis does not answer, the admission may still have been applied:
    /// a release follows in the background, which credits the hold back
    /// if it is there.
    pub(super) async fn admit(&self, ask: &Ask<'_>, hold: u64) -> Result<Result<(), Refusal>, String> {
        let member = hold_member(hold, ask.demand.reserve_nanos);
        let mut keys = Vec::with_capacity(ask.scopes.len() * 3);
        let mut args: Vec<String> = vec![
            int(ask.scopes.len() as i64),
            int(ask.demand.tokens as i64),
            int(ask.demand.reserve_nanos as i64),
            member.clone(),
            int(HOLD_TTL.as_millis() as i64),
        ];
        for (s, w) in ask.scopes {
            keys.push(self.keys.rate(s));
            keys.push(self.keys.spend(s, *w));
            keys.push(self.keys.holds(s, *w));
            args.push(int(s.rpm.map_or(0, |g| g.limit() as i64)));
            args.push(int(s.tpm.map_or(0, |g| g.limit() as i64)));
            args.push(int(s.budget_nanos.map_or(-1, |b| b as i64)));
            args.push(int(expire_at(*w)));
        }
        match self.invoke::<Vec<i64>>(&self.admit, keys, args).await {
            Ok(reply) => Ok(decode_admit(ask, &reply)),
            Err(e) => {
                if ask.demand.reserve_nanos > 0 && ask.scopes.iter().any(|(s, _)| s.budget_nanos.is_some()) {
                    let mut keys = Vec::with_capacity(ask.scopes.len() * 2);
                    let mut args = vec![int(ask.scopes.len() as i64), member];
                    for (s, w) in ask.scopes {
                        keys.push(self.keys.spend(s, *w));
                        keys.push(self.keys.holds(s, *w));
                        let reserved = if s.budget_nanos.is_some() {
                            ask.demand.reserve_nanos
                        } else {
                            0
                        };
                        args.push(int(reserved as i64));
                    }
                    self.retry_in_background("release", &self.release, keys, args);
                }
                Err(e)
            }
        }
    }

    /// Replace `hold`'s reservation with the cost. Applied exactly once
    /// (the settled marker); when Redis does not take it now, it is retried
    /// in the background.
    pub(super) async fn settle(&self, charges: &[Charge], actual: &Actual, hold: u64) -> Result<(), String> {
        let Some(first) = charges.first() else { return Ok(()) };
        let u = &actual.usage;
        let reserve = charges.iter().map(|c| c.reserved_nanos).max().unwrap_or(0);
        let mut keys = Vec::with_capacity(charges.len() * 3 + 1);
        let mut args: Vec<String> = [
            charges.len() as i64,
            u.total() as i64,
            actual.cost_nanos as i64,
            u.input_tokens as i64,
            u.output_tokens as i64,
            u.cache_read_input_tokens as i64,
            u.cache_creation_input_tokens as i64,
        ]
        .into_iter()
        .map(int)
        .collect();
        args.push(hold_member(hold, reserve));
        for c in charges {
            keys.push(self.keys.rate(&c.scope));
            keys.push(self.keys.spend(&c.scope, c.window));
            keys.push(self.keys.holds(&c.scope, c.window));
            args.push(int(c.scope.tpm.map_or(0, |g| g.limit() as i64)));
            args.push(int(c.tokens as i64));
            args.push(int(c.reserved_nanos as i64));
            args.push(int(expire_at(c.window)));
        }
        keys.push(self.keys.settled(&first.scope, hold));
        match self.invoke::<i64>(&self.settle, keys.clone(), args.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.retry_in_background("settlement", &self.settle, keys, args);
                Err(e)
            }
        }
    }

    /// Run `script` again a few times, apart, until Redis takes it. Only for
    /// scripts that are safe to repeat (release, settle).
    fn retry_in_background(&self, what: &'static str, script: &Script, keys: Vec<String>, args: Vec<String>) {
        let Ok((runtime, conn)) = self.io() else { return };
        let script = script.clone();
        let conn = conn.clone();
        runtime.spawn(async move {
            for delay in RETRY_DELAYS {
                tokio::time::sleep(delay).await;
                let mut conn = conn.clone();
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(a);
                }
                match tokio::time::timeout(OP_TIMEOUT, inv.invoke_async::<redis::Value>(&mut conn)).await {
                    Ok(Ok(_)) => {
                        log::info!("shared state: a {what} Redis missed went through on retry");
                        return;
                    }
                    Ok(Err(e)) => log::debug!("shared state: {what} retry failed: {e}"),
                    Err(_) => log::debug!("shared state: {what} retry timed out"),
                }
            }
            log::warn!(
                "shared state: a {what} never reached Redis; its reservation lapses within {} min",
                HOLD_TTL.as_secs() / 60
            );
        });
    }

    /// One `HMGET` per scope, all in flight at once: in a cluster the
    /// scopes (all teams, for the budget gauges) live in different slots,
    /// which one pipeline cannot span.
    pub(super) async fn standings(&self, scopes: &[(&ScopeLimits, Window)]) -> Result<Vec<Standing>, String> {
        const FIELDS: [&str; 6] = ["spent", "requests", "input", "output", "cache_read", "cache_write"];
        let keys: Vec<String> = scopes.iter().map(|(s, w)| self.keys.spend(s, *w)).collect();
        let conn = self.io()?.1.clone();
        let rows: Vec<Vec<Option<i64>>> = self
            .run(async move {
                futures_util::future::try_join_all(keys.into_iter().map(|key| {
                    let mut conn = conn.clone();
                    async move { redis::cmd("HMGET").arg(key).arg(&FIELDS).query_async(&mut conn).await }
                }))
                .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let f = |i: usize| r.get(i).copied().flatten().unwrap_or(0);
                Standing {
                    spent_nanos: f(0),
                    requests: f(1).max(0) as u64,
                    usage: crate::dialects::Usage {
                        input_tokens: f(2).max(0) as u64,
                        output_tokens: f(3).max(0) as u64,
                        cache_read_input_tokens: f(4).max(0) as u64,
                        cache_creation_input_tokens: f(5).max(0) as u64,
                    },
                }
            })
            .collect())
    }
}

/// Script arguments travel as text; the scripts read numbers with `tonumber`.
fn int(v: i64) -> String {
    v.to_string()
}

/// When a period's keys may go: 35 days after its end (0: never, for `total`).
fn expire_at(w: Window) -> i64 {
    w.end_ms.map_or(0, |e| e + KEEP_AFTER_PERIOD_MS)
}

fn decode_admit(ask: &Ask<'_>, reply: &[i64]) -> Result<(), Refusal> {
    let at = |i: usize| reply.get(i).copied().unwrap_or(0);
    let scope = (at(1).max(1) as usize - 1).min(ask.scopes.len().saturating_sub(1));
    match at(0) {
        1 => Err(Refusal::Budget {
            scope,
            spent_nanos: at(2),
        }),
        2 => {
            let (s, _) = ask.scopes[scope];
            let now = at(5) as f64;
            let quota = |g: super::gcra::Gcra, tat: i64| -> Quota { g.quota(tat as f64, now) };
            Err(Refusal::Rate {
                scope,
                retry_after_ms: (at(2) as f64).max(1.0),
                requests: s.rpm.map(|g| quota(g, at(3))),
                tokens: s.tpm.map(|g| quota(g, at(4))),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{BudgetPeriod, StateBackend};

    #[test]
    fn an_outage_begins_once_and_ends_when_redis_answers() {
        let o = Outage::default();
        assert!(!o.is_away());
        assert!(o.began(), "the first failure begins the outage");
        assert!(!o.began(), "later ones do not start another prober");
        assert!(o.is_away());
        o.ended();
        assert!(!o.is_away());
        assert!(o.began(), "a new outage after it");
    }

    /// A Redis that accepts connections and never answers: the first
    /// operation waits out its timeout, the ones after it do not wait, and
    /// none is the probe.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stalled_redis_costs_one_wait_not_one_per_request() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Held open, never read: connections are accepted by the kernel.
        let _held = listener;
        let state = StateConfig {
            backend: StateBackend::Redis,
            redis_url: Some(format!("redis://127.0.0.1:{port}/0")),
            ..StateConfig::default()
        };
        let redis = RedisState::new(&state).unwrap();
        let s = scope("key", "alice");
        let w = Window::of(BudgetPeriod::Monthly, 1_700_000_000_000);
        let scopes = [(&s, w)];
        let ask = Ask {
            now_ms: 1_700_000_000_000,
            scopes: &scopes,
            demand: Default::default(),
        };
        let first = redis.admit(&ask, 1).await.unwrap_err();
        assert!(!first.contains("not waiting"), "{first}");
        for hold in 2..50 {
            let e = redis.admit(&ask, hold).await.unwrap_err();
            assert!(e.contains("not waiting"), "{e}");
        }
        // The prober never hears back from this Redis: still away.
        assert!(redis.outage.is_away());
    }
    use redis::cluster_routing::Slot;

    fn scope(kind: &str, name: &str) -> ScopeLimits {
        ScopeLimits::new(kind, name, None, None)
    }

    /// Every key one ADMIT and one SETTLE call touch, for these scopes.
    fn script_keys(names: &KeyNames, scopes: &[&ScopeLimits]) -> Vec<String> {
        let w = Window::of(BudgetPeriod::Monthly, 1_700_000_000_000);
        let mut keys: Vec<String> = scopes
            .iter()
            .flat_map(|s| [names.rate(s), names.spend(s, w), names.holds(s, w)])
            .collect();
        keys.push(names.settled(scopes[0], 0xabc));
        keys
    }

    #[test]
    fn one_node_keeps_the_untagged_layout() {
        let team = scope("team", "platform");
        let alice = scope("key", "alice").in_team(Some(&team));
        let names = KeyNames::new("modelgate", false);
        assert_eq!(
            script_keys(&names, &[&alice, &team]),
            [
                "modelgate:rate:key:alice",
                "modelgate:spend:key:alice:1698796800000",
                "modelgate:holds:key:alice:1698796800000",
                "modelgate:rate:team:platform",
                "modelgate:spend:team:platform:1698796800000",
                "modelgate:holds:team:platform:1698796800000",
                "modelgate:settled:0000000000000abc",
            ]
        );
    }

    #[test]
    fn in_a_cluster_a_key_and_its_team_share_the_team_tag() {
        let team = scope("team", "platform");
        let alice = scope("key", "alice").in_team(Some(&team));
        let carol = scope("key", "carol").in_team(None);
        let names = KeyNames::new("modelgate", true);
        let keys = script_keys(&names, &[&alice, &team]);
        assert_eq!(keys[0], "modelgate:{team:platform}:rate:key:alice");
        assert_eq!(keys[4], "modelgate:{team:platform}:spend:team:platform:1698796800000");
        assert_eq!(keys[6], "modelgate:{team:platform}:settled:0000000000000abc");
        assert!(keys.iter().all(|k| Slot::for_key(k) == Slot::for_key("team:platform")));
        let keys = script_keys(&names, &[&carol]);
        assert_eq!(keys[1], "modelgate:{key:carol}:spend:key:carol:1698796800000");
        assert!(keys.iter().all(|k| Slot::for_key(k) == Slot::for_key("key:carol")));
    }

    #[test]
    fn braces_in_names_or_the_prefix_still_keep_one_admission_in_one_slot() {
        for prefix in ["mg", "m{g", "m{g}", "}{"] {
            for (key, team) in [("a}b", "t{x}"), ("{", "}"), ("k", "{}"), ("}", "{")] {
                let t = scope("team", team);
                let k = scope("key", key).in_team(Some(&t));
                let names = KeyNames::new(prefix, true);
                let keys = script_keys(&names, &[&k, &t]);
                let slot = Slot::for_key(&keys[0]);
                assert!(
                    keys.iter().all(|k| Slot::for_key(k) == slot),
                    "{prefix} {key} {team}: {keys:?}"
                );
                let alone = scope("key", key);
                let keys = script_keys(&names, &[&alone]);
                let slot = Slot::for_key(&keys[0]);
                assert!(keys.iter().all(|k| Slot::for_key(k) == slot), "{keys:?}");
            }
        }
    }

    fn state(url: Option<&str>, cluster: Option<&[&str]>, ca: Option<&str>) -> StateConfig {
        StateConfig {
            backend: StateBackend::Redis,
            redis_url: url.map(str::to_string),
            redis_cluster: cluster.map(|c| c.iter().map(|u| u.to_string()).collect()),
            redis_ca_file: ca.map(str::to_string),
            ..Default::default()
        }
    }

    fn error(s: StateConfig) -> (String, String) {
        match Target::from_config(&s) {
            Ok(_) => panic!("accepted {:?} {:?}", s.redis_url, s.redis_cluster),
            Err(e) => e,
        }
    }

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn exactly_one_of_url_and_cluster() {
        let (key, msg) = error(state(None, None, None));
        assert_eq!(key, "state.redis_url");
        assert!(msg.contains("required") && msg.contains("state.redis_cluster"), "{msg}");
        let (key, msg) = error(state(Some("redis://a:6379"), Some(&["redis://b:6379"]), None));
        assert_eq!(key, "state.redis_cluster");
        assert!(msg.contains("not both"), "{msg}");
        let (key, msg) = error(state(None, Some(&[]), None));
        assert_eq!(key, "state.redis_cluster");
        assert!(msg.contains("no seed node"), "{msg}");
        assert!(matches!(
            Target::from_config(&state(Some("redis://a:6379/0"), None, None)),
            Ok(Target::Node(_))
        ));
        assert!(matches!(
            Target::from_config(&state(None, Some(&["redis://a:7000", "redis://b:7001"]), None)),
            Ok(Target::Cluster(_))
        ));
    }

    #[test]
    fn insecure_tls_and_broken_urls_are_refused_without_quoting_them() {
        let (key, msg) = error(state(
            Some("rediss://:hunter2@cache.internal:6380/#insecure"),
            None,
            None,
        ));
        assert_eq!(key, "state.redis_url");
        assert!(
            msg.contains("#insecure") && msg.contains("state.redis_ca_file"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"));
        let (key, msg) = error(state(
            None,
            Some(&["rediss://a:7000", "rediss://:hunter2@b:7001/#insecure"]),
            None,
        ));
        assert_eq!(key, "state.redis_cluster[1]");
        assert!(msg.contains("#insecure") && !msg.contains("hunter2"), "{msg}");
        for bad in [
            "redis://:hunter2@host:notaport/0",
            "hunter2",
            "redis://:hunter2@host:6379/x",
        ] {
            let (key, msg) = error(state(Some(bad), None, None));
            assert_eq!(key, "state.redis_url");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        let (key, msg) = error(state(None, Some(&["redis://a:7000", "rediss://b:7001"]), None));
        assert_eq!(key, "state.redis_cluster");
        assert!(msg.contains("TLS"), "{msg}");
    }

    #[test]
    fn the_ca_file_must_hold_certificates_and_serve_a_tls_url() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        let ca = ca.to_str().unwrap();
        assert!(matches!(
            Target::from_config(&state(Some("rediss://cache.internal:6380/0"), None, Some(ca))),
            Ok(Target::Node(_))
        ));
        assert!(matches!(
            Target::from_config(&state(None, Some(&["rediss://a:7000", "rediss://b:7001"]), Some(ca))),
            Ok(Target::Cluster(_))
        ));
        let (key, msg) = error(state(Some("redis://cache.internal:6379/0"), None, Some(ca)));
        assert_eq!(key, "state.redis_ca_file");
        assert!(msg.contains("rediss://"), "{msg}");
        let missing = dir.path().join("missing.pem");
        let (key, msg) = error(state(Some("rediss://c:6380"), None, missing.to_str()));
        assert_eq!(key, "state.redis_ca_file");
        assert!(msg.contains("cannot read"), "{msg}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let (_, msg) = error(state(Some("rediss://c:6380"), None, junk.to_str()));
        assert!(msg.contains("no PEM certificate"), "{msg}");
    }

    #[test]
    fn the_trust_bundle_is_the_system_roots_plus_the_ca_file() {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let pem = ca_pem();
        std::fs::write(&path, &pem).unwrap();
        let bundle = trust_bundle(path.to_str().unwrap()).unwrap();
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&bundle)
            .collect::<Result<_, _>>()
            .unwrap();
        let ours = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(certs.last(), Some(&ours));
        let system = rustls_native_certs::load_native_certs().certs.len();
        assert!(
            certs.len() <= system + 1 && certs.len() + 5 >= system,
            "{} {system}",
            certs.len()
        );
    }
}
