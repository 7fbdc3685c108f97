//! Instance topology end to end: two agents in network namespaces, each with a fake
//! instance-metadata server (scripts/fake-imds.py) on its own loopback. With the fabric's UDP
//! dropped, nodes in different subnets are diagnosed `cross_subnet` and nodes in one subnet
//! `security_group`, on both sides. A slow IMDS does not delay start-up beyond its timeout.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::agent::{Agent, RunningAgent};
use support::imds::FakeImds;
use support::metrics::{parse, value, Sample};
use support::netns::{can_run, http_get, local_http_get, Netns, Pair};
use support::process::wait_until;

const PORT: u16 = 9476;
const IMDS: &str = "127.0.0.1:8169";

fn fake_imds(ns: &Netns, instance: &str, subnet: &str, extra: &[&str]) -> FakeImds {
    let mut args = vec!["--instance-id", instance];
    args.extend([
        "--instance-type",
        "p5.48xlarge",
        "--az",
        "us-east-1a",
        "--subnet",
        subnet,
    ]);
    args.extend(["--vpc", "vpc-0test", "--security-groups", "sg-0efa"]);
    args.extend([
        "--mac",
        "0a:00:00:00:00:01",
        "--placement-group",
        "pg-train",
    ]);
    args.extend(extra);
    FakeImds::start_in(ns, IMDS, &args)
}

fn agent<'ns>(ns: &'ns Netns, name: &str, ip: &str, peer_ip: &str) -> RunningAgent<'ns> {
    Agent::new(name)
        .ns(ns)
        .listen(format!("{ip}:{PORT}"))
        .args(["--pod-ip", ip])
        .peers(&format!("{peer_ip}:{PORT}"))
        .args(["--fabric-provider", "udp;ofi_rxd"])
        .imds(&format!("http://{IMDS}"))
        .args(["--imds-timeout", "2s"])
        .args(["--interval", "1s", "--timeout", "400ms"])
        .spawn()
}

/// An agent on loopback without a fabric nor peers, reading instance metadata from
/// 127.0.0.1:`imds_port`.
fn ip_only_agent(
    name: &str,
    port: u16,
    imds_port: u16,
    imds_timeout: &str,
) -> RunningAgent<'static> {
    Agent::new(name)
        .listen(format!("127.0.0.1:{port}"))
        .args([
            "--fabric-provider",
            "none",
            "--interval",
            "1s",
            "--timeout",
            "500ms",
        ])
        .imds(&format!("http://127.0.0.1:{imds_port}"))
        .args(["--imds-timeout", imds_timeout])
        .spawn()
}

fn scrape(ns: &Netns, ip: &str) -> Vec<Sample> {
    http_get(ns, &format!("{ip}:{PORT}"), "/metrics")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

const DROP_FABRIC: &str = "table inet efp_sg {
    chain input { type filter hook input priority 0; policy accept; meta l4proto udp drop; }
}";

/// Both agents up with their topology, then the fabric dropped: each side names `reason`.
fn diagnose(pair: &Pair, subnet_a: &str, subnet_b: &str, reason: &str, sentence: &str) {
    let _imds_a = fake_imds(&pair.a, "i-0aaaa", subnet_a, &[]);
    let _imds_b = fake_imds(&pair.b, "i-0bbbb", subnet_b, &[]);
    let _a = agent(&pair.a, "node-a", &pair.a_ip, &pair.b_ip);
    let _b = agent(&pair.b, "node-b", &pair.b_ip, &pair.a_ip);
    let sides = [
        (&pair.a, &pair.a_ip, "node-b", subnet_a),
        (&pair.b, &pair.b_ip, "node-a", subnet_b),
    ];

    wait_until("healthy with topology", Duration::from_secs(20), || {
        for (ns, ip, peer, subnet) in sides {
            let m = scrape(ns, ip);
            if value(
                &m,
                "efa_peer_state",
                &[("peer", peer), ("state", "healthy")],
            ) != Some(1.0)
            {
                return Err(format!("{peer} not healthy yet"));
            }
            if value(
                &m,
                "efa_node_topology_info",
                &[("subnet", subnet), ("placement_group", "pg-train")],
            ) != Some(1.0)
            {
                return Err("no topology info".into());
            }
        }
        Ok(())
    });
    pair.b.nft(DROP_FABRIC);
    wait_until(reason, Duration::from_secs(8), || {
        for (ns, ip, peer, _) in sides {
            let m = scrape(ns, ip);
            if value(
                &m,
                "efa_peer_diagnosis",
                &[("peer", peer), ("reason", reason)],
            ) != Some(1.0)
            {
                return Err(format!("{peer}: no {reason} diagnosis"));
            }
        }
        Ok(())
    });
    let peers = http_get(&pair.a, &format!("{}:{PORT}", pair.a_ip), "/v1/peers").unwrap();
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    let summary = peers[0]["summary"].as_str().unwrap();
    assert!(summary.contains(sentence), "{summary}");
    assert_eq!(peers[0]["state"], "fabric_dropped");
    pair.b.nft_flush();
}

#[test]
fn fabric_drops_are_explained_by_placement() {
    if !can_run("fabric_drops_are_explained_by_placement") {
        return;
    }
    let pair = Pair::new("topo", 41);
    diagnose(
        &pair,
        "subnet-0aaa",
        "subnet-0bbb",
        "cross_subnet",
        "different subnets (subnet-0aaa, subnet-0bbb)",
    );
    diagnose(
        &pair,
        "subnet-0aaa",
        "subnet-0aaa",
        "security_group",
        "describe-stale-security-groups",
    );
}

#[test]
fn a_slow_imds_does_not_delay_start_up_beyond_its_timeout() {
    // Loopback only: the fake answers every request after 10 s.
    let imds = FakeImds::start(&["--delay", "10"]);
    let imds_port = imds.addr.port();

    let port = 27_781;
    let started = Instant::now();
    let _agent = ip_only_agent("slow-imds", port, imds_port, "1s");
    let get = |path: &str| local_http_get(&format!("127.0.0.1:{port}"), path);
    while get("/readyz").is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "ready after {took:?} with a 1 s IMDS timeout"
    );
    let m = parse(&get("/metrics").unwrap());
    assert_eq!(value(&m, "efa_node_topology_available", &[]), Some(0.0));
    assert!(value(&m, "efa_node_topology_info", &[]).is_none());
}

#[test]
fn topology_that_arrives_late_is_still_read() {
    // The agent starts while nothing answers for instance metadata (loopback only).
    let (port, imds_port) = (27_782, 27_783);
    let _agent = ip_only_agent("late-imds", port, imds_port, "500ms");
    let metric = |name: &str| {
        let text = local_http_get(&format!("127.0.0.1:{port}"), "/metrics")?;
        value(&parse(&text), name, &[])
    };
    let started = Instant::now();
    while metric("efa_node_topology_available") != Some(0.0) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "agent never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Now instance metadata comes up: the agent's retries find it.
    let _imds = FakeImds::start_on(
        &format!("127.0.0.1:{imds_port}"),
        &["--subnet", "subnet-0late"],
    );
    let started = Instant::now();
    while metric("efa_node_topology_available") != Some(1.0) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "topology never read after IMDS came up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:{port}/v1/hello"),
        ])
        .output()
        .unwrap();
    let hello: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        hello["topology"]["interfaces"][0]["subnet_id"], "subnet-0late",
        "{hello}"
    );
}
