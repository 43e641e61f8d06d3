//! Sign-in state, kept in the store so that any replica can finish a flow
//! another started: device grants (RFC 8628, one per `claude` sign-in
//! waiting for its approval), browser flows (one round trip to the
//! identity provider each) and sessions (a sign-in, refreshed until it is
//! revoked or ends).
//!
//! - SQLite: tables in the ledger's file (created when missing; older
//!   builds ignore them), on a connection of their own, run on a blocking
//!   thread.
//! - PostgreSQL: migration 4, on the store's pool. A revoked session
//!   notifies [`CHANNEL`], so every replica refuses its tokens at once.
//!
//! Each operation is one statement, written once (SQLite's `?N`
//! placeholders, rewritten for PostgreSQL) and run on either store by
//! [`SigninStore`]'s `exec` and `query`; a poll's change is conditional on
//! the row it read, so concurrent polls on two replicas never both act.
//!
//! Only digests of secrets are kept ([`crate::signin::codes::digest`]): a
//! device code's, a refresh token's, a browser cookie's, a `state`'s. The
//! identity provider's refresh token is kept sealed by the caller.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::postgres::{Db, PgError};

/// The `LISTEN`/`NOTIFY` channel of revoked sessions.
pub const CHANNEL: &str = "modelgate_sessions";

/// How long a refresh token replaced by a refresh still works: a client
/// that lost the answer to its refresh may send the old one again.
pub const ROTATION_GRACE_MS: i64 = 60_000;

/// What RFC 8628 §3.5 adds to a grant's interval when it is polled too fast.
pub const SLOW_DOWN_MS: i64 = 5_000;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Who signed in, as the identity provider said; kept with an approved
/// grant and with a session.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The identity provider's refresh token, sealed.
    #[serde(default)]
    pub idp_refresh: Option<String>,
    /// The session's current refresh token of the gateway, sealed: what a
    /// client that presents the one it replaced (within
    /// [`ROTATION_GRACE_MS`]: a lost answer, or two processes refreshing
    /// at once) is given again, instead of a second rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_refresh: Option<String>,
}

/// A new device authorization.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub device_hash: String,
    pub user_code: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub interval_ms: i64,
    /// What the client says it is (`claude_code`).
    pub surface: Option<String>,
}

/// What a token poll finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    /// No such device code: never issued, already used, or swept.
    Unknown,
    Expired,
    /// Polled before its interval passed; the interval grows by 5 s.
    SlowDown,
    Pending,
    Denied,
    /// Approved: the grant is used up by this poll.
    Approved {
        identity: Identity,
        surface: Option<String>,
    },
}

/// A grant a person is looking at on the verification page.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingGrant {
    pub user_code: String,
    pub surface: Option<String>,
    pub expires_ms: i64,
}

/// The approval page's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Approve(Identity),
    Deny,
}

/// One round trip to the identity provider, keyed by its `state`'s digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub state_hash: String,
    pub user_code: String,
    /// The browser that asked for it (its cookie's digest).
    pub browser_hash: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub expires_ms: i64,
}

/// A sign-in.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub identity: Identity,
    pub surface: Option<String>,
    pub created_ms: i64,
    pub refreshed_ms: i64,
    /// When the sign-in ends, refreshed or not.
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoked_why: Option<String>,
}

/// A refresh token's session, and whether the token was the one a refresh
/// already replaced (still accepted for [`ROTATION_GRACE_MS`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Refreshing {
    pub session: Session,
    pub replaced: bool,
}

