//! `efaprobe fabric-ping`: like fi_pingpong, but every probe has a deadline and a broken path
//! is named instead of hanging.
//!
//! Exit codes: 0 every probe answered; 1 the IP path works but the fabric path drops or loses
//! probes; 2 the peer is unreachable over IP too; 3 the local fabric cannot be used; 64 bad
//! arguments.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fabric_ping::exchange::{self, ExchangeEndpoint, ExchangeHello};
use crate::fabric_ping::{self as engine, FabricPinger, ProbeOutcome};
use crate::shutdown::ShutdownSignal;

pub use crate::config::fabric_ping::{Args, DEFAULT_PORT};
use crate::config::ConfigErrors;

pub fn run(args: Args, refused: ConfigErrors) -> ExitCode {
    if !refused.is_empty() {
        refused.print("fabric-ping");
        return ExitCode::from(super::EXIT_USAGE);
    }
    engine::prepare_environment(&args.provider);
    let reclaimed = fabric::process::init();
    tracing::debug!(?reclaimed, "signal handlers taken back from libfabric");
    let runtime = match super::current_thread_runtime("fabric-ping", ExitCode::from(3)) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let signals = match runtime.block_on(async { ShutdownSignal::install() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("efaprobe fabric-ping: cannot install signal handlers: {e}");
            return ExitCode::from(3);
        }
    };
    let pinger = match open_pinger(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "efaprobe fabric-ping: fabric provider {:?} unusable here: {e}",
                args.provider
            );
            return ExitCode::from(3);
        }
    };
    let code = match args.peer {
        None => runtime.block_on(respond(&args, &pinger, signals)),
        Some(peer) => runtime.block_on(probe(&args, &pinger, peer)),
    };
    pinger.shutdown();
    ExitCode::from(code)
}

/// Opens the one rail this run uses: the domain asked for, else the first of the rails
/// `--bind` makes (every device on efa).
fn open_pinger(args: &Args) -> Result<FabricPinger, String> {
    let config = args.pinger_config();
    let mut infos = engine::rail_infos(&config, &[args.bind]).map_err(|e| e.to_string())?;
    let index = match &args.domain {
        None if infos.is_empty() => return Err("no device found".into()),
        None => 0,
        Some(d) => infos
            .iter()
            .position(|info| info.domain_name() == *d)
            .ok_or_else(|| {
                let have: Vec<String> = infos.iter().map(|info| info.domain_name()).collect();
                format!("no domain {d:?} (have {have:?})")
            })?,
    };
    FabricPinger::start(infos.swap_remove(index), config).map_err(|e| e.to_string())
}

async fn respond(args: &Args, pinger: &FabricPinger, mut signals: ShutdownSignal) -> u8 {
    let listen = SocketAddr::new(args.bind, args.port);
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("efaprobe fabric-ping: cannot listen on {listen}: {e}");
            return 3;
        }
    };
    let hello = ExchangeHello {
        efaprobe_exchange: exchange::EXCHANGE_VERSION,
        provider: pinger.provider().to_owned(),
        instance_id: pinger.instance_id(),
        endpoints: vec![ExchangeEndpoint {
            domain: pinger.domain().to_owned(),
            address: pinger.address().to_hex(),
            display: pinger.address_display().to_owned(),
        }],
    };
    println!(
        "responding: provider {} domain {} fabric address {}; exchange on {listen}",
        pinger.provider(),
        pinger.domain(),
        pinger.address_display()
    );
    tokio::select! {
        _ = exchange::serve(listener, hello) => {}
        _ = signals.recv() => {}
    }
    let stats = pinger.stats();
    eprintln!(
        "stopped: answered {} pings; dropped {} malformed messages {:?}",
        stats.pings_answered,
        stats.malformed_total(),
        stats.malformed
    );
    0
}

/// Result of a prober run, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub provider: String,
    pub peer: String,
    pub peer_fabric_address: Option<String>,
    pub sent: u32,
    pub received: u32,
    pub loss_ratio: f64,
    pub rtt_p50_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    pub rtt_max_us: Option<f64>,
    /// `ok`, `degraded` (some probes lost), `fabric_dropped` (IP path fine, no fabric
    /// answer), `unreachable` (IP path fails too).
    pub verdict: &'static str,
    /// Whether the TCP exchange with the peer worked (at the start and, after losses, again).
    pub ip_path_ok: bool,
    /// Probes by outcome: `pong`, `timeout`, `send_failed`, `not_sent`.
    pub outcomes: std::collections::BTreeMap<&'static str, u32>,
    pub error: Option<String>,
}

