//! The node actions against a fake API server: kube's real client, talking to a
//! `tower_test` mock service that keeps one Node (its taints, conditions and
//! resourceVersion) and the Events, and answers as the API server does (strategic merge of
//! conditions by type, 409 on a stale resourceVersion, 403 outside the RBAC). There is no
//! API server on these machines; this is kube-rs's own test support, as in
//! tests/discovery_kubernetes.rs.
//!
//! Shown: the condition's patch for each transition and its heartbeat (same
//! lastTransitionTime); a flapping peer is one Event per reason and a series count; the
//! startup taint removed, only its key, after a 409 re-read; with no peer, removed after the
//! timeout and said in the condition; a 403 logged once, shown in the hello and the metric,
//! while the agent's state keeps updating and a hung API server holds nothing.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use efaprobe::hello::{Hello, HelloFabric};
use efaprobe::metrics::Metrics;
use efaprobe::node_actions::api::NodeApi;
use efaprobe::node_actions::settings::{NodeActionSettings, StartupTaint};
use efaprobe::node_actions::NodeActionWriter;
use efaprobe::state::{AgentState, FabricStatus, PathStatus, PeerStatus};
use efaprobe::topology::{NetworkInterface, Topology};
use efaprobe::verdict::{DiagnosisReason, PeerState};

const NODE: &str = "gpu-1";
const TAINT: &str = "efaprobe.io/fabric-unverified";
/// The writer's period in these tests (the agent's is interval x hysteresis).
const PERIOD: Duration = Duration::from_millis(40);
/// How long any one expectation may take.
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: Value,
    status: u16,
}

#[derive(Default)]
struct ApiState {
    node: Value,
    resource_version: u64,
    events: Vec<Value>,
    requests: Vec<Seen>,
    /// Paths (prefixes) answered 403.
    forbidden: Vec<String>,
    /// Paths (prefixes) never answered.
    hang: Vec<String>,
    /// Before the next taint patch, another writer adds this taint (so the patch is stale).
    race_taint: Option<Value>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<ApiState>>);

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    fn new(taints: Value) -> FakeApi {
        let api = FakeApi::default();
        {
            let mut s = api.state();
            s.resource_version = 100;
            s.node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE, "uid": "uid-gpu-1", "resourceVersion": "100"},
                "spec": {"taints": taints},
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "reason": "KubeletReady", "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            });
        }
        api
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.0.lock().unwrap()
    }

    fn requests(&self, method: &str, path: &str) -> Vec<Seen> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    async fn serve(self, mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_owned();
            let content_type = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let method = parts.method.to_string();
            if self.state().hang.iter().any(|p| path.starts_with(p)) {
                self.state().requests.push(Seen {
                    method,
                    path,
                    content_type,
                    body,
                    status: 0,
                });
                held.push(send);
                continue;
            }
            let (code, reply) = self.answer(&method, &path, &body);
            self.state().requests.push(Seen {
                method,
                path,
                content_type,
                body,
                status: code.as_u16(),
            });
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    }

    fn answer(&self, method: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let mut s = self.state();
        if s.forbidden.iter().any(|p| path.starts_with(p)) {
            return (
                StatusCode::FORBIDDEN,
                status(403, "Forbidden", "outside the ClusterRole"),
            );
        }
        let node_path = format!("/api/v1/nodes/{NODE}");
        let events_path = "/apis/events.k8s.io/v1/namespaces/default/events";
        match (method, path) {
            ("GET", p) if p == node_path => (StatusCode::OK, s.node.clone()),
            ("PATCH", p) if p == format!("{node_path}/status") => {
                // Strategic merge of status.conditions by type.
                for c in body["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let conditions = s.node["status"]["conditions"].as_array_mut().unwrap();
                    match conditions.iter_mut().find(|x| x["type"] == c["type"]) {
                        Some(x) => *x = c,
                        None => conditions.push(c),
                    }
                }
                s.bump();
                (StatusCode::OK, s.node.clone())
            }
            ("PATCH", p) if p == node_path => {
                if let Some(t) = s.race_taint.take() {
                    s.node["spec"]["taints"].as_array_mut().unwrap().push(t);
                    s.bump();
                }
                let current = s.node["metadata"]["resourceVersion"].clone();
                let sent = &body["metadata"]["resourceVersion"];
                if !sent.is_null() && *sent != current {
                    return (
                        StatusCode::CONFLICT,
                        status(409, "Conflict", "the object has been modified"),
                    );
                }
                if let Some(taints) = body["spec"].get("taints") {
                    s.node["spec"]["taints"] = taints.clone();
                }
                s.bump();
                (StatusCode::OK, s.node.clone())
            }
            ("POST", p) if p == events_path => {
                s.events.push(body.clone());
                (StatusCode::CREATED, body.clone())
            }
            ("PATCH", p) if p.starts_with(events_path) => {
                let name = p.rsplit('/').next().unwrap();
                let Some(e) = s.events.iter_mut().find(|e| e["metadata"]["name"] == name) else {
                    return (
                        StatusCode::NOT_FOUND,
                        status(404, "NotFound", "no such event"),
                    );
                };
                e["series"] = body["series"].clone();
                (StatusCode::OK, e.clone())
            }
            _ => (StatusCode::NOT_FOUND, status(404, "NotFound", path)),
        }
    }
}

