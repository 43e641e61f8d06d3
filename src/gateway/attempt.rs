//! Stage: the attempt loop — send the request to the plan's candidates until
//! one answers, before any byte reaches the client.
//!
//! For each attempt it picks a (provider, account) — plan order, accounts
//! ranked by weighted rendezvous hashing on the Claude Code session id (so a
//! session stays on one account), circuits permitting — builds the upstream
//! request head for that provider's dialect and account, sends it, and
//! classifies the answer: a 2xx whose first body chunk arrived is committed;
//! connect errors, first-byte timeouts, 429, 500/502/503/504/529 and bodies
//! that end before their first byte move on to the next target, with
//! exponential full-jitter backoff when the same account is tried again and
//! `retry-after` honoured; anything else (the client's own 4xx) is final.
//! Nothing here touches the downstream session: the relay stage does.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dialects::anthropic::{self, UpstreamAuth};
use crate::dialects::openai::Flavor;
use crate::error::GatewayError;
use crate::gateway::auth::Caller;
use crate::gateway::relay::{self, Buffered};
use crate::runtime::snapshot::{Candidate, Plan, Provider};
use crate::runtime::Snapshot;
use crate::upstream::balance;
use crate::upstream::health::{self, Admission};
use crate::upstream::{Exchange, Limits, UpstreamError, Upstreams};

/// What the client asked for, in the form a passthrough attempt reads.
pub struct Outbound<'r> {
    pub method: &'r http::Method,
    /// Client path without the query, e.g. `/v1/messages`.
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
}

fn internal(e: pingora::BError) -> GatewayError {
    GatewayError::Internal(format!("cannot build the upstream request: {e}"))
}

/// The head of a passthrough request to an Anthropic-type provider: the
/// client's method, path, query and headers under the header policy of
/// [`anthropic::forward_request_headers`].
pub fn anthropic_head(
    out: &Outbound<'_>,
    caller: &Caller,
    provider: &Provider,
    credential: Option<&crate::secret::Secret>,
    beta: Option<&str>,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let auth = match (credential, caller) {
        (Some(key), _) => UpstreamAuth::ProviderKey(key.expose()),
        (None, Caller::Passthrough) => UpstreamAuth::ClientCredential,
        (None, Caller::Key(_)) => UpstreamAuth::None,
    };
    let mut headers = anthropic::forward_request_headers(out.headers, auth, &provider.headers);
    if let Some(beta) = beta {
        anthropic::add_beta(&mut headers, beta);
    }
    let path = provider.base.join(out.path);
    let target = match out.query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut req =
        RequestHeader::build(out.method.clone(), target.as_bytes(), Some(headers.len() + 2)).map_err(internal)?;
    req.insert_header(http::header::HOST, &provider.base.authority)
        .map_err(internal)?;
    for (name, value) in headers {
        req.append_header(name, value).map_err(internal)?;
    }
    if body_len > 0 || out.method == http::Method::POST {
        req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
            .map_err(internal)?;
    }
    Ok(req)
}

/// The head every translated or cloud request starts from: a JSON POST to
/// `path` with the provider's extra headers. No client header crosses over:
/// `anthropic-*` headers mean nothing to other dialects, and the client's
/// credential is never sent to a provider it does not belong to.
fn json_post(provider: &Provider, path: &str, accept: &str, body_len: usize) -> Result<RequestHeader, GatewayError> {
    let mut req = RequestHeader::build(http::Method::POST, path.as_bytes(), Some(10 + provider.headers.len()))
        .map_err(internal)?;
    for (name, value) in [
        ("host", provider.base.authority.as_str()),
        ("content-type", "application/json"),
        ("accept", accept),
        ("accept-encoding", "identity"),
        ("user-agent", concat!("modelgate/", env!("CARGO_PKG_VERSION"))),
    ] {
        req.insert_header(name, value).map_err(internal)?;
    }
    req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
        .map_err(internal)?;
    for (n, v) in &provider.headers {
        req.insert_header(n.clone(), v.clone()).map_err(internal)?;
    }
    Ok(req)
}

/// Add a credential header, marked sensitive (kept out of Pingora's logs).
fn credential_header(
    req: &mut RequestHeader,
    provider: &Provider,
    name: HeaderName,
    value: &str,
) -> Result<(), GatewayError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        GatewayError::Internal(format!(
            "provider `{}` has a credential that is not a valid header value",
            provider.name
        ))
    })?;
    value.set_sensitive(true);
    req.insert_header(name, value).map_err(internal)?;
    Ok(())
}

