//! Handlers through the router, without a socket.

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::hello::{Hello, HelloFabric};
use crate::probe::{AddressReport, FailureReason, ProbeFailure, TargetReport, TargetSpec};
use crate::state::{FabricStatus, PathFailure, PathStatus, PeerStatus};
use crate::verdict::{DiagnosisReason, PeerState};

const HOSTILE_NAME: &str = "<script>alert(1)</script>";
const HOSTILE_ERROR: &str = "fi_cq_readerr: <script>document.location='//x'</script> & co";

fn app() -> AppState {
    let fabric = FabricStatus {
        provider: "efa".into(),
        available: false,
        error: Some("no EFA device <script>".into()),
        devices: vec![],
    };
    let hello = Hello {
        node_name: "gpu-node-1".into(),
        agent_version: "0.1.0".into(),
        instance_id: 7,
        fabric: HelloFabric {
            provider: "efa".into(),
            available: false,
            error: None,
            endpoints: vec![],
        },
        topology: None,
        node_actions: None,
    };
    let state = Arc::new(AgentState::new("gpu-node-1", fabric));
    AppState {
        metrics: Arc::new(Metrics::new("0.1.0", state.clone())),
        state,
        hello: Arc::new(RwLock::new(hello)),
    }
}

fn dropped_peer(name: &str) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        address: "198.18.0.2:9464".into(),
        state: PeerState::FabricDropped,
        reason: Some(DiagnosisReason::ProviderError),
        summary: "IP works but the fabric path fails: check the security group".into(),
        ip: PathStatus {
            reachable: Some(true),
            rtt_seconds: Some(0.0004),
            last_failure: None,
            last_error: None,
            provider_reason: None,
        },
        fabric: PathStatus {
            reachable: Some(false),
            rtt_seconds: None,
            last_failure: Some(PathFailure::ProviderError),
            last_error: Some(HOSTILE_ERROR.into()),
            provider_reason: None,
        },
        fabric_loss: 1.0,
        hello: None,
        warnings: Vec::new(),
        since_unix: 1,
        rounds: 4,
        probed: true,
        name_conflict: None,
        rails: Vec::new(),
        peer_rails: None,
    }
}

