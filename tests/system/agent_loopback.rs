//! `efaprobe agent` on loopback: hostile peers (garbage, a huge body, silence) give `protocol`
//! or `timeout` and leave the agent unaffected; a missing provider means IP-only, said in a
//! metric; bad settings exit 64, all reported at once; a taken port is said plainly; SIGTERM
//! exits 0. A hello withdrawing its fabric wins over the old address; another version's hello is
//! `ip_protocol`, not `down`.

use crate::support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::agent::{Agent, RunningAgent, BIN};
use support::metrics::{parse, value};

/// An agent on loopback, its node name among `args`.
fn start_agent(args: &[&str]) -> RunningAgent<'static> {
    Agent::unnamed().args(args).spawn()
}

/// An IP-only agent (`--fabric-provider none`) named `name` on loopback `port`, probing
/// `peers` (HOST:PORT, comma-separated) every second.
fn ip_only_agent(name: &str, port: u16, peers: &str) -> RunningAgent<'static> {
    start_agent(&[
        "--node-name",
        name,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--fabric-provider",
        "none",
        "--interval",
        "1s",
        "--timeout",
        "500ms",
        "--peers",
        peers,
    ])
}

/// A plain HTTP GET on loopback, bounded.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A peer that is not an agent: it runs `behave` on every connection, in its own thread.
fn fake_peer(behave: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || behave(stream));
        }
    });
    port
}

fn garbage(mut s: TcpStream) {
    let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n");
}

fn huge(mut s: TcpStream) {
    let _ = s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n",
    );
    let chunk = vec![b'{'; 64 * 1024];
    for _ in 0..800 {
        if s.write_all(&chunk).is_err() {
            return;
        }
    }
}

fn silent(s: TcpStream) {
    std::thread::sleep(Duration::from_secs(30));
    drop(s);
}

/// Answers one request with `hello` as a peer agent would.
fn serve_hello(mut s: TcpStream, hello: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.ends_with(b"\r\n\r\n") && request.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{hello}",
        hello.len()
    );
}

/// NUL, ESC (a terminal escape), a newline, a C1 control and a bidirectional override, as
/// JSON escapes.
const DIRTY: &str = r"x\u0000y\u001b[2Jz\n\u009b\u202e";

/// A peer whose hello carries [`DIRTY`] in every free-text field.
fn dirty_hello(s: TcpStream) {
    let hello = format!(
        r#"{{"node_name":"dirty-peer","agent_version":"{DIRTY}","instance_id":1,
        "fabric":{{"provider":"{DIRTY}","available":false,"error":"{DIRTY}",
        "endpoints":[{{"domain":"{DIRTY}","address":"fe80","display":"{DIRTY}"}}]}}}}"#
    );
    serve_hello(s, &hello);
}

/// A peer whose hello is refused for its node name, which carries [`DIRTY`].
fn dirty_name(s: TcpStream) {
    let hello = format!(
        r#"{{"node_name":"{DIRTY}","agent_version":"1","instance_id":1,
        "fabric":{{"provider":"efa","available":false,"endpoints":[]}}}}"#
    );
    serve_hello(s, &hello);
}

/// Every string in a JSON value.
fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

fn peer_json(port: u16) -> Vec<serde_json::Value> {
    get(port, "/v1/peers")
        .and_then(|(_, body)| serde_json::from_str::<Vec<serde_json::Value>>(&body).ok())
        .unwrap_or_default()
}