impl ApiState {
    fn bump(&mut self) {
        self.resource_version += 1;
        self.node["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
    }
}

fn topology(subnet: &str) -> Topology {
    Topology {
        instance_id: "i-0123456789abcdef0".into(),
        instance_type: "p5.48xlarge".into(),
        availability_zone: "us-east-1a".into(),
        availability_zone_id: None,
        placement_group: None,
        primary_mac: "0e:00:00:00:00:01".into(),
        interfaces: vec![NetworkInterface {
            mac: "0e:00:00:00:00:01".into(),
            subnet_id: subnet.into(),
            vpc_id: "vpc-0a".into(),
            security_group_ids: vec!["sg-0a".into()],
            subnet_cidr: None,
        }],
    }
}

fn hello(name: &str) -> Hello {
    Hello {
        node_name: name.into(),
        agent_version: "0.1.0".into(),
        instance_id: 7,
        fabric: HelloFabric {
            provider: "efa".into(),
            available: true,
            error: None,
            endpoints: vec![],
        },
        topology: Some(topology("subnet-a")),
        node_actions: None,
    }
}

fn peer(name: &str, state: PeerState, reason: Option<DiagnosisReason>) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        address: format!("{name}:9476"),
        state,
        reason,
        summary: format!("{name} is {}", state.as_str()).into(),
        ip: PathStatus::default(),
        fabric: PathStatus::default(),
        fabric_loss: 0.0,
        hello: Some(Arc::new(hello(name))),
        warnings: vec![],
        since_unix: 1,
        rounds: 3,
        probed: true,
        name_conflict: None,
        rails: Vec::new(),
        peer_rails: None,
    }
}

fn settings() -> NodeActionSettings {
    NodeActionSettings {
        condition: false,
        condition_threshold: 0.5,
        condition_heartbeat: Duration::from_secs(300),
        events: false,
        events_per_minute: 600,
        startup_taint: None,
    }
}

