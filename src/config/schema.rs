//! The config file's shape, exactly as the config contract writes it
//! (README.md#configuration; `conf/example-full.yaml` uses every key).
//!
//! These are plain serde types with `deny_unknown_fields`, so a typo is an
//! error that names the key. Nothing here resolves env vars, reads files or
//! compiles globs: that is `load` (raw text → `Config`) and `snapshot`
//! (`Config` → the runtime form a request holds).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A humantime duration (`300ms`, `5s`, `15m`); a bare number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// A duration from text: humantime (`300ms`, `5m`) or seconds, whole or
    /// fractional (`300`, `0.5`), as flags and environment overrides give it.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<f64>() {
            return Duration::try_from_secs_f64(secs)
                .map(Dur)
                .map_err(|_| "a duration must be a finite, non-negative number".to_string());
        }
        humantime::parse_duration(s)
            .map(Dur)
            .map_err(|e| format!("invalid duration `{s}`: {e}"))
    }
}

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

/// What `Deserialize for Dur` accepts: humantime text, a bare number of
/// seconds (as a number or as text), or a `${VAR}` reference expanded at load.
impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        "modelgate::Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: humantime text such as `300ms`, `5s`, `15m` or `1h 30m`, or a bare number of seconds (`120`). `${VAR}` and `${VAR:-default}` are expanded from the environment.",
            "type": ["string", "number"],
            "pattern": "^\\s*[0-9]+\\s*$|^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$|\\$\\{",
            "minimum": 0,
            "examples": ["300ms", "5s", "15m", 120]
        })
    }
}

/// `providers.<name>.type`. Which types this build speaks is not the
/// schema's to know (config is a leaf): `modelgate config schema` fills in
/// the `enum` from the provider table.
fn provider_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The provider type: the wire format and the default `api_base`. `modelgate provider list --builtins` lists them.",
        "type": "string",
    })
}

/// The modelgate configuration file (`modelgate.yaml`). Reference: README.md#configuration and `conf/example-full.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Main listener (the Anthropic API), `host:port`. `serve --listen` overrides it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin listener for `/metrics`, `/status`, `/dashboard` and `/admin/*`. Without it these are served on `listen` and need an admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// The provider used when no route matches. Must name an entry of `providers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_provider: Option<String>,
    /// Per-attempt upstream timeout: time to first byte, and the longest silence mid-stream.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// TCP + TLS connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Extra attempts after the first, across the whole fallback chain.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Base of the exponential backoff between attempts (with jitter).
    #[serde(default = "default_retry_delay")]
    pub retry_delay: Dur,
    /// Largest request body in bytes; larger ones get 413 `request_too_large`.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: u64,
    /// Silence after which a translated stream gets an `event: ping`.
    #[serde(default = "default_ping_interval")]
    pub ping_interval: Dur,
    /// Log verbosity.
    #[serde(default)]
    pub log_level: LogLevel,
    /// Log line format: standard, detailed, json, colored or minimal.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Append log lines to this file instead of writing them to stderr (restart to apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// Idle upstream connections kept open for reuse (the keep-alive pool; restart to apply).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// The `anthropic-version` sent upstream when a client sends none.
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    /// How long an old process keeps serving open streams after a graceful upgrade or SIGTERM.
    #[serde(default = "default_grace_period")]
    pub grace_period: Dur,
    /// Pingora graceful-upgrade socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_sock: Option<String>,
    /// Where the gateway writes its process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
    /// Worker threads (default: the CPU count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Forward any other `/v1/*` path to the default Anthropic-type provider.
    #[serde(default)]
    pub passthrough_mode: bool,
    /// Start even though a listener that is not loopback would forward requests with a server-side provider credential while there are no gateway `keys` (anyone who reaches the port spends the organisation's key). Only for a trusted network.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// The longest a client may take to send its request head and body, and to read what was written; on expiry the connection is closed (with a 408 where an answer can still be sent) and the request's holds are released.
    #[serde(default)]
    pub client_timeouts: ClientTimeouts,
    /// Size limits on what a request may carry.
    #[serde(default)]
    pub limits: Limits,
    /// Prometheus metrics options.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Upstream providers by name. `modelgate provider add` edits this section.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routing rules, first match wins; unmatched models go to `default_provider`. `modelgate route add` edits this section.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Gateway keys. Absent: passthrough-auth mode (clients' own credentials are forwarded to Anthropic-type upstreams); `[]` refuses every request. `modelgate keys create` edits this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<KeyConfig>>,
    /// Team-wide rate limits and budgets, by team name.
    #[serde(default)]
    pub teams: BTreeMap<String, TeamConfig>,
    /// Hex sha256 digests of the keys allowed on `/admin`, `/status` and `/metrics` when there is no `admin_listen`.
    #[serde(default)]
    pub admin_keys_sha256: Vec<String>,
    /// Where counters and the usage ledger live.
    #[serde(default)]
    pub state: StateConfig,
    /// Durable records (the usage ledger): an SQLite file (default) or a PostgreSQL database shared by every replica.
    #[serde(default)]
    pub store: StoreConfig,
    /// Response and token-count caches.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The audit log of requests.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Path of a price file (USD per million tokens per model: input, output, cache_read, cache_write). Default: the built-in table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<String>,
    /// Developers sign in with the organisation's identity provider (OpenID Connect), through the Claude Code gateway protocol: `/login` → "Cloud gateway" in Claude Code. Absent: gateway keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signin: Option<SigninConfig>,
    /// OpenTelemetry export.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Claude's cloud formats served to clients (Claude Code's cloud modes pointed at the gateway).
    #[serde(default)]
    pub inbound: InboundConfig,
    /// The forward proxy (`modelgate proxy`).
    #[serde(default, skip_serializing_if = "ProxyConfig::is_empty")]
    pub proxy: ProxyConfig,
}

