//! `modelgate health status|circuit-breakers|reset|errors|categories`: ask
//! a running gateway's admin API (`/status`, `/admin/errors`) and print
//! what it says; `health retry-policies` reads the config file.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum HealthCommand {
    /// Overall status: uptime, config version, providers (the `/status` JSON; `--format text` for a summary).
    Status {
        #[arg(long, value_enum, default_value = "json")]
        format: super::Output,
        #[command(flatten)]
        target: Target,
    },
    /// Circuit breaker state per provider account.
    CircuitBreakers(Target),
    /// Close every circuit breaker now (after an incident is over).
    Reset(Target),
    /// The last failures the gateway answered (newest last): status, error
    /// type, provider, model, key name and the gateway's message.
    Errors {
        /// Show at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The recent failures grouped by error type: how many, the statuses,
    /// providers and models they came from, and the newest.
    Categories {
        /// `text` (default) or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: super::Output,
        #[command(flatten)]
        target: Target,
    },
    /// What each provider's requests get on failure: attempts, backoff,
    /// timeouts, circuit breaking, 429 cool-downs and health checks (from the config).
    RetryPolicies {
        /// `text` (default) or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: super::Output,
    },
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// Admin base URL. Default: `admin_listen` from the config, else `listen`.
    #[arg(long, value_name = "URL")]
    pub(crate) admin: Option<String>,
    /// Admin key, when the admin endpoints are on the main listener.
    #[arg(long, env = "MODELGATE_ADMIN_KEY", hide_env_values = true)]
    pub(crate) admin_key: Option<String>,
}

pub(crate) fn base_url(config: Option<PathBuf>, target: &Target) -> Result<String, i32> {
    target
        .admin
        .clone()
        .map(Ok)
        .unwrap_or_else(|| admin_from_config(config))
        .map_err(|e| {
            eprintln!("modelgate: {e}");
            2
        })
}

/// What to print of `/status`: the JSON, a summary, or the circuits.
#[derive(PartialEq)]
enum View {
    Json,
    Summary,
    Circuits,
}

pub fn run(config: Option<PathBuf>, cmd: HealthCommand) -> i32 {
    let (target, view) = match cmd {
        HealthCommand::Errors { limit, json, target } => return errors(config, &target, limit, json),
        HealthCommand::Categories { format, target } => return categories(config, &target, format),
        HealthCommand::RetryPolicies { format } => return retry_policies(config, format),
        HealthCommand::Status { target, format } => (
            target,
            if format == super::Output::Text {
                View::Summary
            } else {
                View::Json
            },
        ),
        HealthCommand::CircuitBreakers(t) => (t, View::Circuits),
        HealthCommand::Reset(t) => {
            return ask(config, &t, "POST", "/admin/circuits/reset".into(), |v| {
                out!("reset {} circuit breakers", v["reset"]);
                0
            })
        }
    };
    ask(config, &target, "GET", "/status".into(), |status| {
        print_status(status, &view);
        0
    })
}

/// `/status` as JSON, as a summary, or its circuits.
fn print_status(status: &Value, view: &View) {
    if *view == View::Summary {
        let n = |v: &Value| v.as_u64().map_or("?".to_string(), |n| n.to_string());
        out!("version:  {}", status["version"].as_str().unwrap_or("?"));
        out!("uptime:   {}s", n(&status["uptime_seconds"]));
        out!(
            "config:   version {}",
            status["config"]["version"].as_str().unwrap_or("?")
        );
        out!(
            "requests: {} ({} in flight, {} errors)",
            n(&status["counters"]["requests_total"]),
            n(&status["counters"]["in_flight"]),
            n(&status["counters"]["errors_total"])
        );
        for p in status["providers"].as_array().into_iter().flatten() {
            out!(
                "provider: {} ({})",
                p["name"].as_str().unwrap_or("?"),
                if p["enabled"] == false { "disabled" } else { "enabled" }
            );
        }
    } else if *view == View::Circuits {
        let list = status["circuits"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out!("no circuits yet (no upstream traffic since start)");
        }
        for c in list {
            let remaining = c["remaining_seconds"]
                .as_f64()
                .map(|s| format!(" ({s:.0}s left)"))
                .unwrap_or_default();
            out!(
                "{:<30} {:<14}{remaining} failures in a row: {}, opened: {}",
                c["account"].as_str().unwrap_or("?"),
                c["state"].as_str().unwrap_or("?"),
                c["consecutive_failures"],
                c["opened_total"]
            );
        }
    } else {
        out!("{}", serde_json::to_string_pretty(status).unwrap_or_default());
    }
}

fn errors(config: Option<PathBuf>, target: &Target, limit: usize, json: bool) -> i32 {
    ask(config, target, "GET", "/admin/errors".into(), |v| {
        print_errors(v, limit, json)
    })
}

