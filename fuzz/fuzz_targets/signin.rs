//! What sign-in reads from unauthenticated clients and signed-in ones: a
//! client's OTLP export (`signin::otlp::stamp`, every signal in both
//! encodings: a stamped export decodes again and carries the identity
//! once), a bearer token (`tokens::Signer::verify` refuses what it did not
//! sign), a typed user code (`codes::normalize_user_code`, idempotent), and
//! managed settings (`settings::checksum`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::signin::otlp::{stamp, Encoding, Signal, Stamp};
use modelgate::signin::{codes, settings, tokens};

fuzz_target!(|data: &[u8]| {
    let who = Stamp {
        user_id: "u-1".into(),
        email: Some("ada@corp.example".into()),
        groups: vec!["eng".into()],
        team: Some("platform".into()),
        source: "gateway-oidc",
    };
    for signal in [Signal::Metrics, Signal::Logs, Signal::Traces] {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            if let Ok(out) = stamp(signal, encoding, data, &who) {
                let again = stamp(signal, encoding, &out, &who).expect("a stamped export reads again");
                if encoding == Encoding::Json {
                    let v: serde_json::Value = serde_json::from_slice(&again).expect("JSON");
                    assert!(v.is_object());
                }
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let signer = tokens::Signer::new("https://gw.example", &["fuzz-secret-fuzz-secret-fuzz-secret".to_string()]);
    assert!(signer.verify(&text).is_err(), "an unsigned input verified");
    let _ = tokens::looks_like_jwt(&text);
    if let Some(code) = codes::normalize_user_code(&text) {
        assert_eq!(codes::normalize_user_code(&code).as_deref(), Some(code.as_str()));
        assert_eq!(code.len(), 9);
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(data) {
        let sum = settings::checksum(&map);
        assert!(sum.starts_with("sha256:") && sum.len() == 71, "{sum}");
    }
});
