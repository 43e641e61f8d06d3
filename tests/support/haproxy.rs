//! A throwaway HAProxy (Debian's `haproxy`) in front of a fleet of
//! gateways, for the load-balancer tests: one frontend on a free loopback
//! port, one backend with a server per gateway, health checks on `GET
//! /health`, and a stats page for the tests to read the servers' states
//! and counters. Runs in the foreground (`-db`), killed on drop.
//! `scripts/test` installs the package when it is missing; elsewhere a test
//! without it is skipped with a note unless `MODELGATE_REQUIRE_HAPROXY=1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG_FILE: &str = "haproxy.cfg";
const STDOUT_LOG: &str = "stdout.log";
const STDERR_LOG: &str = "stderr.log";
/// Name of the backend in the generated config (and in the stats CSV).
pub const BACKEND: &str = "gateways";

pub struct Haproxy {
    child: Child,
    /// The frontend clients talk to.
    pub port: u16,
    /// The stats page (`/stats;csv`).
    pub stats_port: u16,
    /// The backend servers' names (`g0`, `g1`, …), in the order given.
    pub servers: Vec<String>,
    dir: tempfile::TempDir,
}

/// One backend server as the stats page shows it.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, `UP 1/2` (going down), `DOWN 1/2` (going up), `no check`.
    pub status: String,
    /// Sessions (requests, in HTTP mode) sent to it so far.
    pub sessions: u64,
    /// Requests retried on it, and moved from it to another server.
    pub retries: u64,
    pub redispatches: u64,
    /// Connection errors, response errors.
    pub conn_errors: u64,
    pub resp_errors: u64,
}

