//! `/v1/messages` and `/v1/messages/count_tokens`, stage by stage:
//!
//! ```text
//! messages
//!   → auth      Gateway::caller          gateway key → principal, or passthrough-auth
//!   → read      read_request             the whole body, capped, once; parsed; model id checked
//!   → route     route                    snapshot rules → ordered candidate plan
//!   → policy    admit                    rate limits and budgets (gateway keys)
//!   → cache     answer_from_cache        an exact-match hit answers here
//!   → count     count_locally            count_tokens for a plan whose first upstream has no counter
//!   → attempt   attempt_and_relay        the attempt loop (attempt.rs), each candidate's Call built by its adapter
//!   → relay     relay::answer            the committed answer, as the Call says it reaches the client
//! ```
//!
//! and `passthrough_mode`'s unparsed `/v1/*` requests, which skip parsing,
//! routing and caching. Each stage is a function; none names a provider
//! type: everything provider-specific is the candidate's `Adapter` and
//! `Call` (`crate::providers`).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use pingora::proxy::Session;

use super::ctx::{self, RequestCtx};
use super::{auth, body, cache, meter, relay, respond, Gateway};
use crate::dialects::anthropic::MessagesRequest;
use crate::error::GatewayError;
use crate::providers::{Call, LocalCount, Outbound, Outgoing, Reply};
use crate::runtime::snapshot::{Candidate, Plan};
use crate::runtime::Snapshot;
use crate::upstream::balance;

/// Where a request is going, and as what.
struct Routed {
    plan: Plan,
    /// The id routes matched (without a `-fast` suffix that asks for fast mode).
    model: String,
    wants_fast: bool,
}

impl Gateway {
    /// The stages in order; see the module docs.
    pub(super) async fn messages(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Arc<Snapshot>,
        count_tokens: bool,
    ) -> Result<(), GatewayError> {
        let caller = self.caller(session, ctx, snap).await?;
        default_version(session, snap);
        let request = read_request(session, ctx, snap, &caller).await?;
        let routed = route(session, ctx, snap, &request)?;
        if !count_tokens {
            self.admit(ctx, snap, &caller, &request, &routed).await?;
        }
        if self
            .answer_from_cache(session, ctx, snap, &routed.plan, &request, count_tokens)
            .await
        {
            return Ok(());
        }
        let first = &routed.plan.candidates[0];
        if count_tokens && !first.provider.adapter.counts_tokens() {
            return count_locally(session, ctx, &self.shared.caches, snap, &routed, &request.body).await;
        }
        let result = self
            .attempt_and_relay(session, ctx, snap, &caller, &routed, &request, count_tokens)
            .await;
        match result {
            // A cloud counter that failed (or does not serve this model):
            // answer with the local estimate rather than an error.
            Err(e)
                if count_tokens && session.response_written().is_none() && !first.provider.adapter.forwards_raw() =>
            {
                log::info!(
                    "{}: upstream token count failed ({e}); estimating locally",
                    ctx.request_id
                );
                count_locally(session, ctx, &self.shared.caches, snap, &routed, &request.body).await
            }
            other => other,
        }
    }

    /// Stage: policy. A gateway key's request is charged against its key's
    /// and team's limits and budgets before it goes upstream.
    async fn admit(
        &self,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        caller: &auth::Caller,
        request: &MessagesRequest,
        routed: &Routed,
    ) -> Result<(), GatewayError> {
        ctx.metered = true;
        ctx.shared = Some(self.shared.clone());
        if snap.config.audit.log_prompts {
            ctx.prompt = Some(request.body.clone());
            ctx.reply_capture = Some(ctx::Capture::default());
        }
        let auth::Caller::Key(key) = caller else {
            return Ok(());
        };
        let first = &routed.plan.candidates[0];
        let first_model = first.rename.as_deref().unwrap_or(&routed.model);
        meter::admit(
            &self.shared,
            snap,
            key,
            ctx,
            request.body.len(),
            request.max_tokens,
            first_model,
        )
        .await
    }

    /// Stage: cache. With the matching cache on, a stored answer to the
    /// same request answers it here (true); a miss is marked to be stored.
    async fn answer_from_cache(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        plan: &Plan,
        request: &MessagesRequest,
        count_tokens: bool,
    ) -> bool {
        let kind = if count_tokens {
            cache::Kind::TokenCount
        } else {
            cache::Kind::Response
        };
        if !cache::Caches::enabled(snap, kind) {
            return false;
        }
        let caller = ctx.principal.as_ref().map(|k| k.name.as_str());
        let key = cache::key(caller, plan, &request.body, &session.req_header().headers);
        if let Some(hit) = self.shared.caches.lookup(snap, kind, &key) {
            ctx.provider = Some("cache".into());
            let extra = [("x-modelgate-cache", "hit".to_string())];
            respond::complete(session, ctx, 200, hit.content_type, hit.body, &extra).await;
            return true;
        }
        ctx.cache_key = Some((kind, key));
        ctx.reply_capture.get_or_insert_with(ctx::Capture::default);
        false
    }

