//! Claude on the cloud platforms: the Messages body as Bedrock InvokeModel
//! and Vertex `rawPredict` take it, and the capability table that decides
//! which `anthropic-beta` values (and so which paired body fields) each
//! platform accepts (`docs/protocol-notes.md` §5.1, pitfall 15).
//!
//! The table is data: [`Capabilities::for_platform`] is the built-in one,
//! and a provider's `betas:` list replaces it without a rebuild. A field
//! whose beta is not accepted (or not sent) is stripped together with it:
//! sending either half alone gives "Extra inputs are not permitted".

use serde_json::{Map, Value};

/// Where a Claude model is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// InvokeModel: `anthropic_version: bedrock-2023-05-31`, betas in the
    /// body's `anthropic_beta`, `model` and `stream` in the path.
    Bedrock,
    /// `rawPredict` / `streamRawPredict`: `anthropic_version:
    /// vertex-2023-10-16`, betas stay in the `anthropic-beta` header,
    /// `model` in the path, `stream` in the body.
    Vertex,
}

impl Platform {
    pub fn anthropic_version(self) -> &'static str {
        match self {
            Platform::Bedrock => "bedrock-2023-05-31",
            Platform::Vertex => "vertex-2023-10-16",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Platform::Bedrock => "Bedrock",
            Platform::Vertex => "Vertex AI",
        }
    }
}

/// Which `anthropic-beta` values an upstream accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub betas: Vec<String>,
}

/// Top-level body fields and the beta each needs (`None`: never accepted).
const PAIRED_FIELDS: &[(&str, Option<&str>)] = &[
    ("context_management", Some("context-management-2025-06-27")),
    ("output_config", None),
    ("speed", None),
    ("service_tier", None),
    ("container", None),
    ("mcp_servers", Some("mcp-client-2025-04-04")),
];

/// Tool fields and the beta each needs.
const PAIRED_TOOL_FIELDS: &[(&str, Option<&str>)] = &[
    ("eager_input_streaming", None),
    ("defer_loading", Some("tool-search-tool-2025-10-19")),
    ("strict", None),
    ("input_examples", Some("tool-examples-2025-10-29")),
];

/// Betas both platforms accept for Claude models (2026-11).
const COMMON_BETAS: &[&str] = &[
    "interleaved-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19",
    "output-128k-2025-02-19",
    "context-management-2025-06-27",
    "tool-search-tool-2025-10-19",
];

impl Capabilities {
    /// The built-in table for `platform`.
    pub fn for_platform(platform: Platform) -> Capabilities {
        let extra: &[&str] = match platform {
            Platform::Bedrock => &["tool-examples-2025-10-29"],
            Platform::Vertex => &["web-search-2025-03-05"],
        };
        Capabilities {
            betas: COMMON_BETAS.iter().chain(extra).map(|b| b.to_string()).collect(),
        }
    }

    /// A platform that takes no `anthropic-beta` at all (Claude in Amazon
    /// Bedrock's Messages API, per Anthropic's platform table).
    pub fn none() -> Capabilities {
        Capabilities { betas: Vec::new() }
    }

    /// What Bedrock's InvokeModel accepts for Anthropic models.
    pub fn bedrock() -> Capabilities {
        Self::for_platform(Platform::Bedrock)
    }

    /// What Vertex AI's `publishers/anthropic` accepts.
    pub fn vertex() -> Capabilities {
        Self::for_platform(Platform::Vertex)
    }

