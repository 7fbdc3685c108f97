//! Acting on what the agent sees: this node's condition `EFAFabricReady`, Events on the
//! Node for each peer's move into and out of an unhealthy state, and the startup gate that
//! removes the node's startup taint once its fabric is verified. All off unless asked for
//! (`--node-condition`, `--node-events`, `--startup-taint-gate`).
//!
//! - [`condition`], [`events`], [`taint`]: pure judgements from the agent's state;
//! - [`api`]: the requests to the Kubernetes API;
//! - [`writer`]: the task beside probing that reads the state, judges, and writes, with
//!   backoff, never holding anything probing waits for;
//! - [`settings`]: the flags.

pub mod api;
pub mod condition;
pub mod events;
pub mod settings;
pub mod taint;
pub mod writer;

pub use settings::NodeActionSettings;
pub use writer::NodeActionWriter;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Starts the node actions' task, when any is on: a client from the pod's service account
/// (or the kubeconfig), then [`NodeActionWriter::run`] until `stop`. `period`: the probe
/// interval times the hysteresis.
pub async fn start(
    settings: NodeActionSettings,
    node_name: &str,
    period: Duration,
    state: Arc<crate::state::AgentState>,
    hello: Arc<RwLock<crate::hello::Hello>>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, kube::Error> {
    if !settings.any() {
        return Ok(None);
    }
    let client = kube::Client::try_default().await?;
    tracing::info!(
        condition = settings.condition,
        events = settings.events,
        startup_taint = ?settings.startup_taint.as_ref().map(|g| &g.key),
        "node actions on"
    );
    let api = api::NodeApi::new(client, node_name);
    let writer = NodeActionWriter::new(settings, api, state, hello, metrics, period);
    Ok(Some(tokio::spawn(writer.run(stop))))
}