#[test]
fn hostile_peers_are_classified_and_do_not_hurt_the_agent() {
    let garbage_port = fake_peer(garbage);
    let huge_port = fake_peer(huge);
    let silent_port = fake_peer(silent);
    let (a_port, b_port) = (27_761, 27_762);
    let peers = format!(
        "127.0.0.1:{garbage_port},127.0.0.1:{huge_port},127.0.0.1:{silent_port},127.0.0.1:{b_port}"
    );
    let common = |name: &str, port: u16| -> Vec<String> {
        [
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
    let mut a_args = common("node-a", a_port);
    a_args.extend(["--peers".into(), peers]);
    let b_args = common("node-b", b_port);
    let a = start_agent(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let b = start_agent(&b_args.iter().map(String::as_str).collect::<Vec<_>>());

    let by_address = |peers: &[serde_json::Value], port: u16| {
        peers
            .iter()
            .find(|p| p["address"] == format!("127.0.0.1:{port}"))
            .cloned()
    };
    let peers = wait_for("verdicts for every peer", Duration::from_secs(20), || {
        let peers = peer_json(a_port);
        let real = by_address(&peers, b_port)?;
        let settled = [garbage_port, huge_port, silent_port]
            .iter()
            .all(|p| by_address(&peers, *p).is_some_and(|p| p["state"] == "down"));
        (real["state"] == "healthy" && settled).then_some(peers)
    });
    let ip_failure = |port| by_address(&peers, port).unwrap()["ip"]["last_failure"].clone();
    assert_eq!(ip_failure(garbage_port), "protocol", "{peers:?}");
    assert_eq!(ip_failure(huge_port), "protocol", "{peers:?}");
    assert_eq!(ip_failure(silent_port), "timeout", "{peers:?}");
    let real = by_address(&peers, b_port).unwrap();
    assert_eq!(real["name"], "node-b", "named by its hello");
    assert_eq!(real["fabric"]["reachable"], true);

    // Unaffected: still serving, and its own metrics are whole.
    assert_eq!(get(a_port, "/healthz").map(|r| r.0), Some(200));
    let m = parse(&get(a_port, "/metrics").unwrap().1);
    assert_eq!(
        value(
            &m,
            "efa_peer_state",
            &[("peer", "node-b"), ("state", "healthy")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "efa_fabric_available", &[("provider", "udp;ofi_rxd")]),
        Some(1.0)
    );
    assert_eq!(a.stop(), Some(0), "exit 0 on SIGTERM");
    assert_eq!(b.stop(), Some(0));
}

#[test]
fn a_peer_without_fabric_is_diagnosed_peer_no_fabric() {
    let (a_port, c_port) = (27_764, 27_765);
    let c = ip_only_agent("no-fabric", c_port, &format!("127.0.0.1:{a_port}"));
    let a = start_agent(&[
        "--node-name",
        "node-a",
        "--listen",
        &format!("127.0.0.1:{a_port}"),
        "--fabric-provider",
        "udp;ofi_rxd",
        "--fabric-bind",
        "127.0.0.1",
        "--peers",
        &format!("127.0.0.1:{c_port}"),
        "--interval",
        "1s",
        "--timeout",
        "500ms",
    ]);
    let m = wait_for("peer_no_fabric", Duration::from_secs(15), || {
        let m = parse(&get(a_port, "/metrics")?.1);
        (value(
            &m,
            "efa_peer_diagnosis",
            &[("peer", "no-fabric"), ("reason", "peer_no_fabric")],
        ) == Some(1.0))
        .then_some(m)
    });
    assert_eq!(
        value(
            &m,
            "efa_peer_state",
            &[("peer", "no-fabric"), ("state", "fabric_dropped")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "efa_peer_ip_reachable", &[("peer", "no-fabric")]),
        Some(1.0)
    );
    // The agent without a fabric cannot judge the fabric path: unknown, saying why.
    // (Its first round may have run before a listened: down, then unknown once a answers.)
    let peers = wait_for("c judges a", Duration::from_secs(10), || {
        let peers = peer_json(c_port);
        (peers.len() == 1 && peers[0]["ip"]["reachable"] == true && peers[0]["state"] != "down")
            .then_some(peers)
    });
    assert_eq!(peers[0]["state"], "unknown", "{peers:?}");
    assert_eq!(peers[0]["reason"], "local_no_fabric", "{peers:?}");
    assert_eq!(a.stop(), Some(0));
    assert_eq!(c.stop(), Some(0));
}

#[test]
fn a_missing_provider_means_ip_only_and_says_so() {
    let port = 27_763;
    let agent = start_agent(&[
        "--node-name",
        "ip-only",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--fabric-provider",
        "efa",
        "--interval",
        "1s",
        "--timeout",
        "500ms",
    ]);
    let m = wait_for("metrics", Duration::from_secs(10), || {
        get(port, "/metrics")
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| parse(&b))
    });
    assert_eq!(
        value(&m, "efa_fabric_available", &[("provider", "efa")]),
        Some(0.0)
    );
    let hello: serde_json::Value =
        serde_json::from_str(&get(port, "/v1/hello").unwrap().1).unwrap();
    assert_eq!(hello["fabric"]["available"], false);
    assert!(hello["fabric"]["error"].as_str().unwrap().contains("efa"));
    wait_for("ready with no peers", Duration::from_secs(10), || {
        get(port, "/readyz").filter(|(s, _)| *s == 200)
    });
    assert_eq!(agent.stop(), Some(0));
}

#[test]
fn bad_settings_exit_64_naming_the_setting() {
    for (args, setting) in [
        (vec!["--listen", "127.0.0.1:1"], "node-name"),
        (
            vec!["--node-name", "n", "--interval", "1s", "--timeout", "2s"],
            "timeout",
        ),
        (vec!["--node-name", "n", "--target", "nats=:4222"], "target"),
    ] {
        let out = Agent::unnamed()
            .args(&args)
            .command()
            .env_remove("NODE_NAME")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(setting), "{args:?}: {err}");
    }
    // Read from the environment too, as a DaemonSet passes it.
    let out = Agent::unnamed()
        .command()
        .env("NODE_NAME", "Bad_Name")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NODE_NAME"));
}

#[test]
fn every_bad_setting_is_reported_at_once_with_its_variable() {
    // Six through the environment, as a DaemonSet sets them, four on the command line.
    let from_env = [
        ("hysteresis", "EFAPROBE_HYSTERESIS", "0", "from 1 to 100"),
        ("probe-size", "EFAPROBE_PROBE_SIZE", "big", "from 1 to 8192"),
        (
            "sample-peers",
            "EFAPROBE_SAMPLE_PEERS",
            "-1",
            "from 0 to 10000",
        ),
        ("max-loss", "EFAPROBE_MAX_LOSS", "2", "from 0 to 1"),
        (
            "probe-budget",
            "EFAPROBE_PROBE_BUDGET",
            "0",
            "from 0.1 to 10000",
        ),
        (
            "fabric-rtt-every",
            "EFAPROBE_FABRIC_RTT_EVERY",
            "0",
            "from 1 to 1000",
        ),
    ];
    let from_flags = [
        ("pod-ip", "POD_IP", "x", "is not an IP address"),
        (
            "interval",
            "EFAPROBE_INTERVAL",
            "100000h",
            "allowed: 100ms to 10m",
        ),
        ("max-rtt", "EFAPROBE_MAX_RTT", "0", "allowed: 100us to 10s"),
        ("peers", "EFAPROBE_PEERS", "[::1:9476", "[IPv6]:PORT"),
    ];
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--imds-endpoint", "none", "--node-name", "n"])
        .env_remove("NODE_NAME");
    for (_, env, value, _) in from_env {
        cmd.env(env, value);
    }
    for (flag, _, value, _) in from_flags {
        cmd.arg(format!("--{flag}={value}"));
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("efaprobe agent: invalid setting "))
        .collect();
    assert_eq!(lines.len(), from_env.len() + from_flags.len(), "{err}");
    for (flag, env, value, allowed) in from_env.iter().chain(&from_flags) {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("(flag --{flag}, env {env})")))
            .unwrap_or_else(|| panic!("--{flag} / {env} not named: {err}"));
        assert!(line.contains(&format!("{value:?}")), "{line}");
        assert!(line.contains(allowed), "{line}");
        assert!(!line.contains("Some("), "{line}");
    }
}

#[test]
fn a_taken_listen_port_is_said_plainly() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["agent", "--imds-endpoint", "none", "--node-name", "n"])
        .args(["--fabric-provider", "none", "--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent still runs on a taken port after 10s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // 1, not 64: the setting is valid; the port is taken now, and may be free on a restart.
    assert_eq!(status.code(), Some(1), "{err}");
    let port = listen.rsplit_once(':').unwrap().1;
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
    assert!(
        err.contains("--listen") && err.contains("EFAPROBE_LISTEN"),
        "{err}"
    );
    drop(taken);
}

#[test]
fn device_counters_from_sysfs_are_exported_each_round() {
    // A fake sysfs tree: one EFA device, one port, a few counters.
    let root = tempfile::tempdir().unwrap();
    let counters = root
        .path()
        .join("class/infiniband/rdmap0s6/ports/1/hw_counters");
    std::fs::create_dir_all(&counters).unwrap();
    for (name, value) in [
        ("tx_bytes", "1000"),
        ("rx_bytes", "2000"),
        ("rx_drops", "3"),
    ] {
        std::fs::write(counters.join(name), format!("{value}\n")).unwrap();
    }
    let port = 27_766;
    let agent = start_agent(&[
        "--node-name",
        "counted",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--fabric-provider",
        "none",
        "--interval",
        "1s",
        "--timeout",
        "500ms",
        "--sysfs-root",
        root.path().to_str().unwrap(),
    ]);
    let sample = |m: &[support::metrics::Sample], counter: &str| {
        value(
            m,
            "efa_device_hw_stat_total",
            &[("device", "rdmap0s6"), ("port", "1"), ("counter", counter)],
        )
    };
    wait_for("counters exported", Duration::from_secs(10), || {
        let m = parse(&get(port, "/metrics")?.1);
        (sample(&m, "rx_drops") == Some(3.0)).then_some(())
    });
    // The device counts on: the next round reads the new value.
    std::fs::write(counters.join("rx_drops"), "7\n").unwrap();
    wait_for("counters follow sysfs", Duration::from_secs(10), || {
        let m = parse(&get(port, "/metrics")?.1);
        (sample(&m, "rx_drops") == Some(7.0) && sample(&m, "tx_bytes") == Some(1000.0))
            .then_some(())
    });
    assert_eq!(agent.stop(), Some(0));
}

#[test]
fn control_characters_in_a_peers_hello_are_not_shown() {
    let (dirty_port, name_port) = (fake_peer(dirty_hello), fake_peer(dirty_name));
    let a_port = 27_843;
    let a = ip_only_agent(
        "node-a",
        a_port,
        &format!("127.0.0.1:{dirty_port},127.0.0.1:{name_port}"),
    );
    let peers = wait_for("both peers judged", Duration::from_secs(15), || {
        let peers = peer_json(a_port);
        let judged = |p: &serde_json::Value| p["rounds"].as_u64().unwrap_or(0) >= 2;
        (peers.len() == 2 && peers.iter().all(judged)).then_some(peers)
    });
    let mut shown = Vec::new();
    json_strings(&serde_json::Value::Array(peers.clone()), &mut shown);
    assert!(
        shown.iter().all(|s| !s.chars().any(char::is_control)),
        "control characters in /v1/peers: {shown:?}"
    );
    assert!(
        !shown.iter().any(|s| s.contains('\u{202e}')),
        "a bidirectional override in /v1/peers: {shown:?}"
    );
    // The accepted hello is shown, its fields replaced rather than dropped.
    let clean = "x\u{FFFD}y\u{FFFD}[2Jz\u{FFFD}\u{FFFD}\u{FFFD}";
    let accepted = peers
        .iter()
        .find(|p| p["name"] == "dirty-peer")
        .expect("{peers:?}");
    assert_eq!(accepted["hello"]["agent_version"], clean, "{accepted}");
    assert_eq!(accepted["hello"]["fabric"]["error"], clean, "{accepted}");
    assert_eq!(
        accepted["hello"]["fabric"]["endpoints"][0]["display"],
        clean
    );
    // The refused one says why, printably.
    let refused = peers
        .iter()
        .find(|p| p["address"] == format!("127.0.0.1:{name_port}"))
        .unwrap();
    assert_eq!(refused["ip"]["last_failure"], "protocol", "{refused}");

    let (status, page) = get(a_port, "/").unwrap();
    assert_eq!(status, 200);
    let unprintable: Vec<char> = page
        .chars()
        .filter(|c| (c.is_control() && *c != '\n') || *c == '\u{202e}')
        .collect();
    assert!(
        unprintable.is_empty(),
        "{unprintable:?} on the status page:\n{page}"
    );
    assert!(page.contains("dirty-peer"), "{page}");
    assert_eq!(a.stop(), Some(0));
}

/// Polls `ep` (its progress is manual) for `how_long`.
fn drive(ep: &mut fabric::Endpoint, how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        ep.poll(&mut Vec::new(), &mut Vec::new()).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A ping claiming to come from `sender`, sent from `ep` however long the provider needs.
fn crafted_ping(ep: &mut fabric::Endpoint, to: fabric::FabricAddr, sender: &[u8], seq: u64) {
    use efaprobe::fabric_ping::wire::{Kind, Message};
    let mut bytes = Vec::new();
    Message {
        kind: Kind::Ping,
        seq,
        sender_id: 77,
        token: seq,
        dwell_ns: 0,
        unread_ns: 0,
        flags: 0,
        address: sender,
    }
    .encode_into(64, &mut bytes);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ep.send(to, &bytes) {
            Ok(_) => return,
            Err(_) if Instant::now() < deadline => drive(ep, Duration::from_millis(1)),
            Err(e) => panic!("crafted ping not sent: {e}"),
        }
    }
}

/// Issue #15 item 4 on the agent: pings whose sender address is all zeros or of family
/// 0xffff, then pings from 200 distinct senders that never answer, sent to an agent's fabric
/// endpoint; it goes on answering its real peer and probing it (the fabric path stays
/// reachable both ways, fabric probes keep succeeding), and its /metrics counts what it
/// refused and evicted.
///
/// Not asserted, because it does not hold: the peer's larger probes come from a second
/// endpoint the attacked agent knows only as a sender, and a flood of silent senders holds
/// the strangers' share of pongs for good on rxd; a second endpoint first heard during the
/// flood gets no pongs, and the peer reports the agent `degraded` (`probe_size`).
#[test]
fn crafted_fabric_pings_leave_the_agent_answering_and_probing() {
    let (a_port, b_port) = (27_767, 27_768);
    let agent = |name: &str, port: u16, peer: u16| {
        start_agent(&[
            "--node-name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--fabric-provider",
            "udp;ofi_rxd",
            "--fabric-bind",
            "127.0.0.1",
            "--peers",
            &format!("127.0.0.1:{peer}"),
            "--interval",
            "1s",
            "--timeout",
            "500ms",
        ])
    };
    let a = agent("node-a", a_port, b_port);
    let b = agent("node-b", b_port, a_port);
    let healthy = |port: u16| {
        let peers = peer_json(port);
        (peers.len() == 1 && peers[0]["state"] == "healthy").then_some(())
    };
    let reachable = |port: u16| {
        let peers = peer_json(port);
        (peers.len() == 1
            && peers[0]["fabric"]["reachable"] == true
            && peers[0]["ip"]["reachable"] == true)
            .then_some(())
    };
    wait_for("a and b healthy", Duration::from_secs(20), || {
        healthy(a_port).and(healthy(b_port))
    });
    let fabric_ok = |port: u16| {
        let m = parse(&get(port, "/metrics")?.1);
        value(
            &m,
            "efa_probes_total",
            &[("path", "fabric"), ("result", "ok")],
        )
    };
    let (a_ok, b_ok) = (fabric_ok(a_port).unwrap(), fabric_ok(b_port).unwrap());

    let hello: serde_json::Value =
        serde_json::from_str(&get(a_port, "/v1/hello").unwrap().1).unwrap();
    let a_address = fabric::EndpointAddress::from_hex(
        hello["fabric"]["endpoints"][0]["address"].as_str().unwrap(),
    )
    .unwrap();
    let list =
        fabric::InfoList::get(&fabric::Query::provider("udp;ofi_rxd").bind(Some("127.0.0.1")))
            .unwrap();
    let domain = fabric::Domain::open(list.iter().next().unwrap().to_owned().unwrap()).unwrap();
    let mut attacker = fabric::Endpoint::open(&domain, fabric::EndpointConfig::default()).unwrap();
    let to = attacker.insert_peer(&a_address).unwrap();
    let mut family_ffff = a_address.to_vec();
    family_ffff[..2].copy_from_slice(&[0xff, 0xff]);
    crafted_ping(&mut attacker, to, &vec![0; a_address.len()], 1);
    crafted_ping(&mut attacker, to, &family_ffff, 2);
    for i in 0..200u16 {
        let mut silent = a_address.to_vec();
        silent[2..4].copy_from_slice(&(21_700 + i).to_be_bytes());
        crafted_ping(&mut attacker, to, &silent, 100 + u64::from(i));
    }
    drive(&mut attacker, Duration::from_secs(1));

    // Three more rounds at least: both still healthy, and fabric probes still answered.
    std::thread::sleep(Duration::from_secs(3));
    wait_for(
        "a and b still reach each other",
        Duration::from_secs(10),
        || reachable(a_port).and(reachable(b_port)),
    );
    assert_eq!(peer_json(a_port)[0]["state"], "healthy", "a's view of b");
    wait_for(
        "fabric probes answered after the attack",
        Duration::from_secs(10),
        || (fabric_ok(a_port)? >= a_ok + 3.0 && fabric_ok(b_port)? >= b_ok + 3.0).then_some(()),
    );
    let m = parse(&get(a_port, "/metrics").unwrap().1);
    assert_eq!(
        value(
            &m,
            "efa_fabric_malformed_total",
            &[("reason", "bad_address")]
        ),
        Some(2.0)
    );
    assert!(value(&m, "efa_fabric_learned_peers_evicted_total", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&m, "efa_fabric_endpoint_reopens_total", &[]),
        Some(0.0)
    );
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
}

/// A hello naming the node `twin`, from an agent started as `instance_id`.
fn twin_hello(s: TcpStream, instance_id: u64) {
    let hello = format!(
        r#"{{"node_name":"twin","agent_version":"1","instance_id":{instance_id},
        "fabric":{{"provider":"none","available":false,"endpoints":[]}}}}"#
    );
    serve_hello(s, &hello);
}

