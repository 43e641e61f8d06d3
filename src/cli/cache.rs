//! `modelgate cache stats|clear`: a running gateway's response and
//! token-count caches, through its admin API (`/admin/cache`).

use std::path::PathBuf;

use clap::Subcommand;

use super::health::{admin_request, base_url, Target};

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Entries, bytes, hits and misses of each cache, with its settings.
    Stats {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Drop every cached answer now (e.g. after a provider returned bad
    /// answers that were cached).
    Clear(Target),
}

pub fn run(config: Option<PathBuf>, command: CacheCommand) -> i32 {
    let (target, method) = match &command {
        CacheCommand::Stats { target, .. } => (target, "GET"),
        CacheCommand::Clear(target) => (target, "DELETE"),
    };
    let base = match base_url(config, target) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let v = match admin_request(&base, target.admin_key.as_deref(), method, "/admin/cache") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("modelgate: {base}/admin/cache: {e}");
            return 1;
        }
    };
    match command {
        CacheCommand::Clear(_) => out!("cleared {} cache entries", v["cleared"]),
        CacheCommand::Stats { json: true, .. } => out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        CacheCommand::Stats { json: false, .. } => {
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
            for name in ["response", "token_count"] {
                // JSON values print without padding: format them as strings first.
                let c = |field: &str| v[name][field].to_string();
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
    }
    0
}
