//! Every rail: unit tests of the pure parts.

use std::time::Duration;

use super::*;
use crate::hello::{HelloEndpoint, HelloFabric};
use crate::topology::{NetworkInterface, Topology};
use FabricObservation as F;

const MS: Duration = Duration::from_millis(1);

fn topology(rails: &[(&str, &str, &str)]) -> Topology {
    Topology {
        instance_id: "i-1".into(),
        instance_type: "p5.48xlarge".into(),
        availability_zone: "us-east-1a".into(),
        availability_zone_id: None,
        placement_group: None,
        primary_mac: rails[0].0.into(),
        interfaces: rails
            .iter()
            .map(|(mac, subnet, group)| NetworkInterface {
                mac: (*mac).into(),
                subnet_id: (*subnet).into(),
                vpc_id: "vpc-1".into(),
                security_group_ids: vec![(*group).into()],
                subnet_cidr: None,
            })
            .collect(),
    }
}

fn hello(rails: usize, topology: Option<Topology>) -> Hello {
    Hello {
        node_name: "peer".into(),
        agent_version: "test".into(),
        instance_id: 1,
        fabric: HelloFabric {
            provider: "efa".into(),
            available: true,
            error: None,
            endpoints: (0..rails)
                .map(|r| HelloEndpoint {
                    rail: r as u16,
                    mac: Some(format!("0e:00:00:00:01:0{r}")),
                    domain: format!("rdmap{r}-rdm"),
                    address: format!("0{r}"),
                    display: format!("0{r}"),
                })
                .collect(),
        },
        topology,
        node_actions: None,
    }
}

fn seen(rail: u16, observation: FabricObservation) -> RailSeen {
    RailSeen {
        rail,
        observation,
        status: None,
        counted: None,
    }
}

#[test]
fn the_fabric_answers_only_when_every_paired_rail_does() {
    let answered = F::Answered(MS);
    let whole = [seen(1, F::Answered(MS)), seen(2, F::Answered(MS))];
    assert_eq!(combine(&answered, &whole), (answered.clone(), None));
    let rail2_cut = [seen(1, F::Answered(MS)), seen(2, F::Timeout)];
    assert_eq!(combine(&answered, &rail2_cut), (F::Timeout, Some(2)));
    // Rail 0 failing decides, whatever the others say.
    assert_eq!(combine(&F::Failed, &whole), (F::Failed, Some(0)));
    // A rail not learned yet is no failure.
    let learning = [seen(1, F::NotLearned)];
    assert_eq!(combine(&answered, &learning), (answered.clone(), None));
    assert_eq!(combine(&F::NotLearned, &rail2_cut), (F::NotLearned, None));
}

#[test]
fn nodes_with_different_rail_counts_pair_the_common_ones() {
    let efa = Some("efa");
    assert_eq!(paired(2, Some(&hello(1, None)), efa), 1);
    assert_eq!(paired(1, Some(&hello(2, None)), efa), 1);
    assert_eq!(paired(32, Some(&hello(32, None)), efa), 32);
    assert_eq!(paired(2, Some(&hello(2, None)), Some("tcp")), 0);
    assert_eq!(paired(2, None, efa), 0);
    let warning = count_warning(2, Some(1), 1).expect("a warning");
    assert!(
        warning.contains("the peer has 1 rail(s) and this node 2"),
        "{warning}"
    );
    assert!(warning.contains("only rails 0 to 0"), "{warning}");
    assert_eq!(count_warning(2, Some(2), 2), None);
    assert_eq!(count_warning(2, Some(1), 0), None);
}

#[test]
fn a_dropped_rail_is_diagnosed_from_its_own_interfaces() {
    // Rail 0's interfaces share a group; rail 1's are in one subnet too, and its drop
    // is the security group's. A peer whose rail 1 is in another subnet: cross_subnet.
    let local = topology(&[
        ("0e:00:00:00:00:00", "subnet-a", "sg-rail0"),
        ("0e:00:00:00:00:01", "subnet-b", "sg-rail1"),
    ]);
    let macs = vec![
        Some("0e:00:00:00:00:00".to_owned()),
        Some("0e:00:00:00:00:01".to_owned()),
    ];
    let peer = hello(
        2,
        Some(topology(&[
            ("0e:00:00:00:01:00", "subnet-a", "sg-rail0"),
            ("0e:00:00:00:01:01", "subnet-b", "sg-other"),
        ])),
    );
    let relation = rail_relation(Some(&local), &macs, Some(&peer), 1);
    assert_eq!(
        relation,
        Relation::SameSubnet {
            subnet: "subnet-b".into(),
            local_groups: vec!["sg-rail1".into()],
            peer_groups: vec!["sg-other".into()],
        }
    );
    let dropped = PathStatus {
        reachable: Some(false),
        last_failure: Some(PathFailure::Timeout),
        ..PathStatus::default()
    };
    assert_eq!(
        rail_reason(&relation, &dropped),
        Some(DiagnosisReason::SecurityGroup)
    );
    let elsewhere = hello(
        2,
        Some(topology(&[
            ("0e:00:00:00:01:00", "subnet-a", "sg-rail0"),
            ("0e:00:00:00:01:01", "subnet-c", "sg-rail1"),
        ])),
    );
    let relation = rail_relation(Some(&local), &macs, Some(&elsewhere), 1);
    assert!(
        matches!(relation, Relation::CrossSubnet { .. }),
        "{relation:?}"
    );
    assert_eq!(
        rail_reason(&relation, &dropped),
        Some(DiagnosisReason::CrossSubnet)
    );
    // An answering rail has no reason; without placement, the path's own.
    let answering = PathStatus {
        reachable: Some(true),
        ..PathStatus::default()
    };
    assert_eq!(rail_reason(&relation, &answering), None);
    assert_eq!(
        rail_reason(&Relation::Unknown, &dropped),
        Some(DiagnosisReason::FabricTimeout)
    );
    // A MAC the topology does not list: the primary interface stands in.
    let unlisted = vec![Some("0e:00:00:00:00:09".to_owned())];
    assert_eq!(
        rail_relation(Some(&local), &unlisted, Some(&peer), 0),
        Relation::SameSubnet {
            subnet: "subnet-a".into(),
            local_groups: vec!["sg-rail0".into()],
            peer_groups: vec!["sg-rail0".into()],
        }
    );
}

