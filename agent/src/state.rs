//! What the agent knows now: the shared snapshot the HTTP API and the status page read, and
//! the probe loops write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::hello::Hello;
use crate::probe::{FailureReason, TargetReport};
use crate::verdict::{DiagnosisReason, PeerState};

/// One path's latest result for a peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PathStatus {
    /// `None` while the path has not been (or cannot be) probed.
    pub reachable: Option<bool>,
    /// Round-trip time of the last answer, seconds.
    pub rtt_seconds: Option<f64>,
    /// Bounded reason of the last failure (`timeout`, `refused`, `provider_error`, ...).
    pub last_failure: Option<PathFailure>,
    /// The last failure in words (the provider's own text on the fabric path).
    pub last_error: Option<String>,
    /// On `efa`, what the provider's own error code of the last failed send says
    /// (`unreachable_remote`, `remote_unresponsive`, `handshake_failed`, ...): decoded from
    /// `prov_errno` (see `fabric::EfaErrno`), bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_reason: Option<fabric::EfaReason>,
}

/// Why a path's last probe failed, or why the path was not probed: a bounded set, written
/// as its word in `/v1/peers` and on the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathFailure {
    /// The peer's address is a name that did not resolve (IP).
    Dns,
    /// No answer before the deadline (either path): silently dropped.
    Timeout,
    /// Nothing listens on the peer's agent port (IP).
    Refused,
    /// ICMP unreachable, no route (IP).
    Unreachable,
    /// The connection was reset (IP).
    Reset,
    /// Something answered, but not an efaprobe hello (IP).
    Protocol,
    /// The hello was answered with an error status (IP).
    HttpStatus,
    /// The provider reported the send failed (fabric).
    ProviderError,
    /// The ping never left (fabric): no transmit slot, engine stopped.
    NotSent,
    /// Not probed: the peer's agent has no usable fabric.
    PeerNoFabric,
    /// Not probed: the peer uses another provider.
    ProviderMismatch,
    /// Not probed: the provider refused the peer's fabric address.
    BadAddress,
    /// Small probes answer, larger ones are lost (fabric).
    ProbeSize,
}

impl PathFailure {
    /// The word, as serialised.
    pub const fn as_str(self) -> &'static str {
        match self {
            PathFailure::Dns => "dns",
            PathFailure::Timeout => "timeout",
            PathFailure::Refused => "refused",
            PathFailure::Unreachable => "unreachable",
            PathFailure::Reset => "reset",
            PathFailure::Protocol => "protocol",
            PathFailure::HttpStatus => "http_status",
            PathFailure::ProviderError => "provider_error",
            PathFailure::NotSent => "not_sent",
            PathFailure::PeerNoFabric => "peer_no_fabric",
            PathFailure::ProviderMismatch => "provider_mismatch",
            PathFailure::BadAddress => "bad_address",
            PathFailure::ProbeSize => "probe_size",
        }
    }
}

/// An IP probe's failure, in the probe's own words.
impl From<FailureReason> for PathFailure {
    fn from(reason: FailureReason) -> PathFailure {
        match reason {
            FailureReason::Dns => PathFailure::Dns,
            FailureReason::Timeout => PathFailure::Timeout,
            FailureReason::Refused => PathFailure::Refused,
            FailureReason::Unreachable => PathFailure::Unreachable,
            FailureReason::Reset => PathFailure::Reset,
            FailureReason::Protocol => PathFailure::Protocol,
            FailureReason::HttpStatus => PathFailure::HttpStatus,
        }
    }
}

impl PathStatus {
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt_seconds.map(Duration::from_secs_f64)
    }
}

/// Everything known about one peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatus {
    /// The peer's node name (from its hello), or its address until it has answered once.
    pub name: String,
    /// The peer agent's HTTP address.
    pub address: String,
    pub state: PeerState,
    /// Why, while not healthy.
    pub reason: Option<DiagnosisReason>,
    /// One sentence for a person: what is wrong and what to do (shared by peers that say
    /// the same: not probed yet, rotated out of the sample).
    pub summary: Arc<str>,
    pub ip: PathStatus,
    pub fabric: PathStatus,
    /// Fabric loss ratio over the recent window.
    pub fabric_loss: f64,
    /// The peer's last hello.
    pub hello: Option<Arc<Hello>>,
    /// Things worth knowing that do not change the verdict (placement groups).
    pub warnings: Vec<String>,
    /// When the state last changed (seconds since the epoch).
    pub since_unix: u64,
    pub rounds: u64,
    /// Whether this node's verdict rests on its own probes now: false until the peer's first
    /// probe, and again once the sample rotates it out. Only such peers have per-peer series
    /// and count in `efa_peers_by_state` (see `metrics`).
    pub probed: bool,
    /// Set while another peer held this one's node name first: this peer keeps its own
    /// verdict and counts in the aggregates, but has no per-peer series (they are keyed by
    /// name, and belong to the first claimant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_conflict: Option<NameConflict>,
    /// The fabric path rail by rail: one entry per rail paired with this peer (rail `i` of
    /// this node to rail `i` of the peer, `i` below both nodes' rail counts), in rail order.
    /// Empty until the peer's hello is known and while the fabric is not probed.
    pub rails: Vec<RailStatus>,
    /// How many rails the peer's hello lists, once known: when it differs from this node's,
    /// only the common ones are paired (and `rails` says which).
    pub peer_rails: Option<u16>,
}

