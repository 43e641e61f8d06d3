//! Hot reload: rebuild the snapshot from the file and swap it in, or keep
//! the running one and say why not.
//!
//! Triggers (SIGHUP, a debounced file watch) live with the server; this is
//! the one routine they call. The new config is parsed, validated and
//! compiled completely off the request path before one atomic pointer swap;
//! requests already running keep the snapshot they started with, retries
//! included. Routes, providers, keys, limits, budgets, pricing and the log
//! level reload; listeners, thread counts, the upgrade/pid paths, the grace
//! period and the log format are bound to the process — a change there is reported as "restart required" and applied
//! by a graceful upgrade (`serve -u`).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{ConfigStore, Fixed, Snapshot};
use crate::config::load;

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub succeeded: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub last_attempt: Option<SystemTime>,
    /// Settings that differ from the running process's and need a restart.
    pub restart_required: Vec<String>,
}

#[derive(Debug)]
pub enum Outcome {
    Applied {
        version: String,
        took: std::time::Duration,
    },
    /// The file produced the same config as the running one.
    Unchanged,
    Rejected(String),
}

impl ConfigStore {
    /// Re-read the file and swap the snapshot if it is valid and different.
    pub fn reload(&self) -> Outcome {
        let started = Instant::now();
        let built = load::load_file(&self.path).and_then(|mut c| {
            (self.overrides)(&mut c);
            Snapshot::build(c, &|name| std::env::var(name).ok())
        });
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt = Some(SystemTime::now());
        match built {
            Err(e) => {
                let msg = format!("{}: {e}", self.path.display());
                log::error!(
                    "config reload rejected, still serving version {}: {msg}",
                    self.snapshot().version
                );
                status.failed += 1;
                status.last_error = Some(msg.clone());
                crate::telemetry::METRICS.reloads.with_label_values(&["rejected"]).inc();
                Outcome::Rejected(msg)
            }
            Ok(mut new) => {
                status.last_error = None;
                if new.version == self.snapshot().version {
                    crate::telemetry::METRICS
                        .reloads
                        .with_label_values(&["unchanged"])
                        .inc();
                    return Outcome::Unchanged;
                }
                status.restart_required = restart_required(&self.boot, &Fixed::of(&new));
                for w in &new.warnings {
                    log::warn!("config: {w}");
                }
                if !status.restart_required.is_empty() {
                    log::warn!(
                        "config changes {} only take effect after a restart or graceful upgrade (serve -u)",
                        status.restart_required.join(", ")
                    );
                }
                let version = new.version.clone();
                if std::env::var_os("RUST_LOG").is_none() {
                    crate::logging::set_level(new.config.log_level.as_filter());
                }
                crate::logging::set_format(new.config.log_format);
                // Store keys and teams follow the new teams and keys from
                // the snapshot's first request on.
                self.store_keys.recompile(&new);
                new.adopt_route_stats(&self.snapshot());
                self.current.store(Arc::new(new));
                status.succeeded += 1;
                crate::telemetry::METRICS.reloads.with_label_values(&["applied"]).inc();
                let took = started.elapsed();
                log::info!("config reloaded: version {version} in {took:?}");
                Outcome::Applied { version, took }
            }
        }
    }
}

fn restart_required(boot: &Fixed, new: &Fixed) -> Vec<String> {
    let mut out = Vec::new();
    if boot.listen != new.listen {
        out.push("listen".to_string());
    }
    if boot.admin_listen != new.admin_listen {
        out.push("admin_listen".to_string());
    }
    if boot.threads != new.threads {
        out.push("threads".to_string());
    }
    if boot.upgrade_sock != new.upgrade_sock {
        out.push("upgrade_sock".to_string());
    }
    if boot.pid_file != new.pid_file {
        out.push("pid_file".to_string());
    }
    if boot.grace_period != new.grace_period {
        out.push("grace_period".to_string());
    }
    if boot.log_file != new.log_file {
        out.push("log_file".to_string());
    }
    if boot.pool_size != new.pool_size {
        out.push("pool_size".to_string());
    }
    if boot.state != new.state {
        out.push("state".to_string());
    }
    if boot.audit_path != new.audit_path {
        out.push("audit.path/max_bytes/keep".to_string());
    }
    if boot.otlp != new.otlp {
        // Clients' forwarded telemetry follows the new settings at once.
        out.push("telemetry.otlp (the gateway's own traces and metrics)".to_string());
    }
    out
}
