//! Durable records: where the usage ledger lives, written off the request
//! path and read by budgets, `/v1/usage`, `/admin/usage` and `modelgate
//! usage`.
//!
//! `store.url` picks the place ([`Location`]):
//! - `sqlite:PATH` (the default, `state.path`): one file per gateway,
//!   written by a thread of its own ([`sqlite`]).
//! - `postgres://…`: one database for the whole fleet ([`postgres`]),
//!   written in batches from a small runtime of its own, with versioned
//!   migrations at start. While the database is unreachable, records go
//!   to a bounded local [`spool`] and are replayed, exactly once (by request
//!   id), when it is back.
//!
//! With PostgreSQL the store also keeps gateway keys and teams created at
//! run time ([`keys`], [`teams`]).
//!
//! [`Ledger`] is the write side: a request appends its record to the
//! [`intake`]'s journal before the answer ends, and the intake hands it to
//! the store's writer. [`Reader`] is the read side, [`Sinks`] the ledger and
//! the audit log a serving process writes to. The types the readers answer with
//! ([`Totals`], [`SummaryRow`], …) are the same for both places.

pub mod intake;
pub mod keys;
pub mod postgres;
pub mod signin;
pub mod spool;
pub mod sqlite;
pub mod teams;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::schema::{AuditConfig, StateConfig, StoreConfig};
use crate::usage::audit::AuditLog;
use crate::usage::Record;

/// Where durable records live, from `store.url` (default `sqlite:` +
/// `state.path`).
pub enum Location {
    Sqlite(PathBuf),
    Postgres {
        target: Box<postgres::Target>,
        spool: PathBuf,
        spool_max_bytes: u64,
    },
}

impl Location {
    /// Parse `store:`. Errors name the key, never the URL (it may carry a
    /// password).
    pub fn of(store: &StoreConfig, state: &StateConfig) -> Result<Location, String> {
        let Some(url) = store.url.as_deref() else {
            return Ok(Location::Sqlite(PathBuf::from(&state.path)));
        };
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("store.url: `sqlite:` needs a path (sqlite:/var/lib/modelgate/usage.db)".into());
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let target = postgres::Target::parse(url).map_err(|e| format!("store.url: {e}"))?;
            let spool = match &store.spool {
                Some(dir) => PathBuf::from(dir),
                None => Path::new(&state.path)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .join("spool"),
            };
            return Ok(Location::Postgres {
                target: Box::new(target),
                spool,
                spool_max_bytes: store.spool_max_bytes,
            });
        }
        Err("store.url: expected `sqlite:PATH` or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`".into())
    }

    /// What logs and `modelgate usage` may print: no password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => format!("sqlite:{}", p.display()),
            Location::Postgres { target, .. } => target.describe(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] sqlite::LedgerError),
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error(transparent)]
    Intake(#[from] intake::IntakeError),
}

/// Sums over a set of requests.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
}

impl Totals {
    /// As a budget counts it.
    pub fn standing(&self) -> crate::policy::Standing {
        crate::policy::Standing {
            spent_nanos: crate::policy::usd_to_nanos(self.cost_usd) as i64,
            requests: self.requests,
            usage: crate::dialects::Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cache_read_input_tokens: self.cache_read_tokens,
                cache_creation_input_tokens: self.cache_write_tokens,
            },
        }
    }
}

/// A row another process wrote, as budgets count it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignRow {
    pub id: i64,
    pub ts_ms: i64,
    pub key: Option<String>,
    pub team: Option<String>,
    pub usage: crate::dialects::Usage,
    pub cost_usd: f64,
}

/// Whose spend a reader sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// A gateway key, by its name.
    Key(&'a str),
    Team(&'a str),
}

impl<'a> Scope<'a> {
    /// From a policy scope id (`key:NAME`, `team:NAME`).
    pub fn of_id(id: &'a str) -> Scope<'a> {
        match id.split_once(':') {
            Some(("team", name)) => Scope::Team(name),
            Some((_, name)) => Scope::Key(name),
            None => Scope::Key(id),
        }
    }
}

/// What a summary row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Team,
    /// The model the client asked for.
    Model,
    /// The provider that answered (`cache` for a cache hit).
    Provider,
    /// Claude Code's session id (`x-claude-code-session-id`).
    Session,
    /// The UTC date, `YYYY-MM-DD`.
    Day,
    /// The UTC hour, `YYYY-MM-DDTHH:00Z`.
    Hour,
}

/// Per provider within a window: requests, those that ended in an error,
/// and those that took more than one upstream attempt (failed over or
/// retried).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHealth {
    pub provider: String,
    pub requests: u64,
    pub errors: u64,
    pub failovers: u64,
}

