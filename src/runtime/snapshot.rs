//! The runtime form of a config: everything a request needs, resolved and
//! compiled once per load so the request path does no parsing, no env
//! lookups and no glob compilation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use globset::{GlobMatcher, GlobSet, GlobSetBuilder};
use http::header::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::config::schema::{BudgetConfig, Config, FallbackConfig, KeyConfig, ProviderConfig, TeamConfig};
use crate::config::ConfigError;
use crate::policy::ScopeLimits;
use crate::providers::{Adapter, Build, CredentialKind, ProviderType, WithoutKey};
use crate::secret::Secret;
pub use crate::upstream::UpstreamBase;
use crate::upstream::{google_auth, Bearer};
use crate::usage::pricing::PriceTable;

/// One configured provider: where it lives, its accounts, and its
/// behaviour behind the provider seam (`crate::providers`).
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Its row in the provider table.
    pub kind: &'static ProviderType,
    /// Everything provider-specific: building requests, reading answers.
    pub adapter: Arc<dyn Adapter>,
    pub base: UpstreamBase,
    /// The provider's accounts: one per configured credential, at least one.
    pub accounts: Vec<Account>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub enabled: bool,
    pub priority: i32,
    pub models: Vec<String>,
}

impl Provider {
    /// Whether requests to this provider carry a credential the gateway
    /// holds (a key, a Google service account, AWS signing keys) rather than
    /// the client's own or none.
    pub fn sends_server_credential(&self) -> bool {
        self.adapter.signs()
            || self
                .accounts
                .iter()
                .any(|a| a.credential.is_some() || a.bearer.is_some())
    }

    /// Whether an account of this provider is called with no credential at
    /// all where the upstream needs one: none configured, and no signing to
    /// fall back on. (Without one, an Anthropic-type provider forwards the
    /// client's own; Ollama needs none.)
    pub fn lacks_credential(&self, account: &Account) -> bool {
        account.credential.is_none()
            && account.bearer.is_none()
            && !self.adapter.signs()
            && !matches!(
                self.kind.without_key,
                WithoutKey::ForwardsClient | WithoutKey::NeedsNone
            )
    }

    /// How `/status` and `provider show` describe an account's credential.
    pub fn credential_state(&self, account: &Account) -> &'static str {
        match (
            account.credential.is_some() || account.bearer.is_some(),
            self.kind.without_key,
        ) {
            (true, _) => "configured",
            (false, WithoutKey::ForwardsClient) => "client passthrough",
            (false, _) => "none",
        }
    }
}

/// One credential of a provider. Requests are balanced across accounts by
/// weight, and health is tracked per account.
#[derive(Debug)]
pub struct Account {
    /// `provider` for a single account, `provider#N` (1-based) for `keys:`
    /// entries. Shown in logs and `/status`; never the secret.
    pub label: String,
    /// `None` means no credential is configured (or its env var is unset):
    /// an Anthropic-type upstream then receives the client's own credential
    /// (passthrough-auth), any other gets none.
    pub credential: Option<Secret>,
    /// Where the OAuth tokens this account sends come from: a Google
    /// service account (Vertex, Claude on Google Cloud) or an Entra ID
    /// application (Foundry).
    pub bearer: Option<Bearer>,
    pub weight: u32,
}

/// What one routing rule (or `default_provider`) has served since the
/// gateway started, for `route stats` (`/admin/routes`). A reload keeps
/// the counters of every rule whose description is unchanged
/// ([`Snapshot::adopt_route_stats`]).
#[derive(Debug, Default)]
pub struct RuleStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_us: AtomicU64,
    max_latency_us: AtomicU64,
}

/// A reading of [`RuleStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleCounts {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: u64,
    pub max_latency_us: u64,
}

impl RuleStats {
    /// One finished request: `failed` when its answer was an error (4xx/5xx).
    pub fn record(&self, failed: bool, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_us.fetch_add(us, Ordering::Relaxed);
        self.max_latency_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn read(&self) -> RuleCounts {
        RuleCounts {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_us: self.latency_us.load(Ordering::Relaxed),
            max_latency_us: self.max_latency_us.load(Ordering::Relaxed),
        }
    }
}

/// One rule as `route stats` lists it.
pub struct RuleReport {
    pub rule: Arc<str>,
    pub provider: Option<String>,
    pub counts: RuleCounts,
}

#[derive(Debug)]
struct Route {
    /// `routes[i] (match ...)`, for logs, `/status` and `route resolve`.
    description: Arc<str>,
    stats: Arc<RuleStats>,
    glob: Option<GlobMatcher>,
    /// This rule's index in `Snapshot::route_globs`.
    glob_slot: Option<usize>,
    glob_text: Option<String>,
    header: Option<(HeaderName, String)>,
    provider: Arc<Provider>,
    model: Option<String>,
    fallbacks: Vec<(Arc<Provider>, Option<String>)>,
}

/// One upstream the request may be sent to.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub provider: Arc<Provider>,
    /// The model id to send upstream when it differs from the requested one.
    pub rename: Option<String>,
}

/// The ordered candidates for one request and why they were chosen.
#[derive(Debug, Clone)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    /// The rule that matched (its description, shared, not rebuilt per request).
    pub reason: Arc<str>,
    /// That rule's counters (none for `passthrough_mode`, which has no rule).
    pub stats: Option<Arc<RuleStats>>,
}

/// `Ok(())` when rule `r` matches, else why not.
fn route_verdict(r: &Route, model: &str, header: &dyn Fn(&HeaderName) -> Option<String>) -> Result<(), String> {
    if let (Some(g), Some(text)) = (&r.glob, &r.glob_text) {
        if !g.is_match(model) {
            return Err(format!("{}: model `{model}` does not match `{text}`", r.description));
        }
    }
    if let Some((name, want)) = &r.header {
        match header(name) {
            Some(v) if &v == want => {}
            Some(v) => return Err(format!("{}: header {name} is `{v}`, not `{want}`", r.description)),
            None => return Err(format!("{}: header {name} is absent", r.description)),
        }
    }
    Ok(())
}

