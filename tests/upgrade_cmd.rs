//! `modelgate upgrade` through the real binary, on loopback: it hands a
//! running gateway's sockets to a new (daemonized, or with `--foreground`
//! attached) process while a stream stays open on the old one, and it
//! refuses — touching nothing — when no gateway runs or the config is
//! invalid. Every process a test starts is killed when the test ends, however
//! it ends (`Reaper`, then `Gateway`'s own drop).
#![cfg(target_os = "linux")]

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use support::*;

/// Upper bound for one `modelgate upgrade` run (its own `--timeout` is 60 s).
const UPGRADE_LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(20);

fn config(up: &MockUpstream) -> String {
    format!(
        "listen: \"{{listen}}\"\ngrace_period: 1s\nupgrade_sock: \"{{dir}}/upgrade.sock\"\npid_file: \"{{dir}}/modelgate.pid\"\nstate: {{path: \"{{dir}}/usage.db\"}}\ndefault_provider: up\nproviders:\n  up: {{type: anthropic, api_base: \"{}\", api_key: k}}\n",
        up.base_url()
    )
}

/// Kills, when dropped, every process whose command line names this test's
/// temp dir (the old gateway, a daemonized new one, a launcher): each was
/// started with `-c <dir>/…`, and the dir is unique to the test.
struct Reaper(String);

