//! Verify's unit tests.

use super::*;
use crate::state::FabricStatus;

#[test]
fn hosts_of_addresses() {
    assert_eq!(host_of("gpu2:9476"), "gpu2");
    assert_eq!(host_of("198.18.0.2:9476"), "198.18.0.2");
    assert_eq!(host_of("[fd00::1]:9476"), "fd00::1");
    assert_eq!(host_of("gpu2"), "gpu2");
}

fn context(state: Arc<AgentState>) -> VerifyContext {
    VerifyContext {
        state,
        rails: vec![],
        rail_domains: vec![],
        rail_macs: vec![],
        large_pinger: None,
        large_probe_sizes: vec![],
        provider: None,
        topology: watch::channel(None).1,
        timeout: Duration::from_millis(300),
        probe_size: 64,
        policy: VerdictPolicy::default(),
    }
}

fn listed(state: &AgentState, key: &str, name: &str) {
    state.set_peer(
        key,
        crate::state::PeerStatus {
            name: name.into(),
            address: key.into(),
            state: PeerState::Unknown,
            reason: None,
            summary: "".into(),
            ip: PathStatus::default(),
            fabric: PathStatus::default(),
            fabric_loss: 0.0,
            hello: None,
            warnings: vec![],
            since_unix: 0,
            rounds: 0,
            probed: false,
            name_conflict: None,
            rails: Vec::new(),
            peer_rails: None,
        },
    );
}

#[test]
fn names_resolve_to_peers_by_name_address_or_host() {
    let state = Arc::new(AgentState::new("gpu1", FabricStatus::default()));
    listed(&state, "127.0.0.1:9", "gpu2");
    listed(&state, "localhost:10", "localhost:10");
    let ctx = context(state);
    let asked: Vec<String> = ["gpu2", "gpu1", "nosuch", "localhost", "127.0.0.1:9"]
        .map(String::from)
        .to_vec();
    let (targets, unknown, this_node) = ctx.resolve(&asked);
    let keys: Vec<&str> = targets.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(keys, ["127.0.0.1:9", "localhost:10", "127.0.0.1:9"]);
    assert_eq!(unknown, ["nosuch"]);
    assert_eq!(this_node, ["gpu1"]);
}

/// A peer nothing answers for, on a node without fabric: both paths reported, not ok,
/// within twice the probe timeout.
#[tokio::test]
async fn a_dead_peer_is_not_ok_and_answers_in_time() {
    let state = Arc::new(AgentState::new("gpu1", FabricStatus::default()));
    listed(&state, "127.0.0.1:9", "gpu2");
    let ctx = context(state);
    let started = std::time::Instant::now();
    let answer = ctx.verify(&["gpu2".into(), "gpu9".into()]).await;
    assert!(started.elapsed() < ctx.timeout * 2 + Duration::from_millis(200));
    assert_eq!(answer.unknown, ["gpu9"]);
    let [peer] = answer.verified.as_slice() else {
        panic!("{answer:?}")
    };
    assert!(!peer.ok);
    assert_eq!(peer.state, "down");
    assert_eq!(peer.reason.as_deref(), Some("ip_refused"));
    assert_eq!(peer.ip.reachable, Some(false));
    assert_eq!(peer.ip.failure.as_deref(), Some("refused"));
    assert_eq!(peer.fabric.reachable, None);
}

fn hello_in(subnet: &str) -> Hello {
    Hello {
        node_name: "gpu3".into(),
        agent_version: "0.1.0".into(),
        instance_id: 3,
        fabric: crate::hello::HelloFabric {
            provider: "efa".into(),
            available: true,
            error: None,
            endpoints: vec![],
        },
        topology: Some(crate::topology::Topology {
            instance_id: "i-3".into(),
            instance_type: "p5.48xlarge".into(),
            availability_zone: "us-east-1a".into(),
            availability_zone_id: None,
            placement_group: None,
            primary_mac: "0e:00:00:00:00:03".into(),
            interfaces: vec![crate::topology::NetworkInterface {
                mac: "0e:00:00:00:00:03".into(),
                subnet_id: subnet.into(),
                vpc_id: "vpc-1".into(),
                security_group_ids: vec!["sg-1".into()],
                subnet_cidr: None,
            }],
        }),
        node_actions: None,
    }
}

fn pong() -> ProbeOutcome {
    let ms = Duration::from_millis(1);
    ProbeOutcome::Pong {
        rtt: ms,
        cold_rtt: ms,
        dwell: Duration::ZERO,
        responder_id: 3,
        warm: true,
    }
}

/// One verify's results judged: `fabric` and the smallest larger size lost, with gpu1
/// in subnet-a and the peer's hello placing it in `peer_subnet`.
fn judged(
    peer_subnet: &str,
    fabric: Option<Result<ProbeOutcome, String>>,
    lost: Option<usize>,
) -> NodeVerified {
    judged_with_rails(peer_subnet, fabric, lost, vec![], 1)
}

