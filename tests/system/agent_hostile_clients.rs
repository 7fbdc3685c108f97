//! `efaprobe agent` against hostile clients of its HTTP port, under a container's
//! open-files limit (`prlimit --nofile=1024`): idle connections and slow-header clients
//! ("slowloris") neither starve it of descriptors nor change its peers' verdicts.

use crate::support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::{wait_until, Process};

use support::agent::{terminate, BIN};

/// The attack, as the issue measured it: idle connections beyond the container's soft
/// limit of 1024, and slow-header clients on top.
const IDLE_CLIENTS: usize = 1100;
const SLOW_CLIENTS: usize = 300;
/// How long the attack runs; every loop below is bounded by it.
const ATTACK: Duration = Duration::from_secs(12);
/// The agent's header-read timeout (`http::serve::HEADER_READ_TIMEOUT`), and what a
/// connection may outlive it by as this test sees it: the time it waits in the listen
/// backlog before the agent accepts it (its clock starts at the accept), the agent's check,
/// and this test's polling of 1400 sockets on a loaded machine. A connection the agent never
/// closed would live the whole attack.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_SLACK: Duration = Duration::from_millis(3_500);
/// Closed connections the attacker opens again per round of its loop (every 100 ms): enough
/// to keep the agent at its connection bound for the whole attack.
const RECONNECTS_PER_ROUND: usize = 40;

/// `command` (the agent binary, or `prlimit ... -- BIN`) with the agent's arguments, its
/// log (at info) written to `log`.
fn agent(
    mut command: Command,
    name: &str,
    port: u16,
    peer_port: u16,
    log: &std::path::Path,
) -> Process {
    command
        .arg("agent")
        .args(["--imds-endpoint", "none", "--node-name", name])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--peers", &format!("127.0.0.1:{peer_port}")])
        .args([
            "--fabric-provider",
            "udp;ofi_rxd",
            "--fabric-bind",
            "127.0.0.1",
        ])
        .args(["--interval", "1s", "--timeout", "500ms"])
        .env("EFAPROBE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Process(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}")),
    )
}

