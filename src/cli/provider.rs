//! `modelgate provider list [--builtins]|show NAME`: the providers as the
//! gateway compiles them (defaults applied, accounts resolved), never a
//! secret.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::ProviderKind;

#[derive(Subcommand, Debug)]
pub enum ProviderCommand {
    /// The configured providers, one line each.
    List {
        /// List the provider types this build supports instead.
        #[arg(long)]
        builtins: bool,
    },
    /// One provider in detail.
    Show { name: String },
}

pub fn run(config: Option<PathBuf>, cmd: ProviderCommand) -> i32 {
    if let ProviderCommand::List { builtins: true } = cmd {
        for kind in ProviderKind::ALL {
            out!(
                "{:<11} default api_base: {}",
                kind.as_str(),
                kind.default_base().unwrap_or("(none: give api_base)")
            );
        }
        return 0;
    }
    let path = super::config_path(config);
    let snap = match super::load_snapshot(&path, |_| {}) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 1;
        }
    };
    let default = snap.config.default_provider.as_deref();
    match cmd {
        ProviderCommand::List { .. } => {
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
                    p.kind.as_str(),
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
            0
        }
        ProviderCommand::Show { name } => {
            let Some(p) = snap.providers.get(&name) else {
                eprintln!(
                    "no provider `{name}` in {} (configured: {})",
                    path.display(),
                    snap.providers.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                return 1;
            };
            out!("name:      {}", p.name);
            out!("type:      {}", p.kind.as_str());
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
            if let Some(d) = &p.deployment {
                out!("deployment: {d}");
            }
            if let Some(v) = &p.api_version {
                out!("api_version: {v}");
            }
            for (n, _) in &p.headers {
                out!("header:    {n}: ***");
            }
            for a in &p.accounts {
                let credential = match (&a.credential, p.kind) {
                    (Some(_), _) => "credential configured",
                    (None, ProviderKind::Anthropic) => "no credential: clients' own are forwarded",
                    (None, _) => "no credential",
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
    }
}
