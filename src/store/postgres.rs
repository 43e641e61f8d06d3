//! The usage ledger in PostgreSQL: one database for the whole fleet.
//!
//! [`Target`] is `store.url` parsed: a libpq URL whose `sslmode` is
//! `disable`/`prefer` (plain TCP) or `require`/`verify-ca`/`verify-full`
//! (TLS through rustls, which always checks the certificate and the host
//! name against the system roots plus `sslrootcert=PATH`: `require` is as
//! strict as `verify-full`). The password stays inside the driver's
//! config; nothing here prints it ([`Target::describe`]).
//!
//! [`Db`] owns a small runtime of its own (the pool's connection drivers
//! never depend on a Pingora worker) and a `deadpool-postgres` pool, and
//! brings the schema up to date before the first query it serves:
//! versioned migrations ([`MIGRATIONS`]) in one transaction under an
//! advisory lock, so replicas starting at once apply each step once, and a
//! build refuses a database migrated by a newer one.
//!
//! [`Ledger`] is the write side. Records come from the [`super::intake`]
//! through a bounded queue; one task gathers up to [`super::MAX_BATCH`] records for
//! [`super::LINGER`] and inserts them in one statement (`UNNEST` of column
//! arrays, `ON CONFLICT (request_id) DO NOTHING`). When the database does
//! not answer, the batch goes to the [`super::spool`] instead and the
//! writer keeps spooling until a second task, the replayer, reaches the
//! database again (it tries every second) and replays the spool. A batch
//! the database refuses as data (not as an outage) is inserted row by row
//! and only the rows it refuses are dropped, by request id.
//!
//! [`Reader`] runs the read queries on the same runtime.

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc::error::TrySendError;
use tokio_postgres::types::ToSql;

use super::spool::{Segment, Spool};
use super::{
    Batcher, Counters, ForeignRow, GroupBy, History, Msg, NotSent, Sent, SummaryRow, Totals, Worker, LINGER, MAX_BATCH,
    NO_GROUP, WRITER,
};
use crate::usage::Record;

/// Connections in the pool: the writer, the replayer, and the readers.
const POOL_SIZE: usize = 8;
/// Connecting, waiting for a pooled connection, one statement.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the replayer looks for the database while it is away.
const REPLAY_EVERY: Duration = Duration::from_secs(1);
/// Serialises migrations across replicas (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6d6f_6465_6c67_6174; // "modelgat"

/// The schema steps, in order. Each runs once, in the transaction that
/// records it in `modelgate_schema`.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE requests (
        id BIGSERIAL PRIMARY KEY,
        ts_ms BIGINT NOT NULL,
        request_id TEXT NOT NULL UNIQUE,
        \"key\" TEXT,
        team TEXT,
        session_id TEXT,
        agent_id TEXT,
        model TEXT NOT NULL,
        provider TEXT,
        upstream_model TEXT,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cache_read_tokens BIGINT NOT NULL,
        cache_write_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        latency_ms BIGINT NOT NULL,
        ttft_ms BIGINT,
        status INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        stream BOOLEAN NOT NULL,
        error TEXT,
        writer BIGINT
    );
    CREATE INDEX requests_ts ON requests (ts_ms);
    CREATE INDEX requests_key_ts ON requests (\"key\", ts_ms);
    CREATE INDEX requests_team_ts ON requests (team, ts_ms);",
    ),
    (
        2,
        "CREATE TABLE gateway_keys (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        team TEXT,
        key_sha256 TEXT NOT NULL UNIQUE,
        models TEXT[] NOT NULL DEFAULT '{}',
        rpm BIGINT,
        tpm BIGINT,
        budget_usd DOUBLE PRECISION,
        budget_period TEXT,
        expires_at_ms BIGINT,
        created_at_ms BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        updated_by TEXT NOT NULL,
        revoked_at_ms BIGINT,
        revoked_by TEXT
    );
    CREATE UNIQUE INDEX gateway_keys_active_name ON gateway_keys (name) WHERE revoked_at_ms IS NULL;",
    ),
    (
        3,
        "CREATE TABLE gateway_teams (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        rpm BIGINT,
        tpm BIGINT,
        budget_usd DOUBLE PRECISION,
        budget_period TEXT,
        created_at_ms BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        updated_by TEXT NOT NULL,
        deleted_at_ms BIGINT,
        deleted_by TEXT
    );
    CREATE UNIQUE INDEX gateway_teams_active_name ON gateway_teams (name) WHERE deleted_at_ms IS NULL;",
    ),
    (4, super::signin::SCHEMA),
];

/// The schema this build writes and reads.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

const INSERT: &str = "INSERT INTO requests (ts_ms, request_id, \"key\", team, session_id, agent_id, model, provider,
        upstream_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms,
        ttft_ms, status, attempts, stream, error, writer)
    SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
        $8::text[], $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::float8[], $15::int8[],
        $16::int8[], $17::int4[], $18::int4[], $19::bool[], $20::text[], $21::int8[])
    ON CONFLICT (request_id) DO NOTHING";