impl Reaper {
    fn new(dir: &Path) -> Reaper {
        Reaper(dir.display().to_string())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let me = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmdline).contains(&self.0) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Kills and reaps a child the test holds, however the test ends.
struct Held(Option<Child>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `modelgate ARGS…` to completion (bounded), stderr into `<dir>/upgrade.err`
/// (a daemon it starts inherits that file, never a pipe the test waits on).
fn run_cli(dir: &Path, args: &[&str]) -> Outcome {
    let err_path = dir.join("upgrade.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut held = Held(Some(child));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = held.0.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < UPGRADE_LIMIT,
            "modelgate {args:?} still running after {UPGRADE_LIMIT:?}:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    held.0 = None;
    Outcome {
        code: status.code(),
        stdout: reader.join().unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// The pid `/status` reports, over a fresh connection each time (a kept-alive
/// one would keep asking the old process).
async fn served_pid(url: &str) -> Option<u32> {
    let c = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let s: Value = c.get(url).send().await.ok()?.json().await.ok()?;
    s["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

async fn wait_served_pid_other_than(url: &str, old: u32) -> u32 {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Some(p) = served_pid(url).await.filter(|&p| p != old) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no process other than {old} ever answered /status");
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// A stream open on the old process: the response body and its first chunk.
async fn open_stream(gw: &Gateway) -> (String, impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>) {
    let resp = client()
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"claude-opus-4-8","max_tokens":5,"stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("first chunk")
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"event: message_start"));
    (String::from_utf8_lossy(&first).into_owned(), body)
}

async fn finish_stream(
    mut text: String,
    mut body: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> String {
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("the open stream hangs")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the open stream was cut")));
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_hands_over_while_a_stream_stays_open() {
    let up = MockUpstream::start().await;
    let (reply, gate) = gated_sse_message("claude-opus-4-8", &["still ", "streaming"]);
    up.push(reply);
    let mut gw = Gateway::start_async(&config(&up), &[]).await;
    let _reaper = Reaper::new(gw.dir.path());
    let old = gw.child.id();
    // As `serve -d` would have written it.
    let pid_file = gw.dir.path().join("modelgate.pid");
    std::fs::write(&pid_file, format!("{old}\n")).unwrap();

    let (first, body) = open_stream(&gw).await;
    let dir = gw.dir.path().to_path_buf();
    let cfg = gw.config_path().display().to_string();
    let upgrade = tokio::task::spawn_blocking(move || run_cli(&dir, &["upgrade", "-c", &cfg]));

    // The new process serves; only then may the old one's stream finish.
    let new = wait_served_pid_other_than(&gw.url("/status"), old).await;
    gate.open();
    let text = finish_stream(first, Box::pin(body)).await;
    assert!(text.contains("event: message_stop"), "stream cut short:\n{text}");

    let out = upgrade.await.unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, format!("upgraded: {old} → {new}\n"), "{}", out.stderr);
    for step in ["is valid", "SIGQUIT sent to pid", "took the sockets over", "has exited"] {
        assert!(out.stderr.contains(step), "no `{step}` in the log:\n{}", out.stderr);
    }
    assert_eq!(read_pid(&pid_file), Some(new), "the daemon rewrote pid_file");
    assert_eq!(served_pid(&gw.url("/status")).await, Some(new));
    assert!(
        tokio::task::block_in_place(|| gw.wait_exit(WAIT)).is_some(),
        "the old process exits after its grace period"
    );
    assert!(alive(new), "the new gateway outlives the command");

    // And it serves the API.
    up.set_default(Reply::message("claude-opus-4-8", "hello again"));
    let r = client()
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"claude-opus-4-8","max_tokens":5,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("hello again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn foreground_upgrade_keeps_the_new_gateway_as_its_child() {
    let up = MockUpstream::start().await;
    let (reply, gate) = gated_sse_message("claude-opus-4-8", &["still ", "here"]);
    up.push(reply);
    let mut gw = Gateway::start_async(&config(&up), &[]).await;
    let _reaper = Reaper::new(gw.dir.path());
    let old = gw.child.id();
    let (first, body) = open_stream(&gw).await;

    // No pid file (a foreground `serve` writes none): the command asks /status.
    let pid_file = gw.dir.path().join("modelgate.pid");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelgate"));
    cmd.args(["upgrade", "--foreground", "-c"])
        .arg(gw.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(gw.dir.path().join("upgrade.err")).unwrap());
    let mut held = Held(Some(cmd.spawn().unwrap()));
    let upgrader = held.0.as_ref().unwrap().id();
    let mut stdout = held.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
    });
    let err_path = gw.dir.path().join("upgrade.err");
    let log = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let line = tokio::task::block_in_place(|| rx.recv_timeout(UPGRADE_LIMIT))
        .unwrap_or_else(|_| panic!("no `upgraded:` line:\n{}", log()));
    let new: u32 = line
        .strip_prefix(&format!("upgraded: {old} → "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line `{line}`:\n{}", log()));

    assert_eq!(parent_of(new), Some(upgrader), "the new gateway is the command's child");
    // For 5 s after SIGQUIT the old process still accepts (and answers, draining).
    assert_eq!(wait_served_pid_other_than(&gw.url("/status"), old).await, new);
    assert_eq!(read_pid(&pid_file), Some(new), "the command writes pid_file for it");
    gate.open();
    let text = finish_stream(first, Box::pin(body)).await;
    assert!(text.contains("event: message_stop"), "stream cut short:\n{text}");
    assert!(tokio::task::block_in_place(|| gw.wait_exit(WAIT)).is_some());

    // SIGTERM to the command reaches the gateway, which drains and exits; the
    // command ends with its status.
    assert!(Command::new("kill")
        .args(["-TERM", &upgrader.to_string()])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = held.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the command did not end:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    held.0 = None;
    assert_eq!(status.code(), Some(0), "{}", log());
    assert!(!alive(new), "the gateway ended with the command");
    assert!(log().contains("forwarded SIGTERM"), "{}", log());
}

#[test]
fn refuses_when_no_gateway_runs() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper::new(dir.path());
    let port = free_port();
    let cfg = dir.path().join("modelgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nupgrade_sock: {0}/upgrade.sock\npid_file: {0}/modelgate.pid\nstate: {{path: {0}/usage.db}}\ndefault_provider: up\nproviders:\n  up: {{type: anthropic, api_base: \"http://127.0.0.1:9\", api_key: k}}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();

    let out = run_cli(dir.path(), &["upgrade", "-c", &cfg]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains(&format!("no gateway running on 127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("start it with `modelgate serve`"), "{}", out.stderr);

    // A stale pid file (its process has exited) is no better.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(dir.path().join("modelgate.pid"), gone.id().to_string()).unwrap();
    let out = run_cli(dir.path(), &["upgrade", "-c", &cfg]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("that process is not running"), "{}", out.stderr);
    assert!(out.stderr.contains("no gateway running"), "{}", out.stderr);
    assert!(!dir.path().join("upgrade.sock").exists(), "nothing was started");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_an_invalid_config_and_leaves_the_gateway_alone() {
    let up = MockUpstream::start().await;
    let mut gw = Gateway::start_async(&config(&up), &[]).await;
    let _reaper = Reaper::new(gw.dir.path());
    let old = gw.child.id();
    let pid_file = gw.dir.path().join("modelgate.pid");
    std::fs::write(&pid_file, format!("{old}\n")).unwrap();

    // The running config plus a misspelt key on the last line.
    let mut bad_text = std::fs::read_to_string(gw.config_path()).unwrap();
    let line = bad_text.lines().count() + 1;
    bad_text.push_str("grace_perod: 5s\n");
    let bad = gw.dir.path().join("bad.yaml");
    std::fs::write(&bad, bad_text).unwrap();

    let dir = gw.dir.path().to_path_buf();
    let bad_arg = bad.display().to_string();
    let out = tokio::task::spawn_blocking(move || run_cli(&dir, &["upgrade", "-c", &bad_arg]))
        .await
        .unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("grace_perod"),
        "the error names the key:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("line {line}")),
        "the error names the line:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("untouched"), "{}", out.stderr);

    assert!(gw.is_running(), "the old process keeps running");
    assert_eq!(served_pid(&gw.url("/status")).await, Some(old));
    assert_eq!(http_status(gw.addr, "/health"), Some(200), "and is not draining");
    assert_eq!(read_pid(&pid_file), Some(old));
    assert!(
        !gw.dir.path().join("upgrade.sock").exists(),
        "no new process was started"
    );
}
