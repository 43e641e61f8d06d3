//! `modelgate upgrade`: replace the running gateway with a new process, with
//! zero downtime, through Pingora's socket hand-over.
//!
//! The order is fixed by Pingora: a process started with `serve -u` binds
//! `upgrade_sock` and waits there (about 6 s) for the listening sockets,
//! which the old process sends only once it gets SIGQUIT. So: check the
//! config, find the running process, start the new one, wait until it listens
//! on `upgrade_sock`, SIGQUIT the old one, then wait until the new process
//! serves (`pid_file` names it, `upgrade_sock` was consumed, `/health` answers
//! 200 — the old process answers 503 while it drains — and `/status` names
//! its pid when `/status` is readable). Every wait is a bounded poll.
//!
//! The upgrade socket is never connected to here: the new process accepts
//! exactly one connection on it, and that one must be the old process's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::runtime::Snapshot;

#[derive(clap::Args, Debug)]
pub struct UpgradeArgs {
    /// The binary to start. Default: this modelgate binary (the one just installed).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// The running gateway's process id. Default: the one in `pid_file`, else the one `/status` reports.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Upper bound for the hand-over, from now until the new process serves (e.g. 60s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the new gateway as this command's child instead of daemonizing it:
    /// the command stays in the foreground, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT
    /// to it and exits with its status.
    #[arg(long)]
    foreground: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Exit codes.
const REFUSED: i32 = 1;
const FAILED: i32 = 2;

/// After SIGQUIT, Pingora keeps accepting for 5 s (`CLOSE_TIMEOUT`) before it
/// starts the grace period; after the grace period the runtimes get up to
/// 5 s (`server.rs`'s shutdown timeout). Used to bound the wait for the old
/// process to exit.
const HANDOVER_WINDOW: Duration = Duration::from_secs(5);
const SHUTDOWN_WINDOW: Duration = Duration::from_secs(5);
/// How long the launching process of `serve -d` gets to return once the
/// daemon serves.
const LAUNCHER_GRACE: Duration = Duration::from_secs(2);

/// Step log on stderr, one write per line: the new process logs to the same
/// stderr, and its lines must not split ours.
macro_rules! step {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("upgrade: {}\n", format!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

pub fn run(config: Option<PathBuf>, args: UpgradeArgs) -> i32 {
    match upgrade(config, args) {
        Ok(code) => code,
        Err(Stop { code, message }) => {
            use std::io::Write as _;
            let _ = std::io::stderr().write_all(format!("modelgate upgrade: {message}\n").as_bytes());
            code
        }
    }
}

/// Why the command ends early: the exit code and what to tell the operator.
struct Stop {
    code: i32,
    message: String,
}

fn refuse(message: impl Into<String>) -> Stop {
    Stop {
        code: REFUSED,
        message: message.into(),
    }
}

fn fail(message: impl Into<String>) -> Stop {
    Stop {
        code: FAILED,
        message: message.into(),
    }
}

fn upgrade(config: Option<PathBuf>, args: UpgradeArgs) -> Result<i32, Stop> {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let path = super::config_path(config);
    // The daemon changes its working directory to `/`: it gets an absolute path.
    let path = std::path::absolute(&path).unwrap_or(path);

    // 1. The config the new process will run, loaded exactly as `serve` loads it.
    let snap = super::load_snapshot(&path, |_| {}).map_err(|e| {
        refuse(format!(
            "{}: {e}\nrefused: the config is invalid; the running gateway is untouched",
            path.display()
        ))
    })?;
    for w in &snap.warnings {
        step!("config warning: {w}");
    }
    step!("config {} is valid (version {})", path.display(), snap.version);
    let conf = crate::server::server_conf(&snap, !args.foreground);
    let pid_file = PathBuf::from(&conf.pid_file);
    let sock = PathBuf::from(&conf.upgrade_sock);
    let probe = Probe::new(&snap);

    // 2. The binary to start, and its opinion of the config when it is not this one.
    let binary = new_binary(&args, &path, deadline)?;

    // 3. The running gateway.
    let old = find_running(&args, &snap, &pid_file, &probe)?;
    step!("running gateway: pid {} ({})", old.pid, old.source);
    preflight(&old, &snap, &probe)?;
    if !args.foreground {
        warn_relative_paths(&snap);
    }

    // 4. A fresh upgrade socket: a stale one would look like a ready new process.
    let stale = prepare_socket(&sock)?;

    // 5. The new process. Its stdout goes to this command's stderr, so that a
    // daemon never holds this command's stdout open (`x=$(modelgate upgrade)`).
    let mut cmd = Command::new(&binary);
    cmd.arg("serve").arg("-u");
    if !args.foreground {
        cmd.arg("-d");
    }
    cmd.arg("-c").arg(&path).stdin(Stdio::null()).stdout(stderr_dup());
    step!(
        "starting {} serve -u{} -c {}",
        binary.display(),
        if args.foreground { "" } else { " -d" },
        path.display()
    );
    let mut child = cmd.spawn().map_err(|e| {
        fail(format!(
            "cannot start {}: {e}; pid {} keeps serving",
            binary.display(),
            old.pid
        ))
    })?;
    let mut launcher = Launcher::new(child.id());

    // 6. Wait until the new process listens on upgrade_sock.
    let fresh = match wait_for_socket(&sock, stale, &mut child, &mut launcher, old.pid, deadline) {
        Ok(id) => id,
        Err(why) => {
            stop_child(&mut child);
            return Err(fail(format!(
                "{why}\nfailed: nothing was handed over; pid {} keeps serving",
                old.pid
            )));
        }
    };
    step!("the new process waits on {} for the sockets", sock.display());

    // 7. The hand-over.
    if let Err(e) = sys::signal(old.pid, sys::SIGQUIT) {
        stop_child(&mut child);
        return Err(fail(format!(
            "cannot send SIGQUIT to pid {}: {e}\nfailed: nothing was handed over; pid {} keeps serving",
            old.pid, old.pid
        )));
    }
    let quit_at = Instant::now();
    step!(
        "SIGQUIT sent to pid {}: it hands its listening sockets over, then drains for up to grace_period ({})",
        old.pid,
        humantime::format_duration(snap.config.grace_period.0)
    );

    // 8. Wait until the new process serves.
    let new_pid = match wait_for_new(
        &args,
        &pid_file,
        &sock,
        fresh,
        &mut child,
        &mut launcher,
        old.pid,
        &probe,
        deadline,
    ) {
        Ok(pid) => pid,
        Err(why) => {
            // A launcher is only a launcher (the daemon does not need it); a
            // foreground child that has the sockets may be all that serves.
            let has_sockets = sock_id(&sock) != Some(fresh);
            if args.foreground && has_sockets && launcher.running(&mut child) {
                step!("pid {} has the listening sockets: left running", child.id());
            } else if launcher.running(&mut child) {
                stop_child(&mut child);
            }
            return Err(fail(format!(
                "{why}\nfailed: pid {} got SIGQUIT: it has handed its sockets over (or tried to), stops accepting \
                 5 s after SIGQUIT and drains for up to grace_period. The new process's log is above. If no \
                 gateway answers on {}, start one (`modelgate serve -c {}`, or through the service manager)",
                old.pid,
                snap.listen,
                path.display()
            )));
        }
    };
    step!(
        "pid {new_pid} took the sockets over and answers on {} ({:.1}s)",
        probe.main,
        started.elapsed().as_secs_f64()
    );
    out!("upgraded: {} → {new_pid}", old.pid);

    // 9. Tidy up, then the old process's drain.
    let drained_by = quit_at + HANDOVER_WINDOW + snap.config.grace_period.0 + SHUTDOWN_WINDOW + Duration::from_secs(2);
    if args.foreground {
        write_pid_file(&pid_file, new_pid);
        return Ok(supervise(child, old.pid, drained_by, deadline));
    }
    launcher.finish(&mut child);
    wait_drained(old.pid, drained_by, deadline);
    Ok(0)
}

/// Where the running gateway is reached: the main listener for `/health`,
/// the admin listener (else the main one) for `/status`.
struct Probe {
    main: SocketAddr,
    admin: SocketAddr,
    key: Option<String>,
}

impl Probe {
    fn new(snap: &Snapshot) -> Probe {
        Probe {
            main: loopback(snap.listen),
            admin: loopback(snap.admin_listen.unwrap_or(snap.listen)),
            key: std::env::var("MODELGATE_ADMIN_KEY").ok().filter(|k| !k.is_empty()),
        }
    }

    fn health(&self) -> Result<u16, String> {
        http_get(self.main, "/health", None).map(|(status, _)| status)
    }

    /// `/status`: `Ok(Some(json))`, `Ok(None)` when it needs a key we lack.
    fn status(&self) -> Result<Option<Value>, String> {
        let (code, body) = http_get(self.admin, "/status", self.key.as_deref())?;
        match code {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("/status: {e}")),
            401 | 403 => Ok(None),
            other => Err(format!("/status answered {other}")),
        }
    }
}

/// A listener on all interfaces is probed on loopback.
/// One `GET` to a gateway on `addr` (the admin API client): status and body.
fn http_get(addr: SocketAddr, path: &str, key: Option<&str>) -> Result<(u16, Vec<u8>), String> {
    super::health::admin_call(&format!("http://{addr}"), key, "GET", path)
}

fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// `--binary`, else this executable. A different binary validates the config itself.
fn new_binary(args: &UpgradeArgs, config: &Path, deadline: Instant) -> Result<PathBuf, Stop> {
    let current = std::env::current_exe().map_err(|e| refuse(format!("cannot tell which binary this is: {e}")))?;
    let binary = args.binary.clone().unwrap_or_else(|| current.clone());
    let meta = std::fs::metadata(&binary).map_err(|e| refuse(format!("{}: {e}", binary.display())))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(refuse(format!("{} is not an executable file", binary.display())));
    }
    let same = match (std::fs::canonicalize(&binary), std::fs::canonicalize(&current)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        let out = run_bounded(
            Command::new(&binary)
                .arg("config")
                .arg("validate")
                .arg("-c")
                .arg(config),
            deadline.min(Instant::now() + Duration::from_secs(30)),
        )
        .map_err(|e| refuse(format!("{} config validate: {e}", binary.display())))?;
        if !out.0.success() {
            return Err(refuse(format!(
                "{} refuses the config ({}):\n{}\nrefused: the running gateway is untouched",
                binary.display(),
                out.0,
                out.1.trim_end()
            )));
        }
        step!("{} accepts the config", binary.display());
    }
    Ok(binary)
}

/// Run a short command to completion within `until`; its status and output.
fn run_bounded(cmd: &mut Command, until: Instant) -> Result<(ExitStatus, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
    .collect();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= until {
            stop_child(&mut child);
            return Err("did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = readers.into_iter().filter_map(|r| r.join().ok()).collect::<String>();
    Ok((status, text))
}

struct Running {
    pid: u32,
    source: String,
}

/// `--pid`, else `pid_file`, else the pid `/status` reports.
fn find_running(args: &UpgradeArgs, snap: &Snapshot, pid_file: &Path, probe: &Probe) -> Result<Running, Stop> {
    if let Some(pid) = args.pid {
        check_gateway_pid(pid).map_err(|why| refuse(format!("--pid {pid}: {why}")))?;
        return Ok(Running {
            pid,
            source: "--pid".into(),
        });
    }
    let mut notes = Vec::new();
    match std::fs::read_to_string(pid_file) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(pid) => match check_gateway_pid(pid) {
                Ok(()) => {
                    return Ok(Running {
                        pid,
                        source: format!("pid_file {}", pid_file.display()),
                    })
                }
                Err(PidProblem::NotPermitted(why)) => return Err(refuse(format!("{}: {why}", pid_file.display()))),
                Err(why) => notes.push(format!("{} names pid {pid}, but {why}", pid_file.display())),
            },
            Err(_) => notes.push(format!("{} holds no pid", pid_file.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => notes.push(format!(
            "there is no {} (`serve` writes it with -d)",
            pid_file.display()
        )),
        Err(e) => notes.push(format!("cannot read {}: {e}", pid_file.display())),
    }
    // A gateway started in the foreground writes no pid file: ask it.
    match probe.status() {
        Ok(Some(status)) => {
            if let Some(pid) = status["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                match check_gateway_pid(pid) {
                    Ok(()) => {
                        return Ok(Running {
                            pid,
                            source: format!("/status on {}", probe.admin),
                        })
                    }
                    Err(why) => notes.push(format!("/status on {} reports pid {pid}, but {why}", probe.admin)),
                }
            }
        }
        Ok(None) => notes.push(format!(
            "/status on {} needs an admin key (set MODELGATE_ADMIN_KEY, or pass --pid)",
            probe.admin
        )),
        Err(_) => {}
    }
    let listening = probe.health().is_ok();
    let notes = notes.join("; ");
    if listening {
        Err(refuse(format!(
            "a gateway answers on {}, but its process is unknown: {notes}. Pass --pid PID",
            snap.listen
        )))
    } else {
        Err(refuse(format!(
            "no gateway running on {}: {notes}; start it with `modelgate serve`",
            snap.listen
        )))
    }
}

enum PidProblem {
    Gone,
    NotPermitted(String),
    NotGateway(String),
    Invalid,
}

impl std::fmt::Display for PidProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidProblem::Gone => f.write_str("that process is not running"),
            PidProblem::NotPermitted(s) | PidProblem::NotGateway(s) => f.write_str(s),
            PidProblem::Invalid => f.write_str("that is not a process this command may signal"),
        }
    }
}

