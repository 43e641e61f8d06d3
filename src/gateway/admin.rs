//! The admin endpoints: `/status`, `/metrics`, `/admin/logging`,
//! `/admin/circuits/reset`, `/admin/cache`, `/admin/errors`, `/admin/usage`,
//! `/admin/live` (the feed itself is `live.rs`), `/admin/budgets`,
//! `/admin/reliability`, `/admin/logging/test`.
//!
//! On `admin_listen` they need no key; on the main listener each first
//! passes [`auth::authorize_admin`] (an admin key, and never served on a
//! non-loopback main listener without one). They read and reset process
//! state; they never touch a request in flight.

use std::time::Instant;

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::{auth, cache, local, meter, respond, Role, Shared};
use crate::error::GatewayError;
use crate::runtime::Snapshot;
use crate::telemetry;

/// One admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Status,
    Metrics,
    Logging,
    /// `POST /admin/logging/test`: one line at each enabled level.
    LoggingTest,
    CircuitReset,
    Cache,
    /// `POST /admin/cache/warmup[?key=NAME]`: answers to pre-load (JSONL).
    CacheWarmup,
    Errors,
    Usage,
    Live,
    Budgets,
    Reliability,
    /// `GET /admin/routes`: what each routing rule has served (`route stats`).
    Routes,
}

/// Answer an admin request.
pub async fn serve(
    shared: &Shared,
    role: Role,
    which: Admin,
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
) -> Result<(), GatewayError> {
    if role == Role::Main {
        auth::authorize_admin(snap, &session.req_header().headers)?;
    }
    let body = match which {
        Admin::Status => local::status(snap, &shared.config, shared.started, &shared.counters, &shared.health),
        Admin::Metrics => {
            for (provider, account, view) in shared.health.views(Instant::now()) {
                let state = match view.state {
                    "open" => 1,
                    "half_open" | "half_open_pending" => 2,
                    "cooling_down" => 3,
                    _ => 0,
                };
                telemetry::METRICS
                    .circuit_state
                    .with_label_values(&[&provider, &account])
                    .set(state);
            }
            meter::refresh_budget_gauges(shared, snap).await;
            let body = telemetry::render();
            respond::body(session, ctx, 200, "text/plain; version=0.0.4; charset=utf-8", body).await;
            return Ok(());
        }
        Admin::Logging => {
            // PUT /admin/logging?level=debug&format=json: either or both, live.
            if session.req_header().method == http::Method::PUT {
                configure_logging(session.req_header().uri.query().unwrap_or(""))?;
            }
            logging_state(snap).await
        }
        Admin::LoggingTest => {
            let written: Vec<&str> = [
                log::Level::Error,
                log::Level::Warn,
                log::Level::Info,
                log::Level::Debug,
                log::Level::Trace,
            ]
            .into_iter()
            .filter(|l| *l <= log::max_level())
            .map(|l| {
                log::log!(target: "modelgate::logging_test", l, "modelgate logging test: a line at {}", l.as_str().to_lowercase());
                l.as_str()
            })
            .collect();
            json(serde_json::json!({
                "level": crate::logging::level().as_str().to_lowercase(),
                "format": crate::logging::format_now().name(),
                "written": written.iter().map(|l| l.to_lowercase()).collect::<Vec<_>>(),
            }))
        }
        Admin::CircuitReset => {
            let n = shared.health.reset_all();
            log::warn!("{n} circuit breakers reset through the admin API");
            json(serde_json::json!({ "reset": n }))
        }
        Admin::Cache => {
            let caches = &shared.caches;
            let expired_only = session.req_header().uri.query().is_some_and(|q| {
                url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "expired" && v != "false")
            });
            if session.req_header().method == http::Method::DELETE && expired_only {
                let n = caches.purge_expired(snap);
                log::info!("{n} expired cache entries purged through the admin API");
                json(serde_json::json!({ "purged": n }))
            } else if session.req_header().method == http::Method::DELETE {
                let n = caches.clear();
                log::warn!("{n} cache entries cleared through the admin API");
                json(serde_json::json!({ "cleared": n }))
            } else {
                json(serde_json::json!({
                    "response": caches.stats(snap, cache::Kind::Response),
                    "token_count": caches.stats(snap, cache::Kind::TokenCount),
                }))
            }
        }
        Admin::CacheWarmup => {
            let key = session.req_header().uri.query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "key")
                    .map(|(_, v)| v.into_owned())
            });
            let jsonl = super::body::read(session, snap.max_request_size, snap.config.client_timeouts.body.0).await?;
            let known = |name: &str| shared.config.store_keys.knows(snap, name);
            let warmed = cache::warm(&shared.caches, snap, &jsonl, key.as_deref(), &known).await?;
            log::info!(
                "cache warm-up through the admin API: {} entries loaded, {} lines skipped",
                warmed.loaded,
                warmed.skipped.len()
            );
            json(serde_json::to_value(&warmed).unwrap_or_default())
        }
        Admin::Errors => shared.recent_errors.to_json(),
        Admin::Usage => usage(shared, snap, session.req_header().uri.query()).await?,
        Admin::Live => return super::live::serve(shared, session, ctx).await,
        Admin::Budgets => budgets(shared, snap).await?,
        Admin::Reliability => reliability(shared, session.req_header().uri.query()).await?,
        Admin::Routes => routes(shared, snap),
    };
    respond::json(session, ctx, 200, body, &[]).await;
    Ok(())
}