async fn probe(args: &Args, pinger: &FabricPinger, peer: SocketAddr) -> u8 {
    let mut report = Report {
        provider: pinger.provider().to_owned(),
        peer: peer.to_string(),
        peer_fabric_address: None,
        sent: 0,
        received: 0,
        loss_ratio: 0.0,
        rtt_p50_us: None,
        rtt_p99_us: None,
        rtt_max_us: None,
        verdict: "unreachable",
        ip_path_ok: false,
        outcomes: ["pong", "timeout", "send_failed", "not_sent"]
            .into_iter()
            .map(|k| (k, 0))
            .collect(),
        error: None,
    };
    let hello = match exchange::fetch(peer, args.timeout).await {
        Ok(h) => h,
        Err(e) => {
            report.error = Some(format!("IP path failed: {e}"));
            return finish(args, report, 2);
        }
    };
    report.ip_path_ok = true;
    if hello.provider != pinger.provider() {
        report.verdict = "fabric_dropped";
        report.error = Some(format!(
            "peer uses provider {:?}, this node {:?}: they cannot talk",
            hello.provider,
            pinger.provider()
        ));
        return finish(args, report, 1);
    }
    let endpoint = &hello.endpoints[0];
    report.peer_fabric_address = Some(endpoint.display.clone());
    let raw =
        fabric::EndpointAddress::from_hex(&endpoint.address).expect("validated by exchange::fetch");
    let handle = match pinger.add_peer(&raw).get().await {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            report.verdict = "fabric_dropped";
            report.error = Some(format!("peer's fabric address refused: {e}"));
            return finish(args, report, 1);
        }
        None => {
            report.error = Some("fabric engine stopped".into());
            return finish(args, report, 3);
        }
    };

    let mut rtts = Vec::with_capacity(args.count as usize);
    let mut first_error: Option<String> = None;
    for i in 0..args.count {
        let started = Instant::now();
        let outcome = pinger
            .probe(handle, args.size, args.timeout)
            .get()
            .await
            .unwrap_or(ProbeOutcome::NotSent {
                reason: "fabric engine stopped".into(),
            });
        report.sent += 1;
        let kind = match &outcome {
            ProbeOutcome::Pong { .. } => "pong",
            ProbeOutcome::Timeout => "timeout",
            ProbeOutcome::SendFailed { .. } => "send_failed",
            ProbeOutcome::NotSent { .. } => "not_sent",
        };
        *report.outcomes.entry(kind).or_default() += 1;
        match &outcome {
            ProbeOutcome::Pong { rtt, .. } => {
                report.received += 1;
                rtts.push(*rtt);
            }
            ProbeOutcome::Timeout => {
                first_error.get_or_insert_with(|| {
                    format!("no answer within {:?} (silently dropped)", args.timeout)
                });
            }
            ProbeOutcome::SendFailed { error } => {
                first_error.get_or_insert_with(|| format!("provider error: {error}"));
            }
            ProbeOutcome::NotSent { reason } => {
                first_error.get_or_insert_with(|| format!("probe not sent: {reason}"));
            }
        }
        if args.verbose && !args.json {
            println!("seq={} {}", i + 1, describe(&outcome));
        }
        let pause = args.interval.saturating_sub(started.elapsed());
        // tokio's timer ticks in milliseconds: even a zero sleep would wait for a tick.
        if i + 1 < args.count && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    pinger.remove_peer(handle);

    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    report.rtt_p50_us = percentile(&rtts, 50.0).map(us);
    report.rtt_p99_us = percentile(&rtts, 99.0).map(us);
    report.rtt_max_us = rtts.last().copied().map(us);
    report.loss_ratio = 1.0 - f64::from(report.received) / f64::from(report.sent.max(1));
    if report.received == report.sent {
        report.verdict = "ok";
        return finish(args, report, 0);
    }
    // Probes were lost: is it the fabric, or is the peer gone altogether?
    if let Err(e) = exchange::fetch(peer, args.timeout).await {
        report.ip_path_ok = false;
        report.verdict = "unreachable";
        report.error = Some(format!(
            "fabric probes lost and the IP path fails now too: {e}"
        ));
        return finish(args, report, 2);
    }
    report.verdict = if report.received == 0 {
        "fabric_dropped"
    } else {
        "degraded"
    };
    report.error = first_error;
    finish(args, report, 1)
}

fn describe(outcome: &ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Pong { rtt, dwell, .. } => {
            format!(
                "rtt={:.1}us dwell={:.1}us",
                rtt.as_secs_f64() * 1e6,
                dwell.as_secs_f64() * 1e6
            )
        }
        ProbeOutcome::Timeout => "timeout".into(),
        ProbeOutcome::SendFailed { error } => format!("send failed: {error}"),
        ProbeOutcome::NotSent { reason } => format!("not sent: {reason}"),
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn finish(args: &Args, report: Report, code: u8) -> u8 {
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        );
        return code;
    }
    let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}us"));
    println!(
        "--- {} fabric-ping {} via {}: {} sent, {} received, {:.0}% loss; rtt p50 {} p99 {} max {}",
        report.peer,
        report
            .peer_fabric_address
            .as_deref()
            .unwrap_or("(no fabric address)"),
        report.provider,
        report.sent,
        report.received,
        report.loss_ratio * 100.0,
        fmt(report.rtt_p50_us),
        fmt(report.rtt_p99_us),
        fmt(report.rtt_max_us),
    );
    let meaning = match report.verdict {
        "ok" => "fabric path OK".to_owned(),
        "degraded" => "IP path OK, fabric path loses probes".to_owned(),
        "fabric_dropped" => "IP path OK, fabric path DROPPED".to_owned(),
        _ => "peer UNREACHABLE: the IP path fails too".to_owned(),
    };
    println!("verdict: {} ({meaning})", report.verdict);
    if let Some(e) = &report.error {
        println!("error: {e}");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_micros(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_micros(99)));
        assert_eq!(percentile(&v[..1], 99.0), Some(Duration::from_micros(1)));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
