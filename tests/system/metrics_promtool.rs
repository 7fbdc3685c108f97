//! What `/metrics` serves, checked by Prometheus's own tools.
//!
//! - A client that does not ask for OpenMetrics (curl, `promtool check metrics`) gets the
//!   Prometheus text format; `promtool check metrics` must find no problem in it, lint
//!   included (names, help, units, counter suffixes).
//! - The same metrics served as OpenMetrics are what promtool (a text-format reader) rejects:
//!   the reason `/metrics` negotiates, and the proof this check can fail.
//! - Prometheus itself scrapes the agent's router over loopback, negotiates OpenMetrics,
//!   and stores the series without a scrape error.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`; `scripts/setup.sh`).
//! Traffic stays on 127.0.0.1.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use efaprobe::hello::{Hello, HelloFabric};
use efaprobe::http::{router, AppState};
use efaprobe::inventory::DeviceCounters;
use efaprobe::metrics::{Metrics, ProbePath, ProbeResult, UNKNOWN_GROUP};
use efaprobe::probe::http::http_get;
use efaprobe::probe::nats::NatsServerInfo;
use efaprobe::probe::tcp::connect_tcp;
use efaprobe::probe::{
    AddressReport, CheckSuccess, FailureReason, ProbeFailure, TargetReport, TargetSpec,
};
use efaprobe::state::{
    AgentState, FabricDevice, FabricStatus, PathFailure, PathStatus, PeerStatus, RailStatus,
};
use efaprobe::topology::{NetworkInterface, Topology};
use efaprobe::verdict::{DiagnosisReason, PeerState};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Prometheus 2.x's scrape `Accept` header, verbatim.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// How long Prometheus may take to start and scrape.
const PROMETHEUS_LIMIT: Duration = Duration::from_secs(60);

fn fabric() -> FabricStatus {
    FabricStatus {
        provider: "efa".into(),
        available: true,
        error: None,
        devices: vec![
            FabricDevice {
                rail: 0,
                domain: "rdmap0s6-rdm".into(),
                provider: "efa".into(),
                address: "fi_addr_efa://[fe80::4a1:2bff:fe3c:1]:1:0x1234".into(),
                mac: Some("0a:1b:2c:3d:4e:01".into()),
            },
            FabricDevice {
                rail: 1,
                domain: "rdmap0s7-rdm".into(),
                provider: "efa".into(),
                address: "fi_addr_efa://[fe80::4a1:2bff:fe3c:2]:1:0x5678".into(),
                mac: None,
            },
        ],
    }
}

fn path(
    reachable: bool,
    rtt_seconds: Option<f64>,
    failure: Option<(PathFailure, &str)>,
) -> PathStatus {
    PathStatus {
        reachable: Some(reachable),
        rtt_seconds,
        last_failure: failure.map(|(reason, _)| reason),
        last_error: failure.map(|(_, message)| message.to_owned()),
        provider_reason: None,
    }
}

/// Rails 0 and 1 of a peer, answering or not.
fn rails(answering: [bool; 2]) -> Vec<RailStatus> {
    (0u16..)
        .zip(answering)
        .map(|(rail, reachable)| RailStatus {
            rail,
            domain: format!("rdmap0s{}-rdm", 6 + rail).into(),
            peer_domain: format!("rdmap0s{}-rdm", 6 + rail).into(),
            path: path(
                reachable,
                reachable.then_some(0.000_018),
                (!reachable).then_some((PathFailure::Timeout, "no answer before the deadline")),
            ),
            reason: (!reachable).then_some(DiagnosisReason::SecurityGroup),
        })
        .collect()
}

