//! `efaprobe check`: the target checks land in the next commit.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    eprintln!("efaprobe check: not available in this build");
    ExitCode::from(super::EXIT_USAGE)
}
