//! `scripts/fake-imds.py`, the instance-metadata server tests use instead of the real one,
//! started and waited on until it listens (it prints `listening on IP:PORT`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::netns::Netns;
use super::process::Process;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fake-imds.py");

/// How long the fake may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A running fake, killed and reaped when dropped.
pub struct FakeImds {
    pub addr: SocketAddr,
    _process: Process,
}

impl FakeImds {
    /// On this host's loopback with a port the kernel picks, with the script's `args`.
    pub fn start(args: &[&str]) -> FakeImds {
        FakeImds::spawn(Command::new("python3"), "127.0.0.1:0", args)
    }

    /// On `listen` (a loopback `IP:PORT`; port 0: the kernel picks) of this host.
    pub fn start_on(listen: &str, args: &[&str]) -> FakeImds {
        FakeImds::spawn(Command::new("python3"), listen, args)
    }

    /// On `listen` (a loopback `IP:PORT`) inside `ns`.
    pub fn start_in(ns: &Netns, listen: &str, args: &[&str]) -> FakeImds {
        FakeImds::spawn(ns.command("python3"), listen, args)
    }

    fn spawn(mut python: Command, listen: &str, args: &[&str]) -> FakeImds {
        let mut child = python
            .arg(SCRIPT)
            .args(["--listen", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 {SCRIPT}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let process = Process(child);
        // Read the first line on a thread, so a fake that never prints cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START_LIMIT)
            .unwrap_or_else(|_| panic!("fake IMDS did not start within {START_LIMIT:?}"));
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("fake IMDS said {line:?}, not `listening on IP:PORT`"));
        assert!(addr.ip().is_loopback());
        FakeImds {
            addr,
            _process: process,
        }
    }

    /// What an agent's `--imds-endpoint` (or `fetch_topology`) takes.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
