//! Process lifecycle through the real binary: SIGTERM drains open streams
//! for `grace_period` and then exits; SIGINT stops at once; a bad config
//! never starts.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn config(upstream: &MockUpstream, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ngrace_period: 2s\ndefault_provider: up\nproviders:\n  up: {{type: anthropic, api_base: \"{}\", api_key: sk-test}}\n{extra}",
        upstream.base_url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_open_stream_finish_then_exits() {
    let up = MockUpstream::start().await;
    let (reply, gate) = gated_sse_message("claude-opus-4-8", &["still", " here"]);
    up.push(reply);
    let mut gw = Gateway::start_async(&config(&up, ""), &[]).await;

    let resp = client()
        .post(gw.url("/v1/messages"))
        .body(r#"{"model":"claude-opus-4-8","max_tokens":10,"stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"event: message_start"));

    assert!(gw.signal("TERM"));
    // Draining has begun, the stream is still open: let the upstream finish it.
    gate.open();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.next()).await.expect("no hang") {
        rest.extend_from_slice(&chunk.expect("the open stream is not cut by SIGTERM"));
    }
    assert!(String::from_utf8_lossy(&rest).contains("event: message_stop"));

    // grace_period (2 s) plus Pingora's bounded runtime shutdown.
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some(), "the process exits after the grace period");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_immediately() {
    let up = MockUpstream::start().await;
    let mut gw = Gateway::start_async(
        &config(&up, "grace_period: 600s\n").replace("grace_period: 2s\n", ""),
        &[],
    )
    .await;
    assert!(gw.signal("INT"));
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(5)));
    assert!(status.is_some(), "SIGINT does not wait for the 600 s grace period");
}

#[test]
fn invalid_config_fails_fast_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:1\nproviders:\n  a:\n    type: anthropic\n    api_bsae: http://x\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api_bsae") && err.contains("line 5"), "{err}");

    std::fs::write(&path, "providers:\n  o: {type: gopher}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["config", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("providers.o.type"));
}

/// SIGKILL right after the answers: every answered request keeps its
/// ledger row. Each record is in the intake's journal before its answer
/// ends; the next start adopts what the killed process had not written.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_right_after_answers_loses_no_record() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::sse_message("claude-opus-4-8", &["ok"]));
    // The ledger outlives the first gateway's directory.
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("usage.db");
    let yaml = config(&up, &format!("state: {{path: \"{}\"}}\n", db.display()));
    let mut first = Gateway::start_async(&yaml, &[]).await;
    const ANSWERS: usize = 20;
    let mut answered = 0;
    for round in 0..ANSWERS / 4 {
        let sends = (0..4).map(|_| {
            client()
                .post(first.url("/v1/messages"))
                .body(r#"{"model":"claude-opus-4-8","max_tokens":10,"stream":true,"messages":[]}"#)
                .send()
        });
        for resp in futures_util::future::join_all(sends).await {
            let resp = resp.unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            let body = resp.text().await.unwrap();
            assert!(body.contains("message_stop"), "{body}");
            answered += 1;
        }
    }
    // No drain, no flush: the last answers' records are at most journaled.
    first.child.kill().unwrap();
    assert!(tokio::task::block_in_place(|| first.wait_exit(WAIT)).is_some());

    let second = Gateway::start_async(&yaml, &[]).await;
    let deadline = std::time::Instant::now() + WAIT;
    let rows = loop {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut stmt = conn.prepare("SELECT request_id FROM requests").unwrap();
        let rows: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        if rows.len() >= answered || std::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let written: std::collections::HashSet<String> = rows.iter().cloned().collect();
    assert_eq!(rows.len(), written.len(), "a request has two rows");
    assert_eq!(written.len(), ANSWERS, "answers with a row\n{}", second.logs());
    // The adopted journal is gone once written.
    let journal = state.path().join("usage.db.intake");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left: Vec<_> = std::fs::read_dir(&journal)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // The second gateway's own file (if it has one yet) is all there is.
        if left.len() <= 1 || std::time::Instant::now() >= deadline {
            assert!(left.len() <= 1, "{left:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
