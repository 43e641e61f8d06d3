//! Sign-in through the binary (the Claude Code gateway protocol): a real
//! OpenID provider (`tests/support/oidc.rs`), the gateway's device flow
//! driven as Claude Code drives it, the browser side played by an HTTP
//! client with a cookie jar; then the signed-in token on `/v1/messages`
//! (JSON and stream), `/v1/models`, `/managed/settings`, telemetry,
//! refresh, revocation, and every refusal the protocol names.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::oidc::{Browser, OidcProvider, CLIENT_ID, CLIENT_SECRET};
use support::*;

const PROVIDER_SECRET: &str = "sk-ant-api03-PROVIDERSECRETsignin000000000000";
const CI_KEY: &str = "mg-ciJobKey0000000000000000000000000000000001";
const SESSION_SECRET: &str = "session-secret-for-tests-0123456789abcdef";

fn users() -> Value {
    json!({
        "ada": {"email": "ada@corp.example", "name": "Ada", "groups": ["eng"]},
        "bob": {"email": "bob@corp.example", "name": "Bob", "groups": ["sales"]},
    })
}

fn config(upstream: &str, idp: &str, port: u16, collector: &str, extra: &str) -> String {
    config_with(upstream, idp, port, collector, "", extra)
}

/// [`config`] with `policy` added to the `eng` group's policy (indented
/// lines such as `      budget: {usd: 1, period: daily}`).
fn config_with(upstream: &str, idp: &str, port: u16, collector: &str, policy: &str, extra: &str) -> String {
    format!(
        r#"listen: "{{listen}}"
grace_period: 0s
log_level: debug
default_provider: anthropic
providers:
  anthropic: {{type: anthropic, api_base: "{upstream}", api_key: {PROVIDER_SECRET}, models: [claude-sonnet-4-5, gpt-5-mini]}}
keys:
  - {{name: ci, key_sha256: "{ci}"}}
teams:
  eng: {{}}
signin:
  public_url: http://127.0.0.1:{port}
  oidc: {{issuer: "{idp}", client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}, scopes: [email, profile, groups, offline_access]}}
  session: {{secret: ["{SESSION_SECRET}"], ttl: 1h}}
  allowed_groups: [eng]
  billing_group_tag: billing_group
  device: {{interval: 1s, login_notice: "Usage is logged."}}
  groups:
    eng:
      team: eng
      models: ["claude-*"]
{policy}      managed_settings:
        env:
          CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY: "1"
          CLAUDE_CODE_ENABLE_TELEMETRY: "1"
          OTEL_METRICS_EXPORTER: otlp
          OTEL_LOGS_EXPORTER: otlp
          OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf
          OTEL_METRIC_EXPORT_INTERVAL: "2000"
          OTEL_LOGS_EXPORT_INTERVAL: "2000"
telemetry:
  otlp: {{endpoint: "{collector}", headers: {{x-collector-key: c0ll3ct}}}}
{extra}"#,
        ci = hex::encode(Sha256::digest(CI_KEY.as_bytes())),
    )
}

struct Setup {
    up: MockUpstream,
    collector: MockUpstream,
    idp: OidcProvider,
    gw: Gateway,
}

async fn setup(extra: &str) -> Option<Setup> {
    setup_with("", extra).await
}

async fn setup_with(policy: &str, extra: &str) -> Option<Setup> {
    let port = free_port();
    let idp = OidcProvider::start(&format!("http://127.0.0.1:{port}/oauth/callback"), &users(), true)?;
    let up = MockUpstream::start().await;
    let collector = MockUpstream::start().await;
    collector.set_default(mock::Reply::json(200, "{}"));
    let yaml = config_with(
        &up.base_url(),
        &idp.issuer(),
        port,
        &collector.base_url(),
        policy,
        extra,
    );
    let gw = Gateway::start_on_async(port, &yaml, &[]).await;
    Some(Setup { up, collector, idp, gw })
}

fn form_post(gw: &Gateway, path: &str, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
    client()
        .post(gw.url(path))
        .header("user-agent", "claude-code/2.1.330")
        .form(form)
}

/// `POST /oauth/device_authorization` as Claude Code sends it.
async fn device(gw: &Gateway) -> Value {
    let r = form_post(gw, "/oauth/device_authorization", &[("surface", "claude_code")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

async fn poll(gw: &Gateway, device_code: &str) -> (u16, Value) {
    let r = form_post(
        gw,
        "/oauth/token",
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
        ],
    )
    .send()
    .await
    .unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (status, r.json().await.unwrap())
}

/// Poll as the client does (every `interval`, 5 s slower each time it is
/// told to slow down) until the answer is not `authorization_pending`; at
/// most 30 s.
async fn poll_until_done(gw: &Gateway, device_code: &str, mut interval: Duration) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(interval).await;
        let (status, body) = poll(gw, device_code).await;
        match body["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            _ => return (status, body),
        }
    }
    panic!("the device grant was still pending after 30 s");
}

