//! `efaprobe check`: run each target check once from this node and say why each failed.
//!
//! Meant for an operator on a node (or `kubectl debug`) asking "can this node reach NATS and
//! Prometheus?". Exit status: 0 when every address passed, 1 when any failed, 64 for a bad
//! argument.
//!
//! `--repeat N [--concurrency C]` is for benchmarks (`benches/tcp_check.sh`): the same checks N
//! times, then one JSON summary of this process's CPU and the latency percentiles.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::check::check_config;
pub use crate::config::check::Args;
use crate::config::ConfigErrors;
use crate::probe::{check_targets, TargetReport, TargetSpec};
use crate::units::format_duration;

/// How long the runtime waits, on exit, for a resolver thread stuck in `getaddrinfo`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

pub fn run(args: Args, refused: ConfigErrors) -> ExitCode {
    if let Err(errors) = check_config(&args, refused) {
        errors.print("check");
        return ExitCode::from(super::EXIT_USAGE);
    }
    // The binary links libfabric, whose dependencies install fault handlers that exit 1: a
    // crash must end this command by its signal too.
    fabric::process::init();
    let runtime = match super::current_thread_runtime("check", ExitCode::FAILURE) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if let Some(repeat) = args.repeat {
        let summary = runtime.block_on(repeat_checks(
            &args.targets,
            args.timeout,
            repeat,
            args.concurrency,
        ));
        runtime.shutdown_timeout(SHUTDOWN_GRACE);
        let mut text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        text.push('\n');
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        return if summary.failures == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
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

/// What `--repeat` prints.
#[derive(Debug, Serialize)]
pub struct RepeatSummary {
    pub repeat: u32,
    pub concurrency: u32,
    /// Addresses checked, all rounds together.
    pub probes: u64,
    pub failures: u64,
    pub wall_seconds: f64,
    /// This process's user + system CPU over the checks (from /proc/self/stat, in 10 ms
    /// ticks; start-up excluded). `None` where /proc is not readable.
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_per_10k_probes: Option<f64>,
    /// TCP handshake times of the successful checks, microseconds.
    pub connect_us: Percentiles,
    /// Whole check (connect plus the protocol exchange), microseconds.
    pub total_us: Percentiles,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted here); zeros when there are none.
    pub fn of(samples: &mut [Duration]) -> Percentiles {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e6
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
        }
    }
}

/// Runs every target's check `repeat` times, `concurrency` rounds at once.
async fn repeat_checks(
    targets: &[TargetSpec],
    timeout: Duration,
    repeat: u32,
    concurrency: u32,
) -> RepeatSummary {
    use futures::stream::{self, StreamExt};
    let cpu_before = process_cpu_seconds();
    let started = std::time::Instant::now();
    let mut rounds = stream::iter(0..repeat)
        .map(|_| check_targets(targets, timeout))
        .buffer_unordered(concurrency as usize);
    let (mut probes, mut failures) = (0u64, 0u64);
    let mut connect = Vec::with_capacity(repeat as usize * targets.len());
    let mut total = Vec::with_capacity(repeat as usize * targets.len());
    while let Some(reports) = rounds.next().await {
        for report in &reports {
            match &report.addresses {
                Err(_) => {
                    probes += 1;
                    failures += 1;
                }
                Ok(addresses) => {
                    for address in addresses {
                        probes += 1;
                        match &address.result {
                            Ok(success) => {
                                connect.push(success.connect_rtt);
                                total.push(success.total);
                            }
                            Err(_) => failures += 1,
                        }
                    }
                }
            }
        }
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_before
        .zip(process_cpu_seconds())
        .map(|(before, after)| after - before);
    RepeatSummary {
        repeat,
        concurrency,
        probes,
        failures,
        wall_seconds,
        cpu_seconds,
        cpu_seconds_per_10k_probes: cpu_seconds
            .filter(|_| probes > 0)
            .map(|cpu| cpu * 10_000.0 / probes as f64),
        connect_us: Percentiles::of(&mut connect),
        total_us: Percentiles::of(&mut total),
    }
}

/// User plus system CPU of this process so far, from /proc/self/stat (Linux reports it in
/// USER_HZ ticks, 100 a second).
fn process_cpu_seconds() -> Option<f64> {
    parse_stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in seconds. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from its last `)`.
fn parse_stat_cpu_seconds(stat: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
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
    #[test]
    fn percentiles_and_cpu() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        let stat = "4242 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu_seconds(stat), Some(2.8));
        assert_eq!(parse_stat_cpu_seconds("garbage"), None);
        assert!(process_cpu_seconds().is_some());
    }

    #[tokio::test]
    async fn repeated_checks_are_summarised() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        });
        let spec: TargetSpec = format!("svc={addr}:tcp").parse().unwrap();
        let summary = repeat_checks(&[spec], Duration::from_secs(2), 20, 4).await;
        accepting.abort();
        assert_eq!((summary.probes, summary.failures), (20, 0));
        assert!(summary.connect_us.p50 > 0.0);
        assert!(summary.cpu_seconds_per_10k_probes.is_some());
    }
}
