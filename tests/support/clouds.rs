//! Mock Claude platforms that serve the Messages API (Claude in Amazon
//! Bedrock, Claude Platform on AWS, Microsoft Foundry, Claude on Google
//! Cloud): each is a [`MockUpstream`] whose default reply checks the
//! request the way the platform does (its credential, its path, the betas
//! and fields it takes, its model-id form) and refuses what the platform
//! refuses, in the platform's words, before answering like Anthropic's API.
//!
//! Also: SigV4 verification (the signature recomputed with `aws-sigv4` and
//! the test keys), and a Microsoft Entra ID token endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::mock::{MockUpstream, Recorded, Reply};

pub const ACCESS_KEY: &str = "AKIDMODELGATETEST01";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYmodelgateKEY";
/// The environment that lets the gateway sign with the test keys.
pub const AWS_ENV: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];

/// Recompute a request's SigV4 signature for `service` in `region` with the
/// test keys; `None` when it matches what the request carries.
pub fn sigv4_problem(rec: &Recorded, service: &str, region: &str) -> Option<String> {
    use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
    let header = |name: &str| rec.header(name).unwrap_or_default();
    let auth = header("authorization");
    if !auth.starts_with("AWS4-HMAC-SHA256 ") {
        return Some(format!("no SigV4 authorization header: {auth:?}"));
    }
    let date = header("x-amz-date");
    let Ok(time) = chrono::NaiveDateTime::parse_from_str(&date, "%Y%m%dT%H%M%SZ") else {
        return Some(format!("bad x-amz-date {date:?}"));
    };
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(time.and_utc().timestamp() as u64);
    let identity = aws_credential_types::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let host = header("host");
    let content_type = header("content-type");
    let url = format!("https://{host}{}", rec.uri);
    let headers = [("host", host.as_str()), ("content-type", content_type.as_str())];
    let signable = SignableRequest::new(&rec.method, url, headers.into_iter(), SignableBody::Bytes(&rec.body)).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let want = instructions
        .headers()
        .find(|(n, _)| *n == "authorization")
        .map(|(_, v)| v.to_string())
        .unwrap();
    (want != auth).then(|| format!("signature mismatch:\n got  {auth}\n want {want}"))
}

