//! `modelgate serve` (alias `gateway`): load, validate, override from flags, run.

use std::path::PathBuf;

use clap::Args;

use crate::config::schema::{Dur, LogFormat};
use crate::config::Config;
use crate::server::{self, ServeOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Main listener address; overrides `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Take the listening sockets over from a running modelgate (graceful upgrade).
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Enable the exact-match response cache.
    #[arg(long)]
    response_cache: bool,
    /// Enable the count_tokens cache.
    #[arg(long)]
    token_count_cache: bool,
    /// Override `max_retries`.
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Override `timeout` (e.g. 120s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Override `log_format`.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(config: Option<PathBuf>, args: ServeArgs) -> i32 {
    let path = super::config_path(config);
    let ServeArgs {
        listen,
        upgrade,
        daemon,
        response_cache,
        token_count_cache,
        max_retries,
        timeout,
        log_format,
    } = args;
    // Command-line overrides win over the file, at start and on every reload.
    let overrides = move |c: &mut Config| {
        if let Some(l) = &listen {
            c.listen = l.clone();
        }
        if response_cache {
            c.cache.response.enabled = true;
        }
        if token_count_cache {
            c.cache.token_count.enabled = true;
        }
        if let Some(n) = max_retries {
            c.max_retries = n;
        }
        if let Some(t) = timeout {
            c.timeout = Dur(t);
        }
        if let Some(f) = log_format {
            c.log_format = f;
        }
    };
    let snapshot = match super::load_snapshot(&path, overrides.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("modelgate: {}: {e}", path.display());
            return 2;
        }
    };
    crate::logging::init(snapshot.config.log_level, snapshot.config.log_format);
    crate::gateway::guard::install_hook();
    server::run(snapshot, path, Box::new(overrides), ServeOptions { upgrade, daemon });
    0
}
