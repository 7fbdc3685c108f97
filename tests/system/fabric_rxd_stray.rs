//! Stray datagrams to a `udp;ofi_rxd` endpoint (README: "Who can reach the rxd port").
//!
//! libfabric's rxd trusts every datagram its UDP socket receives: it reads a header and
//! dereferences the peer the header names without checking that it exists, or that there is a
//! header at all, so one datagram to the endpoint's port ended the process with SIGSEGV
//! (libfabric 1.17 on Debian 12 and 2.1 on Debian 13 alike; a plain libfabric program dies at
//! the same place). Two things are held here:
//!
//! - Malformed datagrams (empty, short, not rxd's) are dropped by the socket filter the
//!   `fabric` layer attaches to rxd's socket: the process lives on and answers its peers.
//! - A well-formed rxd header naming an unknown peer still crashes rxd, and nothing in the
//!   process can recover from that; the death is reported as what it is. Debian 12's
//!   libinfinipath (linked by its libfabric) caught SIGSEGV and called `exit(1)`, so a crash
//!   looked like an ordinary error; `fabric::process::init` takes the signal back, and the
//!   process dies of SIGSEGV (139 from a shell or a container runtime).
//!
//! Loopback only: the datagrams go to 127.0.0.1.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::agent::{Agent, BIN};
use support::process::{wait_until, Process};

/// The `efaprobe agent` test's HTTP port, and the fabric-ping tests' exchange ports.
const AGENT_PORT: u16 = 27_951;
const GUARDED_EXCHANGE_PORT: u16 = 27_952;
const CRASHED_EXCHANGE_PORT: u16 = 27_953;

/// Datagrams the socket filter drops: empty, one byte, one byte short of an rxd header, a
/// header of another rxd version, one of a type rxd does not define, another protocol.
fn malformed_datagrams() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![2],
        rxd_header(2, 0, 0)[..15].to_vec(),
        rxd_header(1, 0, 60_000),
        rxd_header(2, 200, 60_000),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ]
}

/// An rxd base header: version, type, flags 0, peer index (host order), sequence 0.
fn rxd_header(version: u8, kind: u8, peer: u32) -> Vec<u8> {
    let mut h = vec![version, kind, 0, 0];
    h.extend_from_slice(&peer.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h
}

/// What still crashes rxd: a well-formed header (version 2, type MSG) naming a peer index
/// the endpoint never gave out.
fn crafted_header() -> Vec<u8> {
    rxd_header(2, 0, 60_000)
}

fn send_datagrams(port: u16, datagrams: &[Vec<u8>]) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in datagrams {
        socket.send_to(d, ("127.0.0.1", port)).unwrap();
    }
}

/// How the child ended, within `limit`; `None` if it still runs.
fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Sends the crafted header to the rxd endpoint at `port` and returns how the process ended.
/// Should a libfabric without the bug survive it, the process is sent SIGSEGV instead (and
/// the test says so): the point held here is how a death by that signal is reported.
fn crash_by_crafted_header(child: &mut Child, port: u16) -> ExitStatus {
    send_datagrams(port, &[crafted_header()]);
    if let Some(status) = exit_within(child, Duration::from_secs(10)) {
        return status;
    }
    eprintln!(
        "NOTE: rxd survived a header naming an unknown peer: this libfabric may have fixed it \
         (README: Who can reach the rxd port); sending SIGSEGV"
    );
    let _ = Command::new("kill")
        .args(["-SEGV", &child.id().to_string()])
        .status();
    exit_within(child, Duration::from_secs(10)).expect("the process survives SIGSEGV")
}

fn assert_died_of_sigsegv(process: &mut Process, status: ExitStatus) {
    let mut stderr = String::new();
    if let Some(mut pipe) = process.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert_eq!(
        (status.code(), status.signal()),
        (None, Some(libc::SIGSEGV)),
        "the process must die of SIGSEGV, not exit with a status ({status:?}); stderr:\n{stderr}"
    );
}

