//! Command line: `efaprobe fabric-ping`, `efaprobe check`, `efaprobe agent`,
//! `efaprobe preflight`, ...

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::parse_command_line;

pub mod agent;
pub mod check;
pub mod discover;
pub mod fabric_ping;
pub mod preflight;
pub mod simulate;

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
    /// Run the per-node agent: probe every peer over the fabric and over IP, check services,
    /// and serve metrics, an API and a status page.
    Agent(Box<crate::config::AgentArgs>),
    /// Print the peers this node would probe (static list, DNS name or Kubernetes pods), once
    /// or at every change.
    Discover(discover::Args),
    /// For measurement: serve N simulated peer agents (a hello each, one shared fabric
    /// responder) on loopback or in a test namespace, and print their list for `--peers`.
    SimulatePeers(simulate::Args),
    /// Before a job starts: ask the local agent to verify the job's nodes now, over the
    /// fabric and over IP; exit 0 when all answer, 1 naming the failing nodes, paths and
    /// reasons, 2 when it cannot ask.
    Preflight(preflight::Args),
}

/// Exit code for a bad command line or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// The single-threaded runtime a one-shot subcommand runs on; when it cannot start, says so
/// on stderr as `efaprobe COMMAND: ...` and returns the exit code `failure`.
pub fn current_thread_runtime(
    command: &str,
    failure: ExitCode,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("efaprobe {command}: cannot start the async runtime: {e}");
            failure
        })
}

pub fn main() -> ExitCode {
    // Every value a flag's parser refuses is reported, not only the first (see `config`).
    let parsed = match parse_command_line::<Cli, _>(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let Some(cli) = parsed.parsed else {
        parsed.errors.print(&parsed.command);
        return ExitCode::from(EXIT_USAGE);
    };
    let refused = parsed.errors;
    init_tracing();
    match cli.command {
        Command::FabricPing(args) => fabric_ping::run(args, refused),
        Command::Check(args) => check::run(args, refused),
        Command::Agent(args) => agent::run(*args, refused),
        Command::Discover(args) => discover::run(args, refused),
        Command::SimulatePeers(args) => simulate::run(args, refused),
        Command::Preflight(args) => preflight::run(args, refused),
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
