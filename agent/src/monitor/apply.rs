//! Applying one probe's results to a peer: the observations of each path and rail, the
//! verdict they lead to, and what the state reports of it; and learning the fabric addresses
//! its hello offers.

use std::sync::Arc;

use super::observe::{self, FabricContext};
use super::{job, judge, name, rails, PeerMonitor, Probing, UNKNOWN_GROUP};
use crate::metrics::ProbePath;
use crate::state::{unix_now, PathFailure};
use crate::verdict::diagnosis::{placement_warning, relate, Placement};
use crate::verdict::{IpObservation, Round};

impl PeerMonitor {
    /// Applies one probe's results: the observations of each path (counted as they are),
    /// the verdict they lead to, and what the state reports of the peer.
    pub(super) fn apply(&mut self, result: &job::RoundResult) {
        let Some(peer) = self.peers.get_mut(&result.key) else {
            return; // left during the round
        };
        if let Ok((hello, _)) = &result.hello {
            // Most rounds bring the same hello: keep the one allocation the monitor and the
            // state share.
            if peer.hello.as_deref() != Some(hello) {
                peer.hello = Some(Arc::new(hello.clone()));
            }
        }
        // Where it runs, from the hello just fetched if there is one.
        let placement = peer.placement();
        if result.hello.is_ok() {
            let named = placement.as_ref().map(Placement::group);
            peer.counted_group
                .observe(named.as_deref(), std::time::Instant::now());
        }
        let group = peer.counted_group.current().unwrap_or(UNKNOWN_GROUP);

        let policy = self.settings.policy;
        let probing = peer
            .probing
            .get_or_insert_with(|| Box::new(Probing::new(policy)));
        let ip = observe::ip_path(&result.hello);
        if let Ok((_, rtt)) = &result.hello {
            probing.rtts.ip = Some(*rtt);
        }
        // A hello that withdraws or changes the address in use wins over this round's ping
        // of the old one: the peer is judged from what it says now, not on a stale path.
        let provider = self.settings.provider.as_deref();
        let held = probing.fabric.as_ref().map(|(a, _)| a.as_slice());
        let fresh = result.hello.as_ref().ok().map(|(h, _)| h);
        let withdrawn = observe::withdraws(held, fresh, provider);
        if withdrawn {
            probing.release_rail0(self.rails.first(), self.large_pinger.as_ref());
            probing.large_results.clear();
            probing.verdict.fabric_path_changed();
            tracing::info!(
                peer = %fresh.map_or(result.key.as_str(), |h| h.node_name.as_str()),
                "the peer's hello withdrew or changed its fabric address: the old one is released"
            );
        }
        let (fabric_outcome, large_outcome) = if withdrawn {
            (None, None)
        } else {
            (result.fabric.as_ref(), result.large.as_ref())
        };
        let offered = peer
            .hello
            .as_deref()
            .and_then(|h| observe::offered_address(h, provider));
        let refused = probing
            .refused
            .as_ref()
            .filter(|(address, _)| offered.as_ref() == Some(address))
            .map(|(_, why)| why.as_str());
        if let Some(outcome) = fabric_outcome {
            let measured = probing.rtts.learn_fabric(outcome, result.confirmation);
            if let (Some(measured), true) = (measured, result.pair) {
                self.metrics.record_rtt_pair(measured);
            }
        }
        let fabric = observe::fabric_path(
            fabric_outcome,
            FabricContext {
                local_fabric: !self.rails.is_empty(),
                provider,
                hello: peer.hello.as_deref(),
                measured: probing.rtts.fabric,
                refused,
            },
        );
        let large = observe::large_probe(&mut probing.large_results, large_outcome);
        let counted = [
            (ProbePath::Ip, Some(ip.counted)),
            (ProbePath::Fabric, fabric.counted),
            (ProbePath::Fabric, large),
        ];
        for (path, (probe, rtt)) in counted.into_iter().filter_map(|(path, c)| Some((path, c?))) {
            self.metrics.record_probe_in_group(path, group, probe, rtt);
        }
        // Every paired rail: the peer's fabric answers only if each of them does, and a
        // failing rail is judged from its own placement (its interface's subnet and groups).
        let paired = rails::paired(self.rails.len(), peer.hello.as_deref(), provider);
        let others = rails::observe_rails(&result.rails, &probing.rails, fresh, provider, paired);
        probing.rails.remember(&others);
        if result.rotated {
            probing.rails.rotated();
        }
        for (rail, probe) in fabric
            .counted
            .map(|(probe, _)| (0, probe))
            .into_iter()
            .chain(others.iter().filter_map(|r| Some((r.rail, r.counted?))))
        {
            self.metrics.record_rail_probe(rail, probe);
        }
        let (observation, deciding_rail) = rails::combine(&fabric.observation, &others);
        let topology = self.topology.as_deref();
        let rail_macs = &self.rail_macs;
        let peer_hello = peer.hello.as_deref();
        let relation_of = |rail: usize| rails::rail_relation(topology, rail_macs, peer_hello, rail);
        let relation = match deciding_rail {
            Some(rail) => relation_of(usize::from(rail)),
            None if paired > 0 => relation_of(0),
            None => relate(self.settings.placement.as_ref(), placement.as_ref()),
        };
        let lost_size = observe::lost_size(&probing.large_results, &observation);
        let ip_answers = matches!(ip.observation, IpObservation::Answered(_));
        let changed = probing.verdict.observe(&Round {
            ip: ip.observation,
            fabric: observation,
            relation: relation.clone(),
            lost_size,
        });
        let grace_left = peer
            .grace_until
            .checked_duration_since(std::time::Instant::now())
            .filter(|left| !left.is_zero());
        let peer_rails = peer_hello.map(|h| h.fabric.endpoints.len());
        let warnings: Vec<String> =
            placement_warning(self.settings.placement.as_ref(), placement.as_ref())
                .into_iter()
                .chain(rails::count_warning(self.rails.len(), peer_rails, paired))
                .collect();
        let domains = &self.rail_domains;
        let probe_size = self.settings.probe_size;
        let (verdict, hello) = (&probing.verdict, &peer.hello);
        if let Some(hello) = hello {
            name::claim(&self.state, &result.key, hello);
        }
        self.state.update_peer(&result.key, |status| {
            status.ip = ip.status;
            let rail0 = fabric
                .status
                .as_ref()
                .or(status.rails.first().map(|r| &r.path));
            status.rails = rails::statuses(
                &status.rails,
                paired,
                rail0,
                &others,
                domains,
                hello.as_deref(),
                |rail, path| {
                    ip_answers
                        .then(|| rails::rail_reason(&relation_of(rail), path))
                        .flatten()
                },
            );
            status.peer_rails = peer_rails.map(|n| u16::try_from(n).unwrap_or(u16::MAX));
            if let Some(path) = fabric.status {
                status.fabric = path;
            }
            // Rail 0 answers and another does not: the fabric path is not whole.
            if let Some(failing) = rails::partial_failure(&status.fabric, &status.rails) {
                status.fabric = failing;
            }
            if let Some(size) = lost_size {
                observe::size_lost(&mut status.fabric, size, probe_size);
            }
            if let Some(hello) = hello {
                if !status.hello.as_ref().is_some_and(|h| Arc::ptr_eq(h, hello)) {
                    status.hello = Some(hello.clone());
                }
            }
            status.fabric_loss = verdict.fabric_loss();
            status.rounds += 1;
            if changed {
                status.since_unix = unix_now();
            }
            let note = rails::failing_note(&status.rails);
            let reported = judge::judged(
                verdict,
                grace_left,
                &status.ip,
                &status.fabric,
                &relation,
                note.as_deref(),
            );
            status.state = reported.state;
            status.reason = reported.reason;
            status.summary = reported.summary;
            status.warnings = warnings;
            status.probed = true;
        });
        if changed {
            tracing::info!(
                peer = %hello.as_ref().map_or(result.key.as_str(), |h| h.node_name.as_str()),
                address = %result.key,
                instance_id = hello.as_ref().map(|h| h.instance_id),
                state = verdict.state().as_str(),
                reason = verdict.reason().map(|r| r.as_str()),
                "peer state changed"
            );
        }
    }

