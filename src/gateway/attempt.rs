//! Stage: the attempt loop — send the request to the plan's candidates until
//! one answers, before any byte reaches the client.
//!
//! For each attempt it picks a (provider, account) — plan order, accounts
//! ranked by weighted rendezvous hashing on the Claude Code session id (so a
//! session stays on one account), circuits and per-model 429 cool-downs
//! permitting — has the candidate's [`Call`] build the request head for that
//! account, sends it, and judges the answer once ([`failure::judge`]): a 2xx
//! whose first body chunk arrived, or the client's own error, is committed;
//! anything else is a [`Failure`] whose retry rule, circuit effect and
//! client answer the loop follows, with exponential full-jitter backoff when
//! the same account is tried again and `retry-after` honoured.
//!
//! Nothing here knows a provider type (the [`Call`] does) or touches the
//! downstream session (the relay does).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::failure::{self, client_answer, Attempted, ClientAnswer, Failure, Health, Retry, Verdict};
use super::relay::Committed;
use crate::error::GatewayError;
use crate::providers::{Attempt, Call, Outbound};
use crate::runtime::snapshot::{Account, Candidate, Plan, Provider};
use crate::runtime::Snapshot;
use crate::upstream::balance;
use crate::upstream::health::{self, Admission, Circuit};
use crate::upstream::{Exchange, Limits, Upstreams};

/// Everything an attempt needs besides the plan.
pub struct Job<'a> {
    pub out: Outbound<'a>,
    /// No gateway key was presented (passthrough-auth).
    pub passthrough_auth: bool,
    /// Balancing key: the session id's hash, or a random one.
    pub balance_key: u64,
    /// The model the plan was resolved for (empty for an unparsed
    /// passthrough body); a candidate without a rename sends it upstream.
    pub model: &'a str,
    /// Whether a request the upstream may have acted on can be sent again
    /// (to another target, after a 5xx, 429 or a failure mid-exchange).
    /// Messages requests can; a passthrough POST or DELETE (a batch, a file)
    /// cannot: it is retried only when it never left the gateway.
    pub resend: bool,
    /// Builds a candidate's request (translation included).
    pub prepare: &'a Prepare<'a>,
    /// Upstream requests sent so far, kept up to date by the loop, so a
    /// request that fails in the end still reports how many it took.
    pub sent: &'a AtomicU32,
    /// The request's trace, when traces are exported or propagated: each
    /// attempt is recorded as a child span.
    pub trace: Option<&'a crate::otel::RequestTrace>,
    /// Send each attempt's span as `traceparent` upstream.
    pub propagate: bool,
}

/// Builds a candidate's request: its provider's adapter, given the request
/// (and the client's headers).
pub type Prepare<'a> = dyn Fn(&Candidate, &http::HeaderMap) -> Result<Box<dyn Call>, GatewayError> + Sync + 'a;

/// The longest the loop waits, in total, for cool-downs (`retry-after`) and
/// backoff. Claude Code itself gives up on a `retry-after` above 60 s.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

struct Target {
    candidate: usize,
    account: usize,
}

/// The model a candidate is sent: what its 429 cool-downs are kept by.
fn cooling_key<'a>(c: &'a Candidate, job: &'a Job<'_>) -> &'a str {
    c.rename.as_deref().unwrap_or(job.model)
}

/// Count a failed attempt and tell its account's circuit.
fn record_failure(provider: &str, circuit: &Circuit, model: &str, f: &Failure) {
    log::debug!("attempt to `{provider}`: {} ({:?} side)", f.label, f.origin);
    record(provider, circuit, model, f.label, Some(f.health));
}

/// Count an attempt's outcome and tell its account's circuit.
fn record(provider: &str, circuit: &Circuit, model: &str, label: &'static str, health: Option<Health>) {
    count(provider, label);
    match health {
        None => circuit.success(model),
        Some(Health::Failed) => circuit.failure(Instant::now()),
        Some(Health::Throttled(until)) => circuit.throttled(model, until),
    }
}

