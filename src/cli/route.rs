//! `modelgate route list|resolve|test|add|remove`: the routing table and the
//! plan a request would get, computed from the config file exactly as the
//! running gateway computes it (same `Snapshot::resolve`), and edits of the
//! `routes:` section through `config::edit` (comments and order kept,
//! validated before writing, replaced atomically).
//!
//! Exit codes: 0 done; 1 the request was refused (unknown provider or rule,
//! a duplicate, a change that would not load) or, for `resolve` and `test`,
//! the model cannot be served; 2 the config file could not be read, parsed
//! or written.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use http::header::HeaderName;

use super::provider::{describe_route, finish, flow_scalar, names_or_none, parse_lenient, Failure};
use super::provider::{CONFIG_ERROR, USER_ERROR};
use crate::config::edit::{self, EditError};
use crate::config::schema::RouteConfig;
use crate::config::Config;
use crate::runtime::snapshot::Plan;
use crate::runtime::Snapshot;

const RELOAD_NOTE: &str =
    "A running gateway applies it on its next config reload (automatic when the file changes, or send SIGHUP).";

#[derive(Subcommand, Debug)]
pub enum RouteCommand {
    /// Print the routing rules in order, then where unmatched requests go.
    List {
        /// `text` (default) or `json` (`{routes, default_provider}`, the rules as the file has them).
        #[arg(long, value_enum, default_value = "text")]
        format: super::Output,
    },
    /// Run the gateway with its routes (claude-code-model-gateway's name for
    /// `modelgate serve`; the same flags).
    Serve(super::serve::ServeArgs),
    /// What each rule has served on the running gateway since it started:
    /// requests, errors and latency (from `/admin/routes`).
    Stats {
        /// `text` (default) or `json` (the `/admin/routes` object).
        #[arg(long, value_enum, default_value = "text")]
        format: super::Output,
        #[command(flatten)]
        target: super::health::Target,
    },
    /// Print the candidate plan for a model, and why each rule matched or not.
    Resolve(Query),
    /// Like `resolve`, and also check every candidate is usable (credentials
    /// set); exit 1 if one is not.
    Test(Query),

    /// Add a routing rule: requests for models matching GLOB go to PROVIDER.
    ///
    /// Rules are tried in order and the first match wins, so where a rule goes
    /// matters. By default the new rule goes last, except that it is put
    /// before a catch-all rule (`match: "*"` without a header), since a rule
    /// after a catch-all can never match. --before GLOB puts it right before
    /// the first rule whose `match` is GLOB; --at-end appends it even after a
    /// catch-all. The command prints the position it took, and warns when an
    /// earlier rule already matches GLOB (the new one would be shadowed).
    ///
    /// GLOB is matched against the model id the client asks for: `*` is any
    /// run of characters, `?` one character, `[abc]` a set. Quote it in the
    /// shell. The rule is written like the rules around it (one-line
    /// `{match: ..}` entries when the others are), comments and order of the
    /// file kept; the result is validated before anything is written.
    #[command(after_long_help = "\
Examples:
  modelgate route add 'claude-haiku-*' --provider openai --model gpt-4o-mini --fallback anthropic
  modelgate route add 'gpt-*' --provider openrouter --fallback openai=gpt-4o
  modelgate route add '*' --header x-org-route=cheap --provider openrouter --before 'claude-*'
  modelgate route add 'llama*' --provider local --at-end")]
    Add(AddArgs),

    /// Remove a routing rule: the one whose `match` is GLOB.
    ///
    /// When several rules share the GLOB, narrow it with --header, or name
    /// the rule by its position with --index N (as `route list` numbers
    /// them: routes[N]). Comments above the rule are kept; those indented
    /// inside it go with it.
    #[command(after_long_help = "\
Examples:
  modelgate route remove 'claude-haiku-*'
  modelgate route remove '*' --header x-org-route=cheap
  modelgate route remove --index 2")]
    Remove(RemoveArgs),
}

