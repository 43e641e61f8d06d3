//! The request path: Pingora's `ProxyHttp` implementation, and the stages
//! it runs in order.
//!
//! ```text
//! request_filter
//!   → dispatch on method + path     (endpoint; local endpoints answer here, admin ones in admin.rs)
//!   → /v1/messages, count_tokens    (messages.rs: auth → read → route → policy → cache → attempt → relay)
//!       auth      auth.rs           gateway key → principal, or passthrough-auth
//!       read      body.rs           the whole body, capped, once; parsed by dialects::anthropic
//!       route     runtime           snapshot rules → ordered candidate plan
//!       policy    meter.rs          rate limits and budgets
//!       cache     cache.rs          exact-match answers
//!       attempt   attempt.rs        each candidate's request from its provider adapter; failover
//!                                   judged once (failure.rs)
//!       relay     relay.rs          the committed answer, as its provider says it reaches the client
//! logging                           meter (settle, price, record), metrics and one access-log line
//! ```
//!
//! Every request is answered from `request_filter` (Pingora's "pattern C";
//! `docs/architecture.md`): routing needs the body's `model`, and Pingora's
//! own retry buffer would silently truncate Claude Code's 100 KB bodies. So
//! `upstream_peer` is never reached; Pingora still owns the listeners, the
//! connection pools and graceful upgrade. Around each connection,
//! `connection.rs` keeps the request-head deadline and the drain; around
//! each request, `guard.rs` turns a panic into that request's 500.
//!
//! Nothing here names a provider type or a dialect: that is
//! `crate::providers`, behind the `Adapter` and `Call` traits.

pub mod access;
pub mod admin;
pub mod attempt;
pub mod auth;
pub mod body;
pub mod cache;
pub mod connection;
pub mod ctx;
pub mod dashboard;
pub mod failure;
pub mod guard;
pub mod health_check;
pub mod inbound;
pub mod live;
pub mod local;
pub mod messages;
pub mod meter;
pub mod otlp;
pub mod relay;
pub mod respond;
pub mod signin;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::error::GatewayError;
use crate::runtime::{ConfigStore, Snapshot};
use crate::telemetry;
use crate::upstream::Upstreams;
use admin::Admin;
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
    pub sinks: std::sync::OnceLock<crate::store::Sinks>,
    /// Exact-match response and token-count caches.
    pub caches: cache::Caches,
    /// The last failures, for `/admin/errors` (`modelgate health errors`).
    pub recent_errors: local::RecentErrors,
    /// The last ledger row the embedded budgets were seeded from at start.
    pub ledger_seeded_through: std::sync::OnceLock<i64>,
    /// Listening services whose drain has not finished closing their
    /// kept-alive connections (`connection::Connections::cleanup`).
    pub services_draining: std::sync::atomic::AtomicUsize,
    /// Sign-in (`signin:`): its store, identity provider and revoked sessions.
    pub signin: signin::SigninState,
    /// Where clients' own telemetry goes (`telemetry.otlp`).
    pub otlp: otlp::Forwarder,
    /// The gateway's own traces and metrics (`telemetry.otlp`), once started.
    pub otel: std::sync::OnceLock<crate::otel::Otel>,
    /// Finished requests for `/admin/live`.
    pub live: live::Live,
}

pub struct Gateway {
    pub shared: Arc<Shared>,
    pub role: Role,
}

