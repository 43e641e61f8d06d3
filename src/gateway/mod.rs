//! The request path: Pingora's `ProxyHttp` implementation and the stages it
//! runs, in order.
//!
//! ```text
//! request_filter
//!   → dispatch on method + path (local endpoints answer here)
//!   → auth      (auth.rs)      gateway key → principal, or passthrough-auth
//!   → read      (body.rs)      the whole body, capped, once
//!   → parse     (dialects)     model + stream, raw bytes kept
//!   → route     (config)       snapshot rules → ordered candidate plan
//!   → attempt   (attempt.rs)   build the upstream request, send it
//!   → relay     (relay.rs)     stream the answer back as it arrives
//! logging                      one access-log line
//! ```
//!
//! Every request is answered from `request_filter` (Pingora's "pattern C",
//! `spec/pingora.md` §1.3): routing needs the body's `model`, and Pingora's
//! own retry buffer would silently truncate Claude Code's 100 KB bodies. So
//! `upstream_peer` is never reached; Pingora still owns the listeners, the
//! connection pools and graceful upgrade.

pub mod attempt;
pub mod auth;
pub mod body;
pub mod cache;
pub mod connection;
pub mod ctx;
pub mod guard;
pub mod health_check;
pub mod local;
pub mod meter;
pub mod relay;
pub mod respond;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::dialects::anthropic::cloud::{edit_body, Capabilities, Edited, Platform};
use crate::dialects::anthropic::{supports_fast_mode, MessagesRequest, SpeedEdit, FAST_MODE_BETA};
use crate::dialects::openai::request::{translate_request, RequestOptions};
use crate::dialects::openai::tokens::{count_chat_tokens, Encoding};
use crate::error::GatewayError;
use crate::runtime::snapshot::{Candidate, Dialect, Plan};
use crate::runtime::{ConfigStore, ProviderKind, Snapshot};
use crate::telemetry;
use crate::upstream::balance;
use crate::upstream::Upstreams;
use attempt::{BedrockCall, Failure, GeminiCall, Prepared, VertexClaudeCall};
use ctx::RequestCtx;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Anthropic API listener (`listen`); admin endpoints need an admin key.
    Main,
    /// `admin_listen`: admin endpoints only, no key needed.
    Admin,
}

/// Process-wide state shared by every request on every listener.
pub struct Shared {
    /// Set once this process is handing over (graceful upgrade) or
    /// terminating: responses then carry `Connection: close`, so clients
    /// move their keep-alive connections to the process that stays.
    pub draining: std::sync::atomic::AtomicBool,
    pub config: Arc<ConfigStore>,
    pub upstreams: Upstreams,
    pub health: crate::upstream::health::Registry,
    pub started: Instant,
    pub counters: local::Counters,
    /// Rate limits and budgets (embedded or Redis).
    pub policy: crate::policy::Policy,
    /// The ledger and audit log, opened once the server runs.
    pub sinks: std::sync::OnceLock<crate::usage::Sinks>,
    /// Exact-match response and token-count caches.
    pub caches: cache::Caches,
    /// The last failures, for `/admin/errors` (`modelgate health errors`).
    pub recent_errors: local::RecentErrors,
    /// The last ledger row the embedded budgets were seeded from at start.
    pub ledger_seeded_through: std::sync::OnceLock<i64>,
    /// Listening services whose drain has not finished closing their
    /// kept-alive connections (`connection::Connections::cleanup`).
    pub services_draining: std::sync::atomic::AtomicUsize,
}

pub struct Gateway {
    pub shared: Arc<Shared>,
    pub role: Role,
}