#[test]
fn rail_statuses_name_the_failing_rails_and_keep_what_was_not_probed() {
    let domains: Vec<Arc<str>> = vec!["rdmap0-rdm".into(), "rdmap1-rdm".into()];
    let peer = hello(2, None);
    let ok = PathStatus {
        reachable: Some(true),
        rtt_seconds: Some(20e-6),
        ..PathStatus::default()
    };
    let cut = PathStatus {
        reachable: Some(false),
        last_failure: Some(PathFailure::Timeout),
        last_error: Some("no answer before the deadline".into()),
        ..PathStatus::default()
    };
    let others = [RailSeen {
        rail: 1,
        observation: F::Timeout,
        status: Some(cut.clone()),
        counted: Some(ProbeResult::Timeout),
    }];
    let reason = |rail: usize, path: &PathStatus| {
        (rail == 1 && path.reachable == Some(false)).then_some(DiagnosisReason::SecurityGroup)
    };
    let rails = statuses(&[], 2, Some(&ok), &others, &domains, Some(&peer), reason);
    assert_eq!(rails.len(), 2);
    assert_eq!(rails[0].path, ok);
    assert_eq!(
        (&*rails[1].domain, &*rails[1].peer_domain),
        ("rdmap1-rdm", "rdmap1-rdm")
    );
    assert_eq!(rails[1].reason, Some(DiagnosisReason::SecurityGroup));
    assert_eq!(
        failing_note(&rails).as_deref(),
        Some("1 of 2 rails answer; not rail 1 (rdmap1-rdm to the peer's rdmap1-rdm)")
    );
    let fabric = partial_failure(&ok, &rails).expect("rail 1 fails");
    assert_eq!(fabric.reachable, Some(false));
    assert_eq!(fabric.rtt_seconds, ok.rtt_seconds);
    assert_eq!(
        fabric.last_error.as_deref(),
        Some("rail 1 (rdmap1-rdm): no answer before the deadline")
    );
    // Nothing new on rail 1 (its address not learned again yet): its last result stays,
    // and its domain string is shared, not copied.
    let quiet = [seen(1, F::NotLearned)];
    let again = statuses(&rails, 2, Some(&ok), &quiet, &domains, Some(&peer), reason);
    assert_eq!(again[1].path, cut);
    assert!(Arc::ptr_eq(&again[1].peer_domain, &rails[1].peer_domain));
    // Healed: no note, no partial failure.
    let healed = [RailSeen {
        status: Some(ok.clone()),
        ..seen(1, F::Answered(MS))
    }];
    let whole = statuses(&again, 2, Some(&ok), &healed, &domains, Some(&peer), reason);
    assert_eq!(failing_note(&whole), None);
    assert_eq!(partial_failure(&ok, &whole), None);
    // One rail paired: nothing to name.
    let one = statuses(&[], 1, Some(&cut), &[], &domains, Some(&peer), reason);
    assert_eq!(one.len(), 1);
    assert_eq!(failing_note(&one), None);
}

#[test]
fn a_rail_outcome_of_an_address_the_fresh_hello_withdrew_is_not_used() {
    let links = RailLinks {
        links: vec![Some(Link::Held {
            address: vec![0x01],
            handle: PeerHandle::never_issued(),
            last: None,
        })],
        even_next: false,
    };
    let outcomes = [(1, ProbeOutcome::Timeout)];
    let efa = Some("efa");
    let same = hello(2, None);
    let judged = observe_rails(&outcomes, &links, Some(&same), efa, 2);
    assert_eq!(judged[0].observation, F::Timeout);
    assert_eq!(judged[0].counted, Some(ProbeResult::Timeout));
    let mut moved = hello(2, None);
    moved.fabric.endpoints[1].address = "0a".into();
    let stale = observe_rails(&outcomes, &links, Some(&moved), efa, 2);
    assert_eq!(stale[0].observation, F::NotLearned);
    assert_eq!(stale[0].status, None);
    // A failed hello fetch withdraws nothing.
    let kept = observe_rails(&outcomes, &links, None, efa, 2);
    assert_eq!(kept[0].observation, F::Timeout);
    // A refused address is reported as such.
    let refused = RailLinks {
        links: vec![Some(Link::Refused {
            address: vec![0x01],
            why: "bad address".into(),
        })],
        even_next: false,
    };
    let seen = observe_rails(&[], &refused, Some(&same), efa, 2);
    assert_eq!(seen[0].observation, F::BadAddress);
    assert_eq!(
        seen[0].status.as_ref().and_then(|s| s.last_failure),
        Some(PathFailure::BadAddress)
    );
}