/// `GET /admin/routes`: each routing rule in order, then `default_provider`,
/// with the requests it took on this node since start (a reload keeps the
/// counts of unchanged rules), how many were answered with an error
/// (4xx/5xx), and their latency (request to last byte).
fn routes(shared: &Shared, snap: &Snapshot) -> Vec<u8> {
    let rules: Vec<serde_json::Value> = snap
        .route_stats()
        .into_iter()
        .map(|r| {
            let c = r.counts;
            let ms = |us: u64| (us as f64 / 1000.0 * 10.0).round() / 10.0;
            serde_json::json!({
                "rule": &*r.rule,
                "provider": r.provider,
                "requests": c.requests,
                "errors": c.errors,
                "error_rate": if c.requests == 0 { 0.0 } else { (c.errors as f64 / c.requests as f64).min(1.0) },
                "avg_latency_ms": c.latency_us.checked_div(c.requests).map_or(0.0, ms),
                "max_latency_ms": ms(c.max_latency_us),
            })
        })
        .collect();
    json(serde_json::json!({
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "rules": rules,
    }))
}

/// `GET /admin/usage?group_by=key|team|model|provider|session|day|hour&split=…&from=…&to=…&limit=N`
/// (`by` and `since` are the older names of `group_by` and `from`): the
/// ledger's totals per group in the window, as `modelgate usage --json`
/// prints them (by model also `cache_savings_usd`). With `split` each group
/// is cut again by a second grouping (`group_by=hour&split=model`: the
/// dashboard's series), one row per pair, each with its `split`. `from` and `to` are
/// durations back from now (`7d`), dates or RFC 3339 times; `to` is
/// exclusive and defaults to now. With a
/// PostgreSQL store every replica answers with the fleet's figures.
async fn usage(shared: &Shared, snap: &Snapshot, query: Option<&str>) -> Result<Vec<u8>, GatewayError> {
    use crate::store::GroupBy;
    let mut by = GroupBy::Key;
    let mut split = None;
    let mut limit: Option<u32> = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "by" | "group_by" => {
                by = GroupBy::parse(&v).ok_or_else(|| {
                    GatewayError::InvalidRequest(format!("{k}: give key, team, model, provider, session, day or hour"))
                })?
            }
            "split" => {
                split = Some(GroupBy::parse(&v).ok_or_else(|| {
                    GatewayError::InvalidRequest("split: give key, team, model, provider, session, day or hour".into())
                })?)
            }
            "limit" => {
                limit = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| GatewayError::InvalidRequest("limit: give 1 to 10000".into()))?,
                )
            }
            _ => {}
        }
    }
    let window = crate::store::Window {
        limit,
        ..report_window(query, 30 * 86_400)?
    };
    let sinks = ledger(shared)?;
    if split == Some(by) {
        return Err(GatewayError::InvalidRequest(
            "split: give a grouping other than group_by's".into(),
        ));
    }
    let rows = async { sinks.reader().await?.summary_in(by, split, window).await }
        .await
        .map_err(unreadable("/admin/usage"))?;
    Ok(json(serde_json::json!({
        "store": sinks.location.describe(),
        "shared": matches!(sinks.location, crate::store::Location::Postgres { .. }),
        "by": by.name(),
        "split": split.map(GroupBy::name),
        "since": crate::policy::period::rfc3339(window.from_ms),
        "to": (window.to_ms != i64::MAX).then(|| crate::policy::period::rfc3339(window.to_ms)),
        "rows": rows.iter().map(|r| {
            let mut v = r.to_json();
            // By model, what reading from the prompt cache saved against
            // paying the input rate for those tokens (the price table's).
            if by == GroupBy::Model {
                v["cache_savings_usd"] = snap.pricing.lookup(&r.group).map_or(serde_json::Value::Null, |p| {
                    serde_json::Value::from(
                        r.totals.cache_read_tokens as f64 * (p.base.input - p.base.cache_read) / 1_000_000.0,
                    )
                });
            }
            v
        }).collect::<Vec<_>>(),
    })))
}

