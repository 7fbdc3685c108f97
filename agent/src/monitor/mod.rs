//! The probe loops: each round, the peers the schedule picks (see [`schedule`]) over both
//! paths, spread over the interval, and each configured target.
//!
//! The parts: [`rounds`] runs the rounds until shutdown; [`job`] is where a probe is
//! scheduled (which probe each picked peer gets, and what follows a result); [`observe`]
//! turns a probe's results into observations, path by path (pure); [`judge`] is where the
//! reported verdict is decided and overridden (grace, rotated out). The monitor keeps only
//! what it needs to probe and judge each peer; what is reported of it lives in the agent's
//! state ([`AgentState`]), the one table `/metrics`, `/v1/peers` and the status page read.
//! [`verify`] answers verifies on request (`POST /v1/verify`), beside the rounds.

mod apply;
mod job;
mod judge;
mod name;
mod observe;
mod rails;
mod rounds;
pub mod schedule;
mod stable_group;
mod summary;
pub mod targets;
pub mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use strum::VariantArray;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::discovery::PeerSet;
use crate::fabric_ping::{FabricPinger, PeerHandle};
use crate::hello::Hello;
use crate::metrics::Metrics;
use crate::state::{unix_now, AgentState, PathStatus, PeerStatus, ProbeSchedule};
use crate::topology::Topology;
use crate::verdict::diagnosis::Placement;
use crate::verdict::{PeerState, PeerVerdict, VerdictPolicy};
use observe::PeerRtts;
pub use rounds::{run, RoundInputs};
use schedule::{Candidate, Plan, Role, ScheduleConfig};

/// Peers probed at once, at most.
const CONCURRENCY: usize = 64;

/// Peers started together within a round (see [`schedule::spread`]).
const BATCH: usize = 8;

/// The shortest deadline of a confirming probe: well above an idle responder's poll period
/// (20 ms) and a loaded peer agent's answer.
const MIN_CONFIRM_DEADLINE: Duration = Duration::from_millis(100);

/// The group label of peers whose topology is not known.
const UNKNOWN_GROUP: &str = "unknown";

/// How peers are probed.
#[derive(Debug, Clone)]
pub struct PeerProbeSettings {
    /// This node's name: the seed of its rendezvous order.
    pub node_name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub probe_size: usize,
    /// Larger probe sizes, one every other round in turn, sent once the small probe has answered.
    pub large_probe_sizes: Vec<usize>,
    pub policy: VerdictPolicy,
    /// The provider this node was asked to use; a peer with another cannot be reached.
    pub provider: Option<String>,
    /// Where this node runs, when instance metadata said so.
    pub placement: Option<Placement>,
    /// Which peers each round probes.
    pub schedule: ScheduleConfig,
    /// A peer's fabric RTT is measured (a ping pair) every this many of its rounds, and at
    /// once when a single ping's answer took longer than the RTT threshold.
    pub fabric_rtt_every: u32,
}

impl PeerProbeSettings {
    /// Settings for `node_name` with the agent's defaults.
    pub fn new(node_name: &str, interval: Duration, timeout: Duration) -> Self {
        PeerProbeSettings {
            node_name: node_name.to_owned(),
            interval,
            timeout,
            probe_size: 64,
            large_probe_sizes: vec![],
            policy: VerdictPolicy::default(),
            provider: None,
            placement: None,
            schedule: ScheduleConfig::default(),
            fabric_rtt_every: 4,
        }
    }
}

/// What the monitor keeps of one peer to probe and judge it (what is reported of it is in
/// the agent's state).
struct Peer {
    /// Its latest hello, shared with its entry in the state.
    hello: Option<Arc<Hello>>,
    /// The group its probes are counted under: its hellos' group, once steady.
    counted_group: stable_group::StableGroup,
    /// Until then the peer is reported `unknown`, whatever its probes say.
    grace_until: std::time::Instant,
    /// The round that last probed this peer.
    last_probed: Option<u64>,
    /// What probing it takes, from its first probe on. On a large cluster most peers are
    /// not in this node's sample, and cost no more than the fields above.
    probing: Option<Box<Probing>>,
}

/// The verdict of a probed peer and what its next probes are made of.
struct Probing {
    verdict: PeerVerdict,
    /// The fabric address in use and its handle in the engine.
    fabric: Option<(Vec<u8>, PeerHandle)>,
    /// The same address's handle in the large-probe engine.
    large_handle: Option<PeerHandle>,
    /// The latest outcome of each larger probe size (true: answered).
    large_results: BTreeMap<usize, bool>,
    rtts: PeerRtts,
    /// The address the engine refused and why: reported (`fabric_bad_address`) while the
    /// peer's hello names it, and not offered to the engine again.
    refused: Option<(Vec<u8>, String)>,
    /// Its links on rails 1 and up (rail 0's is `fabric`).
    rails: rails::RailLinks,
}