    pub fn accepts(&self, beta: &str) -> bool {
        self.betas.iter().any(|b| b == beta)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body is not a JSON object: {0}")]
pub struct EditError(pub String);

/// An edited body, the betas kept, and what was dropped (for the log).
#[derive(Debug)]
pub struct Edited {
    pub body: Vec<u8>,
    /// Accepted betas, in the order sent. Bedrock has them in the body
    /// already; Vertex sends them as the `anthropic-beta` header.
    pub betas: Vec<String>,
    pub dropped: Vec<String>,
}

/// The Messages body edited for `platform`: `model` removed (it goes in the
/// path), `anthropic_version` added, unaccepted betas dropped, paired fields
/// stripped with their betas, the `custom` tool-type wrapper removed.
pub fn edit_body(
    body: &[u8],
    beta_headers: &[&str],
    caps: &Capabilities,
    platform: Platform,
) -> Result<Edited, EditError> {
    let mut obj: Map<String, Value> = serde_json::from_slice(body).map_err(|e| EditError(e.to_string()))?;
    obj.remove("model");
    if platform == Platform::Bedrock {
        obj.remove("stream");
    }
    let (kept, mut dropped) = sort_betas(beta_headers, caps, platform.name());
    strip_paired(&mut obj, &kept, true, &mut dropped);
    unique(&mut dropped);
    let mut out = Map::with_capacity(obj.len() + 2);
    out.insert("anthropic_version".into(), Value::from(platform.anthropic_version()));
    if platform == Platform::Bedrock && !kept.is_empty() {
        out.insert("anthropic_beta".into(), Value::from(kept.clone()));
    }
    out.extend(obj);
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| EditError(e.to_string()))?;
    Ok(Edited {
        body,
        betas: kept.into_iter().map(str::to_string).collect(),
        dropped,
    })
}

/// The betas sent (over one or more `anthropic-beta` headers), split into
/// those `caps` takes and a note for each of the others.
fn sort_betas<'a>(beta_headers: &[&'a str], caps: &Capabilities, platform: &str) -> (Vec<&'a str>, Vec<String>) {
    let sent = beta_headers
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty());
    let (kept, refused): (Vec<&str>, Vec<&str>) = sent.partition(|b| caps.accepts(b));
    let notes = refused
        .into_iter()
        .map(|b| format!("beta `{b}` (not accepted by {platform})"))
        .collect();
    (kept, notes)
}

/// Remove the top-level and tool fields whose beta is not among `kept`
/// (keeping the field order), noting each; with `unwrap_custom`, also the
/// `custom` tool-type wrapper the clouds' legacy endpoints refuse.
fn strip_paired(obj: &mut Map<String, Value>, kept: &[&str], unwrap_custom: bool, dropped: &mut Vec<String>) {
    let usable = |beta: Option<&str>| beta.is_some_and(|b| kept.contains(&b));
    for (field, beta) in PAIRED_FIELDS {
        if !usable(*beta) && obj.shift_remove(*field).is_some() {
            dropped.push(format!("`{field}`"));
        }
    }
    if let Some(Value::Array(tools)) = obj.get_mut("tools") {
        for tool in tools.iter_mut().filter_map(Value::as_object_mut) {
            if unwrap_custom && tool.get("type").and_then(Value::as_str) == Some("custom") {
                tool.remove("type");
            }
            for (field, beta) in PAIRED_TOOL_FIELDS {
                if !usable(*beta) && tool.shift_remove(*field).is_some() {
                    dropped.push(format!("tool field `{field}`"));
                }
            }
        }
    }
}

/// Each note once, in first-seen order.
fn unique(notes: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));
}

/// A Messages body for a platform that serves the Messages API itself but
/// takes only some betas (Claude in Amazon Bedrock's Messages API): the
/// betas it takes, and the body without the fields whose beta is not
/// among them (`body: None` when it has none of them, so the bytes go
/// unchanged; a body is parsed only when a field name appears in it).
#[derive(Debug)]
pub struct Stripped {
    pub body: Option<Vec<u8>>,
    pub betas: Vec<String>,
    pub dropped: Vec<String>,
}

pub fn strip_unaccepted(
    body: &[u8],
    beta_headers: &[&str],
    caps: &Capabilities,
    platform: &str,
) -> Result<Stripped, EditError> {
    let (kept, mut dropped) = sort_betas(beta_headers, caps, platform);
    let usable = |beta: Option<&str>| beta.is_some_and(|b| kept.contains(&b));
    let candidates = PAIRED_FIELDS
        .iter()
        .chain(PAIRED_TOOL_FIELDS)
        .filter(|(_, beta)| !usable(*beta))
        .any(|(field, _)| memchr::memmem::find(body, format!("\"{field}\"").as_bytes()).is_some());
    let mut edited = None;
    if candidates {
        let mut obj: Map<String, Value> = serde_json::from_slice(body).map_err(|e| EditError(e.to_string()))?;
        let before = dropped.len();
        strip_paired(&mut obj, &kept, false, &mut dropped);
        if dropped.len() > before {
            edited = Some(serde_json::to_vec(&Value::Object(obj)).map_err(|e| EditError(e.to_string()))?);
        }
    }
    unique(&mut dropped);
    Ok(Stripped {
        body: edited,
        betas: kept.into_iter().map(str::to_string).collect(),
        dropped,
    })
}