fn print_errors(v: &Value, limit: usize, json: bool) -> i32 {
    let list = v["errors"].as_array().cloned().unwrap_or_default();
    let shown = &list[list.len().saturating_sub(limit)..];
    if json {
        out!("{}", serde_json::to_string_pretty(shown).unwrap_or_default());
        return 0;
    }
    if shown.is_empty() {
        out!("no errors since the gateway started");
        return 0;
    }
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    for e in shown {
        out!(
            "{} {} {} {:<22} provider={} model={} key={} attempts={}: {}",
            s(&e["time"]),
            s(&e["request_id"]),
            e["status"],
            s(&e["error_type"]),
            s(&e["provider"]),
            s(&e["model"]),
            s(&e["key"]),
            e["attempts"],
            s(&e["message"]),
        );
    }
    0
}

/// `health categories`: `/admin/errors` grouped by `error_type`, most first.
fn categories(config: Option<PathBuf>, target: &Target, format: super::Output) -> i32 {
    ask(config, target, "GET", "/admin/errors".into(), |v| {
        print_categories(v, format)
    })
}

fn print_categories(v: &Value, format: super::Output) -> i32 {
    let mut groups: std::collections::BTreeMap<String, Vec<&Value>> = std::collections::BTreeMap::new();
    for e in v["errors"].as_array().into_iter().flatten() {
        // A provider's own error, relayed as it came, has no gateway type:
        // it is grouped by its status.
        let kind = e["error_type"]
            .as_str()
            .map_or_else(|| format!("upstream_{}", e["status"]), str::to_string);
        groups.entry(kind).or_default().push(e);
    }
    let distinct = |list: &[&Value], field: &str| {
        let mut seen: Vec<Value> = Vec::new();
        for e in list {
            if !e[field].is_null() && !seen.contains(&e[field]) {
                seen.push(e[field].clone());
            }
        }
        seen
    };
    let mut rows: Vec<Value> = groups
        .iter()
        .map(|(kind, list)| {
            serde_json::json!({
                "category": kind,
                "count": list.len(),
                "statuses": distinct(list, "status"),
                "providers": distinct(list, "provider"),
                "models": distinct(list, "model"),
                "latest": list.last().map(|e| e["time"].clone()),
                "latest_message": list.last().map(|e| e["message"].clone()),
            })
        })
        .collect();
    rows.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
    if format == super::Output::Json {
        out!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return 0;
    }
    if rows.is_empty() {
        out!("no errors since the gateway started");
        return 0;
    }
    let join = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(",")
    };
    out!(
        "{:<24} {:>6}  {:<12} {:<20} LATEST",
        "CATEGORY",
        "COUNT",
        "STATUSES",
        "PROVIDERS"
    );
    for r in &rows {
        out!(
            "{:<24} {:>6}  {:<12} {:<20} {}",
            r["category"].as_str().unwrap_or(""),
            r["count"],
            join(&r["statuses"]),
            join(&r["providers"]),
            r["latest"].as_str().unwrap_or("-")
        );
    }
    0
}

/// `health retry-policies`: the failure handling each provider's requests
/// get, from the config file (and the gateway's fixed circuit rules).
fn retry_policies(config: Option<PathBuf>, format: super::Output) -> i32 {
    use crate::upstream::health::{FAILURES_TO_OPEN, MIN_SAMPLES, OPEN_FOR, WINDOW};
    let path = super::config_path(config);
    let snap = match super::load_snapshot(&path, |_| {}) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("modelgate: {}: {e}", path.display());
            return 2;
        }
    };
    let c = &snap.config;
    let secs = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let providers: Vec<Value> = c
        .providers
        .iter()
        .map(|(name, p)| {
            serde_json::json!({
                "provider": name,
                "enabled": p.enabled,
                "accounts": p.keys.len().max(1),
                "health_check": p.health_check.as_ref().map(|h| serde_json::json!({
                    "kind": serde_json::to_value(h.kind).unwrap_or_default(),
                    "interval": h.interval.map(|d| secs(d.0)),
                })),
            })
        })
        .collect();
    let v = serde_json::json!({
        "max_retries": c.max_retries,
        "retry_delay": secs(c.retry_delay.0),
        "timeout": secs(c.timeout.0),
        "connect_timeout": secs(c.connect_timeout.0),
        "max_wait": format!("{}s", crate::gateway::attempt::MAX_WAIT.as_secs()),
        "circuit": {
            "opens_after_consecutive_failures": FAILURES_TO_OPEN,
            "opens_at_failure_share": format!("half of the last {WINDOW} attempts (at least {MIN_SAMPLES})"),
            "open_for": secs(OPEN_FOR),
        },
        "providers": providers,
    });
    if format == super::Output::Json {
        out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    out!(
        "attempts: 1 + max_retries ({}) across the route's providers and accounts; a 4xx of the client's own is final",
        c.max_retries
    );
    out!(
        "backoff: full-jitter exponential from retry_delay ({}) when the same account is tried again; waits capped at {} a request",
        secs(c.retry_delay.0),
        format!("{}s", crate::gateway::attempt::MAX_WAIT.as_secs())
    );
    out!(
        "timeouts: connect {}, first byte and mid-stream silence {} per attempt",
        secs(c.connect_timeout.0),
        secs(c.timeout.0)
    );
    out!(
        "circuit: opens after {FAILURES_TO_OPEN} failures in a row or half of the last {WINDOW} attempts (at least {MIN_SAMPLES}), for {}, then one probe",
        secs(OPEN_FOR)
    );
    out!("429: the model cools down on that account for retry-after; other accounts and models go on");
    for p in &providers {
        out!(
            "provider {:<16} {:<8} accounts: {}  health check: {}",
            p["provider"].as_str().unwrap_or(""),
            if p["enabled"] == true { "enabled" } else { "disabled" },
            p["accounts"],
            p["health_check"].get("kind").map_or("none".to_string(), |k| format!(
                "{} every {}",
                k.as_str().unwrap_or("?"),
                p["health_check"]["interval"].as_str().unwrap_or("default")
            ))
        );
    }
    0
}