impl Peer {
    fn new(grace_until: std::time::Instant) -> Peer {
        Peer {
            hello: None,
            counted_group: stable_group::StableGroup::default(),
            grace_until,
            last_probed: None,
            probing: None,
        }
    }

    /// Its topology group (placement group, else subnet), once its hello said.
    fn group(&self) -> Option<String> {
        self.placement().map(|p| p.group())
    }

    /// Where it runs, from the topology in its hello.
    fn placement(&self) -> Option<Placement> {
        self.hello
            .as_ref()?
            .topology
            .as_ref()
            .and_then(Placement::of)
    }

    /// Forgets its fabric handles (the engines drop their address-vector entries).
    fn release_fabric(&mut self, rails: &[FabricPinger], large: Option<&FabricPinger>) {
        if let Some(probing) = self.probing.as_deref_mut() {
            probing.release_fabric(rails, large);
        }
    }

    /// Kept in view whatever the sample: not healthy, or changing.
    fn watched(&self) -> bool {
        self.probing.as_deref().is_some_and(|p| {
            p.verdict.is_changing()
                || !matches!(p.verdict.state(), PeerState::Healthy | PeerState::Unknown)
        })
    }
}

impl Probing {
    fn new(policy: VerdictPolicy) -> Probing {
        Probing {
            verdict: PeerVerdict::new(policy),
            fabric: None,
            large_handle: None,
            large_results: BTreeMap::new(),
            rtts: PeerRtts::default(),
            refused: None,
            rails: rails::RailLinks::default(),
        }
    }

    /// Forgets the handles on every rail and the larger probes'.
    fn release_fabric(&mut self, rails: &[FabricPinger], large: Option<&FabricPinger>) {
        self.release_rail0(rails.first(), large);
        self.rails.release(rails);
    }

    /// Forgets rail 0's handle and the larger probes'.
    fn release_rail0(&mut self, rail0: Option<&FabricPinger>, large: Option<&FabricPinger>) {
        if let (Some(pinger), Some((_, handle))) = (rail0, self.fabric.take()) {
            pinger.remove_peer(handle);
        }
        if let (Some(pinger), Some(handle)) = (large, self.large_handle.take()) {
            pinger.remove_peer(handle);
        }
    }
}

/// Probes peers over both paths and keeps their verdicts.
pub struct PeerMonitor {
    settings: PeerProbeSettings,
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
    /// This node's rails, in rail order (empty without a fabric). Rail 0 is the fabric path
    /// proper; see [`rails`].
    rails: Vec<FabricPinger>,
    /// Each rail's device (shared with every peer's rail list) and its interface's MAC.
    rail_domains: Vec<Arc<str>>,
    rail_macs: Vec<Option<String>>,
    /// This node's instance topology, when instance metadata said: each rail's placement.
    topology: Option<Arc<Topology>>,
    /// A second endpoint on the same device for the larger probes. Providers deliver in order
    /// per peer (rxd does): a large message stuck on a path that drops large packets would
    /// hold up every small probe behind it on a shared endpoint, and read as a blackhole.
    large_pinger: Option<FabricPinger>,
    /// By address. A B-tree: no growth to the next power of two, which a hash table of
    /// thousands of peers pays for in memory.
    peers: BTreeMap<String, Peer>,
    /// Rounds run: picks the larger probe size and the sample's rotation.
    round: u64,
    /// Seeds the jitter of this node's probe slots.
    jitter_seed: u64,
    overridden: judge::Overridden,
}

impl PeerMonitor {
    /// `rails`: this node's rail engines, in rail order (see [`rails`]); rail `r`'s device
    /// and MAC are the state's fabric devices'.
    pub fn new(
        settings: PeerProbeSettings,
        state: Arc<AgentState>,
        metrics: Arc<Metrics>,
        rails: Vec<FabricPinger>,
    ) -> Self {
        let overridden = judge::Overridden::new(settings.schedule.rotation);
        let devices = state.fabric().devices;
        let rail_domains = rails.iter().map(|r| Arc::from(r.domain())).collect();
        let rail_macs = (0..rails.len())
            .map(|rail| devices.get(rail).and_then(|d| d.mac.clone()))
            .collect();
        PeerMonitor {
            settings,
            state,
            metrics,
            rails,
            rail_domains,
            rail_macs,
            topology: None,
            large_pinger: None,
            peers: BTreeMap::new(),
            round: 0,
            jitter_seed: rand::random(),
            overridden,
        }
    }

