//! The agent's Prometheus metrics: every family is registered in [`Metrics::new`]. What is
//! known of peers is read from the agent's state at each scrape (see [`peers`]: the
//! per-peer series ¹ and the aggregates over peers), so a metric says exactly what the API
//! and the status page say; the rest is set from the shared snapshot types
//! (`TargetReport`, `FabricStatus`) or counted as events happen (probes, ping pairs).
//!
//! | family (as encoded) | type | labels |
//! |---|---|---|
//! | `efa_peer_reachable` ¹ | gauge 0/1 | `peer` (absent while the fabric path is not probed) |
//! | `efa_peer_ip_reachable` ¹ | gauge 0/1 | `peer` |
//! | `efa_peer_state` ¹ | gauge, one-hot over the six states | `peer`, `state` |
//! | `efa_peer_diagnosis` ¹ | gauge 1 | `peer`, `reason` (while not healthy and a reason is known) |
//! | `efa_peer_rtt_seconds` ¹ | gauge | `peer`, `path` (`ip`, `fabric`; while known) |
//! | `efa_peer_fabric_loss_ratio` ¹ | gauge | `peer` (while the fabric path is probed) |
//! | `efa_probes_total` | counter | `path`, `group` (bounded, see [`groups`]), `result` ([`ProbeResult`]) |
//! | `efa_probe_rtt_seconds` | histogram, 10µs to 1s | `path`, `group` |
//! | `efa_target_up` | gauge 0/1 | `target`, `address` |
//! | `efa_target_failures_total` | counter | `target`, `address`, `reason` |
//! | `efa_target_rtt_seconds` | gauge (TCP connect) | `target`, `address` |
//! | `efa_target_nats_jetstream` | gauge 0/1 | `target`, `address` (NATS checks) |
//! | `efa_fabric_available` | gauge 0/1 | `provider` |
//! | `efa_fabric_device_info` | gauge 1 | `provider`, `domain`, `address` |
//! | `efa_fabric_rails` | gauge | (rails open on this node; see [`rails`]) |
//! | `efa_rail_info` | gauge 1 | `rail`, `domain`, `mac` (`""` when unknown) |
//! | `efa_rail_probes_total` | counter | `rail` (below [`MAX_RAIL_LABELS`]), `result` ([`ProbeResult`], the fabric's) |
//! | `efa_peer_rails` ¹ | gauge | `peer` (rails paired with the peer; absent until the pairing is known) |
//! | `efa_peer_rails_reachable` ¹ | gauge | `peer` (of those, answering; absent until one was probed) |
//! | `efa_peer_rail_unreachable` ¹ | gauge 1 | `peer`, `rail` (only while that rail to that peer is dropped) |
//! | `efa_node_rail_unreachable_peers` | gauge | `rail` (probed peers that rail is dropped to; every open rail, 0 included) |
//! | `efa_device_hw_stat_total` | counter (values read from sysfs) | `device`, `port`, `counter` |
//! | `efa_node_topology_info` | gauge 1 | `instance_id`, `instance_type`, `availability_zone`, `subnet`, `vpc`, `placement_group` (primary interface; `placement_group=""` when in none; absent while unknown) |
//! | `efa_node_topology_available` | gauge 0/1 | |
//! | `efa_build_info` | gauge 1 | `version`, `provider` |
//! | `efa_agent_ready` | gauge 0/1 | |
//! | `efa_peers` | gauge | |
//! | `efa_node_unreachable_peers` | gauge | (peers in `down`, `fabric_dropped`, `ip_blocked`) |
//! | `efa_peers_by_state` | gauge | `state` (every state, 0 included) |
//! | `efa_peer_name_conflicts_total` | counter | (peers found saying a node name another peer held) |
//! | `efa_per_peer_metrics_mode` | gauge, one-hot | `mode` (`all`, `unhealthy`, `none`) |
//! | `efa_peers_probed` | gauge | (peers the current round probes: the schedule's picks, set as it starts) |
//! | `efa_probe_schedule_peers` | gauge | `role` (`watch`, `mesh`, `sample`, `learn`) |
//! | `efa_probe_budget_peers` | gauge | (peers a round may probe: budget × interval) |
//! | `efa_fabric_rtt_pairs_total` | counter | `result` (`measured`; `unsettled`: a side let a message wait unread, no RTT taken) |
//! | `efa_node_action_errors_total` | counter | `action`, `reason` (see [`node_actions`]; only for actions that are on) |
//! | `efa_verify_requests_total` | counter | `result` (`answered`, `rate_limited`, `busy`, `bad_request`, `unavailable`; see [`verify`]) |
//!
//! ¹ Per-peer: which peers have these series is the per-peer mode's choice
//! ([`PerPeerMetrics`], `--per-peer-metrics`): every peer, only peers in a fault state, or
//! none. The mode is a filter applied at each scrape: a peer that turns healthy in
//! `unhealthy` has no series in the next scrape, and a change of mode (`auto` crossing
//! [`AUTO_ALL_MAX_PEERS`]) changes which peers are encoded, with nothing left behind.
//!
//! Series that describe something gone are removed, not left at their last value: a
//! departed peer loses every series it had, a target address that no longer resolves
//! loses its gauges. Counters stay while their target is configured, so `increase()` still
//! sees a failure from a round whose address has since changed.
//!
//! A target whose name does not resolve is reported under `address="HOST:PORT"` (the name
//! as configured), with `efa_target_up` 0 and a `dns` failure: an alert on
//! `efa_target_up == 0` fires for it like for any failing address.
//!
//! Off AWS (or before instance metadata was read) there is no topology: no
//! `efa_node_topology_info` series, and `efa_node_topology_available` 0 says so. The
//! hardware counters are the devices' own (see [`hw_counters`] for why a collector sets
//! counters); a device that vanishes loses its series.
//!
//! Counters are created at 0 for every label value they can take (the results a probe on
//! each path can have, the reasons each target address's check can fail with) so the first
//! failure is an increase Prometheus can see, not the appearance of a new series.

