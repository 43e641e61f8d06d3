//! Stages: policy (before the attempt) and meter (after the response).
//!
//! [`admit`] turns the parsed request into a [`Demand`] — input estimated
//! from the body size, output from `max_tokens` (capped), both priced at the
//! first candidate's model — and asks the policy to charge the caller's key
//! and team. [`settle`] charges what the request used once the relay knows
//! it, just before the response's last bytes go out, so a client that waits
//! for one answer before sending the next always meets the settled state.
//! [`before_end`] runs just before a metered answer's last bytes: it
//! settles, and hands the request's [`Record`] to the ledger and waits until
//! the ledger's intake has it in its journal (a `write` on another thread,
//! see [`crate::store::intake`]), so a gateway killed right after a client
//! has its answer does not lose the record. [`finish`] runs from Pingora's
//! `logging` phase for every request: it settles and records what never
//! reached an end (a client gone, an early exit) without waiting, counts
//! the cost, and hands the record, with client details, to the audit log.
//! Both sinks take records through bounded queues.

use std::sync::Arc;

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::Shared;
use crate::dialects::Usage;
use crate::error::GatewayError;
use crate::policy::{self, period, Actual, Demand, RESERVE_OUTPUT_CAP};
use crate::runtime::snapshot::KeyEntry;
use crate::runtime::Snapshot;
use crate::store::intake::Submitted;
use crate::usage::audit::AuditEntry;
use crate::usage::pricing::Price;
use crate::usage::Record;

/// Output tokens assumed when a request sets no `max_tokens` (it is
/// required by the Messages API; this only guards odd clients).
const DEFAULT_OUTPUT_ESTIMATE: u64 = 4_096;

/// The price of `model`, or of the model the client named when the upstream
/// id is not in the table.
fn price<'a>(snap: &'a Snapshot, upstream: Option<&str>, requested: Option<&str>) -> Option<&'a Price> {
    upstream
        .and_then(|m| snap.pricing.lookup(m))
        .or_else(|| requested.and_then(|m| snap.pricing.lookup(m)))
}

/// Check and charge the caller's limits and budgets for one model request.
pub async fn admit(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    key: &Arc<KeyEntry>,
    ctx: &mut RequestCtx,
    body_len: usize,
    max_tokens: Option<u64>,
    first_upstream_model: &str,
) -> Result<(), GatewayError> {
    let input = body_len as u64 / policy::BYTES_PER_TOKEN;
    let output = max_tokens.unwrap_or(DEFAULT_OUTPUT_ESTIMATE).min(RESERVE_OUTPUT_CAP);
    let estimate = Usage {
        input_tokens: input,
        output_tokens: output,
        ..Default::default()
    };
    let reserve = price(snap, Some(first_upstream_model), ctx.model.as_deref())
        .map_or(0, |p| policy::usd_to_nanos(p.cost_usd(&estimate, ctx.fast)));
    let scopes = key.scopes();
    let demand = Demand {
        tokens: input,
        reserve_nanos: reserve,
    };
    let now = period::now_ms();
    match shared.policy.admit(&scopes, demand, now).await {
        Ok(admission) => {
            ctx.admission = Some(admission);
            ctx.shared = Some(shared.clone());
            if ctx.signed_in.is_some() {
                let caps = caps(shared, key, now).await.unwrap_or_default();
                ctx.unified = Some(crate::signin::caps::standing_headers(&caps));
            }
            Ok(())
        }
        Err(mut e) => {
            refused(&e);
            if let (GatewayError::BudgetExceeded { headers, .. }, Some(_)) = (&mut e, &ctx.signed_in) {
                if let Some(c) = caps(shared, key, now)
                    .await
                    .as_deref()
                    .and_then(crate::signin::caps::blocking)
                {
                    *headers = crate::signin::caps::rejected_headers(c);
                }
            }
            Err(e)
        }
    }
}

