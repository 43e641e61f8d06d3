//! Every Prometheus metric the gateway exports, defined in one place.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds`
//! histograms) and pass `promtool check metrics`. Label values are bounded
//! by the config: providers, account labels, route rules and configured
//! model ids — never a request's free-form model string, a session or a key
//! (unless `metrics.per_key_labels`). Recording is lock-free atomics on
//! pre-registered series; scraping renders the text format.

use std::sync::LazyLock;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// LLM latencies span milliseconds (cached, local) to many minutes (long generations).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub attempts: IntCounterVec,
    pub tokens: IntCounterVec,
    pub key_requests: IntCounterVec,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub stream_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub streams_in_flight: IntGauge,
    pub circuit_state: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub cost: CounterVec,
    pub refusals: IntCounterVec,
    pub state_errors: IntCounterVec,
    pub budget_remaining: GaugeVec,
    pub ledger_dropped: IntCounter,
    pub audit_dropped: IntCounter,
    pub unpriced: IntCounter,
    pub panics: IntCounter,
    pub client_timeouts: IntCounterVec,
    pub cache: IntCounterVec,
    pub otlp_forwards: IntCounterVec,
    pub otlp_exports: IntCounterVec,
    pub otlp_spans_dropped: IntCounter,
}

/// Register a freshly built metric and hand back a handle to it.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    built: prometheus::Result<M>,
) -> M {
    let m = built.unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    m
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, name, IntCounterVec::new(Opts::new(name, help), labels))
}

fn float_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    registered(registry, name, CounterVec::new(Opts::new(name, help), labels))
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, name, IntCounter::new(name, help))
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    registered(registry, name, HistogramVec::new(opts, labels))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, name, IntGauge::new(name, help))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, name, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    registered(registry, name, GaugeVec::new(Opts::new(name, help), labels))
}

/// The process's metrics. The definitions are static and valid, so a
/// failure to register is a programming error caught by the first test.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let m = Metrics {
        requests: counter(
            &r,
            "modelgate_requests_total",
            "Requests answered, by provider, route model, status class and error type.",
            &["provider", "model", "status_class", "error_type"],
        ),
        attempts: counter(
            &r,
            "modelgate_upstream_attempts_total",
            "Upstream attempts by provider and outcome (ok, connect_error, timeout, status_429, status_5xx, broken, circuit_open, final_4xx).",
            &["provider", "outcome"],
        ),
        tokens: counter(
            &r,
            "modelgate_tokens_total",
            "Tokens by provider and kind (input, output, cache_read, cache_write), where the gateway read usage.",
            &["provider", "kind"],
        ),
        key_requests: counter(
            &r,
            "modelgate_key_requests_total",
            "Requests per gateway key (only with metrics.per_key_labels).",
            &["key"],
        ),
        duration: histogram(
            &r,
            "modelgate_request_duration_seconds",
            "Time from request to the end of the response.",
            &["provider"],
        ),
        ttft: histogram(
            &r,
            "modelgate_time_to_first_token_seconds",
            "Time from request to the first response body byte sent to the client.",
            &["provider"],
        ),
        stream_duration: histogram(
            &r,
            "modelgate_stream_duration_seconds",
            "Duration of streamed (SSE) responses.",
            &["provider"],
        ),
        in_flight: gauge(&r, "modelgate_requests_in_flight", "Requests being served."),
        streams_in_flight: gauge(&r, "modelgate_streams_in_flight", "Streamed responses being relayed."),
        circuit_state: gauge_vec(
            &r,
            "modelgate_circuit_state",
            "Circuit breaker per provider account: 0 closed, 1 open, 2 half-open, 3 cooling down after a 429.",
            &["provider", "account"],
        ),
        reloads: counter(
            &r,
            "modelgate_config_reloads_total",
            "Config reloads by result (applied, unchanged, rejected).",
            &["result"],
        ),
        build_info: gauge_vec(&r, "modelgate_build_info", "Build information; always 1.", &["version"]),
        cost: float_counter(
            &r,
            "modelgate_cost_usd_total",
            "Spend in USD from the price table, by provider.",
            &["provider"],
        ),
        refusals: counter(
            &r,
            "modelgate_policy_refusals_total",
            "Requests refused by the gateway's policy, by reason (rate_limit, budget, state_unavailable).",
            &["reason"],
        ),
        state_errors: counter(
            &r,
            "modelgate_state_errors_total",
            "Failed operations on the shared state backend, by backend and operation (admit, settle, read).",
            &["backend", "op"],
        ),
        budget_remaining: float_gauge_vec(
            &r,
            "modelgate_budget_remaining_usd",
            "USD left in each team's current budget period (as of the last scrape).",
            &["team"],
        ),
        ledger_dropped: plain_counter(
            &r,
            "modelgate_ledger_dropped_total",
            "Usage records the ledger could not take (queue full or write failure).",
        ),
        audit_dropped: plain_counter(
            &r,
            "modelgate_audit_dropped_total",
            "Audit records that could not be written (queue full or I/O failure).",
        ),
        cache: counter(
            &r,
            "modelgate_cache_requests_total",
            "Cache lookups by cache (response, token_count) and result (hit, miss).",
            &["cache", "result"],
        ),
        unpriced: plain_counter(
            &r,
            "modelgate_unpriced_requests_total",
            "Requests whose model has no entry in the price table (counted at zero cost).",
        ),
        client_timeouts: counter(
            &r,
            "modelgate_client_timeouts_total",
            "Client connections cut off by client_timeouts, by phase (head, body, write).",
            &["phase"],
        ),
        otlp_forwards: counter(
            &r,
            "modelgate_client_telemetry_total",
            "Claude Code telemetry exports posted to /v1/{metrics,logs,traces}, by signal and outcome (forwarded, refused, failed, dropped, unreadable).",
            &["signal", "outcome"],
        ),
        otlp_exports: counter(
            &r,
            "modelgate_otlp_exports_total",
            "The gateway's own OTLP export batches, by signal (traces, metrics) and outcome (ok, failed).",
            &["signal", "outcome"],
        ),
        otlp_spans_dropped: plain_counter(
            &r,
            "modelgate_otlp_spans_dropped_total",
            "Requests whose spans were dropped because the OTLP export queue was full (8,192 requests wait at most).",
        ),
        panics: plain_counter(
            &r,
            "modelgate_request_panics_total",
            "Requests whose handling panicked (a bug): each was answered 500 api_error, or closed if its answer had begun.",
        ),
        registry: r,
    };
    m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    m
});

/// `2xx`, `4xx`, …
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Render the registry in the Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out) {
        log::error!("cannot render metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn definitions_register_and_render() {
        super::METRICS
            .requests
            .with_label_values(&["p", "m", "2xx", "none"])
            .inc();
        let text = String::from_utf8(super::render()).unwrap();
        assert!(text.contains(
            "modelgate_requests_total{error_type=\"none\",model=\"m\",provider=\"p\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains("modelgate_build_info{version="));
    }
}
