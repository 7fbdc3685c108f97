//! Each transition of the condition, from peers' statuses alone.

use std::sync::Arc;

use super::*;
use crate::hello::{Hello, HelloFabric};
use crate::state::PathStatus;
use crate::topology::{NetworkInterface, Topology};

/// A topology in `subnet`, optionally in placement group `pg`.
pub(crate) fn topology(subnet: &str, pg: Option<&str>) -> Topology {
    Topology {
        instance_id: "i-0123456789abcdef0".into(),
        instance_type: "p5.48xlarge".into(),
        availability_zone: "us-east-1a".into(),
        availability_zone_id: None,
        placement_group: pg.map(str::to_owned),
        primary_mac: "0e:00:00:00:00:01".into(),
        interfaces: vec![NetworkInterface {
            mac: "0e:00:00:00:00:01".into(),
            subnet_id: subnet.into(),
            vpc_id: "vpc-0a".into(),
            security_group_ids: vec!["sg-0a".into()],
            subnet_cidr: None,
        }],
    }
}

/// A peer `name` in `subnet` (no placement group) in `state`.
pub(crate) fn peer(
    name: &str,
    subnet: Option<&str>,
    state: PeerState,
    reason: Option<DiagnosisReason>,
) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        address: format!("{name}:9476"),
        state,
        reason,
        summary: "".into(),
        ip: PathStatus::default(),
        fabric: PathStatus::default(),
        fabric_loss: 0.0,
        hello: Some(Arc::new(Hello {
            node_name: name.into(),
            agent_version: "0.1.0".into(),
            instance_id: 1,
            fabric: HelloFabric {
                provider: "efa".into(),
                available: true,
                error: None,
                endpoints: vec![],
            },
            topology: subnet.map(|s| topology(s, None)),
            node_actions: None,
        })),
        warnings: vec![],
        since_unix: 1_000,
        rounds: 10,
        probed: true,
        name_conflict: None,
        rails: Vec::new(),
        peer_rails: None,
    }
}

const GROUP: &str = "subnet:subnet-a";

fn condition(peers: &[PeerStatus]) -> FabricCondition {
    let t = tally(Some(GROUP), peers);
    evaluate(ConditionInputs {
        local_fabric: true,
        tally: &t,
        threshold: 0.5,
        gate_note: None,
    })
}

fn healthy(name: &str) -> PeerStatus {
    peer(name, Some("subnet-a"), PeerState::Healthy, None)
}

fn dropped(name: &str, reason: DiagnosisReason) -> PeerStatus {
    peer(
        name,
        Some("subnet-a"),
        PeerState::FabricDropped,
        Some(reason),
    )
}

#[test]
fn no_fabric_here_is_unknown_whatever_the_peers() {
    let t = tally(Some(GROUP), &[healthy("gpu-2")]);
    let c = evaluate(ConditionInputs {
        local_fabric: false,
        tally: &t,
        threshold: 0.5,
        gate_note: None,
    });
    assert_eq!(
        (c.status, c.reason),
        (ConditionStatus::Unknown, ConditionReason::NoFabric)
    );
}

#[test]
fn no_peer_in_the_group_is_unknown_no_peers() {
    // Peers exist, but in another subnet, or without a hello yet.
    let others = [
        peer("gpu-9", Some("subnet-b"), PeerState::Healthy, None),
        peer("gpu-8", None, PeerState::Healthy, None),
    ];
    let c = condition(&others);
    assert_eq!(
        (c.status, c.reason),
        (ConditionStatus::Unknown, ConditionReason::NoPeers)
    );
    assert!(c.message.contains("subnet:subnet-a"), "{}", c.message);
    // Members, but none judged yet: still NoPeers, and it says how many.
    let c = condition(&[peer("gpu-2", Some("subnet-a"), PeerState::Unknown, None)]);
    assert_eq!(c.reason, ConditionReason::NoPeers);
    assert!(c.message.contains("None of the 1 peers"), "{}", c.message);
}

#[test]
fn one_peer_answering_on_the_fabric_is_true_verified() {
    let c = condition(&[
        healthy("gpu-2"),
        peer("gpu-3", Some("subnet-a"), PeerState::Down, None),
    ]);
    assert_eq!(
        (c.status, c.reason),
        (ConditionStatus::True, ConditionReason::Verified)
    );
    assert_eq!(
        c.message,
        "1 of 1 peers in its topology group subnet:subnet-a answer on the fabric."
    );
}

