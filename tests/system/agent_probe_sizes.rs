//! Varied fabric probe sizes: with UDP datagrams over 1300 bytes dropped between two
//! namespaces (an MTU mismatch), small probes answer and 8192-byte ones (rxd segments them
//! into datagrams near the link MTU) do not. The agent says `degraded`, reason `probe_size`,
//! keeps the fabric reachable, and is healthy again once the rule goes.

use crate::support;

use std::time::Duration;

use support::agent::{Agent, RunningAgent};
use support::metrics::{parse, value, Sample};
use support::netns::{can_run, http_get, Netns, Pair};
use support::process::wait_until;

const PORT: u16 = 9476;

fn agent<'ns>(ns: &'ns Netns, name: &str, ip: &str, peer: &str) -> RunningAgent<'ns> {
    Agent::new(name)
        .ns(ns)
        .listen(format!("{ip}:{PORT}"))
        .args(["--pod-ip", ip])
        .peers(&format!("{peer}:{PORT}"))
        .args([
            "--fabric-provider",
            "udp;ofi_rxd",
            "--interval",
            "1s",
            "--timeout",
            "500ms",
        ])
        .args(["--large-probe-sizes", "1024,8192"])
        .spawn()
}

fn scrape(ns: &Netns, ip: &str) -> Vec<Sample> {
    http_get(ns, &format!("{ip}:{PORT}"), "/metrics")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

#[test]
fn large_probes_lost_on_a_small_mtu_path_are_diagnosed() {
    if !can_run("large_probes_lost_on_a_small_mtu_path_are_diagnosed") {
        return;
    }
    let pair = Pair::new("psize", 43);
    let _a = agent(&pair.a, "node-a", &pair.a_ip, &pair.b_ip);
    let _b = agent(&pair.b, "node-b", &pair.b_ip, &pair.a_ip);
    let state =
        |m: &[Sample], s: &str| value(m, "efa_peer_state", &[("peer", "node-b"), ("state", s)]);
    wait_until("healthy", Duration::from_secs(20), || {
        let m = scrape(&pair.a, &pair.a_ip);
        (state(&m, "healthy") == Some(1.0))
            .then_some(())
            .ok_or("not healthy".into())
    });

    pair.b.nft(
        "table inet efp_mtu {
            chain input { type filter hook input priority 0; policy accept; udp length > 1300 drop; }
        }",
    );
    // 8192 comes every other round, and a state change needs two agreeing rounds.
    wait_until("degraded by probe size", Duration::from_secs(15), || {
        let m = scrape(&pair.a, &pair.a_ip);
        let diagnosed = value(
            &m,
            "efa_peer_diagnosis",
            &[("peer", "node-b"), ("reason", "probe_size")],
        );
        if state(&m, "degraded") == Some(1.0) && diagnosed == Some(1.0) {
            Ok(())
        } else {
            Err("not degraded/probe_size".into())
        }
    });
    let m = scrape(&pair.a, &pair.a_ip);
    assert_eq!(
        value(&m, "efa_peer_reachable", &[("peer", "node-b")]),
        Some(1.0),
        "small probes pass"
    );
    let peers = http_get(&pair.a, &format!("{}:{PORT}", pair.a_ip), "/v1/peers").unwrap();
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    let summary = peers[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("8192-byte probes") && summary.contains("MTU"),
        "{summary}"
    );

    pair.b.nft_flush();
    wait_until("healthy again", Duration::from_secs(20), || {
        let m = scrape(&pair.a, &pair.a_ip);
        (state(&m, "healthy") == Some(1.0))
            .then_some(())
            .ok_or("not healthy".into())
    });
}
