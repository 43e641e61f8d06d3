//! `modelgate keys create|list|revoke|update`: developers' gateway keys,
//! kept in the config file's `keys:` section, or, with a PostgreSQL store
//! (`store.url`), in the store (`keys_store`), where every replica sees a
//! change within seconds without a config edit or a reload.
//!
//! A key is shown once, when it is created, and only its sha256 is stored.
//! Every change goes through `config::edit`: comments and order survive, the
//! result is validated as `serve` would load it, and the file is replaced
//! atomically, so a running gateway's hot reload sees the old file or the new
//! one, never half of one.
//!
//! Exit codes: 0 done; 1 the request was refused (bad name or budget, a
//! duplicate, an unknown key, a change that would not load); 2 the config
//! file could not be read, parsed or written.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rand::RngCore;

use crate::config::edit::{self, EditError};
use crate::config::schema::{BudgetPeriod, KeyConfig};
use crate::policy::period::{period_name, rfc3339};
use crate::runtime::snapshot::sha256;

use super::failure::{finish, Failure};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a gateway key: print it once, store only its sha256.
    ///
    /// The key is `mg-` followed by 43 base62 characters (256 bits from the
    /// operating system's random generator). It is printed on stdout, alone on
    /// one line, so `KEY=$(modelgate keys create alice)` captures it; notes go
    /// to stderr. Only its sha256 is written to the config file, so the key
    /// cannot be shown again: if it is lost, revoke it and create another.
    ///
    /// The entry is appended to `keys:` (created if absent); the rest of the
    /// file, comments included, is left as it was. The result is validated as
    /// `serve` would load it before anything is written. A running gateway
    /// accepts the key after its next reload: automatic when the file
    /// changes, or send it SIGHUP.
    ///
    /// The first key ends passthrough-auth mode: from then on every client
    /// needs a gateway key.
    #[command(after_long_help = "\
Examples:
  modelgate keys create alice --team platform
  modelgate keys create ci-bot --budget 50/daily --rpm 60 --model 'claude-haiku-*'
  KEY=$(modelgate keys create bob -c /etc/modelgate.yaml)")]
    Create(CreateArgs),

    /// List the gateway keys: name, team, limits, budget. Never a secret.
    ///
    /// The KEY column says where the secret lives: `hashed` (only its sha256
    /// is in the file) or `env:VAR` (a `key_env` entry, the key in that
    /// environment variable). Hashes and keys are never printed.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// With a PostgreSQL store: also list revoked keys.
        #[arg(long)]
        all: bool,
    },

    /// Change a key kept in a PostgreSQL store (team, models, limits, budget,
    /// expiry); the key itself stays the same. Keys in the config file are
    /// edited in the file.
    #[command(after_long_help = "\
