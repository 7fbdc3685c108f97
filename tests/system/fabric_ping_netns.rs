//! `efaprobe fabric-ping` between two network namespaces over `udp;ofi_rxd`: a working path,
//! the fabric's UDP dropped by nftables while TCP still passes (the EFA failure this product
//! exists for), the responder killed mid-run, and recovery. Needs root; see support::netns.

use crate::support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::agent::BIN;
use support::netns::{can_run, run, Netns, Pair};
use support::process::{wait_until, Process};

const PROVIDER: &str = "udp;ofi_rxd";
const PORT: &str = "27810";

fn start_responder(pair: &Pair) -> Process {
    let child = pair
        .b
        .command(BIN)
        .args([
            "fabric-ping",
            "--provider",
            PROVIDER,
            "--bind",
            &pair.b_ip,
            "--port",
            PORT,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start responder");
    let responder = Process(child);
    // The exchange port answers once the responder is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = pair
            .a
            .command(BIN)
            .args(["fabric-ping", "--provider", PROVIDER, "--bind", &pair.a_ip])
            .args(["--peer", &format!("{}:{PORT}", pair.b_ip), "--count", "1"])
            .output()
            .unwrap();
        if probe.status.code() != Some(2) {
            return responder;
        }
        assert!(Instant::now() < deadline, "responder never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn prober(pair: &Pair, args: &[&str]) -> Command {
    let mut c = pair.a.command(BIN);
    c.args([
        "fabric-ping",
        "--provider",
        PROVIDER,
        "--bind",
        &pair.a_ip,
        "--json",
    ])
    .args(["--peer", &format!("{}:{PORT}", pair.b_ip)])
    .args(args);
    c
}

/// A counter of `ns`'s own /proc/net/snmp: `protocol` ("Tcp", "Udp") and `name`.
fn snmp_counter(ns: &Netns, protocol: &str, name: &str) -> u64 {
    let out = run(ns.command("cat").arg("/proc/net/snmp"));
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{protocol}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const DROP_FABRIC: &str = "table inet efp_sg {
    chain input {
        type filter hook input priority 0; policy accept;
        meta l4proto udp drop
    }
}";

#[test]
fn fabric_drop_is_told_apart_from_an_unreachable_peer() {
    if !can_run("fabric_drop_is_told_apart_from_an_unreachable_peer") {
        return;
    }
    let pair = Pair::new("fping", 10);
    let mut responder = start_responder(&pair);

    // 1. Both paths work.
    let out = prober(&pair, &["--count", "10", "--interval", "0"])
        .output()
        .unwrap();
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["verdict"], "ok");
    assert_eq!(r["received"], 10);

    // 2. The fabric's UDP is dropped at the responder; TCP still passes. Three probes with a
    //    1 s deadline each must end well within their budget, never hang.
    pair.b.nft(DROP_FABRIC);
    let started = Instant::now();
    let out = prober(
        &pair,
        &["--count", "3", "--interval", "100ms", "--timeout", "1s"],
    )
    .output()
    .unwrap();
    let took = started.elapsed();
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["verdict"], "fabric_dropped", "{r}");
    assert_eq!(r["ip_path_ok"], true);
    assert_eq!(r["received"], 0);
    assert!(r["error"].as_str().unwrap().contains("no answer"), "{r}");
    assert!(took < Duration::from_secs(8), "took {took:?}");

    // 2b. A long blackhole does not use up the prober's transmit resources: rxd never
    //     completes a send on a dead path, so without a per-peer cap every probe would hold a
    //     slot and after ~128 of them nothing could be sent to any peer.
    let out = prober(
        &pair,
        &["--count", "150", "--interval", "0", "--timeout", "20ms"],
    )
    .output()
    .unwrap();
    let r = report(&out);
    assert_eq!(r["verdict"], "fabric_dropped", "{r}");
    assert_eq!(r["outcomes"]["timeout"], 150, "{r}");
    assert_eq!(r["outcomes"]["not_sent"], 0, "{r}");

    // 3. Rule removed: healthy again.
    pair.b.nft_flush();
    let out = prober(&pair, &["--count", "5", "--interval", "0"])
        .output()
        .unwrap();
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["verdict"], "ok");

    // 4. The responder dies in the middle of a run: the prober says unreachable, in time.
    let exchanges = snmp_counter(&pair.b, "Tcp", "PassiveOpens");
    let started = Instant::now();
    let running = prober(
        &pair,
        &["--count", "6", "--interval", "300ms", "--timeout", "1s"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    // Killed mid-run: 500 ms into its pings, which start once it has the responder's address
    // (its exchange connection, accepted in b), however long it took to start.
    wait_until("the prober's exchange", Duration::from_secs(10), || {
        (snmp_counter(&pair.b, "Tcp", "PassiveOpens") > exchanges)
            .then_some(())
            .ok_or_else(|| "no connection accepted yet".to_owned())
    });
    std::thread::sleep(Duration::from_millis(500));
    responder.kill();
    let out = running.wait_with_output().unwrap();
    let took = started.elapsed();
    let r = report(&out);
    assert_eq!(out.status.code(), Some(2), "{r}");
    assert_eq!(r["verdict"], "unreachable", "{r}");
    assert_eq!(r["ip_path_ok"], false);
    assert!(r["received"].as_u64().unwrap() >= 1, "{r}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
}
