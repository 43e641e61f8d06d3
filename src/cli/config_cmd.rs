//! `modelgate config init|show|validate|lint|doctor|env-check|schema|diff|export|set`,
//! and the top-level `validate-config`, `test-config` and `config-diff` of
//! claude-code-model-gateway.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

/// What `config init` writes: the minimal file (the keys of `conf/modelgate.yaml`;
/// README.md#configuration describes every key).
pub const MINIMAL_CONFIG: &str = "\
# modelgate configuration. Reference: README.md#configuration
listen: 127.0.0.1:8080
default_provider: anthropic
providers:
  anthropic:
    type: anthropic
    api_base: https://api.anthropic.com
    api_key_env_var: ANTHROPIC_API_KEY
";

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Write a minimal config to ./modelgate.yaml (or -c FILE).
    Init {
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Check the config and print warnings; exit 0 only when it would load.
    Validate,
    /// Print the effective config (defaults filled in, secrets redacted).
    Show,
    /// Print the effective config in another format (secrets redacted).
    Export {
        #[arg(long, value_enum, default_value = "json")]
        format: ExportFormat,
    },
    /// Validate, then point out risky or dubious settings.
    Lint,
    /// List the environment variables the config reads and whether each is set.
    EnvCheck,
    /// Compare two config files after defaults and `${VAR}` expansion.
    Diff { a: PathBuf, b: PathBuf },
    /// Print the JSON Schema of the config file (JSON Schema draft 2020-12).
    ///
    /// The schema is generated from the types the gateway parses the file
    /// with, so it says exactly what loads: every key, its type, its default,
    /// and `additionalProperties: false` wherever an unknown key is an error.
    /// Durations are strings such as `300ms`, `5s`, `15m` (or a bare number
    /// of seconds). Cross-field rules (a route naming a provider that exists,
    /// a credential's env var being set) are beyond a schema: use
    /// `modelgate config validate` for those.
    ///
    /// Editors use it for completion and inline checks (see below).
    #[command(after_long_help = "\
Examples:
  modelgate config schema > modelgate.schema.json
  modelgate config schema --output modelgate.schema.json

With the YAML language server (VS Code, Neovim, ...), make this the first line of modelgate.yaml:
  # yaml-language-server: $schema=./modelgate.schema.json")]
    Schema {
        /// Write the schema to FILE (replaced atomically) instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only this key's schema, by its dotted path (`timeout`,
        /// `cache.response.ttl`, `providers.*.type`: a map's entries or a
        /// list's items are `*`).
        #[arg(long, value_name = "NAME")]
        field: Option<String>,
    },
    /// Set a top-level key to a value in the config file, keeping its
    /// comments and layout; refused (and the file left as it was) when the
    /// result would not load.
    #[command(after_long_help = "\
Examples:
  modelgate config set timeout 120s
  modelgate config set default_provider openai
  modelgate config set max_retries 3

Nested settings are edited in the file, or with `provider update` and `route add`.")]
    Set {
        /// A top-level key, as `config schema` lists them.
        key: String,
        /// Its new value (a number, `true`/`false`, a duration or a string).
        value: String,
    },
    /// Check everything a deployment needs: the config, its environment
    /// variables, each upstream's DNS and TCP reachability, and the gateway's
    /// own health endpoint. One verdict per check; exit 1 if any fails.
    Doctor,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Json,
    Yaml,
}

pub fn run(config: Option<PathBuf>, cmd: ConfigCommand) -> i32 {
    match cmd {
        ConfigCommand::Init { force } => init(&config.unwrap_or_else(|| PathBuf::from("modelgate.yaml")), force),
        ConfigCommand::Validate => validate(&super::config_path(config)),
        ConfigCommand::Show => export(&super::config_path(config), ExportFormat::Yaml),
        ConfigCommand::Export { format } => export(&super::config_path(config), format),
        ConfigCommand::Lint => lint(&super::config_path(config)),
        ConfigCommand::EnvCheck => env_check(&super::config_path(config)),
        ConfigCommand::Diff { a, b } => diff(&a, &b),
        ConfigCommand::Doctor => doctor(&super::config_path(config)),
        ConfigCommand::Schema { output, field: None } => schema(output.as_deref()),
        ConfigCommand::Schema { field: Some(f), .. } => schema_field(&f),
        ConfigCommand::Set { key, value } => super::failure::finish(set(&super::config_path(config), &key, &value)),
    }
}

