//! The probe schedule on a real agent: with more peers than its budget allows per round, an
//! agent probes at most its capacity each round, rotates through every peer over time, and
//! keeps an unreachable peer in every round once it has seen it fail. The peers are
//! `efaprobe simulate-peers` (hellos over HTTP and fabric responders on loopback), plus one
//! address where nothing listens.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use support::metrics::{parse, value};
use support::netns::local_http_get;
use support::process::Process;

const BIN: &str = env!("CARGO_BIN_EXE_efaprobe");
const SIM_PORT: u16 = 27_811;
const AGENT_PORT: u16 = 27_812;
const PEERS: usize = 24;
const DEAD: &str = "127.1.7.200:27811";

fn scrape(port: u16) -> Option<String> {
    local_http_get(&format!("127.0.0.1:{port}"), "/metrics")
}

/// Peers with a per-peer state series in this exposition.
fn peers_with_series(text: &str) -> BTreeSet<String> {
    parse(text)
        .into_iter()
        .filter(|s| s.name == "efa_peer_state")
        .filter_map(|s| s.labels.get("peer").cloned())
        .collect()
}

#[test]
fn a_small_budget_rotates_through_every_peer_and_watches_the_unreachable_one() {
    let dir = tempfile::tempdir().unwrap();
    let peers_file = dir.path().join("peers");
    let _sim = Process::spawn(
        Command::new(BIN)
            .args(["simulate-peers", "--count", &PEERS.to_string()])
            .args(["--ip-base", "127.1.7.1", "--port", &SIM_PORT.to_string()])
            .args([
                "--fabric-provider",
                "udp;ofi_rxd",
                "--fabric-bind",
                "127.0.0.1",
            ])
            .args(["--fabric-engines", "4", "--name-prefix", "sched"])
            .arg("--peers-file")
            .arg(&peers_file),
    );
    let started = Instant::now();
    while !peers_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "simulator never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peers = format!(
        "{},{DEAD}",
        std::fs::read_to_string(&peers_file).unwrap().trim()
    );
    let _agent = Process::spawn(
        Command::new(BIN)
            .args(["agent", "--node-name", "sched-observer"])
            .args(["--listen", &format!("127.0.0.1:{AGENT_PORT}")])
            .args(["--pod-ip", "127.0.0.1", "--imds-endpoint", "none"])
            .args([
                "--fabric-provider",
                "udp;ofi_rxd",
                "--fabric-bind",
                "127.0.0.1",
            ])
            .args(["--interval", "1s", "--timeout", "300ms"])
            // 5 peers a round out of 25; a new window every round.
            .args(["--probe-budget", "5", "--sample-rotation", "1"])
            .args(["--per-peer-metrics", "all", "--peers", &peers]),
    );

    let mut seen = BTreeSet::new();
    let mut dead_seen_down_at = None;
    let mut scrapes_after_down = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let Some(text) = scrape(AGENT_PORT) else {
            continue;
        };
        let samples = parse(&text);
        let with_series = peers_with_series(&text);
        assert!(
            with_series.len() <= 5,
            "{} peers have series, the budget allows 5: {with_series:?}",
            with_series.len()
        );
        if let Some(probed) = value(&samples, "efa_peers_probed", &[]) {
            assert!(probed <= 5.0, "efa_peers_probed {probed}");
        }
        assert_eq!(value(&samples, "efa_peers", &[]), Some(25.0));
        let dead_down = value(
            &samples,
            "efa_peer_state",
            &[("peer", DEAD), ("state", "down")],
        ) == Some(1.0);
        if dead_seen_down_at.is_none() && dead_down {
            dead_seen_down_at = Some(Instant::now());
        }
        // Once down, it is watched: probed, so with series, in every round after. The
        // schedule's gauges are set as each round starts; the next round starts within a
        // second of the one that found it down, later on a loaded machine.
        if let Some(at) = dead_seen_down_at {
            if at.elapsed() > Duration::from_millis(2500) {
                assert!(
                    dead_down,
                    "the unreachable peer fell out of view:\n{with_series:?}"
                );
                assert!(
                    value(&samples, "efa_probe_schedule_peers", &[("role", "watch")]) >= Some(1.0)
                );
                scrapes_after_down += 1;
            }
        }
        seen.extend(with_series);
        if seen.len() == PEERS + 1 && scrapes_after_down >= 5 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        PEERS + 1,
        "not every peer came up within 60 s: {seen:?}"
    );
    assert!(
        scrapes_after_down >= 5,
        "the dead peer was never seen down long"
    );
    let text = scrape(AGENT_PORT).unwrap();
    assert_eq!(
        value(&parse(&text), "efa_probe_budget_peers", &[]),
        Some(5.0)
    );
}
