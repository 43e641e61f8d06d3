//! Claude's cloud formats served to clients (`inbound:`), through the
//! binary: Vertex AI's rawPredict / streamRawPredict / count-tokens paths
//! and Foundry's prefix become Messages requests (model from the path,
//! mapped; `anthropic_version` out), answered by any upstream. The real
//! Claude Code in these modes is in `tests/conformance.rs`.

mod support;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

const KEY: &str = "mg-inboundKey0000000000000000000000000000001";

fn config(upstream: &str, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{upstream}\", api_key: sk-ant-test}}\nkeys:\n  - {{name: dev, key_sha256: \"{}\"}}\n{extra}",
        hex::encode(Sha256::digest(KEY.as_bytes()))
    )
}

const VERTEX: &str = "/vertex/projects/p1/locations/us-east5/publishers/anthropic/models";

async fn post(gw: &Gateway, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {KEY}"))
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn vertex_paths_become_messages_requests() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(
        &config(
            &up.base_url(),
            "inbound:\n  model_map: {claude-team-alias@1: claude-opus-4-5}\n",
        ),
        &[],
    )
    .await;
    let body = json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = post(
        &gw,
        &format!("{VERTEX}/claude-sonnet-4-5@20250929:rawPredict"),
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.path(), "/v1/messages");
    let sent = seen.json();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["stream"], false);
    assert!(sent.get("anthropic_version").is_none());
    assert_eq!(
        seen.header("anthropic-beta").as_deref(),
        Some("interleaved-thinking-2025-05-14")
    );
    assert_eq!(seen.header("x-api-key").as_deref(), Some("sk-ant-test"));

    up.push(Reply::sse_message("claude-opus-4-5", &["Hel", "lo"]));
    let r = post(
        &gw,
        &format!("{VERTEX}/claude-team-alias@1:streamRawPredict"),
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("message_stop"));
    let sent = up.requests().pop().unwrap().json();
    assert_eq!(
        (sent["model"].as_str(), sent["stream"].as_bool()),
        (Some("claude-opus-4-5"), Some(true))
    );

    up.push(Reply::json(200, r#"{"input_tokens":12}"#));
    let mut counted = body.clone();
    counted["model"] = json!("claude-sonnet-4-5@20250929");
    let r = post(&gw, &format!("{VERTEX}/count-tokens:rawPredict"), counted).await;
    assert_eq!(r.status(), 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.path(), "/v1/messages/count_tokens");
    assert_eq!(seen.json()["model"], "claude-sonnet-4-5");

    // Not a path Vertex serves Claude on, or no key: the usual answers.
    let r = post(
        &gw,
        "/vertex/projects/p1/locations/l/publishers/google/models/gemini:rawPredict",
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = client()
        .post(gw.url(&format!("{VERTEX}/claude-sonnet-4-5:rawPredict")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let logs = gw.logs();
    assert!(logs.contains("inbound=vertex"), "{logs}");
}

#[tokio::test]
async fn prefixes_are_configurable_and_can_be_off() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(
        &config(&up.base_url(), "inbound: {foundry: /azure, vertex: null}\n"),
        &[],
    )
    .await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []});
    let r = client()
        .post(gw.url("/azure/v1/messages?beta=true"))
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests().pop().unwrap().path(), "/v1/messages");
    assert_eq!(post(&gw, "/foundry/v1/messages", body.clone()).await.status(), 404);
    assert_eq!(
        post(&gw, &format!("{VERTEX}/claude-sonnet-4-5:rawPredict"), body)
            .await
            .status(),
        404
    );
}