/// The model id Claude in Amazon Bedrock's Messages API takes for a
/// first-party id: `anthropic.` and the name without a date
/// (`claude-haiku-4-5-20251001` → `anthropic.claude-haiku-4-5`). An id
/// that already names a vendor (`anthropic.…`, `us.anthropic.…`) or an
/// ARN is left as it is.
pub fn bedrock_messages_model(model: &str) -> std::borrow::Cow<'_, str> {
    if model.contains('.') || model.starts_with("arn:") {
        return std::borrow::Cow::Borrowed(model);
    }
    let bare = match model.rsplit_once('-') {
        Some((head, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => model,
    };
    std::borrow::Cow::Owned(format!("anthropic.{bare}"))
}

/// The InvokeModel body inside a Bedrock CountTokens request
/// (`{"input": {"invokeModel": {"body": <base64 blob>}}}`), with the fields
/// a token count does not take removed (`max_tokens`, sampling, `stream`).
/// A body given as a JSON object or a JSON text rather than base64 is
/// taken too.
pub fn bedrock_count_tokens_input(body: &[u8]) -> Result<Vec<u8>, EditError> {
    use base64::Engine;
    let v: Value = serde_json::from_slice(body).map_err(|e| EditError(e.to_string()))?;
    let inner = v.pointer("/input/invokeModel/body").ok_or_else(|| {
        EditError("a CountTokens body needs `input.invokeModel.body` (only InvokeModel bodies are counted here)".into())
    })?;
    let mut obj: Map<String, Value> = match inner {
        Value::Object(o) => o.clone(),
        Value::String(s) if s.trim_start().starts_with('{') => {
            serde_json::from_str(s).map_err(|e| EditError(e.to_string()))?
        }
        Value::String(s) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| EditError(format!("`input.invokeModel.body` is not base64: {e}")))?;
            serde_json::from_slice(&raw).map_err(|e| EditError(format!("`input.invokeModel.body`: {e}")))?
        }
        _ => return Err(EditError("`input.invokeModel.body` must be a string".into())),
    };
    for field in [
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
    ] {
        obj.shift_remove(field);
    }
    serde_json::to_vec(&Value::Object(obj)).map_err(|e| EditError(e.to_string()))
}

/// A cloud-format request body as the Messages API takes it: the inverse
/// of [`edit_body`], for clients that speak a cloud's format to the
/// gateway. `anthropic_version` goes, `model` (from the path) comes first,
/// `stream` is set as the endpoint says (`None`: as the body says), and a
/// Bedrock body's `anthropic_beta` list is returned for the
/// `anthropic-beta` header.
pub fn messages_body(body: &[u8], model: &str, stream: Option<bool>) -> Result<(Vec<u8>, Vec<String>), EditError> {
    let mut obj: Map<String, Value> = serde_json::from_slice(body).map_err(|e| EditError(e.to_string()))?;
    obj.remove("anthropic_version");
    obj.remove("model");
    let betas = match obj.remove("anthropic_beta") {
        Some(Value::Array(list)) => list
            .into_iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(one)) => vec![one],
        _ => Vec::new(),
    };
    let mut out = Map::with_capacity(obj.len() + 2);
    out.insert("model".into(), Value::from(model));
    if let Some(stream) = stream {
        obj.insert("stream".into(), Value::from(stream));
    }
    out.extend(obj);
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| EditError(e.to_string()))?;
    Ok((body, betas))
}

