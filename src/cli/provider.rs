//! `modelgate provider list|show|add|remove|set-default|enable|disable|update`.
//!
//! `list` and `show` print the providers as the gateway compiles them
//! (defaults applied, accounts resolved), never a secret. The other commands
//! edit the config file's `providers:` section (and `default_provider`)
//! through `config::edit`: comments and order survive, the result is
//! validated as `serve` would load it, and the file is replaced atomically.
//! They never write a literal credential, only the names of environment
//! variables that hold one.
//!
//! Exit codes: 0 done; 1 the request was refused (unknown or duplicate name,
//! a provider still in use, a change that would not load); 2 the config file
//! could not be read, parsed or written.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::config::edit::{self, EditError};
use crate::config::schema::RouteConfig;
use crate::config::Config;

pub(super) use super::failure::{finish, Failure, CONFIG_ERROR, USER_ERROR};

const RELOAD_NOTE: &str =
    "A running gateway applies it on its next config reload (automatic when the file changes, or send SIGHUP).";

#[derive(Subcommand, Debug)]
pub enum ProviderCommand {
    /// The configured providers, one line each: name, type, api_base, state,
    /// priority and number of accounts.
    List {
        /// List the provider types this build supports, with their default
        /// api_base, instead.
        #[arg(long)]
        builtins: bool,
    },

    /// One provider in detail: its resolved api_base, accounts (never a
    /// secret), models, and the routes that use it.
    Show {
        /// The provider's name, as `provider list` shows it.
        name: String,
    },

    /// Add a provider to the config file.
    ///
    /// TYPE is one of the built-in provider types, such as anthropic, openai,
    /// azure, openrouter or ollama (`modelgate provider list --builtins` lists
    /// those of this build with their default api_base). The entry
    /// is appended to `providers:` (created if absent) as `NAME:` with the
    /// settings given; the rest of the file, comments included, stays as it
    /// was. The result is validated as `serve` would load it before anything
    /// is written.
    ///
    /// The credential is never written to the file: the entry names the
    /// environment variable that holds it (`api_key_env_var`, or one
    /// `keys: [{env: VAR}]` account per --key-env when several are given).
    /// Without --key-env the type's usual variable is used: ANTHROPIC_API_KEY,
    /// OPENAI_API_KEY, AZURE_OPENAI_API_KEY, OPENROUTER_API_KEY or
    /// GEMINI_API_KEY. Ollama needs none, and bedrock none in the file: it
    /// reads AWS_BEARER_TOKEN_BEDROCK, else signs with AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY (give --key-env only for a Bedrock API key kept
    /// in another variable). Vertex reads the service-account file named by
    /// GOOGLE_APPLICATION_CREDENTIALS (--key-env names another variable
    /// holding such a path, one per account). An anthropic provider without a credential (--no-key)
    /// forwards each client's own credential instead (passthrough-auth, what
    /// a claude.ai login behind the gateway needs).
    ///
    /// A new provider receives requests once a route sends them there
    /// (`modelgate route add`), once it is the default provider
    /// (`modelgate provider set-default`), or for the model ids listed with
    /// --model.
    #[command(after_long_help = "\
Examples:
  modelgate provider add openai
  modelgate provider add openrouter --key-env OPENROUTER_API_KEY --model anthropic/claude-sonnet-4.5
  modelgate provider add openai --name openai-team --key-env OPENAI_KEY_1 --key-env OPENAI_KEY_2
  modelgate provider add azure --api-base https://myres.openai.azure.com --model gpt-4o
  modelgate provider add ollama --name local --model llama3.1:8b --priority 10
  modelgate provider add anthropic --name claude-direct --no-key
  modelgate provider add bedrock --region us-east-1 --model anthropic.claude-sonnet-4-5-20250929-v1:0
  modelgate provider add foundry --resource my-foundry-resource --key-env FOUNDRY_API_KEY
  modelgate provider add claude_aws --region us-east-1 --workspace-id wrkspc_01AbCd
  modelgate provider add gemini --model gemini-2.5-pro
  modelgate provider add vertex --project my-project --location us-east5 --model claude-sonnet-4-5@20250929")]
    Add(AddArgs),

