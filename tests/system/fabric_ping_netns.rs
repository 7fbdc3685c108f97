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

/// Set in the child that [`rails_open_on_the_interfaces_holding_their_bind_addresses`] runs
/// inside its namespace.
const RAILS_CHILD: &str = "EFAPROBE_TEST_RAILS_IN_NETNS";

/// Issue #12 item 1: in a namespace with two interfaces (efr-d0 198.19.212.1/25, efr-d1
/// 198.19.212.129/25), `open_rails` puts each rail on the interface holding its bind
/// address, in the order given, on `udp;ofi_rxd` and `tcp`; two such nodes probe rail to
/// rail; an address no interface holds is refused. The engine reads the interfaces of the
/// namespace it runs in, so the test runs itself again inside it.
#[test]
fn rails_open_on_the_interfaces_holding_their_bind_addresses() {
    const NAME: &str = "rails_open_on_the_interfaces_holding_their_bind_addresses";
    if std::env::var_os(RAILS_CHILD).is_some() {
        rails_in_this_namespace();
        return;
    }
    if !can_run(NAME) {
        return;
    }
    let ns = Netns::new("efr-two");
    for (i, address) in [(0, "198.19.212.1/25"), (1, "198.19.212.129/25")] {
        let (dev, peer) = (format!("efr-d{i}"), format!("efr-p{i}"));
        ns.ip(&["link", "add", &dev, "type", "veth", "peer", "name", &peer]);
        ns.ip(&["addr", "add", address, "dev", &dev]);
        ns.ip(&["link", "set", &dev, "up"]);
        ns.ip(&["link", "set", &peer, "up"]);
    }
    let exe = std::env::current_exe().unwrap();
    let out = run(ns
        .command(exe.to_str().unwrap())
        .env(RAILS_CHILD, "1")
        .args(["--exact", &format!("fabric_ping_netns::{NAME}")])
        .args(["--test-threads", "1", "--nocapture"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test: {stdout}"
    );
}

fn rails_in_this_namespace() {
    use efaprobe::fabric_ping::{self, PingerConfig, ProbeOutcome};
    let binds: Vec<std::net::IpAddr> = ["198.19.212.129", "198.19.212.1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    for provider in ["udp;ofi_rxd", "tcp"] {
        let config = PingerConfig::new(provider);
        let open = || fabric_ping::open_rails(&config, &binds).unwrap();
        let (a, b) = (open(), open());
        for node in [&a, &b] {
            let domains: Vec<&str> = node.iter().map(|r| r.domain()).collect();
            assert_eq!(domains, ["efr-d1", "efr-d0"], "{provider}: in bind order");
            for (rail, bind) in node.iter().zip(&binds) {
                assert!(
                    rail.address_display().contains(&bind.to_string()),
                    "{provider}: rail {} at {}, bound to {bind}",
                    rail.rail(),
                    rail.address_display()
                );
            }
            assert_eq!(node[0].engine_thread(), node[1].engine_thread());
        }
        for i in 0..2 {
            let peer = a[i].add_peer(&b[i].address()).wait().unwrap().unwrap();
            let out = a[i].probe(peer, 64, Duration::from_secs(2)).wait().unwrap();
            assert!(
                matches!(out, ProbeOutcome::Pong { .. }),
                "{provider}: rail {i}: {out:?}"
            );
        }
        a[0].shutdown();
        b[0].shutdown();
        let nowhere: std::net::IpAddr = "198.19.212.77".parse().unwrap();
        let refused = fabric_ping::open_rails(&config, &[binds[0], nowhere]);
        assert!(refused.is_err(), "{provider}: no interface holds {nowhere}");
    }
}
