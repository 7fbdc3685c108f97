//! Kubernetes discovery: a watch on the DaemonSet's own pods.
//!
//! A pod is a peer while it is Running, has the condition Ready=True, has a pod IP, and is not
//! terminating. A terminating pod (one with a `deletionTimestamp`) leaves the set at once, so a
//! rollout or a drained node is never probed into a `down`. A pod that becomes a peer carries
//! when it became Ready, for the monitor's grace period.
//!
//! The watch survives API errors: kube's watcher re-lists with backoff, and meanwhile the last
//! known set stays, so an API server outage does not look like every peer left.
//!
//! RBAC: only pods, only in the agent's own namespace, and nothing cluster-wide:
//!
//! ```yaml
//! kind: Role
//! rules:
//!   - apiGroups: [""]
//!     resources: ["pods"]
//!     verbs: ["get", "list", "watch"]
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{publish, DiscoveryError, PeerCandidate, PeerSet, MAX_PEER_GRACE};

/// Why a pod is not a peer (yet, or any more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    /// It has a `deletionTimestamp`: its agent is stopping.
    Terminating,
    /// `status.phase` is not Running (Pending, Succeeded, Failed, Unknown, or absent).
    NotRunning(Option<String>),
    /// No `Ready=True` condition: its agent has not finished its first round, or failed it.
    NotReady,
    /// No `status.podIP` yet.
    NoPodIp,
    /// A `status.podIP` that is not an IP address.
    BadPodIp(String),
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ineligible::Terminating => f.write_str("terminating"),
            Ineligible::NotRunning(phase) => {
                write!(f, "phase {}", phase.as_deref().unwrap_or("unset"))
            }
            Ineligible::NotReady => f.write_str("not ready"),
            Ineligible::NoPodIp => f.write_str("no pod IP"),
            Ineligible::BadPodIp(ip) => write!(f, "pod IP {ip:?} is not an IP address"),
        }
    }
}

/// The peer that `pod` is, or why it is none. `eligible_since` is when its Ready condition
/// last turned true (see [`candidate_from_pod_at`]).
pub fn candidate_from_pod(pod: &Pod, port: u16) -> Result<PeerCandidate, Ineligible> {
    candidate_from_pod_at(pod, port, Instant::now(), SystemTime::now())
}

/// [`candidate_from_pod`] at a given time. The Ready condition's `lastTransitionTime` (wall
/// clock) becomes an `Instant` by its age at `wall_now`: a peer that has been Ready for an
/// hour when this agent starts needs no grace, while one that just turned Ready gets it. The
/// age is capped at [`MAX_PEER_GRACE`], which is all a grace period can tell apart, and at
/// what the monotonic clock can go back; a time in the future (clock skew) counts as now.
pub fn candidate_from_pod_at(
    pod: &Pod,
    port: u16,
    now: Instant,
    wall_now: SystemTime,
) -> Result<PeerCandidate, Ineligible> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Ineligible::Terminating);
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.clone());
    if phase.as_deref() != Some("Running") {
        return Err(Ineligible::NotRunning(phase));
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")
        })
        .ok_or(Ineligible::NotReady)?;
    let ip_text = status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
        .ok_or(Ineligible::NoPodIp)?;
    let ip: IpAddr = ip_text
        .parse()
        .map_err(|_| Ineligible::BadPodIp(ip_text.to_owned()))?;
    let ready_since = ready.last_transition_time.as_ref().map(|t| {
        let dt = &t.0;
        // Before 1970 cannot be a real Ready time; it counts as long ago.
        u64::try_from(dt.timestamp())
            .map(|secs| {
                UNIX_EPOCH + Duration::new(secs, dt.timestamp_subsec_nanos().min(999_999_999))
            })
            .unwrap_or(UNIX_EPOCH)
    });
    let age = ready_since
        .and_then(|since| wall_now.duration_since(since).ok())
        .unwrap_or(Duration::ZERO)
        .min(MAX_PEER_GRACE);
    Ok(PeerCandidate {
        address: SocketAddr::new(ip, port).to_string(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        eligible_since: now.checked_sub(age).unwrap_or(now),
    })
}

/// One eligible pod: its uid tells a pod replaced under the same name from the same pod.
#[derive(Debug, Clone)]
struct Tracked {
    uid: Option<String>,
    candidate: PeerCandidate,
}

