//! Gateway keys kept in a PostgreSQL store (table `gateway_keys`), which
//! `modelgate keys create|list|revoke|update` write without a config edit
//! or a reload, and every replica reads (`runtime::keyring`).
//!
//! Only a key's sha256 is stored. A revoked key keeps its row (who revoked
//! it and when) and frees its name. Every change notifies channel
//! [`CHANNEL`] in its own transaction, so replicas listening there reload
//! at once; they also re-read every few seconds, in case a notification is
//! lost with a connection. Teams created at run time ([`super::teams`])
//! announce their changes on the same channel.

use std::sync::Arc;
use std::time::Duration;

use super::postgres::{Db, PgError, Target};
use crate::config::schema::{BudgetConfig, BudgetPeriod, KeyConfig, RateLimitConfig};
use crate::policy::period::{now_ms, period_name};

/// The `LISTEN`/`NOTIFY` channel of key and team changes.
pub const CHANNEL: &str = "modelgate_keys";

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// One row of `gateway_keys`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub name: String,
    pub team: Option<String>,
    /// Hex sha256 of the key.
    pub key_sha256: String,
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget: Option<(f64, BudgetPeriod)>,
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub updated_at_ms: i64,
    pub updated_by: String,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
}

impl StoredKey {
    /// As a config entry, for compiling next to the file's keys.
    pub fn to_config(&self) -> KeyConfig {
        KeyConfig {
            name: self.name.clone(),
            team: self.team.clone(),
            key_sha256: Some(self.key_sha256.clone()),
            key_env: None,
            models: self.models.clone(),
            rate_limit: (self.rpm.is_some() || self.tpm.is_some()).then_some(RateLimitConfig {
                rpm: self.rpm,
                tpm: self.tpm,
            }),
            budget: self.budget.map(|(usd, period)| BudgetConfig { usd, period }),
            enabled: self.revoked_at_ms.is_none(),
            expires: self.expires_at_ms.and_then(|ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }),
        }
    }
}

/// What `keys update` changes; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct KeyChange {
    pub team: Option<Option<String>>,
    pub models: Option<Vec<String>>,
    pub rpm: Option<Option<u64>>,
    pub tpm: Option<Option<u64>>,
    pub budget: Option<Option<(f64, BudgetPeriod)>>,
    pub expires_at_ms: Option<Option<i64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key named `{0}` already exists in the store; pick another name, or revoke it first")]
    Exists(String),
    #[error("no active key named `{0}` in the store")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] PgError),
}

pub(super) fn period_of(s: &str) -> BudgetPeriod {
    match s {
        "daily" => BudgetPeriod::Daily,
        "weekly" => BudgetPeriod::Weekly,
        "total" => BudgetPeriod::Total,
        _ => BudgetPeriod::Monthly,
    }
}

/// A budget as the tables keep it: USD and period name, or neither.
pub(super) fn budget_columns(budget: Option<(f64, BudgetPeriod)>) -> (Option<f64>, Option<&'static str>) {
    match budget {
        Some((usd, p)) => (Some(usd), Some(period_name(p))),
        None => (None, None),
    }
}

pub(super) fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

const COLUMNS: &str = "name, team, key_sha256, models, rpm, tpm, budget_usd, budget_period, expires_at_ms,
    created_at_ms, created_by, updated_at_ms, updated_by, revoked_at_ms, revoked_by";

fn row(r: &tokio_postgres::Row) -> StoredKey {
    let budget = r
        .get::<_, Option<f64>>(6)
        .map(|usd| (usd, period_of(r.get::<_, Option<&str>>(7).unwrap_or("monthly"))));
    StoredKey {
        name: r.get(0),
        team: r.get(1),
        key_sha256: r.get(2),
        models: r.get(3),
        rpm: r.get::<_, Option<i64>>(4).map(|v| v.max(0) as u64),
        tpm: r.get::<_, Option<i64>>(5).map(|v| v.max(0) as u64),
        budget,
        expires_at_ms: r.get(8),
        created_at_ms: r.get(9),
        created_by: r.get(10),
        updated_at_ms: r.get(11),
        updated_by: r.get(12),
        revoked_at_ms: r.get(13),
        revoked_by: r.get(14),
    }
}

/// The keys table of a PostgreSQL store.
#[derive(Clone)]
pub struct KeyStore {
    db: Arc<Db>,
}

impl KeyStore {
    /// On an existing pool (the gateway's ledger).
    pub(crate) fn on(db: Arc<Db>) -> KeyStore {
        KeyStore { db }
    }

    /// Connect (and migrate): for the command line.
    pub async fn connect(target: &Target) -> Result<KeyStore, PgError> {
        let reader = super::postgres::Reader::connect(target).await?;
        Ok(KeyStore { db: reader.db() })
    }

    /// Every key, the revoked ones too when `revoked`, by name.
    pub async fn list(&self, revoked: bool) -> Result<Vec<StoredKey>, PgError> {
        self.db
            .run(TIMEOUT, move |db| async move {
                let client = db.client().await?;
                let filter = if revoked { "" } else { "WHERE revoked_at_ms IS NULL" };
                let sql = format!("SELECT {COLUMNS} FROM gateway_keys {filter} ORDER BY name, id");
                let rows = client.query(&sql, &[]).await.map_err(|e| db.query_err(e))?;
                Ok(rows.iter().map(row).collect())
            })
            .await
    }

