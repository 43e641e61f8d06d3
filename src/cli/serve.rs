//! `modelgate serve` (alias `gateway`): load, validate, override from flags, run.
//!
//! The flags are claude-code-model-gateway's `gateway` flags as well as
//! modelgate's own. Each overrides one config key, at start and again on
//! every reload (the file never wins over the command line); nothing is
//! written back to the file.

use std::path::PathBuf;

use clap::Args;

use crate::config::schema::{Dur, LogFormat, LogLevel};
use crate::config::Config;
use crate::secret::Secret;
use crate::server::{self, ServeOptions};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Main listener address; overrides `listen`.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["host", "port"])]
    listen: Option<String>,
    /// The main listener's host (the seed's `--host`); its port stays unless `--port` is given.
    #[arg(short = 'H', long, value_name = "HOST")]
    host: Option<String>,
    /// The main listener's port (the seed's `--port`).
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<u16>,
    /// Take the listening sockets over from a running modelgate (graceful upgrade).
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// The key of the default Anthropic provider for this run (never written anywhere).
    /// Prefer `api_key_env_var` in the file: a command line is visible to other users of the host.
    #[arg(long, value_name = "KEY", value_parser = secret)]
    api_key: Option<Secret>,
    /// The `anthropic-version` sent when a client sends none; overrides `anthropic_version`.
    #[arg(long, value_name = "VERSION")]
    anthropic_version: Option<String>,
    /// Forward every other `/v1/*` path to the default provider; sets `passthrough_mode`.
    #[arg(long)]
    passthrough_mode: bool,
    /// Largest request body in bytes; overrides `max_request_size`.
    #[arg(long, value_name = "BYTES")]
    max_request_size: Option<u64>,
    /// Enable the exact-match response cache.
    #[arg(long)]
    response_cache: bool,
    /// Response cache entry lifetime (seconds or a duration); overrides `cache.response.ttl`.
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    cache_ttl: Option<std::time::Duration>,
    /// Response cache entries at most; overrides `cache.response.max_entries`.
    #[arg(long, value_name = "N")]
    cache_maxsize: Option<usize>,
    /// Enable the count_tokens cache.
    #[arg(long)]
    token_count_cache: bool,
    /// Idle upstream connections kept for reuse; overrides `pool_size`.
    #[arg(long, value_name = "N")]
    pool_size: Option<usize>,
    /// Override `max_retries`.
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Base delay between attempts (seconds or a duration); overrides `retry_delay`.
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    retry_delay: Option<std::time::Duration>,
    /// Per-attempt upstream timeout (seconds or a duration); overrides `timeout`.
    #[arg(short = 't', long, value_name = "SECONDS", value_parser = parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Override `log_format`.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Append log lines to this file instead of stderr; overrides `log_file`.
    #[arg(long, value_name = "PATH")]
    log_file: Option<String>,
    /// Log at debug level; overrides `log_level`.
    #[arg(short = 'v', long)]
    verbose: bool,
}

fn secret(s: &str) -> Result<Secret, String> {
    if s.trim().is_empty() {
        return Err("the key is empty".into());
    }
    Ok(Secret::new(s.trim()))
}

/// Seconds (`300`, `0.5`) or a humantime duration (`5m`).
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    Dur::parse(s).map(|d| d.0)
}

/// `host:port` with either part replaced (IPv6 hosts in brackets).
fn with_host_port(listen: &str, host: Option<&str>, port: Option<u16>) -> String {
    let (old_host, old_port) = match listen.rsplit_once(':') {
        Some((h, p)) => (h, p.to_string()),
        None => (listen, "8080".to_string()),
    };
    let host = host.unwrap_or(old_host);
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let port = port.map_or(old_port, |p| p.to_string());
    format!("{host}:{port}")
}

/// Give `key` to the default Anthropic provider: `default_provider` when it
/// is of type `anthropic`, else the first provider of that type. Its name.
fn give_api_key(c: &mut Config, key: &Secret) -> Result<String, String> {
    let name = c
        .default_provider
        .clone()
        .filter(|d| c.providers.get(d).is_some_and(|p| p.kind == "anthropic"))
        .or_else(|| {
            c.providers
                .iter()
                .find(|(_, p)| p.kind == "anthropic")
                .map(|(n, _)| n.clone())
        })
        .ok_or("--api-key: the config has no provider of type `anthropic` to give it to")?;
    let p = c.providers.get_mut(&name).ok_or("--api-key: no such provider")?;
    if !p.keys.is_empty() {
        return Err(format!(
            "--api-key: provider `{name}` has several accounts (`keys:`); set their keys in the file"
        ));
    }
    p.api_key = Some(key.expose().to_string());
    p.api_key_env_var = None;
    Ok(name)
}

