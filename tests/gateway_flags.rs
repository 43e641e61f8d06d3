//! claude-code-model-gateway's `gateway` flags and environment overrides,
//! through the binary: each flag overrides its config key (the provider key
//! for this run only, the default `anthropic-version`, the body limit, the
//! log format, file and level), and `GATEWAY_*` variables override the file
//! (`config export`, `config env-check`).

mod support;

use std::time::Duration;

use support::*;

const FLAG_KEY: &str = "sk-ant-from-the-command-line-000000000001";
const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn the_seeds_gateway_flags_override_the_file() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::message("claude-sonnet-4-5", "hello"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: a\nproviders:\n  \
         o: {{type: openai, api_base: \"{0}\", api_key: sk-openai-file}}\n  \
         a: {{type: anthropic, api_base: \"{0}\", api_key_env_var: MODELGATE_TEST_UNSET_KEY}}\n",
        up.base_url()
    );
    let log_arg = log.display().to_string();
    let gw = Gateway::start_with_args_async(
        &yaml,
        &[],
        &[
            "-H",
            "127.0.0.1",
            "--api-key",
            FLAG_KEY,
            "--anthropic-version",
            "2024-10-22",
            "--max-request-size",
            "2000",
            "--log-format",
            "minimal",
            "--log-file",
            &log_arg,
            "--verbose",
            "--retry-delay",
            "0.05",
            "-t",
            "7",
            "--pool-size",
            "8",
            "--response-cache",
            "--cache-ttl",
            "60",
            "--cache-maxsize",
            "5",
        ],
    )
    .await;

    // The flag's key goes upstream; a client without a version gets the
    // flag's, one with a version keeps its own.
    let r = client().post(gw.url("/v1/messages")).body(BODY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .body(BODY.replace("hi", "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let seen = up.wait_requests(2, Duration::from_secs(5)).await;
    assert_eq!(seen[0].header("x-api-key").as_deref(), Some(FLAG_KEY));
    assert_eq!(seen[0].header("anthropic-version").as_deref(), Some("2024-10-22"));
    assert_eq!(seen[1].header("anthropic-version").as_deref(), Some("2023-06-01"));

    // --max-request-size
    let big = BODY.replace("hi", &"x".repeat(3000));
    let r = client().post(gw.url("/v1/messages")).body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);

    // --response-cache with --cache-ttl/--cache-maxsize, as the admin API reports them.
    let cache: serde_json::Value = client()
        .get(gw.url("/admin/cache"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cache["response"]["enabled"], true, "{cache}");
    assert_eq!(cache["response"]["ttl_seconds"], 60, "{cache}");
    assert_eq!(cache["response"]["max_entries"], 5, "{cache}");

    // --log-file, --log-format minimal, --verbose: debug lines, `LEVEL message`.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l.starts_with("DEBUG ")), "{text}");
    assert!(text.lines().all(|l| !l.starts_with('[')), "{text}");
    // The key never reaches a log, a status page or an error.
    assert!(!text.contains(FLAG_KEY));
    assert!(!gw.logs().contains(FLAG_KEY));
    let status = client()
        .get(gw.url("/status"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!status.contains(FLAG_KEY));

    // The seed's logging commands against this gateway.
    let config = gw.config_path();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let json = |args: &[&str]| {
        let (code, out, err) = cli(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let status = json(&["logging", "status", "--format", "json"]);
    assert_eq!(status["level"], "debug", "{status}");
    assert_eq!(status["format"], "minimal");
    assert_eq!(status["output"], "file");
    let files = json(&["logging", "files", "--format", "json"]);
    assert_eq!(files[0]["kind"], "log");
    assert_eq!(files[0]["path"], log_arg.as_str());
    assert!(files[0]["bytes"].as_u64().unwrap() > 0);
    let before = json(&["logging", "metrics", "--format", "json"]);
    assert!(before["debug"].as_u64().unwrap() > 0, "{before}");
    let (code, out, _) = cli(&["logging", "test"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("error, warn, info, debug"), "{out}");
    let after = json(&["logging", "metrics", "--format", "json"]);
    assert!(after["warn"].as_u64().unwrap() > before["warn"].as_u64().unwrap());
    let health = json(&["logging", "health", "--format", "json"]);
    assert_eq!(health["ok"], true, "{health}");
    // Live: the format and level change at once, and the next lines show it.
    let (code, out, err) = cli(&["logging", "configure", "--format", "json", "--level", "info"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "log level: info, format: json");
    let (code, _, _) = cli(&["logging", "test"]);
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    let line: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(line["level"], "INFO", "{line}");
    let (code, _, err) = cli(&["logging", "configure", "--level", "loud"]);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn an_api_key_without_an_anthropic_provider_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modelgate.yaml");
    std::fs::write(
        &path,
        "providers:\n  o: {type: openai, api_key: x}\ndefault_provider: o\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["gateway", "-c"])
        .arg(&path)
        .args(["--api-key", FLAG_KEY])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no provider of type `anthropic`"), "{err}");
    assert!(!err.contains(FLAG_KEY));
}

#[test]
fn gateway_environment_overrides_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modelgate.yaml");
    std::fs::write(
        &path,
        "timeout: 30s\nlog_level: info\ndefault_provider: a\nproviders:\n  a: {type: anthropic}\n  b: {type: anthropic}\n",
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .arg("-c")
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(
        &["config", "export", "--format", "json"],
        &[
            ("GATEWAY_DEFAULT_PROVIDER", "b"),
            ("GATEWAY_LOG_LEVEL", "WARN"),
            ("GATEWAY_TIMEOUT", "0.5"),
        ],
    );
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["default_provider"], "b");
    assert_eq!(v["log_level"], "warn");
    assert_eq!(v["timeout"], "500ms");
    let (code, _, err) = run(&["config", "validate"], &[("GATEWAY_TIMEOUT", "soon")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("GATEWAY_TIMEOUT"), "{err}");
    let (_, out, _) = run(&["config", "env-check"], &[("GATEWAY_LOG_LEVEL", "debug")]);
    assert!(
        out.contains("set      GATEWAY_LOG_LEVEL (optional, overrides log_level)"),
        "{out}"
    );
    assert!(
        out.contains("MISSING  GATEWAY_TIMEOUT (optional, overrides timeout)"),
        "{out}"
    );
}

/// `route serve`, the seed's name for serving: the same gateway.
#[test]
fn route_serve_runs_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modelgate.yaml");
    std::fs::write(&path, "providers:\n  a: {type: anthropic}\ndefault_provider: a\n").unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["route", "serve", "-c"])
        .arg(&path)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .arg("--upgrade-sock-is-not-a-flag")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // An unknown flag is refused like `serve` refuses it.
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["route", "serve", "-c"])
        .arg(&path)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut up = false;
    while std::time::Instant::now() < until {
        if http_status(addr, "/health") == Some(200) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "route serve never answered /health on {addr}");
}

/// Without `-c`, a directory with the seed's `gateway.yaml` (and no
/// `modelgate.yaml`) uses it.
#[test]
fn the_seeds_gateway_yaml_is_found_without_c() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "providers:\n  seedprov: {type: anthropic}\ndefault_provider: seedprov\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["provider", "list"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("seedprov"));
}