/// `GET /admin/reliability?from=…&to=…`: per provider the requests, errors
/// and failovers (more than one upstream attempt) in the window, read from
/// the ledger; p50/p95 time to first token per model (the newest
/// [`crate::store::TTFT_SAMPLES`] answers); and this process's circuits,
/// one per account, with its attempts, failures and 429s since start.
async fn reliability(shared: &Shared, query: Option<&str>) -> Result<Vec<u8>, GatewayError> {
    let window = report_window(query, 86_400)?;
    let sinks = ledger(shared)?;
    let crate::store::Reliability {
        providers,
        ttft: samples,
    } = async { sinks.reader().await?.reliability(window).await }
        .await
        .map_err(unreadable("/admin/reliability"))?;
    let mut by_model: std::collections::BTreeMap<String, Vec<u64>> = std::collections::BTreeMap::new();
    for (model, ttft) in samples {
        by_model.entry(model).or_default().push(ttft);
    }
    let ttft: Vec<serde_json::Value> = by_model
        .into_iter()
        .map(|(model, mut v)| {
            v.sort_unstable();
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            serde_json::json!({"model": model, "samples": v.len(), "p50_ms": at(0.5), "p95_ms": at(0.95)})
        })
        .collect();
    let circuits: Vec<serde_json::Value> = shared
        .health
        .views(Instant::now())
        .into_iter()
        .map(|(provider, account, view)| {
            serde_json::json!({
                "provider": provider,
                "account": account,
                "state": view.state,
                "consecutive_failures": view.consecutive_failures,
                "opened_total": view.opened_total,
                "cooling_models": view.cooling.iter().map(|(m, _)| m).collect::<Vec<_>>(),
                "attempts": view.answered + view.failed + view.throttled,
                "failures": view.failed,
                "throttled": view.throttled,
                "error_rate": rate(view.failed, view.answered + view.failed + view.throttled),
            })
        })
        .collect();
    Ok(json(serde_json::json!({
        "since": crate::policy::period::rfc3339(window.from_ms),
        "to": (window.to_ms != i64::MAX).then(|| crate::policy::period::rfc3339(window.to_ms)),
        "providers": providers.iter().map(|p| serde_json::json!({
            "provider": p.provider,
            "requests": p.requests,
            "errors": p.errors,
            "error_rate": rate(p.errors, p.requests),
            "failovers": p.failovers,
        })).collect::<Vec<_>>(),
        "ttft_by_model": ttft,
        "circuits": circuits,
    })))
}

/// `part` of `whole`, 0 for none.
fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// `GET /admin/budgets`: every key and team with a budget (the file's and
/// the store's), its limit, spend in the current period and what is left,
/// closest to its limit first. Spend is the policy backend's (this
/// process's counters, or Redis's for the fleet).
async fn budgets(shared: &Shared, snap: &Snapshot) -> Result<Vec<u8>, GatewayError> {
    use crate::policy::{nanos_to_usd, period};
    let now = period::now_ms();
    let mut scopes = shared.config.store_keys.scopes(snap);
    scopes.retain(|s| s.budget_nanos.is_some());
    let refs: Vec<&std::sync::Arc<crate::policy::ScopeLimits>> = scopes.iter().collect();
    let standings = shared.policy.standings(&refs, now).await?;
    let mut rows: Vec<(f64, serde_json::Value)> = scopes
        .iter()
        .zip(standings)
        .map(|(s, st)| {
            let limit = s.budget_nanos.unwrap_or(0);
            let (kind, name) = s.id.split_once(':').unwrap_or(("", &s.id));
            let used = if limit == 0 {
                1.0
            } else {
                st.spent_nanos as f64 / limit as f64
            };
            let window = period::Window::of(s.period, now);
            (
                used,
                serde_json::json!({
                    "scope": kind,
                    "name": name,
                    "period": period::period_name(s.period),
                    "period_start": (s.period != crate::config::schema::BudgetPeriod::Total)
                        .then(|| period::rfc3339(window.start_ms)),
                    "period_end": window.end_ms.map(period::rfc3339),
                    "limit_usd": nanos_to_usd(limit as i64),
                    "spent_usd": nanos_to_usd(st.spent_nanos),
                    "left_usd": nanos_to_usd(limit as i64 - st.spent_nanos),
                    "used": used,
                    "requests": st.requests,
                }),
            )
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(json(serde_json::json!({
        "budgets": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })))
}

/// `PUT /admin/logging?level=…&format=…`: change either or both now.
fn configure_logging(query: &str) -> Result<(), GatewayError> {
    let mut level = None;
    let mut format = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "level" => {
                level = Some(v.parse::<log::LevelFilter>().map_err(|_| {
                    GatewayError::InvalidRequest("level: give off, error, warn, info, debug or trace".into())
                })?)
            }
            "format" => {
                format = Some(
                    crate::config::schema::LogFormat::ALL
                        .into_iter()
                        .find(|f| f.name() == v)
                        .ok_or_else(|| {
                            GatewayError::InvalidRequest(
                                "format: give standard, detailed, json, colored or minimal".into(),
                            )
                        })?,
                )
            }
            _ => {}
        }
    }
    if level.is_none() && format.is_none() {
        return Err(GatewayError::InvalidRequest(
            "give ?level=off|error|warn|info|debug|trace and/or ?format=standard|detailed|json|colored|minimal".into(),
        ));
    }
    if let Some(level) = level {
        crate::logging::set_level(level);
        log::warn!("log level set to {level} through the admin API");
    }
    if let Some(format) = format {
        crate::logging::set_format(format);
        log::warn!("log format set to {} through the admin API", format.name());
    }
    Ok(())
}

