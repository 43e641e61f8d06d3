//! Endpoints answered by the gateway itself: `/health`, `/status`,
//! `/v1/models`. Nothing here calls an upstream, so each answers in
//! microseconds — `/v1/models` must beat Claude Code's 3 s discovery budget
//! and is never a redirect.

use std::collections::HashSet;
use std::time::{Instant, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::runtime::Snapshot;

pub fn health() -> Vec<u8> {
    br#"{"status":"ok"}"#.to_vec()
}

/// Counters the status page shows; owned by the gateway state.
#[derive(Default)]
pub struct Counters {
    pub requests: std::sync::atomic::AtomicU64,
    pub in_flight: std::sync::atomic::AtomicI64,
    pub errors: std::sync::atomic::AtomicU64,
}

pub fn status(
    snap: &Snapshot,
    store: &crate::runtime::ConfigStore,
    started: Instant,
    counters: &Counters,
    health: &crate::upstream::health::Registry,
) -> Vec<u8> {
    use std::sync::atomic::Ordering::Relaxed;
    let reloads = store.reload_status();
    let providers: Vec<Value> = snap
        .providers
        .values()
        .map(|p| {
            json!({
                "name": p.name,
                "type": p.kind.name,
                "enabled": p.enabled,
                "api_base": format!("{}://{}{}", if p.base.tls { "https" } else { "http" }, p.base.authority, p.base.path_prefix),
                "accounts": p.accounts.iter().map(|a| json!({
                    "label": a.label,
                    "weight": a.weight,
                    "credential": p.credential_state(a),
                })).collect::<Vec<_>>(),
                "priority": p.priority,
            })
        })
        .collect();
    let circuits: Vec<Value> = health
        .views(Instant::now())
        .into_iter()
        .map(|(provider, account, v)| {
            json!({
                "provider": provider,
                "account": account,
                "state": v.state,
                "remaining_seconds": v.remaining.map(|d| d.as_secs_f64()),
                "consecutive_failures": v.consecutive_failures,
                "opened_total": v.opened_total,
                "cooling_down": v.cooling.iter().map(|(model, left)| json!({
                    "model": model,
                    "remaining_seconds": left.as_secs_f64(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let loaded = snap
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::to_vec(&json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": started.elapsed().as_secs(),
        "config": {
            "version": snap.version,
            "loaded_at_unix": loaded,
            "warnings": snap.warnings,
            "path": store.path().display().to_string(),
            "reloads": {
                "succeeded": reloads.succeeded,
                "failed": reloads.failed,
                "last_error": reloads.last_error,
                "restart_required": reloads.restart_required,
            },
        },
        "auth_mode": match (snap.keys_enabled(), snap.signin.is_some()) {
            (_, true) => "signin_and_gateway_keys",
            (true, false) => "gateway_keys",
            (false, false) => "passthrough",
        },
        "providers": providers,
        "circuits": circuits,
        "counters": {
            "requests_total": counters.requests.load(Relaxed),
            "in_flight": counters.in_flight.load(Relaxed),
            "errors_total": counters.errors.load(Relaxed),
        },
    }))
    .unwrap_or_default()
}

struct ModelEntry {
    id: String,
    description: String,
}

/// Bedrock's `GET /inference-profiles` (a Bedrock-format client's first
/// request, sent without credentials): the model ids the gateway serves,
/// route names only, each as a system-defined profile of itself.
/// `GET /inference-profiles/{id}`: one of them, or `None`.
pub fn inference_profiles(snap: &Snapshot, one: Option<&str>) -> Option<Vec<u8>> {
    let profile = |id: &str| {
        serde_json::json!({
            "inferenceProfileId": id,
            "inferenceProfileName": id,
            "inferenceProfileArn": format!("arn:aws:bedrock:modelgate::inference-profile/{id}"),
            "models": [{"modelArn": format!("arn:aws:bedrock:modelgate::foundation-model/{id}")}],
            "status": "ACTIVE",
            "type": "SYSTEM_DEFINED",
        })
    };
    let entries = model_entries(snap);
    let body = match one {
        Some(id) => profile(&entries.iter().find(|m| m.id == id)?.id),
        None => serde_json::json!({
            "inferenceProfileSummaries": entries.iter().map(|m| profile(&m.id)).collect::<Vec<_>>(),
        }),
    };
    Some(serde_json::to_vec(&body).unwrap_or_default())
}

/// Model ids a client may request: literal route patterns (no glob
/// characters) first, in route order, then each provider's `models`.
fn model_entries(snap: &Snapshot) -> Vec<ModelEntry> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in &snap.config.routes {
        let Some(pattern) = r.model_glob.as_deref() else {
            continue;
        };
        if pattern.contains(['*', '?', '[', '{']) || !seen.insert(pattern.to_string()) {
            continue;
        }
        let upstream = r.model.as_deref().unwrap_or(pattern);
        out.push(ModelEntry {
            id: pattern.to_string(),
            description: format!("routed to {}:{upstream}", r.provider),
        });
    }
    for p in snap.providers.values().filter(|p| p.enabled) {
        for m in &p.models {
            if seen.insert(m.clone()) {
                out.push(ModelEntry {
                    id: m.clone(),
                    description: format!("served by {}", p.name),
                });
            }
        }
    }
    out
}

/// "claude-sonnet-4-6" → "Claude Sonnet 4.6"; a trailing date stays apart.
pub fn display_name(id: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut version = String::new();
    for part in id.split(['-', '_', '/', ':']).filter(|p| !p.is_empty()) {
        let short_number = part.len() <= 2 && part.bytes().all(|b| b.is_ascii_digit());
        if short_number {
            if !version.is_empty() {
                version.push('.');
            }
            version.push_str(part);
            continue;
        }
        if !version.is_empty() {
            words.push(std::mem::take(&mut version));
        }
        let mut chars = part.chars();
        let word = match chars.next() {
            Some(c) if part.bytes().all(|b| b.is_ascii_digit()) => format!("{c}{}", chars.as_str()),
            Some(c) => c.to_uppercase().chain(chars).collect(),
            None => continue,
        };
        words.push(word);
    }
    if !version.is_empty() {
        words.push(version);
    }
    words.join(" ")
}

/// `GET /v1/models` with Anthropic's pagination (`limit`, `after_id`, `before_id`).
/// `GET /v1/models`: the models served, those the caller may use
/// (`allowed`: a key's or a group policy's allowlist).
pub fn list_models(
    snap: &Snapshot,
    query: Option<&str>,
    allowed: &dyn Fn(&str) -> bool,
) -> Result<Vec<u8>, GatewayError> {
    let mut limit = 20usize;
    let mut after = None;
    let mut before = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| GatewayError::InvalidRequest("limit: must be an integer from 1 to 1000".into()))?
            }
            "after_id" => after = Some(v.into_owned()),
            "before_id" => before = Some(v.into_owned()),
            _ => {}
        }
    }
    let mut all = model_entries(snap);
    all.retain(|m| allowed(&m.id));
    let position = |id: &str| {
        all.iter()
            .position(|m| m.id == id)
            .ok_or_else(|| GatewayError::NotFound(format!("model `{id}` is not served by this gateway")))
    };
    // `has_more` looks in the direction of travel: backwards for `before_id`.
    let (start, end, has_more) = match (after, before) {
        (Some(a), _) => {
            let s = position(&a)? + 1;
            let e = (s + limit).min(all.len());
            (s, e, e < all.len())
        }
        (None, Some(b)) => {
            let e = position(&b)?;
            let s = e.saturating_sub(limit);
            (s, e, s > 0)
        }
        (None, None) => {
            let e = limit.min(all.len());
            (0, e, e < all.len())
        }
    };
    let page = &all[start..end];
    let data: Vec<Value> = page.iter().map(model_json).collect();
    Ok(serde_json::to_vec(&json!({
        "data": data,
        "has_more": has_more,
        "first_id": page.first().map(|m| m.id.as_str()),
        "last_id": page.last().map(|m| m.id.as_str()),
    }))
    .unwrap_or_default())
}

/// `GET /v1/models/{id}`.
pub fn get_model(snap: &Snapshot, id: &str) -> Result<Vec<u8>, GatewayError> {
    model_entries(snap)
        .iter()
        .find(|m| m.id == id)
        .map(|m| serde_json::to_vec(&model_json(m)).unwrap_or_default())
        .ok_or_else(|| GatewayError::NotFound(format!("model: {id}")))
}

fn model_json(m: &ModelEntry) -> Value {
    json!({
        "type": "model",
        "id": m.id,
        "display_name": display_name(&m.id),
        "created_at": "1970-01-01T00:00:00Z",
        "description": m.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_read_like_anthropic_ones() {
        assert_eq!(display_name("claude-sonnet-4-6"), "Claude Sonnet 4.6");
        assert_eq!(display_name("claude-haiku-4-5-20251001"), "Claude Haiku 4.5 20251001");
        assert_eq!(display_name("claude-opus-4-8"), "Claude Opus 4.8");
        assert_eq!(display_name("gpt-4o"), "Gpt 4o");
    }

    #[test]
    fn lists_literal_routes_and_provider_models_with_paging() {
        let env = |_: &str| None;
        let yaml = "default_provider: a\nproviders:\n  a: {type: anthropic, models: [claude-opus-4-8, claude-sonnet-5]}\nroutes:\n  - {match: claude-gw-fast, provider: a, model: claude-haiku-4-5}\n  - {match: 'claude-*', provider: a}\n";
        let snap = Snapshot::build(crate::config::load::parse_str(yaml, &env).unwrap(), &env).unwrap();
        let v: Value = serde_json::from_slice(&list_models(&snap, Some("limit=1000"), &|_| true).unwrap()).unwrap();
        let ids: Vec<_> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["claude-gw-fast", "claude-opus-4-8", "claude-sonnet-5"]);
        assert_eq!(v["has_more"], false);
        assert_eq!(v["first_id"], "claude-gw-fast");
        assert_eq!(v["data"][0]["description"], "routed to a:claude-haiku-4-5");
        let p: Value =
            serde_json::from_slice(&list_models(&snap, Some("limit=1&after_id=claude-gw-fast"), &|_| true).unwrap())
                .unwrap();
        assert_eq!(p["data"][0]["id"], "claude-opus-4-8");
        assert_eq!(p["has_more"], true);
        assert!(list_models(&snap, Some("limit=0"), &|_| true).is_err());
        assert!(get_model(&snap, "claude-sonnet-5").is_ok());
        assert!(matches!(get_model(&snap, "nope"), Err(GatewayError::NotFound(_))));
    }
}

/// The last failures the gateway answered, newest last, bounded.
#[derive(Default)]
pub struct RecentErrors(std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>);

impl RecentErrors {
    const KEEP: usize = 200;

    pub fn record(&self, ctx: &super::ctx::RequestCtx) {
        let event = serde_json::json!({
            "time": crate::policy::period::rfc3339(crate::policy::period::now_ms()),
            "request_id": ctx.request_id,
            "status": ctx.reported_status(),
            "error_type": ctx.error.map(|e| e.as_str()),
            "message": ctx.error_message,
            "provider": ctx.provider,
            "model": ctx.model,
            "key": ctx.principal.as_ref().map(|k| k.name.as_str()),
            "attempts": ctx.attempts,
        });
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back(event);
    }

    pub fn to_json(&self) -> Vec<u8> {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_vec(&serde_json::json!({ "errors": &*q })).unwrap_or_default()
    }
}
