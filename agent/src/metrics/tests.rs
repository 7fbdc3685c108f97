//! Metrics tests: encode after each setter and read the series back from the text.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;
use strum::VariantArray;

use super::*;
use crate::inventory::DeviceCounters;
use crate::probe::nats::NatsServerInfo;
use crate::probe::{AddressReport, CheckSuccess, ProbeFailure, TargetSpec};
use crate::state::{FabricDevice, PathStatus, PeerStatus, ProbeSchedule};
use crate::topology::{NetworkInterface, Topology};
use crate::verdict::{DiagnosisReason, PeerState};

/// One sample line of the exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses sample lines (escapes in label values included); metadata lines are skipped.
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).expect("a sample has a name");
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next().expect("labels end with }");
                match c {
                    '}' => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'));
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("closing quote").1 {
                                '"' => break,
                                '\\' => match chars.next().expect("escaped char").1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                other => value.push(other),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    other => key.push(other),
                }
            }
        }
        let value = rest.trim().parse().expect("a sample value");
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the series `name{labels}` (exactly these labels), if present.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = samples(text)
        .into_iter()
        .filter(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} appears twice:\n{text}");
    found.first().copied()
}

/// Every sample that carries `label="value"`.
fn with_label(text: &str, label: &str, value: &str) -> Vec<Sample> {
    samples(text)
        .into_iter()
        .filter(|s| s.labels.get(label).map(String::as_str) == Some(value))
        .collect()
}

/// `peer` has a series in every per-peer family, and in no other family.
fn assert_has_every_peer_family(text: &str, peer: &str) {
    let families: std::collections::BTreeSet<String> = with_label(text, "peer", peer)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        families,
        PEER_FAMILIES.iter().map(|s| s.to_string()).collect()
    );
}

fn no_fabric() -> FabricStatus {
    FabricStatus {
        provider: "efa".into(),
        available: false,
        error: Some("no EFA device".into()),
        devices: vec![],
    }
}

fn efa_fabric() -> FabricStatus {
    FabricStatus {
        provider: "efa".into(),
        available: true,
        error: None,
        devices: vec![FabricDevice {
            rail: 0,
            domain: "rdmap0s6-rdm".into(),
            provider: "efa".into(),
            address: "fi_addr_efa://[fe80::1]:1:0".into(),
            mac: None,
        }],
    }
}

fn path(reachable: Option<bool>, rtt_seconds: Option<f64>) -> PathStatus {
    PathStatus {
        reachable,
        rtt_seconds,
        last_failure: None,
        last_error: None,
        provider_reason: None,
    }
}

fn peer(name: &str, state: PeerState, reason: Option<DiagnosisReason>) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        address: "198.18.0.2:9464".into(),
        state,
        reason,
        summary: "".into(),
        ip: path(Some(true), Some(0.0004)),
        fabric: path(Some(true), Some(0.00002)),
        fabric_loss: 0.1,
        hello: None,
        warnings: Vec::new(),
        since_unix: 0,
        rounds: 3,
        probed: true,
        name_conflict: None,
        rails: Vec::new(),
        peer_rails: None,
    }
}

/// Metrics and the state they read peers from. The tests set peers in the state as the
/// monitor does (here keyed by name), and read them back from the encoded text.
struct Fixture {
    state: Arc<AgentState>,
    metrics: Metrics,
}

impl Deref for Fixture {
    type Target = Metrics;

    fn deref(&self) -> &Metrics {
        &self.metrics
    }
}

/// Keys of known peers not probed yet, which `set_peer_count` adds to make up a count.
const UNPROBED: &str = "unprobed/";

impl Fixture {
    /// The peer's latest status, probed by this node.
    fn set_peer(&self, peer: &PeerStatus) {
        let mut peer = peer.clone();
        peer.probed = true;
        self.state.set_peer(&peer.name.clone(), peer);
    }

    /// The peer leaves.
    fn remove_peer(&self, name: &str) {
        self.state.remove_peer(name);
    }

    /// A peer known by its first name is now known by `new`: the monitor's next status
    /// names it so (here: the entry under the old name goes; `set_peer` adds the new one).
    fn rename_peer(&self, old: &str, new: &str) {
        if old != new {
            self.remove_peer(old);
        }
    }

    /// The agent knows `n` peers: those set, and known ones not probed yet to make up `n`.
    fn set_peer_count(&self, n: usize) {
        let probed = self
            .state
            .read_peers(|peers| peers.keys().filter(|k| !k.starts_with(UNPROBED)).count());
        for key in self.state.read_peers(|peers| {
            peers
                .keys()
                .filter(|k| k.starts_with(UNPROBED))
                .cloned()
                .collect::<Vec<_>>()
        }) {
            self.state.remove_peer(&key);
        }
        for i in probed..n {
            let mut unprobed = peer(&format!("{UNPROBED}{i}"), PeerState::Unknown, None);
            unprobed.probed = false;
            self.state.set_peer(&unprobed.name.clone(), unprobed);
        }
    }

