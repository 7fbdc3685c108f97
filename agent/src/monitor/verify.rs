//! Verify on request (`POST /v1/verify`, `efaprobe preflight`): the named peers probed now,
//! once per path, outside the schedule and without its hysteresis.
//!
//! The requests come over a channel to a task of the monitor's own ([`serve`], spawned by
//! [`super::run`]) which never touches the round loop: it resolves names from the agent's
//! state (the same peers the monitor probes), and probes with a clone of the monitor's
//! fabric endpoints and handles of its own in the engines (address-vector entries are
//! counted, so the monitor's stay). A verify is what a round probes of a peer: the hello (IP),
//! the small fabric ping pair and, once that answered, each larger probe size
//! (`--large-probe-sizes`, all at once where a round sends one in turn), all on rail 0; and
//! one ping on every other rail both nodes have (see [`super::rails`]).
//!
//! Timing: the fabric ping starts with the hello when an address is known from the peer's
//! last hello; else, or when it failed, one more ping to the address the fresh hello gave
//! (a confirmation, or the address of an agent that restarted). Everything within twice the
//! probe timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::observe::{self, FabricContext};
use super::rails;
use super::summary::summarize;
use crate::fabric_ping::{FabricPinger, ProbeOutcome};
use crate::hello::Hello;
use crate::probe::hello::fetch_hello;
use crate::state::{AgentState, PathFailure, PathStatus};
use crate::topology::Topology;
use crate::verdict::diagnosis::{relate, Placement, Relation};
use crate::verdict::{PeerState, PeerVerdict, Round, VerdictPolicy};

/// Node names one verify may name, at most.
pub const MAX_VERIFY_NODES: usize = 256;

/// The longest a node name may be (a DNS name's).
pub const MAX_NODE_NAME: usize = 253;

/// Verifies waiting for the monitor's task, at most; the HTTP side rate-limits before this.
pub const VERIFY_QUEUE: usize = 8;

/// Verifies running at once, at most: each probes up to [`MAX_VERIFY_NODES`] peers.
pub const VERIFIES_AT_ONCE: usize = 4;

/// The shortest time worth a second fabric ping.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// What a verify probes, said in every answer.
pub const PROBED: &str = "ip (GET /v1/hello) and fabric (a small ping pair, then each larger \
                          probe size configured, on rail 0; one ping on every other rail both \
                          nodes have), as a round does";

/// One verify, with where its answer goes.
#[derive(Debug)]
pub struct VerifyRequest {
    pub nodes: Vec<String>,
    pub reply: oneshot::Sender<VerifyAnswer>,
}

/// The answer to a verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// The node of the agent that probed.
    pub node: String,
    /// Whether the agent has finished its first round: before, it may not know its peers
    /// yet, and a preflight asks again for names it does not know.
    pub ready: bool,
    /// Each probe's deadline; the verify took at most twice this.
    pub probe_timeout_seconds: f64,
    /// What was probed (see [`PROBED`]).
    pub probed: String,
    /// The named nodes this agent knows, each probed, in the order asked.
    pub verified: Vec<NodeVerified>,
    /// Named nodes this agent does not know as peers (not probed).
    pub unknown: Vec<String>,
    /// Named nodes that are this agent's own node (nothing to probe).
    pub this_node: Vec<String>,
}

/// What one peer's verify found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeVerified {
    /// The name asked for.
    pub node: String,
    /// The peer agent's address.
    pub address: String,
    /// Both paths answered.
    pub ok: bool,
    /// The verdict of this one probe (`healthy`, `fabric_dropped`, ...).
    pub state: String,
    /// Why not healthy: `cross_subnet`, `security_group`, `fabric_timeout`, `ip_timeout`, ...
    pub reason: Option<String>,
    /// One sentence for a person.
    pub summary: String,
    pub ip: PathResult,
    /// The fabric path: every paired rail's answer (rail 0's RTT).
    pub fabric: PathResult,
    /// Each rail paired with the peer, in rail order (empty without a fabric).
    #[serde(default)]
    pub rails: Vec<RailResult>,
}

/// One rail's result in a verify.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RailResult {
    pub rail: u16,
    /// This node's device for the rail.
    pub domain: String,
    #[serde(flatten)]
    pub path: PathResult,
}

/// One path's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathResult {
    /// `None`: not probed (the reason says why).
    pub reachable: Option<bool>,
    pub rtt_seconds: Option<f64>,
    /// `timeout`, `refused`, `provider_error`, `peer_no_fabric`, ...
    pub failure: Option<String>,
    pub error: Option<String>,
}

impl From<&PathStatus> for PathResult {
    fn from(p: &PathStatus) -> PathResult {
        PathResult {
            reachable: p.reachable,
            rtt_seconds: p.rtt_seconds,
            failure: p.last_failure.map(|f| f.as_str().to_owned()),
            error: p.last_error.clone(),
        }
    }
}