/// `/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:{method}`
/// with a method Vertex AI's Claude endpoints take: the model and the method.
pub fn vertex_path(rest: &str) -> Option<(&str, &str)> {
    let mut parts = rest.strip_prefix("/projects/")?.splitn(6, '/');
    let (_project, locations, _location, publishers, anthropic, models) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if (locations, publishers, anthropic) != ("locations", "publishers", "anthropic") {
        return None;
    }
    let (model, method) = models.strip_prefix("models/")?.rsplit_once(':')?;
    let known = matches!(method, "rawPredict" | "streamRawPredict");
    (known && !model.is_empty() && !model.contains('/')).then_some((model, method))
}

/// A cloud's format a client speaks to the gateway (`inbound:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFormat {
    /// Microsoft Foundry: the Messages API under a prefix.
    Foundry,
    /// Vertex AI's `rawPredict` / `streamRawPredict`.
    Vertex,
    /// Bedrock's InvokeModel / InvokeModelWithResponseStream.
    Bedrock,
}

impl ClientFormat {
    /// How logs name it.
    pub fn name(self) -> &'static str {
        match self {
            ClientFormat::Foundry => "foundry",
            ClientFormat::Vertex => "vertex",
            ClientFormat::Bedrock => "bedrock",
        }
    }

    /// How a token count (`{"input_tokens": N}`) reaches a client of this
    /// format: `None` as it is; Bedrock's clients get `{"inputTokens": N}`.
    pub fn count_reframer(self) -> Option<Box<dyn Reframe>> {
        match self {
            ClientFormat::Bedrock => Some(Box::new(crate::dialects::bedrock::CountAnswer::default())),
            ClientFormat::Foundry | ClientFormat::Vertex => None,
        }
    }

    /// How a streamed answer (Anthropic SSE) reaches a client of this
    /// format: `None` as it is; Bedrock's clients get event-stream frames.
    pub fn stream_reframer(self) -> Option<Box<dyn Reframe>> {
        match self {
            ClientFormat::Bedrock => Some(Box::new(crate::dialects::bedrock::stream::SseToEventStream::default())),
            ClientFormat::Foundry | ClientFormat::Vertex => None,
        }
    }
}

/// A successful answer re-framed for a client's format, as its bytes come.
pub trait Reframe: Send + Sync {
    /// Whether an answer of this `content-type` is re-framed (others go as
    /// they are: errors, say).
    fn reframes(&self, content_type: &[u8]) -> bool {
        content_type.starts_with(b"text/event-stream")
    }
    /// The `content-type` of the re-framed answer.
    fn content_type(&self) -> &'static str;
    /// The re-framed bytes of what `bytes` completes, appended to `out`.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>);
    /// The rest, at the end of the stream.
    fn finish(&mut self, out: &mut Vec<u8>);
}

impl Reframe for crate::dialects::bedrock::stream::SseToEventStream {
    fn content_type(&self) -> &'static str {
        "application/vnd.amazon.eventstream"
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        crate::dialects::bedrock::stream::SseToEventStream::push(self, bytes, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        crate::dialects::bedrock::stream::SseToEventStream::finish(self, out)
    }
}