/// Alive, ours to signal, and a modelgate (where `/proc` can tell).
fn check_gateway_pid(pid: u32) -> Result<(), PidProblem> {
    if pid <= 1 || pid == std::process::id() {
        return Err(PidProblem::Invalid);
    }
    match sys::liveness(pid) {
        sys::Liveness::Gone => return Err(PidProblem::Gone),
        sys::Liveness::NotPermitted => {
            return Err(PidProblem::NotPermitted(format!(
                "pid {pid} belongs to another user: run `modelgate upgrade` as that user (or root)"
            )))
        }
        sys::Liveness::Alive => {}
    }
    sys::looks_like_gateway(pid).map_err(PidProblem::NotGateway)
}

/// Before anything is started: the process answers on the configured
/// listener, is the one serving there, is not draining, and can hand over
/// through this config's `upgrade_sock`.
fn preflight(old: &Running, snap: &Snapshot, probe: &Probe) -> Result<(), Stop> {
    // Two processes share the listener for 5 s after an upgrade: ask a few times.
    let mut health = Vec::new();
    for _ in 0..5 {
        let h = probe.health();
        let ok = h == Ok(200);
        health.push(h);
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !health.contains(&Ok(200)) {
        return Err(match health.last() {
            Some(Ok(503)) => refuse(format!(
                "the gateway on {} is draining (it is stopping or handing over): let it finish, then start a new \
                 one with `modelgate serve`",
                snap.listen
            )),
            Some(Ok(code)) => refuse(format!("/health on {} answered {code}", probe.main)),
            _ => refuse(format!(
                "pid {} is running, but nothing answers on {} ({}): is it serving another config?",
                old.pid,
                snap.listen,
                health.last().and_then(|h| h.clone().err()).unwrap_or_default()
            )),
        });
    }
    let mut pids = Vec::new();
    for _ in 0..3 {
        match probe.status() {
            Ok(Some(status)) => {
                let restart: Vec<&str> = status["config"]["reloads"]["restart_required"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if restart.contains(&"upgrade_sock") {
                    return Err(refuse(format!(
                        "upgrade_sock was changed in the file after pid {} started, and it would send its sockets \
                         to its old path: set upgrade_sock back, upgrade, then change it",
                        old.pid
                    )));
                }
                let pid = status["pid"].as_u64().unwrap_or(0);
                if pid == u64::from(old.pid) {
                    return Ok(());
                }
                pids.push(pid);
            }
            // Without the admin key, pid and /health are all there is to go on.
            Ok(None) => {
                step!(
                    "/status on {} needs an admin key (MODELGATE_ADMIN_KEY): not checked",
                    probe.admin
                );
                return Ok(());
            }
            Err(e) => {
                step!("/status on {}: {e}: not checked", probe.admin);
                return Ok(());
            }
        }
    }
    Err(refuse(format!(
        "{} names pid {}, but the gateway on {} reports pid {}: pass --pid with the one to replace",
        old.source,
        old.pid,
        probe.admin,
        pids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    )))
}

/// `serve -d` runs in `/` (Pingora's daemonize): a relative path there is not
/// the one a process started in another directory used.
fn warn_relative_paths(snap: &Snapshot) {
    let mut paths = vec![("state.path", snap.config.state.path.as_str())];
    if let Some(p) = snap.config.audit.path.as_deref() {
        if p != "-" {
            paths.push(("audit.path", p));
        }
    }
    for (key, p) in paths {
        if Path::new(p).is_relative() {
            step!("warning: {key} `{p}` is relative: the daemon resolves it against `/`; use an absolute path");
        }
    }
}

/// Identity of the socket file at a path: device, inode, change time.
type SockId = (u64, u64, i64, i64);

fn sock_id(path: &Path) -> Option<SockId> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type()
        .is_socket()
        .then(|| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Remove a stale socket; refuse a path that is something else. Returns the
/// identity of a stale socket that could not be removed.
fn prepare_socket(sock: &Path) -> Result<Option<SockId>, Stop> {
    let dir = sock
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(refuse(format!(
            "the directory of upgrade_sock {} does not exist",
            sock.display()
        )));
    }
    match std::fs::symlink_metadata(sock) {
        Err(_) => Ok(None),
        Ok(m) if !m.file_type().is_socket() => Err(refuse(format!(
            "upgrade_sock {} exists and is not a socket",
            sock.display()
        ))),
        Ok(_) => match std::fs::remove_file(sock) {
            Ok(()) => Ok(None),
            Err(_) => Ok(sock_id(sock)),
        },
    }
}

/// The process this command spawned, in daemon mode: `serve -d` forks the
/// daemon and the launcher itself should return once the daemon serves.
struct Launcher {
    pid: u32,
    status: Option<ExitStatus>,
}

impl Launcher {
    fn new(pid: u32) -> Launcher {
        Launcher { pid, status: None }
    }

    fn poll(&mut self, child: &mut Child) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = child.try_wait().ok().flatten();
        }
        self.status
    }

    fn running(&mut self, child: &mut Child) -> bool {
        self.poll(child).is_none()
    }

    /// After a successful hand-over: give the launcher a moment to return,
    /// then stop it. It may still wait for a readiness signal that Pingora
    /// sends only when bootstrap runs after daemonizing; the daemon does not
    /// depend on it.
    fn finish(&mut self, child: &mut Child) {
        let until = Instant::now() + LAUNCHER_GRACE;
        while self.running(child) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.poll(child) {
            Some(status) if status.success() => {}
            Some(status) => step!("note: the launching process (pid {}) ended with {status}", self.pid),
            None => {
                step!(
                    "the launching process (pid {}) had not returned (it waits for a readiness signal the daemon \
                     does not send): stopped it; the daemon is unaffected",
                    self.pid
                );
                stop_child(child);
            }
        }
    }
}

