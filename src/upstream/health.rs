//! Passive health: one circuit breaker per (provider, account), and 429
//! cool-downs per (provider, account, model).
//!
//! Outcomes of real requests feed the circuits; nothing here sends traffic.
//! A circuit opens after [`FAILURES_TO_OPEN`] consecutive failures, or when
//! at least half of the last [`WINDOW`] outcomes failed (with at least
//! [`MIN_SAMPLES`] of them). An open circuit blocks its account for
//! [`OPEN_FOR`]; then exactly one request probes it (half-open), and its
//! outcome closes or re-opens the circuit.
//!
//! A 429 is not a failure of the account: it cools down the one model it
//! was for until the upstream's `retry-after`. Providers rate-limit each
//! model apart (Opus, Sonnet and Haiku have separate limits) and Claude Code
//! mixes models in one session, so a throttled Opus must not hold up the
//! Haiku request that follows on the same account.
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
/// Models cooling down at once on one account; beyond it the cool-down
/// that ends first makes room (model ids come from clients).
const MAX_COOLING: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Blocked after failures until the instant.
    Open {
        until: Instant,
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
    /// This model is cooling down after a 429 until this instant: worth waiting for.
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
    /// Answers, failures and 429s since the process started (a reset keeps them).
    answered: u64,
    failed: u64,
    throttled: u64,
    /// 429 cool-downs: (upstream model, until).
    cooling: Vec<(Box<str>, Instant)>,
}

impl Inner {
    fn cooling_until(&self, model: &str, now: Instant) -> Option<Instant> {
        self.cooling
            .iter()
            .find(|(m, until)| &**m == model && *until > now)
            .map(|(_, until)| *until)
    }
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
                answered: 0,
                failed: 0,
                throttled: 0,
                cooling: Vec::new(),
            }),
        }
    }
}

impl Circuit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state invalid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask to use the account for `model`. A half-open probe slot, once
    /// taken, must be answered with `success`, `failure`, `throttled` or
    /// `release`.
    pub fn admit(&self, now: Instant, model: &str) -> Admission {
        let mut c = self.lock();
        // A cooling model never takes the probe slot it could not use.
        if let Some(until) = c.cooling_until(model, now) {
            return Admission::Cooling(until);
        }
        match c.state {
            State::Closed => Admission::Ready,
            State::HalfOpen => Admission::Blocked(now + Duration::from_secs(1)),
            State::Open { until } if now < until => Admission::Blocked(until),
            State::Open { .. } => {
                c.state = State::HalfOpen;
                Admission::Probe
            }
        }
    }

    /// When the account is next usable for `model` (`None`: now).
    pub fn blocked_until(&self, now: Instant, model: &str) -> Option<Instant> {
        let c = self.lock();
        let failed = match c.state {
            State::Open { until } if until > now => Some(until),
            State::HalfOpen => Some(now + Duration::from_secs(1)),
            _ => None,
        };
        failed.max(c.cooling_until(model, now))
    }

    /// The account answered `model`: the circuit closes, and that model's
    /// cool-down (if any) is over.
    pub fn success(&self, model: &str) {
        let mut c = self.lock();
        c.answered += 1;
        c.consecutive_failures = 0;
        c.recent <<= 1;
        c.samples = (c.samples + 1).min(WINDOW);
        c.state = State::Closed;
        c.cooling.retain(|(m, _)| &**m != model);
    }

    pub fn failure(&self, now: Instant) {
        let mut c = self.lock();
        c.failed += 1;
        c.consecutive_failures += 1;
        c.recent = (c.recent << 1) | 1;
        c.samples = (c.samples + 1).min(WINDOW);
        let window_failures = (c.recent & ((1 << WINDOW) - 1)).count_ones();
        let rate_trips = c.samples >= MIN_SAMPLES && window_failures * 2 >= c.samples;
        if c.state == State::HalfOpen || c.consecutive_failures >= FAILURES_TO_OPEN || rate_trips {
            open(&mut c, now);
        }
    }

    /// A probe slot taken for a request that never reached the account (its
    /// upstream request could not be built): the next request probes instead.
    pub fn release(&self, now: Instant) {
        let mut c = self.lock();
        if c.state == State::HalfOpen {
            c.state = State::Open { until: now };
        }
    }

    /// An active health check failed: open the circuit now.
    pub fn trip(&self, now: Instant) {
        open(&mut self.lock(), now);
    }

    /// An active health check passed: an open circuit may probe at once
    /// instead of waiting out its cool-down. 429 cool-downs are kept.
    pub fn reachable(&self, now: Instant) {
        let mut c = self.lock();
        if let State::Open { until } = c.state {
            if until > now {
                c.state = State::Open { until: now };
            }
        }
    }

    /// A 429 for `model`: keep that model off the account until `until`,
    /// without counting a failure. A probe that was throttled gives its
    /// slot back: the account answered, so it is reachable.
    pub fn throttled(&self, model: &str, until: Instant) {
        let mut c = self.lock();
        c.throttled += 1;
        if c.state == State::HalfOpen {
            c.state = State::Closed;
        }
        let now = Instant::now();
        c.cooling.retain(|(_, u)| *u > now);
        if let Some(entry) = c.cooling.iter_mut().find(|(m, _)| &**m == model) {
            entry.1 = entry.1.max(until);
            return;
        }
        if c.cooling.len() >= MAX_COOLING {
            if let Some(first) = (0..c.cooling.len()).min_by_key(|&i| c.cooling[i].1) {
                c.cooling.swap_remove(first);
            }
        }
        c.cooling.push((model.into(), until));
    }

    /// Close the circuit and end every cool-down (an operator's override).
    pub fn reset(&self) {
        let mut c = self.lock();
        c.state = State::Closed;
        c.consecutive_failures = 0;
        c.recent = 0;
        c.samples = 0;
        c.cooling.clear();
    }

    pub fn snapshot(&self, now: Instant) -> CircuitView {
        let c = self.lock();
        let mut cooling: Vec<(String, Duration)> = c
            .cooling
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(m, until)| (m.to_string(), *until - now))
            .collect();
        cooling.sort();
        let (state, remaining) = match c.state {
            State::Closed if !cooling.is_empty() => ("cooling_down", cooling.iter().map(|(_, d)| *d).max()),
            State::Closed => ("closed", None),
            State::HalfOpen => ("half_open", None),
            State::Open { until } if until > now => ("open", Some(until - now)),
            State::Open { .. } => ("half_open_pending", None),
        };
        CircuitView {
            state,
            remaining,
            consecutive_failures: c.consecutive_failures,
            opened_total: c.opened_total,
            answered: c.answered,
            failed: c.failed,
            throttled: c.throttled,
            cooling,
        }
    }
}