fn accept(stream: bool) -> &'static str {
    if stream {
        "text/event-stream"
    } else {
        "application/json"
    }
}

/// The InvokeModel, Converse or count-tokens request: a Bedrock API key as
/// a bearer token, or a SigV4 signature (service `bedrock`) over method,
/// path, host, date and body hash. `aws-sigv4` encodes the path a second
/// time for the canonical request, as Bedrock expects (`%3A` is signed as
/// `%253A`).
pub fn bedrock_head(
    provider: &Provider,
    credential: Option<&crate::secret::Secret>,
    upstream_model: &str,
    call: BedrockCall,
    body: &[u8],
) -> Result<RequestHeader, GatewayError> {
    use crate::dialects::bedrock;
    let (path, accept) = match call {
        BedrockCall::Invoke { stream } => (bedrock::invoke_path(upstream_model, stream), stream),
        BedrockCall::Converse { stream } => (bedrock::converse::converse_path(upstream_model, stream), stream),
        BedrockCall::CountTokens => (bedrock::count_tokens_path(upstream_model), false),
    };
    let path = provider.base.join(&path);
    let accept = if accept {
        "application/vnd.amazon.eventstream"
    } else {
        "application/json"
    };
    let mut req = json_post(provider, &path, accept, body.len())?;
    if let Some(key) = credential {
        credential_header(
            &mut req,
            provider,
            http::header::AUTHORIZATION,
            &format!("Bearer {}", key.expose()),
        )?;
        return Ok(req);
    }
    let Some(aws) = provider.aws.as_deref() else {
        return Ok(req);
    };
    let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) else {
        return Ok(req);
    };
    let url = format!("https://{}{}", provider.base.authority, path);
    let signed = crate::upstream::sigv4::sign(
        &url,
        &req,
        body,
        &crate::upstream::sigv4::Credentials {
            access_key_id: id,
            secret_access_key: secret.expose(),
            session_token: aws.session_token.as_ref().map(|t| t.expose()),
            region: &aws.region,
        },
        std::time::SystemTime::now(),
    )
    .map_err(|e| GatewayError::Internal(format!("cannot sign the request to `{}`: {e}", provider.name)))?;
    for (name, value) in signed {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| GatewayError::Internal(e.to_string()))?;
        credential_header(&mut req, provider, name, &value)?;
    }
    Ok(req)
}

/// A Chat Completions request (Azure: deployment in the path, `api-key`).
pub fn openai_head(
    provider: &Provider,
    credential: Option<&crate::secret::Secret>,
    flavor: Flavor,
    upstream_model: &str,
    stream: bool,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let target = match flavor {
        Flavor::Azure => {
            let deployment = provider.deployment.as_deref().unwrap_or(upstream_model);
            let encoded: String = url::form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
            let version = provider
                .api_version
                .as_deref()
                .unwrap_or(crate::runtime::snapshot::DEFAULT_AZURE_API_VERSION);
            let path = provider
                .base
                .join(&format!("/openai/deployments/{encoded}/chat/completions"));
            let version: String = url::form_urlencoded::byte_serialize(version.as_bytes()).collect();
            format!("{path}?api-version={version}")
        }
        _ => provider.base.join("/chat/completions"),
    };
    let mut req = json_post(provider, &target, accept(stream), body_len)?;
    if let Some(key) = credential {
        match flavor {
            Flavor::Azure => credential_header(&mut req, provider, HeaderName::from_static("api-key"), key.expose())?,
            _ => credential_header(
                &mut req,
                provider,
                http::header::AUTHORIZATION,
                &format!("Bearer {}", key.expose()),
            )?,
        }
    }
    Ok(req)
}

