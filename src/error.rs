//! Every failure the gateway itself produces, and the one place that turns it
//! into an Anthropic error response.
//!
//! Stages return [`GatewayError`]; `gateway::respond` writes it with
//! [`GatewayError::status`] and [`GatewayError::body`]. Upstream error
//! responses from an Anthropic-type provider are *not* wrapped here: they are
//! relayed verbatim, because Claude Code's recovery matches on their wording.

use std::time::Duration;

/// The Anthropic `error.type` values (`docs/protocol-notes.md` §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Billing,
    Permission,
    NotFound,
    RequestTooLarge,
    RateLimit,
    Api,
    Timeout,
    Overloaded,
}

impl ErrorKind {
    const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidRequest,
        ErrorKind::Authentication,
        ErrorKind::Billing,
        ErrorKind::Permission,
        ErrorKind::NotFound,
        ErrorKind::RequestTooLarge,
        ErrorKind::RateLimit,
        ErrorKind::Api,
        ErrorKind::Timeout,
        ErrorKind::Overloaded,
    ];

    /// The kind an Anthropic `error.type` string names.
    pub fn from_anthropic(s: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The HTTP status Anthropic pairs with this kind (`docs/protocol-notes.md` §2.4).
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::Billing => 402,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimit => 429,
            ErrorKind::Api => 500,
            ErrorKind::Timeout => 504,
            ErrorKind::Overloaded => 529,
        }
    }

    /// The Anthropic status and kind for an upstream's HTTP status, when
    /// its body names no kind of its own.
    pub fn for_status(status: u16) -> (u16, ErrorKind) {
        match status {
            400 | 422 => (400, ErrorKind::InvalidRequest),
            401 => (401, ErrorKind::Authentication),
            402 => (402, ErrorKind::Billing),
            403 => (403, ErrorKind::Permission),
            404 => (404, ErrorKind::NotFound),
            413 => (413, ErrorKind::RequestTooLarge),
            429 => (429, ErrorKind::RateLimit),
            408 | 504 => (504, ErrorKind::Timeout),
            503 | 529 => (529, ErrorKind::Overloaded),
            s if (400..500).contains(&s) => (s, ErrorKind::InvalidRequest),
            _ => (500, ErrorKind::Api),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Billing => "billing_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Api => "api_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Authentication(String),
    #[error("{0}")]
    Permission(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    RequestTooLarge { limit: u64 },
    /// The client took longer than `client_timeouts.<phase>` allows.
    #[error("the request {phase} did not arrive within {} (client_timeouts.{phase})", humantime::format_duration(*.after))]
    ClientTimeout { phase: &'static str, after: Duration },
    #[error("the gateway could not reach upstream provider `{provider}`: {detail}")]
    UpstreamUnreachable { provider: String, detail: String },
    #[error("upstream provider `{provider}` did not answer within {}", humantime::format_duration(*.after))]
    UpstreamTimeout { provider: String, after: Duration },
    #[error("upstream provider `{provider}` failed mid-response: {detail}")]
    UpstreamBroken { provider: String, detail: String },
    /// The upstream refused the credential the gateway holds for an account
    /// (revoked, invalid, unfunded). Worded for the gateway's operator: the
    /// developer cannot fix it by signing in again, so no retry either.
    #[error("upstream provider `{provider}` refused the gateway's credential for account `{account}` (HTTP {status}: {detail}); the provider key configured in the gateway is invalid, revoked or out of funds: tell the gateway's administrator (signing in again will not help)")]
    CredentialRefused {
        provider: String,
        account: String,
        status: u16,
        detail: String,
    },
    #[error("{message}")]
    Unavailable { message: String, retry_after: Option<u64> },
    /// An upstream's own error, already mapped from its dialect.
    #[error("{message}")]
    Upstream {
        status: u16,
        kind: ErrorKind,
        message: String,
        retry_after: Option<u64>,
    },
    /// A gateway rate limit (`rpm`/`tpm` of a key or team).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: u64,
        headers: Box<RateLimitHeaders>,
    },
    /// A gateway budget cannot cover the request. Claude Code stops
    /// retrying on `billing_error` with `x-should-retry: false`.
    #[error("{message}")]
    BudgetExceeded {
        message: String,
        retry_after: Option<u64>,
        /// A signed-in developer's cap, as the gateway protocol reports it
        /// (`anthropic-ratelimit-unified-*`; `crate::signin::caps`).
        headers: Vec<(&'static str, String)>,
    },
    #[error("{0}")]
    Internal(String),
}

/// The gateway's own limit, described in Anthropic's
/// `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` terms:
/// (limit, remaining, RFC 3339 reset).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitHeaders {
    pub requests: Option<(u64, u64, String)>,
    pub tokens: Option<(u64, u64, String)>,
}

impl GatewayError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::InvalidRequest(_) | GatewayError::MethodNotAllowed { .. } => ErrorKind::InvalidRequest,
            GatewayError::Authentication(_) => ErrorKind::Authentication,
            GatewayError::Permission(_) => ErrorKind::Permission,
            GatewayError::NotFound(_) => ErrorKind::NotFound,
            GatewayError::RequestTooLarge { .. } => ErrorKind::RequestTooLarge,
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamBroken { .. }
            | GatewayError::CredentialRefused { .. }
            | GatewayError::Internal(_) => ErrorKind::Api,
            GatewayError::UpstreamTimeout { .. } | GatewayError::ClientTimeout { .. } => ErrorKind::Timeout,
            GatewayError::Unavailable { .. } => ErrorKind::Overloaded,
            GatewayError::Upstream { kind, .. } => *kind,
            GatewayError::RateLimited { .. } => ErrorKind::RateLimit,
            GatewayError::BudgetExceeded { .. } => ErrorKind::Billing,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest(_) => 400,
            GatewayError::Authentication(_) => 401,
            GatewayError::Permission(_) => 403,
            GatewayError::NotFound(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::RequestTooLarge { .. } => 413,
            GatewayError::ClientTimeout { .. } => 408,
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamBroken { .. }
            | GatewayError::CredentialRefused { .. } => 502,
            GatewayError::UpstreamTimeout { .. } => 504,
            GatewayError::Unavailable { .. } => 529,
            GatewayError::Upstream { status, .. } => *status,
            GatewayError::RateLimited { .. } | GatewayError::BudgetExceeded { .. } => 429,
            GatewayError::Internal(_) => 500,
        }
    }

    /// Headers the status requires (`allow` on a 405).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            GatewayError::MethodNotAllowed { allow, .. } => vec![("allow", allow.to_string())],
            GatewayError::Upstream {
                retry_after: Some(secs),
                ..
            }
            | GatewayError::Unavailable {
                retry_after: Some(secs),
                ..
            } => vec![("retry-after", secs.to_string())],
            GatewayError::RateLimited {
                retry_after, headers, ..
            } => {
                let mut out = vec![("retry-after", retry_after.to_string())];
                for (names, quota) in [
                    (
                        [
                            "anthropic-ratelimit-requests-limit",
                            "anthropic-ratelimit-requests-remaining",
                            "anthropic-ratelimit-requests-reset",
                        ],
                        &headers.requests,
                    ),
                    (
                        [
                            "anthropic-ratelimit-tokens-limit",
                            "anthropic-ratelimit-tokens-remaining",
                            "anthropic-ratelimit-tokens-reset",
                        ],
                        &headers.tokens,
                    ),
                ] {
                    if let Some((limit, remaining, reset)) = quota {
                        out.push((names[0], limit.to_string()));
                        out.push((names[1], remaining.to_string()));
                        out.push((names[2], reset.clone()));
                    }
                }
                out
            }
            // A credential the gateway refused is refused again on retry
            // (unknown, revoked, expired).
            GatewayError::CredentialRefused { .. } | GatewayError::Authentication(_) => {
                vec![("x-should-retry", "false".to_string())]
            }
            GatewayError::BudgetExceeded {
                retry_after, headers, ..
            } => {
                let mut out = vec![("x-should-retry", "false".to_string())];
                if let Some(secs) = retry_after {
                    out.push(("retry-after", secs.to_string()));
                }
                out.extend(headers.iter().cloned());
                out
            }
            _ => Vec::new(),
        }
    }

    /// The Anthropic error object: `{"type":"error","error":{"type","message"},"request_id"}`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        error_body(self.kind(), &self.to_string(), request_id)
    }

    /// The same error as one SSE frame, for failures after a stream has begun.
    pub fn sse_frame(&self, request_id: &str) -> Vec<u8> {
        let mut out = b"event: error\ndata: ".to_vec();
        out.extend_from_slice(&self.body(request_id));
        out.extend_from_slice(b"\n\n");
        out
    }
}

/// An error and its causes in one line, `outer: cause: root cause`, for
/// messages that must say why and not only what (a connection refused
/// under a transport error). A cause whose text the line already holds is
/// left out; the walk is bounded against a cyclic `source`.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    for _ in 0..8 {
        let Some(c) = cause else { break };
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// `req_` + 24 base62 characters (~143 bits), the shape Anthropic uses.
pub fn new_request_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(28);
    id.push_str("req_");
    for _ in 0..24 {
        id.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    id
}

pub fn error_body(kind: ErrorKind, message: &str, request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "error",
        "error": {"type": kind.as_str(), "message": message},
        "request_id": request_id,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_shape_and_status_pairs() {
        let e = GatewayError::RequestTooLarge { limit: 10 };
        assert_eq!(e.status(), 413);
        let v: serde_json::Value = serde_json::from_slice(&e.body("req_1")).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(v["request_id"], "req_1");
        let t = GatewayError::UpstreamTimeout {
            provider: "a".into(),
            after: Duration::from_secs(3),
        };
        assert_eq!((t.status(), t.kind().as_str()), (504, "timeout_error"));
        assert!(String::from_utf8(t.sse_frame("r"))
            .unwrap()
            .starts_with("event: error\ndata: {"));
    }
}
