//! The provider seam: everything that differs between provider types, behind
//! one table and two traits. The gateway never names a provider type or a
//! dialect; it calls these.
//!
//! - [`TYPES`] has one [`ProviderType`] row per `providers.<name>.type`: its
//!   name, default `api_base`, credential conventions, and the function that
//!   builds an [`Adapter`] from the config. Config building
//!   (`runtime::snapshot`), `modelgate provider add|list --builtins`, the
//!   JSON Schema and `config doctor` read it; nothing keeps a second list.
//! - An [`Adapter`] is one configured provider's behaviour, built once per
//!   config load: it turns a parsed Messages request into a [`Call`] for one
//!   candidate (translating the body where the dialect differs), says how a
//!   health probe authenticates, and whether the upstream counts tokens.
//! - A [`Call`] is one candidate's request, built once and reused by its
//!   retries: the body, the request head for an attempt with a given
//!   account, what a refusal means for the client ([`Refusal`]), and how the
//!   committed answer becomes the client's ([`Answer`]).
//!
//! Trait objects rather than one enum: a new provider type is then one file
//! here plus one row in [`TYPES`], and no match elsewhere grows an arm. The
//! cost is one allocation per candidate per request (the `Box<dyn Call>`),
//! which is noise beside the request itself. The dialect code the adapters
//! call (`crate::dialects`) stays pure: bytes and values in, bytes out.
//!
//! Adding a provider type: a dialect module if its wire format is new
//! (`dialects/`, golden-tested), an adapter file here implementing
//! [`Adapter`] and [`Call`], and its row in [`TYPES`]. `docs/architecture.md`
//! has the checklist.

pub mod anthropic;
pub mod aws;
pub mod bedrock;
pub mod gemini;
pub mod google;
pub mod openai;
pub mod vertex;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::schema::ProviderConfig;
use crate::config::ConfigError;
use crate::dialects::anthropic::MessagesRequest;
use crate::dialects::Usage;
use crate::error::GatewayError;
use crate::secret::Secret;
use crate::upstream::UpstreamBase;

/// One provider type: the row the config, the CLI and the schema read.
#[derive(Debug)]
pub struct ProviderType {
    /// `providers.<name>.type`.
    pub name: &'static str,
    /// The OpenTelemetry GenAI `gen_ai.system` of its answers.
    pub gen_ai_system: &'static str,
    /// `api_base` when the config gives none.
    pub default_base: Option<&'static str>,
    /// Where the base comes from when there is no fixed default, as
    /// `provider list --builtins` and `provider add` say it.
    pub base_from: Option<BaseFrom>,
    /// The variable `provider add` names for the credential by default.
    pub key_env: Option<&'static str>,
    /// The variable read at load when the config names no credential at all.
    pub standard_env: Option<&'static str>,
    /// What a configured credential is.
    pub credential: CredentialKind,
    /// What a request carries when no credential is configured.
    pub without_key: WithoutKey,
    /// How `provider add` describes the credential when none is named.
    pub without_key_note: &'static str,
    /// Build a configured provider's adapter.
    pub build: fn(&mut Build<'_>) -> Result<Built, ConfigError>,
}

/// Where a type's `api_base` comes from when it has no fixed default.
#[derive(Debug, Clone, Copy)]
pub struct BaseFrom {
    /// `provider list --builtins`: `(from region: https://…)`.
    pub listed: &'static str,
    /// `provider add`: `from the region`.
    pub added: &'static str,
}

/// What a configured credential (`api_key`, `keys:`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A key sent as is.
    Key,
    /// A Google service-account file, whose OAuth tokens are sent.
    ServiceAccountFile,
}

/// What a request to a provider without a configured credential carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutKey {
    /// The client's own credential (passthrough-auth).
    ForwardsClient,
    /// A signature made with keys from the environment (AWS SigV4).
    Signs,
    /// Nothing, and the upstream needs nothing (a local Ollama).
    NeedsNone,
    /// Nothing: the upstream will refuse it.
    Nothing,
}

