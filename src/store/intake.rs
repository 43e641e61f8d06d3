//! The intake: where a ledger record becomes durable before the answer it
//! describes ends.
//!
//! A request hands its record to [`super::Ledger::submit`] before its last
//! bytes go out (see `gateway::meter::before_end`). The request's own
//! thread appends the record, as one JSON line, to the process's journal:
//! a file mapped into memory (`MAP_SHARED`), whose pages the intake thread
//! touched before handing it out, so the append is a copy into memory that
//! is already there: no system call, no page fault, no wait for another
//! thread. From that copy on the record is in the kernel's page cache: a
//! process killed afterwards (SIGKILL, the OOM killer, an abort) loses no
//! record of an answer a client received. A host that loses power can lose
//! the last records, as SQLite's `synchronous=NORMAL` can; the spool,
//! written while a PostgreSQL store is away, is fsynced.
//!
//! Threads append into [`LANES`] lanes (a thread keeps its lane; a lane's
//! lock is shared only by threads beyond the first [`LANES`]). A lane holds
//! one mapped segment of [`SEGMENT_BYTES`] and the records in it that the
//! store's writer has not been given yet. A full lane takes a spare segment
//! the intake thread made ready; when there is none (the first record after
//! a quiet spell, or a journal that cannot keep up), the record goes to the
//! intake thread instead, which journals it and answers: that request waits
//! for it, as every request once did.
//!
//! The intake thread is woken by the first record after it last looked,
//! lets records gather for [`GATHER`], then hands every lane's records to
//! the store's writer (which batches them into SQLite or PostgreSQL), makes
//! spares, and lets go of segments that are full or older than
//! [`ROTATE_AFTER`] (their mapping is dropped at once: only the lanes' and
//! the spares' pages are in the process's memory). A segment's file is
//! deleted when the writer has committed (or spooled) its last record: each
//! record travels to the writer with a [`Hold`] on its file, and the file
//! goes with the last hold. A process that stops cleanly leaves no file
//! behind.
//!
//! The journal is a directory of files `<random>-<seq>.intake`, each locked
//! by its process while it is open. At start and every [`ADOPT_EVERY`],
//! files whose lock is free (their process died) are adopted: their records
//! go to the writer again, marked [`JournalFile::adopted`] so that a record
//! the store already has (the process died between the commit and the
//! delete) is not written twice. A segment's unused tail is zeros; a line
//! torn by a kill mid-copy was never acknowledged: it is skipped and
//! counted.
//!
//! A segment's blocks are allocated before it is mapped, so a full disk is
//! an error for the intake thread (logged; records then go to the store
//! unjournaled, as they did when a journal `write` failed) and never a fault
//! in a request. What the kernel can still make a request wait for: a
//! journal page it is writing back when the request writes to it (a fault
//! that waits for that page). Segments live at most [`ROTATE_AFTER`], well
//! under the 30 s after which the kernel writes dirty pages back of its own
//! accord; memory pressure, or more dirty pages in the system than its
//! background threshold, can start that sooner. Everything else here
//! (creating, mapping, unmapping, deleting, reading dead processes' files)
//! is the intake thread's.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use super::{Counters, Msg, Sent, Worker, MAX_BATCH};
use crate::usage::Record;

/// The size of a journal segment (about 600 records). Small, because the
/// lanes' and the spares' segments are mapped (in the process's RSS) for as
/// long as they are in use.
pub const SEGMENT_BYTES: usize = 256 << 10;
/// Lanes threads append into. A thread keeps the lane it first took.
pub const LANES: usize = 16;
/// Spare segments the intake thread keeps ready while records come in, at
/// least (more when more lanes let their segments go in one pass: each of
/// them takes one next).
const SPARES: usize = 2;
/// A segment is let go once it is this old, so its file is deleted soon
/// after its records are written and its pages are never old enough for
/// the kernel to write them back while a request writes to them.
pub const ROTATE_AFTER: Duration = Duration::from_secs(2);
/// How often dead processes' journals are looked for (besides at start).
pub const ADOPT_EVERY: Duration = Duration::from_secs(10);
/// How long the intake thread lets records gather after the first one
/// wakes it: one wake-up per interval under load, not one per record.
pub const GATHER: Duration = Duration::from_millis(5);
/// Spares are let go after this long without a record (an idle gateway
/// maps no journal).
const IDLE: Duration = Duration::from_secs(10);
/// How long the intake thread waits for a message before it looks at the
/// clock (rotation, adoption).
const TICK: Duration = Duration::from_millis(500);
const EXTENSION: &str = "intake";
/// The page size the intake touches segments by (a larger page is touched
/// more than once).
const PAGE: usize = 4096;

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
    /// Open for its lock.
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

