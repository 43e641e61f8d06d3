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
