//! Kubernetes discovery against a fake API server: kube's real client and watcher, talking to
//! a `tower_test` mock service that keeps pods, resource versions and an event log, and
//! answers list and watch requests as the API server does.
//!
//! Pods appear Pending -> not peers; Running+Ready with an IP -> peers with their node names;
//! Running but Ready=False -> not a peer; terminating -> dropped at once; deleted -> gone. An
//! API outage (watches cut, 503s, then 410 Gone and a re-list) keeps the last known set, and
//! the re-list picks up what changed meanwhile without resetting known peers' ages. Every
//! request is a GET on pods in the agent's own namespace with its selector.

use crate::support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use efaprobe::discovery::kubernetes::watch_pods;
use efaprobe::discovery::PeerSet;
use support::agent::{Agent, RunningAgent};

const NAMESPACE: &str = "efa-disc";
const SELECTOR: &str = "app.kubernetes.io/name=efaprobe";
const PORT: u16 = 9476;
/// How long any one expectation may take; the watcher's backoff starts at 0.8 s.
const WAIT: Duration = Duration::from_secs(15);

type Chunk = Result<Frame<Bytes>, Infallible>;
type MockBody = StreamBody<mpsc::UnboundedReceiver<Chunk>>;

/// What the fake API server holds.
#[derive(Default)]
struct ApiState {
    pods: BTreeMap<String, Value>,
    resource_version: u64,
    /// Every change: (resource version, watch event type, object).
    log: Vec<(u64, &'static str, Value)>,
    watches: Vec<mpsc::UnboundedSender<Chunk>>,
    /// Answer this many of the next requests with 503.
    fail_next: usize,
    /// Answer the next watch with a 410 Gone event, as when its resource version expired.
    expire_next_watch: bool,
    /// Method and URI of every request.
    requests: Vec<String>,
    lists: usize,
    watch_requests: usize,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<ApiState>>);

fn line(value: &Value) -> Chunk {
    let mut text = serde_json::to_vec(value).unwrap();
    text.push(b'\n');
    Ok(Frame::data(Bytes::from(text)))
}

fn response(status: StatusCode, chunks: Vec<Chunk>) -> Response<MockBody> {
    let (tx, rx) = mpsc::unbounded();
    for c in chunks {
        tx.unbounded_send(c).unwrap();
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(StreamBody::new(rx))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    fn state(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.0.lock().unwrap()
    }

    /// Creates or replaces a pod, and tells the open watches.
    fn put(&self, pod: Value) {
        let mut s = self.state();
        s.resource_version += 1;
        let rv = s.resource_version;
        let mut pod = pod;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        let kind = if s.pods.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.pods.insert(name, pod.clone());
        s.record(rv, kind, pod);
    }

    fn delete(&self, name: &str) {
        let mut s = self.state();
        s.resource_version += 1;
        let rv = s.resource_version;
        let mut pod = s.pods.remove(name).expect("pod exists");
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.record(rv, "DELETED", pod);
    }

    /// Ends every open watch, as a dropped connection to the API server does.
    fn cut_watches(&self) {
        self.state().watches.clear();
    }

    /// Answers the requests of `handle` until the client is dropped.
    async fn serve(
        self,
        mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<MockBody>>,
    ) {
        while let Some((request, send)) = handle.next_request().await {
            let reply = self.answer(&request);
            send.send_response(reply);
        }
    }

    fn answer(&self, request: &Request<kube::client::Body>) -> Response<MockBody> {
        let mut s = self.state();
        let uri = request.uri().to_string();
        s.requests.push(format!("{} {uri}", request.method()));
        let query = request.uri().query().unwrap_or("");
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
        };
        let is_watch = param("watch").as_deref() == Some("true");
        if is_watch {
            s.watch_requests += 1;
        } else {
            s.lists += 1;
        }
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return response(
                StatusCode::SERVICE_UNAVAILABLE,
                vec![line(&status(
                    503,
                    "ServiceUnavailable",
                    "etcd is unavailable",
                ))],
            );
        }
        if request.uri().path() != format!("/api/v1/namespaces/{NAMESPACE}/pods") {
            return response(
                StatusCode::FORBIDDEN,
                vec![line(&status(403, "Forbidden", "outside the Role"))],
            );
        }
        if !is_watch {
            let items: Vec<Value> = s.pods.values().cloned().collect();
            let list = json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": s.resource_version.to_string()}, "items": items});
            let (tx, rx) = mpsc::unbounded();
            tx.unbounded_send(line(&list)).unwrap();
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(StreamBody::new(rx))
                .unwrap();
        }
        if std::mem::take(&mut s.expire_next_watch) {
            let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
            return response(StatusCode::OK, vec![line(&gone)]);
        }
        let since: u64 = param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded();
        for (rv, kind, object) in &s.log {
            if *rv > since {
                tx.unbounded_send(line(&json!({"type": kind, "object": object})))
                    .unwrap();
            }
        }
        s.watches.push(tx);
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(rx))
            .unwrap()
    }
}

