//! Process logging: `env_logger` with the config's level and format.
//! `RUST_LOG` overrides the level. `json` writes one object per line.

use std::io::Write;

use crate::config::schema::{LogFormat, LogLevel};

pub fn init(level: LogLevel, format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level.as_filter());
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
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
}
