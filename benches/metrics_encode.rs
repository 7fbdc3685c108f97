//! `/metrics` encode time at 1k, 5k and 10k peers, in each per-peer metrics mode (criterion).
//!
//!     cargo bench -p efaprobe --bench metrics_encode
//!     benches/metrics_encode.sh            (the same, plus sizes, into benches/results/)
//!
//! The registry holds what an agent's holds after some rounds: N peers (mostly healthy; some
//! `fabric_dropped` with a diagnosis, some `degraded`, a few `down`), both paths' RTTs, the
//! probe counters and RTT histograms (peers spread over 8 topology groups), two targets and the
//! fabric. `encode()` is what a Prometheus scrape costs (OpenMetrics); `text` is the 0.0.4 text
//! format curl gets. Before the timings each case prints one `SIZE` line (bytes and sample
//! lines of each format).
//!
//! Modes (`--per-peer-metrics`): `all` (every peer's series), `unhealthy` (only the 5% of
//! peers in a fault state), `none` (no per-peer series). Cases are named `{mode}/openmetrics`
//! and `{mode}/text`, which benches/metrics_encode.sh reads back.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

use efaprobe::metrics::{ExpositionFormat, Metrics, PerPeerMetrics, ProbePath, ProbeResult};
use efaprobe::probe::{AddressReport, CheckSuccess, TargetReport, TargetSpec};
use efaprobe::state::{
    AgentState, FabricDevice, FabricStatus, PathFailure, PathStatus, PeerStatus,
};
use efaprobe::verdict::{DiagnosisReason, PeerState};

const PEERS: [usize; 3] = [1_000, 5_000, 10_000];
const MODES: [PerPeerMetrics; 3] = [
    PerPeerMetrics::All,
    PerPeerMetrics::Unhealthy,
    PerPeerMetrics::None,
];
/// Topology groups the peers are spread over (the `group` label of the probe families).
const GROUPS: usize = 8;

fn path(rtt: Option<f64>) -> PathStatus {
    PathStatus {
        reachable: Some(rtt.is_some()),
        rtt_seconds: rtt,
        last_failure: rtt.is_none().then_some(PathFailure::Timeout),
        last_error: rtt
            .is_none()
            .then(|| "no answer before the deadline (silently dropped)".to_owned()),
        provider_reason: None,
    }
}

/// Peer `i` of a cluster: an EC2-style node name, and a state drawn deterministically
/// (about 95% healthy, 3% fabric_dropped, 1% degraded, 1% down).
fn peer(i: usize) -> PeerStatus {
    let name = format!(
        "ip-10-{}-{}-{}.ec2.internal",
        i / 65536,
        (i / 256) % 256,
        i % 256
    );
    let ip_rtt = 150e-6 + (i % 97) as f64 * 1e-6;
    let fabric_rtt = 18e-6 + (i % 13) as f64 * 1e-7;
    let (state, reason, ip, fabric, loss) = match i % 100 {
        0..=2 => {
            let reason = [
                DiagnosisReason::FabricTimeout,
                DiagnosisReason::CrossSubnet,
                DiagnosisReason::SecurityGroup,
            ][i % 3];
            let (ip, fabric) = (path(Some(ip_rtt)), path(None));
            (PeerState::FabricDropped, Some(reason), ip, fabric, 1.0)
        }
        3 => (
            PeerState::Degraded,
            Some(DiagnosisReason::HighLatency),
            path(Some(0.08)),
            path(Some(fabric_rtt)),
            0.0,
        ),
        4 => (
            PeerState::Down,
            Some(DiagnosisReason::IpTimeout),
            path(None),
            path(None),
            1.0,
        ),
        _ => (
            PeerState::Healthy,
            None,
            path(Some(ip_rtt)),
            path(Some(fabric_rtt)),
            0.0,
        ),
    };
    PeerStatus {
        address: format!("10.{}.{}.{}:9476", i / 65536, (i / 256) % 256, i % 256),
        name,
        state,
        reason,
        summary: "".into(),
        ip,
        fabric,
        fabric_loss: loss,
        hello: None,
        warnings: Vec::new(),
        since_unix: 1_700_000_000,
        rounds: 100,
        probed: true,
        name_conflict: None,
        rails: Vec::new(),
        peer_rails: None,
    }
}

fn targets() -> Vec<TargetReport> {
    ["nats=10.0.0.10:4222:tcp", "prometheus=10.0.0.11:9090:tcp"]
        .iter()
        .map(|text| {
            let spec = TargetSpec::parse(text).expect("a valid target");
            let address = format!("{}:{}", spec.host, spec.port)
                .parse()
                .expect("IP:PORT");
            TargetReport {
                spec,
                addresses: Ok(vec![AddressReport {
                    address,
                    result: Ok(CheckSuccess {
                        connect_rtt: Duration::from_micros(180),
                        total: Duration::from_micros(200),
                        http_status: None,
                        nats: None,
                    }),
                }]),
                addresses_skipped: 0,
            }
        })
        .collect()
}

/// A registry as an agent with `n` peers in `mode` has it after a few rounds.
fn filled(n: usize, mode: PerPeerMetrics) -> Metrics {
    let fabric = FabricStatus {
        provider: "efa".into(),
        available: true,
        error: None,
        devices: vec![FabricDevice {
            rail: 0,
            domain: "rdmap0s6-rdm".into(),
            provider: "efa".into(),
            address: "fi_addr_efa://[fe80::4a:2bff:fe3c:1d2e]:0:0".into(),
            mac: None,
        }],
    };
    let state = Arc::new(AgentState::new("ip-10-0-0-1.ec2.internal", fabric.clone()));
    let metrics = Metrics::new("0.1.0", state.clone());
    metrics.set_per_peer_mode(mode);
    metrics.set_fabric(&fabric);
    for i in 0..n {
        let status = peer(i);
        let group = format!("pg:cluster-{}", i % GROUPS);
        state.set_peer(&status.address, status.clone());
        for (probe_path, status) in [
            (ProbePath::Ip, &status.ip),
            (ProbePath::Fabric, &status.fabric),
        ] {
            let (result, rtt) = match status.rtt_seconds {
                Some(s) => (ProbeResult::Ok, Some(Duration::from_secs_f64(s))),
                None => (ProbeResult::Timeout, None),
            };
            metrics.record_probe_in_group(probe_path, &group, result, rtt);
        }
    }
    metrics.set_targets(&targets());
    metrics.set_ready(true);
    metrics
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_encode");
    // Tens of milliseconds an iteration at 10k peers: flat sampling, enough time for 20.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for mode in MODES {
        for n in PEERS {
            let metrics = filled(n, mode);
            let openmetrics = metrics.encode();
            let text = metrics.encode_as(ExpositionFormat::PrometheusText);
            let samples = |s: &str| s.lines().filter(|l| !l.starts_with('#')).count();
            println!(
                "SIZE mode={mode} peers={n} openmetrics_bytes={} text_bytes={} samples={}",
                openmetrics.len(),
                text.len(),
                samples(&openmetrics)
            );
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{mode}/openmetrics"), n),
                &metrics,
                |b, m| b.iter(|| black_box(m.encode())),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{mode}/text"), n),
                &metrics,
                |b, m| b.iter(|| black_box(m.encode_as(ExpositionFormat::PrometheusText))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