/// A writer against a fresh fake API, running; its state, hello, metrics and stop switch.
struct Running {
    api: FakeApi,
    state: Arc<AgentState>,
    hello: Arc<RwLock<Hello>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(api: FakeApi, settings: NodeActionSettings, request_timeout: Duration) -> Running {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(api.clone().serve(handle));
    let client = kube::Client::new(service, "efaprobe");
    let fabric = FabricStatus {
        provider: "efa".into(),
        available: true,
        error: None,
        devices: vec![],
    };
    let state = Arc::new(AgentState::new(NODE, fabric.clone()));
    state.mark_ready();
    let hello = Arc::new(RwLock::new(hello(NODE)));
    let metrics = Arc::new(Metrics::new("0.1.0", state.clone()));
    let writer = NodeActionWriter::new(
        settings,
        NodeApi::new(client, NODE).with_timeout(request_timeout),
        state.clone(),
        hello.clone(),
        metrics.clone(),
        PERIOD,
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    Running {
        api,
        state,
        hello,
        metrics,
        stop,
        task,
    }
}

async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const STATUS_PATH: &str = "/api/v1/nodes/gpu-1/status";

fn condition_patches(api: &FakeApi) -> Vec<Value> {
    api.requests("PATCH", STATUS_PATH)
        .into_iter()
        .map(|r| {
            assert_eq!(r.content_type, "application/strategic-merge-patch+json");
            let conditions = r.body["status"]["conditions"].as_array().unwrap().clone();
            assert_eq!(
                conditions.len(),
                1,
                "only its own condition: {conditions:?}"
            );
            conditions[0].clone()
        })
        .collect()
}

async fn wait_condition(api: &FakeApi, status: &str, reason: &str) -> Value {
    wait_until(&format!("condition {status}/{reason}"), || {
        condition_patches(api)
            .last()
            .is_some_and(|c| c["status"] == status && c["reason"] == reason)
    })
    .await;
    condition_patches(api).last().unwrap().clone()
}

#[tokio::test]
async fn the_condition_is_patched_on_each_transition_and_as_a_heartbeat() {
    let mut s = settings();
    s.condition = true;
    // Over a second: Kubernetes times have whole seconds, and the heartbeat's must differ.
    s.condition_heartbeat = Duration::from_millis(2000);
    let r = start(FakeApi::new(json!([])), s, Duration::from_secs(5));

    let c = wait_condition(&r.api, "Unknown", "NoPeers").await;
    assert_eq!(c["type"], "EFAFabricReady");
    assert_eq!(
        c["message"],
        "No peer in its topology group subnet:subnet-a to verify the fabric against."
    );

    r.state
        .set_peer("gpu-2:9476", peer("gpu-2", PeerState::Healthy, None));
    let verified = wait_condition(&r.api, "True", "Verified").await;
    let writes = condition_patches(&r.api).len();
    // Written on a change of status or reason, not every round, and not for a message that
    // only counts peers differently: nothing new for several periods.
    r.state
        .set_peer("gpu-5:9476", peer("gpu-5", PeerState::Healthy, None));
    tokio::time::sleep(PERIOD * 6).await;
    assert_eq!(
        condition_patches(&r.api).len(),
        writes,
        "a write without news"
    );
    // The heartbeat: the same condition again, a later lastHeartbeatTime, the same
    // lastTransitionTime.
    wait_until("heartbeat", || condition_patches(&r.api).len() > writes).await;
    let beat = condition_patches(&r.api)[writes].clone();
    assert_eq!(beat["status"], "True");
    assert_eq!(
        beat["message"], "2 of 2 peers in its topology group subnet:subnet-a answer on the fabric.",
        "the heartbeat carries the latest message"
    );
    assert_eq!(beat["lastTransitionTime"], verified["lastTransitionTime"]);
    assert!(
        beat["lastHeartbeatTime"].as_str() > verified["lastHeartbeatTime"].as_str(),
        "{beat} after {verified}"
    );

    for name in ["gpu-3", "gpu-4"] {
        r.state.set_peer(
            &format!("{name}:9476"),
            peer(
                name,
                PeerState::FabricDropped,
                Some(DiagnosisReason::SecurityGroup),
            ),
        );
    }
    let dropped = wait_condition(&r.api, "False", "SecurityGroup").await;
    assert_eq!(
        dropped["message"],
        "2 of 4 peers in its topology group subnet:subnet-a answer over IP but not over the \
         fabric (security_group: 2); worst: gpu-3, gpu-4."
    );
    assert!(dropped["lastTransitionTime"].as_str() > verified["lastTransitionTime"].as_str());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.state.remove_peer("gpu-3:9476");
    let back = wait_condition(&r.api, "True", "Verified").await;
    assert!(back["lastTransitionTime"].as_str() > dropped["lastTransitionTime"].as_str());
    // The kubelet's own condition is still there: the patch merged by type.
    let node = r.api.state().node.clone();
    let types: Vec<&str> = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "EFAFabricReady"]);
    let report = r.hello.read().unwrap().node_actions.clone().unwrap();
    assert_eq!(report.condition_status.as_deref(), Some("True"));
    assert!(report.forbidden.is_empty());

    r.stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), r.task)
        .await
        .expect("the writer stops")
        .unwrap();
}