    /// Remove a provider from the config file.
    ///
    /// Refused while anything still names it: a route (as its provider or a
    /// fallback) or `default_provider`. The refusal lists each reference;
    /// remove or re-point those first (`modelgate route remove GLOB`,
    /// `modelgate provider set-default OTHER`), or keep the entry and
    /// `modelgate provider disable NAME` instead. Comments above the entry
    /// are kept; those indented inside it go with it.
    #[command(after_long_help = "Example:\n  modelgate provider remove openrouter")]
    Remove {
        /// The provider's name, as `provider list` shows it.
        name: String,
    },

    /// Make NAME the default provider: the one requests go to when no route
    /// matches (top-level `default_provider`).
    #[command(after_long_help = "Example:\n  modelgate provider set-default anthropic")]
    SetDefault {
        /// The provider's name, as `provider list` shows it.
        name: String,
    },

    /// Enable a provider (`enabled: true`): routes send requests to it again.
    #[command(after_long_help = "Example:\n  modelgate provider enable openai")]
    Enable {
        /// The provider's name, as `provider list` shows it.
        name: String,
    },

    /// Disable a provider (`enabled: false`) without removing it.
    ///
    /// Every route skips a disabled provider and tries its next candidate
    /// (its fallbacks, then the providers that list the model); a request
    /// left with no enabled candidate gets 529 `overloaded_error`. Undo with
    /// `modelgate provider enable NAME`.
    #[command(after_long_help = "Example:\n  modelgate provider disable openrouter")]
    Disable {
        /// The provider's name, as `provider list` shows it.
        name: String,
    },

    /// Change a provider's priority, api_base or model list in place.
    ///
    /// Only the fields given change; each keeps its place and its comment in
    /// the file. --model replaces the whole `models` list.
    #[command(after_long_help = "\
Examples:
  modelgate provider update backup --priority 5
  modelgate provider update local --api-base http://10.0.0.7:11434/v1 --model llama3.1:8b --model qwen3:32b")]
    Update(UpdateArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The provider type, e.g. anthropic, openai, azure, openrouter, ollama
    /// (see `provider list --builtins`).
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The entry's name, unique among the providers: letters, digits and
    /// `. _ -`. Default: TYPE.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Base URL of the API. Default: the type's own (see `provider list
    /// --builtins`); azure has none, so give your resource's URL.
    #[arg(long, value_name = "URL")]
    api_base: Option<String>,
    /// Name of the environment variable holding the credential (not the
    /// credential itself). Repeat it for several accounts, balanced evenly.
    #[arg(long = "key-env", value_name = "VAR", conflicts_with = "no_key")]
    key_env: Vec<String>,
    /// Write no credential: anthropic forwards each client's own, ollama
    /// needs none.
    #[arg(long)]
    no_key: bool,
    /// A model id this provider serves (repeatable); such ids are routed here
    /// too, after any matching route's own candidates.
    #[arg(long = "model", value_name = "ID")]
    models: Vec<String>,
    /// Order among providers serving the same model id: lower first (default 0).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    priority: Option<i32>,
    /// The cloud region (bedrock, bedrock_messages: e.g. us-east-1, default
    /// AWS_REGION; claude_aws: the region of Claude Platform on AWS).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Which Bedrock host serves the Messages API (bedrock_messages).
    #[arg(long, value_name = "HOST", value_parser = ["runtime", "mantle"])]
    endpoint: Option<String>,
    /// The Microsoft Foundry resource (foundry).
    #[arg(long, value_name = "NAME")]
    resource: Option<String>,
    /// The workspace (claude_aws: wrkspc_…, sent as anthropic-workspace-id;
    /// claude_gcp: the Claude workspace on Google Cloud).
    #[arg(long, value_name = "ID")]
    workspace_id: Option<String>,
    /// The Google Cloud project (vertex, claude_gcp; default GOOGLE_CLOUD_PROJECT).
    #[arg(long, value_name = "PROJECT")]
    project: Option<String>,
    /// The Google Cloud location (vertex: e.g. us-east5, or global; default
    /// GOOGLE_CLOUD_LOCATION, else global; claude_gcp: default global).
    #[arg(long, value_name = "LOCATION")]
    location: Option<String>,
    /// Add it disabled (`enabled: false`); `provider enable` turns it on.
    #[arg(long)]
    disabled: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["priority", "api_base", "models"])))]