impl Reframe for crate::dialects::bedrock::CountAnswer {
    fn reframes(&self, content_type: &[u8]) -> bool {
        content_type.starts_with(b"application/json")
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        crate::dialects::bedrock::CountAnswer::push(self, bytes, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        crate::dialects::bedrock::CountAnswer::finish(self, out)
    }
}

/// `/model/{model}/{method}` with a method Bedrock Runtime takes for
/// Claude (InvokeModel, its stream, CountTokens): the model
/// (percent-decoded: `…-v1%3A0` is `…-v1:0`) and the method.
pub fn bedrock_path(rest: &str) -> Option<(String, &str)> {
    let (model, method) = rest.strip_prefix("/model/")?.rsplit_once('/')?;
    let known = matches!(method, "invoke" | "invoke-with-response-stream" | "count-tokens");
    let model = percent_decode(model)?;
    (known && !model.is_empty() && !model.contains('/')).then_some((model, method))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Bedrock's cross-region inference-profile prefixes.
const REGION_PREFIXES: [&str; 8] = ["us.", "eu.", "apac.", "global.", "jp.", "au.", "ca.", "us-gov."];

/// The Anthropic model id a cloud model id stands for, when no
/// `inbound.model_map` entry says otherwise: Vertex's `@version` suffix,
/// Bedrock's region prefix, `anthropic.` and `-vN[:M]` suffix come off
/// (`us.anthropic.claude-opus-4-5-20251101-v1:0` → `claude-opus-4-5-20251101`,
/// `claude-sonnet-4-5@20250929` → `claude-sonnet-4-5`).
pub fn anthropic_model_id(cloud: &str) -> String {
    let id = cloud.split('@').next().unwrap_or(cloud);
    let id = REGION_PREFIXES
        .iter()
        .find_map(|p| id.strip_prefix(p).filter(|rest| rest.starts_with("anthropic.")))
        .unwrap_or(id);
    let id = id.strip_prefix("anthropic.").unwrap_or(id);
    let id = match id.rfind("-v") {
        Some(at)
            if id[at + 2..]
                .split(':')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())) =>
        {
            &id[..at]
        }
        _ => id,
    };
    id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_tokens_input_in_every_form_and_its_answer() {
        use base64::Engine;
        let invoke = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"stream":true,"messages":[]}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(invoke);
        for body in [
            serde_json::json!({"input": {"invokeModel": {"body": b64}}}),
            serde_json::json!({"input": {"invokeModel": {"body": invoke}}}),
            serde_json::json!({"input": {"invokeModel": {"body": serde_json::from_str::<Value>(invoke).unwrap()}}}),
        ] {
            let out = bedrock_count_tokens_input(body.to_string().as_bytes()).unwrap();
            assert_eq!(out, br#"{"anthropic_version":"bedrock-2023-05-31","messages":[]}"#);
        }
        for bad in [
            r#"{"input":{"converse":{}}}"#,
            r#"{"input":{"invokeModel":{"body":"!!"}}}"#,
            "[]",
        ] {
            assert!(bedrock_count_tokens_input(bad.as_bytes()).is_err(), "{bad}");
        }
        let mut c = crate::dialects::bedrock::CountAnswer::default();
        let mut out = Vec::new();
        for piece in [&b"{\"input_"[..], b"tokens\":", b"1234}"] {
            c.push(piece, &mut out);
        }
        c.finish(&mut out);
        assert_eq!(out, br#"{"inputTokens":1234}"#);
        let mut c = crate::dialects::bedrock::CountAnswer::default();
        let mut out = Vec::new();
        c.push(b"not a count", &mut out);
        c.finish(&mut out);
        assert_eq!(out, b"not a count");
    }

    #[test]
    fn bedrock_messages_models() {
        for (from, to) in [
            ("claude-haiku-4-5-20251001", "anthropic.claude-haiku-4-5"),
            ("claude-opus-5", "anthropic.claude-opus-5"),
            ("anthropic.claude-sonnet-5", "anthropic.claude-sonnet-5"),
            ("us.anthropic.claude-sonnet-4-6", "us.anthropic.claude-sonnet-4-6"),
            ("claude-3-5-sonnet-2024", "anthropic.claude-3-5-sonnet-2024"),
        ] {
            assert_eq!(bedrock_messages_model(from), to);
        }
    }

    #[test]
    fn stripping_leaves_a_clean_body_alone_and_drops_unaccepted_pairs() {
        let clean = br#"{"model":"m","max_tokens":5,"messages":[]}"#;
        let s = strip_unaccepted(clean, &["interleaved-thinking-2025-05-14"], &Capabilities::none(), "X").unwrap();
        assert!(s.body.is_none() && s.betas.is_empty());
        assert_eq!(
            s.dropped,
            ["beta `interleaved-thinking-2025-05-14` (not accepted by X)"]
        );

        let body = br#"{"model":"m","context_management":{"edits":[]},"tools":[{"name":"t","input_schema":{},"defer_loading":true}],"messages":[]}"#;
        let caps = Capabilities {
            betas: vec!["context-management-2025-06-27".into()],
        };
        let s = strip_unaccepted(
            body,
            &["context-management-2025-06-27, tool-search-tool-2025-10-19"],
            &caps,
            "X",
        )
        .unwrap();
        assert_eq!(s.betas, ["context-management-2025-06-27"]);
        let v: Value = serde_json::from_slice(&s.body.unwrap()).unwrap();
        assert!(v.get("context_management").is_some(), "its beta is kept");
        assert!(v["tools"][0].get("defer_loading").is_none());
        // A field name only inside text parses, changes nothing, and keeps the bytes.
        let text = br#"{"model":"m","messages":[{"role":"user","content":"what is \"speed\"?"}]}"#;
        assert!(strip_unaccepted(text, &[], &Capabilities::none(), "X")
            .unwrap()
            .body
            .is_none());
    }

    #[test]
    fn vertex_paths() {
        assert_eq!(
            vertex_path("/projects/p1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"),
            Some(("claude-sonnet-4-5@20250929", "streamRawPredict"))
        );
        assert_eq!(
            vertex_path("/projects/p/locations/global/publishers/anthropic/models/count-tokens:rawPredict"),
            Some(("count-tokens", "rawPredict"))
        );
        assert_eq!(
            vertex_path("/projects/p/locations/l/publishers/google/models/gemini:rawPredict"),
            None
        );
        assert_eq!(
            vertex_path("/projects/p/locations/l/publishers/anthropic/models/m:predict"),
            None
        );
        assert_eq!(vertex_path("/projects/p"), None);
    }

    #[test]
    fn bedrock_paths() {
        assert_eq!(
            bedrock_path("/model/us.anthropic.claude-opus-4-5-20251101-v1%3A0/invoke-with-response-stream"),
            Some((
                "us.anthropic.claude-opus-4-5-20251101-v1:0".to_string(),
                "invoke-with-response-stream"
            ))
        );
        assert_eq!(
            bedrock_path("/model/claude-sonnet-4-5/invoke"),
            Some(("claude-sonnet-4-5".to_string(), "invoke"))
        );
        assert_eq!(bedrock_path("/model/m/converse"), None);
        assert_eq!(bedrock_path("/model/%zz/invoke"), None);
        assert_eq!(bedrock_path("/models/m/invoke"), None);
    }

    #[test]
    fn cloud_model_ids_map_to_anthropic_ids() {
        for (cloud, want) in [
            ("us.anthropic.claude-opus-4-5-20251101-v1:0", "claude-opus-4-5-20251101"),
            (
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                "claude-3-5-sonnet-20240620",
            ),
            ("global.anthropic.claude-sonnet-4-5", "claude-sonnet-4-5"),
            ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
            ("claude-opus-4-5", "claude-opus-4-5"),
            ("us.meta.llama3", "us.meta.llama3"),
            ("claude-v2", "claude"),
            ("claude-vx", "claude-vx"),
        ] {
            assert_eq!(anthropic_model_id(cloud), want, "{cloud}");
        }
    }

    #[test]
    fn cloud_bodies_become_messages_bodies() {
        let bedrock = br#"{"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["a-1","b-2"],"max_tokens":5,"messages":[]}"#;
        let (body, betas) = messages_body(bedrock, "claude-x", Some(true)).unwrap();
        assert_eq!(betas, ["a-1", "b-2"]);
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(r#"{"model":"claude-x""#), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["stream"], true);
        assert!(v.get("anthropic_version").is_none() && v.get("anthropic_beta").is_none());
        let vertex = br#"{"anthropic_version":"vertex-2023-10-16","stream":true,"max_tokens":5,"messages":[]}"#;
        let (body, betas) = messages_body(vertex, "claude-y", None).unwrap();
        assert!(betas.is_empty());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["model"].as_str(), v["stream"].as_bool()),
            (Some("claude-y"), Some(true))
        );
        assert!(messages_body(b"[1]", "m", None).is_err());
    }

