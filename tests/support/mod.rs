//! Shared helpers for integration tests: `mod support;` from any `tests/*.rs`.
//!
//! * [`mock`]: a scriptable mock upstream (hyper 1, HTTP/1.1, 127.0.0.1 only).
//! * [`gateway`]: runs the real `modelgate` binary against a temp config.
//! * [`claude`]: the pinned Claude Code CLI.
//! * [`postgres`], [`redis`], [`haproxy`], [`oidc`]: real servers on free
//!   loopback ports (PostgreSQL, Redis, HAProxy, an OpenID provider with a
//!   cookie-jar browser for its forms).
//!
//! Each test binary uses only part of this API, hence the blanket allows.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod claude;
pub mod clouds;
pub mod gateway;
pub mod google;
pub mod haproxy;
pub mod mock;
pub mod model;
pub mod oidc;
pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod redis;

pub use gateway::{client, fixture, free_port, http_status, Gateway};
pub use mock::{
    anthropic_error_json, anthropic_message_json, anthropic_sse_chunks, gated_sse_message, openai_completion_json,
    openai_sse_chunks, parse_sse, sse_event, sse_text, Gate, MockUpstream, Recorded, Reply, SseStep,
};
