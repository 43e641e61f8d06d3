//! Command-line behaviour that reads the config file only.

use std::process::Command;

fn run(args: &[&str], yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modelgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const CONFIG: &str = "default_provider: anthropic
providers:
  anthropic: {type: anthropic, api_key: sk-a, models: [claude-opus-4-8]}
  backup: {type: anthropic, api_key: sk-b, models: [claude-opus-4-8], priority: 5}
  oai:
    type: openai
    keys: [{api_key: k1, weight: 3}, {api_key: k2}]
routes:
  - {match: 'claude-haiku-*', provider: oai, model: gpt-4o-mini, fallbacks: [{provider: anthropic, model: claude-haiku-4-5}]}
  - {header: {name: x-org-route, value: cheap}, provider: oai, model: gpt-4o-mini}
";

#[test]
fn route_resolve_prints_the_plan_and_why() {
    let (ok, out) = run(&["route", "resolve", "--model", "claude-haiku-4-5-20251001"], CONFIG);
    assert!(ok, "{out}");
    assert!(out.contains("routes[0] (match `claude-haiku-*`): matches"), "{out}");
    assert!(
        out.contains("1. oai [openai] model `gpt-4o-mini`; accounts: oai#1 (weight 3), oai#2 (weight 1)"),
        "{out}"
    );
    assert!(
        out.contains("2. anthropic [anthropic] model `claude-haiku-4-5`"),
        "{out}"
    );
    assert!(!out.contains("k1") && !out.contains("sk-a"), "no secrets: {out}");

    let (ok, out) = run(&["route", "resolve", "--model", "claude-opus-4-8"], CONFIG);
    assert!(ok, "{out}");
    assert!(out.contains("does not match `claude-haiku-*`"), "{out}");
    assert!(out.contains("header x-org-route is absent"), "{out}");
    assert!(out.contains("plan (default_provider)"), "{out}");
    assert!(
        out.contains("2. backup [anthropic]"),
        "providers listing the model follow: {out}"
    );

    let (ok, out) = run(
        &["route", "test", "--model", "x", "--header", "x-org-route: cheap"],
        CONFIG,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("routes[1] (header x-org-route: cheap): matches") && out.trim_end().ends_with("ok"),
        "{out}"
    );

    let (ok, out) = run(&["route", "list"], CONFIG);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "routes[0]  match `claude-haiku-*`  →  oai as `gpt-4o-mini`, then anthropic as `claude-haiku-4-5`"
        ),
        "{out}"
    );
}

#[test]
fn config_export_lint_env_check_and_diff() {
    let (ok, out) = run(&["config", "export", "--format", "json"], CONFIG);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["providers"]["anthropic"]["api_key"], "***", "secrets redacted");
    assert_eq!(v["max_retries"], 2, "defaults filled in");

    let (ok, out) = run(&["config", "lint"], CONFIG);
    assert!(ok, "{out}");
    assert!(
        out.contains("providers.anthropic.api_key: a literal credential"),
        "{out}"
    );

    let (ok, out) = run(&["config", "env-check"], "providers:\n  a: {type: anthropic, api_key_env_var: MG_SURELY_UNSET_1}\n# ${IGNORED_IN_COMMENT}\nlisten: \"${MG_SURELY_UNSET_2:-127.0.0.1:9}\"\n");
    assert!(ok, "only optional variables are missing: {out}");
    assert!(
        out.contains("MISSING  MG_SURELY_UNSET_1 (provider credential)"),
        "{out}"
    );
    assert!(
        out.contains("MG_SURELY_UNSET_2 (has a default)") && !out.contains("IGNORED_IN_COMMENT"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, CONFIG).unwrap();
    std::fs::write(&b, CONFIG.replace("priority: 5", "priority: 7")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["config", "diff"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "~ providers.backup.priority: 5 -> 7");
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["config", "diff"])
        .arg(&a)
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no differences");
}

#[test]
fn config_doctor_gives_a_verdict_per_check() {
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "listen: {gw}\ndefault_provider: up\nproviders:\n  up: {{type: anthropic, api_base: 'http://{}'}}\n  down: {{type: openai, api_base: 'http://{dead}/v1'}}\n",
        live.local_addr().unwrap(),
        gw = live.local_addr().unwrap(),
    );
    let (ok, out) = run(&["config", "doctor"], &yaml);
    assert!(!ok, "a failed check fails the command: {out}");
    assert!(
        out.lines().any(|l| l.starts_with("ok") && l.contains("config ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("provider `up`") && l.contains("reachable")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("provider `down`") && l.contains("TCP connect")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("account `down`") && l.contains("no credential")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("ok") && l.contains("gateway at")),
        "{out}"
    );
}

#[test]
fn provider_list_and_show() {
    let (ok, out) = run(&["provider", "list"], CONFIG);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("anthropic") && lines[0].contains("enabled, default"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("oai")
            && lines[2].contains("https://api.openai.com/v1")
            && lines[2].ends_with("accounts 2"),
        "{out}"
    );

    let (ok, out) = run(&["provider", "show", "oai"], CONFIG);
    assert!(ok, "{out}");
    assert!(
        out.contains("account:   oai#1 (weight 3) — credential configured"),
        "{out}"
    );
    assert!(out.contains("used by:   routes[0], routes[1]"), "{out}");
    assert!(!out.contains("k1"), "no secrets: {out}");

    let (ok, out) = run(&["provider", "show", "nope"], CONFIG);
    assert!(!ok && out.contains("configured: anthropic, backup, oai"), "{out}");

    let (ok, out) = run(&["provider", "list", "--builtins"], CONFIG);
    assert!(
        ok && out.contains("azure       default api_base: (none: give api_base)"),
        "{out}"
    );
}
