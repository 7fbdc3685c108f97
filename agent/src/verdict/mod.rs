//! Per-peer verdicts: what the two paths say, turned into one state with hysteresis.
//!
//! | IP path (hello) | fabric path (ping) | state |
//! |---|---|---|
//! | ok | ok | `healthy` (or `degraded` over loss/latency thresholds) |
//! | ok | timeouts or error completions | `fabric_dropped` |
//! | fails | ok | `ip_blocked` |
//! | fails | fails, or never learned | `down` |
//! | answers JSON, but not a hello this agent reads | never learned | `unknown` (`ip_protocol`) |
//! | ok | the peer's address refused by this node's provider | `fabric_dropped` |
//! | ok | this node has no fabric, or nothing known yet | `unknown` |
//!
//! A state changes only after `hysteresis` consecutive rounds agree, so one lost probe does
//! not flap it. Leaving `unknown` takes one round: there is nothing to flap from.

pub mod diagnosis;

use std::time::Duration;

use serde::Serialize;

use diagnosis::Relation;

/// The verdict for one peer.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PeerState {
    Healthy,
    FabricDropped,
    IpBlocked,
    Down,
    Degraded,
    Unknown,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Some path to the peer fails: `down`, `fabric_dropped` or `ip_blocked`.
    pub const fn is_unreachable(self) -> bool {
        matches!(
            self,
            PeerState::Down | PeerState::FabricDropped | PeerState::IpBlocked
        )
    }
}

/// Why a peer is not healthy, where it is known. Bounded: these are metric label values.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DiagnosisReason {
    /// The provider reported the fabric send failed (its text is in the peer's details).
    ProviderError,
    /// Fabric probes went unanswered: silently dropped.
    FabricTimeout,
    /// The peer has no usable fabric.
    PeerNoFabric,
    /// This node has no usable fabric.
    LocalNoFabric,
    /// The peer runs another provider than this node.
    ProviderMismatch,
    /// This node's provider refused the fabric address the peer's hello named.
    FabricBadAddress,
    /// The peer's hello timed out: IP packets silently dropped.
    IpTimeout,
    /// The peer's agent refused the connection: host up, agent not listening.
    IpRefused,
    /// The IP path failed for another reason (unreachable, reset, dns).
    IpError,
    /// The peer's agent answered something that is not a hello.
    IpProtocol,
    /// Fabric probes are lost above the threshold.
    FabricLoss,
    /// Round-trip time above the threshold.
    HighLatency,
    /// Fabric dropped between nodes in different subnets (EFA does not cross subnets).
    CrossSubnet,
    /// Fabric dropped between nodes in different availability zones.
    CrossAz,
    /// Fabric dropped within one subnet: the security group's self-referencing rule is
    /// missing, or a rule went stale.
    SecurityGroup,
    /// Small fabric probes answer but larger ones are lost: packets of that size are dropped
    /// on the path (an MTU mismatch, jumbo frames off somewhere).
    ProbeSize,
}

impl DiagnosisReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What the fabric path showed this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FabricObservation {
    /// Answered, with the round-trip time.
    Answered(Duration),
    /// No answer before the deadline.
    Timeout,
    /// The provider reported an error.
    Failed,
    /// Not probed: this node has no fabric.
    LocalNoFabric,
    /// Not probed: the peer said it has none.
    PeerNoFabric,
    /// Not probed: the peer runs another provider.
    ProviderMismatch,
    /// Not probed: the peer's fabric address was never learned.
    NotLearned,
    /// Not probed: this node's provider refused the address the peer's hello named.
    BadAddress,
}

/// What the IP path showed this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpObservation {
    Answered(Duration),
    Timeout,
    Refused,
    Protocol,
    /// The peer's agent answered with JSON that is not a hello this agent reads (another
    /// version): its host and agent are up.
    ForeignHello,
    OtherError,
}

/// One round's observations of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub ip: IpObservation,
    pub fabric: FabricObservation,
    /// How the two nodes' placements relate, which explains a fabric drop when known.
    pub relation: Relation,
    /// The smallest larger probe size whose latest probe went unanswered, while the path
    /// answers small probes.
    pub lost_size: Option<usize>,
}

