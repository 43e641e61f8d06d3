//! Claude on the clouds that serve the Messages API itself, as upstreams:
//! `foundry` (Microsoft Foundry) and `claude_aws` (Claude Platform on AWS)
//! get the client's body byte for byte at their own base, with their key
//! as `x-api-key` and, for Claude Platform on AWS, the workspace header.

mod support;

use serde_json::json;
use support::*;

async fn send(gw: &Gateway, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages?beta=true"))
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn foundry_and_claude_platform_on_aws_get_the_messages_api() {
    let foundry = MockUpstream::start().await;
    let aws = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\nproviders:\n  azure-claude: {{type: foundry, api_base: \"{}/anthropic\", api_key: foundry-key-123}}\n  \
         aws-claude: {{type: claude_aws, api_base: \"{}\", api_key: sk-ant-aws-456, workspace_id: wrkspc_01abc}}\n\
         routes:\n  - {{match: 'claude-opus-*', provider: aws-claude}}\n  - {{match: '*', provider: azure-claude}}\n",
        foundry.base_url(),
        aws.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(send(&gw, &body).await.status(), 200);
    let seen = foundry.requests().pop().unwrap();
    assert_eq!(seen.path(), "/anthropic/v1/messages");
    assert_eq!(seen.header("x-api-key").as_deref(), Some("foundry-key-123"));
    assert_eq!(
        seen.header("anthropic-beta").as_deref(),
        Some("interleaved-thinking-2025-05-14")
    );
    assert_eq!(seen.json(), body, "the body as the client sent it");

    let body = json!({"model": "claude-opus-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(send(&gw, &body).await.status(), 200);
    let seen = aws.requests().pop().unwrap();
    assert_eq!(seen.path(), "/v1/messages");
    assert_eq!(seen.header("x-api-key").as_deref(), Some("sk-ant-aws-456"));
    assert_eq!(seen.header("anthropic-workspace-id").as_deref(), Some("wrkspc_01abc"));
}

#[test]
fn bases_come_from_the_resource_and_the_region() {
    let env = |_: &str| None;
    let yaml = "providers:\n  f: {type: foundry, resource: my-res, api_key: k}\n  a: {type: claude_aws, region: us-east-1, workspace_id: wrkspc_1, api_key: k}\ndefault_provider: f\n";
    let snap =
        modelgate::runtime::Snapshot::build(modelgate::config::load::parse_str(yaml, &env).unwrap(), &env).unwrap();
    let f = &snap.providers["f"].base;
    assert_eq!(
        (f.tls, f.host.as_str(), f.port),
        (true, "my-res.services.ai.azure.com", 443)
    );
    assert_eq!(f.join("/v1/messages"), "/anthropic/v1/messages");
    let a = &snap.providers["a"].base;
    assert_eq!(
        (a.host.as_str(), a.join("/v1/messages").as_str()),
        ("aws-external-anthropic.us-east-1.api.aws", "/v1/messages")
    );
    for bad in [
        "providers:\n  f: {type: foundry, api_key: k}\n",
        "providers:\n  f: {type: foundry, resource: 'a.b/c', api_key: k}\n",
        "providers:\n  a: {type: claude_aws, region: us-east-1, api_key: k}\n",
    ] {
        let config = modelgate::config::load::parse_str(bad, &env).unwrap();
        assert!(modelgate::runtime::Snapshot::build(config, &env).is_err(), "{bad}");
    }
}

#[test]
fn provider_add_writes_the_platform_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modelgate.yaml");
    std::fs::write(&path, "listen: 127.0.0.1:8080\n").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .args(args)
            .arg("-c")
            .arg(&path)
            .env("FOUNDRY_API_KEY", "k")
            .env("ANTHROPIC_AWS_API_KEY", "k")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "provider",
        "add",
        "foundry",
        "--resource",
        "my-res",
        "--key-env",
        "FOUNDRY_API_KEY",
    ]);
    run(&[
        "provider",
        "add",
        "claude_aws",
        "--region",
        "us-east-1",
        "--workspace-id",
        "wrkspc_1",
    ]);
    run(&["config", "validate"]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("resource: my-res") && text.contains("workspace_id: wrkspc_1"),
        "{text}"
    );
}
