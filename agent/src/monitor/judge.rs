//! What is reported of a peer: its verdict, and the one place where it is overridden (a new
//! peer in its grace period, a peer the sample rotated out, a peer not probed yet).

use std::sync::Arc;
use std::time::Duration;

use super::summary::summarize;
use crate::state::PathStatus;
use crate::verdict::diagnosis::Relation;
use crate::verdict::{DiagnosisReason, PeerState, PeerVerdict};

/// The reported state of a peer, with its reason and a sentence for a person.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reported {
    pub state: PeerState,
    pub reason: Option<DiagnosisReason>,
    pub summary: Arc<str>,
}

/// A peer this node probes: its verdict, unless it is still within its grace period
/// (`grace_left`), when its verdict is formed but not reported (nor alerted on) yet.
pub(super) fn judged(
    verdict: &PeerVerdict,
    grace_left: Option<Duration>,
    ip: &PathStatus,
    fabric: &PathStatus,
    relation: &Relation,
    failing_rails: Option<&str>,
) -> Reported {
    let mut summary = summarize(
        verdict.state(),
        verdict.reason(),
        ip,
        fabric,
        verdict.fabric_loss(),
        relation,
    );
    // Which rails, first: with 32 of them, "the fabric is dropped" alone says too little.
    if let (Some(rails), false) = (
        failing_rails,
        matches!(verdict.state(), PeerState::Healthy | PeerState::Unknown),
    ) {
        summary = format!("{rails}. {summary}");
    }
    match grace_left {
        Some(left) => Reported {
            state: PeerState::Unknown,
            reason: None,
            summary: format!(
                "new peer, in its grace period for {}s more ({summary})",
                left.as_secs() + 1
            )
            .into(),
        },
        None => Reported {
            state: verdict.state(),
            reason: verdict.reason(),
            summary: summary.into(),
        },
    }
}

/// What peers whose verdict is overridden whatever their probes say report: one text each,
/// shared by every such peer.
#[derive(Debug, Clone)]
pub(super) struct Overridden {
    waiting: Arc<str>,
    retired: Arc<str>,
}

impl Overridden {
    /// `rotation`: rounds between two changes of the sample.
    pub fn new(rotation: u64) -> Overridden {
        Overridden {
            waiting: "waiting for the peer's first answer".into(),
            retired: format!(
                "not probed from this node now: outside the peers its probe budget covers \
                 (--probe-budget); the selection rotates every {rotation} rounds"
            )
            .into(),
        }
    }

    /// A peer listed but not probed yet.
    pub fn waiting(&self) -> Reported {
        Reported {
            state: PeerState::Unknown,
            reason: None,
            summary: self.waiting.clone(),
        }
    }

    /// A peer the sample rotated out: no longer observed from here, whatever it was.
    pub fn retired(&self) -> Reported {
        Reported {
            state: PeerState::Unknown,
            reason: None,
            summary: self.retired.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{FabricObservation, IpObservation, Round, VerdictPolicy};

    fn down_verdict() -> PeerVerdict {
        let mut verdict = PeerVerdict::new(VerdictPolicy::default());
        for _ in 0..VerdictPolicy::default().hysteresis {
            verdict.observe(&Round {
                ip: IpObservation::Refused,
                fabric: FabricObservation::LocalNoFabric,
                relation: Relation::Unknown,
                lost_size: None,
            });
        }
        assert_eq!(verdict.state(), PeerState::Down);
        verdict
    }

    #[test]
    fn grace_hides_a_formed_verdict_and_says_for_how_long() {
        let verdict = down_verdict();
        let path = PathStatus::default();
        let relation = Relation::Unknown;
        let shown = judged(&verdict, None, &path, &path, &relation, None);
        assert_eq!(shown.state, PeerState::Down);
        assert!(shown.reason.is_some());
        let hidden = judged(
            &verdict,
            Some(Duration::from_millis(2500)),
            &path,
            &path,
            &relation,
            None,
        );
        assert_eq!((hidden.state, hidden.reason), (PeerState::Unknown, None));
        assert!(
            hidden
                .summary
                .starts_with("new peer, in its grace period for 3s more (neither"),
            "{}",
            hidden.summary
        );
    }

    #[test]
    fn retired_and_waiting_peers_are_unknown_without_a_reason() {
        let overridden = Overridden::new(6);
        for reported in [overridden.retired(), overridden.waiting()] {
            assert_eq!(
                (reported.state, reported.reason),
                (PeerState::Unknown, None)
            );
        }
        assert!(overridden
            .retired()
            .summary
            .ends_with("rotates every 6 rounds"));
        // One text, however many peers say it.
        assert!(Arc::ptr_eq(
            &overridden.retired().summary,
            &overridden.retired().summary
        ));
    }
}
