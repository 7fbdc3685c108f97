//! Monitor tests: the pure parts directly, the loop against peer agents on loopback.

use super::job::confirm_deadline;
use super::observe::{fabric_result, rtt_of};
use super::*;
use crate::fabric_ping::ProbeOutcome;
use crate::metrics::{PerPeerMetrics, PerPeerMode};
use crate::state::FabricStatus;
use crate::verdict::FabricObservation;
use strum::VariantArray;

#[test]
fn confirmations_wait_four_recent_answer_times_within_bounds() {
    let ms = Duration::from_millis;
    let timeout = ms(500);
    // Never answered: the full timeout.
    assert_eq!(confirm_deadline(None, timeout), timeout);
    // A fast peer: not below the floor, which an idle responder's poll needs.
    assert_eq!(confirm_deadline(Some(ms(1)), timeout), MIN_CONFIRM_DEADLINE);
    assert_eq!(confirm_deadline(Some(ms(40)), timeout), ms(160));
    // A slow one: never beyond the timeout.
    assert_eq!(confirm_deadline(Some(ms(300)), timeout), timeout);
}

#[test]
fn only_a_pairs_rtt_is_a_measurement() {
    let pong = |warm| ProbeOutcome::Pong {
        rtt: Duration::from_micros(20),
        cold_rtt: Duration::from_millis(12),
        dwell: Duration::from_micros(3),
        responder_id: 1,
        warm,
    };
    assert_eq!(rtt_of(&pong(true)), Some(Duration::from_micros(20)));
    assert_eq!(rtt_of(&pong(false)), None);
    // A single ping's answer reports the latest measured RTT, else its own.
    let measured = Some(Duration::from_micros(25));
    let (obs, status, _) = fabric_result(&pong(false), measured, None);
    assert_eq!(obs, FabricObservation::Answered(Duration::from_micros(25)));
    assert_eq!(status.rtt_seconds, Some(25e-6));
    let (obs, _, _) = fabric_result(&pong(true), measured, None);
    assert_eq!(obs, FabricObservation::Answered(Duration::from_micros(20)));
}

