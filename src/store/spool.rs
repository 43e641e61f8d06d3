//! The local spool: ledger records kept on disk while the PostgreSQL store
//! is unreachable, replayed into it when it is back.
//!
//! A spool is a directory of segment files, one JSON [`Record`] per line.
//! The writer appends to one open segment (`<writer>-<seq>.open`), holding
//! an exclusive lock on it for as long as it is open; [`Spool::seal`]
//! closes it and renames it `.jsonl`. Replay takes sealed segments, and
//! `.open` segments whose lock it can take (their writer is gone: a process
//! that was killed, or the previous one of an upgrade), oldest first.
//!
//! Every append is one `write` of whole lines followed by `fdatasync`: a
//! crash loses at most the batch being written, and a torn last line is
//! skipped (and counted) on replay. Replay inserts with `ON CONFLICT
//! (request_id) DO NOTHING`, so a segment replayed twice (a crash between
//! the insert and the delete, two replicas sharing the directory) writes
//! each record once.
//!
//! The directory is bounded by `store.spool_max_bytes`: a batch that would
//! go past it is refused, and the caller counts its records as dropped.
//!
//! Everything here is blocking file I/O: callers run it on a blocking
//! thread, never on a request's task.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::period::now_ms;
use crate::usage::Record;

/// A segment is sealed once it is this big, so a replay reads bounded files.
const SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {} is full ({limit} bytes, store.spool_max_bytes)", path.display())]
    Full { path: PathBuf, limit: u64 },
}

struct Open {
    file: File,
    path: PathBuf,
    bytes: u64,
}

/// One process's handle on a spool directory.
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    /// Names this process's segments.
    writer: u64,
    seq: u64,
    open: Option<Open>,
}

/// A segment to replay; dropping it releases the lock it may hold.
pub struct Segment {
    pub path: PathBuf,
    /// Keeps another replayer (and a writer that might reopen it) out.
    _lock: Option<File>,
}

impl Spool {
    /// Open (create) the spool directory.
    pub fn open(dir: &Path, limit: u64, writer: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            limit,
            writer,
            seq: 0,
            open: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
        let path = path.to_path_buf();
        move |source| SpoolError::Io { path, source }
    }

    /// Bytes the directory's segments hold.
    pub fn bytes(&self) -> u64 {
        segments(&self.dir)
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Append `records` as one write, then `fdatasync`.
    pub fn append(&mut self, records: &[Arc<Record>]) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(records.len() * 512);
        for r in records {
            serde_json::to_writer(&mut buf, r.as_ref()).map_err(|e| SpoolError::Io {
                path: self.dir.clone(),
                source: e.into(),
            })?;
            buf.push(b'\n');
        }
        if self.bytes() + buf.len() as u64 > self.limit {
            return Err(SpoolError::Full {
                path: self.dir.clone(),
                limit: self.limit,
            });
        }
        if self.open.as_ref().is_some_and(|o| o.bytes >= SEGMENT_BYTES) {
            self.seal()?;
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                self.seq += 1;
                // Time first, so a directory listing sorts oldest first.
                let name = format!("{:013}-{:016x}-{:06}.open", now_ms(), self.writer, self.seq);
                let path = self.dir.join(name);
                let file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| SpoolError::Io {
                        path: path.clone(),
                        source,
                    })?;
                file.try_lock().map_err(|e| SpoolError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                self.open.insert(Open { file, path, bytes: 0 })
            }
        };
        let path = open.path.clone();
        let wrote = open.file.write_all(&buf).and_then(|()| open.file.sync_data());
        open.bytes += buf.len() as u64;
        wrote.map_err(|source| SpoolError::Io { path, source })
    }

    /// Close the open segment and rename it `.jsonl` (replayable). A no-op
    /// without one.
    pub fn seal(&mut self) -> Result<(), SpoolError> {
        let Some(open) = self.open.take() else { return Ok(()) };
        let sealed = open.path.with_extension("jsonl");
        std::fs::rename(&open.path, &sealed).map_err(self.io(&open.path))?;
        // The lock goes with the file handle, after the rename: nobody can
        // take an `.open` segment that is still being written.
        drop(open.file);
        sync_dir(&self.dir);
        Ok(())
    }

    /// Whether there is anything to replay (sealed or abandoned segments).
    pub fn has_backlog(&self) -> bool {
        let own = self.open.as_ref().map(|o| o.path.as_path());
        segments(&self.dir).iter().any(|p| Some(p.as_path()) != own)
    }

    /// The oldest segment that can be replayed now: sealed, or open and
    /// unlocked (its writer is gone). `None` when there is none.
    pub fn next_segment(&self) -> Option<Segment> {
        let own = self.open.as_ref().map(|o| o.path.clone());
        for path in segments(&self.dir) {
            if Some(&path) == own.as_ref() {
                continue;
            }
            let Ok(file) = File::open(&path) else { continue };
            if file.try_lock().is_err() {
                // Another live process writes or replays it.
                continue;
            }
            return Some(Segment {
                path,
                _lock: Some(file),
            });
        }
        None
    }
}

