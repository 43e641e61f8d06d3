//! Passive health: one circuit breaker per (provider, account).
//!
//! Outcomes of real requests feed the circuits; nothing here sends traffic.
//! A circuit opens after [`FAILURES_TO_OPEN`] consecutive failures, or when
//! at least half of the last [`WINDOW`] outcomes failed (with at least
//! [`MIN_SAMPLES`] of them). An open circuit blocks its account for
//! [`OPEN_FOR`]; then exactly one request probes it (half-open), and its
//! outcome closes or re-opens the circuit. A 429 is not a failure of the
//! account: it cools the account down until the upstream's `retry-after`.
//!
//! Circuits are keyed by provider name and account label, so they survive
//! config reloads that keep those names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub const FAILURES_TO_OPEN: u32 = 5;
pub const WINDOW: u32 = 20;
pub const MIN_SAMPLES: u32 = 10;
pub const OPEN_FOR: Duration = Duration::from_secs(30);
/// Cool-down after a 429 that carried no `retry-after`.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Blocked until the instant (failures or a 429 cool-down).
    Open {
        until: Instant,
        throttled: bool,
    },
    /// One probe is in flight; others wait for its outcome.
    HalfOpen,
}

/// Whether a request may use the account now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Ready,
    /// Admitted as the half-open probe.
    Probe,
    /// Out after failures (open or probing) until about this instant.
    Blocked(Instant),
    /// Cooling down after a 429 until this instant: worth waiting for.
    Cooling(Instant),
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    /// Last `WINDOW` outcomes as bits (1 = failure), newest in bit 0.
    recent: u32,
    samples: u32,
    opened_total: u64,
}

#[derive(Debug)]
pub struct Circuit {
    inner: Mutex<Inner>,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                recent: 0,
                samples: 0,
                opened_total: 0,
            }),
        }
    }
}

impl Circuit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state invalid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask to use the account. A half-open probe slot, once taken, must be
    /// answered with `success`, `failure` or `throttled`.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut c = self.lock();
        match c.state {
            State::Closed => Admission::Ready,
            State::HalfOpen => Admission::Blocked(now + Duration::from_secs(1)),
            State::Open { until, throttled: true } if now < until => Admission::Cooling(until),
            State::Open { until, .. } if now < until => Admission::Blocked(until),
            State::Open { throttled: true, .. } => {
                c.state = State::Closed;
                Admission::Ready
            }
            State::Open { .. } => {
                c.state = State::HalfOpen;
                Admission::Probe
            }
        }
    }

    /// When the account is next usable (`None`: now).
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        match self.lock().state {
            State::Open { until, .. } if until > now => Some(until),
            State::HalfOpen => Some(now + Duration::from_secs(1)),
            _ => None,
        }
    }

    pub fn success(&self) {
        let mut c = self.lock();
        c.consecutive_failures = 0;
        c.recent <<= 1;
        c.samples = (c.samples + 1).min(WINDOW);
        c.state = State::Closed;
    }

    pub fn failure(&self, now: Instant) {
        let mut c = self.lock();
        c.consecutive_failures += 1;
        c.recent = (c.recent << 1) | 1;
        c.samples = (c.samples + 1).min(WINDOW);
        let window_failures = (c.recent & ((1 << WINDOW) - 1)).count_ones();
        let rate_trips = c.samples >= MIN_SAMPLES && window_failures * 2 >= c.samples;
        if c.state == State::HalfOpen || c.consecutive_failures >= FAILURES_TO_OPEN || rate_trips {
            open(&mut c, now);
        }
    }

    /// An active health check failed: open the circuit now.
    pub fn trip(&self, now: Instant) {
        open(&mut self.lock(), now);
    }

    /// An active health check passed: an open circuit may probe at once
    /// instead of waiting out its cool-down. A 429 cool-down is kept.
    pub fn reachable(&self, now: Instant) {
        let mut c = self.lock();
        if let State::Open {
            until,
            throttled: false,
        } = c.state
        {
            if until > now {
                c.state = State::Open {
                    until: now,
                    throttled: false,
                };
            }
        }
    }

    /// A 429: keep the account out until `until`, without counting a failure.
    pub fn throttled(&self, until: Instant) {
        let mut c = self.lock();
        let later = match c.state {
            State::Open { until: u, .. } => u.max(until),
            _ => until,
        };
        c.state = State::Open {
            until: later,
            throttled: true,
        };
    }

    pub fn snapshot(&self, now: Instant) -> CircuitView {
        let c = self.lock();
        let (state, remaining) = match c.state {
            State::Closed => ("closed", None),
            State::HalfOpen => ("half_open", None),
            State::Open { until, throttled } if until > now => {
                (if throttled { "cooling_down" } else { "open" }, Some(until - now))
            }
            State::Open { .. } => ("half_open_pending", None),
        };
        CircuitView {
            state,
            remaining,
            consecutive_failures: c.consecutive_failures,
            opened_total: c.opened_total,
        }
    }
}