/// Every provider type this build speaks, in the order they are listed.
pub static TYPES: [&ProviderType; 12] = [
    &anthropic::TYPE,
    &anthropic::FOUNDRY,
    &anthropic::CLAUDE_AWS,
    &anthropic::BEDROCK_MESSAGES,
    &anthropic::CLAUDE_GCP,
    &openai::OPENAI,
    &openai::AZURE,
    &openai::OPENROUTER,
    &openai::OLLAMA,
    &bedrock::TYPE,
    &gemini::TYPE,
    &vertex::TYPE,
];

/// The type named `name`.
pub fn by_name(name: &str) -> Option<&'static ProviderType> {
    TYPES.iter().copied().find(|t| t.name == name)
}

/// The names of every type, in order.
pub fn names() -> Vec<&'static str> {
    TYPES.iter().map(|t| t.name).collect()
}

/// What a type's `build` gets: one provider's config and where to report.
pub struct Build<'a> {
    /// `providers.<name>`, for error keys.
    pub key: &'a str,
    pub name: &'a str,
    pub config: &'a ProviderConfig,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub warnings: &'a mut Vec<String>,
}

impl Build<'_> {
    /// A variable's value, unset and empty alike `None`.
    pub fn nonempty_env(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|s| !s.is_empty())
    }
}

/// What a type's `build` gives back.
pub struct Built {
    pub adapter: Arc<dyn Adapter>,
    /// The base URL when the config names none and the type has no fixed
    /// default (Bedrock's from its region, Vertex's from its location).
    pub derived_base: Option<String>,
    /// Where the bearer tokens of accounts without a key come from, when
    /// the type gets them from a provider-wide identity (Foundry's Entra ID
    /// application).
    pub bearer: Option<crate::upstream::Bearer>,
}

/// One configured provider's behaviour. See the module docs.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// Whether the upstream speaks the Anthropic Messages API natively, so
    /// unparsed bodies may go to it (`passthrough_mode`).
    fn forwards_raw(&self) -> bool {
        false
    }

    /// Whether requests are signed with keys from the environment when no
    /// credential is configured, and the keys are there.
    fn signs(&self) -> bool {
        false
    }

    /// Whether the upstream has a token counter of its own. Without one,
    /// `count_tokens` is answered with the gateway's local count.
    fn counts_tokens(&self) -> bool {
        true
    }

    /// The Chat Completions form of `body` that a local token count reads
    /// ([`LocalCount`]).
    fn local_count_body(&self, body: &[u8], upstream_model: &str) -> Result<Vec<u8>, GatewayError> {
        openai::chat_body_for_count(body, upstream_model, crate::dialects::openai::Flavor::OpenAi)
    }

    /// Build what one candidate sends for this request.
    fn prepare(&self, request: &Outgoing<'_>) -> Result<Box<dyn Call>, GatewayError>;

    /// An unparsed body sent as it is (`passthrough_mode`); `None` for
    /// upstreams that do not speak the Messages API.
    fn forward(&self, _body: Bytes) -> Option<Box<dyn Call>> {
        None
    }

    /// Add this provider's credential to an active health probe.
    fn probe_auth(&self, head: &mut RequestHeader, key: Option<&Secret>, bearer: Option<&str>);

    /// Type-specific settings as `provider show` lists them.
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// The request one candidate is prepared for.
pub struct Outgoing<'a> {
    /// The provider's name, for notes in the log and error messages.
    pub provider: &'a str,
    pub request_id: &'a str,
    /// The request as the client sent it.
    pub request: &'a MessagesRequest,
    /// The request as a Claude upstream may see it, once worked out
    /// ([`Outgoing::claude_request`]); shared by every candidate.
    pub for_claude: &'a std::sync::OnceLock<Option<MessagesRequest>>,
    /// The model id this candidate sends (a route's rename, or the request's).
    pub upstream_model: &'a str,
    /// Fast mode was asked for (`speed: "fast"` or a `-fast` model id).
    pub wants_fast: bool,
    /// `/v1/messages/count_tokens` rather than `/v1/messages`.
    pub count_tokens: bool,
    /// The client's request headers (`anthropic-beta`, for adapters that
    /// filter the betas).
    pub headers: &'a HeaderMap,
}

