//! The shipped deployments start safe: none is an open relay for the
//! provider key it is given, and none serves admin endpoints to the network.
//!
//! Each config under `deploy/` (the Kubernetes one from inside its
//! ConfigMap) is validated as `serve` would load it, with a provider key in
//! the environment: it must pass as shipped, and fail, naming `keys` and
//! `allow_unauthenticated`, once its `keys:` line is taken out. The image's
//! default (`conf/modelgate.yaml` on `0.0.0.0`) must refuse a provider key.

use std::path::Path;
use std::process::Command;

fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("modelgate.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelgate"));
    cmd.args(["config", "validate", "-c"]).arg(&path);
    // What the fleet configs read from the environment (the Kubernetes
    // Secret, the compose file's PGPASSWORD), with plausible values: only
    // loaded and checked here, never connected to.
    let out = cmd
        .env("ANTHROPIC_API_KEY", "sk-ant-test-provider-key")
        .env(
            "MODELGATE_STORE_URL",
            "postgres://modelgate:test-pg-password@postgres:5432/modelgate?sslmode=require",
        )
        .env("MODELGATE_REDIS_URL", "rediss://:test-redis-password@redis:6380/0")
        .env("PGPASSWORD", "test-pg-password")
        .env_remove("RUST_LOG")
        .output()
        .expect("run modelgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn shipped(path: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path);
    if !path.ends_with("configmap.yaml") {
        return text;
    }
    // The config is the ConfigMap's `modelgate.yaml: |` block, indented by four.
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("modelgate.yaml: |") {
            inside = true;
            continue;
        }
        if inside {
            out.push_str(line.strip_prefix("    ").unwrap_or(line));
            out.push('\n');
        }
    }
    out
}

fn without_keys(yaml: &str) -> String {
    let out: String = yaml
        .lines()
        .filter(|l| l.trim() != "keys: []")
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(out.len(), yaml.len(), "the shipped config has a `keys: []` line");
    out
}

#[test]
fn shipped_deploy_configs_start_safe() {
    for path in [
        "deploy/compose/modelgate.yaml",
        "deploy/compose/fleet/modelgate.yaml",
        "deploy/systemd/modelgate.yaml",
        "deploy/k8s/configmap.yaml",
    ] {
        let yaml = shipped(path);
        let (ok, out) = validate(&yaml);
        assert!(ok, "{path} as shipped: {out}");
        let (ok, out) = validate(&without_keys(&yaml));
        assert!(!ok, "{path} without keys must be refused: {out}");
        assert!(
            out.contains("`keys`") && out.contains("allow_unauthenticated"),
            "{path}: the refusal says what to add: {out}"
        );
        assert!(!out.contains("sk-ant-test-provider-key"), "{path}: {out}");
        assert!(
            !out.contains("test-pg-password") && !out.contains("test-redis-password"),
            "{path}: {out}"
        );
    }
}

/// The fleet configs take the store and Redis from the environment and share
/// them: a replica started without them must not quietly fall back to a
/// per-pod SQLite file or per-process counters.
#[test]
fn fleet_configs_use_the_shared_store_and_redis() {
    for path in ["deploy/compose/fleet/modelgate.yaml", "deploy/k8s/configmap.yaml"] {
        let yaml = shipped(path);
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).expect(path);
        let url = doc["store"]["url"].as_str().unwrap_or_default();
        assert!(
            url.starts_with("postgres://") || url.starts_with("${"),
            "{path}: store.url {url}"
        );
        assert!(doc["store"]["spool"].as_str().is_some(), "{path}: store.spool");
        assert_eq!(doc["state"]["backend"].as_str(), Some("redis"), "{path}");
        assert!(doc["state"]["redis_url"].as_str().is_some(), "{path}: state.redis_url");
        assert!(
            doc["keys"].as_sequence().is_some_and(|k| k.is_empty()),
            "{path}: keys: []"
        );
    }
}

#[test]
fn the_image_default_refuses_a_provider_key_on_all_interfaces() {
    let yaml = shipped("conf/modelgate.yaml");
    let (ok, out) = validate(&yaml);
    assert!(ok, "on loopback it is the local default: {out}");
    // What the Dockerfile's `--listen 0.0.0.0:8080` makes of it.
    let public = yaml.replace("listen: 127.0.0.1:8080", "listen: 0.0.0.0:8080");
    assert_ne!(public, yaml);
    let (ok, out) = validate(&public);
    assert!(!ok, "on all interfaces with a provider key: {out}");
    let (ok, out) = validate(&format!("{public}allow_unauthenticated: true\n"));
    assert!(ok, "the explicit opt-in: {out}");
}
