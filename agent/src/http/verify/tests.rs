//! The verify route through the router (`oneshot`, no socket), answered by the monitor's
//! real verify task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::*;
use crate::metrics::Metrics;
use crate::monitor::{verify as monitor_verify, PeerMonitor, PeerProbeSettings};
use crate::state::{AgentState, FabricStatus, PathStatus, PeerStatus};
use crate::verdict::PeerState;

const TIMEOUT: Duration = Duration::from_millis(300);

/// An agent `gpu1` that knows `gpu2` at a port nobody listens on, `gpu4` at one that
/// accepts and never answers (its verify takes the probe timeout), and no fabric.
fn agent(burst: f64, per_second: f64) -> (Router, tokio_util::sync::CancellationToken) {
    let (router, stop, _) = agent_with_metrics(burst, per_second);
    (router, stop)
}

fn agent_with_metrics(
    burst: f64,
    per_second: f64,
) -> (Router, tokio_util::sync::CancellationToken, Arc<Metrics>) {
    let state = Arc::new(AgentState::new("gpu1", FabricStatus::default()));
    state.set_peer(
        "127.0.0.1:9",
        PeerStatus {
            name: "gpu2".into(),
            address: "127.0.0.1:9".into(),
            state: PeerState::Unknown,
            reason: None,
            summary: "".into(),
            ip: PathStatus::default(),
            fabric: PathStatus::default(),
            fabric_loss: 0.0,
            hello: None,
            warnings: vec![],
            since_unix: 0,
            rounds: 0,
            probed: false,
            name_conflict: None,
            rails: Vec::new(),
            peer_rails: None,
        },
    );
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_key = silent.local_addr().unwrap().to_string();
    // Kept open (and never accepted from) for the test's life.
    std::mem::forget(silent);
    let mut gpu4 = state.peer("127.0.0.1:9").unwrap();
    gpu4.name = "gpu4".into();
    gpu4.address = silent_key.clone();
    state.set_peer(&silent_key, gpu4);
    let metrics = Arc::new(Metrics::new("0.1.0", state.clone()));
    let monitor = PeerMonitor::new(
        PeerProbeSettings::new("gpu1", Duration::from_secs(1), TIMEOUT),
        state,
        metrics.clone(),
        vec![],
    );
    let (tx, rx) = mpsc::channel(monitor_verify::VERIFY_QUEUE);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(monitor_verify::serve(
        monitor.verify_context(watch::channel(None).1),
        rx,
        stop.clone(),
    ));
    let gate = VerifyGate::with_limit(tx, TIMEOUT, metrics.clone(), (burst, per_second));
    (routes(gate), stop, metrics)
}