    /// Stages: attempt → relay. Each candidate's request is built by its
    /// adapter on first use; the loop settles on an answer, which the relay
    /// then writes (or the last failure, when none succeeded).
    #[allow(clippy::too_many_arguments)]
    async fn attempt_and_relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        caller: &auth::Caller,
        routed: &Routed,
        request: &MessagesRequest,
        count_tokens: bool,
    ) -> Result<(), GatewayError> {
        // What Claude upstreams see, worked out once for every candidate.
        let for_claude = OnceLock::new();
        let request_id = ctx.request_id.clone();
        let prepare = |c: &Candidate, headers: &http::HeaderMap| -> Result<Box<dyn Call>, GatewayError> {
            c.provider.adapter.prepare(&Outgoing {
                provider: &c.provider.name,
                request_id: &request_id,
                request,
                for_claude: &for_claude,
                upstream_model: c.rename.as_deref().unwrap_or(&routed.model),
                wants_fast: routed.wants_fast,
                count_tokens,
                headers,
            })
        };
        self.run_attempts(
            session,
            ctx,
            snap,
            caller,
            &routed.plan,
            &prepare,
            &request.model,
            &routed.model,
            true,
        )
        .await
    }

    /// The attempt loop over `plan`, then the relay of what it settled on.
    #[allow(clippy::too_many_arguments)]
    async fn run_attempts(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        caller: &auth::Caller,
        plan: &Plan,
        prepare: &super::attempt::Prepare<'_>,
        client_model: &str,
        routing_model: &str,
        resend: bool,
    ) -> Result<(), GatewayError> {
        let sent = AtomicU32::new(0);
        let request_id = ctx.request_id.clone();
        let otel = self.shared.otel.get().filter(|o| o.traces());
        if let (None, Some(_)) = (&ctx.trace, otel) {
            let traceparent = session.req_header().headers.get("traceparent").map(|v| v.as_bytes());
            ctx.trace = otel.map(|o| Arc::new(o.begin(traceparent)));
        }
        let trace = ctx.trace.clone();
        let result = {
            let req = session.req_header();
            let balance_key = req
                .headers
                .get("x-claude-code-session-id")
                .map(|v| balance::session_key(v.as_bytes()))
                .unwrap_or_else(rand::random);
            let job = super::attempt::Job {
                out: Outbound {
                    method: &req.method,
                    path: req.uri.path(),
                    query: req.uri.query(),
                    headers: &req.headers,
                },
                passthrough_auth: matches!(caller, auth::Caller::Passthrough),
                balance_key,
                model: routing_model,
                resend,
                prepare,
                sent: &sent,
                trace: trace.as_deref(),
                propagate: otel.is_some_and(|o| o.propagate),
            };
            super::attempt::run(&self.shared.upstreams, &self.shared.health, snap, plan, &job).await
        };
        match result {
            Ok(committed) => {
                ctx.provider = Some(committed.provider.name.clone());
                ctx.account = Some(committed.account.clone());
                ctx.attempts = committed.attempts;
                ctx.upstream_model = committed.call.upstream_model().map(str::to_string);
                // Priced as fast only if the request that answered was: a
                // candidate without fast mode had `speed` taken out.
                ctx.fast = committed.call.fast();
                let provider = committed.provider.clone();
                let reply = Reply {
                    client_model,
                    request_id: &request_id,
                    provider: &provider.name,
                };
                relay::answer(session, ctx, committed, &reply).await
            }
            Err(answer) => {
                ctx.attempts = sent.load(Relaxed);
                match answer {
                    super::failure::ClientAnswer::Error(e) => Err(e),
                    super::failure::ClientAnswer::Verbatim(buffered) => {
                        relay::relay_buffered(session, ctx, *buffered).await;
                        Ok(())
                    }
                }
            }
        }
    }

    /// `passthrough_mode`: any other `/v1/*` request goes, unparsed, to the
    /// default provider when that provider takes unparsed bodies.
    pub(super) async fn passthrough(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Arc<Snapshot>,
    ) -> Result<(), GatewayError> {
        let caller = self.caller(session, ctx, snap).await?;
        default_version(session, snap);
        let provider = snap
            .default_provider
            .as_ref()
            .filter(|p| p.adapter.forwards_raw() && p.enabled)
            .ok_or_else(|| {
                GatewayError::NotFound("passthrough_mode needs an enabled Anthropic-type default_provider".into())
            })?;
        if let auth::Caller::Key(key) = &caller {
            // What these endpoints spend (a batch, say) is not known before
            // the upstream acts, nor which models they use: a key limited to
            // some models may not use them, and every use counts against the
            // key's request rate and needs budget left.
            if key.restricted_models() {
                return Err(GatewayError::Permission(format!(
                    "gateway key `{}` is limited to some models, so it may not use {} (passthrough_mode)",
                    key.name,
                    session.req_header().uri.path()
                )));
            }
            meter::admit_unpriced(&self.shared, key, ctx).await?;
        }
        let body = body::read(session, snap.max_request_size, snap.config.client_timeouts.body.0).await?;
        let plan = Plan {
            candidates: vec![Candidate {
                provider: provider.clone(),
                rename: None,
            }],
            reason: "passthrough_mode".into(),
            stats: None,
        };
        let prepare = move |c: &Candidate, _: &http::HeaderMap| {
            c.provider
                .adapter
                .forward(body.clone())
                .ok_or_else(|| GatewayError::Internal(format!("`{}` takes no unparsed bodies", c.provider.name)))
        };
        let method = &session.req_header().method;
        let resend = matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
        self.run_attempts(session, ctx, snap, &caller, &plan, &prepare, "", "", resend)
            .await
    }
}

