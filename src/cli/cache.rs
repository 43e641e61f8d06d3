//! `modelgate cache stats|clear` (being written).

use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Entries, hits and misses of each cache.
    Stats,
}

pub fn run(_config: Option<PathBuf>, _command: CacheCommand) -> i32 {
    eprintln!("cache: not built yet");
    2
}