impl Outgoing<'_> {
    /// The client's `anthropic-beta` header values, as sent.
    pub fn betas(&self) -> Vec<&str> {
        self.headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The request as a Claude upstream may see it: without thinking blocks
    /// other vendors' models produced (a Claude upstream refuses them),
    /// decided on first use by a byte scan; the request itself, unparsed
    /// and uncopied, in the common case.
    pub fn claude_request(&self) -> &MessagesRequest {
        self.for_claude
            .get_or_init(|| self.request.for_claude())
            .as_ref()
            .unwrap_or(self.request)
    }
}

/// What the client asked for, in the form an attempt's head reads.
pub struct Outbound<'r> {
    pub method: &'r http::Method,
    /// Client path without the query, e.g. `/v1/messages`.
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
}

/// Who and where one attempt goes to.
pub struct Attempt<'a> {
    /// The provider's name, for error messages.
    pub provider: &'a str,
    pub base: &'a UpstreamBase,
    /// The provider's configured extra headers.
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// The account's credential, if it has one.
    pub credential: Option<&'a Secret>,
    /// The account's OAuth token (service accounts), fetched for this attempt.
    pub bearer: Option<&'a str>,
    pub client: &'a Outbound<'a>,
    /// No gateway key was presented (passthrough-auth): the client's own
    /// credential may go to an upstream that takes it.
    pub client_credential: bool,
}

/// What every call sends with each attempt: the body, and the model id.
pub struct Payload {
    pub body: Bytes,
    /// The model id sent upstream (`None`: an unparsed passthrough body).
    pub upstream_model: Option<String>,
}

/// The model a translated or cloud call sends (always set for those).
pub fn out_model(p: &Payload) -> &str {
    p.upstream_model.as_deref().unwrap_or_default()
}

/// One candidate's request. See the module docs.
pub trait Call: Send + Sync {
    fn payload(&self) -> &Payload;

    /// The body sent with every attempt (a cheap clone).
    fn body(&self) -> Bytes {
        self.payload().body.clone()
    }

    /// The model id sent upstream (`None`: an unparsed passthrough body).
    fn upstream_model(&self) -> Option<&str> {
        self.payload().upstream_model.as_deref()
    }

    /// Whether the request runs in fast mode upstream (priced as such).
    fn fast(&self) -> bool {
        false
    }

    /// The response header that carries the upstream's request id.
    fn request_id_header(&self) -> &'static str;