/// Thresholds for `degraded` and the hysteresis depth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerdictPolicy {
    /// Consecutive agreeing rounds before a state changes (at least 1).
    pub hysteresis: u32,
    /// Fabric loss ratio over the recent window above which a peer is `degraded`.
    pub max_loss: f64,
    /// RTT on either path above which a peer is `degraded`.
    pub max_rtt: Duration,
    /// Rounds in the loss window.
    pub loss_window: usize,
}

impl Default for VerdictPolicy {
    fn default() -> Self {
        VerdictPolicy {
            hysteresis: 2,
            max_loss: 0.2,
            max_rtt: Duration::from_millis(50),
            loss_window: 10,
        }
    }
}

/// The state machine for one peer.
#[derive(Debug, Clone)]
pub struct PeerVerdict {
    policy: VerdictPolicy,
    state: PeerState,
    reason: Option<DiagnosisReason>,
    candidate: Option<(PeerState, Option<DiagnosisReason>)>,
    streak: u32,
    /// Recent fabric outcomes (true = answered), newest last.
    fabric_window: std::collections::VecDeque<bool>,
}

impl PeerVerdict {
    pub fn new(policy: VerdictPolicy) -> Self {
        PeerVerdict {
            policy,
            state: PeerState::Unknown,
            reason: None,
            candidate: None,
            streak: 0,
            fabric_window: std::collections::VecDeque::new(),
        }
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The diagnosis of the current state; `None` while healthy.
    pub fn reason(&self) -> Option<DiagnosisReason> {
        self.reason
    }

    /// Loss ratio of the fabric path over the recent window.
    pub fn fabric_loss(&self) -> f64 {
        if self.fabric_window.is_empty() {
            return 0.0;
        }
        let lost = self.fabric_window.iter().filter(|ok| !**ok).count();
        lost as f64 / self.fabric_window.len() as f64
    }

    /// True while the latest results disagree with the state but are not yet enough to
    /// change it: a confirming probe now decides sooner than the next round would.
    pub fn is_changing(&self) -> bool {
        match self.candidate {
            Some(c) => c != (self.state, self.reason),
            None => false,
        }
    }

    /// The peer's fabric address changed (its agent restarted): losses recorded against the
    /// old address say nothing about the new path.
    pub fn fabric_path_changed(&mut self) {
        self.fabric_window.clear();
    }

    /// Feeds one round; returns true if the state changed.
    pub fn observe(&mut self, round: &Round) -> bool {
        // The loss window measures a working path's quality. During an outage its losses are
        // explained by the outage, and counting them would hold a recovered peer in
        // `degraded`; so they are not recorded, and the window restarts on entering one.
        let in_outage = matches!(self.state, PeerState::FabricDropped | PeerState::Down);
        match round.fabric {
            FabricObservation::Answered(_) if !in_outage => self.push_fabric(true),
            FabricObservation::Timeout | FabricObservation::Failed if !in_outage => {
                self.push_fabric(false)
            }
            _ => {}
        }
        let raw = self.classify(round);
        if Some(raw) == self.candidate {
            self.streak += 1;
        } else {
            self.candidate = Some(raw);
            self.streak = 1;
        }
        let needed = if self.state == PeerState::Unknown {
            1
        } else {
            self.policy.hysteresis.max(1)
        };
        let (state, reason) = raw;
        if self.streak >= needed && (state, reason) != (self.state, self.reason) {
            let changed = state != self.state;
            if changed && matches!(state, PeerState::FabricDropped | PeerState::Down) {
                self.fabric_window.clear();
            }
            self.state = state;
            self.reason = reason;
            return changed;
        }
        false
    }

    fn push_fabric(&mut self, ok: bool) {
        self.fabric_window.push_back(ok);
        while self.fabric_window.len() > self.policy.loss_window.max(1) {
            self.fabric_window.pop_front();
        }
    }

    /// The state this round alone would give.
    fn classify(&self, round: &Round) -> (PeerState, Option<DiagnosisReason>) {
        use DiagnosisReason as R;
        use FabricObservation as F;
        use IpObservation as I;
        let ip_reason = match round.ip {
            I::Answered(_) => None,
            I::Timeout => Some(R::IpTimeout),
            I::Refused => Some(R::IpRefused),
            I::Protocol | I::ForeignHello => Some(R::IpProtocol),
            I::OtherError => Some(R::IpError),
        };
        match (&round.fabric, ip_reason) {
            // Without a fabric here only the IP path can be judged: its failure is still news.
            (F::LocalNoFabric, Some(reason)) => (PeerState::Down, Some(reason)),
            (F::LocalNoFabric, None) => (PeerState::Unknown, Some(R::LocalNoFabric)),
            (F::Answered(fabric_rtt), None) => {
                let I::Answered(ip_rtt) = round.ip else {
                    unreachable!("ip_reason is None only when the IP path answered")
                };
                if round.lost_size.is_some() {
                    return (PeerState::Degraded, Some(R::ProbeSize));
                }
                // A ratio over a few samples is noise: one loss in three is not 33% loss.
                let judged = self.fabric_window.len() * 2 >= self.policy.loss_window.max(2);
                if judged && self.fabric_loss() > self.policy.max_loss {
                    (PeerState::Degraded, Some(R::FabricLoss))
                } else if *fabric_rtt > self.policy.max_rtt || ip_rtt > self.policy.max_rtt {
                    (PeerState::Degraded, Some(R::HighLatency))
                } else {
                    (PeerState::Healthy, None)
                }
            }
            (F::Answered(_), Some(reason)) => (PeerState::IpBlocked, Some(reason)),
            (F::Timeout | F::Failed, None) => {
                let reason = match (&round.relation, &round.fabric) {
                    (Relation::CrossAz { .. }, _) => R::CrossAz,
                    (Relation::CrossSubnet { .. }, _) => R::CrossSubnet,
                    (Relation::SameSubnet { .. }, _) => R::SecurityGroup,
                    (Relation::Unknown, F::Failed) => R::ProviderError,
                    (Relation::Unknown, _) => R::FabricTimeout,
                };
                (PeerState::FabricDropped, Some(reason))
            }
            (F::PeerNoFabric, None) => (PeerState::FabricDropped, Some(R::PeerNoFabric)),
            (F::ProviderMismatch, None) => (PeerState::FabricDropped, Some(R::ProviderMismatch)),
            (F::BadAddress, None) => (PeerState::FabricDropped, Some(R::FabricBadAddress)),
            (F::NotLearned, None) => (PeerState::Unknown, None),
            // Its agent answers, in words this one does not read (another version): the
            // host and agent are up, and nothing is known of its fabric.
            (F::NotLearned, Some(reason)) if round.ip == I::ForeignHello => {
                (PeerState::Unknown, Some(reason))
            }
            (_, Some(reason)) => (PeerState::Down, Some(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;
    use DiagnosisReason as R;
    use FabricObservation as F;
    use IpObservation as I;

    const MS: Duration = Duration::from_millis(1);

    fn round(ip: I, fabric: F) -> Round {
        Round {
            ip,
            fabric,
            relation: Relation::Unknown,
            lost_size: None,
        }
    }

    fn settled(r: &Round) -> (PeerState, Option<DiagnosisReason>) {
        let mut v = PeerVerdict::new(VerdictPolicy::default());
        for _ in 0..3 {
            v.observe(r);
        }
        (v.state(), v.reason())
    }

    #[test]
    fn the_verdict_table() {
        let ok = || I::Answered(MS);
        let cases = [
            (round(ok(), F::Answered(MS)), PeerState::Healthy, None),
            (
                round(ok(), F::Timeout),
                PeerState::FabricDropped,
                Some(R::FabricTimeout),
            ),
            (
                round(ok(), F::Failed),
                PeerState::FabricDropped,
                Some(R::ProviderError),
            ),
            (
                round(ok(), F::PeerNoFabric),
                PeerState::FabricDropped,
                Some(R::PeerNoFabric),
            ),
            (
                round(I::Timeout, F::Answered(MS)),
                PeerState::IpBlocked,
                Some(R::IpTimeout),
            ),
            (
                round(I::Refused, F::Answered(MS)),
                PeerState::IpBlocked,
                Some(R::IpRefused),
            ),
            (
                round(I::Timeout, F::Timeout),
                PeerState::Down,
                Some(R::IpTimeout),
            ),
            (
                round(I::Refused, F::NotLearned),
                PeerState::Down,
                Some(R::IpRefused),
            ),
            (
                round(ok(), F::LocalNoFabric),
                PeerState::Unknown,
                Some(R::LocalNoFabric),
            ),
            (round(ok(), F::NotLearned), PeerState::Unknown, None),
            (
                round(I::ForeignHello, F::NotLearned),
                PeerState::Unknown,
                Some(R::IpProtocol),
            ),
            // Not HTTP, not JSON: nothing says an agent is there.
            (
                round(I::Protocol, F::NotLearned),
                PeerState::Down,
                Some(R::IpProtocol),
            ),
            (
                round(ok(), F::BadAddress),
                PeerState::FabricDropped,
                Some(R::FabricBadAddress),
            ),
            (
                round(I::Answered(Duration::from_secs(1)), F::Answered(MS)),
                PeerState::Degraded,
                Some(R::HighLatency),
            ),
        ];
        for (r, state, reason) in cases {
            assert_eq!(settled(&r), (state, reason), "{r:?}");
        }
    }

    #[test]
    fn placement_explains_a_fabric_drop() {
        let placed = |relation| Round {
            ip: I::Answered(MS),
            fabric: F::Timeout,
            relation,
            lost_size: None,
        };
        let cases = [
            (
                Relation::CrossAz {
                    local: "a".into(),
                    peer: "b".into(),
                },
                R::CrossAz,
            ),
            (
                Relation::CrossSubnet {
                    local: "a".into(),
                    peer: "b".into(),
                },
                R::CrossSubnet,
            ),
            (
                Relation::SameSubnet {
                    subnet: "s".into(),
                    local_groups: vec![],
                    peer_groups: vec![],
                },
                R::SecurityGroup,
            ),
        ];
        for (relation, reason) in cases {
            assert_eq!(
                settled(&placed(relation.clone())),
                (PeerState::FabricDropped, Some(reason))
            );
        }
        // A provider error with unknown placement keeps the provider's reason.
        let failed = Round {
            ip: I::Answered(MS),
            fabric: F::Failed,
            relation: Relation::Unknown,
            lost_size: None,
        };
        assert_eq!(
            settled(&failed),
            (PeerState::FabricDropped, Some(R::ProviderError))
        );
        // Placement does not turn an outage into a fabric drop.
        let down = Round {
            ip: I::Timeout,
            fabric: F::Timeout,
            relation: Relation::CrossSubnet {
                local: "a".into(),
                peer: "b".into(),
            },
            lost_size: None,
        };
        assert_eq!(settled(&down).0, PeerState::Down);
    }

    #[test]
    fn one_lost_probe_does_not_flap_a_healthy_peer() {
        let mut v = PeerVerdict::new(VerdictPolicy::default());
        let good = round(I::Answered(MS), F::Answered(MS));
        let lost = round(I::Answered(MS), F::Timeout);
        assert!(v.observe(&good), "leaving unknown takes one round");
        assert_eq!(v.state(), PeerState::Healthy);
        assert!(!v.observe(&lost));
        assert_eq!(v.state(), PeerState::Healthy);
        v.observe(&good);
        assert!(!v.observe(&lost));
        assert_eq!(v.state(), PeerState::Healthy);
        // Two in a row do change it.
        assert!(v.observe(&lost));
        assert_eq!(v.state(), PeerState::FabricDropped);
        assert_eq!(v.reason(), Some(R::FabricTimeout));
        // And recovery takes two good rounds too.
        assert!(!v.observe(&good));
        assert!(v.observe(&good));
        assert_eq!(v.state(), PeerState::Healthy);
        assert_eq!(v.reason(), None);
    }

    #[test]
    fn a_long_outage_does_not_leave_the_peer_degraded() {
        let mut v = PeerVerdict::new(VerdictPolicy::default());
        let good = round(I::Answered(MS), F::Answered(MS));
        let lost = round(I::Answered(MS), F::Timeout);
        v.observe(&good);
        for _ in 0..8 {
            v.observe(&lost);
        }
        assert_eq!(v.state(), PeerState::FabricDropped);
        v.observe(&good);
        v.observe(&good);
        assert_eq!(v.state(), PeerState::Healthy, "loss {}", v.fabric_loss());
        for _ in 0..5 {
            v.observe(&good);
            assert_eq!(v.state(), PeerState::Healthy);
        }
    }

    #[test]
    fn large_probes_lost_while_small_ones_answer_is_degraded() {
        let sized = |lost_size| Round {
            ip: I::Answered(MS),
            fabric: F::Answered(MS),
            relation: Relation::Unknown,
            lost_size,
        };
        assert_eq!(
            settled(&sized(Some(8192))),
            (PeerState::Degraded, Some(R::ProbeSize))
        );
        assert_eq!(settled(&sized(None)), (PeerState::Healthy, None));
        // A blackhole is a blackhole, whatever the sizes said before.
        let mut blackhole = sized(Some(8192));
        blackhole.fabric = F::Timeout;
        assert_eq!(settled(&blackhole).0, PeerState::FabricDropped);
    }

    #[test]
    fn a_disagreeing_result_is_a_change_in_progress() {
        let mut v = PeerVerdict::new(VerdictPolicy::default());
        let good = round(I::Answered(MS), F::Answered(MS));
        let lost = round(I::Answered(MS), F::Timeout);
        v.observe(&good);
        assert!(!v.is_changing());
        v.observe(&lost);
        assert!(v.is_changing(), "one lost probe: a confirmation is due");
        v.observe(&good);
        assert!(!v.is_changing(), "the confirmation agreed with the state");
        v.observe(&lost);
        v.observe(&lost);
        assert_eq!(v.state(), PeerState::FabricDropped);
        assert!(!v.is_changing());
    }

    #[test]
    fn a_new_fabric_address_forgets_the_old_losses() {
        let mut v = PeerVerdict::new(VerdictPolicy::default());
        let good = round(I::Answered(MS), F::Answered(MS));
        let lost = round(I::Answered(MS), F::Timeout);
        v.observe(&good);
        v.observe(&lost);
        assert!(v.fabric_loss() > 0.2);
        v.fabric_path_changed();
        v.observe(&good);
        v.observe(&good);
        assert_eq!(v.state(), PeerState::Healthy);
        assert_eq!(v.fabric_loss(), 0.0);
    }

    #[test]
    fn alternating_results_never_settle() {
        let mut v = PeerVerdict::new(VerdictPolicy {
            hysteresis: 3,
            max_loss: 1.0,
            ..VerdictPolicy::default()
        });
        let good = round(I::Answered(MS), F::Answered(MS));
        let down = round(I::Timeout, F::Timeout);
        v.observe(&good);
        for _ in 0..10 {
            v.observe(&down);
            v.observe(&down);
            v.observe(&good);
        }
        assert_eq!(v.state(), PeerState::Healthy);
    }

    #[test]
    fn steady_partial_loss_is_degraded() {
        let mut v = PeerVerdict::new(VerdictPolicy::default());
        let good = round(I::Answered(MS), F::Answered(MS));
        let lost = round(I::Answered(MS), F::Timeout);
        for _ in 0..20 {
            v.observe(&good);
            v.observe(&good);
            v.observe(&lost);
        }
        assert!((v.fabric_loss() - 0.3).abs() < 0.11, "{}", v.fabric_loss());
        v.observe(&good);
        v.observe(&good);
        assert_eq!(v.state(), PeerState::Degraded);
        assert_eq!(v.reason(), Some(R::FabricLoss));
    }

    #[test]
    fn labels_are_the_documented_strings() {
        let states: Vec<&str> = PeerState::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            states,
            [
                "healthy",
                "fabric_dropped",
                "ip_blocked",
                "down",
                "degraded",
                "unknown"
            ]
        );
        for s in PeerState::VARIANTS.iter().copied() {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in DiagnosisReason::VARIANTS.iter().copied() {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
