//! Claude's cloud formats served to clients (`inbound:`), so that Claude
//! Code's cloud modes can be pointed at the gateway: a request in a
//! cloud's format is recognised from its path before dispatch and becomes
//! a Messages request, run through the same stages as `/v1/messages`.
//!
//! - Microsoft Foundry: the Messages API under a prefix; the prefix comes
//!   off the path.
//! - Vertex AI: `…/publishers/anthropic/models/{model}:rawPredict`,
//!   `:streamRawPredict`, `count-tokens:rawPredict`; the path becomes
//!   `/v1/messages` (or `count_tokens`) and `ctx.inbound` says what the
//!   body needs when it is read ([`messages_body`]): the model from the
//!   path, mapped to a gateway model id, and `anthropic_version` out
//!   (`dialects::anthropic::cloud::messages_body`). Vertex's answers are
//!   the Messages API's, so nothing changes on the way back.
//! - Amazon Bedrock: `/model/{model}/invoke` and
//!   `/invoke-with-response-stream`, made Messages requests the same way
//!   (the body's `anthropic_beta` into `anthropic-beta`); a streamed answer
//!   reaches the client re-framed as AWS event-stream frames
//!   (`ctx.reframe`, applied where the relay writes). `/count-tokens`
//!   unwraps CountTokens' InvokeModel body for `count_tokens`, and its
//!   answer is re-framed as `{"inputTokens": N}`.

use pingora::proxy::Session;

use super::ctx::{Inbound, RequestCtx};
use crate::dialects::anthropic::cloud::ClientFormat;
use crate::error::GatewayError;
use crate::runtime::Snapshot;

/// A request in a cloud's format (`inbound:`) becomes the gateway's own
/// before dispatch, so that every stage and every upstream sees `/v1/…`:
/// Microsoft Foundry's is the Messages API under a prefix, which comes off
/// the path (the query stays); Vertex AI's names the model and the method
/// in the path, which becomes `/v1/messages` (or `count_tokens`) with
/// `ctx.inbound` saying what the body needs when it is read.
pub fn recognize(session: &mut Session, ctx: &mut RequestCtx, snap: &Snapshot) {
    let config = &snap.config.inbound;
    let uri = &session.req_header().uri;
    let path = uri.path();
    let target = if let Some(rest) = config
        .foundry
        .as_deref()
        .and_then(|p| path.strip_prefix(p))
        .filter(|r| r.starts_with("/v1/"))
    {
        ctx.inbound_format = Some(ClientFormat::Foundry);
        rest.to_string()
    } else if let Some((model, method)) = config
        .vertex
        .as_deref()
        .and_then(|p| path.strip_prefix(p))
        .and_then(crate::dialects::anthropic::cloud::vertex_path)
    {
        let count = model == "count-tokens";
        ctx.inbound_format = Some(ClientFormat::Vertex);
        ctx.inbound = Some(Inbound {
            model: (!count).then(|| cloud_model(&config.model_map, model)),
            stream: (!count).then_some(method == "streamRawPredict"),
            wrapped: false,
        });
        if count {
            "/v1/messages/count_tokens".to_string()
        } else {
            "/v1/messages".to_string()
        }
    } else if let Some((model, method)) = config
        .bedrock
        .as_deref()
        .and_then(|p| path.strip_prefix(p))
        .and_then(crate::dialects::anthropic::cloud::bedrock_path)
    {
        let stream = method == "invoke-with-response-stream";
        let count = method == "count-tokens";
        ctx.inbound_format = Some(ClientFormat::Bedrock);
        ctx.inbound = Some(Inbound {
            model: Some(cloud_model(&config.model_map, &model)),
            stream: (!count).then_some(stream),
            wrapped: count,
        });
        if count {
            ctx.reframe = ClientFormat::Bedrock.count_reframer();
            "/v1/messages/count_tokens".to_string()
        } else {
            if stream {
                ctx.reframe = ClientFormat::Bedrock.stream_reframer();
            }
            "/v1/messages".to_string()
        }
    } else {
        return;
    };
    let target = match uri.query() {
        Some(q) => format!("{target}?{q}"),
        None => target,
    };
    if let Ok(uri) = target.parse::<http::Uri>() {
        session.req_header_mut().set_uri(uri);
    }
}

/// Bedrock's `GET {prefix}/inference-profiles[/{id}]`, served without
/// credentials (as Claude Code sends it): `Some(answer)` for such a
/// request (`None` inside: no such profile), `None` for any other.
pub fn inference_profiles(session: &Session, snap: &Snapshot) -> Option<Option<Vec<u8>>> {
    let req = session.req_header();
    if req.method != http::Method::GET {
        return None;
    }
    let rest = req
        .uri
        .path()
        .strip_prefix(snap.config.inbound.bedrock.as_deref()?)?
        .strip_prefix("/inference-profiles")?;
    match rest {
        "" | "/" => Some(super::local::inference_profiles(snap, None)),
        one => Some(super::local::inference_profiles(snap, Some(one.strip_prefix('/')?))),
    }
}

/// The gateway model id of a cloud model id: `inbound.model_map`, else the
/// id without its cloud decorations.
pub(crate) fn cloud_model(map: &std::collections::BTreeMap<String, String>, id: &str) -> String {
    map.get(id)
        .cloned()
        .unwrap_or_else(|| crate::dialects::anthropic::cloud::anthropic_model_id(id))
}

/// A cloud-format body (`inbound:`) as a Messages body: the model from the
/// path (or, for count-tokens, the body's own, mapped), `anthropic_version`
/// out, a Bedrock body's betas into `anthropic-beta`.
pub fn messages_body(
    session: &mut Session,
    snap: &Snapshot,
    inbound: Inbound,
    body: &[u8],
) -> Result<bytes::Bytes, GatewayError> {
    let invalid = |e: String| GatewayError::InvalidRequest(e);
    let model = match inbound.model {
        Some(m) => m,
        None => {
            #[derive(serde::Deserialize)]
            struct Named {
                model: String,
            }
            let named: Named = serde_json::from_slice(body)
                .map_err(|e| invalid(format!("the count-tokens body needs a `model`: {e}")))?;
            cloud_model(&snap.config.inbound.model_map, &named.model)
        }
    };
    let unwrapped;
    let body = if inbound.wrapped {
        unwrapped =
            crate::dialects::anthropic::cloud::bedrock_count_tokens_input(body).map_err(|e| invalid(e.to_string()))?;
        &unwrapped[..]
    } else {
        body
    };
    let (body, betas) = crate::dialects::anthropic::cloud::messages_body(body, &model, inbound.stream)
        .map_err(|e| invalid(e.to_string()))?;
    if !betas.is_empty() {
        let head = session.req_header_mut();
        let mut all: Vec<String> = head
            .headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        all.extend(betas);
        let _ = head.remove_header("anthropic-beta");
        let _ = head.insert_header("anthropic-beta", all.join(","));
    }
    Ok(bytes::Bytes::from(body))
}