/// `proxy:` — what `modelgate proxy` (the HTTP forward proxy) may reach
/// besides public addresses.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Destinations in loopback and private ranges that may be reached anyway, as `HOST:PORT`; `*` matches any port or any one host label (`127.0.0.1:*`, `*.corp.internal:443`). `--allow` adds more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

impl ProxyConfig {
    fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }
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
fn default_pool_size() -> usize {
    128
}

fn default_anthropic_version() -> String {
    "2023-06-01".into()
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[time LEVEL target] message`
    #[default]
    Standard,
    /// Milliseconds, thread, target and source line.
    Detailed,
    /// One JSON object per line.
    Json,
    /// `standard` with the level in colour (ANSI).
    Colored,
    /// `LEVEL message`
    Minimal,
}

impl LogFormat {
    pub const ALL: [LogFormat; 5] = [
        LogFormat::Standard,
        LogFormat::Detailed,
        LogFormat::Json,
        LogFormat::Colored,
        LogFormat::Minimal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Standard => "standard",
            LogFormat::Detailed => "detailed",
            LogFormat::Json => "json",
            LogFormat::Colored => "colored",
            LogFormat::Minimal => "minimal",
        }
    }
}

/// `client_timeouts`: slow or stalled clients never pin a connection, an
/// upstream stream or a budget hold.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeouts {
    /// The whole request head, from the connection's start (or the previous answer's end on a kept-alive connection).
    #[serde(default = "default_head_timeout")]
    pub head: Dur,
    /// The whole request body, from its first byte's turn.
    #[serde(default = "default_body_timeout")]
    pub body: Dur,
    /// Each write toward the client: a client that stops reading is cut off after this long.
    #[serde(default = "default_write_timeout")]
    pub write: Dur,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            head: default_head_timeout(),
            body: default_body_timeout(),
            write: default_write_timeout(),
        }
    }
}

fn default_head_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_body_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_write_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

/// `limits`: what a request may carry into the gateway's memory and records.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The longest `model` id, in bytes; a longer one is refused with 400 before anything is stored or logged.
    #[serde(default = "default_model_id_bytes")]
    pub model_id_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            model_id_bytes: default_model_id_bytes(),
        }
    }
}

fn default_model_id_bytes() -> usize {
    256
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label metrics per gateway key (off by default, to bound cardinality).
    #[serde(default)]
    pub per_key_labels: bool,
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(rename = "type")]
    #[schemars(schema_with = "provider_type_schema")]
    pub kind: String,
    /// Base URL. Each type has a default (e.g. `https://api.openai.com/v1` for openai); azure needs one. Plain `http://` is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// Environment variable holding the provider credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env_var: Option<String>,
    /// A literal credential (`${VAR}` expansion applies). Discouraged: `config lint` warns; prefer `api_key_env_var`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Several accounts balanced by weight; a sticky session keeps one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<ProviderKeyConfig>,
    /// A disabled provider is skipped by every route.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Lower first, when several providers list the requested model in `models`.
    #[serde(default)]
    pub priority: i32,
    /// Model ids this provider serves; used by `/v1/models` and `route resolve`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Extra headers sent upstream.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// AWS region: Bedrock (`bedrock`, `bedrock_messages`), Claude Platform on AWS (`claude_aws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `bedrock_messages`: which host serves the Messages API: `runtime` (`https://bedrock-runtime.{region}.amazonaws.com/anthropic`) or `mantle` (`https://bedrock-mantle.{region}.api.aws/anthropic`). Default: `mantle` with an API key, `runtime` when signing with SigV4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<BedrockEndpoint>,
    /// Microsoft Foundry resource (`foundry`): the base is `https://{resource}.services.ai.azure.com/anthropic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Microsoft Foundry (`foundry`): a Microsoft Entra ID application whose client-credentials tokens are sent instead of a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<EntraConfig>,
    /// The workspace: Claude Platform on AWS (`claude_aws`, sent as `anthropic-workspace-id`, `wrkspc_…`) and Anthropic-operated Claude on Google Cloud (`claude_gcp`, part of the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Google Cloud project: Vertex (`vertex`), Claude on Google Cloud (`claude_gcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Google Cloud location: Vertex (`vertex`), Claude on Google Cloud (`claude_gcp`, default `global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Azure deployment (default: the upstream model id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Azure `api-version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Optional active health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Bedrock, Vertex and `bedrock_messages`: the `anthropic-beta` values
    /// this upstream accepts (their paired body fields travel with them);
    /// replaces the built-in table, so a newly supported beta needs no
    /// rebuild.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betas: Option<Vec<String>>,
}