/// How the intake hands a message to the store's writer. SQLite's queue is
/// bounded by the count of records accepted and not yet written (which the
/// intake checks before it takes a record), so this never waits there;
/// PostgreSQL's is a bounded channel, and a full one holds the intake thread
/// back (then the lanes run out of spares and requests queue for it).
/// False: the writer is gone.
pub(crate) type Forward = Box<dyn Fn(Msg) -> bool + Send>;

/// A journal file mapped for appending, its pages already touched.
struct Segment {
    hold: Hold,
    map: MmapMut,
    used: usize,
    opened: Instant,
}

impl Segment {
    /// Copy `line` in after the last one; false when it does not fit.
    fn append(&mut self, line: &[u8]) -> bool {
        let end = self.used + line.len();
        if end > self.map.len() {
            return false;
        }
        self.map[self.used..end].copy_from_slice(line);
        self.used = end;
        true
    }
}

/// Where some threads' records go.
#[derive(Default)]
struct Lane {
    segment: Option<Segment>,
    /// Records in `segment` the writer has not been given yet.
    pending: Vec<Arc<Record>>,
    /// Segments this lane filled, with their records not yet given on.
    full: Vec<(Segment, Vec<Arc<Record>>)>,
}

impl Lane {
    /// Append `line`, moving to a spare when the segment is full. False
    /// when there is no segment with room (no spare, or a line larger than
    /// a segment).
    fn append(&mut self, line: &[u8], spares: &Mutex<Vec<Segment>>) -> bool {
        if self.segment.as_mut().is_some_and(|s| s.append(line)) {
            return true;
        }
        let Some(mut next) = lock(spares).pop() else {
            return false;
        };
        if !next.append(line) {
            lock(spares).push(next);
            return false;
        }
        self.install(next);
        true
    }

    /// Make `segment` the lane's (its age counts from now); the one before
    /// keeps its records.
    fn install(&mut self, mut segment: Segment) {
        segment.opened = Instant::now();
        if let Some(old) = self.segment.replace(segment) {
            self.full.push((old, std::mem::take(&mut self.pending)));
        }
    }

    /// Hand the lane's records to `out`; segments that are full, older than
    /// [`ROTATE_AFTER`] or (`all`) every one go to `retired`.
    fn take(&mut self, all: bool, out: &mut Vec<Msg>, retired: &mut Vec<Segment>) -> usize {
        let mut n = 0;
        for (segment, records) in self.full.drain(..) {
            n += records.len();
            push_records(out, records, &segment.hold);
            retired.push(segment);
        }
        if let Some(segment) = &self.segment {
            let records = std::mem::take(&mut self.pending);
            n += records.len();
            push_records(out, records, &segment.hold);
            if all || segment.opened.elapsed() >= ROTATE_AFTER {
                retired.extend(self.segment.take());
            }
        }
        n
    }
}

