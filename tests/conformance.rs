//! Real-client conformance: the actual Claude Code CLI through the real
//! binary, against scripted "models" (`support::model`) in each dialect
//! that has landed (Anthropic passthrough, OpenAI translation).
//!
//! `scripts/test` installs Claude Code into `tests/clients/node_modules`
//! (pinned in `tests/clients/package.json`) and sets
//! `MODELGATE_REQUIRE_CLAUDE=1`, so a failed install fails the suite; a bare
//! `cargo test` without it skips with a note. Every run is isolated (its own
//! `HOME`), offline but for the gateway, and bounded in time.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const KEY: &str = "mg-conformanceKey0000000000000000000000000001";
const MARKER: &str = "modelgate-conformance-7f3a91";
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
enum Dialect {
    Anthropic,
    OpenAi,
    Bedrock,
    Gemini,
}

fn claude() -> Option<PathBuf> {
    support::claude::bin()
}

fn hash(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// A gateway whose only route goes to `primary` (with `backup` as its
/// fallback, when given), in `dialect`.
fn config(dialect: Dialect, primary: &MockUpstream, backup: Option<&MockUpstream>) -> String {
    let provider = |name: &str, up: &MockUpstream| {
        match dialect {
        Dialect::Anthropic => format!(
            "  {name}: {{type: anthropic, api_base: \"{}\", api_key: sk-ant-mock}}\n",
            up.base_url()
        ),
        Dialect::OpenAi => format!(
            "  {name}: {{type: openai, api_base: \"{}/v1\", api_key: sk-mock, models: [claude-gateway-gpt]}}\n",
            up.base_url()
        ),
        Dialect::Bedrock => format!(
            "  {name}: {{type: bedrock, region: us-east-1, api_base: \"{}\", api_key: bedrock-mock-key}}\n",
            up.base_url()
        ),
        Dialect::Gemini => format!(
            "  {name}: {{type: gemini, api_base: \"{}/v1beta\", api_key: gemini-mock-key, models: [claude-gateway-gemini]}}\n",
            up.base_url()
        ),
    }
    };
    let rename = match dialect {
        Dialect::Anthropic => "",
        Dialect::OpenAi => ", model: gpt-4o",
        Dialect::Bedrock => ", model: \"us.anthropic.claude-sonnet-4-5-20250929-v1:0\"",
        Dialect::Gemini => ", model: gemini-2.5-pro",
    };
    let mut yaml = format!(
        "listen: \"{{listen}}\"\nlog_level: info\nretry_delay: 10ms\ndefault_provider: primary\nproviders:\n{}",
        provider("primary", primary)
    );
    if let Some(b) = backup {
        yaml.push_str(&provider("backup", b));
    }
    // A fallback named alone gets the client's model id; Bedrock needs its own.
    let fallbacks = match (backup.is_some(), dialect) {
        (false, _) => String::new(),
        (true, Dialect::Bedrock) => {
            ", fallbacks: [{provider: backup, model: \"us.anthropic.claude-sonnet-4-5-20250929-v1:0\"}]".to_string()
        }
        (true, _) => ", fallbacks: [backup]".to_string(),
    };
    yaml.push_str(&format!(
        "routes:\n  - {{match: '*', provider: primary{rename}{fallbacks}}}\nkeys:\n  - {{name: dev, key_sha256: \"{}\"}}\n",
        hash(KEY)
    ));
    yaml
}

fn model_reply(dialect: Dialect) -> Reply {
    match dialect {
        Dialect::Anthropic => Reply::script(support::model::anthropic),
        Dialect::OpenAi => Reply::script(support::model::openai),
        Dialect::Bedrock => Reply::script(support::model::bedrock),
        Dialect::Gemini => Reply::script(support::model::gemini),
    }
}

/// How Claude Code is pointed at the gateway.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `ANTHROPIC_BASE_URL` and the key as `ANTHROPIC_AUTH_TOKEN`.
    Direct,
    /// Microsoft Foundry mode: `CLAUDE_CODE_USE_FOUNDRY=1`, the gateway's
    /// `/foundry` prefix as `ANTHROPIC_FOUNDRY_BASE_URL`, the key as
    /// `ANTHROPIC_FOUNDRY_API_KEY`.
    Foundry,
    /// Google Vertex AI mode: `CLAUDE_CODE_USE_VERTEX=1`, the gateway's
    /// `/vertex` prefix as `ANTHROPIC_VERTEX_BASE_URL`, no Google auth, the
    /// key as `ANTHROPIC_AUTH_TOKEN`.
    Vertex,
    /// Amazon Bedrock mode: `CLAUDE_CODE_USE_BEDROCK=1`, the gateway's
    /// `/bedrock` prefix as `ANTHROPIC_BEDROCK_BASE_URL`, no AWS auth, the
    /// key as `ANTHROPIC_AUTH_TOKEN`; streams come back as event-stream frames.
    Bedrock,
    /// Claude Platform on AWS mode: `CLAUDE_CODE_USE_ANTHROPIC_AWS=1`, the
    /// gateway itself as `ANTHROPIC_AWS_BASE_URL` (the Messages API, with
    /// the workspace header), no AWS auth, the key as `ANTHROPIC_AUTH_TOKEN`.
    ClaudeAws,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `claude -p PROMPT ARGS…` against `gw`, isolated, bounded by [`RUN_LIMIT`].
fn run_claude(bin: &Path, gw: &Gateway, mode: Mode, prompt: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(prompt)
        .args(["--model", "claude-sonnet-4-5"])
        .args(args)
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CI", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match mode {
        Mode::Direct => {
            cmd.env("ANTHROPIC_BASE_URL", gw.url(""));
            if !env.iter().any(|(k, _)| *k == "ANTHROPIC_API_KEY") {
                cmd.env("ANTHROPIC_AUTH_TOKEN", KEY);
            }
        }
        Mode::Foundry => {
            cmd.env("CLAUDE_CODE_USE_FOUNDRY", "1")
                .env("ANTHROPIC_FOUNDRY_BASE_URL", gw.url("/foundry"))
                .env("ANTHROPIC_FOUNDRY_API_KEY", KEY);
        }
        Mode::Vertex => {
            cmd.env("CLAUDE_CODE_USE_VERTEX", "1")
                .env("ANTHROPIC_VERTEX_BASE_URL", gw.url("/vertex"))
                .env("CLAUDE_CODE_SKIP_VERTEX_AUTH", "1")
                .env("ANTHROPIC_VERTEX_PROJECT_ID", "modelgate-test")
                .env("CLOUD_ML_REGION", "us-east5")
                .env("ANTHROPIC_AUTH_TOKEN", KEY);
        }
        Mode::Bedrock => {
            cmd.env("CLAUDE_CODE_USE_BEDROCK", "1")
                .env("ANTHROPIC_BEDROCK_BASE_URL", gw.url("/bedrock"))
                .env("CLAUDE_CODE_SKIP_BEDROCK_AUTH", "1")
                .env("AWS_REGION", "us-east-1")
                .env("ANTHROPIC_AUTH_TOKEN", KEY);
        }
        Mode::ClaudeAws => {
            cmd.env("CLAUDE_CODE_USE_ANTHROPIC_AWS", "1")
                .env("ANTHROPIC_AWS_BASE_URL", gw.url(""))
                .env("ANTHROPIC_AWS_WORKSPACE_ID", "wrkspc_conformance")
                .env("CLAUDE_CODE_SKIP_ANTHROPIC_AWS_AUTH", "1")
                .env("AWS_REGION", "us-east-1")
                .env("ANTHROPIC_AUTH_TOKEN", KEY);
        }
    }
    let mut child = cmd.spawn().expect("spawn claude");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        status.is_some(),
        "claude did not finish within {RUN_LIMIT:?}\n{stdout}\n{stderr}"
    );
    Run {
        ok: status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    }
}