/// A `fabric-ping` responder on `udp;ofi_rxd` and the UDP port of its endpoint, read from
/// the first line it prints (`... fabric address fi_sockaddr_in://127.0.0.1:PORT; ...`).
fn start_responder(exchange_port: u16) -> (Process, u16) {
    let child = Command::new(BIN)
        .args([
            "fabric-ping",
            "--provider",
            "udp;ofi_rxd",
            "--bind",
            "127.0.0.1",
        ])
        .args(["--port", &exchange_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = Process(child);
    // Read off a thread, so that a responder that prints nothing fails the test instead of
    // hanging it.
    let stdout = process.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the responder prints its fabric address");
    let port = line
        .split("fi_sockaddr_in://127.0.0.1:")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no rxd address in {line:?}"));
    (process, port)
}

#[test]
fn malformed_datagrams_never_reach_rxd_and_the_responder_still_answers() {
    let (mut responder, port) = start_responder(GUARDED_EXCHANGE_PORT);
    send_datagrams(port, &malformed_datagrams());
    assert_eq!(
        exit_within(&mut responder.0, Duration::from_secs(2)),
        None,
        "the responder ended on a malformed datagram"
    );
    let probe = Command::new(BIN)
        .args([
            "fabric-ping",
            "--provider",
            "udp;ofi_rxd",
            "--bind",
            "127.0.0.1",
        ])
        .args(["--peer", &format!("127.0.0.1:{GUARDED_EXCHANGE_PORT}")])
        .args(["--count", "3", "--interval", "0"])
        .output()
        .unwrap();
    assert_eq!(
        probe.status.code(),
        Some(0),
        "the prober after the strays: {}",
        String::from_utf8_lossy(&probe.stdout)
    );
}

#[test]
fn a_crafted_rxd_header_ends_fabric_ping_by_sigsegv_not_exit_1() {
    let (mut responder, port) = start_responder(CRASHED_EXCHANGE_PORT);
    let status = crash_by_crafted_header(&mut responder.0, port);
    assert_died_of_sigsegv(&mut responder, status);
}

#[test]
fn the_agent_outlives_malformed_datagrams_and_a_crafted_header_ends_it_by_sigsegv() {
    let mut agent = Agent::new("stray-target")
        .listen(format!("127.0.0.1:{AGENT_PORT}"))
        .args([
            "--fabric-provider",
            "udp;ofi_rxd",
            "--fabric-bind",
            "127.0.0.1",
        ])
        .args(["--interval", "1s", "--timeout", "500ms"])
        .stderr_piped()
        .spawn();
    // The agent publishes its endpoint in its hello: a raw sockaddr_in, whose bytes 2..4 are
    // the UDP port in network order.
    let mut port = None;
    wait_until("the agent's hello", Duration::from_secs(20), || {
        if let Ok(Some(status)) = agent.0.try_wait() {
            panic!("the agent ended before it served its hello: {status:?}");
        }
        let hello = get("/v1/hello").ok_or("no hello yet")?;
        let hello: serde_json::Value = serde_json::from_str(&hello).map_err(|e| e.to_string())?;
        let hex = hello["fabric"]["endpoints"][0]["address"]
            .as_str()
            .ok_or("no fabric endpoint in the hello")?;
        let raw = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| e.to_string())?;
        if raw.len() < 4 || u16::from_ne_bytes([raw[0], raw[1]]) != libc::AF_INET as u16 {
            return Err(format!("not a sockaddr_in: {hex}"));
        }
        port = Some(u16::from_be_bytes([raw[2], raw[3]]));
        Ok(())
    });
    let port = port.unwrap();

    send_datagrams(port, &malformed_datagrams());
    assert_eq!(
        exit_within(&mut agent.0, Duration::from_secs(2)),
        None,
        "the agent ended on a malformed datagram"
    );
    assert!(get("/healthz").is_some(), "the agent stopped answering");

    let status = crash_by_crafted_header(&mut agent.0, port);
    assert_died_of_sigsegv(&mut agent, status);
}

/// The body of `GET path` from the agent under test, bounded.
fn get(path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", AGENT_PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