/// The config file's JSON Schema, pretty-printed, with the provider types
/// this build speaks filled in as `providers.<name>.type`'s `enum` (the
/// config types cannot know them: the provider table is a layer up).
pub fn schema_json() -> String {
    let mut schema = serde_json::to_value(schemars::schema_for!(crate::config::Config)).unwrap_or_default();
    if let Some(kind) = schema.pointer_mut("/$defs/ProviderConfig/properties/type") {
        kind["enum"] = crate::providers::names().into();
    }
    serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".into())
}

/// One key's schema, found by its dotted path through `properties`, a
/// map's `additionalProperties` or a list's `items` (`*`), following
/// `$ref`s and optional (`anyOf` with `null`) wrappers.
pub fn field_schema(name: &str) -> Result<serde_json::Value, String> {
    let root: serde_json::Value = serde_json::from_str(&schema_json()).map_err(|e| e.to_string())?;
    fn resolve<'a>(root: &'a serde_json::Value, mut v: &'a serde_json::Value) -> &'a serde_json::Value {
        for _ in 0..8 {
            if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
                match r.strip_prefix("#/").and_then(|p| root.pointer(&format!("/{p}"))) {
                    Some(t) => v = t,
                    None => break,
                }
            } else if let Some(one) = v.get("anyOf").and_then(|a| a.as_array()).and_then(|a| {
                let mut real = a
                    .iter()
                    .filter(|x| x.get("type").and_then(|t| t.as_str()) != Some("null"));
                match (real.next(), real.next()) {
                    (Some(x), None) => Some(x),
                    _ => None,
                }
            }) {
                v = one;
            } else {
                break;
            }
        }
        v
    }
    let mut at = &root;
    let mut walked = Vec::new();
    for seg in name.split('.').filter(|s| !s.is_empty()) {
        let here = resolve(&root, at);
        let next = here
            .get("properties")
            .and_then(|p| p.get(seg))
            .or_else(|| (seg == "*").then(|| here.get("items")).flatten())
            .or_else(|| here.get("additionalProperties").filter(|a| a.is_object()));
        match next {
            Some(n) => at = n,
            None => {
                let known: Vec<&str> = here
                    .get("properties")
                    .and_then(|p| p.as_object())
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let under = if walked.is_empty() {
                    "the config".to_string()
                } else {
                    format!("`{}`", walked.join("."))
                };
                return Err(if known.is_empty() {
                    format!("{under} has no key `{seg}`")
                } else {
                    format!("{under} has no key `{seg}`; it has: {}", known.join(", "))
                });
            }
        }
        walked.push(seg);
    }
    let mut out = resolve(&root, at).clone();
    // The description lives on the property, the shape on its type.
    if let (Some(d), Some(o)) = (at.get("description"), out.as_object_mut()) {
        o.insert("description".into(), d.clone());
    }
    if let (Some(d), Some(o)) = (at.get("default"), out.as_object_mut()) {
        o.insert("default".into(), d.clone());
    }
    Ok(out)
}

fn schema_field(name: &str) -> i32 {
    match field_schema(name) {
        Ok(v) => {
            out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("modelgate: {e}");
            1
        }
    }
}

