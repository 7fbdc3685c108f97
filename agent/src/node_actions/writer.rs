//! The task that runs beside probing: every `period` (the probe interval times the
//! verdicts' hysteresis, so no faster than a verdict can change) it reads the agent's state,
//! judges the condition, the Events and the gate, and writes what changed.
//!
//! It only reads the state (clones), so probing never waits for it; each request has a
//! deadline; a failed write waits with backoff (doubling from one period to
//! [`MAX_BACKOFF`]) while the rest goes on. A 403 (RBAC missing) is logged once per action,
//! shown in `/v1/hello` (`node_actions.forbidden`) and counted in
//! `efa_node_action_errors_total{reason="forbidden"}`.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::api::{NodeApi, NodeApiError, NodeView, TaintRemoval};
use super::condition::{self, ConditionInputs, ConditionStatus, FabricCondition};
use super::events::{EventAggregator, EventWrite, PeerTransitions};
use super::settings::NodeActionSettings;
use super::taint::{self, GateDecision};
use crate::hello::{Hello, NodeActionsReport};
use crate::metrics::node_actions::{NodeAction, NodeActionFailure};
use crate::metrics::Metrics;
use crate::state::AgentState;
use crate::verdict::diagnosis::Placement;

/// Longest wait before a failed write is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A condition whose status and reason stay, but whose message changed (peers counted
/// differently, another worst peer), is written at most this often: peers coming and going
/// during a rollout must not make every node write every period.
pub const MESSAGE_REFRESH: Duration = Duration::from_secs(60);

/// When a failing action may try again.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    delay: Duration,
    next: Option<Instant>,
}

impl Backoff {
    fn new(min: Duration) -> Backoff {
        Backoff {
            min,
            delay: min,
            next: None,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    fn failed(&mut self, now: Instant) {
        self.next = Some(now + self.delay);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self) {
        self.delay = self.min;
        self.next = None;
    }
}

/// The gate's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    Off,
    /// The node has not been read yet.
    Unchecked,
    Waiting(String),
    Removed {
        verified: bool,
    },
    /// The node did not carry the taint.
    Absent,
}

impl Gate {
    fn word(&self) -> &'static str {
        match self {
            Gate::Off => "off",
            Gate::Unchecked | Gate::Waiting(_) => "waiting",
            Gate::Removed { .. } => "removed",
            Gate::Absent => "absent",
        }
    }
}

/// What was last written as the condition.
#[derive(Debug, Clone)]
struct Written {
    condition: FabricCondition,
    heartbeat: Instant,
}

/// The node actions' task. Build with [`NodeActionWriter::new`], run with
/// [`NodeActionWriter::run`].
pub struct NodeActionWriter {
    settings: NodeActionSettings,
    api: NodeApi,
    state: Arc<AgentState>,
    hello: Arc<RwLock<Hello>>,
    metrics: Arc<Metrics>,
    period: Duration,
    started: Instant,

    written: Option<Written>,
    /// The status last written and since when (the condition's lastTransitionTime).
    transition: Option<(ConditionStatus, SystemTime)>,
    condition_retry: Backoff,
    transitions: PeerTransitions,
    aggregator: EventAggregator,
    events_retry: Backoff,
    gate: Gate,
    gate_retry: Backoff,
    /// Actions refused with 403, each logged once.
    forbidden: BTreeSet<NodeAction>,
    /// Actions whose last write failed (logged on the first failure only).
    failing: BTreeSet<NodeAction>,
    last_error: Option<String>,
    condition_now: Option<FabricCondition>,
    /// Write the condition this round whatever changed (the gate just removed the taint).
    condition_news: bool,
}

impl NodeActionWriter {
    /// `period`: how often the state is read (at least the verdicts' hysteresis).
    pub fn new(
        settings: NodeActionSettings,
        api: NodeApi,
        state: Arc<AgentState>,
        hello: Arc<RwLock<Hello>>,
        metrics: Arc<Metrics>,
        period: Duration,
    ) -> NodeActionWriter {
        let period = period.max(Duration::from_millis(10));
        for (on, action) in [
            (settings.condition, NodeAction::Condition),
            (settings.events, NodeAction::Events),
            (settings.startup_taint.is_some(), NodeAction::Taint),
        ] {
            if on {
                metrics.node_action_errors().enable(action);
            }
        }
        let gate = match settings.startup_taint {
            Some(_) => Gate::Unchecked,
            None => Gate::Off,
        };
        NodeActionWriter {
            aggregator: EventAggregator::new(settings.events_per_minute),
            settings,
            api,
            state,
            hello,
            metrics,
            period,
            started: Instant::now(),
            written: None,
            transition: None,
            condition_retry: Backoff::new(period),
            transitions: PeerTransitions::default(),
            events_retry: Backoff::new(period),
            gate,
            gate_retry: Backoff::new(period),
            forbidden: BTreeSet::new(),
            failing: BTreeSet::new(),
            last_error: None,
            condition_now: None,
            condition_news: false,
        }
    }

