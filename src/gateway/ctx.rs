//! Per-request state carried through the stages and read by the access log.

use std::sync::Arc;
use std::time::Instant;

use crate::dialects::Usage;
use crate::error::{new_request_id, ErrorKind};
use crate::runtime::snapshot::KeyEntry;
use crate::runtime::Snapshot;

pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    /// The config this request was admitted under; held to the end, so a
    /// reload mid-request changes nothing for it.
    pub snapshot: Option<Arc<Snapshot>>,
    pub principal: Option<Arc<KeyEntry>>,
    /// A signed-in developer's verified token claims (`signin:`).
    pub signed_in: Option<Arc<crate::signin::tokens::Claims>>,
    /// A signed-in developer's spend-cap standing for a successful answer
    /// (`anthropic-ratelimit-unified-*`, empty without caps). When set, the
    /// upstream's own `anthropic-ratelimit-*` headers are not relayed.
    pub unified: Option<Vec<(&'static str, String)>>,
    /// A request that came in a cloud's format (`inbound:`), made a
    /// Messages request when its body is read.
    pub inbound: Option<Inbound>,
    /// The cloud format the request came in (`foundry`, `vertex`), for the
    /// access log.
    pub inbound_format: Option<crate::dialects::anthropic::cloud::ClientFormat>,
    /// A streamed answer re-framed for the client's format (Bedrock's
    /// event stream); dropped when the answer is not a stream.
    pub reframe: Option<Box<dyn crate::dialects::anthropic::cloud::Reframe>>,
    /// The billing group a signed-in developer's request tags named (one
    /// of their groups), for the audit log.
    pub billing_group: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    /// The provider account that answered (a label, never the secret).
    pub account: Option<String>,
    /// Upstream attempts the request took (0: answered locally).
    pub attempts: u32,
    pub stream: bool,
    pub status: u16,
    pub bytes_out: u64,
    pub error: Option<ErrorKind>,
    pub error_message: Option<String>,
    /// The client disconnected before the response was complete.
    pub client_gone: bool,
    /// The provider's own `request-id`, for correlating with its support.
    pub upstream_request_id: Option<String>,
    /// Token usage, where the relay extracted it (translated routes).
    pub usage: Option<Usage>,
    /// When the first response body byte went to the client.
    pub first_byte_at: Option<Instant>,
    /// Bounded metric label for the route: a configured model id, or the rule.
    pub route_label: Option<std::sync::Arc<str>>,
    /// The counters of the routing rule that matched (`route stats`).
    pub rule: Option<Arc<crate::runtime::snapshot::RuleStats>>,
    /// The model id the committed upstream was sent (prices are looked up by it).
    pub upstream_model: Option<String>,
    /// Fast mode was asked for (priced at the model's multiplier).
    pub fast: bool,
    /// A model request: it gets a ledger record and its usage is settled.
    pub metered: bool,
    /// The budget and rate-limit charges to settle once usage is known
    /// ([`super::meter::settle`]).
    pub admission: Option<crate::policy::Admission>,
    /// The gateway state a metered or admitted request settles against and
    /// records to.
    pub shared: Option<Arc<super::Shared>>,
    /// The ledger record made durable before the answer's end
    /// ([`super::meter::before_end`]).
    pub sealed: Option<Arc<crate::usage::Record>>,
    /// With `audit.log_prompts`: the request body, and the response as relayed (capped).
    pub prompt: Option<bytes::Bytes>,
    pub reply_capture: Option<Capture>,
    /// Where a complete answer is to be cached (a miss that may be stored).
    pub cache_key: Option<(super::cache::Kind, [u8; 32])>,
    /// The request's trace ids and upstream attempts, when the gateway
    /// exports traces or propagates `traceparent` (`telemetry.otlp`).
    pub trace: Option<Arc<crate::otel::RequestTrace>>,
}

/// The first [`Capture::CAP`] bytes of a response, as references to the
/// relayed chunks (no copy).
#[derive(Debug, Default)]
pub struct Capture {
    pub chunks: Vec<bytes::Bytes>,
    pub len: usize,
    /// Some chunk did not fit: the capture is a prefix only.
    pub truncated: bool,
}

impl Capture {
    pub const CAP: usize = 1024 * 1024;

    pub fn push(&mut self, chunk: &bytes::Bytes) {
        if self.len + chunk.len() <= Self::CAP {
            self.len += chunk.len();
            self.chunks.push(chunk.clone());
        } else {
            self.truncated = true;
        }
    }

    pub fn into_bytes(self) -> bytes::Bytes {
        match self.chunks.len() {
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => self.chunks.concat().into(),
        }
    }
}

impl RequestCtx {
    /// The status the request is reported with: 499 when no response
    /// header was written.
    pub fn reported_status(&self) -> u16 {
        if self.status == 0 {
            499
        } else {
            self.status
        }
    }

    /// What went wrong, if anything: `client_gone`, or the error's type.
    pub fn failure(&self) -> Option<&'static str> {
        if self.client_gone {
            Some("client_gone")
        } else {
            self.error.map(|e| e.as_str())
        }
    }

    /// Answered from a cache.
    pub fn cache_hit(&self) -> bool {
        self.provider.as_deref() == Some("cache")
    }

    pub fn new() -> Self {
        RequestCtx {
            request_id: new_request_id(),
            started: Instant::now(),
            snapshot: None,
            principal: None,
            signed_in: None,
            unified: None,
            billing_group: None,
            inbound: None,
            inbound_format: None,
            reframe: None,
            model: None,
            provider: None,
            account: None,
            attempts: 0,
            stream: false,
            status: 0,
            bytes_out: 0,
            error: None,
            error_message: None,
            client_gone: false,
            upstream_request_id: None,
            usage: None,
            first_byte_at: None,
            route_label: None,
            rule: None,
            upstream_model: None,
            fast: false,
            metered: false,
            admission: None,
            shared: None,
            sealed: None,
            prompt: None,
            reply_capture: None,
            cache_key: None,
            trace: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// What a cloud-format request's path said, for its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The gateway model id (mapped from the cloud's); `None` when the body
    /// names the model (a count-tokens request).
    pub model: Option<String>,
    /// `Some` when the endpoint decides streaming (`streamRawPredict`).
    pub stream: Option<bool>,
    /// Bedrock's CountTokens: the InvokeModel body is wrapped
    /// (`{"input": {"invokeModel": {"body": <base64>}}}`).
    pub wrapped: bool,
}
