//! `modelgate teams create|list|update|delete`: teams kept in a PostgreSQL
//! store (`store.url`, table `gateway_teams`, `store::teams`), written
//! without a config edit or a reload; every running replica applies a
//! change within seconds. A key joins a team by naming it (`keys create
//! --team T`), whether the key and the team live in the file or the store.
//!
//! The config file's `teams:` stay read-only here and win over a store team
//! of the same name. With an SQLite store there are no run-time teams:
//! these commands say to edit `teams:` instead.
//!
//! Exit codes as for `keys`: 1 refused (bad input, a duplicate name, an
//! unknown team, a team of the file), 2 the config or the store could not
//! be read or written, or the store is not PostgreSQL.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::failure::{finish, Failure};
use super::keys;
use super::keys_store::operator;
use crate::config::schema::{BudgetPeriod, Config, TeamConfig};
use crate::policy::period::{period_name, rfc3339};
use crate::store::postgres::Target;
use crate::store::teams::{StoredTeam, TeamChange, TeamError, TeamStore};
use crate::store::Location;

#[derive(Subcommand, Debug)]
pub enum TeamsCommand {
    /// Create a team in the PostgreSQL store, with optional limits.
    ///
    /// Keys that name the team (`keys create NAME --team TEAM`, in the file
    /// or the store) count against its rate limit and budget on every
    /// gateway on this store within seconds, without a reload. A name the
    /// config file's `teams:` already has is refused.
    #[command(after_long_help = "\
Examples:
  modelgate teams create platform --rpm 2000 --budget-usd 5000 --period monthly
  modelgate teams create research --tpm 1000000")]
    Create(CreateArgs),

    /// List the teams: the config file's and the store's, with their limits.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list deleted store teams.
        #[arg(long)]
        all: bool,
    },

    /// Change a store team's limits; the `--no-…` flags clear one.
    #[command(after_long_help = "\
Examples:
  modelgate teams update platform --rpm 4000 --no-budget
  modelgate teams update research --budget-usd 300 --period weekly --no-tpm")]
    Update(UpdateArgs),

    /// Delete a store team. Its keys keep working, without team limits.
    #[command(after_long_help = "Example:\n  modelgate teams delete research")]
    Delete {
        /// The team's name, as `teams list` shows it.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// A name for the team: letters, digits and `. _ @ -`, at most 64
    /// characters.
    name: String,
    /// Requests per minute, shared by every key of the team.
    #[arg(long, value_name = "N")]
    rpm: Option<u64>,
    /// Tokens (input + output + cache) per minute, shared by every key of the team.
    #[arg(long, value_name = "N")]
    tpm: Option<u64>,
    /// Spending limit in US dollars, shared by every key of the team.
    #[arg(long, value_name = "USD")]
    budget_usd: Option<f64>,
    /// The budget's period: daily, weekly, monthly (default) or total.
    #[arg(long, value_name = "PERIOD", requires = "budget_usd")]
    period: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The team's name, as `teams list` shows it.
    name: String,
    /// A new requests-per-minute limit.
    #[arg(long, value_name = "N", conflicts_with_all = ["no_rpm", "no_rate_limit"])]
    rpm: Option<u64>,
    /// A new tokens-per-minute limit.
    #[arg(long, value_name = "N", conflicts_with_all = ["no_tpm", "no_rate_limit"])]
    tpm: Option<u64>,
    /// Remove the rpm limit.
    #[arg(long)]
    no_rpm: bool,
    /// Remove the tpm limit.
    #[arg(long)]
    no_tpm: bool,
    /// Remove the rpm and tpm limits.
    #[arg(long)]
    no_rate_limit: bool,
    /// A new budget in US dollars (with `--period`).
    #[arg(long, value_name = "USD", conflicts_with = "no_budget")]
    budget_usd: Option<f64>,
    /// The new budget's period: daily, weekly, monthly (default) or total.
    #[arg(long, value_name = "PERIOD", requires = "budget_usd")]
    period: Option<String>,
    /// Remove the budget.
    #[arg(long)]
    no_budget: bool,
}

pub fn run(config: Option<PathBuf>, command: TeamsCommand) -> i32 {
    let path = super::config_path(config);
    finish(run_on(&path, command))
}

fn run_on(path: &Path, command: TeamsCommand) -> Result<(), Failure> {
    let (config, target) = target(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::config(format!("cannot start a runtime: {e}")))?;
    let file = FileTeams { path, config: &config };
    runtime.block_on(async {
        let store = TeamStore::connect(&target)
            .await
            .map_err(|e| Failure::config(e.to_string()))?;
        match command {
            TeamsCommand::Create(args) => create(&file, &target, &store, args).await,
            TeamsCommand::List { json, all } => list(&file, &store, json, all).await,
            TeamsCommand::Update(args) => update(&file, &target, &store, args).await,
            TeamsCommand::Delete { name } => delete(&file, &target, &store, &name).await,
        }
    })
}

