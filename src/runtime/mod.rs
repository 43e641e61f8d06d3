//! The running configuration: the compiled [`Snapshot`] every request holds
//! for its whole life, and the [`ConfigStore`] that keeps the current one
//! and reloads it.
//!
//! The flow is one-way: text → `config::Config` (`config::load`) →
//! [`Snapshot`] (`snapshot`, which validates cross-references and compiles
//! providers, globs, keys and upstream addresses once). A request takes one
//! `Arc<Snapshot>` at its start; a reload swaps in a new one atomically.
//! This layer sits above `policy`, `upstream` and `usage`, whose pieces a
//! snapshot holds, and below `gateway`, which reads it.

pub mod keyring;
pub mod reload;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
pub use snapshot::{Provider, Snapshot};

/// Validate `config` as `serve` would load it (the process environment,
/// then [`Snapshot::build`]), giving back its warnings: what config edits
/// check before writing (`config::edit::Check`).
pub fn check(config: Config) -> Result<Vec<String>, ConfigError> {
    Snapshot::build(config, &|name| std::env::var(name).ok()).map(|s| s.warnings)
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
    /// Gateway keys and teams created at run time in the store.
    pub store_keys: keyring::KeyRing,
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
    pub log_file: Option<String>,
    pub pool_size: usize,
    /// The state backend and where it lives (`state.*`): counters and the
    /// ledger writer are bound to the process.
    pub state: String,
    /// `audit.path` with its rotation settings.
    pub audit_path: Option<String>,
    /// `telemetry.otlp`: the gateway's own export is started once.
    pub otlp: String,
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
            log_file: s.config.log_file.clone(),
            pool_size: s.config.pool_size,
            state: serde_json::to_string(&s.config.state).unwrap_or_default(),
            otlp: serde_json::to_string(&s.config.telemetry.otlp).unwrap_or_default(),
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
            store_keys: Default::default(),
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

#[cfg(test)]
mod tests {
    //! Config edits checked as `serve` loads a file (`config::edit` with [`check`]).
    use super::*;
    use crate::config::edit;

    const ALICE: &str = "name: alice\nteam: platform\nkey_sha256: \"00ff\"\nrate_limit: {rpm: 10}";

    #[test]
    fn write_validated_refuses_invalid_text_and_keeps_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modelgate.yaml");
        let good = "listen: 127.0.0.1:1\nkeys: []\n";
        std::fs::write(&path, good).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        let bad = "listen: 127.0.0.1:1\nkeys:\n  - name: a\n    key_sha256: zz\n";
        let e = edit::write_validated(&path, bad, &check).unwrap_err().to_string();
        assert!(e.contains("keys[0].key_sha256 (line 3)"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), good);

        let next = "listen: 127.0.0.1:2\nkeys: []\n";
        edit::write_validated(&path, next, &check).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), next);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn edit_file_tells_a_broken_file_from_a_breaking_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modelgate.yaml");
        let good = "listen: 127.0.0.1:1\n";
        std::fs::write(&path, good).unwrap();
        let e = edit::edit_file(&path, &check, |t| Ok(format!("{t}timeout: 0\n"))).unwrap_err();
        assert!(
            matches!(e, edit::EditError::Invalid(ref m) if m.contains("timeout")),
            "{e}"
        );
        let e = edit::edit_file(&path, &check, |_| Err(edit::EditError::Refused("no".into()))).unwrap_err();
        assert_eq!(e.to_string(), "no");
        let edited = edit::edit_file(&path, &check, |t| {
            edit::append_list_item(t, "keys", ALICE.replace("00ff", &"ab".repeat(32)).as_str())
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited.after);
        assert_eq!(edited.before, good);

        // A key_env whose variable is unset here is an error in build: the
        // file does not load as it is, whatever the edit.
        let broken = "listen: 127.0.0.1:1\nkeys:\n  - {name: a, key_env: MODELGATE_EDIT_TEST_UNSET_VAR}\n";
        std::fs::write(&path, broken).unwrap();
        let e = edit::edit_file(&path, &check, |t| {
            edit::append_list_item(t, "keys", "name: b\nkey_sha256: \"00\"")
        })
        .unwrap_err();
        assert!(
            matches!(e, edit::EditError::AlreadyInvalid(ref m) if m.contains("MODELGATE_EDIT_TEST_UNSET_VAR") && m.contains("line 3")),
            "{e}"
        );
        // Removing the broken entry makes it load again: allowed.
        edit::edit_file(&path, &check, |t| edit::remove_list_item(t, "keys", "name", "a")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "listen: 127.0.0.1:1\nkeys: []\n"
        );
    }

    #[test]
    fn edit_file_refuses_when_the_file_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modelgate.yaml");
        std::fs::write(&path, "listen: 127.0.0.1:1\n").unwrap();
        let e = edit::edit_file(&path, &check, |t| {
            std::fs::write(&path, "listen: 127.0.0.1:3\n").unwrap();
            edit::set_top_level_scalar(t, "listen", "127.0.0.1:2")
        })
        .unwrap_err();
        assert!(matches!(e, edit::EditError::Conflict(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "listen: 127.0.0.1:3\n");
    }
}