const TOTALS_COLUMNS: &str = "COUNT(*)::int8, COALESCE(SUM(input_tokens), 0)::int8,
    COALESCE(SUM(output_tokens), 0)::int8, COALESCE(SUM(cache_read_tokens), 0)::int8,
    COALESCE(SUM(cache_write_tokens), 0)::int8, COALESCE(SUM(cost_usd), 0)::float8";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Config(String),
    #[error("PostgreSQL store {0}: cannot connect: {1}")]
    Connect(String, String),
    #[error("PostgreSQL store {0}: {1}")]
    Query(String, String),
    #[error("PostgreSQL store {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("PostgreSQL store {at}: schema version {found} is newer than this modelgate understands ({supported}); upgrade modelgate")]
    SchemaTooNew { at: String, found: i32, supported: i32 },
    #[error("cannot start the PostgreSQL store runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the usage ledger writer did not finish within {timeout:?} ({queued} records not yet written)")]
    Closing { timeout: Duration, queued: usize },
    #[error("the usage ledger is closed")]
    Closed,
}

/// `store.url`, parsed.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: Option<Option<PathBuf>>,
    describe: String,
}

impl Target {
    /// Parse a libpq URL. Errors never include the URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a valid PostgreSQL URL ({e})"))?;
        let mut tls: Option<Option<PathBuf>> = None;
        let mut ca_file = None;
        let mut mode = "prefer".to_string();
        let mut rest = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in parsed.query_pairs() {
            match &*k {
                "sslmode" => mode = v.into_owned(),
                "sslrootcert" => ca_file = Some(PathBuf::from(v.into_owned())),
                _ => {
                    rest.append_pair(&k, &v);
                }
            }
        }
        match mode.as_str() {
            "disable" | "allow" | "prefer" => {
                if ca_file.is_some() {
                    return Err(format!("`sslrootcert` needs `sslmode=verify-full` (it is `{mode}`)"));
                }
            }
            "require" | "verify-ca" | "verify-full" => tls = Some(ca_file),
            other => {
                return Err(format!(
                    "sslmode `{}` is not one of disable, prefer, require, verify-ca, verify-full",
                    other.escape_debug()
                ))
            }
        }
        let mut bare = parsed.clone();
        let rest = rest.finish();
        bare.set_query((!rest.is_empty()).then_some(rest.as_str()));
        let password = parsed.password().unwrap_or_default().to_string();
        let mut config = tokio_postgres::Config::from_str(bare.as_str()).map_err(|e| {
            let msg = e.to_string();
            let msg = if password.is_empty() {
                msg
            } else {
                msg.replace(&password, "***")
            };
            format!("not a valid PostgreSQL URL ({msg})")
        })?;
        config.ssl_mode(if tls.is_some() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("modelgate");
        }
        config.keepalives(true);
        let host = parsed.host_str().unwrap_or("localhost");
        let port = parsed.port().unwrap_or(5432);
        let user = parsed.username();
        let describe = format!(
            "postgres://{}{host}:{port}{}",
            if user.is_empty() {
                String::new()
            } else {
                format!("{user}@")
            },
            parsed.path()
        );
        Ok(Target { config, tls, describe })
    }

    /// The URL without password or options.
    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    /// A warning when the connection would cross a network unencrypted.
    pub fn warning(&self) -> Option<String> {
        if self.tls.is_some() {
            return None;
        }
        let remote = self.config.get_hosts().iter().any(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                !(name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
            }
            _ => false,
        });
        remote.then(|| {
            format!(
                "store.url: the connection to {} is not encrypted; add `sslmode=require` (or verify-full)",
                self.describe
            )
        })
    }

    /// The rustls client config (system roots plus `sslrootcert`); checks
    /// the CA file at start.
    fn rustls(&self, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert {}: no PEM certificate in it", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        if roots.is_empty() {
            return Err("sslmode needs trusted roots: none in the system store and no `sslrootcert`".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// Everything that can be checked without connecting.
    pub fn check(&self) -> Result<(), String> {
        if let Some(ca) = &self.tls {
            self.rustls(ca.as_deref())?;
        }
        Ok(())
    }
}

/// A runtime that shuts down without blocking when dropped (it may be
/// dropped inside another runtime).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The pool, on its own runtime.
pub struct Db {
    target: Target,
    handle: tokio::runtime::Handle,
    pool: Pool,
    migrated: tokio::sync::OnceCell<()>,
    describe: String,
    _runtime: OwnRuntime,
}

impl Db {
    /// Start the runtime and build the pool; nothing connects yet.
    pub fn start(target: &Target) -> Result<Arc<Db>, PgError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("modelgate-store")
            .enable_all()
            .build()
            .map_err(PgError::Runtime)?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &target.tls {
            None => Manager::from_config(target.config.clone(), tokio_postgres::NoTls, manager_config),
            Some(ca) => {
                let tls = target.rustls(ca.as_deref()).map_err(PgError::Config)?;
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                Manager::from_config(target.config.clone(), tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| PgError::Config(e.to_string()))?;
        Ok(Arc::new(Db {
            target: target.clone(),
            handle: runtime.handle().clone(),
            pool,
            migrated: tokio::sync::OnceCell::new(),
            describe: target.describe(),
            _runtime: OwnRuntime(Some(runtime)),
        }))
    }

    pub(crate) fn query_err(&self, e: impl std::fmt::Display) -> PgError {
        PgError::Query(self.describe.clone(), e.to_string())
    }

    /// A pooled connection on a migrated schema. Call on the store runtime.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, PgError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| PgError::Connect(self.describe.clone(), pool_error(&e)))?;
        self.migrated
            .get_or_try_init(|| async { migrate(&mut client, &self.describe).await })
            .await?;
        Ok(client)
    }

    /// Run `op` on the store runtime, bounded by `timeout`.
    pub(crate) async fn run<T, F>(
        self: &Arc<Self>,
        timeout: Duration,
        op: impl FnOnce(Arc<Db>) -> F,
    ) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let fut = op(self.clone());
        let task = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, fut).await });
        match task.await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PgError::Timeout(self.describe.clone(), timeout)),
            Err(e) => Err(self.query_err(e)),
        }
    }

    /// A connection of its own (not pooled) that `LISTEN`s on `channel`:
    /// see [`Listening`] for keeping one across a refresh loop.
    /// the receiver gets `()` per notification and closes when the
    /// connection ends. Keep the client: dropping it ends the connection.
    pub(crate) async fn listen(
        self: &Arc<Self>,
        channel: &'static str,
    ) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError> {
        self.run(CONNECT_TIMEOUT * 2, move |db| async move {
            let connect_err = |e: tokio_postgres::Error| PgError::Connect(db.describe.clone(), e.to_string());
            match &db.target.tls {
                None => {
                    let (client, conn) = db
                        .target
                        .config
                        .connect(tokio_postgres::NoTls)
                        .await
                        .map_err(connect_err)?;
                    listen_on(&db, client, conn, channel).await
                }
                Some(ca) => {
                    let tls = db.target.rustls(ca.as_deref()).map_err(PgError::Config)?;
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                    let (client, conn) = db.target.config.connect(tls).await.map_err(connect_err)?;
                    listen_on(&db, client, conn, channel).await
                }
            }
        })
        .await
    }

    /// Whether the database answers (connecting and migrating if needed).
    pub(crate) async fn ping(&self) -> Result<(), PgError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(|e| self.query_err(e))?;
        Ok(())
    }

    /// Insert `records`; the rows that were new (a replayed record already
    /// there is skipped).
    async fn insert<R: Borrow<Record>>(&self, records: &[R]) -> Result<u64, InsertError> {
        let client = self.client().await.map_err(InsertError::Unreachable)?;
        let stmt = client.prepare_cached(INSERT).await.map_err(|e| classify(self, e))?;
        let cols = Columns::of(records);
        let params = cols.params();
        client.execute(&stmt, &params).await.map_err(|e| classify(self, e))
    }

    /// Insert `records`; a batch the database refuses as data is retried
    /// one row at a time and the rows it refuses are dropped (and counted).
    /// How many were refused.
    async fn insert_batch<R: Borrow<Record>>(&self, records: &[R], counters: &Counters) -> Result<u64, PgError> {
        match tokio::time::timeout(STATEMENT_TIMEOUT, self.insert(records)).await {
            Ok(Ok(_)) => Ok(0),
            Ok(Err(InsertError::Unreachable(e))) => Err(e),
            Err(_) => Err(PgError::Timeout(self.describe.clone(), STATEMENT_TIMEOUT)),
            Ok(Err(InsertError::Refused(why))) => {
                log::warn!(
                    "usage ledger: the store refused a batch of {} records ({why}); writing them one at a time",
                    records.len()
                );
                let mut refused = 0;
                for r in records {
                    let one = std::slice::from_ref(r);
                    match tokio::time::timeout(STATEMENT_TIMEOUT, self.insert(one)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(InsertError::Refused(why))) => {
                            refused += 1;
                            let id = r.borrow().request_id.clone();
                            counters.drop_records(1, true, || format!("the store refused request {id}: {why}"));
                        }
                        Ok(Err(InsertError::Unreachable(e))) => return Err(e),
                        Err(_) => return Err(PgError::Timeout(self.describe.clone(), STATEMENT_TIMEOUT)),
                    }
                }
                Ok(refused)
            }
        }
    }
}