/// The logging's state: level, format, lines written per level since
/// start, and the files this process writes (its log file, the audit log)
/// with their sizes and whether they can be written (looked at on a
/// blocking thread).
async fn logging_state(snap: &Snapshot) -> Vec<u8> {
    let mut paths: Vec<(&'static str, std::path::PathBuf)> = Vec::new();
    if let Some(p) = crate::logging::file() {
        paths.push(("log", p.to_path_buf()));
    }
    if let Some(p) = snap.config.audit.path.as_deref() {
        paths.push(("audit", p.into()));
    }
    let files = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .map(|(kind, path)| {
                let meta = std::fs::metadata(&path).ok();
                let writable = std::fs::OpenOptions::new().append(true).open(&path).is_ok();
                serde_json::json!({
                    "kind": kind,
                    "path": path.display().to_string(),
                    "bytes": meta.map(|m| m.len()),
                    "writable": writable,
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    json(serde_json::json!({
        "level": crate::logging::level().as_str().to_lowercase(),
        "format": crate::logging::format_now().name(),
        "output": if crate::logging::file().is_some() { "file" } else { "stderr" },
        "lines": crate::logging::lines_written()
            .into_iter()
            .map(|(l, n)| (l.to_string(), serde_json::Value::from(n)))
            .collect::<serde_json::Map<_, _>>(),
        "files": files,
    }))
}

/// A report's window from its query: `from` (or `since`; default
/// `default_secs` back from now) to `to` (exclusive; default no end).
fn report_window(query: Option<&str>, default_secs: u64) -> Result<crate::store::Window, GatewayError> {
    use crate::store::Since;
    let mut from = Since::Ago(std::time::Duration::from_secs(default_secs));
    let mut to: Option<Since> = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "since" | "from" => {
                from = Since::parse(&v).map_err(|e| GatewayError::InvalidRequest(format!("{k}: {e}")))?
            }
            "to" => to = Some(Since::parse(&v).map_err(|e| GatewayError::InvalidRequest(format!("to: {e}")))?),
            _ => {}
        }
    }
    let now = crate::policy::period::now_ms();
    let window = crate::store::Window {
        from_ms: from.to_ms(now),
        to_ms: to.map_or(i64::MAX, |t| t.to_ms(now)),
        limit: None,
    };
    if window.to_ms <= window.from_ms {
        return Err(GatewayError::InvalidRequest("to: must be after from".into()));
    }
    Ok(window)
}

/// The ledger the reports read.
fn ledger(shared: &Shared) -> Result<&crate::store::Sinks, GatewayError> {
    shared
        .sinks
        .get()
        .ok_or_else(|| GatewayError::Internal("the usage ledger is not open".into()))
}

/// A store read that failed, for the client: try again shortly.
pub(super) fn unreadable(endpoint: &'static str) -> impl FnOnce(crate::store::StoreError) -> GatewayError {
    move |e| {
        log::warn!("{endpoint}: {e}");
        GatewayError::Unavailable {
            message: "the usage store cannot be read just now".into(),
            retry_after: Some(5),
        }
    }
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap_or_default()
}