#[tokio::test]
async fn a_flapping_peer_is_one_event_per_reason_and_a_series_count() {
    let mut s = settings();
    s.events = true;
    let r = start(FakeApi::new(json!([])), s, Duration::from_secs(5));
    const FLAPS: usize = 8;
    let writes = |api: &FakeApi| {
        api.state()
            .requests
            .iter()
            .filter(|q| q.path.starts_with("/apis/events.k8s.io/"))
            .count()
    };
    r.state
        .set_peer("gpu-2:9476", peer("gpu-2", PeerState::Healthy, None));
    tokio::time::sleep(PERIOD * 3).await;
    assert_eq!(writes(&r.api), 0, "healthy is no news");
    // Each flip waits until the writer has written the move it made.
    for i in 0..2 * FLAPS {
        let (state, reason) = if i % 2 == 0 {
            (PeerState::FabricDropped, Some(DiagnosisReason::CrossSubnet))
        } else {
            (PeerState::Healthy, None)
        };
        r.state.set_peer("gpu-2:9476", peer("gpu-2", state, reason));
        wait_until(&format!("write for move {i}"), || writes(&r.api) > i).await;
    }
    tokio::time::sleep(PERIOD * 3).await;
    let requests: Vec<Seen> = r
        .api
        .state()
        .requests
        .iter()
        .filter(|q| q.path.starts_with("/apis/events.k8s.io/"))
        .cloned()
        .collect();
    assert_eq!(requests.len(), 2 * FLAPS, "one write per move, no more");
    let posts: Vec<&Seen> = requests.iter().filter(|q| q.method == "POST").collect();
    assert_eq!(posts.len(), 2, "one Event per (peer, reason)");
    let events = r.api.state().events.clone();
    let by_reason = |reason: &str| {
        events
            .iter()
            .find(|e| e["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} Event: {events:?}"))
            .clone()
    };
    let dropped = by_reason("PeerFabricDropped");
    let recovered = by_reason("PeerRecovered");
    assert_eq!(dropped["series"]["count"], FLAPS);
    assert_eq!(recovered["series"]["count"], FLAPS);
    assert_eq!(dropped["type"], "Warning");
    assert_eq!(recovered["type"], "Normal");
    assert_eq!(
        dropped["regarding"],
        json!({"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE})
    );
    assert_eq!(dropped["metadata"]["namespace"], "default");
    assert_eq!(dropped["reportingController"], "efaprobe.io/agent");
    assert_eq!(dropped["reportingInstance"], "efaprobe-gpu-1");
    assert_eq!(
        dropped["note"],
        "Peer gpu-2: fabric_dropped (cross_subnet). gpu-2 is fabric_dropped"
    );
    assert!(dropped["eventTime"].is_string());
    assert!(dropped["series"]["lastObservedTime"].is_string());
    r.stop.cancel();
}

fn taint(key: &str, effect: &str) -> Value {
    json!({"key": key, "effect": effect})
}

fn taint_keys(api: &FakeApi) -> Vec<String> {
    api.state().node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn the_gate_removes_only_its_taint_once_verified_and_rereads_on_conflict() {
    let api = FakeApi::new(json!([
        taint("nvidia.com/gpu", "NoSchedule"),
        taint(TAINT, "NoSchedule"),
        taint("node.kubernetes.io/unschedulable", "NoSchedule"),
        taint(TAINT, "NoExecute"),
    ]));
    api.state().race_taint = Some(taint("example.com/late", "NoSchedule"));
    let mut s = settings();
    s.startup_taint = Some(StartupTaint {
        key: TAINT.into(),
        verify_peers: 2,
        timeout: Duration::from_millis(100),
    });
    let r = start(api, s, Duration::from_secs(5));
    r.state
        .set_peer("gpu-2:9476", peer("gpu-2", PeerState::Healthy, None));
    r.state
        .set_peer("gpu-3:9476", peer("gpu-3", PeerState::Unknown, None));
    // One of two verified: the taint stays, past the timeout too (there are peers).
    tokio::time::sleep(PERIOD * 8).await;
    assert!(r.api.requests("PATCH", "/api/v1/nodes/gpu-1").is_empty());
    let report = r.hello.read().unwrap().node_actions.clone().unwrap();
    assert_eq!(report.startup_taint, "waiting");

    r.state
        .set_peer("gpu-3:9476", peer("gpu-3", PeerState::Degraded, None));
    wait_until("taint removed", || {
        r.api
            .requests("PATCH", "/api/v1/nodes/gpu-1")
            .iter()
            .any(|q| q.status == 200)
    })
    .await;
    let patches = r.api.requests("PATCH", "/api/v1/nodes/gpu-1");
    assert_eq!(
        patches.iter().map(|q| q.status).collect::<Vec<_>>(),
        [409, 200],
        "a conflict, then a patch from a fresh read"
    );
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    assert!(patches
        .iter()
        .all(|q| q.body["metadata"]["resourceVersion"].is_string()));
    assert_eq!(
        taint_keys(&r.api),
        [
            "nvidia.com/gpu:NoSchedule",
            "node.kubernetes.io/unschedulable:NoSchedule",
            "example.com/late:NoSchedule"
        ],
        "only the gate's key went; the taint added meanwhile stayed"
    );
    wait_until("hello says removed", || {
        r.hello
            .read()
            .unwrap()
            .node_actions
            .as_ref()
            .map(|n| n.startup_taint.clone())
            == Some("removed".into())
    })
    .await;
    // Done: never touched again, and never added back.
    tokio::time::sleep(PERIOD * 5).await;
    assert_eq!(r.api.requests("PATCH", "/api/v1/nodes/gpu-1").len(), 2);
    r.stop.cancel();
}

#[tokio::test]
async fn with_no_peer_the_taint_goes_after_the_timeout_and_the_condition_says_so() {
    let api = FakeApi::new(json!([taint(TAINT, "NoSchedule")]));
    let mut s = settings();
    s.condition = true;
    s.startup_taint = Some(StartupTaint {
        key: TAINT.into(),
        verify_peers: 2,
        timeout: Duration::from_millis(400),
    });
    let started = Instant::now();
    let r = start(api, s, Duration::from_secs(5));
    wait_until("taint removed", || taint_keys(&r.api).is_empty()).await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the timeout"
    );
    // The round that removes the taint writes the note with the condition.
    wait_until("the note", || {
        condition_patches(&r.api).last().is_some_and(|c| {
            c["reason"] == "NoPeers" && c["message"].as_str().unwrap().contains("was removed after")
        })
    })
    .await;
    assert_eq!(
        condition_patches(&r.api).last().unwrap()["message"],
        "No peer in its topology group subnet:subnet-a to verify the fabric against. The \
         startup taint efaprobe.io/fabric-unverified was removed after 400ms with no peer in \
         its group to verify against: the fabric is not verified."
    );
    r.stop.cancel();
}

#[tokio::test]
async fn a_node_without_the_taint_is_left_alone() {
    let api = FakeApi::new(json!([taint("nvidia.com/gpu", "NoSchedule")]));
    let mut s = settings();
    s.startup_taint = Some(StartupTaint {
        key: TAINT.into(),
        verify_peers: 1,
        timeout: Duration::from_millis(50),
    });
    let r = start(api, s, Duration::from_secs(5));
    wait_until("absent", || {
        r.hello
            .read()
            .unwrap()
            .node_actions
            .as_ref()
            .map(|n| n.startup_taint.clone())
            == Some("absent".into())
    })
    .await;
    tokio::time::sleep(PERIOD * 5).await;
    assert_eq!(r.api.requests("GET", "/api/v1/nodes/gpu-1").len(), 1);
    assert!(r.api.requests("PATCH", "/api/v1/nodes/gpu-1").is_empty());
    r.stop.cancel();
}

/// Log lines, for counting what was logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn a_403_is_logged_once_shown_and_counted_and_the_state_keeps_updating() {
    // The current-thread runtime polls the writer on this thread: the subscriber sees it.
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let api = FakeApi::new(json!([taint(TAINT, "NoSchedule")]));
    api.state().forbidden = vec!["/api/v1/nodes".into(), "/apis/events.k8s.io".into()];
    let mut s = settings();
    s.condition = true;
    s.events = true;
    s.startup_taint = Some(StartupTaint {
        key: TAINT.into(),
        verify_peers: 1,
        timeout: Duration::from_secs(60),
    });
    let r = start(api, s, Duration::from_secs(5));
    // The state keeps changing meanwhile, as probing changes it; no write waits on it.
    let mut longest_update = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let state = if i % 2 == 0 {
            PeerState::Down
        } else {
            PeerState::Healthy
        };
        let t = Instant::now();
        r.state.set_peer("gpu-2:9476", peer("gpu-2", state, None));
        let _ = r.state.peers();
        longest_update = longest_update.max(t.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(i > 50, "the test loop itself ran ({i} updates)");
    // Generous for a loaded machine: a write holding the state would show as seconds.
    assert!(
        longest_update < Duration::from_millis(500),
        "{longest_update:?}"
    );

    let attempts = |path: &str| {
        r.api
            .state()
            .requests
            .iter()
            .filter(|q| q.path.starts_with(path) && q.status == 403)
            .count()
    };
    assert!(attempts(STATUS_PATH) >= 2, "the condition is retried");
    assert!(attempts("/apis/events.k8s.io") >= 2, "events are retried");
    assert!(attempts("/api/v1/nodes/gpu-1") >= 2);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for action in ["condition", "events", "taint"] {
        let lines = text
            .lines()
            .filter(|l| l.contains("(403)") && l.contains(&format!("action=\"{action}\"")))
            .count();
        assert_eq!(lines, 1, "{action} logged once:\n{text}");
    }
    let report = r.hello.read().unwrap().node_actions.clone().unwrap();
    assert_eq!(
        report.forbidden.iter().collect::<BTreeSet<_>>(),
        ["condition", "events", "taint"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect()
    );
    assert!(!report.condition_written);
    let hello_json = serde_json::to_value(&*r.hello.read().unwrap()).unwrap();
    assert_eq!(
        hello_json["node_actions"]["forbidden"],
        json!(["condition", "events", "taint"])
    );
    let exposition = r.metrics.encode();
    let forbidden_count = exposition
        .lines()
        .find(|l| {
            l.starts_with("efa_node_action_errors_total{")
                && l.contains("action=\"condition\"")
                && l.contains("reason=\"forbidden\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(forbidden_count as usize, attempts(STATUS_PATH));
    r.stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), r.task)
        .await
        .expect("stops")
        .unwrap();
}

#[tokio::test]
async fn a_hung_api_server_holds_nothing_and_the_writer_still_stops() {
    let api = FakeApi::new(json!([]));
    api.state().hang = vec![STATUS_PATH.into()];
    let mut s = settings();
    s.condition = true;
    let r = start(api, s, Duration::from_millis(200));
    wait_until("a first request", || {
        !r.api.requests("PATCH", STATUS_PATH).is_empty()
    })
    .await;
    // While the request hangs, the state is read and written as freely as ever.
    let t = Instant::now();
    for n in 0..1000 {
        r.state.set_peer(
            &format!("p{n}:9476"),
            peer(&format!("p{n}"), PeerState::Healthy, None),
        );
        let _ = r.state.peers();
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The deadline ends each attempt; later ones follow with backoff.
    wait_until("a retry after the deadline", || {
        r.api.requests("PATCH", STATUS_PATH).len() >= 2
    })
    .await;
    let report = r.hello.read().unwrap().node_actions.clone().unwrap();
    assert!(
        report
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("within 200ms")),
        "{report:?}"
    );
    let stopped = Instant::now();
    r.stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), r.task)
        .await
        .expect("stops while a request hangs")
        .unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(1));
}

/// A node whose EFAFabricReady an earlier run wrote, its transition at `since`.
fn node_with_condition(status: &str, since: &str) -> FakeApi {
    let api = FakeApi::new(json!([]));
    api.state().node["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"type": "EFAFabricReady", "status": status, "reason": "Verified",
                     "message": "earlier run", "lastHeartbeatTime": since,
                     "lastTransitionTime": since}),
        );
    api
}

#[tokio::test]
async fn after_a_restart_an_unchanged_status_keeps_its_transition_time_where_the_node_is_read() {
    let since = "2026-01-01T00:00:00Z";
    let mut s = settings();
    s.condition = true;
    s.startup_taint = Some(StartupTaint {
        key: TAINT.into(),
        verify_peers: 1,
        timeout: Duration::from_secs(60),
    });
    // Same status as before the restart: the transition time stays.
    let r = start(
        node_with_condition("True", since),
        s.clone(),
        Duration::from_secs(5),
    );
    r.state
        .set_peer("gpu-2:9476", peer("gpu-2", PeerState::Healthy, None));
    let c = wait_condition(&r.api, "True", "Verified").await;
    assert_eq!(c["lastTransitionTime"], since);
    assert_ne!(c["lastHeartbeatTime"], since);
    r.stop.cancel();

    // Another status: the transition is now.
    let r = start(
        node_with_condition("False", since),
        s,
        Duration::from_secs(5),
    );
    r.state
        .set_peer("gpu-2:9476", peer("gpu-2", PeerState::Healthy, None));
    let c = wait_condition(&r.api, "True", "Verified").await;
    assert_ne!(c["lastTransitionTime"], since);
    r.stop.cancel();
}
