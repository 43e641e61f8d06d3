//! AWS Signature Version 4, by the `aws-sigv4` crate, for the service a
//! provider names (Bedrock Runtime's is `bedrock`): headers signed (`host`, `x-amz-date`,
//! `x-amz-content-sha256`, `content-type`, `x-amz-security-token` for
//! temporary credentials), and the canonical path percent-encoded a second
//! time, as Bedrock verifies it.

use std::time::SystemTime;

use aws_sigv4::http_request::{sign as sign_request, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use pingora::http::RequestHeader;

/// The signing service name for Bedrock Runtime (not `bedrock-runtime`).
pub const BEDROCK: &str = "bedrock";

pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
}

/// The headers to add to `req` (sent to `url`) so it carries a valid
/// signature for `service` over `body` at `time`.
pub fn sign(
    service: &str,
    url: &str,
    req: &RequestHeader,
    body: &[u8],
    creds: &Credentials<'_>,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, String> {
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id,
        creds.secret_access_key,
        creds.session_token.map(str::to_string),
        None,
        "modelgate",
    )
    .into();
    let mut settings = SigningSettings::default();
    // Bedrock checks the body hash header, like S3.
    settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(creds.region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(n, _)| matches!(n.as_str(), "host" | "content-type"))
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
        .collect();
    let method = req.method.as_str();
    let signable =
        SignableRequest::new(method, url, headers.into_iter(), SignableBody::Bytes(body)).map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign_request(signable, &params).map_err(|e| e.to_string())?.into_parts();
    let (headers, _query) = instructions.into_parts();
    Ok(headers.into_iter().map(|h| (h.name(), h.value().to_string())).collect())
}