pub struct UpdateArgs {
    /// The provider's name, as `provider list` shows it.
    name: String,
    /// The new priority: lower first among providers serving a model.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    priority: Option<i32>,
    /// The new base URL.
    #[arg(long, value_name = "URL")]
    api_base: Option<String>,
    /// The model ids it serves (repeatable); replaces the whole list.
    #[arg(long = "model", value_name = "ID")]
    models: Vec<String>,
}

/// Parse a config text without requiring its environment variables: an
/// unset `${VAR}` stays as written. For the checks an edit makes before it
/// changes anything (names, references); validation proper comes after.
pub(super) fn parse_lenient(text: &str) -> Result<Config, EditError> {
    let lenient = |name: &str| {
        Some(
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("${{{name}}}")),
        )
    };
    crate::config::load::parse_str(text, &lenient).map_err(|e| EditError::AlreadyInvalid(e.to_string()))
}

/// `a, b, c`, or `none`.
pub(super) fn names_or_none(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let list: Vec<String> = names.into_iter().map(|n| n.as_ref().to_string()).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// A scalar for a one-line flow list: quoted whenever a flow indicator or a
/// colon could change how it reads (`llama3.1:8b`, `a,b`).
pub(super) fn flow_scalar(s: &str) -> String {
    if s.contains([',', '[', ']', '{', '}', ':']) {
        edit::yaml_quote(s)
    } else {
        edit::yaml_scalar(s)
    }
}

/// How a route is named in messages: `routes[2] (match `x`)`.
pub(super) fn describe_route(i: usize, r: &RouteConfig) -> String {
    match (&r.model_glob, &r.header) {
        (Some(g), None) => format!("routes[{i}] (match `{g}`)"),
        (None, Some(h)) => format!("routes[{i}] (header {}: {})", h.name, h.value),
        (Some(g), Some(h)) => format!("routes[{i}] (match `{g}`, header {}: {})", h.name, h.value),
        (None, None) => format!("routes[{i}] (matches everything)"),
    }
}

/// Everything in the config that names provider `name`.
fn references(c: &Config, name: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for (i, r) in c.routes.iter().enumerate() {
        if r.provider == name {
            refs.push(format!("{} sends requests to it", describe_route(i, r)));
        }
        for (j, f) in r.fallbacks.iter().enumerate() {
            if f.provider() == name {
                refs.push(format!("{} has it as fallbacks[{j}]", describe_route(i, r)));
            }
        }
    }
    if c.default_provider.as_deref() == Some(name) {
        refs.push("default_provider names it".into());
    }
    refs
}

fn not_a_provider(path: &Path, name: &str, c: &Config) -> Failure {
    Failure::user(format!(
        "no provider `{name}` in {}; its providers: {} (see `modelgate provider list`)",
        path.display(),
        names_or_none(c.providers.keys())
    ))
}

pub fn run(config: Option<PathBuf>, cmd: ProviderCommand) -> i32 {
    if let ProviderCommand::List { builtins: true } = cmd {
        // The column the first ten types were listed in (scripts grep it);
        // a longer name runs past it.
        for kind in crate::providers::TYPES {
            let base = match (kind.default_base, kind.base_from) {
                (Some(b), _) => b,
                (None, Some(from)) => from.listed,
                (None, None) => "(none: give api_base)",
            };
            out!("{:<11} default api_base: {base}", kind.name);
        }
        return 0;
    }
    let path = super::config_path(config);
    match cmd {
        ProviderCommand::List { .. } => list(&path),
        ProviderCommand::Show { name } => show(&path, &name),
        ProviderCommand::Add(args) => finish(add(&path, args)),
        ProviderCommand::Remove { name } => finish(remove(&path, &name)),
        ProviderCommand::SetDefault { name } => finish(set_default(&path, &name)),
        ProviderCommand::Enable { name } => finish(set_enabled(&path, &name, true)),
        ProviderCommand::Disable { name } => finish(set_enabled(&path, &name, false)),
        ProviderCommand::Update(args) => finish(update(&path, args)),
    }
}

fn load(path: &Path) -> Result<crate::runtime::Snapshot, i32> {
    super::load_snapshot(path, |_| {}).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        CONFIG_ERROR
    })
}

