//! Claude on the clouds that serve the Messages API itself, as upstreams:
//! `foundry` (Microsoft Foundry), `claude_aws` (Claude Platform on AWS),
//! `bedrock_messages` (Claude in Amazon Bedrock's Messages API) and
//! `claude_gcp` (Claude on Google Cloud), each against a mock of the
//! platform (`support::clouds`) that checks its credential (key, SigV4,
//! Entra ID token, Google token) and refuses what the platform refuses.
//! The request each one receives is a golden snapshot.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::clouds::{Auth, EntraEndpoint, Platform, AWS_ENV};
use support::*;

/// A recorded request with what changes between runs masked: the port,
/// SigV4's date and signature. Headers sorted by name.
fn shape(rec: &Recorded) -> serde_json::Value {
    let mut headers: Vec<(String, String)> = rec
        .headers
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v).into_owned();
            let v = match n.as_str() {
                "host" => v.split(':').next().unwrap_or_default().to_string() + ":PORT",
                "x-amz-date" => "DATE".into(),
                "authorization" if v.starts_with("AWS4-HMAC-SHA256") => {
                    let scope = v.split("Credential=").nth(1).unwrap_or_default();
                    let parts: Vec<&str> = scope.split(',').next().unwrap_or_default().split('/').collect();
                    let signed = v.split("SignedHeaders=").nth(1).unwrap_or_default();
                    format!(
                        "AWS4-HMAC-SHA256 Credential={}/DATE/{}/{}/{}, SignedHeaders={}, Signature=SIG",
                        parts.first().unwrap_or(&""),
                        parts.get(2).unwrap_or(&""),
                        parts.get(3).unwrap_or(&""),
                        parts.get(4).unwrap_or(&""),
                        signed.split(',').next().unwrap_or_default()
                    )
                }
                "x-amz-content-sha256" => "SHA256(body)".into(),
                _ => v,
            };
            (n.clone(), v)
        })
        .collect();
    headers.sort();
    json!({"method": rec.method, "uri": rec.uri, "headers": headers, "body": rec.json()})
}

/// A request as Claude Code sends one: betas, a beta-paired field, a
/// deferred tool.
fn claude_code_request(model: &str, stream: bool) -> serde_json::Value {
    json!({
        "model": model, "max_tokens": 64, "stream": stream,
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "tools": [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}, "defer_loading": true}],
        "messages": [{"role": "user", "content": "hi"}]
    })
}

async fn send_as_claude_code(gw: &Gateway, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages?beta=true"))
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,tool-search-tool-2025-10-19",
        )
        .json(body)
        .send()
        .await
        .unwrap()
}

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
            .env("BEDROCK_KEY", "k")
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
    run(&[
        "provider",
        "add",
        "bedrock_messages",
        "--region",
        "us-west-2",
        "--endpoint",
        "mantle",
        "--key-env",
        "BEDROCK_KEY",
    ]);
    run(&[
        "provider",
        "add",
        "claude_gcp",
        "--project",
        "proj-1",
        "--workspace-id",
        "wrkspc_g1",
        "--no-key",
    ]);
    run(&["config", "validate"]);
    let text = std::fs::read_to_string(&path).unwrap();
    for want in [
        "resource: my-res",
        "workspace_id: wrkspc_1",
        "type: bedrock_messages",
        "endpoint: mantle",
        "type: claude_gcp",
        "workspace_id: wrkspc_g1",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
}

#[tokio::test]
async fn bedrock_messages_on_mantle_gets_bedrock_ids_and_no_betas() {
    let up = Platform::bedrock_messages(
        Auth::Header("x-api-key", "bedrock-api-key-1".into()),
        "/anthropic/v1/messages",
    )
    .start()
    .await;
    let yaml = format!(
        "listen: \"{{listen}}\"\nmax_retries: 0\ndefault_provider: br\nproviders:\n  br: {{type: bedrock_messages, region: us-east-1, endpoint: mantle, api_base: \"{}/anthropic\", api_key_env_var: BEDROCK_KEY}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[("BEDROCK_KEY", "bedrock-api-key-1")]).await;
    let r = send_as_claude_code(&gw, &claude_code_request("claude-haiku-4-5-20251001", false)).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Hello from bedrock"), "{text}");
    let seen = up.requests().pop().unwrap();
    assert!(seen.header("anthropic-beta").is_none());
    assert_eq!(seen.json()["model"], "anthropic.claude-haiku-4-5");
    insta::assert_json_snapshot!("bedrock_messages_mantle_request", shape(&seen));

    // The stream is the Messages API's SSE, relayed.
    let r = send_as_claude_code(&gw, &claude_code_request("claude-haiku-4-5", true)).await;
    assert_eq!(r.status(), 200);
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events.last().map(|(e, _)| e.as_str()), Some("message_stop"));
}