/// The budgets a principal is charged against (its own, its team's, the
/// pool its group shares), with what each has spent this period; `None`
/// when the policy state cannot be read.
pub async fn caps(shared: &Shared, key: &KeyEntry, now_ms: i64) -> Option<Vec<crate::signin::caps::Cap>> {
    // A `total` budget has no period Claude Code can show.
    let budgeted: Vec<&Arc<crate::policy::ScopeLimits>> = key
        .scopes()
        .into_iter()
        .filter(|s| s.budget_nanos.is_some() && s.period != crate::config::schema::BudgetPeriod::Total)
        .collect();
    if budgeted.is_empty() {
        return Some(Vec::new());
    }
    let standings = shared.policy.standings(&budgeted, now_ms).await.ok()?;
    Some(
        budgeted
            .iter()
            .zip(standings)
            .map(|(s, standing)| crate::signin::caps::Cap {
                spent_nanos: standing.spent_nanos,
                budget_nanos: s.budget_nanos.unwrap_or(0),
                period: s.period,
                reset_ms: period::Window::of(s.period, now_ms).end_ms,
                group_pool: s.id.starts_with("team:"),
            })
            .collect(),
    )
}

/// Admit a request the gateway cannot price beforehand (passthrough_mode):
/// it counts against the key's and team's request rates, and is refused
/// once a budget is spent; it reserves nothing.
pub async fn admit_unpriced(
    shared: &Arc<Shared>,
    key: &Arc<KeyEntry>,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let scopes = key.scopes();
    match shared.policy.admit(&scopes, Demand::default(), period::now_ms()).await {
        Ok(admission) => {
            ctx.admission = Some(admission);
            ctx.shared = Some(shared.clone());
            Ok(())
        }
        Err(e) => {
            refused(&e);
            Err(e)
        }
    }
}

fn refused(e: &GatewayError) {
    let reason = match e {
        GatewayError::BudgetExceeded { .. } => "budget",
        GatewayError::RateLimited { .. } => "rate_limit",
        _ => "state_unavailable",
    };
    crate::telemetry::METRICS.refusals.with_label_values(&[reason]).inc();
}

/// What the request's usage cost, in USD; `None` when its model has no price.
fn cost_of(snap: &Snapshot, ctx: &RequestCtx) -> Option<f64> {
    let usage = ctx.usage.unwrap_or_default();
    price(snap, ctx.upstream_model.as_deref(), ctx.model.as_deref()).map(|p| p.cost_usd(&usage, ctx.fast))
}

/// Settle the request's admission against what it used (`ctx.usage`, none
/// on failures: the reservation is released). Later calls do nothing.
pub async fn settle(ctx: &mut RequestCtx) {
    let (Some(admission), Some(shared)) = (ctx.admission.take(), ctx.shared.as_ref()) else {
        return;
    };
    let cost_usd = ctx
        .snapshot
        .as_deref()
        .and_then(|snap| cost_of(snap, ctx))
        .unwrap_or(0.0);
    let actual = Actual {
        usage: ctx.usage.unwrap_or_default(),
        cost_nanos: policy::usd_to_nanos(cost_usd),
    };
    shared.policy.settle(admission, actual).await;
}