#[tokio::test]
async fn a_departed_peer_loses_its_state_and_every_series() {
    let state = Arc::new(AgentState::new("me", FabricStatus::default()));
    let metrics = Arc::new(Metrics::new("test", state.clone()));
    let settings =
        PeerProbeSettings::new("me", Duration::from_millis(300), Duration::from_millis(200));
    let mut monitor = PeerMonitor::new(settings, state.clone(), metrics.clone(), vec![]);
    // Nothing listens on these loopback ports: both peers end up down, with series.
    let peers = vec!["127.0.0.1:9".to_owned(), "127.0.0.1:19".to_owned()];
    let now = std::time::Instant::now();
    monitor.set_peers(&crate::discovery::static_set(&peers, now), Duration::ZERO);
    monitor.run_round().await;
    monitor.run_round().await;
    let text = metrics.encode();
    assert!(text.contains(r#"peer="127.0.0.1:19""#), "{text}");
    assert_eq!(state.peers().len(), 2);

    monitor.set_peers(
        &crate::discovery::static_set(&peers[..1], now),
        Duration::ZERO,
    );
    let text = metrics.encode();
    assert!(
        !text.contains(r#"peer="127.0.0.1:19""#),
        "stale series left: {text}"
    );
    assert!(text.contains(r#"peer="127.0.0.1:9""#));
    assert_eq!(state.peers().len(), 1);
    assert!(text.contains("efa_peers 1"), "{text}");
}

/// A peer agent on loopback: the agent's own router, serving a hello the test can rename.
struct PeerAgent {
    address: String,
    hello: Arc<std::sync::RwLock<Hello>>,
    server: tokio::task::JoinHandle<()>,
}

/// The hello of an agent without a fabric.
fn hello(name: &str) -> Arc<std::sync::RwLock<Hello>> {
    Arc::new(std::sync::RwLock::new(Hello {
        node_name: name.to_owned(),
        agent_version: "test".into(),
        instance_id: 7,
        fabric: crate::hello::HelloFabric {
            provider: "none".into(),
            available: false,
            error: None,
            endpoints: vec![],
        },
        topology: None,
        node_actions: None,
    }))
}

async fn peer_agent(name: &str) -> PeerAgent {
    let hello = hello(name);
    let state = Arc::new(AgentState::new(name, FabricStatus::default()));
    let app = crate::http::AppState {
        metrics: Arc::new(Metrics::new("test", state.clone())),
        state,
        hello: hello.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, crate::http::router(app)).await;
    });
    PeerAgent {
        address,
        hello,
        server,
    }
}

/// GET `uri` from the observer's router, as a scraper or a tool would.
async fn get(app: &crate::http::AppState, uri: &str) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = crate::http::router(app.clone())
        .oneshot(request)
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of `name{labels}` in the text exposition (labels in encoding order).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

/// `/metrics` says what `/v1/peers` says, in the observer's per-peer mode: every listed
/// peer this node probes, in a state the mode exports, has its state and IP path under its
/// current name, no other peer name has any series, and the aggregates count the listed
/// peers (`efa_peers_by_state` the probed ones). Returns the peers listed, as (name, state).
async fn assert_agree(app: &crate::http::AppState, mode: PerPeerMode) -> Vec<(String, String)> {
    let metrics = get(app, "/metrics").await;
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&get(app, "/v1/peers").await).unwrap();
    let probed: Vec<bool> = listed
        .iter()
        .map(|p| p["probed"].as_bool().unwrap())
        .collect();
    let listed: Vec<(String, String, Option<bool>)> = listed
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
                p["ip"]["reachable"].as_bool(),
            )
        })
        .collect();
    let mut exported = std::collections::BTreeSet::new();
    for ((name, state, ip), _) in listed.iter().zip(&probed).filter(|(_, p)| **p) {
        let peer_state = PeerState::VARIANTS
            .iter()
            .copied()
            .find(|s| s.as_str() == state)
            .unwrap();
        if !mode.exports(peer_state) {
            continue;
        }
        exported.insert(name.clone());
        for s in PeerState::VARIANTS.iter().copied() {
            assert_eq!(
                sample(
                    &metrics,
                    "efa_peer_state",
                    &format!(r#"peer="{name}",state="{}""#, s.as_str())
                ),
                Some(f64::from(u8::from(s == peer_state))),
                "{name} is {state} in /v1/peers:\n{metrics}"
            );
        }
        assert_eq!(
            sample(
                &metrics,
                "efa_peer_ip_reachable",
                &format!(r#"peer="{name}""#)
            ),
            ip.map(|ok| f64::from(u8::from(ok))),
            "{metrics}"
        );
    }
    let with_series: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.split_once(r#"peer=""#))
        .map(|(_, rest)| rest.split('"').next().unwrap().to_owned())
        .collect();
    assert_eq!(with_series, exported, "{mode:?}:\n{metrics}");
    assert_eq!(
        sample(&metrics, "efa_peers", ""),
        Some(listed.len() as f64),
        "{metrics}"
    );
    for s in PeerState::VARIANTS.iter().copied() {
        let n = listed
            .iter()
            .zip(&probed)
            .filter(|((_, state, _), probed)| **probed && state == s.as_str())
            .count();
        assert_eq!(
            sample(
                &metrics,
                "efa_peers_by_state",
                &format!(r#"state="{}""#, s.as_str())
            ),
            Some(n as f64),
            "{metrics}"
        );
    }
    listed.into_iter().map(|(n, s, _)| (n, s)).collect()
}

/// A peer added, answering, renamed, gone silent and gone: after every step `/metrics` and
/// `/v1/peers` tell the same story, in every per-peer mode.
#[tokio::test]
async fn metrics_and_the_peer_list_agree_through_a_peers_life() {
    for setting in PerPeerMetrics::VARIANTS.iter().copied() {
        let mode = setting.resolve(1);
        let state = Arc::new(AgentState::new("observer", FabricStatus::default()));
        let metrics = Arc::new(Metrics::new("test", state.clone()));
        metrics.set_per_peer_mode(setting);
        let app = crate::http::AppState {
            state: state.clone(),
            metrics: metrics.clone(),
            hello: hello("observer"),
        };
        let settings = PeerProbeSettings::new(
            "observer",
            Duration::from_millis(300),
            Duration::from_millis(200),
        );
        let mut monitor = PeerMonitor::new(settings, state.clone(), metrics.clone(), vec![]);
        let peer = peer_agent("node-a").await;
        let set = crate::discovery::static_set(
            std::slice::from_ref(&peer.address),
            std::time::Instant::now(),
        );

        // Added: listed before its first probe, without series.
        monitor.set_peers(&set, Duration::ZERO);
        assert_agree(&app, mode).await;
        // Answering (IP only: no fabric here): `unknown`, under its node name.
        monitor.run_round().await;
        let listed = assert_agree(&app, mode).await;
        assert_eq!(
            listed,
            [("node-a".to_owned(), "unknown".to_owned())],
            "{setting}"
        );

        // Renamed: nothing left under the old name.
        peer.hello.write().unwrap().node_name = "node-b".into();
        monitor.run_round().await;
        let listed = assert_agree(&app, mode).await;
        assert_eq!(
            listed,
            [("node-b".to_owned(), "unknown".to_owned())],
            "{setting}"
        );

        // Gone silent (nothing listens): `down` once its hysteresis agrees.
        peer.server.abort();
        let _ = peer.server.await;
        for _ in 0..3 {
            monitor.run_round().await;
            assert_agree(&app, mode).await;
        }
        let listed = assert_agree(&app, mode).await;
        assert_eq!(
            listed,
            [("node-b".to_owned(), "down".to_owned())],
            "{setting}"
        );
        if mode != PerPeerMode::None {
            assert!(get(&app, "/metrics").await.contains(r#"peer="node-b""#));
        }

        // Gone: neither lists it any more.
        monitor.set_peers(&crate::discovery::PeerSet::new(), Duration::ZERO);
        assert!(assert_agree(&app, mode).await.is_empty(), "{setting}");
    }
}
