//! The probe loops: every interval, each peer over both paths, and each configured target.

pub mod schedule;
mod summary;
pub mod targets;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::discovery::PeerSet;
use crate::fabric_ping::{FabricPinger, PeerHandle, ProbeOutcome};
use crate::hello::{Hello, MAX_HELLO_BYTES};
use crate::metrics::{Metrics, ProbePath, ProbeResult};
use crate::probe::{http::http_get, tcp::connect_tcp, FailureReason, ProbeFailure};
use crate::state::{unix_now, AgentState, PathStatus, PeerStatus};
use crate::verdict::diagnosis::{placement_warning, relate, Placement};
use crate::verdict::{FabricObservation, IpObservation, PeerVerdict, Round, VerdictPolicy};

/// Peers probed at once, at most.
const CONCURRENCY: usize = 64;

/// How peers are probed.
#[derive(Debug, Clone)]
pub struct PeerProbeSettings {
    pub timeout: Duration,
    pub probe_size: usize,
    /// Larger probe sizes, one per round in turn, sent once the small probe has answered.
    pub large_probe_sizes: Vec<usize>,
    pub policy: VerdictPolicy,
    /// The provider this node was asked to use; a peer with another cannot be reached.
    pub provider: Option<String>,
    /// Where this node runs, when instance metadata said so.
    pub placement: Option<Placement>,
}

/// What one round found for one peer, before it is applied.
struct RoundResult {
    key: String,
    hello: Result<(Hello, Duration), ProbeFailure>,
    fabric: Option<ProbeOutcome>,
    /// A larger probe sent after the small one answered: (size, outcome).
    large: Option<(usize, ProbeOutcome)>,
}