/// One of a key's newest requests (`GET /v1/usage?recent=N`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecentRow {
    pub ts_ms: i64,
    pub request_id: String,
    pub model: String,
    pub provider: Option<String>,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
}

impl RecentRow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ts": crate::policy::period::rfc3339(self.ts_ms),
            "request_id": self.request_id,
            "model": self.model,
            "provider": self.provider,
            "status": self.status,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": self.cost_usd,
            "duration_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
        })
    }
}

/// The columns a [`RecentRow`] is read from, in order.
pub(crate) const RECENT_COLUMNS: &str =
    "ts_ms, request_id, model, provider, CAST(status AS BIGINT), input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, ttft_ms";

/// What `/admin/reliability` reads from the ledger.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reliability {
    pub providers: Vec<ProviderHealth>,
    /// `(model, ttft_ms)` of the newest answers that had a first byte.
    pub ttft: Vec<(String, u64)>,
}

/// The most TTFT samples a reliability read takes (the newest).
pub const TTFT_SAMPLES: i64 = 50_000;

/// The rows a summary reads: `from_ms` (inclusive) to `to_ms` (exclusive),
/// at most `limit` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: Option<u32>,
}

impl Window {
    /// Everything from `since_ms` on.
    pub fn since(since_ms: i64) -> Window {
        Window {
            from_ms: since_ms,
            to_ms: i64::MAX,
            limit: None,
        }
    }

    /// `LIMIT`'s value (-1 in SQLite and NULL-free PostgreSQL both need a
    /// number: the largest is "no limit").
    pub fn limit_sql(&self) -> i64 {
        self.limit.map_or(i64::MAX, i64::from)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// The key, team, model or day; [`NO_GROUP`] for requests without a key or team.
    pub group: String,
    pub totals: Totals,
    /// Requests that ended in an error (status ≥ 400 or an error type).
    pub errors: u64,
    pub avg_latency_ms: f64,
    /// The second grouping's value, when the summary was split.
    pub split: Option<String>,
}

impl SummaryRow {
    /// One row as `modelgate usage --json` and `/admin/usage` print it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "group": self.group,
            "requests": self.totals.requests,
            "input_tokens": self.totals.input_tokens,
            "output_tokens": self.totals.output_tokens,
            "cache_read_tokens": self.totals.cache_read_tokens,
            "cache_write_tokens": self.totals.cache_write_tokens,
            "cost_usd": self.totals.cost_usd,
            "errors": self.errors,
            "avg_latency_ms": self.avg_latency_ms,
        });
        if let Some(split) = &self.split {
            v["split"] = split.as_str().into();
        }
        v
    }
}

/// The start of a reading window (`--since`, `?since=`), kept relative
/// until it is used so "now" is read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    /// Unix milliseconds.
    At(i64),
}

impl Since {
    /// A duration back from now (`7d`, `24h`, `30m`), a date (`2026-11-01`,
    /// UTC midnight) or an RFC 3339 time.
    pub fn parse(s: &str) -> Result<Since, String> {
        let s = s.trim();
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(Since::Ago(d));
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(Since::At(t.timestamp_millis()));
        }
        if let Ok(date) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(Since::At(
                date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis(),
            ));
        }
        Err(format!(
            "`{}` is neither a duration (`7d`, `24h`, `30m`) nor a date (`2026-11-01`, RFC 3339)",
            s.escape_debug()
        ))
    }

    pub fn to_ms(self, now_ms: i64) -> i64 {
        match self {
            Since::Ago(d) => now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Since::At(ms) => ms,
        }
    }
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "key" => GroupBy::Key,
            "team" => GroupBy::Team,
            "model" => GroupBy::Model,
            "provider" => GroupBy::Provider,
            "session" => GroupBy::Session,
            "day" => GroupBy::Day,
            "hour" => GroupBy::Hour,
            _ => return None,
        })
    }

    /// Time groups in time order; the others biggest spender first.
    pub fn order(self) -> &'static str {
        match self {
            GroupBy::Day | GroupBy::Hour => "grp",
            _ => "SUM(cost_usd) DESC, COUNT(*) DESC, grp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Session => "session",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
        }
    }
}