#[derive(clap::Args, Debug)]
pub struct Query {
    /// The requested model id.
    #[arg(long)]
    model: String,
    /// A request header, `Name: value` (repeatable), e.g. `x-org-route: cheap`.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Glob on the requested model id, e.g. 'claude-haiku-*' (`*` = every model).
    #[arg(value_name = "GLOB")]
    glob: String,
    /// The provider requests go to first.
    #[arg(long, value_name = "PROVIDER")]
    provider: String,
    /// Send this model id upstream instead of the requested one.
    #[arg(long, value_name = "ID")]
    model: Option<String>,
    /// A provider to try, in order, when the ones before fail before the
    /// first byte (repeatable). `PROVIDER=MODEL` also renames the model for it.
    #[arg(long = "fallback", value_name = "PROVIDER[=MODEL]")]
    fallbacks: Vec<String>,
    /// Match only requests carrying this header with exactly this value.
    #[arg(long, value_name = "NAME=VALUE")]
    header: Option<String>,
    /// Insert the rule right before the first rule whose `match` is this GLOB.
    #[arg(long, value_name = "GLOB", conflicts_with = "at_end")]
    before: Option<String>,
    /// Append the rule at the very end, even after a catch-all `*` rule.
    #[arg(long)]
    at_end: bool,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The `match` glob of the rule to remove, as `route list` shows it.
    #[arg(value_name = "GLOB", required_unless_present = "index")]
    glob: Option<String>,
    /// Only the rule with this header condition (when several share GLOB).
    #[arg(long, value_name = "NAME=VALUE", requires = "glob")]
    header: Option<String>,
    /// The rule at this position instead (routes[N] in `route list`).
    #[arg(long, value_name = "N", conflicts_with = "glob")]
    index: Option<usize>,
}

