//! The target loop's one round: check every configured service and publish the reports.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::probe::{check_targets, TargetSpec};
use crate::state::AgentState;

pub async fn check_round(
    specs: &[TargetSpec],
    timeout: Duration,
    state: &Arc<AgentState>,
    metrics: &Arc<Metrics>,
) {
    if specs.is_empty() {
        return;
    }
    let reports = check_targets(specs, timeout).await;
    for report in &reports {
        if !report.all_ok() {
            tracing::debug!(target = %report.spec.name, "target check failed");
        }
    }
    metrics.set_targets(&reports);
    state.set_targets(reports);
}
