//! The per-peer series and the per-node aggregates derived from them, encoded from the
//! agent's state ([`AgentState`]) at each scrape.
//!
//! The state is the one table of what is known of each peer; `/v1/peers` and the status page
//! read it too. Encoding from it, rather than from a copy the monitor keeps in step, means
//! `/metrics` cannot disagree with them: a peer that leaves the state leaves the exposition in
//! the same instant, a renamed peer is only ever under its current name, and a change of
//! per-peer mode (`auto` crossing [`super::AUTO_ALL_MAX_PEERS`]) is a filter applied at encode
//! time, with nothing to add or remove.
//!
//! Rails: `efa_peer_rails` and `efa_peer_rails_reachable` say how many rails are paired with
//! a peer and how many of those answer; `efa_peer_rail_unreachable{peer,rail}` is there only
//! while that rail to that peer is dropped (sparse, like `efa_peer_diagnosis`). All three are
//! per-peer series and follow the mode. `efa_node_rail_unreachable_peers{rail}` counts, per
//! rail of this node, the probed peers that rail is dropped to, in every mode (bounded by the
//! node's rails), so a node in mode `none` still says which rail fails.
//!
//! Only peers this node probes now ([`PeerStatus::probed`]) have per-peer series and count in
//! `efa_peers_by_state`; every known peer counts in `efa_peers`.
//!
//! The state is keyed by agent address, the series by node name. A peer that claims a name
//! another peer holds ([`crate::state::PeerStatus::name_conflict`]) has no per-peer series, so
//! those under `peer=NAME` stay the holder's and do not flip between the two; it still counts
//! once, by its own verdict, in the aggregates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use strum::VariantArray;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::labels::{
    DiagnosisLabel, ModeLabels, PeerName, ProbePath, RoleLabels, StateLabel, StateLabels,
};
use super::per_peer::{PeerSeries, PerPeerMetrics, PerPeerMode};
use super::rails::MAX_RAIL_LABELS;
use crate::state::{AgentState, PeerTable, ProbeSchedule};
use crate::verdict::{DiagnosisReason, PeerState};

/// The families this collector encodes, as named in `# TYPE`.
pub(super) const NAMES: [&str; 18] = [
    "efa_peer_reachable",
    "efa_peer_ip_reachable",
    "efa_peer_state",
    "efa_peer_diagnosis",
    "efa_peer_rtt_seconds",
    "efa_peer_fabric_loss_ratio",
    "efa_peer_rails",
    "efa_peer_rails_reachable",
    "efa_peer_rail_unreachable",
    "efa_peers",
    "efa_node_unreachable_peers",
    "efa_node_rail_unreachable_peers",
    "efa_peers_by_state",
    "efa_per_peer_metrics_mode",
    "efa_peers_probed",
    "efa_probe_schedule_peers",
    "efa_probe_budget_peers",
    "efa_peer_name_conflicts",
];

/// Reads the state at each scrape; shared with the registry (which calls it).
#[derive(Debug, Clone)]
pub(super) struct PeerCollector {
    state: Arc<AgentState>,
    setting: Arc<Mutex<Setting>>,
}

#[derive(Debug)]
struct Setting {
    per_peer: PerPeerMetrics,
    /// The mode last encoded, to log a change once.
    last_mode: Option<PerPeerMode>,
    /// This node's open rails (from the fabric status `Metrics::set_fabric` was given), each
    /// counted in `efa_node_rail_unreachable_peers` from 0.
    open_rails: Vec<u16>,
}

impl PeerCollector {
    pub(super) fn new(state: Arc<AgentState>) -> PeerCollector {
        PeerCollector {
            state,
            setting: Arc::new(Mutex::new(Setting {
                per_peer: PerPeerMetrics::default(),
                last_mode: None,
                open_rails: Vec::new(),
            })),
        }
    }

    pub(super) fn set_per_peer(&self, per_peer: PerPeerMetrics) {
        self.lock().per_peer = per_peer;
    }