/// Which sessions to revoke.
#[derive(Debug, Clone, PartialEq)]
pub enum RevokeBy {
    Id(String),
    RefreshHash(String),
    /// Every active session of a user: by email (any case) or subject.
    User(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SigninError {
    #[error("sign-in store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("sign-in store: {0}")]
    Task(String),
}

/// The next step of a token poll, the same for both stores.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    DeleteExpired,
    SlowDown,
    Pending,
    DeleteDenied,
    Consume,
}

fn step(status: &str, expires_ms: i64, next_poll_ms: i64, now_ms: i64) -> Step {
    if expires_ms <= now_ms {
        Step::DeleteExpired
    } else if now_ms < next_poll_ms {
        Step::SlowDown
    } else {
        match status {
            "approved" => Step::Consume,
            "denied" => Step::DeleteDenied,
            _ => Step::Pending,
        }
    }
}

/// A poll may come up to a second early (timers, clocks): only a poll more
/// than that early is too fast.
const POLL_SLACK_MS: i64 = 1_000;

/// The tables, the same in both stores (SQLite reads `BIGINT` as an
/// integer): created if missing in an SQLite file, PostgreSQL's migration 4.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS signin_grants (
    device_hash TEXT PRIMARY KEY,
    user_code TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    interval_ms BIGINT NOT NULL,
    next_poll_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    surface TEXT,
    identity TEXT
);
CREATE TABLE IF NOT EXISTS signin_flows (
    state_hash TEXT PRIMARY KEY,
    user_code TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    nonce TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS signin_sessions (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    email TEXT,
    identity TEXT NOT NULL,
    refresh_hash TEXT NOT NULL UNIQUE,
    previous_hash TEXT,
    rotated_ms BIGINT,
    surface TEXT,
    created_ms BIGINT NOT NULL,
    refreshed_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    revoked_by TEXT,
    revoked_why TEXT
);
CREATE INDEX IF NOT EXISTS signin_sessions_email ON signin_sessions (email);
CREATE INDEX IF NOT EXISTS signin_sessions_previous ON signin_sessions (previous_hash);
CREATE INDEX IF NOT EXISTS signin_sessions_revoked ON signin_sessions (revoked_ms);
";

/// Sessions revoked or ended this long ago are swept.
const KEEP_ENDED_MS: i64 = 30 * 24 * 3600 * 1000;

fn identity_json(i: &Identity) -> String {
    serde_json::to_string(i).unwrap_or_default()
}

fn identity_of(json: &str) -> Identity {
    serde_json::from_str(json).unwrap_or(Identity {
        subject: String::new(),
        email: None,
        name: None,
        groups: Vec::new(),
        idp_refresh: None,
        current_refresh: None,
    })
}

/// A statement's parameter or a row's column: the two kinds these tables
/// hold, bound the same way in both stores.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Val {
    fn text(self) -> Option<String> {
        match self {
            Val::Text(t) => t,
            Val::Int(i) => i.map(|i| i.to_string()),
        }
    }

    fn int(self) -> Option<i64> {
        match self {
            Val::Int(i) => i,
            Val::Text(_) => None,
        }
    }
}

fn t(s: impl Into<String>) -> Val {
    Val::Text(Some(s.into()))
}

fn i(v: i64) -> Val {
    Val::Int(Some(v))
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Val::Text(v) => v.to_sql(),
            Val::Int(v) => v.to_sql(),
        }
    }
}

impl tokio_postgres::types::ToSql for Val {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Text(v) => v.to_sql(ty, out),
            Val::Int(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <Option<String> as tokio_postgres::types::ToSql>::accepts(ty)
            || <Option<i64> as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// What a column of a query's rows is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
}

/// SQL is written once, with SQLite's `?N` placeholders; PostgreSQL's are
/// `$N` (no statement here has another `?`).
fn for_postgres(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A session's columns, in the order [`SESSION_KINDS`] reads them.
macro_rules! session_columns {
    () => {
        "id, identity, surface, created_ms, refreshed_ms, expires_ms, revoked_ms, revoked_by, revoked_why"
    };
}

const SESSION_KINDS: [Kind; 9] = [
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Int,
    Kind::Int,
    Kind::Int,
    Kind::Int,
    Kind::Text,
    Kind::Text,
];

fn session_of(row: &mut std::vec::IntoIter<Val>) -> Session {
    let mut next = || row.next().unwrap_or(Val::Text(None));
    Session {
        id: next().text().unwrap_or_default(),
        identity: identity_of(&next().text().unwrap_or_default()),
        surface: next().text(),
        created_ms: next().int().unwrap_or_default(),
        refreshed_ms: next().int().unwrap_or_default(),
        expires_ms: next().int().unwrap_or_default(),
        revoked_ms: next().int(),
        revoked_by: next().text(),
        revoked_why: next().text(),
    }
}

/// Polls of one grant that raced another poll (or its approval) are tried
/// again this many times.
const POLL_TRIES: usize = 3;

/// Sign-in state, wherever the store is.
#[derive(Clone)]
pub enum SigninStore {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(Arc<Db>),
}

impl SigninStore {
    /// On the SQLite file at `path` (the ledger's), creating the tables.
    pub fn sqlite(path: &Path) -> Result<SigninStore, SigninError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SigninStore::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// On a PostgreSQL store's pool (migrated when it first connects).
    pub(crate) fn postgres(db: Arc<Db>) -> SigninStore {
        SigninStore::Postgres(db)
    }

    /// Connect to a PostgreSQL store (and migrate it): for the command line.
    pub async fn connect(target: &super::postgres::Target) -> Result<SigninStore, SigninError> {
        let reader = super::postgres::Reader::connect(target).await?;
        Ok(SigninStore::Postgres(reader.db()))
    }

    /// Run a statement; the rows it changed.
    async fn exec(&self, sql: &'static str, params: Vec<Val>) -> Result<u64, SigninError> {
        match self {
            SigninStore::Sqlite(c) => {
                let c = c.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = c.lock().unwrap_or_else(|p| p.into_inner());
                    let mut stmt = conn.prepare_cached(sql)?;
                    Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
                })
                .await
                .map_err(|e| SigninError::Task(e.to_string()))?
            }
            SigninStore::Postgres(db) => Ok(db
                .run(TIMEOUT, move |db| async move {
                    let client = db.client().await?;
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    client
                        .execute(&for_postgres(sql), &refs)
                        .await
                        .map_err(|e| db.query_err(e))
                })
                .await?),
        }
    }

