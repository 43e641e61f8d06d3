//! Self-test of the shared test support: exercises the mock upstream directly
//! with reqwest. Does not start the gateway binary.

mod support;

use std::time::Duration;

use support::mock::{sse_text, USAGE_OUTPUT_TOKENS};
use support::{anthropic_sse_chunks, client, fixture, Gate, MockUpstream, Reply, SseStep};

const WAIT: Duration = Duration::from_secs(5);

/// Read from `resp` until `buf` contains `needle` (bounded by time and count).
async fn read_until(resp: &mut reqwest::Response, buf: &mut Vec<u8>, needle: &[u8]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for _ in 0..1000 {
        if buf.windows(needle.len()).any(|w| w == needle) {
            return;
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("timed out waiting for data")
            .expect("body error")
            .expect("body ended early");
        buf.extend_from_slice(&chunk);
    }
    panic!("needle not found: {}", String::from_utf8_lossy(buf));
}

#[tokio::test]
async fn fixture_is_a_realistic_claude_code_request() {
    let body = fixture("claude_code_request.json");
    assert!(body.len() >= 100 * 1024, "fixture is {} bytes", body.len());
    assert!(body.starts_with(br#"{"model":"claude-opus-4-8","#));
    assert!(!body.ends_with(b"\n"));
    assert!(!body.contains(&b'\n'), "compact JSON on one line");
    let text = std::str::from_utf8(&body).expect("UTF-8");
    assert!(text.contains(r"\u2028"), "escaped U+2028");
    assert!(text.contains('\u{2028}'), "raw U+2028");
    assert!(text.contains("café") && text.contains("日本語"));

    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["max_tokens"], 64000);
    assert_eq!(v["stream"], true);
    assert_eq!(v["thinking"]["type"], "adaptive");
    assert_eq!(v["output_config"]["effort"], "high");
    assert!(v["context_management"]["edits"].is_array());
    let uid: serde_json::Value = serde_json::from_str(v["metadata"]["user_id"].as_str().unwrap()).unwrap();
    for k in ["device_id", "account_uuid", "session_id"] {
        assert!(uid[k].is_string(), "user_id.{k}");
    }

    let system = v["system"].as_array().unwrap();
    assert_eq!(system.len(), 3);
    assert!(system[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("x-anthropic-billing-header: cc_version="));
    assert!(system[0].get("cache_control").is_none());
    assert_eq!(system[1]["cache_control"]["ttl"], "1h");
    assert_eq!(system[2]["cache_control"]["type"], "ephemeral");

    let messages = v["messages"].as_array().unwrap();
    assert!(messages.iter().any(|m| m["role"] == "system"));
    let last = messages.last().unwrap();
    assert_eq!(last["role"], "user");
    assert!(last["content"].as_array().unwrap().last().unwrap()["cache_control"].is_object());

    let tools = v["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 25);
    assert!(tools.last().unwrap()["cache_control"].is_object());
    assert!(tools
        .iter()
        .all(|t| t["input_schema"]["$schema"] == "https://json-schema.org/draft/2020-12/schema"));
}

#[tokio::test]
async fn json_reply_is_recorded_byte_exact_with_keepalive() {
    let mock = MockUpstream::start().await;
    mock.push(
        Reply::json(201, r#"{"ok":true}"#)
            .with_header("x-scripted", "yes")
            .with_header("retry-after", "7"),
    );
    let body = fixture("claude_code_request.json");
    let c = client();

    let resp = c
        .post(format!("{}/v1/messages?beta=true", mock.base_url()))
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219,effort-2025-11-24")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header(
            "x-raw",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9 \x80").unwrap(),
        )
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-scripted"], "yes");
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), r#"{"ok":true}"#);

    // Second request on the same client: default reply, same connection.
    let resp = c.get(format!("{}/v1/models", mock.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let msg: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["usage"]["output_tokens"], USAGE_OUTPUT_TOKENS);

    let reqs = mock.wait_requests(2, WAIT).await;
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/v1/messages?beta=true");
    assert_eq!(r.path(), "/v1/messages");
    assert_eq!(r.body, body, "body recorded byte-exact");
    assert_eq!(r.json()["model"], "claude-opus-4-8");
    assert_eq!(r.header("X-API-Key").as_deref(), Some("sk-test"));
    assert_eq!(
        r.header("anthropic-beta").as_deref(),
        Some("claude-code-20250219,effort-2025-11-24")
    );
    assert_eq!(r.header_all("x-multi"), ["one", "two"]);
    assert_eq!(r.header_bytes("x-raw"), Some(&b"caf\xe9 \x80"[..]));
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string()),
        "content-length recorded"
    );
    // Header names are lowercase and in arrival order.
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("x-api-key") < pos("anthropic-version"));
    assert!(pos("anthropic-version") < pos("anthropic-beta"));

    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].uri, "/v1/models");
    assert!(reqs[1].body.is_empty());
    assert_eq!(reqs[0].conn, reqs[1].conn, "keep-alive reused the connection");
    assert_eq!(mock.connections_accepted(), 1);
    assert_eq!(mock.pending_replies(), 0);
}

