//! Stage: cache. Exact-match answers held in memory, off by default.
//!
//! Two stores, configured under `cache:` (and `--response-cache` /
//! `--token-count-cache`):
//! - **response**: a complete `/v1/messages` answer (JSON or SSE, as the
//!   client received it) keyed by the request body plus the headers that
//!   change the answer (`anthropic-version`, `anthropic-beta`). A retried
//!   identical request — Claude Code retries after a dropped connection — is
//!   then answered locally and costs nothing upstream.
//! - **token_count**: `/v1/messages/count_tokens` answers, keyed the same way.
//!
//! Only complete 200 answers up to [`MAX_ENTRY_BYTES`] are stored; each
//! store is an LRU bounded by `max_entries` and by [`MAX_STORE_BYTES`], and
//! entries expire after `ttl`. A lookup happens after the policy stage, so a
//! hit still counts against rate limits; it is metered at zero cost.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashlink::LruCache;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::runtime::snapshot::Plan;
use crate::runtime::Snapshot;

/// Largest answer a store keeps.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Upper bound on the bytes one store holds, whatever `max_entries` says.
pub const MAX_STORE_BYTES: usize = 64 * 1024 * 1024;
/// Token-count answers are tiny; this many are plenty.
const TOKEN_COUNT_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Response,
    TokenCount,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Response => "response",
            Kind::TokenCount => "token_count",
        }
    }
}

#[derive(Clone)]
pub struct Entry {
    pub content_type: &'static str,
    pub body: Bytes,
    stored: Instant,
}

