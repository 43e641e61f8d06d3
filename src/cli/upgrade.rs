//! `modelgate upgrade` (being written).

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct UpgradeArgs {}

pub fn run(_config: Option<PathBuf>, _args: UpgradeArgs) -> i32 {
    eprintln!("upgrade: not built yet");
    2
}