/// Open (or keep open) for `OPEN_FOR`, with a fresh window: after the
/// cool-down the probe decides.
fn open(c: &mut Inner, now: Instant) {
    if !matches!(c.state, State::Open { .. }) {
        c.opened_total += 1;
    }
    c.state = State::Open { until: now + OPEN_FOR };
    c.recent = 0;
    c.samples = 0;
}

#[derive(Debug, Clone)]
pub struct CircuitView {
    pub state: &'static str,
    pub remaining: Option<Duration>,
    pub consecutive_failures: u32,
    pub opened_total: u64,
    /// Since the process started: attempts the account answered, attempts
    /// that failed (5xx, connection errors, timeouts), and 429s.
    pub answered: u64,
    pub failed: u64,
    pub throttled: u64,
    /// Models cooling down after a 429, and for how long yet.
    pub cooling: Vec<(String, Duration)>,
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
            c.reset();
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
    fn counts_answers_failures_and_429s_since_start() {
        let c = Circuit::default();
        let t = Instant::now();
        c.success("m");
        c.success("m");
        c.failure(t);
        c.throttled("m", t + Duration::from_secs(1));
        c.reset();
        let v = c.snapshot(t);
        assert_eq!((v.answered, v.failed, v.throttled), (2, 1, 1));
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let c = Circuit::default();
        let t = Instant::now();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            c.failure(t);
            assert_eq!(c.admit(t, "m"), Admission::Ready);
        }
        c.failure(t);
        assert_eq!(c.admit(t, "m"), Admission::Blocked(t + OPEN_FOR));
        let later = t + OPEN_FOR;
        assert_eq!(c.admit(later, "m"), Admission::Probe);
        assert!(matches!(c.admit(later, "m"), Admission::Blocked(_)), "only one probe");
        c.failure(later);
        assert!(
            matches!(c.admit(later, "m"), Admission::Blocked(_)),
            "a failed probe re-opens"
        );
        assert_eq!(c.admit(later + OPEN_FOR, "m"), Admission::Probe);
        c.success("m");
        assert_eq!(c.admit(later + OPEN_FOR, "m"), Admission::Ready);
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
                c.success("m");
            }
        }
        assert!(matches!(c.admit(t, "m"), Admission::Blocked(_)));
    }

    #[test]
    fn a_429_cools_down_that_model_only() {
        let c = Circuit::default();
        let t = Instant::now();
        c.throttled("opus", t + Duration::from_secs(7));
        assert_eq!(c.admit(t, "opus"), Admission::Cooling(t + Duration::from_secs(7)));
        assert_eq!(c.admit(t, "haiku"), Admission::Ready, "another model is not held up");
        assert_eq!(c.snapshot(t).state, "cooling_down");
        assert_eq!(c.snapshot(t).cooling[0].0, "opus");
        assert_eq!(c.blocked_until(t, "haiku"), None);
        assert_eq!(c.admit(t + Duration::from_secs(7), "opus"), Admission::Ready);
        c.throttled("opus", t + Duration::from_secs(60));
        c.success("opus");
        assert_eq!(c.admit(t, "opus"), Admission::Ready, "an answer ends the cool-down");
    }

    #[test]
    fn cool_downs_are_bounded() {
        let c = Circuit::default();
        let t = Instant::now() + Duration::from_secs(60);
        for i in 0..(MAX_COOLING as u64 + 10) {
            c.throttled(&format!("m{i}"), t + Duration::from_secs(i));
        }
        let view = c.snapshot(Instant::now());
        assert_eq!(view.cooling.len(), MAX_COOLING);
        assert!(
            view.cooling.iter().all(|(m, _)| m != "m0"),
            "the first to end made room"
        );
    }

    #[test]
    fn a_released_probe_lets_the_next_request_probe() {
        let c = Circuit::default();
        let t = Instant::now();
        c.trip(t);
        let later = t + OPEN_FOR;
        assert_eq!(c.admit(later, "m"), Admission::Probe);
        c.release(later);
        assert_eq!(c.admit(later, "m"), Admission::Probe, "not stuck half-open");
    }
}
