//! A stray datagram to a `udp;ofi_rxd` endpoint (README: "Who can reach the rxd port").
//!
//! libfabric's rxd trusts the peer index in every packet's header and dereferences the peer
//! it names without checking that it exists or that the packet holds a header, so any
//! datagram (even an empty one) to the endpoint's UDP port ends the process with SIGSEGV:
//! libfabric 1.17 (Debian 12) and 2.1 (Debian 13) alike. Nothing in the process can recover
//! from that; what these tests hold is that the death is reported as what it is. Debian 12's
//! libinfinipath (linked by its libfabric) catches SIGSEGV and calls `exit(1)`, which made a
//! crash look like an ordinary error; `fabric::process::init` takes the signal back, so the
//! process dies of SIGSEGV and a supervisor (a shell's 139, the kubelet's "Error (139)",
//! systemd's "signal=SEGV") sees it.
//!
//! Loopback only: the datagram goes to 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::process::{busy, wait_until, Process};

const BIN: &str = env!("CARGO_BIN_EXE_efaprobe");
/// The `efaprobe agent` test's HTTP port and the fabric-ping test's exchange port.
const AGENT_PORT: u16 = 27_951;
const EXCHANGE_PORT: u16 = 27_952;

/// An empty datagram to 127.0.0.1:`port`, from an unrelated socket.
fn send_stray_datagram(port: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&[], ("127.0.0.1", port)).unwrap();
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

/// Sends the stray datagram to the rxd endpoint at `port` and returns how the process ended.
/// Should a libfabric without the bug survive it, the process is sent SIGSEGV instead (and
/// the test says so): the point held here is how a death by that signal is reported.
fn crash_by_stray_datagram(child: &mut Child, port: u16) -> ExitStatus {
    send_stray_datagram(port);
    if let Some(status) = exit_within(child, Duration::from_secs(10)) {
        return status;
    }
    eprintln!(
        "NOTE: the rxd endpoint survived a stray datagram: this libfabric may have fixed \
         rxd's missing header checks (README: Who can reach the rxd port); sending SIGSEGV"
    );
    let _ = Command::new("kill")
        .args(["-SEGV", &child.id().to_string()])
        .status();
    exit_within(child, Duration::from_secs(10)).expect("the process survives SIGSEGV")
}

fn assert_died_of_sigsegv(status: ExitStatus, stderr: &str) {
    assert_eq!(
        (status.code(), status.signal()),
        (None, Some(libc::SIGSEGV)),
        "the process must die of SIGSEGV, not exit with a status ({status:?}); stderr:\n{stderr}"
    );
}

/// The fabric UDP port in an address `fi_tostr` printed: `fi_sockaddr_in://127.0.0.1:PORT`.
fn port_of_display(line: &str) -> Option<u16> {
    let rest = line.split("fi_sockaddr_in://127.0.0.1:").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn fabric_ping_responder_hit_by_a_stray_datagram_dies_of_sigsegv_not_exit_1() {
    let _machine = busy();
    let child = Command::new(BIN)
        .args([
            "fabric-ping",
            "--provider",
            "udp;ofi_rxd",
            "--bind",
            "127.0.0.1",
        ])
        .args(["--port", &EXCHANGE_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = Process(child);
    // The responder's first line names its fabric address; read it off a thread so that a
    // responder that prints nothing fails the test instead of hanging it.
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
    let port = port_of_display(&line).unwrap_or_else(|| panic!("no rxd address in {line:?}"));

    let status = crash_by_stray_datagram(&mut process.0, port);
    let mut stderr = String::new();
    let _ = process.0.stderr.take().unwrap().read_to_string(&mut stderr);
    assert_died_of_sigsegv(status, &stderr);
}

#[test]
fn agent_hit_by_a_stray_datagram_dies_of_sigsegv_not_exit_1() {
    let _machine = busy();
    let child = Command::new(BIN)
        .arg("agent")
        .args(["--imds-endpoint", "none", "--node-name", "stray-target"])
        .args(["--listen", &format!("127.0.0.1:{AGENT_PORT}")])
        .args([
            "--fabric-provider",
            "udp;ofi_rxd",
            "--fabric-bind",
            "127.0.0.1",
        ])
        .args(["--interval", "1s", "--timeout", "500ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = Process(child);
    // The agent publishes its endpoint in its hello: a raw sockaddr_in, whose bytes 2..4 are
    // the UDP port in network order.
    let mut port = None;
    wait_until("the agent's hello", Duration::from_secs(20), || {
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("the agent ended before it served its hello: {status:?}");
        }
        let hello = get_hello().ok_or("no hello yet")?;
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

    let status = crash_by_stray_datagram(&mut process.0, port.unwrap());
    let mut stderr = String::new();
    let _ = process.0.stderr.take().unwrap().read_to_string(&mut stderr);
    assert_died_of_sigsegv(status, &stderr);
}

/// `/v1/hello` of the agent under test, bounded.
fn get_hello() -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", AGENT_PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /v1/hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let body = buf.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}
