//! Every rail: rail `r` of this node probes rail `r` of each peer, for every `r` below both
//! nodes' rail counts. Rail 0 is the fabric path as it was before rails (its probe may be a
//! ping pair that measures the RTT, and the larger probes follow it: see [`job`](super::job));
//! each other rail gets one ping per probe, which proves the rail at the least cost (no side
//! spins for a second ping); above [`EVERY_RAIL_UP_TO`] rails, half of them per probe in turn.
//! Here: a peer's links on rails 1 and up (the address in use, its handle in that rail's
//! engine, what its latest ping found), and how the rails' results make the peer's fabric
//! observation: reachable only when every paired rail answers.
//!
//! Why the RTT pairs and the larger probes stay on rail 0: a pair makes both sides spin for
//! its second ping, so pairs on 32 rails would cost 32 times the CPU the agent's budget
//! allows; larger probes need an endpoint of their own per rail (a large message stuck on a
//! path that drops large packets would hold up the small probes behind it), which doubles
//! the endpoints and their memory; and what they find (the path's latency, an MTU) is set per
//! instance type and VPC, not per interface. A single ping per rail is what proves each
//! rail's reachability, which is what a security group or subnet per ENI breaks.

use std::sync::Arc;

use crate::fabric_ping::{FabricPinger, PeerHandle, ProbeOutcome};
use crate::hello::Hello;
use crate::metrics::ProbeResult;
use crate::state::{PathFailure, PathStatus, RailStatus};
use crate::verdict::diagnosis::{Placement, Relation};
use crate::verdict::{DiagnosisReason, FabricObservation};

pub(super) use super::observe::offered_rail_address;
use super::observe::{fabric_result, not_probed, offers_fabric};

/// A node pairing more rails than this with a peer pings half of rails 1 and up in each of
/// that peer's probes, odd rails and even rails in turn ([`RailLinks::probes`]): each
/// (peer, rail) is then pinged within two probes of that peer. Confirmations ping every rail.
pub(super) const EVERY_RAIL_UP_TO: usize = 4;

/// A peer's link on one rail above 0.
#[derive(Debug)]
enum Link {
    Held {
        address: Vec<u8>,
        handle: PeerHandle,
        /// What the rail's latest ping found: a probe that leaves the rail out (its half's
        /// turn is next) judges it by this.
        last: Option<FabricObservation>,
    },
    /// The rail's engine refused the address the peer's hello names for the rail: reported
    /// (`bad_address`) while the hello names it, and not offered again.
    Refused { address: Vec<u8>, why: String },
}

impl Link {
    fn address(&self) -> &[u8] {
        match self {
            Link::Held { address, .. } | Link::Refused { address, .. } => address,
        }
    }
}

/// A peer's links on rails 1 and up: entry `r - 1` is rail `r`'s.
#[derive(Debug, Default)]
pub(super) struct RailLinks {
    links: Vec<Option<Link>>,
    /// The half of rails 1 and up a rotated probe pings next: even rails, else odd ones.
    even_next: bool,
}

/// How many rails this node (with `local` rails) pairs with a peer whose hello is `hello`.
pub(super) fn paired(local: usize, hello: Option<&Hello>, provider: Option<&str>) -> usize {
    match hello {
        Some(h) if offers_fabric(h, provider) => local.min(h.fabric.endpoints.len()),
        _ => 0,
    }
}

impl RailLinks {
    /// Follows the rails `hello` offers: a rail's new address is added to that rail's engine
    /// (the old one released), a rail no longer offered is released. Returns whether a rail
    /// gained a link.
    pub async fn learn(
        &mut self,
        rails: &[FabricPinger],
        hello: &Hello,
        provider: Option<&str>,
    ) -> bool {
        let mut gained = false;
        let wanted_len = rails.len().saturating_sub(1);
        self.links.resize_with(wanted_len, || None);
        // Every rail's new address is asked for at once, then the answers are awaited: the
        // rails share one engine thread, which takes them in one wake-up.
        let mut asked = Vec::new();
        for (index, engine) in rails.iter().enumerate().skip(1) {
            let wanted = offered_rail_address(hello, provider, index);
            let slot = &mut self.links[index - 1];
            if wanted.as_deref() == slot.as_ref().map(Link::address) {
                continue;
            }
            if let Some(Link::Held { handle, .. }) = slot.take() {
                engine.remove_peer(handle);
            }
            let Some(address) = wanted else {
                continue;
            };
            let reply = engine.add_peer(&address);
            asked.push((index, address, reply));
        }
        for (index, address, reply) in asked {
            let slot = &mut self.links[index - 1];
            *slot = match reply.get().await {
                Some(Ok(handle)) => {
                    gained = true;
                    Some(Link::Held {
                        address,
                        handle,
                        last: None,
                    })
                }
                Some(Err(e)) => {
                    tracing::warn!(peer = %hello.node_name, rail = index, error = %e,
                        "peer's fabric address for a rail refused");
                    Some(Link::Refused {
                        address,
                        why: e.to_string(),
                    })
                }
                None => None,
            };
        }
        // Nothing is kept past the rails this node has.
        self.links.truncate(wanted_len);
        gained
    }

