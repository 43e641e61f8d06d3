//! `modelgate proxy`: run the HTTP forward proxy (`forward`), with
//! claude-code-model-gateway's flags.
//!
//! The config file is optional here: when one is found (or named with
//! `-c`), its `proxy.allow`, timeouts, limits, retry settings, `threads`,
//! `grace_period` and logging apply; otherwise the defaults do. The flags
//! win over the file.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::server::{self, ServeOptions};

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The address to listen on.
    #[arg(short = 'H', long, default_value = "127.0.0.1", value_name = "HOST")]
    host: String,
    /// The port to listen on.
    #[arg(short = 'p', long, default_value_t = 3000, value_name = "PORT")]
    port: u16,
    /// Extra attempts after the first (connect errors; 502/503/504 for idempotent methods); overrides `max_retries`.
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// The wait before the first retry, doubling after each (seconds or a duration); overrides `retry_delay`.
    #[arg(long, value_name = "SECONDS", value_parser = super::serve::parse_duration)]
    retry_delay: Option<Duration>,
    /// A destination in a loopback or private range that may be reached anyway (`HOST:PORT`, `*` for any port or host label); repeatable, added to `proxy.allow`.
    #[arg(long = "allow", value_name = "HOST:PORT")]
    allow: Vec<String>,
    /// Take the listening socket over from a running `modelgate proxy` on the same port.
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
}

/// `host:port` as a socket address; a name is resolved once, here.
fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (bare, port)
        .to_socket_addrs()
        .map_err(|e| format!("--host {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("--host {host}: no address"))
}

fn load(explicit: Option<PathBuf>) -> Result<Config, String> {
    let path = super::config_path(explicit.clone());
    if explicit.is_none() && !path.exists() {
        return crate::config::load::parse_str("{}", &|_| None).map_err(|e| e.to_string());
    }
    crate::config::load::load_file(&path).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(config: Option<PathBuf>, args: ProxyArgs) -> i32 {
    let mut config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("modelgate: {e}");
            return 2;
        }
    };
    if let Some(n) = args.max_retries {
        config.max_retries = n;
    }
    if let Some(d) = args.retry_delay {
        config.retry_delay = crate::config::schema::Dur(d);
    }
    let settings = match listen_addr(&args.host, args.port)
        .and_then(|listen| crate::forward::Settings::from_config(&config, listen, &args.allow))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("modelgate: {e}");
            return 2;
        }
    };
    let sink = match &config.log_file {
        Some(f) => crate::logging::Sink::File(f.into()),
        None => crate::logging::Sink::Stderr,
    };
    if let Err(e) = crate::logging::init(config.log_level, config.log_format, &sink) {
        eprintln!(
            "modelgate: log_file {}: {e}",
            config.log_file.as_deref().unwrap_or_default()
        );
        return 2;
    }
    if !settings.listen.ip().is_loopback() {
        log::warn!(
            "the forward proxy listens on {}: anyone who reaches it can use it to reach public addresses{}",
            settings.listen,
            if settings.allow.is_empty() {
                ""
            } else {
                " and the allowed private ones"
            }
        );
    }
    server::run_forward_proxy(
        settings,
        &config,
        ServeOptions {
            upgrade: args.upgrade,
            daemon: args.daemon,
        },
    );
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn listen_addresses_take_ipv6_and_names() {
        assert_eq!(super::listen_addr("::1", 3000).unwrap().to_string(), "[::1]:3000");
        assert_eq!(super::listen_addr("[::1]", 3000).unwrap().to_string(), "[::1]:3000");
        assert_eq!(
            super::listen_addr("127.0.0.1", 8888).unwrap().to_string(),
            "127.0.0.1:8888"
        );
        assert!(super::listen_addr("localhost", 1).unwrap().ip().is_loopback());
    }
}
