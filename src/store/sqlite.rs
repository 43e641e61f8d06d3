//! The usage ledger in an SQLite file (WAL): one [`Record`] per request,
//! the default store of a single gateway.
//!
//! [`Ledger`] owns the write side. Records reach it through a channel (from
//! the intake, or [`Ledger::record`]), bounded by the count of records
//! accepted and not yet written; one thread, `ledger-writer`, drains the
//! channel and inserts up to [`super::MAX_BATCH`] records per transaction.
//! No request waits on disk: past the bound a record is counted in
//! [`Ledger::dropped`] and a warning says so (at most every 10 s). [`Ledger::close`] writes everything queued before it stops the
//! writer, so a graceful restart loses nothing.
//!
//! [`Reader`] owns the read side: spend per key or team since a time (what the
//! gateway rebuilds budget spend from at startup) and the grouped summaries
//! `modelgate usage` prints.
//!
//! The schema version is SQLite's `user_version`. [`Ledger::open`] creates and
//! migrates; [`Reader::open`] only reads and refuses a file it does not
//! understand.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::{
    Batcher, Counters, ForeignRow, GroupBy, Msg, Scope, Sent, SummaryRow, Totals, Worker, LINGER, NO_GROUP, WRITER,
};
use crate::usage::Record;

/// The schema this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// A failing batch is tried this many times in all, with backoff, before its
/// records are counted as dropped: a transient `SQLITE_BUSY`/`SQLITE_FULL`
/// should not lose data, a broken disk should not stall the writer forever.
const WRITE_ATTEMPTS: u32 = 4;
const RETRY_BASE: Duration = Duration::from_millis(50);
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL pages between automatic checkpoints (4 KiB pages: 32 MiB).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;
/// The writer's page cache; negative means KiB to SQLite.
const CACHE_KIB: i64 = -16 * 1024;
/// What `Drop` gives the writer to flush when nobody called `close`.
const DROP_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Written by [`SCHEMA_VERSION`] 1. `key` is quoted everywhere: it is an SQL
/// keyword.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    \"key\" TEXT,
    team TEXT,
    session_id TEXT,
    agent_id TEXT,
    model TEXT NOT NULL,
    provider TEXT,
    upstream_model TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttft_ms INTEGER,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
CREATE INDEX IF NOT EXISTS requests_key_ts ON requests (\"key\", ts_ms);
CREATE INDEX IF NOT EXISTS requests_team_ts ON requests (team, ts_ms);
";

const INSERT: &str = "INSERT INTO requests (ts_ms, request_id, \"key\", team, session_id, agent_id, model, provider,
    upstream_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, ttft_ms,
    status, attempts, stream, error, writer)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)";

/// [`INSERT`] unless a row of the same request (and time: the `ts_ms`
/// index finds it) is there already: for records adopted from a journal,
/// which a process may have written just before it died.
const INSERT_IF_NEW: &str =
    "INSERT INTO requests (ts_ms, request_id, \"key\", team, session_id, agent_id, model, provider,
    upstream_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, ttft_ms,
    status, attempts, stream, error, writer)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21
    WHERE NOT EXISTS (SELECT 1 FROM requests WHERE ts_ms = ?1 AND request_id = ?2)";

/// The columns of [`Totals`], in order, for the read queries.
const TOTALS_COLUMNS: &str = "COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
    COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(cost_usd), 0.0)";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The reader's file does not exist. The message is what `modelgate
    /// usage` prints; the gateway treats it as "no history".
    #[error("no usage recorded yet at {} (the gateway creates it on first start)", .0.display())]
    Missing(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: ledger schema version {found} is newer than this modelgate understands ({supported}); upgrade modelgate", path.display())]
    SchemaTooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("{}: not a modelgate usage ledger", .0.display())]
    NotALedger(PathBuf),
    #[error("ledger query: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the ledger writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the ledger writer did not finish within {timeout:?} ({queued} records not yet written)")]
    Timeout { timeout: Duration, queued: usize },
    #[error("the ledger is closed")]
    Closed,
}

/// The write side of the ledger. Cheap to share behind an `Arc`; every method
/// takes `&self`.
pub struct Ledger {
    /// Unbounded as a channel (it allocates as it fills, where a bounded
    /// one would allocate and touch all its slots at start); `limit` bounds
    /// the records it holds.
    tx: Sender<Msg>,
    limit: usize,
    counters: Arc<Counters>,
    writer: Mutex<Worker>,
}