/// Which Bedrock host serves `bedrock_messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BedrockEndpoint {
    /// `https://bedrock-runtime.{region}.amazonaws.com/anthropic`: SigV4 (service `bedrock`) or an API key as a bearer token.
    Runtime,
    /// `https://bedrock-mantle.{region}.api.aws/anthropic`: an API key as `x-api-key`, or SigV4 (service `bedrock-mantle`).
    Mantle,
}

/// A Microsoft Entra ID application (client credentials) for Microsoft Foundry.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// The directory (tenant) id or domain.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// The client secret; write `${VAR}` rather than the value.
    pub client_secret: String,
    /// The sign-in authority (sovereign clouds: `https://login.microsoftonline.us`). Plain `http://` only to a loopback address.
    #[serde(default = "default_entra_authority")]
    pub authority: String,
    /// The scope asked for.
    #[serde(default = "default_entra_scope")]
    pub scope: String,
}

fn default_entra_authority() -> String {
    "https://login.microsoftonline.com".into()
}

fn default_entra_scope() -> String {
    "https://ai.azure.com/.default".into()
}

/// One account of a provider: `{env: VAR}` or `{api_key: ...}`, with a weight.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeyConfig {
    /// Environment variable holding this account's credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A literal credential (discouraged; prefer `env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Relative share of requests.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    /// HTTP path to probe (`type: http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// HTTP status a healthy upstream answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    #[default]
    Tcp,
    Http,
}

/// A routing rule. It matches when its `match` glob (if any) matches the requested model and its `header` (if any) is present with that value.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub model_glob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    /// The provider tried first.
    pub provider: String,
    /// Model id sent upstream instead of the requested one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tried in order when the primary fails before the first byte.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<FallbackConfig>,
}

/// A request header that must be present with exactly this value.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

/// A fallback is either a bare provider name or `{provider, model}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FallbackConfig {
    Provider(String),
    Detailed(FallbackDetail),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackDetail {
    pub provider: String,
    /// Model id sent to this fallback instead of the requested one.
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

/// A gateway key. Give exactly one of `key_sha256` and `key_env`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Unique name, shown in usage and logs.
    pub name: String,
    /// Team whose limits this key's usage also counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Hex sha256 of the key (the key itself is never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// Environment variable holding the plain key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// Allowlist of requested-model globs (default: every model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
    /// A disabled key is refused.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// When the key stops working (RFC 3339, e.g. `2027-03-31T00:00:00Z`): refused with 401 from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Spending limit in US dollars.
    pub usd: f64,
    /// The budget window.
    #[serde(default)]
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Weekly,
    #[default]
    Monthly,
    Total,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `embedded` (in-memory counters + SQLite ledger) or `redis` (counters shared by several gateways).
    #[serde(default)]
    pub backend: StateBackend,
    /// SQLite usage ledger, relative to the gateway's working directory.
    #[serde(default = "default_state_path")]
    pub path: String,
    /// One Redis primary: `redis://[user:password@]host:port/db`, or
    /// `rediss://…` for TLS. With `backend: redis`, give this or
    /// `redis_cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` or
    /// `rediss://host:port`, all with the same scheme and credentials),
    /// instead of `redis_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<Vec<String>>,
    /// PEM file of CA certificates trusted for `rediss://`, in addition to
    /// the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<String>,
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
            redis_cluster: None,
            redis_ca_file: None,
            redis_prefix: default_redis_prefix(),
            on_redis_error: RedisFailurePolicy::default(),
            ledger_queue: default_ledger_queue(),
        }
    }
}

