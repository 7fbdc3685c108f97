//! The round loop: every interval, the latest peer set and placement, one round of peer
//! probes and target checks, the device counters; until shutdown. Beside them, the task that
//! answers verifies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::verify::{self, VerifyRequest};
use super::{targets, PeerMonitor};
use crate::discovery::PeerSet;
use crate::inventory::read_hw_counters;
use crate::metrics::Metrics;
use crate::probe::TargetSpec;
use crate::state::AgentState;
use crate::topology::Topology;

/// What the rounds read besides the monitor.
pub struct RoundInputs {
    pub state: Arc<AgentState>,
    pub metrics: Arc<Metrics>,
    /// The latest peer set from discovery.
    pub peer_sets: watch::Receiver<PeerSet>,
    /// This node's instance topology, when instance metadata answers (possibly after
    /// start-up): its placement, and each rail's.
    pub topology: watch::Receiver<Option<Arc<Topology>>>,
    /// The addresses under which this agent itself may be listed (left out of the set).
    pub is_self: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// New peers are reported `unknown` for this long after they became eligible.
    pub peer_grace: Duration,
    pub interval: Duration,
    pub targets: Vec<TargetSpec>,
    pub target_timeout: Duration,
    /// Where the devices' hardware counters are read (`/sys`).
    pub sysfs_root: PathBuf,
    /// Verifies asked for over HTTP (`POST /v1/verify`), answered beside the rounds.
    pub verify: Option<mpsc::Receiver<VerifyRequest>>,
}

/// Runs rounds every `inputs.interval` until `stop` is cancelled (a round under way is
/// dropped), then releases the monitor's fabric handles. Readiness is a latch: released
/// once the first full round is done.
pub async fn run(mut monitor: PeerMonitor, inputs: RoundInputs, stop: CancellationToken) {
    let RoundInputs {
        state,
        metrics,
        mut peer_sets,
        topology,
        is_self,
        peer_grace,
        interval,
        targets,
        target_timeout,
        sysfs_root,
        verify,
    } = inputs;
    // Verifies run as a task of their own, from copies of what they need: a round under
    // way never waits for one, nor one for a round.
    if let Some(requests) = verify {
        let context = monitor.verify_context(topology.clone());
        tokio::spawn(verify::serve(context, requests, stop.clone()));
    }
    let mut topology = Some(topology);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Some(rx) = &mut topology {
            match rx.has_changed() {
                Ok(false) => {}
                Ok(true) => monitor.set_topology(rx.borrow_and_update().clone()),
                // Closed: the sender is gone once it has published what instance metadata
                // said late, perhaps before this round looked. That value is final.
                Err(_) => {
                    monitor.set_topology(rx.borrow_and_update().clone());
                    topology = None;
                }
            }
        }
        // The latest peer set, without this agent itself. Read in place: a copy of
        // thousands of peers each round would be memory held for nothing.
        monitor.set_peers_where(&peer_sets.borrow_and_update(), peer_grace, |address| {
            !is_self(address)
        });
        let round = async {
            let root = sysfs_root.clone();
            let counters = tokio::task::spawn_blocking(move || read_hw_counters(&root));
            tokio::join!(
                monitor.run_round(),
                targets::check_round(&targets, target_timeout, &state, &metrics)
            );
            if let Ok(devices) = counters.await {
                metrics.set_device_counters(&devices);
            }
        };
        tokio::select! {
            _ = round => {}
            _ = stop.cancelled() => break,
        }
        if !state.is_ready() {
            state.mark_ready();
            metrics.set_ready(true);
            tracing::info!("first probe round done: ready");
        }
    }
    monitor.release();
}