/// How a mock platform checks the caller.
#[derive(Clone)]
pub enum Auth {
    /// This header must carry this value.
    Header(&'static str, String),
    /// `Authorization: Bearer` with a token the closure accepts.
    Bearer(Arc<dyn Fn(&str) -> bool + Send + Sync>),
    /// A SigV4 signature for this service and region with the test keys.
    SigV4(&'static str, &'static str),
    /// A key in this header, or else a SigV4 signature.
    HeaderOrSigV4(&'static str, String, &'static str, &'static str),
}

/// What a mock platform accepts.
#[derive(Clone)]
pub struct Platform {
    pub name: &'static str,
    pub auth: Auth,
    /// The path of the Messages endpoint.
    pub path: String,
    /// `None`: any `anthropic-beta`; `Some(list)`: only these.
    pub betas: Option<Vec<&'static str>>,
    /// Top-level body fields the platform refuses.
    pub refused_fields: Vec<&'static str>,
    /// Tool fields the platform refuses.
    pub refused_tool_fields: Vec<&'static str>,
    /// Model ids must start with this.
    pub model_prefix: &'static str,
    /// Headers that must be there, with these values.
    pub required: Vec<(&'static str, String)>,
}

impl Platform {
    /// Claude in Amazon Bedrock's Messages API: no betas, and none of the
    /// beta-paired fields (Anthropic's platform table, §5.5).
    pub fn bedrock_messages(auth: Auth, path: &str) -> Platform {
        Platform {
            name: "bedrock",
            auth,
            path: path.to_string(),
            betas: Some(Vec::new()),
            refused_fields: vec![
                "context_management",
                "output_config",
                "speed",
                "container",
                "mcp_servers",
            ],
            refused_tool_fields: vec!["defer_loading", "input_examples", "strict", "eager_input_streaming"],
            model_prefix: "anthropic.",
            required: vec![("anthropic-version", "2023-06-01".into())],
        }
    }

    /// A platform that takes the first-party Messages API whole.
    pub fn messages_api(name: &'static str, auth: Auth, path: &str) -> Platform {
        Platform {
            name,
            auth,
            path: path.to_string(),
            betas: None,
            refused_fields: Vec::new(),
            refused_tool_fields: Vec::new(),
            model_prefix: "claude-",
            required: vec![("anthropic-version", "2023-06-01".into())],
        }
    }

    /// Why the platform would refuse `rec`: `(status, body)`, in its words.
    pub fn refusal(&self, rec: &Recorded) -> Option<(u16, String)> {
        let aws_denied = |why: String| (403, serde_json::json!({ "message": why }).to_string());
        let anthropic = |status: u16, kind: &str, message: String| {
            (
                status,
                serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
            )
        };
        match &self.auth {
            Auth::Header(name, value) => {
                if rec.header(name).as_deref() != Some(value.as_str()) {
                    return Some(anthropic(401, "authentication_error", format!("invalid {name}")));
                }
            }
            Auth::Bearer(ok) => {
                let auth = rec.header("authorization").unwrap_or_default();
                if !auth.strip_prefix("Bearer ").is_some_and(|t| ok(t)) {
                    return Some(anthropic(401, "authentication_error", "invalid bearer token".into()));
                }
            }
            Auth::SigV4(service, region) => {
                if let Some(why) = sigv4_problem(rec, service, region) {
                    return Some(aws_denied(why));
                }
            }
            Auth::HeaderOrSigV4(name, value, service, region) => {
                if rec.header(name).as_deref() != Some(value.as_str()) {
                    if let Some(why) = sigv4_problem(rec, service, region) {
                        return Some(aws_denied(why));
                    }
                }
            }
        }
        if rec.method != "POST" || rec.path() != self.path {
            return Some(anthropic(
                404,
                "not_found_error",
                format!("no route {} {}", rec.method, rec.path()),
            ));
        }
        for (name, value) in &self.required {
            if rec.header(name).as_deref() != Some(value.as_str()) {
                return Some(anthropic(400, "invalid_request_error", format!("{name}: required")));
            }
        }
        if let Some(accepted) = &self.betas {
            for beta in rec
                .header_all("anthropic-beta")
                .iter()
                .flat_map(|v| v.split(',').map(str::trim).map(str::to_string).collect::<Vec<_>>())
            {
                if !accepted.contains(&beta.as_str()) {
                    return Some(anthropic(
                        400,
                        "invalid_request_error",
                        format!("Unexpected value(s) `{beta}` for the `anthropic-beta` header."),
                    ));
                }
            }
        }
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&rec.body) else {
            return Some(anthropic(400, "invalid_request_error", "body is not JSON".into()));
        };
        for field in &self.refused_fields {
            if body.get(field).is_some() {
                return Some(anthropic(
                    400,
                    "invalid_request_error",
                    format!("{field}: Extra inputs are not permitted"),
                ));
            }
        }
        for tool in body["tools"].as_array().into_iter().flatten() {
            for field in &self.refused_tool_fields {
                if tool.get(field).is_some() {
                    return Some(anthropic(
                        400,
                        "invalid_request_error",
                        format!("tools.0.{field}: Extra inputs are not permitted"),
                    ));
                }
            }
        }
        let model = body["model"].as_str().unwrap_or_default();
        if !model.starts_with(self.model_prefix) {
            return Some(anthropic(404, "not_found_error", format!("model: {model}")));
        }
        None
    }

    /// A mock of this platform: refuses as [`Platform::refusal`] says, else
    /// answers the model named with a message (or its stream).
    pub async fn start(self) -> MockUpstream {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::script(move |rec| {
            if let Some((status, body)) = self.refusal(rec) {
                return Reply::json(status, body).with_header("request-id", "req_platform_refusal");
            }
            let body: serde_json::Value = serde_json::from_slice(&rec.body).unwrap_or_default();
            let model = body["model"].as_str().unwrap_or_default();
            if body["stream"] == true {
                Reply::sse_message(model, &["Hello from ", self.name])
            } else {
                Reply::message(model, &format!("Hello from {}", self.name))
            }
        }));
        mock
    }
}

/// A Microsoft Entra ID token endpoint (`/{tenant}/oauth2/v2.0/token`) for
/// one application: checks the client-credentials form and issues
/// `entra-token-N`.
pub struct EntraEndpoint {
    pub mock: MockUpstream,
    issued: Arc<AtomicUsize>,
}

impl EntraEndpoint {
    pub async fn start(tenant: &'static str, client_id: &'static str, secret: &'static str) -> EntraEndpoint {
        let mock = MockUpstream::start().await;
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = issued.clone();
        mock.set_default(Reply::script(move |rec| {
            let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&rec.body)
                .into_owned()
                .collect();
            let get = |k: &str| form.get(k).map(String::as_str);
            let refused = |code: &str, description: &str| {
                Reply::json(
                    401,
                    serde_json::json!({"error": code, "error_description": description}).to_string(),
                )
            };
            if rec.path() != format!("/{tenant}/oauth2/v2.0/token") {
                return refused("invalid_request", "AADSTS90002: Tenant not found.");
            }
            if get("grant_type") != Some("client_credentials") || get("scope") != Some("https://ai.azure.com/.default")
            {
                return refused("invalid_request", "AADSTS900144: bad grant or scope.");
            }
            if get("client_id") != Some(client_id) || get("client_secret") != Some(secret) {
                return refused(
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.",
                );
            }
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(
                200,
                serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("entra-token-{n}")})
                    .to_string(),
            )
        }));
        EntraEndpoint { mock, issued }
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Whether `token` is one this endpoint issued.
    pub fn accepts(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let issued = self.issued.clone();
        Arc::new(move |t: &str| {
            t.strip_prefix("entra-token-")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= 1 && n <= issued.load(Ordering::SeqCst))
        })
    }
}
