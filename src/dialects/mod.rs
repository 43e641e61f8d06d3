//! Request and response formats, one module per upstream dialect.
//!
//! Everything here is a pure function over bytes, `serde_json` values and
//! `http` header maps: no Pingora types, no I/O, no config snapshot. The
//! gateway picks a dialect from the provider type and calls into it; golden
//! tests pin each mapping.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai;
pub mod sse;

use serde_json::{json, Value};

/// `s` as one percent-encoded URL path segment: RFC 3986 unreserved
/// characters, and those in `keep`, stay as they are; every other byte is
/// `%XX`. Model ids go into upstream paths through this.
pub fn path_segment(s: &str, keep: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Token counts in Anthropic's terms, whatever dialect reported them:
/// `input_tokens` excludes cache reads and cache writes, which are counted
/// apart (they are priced apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
        })
    }

    /// Every token the request consumed, the figure `tpm` limits count.
    pub fn total(self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
    }
}
