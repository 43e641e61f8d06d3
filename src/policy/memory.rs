//! The embedded state backend: one mutex-guarded map from scope to its
//! rate-limit TATs and its spend in the current period. A check-and-charge
//! is a few hash lookups under one uncontended lock, so admission stays in
//! the low microseconds. Budget spend survives restarts because the gateway
//! seeds this map from the SQLite ledger at start ([`Memory::seed`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::period::Window;
use super::{Actual, Ask, Charge, Refusal, ScopeLimits, Standing};

#[derive(Debug, Default)]
struct Cell {
    request_tat: f64,
    token_tat: f64,
    window: Option<Window>,
    standing: Standing,
}

impl Cell {
    /// The standing in `window`, starting afresh when the period rolled over.
    fn roll(&mut self, window: Window) -> &mut Standing {
        if self.window != Some(window) {
            self.window = Some(window);
            self.standing = Standing::default();
        }
        &mut self.standing
    }
}

#[derive(Default)]
pub struct Memory {
    cells: Mutex<HashMap<Arc<str>, Cell>>,
}

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Cell>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn admit(&self, ask: &Ask<'_>) -> Result<(), Refusal> {
        let now = ask.now_ms as f64;
        let mut cells = self.lock();
        // Check everything before charging anything: a refusal leaves no trace.
        for (i, (s, w)) in ask.scopes.iter().enumerate() {
            let Some(budget) = s.budget_nanos else { continue };
            let spent = cells
                .get(&s.id)
                .filter(|c| c.window == Some(*w))
                .map_or(0, |c| c.standing.spent_nanos);
            if spent.saturating_add(ask.demand.reserve_nanos as i64) > budget as i64 {
                return Err(Refusal::Budget {
                    scope: i,
                    spent_nanos: spent,
                });
            }
        }
        let mut worst: Option<Refusal> = None;
        for (i, (s, _)) in ask.scopes.iter().enumerate() {
            let (rtat, ttat) = cells.get(&s.id).map_or((0.0, 0.0), |c| (c.request_tat, c.token_tat));
            let r = s.rpm.map(|g| (g, g.check(rtat, now, 1)));
            let t = s.tpm.map(|g| (g, g.check(ttat, now, ask.demand.tokens)));
            let wait = [r.map(|x| x.1), t.map(|x| x.1)]
                .into_iter()
                .flatten()
                .filter_map(Result::err)
                .fold(0.0, f64::max);
            let worse = match &worst {
                Some(Refusal::Rate { retry_after_ms, .. }) => wait > *retry_after_ms,
                _ => wait > 0.0,
            };
            if worse {
                worst = Some(Refusal::Rate {
                    scope: i,
                    retry_after_ms: wait,
                    requests: r.map(|(g, _)| g.quota(rtat, now)),
                    tokens: t.map(|(g, _)| g.quota(ttat, now)),
                });
            }
        }
        if let Some(refusal) = worst {
            return Err(refusal);
        }
        for (s, w) in ask.scopes {
            let cell = cells.entry(Arc::clone(&s.id)).or_default();
            if let Some(g) = s.rpm {
                cell.request_tat = g.check(cell.request_tat, now, 1).unwrap_or(cell.request_tat);
            }
            if let Some(g) = s.tpm {
                cell.token_tat = g
                    .check(cell.token_tat, now, ask.demand.tokens)
                    .unwrap_or(cell.token_tat);
            }
            if s.budget_nanos.is_some() {
                cell.roll(*w).spent_nanos += ask.demand.reserve_nanos as i64;
            }
        }
        Ok(())
    }

    pub(super) fn settle(&self, charges: &[Charge], actual: &Actual) {
        let mut cells = self.lock();
        let used = actual.usage.total();
        for c in charges {
            let cell = cells.entry(Arc::clone(&c.scope.id)).or_default();
            if let Some(g) = c.scope.tpm {
                cell.token_tat = g.settle(cell.token_tat, used as i64 - c.tokens as i64);
            }
            // A reservation made in a period that has since ended went with
            // that period; only the real cost lands in the new one.
            let reserved = if cell.window == Some(c.window) {
                c.reserved_nanos
            } else {
                0
            };
            let now_window = Window::of(c.scope.period, super::period::now_ms());
            let standing = cell.roll(now_window);
            standing.spent_nanos += actual.cost_nanos as i64 - reserved as i64;
            standing.requests += 1;
            add_usage(&mut standing.usage, &actual.usage);
        }
    }

    pub(super) fn standings(&self, scopes: &[(&ScopeLimits, Window)]) -> Vec<Standing> {
        let cells = self.lock();
        scopes
            .iter()
            .map(|(s, w)| {
                cells
                    .get(&s.id)
                    .filter(|c| c.window == Some(*w))
                    .map(|c| c.standing)
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Whether `scope` has not been counted in `window` yet.
    pub fn needs_seed(&self, scope: &ScopeLimits, window: Window) -> bool {
        self.lock().get(&scope.id).is_none_or(|c| c.window != Some(window))
    }

    /// Add what another process recorded for `scope` in `window` (the old
    /// gateway draining after an upgrade). A scope this process has not
    /// counted yet is left alone: its seed from the ledger includes it.
    pub fn add(&self, scope: &ScopeLimits, window: Window, delta: Standing) {
        let mut cells = self.lock();
        if let Some(cell) = cells.get_mut(&scope.id).filter(|c| c.window == Some(window)) {
            cell.standing.spent_nanos += delta.spent_nanos;
            cell.standing.requests += delta.requests;
            add_usage(&mut cell.standing.usage, &delta.usage);
        }
    }

    /// Start a scope's period from history (the ledger), unless this process
    /// has already counted it (a reload must not double what it saw live).
    pub fn seed(&self, scope: &ScopeLimits, window: Window, history: Standing) {
        let mut cells = self.lock();
        let cell = cells.entry(Arc::clone(&scope.id)).or_default();
        if cell.window != Some(window) {
            cell.window = Some(window);
            cell.standing = history;
        }
    }
}

pub(super) fn add_usage(into: &mut crate::dialects::Usage, u: &crate::dialects::Usage) {
    into.input_tokens += u.input_tokens;
    into.output_tokens += u.output_tokens;
    into.cache_read_input_tokens += u.cache_read_input_tokens;
    into.cache_creation_input_tokens += u.cache_creation_input_tokens;
}

#[cfg(test)]
mod tests {
    use super::super::{Demand, Policy};
    use super::*;
    use crate::config::schema::{BudgetConfig, BudgetPeriod, RateLimitConfig, StateConfig};
    use crate::dialects::Usage;

    fn scope(rpm: Option<u64>, tpm: Option<u64>, usd: Option<f64>) -> Arc<ScopeLimits> {
        Arc::new(ScopeLimits::new(
            "key",
            "alice",
            Some(&RateLimitConfig { rpm, tpm }),
            usd.map(|usd| BudgetConfig {
                usd,
                period: BudgetPeriod::Monthly,
            })
            .as_ref(),
        ))
    }

    fn policy() -> Policy {
        Policy::new(&StateConfig::default()).unwrap()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn reservations_block_overspend_and_settle_to_the_real_cost() {
        run(async {
            let p = policy();
            let s = scope(None, None, Some(1.0));
            let now = super::super::period::now_ms();
            let d = Demand {
                tokens: 10,
                reserve_nanos: 600_000_000,
            };
            let a = p.admit(&[&s], d, now).await.unwrap();
            // A second reservation of $0.60 would overspend $1.00.
            let e = p.admit(&[&s], d, now).await.unwrap_err();
            assert_eq!(e.kind().as_str(), "billing_error");
            p.settle(
                a,
                Actual {
                    usage: Usage {
                        input_tokens: 100,
                        output_tokens: 20,
                        ..Default::default()
                    },
                    cost_nanos: 250_000_000,
                },
            )
            .await;
            let st = p.standings(&[&s], now).await.unwrap();
            assert_eq!(st[0].spent_nanos, 250_000_000);
            assert_eq!(st[0].usage.output_tokens, 20);
            assert_eq!(st[0].requests, 1);
            assert!(p.admit(&[&s], d, now).await.is_ok());
        });
    }

    #[test]
    fn rpm_refuses_with_headers_and_tpm_counts_settled_tokens() {
        run(async {
            let p = policy();
            let s = scope(Some(2), Some(1_000), None);
            let now = 1_000_000_000;
            let d = Demand {
                tokens: 100,
                reserve_nanos: 0,
            };
            p.admit(&[&s], d, now).await.unwrap();
            let a = p.admit(&[&s], d, now).await.unwrap();
            let e = p.admit(&[&s], d, now).await.unwrap_err();
            assert_eq!((e.status(), e.kind().as_str()), (429, "rate_limit_error"));
            let h = e.headers();
            let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
            assert_eq!(get("retry-after").as_deref(), Some("30"));
            assert_eq!(get("anthropic-ratelimit-requests-limit").as_deref(), Some("2"));
            assert_eq!(get("anthropic-ratelimit-requests-remaining").as_deref(), Some("0"));
            assert!(get("anthropic-ratelimit-tokens-remaining").is_some());
            // The answer used 1,900 tokens more than the 100 charged: the
            // tpm bucket (1,000/min) is in debt after rpm has refilled.
            p.settle(
                a,
                Actual {
                    usage: Usage {
                        input_tokens: 1_000,
                        output_tokens: 1_000,
                        ..Default::default()
                    },
                    cost_nanos: 0,
                },
            )
            .await;
            let e = p.admit(&[&s], d, now + 30_000).await.unwrap_err();
            assert!(e.to_string().contains("tokens per minute"), "{e}");
        });
    }

    #[test]
    fn a_team_refusal_charges_nobody() {
        run(async {
            let p = policy();
            let key = scope(Some(100), None, None);
            let team = Arc::new(ScopeLimits::new(
                "team",
                "platform",
                Some(&RateLimitConfig {
                    rpm: Some(1),
                    tpm: None,
                }),
                None,
            ));
            let now = 1_000_000_000;
            p.admit(&[&key, &team], Demand::default(), now).await.unwrap();
            let e = p.admit(&[&key, &team], Demand::default(), now).await.unwrap_err();
            assert!(e.to_string().contains("team `platform`"), "{e}");
            // Only the first request reached the key's bucket.
            let m = p.memory().unwrap();
            let cells = m.lock();
            let g = key.rpm.unwrap();
            assert_eq!(g.quota(cells[&key.id].request_tat, now as f64).remaining, 99);
        });
    }
}