impl Ledger {
    /// Open (create) the database at `path`, apply the schema, set WAL,
    /// `synchronous=NORMAL` and a busy timeout, and start the writer thread
    /// with a queue of `queue` records.
    ///
    /// `synchronous=NORMAL` in WAL mode can lose the last transactions on a
    /// power cut (never on a process crash) and never corrupts the file:
    /// the right trade for a usage log written at request rate.
    pub fn open(path: &Path, queue: usize) -> Result<Ledger, LedgerError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| LedgerError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!(
                "usage ledger {}: journal_mode is `{mode}`, not WAL (readers may block the writer)",
                path.display()
            );
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        // Every batch rewrites the same hot index leaves (one per key and
        // team); checkpointing every 1000 pages (the default) copies them to
        // the database and fsyncs twice every few batches. A 32 MiB WAL and
        // a 16 MiB page cache keep them hot: ~25% more records/s in
        // `benches/ledger.rs`, twice as many when inserts land mid-index.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(open_err)?;
        conn.pragma_update(None, "cache_size", CACHE_KIB).map_err(open_err)?;
        migrate(&mut conn, path)?;

        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let _done = done_tx;
                run_writer(conn, rx, &thread_counters);
            })
            .map_err(LedgerError::Spawn)?;
        log::debug!("usage ledger {} open, queue {}", path.display(), queue.max(1));
        Ok(Ledger {
            tx,
            limit: queue.max(1),
            counters,
            writer: Mutex::new(Worker::new("ledger writer thread", done, Some(thread))),
        })
    }

    /// Queue a record for the writer. Never blocks: when the queue is full
    /// (or the ledger is closed) the record is counted in [`Ledger::dropped`],
    /// a warning is logged at most every 10 s, and this returns false.
    pub fn record(&self, r: Arc<Record>) -> bool {
        // Counted before the send so the writer's decrement can never come
        // first and wrap the counter.
        let why = if self.counters.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            "queue full (state.ledger_queue), record dropped"
        } else if self.tx.send(Msg::Records(vec![r], None)).is_ok() {
            return true;
        } else {
            "ledger closed, record dropped"
        };
        self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        self.counters.drop_records(1, false, || why.to_string());
        false
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn counters_arc(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// How the intake hands records on (it counted them as queued already,
    /// against the same limit).
    pub(crate) fn forward(&self) -> super::intake::Forward {
        let tx = self.tx.clone();
        Box::new(move |m| tx.send(m).is_ok())
    }

    /// Records lost: refused by a full queue or a closed ledger, or in a
    /// batch SQLite kept refusing.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Records committed to the database by this handle's writer.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Records accepted and not yet written (approximate).
    pub fn queued(&self) -> usize {
        self.counters.queued.load(Ordering::Relaxed)
    }

    /// Wait until every record queued before this call is written (or
    /// counted dropped), for at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), LedgerError> {
        let deadline = Instant::now() + timeout;
        match super::flush_until(deadline, |ack| self.send(Msg::Flush(ack))) {
            Sent::Yes => Ok(()),
            Sent::TimedOut => Err(self.timeout(timeout)),
            Sent::Closed => Err(LedgerError::Closed),
        }
    }

    /// Write everything queued and stop the writer (graceful shutdown),
    /// waiting at most `timeout`. Idempotent; after a timeout a later call
    /// waits again. Records sent after this are dropped (and counted).
    pub fn close(&self, timeout: Duration) -> Result<(), LedgerError> {
        let deadline = Instant::now() + timeout;
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if writer.stop(deadline, || self.send(Msg::Stop)) {
            Ok(())
        } else {
            Err(self.timeout(timeout))
        }
    }

    fn timeout(&self, timeout: Duration) -> LedgerError {
        LedgerError::Timeout {
            timeout,
            queued: self.queued(),
        }
    }

    /// The queue is bounded by its count, not its capacity: a flush or a
    /// stop is never refused for room, only by a closed writer.
    fn send(&self, msg: Msg) -> Sent {
        match self.tx.send(msg) {
            Ok(()) => Sent::Yes,
            Err(_) => Sent::Closed,
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(e) = self.close(DROP_CLOSE_TIMEOUT) {
            log::error!("usage ledger: {e}");
        }
    }
}

