//! Every rail, end to end: four nodes in network namespaces, each with two interfaces on two
//! bridges (two rails), over `udp;ofi_rxd` (which lists one domain per interface, as EFA
//! lists one per device). Nodes 1 to 3 open both rails (`--fabric-bind` with both
//! addresses); node 4 opens only rail 0, as a node with a device missing would. Each node's
//! fake instance metadata lists both interfaces by their real MACs: rail 0's in subnets that
//! differ from node to node (what the primary interface would say: `cross_subnet`), rail 1's
//! in one subnet with one group. So rail 1 cut alone between nodes 1 and 2 (IP and rail 0
//! untouched) can only be diagnosed `security_group` from rail 1's own interfaces.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::agent::{Agent, RunningAgent};
use support::imds::FakeImds;
use support::metrics::{parse, value, Sample};
use support::netns::{can_run, http_get, interface_with, mac_of, Lan, Netns, Network};
use support::process::wait_until;

const PORT: u16 = 9477;
const IMDS: &str = "127.0.0.1:8170";
const INTERVAL: Duration = Duration::from_secs(1);

struct Node<'a> {
    ns: &'a Netns,
    name: String,
    ip: String,
}

impl Node<'_> {
    fn peers(&self) -> Vec<Value> {
        http_get(self.ns, &format!("{}:{PORT}", self.ip), "/v1/peers")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    fn peer(&self, name: &str) -> Result<Value, String> {
        self.peers()
            .into_iter()
            .find(|p| p["name"] == name)
            .ok_or_else(|| format!("{} does not list {name} yet", self.name))
    }

    fn scrape(&self) -> Vec<Sample> {
        http_get(self.ns, &format!("{}:{PORT}", self.ip), "/metrics")
            .map(|t| parse(&t))
            .unwrap_or_default()
    }
}

/// `peer` as `node` sees it: its state, and each rail's `reachable` in rail order.
fn rails_of(node: &Node, peer: &str) -> Result<(String, Vec<Value>, Value), String> {
    let p = node.peer(peer)?;
    let rails = p["rails"]
        .as_array()
        .map(|r| r.iter().map(|r| r["reachable"].clone()).collect())
        .unwrap_or_default();
    Ok((p["state"].as_str().unwrap_or("").to_owned(), rails, p))
}

fn whole(node: &Node, peer: &str, rails: usize) -> Result<(), String> {
    let (state, seen, _) = rails_of(node, peer)?;
    let all = vec![Value::Bool(true); rails];
    if state != "healthy" || seen != all {
        return Err(format!(
            "{} sees {peer} {state} with rails {seen:?}, wanted healthy with {all:?}",
            node.name
        ));
    }
    Ok(())
}

