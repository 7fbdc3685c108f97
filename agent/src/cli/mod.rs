//! Command line: `efaprobe fabric-ping`, `efaprobe check`, `efaprobe agent`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
pub mod check;
pub mod discover;
pub mod fabric_ping;
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

/// Parses a duration like `500ms`, `2s`, `1.5s`, `1m`, `250us`; a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration like 500ms, 2s or 1m");
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let unit_at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    // `f64::from_str` would also take "inf", "1e3" or "+1": allow digits and one dot only.
    if number.is_empty() || number == "." || number.matches('.').count() > 1 || number.len() > 20 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    std::time::Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| bad())
}

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
        Command::Agent(args) => agent::run(*args),
        Command::Discover(args) => discover::run(args),
        Command::SimulatePeers(args) => simulate::run(args),
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

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "2",
            "s",
            ".s",
            "1..5s",
            "2 s",
            "-1s",
            "+1s",
            "1e3ms",
            "infs",
            "2sec",
            "1.5",
            "99999999999999999999999h",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn zero_and_nanoseconds() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("100ns"), Ok(Duration::from_nanos(100)));
    }
}
