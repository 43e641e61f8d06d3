//! Process logging: `env_logger` with the config's level and format.
//! `RUST_LOG` overrides the level. `json` writes one object per line.
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

use crate::config::schema::{LogFormat, LogLevel};

pub fn init(level: LogLevel, format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Trace);
    let from_env = std::env::var("RUST_LOG").ok();
    if let Some(spec) = &from_env {
        builder.parse_filters(spec);
    }
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let logger = Guarded(builder.build());
    let env_level = logger.0.filter();
    // A second init (tests, or `serve` after a config command) is harmless.
    let _ = log::set_boxed_logger(Box::new(logger));
    set_level(if from_env.is_some() {
        env_level
    } else {
        level.as_filter()
    });
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