    /// Learns or updates the peer's fabric address from its latest hello. It is kept when
    /// the IP path later fails, so the fabric probe goes on.
    pub(super) async fn learn_fabric_address(&mut self, key: &str) {
        let provider = self.settings.provider.as_deref();
        let (Some(pinger), Some(peer)) = (self.rails.first(), self.peers.get_mut(key)) else {
            return;
        };
        if let (Some(hello), Some(probing)) = (peer.hello.as_deref(), peer.probing.as_deref_mut()) {
            probing.rails.learn(&self.rails, hello, provider).await;
        }
        let wanted = peer
            .hello
            .as_deref()
            .and_then(|h| observe::offered_address(h, provider));
        let hello = peer.hello.clone(); // for its name in the log
        let (Some(address), Some(probing)) = (wanted, peer.probing.as_deref_mut()) else {
            return;
        };
        if probing.fabric.as_ref().map(|(a, _)| a.as_slice()) == Some(address.as_slice()) {
            return;
        }
        // Refused once: the same address is refused again (and would warn every round).
        if probing.refused.as_ref().is_some_and(|(a, _)| *a == address) {
            return;
        }
        if probing.fabric.is_some() {
            probing.verdict.fabric_path_changed();
        }
        probing.release_rail0(Some(pinger), self.large_pinger.as_ref());
        probing.large_results.clear();
        if let Some(lp) = &self.large_pinger {
            probing.large_handle = lp.add_peer(&address).get().await.and_then(Result::ok);
        }
        match pinger.add_peer(&address).get().await {
            Some(Ok(handle)) => {
                probing.fabric = Some((address, handle));
                probing.refused = None;
            }
            Some(Err(e)) => {
                let name = hello.as_deref().map_or(key, |h| h.node_name.as_str());
                tracing::warn!(peer = %name, error = %e, "peer's fabric address refused");
                let why = e.to_string();
                self.state.update_peer(key, |status| {
                    status.fabric = observe::not_probed(PathFailure::BadAddress, why.clone());
                });
                // The large-probe engine may have taken it: nothing is probed on it alone.
                if let (Some(lp), Some(h)) = (&self.large_pinger, probing.large_handle.take()) {
                    lp.remove_peer(h);
                }
                probing.refused = Some((address, why));
            }
            None => {}
        }
    }
}