async fn get(app: &AppState, uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::get(uri);
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let response = router(app.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn readyz_waits_for_the_first_round() {
    let app = app();
    let (status, _, body) = get(&app, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("first probe round"), "{body}");
    app.state.mark_ready();
    let (status, _, _) = get(&app, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get(&app, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
}

#[tokio::test]
async fn peers_as_json() {
    let app = app();
    let (_, _, body) = get(&app, "/v1/peers", None).await;
    assert_eq!(body, "[]");
    app.state
        .set_peer("198.18.0.2:9464", dropped_peer("gpu-node-2"));
    let (status, content_type, body) = get(&app, "/v1/peers", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let peers = json.as_array().expect("an array");
    assert_eq!(peers.len(), 1);
    let p = &peers[0];
    assert_eq!(p["name"], "gpu-node-2");
    assert_eq!(p["state"], "fabric_dropped");
    assert_eq!(p["reason"], "provider_error");
    assert!(p["summary"].as_str().unwrap().contains("security group"));
    assert_eq!(p["ip"]["reachable"], true);
    assert_eq!(p["ip"]["rtt_seconds"], 0.0004);
    assert_eq!(p["fabric"]["reachable"], false);
    assert_eq!(p["fabric"]["rtt_seconds"], serde_json::Value::Null);
    assert_eq!(p["fabric"]["last_failure"], "provider_error");
    assert_eq!(p["fabric"]["last_error"], HOSTILE_ERROR);
}

#[tokio::test]
async fn hello_and_targets_as_json() {
    let app = app();
    let (status, _, body) = get(&app, "/v1/hello", None).await;
    assert_eq!(status, StatusCode::OK);
    let hello = Hello::parse(body.as_bytes()).expect("our own hello parses as a peer's");
    assert_eq!(hello.node_name, "gpu-node-1");

    app.state.set_targets(vec![TargetReport {
        spec: TargetSpec::parse("nats=nats.svc:4222").unwrap(),
        addresses: Ok(vec![AddressReport {
            address: "198.18.1.10:4222".parse().unwrap(),
            result: Err(ProbeFailure::new(FailureReason::Timeout, "no answer")),
        }]),
        addresses_skipped: 0,
    }]);
    let (_, _, body) = get(&app, "/v1/targets", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json[0]["target"], "nats");
    assert_eq!(json[0]["ok"], false);
    assert_eq!(json[0]["addresses"][0]["reason"], "timeout");
}

#[tokio::test]
async fn metrics_in_the_format_asked_for() {
    let app = app();
    app.state
        .set_peer("198.18.0.2:9464", dropped_peer("gpu-node-2"));
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, content_type, body) = get(&app, "/metrics", Some(prometheus)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.contains("efa_peer_state{peer=\"gpu-node-2\",state=\"fabric_dropped\"} 1\n"));
    assert!(body.ends_with("# EOF\n"));

    let (status, content_type, body) = get(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(body.contains("efa_peer_state{peer=\"gpu-node-2\",state=\"fabric_dropped\"} 1\n"));
    assert!(body.contains("# TYPE efa_probes_total counter\n"));
    assert!(!body.contains("# EOF"));
}

#[tokio::test]
async fn status_page_escapes_what_peers_and_servers_say() {
    let app = app();
    app.state
        .set_peer("198.18.0.2:9464", dropped_peer(HOSTILE_NAME));
    app.state.set_targets(vec![TargetReport {
        spec: TargetSpec::parse("prom=prometheus.svc:9090").unwrap(),
        addresses: Ok(vec![AddressReport {
            address: "198.18.1.20:9090".parse().unwrap(),
            result: Err(ProbeFailure::new(
                FailureReason::HttpStatus,
                "GET /-/ready answered 503: <script>x()</script>",
            )),
        }]),
        addresses_skipped: 0,
    }]);
    let (status, content_type, page) = get(&app, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(!page.contains("<script"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("document.location=&#39;//x&#39;&lt;/script&gt; &amp; co"));
    assert!(page.contains("answered 503: &lt;script&gt;x()&lt;/script&gt;"));
    assert!(page.contains("no EFA device &lt;script&gt;"));
    // What an operator looks for first.
    assert!(page.contains("gpu-node-1"));
    assert!(page.contains("NOT READY"));
    assert!(page.contains("1 of 1 peers not healthy (1 fabric_dropped)"));
    assert!(page.contains("1 of 1 target addresses failing"));
    assert!(page.contains(">FAIL<"));
}

#[tokio::test]
async fn a_second_claimant_of_a_name_is_shown_with_its_address_and_the_holders() {
    let app = app();
    let (holder, claimant) = ("198.18.0.2:9464", "198.18.0.3:9464");
    for (address, instance_id) in [(holder, 1), (claimant, 2)] {
        let mut peer = dropped_peer(address);
        peer.address = address.into();
        app.state.set_peer(address, peer);
        app.state.claim_name(address, "gpu-twin", instance_id);
    }
    let (_, _, page) = get(&app, "/", None).await;
    assert_eq!(page.matches("name_conflict").count(), 1, "{page}");
    assert!(page.contains(&format!("held by <span class=\"mono\">{holder}</span>")));
    let (_, _, body) = get(&app, "/v1/peers", None).await;
    let peers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let conflict = &peers[1]["name_conflict"];
    assert_eq!(peers[1]["address"], claimant, "{body}");
    assert_eq!(conflict["held_by"], holder, "{body}");
    assert_eq!(conflict["instance_id"], 2, "{body}");
    assert!(peers[0].get("name_conflict").is_none(), "{body}");
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let app = app();
    for uri in ["/nope", "/v1", "/metrics/extra", "/v1/peers/x"] {
        let (status, _, _) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

/// One `/metrics` scrape through `router`, with the exposition format `accept` asks for.
async fn scrape(router: &Router, accept: Option<&str>) -> String {
    let mut request = Request::get("/metrics");
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_flood_shares_one_encoding_per_format_and_later_scrapes_see_fresh_data() {
    const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0";
    let app = app();
    app.state
        .set_peer("198.18.0.2:9464", dropped_peer("gpu-node-2"));
    let scrapes = Arc::new(ScrapeCache::default());
    let router = router_sharing(app.clone(), scrapes.clone());

    // 64 scrapers at once, half of each format.
    let flood: Vec<_> = (0..64)
        .map(|i| {
            let router = router.clone();
            tokio::spawn(async move {
                let accept = (i % 2 == 0).then_some(OPENMETRICS);
                (accept.is_some(), scrape(&router, accept).await)
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut bodies = Vec::new();
    for scraper in flood {
        bodies.push(scraper.await.unwrap());
    }
    let took = started.elapsed();
    let encodes = scrapes.encodes();
    // One per format, unless the flood outlasted a reuse window (a loaded machine).
    let windows = 1 + (took.as_millis() / scrape_cache::MIN_REUSE.as_millis()) as u64;
    assert!(
        (2..=2 * windows).contains(&encodes),
        "{encodes} encodes for 64 scrapes in {took:?}"
    );
    for (openmetrics, body) in &bodies {
        assert!(body.contains("efa_peer_state{peer=\"gpu-node-2\",state=\"fabric_dropped\"} 1\n"));
        assert_eq!(
            body.ends_with("# EOF\n"),
            *openmetrics,
            "each format its own body"
        );
    }

    // After the window, a scrape encodes again and sees what changed since.
    let mut healed = dropped_peer("gpu-node-2");
    healed.state = PeerState::Healthy;
    healed.reason = None;
    app.state.set_peer("198.18.0.2:9464", healed);
    let window = scrapes
        .reuse_window(crate::metrics::ExpositionFormat::PrometheusText)
        .await
        .unwrap();
    tokio::time::sleep(window + std::time::Duration::from_millis(20)).await;
    let before = scrapes.encodes();
    let body = scrape(&router, None).await;
    assert_eq!(scrapes.encodes(), before + 1);
    assert!(
        body.contains("efa_peer_state{peer=\"gpu-node-2\",state=\"healthy\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("efa_peer_state{peer=\"gpu-node-2\",state=\"fabric_dropped\"} 0\n"),
        "{body}"
    );
}

#[tokio::test]
async fn a_peer_with_one_rail_dropped_shows_each_rail_in_the_list_and_on_the_page() {
    use crate::state::RailStatus;
    let app = app();
    let rail = |rail: u16, reachable: bool| RailStatus {
        rail,
        domain: format!("rxd{rail}").into(),
        peer_domain: format!("peer-rxd{rail}").into(),
        path: PathStatus {
            reachable: Some(reachable),
            rtt_seconds: reachable.then_some(0.00002),
            last_failure: (!reachable).then_some(PathFailure::Timeout),
            last_error: (!reachable).then(|| "no answer before the deadline".into()),
            provider_reason: None,
        },
        reason: (!reachable).then_some(DiagnosisReason::SecurityGroup),
    };
    let mut peer = dropped_peer("gpu-node-2");
    peer.reason = Some(DiagnosisReason::SecurityGroup);
    peer.rails = vec![rail(0, true), rail(1, false)];
    peer.peer_rails = Some(2);
    app.state.set_peer("198.18.0.2:9464", peer);
    let (_, _, body) = get(&app, "/v1/peers", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rails = &json[0]["rails"];
    assert_eq!(json[0]["peer_rails"], 2);
    assert_eq!(rails[0]["rail"], 0);
    assert_eq!(rails[0]["reachable"], true);
    assert_eq!(rails[0]["reason"], serde_json::Value::Null);
    assert_eq!(rails[1]["rail"], 1);
    assert_eq!(rails[1]["domain"], "rxd1");
    assert_eq!(rails[1]["peer_domain"], "peer-rxd1");
    assert_eq!(rails[1]["reachable"], false);
    assert_eq!(rails[1]["last_failure"], "timeout");
    assert_eq!(rails[1]["reason"], "security_group");

    let (_, _, page) = get(&app, "/", Some("text/html")).await;
    assert!(page.contains("rails 1/2"), "{page}");
    assert!(
        page.contains(
            "<b>rail 1</b> <span class=\"mono\">rxd1 → peer-rxd1</span> <span \
             class=\"mono\">security_group</span>: no answer before the deadline"
        ),
        "{page}"
    );
    assert!(!page.contains("<b>rail 0</b>"), "{page}");
}

/// A peer whose rail 1 drops (issue 12): what `/v1/peers` lists rail by rail is what
/// `/metrics` says of the same peer, since both read the state.
#[tokio::test]
async fn rails_in_v1_peers_agree_with_the_rail_metrics() {
    let app = app();
    let mut peer = dropped_peer("gpu-node-2");
    let rail = |rail: u16, reachable: bool| crate::state::RailStatus {
        rail,
        domain: format!("rdmap{rail}-rdm").into(),
        peer_domain: format!("rdmap{rail}-rdm").into(),
        path: PathStatus {
            reachable: Some(reachable),
            rtt_seconds: reachable.then_some(0.00002),
            last_failure: (!reachable).then_some(PathFailure::Timeout),
            last_error: None,
            provider_reason: None,
        },
        reason: (!reachable).then_some(DiagnosisReason::SecurityGroup),
    };
    peer.rails = vec![rail(0, true), rail(1, false)];
    peer.peer_rails = Some(2);
    app.state.set_peer("198.18.0.2:9464", peer);

    let (_, _, body) = get(&app, "/v1/peers", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rails = json[0]["rails"].as_array().expect("rails listed");
    let answering = rails.iter().filter(|r| r["reachable"] == true).count();
    let dropped: Vec<u64> = rails
        .iter()
        .filter(|r| r["reachable"] == false)
        .map(|r| r["rail"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (rails.len(), answering, dropped.as_slice()),
        (2, 1, &[1][..])
    );

    let (_, _, metrics) = get(&app, "/metrics", None).await;
    let has = |line: &str| metrics.lines().any(|l| l == line);
    assert!(
        has(&format!(
            r#"efa_peer_rails{{peer="gpu-node-2"}} {}"#,
            rails.len()
        )),
        "{metrics}"
    );
    assert!(has(&format!(
        r#"efa_peer_rails_reachable{{peer="gpu-node-2"}} {answering}"#
    )));
    let unreachable: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("efa_peer_rail_unreachable{"))
        .collect();
    let want: Vec<String> = dropped
        .iter()
        .map(|r| format!(r#"efa_peer_rail_unreachable{{peer="gpu-node-2",rail="{r}"}} 1"#))
        .collect();
    assert_eq!(unreachable, want);
    // The fabric path as /v1/peers gives it, not reachable with a rail dropped.
    assert_eq!(json[0]["fabric"]["reachable"], false);
    assert!(has(r#"efa_peer_reachable{peer="gpu-node-2"} 0"#));
}