mod exposition;
mod fabric_counters;
mod groups;
mod hw_counters;
mod labels;
pub mod node_actions;
mod peers;
mod per_peer;
mod rails;
mod targets;
pub mod verify;

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use strum::VariantArray;

use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

use exposition::openmetrics_to_prometheus_text;
pub use exposition::ExpositionFormat;
pub use groups::{MAX_PROBE_GROUPS, OTHER_GROUP, UNKNOWN_GROUP};
pub use labels::{ProbePath, ProbeResult};
pub use per_peer::{PerPeerMetrics, PerPeerMode, AUTO_ALL_MAX_PEERS};
pub use rails::MAX_RAIL_LABELS;

use crate::inventory::DeviceCounters;
use crate::probe::{FailureReason, TargetCheck, TargetReport};
use crate::state::{AgentState, FabricStatus};
use crate::topology::Topology;
use groups::ProbeGroups;
use hw_counters::HwCounters;
use labels::*;
use peers::PeerCollector;

/// Upper bounds of `efa_probe_rtt_seconds`: 1-2.5-5 steps from 10µs (a fabric round trip
/// on one host) to 1s (well past any probe deadline worth having).
const PROBE_RTT_BUCKETS: [f64; 16] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
    0.25, 0.5, 1.0,
];

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The agent's metric families and the registry that encodes them. Shared as
/// `Arc<Metrics>`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Family names as they appear in `# TYPE` lines, in registration order.
    family_names: Vec<String>,

    /// The per-peer series and the aggregates over peers, read from the state.
    peers: PeerCollector,
    probes: Family<ProbeLabels, Counter>,
    probe_rtt: HistogramFamily<PathGroupLabels>,

    target_up: Family<TargetAddressLabels, Gauge>,
    target_failures: Family<TargetFailureLabels, Counter>,
    target_rtt: Family<TargetAddressLabels, FloatGauge>,
    target_nats_jetstream: Family<TargetAddressLabels, Gauge>,

    fabric_available: Family<ProviderLabels, Gauge>,
    fabric_device_info: Family<DeviceLabels, Gauge>,
    rails: rails::RailSeries,
    device_hw_counters: HwCounters,
    fabric_counters: fabric_counters::FabricCounters,
    node_topology_info: Family<TopologyLabels, Gauge>,
    node_topology_available: Gauge,
    agent_ready: Gauge,
    rtt_pairs: Family<PairResultLabels, Counter>,
    node_action_errors: node_actions::NodeActionErrors,
    verify_requests: verify::VerifyRequests,

    /// The probe groups seen so far; its own lock, so probes never wait for an encode.
    probe_groups: Mutex<ProbeGroups>,
    /// Held by every setter that changes several series, for its whole update, and by
    /// [`Metrics::encode`]: a scrape never sees half an update (a target with some of its
    /// series gone).
    series: Mutex<SeriesBook>,
}

