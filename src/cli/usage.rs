//! `modelgate usage` (being written).

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct UsageArgs {}

pub fn run(_config: Option<PathBuf>, _args: UsageArgs) -> i32 {
    eprintln!("usage: not built yet");
    2
}