    /// Forgets every link (the engines drop their address-vector entries).
    pub fn release(&mut self, rails: &[FabricPinger]) {
        for (index, link) in self.links.drain(..).enumerate() {
            if let (Some(Link::Held { handle, .. }), Some(engine)) = (link, rails.get(index + 1)) {
                engine.remove_peer(handle);
            }
        }
    }

    /// The rails to ping: (rail, its engine, the peer's handle there). `rotate`: only the
    /// half whose turn it is ([`EVERY_RAIL_UP_TO`]); [`rotated`](Self::rotated) passes the
    /// turn.
    pub fn probes(
        &self,
        rails: &[FabricPinger],
        rotate: bool,
    ) -> Vec<(u16, FabricPinger, PeerHandle)> {
        self.to_ping(rotate)
            .into_iter()
            .filter_map(|(rail, handle)| {
                Some((rail_number(rail), rails.get(rail)?.clone(), handle))
            })
            .collect()
    }

    /// The held rails a probe pings, with their handles: all, or (`rotate`) the half whose
    /// turn it is, odd rails and even rails in turn.
    fn to_ping(&self, rotate: bool) -> Vec<(usize, PeerHandle)> {
        self.links
            .iter()
            .enumerate()
            .map(|(index, link)| (index + 1, link))
            .filter(|(rail, _)| !rotate || (rail % 2 == 0) == self.even_next)
            .filter_map(|(rail, link)| match link {
                Some(Link::Held { handle, .. }) => Some((rail, *handle)),
                _ => None,
            })
            .collect()
    }

    /// Whether a probe of this peer should ping only half of rails 1 and up: more than
    /// [`EVERY_RAIL_UP_TO`] rails in use with it, each already pinged since its link was
    /// made. So the first probe after the links are learned (a peer new to this node's sample,
    /// whose links went when it last left it, or a peer with a new address) pings every rail,
    /// and a rail left out is always judged by a ping of the peer's current visit.
    pub fn rotates(&self) -> bool {
        let all_pinged = self
            .links
            .iter()
            .all(|l| !matches!(l, Some(Link::Held { last: None, .. })));
        1 + self.held() > EVERY_RAIL_UP_TO && all_pinged
    }

    /// A rotated probe was applied: the other half is next.
    pub fn rotated(&mut self) {
        self.even_next = !self.even_next;
    }

    /// Keeps what each pinged rail found, for the probes that leave it out.
    pub fn remember(&mut self, seen: &[RailSeen]) {
        for rail in seen.iter().filter(|r| r.counted.is_some()) {
            let index = usize::from(rail.rail);
            if let Some(Some(Link::Held { last, .. })) =
                index.checked_sub(1).and_then(|i| self.links.get_mut(i))
            {
                *last = Some(rail.observation.clone());
            }
        }
    }

    /// What `rail`'s latest ping found, while its link is held.
    fn last(&self, rail: usize) -> Option<&FabricObservation> {
        match self.links.get(rail.checked_sub(1)?)? {
            Some(Link::Held { last, .. }) => last.as_ref(),
            _ => None,
        }
    }

    /// How many rails hold a link.
    pub fn held(&self) -> usize {
        self.links
            .iter()
            .filter(|l| matches!(l, Some(Link::Held { .. })))
            .count()
    }

    /// The address in use on `rail` (1 and up), if any.
    fn held_address(&self, rail: usize) -> Option<&[u8]> {
        match self.links.get(rail.checked_sub(1)?)? {
            Some(Link::Held { address, .. }) => Some(address),
            _ => None,
        }
    }

    /// Why `rail`'s address was refused, while the peer offers that address.
    fn refused(&self, rail: usize) -> Option<&str> {
        match self.links.get(rail.checked_sub(1)?)? {
            Some(Link::Refused { why, .. }) => Some(why),
            _ => None,
        }
    }
}

fn rail_number(index: usize) -> u16 {
    u16::try_from(index).unwrap_or(u16::MAX)
}