/// Which label sets exist now, where a family cannot tell (prometheus-client has no way to
/// list a family's label sets), so departed ones can be removed.
#[derive(Debug, Default)]
struct SeriesBook {
    target_up: HashSet<TargetAddressLabels>,
    target_rtt: HashSet<TargetAddressLabels>,
    target_nats_jetstream: HashSet<TargetAddressLabels>,
    target_failures: HashSet<TargetFailureLabels>,
    fabric_available: HashSet<ProviderLabels>,
    fabric_devices: HashSet<DeviceLabels>,
    rail_info: HashSet<rails::RailInfoLabels>,
    node_topology: Option<TopologyLabels>,
}

impl Metrics {
    /// Registers every family; sets build info, the fabric status and zeroed counters. The
    /// per-peer series and the aggregates over peers are read from `state` at each encode.
    /// The per-peer mode is `auto` until [`Metrics::set_per_peer_mode`].
    pub fn new(version: &str, state: Arc<AgentState>) -> Metrics {
        let fabric = &state.fabric();
        let mut registry = Registry::default();
        let mut family_names = Vec::new();
        let mut register = Register {
            registry: &mut registry,
            names: &mut family_names,
        };

        let probes = register.add(
            "efa_probes",
            "Peer probes by path, the peer's topology group (at most 32, then other) and result",
            None,
            Family::default(),
        );
        let probe_rtt: HistogramFamily<PathGroupLabels> = register.add(
            "efa_probe_rtt",
            "Round-trip time of answered peer probes, by path and the peer's topology group",
            Some(Unit::Seconds),
            Family::new_with_constructor(|| Histogram::new(PROBE_RTT_BUCKETS)),
        );
        let target_up = register.add(
            "efa_target_up",
            "1 when the target address passes its check, 0 when it fails; address is \
             HOST:PORT when the name did not resolve",
            None,
            Family::default(),
        );
        let target_failures = register.add(
            "efa_target_failures",
            "Failed target checks by reason; address is HOST:PORT for dns failures",
            None,
            Family::default(),
        );
        let target_rtt = register.add(
            "efa_target_rtt",
            "TCP connect time of the target address's last passed check",
            Some(Unit::Seconds),
            Family::default(),
        );
        let target_nats_jetstream = register.add(
            "efa_target_nats_jetstream",
            "1 when the NATS server at the address runs JetStream, 0 when it does not",
            None,
            Family::default(),
        );
        let fabric_available = register.add(
            "efa_fabric_available",
            "1 when at least one fabric endpoint of the configured provider is open",
            None,
            Family::default(),
        );
        let fabric_device_info = register.add(
            "efa_fabric_device_info",
            "One series per open fabric endpoint, naming its provider, domain and address; \
             value always 1",
            None,
            Family::default(),
        );
        let rails = rails::RailSeries::register(&mut register);
        let node_topology_info = register.add(
            "efa_node_topology_info",
            "Where this node sits in EC2 (from instance metadata; subnet and vpc of the \
             primary interface, placement_group empty when in none); value always 1, absent \
             while unknown",
            None,
            Family::default(),
        );
        let node_topology_available: Gauge = register.add(
            "efa_node_topology_available",
            "1 when this node's EC2 topology was read from instance metadata, 0 when it was \
             not (off AWS, or instance metadata unreachable)",
            None,
            Gauge::default(),
        );
        // Set once here; the registry keeps it.
        let build_info: Family<BuildLabels, Gauge> = register.add(
            "efa_build_info",
            "Agent version and configured fabric provider; value always 1",
            None,
            Family::default(),
        );
        let agent_ready: Gauge = register.add(
            "efa_agent_ready",
            "1 once the agent's first full probe round has finished",
            None,
            Gauge::default(),
        );
        let rtt_pairs: Family<PairResultLabels, Counter> = register.add(
            "efa_fabric_rtt_pairs",
            "Fabric ping pairs sent to measure RTT, by result: measured, or unsettled (the \
             responder or this node let a message wait unread, asleep or not scheduled: a \
             busy or CPU-throttled node; no RTT taken)",
            None,
            Family::default(),
        );
        for result in ["measured", "unsettled"] {
            let _ = rtt_pairs.get_or_create(&PairResultLabels { result });
        }
        let node_action_errors = node_actions::NodeActionErrors::register(&mut register);
        let verify_requests = verify::VerifyRequests::register(&mut register);

        // Collectors: encoded after every registered family, so registered last.
        let peers = PeerCollector::new(state);
        register.add_collector(&peers::NAMES, peers.clone());
        let device_hw_counters = HwCounters::default();
        register.add_collector(&[hw_counters::NAME], device_hw_counters.clone());
        let fabric_counters = fabric_counters::FabricCounters::default();
        register
            .registry
            .register_collector(Box::new(fabric_counters.clone()));

        build_info
            .get_or_create(&BuildLabels {
                version: version.into(),
                provider: fabric.provider.as_str().into(),
            })
            .set(1);
        let metrics = Metrics {
            registry,
            family_names,
            peers,
            probes,
            probe_rtt,
            target_up,
            target_failures,
            target_rtt,
            target_nats_jetstream,
            fabric_available,
            fabric_device_info,
            rails,
            device_hw_counters,
            fabric_counters,
            node_topology_info,
            node_topology_available,
            agent_ready,
            rtt_pairs,
            node_action_errors,
            verify_requests,
            probe_groups: Mutex::default(),
            series: Mutex::default(),
        };
        metrics.set_fabric(fabric);
        // Zeroed, so the first probe without a group is an increase.
        metrics.probe_group(UNKNOWN_GROUP, std::time::Instant::now());
        metrics
    }