    pub(super) fn set_open_rails(&self, rails: Vec<u16>) {
        self.lock().open_rails = rails;
    }

    /// The mode in force for the state's peers now.
    pub(super) fn mode(&self) -> PerPeerMode {
        let peers = self.state.read_peers(|peers| peers.len());
        self.lock().per_peer.resolve(peers)
    }

    /// The mode for `peers` known peers, logged when it differs from the last scrape's.
    fn mode_for(&self, peers: usize) -> PerPeerMode {
        let mut setting = self.lock();
        let mode = setting.per_peer.resolve(peers);
        if setting.last_mode != Some(mode) {
            tracing::info!(
                setting = %setting.per_peer,
                peers,
                mode = mode.as_str(),
                "per-peer metrics mode"
            );
            setting.last_mode = Some(mode);
        }
        mode
    }

    /// A panic while holding the lock leaves a whole value behind.
    fn lock(&self) -> std::sync::MutexGuard<'_, Setting> {
        self.setting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for PeerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let schedule = self.state.schedule();
        let open_rails = self.lock().open_rails.clone();
        self.state.read_peers(|peers| {
            let mode = self.mode_for(peers.len());
            let (mut by_state, exported) = read_probed(peers, mode);
            by_state.add_open_rails(&open_rails);
            let exported: Vec<(&str, &PeerSeries)> = exported
                .iter()
                .map(|(name, series)| (*name, series))
                .collect();
            encode_per_peer(&mut encoder, &exported)?;
            encode_aggregates(
                &mut encoder,
                peers.len(),
                &by_state,
                mode,
                schedule.as_ref(),
            )
        })?;
        let conflicts = encoder.encode_descriptor(
            "efa_peer_name_conflicts",
            "Peers found claiming a node name another peer held (a misconfigured or hostile \
             agent); the claimant keeps its own verdict in /v1/peers (name_conflict) and has \
             no per-peer series.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.state.name_conflicts()).encode(conflicts)
    }
}

/// The probed peers counted by state, and what the series of those `mode` exports show, by
/// name: the name's holder's. One pass, and work only for what is encoded: in `none` a scrape
/// costs a count. A peer that claims a name another holds (`name_conflict`) has no series of
/// its own, and is counted; should two still share a name (both named by discovery, before
/// either hello), the first by address has the series.
fn read_probed(peers: &PeerTable, mode: PerPeerMode) -> (ByState, Vec<(&str, PeerSeries)>) {
    let mut by_state = ByState::default();
    let mut exported = Vec::new();
    for status in peers.values().filter(|p| p.probed) {
        by_state.states[state_index(status.state)] += 1;
        for rail in status
            .rails
            .iter()
            .filter(|r| r.path.reachable == Some(false))
        {
            if rail.rail < MAX_RAIL_LABELS {
                *by_state.dropped_by_rail.entry(rail.rail).or_default() += 1;
            }
        }
        if status.name_conflict.is_none() && mode.exports(status.state) {
            exported.push((status.name.as_str(), PeerSeries::of(status)));
        }
    }
    // Stable: of equal names, the first by address stays first.
    exported.sort_by(|a, b| a.0.cmp(b.0));
    exported.dedup_by(|later, first| later.0 == first.0);
    (by_state, exported)
}

/// Probed peers per state, in the order of `PeerState::VARIANTS`, and per rail of this
/// node the probed peers it is dropped to.
#[derive(Debug, Default)]
struct ByState {
    states: [usize; PeerState::VARIANTS.len()],
    dropped_by_rail: BTreeMap<u16, usize>,
}

impl ByState {
    fn count(&self, state: PeerState) -> usize {
        self.states[state_index(state)]
    }

