//! The logging phase's own output: the request's metrics and its one
//! access-log line, from what the stages left in the context. Names, never
//! secrets.

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::telemetry;

/// Request metrics, from what the stages left in the context.
pub fn record_metrics(ctx: &RequestCtx) {
    let m = &*telemetry::METRICS;
    m.in_flight.dec();
    let provider = ctx.provider.as_deref().unwrap_or("local");
    let model = ctx.route_label.as_deref().unwrap_or("-");
    let status = ctx.reported_status();
    let error = ctx.failure().unwrap_or("none");
    m.requests
        .with_label_values(&[provider, model, telemetry::status_class(status), error])
        .inc();
    if let Some(rule) = &ctx.rule {
        rule.record(status >= 400, ctx.started.elapsed());
    }
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
pub fn access_log(session: &Session, ctx: &RequestCtx) {
    let req = session.req_header();
    let status = ctx.reported_status();
    let elapsed = ctx.started.elapsed();
    let key = ctx.principal.as_ref().map(|k| k.name.as_str()).unwrap_or("-");
    let outcome = ctx.failure().unwrap_or("ok");
    log::info!(
        target: "access",
        "{} {} {} status={} model={} provider={} stream={} duration_ms={:.1} bytes_out={} tokens_in={} tokens_out={} key={} outcome={} upstream_id={}{}",
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
        ctx.inbound_format.map(|f| format!(" inbound={}", f.name())).unwrap_or_default(),
    );
}

/// The request to the gateway's own OTLP export (`telemetry.otlp`): its
/// spans and measurements, for model requests. Names, never secrets.
pub fn export(otel: &crate::otel::Otel, session: &Session, ctx: &mut RequestCtx) {
    let Some(model) = ctx.model.as_deref() else { return };
    if ctx.trace.is_none() && otel.traces() {
        let traceparent = session.req_header().headers.get("traceparent").map(|v| v.as_bytes());
        ctx.trace = Some(std::sync::Arc::new(otel.begin(traceparent)));
    }
    let req = session.req_header();
    let end = std::time::SystemTime::now();
    let elapsed = ctx.started.elapsed();
    let cache_hit = ctx.cache_hit();
    let system = ctx
        .provider
        .as_deref()
        .filter(|_| !cache_hit)
        .and_then(|p| ctx.snapshot.as_ref()?.providers.get(p))
        .map(|p| p.kind.gen_ai_system);
    let error = ctx.failure();
    otel.record(&crate::otel::Finished {
        trace: ctx.trace.as_deref(),
        start: end.checked_sub(elapsed).unwrap_or(end),
        end,
        ttft: ctx.first_byte_at.map(|t| t.duration_since(ctx.started)),
        request_id: &ctx.request_id,
        method: req.method.as_str(),
        path: req.uri.path(),
        status: ctx.reported_status(),
        system,
        provider: ctx.provider.as_deref(),
        account: ctx.account.as_deref(),
        request_model: Some(model),
        response_model: ctx.upstream_model.as_deref(),
        key: ctx.principal.as_ref().map(|k| k.name.as_str()),
        team: ctx.principal.as_ref().and_then(|k| k.team.as_deref()),
        attempts: ctx.attempts,
        cache_hit,
        stream: ctx.stream,
        error,
        usage: ctx.usage,
        cost_usd: ctx.sealed.as_ref().map(|r| r.cost_usd),
    });
}