    /// The OpenMetrics text exposition, `# EOF` included.
    pub fn encode(&self) -> String {
        let _book = self.book();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail, and every label value encodes");
        text
    }

    /// The exposition in `format` (see [`ExpositionFormat`] for why there are two).
    pub fn encode_as(&self, format: ExpositionFormat) -> String {
        match format {
            ExpositionFormat::OpenMetrics => self.encode(),
            ExpositionFormat::PrometheusText => openmetrics_to_prometheus_text(&self.encode()),
        }
    }

    /// Family names as they appear in the `# TYPE` lines of [`Metrics::encode`].
    pub fn family_names(&self) -> &[String] {
        &self.family_names
    }

    /// Which peers get per-peer series (`--per-peer-metrics`): applied at the next encode.
    pub fn set_per_peer_mode(&self, setting: PerPeerMetrics) {
        self.peers.set_per_peer(setting);
    }

    /// The per-peer mode in force (`auto` resolved against the state's peers).
    pub fn per_peer_mode(&self) -> PerPeerMode {
        self.peers.mode()
    }

    /// Counts one peer probe under the peer's topology group (`pg:NAME`, `subnet:ID`,
    /// `unknown`: the caller's words). At most [`MAX_PROBE_GROUPS`] groups hold a name at
    /// once; probes of any later group are counted under `other`. A name idle for
    /// [`groups::GROUP_IDLE_RELEASE`] is given up (its series removed) when a new group comes.
    pub fn record_probe_in_group(
        &self,
        path: ProbePath,
        group: &str,
        result: ProbeResult,
        rtt: Option<Duration>,
    ) {
        self.record_probe_in_group_at(path, group, result, rtt, std::time::Instant::now());
    }