/// A Gemini request: AI Studio with `x-goog-api-key`, or Vertex AI
/// (`publishers/google`) with an OAuth bearer token.
pub fn gemini_head(
    provider: &Provider,
    credential: Option<&crate::secret::Secret>,
    bearer: Option<&str>,
    upstream_model: &str,
    call: GeminiCall,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    use crate::dialects::gemini;
    let path = match (&provider.vertex, call) {
        (Some(site), GeminiCall::Generate { stream: true }) => {
            site.model_path("google", upstream_model, "streamGenerateContent?alt=sse")
        }
        (Some(site), GeminiCall::Generate { stream: false }) => {
            site.model_path("google", upstream_model, "generateContent")
        }
        (Some(site), GeminiCall::CountTokens) => site.model_path("google", upstream_model, "countTokens"),
        (None, GeminiCall::Generate { stream }) => format!("/{}", gemini::generate_path(upstream_model, stream)),
        (None, GeminiCall::CountTokens) => format!("/{}", gemini::count_tokens_path(upstream_model)),
    };
    let stream = matches!(call, GeminiCall::Generate { stream: true });
    let mut req = json_post(provider, &provider.base.join(&path), accept(stream), body_len)?;
    if let Some(token) = bearer {
        credential_header(
            &mut req,
            provider,
            http::header::AUTHORIZATION,
            &format!("Bearer {token}"),
        )?;
    } else if let Some(key) = credential {
        credential_header(
            &mut req,
            provider,
            HeaderName::from_static("x-goog-api-key"),
            key.expose(),
        )?;
    }
    Ok(req)
}

/// Claude on Vertex AI (`publishers/anthropic`): `rawPredict`,
/// `streamRawPredict`, or the `count-tokens` model, with the betas Vertex
/// accepts in `anthropic-beta` and an OAuth bearer token.
pub fn vertex_claude_head(
    provider: &Provider,
    bearer: Option<&str>,
    upstream_model: &str,
    call: VertexClaudeCall,
    betas: &[String],
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let Some(site) = &provider.vertex else {
        return Err(GatewayError::Internal(format!(
            "provider `{}` has no Vertex project",
            provider.name
        )));
    };
    let (model, method, stream) = match call {
        VertexClaudeCall::Predict { stream: true } => (upstream_model, "streamRawPredict", true),
        VertexClaudeCall::Predict { stream: false } => (upstream_model, "rawPredict", false),
        VertexClaudeCall::CountTokens => ("count-tokens", "rawPredict", false),
    };
    let path = provider.base.join(&site.model_path("anthropic", model, method));
    let mut req = json_post(provider, &path, accept(stream), body_len)?;
    if !betas.is_empty() {
        req.insert_header("anthropic-beta", betas.join(",")).map_err(internal)?;
    }
    if let Some(token) = bearer {
        credential_header(
            &mut req,
            provider,
            http::header::AUTHORIZATION,
            &format!("Bearer {token}"),
        )?;
    }
    Ok(req)
}

/// Send a built request to `provider` and wait for its response header.
pub async fn send<'u>(
    upstreams: &'u Upstreams,
    snap: &Snapshot,
    provider: &Provider,
    head: RequestHeader,
    body: Bytes,
) -> Result<Exchange<'u>, GatewayError> {
    let limits = Limits {
        connect: snap.connect_timeout,
        idle: snap.timeout,
    };
    upstreams
        .send(&provider.base, head, body, limits)
        .await
        .map_err(|e| upstream_error(&provider.name, e, snap))
}

/// Map an upstream failure before any response byte to the client's error.
pub fn upstream_error(provider: &str, e: UpstreamError, snap: &Snapshot) -> GatewayError {
    match e {
        UpstreamError::Connect(detail) => GatewayError::UpstreamUnreachable {
            provider: provider.to_string(),
            detail,
        },
        UpstreamError::Timeout => GatewayError::UpstreamTimeout {
            provider: provider.to_string(),
            after: snap.timeout,
        },
        UpstreamError::Io(detail) => GatewayError::UpstreamBroken {
            provider: provider.to_string(),
            detail,
        },
    }
}

/// How a candidate's request is sent: the body, and what the relay must know
/// to read the answer. Built once per candidate, reused by its retries.
pub enum Prepared {
    Anthropic {
        body: Bytes,
        /// A beta to add to `anthropic-beta` (fast mode), if not already there.
        beta: Option<&'static str>,
        /// The model id sent upstream (`None`: the body passes unparsed).
        upstream_model: Option<String>,
    },
    OpenAi {
        flavor: Flavor,
        upstream_model: String,
        translated: crate::dialects::openai::request::Translated,
        body: Bytes,
    },
    Bedrock {
        upstream_model: String,
        call: BedrockCall,
        body: Bytes,
        /// Converse: seeds `message_start` before Bedrock reports the count.
        estimated_input_tokens: u64,
    },
    /// Gemini API or Vertex AI `publishers/google`.
    Gemini {
        upstream_model: String,
        call: GeminiCall,
        translated: crate::dialects::gemini::Translated,
        body: Bytes,
    },
    /// Claude on Vertex AI (`publishers/anthropic`).
    VertexClaude {
        upstream_model: String,
        call: VertexClaudeCall,
        /// The accepted `anthropic-beta` values (sent as the header).
        betas: Vec<String>,
        body: Bytes,
    },
}