/// A gateway key as the request path sees it.
#[derive(Debug)]
pub struct KeyEntry {
    pub name: String,
    pub team: Option<String>,
    pub enabled: bool,
    /// This key's rate limits and budget (a policy scope of its own).
    pub scope: Arc<ScopeLimits>,
    /// Its team's, shared by every key of the team.
    pub team_scope: Option<Arc<ScopeLimits>>,
    models: Option<GlobSet>,
    hash: [u8; 32],
    /// Unix ms from which the key is refused.
    pub expires_at_ms: Option<i64>,
}

impl KeyEntry {
    pub(crate) fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|set| set.is_match(model))
    }

    /// The policy scopes a request with this key is charged to: the key's,
    /// then its team's.
    pub fn scopes(&self) -> Vec<&Arc<ScopeLimits>> {
        std::iter::once(&self.scope).chain(self.team_scope.as_ref()).collect()
    }

    /// Whether the key may use only some models (a `models:` allowlist).
    pub fn restricted_models(&self) -> bool {
        self.models.is_some()
    }

    /// A developer signed in through the identity provider (`signin:`),
    /// named by `name` (their email), with their policy's team, model
    /// allowlist and per-user limits (`user:NAME`).
    /// The principal a verified sign-in token stands for: named by email
    /// (the subject when the IdP gave none), under the first matching
    /// group policy of `signin`.
    pub fn of_claims(signin: &crate::signin::policy::Signin, claims: &crate::signin::tokens::Claims) -> KeyEntry {
        let name = claims.email.as_deref().unwrap_or(&claims.sub);
        match signin.policy_for(&claims.groups) {
            Some((_, p)) => KeyEntry::signed_in(
                name,
                &claims.sub,
                p.team.clone(),
                p.team_scope.clone(),
                p.models.clone(),
                p.rate_limit.as_ref(),
                p.budget.as_ref(),
            ),
            None => KeyEntry::signed_in(name, &claims.sub, None, None, None, None, None),
        }
    }

    fn signed_in(
        name: &str,
        subject: &str,
        team: Option<String>,
        team_scope: Option<Arc<ScopeLimits>>,
        models: Option<GlobSet>,
        rate: Option<&crate::config::schema::RateLimitConfig>,
        budget: Option<&BudgetConfig>,
    ) -> KeyEntry {
        KeyEntry {
            name: name.to_string(),
            team,
            enabled: true,
            scope: Arc::new(ScopeLimits::new("user", name, rate, budget).in_team(team_scope.as_deref())),
            team_scope,
            models,
            hash: sha256(format!("user\0{subject}").as_bytes()),
            expires_at_ms: None,
        }
    }

    /// The same key counting against `team` (the scope of the team it
    /// names, defined in the store rather than in the file). Its own scope
    /// stays as it is: its state is kept with the team's by name either way.
    fn with_team_scope(&self, team: Arc<ScopeLimits>) -> KeyEntry {
        KeyEntry {
            name: self.name.clone(),
            team: self.team.clone(),
            enabled: self.enabled,
            scope: Arc::clone(&self.scope),
            team_scope: Some(team),
            models: self.models.clone(),
            hash: self.hash,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// What the store adds to a snapshot (`keyring`): its keys and teams,
/// compiled against that snapshot's keys and teams.
#[derive(Debug, Default)]
pub struct StoreCompiled {
    /// The version of the snapshot these were compiled against.
    pub version: String,
    /// Store keys by sha256.
    pub keys: HashMap<[u8; 32], Arc<KeyEntry>>,
    /// Config keys whose team is a store team, counting against it.
    pub config_keys: HashMap<[u8; 32], Arc<KeyEntry>>,
    /// The store teams in use (those the file does not define), by name.
    pub teams: BTreeMap<String, Arc<ScopeLimits>>,
}

pub struct Snapshot {
    pub config: Config,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub default_provider: Option<Arc<Provider>>,
    routes: Vec<Route>,
    /// What requests no rule matched have served (`default_provider`).
    default_stats: Arc<RuleStats>,
    /// Every route glob compiled into one matcher.
    route_globs: GlobSet,
    /// Enabled providers by the model ids they list in `models`, lowest
    /// `priority` first.
    serving: HashMap<String, Vec<Arc<Provider>>>,
    /// `None` = passthrough-auth mode (no `keys:` section).
    keys: Option<HashMap<[u8; 32], Arc<KeyEntry>>>,
    admin_keys: Vec<[u8; 32]>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_request_size: u64,
    pub loaded_at: SystemTime,
    /// Hex sha256 of the config's canonical JSON form: changes iff the config does.
    pub version: String,
    /// Non-fatal findings (e.g. a provider key env var that is unset).
    pub warnings: Vec<String>,
    /// USD per million tokens: `pricing:` when set, else the built-in table.
    pub pricing: Arc<PriceTable>,
    /// `signin:`, compiled.
    pub signin: Option<Arc<crate::signin::policy::Signin>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("listen", &self.listen)
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_hex32(key: &str, hex_str: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str.trim(), &mut out)
        .map_err(|_| ConfigError::invalid(key, "must be 64 hex characters (a sha256 digest)"))?;
    Ok(out)
}

fn parse_addr(key: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{raw}` is not an address like 127.0.0.1:8080")))
}

impl Snapshot {
    /// Validate and compile `config`. `env` resolves provider and key env vars.
    pub fn build(config: Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Snapshot, ConfigError> {
        let mut warnings = Vec::new();
        let listen = parse_addr("listen", &config.listen)?;
        let admin_listen = config
            .admin_listen
            .as_deref()
            .map(|a| parse_addr("admin_listen", a))
            .transpose()?;
        if admin_listen == Some(listen) {
            return Err(ConfigError::invalid("admin_listen", "must differ from `listen`"));
        }
        if config.anthropic_version.is_empty() || http::HeaderValue::from_str(&config.anthropic_version).is_err() {
            return Err(ConfigError::invalid(
                "anthropic_version",
                "must be a version date such as 2023-06-01",
            ));
        }
        if let Err(e) = crate::forward::AllowList::new(&config.proxy.allow) {
            return Err(ConfigError::invalid("proxy.allow", &e));
        }
        if config.max_request_size == 0 {
            return Err(ConfigError::invalid("max_request_size", "must be greater than 0"));
        }
        if config.threads == Some(0) {
            return Err(ConfigError::invalid("threads", "must be at least 1"));
        }
        if config.timeout.0.is_zero() {
            return Err(ConfigError::invalid("timeout", "must be greater than 0"));
        }
        if config.ping_interval.0 < Duration::from_millis(10) {
            return Err(ConfigError::invalid("ping_interval", "must be at least 10ms"));
        }
        if config.connect_timeout.0.is_zero() {
            return Err(ConfigError::invalid("connect_timeout", "must be greater than 0"));
        }
        let prefixes: Vec<(&str, &String)> = [
            ("inbound.foundry", &config.inbound.foundry),
            ("inbound.vertex", &config.inbound.vertex),
            ("inbound.bedrock", &config.inbound.bedrock),
        ]
        .into_iter()
        .filter_map(|(k, p)| Some((k, p.as_ref()?)))
        .collect();
        for (i, (key, prefix)) in prefixes.iter().enumerate() {
            check_prefix(key, prefix)?;
            for (other_key, other) in &prefixes[..i] {
                let nested = prefix.starts_with(&format!("{other}/")) || other.starts_with(&format!("{prefix}/"));
                if prefix == other || nested {
                    return Err(ConfigError::invalid(*key, format!("must not overlap {other_key}")));
                }
            }
        }

        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            let provider = build_provider(name, p, env, &mut warnings)?;
            providers.insert(name.clone(), Arc::new(provider));
        }
        let lookup = |key: &str, name: &str| -> Result<Arc<Provider>, ConfigError> {
            providers.get(name).cloned().ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    format!(
                        "no provider named `{name}` (configured: {})",
                        providers.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
        };
        let default_provider = config
            .default_provider
            .as_deref()
            .map(|n| lookup("default_provider", n))
            .transpose()?;

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut route_globs = GlobSetBuilder::new();
        let mut globs_added = 0usize;
        for (i, r) in config.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let glob = r
                .model_glob
                .as_deref()
                .map(|g| crate::config::check::glob(&format!("{key}.match"), g).map(|g| g.compile_matcher()))
                .transpose()?;
            let header = r
                .header
                .as_ref()
                .map(|h| {
                    HeaderName::from_bytes(h.name.as_bytes())
                        .map(|n| (n, h.value.clone()))
                        .map_err(|_| {
                            ConfigError::invalid(
                                format!("{key}.header.name"),
                                format!("`{}` is not a header name", h.name),
                            )
                        })
                })
                .transpose()?;
            let fallbacks = r
                .fallbacks
                .iter()
                .enumerate()
                .map(|(j, f): (usize, &FallbackConfig)| {
                    lookup(&format!("{key}.fallbacks[{j}]"), f.provider()).map(|p| (p, f.model().map(str::to_string)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let description: Arc<str> = match (&r.model_glob, &r.header) {
                (Some(g), None) => format!("{key} (match `{g}`)"),
                (None, Some(h)) => format!("{key} (header {}: {})", h.name, h.value),
                (Some(g), Some(h)) => format!("{key} (match `{g}`, header {}: {})", h.name, h.value),
                (None, None) => format!("{key} (matches everything)"),
            }
            .into();
            let glob_slot = match &r.model_glob {
                Some(g) => {
                    route_globs.add(crate::config::check::glob(&format!("{key}.match"), g)?);
                    globs_added += 1;
                    Some(globs_added - 1)
                }
                None => None,
            };
            routes.push(Route {
                description,
                stats: Default::default(),
                glob_slot,
                glob,
                glob_text: r.model_glob.clone(),
                header,
                provider: lookup(&format!("{key}.provider"), &r.provider)?,
                model: r.model.clone(),
                fallbacks,
            });
        }

        let mut teams = HashMap::with_capacity(config.teams.len());
        for (name, t) in &config.teams {
            teams.insert(name.clone(), team_scope(&format!("teams.{name}"), name, t)?);
        }
        // With sign-in, every request needs a credential: gateway keys are
        // on (none but the signed-in developers' tokens, without `keys:`).
        let keys = match (&config.keys, &config.signin) {
            (None, None) => None,
            (list, _) => Some(build_keys(
                list.as_deref().unwrap_or_default(),
                &mut teams,
                !config.teams.is_empty(),
                env,
                &mut warnings,
            )?),
        };
        let signin = config
            .signin
            .as_ref()
            .map(|c| crate::signin::policy::Signin::build(c, &mut teams, &mut warnings).map(Arc::new))
            .transpose()?;
        let admin_keys = config
            .admin_keys_sha256
            .iter()
            .enumerate()
            .map(|(i, h)| parse_hex32(&format!("admin_keys_sha256[{i}]"), h))
            .collect::<Result<Vec<_>, _>>()?;
        for (team, _) in config.teams.iter() {
            if team.is_empty() {
                return Err(ConfigError::invalid("teams", "team names must not be empty"));
            }
        }
        if let Some(list) = &config.keys {
            for k in list {
                if let Some(t) = &k.team {
                    if !config.teams.is_empty() && !config.teams.contains_key(t) {
                        warnings.push(format!(
                            "key `{}` names team `{t}`, which has no entry under `teams`",
                            k.name
                        ));
                    }
                }
            }
        }
        if keys.is_none() && !config.allow_unauthenticated && !listen.ip().is_loopback() {
            if let Some(p) = providers.values().find(|p| p.enabled && p.sends_server_credential()) {
                return Err(ConfigError::invalid(
                    "listen",
                    format!(
                        "{listen} is not a loopback address and provider `{}` sends a server-side credential, \
                         but there are no gateway `keys`: anyone who reaches this port would spend that credential. \
                         Add gateway keys (`modelgate keys create NAME`), listen on 127.0.0.1, or set \
                         `allow_unauthenticated: true` if only a trusted network can reach this port",
                        p.name
                    ),
                ));
            }
        }
        if let Some(admin) = admin_listen.filter(|a| !a.ip().is_loopback()) {
            warnings.push(format!(
                "admin_listen {admin} is not a loopback address: /status, /metrics and /admin/* answer there \
                 without a key, so keep that port off any network users reach"
            ));
        }
        if default_provider.is_none()
            && !routes
                .iter()
                .any(|r| r.glob_text.as_deref() == Some("*") && r.header.is_none())
        {
            warnings.push("no `default_provider` and no catch-all route: unmatched models get 404".into());
        }

        let route_globs = route_globs
            .build()
            .map_err(|e| ConfigError::invalid("routes", format!("cannot compile the route globs: {e}")))?;
        let mut serving: HashMap<String, Vec<Arc<Provider>>> = HashMap::new();
        let mut by_priority: Vec<&Arc<Provider>> = providers.values().filter(|p| p.enabled).collect();
        by_priority.sort_by_key(|p| p.priority);
        for p in by_priority {
            for m in &p.models {
                serving.entry(m.clone()).or_default().push(p.clone());
            }
        }
        let mut canonical = serde_json::to_vec(&config).unwrap_or_default();
        let pricing = match &config.pricing {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::invalid("pricing", format!("cannot read price table {path}: {e}")))?;
                // The price file is part of the config: editing only it
                // must still count as a change on reload.
                canonical.extend_from_slice(text.as_bytes());
                Arc::new(PriceTable::parse(&text, path).map_err(|e| ConfigError::invalid("pricing", e.to_string()))?)
            }
            None => PriceTable::builtin(),
        };
        let version = hex::encode(&sha256(&canonical)[..8]);
        if config.state.backend == crate::config::schema::StateBackend::Redis {
            crate::policy::redis::Target::from_config(&config.state)
                .map_err(|(key, message)| ConfigError::invalid(key, message))?;
            if config.state.redis_cluster.is_some() && config.state.redis_prefix.contains('{') {
                warnings.push(
                    "state.redis_prefix contains `{`: in Redis Cluster every key then hashes by the prefix, \
                     so all shared state lands in one hash slot (one node)"
                        .into(),
                );
            }
        }
        Ok(Snapshot {
            pricing,
            signin,
            listen,
            admin_listen,
            providers,
            default_provider,
            routes,
            default_stats: Default::default(),
            route_globs,
            serving,
            keys,
            admin_keys,
            timeout: config.timeout.0,
            connect_timeout: config.connect_timeout.0,
            max_request_size: config.max_request_size,
            loaded_at: SystemTime::now(),
            version,
            warnings,
            config,
        })
    }

    /// Route a request: the first rule whose model glob and header both match
    /// wins; with none, `default_provider`. Disabled providers are skipped.
    pub fn resolve(&self, model: &str, header: &dyn Fn(&HeaderName) -> Option<String>) -> Option<Plan> {
        // One pass of the compiled glob set finds every glob that matches;
        // then the first rule in order whose glob (if any) is among them and
        // whose header (if any) matches wins.
        let mut hits = Vec::new();
        self.route_globs.matches_into(model, &mut hits);
        hits.sort_unstable();
        let rule = self.routes.iter().position(|r| {
            let glob_ok = r.glob_slot.is_none_or(|slot| hits.binary_search(&slot).is_ok());
            glob_ok
                && r.header
                    .as_ref()
                    .is_none_or(|(name, want)| header(name).as_deref() == Some(want.as_str()))
        });
        let (mut candidates, reason, stats) = match rule {
            Some(i) => {
                let r = &self.routes[i];
                let mut c = Vec::with_capacity(1 + r.fallbacks.len());
                let primary = std::iter::once((&r.provider, &r.model));
                for (p, m) in primary.chain(r.fallbacks.iter().map(|(p, m)| (p, m))) {
                    if p.enabled {
                        c.push(Candidate {
                            provider: p.clone(),
                            rename: m.clone(),
                        });
                    }
                }
                (c, r.description.clone(), r.stats.clone())
            }
            None => {
                let p = self.default_provider.as_ref()?;
                let c = if p.enabled {
                    vec![Candidate {
                        provider: p.clone(),
                        rename: None,
                    }]
                } else {
                    Vec::new()
                };
                (c, Arc::from("default_provider"), self.default_stats.clone())
            }
        };
        // Providers that declare the model in `models` can serve it too:
        // they follow the route's own candidates, lowest `priority` first.
        for p in self.serving.get(model).into_iter().flatten() {
            if !candidates.iter().any(|c| Arc::ptr_eq(&c.provider, p)) {
                candidates.push(Candidate {
                    provider: p.clone(),
                    rename: None,
                });
            }
        }
        Some(Plan {
            candidates,
            reason,
            stats: Some(stats),
        })
    }

    /// Each rule in order, then `default_provider` (when there is one), with
    /// what it has served.
    pub fn route_stats(&self) -> Vec<RuleReport> {
        let rules = self.routes.iter().map(|r| RuleReport {
            rule: r.description.clone(),
            provider: Some(r.provider.name.clone()),
            counts: r.stats.read(),
        });
        let default = self.default_provider.as_ref().map(|p| RuleReport {
            rule: Arc::from("default_provider"),
            provider: Some(p.name.clone()),
            counts: self.default_stats.read(),
        });
        rules.chain(default).collect()
    }

    /// Take over the counters of `old`'s rules that this config still has
    /// (the same position, match and header, sending to the same provider,
    /// model and fallbacks), so a reload does not reset `route stats`; a
    /// changed rule starts from zero. Likewise `default_provider`'s, when it
    /// names the same provider.
    pub fn adopt_route_stats(&mut self, old: &Snapshot) {
        let names = |r: &Route| -> Vec<(String, Option<String>)> {
            std::iter::once((r.provider.name.clone(), r.model.clone()))
                .chain(r.fallbacks.iter().map(|(p, m)| (p.name.clone(), m.clone())))
                .collect()
        };
        for r in &mut self.routes {
            let same = |o: &&Route| o.description == r.description && names(o) == names(r);
            if let Some(o) = old.routes.iter().find(same) {
                r.stats = o.stats.clone();
            }
        }
        let provider = |s: &Snapshot| s.default_provider.as_ref().map(|p| p.name.clone());
        if provider(self) == provider(old) {
            self.default_stats = old.default_stats.clone();
        }
    }

    /// True when `model` is configured verbatim: a route's literal `match`,
    /// or a provider's `models` entry. Such ids are never reinterpreted
    /// (e.g. an alias that happens to end in `-fast`).
    pub fn is_literal_model(&self, model: &str) -> bool {
        self.serving.contains_key(model) || self.routes.iter().any(|r| r.glob_text.as_deref() == Some(model))
    }

    /// Why each rule does or does not match, in order, for `route resolve`.
    /// `Ok(description)` for a match, `Err(reason)` otherwise.
    pub fn explain(&self, model: &str, header: &dyn Fn(&HeaderName) -> Option<String>) -> Vec<Result<String, String>> {
        self.routes
            .iter()
            .map(|r| route_verdict(r, model, header).map(|()| r.description.to_string()))
            .collect()
    }

    /// `true` when gateway keys are configured (otherwise passthrough-auth).
    /// Every policy scope of this config, each once: the keys', then their teams'.
    pub fn all_scopes(&self) -> Vec<Arc<ScopeLimits>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let keys = self.keys.iter().flat_map(|m| m.values());
        for k in keys {
            for s in std::iter::once(&k.scope).chain(k.team_scope.as_ref()) {
                if seen.insert(s.id.clone()) {
                    out.push(Arc::clone(s));
                }
            }
        }
        out
    }

    pub fn keys_enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// Whether a gateway key in the file is called `name`.
    pub fn has_key_named(&self, name: &str) -> bool {
        self.keys.iter().flat_map(|m| m.values()).any(|k| k.name == name)
    }

    /// Find the key whose sha256 equals `presented_hash`. The lookup is keyed by
    /// the digest, never the secret, and the final comparison is constant-time,
    /// so timing reveals nothing about any configured key.
    pub fn find_key(&self, presented_hash: &[u8; 32]) -> Option<&Arc<KeyEntry>> {
        use subtle::ConstantTimeEq;
        let entry = self.keys.as_ref()?.get(presented_hash)?;
        bool::from(entry.hash.ct_eq(presented_hash)).then_some(entry)
    }

    /// Compile the keys and teams kept in the store (see `keyring`)
    /// against this snapshot, one at a time: a store team the file also
    /// defines, a row that does not compile, or a store key whose name or
    /// secret a config key already has, is left out with a warning. Keys
    /// (the file's and the store's) that name a store team count against
    /// its limits and budget, as they would against a team in the file.
    pub fn compile_store(&self, keys: &[KeyConfig], teams: &[(String, TeamConfig)]) -> (StoreCompiled, Vec<String>) {
        let mut warnings = Vec::new();
        // Every team by name: the file's (validated when this snapshot was
        // built), then the store's the file does not define.
        let mut scopes: HashMap<String, Arc<ScopeLimits>> = self
            .config
            .teams
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), team_scope(&format!("teams.{name}"), name, t).ok()?)))
            .collect();
        let mut store_teams = BTreeMap::new();
        for (name, t) in teams {
            if self.config.teams.contains_key(name) {
                warnings.push(format!(
                    "store team `{name}`: a team of that name is in the config file, which wins"
                ));
                continue;
            }
            if name.is_empty() {
                warnings.push("a store team has an empty name; left out".into());
                continue;
            }
            match team_scope(&format!("store team `{name}`"), name, t) {
                Ok(scope) => {
                    scopes.insert(name.clone(), Arc::clone(&scope));
                    store_teams.insert(name.clone(), scope);
                }
                Err(e) => warnings.push(format!("{e}; left out")),
            }
        }
        let mut config_keys = HashMap::new();
        for (hash, k) in self.keys.iter().flatten() {
            if let Some(scope) = k.team.as_deref().and_then(|t| store_teams.get(t)) {
                config_keys.insert(*hash, Arc::new(k.with_team_scope(Arc::clone(scope))));
            }
        }
        let config_names: std::collections::HashSet<&str> = self
            .keys
            .iter()
            .flat_map(|k| k.values())
            .map(|k| k.name.as_str())
            .collect();
        let no_env = |_: &str| None;
        let mut out = HashMap::with_capacity(keys.len());
        for row in keys {
            if config_names.contains(row.name.as_str()) {
                warnings.push(format!(
                    "store key `{}`: a key of that name is in the config file, which wins",
                    row.name
                ));
                continue;
            }
            // A team named nowhere gets no limits, as for a config key; the
            // command line said so when the key was made.
            let mut ignored = Vec::new();
            match build_keys(std::slice::from_ref(row), &mut scopes, false, &no_env, &mut ignored) {
                Ok(one) => {
                    for (hash, entry) in one {
                        if self.keys.as_ref().is_some_and(|k| k.contains_key(&hash)) || out.contains_key(&hash) {
                            warnings.push(format!(
                                "store key `{}` has the same secret as another key; left out",
                                row.name
                            ));
                            continue;
                        }
                        out.insert(hash, entry);
                    }
                }
                Err(e) => warnings.push(format!("store key `{}`: {e}; left out", row.name)),
            }
        }
        let compiled = StoreCompiled {
            version: self.version.clone(),
            keys: out,
            config_keys,
            teams: store_teams,
        };
        (compiled, warnings)
    }

    pub fn has_admin_keys(&self) -> bool {
        !self.admin_keys.is_empty()
    }

    pub fn is_admin_key(&self, presented_hash: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        self.admin_keys
            .iter()
            .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(presented_hash))
            .into()
    }
}

fn build_provider(
    name: &str,
    p: &ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Provider, ConfigError> {
    let key = format!("providers.{name}");
    let kind = crate::providers::by_name(&p.kind).ok_or_else(|| {
        ConfigError::invalid(
            format!("{key}.type"),
            format!(
                "unknown provider type `{}` (available: {})",
                p.kind,
                crate::providers::names().join(", ")
            ),
        )
    })?;
    let built = (kind.build)(&mut Build {
        key: &key,
        name,
        config: p,
        env,
        warnings,
    })?;
    let base_raw = p
        .api_base
        .as_deref()
        .or(kind.default_base)
        .or(built.derived_base.as_deref())
        .ok_or_else(|| ConfigError::invalid(format!("{key}.api_base"), format!("required for type `{}`", kind.name)))?;
    let base = UpstreamBase::parse(base_raw).map_err(|e| ConfigError::invalid(format!("{key}.api_base"), e))?;

    let mut accounts = build_accounts(&key, name, kind, p, env, warnings)?;
    if let Some(bearer) = &built.bearer {
        for a in accounts
            .iter_mut()
            .filter(|a| a.credential.is_none() && a.bearer.is_none())
        {
            a.bearer = Some(bearer.clone());
        }
    }
    let mut headers = Vec::with_capacity(p.headers.len());
    for (h, v) in &p.headers {
        let n = HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| ConfigError::invalid(format!("{key}.headers"), format!("`{h}` is not a header name")))?;
        let v = HeaderValue::from_str(v)
            .map_err(|_| ConfigError::invalid(format!("{key}.headers.{h}"), "value is not a valid header value"))?;
        headers.push((n, v));
    }
    Ok(Provider {
        name: name.to_string(),
        kind,
        adapter: built.adapter,
        base,
        accounts,
        headers,
        enabled: p.enabled,
        priority: p.priority,
        models: p.models.clone(),
    })
}

fn build_accounts(
    key: &str,
    name: &str,
    kind: &ProviderType,
    p: &ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Account>, ConfigError> {
    let accounts = accounts_from_config(key, name, kind, p, env, warnings)?;
    if kind.credential != CredentialKind::ServiceAccountFile {
        return Ok(accounts);
    }
    // Such a credential names a service-account file; its tokens are what
    // is sent. The file is read and checked now, so `config lint` and a
    // reload catch a bad one.
    accounts
        .into_iter()
        .map(|a| {
            let bearer = match &a.credential {
                Some(path) => Some(Bearer::Google(
                    google_auth::source_for(std::path::Path::new(path.expose()))
                        .map_err(|e| ConfigError::invalid(key, e.to_string()))?,
                )),
                None => None,
            };
            Ok(Account {
                credential: None,
                bearer,
                ..a
            })
        })
        .collect()
}

fn accounts_from_config(
    key: &str,
    name: &str,
    kind: &ProviderType,
    p: &ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Account>, ConfigError> {
    let single = |credential: Option<Secret>| {
        vec![Account {
            label: name.to_string(),
            credential,
            bearer: None,
            weight: 1,
        }]
    };
    let unset = |what: String| match kind.without_key {
        WithoutKey::ForwardsClient => {
            format!("{what} is not set; clients' own credentials will be forwarded to `{name}`")
        }
        _ => format!("{what} is not set; `{name}` will be called without a credential"),
    };
    if let Some(k) = p.api_key.as_deref().filter(|k| !k.is_empty()) {
        return Ok(single(Some(Secret::new(k))));
    }
    // Some types have a standard variable of their own.
    let default_var = kind.standard_env.filter(|_| p.keys.is_empty());
    if let Some(var) = p.api_key_env_var.as_deref().or(default_var) {
        let credential = env(var).filter(|v| !v.is_empty()).map(|v| Secret::new(&v));
        if credential.is_none() && p.api_key_env_var.is_none() && kind.without_key == WithoutKey::Signs {
            // It signs instead (SigV4 from the environment).
            return Ok(single(None));
        }
        if credential.is_none() {
            let setting = match &p.api_key_env_var {
                Some(_) => format!("{key}.api_key_env_var: `{var}`"),
                // The type's standard variable, not named in the file.
                None => format!("{key}: `{var}`"),
            };
            warnings.push(unset(setting));
        }
        return Ok(single(credential));
    }
    let mut accounts = Vec::with_capacity(p.keys.len());
    for (i, k) in p.keys.iter().enumerate() {
        let value = match (&k.env, &k.api_key) {
            (Some(var), None) => env(var).filter(|v| !v.is_empty()),
            (None, Some(lit)) => Some(lit.clone()).filter(|v| !v.is_empty()),
            _ => {
                return Err(ConfigError::invalid(
                    format!("{key}.keys[{i}]"),
                    "give exactly one of `env` or `api_key`",
                ))
            }
        };
        if k.weight == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.keys[{i}].weight"),
                "must be at least 1",
            ));
        }
        match value {
            Some(v) => accounts.push(Account {
                label: format!("{name}#{}", i + 1),
                credential: Some(Secret::new(&v)),
                bearer: None,
                weight: k.weight,
            }),
            None => warnings.push(format!(
                "{key}.keys[{i}]: `{}` is not set; that account is left out",
                k.env.as_deref().unwrap_or("api_key")
            )),
        }
    }
    if accounts.is_empty() {
        if !p.keys.is_empty() {
            warnings.push(unset(format!("{key}.keys: every listed credential")));
        }
        return Ok(single(None));
    }
    Ok(accounts)
}

/// Paths the gateway serves itself, which an inbound prefix may not shadow.
const OWN_PATHS: [&str; 11] = [
    "/v1",
    "/admin",
    "/oauth",
    "/device",
    "/health",
    "/status",
    "/metrics",
    "/managed",
    "/api",
    "/.well-known",
    "/dashboard",
];

/// An `inbound` path prefix: `/name`, one or more segments of URL-safe
/// characters, not a path the gateway serves itself.
fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    let ok = prefix.len() > 1
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && !prefix.contains("//")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if !ok {
        return Err(ConfigError::invalid(
            key,
            format!("`{}` is not a path prefix like /foundry", prefix.escape_debug()),
        ));
    }
    if let Some(own) = OWN_PATHS
        .iter()
        .find(|own| prefix == **own || prefix.starts_with(&format!("{own}/")))
    {
        return Err(ConfigError::invalid(
            key,
            format!("`{prefix}` is under `{own}`, which the gateway serves itself"),
        ));
    }
    Ok(())
}

/// A team's policy scope; `key` names it in an error.
fn team_scope(key: &str, name: &str, t: &TeamConfig) -> Result<Arc<ScopeLimits>, ConfigError> {
    if let Some(b) = &t.budget {
        crate::config::check::budget(&format!("{key}.budget"), b)?;
    }
    Ok(Arc::new(ScopeLimits::new(
        "team",
        name,
        t.rate_limit.as_ref(),
        t.budget.as_ref(),
    )))
}

/// Compile `list` against `team_scopes` (every team by name). A key whose
/// team is not there gets a team scope without limits (added to
/// `team_scopes`, so its teammates share it), with a warning when
/// `warn_unknown_team`.
fn build_keys(
    list: &[KeyConfig],
    team_scopes: &mut HashMap<String, Arc<ScopeLimits>>,
    warn_unknown_team: bool,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<HashMap<[u8; 32], Arc<KeyEntry>>, ConfigError> {
    let mut out = HashMap::with_capacity(list.len());
    let mut names = std::collections::HashSet::new();
    for (i, k) in list.iter().enumerate() {
        let key = format!("keys[{i}]");
        if k.name.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.name"), "must not be empty"));
        }
        if !names.insert(k.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("duplicate key name `{}`", k.name),
            ));
        }
        let hash = match (&k.key_sha256, &k.key_env) {
            (Some(h), None) => parse_hex32(&format!("{key}.key_sha256"), h)?,
            (None, Some(var)) => match env(var).filter(|v| !v.is_empty()) {
                Some(v) => sha256(v.as_bytes()),
                None => {
                    return Err(ConfigError::invalid(
                        format!("{key}.key_env"),
                        format!("environment variable `{var}` (key `{}`) is not set", k.name),
                    ))
                }
            },
            _ => {
                return Err(ConfigError::invalid(
                    &key,
                    format!("key `{}`: give exactly one of `key_sha256` or `key_env`", k.name),
                ))
            }
        };
        let models = crate::config::check::model_allowlist(&key, &k.models)?;
        if let Some(b) = &k.budget {
            crate::config::check::budget(&format!("{key}.budget"), b)?;
        }
        let expires_at_ms = k
            .expires
            .as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| {
                        ConfigError::invalid(
                            format!("{key}.expires"),
                            format!(
                                "`{}` is not an RFC 3339 time ({e}), e.g. 2027-03-31T00:00:00Z",
                                t.escape_debug()
                            ),
                        )
                    })
            })
            .transpose()?;
        let team_scope = k.team.as_deref().map(|t| {
            Arc::clone(team_scopes.entry(t.to_string()).or_insert_with(|| {
                if warn_unknown_team {
                    warnings.push(format!(
                        "{key}.team: team `{t}` is not under `teams:` (no team limits or budget apply)"
                    ));
                }
                Arc::new(ScopeLimits::new("team", t, None, None))
            }))
        });
        let entry = Arc::new(KeyEntry {
            name: k.name.clone(),
            team: k.team.clone(),
            enabled: k.enabled,
            scope: Arc::new(
                ScopeLimits::new("key", &k.name, k.rate_limit.as_ref(), k.budget.as_ref())
                    .in_team(team_scope.as_deref()),
            ),
            team_scope,
            models,
            hash,
            expires_at_ms,
        });
        if out.insert(hash, entry).is_some() {
            return Err(ConfigError::invalid(
                key,
                format!("key `{}` has the same secret as another key", k.name),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse_str;

    fn env(name: &str) -> Option<String> {
        (name == "ANTHROPIC_API_KEY").then(|| "sk-test".to_string())
    }

    fn snap(yaml: &str) -> Result<Snapshot, ConfigError> {
        Snapshot::build(parse_str(yaml, &env)?, &env)
    }

    const BASE: &str = "default_provider: a\nproviders:\n  a: {type: anthropic, api_key_env_var: ANTHROPIC_API_KEY}\n  b: {type: anthropic, api_base: 'http://127.0.0.1:9/v1'}\n";

    #[test]
    fn a_reload_keeps_the_counts_of_unchanged_rules_only() {
        let rules = "routes:\n  - {match: 'claude-*', provider: a}\n  - {match: 'gpt-*', provider: a}\n";
        let old = snap(&format!("{BASE}{rules}")).unwrap();
        let none = |_: &HeaderName| None;
        for model in ["claude-x", "gpt-x", "other"] {
            let plan = old.resolve(model, &none).unwrap();
            plan.stats.unwrap().record(false, Duration::from_millis(2));
        }
        // The second rule now sends elsewhere; the default provider changes too.
        let changed = rules.replace("{match: 'gpt-*', provider: a}", "{match: 'gpt-*', provider: b}");
        let mut new = snap(&format!(
            "{}{changed}",
            BASE.replace("default_provider: a", "default_provider: b")
        ))
        .unwrap();
        new.adopt_route_stats(&old);
        let counts: Vec<u64> = new.route_stats().iter().map(|r| r.counts.requests).collect();
        assert_eq!(counts, [1, 0, 0]);
        let mut same = snap(&format!("{BASE}{rules}")).unwrap();
        same.adopt_route_stats(&old);
        let counts: Vec<u64> = same.route_stats().iter().map(|r| r.counts.requests).collect();
        assert_eq!(counts, [1, 1, 1]);
    }

    #[test]
    fn first_matching_route_wins_then_default() {
        let s = snap(&format!(
            "{BASE}routes:\n  - {{match: 'claude-haiku-*', provider: b, model: small, fallbacks: [a, {{provider: a, model: x}}]}}\n  - {{header: {{name: x-org-route, value: cheap}}, provider: b}}\n"
        ))
        .unwrap();
        let none = |_: &HeaderName| None;
        let plan = s.resolve("claude-haiku-4-5", &none).unwrap();
        assert_eq!(plan.candidates.len(), 3);
        assert_eq!(plan.candidates[0].provider.name, "b");
        assert_eq!(plan.candidates[0].rename.as_deref(), Some("small"));
        assert_eq!(plan.candidates[2].rename.as_deref(), Some("x"));
        let plan = s.resolve("claude-opus-4-8", &none).unwrap();
        assert_eq!(plan.candidates[0].provider.name, "a");
        assert_eq!(&*plan.reason, "default_provider");
        let cheap = |n: &HeaderName| (n.as_str() == "x-org-route").then(|| "cheap".to_string());
        assert_eq!(
            s.resolve("claude-opus-4-8", &cheap).unwrap().candidates[0]
                .provider
                .name,
            "b"
        );
    }

    #[test]
    fn providers_listing_the_model_follow_by_priority_and_rules_explain_themselves() {
        let s = snap(
            "default_provider: a\nproviders:\n  a: {type: anthropic, models: [m1]}\n  b: {type: anthropic, models: [m1], priority: 5}\n  c: {type: anthropic, models: [m1], priority: 1}\n  d: {type: anthropic, models: [m1], enabled: false}\nroutes:\n  - {match: 'x-*', provider: b}\n  - {header: {name: x-org-route, value: cheap}, provider: c}\n",
        )
        .unwrap();
        let none = |_: &HeaderName| None;
        let names = |p: Plan| p.candidates.iter().map(|c| c.provider.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(s.resolve("m1", &none).unwrap()), ["a", "c", "b"]);
        assert_eq!(names(s.resolve("x-1", &none).unwrap()), ["b"]);
        let why = s.explain("m1", &none);
        assert!(why[0].as_ref().unwrap_err().contains("does not match `x-*`"), "{why:?}");
        assert!(
            why[1].as_ref().unwrap_err().contains("x-org-route is absent"),
            "{why:?}"
        );
    }

    #[test]
    fn base_joins_without_doubling_v1() {
        let s = snap(BASE).unwrap();
        let b = &s.providers["b"].base;
        assert_eq!(b.join("/v1/messages"), "/v1/messages");
        assert_eq!(b.authority, "127.0.0.1:9");
        let a = &s.providers["a"].base;
        assert!(a.tls && a.port == 443 && a.authority == "api.anthropic.com");
        assert!(s.providers["a"].accounts[0].credential.is_some());
        assert!(s.providers["b"].accounts[0].credential.is_none());
    }

    #[test]
    fn rejects_unknown_types_and_dangling_names() {
        let e = snap("providers:\n  v: {type: vertex}\n").unwrap_err().to_string();
        assert!(e.contains("providers.v.project") && e.contains("required"), "{e}");
        let e = snap("providers:\n  az: {type: azure}\n").unwrap_err().to_string();
        assert!(e.contains("providers.az.api_base") && e.contains("required"), "{e}");
        let s = snap("providers:\n  o: {type: openai}\n  l: {type: ollama}\n").unwrap();
        assert_eq!(s.providers["o"].base.join("/chat/completions"), "/v1/chat/completions");
        assert_eq!(s.providers["l"].base.authority, "127.0.0.1:11434");
        let e = snap("providers:\n  o: {type: foo}\n").unwrap_err().to_string();
        assert!(e.contains("unknown provider type"), "{e}");
        let e = snap(&format!("{BASE}routes:\n  - {{match: '*', provider: zz}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].provider") && e.contains("zz"), "{e}");
    }

    #[test]
    fn redis_state_needs_one_place_and_a_cluster_keeps_a_key_with_its_team() {
        let e = snap(&format!("{BASE}state: {{backend: redis}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("state.redis_url") && e.contains("state.redis_cluster"),
            "{e}"
        );
        let e = snap(&format!(
            "{BASE}state: {{backend: redis, redis_url: 'redis://a:1', redis_cluster: ['redis://b:2']}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("state.redis_cluster") && e.contains("not both"), "{e}");
        let e = snap(&format!(
            "{BASE}state: {{backend: redis, redis_url: 'rediss://a:1/#insecure'}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("state.redis_url") && e.contains("#insecure"), "{e}");
        let h = hex::encode(sha256(b"mg-alice"));
        let s = snap(&format!(
            "{BASE}state: {{backend: redis, redis_prefix: 'm{{x}}', redis_cluster: ['redis://b:2', 'redis://c:3']}}\nkeys:\n  - {{name: alice, team: t, key_sha256: {h}}}\n  - {{name: bob, key_sha256: {}}}\n",
            hex::encode(sha256(b"mg-bob"))
        ))
        .unwrap();
        assert!(
            s.warnings.iter().any(|w| w.contains("state.redis_prefix")),
            "{:?}",
            s.warnings
        );
        let alice = s.find_key(&sha256(b"mg-alice")).unwrap();
        assert_eq!(&*alice.scope.group, "team:t");
        assert_eq!(&*alice.team_scope.as_ref().unwrap().group, "team:t");
        assert_eq!(&*s.find_key(&sha256(b"mg-bob")).unwrap().scope.group, "key:bob");
    }

    #[test]
    fn keys_hash_lookup_and_allowlist() {
        let h = hex::encode(sha256(b"mg-alice"));
        let s = snap(&format!(
            "{BASE}keys:\n  - {{name: alice, team: t, key_sha256: {h}, models: ['claude-*']}}\n"
        ))
        .unwrap();
        let k = s.find_key(&sha256(b"mg-alice")).unwrap();
        assert_eq!(k.name, "alice");
        assert!(k.allows_model("claude-opus-4-8") && !k.allows_model("gpt-4o"));
        assert!(s.find_key(&sha256(b"mg-bob")).is_none());
        let e = snap(&format!("{BASE}keys:\n  - {{name: a, key_sha256: zz}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("keys[0].key_sha256"), "{e}");
    }
}