/// The group of a row that has no key or team (passthrough-auth mode).
pub const NO_GROUP: &str = "(none)";

/// Which process wrote a row: random per process. During a graceful
/// upgrade two gateways write one ledger; the new one adds to its budgets
/// what the old one records while it drains (rows of another writer).
pub static WRITER: std::sync::LazyLock<i64> = std::sync::LazyLock::new(rand::random);

/// Records per batch (one transaction or statement) at most, for both
/// stores. Large enough that the per-commit cost disappears, small enough
/// that a batch is a few hundred KB at worst.
pub const MAX_BATCH: usize = 1024;

/// How long a writer lets records gather after the first one wakes it:
/// one wake-up and one write per interval instead of per request (group
/// commit). Records reach the store at most this much later.
pub const LINGER: Duration = Duration::from_millis(25);

/// What travels to a ledger writer. `Flush` and `Stop` ride the same FIFO
/// as the records, so "everything sent before" is exactly what they wait
/// for.
pub(crate) enum Msg {
    /// Records, and their journal file when they came through the [`intake`].
    Records(Vec<Arc<Record>>, Option<intake::Hold>),
    Flush(std::sync::mpsc::SyncSender<()>),
    Stop,
}

/// A writer's batching, the same for both stores: a record opens a batch
/// that lingers [`LINGER`] (not when the writer is behind: its last batch
/// was full), then what else is queued joins it, up to [`MAX_BATCH`]
/// records; flushes are answered once the batch is written.
#[derive(Default)]
pub(crate) struct Batcher {
    pub batch: Vec<Arc<Record>>,
    /// The batch's journal files, released (and deleted when no other
    /// record holds them) once the batch is written: [`Batcher::ack`].
    pub holds: Vec<intake::Hold>,
    /// Records adopted from a dead process's journal are in the batch: the
    /// store may have some already.
    pub adopted: bool,
    acks: Vec<std::sync::mpsc::SyncSender<()>>,
    /// `Stop` was seen: drain what is queued without waiting, then end.
    pub stopping: bool,
    behind: bool,
}

impl Batcher {
    /// Whether the writer should wait [`LINGER`] before taking the batch
    /// `first` opens (a flush or a stop goes at once).
    pub fn lingers(&self, first: &Msg) -> bool {
        matches!(first, Msg::Records(..)) && !self.stopping && !self.behind
    }

    /// `first`, then what `next` yields without blocking, until the batch
    /// holds [`MAX_BATCH`] records (a message's records stay together).
    pub fn gather(&mut self, first: Msg, mut next: impl FnMut() -> Option<Msg>) {
        let mut msg = Some(first);
        while let Some(m) = msg {
            match m {
                Msg::Records(records, hold) => {
                    self.batch.extend(records);
                    if let Some(hold) = hold {
                        self.adopted |= hold.adopted;
                        // Consecutive batches share a file: hold it once.
                        if !self.holds.last().is_some_and(|h| Arc::ptr_eq(h, &hold)) {
                            self.holds.push(hold);
                        }
                    }
                }
                Msg::Flush(ack) => self.acks.push(ack),
                Msg::Stop => self.stopping = true,
            }
            msg = if self.batch.len() < MAX_BATCH { next() } else { None };
        }
        self.behind = self.batch.len() >= MAX_BATCH;
    }

