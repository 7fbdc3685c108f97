//! The startup gate: when the agent may remove its node's startup taint. Pure; the writer
//! reads the node and patches it ([`super::api`]).
//!
//! A node group registers its nodes with the taint (kubelet `--register-with-taints`, an
//! EKS managed node group's `taints`), so that pods which do not tolerate it (training jobs)
//! land only once the agent has verified the node's fabric; the agent itself tolerates
//! every taint. It removes the taint, and only that key, once:
//! - at least `--verify-peers` peers of its topology group (or all there are, when fewer)
//!   answered on the fabric, and the condition is not False; or
//! - its group has no peer at all and `--startup-taint-timeout` has passed (the first node
//!   of a group has nothing to verify against; the condition says it was not verified).
//!
//! It never adds a taint, and after removing it (or finding it absent) the gate is done: a
//! fabric that fails later is the condition's and the Events' business, not the taint's.

use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;

use super::condition::{ConditionStatus, FabricCondition, GroupTally};
use super::settings::StartupTaint;

/// What the gate does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// Keep the taint, because of this.
    Wait(String),
    /// Remove it: the fabric is verified against these peers.
    Remove { verified: Vec<String> },
    /// Remove it: there is no peer to verify against and the timeout passed.
    RemoveUnverified,
}

/// Decides from this round's tally; `waited` is how long the gate has been open.
pub fn decide(
    gate: &StartupTaint,
    local_fabric: bool,
    tally: &GroupTally,
    condition: &FabricCondition,
    waited: Duration,
) -> GateDecision {
    if !local_fabric {
        return GateDecision::Wait("this node has no usable fabric".into());
    }
    if condition.status == ConditionStatus::False {
        return GateDecision::Wait(format!(
            "the fabric condition is False ({})",
            condition.reason.as_str()
        ));
    }
    if tally.members == 0 {
        if waited >= gate.timeout {
            return GateDecision::RemoveUnverified;
        }
        return GateDecision::Wait(format!(
            "no peer in its group to verify against yet; the taint goes after {:?} without one",
            gate.timeout
        ));
    }
    let required = gate.verify_peers.min(tally.members);
    if tally.verified.len() >= required {
        return GateDecision::Remove {
            verified: tally.verified.iter().take(required).cloned().collect(),
        };
    }
    GateDecision::Wait(format!(
        "{} of the {required} peers required answered on the fabric",
        tally.verified.len()
    ))
}

/// The sentence the condition carries after a removal without verification.
pub fn unverified_note(gate: &StartupTaint) -> String {
    format!(
        "The startup taint {} was removed after {:?} with no peer in its group to verify \
         against: the fabric is not verified.",
        gate.key, gate.timeout
    )
}

/// The node's taints without `key` (every effect of it), or `None` when it carries none.
pub fn without_key(taints: &[Taint], key: &str) -> Option<Vec<Taint>> {
    if !taints.iter().any(|t| t.key == key) {
        return None;
    }
    Some(taints.iter().filter(|t| t.key != key).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_actions::condition::tests::peer;
    use crate::node_actions::condition::{evaluate, tally, ConditionInputs};
    use crate::state::PeerStatus;
    use crate::verdict::{DiagnosisReason, PeerState};

    fn gate(verify_peers: usize) -> StartupTaint {
        StartupTaint {
            key: "efaprobe.io/fabric-unverified".into(),
            verify_peers,
            timeout: Duration::from_secs(600),
        }
    }

    fn decide_for(g: &StartupTaint, peers: &[PeerStatus], waited: u64) -> GateDecision {
        let t = tally(Some("subnet:subnet-a"), peers);
        let c = evaluate(ConditionInputs {
            local_fabric: true,
            tally: &t,
            threshold: 0.5,
            gate_note: None,
        });
        decide(g, true, &t, &c, Duration::from_secs(waited))
    }

    fn p(name: &str, state: PeerState) -> PeerStatus {
        let reason = (state == PeerState::FabricDropped).then_some(DiagnosisReason::FabricTimeout);
        peer(name, Some("subnet-a"), state, reason)
    }

    #[test]
    fn removed_once_enough_peers_of_the_group_answer_on_the_fabric() {
        let g = gate(2);
        let one = [
            p("gpu-2", PeerState::Healthy),
            p("gpu-3", PeerState::Unknown),
        ];
        assert!(
            matches!(decide_for(&g, &one, 0), GateDecision::Wait(w) if w.contains("1 of the 2"))
        );
        let two = [
            p("gpu-2", PeerState::Healthy),
            p("gpu-3", PeerState::Healthy),
        ];
        assert_eq!(
            decide_for(&g, &two, 0),
            GateDecision::Remove {
                verified: vec!["gpu-2".into(), "gpu-3".into()]
            }
        );
    }

    #[test]
    fn all_there_are_when_fewer_than_asked() {
        assert!(matches!(
            decide_for(&gate(5), &[p("gpu-2", PeerState::Healthy)], 0),
            GateDecision::Remove { .. }
        ));
    }

    #[test]
    fn kept_while_the_condition_is_false_or_there_is_no_fabric() {
        let peers = [
            p("gpu-2", PeerState::Healthy),
            p("gpu-3", PeerState::Healthy),
            p("gpu-4", PeerState::FabricDropped),
            p("gpu-5", PeerState::FabricDropped),
            p("gpu-6", PeerState::FabricDropped),
        ];
        assert!(
            matches!(decide_for(&gate(2), &peers, 10_000), GateDecision::Wait(w) if w.contains("False"))
        );
        let t = tally(Some("subnet:subnet-a"), &peers[..2]);
        let c = evaluate(ConditionInputs {
            local_fabric: false,
            tally: &t,
            threshold: 0.5,
            gate_note: None,
        });
        assert!(matches!(
            decide(&gate(2), false, &t, &c, Duration::from_secs(10_000)),
            GateDecision::Wait(_)
        ));
    }

    #[test]
    fn without_peers_only_after_the_timeout_and_peers_that_do_not_answer_never() {
        assert!(matches!(
            decide_for(&gate(2), &[], 599),
            GateDecision::Wait(_)
        ));
        assert_eq!(
            decide_for(&gate(2), &[], 600),
            GateDecision::RemoveUnverified
        );
        let silent = [p("gpu-2", PeerState::Down)];
        assert!(matches!(
            decide_for(&gate(2), &silent, 100_000),
            GateDecision::Wait(_)
        ));
    }

    #[test]
    fn only_the_key_is_taken_out() {
        let taint = |key: &str, effect: &str| Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: None,
        };
        let taints = [
            taint("nvidia.com/gpu", "NoSchedule"),
            taint("efaprobe.io/fabric-unverified", "NoSchedule"),
            taint("efaprobe.io/fabric-unverified", "NoExecute"),
            taint("efaprobe.io/fabric-unverified-too", "NoSchedule"),
        ];
        let left = without_key(&taints, "efaprobe.io/fabric-unverified").unwrap();
        assert_eq!(left, [taints[0].clone(), taints[3].clone()]);
        assert_eq!(without_key(&left, "efaprobe.io/fabric-unverified"), None);
    }
}
