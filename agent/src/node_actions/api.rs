//! The node actions' requests to the Kubernetes API: the condition (a strategic merge patch
//! of nodes/status, merged by condition type, so other conditions stay as they are), Events
//! (events.k8s.io/v1, in `default`, where the API server wants Events about a Node), and the
//! taint (a merge patch of the node's taints carrying the resourceVersion it was read at, so
//! a concurrent change is a 409 and is read again, never overwritten).
//!
//! RBAC, each only where its action is on: `patch` on `nodes/status` (condition); `create`
//! and `patch` on `events.k8s.io` `events` (Events); `get` and `patch` on `nodes` (gate).

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::condition::{FabricCondition, CONDITION_TYPE};
use super::events::EventWrite;
use super::taint::without_key;
use crate::metrics::node_actions::NodeActionFailure;

/// Events about cluster-scoped objects live here (the API server refuses them elsewhere but
/// in kube-system).
pub const EVENTS_NAMESPACE: &str = "default";
/// The Events' `reportingController`.
pub const REPORTING_CONTROLLER: &str = "efaprobe.io/agent";
/// Reads and patches of the taint tried at most, when each meets a conflict.
pub const TAINT_ATTEMPTS: u32 = 5;
/// Any one request's deadline, unless [`NodeApi::with_timeout`] says otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request did not do what it asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    /// The API server answered with an error status.
    #[error("the API server answered {}: {}", .0.code, .0.message)]
    Status(kube::core::ErrorResponse),
    /// No answer that could be read (connection, TLS, a body that is not the object).
    #[error("no usable answer from the API server: {0}")]
    Transport(#[source] kube::Error),
    /// No answer within the deadline.
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    /// The node changed under every attempt.
    #[error("the node changed during each of {0} attempts to remove the taint")]
    Conflicts(u32),
}

impl NodeApiError {
    /// The bounded reason, for `efa_node_action_errors_total`.
    pub fn failure(&self) -> NodeActionFailure {
        match self {
            NodeApiError::Status(s) => match s.code {
                403 => NodeActionFailure::Forbidden,
                409 => NodeActionFailure::Conflict,
                404 => NodeActionFailure::NotFound,
                400 | 422 => NodeActionFailure::Invalid,
                _ => NodeActionFailure::ServerError,
            },
            NodeApiError::Conflicts(_) => NodeActionFailure::Conflict,
            NodeApiError::Transport(_) | NodeApiError::Timeout(_) => NodeActionFailure::Unreachable,
        }
    }

    fn code(&self) -> Option<u16> {
        match self {
            NodeApiError::Status(s) => Some(s.code),
            _ => None,
        }
    }
}

fn classify(e: kube::Error) -> NodeApiError {
    match e {
        kube::Error::Api(status) => NodeApiError::Status(status),
        other => NodeApiError::Transport(other),
    }
}

/// What removing the taint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintRemoval {
    Removed,
    /// The node did not carry it (any more).
    Absent,
}

/// What [`NodeApi::read_node`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub carries_taint: bool,
    /// `EFAFabricReady`'s status and lastTransitionTime, when the node has it.
    pub condition: Option<(String, SystemTime)>,
}

/// This node, as the API sees it.
#[derive(Clone)]
pub struct NodeApi {
    node_name: String,
    nodes: Api<Node>,
    events: Api<Event>,
    timeout: Duration,
}

impl NodeApi {
    pub fn new(client: kube::Client, node_name: &str) -> NodeApi {
        NodeApi {
            node_name: node_name.to_owned(),
            nodes: Api::all(client.clone()),
            events: Api::namespaced(client, EVENTS_NAMESPACE),
            timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> NodeApi {
        self.timeout = timeout;
        self
    }

    async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, NodeApiError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(NodeApiError::Timeout(self.timeout)),
        }
    }

    /// Writes the condition with its heartbeat and transition times.
    pub async fn patch_condition(
        &self,
        condition: &FabricCondition,
        heartbeat: SystemTime,
        transition: SystemTime,
    ) -> Result<(), NodeApiError> {
        let patch = condition_patch(condition, heartbeat, transition);
        self.bounded(self.nodes.patch_status(
            &self.node_name,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        ))
        .await
        .map(|_| ())
    }

