//! The Generic Cell Rate Algorithm, as pure arithmetic over one number per
//! limit: the theoretical arrival time (TAT). The embedded backend keeps the
//! TAT in memory, the Redis backend runs the same steps in a Lua script, so
//! N replicas share one limit.
//!
//! A limit of `n` per minute admits bursts of up to `n` and refills at
//! `n` per minute. Costs vary (a token limit charges a request's tokens) and
//! may be corrected after the fact ([`Gcra::settle`]), which is why this is
//! ours and not `governor`'s: governor cannot record a debt discovered once
//! the response has been metered.

/// The window every gateway limit is expressed in.
pub const PERIOD_MS: f64 = 60_000.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    /// Milliseconds one unit of cost occupies.
    interval_ms: f64,
    limit: u64,
}

/// What a check reveals about a limit, for the `anthropic-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Unix ms when the limit is whole again.
    pub reset_ms: f64,
}

impl Gcra {
    /// `limit` units per minute; `None` for a zero limit (nothing admitted
    /// is expressed by disabling the key, not by a zero rate).
    pub fn per_minute(limit: u64) -> Option<Gcra> {
        (limit > 0).then(|| Gcra {
            interval_ms: PERIOD_MS / limit as f64,
            limit,
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn interval_ms(&self) -> f64 {
        self.interval_ms
    }

    /// A cost larger than the whole limit could never pass; it is charged as
    /// the whole limit (the request waits for a full window) and the
    /// remainder is settled afterwards.
    pub fn clamp(&self, cost: u64) -> u64 {
        cost.min(self.limit)
    }

    /// Admit `cost` at `now_ms` given the stored `tat` (0 when none):
    /// `Ok(new_tat)` or `Err(retry_after_ms)`.
    pub fn check(&self, tat: f64, now_ms: f64, cost: u64) -> Result<f64, f64> {
        let new_tat = tat.max(now_ms) + self.clamp(cost) as f64 * self.interval_ms;
        let over = new_tat - now_ms - PERIOD_MS;
        if over > 0.0 {
            Err(over)
        } else {
            Ok(new_tat)
        }
    }

    /// Correct a charge once the real cost is known (`delta` may be negative).
    pub fn settle(&self, tat: f64, delta: i64) -> f64 {
        (tat + delta as f64 * self.interval_ms).max(0.0)
    }

    pub fn quota(&self, tat: f64, now_ms: f64) -> Quota {
        let used_ms = (tat - now_ms).max(0.0);
        let remaining = ((PERIOD_MS - used_ms) / self.interval_ms).floor().max(0.0) as u64;
        Quota {
            limit: self.limit,
            remaining: remaining.min(self.limit),
            reset_ms: tat.max(now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_up_to_the_limit_then_refills_at_the_rate() {
        let g = Gcra::per_minute(60).unwrap();
        let mut tat = 0.0;
        let now = 1_000_000.0;
        for _ in 0..60 {
            tat = g.check(tat, now, 1).unwrap();
        }
        let wait = g.check(tat, now, 1).unwrap_err();
        assert!((wait - 1000.0).abs() < 1e-6, "one unit refills in a second, got {wait}");
        assert!(g.check(tat, now + 999.0, 1).is_err());
        assert!(g.check(tat, now + 1000.0, 1).is_ok());
        assert_eq!(g.quota(tat, now).remaining, 0);
        assert_eq!(g.quota(tat, now + 60_000.0).remaining, 60);
    }

    #[test]
    fn variable_costs_and_after_the_fact_debt() {
        let g = Gcra::per_minute(1_000).unwrap();
        let now = 5_000.0;
        let tat = g.check(0.0, now, 400).unwrap();
        assert_eq!(g.quota(tat, now).remaining, 600);
        // The response used 900 more tokens than charged: the next request waits.
        let tat = g.settle(tat, 900);
        let wait = g.check(tat, now, 1).unwrap_err();
        assert!((wait - (301.0 * 60.0)).abs() < 1e-6, "{wait}");
        // A request bigger than the limit is admitted on an empty bucket.
        assert!(g.check(0.0, now, 5_000).is_ok());
        // Refunds never push the TAT below zero.
        assert_eq!(g.settle(10.0, -1_000_000), 0.0);
    }
}
