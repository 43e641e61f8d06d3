//! The inbound parse every `/v1/messages` body goes through, and the byte
//! splices made on it for Anthropic-type upstreams: model rename, `speed`
//! added or removed, foreign thinking blocks stripped for Claude, request
//! `tags` taken out for a signed-in developer.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use modelgate::dialects::anthropic::{strip_foreign_thinking, MessagesRequest, SpeedEdit};
use modelgate_fuzz::is_json;

const RENAMES: [Option<&str>; 3] = [None, Some("claude-opus-4-6"), Some("q\"uote\\back\u{2028}é")];

fuzz_target!(|data: &[u8]| {
    if let Some(stripped) = strip_foreign_thinking(data) {
        assert!(is_json(&stripped), "stripped body is not JSON");
        assert!(
            strip_foreign_thinking(&stripped).is_none(),
            "stripping twice changed more"
        );
    }
    let Ok(req) = MessagesRequest::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert!(is_json(data), "parse accepted a body that is not JSON");
    assert!(!req.model.is_empty());
    assert_eq!(req.body_with_model(None), data, "no edit must mean the same bytes");
    assert_eq!(
        req.body_with_model(Some(&req.model)),
        data,
        "a rename to the same model edited"
    );
    for rename in RENAMES {
        for speed in [SpeedEdit::Keep, SpeedEdit::Insert, SpeedEdit::Remove] {
            let body = req.upstream_body(rename, speed);
            let again = MessagesRequest::parse(body.clone())
                .unwrap_or_else(|e| panic!("{rename:?} {speed:?} made an unparseable body ({e}): {body:?}"));
            assert_eq!(again.model, rename.unwrap_or(&req.model), "{body:?}");
            assert_eq!(again.stream, req.stream);
            assert_eq!(again.max_tokens, req.max_tokens);
            match speed {
                SpeedEdit::Keep => assert_eq!(again.speed_fast, req.speed_fast),
                SpeedEdit::Remove => assert!(!again.speed_fast, "speed still fast: {body:?}"),
                SpeedEdit::Insert => {}
            }
            // Removing what was inserted (or was there) leaves no `speed`.
            let removed = again.upstream_body(None, SpeedEdit::Remove);
            assert!(!MessagesRequest::parse(removed).unwrap().speed_fast);
        }
    }
    // A body with a top-level `tags` always loses it, and only it.
    let has_tags = serde_json::from_slice::<serde_json::Value>(data)
        .is_ok_and(|v| v.as_object().is_some_and(|o| o.contains_key("tags")));
    match req.without_tags() {
        Some(untagged) => {
            assert!(has_tags, "tags removed from a body without them");
            let v: serde_json::Value = serde_json::from_slice(&untagged.body).expect("untagged body is JSON");
            assert!(!v.as_object().unwrap().contains_key("tags"), "{:?}", untagged.body);
            assert_eq!((untagged.model.as_str(), untagged.stream), (req.model.as_str(), req.stream));
        }
        None => assert!(!has_tags, "tags left in {data:?}"),
    }
    if let Some(claude) = req.for_claude() {
        assert_eq!(claude.model, req.model);
        assert!(strip_foreign_thinking(&claude.body).is_none());
    }
});