    /// This node's open rails count from 0, so a rail's first dropped peer is a change of
    /// value, not a new series.
    fn add_open_rails(&mut self, rails: &[u16]) {
        for &rail in rails.iter().filter(|r| **r < MAX_RAIL_LABELS) {
            self.dropped_by_rail.entry(rail).or_default();
        }
    }
}

fn state_index(state: PeerState) -> usize {
    PeerState::VARIANTS
        .iter()
        .position(|s| *s == state)
        .expect("VARIANTS lists every state")
}

fn encode_per_peer(
    encoder: &mut DescriptorEncoder,
    peers: &[(&str, &PeerSeries)],
) -> Result<(), std::fmt::Error> {
    gauge_family(
        encoder,
        "efa_peer_reachable",
        "1 when the fabric (OS-bypass) path to the peer answers, 0 when it does not; \
         absent while that path is not probed",
        None,
        by_name(peers, |s| s.fabric_reachable.map(i64::from)),
    )?;
    gauge_family(
        encoder,
        "efa_peer_ip_reachable",
        "1 when the peer's agent answers over IP (HTTP hello), 0 when it does not",
        None,
        by_name(peers, |s| s.ip_reachable.map(i64::from)),
    )?;
    gauge_family(
        encoder,
        "efa_peer_state",
        "Verdict per peer, one-hot: 1 for the current state of healthy, fabric_dropped, \
         ip_blocked, down, degraded, unknown",
        None,
        peers.iter().flat_map(|(name, series)| {
            PeerState::VARIANTS.iter().copied().map(move |state| {
                (
                    (PeerName(name), StateLabels::of(state)),
                    i64::from(state == series.state),
                )
            })
        }),
    )?;
    gauge_family(
        encoder,
        "efa_peer_diagnosis",
        "1 for the likely cause while a peer is not healthy; absent while healthy or \
         while the cause is not known",
        None,
        peers.iter().filter_map(|(name, series)| {
            let reason: DiagnosisReason = series.diagnosis?;
            Some(((PeerName(name), [("reason", DiagnosisLabel(reason))]), 1i64))
        }),
    )?;
    gauge_family(
        encoder,
        "efa_peer_rtt",
        "Round-trip time of the peer's last answered probe, per path",
        Some(&Unit::Seconds),
        peers.iter().flat_map(|(name, series)| {
            ProbePath::VARIANTS.iter().copied().filter_map(move |path| {
                let rtt = match path {
                    ProbePath::Ip => series.ip_rtt,
                    ProbePath::Fabric => series.fabric_rtt,
                }?;
                Some(((PeerName(name), [("path", path)]), rtt))
            })
        }),
    )?;
    gauge_family(
        encoder,
        "efa_peer_fabric_loss",
        "Share of the peer's fabric probes lost over the recent window",
        Some(&Unit::Other("ratio".into())),
        by_name(peers, |s| s.fabric_loss),
    )?;
    encode_per_peer_rails(encoder, peers)
}

fn encode_per_peer_rails(
    encoder: &mut DescriptorEncoder,
    peers: &[(&str, &PeerSeries)],
) -> Result<(), std::fmt::Error> {
    gauge_family(
        encoder,
        "efa_peer_rails",
        "Rails paired with the peer: rail i of this node with rail i of the peer, for i \
         below both nodes' rail counts; absent until the peer's rails are known",
        None,
        by_name(peers, |s| s.rails.map(i64::from)),
    )?;
    gauge_family(
        encoder,
        "efa_peer_rails_reachable",
        "Of the rails paired with the peer, those whose last probe answered; absent until \
         one was probed",
        None,
        by_name(peers, |s| s.rails_reachable.map(i64::from)),
    )?;
    gauge_family(
        encoder,
        "efa_peer_rail_unreachable",
        "1 while that rail to the peer is dropped (its probes fail); absent otherwise",
        None,
        peers.iter().flat_map(|(name, series)| {
            series
                .dropped_rails
                .iter()
                .map(move |&rail| ((PeerName(name), [("rail", rail)]), 1i64))
        }),
    )
}

