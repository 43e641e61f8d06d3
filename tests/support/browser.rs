//! Headless Chromium (Debian's `chromium`, installed by `scripts/test`)
//! driven by the pinned playwright-core in `tests/clients`: a test hands a
//! driver script its settings as JSON and gets back, as JSON, what the
//! script saw.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The browser, or `None` with a note when Chromium or playwright-core is
/// missing (a panic under `MODELGATE_REQUIRE_CHROMIUM=1`, as `scripts/test`
/// sets).
pub fn chromium() -> Option<PathBuf> {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let driver = clients.join("node_modules/playwright-core/package.json").exists();
    if let (Some(bin), true) = (&bin, driver) {
        return Some(bin.clone());
    }
    assert!(
        std::env::var("MODELGATE_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
        "MODELGATE_REQUIRE_CHROMIUM=1 but Chromium ({bin:?}) or playwright-core (tests/clients) is missing: run scripts/test"
    );
    eprintln!("skipping: Chromium or playwright-core is not installed (scripts/test installs both)");
    None
}

/// Run `tests/clients/{script}` with `settings` under Node.js; its last
/// line of output, as JSON. At most `limit`: then the script (and with it
/// the browser) is killed. Blocking: call from `spawn_blocking`.
pub fn drive(script: &str, settings: &serde_json::Value, limit: Duration) -> serde_json::Value {
    use std::io::Read;
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let mut child = std::process::Command::new("node")
        .arg(clients.join(script))
        .arg(settings.to_string())
        .current_dir(&clients)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (scripts/test installs Node.js)");
    let mut pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipes.0.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipes.1.read_to_string(&mut s);
            s
        }),
    );
    let until = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the driver") {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} did not finish within {limit:?}: {}",
                readers.1.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = readers.0.join().unwrap_or_default();
    let stderr = readers.1.join().unwrap_or_default();
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} ({status}) printed no JSON ({e}):\n{stdout}\n{stderr}"))
}
