//! The intake: where a ledger record becomes durable before the answer it
//! describes ends.
//!
//! A request hands its record to [`super::Ledger::submit`] with an
//! acknowledgement and waits for it before its last bytes go out (see
//! `gateway::meter::before_end`). The intake thread appends everything
//! queued to this process's journal in one `write` (no fsync), answers the
//! acknowledgements, and passes the records on to the store's writer, which
//! batches them into SQLite or PostgreSQL as before. From that `write` on a
//! record is in the kernel's page cache: a process killed afterwards
//! (SIGKILL, the OOM killer, an abort) loses no record of an answer a client
//! received. A host that loses power can lose the last records, as SQLite's
//! `synchronous=NORMAL` can; the spool, written while a PostgreSQL store is
//! away, is fsynced.
//!
//! The journal is a directory of files `<random>-<seq>.intake`, each locked
//! by its process while it is open. The current file is rotated every
//! [`ROTATE_AFTER`] or [`ROTATE_BYTES`]; a file is deleted when the writer
//! has committed (or spooled) its last record: each record travels to the
//! writer with a [`Hold`] on its file, and the file goes with the last hold.
//! A process that stops cleanly leaves no file behind.
//!
//! At start and every [`ADOPT_EVERY`], files whose lock is free (their
//! process died) are adopted: their records go to the writer again, marked
//! [`JournalFile::adopted`] so that a record the store already has (the
//! process died between the commit and the delete) is not written twice.
//! Lines torn by a kill mid-`write` were never acknowledged; they are
//! skipped and counted.
//!
//! Everything here is blocking file I/O on the intake's own thread; a
//! request only ever `try_send`s and awaits its acknowledgement.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Counters, Msg, NotSent, Sent, Worker, MAX_BATCH};
use crate::usage::Record;

/// A journal file is rotated once it is this old (and has records)...
pub const ROTATE_AFTER: Duration = Duration::from_secs(2);
/// ...or this big, so a file is deleted soon after its records are written.
pub const ROTATE_BYTES: u64 = 4 << 20;
/// How often dead processes' journals are looked for (besides at start).
pub const ADOPT_EVERY: Duration = Duration::from_secs(10);
/// How long the intake thread waits for a message before it looks at the
/// clock (rotation, adoption).
const TICK: Duration = Duration::from_millis(500);
const EXTENSION: &str = "intake";

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("ledger journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ledger intake did not finish within {timeout:?} ({queued} records not yet written)")]
    Timeout { timeout: Duration, queued: usize },
    #[error("the ledger is closed")]
    Closed,
}

/// One journal file. Its lock lives as long as this does; the file is
/// deleted when the last [`Hold`] on it goes (its records are written).
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    file: File,
    /// A dead process's file: its records may already be in the store.
    pub adopted: bool,
    /// Unlock it without deleting it (it could not be read).
    keep: bool,
}

impl Drop for JournalFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Deleted while still locked, so no other process adopts it between.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("usage ledger: cannot delete journal {}: {e}", self.path.display());
            }
        }
    }
}

/// What a record carries to the writer: its journal file stays until the
/// record is written.
pub type Hold = Arc<JournalFile>;

/// How the intake hands a message to the store's writer: a blocking send
/// (the writer's queue is bounded; a full one holds the intake back, and
/// then requests' records wait in the intake's queue). False: the writer is
/// gone.
pub(crate) type Forward = Box<dyn Fn(Msg) -> bool + Send>;

/// What requests send the intake thread.
enum In {
    Record(Arc<Record>, Option<tokio::sync::oneshot::Sender<()>>),
    Flush(SyncSender<()>),
    Stop,
}

/// The request side of the intake. Every method takes `&self`.
pub struct Intake {
    tx: SyncSender<In>,
    counters: Arc<Counters>,
    /// Records accepted and not yet written, at most.
    limit: usize,
    dir: PathBuf,
    thread: Mutex<Worker>,
}