/// The `result` of `--output-format json`, or of the last `result` line of `stream-json`.
fn result(run: &Run) -> Value {
    run.stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "result")
        .unwrap_or_else(|| {
            panic!(
                "no result in claude's output\nstdout: {}\nstderr: {}",
                run.stdout, run.stderr
            )
        })
}

async fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn one_shot_and_discovery(dialect: Dialect) {
    let Some(bin) = claude() else { return };
    let up = MockUpstream::start().await;
    up.set_default(model_reply(dialect));
    let gw = std::sync::Arc::new(Gateway::start_async(&config(dialect, &up, None), &[]).await);
    let g = gw.clone();
    let run = in_thread(move || {
        run_claude(
            &bin,
            &g,
            Mode::Direct,
            "Say pong.",
            &["--output-format", "json"],
            &[
                ("ANTHROPIC_API_KEY", KEY),
                ("CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY", "1"),
            ],
        )
    })
    .await;
    let r = result(&run);
    assert!(
        run.ok && r["is_error"] == false,
        "{dialect:?}: {}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(r["result"].as_str().unwrap_or("").contains("pong"), "{dialect:?}: {r}");
    // The key went as x-api-key, and never upstream.
    let logs = gw.logs();
    assert!(logs.contains("key=dev"), "{logs}");
    assert!(up.requests().iter().all(|q| !q.body_str().contains(KEY)
        && q.header("x-api-key").as_deref() != Some(KEY)
        && q.header("authorization").is_none_or(|a| !a.contains(KEY))));
    // Model discovery: Claude Code asked the gateway for its models.
    let listed = logs
        .lines()
        .find(|l| l.contains("GET /v1/models "))
        .unwrap_or_else(|| panic!("{dialect:?}: no /v1/models request\n{logs}"));
    assert!(listed.contains("status=200"), "{listed}");
    let ms: f64 = listed
        .split("duration_ms=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(ms < 3000.0, "{listed}");
}

async fn read_a_file(dialect: Dialect, mode: Mode) {
    let Some(bin) = claude() else { return };
    let up = MockUpstream::start().await;
    up.set_default(model_reply(dialect));
    let gw = std::sync::Arc::new(Gateway::start_async(&config(dialect, &up, None), &[]).await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, format!("{MARKER}\n")).unwrap();
    let prompt = format!("Please read the file {} and tell me what it says.", file.display());
    let g = gw.clone();
    let run = in_thread(move || {
        run_claude(
            &bin,
            &g,
            mode,
            &prompt,
            &["--output-format", "stream-json", "--verbose", "--allowedTools", "Read"],
            &[("MAX_THINKING_TOKENS", "2048")],
        )
    })
    .await;
    let r = result(&run);
    assert!(
        run.ok && r["is_error"] == false,
        "{dialect:?}: {}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(r["result"].as_str().unwrap_or("").contains(MARKER), "{dialect:?}: {r}");
    // Claude Code ran Read and sent its result back through the gateway.
    let carried = up.requests().iter().any(|q| {
        let body = q.body_str();
        body.contains(MARKER)
            && match dialect {
                Dialect::Anthropic | Dialect::Bedrock => body.contains("tool_result"),
                Dialect::OpenAi => body.contains("\"role\":\"tool\""),
                Dialect::Gemini => body.contains("functionResponse"),
            }
    });
    assert!(carried, "{dialect:?}: no upstream request carried the tool result");
    if matches!((mode, dialect), (Mode::ClaudeAws, Dialect::Anthropic)) {
        // The workspace header reaches an Anthropic-type upstream.
        assert!(
            up.requests()
                .iter()
                .all(|q| q.header("anthropic-workspace-id").as_deref() == Some("wrkspc_conformance")),
            "the workspace header was not forwarded"
        );
    }
    let format = match mode {
        Mode::Direct | Mode::ClaudeAws => None,
        Mode::Foundry => Some("inbound=foundry"),
        Mode::Vertex => Some("inbound=vertex"),
        Mode::Bedrock => Some("inbound=bedrock"),
    };
    if let Some(format) = format {
        let logs = gw.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("POST /v1/messages status=200") && l.contains(format)),
            "{mode:?}: the requests did not come in the cloud's format\n{logs}"
        );
    }
    if matches!(dialect, Dialect::Anthropic | Dialect::Bedrock) {
        // Thinking was on: the signed thinking block came back unchanged.
        let last = up.requests().last().unwrap().json();
        assert!(last["thinking"].is_object(), "{last}");
        let signed = last["messages"].as_array().unwrap().iter().any(|m| {
            m["content"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|b| b["type"] == "thinking" && b["signature"] == "c2lnbmF0dXJl")
            })
        });
        assert!(signed, "the signed thinking block was not sent back: {last}");
    }
    let events: Vec<Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == "assistant"
            && e["message"]["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use" && b["name"] == "Read"))),
        "{dialect:?}: no Read tool_use in the stream-json output"
    );
}

