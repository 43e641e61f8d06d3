//! Stage: meter. What a request cost and who it is charged to.
//!
//! `pricing` turns token counts into USD from the price table; `ledger`
//! keeps one [`Record`] per request in SQLite, written in batches off the
//! request path; `audit` writes the same record, plus client details, as a
//! JSON line. Both sinks take records through bounded channels: a request
//! never waits on disk, and a full channel is counted and logged.

pub mod audit;
pub mod ledger;
pub mod pricing;

use std::path::Path;
use std::time::Duration;

use crate::config::schema::{AuditConfig, StateConfig};
use audit::AuditLog;
use ledger::Ledger;

/// Where finished requests go: the ledger always, the audit log when
/// `audit.path` is set. Opened once the server runs (after a daemon fork:
/// their writer threads must live in the serving process).
pub struct Sinks {
    pub ledger: Ledger,
    pub audit: Option<AuditLog>,
}

impl Sinks {
    pub fn open(state: &StateConfig, audit: &AuditConfig) -> Result<Sinks, String> {
        let ledger =
            Ledger::open(Path::new(&state.path), state.ledger_queue.max(1)).map_err(|e| format!("state.path: {e}"))?;
        let audit = match audit.path {
            Some(_) => Some(AuditLog::open(audit, state.ledger_queue.max(1)).map_err(|e| format!("audit.path: {e}"))?),
            None => None,
        };
        Ok(Sinks { ledger, audit })
    }

    /// Flush and stop both writers (graceful shutdown), bounded in time.
    pub fn close(&self, timeout: Duration) {
        if let Err(e) = self.ledger.close(timeout) {
            log::error!("usage ledger: {e}");
        }
        if let Some(a) = &self.audit {
            a.close(timeout);
        }
    }
}

/// One request, as the ledger and the audit log keep it. Names, never
/// secrets: `key` is the gateway key's configured name.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Unix time in milliseconds when the request arrived.
    pub ts_ms: i64,
    pub request_id: String,
    pub key: Option<String>,
    pub team: Option<String>,
    /// `x-claude-code-session-id`.
    pub session_id: Option<String>,
    /// `x-claude-code-agent-id` (subagents).
    pub agent_id: Option<String>,
    /// The model the client asked for.
    pub model: String,
    pub provider: Option<String>,
    /// The model id sent upstream (after route renames).
    pub upstream_model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// USD, from the price table.
    pub cost_usd: f64,
    pub latency_ms: u64,
    /// Time to the first response byte, when there was one.
    pub ttft_ms: Option<u64>,
    pub status: u16,
    /// Upstream attempts (0: answered by the gateway itself).
    pub attempts: u32,
    pub stream: bool,
    /// The gateway's error type (`rate_limit_error`, `billing_error`, …) when it failed.
    pub error: Option<String>,
}
