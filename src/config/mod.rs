//! Configuration: the file's schema, loading it, and the compiled snapshot
//! every request holds for its whole life.
//!
//! The flow is one-way: text → [`schema::Config`] (`load`) → [`Snapshot`]
//! (`snapshot`, which validates cross-references and compiles globs, keys and
//! upstream addresses once). The running gateway keeps the current snapshot
//! in a [`ConfigStore`]; a request takes one `Arc<Snapshot>` at its start.

pub mod edit;
pub mod load;
pub mod reload;
pub mod schema;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use schema::Config;
pub use snapshot::{Provider, ProviderKind, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Schema(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The live configuration: one atomically swappable snapshot, where it came
/// from, how to rebuild it, and how the last reloads went.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    /// Command-line overrides, applied again on every reload.
    overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// What the process was started with and a reload cannot change.
    boot: Fixed,
    status: std::sync::Mutex<reload::ReloadStatus>,
}

/// Settings bound to the running process (listeners, threads, sockets):
/// they change only through a restart or a graceful upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    pub listen: std::net::SocketAddr,
    pub admin_listen: Option<std::net::SocketAddr>,
    pub threads: Option<usize>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
    pub grace_period: std::time::Duration,
    pub log_format: schema::LogFormat,
    /// The state backend and where it lives (`state.*`): counters and the
    /// ledger writer are bound to the process.
    pub state: String,
    /// `audit.path` with its rotation settings.
    pub audit_path: Option<String>,
}

impl Fixed {
    pub fn of(s: &Snapshot) -> Fixed {
        Fixed {
            listen: s.listen,
            admin_listen: s.admin_listen,
            threads: s.config.threads,
            upgrade_sock: s.config.upgrade_sock.clone(),
            pid_file: s.config.pid_file.clone(),
            grace_period: s.config.grace_period.0,
            log_format: s.config.log_format,
            state: serde_json::to_string(&s.config.state).unwrap_or_default(),
            audit_path: s.config.audit.path.as_ref().map(|p| {
                format!(
                    "{p} (max_bytes {:?}, keep {})",
                    s.config.audit.max_bytes, s.config.audit.keep
                )
            }),
        }
    }
}

impl ConfigStore {
    pub fn new(snapshot: Snapshot, path: PathBuf, overrides: Box<dyn Fn(&mut Config) + Send + Sync>) -> Self {
        ConfigStore {
            boot: Fixed::of(&snapshot),
            current: ArcSwap::from_pointee(snapshot),
            path,
            overrides,
            status: Default::default(),
        }
    }

    /// The snapshot a new request should hold until it finishes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn reload_status(&self) -> reload::ReloadStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
