//! The config file's shape, exactly as `spec/config.md` writes it.
//!
//! These are plain serde types with `deny_unknown_fields`, so a typo is an
//! error that names the key. Nothing here resolves env vars, reads files or
//! compiles globs: that is `load` (raw text → `Config`) and `snapshot`
//! (`Config` → the runtime form a request holds).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A humantime duration (`300ms`, `5s`, `15m`); a bare number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `300ms`, `5s`, `15m`, or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|_| E::custom("a duration must be a finite, non-negative number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                let v = v.trim();
                if let Ok(secs) = v.parse::<u64>() {
                    return Ok(Dur(Duration::from_secs(secs)));
                }
                humantime::parse_duration(v)
                    .map(Dur)
                    .map_err(|e| E::custom(format!("invalid duration `{v}`: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_provider: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_retry_delay")]
    pub retry_delay: Dur,
    #[serde(default = "default_max_request_size")]
    pub max_request_size: u64,
    /// Silence after which a translated stream gets an `event: ping`.
    #[serde(default = "default_ping_interval")]
    pub ping_interval: Dur,
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_grace_period")]
    pub grace_period: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_sock: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(default)]
    pub passthrough_mode: bool,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<KeyConfig>>,
    #[serde(default)]
    pub teams: BTreeMap<String, TeamConfig>,
    #[serde(default)]
    pub admin_keys_sha256: Vec<String>,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_max_retries() -> u32 {
    2
}
fn default_retry_delay() -> Dur {
    Dur(Duration::from_millis(500))
}
pub const DEFAULT_MAX_REQUEST_SIZE: u64 = 32 * 1024 * 1024;
fn default_max_request_size() -> u64 {
    DEFAULT_MAX_REQUEST_SIZE
}
fn default_ping_interval() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_grace_period() -> Dur {
    Dur(Duration::from_secs(900))
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Standard,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default)]
    pub per_key_labels: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env_var: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<ProviderKeyConfig>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    #[default]
    Tcp,
    Http,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub model_glob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<FallbackConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

/// A fallback is either a bare provider name or `{provider, model}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FallbackConfig {
    Provider(String),
    Detailed(FallbackDetail),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackDetail {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl FallbackConfig {
    pub fn provider(&self) -> &str {
        match self {
            FallbackConfig::Provider(p) => p,
            FallbackConfig::Detailed(d) => &d.provider,
        }
    }
    pub fn model(&self) -> Option<&str> {
        match self {
            FallbackConfig::Provider(_) => None,
            FallbackConfig::Detailed(d) => d.model.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub usd: f64,
    #[serde(default)]
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Weekly,
    #[default]
    Monthly,
    Total,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default)]
    pub backend: StateBackend,
    #[serde(default = "default_state_path")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this gateway writes (several gateway
    /// fleets can share one Redis).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// What a request meets while Redis is unreachable.
    #[serde(default)]
    pub on_redis_error: RedisFailurePolicy,
    /// Capacity of the queue between requests and the ledger writer.
    #[serde(default = "default_ledger_queue")]
    pub ledger_queue: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Embedded,
            path: default_state_path(),
            redis_url: None,
            redis_prefix: default_redis_prefix(),
            on_redis_error: RedisFailurePolicy::default(),
            ledger_queue: default_ledger_queue(),
        }
    }
}

fn default_redis_prefix() -> String {
    "modelgate".into()
}

fn default_ledger_queue() -> usize {
    65_536
}

/// `fail_open` admits the request unchecked; `fail_closed` refuses it
/// (503). Budgets fail closed by default (money), rate limits open
/// (availability).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFailurePolicy {
    #[serde(default = "FailMode::open")]
    pub rate_limits: FailMode,
    #[serde(default = "FailMode::closed")]
    pub budgets: FailMode,
}

impl Default for RedisFailurePolicy {
    fn default() -> Self {
        RedisFailurePolicy {
            rate_limits: FailMode::FailOpen,
            budgets: FailMode::FailClosed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    FailOpen,
    FailClosed,
}

impl FailMode {
    fn open() -> Self {
        FailMode::FailOpen
    }
    fn closed() -> Self {
        FailMode::FailClosed
    }
}

fn default_state_path() -> String {
    "./modelgate.db".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub response: ResponseCacheConfig,
    #[serde(default)]
    pub token_count: TokenCountCacheConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCacheConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_response_ttl")]
    pub ttl: Dur,
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        ResponseCacheConfig {
            enabled: false,
            ttl: default_response_ttl(),
            max_entries: default_max_entries(),
        }
    }
}

fn default_response_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_max_entries() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCountCacheConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_token_ttl")]
    pub ttl: Dur,
}

impl Default for TokenCountCacheConfig {
    fn default() -> Self {
        TokenCountCacheConfig {
            enabled: false,
            ttl: default_token_ttl(),
        }
    }
}

fn default_token_ttl() -> Dur {
    Dur(Duration::from_secs(3600))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub log_prompts: bool,
    /// Rotate the file when it reaches this many bytes (`path.1`, `path.2`,
    /// …). Absent: never rotate here; reopen on SIGHUP after an external
    /// rotation (logrotate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Rotated files kept when `max_bytes` is set.
    #[serde(default = "default_audit_keep")]
    pub keep: u32,
}

fn default_audit_keep() -> u32 {
    5
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            log_prompts: false,
            max_bytes: None,
            keep: default_audit_keep(),
        }
    }
}
