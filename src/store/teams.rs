//! Teams kept in a PostgreSQL store (table `gateway_teams`), which
//! `modelgate teams create|list|update|delete` write without a config edit
//! or a reload, and every replica compiles next to the config file's
//! `teams:` (`runtime::keyring`).
//!
//! A team is a name with an optional rate limit and budget; keys (in the
//! file or in the store) join it by naming it in `team`. A deleted team
//! keeps its row (who deleted it and when) and frees its name; its keys
//! keep their team name, without team limits, until a team of that name is
//! created again. Spend is tracked by team name, so a team created again
//! continues its budget period. Every change notifies
//! [`super::keys::CHANNEL`] (the keys' channel) in its own transaction.

use std::sync::Arc;

use super::keys::{budget_columns, notify, opt_i64, period_of, TIMEOUT};
use super::postgres::{Db, PgError, Target};
use crate::config::schema::{BudgetConfig, BudgetPeriod, RateLimitConfig, TeamConfig};
use crate::policy::period::now_ms;

/// One row of `gateway_teams`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTeam {
    pub name: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget: Option<(f64, BudgetPeriod)>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub updated_at_ms: i64,
    pub updated_by: String,
    pub deleted_at_ms: Option<i64>,
    pub deleted_by: Option<String>,
}

impl StoredTeam {
    /// As a config entry, for compiling next to the file's teams.
    pub fn to_config(&self) -> TeamConfig {
        TeamConfig {
            rate_limit: (self.rpm.is_some() || self.tpm.is_some()).then_some(RateLimitConfig {
                rpm: self.rpm,
                tpm: self.tpm,
            }),
            budget: self.budget.map(|(usd, period)| BudgetConfig { usd, period }),
        }
    }
}

/// What `teams update` changes; `None` leaves a field as it is,
/// `Some(None)` clears it.
#[derive(Debug, Default, Clone)]
pub struct TeamChange {
    pub rpm: Option<Option<u64>>,
    pub tpm: Option<Option<u64>>,
    pub budget: Option<Option<(f64, BudgetPeriod)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TeamError {
    #[error("a team named `{0}` already exists in the store; pick another name, or delete it first")]
    Exists(String),
    #[error("no team named `{0}` in the store")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] PgError),
}

const COLUMNS: &str = "name, rpm, tpm, budget_usd, budget_period, created_at_ms, created_by,
    updated_at_ms, updated_by, deleted_at_ms, deleted_by";

fn row(r: &tokio_postgres::Row) -> StoredTeam {
    let budget = r
        .get::<_, Option<f64>>(3)
        .map(|usd| (usd, period_of(r.get::<_, Option<&str>>(4).unwrap_or("monthly"))));
    StoredTeam {
        name: r.get(0),
        rpm: r.get::<_, Option<i64>>(1).map(|v| v.max(0) as u64),
        tpm: r.get::<_, Option<i64>>(2).map(|v| v.max(0) as u64),
        budget,
        created_at_ms: r.get(5),
        created_by: r.get(6),
        updated_at_ms: r.get(7),
        updated_by: r.get(8),
        deleted_at_ms: r.get(9),
        deleted_by: r.get(10),
    }
}

/// The teams table of a PostgreSQL store.
#[derive(Clone)]
pub struct TeamStore {
    db: Arc<Db>,
}

impl TeamStore {
    /// On an existing pool (the gateway's ledger, or a key store's).
    pub(crate) fn on(db: Arc<Db>) -> TeamStore {
        TeamStore { db }
    }

    /// Connect (and migrate): for the command line.
    pub async fn connect(target: &Target) -> Result<TeamStore, PgError> {
        let reader = super::postgres::Reader::connect(target).await?;
        Ok(TeamStore { db: reader.db() })
    }

    /// The keys table of the same store.
    pub fn keys(&self) -> super::keys::KeyStore {
        super::keys::KeyStore::on(self.db.clone())
    }

    /// Every team, the deleted ones too when `deleted`, by name.
    pub async fn list(&self, deleted: bool) -> Result<Vec<StoredTeam>, PgError> {
        self.db
            .run(TIMEOUT, move |db| async move {
                let client = db.client().await?;
                let filter = if deleted { "" } else { "WHERE deleted_at_ms IS NULL" };
                let sql = format!("SELECT {COLUMNS} FROM gateway_teams {filter} ORDER BY name, id");
                let rows = client.query(&sql, &[]).await.map_err(|e| db.query_err(e))?;
                Ok(rows.iter().map(row).collect())
            })
            .await
    }