async fn survives_a_429_by_failover(dialect: Dialect, mode: Mode) {
    let Some(bin) = claude() else { return };
    let busy = MockUpstream::start().await;
    let error = match dialect {
        Dialect::Anthropic => Reply::error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your rate limit",
        ),
        Dialect::OpenAi => Reply::json(
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","code":"rate_limit_exceeded"}}"#,
        ),
        Dialect::Bedrock => Reply::json(
            429,
            r#"{"message":"Too many requests, please wait before trying again."}"#,
        )
        .with_header("x-amzn-errortype", "ThrottlingException"),
        Dialect::Gemini => Reply::json(
            429,
            r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
    };
    busy.set_default(error.with_header("retry-after", "30"));
    let up = MockUpstream::start().await;
    up.set_default(model_reply(dialect));
    let gw = std::sync::Arc::new(Gateway::start_async(&config(dialect, &busy, Some(&up)), &[]).await);
    let g = gw.clone();
    let run = in_thread(move || run_claude(&bin, &g, mode, "Say pong.", &["--output-format", "json"], &[])).await;
    let r = result(&run);
    assert!(
        run.ok && r["is_error"] == false,
        "{dialect:?}: {}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(r["result"].as_str().unwrap_or("").contains("pong"));
    assert!(busy.request_count() >= 1, "the primary was tried");
}

#[tokio::test(flavor = "multi_thread")]
async fn foundry_mode_anthropic_read_tool_loop() {
    read_a_file(Dialect::Anthropic, Mode::Foundry).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn foundry_mode_openai_read_tool_loop() {
    read_a_file(Dialect::OpenAi, Mode::Foundry).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vertex_mode_anthropic_read_tool_loop() {
    read_a_file(Dialect::Anthropic, Mode::Vertex).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vertex_mode_openai_read_tool_loop() {
    read_a_file(Dialect::OpenAi, Mode::Vertex).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vertex_mode_429_failover() {
    survives_a_429_by_failover(Dialect::Anthropic, Mode::Vertex).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_mode_anthropic_read_tool_loop() {
    read_a_file(Dialect::Anthropic, Mode::Bedrock).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_mode_openai_read_tool_loop() {
    read_a_file(Dialect::OpenAi, Mode::Bedrock).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_mode_429_failover() {
    survives_a_429_by_failover(Dialect::Anthropic, Mode::Bedrock).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_platform_on_aws_mode_anthropic_read_tool_loop() {
    read_a_file(Dialect::Anthropic, Mode::ClaudeAws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_platform_on_aws_mode_openai_read_tool_loop() {
    read_a_file(Dialect::OpenAi, Mode::ClaudeAws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_modes_429_failover_through_openai() {
    for mode in [Mode::Foundry, Mode::Vertex, Mode::Bedrock] {
        survives_a_429_by_failover(Dialect::OpenAi, mode).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn foundry_mode_429_failover() {
    survives_a_429_by_failover(Dialect::Anthropic, Mode::Foundry).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_one_shot_and_model_discovery() {
    one_shot_and_discovery(Dialect::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_one_shot_and_model_discovery() {
    one_shot_and_discovery(Dialect::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_read_tool_loop() {
    read_a_file(Dialect::Anthropic, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_read_tool_loop() {
    read_a_file(Dialect::OpenAi, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_429_failover() {
    survives_a_429_by_failover(Dialect::Anthropic, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_429_failover() {
    survives_a_429_by_failover(Dialect::OpenAi, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_one_shot_and_model_discovery() {
    one_shot_and_discovery(Dialect::Bedrock).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_read_tool_loop() {
    read_a_file(Dialect::Bedrock, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_429_failover() {
    survives_a_429_by_failover(Dialect::Bedrock, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_one_shot_and_model_discovery() {
    one_shot_and_discovery(Dialect::Gemini).await;
}

/// Gemini's function call carries a thought signature the scripted model
/// insists on seeing replayed (as Gemini 3 does): the loop only completes
/// if it survives the round trip through Claude Code.
#[tokio::test(flavor = "multi_thread")]
async fn gemini_read_tool_loop() {
    read_a_file(Dialect::Gemini, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_429_failover() {
    survives_a_429_by_failover(Dialect::Gemini, Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_context_error_reaches_claude_code_as_prompt_is_too_long() {
    let Some(bin) = claude() else { return };
    let up = MockUpstream::start().await;
    up.set_default(Reply::json(
        400,
        r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 210000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
    ));
    let gw = std::sync::Arc::new(Gateway::start_async(&config(Dialect::OpenAi, &up, None), &[]).await);
    // The gateway's own answer uses Anthropic's wording, which Claude Code
    // matches to offer compaction.
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long"),
        "{v}"
    );
    let g = gw.clone();
    let run =
        in_thread(move || run_claude(&bin, &g, Mode::Direct, "Say pong.", &["--output-format", "json"], &[])).await;
    let r = result(&run);
    assert_eq!(r["is_error"], true, "{}", run.stdout);
    assert!(
        r["result"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("prompt is too long"),
        "{r}"
    );
}

#[test]
fn the_scripted_model_decides_like_a_person_would() {
    use support::model::{decide, Turn};
    assert_eq!(
        decide("Please read the file /tmp/a/notes.txt.", None),
        Turn::Read("/tmp/a/notes.txt".into())
    );
    assert_eq!(decide("x", Some("hello")), Turn::Text("The file says: hello".into()));
    assert_eq!(decide("Say pong.", None), Turn::Text("pong".into()));
}
