//! The audit log: one JSON line per request, off the request path.
//!
//! This module owns the line format, credential redaction ([`redact`]) and
//! the writer thread ("audit-writer") with its file handling: append-only
//! open with 0600 permissions, reopen on request (SIGHUP after logrotate) and
//! optional size rotation (`path.1` … `path.keep`).
//!
//! A request only ever pays for [`AuditLog::log`]: a non-blocking send into a
//! bounded channel. Redaction, JSON rendering and disk I/O all happen on the
//! writer thread, so a slow or failing disk costs dropped lines (counted in
//! [`AuditLog::dropped`]), never request latency.
//!
//! Secrets never reach the file: the record carries key *names*, and every
//! client-controlled string (user agent, path, session/agent/request ids,
//! model, bodies) goes through [`redact`] first.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regex::{Captures, Regex};
use serde_json::Value;

use super::Record;
use crate::config::schema::AuditConfig;

/// What a redacted credential reads as.
pub const REDACTED: &str = "[REDACTED]";

/// Each body is embedded up to this many bytes; past it the line carries a
/// redacted text prefix and `"truncated": true`.
const BODY_CAP: usize = 1 << 20;
/// Bytes past the cap that are still scanned, so a credential straddling the
/// cut is recognised (and cut away whole) rather than half-written.
const CAP_SLACK: usize = 4096;
/// Request and response bodies queued for the writer at most, in bytes. The
/// queue's entry count alone would let `log_prompts` hold 65,536 bodies of up
/// to 32 MiB each; past this, entries still go in, without their bodies.
pub const MAX_QUEUED_BODY_BYTES: usize = 64 << 20;
/// Warnings about drops and I/O errors: at most one per this interval, so a
/// full disk or an overloaded writer cannot flood the process log.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long `Drop` waits for the writer to flush.
const DROP_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit.path is not set")]
    NoPath,
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the audit writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// One request as handed to the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub record: Arc<Record>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: String,
    pub path: String,
    /// Only set by the caller when log_prompts is on.
    pub request_body: Option<Bytes>,
    pub response_body: Option<Bytes>,
    /// The billing group a signed-in developer's request tags named.
    pub billing_group: Option<String>,
    /// The bodies were left out: the queue already held
    /// [`MAX_QUEUED_BODY_BYTES`] of them.
    pub bodies_withheld: bool,
}

impl AuditEntry {
    fn body_bytes(&self) -> usize {
        self.request_body.as_ref().map_or(0, Bytes::len) + self.response_body.as_ref().map_or(0, Bytes::len)
    }
}

/// A body as queued: whole when it fits the line's cap, else a copy of the
/// prefix the line can use (the rest of a 32 MiB prompt is not held).
fn queued_body(b: Bytes) -> Bytes {
    let keep = BODY_CAP + CAP_SLACK + 1;
    if b.len() <= keep {
        b
    } else {
        Bytes::copy_from_slice(&b[..keep])
    }
}

enum Msg {
    Entry(AuditEntry),
    /// Wakes a writer blocked on an empty queue (close, reopen).
    Wake,
}

/// State shared by the handle and the writer thread.
struct Shared {
    written: AtomicU64,
    dropped: AtomicU64,
    reopen: AtomicBool,
    /// Set by `close`: `log` refuses, the writer drains and exits.
    closed: AtomicBool,
    log_prompts: AtomicBool,
    epoch: Instant,
    /// Last "queue full" warning, ms since `epoch` + 1 (0: never).
    last_drop_warn: AtomicU64,
    /// Body bytes in the queue (see [`MAX_QUEUED_BODY_BYTES`]).
    queued_bytes: std::sync::atomic::AtomicUsize,
    /// Entries sent and not yet taken by the writer, and their bound.
    queued: std::sync::atomic::AtomicUsize,
    limit: usize,
}

