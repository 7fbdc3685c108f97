//! The probe schedule on a real agent: with more peers than its budget allows per round, an
//! agent probes at most its capacity each round, rotates through every peer over time, and
//! keeps an unreachable peer in every round once it has seen it fail. The peers are
//! `efaprobe simulate-peers` (hellos over HTTP and fabric responders on loopback), plus one
//! address where nothing listens.

use crate::support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use support::agent::{simulate_peers, Agent, RunningAgent, BIN};
use support::imds::FakeImds;
use support::metrics::{parse, value};
use support::netns::local_http_get;

const SIM_PORT: u16 = 27_811;
const AGENT_PORT: u16 = 27_812;
const PEERS: usize = 24;
const PROVIDER: &str = "udp;ofi_rxd";
/// Responders the simulated peers share.
const ENGINES: &[&str] = &["--fabric-engines", "4"];
const DEAD: &str = "127.1.7.200:27811";

// Each test runs a simulator with 4 responders and an agent: on two cores, one at a time
// (with the other heavy tests).
use crate::one_heavy_at_a_time as one_at_a_time;

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

/// An agent on loopback probing `peers` every second, a new sample window every round;
/// `imds`, if any, its fake instance-metadata server.
fn agent(
    name: &str,
    port: u16,
    imds: Option<&FakeImds>,
    extra: &[&str],
    peers: &str,
) -> RunningAgent<'static> {
    let mut agent = Agent::new(name)
        .listen(format!("127.0.0.1:{port}"))
        .args(["--pod-ip", "127.0.0.1"])
        .args(["--fabric-provider", PROVIDER, "--fabric-bind", "127.0.0.1"])
        .args(["--interval", "1s", "--sample-rotation", "1"])
        .args(["--per-peer-metrics", "all"])
        .args(extra)
        .peers(peers);
    if let Some(imds) = imds {
        agent = agent.imds(&imds.endpoint());
    }
    agent.spawn()
}

