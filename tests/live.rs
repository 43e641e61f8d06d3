//! `GET /admin/live`: finished requests as server-sent events, through the
//! binary: a request sent while a listener is connected arrives as an
//! `event: request` with its numbers and names (never the key), and the
//! number of listeners is bounded (529 beyond).

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use support::*;

const KEY: &str = "mg-liveKey000000000000000000000000000000001";

#[tokio::test]
async fn a_request_appears_in_the_live_feed() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5-20250929", "hello"));
    let admin = free_port();
    let yaml = format!(
        "listen: \"{{listen}}\"\nadmin_listen: \"127.0.0.1:{admin}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-ant-test}}\n\
         keys:\n  - {{name: dev, team: core, key_sha256: \"{}\"}}\nteams:\n  core: {{}}\n",
        up.base_url(),
        hex::encode(Sha256::digest(KEY.as_bytes()))
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let feed = client()
        .get(format!("http://127.0.0.1:{admin}/admin/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    let mut stream = feed.bytes_stream();
    // The listener is subscribed once the first comment arrives.
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b": modelgate live feed"));

    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .header("x-claude-code-session-id", "sess-live-1")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();

    let until = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < until && !text.contains("sess-live-1") {
        match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let event = parse_sse(&text)
        .into_iter()
        .find(|(name, data)| name == "request" && data["session"] == "sess-live-1")
        .unwrap_or_else(|| panic!("not in the feed: {text}"));
    let data = event.1;
    for (k, want) in [
        ("key", "dev"),
        ("team", "core"),
        ("model", "claude-sonnet-4-5"),
        ("provider", "a"),
        ("session", "sess-live-1"),
    ] {
        assert_eq!(data[k], want, "{k}: {data}");
    }
    assert_eq!(data["status"], 200);
    assert!(data["output_tokens"].as_u64().is_some() && data["duration_ms"].as_u64().is_some());
    assert!(data["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{data}");
    assert!(!text.contains(KEY) && !text.contains("sk-ant-test"));
}

#[tokio::test]
async fn listeners_are_bounded() {
    let admin = free_port();
    let gw = Gateway::start_async(
        &format!("listen: \"{{listen}}\"\nadmin_listen: \"127.0.0.1:{admin}\"\n"),
        &[],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..32 {
        let r = client()
            .get(format!("http://127.0.0.1:{admin}/admin/live"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/admin/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    drop(held);
    drop(gw);
}
