//! `modelgate keys create|list|revoke` (being written).

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a new key once and store its sha256 in the config file.
    Create { name: String },
}

pub fn run(_config: Option<PathBuf>, _command: KeysCommand) -> i32 {
    eprintln!("keys: not built yet");
    2
}