    /// A round starts with this schedule.
    fn set_schedule(&self, capacity: usize, by_role: &[(&'static str, usize)]) {
        self.state.set_schedule(ProbeSchedule {
            capacity,
            by_role: by_role.to_vec(),
        });
    }

    /// One probe of a peer whose topology group is not known.
    fn record_probe(&self, path: ProbePath, result: ProbeResult, rtt: Option<Duration>) {
        self.record_probe_in_group(path, UNKNOWN_GROUP, result, rtt);
    }
}

fn fixture(fabric: FabricStatus) -> Fixture {
    let state = Arc::new(AgentState::new("gpu-0", fabric));
    Fixture {
        metrics: Metrics::new("0.1.0", state.clone()),
        state,
    }
}

fn metrics() -> Fixture {
    fixture(efa_fabric())
}

fn target(spec: &str, addresses: Result<Vec<AddressReport>, ProbeFailure>) -> TargetReport {
    TargetReport {
        spec: TargetSpec::parse(spec).unwrap(),
        addresses,
        addresses_skipped: 0,
    }
}

fn passed(address: &str, connect_ms: u64, jetstream: Option<bool>) -> AddressReport {
    AddressReport {
        address: address.parse().unwrap(),
        result: Ok(CheckSuccess {
            connect_rtt: Duration::from_millis(connect_ms),
            total: Duration::from_millis(connect_ms + 1),
            http_status: None,
            nats: jetstream.map(|jetstream| NatsServerInfo {
                server_id: "N1".into(),
                server_name: String::new(),
                version: "2.9.10".into(),
                jetstream,
            }),
        }),
    }
}

fn failed(address: &str, reason: FailureReason) -> AddressReport {
    AddressReport {
        address: address.parse().unwrap(),
        result: Err(ProbeFailure::new(reason, "no answer")),
    }
}

const PEER_FAMILIES: [&str; 6] = [
    "efa_peer_reachable",
    "efa_peer_ip_reachable",
    "efa_peer_state",
    "efa_peer_diagnosis",
    "efa_peer_rtt_seconds",
    "efa_peer_fabric_loss_ratio",
];

#[test]
fn a_peer_has_every_series_and_a_departed_one_has_none() {
    let m = metrics();
    m.set_peer(&peer(
        "gpu-1",
        PeerState::FabricDropped,
        Some(DiagnosisReason::FabricTimeout),
    ));
    m.set_peer(&peer("gpu-2", PeerState::Healthy, None));
    let text = m.encode();
    let p = [("peer", "gpu-1")];
    assert_eq!(value(&text, "efa_peer_reachable", &p), Some(1.0));
    assert_eq!(value(&text, "efa_peer_ip_reachable", &p), Some(1.0));
    assert_eq!(value(&text, "efa_peer_fabric_loss_ratio", &p), Some(0.1));
    assert_eq!(
        value(
            &text,
            "efa_peer_rtt_seconds",
            &[("peer", "gpu-1"), ("path", "fabric")]
        ),
        Some(0.00002)
    );
    assert_eq!(
        value(
            &text,
            "efa_peer_diagnosis",
            &[("peer", "gpu-1"), ("reason", "fabric_timeout")]
        ),
        Some(1.0)
    );
    assert_has_every_peer_family(&text, "gpu-1");

    m.remove_peer("gpu-1");
    let text = m.encode();
    assert_eq!(with_label(&text, "peer", "gpu-1"), vec![], "{text}");
    // The other peer is untouched.
    // reachable, ip_reachable, six states, two RTTs, loss; no diagnosis while healthy.
    assert_eq!(with_label(&text, "peer", "gpu-2").len(), 11);
}

#[test]
fn state_is_one_hot_across_changes() {
    let m = metrics();
    for state in PeerState::VARIANTS.iter().copied() {
        m.set_peer(&peer("gpu-1", state, Some(DiagnosisReason::IpTimeout)));
        let text = m.encode();
        let states: Vec<Sample> = with_label(&text, "peer", "gpu-1")
            .into_iter()
            .filter(|s| s.name == "efa_peer_state")
            .collect();
        assert_eq!(states.len(), PeerState::VARIANTS.len());
        let hot: Vec<&str> = states
            .iter()
            .filter(|s| s.value == 1.0)
            .map(|s| s.labels["state"].as_str())
            .collect();
        assert_eq!(hot, [state.as_str()]);
        assert!(states.iter().all(|s| s.value == 1.0 || s.value == 0.0));
    }
}

#[test]
fn diagnosis_follows_the_reason_and_goes_when_healthy() {
    let m = metrics();
    let diagnoses = |m: &Metrics| -> Vec<String> {
        with_label(&m.encode(), "peer", "gpu-1")
            .into_iter()
            .filter(|s| s.name == "efa_peer_diagnosis")
            .map(|s| s.labels["reason"].clone())
            .collect()
    };
    m.set_peer(&peer(
        "gpu-1",
        PeerState::FabricDropped,
        Some(DiagnosisReason::FabricTimeout),
    ));
    assert_eq!(diagnoses(&m), ["fabric_timeout"]);
    m.set_peer(&peer(
        "gpu-1",
        PeerState::FabricDropped,
        Some(DiagnosisReason::ProviderError),
    ));
    assert_eq!(diagnoses(&m), ["provider_error"]);
    m.set_peer(&peer("gpu-1", PeerState::Unknown, None));
    assert_eq!(diagnoses(&m), Vec::<String>::new());
    m.set_peer(&peer(
        "gpu-1",
        PeerState::Down,
        Some(DiagnosisReason::IpTimeout),
    ));
    assert_eq!(diagnoses(&m), ["ip_timeout"]);
    // A reason left over on a healthy peer is not a diagnosis.
    m.set_peer(&peer(
        "gpu-1",
        PeerState::Healthy,
        Some(DiagnosisReason::IpTimeout),
    ));
    assert_eq!(diagnoses(&m), Vec::<String>::new());
}

#[test]
fn unprobed_paths_and_unknown_rtts_have_no_series() {
    let m = metrics();
    let mut p = peer(
        "gpu-1",
        PeerState::Unknown,
        Some(DiagnosisReason::LocalNoFabric),
    );
    m.set_peer(&p);
    p.fabric = path(None, None);
    p.ip = path(Some(false), None);
    m.set_peer(&p);
    let text = m.encode();
    let names: Vec<String> = with_label(&text, "peer", "gpu-1")
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n != "efa_peer_state")
        .collect();
    assert_eq!(names, ["efa_peer_ip_reachable", "efa_peer_diagnosis"]);
    assert_eq!(
        value(&text, "efa_peer_ip_reachable", &[("peer", "gpu-1")]),
        Some(0.0)
    );
}

#[test]
fn a_renamed_peer_leaves_nothing_under_its_address() {
    let m = metrics();
    m.set_peer(&peer(
        "198.18.0.2:9464",
        PeerState::Down,
        Some(DiagnosisReason::IpRefused),
    ));
    m.rename_peer("198.18.0.2:9464", "gpu-1");
    m.set_peer(&peer("gpu-1", PeerState::Healthy, None));
    let text = m.encode();
    assert_eq!(with_label(&text, "peer", "198.18.0.2:9464"), vec![]);
    assert_eq!(
        value(
            &text,
            "efa_peer_state",
            &[("peer", "gpu-1"), ("state", "healthy")]
        ),
        Some(1.0)
    );
    // Renaming to the same name keeps the series.
    m.rename_peer("gpu-1", "gpu-1");
    assert!(!with_label(&m.encode(), "peer", "gpu-1").is_empty());
}

#[test]
fn target_addresses_and_their_departure() {
    let m = metrics();
    let two = target(
        "nats=nats.svc:4222",
        Ok(vec![
            passed("198.18.1.10:4222", 2, Some(true)),
            failed("198.18.1.11:4222", FailureReason::Timeout),
        ]),
    );
    m.set_targets(std::slice::from_ref(&two));
    m.set_targets(std::slice::from_ref(&two));
    let text = m.encode();
    let a = [("target", "nats"), ("address", "198.18.1.10:4222")];
    let b = [("target", "nats"), ("address", "198.18.1.11:4222")];
    assert_eq!(value(&text, "efa_target_up", &a), Some(1.0));
    assert_eq!(value(&text, "efa_target_up", &b), Some(0.0));
    assert_eq!(value(&text, "efa_target_rtt_seconds", &a), Some(0.002));
    assert_eq!(value(&text, "efa_target_rtt_seconds", &b), None);
    assert_eq!(value(&text, "efa_target_nats_jetstream", &a), Some(1.0));
    assert_eq!(value(&text, "efa_target_nats_jetstream", &b), None);
    let failures = |text: &str, address: &str, reason: &str| {
        value(
            text,
            "efa_target_failures_total",
            &[("target", "nats"), ("address", address), ("reason", reason)],
        )
    };
    assert_eq!(failures(&text, "198.18.1.11:4222", "timeout"), Some(2.0));
    assert_eq!(failures(&text, "198.18.1.11:4222", "refused"), Some(0.0));
    assert_eq!(failures(&text, "198.18.1.10:4222", "timeout"), Some(0.0));
    assert_eq!(failures(&text, "nats.svc:4222", "dns"), Some(0.0));
    assert_eq!(failures(&text, "198.18.1.10:4222", "dns"), None);
    // A NATS check never sees an HTTP status.
    assert_eq!(failures(&text, "198.18.1.10:4222", "http_status"), None);

    // The failing address left the name: its gauges go, its counters stay.
    let one = target(
        "nats=nats.svc:4222",
        Ok(vec![passed("198.18.1.10:4222", 3, Some(false))]),
    );
    m.set_targets(&[one]);
    let text = m.encode();
    assert_eq!(value(&text, "efa_target_up", &b), None, "{text}");
    assert_eq!(value(&text, "efa_target_nats_jetstream", &a), Some(0.0));
    assert_eq!(failures(&text, "198.18.1.11:4222", "timeout"), Some(2.0));

    // The name stops resolving: one series under the name, counted as dns.
    let unresolved = target(
        "nats=nats.svc:4222",
        Err(ProbeFailure::new(FailureReason::Dns, "NXDOMAIN")),
    );
    m.set_targets(&[unresolved]);
    let text = m.encode();
    let named = [("target", "nats"), ("address", "nats.svc:4222")];
    assert_eq!(value(&text, "efa_target_up", &named), Some(0.0));
    assert_eq!(value(&text, "efa_target_up", &a), None);
    assert_eq!(value(&text, "efa_target_rtt_seconds", &a), None);
    assert_eq!(value(&text, "efa_target_nats_jetstream", &a), None);
    assert_eq!(failures(&text, "nats.svc:4222", "dns"), Some(1.0));

    // The target is no longer configured: nothing of it stays.
    m.set_targets(&[]);
    let text = m.encode();
    assert_eq!(with_label(&text, "target", "nats"), vec![], "{text}");
}

#[test]
fn ip_literal_targets_have_no_dns_series() {
    let m = metrics();
    m.set_targets(&[target(
        "prom=198.18.1.20:9090",
        Ok(vec![failed("198.18.1.20:9090", FailureReason::HttpStatus)]),
    )]);
    let text = m.encode();
    let reasons: Vec<String> = with_label(&text, "target", "prom")
        .into_iter()
        .filter(|s| s.name == "efa_target_failures_total")
        .map(|s| s.labels["reason"].clone())
        .collect();
    assert!(!reasons.contains(&"dns".to_owned()), "{reasons:?}");
    assert_eq!(
        value(
            &text,
            "efa_target_failures_total",
            &[
                ("target", "prom"),
                ("address", "198.18.1.20:9090"),
                ("reason", "http_status")
            ]
        ),
        Some(1.0)
    );
}

#[test]
fn fabric_devices_are_replaced() {
    let m = fixture(no_fabric());
    let text = m.encode();
    assert_eq!(
        value(&text, "efa_fabric_available", &[("provider", "efa")]),
        Some(0.0)
    );
    assert!(samples(&text)
        .iter()
        .all(|s| s.name != "efa_fabric_device_info"));
    m.set_fabric(&efa_fabric());
    let device = [
        ("provider", "efa"),
        ("domain", "rdmap0s6-rdm"),
        ("address", "fi_addr_efa://[fe80::1]:1:0"),
    ];
    let text = m.encode();
    assert_eq!(value(&text, "efa_fabric_device_info", &device), Some(1.0));
    assert_eq!(
        value(&text, "efa_fabric_available", &[("provider", "efa")]),
        Some(1.0)
    );
    m.set_fabric(&FabricStatus {
        provider: "tcp".into(),
        ..no_fabric()
    });
    let text = m.encode();
    assert_eq!(value(&text, "efa_fabric_device_info", &device), None);
    assert_eq!(
        value(&text, "efa_fabric_available", &[("provider", "efa")]),
        None
    );
    assert_eq!(
        value(&text, "efa_fabric_available", &[("provider", "tcp")]),
        Some(0.0)
    );
}

#[test]
fn probes_are_counted_without_peer_labels() {
    let m = metrics();
    let text = m.encode();
    // Without a group, probes count under group "unknown".
    let ok_ip = [("path", "ip"), ("group", "unknown"), ("result", "ok")];
    assert_eq!(value(&text, "efa_probes_total", &ok_ip), Some(0.0));
    // Only results a path can have are there before they happen.
    let fabric_dns = [("path", "fabric"), ("group", "unknown"), ("result", "dns")];
    assert_eq!(value(&text, "efa_probes_total", &fabric_dns), None);
    assert_eq!(
        value(
            &text,
            "efa_probes_total",
            &[
                ("path", "fabric"),
                ("group", "unknown"),
                ("result", "provider_error")
            ]
        ),
        Some(0.0)
    );
    m.record_probe(
        ProbePath::Ip,
        ProbeResult::Ok,
        Some(Duration::from_micros(400)),
    );
    m.record_probe(ProbePath::Fabric, ProbeResult::Timeout, None);
    m.record_probe(
        ProbePath::Fabric,
        ProbeResult::Ok,
        Some(Duration::from_micros(20)),
    );
    let text = m.encode();
    assert_eq!(value(&text, "efa_probes_total", &ok_ip), Some(1.0));
    assert_eq!(
        value(
            &text,
            "efa_probes_total",
            &[
                ("path", "fabric"),
                ("group", "unknown"),
                ("result", "timeout")
            ]
        ),
        Some(1.0)
    );
    let bucket = |path: &str, le: &str| {
        value(
            &text,
            "efa_probe_rtt_seconds_bucket",
            &[("path", path), ("group", "unknown"), ("le", le)],
        )
    };
    assert_eq!(bucket("fabric", "0.00001"), Some(0.0), "{text}");
    assert_eq!(bucket("fabric", "0.000025"), Some(1.0));
    assert_eq!(bucket("ip", "0.00025"), Some(0.0));
    assert_eq!(bucket("ip", "0.0005"), Some(1.0));
    assert_eq!(bucket("ip", "+Inf"), Some(1.0));
    assert_eq!(
        value(
            &text,
            "efa_probe_rtt_seconds_count",
            &[("path", "fabric"), ("group", "unknown")]
        ),
        Some(1.0)
    );
    assert!(samples(&text)
        .iter()
        .filter(|s| s.name.starts_with("efa_probe"))
        .all(|s| !s.labels.contains_key("peer")));
}

/// The sample lines of one family, by the family's name in `# TYPE`.
fn family_lines(text: &str, family: &str) -> Vec<String> {
    samples(text)
        .into_iter()
        .filter(|s| {
            s.name
                .strip_prefix(family)
                .is_some_and(|suffix| ["", "_total", "_bucket", "_sum", "_count"].contains(&suffix))
        })
        .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
        .collect()
}

/// Exercises every setter once. Fails when a family is registered but no setter (or the
/// constructor, for build info) ever changes it: a metric declared and forgotten.
#[test]
fn every_registered_family_is_updated_by_a_setter() {
    let m = fixture(no_fabric());
    let before = m.encode();
    // Rail 1 dropped: the rail families have a series to show (the claimant below takes the
    // name's other series from nothing).
    m.set_peer(&PeerStatus {
        reason: Some(DiagnosisReason::FabricTimeout),
        ..railed_peer("gpu-1", &[Some(true), Some(false)])
    });
    m.record_rail_probe(1, ProbeResult::Timeout);
    m.record_probe(
        ProbePath::Fabric,
        ProbeResult::Ok,
        Some(Duration::from_micros(30)),
    );
    m.set_targets(&[target(
        "nats=nats.svc:4222",
        Ok(vec![
            passed("198.18.1.10:4222", 2, Some(true)),
            failed("198.18.1.11:4222", FailureReason::Refused),
        ]),
    )]);
    m.set_fabric(&efa_fabric());
    m.set_topology(Some(&topology(Some("pg-1"))));
    m.set_device_counters(&[device("rdmap0s6", &[("tx_bytes", 10)])]);
    m.set_ready(true);
    m.set_peer_count(1);
    m.set_per_peer_mode(PerPeerMetrics::Unhealthy);
    m.set_schedule(100, &[("watch", 1), ("mesh", 0)]);
    m.record_rtt_pair(false);
    m.node_action_errors().record(
        super::node_actions::NodeAction::Condition,
        super::node_actions::NodeActionFailure::Forbidden,
    );
    m.verify_requests()
        .record(super::verify::VerifyResult::RateLimited);
    claimed(&m, "198.18.0.7:9476", "gpu-1", 7, PeerState::Healthy);
    let after = m.encode();

    // 28 families, efa_verify_requests (issue #13, the preflight's verifies),
    // efa_peer_name_conflicts (issue #15), and the rails' seven (issue #12: efa_fabric_rails,
    // efa_rail_info, efa_rail_probes, efa_peer_rails, efa_peer_rails_reachable,
    // efa_peer_rail_unreachable, efa_node_rail_unreachable_peers).
    assert_eq!(m.family_names().len(), 37);
    for family in m.family_names() {
        assert!(
            after.contains(&format!("\n# TYPE {family} ")),
            "{family} is registered but not encoded:\n{after}"
        );
        let lines = family_lines(&after, family);
        assert!(!lines.is_empty(), "{family} has no samples");
        if family != "efa_build_info" {
            assert_ne!(
                lines,
                family_lines(&before, family),
                "no setter changes {family}"
            );
        }
    }
}

#[test]
fn both_exposition_formats() {
    let m = metrics();
    m.record_probe(ProbePath::Ip, ProbeResult::Ok, None);
    let openmetrics = m.encode_as(ExpositionFormat::OpenMetrics);
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(openmetrics.contains("# TYPE efa_probes counter\n"));
    assert!(openmetrics.contains("# UNIT efa_probe_rtt_seconds seconds\n"));
    let text = m.encode_as(ExpositionFormat::PrometheusText);
    assert!(!text.contains("# EOF"));
    assert!(!text.contains("# UNIT"));
    assert!(text.contains("# TYPE efa_probes_total counter\n"));
    // Same samples either way.
    assert_eq!(samples(&openmetrics), samples(&text));
}

#[test]
fn hostile_peer_names_cannot_break_the_exposition() {
    let m = metrics();
    m.set_peer(&peer(
        "evil\"} 1\nefa_agent_ready 1\n#",
        PeerState::Down,
        Some(DiagnosisReason::IpTimeout),
    ));
    let text = m.encode();
    // Parses, and the name comes back whole.
    let hostile = with_label(&text, "peer", "evil\"} 1\nefa_agent_ready 1\n#");
    assert_eq!(hostile.len(), 12, "{text}");
    assert_eq!(value(&text, "efa_agent_ready", &[]), Some(0.0));
}

fn topology(placement_group: Option<&str>) -> Topology {
    let interface = |mac: &str, subnet: &str| NetworkInterface {
        mac: mac.into(),
        subnet_id: subnet.into(),
        vpc_id: "vpc-0a".into(),
        security_group_ids: vec!["sg-0a".into()],
        subnet_cidr: None,
    };
    Topology {
        instance_id: "i-0123456789abcdef0".into(),
        instance_type: "p5.48xlarge".into(),
        availability_zone: "us-east-1a".into(),
        availability_zone_id: Some("use1-az4".into()),
        placement_group: placement_group.map(str::to_owned),
        primary_mac: "0e:00:00:00:00:02".into(),
        interfaces: vec![
            interface("0e:00:00:00:00:01", "subnet-secondary"),
            interface("0e:00:00:00:00:02", "subnet-primary"),
        ],
    }
}

fn device(name: &str, counters: &[(&str, u64)]) -> DeviceCounters {
    DeviceCounters {
        device: name.into(),
        port: "1".into(),
        counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

#[test]
fn topology_is_one_info_series_or_none_and_said_so() {
    let m = metrics();
    let text = m.encode();
    assert_eq!(value(&text, "efa_node_topology_available", &[]), Some(0.0));
    assert!(samples(&text)
        .iter()
        .all(|s| s.name != "efa_node_topology_info"));

    let labels = |subnet: &str, placement_group: &str| {
        [
            ("instance_id", "i-0123456789abcdef0"),
            ("instance_type", "p5.48xlarge"),
            ("availability_zone", "us-east-1a"),
            ("subnet", subnet),
            ("vpc", "vpc-0a"),
            ("placement_group", placement_group),
        ]
        .map(|(k, v)| (k, v.to_owned()))
    };
    let info = |text: &str| -> Vec<Sample> {
        samples(text)
            .into_iter()
            .filter(|s| s.name == "efa_node_topology_info")
            .collect()
    };
    let as_map = |pairs: [(&str, String); 6]| -> BTreeMap<String, String> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };

    // The primary interface's subnet, not the first one's.
    m.set_topology(Some(&topology(Some("pg-1"))));
    let text = m.encode();
    assert_eq!(value(&text, "efa_node_topology_available", &[]), Some(1.0));
    let found = info(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert_eq!(found[0].labels, as_map(labels("subnet-primary", "pg-1")));
    assert_eq!(found[0].value, 1.0);

    // Out of the placement group: the old series goes, the label is empty.
    m.set_topology(Some(&topology(None)));
    let found = info(&m.encode());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].labels, as_map(labels("subnet-primary", "")));

    // No primary interface known: empty subnet and VPC rather than no series.
    let mut odd = topology(None);
    odd.interfaces.clear();
    m.set_topology(Some(&odd));
    let found = info(&m.encode());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].labels["subnet"], "");
    assert_eq!(found[0].labels["vpc"], "");

    m.set_topology(None);
    let text = m.encode();
    assert_eq!(info(&text), vec![], "{text}");
    assert_eq!(value(&text, "efa_node_topology_available", &[]), Some(0.0));
}

