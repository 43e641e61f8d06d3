//! The `modelgate` command line. One module per command group; each returns
//! a process exit code and prints errors a person can act on.

/// `println!` for command output: a closed pipe (`modelgate … | head`) ends
/// the command quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod cache;
mod config_cmd;
mod failure;
mod health;
mod keys;
mod keys_store;
mod logging;
mod provider;
mod proxy;
mod route;
mod serve;
mod signin;
mod teams;
mod upgrade;
mod usage;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::load::{default_config_path, load_file};
use crate::config::{Config, ConfigError};
use crate::runtime::Snapshot;

#[derive(Parser, Debug)]
#[command(name = "modelgate", version, about = "An LLM gateway for Claude Code and the Anthropic Messages API", long_about = None)]
pub struct Cli {
    /// Config file. Default: ./modelgate.yaml, then ./gateway.yaml, then conf/modelgate.yaml.
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    #[command(visible_alias = "gateway")]
    Serve(serve::ServeArgs),
    /// Create, check and inspect the config file.
    Config {
        #[command(subcommand)]
        command: config_cmd::ConfigCommand,
    },
    /// Ask a running gateway about upstream health.
    Health {
        #[command(subcommand)]
        command: health::HealthCommand,
    },
    /// See or change a running gateway's logging (level, format, files), and try the redactor.
    Logging {
        #[command(subcommand)]
        command: logging::LoggingCommand,
    },
    /// Inspect providers.
    Provider {
        #[command(subcommand)]
        command: provider::ProviderCommand,
    },
    /// Inspect routing: the rules, and the plan a model gets.
    Route {
        #[command(subcommand)]
        command: route::RouteCommand,
    },
    /// Create, list and revoke developers' gateway keys (edits the config file).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Create, list, change and delete teams in a PostgreSQL store (no reload).
    Teams {
        #[command(subcommand)]
        command: teams::TeamsCommand,
    },
    /// Check developers' sign-in with the organisation's identity provider (`signin:`).
    Signin {
        #[command(subcommand)]
        command: signin::SigninCommand,
    },
    /// List and revoke developers' sign-ins (an administrator's offboarding).
    Sessions {
        #[command(subcommand)]
        command: signin::SessionsCommand,
    },
    /// Spend and tokens from the usage ledger.
    Usage(usage::UsageArgs),
    /// Inspect or clear a running gateway's response and token-count caches.
    Cache {
        #[command(subcommand)]
        command: cache::CacheCommand,
    },
    /// Replace the running gateway with a new process, with zero downtime.
    Upgrade(upgrade::UpgradeArgs),
    /// Run an HTTP forward proxy (plain and CONNECT) for tools that take HTTPS_PROXY.
    Proxy(proxy::ProxyArgs),
    /// Check the config file (the same as `config validate`).
    ValidateConfig,
    /// Check the config and reach every upstream (the same as `config doctor`).
    TestConfig,
    /// Compare two config files (the same as `config diff A B`).
    ConfigDiff { a: PathBuf, b: PathBuf },
}

pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(cli.config, args),
        Command::Config { command } => config_cmd::run(cli.config, command),
        Command::Route { command } => route::run(cli.config, command),
        Command::Provider { command } => provider::run(cli.config, command),
        Command::Health { command } => health::run(cli.config, command),
        Command::Logging { command } => logging::run(cli.config, command),
        Command::Keys { command } => keys::run(cli.config, command),
        Command::Teams { command } => teams::run(cli.config, command),
        Command::Signin { command } => signin::run_signin(cli.config, command),
        Command::Sessions { command } => signin::run_sessions(cli.config, command),
        Command::Usage(args) => usage::run(cli.config, args),
        Command::Cache { command } => cache::run(cli.config, command),
        Command::Upgrade(args) => upgrade::run(cli.config, args),
        Command::Proxy(args) => proxy::run(cli.config, args),
        Command::ValidateConfig => config_cmd::validate(&config_path(cli.config)),
        Command::TestConfig => config_cmd::doctor(&config_path(cli.config)),
        Command::ConfigDiff { a, b } => config_cmd::diff(&a, &b),
    }
}

/// Text for people, or JSON with a stable shape for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub(crate) fn config_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(default_config_path)
}

/// Load and compile a config with the process environment, applying `tweak`
/// (command-line overrides) between parsing and validation.
pub(crate) fn load_snapshot(path: &std::path::Path, tweak: impl Fn(&mut Config)) -> Result<Snapshot, ConfigError> {
    let mut config = load_file(path)?;
    tweak(&mut config);
    Snapshot::build(config, &|name| std::env::var(name).ok())
}