/// Drive `conn` on this runtime, forwarding its notifications, and
/// `LISTEN` on `channel`.
async fn listen_on<S, T>(
    db: &Db,
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
    channel: &str,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                // A full channel already holds a wake-up: one is enough.
                let _ = tx.try_send(());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(|e| db.query_err(e))?;
    Ok((client, rx))
}

enum InsertError {
    /// The database is away (or said so): spool and retry later.
    Unreachable(PgError),
    /// It answered and refused these rows: retrying will not help.
    Refused(String),
}

/// Whether an error is about the rows (refused) or about reaching the
/// database (connection, resources, shutdown, conflicts worth a retry).
fn classify(db: &Db, e: tokio_postgres::Error) -> InsertError {
    match e.as_db_error() {
        Some(d) => {
            let code = d.code().code();
            let outage = ["08", "53", "57", "40", "55", "58", "XX"]
                .iter()
                .any(|class| code.starts_with(class));
            if outage {
                InsertError::Unreachable(db.query_err(e))
            } else {
                InsertError::Refused(format!("{code}: {}", d.message()))
            }
        }
        None => InsertError::Unreachable(db.query_err(e)),
    }
}

fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => e.to_string(),
        deadpool_postgres::PoolError::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

/// Apply the migrations this database lacks, in one transaction under an
/// advisory lock.
async fn migrate(client: &mut deadpool_postgres::Client, at: &str) -> Result<(), PgError> {
    let err = |e: tokio_postgres::Error| PgError::Query(at.to_string(), format!("migrating the schema: {e}"));
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS modelgate_schema (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            build TEXT NOT NULL
        )",
    )
    .await
    .map_err(err)?;
    let found: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM modelgate_schema", &[])
        .await
        .map_err(err)?
        .get(0);
    let supported = schema_version();
    if found > supported {
        return Err(PgError::SchemaTooNew {
            at: at.to_string(),
            found,
            supported,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO modelgate_schema (version, build) VALUES ($1, $2)",
            &[version, &env!("CARGO_PKG_VERSION")],
        )
        .await
        .map_err(err)?;
        log::info!("PostgreSQL store {at}: schema migrated to version {version}");
    }
    tx.commit().await.map_err(err)
}