async fn post(router: &Router, body: impl Into<Body>) -> (StatusCode, Option<String>, String) {
    let request = Request::post("/v1/verify")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn known_nodes_are_probed_and_unknown_ones_listed() {
    let (router, _stop) = agent(10.0, 10.0);
    let started = Instant::now();
    let (status, _, body) = post(&router, r#"{"nodes": ["gpu2", "gpu1", "gpu7", "gpu2"]}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() < TIMEOUT * 2 + Duration::from_millis(300));
    let answer: VerifyAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.node, "gpu1");
    assert_eq!(answer.unknown, ["gpu7"]);
    assert_eq!(answer.this_node, ["gpu1"]);
    assert!(answer.probed.contains("one ping on every other rail"));
    let [gpu2] = answer.verified.as_slice() else {
        panic!("gpu2 once: {body}")
    };
    assert_eq!(gpu2.node, "gpu2");
    assert!(!gpu2.ok);
    assert_eq!(gpu2.ip.failure.as_deref(), Some("refused"));
    assert_eq!(gpu2.reason.as_deref(), Some("ip_refused"));
}

#[tokio::test]
async fn bad_bodies_are_refused_saying_why() {
    let (router, _stop, metrics) = agent_with_metrics(100.0, 100.0);
    let too_many: Vec<String> = (0..=MAX_VERIFY_NODES).map(|i| format!("n{i}")).collect();
    let too_many = serde_json::json!({ "nodes": too_many }).to_string();
    let huge = format!(r#"{{"nodes": ["{}"]}}"#, "a".repeat(MAX_VERIFY_BODY));
    for (body, want, needle) in [
        ("not json".to_owned(), StatusCode::BAD_REQUEST, "JSON"),
        (
            r#"{"nodes": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "no node",
        ),
        (
            r#"{"node": ["a"]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nodes",
        ),
        (
            r#"{"nodes": ["a b"]}"#.into(),
            StatusCode::BAD_REQUEST,
            "not a node name",
        ),
        (too_many, StatusCode::BAD_REQUEST, "at most 256"),
        (huge, StatusCode::PAYLOAD_TOO_LARGE, ""),
    ] {
        let (status, _, text) = post(&router, body.clone()).await;
        assert_eq!(status, want, "{}: {text}", &body[..body.len().min(40)]);
        assert!(text.contains(needle), "{text}");
    }
    assert_eq!(metrics.verify_requests().get(VerifyResult::BadRequest), 6);
}

#[tokio::test]
async fn a_flood_gets_the_burst_then_429_with_retry_after() {
    let (router, _stop, metrics) = agent_with_metrics(3.0, 0.5);
    let mut accepted = 0;
    for _ in 0..20 {
        let (status, retry, body) = post(&router, r#"{"nodes": ["gpu7"]}"#).await;
        match status {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let seconds: u64 = retry.expect("Retry-After").parse().unwrap();
                assert!((1..=2).contains(&seconds), "{seconds}");
                assert!(body.contains("rate limit"), "{body}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(accepted, 3);
    let counted = metrics.verify_requests();
    assert_eq!(counted.get(VerifyResult::Answered), 3);
    assert_eq!(counted.get(VerifyResult::RateLimited), 17);
    assert!(metrics
        .encode()
        .contains("efa_verify_requests_total{result=\"rate_limited\"} 17"));
}

/// Slow verifies: four run at once and eight wait; the rest are 429 `busy` at once, while
/// the bucket would let them through.
#[tokio::test]
async fn verifies_at_once_are_bounded() {
    let (router, _stop, metrics) = agent_with_metrics(100.0, 100.0);
    // Started 5 ms apart, all within the first verifies' 300 ms, so that the monitor's task
    // takes each as it comes while it has room.
    let mut started = Vec::new();
    for _ in 0..20 {
        let router = router.clone();
        started.push(tokio::spawn(async move {
            post(&router, r#"{"nodes": ["gpu4"]}"#).await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = Vec::new();
    for request in started {
        all.push(request.await.unwrap());
    }
    let answered = all.iter().filter(|r| r.0 == StatusCode::OK).count();
    let busy: Vec<_> = all
        .iter()
        .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    let waiting = monitor_verify::VERIFY_QUEUE + monitor_verify::VERIFIES_AT_ONCE;
    let statuses: Vec<u16> = all.iter().map(|r| r.0.as_u16()).collect();
    assert_eq!(answered, waiting, "{statuses:?}");
    assert_eq!(busy.len(), 20 - waiting, "{all:?}");
    assert!(busy
        .iter()
        .all(|r| r.2.contains("too many verifies waiting")));
    assert_eq!(
        metrics.verify_requests().get(VerifyResult::Busy),
        (20 - waiting) as u64
    );
    let answer: VerifyAnswer =
        serde_json::from_str(&all.iter().find(|r| r.0 == StatusCode::OK).unwrap().2).unwrap();
    assert_eq!(answer.verified[0].ip.failure.as_deref(), Some("timeout"));
}

#[tokio::test]
async fn a_stopped_monitor_is_503() {
    let (router, stop, metrics) = agent_with_metrics(10.0, 10.0);
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, body) = post(&router, r#"{"nodes": ["gpu2"]}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(metrics.verify_requests().get(VerifyResult::Unavailable), 1);
}

#[test]
fn the_bucket_refills_at_its_rate_up_to_its_capacity() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(2.0, 4.0, t0);
    assert!(bucket.take(t0).is_ok());
    assert!(bucket.take(t0).is_ok());
    let wait = bucket.take(t0).unwrap_err();
    assert_eq!(wait, Duration::from_millis(250));
    assert!(bucket.take(t0 + Duration::from_millis(249)).is_err());
    assert!(bucket.take(t0 + Duration::from_millis(500)).is_ok());
    // A long quiet spell fills it to its capacity, no more.
    let later = t0 + Duration::from_secs(60);
    assert!(bucket.take(later).is_ok());
    assert!(bucket.take(later).is_ok());
    assert!(bucket.take(later).is_err());
}

#[test]
fn node_names() {
    assert!(is_node_name("ip-10-0-1-2.ec2.internal"));
    assert!(is_node_name("198.18.0.2:9476"));
    assert!(!is_node_name(""));
    assert!(!is_node_name("a b"));
    assert!(!is_node_name("a\nb"));
    assert!(!is_node_name(&"a".repeat(254)));
}