/// `store:` — where durable records live. Absent: the SQLite file at
/// `state.path`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=require` (libpq URL; `sslrootcert=PATH` adds a CA to trust). Default: `sqlite:` + `state.path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Directory of the local spool that keeps ledger records while a PostgreSQL store is unreachable. Default: `spool/` beside `state.path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<String>,
    /// The most the spool may hold on disk, in bytes; records beyond it are dropped (and counted). Default 1 GiB.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            spool: None,
            spool_max_bytes: default_spool_max_bytes(),
        }
    }
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
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
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache of complete answers (JSON and streamed) to identical requests from the same caller.
    #[serde(default)]
    pub response: ResponseCacheConfig,
    /// Cache of `count_tokens` answers.
    #[serde(default)]
    pub token_count: TokenCountCacheConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit log file, or `-` for stdout; absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Include request and response bodies.
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

/// `signin:` — the Claude Code gateway protocol's sign-in (device flow,
/// OpenID Connect against the organisation's IdP, gateway-signed tokens)
/// and the policies signed-in developers get from their groups.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SigninConfig {
    /// The gateway's URL as developers' browsers and Claude Code reach it (`https://llm-gateway.corp.internal`). The IdP redirects back to `{public_url}/oauth/callback`. `http://` only on a loopback address.
    pub public_url: String,
    /// The organisation's OpenID Connect provider.
    pub oidc: OidcConfig,
    /// The gateway's own access tokens.
    pub session: SessionConfig,
    /// Groups allowed to sign in (any one of them). Absent: every user the IdP authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_groups: Option<Vec<String>>,
    /// Policy by IdP group, in order: a user gets the first entry naming one of their groups.
    #[serde(default)]
    pub groups: indexmap::IndexMap<String, GroupPolicy>,
    /// The device flow's codes.
    #[serde(default)]
    pub device: DeviceConfig,
    /// Request tags (the gateway protocol's billing group): with a name here, tokens carry `billing_group_tag`, Claude Code then tags each request with the developer's `attributionProject` under that name, and the audit log records it when it is one of the developer's groups. A signed-in developer's `tags` never reach an upstream either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_group_tag: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The IdP's issuer URL; its discovery document is `{issuer}/.well-known/openid-configuration`. `http://` only on a loopback address.
    pub issuer: String,
    /// The client id registered at the IdP for the gateway.
    pub client_id: String,
    /// The client secret (a confidential client); absent for a public client (PKCE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The claim that lists a user's groups, in the id_token or from userinfo.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Scopes asked for besides `openid`. `offline_access` gets a refresh token from IdPs that want it asked for.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// Extra parameters of the authorization request, for IdPs that need them: Google issues a refresh token only with `{access_type: offline, prompt: consent}` (and wants `scopes: [email, profile]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorize_params: BTreeMap<String, String>,
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_oidc_scopes() -> Vec<String> {
    ["email", "profile", "offline_access"].map(String::from).to_vec()
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// HMAC secret(s) for the gateway's tokens, 32 characters or more: one, or a list whose first signs and all verify (rotation).
    pub secret: OneOrMany,
    /// Access-token lifetime; Claude Code refreshes it before it ends.
    #[serde(default = "default_session_ttl")]
    pub ttl: Dur,
    /// How long a sign-in lasts, refreshes included; then the developer signs in again.
    #[serde(default = "default_session_lifetime")]
    pub lifetime: Dur,
}

fn default_session_ttl() -> Dur {
    Dur(Duration::from_secs(3600))
}