pub async fn run<'u>(
    upstreams: &'u Upstreams,
    health: &health::Registry,
    snap: &Snapshot,
    plan: &Plan,
    job: &Job<'_>,
) -> Result<Committed<'u>, ClientAnswer> {
    let max_attempts = 1 + snap.config.max_retries;
    let base_delay = snap.config.retry_delay.0;
    let mut prepared: Vec<Option<Box<dyn Call>>> = plan.candidates.iter().map(|_| None).collect();
    let mut tried: Vec<(usize, usize)> = Vec::new();
    // Accounts that refused the gateway's credential: not asked again.
    let mut refused: Vec<(usize, usize)> = Vec::new();
    let mut last: Option<ClientAnswer> = None;
    let mut waited = Duration::ZERO;
    let ranks: Vec<Vec<usize>> = plan
        .candidates
        .iter()
        .map(|c| {
            let labels: Vec<(&str, u32)> = c
                .provider
                .accounts
                .iter()
                .map(|a| (a.label.as_str(), a.weight))
                .collect();
            balance::rank(&labels, job.balance_key)
        })
        .collect();

    for attempt in 0..max_attempts {
        let now = Instant::now();
        let target = match pick(plan, job, &ranks, health, &tried, &refused, now) {
            Pick::Now(t) => t,
            Pick::Wait(t, until) => {
                let wait = until.saturating_duration_since(now);
                if waited + wait > MAX_WAIT {
                    break;
                }
                tokio::time::sleep(wait).await;
                waited += wait;
                // The cool-down is over; take the slot (it may be the
                // half-open probe). Someone else may have taken it first.
                let c = &plan.candidates[t.candidate];
                let circuit = health.circuit(&c.provider.name, &c.provider.accounts[t.account].label);
                if let Admission::Blocked(_) | Admission::Cooling(_) =
                    circuit.admit(Instant::now(), cooling_key(c, job))
                {
                    continue;
                }
                t
            }
            Pick::Nothing => break,
        };
        // Same account again: back off (full jitter), a different one: go now.
        if tried.contains(&(target.candidate, target.account)) {
            let cap = base_delay.saturating_mul(1 << (attempt.min(16) - 1).min(16));
            let delay = cap.mul_f64(rand::random::<f64>());
            if waited + delay > MAX_WAIT {
                break;
            }
            tokio::time::sleep(delay).await;
            waited += delay;
        }
        tried.push((target.candidate, target.account));
        let candidate = &plan.candidates[target.candidate];
        let provider = &candidate.provider;
        let account = &provider.accounts[target.account];
        let circuit = health.circuit(&provider.name, &account.label);
        let model = cooling_key(candidate, job);
        let call = match &mut prepared[target.candidate] {
            Some(call) => call,
            slot @ None => match (job.prepare)(candidate, job.out.headers) {
                Ok(call) => slot.insert(call),
                Err(e) => {
                    // Never sent: a probe slot this took goes back.
                    circuit.release(Instant::now());
                    return Err(e.into());
                }
            },
        };
        // Service accounts send an OAuth token (cached by the token source;
        // fetched only when it is missing or expiring).
        let bearer = match &account.bearer {
            Some(source) => match source.token().await {
                Ok(token) => Some(token),
                Err(e) => {
                    log::warn!("attempt {} to `{}`: {e}", attempt + 1, account.label);
                    let f = failure::no_token(&provider.name, source.kind());
                    record_failure(&provider.name, &circuit, model, &f);
                    last = Some(f.answer);
                    continue;
                }
            },
            None => None,
        };
        let to = Attempt {
            provider: &provider.name,
            base: &provider.base,
            headers: &provider.headers,
            credential: account.credential.as_ref(),
            bearer: bearer.as_deref(),
            client: &job.out,
            client_credential: job.passthrough_auth,
        };
        let mut head = match call.head(&to) {
            Ok(head) => head,
            Err(e) => {
                circuit.release(Instant::now());
                return Err(e.into());
            }
        };
        let span = job.trace.map(|t| {
            let id = t.begin_attempt(
                attempt + 1,
                &provider.name,
                &account.label,
                &provider.base.host,
                call.upstream_model(),
            );
            if job.propagate {
                let _ = head.insert_header("traceparent", t.traceparent(id));
            }
            (t, id)
        });
        let ended = |status: Option<u16>, label: &'static str| {
            if let Some((t, id)) = span {
                t.end_attempt(id, status, label);
            }
        };
        job.sent.store(attempt + 1, Ordering::Relaxed);
        // Boxed: sending (connect, write, read the head) is the largest
        // future here, and inline it would size the request's future, and
        // so every open stream's memory, for the whole relay.
        let mut exchange = match Box::pin(send(upstreams, snap, provider, head, call.body())).await {
            Ok(x) => x,
            Err(e) => {
                log::info!("attempt {} to `{}` failed: {e}", attempt + 1, account.label);
                let f = failure::unanswered(e, job.resend);
                ended(None, f.label);
                record_failure(&provider.name, &circuit, model, &f);
                if f.retry == Retry::No {
                    return Err(f.answer);
                }
                last = Some(f.answer);
                continue;
            }
        };
        let status = exchange.header().status.as_u16();
        let attempted = Attempted {
            resend: job.resend,
            gateway_credential: !forwards_client_credential(job, account, provider),
        };
        let retry_after = crate::providers::retry_after(exchange.header()).map(Duration::from_secs);
        match failure::judge(status, retry_after, attempted, Instant::now()) {
            Verdict::Commit(label) => {
                // A success must have begun: its first body chunk is read
                // before the client hears anything. An empty answer is an
                // answer where one is expected.
                let empty_ok = !job.resend || status == 204 || *job.out.method == http::Method::HEAD;
                let begun = status >= 300
                    || match exchange.peek().await {
                        Ok(true) => true,
                        Ok(false) => empty_ok,
                        Err(_) => false,
                    };
                if !begun {
                    log::info!(
                        "attempt {} to `{}`: the response ended before its first byte",
                        attempt + 1,
                        account.label
                    );
                    exchange.abort().await;
                    let f = failure::empty_answer(&provider.name, job.resend);
                    ended(Some(status), f.label);
                    record_failure(&provider.name, &circuit, model, &f);
                    if f.retry == Retry::No {
                        return Err(f.answer);
                    }
                    last = Some(f.answer);
                    continue;
                }
                // The account answered: it counts as healthy.
                ended(Some(status), label);
                record(&provider.name, &circuit, model, label, None);
                return commit(exchange, candidate, account, &mut prepared[target.candidate], attempt);
            }
            Verdict::Fail { label, retry, health } => {
                ended(Some(status), label);
                record(&provider.name, &circuit, model, label, Some(health));
                if retry == Retry::No {
                    // The upstream may have acted on it: this answer,
                    // whatever it says, is the client's.
                    return commit(exchange, candidate, account, &mut prepared[target.candidate], attempt);
                }
                if retry == Retry::NotThisAccount {
                    refused.push((target.candidate, target.account));
                }
                log::info!(
                    "attempt {} to `{}` answered {status}; trying elsewhere",
                    attempt + 1,
                    account.label
                );
                let buffered = exchange.buffer(crate::providers::MAX_SMALL_BODY).await;
                let answer = client_answer(call.as_ref(), buffered);
                last = Some(if label == "credential_refused" {
                    let e = GatewayError::CredentialRefused {
                        provider: provider.name.clone(),
                        account: account.label.clone(),
                        status,
                        detail: answer.message(),
                    };
                    log::warn!("{e}");
                    e.into()
                } else {
                    answer
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        let wait = plan
            .candidates
            .iter()
            .flat_map(|c| c.provider.accounts.iter().map(move |a| (c, a)))
            .filter_map(|(c, a)| {
                health
                    .circuit(&c.provider.name, &a.label)
                    .blocked_until(Instant::now(), cooling_key(c, job))
            })
            .min()
            .map(|u| u.saturating_duration_since(Instant::now()).as_secs().max(1));
        GatewayError::Unavailable {
            message: format!(
                "every upstream for this request is unavailable ({}); retry shortly",
                plan.reason
            ),
            retry_after: wait,
        }
        .into()
    }))
}

