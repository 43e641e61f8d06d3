//! One classification of what an upstream attempt came to.
//!
//! Every attempt ends in a [`Verdict`]: committed (the client's answer from
//! here on), or a [`Failure`] that carries where it came from, whether and
//! how another attempt may follow, what the account's circuit makes of it,
//! the metrics label, and what the client is told if nothing better comes.
//! The attempt loop, the circuits and the metrics read it; nothing else
//! decides whether to retry. (Pingora's own error type carries "retry or
//! not" the same way, so no caller re-derives it.)

use std::time::{Duration, Instant};

use crate::error::GatewayError;
use crate::providers::{Call, Refusal};
use crate::upstream::health::DEFAULT_THROTTLE;
use crate::upstream::{Buffered, UpstreamError};

/// Statuses that mean "this upstream, not this request": try elsewhere.
const RETRYABLE: [u16; 6] = [429, 500, 502, 503, 504, 529];

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The upstream refused, failed or could not be reached.
    Upstream,
    /// The gateway could not make the attempt (a credential it could not get).
    Gateway,
}

/// Whether another attempt may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try the next target (another account at once, this one after backoff).
    Elsewhere,
    /// Try another target, never this account again in this request (it
    /// refused the gateway's credential; asking again will not change that).
    NotThisAccount,
    /// No: the upstream may have acted on a request that cannot be sent
    /// twice, so this is the answer.
    No,
}

/// What the account's circuit makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A failure of the account.
    Failed,
    /// Not a failure: this model on the account cools down until then (a 429).
    Throttled(Instant),
}

/// What the client hears if this failure is the last.
pub enum ClientAnswer {
    /// A gateway-made Anthropic error.
    Error(GatewayError),
    /// The upstream's own answer, as it came (Anthropic-shaped).
    Verbatim(Box<Buffered>),
}

