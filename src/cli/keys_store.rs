//! `modelgate keys` with a PostgreSQL store: keys are rows of the store's
//! `gateway_keys` table (`store::keys`), written without a config edit or a
//! reload; every running replica picks a change up within seconds. Keys in
//! the config file keep working beside them and are listed read-only.
//!
//! Exit codes as for the file-backed commands: 1 refused (bad input, a
//! duplicate name, an unknown key), 2 the config or the store could not be
//! read or written.

use std::path::Path;

use super::failure::Failure;
use super::keys::{self, CreateArgs, KeysCommand, UpdateArgs};
use crate::config::schema::Config;
use crate::policy::period::{period_name, rfc3339};
use crate::runtime::snapshot::sha256;
use crate::store::keys::{KeyChange, KeyError, KeyStore, StoredKey};
use crate::store::postgres::Target;
use crate::store::Location;

/// The config at `path` and its store's target, when it names a
/// PostgreSQL store.
pub fn target(path: &Path) -> Result<Option<(Config, Target)>, Failure> {
    let config = match crate::config::load::load_file(path) {
        Ok(c) => c,
        // Not loadable as the gateway would: the file-backed commands report
        // it in their own words (they read the file leniently).
        Err(_) => return Ok(None),
    };
    match Location::of(&config.store, &config.state) {
        Ok(Location::Postgres { target, .. }) => Ok(Some((config, *target))),
        Ok(Location::Sqlite(_)) => Ok(None),
        Err(e) => Err(Failure::config(format!("{}: {e}", path.display()))),
    }
}

pub fn run(path: &Path, config: &Config, target: &Target, command: KeysCommand) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::config(format!("cannot start a runtime: {e}")))?;
    let file = FileKeys { path, config };
    runtime.block_on(async {
        let store = KeyStore::connect(target)
            .await
            .map_err(|e| Failure::config(e.to_string()))?;
        match command {
            KeysCommand::Create(args) => create(&file, target, &store, args).await,
            KeysCommand::List { json, all } => list(&file, &store, json, all).await,
            KeysCommand::Revoke { name } => revoke(&file, target, &store, &name).await,
            KeysCommand::Update(args) => update(&file, target, &store, args).await,
        }
    })
}

/// The config file's own keys (read-only here; they win over the store's).
struct FileKeys<'a> {
    path: &'a Path,
    config: &'a Config,
}

impl FileKeys<'_> {
    fn keys(&self) -> &[crate::config::schema::KeyConfig] {
        self.config.keys.as_deref().unwrap_or_default()
    }

    fn has(&self, name: &str) -> bool {
        self.keys().iter().any(|k| k.name == name)
    }
}

/// Who made a change, for the rows' `created_by` / `revoked_by`: the
/// operator's login on this machine.
pub(super) fn operator() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

fn store_err(e: KeyError) -> Failure {
    match e {
        KeyError::Store(e) => Failure::config(e.to_string()),
        other => Failure::user(other.to_string()),
    }
}

async fn create(file: &FileKeys<'_>, target: &Target, store: &KeyStore, args: CreateArgs) -> Result<(), Failure> {
    let checked = keys::check_create(&args)?;
    let name = args.name.clone();
    if file.has(&name) {
        return Err(Failure::user(format!(
            "a key named `{name}` is in {}; pick another name",
            file.path.display()
        )));
    }
    let key = keys::new_key()
        .map_err(|e| Failure::config(format!("cannot read the operating system's random generator: {e}")))?;
    let now = chrono::Utc::now().timestamp_millis();
    let by = operator();
    let row = StoredKey {
        name: name.clone(),
        team: args.team.clone(),
        key_sha256: hex::encode(sha256(key.as_bytes())),
        models: checked.models,
        rpm: args.rpm,
        tpm: args.tpm,
        budget: checked.budget,
        expires_at_ms: checked.expires_at_ms,
        created_at_ms: now,
        created_by: by.clone(),
        updated_at_ms: now,
        updated_by: by,
        revoked_at_ms: None,
        revoked_by: None,
    };
    store.create(row).await.map_err(store_err)?;
    // Only now that the hash is stored is the key worth printing.
    out!("{key}");
    eprintln!(
        "Created key `{name}` in {}. Store it now; it is shown once (only its sha256 is kept).\n\
         Every gateway on this store accepts it within seconds (no reload needed).",
        target.describe()
    );
    if file.config.keys.is_none() {
        eprintln!(
            "Note: {} has no `keys:` section, so its gateways run in passthrough-auth mode and do not use store keys; add `keys: []` to turn gateway keys on.",
            file.path.display()
        );
    }
    warn_unknown_team(file, store, args.team.as_deref()).await;
    Ok(())
}

/// A key may name a team defined nowhere (as in the file): it works, its
/// usage is reported under that team name, and no team limits apply until
/// the team is created. Say so.
async fn warn_unknown_team(file: &FileKeys<'_>, store: &KeyStore, team: Option<&str>) {
    let Some(team) = team else { return };
    if file.config.teams.contains_key(team) {
        return;
    }
    match store.teams().list(false).await {
        Ok(teams) if teams.iter().any(|t| t.name == team) => {}
        Ok(_) => eprintln!(
            "warning: team `{team}` is neither under `teams:` in {} nor in the store: no team limits or budget apply \
             to this key until it exists (`modelgate teams create {team}`); its usage is reported under that team name.",
            file.path.display()
        ),
        Err(e) => eprintln!("warning: cannot check that team `{team}` exists: {e}"),
    }
}