/// A batch as column arrays, for [`INSERT`].
struct Columns {
    ts: Vec<i64>,
    request_id: Vec<String>,
    key: Vec<Option<String>>,
    team: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    agent_id: Vec<Option<String>>,
    model: Vec<String>,
    provider: Vec<Option<String>>,
    upstream_model: Vec<Option<String>>,
    input: Vec<i64>,
    output: Vec<i64>,
    cache_read: Vec<i64>,
    cache_write: Vec<i64>,
    cost: Vec<f64>,
    latency: Vec<i64>,
    ttft: Vec<Option<i64>>,
    status: Vec<i32>,
    attempts: Vec<i32>,
    stream: Vec<bool>,
    error: Vec<Option<String>>,
    writer: Vec<i64>,
}

/// PostgreSQL text cannot hold NUL; one in a header-derived field must not
/// make its batch unwritable.
fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

fn opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(text)
}

/// PostgreSQL integers are signed: saturate rather than fail.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Columns {
    fn of<R: Borrow<Record>>(records: &[R]) -> Columns {
        let n = records.len();
        let mut c = Columns {
            ts: Vec::with_capacity(n),
            request_id: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            team: Vec::with_capacity(n),
            session_id: Vec::with_capacity(n),
            agent_id: Vec::with_capacity(n),
            model: Vec::with_capacity(n),
            provider: Vec::with_capacity(n),
            upstream_model: Vec::with_capacity(n),
            input: Vec::with_capacity(n),
            output: Vec::with_capacity(n),
            cache_read: Vec::with_capacity(n),
            cache_write: Vec::with_capacity(n),
            cost: Vec::with_capacity(n),
            latency: Vec::with_capacity(n),
            ttft: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            stream: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            writer: Vec::with_capacity(n),
        };
        for r in records {
            let r = r.borrow();
            c.ts.push(r.ts_ms);
            c.request_id.push(text(&r.request_id));
            c.key.push(opt(&r.key));
            c.team.push(opt(&r.team));
            c.session_id.push(opt(&r.session_id));
            c.agent_id.push(opt(&r.agent_id));
            c.model.push(text(&r.model));
            c.provider.push(opt(&r.provider));
            c.upstream_model.push(opt(&r.upstream_model));
            c.input.push(int(r.input_tokens));
            c.output.push(int(r.output_tokens));
            c.cache_read.push(int(r.cache_read_tokens));
            c.cache_write.push(int(r.cache_write_tokens));
            c.cost.push(if r.cost_usd.is_finite() { r.cost_usd } else { 0.0 });
            c.latency.push(int(r.latency_ms));
            c.ttft.push(r.ttft_ms.map(int));
            c.status.push(i32::from(r.status));
            c.attempts.push(i32::try_from(r.attempts).unwrap_or(i32::MAX));
            c.stream.push(r.stream);
            c.error.push(opt(&r.error));
            c.writer.push(*WRITER);
        }
        c
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 21] {
        [
            &self.ts,
            &self.request_id,
            &self.key,
            &self.team,
            &self.session_id,
            &self.agent_id,
            &self.model,
            &self.provider,
            &self.upstream_model,
            &self.input,
            &self.output,
            &self.cache_read,
            &self.cache_write,
            &self.cost,
            &self.latency,
            &self.ttft,
            &self.status,
            &self.attempts,
            &self.stream,
            &self.error,
            &self.writer,
        ]
    }
}

/// The writer and replayer tasks' shared view.
struct Shared {
    db: Arc<Db>,
    spool: Mutex<Spool>,
    counters: Arc<Counters>,
    /// The last write did not reach the database: spool until the replayer
    /// reaches it again.
    down: AtomicBool,
    /// Set when the writer has stopped: the replayer stops too.
    stopped: AtomicBool,
}

impl Shared {
    fn set_down(&self, why: &PgError) {
        if !self.down.swap(true, Ordering::Relaxed) {
            log::warn!("usage ledger: {why}; spooling records to {} until it is back", {
                self.spool.lock().unwrap_or_else(|p| p.into_inner()).dir().display()
            });
        }
    }