/// The endpoints, decided once from method and path.
enum Endpoint<'a> {
    Health,
    Probe,
    Status,
    Metrics,
    AdminLogging,
    AdminCircuitReset,
    AdminCache,
    AdminErrors,
    Models,
    Model(&'a str),
    Usage,
    Messages,
    CountTokens,
    Passthrough,
    NotFound,
    MethodNotAllowed(&'static str),
}

fn endpoint<'a>(method: &http::Method, path: &'a str, role: Role) -> Endpoint<'a> {
    use http::Method as M;
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match (role, path) {
        (_, "/health") => match *method {
            M::GET | M::HEAD => Endpoint::Health,
            _ => Endpoint::MethodNotAllowed("GET, HEAD"),
        },
        (_, "/status") => match *method {
            M::GET => Endpoint::Status,
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/admin/logging") => match *method {
            M::GET | M::PUT => Endpoint::AdminLogging,
            _ => Endpoint::MethodNotAllowed("GET, PUT"),
        },
        (_, "/admin/circuits/reset") => match *method {
            M::POST => Endpoint::AdminCircuitReset,
            _ => Endpoint::MethodNotAllowed("POST"),
        },
        (_, "/admin/cache") => match *method {
            M::GET | M::DELETE => Endpoint::AdminCache,
            _ => Endpoint::MethodNotAllowed("GET, DELETE"),
        },
        (_, "/admin/errors") => match *method {
            M::GET => Endpoint::AdminErrors,
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/metrics") => match *method {
            M::GET => Endpoint::Metrics,
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (Role::Admin, _) => Endpoint::NotFound,
        (Role::Main, "/") => match *method {
            M::GET | M::HEAD => Endpoint::Probe,
            _ => Endpoint::NotFound,
        },
        (Role::Main, "/v1/messages") => match *method {
            M::POST => Endpoint::Messages,
            _ => Endpoint::MethodNotAllowed("POST"),
        },
        (Role::Main, "/v1/messages/count_tokens") => match *method {
            M::POST => Endpoint::CountTokens,
            _ => Endpoint::MethodNotAllowed("POST"),
        },
        (Role::Main, "/v1/usage") => match *method {
            M::GET => Endpoint::Usage,
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (Role::Main, "/v1/models") => match *method {
            M::GET => Endpoint::Models,
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (Role::Main, p) if p.starts_with("/v1/models/") && *method == M::GET => {
            Endpoint::Model(&p["/v1/models/".len()..])
        }
        (Role::Main, p) if p.starts_with("/v1/") => Endpoint::Passthrough,
        _ => Endpoint::NotFound,
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = self.shared.config.snapshot();
        ctx.snapshot = Some(snap.clone());
        self.shared.counters.requests.fetch_add(1, Relaxed);
        self.shared.counters.in_flight.fetch_add(1, Relaxed);
        telemetry::METRICS.in_flight.inc();
        if self.shared.draining.load(Relaxed) || session.is_process_shutting_down() {
            session.set_keepalive(None);
        }
        connection::head_arrived();
        let limits = &snap.config.client_timeouts;
        session.set_write_timeout(Some(limits.write.0));
        // An early answer (a 401, say) drains the unread body for the next
        // request on the connection: no longer than a body may take.
        session.set_total_drain_timeout(Some(limits.body.0));
        match guard::guarded(self.handle(session, ctx, &snap)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if matches!(
                    e,
                    GatewayError::Authentication(_) | GatewayError::Permission(_) | GatewayError::NotFound(_)
                ) && body::not_worth_draining(session, snap.max_request_size)
                {
                    session.set_keepalive(None);
                }
                respond::error(session, ctx, &e).await;
            }
            Err(guard::Panicked(what)) => {
                telemetry::METRICS.panics.inc();
                log::error!("{}: request handling panicked: {what}", ctx.request_id);
                // Whatever state the session was left in, it is not reused.
                session.set_keepalive(None);
                let e = GatewayError::Internal(
                    "the gateway failed to handle this request (an internal error; it has been logged)".into(),
                );
                let begun = session.response_written().is_some();
                respond::error(session, ctx, &e).await;
                if begun && ctx.stream {
                    let frame = e.sse_frame(&ctx.request_id);
                    let _ = session.write_response_body(Some(frame.into()), true).await;
                } else if begun {
                    // A cut body must not look complete.
                    let _ = session.as_downstream_mut().shutdown().await;
                }
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // `request_filter` answers every request, so Pingora never asks for a peer.
        Err(Error::explain(
            ErrorType::InternalError,
            "upstream_peer reached: every request is answered in request_filter",
        ))
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut RequestCtx) {
        if ctx.status >= 400 || ctx.error.is_some() {
            self.shared.counters.errors.fetch_add(1, Relaxed);
        }
        meter::finish(&self.shared, session, ctx).await;
        // Upstream refusals relayed verbatim (4xx/5xx) count as much as the
        // gateway's own errors when someone asks what went wrong.
        if ctx.error.is_some() || ctx.status >= 400 {
            self.shared.recent_errors.record(ctx);
        }
        record_metrics(ctx);
        access_log(session, ctx);
        if let Some(snap) = &ctx.snapshot {
            connection::answer_done(snap.config.client_timeouts.head.0);
        }
        // Last: a draining process exits once this reaches zero, so the
        // request's record must be queued by now.
        self.shared
            .counters
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
    }
}

impl Gateway {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Arc<Snapshot>,
    ) -> Result<(), GatewayError> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        match endpoint(&req.method, &path, self.role) {
            // Draining: tell load balancers to stop sending new work here.
            Endpoint::Health if self.shared.draining.load(Relaxed) => {
                respond::json(session, ctx, 503, br#"{"status":"draining"}"#.to_vec(), &[]).await
            }
            Endpoint::Health => respond::json(session, ctx, 200, local::health(), &[]).await,
            Endpoint::Probe => respond::json(session, ctx, 200, Vec::new(), &[]).await,
            Endpoint::Status => {
                if self.role == Role::Main {
                    auth::authorize_admin(snap, &session.req_header().headers)?;
                }
                let body = local::status(
                    snap,
                    &self.shared.config,
                    self.shared.started,
                    &self.shared.counters,
                    &self.shared.health,
                );
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::Metrics => {
                if self.role == Role::Main {
                    auth::authorize_admin(snap, &session.req_header().headers)?;
                }
                for (provider, account, view) in self.shared.health.views(Instant::now()) {
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
                meter::refresh_budget_gauges(&self.shared, snap).await;
                let body = telemetry::render();
                respond::body(session, ctx, 200, "text/plain; version=0.0.4; charset=utf-8", body).await;
            }
            Endpoint::AdminLogging => {
                if self.role == Role::Main {
                    auth::authorize_admin(snap, &session.req_header().headers)?;
                }
                // PUT /admin/logging?level=debug
                if session.req_header().method == http::Method::PUT {
                    let query = session.req_header().uri.query().unwrap_or("");
                    let level = url::form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == "level")
                        .and_then(|(_, v)| v.parse::<log::LevelFilter>().ok())
                        .ok_or_else(|| {
                            GatewayError::InvalidRequest("level: give ?level=off|error|warn|info|debug|trace".into())
                        })?;
                    crate::logging::set_level(level);
                    log::warn!("log level set to {level} through the admin API");
                }
                let body =
                    serde_json::to_vec(&serde_json::json!({"level": crate::logging::level().as_str().to_lowercase()}))
                        .unwrap_or_default();
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::AdminCircuitReset => {
                if self.role == Role::Main {
                    auth::authorize_admin(snap, &session.req_header().headers)?;
                }
                let n = self.shared.health.reset_all();
                log::warn!("{n} circuit breakers reset through the admin API");
                let body = serde_json::to_vec(&serde_json::json!({"reset": n})).unwrap_or_default();
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::AdminCache => {
                if self.role == Role::Main {
                    auth::authorize_admin(snap, &session.req_header().headers)?;
                }
                let caches = &self.shared.caches;
                let body = if session.req_header().method == http::Method::DELETE {
                    let n = caches.clear();
                    log::warn!("{n} cache entries cleared through the admin API");
                    serde_json::json!({ "cleared": n })
                } else {
                    serde_json::json!({
                        "response": caches.stats(snap, cache::Kind::Response),
                        "token_count": caches.stats(snap, cache::Kind::TokenCount),
                    })
                };
                respond::json(session, ctx, 200, serde_json::to_vec(&body).unwrap_or_default(), &[]).await;
            }
            Endpoint::AdminErrors => {
                if self.role == Role::Main {
                    auth::authorize_admin(snap, &session.req_header().headers)?;
                }
                let body = self.shared.recent_errors.to_json();
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::Models => {
                self.caller(session, ctx, snap)?;
                let body = local::list_models(snap, session.req_header().uri.query())?;
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::Model(id) => {
                self.caller(session, ctx, snap)?;
                let body = local::get_model(snap, id)?;
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::Usage => {
                let auth::Caller::Key(key) = self.caller(session, ctx, snap)? else {
                    return Err(GatewayError::NotFound(
                        "/v1/usage reports a gateway key's spend; this gateway has no `keys:` (passthrough-auth)"
                            .into(),
                    ));
                };
                let (body, text) = meter::report(&self.shared, &key, session.req_header().uri.query()).await?;
                if text {
                    respond::body(session, ctx, 200, "text/plain; charset=utf-8", body).await;
                } else {
                    respond::json(session, ctx, 200, body, &[]).await;
                }
            }
            Endpoint::Messages => self.messages(session, ctx, snap, false).await?,
            Endpoint::CountTokens => self.messages(session, ctx, snap, true).await?,
            Endpoint::Passthrough if snap.config.passthrough_mode => self.passthrough(session, ctx, snap).await?,
            Endpoint::Passthrough | Endpoint::NotFound => {
                return Err(GatewayError::NotFound(format!("no endpoint at {path}")));
            }
            Endpoint::MethodNotAllowed(allow) => {
                return Err(GatewayError::MethodNotAllowed {
                    method: session.req_header().method.to_string(),
                    path,
                    allow,
                });
            }
        }
        Ok(())
    }

    fn caller(&self, session: &Session, ctx: &mut RequestCtx, snap: &Snapshot) -> Result<auth::Caller, GatewayError> {
        let caller = auth::authenticate(snap, &session.req_header().headers)?;
        if let auth::Caller::Key(k) = &caller {
            ctx.principal = Some(k.clone());
        }
        Ok(caller)
    }

    /// `/v1/messages` and `/v1/messages/count_tokens`: auth → read → parse → route → attempt → relay.
    async fn messages(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Arc<Snapshot>,
        count_tokens: bool,
    ) -> Result<(), GatewayError> {
        let caller = self.caller(session, ctx, snap)?;
        let body = body::read(session, snap.max_request_size, snap.config.client_timeouts.body.0).await?;
        let request = MessagesRequest::parse(body).map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        check_model_id(&request.model, snap.config.limits.model_id_bytes)?;
        ctx.model = Some(request.model.clone());
        ctx.stream = request.stream;
        if let auth::Caller::Key(k) = &caller {
            if !k.allows_model(&request.model) {
                return Err(GatewayError::Permission(format!(
                    "gateway key `{}` may not use model `{}`",
                    k.name, request.model
                )));
            }
        }
        // `claude-opus-4-6-fast` means the base model in fast mode, unless
        // that id is configured verbatim.
        let (routing_model, fast_suffix) = match request.model.strip_suffix("-fast") {
            Some(base) if !snap.is_literal_model(&request.model) => (base.to_string(), true),
            _ => (request.model.clone(), false),
        };
        let wants_fast = request.speed_fast || fast_suffix;
        let headers = &session.req_header().headers;
        let plan = snap
            .resolve(&routing_model, &|name| {
                headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
            })
            .ok_or_else(|| GatewayError::NotFound(format!("model: no route serves `{}`", request.model)))?;
        ctx.route_label = Some(if snap.is_literal_model(&routing_model) {
            Arc::from(routing_model.as_str())
        } else {
            plan.reason.clone()
        });
        if plan.candidates.is_empty() {
            return Err(GatewayError::Unavailable {
                message: format!("every provider for `{}` is disabled ({})", request.model, plan.reason),
                retry_after: None,
            });
        }
        ctx.fast = wants_fast;
        if !count_tokens {
            ctx.metered = true;
            if snap.config.audit.log_prompts {
                ctx.prompt = Some(request.body.clone());
                ctx.reply_capture = Some(ctx::Capture::default());
            }
            if let auth::Caller::Key(key) = &caller {
                let first = &plan.candidates[0];
                let first_model = first.rename.as_deref().unwrap_or(&routing_model);
                meter::admit(
                    &self.shared,
                    snap,
                    key,
                    ctx,
                    request.body.len(),
                    request.max_tokens,
                    first_model,
                )
                .await?;
            }
        }
        let cache_kind = if count_tokens {
            cache::Kind::TokenCount
        } else {
            cache::Kind::Response
        };
        if cache::Caches::enabled(snap, cache_kind) {
            let caller = ctx.principal.as_ref().map(|k| k.name.as_str());
            let key = cache::key(caller, &plan, &request.body, &session.req_header().headers);
            if let Some(hit) = self.shared.caches.lookup(snap, cache_kind, &key) {
                ctx.provider = Some("cache".into());
                let extra = [("x-modelgate-cache", "hit".to_string())];
                respond::complete(session, ctx, 200, hit.content_type, hit.body, &extra).await;
                return Ok(());
            }
            ctx.cache_key = Some((cache_kind, key));
            ctx.reply_capture.get_or_insert_with(ctx::Capture::default);
        }
        // OpenAI-family providers have no count endpoint: count locally.
        if count_tokens {
            if let Dialect::OpenAi(_) = plan.candidates[0].provider.kind.dialect() {
                return estimate_tokens(
                    session,
                    ctx,
                    &self.shared.caches,
                    snap,
                    &plan,
                    &routing_model,
                    &request.body,
                )
                .await;
            }
        }
        let request_id = ctx.request_id.clone();
        let request = &request;
        // Bedrock and Vertex filter the betas; keep the header values
        // (shared bytes, no copy) for the prepare step, only when such a
        // candidate may need them.
        let beta_headers: Vec<http::HeaderValue> = if plan.candidates.iter().any(|c| c.provider.capabilities.is_some())
        {
            session
                .req_header()
                .headers
                .get_all("anthropic-beta")
                .iter()
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let beta_headers = &beta_headers;
        let routing: &str = &routing_model;
        // What Claude upstreams see: without thinking blocks other vendors'
        // models produced (decided once, by a byte scan, on first use).
        let for_claude = std::sync::OnceLock::new();
        let for_claude = &for_claude;
        let claude_request = move || {
            for_claude
                .get_or_init(|| request.for_claude())
                .as_ref()
                .unwrap_or(request)
        };
        let prepare = move |c: &Candidate| -> Result<Prepared, GatewayError> {
            let upstream_model = c.rename.as_deref().unwrap_or(routing);
            let betas = || -> Vec<&str> { beta_headers.iter().filter_map(|v| v.to_str().ok()).collect() };
            // A Claude body edited for a cloud platform, drops logged.
            let claude_edit = |platform: Platform| -> Result<Edited, GatewayError> {
                // Bedrock and Vertex providers always carry their table
                // (config fills in the platform's default): no copy per request.
                let default_caps;
                let caps = match c.provider.capabilities.as_deref() {
                    Some(caps) => caps,
                    None => {
                        default_caps = Capabilities::for_platform(platform);
                        &default_caps
                    }
                };
                let edited = edit_body(&claude_request().body, &betas(), caps, platform)
                    .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                if !edited.dropped.is_empty() {
                    log::info!(
                        "{request_id}: for {platform:?} `{}`: dropped {}",
                        c.provider.name,
                        edited.dropped.join(", ")
                    );
                }
                Ok(edited)
            };
            match c.provider.kind.dialect() {
                Dialect::Anthropic => {
                    // Fast mode where the model has it (with its beta);
                    // elsewhere `speed` is dropped and the request runs at
                    // standard speed.
                    let request = claude_request();
                    let fast = wants_fast && supports_fast_mode(upstream_model);
                    let speed = match (wants_fast, fast, request.speed_fast) {
                        (true, true, false) => SpeedEdit::Insert,
                        (true, false, true) => SpeedEdit::Remove,
                        _ => SpeedEdit::Keep,
                    };
                    Ok(Prepared::Anthropic {
                        body: request.upstream_body(Some(upstream_model), speed),
                        beta: fast.then_some(FAST_MODE_BETA),
                        upstream_model: Some(upstream_model.to_string()),
                    })
                }
                Dialect::Bedrock if !crate::dialects::bedrock::is_anthropic_model(upstream_model) => {
                    use crate::dialects::bedrock;
                    let conv = bedrock::converse::converse_request(&request.body)
                        .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                    for note in &conv.notes {
                        log::info!("{request_id}: translating for Converse `{}`: {note}", c.provider.name);
                    }
                    let (call, body) = if count_tokens {
                        let body = bedrock::count_tokens_converse(&conv.body)
                            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                        (BedrockCall::CountTokens, body)
                    } else {
                        (BedrockCall::Converse { stream: conv.stream }, conv.body)
                    };
                    Ok(Prepared::Bedrock {
                        upstream_model: upstream_model.to_string(),
                        call,
                        body: bytes::Bytes::from(body),
                        estimated_input_tokens: conv.estimated_input_tokens,
                    })
                }
                Dialect::Bedrock => {
                    let invoke = claude_edit(Platform::Bedrock)?;
                    let (call, body) = if count_tokens {
                        (
                            BedrockCall::CountTokens,
                            crate::dialects::bedrock::count_tokens_invoke(&invoke.body),
                        )
                    } else {
                        (BedrockCall::Invoke { stream: request.stream }, invoke.body)
                    };
                    Ok(Prepared::Bedrock {
                        upstream_model: upstream_model.to_string(),
                        call,
                        body: bytes::Bytes::from(body),
                        estimated_input_tokens: 0,
                    })
                }
                Dialect::Vertex if is_vertex_claude(upstream_model) => {
                    let edited = claude_edit(Platform::Vertex)?;
                    let (call, body) = if count_tokens {
                        // The count-tokens model takes the model in the body.
                        let body = with_model(&edited.body, upstream_model)
                            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                        (VertexClaudeCall::CountTokens, body)
                    } else {
                        (VertexClaudeCall::Predict { stream: request.stream }, edited.body)
                    };
                    Ok(Prepared::VertexClaude {
                        upstream_model: upstream_model.to_string(),
                        call,
                        betas: edited.betas,
                        body: bytes::Bytes::from(body),
                    })
                }
                Dialect::Gemini | Dialect::Vertex => {
                    use crate::dialects::gemini;
                    let vertex = c.provider.vertex.is_some();
                    let mut translated = gemini::translate_request(
                        &request.body,
                        &gemini::RequestOptions {
                            upstream_model,
                            vertex,
                            legacy_schema: false,
                        },
                    )
                    .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                    for note in &translated.notes {
                        log::info!("{request_id}: translating for Gemini `{}`: {note}", c.provider.name);
                    }
                    let (call, body) = if count_tokens {
                        let body = gemini::count_tokens_body(&translated.body, upstream_model, vertex)
                            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                        (GeminiCall::CountTokens, body)
                    } else {
                        let stream = translated.stream;
                        (GeminiCall::Generate { stream }, std::mem::take(&mut translated.body))
                    };
                    Ok(Prepared::Gemini {
                        upstream_model: upstream_model.to_string(),
                        call,
                        translated,
                        body: bytes::Bytes::from(body),
                    })
                }
                Dialect::OpenAi(_) if count_tokens => Err(GatewayError::Internal(format!(
                    "`{}` has no token counter of its own",
                    c.provider.name
                ))),
                Dialect::OpenAi(flavor) => {
                    let mut translated = translate_request(&request.body, &RequestOptions { flavor, upstream_model })
                        .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
                    for note in &translated.notes {
                        log::info!("{request_id}: translating for `{}`: {note}", c.provider.name);
                    }
                    let body = bytes::Bytes::from(std::mem::take(&mut translated.body));
                    Ok(Prepared::OpenAi {
                        flavor,
                        upstream_model: upstream_model.to_string(),
                        translated,
                        body,
                    })
                }
            }
        };
        let remote_count = count_tokens && plan.candidates[0].provider.kind.dialect() != Dialect::Anthropic;
        let result = self
            .attempt_and_relay(
                session,
                ctx,
                snap,
                &caller,
                &plan,
                &prepare,
                &request.model,
                &routing_model,
                true,
            )
            .await;
        match result {
            // A cloud counter that failed (or does not serve this model):
            // answer with the local estimate rather than an error.
            Err(e) if remote_count && session.response_written().is_none() => {
                log::info!(
                    "{}: upstream token count failed ({e}); estimating locally",
                    ctx.request_id
                );
                estimate_tokens(
                    session,
                    ctx,
                    &self.shared.caches,
                    snap,
                    &plan,
                    &routing_model,
                    &request.body,
                )
                .await
            }
            other => other,
        }
    }

    /// attempt → relay: run the attempt loop over `plan`, then stream the
    /// committed answer back (or the last failure, when none succeeded).
    #[allow(clippy::too_many_arguments)]
    async fn attempt_and_relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        caller: &auth::Caller,
        plan: &Plan,
        prepare: &(dyn Fn(&Candidate) -> Result<Prepared, GatewayError> + Sync),
        client_model: &str,
        routing_model: &str,
        resend: bool,
    ) -> Result<(), GatewayError> {
        let sent = std::sync::atomic::AtomicU32::new(0);
        let result = {
            let req = session.req_header();
            let balance_key = req
                .headers
                .get("x-claude-code-session-id")
                .map(|v| balance::session_key(v.as_bytes()))
                .unwrap_or_else(rand::random);
            let job = attempt::Job {
                out: attempt::Outbound {
                    method: &req.method,
                    path: req.uri.path(),
                    query: req.uri.query(),
                    headers: &req.headers,
                },
                caller,
                balance_key,
                model: routing_model,
                resend,
                prepare,
                sent: &sent,
            };
            attempt::run(&self.shared.upstreams, &self.shared.health, snap, plan, &job).await
        };
        if result.is_err() {
            ctx.attempts = sent.load(Relaxed);
        }
        match result {
            Ok(committed) => {
                ctx.provider = Some(committed.provider.name.clone());
                ctx.account = Some(committed.account);
                ctx.attempts = committed.attempts;
                ctx.upstream_model = committed.prepared.upstream_model().map(str::to_string);
                // Priced as fast only if the request that answered was: a
                // candidate without fast mode had `speed` taken out.
                ctx.fast = matches!(committed.prepared, Prepared::Anthropic { beta: Some(_), .. });
                let provider = committed.provider.name.as_str();
                match committed.prepared {
                    Prepared::Anthropic { .. } => {
                        relay::relay(session, ctx, committed.exchange, provider).await;
                        Ok(())
                    }
                    Prepared::Bedrock {
                        call,
                        estimated_input_tokens,
                        ..
                    } => {
                        let reply = relay::Reply {
                            client_model,
                            estimated_input_tokens,
                        };
                        relay::relay_bedrock(session, ctx, committed.exchange, provider, call, reply).await
                    }
                    Prepared::OpenAi { translated, .. } => {
                        let reply = relay::OpenAiReply {
                            translated: &translated,
                            client_model,
                            provider,
                        };
                        relay::relay_openai(session, ctx, committed.exchange, reply).await
                    }
                    Prepared::Gemini { translated, call, .. } => {
                        let reply = relay::GeminiReply {
                            translated: &translated,
                            client_model,
                            provider,
                            call,
                        };
                        relay::relay_gemini(session, ctx, committed.exchange, reply).await
                    }
                    Prepared::VertexClaude { .. } => {
                        relay::relay_vertex_claude(session, ctx, committed.exchange, provider).await
                    }
                }
            }
            Err(Failure::Gateway(e)) => Err(e),
            Err(Failure::Upstream(buffered)) => {
                relay::relay_buffered(session, ctx, buffered).await;
                Ok(())
            }
        }
    }

    /// `passthrough_mode`: any other `/v1/*` request goes, unparsed, to the
    /// default provider when that provider speaks Anthropic.
    async fn passthrough(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Arc<Snapshot>,
    ) -> Result<(), GatewayError> {
        let caller = self.caller(session, ctx, snap)?;
        let provider = snap
            .default_provider
            .as_ref()
            .filter(|p| p.kind == ProviderKind::Anthropic && p.enabled)
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
        };
        let prepare = move |_: &Candidate| {
            Ok(Prepared::Anthropic {
                body: body.clone(),
                beta: None,
                upstream_model: None,
            })
        };
        let method = &session.req_header().method;
        let resend = matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
        self.attempt_and_relay(session, ctx, snap, &caller, &plan, &prepare, "", "", resend)
            .await
    }
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

/// `count_tokens` answered locally: for OpenAI-family routes (OpenAI has no
/// count endpoint), and when a cloud counter fails or does not serve the
/// model. The prompt is translated to Chat Completions and counted with the
/// first candidate's tokenizer (an OpenAI encoding; for other vendors'
/// models, an estimate), off the async workers (a 100 KB prompt is
/// milliseconds of CPU). The header says it is an estimate and with which
/// encoding.
async fn estimate_tokens(
    session: &mut Session,
    ctx: &mut RequestCtx,
    caches: &cache::Caches,
    snap: &Snapshot,
    plan: &Plan,
    routing_model: &str,
    body: &[u8],
) -> Result<(), GatewayError> {
    let first = &plan.candidates[0];
    let flavor = match first.provider.kind.dialect() {
        Dialect::OpenAi(flavor) => flavor,
        _ => crate::dialects::openai::Flavor::OpenAi,
    };
    ctx.provider = Some(first.provider.name.clone());
    let upstream_model = first.rename.as_deref().unwrap_or(routing_model);
    let translated = translate_request(body, &RequestOptions { flavor, upstream_model })
        .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
    count_tokens_locally(session, ctx, caches, snap, translated.body, upstream_model).await
}

/// Whether a Vertex model id names Claude (`publishers/anthropic`) rather
/// than a Google model: `claude-sonnet-4-5@20250929`.
fn is_vertex_claude(model: &str) -> bool {
    model.starts_with("claude-")
}

/// `body` (a JSON object) with `model` set: Vertex's count-tokens model
/// takes the model in the body, where every other call has it in the path.
fn with_model(body: &[u8], model: &str) -> Result<Vec<u8>, serde_json::Error> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    v.insert("model".into(), model.into());
    serde_json::to_vec(&v)
}

async fn count_tokens_locally(
    session: &mut Session,
    ctx: &mut RequestCtx,
    caches: &cache::Caches,
    snap: &Snapshot,
    chat_body: Vec<u8>,
    upstream_model: &str,
) -> Result<(), GatewayError> {
    let encoding = Encoding::for_model(upstream_model);
    let n = tokio::task::spawn_blocking(move || count_chat_tokens(&chat_body, encoding))
        .await
        .map_err(|e| GatewayError::Internal(format!("token counting failed: {e}")))?
        .map_err(|e| GatewayError::Internal(format!("token counting failed: {e}")))?;
    let body = serde_json::to_vec(&serde_json::json!({ "input_tokens": n })).unwrap_or_default();
    let note = format!("estimate; local tokenizer {}", encoding.name());
    if let Some((kind, key)) = ctx.cache_key.take() {
        caches.insert(snap, kind, key, "application/json", bytes::Bytes::from(body.clone()));
    }
    respond::json(session, ctx, 200, body, &[("x-modelgate-token-count", note)]).await;
    Ok(())
}

/// Request metrics, from what the stages left in the context.
fn record_metrics(ctx: &RequestCtx) {
    let m = &*telemetry::METRICS;
    m.in_flight.dec();
    let provider = ctx.provider.as_deref().unwrap_or("local");
    let model = ctx.route_label.as_deref().unwrap_or("-");
    let status = if ctx.status == 0 { 499 } else { ctx.status };
    let error = if ctx.client_gone {
        "client_gone"
    } else {
        ctx.error.map_or("none", |e| e.as_str())
    };
    m.requests
        .with_label_values(&[provider, model, telemetry::status_class(status), error])
        .inc();
    let elapsed = ctx.started.elapsed().as_secs_f64();
    m.duration.with_label_values(&[provider]).observe(elapsed);
    if let Some(first) = ctx.first_byte_at {
        m.ttft
            .with_label_values(&[provider])
            .observe(first.duration_since(ctx.started).as_secs_f64());
    }
    if ctx.stream && ctx.provider.is_some() {
        m.stream_duration.with_label_values(&[provider]).observe(elapsed);
    }
    if let Some(u) = ctx.usage {
        for (kind, n) in [
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cache_read", u.cache_read_input_tokens),
            ("cache_write", u.cache_creation_input_tokens),
        ] {
            if n > 0 {
                m.tokens.with_label_values(&[provider, kind]).inc_by(n);
            }
        }
    }
    if let (Some(k), Some(snap)) = (&ctx.principal, &ctx.snapshot) {
        if snap.config.metrics.per_key_labels {
            m.key_requests.with_label_values(&[&k.name]).inc();
        }
    }
}

/// One line per request. Names, never secrets: the key's configured name,
/// not the key.
fn access_log(session: &Session, ctx: &RequestCtx) {
    let req = session.req_header();
    let status = if ctx.status == 0 { 499 } else { ctx.status };
    let elapsed = ctx.started.elapsed();
    let key = ctx.principal.as_ref().map(|k| k.name.as_str()).unwrap_or("-");
    let outcome = if ctx.client_gone {
        "client_gone"
    } else {
        ctx.error.map(|e| e.as_str()).unwrap_or("ok")
    };
    log::info!(
        target: "access",
        "{} {} {} status={} model={} provider={} stream={} duration_ms={:.1} bytes_out={} tokens_in={} tokens_out={} key={} outcome={} upstream_id={}",
        ctx.request_id,
        req.method,
        req.uri.path(),
        status,
        ctx.model.as_deref().unwrap_or("-"),
        ctx.provider.as_deref().unwrap_or("-"),
        ctx.stream,
        elapsed.as_secs_f64() * 1000.0,
        ctx.bytes_out,
        ctx.usage.map_or(0, |u| u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens),
        ctx.usage.map_or(0, |u| u.output_tokens),
        key,
        outcome,
        ctx.upstream_request_id.as_deref().unwrap_or("-"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_by_method_and_path() {
        let post = http::Method::POST;
        let get = http::Method::GET;
        assert!(matches!(
            endpoint(&post, "/v1/messages", Role::Main),
            Endpoint::Messages
        ));
        assert!(matches!(
            endpoint(&post, "/v1/messages/", Role::Main),
            Endpoint::Messages
        ));
        assert!(matches!(
            endpoint(&post, "/v1/messages/count_tokens", Role::Main),
            Endpoint::CountTokens
        ));
        assert!(matches!(
            endpoint(&get, "/v1/messages", Role::Main),
            Endpoint::MethodNotAllowed(_)
        ));
        assert!(matches!(
            endpoint(&get, "/v1/models/claude-x", Role::Main),
            Endpoint::Model("claude-x")
        ));
        assert!(matches!(endpoint(&get, "/v1/files", Role::Main), Endpoint::Passthrough));
        assert!(matches!(
            endpoint(&post, "/v1/messages", Role::Admin),
            Endpoint::NotFound
        ));
        assert!(matches!(endpoint(&get, "/status", Role::Admin), Endpoint::Status));
        assert!(matches!(
            endpoint(&http::Method::HEAD, "/", Role::Main),
            Endpoint::Probe
        ));
    }
}
