//! Zero-downtime binary upgrade through Pingora's socket hand-over, under
//! load: a new process started with `serve -u` takes the listeners, the old
//! one gets SIGQUIT, finishes its open streams and exits — three times in a
//! row, with no failed request and every stream complete. The load clients
//! retry once on a connection-level error before any response byte, as
//! Claude Code does: Pingora may close a connection the old process accepted
//! in its very last instant without reading it.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use support::*;

/// Kills the processes it holds when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn served_pid(url: &str) -> u64 {
    let s: Value = client().get(url).send().await.unwrap().json().await.unwrap();
    s["pid"].as_u64().unwrap()
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let polls = limit.as_millis() / 50;
    for _ in 0..polls {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn three_upgrades_under_load_lose_nothing() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-opus-4-8", "ok"));
    // Streams get their own upstream, so the load cannot take their replies.
    let streamer = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ngrace_period: 3s\nupgrade_sock: \"{{dir}}/upgrade.sock\"\npid_file: \"{{dir}}/modelgate.pid\"\ndefault_provider: up\nproviders:\n  up: {{type: anthropic, api_base: \"{}\", api_key: k}}\n  streamer: {{type: anthropic, api_base: \"{}\", api_key: k}}\nroutes:\n  - {{match: claude-stream, provider: streamer}}\n",
        up.base_url(),
        streamer.base_url()
    );
    let mut gw = Gateway::start_async(&yaml, &[]).await;
    let config = gw.config_path();
    let sock = gw.dir.path().join("upgrade.sock");
    let status_url = gw.url("/status");
    let messages = gw.url("/v1/messages");

    // Load: fresh connections and keep-alive ones, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for fresh in [true, false, true, false] {
        let (stop, failures, total, retried, url) = (
            stop.clone(),
            failures.clone(),
            total.clone(),
            retried.clone(),
            messages.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut builder = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30));
            if fresh {
                builder = builder.pool_max_idle_per_host(0);
            }
            let c = builder.build().unwrap();
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Like Claude Code, retry once when the connection failed
                // before any response byte (a connection the old process
                // accepted in its last instant may be closed unread).
                let mut ok = false;
                for attempt in 0..2 {
                    let r = c
                        .post(&url)
                        .body(r#"{"model":"claude-opus-4-8","max_tokens":1,"messages":[]}"#)
                        .send()
                        .await;
                    total.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) => {
                            ok = r.status() == 200 && r.bytes().await.is_ok();
                            break;
                        }
                        Err(e) if attempt == 0 && (e.is_connect() || e.is_request()) => {
                            eprintln!("connection-level error, retrying once: {e}");
                            retried.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("failed request: {e}");
                            break;
                        }
                    }
                }
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let mut procs = Procs(Vec::new());
    let mut old_pid = served_pid(&status_url).await;
    assert_eq!(old_pid, u64::from(gw.child.id()));
    for round in 0..3 {
        // Three streams open on the old process across the hand-over.
        let mut gates = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..3 {
            let (reply, gate) = gated_sse_message("claude-stream", &["still ", "streaming"]);
            streamer.push(reply);
            gates.push(gate);
            let r = client()
                .post(&messages)
                .body(r#"{"model":"claude-stream","max_tokens":5,"stream":true,"messages":[]}"#)
                .send()
                .await
                .unwrap();
            let mut body = r.bytes_stream();
            let first = tokio::time::timeout(Duration::from_secs(10), body.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(first.starts_with(b"event: message_start"));
            streams.push(tokio::spawn(async move {
                let mut text = String::from_utf8_lossy(&first).to_string();
                while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), body.next())
                    .await
                    .unwrap()
                {
                    text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                }
                text
            }));
        }

        let _ = std::fs::remove_file(&sock);
        let new = Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .args(["serve", "-u", "-c"])
            .arg(&config)
            .current_dir(gw.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(gw.dir.path().join(format!("upgrade-{round}.log"))).unwrap())
            .spawn()
            .unwrap();
        let new_pid = u64::from(new.id());
        procs.0.push(new);
        // The new process is ready for the hand-over once it listens on the socket.
        let mut ready = false;
        for _ in 0..200 {
            if sock.exists() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(ready, "round {round}: the new process never opened the upgrade socket");
        assert!(Command::new("kill")
            .args(["-QUIT", &old_pid.to_string()])
            .status()
            .unwrap()
            .success());

        // Finish the open streams while the old process drains.
        for g in &gates {
            g.open();
        }
        for s in streams {
            let text = s.await.unwrap();
            assert!(
                text.contains("event: message_stop"),
                "round {round}: stream cut short:\n{text}"
            );
        }
        let mut switched = false;
        for _ in 0..400 {
            if served_pid(&status_url).await == new_pid {
                switched = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(switched, "round {round}: the new process never answered");
        // The old process exits after the 5 s hand-over window and its grace period.
        let exited = if round == 0 {
            tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)).is_some())
        } else {
            let idx = procs.0.len() - 2;
            tokio::task::block_in_place(|| wait_exit(&mut procs.0[idx], Duration::from_secs(20)))
        };
        assert!(
            exited,
            "round {round}: the old process did not exit within its grace period"
        );
        old_pid = new_pid;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(total.load(Ordering::Relaxed) > 100);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed across the upgrades"
    );
}