/// One rail's latest result for a peer: rail `rail` of this node to the same rail of the
/// peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RailStatus {
    pub rail: u16,
    /// This node's device (libfabric domain) for the rail, shared with [`FabricDevice`].
    pub domain: Arc<str>,
    /// The peer's device for the rail, as its hello names it.
    pub peer_domain: Arc<str>,
    #[serde(flatten)]
    pub path: PathStatus,
    /// Why this rail drops while IP works, from the rail's own placement on both sides (its
    /// network interface's subnet and security groups); `None` while it answers.
    pub reason: Option<DiagnosisReason>,
}

/// A second claimant of a node name: who holds it, and what this peer's hello said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameConflict {
    /// The reason, as a word (`name_conflict`), for tools reading `/v1/peers`.
    pub reason: &'static str,
    /// The agent address of the peer exported under the name.
    pub held_by: String,
    /// That peer's instance id, once its hello said.
    pub held_by_instance_id: Option<u64>,
    /// The instance id in this peer's hello.
    pub instance_id: u64,
}

/// What [`AgentState::claim_name`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameClaim {
    /// The peer holds the name (as before, or now).
    Held,
    /// Another peer holds it; newly so when `new` (to log and count once).
    Conflict { conflict: NameConflict, new: bool },
    /// No peer under that key.
    Unknown,
}

/// Which peers the current round probes, as it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSchedule {
    /// Peers a round may probe at most (the probe budget times the interval).
    pub capacity: usize,
    /// The peers it probes, by why (every role, 0 included).
    pub by_role: Vec<(&'static str, usize)>,
}

/// This node's fabric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FabricStatus {
    /// The provider asked for (`none` when the fabric path is off).
    pub provider: String,
    /// True when at least one endpoint is open.
    pub available: bool,
    /// Why not, when not.
    pub error: Option<String>,
    pub devices: Vec<FabricDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FabricDevice {
    /// The rail: the device's position in this node's rail order (see `fabric_ping`).
    pub rail: u16,
    pub domain: String,
    /// The provider's name for itself on this device (`efa`, `udp;ofi_rxd`).
    pub provider: String,
    pub address: String,
    /// The MAC of the network interface the device sits on, where the system says (the
    /// interface holding the bind address on IP providers; sysfs on EFA): it names the
    /// rail's ENI in the instance topology.
    pub mac: Option<String>,
}

/// Every known peer's status, by its key (the agent address it was configured or discovered
/// with).
pub type PeerTable = BTreeMap<String, Box<PeerStatus>>;

/// The shared snapshot. Writers replace or change an entry under its lock; readers clone
/// what they need, or read in place ([`AgentState::read_peers`]).
#[derive(Debug, Default)]
pub struct AgentState {
    node_name: String,
    ready: AtomicBool,
    fabric: RwLock<FabricStatus>,
    /// Boxed: a B-tree node holds eleven entries and is about half full after the ordered
    /// inserts of a peer list; what its empty slots cost is the box's size, not a status's.
    peers: RwLock<PeerTable>,
    /// `None` until the first round starts.
    schedule: RwLock<Option<ProbeSchedule>>,
    targets: RwLock<Vec<TargetReport>>,
    /// Peers found claiming a node name another peer held (`efa_peer_name_conflicts_total`).
    name_conflicts: AtomicU64,
}