async fn list(file: &FileKeys<'_>, store: &KeyStore, json: bool, all: bool) -> Result<(), Failure> {
    let stored = store.list(all).await.map_err(|e| Failure::config(e.to_string()))?;
    let config_keys = file.keys();
    if json {
        let mut rows: Vec<serde_json::Value> = config_keys
            .iter()
            .map(|k| {
                let mut v = keys::json_row(k);
                v["source"] = "config".into();
                v
            })
            .collect();
        rows.extend(stored.iter().map(json_row));
        out!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    let dash = || "-".to_string();
    let header = [
        "NAME", "SOURCE", "TEAM", "STATE", "MODELS", "RPM", "TPM", "BUDGET", "EXPIRES", "CREATED",
    ]
    .map(String::from);
    let mut rows: Vec<[String; 10]> = vec![header];
    for k in config_keys {
        let t = keys::table_row(k);
        rows.push([
            t[0].clone(),
            "config".into(),
            t[1].clone(),
            if k.enabled { "active" } else { "disabled" }.into(),
            t[4].clone(),
            t[5].clone(),
            t[6].clone(),
            t[7].clone(),
            k.expires.clone().unwrap_or_else(dash),
            dash(),
        ]);
    }
    let now = chrono::Utc::now().timestamp_millis();
    for k in &stored {
        rows.push([
            k.name.clone(),
            "store".into(),
            k.team.clone().unwrap_or_else(dash),
            state(k, now).into(),
            if k.models.is_empty() {
                "*".into()
            } else {
                k.models.join(",")
            },
            k.rpm.map_or_else(dash, |n| n.to_string()),
            k.tpm.map_or_else(dash, |n| n.to_string()),
            k.budget
                .map_or_else(dash, |(usd, p)| format!("${usd}/{}", period_name(p))),
            k.expires_at_ms.map_or_else(dash, rfc3339),
            format!("{} by {}", rfc3339(k.created_at_ms), k.created_by),
        ]);
    }
    if rows.len() == 1 {
        eprintln!("No keys in the config file or the store.");
        return Ok(());
    }
    keys::print_table(&rows);
    Ok(())
}

fn state(k: &StoredKey, now: i64) -> &'static str {
    if k.revoked_at_ms.is_some() {
        "revoked"
    } else if k.expires_at_ms.is_some_and(|at| now >= at) {
        "expired"
    } else {
        "active"
    }
}

fn json_row(k: &StoredKey) -> serde_json::Value {
    serde_json::json!({
        "name": k.name,
        "source": "store",
        "team": k.team,
        "enabled": k.revoked_at_ms.is_none(),
        "state": state(k, chrono::Utc::now().timestamp_millis()),
        "key": "hashed",
        "models": k.models,
        "rpm": k.rpm,
        "tpm": k.tpm,
        "budget": k.budget.map(|(usd, p)| serde_json::json!({"usd": usd, "period": period_name(p)})),
        "expires": k.expires_at_ms.map(rfc3339),
        "created": rfc3339(k.created_at_ms),
        "created_by": k.created_by,
        "updated": rfc3339(k.updated_at_ms),
        "updated_by": k.updated_by,
        "revoked": k.revoked_at_ms.map(rfc3339),
        "revoked_by": k.revoked_by,
    })
}

async fn revoke(file: &FileKeys<'_>, target: &Target, store: &KeyStore, name: &str) -> Result<(), Failure> {
    if file.has(name) {
        return Err(Failure::user(format!(
            "key `{name}` is in {}, not in the store: remove its entry there (or run `keys revoke` against a config without `store.url`)",
            file.path.display()
        )));
    }
    store.revoke(name, &operator()).await.map_err(store_err)?;
    eprintln!(
        "Revoked key `{name}` in {}. Every gateway on this store refuses it within seconds (401).",
        target.describe()
    );
    Ok(())
}

async fn update(file: &FileKeys<'_>, target: &Target, store: &KeyStore, args: UpdateArgs) -> Result<(), Failure> {
    let mut change = KeyChange::default();
    if args.no_team {
        change.team = Some(None);
    } else if let Some(t) = args.team {
        if t.trim().is_empty() {
            return Err(Failure::user("--team must not be empty (use --no-team)"));
        }
        change.team = Some(Some(t));
    }
    if let Some(models) = args.models {
        if models.iter().any(|m| m.trim().is_empty()) {
            return Err(Failure::user("--models must not hold an empty glob"));
        }
        change.models = Some(if models == ["*"] { Vec::new() } else { models });
    }
    if args.rpm == Some(0) || args.tpm == Some(0) {
        return Err(Failure::user(
            "--rpm and --tpm must be at least 1 (use --no-rate-limit)",
        ));
    }
    if args.no_rate_limit {
        change.rpm = Some(None);
        change.tpm = Some(None);
    } else {
        change.rpm = args.rpm.map(Some);
        change.tpm = args.tpm.map(Some);
    }
    if args.no_budget {
        change.budget = Some(None);
    } else if let Some(usd) = args.budget_usd {
        change.budget = Some(Some(
            keys::budget_of(usd, args.period.as_deref()).map_err(Failure::user)?,
        ));
    }
    if args.no_expiry {
        change.expires_at_ms = Some(None);
    } else if let Some(e) = args.expires.as_deref() {
        change.expires_at_ms = Some(Some(keys::parse_expiry(e).map_err(Failure::user)?));
    }
    let new_team = change.team.clone().flatten();
    let k = store.update(&args.name, change, &operator()).await.map_err(store_err)?;
    eprintln!(
        "Updated key `{}` in {}. Every gateway on this store applies it within seconds.",
        k.name,
        target.describe()
    );
    warn_unknown_team(file, store, new_team.as_deref()).await;
    Ok(())
}