    /// The request head for one attempt.
    fn head(&self, to: &Attempt<'_>) -> Result<RequestHeader, GatewayError>;

    /// What the client is told about a refused attempt (status ≥ 300), read
    /// whole (at most 1 MiB of body).
    fn refusal(&self, head: &ResponseHeader, body: &[u8]) -> Refusal;

    /// How the committed answer reaches the client.
    fn answer(&self, head: &ResponseHeader, reply: &Reply<'_>) -> Answer;
}

/// What the request side knows when an answer is turned into the client's.
pub struct Reply<'a> {
    /// The model the client asked for: a translated answer names it.
    pub client_model: &'a str,
    /// The gateway's request id: it seeds translated message ids.
    pub request_id: &'a str,
    pub provider: &'a str,
}

/// A refused attempt as the client would see it.
pub enum Refusal {
    /// The upstream's own answer, relayed as it came (an Anthropic-shaped
    /// error: Claude Code's recovery reads its wording).
    Verbatim,
    /// Mapped to an Anthropic error.
    Mapped(GatewayError),
}

/// How a committed answer becomes the client's.
pub enum Answer {
    /// The upstream's status, headers and bytes, as they come (an Anthropic
    /// answer); its usage is read on the side.
    Relay,
    /// Read it whole and answer with [`Call::refusal`]'s verdict.
    Refuse,
    /// Translate the stream into Anthropic SSE as it arrives.
    Stream(Box<dyn StreamTranslate>),
    /// Read the body whole (at most `limit` bytes) and translate it.
    Whole { limit: usize, translate: Whole },
}

/// A whole-body translation: the upstream's body in, the client's out.
pub type Whole = Box<dyn FnOnce(&[u8]) -> Result<Translated, GatewayError> + Send>;

/// A whole answer translated for the client (always a 200 JSON body).
pub struct Translated {
    pub body: Vec<u8>,
    /// The usage to meter (`None` for a token count).
    pub usage: Option<Usage>,
    /// A token count answered by the upstream's own counter, named.
    pub counted_by: Option<&'static str>,
}

/// An upstream stream turned into Anthropic SSE, chunk by chunk. The
/// dialects' stream translators implement it; the relay drives it.
pub trait StreamTranslate: Send {
    /// Write what leads the stream (`message_start`) before the first
    /// upstream chunk, so nothing the relay adds (pings) precedes it.
    fn start(&mut self, out: &mut Vec<u8>);
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>);
    /// The upstream ended.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// The upstream broke: end with one in-band error.
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>);
    /// True once the stream has ended (`message_stop` or an error).
    fn is_done(&self) -> bool;
    /// True once it ended normally.
    fn completed(&self) -> bool;
    /// The usage the upstream reported, once the stream completed.
    fn usage(&mut self) -> Option<Usage>;
    /// The usage of a stream cut short (`Usage::cut_short`).
    fn usage_so_far(&mut self) -> Usage;
}

/// A JSON POST head with the provider's extra headers: what every
/// translated or cloud request starts from. No client header crosses over:
/// `anthropic-*` headers mean nothing to other dialects, and the client's
/// credential is never sent to a provider it does not belong to.
pub fn json_post(to: &Attempt<'_>, path: &str, accept: &str, body_len: usize) -> Result<RequestHeader, GatewayError> {
    let mut req =
        RequestHeader::build(http::Method::POST, path.as_bytes(), Some(10 + to.headers.len())).map_err(internal)?;
    for (name, value) in [
        ("host", to.base.authority.as_str()),
        ("content-type", "application/json"),
        ("accept", accept),
        ("accept-encoding", "identity"),
        ("user-agent", concat!("modelgate/", env!("CARGO_PKG_VERSION"))),
    ] {
        req.insert_header(name, value).map_err(internal)?;
    }
    req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
        .map_err(internal)?;
    for (n, v) in to.headers {
        req.insert_header(n.clone(), v.clone()).map_err(internal)?;
    }
    Ok(req)
}

/// Add a credential header, marked sensitive (kept out of Pingora's logs).
pub fn credential_header(
    req: &mut RequestHeader,
    to: &Attempt<'_>,
    name: HeaderName,
    value: &str,
) -> Result<(), GatewayError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        GatewayError::Internal(format!(
            "provider `{}` has a credential that is not a valid header value",
            to.provider
        ))
    })?;
    value.set_sensitive(true);
    req.insert_header(name, value).map_err(internal)?;
    Ok(())
}

/// `Authorization: Bearer …`, marked sensitive.
pub fn bearer_header(req: &mut RequestHeader, to: &Attempt<'_>, token: &str) -> Result<(), GatewayError> {
    credential_header(req, to, http::header::AUTHORIZATION, &format!("Bearer {token}"))
}

/// The `accept` a request asks for.
pub fn accept(stream: bool) -> &'static str {
    if stream {
        "text/event-stream"
    } else {
        "application/json"
    }
}

pub fn internal(e: pingora::BError) -> GatewayError {
    GatewayError::Internal(format!("cannot build the upstream request: {e}"))
}

/// An upstream answer that could not be read as its dialect promises.
pub fn broken(provider: &str, detail: impl std::fmt::Display) -> GatewayError {
    GatewayError::UpstreamBroken {
        provider: provider.to_string(),
        detail: detail.to_string(),
    }
}

/// A header's text, when it is text.
pub fn header_str<'h>(head: &'h ResponseHeader, name: &str) -> Option<&'h str> {
    head.headers.get(name).and_then(|v| v.to_str().ok())
}