fn default_session_lifetime() -> Dur {
    Dur(Duration::from_secs(30 * 24 * 3600))
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// What members of an IdP group get.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPolicy {
    /// The team (`teams:`) their usage counts against and is reported under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Allowlist of requested-model globs (default: every model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Each member's own rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Each member's own budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
    /// Claude Code managed settings served to members at `/managed/settings` (a `managed-settings.json` object, e.g. `{env: {CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY: "1"}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_settings: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// How long a device code may wait for its approval.
    #[serde(default = "default_device_ttl")]
    pub ttl: Dur,
    /// The least time between two token polls of one device code; faster polls get `slow_down`.
    #[serde(default = "default_device_interval")]
    pub interval: Dur,
    /// Shown by Claude Code next to the code on its sign-in screen (plain text, 500 characters at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_notice: Option<String>,
}

fn default_device_ttl() -> Dur {
    Dur(Duration::from_secs(600))
}

fn default_device_interval() -> Dur {
    Dur(Duration::from_secs(5))
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            ttl: default_device_ttl(),
            interval: default_device_interval(),
            login_notice: None,
        }
    }
}

/// `telemetry:` — OpenTelemetry export.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector. Signed-in Claude Code clients' own telemetry (`POST /v1/metrics|logs|traces`) is forwarded there with the user's verified identity; absent, it is accepted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL: OTLP/HTTP `http://otel-collector:4318` (signals go to `{endpoint}/v1/{metrics,logs,traces}`), or gRPC `http://otel-collector:4317`.
    pub endpoint: String,
    /// `http/protobuf` or `grpc`. Clients' own telemetry is forwarded only over `http/protobuf`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (an `authorization` for the collector, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Export the gateway's traces: a span per request, a child per upstream attempt (OpenTelemetry GenAI conventions).
    #[serde(default = "default_true")]
    pub traces: bool,
    /// Export the gateway's metrics (GenAI token usage, operation duration, time to first token).
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// How often metrics are exported.
    #[serde(default = "default_otlp_interval")]
    pub interval: Dur,
    /// Send W3C `traceparent` to upstreams (each attempt's span as the parent).
    #[serde(default)]
    pub propagate: bool,
    /// The share of requests whose spans are exported, 0.0–1.0. A request that arrives with a `traceparent` follows its sampled flag instead.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// How the gateway's own telemetry reaches the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

fn default_otlp_interval() -> Dur {
    Dur(Duration::from_secs(60))
}

/// `inbound:` — the clouds' own API formats, served under path prefixes so
/// that Claude Code's cloud modes can be pointed at the gateway.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Microsoft Foundry's format (the Messages API under a prefix), for `CLAUDE_CODE_USE_FOUNDRY=1` with `ANTHROPIC_FOUNDRY_BASE_URL=<gateway>/foundry`. `null` turns it off.
    #[serde(default = "default_foundry_prefix")]
    pub foundry: Option<String>,
    /// Google Vertex AI's format (`…/publishers/anthropic/models/{model}:rawPredict`, `:streamRawPredict`, `count-tokens:rawPredict`), for `CLAUDE_CODE_USE_VERTEX=1` with `ANTHROPIC_VERTEX_BASE_URL=<gateway>/vertex`. `null` turns it off.
    #[serde(default = "default_vertex_prefix")]
    pub vertex: Option<String>,
    /// Amazon Bedrock's InvokeModel format (`/model/{model}/invoke`, `/invoke-with-response-stream`, answered in AWS event-stream frames), for `CLAUDE_CODE_USE_BEDROCK=1` with `ANTHROPIC_BEDROCK_BASE_URL=<gateway>/bedrock`. `null` turns it off.
    #[serde(default = "default_bedrock_prefix")]
    pub bedrock: Option<String>,
    /// Cloud model ids and the gateway model ids they stand for; ids not listed lose their cloud decorations (`claude-sonnet-4-5@20250929` → `claude-sonnet-4-5`, `us.anthropic.claude-opus-4-5-20251101-v1:0` → `claude-opus-4-5-20251101`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_map: BTreeMap<String, String>,
}

fn default_vertex_prefix() -> Option<String> {
    Some("/vertex".into())
}

fn default_bedrock_prefix() -> Option<String> {
    Some("/bedrock".into())
}

fn default_foundry_prefix() -> Option<String> {
    Some("/foundry".into())
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            foundry: default_foundry_prefix(),
            vertex: default_vertex_prefix(),
            bedrock: default_bedrock_prefix(),
            model_map: BTreeMap::new(),
        }
    }
}