impl ServeArgs {
    /// Apply the flags to a config (at start and on every reload).
    fn apply(&self, c: &mut Config) {
        if let Some(l) = &self.listen {
            c.listen = l.clone();
        }
        if self.host.is_some() || self.port.is_some() {
            c.listen = with_host_port(&c.listen, self.host.as_deref(), self.port);
        }
        if let Some(key) = &self.api_key {
            // Refusals were reported at start; a reload that removed the
            // provider keeps the file's credentials.
            let _ = give_api_key(c, key);
        }
        if let Some(v) = &self.anthropic_version {
            c.anthropic_version = v.clone();
        }
        if self.passthrough_mode {
            c.passthrough_mode = true;
        }
        if let Some(n) = self.max_request_size {
            c.max_request_size = n;
        }
        if self.response_cache {
            c.cache.response.enabled = true;
        }
        if let Some(t) = self.cache_ttl {
            c.cache.response.ttl = Dur(t);
        }
        if let Some(n) = self.cache_maxsize {
            c.cache.response.max_entries = n;
        }
        if self.token_count_cache {
            c.cache.token_count.enabled = true;
        }
        if let Some(n) = self.pool_size {
            c.pool_size = n;
        }
        if let Some(n) = self.max_retries {
            c.max_retries = n;
        }
        if let Some(t) = self.retry_delay {
            c.retry_delay = Dur(t);
        }
        if let Some(t) = self.timeout {
            c.timeout = Dur(t);
        }
        if let Some(f) = self.log_format {
            c.log_format = f;
        }
        if let Some(f) = &self.log_file {
            c.log_file = Some(f.clone());
        }
        if self.verbose {
            c.log_level = LogLevel::Debug;
        }
    }
}

pub fn run(config: Option<PathBuf>, args: ServeArgs) -> i32 {
    let path = super::config_path(config);
    if let Some(key) = &args.api_key {
        // A file that does not load is reported just below.
        if let Ok(Err(e)) = crate::config::load::load_file(&path).map(|mut c| give_api_key(&mut c, key)) {
            eprintln!("modelgate: {e}");
            return 2;
        }
    }
    let (upgrade, daemon) = (args.upgrade, args.daemon);
    // Command-line overrides win over the file, at start and on every reload.
    let overrides = move |c: &mut Config| args.apply(c);
    let snapshot = match super::load_snapshot(&path, overrides.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("modelgate: {}: {e}", path.display());
            return 2;
        }
    };
    let sink = match &snapshot.config.log_file {
        Some(f) => crate::logging::Sink::File(f.into()),
        None => crate::logging::Sink::Stderr,
    };
    if let Err(e) = crate::logging::init(snapshot.config.log_level, snapshot.config.log_format, &sink) {
        eprintln!(
            "modelgate: log_file {}: {e}",
            snapshot.config.log_file.as_deref().unwrap_or_default()
        );
        return 2;
    }
    crate::gateway::guard::install_hook();
    server::run(snapshot, path, Box::new(overrides), ServeOptions { upgrade, daemon });
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_replace_their_part() {
        assert_eq!(with_host_port("127.0.0.1:8080", Some("0.0.0.0"), None), "0.0.0.0:8080");
        assert_eq!(with_host_port("127.0.0.1:8080", None, Some(9000)), "127.0.0.1:9000");
        assert_eq!(with_host_port("[::1]:8080", Some("::"), Some(1)), "[::]:1");
    }

    #[test]
    fn durations_take_seconds_fractions_and_units() {
        assert_eq!(parse_duration("0.5").unwrap(), std::time::Duration::from_millis(500));
        assert_eq!(parse_duration("300").unwrap(), std::time::Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), std::time::Duration::from_secs(300));
        assert!(parse_duration("-1").is_err() && parse_duration("soon").is_err());
    }

    #[test]
    fn the_api_key_goes_to_the_default_anthropic_provider() {
        let env = |_: &str| None;
        let mut c = crate::config::load::parse_str(
            "default_provider: o\nproviders:\n  o: {type: openai, api_key: x}\n  a: {type: anthropic, api_key_env_var: K}\n",
            &env,
        )
        .unwrap();
        assert_eq!(give_api_key(&mut c, &Secret::new("sk-ant-flag")).unwrap(), "a");
        assert_eq!(c.providers["a"].api_key.as_deref(), Some("sk-ant-flag"));
        assert!(c.providers["a"].api_key_env_var.is_none());
        let mut none = crate::config::load::parse_str("providers:\n  o: {type: openai}\n", &env).unwrap();
        assert!(give_api_key(&mut none, &Secret::new("k")).is_err());
    }
}
