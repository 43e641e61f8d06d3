//! Active health checks: a Pingora background service that probes every
//! provider with a `health_check` block and feeds the result into the same
//! per-account circuits the attempt loop reads.
//!
//! `tcp` opens a connection (TLS included for https upstreams) within
//! `connect_timeout`; `http` sends `GET path` with the provider's headers
//! and the account's credential and expects `expect_status` (default 200).
//! A failure opens the circuit at once; a success lets an open circuit
//! probe with real traffic right away. The probe set follows config
//! reloads: each tick reads the current snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Shared;
use crate::config::schema::HealthCheckKind;
use crate::runtime::snapshot::{Account, Provider};
use crate::upstream::Limits;

/// How often the service looks for due probes.
const TICK: Duration = Duration::from_secs(1);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

pub struct ActiveHealth {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ActiveHealth {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_run: HashMap<String, Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            let snap = self.shared.config.snapshot();
            let now = Instant::now();
            for provider in snap.providers.values().filter(|p| p.enabled) {
                let Some(check) = snap
                    .config
                    .providers
                    .get(&provider.name)
                    .and_then(|p| p.health_check.as_ref())
                else {
                    continue;
                };
                let interval = check.interval.map_or(DEFAULT_INTERVAL, |d| d.0);
                if last_run
                    .get(&provider.name)
                    .is_some_and(|t| now.duration_since(*t) < interval)
                {
                    continue;
                }
                last_run.insert(provider.name.clone(), now);
                let limits = Limits {
                    connect: snap.connect_timeout,
                    idle: snap.connect_timeout.max(Duration::from_secs(5)),
                };
                for account in &provider.accounts {
                    let ok = match check.kind {
                        HealthCheckKind::Tcp => self.shared.upstreams.probe_connect(&provider.base, limits).await,
                        HealthCheckKind::Http => {
                            let path = check.path.as_deref().unwrap_or("/");
                            let expect = check.expect_status.unwrap_or(200);
                            self.http_probe(provider, account, path, expect, limits).await
                        }
                    };
                    if let Err(why) = &ok {
                        log::warn!("health check of `{}` failed: {why}", account.label);
                    }
                    // A connection check answers for every account of the
                    // host; an HTTP check (with credentials) for its own.
                    let covered: &[Account] = if check.kind == HealthCheckKind::Tcp {
                        &provider.accounts
                    } else {
                        std::slice::from_ref(account)
                    };
                    for a in covered {
                        let c = self.shared.health.circuit(&provider.name, &a.label);
                        match ok {
                            Ok(()) => c.reachable(Instant::now()),
                            Err(_) => c.trip(Instant::now()),
                        }
                    }
                    if check.kind == HealthCheckKind::Tcp {
                        break;
                    }
                }
            }
        }
    }
}

impl ActiveHealth {
    async fn http_probe(
        &self,
        provider: &Provider,
        account: &Account,
        path: &str,
        expect: u16,
        limits: Limits,
    ) -> Result<(), String> {
        let mut head = RequestHeader::build(http::Method::GET, provider.base.join(path).as_bytes(), Some(6))
            .map_err(|e| e.to_string())?;
        let _ = head.insert_header(http::header::HOST, &provider.base.authority);
        let _ = head.insert_header(
            http::header::USER_AGENT,
            concat!("modelgate-health/", env!("CARGO_PKG_VERSION")),
        );
        let bearer = match &account.bearer {
            Some(source) => Some(source.token().await.map_err(|e| e.to_string())?),
            None => None,
        };
        provider
            .adapter
            .probe_auth(&mut head, account.credential.as_ref(), bearer.as_deref());
        for (n, v) in &provider.headers {
            let _ = head.insert_header(n.clone(), v.clone());
        }
        let mut exchange = self
            .shared
            .upstreams
            .send(&provider.base, head, bytes::Bytes::new(), limits)
            .await
            .map_err(|e| e.to_string())?;
        let status = exchange.header().status.as_u16();
        // Drain (bounded) so the connection can be pooled.
        let mut budget = 64;
        while budget > 0 {
            match exchange.next_chunk().await {
                Ok(Some(_)) => budget -= 1,
                _ => break,
            }
        }
        exchange.finish().await;
        if status == expect {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}, expected {expect}"))
        }
    }
}