impl ClientAnswer {
    /// What the upstream said, in a line: for an operator's message.
    pub fn message(&self) -> String {
        let text = match self {
            ClientAnswer::Error(e) => e.to_string(),
            ClientAnswer::Verbatim(b) => serde_json::from_slice::<serde_json::Value>(&b.body)
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

impl From<GatewayError> for ClientAnswer {
    fn from(e: GatewayError) -> Self {
        ClientAnswer::Error(e)
    }
}

/// A refused answer, read whole, as the client would hear it: the
/// candidate's `Call` says which.
pub fn client_answer(call: &dyn Call, buffered: Buffered) -> ClientAnswer {
    match call.refusal(&buffered.head, &buffered.body) {
        Refusal::Verbatim => ClientAnswer::Verbatim(Box::new(buffered)),
        Refusal::Mapped(e) => ClientAnswer::Error(e),
    }
}

/// An attempt that did not become the answer.
pub struct Failure {
    pub origin: Origin,
    /// `modelgate_upstream_attempts_total{outcome}`.
    pub label: &'static str,
    pub retry: Retry,
    pub health: Health,
    pub answer: ClientAnswer,
}

/// How an answered attempt is judged from its status, before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The answer: a success, or the client's own error that no other
    /// upstream would fix (labelled `ok` or `final_4xx`).
    Commit(&'static str),
    /// Not the answer (its body, read whole, says what the client hears).
    Fail {
        label: &'static str,
        retry: Retry,
        health: Health,
    },
}

/// What an attempt's request may be: sent again elsewhere or not.
#[derive(Debug, Clone, Copy)]
pub struct Attempted {
    /// Whether a request the upstream may have acted on can be sent again
    /// (`attempt::Job::resend`).
    pub resend: bool,
    /// Whether the attempt carried a credential the gateway holds (a 401 or
    /// 403 is then the gateway's, not the client's).
    pub gateway_credential: bool,
}

/// Judge an answered attempt by its status (and `retry-after`, for a 429).
pub fn judge(status: u16, retry_after: Option<Duration>, a: Attempted, now: Instant) -> Verdict {
    let again = |retry: Retry| if a.resend { retry } else { Retry::No };
    if status < 300 {
        return Verdict::Commit("ok");
    }
    if matches!(status, 401 | 403) && a.gateway_credential {
        return Verdict::Fail {
            label: "credential_refused",
            retry: again(Retry::NotThisAccount),
            health: Health::Failed,
        };
    }
    if !RETRYABLE.contains(&status) {
        return Verdict::Commit("final_4xx");
    }
    if status == 429 {
        // The upstream's own `retry-after`; reset durations some vendors
        // send say when a whole budget refills, too long for a cool-down.
        let until = now + retry_after.unwrap_or(DEFAULT_THROTTLE);
        return Verdict::Fail {
            label: "status_429",
            retry: again(Retry::Elsewhere),
            health: Health::Throttled(until),
        };
    }
    Verdict::Fail {
        label: "status_5xx",
        retry: again(Retry::Elsewhere),
        health: Health::Failed,
    }
}

/// An attempt that got no answer: the connection failed, timed out or broke.
pub fn unanswered(e: GatewayError, resend: bool) -> Failure {
    let (label, sent) = match e {
        GatewayError::UpstreamUnreachable { .. } => ("connect_error", false),
        GatewayError::UpstreamTimeout { .. } => ("timeout", true),
        _ => ("broken", true),
    };
    Failure {
        origin: Origin::Upstream,
        label,
        // Nothing left the gateway on a connect failure: always safe to retry.
        retry: if sent && !resend { Retry::No } else { Retry::Elsewhere },
        health: Health::Failed,
        answer: e.into(),
    }
}

/// A 2xx whose body ended (or failed) before its first byte.
pub fn empty_answer(provider: &str, resend: bool) -> Failure {
    Failure {
        origin: Origin::Upstream,
        label: "broken",
        retry: if resend { Retry::Elsewhere } else { Retry::No },
        health: Health::Failed,
        answer: GatewayError::UpstreamBroken {
            provider: provider.to_string(),
            detail: "the response ended before its first byte".into(),
        }
        .into(),
    }
}

/// The account's OAuth token could not be had: no request was sent.
pub fn no_token(provider: &str, kind: &str) -> Failure {
    Failure {
        origin: Origin::Gateway,
        label: "auth_error",
        retry: Retry::Elsewhere,
        health: Health::Failed,
        answer: GatewayError::UpstreamUnreachable {
            provider: provider.to_string(),
            detail: format!("no {kind} access token for this account (see the gateway log)"),
        }
        .into(),
    }
}

/// Map an upstream failure before any response byte to the client's error.
pub fn upstream_error(provider: &str, e: UpstreamError, timeout: Duration) -> GatewayError {
    match e {
        UpstreamError::Connect(detail) => GatewayError::UpstreamUnreachable {
            provider: provider.to_string(),
            detail,
        },
        UpstreamError::Timeout => GatewayError::UpstreamTimeout {
            provider: provider.to_string(),
            after: timeout,
        },
        UpstreamError::Io(detail) => GatewayError::UpstreamBroken {
            provider: provider.to_string(),
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESEND: Attempted = Attempted {
        resend: true,
        gateway_credential: true,
    };

    #[test]
    fn statuses_are_judged_once() {
        let now = Instant::now();
        assert_eq!(judge(200, None, RESEND, now), Verdict::Commit("ok"));
        assert_eq!(judge(400, None, RESEND, now), Verdict::Commit("final_4xx"));
        assert_eq!(
            judge(529, None, RESEND, now),
            Verdict::Fail {
                label: "status_5xx",
                retry: Retry::Elsewhere,
                health: Health::Failed
            }
        );
        let seven = Duration::from_secs(7);
        assert_eq!(
            judge(429, Some(seven), RESEND, now),
            Verdict::Fail {
                label: "status_429",
                retry: Retry::Elsewhere,
                health: Health::Throttled(now + seven)
            }
        );
        assert!(matches!(
            judge(401, None, RESEND, now),
            Verdict::Fail {
                retry: Retry::NotThisAccount,
                ..
            }
        ));
        let client_own = Attempted {
            gateway_credential: false,
            ..RESEND
        };
        assert_eq!(judge(401, None, client_own, now), Verdict::Commit("final_4xx"));
        let once = Attempted {
            resend: false,
            ..RESEND
        };
        assert!(matches!(
            judge(503, None, once, now),
            Verdict::Fail { retry: Retry::No, .. }
        ));
    }

    #[test]
    fn only_a_request_that_never_left_is_always_retried() {
        let refused = GatewayError::UpstreamUnreachable {
            provider: "p".into(),
            detail: "refused".into(),
        };
        assert_eq!(unanswered(refused, false).retry, Retry::Elsewhere);
        let timeout = GatewayError::UpstreamTimeout {
            provider: "p".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(unanswered(timeout, false).retry, Retry::No);
    }
}