/// The peer set as the watch events build it, without a cluster: feed it events, read
/// [`PodTracker::peers`].
#[derive(Debug)]
pub struct PodTracker {
    port: u16,
    /// Eligible pods by name (all in one namespace).
    current: BTreeMap<String, Tracked>,
    /// During a re-list (`Init` .. `InitDone`), the eligible pods listed so far. The current
    /// set stays published until the list is complete, so a re-list after an API outage does
    /// not make peers vanish and come back.
    relisting: Option<BTreeMap<String, Tracked>>,
}

impl PodTracker {
    pub fn new(port: u16) -> PodTracker {
        PodTracker {
            port,
            current: BTreeMap::new(),
            relisting: None,
        }
    }

    /// Applies one watch event at `now`. Returns whether the set may have changed (false while
    /// a re-list is under way).
    pub fn apply(
        &mut self,
        event: watcher::Event<Pod>,
        now: Instant,
        wall_now: SystemTime,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(pod) => {
                let (name, tracked) = self.track(&pod, now, wall_now);
                if let (Some(list), Some(tracked)) = (self.relisting.as_mut(), tracked) {
                    list.insert(name, tracked);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.current = listed;
                }
                true
            }
            watcher::Event::Apply(pod) => {
                let (name, tracked) = self.track(&pod, now, wall_now);
                match tracked {
                    Some(t) => self.current.insert(name, t),
                    None => self.current.remove(&name),
                };
                true
            }
            watcher::Event::Delete(pod) => {
                self.current.remove(&pod_name(&pod));
                true
            }
        }
    }

    /// What `pod` is now: an eligible pod keeps the candidate it had while it is the same pod
    /// (same uid, same address), so its `eligible_since` does not move.
    fn track(&self, pod: &Pod, now: Instant, wall_now: SystemTime) -> (String, Option<Tracked>) {
        let name = pod_name(pod);
        let uid = pod.metadata.uid.clone();
        let tracked = match candidate_from_pod_at(pod, self.port, now, wall_now) {
            Ok(candidate) => {
                let kept = self.current.get(&name).filter(|known| {
                    known.uid == uid && known.candidate.address == candidate.address
                });
                let candidate = match kept {
                    Some(known) => PeerCandidate {
                        eligible_since: known.candidate.eligible_since,
                        ..candidate
                    },
                    None => candidate,
                };
                Some(Tracked { uid, candidate })
            }
            Err(why) => {
                tracing::debug!(pod = %name, %why, "pod is not a peer");
                None
            }
        };
        (name, tracked)
    }

    /// The peers: eligible pods keyed by address. Two pods with one address (a host-network
    /// pod replaced on its node) count once, the one that became eligible first.
    pub fn peers(&self) -> PeerSet {
        let mut set = PeerSet::new();
        for tracked in self.current.values() {
            let c = &tracked.candidate;
            match set.get(&c.address) {
                Some(known) if known.eligible_since <= c.eligible_since => {}
                _ => {
                    set.insert(c.address.clone(), c.clone());
                }
            }
        }
        set
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Watches the pods matching `selector` in `namespace` and publishes the peer set on `tx` after
/// every change, until `shutdown` is cancelled or every receiver is
/// dropped. Never returns an error: API failures are logged and retried with kube's default
/// backoff ([`watch_backoff`]) while the last known set stays published.
pub async fn watch_pods(
    client: kube::Client,
    namespace: &str,
    selector: &str,
    port: u16,
    tx: watch::Sender<PeerSet>,
    shutdown: CancellationToken,
) {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let events =
        watcher(pods, watcher::Config::default().labels(selector)).backoff(watch_backoff());
    let mut events = std::pin::pin!(events);
    let mut tracker = PodTracker::new(port);
    let mut failing = false;
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
        };
        match next {
            // The watcher's stream does not end; if it ever did, there is nothing to watch.
            None => {
                tracing::error!(%namespace, %selector, "pod watch ended; keeping the last known peers");
                break;
            }
            Some(Err(error)) => {
                tracing::warn!(
                    %namespace,
                    %selector,
                    %error,
                    kept = tx.borrow().len(),
                    "pod watch failed; keeping the last known peers and retrying"
                );
                failing = true;
            }
            Some(Ok(event)) => {
                if failing && matches!(event, watcher::Event::InitDone) {
                    tracing::info!(%namespace, "pod watch restored");
                    failing = false;
                }
                if tracker.apply(event, Instant::now(), SystemTime::now()) {
                    publish(&tx, tracker.peers(), "kubernetes");
                }
            }
        }
    }
    tracing::debug!(%namespace, "pod watch stopped");
}

