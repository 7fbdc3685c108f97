//! The probe loops: each round, the peers the schedule picks (see [`schedule`]) over both
//! paths, spread over the interval, and each configured target.

pub mod schedule;
mod summary;
pub mod targets;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::discovery::PeerSet;
use crate::fabric_ping::{FabricPinger, PeerHandle, ProbeOutcome};
use crate::hello::{Hello, MAX_HELLO_BYTES};
use crate::metrics::{Metrics, ProbePath, ProbeResult};
use crate::probe::{http::http_get, tcp::connect_tcp, FailureReason, ProbeFailure};
use crate::state::{unix_now, AgentState, PathStatus, PeerStatus};
use crate::verdict::diagnosis::{placement_warning, relate, Placement};
use crate::verdict::{
    FabricObservation, IpObservation, PeerState, PeerVerdict, Round, VerdictPolicy,
};
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

/// One peer probe to run: what it needs, owned, so that it runs while results are applied.
struct Job {
    key: String,
    fabric: Option<(FabricPinger, PeerHandle)>,
    /// The larger probe, on its own endpoint: (endpoint, handle, size).
    large: Option<(FabricPinger, PeerHandle, usize)>,
    /// Measure the RTT with a ping pair (else one ping proves the path).
    pair: bool,
    size: usize,
    ip_deadline: Duration,
    fabric_deadline: Duration,
    /// 0 for the round's probe, then 1, 2, ... for confirmations.
    confirmation: u32,
}

/// What one probe found for one peer, before it is applied.
struct RoundResult {
    key: String,
    confirmation: u32,
    /// The probe had a fabric address to ping (else the fabric was not probed).
    fabric_attempted: bool,
    /// The fabric probe was a ping pair (an RTT measurement), not a single ping.
    pair: bool,
    hello: Result<(Hello, Duration), ProbeFailure>,
    fabric: Option<ProbeOutcome>,
    /// A larger probe sent after the small one answered: (size, outcome).
    large: Option<(usize, ProbeOutcome)>,
}

impl Job {
    async fn run(self) -> RoundResult {
        let Job {
            key,
            fabric,
            large,
            pair,
            size,
            ip_deadline,
            fabric_deadline,
            confirmation,
        } = self;
        let fabric_attempted = fabric.is_some();
        let fabric = async {
            let Some((pinger, handle)) = fabric else {
                return (None, None);
            };
            let small = if pair {
                pinger.probe(handle, size, fabric_deadline).get().await
            } else {
                pinger.reach(handle, size, fabric_deadline).get().await
            };
            // Larger sizes only where the small one answered: a path that drops everything
            // says nothing about sizes.
            let large = match (&small, large) {
                (Some(ProbeOutcome::Pong { .. }), Some((lp, lh, big))) => lp
                    .reach(lh, big, fabric_deadline)
                    .get()
                    .await
                    .map(|o| (big, o)),
                _ => None,
            };
            (small, large)
        };
        let (hello, (fabric, large)) = tokio::join!(fetch_hello(&key, ip_deadline), fabric);
        RoundResult {
            key,
            confirmation,
            fabric_attempted,
            pair,
            hello,
            fabric,
            large,
        }
    }
}

/// One monitored peer.
struct Peer {
    verdict: PeerVerdict,
    /// What is reported, the peer's latest hello (`status.hello`) included.
    status: PeerStatus,
    /// The fabric address in use and its handle in the engine.
    fabric: Option<(Vec<u8>, PeerHandle)>,
    /// The same address's handle in the large-probe engine.
    large_handle: Option<PeerHandle>,
    /// Until then the peer is reported `unknown`, whatever its probes say.
    grace_until: std::time::Instant,
    /// The latest outcome of each larger probe size (true: answered).
    large_results: BTreeMap<usize, bool>,
    /// The latest RTT a ping pair measured on the fabric path.
    fabric_rtt: Option<Duration>,
    /// The latest answer time of a first (or single) ping, idle responder included: what a
    /// confirming probe's deadline is based on.
    fabric_cold_rtt: Option<Duration>,
    /// Rounds since the fabric RTT was measured.
    rounds_since_rtt: u32,
    /// The latest hello's time.
    ip_rtt: Option<Duration>,
    /// The round that last probed this peer.
    last_probed: Option<u64>,
}