/// Stage: read. The whole body, once, parsed; the model id checked and
/// allowed for the caller's key.
async fn read_request(
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
    caller: &auth::Caller,
) -> Result<MessagesRequest, GatewayError> {
    let mut body = body::read(session, snap.max_request_size, snap.config.client_timeouts.body.0).await?;
    if let Some(inbound) = ctx.inbound.clone() {
        body = super::inbound::messages_body(session, snap, inbound, &body)?;
    }
    let request = MessagesRequest::parse(body).map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
    check_model_id(&request.model, snap.config.limits.model_id_bytes)?;
    ctx.model = Some(request.model.clone());
    ctx.stream = request.stream;
    // A signed-in developer's request tags (the gateway protocol's billing
    // group) are for the gateway, never for an upstream.
    if ctx.signed_in.is_some() {
        drop_beta(session, REQUEST_TAGS_BETA);
    }
    // Only a signed-in request is looked at: a key's passes as sent.
    let untagged = ctx.signed_in.as_ref().and_then(|_| request.without_tags());
    let request = match (&ctx.signed_in, untagged) {
        (Some(claims), Some(untagged)) => {
            let tag = snap.signin.as_ref().and_then(|s| s.billing_group_tag.as_deref());
            ctx.billing_group = tag
                .zip(request.tags())
                .and_then(|(tag, tags)| tags.get(tag).and_then(|v| v.as_str()).map(str::to_string))
                .filter(|group| claims.groups.contains(group));
            untagged
        }
        _ => request,
    };
    if let auth::Caller::Key(k) = caller {
        if !k.allows_model(&request.model) {
            // A signed-in developer is told which allowlist refused, as
            // the gateway protocol asks (400 invalid_request_error).
            let policy = ctx
                .signed_in
                .as_ref()
                .zip(snap.signin.as_ref())
                .and_then(|(claims, signin)| signin.policy_for(&claims.groups));
            if let Some((_, p)) = policy {
                return Err(GatewayError::InvalidRequest(format!(
                    "model `{}` is not in the allowlist of your group `{}` (signin.groups.{}.models: {}); \
                     ask your administrator for access",
                    request.model,
                    p.group,
                    p.group,
                    p.models_text.join(", ")
                )));
            }
            return Err(GatewayError::Permission(format!(
                "gateway key `{}` may not use model `{}`",
                k.name, request.model
            )));
        }
    }
    Ok(request)
}

/// The beta that announces request tags.
const REQUEST_TAGS_BETA: &str = "request-tags-2026-08-21";