/// The watch's retry delays: kube's defaults (those of client-go's reflector, kind to a
/// struggling API server: 800ms doubling to 30s, spread, back to 800ms after two quiet
/// minutes), from the agent's one backoff.
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let delays = crate::retry::doubling(Duration::from_millis(800), Duration::from_secs(30));
    ResetTimerBackoff::new(delays.with_jitter().into(), Duration::from_secs(120))
}

/// Lists the pods once and returns the peer set they make: the one-shot answer of `efaprobe
/// discover --once`.
pub async fn list_once(
    client: kube::Client,
    namespace: &str,
    selector: &str,
    port: u16,
) -> Result<PeerSet, DiscoveryError> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| DiscoveryError::KubeList {
            namespace: namespace.to_owned(),
            selector: selector.to_owned(),
            source,
        })?;
    let mut tracker = PodTracker::new(port);
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    tracker.apply(watcher::Event::Init, now, wall_now);
    for pod in list.items {
        tracker.apply(watcher::Event::InitApply(pod), now, wall_now);
    }
    tracker.apply(watcher::Event::InitDone, now, wall_now);
    Ok(tracker.peers())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A pod as the API server would send it; `ready` is the Ready condition's status and
    /// `ready_at` its lastTransitionTime.
    fn pod(
        name: &str,
        phase: Option<&str>,
        ready: Option<&str>,
        ready_at: Option<&str>,
        ip: Option<&str>,
    ) -> Pod {
        let mut status = json!({});
        if let Some(phase) = phase {
            status["phase"] = json!(phase);
        }
        if let Some(ready) = ready {
            let mut condition = json!({"type": "Ready", "status": ready});
            if let Some(at) = ready_at {
                condition["lastTransitionTime"] = json!(at);
            }
            status["conditions"] = json!([{"type": "PodScheduled", "status": "True"}, condition]);
        }
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "efa", "uid": format!("uid-{name}")},
            "spec": {"nodeName": format!("node-{name}"), "containers": []},
            "status": status,
        }))
        .unwrap()
    }

    fn running_ready(name: &str, ip: &str) -> Pod {
        pod(name, Some("Running"), Some("True"), None, Some(ip))
    }

    fn wall(rfc3339: &str) -> SystemTime {
        let dt = k8s_openapi::chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
        UNIX_EPOCH + Duration::from_secs(dt.timestamp() as u64)
    }

    #[test]
    fn running_ready_with_an_ip_is_a_peer() {
        let now = Instant::now();
        let c = candidate_from_pod_at(
            &running_ready("a", "198.18.0.1"),
            9476,
            now,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(c.address, "198.18.0.1:9476");
        assert_eq!(c.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            c.eligible_since, now,
            "no transition time: eligible from now"
        );
    }

    #[test]
    fn ipv6_in_brackets() {
        let c = candidate_from_pod(&running_ready("a", "fd00::1"), 9476).unwrap();
        assert_eq!(c.address, "[fd00::1]:9476");
    }

    #[test]
    fn ineligible_pods_and_why() {
        let cases = [
            (
                pod("p", Some("Pending"), None, None, None),
                Ineligible::NotRunning(Some("Pending".into())),
            ),
            (
                pod("p", None, None, None, None),
                Ineligible::NotRunning(None),
            ),
            (
                pod(
                    "p",
                    Some("Succeeded"),
                    Some("False"),
                    None,
                    Some("198.18.0.1"),
                ),
                Ineligible::NotRunning(Some("Succeeded".into())),
            ),
            (
                pod(
                    "p",
                    Some("Running"),
                    Some("False"),
                    None,
                    Some("198.18.0.1"),
                ),
                Ineligible::NotReady,
            ),
            (
                pod("p", Some("Running"), None, None, Some("198.18.0.1")),
                Ineligible::NotReady,
            ),
            (
                pod("p", Some("Running"), Some("True"), None, None),
                Ineligible::NoPodIp,
            ),
            (
                pod("p", Some("Running"), Some("True"), None, Some("")),
                Ineligible::NoPodIp,
            ),
            (
                pod("p", Some("Running"), Some("True"), None, Some("node-7")),
                Ineligible::BadPodIp("node-7".into()),
            ),
        ];
        for (pod, why) in cases {
            assert_eq!(candidate_from_pod(&pod, 9476), Err(why), "{pod:?}");
        }
    }

    #[test]
    fn terminating_is_dropped_even_while_ready() {
        let mut p = running_ready("a", "198.18.0.1");
        p.metadata.deletion_timestamp =
            serde_json::from_value(json!("2025-01-01T00:00:00Z")).unwrap();
        assert_eq!(candidate_from_pod(&p, 9476), Err(Ineligible::Terminating));
    }

    #[test]
    fn eligible_since_is_the_ready_transition() {
        let now = Instant::now();
        let wall_now = wall("2025-06-01T12:00:00Z");
        let at = |ready_at: &str| {
            let p = pod(
                "a",
                Some("Running"),
                Some("True"),
                Some(ready_at),
                Some("198.18.0.1"),
            );
            candidate_from_pod_at(&p, 9476, now, wall_now)
                .unwrap()
                .eligible_since
        };
        // Ready 20 s ago: 20 s of its grace are already spent (if the clock goes back so far).
        if let Some(expected) = now.checked_sub(Duration::from_secs(20)) {
            assert_eq!(at("2025-06-01T11:59:40Z"), expected);
        }
        // Ready for a day: as old as any grace can tell apart.
        if let Some(expected) = now.checked_sub(MAX_PEER_GRACE) {
            assert_eq!(at("2025-05-31T12:00:00Z"), expected);
        }
        // In the future (clock skew): from now.
        assert_eq!(at("2025-06-01T12:00:05Z"), now);
    }

    fn apply(t: &mut PodTracker, event: watcher::Event<Pod>) -> bool {
        t.apply(event, Instant::now(), SystemTime::now())
    }

    fn addresses(t: &PodTracker) -> Vec<String> {
        t.peers().into_keys().collect()
    }

    #[test]
    fn tracker_follows_events_and_keeps_ages() {
        let mut t = PodTracker::new(9476);
        apply(&mut t, watcher::Event::Init);
        apply(
            &mut t,
            watcher::Event::InitApply(running_ready("a", "198.18.0.1")),
        );
        apply(
            &mut t,
            watcher::Event::InitApply(pod("b", Some("Pending"), None, None, None)),
        );
        assert!(
            addresses(&t).is_empty(),
            "nothing published before InitDone"
        );
        assert!(apply(&mut t, watcher::Event::InitDone));
        assert_eq!(addresses(&t), ["198.18.0.1:9476"]);
        let since_a = t.peers()["198.18.0.1:9476"].eligible_since;

        std::thread::sleep(Duration::from_millis(2));
        apply(
            &mut t,
            watcher::Event::Apply(running_ready("b", "198.18.0.2")),
        );
        apply(
            &mut t,
            watcher::Event::Apply(running_ready("a", "198.18.0.1")),
        );
        assert_eq!(addresses(&t), ["198.18.0.1:9476", "198.18.0.2:9476"]);
        assert_eq!(
            t.peers()["198.18.0.1:9476"].eligible_since,
            since_a,
            "an update of the same pod keeps its age"
        );

        // A re-list keeps the current set until it is done, and the same pods keep their ages.
        apply(&mut t, watcher::Event::Init);
        apply(
            &mut t,
            watcher::Event::InitApply(running_ready("a", "198.18.0.1")),
        );
        assert_eq!(addresses(&t).len(), 2);
        apply(&mut t, watcher::Event::InitDone);
        assert_eq!(addresses(&t), ["198.18.0.1:9476"]);
        assert_eq!(t.peers()["198.18.0.1:9476"].eligible_since, since_a);

        // Replaced under the same name (new uid): a new peer, eligible from now.
        let mut replaced = running_ready("a", "198.18.0.1");
        replaced.metadata.uid = Some("uid-a-2".into());
        apply(&mut t, watcher::Event::Apply(replaced));
        assert!(t.peers()["198.18.0.1:9476"].eligible_since > since_a);

        apply(
            &mut t,
            watcher::Event::Delete(running_ready("a", "198.18.0.1")),
        );
        assert!(addresses(&t).is_empty());
    }

    #[test]
    fn one_address_twice_counts_once() {
        let mut t = PodTracker::new(9476);
        apply(
            &mut t,
            watcher::Event::Apply(running_ready("a", "198.18.0.1")),
        );
        apply(
            &mut t,
            watcher::Event::Apply(running_ready("b", "198.18.0.1")),
        );
        let peers = t.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers["198.18.0.1:9476"].node_name.as_deref(),
            Some("node-a")
        );
    }
}