#[test]
fn hardware_counters_follow_the_devices() {
    let m = metrics();
    let counter = |text: &str, device: &str, name: &str| {
        value(
            text,
            "efa_device_hw_stat_total",
            &[("device", device), ("port", "1"), ("counter", name)],
        )
    };
    m.set_device_counters(&[
        device("rdmap0s6", &[("tx_bytes", 4096), ("rx_drops", 0)]),
        device("rdmap0s7", &[("tx_bytes", u64::MAX)]),
    ]);
    let openmetrics = m.encode();
    assert!(
        openmetrics.contains("# TYPE efa_device_hw_stat counter\n"),
        "{openmetrics}"
    );
    assert_eq!(counter(&openmetrics, "rdmap0s6", "tx_bytes"), Some(4096.0));
    assert_eq!(counter(&openmetrics, "rdmap0s6", "rx_drops"), Some(0.0));
    // The largest value a device can count is written exactly, not as a float.
    assert!(
        openmetrics.contains(&format!(
            "efa_device_hw_stat_total{{device=\"rdmap0s7\",port=\"1\",counter=\"tx_bytes\"}} {}\n",
            u64::MAX
        )),
        "{openmetrics}"
    );
    let text = m.encode_as(ExpositionFormat::PrometheusText);
    assert!(text.contains("# TYPE efa_device_hw_stat_total counter\n"));

    // rdmap0s7 is gone, and rdmap0s6 lost a counter: so do their series.
    m.set_device_counters(&[device("rdmap0s6", &[("tx_bytes", 8192)])]);
    let text = m.encode();
    assert_eq!(counter(&text, "rdmap0s6", "tx_bytes"), Some(8192.0));
    assert_eq!(counter(&text, "rdmap0s6", "rx_drops"), None);
    assert_eq!(with_label(&text, "device", "rdmap0s7"), vec![], "{text}");

    m.set_device_counters(&[]);
    let text = m.encode();
    assert!(!text.contains("efa_device_hw_stat"), "{text}");
}