    /// Where this node runs, when instance metadata answered after start-up.
    pub fn set_placement(&mut self, placement: Option<Placement>) {
        self.settings.placement = placement;
    }

    /// This node's instance topology: its primary placement, and each rail's.
    pub fn set_topology(&mut self, topology: Option<Arc<Topology>>) {
        self.settings.placement = topology.as_deref().and_then(Placement::of);
        self.topology = topology;
    }

    /// Sends the larger probes from `pinger`, an endpoint of their own (see `large_pinger`).
    pub fn with_large_probe_endpoint(mut self, pinger: Option<FabricPinger>) -> Self {
        self.large_pinger = pinger;
        self
    }

    /// Makes `set` the peers: new ones start `unknown` and stay so for `grace` after they
    /// became eligible (a pod that just rolled out is not an outage); departed ones leave
    /// the state (and with it every series) and their address-vector entry at once, before
    /// they could look `down`.
    pub fn set_peers(&mut self, set: &PeerSet, grace: Duration) {
        self.set_peers_where(set, grace, |_| true);
    }

    /// [`PeerMonitor::set_peers`] with the peers of `set` whose address `keep` accepts.
    pub fn set_peers_where(&mut self, set: &PeerSet, grace: Duration, keep: impl Fn(&str) -> bool) {
        self.peers.retain(|key, peer| {
            if set.contains_key(key) && keep(key) {
                return true;
            }
            let name = self.state.remove_peer(key).map(|s| s.name);
            peer.release_fabric(&self.rails, self.large_pinger.as_ref());
            tracing::info!(peer = %name.as_deref().unwrap_or(key), address = %key, "peer left");
            false
        });
        for (addr, candidate) in set.iter().filter(|(addr, _)| keep(addr)) {
            if let Some(peer) = self.peers.get_mut(addr) {
                peer.grace_until = candidate.eligible_since + grace;
                continue;
            }
            let waiting = self.overridden.waiting();
            // Listed at once; its series come with its first probe (on a large cluster it
            // may not be in this node's sample for a while).
            self.state.set_peer(
                addr,
                PeerStatus {
                    name: candidate.node_name.clone().unwrap_or_else(|| addr.clone()),
                    address: addr.clone(),
                    state: waiting.state,
                    reason: waiting.reason,
                    summary: waiting.summary,
                    ip: PathStatus::default(),
                    fabric: PathStatus::default(),
                    fabric_loss: 0.0,
                    hello: None,
                    warnings: Vec::new(),
                    since_unix: unix_now(),
                    rounds: 0,
                    probed: false,
                    name_conflict: None,
                    rails: Vec::new(),
                    peer_rails: None,
                },
            );
            self.peers
                .insert(addr.clone(), Peer::new(candidate.eligible_since + grace));
        }
    }

