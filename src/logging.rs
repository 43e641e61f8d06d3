//! Process logging: `env_logger` with the config's level and format, to
//! stderr or to `log_file`. `RUST_LOG` overrides the level. The formats
//! are claude-code-model-gateway's: `standard` (`[time LEVEL target]
//! message`), `detailed` (milliseconds, thread, source line), `json` (one
//! object per line), `colored` (`standard` with the level in colour) and
//! `minimal` (`LEVEL message`). Level and format can both change at run
//! time (`modelgate logging configure`).
//!
//! The logger itself lets everything through; the level is the global
//! `log::max_level`, so it can change at runtime (`modelgate logging
//! set-level`, a config reload) without rebuilding the logger.
//!
//! One rule holds whatever the level: Pingora's own `trace` records never
//! reach the log. At that level Pingora prints whole request heads (the
//! client's `x-api-key`/`Authorization`, the provider key, AWS session and
//! OAuth tokens the gateway adds upstream) and response bodies, and the level
//! can be raised at run time through the admin API.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::config::schema::{LogFormat, LogLevel};

/// The format in use, as its index in [`LogFormat::ALL`].
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// The file lines go to, when not stderr (`log_file` at start).
static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The log file this process writes, if any.
pub fn file() -> Option<&'static std::path::Path> {
    FILE.get().map(|p| p.as_path())
}

/// Lines written since start, per level (error, warn, info, debug, trace):
/// `modelgate logging metrics`.
static LINES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Where lines go: stderr, or the file `log_file` names (opened for
/// appending, so `logrotate`'s `copytruncate` works).
pub enum Sink {
    Stderr,
    File(std::path::PathBuf),
}

/// Start logging. A file that cannot be opened is an error the caller
/// reports (the gateway does not start writing logs nowhere).
pub fn init(level: LogLevel, format: LogFormat, sink: &Sink) -> std::io::Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Trace);
    let from_env = std::env::var("RUST_LOG").ok();
    if let Some(spec) = &from_env {
        builder.parse_filters(spec);
    }
    if let Sink::File(path) = sink {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
        let _ = FILE.set(path.clone());
    }
    set_format(format);
    builder.format(|buf, record| {
        let level = record.level();
        LINES[level as usize - 1].fetch_add(1, Ordering::Relaxed);
        match format_now() {
            LogFormat::Json => {
                let line = serde_json::json!({
                    "ts": buf.timestamp_millis().to_string(),
                    "level": level.as_str(),
                    "target": record.target(),
                    "msg": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            }
            LogFormat::Detailed => writeln!(
                buf,
                "{} {level:<5} [{}] {} ({}:{}) {}",
                buf.timestamp_millis(),
                std::thread::current().name().unwrap_or("-"),
                record.target(),
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0),
                record.args()
            ),
            LogFormat::Colored => {
                let colour = match level {
                    log::Level::Error => "31",
                    log::Level::Warn => "33",
                    log::Level::Info => "32",
                    log::Level::Debug => "36",
                    log::Level::Trace => "35",
                };
                writeln!(
                    buf,
                    "[{} \x1b[{colour}m{level:<5}\x1b[0m {}] {}",
                    buf.timestamp_seconds(),
                    record.target(),
                    record.args()
                )
            }
            LogFormat::Minimal => writeln!(buf, "{level:<5} {}", record.args()),
            LogFormat::Standard => writeln!(
                buf,
                "[{} {level:<5} {}] {}",
                buf.timestamp_seconds(),
                record.target(),
                record.args()
            ),
        }
    });
    let logger = Guarded(builder.build());
    let env_level = logger.0.filter();
    // A second init (tests, or `serve` after a config command) is harmless.
    let _ = log::set_boxed_logger(Box::new(logger));
    set_level(if from_env.is_some() {
        env_level
    } else {
        level.as_filter()
    });
    Ok(())
}

/// Change the log format now.
pub fn set_format(format: LogFormat) {
    let i = LogFormat::ALL.iter().position(|f| *f == format).unwrap_or(0);
    FORMAT.store(i as u8, Ordering::Relaxed);
}

/// The log format in use.
pub fn format_now() -> LogFormat {
    LogFormat::ALL
        .get(usize::from(FORMAT.load(Ordering::Relaxed)))
        .copied()
        .unwrap_or_default()
}

/// Lines written since start, per level name.
pub fn lines_written() -> [(&'static str, u64); 5] {
    let n = |i: usize| LINES[i].load(Ordering::Relaxed);
    [
        ("error", n(0)),
        ("warn", n(1)),
        ("info", n(2)),
        ("debug", n(3)),
        ("trace", n(4)),
    ]
}

/// Change the process's log level now.
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

pub fn level() -> log::LevelFilter {
    log::max_level()
}

/// The process logger with Pingora's `trace` records held back (module docs).
struct Guarded(env_logger::Logger);

/// Records that never reach the log: see the module docs.
fn withheld(meta: &log::Metadata<'_>) -> bool {
    meta.level() == log::Level::Trace && meta.target().starts_with("pingora")
}

impl log::Log for Guarded {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        !withheld(meta) && self.0.enabled(meta)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !withheld(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_trace_is_withheld_at_any_level() {
        let meta = |target, level| log::MetadataBuilder::new().target(target).level(level).build();
        assert!(withheld(&meta(
            "pingora_core::protocols::http::v1::client",
            log::Level::Trace
        )));
        assert!(withheld(&meta("pingora_proxy", log::Level::Trace)));
        assert!(!withheld(&meta("pingora_core::server", log::Level::Debug)));
        assert!(!withheld(&meta("modelgate::gateway", log::Level::Trace)));
    }
}