/// How long an answer's end waits for its record to reach the journal.
/// Past it the answer ends anyway (the record still goes to the store); it
/// only happens when the journal's disk stalls or the store falls far behind.
const JOURNAL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer is about to end for the client: settle its admission, and
/// make its ledger record durable (in the intake's journal, see
/// [`crate::store::intake`]) before the end goes out, so a gateway killed
/// just after a client has its answer still has its record. Every relay
/// calls this before a metered answer's last bytes; later calls do
/// nothing, and [`finish`] records what never got here (a client gone, an
/// answer cut).
pub async fn before_end(session: &Session, ctx: &mut RequestCtx) {
    settle(ctx).await;
    if !ctx.metered || ctx.sealed.is_some() {
        return;
    }
    let (Some(snap), Some(shared)) = (ctx.snapshot.clone(), ctx.shared.clone()) else {
        return;
    };
    let Some(sinks) = shared.sinks.get() else { return };
    // The first byte goes out now at the latest.
    ctx.first_byte_at.get_or_insert_with(std::time::Instant::now);
    let record = record_of(&snap, session, ctx);
    ctx.sealed = Some(record.clone());
    match sinks.ledger.submit(record) {
        Submitted::Journaled => {}
        Submitted::Dropped => crate::telemetry::METRICS.ledger_dropped.inc(),
        Submitted::Queued(acked) => {
            if pingora::prelude::fast_timeout::fast_timeout(JOURNAL_WAIT, acked)
                .await
                .is_err()
            {
                log::debug!(
                    "{}: its ledger record was not journaled within {JOURNAL_WAIT:?}",
                    ctx.request_id
                );
            }
        }
    }
}

/// The request's ledger and audit record as things stand.
fn record_of(snap: &Snapshot, session: &Session, ctx: &RequestCtx) -> Arc<Record> {
    let usage = ctx.usage.unwrap_or_default();
    let cost_usd = match cost_of(snap, ctx) {
        Some(cost) => cost,
        None => {
            if ctx.usage.is_some() {
                crate::telemetry::METRICS.unpriced.inc();
                warn_unpriced(ctx.upstream_model.as_deref().or(ctx.model.as_deref()).unwrap_or("-"));
            }
            0.0
        }
    };
    let req = session.req_header();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| bounded(v).to_string())
    };
    let latency_ms = ctx.started.elapsed().as_millis();
    Arc::new(Record {
        ts_ms: period::now_ms() - latency_ms as i64,
        request_id: ctx.request_id.clone(),
        key: ctx.principal.as_ref().map(|k| k.name.clone()),
        team: ctx.principal.as_ref().and_then(|k| k.team.clone()),
        session_id: header("x-claude-code-session-id"),
        agent_id: header("x-claude-code-agent-id"),
        model: ctx.model.clone().unwrap_or_default(),
        provider: ctx.provider.clone(),
        upstream_model: ctx.upstream_model.clone(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cache_read_tokens: usage.cache_read_input_tokens,
        cache_write_tokens: usage.cache_creation_input_tokens,
        cost_usd,
        latency_ms: latency_ms as u64,
        ttft_ms: ctx
            .first_byte_at
            .map(|t| t.duration_since(ctx.started).as_millis() as u64),
        status: ctx.reported_status(),
        attempts: ctx.attempts,
        stream: ctx.stream,
        error: ctx.failure().map(str::to_string),
    })
}

