//! Topology from instance metadata, against `scripts/fake-imds.py` on 127.0.0.1.
//!
//! Every fetch here goes to a loopback fake: never to 169.254.169.254, the real metadata
//! address, which no test may use (the default endpoint is not used anywhere below).
//! Needs `python3`.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use efaprobe::probe::http::http_request;
use efaprobe::probe::tcp::connect_tcp;
use efaprobe::topology::{fetch_topology, NetworkInterface, Topology, TopologyError};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use support::imds::FakeImds;

/// Time allowed beyond a fetch's own timeout, for scheduling noise.
const MARGIN: Duration = Duration::from_millis(300);

const PRIMARY_MAC: &str = "0e:4a:00:00:00:01";
const EXTRA_MAC: &str = "0e:4a:00:00:00:02";

fn configured() -> Vec<&'static str> {
    vec![
        "--instance-id",
        "i-0abc1234def567890",
        "--instance-type",
        "p5.48xlarge",
        "--az",
        "us-east-1b",
        "--az-id",
        "use1-az6",
        "--placement-group",
        "train-pg",
        "--mac",
        PRIMARY_MAC,
        "--subnet",
        "subnet-0aaa",
        "--vpc",
        "vpc-0bbb",
        "--security-groups",
        "sg-01,sg-02",
        "--subnet-cidr",
        "10.1.0.0/20",
        // Listed before the primary on purpose: the result is sorted by MAC.
        "--extra-interface",
        "0e:4a:00:00:00:02,subnet-0ccc,vpc-0bbb,sg-03,10.1.16.0/20",
    ]
}

#[tokio::test]
async fn the_configured_topology_comes_back_exactly() {
    let fake = FakeImds::start(&configured());
    let topology = fetch_topology(&fake.endpoint(), Duration::from_secs(5))
        .await
        .unwrap();
    let expected = Topology {
        instance_id: "i-0abc1234def567890".into(),
        instance_type: "p5.48xlarge".into(),
        availability_zone: "us-east-1b".into(),
        availability_zone_id: Some("use1-az6".into()),
        placement_group: Some("train-pg".into()),
        primary_mac: PRIMARY_MAC.into(),
        interfaces: vec![
            NetworkInterface {
                mac: PRIMARY_MAC.into(),
                subnet_id: "subnet-0aaa".into(),
                vpc_id: "vpc-0bbb".into(),
                security_group_ids: vec!["sg-01".into(), "sg-02".into()],
                subnet_cidr: Some("10.1.0.0/20".into()),
            },
            NetworkInterface {
                mac: EXTRA_MAC.into(),
                subnet_id: "subnet-0ccc".into(),
                vpc_id: "vpc-0bbb".into(),
                security_group_ids: vec!["sg-03".into()],
                subnet_cidr: Some("10.1.16.0/20".into()),
            },
        ],
    };
    assert_eq!(topology, expected);
    assert_eq!(topology.primary().unwrap().subnet_id, "subnet-0aaa");
}