Examples:
  modelgate keys update alice --rpm 120 --budget-usd 300 --period monthly
  modelgate keys update ci-bot --expires 30d
  modelgate keys update bob --models 'claude-*' --no-budget")]
    Update(UpdateArgs),

    /// Revoke a key: remove its entry from the config file.
    ///
    /// A running gateway refuses the key (401 "invalid gateway key") after its
    /// next reload: automatic when the file changes, or send it SIGHUP; a
    /// restarted gateway refuses it from the start. Comments around the entry
    /// are kept, except those indented inside it. Revoking the last key leaves
    /// `keys: []`, which refuses every request; delete that line to go back to
    /// passthrough-auth mode.
    #[command(after_long_help = "Example:\n  modelgate keys revoke alice")]
    Revoke {
        /// The key's name, as `keys list` shows it.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// A name for the key, unique in the file: letters, digits and `. _ @ -`,
    /// at most 64 characters (e.g. a person's login or email address).
    pub(super) name: String,
    /// The team the key's usage and team limits count against.
    #[arg(long, value_name = "TEAM")]
    pub(super) team: Option<String>,
    /// Spending limit, `USD/PERIOD` with PERIOD one of daily, weekly, monthly,
    /// total. A bare amount is monthly: `--budget 50` = `--budget 50/monthly`.
    #[arg(long, value_name = "USD/PERIOD")]
    pub(super) budget: Option<String>,
    /// Requests per minute allowed to this key.
    #[arg(long, value_name = "N")]
    pub(super) rpm: Option<u64>,
    /// Tokens (input + output) per minute allowed to this key.
    #[arg(long, value_name = "N")]
    pub(super) tpm: Option<u64>,
    /// Allow only models matching this glob (repeatable), e.g. 'claude-*'.
    /// Without it the key may use every model.
    #[arg(long = "model", value_name = "GLOB")]
    pub(super) models: Vec<String>,
    /// The same as `--model`, as one comma-separated list.
    #[arg(long = "models", value_name = "GLOB,…", value_delimiter = ',')]
    pub(super) models_list: Vec<String>,
    /// Spending limit in US dollars (with `--period`; the same as `--budget USD/PERIOD`).
    #[arg(long, value_name = "USD", conflicts_with = "budget")]
    pub(super) budget_usd: Option<f64>,
    /// The budget's period: daily, weekly, monthly (default) or total.
    #[arg(long, value_name = "PERIOD", requires = "budget_usd")]
    pub(super) period: Option<String>,
    /// The key stops working this long from now (`30d`, `12h`) or at this
    /// RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    pub(super) expires: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The key's name, as `keys list` shows it.
    pub name: String,
    #[arg(long, value_name = "TEAM", conflicts_with = "no_team")]
    pub team: Option<String>,
    /// Take the key out of its team.
    #[arg(long)]
    pub no_team: bool,
    /// Replace the model allowlist (comma-separated globs); `*` allows every model.
    #[arg(long = "models", value_name = "GLOB,…", value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Remove the rpm and tpm limits.
    #[arg(long, conflicts_with_all = ["rpm", "tpm"])]
    pub no_rate_limit: bool,
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
    #[arg(long, value_name = "PERIOD", requires = "budget_usd")]
    pub period: Option<String>,
    /// Remove the budget.
    #[arg(long, conflicts_with = "budget_usd")]
    pub no_budget: bool,
    /// A new expiry (`30d`, or an RFC 3339 time).
    #[arg(long, value_name = "DURATION|TIME", conflicts_with = "no_expiry")]
    pub expires: Option<String>,
    /// The key never expires.
    #[arg(long)]
    pub no_expiry: bool,
}

pub fn run(config: Option<PathBuf>, command: KeysCommand) -> i32 {
    let path = super::config_path(config);
    let result = match super::keys_store::target(&path) {
        Ok(Some((config, target))) => super::keys_store::run(&path, &config, &target, command),
        Ok(None) => match command {
            KeysCommand::Create(args) => create(&path, args),
            KeysCommand::List { json, .. } => list(&path, json),
            KeysCommand::Revoke { name } => revoke(&path, &name),
            KeysCommand::Update(args) => Err(Failure::user(format!(
                "`keys update` changes keys kept in a PostgreSQL store (`store.url`); key `{}` is in {}: edit its entry there",
                args.name,
                path.display()
            ))),
        },
        Err(e) => Err(e),
    };
    finish(result)
}

/// What `keys create` asks for, checked: the budget, the allowlist, the
/// expiry (Unix ms).
pub(super) struct Checked {
    pub budget: Option<(f64, BudgetPeriod)>,
    pub models: Vec<String>,
    pub expires_at_ms: Option<i64>,
}

pub(super) fn check_create(args: &CreateArgs) -> Result<Checked, Failure> {
    check_name(&args.name)?;
    let budget = match (args.budget.as_deref(), args.budget_usd) {
        (Some(b), _) => Some(parse_budget(b).map_err(Failure::user)?),
        (None, Some(usd)) => Some(budget_of(usd, args.period.as_deref()).map_err(Failure::user)?),
        (None, None) => None,
    };
    if args.rpm == Some(0) || args.tpm == Some(0) {
        return Err(Failure::user(
            "--rpm and --tpm must be at least 1 (to stop a key, revoke it)",
        ));
    }
    if args.team.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(Failure::user("--team must not be empty"));
    }
    let models: Vec<String> = args.models.iter().chain(&args.models_list).cloned().collect();
    if models.iter().any(|m| m.trim().is_empty()) {
        return Err(Failure::user(
            "--model must not be empty; give a glob such as 'claude-*'",
        ));
    }
    let expires_at_ms = args
        .expires
        .as_deref()
        .map(parse_expiry)
        .transpose()
        .map_err(Failure::user)?;
    Ok(Checked {
        budget,
        models,
        expires_at_ms,
    })
}

/// `--budget-usd X --period P`.
pub(super) fn budget_of(usd: f64, period: Option<&str>) -> Result<(f64, BudgetPeriod), String> {
    parse_budget(&format!("{usd}/{}", period.unwrap_or("monthly")))
}