/// Open (or keep open) for `OPEN_FOR`, with a fresh window: after the
/// cool-down the probe decides.
fn open(c: &mut Inner, now: Instant) {
    if !matches!(c.state, State::Open { throttled: false, .. }) {
        c.opened_total += 1;
    }
    c.state = State::Open {
        until: now + OPEN_FOR,
        throttled: false,
    };
    c.recent = 0;
    c.samples = 0;
}

#[derive(Debug, Clone)]
pub struct CircuitView {
    pub state: &'static str,
    pub remaining: Option<Duration>,
    pub consecutive_failures: u32,
    pub opened_total: u64,
}

/// Every circuit, created on first use, by provider then account label
/// (two levels so a lookup needs no allocation).
#[derive(Debug, Default)]
pub struct Registry {
    circuits: RwLock<HashMap<String, HashMap<String, Arc<Circuit>>>>,
}

impl Registry {
    pub fn circuit(&self, provider: &str, account: &str) -> Arc<Circuit> {
        if let Some(c) = self
            .circuits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(provider)
            .and_then(|m| m.get(account))
        {
            return c.clone();
        }
        self.circuits
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(provider.to_string())
            .or_default()
            .entry(account.to_string())
            .or_default()
            .clone()
    }

    /// Close every circuit (an operator's override after an incident).
    /// Returns how many there were.
    pub fn reset_all(&self) -> usize {
        let map = self.circuits.read().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for c in map.values().flat_map(|m| m.values()) {
            c.success();
            n += 1;
        }
        n
    }

    /// `(provider, account, view)` for every circuit, sorted.
    pub fn views(&self, now: Instant) -> Vec<(String, String, CircuitView)> {
        let map = self.circuits.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(p, accounts)| {
                accounts
                    .iter()
                    .map(move |(a, c)| (p.clone(), a.clone(), c.snapshot(now)))
            })
            .collect();
        out.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let c = Circuit::default();
        let t = Instant::now();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            c.failure(t);
            assert_eq!(c.admit(t), Admission::Ready);
        }
        c.failure(t);
        assert_eq!(c.admit(t), Admission::Blocked(t + OPEN_FOR));
        let later = t + OPEN_FOR;
        assert_eq!(c.admit(later), Admission::Probe);
        assert!(matches!(c.admit(later), Admission::Blocked(_)), "only one probe");
        c.failure(later);
        assert!(
            matches!(c.admit(later), Admission::Blocked(_)),
            "a failed probe re-opens"
        );
        assert_eq!(c.admit(later + OPEN_FOR), Admission::Probe);
        c.success();
        assert_eq!(c.admit(later + OPEN_FOR), Admission::Ready);
        assert_eq!(c.snapshot(t).opened_total, 2);
    }

    #[test]
    fn error_rate_trips_without_a_streak() {
        let c = Circuit::default();
        let t = Instant::now();
        for i in 0..=MIN_SAMPLES {
            if i % 2 == 0 {
                c.failure(t);
            } else {
                c.success();
            }
        }
        assert!(matches!(c.admit(t), Admission::Blocked(_)));
    }

    #[test]
    fn throttle_cools_down_then_admits_without_probe() {
        let c = Circuit::default();
        let t = Instant::now();
        c.throttled(t + Duration::from_secs(2));
        assert_eq!(c.admit(t), Admission::Cooling(t + Duration::from_secs(2)));
        assert_eq!(c.snapshot(t).state, "cooling_down");
        assert_eq!(c.admit(t + Duration::from_secs(2)), Admission::Ready);
        assert_eq!(c.admit(t + Duration::from_secs(2)), Admission::Ready);
    }
}
