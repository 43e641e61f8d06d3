//! The pinned Claude Code CLI (`tests/clients`, installed by `scripts/test`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `claude` binary, or `None` with a note when it is not installed (a
/// panic under `MODELGATE_REQUIRE_CLAUDE=1`, as `scripts/test` sets).
pub fn bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node_modules/.bin/claude");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("MODELGATE_REQUIRE_CLAUDE").as_deref() != Ok("1"),
        "MODELGATE_REQUIRE_CLAUDE=1 but Claude Code is not installed in tests/clients: run scripts/test"
    );
    eprintln!("skipping: Claude Code is not installed (scripts/test installs it into tests/clients)");
    None
}

/// `claude ARGS…` run as a developer would in `home` from `work`, isolated:
/// nothing of the test's environment but `PATH`, no updater and no
/// traffic but the gateway's. Add the gateway's variables as needed.
pub fn command(bin: &Path, home: &Path, work: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    cmd
}
