//! Stage: policy. Rate limits and budgets for the calling principal.
//!
//! Every gateway key is a *scope*, and so is its team. Before a request goes
//! upstream, [`Policy::admit`] checks and charges both scopes in one atomic
//! step: budgets first (a reservation: the input estimate plus `max_tokens`
//! at output price, capped), then `rpm` and `tpm` ([`gcra`]). Afterwards
//! [`Policy::settle`] replaces the reservation with the metered cost and
//! corrects the token charge, so nothing is lost when a request fails,
//! streams or is cut off.
//!
//! The state behind it is the embedded [`memory`] backend (one process;
//! budgets are rebuilt from the SQLite ledger at start) or [`redis`] (many
//! replicas enforce one limit; one Lua script call per admission and one per
//! settlement). This module owns the decision and its Anthropic-shaped
//! refusal; it does not meter, route or log.

pub mod gcra;
pub mod memory;
pub mod period;
pub mod redis;

use std::sync::Arc;

use crate::config::schema::{BudgetConfig, BudgetPeriod, FailMode, RateLimitConfig, StateBackend, StateConfig};
use crate::dialects::Usage;
use crate::error::{GatewayError, RateLimitHeaders};
use gcra::{Gcra, Quota};
use period::{period_name, rfc3339, Window};

/// Output tokens a reservation counts at most. Claude Code asks for 32k-64k
/// `max_tokens` and almost never uses them; reserving all of it would block
/// a developer long before the budget is spent.
pub const RESERVE_OUTPUT_CAP: u64 = 16_384;

/// Bytes of request body per estimated input token (English and code run
/// 3.5–4.5; the lower end keeps reservations on the safe side).
pub const BYTES_PER_TOKEN: u64 = 4;

/// One scope's limits, compiled once per config snapshot.
#[derive(Debug)]
pub struct ScopeLimits {
    /// The state key: `key:NAME` or `team:NAME`.
    pub id: Arc<str>,
    /// The scope whose state this scope's state is kept with: the team's
    /// id for a key in a team, its own id otherwise. Every scope one
    /// admission checks has the same group, so Redis Cluster can keep all
    /// of it in one hash slot ([`redis`]).
    pub group: Arc<str>,
    /// How messages name it: "key `alice`", "team `platform`".
    pub label: String,
    pub rpm: Option<Gcra>,
    pub tpm: Option<Gcra>,
    /// USD in nano-dollars (integers add exactly; a cent is 10^7).
    pub budget_nanos: Option<u64>,
    /// The budget's period; for scopes without a budget, the period usage
    /// is reported over (monthly).
    pub period: BudgetPeriod,
}

impl ScopeLimits {
    pub fn new(kind: &str, name: &str, rate: Option<&RateLimitConfig>, budget: Option<&BudgetConfig>) -> ScopeLimits {
        let id: Arc<str> = Arc::from(format!("{kind}:{name}"));
        ScopeLimits {
            group: Arc::clone(&id),
            id,
            label: format!("{kind} `{name}`"),
            rpm: rate.and_then(|r| r.rpm).and_then(Gcra::per_minute),
            tpm: rate.and_then(|r| r.tpm).and_then(Gcra::per_minute),
            budget_nanos: budget.map(|b| usd_to_nanos(b.usd)),
            period: budget.map_or(BudgetPeriod::Monthly, |b| b.period),
        }
    }

    /// Keep this scope's state with `team`'s (a key in that team).
    pub fn in_team(mut self, team: Option<&ScopeLimits>) -> ScopeLimits {
        if let Some(t) = team {
            self.group = Arc::clone(&t.group);
        }
        self
    }

    fn limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.budget_nanos.is_some()
    }
}

pub fn usd_to_nanos(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

pub fn nanos_to_usd(m: i64) -> f64 {
    m as f64 / 1e9
}

/// What the request is expected to take, computed before it goes upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// Estimated input tokens (charged to `tpm` now, corrected at settlement).
    pub tokens: u64,
    /// The budget reservation in nano-dollars.
    pub reserve_nanos: u64,
}

/// The charges one admitted request holds until [`Policy::settle`].
#[derive(Debug)]
pub struct Admission {
    charges: Vec<Charge>,
    /// Names the reservation in the shared state (random per admission).
    hold: u64,
}

#[derive(Debug)]
struct Charge {
    scope: Arc<ScopeLimits>,
    window: Window,
    reserved_nanos: u64,
    tokens: u64,
}

/// What a request used, known once it is over.
#[derive(Debug, Clone, Copy, Default)]
pub struct Actual {
    pub usage: Usage,
    pub cost_nanos: u64,
}

