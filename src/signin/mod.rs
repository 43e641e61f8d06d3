//! Sign-in with the organisation's identity provider: the Claude Code
//! gateway protocol (version 1), by which Claude Code's `/login` → "Cloud
//! gateway" gets a short-lived token from the gateway through an OAuth
//! device flow that a person approves in the browser with the company's
//! OpenID Connect provider.
//!
//! [`idp`] is the gateway's OpenID Connect client of the organisation's
//! identity provider (the one part here that does I/O: HTTPS to the
//! provider). The rest are the protocol's pure pieces:
//! - [`tokens`]: the gateway's own access tokens (HS256 JWTs, audience
//!   `claude-gateway`, several secrets for rotation);
//! - [`codes`]: device codes, user codes people type, and the digests the
//!   store keeps instead of secrets;
//! - [`settings`]: the checksum and identity of a managed-settings
//!   document, byte for byte as Claude Code computes them;
//! - [`seal`]: sealing what the store keeps for the gateway alone (the
//!   identity provider's refresh tokens).
//!
//! The endpoints, the browser pages, the IdP round trip and the store of
//! device grants and sessions build on these (issue #17).

pub mod caps;
pub mod codes;
pub mod idp;
pub mod otlp;
pub mod policy;
pub mod seal;
pub mod settings;
pub mod tokens;