#[tokio::test]
async fn sse_reply_waits_at_gate() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    let mut steps = anthropic_sse_chunks("claude-opus-4-8", &["Hello", ", wör", "ld 🦀"]);
    let expected = sse_text(&steps);
    steps.insert(1, SseStep::Gate(gate.clone()));
    steps.insert(3, SseStep::Delay(Duration::from_millis(5)));
    mock.push(Reply::sse(steps).with_header("request-id", "req_sse"));

    let mut resp = client()
        .post(format!("{}/v1/messages", mock.base_url()))
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["request-id"], "req_sse");
    assert!(resp.headers().get("content-length").is_none());

    // The first event arrives before the gate opens...
    let mut got = Vec::new();
    read_until(&mut resp, &mut got, b"\n\n").await;
    let first = String::from_utf8(got.clone()).unwrap();
    assert!(first.starts_with("event: message_start\ndata: {"), "{first}");
    assert!(first.ends_with("\n\n"), "exactly the first event: {first:?}");
    // ...and nothing more until it does.
    let more = tokio::time::timeout(Duration::from_millis(200), resp.chunk()).await;
    assert!(more.is_err(), "data leaked past the gate: {more:?}");
    assert!(!gate.is_open());

    gate.open();
    let deadline = tokio::time::Instant::now() + WAIT;
    for _ in 0..1000 {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("timed out reading the rest")
            .expect("body error");
        match chunk {
            Some(c) => got.extend_from_slice(&c),
            None => break,
        }
    }
    let all = String::from_utf8(got).unwrap();
    assert_eq!(all, expected);
    assert!(all.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert_eq!(mock.wait_requests(1, WAIT).await[0].body, r#"{"stream":true}"#);
}

#[tokio::test]
async fn sse_abort_breaks_the_stream_after_flushing() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::sse(vec![
        SseStep::Chunk("event: ping\ndata: {\"type\": \"ping\"}\n\n".into()),
        SseStep::Abort,
    ]));
    let mut resp = client()
        .post(format!("{}/v1/messages", mock.base_url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut failed = false;
    for _ in 0..1000 {
        match tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("timed out")
        {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert_eq!(got, b"event: ping\ndata: {\"type\": \"ping\"}\n\n");
    assert!(failed, "an aborted stream must end with a body error");

    // The mock keeps serving after an abort.
    let resp = client().get(mock.base_url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.connections_accepted(), 2);
}

#[tokio::test]
async fn hangup_gives_a_client_error() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Hangup);
    let err = client()
        .post(format!("{}/v1/messages", mock.base_url()))
        .body("hello")
        .send()
        .await
        .expect_err("hangup must fail the request");
    assert!(!err.is_timeout(), "{err:?}");
    let reqs = mock.wait_requests(1, WAIT).await;
    assert_eq!(reqs[0].body, "hello");
}

#[tokio::test]
async fn stall_holds_until_the_client_times_out() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Stall {
        hold: Duration::from_secs(10),
    });
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = c
        .post(format!("{}/v1/messages", mock.base_url()))
        .body("{}")
        .send()
        .await
        .expect_err("stall must time out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(mock.request_count(), 1);
    // Default reply afterwards, on a new connection.
    let resp = c.get(mock.base_url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_requests_sees_concurrent_requests() {
    let mock = MockUpstream::start().await;
    mock.set_default(Reply::error(529, "overloaded_error", "Overloaded"));
    let c = client();
    let url = format!("{}/v1/messages/count_tokens?beta=true", mock.base_url());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).body(format!("{{\"n\":{i}}}")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let reqs = mock.wait_requests(8, WAIT).await;
    assert_eq!(reqs.len(), 8);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 529);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
    }
    let mut ns: Vec<i64> = reqs.iter().map(|r| r.json()["n"].as_i64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (0..8).collect::<Vec<_>>());
}