/// Settle (when the relay has not), record what [`before_end`] did not
/// (without waiting: the answer is over), count the cost, cache a complete
/// answer and hand the audit log its entry.
pub async fn finish(shared: &Shared, session: &Session, ctx: &mut RequestCtx) {
    let Some(snap) = ctx.snapshot.clone() else { return };
    settle(ctx).await;
    let reply = ctx.reply_capture.take().map(|c| (c.truncated, c.into_bytes()));
    if let (Some((kind, key)), Some((false, body))) = (ctx.cache_key.take(), &reply) {
        let streamed = ctx.stream && kind == super::cache::Kind::Response;
        if ctx.status == 200
            && ctx.error.is_none()
            && !ctx.client_gone
            && super::cache::is_complete_answer(streamed, body)
        {
            let content_type = if ctx.stream && kind == super::cache::Kind::Response {
                "text/event-stream; charset=utf-8"
            } else {
                "application/json"
            };
            shared.caches.insert(&snap, kind, key, content_type, body.clone());
        }
    }
    // The audit trail covers the API, not health probes and scrapes.
    let audit = shared
        .sinks
        .get()
        .and_then(|s| s.audit.as_ref())
        .filter(|_| session.req_header().uri.path().starts_with("/v1/"));
    if !ctx.metered && audit.is_none() {
        return;
    }
    let record = match ctx.sealed.take() {
        Some(sealed) => sealed,
        None => {
            let record = record_of(&snap, session, ctx);
            if let (true, Some(sinks)) = (ctx.metered, shared.sinks.get()) {
                if let Submitted::Dropped = sinks.ledger.submit(record.clone()) {
                    crate::telemetry::METRICS.ledger_dropped.inc();
                }
            }
            record
        }
    };
    // Kept for what the logging phase reports after this (the live feed,
    // the OTLP span's cost).
    ctx.sealed = Some(record.clone());
    if record.cost_usd > 0.0 {
        crate::telemetry::METRICS
            .cost
            .with_label_values(&[ctx.provider.as_deref().unwrap_or("local")])
            .inc_by(record.cost_usd);
    }
    if let Some(audit) = audit {
        let req = session.req_header();
        let entry = AuditEntry {
            record,
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string()),
            user_agent: req
                .headers
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .map(|v| bounded(v).to_string()),
            method: req.method.to_string(),
            path: req.uri.path().to_string(),
            request_body: ctx.prompt.take(),
            response_body: reply.map(|(_, b)| b),
            billing_group: ctx.billing_group.clone(),
            bodies_withheld: false,
        };
        if !audit.log(entry) {
            crate::telemetry::METRICS.audit_dropped.inc();
        }
    }
}

/// Client header values the records keep (session and agent ids, user
/// agent) are cut to [`KEPT_HEADER_BYTES`]: each record holds them, and a
/// client decides their size.
pub const KEPT_HEADER_BYTES: usize = 256;

pub fn bounded(v: &str) -> &str {
    if v.len() <= KEPT_HEADER_BYTES {
        return v;
    }
    let mut end = KEPT_HEADER_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

fn warn_unpriced(model: &str) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    // Bounded: after 256 distinct models, stay quiet (the counter still
    // counts). Looked up first: a model already warned about costs no copy.
    if seen.len() < 256 && !seen.contains(model) {
        seen.insert(model.to_string());
        log::warn!("no price for model `{model}`: its requests count as $0 (add it to the price table)");
    }
}