/// One monitored peer.
struct Peer {
    /// The peer agent's HTTP address, as configured or discovered.
    address: String,
    verdict: PeerVerdict,
    status: PeerStatus,
    hello: Option<Hello>,
    /// The fabric address in use and its handle in the engine.
    fabric: Option<(Vec<u8>, PeerHandle)>,
    /// The same address's handle in the large-probe engine.
    large_handle: Option<PeerHandle>,
    /// Until then the peer is reported `unknown`, whatever its probes say.
    grace_until: std::time::Instant,
    /// The latest outcome of each larger probe size (true: answered).
    large_results: std::collections::BTreeMap<usize, bool>,
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
    /// Rounds run, which picks this round's larger probe size.
    round: u64,
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
        }
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
            if let (Some(pinger), Some((_, handle))) = (&self.pinger, peer.fabric.take()) {
                pinger.remove_peer(handle);
            }
            if let (Some(pinger), Some(handle)) = (&self.large_pinger, peer.large_handle.take()) {
                pinger.remove_peer(handle);
            }
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
            self.state.set_peer(addr, status.clone());
            self.metrics.set_peer(&status);
            self.peers.insert(
                addr.clone(),
                Peer {
                    address: addr.clone(),
                    verdict: PeerVerdict::new(self.settings.policy),
                    status,
                    hello: None,
                    fabric: None,
                    large_handle: None,
                    grace_until: candidate.eligible_since + grace,
                    large_results: Default::default(),
                },
            );
        }
        self.metrics.set_peer_count(self.peers.len());
    }

    /// Probes every peer, both paths at the same time, and applies the results. A peer whose
    /// result disagrees with its state is probed again at once, up to the confirmations its
    /// hysteresis needs: a state still changes only on consecutive agreeing results, but a
    /// blackhole is confirmed within one round rather than over several intervals.
    pub async fn run_round(&mut self) {
        let mut keys: Vec<String> = self.peers.keys().cloned().collect();
        let sizes = &self.settings.large_probe_sizes;
        let mut large = (!sizes.is_empty()).then(|| sizes[self.round as usize % sizes.len()]);
        self.round += 1;
        for _ in 0..self.settings.policy.hysteresis.max(1) {
            if keys.is_empty() {
                break;
            }
            self.probe_and_apply(&keys, large).await;
            // Confirmations are about reachability: small probes only.
            large = None;
            keys = self
                .peers
                .iter()
                .filter(|(_, p)| p.verdict.is_changing())
                .map(|(k, _)| k.clone())
                .collect();
        }
        let unreachable = self
            .peers
            .values()
            .filter(|p| {
                use crate::verdict::PeerState as S;
                matches!(p.status.state, S::Down | S::FabricDropped | S::IpBlocked)
            })
            .count();
        self.metrics.set_unreachable_peers(unreachable);
    }

    /// One probe of each of `keys` over both paths (bounded concurrency), then the verdicts.
    async fn probe_and_apply(&mut self, keys: &[String], large: Option<usize>) {
        let timeout = self.settings.timeout;
        let size = self.settings.probe_size;
        let jobs: Vec<_> = keys
            .iter()
            .filter_map(|k| self.peers.get(k))
            .map(|p| {
                let handle = p.fabric.as_ref().map(|(_, h)| *h);
                (p.address.clone(), handle, p.large_handle)
            })
            .collect();
        let pinger = self.pinger.clone();
        let large_pinger = self.large_pinger.clone();
        let results: Vec<RoundResult> = stream::iter(jobs)
            .map(|(key, handle, large_handle)| {
                let pinger = pinger.clone();
                let large_pinger = large_pinger.clone();
                async move {
                    let fabric = async {
                        let (Some(p), Some(h)) = (pinger, handle) else {
                            return (None, None);
                        };
                        let small = p.probe(h, size, timeout).get().await;
                        // The larger probe goes to a responder the small one just woke.
                        let large = match (&small, large, large_pinger, large_handle) {
                            (Some(ProbeOutcome::Pong { .. }), Some(big), Some(lp), Some(lh)) => {
                                lp.probe(lh, big, timeout).get().await.map(|o| (big, o))
                            }
                            _ => None,
                        };
                        (small, large)
                    };
                    let (hello, (fabric, large)) = tokio::join!(fetch_hello(&key, timeout), fabric);
                    RoundResult {
                        key,
                        hello,
                        fabric,
                        large,
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for result in results {
            self.apply(result).await;
        }
    }

    async fn apply(&mut self, result: RoundResult) {
        let provider = self.settings.provider.clone();
        let local_fabric = self.pinger.is_some();
        let Some(peer) = self.peers.get_mut(&result.key) else {
            return; // left during the round
        };
        let old_name = peer.status.name.clone();

        // The IP path.
        let ip = match &result.hello {
            Ok((hello, rtt)) => {
                peer.status.ip = PathStatus {
                    reachable: Some(true),
                    rtt_seconds: Some(rtt.as_secs_f64()),
                    last_failure: None,
                    last_error: None,
                };
                self.metrics
                    .record_probe(ProbePath::Ip, ProbeResult::Ok, Some(*rtt));
                peer.hello = Some(hello.clone());
                IpObservation::Answered(*rtt)
            }
            Err(failure) => {
                peer.status.ip = PathStatus {
                    reachable: Some(false),
                    rtt_seconds: None,
                    last_failure: Some(failure.reason.as_str().to_owned()),
                    last_error: Some(failure.message.clone()),
                };
                self.metrics.record_probe(
                    ProbePath::Ip,
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
        let fabric = match (&result.fabric, &peer.hello) {
            _ if !local_fabric => FabricObservation::LocalNoFabric,
            (Some(outcome), _) => {
                let (obs, status, result) = fabric_result(outcome);
                peer.status.fabric = status;
                self.metrics
                    .record_probe(ProbePath::Fabric, result, rtt_of(outcome));
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
            let (_, _, counted) = fabric_result(outcome);
            self.metrics
                .record_probe(ProbePath::Fabric, counted, rtt_of(outcome));
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
        let relation = relate(
            self.settings.placement.as_ref(),
            peer_placement(peer.hello.as_ref()).as_ref(),
        );
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
        if let Some(hello) = &peer.hello {
            peer.status.name = hello.node_name.clone();
        }
        peer.status.hello = peer.hello.clone();
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
        peer.status.warnings = placement_warning(
            self.settings.placement.as_ref(),
            peer_placement(peer.hello.as_ref()).as_ref(),
        )
        .into_iter()
        .collect();

        // Learn or update the peer's fabric address from its hello. It is kept when the IP
        // path later fails, so the fabric probe goes on.
        let wanted = peer
            .hello
            .as_ref()
            .filter(|h| h.fabric.available && Some(&h.fabric.provider) == provider.as_ref())
            .and_then(|h| h.fabric_address(0));
        let current = peer.fabric.as_ref().map(|(a, _)| a.as_slice());
        if let (Some(pinger), Some(address)) = (&self.pinger, wanted) {
            if Some(address.as_slice()) != current {
                if let Some((_, old)) = peer.fabric.take() {
                    pinger.remove_peer(old);
                    peer.verdict.fabric_path_changed();
                }
                if let (Some(lp), Some(old)) = (&self.large_pinger, peer.large_handle.take()) {
                    lp.remove_peer(old);
                }
                peer.large_results.clear();
                if let Some(lp) = &self.large_pinger {
                    peer.large_handle = lp.add_peer(&address).get().await.and_then(Result::ok);
                }
                match pinger.add_peer(&address).get().await {
                    Some(Ok(handle)) => peer.fabric = Some((address, handle)),
                    Some(Err(e)) => {
                        tracing::warn!(peer = %peer.status.name, error = %e, "peer's fabric address refused");
                        peer.status.fabric = not_probed("bad_address", e);
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
            if let (Some(pinger), Some((_, h))) = (&self.pinger, peer.fabric.take()) {
                pinger.remove_peer(h);
            }
            if let (Some(pinger), Some(h)) = (&self.large_pinger, peer.large_handle.take()) {
                pinger.remove_peer(h);
            }
        }
    }
}

/// Where a peer runs, from the topology in its hello.
fn peer_placement(hello: Option<&Hello>) -> Option<Placement> {
    hello?.topology.as_ref().and_then(Placement::of)
}

fn not_probed(failure: &str, why: String) -> PathStatus {
    PathStatus {
        reachable: None,
        rtt_seconds: None,
        last_failure: Some(failure.to_owned()),
        last_error: Some(why),
    }
}

fn rtt_of(outcome: &ProbeOutcome) -> Option<Duration> {
    match outcome {
        ProbeOutcome::Pong { rtt, .. } => Some(*rtt),
        _ => None,
    }
}

fn fabric_result(outcome: &ProbeOutcome) -> (FabricObservation, PathStatus, ProbeResult) {
    match outcome {
        ProbeOutcome::Pong { rtt, .. } => (
            FabricObservation::Answered(*rtt),
            PathStatus {
                reachable: Some(true),
                rtt_seconds: Some(rtt.as_secs_f64()),
                last_failure: None,
                last_error: None,
            },
            ProbeResult::Ok,
        ),
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

    #[tokio::test]
    async fn a_departed_peer_loses_its_state_and_every_series() {
        let state = Arc::new(AgentState::new("me", FabricStatus::default()));
        let metrics = Arc::new(Metrics::new("test", &FabricStatus::default()));
        let settings = PeerProbeSettings {
            timeout: Duration::from_millis(200),
            probe_size: 64,
            large_probe_sizes: vec![],
            policy: VerdictPolicy::default(),
            provider: None,
            placement: None,
        };
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