/// GET `path`, answered within `limit` or `None`.
fn get(port: u16, path: &str, limit: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.set_write_timeout(Some(limit)).ok()?;
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

/// The state the agent on `port` gives its one peer, if it answers.
fn peer_state(port: u16) -> Option<String> {
    let (_, body) = get(port, "/v1/peers", Duration::from_secs(2))?;
    let peers: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(peers.first()?["state"].as_str()?.to_owned())
}

/// One hostile connection: never sends a request (idle), or sends a head a byte at a time
/// and never ends it (slow).
struct Hostile {
    stream: TcpStream,
    opened: Instant,
    slow: bool,
}

impl Hostile {
    fn open(port: u16, slow: bool) -> Option<Hostile> {
        let mut stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
                .ok()?;
        if slow {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .ok()?;
        }
        stream.set_nonblocking(true).ok()?;
        Some(Hostile {
            stream,
            opened: Instant::now(),
            slow,
        })
    }

    /// True once the agent has closed it.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }

    fn drip(&mut self) {
        let _ = self.stream.write(b"a");
    }
}

/// What the attacker saw: how many connections it opened, how many the agent closed, and
/// the longest any lived (closed, or still open at the end).
#[derive(Debug, Default)]
struct AttackReport {
    opened: usize,
    closed_by_the_agent: usize,
    longest_idle_life: Duration,
    longest_slow_life: Duration,
}

/// Holds `IDLE_CLIENTS` + `SLOW_CLIENTS` connections to `port` for [`ATTACK`], dripping a
/// byte into each slow one every 500 ms and opening closed ones again.
fn attack(port: u16, running: &AtomicBool) -> AttackReport {
    let mut report = AttackReport::default();
    let mut clients: Vec<Hostile> = Vec::new();
    for slow in
        std::iter::repeat_n(false, IDLE_CLIENTS).chain(std::iter::repeat_n(true, SLOW_CLIENTS))
    {
        if let Some(c) = Hostile::open(port, slow) {
            clients.push(c);
            report.opened += 1;
        }
    }
    let started = Instant::now();
    let mut last_drip = Instant::now();
    let mut to_reopen = Vec::new();
    while started.elapsed() < ATTACK && running.load(Ordering::Relaxed) {
        let drip = last_drip.elapsed() >= Duration::from_millis(500);
        let mut kept = Vec::with_capacity(clients.len());
        for mut c in clients.drain(..) {
            if c.closed() {
                let life = c.opened.elapsed();
                report.closed_by_the_agent += 1;
                let longest = if c.slow {
                    &mut report.longest_slow_life
                } else {
                    &mut report.longest_idle_life
                };
                *longest = (*longest).max(life);
                to_reopen.push(c.slow);
                continue;
            }
            if drip && c.slow {
                c.drip();
            }
            kept.push(c);
        }
        clients = kept;
        if drip {
            last_drip = Instant::now();
        }
        for _ in 0..RECONNECTS_PER_ROUND.min(to_reopen.len()) {
            let slow = to_reopen.pop().unwrap();
            if let Some(c) = Hostile::open(port, slow) {
                clients.push(c);
                report.opened += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // What is still open counts with its age so far: it must not be older either.
    for c in &clients {
        let longest = if c.slow {
            &mut report.longest_slow_life
        } else {
            &mut report.longest_idle_life
        };
        *longest = (*longest).max(c.opened.elapsed());
    }
    report
}

#[test]
fn idle_and_slow_clients_neither_starve_the_agent_nor_change_verdicts() {
    // 1400 client sockets and two agents: its timings must not share the cores with another
    // heavy test.
    let _heavy = crate::one_heavy_at_a_time();
    let Ok(prlimit) = Command::new("prlimit").arg("--version").output() else {
        panic!("prlimit (util-linux) is needed to run the agent under a soft limit of 1024");
    };
    assert!(prlimit.status.success());
    // This test holds ~1500 sockets itself.
    let own = fabric::process::raise_open_files_limit().unwrap();
    if own.now < 4096 {
        let why = format!(
            "this process may open only {} files; the attack needs 4096",
            own.now
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a_port, b_port) = (27_841, 27_842);
    let a_log = dir.path().join("a.log");
    let mut under_limit = Command::new("prlimit");
    under_limit.args(["--nofile=1024:1024", "--", BIN]);
    let a = agent(under_limit, "hostile-a", a_port, b_port, &a_log);
    let b = agent(
        Command::new(BIN),
        "hostile-b",
        b_port,
        a_port,
        &dir.path().join("b.log"),
    );
    // prlimit sets the limit, then runs the agent in its place (the same process).
    wait_until(
        "the agent runs under 1024 files",
        Duration::from_secs(5),
        || {
            let limits = std::fs::read_to_string(format!("/proc/{}/limits", a.0.id()))
                .map_err(|e| e.to_string())?;
            let open_files = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .unwrap_or_default();
            let exe =
                std::fs::read_link(format!("/proc/{}/exe", a.0.id())).map_err(|e| e.to_string())?;
            let soft = open_files.split_whitespace().nth(3);
            (soft == Some("1024") && exe.ends_with("efaprobe"))
                .then_some(())
                .ok_or(format!("{exe:?}: {open_files}"))
        },
    );

    wait_until(
        "both agents see each other healthy",
        Duration::from_secs(30),
        || {
            let states = (peer_state(a_port), peer_state(b_port));
            match &states {
                (Some(a), Some(b)) if a == "healthy" && b == "healthy" => Ok(()),
                _ => Err(format!("{states:?}")),
            }
        },
    );

    let running = Arc::new(AtomicBool::new(true));
    let attacker = {
        let running = running.clone();
        std::thread::spawn(move || attack(a_port, &running))
    };
    // While it runs: /healthz within a second, every time, and both verdicts unchanged.
    let slowest_healthz = Arc::new(Mutex::new(Duration::ZERO));
    let mut verdicts = Vec::new();
    let started = Instant::now();
    // Let the attack reach the bound first.
    std::thread::sleep(Duration::from_secs(1));
    while started.elapsed() < ATTACK - Duration::from_secs(1) {
        let asked = Instant::now();
        let answer = get(a_port, "/healthz", Duration::from_secs(1));
        let took = asked.elapsed();
        assert_eq!(
            answer,
            Some((200, "ok".to_owned())),
            "/healthz under attack, after {took:?}"
        );
        let mut slowest = slowest_healthz.lock().unwrap();
        *slowest = (*slowest).max(took);
        drop(slowest);
        verdicts.push((peer_state(a_port), peer_state(b_port)));
        std::thread::sleep(Duration::from_millis(250));
    }
    running.store(false, Ordering::Relaxed);
    let report = attacker.join().unwrap();
    eprintln!(
        "attack: {report:?}; slowest /healthz {:?}; {} verdict samples",
        slowest_healthz.lock().unwrap(),
        verdicts.len()
    );

    let healthy = Some("healthy".to_owned());
    assert!(
        verdicts
            .iter()
            .all(|v| *v == (healthy.clone(), healthy.clone())),
        "verdicts changed under attack: {verdicts:?}"
    );
    // The attack reached past the bound: the agent closed connections to make room or at
    // their timeouts, and none outlived the header-read timeout.
    assert!(report.opened > IDLE_CLIENTS + SLOW_CLIENTS, "{report:?}");
    assert!(report.closed_by_the_agent > 0, "{report:?}");
    assert!(
        report.longest_idle_life <= HEADER_READ_TIMEOUT + CLOSE_SLACK,
        "an idle connection lived too long: {report:?}"
    );
    assert!(
        report.longest_slow_life <= HEADER_READ_TIMEOUT + CLOSE_SLACK,
        "a slow-header connection lived too long: {report:?}"
    );

    assert_eq!(terminate(a), Some(0), "exit 0 on SIGTERM");
    assert_eq!(terminate(b), Some(0));
    let log = std::fs::read_to_string(&a_log).unwrap();
    assert!(
        !log.contains("out of file descriptors") && !log.contains("Too many open files"),
        "{log}"
    );
    let bound = log
        .lines()
        .find(|l| l.contains("HTTP connections bounded"))
        .unwrap_or_else(|| panic!("no bound logged:\n{log}"));
    assert!(bound.contains("768"), "the bound for 1024 files: {bound}");
}