// Per-peer modes (`--per-peer-metrics`) and the per-node aggregates.

/// Every sample that carries a `peer` label, as `name{labels} value` lines, sorted: the
/// whole per-peer part of the exposition.
fn per_peer_lines(m: &Metrics) -> Vec<String> {
    let mut lines: Vec<String> = samples(&m.encode())
        .into_iter()
        .filter(|s| s.labels.contains_key("peer"))
        .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
        .collect();
    lines.sort();
    lines
}

/// The names of the peers that have any series.
fn peers_with_series(m: &Metrics) -> std::collections::BTreeSet<String> {
    samples(&m.encode())
        .into_iter()
        .filter_map(|s| s.labels.get("peer").cloned())
        .collect()
}

/// `efa_peers_by_state` as (state, count), every state present.
fn by_state(m: &Metrics) -> BTreeMap<String, f64> {
    let found: BTreeMap<String, f64> = samples(&m.encode())
        .into_iter()
        .filter(|s| s.name == "efa_peers_by_state")
        .map(|s| (s.labels["state"].clone(), s.value))
        .collect();
    let states: Vec<&str> = found.keys().map(String::as_str).collect();
    let mut all: Vec<&str> = PeerState::VARIANTS.iter().map(|s| s.as_str()).collect();
    all.sort();
    assert_eq!(states, all, "every state, always");
    found
}

/// The modes `efa_per_peer_metrics_mode` has at 1 (must be exactly one), and that all three
/// series are there.
fn mode_in_gauge(m: &Metrics) -> String {
    let text = m.encode();
    let modes: Vec<Sample> = samples(&text)
        .into_iter()
        .filter(|s| s.name == "efa_per_peer_metrics_mode")
        .collect();
    assert_eq!(modes.len(), 3, "{text}");
    let hot: Vec<String> = modes
        .iter()
        .filter(|s| s.value == 1.0)
        .map(|s| s.labels["mode"].clone())
        .collect();
    assert_eq!(hot.len(), 1, "one-hot: {modes:?}");
    assert!(modes.iter().all(|s| s.value == 0.0 || s.value == 1.0));
    hot[0].clone()
}

/// A Metrics built from scratch in `setting` with these peers: what a switched one must
/// equal.
fn fresh(setting: PerPeerMetrics, peers: &[PeerStatus]) -> Fixture {
    let m = metrics();
    m.set_per_peer_mode(setting);
    for p in peers {
        m.set_peer(p);
    }
    m.set_peer_count(peers.len());
    m
}

fn counts(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, f64> = PeerState::VARIANTS
        .iter()
        .map(|s| (s.as_str().to_owned(), 0.0))
        .collect();
    for (state, n) in pairs {
        all.insert(state.to_string(), *n);
    }
    all
}

#[test]
fn unhealthy_mode_has_series_only_for_peers_in_a_fault_state() {
    let m = metrics();
    m.set_per_peer_mode(PerPeerMetrics::Unhealthy);
    assert_eq!(mode_in_gauge(&m), "unhealthy");
    m.set_peer(&peer("gpu-1", PeerState::Healthy, None));
    m.set_peer(&peer("gpu-2", PeerState::Unknown, None));
    m.set_peer(&peer(
        "gpu-3",
        PeerState::FabricDropped,
        Some(DiagnosisReason::CrossSubnet),
    ));
    let text = m.encode();
    assert_eq!(
        with_label(&text, "peer", "gpu-1"),
        vec![],
        "healthy: {text}"
    );
    assert_eq!(
        with_label(&text, "peer", "gpu-2"),
        vec![],
        "unknown: {text}"
    );
    // The unhealthy peer has every family, exactly as in `all`.
    assert_has_every_peer_family(&text, "gpu-3");
    assert_eq!(
        value(
            &text,
            "efa_peer_diagnosis",
            &[("peer", "gpu-3"), ("reason", "cross_subnet")]
        ),
        Some(1.0)
    );
    assert_eq!(
        by_state(&m),
        counts(&[("healthy", 1.0), ("unknown", 1.0), ("fabric_dropped", 1.0)])
    );

    // Turning unhealthy adds its series at once; turning healthy removes them at once.
    m.set_peer(&peer(
        "gpu-1",
        PeerState::Down,
        Some(DiagnosisReason::IpTimeout),
    ));
    m.set_peer(&peer("gpu-3", PeerState::Healthy, None));
    let text = m.encode();
    assert_eq!(with_label(&text, "peer", "gpu-3"), vec![], "{text}");
    assert_eq!(
        value(
            &text,
            "efa_peer_state",
            &[("peer", "gpu-1"), ("state", "down")]
        ),
        Some(1.0)
    );
    assert_eq!(with_label(&text, "peer", "gpu-1").len(), 12, "{text}");
    assert_eq!(
        by_state(&m),
        counts(&[("healthy", 1.0), ("unknown", 1.0), ("down", 1.0)])
    );
    // Each fault state is exported, with the same series as `all` gives it.
    for state in [
        PeerState::Degraded,
        PeerState::IpBlocked,
        PeerState::FabricDropped,
        PeerState::Down,
    ] {
        let p = peer("gpu-4", state, Some(DiagnosisReason::IpTimeout));
        m.set_peer(&p);
        let all = fresh(PerPeerMetrics::All, std::slice::from_ref(&p));
        let ours: Vec<String> = per_peer_lines(&m)
            .into_iter()
            .filter(|l| l.contains("\"gpu-4\""))
            .collect();
        assert_eq!(ours, per_peer_lines(&all), "{state:?}");
    }
    m.set_peer(&peer("gpu-4", PeerState::Unknown, None));
    assert_eq!(
        peers_with_series(&m),
        ["gpu-1".to_owned()].into_iter().collect()
    );
}

