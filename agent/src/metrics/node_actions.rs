//! `efa_node_action_errors_total{action, reason}`: writes of the node actions (condition,
//! Events, startup taint) the Kubernetes API did not take. A `forbidden` one means the RBAC
//! for that action is missing; the agent logs it once and keeps probing.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use strum::VariantArray;

/// The family's name in `# TYPE`; its samples are `<name>_total`.
pub(super) const NAME: &str = "efa_node_action_errors";
const HELP: &str = "Failed writes of this node's actions through the Kubernetes API, by action \
                    (condition, events, taint) and reason (forbidden: RBAC missing; conflict, \
                    not_found, invalid, server_error, unreachable)";

/// What the agent writes to its Node.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum NodeAction {
    Condition,
    Events,
    Taint,
}

impl NodeAction {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why a write failed, bounded.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum NodeActionFailure {
    /// 403: the service account may not.
    Forbidden,
    /// 409: the object changed meanwhile.
    Conflict,
    /// 404.
    NotFound,
    /// 400 or 422: the API refused the object.
    Invalid,
    /// Any other status from the API server (429, 5xx).
    ServerError,
    /// No answer: connection refused, timed out, TLS.
    Unreachable,
}

impl NodeActionFailure {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeActionErrorLabels {
    action: &'static str,
    reason: &'static str,
}

/// The counters, shared with the registry.
#[derive(Debug, Clone, Default)]
pub struct NodeActionErrors {
    family: Family<NodeActionErrorLabels, Counter>,
}

impl NodeActionErrors {
    pub(super) fn register(register: &mut super::Register<'_>) -> NodeActionErrors {
        NodeActionErrors {
            family: register.add(NAME, HELP, None, Family::default()),
        }
    }

    /// Creates `action`'s counters at 0 for every reason, so its first failure is an
    /// increase, not a new series. Only actions that are on get series.
    pub fn enable(&self, action: NodeAction) {
        for reason in NodeActionFailure::VARIANTS.iter().copied() {
            let _ = self.family.get_or_create(&labels(action, reason));
        }
    }

    pub fn record(&self, action: NodeAction, reason: NodeActionFailure) {
        self.family.get_or_create(&labels(action, reason)).inc();
    }
}

fn labels(action: NodeAction, reason: NodeActionFailure) -> NodeActionErrorLabels {
    NodeActionErrorLabels {
        action: action.as_str(),
        reason: reason.as_str(),
    }
}