/// Ask the running gateway's admin API and hand the answer to `then`.
pub(crate) fn ask(
    config: Option<PathBuf>,
    target: &Target,
    method: &str,
    path: String,
    then: impl FnOnce(&Value) -> i32,
) -> i32 {
    ask_with(config, target, method, path, Vec::new(), then)
}

/// [`ask`], sending `body` with the request.
pub(crate) fn ask_with(
    config: Option<PathBuf>,
    target: &Target,
    method: &str,
    path: String,
    body: Vec<u8>,
    then: impl FnOnce(&Value) -> i32,
) -> i32 {
    let base = match base_url(config, target) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let answer = admin_call_with(&base, target.admin_key.as_deref(), method, &path, body).and_then(|(status, body)| {
        if status != 200 {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    });
    match answer {
        Ok(v) => then(&v),
        Err(e) => {
            eprintln!("modelgate: {base}{path}: {e}");
            1
        }
    }
}

fn admin_from_config(config: Option<PathBuf>) -> Result<String, String> {
    let path = super::config_path(config);
    let c = crate::config::load::load_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("http://{}", c.admin_listen.unwrap_or(c.listen)))
}

/// One request to the admin API, answered 200 with JSON: that JSON.
/// One request to a gateway's HTTP API through Pingora's own client (plain
/// HTTP, local): status and body, bounded (3 s to connect, 5 s per read, or
/// 120 s when a body is sent; 16 MiB).
pub(crate) fn admin_call(base: &str, key: Option<&str>, method: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    admin_call_with(base, key, method, path, Vec::new())
}

/// [`admin_call`] with a request body.
pub(crate) fn admin_call_with(
    base: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    payload: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let url = url::Url::parse(base).map_err(|e| e.to_string())?;
    if url.scheme() != "http" {
        return Err("the admin URL must be http://".into());
    }
    let host = url.host_str().ok_or("no host in the admin URL")?.to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("cannot resolve the admin host")?;
        let connector = pingora::connectors::http::Connector::new(None);
        let mut peer = pingora::upstreams::peer::HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(std::time::Duration::from_secs(3));
        // A request with a body (a cache warm-up) may take the gateway a
        // while to work through.
        let read = if payload.is_empty() { 5 } else { 120 };
        peer.options.read_timeout = Some(std::time::Duration::from_secs(read));
        let (mut session, _) = connector.get_http_session(&peer).await.map_err(|e| e.to_string())?;
        let mut req = pingora::http::RequestHeader::build(method, path.as_bytes(), None).map_err(|e| e.to_string())?;
        if method != "GET" || !payload.is_empty() {
            let _ = req.insert_header("content-length", payload.len().to_string());
        }
        let _ = req.insert_header("host", format!("{host}:{port}"));
        if let Some(k) = key {
            let _ = req.insert_header("x-api-key", k);
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        if !payload.is_empty() {
            session
                .write_request_body(payload.into(), true)
                .await
                .map_err(|e| e.to_string())?;
        }
        session.finish_request_body().await.map_err(|e| e.to_string())?;
        session.read_response_header().await.map_err(|e| e.to_string())?;
        let status = session.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        let mut body = Vec::new();
        while let Some(chunk) = session.read_response_body().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > 16 * 1024 * 1024 {
                return Err("admin answer too large".to_string());
            }
        }
        Ok((status, body))
    })
}