impl Segment {
    /// The segment's records, in chunks of at most `chunk`, each handed to
    /// `each` (which inserts them). A line that does not parse (torn by a
    /// crash mid-write) is skipped and counted in the result. Stops at the
    /// first error of `each`.
    pub fn replay<E>(
        &self,
        chunk: usize,
        mut each: impl FnMut(Vec<Record>) -> Result<(), E>,
    ) -> Result<Result<u64, E>, SpoolError> {
        let file = File::open(&self.path).map_err(|source| SpoolError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut torn = 0;
        let mut batch = Vec::with_capacity(chunk.min(4096));
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) => batch.push(r),
                Err(_) => torn += 1,
            }
            if batch.len() >= chunk {
                if let Err(e) = each(std::mem::take(&mut batch)) {
                    return Ok(Err(e));
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = each(batch) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(torn))
    }

    /// Delete the replayed segment.
    pub fn remove(self) -> Result<(), SpoolError> {
        std::fs::remove_file(&self.path).map_err(|source| SpoolError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir);
        }
        Ok(())
    }
}

/// The directory's segment files (`.open` and `.jsonl`), oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "open" || e == "jsonl"))
        .collect();
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    out
}

/// Make a rename or delete durable. Best effort: some file systems refuse
/// to open a directory for sync.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
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
            input_tokens: i as u64,
            ..Default::default()
        })
    }

    fn replay_all(spool: &Spool) -> (Vec<String>, u64) {
        let mut ids = Vec::new();
        let mut torn = 0;
        while let Some(seg) = spool.next_segment() {
            torn += seg
                .replay(2, |chunk| {
                    ids.extend(chunk.into_iter().map(|r| r.request_id));
                    Ok::<(), ()>(())
                })
                .unwrap()
                .unwrap();
            seg.remove().unwrap();
        }
        (ids, torn)
    }

    #[test]
    fn appends_are_replayed_once_sealed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 7).unwrap();
        spool.append(&[rec(1), rec(2), rec(3)]).unwrap();
        spool.append(&[rec(4)]).unwrap();
        assert!(!spool.has_backlog(), "the open segment is still being written");
        assert!(spool.next_segment().is_none());
        spool.seal().unwrap();
        spool.append(&[rec(5)]).unwrap();
        spool.seal().unwrap();
        let (ids, torn) = replay_all(&spool);
        assert_eq!(ids, ["req_1", "req_2", "req_3", "req_4", "req_5"]);
        assert_eq!(torn, 0);
        assert_eq!(spool.bytes(), 0);
        assert!(!spool.has_backlog());
    }

    #[test]
    fn a_dead_writers_open_segment_is_replayed_and_a_torn_line_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut dead = Spool::open(dir.path(), 1 << 20, 1).unwrap();
            dead.append(&[rec(1), rec(2)]).unwrap();
            // Killed mid-write: a partial line after the last whole one.
            let open = dead.open.as_mut().unwrap();
            open.file.write_all(b"{\"ts_ms\":3,\"requ").unwrap();
            // Dropped without seal: the process is gone, its lock with it.
        }
        let spool = Spool::open(dir.path(), 1 << 20, 2).unwrap();
        assert!(spool.has_backlog());
        let (ids, torn) = replay_all(&spool);
        assert_eq!(ids, ["req_1", "req_2"]);
        assert_eq!(torn, 1);
    }

    #[test]
    fn a_live_writers_open_segment_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = Spool::open(dir.path(), 1 << 20, 1).unwrap();
        live.append(&[rec(1)]).unwrap();
        let other = Spool::open(dir.path(), 1 << 20, 2).unwrap();
        assert!(other.has_backlog());
        assert!(other.next_segment().is_none(), "locked by its writer");
        live.seal().unwrap();
        assert_eq!(replay_all(&other).0, ["req_1"]);
    }

    #[test]
    fn a_full_spool_refuses_the_batch_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 1).unwrap();
        spool.append(&[rec(1)]).unwrap();
        spool.limit = spool.bytes() + 10;
        let err = spool.append(&[rec(2), rec(3), rec(4)]).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        spool.seal().unwrap();
        assert_eq!(replay_all(&spool).0, ["req_1"]);
    }

    #[test]
    fn replay_stops_at_the_first_insert_error_and_keeps_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 1).unwrap();
        spool.append(&[rec(1), rec(2), rec(3)]).unwrap();
        spool.seal().unwrap();
        let seg = spool.next_segment().unwrap();
        let out = seg.replay(2, |_| Err("store down")).unwrap();
        assert_eq!(out, Err("store down"));
        drop(seg);
        assert_eq!(replay_all(&spool).0.len(), 3, "retried in full later");
    }
}