/// Why a scope refused, as the backends report it.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Budget {
        scope: usize,
        spent_nanos: i64,
    },
    Rate {
        scope: usize,
        retry_after_ms: f64,
        requests: Option<Quota>,
        tokens: Option<Quota>,
    },
}

/// A scope's standing for the period, for `GET /v1/usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Standing {
    pub spent_nanos: i64,
    pub requests: u64,
    pub usage: Usage,
}

/// One admission request to a backend: the scopes in order, their windows
/// and what to charge each.
pub struct Ask<'a> {
    pub now_ms: i64,
    pub scopes: &'a [(&'a ScopeLimits, Window)],
    pub demand: Demand,
}

pub enum Backend {
    Memory(memory::Memory),
    Redis(Box<redis::RedisState>),
}

pub struct Policy {
    backend: Backend,
    budgets_fail: FailMode,
    rates_fail: FailMode,
}

impl Policy {
    /// The embedded backend, or Redis when `state.backend: redis`. Redis is
    /// connected lazily: a gateway starts even while Redis is down, and
    /// `on_redis_error` decides meanwhile.
    pub fn new(state: &StateConfig) -> Result<Policy, String> {
        let backend = match state.backend {
            StateBackend::Embedded => Backend::Memory(memory::Memory::default()),
            StateBackend::Redis => Backend::Redis(Box::new(redis::RedisState::new(state)?)),
        };
        Ok(Policy {
            backend,
            budgets_fail: state.on_redis_error.budgets,
            rates_fail: state.on_redis_error.rate_limits,
        })
    }

    pub fn memory(&self) -> Option<&memory::Memory> {
        match &self.backend {
            Backend::Memory(m) => Some(m),
            Backend::Redis(_) => None,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Memory(_) => "embedded",
            Backend::Redis(_) => "redis",
        }
    }

    /// Check and charge every scope of `principal` at once. Scopes without
    /// any limit are still charged, so spend and tokens are tracked for
    /// `/v1/usage` and the team totals.
    pub async fn admit(
        &self,
        scopes: &[&Arc<ScopeLimits>],
        demand: Demand,
        now_ms: i64,
    ) -> Result<Admission, GatewayError> {
        let windows: Vec<(&ScopeLimits, Window)> =
            scopes.iter().map(|s| (&***s, Window::of(s.period, now_ms))).collect();
        let ask = Ask {
            now_ms,
            scopes: &windows,
            demand,
        };
        let hold: u64 = rand::random();
        let outcome = match &self.backend {
            Backend::Memory(m) => Ok(m.admit(&ask)),
            Backend::Redis(r) => r.admit(&ask, hold).await,
        };
        let charges = || {
            scopes
                .iter()
                .zip(&windows)
                .map(|(s, (_, w))| Charge {
                    scope: Arc::clone(s),
                    window: *w,
                    reserved_nanos: if s.budget_nanos.is_some() {
                        demand.reserve_nanos
                    } else {
                        0
                    },
                    tokens: s.tpm.map_or(0, |g| g.clamp(demand.tokens)),
                })
                .collect()
        };
        match outcome {
            Ok(Ok(())) => Ok(Admission {
                charges: charges(),
                hold,
            }),
            Ok(Err(refusal)) => Err(refuse(&windows, refusal, now_ms)),
            Err(e) => {
                crate::telemetry::METRICS
                    .state_errors
                    .with_label_values(&[self.backend_name(), "admit"])
                    .inc();
                let budgeted = scopes.iter().any(|s| s.budget_nanos.is_some());
                let limited = scopes.iter().any(|s| s.rpm.is_some() || s.tpm.is_some());
                let closed = (budgeted && self.budgets_fail == FailMode::FailClosed)
                    || (limited && self.rates_fail == FailMode::FailClosed);
                log_state_error(
                    &e,
                    if closed {
                        "refusing (fail_closed)"
                    } else {
                        "admitting unchecked (fail_open)"
                    },
                );
                if closed {
                    return Err(GatewayError::Unavailable {
                        message: "the gateway cannot reach its shared state (Redis) to check budgets and rate limits; \
                                  try again shortly"
                            .into(),
                        retry_after: Some(5),
                    });
                }
                // Unchecked, and not charged: a settlement would credit a
                // reservation that was never made.
                Ok(Admission {
                    charges: Vec::new(),
                    hold,
                })
            }
        }
    }

