//! Request and response formats, one module per upstream dialect.
//!
//! Everything here is a pure function over bytes, `serde_json` values and
//! `http` header maps: no Pingora types, no I/O, no config snapshot. The
//! gateway picks a dialect from the provider type and calls into it; golden
//! tests pin each mapping.

pub mod anthropic;
pub mod openai;
pub mod sse;