struct Store {
    entries: Mutex<(LruCache<[u8; 32], Entry>, usize)>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Store {
    fn new() -> Store {
        Store {
            entries: Mutex::new((LruCache::new(1), 0)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (LruCache<[u8; 32], Entry>, usize)> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Caches {
    response: Store,
    token_count: Store,
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            response: Store::new(),
            token_count: Store::new(),
        }
    }
}

/// What one store holds and how it is doing, for `/admin/cache`.
#[derive(Debug, serde::Serialize)]
pub struct Stats {
    pub enabled: bool,
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub ttl_seconds: u64,
    pub max_entries: usize,
}

/// The cache key: who asks, where the request is routed, the body, and the
/// headers that change the answer. Entries are per caller: a gateway key's
/// name, or — in passthrough-auth mode — the credential the client presented
/// (hashed), so a hit never hands an answer to someone the upstream would
/// have refused. The route is the plan's candidates (provider and upstream
/// model, in order): a header-matched rule that sends the same body
/// elsewhere gets its own entries.
pub fn key(caller: Option<&str>, plan: &Plan, body: &[u8], headers: &HeaderMap) -> [u8; 32] {
    let mut h = Sha256::new();
    for c in &plan.candidates {
        h.update(c.provider.name.as_bytes());
        h.update(b"\0");
        h.update(c.rename.as_deref().unwrap_or("").as_bytes());
        h.update(b"\0");
    }
    h.update(b"\x03");
    match caller {
        Some(name) => {
            h.update(b"key\0");
            h.update(name.as_bytes());
        }
        None => {
            h.update(b"credential\0");
            for name in ["x-api-key", "authorization"] {
                for v in headers.get_all(name) {
                    h.update(v.as_bytes());
                    h.update(b"\0");
                }
            }
        }
    }
    h.update(b"\x02");
    for name in ["anthropic-version", "anthropic-beta"] {
        for v in headers.get_all(name) {
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(v.as_bytes());
            h.update(b"\0");
        }
    }
    h.update(b"\x01");
    h.update(body);
    h.finalize().into()
}

/// Whether a relayed answer is whole and worth serving again: a JSON body,
/// or an event stream that reached `message_stop` without an in-band
/// `event: error` (an upstream that failed mid-stream still answered 200).
pub fn is_complete_answer(stream: bool, body: &[u8]) -> bool {
    if !stream {
        return true;
    }
    let has_event = |name: &[u8]| memchr::memmem::find_iter(body, name).any(|at| at == 0 || body[at - 1] == b'\n');
    has_event(b"event: message_stop") && !has_event(b"event: error")
}

fn settings(snap: &Snapshot, kind: Kind) -> (bool, Duration, usize) {
    let c = &snap.config.cache;
    match kind {
        Kind::Response => (c.response.enabled, c.response.ttl.0, c.response.max_entries.max(1)),
        Kind::TokenCount => (c.token_count.enabled, c.token_count.ttl.0, TOKEN_COUNT_ENTRIES),
    }
}

impl Caches {
    fn store(&self, kind: Kind) -> &Store {
        match kind {
            Kind::Response => &self.response,
            Kind::TokenCount => &self.token_count,
        }
    }

    pub fn enabled(snap: &Snapshot, kind: Kind) -> bool {
        settings(snap, kind).0
    }

    /// A fresh entry for `key`, counting the hit or miss.
    pub fn lookup(&self, snap: &Snapshot, kind: Kind, key: &[u8; 32]) -> Option<Entry> {
        let (enabled, ttl, _) = settings(snap, kind);
        if !enabled {
            return None;
        }
        let store = self.store(kind);
        let found = {
            let mut guard = store.lock();
            let (map, bytes) = &mut *guard;
            match map.get(key) {
                Some(e) if e.stored.elapsed() <= ttl => Some(e.clone()),
                Some(_) => {
                    if let Some(old) = map.remove(key) {
                        *bytes -= old.body.len();
                    }
                    None
                }
                None => None,
            }
        };
        let (counter, result) = if found.is_some() {
            (&store.hits, "hit")
        } else {
            (&store.misses, "miss")
        };
        counter.fetch_add(1, Relaxed);
        crate::telemetry::METRICS
            .cache
            .with_label_values(&[kind.as_str(), result])
            .inc();
        found
    }

    /// Keep a complete answer (ignored when too large or the store is off).
    pub fn insert(&self, snap: &Snapshot, kind: Kind, key: [u8; 32], content_type: &'static str, body: Bytes) {
        let (enabled, _, max_entries) = settings(snap, kind);
        if !enabled || body.len() > MAX_ENTRY_BYTES {
            return;
        }
        let mut guard = self.store(kind).lock();
        let (map, bytes) = &mut *guard;
        if map.capacity() != max_entries {
            map.set_capacity(max_entries);
            *bytes = map.iter().map(|(_, e)| e.body.len()).sum();
        }
        if !map.contains_key(&key) {
            while map.len() >= max_entries {
                match map.remove_lru() {
                    Some((_, old)) => *bytes -= old.body.len(),
                    None => break,
                }
            }
        }
        *bytes += body.len();
        if let Some(old) = map.insert(
            key,
            Entry {
                content_type,
                body,
                stored: Instant::now(),
            },
        ) {
            *bytes -= old.body.len();
        }
        while *bytes > MAX_STORE_BYTES {
            match map.remove_lru() {
                Some((_, old)) => *bytes -= old.body.len(),
                None => break,
            }
        }
    }

    pub fn stats(&self, snap: &Snapshot, kind: Kind) -> Stats {
        let (enabled, ttl, max_entries) = settings(snap, kind);
        let store = self.store(kind);
        let guard = store.lock();
        Stats {
            enabled,
            entries: guard.0.len(),
            bytes: guard.0.iter().map(|(_, e)| e.body.len()).sum(),
            hits: store.hits.load(Relaxed),
            misses: store.misses.load(Relaxed),
            ttl_seconds: ttl.as_secs(),
            max_entries,
        }
    }

    /// Drop the entries older than their store's `ttl` (they would never
    /// be served again); the number dropped.
    pub fn purge_expired(&self, snap: &Snapshot) -> usize {
        [Kind::Response, Kind::TokenCount]
            .into_iter()
            .map(|kind| {
                let (_, ttl, _) = settings(snap, kind);
                let mut guard = self.store(kind).lock();
                let (map, bytes) = &mut *guard;
                let stale: Vec<[u8; 32]> = map
                    .iter()
                    .filter(|(_, e)| e.stored.elapsed() > ttl)
                    .map(|(k, _)| *k)
                    .collect();
                for k in &stale {
                    if let Some(old) = map.remove(k) {
                        *bytes -= old.body.len();
                    }
                }
                stale.len()
            })
            .sum()
    }

    /// Drop every entry of both stores; the number dropped.
    pub fn clear(&self) -> usize {
        [&self.response, &self.token_count]
            .into_iter()
            .map(|s| {
                let mut guard = s.lock();
                let n = guard.0.len();
                guard.0.clear();
                guard.1 = 0;
                n
            })
            .sum()
    }
}

/// What a warm-up loaded, and each line it left out (1-based) and why.
#[derive(Debug, Default, serde::Serialize)]
pub struct Warmed {
    pub loaded: usize,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, serde::Serialize)]
pub struct Skipped {
    pub line: usize,
    pub reason: String,
}

/// One line of a warm-up file (`modelgate cache warmup FILE`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmLine<'a> {
    /// The request body: a JSON object, used byte for byte as the line
    /// writes it, or a string holding the exact bytes.
    #[serde(borrow)]
    request: &'a serde_json::value::RawValue,
    /// The answer: a Messages (or count_tokens) JSON object, or for a
    /// `stream: true` request the whole event stream as a string.
    #[serde(borrow)]
    response: &'a serde_json::value::RawValue,
    /// The gateway key whose requests the entry answers.
    #[serde(default)]
    key: Option<String>,
    /// `anthropic-version` and `anthropic-beta` as the client sends them.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// `messages` (default) or `count_tokens`.
    #[serde(default)]
    endpoint: Option<String>,
}

/// Lines warmed between yields to the runtime, so a large file never
/// holds a worker for long.
const WARM_LINES_PER_TURN: usize = 64;

/// `POST /admin/cache/warmup`: pre-load answers from JSONL, one
/// `{request, response}` pair per line (see [`WarmLine`]), keyed exactly as
/// the live request would be ([`key`], with the plan `messages` routes it
/// by). `default_key` is the gateway key for lines that name none; `known`
/// says whether a key of that name exists. Lines that cannot be used are
/// reported, not fatal. Needs gateway keys: in passthrough-auth mode
/// entries belong to client credentials, which a file must not hold.
pub async fn warm(
    caches: &Caches,
    snap: &Snapshot,
    jsonl: &[u8],
    default_key: Option<&str>,
    known: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Warmed, crate::error::GatewayError> {
    if !snap.keys_enabled() {
        return Err(crate::error::GatewayError::InvalidRequest(
            "cache warm-up needs gateway keys: in passthrough-auth mode cached answers belong to each client's own credential".into(),
        ));
    }
    let mut out = Warmed::default();
    for (i, line) in jsonl.split(|b| *b == b'\n').enumerate() {
        if i % WARM_LINES_PER_TURN == WARM_LINES_PER_TURN - 1 {
            tokio::task::yield_now().await;
        }
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match warm_one(caches, snap, line, default_key, known) {
            Ok(()) => out.loaded += 1,
            Err(reason) => out.skipped.push(Skipped { line: i + 1, reason }),
        }
    }
    Ok(out)
}

fn warm_one(
    caches: &Caches,
    snap: &Snapshot,
    line: &[u8],
    default_key: Option<&str>,
    known: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let l: WarmLine = serde_json::from_slice(line).map_err(|e| format!("not a warm-up line: {e}"))?;
    let kind = match l.endpoint.as_deref() {
        None | Some("messages" | "/v1/messages") => Kind::Response,
        Some("count_tokens" | "/v1/messages/count_tokens") => Kind::TokenCount,
        Some(other) => return Err(format!("endpoint `{other}`: give messages or count_tokens")),
    };
    if !Caches::enabled(snap, kind) {
        return Err(format!("cache.{} is off", kind.as_str()));
    }
    let caller = l
        .key
        .as_deref()
        .or(default_key)
        .ok_or("no gateway key: give `key` in the line or --key")?;
    if !known(caller) {
        return Err(format!("no gateway key is called `{caller}`"));
    }
    let body: Bytes = match serde_json::from_str::<String>(l.request.get()) {
        Ok(text) => text.into(),
        Err(_) => Bytes::copy_from_slice(l.request.get().as_bytes()),
    };
    let view: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("request: {e}"))?;
    let model = view["model"].as_str().ok_or("request: no `model`")?;
    let stream = kind == Kind::Response && view["stream"].as_bool() == Some(true);
    let mut headers = HeaderMap::new();
    for (name, value) in &l.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header `{name}`: not a name"))?;
        let value = http::HeaderValue::from_str(value).map_err(|_| format!("header {name}: not a value"))?;
        headers.append(name, value);
    }
    if !headers.contains_key("anthropic-version") {
        let v = http::HeaderValue::from_str(&snap.config.anthropic_version).map_err(|e| e.to_string())?;
        headers.insert("anthropic-version", v);
    }
    let (answer, content_type): (Bytes, &'static str) = if stream {
        let text: String = serde_json::from_str(l.response.get())
            .map_err(|_| "response: a stream: true request needs the event stream as a string")?;
        if !is_complete_answer(true, text.as_bytes()) {
            return Err("response: the event stream does not end with message_stop (or holds an error event)".into());
        }
        (text.into(), "text/event-stream; charset=utf-8")
    } else {
        let v: serde_json::Value = serde_json::from_str(l.response.get()).map_err(|e| format!("response: {e}"))?;
        let fits = match kind {
            Kind::Response => v["type"] == "message",
            Kind::TokenCount => v["input_tokens"].is_u64(),
        };
        if !fits {
            return Err(match kind {
                Kind::Response => "response: not a Messages answer (`type: message`)".into(),
                Kind::TokenCount => "response: not a count_tokens answer (`input_tokens`)".into(),
            });
        }
        (Bytes::copy_from_slice(l.response.get().as_bytes()), "application/json")
    };
    if answer.len() > MAX_ENTRY_BYTES {
        return Err(format!(
            "response: larger than an entry may be ({MAX_ENTRY_BYTES} bytes)"
        ));
    }
    let (_, _, plan) =
        super::messages::plan_for(snap, model, &headers).ok_or_else(|| format!("no route serves `{model}`"))?;
    caches.insert(
        snap,
        kind,
        key(Some(caller), &plan, &body, &headers),
        content_type,
        answer,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse_str;

    fn snap(extra: &str) -> Snapshot {
        let env = |_: &str| None;
        let yaml = format!("providers:\n  a: {{type: anthropic}}\ndefault_provider: a\n{extra}");
        Snapshot::build(parse_str(&yaml, &env).unwrap(), &env).unwrap()
    }

    #[test]
    fn stores_hits_expires_and_bounds() {
        let s = snap("cache:\n  response: {enabled: true, ttl: 1h, max_entries: 2}\n");
        let c = Caches::default();
        let h = HeaderMap::new();
        let p = plan(&s, "m");
        let (k1, k2, k3) = (
            key(None, &p, b"1", &h),
            key(None, &p, b"2", &h),
            key(None, &p, b"3", &h),
        );
        assert!(c.lookup(&s, Kind::Response, &k1).is_none());
        c.insert(&s, Kind::Response, k1, "application/json", Bytes::from_static(b"one"));
        c.insert(&s, Kind::Response, k2, "application/json", Bytes::from_static(b"two"));
        assert_eq!(c.lookup(&s, Kind::Response, &k1).unwrap().body, "one");
        c.insert(&s, Kind::Response, k3, "application/json", Bytes::from_static(b"three"));
        assert!(
            c.lookup(&s, Kind::Response, &k2).is_none(),
            "least recently used goes first"
        );
        let st = c.stats(&s, Kind::Response);
        assert_eq!((st.entries, st.bytes, st.hits, st.misses), (2, 8, 1, 2));
        assert!(c.lookup(&s, Kind::TokenCount, &k1).is_none(), "token_count is off");
        c.insert(&s, Kind::Response, k2, "x", Bytes::from(vec![0u8; MAX_ENTRY_BYTES + 1]));
        assert!(c.lookup(&s, Kind::Response, &k2).is_none(), "too large to keep");
        assert_eq!(c.clear(), 2);
        let expired = snap("cache:\n  response: {enabled: true, ttl: 0s}\n");
        c.insert(&expired, Kind::Response, k1, "x", Bytes::from_static(b"one"));
        assert_eq!(c.purge_expired(&expired), 1);
        c.insert(&expired, Kind::Response, k1, "x", Bytes::from_static(b"one"));
        assert!(c.lookup(&expired, Kind::Response, &k1).is_none());
    }

    #[test]
    fn headers_that_change_the_answer_change_the_key() {
        let s = snap("");
        let p = plan(&s, "m");
        let mut h = HeaderMap::new();
        let plain = key(None, &p, b"{}", &h);
        h.insert("anthropic-beta", "context-1m-2025-08-07".parse().unwrap());
        assert_ne!(plain, key(None, &p, b"{}", &h));
        h.insert("user-agent", "x".parse().unwrap());
        // Callers never share entries.
        assert_ne!(key(Some("alice"), &p, b"{}", &h), key(Some("bob"), &p, b"{}", &h));
        let mut other = h.clone();
        other.insert("x-api-key", "someone-else".parse().unwrap());
        assert_ne!(key(None, &p, b"{}", &h), key(None, &p, b"{}", &other));
        assert_eq!(
            key(None, &p, b"{}", &h),
            key(None, &p, b"{}", &{
                let mut h2 = HeaderMap::new();
                h2.insert("anthropic-beta", "context-1m-2025-08-07".parse().unwrap());
                h2
            })
        );
    }

    fn plan(s: &Snapshot, model: &str) -> Plan {
        s.resolve(model, &|_| None).unwrap()
    }

    #[test]
    fn the_route_is_part_of_the_key() {
        let env = |_: &str| None;
        let yaml = "providers:\n  a: {type: anthropic}\n  b: {type: anthropic}\ndefault_provider: a\nroutes:\n  - {header: {name: x-team, value: red}, provider: b}\n";
        let s = Snapshot::build(parse_str(yaml, &env).unwrap(), &env).unwrap();
        let red = s
            .resolve("m", &|n| (n.as_str() == "x-team").then(|| "red".to_string()))
            .unwrap();
        let h = HeaderMap::new();
        assert_ne!(key(None, &red, b"{}", &h), key(None, &plan(&s, "m"), b"{}", &h));
    }

    #[test]
    fn only_whole_streams_are_worth_keeping() {
        let whole = b"event: message_start\ndata: {}\n\nevent: message_stop\ndata: {}\n\n";
        assert!(is_complete_answer(true, whole));
        let failed = b"event: message_start\ndata: {}\n\nevent: error\ndata: {}\n\n";
        assert!(!is_complete_answer(true, failed));
        let cut = b"event: message_start\ndata: {\"text\":\"event: message_stop\"}\n\n";
        assert!(!is_complete_answer(true, cut), "only at the start of a line");
        assert!(is_complete_answer(false, b"{}"));
    }
}
