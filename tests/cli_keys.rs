//! `modelgate keys create|list|revoke` through the real binary: the key it
//! prints works against a running gateway until it is revoked, the file it
//! writes keeps comments and order (golden), and refusals change nothing.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `modelgate ARGS -c CONFIG`, with no proxy variables.
fn modelgate(config: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelgate"));
    cmd.args(args).arg("-c").arg(config);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run modelgate");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `keys create` succeeded and printed exactly one well-formed key.
fn created_key(r: &Run) -> String {
    assert_eq!(r.code, 0, "{r:?}");
    let key = r.stdout.strip_suffix('\n').expect("one line on stdout");
    assert!(!key.contains('\n'), "only the key on stdout: {r:?}");
    assert!(
        key.len() == 46 && key.starts_with("mg-") && key[3..].bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key}"
    );
    assert!(r.stderr.contains("it is shown once"), "{r:?}");
    key.to_string()
}

async fn send(gw: &Gateway, key: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"claude-opus-4-8","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .expect("request to the gateway")
}

/// Poll (bounded: 400 × 25 ms) until a request with `key` gets `want`, and
/// return the last status seen. Reloads are asynchronous, hence the poll.
async fn until_status(gw: &Gateway, key: &str, want: u16) -> u16 {
    let mut last = 0;
    for _ in 0..400 {
        last = send(gw, key).await.status().as_u16();
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_key_works_until_it_is_revoked() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: anthropic\nproviders:\n  anthropic: {{type: anthropic, api_base: \"{}\", api_key: sk-upstream}}\nkeys:\n  - name: ops\n    key_sha256: \"{}\"\n",
        up.base_url(),
        sha256_hex("mg-ops")
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let config = gw.config_path();

    let key = created_key(&modelgate(
        &config,
        &[
            "keys", "create", "alice", "--team", "platform", "--rpm", "1000", "--model", "claude-*",
        ],
    ));
    let file = std::fs::read_to_string(&config).unwrap();
    let hash = sha256_hex(&key);
    assert!(file.contains(&format!("key_sha256: \"{hash}\"")), "{file}");
    assert!(!file.contains(&key), "the key itself is never stored: {file}");

    // The listing names the key, never its secret or hash.
    let r = modelgate(&config, &["keys", "list"]);
    assert_eq!(r.code, 0, "{r:?}");
    let alice = r.stdout.lines().find(|l| l.starts_with("alice")).expect("alice listed");
    for cell in ["platform", "yes", "hashed", "claude-*", "1000"] {
        assert!(alice.contains(cell), "{cell}: {alice}");
    }
    assert!(r.stdout.contains("ops"), "{r:?}");
    let r = modelgate(&config, &["keys", "list", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rows[1]["name"], "alice");
    assert_eq!(rows[1]["team"], "platform");
    assert_eq!(rows[1]["rpm"], 1000);
    assert_eq!(rows[1]["key"], "hashed");
    for out in [&r.stdout, &modelgate(&config, &["keys", "list"]).stdout] {
        assert!(
            !out.contains(&key) && !out.contains(&hash) && !out.contains(&sha256_hex("mg-ops")),
            "no secret: {out}"
        );
    }

    // The running gateway takes it on reload (the file watch, or SIGHUP).
    assert!(gw.signal("HUP"));
    assert_eq!(until_status(&gw, &key, 200).await, 200, "{}", gw.logs());
    let seen = up.requests();
    let last = seen.last().expect("the upstream saw the request");
    assert_eq!(last.header("x-api-key").as_deref(), Some("sk-upstream"));

    let r = modelgate(&config, &["keys", "revoke", "alice"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("Revoked key `alice`"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let file = std::fs::read_to_string(&config).unwrap();
    assert!(!file.contains("alice") && !file.contains(&hash), "{file}");

    // A reload refuses it...
    assert!(gw.signal("HUP"));
    assert_eq!(until_status(&gw, &key, 401).await, 401, "{}", gw.logs());

    // ...and so does a restarted gateway, from its first request.
    let text = file.replace(&gw.addr.to_string(), "{listen}");
    drop(gw);
    let gw = Gateway::start_async(&text, &[]).await;
    let resp = send(&gw, &key).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(body["error"]["message"], "invalid gateway key", "{body}");
    assert_eq!(send(&gw, "mg-ops").await.status(), 200, "the other key still works");
}

/// A config with comments everywhere an edit could disturb them.
const COMMENTED: &str = "\
# modelgate for the platform team
listen: 127.0.0.1:8080   # local only
default_provider: anthropic

providers:
  anthropic:
    type: anthropic
    api_key: sk-test   # a test literal

# Gateway keys: one per developer.
keys:
  # the on-call rotation
  - name: ops
    team: platform
    key_sha256: \"d7fa7223ca081f01b36124125a23d3eef2ecda979e2cb03990ed20ef2f93586d\"   # rotated 2025-01
    rate_limit: {rpm: 600}

  - name: ci   # build bots
    key_sha256: \"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b\"
    budget: {usd: 50, period: daily}
    # models: [\"claude-haiku-*\"]   (off while testing)

# Teams share limits.
teams:
  platform:
    budget: {usd: 5000, period: monthly}   # finance approved
";

#[test]
fn create_create_revoke_keeps_comments_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modelgate.yaml");
    std::fs::write(&config, COMMENTED).unwrap();

    let alice = created_key(&modelgate(
        &config,
        &[
            "keys",
            "create",
            "alice",
            "--team",
            "platform",
            "--budget",
            "200/monthly",
            "--rpm",
            "120",
            "--tpm",
            "400000",
            "--model",
            "claude-*",
        ],
    ));
    let bob = created_key(&modelgate(
        &config,
        &["keys", "create", "bob@example.com", "--budget", "5"],
    ));
    let r = modelgate(&config, &["keys", "revoke", "ci"]);
    assert_eq!(r.code, 0, "{r:?}");

    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&sha256_hex(&alice), "<sha256 of alice's key>")
        .replace(&sha256_hex(&bob), "<sha256 of bob's key>");
    insta::assert_snapshot!("after_create_create_revoke", text);

    let r = modelgate(&config, &["config", "validate"]);
    assert_eq!(r.code, 0, "the result loads: {r:?}");
}

#[test]
fn refusals_change_nothing_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modelgate.yaml");
    std::fs::write(&config, COMMENTED).unwrap();
    let refused = |args: &[&str], needles: &[&str]| {
        let r = modelgate(&config, args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "no key printed: {r:?}");
        for n in needles {
            assert!(r.stderr.contains(n), "{args:?}: `{n}` in {r:?}");
        }
        assert_eq!(std::fs::read_to_string(&config).unwrap(), COMMENTED, "{args:?}");
    };

    refused(&["keys", "create", "ops"], &["`ops` already exists", "keys revoke ops"]);
    refused(
        &["keys", "create", "zed", "--budget", "200/yearly"],
        &["--budget `200/yearly`", "daily, weekly, monthly, total"],
    );
    refused(&["keys", "create", "zed", "--budget", "lots"], &["not a number"]);
    refused(&["keys", "create", "two words"], &["invalid key name"]);
    refused(&["keys", "revoke", "zed"], &["no key named `zed`", "ops, ci"]);
    // A bad glob is caught by validating the result, and located.
    refused(
        &["keys", "create", "zed", "--model", "claude-["],
        &["keys[2].models[0]", "line"],
    );

    let r = modelgate(&dir.path().join("absent.yaml"), &["keys", "create", "zed"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("modelgate config init") && r.stdout.is_empty(),
        "{r:?}"
    );
}

#[test]
fn an_unset_key_env_blocks_create_but_not_list_or_revoking_it() {
    const VAR: &str = "MODELGATE_CLI_KEYS_TEST_UNSET";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modelgate.yaml");
    let text = format!(
        "listen: 127.0.0.1:8080\nproviders:\n  a: {{type: anthropic}}\nkeys:\n  - {{name: svc, key_env: {VAR}}}\n"
    );
    std::fs::write(&config, &text).unwrap();

    // The file does not load here (the variable is unset): report, don't bypass.
    let r = modelgate(&config, &["keys", "create", "alice"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(VAR) && r.stderr.contains("line 5") && r.stderr.contains("nothing was changed"),
        "{r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);

    let r = modelgate(&config, &["keys", "list"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("env:{VAR}")), "{r:?}");

    // Revoking the broken entry makes the file load again; the last key
    // leaves `keys: []` (not passthrough-auth), and says so.
    let r = modelgate(&config, &["keys", "revoke", "svc"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("last key"), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "listen: 127.0.0.1:8080\nproviders:\n  a: {type: anthropic}\nkeys: []\n"
    );
}

#[test]
fn the_first_key_creates_the_section_and_says_auth_is_now_required() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modelgate.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:8080\r\nproviders:\r\n  a: {type: anthropic}\r\n",
    )
    .unwrap();
    let r = modelgate(&config, &["keys", "list"]);
    assert!(r.code == 0 && r.stderr.contains("passthrough-auth"), "{r:?}");

    let r = modelgate(&config, &["keys", "create", "alice"]);
    let key = created_key(&r);
    assert!(r.stderr.contains("ends passthrough-auth mode"), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        format!(
            "listen: 127.0.0.1:8080\r\nproviders:\r\n  a: {{type: anthropic}}\r\nkeys:\r\n  - name: alice\r\n    key_sha256: \"{}\"\r\n",
            sha256_hex(&key)
        ),
        "CRLF kept"
    );
}

#[test]
fn teams_commands_need_a_postgres_store_and_say_to_edit_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modelgate.yaml");
    std::fs::write(&config, COMMENTED).unwrap();
    for args in [
        &["teams", "create", "research", "--rpm", "10"][..],
        &["teams", "list"],
        &["teams", "update", "research", "--no-rpm"],
        &["teams", "delete", "research"],
    ] {
        let r = modelgate(&config, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("need a PostgreSQL store") && r.stderr.contains("edit `teams:`"),
            "{args:?}: {r:?}"
        );
        assert!(r.stdout.is_empty(), "{r:?}");
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), COMMENTED);
    let r = modelgate(&dir.path().join("absent.yaml"), &["teams", "list"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("absent.yaml"), "{r:?}");
}
