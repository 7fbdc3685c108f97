//! Command line: `efaprobe fabric-ping`, `efaprobe check`, `efaprobe agent`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod check;
pub mod fabric_ping;

#[derive(Debug, Parser)]
#[command(name = "efaprobe", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ping a peer over the fabric (libfabric RDM), or answer pings: a diagnostic like
    /// fi_pingpong that never hangs on a broken path.
    FabricPing(fabric_ping::Args),
    /// Check services from this node once (TCP, NATS, Prometheus, HTTP) and say why each
    /// failed.
    Check(check::Args),
}

/// Exit code for a bad command line or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing();
    match cli.command {
        Command::FabricPing(args) => fabric_ping::run(args),
        Command::Check(args) => check::run(args),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EFAPROBE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
