//! The pinned Claude Code CLI (`tests/clients`, installed by `scripts/test`).

use std::path::{Path, PathBuf};

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