/// `config set KEY VALUE`: one top-level scalar, validated like every edit.
fn set(path: &Path, key: &str, value: &str) -> Result<(), super::failure::Failure> {
    use super::failure::Failure;
    use crate::config::edit;
    if key.contains('.') {
        return Err(Failure::user(format!(
            "`{key}`: config set takes a top-level key; edit nested settings in the file \
             (or with `provider update`, `route add`)"
        )));
    }
    let field = field_schema(key).map_err(Failure::user)?;
    let kind = field.get("type");
    let scalar = |t: &str| kind.is_some_and(|k| k == t || k.as_array().is_some_and(|a| a.iter().any(|x| x == t)));
    if field.get("properties").is_some() || scalar("object") || scalar("array") {
        return Err(Failure::user(format!(
            "`{key}` is a section, not a single value: edit it in the file"
        )));
    }
    // Numbers and booleans go in plain when the key takes them; anything
    // else as a string that reads back as itself.
    let plain = (scalar("integer") && value.parse::<i64>().is_ok())
        || (scalar("number") && value.parse::<f64>().is_ok())
        || (scalar("boolean") && matches!(value, "true" | "false"));
    let rendered = if plain {
        value.to_string()
    } else {
        edit::yaml_scalar(value)
    };
    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        edit::set_top_level_scalar(text, key, &rendered)
    })
    .map_err(|e| Failure::edit(path, e))?;
    if edited.before == edited.after {
        eprintln!("`{key}` is already {value} in {}; nothing changed.", path.display());
        return Ok(());
    }
    eprintln!(
        "Set `{key}` to {rendered} in {}. A running gateway applies it on its next reload (SIGHUP, or by itself when it watches the file).",
        path.display()
    );
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn schema(output: Option<&Path>) -> i32 {
    let text = schema_json();
    match output {
        None => {
            out!("{text}");
            0
        }
        Some(path) => match crate::config::edit::write_atomic(path, format!("{text}\n").as_bytes()) {
            Ok(()) => {
                eprintln!("wrote the config schema to {}", path.display());
                0
            }
            Err(e) => {
                eprintln!("modelgate: cannot write the schema: {e}");
                2
            }
        },
    }
}

fn init(path: &Path, force: bool) -> i32 {
    if path.exists() && !force {
        eprintln!(
            "modelgate: {} already exists; pass --force to overwrite",
            path.display()
        );
        return 1;
    }
    match write_atomic(path, MINIMAL_CONFIG.as_bytes()) {
        Ok(()) => {
            out!("wrote {}", path.display());
            0
        }
        Err(e) => {
            eprintln!("modelgate: cannot write {}: {e}", path.display());
            1
        }
    }
}

/// Write via a temporary file in the same directory and rename it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(bytes)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    for attempt in 0..16u32 {
        let p = dir.join(format!(".modelgate.{}.{attempt}.tmp", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("could not create a temporary file"))
}

pub(super) fn validate(path: &Path) -> i32 {
    match super::load_snapshot(path, |_| {}) {
        Ok(s) => {
            for w in &s.warnings {
                out!("warning: {w}");
            }
            out!("{}: ok (version {})", path.display(), s.version);
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            1
        }
    }
}

/// The config as loaded, literal secrets replaced by `***`.
fn redacted(path: &Path) -> Result<crate::config::Config, i32> {
    let mut config = crate::config::load::load_file(path).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        1
    })?;
    for p in config.providers.values_mut() {
        if p.api_key.is_some() {
            p.api_key = Some("***".into());
        }
        for k in &mut p.keys {
            if k.api_key.is_some() {
                k.api_key = Some("***".into());
            }
        }
        for v in p.headers.values_mut() {
            *v = "***".into();
        }
        if let Some(entra) = p.entra.as_mut() {
            entra.client_secret = "***".into();
        }
    }
    for url in [config.state.redis_url.as_mut(), config.store.url.as_mut()]
        .into_iter()
        .flatten()
    {
        *url = crate::config::load::redact_url_password(url);
    }
    for url in config.state.redis_cluster.iter_mut().flatten() {
        *url = crate::config::load::redact_url_password(url);
    }
    if let Some(s) = config.signin.as_mut() {
        if s.oidc.client_secret.is_some() {
            s.oidc.client_secret = Some("***".into());
        }
        s.session.secret = crate::config::schema::OneOrMany::One("***".into());
    }
    if let Some(otlp) = config.telemetry.otlp.as_mut() {
        for v in otlp.headers.values_mut() {
            *v = "***".into();
        }
    }
    Ok(config)
}

