//! The dashboard and the alert rules in each per-peer metrics mode, against a real Prometheus
//! with the shipped rules. Three agents on loopback, one per mode (`all`, `unhealthy`,
//! `none`), probe the same simulated peers plus one address where nothing listens (a peer
//! whose node is gone, and that Prometheus has no target for). Every mode must show that
//! dead peer in the panels built from per-node aggregates, the per-peer panels must name it
//! only where series exist, and the alerts must say it once in each mode: EFAPeerDown from
//! the nodes that name their peers, EFANodePeersUnhealthy from the node that only counts them.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::agent::{simulate_peers, Agent, RunningAgent};
use support::prometheus::{dashboard_panels, LocalPrometheus};

const SIM_PORT: u16 = 27_831;
const PROMETHEUS_PORT: u16 = 27_835;
const PEERS: usize = 6;
const DEAD: &str = "127.1.9.200:27831";
const MODES: [(&str, u16); 3] = [("all", 27_832), ("unhealthy", 27_833), ("none", 27_834)];

fn node(mode: &str) -> String {
    format!("dash-{mode}")
}

/// A series of a query's result: its labels and value.
type Series = (BTreeMap<String, String>, f64);

/// The panel's results (several queries: all of them).
fn panel(prometheus: &LocalPrometheus, title: &str) -> Result<Vec<Series>, String> {
    let panels = dashboard_panels();
    let (_, queries) = panels
        .iter()
        .find(|(t, _)| t == title)
        .unwrap_or_else(|| panic!("no panel {title:?} in the dashboard"));
    let mut series = Vec::new();
    for q in queries {
        for r in prometheus.query(q)? {
            let labels = serde_json::from_value(r["metric"].clone()).unwrap_or_default();
            let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
            series.push((labels, value.unwrap_or(f64::NAN)));
        }
    }
    Ok(series)
}

fn label<'a>(labels: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

fn with<'a>(series: &'a [Series], labels: &[(&str, &str)]) -> Vec<&'a Series> {
    series
        .iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// Everything the test expects, checked at one moment: `Err` says the first that does not
