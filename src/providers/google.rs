//! What the Google providers share: where a Vertex AI project's models
//! live, and Google's error format.

use pingora::http::ResponseHeader;

use crate::dialects::gemini;
use crate::error::GatewayError;

/// Where a Vertex provider's models live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexSite {
    pub project: String,
    pub location: String,
}

impl VertexSite {
    /// `/v1/projects/P/locations/L/publishers/PUB/models/M:METHOD`.
    pub fn model_path(&self, publisher: &str, model: &str, method: &str) -> String {
        use crate::dialects::path_segment;
        format!(
            "/v1/projects/{}/locations/{}/publishers/{publisher}/models/{}:{method}",
            path_segment(&self.project, b""),
            path_segment(&self.location, b""),
            // `@` in `claude-sonnet-4-5@20250929` stays as Google writes it.
            path_segment(model, b"@"),
        )
    }
}

/// A Google error (`{"error": {"code", "message", "status"}}`) mapped, with
/// `retry-after` from the header or `RetryInfo.retryDelay`.
pub fn google_error(head: &ResponseHeader, body: &[u8]) -> GatewayError {
    let mapped = gemini::map_error(head.status.as_u16(), body);
    let retry_after = super::retry_after(head).or_else(|| gemini::retry_after(body));
    GatewayError::Upstream {
        status: mapped.status,
        retry_after: if mapped.status == 429 { retry_after } else { None },
        kind: mapped.kind,
        message: mapped.message,
    }
}
