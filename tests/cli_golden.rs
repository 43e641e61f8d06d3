//! Golden output of every read-only command on one realistic, commented
//! config (`tests/fixtures/cli/modelgate.yaml`), through the real binary.
//!
//! Each snapshot holds the command, its exit code, its stdout and its
//! stderr. The environment is exactly the one given here (every other
//! variable removed), and anything that varies between machines or builds
//! (the checkout's path, temporary directories, the config version digest)
//! is normalised, so a snapshot changes only when the output does.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The provider and gateway-key variables the fixture reads. OPENROUTER_API_KEY
/// and MODELGATE_LISTEN are deliberately left unset (a warning, a default).
const ENV: &[(&str, &str)] = &[
    ("ANTHROPIC_API_KEY", "sk-ant-test"),
    ("OPENAI_KEY_1", "sk-openai-1"),
    ("OPENAI_KEY_2", "sk-openai-2"),
    ("AZURE_OPENAI_API_KEY", "azure-test"),
    ("CI_BOT_KEY", "mg-ci-bot-test"),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/cli/modelgate.yaml")
}

struct Golden {
    tmp: tempfile::TempDir,
}

impl Golden {
    fn new() -> Golden {
        Golden {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// `modelgate ARGS` (with `-c FIXTURE` unless `config` is false), run in
    /// an empty temporary directory, as a normalised transcript.
    fn run(&self, args: &[&str], config: bool) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelgate"));
        cmd.env_clear()
            .envs(ENV.iter().copied())
            .current_dir(self.tmp.path())
            .args(args);
        if config {
            cmd.arg("-c").arg(fixture());
        }
        let out = cmd.output().expect("run modelgate");
        let text = format!(
            "$ modelgate {}{}\n[exit {}]\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            if config { " -c <fixture>" } else { "" },
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.normalise(&text)
    }

    fn normalise(&self, text: &str) -> String {
        let text = text
            .replace(&fixture().display().to_string(), "<fixture>")
            .replace(&self.tmp.path().display().to_string(), "<tmp>")
            .replace(&repo().display().to_string(), "<repo>");
        let version = regex::Regex::new(r"version [0-9a-f]{16}").unwrap();
        version.replace_all(&text, "version <version>").into_owned()
    }
}

fn golden(args: &[&str]) -> String {
    Golden::new().run(args, true)
}

#[test]
fn config_show() {
    insta::assert_snapshot!("config_show", golden(&["config", "show"]));
}

#[test]
fn config_validate() {
    insta::assert_snapshot!("config_validate", golden(&["config", "validate"]));
}

#[test]
fn config_lint() {
    insta::assert_snapshot!("config_lint", golden(&["config", "lint"]));
}

#[test]
fn config_export_json() {
    let out = golden(&["config", "export", "--format", "json"]);
    assert!(!out.contains("sk-"), "no secret: {out}");
    insta::assert_snapshot!("config_export_json", out);
}

#[test]
fn config_env_check() {
    insta::assert_snapshot!("config_env_check", golden(&["config", "env-check"]));
}

#[test]
fn config_diff() {
    let g = Golden::new();
    let changed = g.tmp.path().join("changed.yaml");
    let text = std::fs::read_to_string(fixture()).unwrap();
    let text = text
        .replace("timeout: 120 ", "timeout: 300s")
        .replace("    priority: 5\n", "    priority: 1\n")
        .replace("    enabled: false\n", "")
        .replace(
            "  - name: ci-bot   # build pipelines\n    key_env: CI_BOT_KEY\n    budget: {usd: 50, period: daily}\n",
            "",
        );
    std::fs::write(&changed, text).unwrap();
    let a = fixture().display().to_string();
    let b = changed.display().to_string();
    insta::assert_snapshot!("config_diff", g.run(&["config", "diff", &a, &b], false));
    insta::assert_snapshot!("config_diff_same", g.run(&["config", "diff", &a, &a], false));
    // claude-code-model-gateway's top-level name: the same answer.
    let top = g.run(&["config-diff", &a, &b], false);
    let nested = g.run(&["config", "diff", &a, &b], false);
    assert_eq!(top.split_once('\n').unwrap().1, nested.split_once('\n').unwrap().1);
}

#[test]
fn validate_config_is_config_validate() {
    let g = Golden::new();
    let top = g.run(&["validate-config"], true);
    let nested = g.run(&["config", "validate"], true);
    assert_eq!(top.split_once('\n').unwrap().1, nested.split_once('\n').unwrap().1);
}

#[test]
fn config_schema_field() {
    let g = Golden::new();
    let mut golden = String::new();
    for field in [
        "timeout",
        "providers.*.type",
        "cache.response",
        "routes.*.match",
        "cache.nope",
    ] {
        golden.push_str(&g.run(&["config", "schema", "--field", field], false));
        golden.push('\n');
    }
    insta::assert_snapshot!("config_schema_field", golden);
}

#[test]
fn config_schema_top_level() {
    let g = Golden::new();
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["config", "schema"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&out.stdout).expect("the schema is JSON");
    let names: Vec<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    insta::assert_snapshot!(
        "config_schema_top_level",
        format!(
            "$schema: {}\ntitle: {}\nadditionalProperties: {}\nproperties:\n  {}\n",
            schema["$schema"],
            schema["title"],
            schema["additionalProperties"],
            names.join("\n  ")
        )
    );

    // --output writes the same document.
    let file = g.tmp.path().join("modelgate.schema.json");
    let r = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["config", "schema", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(0));
    assert!(r.stdout.is_empty());
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, schema);
}

#[test]
fn provider_list() {
    insta::assert_snapshot!("provider_list", golden(&["provider", "list"]));
}

#[test]
fn provider_list_builtins() {
    insta::assert_snapshot!("provider_list_builtins", golden(&["provider", "list", "--builtins"]));
}

#[test]
fn provider_show() {
    insta::assert_snapshot!("provider_show_openai", golden(&["provider", "show", "openai"]));
    insta::assert_snapshot!("provider_show_anthropic", golden(&["provider", "show", "anthropic"]));
    insta::assert_snapshot!("provider_show_unknown", golden(&["provider", "show", "nope"]));
}

#[test]
fn route_list() {
    insta::assert_snapshot!("route_list", golden(&["route", "list"]));
}

#[test]
fn route_resolve() {
    insta::assert_snapshot!(
        "route_resolve_haiku",
        golden(&["route", "resolve", "--model", "claude-haiku-4-5-20251001"])
    );
    insta::assert_snapshot!(
        "route_resolve_header",
        golden(&[
            "route",
            "resolve",
            "--model",
            "claude-opus-4-8",
            "--header",
            "x-org-route: cheap"
        ])
    );
}

#[test]
fn route_test() {
    insta::assert_snapshot!(
        "route_test_haiku",
        golden(&["route", "test", "--model", "claude-haiku-4-5-20251001"])
    );
    // The header rule's primary has no credential here: a problem, exit 1.
    insta::assert_snapshot!(
        "route_test_header",
        golden(&[
            "route",
            "test",
            "--model",
            "claude-opus-4-8",
            "--header",
            "x-org-route: cheap"
        ])
    );
}

#[test]
fn keys_list() {
    insta::assert_snapshot!("keys_list", golden(&["keys", "list"]));
    insta::assert_snapshot!("keys_list_json", golden(&["keys", "list", "--json"]));
}

#[test]
fn usage_without_a_ledger() {
    insta::assert_snapshot!(
        "usage_no_ledger",
        golden(&["usage", "--db", "./modelgate.db", "--by", "team"])
    );
}

/// `logging formats|levels|test-redaction`: answered locally, text and JSON.
#[test]
fn logging_local_commands() {
    let g = Golden::new();
    let mut golden = String::new();
    for args in [
        &["logging", "formats"][..],
        &["logging", "formats", "--format", "json"][..],
        &["logging", "levels"][..],
        &["logging", "test-redaction"][..],
        &["logging", "test-redaction", "--format", "json", "no secret here"][..],
    ] {
        golden.push_str(&g.run(args, false));
        golden.push('\n');
    }
    insta::assert_snapshot!("logging_local_commands", golden);
}

/// `health retry-policies`: the config's failure handling, text and JSON.
#[test]
fn health_retry_policies() {
    let g = Golden::new();
    let text = g.run(&["health", "retry-policies"], true);
    let json = g.run(&["health", "retry-policies", "--format", "json"], true);
    insta::assert_snapshot!("health_retry_policies", format!("{text}\n{json}"));
}

/// `route list --format json`: the rules as the file has them.
#[test]
fn route_list_json() {
    insta::assert_snapshot!("route_list_json", golden(&["route", "list", "--format", "json"]));
}
