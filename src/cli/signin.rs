//! `modelgate signin status`: is sign-in set up right (the identity
//! provider's discovery document, the callback URL to register there, the
//! group policies); `modelgate sessions list|revoke`: developers' sign-ins,
//! kept in the store (`store::signin`), ended at once by an administrator.
//!
//! A revoked session's tokens are refused by every gateway on the store
//! within seconds (PostgreSQL announces it; an SQLite gateway reads the
//! revocations every 3 s). Exit codes as for `keys`: 1 refused (nothing
//! to revoke, no `signin:`), 2 the config, the store or the identity
//! provider is the problem.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::failure::{finish, Failure};
use super::keys_store::operator;
use crate::policy::period::{now_ms, rfc3339};
use crate::signin::idp::Idp;
use crate::store::signin::{RevokeBy, Session, SigninStore};
use crate::store::Location;

#[derive(Subcommand, Debug)]
pub enum SigninCommand {
    /// Check the sign-in setup: the identity provider's discovery, the
    /// callback URL to register at it, who may sign in and what they get.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List developers' sign-ins (active ones, newest first).
    #[command(after_long_help = "\
Examples:
  modelgate sessions list
  modelgate sessions list ada@corp.example --all")]
    List {
        /// Only this developer's (their email).
        user: Option<String>,
        /// Also those that ended or were revoked (kept 30 days).
        #[arg(long)]
        all: bool,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End every active sign-in of a developer now: their tokens stop
    /// working on every gateway on this store within seconds, and Claude
    /// Code asks them to sign in again.
    #[command(after_long_help = "Example:\n  modelgate sessions revoke ada@corp.example --reason offboarded")]
    Revoke {
        /// The developer's email, as `sessions list` shows it.
        user: String,
        /// Why, kept with the sessions.
        #[arg(long, default_value = "revoked by an administrator")]
        reason: String,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::config(format!("cannot start a runtime: {e}")))
}

pub fn run_signin(config: Option<PathBuf>, command: SigninCommand) -> i32 {
    let path = super::config_path(config);
    match command {
        SigninCommand::Status { json } => finish(status(&path, json)),
    }
}

pub fn run_sessions(config: Option<PathBuf>, command: SessionsCommand) -> i32 {
    let path = super::config_path(config);
    finish(sessions(&path, command))
}

fn status(path: &Path, json: bool) -> Result<(), Failure> {
    let snap = super::load_snapshot(path, |_| {}).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    let Some(signin) = snap.signin.clone() else {
        return Err(Failure::user(format!(
            "{} has no `signin:` section: developers use gateway keys only",
            path.display()
        )));
    };
    let discovered = runtime()?.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(15), Idp::discover(signin.idp.clone())).await
    });
    let discovery = match discovered {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{} did not answer within 15 s", signin.idp.issuer)),
    };
    let policies: Vec<serde_json::Value> = signin
        .policies
        .iter()
        .map(|p| {
            serde_json::json!({
                "group": p.group,
                "team": p.team,
                "models": p.models_text,
                "budget_usd": p.budget.as_ref().map(|b| b.usd),
                "budget_period": p.budget.as_ref().map(|b| crate::policy::period::period_name(b.period)),
                "managed_settings": p.settings.as_ref().map(|s| s.etag.trim_matches('"').to_string()),
            })
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "public_url": signin.public_url,
            "callback_url": signin.idp.redirect_uri,
            "issuer": signin.idp.issuer,
            "client_id": signin.idp.client_id,
            "scopes": signin.idp.scopes,
            "discovery": match &discovery { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
            "allowed_groups": signin.allowed_groups(),
            "access_token_ttl_s": signin.access_ttl.as_secs(),
            "groups": policies,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("public URL:        {}", signin.public_url);
        println!(
            "callback URL:      {}   (register this at the identity provider)",
            signin.idp.redirect_uri
        );
        println!(
            "identity provider: {} (client `{}`)",
            signin.idp.issuer, signin.idp.client_id
        );
        match &discovery {
            Ok(()) => println!("discovery:         ok"),
            Err(e) => println!("discovery:         FAILED: {e}"),
        }
        println!("scopes:            openid {}", signin.idp.scopes.join(" "));
        let allowed = signin.allowed_groups();
        println!(
            "who may sign in:   {}",
            if allowed.is_empty() {
                "every user the identity provider authenticates".to_string()
            } else {
                format!("members of {}", allowed.join(", "))
            }
        );
        println!("access tokens:     {} s", signin.access_ttl.as_secs());
        for p in &signin.policies {
            let models = if p.models_text.is_empty() {
                "every model".to_string()
            } else {
                p.models_text.join(", ")
            };
            println!(
                "group {:<12} team {}; models {models}{}{}",
                p.group,
                p.team.as_deref().unwrap_or("-"),
                p.budget
                    .as_ref()
                    .map(|b| format!("; ${:.2} {} each", b.usd, crate::policy::period::period_name(b.period)))
                    .unwrap_or_default(),
                if p.settings.is_some() { "; managed settings" } else { "" }
            );
        }
    }
    discovery.map_err(|e| Failure::config(format!("the identity provider's discovery failed: {e}")))
}

/// The sign-in store of the config at `path`; `None` for an SQLite file
/// that does not exist yet (no one has signed in).
async fn open(path: &Path) -> Result<Option<SigninStore>, Failure> {
    let config =
        crate::config::load::load_file(path).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    if config.signin.is_none() {
        return Err(Failure::user(format!(
            "{} has no `signin:` section, so there are no sign-in sessions",
            path.display()
        )));
    }
    match Location::of(&config.store, &config.state).map_err(|e| Failure::config(format!("{}: {e}", path.display())))? {
        Location::Sqlite(file) if !file.exists() => Ok(None),
        Location::Sqlite(file) => tokio::task::spawn_blocking(move || SigninStore::sqlite(&file))
            .await
            .map_err(|e| Failure::config(e.to_string()))?
            .map(Some)
            .map_err(|e| Failure::config(e.to_string())),
        Location::Postgres { target, .. } => SigninStore::connect(&target)
            .await
            .map(Some)
            .map_err(|e| Failure::config(e.to_string())),
    }
}

fn sessions(path: &Path, command: SessionsCommand) -> Result<(), Failure> {
    runtime()?.block_on(async {
        let store = open(path).await?;
        match command {
            SessionsCommand::List { user, all, json } => {
                let rows = match &store {
                    Some(s) => s
                        .sessions(user, all, now_ms())
                        .await
                        .map_err(|e| Failure::config(e.to_string()))?,
                    None => Vec::new(),
                };
                print_sessions(&rows, json);
                Ok(())
            }
            SessionsCommand::Revoke { user, reason } => {
                let Some(store) = store else {
                    return Err(Failure::user(format!("{user} has no active sign-in")));
                };
                let ids = store
                    .revoke(RevokeBy::User(user.clone()), operator(), reason, now_ms())
                    .await
                    .map_err(|e| Failure::config(e.to_string()))?;
                if ids.is_empty() {
                    return Err(Failure::user(format!(
                        "{user} has no active sign-in (see `modelgate sessions list`)"
                    )));
                }
                println!(
                    "revoked {} sign-in{} of {user}: every gateway on this store refuses their tokens within seconds",
                    ids.len(),
                    if ids.len() == 1 { "" } else { "s" }
                );
                Ok(())
            }
        }
    })
}

fn state(s: &Session, now: i64) -> String {
    match (&s.revoked_ms, &s.revoked_why) {
        (Some(at), why) => format!("revoked {} ({})", rfc3339(*at), why.as_deref().unwrap_or("-")),
        (None, _) if s.expires_ms <= now => "ended".into(),
        _ => "active".into(),
    }
}

fn print_sessions(rows: &[Session], json: bool) {
    let now = now_ms();
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|s| {
                serde_json::json!({
                    "user": s.identity.email.as_deref().unwrap_or(&s.identity.subject),
                    "subject": s.identity.subject,
                    "groups": s.identity.groups,
                    "surface": s.surface,
                    "signed_in": rfc3339(s.created_ms),
                    "refreshed": rfc3339(s.refreshed_ms),
                    "ends": rfc3339(s.expires_ms),
                    "revoked": s.revoked_ms.map(rfc3339),
                    "revoked_by": s.revoked_by,
                    "state": state(s, now),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    if rows.is_empty() {
        println!("no sign-ins");
        return;
    }
    println!(
        "{:<32} {:<20} {:<22} {:<22} STATE",
        "USER", "GROUPS", "SIGNED IN", "LAST REFRESH"
    );
    for s in rows {
        println!(
            "{:<32} {:<20} {:<22} {:<22} {}",
            s.identity.email.as_deref().unwrap_or(&s.identity.subject),
            s.identity.groups.join(","),
            rfc3339(s.created_ms),
            rfc3339(s.refreshed_ms),
            state(s, now)
        );
    }
}
