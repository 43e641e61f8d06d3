//! `modelgate config init|validate|show`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

/// What `config init` writes: the minimal file from `spec/config.md`.
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
}

pub fn run(config: Option<PathBuf>, cmd: ConfigCommand) -> i32 {
    match cmd {
        ConfigCommand::Init { force } => init(&config.unwrap_or_else(|| PathBuf::from("modelgate.yaml")), force),
        ConfigCommand::Validate => validate(&super::config_path(config)),
        ConfigCommand::Show => show(&super::config_path(config)),
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
            println!("wrote {}", path.display());
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

fn validate(path: &Path) -> i32 {
    match super::load_snapshot(path, |_| {}) {
        Ok(s) => {
            for w in &s.warnings {
                println!("warning: {w}");
            }
            println!("{}: ok (version {})", path.display(), s.version);
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            1
        }
    }
}

fn show(path: &Path) -> i32 {
    let mut config = match crate::config::load::load_file(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 1;
        }
    };
    for p in config.providers.values_mut() {
        if p.api_key.is_some() {
            p.api_key = Some("***".into());
        }
        for k in &mut p.keys {
            if k.api_key.is_some() {
                k.api_key = Some("***".into());
            }
        }
    }
    match serde_yaml::to_string(&config) {
        Ok(s) => {
            print!("{s}");
            0
        }
        Err(e) => {
            eprintln!("modelgate: {e}");
            1
        }
    }
}