/// `twin`, answering every hello.
fn twin_one(s: TcpStream) {
    twin_hello(s, 1);
}

/// Another agent saying it is `twin`: it answers its first two hellos, then closes every
/// connection at once, so that its verdict (`down`) differs from the first's.
fn twin_two(s: TcpStream) {
    static SERVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 2 {
        twin_hello(s, 2);
    }
}

#[test]
fn two_peers_saying_one_node_name_keep_their_own_verdicts() {
    let (one_port, two_port) = (fake_peer(twin_one), fake_peer(twin_two));
    let a_port = 27_977;
    let a = ip_only_agent(
        "node-a",
        a_port,
        &format!("127.0.0.1:{one_port},127.0.0.1:{two_port}"),
    );
    let (one, two) = (
        format!("127.0.0.1:{one_port}"),
        format!("127.0.0.1:{two_port}"),
    );
    // Both said `twin`; the second has stopped answering and is judged down.
    let peers = wait_for("both twins judged", Duration::from_secs(30), || {
        let peers = peer_json(a_port);
        let state = |a: &str| {
            peers
                .iter()
                .find(|p| p["address"] == a)
                .map(|p| p["state"].clone())
        };
        (peers.len() == 2
            && peers.iter().all(|p| p["name"] == "twin")
            && state(&one) == Some("unknown".into())
            && state(&two) == Some("down".into()))
        .then_some(peers)
    });
    let conflicted: Vec<&serde_json::Value> = peers
        .iter()
        .filter(|p| !p["name_conflict"].is_null())
        .collect();
    assert_eq!(conflicted.len(), 1, "one second claimant: {peers:?}");
    let claimant = conflicted[0];
    let holder = peers.iter().find(|p| p["name_conflict"].is_null()).unwrap();
    let conflict = &claimant["name_conflict"];
    assert_eq!(conflict["reason"], "name_conflict", "{claimant}");
    assert_eq!(conflict["held_by"], holder["address"], "{claimant}");
    assert_eq!(
        conflict["instance_id"], claimant["hello"]["instance_id"],
        "{claimant}"
    );
    let holder_state = holder["state"].as_str().unwrap().to_owned();

    // Scrape after scrape, `peer="twin"` is the holder's verdict, and both count once.
    for _ in 0..4 {
        let (_, text) = get(a_port, "/metrics").unwrap();
        let samples = parse(&text);
        let twin_states: Vec<(String, f64)> = samples
            .iter()
            .filter(|s| {
                s.name == "efa_peer_state"
                    && s.labels.get("peer").map(String::as_str) == Some("twin")
            })
            .map(|s| (s.labels["state"].clone(), s.value))
            .collect();
        assert_eq!(twin_states.len(), 6, "one series per state: {text}");
        let on: Vec<&str> = twin_states
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(s, _)| s.as_str())
            .collect();
        assert_eq!(on, [holder_state.as_str()], "{text}");
        let by_state = |s: &str| value(&samples, "efa_peers_by_state", &[("state", s)]);
        assert_eq!(by_state("unknown"), Some(1.0), "{text}");
        assert_eq!(by_state("down"), Some(1.0), "{text}");
        assert_eq!(
            value(&samples, "efa_peer_name_conflicts_total", &[]),
            Some(1.0),
            "{text}"
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    // The claimant is still the same one.
    let later = peer_json(a_port);
    let still = later
        .iter()
        .find(|p| p["address"] == claimant["address"])
        .unwrap();
    assert_eq!(still["name_conflict"]["held_by"], holder["address"]);
    assert_eq!(a.stop(), Some(0));
}

/// Issue #15 item 7: a peer whose hello withdraws its fabric is judged from that hello at
/// once. A fake peer serves a hello naming a real agent's fabric endpoint (so the probing
/// agent's pings are answered: `healthy`), then `available: false`; within two rounds the
/// probing agent reads `peer_no_fabric`, not a drop of the old address.
#[test]
fn a_hello_that_withdraws_its_fabric_wins_over_the_old_address() {
    use std::sync::{Arc, Mutex};
    let (a_port, responder_port) = (27_771, 27_772);
    let fabric_agent = |name: &str, port: u16, peer: &str| {
        start_agent(&[
            "--node-name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--fabric-provider",
            "udp;ofi_rxd",
            "--fabric-bind",
            "127.0.0.1",
            "--peers",
            peer,
            "--interval",
            "1s",
            "--timeout",
            "500ms",
        ])
    };
    // The responder: a real agent whose fabric endpoint answers the pings.
    let responder = fabric_agent("responder", responder_port, &format!("127.0.0.1:{a_port}"));
    let endpoint = wait_for("the responder's hello", Duration::from_secs(10), || {
        let hello: serde_json::Value =
            serde_json::from_str(&get(responder_port, "/v1/hello")?.1).ok()?;
        Some(hello["fabric"]["endpoints"][0].clone()).filter(|e| e.is_object())
    });
    let hello_of = |available: bool| {
        serde_json::json!({
            "node_name": "moving-peer",
            "agent_version": "test",
            "instance_id": 7,
            "fabric": {
                "provider": "udp;ofi_rxd",
                "available": available,
                "endpoints": if available { vec![endpoint.clone()] } else { vec![] },
            },
        })
        .to_string()
    };
    let served = Arc::new(Mutex::new(hello_of(true)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_port = listener.local_addr().unwrap().port();
    let serving = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let hello = serving.lock().unwrap().clone();
            std::thread::spawn(move || serve_hello(stream, &hello));
        }
    });
    let a = fabric_agent("node-a", a_port, &format!("127.0.0.1:{fake_port}"));
    let state_of = || peer_json(a_port).first().cloned();
    wait_for("the moving peer healthy", Duration::from_secs(20), || {
        state_of().filter(|p| p["state"] == "healthy")
    });
    *served.lock().unwrap() = hello_of(false);
    let withdrawn = Instant::now();
    let peer = wait_for("peer_no_fabric", Duration::from_secs(10), || {
        state_of().filter(|p| p["reason"] == "peer_no_fabric")
    });
    // Within two rounds (1 s each) and a hello fetch, with slack for a loaded machine.
    let took = withdrawn.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "peer_no_fabric after {took:?}"
    );
    assert_eq!(peer["state"], "fabric_dropped", "{peer}");
    assert_eq!(peer["fabric"]["last_failure"], "peer_no_fabric", "{peer}");
    // Never judged on the old address meanwhile, and it stays so.
    std::thread::sleep(Duration::from_secs(2));
    let peer = state_of().unwrap();
    assert_eq!(peer["reason"], "peer_no_fabric", "{peer}");
    assert_eq!(a.stop(), Some(0));
    assert_eq!(responder.stop(), Some(0));
}

