//! `modelgate provider add|remove|set-default|enable|disable|update` and
//! `route add|remove` through the real binary, on the commented fixture
//! config: each edit's file is a golden snapshot, every comment of the
//! original survives, undoing the edits gives the original bytes back, and a
//! refused edit exits 1 and leaves the file byte-identical.

use std::path::{Path, PathBuf};
use std::process::Command;

const ENV: &[(&str, &str)] = &[
    ("ANTHROPIC_API_KEY", "sk-ant-test"),
    ("OPENAI_KEY_1", "sk-openai-1"),
    ("OPENAI_KEY_2", "sk-openai-2"),
    ("AZURE_OPENAI_API_KEY", "azure-test"),
    ("CI_BOT_KEY", "mg-ci-bot-test"),
];

fn original() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cli/modelgate.yaml")).unwrap()
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `modelgate ARGS -c CONFIG` with exactly the environment above.
fn modelgate(config: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .env_clear()
        .envs(ENV.iter().copied())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run modelgate");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A copy of the fixture in a fresh directory.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modelgate.yaml");
    std::fs::write(&path, original()).unwrap();
    (dir, path)
}

/// Every comment of `text`: whole comment lines and trailing `# ...` parts.
fn comments(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            if t.starts_with('#') {
                Some(t.to_string())
            } else {
                l.find(" #").map(|i| l[i + 1..].to_string())
            }
        })
        .collect()
}

#[test]
fn an_edit_round_trip_keeps_every_comment() {
    let (dir, config) = scratch();
    let before = original();
    let wanted = comments(&before);
    assert!(wanted.len() > 20, "the fixture is well commented: {wanted:?}");

    let steps: &[(&str, &[&str])] = &[
        (
            "1_provider_add",
            &[
                "provider",
                "add",
                "ollama",
                "--name",
                "local",
                "--model",
                "llama3.1:8b",
                "--model",
                "qwen3",
                "--priority",
                "10",
            ],
        ),
        (
            "2_route_add",
            &[
                "route",
                "add",
                "llama*",
                "--provider",
                "local",
                "--fallback",
                "openai=gpt-4o",
            ],
        ),
        ("3_provider_disable", &["provider", "disable", "openrouter"]),
        ("4_provider_set_default", &["provider", "set-default", "openai"]),
        ("5_route_remove", &["route", "remove", "llama*"]),
        ("6_provider_remove", &["provider", "remove", "local"]),
    ];
    for (name, args) in steps {
        let r = modelgate(&config, args);
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert!(r.stdout.is_empty(), "{name}: notes go to stderr: {r:?}");
        let text = std::fs::read_to_string(&config).unwrap();
        for c in &wanted {
            assert!(text.contains(c.as_str()), "{name}: lost the comment `{c}`:\n{text}");
        }
        let v = modelgate(&config, &["config", "validate"]);
        assert_eq!(v.code, 0, "{name}: the result loads: {v:?}");
        let transcript = format!(
            "$ modelgate {}\n[exit {}]\n--- stderr\n{}--- modelgate.yaml\n{text}",
            args.join(" "),
            r.code,
            r.stderr.replace(&dir.path().display().to_string(), "<tmp>")
        );
        insta::assert_snapshot!(*name, transcript);
    }

    // Adding then removing gave the original bytes back; what is left is
    // exactly the two lasting changes.
    let expected = before
        .replace("default_provider: anthropic", "default_provider: openai")
        .replace(
            "openrouter: {type: openrouter, api_key_env_var: OPENROUTER_API_KEY}",
            "openrouter: {type: openrouter, api_key_env_var: OPENROUTER_API_KEY, enabled: false}",
        );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), expected);

    // And back: enable, set the default again.
    assert_eq!(modelgate(&config, &["provider", "enable", "openrouter"]).code, 0);
    assert_eq!(modelgate(&config, &["provider", "set-default", "anthropic"]).code, 0);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        before.replace(
            "openrouter: {type: openrouter, api_key_env_var: OPENROUTER_API_KEY}",
            "openrouter: {type: openrouter, api_key_env_var: OPENROUTER_API_KEY, enabled: true}",
        )
    );
}