/// `records` as writer messages of at most [`MAX_BATCH`], each holding
/// their file.
fn push_records(out: &mut Vec<Msg>, mut records: Vec<Arc<Record>>, hold: &Hold) {
    while !records.is_empty() {
        let rest = if records.len() > MAX_BATCH {
            records.split_off(MAX_BATCH)
        } else {
            Vec::new()
        };
        out.push(Msg::Records(records, Some(hold.clone())));
        records = rest;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lane was held leaves it consistent: every field is
    // updated in one step.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// This thread's lane, taken on its first record.
    static LANE: Cell<usize> = const { Cell::new(usize::MAX) };
    /// This thread's record being encoded (reused).
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}
static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

fn my_lane() -> usize {
    LANE.with(|l| {
        if l.get() == usize::MAX {
            l.set(NEXT_LANE.fetch_add(1, Ordering::Relaxed) % LANES);
        }
        l.get()
    })
}

/// `r` as one JSON line in `line`.
fn encode(r: &Record, line: &mut Vec<u8>) -> bool {
    line.clear();
    let ok = serde_json::to_writer(&mut *line, r).is_ok();
    line.push(b'\n');
    ok
}

/// What the request side and the intake thread share.
struct Shared {
    lanes: Box<[Mutex<Lane>]>,
    /// The intake thread's own lane (records the lanes had no room for).
    own: Mutex<Lane>,
    spares: Mutex<Vec<Segment>>,
    /// Records were appended since the intake thread last looked, and it
    /// has been woken for them.
    armed: AtomicBool,
    /// `close` has begun: lanes take no more records.
    closed: AtomicBool,
}

/// What became of a record given to [`Intake::submit`].
#[derive(Debug)]
pub enum Submitted {
    /// In the journal: a crash of this process from now on does not lose
    /// it.
    Journaled,
    /// Queued for the intake thread, which answers this once the record is
    /// in the journal (or the journal failed: the record still goes to the
    /// writer).
    Queued(tokio::sync::oneshot::Receiver<()>),
    /// Not taken (a full queue, a closed ledger): counted as dropped.
    Dropped,
}

/// What requests send the intake thread.
enum In {
    /// Records were appended to the lanes.
    Wake,
    /// A record the lanes had no room for.
    Record(Arc<Record>, tokio::sync::oneshot::Sender<()>),
    Flush(SyncSender<()>),
    Stop,
}

/// The request side of the intake. Every method takes `&self`.
pub struct Intake {
    /// Unbounded as a channel (a bounded one allocates and touches all its
    /// slots at start): the `queued` count, checked by `submit` before
    /// anything is sent, is what bounds the records in it.
    tx: Sender<In>,
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared {
            lanes: (0..LANES).map(|_| Mutex::default()).collect(),
            own: Mutex::default(),
            spares: Mutex::default(),
            armed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            // Random per intake (not the process's WRITER): two ledgers in
            // one process never share a file name.
            name: rand::random(),
            seq: 0,
            last_error: None,
        };
        // A directory where no journal file can be made is found now, not
        // per request. (Space is not: a full disk is logged by the intake
        // thread, and records then go to the store unjournaled.)
        drop(journal.open_new()?);
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let keeper = Keeper::new(journal, shared.clone(), forward, counters.clone());
        let handle = std::thread::Builder::new()
            .name("ledger-intake".into())
            .spawn(move || {
                let _done = done_tx;
                keeper.run(rx);
            })
            .map_err(|source| IntakeError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Intake {
            tx,
            shared,
            counters,
            limit: queue.max(1),
            dir: dir.to_path_buf(),
            thread: Mutex::new(Worker::new("ledger intake thread", done, Some(handle))),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Journal a record (see [`Submitted`]). Never blocks: a full queue or
    /// a closed ledger drops the record (counted, warned about at most
    /// every 10 s).
    pub fn submit(&self, r: Arc<Record>) -> Submitted {
        // Counted before anything else so the writer's decrement never
        // comes first. The count covers the lanes and the writer's queue:
        // this is what bounds them.
        if self.counters.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            return self.drop_one("queue full (state.ledger_queue), record dropped");
        }
        let submitted = LINE.with_borrow_mut(|line| self.append(r, line));
        if let Submitted::Journaled = submitted {
            if !self.shared.armed.load(Ordering::Relaxed) && !self.shared.armed.swap(true, Ordering::AcqRel) {
                let _ = self.tx.send(In::Wake);
            }
        }
        submitted
    }

    /// Append `r` to this thread's lane or, with no room there, queue it
    /// for the intake thread; both under the lane's lock. `close` sets
    /// `closed` before the intake thread takes every lane for the last time
    /// and then empties its queue once more, so a record is in a lane it
    /// takes, in the queue it empties, or refused here.
    fn append(&self, r: Arc<Record>, line: &mut Vec<u8>) -> Submitted {
        let encoded = encode(&r, line);
        let mut lane = lock(&self.shared.lanes[my_lane()]);
        if self.shared.closed.load(Ordering::Relaxed) {
            drop(lane);
            return self.drop_one("ledger closed, record dropped");
        }
        if encoded && lane.append(line, &self.shared.spares) {
            lane.pending.push(r);
            return Submitted::Journaled;
        }
        let (ack, acked) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(In::Record(r, ack));
        drop(lane);
        match sent {
            Ok(()) => Submitted::Queued(acked),
            Err(_) => self.drop_one("ledger closed, record dropped"),
        }
    }

    fn drop_one(&self, why: &'static str) -> Submitted {
        self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        self.counters.drop_records(1, false, || why.to_string());
        Submitted::Dropped
    }

    fn timeout(&self, timeout: Duration) -> IntakeError {
        IntakeError::Timeout {
            timeout,
            queued: self.counters.queued.load(Ordering::Relaxed),
        }
    }

    /// Flush and close: never refused for room, only by a gone thread.
    fn send(&self, msg: In) -> Sent {
        match self.tx.send(msg) {
            Ok(()) => Sent::Yes,
            Err(_) => Sent::Closed,
        }
    }

    /// Wait until every record submitted before this call is written,
    /// spooled or counted dropped by the store's writer, for at most
    /// `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), IntakeError> {
        let deadline = Instant::now() + timeout;
        match super::flush_until(deadline, |ack| self.send(In::Flush(ack))) {
            Sent::Yes => Ok(()),
            Sent::TimedOut => Err(self.timeout(timeout)),
            Sent::Closed => Err(IntakeError::Closed),
        }
    }

    /// Take no more records, hand on what the lanes and the queue hold,
    /// then stop the thread, waiting at most `timeout`. The writer is
    /// stopped by its own `close` after this. Idempotent.
    pub fn close(&self, timeout: Duration) -> Result<(), IntakeError> {
        let deadline = Instant::now() + timeout;
        self.shared.closed.store(true, Ordering::Relaxed);
        let mut t = lock(&self.thread);
        if t.stop(deadline, || self.send(In::Stop)) {
            Ok(())
        } else {
            Err(self.timeout(timeout))
        }
    }
}

/// Where the intake thread makes journal files.
struct Journal {
    dir: PathBuf,
    name: u64,
    seq: u64,
    /// When the last error was logged (one line per minute at most).
    last_error: Option<Instant>,
}

impl Journal {
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> IntakeError {
        let path = path.to_path_buf();
        move |source| IntakeError::Io { path, source }
    }

    /// A new locked file of `bytes`, its blocks allocated, mapped, every
    /// page faulted in.
    fn create(&mut self, bytes: usize) -> Result<Segment, IntakeError> {
        let hold = Arc::new(self.open_new()?);
        let map = map_segment(&hold.file, bytes).map_err(|source| IntakeError::Io {
            path: hold.path.clone(),
            source,
        })?;
        Ok(Segment {
            hold,
            map,
            used: 0,
            opened: Instant::now(),
        })
    }

    /// A new, empty, locked journal file (deleted when dropped).
    fn open_new(&mut self) -> Result<JournalFile, IntakeError> {
        // Another process adopting the directory can take a file between
        // its creation and its lock (and delete it, finding no records):
        // then the next name is tried.
        for _ in 0..3 {
            self.seq += 1;
            let path = self.dir.join(format!("{:016x}-{:08}.{EXTENSION}", self.name, self.seq));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(self.io(&path))?;
            if file.try_lock().is_err() || file.metadata().map_err(self.io(&path))?.nlink() == 0 {
                continue;
            }
            return Ok(JournalFile {
                path,
                file,
                adopted: false,
                keep: false,
            });
        }
        Err(IntakeError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("new journal files kept being taken by another process"),
        })
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

/// `file` (new, locked) grown to `bytes` with its blocks allocated, mapped
/// and every page faulted in, writable: a request's append neither faults
/// nor allocates. Allocating first is what makes a full disk an error here
/// rather than a SIGBUS on a page the file has no block for.
fn map_segment(file: &File, bytes: usize) -> std::io::Result<MmapMut> {
    #[cfg(target_os = "linux")]
    nix::fcntl::posix_fallocate(file, 0, bytes as i64).map_err(std::io::Error::from)?;
    #[cfg(not(target_os = "linux"))]
    file.set_len(bytes as u64)?;
    // SAFETY: the file is this process's alone: created here
    // (`create_new`) and locked, so no other process adopts (reads) it
    // while it is mapped, and nothing else writes it. The mapping is used
    // as plain bytes.
    let mut map = unsafe { MmapMut::map_mut(file) }?;
    #[cfg(target_os = "linux")]
    match map.advise(memmap2::Advice::PopulateWrite) {
        Ok(()) => return Ok(map),
        // Kernels before 5.14 lack the advice: a write to each page does
        // the same (the blocks are allocated, so it cannot fault).
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => {}
        Err(e) => return Err(e),
    }
    for offset in (0..map.len()).step_by(PAGE) {
        map[offset] = 0;
    }
    std::hint::black_box(&mut map[..]);
    Ok(map)
}

/// A journal file's records, zero bytes between lines skipped; lines that
/// do not parse (torn by a kill mid-copy or mid-write, never
/// acknowledged) are counted.
fn read_journal(file: &JournalFile) -> std::io::Result<(Vec<Record>, u64)> {
    let mut records = Vec::new();
    let mut torn = 0;
    for line in BufReader::new(File::open(&file.path)?).split(b'\n') {
        let line = line?;
        // Zeros before a line are a segment's unused tail, or (after a
        // power loss) a page that never reached the disk: skipped.
        let Some(start) = line.iter().position(|&b| b != 0) else {
            continue;
        };
        match serde_json::from_slice::<Record>(&line[start..]) {
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

/// The intake thread.
struct Keeper {
    journal: Journal,
    shared: Arc<Shared>,
    forward: Forward,
    counters: Arc<Counters>,
    /// When a record last came in (spares go after [`IDLE`]).
    last_record: Instant,
    /// What the current pass hands the writer, in order; flushes go after
    /// every record taken in the same pass.
    out: Vec<Msg>,
    flushes: Vec<Msg>,
    /// A record being encoded (reused).
    line: Vec<u8>,
}

impl Keeper {
    fn new(journal: Journal, shared: Arc<Shared>, forward: Forward, counters: Arc<Counters>) -> Keeper {
        Keeper {
            journal,
            shared,
            forward,
            counters,
            last_record: Instant::now(),
            out: Vec::with_capacity(LANES + 4),
            flushes: Vec::new(),
            line: Vec::new(),
        }
    }

    /// Wait for a wake-up (or a record, a flush, a stop), let records
    /// gather, then: journal and acknowledge the records sent here, hand
    /// every lane's records to the writer (flushes after them), make
    /// spares, let old segments go; on the clock, adopt and rotate. After
    /// `Stop`, drain the queue without blocking, hand on everything and
    /// end.
    fn run(mut self, rx: Receiver<In>) {
        let mut next_adopt = Instant::now();
        let mut stopping = false;
        loop {
            if !stopping && Instant::now() >= next_adopt {
                adopt(&self.journal, &self.forward, &self.counters);
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
                        self.hand_over(false);
                        if self.last_record.elapsed() >= IDLE {
                            // Unmapped and deleted outside the lock requests take.
                            drop(std::mem::take(&mut *lock(&self.shared.spares)));
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            if matches!(first, In::Wake) && !stopping {
                std::thread::sleep(GATHER);
            }
            // Cleared before the lanes are looked at: a record appended
            // from here on wakes the thread again.
            self.shared.armed.store(false, Ordering::SeqCst);
            let mut records = 0;
            let mut next = Some(first);
            while let Some(m) = next {
                records += matches!(m, In::Record(..)) as usize;
                stopping |= self.take(m);
                next = if records < MAX_BATCH { rx.try_recv().ok() } else { None };
            }
            let (took, retired) = self.hand_over(false);
            // Spares only while records come in: a flush alone (budgets
            // seeded at start) leaves an idle gateway without a mapping.
            if took > 0 && !stopping {
                self.last_record = Instant::now();
                self.make_spares(retired.clamp(SPARES, LANES));
            }
        }
        // Everything the lanes hold goes on; every segment is let go (each
        // file is deleted once its records are written).
        self.shared.closed.store(true, Ordering::Relaxed);
        self.hand_over(true);
        // A request that queued a record here did so holding its lane, so
        // before that lane was taken above: the queue has it now.
        while let Ok(m) = rx.try_recv() {
            self.take(m);
        }
        self.hand_over(true);
        drop(std::mem::take(&mut *lock(&self.shared.spares)));
        log::debug!("usage ledger intake stopped");
    }

    /// Take one message: journal and acknowledge a record, keep a flush for
    /// the end of the pass. True for `Stop`.
    fn take(&mut self, m: In) -> bool {
        match m {
            In::Wake => {}
            In::Record(r, ack) => {
                self.journal_own(r);
                let _ = ack.send(());
            }
            In::Flush(ack) => self.flushes.push(Msg::Flush(ack)),
            In::Stop => return true,
        }
        false
    }

    /// Journal a record the lanes had no room for in the thread's own lane,
    /// making a segment when no spare is left. On an error it still goes to
    /// the writer, unjournaled.
    fn journal_own(&mut self, r: Arc<Record>) {
        let mut own = lock(&self.shared.own);
        let line = &mut self.line;
        let journaled = encode(&r, line)
            && (own.append(line, &self.shared.spares)
                || match self.journal.create(SEGMENT_BYTES.max(line.len())) {
                    Ok(mut segment) => {
                        let fits = segment.append(line);
                        own.install(segment);
                        fits
                    }
                    Err(e) => {
                        self.journal.log_error(&e);
                        false
                    }
                });
        if journaled {
            own.pending.push(r);
        } else {
            self.out.push(Msg::Records(vec![r], None));
        }
    }

    /// One pass: take every lane's records (see [`Lane::take`]), hand them
    /// to the writer in order with this pass's flushes after them, and
    /// unmap the segments let go (here, not on a request's thread). How
    /// many records the lanes held, and how many segments were let go.
    fn hand_over(&mut self, all: bool) -> (usize, usize) {
        let mut retired = Vec::new();
        let mut took = lock(&self.shared.own).take(all, &mut self.out, &mut retired);
        for lane in self.shared.lanes.iter() {
            took += lock(lane).take(all, &mut self.out, &mut retired);
        }
        self.out.append(&mut self.flushes);
        for msg in self.out.drain(..) {
            let n = match &msg {
                Msg::Records(r, _) => r.len(),
                _ => 0,
            };
            if !(self.forward)(msg) && n > 0 {
                self.counters.queued.fetch_sub(n, Ordering::Relaxed);
                self.counters
                    .drop_records(n as u64, false, || "ledger writer gone, records dropped".into());
            }
        }
        (took, retired.len())
    }

    /// Fill the spares up to `wanted` (an error is logged; the lanes then
    /// send their records here).
    fn make_spares(&mut self, wanted: usize) {
        let missing = wanted.saturating_sub(lock(&self.shared.spares).len());
        for _ in 0..missing {
            match self.journal.create(SEGMENT_BYTES) {
                Ok(segment) => lock(&self.shared.spares).push(segment),
                Err(e) => {
                    self.journal.log_error(&e);
                    return;
                }
            }
        }
    }
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

    /// Every journal line in `dir` (a segment's zero tail left out).
    fn journaled(dir: &Path) -> String {
        files(dir)
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap().trim_end_matches('\0').to_string())
            .collect()
    }

    /// An intake of `queue` records whose writer is a channel the test reads.
    fn intake_of(dir: &Path, queue: usize) -> (Intake, Receiver<Msg>) {
        let (tx, rx) = mpsc::channel();
        let forward: Forward = Box::new(move |m| tx.send(m).is_ok());
        (
            Intake::open(dir, queue, Arc::new(Counters::default()), forward).unwrap(),
            rx,
        )
    }

    fn intake(dir: &Path) -> (Intake, Receiver<Msg>) {
        intake_of(dir, 64)
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

    /// Wait (bounded) until the intake thread has made its spares.
    fn spares_ready(intake: &Intake) {
        for _ in 0..500 {
            if lock(&intake.shared.spares).len() >= SPARES {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no spares after 1 s");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_record_is_in_the_journal_when_submitted_and_gone_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, rx) = intake(dir.path());
        // The first record finds no spare: the intake thread journals it
        // and answers.
        match intake.submit(rec(1)) {
            Submitted::Queued(acked) => acked.await.unwrap(),
            other => panic!("expected the intake thread to journal the first record, got {other:?}"),
        }
        assert!(journaled(dir.path()).contains("\"req_1\""));
        let (r, hold) = next_record(&rx);
        assert_eq!(r.request_id, "req_1");
        let first = hold.expect("a journaled record holds its file");
        assert!(!first.adopted);
        // Then a lane has a spare: the record is in the journal when
        // `submit` returns, before the intake thread has looked.
        spares_ready(&intake);
        assert!(matches!(intake.submit(rec(2)), Submitted::Journaled));
        let text = journaled(dir.path());
        assert!(text.contains("\"req_2\"") && text.ends_with('\n'), "{text}");
        let (r, second) = next_record(&rx);
        assert_eq!(r.request_id, "req_2");
        let second = second.unwrap();
        intake.close(Duration::from_secs(5)).unwrap();
        assert_eq!(
            files(dir.path()).len(),
            2,
            "the writer has not written them yet; the spares are gone"
        );
        drop((first, second));
        assert!(files(dir.path()).is_empty(), "written: its journal is deleted");
    }

    #[test]
    fn records_from_many_threads_arrive_once_each_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        const THREADS: u32 = 4;
        const EACH: u32 = 2_000;
        let (intake, rx) = intake_of(dir.path(), 100_000);
        // Spares first (the very first record makes them), so the lanes
        // have somewhere to append from the start.
        intake.submit(rec(u32::MAX));
        spares_ready(&intake);
        let mut seen = std::collections::HashSet::new();
        let mut batches = Vec::new();
        let intake = Arc::new(intake);
        let (mut journaled, mut queued) = (0, 0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let intake = intake.clone();
                    s.spawn(move || {
                        let mut counts = (0, 0);
                        for i in 0..EACH {
                            match intake.submit(rec(t * EACH + i)) {
                                Submitted::Journaled => counts.0 += 1,
                                Submitted::Queued(_) => counts.1 += 1,
                                Submitted::Dropped => panic!("dropped"),
                            }
                        }
                        counts
                    })
                })
                .collect();
            for w in workers {
                let (j, q) = w.join().unwrap();
                journaled += j;
                queued += q;
            }
        });
        assert!(journaled > 0, "no record took the lanes' path");
        while seen.len() < (THREADS * EACH) as usize + 1 {
            let (records, hold) = next_records(&rx);
            for r in &records {
                assert!(seen.insert(r.request_id.clone()), "{} twice", r.request_id);
            }
            batches.push((hold.expect("every record was journaled"), records));
        }
        // Every record holds the file its line is in (the lanes rotated
        // through several: over 1 MB of records, 256 KiB a segment).
        let mut in_file = std::collections::HashMap::new();
        for (hold, records) in &batches {
            let ids: &std::collections::HashSet<String> = in_file.entry(hold.path.clone()).or_insert_with(|| {
                let (lines, torn) = read_journal(hold).unwrap();
                assert_eq!(torn, 0);
                lines.into_iter().map(|r| r.request_id).collect()
            });
            for r in records {
                assert!(
                    ids.contains(&r.request_id),
                    "{} is not in the file it holds",
                    r.request_id
                );
            }
        }
        assert!(
            in_file.len() > THREADS as usize,
            "{journaled} journaled, {queued} queued, in only {} files",
            in_file.len()
        );
        intake.close(Duration::from_secs(5)).unwrap();
        drop(batches);
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn a_dead_processs_journal_is_adopted_and_a_torn_line_counted() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!("{:016x}-{:08}.{EXTENSION}", 7, 1));
        let mut bytes = serde_json::to_vec(rec(1).as_ref()).unwrap();
        bytes.push(b'\n');
        // A page that never reached the disk (a power loss) is skipped.
        bytes.resize(bytes.len() + PAGE, 0);
        bytes.extend(serde_json::to_vec(rec(2).as_ref()).unwrap());
        // Torn mid-copy: the rest of the segment is zeros.
        bytes.extend(b"\n{\"ts_ms\":3,\"requ");
        bytes.resize(SEGMENT_BYTES, 0);
        std::fs::write(&dead, bytes).unwrap();
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
        live.submit(rec(1));
        let (_, hold) = next_record(&live_rx);
        let (other, other_rx) = intake(dir.path());
        // The other intake looks for orphans before it takes any record, so
        // an adopted one would come first.
        other.submit(rec(2));
        let (first, other_hold) = next_record(&other_rx);
        assert_eq!(first.request_id, "req_2", "adopted a live process's journal");
        drop((hold, other_hold));
        live.close(Duration::from_secs(5)).unwrap();
        other.close(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_flush_follows_the_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, rx) = intake(dir.path());
        for i in 0..3 {
            intake.submit(rec(i));
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
        seen.sort();
        assert_eq!(seen, ["req_0", "req_1", "req_2"]);
        let (intake, r) = flusher.join().unwrap();
        r.unwrap();
        intake.close(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_closed_intake_takes_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, _rx) = intake(dir.path());
        intake.close(Duration::from_secs(5)).unwrap();
        assert!(matches!(intake.submit(rec(1)), Submitted::Dropped));
        assert_eq!(intake.counters.dropped.load(Ordering::Relaxed), 1);
    }
}
