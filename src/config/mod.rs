//! Configuration: the file's schema, loading it, and the compiled snapshot
//! every request holds for its whole life.
//!
//! The flow is one-way: text → [`schema::Config`] (`load`) → [`Snapshot`]
//! (`snapshot`, which validates cross-references and compiles globs, keys and
//! upstream addresses once). The running gateway keeps the current snapshot
//! in a [`ConfigStore`]; a request takes one `Arc<Snapshot>` at its start.

pub mod load;
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

/// The live configuration: one atomically swappable snapshot plus where it came from.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
}

impl ConfigStore {
    pub fn new(snapshot: Snapshot, path: PathBuf) -> Self {
        ConfigStore {
            current: ArcSwap::from_pointee(snapshot),
            path,
        }
    }

    /// The snapshot a new request should hold until it finishes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn replace(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