    /// The keys that work (not revoked), as config entries.
    pub async fn active(&self) -> Result<Vec<KeyConfig>, PgError> {
        Ok(self.list(false).await?.iter().map(StoredKey::to_config).collect())
    }

    /// Add a key; refused when an active key has its name.
    pub async fn create(&self, key: StoredKey) -> Result<(), KeyError> {
        self.db
            .run(TIMEOUT, move |db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(|e| db.query_err(e))?;
                let (usd, period) = budget_columns(key.budget);
                let inserted = tx
                    .execute(
                        "INSERT INTO gateway_keys (name, team, key_sha256, models, rpm, tpm, budget_usd, budget_period,
                            expires_at_ms, created_at_ms, created_by, updated_at_ms, updated_by)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $11)",
                        &[
                            &key.name,
                            &key.team,
                            &key.key_sha256,
                            &key.models,
                            &opt_i64(key.rpm),
                            &opt_i64(key.tpm),
                            &usd,
                            &period,
                            &key.expires_at_ms,
                            &key.created_at_ms,
                            &key.created_by,
                        ],
                    )
                    .await;
                if let Err(e) = inserted {
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                        return Ok(Err(KeyError::Exists(key.name)));
                    }
                    return Err(db.query_err(e));
                }
                notify(&tx, &db, &key.name).await?;
                tx.commit().await.map_err(|e| db.query_err(e))?;
                Ok(Ok(()))
            })
            .await?
    }

    /// Revoke the active key `name`.
    pub async fn revoke(&self, name: &str, by: &str) -> Result<(), KeyError> {
        let (name, by) = (name.to_string(), by.to_string());
        self.db
            .run(TIMEOUT, move |db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(|e| db.query_err(e))?;
                let n = tx
                    .execute(
                        "UPDATE gateway_keys SET revoked_at_ms = $2, revoked_by = $3
                         WHERE name = $1 AND revoked_at_ms IS NULL",
                        &[&name, &now_ms(), &by],
                    )
                    .await
                    .map_err(|e| db.query_err(e))?;
                if n == 0 {
                    return Ok(Err(KeyError::Unknown(name)));
                }
                notify(&tx, &db, &name).await?;
                tx.commit().await.map_err(|e| db.query_err(e))?;
                Ok(Ok(()))
            })
            .await?
    }

    /// Change the active key `name`; the row as it is now.
    pub async fn update(&self, name: &str, change: KeyChange, by: &str) -> Result<StoredKey, KeyError> {
        let (name, by) = (name.to_string(), by.to_string());
        self.db
            .run(TIMEOUT, move |db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(|e| db.query_err(e))?;
                let sql =
                    format!("SELECT {COLUMNS} FROM gateway_keys WHERE name = $1 AND revoked_at_ms IS NULL FOR UPDATE");
                let Some(current) = tx.query_opt(&sql, &[&name]).await.map_err(|e| db.query_err(e))? else {
                    return Ok(Err(KeyError::Unknown(name)));
                };
                let mut k = row(&current);
                if let Some(team) = change.team {
                    k.team = team;
                }
                if let Some(models) = change.models {
                    k.models = models;
                }
                if let Some(rpm) = change.rpm {
                    k.rpm = rpm;
                }
                if let Some(tpm) = change.tpm {
                    k.tpm = tpm;
                }
                if let Some(budget) = change.budget {
                    k.budget = budget;
                }
                if let Some(expires) = change.expires_at_ms {
                    k.expires_at_ms = expires;
                }
                k.updated_at_ms = now_ms();
                k.updated_by = by;
                let (usd, period) = budget_columns(k.budget);
                tx.execute(
                    "UPDATE gateway_keys SET team = $2, models = $3, rpm = $4, tpm = $5, budget_usd = $6,
                        budget_period = $7, expires_at_ms = $8, updated_at_ms = $9, updated_by = $10
                     WHERE name = $1 AND revoked_at_ms IS NULL",
                    &[
                        &k.name,
                        &k.team,
                        &k.models,
                        &opt_i64(k.rpm),
                        &opt_i64(k.tpm),
                        &usd,
                        &period,
                        &k.expires_at_ms,
                        &k.updated_at_ms,
                        &k.updated_by,
                    ],
                )
                .await
                .map_err(|e| db.query_err(e))?;
                notify(&tx, &db, &k.name).await?;
                tx.commit().await.map_err(|e| db.query_err(e))?;
                Ok(Ok(k))
            })
            .await?
    }

    /// The teams table of the same store.
    pub fn teams(&self) -> super::teams::TeamStore {
        super::teams::TeamStore::on(self.db.clone())
    }

    /// A connection listening for key and team changes (see [`Db::listen`]).
    pub async fn watch(&self) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError> {
        self.db.listen(CHANNEL).await
    }
}

/// Announce a change of `name` on [`CHANNEL`] when `tx` commits.
pub(super) async fn notify(tx: &tokio_postgres::Transaction<'_>, db: &Db, name: &str) -> Result<(), PgError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name])
        .await
        .map_err(|e| db.query_err(e))?;
    Ok(())
}