/// What a verify probes with, copied out of the monitor: nothing here is the monitor's
/// own state.
#[derive(Clone)]
pub struct VerifyContext {
    pub(super) state: Arc<AgentState>,
    /// The monitor's rails (rail 0 first), each rail's device and interface MAC.
    pub(super) rails: Vec<FabricPinger>,
    pub(super) rail_domains: Vec<Arc<str>>,
    pub(super) rail_macs: Vec<Option<String>>,
    /// The monitor's endpoint for larger probes, and their sizes.
    pub(super) large_pinger: Option<FabricPinger>,
    pub(super) large_probe_sizes: Vec<usize>,
    pub(super) provider: Option<String>,
    /// This node's instance topology (its placement), as the round loop gets it.
    pub(super) topology: watch::Receiver<Option<Arc<crate::topology::Topology>>>,
    pub(super) timeout: Duration,
    pub(super) probe_size: usize,
    pub(super) policy: VerdictPolicy,
}

/// A named node resolved to a peer.
#[derive(Debug, Clone)]
struct Target {
    node: String,
    key: String,
    /// Its last hello, for a fabric address to ping at once.
    hello: Option<Arc<Hello>>,
}

/// Answers verifies until `stop` is cancelled or every sender is gone; each verify runs as
/// its own task, so that one slow verify holds up neither the next nor the rounds. At most
/// [`VERIFIES_AT_ONCE`] run; the next wait in the channel ([`VERIFY_QUEUE`]), and beyond
/// that the HTTP side answers 429.
pub async fn serve(
    ctx: VerifyContext,
    mut requests: mpsc::Receiver<VerifyRequest>,
    stop: CancellationToken,
) {
    let running = Arc::new(tokio::sync::Semaphore::new(VERIFIES_AT_ONCE));
    loop {
        let permit = tokio::select! {
            p = running.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let request = tokio::select! {
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _running = permit;
            tokio::select! {
                answer = ctx.verify(&request.nodes) => {
                    let _ = request.reply.send(answer);
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

impl VerifyContext {
    /// Probes each named peer now, all at once (so that the verify takes twice the probe
    /// timeout at most, however many time out; [`MAX_VERIFY_NODES`] bounds them), and answers
    /// for all of them. Pings the engine cannot send at once wait in its queue, not fail.
    pub async fn verify(&self, nodes: &[String]) -> VerifyAnswer {
        let (targets, unknown, this_node) = self.resolve(nodes);
        let topology = self.topology.borrow().clone();
        let verified = futures::future::join_all(
            targets
                .into_iter()
                .take(MAX_VERIFY_NODES)
                .map(|t| self.verify_one(topology.as_deref(), t)),
        )
        .await;
        VerifyAnswer {
            node: self.state.node_name().to_owned(),
            ready: self.state.is_ready(),
            probe_timeout_seconds: self.timeout.as_secs_f64(),
            probed: PROBED.to_owned(),
            verified,
            unknown,
            this_node,
        }
    }

    /// The named nodes as peers (by node name, address, or the address's host), the names
    /// no peer has, and those that name this node.
    fn resolve(&self, nodes: &[String]) -> (Vec<Target>, Vec<String>, Vec<String>) {
        let me = self.state.node_name();
        let peers: HashMap<String, (String, Option<Arc<Hello>>)> = self.state.read_peers(|table| {
            let mut by_name = HashMap::new();
            for (key, status) in table {
                let entry = (key.clone(), status.hello.clone());
                let host = host_of(key);
                for name in [status.name.as_str(), key.as_str(), host] {
                    by_name.entry(name.to_owned()).or_insert(entry.clone());
                }
            }
            by_name
        });
        let (mut targets, mut unknown, mut this_node) = (Vec::new(), Vec::new(), Vec::new());
        for node in nodes {
            if node == me {
                this_node.push(node.clone());
            } else if let Some((key, hello)) = peers.get(node) {
                targets.push(Target {
                    node: node.clone(),
                    key: key.clone(),
                    hello: hello.clone(),
                });
            } else {
                unknown.push(node.clone());
            }
        }
        (targets, unknown, this_node)
    }

    /// Both paths of one peer, once each (the fabric perhaps twice), judged as one round.
    async fn verify_one(&self, topology: Option<&Topology>, target: Target) -> NodeVerified {
        let local = topology.and_then(Placement::of);
        let deadline = Instant::now() + self.timeout * 2;
        let Target {
            node,
            key,
            hello: last_hello,
        } = target;
        let known = last_hello.as_deref().and_then(|h| self.fabric_address(h));
        let early = async {
            match &known {
                Some(address) => Some(self.ping(address, deadline).await),
                None => None,
            }
        };
        let (hello, early) = tokio::join!(fetch_hello(&key, self.timeout), early);
        let fresh = hello
            .as_ref()
            .ok()
            .and_then(|(h, _)| self.fabric_address(h));
        let answered = matches!(early, Some(Ok(ProbeOutcome::Pong { .. })));
        let left = deadline.saturating_duration_since(Instant::now());
        let (fabric, pinged) = match fresh {
            Some(address) if !answered && left >= MIN_RETRY => {
                (Some(self.ping(&address, deadline).await), Some(address))
            }
            _ => (early, known),
        };
        // The larger sizes only where the small probe answered, as in a round.
        let lost_size = match (&fabric, &pinged) {
            (Some(Ok(ProbeOutcome::Pong { .. })), Some(address)) => {
                self.lost_size(address, deadline).await
            }
            _ => None,
        };
        let peer_hello = hello
            .as_ref()
            .ok()
            .map(|(h, _)| h)
            .or(last_hello.as_deref());
        let provider = self.provider.as_deref();
        let paired = rails::paired(self.rails.len(), peer_hello, provider);
        let others = match peer_hello {
            Some(h) if pinged.is_some() => self.ping_rails(h, paired, deadline).await,
            _ => Vec::new(),
        };
        let rails = RailsSeen {
            relation_of: &|rail| rails::rail_relation(topology, &self.rail_macs, peer_hello, rail),
            others,
            paired,
            domains: &self.rail_domains,
        };
        judge(
            (node, key),
            &hello,
            (fabric, lost_size),
            FabricContext {
                local_fabric: !self.rails.is_empty(),
                provider,
                hello: peer_hello,
                measured: None,
                refused: None,
            },
            (local.as_ref(), self.probe_size),
            rails,
            self.policy,
        )
    }

    /// Every larger probe size at once, on the large-probe endpoint, before `deadline`: the
    /// smallest that got no answer. Sizes that could not be sent say nothing.
    async fn lost_size(&self, address: &[u8], deadline: Instant) -> Option<usize> {
        let pinger = self.large_pinger.as_ref()?;
        if self.large_probe_sizes.is_empty() {
            return None;
        }
        let handle = pinger.add_peer(address).get().await?.ok()?;
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(self.timeout);
        let outcomes = futures::future::join_all(
            self.large_probe_sizes
                .iter()
                .map(|&size| async move { (size, pinger.reach(handle, size, wait).get().await) }),
        )
        .await;
        pinger.remove_peer(handle);
        let mut results = std::collections::BTreeMap::new();
        for (size, outcome) in outcomes {
            if let Some(outcome) = outcome {
                observe::large_probe(&mut results, Some(&(size, outcome)));
            }
        }
        results
            .into_iter()
            .find(|(_, ok)| !ok)
            .map(|(size, _)| size)
    }

    /// One ping on each rail from 1 to `paired - 1`, all at once, on handles of the verify's
    /// own, before `deadline`.
    async fn ping_rails(
        &self,
        hello: &Hello,
        paired: usize,
        deadline: Instant,
    ) -> Vec<rails::RailSeen> {
        let provider = self.provider.as_deref();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(self.timeout);
        let pings = (1..paired).filter_map(|rail| {
            let engine = self.rails.get(rail)?;
            let address = rails::offered_rail_address(hello, provider, rail)?;
            Some(async move {
                let outcome = match engine.add_peer(&address).get().await {
                    Some(Ok(handle)) => {
                        let outcome = engine.reach(handle, self.probe_size, wait).get().await;
                        engine.remove_peer(handle);
                        Ok(outcome.unwrap_or(ProbeOutcome::NotSent {
                            reason: "the fabric engine stopped".into(),
                        }))
                    }
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the fabric engine stopped".into()),
                };
                rails::RailSeen::of(rail, &outcome, provider)
            })
        });
        futures::future::join_all(pings).await
    }

    /// The peer's fabric address this node can ping, as the monitor picks it.
    fn fabric_address(&self, hello: &Hello) -> Option<Vec<u8>> {
        self.rails.first()?;
        observe::offered_address(hello, self.provider.as_deref())
    }

    /// One ping pair to `address` before `deadline` (at most the probe timeout), on a handle
    /// of the verify's own. `Err`: the provider refused the address.
    async fn ping(&self, address: &[u8], deadline: Instant) -> Result<ProbeOutcome, String> {
        let Some(pinger) = self.rails.first() else {
            return Err("this node has no fabric".into());
        };
        let stopped = || ProbeOutcome::NotSent {
            reason: "the fabric engine stopped".into(),
        };
        let handle = match pinger.add_peer(address).get().await {
            Some(Ok(handle)) => handle,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Ok(stopped()),
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(self.timeout);
        let outcome = pinger
            .probe(handle, self.probe_size, wait)
            .get()
            .await
            .unwrap_or_else(stopped);
        pinger.remove_peer(handle);
        Ok(outcome)
    }
}

/// A verify's rails beyond rail 0, and how to place them.
struct RailsSeen<'a> {
    others: Vec<rails::RailSeen>,
    paired: usize,
    domains: &'a [Arc<str>],
    /// How rail `r` of the two nodes relates (each side's interface for the rail).
    relation_of: &'a dyn Fn(usize) -> Relation,
}

/// One verify's results as a round (`ctx.hello`: the peer's freshest hello): a fresh verdict (no hysteresis: leaving `unknown` takes
/// one round) and what it reports.
fn judge(
    (node, address): (String, String),
    hello: &Result<(Hello, Duration), crate::probe::hello::HelloFailure>,
    (fabric, lost_size): (Option<Result<ProbeOutcome, String>>, Option<usize>),
    ctx: FabricContext<'_>,
    (local, probe_size): (Option<&Placement>, usize),
    rails: RailsSeen<'_>,
    policy: VerdictPolicy,
) -> NodeVerified {
    let ip = observe::ip_path(hello);
    let (fabric_observation, mut fabric_status) = match &fabric {
        Some(Err(refused)) => (
            crate::verdict::FabricObservation::Failed,
            observe::not_probed(PathFailure::BadAddress, refused.clone()),
        ),
        Some(Ok(outcome)) => {
            let seen = observe::fabric_path(Some(outcome), ctx);
            (seen.observation, seen.status.unwrap_or_default())
        }
        None => {
            let seen = observe::fabric_path(None, ctx);
            let status = seen.status.unwrap_or_else(|| {
                observe::not_probed(
                    PathFailure::NotSent,
                    if ctx.local_fabric {
                        "no fabric address known for the peer (its hello did not answer)".into()
                    } else {
                        "this node has no usable fabric".into()
                    },
                )
            });
            (seen.observation, status)
        }
    };
    let placement = ctx
        .hello
        .and_then(|h| h.topology.as_ref())
        .and_then(Placement::of);
    // Every paired rail, as a round judges them (see `super::rails`).
    let (fabric_observation, deciding_rail) = rails::combine(&fabric_observation, &rails.others);
    let relation = match deciding_rail {
        Some(rail) if rail > 0 => (rails.relation_of)(usize::from(rail)),
        _ => relate(local, placement.as_ref()),
    };
    let ip_answers = ip.status.reachable == Some(true);
    let rail_list = rails::statuses(
        &[],
        rails.paired,
        Some(&fabric_status),
        &rails.others,
        rails.domains,
        ctx.hello,
        |rail, path| {
            ip_answers
                .then(|| rails::rail_reason(&(rails.relation_of)(rail), path))
                .flatten()
        },
    );
    if let Some(failing) = rails::partial_failure(&fabric_status, &rail_list) {
        fabric_status = failing;
    }
    if let Some(size) = lost_size {
        observe::size_lost(&mut fabric_status, size, probe_size);
    }
    let mut verdict = PeerVerdict::new(VerdictPolicy {
        hysteresis: 1,
        ..policy
    });
    verdict.observe(&Round {
        ip: ip.observation,
        fabric: fabric_observation,
        relation: relation.clone(),
        lost_size,
    });
    let state = verdict.state();
    // Slow is still answering; larger packets lost is not (NCCL's are large).
    let ok = ip.status.reachable == Some(true)
        && fabric_status.reachable == Some(true)
        && lost_size.is_none()
        && matches!(state, PeerState::Healthy | PeerState::Degraded);
    let mut summary = summarize(
        state,
        verdict.reason(),
        &ip.status,
        &fabric_status,
        0.0,
        &relation,
    );
    if let Some(note) = rails::failing_note(&rail_list) {
        summary = format!("{note}. {summary}");
    }
    NodeVerified {
        node,
        address,
        ok,
        state: state.as_str().to_owned(),
        reason: verdict.reason().map(|r| r.as_str().to_owned()),
        summary,
        ip: (&ip.status).into(),
        fabric: (&fabric_status).into(),
        rails: rail_list
            .iter()
            .map(|r| RailResult {
                rail: r.rail,
                domain: r.domain.to_string(),
                path: PathResult {
                    failure: r
                        .reason
                        .map(|reason| reason.as_str().to_owned())
                        .or_else(|| r.path.last_failure.map(|f| f.as_str().to_owned())),
                    ..(&r.path).into()
                },
            })
            .collect(),
    }
}

/// A node name, an address or `HOST:PORT`: printable, no spaces, a DNS name's length at
/// most.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// The host of `HOST:PORT` (`[v6]:PORT` without brackets); the whole text without a port.
fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => address,
    }
}

#[cfg(test)]
mod tests;
