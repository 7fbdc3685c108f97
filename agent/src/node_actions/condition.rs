//! The node condition `EFAFabricReady`, from this node's topology group and its peers'
//! verdicts. Pure: the writer reads the state and hands it here; nothing is fetched.
//!
//! Of the peers in this node's own topology group (placement group, else subnet: what EFA
//! traffic cannot leave), a peer's fabric is *judged* when its IP path or its fabric path
//! answers: `healthy`, `degraded` and `ip_blocked` peers answered on the fabric (verified),
//! `fabric_dropped` ones answer over IP but not over the fabric (dropped). `down` and
//! `unknown` peers say nothing about this node's fabric.
//!
//! | this node and its group | status | reason |
//! |---|---|---|
//! | no usable fabric here | Unknown | `NoFabric` |
//! | no peer in the group, or none judged yet | Unknown | `NoPeers` |
//! | at least 2 dropped, and at least the threshold share of the judged | False | `RailDropped` when more than half of the dropped peers answer on rail 0 and not on one same other rail (the message names it); else `CrossSubnet`, `CrossAz`, `SecurityGroup` (most dropped peers' diagnosis), else `FabricDropped` |
//! | at least one verified (and not False) | True | `Verified` |
//! | only one peer judged, and it is dropped | Unknown | `Unverified` (one peer cannot tell which node is at fault) |
//!
//! Without topology of its own (off AWS, instance metadata unreadable) a node's group is
//! every peer: it cannot tell its group from the others'.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::state::PeerStatus;
use crate::verdict::diagnosis::Placement;
use crate::verdict::{DiagnosisReason, PeerState};

/// The condition's `type` on the Node.
pub const CONDITION_TYPE: &str = "EFAFabricReady";
/// At least this many dropped peers before the condition turns False, whatever the share.
pub const MIN_DROPPED_PEERS: usize = 2;
/// Peers named in a message, worst first.
const WORST_PEERS_NAMED: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The status as the API writes it.
    pub fn parse(text: &str) -> Option<ConditionStatus> {
        match text {
            "True" => Some(ConditionStatus::True),
            "False" => Some(ConditionStatus::False),
            "Unknown" => Some(ConditionStatus::Unknown),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// The condition's `reason`, CamelCase as Kubernetes conditions have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionReason {
    Verified,
    FabricDropped,
    CrossSubnet,
    CrossAz,
    SecurityGroup,
    Unverified,
    NoPeers,
    NoFabric,
    /// One rail (device) is dropped to most dropped peers while rail 0 answers them.
    RailDropped,
}

impl ConditionReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionReason::Verified => "Verified",
            ConditionReason::FabricDropped => "FabricDropped",
            ConditionReason::CrossSubnet => "CrossSubnet",
            ConditionReason::CrossAz => "CrossAz",
            ConditionReason::SecurityGroup => "SecurityGroup",
            ConditionReason::Unverified => "Unverified",
            ConditionReason::NoPeers => "NoPeers",
            ConditionReason::NoFabric => "NoFabric",
            ConditionReason::RailDropped => "RailDropped",
        }
    }
}

/// What the condition says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricCondition {
    pub status: ConditionStatus,
    pub reason: ConditionReason,
    /// One sentence (or two) with the counts and the worst peers.
    pub message: String,
}

/// This node's group, counted.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupTally {
    /// `None`: this node's group is unknown, and every peer counts.
    pub group: Option<String>,
    /// Peers in the group, whatever their state.
    pub members: usize,
    /// Names of the group's peers that answered on the fabric.
    pub verified: Vec<String>,
    /// The group's peers that answer over IP but not over the fabric, worst first: highest
    /// fabric loss, then dropped longest, then by name.
    pub dropped: Vec<DroppedPeer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DroppedPeer {
    pub name: String,
    pub reason: Option<DiagnosisReason>,
    pub fabric_loss: f64,
    pub since_unix: u64,
    /// Rails that do not answer while rail 0 does (a rail dropped alone), with this node's
    /// device for each.
    pub rails_down: Vec<(u16, Arc<str>)>,
}