#[test]
fn refused_edits_exit_1_and_change_nothing() {
    let (_dir, config) = scratch();
    let before = original();
    let refused = |args: &[&str], needles: &[&str]| {
        let r = modelgate(&config, args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
        for n in needles {
            assert!(r.stderr.contains(n), "{args:?}: `{n}` in\n{}", r.stderr);
        }
        assert_eq!(std::fs::read_to_string(&config).unwrap(), before, "{args:?}");
    };

    // A provider still referenced: every reference listed, and what to do.
    refused(
        &["provider", "remove", "anthropic"],
        &[
            "provider `anthropic` is still in use",
            "routes[0] (match `claude-haiku-*`) has it as fallbacks[0]",
            "routes[1] (header x-org-route: cheap) has it as fallbacks[0]",
            "routes[2] (match `*`) sends requests to it",
            "default_provider names it",
            "modelgate route remove GLOB",
            "modelgate provider disable anthropic",
        ],
    );
    refused(
        &["provider", "remove", "openai"],
        &["routes[0] (match `claude-haiku-*`) sends requests to it"],
    );
    // Duplicates.
    refused(
        &["provider", "add", "openai"],
        &["a provider named `openai` already exists", "--name"],
    );
    refused(
        &["route", "add", "claude-haiku-*", "--provider", "anthropic"],
        &[
            "already has routes[0] (match `claude-haiku-*`)",
            "route remove 'claude-haiku-*'",
        ],
    );
    // Unknown names.
    let known = "anthropic, azure-eu, openai, openrouter";
    refused(&["provider", "remove", "nope"], &["no provider `nope`", known]);
    refused(&["provider", "set-default", "nope"], &["no provider `nope`", known]);
    refused(&["provider", "enable", "nope"], &["no provider `nope`", known]);
    refused(&["provider", "disable", "nope"], &["no provider `nope`", known]);
    refused(
        &["provider", "update", "nope", "--priority", "1"],
        &["no provider `nope`", known],
    );
    refused(
        &["route", "add", "gpt-*", "--provider", "nope"],
        &["no provider `nope`", known, "modelgate provider add"],
    );
    refused(
        &["route", "add", "gpt-*", "--provider", "openai", "--fallback", "nope"],
        &["no provider `nope`"],
    );
    refused(
        &["route", "remove", "nope*"],
        &[
            "no rule",
            "`match: \"nope*\"`",
            "routes[0] (match `claude-haiku-*`) → openai as `gpt-4o-mini`, then anthropic",
        ],
    );
    refused(&["route", "remove", "--index", "9"], &["--index 9", "3 rules"]);
    refused(
        &["route", "add", "x*", "--provider", "openai", "--before", "nope"],
        &["--before `nope`", "routes[2] (match `*`)"],
    );
    // Types this build does not speak, and settings that would not load.
    refused(
        &["provider", "add", "vertex"],
        &["providers.vertex.project", "GOOGLE_CLOUD_PROJECT"],
    );
    refused(&["provider", "add", "acme"], &["unknown provider type `acme`"]);
    refused(
        &["provider", "add", "azure", "--name", "az2"],
        &["providers.az2.api_base"],
    );
    // Never a literal secret.
    refused(
        &["provider", "add", "openai", "--name", "o2", "--key-env", "sk-live-123"],
        &["never the key itself"],
    );
    refused(
        &["provider", "add", "openai", "--name", "o 2"],
        &["invalid provider name"],
    );
    refused(
        &["route", "add", "claude-[", "--provider", "openai"],
        &["not a valid glob"],
    );

    // Asking for what is already so changes nothing, successfully.
    for args in [
        &["provider", "enable", "openai"][..],
        &["provider", "disable", "azure-eu"][..],
        &["provider", "set-default", "anthropic"][..],
    ] {
        let r = modelgate(&config, args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stderr.contains("nothing changed"), "{r:?}");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), before, "{args:?}");
    }
}