    /// Runs one round: the peers the schedule picks, each over both paths at once, started
    /// at evenly spread, jittered points of the interval (less the probe timeout, so that the
    /// round ends before the next). Each result is applied as it comes, and a peer whose
    /// result disagrees with its state is probed again at once, up to the confirmations its
    /// hysteresis needs, with a deadline from its recent answer times: a state still changes
    /// only on consecutive agreeing results, but a blackhole is confirmed within
    /// milliseconds of its first timeout rather than over several intervals.
    pub async fn run_round(&mut self) {
        let round = self.round;
        self.round += 1;
        let plan = self.make_plan(round);
        // Series of the peers leaving go first: a scrape in between sees the last round's
        // roles with fewer series, never this round's with the last round's series.
        self.retire_unscheduled(&plan, round);
        self.state.set_schedule(ProbeSchedule {
            capacity: plan.capacity,
            by_role: Role::VARIANTS
                .iter()
                .map(|&r| (r.as_str(), plan.count(r)))
                .collect(),
        });
        let sizes = &self.settings.large_probe_sizes;
        // One larger size every other round, in turn: size-specific drops are configuration
        // (an MTU), found within a few rounds, and each large probe waits on its own for an
        // idle responder (it follows its small probe), which costs polls.
        let large = (!sizes.is_empty() && round % 2 == 0)
            .then(|| sizes[(round / 2) as usize % sizes.len()]);
        let window = self.settings.interval.saturating_sub(self.settings.timeout);
        // Slots stay put for a rotation: a peer is probed every interval, not at a fresh
        // random point of each round (which would stretch the gap between two of its probes
        // to interval + window, and the time to see a fault with it). The jitter is drawn
        // once per rotation from this node's own seed, so nodes do not line up.
        let epoch = round / self.settings.schedule.rotation.max(1);
        let mut rng =
            StdRng::seed_from_u64(self.jitter_seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let offsets = schedule::spread(plan.picks.len(), window, BATCH, || rng.random::<f64>());
        let start = Instant::now();
        let mut pending: VecDeque<(Instant, String)> = plan
            .picks
            .iter()
            .zip(offsets)
            .map(|((key, _), offset)| (start + offset, key.clone()))
            .collect();
        let mut running = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            while running.len() < CONCURRENCY && pending.front().is_some_and(|p| p.0 <= now) {
                let (_, key) = pending.pop_front().expect("checked");
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.last_probed = Some(round);
                }
                if let Some(job) = self.job(&key, large, 0) {
                    running.push(job.run());
                }
            }
            if running.is_empty() && pending.is_empty() {
                break;
            }
            let next_start = pending
                .front()
                .filter(|_| running.len() < CONCURRENCY)
                .map(|p| p.0);
            tokio::select! {
                Some(result) = running.next(), if !running.is_empty() => {
                    self.apply(&result);
                    self.learn_fabric_address(&result.key).await;
                    if let Some(job) = self.follow_up(&result.key, &result) {
                        running.push(job.run());
                    }
                }
                _ = tokio::time::sleep_until(next_start.unwrap_or(now)), if next_start.is_some() => {}
            }
        }
    }

    fn make_plan(&self, round: u64) -> Plan {
        let groups: Vec<(&str, Option<String>, bool)> = self
            .peers
            .iter()
            .map(|(k, p)| (k.as_str(), p.group(), p.watched()))
            .collect();
        let candidates: Vec<Candidate<'_>> = groups
            .iter()
            .map(|(key, group, watch)| Candidate {
                key,
                group: group.as_deref(),
                watch: *watch,
            })
            .collect();
        let own = self.settings.placement.as_ref().map(Placement::group);
        schedule::plan(
            &self.settings.node_name,
            own.as_deref(),
            &candidates,
            round,
            self.settings.interval,
            &self.settings.schedule,
        )
    }

    /// Peers probed last round but not in this one (their sample rotated on) are no longer
    /// observed from here: their verdict starts over, their series go, and so do their
    /// address-vector entries. They stay listed, `unknown`, saying why.
    fn retire_unscheduled(&mut self, plan: &Plan, round: u64) {
        let picked: std::collections::HashSet<&str> =
            plan.picks.iter().map(|(k, _)| k.as_str()).collect();
        for (key, peer) in &mut self.peers {
            let was_probed = peer.last_probed.is_some_and(|r| r + 1 >= round);
            if !was_probed || picked.contains(key.as_str()) {
                continue;
            }
            peer.last_probed = None;
            if let Some(probing) = peer.probing.as_deref_mut() {
                probing.verdict = PeerVerdict::new(self.settings.policy);
                probing.large_results.clear();
                probing.release_fabric(&self.rails, self.large_pinger.as_ref());
            }
            let retired = self.overridden.retired();
            self.state.update_peer(key, |status| {
                status.probed = false;
                status.state = retired.state;
                status.reason = retired.reason;
                status.summary = retired.summary;
                status.ip = PathStatus::default();
                status.fabric = PathStatus::default();
                status.rails = Vec::new();
                status.fabric_loss = 0.0;
                status.since_unix = unix_now();
            });
        }
    }

    /// What a verify probes with (see [`verify`]): copies, so that verifies run beside the
    /// rounds and never wait for one.
    pub(crate) fn verify_context(
        &self,
        topology: tokio::sync::watch::Receiver<Option<Arc<Topology>>>,
    ) -> verify::VerifyContext {
        verify::VerifyContext {
            state: self.state.clone(),
            rails: self.rails.clone(),
            rail_domains: self.rail_domains.clone(),
            rail_macs: self.rail_macs.clone(),
            large_pinger: self.large_pinger.clone(),
            large_probe_sizes: self.settings.large_probe_sizes.clone(),
            provider: self.settings.provider.clone(),
            topology,
            timeout: self.settings.timeout,
            probe_size: self.settings.probe_size,
            policy: self.settings.policy,
        }
    }

    /// Closes every peer's fabric handle (shutdown).
    pub fn release(&mut self) {
        for peer in self.peers.values_mut() {
            peer.release_fabric(&self.rails, self.large_pinger.as_ref());
        }
    }
}

#[cfg(test)]
mod tests;