#[test]
fn one_drop_in_three_stays_true_and_is_named() {
    let c = condition(&[
        healthy("gpu-2"),
        healthy("gpu-3"),
        dropped("gpu-4", DiagnosisReason::FabricTimeout),
    ]);
    assert_eq!(c.status, ConditionStatus::True);
    assert!(
        c.message.contains("1 dropped (gpu-4), below the threshold"),
        "{}",
        c.message
    );
}

#[test]
fn at_least_the_threshold_and_two_peers_is_false_with_the_dominant_cause() {
    let c = condition(&[
        healthy("gpu-2"),
        dropped("gpu-3", DiagnosisReason::SecurityGroup),
        dropped("gpu-4", DiagnosisReason::SecurityGroup),
    ]);
    assert_eq!(
        (c.status, c.reason),
        (ConditionStatus::False, ConditionReason::SecurityGroup)
    );
    assert_eq!(
        c.message,
        "2 of 3 peers in its topology group subnet:subnet-a answer over IP but not over the \
         fabric (security_group: 2); worst: gpu-3, gpu-4."
    );
}

#[test]
fn mixed_causes_are_fabric_dropped_and_worst_peers_come_first() {
    let mut lossy = dropped("gpu-7", DiagnosisReason::FabricTimeout);
    lossy.fabric_loss = 1.0;
    let mut old = dropped("gpu-6", DiagnosisReason::ProviderError);
    old.since_unix = 10;
    let peers = [
        dropped("gpu-3", DiagnosisReason::CrossSubnet),
        dropped("gpu-4", DiagnosisReason::ProviderError),
        old,
        lossy,
        dropped("gpu-5", DiagnosisReason::CrossSubnet),
    ];
    let c = condition(&peers);
    assert_eq!(
        (c.status, c.reason),
        (ConditionStatus::False, ConditionReason::FabricDropped)
    );
    assert!(
        c.message.contains(
            "(cross_subnet: 2, provider_error: 2, fabric_timeout: 1); worst: gpu-7, gpu-6, \
             gpu-3 and 2 more."
        ),
        "{}",
        c.message
    );
    // A majority of one cause names it.
    let c = condition(&[
        dropped("gpu-3", DiagnosisReason::CrossAz),
        dropped("gpu-4", DiagnosisReason::CrossAz),
        dropped("gpu-5", DiagnosisReason::FabricTimeout),
    ]);
    assert_eq!(c.reason, ConditionReason::CrossAz);
}

#[test]
fn below_the_threshold_is_true_and_a_lower_threshold_turns_it_false() {
    let peers = [
        healthy("gpu-2"),
        healthy("gpu-3"),
        healthy("gpu-4"),
        dropped("gpu-5", DiagnosisReason::FabricTimeout),
        dropped("gpu-6", DiagnosisReason::FabricTimeout),
    ];
    assert_eq!(condition(&peers).status, ConditionStatus::True, "2 of 5");
    let t = tally(Some(GROUP), &peers);
    let c = evaluate(ConditionInputs {
        local_fabric: true,
        tally: &t,
        threshold: 0.4,
        gate_note: None,
    });
    assert_eq!(c.status, ConditionStatus::False, "2 of 5 at 0.4");
}

#[test]
fn a_single_dropped_peer_cannot_make_it_false() {
    let c = condition(&[dropped("gpu-2", DiagnosisReason::FabricTimeout)]);
    assert_eq!(
        (c.status, c.reason),
        (ConditionStatus::Unknown, ConditionReason::Unverified)
    );
    assert!(c.message.contains("(gpu-2)"), "{}", c.message);
}

#[test]
fn ip_blocked_and_degraded_peers_verify_the_fabric() {
    let c = condition(&[
        peer("gpu-2", Some("subnet-a"), PeerState::IpBlocked, None),
        peer("gpu-3", Some("subnet-a"), PeerState::Degraded, None),
    ]);
    assert_eq!(c.status, ConditionStatus::True);
    assert!(c.message.starts_with("2 of 2 peers"), "{}", c.message);
}