    /// The batch is written, spooled or dropped: let its journal files go
    /// and tell the flushers. One that timed out and went has nothing to be
    /// told.
    pub fn ack(&mut self) {
        self.holds.clear();
        self.adopted = false;
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// How a send bounded in time went (flush and close only, never a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Yes,
    TimedOut,
    /// The receiving thread or task is gone.
    Closed,
}

/// What a `try_send` that did not go through says.
pub(crate) enum NotSent<M> {
    Full(M),
    Closed,
}

/// Send `msg` with `try_send`, retrying every millisecond while the queue is
/// full, until `deadline`: the PostgreSQL writer's queue is bounded and a
/// flush or a stop must queue behind the records already in them. (The
/// intake's and the SQLite writer's channels are bounded by the `queued`
/// count instead, and never refuse one for room.)
pub(crate) fn send_until<M>(mut msg: M, deadline: Instant, try_send: impl Fn(M) -> Result<(), NotSent<M>>) -> Sent {
    loop {
        match try_send(msg) {
            Ok(()) => return Sent::Yes,
            Err(NotSent::Closed) => return Sent::Closed,
            Err(NotSent::Full(m)) => {
                if Instant::now() >= deadline {
                    return Sent::TimedOut;
                }
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Ask for a flush (`send` queues the ack sender) and wait for its answer
/// until `deadline`: [`Sent::Yes`] once everything queued before it is done.
pub(crate) fn flush_until(deadline: Instant, send: impl FnOnce(std::sync::mpsc::SyncSender<()>) -> Sent) -> Sent {
    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
    match send(ack_tx) {
        Sent::Yes => {}
        other => return other,
    }
    match ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(()) => Sent::Yes,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Sent::TimedOut,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Sent::Closed,
    }
}

/// A writer thread's (or task's) end, waited for with a deadline: it holds
/// the sender of `done`, which disconnects when it ends (`JoinHandle` has
/// no timeout).
pub(crate) struct Worker {
    pub done: std::sync::mpsc::Receiver<()>,
    pub thread: Option<std::thread::JoinHandle<()>>,
    /// For the log line should the thread have panicked.
    pub name: &'static str,
    stop_sent: bool,
    finished: bool,
}

impl Worker {
    pub fn new(
        name: &'static str,
        done: std::sync::mpsc::Receiver<()>,
        thread: Option<std::thread::JoinHandle<()>>,
    ) -> Worker {
        Worker {
            done,
            thread,
            name,
            stop_sent: false,
            finished: false,
        }
    }

    /// Send the stop (once, with `send_stop`) and wait until the worker has
    /// ended, for at most `deadline`. True once it has (idempotent); false
    /// on a timeout, after which a later call waits again.
    pub fn stop(&mut self, deadline: Instant, send_stop: impl FnOnce() -> Sent) -> bool {
        if self.finished {
            return true;
        }
        if !self.stop_sent {
            match send_stop() {
                // Closed: it already ended; wait for it below.
                Sent::Yes | Sent::Closed => self.stop_sent = true,
                Sent::TimedOut => return false,
            }
        }
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            return false;
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("usage ledger: the {} panicked", self.name);
            }
        }
        self.finished = true;
        true
    }
}

/// A writer's counts, shared between its handles and its thread or task.
#[derive(Debug)]
pub(crate) struct Counters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    /// Accepted by `record` and not yet written, spooled or dropped.
    pub queued: AtomicUsize,
    /// Transactions committed (tests check that records are batched).
    pub batches: AtomicU64,
    /// Records put in the spool (store unreachable), and replayed from it.
    pub spooled: AtomicU64,
    pub replayed: AtomicU64,
    /// Milliseconds since `epoch`, plus one, of the last drop warning (0: none yet).
    last_warn: AtomicU64,
    /// The same for write failures, throttled apart so a recent full-queue
    /// warning never hides a failing disk.
    last_error: AtomicU64,
    epoch: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            batches: AtomicU64::new(0),
            spooled: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            last_warn: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

const WARN_EVERY: Duration = Duration::from_secs(10);

impl Counters {
    /// Count `n` dropped records and log `why` with the running count, at
    /// most once per [`WARN_EVERY`]: a full queue under load would otherwise
    /// log once per request.
    pub fn drop_records(&self, n: u64, error: bool, why: impl FnOnce() -> String) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let throttle = if error { &self.last_error } else { &self.last_warn };
        let last = throttle.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
            return;
        }
        if throttle
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            if error {
                log::error!("usage ledger: {}; {total} records dropped so far", why());
            } else {
                log::warn!("usage ledger: {}; {total} records dropped so far", why());
            }
        }
    }
}