#[tokio::test]
async fn bedrock_messages_on_runtime_signs_with_sigv4_and_maps_aws_refusals() {
    let up = Platform::bedrock_messages(Auth::SigV4("bedrock", "us-east-1"), "/anthropic/v1/messages")
        .start()
        .await;
    let yaml = format!(
        "listen: \"{{listen}}\"\nmax_retries: 0\ndefault_provider: br\nproviders:\n  br: {{type: bedrock_messages, region: us-east-1, api_base: \"{}/anthropic\"}}\nroutes:\n  - {{match: '*', provider: br, model: anthropic.claude-sonnet-4-5}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, AWS_ENV).await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let seen = up.requests().pop().unwrap();
    insta::assert_json_snapshot!("bedrock_messages_runtime_request", shape(&seen));

    // A signature AWS refuses (its front door's JSON, not Anthropic's): the
    // gateway's credential was refused, said in Anthropic's shape.
    drop(gw);
    let gw = Gateway::start_async(
        &yaml,
        &[
            ("AWS_ACCESS_KEY_ID", support::clouds::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
        ],
    )
    .await;
    let r = client().post(gw.url("/v1/messages")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused the gateway's credential")
            && message.contains("Claude in Amazon Bedrock: signature mismatch"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"));
}

#[tokio::test]
async fn claude_platform_on_aws_signs_with_its_own_service_and_keeps_the_betas() {
    let mut platform = Platform::messages_api(
        "claude_aws",
        Auth::SigV4("aws-external-anthropic", "us-west-2"),
        "/v1/messages",
    );
    platform
        .required
        .push(("anthropic-workspace-id", "wrkspc_01abc".into()));
    let up = platform.start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\nmax_retries: 0\ndefault_provider: aws\nproviders:\n  aws: {{type: claude_aws, region: us-west-2, workspace_id: wrkspc_01abc, api_base: \"{}\"}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, AWS_ENV).await;
    let body = claude_code_request("claude-opus-4-5", false);
    let r = send_as_claude_code(&gw, &body).await;
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.json(), body, "the body as the client sent it");
    // A client's own AWS signing headers never go upstream (a session token
    // is a credential; the rest would clash with the gateway's signature).
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .header("x-amz-security-token", "client-session-token")
        .header("x-amz-date", "20200101T000000Z")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let signed = up.requests().pop().unwrap();
    assert!(signed.header("x-amz-security-token").is_none());
    assert_ne!(signed.header("x-amz-date").as_deref(), Some("20200101T000000Z"));
    insta::assert_json_snapshot!("claude_aws_sigv4_request", shape(&seen));
}

#[tokio::test]
async fn foundry_with_entra_id_sends_one_cached_token() {
    let entra = EntraEndpoint::start("contoso.onmicrosoft.com", "app-1234", "s3cr3t-entra-value").await;
    let up = Platform::messages_api("foundry", Auth::Bearer(entra.accepts()), "/anthropic/v1/messages")
        .start()
        .await;
    let yaml = |secret_var: &str| {
        format!(
            "listen: \"{{listen}}\"\nmax_retries: 0\ndefault_provider: az\nproviders:\n  az: {{type: foundry, api_base: \"{}/anthropic\", entra: {{tenant_id: contoso.onmicrosoft.com, client_id: app-1234, client_secret: \"${{{secret_var}}}\", authority: \"{}\"}}}}\n",
            up.base_url(),
            entra.mock.base_url()
        )
    };
    let gw = Gateway::start_async(&yaml("ENTRA_SECRET"), &[("ENTRA_SECRET", "s3cr3t-entra-value")]).await;
    let body = claude_code_request("claude-sonnet-4-5", false);
    for _ in 0..3 {
        let r = send_as_claude_code(&gw, &body).await;
        let status = r.status();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
    }
    assert_eq!(entra.issued(), 1, "one token, cached");
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.json(), body);
    assert!(seen.header("x-api-key").is_none());
    insta::assert_json_snapshot!("foundry_entra_request", shape(&seen));
    let form = entra.mock.requests().pop().unwrap().body_str();
    assert!(
        form.contains("grant_type=client_credentials") && form.contains("scope=https%3A%2F%2Fai.azure.com%2F.default"),
        "{form}"
    );

    // `config export` shows the application, never its secret.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("modelgate.yaml");
    std::fs::write(&file, yaml("ENTRA_SECRET").replace("{listen}", "127.0.0.1:1")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["config", "export", "-c"])
        .arg(&file)
        .env("ENTRA_SECRET", "s3cr3t-entra-value")
        .output()
        .unwrap();
    let exported = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && exported.contains("app-1234"), "{exported}");
    assert!(!exported.contains("s3cr3t-entra-value"), "{exported}");

    // A secret Entra refuses: the client hears the gateway could not get a
    // token; the log says why (Microsoft's code), and no secret is anywhere.
    // The refusal answers for a while: three requests ask Entra once.
    drop(gw);
    let asked = entra.mock.request_count();
    let gw = Gateway::start_async(&yaml("ENTRA_SECRET"), &[("ENTRA_SECRET", "wrong-entra-secret")]).await;
    let r = send_as_claude_code(&gw, &body).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!(status >= 500, "{status} {text}");
    assert!(text.contains("no Entra ID access token"), "{text}");
    for _ in 0..2 {
        assert!(send_as_claude_code(&gw, &body).await.status().as_u16() >= 500);
    }
    assert_eq!(entra.mock.request_count(), asked + 1, "one fetch for three requests");
    let logs = gw.logs();
    assert!(logs.contains("AADSTS7000215") && logs.contains("app-1234"), "{logs}");
    assert!(!logs.contains("wrong-entra-secret") && !text.contains("wrong-entra-secret"));
}

#[tokio::test]
async fn claude_on_google_cloud_gets_a_service_account_token() {
    let tokens = Arc::new(support::google::MockTokenEndpoint::start().await);
    let issued = tokens.clone();
    let path = "/v1alpha/projects/proj-1/locations/global/workspaces/wrkspc_g1/invoke";
    let up = Platform::messages_api(
        "claude_gcp",
        Auth::Bearer(Arc::new(move |t: &str| issued.is_issued(t))),
        &format!("{path}/v1/messages"),
    )
    .start()
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sa = support::google::write_service_account(dir.path(), &tokens.url());
    let yaml = format!(
        "listen: \"{{listen}}\"\nmax_retries: 0\ndefault_provider: gcp\nproviders:\n  gcp: {{type: claude_gcp, api_base: \"{}{path}\"}}\n",
        up.base_url()
    );
    let gw = Gateway::start_async(&yaml, &[("GOOGLE_APPLICATION_CREDENTIALS", sa.to_str().unwrap())]).await;
    let body = claude_code_request("claude-haiku-4-5", false);
    let r = send_as_claude_code(&gw, &body).await;
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.json(), body);
    let mut shape = shape(&seen);
    for h in shape["headers"].as_array_mut().unwrap() {
        if h[0] == "authorization" {
            h[1] = json!("Bearer GOOGLE-TOKEN");
        }
    }
    insta::assert_json_snapshot!("claude_gcp_request", shape);
}

#[test]
fn bedrock_messages_and_claude_gcp_bases() {
    let build = |yaml: &str, env: &[(&str, &str)]| {
        let env: std::collections::HashMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.get(k).cloned();
        modelgate::runtime::Snapshot::build(modelgate::config::load::parse_str(yaml, &lookup).unwrap(), &lookup)
    };
    let base = |yaml: &str, env: &[(&str, &str)]| {
        let snap = build(yaml, env).unwrap();
        let b = &snap.providers["p"].base;
        format!("https://{}{}", b.host, b.join("/v1/messages"))
    };
    assert_eq!(
        base(
            "providers:\n  p: {type: bedrock_messages, region: eu-west-1}\n",
            AWS_ENV
        ),
        "https://bedrock-runtime.eu-west-1.amazonaws.com/anthropic/v1/messages"
    );
    assert_eq!(
        base(
            "providers:\n  p: {type: bedrock_messages, region: eu-west-1, api_key: k}\n",
            &[]
        ),
        "https://bedrock-mantle.eu-west-1.api.aws/anthropic/v1/messages"
    );
    assert_eq!(
        base(
            "providers:\n  p: {type: bedrock_messages, endpoint: mantle}\n",
            &[("AWS_REGION", "us-east-2")]
        ),
        "https://bedrock-mantle.us-east-2.api.aws/anthropic/v1/messages"
    );
    let dir = tempfile::tempdir().unwrap();
    let sa = support::google::write_service_account(dir.path(), "https://oauth2.googleapis.com/token");
    let sa = sa.to_str().unwrap();
    assert_eq!(
        base(
            "providers:\n  p: {type: claude_gcp, project: proj-1, workspace_id: wrkspc_g1}\n",
            &[("GOOGLE_APPLICATION_CREDENTIALS", sa)]
        ),
        "https://claude.googleapis.com/v1alpha/projects/proj-1/locations/global/workspaces/wrkspc_g1/invoke/v1/messages"
    );
    for bad in [
        "providers:\n  p: {type: bedrock_messages}\n",
        "providers:\n  p: {type: claude_gcp, project: proj-1}\n",
        "providers:\n  p: {type: claude_gcp, project: 'a/b', workspace_id: w}\n",
        "providers:\n  p: {type: foundry, resource: r, api_key: k, entra: {tenant_id: t, client_id: c, client_secret: s}}\n",
        "providers:\n  p: {type: foundry, resource: r, entra: {tenant_id: t, client_id: c, client_secret: s, authority: 'http://login.example.com'}}\n",
    ] {
        assert!(build(bad, &[("GOOGLE_APPLICATION_CREDENTIALS", sa)]).is_err(), "{bad}");
    }
}