#[test]
fn io_and_config_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.yaml");
    for args in [
        &["provider", "add", "openai"][..],
        &["provider", "remove", "openai"][..],
        &["route", "add", "*", "--provider", "a"][..],
        &["route", "remove", "*"][..],
        &["provider", "list"][..],
        &["route", "list"][..],
    ] {
        let r = modelgate(&absent, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
    }
    let r = modelgate(&absent, &["provider", "add", "openai"]);
    assert!(r.stderr.contains("modelgate config init"), "{r:?}");

    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "providers:\n  a: {type: anthropic, api_bsae: x}\n").unwrap();
    let r = modelgate(&broken, &["provider", "disable", "a"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("api_bsae") && r.stderr.contains("nothing was changed"),
        "{r:?}"
    );
}

#[test]
fn update_replaces_fields_in_place() {
    let (dir, config) = scratch();
    let r = modelgate(
        &config,
        &[
            "provider",
            "update",
            "openai",
            "--priority",
            "1",
            "--model",
            "gpt-5",
            "--model",
            "gpt-4o",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r2 = modelgate(
        &config,
        &["provider", "update", "anthropic", "--model", "claude-opus-4-8"],
    );
    assert_eq!(r2.code, 0, "{r2:?}");
    let text = std::fs::read_to_string(&config).unwrap();
    let expected = original()
        .replace(
            "    priority: 5\n    # models: [gpt-5]",
            "    priority: 1\n    # models: [gpt-5]",
        )
        .replace(
            "    # models: [gpt-5]   (not yet: waiting for the rate-limit increase)\n",
            "    models: [gpt-5, gpt-4o]\n    # models: [gpt-5]   (not yet: waiting for the rate-limit increase)\n",
        )
        .replace(
            "models: [claude-opus-4-8, claude-sonnet-4-5]",
            "models: [claude-opus-4-8]",
        );
    assert_eq!(text, expected);
    let shown = modelgate(&config, &["provider", "show", "openai"]);
    assert!(
        shown.stdout.contains("priority:  1") && shown.stdout.contains("models:    gpt-5, gpt-4o"),
        "{shown:?}"
    );
    assert!(
        r.stderr.contains("Updated provider `openai`") && r.stderr.contains("priority: 1"),
        "{}",
        r.stderr.replace(&dir.path().display().to_string(), "<tmp>")
    );
}

#[test]
fn edits_of_a_bare_file_create_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modelgate.yaml");
    std::fs::write(&config, "# just a listener\nlisten: 127.0.0.1:8080   # local\n").unwrap();

    let r = modelgate(&config, &["provider", "add", "anthropic", "--no-key"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("clients' own credentials are forwarded"), "{r:?}");
    let r = modelgate(
        &config,
        &[
            "provider",
            "add",
            "openai",
            "--key-env",
            "OAI_A",
            "--key-env",
            "OAI_B",
            "--disabled",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("warning: ") && r.stderr.contains("OAI_A"),
        "unset variables are reported: {r:?}"
    );
    let r = modelgate(&config, &["provider", "set-default", "anthropic"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = modelgate(
        &config,
        &["route", "add", "gpt-*", "--provider", "openai", "--header", "X-Team=ml"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("the only rule"), "{r:?}");
    let r = modelgate(&config, &["route", "add", "*", "--provider", "anthropic"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("routes[1]") && r.stderr.contains("the last rule"),
        "{r:?}"
    );
    // A new rule goes before the catch-all, and says where it went.
    let r = modelgate(
        &config,
        &["route", "add", "o*", "--provider", "openai", "--model", "o3"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("Added routes[1] (match `o*`)")
            && r.stderr.contains("before the catch-all rule, now routes[2]"),
        "{r:?}"
    );
    // --at-end is obeyed, with a warning that the rule can never match.
    let r = modelgate(&config, &["route", "add", "x*", "--provider", "openai", "--at-end"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("routes[3]") && r.stderr.contains("may never be used"),
        "{r:?}"
    );

    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "\
# just a listener
listen: 127.0.0.1:8080   # local
default_provider: anthropic
providers:
  anthropic:
    type: anthropic
  openai:
    type: openai
    keys: [{env: OAI_A}, {env: OAI_B}]
    enabled: false
routes:
  - match: \"gpt-*\"
    header: {name: x-team, value: ml}
    provider: openai
  - match: \"o*\"
    provider: openai
    model: o3
  - match: \"*\"
    provider: anthropic
  - match: \"x*\"
    provider: openai
"
    );
    let r = modelgate(&config, &["route", "remove", "--index", "3"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = modelgate(&config, &["route", "remove", "gpt-*", "--header", "x-team=ml"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = modelgate(&config, &["route", "list"]);
    assert_eq!(
        r.stdout,
        "routes[0]  match `o*`  →  openai as `o3`\nroutes[1]  match `*`  →  anthropic\notherwise   →  anthropic (default_provider)\n"
    );
}

#[test]
fn every_edit_command_has_a_manual() {
    for args in [
        &["provider", "add", "--help"][..],
        &["provider", "remove", "--help"][..],
        &["provider", "set-default", "--help"][..],
        &["provider", "enable", "--help"][..],
        &["provider", "disable", "--help"][..],
        &["provider", "update", "--help"][..],
        &["route", "add", "--help"][..],
        &["route", "remove", "--help"][..],
        &["config", "schema", "--help"][..],
        &["config", "set", "--help"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Example"), "{args:?}: examples in\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["route", "add", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("first match wins") && help.contains("catch-all") && help.contains("--at-end"),
        "{help}"
    );
}

/// `config set`: a top-level value changes in place with its comment, a
/// new key is appended, setting it back gives the original bytes, and a
/// value that would not load, a section or a nested key is refused with
/// the file untouched.
#[test]
fn config_set_round_trips_and_refuses() {
    let (_dir, config) = scratch();
    let before = original();
    let set = |key: &str, value: &str| modelgate(&config, &["config", "set", key, value]);
    let r = set("timeout", "300s");
    assert_eq!(r.code, 0, "{r:?}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("timeout: 300s"), "{text}");
    assert_eq!(comments(&text), comments(&before));
    // Back to what the fixture says: the original bytes.
    assert_eq!(set("timeout", "120").code, 0);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
    // A key the file does not have yet is added.
    let r = set("max_retries", "5");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(std::fs::read_to_string(&config).unwrap().ends_with("max_retries: 5\n"));
    // The value reads back as given and the gateway takes it.
    let r = modelgate(&config, &["config", "set", "log_format", "detailed"]);
    assert_eq!(r.code, 0, "{r:?}");
    let shown = modelgate(&config, &["config", "show"]);
    assert!(shown.stdout.contains("log_format: detailed"), "{}", shown.stdout);
    let now = std::fs::read_to_string(&config).unwrap();
    for (key, value, needle) in [
        ("max_retries", "many", "would not load"),
        ("default_provider", "nope", "no provider named `nope`"),
        ("cache", "on", "is a section"),
        ("cache.response.ttl", "5m", "top-level key"),
        ("colour", "blue", "has no key `colour`"),
    ] {
        let r = set(key, value);
        assert_eq!(r.code, 1, "{key}: {r:?}");
        assert!(r.stderr.contains(needle), "{key}: `{needle}` in {}", r.stderr);
        assert_eq!(std::fs::read_to_string(&config).unwrap(), now, "{key}");
    }
}