#[test]
fn placement_group_is_the_group_when_there_is_one() {
    let mut in_pg = healthy("gpu-2");
    let mut h = (**in_pg.hello.as_ref().unwrap()).clone();
    h.topology = Some(topology("subnet-z", Some("train")));
    in_pg.hello = Some(Arc::new(h));
    assert_eq!(peer_group(&in_pg).as_deref(), Some("pg:train"));
    let t = tally(Some("pg:train"), &[in_pg, healthy("gpu-3")]);
    assert_eq!(
        (t.members, t.verified.clone()),
        (1, vec!["gpu-2".to_owned()])
    );
}

#[test]
fn without_a_group_of_its_own_every_peer_counts() {
    let peers = [
        peer("gpu-2", Some("subnet-a"), PeerState::Healthy, None),
        peer("gpu-3", None, PeerState::Healthy, None),
    ];
    let t = tally(None, &peers);
    assert_eq!(t.members, 2);
    let c = evaluate(ConditionInputs {
        local_fabric: true,
        tally: &t,
        threshold: 0.5,
        gate_note: None,
    });
    assert!(
        c.message.contains("its own topology group is unknown"),
        "{}",
        c.message
    );
}

#[test]
fn the_gate_note_is_added() {
    let t = tally(Some(GROUP), &[]);
    let c = evaluate(ConditionInputs {
        local_fabric: true,
        tally: &t,
        threshold: 0.5,
        gate_note: Some("Startup taint removed."),
    });
    assert!(
        c.message.ends_with(" Startup taint removed."),
        "{}",
        c.message
    );
}

#[test]
fn peers_this_node_does_not_probe_now_are_not_judged() {
    // Two drops, but one is a verdict of a peer the sample rotated out: it says nothing about
    // the fabric now, so one drop in two probed peers stays True.
    let mut rotated_out = dropped("gpu-4", DiagnosisReason::SecurityGroup);
    rotated_out.probed = false;
    let c = condition(&[
        healthy("gpu-2"),
        dropped("gpu-3", DiagnosisReason::SecurityGroup),
        rotated_out,
    ]);
    assert_eq!(c.status, ConditionStatus::True, "{}", c.message);
    assert_eq!(
        tally(
            Some(GROUP),
            &[dropped("gpu-5", DiagnosisReason::SecurityGroup)]
        )
        .members,
        1
    );
}

#[test]
fn one_rail_dropped_to_most_peers_is_rail_dropped_naming_the_rail() {
    use crate::state::RailStatus;
    let rail = |rail: u16, reachable: bool| RailStatus {
        rail,
        domain: format!("rdmap{rail}-rdm").into(),
        peer_domain: format!("rdmap{rail}-rdm").into(),
        path: PathStatus {
            reachable: Some(reachable),
            ..PathStatus::default()
        },
        reason: (!reachable).then_some(DiagnosisReason::SecurityGroup),
    };
    let rail1_down = |name: &str| {
        let mut p = dropped(name, DiagnosisReason::SecurityGroup);
        p.rails = vec![rail(0, true), rail(1, false), rail(2, true)];
        p
    };
    let c = condition(&[healthy("gpu-2"), rail1_down("gpu-3"), rail1_down("gpu-4")]);
    assert_eq!(
        (c.status, c.reason),
        (ConditionStatus::False, ConditionReason::RailDropped)
    );
    assert_eq!(
        c.message,
        "Rail 1 (rdmap1-rdm) is dropped to 2 of 3 peers in its topology group \
         subnet:subnet-a while their rail 0 answers (security_group: 2); worst: gpu-3, gpu-4. \
         Check that rail's network interface: its security groups and subnet."
    );
    // Rail 0 itself dropped: not a rail alone, the dominant diagnosis stays.
    let mut whole = dropped("gpu-5", DiagnosisReason::SecurityGroup);
    whole.rails = vec![rail(0, false), rail(1, false)];
    let mut whole2 = whole.clone();
    whole2.name = "gpu-6".into();
    let c = condition(&[healthy("gpu-2"), whole, whole2]);
    assert_eq!(c.reason, ConditionReason::SecurityGroup);
    // Different rails down on each: no one rail dominates.
    let mut other = dropped("gpu-7", DiagnosisReason::SecurityGroup);
    other.rails = vec![rail(0, true), rail(1, true), rail(2, false)];
    let c = condition(&[healthy("gpu-2"), rail1_down("gpu-3"), other]);
    assert_eq!(c.reason, ConditionReason::SecurityGroup);
}