/// One series per peer whose `value` is known.
fn by_name<'a, V: 'a>(
    peers: &'a [(&'a str, &'a PeerSeries)],
    value: fn(&PeerSeries) -> Option<V>,
) -> impl Iterator<Item = (PeerName<'a>, V)> + 'a {
    peers
        .iter()
        .filter_map(move |(name, series)| Some((PeerName(name), value(series)?)))
}

fn encode_aggregates(
    encoder: &mut DescriptorEncoder,
    known: usize,
    by_state: &ByState,
    mode: PerPeerMode,
    schedule: Option<&ProbeSchedule>,
) -> Result<(), std::fmt::Error> {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    gauge(
        encoder,
        "efa_peers",
        "Peers this agent knows, configured or discovered",
        count(known),
    )?;
    let in_state = |state: PeerState| by_state.count(state);
    let unreachable = PeerState::VARIANTS
        .iter()
        .copied()
        .filter(|s| s.is_unreachable())
        .map(in_state)
        .sum();
    gauge(
        encoder,
        "efa_node_unreachable_peers",
        "Peers this node cannot reach on some path (down, fabric_dropped, ip_blocked); \
         compared with other nodes by the EFANodeIsolated rule",
        count(unreachable),
    )?;
    gauge_family(
        encoder,
        "efa_node_rail_unreachable_peers",
        "Per rail of this node, the probed peers that rail is dropped to, in every per-peer \
         mode; every open rail, 0 included",
        None,
        by_state
            .dropped_by_rail
            .iter()
            .map(|(&rail, &n)| ([("rail", rail)], count(n))),
    )?;
    gauge_family(
        encoder,
        "efa_peers_by_state",
        "Peers this agent has a verdict for, by state; every state, 0 included, in every \
         per-peer mode",
        None,
        PeerState::VARIANTS
            .iter()
            .copied()
            .map(|state| (StateLabels::of(state), count(in_state(state)))),
    )?;
    gauge_family(
        encoder,
        "efa_per_peer_metrics_mode",
        "Which peers have per-peer series, one-hot: all, unhealthy (degraded, ip_blocked, \
         fabric_dropped, down) or none (--per-peer-metrics; auto shows as what it \
         resolves to)",
        None,
        PerPeerMode::VARIANTS
            .iter()
            .copied()
            .map(|m| (ModeLabels { mode: m }, i64::from(m == mode))),
    )?;
    let by_role = schedule.map_or(&[][..], |s| s.by_role.as_slice());
    gauge(
        encoder,
        "efa_peers_probed",
        "Peers the current round probes (on large clusters, a sample of efa_peers)",
        count(by_role.iter().map(|(_, n)| n).sum()),
    )?;
    gauge_family(
        encoder,
        "efa_probe_schedule_peers",
        "Peers the current round probes, by why: watch (not healthy), mesh (same \
         topology group), sample (another group), learn (group not known yet)",
        None,
        by_role
            .iter()
            .map(|&(role, n)| (RoleLabels { role }, count(n))),
    )?;
    gauge(
        encoder,
        "efa_probe_budget_peers",
        "Peers a round may probe at most (--probe-budget times the interval)",
        count(schedule.map_or(0, |s| s.capacity)),
    )
}

/// One gauge without labels. `help` is given as the registry takes it (it adds the period).
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let help = format!("{help}.");
    ConstGauge::new(value).encode(encoder.encode_descriptor(
        name,
        &help,
        None,
        MetricType::Gauge,
    )?)
}

/// One gauge family; like the registry's families, none at all (no metadata lines either)
/// while it has no series.
fn gauge_family<L, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet,
    V: EncodeGaugeValue,
{
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let help = format!("{help}.");
    let mut family = encoder.encode_descriptor(name, &help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl StateLabels {
    fn of(state: PeerState) -> StateLabels {
        StateLabels {
            state: StateLabel(state),
        }
    }
}