#[test]
fn none_mode_has_no_per_peer_series_but_the_aggregates() {
    let m = metrics();
    m.set_per_peer_mode(PerPeerMetrics::None);
    assert_eq!(mode_in_gauge(&m), "none");
    for (i, state) in PeerState::VARIANTS.iter().copied().enumerate() {
        m.set_peer(&peer(
            &format!("gpu-{i}"),
            state,
            Some(DiagnosisReason::IpTimeout),
        ));
    }
    m.set_peer(&peer(
        "gpu-9",
        PeerState::FabricDropped,
        Some(DiagnosisReason::SecurityGroup),
    ));
    m.set_peer_count(7);
    assert_eq!(per_peer_lines(&m), Vec::<String>::new());
    let text = m.encode();
    assert_eq!(value(&text, "efa_peers", &[]), Some(7.0));
    assert_eq!(value(&text, "efa_node_unreachable_peers", &[]), Some(4.0));
    assert_eq!(
        by_state(&m),
        counts(&[
            ("healthy", 1.0),
            ("fabric_dropped", 2.0),
            ("ip_blocked", 1.0),
            ("down", 1.0),
            ("degraded", 1.0),
            ("unknown", 1.0)
        ])
    );
    // Probes are still counted: the histogram does not depend on the mode.
    m.record_probe_in_group(
        ProbePath::Fabric,
        "pg:a",
        ProbeResult::Ok,
        Some(Duration::from_micros(20)),
    );
    assert_eq!(
        value(
            &m.encode(),
            "efa_probe_rtt_seconds_count",
            &[("path", "fabric"), ("group", "pg:a")]
        ),
        Some(1.0)
    );
}

#[test]
fn peers_by_state_follows_changes_removals_and_renames() {
    let m = metrics();
    assert_eq!(by_state(&m), counts(&[]));
    m.set_peer(&peer("198.18.0.2:9464", PeerState::Unknown, None));
    m.set_peer(&peer("gpu-2", PeerState::Healthy, None));
    assert_eq!(by_state(&m), counts(&[("unknown", 1.0), ("healthy", 1.0)]));
    // The same state again is not counted twice.
    m.set_peer(&peer("gpu-2", PeerState::Healthy, None));
    m.rename_peer("198.18.0.2:9464", "gpu-1");
    m.set_peer(&peer("gpu-1", PeerState::Healthy, None));
    assert_eq!(by_state(&m), counts(&[("healthy", 2.0)]));
    m.set_peer(&peer(
        "gpu-2",
        PeerState::IpBlocked,
        Some(DiagnosisReason::IpRefused),
    ));
    assert_eq!(
        by_state(&m),
        counts(&[("healthy", 1.0), ("ip_blocked", 1.0)])
    );
    m.remove_peer("gpu-2");
    m.remove_peer("never-seen");
    assert_eq!(by_state(&m), counts(&[("healthy", 1.0)]));
    m.remove_peer("gpu-1");
    assert_eq!(by_state(&m), counts(&[]));
}

/// `n` peers: every tenth `fabric_dropped`, every 25th `down`, every 33rd `unknown`, the rest
/// healthy.
fn cluster(n: usize) -> Vec<PeerStatus> {
    (0..n)
        .map(|i| {
            let name = format!("node-{i:04}");
            if i % 10 == 3 {
                peer(
                    &name,
                    PeerState::FabricDropped,
                    Some(DiagnosisReason::SecurityGroup),
                )
            } else if i % 25 == 7 {
                peer(&name, PeerState::Down, Some(DiagnosisReason::IpTimeout))
            } else if i % 33 == 5 {
                peer(&name, PeerState::Unknown, None)
            } else {
                peer(&name, PeerState::Healthy, None)
            }
        })
        .collect()
}

#[test]
fn auto_switches_at_the_threshold_both_ways_without_stale_series() {
    let m = metrics();
    m.set_per_peer_mode(PerPeerMetrics::Auto);
    let mut peers = cluster(AUTO_ALL_MAX_PEERS + 1);
    let newcomer = peers.pop().unwrap();

    // At the threshold: every peer's series.
    for p in &peers {
        m.set_peer(p);
    }
    m.set_peer_count(peers.len());
    assert_eq!(m.per_peer_mode(), PerPeerMode::All);
    assert_eq!(mode_in_gauge(&m), "all");
    assert_eq!(peers_with_series(&m).len(), AUTO_ALL_MAX_PEERS);
    assert_eq!(
        per_peer_lines(&m),
        per_peer_lines(&fresh(PerPeerMetrics::All, &peers))
    );

    // One more: unhealthy, with the newcomer itself, before the count is even set.
    m.set_peer(&newcomer);
    assert_eq!(m.per_peer_mode(), PerPeerMode::Unhealthy);
    m.set_peer_count(peers.len() + 1);
    peers.push(newcomer);
    assert_eq!(mode_in_gauge(&m), "unhealthy");
    let expected = fresh(PerPeerMetrics::Unhealthy, &peers);
    assert_eq!(per_peer_lines(&m), per_peer_lines(&expected));
    let exported: std::collections::BTreeSet<String> = peers
        .iter()
        .filter(|p| PerPeerMode::Unhealthy.exports(p.state))
        .map(|p| p.name.clone())
        .collect();
    assert!(exported.len() > 5 && exported.len() < 30, "{exported:?}");
    assert_eq!(peers_with_series(&m), exported);

    // Changes while above: a healthy peer breaks, a broken one heals.
    let broken = peers
        .iter()
        .position(|p| p.state == PeerState::Healthy)
        .unwrap();
    let healed = peers
        .iter()
        .position(|p| p.state == PeerState::FabricDropped)
        .unwrap();
    peers[broken] = peer(
        &peers[broken].name,
        PeerState::IpBlocked,
        Some(DiagnosisReason::IpRefused),
    );
    peers[healed] = peer(&peers[healed].name, PeerState::Healthy, None);
    m.set_peer(&peers[broken]);
    m.set_peer(&peers[healed]);
    assert_eq!(
        per_peer_lines(&m),
        per_peer_lines(&fresh(PerPeerMetrics::Unhealthy, &peers))
    );

    // One leaves: back to all, every peer's series as they are now, none stale.
    let left = peers.remove(0);
    m.remove_peer(&left.name);
    m.set_peer_count(peers.len());
    assert_eq!(m.per_peer_mode(), PerPeerMode::All);
    assert_eq!(mode_in_gauge(&m), "all");
    let expected = fresh(PerPeerMetrics::All, &peers);
    assert_eq!(per_peer_lines(&m), per_peer_lines(&expected));
    assert_eq!(by_state(&m), by_state(&expected));
    assert!(!peers_with_series(&m).contains(&left.name));

    // The count alone moves it too (the monitor sets it for every new peer set).
    m.set_peer_count(AUTO_ALL_MAX_PEERS + 50);
    assert_eq!(mode_in_gauge(&m), "unhealthy");
    assert_eq!(
        per_peer_lines(&m),
        per_peer_lines(&fresh(PerPeerMetrics::Unhealthy, &peers))
    );
    m.set_peer_count(peers.len());
    assert_eq!(mode_in_gauge(&m), "all");
    assert_eq!(per_peer_lines(&m), per_peer_lines(&expected));
}

#[test]
fn explicit_mode_changes_leave_exactly_the_mode_s_series() {
    let peers = cluster(40);
    let m = fresh(PerPeerMetrics::All, &peers);
    for setting in [
        PerPeerMetrics::None,
        PerPeerMetrics::Unhealthy,
        PerPeerMetrics::All,
        PerPeerMetrics::Unhealthy,
        PerPeerMetrics::None,
        PerPeerMetrics::All,
        // 40 peers: auto is all.
        PerPeerMetrics::Auto,
    ] {
        m.set_per_peer_mode(setting);
        let expected = fresh(setting, &peers);
        assert_eq!(mode_in_gauge(&m), mode_in_gauge(&expected), "{setting}");
        assert_eq!(
            per_peer_lines(&m),
            per_peer_lines(&expected),
            "after switching to {setting}"
        );
        assert_eq!(by_state(&m), by_state(&expected));
    }
    assert!(per_peer_lines(&fresh(PerPeerMetrics::None, &peers)).is_empty());
    assert_eq!(peers_with_series(&m).len(), 40);
}

