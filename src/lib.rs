//! modelgate: an LLM gateway for Claude Code and any Anthropic Messages API
//! client, built on Pingora.
//!
//! The crate reads as the request path (see `gateway`): `config` is what a
//! request is admitted under, `gateway` runs the stages, `dialects` holds the
//! pure format mappings, `upstream` owns the connection to providers, and
//! `error` is the one place failures become Anthropic error objects.

pub mod cli;
pub mod config;
pub mod dialects;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod logging;
pub mod otel;
pub mod policy;
pub mod providers;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod signin;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod usage;
