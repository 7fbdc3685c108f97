//! `efaprobe simulate-peers --rails N`: every simulated peer lists N rails, each a real
//! endpoint that answers (the simulator's rail-r endpoint). An agent with two rails on
//! loopback (`--fabric-bind` with two addresses of 127.0.0.0/8) pairs two rails with peers
//! that have two, all answering, and one with peers that have one, warned about.

use crate::support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::agent::{simulate_peers, Agent, RunningAgent, BIN};
use support::metrics::{parse, value};
use support::netns::local_http_get;
use support::process::wait_until;

const PEERS: usize = 4;
const PROVIDER: &str = "udp;ofi_rxd";
/// The agent's rail 1 (rail 0 is 127.0.0.1): every 127.0.0.0/8 address is local.
const RAIL_1: &str = "127.2.61.1";

/// An agent with two rails probing `peers` every second.
fn two_rail_agent(name: &str, port: u16, peers: &str) -> RunningAgent<'static> {
    Agent::new(name)
        .listen(format!("127.0.0.1:{port}"))
        .args(["--pod-ip", "127.0.0.1"])
        .args(["--fabric-provider", PROVIDER])
        .args(["--fabric-bind", &format!("127.0.0.1,{RAIL_1}")])
        .args(["--interval", "1s", "--timeout", "500ms"])
        .args(["--per-peer-metrics", "all"])
        .peers(peers)
        .spawn()
}

fn listed_peers(port: u16) -> Vec<Value> {
    local_http_get(&format!("127.0.0.1:{port}"), "/v1/peers")
        .and_then(|body| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Waits until the agent lists every simulated peer healthy with `rails` paired rails, each
/// answering; returns them.
fn wait_whole(port: u16, rails: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    wait_until(
        &format!("every peer healthy on {rails} rail(s)"),
        Duration::from_secs(40),
        || {
            seen = listed_peers(port);
            if seen.len() != PEERS {
                return Err(format!("{} peers listed", seen.len()));
            }
            for p in &seen {
                let answering: Vec<Value> = p["rails"]
                    .as_array()
                    .map(|r| r.iter().map(|r| r["reachable"].clone()).collect())
                    .unwrap_or_default();
                if p["state"] != "healthy" || answering != vec![Value::Bool(true); rails] {
                    return Err(format!("{} {} rails {answering:?}", p["name"], p["state"]));
                }
            }
            Ok(())
        },
    );
    seen
}

fn scrape(port: u16) -> Vec<support::metrics::Sample> {
    parse(&local_http_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap_or_default())
}

#[test]
fn simulated_peers_with_two_rails_answer_on_both() {
    let _heavy = crate::one_heavy_at_a_time();
    const SIM_PORT: u16 = 27_861;
    const AGENT_PORT: u16 = 27_862;
    let dir = tempfile::tempdir().unwrap();
    let (_sim, peers) = simulate_peers(
        dir.path(),
        "simrail",
        PEERS,
        ("127.1.11.1", SIM_PORT),
        &["--rails", "2"],
    );
    let hello = local_http_get(&format!("127.1.11.1:{SIM_PORT}"), "/v1/hello").unwrap();
    let hello: Value = serde_json::from_str(&hello).unwrap();
    let endpoints = hello["fabric"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{hello}");
    assert_eq!(endpoints[0]["rail"], 0);
    assert_eq!(endpoints[1]["rail"], 1);
    assert_ne!(endpoints[0]["address"], endpoints[1]["address"], "{hello}");

    let _agent = two_rail_agent("simrail-observer", AGENT_PORT, &peers);
    for p in wait_whole(AGENT_PORT, 2) {
        assert_eq!(p["peer_rails"], 2, "{p}");
        assert!(
            !p["warnings"].to_string().contains("rail(s)"),
            "no rail difference to warn about: {p}"
        );
    }
    let m = scrape(AGENT_PORT);
    assert_eq!(value(&m, "efa_fabric_rails", &[]), Some(2.0));
    for i in 1..=PEERS {
        let name = format!("simrail-{i:05}");
        let p = [("peer", name.as_str())];
        assert_eq!(value(&m, "efa_peer_rails", &p), Some(2.0), "{name}");
        assert_eq!(
            value(&m, "efa_peer_rails_reachable", &p),
            Some(2.0),
            "{name}"
        );
    }
    // Rail 1's probes went to the simulator's rail-1 endpoint, and it answered.
    let rail1_ok = value(
        &m,
        "efa_rail_probes_total",
        &[("rail", "1"), ("result", "ok")],
    );
    assert!(rail1_ok.is_some_and(|n| n >= PEERS as f64), "{rail1_ok:?}");
}

#[test]
fn simulated_peers_with_one_rail_pair_one_and_say_so() {
    let _heavy = crate::one_heavy_at_a_time();
    const SIM_PORT: u16 = 27_863;
    const AGENT_PORT: u16 = 27_864;
    let dir = tempfile::tempdir().unwrap();
    let (_sim, peers) = simulate_peers(
        dir.path(),
        "simone",
        PEERS,
        ("127.1.12.1", SIM_PORT),
        &["--rails", "1"],
    );
    let _agent = two_rail_agent("simone-observer", AGENT_PORT, &peers);
    for p in wait_whole(AGENT_PORT, 1) {
        assert_eq!(p["peer_rails"], 1, "{p}");
        assert!(
            p["warnings"]
                .to_string()
                .contains("the peer has 1 rail(s) and this node 2"),
            "{p}"
        );
    }
    let m = scrape(AGENT_PORT);
    assert_eq!(value(&m, "efa_fabric_rails", &[]), Some(2.0));
    let p = [("peer", "simone-00001")];
    assert_eq!(value(&m, "efa_peer_rails", &p), Some(1.0));
    assert_eq!(value(&m, "efa_peer_rails_reachable", &p), Some(1.0));
}

#[test]
fn simulate_peers_refuses_rail_counts_a_hello_cannot_list() {
    for rails in ["0", "33", "two"] {
        let out = Command::new(BIN)
            .args([
                "simulate-peers",
                "--count",
                "1",
                "--fabric-provider",
                "none",
            ])
            .args(["--ip-base", "127.1.12.200", "--rails", rails])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "--rails {rails}: {stderr}");
        assert!(
            stderr.contains("invalid setting rails (flag --rails)"),
            "--rails {rails}: {stderr}"
        );
    }
}