/// `30d` from now, or an RFC 3339 time; Unix ms. A time in the past is refused.
pub(super) fn parse_expiry(s: &str) -> Result<i64, String> {
    let now = chrono::Utc::now().timestamp_millis();
    let at = if let Ok(d) = humantime::parse_duration(s.trim()) {
        now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    } else if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        t.timestamp_millis()
    } else {
        return Err(format!(
            "invalid --expires `{}`: give a duration from now (30d, 12h) or an RFC 3339 time (2027-03-31T00:00:00Z)",
            s.escape_debug()
        ));
    };
    if at <= now {
        return Err(format!("--expires `{}` is in the past", s.escape_debug()));
    }
    Ok(at)
}

// ---------------------------------------------------------------------------
// create

fn create(path: &Path, args: CreateArgs) -> Result<(), Failure> {
    let checked = check_create(&args)?;
    let key =
        new_key().map_err(|e| Failure::config(format!("cannot read the operating system's random generator: {e}")))?;
    let entry = render_entry(&args, &hex::encode(sha256(key.as_bytes())), &checked);

    let mut first = false;
    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        let names = edit::list_field_values(text, "keys", "name")?;
        if names.as_ref().is_some_and(|n| n.contains(&args.name)) {
            return Err(EditError::Refused(format!(
                "{}: a key named `{}` already exists; pick another name, or `modelgate keys revoke {}` first",
                path.display(),
                args.name,
                args.name
            )));
        }
        first = names.is_none();
        edit::append_list_item(text, "keys", &entry)
    })
    .map_err(|e| Failure::edit(path, e))?;

    // Only now that the hash is on disk is the key worth printing.
    out!("{key}");
    eprintln!(
        "Created key `{}` in {}. Store it now; it is shown once (only its sha256 is kept).\n\
         A running gateway accepts it after its next config reload (automatic when the file changes, or send SIGHUP).",
        args.name,
        path.display()
    );
    if first {
        eprintln!(
            "Note: this is the first gateway key, which ends passthrough-auth mode: every client now needs a gateway key."
        );
    }
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

pub(super) fn check_name(name: &str) -> Result<(), Failure> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(Failure::user(format!(
            "invalid key name `{name}`: use 1 to 64 letters, digits and `. _ @ -` (e.g. alice or alice@example.com)"
        )));
    }
    Ok(())
}

/// `200/monthly`, `$12.5/daily`, `50` (monthly).
fn parse_budget(s: &str) -> Result<(f64, BudgetPeriod), String> {
    let bad = |why: &str| {
        format!(
            "invalid --budget `{s}`: {why}; write USD/PERIOD with PERIOD one of daily, weekly, monthly, total (e.g. 200/monthly), or a bare amount for monthly"
        )
    };
    let (amount, period) = s.split_once('/').unwrap_or((s, "monthly"));
    let amount = amount.trim();
    let usd: f64 = amount
        .strip_prefix('$')
        .unwrap_or(amount)
        .parse()
        .map_err(|_| bad("the amount is not a number"))?;
    if !usd.is_finite() || usd <= 0.0 {
        return Err(bad("the amount must be a positive number of US dollars"));
    }
    let period = match period.trim().to_ascii_lowercase().as_str() {
        "daily" => BudgetPeriod::Daily,
        "weekly" => BudgetPeriod::Weekly,
        "monthly" => BudgetPeriod::Monthly,
        "total" => BudgetPeriod::Total,
        _ => return Err(bad("unknown period")),
    };
    Ok((usd, period))
}

