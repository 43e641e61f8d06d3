//! Raw file → validated [`Config`]: YAML parse, `${VAR}` expansion, schema
//! check, and the cross-field validation serde cannot express.
//!
//! Every error names the offending key (and, where the YAML parser knows it,
//! the line and column), because the person reading it is editing that file.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::schema::Config;
use super::ConfigError;

/// Where `-c` points when it is not given: `./modelgate.yaml`, then
/// `./gateway.yaml` (claude-code-model-gateway's name), then
/// `conf/modelgate.yaml`.
pub fn default_config_path() -> PathBuf {
    ["modelgate.yaml", "gateway.yaml"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("conf/modelgate.yaml"))
}

/// Read, expand and schema-check a config file, then apply the `GATEWAY_*`
/// environment overrides. Cross-field validation happens
/// when the result is compiled into a snapshot (`Snapshot::build`).
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let mut config = parse_str(&text, &env)?;
    apply_env_overrides(&mut config, &env)?;
    Ok(config)
}

/// Parse config text, expanding `${VAR}` / `${VAR:-default}` in string values
/// through `env`. Split from [`load_file`] so tests need no real environment.
pub fn parse_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    expand_value(&mut value, "", env)?;
    match serde_yaml::from_value::<Config>(value) {
        Ok(c) => Ok(c),
        Err(e) => {
            // Errors from a `Value` carry the key path but not the position.
            // Re-parsing the unexpanded text usually reports the same problem
            // with its line and column; prefer that when it is the same error.
            let msg = e.to_string();
            if let Err(raw) = serde_yaml::from_str::<Config>(text) {
                let raw_msg = raw.to_string();
                if same_problem(&msg, &raw_msg) {
                    return Err(ConfigError::Schema(raw_msg));
                }
            }
            Err(ConfigError::Schema(msg))
        }
    }
}

/// The environment overrides claude-code-model-gateway's users set: they
/// win over the file (and lose to command-line flags).
pub const ENV_OVERRIDES: [(&str, &str); 3] = [
    ("GATEWAY_DEFAULT_PROVIDER", "default_provider"),
    ("GATEWAY_LOG_LEVEL", "log_level"),
    ("GATEWAY_TIMEOUT", "timeout"),
];

/// Apply [`ENV_OVERRIDES`] that are set (and not empty). Only a file
/// loaded from the process's environment takes them ([`load_file`]).
pub fn apply_env_overrides(c: &mut Config, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let get = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let bad = ConfigError::invalid;
    if let Some(p) = get("GATEWAY_DEFAULT_PROVIDER") {
        c.default_provider = Some(p);
    }
    if let Some(l) = get("GATEWAY_LOG_LEVEL") {
        c.log_level = serde_yaml::from_value(Value::String(l.to_ascii_lowercase()))
            .map_err(|_| bad("GATEWAY_LOG_LEVEL", "give error, warn, info, debug or trace"))?;
    }
    if let Some(t) = get("GATEWAY_TIMEOUT") {
        c.timeout = super::schema::Dur::parse(&t)
            .map_err(|_| bad("GATEWAY_TIMEOUT", "give seconds (`300`, `0.5`) or a duration (`5m`)"))?;
    }
    Ok(())
}

/// `b` (from the raw text) may add a key path and a position to `a`.
fn same_problem(a: &str, b: &str) -> bool {
    let core = |s: &str| s.split(" at line ").next().unwrap_or(s).to_string();
    core(b).ends_with(&core(a))
}

fn expand_value(v: &mut Value, path: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    match v {
        Value::String(s) => {
            if s.contains('$') {
                *s = expand_str(s, path, env)?;
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env)?;
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let key = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
                let child = if path.is_empty() { key } else { format!("{path}.{key}") };
                expand_value(item, &child, env)?;
            }
        }
        Value::Tagged(t) => expand_value(&mut t.value, path, env)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Expand `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Any other `$`
/// is kept as it is, so secrets containing `$` survive.
pub fn expand_str(s: &str, path: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            // The value is never quoted in these messages: it may be a secret.
            let end = body.find('}').ok_or_else(|| ConfigError::Invalid {
                key: path.to_string(),
                message: format!(
                    "unterminated `${{` at byte {} of the value (write `$${{` for a literal `${{`)",
                    s.len() - after.len() - 1
                ),
            })?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::Invalid {
                    key: path.to_string(),
                    message: format!(
                        "the `${{…}}` at byte {} of the value is not a variable reference (names are letters, digits and `_`; write `$${{` for a literal `${{`)",
                        s.len() - after.len() - 1
                    ),
                });
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(val), _) => out.push_str(&val),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(ConfigError::Invalid {
                        key: path.to_string(),
                        message: format!(
                            "environment variable `{name}` is not set; set it or write `${{{name}:-default}}`"
                        ),
                    })
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `url` with its password (if any) shown as `***`, for printing.
pub fn redact_url_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Not a URL we can read: it is not printed at all.
        Err(_) => "***".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_BASE" => Some("http://127.0.0.1:9".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        assert_eq!(
            expand_str("${HOME_BASE}/v1", "k", &env).unwrap(),
            "http://127.0.0.1:9/v1"
        );
        assert_eq!(expand_str("${NOPE:-5s}", "k", &env).unwrap(), "5s");
        assert_eq!(expand_str("${EMPTY:-x}", "k", &env).unwrap(), "x");
        assert_eq!(expand_str("a$$b$c", "k", &env).unwrap(), "a$b$c");
        let err = expand_str("${NOPE}", "providers.x.api_key", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.x.api_key") && err.contains("NOPE"), "{err}");
    }

    #[test]
    fn a_broken_reference_never_quotes_the_value() {
        for value in ["sk-ant-secret${", "sk-ant-secret${not a name}"] {
            let err = expand_str(value, "providers.x.api_key", &env).unwrap_err().to_string();
            assert!(!err.contains("sk-ant-secret"), "{err}");
            assert!(err.contains("providers.x.api_key") && err.contains("byte 13"), "{err}");
        }
    }

    #[test]
    fn printed_urls_hide_their_password() {
        assert_eq!(
            redact_url_password("redis://:hunter2@redis.internal:6379/0"),
            "redis://:***@redis.internal:6379/0"
        );
        assert_eq!(redact_url_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url_password("not a url hunter2"), "***");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "listen: 127.0.0.1:1\nproviders:\n  a:\n    type: anthropic\n    api_bsae: http://x\n";
        let err = parse_str(text, &env).unwrap_err().to_string();
        assert!(err.contains("api_bsae"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn durations_accept_humantime_and_bare_seconds() {
        let c = parse_str(
            "timeout: 120\nconnect_timeout: 300ms\nretry_delay: \"${NOPE:-2s}\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.timeout.0.as_secs(), 120);
        assert_eq!(c.connect_timeout.0.as_millis(), 300);
        assert_eq!(c.retry_delay.0.as_secs(), 2);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse_str("", &env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.max_retries, 2);
    }
}