fn judged_with_rails(
    peer_subnet: &str,
    fabric: Option<Result<ProbeOutcome, String>>,
    lost: Option<usize>,
    others: Vec<rails::RailSeen>,
    paired: usize,
) -> NodeVerified {
    let hello = hello_in(peer_subnet);
    let domains: Vec<Arc<str>> = vec!["rxd0".into(), "rxd1".into()];
    // Rail 1's interfaces are in one subnet with one group on both sides.
    let rail1 = Relation::SameSubnet {
        subnet: "subnet-rail1".into(),
        local_groups: vec!["sg-rail1".into()],
        peer_groups: vec!["sg-rail1".into()],
    };
    let relation_of = move |rail: usize| {
        if rail == 1 {
            rail1.clone()
        } else {
            Relation::Unknown
        }
    };
    let local = Placement::of(hello_in("subnet-a").topology.as_ref().unwrap());
    let ip = Ok((hello.clone(), Duration::from_millis(1)));
    judge(
        ("gpu3".into(), "198.18.101.13:9476".into()),
        &ip,
        (fabric, lost),
        FabricContext {
            local_fabric: true,
            provider: Some("efa"),
            hello: Some(&hello),
            measured: None,
            refused: None,
        },
        (local.as_ref(), 64),
        RailsSeen {
            others,
            paired,
            domains: &domains,
            relation_of: &relation_of,
        },
        VerdictPolicy::default(),
    )
}

#[test]
fn a_verify_is_ok_only_when_every_paired_rail_answers() {
    let both = judged_with_rails(
        "subnet-a",
        Some(Ok(pong())),
        None,
        vec![rails::RailSeen::of(1, &Ok(pong()), Some("efa"))],
        2,
    );
    assert!(both.ok, "{both:?}");
    assert_eq!(both.rails.len(), 2);
    assert!(both.rails.iter().all(|r| r.path.reachable == Some(true)));

    let cut = judged_with_rails(
        "subnet-a",
        Some(Ok(pong())),
        None,
        vec![rails::RailSeen::of(
            1,
            &Ok(ProbeOutcome::Timeout),
            Some("efa"),
        )],
        2,
    );
    assert!(!cut.ok, "{cut:?}");
    assert_eq!(cut.state, "fabric_dropped");
    // Rail 1's own interfaces say why (rail 0's are in one subnet too; its groups differ).
    assert_eq!(cut.reason.as_deref(), Some("security_group"));
    assert_eq!(cut.fabric.reachable, Some(false));
    assert_eq!(cut.rails[0].path.reachable, Some(true));
    assert_eq!(
        (cut.rails[1].rail, cut.rails[1].domain.as_str()),
        (1, "rxd1")
    );
    assert_eq!(cut.rails[1].path.reachable, Some(false));
    assert_eq!(cut.rails[1].path.failure.as_deref(), Some("security_group"));
    assert!(
        cut.summary
            .starts_with("1 of 2 rails answer; not rail 1 (rxd1 to the peer's "),
        "{}",
        cut.summary
    );
    assert!(cut.summary.contains("sg-rail1"), "{}", cut.summary);
}

#[test]
fn one_probe_per_path_is_judged_without_hysteresis() {
    let healthy = judged("subnet-a", Some(Ok(pong())), None);
    assert!(healthy.ok, "{healthy:?}");
    assert_eq!((healthy.state.as_str(), healthy.reason), ("healthy", None));
    assert_eq!(healthy.fabric.reachable, Some(true));

    // The fabric drops while IP answers: the placement says why.
    let cross = judged("subnet-b", Some(Ok(ProbeOutcome::Timeout)), None);
    assert!(!cross.ok);
    assert_eq!(cross.state, "fabric_dropped");
    assert_eq!(cross.reason.as_deref(), Some("cross_subnet"));
    assert_eq!(cross.fabric.failure.as_deref(), Some("timeout"));
    assert_eq!(cross.ip.reachable, Some(true));
    assert!(cross.summary.contains("subnet-b"), "{}", cross.summary);
    let same = judged("subnet-a", Some(Ok(ProbeOutcome::Timeout)), None);
    assert_eq!(same.reason.as_deref(), Some("security_group"));

    // Small probes answer, larger ones are lost: not ok (NCCL's messages are large).
    let sized = judged("subnet-a", Some(Ok(pong())), Some(9000));
    assert!(!sized.ok);
    assert_eq!(sized.reason.as_deref(), Some("probe_size"));
    assert_eq!(sized.fabric.reachable, Some(true));
    assert_eq!(sized.fabric.failure.as_deref(), Some("probe_size"));

    // An address the provider refuses, and no fabric address at all.
    let refused = judged("subnet-a", Some(Err("bad address".into())), None);
    assert!(!refused.ok);
    assert_eq!(refused.fabric.failure.as_deref(), Some("bad_address"));
    let never = judged("subnet-a", None, None);
    assert!(!never.ok);
    assert_eq!(never.fabric.reachable, None);
}