/// The new entry as YAML mapping lines, in the order `conf/example-full.yaml` uses.
fn render_entry(args: &CreateArgs, hash_hex: &str, checked: &Checked) -> String {
    let mut lines = vec![format!("name: {}", edit::yaml_scalar(&args.name))];
    if let Some(team) = &args.team {
        lines.push(format!("team: {}", edit::yaml_scalar(team)));
    }
    // Always quoted: an all-digit digest would otherwise read as a number.
    lines.push(format!("key_sha256: {}", edit::yaml_quote(hash_hex)));
    if !checked.models.is_empty() {
        let globs: Vec<String> = checked.models.iter().map(|m| edit::yaml_quote(m)).collect();
        lines.push(format!("models: [{}]", globs.join(", ")));
    }
    let limits: Vec<String> = [("rpm", args.rpm), ("tpm", args.tpm)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
        .collect();
    if !limits.is_empty() {
        lines.push(format!("rate_limit: {{{}}}", limits.join(", ")));
    }
    if let Some((usd, period)) = checked.budget {
        lines.push(format!("budget: {{usd: {usd}, period: {}}}", period_name(period)));
    }
    if let Some(at) = checked.expires_at_ms {
        lines.push(format!("expires: {}", edit::yaml_quote(&rfc3339(at))));
    }
    lines.join("\n")
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Digits for any 256-bit number: 62^43 > 2^256.
const KEY_DIGITS: usize = 43;

/// `mg-` + 32 bytes from the OS CSPRNG in base62, always the same length.
pub(super) fn new_key() -> Result<String, rand::Error> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    Ok(format!("mg-{}", base62(&bytes)))
}

/// Big-endian bytes as a base62 number, left-padded with `0` to 43 digits so
/// that every key has the same length.
fn base62(bytes: &[u8; 32]) -> String {
    let mut n = *bytes;
    let mut digits = Vec::with_capacity(KEY_DIGITS);
    while n.iter().any(|&b| b != 0) {
        // Long division of the whole number by 62; the remainder is the next digit.
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        digits.push(BASE62[rem as usize]);
    }
    digits.resize(KEY_DIGITS, b'0');
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

// ---------------------------------------------------------------------------
// list

fn list(path: &Path, json: bool) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::edit(
            path,
            EditError::Io {
                path: path.display().to_string(),
                source: e,
            },
        )
    })?;
    // Listing needs no secrets: an unset `${VAR}` stays as written instead of
    // failing the command (validation is `config validate`'s job).
    let lenient = |name: &str| {
        Some(
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("${{{name}}}")),
        )
    };
    let config = crate::config::load::parse_str(&text, &lenient)
        .map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    let present = config.keys.is_some();
    let keys = config.keys.unwrap_or_default();
    if json {
        let rows: Vec<serde_json::Value> = keys.iter().map(json_row).collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    if !present {
        eprintln!(
            "No `keys:` section in {}: the gateway runs in passthrough-auth mode. `modelgate keys create NAME` adds the first key.",
            path.display()
        );
        return Ok(());
    }
    if keys.is_empty() {
        eprintln!(
            "No keys in {} (`keys: []`): the gateway refuses every request.",
            path.display()
        );
        return Ok(());
    }
    let header = ["NAME", "TEAM", "ENABLED", "KEY", "MODELS", "RPM", "TPM", "BUDGET"].map(String::from);
    let rows: Vec<[String; 8]> = std::iter::once(header).chain(keys.iter().map(table_row)).collect();
    print_table(&rows);
    Ok(())
}

/// Rows as left-aligned columns two spaces apart (the first row is the
/// header), without trailing blanks.
pub(super) fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: String = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}  "))
            .collect();
        out!("{}", line.trim_end());
    }
}

/// Where the key's secret lives, never the secret or its hash.
fn key_source(k: &KeyConfig) -> String {
    match (&k.key_env, &k.key_sha256) {
        (Some(var), _) => format!("env:{var}"),
        (None, Some(_)) => "hashed".into(),
        (None, None) => "missing".into(),
    }
}

fn budget_text(k: &KeyConfig) -> Option<String> {
    k.budget
        .as_ref()
        .map(|b| format!("${}/{}", b.usd, period_name(b.period)))
}

pub(super) fn table_row(k: &KeyConfig) -> [String; 8] {
    let dash = || "-".to_string();
    let limit = |f: fn(&crate::config::schema::RateLimitConfig) -> Option<u64>| {
        k.rate_limit.as_ref().and_then(f).map_or_else(dash, |n| n.to_string())
    };
    [
        k.name.clone(),
        k.team.clone().unwrap_or_else(dash),
        if k.enabled { "yes" } else { "no" }.into(),
        key_source(k),
        if k.models.is_empty() {
            "*".into()
        } else {
            k.models.join(",")
        },
        limit(|r| r.rpm),
        limit(|r| r.tpm),
        budget_text(k).unwrap_or_else(dash),
    ]
}