impl Peer {
    /// Its topology group (placement group, else subnet), once its hello said.
    fn group(&self) -> Option<String> {
        self.placement().map(|p| p.group())
    }

    /// Where it runs, from the topology in its hello.
    fn placement(&self) -> Option<Placement> {
        self.status
            .hello
            .as_ref()?
            .topology
            .as_ref()
            .and_then(Placement::of)
    }

    /// Forgets its fabric handles (the engines drop their address-vector entries).
    fn release_fabric(&mut self, pinger: Option<&FabricPinger>, large: Option<&FabricPinger>) {
        if let (Some(pinger), Some((_, handle))) = (pinger, self.fabric.take()) {
            pinger.remove_peer(handle);
        }
        if let (Some(pinger), Some(handle)) = (large, self.large_handle.take()) {
            pinger.remove_peer(handle);
        }
    }

    /// Kept in view whatever the sample: not healthy, or changing.
    fn watched(&self) -> bool {
        self.verdict.is_changing()
            || !matches!(
                self.verdict.state(),
                PeerState::Healthy | PeerState::Unknown
            )
    }
}

/// Probes peers over both paths and keeps their verdicts.
pub struct PeerMonitor {
    settings: PeerProbeSettings,
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
    pinger: Option<FabricPinger>,
    /// A second endpoint on the same device for the larger probes. Providers deliver in order
    /// per peer (rxd does): a large message stuck on a path that drops large packets would
    /// hold up every small probe behind it on a shared endpoint, and read as a blackhole.
    large_pinger: Option<FabricPinger>,
    peers: HashMap<String, Peer>,
    /// Rounds run: picks the larger probe size and the sample's rotation.
    round: u64,
    /// The latest round's plan.
    plan: Plan,
    /// Seeds the jitter of this node's probe slots.
    jitter_seed: u64,
}

impl PeerMonitor {
    pub fn new(
        settings: PeerProbeSettings,
        state: Arc<AgentState>,
        metrics: Arc<Metrics>,
        pinger: Option<FabricPinger>,
    ) -> Self {
        PeerMonitor {
            settings,
            state,
            metrics,
            pinger,
            large_pinger: None,
            peers: HashMap::new(),
            round: 0,
            plan: Plan::default(),
            jitter_seed: rand::random(),
        }
    }

    /// The latest round's plan: which peers it probed, and why.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Where this node runs, when instance metadata answered after start-up.
    pub fn set_placement(&mut self, placement: Option<Placement>) {
        self.settings.placement = placement;
    }

    /// Sends the larger probes from `pinger`, an endpoint of their own (see `large_pinger`).
    pub fn with_large_probe_endpoint(mut self, pinger: Option<FabricPinger>) -> Self {
        self.large_pinger = pinger;
        self
    }