/// `GET /v1/usage`: the caller's own standing in the current period, for
/// Claude Code's statusline. `?format=text` gives one line; `?recent=N`
/// adds the caller's own newest requests (the developer's dashboard view).
pub async fn report(
    shared: &Shared,
    key: &Arc<KeyEntry>,
    query: Option<&str>,
) -> Result<(Vec<u8>, bool), GatewayError> {
    let now = period::now_ms();
    let scopes = key.scopes();
    let standings = match fleet_standings(shared, &scopes, now).await {
        Some(s) => s,
        None => shared.policy.standings(&scopes, now).await?,
    };
    let describe = |s: &policy::ScopeLimits, st: &policy::Standing| {
        let w = period::Window::of(s.period, now);
        let spent = policy::nanos_to_usd(st.spent_nanos.max(0));
        let budget = s.budget_nanos.map(|b| policy::nanos_to_usd(b as i64));
        serde_json::json!({
            "period": period::period_name(s.period),
            "period_start": period::rfc3339(w.start_ms),
            "resets_at": w.end_ms.map(period::rfc3339),
            "spend_usd": round_cents(spent),
            "budget_usd": budget,
            "remaining_usd": budget.map(|b| round_cents((b - spent).max(0.0))),
            "requests": st.requests,
            "tokens": {
                "input": st.usage.input_tokens,
                "output": st.usage.output_tokens,
                "cache_read": st.usage.cache_read_input_tokens,
                "cache_write": st.usage.cache_creation_input_tokens,
            },
            "rate_limit": {"rpm": s.rpm.map(|g| g.limit()), "tpm": s.tpm.map(|g| g.limit())},
        })
    };
    let text =
        query.is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "format" && v == "text"));
    if text {
        let st = &standings[0];
        let spent = policy::nanos_to_usd(st.spent_nanos.max(0));
        let tokens = st.usage.total();
        let mut line = match key.scope.budget_nanos {
            Some(b) => format!(
                "${spent:.2} of ${:.2} {}",
                policy::nanos_to_usd(b as i64),
                period::period_name(key.scope.period)
            ),
            None => format!("${spent:.2} this month"),
        };
        line.push_str(&format!(" · {} tok", human_count(tokens)));
        if let (Some(team), Some(ts), Some(st)) = (&key.team, &key.team_scope, standings.get(1)) {
            if let Some(b) = ts.budget_nanos {
                let left = policy::nanos_to_usd(b as i64 - st.spent_nanos.max(0));
                line.push_str(&format!(" · team {team} ${:.2} left", left.max(0.0)));
            }
        }
        line.push('\n');
        return Ok((line.into_bytes(), true));
    }
    let mut body = serde_json::json!({
        "key": key.name,
        "team": key.team,
        "usage": describe(&key.scope, &standings[0]),
    });
    if let (Some(ts), Some(st)) = (&key.team_scope, standings.get(1)) {
        body["team_usage"] = describe(ts, st);
    }
    // `?recent=N`: the caller's own newest requests (never anyone else's).
    let recent = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "recent")
            .map(|(_, v)| v.into_owned())
    });
    if let Some(n) = recent {
        let n = n
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| GatewayError::InvalidRequest("recent: give 1 to 100".into()))?;
        let rows = match shared.sinks.get() {
            Some(sinks) => async { sinks.reader().await?.recent(key.name.to_string(), n).await }
                .await
                .map_err(super::admin::unreadable("/v1/usage"))?,
            None => Vec::new(),
        };
        body["recent"] = rows.iter().map(crate::store::RecentRow::to_json).collect();
    }
    Ok((serde_json::to_vec(&body).unwrap_or_default(), false))
}

/// With a PostgreSQL store, what each scope's requests cost this period
/// across the fleet, from the store (finished requests). `None` with an
/// SQLite store, or when the store cannot be read: then the live counters
/// answer.
async fn fleet_standings(
    shared: &Shared,
    scopes: &[&Arc<policy::ScopeLimits>],
    now: i64,
) -> Option<Vec<policy::Standing>> {
    let sinks = shared.sinks.get()?;
    let reader = sinks.ledger.reader()?;
    let asks = scopes
        .iter()
        .map(|s| (s.id.to_string(), period::Window::of(s.period, now).start_ms))
        .collect();
    match reader.history(asks).await {
        Ok(h) => Some(h.totals.iter().map(|t| t.standing()).collect()),
        Err(e) => {
            log::warn!("/v1/usage: {e}; answering from this replica's counters");
            None
        }
    }
}

fn round_cents(usd: f64) -> f64 {
    (usd * 10_000.0).round() / 10_000.0
}

fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// Refresh the per-team budget gauge (at scrape time).
pub async fn refresh_budget_gauges(shared: &Shared, snap: &Snapshot) {
    let now = period::now_ms();
    let mut teams = shared.config.store_keys.team_scopes(snap);
    teams.retain(|s| s.budget_nanos.is_some());
    if teams.is_empty() {
        return;
    }
    let refs: Vec<&Arc<policy::ScopeLimits>> = teams.iter().collect();
    if let Ok(standings) = shared.policy.standings(&refs, now).await {
        for (s, st) in teams.iter().zip(standings) {
            let left = policy::nanos_to_usd(s.budget_nanos.unwrap_or(0) as i64 - st.spent_nanos);
            let name = s.id.strip_prefix("team:").unwrap_or(&s.id);
            crate::telemetry::METRICS
                .budget_remaining
                .with_label_values(&[name])
                .set(left);
        }
    }
}
/// A reader on the ledger the sinks write (the shared pool for a
/// PostgreSQL store), or a fresh one on the config's store.
pub async fn ledger_reader(shared: &Shared, snap: &Snapshot) -> Result<crate::store::Reader, String> {
    if let Some(sinks) = shared.sinks.get() {
        return sinks.reader().await.map_err(|e| e.to_string());
    }
    let at = crate::store::Location::of(&snap.config.store, &snap.config.state)?;
    crate::store::Reader::open(&at).await.map_err(|e| e.to_string())
}