pub(super) fn json_row(k: &KeyConfig) -> serde_json::Value {
    let rl = k.rate_limit.as_ref();
    serde_json::json!({
        "name": k.name,
        "team": k.team,
        "enabled": k.enabled,
        "key": key_source(k),
        "models": k.models,
        "rpm": rl.and_then(|r| r.rpm),
        "tpm": rl.and_then(|r| r.tpm),
        "budget": k.budget.as_ref().map(|b| serde_json::json!({"usd": b.usd, "period": period_name(b.period)})),
    })
}

// ---------------------------------------------------------------------------
// revoke

fn revoke(path: &Path, name: &str) -> Result<(), Failure> {
    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        edit::remove_list_item(text, "keys", "name", name)
    })
    .map_err(|e| match e {
        EditError::NotFound { available, .. } => Failure::user(if available.is_empty() {
            format!("no key named `{name}` in {}: it has no keys", path.display())
        } else {
            format!(
                "no key named `{name}` in {}; its keys: {} (see `modelgate keys list`)",
                path.display(),
                available.join(", ")
            )
        }),
        e => Failure::edit(path, e),
    })?;
    eprintln!(
        "Revoked key `{name}`: removed from {}. A running gateway refuses it after its next config reload (automatic when the file changes, or send SIGHUP).",
        path.display()
    );
    let left = edit::list_field_values(&edited.after, "keys", "name").ok().flatten();
    if left.is_some_and(|l| l.is_empty()) {
        eprintln!(
            "Note: that was the last key. `keys: []` makes the gateway refuse every request; delete that line to return to passthrough-auth mode."
        );
    }
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_is_fixed_width_big_endian() {
        assert_eq!(base62(&[0; 32]), "0".repeat(43));
        let mut one = [0u8; 32];
        one[31] = 61;
        assert_eq!(base62(&one), format!("{}z", "0".repeat(42)));
        one[31] = 62;
        assert_eq!(base62(&one), format!("{}10", "0".repeat(41)));
        // Reference values computed with Python's arbitrary-precision ints.
        assert_eq!(base62(&[0xff; 32]), "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1");
        let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(base62(&counting), "003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf");
    }

    #[test]
    fn keys_are_random_and_well_formed() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        for k in [a, b] {
            assert_eq!(k.len(), 46, "{k}");
            assert!(
                k.starts_with("mg-") && k[3..].bytes().all(|c| c.is_ascii_alphanumeric()),
                "{k}"
            );
        }
    }

    #[test]
    fn budgets_parse_with_a_monthly_default() {
        assert!(matches!(parse_budget("200/monthly"), Ok((u, BudgetPeriod::Monthly)) if u == 200.0));
        assert!(matches!(parse_budget("$12.5/Daily"), Ok((u, BudgetPeriod::Daily)) if u == 12.5));
        assert!(matches!(parse_budget("50"), Ok((u, BudgetPeriod::Monthly)) if u == 50.0));
        assert!(matches!(parse_budget("7/total"), Ok((_, BudgetPeriod::Total))));
        for bad in ["", "abc", "200/yearly", "-5/daily", "0", "inf", "NaN/daily", "5/"] {
            let e = parse_budget(bad).unwrap_err();
            assert!(e.contains("USD/PERIOD"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_checked() {
        for ok in ["alice", "alice@example.com", "ci-bot_2.x", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "a:b", "ü", &"a".repeat(65), "a#b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_render_as_the_spec_writes_them() {
        let args = CreateArgs {
            name: "123".into(),
            team: Some("platform".into()),
            budget: None,
            rpm: Some(120),
            tpm: Some(400000),
            models: vec!["claude-*".into()],
            models_list: vec!["gpt-4o".into()],
            budget_usd: Some(200.0),
            period: None,
            expires: None,
        };
        let Ok(checked) = check_create(&args) else {
            panic!("valid arguments")
        };
        let digest = "1".repeat(64);
        let text = render_entry(&args, &digest, &checked);
        assert_eq!(
            text,
            format!(
                "name: \"123\"\nteam: platform\nkey_sha256: \"{digest}\"\nmodels: [\"claude-*\", \"gpt-4o\"]\nrate_limit: {{rpm: 120, tpm: 400000}}\nbudget: {{usd: 200, period: monthly}}"
            )
        );
        let parsed: KeyConfig = serde_yaml::from_str(&text).unwrap();
        assert_eq!(parsed.name, "123");
        assert_eq!(parsed.key_sha256.as_deref(), Some(digest.as_str()));
        assert_eq!(parsed.budget.unwrap().usd, 200.0);
    }
}