/// Bring the schema to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), LedgerError> {
    let open_err = |source| LedgerError::Open {
        path: path.to_path_buf(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    if found > SCHEMA_VERSION {
        return Err(LedgerError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(open_err)?;
    }
    // Later versions: `if found < 2 { ALTER TABLE … }`, in order.
    // Additive columns older builds ignore (they name the columns they
    // read and write), so no version step that would refuse a rollback.
    let has_writer: bool = tx
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('requests') WHERE name = 'writer'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(open_err)?;
    if !has_writer {
        tx.execute_batch("ALTER TABLE requests ADD COLUMN writer INTEGER")
            .map_err(open_err)?;
    }
    if found != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
    }
    tx.commit().map_err(open_err)
}

/// The writer thread: block for a message, give a record [`super::LINGER`] for
/// others to join it, take what else is queued (up to [`super::MAX_BATCH`]
/// records) without blocking, write it in one transaction, answer flushes,
/// repeat. After `Stop` it drains the queue
/// without blocking and returns, dropping the receiver: later records fail
/// fast in `record`.
fn run_writer(mut conn: Connection, rx: Receiver<Msg>, counters: &Counters) {
    let mut b = Batcher::default();
    loop {
        let first = if b.stopping {
            match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            }
        };
        if b.lingers(&first) {
            std::thread::sleep(LINGER);
        }
        b.gather(first, || rx.try_recv().ok());
        write_batch(&mut conn, &mut b.batch, b.adopted, counters);
        b.ack();
    }
    log::debug!("usage ledger writer stopped");
}

/// Insert `batch` in one transaction, retrying with backoff; then clear it.
/// With `adopted` records (from a dead process's journal) a record whose
/// request the ledger already has is skipped. Errors are logged with the
/// batch's first request id only: records carry key and team names, which
/// do not belong in an error log.
fn write_batch(conn: &mut Connection, batch: &mut Vec<Arc<Record>>, adopted: bool, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    let mut delay = RETRY_BASE;
    let mut attempt = 1;
    let outcome = loop {
        match insert_all(conn, batch, adopted) {
            Ok(inserted) => break Ok(inserted),
            Err(e) if attempt < WRITE_ATTEMPTS => {
                log::debug!(
                    "usage ledger: writing {n} records (first request {}) failed, attempt {attempt}: {e}",
                    batch[0].request_id
                );
                std::thread::sleep(delay);
                delay *= 4;
                attempt += 1;
            }
            Err(e) => break Err(e),
        }
    };
    match outcome {
        Ok(inserted) => {
            counters.written.fetch_add(inserted as u64, Ordering::Relaxed);
            counters.batches.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            let first = batch[0].request_id.clone();
            counters.drop_records(n as u64, true, || {
                format!("writing {n} records (first request {first}) failed {WRITE_ATTEMPTS} times: {e}")
            });
        }
    }
    counters.queued.fetch_sub(n, Ordering::Relaxed);
    batch.clear();
}

/// The rows inserted: all but, with `adopted`, those already there.
fn insert_all(conn: &mut Connection, batch: &[Arc<Record>], adopted: bool) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut inserted = 0;
    {
        let mut stmt = tx.prepare_cached(if adopted { INSERT_IF_NEW } else { INSERT })?;
        for r in batch {
            inserted += stmt.execute(params![
                r.ts_ms,
                r.request_id,
                r.key,
                r.team,
                r.session_id,
                r.agent_id,
                r.model,
                r.provider,
                r.upstream_model,
                int(r.input_tokens),
                int(r.output_tokens),
                int(r.cache_read_tokens),
                int(r.cache_write_tokens),
                r.cost_usd,
                int(r.latency_ms),
                r.ttft_ms.map(int),
                r.status,
                r.attempts,
                r.stream,
                r.error,
                *WRITER,
            ])?;
        }
    }
    tx.commit()?;
    Ok(inserted)
}

/// SQLite integers are i64. Saturate rather than fail: one absurd count must
/// not make its whole batch unwritable.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// [`Totals`] from the [`TOTALS_COLUMNS`] at `at..at+6` of `row`.
fn totals_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Totals> {
    let n = |i: usize| row.get::<_, i64>(at + i).map(|v| u64::try_from(v).unwrap_or(0));
    Ok(Totals {
        requests: n(0)?,
        input_tokens: n(1)?,
        output_tokens: n(2)?,
        cache_read_tokens: n(3)?,
        cache_write_tokens: n(4)?,
        cost_usd: row.get(at + 5)?,
    })
}