#[tokio::test]
async fn missing_optional_items_are_none() {
    // No zone id, no placement group, no CIDR: 404s that mean "none".
    let fake = FakeImds::start(&["--mac", PRIMARY_MAC]);
    let topology = fetch_topology(&fake.endpoint(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(topology.placement_group, None);
    assert_eq!(topology.availability_zone_id, None);
    assert_eq!(topology.interfaces.len(), 1);
    assert_eq!(topology.primary().unwrap().subnet_cidr, None);
}

/// Every answer comes 200 ms late: one after the other, the 16 requests (token, seven
/// items, four per interface) would take 3.2 s; concurrently, three rounds take 0.6 s.
#[tokio::test]
async fn reads_are_concurrent() {
    let mut args = configured();
    args.extend(["--delay", "0.2"]);
    let fake = FakeImds::start(&args);
    let started = Instant::now();
    let result = fetch_topology(&fake.endpoint(), Duration::from_secs(2)).await;
    let took = started.elapsed();
    let topology = result.unwrap_or_else(|e| panic!("after {took:?}: {e}"));
    eprintln!("read in {took:?}");
    assert_eq!(topology.interfaces.len(), 2);
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[tokio::test]
async fn a_slow_imds_fails_within_the_timeout() {
    let fake = FakeImds::start(&["--delay", "5"]);
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let error = fetch_topology(&fake.endpoint(), timeout).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout + MARGIN,
        "took {took:?}: {error}"
    );
    // The token PUT is the first thing to wait for.
    assert!(
        matches!(error, TopologyError::TokenNoAnswer { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("500ms"), "{error}");
}

#[tokio::test]
async fn an_unanswered_token_put_names_the_hop_limit() {
    let fake = FakeImds::start(&["--no-token"]);
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let error = fetch_topology(&fake.endpoint(), timeout).await.unwrap_err();
    assert!(
        started.elapsed() < timeout + MARGIN,
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, TopologyError::TokenNoAnswer { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("hop limit"), "{message}");
    assert!(message.contains("hostNetwork"), "{message}");
}

#[tokio::test]
async fn a_refused_token_is_a_401() {
    let fake = FakeImds::start(&["--refuse-tokens"]);
    let error = fetch_topology(&fake.endpoint(), Duration::from_secs(5))
        .await
        .unwrap_err();
    let refused_path = match &error {
        TopologyError::TokenRefused { path, .. } => path.as_str(),
        other => panic!("{other}"),
    };
    assert!(refused_path.starts_with("/latest/meta-data/"), "{error}");
    assert!(error.to_string().contains("401"), "{error}");
}

/// The fake itself: a GET without the token, or with a made-up one, is 401; a PUT without
/// the TTL header is 400 (what the real IMDS does).
#[tokio::test]
async fn the_fake_insists_on_the_token() {
    let fake = FakeImds::start(&[]);
    let send =
        |method: Method, path: &'static str, header: Option<(&'static str, &'static str)>| {
            let addr = fake.addr;
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let connection = connect_tcp(addr, deadline).await.unwrap();
                let mut headers = HeaderMap::new();
                if let Some((name, value)) = header {
                    headers.insert(name, HeaderValue::from_static(value));
                }
                http_request(
                    connection.stream,
                    method,
                    &addr.to_string(),
                    path,
                    headers,
                    4096,
                    deadline,
                )
                .await
                .unwrap()
            }
        };
    let id = "/latest/meta-data/instance-id";
    assert_eq!(
        send(Method::GET, id, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let wrong = Some(("x-aws-ec2-metadata-token", "made-up"));
    assert_eq!(
        send(Method::GET, id, wrong).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(Method::PUT, "/latest/api/token", None).await.status,
        StatusCode::BAD_REQUEST
    );
    let ttl = Some(("x-aws-ec2-metadata-token-ttl-seconds", "60"));
    let token = send(Method::PUT, "/latest/api/token", ttl).await;
    assert_eq!(token.status, StatusCode::OK);
    assert!(!token.body.is_empty());
}

#[tokio::test]
async fn nothing_listening_fails_at_once() {
    // A bound socket that never listens: the port is ours, and the kernel refuses SYNs.
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    holder
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = holder.local_addr().unwrap().as_socket().unwrap();
    let started = Instant::now();
    let error = fetch_topology(&format!("http://{addr}"), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, TopologyError::Unreachable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("not on EC2"), "{error}");
}

#[tokio::test]
async fn a_bad_endpoint_never_connects() {
    for endpoint in [
        "127.0.0.1:1",
        "https://127.0.0.1:1",
        "http://127.0.0.1:1/latest",
    ] {
        let error = fetch_topology(endpoint, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(error, TopologyError::InvalidEndpoint(_)),
            "{endpoint}: {error}"
        );
    }
}
