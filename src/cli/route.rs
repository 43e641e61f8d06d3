//! `modelgate route list|resolve|test`: the routing table and the plan a
//! request would get, computed from the config file exactly as the running
//! gateway computes it (same `Snapshot::resolve`).

use std::path::PathBuf;

use clap::Subcommand;
use http::header::HeaderName;

use crate::config::snapshot::Plan;
use crate::config::Snapshot;

#[derive(Subcommand, Debug)]
pub enum RouteCommand {
    /// Print the routing rules in order.
    List,
    /// Print the candidate plan for a model, and why each rule matched or not.
    Resolve(Query),
    /// Like `resolve`, and also check every candidate is usable (credentials set).
    Test(Query),
}

#[derive(clap::Args, Debug)]
pub struct Query {
    /// The requested model id.
    #[arg(long)]
    model: String,
    /// A request header, `Name: value` (repeatable), e.g. `x-org-route: cheap`.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
}

pub fn run(config: Option<PathBuf>, cmd: RouteCommand) -> i32 {
    let path = super::config_path(config);
    let snap = match super::load_snapshot(&path, |_| {}) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 1;
        }
    };
    match cmd {
        RouteCommand::List => {
            for (i, r) in snap.config.routes.iter().enumerate() {
                let matcher = match (&r.model_glob, &r.header) {
                    (Some(g), None) => format!("match `{g}`"),
                    (None, Some(h)) => format!("header {}: {}", h.name, h.value),
                    (Some(g), Some(h)) => format!("match `{g}` + header {}: {}", h.name, h.value),
                    (None, None) => "everything".to_string(),
                };
                let rename = r.model.as_deref().map(|m| format!(" as `{m}`")).unwrap_or_default();
                let fallbacks: Vec<String> = r
                    .fallbacks
                    .iter()
                    .map(|f| match f.model() {
                        Some(m) => format!("{} as `{m}`", f.provider()),
                        None => f.provider().to_string(),
                    })
                    .collect();
                let fallbacks = if fallbacks.is_empty() {
                    String::new()
                } else {
                    format!(", then {}", fallbacks.join(", "))
                };
                out!("routes[{i}]  {matcher}  →  {}{rename}{fallbacks}", r.provider);
            }
            match &snap.config.default_provider {
                Some(p) => out!("otherwise   →  {p} (default_provider)"),
                None => out!("otherwise   →  404 (no default_provider)"),
            }
            0
        }
        RouteCommand::Resolve(q) => resolve(&snap, &q, false),
        RouteCommand::Test(q) => resolve(&snap, &q, true),
    }
}

fn resolve(snap: &Snapshot, q: &Query, check: bool) -> i32 {
    let mut headers = Vec::new();
    for h in &q.headers {
        let Some((name, value)) = h.split_once(':') else {
            eprintln!("--header `{h}`: write it as `Name: value`");
            return 2;
        };
        let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) else {
            eprintln!("--header `{h}`: `{}` is not a header name", name.trim());
            return 2;
        };
        headers.push((name, value.trim().to_string()));
    }
    let lookup = |n: &HeaderName| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    out!("model `{}`", q.model);
    for verdict in snap.explain(&q.model, &lookup) {
        match verdict {
            Ok(desc) => {
                out!("  {desc}: matches");
                break;
            }
            Err(why) => out!("  {why}"),
        }
    }
    let Some(plan) = snap.resolve(&q.model, &lookup) else {
        out!("no rule matches and there is no default_provider: the gateway answers 404");
        return 1;
    };
    print_plan(&plan, &q.model);
    if plan.candidates.is_empty() {
        out!("every candidate is disabled: the gateway answers 529");
        return 1;
    }
    if check {
        let mut problems = 0;
        for c in &plan.candidates {
            for a in &c.provider.accounts {
                if a.credential.is_none()
                    && c.provider.kind != crate::config::ProviderKind::Anthropic
                    && c.provider.kind != crate::config::ProviderKind::Ollama
                {
                    out!("  problem: account `{}` has no credential", a.label);
                    problems += 1;
                }
            }
        }
        for w in &snap.warnings {
            out!("  warning: {w}");
        }
        if problems > 0 {
            return 1;
        }
        out!("ok");
    }
    0
}

fn print_plan(plan: &Plan, model: &str) {
    out!("plan ({}):", plan.reason);
    for (i, c) in plan.candidates.iter().enumerate() {
        let upstream = c.rename.as_deref().unwrap_or(model);
        let accounts: Vec<String> = c
            .provider
            .accounts
            .iter()
            .map(|a| format!("{} (weight {})", a.label, a.weight))
            .collect();
        out!(
            "  {}. {} [{}] model `{upstream}`; accounts: {}",
            i + 1,
            c.provider.name,
            c.provider.kind.as_str(),
            accounts.join(", ")
        );
    }
}