/// The browser: open the verification link, submit the code, approve,
/// and log in at the IdP as `login`; the callback page.
async fn approve_in_browser(gw: &Gateway, grant: &Value, login: &str) -> (u16, String) {
    let browser = Browser::new();
    let page = browser
        .http
        .get(grant["verification_uri_complete"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let user_code = grant["user_code"].as_str().unwrap();
    assert!(
        html.contains(&format!("value=\"{user_code}\"")),
        "the code is pre-filled: {html}"
    );
    let (action, mut fields) = support::oidc::form(&html).expect("the code form");
    fields.retain(|(k, _)| k != "user_code");
    fields.push(("user_code".into(), user_code.to_lowercase().replace('-', " ")));
    // Pre-filled, never approved by opening the link: a confirmation first.
    let confirm = browser.http.post(&action).form(&fields).send().await.unwrap();
    assert_eq!(confirm.status(), 200);
    let html = confirm.text().await.unwrap();
    assert!(html.contains(user_code) && html.contains("Deny"), "{html}");
    let (action, mut fields) = support::oidc::form(&html).expect("the confirmation form");
    fields.push(("step".into(), "approve".into()));
    let to_idp = browser.http.post(&action).form(&fields).send().await.unwrap();
    assert_eq!(to_idp.status(), 303);
    let idp_url = to_idp.headers()["location"].to_str().unwrap().to_string();
    let landed = browser.walk(&idp_url, &gw.url("/oauth/callback"), login).await;
    assert!(landed.url.contains("state="), "{landed:?}");
    let back = browser.http.get(&landed.url).send().await.unwrap();
    let status = back.status().as_u16();
    (status, back.text().await.unwrap())
}

/// A whole sign-in as `login`: the token response.
async fn sign_in(gw: &Gateway, login: &str) -> Value {
    let grant = device(gw).await;
    let (status, page) = approve_in_browser(gw, &grant, login).await;
    assert_eq!(status, 200, "{page}");
    let (status, token) = poll_until_done(gw, grant["device_code"].as_str().unwrap(), Duration::from_secs(1)).await;
    assert_eq!(status, 200, "{token}");
    token
}

fn bearer(req: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    req.header("authorization", format!("Bearer {token}"))
        .header("anthropic-version", "2023-06-01")
}

async fn message(gw: &Gateway, token: &str, model: &str, stream: bool) -> reqwest::Response {
    let body = json!({"model": model, "max_tokens": 16, "stream": stream,
                      "messages": [{"role": "user", "content": "hi"}]});
    bearer(client().post(gw.url("/v1/messages?beta=true")), token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn assert_refused(r: &reqwest::Response) {
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers().get("x-should-retry").map(|v| v.to_str().unwrap()),
        Some("false")
    );
}

async fn refresh(gw: &Gateway, refresh_token: &str) -> (u16, Value) {
    let r = form_post(
        gw,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)],
    )
    .send()
    .await
    .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn device_flow_signs_a_developer_in_and_their_token_works_everywhere() {
    let Some(s) = setup("").await else { return };
    let gw = &s.gw;

    // Discovery: same-origin endpoints, no authorization_endpoint.
    let meta = support::oidc::json(client().get(gw.url("/.well-known/oauth-authorization-server"))).await;
    assert_eq!(meta["token_endpoint"], gw.url("/oauth/token"));
    assert_eq!(
        meta["device_authorization_endpoint"],
        gw.url("/oauth/device_authorization")
    );
    assert_eq!(meta["revocation_endpoint"], gw.url("/oauth/revoke"));
    assert_eq!(meta["gateway_protocol_version"], 1);
    assert!(meta.get("authorization_endpoint").is_none());

    // The device grant: a typeable code, the interval, the notice.
    let grant = device(gw).await;
    let user_code = grant["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert!(grant["device_code"].as_str().unwrap().len() >= 43, "256 bits");
    assert_eq!(grant["interval"], 1);
    assert_eq!(grant["expires_in"], 600);
    assert_eq!(grant["login_notice"], "Usage is logged.");
    assert_eq!(grant["verification_uri"], gw.url("/device"));
    // Pending; polling again at once is faster than the interval.
    let (status, body) = poll(gw, grant["device_code"].as_str().unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "{body}"
    );
    let (status, body) = poll(gw, grant["device_code"].as_str().unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("slow_down")), "{body}");
    tokio::time::sleep(Duration::from_millis(6100)).await;
    let (status, body) = poll(gw, grant["device_code"].as_str().unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "{body}"
    );

    let (status, page) = approve_in_browser(gw, &grant, "ada").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("ada@corp.example"), "{page}");
    // The slow-down made the grant's interval 6 s.
    let (status, token) = poll_until_done(gw, grant["device_code"].as_str().unwrap(), Duration::from_secs(6)).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3600);
    assert_eq!(token["email"], "ada@corp.example");
    let access = token["access_token"].as_str().unwrap().to_string();
    let refresh_token = token["refresh_token"].as_str().unwrap().to_string();
    // A device code is used once.
    let (status, body) = poll(gw, grant["device_code"].as_str().unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("expired_token")), "{body}");

    // Messages, JSON and stream: the provider's key goes upstream, never the token.
    let r = message(gw, &access, "claude-sonnet-4-5", false).await;
    assert_eq!(r.status(), 200);
    let seen = s.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-api-key").as_deref(), Some(PROVIDER_SECRET));
    assert!(seen.header("authorization").is_none());
    s.up.push(mock::Reply::sse_message("claude-sonnet-4-5", &["Hel", "lo"]));
    let r = message(gw, &access, "claude-sonnet-4-5", true).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("message_stop"));
    // Outside the group's allowlist: 400 naming it.
    let r = message(gw, &access, "gpt-5-mini", false).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("claude-*"), "{e}");

    // Models: only what the group may use.
    let models = support::oidc::json(bearer(client().get(gw.url("/v1/models?limit=1000")), &access)).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"claude-sonnet-4-5") && !ids.contains(&"gpt-5-mini"),
        "{ids:?}"
    );

    // Managed settings: the group's, with its checksum as ETag; 304 only when asked.
    let r = bearer(client().get(gw.url("/managed/settings")), &access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let settings: Value = r.json().await.unwrap();
    assert_eq!(
        settings["settings"]["env"]["CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY"],
        "1"
    );
    assert_eq!(etag, format!("\"{}\"", settings["checksum"].as_str().unwrap()));
    assert!(settings["uuid"].is_string());
    let r = bearer(client().get(gw.url("/managed/settings")), &access)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // A gateway key has no group policy.
    let r = client()
        .get(gw.url("/managed/settings"))
        .header("x-api-key", CI_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Telemetry: always 200; forwarded with the verified identity.
    let export = json!({"resourceMetrics": [{"resource": {"attributes": [
        {"key": "user.email", "value": {"stringValue": "someone@else.example"}}]}, "scopeMetrics": []}]});
    let r = bearer(client().post(gw.url("/v1/metrics")), &access)
        .json(&export)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.collector.request_count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = s.collector.requests().pop().expect("the export reached the collector");
    assert_eq!(got.path(), "/v1/metrics");
    assert_eq!(got.header("x-collector-key").as_deref(), Some("c0ll3ct"));
    let body = got.body_str();
    assert!(
        body.contains("ada@corp.example") && !body.contains("someone@else"),
        "{body}"
    );
    assert!(body.contains("modelgate.team") && !body.contains(&access), "{body}");

    // The ledger attributes usage to the developer and their team.
    let usage = support::oidc::json(bearer(client().get(gw.url("/v1/usage")), &access)).await;
    assert!(usage.to_string().contains("ada@corp.example"), "{usage}");

    // No cap: no unified headers, and the usage endpoint gives plain spend.
    let r = message(gw, &access, "claude-sonnet-4-5", false).await;
    assert!(r.headers().get("anthropic-ratelimit-unified-status").is_none());
    let usage = support::oidc::json(bearer(client().get(gw.url("/api/oauth/usage")), &access)).await;
    assert_eq!(usage["limits"], json!([]), "{usage}");
    assert!(usage["extra_usage"]["monthly_limit"].is_null(), "{usage}");
    assert!(usage["extra_usage"]["daily"]["used_credits"].is_number(), "{usage}");

    // Refresh: new tokens; the new access token works.
    let (status, next) = refresh(gw, &refresh_token).await;
    assert_eq!(status, 200, "{next}");
    let next_access = next["access_token"].as_str().unwrap().to_string();
    let next_refresh = next["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(next_refresh, refresh_token);
    assert_eq!(
        message(gw, &next_access, "claude-sonnet-4-5", false).await.status(),
        200
    );

    // Sign-out revokes the session: its tokens stop working at once.
    for form in [
        vec![("token", next_access.as_str())],
        vec![("token", next_refresh.as_str()), ("token_type_hint", "refresh_token")],
    ] {
        let r = form_post(gw, "/oauth/revoke", &form).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_refused(&message(gw, &next_access, "claude-sonnet-4-5", false).await);
    assert_refused(&message(gw, &access, "claude-sonnet-4-5", false).await);
    let (status, body) = refresh(gw, &next_refresh).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_grant")), "{body}");

    // Tampered and foreign tokens.
    let mut tampered = access.clone();
    tampered.pop();
    tampered.push(if access.ends_with('A') { 'B' } else { 'A' });
    assert_refused(&message(gw, &tampered, "claude-sonnet-4-5", false).await);
    let foreign = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ada", "aud": "claude-gateway", "exp": 4102444800u64, "session_id": "x"}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0000"),
    )
    .unwrap();
    assert_refused(&message(gw, &foreign, "claude-sonnet-4-5", false).await);
    // The gateway key keeps working beside sign-in.
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", CI_KEY)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!gw.logs().contains(&access), "tokens never reach the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_outside_groups_deprovisioned_users_and_forged_forms() {
    let Some(mut s) = setup("").await else { return };
    let gw = &s.gw;

    // A refresh token replaced moments ago (a lost answer, two processes
    // refreshing at once) gets the rotation that happened, not another.
    let token = sign_in(gw, "ada").await;
    let first = token["refresh_token"].as_str().unwrap();
    let (status, a) = refresh(gw, first).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = refresh(gw, first).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a["refresh_token"], b["refresh_token"], "the same current token");
    let second = b["refresh_token"].as_str().unwrap().to_string();
    let (status, c) = refresh(gw, &second).await;
    assert_eq!(status, 200, "{c}");

    // Bob is not in an allowed group: told so, and the grant is denied.
    let grant = device(gw).await;
    let (status, page) = approve_in_browser(gw, &grant, "bob").await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("not in a group allowed"), "{page}");
    let (status, body) = poll_until_done(gw, grant["device_code"].as_str().unwrap(), Duration::from_secs(1)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");

    // Ada signs in, then is removed at the IdP: her next refresh is refused,
    // and the session it ended refuses her access token at once.
    let token = sign_in(gw, "ada").await;
    let access = token["access_token"].as_str().unwrap();
    assert_eq!(message(gw, access, "claude-sonnet-4-5", false).await.status(), 200);
    s.idp.set_users(&json!({"bob": users()["bob"]}));
    let (status, body) = refresh(gw, token["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_grant")), "{body}");
    assert_refused(&message(gw, access, "claude-sonnet-4-5", false).await);
    s.idp.set_users(&users());

    // CSRF: a form without this browser's token is refused; so is one
    // from a browser without the binding cookie.
    let grant = device(gw).await;
    let browser = Browser::new();
    let page = browser
        .http
        .get(gw.url("/device"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (action, _) = support::oidc::form(&page).unwrap();
    let forged = browser
        .http
        .post(&action)
        .form(&[
            ("csrf", "Zm9yZ2Vk"),
            ("user_code", grant["user_code"].as_str().unwrap()),
            ("step", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // Posted from another site (a sibling host that planted a cookie, say).
    let cross = browser
        .http
        .post(&action)
        .header("origin", "https://evil.corp.example")
        .header("sec-fetch-site", "same-site")
        .form(&[("user_code", grant["user_code"].as_str().unwrap()), ("step", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let cookieless = client()
        .post(gw.url("/device"))
        .form(&[("user_code", grant["user_code"].as_str().unwrap()), ("step", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(cookieless.status(), 400);

    // A callback whose state was never issued (or is replayed) fails.
    let r = browser
        .http
        .get(gw.url("/oauth/callback?code=abc&state=never-issued"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The person denies in the browser: the next poll says so.
    let grant = device(gw).await;
    let browser = Browser::new();
    let page = browser
        .http
        .get(grant["verification_uri_complete"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (action, mut fields) = support::oidc::form(&page).unwrap();
    fields.push(("user_code".into(), grant["user_code"].as_str().unwrap().into()));
    let confirm = browser
        .http
        .post(&action)
        .form(&fields)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (action, mut fields) = support::oidc::form(&confirm).unwrap();
    fields.push(("step".into(), "deny".into()));
    let denied = browser.http.post(&action).form(&fields).send().await.unwrap();
    assert_eq!(denied.status(), 200);
    assert!(denied.text().await.unwrap().contains("not signed in"));
    let (status, body) = poll_until_done(gw, grant["device_code"].as_str().unwrap(), Duration::from_secs(1)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");

    // An expired token of this gateway's own making: 401, do not retry.
    let now = chrono::Utc::now().timestamp();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"iss": gw.url(""), "aud": "claude-gateway", "sub": "ada", "email": "ada@corp.example",
                "groups": ["eng"], "session_id": "s", "iat": now - 7200, "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SESSION_SECRET.as_bytes()),
    )
    .unwrap();
    let r = message(gw, &expired, "claude-sonnet-4-5", false).await;
    assert_refused(&r);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("expired"), "{e}");

    // Unknown grant types and missing parameters: RFC 6749 errors.
    let r = form_post(gw, "/oauth/token", &[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let (status, body) = poll(gw, "not-a-device-code").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("expired_token")));
    let r = form_post(gw, "/oauth/token", &[("x", "y")]).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // An unknown token is revoked "successfully" (RFC 7009 §2.2).
    let r = form_post(gw, "/oauth/revoke", &[("token", "nothing-like-it")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // No bearer at all on a bearer endpoint.
    let r = client().get(gw.url("/managed/settings")).send().await.unwrap();
    assert_refused(&r);

    // An IdP outage is not a refusal: 503, and the session lives on.
    s.idp.stop();
    let latest = refresh(gw, &second).await; // just replaced: answered without the IdP
    assert_eq!(latest.0, 200, "{}", latest.1);
    assert_eq!(latest.1["refresh_token"], c["refresh_token"]);
    let current = latest.1["refresh_token"].as_str().unwrap().to_string();
    let (status, body) = refresh(gw, &current).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    let access = latest.1["access_token"].as_str().unwrap();
    assert_eq!(message(gw, access, "claude-sonnet-4-5", false).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn device_authorization_is_rate_limited_per_address() {
    let Some(s) = setup("").await else { return };
    let mut limited = None;
    for n in 0..40 {
        let r = form_post(&s.gw, "/oauth/device_authorization", &[("surface", "claude_code")])
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "slow_down");
            limited = Some(n);
            break;
        }
    }
    let n = limited.expect("40 device authorizations in a row from one address are limited");
    assert!(n >= 10, "the first few pass: {n}");
}

/// What `claude auth login --gateway-json` said, and how it ended.
struct Login {
    transcript: Vec<Value>,
    ok: bool,
}

/// Run `claude auth login --gateway-json` in `home` (whose settings name the
/// gateway), answering its questions as the VS Code extension would; the
/// verification link and code go to `polling` for the test's browser.
fn claude_login(bin: &std::path::Path, home: &std::path::Path, polling: tokio::sync::mpsc::Sender<Value>) -> Login {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let mut child = support::claude::command(bin, home, home, &["auth", "login", "--gateway-json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn claude auth login");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut transcript = Vec::new();
    // Bounded: the login ends in `done`, `error` or `cancelled`, and the
    // child is killed after 120 s regardless.
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    for line in stdout.lines().map_while(Result::ok).take(100) {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        transcript.push(msg.clone());
        let state = msg["state"].as_str().unwrap_or_default().to_string();
        match state.as_str() {
            "url_input" | "trust_prompt" | "confirm_account" => {
                let answer = json!({"state": state, "shown": msg["shown"], "accept": true});
                writeln!(stdin, "{answer}").unwrap();
                stdin.flush().unwrap();
            }
            "polling" => {
                let _ = polling.blocking_send(msg.clone());
            }
            "done" | "error" | "cancelled" => break,
            _ => {}
        }
    }
    drop(stdin);
    let status = child.wait().unwrap();
    drop(watchdog);
    Login {
        transcript,
        ok: status.success(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_claude_code_signs_in_and_works_through_the_gateway() {
    let Some(bin) = support::claude::bin() else { return };
    let Some(s) = setup("").await else { return };
    s.up.set_default(mock::Reply::script(support::model::anthropic));
    let gw = &s.gw;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".claude")).unwrap();
    std::fs::write(
        home.path().join(".claude/settings.json"),
        json!({"forceLoginMethod": "gateway", "forceLoginGatewayUrl": gw.url("")}).to_string(),
    )
    .unwrap();

    // Sign in: Claude Code asks for a device code and polls; the person
    // opens the link it shows and approves at the IdP as Ada.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let (b, h) = (bin.clone(), home.path().to_path_buf());
    let login = tokio::task::spawn_blocking(move || claude_login(&b, &h, tx));
    let polling = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("claude reached the polling state")
        .expect("a polling line");
    let grant = json!({
        "verification_uri_complete": polling["browserUrl"],
        "user_code": polling["userCode"],
    });
    let (status, page) = approve_in_browser(gw, &grant, "ada").await;
    assert_eq!(status, 200, "{page}");
    let login = login.await.unwrap();
    let states: Vec<&str> = login.transcript.iter().filter_map(|m| m["state"].as_str()).collect();
    assert!(
        login.ok && states.last() == Some(&"done"),
        "{:?}\n{}",
        login.transcript,
        gw.logs()
    );
    assert!(
        states.contains(&"confirm_account"),
        "the token named the account: {states:?}"
    );
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join(".claude/.credentials.json")).unwrap()).unwrap();
    assert_eq!(creds["enterpriseGateway"]["email"], "ada@corp.example");
    assert_eq!(
        creds["enterpriseGateway"]["revocationEndpoint"],
        gw.url("/oauth/revoke")
    );

    // Then work: a tool loop (Read) with the stored credentials, nothing else.
    let work = tempfile::tempdir().unwrap();
    let marker = "modelgate-signin-5be2d0";
    let file = work.path().join("notes.txt");
    std::fs::write(&file, format!("{marker}\n")).unwrap();
    let prompt = format!("Please read the file {} and tell me what it says.", file.display());
    let (b, h, w) = (bin.clone(), home.path().to_path_buf(), work.path().to_path_buf());
    let run = tokio::task::spawn_blocking(move || {
        let args = ["-p", &prompt, "--model", "claude-sonnet-4-5", "--allowedTools", "Read"];
        support::claude::command(&b, &h, &w, &args)
            .args(["--output-format", "stream-json", "--verbose"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("claude -p finished within 180 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["type"] == "result")
        .unwrap_or_else(|| panic!("no result\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && result["is_error"] == false, "{stdout}");
    assert!(result["result"].as_str().unwrap_or("").contains(marker), "{result}");
    assert!(
        s.up.requests()
            .iter()
            .any(|q| q.body_str().contains(marker) && q.body_str().contains("tool_result")),
        "the tool result went upstream"
    );

    // Launcher mode (Claude Desktop's): the token handed over in the
    // environment, in a home that never signed in.
    let other_home = tempfile::tempdir().unwrap();
    let jwt = creds["enterpriseGateway"]["jwt"].as_str().unwrap().to_string();
    let (b, h, w, base) = (
        bin.clone(),
        other_home.path().to_path_buf(),
        work.path().to_path_buf(),
        gw.url(""),
    );
    let launched = tokio::task::spawn_blocking(move || {
        let args = [
            "-p",
            "Say pong.",
            "--model",
            "claude-sonnet-4-5",
            "--output-format",
            "json",
        ];
        support::claude::command(&b, &h, &w, &args)
            .env("CLAUDE_CODE_USE_GATEWAY", "1")
            .env("ANTHROPIC_BASE_URL", base)
            .env("ANTHROPIC_AUTH_TOKEN", jwt)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    });
    let launched = tokio::time::timeout(Duration::from_secs(120), launched)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&launched.stdout);
    assert!(
        launched.status.success() && text.contains("pong"),
        "{text}\n{}",
        String::from_utf8_lossy(&launched.stderr)
    );

    // The managed settings reached it: it fetched them, then (as their env
    // asks) discovered models and exported telemetry, stamped with Ada.
    let logs = gw.logs();
    let line = |what: &str| logs.lines().find(|l| l.contains(what)).map(str::to_string);
    assert!(line("GET /managed/settings status=200").is_some(), "{logs}");
    assert!(line("GET /v1/models status=200").is_some(), "{logs}");
    let messages = line("POST /v1/messages status=200").unwrap_or_else(|| panic!("{logs}"));
    assert!(messages.contains("key=ada@corp.example"), "{messages}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stamped = s
            .collector
            .requests()
            .iter()
            .any(|r| matches!(r.path(), "/v1/logs" | "/v1/metrics") && r.body_str().contains("ada@corp.example"));
        if stamped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no telemetry from Claude Code reached the collector\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_started_on_one_replica_finishes_on_another() {
    let Some(pg) = tokio::task::block_in_place(support::postgres::Postgres::start) else {
        return;
    };
    let db = pg.create_db("signin");
    let (pa, pb) = (free_port(), free_port());
    // Both replicas answer for one public URL (a load balancer's, in a
    // deployment; replica A's here, where the IdP sends the browser back).
    let Some(idp) = OidcProvider::start(&format!("http://127.0.0.1:{pa}/oauth/callback"), &users(), true) else {
        return;
    };
    let up = MockUpstream::start().await;
    let collector = MockUpstream::start().await;
    let spool = tempfile::tempdir().unwrap();
    let store = format!(
        "store:\n  url: \"{}\"\n  spool: \"{}\"\n",
        pg.url(&db),
        spool.path().display()
    );
    let yaml = config(&up.base_url(), &idp.issuer(), pa, &collector.base_url(), &store);
    let a = Gateway::start_on_async(pa, &yaml, &[]).await;
    let b = Gateway::start_on_async(pb, &yaml, &[]).await;

    // Claude Code talks to B; the browser to A; B hands out the token.
    let grant = device(&b).await;
    let (status, page) = approve_in_browser(&a, &grant, "ada").await;
    assert_eq!(status, 200, "{page}");
    let (status, token) = poll_until_done(&b, grant["device_code"].as_str().unwrap(), Duration::from_secs(1)).await;
    assert_eq!(status, 200, "{token}");
    let access = token["access_token"].as_str().unwrap();
    for gw in [&a, &b] {
        assert_eq!(message(gw, access, "claude-sonnet-4-5", false).await.status(), 200);
    }
    // A refresh on A of what B issued.
    let (status, next) = refresh(&a, token["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{next}");
    let access = next["access_token"].as_str().unwrap();

    // Signed out on B: A refuses the token within seconds (NOTIFY).
    let r = form_post(&b, "/oauth/revoke", &[("token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked = Instant::now();
    loop {
        let r = message(&a, access, "claude-sonnet-4-5", false).await;
        if r.status() == 401 {
            assert_refused(&r);
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "replica A still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("revocation reached the other replica in {:?}", revoked.elapsed());
    // Both replicas' requests are in the one ledger, under Ada.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sql = "SELECT count(*) FROM requests WHERE \"key\" = 'ada@corp.example' AND team = 'eng'";
    while pg.count(&db, sql) < 2 {
        assert!(
            Instant::now() < deadline,
            "the ledger never had both replicas' rows for Ada"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capped_developer_sees_their_standing_and_is_refused_at_the_cap() {
    // One mock answer costs about $0.0129 (see tests/governance.rs): the
    // second answer passes 75 % of $0.015, the third is refused.
    let Some(s) = setup_with("      budget: {usd: 0.015, period: daily}\n", "").await else {
        return;
    };
    let gw = &s.gw;
    let token = sign_in(gw, "ada").await;
    let access = token["access_token"].as_str().unwrap();
    let unified = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(format!("anthropic-ratelimit-unified-{name}"))
            .map(|v| v.to_str().unwrap().to_string())
    };
    // The provider account's own limits never reach the developer.
    s.up.push(
        mock::Reply::message("claude-sonnet-4-5", "one")
            .with_header("anthropic-ratelimit-requests-limit", "4000")
            .with_header("anthropic-ratelimit-unified-status", "allowed"),
    );
    let first = message(gw, access, "claude-sonnet-4-5", false).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("anthropic-ratelimit-requests-limit").is_none());
    assert_eq!(unified(&first, "status").as_deref(), Some("allowed"));
    assert_eq!(unified(&first, "representative-claim").as_deref(), Some("overage"));
    assert!(unified(&first, "overage-surpassed-threshold").is_none());
    let second = message(gw, access, "claude-sonnet-4-5", false).await;
    assert_eq!(second.status(), 200);
    assert_eq!(unified(&second, "status").as_deref(), Some("allowed_warning"));
    assert_eq!(unified(&second, "overage-surpassed-threshold").as_deref(), Some("0.75"));
    let reset = unified(&second, "overage-reset").unwrap();

    let usage = support::oidc::json(bearer(client().get(gw.url("/api/oauth/usage")), access)).await;
    assert_eq!(usage["extra_usage"]["monthly_limit"], 2, "{usage}");
    assert_eq!(usage["limits"][0]["group"], "daily", "{usage}");
    let resets_at = chrono::DateTime::parse_from_rfc3339(usage["limits"][0]["resets_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        resets_at.timestamp().to_string(),
        reset,
        "the dollars pair with the percent"
    );

    let third = message(gw, access, "claude-sonnet-4-5", true).await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["x-should-retry"], "false");
    assert!(third.headers().get("retry-after").is_some());
    assert_eq!(unified(&third, "status").as_deref(), Some("rejected"));
    assert_eq!(unified(&third, "overage-period").as_deref(), Some("daily"));
    assert_eq!(
        unified(&third, "overage-disabled-reason").as_deref(),
        Some("org_spend_cap_reached")
    );
    assert!(unified(&third, "representative-claim").is_none() && unified(&third, "overage-status").is_none());
    let e: Value = third.json().await.unwrap();
    assert_eq!(e["error"]["type"], "billing_error");
    assert_eq!(s.up.request_count(), 2, "the refused request never went upstream");
}

/// `modelgate ARGS… -c <the gateway's config>` in the gateway's directory.
fn cli(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .arg("-c")
        .arg(gw.config_path())
        .current_dir(gw.dir.path())
        .output()
        .expect("run modelgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_checks_the_setup_and_ends_a_developers_sessions() {
    let Some(s) = setup("").await else { return };
    let gw = &s.gw;
    let (code, out, err) = tokio::task::block_in_place(|| cli(gw, &["signin", "status"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&gw.url("/oauth/callback")) && out.contains("discovery:         ok"),
        "{out}"
    );
    assert!(out.contains("members of eng"), "{out}");
    // The test's secrets are written into its file: lint says so.
    let (code, out, _) = tokio::task::block_in_place(|| cli(gw, &["config", "lint"]));
    assert_eq!(code, 0);
    assert!(out.contains("signin.session.secret: a literal secret"), "{out}");
    assert!(out.contains("signin.oidc.client_secret: a literal secret"), "{out}");

    let token = sign_in(gw, "ada").await;
    let access = token["access_token"].as_str().unwrap();
    let (code, out, _) = tokio::task::block_in_place(|| cli(gw, &["sessions", "list", "--json"]));
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["user"], "ada@corp.example", "{out}");
    assert_eq!(listed[0]["state"], "active", "{out}");
    assert!(!out.contains(access) && !out.contains(token["refresh_token"].as_str().unwrap()));

    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            gw,
            &["sessions", "revoke", "ada@corp.example", "--reason", "offboarded"],
        )
    });
    assert_eq!(code, 0, "{out}{err}");
    let revoked = Instant::now();
    loop {
        let r = message(gw, access, "claude-sonnet-4-5", false).await;
        if r.status() == 401 {
            assert_refused(&r);
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(10),
            "the revoked token still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = refresh(gw, token["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_grant")));
    let (code, _, err) = tokio::task::block_in_place(|| cli(gw, &["sessions", "revoke", "ada@corp.example"]));
    assert_eq!(code, 1, "nothing left to revoke: {err}");
    let (_, out, _) = tokio::task::block_in_place(|| cli(gw, &["sessions", "list", "--all"]));
    assert!(out.contains("revoked") && out.contains("offboarded"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_tags_stay_at_the_gateway_and_name_the_billing_group() {
    let Some(s) = setup("audit: {path: audit.jsonl}\n").await else {
        return;
    };
    let gw = &s.gw;
    let token = sign_in(gw, "ada").await;
    let access = token["access_token"].as_str().unwrap();
    // The token tells Claude Code where to put the developer's project.
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["billing_group_tag"], "billing_group");
    assert_eq!(claims["aud"], "claude-gateway");

    let send = |token: &str, key: bool, group: &str| {
        let body = format!(
            r#"{{"model":"claude-sonnet-4-5","tags":{{"billing_group":"{group}"}},"max_tokens":8,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let req = client()
            .post(gw.url("/v1/messages"))
            .header("anthropic-beta", "request-tags-2026-08-21, fast-mode-2026-02-01")
            .header("content-type", "application/json");
        let req = if key {
            req.header("x-api-key", token)
        } else {
            req.header("authorization", format!("Bearer {token}"))
        };
        req.body(body).send()
    };
    assert_eq!(send(access, false, "eng").await.unwrap().status(), 200);
    let seen = s.up.requests().pop().unwrap();
    assert!(!seen.body_str().contains("tags"), "{}", seen.body_str());
    assert_eq!(seen.header("anthropic-beta").as_deref(), Some("fast-mode-2026-02-01"));
    assert_eq!(send(access, false, "sales").await.unwrap().status(), 200);
    // A gateway key's request passes as sent.
    assert_eq!(send(CI_KEY, true, "eng").await.unwrap().status(), 200);
    let seen = s.up.requests().pop().unwrap();
    assert!(seen.body_str().contains(r#""tags":{"billing_group":"eng"}"#));

    let audit = gw.dir.path().join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if lines.len() >= 3 {
            break lines;
        }
        assert!(Instant::now() < deadline, "the audit log has {} lines", lines.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines[0]["billing_group"], "eng", "{}", lines[0]);
    assert_eq!(lines[0]["key"], "ada@corp.example");
    assert!(
        lines[1].get("billing_group").is_none(),
        "not one of Ada's groups: {}",
        lines[1]
    );
    assert!(lines[2].get("billing_group").is_none());
}
