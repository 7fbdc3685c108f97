//! One sentence per verdict, for the status page and `/v1/peers`: what is wrong and what to do.

use crate::state::{PathFailure, PathStatus};
use crate::verdict::diagnosis::{explain, Relation};
use crate::verdict::{DiagnosisReason as R, PeerState};

pub fn summarize(
    state: PeerState,
    reason: Option<R>,
    ip: &PathStatus,
    fabric: &PathStatus,
    loss: f64,
    relation: &Relation,
) -> String {
    let ip_err = ip.last_error.as_deref().unwrap_or("no answer");
    let fabric_err = fabric.last_error.as_deref().unwrap_or("no answer");
    match (state, reason) {
        (PeerState::Healthy, _) => "fabric and IP paths both answer".into(),
        (PeerState::FabricDropped, Some(R::CrossAz | R::CrossSubnet | R::SecurityGroup)) => {
            let mut text = explain(relation).unwrap_or_default();
            if fabric.last_failure == Some(PathFailure::ProviderError) {
                text.push_str(&format!(" The provider said: {fabric_err}"));
            }
            text
        }
        (PeerState::FabricDropped, Some(R::ProviderError)) => {
            format!("IP path works but the fabric rejects traffic to this peer: {fabric_err}")
        }
        (PeerState::FabricDropped, Some(R::PeerNoFabric)) => {
            format!("IP path works but the peer's agent has no usable fabric: {fabric_err}")
        }
        (PeerState::FabricDropped, Some(R::ProviderMismatch)) => {
            format!("IP path works but the peer uses another fabric provider: {fabric_err}")
        }
        (PeerState::FabricDropped, Some(R::FabricBadAddress)) => format!(
            "IP path works but this node's provider refused the fabric address the peer's \
             hello names: {fabric_err}"
        ),
        (PeerState::FabricDropped, _) => "IP path works but fabric (OS-bypass) probes are \
             silently dropped: check that both nodes are in one subnet and that the security \
             group allows all traffic to and from itself"
            .into(),
        (PeerState::IpBlocked, _) => format!(
            "the fabric answers but the peer's agent is unreachable over IP ({ip_err}): \
             check security-group rules for the agent port"
        ),
        (PeerState::Down, _) => {
            format!("neither path answers ({ip_err}): node down, agent down, or partitioned")
        }
        (PeerState::Degraded, Some(R::ProbeSize)) => format!(
            "the fabric answers small probes but loses larger ones ({fabric_err}): packets of \
             that size are dropped on the path; check the MTU (jumbo frames) end to end"
        ),
        (PeerState::Degraded, Some(R::FabricLoss)) => format!(
            "both paths answer but {:.0}% of recent fabric probes were lost",
            loss * 100.0
        ),
        (PeerState::Degraded, _) => format!(
            "both paths answer but slowly (IP {}, fabric {})",
            rtt(ip),
            rtt(fabric)
        ),
        (PeerState::Unknown, Some(R::LocalNoFabric)) => {
            "this node has no usable fabric, so only the IP path is probed".into()
        }
        (PeerState::Unknown, Some(R::IpProtocol)) => format!(
            "the peer's agent answers, but not with a hello this agent reads ({ip_err}): \
             another agent version? Its fabric cannot be learned"
        ),
        (PeerState::Unknown, _) => "waiting for the peer's first answer".into(),
    }
}

fn rtt(p: &PathStatus) -> String {
    p.rtt()
        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}