#[test]
fn one_rail_cut_alone_is_named_and_diagnosed_from_its_own_interfaces() {
    let _heavy = crate::one_heavy_at_a_time();
    if !can_run("one_rail_cut_alone_is_named_and_diagnosed_from_its_own_interfaces") {
        return;
    }
    let lan = Lan::new("rail", 50, 4);
    let rail1 = Network::attach(&lan, "rl1n", 51);
    let mut imds: Vec<FakeImds> = Vec::new();
    let mut agents: Vec<RunningAgent> = Vec::new();
    let peers: Vec<String> = lan.ips.iter().map(|ip| format!("{ip}:{PORT}")).collect();
    for (n, ns) in lan.hosts.iter().enumerate() {
        let (ip0, ip1) = (&lan.ips[n], &rail1.ips[n]);
        let mac0 = mac_of(ns, &interface_with(ns, ip0));
        let mac1 = mac_of(ns, &rail1.interfaces[n]);
        let subnet0 = format!("subnet-0r0n{n}");
        let extra = format!("{mac1},subnet-0rail1,vpc-0test,sg-0rail1");
        imds.push(FakeImds::start_in(
            ns,
            IMDS,
            &[
                "--instance-id",
                &format!("i-0rail{n}"),
                "--instance-type",
                "p5.48xlarge",
                "--mac",
                &mac0,
                "--subnet",
                &subnet0,
                "--vpc",
                "vpc-0test",
                "--security-groups",
                "sg-0rail0",
                "--extra-interface",
                &extra,
            ],
        ));
        // Node 4 opens rail 0 only.
        let binds = if n == 3 {
            ip0.clone()
        } else {
            format!("{ip0},{ip1}")
        };
        agents.push(
            Agent::new(&format!("node-{}", n + 1))
                .ns(ns)
                .listen(format!("{ip0}:{PORT}"))
                .args(["--pod-ip", ip0])
                .args(["--fabric-bind", &binds])
                .peers(&peers.join(","))
                .args(["--fabric-provider", "udp;ofi_rxd"])
                .imds(&format!("http://{IMDS}"))
                .args(["--imds-timeout", "2s"])
                .args(["--interval", "1s", "--timeout", "400ms"])
                .env("EFAPROBE_LOG", "info")
                .spawn(),
        );
    }
    let nodes: Vec<Node> = lan
        .hosts
        .iter()
        .enumerate()
        .map(|(n, ns)| Node {
            ns,
            name: format!("node-{}", n + 1),
            ip: lan.ips[n].clone(),
        })
        .collect();

    // 1. Whole: two rails paired among nodes 1 to 3, one with node 4, and the difference
    //    said on both sides.
    wait_until("every rail answers", Duration::from_secs(30), || {
        for a in &nodes[..3] {
            for b in nodes[..3].iter().filter(|b| b.name != a.name) {
                whole(a, &b.name, 2)?;
            }
            whole(a, "node-4", 1)?;
            whole(&nodes[3], &a.name, 1)?;
        }
        Ok(())
    });
    let (_, _, four) = rails_of(&nodes[0], "node-4").unwrap();
    assert_eq!(four["peer_rails"], 1, "{four}");
    let warnings = four["warnings"].to_string();
    assert!(
        warnings.contains("the peer has 1 rail(s) and this node 2"),
        "{warnings}"
    );
    // The metrics say the same: node 1's two rails listed with their interfaces' MACs, two
    // rails paired with node 2 and one with node 4, all answering; node 4 has one rail.
    let m = nodes[0].scrape();
    assert_eq!(value(&m, "efa_fabric_rails", &[]), Some(2.0));
    let mac1 = mac_of(nodes[0].ns, &rail1.interfaces[0]);
    assert_eq!(
        value(&m, "efa_rail_info", &[("rail", "1"), ("mac", &mac1)]),
        Some(1.0),
        "rail 1 with its interface's MAC {mac1}"
    );
    for (peer, paired) in [("node-2", 2.0), ("node-4", 1.0)] {
        let p = [("peer", peer)];
        assert_eq!(value(&m, "efa_peer_rails", &p), Some(paired), "{peer}");
        assert_eq!(
            value(&m, "efa_peer_rails_reachable", &p),
            Some(paired),
            "{peer}"
        );
    }
    assert!(m.iter().all(|s| s.name != "efa_peer_rail_unreachable"));
    assert!(
        value(
            &m,
            "efa_rail_probes_total",
            &[("rail", "1"), ("result", "ok")]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(&nodes[3].scrape(), "efa_fabric_rails", &[]),
        Some(1.0)
    );
    let (_, _, one) = rails_of(&nodes[3], "node-1").unwrap();
    assert_eq!(one["peer_rails"], 2, "{one}");
    assert!(
        one["warnings"]
            .to_string()
            .contains("the peer has 2 rail(s) and this node 1"),
        "{one}"
    );
    let hello = http_get(nodes[0].ns, &format!("{}:{PORT}", nodes[0].ip), "/v1/hello").unwrap();
    let hello: Value = serde_json::from_str(&hello).unwrap();
    let endpoints = hello["fabric"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{hello}");
    assert_eq!(endpoints[1]["rail"], 1);
    assert_eq!(
        endpoints[1]["mac"].as_str(),
        Some(mac_of(&lan.hosts[0], &rail1.interfaces[0]).as_str()),
        "rail 1's MAC is its interface's: {hello}"
    );

    // 2. Rail 1 cut between nodes 1 and 2 only: node 1 drops the fabric's UDP to and from
    //    node 2's rail-1 address. Rail 0, IP and node 3 are untouched.
    lan.hosts[0].nft(&format!(
        "table inet efp_rail {{
            chain input {{ type filter hook input priority 0; policy accept; ip saddr {0} meta l4proto udp drop; }}
            chain output {{ type filter hook output priority 0; policy accept; ip daddr {0} meta l4proto udp drop; }}
        }}",
        rail1.ips[1]
    ));
    let took = wait_until("rail 1 dropped between nodes 1 and 2", 6 * INTERVAL, || {
        for (a, b) in [(&nodes[0], "node-2"), (&nodes[1], "node-1")] {
            let (state, seen, p) = rails_of(a, b)?;
            if seen != [Value::Bool(true), Value::Bool(false)] {
                return Err(format!("{} sees {b}'s rails {seen:?}", a.name));
            }
            if state != "fabric_dropped" || p["reason"] != "security_group" {
                return Err(format!("{} sees {b} {state} {}", a.name, p["reason"]));
            }
            if p["ip"]["reachable"] != true {
                return Err(format!("{}: IP to {b} not up", a.name));
            }
            if p["rails"][1]["reason"] != "security_group" {
                return Err(format!("{}: rail 1 to {b}: {}", a.name, p["rails"][1]));
            }
        }
        Ok(())
    });
    eprintln!("rail 1 cut: reported on both sides after {took:?}");
    let (_, _, two) = rails_of(&nodes[0], "node-2").unwrap();
    let summary = two["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("1 of 2 rails answer; not rail 1 ("),
        "the summary names the rail: {summary}"
    );
    assert!(
        summary.contains("sg-0rail1"),
        "rail 1's own group: {summary}"
    );
    assert_eq!(two["fabric"]["reachable"], false, "{two}");
    let m = nodes[0].scrape();
    assert_eq!(
        value(&m, "efa_peer_reachable", &[("peer", "node-2")]),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "efa_peer_ip_reachable", &[("peer", "node-2")]),
        Some(1.0)
    );
    // Rail 1 named in the metrics: dropped to node 2 alone, rail 0 answering.
    let p = [("peer", "node-2")];
    assert_eq!(value(&m, "efa_peer_rails", &p), Some(2.0));
    assert_eq!(value(&m, "efa_peer_rails_reachable", &p), Some(1.0));
    let unreachable: Vec<(&str, &str)> = m
        .iter()
        .filter(|s| s.name == "efa_peer_rail_unreachable")
        .map(|s| (s.labels["peer"].as_str(), s.labels["rail"].as_str()))
        .collect();
    assert_eq!(unreachable, [("node-2", "1")]);
    assert_eq!(
        value(&m, "efa_node_rail_unreachable_peers", &[("rail", "1")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "efa_node_rail_unreachable_peers", &[("rail", "0")]),
        Some(0.0)
    );
    assert!(
        value(
            &m,
            "efa_rail_probes_total",
            &[("rail", "1"), ("result", "timeout")]
        )
        .unwrap()
            > 0.0
    );
    // The third node stays whole on both rails, from both sides of the cut.
    for a in &nodes[..2] {
        whole(a, "node-3", 2).unwrap();
        whole(&nodes[2], &a.name, 2).unwrap();
    }

    // 3. Healed: both rails answer again within two intervals.
    lan.hosts[0].nft_flush();
    let took = wait_until(
        "rail 1 answers again",
        2 * INTERVAL + Duration::from_millis(500),
        || {
            for (a, b) in [(&nodes[0], "node-2"), (&nodes[1], "node-1")] {
                let (_, seen, _) = rails_of(a, b)?;
                if seen != [Value::Bool(true), Value::Bool(true)] {
                    return Err(format!("{} sees {b}'s rails {seen:?}", a.name));
                }
            }
            Ok(())
        },
    );
    eprintln!("rail 1 healed: both rails answer after {took:?}");
    wait_until("healthy again", 6 * INTERVAL, || {
        whole(&nodes[0], "node-2", 2)?;
        whole(&nodes[1], "node-1", 2)
    });
    let m = nodes[0].scrape();
    assert!(m.iter().all(|s| s.name != "efa_peer_rail_unreachable"));
    assert_eq!(
        value(&m, "efa_peer_rails_reachable", &[("peer", "node-2")]),
        Some(2.0)
    );
    drop(agents);
    drop(imds);
}