/// The config at `path` and its PostgreSQL store; a clear refusal for any
/// other store.
fn target(path: &Path) -> Result<(Config, Target), Failure> {
    let config = crate::config::load::load_file(path).map_err(|e| {
        let e = e.to_string();
        Failure::config(if e.contains(&path.display().to_string()) {
            e
        } else {
            format!("{}: {e}", path.display())
        })
    })?;
    match Location::of(&config.store, &config.state) {
        Ok(Location::Postgres { target, .. }) => Ok((config, *target)),
        Ok(Location::Sqlite(_)) => Err(Failure::config(format!(
            "teams created at run time need a PostgreSQL store (`store.url: postgres://…`), and {} uses SQLite; \
             edit `teams:` in that file instead (a running gateway reloads it)",
            path.display()
        ))),
        Err(e) => Err(Failure::config(format!("{}: {e}", path.display()))),
    }
}

/// The config file's own teams (read-only here; they win over the store's).
struct FileTeams<'a> {
    path: &'a Path,
    config: &'a Config,
}

impl FileTeams<'_> {
    fn refuse(&self, name: &str) -> Result<(), Failure> {
        if self.config.teams.contains_key(name) {
            return Err(Failure::user(format!(
                "team `{name}` is in {} (`teams:`), which the store does not change: edit its entry there",
                self.path.display()
            )));
        }
        Ok(())
    }
}

fn store_err(e: TeamError) -> Failure {
    match e {
        TeamError::Store(e) => Failure::config(e.to_string()),
        other => Failure::user(other.to_string()),
    }
}

fn check_name(name: &str) -> Result<(), Failure> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(Failure::user(format!(
            "invalid team name `{}`: use 1 to 64 letters, digits and `. _ @ -` (e.g. platform)",
            name.escape_debug()
        )));
    }
    Ok(())
}

fn check_limits(rpm: Option<u64>, tpm: Option<u64>) -> Result<(), Failure> {
    if rpm == Some(0) || tpm == Some(0) {
        return Err(Failure::user(
            "--rpm and --tpm must be at least 1 (leave one out, or use --no-rpm/--no-tpm, for no limit)",
        ));
    }
    Ok(())
}

fn budget(usd: Option<f64>, period: Option<&str>) -> Result<Option<(f64, BudgetPeriod)>, Failure> {
    usd.map(|usd| keys::budget_of(usd, period))
        .transpose()
        .map_err(|e| Failure::user(e.replace("--budget", "--budget-usd/--period")))
}

async fn create(file: &FileTeams<'_>, target: &Target, store: &TeamStore, args: CreateArgs) -> Result<(), Failure> {
    check_name(&args.name)?;
    check_limits(args.rpm, args.tpm)?;
    let budget = budget(args.budget_usd, args.period.as_deref())?;
    file.refuse(&args.name)?;
    let now = chrono::Utc::now().timestamp_millis();
    let by = operator();
    let team = StoredTeam {
        name: args.name.clone(),
        rpm: args.rpm,
        tpm: args.tpm,
        budget,
        created_at_ms: now,
        created_by: by.clone(),
        updated_at_ms: now,
        updated_by: by,
        deleted_at_ms: None,
        deleted_by: None,
    };
    store.create(team).await.map_err(store_err)?;
    eprintln!(
        "Created team `{}` in {}. Every gateway on this store applies it to the keys that name it within seconds (no reload needed).",
        args.name,
        target.describe()
    );
    if file.config.keys.is_none() {
        eprintln!(
            "Note: {} has no `keys:` section, so its gateways run in passthrough-auth mode and apply no key or team limits; add `keys: []` to turn gateway keys on.",
            file.path.display()
        );
    }
    Ok(())
}

/// How many keys (the file's and the store's active ones) name each team.
async fn members(file: &FileTeams<'_>, store: &TeamStore) -> Result<std::collections::HashMap<String, usize>, Failure> {
    let mut n = std::collections::HashMap::new();
    let stored = store
        .keys()
        .list(false)
        .await
        .map_err(|e| Failure::config(e.to_string()))?;
    let file_teams = file.config.keys.iter().flatten().filter_map(|k| k.team.clone());
    for team in file_teams.chain(stored.into_iter().filter_map(|k| k.team)) {
        *n.entry(team).or_insert(0) += 1;
    }
    Ok(n)
}