/// One rail above 0, as this probe saw it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RailSeen {
    pub rail: u16,
    pub observation: FabricObservation,
    /// `None`: nothing new (the rail's address is not learned yet); its status stays.
    pub status: Option<PathStatus>,
    /// The probe sent, if one was (`efa_rail_probes_total`).
    pub counted: Option<ProbeResult>,
}

impl RailSeen {
    /// Rail `rail` as one ping (`Ok`) or a refused address (`Err`) left it.
    pub fn of(rail: usize, outcome: &Result<ProbeOutcome, String>, provider: Option<&str>) -> Self {
        match outcome {
            Ok(outcome) => RailSeen::pinged(rail, outcome, provider),
            Err(why) => RailSeen::refused(rail, why),
        }
    }

    fn pinged(rail: usize, outcome: &ProbeOutcome, provider: Option<&str>) -> Self {
        let (observation, status, result) = fabric_result(outcome, None, provider);
        RailSeen {
            rail: rail_number(rail),
            observation,
            status: Some(status),
            counted: Some(result),
        }
    }

    fn refused(rail: usize, why: &str) -> Self {
        RailSeen {
            rail: rail_number(rail),
            observation: FabricObservation::BadAddress,
            status: Some(not_probed(PathFailure::BadAddress, why.to_owned())),
            counted: None,
        }
    }
}

/// Rails 1 to `paired - 1` from this probe's outcomes. An outcome of an address the peer's
/// fresh hello no longer offers for that rail is not used: the rail is judged from what the
/// peer says now (its link follows when the hello is learned).
pub(super) fn observe_rails(
    outcomes: &[(u16, ProbeOutcome)],
    links: &RailLinks,
    fresh: Option<&Hello>,
    provider: Option<&str>,
    paired: usize,
) -> Vec<RailSeen> {
    (1..paired)
        .map(|rail| {
            let outcome = outcomes
                .iter()
                .find(|(r, _)| usize::from(*r) == rail)
                .map(|(_, o)| o);
            let stale = fresh.is_some_and(|h| {
                offered_rail_address(h, provider, rail).as_deref() != links.held_address(rail)
            });
            match (outcome.filter(|_| !stale), links.refused(rail)) {
                (Some(outcome), _) => RailSeen::pinged(rail, outcome, provider),
                (None, Some(why)) => RailSeen::refused(rail, why),
                // Left out of this probe (the other half's turn): as its latest ping found.
                (None, None) => RailSeen {
                    rail: rail_number(rail),
                    observation: links
                        .last(rail)
                        .filter(|_| !stale)
                        .cloned()
                        .unwrap_or(FabricObservation::NotLearned),
                    status: None,
                    counted: None,
                },
            }
        })
        .collect()
}

/// The peer's fabric observation from every paired rail: rail 0's, unless rail 0 answers
/// and another rail is dropped (or refused), when it is that rail's; with the rail that
/// decides it when one fails.
pub(super) fn combine(
    rail0: &FabricObservation,
    others: &[RailSeen],
) -> (FabricObservation, Option<u16>) {
    use FabricObservation as F;
    match rail0 {
        F::Answered(_) => others
            .iter()
            .find(|r| matches!(r.observation, F::Timeout | F::Failed | F::BadAddress))
            .map_or((rail0.clone(), None), |r| {
                (r.observation.clone(), Some(r.rail))
            }),
        F::Timeout | F::Failed | F::BadAddress => (rail0.clone(), Some(0)),
        _ => (rail0.clone(), None),
    }
}

/// The MAC a hello names for `rail`'s interface.
fn rail_mac(hello: &Hello, rail: usize) -> Option<&str> {
    hello.fabric.endpoints.get(rail)?.mac.as_deref()
}

/// How rail `rail` of the two nodes relates: each side's placement of that rail (its
/// interface's subnet and groups), the primary interface's where a side does not say.
pub(super) fn rail_relation(
    local_topology: Option<&crate::topology::Topology>,
    local_macs: &[Option<String>],
    peer: Option<&Hello>,
    rail: usize,
) -> Relation {
    let local = local_topology
        .and_then(|t| Placement::of_rail(t, local_macs.get(rail).and_then(|m| m.as_deref())));
    let remote = peer.and_then(|h| {
        h.topology
            .as_ref()
            .and_then(|t| Placement::of_rail(t, rail_mac(h, rail)))
    });
    crate::verdict::diagnosis::relate(local.as_ref(), remote.as_ref())
}