/// Which Bedrock operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BedrockCall {
    /// InvokeModel with the Messages body (Anthropic models).
    Invoke {
        stream: bool,
    },
    /// Converse / ConverseStream (every other model).
    Converse {
        stream: bool,
    },
    CountTokens,
}

/// Which Gemini operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeminiCall {
    Generate { stream: bool },
    CountTokens,
}

/// Which Vertex `publishers/anthropic` operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VertexClaudeCall {
    Predict { stream: bool },
    CountTokens,
}

impl Prepared {
    fn body(&self) -> Bytes {
        match self {
            Prepared::Anthropic { body, .. }
            | Prepared::OpenAi { body, .. }
            | Prepared::Bedrock { body, .. }
            | Prepared::Gemini { body, .. }
            | Prepared::VertexClaude { body, .. } => body.clone(),
        }
    }

    /// The model id sent upstream (`None`: an unparsed passthrough body).
    pub fn upstream_model(&self) -> Option<&str> {
        match self {
            Prepared::Anthropic { upstream_model, .. } => upstream_model.as_deref(),
            Prepared::OpenAi { upstream_model, .. }
            | Prepared::Bedrock { upstream_model, .. }
            | Prepared::Gemini { upstream_model, .. }
            | Prepared::VertexClaude { upstream_model, .. } => Some(upstream_model),
        }
    }
}

/// Everything an attempt needs besides the plan.
pub struct Job<'a> {
    pub out: Outbound<'a>,
    pub caller: &'a Caller,
    /// Balancing key: the session id's hash, or a random one.
    pub balance_key: u64,
    /// The model the plan was resolved for (empty for an unparsed
    /// passthrough body); a candidate without a rename sends it upstream.
    pub model: &'a str,
    /// Whether a request the upstream may have acted on can be sent again
    /// (to another target, after a 5xx, 429 or a failure mid-exchange).
    /// Messages requests can; a passthrough POST or DELETE (a batch, a file)
    /// cannot: it is retried only when it never left the gateway.
    pub resend: bool,
    /// Builds a candidate's request (translation included).
    pub prepare: &'a (dyn Fn(&Candidate) -> Result<Prepared, GatewayError> + Sync),
    /// Upstream requests sent so far, kept up to date by the loop, so a
    /// request that fails in the end still reports how many it took.
    pub sent: &'a std::sync::atomic::AtomicU32,
}

/// The answer the loop settled on; the relay takes it from here.
pub struct Committed<'u> {
    pub exchange: Exchange<'u>,
    pub provider: Arc<Provider>,
    pub account: String,
    pub prepared: Prepared,
    pub attempts: u32,
}

/// Why the loop gave up: the last failure, shaped for the client.
pub enum Failure {
    Gateway(GatewayError),
    /// An Anthropic-type upstream's own error response, relayed verbatim.
    Upstream(Buffered),
}

impl Failure {
    /// What the upstream said, in a line (a buffered body's error message).
    fn message(&self) -> String {
        let text = match self {
            Failure::Gateway(e) => e.to_string(),
            Failure::Upstream(b) => serde_json::from_slice::<serde_json::Value>(&b.body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&b.body).into_owned()),
        };
        let mut line: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        if line.is_empty() {
            line.push_str("no detail");
        }
        line
    }
}

/// Whether this attempt carried the client's own credential (an
/// Anthropic-type provider without a key, in passthrough-auth), so that a
/// 401/403 is the client's to fix (`/login`) and is relayed as it came.
fn forwards_client_credential(caller: &Caller, account: &crate::runtime::snapshot::Account, prep: &Prepared) -> bool {
    matches!(caller, Caller::Passthrough) && account.credential.is_none() && matches!(prep, Prepared::Anthropic { .. })
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Failure::Gateway(e)
    }
}