impl ApiState {
    fn record(&mut self, rv: u64, kind: &'static str, object: Value) {
        let event = json!({"type": kind, "object": object});
        self.watches
            .retain(|w| w.unbounded_send(line(&event)).is_ok());
        self.log.push((rv, kind, object));
    }
}

/// A pod of the DaemonSet on `node`: `phase`, Ready condition `ready`, pod IP `ip`.
fn pod(name: &str, phase: &str, ready: Option<bool>, ip: Option<&str>) -> Value {
    let mut status = json!({"phase": phase, "conditions": []});
    if let Some(ready) = ready {
        status["conditions"] =
            json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
    }
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}"),
                     "labels": {"app.kubernetes.io/name": "efaprobe"}},
        "spec": {"nodeName": format!("node-{name}"), "containers": []},
        "status": status,
    })
}

fn terminating(mut pod: Value) -> Value {
    pod["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    pod
}

/// Waits until the published set satisfies `ok`, at most `WAIT`.
async fn wait_for(
    rx: &mut watch::Receiver<PeerSet>,
    what: &str,
    ok: impl Fn(&PeerSet) -> bool,
) -> PeerSet {
    let found = match tokio::time::timeout(WAIT, rx.wait_for(|set| ok(set))).await {
        Ok(Ok(set)) => Some(set.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("{what}: not within {WAIT:?}; last set: {:?}", *rx.borrow()))
}

/// Waits until the fake API server satisfies `ok`, at most `WAIT`.
async fn wait_api(api: &FakeApi, what: &str, ok: impl Fn(&ApiState) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok(&api.state()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn addresses(set: &PeerSet) -> Vec<(String, Option<String>)> {
    set.values()
        .map(|p| (p.address.clone(), p.node_name.clone()))
        .collect()
}

fn peer(ip: &str, node: &str) -> (String, Option<String>) {
    (format!("{ip}:{PORT}"), Some(node.to_owned()))
}

#[tokio::test]
async fn pods_become_peers_only_while_running_ready_and_not_terminating() {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let api = FakeApi::default();
    // Two pods exist before the agent starts, both still Pending with no IP.
    api.put(pod("a", "Pending", None, None));
    api.put(pod("b", "Pending", Some(false), None));
    let server = tokio::spawn(api.clone().serve(handle));

    let client = kube::Client::new(service, NAMESPACE);
    let (tx, mut rx) = watch::channel(PeerSet::new());
    let stop = CancellationToken::new();
    let watching = stop.clone();
    let discovery = tokio::spawn(async move {
        watch_pods(client, NAMESPACE, SELECTOR, PORT, tx, watching).await;
    });

    // The watch opens only after the list was applied: nothing is a peer yet.
    wait_api(&api, "first watch", |s| s.watch_requests >= 1).await;
    assert!(rx.borrow().is_empty(), "{:?}", rx.borrow());

    api.put(pod("a", "Running", Some(true), Some("198.18.7.1")));
    let set = wait_for(&mut rx, "a becomes a peer", |s| s.len() == 1).await;
    assert_eq!(addresses(&set), [peer("198.18.7.1", "node-a")]);

    api.put(pod("b", "Running", Some(true), Some("198.18.7.2")));
    wait_for(&mut rx, "b becomes a peer", |s| s.len() == 2).await;

    // Running with an IP but not Ready: not a peer. Then b terminates while still Ready.
    api.put(pod("c", "Running", Some(false), Some("198.18.7.3")));
    api.put(terminating(pod(
        "b",
        "Running",
        Some(true),
        Some("198.18.7.2"),
    )));
    let set = wait_for(&mut rx, "terminating b dropped", |s| s.len() == 1).await;
    assert_eq!(
        addresses(&set),
        [peer("198.18.7.1", "node-a")],
        "c (Ready=False) is no peer, b left at its deletionTimestamp"
    );
    api.delete("b");
    api.put(pod("d", "Running", Some(true), Some("198.18.7.4")));
    let before_outage = wait_for(&mut rx, "d becomes a peer", |s| s.len() == 2).await;
    assert_eq!(
        addresses(&before_outage),
        [peer("198.18.7.1", "node-a"), peer("198.18.7.4", "node-d")]
    );

    // API outage: the watches are cut and requests fail. The set stays as it was.
    let requests_before = api.state().requests.len();
    {
        let mut s = api.state();
        s.fail_next = 2;
        s.expire_next_watch = true;
    }
    api.cut_watches();
    // Meanwhile a new peer comes up; the re-list after the outage must find it.
    api.put(pod("e", "Running", Some(true), Some("198.18.7.5")));
    wait_api(&api, "two failed requests", |s| {
        s.requests.len() >= requests_before + 2
    })
    .await;
    assert_eq!(
        *rx.borrow(),
        before_outage,
        "the last known set stays while the API fails"
    );

    let lists_before = api.state().lists;
    let set = wait_for(&mut rx, "re-list finds e", |s| s.len() == 3).await;
    assert!(
        api.state().lists > lists_before,
        "recovered by a re-list (410 Gone)"
    );
    assert_eq!(
        addresses(&set),
        [
            peer("198.18.7.1", "node-a"),
            peer("198.18.7.4", "node-d"),
            peer("198.18.7.5", "node-e")
        ]
    );
    for (address, known) in &before_outage {
        assert_eq!(
            set[address].eligible_since, known.eligible_since,
            "{address}: the re-list did not restart its grace period"
        );
    }

    api.delete("a");
    let set = wait_for(&mut rx, "a deleted", |s| s.len() == 2).await;
    assert!(!set.contains_key("198.18.7.1:9476"));
    assert!(
        !set.contains_key("198.18.7.3:9476"),
        "c never became a peer"
    );

    // Only pods, only in the agent's namespace, only reads, always with the selector.
    let requests = api.state().requests.clone();
    assert!(requests.len() >= 4, "{requests:?}");
    for r in &requests {
        assert!(
            r.starts_with(&format!("GET /api/v1/namespaces/{NAMESPACE}/pods?")),
            "request outside the Role: {r}"
        );
        assert!(
            r.contains("labelSelector=app.kubernetes.io%2Fname%3Defaprobe"),
            "request without the selector: {r}"
        );
    }

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), discovery)
        .await
        .expect("discovery stops at shutdown")
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn an_unreachable_api_keeps_the_watch_alive_and_the_set_empty() {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let api = FakeApi::default();
    api.put(pod("a", "Running", Some(true), Some("198.18.8.1")));
    api.state().fail_next = 2;
    let server = tokio::spawn(api.clone().serve(handle));
    let client = kube::Client::new(service, NAMESPACE);
    let (tx, mut rx) = watch::channel(PeerSet::new());
    let stop = CancellationToken::new();
    let watching = stop.clone();
    let discovery = tokio::spawn(async move {
        watch_pods(client, NAMESPACE, SELECTOR, PORT, tx, watching).await;
    });
    // Two failed lists, retried with backoff, then the peer is found: no panic, no exit.
    let set = wait_for(&mut rx, "found after the API recovers", |s| s.len() == 1).await;
    assert_eq!(addresses(&set), [peer("198.18.8.1", "node-a")]);
    assert!(api.state().lists >= 3, "retried the list");
    assert!(!discovery.is_finished());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), discovery)
        .await
        .expect("discovery stops at shutdown")
        .unwrap();
    server.abort();
}

/// An agent process on a loopback address of its own, killed on drop.
fn local_agent(name: &str, ip: &str, port: u16) -> RunningAgent<'static> {
    Agent::new(name)
        .listen(format!("{ip}:{port}"))
        .args(["--fabric-bind", ip])
        .args(["--fabric-provider", "udp;ofi_rxd"])
        .args(["--interval", "1s", "--timeout", "400ms"])
        .spawn()
}