/// Links held on rails 1 to `rails - 1`, at the addresses `hello(rails, ..)` offers, none
/// pinged yet.
fn held(rails: usize) -> RailLinks {
    RailLinks {
        links: (1..rails)
            .map(|r| {
                Some(Link::Held {
                    address: vec![r as u8],
                    handle: PeerHandle::never_issued(),
                    last: None,
                })
            })
            .collect(),
        even_next: false,
    }
}

/// The same, each rail pinged once and answering.
fn pinged_once(rails: usize) -> RailLinks {
    let mut links = held(rails);
    let all: Vec<(u16, ProbeOutcome)> = (1..rails).map(|r| (r as u16, pong())).collect();
    let seen = observe_rails(&all, &links, None, Some("efa"), rails);
    links.remember(&seen);
    links
}

fn pinged(links: &RailLinks, rotate: bool) -> Vec<usize> {
    links.to_ping(rotate).into_iter().map(|(r, _)| r).collect()
}

fn pong() -> ProbeOutcome {
    ProbeOutcome::Pong {
        rtt: MS,
        cold_rtt: MS,
        dwell: Duration::ZERO,
        responder_id: 1,
        warm: false,
    }
}

#[test]
fn up_to_four_rails_every_probe_pings_every_rail() {
    for rails in 2..=EVERY_RAIL_UP_TO {
        let links = pinged_once(rails);
        assert!(!links.rotates(), "{rails} rails");
        assert_eq!(
            pinged(&links, links.rotates()),
            (1..rails).collect::<Vec<_>>()
        );
    }
}

#[test]
fn more_rails_are_pinged_half_at_a_time_each_within_two_probes() {
    // Links just made: the first probe pings every rail.
    let fresh = held(EVERY_RAIL_UP_TO + 1);
    assert!(!fresh.rotates());
    let mut links = pinged_once(EVERY_RAIL_UP_TO + 1);
    assert!(links.rotates());
    let mut links32 = pinged_once(32);
    let mut covered = std::collections::BTreeSet::new();
    for turn in 0..4 {
        let half = pinged(&links32, true);
        assert!(
            half.len() == 15 || half.len() == 16,
            "turn {turn}: {half:?}"
        );
        covered.extend(half);
        if turn == 1 {
            // Two probes in a row cover every rail.
            assert_eq!(covered, (1..32).collect());
        }
        links32.rotated();
    }
    assert_eq!(pinged(&links, true), [1, 3]);
    links.rotated();
    assert_eq!(pinged(&links, true), [2, 4]);
    links.rotated();
    assert_eq!(pinged(&links, true), [1, 3]);
    // Confirmations ping every rail.
    assert_eq!(pinged(&links, false), [1, 2, 3, 4]);
}

#[test]
fn a_rail_left_out_of_a_probe_is_judged_by_its_latest_ping() {
    let efa = Some("efa");
    let peer = hello(5, None);
    let mut links = pinged_once(5);
    // Rails 1 and 3 pinged: 3 is dropped.
    let first = [(1, pong()), (3, ProbeOutcome::Timeout)];
    let seen = observe_rails(&first, &links, Some(&peer), efa, 5);
    links.remember(&seen);
    links.rotated();
    // Rails 2 and 4 pinged, both answer: rail 3 is still dropped, the peer's fabric too.
    let second = [(2, pong()), (4, pong())];
    let seen = observe_rails(&second, &links, Some(&peer), efa, 5);
    assert_eq!(seen[2].observation, F::Timeout, "rail 3, as last pinged");
    assert_eq!(seen[2].status, None, "its status stays");
    assert_eq!(seen[2].counted, None, "and no probe is counted");
    let (observation, deciding) = combine(&F::Answered(MS), &seen);
    assert_eq!((observation, deciding), (F::Timeout, Some(3)));
    links.remember(&seen);
    links.rotated();
    // Rail 3 answers again: the fabric is whole.
    let third = [(1, pong()), (3, pong())];
    let seen = observe_rails(&third, &links, Some(&peer), efa, 5);
    assert!(matches!(
        combine(&F::Answered(MS), &seen),
        (F::Answered(_), None)
    ));
    // A rail never pinged yet is not learned, not reachable.
    let fresh = held(5);
    let seen = observe_rails(&[(1, pong())], &fresh, Some(&peer), efa, 5);
    assert_eq!(seen[1].observation, F::NotLearned);
}
