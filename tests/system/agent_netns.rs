//! Three agents in network namespaces with static peers and a real nats-server on a fourth
//! host, over `udp;ofi_rxd`. All healthy; the fabric's UDP dropped between two of them gives
//! `fabric_dropped` on both sides within 3 intervals; an agent stopped is `down` on the
//! others; everything restored is healthy again. Assertions read the scraped `/metrics` text.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use support::agent::{Agent, RunningAgent};
use support::metrics::{parse, value, Sample};
use support::netns::{can_run, http_get, Lan, Netns};
use support::process::{wait_until, Process};

const PORT: u16 = 9476;
const INTERVAL: Duration = Duration::from_secs(1);

fn start_agent<'ns>(ns: &'ns Netns, index: usize, ips: &[String], nats: &str) -> RunningAgent<'ns> {
    let peers: Vec<String> = ips.iter().map(|ip| format!("{ip}:{PORT}")).collect();
    Agent::new(&format!("node-{index}"))
        .ns(ns)
        .listen(format!("{}:{PORT}", ips[index - 1]))
        .args(["--pod-ip", &ips[index - 1]])
        .peers(&peers.join(","))
        .args(["--target", &format!("nats={nats}:4222")])
        .args(["--fabric-provider", "udp;ofi_rxd"])
        .args(["--interval", "1s", "--timeout", "400ms"])
        .env("EFAPROBE_LOG", "info")
        .spawn()
}

