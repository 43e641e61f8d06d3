//! Process logging: `env_logger` with the config's level and format.
//! `RUST_LOG` overrides the level. `json` writes one object per line.
//!
//! The logger itself lets everything through; the level is the global
//! `log::max_level`, so it can change at runtime (`modelgate logging
//! set-level`, a config reload) without rebuilding the logger.

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
    // A second init (tests, or `serve` after a config command) is harmless.
    let _ = builder.try_init();
    if from_env.is_none() {
        set_level(level.as_filter());
    }
}

/// Change the process's log level now.
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

pub fn level() -> log::LevelFilter {
    log::max_level()
}