// ---------------------------------------------------------------------------
// list, show

fn list(path: &Path) -> i32 {
    let snap = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let default = snap.config.default_provider.as_deref();
    for p in snap.providers.values() {
        let base = format!(
            "{}://{}{}",
            if p.base.tls { "https" } else { "http" },
            p.base.authority,
            p.base.path_prefix
        );
        out!(
            "{:<20} {:<10} {:<40} {}{} priority {} accounts {}",
            p.name,
            p.kind.name,
            base,
            if p.enabled { "enabled" } else { "disabled" },
            if default == Some(p.name.as_str()) {
                ", default"
            } else {
                ""
            },
            p.priority,
            p.accounts.len()
        );
    }
    if snap.providers.is_empty() {
        eprintln!(
            "No providers in {}. Add one with `modelgate provider add TYPE`.",
            path.display()
        );
    }
    0
}

fn show(path: &Path, name: &str) -> i32 {
    let snap = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let default = snap.config.default_provider.as_deref();
    let Some(p) = snap.providers.get(name) else {
        eprintln!(
            "no provider `{name}` in {} (configured: {})",
            path.display(),
            snap.providers.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return USER_ERROR;
    };
    out!("name:      {}", p.name);
    out!("type:      {}", p.kind.name);
    out!(
        "api_base:  {}://{}{}",
        if p.base.tls { "https" } else { "http" },
        p.base.authority,
        p.base.path_prefix
    );
    out!(
        "enabled:   {}{}",
        p.enabled,
        if default == Some(p.name.as_str()) {
            " (default_provider)"
        } else {
            ""
        }
    );
    out!("priority:  {}", p.priority);
    if !p.models.is_empty() {
        out!("models:    {}", p.models.join(", "));
    }
    for (setting, value) in p.adapter.details() {
        out!("{:<10} {value}", format!("{setting}:"));
    }
    for (n, _) in &p.headers {
        out!("header:    {n}: ***");
    }
    for a in &p.accounts {
        let credential = match p.credential_state(a) {
            "configured" => "credential configured",
            "client passthrough" => "no credential: clients' own are forwarded",
            _ => "no credential",
        };
        out!("account:   {} (weight {}) — {credential}", a.label, a.weight);
    }
    let routes: Vec<String> = snap
        .config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.provider == name || r.fallbacks.iter().any(|f| f.provider() == name))
        .map(|(i, _)| format!("routes[{i}]"))
        .collect();
    out!(
        "used by:   {}",
        if routes.is_empty() {
            "no route".to_string()
        } else {
            routes.join(", ")
        }
    );
    0
}

// ---------------------------------------------------------------------------
// add

fn check_name(name: &str) -> Result<(), Failure> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(Failure::user(format!(
            "invalid provider name `{name}`: use 1 to 64 letters, digits and `. _ -` (e.g. openai or openai-team)"
        )));
    }
    Ok(())
}

fn check_env_name(var: &str) -> Result<(), Failure> {
    let mut chars = var.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(Failure::user(format!(
            "--key-env `{var}` is not an environment variable name: give the NAME of the variable that holds the key \
             (letters, digits and `_`, e.g. OPENAI_API_KEY), never the key itself"
        )));
    }
    Ok(())
}

fn check_url(flag: &str, url: &str) -> Result<(), Failure> {
    if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("${")) {
        return Err(Failure::user(format!(
            "{flag} `{url}`: give a full http:// or https:// URL (or a `${{VAR}}` holding one), e.g. https://api.openai.com/v1"
        )));
    }
    Ok(())
}