    /// [`Metrics::record_probe_in_group`] at `now` (tests give their own clock).
    fn record_probe_in_group_at(
        &self,
        path: ProbePath,
        group: &str,
        result: ProbeResult,
        rtt: Option<Duration>,
        now: std::time::Instant,
    ) {
        let group = self.probe_group(group, now);
        if let Some(rtt) = rtt {
            self.probe_rtt
                .get_or_create(&PathGroupLabels {
                    path,
                    group: group.clone(),
                })
                .observe(rtt.as_secs_f64());
        }
        self.probes
            .get_or_create(&ProbeLabels {
                path,
                group,
                result,
            })
            .inc();
    }

    /// Sets the fabric series; devices (and a provider) no longer open lose theirs.
    pub fn set_fabric(&self, fabric: &FabricStatus) {
        let mut book = self.book();
        let provider = ProviderLabels {
            provider: fabric.provider.as_str().into(),
        };
        self.fabric_available
            .get_or_create(&provider)
            .set(i64::from(fabric.available));
        let devices: HashSet<DeviceLabels> = fabric
            .devices
            .iter()
            .map(|device| DeviceLabels {
                provider: device.provider.as_str().into(),
                domain: device.domain.as_str().into(),
                address: device.address.as_str().into(),
            })
            .collect();
        for device in &devices {
            self.fabric_device_info.get_or_create(device).set(1);
        }
        remove_departed(
            &self.fabric_available,
            &mut book.fabric_available,
            HashSet::from([provider]),
        );
        remove_departed(&self.fabric_device_info, &mut book.fabric_devices, devices);
        let open_rails = self.rails.set(fabric, &mut book.rail_info);
        self.peers.set_open_rails(open_rails);
    }

    /// Counts one fabric probe of this node's rail `rail` (to the same rail of a peer) in
    /// `efa_rail_probes_total`. Rails at or above [`MAX_RAIL_LABELS`] are not counted.
    pub fn record_rail_probe(&self, rail: u16, result: ProbeResult) {
        self.rails.record_probe(rail, result);
    }

    /// Sets the node's topology series from the primary interface, or removes them and says
    /// so (`efa_node_topology_available` 0) when there is no topology.
    pub fn set_topology(&self, topology: Option<&Topology>) {
        let mut book = self.book();
        let labels = topology.map(|topology| {
            let primary = topology.primary();
            let text = |value: Option<&str>| LabelText::from(value.unwrap_or(""));
            TopologyLabels {
                instance_id: topology.instance_id.as_str().into(),
                instance_type: topology.instance_type.as_str().into(),
                availability_zone: topology.availability_zone.as_str().into(),
                subnet: text(primary.map(|i| i.subnet_id.as_str())),
                vpc: text(primary.map(|i| i.vpc_id.as_str())),
                placement_group: text(topology.placement_group.as_deref()),
            }
        });
        if let Some(old) = book.node_topology.take() {
            if labels.as_ref() != Some(&old) {
                self.node_topology_info.remove(&old);
            }
        }
        if let Some(labels) = &labels {
            self.node_topology_info.get_or_create(labels).set(1);
        }
        self.node_topology_available
            .set(i64::from(labels.is_some()));
        book.node_topology = labels;
    }

    /// Replaces the hardware counter series with these devices' (from
    /// [`crate::inventory::read_hw_counters`]); devices and counters not in it lose theirs.
    pub fn set_device_counters(&self, devices: &[DeviceCounters]) {
        let _book = self.book();
        self.device_hw_counters.replace(devices);
    }