impl AgentState {
    pub fn new(node_name: &str, fabric: FabricStatus) -> Self {
        AgentState {
            node_name: node_name.to_owned(),
            fabric: RwLock::new(fabric),
            ..Default::default()
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Ready once the first full probe round has finished; stays ready after.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn fabric(&self) -> FabricStatus {
        read(&self.fabric).clone()
    }

    /// Peers by their key (the agent address they were configured or discovered with).
    pub fn peers(&self) -> Vec<PeerStatus> {
        read(&self.peers)
            .values()
            .map(|p| PeerStatus::clone(p))
            .collect()
    }

    pub fn set_peer(&self, key: &str, status: PeerStatus) {
        write(&self.peers).insert(key.to_owned(), Box::new(status));
    }

    /// Removes a peer; a peer that claimed its name second takes the name over.
    pub fn remove_peer(&self, key: &str) -> Option<PeerStatus> {
        let mut peers = write(&self.peers);
        let removed = peers.remove(key).map(|p| *p)?;
        if removed.name_conflict.is_none() {
            hand_over(&mut peers, &removed.name);
        }
        Some(removed)
    }

    /// Gives the peer under `key` the node name its hello says (`node_name`, from an agent
    /// started as `instance_id`), unless another peer holds that name: then the peer keeps
    /// the name but is marked as its second claimant ([`PeerStatus::name_conflict`]). The
    /// first to claim a name holds it until it leaves or says another name; a peer whose
    /// name came from discovery holds it from the start. Each keeps its own verdict.
    pub fn claim_name(&self, key: &str, node_name: &str, instance_id: u64) -> NameClaim {
        let mut peers = write(&self.peers);
        let Some(status) = peers.get(key) else {
            return NameClaim::Unknown;
        };
        let same_agent = status
            .hello
            .as_ref()
            .is_some_and(|h| h.instance_id == instance_id && h.node_name == node_name);
        if same_agent && status.name == node_name && status.name_conflict.is_none() {
            return NameClaim::Held;
        }
        let old_name = (status.name != node_name && status.name_conflict.is_none())
            .then(|| status.name.clone());
        let was_conflict = status.name_conflict.is_some();
        // Who else holds the name: the first other peer by that name not itself a claimant.
        let holder = peers
            .iter()
            .find(|(k, p)| *k != key && p.name == node_name && p.name_conflict.is_none())
            .map(|(k, p)| (k.clone(), p.hello.as_ref().map(|h| h.instance_id)));
        let conflict = holder.map(|(held_by, held_by_instance_id)| NameConflict {
            reason: "name_conflict",
            held_by,
            held_by_instance_id,
            instance_id,
        });
        if let Some(status) = peers.get_mut(key) {
            if status.name != node_name {
                status.name = node_name.to_owned();
            }
            status.name_conflict.clone_from(&conflict);
        }
        if let Some(old) = old_name {
            hand_over(&mut peers, &old);
        }
        match conflict {
            None => NameClaim::Held,
            Some(conflict) => {
                let new = !was_conflict;
                if new {
                    self.name_conflicts.fetch_add(1, Ordering::Relaxed);
                }
                NameClaim::Conflict { conflict, new }
            }
        }
    }

    /// Peers found claiming a node name another peer held, since start.
    pub fn name_conflicts(&self) -> u64 {
        self.name_conflicts.load(Ordering::Relaxed)
    }

    /// The peer's status, if it is known.
    pub fn peer(&self, key: &str) -> Option<PeerStatus> {
        read(&self.peers).get(key).map(|p| PeerStatus::clone(p))
    }

    /// Changes the status of a known peer in place; false if there is none under `key`.
    pub fn update_peer(&self, key: &str, change: impl FnOnce(&mut PeerStatus)) -> bool {
        match write(&self.peers).get_mut(key) {
            Some(status) => {
                change(status);
                true
            }
            None => false,
        }
    }

    /// Reads every peer under one lock, without copying them (what a scrape encodes).
    pub fn read_peers<R>(&self, read_all: impl FnOnce(&PeerTable) -> R) -> R {
        read_all(&read(&self.peers))
    }

    /// The current round's schedule, once a round has started.
    pub fn schedule(&self) -> Option<ProbeSchedule> {
        read(&self.schedule).clone()
    }

    pub fn set_schedule(&self, schedule: ProbeSchedule) {
        *write(&self.schedule) = Some(schedule);
    }

    pub fn targets(&self) -> Vec<TargetReport> {
        read(&self.targets).clone()
    }

    pub fn set_targets(&self, reports: Vec<TargetReport>) {
        *write(&self.targets) = reports;
    }
}

/// `name` is free (its holder left or took another): the first of its other claimants (by
/// address) holds it now.
fn hand_over(peers: &mut PeerTable, name: &str) {
    if peers
        .values()
        .any(|p| p.name == name && p.name_conflict.is_none())
    {
        return;
    }
    if let Some((key, status)) = peers
        .iter_mut()
        .find(|(_, p)| p.name == name && p.name_conflict.is_some())
    {
        status.name_conflict = None;
        tracing::info!(
            peer = %status.name,
            address = %key,
            instance_id = status.hello.as_ref().map(|h| h.instance_id),
            "peer now holds its node name: the peer that held it left or took another name"
        );
    }
    // The others still name a holder that is gone: point them at the new one.
    let holder = peers
        .iter()
        .find(|(_, p)| p.name == name && p.name_conflict.is_none())
        .map(|(k, p)| (k.clone(), p.hello.as_ref().map(|h| h.instance_id)));
    if let Some((held_by, held_by_instance_id)) = holder {
        for status in peers.values_mut().filter(|p| p.name == name) {
            if let Some(conflict) = status.name_conflict.as_mut() {
                conflict.held_by.clone_from(&held_by);
                conflict.held_by_instance_id = held_by_instance_id;
            }
        }
    }
}

/// A poisoned lock only means a writer panicked mid-update of a plain value; the data is
/// still a whole value, so keep serving it.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
