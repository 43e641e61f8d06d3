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

/// KEYS: (rate, spend) per scope. ARGV: n, tokens, reserve, then per scope
/// rpm, tpm, budget (-1: none).
/// Returns {0} admitted, {1, i, spent} budget refusal, {2, i, retry_ms,
/// request_tat, token_tat, now} rate refusal.
pub const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local reserve = tonumber(ARGV[3])
local P = 60000
for i = 1, n do
  local budget = tonumber(ARGV[3 + (i - 1) * 3 + 3])
  if budget >= 0 then
    local spent = tonumber(redis.call('HGET', KEYS[2 * i], 'spent') or '0')
    if spent + reserve > budget then return {1, i, spent} end
  end
end
local worst, worst_i, rt, tt = 0, 0, 0, 0
local new_r, new_t = {}, {}
for i = 1, n do
  local rpm = tonumber(ARGV[3 + (i - 1) * 3 + 1])
  local tpm = tonumber(ARGV[3 + (i - 1) * 3 + 2])
  local tats = redis.call('HMGET', KEYS[2 * i - 1], 'r', 't')
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
  local ttl = 0
  if new_r[i] then
    redis.call('HSET', KEYS[2 * i - 1], 'r', string.format('%.3f', new_r[i]))
    ttl = math.max(ttl, new_r[i] - now)
  end
  if new_t[i] then
    redis.call('HSET', KEYS[2 * i - 1], 't', string.format('%.3f', new_t[i]))
    ttl = math.max(ttl, new_t[i] - now)
  end
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2 * i - 1], math.ceil(ttl) + P) end
  if tonumber(ARGV[3 + (i - 1) * 3 + 3]) >= 0 and reserve > 0 then
    redis.call('HINCRBY', KEYS[2 * i], 'spent', reserve)
  end
end
return {0}
"#;

/// KEYS: (rate, spend) per scope. ARGV: n, used tokens, cost, input,
/// output, cache_read, cache_write, then per scope tpm, charged tokens,
/// reserved, expire_at (0: never).
pub const SETTLE: &str = r#"
local n = tonumber(ARGV[1])
local used, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, n do
  local b = 7 + (i - 1) * 4
  local tpm, charged = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local reserved, exp = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if tpm > 0 and used ~= charged then
    local tat = tonumber(redis.call('HGET', KEYS[2 * i - 1], 't') or '0')
    tat = math.max(tat + (used - charged) * 60000 / tpm, 0)
    redis.call('HSET', KEYS[2 * i - 1], 't', string.format('%.3f', tat))
    if redis.call('PTTL', KEYS[2 * i - 1]) < 0 then redis.call('PEXPIRE', KEYS[2 * i - 1], 120000) end
  end
  local k = KEYS[2 * i]
  redis.call('HINCRBY', k, 'spent', cost - reserved)
  redis.call('HINCRBY', k, 'requests', 1)
  redis.call('HINCRBY', k, 'input', ARGV[4])
  redis.call('HINCRBY', k, 'output', ARGV[5])
  redis.call('HINCRBY', k, 'cache_read', ARGV[6])
  redis.call('HINCRBY', k, 'cache_write', ARGV[7])
  if exp > 0 then redis.call('PEXPIREAT', k, exp) end
end
return 0
"#;

pub struct RedisState {
    client: redis::Client,
    /// Started on first use, in the serving process: a runtime's threads do
    /// not survive the daemon fork.
    io: std::sync::OnceLock<Result<(tokio::runtime::Handle, ConnectionManager), String>>,
    prefix: String,
    admit: Script,
    settle: Script,
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
        args: Vec<i64>,
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

    pub(super) async fn admit(&self, ask: &Ask<'_>) -> Result<Result<(), Refusal>, String> {
        let mut keys = Vec::with_capacity(ask.scopes.len() * 2);
        let mut args = vec![
            ask.scopes.len() as i64,
            ask.demand.tokens as i64,
            ask.demand.reserve_nanos as i64,
        ];
        for (s, w) in ask.scopes {
            keys.push(self.rate_key(s));
            keys.push(self.spend_key(s, *w));
            args.push(s.rpm.map_or(0, |g| g.limit() as i64));
            args.push(s.tpm.map_or(0, |g| g.limit() as i64));
            args.push(s.budget_nanos.map_or(-1, |b| b as i64));
        }
        let reply: Vec<i64> = self.invoke(&self.admit, keys, args).await?;
        Ok(decode_admit(ask, &reply))
    }

    pub(super) async fn settle(&self, charges: &[Charge], actual: &Actual) -> Result<(), String> {
        let u = &actual.usage;
        let mut keys = Vec::with_capacity(charges.len() * 2);
        let mut args: Vec<i64> = vec![
            charges.len() as i64,
            u.total() as i64,
            actual.cost_nanos as i64,
            u.input_tokens as i64,
            u.output_tokens as i64,
            u.cache_read_input_tokens as i64,
            u.cache_creation_input_tokens as i64,
        ];
        for c in charges {
            keys.push(self.rate_key(&c.scope));
            keys.push(self.spend_key(&c.scope, c.window));
            args.push(c.scope.tpm.map_or(0, |g| g.limit() as i64));
            args.push(c.tokens as i64);
            args.push(c.reserved_nanos as i64);
            args.push(c.window.end_ms.map_or(0, |e| e + KEEP_AFTER_PERIOD_MS));
        }
        self.invoke::<i64>(&self.settle, keys, args).await.map(drop)
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
