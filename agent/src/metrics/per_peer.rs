//! Which peers get per-peer series (`--per-peer-metrics`), and what a peer's series show (read
//! from its status in the agent's state at each scrape, see [`super::peers`]).
//!
//! Per-peer series grow with the cluster: 11 samples and about 760 bytes per peer per scrape,
//! on every node (BENCHMARKS.md, measured before rails), 2 more once a peer's rails are
//! paired (`efa_peer_rails`, `efa_peer_rails_reachable`) and one per dropped rail. Past a hundred peers most of that says "healthy" again and
//! again, while the alerts key only on peers that are not. So by default (`auto`) a node with
//! more than [`AUTO_ALL_MAX_PEERS`] peers exports series only for peers in a fault state; the
//! per-node aggregates (`efa_peers_by_state`, `efa_node_unreachable_peers`) are there in every
//! mode.

use std::fmt;
use std::str::FromStr;
use strum::VariantArray;

use crate::state::PeerStatus;
use crate::verdict::{DiagnosisReason, PeerState};

/// `auto` exports every peer's series while the agent has at most this many peers, and only
/// the unhealthy ones' above (README "Metrics").
pub const AUTO_ALL_MAX_PEERS: usize = 100;

/// The `--per-peer-metrics` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum PerPeerMetrics {
    /// Every peer's series.
    All,
    /// Series only for peers in a fault state (see [`PerPeerMode::exports`]).
    Unhealthy,
    /// No per-peer series at all.
    None,
    /// `all` up to [`AUTO_ALL_MAX_PEERS`] peers, `unhealthy` above.
    #[default]
    Auto,
}

impl PerPeerMetrics {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The mode in force for an agent with `peers` peers.
    pub const fn resolve(self, peers: usize) -> PerPeerMode {
        match self {
            PerPeerMetrics::All => PerPeerMode::All,
            PerPeerMetrics::Unhealthy => PerPeerMode::Unhealthy,
            PerPeerMetrics::None => PerPeerMode::None,
            PerPeerMetrics::Auto if peers <= AUTO_ALL_MAX_PEERS => PerPeerMode::All,
            PerPeerMetrics::Auto => PerPeerMode::Unhealthy,
        }
    }
}

impl fmt::Display for PerPeerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PerPeerMetrics {
    type Err = String;

    fn from_str(text: &str) -> Result<PerPeerMetrics, String> {
        PerPeerMetrics::VARIANTS
            .iter()
            .copied()
            .find(|m| m.as_str() == text.trim())
            .ok_or_else(|| format!("{text:?} is not one of all, unhealthy, none, auto"))
    }
}

/// The per-peer mode in force: the `mode` label of `efa_per_peer_metrics_mode` (`auto`
/// shows as what it resolves to).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum PerPeerMode {
    /// What `auto` is with no peers yet.
    #[default]
    All,
    Unhealthy,
    None,
}

impl PerPeerMode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a peer in `state` has per-peer series in this mode. `unhealthy` means the
    /// states the alerts key on: `degraded`, `ip_blocked`, `fabric_dropped`, `down`.
    /// `unknown` is not among them: it means not judged yet (a new peer, one within its
    /// `--peer-grace`) or nothing to judge with (no fabric on this node while IP works), never
    /// a fault; it is counted in `efa_peers_by_state` like every state.
    pub const fn exports(self, state: PeerState) -> bool {
        match self {
            PerPeerMode::All => true,
            PerPeerMode::Unhealthy => matches!(
                state,
                PeerState::Degraded
                    | PeerState::IpBlocked
                    | PeerState::FabricDropped
                    | PeerState::Down
            ),
            PerPeerMode::None => false,
        }
    }
}

/// What a peer's series show: the part of its `PeerStatus` the metrics read, taken at encode
/// time.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PeerSeries {
    pub state: PeerState,
    /// Only while not healthy: a reason left over on a healthy peer is not a diagnosis.
    pub diagnosis: Option<DiagnosisReason>,
    pub ip_reachable: Option<bool>,
    pub fabric_reachable: Option<bool>,
    pub ip_rtt: Option<f64>,
    pub fabric_rtt: Option<f64>,
    /// Only while the fabric path is probed: a loss ratio of a path never probed would read
    /// as "no loss".
    pub fabric_loss: Option<f64>,
    /// Rails paired with the peer, once the pairing is known (the peer's rails, or a rail's
    /// result): before, a 0 would read as "no rail in common".
    pub rails: Option<u16>,
    /// Paired rails that answer, once one has a result.
    pub rails_reachable: Option<u16>,
    /// The paired rails whose last probe failed, in rail order (empty, and unallocated, for
    /// a peer whose rails all answer).
    pub dropped_rails: Vec<u16>,
}

impl PeerSeries {
    pub fn of(peer: &PeerStatus) -> PeerSeries {
        PeerSeries {
            state: peer.state,
            diagnosis: peer.reason.filter(|_| peer.state != PeerState::Healthy),
            ip_reachable: peer.ip.reachable,
            fabric_reachable: peer.fabric.reachable,
            ip_rtt: peer.ip.rtt_seconds,
            fabric_rtt: peer.fabric.rtt_seconds,
            fabric_loss: peer.fabric.reachable.map(|_| peer.fabric_loss),
            rails: (peer.peer_rails.is_some() || !peer.rails.is_empty())
                .then(|| count(peer.rails.len())),
            rails_reachable: peer
                .rails
                .iter()
                .any(|r| r.path.reachable.is_some())
                .then(|| {
                    count(
                        peer.rails
                            .iter()
                            .filter(|r| r.path.reachable == Some(true))
                            .count(),
                    )
                }),
            dropped_rails: peer
                .rails
                .iter()
                .filter(|r| r.path.reachable == Some(false))
                .map(|r| r.rail)
                .filter(|rail| *rail < super::MAX_RAIL_LABELS)
                .collect(),
        }
    }
}

/// A count of rails (a hello lists at most 32, a node opens at most a few dozen).
fn count(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_auto_resolves_at_the_threshold() {
        for setting in PerPeerMetrics::VARIANTS.iter().copied() {
            assert_eq!(setting.as_str().parse(), Ok(setting));
        }
        assert!("some".parse::<PerPeerMetrics>().is_err());
        assert!("".parse::<PerPeerMetrics>().is_err());
        let auto = PerPeerMetrics::Auto;
        assert_eq!(auto.resolve(0), PerPeerMode::All);
        assert_eq!(auto.resolve(AUTO_ALL_MAX_PEERS), PerPeerMode::All);
        assert_eq!(auto.resolve(AUTO_ALL_MAX_PEERS + 1), PerPeerMode::Unhealthy);
        assert_eq!(PerPeerMetrics::None.resolve(1), PerPeerMode::None);
        assert_eq!(PerPeerMetrics::All.resolve(10_000), PerPeerMode::All);
    }

    #[test]
    fn unhealthy_means_the_fault_states() {
        let exported: Vec<&str> = PeerState::VARIANTS
            .iter()
            .copied()
            .filter(|s| PerPeerMode::Unhealthy.exports(*s))
            .map(PeerState::as_str)
            .collect();
        assert_eq!(
            exported,
            ["fabric_dropped", "ip_blocked", "down", "degraded"]
        );
        assert!(PeerState::VARIANTS
            .iter()
            .all(|s| PerPeerMode::All.exports(*s)));
        assert!(!PeerState::VARIANTS
            .iter()
            .any(|s| PerPeerMode::None.exports(*s)));
    }
}
