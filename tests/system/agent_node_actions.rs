//! `efaprobe agent` with every node action on, against an API server that refuses them all
//! (403), on loopback: probing goes on at its pace, the agent stays ready, each refusal is
//! logged once per action, and `/v1/hello` and `/metrics` say so.
//!
//! The API server is a small local HTTP server standing in for one whose RBAC lacks the
//! node-action ClusterRole (there is no API server on these machines); the agent finds it
//! through KUBECONFIG, as kube's client does outside a cluster.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::metrics::{parse, value};
use support::process::{wait_until, Process};

use support::agent::{terminate, BIN};

/// Answers every request with 403, as an API server does outside the RBAC; records
/// `METHOD PATH` of each.
fn refusing_api_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || refuse(stream, &log));
        }
    });
    (port, seen)
}

fn refuse(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, v)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        log.lock().unwrap().push(format!("{method} {path}"));
        let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden: no RBAC for this","reason":"Forbidden","code":403}"#;
        let reply = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{status}",
            status.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn peer_rounds(port: u16, name: &str) -> Option<(String, u64)> {
    let peers: Vec<serde_json::Value> = serde_json::from_str(&get(port, "/v1/peers")?).ok()?;
    let p = peers.iter().find(|p| p["name"] == name)?;
    Some((p["state"].as_str()?.to_owned(), p["rounds"].as_u64()?))
}

#[test]
fn refused_node_actions_leave_probing_alone_and_are_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let (api_port, seen) = refusing_api_server();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             http://127.0.0.1:{api_port}\nusers:\n- name: agent\n  user:\n    token: t\n\
             contexts:\n- name: fake\n  context: {{cluster: fake, user: agent}}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    // 27_853: nothing listens there, a peer that is `down` (a move, so an Event to write).
    let (a_port, b_port, dead_port) = (27_851, 27_852, 27_853);
    let common = |name: &str, port: u16| -> Vec<String> {
        [
            "agent",
            "--imds-endpoint",
            "none",
            "--node-name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--fabric-provider",
            "udp;ofi_rxd",
            "--fabric-bind",
            "127.0.0.1",
            "--interval",
            "1s",
            "--timeout",
            "500ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let stderr = std::fs::File::create(dir.path().join("a.log")).unwrap();
    let a = Process(
        Command::new(BIN)
            .args(common("node-a", a_port))
            .args([
                "--peers",
                &format!("127.0.0.1:{b_port},127.0.0.1:{dead_port}"),
            ])
            .args(["--node-condition", "--node-events", "--startup-taint-gate"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let b = Process::spawn(Command::new(BIN).args(common("node-b", b_port)));

    let mut start_rounds = 0;
    wait_until(
        "node-b healthy from node-a",
        Duration::from_secs(20),
        || match peer_rounds(a_port, "node-b") {
            Some((state, rounds)) if state == "healthy" => {
                start_rounds = rounds;
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    );
    wait_until("every action refused", Duration::from_secs(30), || {
        let hello: serde_json::Value =
            serde_json::from_str(&get(a_port, "/v1/hello").ok_or("no hello")?)
                .map_err(|e| e.to_string())?;
        let forbidden = &hello["node_actions"]["forbidden"];
        (*forbidden == serde_json::json!(["condition", "events", "taint"]))
            .then_some(())
            .ok_or(format!("{hello}"))
    });
    // Probing keeps its pace meanwhile (1 s interval) and the agent stays ready.
    std::thread::sleep(Duration::from_secs(5));
    let (state, rounds) = peer_rounds(a_port, "node-b").unwrap();
    assert_eq!(state, "healthy");
    assert!(
        rounds >= start_rounds + 3,
        "{start_rounds} -> {rounds} rounds in 5 s and more"
    );
    assert_eq!(get(a_port, "/readyz").as_deref(), Some("ready\n"));
    let m = parse(&get(a_port, "/metrics").unwrap());
    let refused = |action| {
        value(
            &m,
            "efa_node_action_errors_total",
            &[("action", action), ("reason", "forbidden")],
        )
        .unwrap_or(0.0)
    };
    assert!(
        refused("condition") >= 2.0,
        "retried: {}",
        refused("condition")
    );
    assert!(refused("taint") >= 2.0);
    assert!(refused("events") >= 1.0);
    let requests = seen.lock().unwrap().clone();
    for expected in [
        "PATCH /api/v1/nodes/node-a/status",
        "GET /api/v1/nodes/node-a",
        "POST /apis/events.k8s.io/v1/namespaces/default/events",
    ] {
        assert!(
            requests.iter().any(|r| r == expected),
            "{expected}: {requests:?}"
        );
    }
    assert!(
        requests
            .iter()
            .all(|r| r.contains("node-a") || r.contains("/events")),
        "only its own node: {requests:?}"
    );

    assert_eq!(terminate(a), Some(0), "exit 0 on SIGTERM");
    let _ = terminate(b);
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    for action in ["\"condition\"", "\"events\"", "\"taint\""] {
        let lines = log
            .lines()
            .filter(|l| l.contains("(403)") && l.contains(action))
            .count();
        assert_eq!(lines, 1, "{action} logged once:\n{log}");
    }
}