fn check_models(models: &[String]) -> Result<(), Failure> {
    if models.iter().any(|m| m.trim().is_empty() || m.trim() != m) {
        return Err(Failure::user(
            "--model must be a model id without surrounding spaces, e.g. gpt-4o",
        ));
    }
    Ok(())
}

/// The environment variable a type's credential usually lives in.
fn default_key_env(kind: &str) -> Option<&'static str> {
    crate::providers::by_name(kind).and_then(|t| t.key_env)
}

fn models_value(models: &[String]) -> String {
    let items: Vec<String> = models.iter().map(|m| flow_scalar(m)).collect();
    format!("[{}]", items.join(", "))
}

/// The entry's body as YAML mapping lines, in the order `conf/example-full.yaml` uses.
fn render_provider(args: &AddArgs, key_envs: &[String]) -> String {
    let mut lines = vec![format!("type: {}", edit::yaml_scalar(&args.kind))];
    if let Some(base) = &args.api_base {
        lines.push(format!("api_base: {}", edit::yaml_scalar(base)));
    }
    for (key, value) in [
        ("region", &args.region),
        ("endpoint", &args.endpoint),
        ("resource", &args.resource),
        ("workspace_id", &args.workspace_id),
        ("project", &args.project),
        ("location", &args.location),
    ] {
        if let Some(v) = value {
            lines.push(format!("{key}: {}", edit::yaml_scalar(v)));
        }
    }
    match key_envs {
        [] => {}
        [one] => lines.push(format!("api_key_env_var: {one}")),
        many => {
            let accounts: Vec<String> = many.iter().map(|v| format!("{{env: {v}}}")).collect();
            lines.push(format!("keys: [{}]", accounts.join(", ")));
        }
    }
    if !args.models.is_empty() {
        lines.push(format!("models: {}", models_value(&args.models)));
    }
    if let Some(p) = args.priority {
        lines.push(format!("priority: {p}"));
    }
    if args.disabled {
        lines.push("enabled: false".into());
    }
    lines.join("\n")
}

fn add(path: &Path, args: AddArgs) -> Result<(), Failure> {
    let name = args.name.clone().unwrap_or_else(|| args.kind.clone());
    check_name(&name)?;
    for v in &args.key_env {
        check_env_name(v)?;
    }
    if let Some(url) = &args.api_base {
        check_url("--api-base", url)?;
    }
    check_models(&args.models)?;
    let key_envs: Vec<String> = if args.no_key {
        Vec::new()
    } else if args.key_env.is_empty() {
        default_key_env(&args.kind).map(String::from).into_iter().collect()
    } else {
        args.key_env.clone()
    };
    let body = render_provider(&args, &key_envs);

    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        let c = parse_lenient(text)?;
        if c.providers.contains_key(&name) {
            return Err(EditError::Refused(format!(
                "{}: a provider named `{name}` already exists; pick another name with --name, \
                 or change it with `modelgate provider update {name}`",
                path.display()
            )));
        }
        edit::append_map_entry(text, "providers", &name, &body)
    })
    .map_err(|e| Failure::edit(path, e))?;

    let kind = crate::providers::by_name(&args.kind);
    let base = match (
        &args.api_base,
        kind.and_then(|k| k.default_base),
        kind.and_then(|k| k.base_from),
    ) {
        (Some(b), _, _) => b.clone(),
        (None, Some(b), _) => format!("{b} (the type's default)"),
        (None, None, Some(from)) => from.added.into(),
        (None, None, None) => "none".into(),
    };
    let credential = match key_envs.as_slice() {
        [] => kind.map_or("none", |k| k.without_key_note).to_string(),
        [one] => format!("from ${one}"),
        many => format!(
            "{} accounts, from {}",
            many.len(),
            many.iter().map(|v| format!("${v}")).collect::<Vec<_>>().join(", ")
        ),
    };
    eprintln!(
        "Added provider `{name}` to {}: type {}, api_base {base}, credential {credential}{}.",
        path.display(),
        args.kind,
        if args.disabled { ", disabled" } else { "" }
    );
    let c = parse_lenient(&edited.after).ok();
    let is_default = c.as_ref().and_then(|c| c.default_provider.as_deref()) == Some(name.as_str());
    if !is_default {
        eprintln!(
            "Send requests to it with `modelgate route add 'GLOB' --provider {name}`, or make it the default with `modelgate provider set-default {name}`."
        );
    }
    eprintln!("{RELOAD_NOTE}");
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// remove, set-default, enable, disable, update