/// Rollouts through the monitor: the watcher's sets drive a real PeerMonitor (with an rxd
/// fabric engine) probing real agents. A pod whose agent is not answering yet stays
/// `unknown` through its grace period; a terminating pod is dropped before it can look
/// `down`; its series go with it. At no point does any peer read `down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_and_series_follow_pods_with_no_false_down() {
    use efaprobe::fabric_ping::{self, PingerConfig};
    use efaprobe::metrics::Metrics;
    use efaprobe::monitor::{PeerMonitor, PeerProbeSettings};
    use efaprobe::state::{AgentState, FabricStatus};

    const AGENT_PORT: u16 = 27_791;
    const GRACE: Duration = Duration::from_secs(4);
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let api = FakeApi::default();
    let server = tokio::spawn(api.clone().serve(handle));
    let client = kube::Client::new(service, NAMESPACE);
    let (tx, mut rx) = watch::channel(PeerSet::new());
    let stop = CancellationToken::new();
    let watching = stop.clone();
    let discovery = tokio::spawn(async move {
        watch_pods(client, NAMESPACE, SELECTOR, AGENT_PORT, tx, watching).await;
    });

    let mut config = PingerConfig::new("udp;ofi_rxd");
    config.bind = Some("127.0.0.1".parse().unwrap());
    let pinger = fabric_ping::open_all(&config).unwrap().remove(0);
    let state = Arc::new(AgentState::new("observer", FabricStatus::default()));
    let metrics = Arc::new(Metrics::new("test", state.clone()));
    // The interval only spreads a round's probes (over interval - timeout): rounds are run
    // here one after the other.
    let settings = PeerProbeSettings {
        provider: Some("udp;ofi_rxd".into()),
        ..PeerProbeSettings::new(
            "observer",
            Duration::from_millis(500),
            Duration::from_millis(400),
        )
    };
    let mut monitor = PeerMonitor::new(
        settings,
        state.clone(),
        metrics.clone(),
        vec![pinger.clone()],
    );

    // Rounds until `done` holds on the exposition, asserting no peer is ever `down`.
    async fn rounds_until(
        monitor: &mut PeerMonitor,
        rx: &watch::Receiver<PeerSet>,
        metrics: &Metrics,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) {
        for _ in 0..40 {
            let set = rx.borrow().clone();
            monitor.set_peers(&set, GRACE);
            monitor.run_round().await;
            let text = metrics.encode();
            for line in text.lines().filter(|l| l.starts_with("efa_peer_state{")) {
                assert!(
                    !(line.contains(r#"state="down""#) && line.ends_with(" 1")),
                    "false down during {what}: {line}"
                );
            }
            if done(&text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{what}: not within 40 rounds:\n{}", metrics.encode());
    }
    let state_is = |peer: &'static str, state: &'static str| {
        move |text: &str| {
            text.lines().any(|l| {
                l.starts_with("efa_peer_state{")
                    && l.contains(&format!(r#"peer="{peer}""#))
                    && l.contains(&format!(r#"state="{state}""#))
                    && l.ends_with(" 1")
            })
        }
    };

    // 1. Pod a's agent runs; the pod becomes Ready: unknown during its grace, then healthy.
    let mut _agent_a = local_agent("node-a", "127.0.0.2", AGENT_PORT);
    tokio::task::block_in_place(|| _agent_a.wait_ready());
    api.put(pod("a", "Running", Some(true), Some("127.0.0.2")));
    wait_for(&mut rx, "a is a peer", |s| s.len() == 1).await;
    rounds_until(
        &mut monitor,
        &rx,
        &metrics,
        "a unknown in grace",
        state_is("node-a", "unknown"),
    )
    .await;
    rounds_until(
        &mut monitor,
        &rx,
        &metrics,
        "a healthy",
        state_is("node-a", "healthy"),
    )
    .await;

    // 2. Pod b is Ready before its agent answers (it starts late): unknown, not down, until
    //    the agent is up; then healthy.
    api.put(pod("b", "Running", Some(true), Some("127.0.0.3")));
    wait_for(&mut rx, "b is a peer", |s| s.len() == 2).await;
    for _ in 0..3 {
        rounds_until(
            &mut monitor,
            &rx,
            &metrics,
            "b unknown",
            state_is("node-b", "unknown"),
        )
        .await;
    }
    let _agent_b = local_agent("node-b", "127.0.0.3", AGENT_PORT);
    rounds_until(
        &mut monitor,
        &rx,
        &metrics,
        "b healthy",
        state_is("node-b", "healthy"),
    )
    .await;

    // 3. Pod a terminates (still Ready): dropped at once with every series; its agent then
    //    stops, and nothing about it ever reads down.
    api.put(terminating(pod(
        "a",
        "Running",
        Some(true),
        Some("127.0.0.2"),
    )));
    wait_for(&mut rx, "a dropped", |s| s.len() == 1).await;
    drop(_agent_a);
    rounds_until(&mut monitor, &rx, &metrics, "a's series gone", |t| {
        !t.contains(r#"peer="node-a""#)
    })
    .await;
    assert_eq!(state.peers().len(), 1);

    // 4. Pod b is deleted: gone.
    api.delete("b");
    wait_for(&mut rx, "b gone", |s| s.is_empty()).await;
    rounds_until(&mut monitor, &rx, &metrics, "b's series gone", |t| {
        !t.contains(r#"peer="node-b""#)
    })
    .await;
    assert!(metrics.encode().contains("efa_peers 0"));

    stop.cancel();
    let _ = discovery.await;
    server.abort();
    monitor.release();
    pinger.shutdown();
}
