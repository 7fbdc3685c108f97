//! Peer discovery: which peer agents this node probes.
//!
//! Three sources, chosen by `--discovery`:
//! - `static`: the `--peers` list, fixed for the life of the process.
//! - `dns`: a headless Service name, resolved again every round (see [`dns`]).
//! - `kubernetes`: a watch on the DaemonSet's own pods (see [`kubernetes`]), which knows when
//!   a peer became Ready and drops a terminating one before it could look `down`.
//!
//! Every source publishes a whole [`PeerSet`] on a `watch` channel: the receiver always holds
//! the latest set, and a consumer that falls behind skips straight to it.

pub mod dns;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where a pod finds its own namespace when `POD_NAMESPACE` is not set.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Longest grace period accepted. Longer would hide a peer that never comes up for longer than
/// anyone would wait for an alert; and the eligibility times of pods are capped at this age
/// (see [`kubernetes::candidate_from_pod`]), which is only sound while no grace exceeds it.
pub const MAX_PEER_GRACE: Duration = Duration::from_secs(600);

/// One peer agent as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCandidate {
    /// `IP:PORT` (IPv6 as `[::1]:9476`) of the peer agent; a static peer may be `NAME:PORT`.
    pub address: String,
    /// `spec.nodeName` for kubernetes; `None` otherwise.
    pub node_name: Option<String>,
    /// When it became Running and Ready (kubernetes), or was first resolved (dns) or configured
    /// (static). The monitor keeps the peer `unknown` until this plus the grace period, so a
    /// peer that is still starting raises no alert.
    pub eligible_since: Instant,
}

/// The peers to probe, keyed by address.
pub type PeerSet = BTreeMap<String, PeerCandidate>;

/// Where peers come from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryConfig {
    /// Peer agents' addresses, `HOST:PORT`, already validated by the configuration.
    Static(Vec<String>),
    Dns {
        name: String,
        port: u16,
    },
    Kubernetes {
        namespace: String,
        selector: String,
        port: u16,
    },
}

/// Discovery could not start or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No Kubernetes client: outside a cluster with no kubeconfig, or a broken service account.
    #[error("cannot make a Kubernetes client (in-cluster service account or kubeconfig): {0}")]
    KubeClient(#[source] kube::Error),
    /// The API server refused or failed a request.
    #[error("cannot list pods in namespace {namespace:?} with selector {selector:?}: {source}")]
    KubeList {
        namespace: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
    /// The resolver answered with an error: NXDOMAIN, SERVFAIL, no resolver reachable.
    #[error("cannot resolve {name:?}: {source}")]
    DnsLookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The resolver did not answer in time.
    #[error("resolving {name:?} took longer than {timeout:?}")]
    DnsTimeout { name: String, timeout: Duration },
    /// The name resolved, but to no address.
    #[error("{name:?} resolves to no address")]
    DnsEmpty { name: String },
}

impl DiscoveryError {
    /// A bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryError::KubeClient(_) => "kube_client",
            DiscoveryError::KubeList { .. } => "kube_api",
            DiscoveryError::DnsLookup { .. } => "dns",
            DiscoveryError::DnsTimeout { .. } => "dns_timeout",
            DiscoveryError::DnsEmpty { .. } => "dns_empty",
        }
    }
}

/// Starts discovery; the receiver always holds the latest set. `refresh` is how often DNS is
/// resolved again (the agent passes its probe interval). Each source runs until `shutdown` is
/// cancelled; until then the set's sender stays alive, so `changed()` on the receiver waits
/// rather than failing.
///
/// Only a missing Kubernetes client fails here. A DNS name that does not resolve yet starts
/// with an empty set and is retried every round: a Service created after the DaemonSet, or
/// cluster DNS still starting, must not crash-loop the agent.
pub async fn start(
    config: DiscoveryConfig,
    refresh: Duration,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<PeerSet>, DiscoveryError> {
    match config {
        DiscoveryConfig::Static(peers) => {
            let (tx, rx) = watch::channel(static_set(&peers, Instant::now()));
            tokio::spawn(async move {
                shutdown.cancelled().await;
                drop(tx);
            });
            Ok(rx)
        }
        DiscoveryConfig::Dns { name, port } => {
            let (tx, rx) = watch::channel(PeerSet::new());
            tokio::spawn(dns::watch_dns(name, port, refresh, tx, shutdown));
            Ok(rx)
        }
        DiscoveryConfig::Kubernetes {
            namespace,
            selector,
            port,
        } => {
            let client = kube::Client::try_default()
                .await
                .map_err(DiscoveryError::KubeClient)?;
            let (tx, rx) = watch::channel(PeerSet::new());
            tokio::spawn(async move {
                kubernetes::watch_pods(client, &namespace, &selector, port, tx, shutdown).await
            });
            Ok(rx)
        }
    }
}

/// The set for a static list: every peer eligible from `now`.
pub fn static_set(peers: &[String], now: Instant) -> PeerSet {
    peers
        .iter()
        .map(|address| {
            (
                address.clone(),
                PeerCandidate {
                    address: address.clone(),
                    node_name: None,
                    eligible_since: now,
                },
            )
        })
        .collect()
}

/// Replaces the published set with `new` if it differs, and logs who came and went. Returns
/// whether it changed; an unchanged set wakes no receiver.
fn publish(tx: &watch::Sender<PeerSet>, new: PeerSet, source: &'static str) -> bool {
    tx.send_if_modified(|current| {
        if *current == new {
            return false;
        }
        for (address, peer) in &new {
            if !current.contains_key(address) {
                tracing::info!(source, %address, node = ?peer.node_name, "peer discovered");
            }
        }
        for (address, peer) in current.iter() {
            if !new.contains_key(address) {
                tracing::info!(source, %address, node = ?peer.node_name, "peer gone");
            }
        }
        *current = new;
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_set_is_published_and_kept_until_shutdown() {
        let stop = CancellationToken::new();
        let peers = vec!["198.18.0.1:9476".to_string(), "node-b:9476".to_string()];
        let mut rx = start(
            DiscoveryConfig::Static(peers.clone()),
            Duration::from_secs(1),
            stop.clone(),
        )
        .await
        .unwrap();
        let set = rx.borrow_and_update().clone();
        assert_eq!(set.keys().cloned().collect::<Vec<_>>(), peers);
        assert!(set.values().all(|p| p.node_name.is_none()));
        // While running, `changed()` waits (the sender is alive) rather than failing at once.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), rx.changed())
                .await
                .is_err()
        );
        stop.cancel();
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
        assert!(matches!(closed, Ok(Err(_))), "sender dropped at shutdown");
    }

    #[test]
    fn publish_reports_changes_only() {
        let now = Instant::now();
        let (tx, mut rx) = watch::channel(PeerSet::new());
        let set = static_set(&["198.18.0.1:9476".into()], now);
        assert!(publish(&tx, set.clone(), "test"));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!publish(&tx, set, "test"));
        assert!(!rx.has_changed().unwrap());
    }
}