    /// Put `batch` in the spool (on a blocking thread); a full spool drops it.
    async fn spool(self: &Arc<Self>, batch: Vec<Arc<Record>>) {
        let n = batch.len() as u64;
        let me = self.clone();
        let wrote =
            tokio::task::spawn_blocking(move || me.spool.lock().unwrap_or_else(|p| p.into_inner()).append(&batch))
                .await;
        match wrote {
            Ok(Ok(())) => {
                self.counters.spooled.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => self.counters.drop_records(n, true, || e.to_string()),
            Err(e) => self.counters.drop_records(n, true, || format!("spool: {e}")),
        }
    }
}

/// The write side. Every method takes `&self` and never blocks a request.
pub struct Ledger {
    tx: tokio::sync::mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    writer: Mutex<Worker>,
}

impl Ledger {
    /// Start the writer and replayer tasks with a queue of `queue` records
    /// and the spool at `spool_dir`. Does not connect.
    pub fn open(target: &Target, spool_dir: &Path, spool_max: u64, queue: usize) -> Result<Ledger, super::StoreError> {
        let db = Db::start(target)?;
        let spool = Spool::open(spool_dir, spool_max, *WRITER as u64)?;
        let shared = Arc::new(Shared {
            db: db.clone(),
            spool: Mutex::new(spool),
            counters: Arc::new(Counters::default()),
            down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(queue.max(1));
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        db.handle.spawn(run_writer(shared.clone(), rx, done_tx));
        db.handle.spawn(run_replayer(shared.clone()));
        if let Some(w) = target.warning() {
            log::warn!("{w}");
        }
        log::debug!("usage ledger: {} (spool {})", target.describe(), spool_dir.display());
        Ok(Ledger {
            tx,
            shared,
            writer: Mutex::new(Worker::new("ledger writer task", done, None)),
        })
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub(crate) fn counters_arc(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// How the intake hands records on: a blocking send (from its own
    /// thread) into the writer's bounded queue.
    pub(crate) fn forward(&self) -> super::intake::Forward {
        let tx = self.tx.clone();
        Box::new(move |m| tx.blocking_send(m).is_ok())
    }

    /// A reader on the same pool.
    pub fn reader(&self) -> Reader {
        Reader {
            db: self.shared.db.clone(),
        }
    }

    /// Queue a record. Never blocks; a full queue drops it (counted).
    pub fn record(&self, r: Arc<Record>) -> bool {
        let counters = &self.shared.counters;
        counters.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Records(vec![r], None)) {
            Ok(()) => true,
            Err(e) => {
                counters.queued.fetch_sub(1, Ordering::Relaxed);
                let why = match e {
                    TrySendError::Full(_) => "queue full (state.ledger_queue), record dropped",
                    TrySendError::Closed(_) => "ledger closed, record dropped",
                };
                counters.drop_records(1, false, || why.to_string());
                false
            }
        }
    }

    /// A send bounded by `deadline` (flush and close only, never a request).
    fn send_until(&self, msg: Msg, deadline: Instant) -> Sent {
        super::send_until(msg, deadline, |m| {
            self.tx.try_send(m).map_err(|e| match e {
                TrySendError::Full(m) => NotSent::Full(m),
                TrySendError::Closed(_) => NotSent::Closed,
            })
        })
    }

    fn closing(&self, timeout: Duration) -> PgError {
        PgError::Closing {
            timeout,
            queued: self.shared.counters.queued.load(Ordering::Relaxed),
        }
    }

    /// Wait until every record queued before this call is written or
    /// spooled, for at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        match super::flush_until(deadline, |ack| self.send_until(Msg::Flush(ack), deadline)) {
            Sent::Yes => Ok(()),
            Sent::TimedOut => Err(self.closing(timeout)),
            Sent::Closed => Err(PgError::Closed),
        }
    }

    /// Write or spool everything queued, seal the spool and stop, waiting
    /// at most `timeout`. Idempotent.
    pub fn close(&self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.stop(deadline, || self.send_until(Msg::Stop, deadline)) {
            Ok(())
        } else {
            Err(self.closing(timeout))
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(e) = self.close(Duration::from_secs(5)) {
            log::error!("usage ledger: {e}");
        }
    }
}

/// Gather records for [`LINGER`], write them (or spool them), answer
/// flushes; after `Stop`, drain the queue, seal the spool and end.
async fn run_writer(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::Receiver<Msg>, _done: std::sync::mpsc::Sender<()>) {
    let mut b = Batcher::default();
    loop {
        let first = if b.stopping {
            match rx.try_recv() {
                Ok(m) => m,
                Err(_) => break,
            }
        } else {
            match rx.recv().await {
                Some(m) => m,
                None => break,
            }
        };
        if b.lingers(&first) {
            tokio::time::sleep(LINGER).await;
        }
        b.gather(first, || rx.try_recv().ok());
        write(&shared, std::mem::take(&mut b.batch)).await;
        b.ack();
    }
    let me = shared.clone();
    let sealed = tokio::task::spawn_blocking(move || me.spool.lock().unwrap_or_else(|p| p.into_inner()).seal()).await;
    if let Ok(Err(e)) = sealed {
        log::error!("usage ledger: {e}");
    }
    shared.stopped.store(true, Ordering::Relaxed);
    log::debug!("usage ledger writer stopped");
}

/// One batch to the database, or to the spool while it is away.
async fn write(shared: &Arc<Shared>, batch: Vec<Arc<Record>>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    if !shared.down.load(Ordering::Relaxed) {
        match shared.db.insert_batch(&batch, &shared.counters).await {
            Ok(refused) => {
                shared.counters.written.fetch_add(n as u64 - refused, Ordering::Relaxed);
                shared.counters.batches.fetch_add(1, Ordering::Relaxed);
                shared.counters.queued.fetch_sub(n, Ordering::Relaxed);
                return;
            }
            Err(e) => shared.set_down(&e),
        }
    }
    shared.spool(batch).await;
    shared.counters.queued.fetch_sub(n, Ordering::Relaxed);
}

/// Every [`REPLAY_EVERY`]: when the writer is spooling or the spool holds
/// segments, reach the database; once it answers, let the writer go back
/// to it and replay the spool.
async fn run_replayer(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REPLAY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stopped.load(Ordering::Relaxed) {
        tick.tick().await;
        let down = shared.down.load(Ordering::Relaxed);
        let me = shared.clone();
        let backlog =
            tokio::task::spawn_blocking(move || me.spool.lock().unwrap_or_else(|p| p.into_inner()).has_backlog())
                .await
                .unwrap_or(false);
        if !down && !backlog {
            continue;
        }
        match tokio::time::timeout(STATEMENT_TIMEOUT, shared.db.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::debug!("usage ledger: store still unreachable: {e}");
                continue;
            }
            Err(_) => continue,
        }
        if down {
            shared.down.store(false, Ordering::Relaxed);
            // What the writer spooled so far becomes replayable; it writes
            // to the database again from its next batch.
            let me = shared.clone();
            let _ =
                tokio::task::spawn_blocking(move || me.spool.lock().unwrap_or_else(|p| p.into_inner()).seal()).await;
            log::info!(
                "usage ledger: {} is reachable again; replaying the spool",
                shared.db.describe
            );
        }
        replay(&shared).await;
    }
}

/// Replay every replayable segment, oldest first, until one fails.
async fn replay(shared: &Arc<Shared>) {
    loop {
        let me = shared.clone();
        let next = tokio::task::spawn_blocking(move || {
            let segment = me.spool.lock().unwrap_or_else(|p| p.into_inner()).next_segment()?;
            let read = read_segment(&segment);
            Some((segment, read))
        })
        .await
        .ok()
        .flatten();
        let Some((segment, read)) = next else { return };
        let (records, torn) = match read {
            Ok(r) => r,
            Err(e) => {
                log::error!("usage ledger: {e}");
                return;
            }
        };
        let mut refused = 0;
        for chunk in records.chunks(MAX_BATCH) {
            match shared.db.insert_batch(chunk, &shared.counters).await {
                Ok(n) => refused += n,
                Err(e) => {
                    log::warn!("usage ledger: replaying {}: {e}", segment.path.display());
                    return;
                }
            }
        }
        if torn > 0 {
            shared.counters.drop_records(torn, true, || {
                format!("{torn} torn lines in {}", segment.path.display())
            });
        }
        let n = records.len() as u64 - refused;
        shared.counters.replayed.fetch_add(n, Ordering::Relaxed);
        shared.counters.written.fetch_add(n, Ordering::Relaxed);
        let path = segment.path.display().to_string();
        match tokio::task::spawn_blocking(move || segment.remove()).await {
            Ok(Ok(())) => log::info!("usage ledger: replayed {n} spooled records from {path}"),
            Ok(Err(e)) => {
                log::error!("usage ledger: {e}");
                return;
            }
            Err(_) => return,
        }
    }
}

/// A segment's records and its torn lines.
fn read_segment(segment: &Segment) -> Result<(Vec<Record>, u64), super::spool::SpoolError> {
    let mut records = Vec::new();
    let torn = segment.replay(usize::MAX, |chunk| {
        records.extend(chunk);
        Ok::<(), ()>(())
    })?;
    Ok((records, torn.unwrap_or(0)))
}

/// The read side: queries on the store's runtime.
#[derive(Clone)]
pub struct Reader {
    db: Arc<Db>,
}

fn totals(row: &tokio_postgres::Row, at: usize) -> Totals {
    let n = |i: usize| u64::try_from(row.get::<_, i64>(at + i)).unwrap_or(0);
    Totals {
        requests: n(0),
        input_tokens: n(1),
        output_tokens: n(2),
        cache_read_tokens: n(3),
        cache_write_tokens: n(4),
        cost_usd: row.get(at + 5),
    }
}

fn group_expr(by: GroupBy) -> String {
    match by {
        GroupBy::Key => format!("COALESCE(\"key\", '{NO_GROUP}')"),
        GroupBy::Team => format!("COALESCE(team, '{NO_GROUP}')"),
        GroupBy::Model => "model".into(),
        GroupBy::Provider => format!("COALESCE(provider, '{NO_GROUP}')"),
        GroupBy::Session => format!("COALESCE(session_id, '{NO_GROUP}')"),
        GroupBy::Day => "to_char(to_timestamp(ts_ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')".into(),
        GroupBy::Hour => {
            "to_char(to_timestamp(ts_ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00\"Z\"')".into()
        }
    }
}

/// `(column, name)` of a policy scope id.
fn scope_column(id: &str) -> (&'static str, String) {
    match super::Scope::of_id(id) {
        super::Scope::Key(k) => ("\"key\"", k.to_string()),
        super::Scope::Team(t) => ("team", t.to_string()),
    }
}

impl Reader {
    pub(crate) fn db(&self) -> Arc<Db> {
        self.db.clone()
    }