/// The write side of the ledger, wherever it lives: the [`intake`] in
/// front, the store's writer behind it.
pub struct Ledger {
    intake: intake::Intake,
    writer: Writer,
}

/// The store's own writer.
enum Writer {
    Sqlite(sqlite::Ledger),
    Postgres(postgres::Ledger),
}

impl Ledger {
    /// Open the ledger at `at` with a queue of `queue` records. A PostgreSQL
    /// store is not contacted here: a gateway starts (and spools) while the
    /// database is down. The intake's journal is `<file>.intake/` beside a
    /// SQLite file, `intake/` in a PostgreSQL store's spool.
    pub fn open(at: &Location, queue: usize) -> Result<Ledger, StoreError> {
        let (writer, journal) = match at {
            Location::Sqlite(path) => {
                let mut dir = path.clone().into_os_string();
                dir.push(".intake");
                (Writer::Sqlite(sqlite::Ledger::open(path, queue)?), PathBuf::from(dir))
            }
            Location::Postgres {
                target,
                spool,
                spool_max_bytes,
            } => (
                Writer::Postgres(postgres::Ledger::open(target, spool, *spool_max_bytes, queue)?),
                spool.join("intake"),
            ),
        };
        let (counters, forward) = match &writer {
            Writer::Sqlite(l) => (l.counters_arc(), l.forward()),
            Writer::Postgres(l) => (l.counters_arc(), l.forward()),
        };
        let intake = intake::Intake::open(&journal, queue, counters, forward)?;
        Ok(Ledger { intake, writer })
    }

    fn counters(&self) -> &Counters {
        match &self.writer {
            Writer::Sqlite(l) => l.counters(),
            Writer::Postgres(l) => l.counters(),
        }
    }

    /// Journal a record and queue it for the store. Never blocks: when the
    /// queue is full (or the ledger is closed) the record is counted as
    /// dropped and a warning is logged at most every 10 s. See
    /// [`intake::Submitted`] for when a crash of this process can no longer
    /// lose it.
    pub fn submit(&self, r: Arc<Record>) -> intake::Submitted {
        self.intake.submit(r)
    }

    /// Records lost: refused by a full queue, a closed ledger or a full
    /// spool, or in a batch the store kept refusing.
    pub fn dropped(&self) -> u64 {
        self.counters().dropped.load(Ordering::Relaxed)
    }

    /// Records committed to the store by this process (replays included).
    pub fn written(&self) -> u64 {
        self.counters().written.load(Ordering::Relaxed)
    }

    /// Records accepted and not yet written (approximate).
    pub fn queued(&self) -> usize {
        self.counters().queued.load(Ordering::Relaxed)
    }

    /// Records this process put in the spool, and replayed from it.
    pub fn spooled(&self) -> (u64, u64) {
        let c = self.counters();
        (c.spooled.load(Ordering::Relaxed), c.replayed.load(Ordering::Relaxed))
    }

    /// Where the intake keeps its journal.
    pub fn journal(&self) -> &Path {
        self.intake.dir()
    }

    /// Wait until every record queued before this call is written, spooled
    /// or counted dropped, for at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        Ok(self.intake.flush(timeout)?)
    }

    /// Write (or spool) everything queued and stop the writers, waiting at
    /// most `timeout`. Idempotent.
    pub fn close(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        self.intake.close(timeout)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match &self.writer {
            Writer::Sqlite(l) => Ok(l.close(left)?),
            Writer::Postgres(l) => Ok(l.close(left)?),
        }
    }

    /// The keys table, with a PostgreSQL store (on the ledger's pool).
    pub fn key_store(&self) -> Option<keys::KeyStore> {
        match &self.writer {
            Writer::Sqlite(_) => None,
            Writer::Postgres(l) => Some(keys::KeyStore::on(l.reader().db())),
        }
    }

    /// Sign-in state on a PostgreSQL store's pool; `None` for SQLite, whose
    /// [`signin::SigninStore::sqlite`] opens a connection of its own.
    pub fn signin_store(&self) -> Option<signin::SigninStore> {
        match &self.writer {
            Writer::Sqlite(_) => None,
            Writer::Postgres(l) => Some(signin::SigninStore::postgres(l.reader().db())),
        }
    }

    /// A reader on the same store (the PostgreSQL pool is shared).
    pub fn reader(&self) -> Option<Reader> {
        match &self.writer {
            Writer::Sqlite(_) => None,
            Writer::Postgres(l) => Some(Reader::Postgres(l.reader())),
        }
    }
}