fn export(path: &Path, format: ExportFormat) -> i32 {
    let config = match redacted(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let text = match format {
        ExportFormat::Json => serde_json::to_string_pretty(&config).map_err(|e| e.to_string()),
        ExportFormat::Yaml => serde_yaml::to_string(&config).map_err(|e| e.to_string()),
    };
    match text {
        Ok(t) => {
            out!("{}", t.trim_end());
            0
        }
        Err(e) => {
            eprintln!("modelgate: {e}");
            1
        }
    }
}

/// Findings beyond validity. Exit 1 when the config does not load, 0 otherwise.
fn lint(path: &Path) -> i32 {
    let snap = match super::load_snapshot(path, |_| {}) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 1;
        }
    };
    let c = &snap.config;
    let mut findings: Vec<String> = snap.warnings.clone();
    for (name, p) in &c.providers {
        if p.api_key.is_some() {
            findings.push(format!(
                "providers.{name}.api_key: a literal credential in the file; prefer api_key_env_var"
            ));
        }
        if p.keys.iter().any(|k| k.api_key.is_some()) {
            findings.push(format!(
                "providers.{name}.keys: literal credentials in the file; prefer `env:`"
            ));
        }
        if p.api_base
            .as_deref()
            .is_some_and(|b| b.starts_with("http://") && !b.contains("127.0.0.1") && !b.contains("localhost"))
        {
            findings.push(format!(
                "providers.{name}.api_base: plain http to a non-local host sends credentials in clear text"
            ));
        }
    }
    if c.keys.is_some() && c.admin_keys_sha256.is_empty() && c.admin_listen.is_none() {
        findings.push("keys are set but there is neither admin_listen nor admin_keys_sha256: /status and /metrics are unreachable".into());
    }
    if snap.listen.ip().is_unspecified() && c.keys.is_none() {
        findings.push("listen is on all interfaces in passthrough-auth mode (no keys): anyone who can reach it uses your provider keys".into());
    }
    if c.grace_period.0 < c.timeout.0 {
        findings.push("grace_period is shorter than timeout: a long stream can be cut during an upgrade".into());
    }
    findings.extend(literal_signin_secrets(path));
    if findings.is_empty() {
        out!("{}: no findings", path.display());
    }
    for f in findings {
        out!("lint: {f}");
    }
    0
}

/// Sign-in's secrets written into the file as they are rather than read
/// from the environment (`${VAR}`): the raw file, before expansion.
fn literal_signin_secrets(path: &Path) -> Vec<String> {
    let Ok(raw) = std::fs::read_to_string(path)
        .map_err(|_| ())
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).map_err(|_| ()))
    else {
        return Vec::new();
    };
    let literal = |v: &serde_yaml::Value| v.as_str().is_some_and(|s| !s.contains("${"));
    let mut out = Vec::new();
    let signin = &raw["signin"];
    let secret = &signin["session"]["secret"];
    let secrets: Vec<&serde_yaml::Value> = match secret.as_sequence() {
        Some(list) => list.iter().collect(),
        None => vec![secret],
    };
    if secrets.into_iter().any(literal) {
        out.push(
            "signin.session.secret: a literal secret in the file (anyone who reads it can sign tokens); use ${VAR}"
                .into(),
        );
    }
    if literal(&signin["oidc"]["client_secret"]) {
        out.push("signin.oidc.client_secret: a literal secret in the file; use ${VAR}".into());
    }
    if let Some(providers) = raw["providers"].as_mapping() {
        for (name, p) in providers {
            if literal(&p["entra"]["client_secret"]) {
                out.push(format!(
                    "providers.{}.entra.client_secret: a literal secret in the file; use ${{VAR}}",
                    name.as_str().unwrap_or("?")
                ));
            }
        }
    }
    if let Some(headers) = raw["telemetry"]["otlp"]["headers"].as_mapping() {
        if headers.values().any(literal) {
            out.push("telemetry.otlp.headers: literal values in the file (a collector token?); use ${VAR}".into());
        }
    }
    out
}

