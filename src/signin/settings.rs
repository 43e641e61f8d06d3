//! Managed settings as `/managed/settings` serves them: the checksum
//! Claude Code computes over what it holds, and the document's identity.
//!
//! The checksum is `sha256:` + the hex SHA-256 of the settings as
//! JavaScript's `JSON.stringify` writes them after sorting the keys of
//! every object: Claude Code computes it that way over the settings it
//! holds and sends it as `If-None-Match`, so the gateway's must match byte
//! for byte. Three JavaScript rules differ from a plain sorted
//! `serde_json` dump and are followed here: keys sort by UTF-16 code unit;
//! keys that are array indices ("0", "17") come first, in numeric order,
//! because JavaScript objects enumerate them so; and numbers are written
//! as JavaScript writes them (`1`, not `1.0`; `1e+21`).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` over the canonical form of `settings`.
pub fn checksum(settings: &Map<String, Value>) -> String {
    let mut out = Vec::with_capacity(256);
    write_object(&mut out, settings);
    format!("sha256:{}", hex::encode(Sha256::digest(&out)))
}

/// A stable id for a policy's document: a UUID made of the SHA-256 of the
/// policy's name and checksum (version 8, "custom").
pub fn uuid(policy: &str, checksum: &str) -> String {
    let mut h = Sha256::new();
    h.update(policy.as_bytes());
    h.update([0]);
    h.update(checksum.as_bytes());
    let b: [u8; 16] = h.finalize()[..16].try_into().unwrap_or_default();
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

/// JavaScript's array-index keys: canonical decimal integers below 2^32 - 1.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || (key.len() > 1 && key.starts_with('0')) || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u32>().ok().filter(|n| *n < u32::MAX)
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by(|a, b| match (array_index(a), array_index(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.encode_utf16().cmp(b.encode_utf16()),
    });
    write_list(out, b'{', b'}', keys, |out, k| {
        write_string(out, k);
        out.push(b':');
        write_value(out, &map[k]);
    });
}

/// `open`, the items as `each` writes them with commas between, `close`.
fn write_list<T>(
    out: &mut Vec<u8>,
    open: u8,
    close: u8,
    items: impl IntoIterator<Item = T>,
    mut each: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(open);
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(close);
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                out.extend_from_slice(ryu_js::Buffer::new().format(f).as_bytes());
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => write_list(out, b'[', b']', items, write_value),
        Value::Object(map) => write_object(out, map),
    }
}

/// As `JSON.stringify` quotes: `"` and `\` escaped, control characters as
/// `\b \f \n \r \t` or `\u00xx` (lower-case hex), everything else raw
/// (serde_json's string escaping is exactly this).
fn write_string(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn canonical(v: Value) -> String {
        let mut out = Vec::new();
        write_object(&mut out, &map(v));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_sort_at_every_level_without_whitespace() {
        assert_eq!(
            canonical(json!({"env": {"B": "2", "A": "1"}, "availableModels": ["z", "a"]})),
            r#"{"availableModels":["z","a"],"env":{"A":"1","B":"2"}}"#
        );
    }

    #[test]
    fn javascript_rules_index_keys_numbers_and_utf16_order() {
        assert_eq!(
            canonical(json!({"a": 1, "10": 2, "9": 3, "09": 4})),
            r#"{"9":3,"10":2,"09":4,"a":1}"#
        );
        assert_eq!(
            canonical(json!({"x": 1.0, "y": 1e21, "z": 0.5, "w": -3})),
            r#"{"w":-3,"x":1,"y":1e+21,"z":0.5}"#
        );
        // U+FF5E sorts after U+1F600 by UTF-16 code unit (0xD83D < 0xFF5E)
        // and before it by code point.
        assert_eq!(
            canonical(json!({"\u{ff5e}": 1, "\u{1f600}": 2})),
            "{\"\u{1f600}\":2,\"\u{ff5e}\":1}"
        );
        assert_eq!(canonical(json!({"s": "é\n\u{1}/"})), "{\"s\":\"é\\n\\u0001/\"}");
    }

    #[test]
    fn the_checksum_is_that_of_the_python_reference() {
        // python3 -c 'import json,hashlib; s=json.dumps({"env":{"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY":"1"}},
        //   sort_keys=True,separators=(",",":"),ensure_ascii=False); print(hashlib.sha256(s.encode()).hexdigest())'
        let s = map(json!({"env": {"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"}}));
        assert_eq!(checksum(&s), format!("sha256:{}", PY_REFERENCE));
        assert_eq!(
            checksum(&Map::new()),
            format!("sha256:{}", hex::encode(Sha256::digest(b"{}")))
        );
    }

    const PY_REFERENCE: &str = "85e1a2588e4dd5eeefe5358516cd766be4587d8692e7c9db19856b6fbeb168c6";

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid("eng", "sha256:00");
        assert_eq!(a, uuid("eng", "sha256:00"));
        assert_ne!(a, uuid("data", "sha256:00"));
        assert_ne!(a, uuid("eng", "sha256:01"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
        // The id a policy's document has always had (clients keep it).
        assert_eq!(a, "0a6af254-139a-8a43-a3a7-831b547f7671");
    }
}