/// The `haproxy` binary: on `PATH`, or Debian's `/usr/sbin/haproxy` (not
/// on a non-root user's `PATH`).
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// Whether `haproxy` can run here. When it cannot, prints a note and returns
/// false, or panics if `MODELGATE_REQUIRE_HAPROXY=1`.
pub fn available() -> bool {
    let found = binary().is_some_and(|bin| {
        Command::new(bin)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        assert!(
            std::env::var("MODELGATE_REQUIRE_HAPROXY").as_deref() != Ok("1"),
            "haproxy is required (MODELGATE_REQUIRE_HAPROXY=1) but not installed"
        );
        eprintln!("skipping: haproxy is not installed (scripts/test installs it)");
    }
    found
}

/// The generated configuration: `servers` are (name, port) on 127.0.0.1.
pub fn config(port: u16, stats_port: u16, servers: &[(String, u16)]) -> String {
    let mut cfg = format!(
        "\
global
    maxconn 4000
    nbthread 1
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    # Every wait bounded: a test never hangs on the load balancer.
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 5s
    timeout queue 5s
    timeout check 1s

frontend api
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    # A replica that stops (SIGTERM) answers /health with 503 while it drains,
    # then stops accepting: one failed check (every 200 ms) takes it out of
    # rotation, one good check brings a restarted one back.
    option httpchk GET /health
    http-check expect status 200
    default-server check inter 200ms fastinter 100ms downinter 200ms fall 1 rise 1
    # What a real deployment does for a rolling restart: a request that met a
    # replica in the middle of shutting down (Pingora closes its listener
    # first: connection refused, or closed before any answer) is sent again,
    # to another replica. A request the gateway never read has no answer and
    # no ledger row, so that retry is safe. Not `503`: the gateway relays an
    # upstream's own 503 (after its own failover) as it came, and retrying
    # it here would call the upstream, and record the request, twice.
    retries 3
    retry-on conn-failure empty-response
    option redispatch 1
    # Which replica answered, for the tests (%s: the server's name).
    http-response set-header x-served-by %s
"
    );
    for (name, server_port) in servers {
        cfg.push_str(&format!("    server {name} 127.0.0.1:{server_port}\n"));
    }
    cfg.push_str(&format!(
        "
frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
    stats refresh 0
"
    ));
    cfg
}

impl Haproxy {
    /// `None` when `haproxy` is not installed (and not required): see
    /// [`available`]. Starts HAProxy with one server per port of
    /// `server_ports` (named `g0`, `g1`, …) and waits (bounded) until its
    /// stats page answers. Does not wait for the servers to be up: see
    /// [`Haproxy::wait_status`].
    pub fn start(server_ports: &[u16]) -> Option<Haproxy> {
        if !available() {
            return None;
        }
        let bin = binary()?;
        let servers: Vec<(String, u16)> = server_ports
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("g{i}"), *p))
            .collect();
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("modelgate-haproxy-")
                .tempdir()
                .expect("temp dir");
            let port = super::free_port();
            let stats_port = super::free_port();
            let cfg_path = dir.path().join(CONFIG_FILE);
            std::fs::write(&cfg_path, config(port, stats_port, &servers)).expect("write haproxy.cfg");
            let check = Command::new(&bin)
                .arg("-c")
                .arg("-f")
                .arg(&cfg_path)
                .output()
                .expect("run haproxy -c");
            assert!(
                check.status.success(),
                "haproxy rejects the generated config:\n{}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            let stdout = std::fs::File::create(dir.path().join(STDOUT_LOG)).unwrap();
            let stderr = std::fs::File::create(dir.path().join(STDERR_LOG)).unwrap();
            let child = Command::new(&bin)
                .arg("-db")
                .arg("-f")
                .arg(&cfg_path)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .expect("spawn haproxy");
            let mut lb = Haproxy {
                child,
                port,
                stats_port,
                servers: servers.iter().map(|(n, _)| n.clone()).collect(),
                dir,
            };
            if lb.wait_ready() {
                return Some(lb);
            }
            let _ = lb.child.kill();
            let _ = lb.child.wait();
            last = lb.logs();
        }
        panic!("haproxy did not start:\n{last}");
    }

    /// `http://127.0.0.1:PORT{path}` on the frontend.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        for attempt in 0u64..400 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.stats().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis((5 * (attempt + 1)).min(50)));
        }
        false
    }

    /// The backend servers from the stats page, or `None` if it does not answer.
    pub fn stats(&self) -> Option<Vec<ServerStats>> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.stats_port).into();
        let body = http_get_body(addr, "/stats;csv")?;
        let mut lines = body.lines();
        let header = lines.next()?.trim_start_matches("# ");
        let cols: Vec<&str> = header.split(',').collect();
        let col = |name: &str| cols.iter().position(|c| *c == name);
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        let num = |f: &[&str], name: &str| {
            col(name)
                .and_then(|i| f.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.get(px) == Some(&BACKEND) && f.get(sv).is_some_and(|s| *s != "BACKEND"))
                .map(|f| ServerStats {
                    name: f[sv].to_string(),
                    status: f.get(status).unwrap_or(&"").to_string(),
                    sessions: num(&f, "stot"),
                    retries: num(&f, "wretr"),
                    redispatches: num(&f, "wredis"),
                    conn_errors: num(&f, "econ"),
                    resp_errors: num(&f, "eresp"),
                })
                .collect(),
        )
    }

    /// The status of server `name` (`UP`, `DOWN`, …), if the page answers.
    pub fn status(&self, name: &str) -> Option<String> {
        self.stats()?.into_iter().find(|s| s.name == name).map(|s| s.status)
    }

    /// Poll (every 20 ms, bounded by `within`) until server `name`'s status
    /// is exactly `want`; true if it was.
    pub fn wait_status(&self, name: &str, want: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let polls = within.as_millis() / 20 + 2;
        for _ in 0..polls {
            if self.status(name).as_deref() == Some(want) {
                return true;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.status(name).as_deref() == Some(want)
    }

    /// [`Haproxy::wait_status`] `UP` for every server.
    pub fn wait_all_up(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        self.servers.iter().all(|name| {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_status(name, "UP", left.max(Duration::from_millis(1)))
        })
    }

    /// stdout (the request log) followed by stderr (alerts, state changes).
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            std::fs::read(self.dir.path().join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("<cannot read {name}: {e}>"))
        };
        format!(
            "----- haproxy stdout -----\n{}\n----- haproxy stderr -----\n{}",
            read(STDOUT_LOG),
            read(STDERR_LOG)
        )
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs();
            // The request log can be long: its end is what matters.
            let start = logs.len().saturating_sub(20_000);
            let start = (start..logs.len()).find(|i| logs.is_char_boundary(*i)).unwrap_or(0);
            eprintln!("{}", &logs[start..]);
        }
    }
}

/// One blocking `GET path` (`Connection: close`): the body of a 200, else
/// `None`. Bounded by 1 s connect and 2 s read/write timeouts, 4 MiB.
fn http_get_body(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.take(4 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some(dechunk(body));
    }
    Some(body.to_string())
}

/// Decode a chunked body (best effort: stops at the first malformed size).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
