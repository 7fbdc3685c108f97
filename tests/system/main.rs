//! efaprobe's integration tests in one binary (one link step): its commands run as processes
//! against real components (libfabric providers, nats-server, Prometheus, promtool, dnsmasq,
//! the fake IMDS), on loopback and in network namespaces. Each file is the module of one
//! concern; run one with `cargo test -p efaprobe --test system agent_netns::`.
//!
//! The harness runs these tests side by side. Fixed ports, namespace names and subnets are
//! therefore unique across every file here (see support). The tests that load both cores take
//! [`one_heavy_at_a_time`]. `fabric_ping_loopback` stays a binary of its own: its tests that
//! measure time and memory run alone ([`support::machine`] there), which needs every other
//! test of its binary to take part.

#[path = "../support/mod.rs"]
mod support;

mod agent_hostile_clients;
mod agent_loopback;
mod agent_netns;
mod agent_node_actions;
mod agent_probe_sizes;
mod agent_rails;
mod agent_schedule;
mod agent_topology;
mod alert_rules;
mod dashboard_modes;
mod dashboard_queries;
mod discovery_dns;
mod discovery_kubernetes;
mod fabric_ping_netns;
mod fabric_rxd_stray;
mod lab_scenarios;
mod metrics_promtool;
mod node_actions_kubernetes;
mod rail_identity;
mod simulate_rails;
mod target_checks;
mod topology_imds;

/// Held by a test that loads both cores for long (a simulator with many responders, a
/// Prometheus beside several agents, the lab): two of them side by side on a two-core machine
/// would each see the other's load in their timings.
pub fn one_heavy_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}