#[test]
fn probe_groups_are_bounded_by_other() {
    let m = metrics();
    m.record_probe(
        ProbePath::Ip,
        ProbeResult::Ok,
        Some(Duration::from_micros(300)),
    );
    // "unknown" is the first group; 31 more keep their names, the rest count as other.
    let extra = 40;
    for g in 0..extra {
        let group = format!("subnet:subnet-{g:02}");
        m.record_probe_in_group(ProbePath::Fabric, &group, ProbeResult::Timeout, None);
        m.record_probe_in_group(
            ProbePath::Fabric,
            &group,
            ProbeResult::Ok,
            Some(Duration::from_micros(20)),
        );
    }
    // The caller's own "other" is the overflow group, not a name.
    m.record_probe_in_group(ProbePath::Ip, OTHER_GROUP, ProbeResult::Refused, None);
    let text = m.encode();
    let groups: std::collections::BTreeSet<String> = samples(&text)
        .into_iter()
        .filter(|s| s.name == "efa_probes_total" || s.name.starts_with("efa_probe_rtt_seconds"))
        .map(|s| s.labels["group"].clone())
        .collect();
    assert_eq!(groups.len(), MAX_PROBE_GROUPS + 1, "{groups:?}");
    assert!(groups.contains("unknown") && groups.contains("other"));
    assert!(groups.contains("subnet:subnet-30"));
    assert!(!groups.contains("subnet:subnet-31"));
    let named = MAX_PROBE_GROUPS - 1;
    let overflow = (extra - named) as f64;
    let fabric = |group: &str, result: &str| {
        value(
            &text,
            "efa_probes_total",
            &[("path", "fabric"), ("group", group), ("result", result)],
        )
    };
    assert_eq!(fabric("subnet:subnet-00", "timeout"), Some(1.0));
    assert_eq!(fabric("other", "timeout"), Some(overflow));
    // Every series of a new group starts at zero, so its first failure is an increase.
    assert_eq!(fabric("subnet:subnet-00", "provider_error"), Some(0.0));
    assert_eq!(fabric("other", "error"), Some(0.0));
    assert_eq!(
        value(
            &text,
            "efa_probe_rtt_seconds_count",
            &[("path", "fabric"), ("group", "other")]
        ),
        Some(overflow)
    );
    assert_eq!(
        value(
            &text,
            "efa_probes_total",
            &[("path", "ip"), ("group", "other"), ("result", "refused")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "efa_probe_rtt_seconds_count",
            &[("path", "ip"), ("group", "unknown")]
        ),
        Some(1.0)
    );
    // A group admitted early keeps its name after the cap is reached.
    m.record_probe_in_group(
        ProbePath::Fabric,
        "subnet:subnet-05",
        ProbeResult::Timeout,
        None,
    );
    assert_eq!(
        value(
            &m.encode(),
            "efa_probes_total",
            &[
                ("path", "fabric"),
                ("group", "subnet:subnet-05"),
                ("result", "timeout")
            ]
        ),
        Some(2.0)
    );
}

#[test]
fn the_unreachable_count_follows_each_peers_state() {
    let m = metrics();
    let unreachable = |m: &Metrics| value(&m.encode(), "efa_node_unreachable_peers", &[]);
    m.set_peer(&peer("gpu-1", PeerState::FabricDropped, None));
    m.set_peer(&peer("gpu-2", PeerState::Down, None));
    m.set_peer(&peer("gpu-3", PeerState::Degraded, None));
    assert_eq!(unreachable(&m), Some(2.0));
    m.set_peer(&peer("gpu-1", PeerState::Healthy, None));
    assert_eq!(unreachable(&m), Some(1.0));
    m.remove_peer("gpu-2");
    assert_eq!(unreachable(&m), Some(0.0));
}

#[test]
fn rtt_pairs_are_counted_by_result_from_zero() {
    let m = fixture(no_fabric());
    let count = |m: &Metrics, result: &str| {
        let text = m.encode();
        let line = format!("efa_fabric_rtt_pairs_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map(|v| v.parse::<u64>().unwrap())
    };
    assert_eq!(count(&m, "measured"), Some(0));
    assert_eq!(count(&m, "unsettled"), Some(0));
    m.record_rtt_pair(true);
    m.record_rtt_pair(true);
    m.record_rtt_pair(false);
    assert_eq!(count(&m, "measured"), Some(2));
    assert_eq!(count(&m, "unsettled"), Some(1));
}

#[test]
fn two_peers_claiming_one_name_share_its_series_and_are_both_counted() {
    let m = metrics();
    let mut first = peer("gpu-1", PeerState::Healthy, None);
    first.probed = true;
    let mut second = peer("gpu-1", PeerState::Down, Some(DiagnosisReason::IpTimeout));
    second.probed = true;
    m.state.set_peer("198.18.0.2:9464", first);
    m.state.set_peer("198.18.0.3:9464", second);
    let text = m.encode();
    // One series per label set (an exposition with two is invalid): the first by address.
    assert_eq!(
        value(
            &text,
            "efa_peer_state",
            &[("peer", "gpu-1"), ("state", "healthy")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "efa_peer_state",
            &[("peer", "gpu-1"), ("state", "down")]
        ),
        Some(0.0)
    );
    assert_eq!(by_state(&m), counts(&[("healthy", 1.0), ("down", 1.0)]));
    assert_eq!(value(&text, "efa_peers", &[]), Some(2.0));
}

/// Two agents say one node name (issue 15, item 6): a status per address, each claiming the
/// name as the monitor does when a hello arrives.
fn claimed(m: &Fixture, address: &str, name: &str, instance_id: u64, state: PeerState) {
    let reason = (state == PeerState::FabricDropped).then_some(DiagnosisReason::FabricTimeout);
    if !m.state.update_peer(address, |status| {
        status.state = state;
        status.reason = reason;
    }) {
        let mut status = peer(address, state, reason);
        status.address = address.into();
        m.state.set_peer(address, status);
    }
    m.state.claim_name(address, name, instance_id);
}

#[test]
fn a_second_claimant_of_a_name_keeps_its_verdict_without_taking_the_names_series() {
    let m = metrics();
    // The holder sorts after the claimant by address: the first to claim holds the name.
    let (holder, claimant) = ("198.18.0.9:9476", "198.18.0.1:9476");
    claimed(&m, holder, "gpu-1", 1, PeerState::Healthy);
    claimed(&m, claimant, "gpu-1", 2, PeerState::FabricDropped);
    let by_state = |text: &str, state: &str| value(text, "efa_peers_by_state", &[("state", state)]);
    let peer_state = |text: &str, state: &str| {
        value(
            text,
            "efa_peer_state",
            &[("peer", "gpu-1"), ("state", state)],
        )
    };
    for round in 0..3 {
        // The claimant's verdict changes; the series under the name stay the holder's.
        let state = [
            PeerState::FabricDropped,
            PeerState::Down,
            PeerState::Degraded,
        ][round];
        claimed(&m, claimant, "gpu-1", 2, state);
        let text = m.encode();
        assert_eq!(peer_state(&text, "healthy"), Some(1.0), "{text}");
        assert_eq!(peer_state(&text, state.as_str()), Some(0.0), "{text}");
        assert_eq!(
            with_label(&text, "peer", "gpu-1")
                .iter()
                .filter(|s| s.name == "efa_peer_diagnosis")
                .count(),
            0,
            "{text}"
        );
        // Both count once, each by its own verdict.
        assert_eq!(by_state(&text, "healthy"), Some(1.0), "{text}");
        assert_eq!(by_state(&text, state.as_str()), Some(1.0), "{text}");
        let total: f64 = PeerState::VARIANTS
            .iter()
            .filter_map(|s| by_state(&text, s.as_str()))
            .sum();
        assert_eq!(total, 2.0, "{text}");
        // Found once, however often it says the name again.
        assert_eq!(
            value(&text, "efa_peer_name_conflicts_total", &[]),
            Some(1.0),
            "{text}"
        );
    }
    // `/v1/peers` shows the conflict on the claimant, and only there.
    let peers = serde_json::to_value(m.state.peers()).unwrap();
    let by_address = |a: &str| {
        peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["address"] == a)
            .unwrap()
            .clone()
    };
    let conflict = &by_address(claimant)["name_conflict"];
    assert_eq!(conflict["reason"], "name_conflict");
    assert_eq!(conflict["held_by"], holder);
    assert_eq!(conflict["instance_id"], 2);
    assert_eq!(by_address(claimant)["name"], "gpu-1");
    assert!(by_address(holder).get("name_conflict").is_none());

    // The holder leaves: the claimant holds the name now, its verdict under it.
    m.state.remove_peer(holder);
    let text = m.encode();
    assert_eq!(peer_state(&text, "degraded"), Some(1.0), "{text}");
    assert_eq!(peer_state(&text, "healthy"), Some(0.0), "{text}");
    assert!(m.state.peer(claimant).unwrap().name_conflict.is_none());
    assert_eq!(
        value(&text, "efa_peer_name_conflicts_total", &[]),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_peer_that_changes_its_name_hands_the_old_one_to_its_claimant() {
    let m = metrics();
    claimed(&m, "198.18.0.1:9476", "gpu-1", 1, PeerState::Healthy);
    claimed(&m, "198.18.0.2:9476", "gpu-1", 2, PeerState::Down);
    // A third claimant is told who holds it.
    claimed(&m, "198.18.0.3:9476", "gpu-1", 3, PeerState::Down);
    assert_eq!(m.state.name_conflicts(), 2);
    // The holder restarts under another name: the first other claimant by address takes
    // the old name, the other is pointed at it.
    claimed(&m, "198.18.0.1:9476", "gpu-7", 4, PeerState::Healthy);
    let conflict = |a: &str| m.state.peer(a).unwrap().name_conflict;
    assert_eq!(conflict("198.18.0.1:9476"), None);
    assert_eq!(conflict("198.18.0.2:9476"), None);
    let third = conflict("198.18.0.3:9476").expect("still a second claimant");
    assert_eq!(third.held_by, "198.18.0.2:9476");
    let text = m.encode();
    for (name, state) in [("gpu-7", "healthy"), ("gpu-1", "down")] {
        assert_eq!(
            value(&text, "efa_peer_state", &[("peer", name), ("state", state)]),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(
        value(&text, "efa_peers_by_state", &[("state", "down")]),
        Some(2.0)
    );
}

#[test]
fn an_idle_probe_group_gives_its_name_and_series_up() {
    let m = metrics();
    let start = std::time::Instant::now();
    let fabric = ProbePath::Fabric;
    for g in 0..MAX_PROBE_GROUPS {
        let group = format!("pg:{g:02}");
        m.record_probe_in_group_at(fabric, &group, ProbeResult::Ok, None, start);
    }
    let groups = |m: &Metrics| -> std::collections::BTreeSet<String> {
        samples(&m.encode())
            .into_iter()
            .filter(|s| s.name == "efa_probes_total" || s.name.starts_with("efa_probe_rtt_seconds"))
            .map(|s| s.labels["group"].clone())
            .collect()
    };
    let later = start + Duration::from_secs(60);
    m.record_probe_in_group_at(fabric, "pg:late", ProbeResult::Ok, None, later);
    assert!(groups(&m).contains("other"));
    assert!(!groups(&m).contains("pg:late"));
    // pg:00 stays in use; the rest go idle for ten minutes.
    let idle = start + groups::GROUP_IDLE_RELEASE;
    m.record_probe_in_group_at(fabric, "pg:00", ProbeResult::Ok, None, idle);
    m.record_probe_in_group_at(fabric, "pg:new", ProbeResult::Timeout, None, idle);
    let now = groups(&m);
    assert!(now.contains("pg:new") && now.contains("pg:00") && now.contains("other"));
    assert!(!now.contains("pg:01"), "{now:?}");
    assert_eq!(now.len(), 3, "{now:?}");
    let text = m.encode();
    let count = |group: &str, result: &str| {
        value(
            &text,
            "efa_probes_total",
            &[("path", "fabric"), ("group", group), ("result", result)],
        )
    };
    assert_eq!(count("pg:00", "ok"), Some(2.0));
    assert_eq!(count("pg:new", "timeout"), Some(1.0));
    assert_eq!(count("pg:01", "ok"), None);
}

// Rails (issue 12, item 5).

/// Two rails, as a node with two devices opens them; rail 1's interface is not known.
fn two_rail_fabric() -> FabricStatus {
    let mut fabric = efa_fabric();
    fabric.devices[0].mac = Some("0a:00:00:00:00:01".into());
    fabric.devices.push(FabricDevice {
        rail: 1,
        domain: "rdmap16s27-rdm".into(),
        provider: "efa".into(),
        address: "fi_addr_efa://[fe80::2]:1:0".into(),
        mac: None,
    });
    fabric
}

/// One rail's result: answering (`Some(true)`), dropped (`Some(false)`) or not yet probed.
fn rail(rail: u16, reachable: Option<bool>) -> crate::state::RailStatus {
    crate::state::RailStatus {
        rail,
        domain: format!("rdmap{rail}-rdm").into(),
        peer_domain: format!("rdmap{rail}-rdm").into(),
        path: path(reachable, reachable.filter(|r| *r).map(|_| 0.00002)),
        reason: (reachable == Some(false)).then_some(DiagnosisReason::SecurityGroup),
    }
}

/// A peer paired on these rails, as the monitor sets it: its fabric path reachable only
/// when every paired rail answers, `fabric_dropped` while some rail does not (IP works).
fn railed_peer(name: &str, rails: &[Option<bool>]) -> PeerStatus {
    let rails: Vec<_> = (0u16..)
        .zip(rails)
        .map(|(i, reachable)| rail(i, *reachable))
        .collect();
    let dropped = rails.iter().any(|r| r.path.reachable == Some(false));
    let all_answer = rails.iter().all(|r| r.path.reachable == Some(true));
    let (state, reason) = if dropped {
        (
            PeerState::FabricDropped,
            Some(DiagnosisReason::SecurityGroup),
        )
    } else {
        (PeerState::Healthy, None)
    };
    let mut status = peer(name, state, reason);
    status.fabric.reachable = if dropped {
        Some(false)
    } else {
        all_answer.then_some(true)
    };
    status.peer_rails = Some(u16::try_from(rails.len()).unwrap());
    status.rails = rails;
    status
}

fn rail_probes(text: &str, rail: &str, result: &str) -> Option<f64> {
    value(
        text,
        "efa_rail_probes_total",
        &[("rail", rail), ("result", result)],
    )
}

#[test]
fn this_nodes_rails_follow_the_fabric() {
    let m = fixture(no_fabric());
    let text = m.encode();
    assert_eq!(value(&text, "efa_fabric_rails", &[]), Some(0.0));
    assert!(samples(&text).iter().all(|s| s.name != "efa_rail_info"));
    assert!(samples(&text)
        .iter()
        .all(|s| s.name != "efa_rail_probes_total"));

    m.set_fabric(&two_rail_fabric());
    let text = m.encode();
    assert_eq!(value(&text, "efa_fabric_rails", &[]), Some(2.0));
    let rail0 = [
        ("rail", "0"),
        ("domain", "rdmap0s6-rdm"),
        ("mac", "0a:00:00:00:00:01"),
    ];
    let rail1 = [("rail", "1"), ("domain", "rdmap16s27-rdm"), ("mac", "")];
    assert_eq!(value(&text, "efa_rail_info", &rail0), Some(1.0));
    assert_eq!(value(&text, "efa_rail_info", &rail1), Some(1.0), "{text}");
    // Every fabric result of every open rail from 0, and only those.
    for r in ["0", "1"] {
        for result in ["ok", "timeout", "provider_error", "error"] {
            assert_eq!(rail_probes(&text, r, result), Some(0.0), "{r} {result}");
        }
        assert_eq!(rail_probes(&text, r, "dns"), None);
    }

    // Rail 1's device goes: its info series goes; its counters stay (increase() still sees
    // its last failures).
    m.record_rail_probe(1, ProbeResult::Timeout);
    m.set_fabric(&efa_fabric());
    let text = m.encode();
    assert_eq!(value(&text, "efa_fabric_rails", &[]), Some(1.0));
    assert_eq!(value(&text, "efa_rail_info", &rail1), None, "{text}");
    assert_eq!(
        value(
            &text,
            "efa_rail_info",
            &[("rail", "0"), ("domain", "rdmap0s6-rdm"), ("mac", "")]
        ),
        Some(1.0),
        "the MAC is gone from rail 0 too: its series is replaced, not doubled"
    );
    assert_eq!(
        samples(&text)
            .iter()
            .filter(|s| s.name == "efa_rail_info")
            .count(),
        1
    );
    assert_eq!(rail_probes(&text, "1", "timeout"), Some(1.0));

    // The fabric goes: no rail open.
    m.set_fabric(&no_fabric());
    let text = m.encode();
    assert_eq!(value(&text, "efa_fabric_rails", &[]), Some(0.0));
    assert!(samples(&text).iter().all(|s| s.name != "efa_rail_info"));
}

#[test]
fn rail_probes_are_counted_by_rail_and_result_within_bounds() {
    let m = fixture(two_rail_fabric());
    m.record_rail_probe(0, ProbeResult::Ok);
    m.record_rail_probe(0, ProbeResult::Ok);
    m.record_rail_probe(1, ProbeResult::Timeout);
    m.record_rail_probe(1, ProbeResult::ProviderError);
    // Out of bounds: not counted, whatever the caller says.
    m.record_rail_probe(MAX_RAIL_LABELS, ProbeResult::Ok);
    m.record_rail_probe(u16::MAX, ProbeResult::Timeout);
    let text = m.encode();
    assert_eq!(rail_probes(&text, "0", "ok"), Some(2.0));
    assert_eq!(rail_probes(&text, "0", "timeout"), Some(0.0));
    assert_eq!(rail_probes(&text, "1", "timeout"), Some(1.0));
    assert_eq!(rail_probes(&text, "1", "provider_error"), Some(1.0));
    let rails: std::collections::BTreeSet<String> = samples(&text)
        .into_iter()
        .filter(|s| s.name == "efa_rail_probes_total")
        .map(|s| s.labels["rail"].clone())
        .collect();
    assert_eq!(
        rails,
        ["0".to_owned(), "1".to_owned()].into_iter().collect()
    );
    // The rail probes are not per peer.
    assert!(samples(&text)
        .iter()
        .filter(|s| s.name.starts_with("efa_rail"))
        .all(|s| !s.labels.contains_key("peer")));
}

#[test]
fn a_peer_with_rail_1_down_is_unreachable_and_names_the_rail() {
    let m = fixture(two_rail_fabric());
    m.set_peer(&railed_peer("gpu-1", &[Some(true), Some(false)]));
    m.set_peer(&railed_peer("gpu-2", &[Some(true), Some(true)]));
    let text = m.encode();
    let p1 = [("peer", "gpu-1")];
    // efa_peer_reachable reads the peer's fabric path, which the monitor makes unreachable
    // when any paired rail fails: 0 here although rail 0 answers.
    assert_eq!(value(&text, "efa_peer_reachable", &p1), Some(0.0));
    assert_eq!(value(&text, "efa_peer_rails", &p1), Some(2.0));
    assert_eq!(value(&text, "efa_peer_rails_reachable", &p1), Some(1.0));
    let unreachable = |peer: &str, rail: &str| {
        value(
            &text,
            "efa_peer_rail_unreachable",
            &[("peer", peer), ("rail", rail)],
        )
    };
    assert_eq!(unreachable("gpu-1", "1"), Some(1.0));
    assert_eq!(
        unreachable("gpu-1", "0"),
        None,
        "sparse: only dropped rails"
    );
    // The whole peer: both rails answer.
    let p2 = [("peer", "gpu-2")];
    assert_eq!(value(&text, "efa_peer_reachable", &p2), Some(1.0));
    assert_eq!(value(&text, "efa_peer_rails", &p2), Some(2.0));
    assert_eq!(value(&text, "efa_peer_rails_reachable", &p2), Some(2.0));
    assert_eq!(unreachable("gpu-2", "0"), None);
    assert_eq!(unreachable("gpu-2", "1"), None);
    // Per rail of this node: one peer dropped on rail 1, none on rail 0.
    let node_rail =
        |text: &str, rail: &str| value(text, "efa_node_rail_unreachable_peers", &[("rail", rail)]);
    assert_eq!(node_rail(&text, "0"), Some(0.0));
    assert_eq!(node_rail(&text, "1"), Some(1.0));

    // The heal: rail 1 answers again; the dropped-rail series goes at once.
    m.set_peer(&railed_peer("gpu-1", &[Some(true), Some(true)]));
    let text = m.encode();
    assert_eq!(value(&text, "efa_peer_reachable", &p1), Some(1.0));
    assert_eq!(value(&text, "efa_peer_rails_reachable", &p1), Some(2.0));
    assert!(samples(&text)
        .iter()
        .all(|s| s.name != "efa_peer_rail_unreachable"));
    assert_eq!(node_rail(&text, "1"), Some(0.0));

    // The peer leaves: every rail series with it.
    m.remove_peer("gpu-1");
    let text = m.encode();
    assert_eq!(with_label(&text, "peer", "gpu-1"), vec![]);
}

#[test]
fn rail_counts_appear_once_the_pairing_is_known() {
    let m = fixture(two_rail_fabric());
    // No hello yet: nothing paired is known, so no 0 that would read "no rail in common".
    m.set_peer(&peer("gpu-1", PeerState::Unknown, None));
    // Paired, not probed yet: two rails, no reachable count yet.
    m.set_peer(&railed_peer("gpu-2", &[None, None]));
    // A peer with one rail beside this node's two: one paired.
    m.set_peer(&railed_peer("gpu-3", &[Some(true)]));
    // A peer whose hello lists no rail (no fabric there): nothing paired.
    let mut bare = peer("gpu-4", PeerState::Unknown, None);
    bare.fabric.reachable = None;
    bare.peer_rails = Some(0);
    m.set_peer(&bare);
    let text = m.encode();
    let rails = |peer: &str| value(&text, "efa_peer_rails", &[("peer", peer)]);
    let answering = |peer: &str| value(&text, "efa_peer_rails_reachable", &[("peer", peer)]);
    assert_eq!((rails("gpu-1"), answering("gpu-1")), (None, None));
    assert_eq!((rails("gpu-2"), answering("gpu-2")), (Some(2.0), None));
    assert_eq!((rails("gpu-3"), answering("gpu-3")), (Some(1.0), Some(1.0)));
    assert_eq!((rails("gpu-4"), answering("gpu-4")), (Some(0.0), None));
    // A rail not probed yet is not a dropped one.
    assert!(samples(&text)
        .iter()
        .all(|s| s.name != "efa_peer_rail_unreachable"));
}

#[test]
fn rail_series_follow_the_per_peer_mode_and_the_aggregate_stays() {
    let rail_lines = |m: &Metrics| -> Vec<String> {
        per_peer_lines(m)
            .into_iter()
            .filter(|l| l.starts_with("efa_peer_rail"))
            .collect()
    };
    let dropped = railed_peer("gpu-1", &[Some(false), Some(true)]);
    let whole = railed_peer("gpu-2", &[Some(true), Some(true)]);
    let m = fixture(two_rail_fabric());
    m.set_peer(&dropped);
    m.set_peer(&whole);
    // Not probed now (rotated out of the sample): no series, not counted.
    let mut unprobed = railed_peer("gpu-3", &[Some(false), Some(false)]);
    unprobed.probed = false;
    m.state.set_peer("gpu-3", unprobed);
    let all = rail_lines(&m);
    assert_eq!(
        all.iter().filter(|l| l.contains("\"gpu-2\"")).count(),
        2,
        "{all:?}"
    );
    assert!(all.iter().all(|l| !l.contains("gpu-3")), "{all:?}");

    // unhealthy: the dropped peer keeps exactly its series from `all`; the whole one has none.
    m.set_per_peer_mode(PerPeerMetrics::Unhealthy);
    let unhealthy = rail_lines(&m);
    let dropped_in_all: Vec<String> = all
        .iter()
        .filter(|l| l.contains("\"gpu-1\""))
        .cloned()
        .collect();
    assert_eq!(unhealthy, dropped_in_all);
    assert_eq!(dropped_in_all.len(), 3, "rails, reachable, rail 0 dropped");

    // none: no per-peer rail series; the node still says which rail fails.
    m.set_per_peer_mode(PerPeerMetrics::None);
    assert_eq!(rail_lines(&m), Vec::<String>::new());
    for mode in [
        PerPeerMetrics::All,
        PerPeerMetrics::Unhealthy,
        PerPeerMetrics::None,
    ] {
        m.set_per_peer_mode(mode);
        let text = m.encode();
        let node_rail =
            |rail: &str| value(&text, "efa_node_rail_unreachable_peers", &[("rail", rail)]);
        assert_eq!(
            (node_rail("0"), node_rail("1")),
            (Some(1.0), Some(0.0)),
            "{mode}"
        );
    }
}

#[test]
fn a_second_claimant_s_dropped_rail_is_counted_but_not_under_the_holders_name() {
    let m = fixture(two_rail_fabric());
    let (holder, claimant) = ("198.18.0.9:9476", "198.18.0.1:9476");
    let mut whole = railed_peer(holder, &[Some(true), Some(true)]);
    whole.address = holder.into();
    m.state.set_peer(holder, whole);
    m.state.claim_name(holder, "gpu-1", 1);
    let mut dropped = railed_peer(claimant, &[Some(true), Some(false)]);
    dropped.address = claimant.into();
    m.state.set_peer(claimant, dropped);
    m.state.claim_name(claimant, "gpu-1", 2);
    let text = m.encode();
    assert_eq!(
        value(&text, "efa_peer_rails_reachable", &[("peer", "gpu-1")]),
        Some(2.0),
        "the holder's"
    );
    assert!(samples(&text)
        .iter()
        .all(|s| s.name != "efa_peer_rail_unreachable"));
    assert_eq!(
        value(&text, "efa_node_rail_unreachable_peers", &[("rail", "1")]),
        Some(1.0)
    );
}

/// What README and `per_peer` say rails cost per peer: 2 samples once paired, whatever the
/// rail count, and one per dropped rail; the per-node rail count grows with this node's
/// rails, not with peers.
#[test]
fn rails_cost_two_samples_per_peer_and_one_per_dropped_rail() {
    let samples_of = |m: &Fixture, peer: &str| with_label(&m.encode(), "peer", peer).len();
    let m = metrics();
    m.set_peer(&peer("gpu-0", PeerState::Healthy, None));
    let without = samples_of(&m, "gpu-0");
    assert_eq!(without, 11);
    let mut whole = railed_peer("gpu-1", &[Some(true); 32]);
    whole.fabric.reachable = Some(true);
    m.set_peer(&whole);
    assert_eq!(samples_of(&m, "gpu-1"), without + 2);
    let mut three_dropped = [Some(true); 32];
    for r in [3, 17, 31] {
        three_dropped[r] = Some(false);
    }
    m.set_peer(&railed_peer("gpu-2", &three_dropped));
    // + diagnosis (fabric_dropped), + 2 rail counts, + 3 dropped rails.
    assert_eq!(samples_of(&m, "gpu-2"), without + 1 + 2 + 3);
    let node_rails = samples(&m.encode())
        .into_iter()
        .filter(|s| s.name == "efa_node_rail_unreachable_peers")
        .count();
    // This node's one rail, and the peers' dropped rails 3, 17 and 31 (counted though this
    // node does not list them: the state says they were probed).
    assert_eq!(node_rails, 4);
}