fn stop_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_for_socket(
    sock: &Path,
    stale: Option<SockId>,
    child: &mut Child,
    launcher: &mut Launcher,
    old: u32,
    deadline: Instant,
) -> Result<SockId, String> {
    loop {
        if let Some(id) = sock_id(sock).filter(|id| Some(*id) != stale) {
            return Ok(id);
        }
        // A launcher that returned 0 has handed the wait to its daemon.
        if let Some(status) = launcher.poll(child).filter(|s| !s.success()) {
            return Err(format!(
                "the new process exited ({status}) before it opened {}; its log is above",
                sock.display()
            ));
        }
        if !matches!(sys::liveness(old), sys::Liveness::Alive) {
            return Err(format!("pid {old} exited meanwhile"));
        }
        if Instant::now() >= deadline {
            return Err(format!("the new process did not open {} in time", sock.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[allow(clippy::too_many_arguments)]
fn wait_for_new(
    args: &UpgradeArgs,
    pid_file: &Path,
    sock: &Path,
    fresh: SockId,
    child: &mut Child,
    launcher: &mut Launcher,
    old: u32,
    probe: &Probe,
    deadline: Instant,
) -> Result<u32, String> {
    loop {
        if let Some(status) = launcher.poll(child) {
            if args.foreground || !status.success() {
                return Err(format!("the new process exited ({status}); its log is above"));
            }
        }
        let new = if args.foreground {
            Some(child.id())
        } else {
            std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .filter(|&p| p != old && matches!(sys::liveness(p), sys::Liveness::Alive))
        };
        // The new process removes upgrade_sock once it has the sockets.
        let consumed = sock_id(sock) != Some(fresh);
        let last = match (new, consumed) {
            (None, _) => format!("{} does not name a new live process yet", pid_file.display()),
            (Some(pid), false) => format!("pid {pid} has not received the sockets yet"),
            (Some(pid), true) => match probe.health() {
                // The old process answers 503 while it drains.
                Ok(200) => match probe.status() {
                    Ok(Some(status)) if status["pid"].as_u64() != Some(u64::from(pid)) => {
                        format!("/status still reports pid {}", status["pid"])
                    }
                    _ => return Ok(pid),
                },
                Ok(code) => format!("/health on {} answered {code}", probe.main),
                Err(e) => format!("/health on {}: {e}", probe.main),
            },
        };
        if Instant::now() >= deadline {
            return Err(format!("the new process did not start serving in time: {last}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for the old process to exit, when it can within the command's
/// deadline; otherwise say it is still draining (which is fine).
fn wait_drained(old: u32, drained_by: Instant, deadline: Instant) {
    if drained_by > deadline {
        step!(
            "pid {old} drains its open requests and streams for grace_period, then exits by itself (within {}s)",
            drained_by.saturating_duration_since(Instant::now()).as_secs()
        );
        return;
    }
    step!("waiting for pid {old} to finish its open requests and exit");
    while Instant::now() < drained_by {
        if !matches!(sys::liveness(old), sys::Liveness::Alive) {
            step!("pid {old} has exited");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    step!("pid {old} is still draining (that is fine: it exits by itself)");
}

/// `serve` without -d writes no pid file: write the new child's pid, so that
/// SIGHUP, logrotate and the next upgrade find it.
fn write_pid_file(pid_file: &Path, pid: u32) {
    let tmp = pid_file.with_extension("pid.upgrade-tmp");
    let written = std::fs::write(&tmp, format!("{pid}\n")).and_then(|()| std::fs::rename(&tmp, pid_file));
    match written {
        Ok(()) => step!("wrote {}", pid_file.display()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            step!("warning: cannot write {}: {e}", pid_file.display());
        }
    }
}

/// `--foreground`: stay with the new gateway, forward the lifecycle signals to
/// it, report the old process's exit, and end with the gateway's status.
fn supervise(child: Child, old: u32, drained_by: Instant, deadline: Instant) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            step!("cannot wait for the new process: {e}; it keeps running");
            return FAILED;
        }
    };
    let pid = child.id();
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut forward = Vec::new();
        for (kind, number, name) in [
            (SignalKind::terminate(), sys::SIGTERM, "SIGTERM"),
            (SignalKind::interrupt(), sys::SIGINT, "SIGINT"),
            (SignalKind::hangup(), sys::SIGHUP, "SIGHUP"),
            (SignalKind::quit(), sys::SIGQUIT, "SIGQUIT"),
        ] {
            match signal(kind) {
                Ok(s) => forward.push((s, number, name)),
                Err(e) => step!("cannot forward {name}: {e}"),
            }
        }
        let mut child = child;
        let mut exited = tokio::task::spawn_blocking(move || child.wait());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut old_pending = true;
        if drained_by > deadline {
            wait_drained(old, drained_by, deadline);
            old_pending = false;
        }
        step!("staying in the foreground with pid {pid}");
        loop {
            let signals = futures_select(&mut forward);
            tokio::select! {
                status = &mut exited => {
                    return match status {
                        Ok(Ok(status)) => {
                            step!("pid {pid} exited ({status})");
                            status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
                        }
                        _ => FAILED,
                    };
                }
                (number, name) = signals => {
                    match sys::signal(pid, number) {
                        Ok(()) => step!("forwarded {name} to pid {pid}"),
                        Err(e) => step!("cannot forward {name} to pid {pid}: {e}"),
                    }
                }
                _ = tick.tick(), if old_pending => {
                    if !matches!(sys::liveness(old), sys::Liveness::Alive) {
                        step!("pid {old} has exited");
                        old_pending = false;
                    } else if Instant::now() >= drained_by {
                        step!("pid {old} is still draining (that is fine: it exits by itself)");
                        old_pending = false;
                    }
                }
            }
        }
    })
}

/// The first of several signal streams to fire: its number and name.
async fn futures_select(forward: &mut [(tokio::signal::unix::Signal, i32, &'static str)]) -> (i32, &'static str) {
    if forward.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for (s, number, name) in forward.iter_mut() {
            if let std::task::Poll::Ready(Some(())) = s.poll_recv(cx) {
                return std::task::Poll::Ready((*number, *name));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// This command's stderr, for the new process's stdout.
fn stderr_dup() -> Stdio {
    use std::os::fd::AsFd;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Process signals and liveness, through `nix`'s safe `kill(2)`.
mod sys {
    use nix::sys::signal::Signal;

    pub const SIGHUP: i32 = Signal::SIGHUP as i32;
    pub const SIGINT: i32 = Signal::SIGINT as i32;
    pub const SIGQUIT: i32 = Signal::SIGQUIT as i32;
    pub const SIGTERM: i32 = Signal::SIGTERM as i32;
    const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;

    /// Send `sig` (0: only check) to one process. Never to a group or to all:
    /// `pid` must be a positive process id.
    pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
        let pid = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a process id"))?;
        let sig = match sig {
            0 => None,
            n => Some(Signal::try_from(n).map_err(std::io::Error::from)?),
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(std::io::Error::from)
    }

    pub enum Liveness {
        Alive,
        Gone,
        NotPermitted,
    }

    /// `kill -0`, with zombies (exited, not yet reaped) counted as gone.
    pub fn liveness(pid: u32) -> Liveness {
        match signal(pid, 0) {
            Ok(()) if zombie(pid) => Liveness::Gone,
            Ok(()) => Liveness::Alive,
            Err(e) if e.raw_os_error() == Some(ESRCH) => Liveness::Gone,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Liveness::NotPermitted,
            Err(_) => Liveness::Gone,
        }
    }

    fn zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(false)
    }

    /// Where `/proc` can tell: the process is a modelgate (its name, or a
    /// `serve`/`gateway` command line, for a renamed binary).
    pub fn looks_like_gateway(pid: u32) -> Result<(), String> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok();
        if comm.is_none() && cmdline.is_none() {
            return Ok(());
        }
        let comm = comm.unwrap_or_default().trim().to_string();
        let argv: Vec<String> = cmdline
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let argv0 = argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        let serving = matches!(argv.get(1).map(String::as_str), Some("serve" | "gateway"));
        if comm.contains("modelgate") || argv0.contains("modelgate") || serving {
            Ok(())
        } else {
            Err(format!(
                "pid {pid} is `{}`, not a modelgate gateway",
                if argv.is_empty() { comm } else { argv.join(" ") }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listeners_are_probed_on_loopback() {
        assert_eq!(
            loopback("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(loopback("[::]:8080".parse().unwrap()), "[::1]:8080".parse().unwrap());
        assert_eq!(loopback("10.0.0.1:80".parse().unwrap()), "10.0.0.1:80".parse().unwrap());
    }

    #[test]
    fn never_signals_a_group() {
        assert!(sys::signal(0, 0).is_err());
        assert!(sys::signal(u32::MAX, 0).is_err());
        assert!(matches!(sys::liveness(std::process::id()), sys::Liveness::Alive));
    }
}