fn remove(path: &Path, name: &str) -> Result<(), Failure> {
    let mut missing = None;
    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        let c = parse_lenient(text)?;
        if !c.providers.contains_key(name) {
            missing = Some(not_a_provider(path, name, &c));
            return Err(EditError::Refused(String::new()));
        }
        let refs = references(&c, name);
        if !refs.is_empty() {
            return Err(EditError::Refused(format!(
                "provider `{name}` is still in use, so {} was left unchanged:\n{}\n\
                 Remove or re-point those first (`modelgate route remove GLOB`, `modelgate provider set-default OTHER`), \
                 then run this again; or keep it and `modelgate provider disable {name}`.",
                path.display(),
                refs.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n")
            )));
        }
        edit::remove_map_entry(text, "providers", name)
    })
    .map_err(|e| missing.take().unwrap_or_else(|| Failure::edit(path, e)))?;
    eprintln!("Removed provider `{name}` from {}. {RELOAD_NOTE}", path.display());
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn set_default(path: &Path, name: &str) -> Result<(), Failure> {
    let mut missing = None;
    let mut unchanged = false;
    let mut disabled = false;
    let result = edit::edit_file(path, &crate::runtime::check, |text| {
        let c = parse_lenient(text)?;
        let Some(p) = c.providers.get(name) else {
            missing = Some(not_a_provider(path, name, &c));
            return Err(EditError::Refused(String::new()));
        };
        disabled = !p.enabled;
        if c.default_provider.as_deref() == Some(name) {
            unchanged = true;
            return Err(EditError::Refused(String::new()));
        }
        edit::set_top_level_scalar_after(
            text,
            "default_provider",
            &edit::yaml_scalar(name),
            &["listen", "admin_listen"],
        )
    });
    if unchanged {
        eprintln!(
            "`{name}` is already the default provider in {}; nothing changed.",
            path.display()
        );
        return Ok(());
    }
    let edited = result.map_err(|e| missing.take().unwrap_or_else(|| Failure::edit(path, e)))?;
    eprintln!(
        "The default provider is now `{name}` in {}: requests no route matches go there. {RELOAD_NOTE}",
        path.display()
    );
    if disabled {
        eprintln!("Note: `{name}` is disabled, so those requests get 529 until `modelgate provider enable {name}`.");
    }
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn set_enabled(path: &Path, name: &str, enabled: bool) -> Result<(), Failure> {
    let mut missing = None;
    let mut unchanged = false;
    let mut refs = Vec::new();
    let result = edit::edit_file(path, &crate::runtime::check, |text| {
        let c = parse_lenient(text)?;
        let Some(p) = c.providers.get(name) else {
            missing = Some(not_a_provider(path, name, &c));
            return Err(EditError::Refused(String::new()));
        };
        if p.enabled == enabled {
            unchanged = true;
            return Err(EditError::Refused(String::new()));
        }
        refs = references(&c, name);
        edit::set_map_entry_field(
            text,
            "providers",
            name,
            "enabled",
            if enabled { "true" } else { "false" },
        )
    });
    let state = if enabled { "enabled" } else { "disabled" };
    if unchanged {
        eprintln!(
            "Provider `{name}` is already {state} in {}; nothing changed.",
            path.display()
        );
        return Ok(());
    }
    let edited = result.map_err(|e| missing.take().unwrap_or_else(|| Failure::edit(path, e)))?;
    eprintln!("Provider `{name}` is now {state} in {}. {RELOAD_NOTE}", path.display());
    if !enabled && !refs.is_empty() {
        eprintln!(
            "Requests these send to it go to their next candidate instead (a request left with none gets 529):\n{}",
            refs.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n")
        );
    }
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn update(path: &Path, args: UpdateArgs) -> Result<(), Failure> {
    let name = args.name.as_str();
    if let Some(url) = &args.api_base {
        check_url("--api-base", url)?;
    }
    check_models(&args.models)?;
    let mut changes: Vec<(&str, String)> = Vec::new();
    if let Some(p) = args.priority {
        changes.push(("priority", p.to_string()));
    }
    if let Some(b) = &args.api_base {
        changes.push(("api_base", edit::yaml_scalar(b)));
    }
    if !args.models.is_empty() {
        changes.push(("models", models_value(&args.models)));
    }
    let mut missing = None;
    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        let c = parse_lenient(text)?;
        if !c.providers.contains_key(name) {
            missing = Some(not_a_provider(path, name, &c));
            return Err(EditError::Refused(String::new()));
        }
        let mut text = text.to_string();
        for (field, value) in &changes {
            text = edit::set_map_entry_field(&text, "providers", name, field, value)?;
        }
        Ok(text)
    })
    .map_err(|e| missing.take().unwrap_or_else(|| Failure::edit(path, e)))?;
    let said: Vec<String> = changes.iter().map(|(f, v)| format!("{f}: {v}")).collect();
    eprintln!(
        "Updated provider `{name}` in {}: {}. {RELOAD_NOTE}",
        path.display(),
        said.join(", ")
    );
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: &str) -> AddArgs {
        AddArgs {
            kind: kind.into(),
            name: None,
            api_base: None,
            key_env: Vec::new(),
            no_key: false,
            models: Vec::new(),
            priority: None,
            region: None,
            endpoint: None,
            resource: None,
            workspace_id: None,
            project: None,
            location: None,
            disabled: false,
        }
    }

    #[test]
    fn entries_render_in_spec_order_without_secrets() {
        let mut a = args("ollama");
        a.api_base = Some("http://127.0.0.1:11434/v1".into());
        a.models = vec!["llama3.1:8b".into(), "qwen3".into()];
        a.priority = Some(-1);
        a.disabled = true;
        assert_eq!(
            render_provider(&a, &[]),
            "type: ollama\napi_base: http://127.0.0.1:11434/v1\nmodels: [\"llama3.1:8b\", qwen3]\npriority: -1\nenabled: false"
        );
        assert_eq!(
            render_provider(&args("openai"), &["A".into(), "B".into()]),
            "type: openai\nkeys: [{env: A}, {env: B}]"
        );
        assert_eq!(
            render_provider(&args("openai"), &["OPENAI_API_KEY".into()]),
            "type: openai\napi_key_env_var: OPENAI_API_KEY"
        );
        let parsed: crate::config::schema::ProviderConfig =
            serde_yaml::from_str(&render_provider(&a, &["X".into()])).unwrap();
        assert_eq!(parsed.models, ["llama3.1:8b", "qwen3"]);
        assert!(!parsed.enabled);
    }

    #[test]
    fn names_and_env_vars_are_checked() {
        for ok in ["openai", "openai-team_2", "a.b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a:b", "ü", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for ok in ["OPENAI_API_KEY", "_X", "a1"] {
            assert!(check_env_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "sk-ant-123", "1X", "A B", "$X"] {
            let e = check_env_name(bad).err().unwrap().message;
            assert!(e.contains("never the key itself"), "{e}");
        }
        assert_eq!(default_key_env("openrouter"), Some("OPENROUTER_API_KEY"));
        assert_eq!(default_key_env("ollama"), None);
        // Bedrock finds its credentials itself; naming a variable would turn SigV4 off.
        assert_eq!(default_key_env("bedrock"), None);
        assert_eq!(default_key_env("gemini"), Some("GEMINI_API_KEY"));
        assert_eq!(default_key_env("vertex"), None);
    }
}
