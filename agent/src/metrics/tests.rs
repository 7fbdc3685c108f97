//! Metrics tests: encode after each setter and read the series back from the text.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::inventory::DeviceCounters;
use crate::probe::nats::NatsServerInfo;
use crate::probe::{AddressReport, CheckSuccess, ProbeFailure, TargetSpec};
use crate::state::{FabricDevice, PathStatus};
use crate::topology::{NetworkInterface, Topology};

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
            domain: "rdmap0s6-rdm".into(),
            provider: "efa".into(),
            address: "fi_addr_efa://[fe80::1]:1:0".into(),
        }],
    }
}

fn path(reachable: Option<bool>, rtt_seconds: Option<f64>) -> PathStatus {
    PathStatus {
        reachable,
        rtt_seconds,
        last_failure: None,
        last_error: None,
    }
}

fn peer(name: &str, state: PeerState, reason: Option<DiagnosisReason>) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        address: "198.18.0.2:9464".into(),
        state,
        reason,
        summary: String::new(),
        ip: path(Some(true), Some(0.0004)),
        fabric: path(Some(true), Some(0.00002)),
        fabric_loss: 0.1,
        hello: None,
        warnings: Vec::new(),
        since_unix: 0,
        rounds: 3,
    }
}

fn metrics() -> Metrics {
    Metrics::new("0.1.0", &efa_fabric())
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
    let families: std::collections::BTreeSet<String> = with_label(&text, "peer", "gpu-1")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        families,
        PEER_FAMILIES.iter().map(|s| s.to_string()).collect()
    );

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
    for state in PeerState::ALL {
        m.set_peer(&peer("gpu-1", state, Some(DiagnosisReason::IpTimeout)));
        let text = m.encode();
        let states: Vec<Sample> = with_label(&text, "peer", "gpu-1")
            .into_iter()
            .filter(|s| s.name == "efa_peer_state")
            .collect();
        assert_eq!(states.len(), PeerState::ALL.len());
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
    let m = Metrics::new("0.1.0", &no_fabric());
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
    let ok_ip = [("path", "ip"), ("result", "ok")];
    assert_eq!(value(&text, "efa_probes_total", &ok_ip), Some(0.0));
    // Only results a path can have are there before they happen.
    let fabric_dns = [("path", "fabric"), ("result", "dns")];
    assert_eq!(value(&text, "efa_probes_total", &fabric_dns), None);
    assert_eq!(
        value(
            &text,
            "efa_probes_total",
            &[("path", "fabric"), ("result", "provider_error")]
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
            &[("path", "fabric"), ("result", "timeout")]
        ),
        Some(1.0)
    );
    let bucket = |path: &str, le: &str| {
        value(
            &text,
            "efa_probe_rtt_seconds_bucket",
            &[("path", path), ("le", le)],
        )
    };
    assert_eq!(bucket("fabric", "0.00001"), Some(0.0), "{text}");
    assert_eq!(bucket("fabric", "0.000025"), Some(1.0));
    assert_eq!(bucket("ip", "0.00025"), Some(0.0));
    assert_eq!(bucket("ip", "0.0005"), Some(1.0));
    assert_eq!(bucket("ip", "+Inf"), Some(1.0));
    assert_eq!(
        value(&text, "efa_probe_rtt_seconds_count", &[("path", "fabric")]),
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
    let m = Metrics::new("0.1.0", &no_fabric());
    let before = m.encode();
    m.set_peer(&peer(
        "gpu-1",
        PeerState::FabricDropped,
        Some(DiagnosisReason::FabricTimeout),
    ));
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
    m.set_unreachable_peers(1);
    let after = m.encode();

    assert_eq!(m.family_names().len(), 21);
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
