//! Gateway keys and teams created at run time (`modelgate keys create`,
//! `modelgate teams create` with a PostgreSQL store), beside the config
//! file's `keys:` and `teams:`.
//!
//! The ring holds them compiled against the current snapshot
//! ([`Snapshot::compile_store`]): store keys count against their team's
//! limits exactly as config keys do, and so do config keys whose team is a
//! store team (the ring holds those keys again, with that team's scope).
//! `server` refreshes the ring when the store announces a change
//! (LISTEN/NOTIFY) and every few seconds as a safety net; a config reload
//! compiles the rows it last loaded against the new snapshot before that
//! snapshot is served. A request reads it with one atomic load.
//!
//! The file wins over the store: a config key over a store key of the same
//! name or secret, a config team over a store team of the same name. The
//! file is what an operator edited last by hand.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::snapshot::{KeyEntry, Snapshot, StoreCompiled};
use crate::config::schema::{KeyConfig, TeamConfig};
use crate::policy::ScopeLimits;

/// The store's active keys and teams, as config entries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoreRows {
    pub keys: Vec<KeyConfig>,
    pub teams: Vec<(String, TeamConfig)>,
}

/// Rows compiled against one snapshot: what the ring serves.
#[derive(Default)]
pub struct View {
    compiled: StoreCompiled,
    /// Kept to compile them again against a reloaded config.
    rows: StoreRows,
}

impl View {
    /// Compile `rows` against `snap`, with the warnings (rows left out).
    pub fn compile(snap: &Snapshot, rows: StoreRows) -> (View, Vec<String>) {
        let (compiled, warnings) = snap.compile_store(&rows.keys, &rows.teams);
        (View { compiled, rows }, warnings)
    }

    /// Every policy scope requests may be charged to, each once: the
    /// store's teams and keys, then the snapshot's (for a team both name,
    /// the store team's limits and period win over the snapshot's
    /// limitless stand-in).
    pub fn scopes(&self, snap: &Snapshot) -> Vec<Arc<ScopeLimits>> {
        let c = &self.compiled;
        let store_keys = c.keys.values().flat_map(|k| k.scopes().into_iter().cloned());
        let mut seen = HashSet::new();
        c.teams
            .values()
            .cloned()
            .chain(store_keys)
            .chain(snap.all_scopes())
            .filter(|s| seen.insert(s.id.clone()))
            .collect()
    }
}

#[derive(Default)]
pub struct KeyRing {
    view: ArcSwap<View>,
}

impl KeyRing {
    /// The key whose sha256 is `presented_hash`: a config key of `snap`
    /// (with its store team's limits when it names one), else a store key.
    /// Constant-time compare, as for config keys.
    pub fn find(&self, snap: &Snapshot, presented_hash: &[u8; 32]) -> Option<Arc<KeyEntry>> {
        use subtle::ConstantTimeEq;
        let view = self.view.load();
        let c = &view.compiled;
        if let Some(entry) = snap.find_key(presented_hash) {
            // Compiled against another config (a reload in between): the
            // snapshot's own entry, until the ring catches up.
            if !c.config_keys.is_empty() && c.version == snap.version {
                if let Some(in_store_team) = c.config_keys.get(presented_hash) {
                    return Some(Arc::clone(in_store_team));
                }
            }
            return Some(Arc::clone(entry));
        }
        let entry = c.keys.get(presented_hash)?;
        bool::from(entry.hash().ct_eq(presented_hash)).then(|| Arc::clone(entry))
    }

    /// Whether a key of `snap`'s file or of the store is called `name`.
    pub fn knows(&self, snap: &Snapshot, name: &str) -> bool {
        snap.has_key_named(name) || self.view.load().compiled.keys.values().any(|k| k.name == name)
    }

    /// Store keys in the ring.
    pub fn len(&self) -> usize {
        self.view.load().compiled.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Store teams in use (those the file does not define).
    pub fn teams(&self) -> usize {
        self.view.load().compiled.teams.len()
    }

    /// Serve `view`.
    pub fn install(&self, view: View) {
        self.view.store(Arc::new(view));
    }

    /// Compile `rows` against `snap` and serve them. A row that does not
    /// compile (a bad glob, a name or secret a config key already has, a
    /// team the file defines) is left out, and said so in the returned
    /// warnings; the others work.
    pub fn replace(&self, snap: &Snapshot, rows: StoreRows) -> Vec<String> {
        let (view, warnings) = View::compile(snap, rows);
        self.install(view);
        warnings
    }

    /// Compile the rows last loaded against `snap` (a reloaded config).
    pub fn recompile(&self, snap: &Snapshot) -> Vec<String> {
        let rows = self.view.load().rows.clone();
        self.replace(snap, rows)
    }

    /// Every policy scope of `snap` and the ring (see [`View::scopes`]).
    pub fn scopes(&self, snap: &Snapshot) -> Vec<Arc<ScopeLimits>> {
        self.view.load().scopes(snap)
    }

    /// The teams' scopes among [`KeyRing::scopes`].
    pub fn team_scopes(&self, snap: &Snapshot) -> Vec<Arc<ScopeLimits>> {
        let mut scopes = self.scopes(snap);
        scopes.retain(|s| s.id.starts_with("team:"));
        scopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse_str;
    use crate::config::schema::{BudgetConfig, BudgetPeriod, RateLimitConfig};
    use crate::runtime::snapshot::sha256;

    fn snap(teams: &str) -> Snapshot {
        let yaml = format!(
            "default_provider: a\nproviders:\n  a: {{type: anthropic, api_base: 'http://127.0.0.1:9/v1'}}\n\
             keys:\n  - {{name: alice, team: research, key_sha256: \"{}\"}}\n  - {{name: bob, team: platform, key_sha256: \"{}\"}}\n{teams}",
            hex::encode(sha256(b"mg-alice")),
            hex::encode(sha256(b"mg-bob")),
        );
        let env = |_: &str| None;
        Snapshot::build(parse_str(&yaml, &env).unwrap(), &env).unwrap()
    }

    fn key(name: &str, team: &str) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            team: Some(team.into()),
            key_sha256: Some(hex::encode(sha256(format!("mg-{name}").as_bytes()))),
            key_env: None,
            models: Vec::new(),
            rate_limit: None,
            budget: None,
            enabled: true,
            expires: None,
        }
    }