    /// Replace the reservation with what the request really cost.
    pub async fn settle(&self, admission: Admission, actual: Actual) {
        if admission.charges.is_empty() {
            return;
        }
        let result = match &self.backend {
            Backend::Memory(m) => {
                m.settle(&admission.charges, &actual);
                Ok(())
            }
            Backend::Redis(r) => r.settle(&admission.charges, &actual, admission.hold).await,
        };
        if let Err(e) = result {
            crate::telemetry::METRICS
                .state_errors
                .with_label_values(&[self.backend_name(), "settle"])
                .inc();
            log_state_error(&e, "settling this request's cost is being retried in the background");
        }
    }

    /// Each scope's standing in its current period.
    pub async fn standings(&self, scopes: &[&Arc<ScopeLimits>], now_ms: i64) -> Result<Vec<Standing>, GatewayError> {
        let windows: Vec<(&ScopeLimits, Window)> =
            scopes.iter().map(|s| (&***s, Window::of(s.period, now_ms))).collect();
        match &self.backend {
            Backend::Memory(m) => Ok(m.standings(&windows)),
            Backend::Redis(r) => r.standings(&windows).await.map_err(|e| {
                log_state_error(&e, "cannot report usage");
                GatewayError::Unavailable {
                    message: "the gateway cannot reach its shared state (Redis); try again shortly".into(),
                    retry_after: Some(5),
                }
            }),
        }
    }
}

fn log_state_error(e: &str, consequence: &str) {
    use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = period::now_ms();
    let last = LAST.load(Relaxed);
    if now - last >= 10_000 && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
        log::error!(
            "shared state error: {e}; {consequence} (logged at most every 10 s; see modelgate_state_errors_total)"
        );
    }
}

fn refuse(windows: &[(&ScopeLimits, Window)], refusal: Refusal, now_ms: i64) -> GatewayError {
    match refusal {
        Refusal::Budget { scope, spent_nanos } => {
            let (s, w) = windows[scope];
            let budget = nanos_to_usd(s.budget_nanos.unwrap_or(0) as i64);
            let spent = nanos_to_usd(spent_nanos);
            let resets = match w.end_ms {
                Some(end) => format!("it resets at {}", rfc3339(end)),
                None => "it is a total budget and does not reset; ask an administrator to raise it".into(),
            };
            GatewayError::BudgetExceeded {
                message: format!(
                    "the {} budget of ${budget:.2} for {} cannot cover this request (${spent:.2} spent or reserved); {resets}",
                    period_name(s.period),
                    s.label,
                ),
                retry_after: w.seconds_left(now_ms),
                headers: Vec::new(),
            }
        }
        Refusal::Rate {
            scope,
            retry_after_ms,
            requests,
            tokens,
        } => {
            let (s, _) = windows[scope];
            let which = match (requests.is_some_and(|q| q.remaining == 0), tokens.is_some()) {
                (true, _) | (false, false) => format!("{} requests per minute", s.rpm.map_or(0, |g| g.limit())),
                (false, true) => format!("{} tokens per minute", s.tpm.map_or(0, |g| g.limit())),
            };
            let secs = ((retry_after_ms / 1000.0).ceil() as u64).max(1);
            let header = |q: Quota| (q.limit, q.remaining, rfc3339(q.reset_ms as i64));
            GatewayError::RateLimited {
                message: format!(
                    "the gateway's rate limit for {} ({which}) is exceeded; retry in {secs} s",
                    s.label
                ),
                retry_after: secs,
                headers: Box::new(RateLimitHeaders {
                    requests: requests.map(header),
                    tokens: tokens.map(header),
                }),
            }
        }
    }
}

/// Whether admission can be skipped entirely (nothing limited, nothing to
/// track): only for anonymous passthrough callers, who have no scope.
pub fn any_limited(scopes: &[&Arc<ScopeLimits>]) -> bool {
    scopes.iter().any(|s| s.limited())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refusal_names_the_budget_and_its_reset() {
        let s = ScopeLimits::new(
            "key",
            "alice",
            None,
            Some(&BudgetConfig {
                usd: 10.0,
                period: BudgetPeriod::Daily,
            }),
        );
        let now = 1_700_000_000_000;
        let w = Window::of(s.period, now);
        let e = refuse(
            &[(&s, w)],
            Refusal::Budget {
                scope: 0,
                spent_nanos: 9_990_000_000,
            },
            now,
        );
        assert_eq!(e.status(), 429);
        assert_eq!(e.kind().as_str(), "billing_error");
        let msg = e.to_string();
        assert!(msg.contains("daily budget of $10.00 for key `alice`"), "{msg}");
        assert!(msg.contains("resets at 2023-11-15T00:00:00Z"), "{msg}");
        let h = e.headers();
        assert!(h.contains(&("x-should-retry", "false".into())));
        assert!(h
            .iter()
            .any(|(n, v)| *n == "retry-after" && v.parse::<u64>().unwrap() > 0));
    }
}