/// The SQL of a [`GroupBy`] group.
fn group_expr(by: GroupBy) -> String {
    match by {
        GroupBy::Key => format!("COALESCE(\"key\", '{NO_GROUP}')"),
        GroupBy::Team => format!("COALESCE(team, '{NO_GROUP}')"),
        GroupBy::Model => "model".into(),
        GroupBy::Provider => format!("COALESCE(provider, '{NO_GROUP}')"),
        GroupBy::Session => format!("COALESCE(session_id, '{NO_GROUP}')"),
        GroupBy::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')".into(),
        GroupBy::Hour => "strftime('%Y-%m-%dT%H:00Z', ts_ms / 1000, 'unixepoch')".into(),
    }
}

/// The read side: a read-only connection, safe to use while a gateway writes
/// (WAL readers never block the writer).
pub struct Reader {
    conn: Connection,
}

impl Reader {
    /// Open an existing ledger read-only. A missing file is
    /// [`LedgerError::Missing`], whose message says so plainly.
    pub fn open(path: &Path) -> Result<Reader, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Missing(path.to_path_buf()));
        }
        let open_err = |source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                    LedgerError::NotALedger(path.to_path_buf())
                }
                e => open_err(e),
            })?;
        if found == 0 {
            return Err(LedgerError::NotALedger(path.to_path_buf()));
        }
        if found > SCHEMA_VERSION {
            return Err(LedgerError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Reader { conn })
    }

    /// What `scope` spent from `since_ms` (Unix ms, inclusive) on.
    pub fn spend_since(&self, scope: Scope<'_>, since_ms: i64) -> Result<Totals, LedgerError> {
        let (column, name) = match scope {
            Scope::Key(k) => ("\"key\"", k),
            Scope::Team(t) => ("team", t),
        };
        let sql = format!("SELECT {TOTALS_COLUMNS} FROM requests WHERE {column} = ?1 AND ts_ms >= ?2");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        Ok(stmt.query_row(params![name, since_ms], |row| totals_from_row(row, 0))?)
    }

    /// Totals per group from `since_ms` on: by day in date order, otherwise
    /// the biggest spender first.
    pub fn summary(&self, by: GroupBy, since_ms: i64) -> Result<Vec<SummaryRow>, LedgerError> {
        self.summary_in(by, None, super::Window::since(since_ms))
    }

    /// Totals per group (and per `split` within each group) within `w`: by
    /// day or hour in time order, otherwise the biggest spender first, at
    /// most `w.limit` rows.
    pub fn summary_in(
        &self,
        by: GroupBy,
        split: Option<GroupBy>,
        w: super::Window,
    ) -> Result<Vec<SummaryRow>, LedgerError> {
        let sql = format!(
            "SELECT {} AS grp, {TOTALS_COLUMNS},
                SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END),
                COALESCE(AVG(latency_ms), 0.0), {} AS split
             FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY grp, split ORDER BY {}, split LIMIT ?3",
            group_expr(by),
            split.map_or_else(|| "NULL".into(), group_expr),
            by.order()
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![w.from_ms, w.to_ms, w.limit_sql()], |row| {
            Ok(SummaryRow {
                group: row.get::<_, Option<String>>(0)?.unwrap_or_else(|| NO_GROUP.to_string()),
                totals: totals_from_row(row, 1)?,
                errors: row.get::<_, i64>(7).map(|v| u64::try_from(v).unwrap_or(0))?,
                avg_latency_ms: row.get(8)?,
                split: row.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// See [`super::Reader::recent`].
    pub fn recent(&self, key: &str, limit: u32) -> Result<Vec<super::RecentRow>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM requests WHERE \"key\" = ?1 ORDER BY ts_ms DESC, id DESC LIMIT ?2",
            super::RECENT_COLUMNS
        ))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let rows = stmt.query_map(params![key, i64::from(limit)], |r| {
            Ok(super::RecentRow {
                ts_ms: r.get(0)?,
                request_id: r.get(1)?,
                model: r.get(2)?,
                provider: r.get(3)?,
                status: u16::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                input_tokens: n(r.get(5)?),
                output_tokens: n(r.get(6)?),
                cache_read_tokens: n(r.get(7)?),
                cache_write_tokens: n(r.get(8)?),
                cost_usd: r.get(9)?,
                latency_ms: n(r.get(10)?),
                ttft_ms: r.get::<_, Option<i64>>(11)?.map(n),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// See [`super::Reader::reliability`].
    pub fn reliability(&self, w: super::Window) -> Result<super::Reliability, LedgerError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT COALESCE(provider, '{NO_GROUP}') AS grp, COUNT(*),
                SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END),
                SUM(CASE WHEN attempts > 1 THEN 1 ELSE 0 END)
             FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY grp ORDER BY COUNT(*) DESC, grp"
        ))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let providers = stmt
            .query_map(params![w.from_ms, w.to_ms], |row| {
                Ok(super::ProviderHealth {
                    provider: row.get(0)?,
                    requests: n(row.get(1)?),
                    errors: n(row.get(2)?),
                    failovers: n(row.get(3)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT model, ttft_ms FROM requests
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND ttft_ms IS NOT NULL ORDER BY ts_ms DESC LIMIT ?3",
        )?;
        let ttft = stmt
            .query_map(params![w.from_ms, w.to_ms, super::TTFT_SAMPLES], |row| {
                Ok((row.get::<_, String>(0)?, n(row.get(1)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::Reliability { providers, ttft })
    }

    /// Run `read` on one snapshot of the file (a read transaction), so what
    /// it reads in several queries fits together.
    pub fn consistent<T>(&self, read: impl FnOnce(&Self) -> Result<T, LedgerError>) -> Result<T, LedgerError> {
        self.conn.execute_batch("BEGIN")?;
        let out = read(self);
        let _ = self.conn.execute_batch("COMMIT");
        out
    }

    /// The newest row's id (0: none).
    pub fn last_id(&self) -> Result<i64, LedgerError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM requests", [], |r| r.get(0))?)
    }

    /// Up to `limit` rows after `after_id` that another process wrote (see
    /// [`WRITER`]), oldest first.
    pub fn others_after(&self, after_id: i64, limit: usize) -> Result<Vec<ForeignRow>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, ts_ms, \"key\", team, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd
             FROM requests WHERE id > ?1 AND (writer IS NULL OR writer != ?2) ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after_id, *WRITER, limit as i64], |row| {
            let n = |i: usize| row.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
            Ok(ForeignRow {
                id: row.get(0)?,
                ts_ms: row.get(1)?,
                key: row.get(2)?,
                team: row.get(3)?,
                usage: crate::dialects::Usage {
                    input_tokens: n(4)?,
                    output_tokens: n(5)?,
                    cache_read_input_tokens: n(6)?,
                    cache_creation_input_tokens: n(7)?,
                },
                cost_usd: row.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Records in the ledger.
    pub fn count(&self) -> Result<u64, LedgerError> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_BATCH;

    const DAY_MS: i64 = 86_400_000;
    /// 2026-11-20T00:00:00Z.
    const T0: i64 = 1_795_132_800_000;

    fn rec(i: u64, key: Option<&str>, team: Option<&str>, model: &str, ts_ms: i64) -> Arc<Record> {
        Arc::new(Record {
            ts_ms,
            request_id: format!("req_{i}"),
            key: key.map(str::to_string),
            team: team.map(str::to_string),
            model: model.to_string(),
            input_tokens: 100,
            output_tokens: 10,
            cache_read_tokens: 1000,
            cache_write_tokens: 5,
            cost_usd: 0.25,
            latency_ms: 200,
            status: 200,
            attempts: 1,
            ..Record::default()
        })
    }

    fn all_records(reader: &Reader) -> Vec<Record> {
        let mut stmt = reader
            .conn
            .prepare(
                "SELECT ts_ms, request_id, \"key\", team, session_id, agent_id, model, provider, upstream_model,
                    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms,
                    ttft_ms, status, attempts, stream, error FROM requests ORDER BY id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
            Ok(Record {
                ts_ms: r.get(0)?,
                request_id: r.get(1)?,
                key: r.get(2)?,
                team: r.get(3)?,
                session_id: r.get(4)?,
                agent_id: r.get(5)?,
                model: r.get(6)?,
                provider: r.get(7)?,
                upstream_model: r.get(8)?,
                input_tokens: u(9)?,
                output_tokens: u(10)?,
                cache_read_tokens: u(11)?,
                cache_write_tokens: u(12)?,
                cost_usd: r.get(13)?,
                latency_ms: u(14)?,
                ttft_ms: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
                status: r.get(16)?,
                attempts: r.get(17)?,
                stream: r.get(18)?,
                error: r.get(19)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Hold the database's write lock from another connection, so the
    /// writer stalls in its busy timeout as it would on a slow disk.
    fn lock_db(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn round_trip_keeps_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let full = Record {
            ts_ms: T0 + 123,
            request_id: "req_full".into(),
            key: Some("alice".into()),
            team: Some("platform".into()),
            session_id: Some("sess-1".into()),
            agent_id: Some("agent-7".into()),
            model: "claude-sonnet-4-5".into(),
            provider: Some("oai".into()),
            upstream_model: Some("gpt-4o".into()),
            input_tokens: 1234,
            output_tokens: 567,
            cache_read_tokens: 89_000,
            cache_write_tokens: 12,
            cost_usd: 0.012345,
            latency_ms: 4321,
            ttft_ms: Some(321),
            status: 529,
            attempts: 3,
            stream: true,
            error: Some("overloaded_error".into()),
        };
        let sparse = Record {
            ts_ms: T0,
            request_id: "req_sparse".into(),
            model: "m".into(),
            ..Record::default()
        };
        let ledger = Ledger::open(&path, 16).unwrap();
        assert!(ledger.record(Arc::new(full.clone())));
        assert!(ledger.record(Arc::new(sparse.clone())));
        ledger.close(T).unwrap();
        assert_eq!(ledger.written(), 2);
        assert_eq!(ledger.queued(), 0);

        let reader = Reader::open(&path).unwrap();
        assert_eq!(all_records(&reader), vec![full, sparse]);
    }

    #[test]
    fn open_sets_wal_and_schema_version_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/ledger.db");
        let ledger = Ledger::open(&path, 16).unwrap();
        ledger.record(rec(1, Some("a"), None, "m", T0));
        ledger.close(T).unwrap();
        drop(ledger);

        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(conn);

        // A restart: the same file opens again, keeps its rows, takes more.
        let ledger = Ledger::open(&path, 16).unwrap();
        ledger.record(rec(2, Some("a"), None, "m", T0));
        ledger.close(T).unwrap();
        assert_eq!(Reader::open(&path).unwrap().count().unwrap(), 2);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Ledger::open(&path, 4).unwrap().close(T).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Ledger::open(&path, 4).err().expect("refused");
        assert!(matches!(err, LedgerError::SchemaTooNew { found: 2, .. }), "{err}");
        let err = Reader::open(&path).err().expect("refused");
        assert!(err.to_string().contains("upgrade modelgate"), "{err}");
    }

    #[test]
    fn reader_explains_a_missing_or_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.db");
        let err = Reader::open(&path).err().expect("missing");
        assert!(matches!(err, LedgerError::Missing(_)));
        assert_eq!(
            err.to_string(),
            format!(
                "no usage recorded yet at {} (the gateway creates it on first start)",
                path.display()
            )
        );
        assert!(!path.exists(), "the reader must not create the file");

        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(matches!(Reader::open(&other), Err(LedgerError::NotALedger(_))));
        let text = dir.path().join("text.db");
        std::fs::write(
            &text,
            "this is not sqlite, not even close; long enough to have a header....",
        )
        .unwrap();
        assert!(matches!(Reader::open(&text), Err(LedgerError::NotALedger(_))));
    }

    #[test]
    fn records_are_written_in_batches_while_requests_never_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, 10_000).unwrap();
        let lock = lock_db(&path);
        let started = Instant::now();
        for i in 0..3000 {
            assert!(ledger.record(rec(i, Some("k"), None, "m", T0)));
        }
        // The database is locked, yet queuing 3000 records took no disk time.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ledger.written(), 0);
        assert!(ledger.queued() > 0);
        lock.execute_batch("COMMIT").unwrap();
        ledger.flush(T).unwrap();
        assert_eq!(ledger.written(), 3000);
        assert_eq!(ledger.queued(), 0);
        // The first batch may be small (the writer took what was there when
        // it woke); the rest were drained MAX_BATCH at a time.
        let batches = ledger.counters.batches.load(Ordering::Relaxed);
        assert!(batches <= 5, "{batches} batches for 3000 records");
        assert_eq!(Reader::open(&path).unwrap().count().unwrap(), 3000);
    }

    #[test]
    fn a_full_queue_counts_drops_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, 4).unwrap();
        let lock = lock_db(&path);
        // The writer takes at most one batch, then waits on the lock; the
        // queue holds 4 more. Everything else is dropped, at once.
        const N: u64 = 5_000;
        let accepted = (0..N)
            .filter(|&i| ledger.record(rec(i, Some("k"), None, "m", T0)))
            .count() as u64;
        assert!(accepted <= MAX_BATCH as u64 + 4, "{accepted} accepted");
        assert_eq!(ledger.dropped(), N - accepted);
        lock.execute_batch("COMMIT").unwrap();
        ledger.close(T).unwrap();
        assert_eq!(ledger.written(), accepted);
        assert_eq!(ledger.written() + ledger.dropped(), N);

        // After close, records are refused and counted too.
        assert!(!ledger.record(rec(100_000, None, None, "m", T0)));
        assert_eq!(ledger.dropped(), N + 1 - accepted);
        assert_eq!(Reader::open(&path).unwrap().count().unwrap(), accepted);
    }

    #[test]
    fn close_flushes_everything_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let n = 20_000;
        let ledger = Ledger::open(&path, n as usize).unwrap();
        for i in 0..n {
            assert!(ledger.record(rec(i, Some("k"), Some("t"), "m", T0 + i as i64)));
        }
        ledger.close(T).unwrap();
        ledger.close(T).unwrap();
        assert_eq!(ledger.written(), n);
        assert_eq!(ledger.dropped(), 0);
        assert!(matches!(ledger.flush(T), Err(LedgerError::Closed)));
        assert_eq!(Reader::open(&path).unwrap().count().unwrap(), n);
    }

    #[test]
    fn drop_flushes_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, 1000).unwrap();
        for i in 0..500 {
            ledger.record(rec(i, None, None, "m", T0));
        }
        drop(ledger);
        assert_eq!(Reader::open(&path).unwrap().count().unwrap(), 500);
    }

    #[test]
    fn close_times_out_while_the_disk_is_stuck_and_succeeds_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, 100).unwrap();
        let lock = lock_db(&path);
        for i in 0..10 {
            ledger.record(rec(i, None, None, "m", T0));
        }
        let err = ledger.close(Duration::from_millis(100)).expect_err("times out");
        assert!(matches!(err, LedgerError::Timeout { .. }), "{err}");
        lock.execute_batch("COMMIT").unwrap();
        ledger.close(T).unwrap();
        assert_eq!(ledger.written(), 10);
    }

    #[test]
    fn a_batch_sqlite_keeps_refusing_is_retried_then_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, 100).unwrap();
        ledger.record(rec(1, None, None, "m", T0));
        ledger.flush(T).unwrap();
        // Break the schema under the writer: every insert now fails.
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE requests")
            .unwrap();
        // Held while queuing, so the ten records make at most two batches.
        let lock = lock_db(&path);
        let started = Instant::now();
        for i in 2..12 {
            assert!(ledger.record(rec(i, None, None, "m", T0)));
        }
        lock.execute_batch("COMMIT").unwrap();
        ledger.flush(Duration::from_secs(60)).unwrap();
        // Retried with backoff (50 + 200 + 800 ms) before giving up.
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(ledger.written(), 1);
        assert_eq!(ledger.dropped(), 10);
        assert_eq!(ledger.queued(), 0);
        ledger.close(T).unwrap();
    }

    fn seeded(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, 1000).unwrap();
        let mut i = 0;
        let mut add = |key, team, model: &str, ts, cost: f64, status: u16, latency: u64| {
            i += 1;
            let mut r = (*rec(i, key, team, model, ts)).clone();
            r.cost_usd = cost;
            r.status = status;
            r.latency_ms = latency;
            if status >= 400 {
                r.error = Some("api_error".into());
            }
            assert!(ledger.record(Arc::new(r)));
        };
        // Day 1 (2026-11-20), just after midnight UTC.
        add(Some("alice"), Some("platform"), "opus", T0 + 1, 1.0, 200, 100);
        add(Some("alice"), Some("platform"), "haiku", T0 + 2, 0.5, 200, 300);
        add(Some("bob"), Some("platform"), "opus", T0 + 3, 2.0, 529, 500);
        // Day 2 (2026-11-21), last millisecond of the day.
        add(
            Some("carol"),
            Some("data"),
            "haiku",
            T0 + 2 * DAY_MS - 1,
            0.25,
            200,
            100,
        );
        add(None, None, "opus", T0 + 2 * DAY_MS - 1, 0.125, 200, 100);
        // Day 0 (2026-11-19): before the windows the tests ask for.
        add(Some("alice"), Some("platform"), "opus", T0 - 1, 100.0, 200, 100);
        ledger.close(T).unwrap();
        path
    }

    #[test]
    fn spend_since_by_key_and_team() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Reader::open(&seeded(&dir)).unwrap();
        let alice = reader.spend_since(Scope::Key("alice"), T0).unwrap();
        assert_eq!(
            alice,
            Totals {
                requests: 2,
                input_tokens: 200,
                output_tokens: 20,
                cache_read_tokens: 2000,
                cache_write_tokens: 10,
                cost_usd: 1.5,
            }
        );
        assert_eq!(reader.spend_since(Scope::Key("alice"), T0 - 1).unwrap().cost_usd, 101.5);
        assert_eq!(reader.spend_since(Scope::Key("alice"), T0 + 2).unwrap().requests, 1);
        let platform = reader.spend_since(Scope::Team("platform"), T0).unwrap();
        assert_eq!((platform.requests, platform.cost_usd), (3, 3.5));
        assert_eq!(reader.spend_since(Scope::Team("data"), T0).unwrap().cost_usd, 0.25);
        assert_eq!(reader.spend_since(Scope::Key("nobody"), 0).unwrap(), Totals::default());
        // A key name is data, not SQL.
        assert_eq!(
            reader.spend_since(Scope::Key("' OR 1=1 --"), 0).unwrap(),
            Totals::default()
        );
    }

    #[test]
    fn summary_by_key_team_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Reader::open(&seeded(&dir)).unwrap();
        let groups = |by| -> Vec<(String, u64, f64, u64)> {
            reader
                .summary(by, T0)
                .unwrap()
                .into_iter()
                .map(|r| (r.group, r.totals.requests, r.totals.cost_usd, r.errors))
                .collect()
        };
        assert_eq!(
            groups(GroupBy::Key),
            vec![
                ("bob".into(), 1, 2.0, 1),
                ("alice".into(), 2, 1.5, 0),
                ("carol".into(), 1, 0.25, 0),
                (NO_GROUP.into(), 1, 0.125, 0),
            ]
        );
        assert_eq!(
            groups(GroupBy::Team),
            vec![
                ("platform".into(), 3, 3.5, 1),
                ("data".into(), 1, 0.25, 0),
                (NO_GROUP.into(), 1, 0.125, 0)
            ]
        );
        assert_eq!(
            groups(GroupBy::Model),
            vec![("opus".into(), 3, 3.125, 1), ("haiku".into(), 2, 0.75, 0)]
        );
        let alice = reader
            .summary(GroupBy::Key, T0)
            .unwrap()
            .into_iter()
            .find(|r| r.group == "alice")
            .unwrap();
        assert_eq!(alice.avg_latency_ms, 200.0);
        assert_eq!(alice.totals.input_tokens, 200);
        assert_eq!(alice.totals.cache_read_tokens, 2000);
        assert!(reader.summary(GroupBy::Key, T0 + 10 * DAY_MS).unwrap().is_empty());
    }

    #[test]
    fn summary_by_day_uses_utc_dates_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Reader::open(&seeded(&dir)).unwrap();
        let days: Vec<(String, u64, f64)> = reader
            .summary(GroupBy::Day, 0)
            .unwrap()
            .into_iter()
            .map(|r| (r.group, r.totals.requests, r.totals.cost_usd))
            .collect();
        assert_eq!(
            days,
            vec![
                ("2026-11-19".into(), 1, 100.0),
                ("2026-11-20".into(), 3, 3.5),
                ("2026-11-21".into(), 2, 0.375),
            ]
        );
    }

    #[test]
    fn a_reader_sees_records_while_the_ledger_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, 100).unwrap();
        ledger.record(rec(1, Some("k"), None, "m", T0));
        ledger.flush(T).unwrap();
        let reader = Reader::open(&path).unwrap();
        assert_eq!(reader.count().unwrap(), 1);
        ledger.record(rec(2, Some("k"), None, "m", T0));
        ledger.flush(T).unwrap();
        assert_eq!(reader.count().unwrap(), 2);
        ledger.close(T).unwrap();
    }
}
