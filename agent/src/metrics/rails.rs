//! This node's rails: `efa_fabric_rails`, `efa_rail_info{rail,domain,mac}` (set from the
//! fabric status) and `efa_rail_probes_total{rail,result}` (counted as the monitor probes
//! each rail). What each peer's rails do is per-peer, read from the state (see [`super::peers`]).
//!
//! A rail is a device (one libfabric domain) in this node's rail order; its index is the
//! `rail` label. The label is bounded: a node has at most [`MAX_RAIL_LABELS`] rails (32 on the
//! largest instances; hellos carry at most 32 endpoints), and a rail index at or above it is
//! not counted (logged once), so a confused caller cannot grow the families without bound.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::labels::{LabelText, ProbePath, ProbeResult};
use super::{create_series, remove_departed, Register};
use crate::state::FabricStatus;

/// Rail indices below this have series; p5.48xlarge, the largest, has 32 devices.
pub const MAX_RAIL_LABELS: u16 = 64;

/// `efa_rail_info`: one rail of this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RailInfoLabels {
    pub rail: u16,
    pub domain: LabelText,
    /// Empty when the system does not say which interface the device sits on.
    pub mac: LabelText,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RailProbeLabels {
    rail: u16,
    result: ProbeResult,
}

/// The rail families, shared with the registry.
#[derive(Debug)]
pub(super) struct RailSeries {
    rails: Gauge,
    info: Family<RailInfoLabels, Gauge>,
    probes: Family<RailProbeLabels, Counter>,
    /// Whether an out-of-bounds rail was logged already.
    warned: AtomicBool,
}

impl RailSeries {
    pub(super) fn register(register: &mut Register<'_>) -> RailSeries {
        RailSeries {
            rails: register.add(
                "efa_fabric_rails",
                "Rails (fabric devices, one libfabric domain each) open on this node; 0 while \
                 the fabric is not available",
                None,
                Gauge::default(),
            ),
            info: register.add(
                "efa_rail_info",
                "One series per open rail: its index, device (libfabric domain) and the MAC of \
                 the network interface it sits on (empty when unknown); value always 1",
                None,
                Family::default(),
            ),
            probes: register.add(
                "efa_rail_probes",
                "Fabric probes by this node's rail and result (rail i is probed to the same \
                 rail of each peer)",
                None,
                Family::default(),
            ),
            warned: AtomicBool::new(false),
        }
    }

    /// Sets the rail count and info from `fabric`; rails no longer open lose their info
    /// series. Each open rail's probe counters are created at 0 (and stay, like a target's,
    /// once created: `increase()` still sees a rail's last failures after its device went).
    /// Returns the open rails' indices.
    pub(super) fn set(
        &self,
        fabric: &FabricStatus,
        known: &mut HashSet<RailInfoLabels>,
    ) -> Vec<u16> {
        let open: Vec<_> = fabric
            .devices
            .iter()
            .filter(|_| fabric.available)
            .filter(|device| self.admit(device.rail))
            .collect();
        self.rails
            .set(i64::try_from(open.len()).unwrap_or(i64::MAX));
        let now: HashSet<RailInfoLabels> = open
            .iter()
            .map(|device| RailInfoLabels {
                rail: device.rail,
                domain: device.domain.as_str().into(),
                mac: device.mac.as_deref().unwrap_or("").into(),
            })
            .collect();
        for rail in &now {
            self.info.get_or_create(rail).set(1);
            for &result in ProbeResult::possible_on(ProbePath::Fabric) {
                create_series(
                    &self.probes,
                    &RailProbeLabels {
                        rail: rail.rail,
                        result,
                    },
                );
            }
        }
        remove_departed(&self.info, known, now);
        open.iter().map(|device| device.rail).collect()
    }

    /// Counts one probe of `rail` (see [`super::Metrics::record_rail_probe`]).
    pub(super) fn record_probe(&self, rail: u16, result: ProbeResult) {
        if self.admit(rail) {
            self.probes
                .get_or_create(&RailProbeLabels { rail, result })
                .inc();
        }
    }

    /// Whether `rail` may have series; the first that may not is logged.
    fn admit(&self, rail: u16) -> bool {
        let admitted = rail < MAX_RAIL_LABELS;
        if !admitted && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                rail,
                max = MAX_RAIL_LABELS,
                "rail index out of bounds: not counted in the rail metrics"
            );
        }
        admitted
    }
}