/// The read side, wherever the ledger lives. Every method is async: SQLite
/// reads run on a blocking thread, PostgreSQL reads on the store's runtime.
pub enum Reader {
    Sqlite(Arc<std::sync::Mutex<sqlite::Reader>>),
    Postgres(postgres::Reader),
}

/// Budget history for every scope, read in one snapshot.
#[derive(Debug, Default)]
pub struct History {
    /// The newest row the snapshot saw (0: none).
    pub last_id: i64,
    /// Per scope id, in the order asked.
    pub totals: Vec<Totals>,
}

impl Reader {
    /// A reader on `at`. A missing SQLite file is an error whose message
    /// says so plainly ([`sqlite::LedgerError::Missing`]).
    pub async fn open(at: &Location) -> Result<Reader, StoreError> {
        match at {
            Location::Sqlite(path) => {
                let path = path.clone();
                let reader = blocking(move || sqlite::Reader::open(&path)).await?;
                Ok(Reader::Sqlite(Arc::new(std::sync::Mutex::new(reader))))
            }
            Location::Postgres { target, .. } => Ok(Reader::Postgres(postgres::Reader::connect(target).await?)),
        }
    }

    /// Whether every replica reads the same records (a shared store).
    pub fn is_shared(&self) -> bool {
        matches!(self, Reader::Postgres(_))
    }

    async fn sqlite<T: Send + 'static>(
        r: &Arc<std::sync::Mutex<sqlite::Reader>>,
        read: impl FnOnce(&sqlite::Reader) -> Result<T, sqlite::LedgerError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let r = r.clone();
        blocking(move || read(&r.lock().unwrap_or_else(|p| p.into_inner()))).await
    }

    /// What each of `scopes` (policy scope ids, `key:NAME` / `team:NAME`)
    /// spent since its `since_ms`, and the newest row, in one snapshot.
    pub async fn history(&self, scopes: Vec<(String, i64)>) -> Result<History, StoreError> {
        match self {
            Reader::Sqlite(r) => {
                Self::sqlite(r, move |r| {
                    r.consistent(|r| {
                        let last_id = r.last_id()?;
                        let totals = scopes
                            .iter()
                            .map(|(id, since)| r.spend_since(Scope::of_id(id), *since))
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(History { last_id, totals })
                    })
                })
                .await
            }
            Reader::Postgres(r) => Ok(r.history(scopes).await?),
        }
    }

    /// Totals per group from `since_ms` on: by day in date order, otherwise
    /// the biggest spender first.
    pub async fn summary(&self, by: GroupBy, since_ms: i64) -> Result<Vec<SummaryRow>, StoreError> {
        self.summary_in(by, None, Window::since(since_ms)).await
    }

    /// Totals per group, and per `split` within each group, within a window
    /// (`/admin/usage`).
    pub async fn summary_in(
        &self,
        by: GroupBy,
        split: Option<GroupBy>,
        w: Window,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        match self {
            Reader::Sqlite(r) => Self::sqlite(r, move |r| r.summary_in(by, split, w)).await,
            Reader::Postgres(r) => Ok(r.summary_in(by, split, w).await?),
        }
    }

    /// Per-provider errors and failovers in `w`, and the newest
    /// [`TTFT_SAMPLES`] `(model, ttft_ms)` of answers that had a first byte.
    pub async fn reliability(&self, w: Window) -> Result<Reliability, StoreError> {
        match self {
            Reader::Sqlite(r) => Self::sqlite(r, move |r| r.reliability(w)).await,
            Reader::Postgres(r) => Ok(r.reliability(w).await?),
        }
    }

    /// The newest `limit` requests of gateway key (or developer) `key`.
    pub async fn recent(&self, key: String, limit: u32) -> Result<Vec<RecentRow>, StoreError> {
        match self {
            Reader::Sqlite(r) => Self::sqlite(r, move |r| r.recent(&key, limit)).await,
            Reader::Postgres(r) => Ok(r.recent(key, limit).await?),
        }
    }

    /// Up to `limit` rows after `after_id` that another process wrote.
    pub async fn others_after(&self, after_id: i64, limit: usize) -> Result<Vec<ForeignRow>, StoreError> {
        match self {
            Reader::Sqlite(r) => Self::sqlite(r, move |r| r.others_after(after_id, limit)).await,
            Reader::Postgres(r) => Ok(r.others_after(after_id, limit).await?),
        }
    }
}