async fn list(file: &FileTeams<'_>, store: &TeamStore, json: bool, all: bool) -> Result<(), Failure> {
    let stored = store.list(all).await.map_err(|e| Failure::config(e.to_string()))?;
    let members = members(file, store).await?;
    let count = |name: &str| members.get(name).copied().unwrap_or(0);
    let shadowed = |t: &StoredTeam| t.deleted_at_ms.is_none() && file.config.teams.contains_key(&t.name);
    if json {
        let mut rows: Vec<serde_json::Value> = file
            .config
            .teams
            .iter()
            .map(|(name, t)| config_json_row(name, t, count(name)))
            .collect();
        rows.extend(stored.iter().map(|t| {
            let mut v = json_row(t, count(&t.name));
            if shadowed(t) {
                v["state"] = "shadowed".into();
            }
            v
        }));
        out!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    let dash = || "-".to_string();
    let header = [
        "NAME", "SOURCE", "STATE", "RPM", "TPM", "BUDGET", "KEYS", "CREATED", "UPDATED",
    ]
    .map(String::from);
    let mut rows: Vec<[String; 9]> = vec![header];
    for (name, t) in &file.config.teams {
        let rate = t.rate_limit.as_ref();
        rows.push([
            name.clone(),
            "config".into(),
            "active".into(),
            rate.and_then(|r| r.rpm).map_or_else(dash, |n| n.to_string()),
            rate.and_then(|r| r.tpm).map_or_else(dash, |n| n.to_string()),
            t.budget
                .as_ref()
                .map_or_else(dash, |b| format!("${}/{}", b.usd, period_name(b.period))),
            count(name).to_string(),
            dash(),
            dash(),
        ]);
    }
    for t in &stored {
        rows.push([
            t.name.clone(),
            "store".into(),
            if shadowed(t) { "shadowed" } else { state(t) }.into(),
            t.rpm.map_or_else(dash, |n| n.to_string()),
            t.tpm.map_or_else(dash, |n| n.to_string()),
            t.budget
                .map_or_else(dash, |(usd, p)| format!("${usd}/{}", period_name(p))),
            count(&t.name).to_string(),
            format!("{} by {}", rfc3339(t.created_at_ms), t.created_by),
            format!("{} by {}", rfc3339(t.updated_at_ms), t.updated_by),
        ]);
    }
    if rows.len() == 1 {
        eprintln!("No teams in the config file or the store.");
        return Ok(());
    }
    keys::print_table(&rows);
    if stored.iter().any(shadowed) {
        eprintln!("(shadowed: the config file has a team of that name, which wins)");
    }
    Ok(())
}

fn state(t: &StoredTeam) -> &'static str {
    if t.deleted_at_ms.is_some() {
        "deleted"
    } else {
        "active"
    }
}

fn config_json_row(name: &str, t: &TeamConfig, keys: usize) -> serde_json::Value {
    let rate = t.rate_limit.as_ref();
    serde_json::json!({
        "name": name,
        "source": "config",
        "state": "active",
        "rpm": rate.and_then(|r| r.rpm),
        "tpm": rate.and_then(|r| r.tpm),
        "budget": t.budget.as_ref().map(|b| serde_json::json!({"usd": b.usd, "period": period_name(b.period)})),
        "keys": keys,
    })
}

fn json_row(t: &StoredTeam, keys: usize) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "source": "store",
        "state": state(t),
        "rpm": t.rpm,
        "tpm": t.tpm,
        "budget": t.budget.map(|(usd, p)| serde_json::json!({"usd": usd, "period": period_name(p)})),
        "keys": keys,
        "created": rfc3339(t.created_at_ms),
        "created_by": t.created_by,
        "updated": rfc3339(t.updated_at_ms),
        "updated_by": t.updated_by,
        "deleted": t.deleted_at_ms.map(rfc3339),
        "deleted_by": t.deleted_by,
    })
}

async fn update(file: &FileTeams<'_>, target: &Target, store: &TeamStore, args: UpdateArgs) -> Result<(), Failure> {
    file.refuse(&args.name)?;
    check_limits(args.rpm, args.tpm)?;
    let mut change = TeamChange::default();
    if args.no_rate_limit || args.no_rpm {
        change.rpm = Some(None);
    } else if let Some(n) = args.rpm {
        change.rpm = Some(Some(n));
    }
    if args.no_rate_limit || args.no_tpm {
        change.tpm = Some(None);
    } else if let Some(n) = args.tpm {
        change.tpm = Some(Some(n));
    }
    if args.no_budget {
        change.budget = Some(None);
    } else if let Some(b) = budget(args.budget_usd, args.period.as_deref())? {
        change.budget = Some(Some(b));
    }
    if change.rpm.is_none() && change.tpm.is_none() && change.budget.is_none() {
        return Err(Failure::user(
            "nothing to change: give --rpm, --tpm, --budget-usd, or --no-rpm, --no-tpm, --no-rate-limit, --no-budget",
        ));
    }
    let t = store.update(&args.name, change, &operator()).await.map_err(store_err)?;
    eprintln!(
        "Updated team `{}` in {}. Every gateway on this store applies it within seconds.",
        t.name,
        target.describe()
    );
    Ok(())
}

async fn delete(file: &FileTeams<'_>, target: &Target, store: &TeamStore, name: &str) -> Result<(), Failure> {
    file.refuse(name)?;
    store.delete(name, &operator()).await.map_err(store_err)?;
    eprintln!(
        "Deleted team `{name}` in {}. Every gateway on this store lifts its limits within seconds.",
        target.describe()
    );
    let left = members(file, store).await?.get(name).copied().unwrap_or(0);
    if left > 0 {
        eprintln!(
            "Note: {left} key(s) still name team `{name}`; they keep working, without team limits or budget, and their usage is still reported under that team name."
        );
    }
    Ok(())
}