/// hold yet.
fn check(prometheus: &LocalPrometheus) -> Result<(), String> {
    let expect = |what: &str, ok: bool, seen: &dyn std::fmt::Debug| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}: {seen:?}"))
        }
    };
    let nodes: Vec<String> = MODES.iter().map(|(m, _)| node(m)).collect();

    // Panels on per-node aggregates: the dead peer, from every node.
    let by_state = panel(prometheus, "Peers by state, per node")?;
    for n in &nodes {
        let down = with(&by_state, &[("node", n), ("state", "down")]);
        expect(
            &format!("{n} counts one peer down"),
            down.len() == 1 && down[0].1 == 1.0,
            &by_state,
        )?;
    }
    let pairs = panel(prometheus, "Unhealthy pairs by state")?;
    let down = with(&pairs, &[("state", "down")]);
    expect(
        "three pairs down",
        down.len() == 1 && down[0].1 == 3.0,
        &pairs,
    )?;
    let share = panel(prometheus, "Share of peers each node cannot reach")?;
    for n in &nodes {
        let ratio = with(&share, &[("node", n)]);
        let one_in = 1.0 / (PEERS + 1) as f64;
        expect(
            &format!("{n} cannot reach 1 of {} peers", PEERS + 1),
            ratio.len() == 1 && (ratio[0].1 - one_in).abs() < 1e-9,
            &share,
        )?;
    }
    let failing = panel(prometheus, "Failed probes by path and result")?;
    for n in &nodes {
        let ip = with(&failing, &[("node", n), ("path", "ip")]);
        expect(&format!("{n}'s failed IP probes"), !ip.is_empty(), &failing)?;
    }
    let rtt = panel(prometheus, "Probe RTT by path (p50, p99)")?;
    for path in ["ip", "fabric"] {
        let answered = with(&rtt, &[("path", path)]);
        expect(
            &format!("{path} RTT"),
            answered.iter().all(|s| s.1 > 0.0) && answered.len() == 2,
            &rtt,
        )?;
    }
    let modes = panel(prometheus, "Per-peer metrics mode")?;
    for (mode, _) in MODES {
        let count = with(&modes, &[("mode", mode)]);
        expect(
            &format!("one node in mode {mode}"),
            count.len() == 1 && count[0].1 == 1.0,
            &modes,
        )?;
    }
    let agents = panel(prometheus, "Agents")?;
    expect(
        "three agents ready",
        agents.first().is_some_and(|s| s.1 == 3.0),
        &agents,
    )?;

    // Rails (issue 12): each node opened one rail (one bind address), listed with its device,
    // in every mode, and counts its peers per rail from 0 in every mode (none included). No
    // rail is dropped: the dead peer is down (no hello, nothing paired), not rail-dropped.
    let open = panel(prometheus, "Rails open per node")?;
    let listed = panel(prometheus, "Rails (device, MAC)")?;
    let per_rail = prometheus.query("max by (node, rail) (efa_node_rail_unreachable_peers)")?;
    for n in &nodes {
        let rails = with(&open, &[("node", n)]);
        expect(
            &format!("{n} has one rail open"),
            rails.len() == 1 && rails[0].1 == 1.0,
            &open,
        )?;
        let rail0 = with(&listed, &[("node", n), ("rail", "0")]);
        expect(
            &format!("{n}'s rail 0 listed with its device"),
            rail0.len() == 1 && !label(&rail0[0].0, "domain").is_empty(),
            &listed,
        )?;
        let counted = per_rail
            .iter()
            .filter(|r| r["metric"]["node"] == n.as_str() && r["metric"]["rail"] == "0")
            .filter(|r| r["value"][1] == "0")
            .count();
        expect(
            &format!("{n} counts rail 0 dropped to no peer"),
            counted == 1,
            &per_rail,
        )?;
    }
    for title in [
        "Dropped rails now (observer → peer, rail)",
        "Peers each rail is dropped to, per node",
        "Rails not answering, per pair",
    ] {
        let shown = panel(prometheus, title)?;
        expect(
            &format!("{title}: no rail dropped"),
            shown.is_empty(),
            &shown,
        )?;
    }

    // Per-peer panels: the peer is named where its series exist (modes all and unhealthy).
    let observers = panel(prometheus, "Nodes that see each peer down")?;
    let dead = with(&observers, &[("peer", DEAD)]);
    expect(
        "two nodes name the dead peer",
        dead.len() == 1 && dead[0].1 == 2.0,
        &observers,
    )?;
    let down_stat = panel(prometheus, "Peers down")?;
    expect(
        "one peer down",
        down_stat.first().is_some_and(|s| s.1 == 1.0),
        &down_stat,
    )?;
    let problems = panel(prometheus, "Current problems")?;
    let named: BTreeSet<(&str, &str)> = problems
        .iter()
        .map(|(l, _)| (label(l, "node"), label(l, "peer")))
        .collect();
    let want = BTreeSet::from([("dash-all", DEAD), ("dash-unhealthy", DEAD)]);
    expect("the problems table", named == want, &named)?;
    let matrix = panel(prometheus, "Peer state matrix (observer → peer)")?;
    for (mode, rows) in [("all", PEERS + 1), ("unhealthy", 1), ("none", 0)] {
        let n = node(mode);
        let seen = with(&matrix, &[("node", &n)]).len();
        expect(
            &format!("{n}'s rows in the state matrix: {rows}"),
            seen == rows,
            &seen,
        )?;
    }

    // Alerts, pending (their `for:` is minutes): said once per mode, nothing else.
    let alerts: BTreeSet<(String, Vec<(String, String)>)> = prometheus
        .alerts()
        .into_iter()
        .map(|(name, labels, _)| {
            let keep = ["node", "peer", "state"];
            let labels = labels
                .into_iter()
                .filter(|(k, _)| keep.contains(&k.as_str()));
            (name, labels.collect())
        })
        .collect();
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let want = BTreeSet::from([
        ("EFAPeerDown".to_owned(), vec![pair("peer", DEAD)]),
        (
            "EFANodePeersUnhealthy".to_owned(),
            vec![pair("node", "dash-none"), pair("state", "down")],
        ),
    ]);
    expect("alerts", alerts == want, &alerts)
}

#[test]
fn every_mode_shows_the_dead_peer_in_the_dashboard_and_alerts_once() {
    let _heavy = crate::one_heavy_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (_sim, listed) =
        simulate_peers(dir.path(), "dashpeer", PEERS, ("127.1.9.1", SIM_PORT), &[]);
    let peers = format!("{listed},{DEAD}");
    let mut agents: Vec<RunningAgent> = MODES
        .iter()
        .map(|(mode, port)| {
            Agent::new(&node(mode))
                .listen(format!("127.0.0.1:{port}"))
                .args(["--pod-ip", "127.0.0.1"])
                .args([
                    "--fabric-provider",
                    "udp;ofi_rxd",
                    "--fabric-bind",
                    "127.0.0.1",
                ])
                .args(["--interval", "1s", "--timeout", "300ms"])
                .args(["--per-peer-metrics", mode])
                .peers(&peers)
                .spawn()
        })
        .collect();
    let targets: Vec<(String, String)> = MODES
        .iter()
        .map(|(mode, port)| (node(mode), format!("127.0.0.1:{port}")))
        .collect();
    for agent in &mut agents {
        agent.wait_ready();
    }
    let scraped: Vec<(&str, String)> = targets
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    let prometheus = LocalPrometheus::start(PROMETHEUS_PORT, &scraped);

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut why = String::new();
    while Instant::now() < deadline {
        match check(&prometheus) {
            Ok(()) => return,
            Err(e) => why = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("not within 90 s: {why}");
}