    fn team(rpm: u64, budget: Option<f64>) -> TeamConfig {
        TeamConfig {
            rate_limit: Some(RateLimitConfig {
                rpm: Some(rpm),
                tpm: None,
            }),
            budget: budget.map(|usd| BudgetConfig {
                usd,
                period: BudgetPeriod::Daily,
            }),
        }
    }

    fn team_rpm(ring: &KeyRing, snap: &Snapshot, key: &str) -> Option<u64> {
        let k = ring.find(snap, &sha256(key.as_bytes())).unwrap();
        k.team_scope.as_ref().unwrap().rpm.map(|g| g.limit())
    }

    #[test]
    fn store_teams_limit_config_and_store_keys_and_the_file_wins_a_name() {
        let s = snap("teams:\n  platform: {rate_limit: {rpm: 10}}\n");
        let ring = KeyRing::default();
        // Before the first load, keys count against the file's teams only.
        assert_eq!(team_rpm(&ring, &s, "mg-alice"), None);
        let rows = StoreRows {
            keys: vec![
                key("carol", "research"),
                key("dave", "platform"),
                key("erin", "nowhere"),
            ],
            teams: vec![
                ("research".into(), team(5, Some(1.0))),
                ("platform".into(), team(99, None)),
            ],
        };
        let warnings = ring.replace(&s, rows);
        assert!(
            warnings.len() == 1 && warnings[0].contains("store team `platform`") && warnings[0].contains("wins"),
            "{warnings:?}"
        );
        assert_eq!(ring.teams(), 1);
        assert_eq!(ring.len(), 3);
        // A config key and a store key in the store team: its limits.
        assert_eq!(team_rpm(&ring, &s, "mg-alice"), Some(5));
        assert_eq!(team_rpm(&ring, &s, "mg-carol"), Some(5));
        // The file's team wins its name, for either kind of key.
        assert_eq!(team_rpm(&ring, &s, "mg-bob"), Some(10));
        assert_eq!(team_rpm(&ring, &s, "mg-dave"), Some(10));
        // A team named nowhere: no limits, as today.
        assert_eq!(team_rpm(&ring, &s, "mg-erin"), None);
        assert!(ring.find(&s, &sha256(b"mg-nobody")).is_none());

        // Budgets are seeded and reported with the store team's period.
        let research = ring.scopes(&s).into_iter().find(|x| &*x.id == "team:research").unwrap();
        assert_eq!(research.period, BudgetPeriod::Daily);
        assert!(research.budget_nanos.is_some());
        let teams: Vec<_> = ring.team_scopes(&s).iter().map(|x| x.id.to_string()).collect();
        assert!(
            teams.contains(&"team:research".into())
                && teams.contains(&"team:platform".into())
                && teams.contains(&"team:nowhere".into()),
            "{teams:?}"
        );

        // A reloaded config that defines `research` itself: until the ring
        // is compiled again, the snapshot's own entries; then the file wins.
        let reloaded = snap("teams:\n  platform: {rate_limit: {rpm: 10}}\n  research: {rate_limit: {rpm: 7}}\n");
        assert_eq!(team_rpm(&ring, &reloaded, "mg-alice"), Some(7));
        let warnings = ring.recompile(&reloaded);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(team_rpm(&ring, &reloaded, "mg-alice"), Some(7));
        assert_eq!(team_rpm(&ring, &reloaded, "mg-carol"), Some(7));
        assert_eq!(ring.teams(), 0);

        // The store team deleted: its keys go back to no team limits.
        ring.replace(
            &s,
            StoreRows {
                keys: vec![key("carol", "research")],
                teams: Vec::new(),
            },
        );
        assert_eq!(team_rpm(&ring, &s, "mg-alice"), None);
        assert_eq!(team_rpm(&ring, &s, "mg-carol"), None);
    }
}
