//! The config loader: YAML parse, `${VAR}` expansion, schema check
//! (`config::load::parse_str`), then cross-field validation and compilation
//! into a snapshot (`Snapshot::build`), and routing on the result.
//!
//! The environment is a fixed function of the variable's name. `pricing`
//! (a path read from disk) is cleared before the build.
#![no_main]

use http::HeaderName;
use libfuzzer_sys::fuzz_target;
use modelgate::config::load::parse_str;
use modelgate::runtime::snapshot::Snapshot;

fn env(name: &str) -> Option<String> {
    match name.len() % 3 {
        0 => None,
        1 => Some(String::new()),
        _ => Some(format!("value-of-{name}")),
    }
}

const MODELS: [&str; 4] = ["claude-sonnet-4-5", "claude-opus-4-6-fast", "gpt-4o", ""];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = parse_str(text, &env) else {
        return;
    };
    config.pricing = None;
    let Ok(snapshot) = Snapshot::build(config, &env) else {
        return;
    };
    let header = |name: &HeaderName| name.as_str().len().is_multiple_of(2).then(|| "yes".to_string());
    for model in MODELS {
        let _ = snapshot.resolve(model, &header);
        let _ = snapshot.explain(model, &header);
        let _ = snapshot.is_literal_model(model);
    }
});