/// Take `beta` out of the request's `anthropic-beta` values (the header
/// goes when nothing is left).
fn drop_beta(session: &mut Session, beta: &str) {
    let headers = &session.req_header().headers;
    // The common case, decided without allocating: the beta is not there.
    let named = headers
        .get_all("anthropic-beta")
        .iter()
        .any(|v| v.as_bytes().windows(beta.len()).any(|w| w == beta.as_bytes()));
    if !named {
        return;
    }
    let values: Vec<&str> = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if !values.contains(&beta) {
        return;
    }
    let kept = values.into_iter().filter(|v| *v != beta).collect::<Vec<_>>().join(",");
    let head = session.req_header_mut();
    let _ = head.remove_header("anthropic-beta");
    if !kept.is_empty() {
        let _ = head.insert_header("anthropic-beta", kept);
    }
}

/// A client that names no API version gets the configured one
/// (`anthropic_version`, `gateway --anthropic-version`) on its way upstream.
fn default_version(session: &mut Session, snap: &Snapshot) {
    if !session.req_header().headers.contains_key("anthropic-version") {
        let _ = session
            .req_header_mut()
            .insert_header("anthropic-version", snap.config.anthropic_version.as_str());
    }
}

/// The plan for a requested model id: the model routed (without a fast
/// `-fast` suffix), whether it had one, and the candidates. Also what the
/// cache warm-up keys its entries by, so they match live requests.
pub(super) fn plan_for(snap: &Snapshot, requested: &str, headers: &http::HeaderMap) -> Option<(String, bool, Plan)> {
    // `claude-opus-4-6-fast` means the base model in fast mode, unless that
    // id is configured verbatim.
    let (model, fast_suffix) = match requested.strip_suffix("-fast") {
        Some(base) if !snap.is_literal_model(requested) => (base.to_string(), true),
        _ => (requested.to_string(), false),
    };
    let plan = snap.resolve(&model, &|name| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    })?;
    Some((model, fast_suffix, plan))
}

/// Stage: route. The snapshot's rules give the ordered candidates.
fn route(
    session: &Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
    request: &MessagesRequest,
) -> Result<Routed, GatewayError> {
    let (model, fast_suffix, plan) = plan_for(snap, &request.model, &session.req_header().headers)
        .ok_or_else(|| GatewayError::NotFound(format!("model: no route serves `{}`", request.model)))?;
    ctx.rule = plan.stats.clone();
    ctx.route_label = Some(if snap.is_literal_model(&model) {
        Arc::from(model.as_str())
    } else {
        plan.reason.clone()
    });
    if plan.candidates.is_empty() {
        return Err(GatewayError::Unavailable {
            message: format!("every provider for `{}` is disabled ({})", request.model, plan.reason),
            retry_after: None,
        });
    }
    let wants_fast = request.speed_fast || fast_suffix;
    ctx.fast = wants_fast;
    Ok(Routed {
        plan,
        model,
        wants_fast,
    })
}

/// A `model` the gateway will store, log and route: at most `limit` bytes
/// (`limits.model_id_bytes`), and no control characters, which would forge
/// lines in the access log. Checked before the id is kept anywhere.
fn check_model_id(model: &str, limit: usize) -> Result<(), GatewayError> {
    if model.len() > limit {
        return Err(GatewayError::InvalidRequest(format!(
            "model: the id is {} bytes long; this gateway accepts at most {limit} (limits.model_id_bytes)",
            model.len()
        )));
    }
    if model.chars().any(char::is_control) {
        return Err(GatewayError::InvalidRequest(
            "model: the id must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// `count_tokens` answered locally ([`LocalCount`]): for a plan whose first
/// upstream has no counter, and when a cloud counter fails or does not serve
/// the model. The count runs off the async workers; the header says it is
/// an estimate and how it was made.
async fn count_locally(
    session: &mut Session,
    ctx: &mut RequestCtx,
    caches: &cache::Caches,
    snap: &Snapshot,
    routed: &Routed,
    body: &[u8],
) -> Result<(), GatewayError> {
    let first = &routed.plan.candidates[0];
    ctx.provider = Some(first.provider.name.clone());
    let upstream_model = first.rename.as_deref().unwrap_or(&routed.model);
    let count = LocalCount::new(first.provider.adapter.as_ref(), body, upstream_model)?;
    let note = count.method();
    let n = tokio::task::spawn_blocking(move || count.run())
        .await
        .map_err(|e| GatewayError::Internal(format!("token counting failed: {e}")))??;
    let body = serde_json::to_vec(&serde_json::json!({ "input_tokens": n })).unwrap_or_default();
    if let Some((kind, key)) = ctx.cache_key.take() {
        caches.insert(snap, kind, key, "application/json", bytes::Bytes::from(body.clone()));
    }
    respond::json(session, ctx, 200, body, &[("x-modelgate-token-count", note)]).await;
    Ok(())
}
