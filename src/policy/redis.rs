//! The shared state backend: rate-limit TATs and period spend in Redis, so
//! every replica behind a load balancer enforces one limit and one budget.
//!
//! Each admission is one `EVALSHA` of [`ADMIT`] (check every scope, then
//! charge every scope, atomically), each settlement one of [`SETTLE`]. The
//! scripts run the same steps as [`super::memory`] and [`super::gcra`], on
//! Redis's clock so replicas with skewed clocks still agree.
//!
//! Keys (`PREFIX` is `state.redis_prefix`):
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
//! A reservation is never counted for longer than its request needs. A
//! settlement takes its hold out of the set and credits it back; an
//! admission that timed out on the gateway's side (Redis may have applied
//! it) is followed by a release that does the same if, and only if, the
//! hold is there; a settlement that failed is retried in the background;
//! and every admission first sweeps holds that have lapsed, whose requests
//! ended without any settlement reaching Redis. A request that outlives its
//! hold is charged its full cost when it settles.
//!
//! All Redis I/O runs on one small runtime of its own: the multiplexed
//! connection's driver then never depends on which Pingora worker thread
//! happens to be polling.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::gcra::Quota;
use super::period::Window;
use super::{Actual, Ask, Charge, Refusal, ScopeLimits, Standing};

/// Upper bound on one state operation, connection included. A request never
/// waits longer than this on Redis before `on_redis_error` decides.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
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
/// request_tat, token_tat, now} rate refusal.
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

pub struct RedisState {
    client: redis::Client,
    /// Started on first use, in the serving process: a runtime's threads do
    /// not survive the daemon fork.
    io: std::sync::OnceLock<Result<(tokio::runtime::Handle, ConnectionManager), String>>,
    prefix: String,
    admit: Script,
    settle: Script,
    release: Script,
}

impl RedisState {
    pub fn new(url: &str, prefix: &str) -> Result<RedisState, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.redis_url: {e}"))?;
        Ok(RedisState {
            client,
            io: std::sync::OnceLock::new(),
            prefix: prefix.to_string(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            release: Script::new(RELEASE),
        })
    }

    fn io(&self) -> Result<&(tokio::runtime::Handle, ConnectionManager), String> {
        self.io
            .get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("redis-state")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the Redis state runtime: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let conn = {
                    let _inside = runtime.enter();
                    ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                        .map_err(|e| format!("state.redis_url: {e}"))?
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

    fn rate_key(&self, s: &ScopeLimits) -> String {
        format!("{}:rate:{}", self.prefix, s.id)
    }

    fn spend_key(&self, s: &ScopeLimits, w: Window) -> String {
        format!("{}:spend:{}:{}", self.prefix, s.id, w.start_ms)
    }

    fn holds_key(&self, s: &ScopeLimits, w: Window) -> String {
        format!("{}:holds:{}:{}", self.prefix, s.id, w.start_ms)
    }

    /// Run `op` on the state runtime, bounded by [`OP_TIMEOUT`].
    async fn run<T: Send + 'static>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, String> {
        let (runtime, _) = self.io()?;
        let task = runtime.spawn(async move { tokio::time::timeout(OP_TIMEOUT, op).await });
        match task.await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_)) => Err(format!("Redis did not answer within {} ms", OP_TIMEOUT.as_millis())),
            Err(e) => Err(format!("Redis task failed: {e}")),
        }
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
            keys.push(self.rate_key(s));
            keys.push(self.spend_key(s, *w));
            keys.push(self.holds_key(s, *w));
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
                        keys.push(self.spend_key(s, *w));
                        keys.push(self.holds_key(s, *w));
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
            keys.push(self.rate_key(&c.scope));
            keys.push(self.spend_key(&c.scope, c.window));
            keys.push(self.holds_key(&c.scope, c.window));
            args.push(int(c.scope.tpm.map_or(0, |g| g.limit() as i64)));
            args.push(int(c.tokens as i64));
            args.push(int(c.reserved_nanos as i64));
            args.push(int(expire_at(c.window)));
        }
        keys.push(format!("{}:settled:{hold:016x}", self.prefix));
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

    pub(super) async fn standings(&self, scopes: &[(&ScopeLimits, Window)]) -> Result<Vec<Standing>, String> {
        let mut pipe = redis::pipe();
        for (s, w) in scopes {
            pipe.cmd("HMGET").arg(self.spend_key(s, *w)).arg(&[
                "spent",
                "requests",
                "input",
                "output",
                "cache_read",
                "cache_write",
            ]);
        }
        let mut conn = self.io()?.1.clone();
        let rows: Vec<Vec<Option<i64>>> = self.run(async move { pipe.query_async(&mut conn).await }).await?;
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
