//! `efaprobe check`: run each target check once from this node and say why each failed.
//!
//! Meant for an operator on a node (or `kubectl debug`) asking "can this node reach NATS and
//! Prometheus?". Exit status: 0 when every address passed, 1 when any failed, 64 for a bad
//! argument.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::probe::tcp::format_duration;

use super::parse_duration;
use crate::probe::{check_targets, TargetReport, TargetSpec};

/// Timeouts outside this range are refused: under a millisecond nothing can answer, and
/// over ten minutes a one-shot check is better served by `timeout(1)`.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the runtime waits, on exit, for a resolver thread stuck in `getaddrinfo`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct Args {
    // The help is an attribute, not a doc comment: rustdoc would read the brackets as links.
    #[arg(
        long = "target",
        value_name = "NAME=HOST:PORT[:CHECK]",
        required = true,
        value_parser = parse_target,
        help = "A service to check, as NAME=HOST:PORT[:CHECK]. CHECK is tcp, nats, prometheus, \
                http or http:/PATH; without it, port 4222 means nats, 9090 prometheus, others \
                tcp. IPv6 addresses go in brackets: [fd00::1]:4222. Repeat for more targets."
    )]
    pub targets: Vec<TargetSpec>,

    /// How long each address may take to connect and answer (name resolution gets as long
    /// again), e.g. 500ms, 2s.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Print one JSON document instead of one line per address.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> ExitCode {
    if let Some(name) = duplicate_name(&args.targets) {
        eprintln!("efaprobe check: --target name {name:?} is given more than once");
        return ExitCode::from(super::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("efaprobe check: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reports = runtime.block_on(check_targets(&args.targets, args.timeout));
    // Dropping the runtime would wait for a resolver thread stuck in getaddrinfo, which no
    // timeout can interrupt; the answer is already known, so do not wait for it.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);

    let all_ok = reports.iter().all(TargetReport::all_ok);
    let output = if args.json {
        json_document(&reports, args.timeout, all_ok)
    } else {
        text_lines(&reports)
    };
    // A closed stdout (`| head`) must not turn into a panic; the exit status still tells.
    let _ = std::io::stdout().lock().write_all(output.as_bytes());
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn duplicate_name(targets: &[TargetSpec]) -> Option<&str> {
    let mut seen = HashSet::new();
    targets
        .iter()
        .find(|spec| !seen.insert(spec.name.as_str()))
        .map(|spec| spec.name.as_str())
}

fn parse_target(text: &str) -> Result<TargetSpec, String> {
    TargetSpec::parse(text).map_err(|e| e.to_string())
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        return Err(format!(
            "{text:?} is outside {} to {}",
            format_duration(MIN_TIMEOUT),
            format_duration(MAX_TIMEOUT)
        ));
    }
    Ok(timeout)
}

#[derive(Serialize)]
struct CheckDocument<'a> {
    ok: bool,
    timeout_ms: u128,
    targets: &'a [TargetReport],
}

fn json_document(reports: &[TargetReport], timeout: Duration, ok: bool) -> String {
    let document = CheckDocument {
        ok,
        timeout_ms: timeout.as_millis(),
        targets: reports,
    };
    match serde_json::to_string_pretty(&document) {
        Ok(mut text) => {
            text.push('\n');
            text
        }
        // Only plain strings, numbers and booleans are serialised; this cannot happen, but
        // if it did the output must still be JSON.
        Err(e) => format!("{{\"ok\":false,\"error\":{:?}}}\n", e.to_string()),
    }
}

/// One row per address: target, address, ok/FAIL, reason, connect RTT, message.
fn text_lines(reports: &[TargetReport]) -> String {
    let mut rows: Vec<[String; 6]> = Vec::new();
    for report in reports {
        let name = report.spec.name.clone();
        match &report.addresses {
            Err(failure) => rows.push([
                name,
                report.spec.authority(),
                "FAIL".into(),
                failure.reason.to_string(),
                "-".into(),
                failure.message.clone(),
            ]),
            Ok(addresses) => {
                for address in addresses {
                    rows.push(match &address.result {
                        Ok(success) => [
                            name.clone(),
                            address.address.to_string(),
                            "ok".into(),
                            "-".into(),
                            format_duration(success.connect_rtt),
                            success_detail(success),
                        ],
                        Err(failure) => [
                            name.clone(),
                            address.address.to_string(),
                            "FAIL".into(),
                            failure.reason.to_string(),
                            "-".into(),
                            failure.message.clone(),
                        ],
                    });
                }
                if report.addresses_skipped > 0 {
                    rows.push([
                        name,
                        report.spec.authority(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        format!("{} more addresses not checked", report.addresses_skipped),
                    ]);
                }
            }
        }
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (cell, width) in row.iter().zip(widths) {
            out.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(&row[5]);
        out.push('\n');
    }
    out
}

fn success_detail(success: &crate::probe::CheckSuccess) -> String {
    let mut detail = format!("total {}", format_duration(success.total));
    if let Some(status) = success.http_status {
        detail.push_str(&format!(", HTTP {status}"));
    }
    if let Some(nats) = &success.nats {
        let jetstream = if nats.jetstream { "on" } else { "off" };
        detail.push_str(&format!(
            ", JetStream {jetstream}, server {} version {}",
            nats.server_id, nats.version
        ));
        if !nats.server_name.is_empty() && nats.server_name != nats.server_id {
            detail.push_str(&format!(" ({})", nats.server_name));
        }
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("11m").is_err());
        assert_eq!(parse_timeout("10m"), Ok(MAX_TIMEOUT));
    }

    #[test]
    fn arguments() {
        let cli = TestCli::try_parse_from([
            "check",
            "--target",
            "nats=127.0.0.1:4222",
            "--target",
            "web=[::1]:80:http:/healthz",
            "--timeout",
            "500ms",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.args.targets.len(), 2);
        assert_eq!(cli.args.timeout, Duration::from_millis(500));
        assert!(cli.args.json);

        let cli = TestCli::try_parse_from(["check", "--target", "n=h:1"]).unwrap();
        assert_eq!(cli.args.timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_arguments_name_the_value() {
        for (argv, needle) in [
            (vec!["check", "--target", "nats"], "\"nats\""),
            (vec!["check", "--target", "n=h:1:grpc"], "\"grpc\""),
            (
                vec!["check", "--target", "n=h:1", "--timeout", "2"],
                "\"2\"",
            ),
            (vec!["check"], "--target"),
        ] {
            let err = TestCli::try_parse_from(&argv).expect_err(needle);
            assert!(err.use_stderr());
            let message = err.to_string();
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
    }

    #[test]
    fn duplicate_names_are_found() {
        let specs: Vec<TargetSpec> = ["a=h:1", "b=h:2", "a=h:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(duplicate_name(&specs), Some("a"));
        assert_eq!(duplicate_name(&specs[..2]), None);
    }
}