/// Embedded backend: start each scope's current period from the ledger's
/// history, so budgets hold across restarts (and, with a PostgreSQL store,
/// across the fleet's history): the scopes of `snap` and of the store's
/// keys and teams. Scopes this process already counts are left alone.
/// Returns the last ledger row the seed saw, read in the same snapshot.
pub async fn seed_budgets(shared: &Arc<Shared>, snap: &Snapshot) -> Option<i64> {
    seed_scopes(shared, snap, shared.config.store_keys.scopes(snap)).await
}

/// [`seed_budgets`] for `scopes`.
pub async fn seed_scopes(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    scopes: Vec<Arc<crate::policy::ScopeLimits>>,
) -> Option<i64> {
    let memory = shared.policy.memory()?;
    // Records still queued belong to this process's live counts already.
    // The flush waits for the writer (up to 5 s): on a blocking thread, not
    // on the caller's runtime.
    if shared.sinks.get().is_some() {
        let s = shared.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            s.sinks.get().map(|s| s.ledger.flush(std::time::Duration::from_secs(5)))
        })
        .await;
        match flushed {
            Ok(Some(Err(e))) => log::warn!("usage ledger: {e}"),
            Err(e) => log::warn!("usage ledger: the flush before seeding budgets failed: {e}"),
            Ok(_) => {}
        }
    }
    read_history(shared, snap, memory, scopes).await
}

/// [`seed_scopes`] for a principal new to this process, on the request
/// path (a developer's first request since it started): only budgets not
/// counted here yet are read, and nothing is flushed first (no record of
/// a scope this process has not counted can be queued in it).
pub async fn seed_new_scopes(shared: &Shared, snap: &Snapshot, mut scopes: Vec<Arc<crate::policy::ScopeLimits>>) {
    let Some(memory) = shared.policy.memory() else { return };
    let now = period::now_ms();
    scopes.retain(|s| s.budget_nanos.is_some() && memory.needs_seed(s, period::Window::of(s.period, now)));
    if !scopes.is_empty() {
        read_history(shared, snap, memory, scopes).await;
    }
}

/// Start each of `scopes` not counted yet from the ledger's history; the
/// last ledger row read.
async fn read_history(
    shared: &Shared,
    snap: &Snapshot,
    memory: &crate::policy::memory::Memory,
    scopes: Vec<Arc<crate::policy::ScopeLimits>>,
) -> Option<i64> {
    let reader = match ledger_reader(shared, snap).await {
        Ok(r) => r,
        Err(e) => {
            log::warn!("cannot read the usage ledger to restore budget spend: {e}");
            return None;
        }
    };
    let now = period::now_ms();
    let scopes: Vec<_> = scopes
        .into_iter()
        .map(|s| {
            let window = period::Window::of(s.period, now);
            (s, window)
        })
        .filter(|(s, window)| memory.needs_seed(s, *window))
        .collect();
    let asks = scopes.iter().map(|(s, w)| (s.id.to_string(), w.start_ms)).collect();
    let history = match reader.history(asks).await {
        Ok(h) => h,
        Err(e) => {
            log::warn!("cannot read the usage ledger to restore budget spend: {e}");
            return None;
        }
    };
    for ((s, window), t) in scopes.iter().zip(&history.totals) {
        memory.seed(s, *window, t.standing());
    }
    Some(history.last_id)
}