/// The longest the loop waits, in total, for cool-downs (`retry-after`) and
/// backoff. Claude Code itself gives up on a `retry-after` above 60 s.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Statuses that mean "this upstream, not this request": try elsewhere.
const RETRYABLE: [u16; 6] = [429, 500, 502, 503, 504, 529];

struct Target {
    candidate: usize,
    account: usize,
}

/// The model a candidate is sent: what its 429 cool-downs are kept by.
fn cooling_key<'a>(c: &'a Candidate, job: &'a Job<'_>) -> &'a str {
    c.rename.as_deref().unwrap_or(job.model)
}

pub async fn run<'u>(
    upstreams: &'u Upstreams,
    health: &health::Registry,
    snap: &Snapshot,
    plan: &Plan,
    job: &Job<'_>,
) -> Result<Committed<'u>, Failure> {
    let max_attempts = 1 + snap.config.max_retries;
    let base_delay = snap.config.retry_delay.0;
    let mut prepared: Vec<Option<Prepared>> = plan.candidates.iter().map(|_| None).collect();
    let mut tried: Vec<(usize, usize)> = Vec::new();
    // Accounts whose upstream refused the gateway's credential (401/403):
    // not asked again within this request.
    let mut refused: Vec<(usize, usize)> = Vec::new();
    let mut last: Option<Failure> = None;
    let mut waited = Duration::ZERO;
    let ranks: Vec<Vec<usize>> = plan
        .candidates
        .iter()
        .map(|c| {
            let labels: Vec<(&str, u32)> = c
                .provider
                .accounts
                .iter()
                .map(|a| (a.label.as_str(), a.weight))
                .collect();
            balance::rank(&labels, job.balance_key)
        })
        .collect();

    for attempt in 0..max_attempts {
        let now = Instant::now();
        let target = match pick(plan, job, &ranks, health, &tried, &refused, now) {
            Pick::Now(t) => t,
            Pick::Wait(t, until) => {
                let wait = until.saturating_duration_since(now);
                if waited + wait > MAX_WAIT {
                    break;
                }
                tokio::time::sleep(wait).await;
                waited += wait;
                // The cool-down is over; take the slot (it may be the
                // half-open probe). Someone else may have taken it first.
                let c = &plan.candidates[t.candidate];
                let circuit = health.circuit(&c.provider.name, &c.provider.accounts[t.account].label);
                if let Admission::Blocked(_) | Admission::Cooling(_) =
                    circuit.admit(Instant::now(), cooling_key(c, job))
                {
                    continue;
                }
                t
            }
            Pick::Nothing => break,
        };
        // Same account again: back off (full jitter), a different one: go now.
        if tried.contains(&(target.candidate, target.account)) {
            let cap = base_delay.saturating_mul(1 << (attempt.min(16) - 1).min(16));
            let delay = cap.mul_f64(rand::random::<f64>());
            if waited + delay > MAX_WAIT {
                break;
            }
            tokio::time::sleep(delay).await;
            waited += delay;
        }
        tried.push((target.candidate, target.account));
        let candidate = &plan.candidates[target.candidate];
        let provider = &candidate.provider;
        let account = &provider.accounts[target.account];
        let circuit = health.circuit(&provider.name, &account.label);
        let model = cooling_key(candidate, job);
        let prep = match &mut prepared[target.candidate] {
            Some(p) => p,
            slot @ None => match (job.prepare)(candidate) {
                Ok(p) => slot.insert(p),
                Err(e) => {
                    // Never sent: a probe slot this took goes back.
                    circuit.release(Instant::now());
                    return Err(e.into());
                }
            },
        };
        // Vertex accounts send a service account's OAuth token (cached by
        // the token source; fetched only when it is missing or expiring).
        let bearer = match &account.google {
            Some(source) => match source.token().await {
                Ok(token) => Some(token),
                Err(e) => {
                    log::warn!("attempt {} to `{}`: {e}", attempt + 1, account.label);
                    count(&provider.name, "auth_error");
                    circuit.failure(Instant::now());
                    last = Some(Failure::Gateway(GatewayError::UpstreamUnreachable {
                        provider: provider.name.clone(),
                        detail: "no Google access token for this account (see the gateway log)".into(),
                    }));
                    continue;
                }
            },
            None => None,
        };
        let built = match prep {
            Prepared::Anthropic { body, beta, .. } => anthropic_head(
                &job.out,
                job.caller,
                provider,
                account.credential.as_ref(),
                *beta,
                body.len(),
            ),
            Prepared::OpenAi {
                flavor,
                upstream_model,
                translated,
                body,
            } => openai_head(
                provider,
                account.credential.as_ref(),
                *flavor,
                upstream_model,
                translated.stream,
                body.len(),
            ),
            Prepared::Bedrock {
                upstream_model,
                call,
                body,
                ..
            } => bedrock_head(provider, account.credential.as_ref(), upstream_model, *call, body),
            Prepared::Gemini {
                upstream_model,
                call,
                body,
                ..
            } => gemini_head(
                provider,
                account.credential.as_ref(),
                bearer.as_deref(),
                upstream_model,
                *call,
                body.len(),
            ),
            Prepared::VertexClaude {
                upstream_model,
                call,
                betas,
                body,
            } => vertex_claude_head(provider, bearer.as_deref(), upstream_model, *call, betas, body.len()),
        };
        let head = match built {
            Ok(head) => head,
            Err(e) => {
                circuit.release(Instant::now());
                return Err(e.into());
            }
        };
        job.sent.store(attempt + 1, std::sync::atomic::Ordering::Relaxed);
        // Boxed: sending (connect, write, read the head) is the largest
        // future here, and inline it would size the request's future, and
        // so every open stream's memory, for the whole relay.
        let mut exchange = match Box::pin(send(upstreams, snap, provider, head, prep.body())).await {
            Ok(x) => x,
            Err(e) => {
                log::info!("attempt {} to `{}` failed: {e}", attempt + 1, account.label);
                let (outcome, sent) = match e {
                    GatewayError::UpstreamUnreachable { .. } => ("connect_error", false),
                    GatewayError::UpstreamTimeout { .. } => ("timeout", true),
                    _ => ("broken", true),
                };
                count(&provider.name, outcome);
                circuit.failure(Instant::now());
                if sent && !job.resend {
                    return Err(e.into());
                }
                last = Some(e.into());
                continue;
            }
        };
        let status = exchange.header().status.as_u16();
        // The upstream refused a credential the gateway sent (its own key,
        // or none where one was needed): the account's problem, never the
        // client's, so it counts against the account and the next one is tried.
        let refused_credential = matches!(status, 401 | 403) && !forwards_client_credential(job.caller, account, prep);
        // A success that has begun, or the client's own error (one no other
        // upstream would fix), is final; the account answered, so it counts
        // as healthy.
        let settled = if status < 300 {
            match exchange.peek().await {
                Ok(true) => Some("ok"),
                // An empty answer is an answer where one is expected.
                Ok(false) if !job.resend || status == 204 || *job.out.method == http::Method::HEAD => Some("ok"),
                Ok(false) | Err(_) => {
                    count(&provider.name, "broken");
                    log::info!(
                        "attempt {} to `{}`: the response ended before its first byte",
                        attempt + 1,
                        account.label
                    );
                    circuit.failure(Instant::now());
                    exchange.abort().await;
                    last = Some(Failure::Gateway(GatewayError::UpstreamBroken {
                        provider: provider.name.clone(),
                        detail: "the response ended before its first byte".into(),
                    }));
                    continue;
                }
            }
        } else if !RETRYABLE.contains(&status) && !refused_credential {
            Some("final_4xx")
        } else {
            None
        };
        if let Some(outcome) = settled {
            count(&provider.name, outcome);
            circuit.success(model);
            return Ok(commit(
                exchange,
                candidate,
                account,
                &mut prepared[target.candidate],
                attempt,
            ));
        }
        let now = Instant::now();
        if refused_credential {
            count(&provider.name, "credential_refused");
            circuit.failure(now);
            refused.push((target.candidate, target.account));
        } else if status == 429 {
            count(&provider.name, "status_429");
            // The upstream's own `retry-after`; OpenAI's reset durations say
            // when a whole budget refills, too long for a cool-down.
            let retry_after = exchange
                .header()
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(health::DEFAULT_THROTTLE);
            circuit.throttled(model, now + retry_after);
        } else {
            count(&provider.name, "status_5xx");
            circuit.failure(now);
        }
        if !job.resend {
            // Not safe to send again: the upstream may have acted on it.
            // This answer, whatever it says, is the client's.
            return Ok(commit(
                exchange,
                candidate,
                account,
                &mut prepared[target.candidate],
                attempt,
            ));
        }
        log::info!(
            "attempt {} to `{}` answered {status}; trying elsewhere",
            attempt + 1,
            account.label
        );
        let failure = match prep {
            Prepared::Anthropic { .. } => Failure::Upstream(relay::buffer(exchange, &provider.name).await),
            Prepared::OpenAi { .. } => Failure::Gateway(relay::openai_error(exchange, &provider.name).await),
            Prepared::Bedrock { .. } => Failure::Gateway(relay::bedrock_error(exchange, &provider.name).await),
            Prepared::Gemini { .. } => Failure::Gateway(relay::gemini_error(exchange, &provider.name).await),
            Prepared::VertexClaude { .. } => relay::vertex_claude_error(exchange, &provider.name).await,
        };
        last = Some(if refused_credential {
            let e = GatewayError::CredentialRefused {
                provider: provider.name.clone(),
                account: account.label.clone(),
                status,
                detail: failure.message(),
            };
            log::warn!("{e}");
            Failure::Gateway(e)
        } else {
            failure
        });
    }
    Err(last.unwrap_or_else(|| {
        let wait = plan
            .candidates
            .iter()
            .flat_map(|c| c.provider.accounts.iter().map(move |a| (c, a)))
            .filter_map(|(c, a)| {
                health
                    .circuit(&c.provider.name, &a.label)
                    .blocked_until(Instant::now(), cooling_key(c, job))
            })
            .min()
            .map(|u| u.saturating_duration_since(Instant::now()).as_secs().max(1));
        Failure::Gateway(GatewayError::Unavailable {
            message: format!(
                "every upstream for this request is unavailable ({}); retry shortly",
                plan.reason
            ),
            retry_after: wait,
        })
    }))
}