/// The audit log's handle. Cheap to call from any thread; share it in an `Arc`.
pub struct AuditLog {
    /// Unbounded as a channel (a bounded one allocates and touches all its
    /// slots at start: ~200 bytes an entry); `Shared::queued`, checked
    /// before anything is sent, bounds the entries in it.
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    /// The writer reports here when it has drained and exited.
    done: Mutex<Option<Receiver<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    /// Start the writer thread ("audit-writer"); `path == "-"` writes to stdout. Opens the file (append, create, 0600
    /// permissions on Unix) up front so a bad path fails at startup with a clear error.
    pub fn open(config: &AuditConfig, queue: usize) -> Result<AuditLog, AuditError> {
        let queue = queue.max(1);
        let path = config.path.as_deref().ok_or(AuditError::NoPath)?;
        let (sink, out, size) = if path == "-" {
            (Sink::Stdout, Out::Stdout(io::stdout()), 0)
        } else {
            let path = PathBuf::from(path);
            let (file, size) = open_file(&path).map_err(|source| AuditError::Open {
                path: path.display().to_string(),
                source,
            })?;
            let sink = Sink::File {
                path,
                max_bytes: config.max_bytes,
                keep: config.keep,
            };
            (sink, Out::File(file), size)
        };
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            log_prompts: AtomicBool::new(config.log_prompts),
            epoch: Instant::now(),
            last_drop_warn: AtomicU64::new(0),
            queued_bytes: std::sync::atomic::AtomicUsize::new(0),
            queued: std::sync::atomic::AtomicUsize::new(0),
            limit: queue,
        });
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            sink,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, out)),
            size,
            pending: 0,
            open_failed: false,
            last_error_warn: None,
            line: Vec::with_capacity(4096),
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                writer.run(rx, queue);
                let _ = done_tx.send(());
            })
            .map_err(AuditError::Thread)?;
        Ok(AuditLog {
            tx,
            shared,
            done: Mutex::new(Some(done_rx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Never blocks: with `queue` entries already waiting (or the writer gone) the entry is counted in dropped() and
    /// warned about at most once per 10 s. Returns false when dropped.
    pub fn log(&self, mut entry: AuditEntry) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Defence in depth: bodies never outlive a log_prompts that is off,
        // whatever the caller passed (and their buffers are released here,
        // not after a trip through the queue).
        if !self.shared.log_prompts.load(Ordering::Relaxed) {
            entry.request_body = None;
            entry.response_body = None;
        }
        entry.request_body = entry.request_body.take().map(queued_body);
        entry.response_body = entry.response_body.take().map(queued_body);
        let bytes = entry.body_bytes();
        if bytes > 0 {
            let queued = self.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
            if queued + bytes > MAX_QUEUED_BODY_BYTES {
                self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                entry.request_body = None;
                entry.response_body = None;
                entry.bodies_withheld = true;
                if warn_due(&self.shared.last_drop_warn, self.shared.epoch) {
                    log::warn!("audit: the writer is behind; entries are queued without their bodies for now");
                }
            }
        }
        let bytes = entry.body_bytes();
        let why = if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= self.shared.limit {
            "queue full"
        } else if self.tx.send(Msg::Entry(entry)).is_ok() {
            return true;
        } else {
            "writer stopped"
        };
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if warn_due(&self.shared.last_drop_warn, self.shared.epoch) {
            log::warn!("audit: {why}, entry dropped ({n} dropped so far)");
        }
        false
    }

    /// Reopen the file (after logrotate moved it): the writer closes and reopens `path` before its next write. Cheap
    /// (sets a flag).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        // Let an idle writer act now, so the moved file is released and the
        // new one exists right away.
        let _ = self.tx.send(Msg::Wake);
    }

    /// Whether request/response bodies are kept (`audit.log_prompts`), for a
    /// config reload; entries logged while off lose their bodies in `log`.
    pub fn set_log_prompts(&self, on: bool) {
        self.shared.log_prompts.store(on, Ordering::Relaxed);
    }

    /// Entries lost: queue full, logged after `close`, or an I/O error.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lines handed to the OS (flushed; not necessarily fsynced).
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Flush queued entries and stop the writer, bounded by `timeout`. Idempotent; Drop does it best-effort.
    pub fn close(&self, timeout: Duration) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.tx.send(Msg::Wake);
        let Some(done) = lock(&self.done).take() else {
            return;
        };
        match done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(thread) = lock(&self.thread).take() {
                    let _ = thread.join();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                // Leave the thread to finish on its own; what it has not
                // written by process exit is lost.
                log::warn!("audit: writer did not finish within {timeout:?}; queued entries may be lost");
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close(DROP_TIMEOUT);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True at most once per [`WARN_EVERY`] across all threads sharing `last`.
fn warn_due(last: &AtomicU64, epoch: Instant) -> bool {
    let now = epoch.elapsed().as_millis() as u64 + 1;
    let prev = last.load(Ordering::Relaxed);
    if prev != 0 && now < prev + WARN_EVERY.as_millis() as u64 {
        return false;
    }
    last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

// ---------------------------------------------------------------------------
// Writer thread
// ---------------------------------------------------------------------------

enum Sink {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: Option<u64>,
        keep: u32,
    },
}

enum Out {
    Stdout(io::Stdout),
    File(File),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Stdout(s) => s.write(buf),
            Out::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Stdout(s) => s.flush(),
            Out::File(f) => f.flush(),
        }
    }
}

fn open_file(path: &Path) -> io::Result<(File, u64)> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Prompts and usage are sensitive even when redacted. The mode only
        // applies on creation; an existing file keeps its permissions.
        options.mode(0o600);
    }
    let file = options.open(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

/// `path.n`, for rotation (works for non-UTF-8 paths too).
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

struct Writer {
    shared: Arc<Shared>,
    sink: Sink,
    /// None after an I/O error or a reopen: opened again on the next batch.
    out: Option<BufWriter<Out>>,
    /// Bytes in the current file (for size rotation).
    size: u64,
    /// Lines in `out`'s buffer not yet flushed: written on a good flush, dropped on a failed one.
    pending: u64,
    /// Opening failed in this batch: don't retry per entry, drop until the next batch.
    open_failed: bool,
    last_error_warn: Option<Instant>,
    /// Reused line buffer.
    line: Vec<u8>,
}

impl Writer {
    /// Drain the queue in batches (at most `batch` entries, so memory stays
    /// bounded by the queue), flushing after each so `tail -f` keeps up.
    fn run(mut self, rx: Receiver<Msg>, batch: usize) {
        let mut stopping = false;
        loop {
            let first = if stopping { rx.try_recv().ok() } else { rx.recv().ok() };
            let Some(first) = first else { break };
            self.open_failed = false;
            if self.shared.reopen.swap(false, Ordering::AcqRel) {
                self.close_out();
                self.ensure_open();
            }
            self.handle(first);
            for _ in 1..batch {
                match rx.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            self.flush();
            stopping = self.shared.closed.load(Ordering::Acquire);
        }
        self.close_out();
    }

    fn handle(&mut self, msg: Msg) {
        let Msg::Entry(entry) = msg else { return };
        self.line.clear();
        let rendered = render_line(&entry, &mut self.line);
        let bytes = entry.body_bytes();
        drop(entry);
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        if !rendered {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let len = self.line.len() as u64;
        let mut open = self.ensure_open();
        if let Sink::File {
            max_bytes: Some(max), ..
        } = self.sink
        {
            // A line longer than max_bytes still goes out, alone in a fresh file.
            if open && self.size > 0 && self.size + len > max {
                self.rotate();
                open = self.ensure_open();
            }
        }
        if !open {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(out) = self.out.as_mut() else { return };
        match out.write_all(&self.line) {
            Ok(()) => {
                self.size += len;
                self.pending += 1;
            }
            Err(e) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.fail("write", e);
            }
        }
    }

    /// Make sure there is an open output; false (and the entry is dropped) if opening fails.
    fn ensure_open(&mut self) -> bool {
        if self.out.is_some() {
            return true;
        }
        if self.open_failed {
            return false;
        }
        let opened = match &self.sink {
            Sink::Stdout => Ok((Out::Stdout(io::stdout()), 0)),
            Sink::File { path, .. } => open_file(path).map(|(f, size)| (Out::File(f), size)),
        };
        match opened {
            Ok((out, size)) => {
                self.out = Some(BufWriter::with_capacity(WRITE_BUFFER, out));
                self.size = size;
                true
            }
            Err(e) => {
                self.open_failed = true;
                self.warn(format_args!("cannot open {}: {e}; dropping entries", self.sink_name()));
                false
            }
        }
    }

    fn flush(&mut self) {
        let Some(out) = self.out.as_mut() else { return };
        match out.flush() {
            Ok(()) => {
                self.shared.written.fetch_add(self.pending, Ordering::Relaxed);
                self.pending = 0;
            }
            Err(e) => self.fail("flush", e),
        }
    }

    /// Flush and close the current output.
    fn close_out(&mut self) {
        self.flush();
        self.out = None;
    }

    /// An I/O error: the unflushed lines are lost, the output is discarded
    /// (without the retry a plain drop of BufWriter would do) and reopened on
    /// the next batch.
    fn fail(&mut self, what: &str, e: io::Error) {
        self.shared.dropped.fetch_add(self.pending, Ordering::Relaxed);
        self.pending = 0;
        if let Some(out) = self.out.take() {
            let _ = out.into_parts();
        }
        self.open_failed = true;
        self.warn(format_args!("{what} {} failed: {e}", self.sink_name()));
    }

    /// Size rotation: `path.(n)` → `path.(n+1)` for n = keep-1 … 1, `path` → `path.1`; the next write opens a fresh
    /// `path`. With `keep: 0` the full file is simply removed.
    fn rotate(&mut self) {
        let Sink::File { path, keep, .. } = &self.sink else {
            return;
        };
        let (path, keep) = (path.clone(), *keep);
        self.close_out();
        let result = if keep == 0 {
            std::fs::remove_file(&path)
        } else {
            for n in (1..keep).rev() {
                match std::fs::rename(numbered(&path, n), numbered(&path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        self.warn(format_args!("rotating {}.{n}: {e}", path.display()))
                    }
                    _ => {}
                }
            }
            std::fs::rename(&path, numbered(&path, 1))
        };
        if let Err(e) = result {
            // Keep appending to the same file; `size` restarts from the file's
            // length on reopen, so the next attempt comes one max_bytes later
            // if the file cannot be moved at all, not on every line.
            self.warn(format_args!("rotating {}: {e}", path.display()));
        }
        self.size = 0;
    }

    fn sink_name(&self) -> String {
        match &self.sink {
            Sink::Stdout => "stdout".into(),
            Sink::File { path, .. } => path.display().to_string(),
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last_error_warn.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        self.last_error_warn = Some(now);
        log::warn!(
            "audit: {msg} ({} entries dropped so far)",
            self.shared.dropped.load(Ordering::Relaxed)
        );
    }
}

// ---------------------------------------------------------------------------
// Line format
// ---------------------------------------------------------------------------

/// The line, borrowing from the entry. Optional ledger fields are written as
/// `null` so every line has the same keys; bodies only when present.
#[derive(serde::Serialize)]
struct Line<'a> {
    ts: String,
    request_id: Cow<'a, str>,
    key: Option<&'a str>,
    team: Option<&'a str>,
    session_id: Option<Cow<'a, str>>,
    agent_id: Option<Cow<'a, str>>,
    model: Cow<'a, str>,
    provider: Option<&'a str>,
    upstream_model: Option<&'a str>,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    cost_usd: f64,
    latency_ms: u64,
    ttft_ms: Option<u64>,
    status: u16,
    attempts: u32,
    stream: bool,
    error: Option<&'a str>,
    client_ip: Option<&'a str>,
    user_agent: Option<Cow<'a, str>>,
    method: Cow<'a, str>,
    path: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    billing_group: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    bodies_withheld: bool,
}

/// Append `entry` as one JSON line (with the trailing newline) to `out`.
fn render_line(entry: &AuditEntry, out: &mut Vec<u8>) -> bool {
    let r = &*entry.record;
    let ts = chrono::DateTime::from_timestamp_millis(r.ts_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut truncated = false;
    let mut body = |b: &Option<Bytes>| {
        b.as_ref().map(|b| {
            let (v, cut) = body_value(b);
            truncated |= cut;
            v
        })
    };
    let request_body = body(&entry.request_body);
    let response_body = body(&entry.response_body);
    // Names from the config (key, team, provider, upstream model) and the
    // gateway's own error type are trusted; whatever the client sent is not.
    let line = Line {
        ts,
        request_id: redact(&r.request_id),
        key: r.key.as_deref(),
        team: r.team.as_deref(),
        session_id: r.session_id.as_deref().map(redact),
        agent_id: r.agent_id.as_deref().map(redact),
        model: redact(&r.model),
        provider: r.provider.as_deref(),
        upstream_model: r.upstream_model.as_deref(),
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cache_read_tokens: r.cache_read_tokens,
        cache_write_tokens: r.cache_write_tokens,
        cost_usd: r.cost_usd,
        latency_ms: r.latency_ms,
        ttft_ms: r.ttft_ms,
        status: r.status,
        attempts: r.attempts,
        stream: r.stream,
        error: r.error.as_deref(),
        client_ip: entry.client_ip.as_deref(),
        user_agent: entry.user_agent.as_deref().map(redact),
        method: redact(&entry.method),
        path: redact(&entry.path),
        billing_group: entry.billing_group.as_deref().map(redact),
        request_body,
        response_body,
        truncated,
        bodies_withheld: entry.bodies_withheld,
    };
    // Serializing plain data into a Vec does not fail; if it somehow did,
    // the partial output is discarded rather than written as a broken line.
    let start = out.len();
    if serde_json::to_writer(&mut *out, &line).is_err() {
        out.truncate(start);
        return false;
    }
    out.push(b'\n');
    true
}

/// A body as it goes into the line: valid JSON embedded as JSON with every
/// string redacted, anything else as redacted (lossy UTF-8) text. Returns
/// whether it was cut at [`BODY_CAP`].
fn body_value(body: &[u8]) -> (Value, bool) {
    if body.len() <= BODY_CAP {
        if let Ok(mut v) = serde_json::from_slice::<Value>(body) {
            redact_value(&mut v);
            return (v, false);
        }
        let text = String::from_utf8_lossy(body);
        return (Value::String(redact(&text).into_owned()), false);
    }
    // Too big to embed whole (and not worth parsing): a text prefix. Scan a
    // little past the cap and move the cut before any credential that
    // straddles it, so no half of one survives unrecognised.
    let window = &body[..(BODY_CAP + CAP_SLACK).min(body.len())];
    let text = String::from_utf8_lossy(window);
    let mut cut = floor_char_boundary(&text, BODY_CAP);
    for m in PATTERNS.find_iter(&text) {
        if m.start() >= cut {
            break;
        }
        if m.end() > cut {
            cut = m.start();
            break;
        }
    }
    (Value::String(redact(&text[..cut]).into_owned()), true)
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    let mut i = at;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Redact every string in a JSON value in place. Under a credential-named key
/// (`password`, `api_key`, `authorization`, …) every string is replaced
/// whole, whatever it looks like.
fn redact_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(r) = redact(s) {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::Object(map) => {
            // A credential used as a key (a map keyed by token) is rare; only
            // then is the map rebuilt.
            if map.keys().any(|k| matches!(redact(k), Cow::Owned(_))) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(redact(&k).into_owned(), v);
                }
            }
            for (k, v) in map.iter_mut() {
                if SECRET_KEY.is_match(k) {
                    redact_all(v);
                } else {
                    redact_value(v);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn redact_all(v: &mut Value) {
    match v {
        Value::String(s) => REDACTED.clone_into(s),
        Value::Array(items) => items.iter_mut().for_each(redact_all),
        Value::Object(map) => map.values_mut().for_each(redact_all),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

// ---------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------

/// Field names whose value is a credential: anything ending in one of these
/// words (`ANTHROPIC_API_KEY`, `x-api-key`, `db.password`, `clientSecret`,
/// `proxy-authorization`, `access_token`, …). `token` must end the name, so
/// `max_tokens`/`input_tokens` are not caught.
const SECRET_NAME: &str = r"[A-Za-z0-9_.-]*(?i:api[_-]?key|access[_-]?key|private[_-]?key|secret[A-Za-z0-9_-]*|password|passwd|passphrase|authorization|credentials?|cookie|auth|token)";

/// `(?-u:\b)`: an ASCII word boundary. The Unicode `\b` would push the
/// regex engine off its fast DFA as soon as the text has a non-ASCII byte,
/// which prompts usually do.
static PATTERNS: LazyLock<Regex> = LazyLock::new(|| {
    let field = [
        "(?P<fk>",
        SECRET_NAME,
        // optional closing quote (also JSON-escaped, inside a string), then `:`, `=`, `:=` or `=>`
        r#"(?:\\?["'])?[ \t]*(?::=|=>|[:=])[ \t]*)"#,
        "(?P<fv>",
        // a JSON string, a JSON string escaped inside another one, a single-quoted
        // string, or (YAML, env files, header dumps) the rest of the line. Not
        // starting with `=` or `:` keeps `token == x` and `token::X` out.
        r#""(?:[^"\\\r\n]|\\.)*"|\\"(?:[^"\\\r\n]|\\[^"\r\n])*\\"|'[^'\r\n]*'|[^ \t\r\n=:][^\r\n]*"#,
        ")",
    ]
    .concat();
    // Order matters where two can start at the same place (leftmost-first):
    // the specific credential shapes come before the field-name rule, so a
    // key that happens to end in `…_token` is still removed whole.
    let alternatives = [
        // PEM private keys, to the END line or, if cut off, to the end of the text
        r"-----BEGIN[A-Z ]*PRIVATE KEY[A-Z ]*-----(?s:.*?)(?:-----END[A-Z ]*PRIVATE KEY[A-Z ]*-----|\z)",
        // Anthropic (API and OAuth), any length: the prefix is unambiguous
        r"(?-u:\b)sk-ant-[A-Za-z0-9_-]+",
        // OpenAI-style (sk-…, sk-proj-…, sk-svcacct-…)
        r"(?-u:\b)sk-[A-Za-z0-9_-]{20,}",
        // Stripe
        r"(?-u:\b)[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
        // modelgate gateway keys
        r"(?-u:\b)mg-[A-Za-z0-9]{20,}",
        // AWS access key ids
        r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
        // Google API keys
        r"(?-u:\b)AIza[A-Za-z0-9_-]{30,}",
        // GitHub
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
        // Slack
        r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
        // JWTs (the signature may be empty: alg none)
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        // Bearer tokens; at least 8 characters so prose ("the bearer of") survives
        r"(?-u:\b)(?i:bearer)[ \t]+[A-Za-z0-9._~+/-]{8,}=*",
        &field,
    ];
    Regex::new(&alternatives.join("|")).unwrap_or_else(|e| panic!("audit redaction pattern: {e}"))
});

/// A whole JSON key naming a credential (see [`SECRET_NAME`]).
static SECRET_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!("^(?:{SECRET_NAME})$")).unwrap_or_else(|e| panic!("audit secret-key pattern: {e}"))
});

/// Writes `[REDACTED]` for a match; for a `name: value` field, keeps the name
/// and the value's quotes so redacted JSON/YAML stays well-formed.
struct Redactor;

impl regex::Replacer for Redactor {
    fn replace_append(&mut self, caps: &Captures<'_>, dst: &mut String) {
        let (Some(name), Some(value)) = (caps.name("fk"), caps.name("fv")) else {
            dst.push_str(REDACTED);
            return;
        };
        let v = value.as_str();
        let quote = if v.len() >= 4 && v.starts_with("\\\"") && v.ends_with("\\\"") {
            "\\\""
        } else if v.len() >= 2 && (v.starts_with('"') || v.starts_with('\'')) && v.ends_with(&v[..1]) {
            &v[..1]
        } else {
            ""
        };
        dst.push_str(name.as_str());
        dst.push_str(quote);
        dst.push_str(REDACTED);
        dst.push_str(quote);
    }
}

/// Replace credential-like substrings with "[REDACTED]": Anthropic keys (sk-ant-…), OpenAI-style keys (sk-…,
/// sk-proj-…), our gateway keys (mg- followed by ≥20 base62 chars), AWS access key ids (AKIA/ASIA + 16), `Bearer
/// <token>`, Google API keys (AIza…), GitHub tokens (ghp_/gho_/ghs_/github_pat_), private key PEM blocks, JWTs
/// (eyJ….….…), and `"x-api-key": "…"`/`"api_key": "…"`/`"authorization": "…"`/`"password": "…"`-style JSON or YAML
/// fields. Returns Cow::Borrowed when nothing matched (fast path: one RegexSet/regex scan).
///
/// Also Stripe (`sk_live_…`) and Slack (`xox?-…`) tokens, `key=value` env
/// lines and `\"password\": \"…\"` escaped inside a JSON string. It errs on
/// the side of redacting: a `password:` or `token =` line in a prompt loses
/// its value even when that value is code rather than a secret.
///
/// Cost (one combined regex, lazy DFA, no match): a 100 KB clean prompt
/// (code, prose, some non-ASCII) takes about 0.35 ms in a release build
/// (~280 MB/s) and about 0.6 ms in the dev profile; see the ignored test
/// `redact_speed`. It runs on the writer thread only, never on a request.
pub fn redact(text: &str) -> Cow<'_, str> {
    PATTERNS.replace_all(text, Redactor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &Path) -> AuditConfig {
        AuditConfig {
            path: Some(path.display().to_string()),
            log_prompts: true,
            max_bytes: None,
            keep: 5,
        }
    }

    fn entry(id: &str) -> AuditEntry {
        AuditEntry {
            record: Arc::new(Record {
                ts_ms: 1_700_000_000_123,
                request_id: id.into(),
                model: "claude-sonnet-4-5".into(),
                status: 200,
                ..Record::default()
            }),
            method: "POST".into(),
            path: "/v1/messages".into(),
            ..AuditEntry::default()
        }
    }

    fn line(entry: &AuditEntry) -> Value {
        let mut out = Vec::new();
        assert!(render_line(entry, &mut out));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert!(out.ends_with(b"\n"));
        serde_json::from_slice(&out).unwrap()
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait (bounded) for the writer thread to get somewhere.
    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn line_round_trips_with_every_field() {
        let e = AuditEntry {
            record: Arc::new(Record {
                ts_ms: 1_700_000_000_123,
                request_id: "req_1".into(),
                key: Some("alice".into()),
                team: Some("infra".into()),
                session_id: Some("sess-1".into()),
                agent_id: Some("agent-2".into()),
                model: "claude-sonnet-4-5".into(),
                provider: Some("anthropic".into()),
                upstream_model: Some("claude-sonnet-4-5-20250929".into()),
                input_tokens: 10,
                output_tokens: 20,
                cache_read_tokens: 30,
                cache_write_tokens: 40,
                cost_usd: 0.0125,
                latency_ms: 1234,
                ttft_ms: Some(250),
                status: 429,
                attempts: 2,
                stream: true,
                error: Some("rate_limit_error".into()),
            }),
            client_ip: Some("10.0.0.7".into()),
            user_agent: Some("claude-cli/2.0.0 (external, cli)".into()),
            method: "POST".into(),
            path: "/v1/messages?beta=true".into(),
            request_body: None,
            response_body: None,
            billing_group: None,
            bodies_withheld: false,
        };
        let v = line(&e);
        let expected = serde_json::json!({
            "ts": "2023-11-14T22:13:20.123Z",
            "request_id": "req_1", "key": "alice", "team": "infra", "session_id": "sess-1", "agent_id": "agent-2",
            "model": "claude-sonnet-4-5", "provider": "anthropic", "upstream_model": "claude-sonnet-4-5-20250929",
            "input_tokens": 10, "output_tokens": 20, "cache_read_tokens": 30, "cache_write_tokens": 40,
            "cost_usd": 0.0125, "latency_ms": 1234, "ttft_ms": 250, "status": 429, "attempts": 2, "stream": true,
            "error": "rate_limit_error", "client_ip": "10.0.0.7", "user_agent": "claude-cli/2.0.0 (external, cli)",
            "method": "POST", "path": "/v1/messages?beta=true",
        });
        assert_eq!(v, expected);
        // And in the documented order (preserve_order keeps it on parse).
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let want: Vec<&str> = expected.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, want);
    }

    #[test]
    fn absent_optionals_are_null_not_missing() {
        let v = line(&entry("r"));
        for k in [
            "key",
            "team",
            "session_id",
            "agent_id",
            "provider",
            "ttft_ms",
            "error",
            "client_ip",
            "user_agent",
        ] {
            assert_eq!(v[k], Value::Null, "{k}");
        }
        assert_eq!(v.as_object().unwrap().len(), 24);
    }

    #[test]
    fn redacts_each_credential_shape() {
        let cases = [
            "sk-ant-api03-AbCdEf0123456789_-AbCdEf0123456789AbCdEf0123456789AA",
            "sk-ant-oat01-abcdefghij",
            "sk-ant-x",
            "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL",
            "sk-proj-Ab3_dEf-ghIJklMNopQRstuVWxyz0123456789",
            "mg-4f7Hk2LmQ9rT1vX8zB3nC6pW",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAY34FZKBOKMUTVV7A",
            "Bearer abcdefgh12345678",
            "bearer eyJhbGciOi.J9.x",
            "AIzaSyD-1234567890abcdefghijklmnopqrstu",
            "ghp_0123456789abcdefghijABCDEFGHIJklmnop",
            "gho_0123456789abcdefghijABCDEFGHIJklmnop",
            "ghs_0123456789abcdefghijABCDEFGHIJklmnop",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "sk_live_0123456789abcdefABCDEF",
            "xoxb-1234567890-abcdefghij",
        ];
        for secret in cases {
            let text = format!("before {secret} after");
            let out = redact(&text);
            assert_eq!(out, "before [REDACTED] after", "{secret:?}");
        }
        // A PEM block cut off by truncation is still removed to the end.
        assert_eq!(redact("x -----BEGIN RSA PRIVATE KEY-----\nMIIEow"), "x [REDACTED]");
        // Inside other punctuation.
        assert_eq!(redact("key=(sk-ant-api03-abc);"), "key=([REDACTED]);");
    }

    #[test]
    fn redacts_credential_fields_keeping_names_and_quotes() {
        let cases = [
            (
                r#"{"x-api-key": "hunter2", "model": "m"}"#,
                r#"{"x-api-key": "[REDACTED]", "model": "m"}"#,
            ),
            (r#"{"api_key":"abc\"def","n":1}"#, r#"{"api_key":"[REDACTED]","n":1}"#),
            (
                r#"{"authorization": "Basic dXNlcjpwYXNz"}"#,
                r#"{"authorization": "[REDACTED]"}"#,
            ),
            (r#"{"password": "p"}"#, r#"{"password": "[REDACTED]"}"#),
            ("password: hunter2", "password: [REDACTED]"),
            ("  db_password: 'hunter2'", "  db_password: '[REDACTED]'"),
            ("ANTHROPIC_API_KEY=whatever-value", "ANTHROPIC_API_KEY=[REDACTED]"),
            (
                "Authorization: Basic dXNlcjpwYXNz\nHost: x",
                "Authorization: [REDACTED]\nHost: x",
            ),
            ("client_secret = abc123", "client_secret = [REDACTED]"),
            (
                r#"{\"password\": \"hunter2\", \"u\": 1}"#,
                r#"{\"password\": \"[REDACTED]\", \"u\": 1}"#,
            ),
            ("GITHUB_TOKEN=abc", "GITHUB_TOKEN=[REDACTED]"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input:?}");
        }
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let clean = [
            "A task-based approach; ask-me-anything; risk-free",
            "model claude-sonnet-4-5 and claude-opus-4-1-20250805",
            "the bearer of bad news",
            "max_tokens: 1024, input_tokens=5, \"output_tokens\": 7",
            "if token == other { return token::Kind::X; }",
            "img-0123456789abcdefghijklmnop and 100mg-aspirin",
            "sk-learn is a library",
            "Ünïcödé text with emoji 🎉 and CJK 漢字",
            "AKIA is a prefix; AKIA123 too short",
            "",
        ];
        for text in clean {
            assert!(
                matches!(redact(text), Cow::Borrowed(_)),
                "{text:?} -> {:?}",
                redact(text)
            );
        }
    }

    #[test]
    fn bodies_only_when_given() {
        let plain = line(&entry("r"));
        assert!(plain.get("request_body").is_none() && plain.get("response_body").is_none());
        assert!(plain.get("truncated").is_none());

        let mut e = entry("r");
        e.request_body = Some(Bytes::from_static(br#"{"model":"m","messages":[]}"#));
        let v = line(&e);
        assert_eq!(v["request_body"], serde_json::json!({"model": "m", "messages": []}));
        assert!(v.get("response_body").is_none());
    }

    #[test]
    fn json_body_strings_are_redacted_in_place() {
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "Use key sk-ant-api03-secretsecret to call",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "my AWS id is AKIAIOSFODNN7EXAMPLE"}]}],
            "metadata": {"api_key": "plainvalue", "credentials": {"user": "bob", "n": 3}},
            "sk-ant-api03-askey": 1,
        });
        let mut e = entry("r");
        e.request_body = Some(Bytes::from(serde_json::to_vec(&body).unwrap()));
        e.response_body = Some(Bytes::from_static(
            b"event: x\ndata: {\"token\":\"Bearer abcdefgh12345678\"}\n\n",
        ));
        let v = line(&e);
        let req = &v["request_body"];
        assert_eq!(req["model"], "claude-sonnet-4-5");
        assert_eq!(req["max_tokens"], 1024);
        assert_eq!(req["system"], "Use key [REDACTED] to call");
        assert_eq!(req["messages"][0]["content"][0]["text"], "my AWS id is [REDACTED]");
        assert_eq!(req["metadata"]["api_key"], REDACTED);
        assert_eq!(
            req["metadata"]["credentials"],
            serde_json::json!({"user": REDACTED, "n": 3})
        );
        assert_eq!(req[REDACTED], 1);
        // SSE is not JSON: a redacted string.
        assert_eq!(v["response_body"], "event: x\ndata: {\"token\":\"[REDACTED]\"}\n\n");
        let text = serde_json::to_string(&v).unwrap();
        for s in ["secretsecret", "AKIAIOSFODNN7", "plainvalue", "bob", "abcdefgh1234"] {
            assert!(!text.contains(s), "{s} leaked");
        }
    }

    #[test]
    fn client_strings_are_redacted() {
        let mut e = entry("r");
        e.user_agent = Some("curl/8 token=sk-ant-api03-zzzzzzzz".into());
        e.path = "/v1/messages?key=AIzaSyD-1234567890abcdefghijklmnopqrstu".into();
        let v = line(&e);
        assert_eq!(v["user_agent"], "curl/8 token=[REDACTED]");
        assert_eq!(v["path"], "/v1/messages?key=[REDACTED]");
    }

    #[test]
    fn large_bodies_are_cut_and_marked() {
        let mut body = vec![b'a'; BODY_CAP - 10];
        body.extend_from_slice(b" sk-ant-api03-0123456789abcdef0123456789 tail");
        body.extend(std::iter::repeat_n(b'b', 10_000));
        let mut e = entry("r");
        e.response_body = Some(Bytes::from(body));
        let v = line(&e);
        assert_eq!(v["truncated"], true);
        let s = v["response_body"].as_str().unwrap();
        assert!(s.len() <= BODY_CAP);
        // The key straddled the cut: it is cut away whole, no prefix of it left.
        assert!(s.ends_with("aaa "), "{:?}", &s[s.len() - 20..]);
        assert!(!s.contains("sk-"));
    }

    #[test]
    fn writes_closes_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&config(&path), 1024).unwrap();
        for i in 0..100 {
            assert!(log.log(entry(&format!("req_{i}"))));
        }
        log.close(Duration::from_secs(10));
        assert_eq!(log.written(), 100);
        assert_eq!(log.dropped(), 0);
        let got = lines(&path);
        assert_eq!(got.len(), 100);
        assert_eq!(got[99]["request_id"], "req_99");
        // Idempotent; entries after close are dropped, not written.
        log.close(Duration::from_secs(1));
        assert!(!log.log(entry("late")));
        assert_eq!(log.dropped(), 1);
        assert_eq!(lines(&path).len(), 100);
    }

    #[test]
    fn lines_appear_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&config(&path), 16).unwrap();
        log.log(entry("a"));
        wait_for("the line", || lines(&path).len() == 1);
        assert_eq!(log.written(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let _log = AuditLog::open(&config(&path), 16).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_path_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("audit.log");
        let err = AuditLog::open(&config(&path), 16).err().unwrap();
        assert!(err.to_string().starts_with("cannot open audit log "), "{err}");
        assert!(err.to_string().contains("missing-dir"), "{err}");
        assert!(matches!(
            AuditLog::open(&AuditConfig::default(), 16),
            Err(AuditError::NoPath)
        ));
    }

    #[test]
    fn stdout_opens() {
        let cfg = AuditConfig {
            path: Some("-".into()),
            ..AuditConfig::default()
        };
        let log = AuditLog::open(&cfg, 4).unwrap();
        log.close(Duration::from_secs(5));
    }

    #[test]
    fn bodies_dropped_when_log_prompts_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut cfg = config(&path);
        cfg.log_prompts = false;
        let log = AuditLog::open(&cfg, 16).unwrap();
        let mut e = entry("r");
        e.request_body = Some(Bytes::from_static(b"{\"secret prompt\":1}"));
        e.response_body = Some(Bytes::from_static(b"answer"));
        log.log(e.clone());
        log.set_log_prompts(true);
        log.log(e);
        log.close(Duration::from_secs(10));
        let got = lines(&path);
        assert!(got[0].get("request_body").is_none() && got[0].get("response_body").is_none());
        assert_eq!(got[1]["response_body"], "answer");
    }

    #[test]
    fn reopen_after_rename_writes_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let moved = dir.path().join("audit.log.old");
        let log = AuditLog::open(&config(&path), 16).unwrap();
        log.log(entry("before"));
        wait_for("first line", || log.written() == 1);
        std::fs::rename(&path, &moved).unwrap();
        log.reopen();
        // The writer acts on the wake-up: the new file exists before any write.
        wait_for("the new file", || path.exists());
        log.log(entry("after"));
        log.close(Duration::from_secs(10));
        assert_eq!(lines(&moved).len(), 1);
        assert_eq!(lines(&moved)[0]["request_id"], "before");
        let new = lines(&path);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0]["request_id"], "after");
    }

    #[test]
    fn size_rotation_keeps_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let one = {
            let mut v = Vec::new();
            assert!(render_line(&entry("req_00"), &mut v));
            v.len() as u64
        };
        let mut cfg = config(&path);
        // Two lines per file.
        cfg.max_bytes = Some(one * 2);
        cfg.keep = 2;
        let log = AuditLog::open(&cfg, 64).unwrap();
        for i in 0..10 {
            log.log(entry(&format!("req_{i:02}")));
        }
        log.close(Duration::from_secs(10));
        assert_eq!(log.written(), 10);
        let ids = |p: &Path| -> Vec<String> {
            lines(p)
                .iter()
                .map(|v| v["request_id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(&path), ["req_08", "req_09"]);
        assert_eq!(ids(&numbered(&path, 1)), ["req_06", "req_07"]);
        assert_eq!(ids(&numbered(&path, 2)), ["req_04", "req_05"]);
        assert!(!numbered(&path, 3).exists());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 3);
    }

    /// A handle whose writer never drains (the caller holds the receiver).
    fn stalled(queue: usize, log_prompts: bool) -> (AuditLog, Receiver<Msg>, mpsc::Sender<()>) {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let log = AuditLog {
            tx,
            shared: Arc::new(Shared {
                written: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                reopen: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                log_prompts: AtomicBool::new(log_prompts),
                epoch: Instant::now(),
                last_drop_warn: AtomicU64::new(0),
                queued_bytes: std::sync::atomic::AtomicUsize::new(0),
                queued: std::sync::atomic::AtomicUsize::new(0),
                limit: queue,
            }),
            done: Mutex::new(Some(done_rx)),
            thread: Mutex::new(None),
        };
        (log, rx, done_tx)
    }

    #[test]
    fn queued_bodies_are_bounded_in_bytes() {
        let (log, rx, done_tx) = stalled(1000, true);
        let prompt = Bytes::from(vec![b'x'; 8 << 20]);
        for i in 0..100 {
            let mut e = entry(&i.to_string());
            e.request_body = Some(prompt.clone());
            e.response_body = Some(prompt.clone());
            assert!(log.log(e), "entries still go in, bodies or not");
        }
        let queued = log.shared.queued_bytes.load(Ordering::Relaxed);
        assert!(queued <= MAX_QUEUED_BODY_BYTES, "{queued} bytes of bodies queued");
        let entries: Vec<AuditEntry> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Entry(e) => Some(e),
                Msg::Wake => None,
            })
            .collect();
        assert_eq!(entries.len(), 100);
        let kept = entries[0].request_body.as_ref().map_or(0, Bytes::len);
        assert!(
            kept < (2 << 20),
            "a body is queued as the prefix its line can use, not 8 MiB"
        );
        assert!(entries
            .last()
            .is_some_and(|e| e.bodies_withheld && e.request_body.is_none()));
        drop(done_tx);
    }

    #[test]
    fn full_queue_counts_drops() {
        let (log, rx, done_tx) = stalled(2, false);
        assert!(log.log(entry("1")));
        assert!(log.log(entry("2")));
        assert!(!log.log(entry("3")));
        assert!(!log.log(entry("4")));
        assert_eq!(log.dropped(), 2);
        drop(done_tx);
        drop(rx);
    }

    #[test]
    fn io_errors_drop_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("audit.log");
        let log = AuditLog::open(&config(&path), 16).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        log.reopen();
        log.log(entry("lost"));
        wait_for("the drop", || log.dropped() == 1);
        std::fs::create_dir(&sub).unwrap();
        log.log(entry("kept"));
        log.close(Duration::from_secs(10));
        assert_eq!(log.dropped(), 1);
        let got = lines(&path);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["request_id"], "kept");
    }

    #[test]
    fn handle_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AuditLog>();
    }

    /// `cargo test --release --lib usage::audit::tests::redact_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn redact_speed() {
        let para = "The gateway forwards each request to the provider chosen by the route table. \
                    fn handle(&self, req: Request) -> Result<Response, Error> { let n = req.len(); } \
                    Ünïcödé and emoji 🎉 appear in real prompts too; task-based, claude-sonnet-4-5.\n";
        let mut text = String::new();
        while text.len() < 100_000 {
            text.push_str(para);
        }
        assert!(matches!(redact(&text), Cow::Borrowed(_)));
        let runs = 200;
        let start = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(redact(std::hint::black_box(&text)));
        }
        let each = start.elapsed() / runs;
        println!(
            "redact: {} bytes clean in {each:?} ({:.0} MB/s)",
            text.len(),
            text.len() as f64 / each.as_secs_f64() / 1e6
        );
    }
}