    /// Bedrock, where betas travel in the body.
    #[test]
    fn betas_and_their_fields_travel_together() {
        let body = br#"{"model":"m","stream":true,"max_tokens":5,"speed":"fast","output_config":{"effort":"low"},"context_management":{"edits":[]},"tools":[{"type":"custom","name":"t","input_schema":{},"defer_loading":true,"strict":true}],"messages":[]}"#;
        // No betas sent: every paired field goes.
        let out = edit_body(body, &[], &Capabilities::bedrock(), Platform::Bedrock).unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"anthropic_version": Platform::Bedrock.anthropic_version(), "max_tokens": 5, "tools": [{"name": "t", "input_schema": {}}], "messages": []})
        );
        assert!(out.dropped.iter().any(|d| d.contains("speed")), "{:?}", out.dropped);
        // With the accepted betas, their fields stay; unknown betas are dropped.
        let out = edit_body(
            body,
            &[
                "tool-search-tool-2025-10-19, context-management-2025-06-27",
                "made-up-2099-01-01",
            ],
            &Capabilities::bedrock(),
            Platform::Bedrock,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            v["anthropic_beta"],
            serde_json::json!(["tool-search-tool-2025-10-19", "context-management-2025-06-27"])
        );
        assert!(v["context_management"].is_object() && v["tools"][0]["defer_loading"] == true);
        assert!(v.get("output_config").is_none() && v["tools"][0].get("strict").is_none());
        assert!(out.dropped.iter().any(|d| d.contains("made-up")));
    }

    /// Claude Code's real first turn (105 KB) with the betas it sends:
    /// what reaches Bedrock and Vertex carries only fields and betas each
    /// accepts.
    #[test]
    fn a_claude_code_request_arrives_with_nothing_the_platform_rejects() {
        let fixture = include_bytes!("../../../tests/fixtures/claude_code_request.json");
        let betas = ["claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,fine-grained-tool-streaming-2025-05-14,prompt-caching-scope-2026-01-05,effort-2025-11-24"];
        for platform in [Platform::Bedrock, Platform::Vertex] {
            let caps = Capabilities::for_platform(platform);
            let out = edit_body(fixture, &betas, &caps, platform).unwrap();
            let v: Value = serde_json::from_slice(&out.body).unwrap();
            let allowed = [
                "anthropic_version",
                "anthropic_beta",
                "max_tokens",
                "system",
                "messages",
                "tools",
                "tool_choice",
                "thinking",
                "temperature",
                "top_p",
                "top_k",
                "stop_sequences",
                "metadata",
                "stream",
                "context_management",
            ];
            for key in v.as_object().unwrap().keys() {
                assert!(
                    allowed.contains(&key.as_str()),
                    "`{key}` would be rejected by {platform:?}"
                );
            }
            assert_eq!(v["anthropic_version"], platform.anthropic_version());
            assert_eq!(
                out.betas,
                ["interleaved-thinking-2025-05-14", "context-management-2025-06-27"]
            );
            match platform {
                Platform::Bedrock => {
                    assert_eq!(v["anthropic_beta"], serde_json::json!(out.betas));
                    assert!(v.get("model").is_none() && v.get("stream").is_none());
                }
                Platform::Vertex => assert!(v.get("anthropic_beta").is_none() && v.get("model").is_none()),
            }
            for tool in v["tools"].as_array().unwrap() {
                assert_ne!(tool["type"], "custom", "{tool}");
                for field in ["eager_input_streaming", "strict"] {
                    assert!(tool.get(field).is_none(), "{field} in {tool}");
                }
            }
        }
    }

    #[test]
    fn vertex_keeps_stream_and_returns_betas_for_the_header() {
        let body = br#"{"model":"claude-sonnet-4-5@20250929","stream":true,"max_tokens":5,"context_management":{"edits":[]},"messages":[]}"#;
        let out = edit_body(
            body,
            &["claude-code-20250219,context-management-2025-06-27"],
            &Capabilities::vertex(),
            Platform::Vertex,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"anthropic_version": "vertex-2023-10-16", "stream": true, "max_tokens": 5, "context_management": {"edits": []}, "messages": []})
        );
        assert_eq!(out.betas, ["context-management-2025-06-27"]);
        assert!(out.dropped[0].contains("claude-code-20250219"), "{:?}", out.dropped);
    }
}