impl GroupTally {
    /// Peers whose fabric is judged: verified or dropped.
    pub fn judged(&self) -> usize {
        self.verified.len() + self.dropped.len()
    }

    fn group_text(&self) -> String {
        match &self.group {
            Some(g) => format!("its topology group {g}"),
            None => "its peers (its own topology group is unknown)".to_owned(),
        }
    }
}

/// The topology group a peer's hello puts it in, if it said.
pub fn peer_group(peer: &PeerStatus) -> Option<String> {
    let topology = peer.hello.as_ref()?.topology.as_ref()?;
    Placement::of(topology).map(|p| p.group())
}

/// The rails to `p` that do not answer while its rail 0 does.
fn rails_down(p: &PeerStatus) -> Vec<(u16, Arc<str>)> {
    match p.rails.first() {
        Some(rail0) if rail0.path.reachable == Some(true) => p
            .rails
            .iter()
            .skip(1)
            .filter(|r| r.path.reachable == Some(false))
            .map(|r| (r.rail, r.domain.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Counts the peers of `own_group` (every peer when it is `None`) that this node probes now:
/// a peer the sample rotated out keeps its last verdict, which says nothing about now.
pub fn tally(own_group: Option<&str>, peers: &[PeerStatus]) -> GroupTally {
    let mut t = GroupTally {
        group: own_group.map(str::to_owned),
        members: 0,
        verified: Vec::new(),
        dropped: Vec::new(),
    };
    for p in peers {
        if !p.probed || (own_group.is_some() && peer_group(p).as_deref() != own_group) {
            continue;
        }
        t.members += 1;
        match p.state {
            PeerState::Healthy | PeerState::Degraded | PeerState::IpBlocked => {
                t.verified.push(p.name.clone())
            }
            PeerState::FabricDropped => t.dropped.push(DroppedPeer {
                name: p.name.clone(),
                reason: p.reason,
                fabric_loss: p.fabric_loss,
                since_unix: p.since_unix,
                rails_down: rails_down(p),
            }),
            PeerState::Down | PeerState::Unknown => {}
        }
    }
    t.verified.sort();
    t.dropped.sort_by(|a, b| {
        b.fabric_loss
            .total_cmp(&a.fabric_loss)
            .then(a.since_unix.cmp(&b.since_unix))
            .then(a.name.cmp(&b.name))
    });
    t
}

/// What the condition is judged from.
#[derive(Debug, Clone, Copy)]
pub struct ConditionInputs<'a> {
    /// This node has at least one fabric endpoint open.
    pub local_fabric: bool,
    pub tally: &'a GroupTally,
    /// `--condition-threshold`, in (0, 1].
    pub threshold: f64,
    /// A sentence the startup gate adds (it removed the taint without a peer to verify).
    pub gate_note: Option<&'a str>,
}

/// The condition for these inputs (see the module's table).
pub fn evaluate(inputs: ConditionInputs<'_>) -> FabricCondition {
    let mut c = judge(&inputs);
    if let Some(note) = inputs.gate_note {
        c.message.push(' ');
        c.message.push_str(note);
    }
    c
}

fn judge(inputs: &ConditionInputs<'_>) -> FabricCondition {
    use ConditionReason as R;
    use ConditionStatus as S;
    let t = inputs.tally;
    let make = |status, reason, message| FabricCondition {
        status,
        reason,
        message,
    };
    if !inputs.local_fabric {
        return make(
            S::Unknown,
            R::NoFabric,
            "This node has no usable fabric endpoint, so its fabric cannot be verified.".into(),
        );
    }
    if t.members == 0 {
        return make(
            S::Unknown,
            R::NoPeers,
            format!(
                "No peer in {} to verify the fabric against.",
                t.group_text()
            ),
        );
    }
    let judged = t.judged();
    let dropped = t.dropped.len();
    if dropped >= MIN_DROPPED_PEERS && dropped as f64 >= inputs.threshold * judged as f64 {
        if let Some(((rail, domain), n)) = dominant_rail(&t.dropped) {
            return make(
                S::False,
                R::RailDropped,
                format!(
                    "Rail {rail} ({domain}) is dropped to {n} of {judged} peers in {} while \
                     their rail 0 answers ({}); worst: {}. Check that rail's network \
                     interface: its security groups and subnet.",
                    t.group_text(),
                    diagnosis_counts(&t.dropped),
                    worst(&t.dropped),
                ),
            );
        }
        return make(
            S::False,
            dominant_reason(&t.dropped),
            format!(
                "{dropped} of {judged} peers in {} answer over IP but not over the fabric \
                 ({}); worst: {}.",
                t.group_text(),
                diagnosis_counts(&t.dropped),
                worst(&t.dropped),
            ),
        );
    }
    if !t.verified.is_empty() {
        let mut message = format!(
            "{} of {judged} peers in {} answer on the fabric",
            t.verified.len(),
            t.group_text()
        );
        if dropped > 0 {
            message.push_str(&format!(
                "; {dropped} dropped ({}), below the threshold",
                worst(&t.dropped)
            ));
        }
        message.push('.');
        return make(S::True, R::Verified, message);
    }
    if dropped > 0 {
        return make(
            S::Unknown,
            R::Unverified,
            format!(
                "The only judged peer in {} ({}) answers over IP but not over the fabric; one \
                 peer cannot tell which node is at fault.",
                t.group_text(),
                worst(&t.dropped),
            ),
        );
    }
    make(
        S::Unknown,
        R::NoPeers,
        format!(
            "None of the {} peers in {} has answered yet (down or not yet judged).",
            t.members,
            t.group_text()
        ),
    )
}

/// The diagnosis most dropped peers share, when it is more than half of them and names a
/// cause; else `FabricDropped`.
fn dominant_reason(dropped: &[DroppedPeer]) -> ConditionReason {
    let mut counts: BTreeMap<DiagnosisReason, usize> = BTreeMap::new();
    for d in dropped {
        if let Some(r) = d.reason {
            *counts.entry(r).or_default() += 1;
        }
    }
    let top = counts.into_iter().max_by_key(|(_, n)| *n);
    match top {
        Some((reason, n)) if 2 * n > dropped.len() => match reason {
            DiagnosisReason::CrossSubnet => ConditionReason::CrossSubnet,
            DiagnosisReason::CrossAz => ConditionReason::CrossAz,
            DiagnosisReason::SecurityGroup => ConditionReason::SecurityGroup,
            _ => ConditionReason::FabricDropped,
        },
        _ => ConditionReason::FabricDropped,
    }
}

/// The rail most dropped peers have down while their rail 0 answers, with how many, when it
/// is more than half of them.
fn dominant_rail(dropped: &[DroppedPeer]) -> Option<((u16, Arc<str>), usize)> {
    let mut counts: BTreeMap<u16, ((u16, Arc<str>), usize)> = BTreeMap::new();
    for d in dropped {
        for (rail, domain) in &d.rails_down {
            counts
                .entry(*rail)
                .or_insert(((*rail, domain.clone()), 0))
                .1 += 1;
        }
    }
    counts
        .into_values()
        .max_by_key(|(_, n)| *n)
        .filter(|(_, n)| 2 * n > dropped.len())
}

/// `cross_subnet: 2, fabric_timeout: 1`, most first.
fn diagnosis_counts(dropped: &[DroppedPeer]) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for d in dropped {
        *counts
            .entry(d.reason.map_or("undiagnosed", DiagnosisReason::as_str))
            .or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .map(|(reason, n)| format!("{reason}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The worst few peers by name, with how many more.
fn worst(dropped: &[DroppedPeer]) -> String {
    let named: Vec<&str> = dropped
        .iter()
        .take(WORST_PEERS_NAMED)
        .map(|d| d.name.as_str())
        .collect();
    let mut text = named.join(", ");
    if dropped.len() > named.len() {
        text.push_str(&format!(" and {} more", dropped.len() - named.len()));
    }
    text
}

#[cfg(test)]
pub(crate) mod tests;