impl Intake {
    /// Open (create) the journal directory `dir` and start the intake
    /// thread with a queue of `queue` records, handing records on through
    /// `forward`. Dead processes' journals in `dir` are adopted first.
    pub(crate) fn open(
        dir: &Path,
        queue: usize,
        counters: Arc<Counters>,
        forward: Forward,
    ) -> Result<Intake, IntakeError> {
        std::fs::create_dir_all(dir).map_err(|source| IntakeError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            // Random per intake (not the process's WRITER): two ledgers in
            // one process never share a file name.
            name: rand::random(),
            seq: 0,
            current: None,
            last_error: None,
        };
        // A journal that cannot be written is found now, not per request.
        journal.probe()?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let (done_tx, done) = mpsc::channel::<()>();
        let thread_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-intake".into())
            .spawn(move || {
                let _done = done_tx;
                run(journal, rx, forward, &thread_counters);
            })
            .map_err(|source| IntakeError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Intake {
            tx,
            counters,
            limit: queue.max(1),
            dir: dir.to_path_buf(),
            thread: Mutex::new(Worker::new("ledger intake thread", done, Some(handle))),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queue a record; `ack` is answered once it is in the journal (or the
    /// journal failed: the record still goes to the writer). Never blocks:
    /// a full queue or a closed ledger drops the record (counted, warned
    /// about at most every 10 s), drops `ack` and returns false.
    pub fn submit(&self, r: Arc<Record>, ack: Option<tokio::sync::oneshot::Sender<()>>) -> bool {
        // Counted before the send so the writer's decrement never comes
        // first. The count covers the writer's queue too: records wait there
        // in batches, so this is what bounds them.
        if self.counters.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters
                .drop_records(1, false, || "queue full (state.ledger_queue), record dropped".into());
            return false;
        }
        match self.tx.try_send(In::Record(r, ack)) {
            Ok(()) => true,
            Err(e) => {
                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                let why = match e {
                    TrySendError::Full(_) => "queue full (state.ledger_queue), record dropped",
                    TrySendError::Disconnected(_) => "ledger closed, record dropped",
                };
                self.counters.drop_records(1, false, || why.to_string());
                false
            }
        }
    }

    fn timeout(&self, timeout: Duration) -> IntakeError {
        IntakeError::Timeout {
            timeout,
            queued: self.counters.queued.load(Ordering::Relaxed),
        }
    }

    /// A blocking send bounded by `deadline` (flush and close only).
    fn send_until(&self, msg: In, deadline: Instant) -> Sent {
        super::send_until(msg, deadline, |m| {
            self.tx.try_send(m).map_err(|e| match e {
                TrySendError::Full(m) => NotSent::Full(m),
                TrySendError::Disconnected(_) => NotSent::Closed,
            })
        })
    }

    /// Wait until every record submitted before this call is written,
    /// spooled or counted dropped by the store's writer, for at most
    /// `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), IntakeError> {
        let deadline = Instant::now() + timeout;
        match super::flush_until(deadline, |ack| self.send_until(In::Flush(ack), deadline)) {
            Sent::Yes => Ok(()),
            Sent::TimedOut => Err(self.timeout(timeout)),
            Sent::Closed => Err(IntakeError::Closed),
        }
    }

    /// Journal and hand on what is queued, then stop the thread, waiting at
    /// most `timeout`. The writer is stopped by its own `close` after this.
    /// Idempotent.
    pub fn close(&self, timeout: Duration) -> Result<(), IntakeError> {
        let deadline = Instant::now() + timeout;
        let mut t = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if t.stop(deadline, || self.send_until(In::Stop, deadline)) {
            Ok(())
        } else {
            Err(self.timeout(timeout))
        }
    }
}

struct Current {
    hold: Hold,
    bytes: u64,
    opened: Instant,
}

/// The intake thread's journal.
struct Journal {
    dir: PathBuf,
    name: u64,
    seq: u64,
    current: Option<Current>,
    /// When the last write error was logged (one line per minute at most).
    last_error: Option<Instant>,
}

impl Journal {
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> IntakeError {
        let path = path.to_path_buf();
        move |source| IntakeError::Io { path, source }
    }

    /// Create and remove a file: the directory is writable.
    fn probe(&mut self) -> Result<(), IntakeError> {
        let hold = self.create()?;
        drop(hold);
        Ok(())
    }

    fn create(&mut self) -> Result<Hold, IntakeError> {
        self.seq += 1;
        let path = self.dir.join(format!("{:016x}-{:08}.{EXTENSION}", self.name, self.seq));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(self.io(&path))?;
        file.try_lock()
            .map_err(|e| self.io(&path)(std::io::Error::other(e.to_string())))?;
        Ok(Arc::new(JournalFile {
            path,
            file,
            adopted: false,
            keep: false,
        }))
    }

    /// Let the current file go when it is old or big enough: it is deleted
    /// once its records are written.
    fn rotate_if_due(&mut self) {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.bytes >= ROTATE_BYTES || c.opened.elapsed() >= ROTATE_AFTER)
        {
            self.current = None;
        }
    }

    /// Append `lines` (whole JSON lines) in one `write`; the file they went
    /// to, for the records to hold.
    fn append(&mut self, lines: &[u8]) -> Result<Hold, IntakeError> {
        self.rotate_if_due();
        let current = match &mut self.current {
            Some(c) => c,
            None => {
                let hold = self.create()?;
                self.current.insert(Current {
                    hold,
                    bytes: 0,
                    opened: Instant::now(),
                })
            }
        };
        let wrote = (&current.hold.file).write_all(lines);
        current.bytes += lines.len() as u64;
        let hold = current.hold.clone();
        wrote.map_err(self.io(&hold.path))?;
        Ok(hold)
    }

    fn log_error(&mut self, e: &IntakeError) {
        if self.last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            self.last_error = Some(Instant::now());
            log::error!(
                "usage ledger: {e}; records still go to the store, but a crash before they are written loses them"
            );
        }
    }