/// `route stats`: the rules with their counters, as a table or as JSON.
fn print_stats(v: &serde_json::Value, format: super::Output) -> i32 {
    if format == super::Output::Json {
        out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return 0;
    }
    let rules = v["rules"].as_array().map(Vec::as_slice).unwrap_or_default();
    if rules.is_empty() {
        out!("no routing rules and no default_provider");
        return 0;
    }
    let w = rules
        .iter()
        .map(|r| r["rule"].as_str().map_or(1, |s| s.chars().count()))
        .max()
        .unwrap_or(0)
        .max(16);
    out!(
        "{:<w$} {:<14} {:>9} {:>7} {:>7} {:>10} {:>10}",
        "rule",
        "provider",
        "requests",
        "errors",
        "error%",
        "avg_ms",
        "max_ms"
    );
    for r in rules {
        out!(
            "{:<w$} {:<14} {:>9} {:>7} {:>6.1}% {:>10.1} {:>10.1}",
            r["rule"].as_str().unwrap_or("?"),
            r["provider"].as_str().unwrap_or("-"),
            r["requests"].as_u64().unwrap_or(0),
            r["errors"].as_u64().unwrap_or(0),
            r["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            r["avg_latency_ms"].as_f64().unwrap_or(0.0),
            r["max_latency_ms"].as_f64().unwrap_or(0.0)
        );
    }
    out!("since the gateway started {} s ago", v["uptime_seconds"]);
    0
}

pub fn run(config: Option<PathBuf>, cmd: RouteCommand) -> i32 {
    let cmd = match cmd {
        RouteCommand::Serve(args) => return super::serve::run(config, args),
        RouteCommand::Stats { format, target } => {
            return super::health::ask(config, &target, "GET", "/admin/routes".into(), |v| {
                print_stats(v, format)
            })
        }
        other => other,
    };
    let path = super::config_path(config);
    match cmd {
        RouteCommand::Add(args) => return finish(add(&path, args)),
        RouteCommand::Remove(args) => return finish(remove(&path, args)),
        _ => {}
    }
    let snap = match super::load_snapshot(&path, |_| {}) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return CONFIG_ERROR;
        }
    };
    match cmd {
        RouteCommand::List {
            format: super::Output::Json,
        } => {
            let v = serde_json::json!({
                "routes": snap.config.routes,
                "default_provider": snap.config.default_provider,
            });
            out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        RouteCommand::List { .. } => {
            for (i, r) in snap.config.routes.iter().enumerate() {
                let matcher = match (&r.model_glob, &r.header) {
                    (Some(g), None) => format!("match `{g}`"),
                    (None, Some(h)) => format!("header {}: {}", h.name, h.value),
                    (Some(g), Some(h)) => format!("match `{g}` + header {}: {}", h.name, h.value),
                    (None, None) => "everything".to_string(),
                };
                out!("routes[{i}]  {matcher}  →  {}", target(r));
            }
            match &snap.config.default_provider {
                Some(p) => out!("otherwise   →  {p} (default_provider)"),
                None => out!("otherwise   →  404 (no default_provider)"),
            }
            0
        }
        RouteCommand::Resolve(q) => resolve(&snap, &q, false),
        RouteCommand::Test(q) => resolve(&snap, &q, true),
        RouteCommand::Add(_) | RouteCommand::Remove(_) | RouteCommand::Serve(_) | RouteCommand::Stats { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `oai as `gpt-4o-mini`, then anthropic`: where a rule sends requests.
fn target(r: &RouteConfig) -> String {
    let rename = r.model.as_deref().map(|m| format!(" as `{m}`")).unwrap_or_default();
    let fallbacks: Vec<String> = r
        .fallbacks
        .iter()
        .map(|f| match f.model() {
            Some(m) => format!("{} as `{m}`", f.provider()),
            None => f.provider().to_string(),
        })
        .collect();
    let fallbacks = if fallbacks.is_empty() {
        String::new()
    } else {
        format!(", then {}", fallbacks.join(", "))
    };
    format!("{}{rename}{fallbacks}", r.provider)
}

fn resolve(snap: &Snapshot, q: &Query, check: bool) -> i32 {
    let mut headers = Vec::new();
    for h in &q.headers {
        let Some((name, value)) = h.split_once(':') else {
            eprintln!("--header `{h}`: write it as `Name: value`");
            return USER_ERROR;
        };
        let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) else {
            eprintln!("--header `{h}`: `{}` is not a header name", name.trim());
            return USER_ERROR;
        };
        headers.push((name, value.trim().to_string()));
    }
    let lookup = |n: &HeaderName| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    out!("model `{}`", q.model);
    for verdict in snap.explain(&q.model, &lookup) {
        match verdict {
            Ok(desc) => {
                out!("  {desc}: matches");
                break;
            }
            Err(why) => out!("  {why}"),
        }
    }
    let Some(plan) = snap.resolve(&q.model, &lookup) else {
        out!("no rule matches and there is no default_provider: the gateway answers 404");
        return 1;
    };
    print_plan(&plan, &q.model);
    if plan.candidates.is_empty() {
        out!("every candidate is disabled: the gateway answers 529");
        return 1;
    }
    if check {
        let mut problems = 0;
        for c in &plan.candidates {
            for a in &c.provider.accounts {
                if c.provider.lacks_credential(a) {
                    out!("  problem: account `{}` has no credential", a.label);
                    problems += 1;
                }
            }
        }
        for w in &snap.warnings {
            out!("  warning: {w}");
        }
        if problems > 0 {
            return 1;
        }
        out!("ok");
    }
    0
}

fn print_plan(plan: &Plan, model: &str) {
    out!("plan ({}):", plan.reason);
    for (i, c) in plan.candidates.iter().enumerate() {
        let upstream = c.rename.as_deref().unwrap_or(model);
        let accounts: Vec<String> = c
            .provider
            .accounts
            .iter()
            .map(|a| format!("{} (weight {})", a.label, a.weight))
            .collect();
        out!(
            "  {}. {} [{}] model `{upstream}`; accounts: {}",
            i + 1,
            c.provider.name,
            c.provider.kind.name,
            accounts.join(", ")
        );
    }
}

// ---------------------------------------------------------------------------
// add, remove

/// `NAME=VALUE` (or `NAME: VALUE`), the header name checked.
fn parse_header(flag: &str, raw: &str) -> Result<(String, String), Failure> {
    let split = raw.split_once('=').or_else(|| raw.split_once(':'));
    let Some((name, value)) = split else {
        return Err(Failure::user(format!(
            "{flag} `{raw}`: write it as NAME=VALUE, e.g. x-org-route=cheap"
        )));
    };
    let (name, value) = (name.trim(), value.trim());
    if HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(Failure::user(format!("{flag} `{raw}`: `{name}` is not a header name")));
    }
    if value.is_empty() {
        return Err(Failure::user(format!(
            "{flag} `{raw}`: give the value the header must have, e.g. {name}=cheap"
        )));
    }
    Ok((name.to_ascii_lowercase(), value.to_string()))
}

/// Does a route's header condition equal `want` (header names are case-insensitive)?
fn same_header(r: &RouteConfig, want: Option<&(String, String)>) -> bool {
    match (&r.header, want) {
        (None, None) => true,
        (Some(h), Some((n, v))) => h.name.eq_ignore_ascii_case(n) && &h.value == v,
        _ => false,
    }
}

fn is_catch_all(r: &RouteConfig) -> bool {
    r.header.is_none() && r.model_glob.as_deref().is_none_or(|g| g == "*")
}

/// The rules, one a line, for messages.
fn rule_list(c: &Config) -> String {
    if c.routes.is_empty() {
        return "  (there are none)".into();
    }
    c.routes
        .iter()
        .enumerate()
        .map(|(i, r)| format!("  - {} → {}", describe_route(i, r), target(r)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// True when every existing rule is a one-line `- {..}` entry.
fn routes_are_flow(text: &str) -> bool {
    let Ok(Some(section)) = edit::find_section(text, "routes") else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    !section.entries.is_empty()
        && section.entries.iter().all(|&(start, end)| {
            let content: Vec<&str> = lines[start - 1..end]
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            content.len() == 1
                && content[0]
                    .strip_prefix('-')
                    .is_some_and(|r| r.trim_start().starts_with('{'))
        })
}

struct NewRoute {
    glob: String,
    provider: String,
    model: Option<String>,
    fallbacks: Vec<(String, Option<String>)>,
    header: Option<(String, String)>,
}

impl NewRoute {
    /// The rule's fields in the order README.md#configuration lists them.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("match", edit::yaml_quote(&self.glob))];
        if let Some((n, v)) = &self.header {
            out.push((
                "header",
                format!("{{name: {}, value: {}}}", flow_scalar(n), flow_scalar(v)),
            ));
        }
        out.push(("provider", flow_scalar(&self.provider)));
        if let Some(m) = &self.model {
            out.push(("model", flow_scalar(m)));
        }
        if !self.fallbacks.is_empty() {
            let items: Vec<String> = self
                .fallbacks
                .iter()
                .map(|(p, m)| match m {
                    None => flow_scalar(p),
                    Some(m) => format!("{{provider: {}, model: {}}}", flow_scalar(p), flow_scalar(m)),
                })
                .collect();
            out.push(("fallbacks", format!("[{}]", items.join(", "))));
        }
        out
    }

    fn render(&self, flow: bool) -> String {
        let fields = self.fields();
        if flow {
            let items: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", items.join(", "))
        } else {
            fields
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

/// Where the new rule goes, and how to say so.
enum Placement {
    Before(usize),
    BeforeCatchAll(usize),
    End,
}

fn add(path: &Path, args: AddArgs) -> Result<(), Failure> {
    if args.glob.trim().is_empty() {
        return Err(Failure::user("GLOB must not be empty; `*` matches every model"));
    }
    if let Err(e) = globset::Glob::new(&args.glob) {
        return Err(Failure::user(format!("`{}` is not a valid glob: {e}", args.glob)));
    }
    let header = args
        .header
        .as_deref()
        .map(|h| parse_header("--header", h))
        .transpose()?;
    let mut fallbacks = Vec::new();
    for f in &args.fallbacks {
        let (p, m) = match f.split_once('=') {
            Some((p, m)) if !m.trim().is_empty() => (p.trim().to_string(), Some(m.trim().to_string())),
            Some((p, _)) => (p.trim().to_string(), None),
            None => (f.trim().to_string(), None),
        };
        fallbacks.push((p, m));
    }
    let rule = NewRoute {
        glob: args.glob.clone(),
        provider: args.provider.clone(),
        model: args.model.clone().filter(|m| !m.trim().is_empty()),
        fallbacks,
        header,
    };

    let mut placed = None;
    let mut shadowed_by = Vec::new();
    let mut missing = None;
    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        let c = parse_lenient(text)?;
        let providers = names_or_none(c.providers.keys());
        let unknown = std::iter::once(&rule.provider)
            .chain(rule.fallbacks.iter().map(|(p, _)| p))
            .find(|p| !c.providers.contains_key(*p));
        if let Some(p) = unknown {
            missing = Some(Failure::user(format!(
                "no provider `{p}` in {}; its providers: {providers}. Add it first with `modelgate provider add TYPE --name {p}`",
                path.display()
            )));
            return Err(EditError::Refused(String::new()));
        }
        if let Some(i) = c
            .routes
            .iter()
            .position(|r| r.model_glob.as_deref() == Some(rule.glob.as_str()) && same_header(r, rule.header.as_ref()))
        {
            let r = &c.routes[i];
            return Err(EditError::Refused(format!(
                "{} already has {} → {}; remove it first with `modelgate route remove '{}'`{}",
                path.display(),
                describe_route(i, r),
                target(r),
                rule.glob,
                if r.header.is_some() { " --header NAME=VALUE" } else { "" }
            )));
        }
        let placement = match (&args.before, args.at_end) {
            (Some(b), _) => match c.routes.iter().position(|r| r.model_glob.as_deref() == Some(b.as_str())) {
                Some(i) => Placement::Before(i),
                None => {
                    return Err(EditError::Refused(format!(
                        "--before `{b}`: no rule in {} has `match: \"{b}\"`. Its rules:\n{}",
                        path.display(),
                        rule_list(&c)
                    )))
                }
            },
            (None, true) => Placement::End,
            (None, false) => match c.routes.iter().position(is_catch_all) {
                Some(i) => Placement::BeforeCatchAll(i),
                None => Placement::End,
            },
        };
        let index = match placement {
            Placement::Before(i) | Placement::BeforeCatchAll(i) => i,
            Placement::End => c.routes.len(),
        };
        // Earlier rules that match every model this glob names.
        let literal = globset::Glob::new(&rule.glob).is_ok();
        for (i, r) in c.routes.iter().enumerate().take(index) {
            if !literal || r.header.is_some() {
                continue;
            }
            let covers = match &r.model_glob {
                None => true,
                Some(g) => globset::Glob::new(g).is_ok_and(|g| g.compile_matcher().is_match(&rule.glob)),
            };
            if covers {
                shadowed_by.push(describe_route(i, r));
            }
        }
        placed = Some((placement, index, c.routes.get(index).map(|r| describe_route(index + 1, r))));
        edit::insert_list_item(text, "routes", index, &rule.render(routes_are_flow(text)))
    })
    .map_err(|e| missing.take().unwrap_or_else(|| Failure::edit(path, e)))?;

    let Some((placement, index, next)) = placed else {
        return Err(Failure::config(format!(
            "{}: the edit finished without placing the rule; nothing was written",
            path.display()
        )));
    };
    let after = parse_lenient(&edited.after).map_err(|e| Failure::edit(path, e))?;
    let what = match after.routes.get(index) {
        Some(r) => format!("{} → {}", describe_route(index, r), target(r)),
        None => format!("routes[{index}]"),
    };
    let position = match (&placement, &next) {
        (Placement::BeforeCatchAll(_), Some(n)) => {
            format!("before the catch-all rule, now {n}, so that it can match (--at-end puts it after)")
        }
        (Placement::Before(_), Some(n)) => format!("right before {n}"),
        _ if index == 0 => "the only rule".to_string(),
        _ => "the last rule".to_string(),
    };
    eprintln!("Added {what} to {}: {position}. {RELOAD_NOTE}", path.display());
    if !shadowed_by.is_empty() {
        eprintln!(
            "warning: first match wins, and {} comes before it and also matches `{}`, so this rule may never be used. \
             To move it up: `modelgate route remove '{}'`, then add it again with `--before GLOB`.",
            shadowed_by.join(", "),
            rule.glob,
            rule.glob
        );
    }
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn remove(path: &Path, args: RemoveArgs) -> Result<(), Failure> {
    let header = args
        .header
        .as_deref()
        .map(|h| parse_header("--header", h))
        .transpose()?;
    let mut removed = None;
    let edited = edit::edit_file(path, &crate::runtime::check, |text| {
        let c = parse_lenient(text)?;
        let index = match (&args.glob, args.index) {
            (_, Some(i)) => {
                if i >= c.routes.len() {
                    return Err(EditError::Refused(format!(
                        "--index {i}: {} has {} rules (routes[0] to routes[{}]). Its rules:\n{}",
                        path.display(),
                        c.routes.len(),
                        c.routes.len().saturating_sub(1),
                        rule_list(&c)
                    )));
                }
                i
            }
            (Some(g), None) => {
                let hits: Vec<usize> = (0..c.routes.len())
                    .filter(|&i| {
                        let r = &c.routes[i];
                        r.model_glob.as_deref() == Some(g.as_str())
                            && header.as_ref().is_none_or(|h| same_header(r, Some(h)))
                    })
                    .collect();
                match hits.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(EditError::Refused(format!(
                            "no rule in {} has `match: \"{g}\"`{}. Its rules:\n{}",
                            path.display(),
                            header
                                .as_ref()
                                .map(|(n, v)| format!(" with header {n}: {v}"))
                                .unwrap_or_default(),
                            rule_list(&c)
                        )))
                    }
                    several => {
                        return Err(EditError::Refused(format!(
                        "{} rules in {} have `match: \"{g}\"`:\n{}\nSay which with --header NAME=VALUE, or --index N.",
                        several.len(),
                        path.display(),
                        several
                            .iter()
                            .map(|&i| format!("  - {} → {}", describe_route(i, &c.routes[i]), target(&c.routes[i])))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )))
                    }
                }
            }
            (None, None) => {
                return Err(EditError::Refused(
                    "give the GLOB of the rule to remove, or --index N".into(),
                ))
            }
        };
        let r = &c.routes[index];
        removed = Some(format!("{} → {}", describe_route(index, r), target(r)));
        edit::remove_list_item_at(text, "routes", index)
    })
    .map_err(|e| Failure::edit(path, e))?;
    eprintln!(
        "Removed {} from {}. {RELOAD_NOTE}",
        removed.unwrap_or_default(),
        path.display()
    );
    for w in &edited.new_warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> NewRoute {
        NewRoute {
            glob: "claude-haiku-*".into(),
            provider: "oai".into(),
            model: Some("gpt-4o-mini".into()),
            fallbacks: vec![("anthropic".into(), None), ("local".into(), Some("llama3.1:8b".into()))],
            header: Some(("x-org-route".into(), "cheap".into())),
        }
    }

    #[test]
    fn rules_render_in_both_styles_and_parse_back() {
        let r = rule();
        assert_eq!(
            r.render(false),
            "match: \"claude-haiku-*\"\nheader: {name: x-org-route, value: cheap}\nprovider: oai\nmodel: gpt-4o-mini\nfallbacks: [anthropic, {provider: local, model: \"llama3.1:8b\"}]"
        );
        assert_eq!(
            r.render(true),
            "{match: \"claude-haiku-*\", header: {name: x-org-route, value: cheap}, provider: oai, model: gpt-4o-mini, fallbacks: [anthropic, {provider: local, model: \"llama3.1:8b\"}]}"
        );
        for text in [r.render(false), r.render(true)] {
            let parsed: RouteConfig = serde_yaml::from_str(&text).unwrap();
            assert_eq!(parsed.model_glob.as_deref(), Some("claude-haiku-*"));
            assert_eq!(parsed.fallbacks[1].model(), Some("llama3.1:8b"));
            assert_eq!(parsed.header.unwrap().value, "cheap");
        }
    }

    #[test]
    fn headers_parse_and_catch_alls_are_recognised() {
        assert_eq!(
            parse_header("--header", "X-Org-Route=cheap").ok().unwrap(),
            ("x-org-route".to_string(), "cheap".to_string())
        );
        assert_eq!(
            parse_header("--header", "x-a=b=c").ok().unwrap(),
            ("x-a".to_string(), "b=c".to_string())
        );
        assert_eq!(
            parse_header("--header", "x-a: b").ok().unwrap(),
            ("x-a".to_string(), "b".to_string())
        );
        assert!(parse_header("--header", "nothing").is_err());
        assert!(parse_header("--header", "bad name=x").is_err());
        assert!(parse_header("--header", "x-a=").is_err());
        let r = |yaml: &str| serde_yaml::from_str::<RouteConfig>(yaml).unwrap();
        assert!(is_catch_all(&r("{match: '*', provider: a}")));
        assert!(is_catch_all(&r("{provider: a}")));
        assert!(!is_catch_all(&r("{match: 'c*', provider: a}")));
        assert!(!is_catch_all(&r(
            "{match: '*', header: {name: x, value: y}, provider: a}"
        )));
    }

    #[test]
    fn the_file_style_of_rules_is_detected() {
        assert!(routes_are_flow(
            "routes:\n  # a\n  - {match: a, provider: x}   # c\n  - {provider: y}\n"
        ));
        assert!(!routes_are_flow(
            "routes:\n  - {match: a, provider: x}\n  - match: b\n    provider: y\n"
        ));
        assert!(!routes_are_flow("routes: []\n"));
        assert!(!routes_are_flow("listen: x\n"));
    }
}
