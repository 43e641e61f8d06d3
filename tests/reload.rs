//! Hot reload under load, through the real binary: valid files take effect
//! (on SIGHUP and on a file change), invalid ones change nothing and are
//! reported, and not one request fails meanwhile.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn config(target: &str, one: &MockUpstream, two: &MockUpstream) -> String {
    format!(
        "listen: \"{{listen}}\"\ndefault_provider: {target}\nproviders:\n  one: {{type: anthropic, api_base: \"{}\", api_key: k1}}\n  two: {{type: anthropic, api_base: \"{}\", api_key: k2}}\nroutes:\n  - {{match: 'claude-*', provider: {target}}}\n",
        one.base_url(),
        two.base_url()
    )
}

/// Replace the file the way editors do: write a temporary, rename it over.
fn write_config(gw: &Gateway, text: &str) {
    let path = gw.config_path();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replace("{listen}", &gw.addr.to_string())).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

async fn status(gw: &Gateway) -> Value {
    client()
        .get(gw.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Poll (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_never_fail_a_request() {
    let one = MockUpstream::start().await;
    let two = MockUpstream::start().await;
    let gw = Gateway::start_async(&config("one", &one, &two), &[]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, total, url) = (stop.clone(), failures.clone(), total.clone(), gw.url("/v1/messages"));
        load.push(tokio::spawn(async move {
            let c = client();
            // Bounded: stops when told, and after at most 20,000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = c
                    .post(&url)
                    .body(r#"{"model":"claude-opus-4-8","max_tokens":1,"messages":[]}"#)
                    .send()
                    .await;
                total.fetch_add(1, Ordering::Relaxed);
                if !matches!(r, Ok(ref r) if r.status() == 200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    until("traffic on `one`", async || one.request_count() > 20).await;

    // (route target after the step, whether the file is valid)
    let steps = [
        ("two", true),
        ("two", false),
        ("one", true),
        ("one", false),
        ("two", true),
    ];
    for (i, (target, valid)) in steps.into_iter().enumerate() {
        let (current, other) = if target == "two" { (&two, &one) } else { (&one, &two) };
        if valid {
            write_config(&gw, &config(target, &one, &two));
            // The first change relies on the file watch alone; the others
            // also send SIGHUP.
            if i > 0 {
                assert!(gw.signal("HUP"));
            }
            until("the new route to take traffic", async || current.request_count() > 0).await;
            // Requests admitted before the swap may still finish on the old
            // route; after they drain, the old one sees nothing new.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let before = other.request_count();
            until("more traffic on the new route", async || current.request_count() > 50).await;
            assert_eq!(
                other.request_count(),
                before,
                "step {i}: the old route gets no new requests"
            );
        } else {
            let failed_before = status(&gw).await["config"]["reloads"]["failed"].as_u64().unwrap();
            let version = status(&gw).await["config"]["version"].clone();
            write_config(
                &gw,
                &config("one", &one, &two).replace("default_provider", "default_providr"),
            );
            assert!(gw.signal("HUP"));
            until("the rejected reload to be reported", async || {
                status(&gw).await["config"]["reloads"]["failed"].as_u64().unwrap() > failed_before
            })
            .await;
            let s = status(&gw).await;
            assert_eq!(s["config"]["version"], version, "an invalid file changes nothing");
            let err = s["config"]["reloads"]["last_error"].as_str().unwrap().to_string();
            assert!(err.contains("default_providr") && err.contains("line 2"), "{err}");
            let (served, idle) = (current.request_count(), other.request_count());
            until("traffic to keep flowing", async || {
                current.request_count() > served + 20
            })
            .await;
            assert_eq!(other.request_count(), idle);
        }
        current.clear_requests();
        other.clear_requests();
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(total.load(Ordering::Relaxed) > 100);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed across five reloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_changes_need_a_restart() {
    let one = MockUpstream::start().await;
    let two = MockUpstream::start().await;
    let gw = Gateway::start_async(&config("one", &one, &two), &[]).await;
    let moved = config("one", &one, &two).replace("{listen}", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(gw.config_path(), moved).unwrap();
    assert!(gw.signal("HUP"));
    until("restart_required", async || {
        status(&gw).await["config"]["reloads"]["restart_required"] == serde_json::json!(["listen"])
    })
    .await;
    assert_eq!(
        client().get(gw.url("/health")).send().await.unwrap().status(),
        200,
        "still on the old listener"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_log_level_and_circuit_reset_through_the_admin_api() {
    let one = MockUpstream::start().await;
    let two = MockUpstream::start().await;
    let admin = free_port();
    let yaml = config("one", &one, &two).replacen("listen:", &format!("admin_listen: 127.0.0.1:{admin}\nlisten:"), 1);
    let gw = Gateway::start_async(&yaml, &[]).await;
    let url = format!("http://127.0.0.1:{admin}");
    let cli = move |args: &'static [&'static str]| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
                .args(args)
                .args(["--admin", &url])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
    };
    assert_eq!(
        cli(&["logging", "status"]).await.unwrap(),
        "log level: info\nlog format: standard\nlog output: stderr"
    );
    assert_eq!(
        cli(&["logging", "set-level", "debug"]).await.unwrap(),
        "log level: debug"
    );
    assert!(cli(&["logging", "status"])
        .await
        .unwrap()
        .starts_with("log level: debug\n"));
    assert!(gw.logs().contains("log level set to DEBUG through the admin API"));
    assert_eq!(cli(&["health", "reset"]).await.unwrap(), "reset 0 circuit breakers");
}