/// The test IdP: authorization code + PKCE through its login and consent
/// forms, an id_token that names the user's email and groups, a refresh, and
/// `invalid_grant` on the refresh once the user is removed.
#[tokio::test(flavor = "multi_thread")]
async fn oidc_provider_signs_a_user_in_and_refuses_a_removed_one() {
    use base64::Engine;
    use sha2::Digest;
    use support::oidc::json;
    let redirect = "http://127.0.0.1:9/oauth/callback";
    let users = serde_json::json!({"ada": {"email": "ada@corp.example", "name": "Ada", "groups": ["eng", "data"]}});
    let Some(idp) = support::oidc::OidcProvider::start(redirect, &users, true) else {
        return;
    };
    let browser = support::oidc::Browser::new();
    let discovery = json(
        browser
            .http
            .get(format!("{}/.well-known/openid-configuration", idp.issuer())),
    )
    .await;
    assert_eq!(discovery["issuer"], idp.issuer());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verifier = "a-code-verifier-of-at-least-forty-three-characters-0123";
    let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut auth = reqwest::Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
    auth.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", support::oidc::CLIENT_ID)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "openid email profile groups offline_access")
        .append_pair("state", "st4te")
        .append_pair("nonce", "n0nce")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("prompt", "consent");
    let landed = browser.walk(auth.as_str(), redirect, "ada").await;
    let back = reqwest::Url::parse(&landed.url).unwrap();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("st4te"), "{landed:?}");
    let code = q.get("code").expect("an authorization code").clone();

    let token_endpoint = discovery["token_endpoint"].as_str().unwrap();
    let tokens = json(
        browser
            .http
            .post(token_endpoint)
            .basic_auth(support::oidc::CLIENT_ID, Some(support::oidc::CLIENT_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
            ]),
    )
    .await;
    let id_token = tokens["id_token"].as_str().expect("an id_token");
    let payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(id_token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(payload["email"], "ada@corp.example");
    assert_eq!(payload["groups"], serde_json::json!(["eng", "data"]));
    assert_eq!(payload["nonce"], "n0nce");
    let refresh = |token: String| {
        let http = browser.http.clone();
        async move {
            http.post(token_endpoint)
                .basic_auth(support::oidc::CLIENT_ID, Some(support::oidc::CLIENT_SECRET))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", token.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    let first = tokens["refresh_token"].as_str().expect("a refresh token").to_string();
    let r = refresh(first).await;
    assert_eq!(r.status(), 200);
    let rotated: serde_json::Value = r.json().await.unwrap();
    // Deprovisioned at the IdP: the next refresh is refused.
    idp.set_users(&serde_json::json!({}));
    let r = refresh(rotated["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "invalid_grant");
}
