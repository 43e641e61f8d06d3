//! `signin:` compiled once per config load: the gateway's token signer and
//! sealer, how it is registered at the identity provider, who may sign in,
//! and what each group's members get (team, model allowlist, limits,
//! managed settings), with the discovery document and every policy's
//! managed-settings answer rendered ahead of time.
//!
//! A signed-in developer becomes a principal like a gateway key's
//! (`runtime::snapshot::KeyEntry::signed_in`): named by their email, in
//! their policy's team, with a policy scope of their own (`user:EMAIL`)
//! carrying the policy's per-user limits and budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use globset::GlobSet;

use super::idp::{IdpConfig, REDISCOVER_EVERY};
use super::seal::Sealer;
use super::settings;
use super::tokens::Signer;
use crate::config::schema::{BudgetConfig, RateLimitConfig, SigninConfig};
use crate::config::ConfigError;
use crate::policy::ScopeLimits;

/// Authorization parameters the gateway sets itself, never from
/// `oidc.authorize_params`.
const RESERVED_PARAMS: [&str; 9] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
];

/// The shortest secret accepted for `signin.session.secret`.
pub const MIN_SECRET_CHARS: usize = 32;

/// `signin:` as requests use it.
pub struct Signin {
    /// `public_url` without a trailing `/`.
    pub public_url: String,
    /// Cookies carry `Secure` (an `https://` public URL).
    pub secure_cookies: bool,
    /// The scheme, host and port of `public_url`, as browsers send `Origin`.
    pub origin: String,
    pub signer: Signer,
    pub sealer: Sealer,
    /// Keys the browser-binding cookie's CSRF tokens.
    csrf: ring::hmac::Key,
    pub idp: IdpConfig,
    /// `None`: every authenticated user.
    allowed_groups: Option<Vec<String>>,
    pub policies: Vec<Policy>,
    pub access_ttl: Duration,
    pub lifetime: Duration,
    pub device_ttl: Duration,
    pub interval: Duration,
    pub login_notice: Option<String>,
    /// `signin.billing_group_tag`.
    pub billing_group_tag: Option<String>,
    /// `GET /.well-known/oauth-authorization-server`, rendered.
    pub metadata: Bytes,
}

impl std::fmt::Debug for Signin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signin")
            .field("public_url", &self.public_url)
            .field("issuer", &self.idp.issuer)
            .field("policies", &self.policies.len())
            .finish_non_exhaustive()
    }
}

/// What members of one IdP group get.
#[derive(Debug)]
pub struct Policy {
    pub group: String,
    pub team: Option<String>,
    pub team_scope: Option<Arc<ScopeLimits>>,
    pub models: Option<GlobSet>,
    /// The allowlist as configured, for messages.
    pub models_text: Vec<String>,
    pub rate_limit: Option<RateLimitConfig>,
    pub budget: Option<BudgetConfig>,
    pub settings: Option<Managed>,
}

/// A policy's `/managed/settings` answer.
#[derive(Debug, Clone)]
pub struct Managed {
    /// `"sha256:…"`, quoted: the `ETag`.
    pub etag: String,
    /// `{"uuid","checksum","settings"}`.
    pub body: Bytes,
}