/// Run blocking `f` off the async workers.
async fn blocking<T: Send + 'static, E: Into<StoreError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(StoreError::Sqlite(sqlite::LedgerError::Spawn(std::io::Error::other(
            e.to_string(),
        )))),
    }
}

/// Where finished requests go: the ledger always, the audit log when
/// `audit.path` is set. Opened once the server runs (after a daemon fork:
/// their writer threads must live in the serving process).
pub struct Sinks {
    pub ledger: Ledger,
    pub audit: Option<AuditLog>,
    /// Where the ledger is, for readers.
    pub location: Location,
}

impl Sinks {
    pub fn open(store: &StoreConfig, state: &StateConfig, audit: &AuditConfig) -> Result<Sinks, String> {
        let location = Location::of(store, state)?;
        let key = match location {
            Location::Sqlite(_) if store.url.is_none() => "state.path",
            _ => "store.url",
        };
        let ledger = Ledger::open(&location, state.ledger_queue.max(1)).map_err(|e| format!("{key}: {e}"))?;
        let audit = match audit.path {
            Some(_) => Some(AuditLog::open(audit, state.ledger_queue.max(1)).map_err(|e| format!("audit.path: {e}"))?),
            None => None,
        };
        Ok(Sinks {
            ledger,
            audit,
            location,
        })
    }

    /// Everything that can be checked before the server starts, without
    /// connecting to a database: the SQLite ledger opens (and migrates),
    /// a PostgreSQL URL parses and its CA file reads, the spool directory
    /// and the audit log can be created.
    pub fn check(store: &StoreConfig, state: &StateConfig, audit: &AuditConfig) -> Result<(), String> {
        match Location::of(store, state)? {
            // The writer alone (it opens and migrates the file): the intake
            // would adopt a stopped gateway's journal, which is the next
            // serving process's business, not a check's.
            Location::Sqlite(path) => {
                let key = if store.url.is_none() { "state.path" } else { "store.url" };
                let ledger = sqlite::Ledger::open(&path, 1).map_err(|e| format!("{key}: {e}"))?;
                ledger
                    .close(Duration::from_secs(5))
                    .map_err(|e| format!("{key}: {e}"))?;
            }
            Location::Postgres { target, spool, .. } => {
                target.check().map_err(|e| format!("store.url: {e}"))?;
                std::fs::create_dir_all(&spool).map_err(|e| format!("store.spool {}: {e}", spool.display()))?;
            }
        }
        if audit.path.is_some() {
            AuditLog::open(audit, 1)
                .map_err(|e| format!("audit.path: {e}"))?
                .close(Duration::from_secs(5));
        }
        Ok(())
    }

    /// A reader on the ledger these sinks write: the shared pool for a
    /// PostgreSQL store, a read-only connection for SQLite.
    pub async fn reader(&self) -> Result<Reader, StoreError> {
        match self.ledger.reader() {
            Some(r) => Ok(r),
            None => Reader::open(&self.location).await,
        }
    }

    /// Flush and stop both writers (graceful shutdown), bounded in time.
    pub fn close(&self, timeout: Duration) {
        if let Err(e) = self.ledger.close(timeout) {
            log::error!("usage ledger: {e}");
        }
        if let Some(a) = &self.audit {
            a.close(timeout);
        }
    }
}
