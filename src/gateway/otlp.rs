//! `POST /v1/{metrics,logs,traces}`: Claude Code's own OpenTelemetry
//! export, which a client connected to a gateway sends to the gateway.
//!
//! Always answered `200` (the protocol: a refusal makes the client's
//! exporter complain on every flush). With `telemetry.otlp` configured,
//! the export is stamped with the caller's verified identity
//! (`crate::signin::otlp`) and forwarded to the collector in the
//! background, at most [`IN_FLIGHT`] at a time (beyond that, dropped and
//! counted); without it, dropped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::{body, respond};
use crate::error::GatewayError;
use crate::runtime::Snapshot;
use crate::signin::otlp::{self, Encoding, Signal, Stamp};

/// Exports being forwarded at once, at most.
const IN_FLIGHT: usize = 64;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The collector client and its bound on concurrent forwards.
pub struct Forwarder {
    client: OnceLock<reqwest::Client>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder {
            client: OnceLock::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        }
    }
}

impl Forwarder {
    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FORWARD_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        })
    }
}

/// Answer one export (the caller is authenticated already: `ctx.principal`).
pub async fn serve(
    forwarder: &Forwarder,
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
    signal: Signal,
) -> Result<(), GatewayError> {
    let content_type = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf")
        .to_string();
    let encoding = Encoding::of(&content_type);
    let body = body::read(session, snap.max_request_size, snap.config.client_timeouts.body.0).await?;
    let who = match (&ctx.signed_in, &ctx.principal) {
        (Some(c), p) => Some(Stamp {
            user_id: c.sub.clone(),
            email: c.email.clone(),
            groups: c.groups.clone(),
            team: p.as_ref().and_then(|p| p.team.clone()),
            source: "gateway-oidc",
        }),
        (None, Some(k)) => Some(Stamp {
            user_id: format!("key:{}", k.name),
            email: None,
            groups: Vec::new(),
            team: k.team.clone(),
            source: "gateway-key",
        }),
        (None, None) => None,
    };
    let collector = snap
        .config
        .telemetry
        .otlp
        .as_ref()
        .filter(|c| c.protocol == crate::config::schema::OtlpProtocol::HttpProtobuf);
    if let (Some(collector), Some(encoding), Some(who)) = (collector, encoding, who) {
        match otlp::stamp(signal, encoding, &body, &who) {
            Ok(stamped) => forward(forwarder, collector, signal, &content_type, stamped),
            Err(e) => {
                crate::telemetry::METRICS
                    .otlp_forwards
                    .with_label_values(&[signal.path(), "unreadable"])
                    .inc();
                log::debug!("{}: client telemetry not forwarded: {e}", ctx.request_id);
            }
        }
    }
    let (ct, answer): (&str, &[u8]) = match encoding {
        Some(Encoding::Json) => ("application/json", b"{}"),
        _ => ("application/x-protobuf", b""),
    };
    respond::complete(session, ctx, 200, ct, bytes::Bytes::from_static(answer), &[]).await;
    Ok(())
}

fn forward(
    forwarder: &Forwarder,
    collector: &crate::config::schema::OtlpConfig,
    signal: Signal,
    content_type: &str,
    body: Vec<u8>,
) {
    let count = move |outcome: &str| {
        crate::telemetry::METRICS
            .otlp_forwards
            .with_label_values(&[signal.path(), outcome])
            .inc()
    };
    let Ok(slot) = Arc::clone(&forwarder.slots).try_acquire_owned() else {
        count("dropped");
        return;
    };
    let url = format!("{}/v1/{}", collector.endpoint.trim_end_matches('/'), signal.path());
    let mut request = forwarder
        .client()
        .post(url)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body);
    for (k, v) in &collector.headers {
        request = request.header(k, v);
    }
    tokio::spawn(async move {
        let _slot = slot;
        match request.send().await {
            Ok(r) if r.status().is_success() => count("forwarded"),
            Ok(r) => {
                count("refused");
                log::debug!(
                    "telemetry collector answered {} to a {} export",
                    r.status(),
                    signal.path()
                );
            }
            Err(e) => {
                count("failed");
                log::debug!("telemetry collector: {e}");
            }
        }
    });
}
