//! Run the real `modelgate` binary for end-to-end tests.
//!
//! [`Gateway::start`] is synchronous (std only): it blocks the calling thread
//! while the gateway boots (typically well under a second, at most ~30 s). From
//! a `#[tokio::test]` that also runs a [`super::mock::MockUpstream`], prefer
//! `#[tokio::test(flavor = "multi_thread")]` or [`Gateway::start_async`] so the
//! mock keeps serving while this blocks.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Upper bound for the readiness poll of [`Gateway::start`].
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_MAX_TRIES: u32 = 200;
/// How long `Drop` waits after SIGINT before killing the process.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times `start` retries when the free port got taken meanwhile.
const PORT_RETRIES: usize = 3;

const STDOUT_LOG: &str = "stdout.log";
const STDERR_LOG: &str = "stderr.log";
const CONFIG_FILE: &str = "modelgate.yaml";

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// Holds `modelgate.yaml`, `stdout.log`, `stderr.log`; also the process's
    /// working directory, so relative paths in the config land here.
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// See [`Gateway::start_with_args`].
    pub fn start(yaml: &str, envs: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_args(yaml, envs, &[])
    }

    /// Write `yaml` to `<tempdir>/modelgate.yaml` (placeholders: `{listen}` →
    /// `127.0.0.1:FREEPORT`, `{port}` → FREEPORT alone (for a listener on
    /// another address, e.g. `0.0.0.0:{port}`), `{dir}` → the temp dir path), spawn
    /// `modelgate serve -c <path> <extra_args…>` with `envs` (proxy variables
    /// removed), cwd = the temp dir, stdout/stderr to files there, then poll
    /// `GET /health` until it answers 200. Panics with the logs if the process
    /// exits early or is not ready within [`READY_TIMEOUT`]. Retries with a new
    /// port (up to 3 times) if the port was taken in between.
    pub fn start_with_args(yaml: &str, envs: &[(&str, &str)], extra_args: &[&str]) -> Gateway {
        Gateway::start_command("serve", yaml, envs, extra_args)
    }

    /// `modelgate proxy -c <path> -p FREEPORT <extra_args…>` (the forward
    /// proxy), started and polled like [`Gateway::start_with_args`]; the
    /// proxy answers `GET /health` itself.
    pub async fn start_proxy_async(yaml: &str, extra_args: &[&str]) -> Gateway {
        let yaml = yaml.to_string();
        let mut args: Vec<String> = vec!["-p".into(), "{port}".into()];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let joined = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Gateway::start_command("proxy", &yaml, &[], &args)
        })
        .await;
        match joined {
            Ok(gw) => gw,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("proxy start task failed: {e}"),
        }
    }

    /// `modelgate <sub> -c <path> <extra_args…>` (`{port}` in an argument →
    /// the listener's port), with the port retries of [`Gateway::start_with_args`].
    fn start_command(sub: &str, yaml: &str, envs: &[(&str, &str)], extra_args: &[&str]) -> Gateway {
        let mut last = String::new();
        for attempt in 1..=PORT_RETRIES {
            match Gateway::try_start_on(free_port(), sub, yaml, envs, extra_args) {
                Ok(gw) => return gw,
                Err(StartError::PortInUse(logs)) if attempt < PORT_RETRIES => last = logs,
                Err(StartError::PortInUse(logs)) | Err(StartError::Failed(logs)) => {
                    panic!("gateway failed to start:\n{logs}")
                }
            }
        }
        panic!("gateway failed to start (port in use {PORT_RETRIES} times):\n{last}")
    }

    /// [`Gateway::start`] on tokio's blocking pool, for use inside async tests
    /// on a current-thread runtime.
    pub async fn start_async(yaml: &str, envs: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_args_async(yaml, envs, &[]).await
    }

    /// [`Gateway::start_with_args`] on tokio's blocking pool.
    pub async fn start_with_args_async(yaml: &str, envs: &[(&str, &str)], extra_args: &[&str]) -> Gateway {
        let yaml = yaml.to_string();
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let joined = tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Gateway::start_with_args(&yaml, &envs, &args)
        })
        .await;
        match joined {
            Ok(gw) => gw,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("gateway start task failed: {e}"),
        }
    }

    /// Like [`Gateway::start`], but on the given port (a replica restarted
    /// in place behind a load balancer): `{listen}` → `127.0.0.1:PORT`,
    /// `{port}` → PORT. Retries a few times, 200 ms apart, while the port is
    /// still taken (the previous process on it may be exiting).
    pub fn start_on(port: u16, yaml: &str, envs: &[(&str, &str)]) -> Gateway {
        let mut last = String::new();
        for attempt in 1..=PORT_RETRIES {
            match Gateway::try_start_on(port, "serve", yaml, envs, &[]) {
                Ok(gw) => return gw,
                Err(StartError::PortInUse(logs)) if attempt < PORT_RETRIES => {
                    last = logs;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(StartError::PortInUse(logs)) | Err(StartError::Failed(logs)) => {
                    panic!("gateway failed to start on port {port}:\n{logs}")
                }
            }
        }
        panic!("gateway failed to start (port {port} in use {PORT_RETRIES} times):\n{last}")
    }

    /// [`Gateway::start_on`] on tokio's blocking pool.
    pub async fn start_on_async(port: u16, yaml: &str, envs: &[(&str, &str)]) -> Gateway {
        let yaml = yaml.to_string();
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let joined = tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Gateway::start_on(port, &yaml, &envs)
        })
        .await;
        match joined {
            Ok(gw) => gw,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("gateway start task failed: {e}"),
        }
    }

    fn try_start_on(
        port: u16,
        sub: &str,
        yaml: &str,
        envs: &[(&str, &str)],
        extra_args: &[&str],
    ) -> Result<Gateway, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("modelgate-test-")
            .tempdir()
            .expect("create temp dir");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = yaml
            .replace("{listen}", &addr.to_string())
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join(CONFIG_FILE);
        std::fs::write(&config_path, &config).expect("write modelgate.yaml");
        let stdout = File::create(dir.path().join(STDOUT_LOG)).expect("create stdout.log");
        let stderr = File::create(dir.path().join(STDERR_LOG)).expect("create stderr.log");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelgate"));
        cmd.arg(sub)
            .arg("-c")
            .arg(&config_path)
            .args(extra_args.iter().map(|a| a.replace("{port}", &port.to_string())))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(envs.iter().copied());
        let child = cmd.spawn().expect("spawn modelgate binary");
        // A loopback `admin_listen` is waited for too: it starts beside the
        // main listener, not before it.
        let admin = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("admin_listen:"))
            .map(|v| v.trim().trim_matches('"'))
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .filter(|a| a.ip().is_loopback());
        let mut gw = Gateway { child, addr, dir };

        match gw
            .wait_ready()
            .and_then(|()| admin.map_or(Ok(()), |a| gw.wait_ready_on(a)))
        {
            Ok(()) => Ok(gw),
            Err(why) => {
                // Stop it (if still running) so the logs are complete.
                let _ = gw.child.kill();
                let _ = gw.wait_exit(STOP_TIMEOUT);
                let logs = gw.logs();
                let msg = format!("{why}\n{logs}");
                let in_use = logs.contains("in use") || logs.contains("AddrInUse");
                // `gw` drops here: the process is already gone, the dir is removed.
                if in_use {
                    Err(StartError::PortInUse(msg))
                } else {
                    Err(StartError::Failed(msg))
                }
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        self.wait_ready_on(self.addr)
    }

    /// Poll `GET /health` on `addr` (the main or the admin listener) until 200.
    fn wait_ready_on(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = None;
        for attempt in 0..READY_MAX_TRIES {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("modelgate exited before becoming ready: {status}"));
            }
            // The answer must be a modelgate's: a port taken in between by
            // another test's mock upstream also answers 200.
            let got = http_get(addr, "/health");
            last = got.as_ref().map(|(status, _)| *status);
            if got.is_some_and(|(status, body)| status == 200 && body.contains("\"status\":\"ok\"")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            // Poll quickly at first, then every 150 ms (200 tries >= 29 s).
            let pause = Duration::from_millis((10 * (u64::from(attempt) + 1)).min(150));
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        }
        Err(format!(
            "modelgate not ready on {addr} within {READY_TIMEOUT:?} (last /health status: {last:?})"
        ))
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Path of the written config (rewrite it to test reloads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// stdout followed by stderr, so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            std::fs::read(self.dir.path().join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("<cannot read {name}: {e}>"))
        };
        format!(
            "----- modelgate stdout -----\n{}\n----- modelgate stderr -----\n{}",
            read(STDOUT_LOG),
            read(STDERR_LOG)
        )
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send a signal by name (`"INT"`, `"TERM"`, `"HUP"`, `"QUIT"`, ...) with
    /// `kill(1)`. Returns true if `kill` reported success.
    pub fn signal(&self, sig: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Wait (polling, bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / 20 + 2;
        for _ in 0..max_polls {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(_) => return None,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
        self.child.try_wait().ok().flatten()
    }

    /// SIGINT, wait up to 10 s, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if self.signal("INT") {
            if let Some(status) = self.wait_exit(STOP_TIMEOUT) {
                return Some(status);
            }
        }
        let _ = self.child.kill();
        self.wait_exit(STOP_TIMEOUT)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

enum StartError {
    PortInUse(String),
    Failed(String),
}

/// Bind 127.0.0.1:0 and return the port (released again before returning).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// One blocking `GET path` over a fresh connection (`Connection: close`);
/// returns the status code, or None on any connection/parse error. Bounded by
/// 1 s connect and 2 s read/write timeouts.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// One blocking `GET path` over a fresh connection (`Connection: close`),
/// the whole answer read (at most 64 KiB): status and body, or None on any
/// connection/parse error. Bounded by 1 s connect and 2 s read/write
/// timeouts.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: modelgate-tests\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut parts = head.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    Some((parts.next()?.parse().ok()?, body.to_string()))
}

/// Contents of `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name);
    match std::fs::read(&path) {
        Ok(b) => Bytes::from(b),
        Err(e) => panic!("cannot read fixture {}: {e}", path.display()),
    }
}

/// A reqwest client for tests: no proxy, 30 s timeout, no automatic decompression.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .build()
        .expect("build reqwest client")
}