    /// Connect (and migrate): `modelgate usage` fails plainly when the
    /// database is away.
    pub async fn connect(target: &Target) -> Result<Reader, PgError> {
        let db = Db::start(target)?;
        db.run(CONNECT_TIMEOUT * 2, |db| async move { db.ping().await }).await?;
        Ok(Reader { db })
    }

    pub async fn history(&self, scopes: Vec<(String, i64)>) -> Result<History, PgError> {
        self.db
            .run(STATEMENT_TIMEOUT * 3, move |db| async move {
                let mut client = db.client().await?;
                let err = |e| db.query_err(e);
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(err)?;
                let last_id: i64 = tx
                    .query_one("SELECT COALESCE(MAX(id), 0)::int8 FROM requests", &[])
                    .await
                    .map_err(err)?
                    .get(0);
                let mut out = Vec::with_capacity(scopes.len());
                for (id, since) in &scopes {
                    let (column, name) = scope_column(id);
                    let sql = format!("SELECT {TOTALS_COLUMNS} FROM requests WHERE {column} = $1 AND ts_ms >= $2");
                    let row = tx.query_one(&sql, &[&name, since]).await.map_err(err)?;
                    out.push(totals(&row, 0));
                }
                tx.commit().await.map_err(err)?;
                Ok(History { last_id, totals: out })
            })
            .await
    }