/// A URL a browser or the client reaches: `https://`, or `http://` on a
/// loopback host (what Claude Code itself accepts). Returned without a
/// trailing `/`.
fn reachable_url(key: &str, raw: &str) -> Result<(String, bool), ConfigError> {
    let url =
        url::Url::parse(raw.trim()).map_err(|e| ConfigError::invalid(key, format!("`{raw}` is not a URL: {e}")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(key, "must not carry a query or a fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(ConfigError::invalid(key, format!("`{raw}` has no host"))),
    };
    let secure = match url.scheme() {
        "https" => true,
        "http" if loopback => false,
        "http" => {
            return Err(ConfigError::invalid(
                key,
                format!("`{raw}` must be https:// (plain http is accepted only on a loopback address)"),
            ))
        }
        other => return Err(ConfigError::invalid(key, format!("scheme `{other}` is not http(s)"))),
    };
    Ok((url.as_str().trim_end_matches('/').to_string(), secure))
}

impl Signin {
    /// Compile `signin:`. `teams` holds every `teams:` scope by name; a
    /// policy naming another team gets a limitless one (with a warning).
    pub fn build(
        c: &SigninConfig,
        teams: &mut HashMap<String, Arc<ScopeLimits>>,
        warnings: &mut Vec<String>,
    ) -> Result<Signin, ConfigError> {
        let (public_url, secure_cookies) = reachable_url("signin.public_url", &c.public_url)?;
        let (issuer, _) = reachable_url("signin.oidc.issuer", &c.oidc.issuer)?;
        if c.oidc.client_id.is_empty() {
            return Err(ConfigError::invalid("signin.oidc.client_id", "must not be empty"));
        }
        if c.oidc.groups_claim.is_empty() {
            return Err(ConfigError::invalid("signin.oidc.groups_claim", "must not be empty"));
        }
        if let Some(k) = c
            .oidc
            .authorize_params
            .keys()
            .find(|k| RESERVED_PARAMS.contains(&k.as_str()))
        {
            return Err(ConfigError::invalid(
                format!("signin.oidc.authorize_params.{k}"),
                "the gateway sets this parameter itself",
            ));
        }
        let secrets = c.session.secret.as_slice();
        if secrets.is_empty() {
            return Err(ConfigError::invalid(
                "signin.session.secret",
                "give at least one secret",
            ));
        }
        for (i, s) in secrets.iter().enumerate() {
            if s.chars().count() < MIN_SECRET_CHARS {
                return Err(ConfigError::invalid(
                    format!("signin.session.secret[{i}]"),
                    format!("is shorter than {MIN_SECRET_CHARS} characters; make one with `openssl rand -base64 48`"),
                ));
            }
        }
        let access_ttl = c.session.ttl.0;
        if !(Duration::from_secs(60)..=Duration::from_secs(24 * 3600)).contains(&access_ttl) {
            return Err(ConfigError::invalid(
                "signin.session.ttl",
                "must be from 1m to 24h (it bounds how long a revoked or deprovisioned user keeps access)",
            ));
        }
        if c.session.lifetime.0 < access_ttl {
            return Err(ConfigError::invalid(
                "signin.session.lifetime",
                "must be at least signin.session.ttl",
            ));
        }
        if c.device.interval.0 < Duration::from_secs(1) {
            return Err(ConfigError::invalid("signin.device.interval", "must be at least 1s"));
        }
        if c.device.ttl.0 < Duration::from_secs(60) || c.device.ttl.0 > Duration::from_secs(3600) {
            return Err(ConfigError::invalid("signin.device.ttl", "must be from 1m to 1h"));
        }
        if let Some(n) = &c.device.login_notice {
            if n.chars().count() > 500 {
                return Err(ConfigError::invalid(
                    "signin.device.login_notice",
                    "must be at most 500 characters (Claude Code shows no more)",
                ));
            }
        }
        if c.allowed_groups.as_ref().is_some_and(|g| g.is_empty()) {
            return Err(ConfigError::invalid(
                "signin.allowed_groups",
                "an empty list lets nobody sign in; leave it out to let every user in",
            ));
        }
        let mut policies = Vec::with_capacity(c.groups.len());
        for (group, p) in &c.groups {
            let key = format!("signin.groups.{group}");
            let models = crate::config::check::model_allowlist(&key, &p.models)?;
            if let Some(b) = &p.budget {
                crate::config::check::budget(&format!("{key}.budget"), b)?;
                if b.period == crate::config::schema::BudgetPeriod::Total {
                    return Err(ConfigError::invalid(
                        format!("{key}.budget.period"),
                        "a developer's budget is daily, weekly or monthly (Claude Code shows when it resets)",
                    ));
                }
            }
            let team_scope = p.team.as_deref().map(|t| {
                Arc::clone(teams.entry(t.to_string()).or_insert_with(|| {
                    warnings.push(format!(
                        "{key}.team: team `{t}` is not under `teams:` (no team limits or budget apply)"
                    ));
                    Arc::new(ScopeLimits::new("team", t, None, None))
                }))
            });
            let settings = p.managed_settings.as_ref().map(|s| {
                let checksum = settings::checksum(s);
                let body = serde_json::json!({
                    "uuid": settings::uuid(group, &checksum),
                    "checksum": checksum,
                    "settings": s,
                });
                Managed {
                    etag: format!("\"{checksum}\""),
                    body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
                }
            });
            policies.push(Policy {
                group: group.clone(),
                team: p.team.clone(),
                team_scope,
                models,
                models_text: p.models.clone(),
                rate_limit: p.rate_limit.clone(),
                budget: p.budget.clone(),
                settings,
            });
        }
        let metadata = serde_json::json!({
            "issuer": public_url,
            "device_authorization_endpoint": format!("{public_url}/oauth/device_authorization"),
            "token_endpoint": format!("{public_url}/oauth/token"),
            "revocation_endpoint": format!("{public_url}/oauth/revoke"),
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "gateway_protocol_version": 1,
        });
        Ok(Signin {
            signer: Signer::new(&public_url, secrets),
            sealer: Sealer::new(secrets),
            csrf: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                format!("modelgate csrf\0{}", secrets[0]).as_bytes(),
            ),
            idp: IdpConfig {
                issuer,
                client_id: c.oidc.client_id.clone(),
                client_secret: c.oidc.client_secret.clone().filter(|s| !s.is_empty()),
                redirect_uri: format!("{public_url}/oauth/callback"),
                groups_claim: c.oidc.groups_claim.clone(),
                scopes: c.oidc.scopes.clone(),
                authorize_params: c
                    .oidc
                    .authorize_params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                rediscover_every: REDISCOVER_EVERY,
            },
            allowed_groups: c.allowed_groups.clone(),
            policies,
            access_ttl,
            lifetime: c.session.lifetime.0,
            device_ttl: c.device.ttl.0,
            interval: c.device.interval.0,
            login_notice: c.device.login_notice.clone(),
            billing_group_tag: c.billing_group_tag.clone().filter(|t| !t.is_empty()),
            metadata: Bytes::from(serde_json::to_vec(&metadata).unwrap_or_default()),
            origin: url::Url::parse(&public_url)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default(),
            public_url,
            secure_cookies,
        })
    }

    /// Whether a user in `groups` may sign in.
    pub fn allows(&self, groups: &[String]) -> bool {
        self.allowed_groups
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|a| groups.contains(a)))
    }

    /// Of `groups`, those the gateway decides anything by (`allowed_groups`
    /// and the policies'): what a token carries, so that a user in hundreds
    /// of IdP groups still gets a token of a sensible size.
    pub fn relevant_groups(&self, groups: &[String]) -> Vec<String> {
        groups
            .iter()
            .filter(|g| {
                self.allowed_groups.as_ref().is_some_and(|a| a.contains(g))
                    || self.policies.iter().any(|p| &p.group == *g)
            })
            .cloned()
            .collect()
    }

    /// The allowed groups, for `signin status`.
    pub fn allowed_groups(&self) -> &[String] {
        self.allowed_groups.as_deref().unwrap_or_default()
    }

    /// The policy of a user in `groups`: the first under `signin.groups`
    /// naming one of them, with its index.
    pub fn policy_for(&self, groups: &[String]) -> Option<(usize, &Policy)> {
        self.policies
            .iter()
            .enumerate()
            .find(|(_, p)| groups.contains(&p.group))
    }

    /// The CSRF token of the browser whose binding cookie is `cookie`.
    pub fn csrf_token(&self, cookie: &str) -> String {
        let tag = ring::hmac::sign(&self.csrf, cookie.as_bytes());
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, tag.as_ref())
    }

    /// Whether `token` is `cookie`'s CSRF token (constant time).
    pub fn csrf_ok(&self, cookie: &str, token: &str) -> bool {
        let Ok(tag) = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token) else {
            return false;
        };
        ring::hmac::verify(&self.csrf, cookie.as_bytes(), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse_str;
    use crate::signin::tokens::Claims;

    fn build(extra: &str) -> Result<Signin, ConfigError> {
        let yaml = format!(
            "signin:\n  public_url: http://127.0.0.1:8080/\n  oidc: {{issuer: 'http://localhost:9000', client_id: mg}}\n  \
             session: {{secret: '0123456789abcdef0123456789abcdef'}}\n{extra}"
        );
        let c = parse_str(&yaml, &|_| None).unwrap();
        Signin::build(c.signin.as_ref().unwrap(), &mut HashMap::new(), &mut Vec::new())
    }

    #[test]
    fn public_urls_are_https_or_loopback_and_secrets_long() {
        let s = build("").unwrap();
        assert_eq!(s.public_url, "http://127.0.0.1:8080");
        assert!(!s.secure_cookies);
        assert_eq!(s.idp.redirect_uri, "http://127.0.0.1:8080/oauth/callback");
        let meta: serde_json::Value = serde_json::from_slice(&s.metadata).unwrap();
        assert_eq!(meta["token_endpoint"], "http://127.0.0.1:8080/oauth/token");
        assert!(meta.get("authorization_endpoint").is_none());
        let yaml = "signin:\n  public_url: http://gw.corp:8080\n  oidc: {issuer: 'https://idp', client_id: mg}\n  \
                    session: {secret: '0123456789abcdef0123456789abcdef'}\n";
        let c = parse_str(yaml, &|_| None).unwrap();
        let e = Signin::build(c.signin.as_ref().unwrap(), &mut HashMap::new(), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        let short = "signin:\n  public_url: https://gw\n  oidc: {issuer: 'https://idp', client_id: mg}\n  \
                     session: {secret: [short]}\n";
        let c = parse_str(short, &|_| None).unwrap();
        let e = Signin::build(c.signin.as_ref().unwrap(), &mut HashMap::new(), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("secret[0]"), "{e}");
    }

    #[test]
    fn first_matching_group_decides_and_allowlists_hold() {
        let s = build(
            "  allowed_groups: [eng, data]\n  groups:\n    data: {team: analytics, models: ['claude-haiku-*']}\n    \
             eng: {team: eng, models: ['claude-*'], managed_settings: {env: {A: '1'}}}\n",
        )
        .unwrap();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(s.allows(&g(&["x", "eng"])));
        assert!(!s.allows(&g(&["sales"])));
        assert_eq!(s.policy_for(&g(&["eng", "data"])).unwrap().1.group, "data");
        let claims = Claims {
            iss: String::new(),
            aud: String::new(),
            sub: "u1".into(),
            email: Some("ada@corp.example".into()),
            name: None,
            groups: g(&["eng"]),
            session_id: "s".into(),
            billing_group_tag: None,
            iat: 0,
            exp: 0,
        };
        let p = crate::runtime::snapshot::KeyEntry::of_claims(&s, &claims);
        assert_eq!(p.name, "ada@corp.example");
        assert_eq!(p.team.as_deref(), Some("eng"));
        assert_eq!(&*p.scope.id, "user:ada@corp.example");
        assert!(p.allows_model("claude-opus-4-5") && !p.allows_model("gpt-5"));
        let managed = s.policies[1].settings.as_ref().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&managed.body).unwrap();
        assert_eq!(format!("\"{}\"", body["checksum"].as_str().unwrap()), managed.etag);
        assert_eq!(body["settings"]["env"]["A"], "1");
        let token = s.csrf_token("cookie-a");
        assert!(s.csrf_ok("cookie-a", &token) && !s.csrf_ok("cookie-b", &token));
    }
}