#[test]
fn a_small_budget_rotates_through_every_peer_and_watches_the_unreachable_one() {
    let _one_at_a_time = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (_sim, listed) =
        simulate_peers(dir.path(), "sched", PEERS, ("127.1.7.1", SIM_PORT), ENGINES);
    let peers = format!("{listed},{DEAD}");
    // 5 peers a round out of 25; a new window every round.
    let _agent = agent(
        "sched-observer",
        AGENT_PORT,
        None,
        &["--timeout", "300ms", "--probe-budget", "5"],
        &peers,
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
        let probed = value(&samples, "efa_peers_probed", &[]);
        assert!(
            probed.is_some_and(|p| p <= 5.0),
            "efa_peers_probed {probed:?}"
        );
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

#[test]
fn the_own_placement_group_is_meshed_and_the_others_sampled() {
    let _one_at_a_time = one_at_a_time();
    const SIM_PORT: u16 = 27_821;
    const AGENT_PORT: u16 = 27_822;
    let dir = tempfile::tempdir().unwrap();
    // Peer i (0-based) is in placement group mesh-pg-(i mod 3); this node is in mesh-pg-0.
    let (_sim, peers) = simulate_peers(
        dir.path(),
        "mesh",
        PEERS,
        ("127.1.8.1", SIM_PORT),
        &["--fabric-engines", "4", "--placement-groups", "3"],
    );
    let in_own_group = |name: &str| {
        let index: usize = name.trim_start_matches("mesh-").parse().unwrap();
        (index - 1) % 3 == 0
    };
    let imds = FakeImds::start(&[
        "--instance-id",
        "i-0mesh",
        "--instance-type",
        "p5.48xlarge",
        "--az",
        "sim-zone-a",
        "--subnet",
        "subnet-mesh",
        "--vpc",
        "vpc-sim",
        "--security-groups",
        "sg-sim",
        "--mac",
        "0a:00:00:00:ff:01",
        "--placement-group",
        "mesh-pg-0",
    ]);
    // 12 peers a round out of 24: the 8 of its own group, 3 of the 16 others, 1 to spare.
    let _agent = agent(
        "mesh-observer",
        AGENT_PORT,
        Some(&imds),
        &[
            "--timeout",
            "500ms",
            "--probe-budget",
            "12",
            "--sample-peers",
            "3",
        ],
        &peers,
    );
    let role = |m: &[support::metrics::Sample], r: &str| {
        value(m, "efa_probe_schedule_peers", &[("role", r)]).unwrap_or(-1.0)
    };

    // Start-up: every peer's group is learnt from its hello, the first probes settle.
    let mut why = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the schedule never settled: {why}"
        );
        std::thread::sleep(Duration::from_millis(300));
        let Some(text) = scrape(AGENT_PORT) else {
            continue;
        };
        let m = parse(&text);
        let roles = ["watch", "mesh", "sample", "learn"].map(|r| role(&m, r));
        if roles == [0.0, 8.0, 3.0, 0.0] {
            break;
        }
        why = format!("roles watch, mesh, sample, learn: {roles:?}");
    }

    // Steady state: the own group in every round, healthy; at most the sample of the others;
    // over rounds, every other peer.
    let mut sampled = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while sampled.len() < 16 {
        assert!(
            Instant::now() < deadline,
            "not every peer of another group was sampled within 40 s: {sampled:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
        let Some(text) = scrape(AGENT_PORT) else {
            continue;
        };
        let m = parse(&text);
        let (own, others): (BTreeSet<String>, BTreeSet<String>) = peers_with_series(&text)
            .into_iter()
            .partition(|p| in_own_group(p));
        assert_eq!(own.len(), 8, "the own group left the schedule: {own:?}");
        // Reachable (a load spike may make one degraded for a while, and watched).
        for peer in &own {
            for state in ["down", "fabric_dropped", "ip_blocked", "unknown"] {
                let v = value(&m, "efa_peer_state", &[("peer", peer), ("state", state)]);
                assert_ne!(v, Some(1.0), "{peer} is {state}");
            }
        }
        // A peer that turned unhealthy or changing is watched on top of the sample.
        let allowed = 3.0 + role(&m, "watch");
        assert!(
            others.len() as f64 <= allowed,
            "{} other-group peers have series, {allowed} allowed: {others:?}",
            others.len()
        );
        let probed = value(&m, "efa_peers_probed", &[]);
        assert!(
            probed.is_some_and(|p| p <= 12.0),
            "efa_peers_probed {probed:?}"
        );
        sampled.extend(others);
    }

    // Ping pairs measured the RTT of the peers probed (every 4th round of each).
    let m = parse(&scrape(AGENT_PORT).unwrap());
    let measured = value(&m, "efa_fabric_rtt_pairs_total", &[("result", "measured")]);
    assert!(measured.is_some_and(|n| n >= 8.0), "{measured:?}");

    // The status page says why a peer out of this round's sample has no verdict.
    let listed = local_http_get(&format!("127.0.0.1:{AGENT_PORT}"), "/v1/peers").unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), PEERS);
    let resting: Vec<&str> = listed
        .iter()
        .filter(|p| p["state"] == "unknown")
        .filter(|p| {
            let summary = p["summary"].as_str().unwrap_or_default();
            summary.contains("outside the peers its probe budget covers")
        })
        .filter_map(|p| p["name"].as_str())
        .collect();
    // 13 are outside this round's sample, fewer while some are watched or between rounds.
    assert!(resting.len() >= 8, "{listed:?}");
    assert!(!resting.iter().any(|n| in_own_group(n)), "{resting:?}");
}

#[test]
fn simulate_peers_refuses_a_prefix_that_makes_invalid_topologies() {
    let out = Command::new(BIN)
        .args([
            "simulate-peers",
            "--count",
            "1",
            "--fabric-provider",
            "none",
        ])
        .args(["--placement-groups", "2", "--name-prefix", &"p".repeat(40)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{said}");
    assert!(said.contains("does not make valid topologies"), "{said}");
}
