//! Stage: meter. What a request cost and who it is charged to.
//!
//! `pricing` turns token counts into USD from the price table; a
//! [`Record`] is what one request cost and who it is charged to, which the
//! ledger (`crate::store`) keeps and `audit` writes, with client details,
//! as a JSON line. Both sinks take records through bounded channels: a
//! request never waits on disk, and a full channel is counted and logged.

pub mod audit;
pub mod pricing;

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
