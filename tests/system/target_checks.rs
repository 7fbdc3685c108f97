//! Target checks against real services and real failures.
//!
//! NATS and Prometheus are the Debian packages' real servers; misbehaving servers are real
//! TCP listeners in this process; silent drops, ICMP rejects and a dead resolver are made
//! with nftables and `/etc/netns` inside network namespaces this file creates.
//!
//! Traffic goes only to 127.0.0.0/8 and to 198.18.201.0/24 inside our own namespaces. No
//! real name is ever resolved: names used here end in `.invalid` and are looked up only
//! inside a namespace whose resolver is its own (silent) loopback.

use crate::support;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use efaprobe::probe::http::http_get;
use efaprobe::probe::tcp::connect_tcp;
use efaprobe::probe::{check_target, AddressReport, FailureReason, TargetReport, TargetSpec};
use serde_json::Value;
use support::agent::BIN;
use support::netns::{can_run, Netns, Pair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a real server may take to start listening (Prometheus is the slow one).
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Helpers

/// A child process killed (and reaped) when the test ends, however it ends.
struct ChildGuard {
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    fn spawn(mut command: Command, log: PathBuf) -> ChildGuard {
        let log_file = fs::File::create(&log).expect("create log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        ChildGuard { child, log }
    }

    /// Panics with the server's log if it has already exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            panic!("server exited early ({status}):\n{log}");
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("efaprobe-tc-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on right now (the kernel picked it for us).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn spec(text: &str) -> TargetSpec {
    TargetSpec::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The one address report of a target given as an IP literal.
fn only_address(report: &TargetReport) -> &AddressReport {
    let addresses = report
        .addresses
        .as_ref()
        .unwrap_or_else(|f| panic!("{} did not resolve: {f}", report.spec));
    assert_eq!(addresses.len(), 1, "{report:?}");
    &addresses[0]
}

fn failure_of(report: &TargetReport) -> (FailureReason, String) {
    let failure = only_address(report)
        .result
        .as_ref()
        .expect_err("the check should have failed");
    (failure.reason, failure.message.clone())
}

/// Waits (bounded) until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, server: &mut ChildGuard) {
    let started = Instant::now();
    while started.elapsed() < STARTUP_LIMIT {
        server.assert_running();
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listening on {addr} after {STARTUP_LIMIT:?}");
}

/// Checks `spec` until it passes, within [`STARTUP_LIMIT`]; returns the passing report.
async fn check_until_ok(spec: &TargetSpec, server: &mut ChildGuard) -> TargetReport {
    let started = Instant::now();
    loop {
        server.assert_running();
        let report = check_target(spec, Duration::from_secs(2)).await;
        if report.all_ok() {
            return report;
        }
        assert!(
            started.elapsed() < STARTUP_LIMIT,
            "{spec} still failing after {STARTUP_LIMIT:?}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_nats(dir: &TempDir, port: u16, extra: &[&str]) -> ChildGuard {
    let mut command = Command::new("nats-server");
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(extra);
    ChildGuard::spawn(command, dir.path().join("nats.log"))
}

/// A misbehaving server: a real listener on loopback that does one thing to the first
/// connection. Every server task ends by itself within ten seconds.
enum FakeServer {
    /// Writes these bytes as soon as the client connects (as a NATS server would).
    SpeaksFirst(&'static [u8]),
    /// Reads the request head, then writes these bytes.
    Answers(Vec<u8>),
    /// Accepts and says nothing.
    Silent,
    /// Writes one line that never ends.
    EndlessLine,
    /// Accepts and resets the connection.
    Resets,
}

impl FakeServer {
    /// Starts the server; the channel yields the request head it read, if any.
    async fn start(self) -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (request_tx, request_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            match self {
                FakeServer::SpeaksFirst(bytes) => {
                    let _ = stream.write_all(bytes).await;
                    drain(&mut stream).await;
                }
                FakeServer::Answers(bytes) => {
                    let _ = request_tx.send(read_head(&mut stream).await);
                    let _ = stream.write_all(&bytes).await;
                    drain(&mut stream).await;
                }
                FakeServer::Silent => drain(&mut stream).await,
                FakeServer::EndlessLine => {
                    let chunk = [b'A'; 16 * 1024];
                    // At most 64 MiB: far past any limit, and the client hangs up long before.
                    for _ in 0..4096 {
                        if stream.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                }
                FakeServer::Resets => {
                    socket2::SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(stream);
                }
            }
        }));
        (addr, request_rx)
    }
}

/// Reads until the client closes, so the server never closes first.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

// ---------------------------------------------------------------------------------------
// Real NATS

#[tokio::test]
async fn nats_with_jetstream_is_ok_and_says_so() {
    let dir = TempDir::new("natsjs");
    let port = free_port();
    let store = dir.path().join("jetstream");
    let mut server = start_nats(
        &dir,
        port,
        &["-js", "-sd", store.to_str().unwrap(), "-n", "efp-js"],
    );
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &mut server).await;

    let report = check_until_ok(&spec(&format!("events=127.0.0.1:{port}:nats")), &mut server).await;
    let success = only_address(&report).result.as_ref().unwrap();
    let nats = success.nats.as_ref().expect("NATS server info");
    assert!(nats.jetstream, "{nats:?}");
    assert_eq!(nats.server_name, "efp-js");
    assert!(!nats.server_id.is_empty());
    assert!(nats.version.starts_with('2'), "{nats:?}");
    assert!(success.connect_rtt <= success.total);
}

#[tokio::test]
async fn nats_without_jetstream_is_ok_and_says_so() {
    let dir = TempDir::new("nats");
    let port = free_port();
    let mut server = start_nats(&dir, port, &[]);
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &mut server).await;

    let report = check_until_ok(&spec(&format!("events=127.0.0.1:{port}:nats")), &mut server).await;
    let nats = only_address(&report).result.as_ref().unwrap().nats.clone();
    assert!(!nats.expect("NATS server info").jetstream);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["addresses"][0]["nats"]["jetstream"], false);
}

#[tokio::test]
async fn nats_that_requires_a_password_is_protocol() {
    let dir = TempDir::new("natsauth");
    let port = free_port();
    let mut server = start_nats(&dir, port, &["--user", "efaprobe", "--pass", "not-given"]);
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &mut server).await;

    let report = check_target(
        &spec(&format!("events=127.0.0.1:{port}:nats")),
        Duration::from_secs(2),
    )
    .await;
    let (reason, message) = failure_of(&report);
    assert_eq!(reason, FailureReason::Protocol, "{message}");
    assert!(message.contains("-ERR"), "{message}");
}

// ---------------------------------------------------------------------------------------
// Real Prometheus

#[tokio::test]
async fn prometheus_ready_and_healthy() {
    let dir = TempDir::new("prom");
    let config = dir.path().join("prometheus.yml");
    fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
    let port = free_port();
    let mut command = Command::new("prometheus");
    command.args([
        format!("--config.file={}", config.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()),
    ]);
    let mut server = ChildGuard::spawn(command, dir.path().join("prometheus.log"));

    let ready = check_until_ok(
        &spec(&format!("metrics=127.0.0.1:{port}:prometheus")),
        &mut server,
    )
    .await;
    assert_eq!(
        only_address(&ready).result.as_ref().unwrap().http_status,
        Some(200)
    );

    let healthy = check_target(
        &spec(&format!("metrics=127.0.0.1:{port}:http:/-/healthy")),
        Duration::from_secs(2),
    )
    .await;
    assert!(healthy.all_ok(), "{healthy:?}");
    assert_eq!(
        only_address(&healthy).result.as_ref().unwrap().http_status,
        Some(200)
    );

    let missing = check_target(
        &spec(&format!(
            "metrics=127.0.0.1:{port}:http:/efaprobe-no-such-page"
        )),
        Duration::from_secs(2),
    )
    .await;
    let (reason, message) = failure_of(&missing);
    assert_eq!(reason, FailureReason::HttpStatus, "{message}");
    assert!(message.contains("404"), "{message}");
}

// ---------------------------------------------------------------------------------------
// Failures on loopback

#[tokio::test]
async fn closed_port_is_refused() {
    // Bound but not listening: the port stays ours for the test, and SYNs get a reset.
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    holder
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = holder.local_addr().unwrap().as_socket().unwrap().port();

    for check in ["tcp", "nats", "prometheus", "http:/"] {
        let report = check_target(
            &spec(&format!("closed=127.0.0.1:{port}:{check}")),
            Duration::from_secs(2),
        )
        .await;
        let (reason, message) = failure_of(&report);
        assert_eq!(reason, FailureReason::Refused, "{check}: {message}");
    }
}

#[tokio::test]
async fn http_server_checked_as_nats_is_protocol() {
    let (addr, _) = FakeServer::SpeaksFirst(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .start()
        .await;
    let report = check_target(
        &spec(&format!("events={addr}:nats")),
        Duration::from_secs(2),
    )
    .await;
    let (reason, message) = failure_of(&report);
    assert_eq!(reason, FailureReason::Protocol, "{message}");
    assert!(message.contains("HTTP/1.1 200 OK"), "{message}");
}

#[tokio::test]
async fn garbage_checked_as_nats_is_protocol() {
    let (addr, _) = FakeServer::SpeaksFirst(b"\x00\xff\x13garbage\r\n")
        .start()
        .await;
    let report = check_target(
        &spec(&format!("events={addr}:nats")),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(failure_of(&report).0, FailureReason::Protocol);
}

#[tokio::test]
async fn silent_server_checked_as_nats_is_timeout() {
    let (addr, _) = FakeServer::Silent.start().await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let report = check_target(&spec(&format!("events={addr}:nats")), timeout).await;
    let elapsed = started.elapsed();
    let (reason, message) = failure_of(&report);
    assert_eq!(reason, FailureReason::Timeout, "{message}");
    assert!(message.contains("connected"), "{message}");
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn endless_line_checked_as_nats_is_protocol_within_the_timeout() {
    let (addr, _) = FakeServer::EndlessLine.start().await;
    let timeout = Duration::from_secs(5);
    let started = Instant::now();
    let report = check_target(&spec(&format!("events={addr}:nats")), timeout).await;
    let (reason, message) = failure_of(&report);
    assert_eq!(reason, FailureReason::Protocol, "{message}");
    assert!(message.contains("longer than"), "{message}");
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
}

#[tokio::test]
async fn reset_after_accept_is_reset() {
    let (addr, _) = FakeServer::Resets.start().await;
    let report = check_target(
        &spec(&format!("events={addr}:nats")),
        Duration::from_secs(2),
    )
    .await;
    let (reason, message) = failure_of(&report);
    assert_eq!(reason, FailureReason::Reset, "{message}");
}

#[tokio::test]
async fn http_check_judges_status_and_answer() {
    let (addr, _) = FakeServer::Answers(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready".to_vec(),
    )
    .start()
    .await;
    let report = check_target(
        &spec(&format!("web={addr}:http:/ready")),
        Duration::from_secs(2),
    )
    .await;
    let (reason, message) = failure_of(&report);
    assert_eq!(reason, FailureReason::HttpStatus, "{message}");
    assert!(
        message.contains("503") && message.contains("not ready"),
        "{message}"
    );

    let (addr, _) = FakeServer::Answers(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec())
        .start()
        .await;
    let report = check_target(&spec(&format!("web={addr}:http")), Duration::from_secs(2)).await;
    assert_eq!(failure_of(&report).0, FailureReason::Protocol);

    let (addr, _) = FakeServer::Answers(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())
        .start()
        .await;
    let report = check_target(&spec(&format!("web={addr}:http")), Duration::from_secs(2)).await;
    assert!(report.all_ok(), "{report:?}");
}

/// The GET helper as the agent uses it for peer hellos: status, headers and body back.
#[tokio::test]
async fn http_get_returns_status_and_body_and_bounds_the_body() {
    let body = br#"{"node":"gpu-1","fabric":["efa0"]}"#;
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    let (addr, request) = FakeServer::Answers(answer).start().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let conn = connect_tcp(addr, deadline).await.unwrap();
    let response = http_get(conn.stream, &addr.to_string(), "/v1/hello", 1024, deadline)
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "application/json");
    assert_eq!(&response.body[..], body);
    let request = request.await.unwrap();
    assert!(
        request.starts_with("GET /v1/hello HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains(&format!("host: {addr}\r\n")),
        "{request}"
    );

    let mut too_big = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    too_big.resize(too_big.len() + 100_000, b'x');
    let (addr, _) = FakeServer::Answers(too_big).start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let conn = connect_tcp(addr, deadline).await.unwrap();
    let failure = http_get(conn.stream, &addr.to_string(), "/v1/hello", 1024, deadline)
        .await
        .unwrap_err();
    assert_eq!(failure.reason, FailureReason::Protocol, "{failure}");
    assert!(failure.message.contains("larger than 1024"), "{failure}");

    let (addr, _) = FakeServer::Silent.start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let conn = connect_tcp(addr, deadline).await.unwrap();
    let failure = http_get(conn.stream, &addr.to_string(), "/v1/hello", 1024, deadline)
        .await
        .unwrap_err();
    assert_eq!(failure.reason, FailureReason::Timeout, "{failure}");
}

// ---------------------------------------------------------------------------------------
// Failures that need a network namespace: silent drops, ICMP rejects, a dead resolver

/// Runs `efaprobe check ... --json` inside `ns`, killing it if it outlives `limit`.
fn run_check(ns: &Netns, args: &[&str], limit: Duration) -> (ExitStatus, Value, Duration) {
    let started = Instant::now();
    let mut child = ns
        .command(BIN)
        .arg("check")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn efaprobe check");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("efaprobe check {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let output = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "efaprobe check {args:?} ({status}) printed no JSON ({e}):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (status, json, elapsed)
}

/// The JSON report of the target named `name`.
fn target<'a>(document: &'a Value, name: &str) -> &'a Value {
    document["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["target"] == name))
        .unwrap_or_else(|| panic!("no target {name} in {document:#}"))
}

/// The reason of the one address of target `name`.
fn address_reason<'a>(document: &'a Value, name: &str) -> &'a Value {
    let addresses = target(document, name)["addresses"].as_array().unwrap();
    assert_eq!(addresses.len(), 1, "{document:#}");
    &addresses[0]["reason"]
}

#[test]
fn dropped_rejected_and_closed_ports_seen_from_another_node() {
    if !can_run("dropped_rejected_and_closed_ports_seen_from_another_node") {
        return;
    }
    let pair = Pair::new("tchk", 201);
    let dir = TempDir::new("netns");
    let mut nats_command = pair.b.command("nats-server");
    nats_command.args(["-a", &pair.b_ip, "-p", "4222"]);
    let mut nats = ChildGuard::spawn(nats_command, dir.path().join("nats.log"));

    // Before any rule: the path works, so what follows is the rules' doing.
    let reachable = format!("events={}:4222", pair.b_ip);
    let started = Instant::now();
    loop {
        nats.assert_running();
        let (status, json, _) =
            run_check(&pair.a, &["--target", &reachable], Duration::from_secs(20));
        if status.success() {
            assert_eq!(json["ok"], true);
            break;
        }
        assert!(
            started.elapsed() < STARTUP_LIMIT,
            "never reachable: {json:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A security group that drops NATS, a firewall that rejects with ICMP, and a port
    // nobody listens on.
    pair.b.nft(
        "table ip efaprobe_tchk {
            chain input {
                type filter hook input priority 0; policy accept;
                tcp dport 4222 drop
                tcp dport 4223 reject with icmp type host-unreachable
            }
        }",
    );
    let dropped = format!("dropped={}:4222", pair.b_ip);
    let rejected = format!("rejected={}:4223:tcp", pair.b_ip);
    let closed = format!("closed={}:4224:tcp", pair.b_ip);
    let timeout = Duration::from_secs(1);
    let (status, json, elapsed) = run_check(
        &pair.a,
        &[
            "--target",
            &dropped,
            "--target",
            &rejected,
            "--target",
            &closed,
            "--timeout",
            "1s",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{json:#}");
    assert_eq!(json["ok"], false);
    assert_eq!(address_reason(&json, "dropped"), "timeout", "{json:#}");
    assert_eq!(address_reason(&json, "rejected"), "unreachable", "{json:#}");
    assert_eq!(address_reason(&json, "closed"), "refused", "{json:#}");
    // The checks run in parallel, each bounded by the timeout; the margin is for starting
    // the process, not for waiting on the network.
    assert!(
        elapsed < timeout + Duration::from_secs(3),
        "took {elapsed:?}"
    );
}

/// `/etc/netns/<namespace>/`: files `ip netns exec` mounts over `/etc` inside the
/// namespace. Removed at the end of the test.
struct EtcNetns(PathBuf);

impl EtcNetns {
    fn new(ns: &Netns, files: &[(&str, &str)]) -> EtcNetns {
        let dir = Path::new("/etc/netns").join(&ns.name);
        fs::create_dir_all(&dir).expect("create /etc/netns/<namespace>");
        let guard = EtcNetns(dir);
        for (name, text) in files {
            fs::write(guard.0.join(name), text).expect("write /etc/netns file");
        }
        guard
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        // Only our namespace's directory: /etc/netns itself may be in use by other tests.
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn dead_resolver_is_dns_and_each_address_is_checked_on_its_own() {
    if !can_run("dead_resolver_is_dns_and_each_address_is_checked_on_its_own") {
        return;
    }
    let ns = Netns::new("efp-tcdns");
    // The namespace's resolver is its own loopback, where nothing answers: lookups fail
    // there and never reach a real DNS server. The hosts file gives one name two addresses.
    let _etc = EtcNetns::new(
        &ns,
        &[
            (
                "resolv.conf",
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            ),
            (
                "hosts",
                "127.0.0.1 localhost\n\
                 127.0.0.1 multi.efaprobe-test.invalid\n\
                 127.0.0.2 multi.efaprobe-test.invalid\n",
            ),
        ],
    );
    let dir = TempDir::new("dns");
    let mut nats_command = ns.command("nats-server");
    nats_command.args(["-a", "127.0.0.1", "-p", "4222"]);
    let mut nats = ChildGuard::spawn(nats_command, dir.path().join("nats.log"));

    let timeout = Duration::from_secs(2);
    let (status, json, elapsed) = run_check(
        &ns,
        &[
            "--target",
            "events=nats.efaprobe-test.invalid:4222",
            "--timeout",
            "2s",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{json:#}");
    let events = target(&json, "events");
    assert_eq!(events["resolve_failure"]["reason"], "dns", "{json:#}");
    assert_eq!(events["addresses"], serde_json::json!([]));
    assert!(
        elapsed < timeout + Duration::from_secs(3),
        "took {elapsed:?}"
    );

    // One name, two addresses: the server listens on one of them only.
    let started = Instant::now();
    let addresses = loop {
        nats.assert_running();
        let (_, json, _) = run_check(
            &ns,
            &[
                "--target",
                "multi=multi.efaprobe-test.invalid:4222",
                "--timeout",
                "2s",
            ],
            Duration::from_secs(30),
        );
        let addresses = target(&json, "multi")["addresses"].clone();
        let up = addresses.as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["address"] == "127.0.0.1:4222" && a["ok"] == true)
        });
        if up || started.elapsed() > STARTUP_LIMIT {
            break addresses;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let by_address = |address: &str| {
        addresses
            .as_array()
            .and_then(|a| a.iter().find(|a| a["address"] == address))
            .unwrap_or_else(|| panic!("no {address} in {addresses:#}"))
            .clone()
    };
    assert_eq!(addresses.as_array().map(Vec::len), Some(2), "{addresses:#}");
    let listening = by_address("127.0.0.1:4222");
    assert_eq!(listening["ok"], true, "{addresses:#}");
    assert_eq!(listening["nats"]["jetstream"], false, "{addresses:#}");
    let other = by_address("127.0.0.2:4222");
    assert_eq!(other["ok"], false, "{addresses:#}");
    assert_eq!(other["reason"], "refused", "{addresses:#}");
}
