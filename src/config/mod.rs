//! Configuration as text and as data: the file's schema (`schema`),
//! loading it (`load`: YAML, `${VAR}` expansion, unknown keys refused) and
//! comment-preserving edits (`edit`).
//!
//! This module is a leaf: it imports nothing else from the crate. What a
//! config *means* — providers with their adapters, compiled routes, keys and
//! limits — is built from it one layer up, in `runtime` (`Snapshot::build`),
//! which also holds the live snapshot and reloads it. Edits that must be
//! validated "as `serve` would load them" take that check as an argument.

pub mod check;
pub mod edit;
pub mod load;
pub mod schema;

pub use schema::Config;

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