    pub async fn summary(&self, by: GroupBy, since_ms: i64) -> Result<Vec<SummaryRow>, PgError> {
        self.summary_in(by, None, super::Window::since(since_ms)).await
    }

    pub async fn summary_in(
        &self,
        by: GroupBy,
        split: Option<GroupBy>,
        w: super::Window,
    ) -> Result<Vec<SummaryRow>, PgError> {
        self.db
            .run(STATEMENT_TIMEOUT, move |db| async move {
                let client = db.client().await?;
                let sql = format!(
                    "SELECT {} AS grp, {TOTALS_COLUMNS},
                        SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END)::int8,
                        COALESCE(AVG(latency_ms), 0)::float8, {} AS split
                     FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY grp, split ORDER BY {}, split LIMIT $3",
                    group_expr(by),
                    split.map_or_else(|| "NULL::text".into(), group_expr),
                    by.order()
                );
                let rows = client
                    .query(&sql, &[&w.from_ms, &w.to_ms, &w.limit_sql()])
                    .await
                    .map_err(|e| db.query_err(e))?;
                Ok(rows
                    .iter()
                    .map(|row| SummaryRow {
                        group: row.get::<_, Option<String>>(0).unwrap_or_else(|| NO_GROUP.to_string()),
                        totals: totals(row, 1),
                        errors: u64::try_from(row.get::<_, i64>(7)).unwrap_or(0),
                        avg_latency_ms: row.get(8),
                        split: row.get(9),
                    })
                    .collect())
            })
            .await
    }

    pub async fn recent(&self, key: String, limit: u32) -> Result<Vec<super::RecentRow>, PgError> {
        self.db
            .run(STATEMENT_TIMEOUT, move |db| {
                let key = key.clone();
                async move {
                    let client = db.client().await?;
                    let rows = client
                        .query(
                            &format!(
                                "SELECT {} FROM requests WHERE \"key\" = $1 ORDER BY ts_ms DESC, id DESC LIMIT $2",
                                super::RECENT_COLUMNS
                            ),
                            &[&key, &i64::from(limit)],
                        )
                        .await
                        .map_err(|e| db.query_err(e))?;
                    let n = |v: i64| u64::try_from(v).unwrap_or(0);
                    Ok(rows
                        .iter()
                        .map(|r| super::RecentRow {
                            ts_ms: r.get(0),
                            request_id: r.get(1),
                            model: r.get(2),
                            provider: r.get(3),
                            status: u16::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                            input_tokens: n(r.get(5)),
                            output_tokens: n(r.get(6)),
                            cache_read_tokens: n(r.get(7)),
                            cache_write_tokens: n(r.get(8)),
                            cost_usd: r.get(9),
                            latency_ms: n(r.get(10)),
                            ttft_ms: r.get::<_, Option<i64>>(11).map(n),
                        })
                        .collect())
                }
            })
            .await
    }