    /// Makes `set` the peers: new ones start `unknown` and stay so for `grace` after they
    /// became eligible (a pod that just rolled out is not an outage); departed ones lose
    /// their state, their metric series and their address-vector entry at once, before they
    /// could look `down`.
    pub fn set_peers(&mut self, set: &PeerSet, grace: Duration) {
        self.peers.retain(|key, peer| {
            if set.contains_key(key) {
                return true;
            }
            self.state.remove_peer(key);
            self.metrics.remove_peer(&peer.status.name);
            peer.release_fabric(self.pinger.as_ref(), self.large_pinger.as_ref());
            tracing::info!(peer = %peer.status.name, "peer left");
            false
        });
        for (addr, candidate) in set {
            if let Some(peer) = self.peers.get_mut(addr) {
                peer.grace_until = candidate.eligible_since + grace;
                continue;
            }
            let status = PeerStatus {
                name: candidate.node_name.clone().unwrap_or_else(|| addr.clone()),
                address: addr.clone(),
                state: crate::verdict::PeerState::Unknown,
                reason: None,
                summary: "waiting for the peer's first answer".into(),
                ip: PathStatus::default(),
                fabric: PathStatus::default(),
                fabric_loss: 0.0,
                hello: None,
                warnings: Vec::new(),
                since_unix: unix_now(),
                rounds: 0,
            };
            // Listed at once; its series come with its first probe (on a large cluster it
            // may not be in this node's sample for a while).
            self.state.set_peer(addr, status.clone());
            self.peers.insert(
                addr.clone(),
                Peer {
                    verdict: PeerVerdict::new(self.settings.policy),
                    status,
                    fabric: None,
                    large_handle: None,
                    grace_until: candidate.eligible_since + grace,
                    large_results: Default::default(),
                    fabric_rtt: None,
                    fabric_cold_rtt: None,
                    rounds_since_rtt: 0,
                    ip_rtt: None,
                    last_probed: None,
                },
            );
        }
        self.metrics.set_peer_count(self.peers.len());
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
        self.metrics.set_schedule(
            plan.capacity,
            &Role::ALL.map(|r| (r.as_str(), plan.count(r))),
        );
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
        self.plan = plan;
        let confirmations = self.settings.policy.hysteresis.max(1) - 1;
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
                    let (key, n) = (result.key.clone(), result.confirmation);
                    let fabric_probed = result.fabric_attempted;
                    self.apply(result).await;
                    let Some(peer) = self.peers.get(&key) else { continue };
                    // A hello that just taught the peer's fabric address: probe the fabric
                    // now rather than leave the peer `unknown` until the next round (a peer
                    // newly in this node's sample would otherwise lose one).
                    let learned = !fabric_probed && peer.fabric.is_some();
                    let confirm = peer.verdict.is_changing() && n < confirmations;
                    if learned || confirm {
                        let next = if learned { n } else { n + 1 };
                        if let Some(job) = self.job(&key, None, next) {
                            running.push(job.run());
                        }
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
        let rotation = self.settings.schedule.rotation;
        for (key, peer) in &mut self.peers {
            let was_probed = peer.last_probed.is_some_and(|r| r + 1 >= round);
            if !was_probed || picked.contains(key.as_str()) {
                continue;
            }
            peer.last_probed = None;
            peer.verdict = PeerVerdict::new(self.settings.policy);
            peer.large_results.clear();
            peer.release_fabric(self.pinger.as_ref(), self.large_pinger.as_ref());
            self.metrics.remove_peer(&peer.status.name);
            peer.status.state = PeerState::Unknown;
            peer.status.reason = None;
            peer.status.ip = PathStatus::default();
            peer.status.fabric = PathStatus::default();
            peer.status.fabric_loss = 0.0;
            peer.status.since_unix = unix_now();
            peer.status.summary = format!(
                "not probed from this node now: outside the peers its probe budget covers \
                 (--probe-budget); the selection rotates every {rotation} rounds"
            );
            self.state.set_peer(key, peer.status.clone());
        }
    }

    /// The probe of `key` for this round (`confirmation` 0) or a confirmation of it.
    fn job(&self, key: &str, large: Option<usize>, confirmation: u32) -> Option<Job> {
        let peer = self.peers.get(key)?;
        let timeout = self.settings.timeout;
        let fabric = match (&self.pinger, &peer.fabric) {
            (Some(p), Some((_, h))) => Some((p.clone(), *h)),
            _ => None,
        };
        let large = match (&self.large_pinger, peer.large_handle, large) {
            (Some(p), Some(h), Some(size)) if confirmation == 0 => Some((p.clone(), h, size)),
            _ => None,
        };
        let slow = peer
            .fabric_cold_rtt
            .is_some_and(|r| r > self.settings.policy.max_rtt);
        let pair = confirmation == 0
            && (peer.fabric_rtt.is_none()
                || slow
                || peer.rounds_since_rtt + 1 >= self.settings.fabric_rtt_every);
        let (ip_deadline, fabric_deadline) = if confirmation == 0 {
            (timeout, timeout)
        } else {
            (
                confirm_deadline(peer.ip_rtt, timeout),
                confirm_deadline(peer.fabric_cold_rtt, timeout),
            )
        };
        Some(Job {
            key: key.to_owned(),
            fabric,
            large,
            pair,
            size: self.settings.probe_size,
            ip_deadline,
            fabric_deadline,
            confirmation,
        })
    }

    async fn apply(&mut self, result: RoundResult) {
        let provider = self.settings.provider.clone();
        let local_fabric = self.pinger.is_some();
        let Some(peer) = self.peers.get_mut(&result.key) else {
            return; // left during the round
        };
        let old_name = peer.status.name.clone();
        if let Ok((hello, _)) = result.hello.as_ref() {
            // Most rounds bring the same hello: keep the one allocation that this status and
            // its copy in the agent's state share.
            if peer.status.hello.as_deref() != Some(hello) {
                peer.status.hello = Some(Arc::new(hello.clone()));
            }
        }
        // Where it runs, from the hello just fetched if there is one.
        let placement = peer.placement();
        let group = placement.as_ref().map(Placement::group);
        let group = group.as_deref().unwrap_or(UNKNOWN_GROUP);

        // The IP path.
        let ip = match &result.hello {
            Ok((_, rtt)) => {
                peer.status.ip = PathStatus {
                    reachable: Some(true),
                    rtt_seconds: Some(rtt.as_secs_f64()),
                    last_failure: None,
                    last_error: None,
                };
                self.metrics.record_probe_in_group(
                    ProbePath::Ip,
                    group,
                    ProbeResult::Ok,
                    Some(*rtt),
                );
                peer.ip_rtt = Some(*rtt);
                IpObservation::Answered(*rtt)
            }
            Err(failure) => {
                peer.status.ip = PathStatus {
                    reachable: Some(false),
                    rtt_seconds: None,
                    last_failure: Some(failure.reason.as_str().to_owned()),
                    last_error: Some(failure.message.clone()),
                };
                self.metrics.record_probe_in_group(
                    ProbePath::Ip,
                    group,
                    ProbeResult::from_failure(failure.reason),
                    None,
                );
                match failure.reason {
                    FailureReason::Timeout => IpObservation::Timeout,
                    FailureReason::Refused => IpObservation::Refused,
                    FailureReason::Protocol | FailureReason::HttpStatus => IpObservation::Protocol,
                    _ => IpObservation::OtherError,
                }
            }
        };

        // The fabric path: what was probed this round, or why nothing was.
        let fabric = match (&result.fabric, &peer.status.hello) {
            _ if !local_fabric => FabricObservation::LocalNoFabric,
            (Some(outcome), _) => {
                if let ProbeOutcome::Pong {
                    rtt,
                    cold_rtt,
                    warm,
                    ..
                } = outcome
                {
                    peer.fabric_cold_rtt = Some(*cold_rtt);
                    if result.pair {
                        self.metrics.record_rtt_pair(*warm);
                    }
                    if *warm {
                        peer.fabric_rtt = Some(*rtt);
                        peer.rounds_since_rtt = 0;
                    } else if result.confirmation == 0 {
                        peer.rounds_since_rtt += 1;
                    }
                }
                let (obs, status, counted) = fabric_result(outcome, peer.fabric_rtt);
                peer.status.fabric = status;
                self.metrics.record_probe_in_group(
                    ProbePath::Fabric,
                    group,
                    counted,
                    rtt_of(outcome),
                );
                obs
            }
            (None, Some(hello)) if !hello.fabric.available => {
                let why = hello
                    .fabric
                    .error
                    .clone()
                    .unwrap_or_else(|| "no fabric".into());
                peer.status.fabric = not_probed("peer_no_fabric", why);
                FabricObservation::PeerNoFabric
            }
            (None, Some(hello)) if Some(&hello.fabric.provider) != provider.as_ref() => {
                peer.status.fabric = not_probed(
                    "provider_mismatch",
                    format!(
                        "the peer uses {:?}, this node {:?}",
                        hello.fabric.provider,
                        provider.as_deref().unwrap_or("none")
                    ),
                );
                FabricObservation::ProviderMismatch
            }
            (None, _) => FabricObservation::NotLearned,
        };

        // Larger probes: the latest outcome per size, and the smallest size now lost.
        if let Some((size, outcome)) = &result.large {
            match outcome {
                ProbeOutcome::Pong { .. } => {
                    peer.large_results.insert(*size, true);
                }
                ProbeOutcome::Timeout | ProbeOutcome::SendFailed { .. } => {
                    peer.large_results.insert(*size, false);
                }
                ProbeOutcome::NotSent { .. } => {}
            }
            let (_, _, counted) = fabric_result(outcome, None);
            self.metrics
                .record_probe_in_group(ProbePath::Fabric, group, counted, rtt_of(outcome));
        }
        let lost_size = match fabric {
            FabricObservation::Answered(_) => peer
                .large_results
                .iter()
                .find(|(_, ok)| !**ok)
                .map(|(size, _)| *size),
            _ => None,
        };
        if let Some(size) = lost_size {
            peer.status.fabric.last_failure = Some("probe_size".into());
            peer.status.fabric.last_error = Some(format!(
                "{size}-byte probes get no answer while {}-byte probes do",
                self.settings.probe_size
            ));
        }
        let relation = relate(self.settings.placement.as_ref(), placement.as_ref());
        let changed = peer.verdict.observe(&Round {
            ip,
            fabric,
            relation: relation.clone(),
            lost_size,
        });
        if changed {
            peer.status.since_unix = unix_now();
            tracing::info!(
                peer = %peer.status.name,
                state = peer.verdict.state().as_str(),
                reason = peer.verdict.reason().map(|r| r.as_str()),
                "peer state changed"
            );
        }
        peer.status.state = peer.verdict.state();
        peer.status.reason = peer.verdict.reason();
        let in_grace = std::time::Instant::now() < peer.grace_until;
        peer.status.fabric_loss = peer.verdict.fabric_loss();
        peer.status.rounds += 1;
        if let Some(hello) = &peer.status.hello {
            peer.status.name = hello.node_name.clone();
        }
        peer.status.summary = summary::summarize(
            peer.status.state,
            peer.status.reason,
            &peer.status.ip,
            &peer.status.fabric,
            peer.status.fabric_loss,
            &relation,
        );
        if in_grace {
            // A new peer: its verdict is formed, but not reported (nor alerted on) yet.
            let left = peer
                .grace_until
                .saturating_duration_since(std::time::Instant::now());
            peer.status.state = crate::verdict::PeerState::Unknown;
            peer.status.reason = None;
            peer.status.summary = format!(
                "new peer, in its grace period for {}s more ({})",
                left.as_secs() + 1,
                peer.status.summary
            );
        }
        peer.status.warnings =
            placement_warning(self.settings.placement.as_ref(), placement.as_ref())
                .into_iter()
                .collect();

        // Learn or update the peer's fabric address from its hello. It is kept when the IP
        // path later fails, so the fabric probe goes on.
        let wanted = peer
            .status
            .hello
            .as_ref()
            .filter(|h| h.fabric.available && Some(&h.fabric.provider) == provider.as_ref())
            .and_then(|h| h.fabric_address(0));
        let current = peer.fabric.as_ref().map(|(a, _)| a.as_slice());
        if let (Some(pinger), Some(address)) = (&self.pinger, wanted) {
            if Some(address.as_slice()) != current {
                if peer.fabric.is_some() {
                    peer.verdict.fabric_path_changed();
                }
                peer.release_fabric(Some(pinger), self.large_pinger.as_ref());
                peer.large_results.clear();
                if let Some(lp) = &self.large_pinger {
                    peer.large_handle = lp.add_peer(&address).get().await.and_then(Result::ok);
                }
                match pinger.add_peer(&address).get().await {
                    Some(Ok(handle)) => peer.fabric = Some((address, handle)),
                    Some(Err(e)) => {
                        tracing::warn!(peer = %peer.status.name, error = %e, "peer's fabric address refused");
                        peer.status.fabric = not_probed("bad_address", e.to_string());
                    }
                    None => {}
                }
            }
        }

        if old_name != peer.status.name {
            self.metrics.rename_peer(&old_name, &peer.status.name);
        }
        self.state.set_peer(&result.key, peer.status.clone());
        self.metrics.set_peer(&peer.status);
    }

    /// Closes every peer's fabric handle (shutdown).
    pub fn release(&mut self) {
        for peer in self.peers.values_mut() {
            peer.release_fabric(self.pinger.as_ref(), self.large_pinger.as_ref());
        }
    }
}

fn not_probed(failure: &str, why: String) -> PathStatus {
    PathStatus {
        reachable: None,
        rtt_seconds: None,
        last_failure: Some(failure.to_owned()),
        last_error: Some(why),
    }
}

/// The RTT an outcome measured: a pair's second ping's only (a single ping's includes the
/// responder's polling).
fn rtt_of(outcome: &ProbeOutcome) -> Option<Duration> {
    match outcome {
        ProbeOutcome::Pong {
            rtt, warm: true, ..
        } => Some(*rtt),
        _ => None,
    }
}

/// A confirming probe's deadline: four times the peer's recent answer time, at least
/// [`MIN_CONFIRM_DEADLINE`], at most the probe timeout (which a peer never heard from gets).
fn confirm_deadline(recent: Option<Duration>, timeout: Duration) -> Duration {
    recent
        .map_or(timeout, |r| (r * 4).max(MIN_CONFIRM_DEADLINE))
        .min(timeout)
}

/// What a fabric outcome means; `measured` is the peer's latest measured RTT, reported for
/// a path a single ping proved.
fn fabric_result(
    outcome: &ProbeOutcome,
    measured: Option<Duration>,
) -> (FabricObservation, PathStatus, ProbeResult) {
    match outcome {
        ProbeOutcome::Pong { rtt, warm, .. } => {
            let rtt = if *warm {
                *rtt
            } else {
                measured.unwrap_or(*rtt)
            };
            (
                FabricObservation::Answered(rtt),
                PathStatus {
                    reachable: Some(true),
                    rtt_seconds: Some(rtt.as_secs_f64()),
                    last_failure: None,
                    last_error: None,
                },
                ProbeResult::Ok,
            )
        }
        ProbeOutcome::Timeout => (
            FabricObservation::Timeout,
            PathStatus {
                reachable: Some(false),
                rtt_seconds: None,
                last_failure: Some("timeout".into()),
                last_error: Some("no answer before the deadline (silently dropped)".into()),
            },
            ProbeResult::Timeout,
        ),
        ProbeOutcome::SendFailed { error } => (
            FabricObservation::Failed,
            PathStatus {
                reachable: Some(false),
                rtt_seconds: None,
                last_failure: Some("provider_error".into()),
                last_error: Some(error.to_string()),
            },
            ProbeResult::ProviderError,
        ),
        ProbeOutcome::NotSent { reason } => (
            FabricObservation::Failed,
            PathStatus {
                reachable: Some(false),
                rtt_seconds: None,
                last_failure: Some("not_sent".into()),
                last_error: Some(reason.clone()),
            },
            ProbeResult::Error,
        ),
    }
}

/// GET the peer agent's `/v1/hello` within `timeout`.
async fn fetch_hello(peer: &str, timeout: Duration) -> Result<(Hello, Duration), ProbeFailure> {
    let deadline = Instant::now() + timeout;
    let addr = resolve(peer, deadline).await?;
    let started = Instant::now();
    let conn = connect_tcp(addr, deadline).await?;
    let response = http_get(conn.stream, peer, "/v1/hello", MAX_HELLO_BYTES, deadline).await?;
    let rtt = started.elapsed();
    if response.status != 200 {
        return Err(ProbeFailure::new(
            FailureReason::HttpStatus,
            format!("{peer} answered /v1/hello with HTTP {}", response.status),
        ));
    }
    let hello = Hello::parse(&response.body)
        .map_err(|e| ProbeFailure::new(FailureReason::Protocol, format!("{peer}: {e}")))?;
    Ok((hello, rtt))
}

async fn resolve(peer: &str, deadline: Instant) -> Result<SocketAddr, ProbeFailure> {
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let lookup = tokio::time::timeout_at(deadline, tokio::net::lookup_host(peer.to_owned()));
    match lookup.await {
        Err(_) => Err(ProbeFailure::new(
            FailureReason::Dns,
            format!("resolving {peer} timed out"),
        )),
        Ok(Err(e)) => Err(ProbeFailure::new(
            FailureReason::Dns,
            format!("resolving {peer}: {e}"),
        )),
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| ProbeFailure::new(FailureReason::Dns, format!("{peer} has no address"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::FabricStatus;

    #[test]
    fn confirmations_wait_four_recent_answer_times_within_bounds() {
        let ms = Duration::from_millis;
        let timeout = ms(500);
        // Never answered: the full timeout.
        assert_eq!(confirm_deadline(None, timeout), timeout);
        // A fast peer: not below the floor, which an idle responder's poll needs.
        assert_eq!(confirm_deadline(Some(ms(1)), timeout), MIN_CONFIRM_DEADLINE);
        assert_eq!(confirm_deadline(Some(ms(40)), timeout), ms(160));
        // A slow one: never beyond the timeout.
        assert_eq!(confirm_deadline(Some(ms(300)), timeout), timeout);
    }

    #[test]
    fn only_a_pairs_rtt_is_a_measurement() {
        let pong = |warm| ProbeOutcome::Pong {
            rtt: Duration::from_micros(20),
            cold_rtt: Duration::from_millis(12),
            dwell: Duration::from_micros(3),
            responder_id: 1,
            warm,
        };
        assert_eq!(rtt_of(&pong(true)), Some(Duration::from_micros(20)));
        assert_eq!(rtt_of(&pong(false)), None);
        // A single ping's answer reports the latest measured RTT, else its own.
        let measured = Some(Duration::from_micros(25));
        let (obs, status, _) = fabric_result(&pong(false), measured);
        assert_eq!(obs, FabricObservation::Answered(Duration::from_micros(25)));
        assert_eq!(status.rtt_seconds, Some(25e-6));
        let (obs, _, _) = fabric_result(&pong(true), measured);
        assert_eq!(obs, FabricObservation::Answered(Duration::from_micros(20)));
    }

    #[tokio::test]
    async fn a_departed_peer_loses_its_state_and_every_series() {
        let state = Arc::new(AgentState::new("me", FabricStatus::default()));
        let metrics = Arc::new(Metrics::new("test", &FabricStatus::default()));
        let settings =
            PeerProbeSettings::new("me", Duration::from_millis(300), Duration::from_millis(200));
        let mut monitor = PeerMonitor::new(settings, state.clone(), metrics.clone(), None);
        // Nothing listens on these loopback ports: both peers end up down, with series.
        let peers = vec!["127.0.0.1:9".to_owned(), "127.0.0.1:19".to_owned()];
        let now = std::time::Instant::now();
        monitor.set_peers(&crate::discovery::static_set(&peers, now), Duration::ZERO);
        monitor.run_round().await;
        monitor.run_round().await;
        let text = metrics.encode();
        assert!(text.contains(r#"peer="127.0.0.1:19""#), "{text}");
        assert_eq!(state.peers().len(), 2);

        monitor.set_peers(
            &crate::discovery::static_set(&peers[..1], now),
            Duration::ZERO,
        );
        let text = metrics.encode();
        assert!(
            !text.contains(r#"peer="127.0.0.1:19""#),
            "stale series left: {text}"
        );
        assert!(text.contains(r#"peer="127.0.0.1:9""#));
        assert_eq!(state.peers().len(), 1);
        assert!(text.contains("efa_peers 1"), "{text}");
    }
}
