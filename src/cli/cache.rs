//! `modelgate cache stats|clear|purge|info|warmup|response-stats|token-count-stats`:
//! a running gateway's response and token-count caches, through its admin
//! API (`/admin/cache`, `/admin/cache/warmup`); `info` reads the settings
//! from the config file.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use super::health::{ask, ask_with, Target};
use super::Output;

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Entries, bytes, hits and misses of each cache, with its settings.
    Stats {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// `text` (default) or `json` (the same as --json).
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Drop every cached answer now (e.g. after a provider returned bad
    /// answers that were cached).
    Clear(Target),
    /// Drop only the entries past their `ttl` (they would not be served again).
    Purge(Target),
    /// The caches' settings in the config file: enabled, ttl, max entries.
    Info {
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
    },
    /// Pre-load answers from a JSONL file of request/response pairs, one per
    /// line: `{"request": {...}, "response": {...}}`, optionally with `key`
    /// (the gateway key the entry answers), `headers` (`anthropic-version`,
    /// `anthropic-beta`) and `endpoint` (`messages` or `count_tokens`). A
    /// `stream: true` request takes the whole event stream as a string.
    Warmup {
        /// The JSONL file.
        file: PathBuf,
        /// The gateway key for lines that name none.
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
        /// `text` (default) or `json` (`{loaded, skipped: [{line, reason}]}`).
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The response cache's figures alone.
    ResponseStats {
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The token-count cache's figures alone.
    TokenCountStats {
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(config: Option<PathBuf>, command: CacheCommand) -> i32 {
    if let CacheCommand::Info { format } = command {
        return info(config, format);
    }
    if let CacheCommand::Warmup {
        file,
        key,
        format,
        target,
    } = &command
    {
        return warmup(config, file, key.as_deref(), *format, target);
    }
    let (target, method, path) = match &command {
        CacheCommand::Stats { target, .. }
        | CacheCommand::ResponseStats { target, .. }
        | CacheCommand::TokenCountStats { target, .. } => (target, "GET", "/admin/cache"),
        CacheCommand::Clear(target) => (target, "DELETE", "/admin/cache"),
        CacheCommand::Purge(target) => (target, "DELETE", "/admin/cache?expired=true"),
        CacheCommand::Info { .. } | CacheCommand::Warmup { .. } => unreachable!("answered above"),
    };
    ask(config, target, method, path.into(), |v| {
        print(&command, v);
        0
    })
}

fn print(command: &CacheCommand, v: &Value) {
    match command {
        CacheCommand::Clear(_) => out!("cleared {} cache entries", v["cleared"]),
        CacheCommand::Purge(_) => out!("purged {} expired cache entries", v["purged"]),
        CacheCommand::Stats { json, format, .. } if *json || *format == Output::Json => {
            out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        CacheCommand::Stats { .. } => table(v, &["response", "token_count"]),
        CacheCommand::ResponseStats {
            format: Output::Json, ..
        } => {
            out!("{}", serde_json::to_string_pretty(&v["response"]).unwrap_or_default())
        }
        CacheCommand::TokenCountStats {
            format: Output::Json, ..
        } => {
            out!(
                "{}",
                serde_json::to_string_pretty(&v["token_count"]).unwrap_or_default()
            )
        }
        CacheCommand::ResponseStats { .. } => table(v, &["response"]),
        CacheCommand::TokenCountStats { .. } => table(v, &["token_count"]),
        CacheCommand::Info { .. } | CacheCommand::Warmup { .. } => {}
    }
}

/// `cache warmup FILE`: the file goes to the gateway as it is; the gateway
/// keys each entry as the live request would be keyed.
fn warmup(config: Option<PathBuf>, file: &std::path::Path, key: Option<&str>, format: Output, target: &Target) -> i32 {
    let body = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("modelgate: {}: {e}", file.display());
            return 2;
        }
    };
    let path = match key {
        Some(k) => format!(
            "/admin/cache/warmup?key={}",
            url::form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>()
        ),
        None => "/admin/cache/warmup".to_string(),
    };
    ask_with(config, target, "POST", path, body, |v| {
        if format == Output::Json {
            out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            out!("loaded {} cache entries", v["loaded"]);
            for s in v["skipped"].as_array().into_iter().flatten() {
                out!("skipped line {}: {}", s["line"], s["reason"].as_str().unwrap_or("?"));
            }
        }
        i32::from(v["loaded"].as_u64() == Some(0) && v["skipped"].as_array().is_some_and(|s| !s.is_empty()))
    })
}

/// One line per cache of `/admin/cache`'s answer.
fn table(v: &Value, names: &[&str]) {
    out!(
        "{:<12} {:>8} {:>8} {:>10} {:>10} {:>10} {:>8} {:>12}",
        "CACHE",
        "ENABLED",
        "ENTRIES",
        "BYTES",
        "HITS",
        "MISSES",
        "TTL",
        "MAX_ENTRIES"
    );
    for name in names {
        // JSON values print without padding: format them as strings first.
        let c = |field: &str| v[*name][field].to_string();
        out!(
            "{:<12} {:>8} {:>8} {:>10} {:>10} {:>10} {:>7}s {:>12}",
            name,
            c("enabled"),
            c("entries"),
            c("bytes"),
            c("hits"),
            c("misses"),
            c("ttl_seconds"),
            c("max_entries")
        );
    }
}

/// `cache info`: the file's settings (a running gateway's `serve` flags
/// may turn a cache on beyond them: `cache stats` shows what runs).
fn info(config: Option<PathBuf>, format: Output) -> i32 {
    let path = super::config_path(config);
    let c = match crate::config::load::load_file(&path) {
        Ok(c) => c.cache,
        Err(e) => {
            eprintln!("modelgate: {}: {e}", path.display());
            return 2;
        }
    };
    let v = json!({
        "response": {
            "enabled": c.response.enabled,
            "ttl_seconds": c.response.ttl.0.as_secs(),
            "max_entries": c.response.max_entries,
        },
        "token_count": {
            "enabled": c.token_count.enabled,
            "ttl_seconds": c.token_count.ttl.0.as_secs(),
        },
    });
    match format {
        Output::Json => out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Output::Text => {
            out!(
                "response     enabled: {}, ttl: {}s, max entries: {}",
                c.response.enabled,
                c.response.ttl.0.as_secs(),
                c.response.max_entries
            );
            out!(
                "token_count  enabled: {}, ttl: {}s",
                c.token_count.enabled,
                c.token_count.ttl.0.as_secs()
            );
        }
    }
    0
}