    /// Run a query (or a statement with `RETURNING`); its rows, each as
    /// `kinds` says.
    async fn query(
        &self,
        sql: &'static str,
        params: Vec<Val>,
        kinds: &'static [Kind],
    ) -> Result<Vec<std::vec::IntoIter<Val>>, SigninError> {
        let rows: Vec<Vec<Val>> = match self {
            SigninStore::Sqlite(c) => {
                let c = c.clone();
                tokio::task::spawn_blocking(move || -> Result<Vec<Vec<Val>>, SigninError> {
                    let conn = c.lock().unwrap_or_else(|p| p.into_inner());
                    let mut stmt = conn.prepare_cached(sql)?;
                    let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                        kinds
                            .iter()
                            .enumerate()
                            .map(|(n, k)| match k {
                                Kind::Text => r.get::<_, Option<String>>(n).map(Val::Text),
                                Kind::Int => r.get::<_, Option<i64>>(n).map(Val::Int),
                            })
                            .collect::<rusqlite::Result<Vec<Val>>>()
                    })?;
                    Ok(rows.collect::<rusqlite::Result<_>>()?)
                })
                .await
                .map_err(|e| SigninError::Task(e.to_string()))??
            }
            SigninStore::Postgres(db) => {
                db.run(TIMEOUT, move |db| async move {
                    let client = db.client().await?;
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    let rows = client
                        .query(&for_postgres(sql), &refs)
                        .await
                        .map_err(|e| db.query_err(e))?;
                    Ok(rows
                        .iter()
                        .map(|r| {
                            kinds
                                .iter()
                                .enumerate()
                                .map(|(n, k)| match k {
                                    Kind::Text => Val::Text(r.get(n)),
                                    Kind::Int => Val::Int(r.get(n)),
                                })
                                .collect()
                        })
                        .collect())
                })
                .await?
            }
        };
        Ok(rows.into_iter().map(Vec::into_iter).collect())
    }

    /// Hear of revocations on other replicas (PostgreSQL's `LISTEN`);
    /// `None` for SQLite, whose revocations come from this host.
    pub async fn watch(&self) -> Option<Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError>> {
        match self {
            SigninStore::Sqlite(_) => None,
            SigninStore::Postgres(db) => Some(db.listen(CHANNEL).await),
        }
    }

    /// Store a new grant; false when its user code is taken (draw another).
    pub async fn create_grant(&self, g: NewGrant) -> Result<bool, SigninError> {
        let n = self
            .exec(
                "INSERT INTO signin_grants
                   (device_hash, user_code, created_ms, expires_ms, interval_ms, next_poll_ms, status, surface)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?3, 'pending', ?6) ON CONFLICT DO NOTHING",
                vec![
                    t(g.device_hash),
                    t(g.user_code),
                    i(g.created_ms),
                    i(g.expires_ms),
                    i(g.interval_ms),
                    Val::Text(g.surface),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// A token poll of the grant whose device code has digest `device_hash`.
    /// Every change is conditional on the row being as it was read, so two
    /// polls at once (or a poll and the approval) never both act: the one
    /// that finds the row changed reads it again.
    pub async fn poll(&self, device_hash: String, now_ms: i64) -> Result<Poll, SigninError> {
        for _ in 0..POLL_TRIES {
            let mut rows = self
                .query(
                    "SELECT status, expires_ms, next_poll_ms, interval_ms, surface, identity
                     FROM signin_grants WHERE device_hash = ?1",
                    vec![t(device_hash.clone())],
                    &[Kind::Text, Kind::Int, Kind::Int, Kind::Int, Kind::Text, Kind::Text],
                )
                .await?;
            let Some(mut row) = rows.pop() else {
                return Ok(Poll::Unknown);
            };
            let status = row.next().and_then(Val::text).unwrap_or_default();
            let expires = row.next().and_then(Val::int).unwrap_or_default();
            let next = row.next().and_then(Val::int).unwrap_or_default();
            let interval = row.next().and_then(Val::int).unwrap_or_default();
            let surface = row.next().and_then(Val::text);
            let identity = row.next().and_then(Val::text);
            let same = || vec![t(device_hash.clone()), t(status.clone()), i(next)];
            let delete = "DELETE FROM signin_grants WHERE device_hash = ?1 AND status = ?2 AND next_poll_ms = ?3";
            let reschedule = "UPDATE signin_grants SET interval_ms = ?4, next_poll_ms = ?5
                              WHERE device_hash = ?1 AND status = ?2 AND next_poll_ms = ?3";
            let (changed, outcome) = match step(&status, expires, next - POLL_SLACK_MS.min(interval / 2), now_ms) {
                Step::DeleteExpired => (self.exec(delete, same()).await?, Poll::Expired),
                Step::DeleteDenied => (self.exec(delete, same()).await?, Poll::Denied),
                Step::Consume => (self.exec(delete, same()).await?, approved(identity, surface)),
                Step::SlowDown => {
                    let interval = interval + SLOW_DOWN_MS;
                    let mut p = same();
                    p.extend([i(interval), i(now_ms + interval)]);
                    (self.exec(reschedule, p).await?, Poll::SlowDown)
                }
                Step::Pending => {
                    let mut p = same();
                    p.extend([i(interval), i(now_ms + interval)]);
                    (self.exec(reschedule, p).await?, Poll::Pending)
                }
            };
            if changed == 1 {
                return Ok(outcome);
            }
        }
        // Polled over and over at the same moment: too fast.
        Ok(Poll::SlowDown)
    }

    /// The pending, unexpired grant with this user code.
    pub async fn pending(&self, user_code: String, now_ms: i64) -> Result<Option<PendingGrant>, SigninError> {
        let mut rows = self
            .query(
                "SELECT user_code, surface, expires_ms FROM signin_grants
                 WHERE user_code = ?1 AND status = 'pending' AND expires_ms > ?2",
                vec![t(user_code), i(now_ms)],
                &[Kind::Text, Kind::Text, Kind::Int],
            )
            .await?;
        Ok(rows.pop().map(|mut r| PendingGrant {
            user_code: r.next().and_then(Val::text).unwrap_or_default(),
            surface: r.next().and_then(Val::text),
            expires_ms: r.next().and_then(Val::int).unwrap_or_default(),
        }))
    }

    /// Approve or deny the pending grant with this user code; false when
    /// there is none (decided already, expired, unknown).
    pub async fn decide(&self, user_code: String, decision: Decision, now_ms: i64) -> Result<bool, SigninError> {
        let (status, identity) = match &decision {
            Decision::Approve(id) => ("approved", Some(identity_json(id))),
            Decision::Deny => ("denied", None),
        };
        let n = self
            .exec(
                "UPDATE signin_grants SET status = ?2, identity = ?3
                 WHERE user_code = ?1 AND status = 'pending' AND expires_ms > ?4",
                vec![t(user_code), t(status), Val::Text(identity), i(now_ms)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Remember a browser flow until its `state` comes back.
    pub async fn put_flow(&self, f: Flow) -> Result<(), SigninError> {
        self.exec(
            "INSERT INTO signin_flows (state_hash, user_code, browser_hash, nonce, pkce_verifier, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            vec![
                t(f.state_hash),
                t(f.user_code),
                t(f.browser_hash),
                t(f.nonce),
                t(f.pkce_verifier),
                i(f.expires_ms),
            ],
        )
        .await?;
        Ok(())
    }

    /// Take (once) the unexpired flow whose `state` has digest `state_hash`.
    pub async fn take_flow(&self, state_hash: String, now_ms: i64) -> Result<Option<Flow>, SigninError> {
        let mut rows = self
            .query(
                "DELETE FROM signin_flows WHERE state_hash = ?1
                 RETURNING state_hash, user_code, browser_hash, nonce, pkce_verifier, expires_ms",
                vec![t(state_hash)],
                &[Kind::Text, Kind::Text, Kind::Text, Kind::Text, Kind::Text, Kind::Int],
            )
            .await?;
        Ok(rows
            .pop()
            .map(|mut r| {
                let mut text = || r.next().and_then(Val::text).unwrap_or_default();
                let (state_hash, user_code, browser_hash, nonce, pkce_verifier) =
                    (text(), text(), text(), text(), text());
                Flow {
                    state_hash,
                    user_code,
                    browser_hash,
                    nonce,
                    pkce_verifier,
                    expires_ms: r.next().and_then(Val::int).unwrap_or_default(),
                }
            })
            .filter(|f| f.expires_ms > now_ms))
    }

    /// Start a session whose refresh token has digest `refresh_hash`.
    pub async fn create_session(&self, s: Session, refresh_hash: String) -> Result<(), SigninError> {
        self.exec(
            "INSERT INTO signin_sessions (id, subject, email, identity, refresh_hash, surface, created_ms,
                refreshed_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
            vec![
                t(s.id),
                t(s.identity.subject.clone()),
                Val::Text(s.identity.email.clone()),
                t(identity_json(&s.identity)),
                t(refresh_hash),
                Val::Text(s.surface),
                i(s.created_ms),
                i(s.expires_ms),
            ],
        )
        .await?;
        Ok(())
    }

    /// The live session of a refresh token (by digest): its current one,
    /// or the one a refresh replaced less than [`ROTATION_GRACE_MS`] ago.
    pub async fn refreshing(&self, refresh_hash: String, now_ms: i64) -> Result<Option<Refreshing>, SigninError> {
        const SQL: &str = concat!(
            "SELECT ",
            session_columns!(),
            ", CAST(CASE WHEN refresh_hash = ?1 THEN 1 ELSE 0 END AS BIGINT), rotated_ms
             FROM signin_sessions WHERE refresh_hash = ?1 OR previous_hash = ?1"
        );
        // A session's columns, then whether the token is the current one
        // and when the session was last rotated.
        const KINDS: [Kind; 11] = {
            let mut k = [Kind::Int; 11];
            let mut n = 0;
            while n < SESSION_KINDS.len() {
                k[n] = SESSION_KINDS[n];
                n += 1;
            }
            k
        };

        let rows = self.query(SQL, vec![t(refresh_hash)], &KINDS).await?;
        Ok(rows.into_iter().find_map(|mut r| {
            let session = session_of(&mut r);
            let current = r.next().and_then(Val::int) == Some(1);
            let rotated = r.next().and_then(Val::int);
            let live = session.revoked_ms.is_none() && session.expires_ms > now_ms;
            let fresh = current || rotated.is_some_and(|at| now_ms - at < ROTATION_GRACE_MS);
            (live && fresh).then_some(Refreshing {
                session,
                replaced: !current,
            })
        }))
    }

    /// A refresh: the session's refresh token `presented_hash` becomes
    /// `new_hash` (the one it replaces still works for a minute) and its
    /// identity `identity`. False when the session is gone, revoked, or was
    /// rotated meanwhile from the same token (another replica or process
    /// refreshing at once: only one rotation wins).
    pub async fn rotate(
        &self,
        id: String,
        presented_hash: String,
        new_hash: String,
        identity: Identity,
        now_ms: i64,
    ) -> Result<bool, SigninError> {
        let email = identity.email.clone();
        let n = self
            .exec(
                "UPDATE signin_sessions SET previous_hash = refresh_hash, refresh_hash = ?2, rotated_ms = ?4,
                    refreshed_ms = ?4, identity = ?3, email = ?6
                 WHERE id = ?1 AND refresh_hash = ?5 AND revoked_ms IS NULL",
                vec![
                    t(id),
                    t(new_hash),
                    t(identity_json(&identity)),
                    i(now_ms),
                    t(presented_hash),
                    Val::Text(email),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Revoke sessions; the ids revoked (none: nothing matched, which
    /// RFC 7009 answers like a success). PostgreSQL replicas hear of it on
    /// [`CHANNEL`].
    pub async fn revoke(
        &self,
        by: RevokeBy,
        who: String,
        why: String,
        now_ms: i64,
    ) -> Result<Vec<String>, SigninError> {
        let (sql, value) = match by {
            RevokeBy::Id(v) => (
                "UPDATE signin_sessions SET revoked_ms = ?2, revoked_by = ?3, revoked_why = ?4
                 WHERE id = ?1 AND revoked_ms IS NULL RETURNING id",
                v,
            ),
            RevokeBy::RefreshHash(v) => (
                "UPDATE signin_sessions SET revoked_ms = ?2, revoked_by = ?3, revoked_why = ?4
                 WHERE (refresh_hash = ?1 OR previous_hash = ?1) AND revoked_ms IS NULL RETURNING id",
                v,
            ),
            RevokeBy::User(v) => (
                "UPDATE signin_sessions SET revoked_ms = ?2, revoked_by = ?3, revoked_why = ?4
                 WHERE (lower(email) = lower(?1) OR subject = ?1) AND revoked_ms IS NULL RETURNING id",
                v,
            ),
        };
        let rows = self
            .query(sql, vec![t(value), i(now_ms), t(who), t(why)], &[Kind::Text])
            .await?;
        let ids: Vec<String> = rows
            .into_iter()
            .filter_map(|mut r| r.next().and_then(Val::text))
            .collect();
        if !ids.is_empty() && matches!(self, SigninStore::Postgres(_)) {
            self.exec("SELECT pg_notify(?1, '')", vec![t(CHANNEL)]).await?;
        }
        Ok(ids)
    }

    /// Ids of sessions revoked at or after `since_ms` (those whose tokens
    /// may not have expired yet).
    pub async fn revoked_since(&self, since_ms: i64) -> Result<Vec<String>, SigninError> {
        let rows = self
            .query(
                "SELECT id FROM signin_sessions WHERE revoked_ms >= ?1",
                vec![i(since_ms)],
                &[Kind::Text],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|mut r| r.next().and_then(Val::text))
            .collect())
    }

    /// Sessions, newest first: a user's (by email) or everyone's, the ended
    /// and revoked ones too when `all`.
    pub async fn sessions(&self, email: Option<String>, all: bool, now_ms: i64) -> Result<Vec<Session>, SigninError> {
        const SQL: &str = concat!(
            "SELECT ",
            session_columns!(),
            " FROM signin_sessions
             WHERE (CAST(?1 AS TEXT) IS NULL OR lower(email) = lower(?1) OR subject = ?1)
               AND (CAST(?2 AS BIGINT) = 1 OR (revoked_ms IS NULL AND expires_ms > ?3))
             ORDER BY created_ms DESC, id"
        );
        let rows = self
            .query(SQL, vec![Val::Text(email), i(all as i64), i(now_ms)], &SESSION_KINDS)
            .await?;
        Ok(rows.into_iter().map(|mut r| session_of(&mut r)).collect())
    }

    /// Delete expired grants and flows, and sessions that ended or were
    /// revoked more than 30 days ago; how many rows went.
    pub async fn sweep(&self, now_ms: i64) -> Result<u64, SigninError> {
        let old = now_ms - KEEP_ENDED_MS;
        let mut n = self
            .exec("DELETE FROM signin_grants WHERE expires_ms <= ?1", vec![i(now_ms)])
            .await?;
        n += self
            .exec("DELETE FROM signin_flows WHERE expires_ms <= ?1", vec![i(now_ms)])
            .await?;
        n += self
            .exec(
                "DELETE FROM signin_sessions WHERE expires_ms <= ?1 OR revoked_ms <= ?1",
                vec![i(old)],
            )
            .await?;
        Ok(n)
    }
}

fn approved(identity: Option<String>, surface: Option<String>) -> Poll {
    match identity {
        Some(json) => Poll::Approved {
            identity: identity_of(&json),
            surface,
        },
        // An approval always stores who approved; without one, refuse.
        None => Poll::Denied,
    }
}