/// `retry-after` in whole seconds, when the upstream sent one.
pub fn retry_after(head: &ResponseHeader) -> Option<u64> {
    header_str(head, "retry-after").and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether the answer is an event stream of the given content type.
pub fn content_type_is(head: &ResponseHeader, prefix: &[u8]) -> bool {
    head.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(prefix))
}

/// Upper bound on a non-streaming answer the gateway buffers to translate.
pub const MAX_TRANSLATED_BODY: usize = 64 * 1024 * 1024;
/// Upper bound on an error body, or a token count, the gateway reads.
pub const MAX_SMALL_BODY: usize = 1024 * 1024;

/// A `count_tokens` answer from an upstream counter, in Anthropic shape.
pub fn counted(n: u64, counter: &'static str) -> Translated {
    Translated {
        body: format!("{{\"input_tokens\":{n}}}").into_bytes(),
        usage: None,
        counted_by: Some(counter),
    }
}

/// Log what a translation dropped or changed, once per candidate.
pub fn log_notes(request_id: &str, what: &str, provider: &str, notes: &[String]) {
    for note in notes {
        log::info!("{request_id}: {what} `{provider}`: {note}");
    }
}

/// A Claude body edited for a cloud platform (Bedrock InvokeModel, Vertex
/// `rawPredict`): fields and betas the platform does not take are dropped
/// together, and the drops logged.
pub fn cloud_claude_body(
    out: &Outgoing<'_>,
    caps: &crate::dialects::anthropic::cloud::Capabilities,
    platform: crate::dialects::anthropic::cloud::Platform,
) -> Result<crate::dialects::anthropic::cloud::Edited, GatewayError> {
    let edited = crate::dialects::anthropic::cloud::edit_body(&out.claude_request().body, &out.betas(), caps, platform)
        .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
    if !edited.dropped.is_empty() {
        log::info!(
            "{}: for {platform:?} `{}`: dropped {}",
            out.request_id,
            out.provider,
            edited.dropped.join(", ")
        );
    }
    Ok(edited)
}

/// A provider's beta table: `betas:` from the config, else `built_in`
/// (the platform's own, `Capabilities::for_platform`).
pub fn capabilities(
    config: &ProviderConfig,
    built_in: impl FnOnce() -> crate::dialects::anthropic::cloud::Capabilities,
) -> crate::dialects::anthropic::cloud::Capabilities {
    match &config.betas {
        Some(list) => crate::dialects::anthropic::cloud::Capabilities { betas: list.clone() },
        None => built_in(),
    }
}

/// The human text of a non-Anthropic error body: its `message` (or
/// `Message`, `error_description`, `error.message`), else the body itself
/// as text.
pub fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "Message", "error_description"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_string))
                .or_else(|| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// A token count the gateway makes itself: the prompt in a candidate's Chat
/// Completions form, counted with OpenAI's tokenizers (for other vendors'
/// models, an estimate). [`LocalCount::run`] is CPU work (milliseconds for a
/// 100 KB prompt): run it off the async workers.
pub struct LocalCount {
    chat_body: Vec<u8>,
    encoding: crate::dialects::openai::tokens::Encoding,
}

impl LocalCount {
    pub fn new(adapter: &dyn Adapter, body: &[u8], upstream_model: &str) -> Result<LocalCount, GatewayError> {
        Ok(LocalCount {
            chat_body: adapter.local_count_body(body, upstream_model)?,
            encoding: crate::dialects::openai::tokens::Encoding::for_model(upstream_model),
        })
    }

    /// How the count was made, for `x-modelgate-token-count`.
    pub fn method(&self) -> String {
        format!("estimate; local tokenizer {}", self.encoding.name())
    }

    pub fn run(&self) -> Result<u64, GatewayError> {
        crate::dialects::openai::tokens::count_chat_tokens(&self.chat_body, self.encoding)
            .map_err(|e| GatewayError::Internal(format!("token counting failed: {e}")))
    }
}