/// The reason a dropped rail gets while IP answers: its placement's, else the path's own.
pub(super) fn rail_reason(relation: &Relation, path: &PathStatus) -> Option<DiagnosisReason> {
    if path.reachable != Some(false) && path.last_failure != Some(PathFailure::BadAddress) {
        return None;
    }
    Some(match (relation, path.last_failure) {
        (_, Some(PathFailure::BadAddress)) => DiagnosisReason::FabricBadAddress,
        (Relation::CrossAz { .. }, _) => DiagnosisReason::CrossAz,
        (Relation::CrossSubnet { .. }, _) => DiagnosisReason::CrossSubnet,
        (Relation::SameSubnet { .. }, _) => DiagnosisReason::SecurityGroup,
        (Relation::Unknown, Some(PathFailure::Timeout)) => DiagnosisReason::FabricTimeout,
        (Relation::Unknown, _) => DiagnosisReason::ProviderError,
    })
}

/// The rails' list for the state: one entry per paired rail, rail 0's from `rail0` (the
/// path's own result, or its previous one when nothing new), the others' from `others` or
/// their previous entry.
pub(super) fn statuses(
    previous: &[RailStatus],
    paired: usize,
    rail0: Option<&PathStatus>,
    others: &[RailSeen],
    domains: &[Arc<str>],
    peer: Option<&Hello>,
    reasons: impl Fn(usize, &PathStatus) -> Option<DiagnosisReason>,
) -> Vec<RailStatus> {
    (0..paired)
        .map(|rail| {
            let before = previous.iter().find(|s| usize::from(s.rail) == rail);
            let fresh = if rail == 0 {
                rail0.cloned()
            } else {
                others.get(rail - 1).and_then(|seen| seen.status.clone())
            };
            let path = fresh
                .or_else(|| before.map(|b| b.path.clone()))
                .unwrap_or_default();
            let peer_domain: Arc<str> = peer
                .and_then(|h| h.fabric.endpoints.get(rail))
                .map(|e| e.domain.as_str())
                .map_or_else(
                    || Arc::from(""),
                    |d| match before {
                        Some(b) if &*b.peer_domain == d => b.peer_domain.clone(),
                        _ => Arc::from(d),
                    },
                );
            RailStatus {
                rail: rail_number(rail),
                domain: domains.get(rail).cloned().unwrap_or_else(|| Arc::from("")),
                peer_domain,
                reason: reasons(rail, &path),
                path,
            }
        })
        .collect()
}

/// The failing rails in words, for the peer's summary: `rail 1 (dev1 to peer's dev1)`, and
/// how many of the paired rails answer. `None` while every paired rail answers or only one
/// rail is paired.
pub(super) fn failing_note(rails: &[RailStatus]) -> Option<String> {
    if rails.len() < 2 {
        return None;
    }
    let failing: Vec<String> = rails
        .iter()
        .filter(|r| r.path.reachable == Some(false) || r.reason.is_some())
        .map(|r| {
            format!(
                "rail {} ({} to the peer's {})",
                r.rail, r.domain, r.peer_domain
            )
        })
        .collect();
    if failing.is_empty() {
        return None;
    }
    let answering = rails
        .iter()
        .filter(|r| r.path.reachable == Some(true))
        .count();
    Some(format!(
        "{} of {} rails answer; not {}",
        answering,
        rails.len(),
        failing.join(", ")
    ))
}

/// The fabric path's status when rail 0 answers and another paired rail does not: not
/// reachable, with rail 0's RTT and the first failing rail's failure, in words naming it.
/// `None` when the rails do not disagree that way.
pub(super) fn partial_failure(rail0: &PathStatus, rails: &[RailStatus]) -> Option<PathStatus> {
    if rail0.reachable != Some(true) {
        return None;
    }
    let failing = rails.iter().skip(1).find(|r| {
        r.path.reachable == Some(false) || r.path.last_failure == Some(PathFailure::BadAddress)
    })?;
    let why = failing.path.last_error.as_deref().unwrap_or("no answer");
    Some(PathStatus {
        reachable: Some(false),
        rtt_seconds: rail0.rtt_seconds,
        last_failure: failing.path.last_failure,
        last_error: Some(format!("rail {} ({}): {why}", failing.rail, failing.domain)),
        provider_reason: None,
    })
}

/// A warning when the two nodes have different rail counts: only the common ones are
/// paired.
pub(super) fn count_warning(local: usize, peer: Option<usize>, paired: usize) -> Option<String> {
    let peer = peer?;
    (paired > 0 && peer != local).then(|| {
        format!(
            "the peer has {peer} rail(s) and this node {local}: only rails 0 to {} are \
             paired (a device missing on one side?)",
            paired - 1
        )
    })
}

#[cfg(test)]
mod tests;