/// Whether this attempt carried the client's own credential (a provider
/// that takes it, without a key of its own, in passthrough-auth), so that a
/// 401/403 is the client's to fix (`/login`) and is relayed as it came.
fn forwards_client_credential(job: &Job<'_>, account: &Account, provider: &Provider) -> bool {
    job.passthrough_auth
        && account.credential.is_none()
        && provider.kind.without_key == crate::providers::WithoutKey::ForwardsClient
}

/// Send a built request to `provider` and wait for its response header.
async fn send<'u>(
    upstreams: &'u Upstreams,
    snap: &Snapshot,
    provider: &Provider,
    head: pingora::http::RequestHeader,
    body: bytes::Bytes,
) -> Result<Exchange<'u>, GatewayError> {
    let limits = Limits {
        connect: snap.connect_timeout,
        idle: snap.timeout,
    };
    upstreams
        .send(&provider.base, head, body, limits)
        .await
        .map_err(|e| failure::upstream_error(&provider.name, e, snap.timeout))
}

enum Pick {
    Now(Target),
    Wait(Target, Instant),
    Nothing,
}

/// The next target: an untried account that is admitted now, in plan order;
/// else a tried one admitted now (a retry); else the 429 cool-down that ends
/// first.
fn pick(
    plan: &Plan,
    job: &Job<'_>,
    ranks: &[Vec<usize>],
    health: &health::Registry,
    tried: &[(usize, usize)],
    refused: &[(usize, usize)],
    now: Instant,
) -> Pick {
    let mut earliest: Option<(Target, Instant)> = None;
    for retry_pass in [false, true] {
        for (ci, c) in plan.candidates.iter().enumerate() {
            for &ai in &ranks[ci] {
                if tried.contains(&(ci, ai)) != retry_pass || refused.contains(&(ci, ai)) {
                    continue;
                }
                let circuit = health.circuit(&c.provider.name, &c.provider.accounts[ai].label);
                match circuit.admit(now, cooling_key(c, job)) {
                    Admission::Ready | Admission::Probe => {
                        return Pick::Now(Target {
                            candidate: ci,
                            account: ai,
                        })
                    }
                    // A failed account is not waited for: its probe comes
                    // from traffic after the cool-down, and meanwhile the
                    // client hears at once. A 429 cool-down is worth a wait.
                    Admission::Blocked(_) => count(&c.provider.name, "circuit_open"),
                    Admission::Cooling(until) => {
                        if earliest.as_ref().is_none_or(|(_, e)| until < *e) {
                            earliest = Some((
                                Target {
                                    candidate: ci,
                                    account: ai,
                                },
                                until,
                            ));
                        }
                    }
                }
            }
        }
    }
    match earliest {
        Some((t, until)) => Pick::Wait(t, until),
        None => Pick::Nothing,
    }
}

fn commit<'u>(
    exchange: Exchange<'u>,
    candidate: &Candidate,
    account: &Account,
    prepared: &mut Option<Box<dyn Call>>,
    attempt: u32,
) -> Result<Committed<'u>, ClientAnswer> {
    // The slot was filled before this attempt was sent.
    let call = prepared
        .take()
        .ok_or_else(|| GatewayError::Internal("an attempt was committed without its request".into()))?;
    Ok(Committed {
        exchange,
        provider: candidate.provider.clone(),
        account: account.label.clone(),
        call,
        attempts: attempt + 1,
    })
}

fn count(provider: &str, outcome: &str) {
    crate::telemetry::METRICS
        .attempts
        .with_label_values(&[provider, outcome])
        .inc();
}