/// A peer of another agent version: it answers `/v1/hello` with JSON that is not our hello.
fn foreign_hello(s: TcpStream) {
    serve_hello(s, r#"{"version":2,"node":{"name":"peer"},"fabrics":[]}"#);
}

/// Issue #15 item 7: a peer whose agent answers with another version's hello is `unknown`
/// with `ip_protocol` (its host and agent are up), not `down`.
#[test]
fn a_hello_of_another_agent_version_is_ip_protocol_not_down() {
    let foreign_port = fake_peer(foreign_hello);
    let a_port = 27_773;
    let a = start_agent(&[
        "--node-name",
        "node-a",
        "--listen",
        &format!("127.0.0.1:{a_port}"),
        "--fabric-provider",
        "udp;ofi_rxd",
        "--fabric-bind",
        "127.0.0.1",
        "--peers",
        &format!("127.0.0.1:{foreign_port}"),
        "--interval",
        "1s",
        "--timeout",
        "500ms",
    ]);
    let peer = wait_for(
        "a verdict on the foreign peer",
        Duration::from_secs(15),
        || {
            peer_json(a_port)
                .first()
                .filter(|p| p["probed"] == true && p["rounds"].as_u64() >= Some(3))
                .cloned()
        },
    );
    assert_eq!(peer["state"], "unknown", "{peer}");
    assert_eq!(peer["reason"], "ip_protocol", "{peer}");
    assert_eq!(peer["ip"]["last_failure"], "protocol", "{peer}");
    assert_eq!(a.stop(), Some(0));
}