    /// Reads the node: whether it carries a taint with `key`, and the condition as written
    /// before (by an earlier run of this agent).
    pub async fn read_node(&self, key: &str) -> Result<NodeView, NodeApiError> {
        let node = self.bounded(self.nodes.get(&self.node_name)).await?;
        let condition = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION_TYPE))
            .and_then(|c| {
                let since = c.last_transition_time.as_ref()?;
                Some((c.status.clone(), SystemTime::from(since.0)))
            });
        Ok(NodeView {
            carries_taint: taints(&node).iter().any(|t| t.key == key),
            condition,
        })
    }

    /// Removes every taint with `key` and nothing else. Each attempt reads the node and
    /// patches its taints with the resourceVersion read; a 409 (someone changed the node
    /// meanwhile) reads it again, up to [`TAINT_ATTEMPTS`] times.
    pub async fn remove_taint(&self, key: &str) -> Result<TaintRemoval, NodeApiError> {
        for _ in 0..TAINT_ATTEMPTS {
            let node = self.bounded(self.nodes.get(&self.node_name)).await?;
            let Some(left) = without_key(&taints(&node), key) else {
                return Ok(TaintRemoval::Absent);
            };
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"taints": left},
            });
            let sent = self
                .bounded(self.nodes.patch(
                    &self.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                ))
                .await;
            match sent {
                Ok(_) => return Ok(TaintRemoval::Removed),
                Err(e) if e.code() == Some(409) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(NodeApiError::Conflicts(TAINT_ATTEMPTS))
    }

    /// Performs one aggregated Event write; for a new Event, its name.
    pub async fn write_event(&self, write: &EventWrite) -> Result<Option<String>, NodeApiError> {
        match write {
            EventWrite::Create {
                key,
                note,
                first_seen,
                last_seen,
                count,
            } => {
                let event = new_event(
                    &self.node_name,
                    key.1.as_str(),
                    key.1.event_type(),
                    note,
                    *first_seen,
                    *last_seen,
                    *count,
                );
                let created = self
                    .bounded(self.events.create(&PostParams::default(), &event))
                    .await?;
                Ok(created.metadata.name.or(event.metadata.name))
            }
            EventWrite::Series {
                name,
                count,
                last_seen,
                ..
            } => {
                let patch = json!({"series": {
                    "count": count,
                    "lastObservedTime": MicroTime(utc(*last_seen)),
                }});
                self.bounded(
                    self.events
                        .patch(name, &PatchParams::default(), &Patch::Merge(patch)),
                )
                .await
                .map(|_| None)
            }
        }
    }
}

fn taints(node: &Node) -> Vec<k8s_openapi::api::core::v1::Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

/// The strategic merge patch of nodes/status that sets the condition (merged by `type`).
pub fn condition_patch(
    c: &FabricCondition,
    heartbeat: SystemTime,
    transition: SystemTime,
) -> serde_json::Value {
    json!({"status": {"conditions": [{
        "type": CONDITION_TYPE,
        "status": c.status.as_str(),
        "reason": c.reason.as_str(),
        "message": c.message,
        "lastHeartbeatTime": Time(utc(heartbeat)),
        "lastTransitionTime": Time(utc(transition)),
    }]}})
}

/// A new Event about this node. Its `regarding.uid` is the node's name, as the kubelet's
/// are, so `kubectl describe node` lists it.
fn new_event(
    node: &str,
    reason: &str,
    type_: &str,
    note: &str,
    first_seen: SystemTime,
    last_seen: SystemTime,
    count: u32,
) -> Event {
    // Name and reportingInstance are bounded (253, 128): node names may be longer.
    let short: String = node.chars().take(100).collect();
    let short = short.trim_end_matches(['.', '-']);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{short}.efaprobe.{:016x}", rand::random::<u64>())),
            namespace: Some(EVENTS_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(utc(first_seen))),
        series: (count > 1).then(|| EventSeries {
            count: i32::try_from(count).unwrap_or(i32::MAX),
            last_observed_time: MicroTime(utc(last_seen)),
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(format!("efaprobe-{short}")),
        action: Some("ProbePeers".into()),
        reason: Some(reason.into()),
        type_: Some(type_.into()),
        note: Some(note.into()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            uid: Some(node.into()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}