    /// Runs until `stop` is cancelled. Starts judging once the agent is ready (its first
    /// probe round is done), so a restart does not write `NoPeers` over a known verdict.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return,
            }
            if !self.state.is_ready() {
                continue;
            }
            tokio::select! {
                _ = self.round() => {}
                _ = stop.cancelled() => return,
            }
            self.publish();
        }
    }

    async fn round(&mut self) {
        let peers = self.state.peers();
        let local_fabric = self.state.fabric().available;
        let own_group = self
            .hello
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .topology
            .as_ref()
            .and_then(Placement::of)
            .map(|p| p.group());
        let tally = condition::tally(own_group.as_deref(), &peers);
        let threshold = self.settings.condition_threshold;
        let judged = |note: Option<&str>| {
            condition::evaluate(ConditionInputs {
                local_fabric,
                tally: &tally,
                threshold,
                gate_note: note,
            })
        };
        let plain = judged(None);
        self.gate_step(local_fabric, &tally, &plain).await;
        // The condition says the taint went without verification while that is still so.
        let note = match (&self.gate, &self.settings.startup_taint) {
            (Gate::Removed { verified: false }, Some(g)) if tally.members == 0 => {
                Some(taint::unverified_note(g))
            }
            _ => None,
        };
        let current = judged(note.as_deref());
        if self.settings.condition {
            self.condition_step(&current).await;
        }
        self.condition_now = Some(current);
        if self.settings.events {
            let now = SystemTime::now();
            for m in self.transitions.observe(&peers) {
                self.aggregator.record(m, now);
            }
            self.events_step(now).await;
        }
    }

    async fn condition_step(&mut self, current: &FabricCondition) {
        let now = Instant::now();
        let heartbeat = self.settings.condition_heartbeat;
        let due = match &self.written {
            None => true,
            Some(_) if self.condition_news => true,
            Some(w) => {
                let since = now.duration_since(w.heartbeat);
                if (w.condition.status, w.condition.reason) != (current.status, current.reason) {
                    true
                } else if w.condition.message != current.message {
                    since >= MESSAGE_REFRESH.min(heartbeat)
                } else {
                    since >= heartbeat
                }
            }
        };
        if !due || !self.condition_retry.ready(now) {
            return;
        }
        let wall = SystemTime::now();
        let transition = match self.transition {
            Some((status, since)) if status == current.status => since,
            _ => wall,
        };
        match self.api.patch_condition(current, wall, transition).await {
            Ok(()) => {
                if self.written.as_ref().map(|w| w.condition.status) != Some(current.status) {
                    tracing::info!(
                        status = current.status.as_str(),
                        reason = current.reason.as_str(),
                        message = %current.message,
                        "node condition {}", condition::CONDITION_TYPE
                    );
                }
                self.transition = Some((current.status, transition));
                self.written = Some(Written {
                    condition: current.clone(),
                    heartbeat: now,
                });
                self.condition_retry.succeeded();
                self.condition_news = false;
                self.succeeded(NodeAction::Condition);
            }
            Err(e) => {
                self.condition_retry.failed(now);
                self.failed(NodeAction::Condition, &e);
            }
        }
    }

    async fn events_step(&mut self, now: SystemTime) {
        if !self.events_retry.ready(Instant::now()) {
            return;
        }
        let writes: Vec<EventWrite> = self.aggregator.due(now);
        for w in writes {
            match self.api.write_event(&w).await {
                Ok(name) => {
                    self.aggregator.written(&w, name);
                    self.events_retry.succeeded();
                    self.succeeded(NodeAction::Events);
                }
                Err(e) => {
                    if matches!(w, EventWrite::Series { .. })
                        && e.failure() == NodeActionFailure::NotFound
                    {
                        // The Event expired: the next pass creates a new one with the count.
                        self.aggregator.lost(w.key());
                    }
                    self.events_retry.failed(Instant::now());
                    self.failed(NodeAction::Events, &e);
                    return;
                }
            }
        }
    }

    async fn gate_step(
        &mut self,
        local_fabric: bool,
        tally: &condition::GroupTally,
        plain: &FabricCondition,
    ) {
        let Some(gate) = self.settings.startup_taint.clone() else {
            return;
        };
        let now = Instant::now();
        if !matches!(self.gate, Gate::Unchecked | Gate::Waiting(_)) || !self.gate_retry.ready(now) {
            return;
        }
        if self.gate == Gate::Unchecked {
            let view = self.api.read_node(&gate.key).await;
            if let Ok(NodeView {
                condition: Some((status, since)),
                ..
            }) = &view
            {
                // The condition an earlier run wrote: its transition time stays while the
                // status does (only where the gate may read the node).
                if self.transition.is_none() {
                    self.transition = ConditionStatus::parse(status).map(|s| (s, *since));
                }
            }
            match view.map(|v| v.carries_taint) {
                Ok(true) => self.gate = Gate::Waiting("not verified yet".into()),
                Ok(false) => {
                    tracing::info!(taint = %gate.key, "the node does not carry the startup taint: nothing to remove");
                    self.gate = Gate::Absent;
                    self.gate_retry.succeeded();
                    self.succeeded(NodeAction::Taint);
                    return;
                }
                Err(e) => {
                    self.gate_retry.failed(now);
                    self.failed(NodeAction::Taint, &e);
                    return;
                }
            }
        }
        let decision = taint::decide(&gate, local_fabric, tally, plain, now - self.started);
        let verified = match decision {
            GateDecision::Wait(why) => {
                self.gate = Gate::Waiting(why);
                return;
            }
            GateDecision::Remove { verified } => Some(verified),
            GateDecision::RemoveUnverified => None,
        };
        match self.api.remove_taint(&gate.key).await {
            Ok(outcome) => {
                match (&verified, outcome) {
                    (Some(peers), TaintRemoval::Removed) => tracing::info!(
                        taint = %gate.key, verified_against = ?peers,
                        "fabric verified: startup taint removed"
                    ),
                    (None, TaintRemoval::Removed) => tracing::warn!(
                        taint = %gate.key, timeout = ?gate.timeout,
                        "no peer to verify the fabric against: startup taint removed unverified"
                    ),
                    (_, TaintRemoval::Absent) => {
                        tracing::info!(taint = %gate.key, "the startup taint is gone already")
                    }
                }
                self.gate = match outcome {
                    TaintRemoval::Removed => Gate::Removed {
                        verified: verified.is_some(),
                    },
                    TaintRemoval::Absent => Gate::Absent,
                };
                // Said in the condition at once, not at the next message refresh.
                self.condition_news = true;
                self.gate_retry.succeeded();
                self.succeeded(NodeAction::Taint);
            }
            Err(e) => {
                self.gate_retry.failed(now);
                self.failed(NodeAction::Taint, &e);
            }
        }
    }

    fn failed(&mut self, action: NodeAction, e: &NodeApiError) {
        let reason = e.failure();
        self.metrics.node_action_errors().record(action, reason);
        self.last_error = Some(format!("{}: {e}", action.as_str()));
        if reason == NodeActionFailure::Forbidden {
            if self.forbidden.insert(action) {
                tracing::warn!(
                    action = action.as_str(), error = %e,
                    "the API server refuses this node action (403): its RBAC is missing; \
                     probing goes on, the action is retried with backoff and not logged again"
                );
            }
        } else if self.failing.insert(action) {
            tracing::warn!(action = action.as_str(), error = %e, "node action failed: retrying with backoff");
        }
    }

    fn succeeded(&mut self, action: NodeAction) {
        if self.forbidden.remove(&action) || self.failing.remove(&action) {
            tracing::info!(action = action.as_str(), "node action succeeds again");
        }
    }

    /// The report `/v1/hello` shows.
    fn report(&self) -> NodeActionsReport {
        let c = self
            .condition_now
            .as_ref()
            .filter(|_| self.settings.condition);
        NodeActionsReport {
            condition_status: c.map(|c| c.status.as_str().to_owned()),
            condition_reason: c.map(|c| c.reason.as_str().to_owned()),
            condition_written: match (c, &self.written) {
                (Some(c), Some(w)) => {
                    (w.condition.status, w.condition.reason) == (c.status, c.reason)
                }
                _ => false,
            },
            startup_taint: self.gate.word().to_owned(),
            startup_taint_detail: match &self.gate {
                Gate::Waiting(why) => Some(why.clone()),
                Gate::Removed { verified: false } => {
                    Some("removed with no peer to verify against".into())
                }
                _ => None,
            },
            forbidden: self
                .forbidden
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            last_error: self.last_error.clone(),
        }
    }

    fn publish(&self) {
        let report = self.report();
        self.hello
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .node_actions = Some(report);
    }
}