/// Two peers in different states (on two rails; the dropped one's rail 1 drops), a NATS target with one of its two addresses failing, an
/// unresolved Prometheus target, probes on both paths, and a ready agent.
fn realistic_app() -> AppState {
    let fabric = fabric();
    let state = Arc::new(AgentState::new("gpu-node-1.ec2.internal", fabric.clone()));
    let metrics = Arc::new(Metrics::new("0.1.0", state.clone()));

    let healthy = PeerStatus {
        name: "gpu-node-2.ec2.internal".into(),
        address: "198.18.0.2:9464".into(),
        state: PeerState::Healthy,
        reason: None,
        summary: "Both paths answer.".into(),
        ip: path(true, Some(0.000_412), None),
        fabric: path(true, Some(0.000_018), None),
        fabric_loss: 0.0,
        hello: None,
        warnings: Vec::new(),
        since_unix: 1_700_000_000,
        rounds: 40,
        probed: true,
        name_conflict: None,
        rails: rails([true, true]),
        peer_rails: Some(2),
    };
    let dropped = PeerStatus {
        name: "gpu-node-3.ec2.internal".into(),
        address: "198.19.0.3:9464".into(),
        state: PeerState::FabricDropped,
        reason: Some(DiagnosisReason::FabricTimeout),
        summary: "IP works but fabric probes go unanswered: different subnets?".into(),
        ip: path(true, Some(0.000_530), None),
        fabric: path(
            false,
            None,
            Some((PathFailure::Timeout, "no answer before the deadline")),
        ),
        fabric_loss: 1.0,
        hello: None,
        warnings: Vec::new(),
        since_unix: 1_700_000_100,
        rounds: 40,
        probed: true,
        name_conflict: None,
        rails: rails([true, false]),
        peer_rails: Some(2),
    };
    for peer in [&healthy, &dropped] {
        state.set_peer(&peer.address, peer.clone());
    }
    for _ in 0..5 {
        metrics.record_probe_in_group(
            ProbePath::Ip,
            UNKNOWN_GROUP,
            ProbeResult::Ok,
            Some(Duration::from_micros(412)),
        );
        metrics.record_probe_in_group(
            ProbePath::Fabric,
            UNKNOWN_GROUP,
            ProbeResult::Ok,
            Some(Duration::from_micros(18)),
        );
        metrics.record_probe_in_group(ProbePath::Fabric, UNKNOWN_GROUP, ProbeResult::Timeout, None);
    }
    for rail in 0..2 {
        metrics.record_rail_probe(rail, ProbeResult::Ok);
    }
    metrics.record_rail_probe(1, ProbeResult::Timeout);
    // Probes of a peer whose topology group is known.
    metrics.record_probe_in_group(
        ProbePath::Fabric,
        "pg:cluster-a",
        ProbeResult::Ok,
        Some(Duration::from_micros(17)),
    );

    let targets = vec![
        TargetReport {
            spec: TargetSpec::parse("nats=nats.system.svc.cluster.local:4222").unwrap(),
            addresses: Ok(vec![
                AddressReport {
                    address: "198.18.10.5:4222".parse().unwrap(),
                    result: Ok(CheckSuccess {
                        connect_rtt: Duration::from_micros(350),
                        total: Duration::from_micros(900),
                        http_status: None,
                        nats: Some(NatsServerInfo {
                            server_id: "NDXYZ".into(),
                            server_name: "nats-0".into(),
                            version: "2.9.10".into(),
                            jetstream: true,
                        }),
                    }),
                },
                AddressReport {
                    address: "198.18.11.5:4222".parse().unwrap(),
                    result: Err(ProbeFailure::new(
                        FailureReason::Timeout,
                        "connect to 198.18.11.5:4222: no answer (2s timeout)",
                    )),
                },
            ]),
            addresses_skipped: 0,
        },
        TargetReport {
            spec: TargetSpec::parse("prometheus=prometheus.monitoring.svc:9090").unwrap(),
            addresses: Err(ProbeFailure::new(
                FailureReason::Dns,
                "resolve prometheus.monitoring.svc: NXDOMAIN",
            )),
            addresses_skipped: 0,
        },
    ];
    metrics.set_targets(&targets);
    state.set_targets(targets);
    state.mark_ready();
    metrics.set_ready(true);
    metrics.set_topology(Some(&Topology {
        instance_id: "i-0123456789abcdef0".into(),
        instance_type: "p5.48xlarge".into(),
        availability_zone: "us-east-1a".into(),
        availability_zone_id: Some("use1-az4".into()),
        placement_group: None,
        primary_mac: "0e:00:00:00:00:01".into(),
        interfaces: vec![NetworkInterface {
            mac: "0e:00:00:00:00:01".into(),
            subnet_id: "subnet-0123456789abcdef0".into(),
            vpc_id: "vpc-0123456789abcdef0".into(),
            security_group_ids: vec!["sg-0123456789abcdef0".into()],
            subnet_cidr: Some("10.0.0.0/20".into()),
        }],
    }));
    let counters = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), *value))
            .collect()
    };
    metrics.set_device_counters(&[
        DeviceCounters {
            device: "rdmap0s6".into(),
            port: "1".into(),
            counters: counters(&[("rx_drops", 0), ("tx_bytes", 123_456_789)]),
        },
        DeviceCounters {
            device: "rdmap0s7".into(),
            port: "1".into(),
            counters: counters(&[("rx_drops", 2), ("tx_bytes", u64::MAX)]),
        },
    ]);

    let hello = Hello {
        node_name: "gpu-node-1.ec2.internal".into(),
        agent_version: "0.1.0".into(),
        instance_id: 1,
        fabric: HelloFabric {
            provider: "efa".into(),
            available: true,
            error: None,
            endpoints: vec![],
        },
        topology: None,
        node_actions: None,
    };
    AppState {
        state,
        metrics,
        hello: Arc::new(RwLock::new(hello)),
    }
}