    /// Dead processes' journal files (their lock is free), oldest first,
    /// locked by us now.
    fn orphans(&self) -> Vec<JournalFile> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == EXTENSION))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| {
                let file = File::open(&path).ok()?;
                // Ours (open or waiting for its records) or a live process's.
                file.try_lock().ok()?;
                Some(JournalFile {
                    path,
                    file,
                    adopted: true,
                    keep: false,
                })
            })
            .collect()
    }
}

/// A journal file's records; lines that do not parse (torn by a kill
/// mid-write, never acknowledged) are counted.
fn read_journal(file: &JournalFile) -> std::io::Result<(Vec<Record>, u64)> {
    let mut records = Vec::new();
    let mut torn = 0;
    for line in BufReader::new(File::open(&file.path)?).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(r) => records.push(r),
            Err(_) => torn += 1,
        }
    }
    Ok((records, torn))
}

/// Hand dead processes' records to the writer; each file is deleted once
/// they are written.
fn adopt(journal: &Journal, forward: &Forward, counters: &Counters) {
    for mut orphan in journal.orphans() {
        let (records, torn) = match read_journal(&orphan) {
            Ok(r) => r,
            Err(e) => {
                log::error!("usage ledger: reading journal {}: {e}", orphan.path.display());
                // Left in place (and unlocked) for the next look.
                orphan.keep = true;
                continue;
            }
        };
        if torn > 0 {
            counters.drop_records(torn, true, || {
                format!("{torn} torn lines in journal {}", orphan.path.display())
            });
        }
        let n = records.len();
        if n > 0 {
            log::info!(
                "usage ledger: adopting {n} records from {}, left by a process that stopped without writing them",
                orphan.path.display()
            );
        }
        let hold: Hold = Arc::new(orphan);
        let mut records = records.into_iter().map(Arc::new).peekable();
        while records.peek().is_some() {
            let chunk: Vec<Arc<Record>> = records.by_ref().take(MAX_BATCH).collect();
            let n = chunk.len();
            counters.queued.fetch_add(n, Ordering::Relaxed);
            if !forward(Msg::Records(chunk, Some(hold.clone()))) {
                counters.queued.fetch_sub(n, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// The intake thread: take what is queued (up to [`MAX_BATCH`] records),
/// journal the records in one write, acknowledge them, hand everything on
/// in order; rotate and adopt on the clock. After `Stop`, drain the queue
/// without blocking and end.
fn run(mut journal: Journal, rx: Receiver<In>, forward: Forward, counters: &Counters) {
    let mut next_adopt = Instant::now();
    let mut stopping = false;
    let mut lines = Vec::new();
    let mut batch = Vec::with_capacity(64);
    let mut out = Vec::with_capacity(4);
    loop {
        if !stopping && Instant::now() >= next_adopt {
            adopt(&journal, &forward, counters);
            next_adopt = Instant::now() + ADOPT_EVERY;
        }
        let first = if stopping {
            match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.recv_timeout(TICK) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    journal.rotate_if_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        batch.push(first);
        let mut records = 1;
        while records < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    records += matches!(m, In::Record(..)) as usize;
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        lines.clear();
        for m in &batch {
            if let In::Record(r, _) = m {
                if serde_json::to_writer(&mut lines, r.as_ref()).is_ok() {
                    lines.push(b'\n');
                }
            }
        }
        let hold = if lines.is_empty() {
            None
        } else {
            match journal.append(&lines) {
                Ok(h) => Some(h),
                Err(e) => {
                    journal.log_error(&e);
                    None
                }
            }
        };
        // Acknowledge every record first (they are in the journal), then
        // hand them on, in order around any flush, as few messages.
        let mut records = Vec::with_capacity(batch.len());
        for m in batch.drain(..) {
            match m {
                In::Record(r, ack) => {
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    records.push(r);
                }
                In::Flush(ack) => {
                    if !records.is_empty() {
                        out.push(Msg::Records(std::mem::take(&mut records), hold.clone()));
                    }
                    out.push(Msg::Flush(ack));
                }
                In::Stop => stopping = true,
            }
        }
        if !records.is_empty() {
            out.push(Msg::Records(records, hold));
        }
        for msg in out.drain(..) {
            let n = match &msg {
                Msg::Records(r, _) => r.len(),
                _ => 0,
            };
            if !forward(msg) && n > 0 {
                counters.queued.fetch_sub(n, Ordering::Relaxed);
                counters.drop_records(n as u64, false, || "ledger writer gone, records dropped".into());
            }
        }
    }
    log::debug!("usage ledger intake stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> Arc<Record> {
        Arc::new(Record {
            ts_ms: 1_000 + i as i64,
            request_id: format!("req_{i}"),
            model: "claude-x".into(),
            ..Default::default()
        })
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == EXTENSION))
            .collect();
        v.sort();
        v
    }

    /// An intake whose writer is a channel the test reads.
    fn intake(dir: &Path) -> (Intake, Receiver<Msg>) {
        let (tx, rx) = mpsc::channel();
        let forward: Forward = Box::new(move |m| tx.send(m).is_ok());
        (
            Intake::open(dir, 64, Arc::new(Counters::default()), forward).unwrap(),
            rx,
        )
    }

    /// The next forwarded batch's records, and its journal file.
    fn next_records(rx: &Receiver<Msg>) -> (Vec<Arc<Record>>, Option<Hold>) {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Msg::Records(r, h) => (r, h),
            _ => panic!("expected records"),
        }
    }

    fn next_record(rx: &Receiver<Msg>) -> (Arc<Record>, Option<Hold>) {
        let (mut records, hold) = next_records(rx);
        assert_eq!(records.len(), 1);
        (records.remove(0), hold)
    }

    #[tokio::test]
    async fn a_record_is_in_the_journal_when_acknowledged_and_gone_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, rx) = intake(dir.path());
        let (ack, acked) = tokio::sync::oneshot::channel();
        assert!(intake.submit(rec(1), Some(ack)));
        acked.await.unwrap();
        let journal = files(dir.path());
        assert_eq!(journal.len(), 1);
        let text = std::fs::read_to_string(&journal[0]).unwrap();
        assert!(text.contains("\"req_1\"") && text.ends_with('\n'), "{text}");
        let (r, hold) = next_record(&rx);
        assert_eq!(r.request_id, "req_1");
        let hold = hold.expect("a journaled record holds its file");
        assert!(!hold.adopted);
        intake.close(Duration::from_secs(5)).unwrap();
        assert_eq!(files(dir.path()).len(), 1, "the writer has not written it yet");
        drop(hold);
        assert!(files(dir.path()).is_empty(), "written: its journal is deleted");
    }

    #[test]
    fn a_dead_processs_journal_is_adopted_and_a_torn_line_counted() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!("{:016x}-{:08}.{EXTENSION}", 7, 1));
        let mut body = serde_json::to_string(rec(1).as_ref()).unwrap();
        body.push('\n');
        body.push_str(&serde_json::to_string(rec(2).as_ref()).unwrap());
        body.push_str("\n{\"ts_ms\":3,\"requ");
        std::fs::write(&dead, body).unwrap();
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let intake = Intake::open(dir.path(), 64, counters.clone(), Box::new(move |m| tx.send(m).is_ok())).unwrap();
        let (records, hold) = next_records(&rx);
        let ids: Vec<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["req_1", "req_2"]);
        assert!(hold.as_ref().unwrap().adopted);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 1, "the torn line");
        intake.close(Duration::from_secs(5)).unwrap();
        assert!(dead.exists(), "kept until its records are written");
        drop(hold);
        assert!(!dead.exists());
    }

    #[test]
    fn a_live_processs_journal_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (live, live_rx) = intake(dir.path());
        live.submit(rec(1), None);
        let (_, hold) = next_record(&live_rx);
        let (other, other_rx) = intake(dir.path());
        // The other intake looks for orphans before it takes any record, so
        // an adopted one would come first.
        other.submit(rec(2), None);
        let (first, other_hold) = next_record(&other_rx);
        assert_eq!(first.request_id, "req_2", "adopted a live process's journal");
        assert_eq!(files(dir.path()).len(), 2);
        drop((hold, other_hold));
        live.close(Duration::from_secs(5)).unwrap();
        other.close(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_flush_follows_the_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, rx) = intake(dir.path());
        for i in 0..3 {
            intake.submit(rec(i), None);
        }
        let flusher = std::thread::spawn(move || {
            let r = intake.flush(Duration::from_secs(5));
            (intake, r)
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Msg::Records(r, _) => seen.extend(r.iter().map(|r| r.request_id.clone())),
                Msg::Flush(ack) => {
                    ack.send(()).unwrap();
                    break;
                }
                Msg::Stop => panic!("no stop was sent"),
            }
        }
        assert_eq!(seen, ["req_0", "req_1", "req_2"]);
        let (intake, r) = flusher.join().unwrap();
        r.unwrap();
        intake.close(Duration::from_secs(5)).unwrap();
    }
}