/// Every environment variable the file reads, and whether it is set.
/// Values are never printed.
fn env_check(path: &Path) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 1;
        }
    };
    let mut vars: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        // Comments mention `${VAR}` as documentation; only values count.
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("${") {
            let tail = &rest[i + 2..];
            if let Some(end) = tail.find('}') {
                let expr = &tail[..end];
                let (name, role) = match expr.split_once(":-") {
                    Some((n, _)) => (n, "has a default"),
                    None => (expr, "required"),
                };
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    vars.push((name.to_string(), role.to_string()));
                }
            }
            rest = tail;
        }
    }
    if let Ok(c) = crate::config::load::load_file(path) {
        for p in c.providers.values() {
            if let Some(v) = &p.api_key_env_var {
                vars.push((v.clone(), "provider credential".into()));
            }
            for k in &p.keys {
                if let Some(v) = &k.env {
                    vars.push((v.clone(), "provider account credential".into()));
                }
            }
        }
        for k in c.keys.iter().flatten() {
            if let Some(v) = &k.key_env {
                vars.push((v.clone(), "gateway key (required)".into()));
            }
        }
    }
    for (name, key) in crate::config::load::ENV_OVERRIDES {
        vars.push((name.to_string(), format!("optional, overrides {key}")));
    }
    vars.sort();
    vars.dedup();
    let mut missing_required = 0;
    for (name, role) in &vars {
        let set = std::env::var(name).is_ok_and(|v| !v.is_empty());
        if !set && role.contains("required") {
            missing_required += 1;
        }
        out!("{:<8} {name} ({role})", if set { "set" } else { "MISSING" });
    }
    if vars.is_empty() {
        out!("the config reads no environment variables");
    }
    i32::from(missing_required > 0)
}

pub(super) fn doctor(path: &Path) -> i32 {
    let mut failed = 0;
    let mut verdict = |ok: bool, what: &str, detail: &str| {
        if !ok {
            failed += 1;
        }
        out!(
            "{:<5} {what}{}",
            if ok { "ok" } else { "FAIL" },
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
    };
    let snap = match super::load_snapshot(path, |_| {}) {
        Ok(s) => {
            verdict(
                true,
                &format!("config {}", path.display()),
                &format!("version {}", s.version),
            );
            s
        }
        Err(e) => {
            verdict(false, &format!("config {}", path.display()), &e.to_string());
            return 1;
        }
    };
    for w in &snap.warnings {
        out!("warn  {w}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modelgate: {e}");
            return 1;
        }
    };
    let connect_timeout = snap.connect_timeout;
    for p in snap.providers.values().filter(|p| p.enabled) {
        let (host, port) = (p.base.host.clone(), p.base.port);
        let result = runtime.block_on(async move {
            let addrs: Vec<_> = tokio::time::timeout(connect_timeout, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| "DNS lookup timed out".to_string())?
                .map_err(|e| format!("DNS lookup failed: {e}"))?
                .collect();
            let addr = *addrs.first().ok_or("DNS returned no address")?;
            tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("TCP connect to {addr} timed out"))?
                .map_err(|e| format!("TCP connect to {addr} failed: {e}"))?;
            Ok::<_, String>(addr)
        });
        let what = format!("provider `{}` ({}:{})", p.name, p.base.host, p.base.port);
        match result {
            Ok(addr) => verdict(true, &what, &format!("reachable at {addr}")),
            Err(e) => verdict(false, &what, &e),
        }
        for a in &p.accounts {
            if p.lacks_credential(a) {
                verdict(
                    false,
                    &format!("account `{}`", a.label),
                    "no credential configured or its env var is unset",
                );
            }
        }
    }
    let health = snap.admin_listen.unwrap_or(snap.listen);
    let running = runtime.block_on(async move {
        let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(health)).await;
        matches!(stream, Ok(Ok(_)))
    });
    verdict(
        running,
        &format!("gateway at {health}"),
        if running {
            "accepting connections"
        } else {
            "not running (or not reachable)"
        },
    );
    i32::from(failed > 0)
}

pub(super) fn diff(a: &Path, b: &Path) -> i32 {
    let (Ok(ca), Ok(cb)) = (redacted(a), redacted(b)) else {
        return 1;
    };
    let flat = |c: &crate::config::Config| {
        let mut out = std::collections::BTreeMap::new();
        flatten("", &serde_json::to_value(c).unwrap_or_default(), &mut out);
        out
    };
    let (fa, fb) = (flat(&ca), flat(&cb));
    let mut changes = 0;
    for key in fa.keys().chain(fb.keys()).collect::<std::collections::BTreeSet<_>>() {
        match (fa.get(key), fb.get(key)) {
            (Some(x), Some(y)) if x == y => continue,
            (Some(x), Some(y)) => out!("~ {key}: {x} -> {y}"),
            (Some(x), None) => out!("- {key}: {x}"),
            (None, Some(y)) => out!("+ {key}: {y}"),
            (None, None) => continue,
        }
        changes += 1;
    }
    if changes == 0 {
        out!("no differences");
    }
    0
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), child, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}