/// `GET /metrics` through the router: (content type, body).
async fn scrape(app: &AppState, accept: Option<&str>) -> (String, String) {
    let mut request = Request::get("/metrics");
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let response = router(app.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(response.status().is_success());
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (content_type, String::from_utf8(body.to_vec()).unwrap())
}

/// Runs `promtool check metrics` on `text`: (exit code, everything it printed).
fn promtool_check(text: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the prometheus package (scripts/setup.sh)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), printed)
}

#[tokio::test]
async fn what_curl_gets_passes_promtool() {
    let app = realistic_app();
    let (content_type, text) = scrape(&app, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    // The data made it in: these are the series the check is about.
    for needle in [
        "efa_peer_state{peer=\"gpu-node-3.ec2.internal\",state=\"fabric_dropped\"} 1\n",
        "efa_peer_diagnosis{peer=\"gpu-node-3.ec2.internal\",reason=\"fabric_timeout\"} 1\n",
        "efa_target_up{target=\"nats\",address=\"198.18.11.5:4222\"} 0\n",
        "efa_target_failures_total{target=\"nats\",address=\"198.18.11.5:4222\",reason=\"timeout\"} 1\n",
        "efa_target_up{target=\"prometheus\",address=\"prometheus.monitoring.svc:9090\"} 0\n",
        "efa_probe_rtt_seconds_bucket{le=\"+Inf\",path=\"fabric\",group=\"unknown\"} 5\n",
        "efa_fabric_device_info{provider=\"efa\",domain=\"rdmap0s7-rdm\",",
        "efa_node_topology_info{instance_id=\"i-0123456789abcdef0\",instance_type=\"p5.48xlarge\",availability_zone=\"us-east-1a\",subnet=\"subnet-0123456789abcdef0\",vpc=\"vpc-0123456789abcdef0\",placement_group=\"\"} 1\n",
        "efa_node_topology_available 1\n",
        "efa_probes_total{path=\"fabric\",group=\"pg:cluster-a\",result=\"ok\"} 1\n",
        "efa_peers_by_state{state=\"fabric_dropped\"} 1\n",
        "efa_peers_by_state{state=\"down\"} 0\n",
        "efa_per_peer_metrics_mode{mode=\"all\"} 1\n",
        "efa_per_peer_metrics_mode{mode=\"unhealthy\"} 0\n",
        "# TYPE efa_device_hw_stat_total counter\n",
        "efa_device_hw_stat_total{device=\"rdmap0s7\",port=\"1\",counter=\"tx_bytes\"} 18446744073709551615\n",
        "efa_fabric_rails 2\n",
        "efa_rail_info{rail=\"0\",domain=\"rdmap0s6-rdm\",mac=\"0a:1b:2c:3d:4e:01\"} 1\n",
        "efa_rail_info{rail=\"1\",domain=\"rdmap0s7-rdm\",mac=\"\"} 1\n",
        "efa_rail_probes_total{rail=\"1\",result=\"timeout\"} 1\n",
        "efa_peer_rails{peer=\"gpu-node-3.ec2.internal\"} 2\n",
        "efa_peer_rails_reachable{peer=\"gpu-node-3.ec2.internal\"} 1\n",
        "efa_peer_rail_unreachable{peer=\"gpu-node-3.ec2.internal\",rail=\"1\"} 1\n",
        "efa_node_rail_unreachable_peers{rail=\"1\"} 1\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let (code, printed) = promtool_check(&text);
    assert_eq!(
        (code, printed.as_str()),
        (0, ""),
        "promtool check metrics found problems in:\n{text}"
    );
}

#[tokio::test]
async fn openmetrics_read_as_text_is_what_promtool_rejects() {
    let app = realistic_app();
    let (content_type, openmetrics) = scrape(&app, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let (code, printed) = promtool_check(&openmetrics);
    assert_ne!(code, 0, "promtool accepted OpenMetrics counters as text");
    assert!(
        printed.contains("efa_probes_total no help text"),
        "{printed}"
    );
}

/// GET `path` from the Prometheus at `addr`, parsed as JSON.
async fn prometheus_api(addr: SocketAddr, path: &str) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let connection = connect_tcp(addr, deadline).await.ok()?;
    let response = http_get(
        connection.stream,
        &addr.to_string(),
        path,
        1 << 20,
        deadline,
    )
    .await
    .ok()?;
    serde_json::from_slice(&response.body).ok()
}

/// A child killed and reaped when the test ends, however it ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn prometheus_scrapes_openmetrics_without_error() {
    // Serve the router on loopback, noting the Accept header of every scrape.
    let accepts = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = accepts.clone();
    let app = router(realistic_app()).layer(tower::util::MapRequestLayer::new(
        move |request: Request<Body>| {
            if let Some(accept) = request.headers().get(header::ACCEPT) {
                seen.lock()
                    .unwrap()
                    .push(accept.to_str().unwrap_or("").to_owned());
            }
            request
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = TempDir(
        std::env::temp_dir().join(format!("efaprobe-metrics-promtool-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: efaprobe\n    static_configs:\n      \
             - targets: ['{agent}']\n"
        ),
    )
    .unwrap();
    let prometheus_addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
    let _prometheus = ChildGuard(
        Command::new("prometheus")
            .args([
                format!("--config.file={}", config.display()),
                format!("--web.listen-address={prometheus_addr}"),
                format!("--storage.tsdb.path={}", dir.0.join("data").display()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): install it (scripts/setup.sh)")
            }),
    );

    // Wait for a scrape that stored samples: target up, no error.
    let started = std::time::Instant::now();
    let target = loop {
        let targets = prometheus_api(prometheus_addr, "/api/v1/targets").await;
        let target = targets
            .as_ref()
            .and_then(|t| t["data"]["activeTargets"].get(0))
            .cloned();
        if let Some(target) = target.filter(|t| t["health"] != "unknown") {
            break target;
        }
        let log = std::fs::read_to_string(dir.0.join("prometheus.log")).unwrap_or_default();
        assert!(
            started.elapsed() < PROMETHEUS_LIMIT,
            "Prometheus did not scrape within {PROMETHEUS_LIMIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(target["lastError"], "", "{target:#}");
    assert_eq!(target["health"], "up", "{target:#}");

    let accepts = accepts.lock().unwrap().clone();
    assert!(
        accepts
            .iter()
            .all(|a| a.starts_with("application/openmetrics-text")),
        "Prometheus did not ask for OpenMetrics: {accepts:?}"
    );

    // The series arrived as the right types: counters under their _total name, the
    // one-hot state, the histogram.
    let query = |q: &'static str| async move {
        let answer = prometheus_api(prometheus_addr, &format!("/api/v1/query?query={q}"))
            .await
            .expect("a query answer");
        assert_eq!(answer["status"], "success", "{answer:#}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(query("efa_peer_state").await.len(), 12);
    // Created at 0 up front, per group (unknown, pg:cluster-a): 7 results an IP probe can
    // have, 4 a fabric probe can.
    assert_eq!(query("efa_probes_total").await.len(), 2 * (7 + 4));
    assert_eq!(
        query("efa_probe_rtt_seconds_bucket").await.len(),
        2 * 2 * 17
    );
    assert_eq!(query("efa_peers_by_state").await.len(), 6);
    assert_eq!(query("efa_per_peer_metrics_mode").await.len(), 3);
    assert_eq!(query("efa_peer_diagnosis").await.len(), 1);
    // Hardware counters from a collector arrive as counters, under their _total name.
    assert_eq!(query("efa_device_hw_stat_total").await.len(), 4);
    assert_eq!(query("efa_node_topology_info").await.len(), 1);
    let ready = query("efa_agent_ready").await;
    assert_eq!(ready[0]["value"][1], "1", "{ready:?}");

    server.abort();
}