    pub async fn reliability(&self, w: super::Window) -> Result<super::Reliability, PgError> {
        self.db
            .run(STATEMENT_TIMEOUT, move |db| async move {
                let client = db.client().await?;
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                let rows = client
                    .query(
                        &format!(
                            "SELECT COALESCE(provider, '{NO_GROUP}') AS grp, COUNT(*)::int8,
                                SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END)::int8,
                                SUM(CASE WHEN attempts > 1 THEN 1 ELSE 0 END)::int8
                             FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY grp ORDER BY COUNT(*) DESC, grp"
                        ),
                        &[&w.from_ms, &w.to_ms],
                    )
                    .await
                    .map_err(|e| db.query_err(e))?;
                let providers = rows
                    .iter()
                    .map(|row| super::ProviderHealth {
                        provider: row.get(0),
                        requests: n(row.get(1)),
                        errors: n(row.get(2)),
                        failovers: n(row.get(3)),
                    })
                    .collect();
                let rows = client
                    .query(
                        "SELECT model, ttft_ms::int8 FROM requests
                         WHERE ts_ms >= $1 AND ts_ms < $2 AND ttft_ms IS NOT NULL ORDER BY ts_ms DESC LIMIT $3",
                        &[&w.from_ms, &w.to_ms, &super::TTFT_SAMPLES],
                    )
                    .await
                    .map_err(|e| db.query_err(e))?;
                let ttft = rows
                    .iter()
                    .map(|row| (row.get::<_, String>(0), n(row.get(1))))
                    .collect();
                Ok(super::Reliability { providers, ttft })
            })
            .await
    }

    pub async fn others_after(&self, after_id: i64, limit: usize) -> Result<Vec<ForeignRow>, PgError> {
        self.db
            .run(STATEMENT_TIMEOUT, move |db| async move {
                let client = db.client().await?;
                let rows = client
                    .query(
                        "SELECT id, ts_ms, \"key\", team, input_tokens, output_tokens, cache_read_tokens,
                            cache_write_tokens, cost_usd
                         FROM requests WHERE id > $1 AND (writer IS NULL OR writer != $2) ORDER BY id LIMIT $3",
                        &[&after_id, &*WRITER, &(limit as i64)],
                    )
                    .await
                    .map_err(|e| db.query_err(e))?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
                        ForeignRow {
                            id: row.get(0),
                            ts_ms: row.get(1),
                            key: row.get(2),
                            team: row.get(3),
                            usage: crate::dialects::Usage {
                                input_tokens: n(4),
                                output_tokens: n(5),
                                cache_read_input_tokens: n(6),
                                cache_creation_input_tokens: n(7),
                            },
                            cost_usd: row.get(8),
                        }
                    })
                    .collect())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_without_leaking_the_password() {
        let t = Target::parse("postgres://mg:s3cret@db.internal:6543/modelgate?sslmode=require").unwrap();
        assert_eq!(t.describe(), "postgres://mg@db.internal:6543/modelgate");
        assert!(t.tls.is_some());
        assert!(t.warning().is_none());
        let plain = Target::parse("postgres://mg:s3cret@db.internal/modelgate").unwrap();
        assert!(plain.tls.is_none());
        assert!(plain.warning().unwrap().contains("sslmode=require"));
        assert!(!plain.warning().unwrap().contains("s3cret"));
        let local = Target::parse("postgresql://mg@127.0.0.1:5432/x?sslmode=disable").unwrap();
        assert!(local.warning().is_none());
        for bad in [
            "postgres://mg:s3cret@db/x?sslmode=maybe",
            "postgres://mg:s3cret@db/x?sslrootcert=/ca.pem",
            "postgres://mg:s3cret@db/x?nosuchoption=1",
            "postgres://mg:s3cret@[::1/x",
        ] {
            let e = Target::parse(bad).err().unwrap_or_else(|| panic!("{bad} should fail"));
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn a_missing_root_file_is_refused_at_check() {
        let t = Target::parse("postgres://mg@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap();
        let e = t.check().unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn nul_bytes_are_replaced_and_counts_saturate() {
        let r = Record {
            request_id: "req_1".into(),
            model: "m".into(),
            session_id: Some("a\0b".into()),
            input_tokens: u64::MAX,
            cost_usd: f64::NAN,
            ..Default::default()
        };
        let c = Columns::of(&[r]);
        assert_eq!(c.session_id[0].as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(c.input[0], i64::MAX);
        assert_eq!(c.cost[0], 0.0);
    }
}

/// A `LISTEN` connection ([`Db::listen`]) kept across the rounds of a
/// refresh loop (the store's keys and teams, revoked sessions): each
/// round waits its interval, or less when a change is announced, and
/// opens the connection again when it has ended.
#[derive(Default)]
pub struct Listening(Option<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>)>);

impl Listening {
    /// Wait at most `every`; `listen` (re)opens the connection when there
    /// is none (`None`: nothing to listen on, as with SQLite).
    pub async fn round<F>(&mut self, every: Duration, listen: impl FnOnce() -> F)
    where
        F: std::future::Future<
            Output = Option<Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError>>,
        >,
    {
        if self.0.is_none() {
            match listen().await {
                Some(Ok(w)) => self.0 = Some(w),
                Some(Err(e)) => log::debug!("cannot listen for changes in the store: {e}"),
                None => {}
            }
        }
        let notified = async {
            match self.0.as_mut() {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            n = notified => {
                if n.is_none() {
                    // The connection ended: open another next round.
                    self.0 = None;
                }
            }
        }
    }
}