#[test]
fn a_prefix_under_the_gateways_own_paths_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["config", "validate", "-c", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(
                b"providers: {a: {type: anthropic}}\ndefault_provider: a\ninbound: {vertex: /v1/vertex}\n",
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inbound.vertex") && err.contains("/v1"), "{err}");
}

#[tokio::test]
async fn bedrock_invoke_paths_and_event_stream_answers() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start_async(&config(&up.base_url(), ""), &[]).await;
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "anthropic_beta": ["context-1m-2025-08-07"],
                      "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    up.push(Reply::sse_message("claude-opus-4-5-20251101", &["Hel", "lo"]));
    let r = client()
        .post(gw.url("/bedrock/model/us.anthropic.claude-opus-4-5-20251101-v1%3A0/invoke-with-response-stream"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.amazon.eventstream");
    let frames = r.bytes().await.unwrap();
    let mut decoded = Vec::new();
    let mut reader = modelgate::dialects::bedrock::stream::BedrockStream::default();
    reader.push(&frames, &mut decoded);
    let text = String::from_utf8(decoded).unwrap();
    assert!(
        text.contains("\"text\":\"Hel\"") && text.contains("message_stop"),
        "{text}"
    );
    let seen = up.requests().pop().unwrap();
    let sent = seen.json();
    assert_eq!(
        (sent["model"].as_str(), sent["stream"].as_bool()),
        (Some("claude-opus-4-5-20251101"), Some(true))
    );
    assert!(sent.get("anthropic_beta").is_none() && sent.get("anthropic_version").is_none());
    assert_eq!(seen.header("anthropic-beta").as_deref(), Some("context-1m-2025-08-07"));

    // InvokeModel: the message as JSON, as Bedrock answers it.
    let r = client()
        .post(gw.url("/bedrock/model/anthropic.claude-sonnet-4-5-20250929-v1:0/invoke"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        up.requests().pop().unwrap().json()["model"],
        "claude-sonnet-4-5-20250929"
    );
    assert!(gw.logs().contains("inbound=bedrock"));
}

#[tokio::test]
async fn bedrock_inference_profiles_list_the_routes_without_credentials() {
    let up = MockUpstream::start().await;
    let routes = "routes:\n  - {match: claude-sonnet-4-5, provider: a}\n  - {match: 'claude-*', provider: a}\n";
    let gw = Gateway::start_async(&config(&up.base_url(), routes), &[]).await;
    let list: Value = client()
        .get(gw.url("/bedrock/inference-profiles?type=SYSTEM_DEFINED"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["inferenceProfileSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["inferenceProfileId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-sonnet-4-5"], "route names only, no globs");
    let r = client()
        .get(gw.url("/bedrock/inference-profiles/claude-sonnet-4-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/bedrock/inference-profiles/gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn bedrock_count_tokens_is_counted_and_answered_in_bedrock_shape() {
    use base64::Engine;
    let up = MockUpstream::start().await;
    let openai = MockUpstream::start().await;
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: a\nproviders:\n  a: {{type: anthropic, api_base: \"{}\", api_key: sk-ant-test}}\n  o: {{type: openai, api_base: \"{}\", api_key: sk-openai-test}}\nroutes:\n  - {{match: 'gpt-*', provider: o}}\nkeys:\n  - {{name: dev, key_sha256: \"{}\"}}\n",
        up.base_url(),
        openai.base_url(),
        hex::encode(Sha256::digest(KEY.as_bytes()))
    );
    let gw = Gateway::start_async(&yaml, &[]).await;
    let invoke = json!({"anthropic_version": "bedrock-2023-05-31", "anthropic_beta": ["context-1m-2025-08-07"],
                        "max_tokens": 32000, "temperature": 1, "system": [{"type": "text", "text": "You are Claude Code."}],
                        "messages": [{"role": "user", "content": "count me"}]});
    let wrapped = |invoke: &Value| json!({"input": {"invokeModel": {"body": base64::engine::general_purpose::STANDARD.encode(invoke.to_string())}}});
    let count = |path: &'static str, body: Value| {
        let gw = &gw;
        async move {
            client()
                .post(gw.url(path))
                .header("authorization", format!("Bearer {KEY}"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    // Anthropic's counter: `{"input_tokens"}` comes back as `{"inputTokens"}`.
    up.push(Reply::json(200, r#"{"input_tokens":42}"#));
    let r = count(
        "/bedrock/model/us.anthropic.claude-opus-4-5-20251101-v1%3A0/count-tokens",
        wrapped(&invoke),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"inputTokens": 42}));
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.path(), "/v1/messages/count_tokens");
    assert_eq!(seen.header("anthropic-beta").as_deref(), Some("context-1m-2025-08-07"));
    let sent = seen.json();
    assert_eq!(sent["model"], "claude-opus-4-5-20251101");
    for gone in ["max_tokens", "temperature", "anthropic_version", "anthropic_beta"] {
        assert!(sent.get(gone).is_none(), "{gone} in {sent}");
    }
    assert_eq!(sent["system"][0]["text"], "You are Claude Code.");

    // An upstream's refusal goes as it came (an Anthropic error).
    up.push(Reply::error(400, "invalid_request_error", "prompt is too long"));
    let r = count("/bedrock/model/claude-sonnet-4-5/count-tokens", wrapped(&invoke)).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["message"],
        "prompt is too long"
    );

    // No counter upstream (OpenAI): the gateway's own count, in Bedrock's shape.
    let r = count("/bedrock/model/gpt-4o/count-tokens", wrapped(&invoke)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["inputTokens"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert_eq!(openai.request_count(), 0);

    // A body that is not CountTokens' InvokeModel form.
    let r = count(
        "/bedrock/model/claude-sonnet-4-5/count-tokens",
        json!({"input": {"converse": {}}}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input.invokeModel.body"),
        "{v}"
    );
}