/// The endpoints, decided once from method and path.
enum Endpoint<'a> {
    Health,
    Probe,
    Admin(Admin),
    /// `/dashboard`, `/dashboard/me` and their assets.
    Page(dashboard::Page),
    Models,
    Model(&'a str),
    Usage,
    Signin(signin::Route),
    /// `POST /v1/{metrics,logs,traces}`: a client's own OpenTelemetry export.
    Telemetry(crate::signin::otlp::Signal),
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
            M::GET => Endpoint::Admin(Admin::Status),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/admin/logging") => match *method {
            M::GET | M::PUT => Endpoint::Admin(Admin::Logging),
            _ => Endpoint::MethodNotAllowed("GET, PUT"),
        },
        (_, "/admin/logging/test") => match *method {
            M::POST => Endpoint::Admin(Admin::LoggingTest),
            _ => Endpoint::MethodNotAllowed("POST"),
        },
        (_, "/admin/circuits/reset") => match *method {
            M::POST => Endpoint::Admin(Admin::CircuitReset),
            _ => Endpoint::MethodNotAllowed("POST"),
        },
        (_, "/admin/cache") => match *method {
            M::GET | M::DELETE => Endpoint::Admin(Admin::Cache),
            _ => Endpoint::MethodNotAllowed("GET, DELETE"),
        },
        (_, "/admin/cache/warmup") => match *method {
            M::POST => Endpoint::Admin(Admin::CacheWarmup),
            _ => Endpoint::MethodNotAllowed("POST"),
        },
        (_, "/admin/usage") => match *method {
            M::GET => Endpoint::Admin(Admin::Usage),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/admin/reliability") => match *method {
            M::GET => Endpoint::Admin(Admin::Reliability),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/admin/routes") => match *method {
            M::GET => Endpoint::Admin(Admin::Routes),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/admin/budgets") => match *method {
            M::GET => Endpoint::Admin(Admin::Budgets),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/admin/live") => match *method {
            M::GET => Endpoint::Admin(Admin::Live),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/admin/errors") => match *method {
            M::GET => Endpoint::Admin(Admin::Errors),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, "/metrics") => match *method {
            M::GET => Endpoint::Admin(Admin::Metrics),
            _ => Endpoint::MethodNotAllowed("GET"),
        },
        (_, p) if p.starts_with("/dashboard") => match dashboard::route(role, p) {
            Some(page) if *method == M::GET => Endpoint::Page(page),
            Some(_) => Endpoint::MethodNotAllowed("GET"),
            None => Endpoint::NotFound,
        },
        (Role::Admin, _) => Endpoint::NotFound,
        (Role::Main, p) if signin::route(method, p).is_some() => match signin::route(method, p) {
            Some(Ok(r)) => Endpoint::Signin(r),
            Some(Err(allow)) => Endpoint::MethodNotAllowed(allow),
            None => Endpoint::NotFound,
        },
        (Role::Main, p @ ("/v1/metrics" | "/v1/logs" | "/v1/traces")) => match *method {
            M::POST => Endpoint::Telemetry(match p {
                "/v1/metrics" => crate::signin::otlp::Signal::Metrics,
                "/v1/logs" => crate::signin::otlp::Signal::Logs,
                _ => crate::signin::otlp::Signal::Traces,
            }),
            _ => Endpoint::MethodNotAllowed("POST"),
        },
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
        access::record_metrics(ctx);
        access::access_log(session, ctx);
        if let Some(otel) = self.shared.otel.get() {
            access::export(otel, session, ctx);
        }
        self.shared.live.publish(session, ctx);
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
        if self.role == Role::Main {
            if let Some(listed) = inbound::inference_profiles(session, snap) {
                return match listed {
                    Some(body) => {
                        respond::json(session, ctx, 200, body, &[]).await;
                        Ok(())
                    }
                    None => Err(GatewayError::NotFound("no such inference profile".into())),
                };
            }
            inbound::recognize(session, ctx, snap);
        }
        let req = session.req_header();
        let path = req.uri.path().to_string();
        match endpoint(&req.method, &path, self.role) {
            // Draining: tell load balancers to stop sending new work here.
            Endpoint::Health if self.shared.draining.load(Relaxed) => {
                respond::json(session, ctx, 503, br#"{"status":"draining"}"#.to_vec(), &[]).await
            }
            Endpoint::Health => respond::json(session, ctx, 200, local::health(), &[]).await,
            Endpoint::Probe => respond::json(session, ctx, 200, Vec::new(), &[]).await,
            Endpoint::Admin(which) => admin::serve(&self.shared, self.role, which, session, ctx, snap).await?,
            Endpoint::Page(page) => dashboard::serve(self.role, page, session, ctx, snap).await?,
            Endpoint::Models => {
                let caller = self.caller(session, ctx, snap).await?;
                let allowed = |id: &str| match &caller {
                    auth::Caller::Key(k) => k.allows_model(id),
                    auth::Caller::Passthrough => true,
                };
                let body = local::list_models(snap, session.req_header().uri.query(), &allowed)?;
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::Model(id) => {
                self.caller(session, ctx, snap).await?;
                let body = local::get_model(snap, id)?;
                respond::json(session, ctx, 200, body, &[]).await;
            }
            Endpoint::Usage => {
                let auth::Caller::Key(key) = self.caller(session, ctx, snap).await? else {
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
            Endpoint::Signin(route) => {
                // Managed settings are per caller; the other endpoints are
                // how a caller gets a credential in the first place.
                let principal = if route.needs_caller() && snap.signin.is_some() {
                    let caller = self.caller(session, ctx, snap).await?;
                    match caller {
                        auth::Caller::Key(k) => Some((k, ctx.signed_in.clone())),
                        auth::Caller::Passthrough => None,
                    }
                } else {
                    None
                };
                signin::serve(&self.shared, route, session, ctx, snap, principal).await?
            }
            Endpoint::Telemetry(signal) => {
                self.caller(session, ctx, snap).await?;
                otlp::serve(&self.shared.otlp, session, ctx, snap, signal).await?
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

    /// Stage: auth. A signed-in developer's token (`signin:`), else a
    /// gateway key, else passthrough-auth. A developer new to this process
    /// has their budgets' spend read from the ledger first (embedded state).
    async fn caller(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
    ) -> Result<auth::Caller, GatewayError> {
        let headers = &session.req_header().headers;
        if let Some(user) = auth::signed_in(snap, &self.shared.signin, headers) {
            let user = user?;
            if user.fresh {
                let scopes = user.principal.scopes().into_iter().cloned().collect();
                meter::seed_new_scopes(&self.shared, snap, scopes).await;
            }
            ctx.principal = Some(user.principal.clone());
            ctx.signed_in = Some(user.claims);
            // The provider account's own limits never reach a developer as
            // if they were theirs; admission adds their caps' standing.
            ctx.unified = Some(Vec::new());
            return Ok(auth::Caller::Key(user.principal));
        }
        let caller = auth::authenticate(snap, &self.shared.config.store_keys, headers)?;
        if let auth::Caller::Key(k) = &caller {
            ctx.principal = Some(k.clone());
        }
        Ok(caller)
    }
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
        assert!(matches!(
            endpoint(&get, "/status", Role::Admin),
            Endpoint::Admin(Admin::Status)
        ));
        assert!(matches!(
            endpoint(&http::Method::HEAD, "/", Role::Main),
            Endpoint::Probe
        ));
    }
}