enum Pick {
    Now(Target),
    Wait(Target, Instant),
    Nothing,
}

/// The next target: an untried account that is admitted now, in plan order;
/// else a tried one admitted now (a retry); else the 429 cool-down that ends
/// first.
fn pick(
    plan: &Plan,
    job: &Job<'_>,
    ranks: &[Vec<usize>],
    health: &health::Registry,
    tried: &[(usize, usize)],
    refused: &[(usize, usize)],
    now: Instant,
) -> Pick {
    let mut earliest: Option<(Target, Instant)> = None;
    for retry_pass in [false, true] {
        for (ci, c) in plan.candidates.iter().enumerate() {
            for &ai in &ranks[ci] {
                if tried.contains(&(ci, ai)) != retry_pass || refused.contains(&(ci, ai)) {
                    continue;
                }
                let circuit = health.circuit(&c.provider.name, &c.provider.accounts[ai].label);
                match circuit.admit(now, cooling_key(c, job)) {
                    Admission::Ready | Admission::Probe => {
                        return Pick::Now(Target {
                            candidate: ci,
                            account: ai,
                        })
                    }
                    // A failed account is not waited for: its probe comes
                    // from traffic after the cool-down, and meanwhile the
                    // client hears at once. A 429 cool-down is worth a wait.
                    Admission::Blocked(_) => count(&c.provider.name, "circuit_open"),
                    Admission::Cooling(until) => {
                        if earliest.as_ref().is_none_or(|(_, e)| until < *e) {
                            earliest = Some((
                                Target {
                                    candidate: ci,
                                    account: ai,
                                },
                                until,
                            ));
                        }
                    }
                }
            }
        }
    }
    match earliest {
        Some((t, until)) => Pick::Wait(t, until),
        None => Pick::Nothing,
    }
}

fn commit<'u>(
    exchange: Exchange<'u>,
    candidate: &Candidate,
    account: &crate::runtime::snapshot::Account,
    prepared: &mut Option<Prepared>,
    attempt: u32,
) -> Committed<'u> {
    Committed {
        exchange,
        provider: candidate.provider.clone(),
        account: account.label.clone(),
        // The slot was filled before this attempt was sent.
        prepared: prepared.take().unwrap_or(Prepared::Anthropic {
            body: Bytes::new(),
            beta: None,
            upstream_model: None,
        }),
        attempts: attempt + 1,
    }
}

fn count(provider: &str, outcome: &str) {
    crate::telemetry::METRICS
        .attempts
        .with_label_values(&[provider, outcome])
        .inc();
}