    /// The teams in use (not deleted), as config entries by name.
    pub async fn active(&self) -> Result<Vec<(String, TeamConfig)>, PgError> {
        Ok(self
            .list(false)
            .await?
            .iter()
            .map(|t| (t.name.clone(), t.to_config()))
            .collect())
    }

    /// Add a team; refused when a team in use has its name.
    pub async fn create(&self, team: StoredTeam) -> Result<(), TeamError> {
        self.db
            .run(TIMEOUT, move |db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(|e| db.query_err(e))?;
                let (usd, period) = budget_columns(team.budget);
                let inserted = tx
                    .execute(
                        "INSERT INTO gateway_teams (name, rpm, tpm, budget_usd, budget_period,
                            created_at_ms, created_by, updated_at_ms, updated_by)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $6, $7)",
                        &[
                            &team.name,
                            &opt_i64(team.rpm),
                            &opt_i64(team.tpm),
                            &usd,
                            &period,
                            &team.created_at_ms,
                            &team.created_by,
                        ],
                    )
                    .await;
                if let Err(e) = inserted {
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                        return Ok(Err(TeamError::Exists(team.name)));
                    }
                    return Err(db.query_err(e));
                }
                notify(&tx, &db, &format!("team:{}", team.name)).await?;
                tx.commit().await.map_err(|e| db.query_err(e))?;
                Ok(Ok(()))
            })
            .await?
    }

    /// Change the team `name`; the row as it is now.
    pub async fn update(&self, name: &str, change: TeamChange, by: &str) -> Result<StoredTeam, TeamError> {
        let (name, by) = (name.to_string(), by.to_string());
        self.db
            .run(TIMEOUT, move |db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(|e| db.query_err(e))?;
                let sql =
                    format!("SELECT {COLUMNS} FROM gateway_teams WHERE name = $1 AND deleted_at_ms IS NULL FOR UPDATE");
                let Some(current) = tx.query_opt(&sql, &[&name]).await.map_err(|e| db.query_err(e))? else {
                    return Ok(Err(TeamError::Unknown(name)));
                };
                let mut t = row(&current);
                if let Some(rpm) = change.rpm {
                    t.rpm = rpm;
                }
                if let Some(tpm) = change.tpm {
                    t.tpm = tpm;
                }
                if let Some(budget) = change.budget {
                    t.budget = budget;
                }
                t.updated_at_ms = now_ms();
                t.updated_by = by;
                let (usd, period) = budget_columns(t.budget);
                tx.execute(
                    "UPDATE gateway_teams SET rpm = $2, tpm = $3, budget_usd = $4, budget_period = $5,
                        updated_at_ms = $6, updated_by = $7
                     WHERE name = $1 AND deleted_at_ms IS NULL",
                    &[
                        &t.name,
                        &opt_i64(t.rpm),
                        &opt_i64(t.tpm),
                        &usd,
                        &period,
                        &t.updated_at_ms,
                        &t.updated_by,
                    ],
                )
                .await
                .map_err(|e| db.query_err(e))?;
                notify(&tx, &db, &format!("team:{}", t.name)).await?;
                tx.commit().await.map_err(|e| db.query_err(e))?;
                Ok(Ok(t))
            })
            .await?
    }

    /// Delete the team `name` (its row stays, marked deleted).
    pub async fn delete(&self, name: &str, by: &str) -> Result<(), TeamError> {
        let (name, by) = (name.to_string(), by.to_string());
        self.db
            .run(TIMEOUT, move |db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(|e| db.query_err(e))?;
                let n = tx
                    .execute(
                        "UPDATE gateway_teams SET deleted_at_ms = $2, deleted_by = $3
                         WHERE name = $1 AND deleted_at_ms IS NULL",
                        &[&name, &now_ms(), &by],
                    )
                    .await
                    .map_err(|e| db.query_err(e))?;
                if n == 0 {
                    return Ok(Err(TeamError::Unknown(name)));
                }
                notify(&tx, &db, &format!("team:{name}")).await?;
                tx.commit().await.map_err(|e| db.query_err(e))?;
                Ok(Ok(()))
            })
            .await?
    }
}