    /// Exports these fabric engines' own counters, read at each scrape (see
    /// [`fabric_counters`]).
    pub fn set_fabric_engines(&self, engines: &[crate::fabric_ping::FabricPinger]) {
        self.fabric_counters.follow(engines);
    }

    pub fn set_ready(&self, ready: bool) {
        self.agent_ready.set(i64::from(ready));
    }

    /// Failed writes of the node actions (`efa_node_action_errors_total`).
    pub fn node_action_errors(&self) -> &node_actions::NodeActionErrors {
        &self.node_action_errors
    }

    /// Verifies asked of this agent (`efa_verify_requests_total`).
    pub fn verify_requests(&self) -> &verify::VerifyRequests {
        &self.verify_requests
    }

    /// A fabric ping pair's end: `measured` (its RTT taken) or not (unsettled).
    pub fn record_rtt_pair(&self, measured: bool) {
        let result = if measured { "measured" } else { "unsettled" };
        self.rtt_pairs
            .get_or_create(&PairResultLabels { result })
            .inc();
    }

    /// The label value probes of `group` are counted under; a group seen for the first
    /// time gets its series created at zero, so its first failure is an increase.
    fn probe_group(&self, group: &str, now: std::time::Instant) -> LabelText {
        let mut groups = self.probe_groups.lock().unwrap_or_else(|p| p.into_inner());
        let groups::Admitted {
            label,
            new,
            released,
        } = groups.admit(group, now);
        for gone in released {
            for path in ProbePath::VARIANTS.iter().copied() {
                for &result in ProbeResult::possible_on(path) {
                    self.probes.remove(&ProbeLabels {
                        path,
                        group: gone.clone(),
                        result,
                    });
                }
                self.probe_rtt.remove(&PathGroupLabels {
                    path,
                    group: gone.clone(),
                });
            }
        }
        if new {
            for path in ProbePath::VARIANTS.iter().copied() {
                for &result in ProbeResult::possible_on(path) {
                    create_series(
                        &self.probes,
                        &ProbeLabels {
                            path,
                            group: label.clone(),
                            result,
                        },
                    );
                }
                create_series(
                    &self.probe_rtt,
                    &PathGroupLabels {
                        path,
                        group: label.clone(),
                    },
                );
            }
        }
        label
    }

    /// The bookkeeping lock. A panic elsewhere while holding it leaves whole values behind
    /// (each series is set atomically), so a poisoned lock is still good to use.
    fn book(&self) -> MutexGuard<'_, SeriesBook> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Registers families and remembers their encoded names.
struct Register<'a> {
    registry: &'a mut Registry,
    names: &'a mut Vec<String>,
}

impl Register<'_> {
    /// Registers `metric` and returns it (families share their series with the registry's
    /// clone). The encoded name is `name_<unit>`, as prometheus-client appends the unit.
    fn add<M: Metric + Clone>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        metric: M,
    ) -> M {
        let encoded = match &unit {
            Some(unit) => format!("{name}_{}", unit.as_str()),
            None => name.to_owned(),
        };
        match unit {
            Some(unit) => self
                .registry
                .register_with_unit(name, help, unit, metric.clone()),
            None => self.registry.register(name, help, metric.clone()),
        }
        self.names.push(encoded);
        metric
    }

    /// Registers a collector that encodes these families, named so in `# TYPE`.
    fn add_collector(&mut self, names: &[&str], collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
        self.names.extend(names.iter().map(|n| n.to_string()));
    }
}

/// Creates the series at its initial value (0, an empty histogram) if it is not there.
fn create_series<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    drop(family.get_or_create(labels));
}

/// Removes from `family` the label sets in `known` but not in `now`; `now` becomes `known`.
fn remove_departed<S, M, C>(family: &Family<S, M, C>, known: &mut HashSet<S>, now: HashSet<S>)
where
    S: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    for departed in known.difference(&now) {
        family.remove(departed);
    }
    *known = now;
}

#[cfg(test)]
mod tests;
