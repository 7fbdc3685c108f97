//! Which network interface an IP rail sits on, for real: a veth pair with MACs of its own in
//! a network namespace, the rails' bind addresses on it, and `rail_mac` run inside that
//! namespace (this test again, in a child under `ip netns exec`, which mounts the
//! namespace's own sysfs at /sys). Needs root; see support::netns.

use crate::support;

use std::net::IpAddr;
use std::path::Path;

use efaprobe::inventory::rails::rail_mac;
use support::netns::{can_run, run, Netns};

/// Set in the child that runs inside the namespace.
const IN_NAMESPACE: &str = "EFAPROBE_TEST_RAIL_IDENTITY_NETNS";
const TEST: &str = "rail_identity::an_ip_rail_is_named_by_the_interface_holding_its_address";
/// Given in upper case: sysfs and `rail_mac` say them in lower case.
const MAC_A: &str = "0E:E1:D5:00:00:0A";
const MAC_B: &str = "0E:E1:D5:00:00:0B";

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

#[test]
fn an_ip_rail_is_named_by_the_interface_holding_its_address() {
    if std::env::var_os(IN_NAMESPACE).is_some() {
        return in_the_namespace();
    }
    if !can_run("an_ip_rail_is_named_by_the_interface_holding_its_address") {
        return;
    }
    let ns = Netns::new("eri-ns");
    ns.ip(&[
        "link", "add", "eri-a", "address", MAC_A, "type", "veth", "peer", "name", "eri-b",
        "address", MAC_B,
    ]);
    ns.ip(&["addr", "add", "198.19.213.1/24", "dev", "eri-a"]);
    // A second address under a label (`eri-a:1`), as `getifaddrs` lists it.
    ns.ip(&[
        "addr",
        "add",
        "198.19.213.3/24",
        "dev",
        "eri-a",
        "label",
        "eri-a:1",
    ]);
    ns.ip(&["addr", "add", "198.19.213.2/24", "dev", "eri-b"]);
    ns.ip(&["link", "set", "eri-a", "up"]);
    ns.ip(&["link", "set", "eri-b", "up"]);
    let out = run(ns
        .command(std::env::current_exe().unwrap().to_str().unwrap())
        .args(["--exact", TEST, "--test-threads=1", "--nocapture"])
        .env(IN_NAMESPACE, "1"));
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("1 passed"), "in the namespace:\n{said}");
}

/// Runs inside `eri-ns`: its interfaces, its sysfs.
fn in_the_namespace() {
    let sys = Path::new("/sys");
    let (a, b) = (MAC_A.to_ascii_lowercase(), MAC_B.to_ascii_lowercase());
    assert_eq!(
        rail_mac("udp;ofi_rxd", "udp", ip("198.19.213.1"), sys),
        Some(a.clone())
    );
    assert_eq!(rail_mac("tcp", "tcp", ip("198.19.213.2"), sys), Some(b));
    assert_eq!(
        rail_mac("tcp", "tcp", ip("198.19.213.3"), sys),
        Some(a),
        "a labelled address is its interface's"
    );
    assert_eq!(
        rail_mac("tcp", "tcp", ip("127.0.0.1"), sys),
        None,
        "lo's MAC is all zeros: none"
    );
    assert_eq!(
        rail_mac("tcp", "tcp", ip("198.19.213.9"), sys),
        None,
        "no interface holds it"
    );
}