fn scrape(lan: &Lan, index: usize) -> Vec<Sample> {
    let addr = format!("{}:{PORT}", lan.ips[index - 1]);
    http_get(&lan.hosts[index - 1], &addr, "/metrics")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

fn state_of(samples: &[Sample], peer: &str, state: &str) -> Option<f64> {
    value(
        samples,
        "efa_peer_state",
        &[("peer", peer), ("state", state)],
    )
}

fn expect(samples: &[Sample], node: usize, peer: &str, state: &str) -> Result<(), String> {
    match state_of(samples, peer, state) {
        Some(1.0) => Ok(()),
        _ => {
            let now: Vec<String> = samples
                .iter()
                .filter(|s| s.name == "efa_peer_state" && s.value == 1.0)
                .map(|s| format!("{}={}", s.labels["peer"], s.labels["state"]))
                .collect();
            Err(format!("node-{node} sees {now:?}, wanted {peer}={state}"))
        }
    }
}

#[test]
fn three_agents_tell_fabric_drops_from_outages() {
    let _heavy = crate::one_heavy_at_a_time();
    if !can_run("three_agents_tell_fabric_drops_from_outages") {
        return;
    }
    let lan = Lan::new("agt3", 30, 4);
    let nats_ip = lan.ips[3].clone();
    let _nats = Process(
        lan.hosts[3]
            .command("nats-server")
            .args([
                "-a",
                &nats_ip,
                "-p",
                "4222",
                "-js",
                "-sd",
                "/tmp/efp-agt3-js",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    let ips = lan.ips[..3].to_vec();
    let mut agents: Vec<Option<RunningAgent>> = (1..=3)
        .map(|i| Some(start_agent(&lan.hosts[i - 1], i, &ips, &nats_ip)))
        .collect();

    // 1. Everyone healthy, NATS up with JetStream, ready.
    wait_until("all healthy", Duration::from_secs(30), || {
        for i in 1..=3 {
            let m = scrape(&lan, i);
            for j in (1..=3).filter(|j| *j != i) {
                expect(&m, i, &format!("node-{j}"), "healthy")?;
                let peer = format!("node-{j}");
                if value(&m, "efa_peer_reachable", &[("peer", &peer)]) != Some(1.0) {
                    return Err(format!("node-{i}: fabric to {peer} not reachable"));
                }
            }
            if value(&m, "efa_target_up", &[("target", "nats")]) != Some(1.0) {
                return Err(format!("node-{i}: nats not up"));
            }
            if value(&m, "efa_agent_ready", &[]) != Some(1.0) {
                return Err(format!("node-{i}: not ready"));
            }
        }
        Ok(())
    });
    let readyz = http_get(&lan.hosts[0], &format!("{}:{PORT}", ips[0]), "/readyz");
    assert!(readyz.is_some(), "/readyz answers 200 once ready");

    // 2. Node 1 drops the fabric's UDP to and from node 2; TCP still passes.
    lan.hosts[0].nft(&format!(
        "table inet efp_sg {{
            chain input {{ type filter hook input priority 0; policy accept; ip saddr {} meta l4proto udp drop; }}
            chain output {{ type filter hook output priority 0; policy accept; ip daddr {} meta l4proto udp drop; }}
        }}",
        ips[1], ips[1]
    ));
    let took = wait_until("fabric_dropped on both sides", 4 * INTERVAL, || {
        for (i, peer) in [(1, "node-2"), (2, "node-1")] {
            let m = scrape(&lan, i);
            expect(&m, i, peer, "fabric_dropped")?;
            if value(&m, "efa_peer_reachable", &[("peer", peer)]) != Some(0.0)
                || value(&m, "efa_peer_ip_reachable", &[("peer", peer)]) != Some(1.0)
            {
                return Err(format!("node-{i}: paths to {peer} not fabric 0 / ip 1"));
            }
            if value(
                &m,
                "efa_peer_diagnosis",
                &[("peer", peer), ("reason", "fabric_timeout")],
            ) != Some(1.0)
            {
                return Err(format!("node-{i}: no fabric_timeout diagnosis for {peer}"));
            }
        }
        Ok(())
    });
    eprintln!("fabric drop detected on both sides after {took:?}");
    assert!(
        took <= 3 * INTERVAL,
        "detection took {took:?}, more than 3 intervals"
    );
    // Node 3 is unaffected.
    let m = scrape(&lan, 3);
    expect(&m, 3, "node-1", "healthy").unwrap();
    expect(&m, 3, "node-2", "healthy").unwrap();

    // 2c. Node 1 also refuses node 2's connections to its agent port: node 2 still reaches
    //     node 1 over the fabric (the address it learned earlier is kept), so it says
    //     ip_blocked, not down.
    lan.hosts[0].nft(&format!(
        "table inet efp_agent_port {{
            chain input {{ type filter hook input priority 0; policy accept; ip saddr {} tcp dport {PORT} drop; }}
        }}",
        ips[1]
    ));
    lan.hosts[0].nft("delete table inet efp_sg");
    wait_until("ip_blocked on node 2", 5 * INTERVAL, || {
        let m = scrape(&lan, 2);
        expect(&m, 2, "node-1", "ip_blocked")?;
        if value(&m, "efa_peer_reachable", &[("peer", "node-1")]) != Some(1.0) {
            return Err("node-2: fabric to node-1 should still work".into());
        }
        Ok(())
    });
    lan.hosts[0].nft_flush();

    // 3. Agent 3 stops (gracefully: exit 0); the others see it down, not fabric_dropped.
    let code = agents[2].take().unwrap().stop();
    assert_eq!(code, Some(0), "agent exits 0 on SIGTERM");
    wait_until("node-3 down", 6 * INTERVAL, || {
        expect(&scrape(&lan, 1), 1, "node-3", "down")?;
        expect(&scrape(&lan, 2), 2, "node-3", "down")
    });

    // 4. Everything restored: healthy again everywhere.
    lan.hosts[0].nft_flush();
    agents[2] = Some(start_agent(&lan.hosts[2], 3, &ips, &nats_ip));
    wait_until("all healthy again", Duration::from_secs(20), || {
        for i in 1..=3 {
            let m = scrape(&lan, i);
            for j in (1..=3).filter(|j| *j != i) {
                expect(&m, i, &format!("node-{j}"), "healthy")?;
            }
            if value(&m, "efa_peer_diagnosis", &[]).is_some() {
                return Err(format!("node-{i} still has a diagnosis"));
            }
        }
        Ok(())
    });
    for agent in agents.into_iter().flatten() {
        assert_eq!(agent.stop(), Some(0));
    }
    let _ = std::fs::remove_dir_all("/tmp/efp-agt3-js");
}
