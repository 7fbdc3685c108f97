//! Processes a test starts, and waiting for what they should bring about.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and reaped on drop (also when an assertion fails first).
pub struct Process(pub Child);

impl Process {
    /// Starts `cmd` with its output discarded.
    pub fn spawn(cmd: &mut Command) -> Process {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Process(child)
    }

    /// SIGTERM, then up to 10 s for the process to exit: its exit code, or `None` if it had to
    /// be killed (or died of a signal).
    pub fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it holds and returns how long that took; after `limit`,
/// panics with the last reason `check` gave.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => return started.elapsed(),
            Err(why) if started.elapsed() > limit => panic!("{what}: not within {limit:?}: {why}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `efaprobe simulate-peers`: `count` peers named PREFIX-00001... from `ip_base` on, each on
/// `port`, with udp;ofi_rxd responders on 127.0.0.1; returns it and the peer list it wrote
/// (HOST:PORT, comma-separated) once every peer listens.
pub fn simulate_peers(
    dir: &std::path::Path,
    prefix: &str,
    count: usize,
    (ip_base, port): (&str, u16),
    extra: &[&str],
) -> (Process, String) {
    let peers_file = dir.join(format!("{prefix}-peers"));
    let sim = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_efaprobe"))
            .args(["simulate-peers", "--count", &count.to_string()])
            .args(["--ip-base", ip_base, "--port", &port.to_string()])
            .args([
                "--fabric-provider",
                "udp;ofi_rxd",
                "--fabric-bind",
                "127.0.0.1",
            ])
            .args(["--name-prefix", prefix])
            .args(extra)
            .arg("--peers-file")
            .arg(&peers_file),
    );
    wait_until("simulated peers listen", Duration::from_secs(20), || {
        peers_file
            .exists()
            .then_some(())
            .ok_or_else(|| "no peer list yet".to_owned())
    });
    let listed = std::fs::read_to_string(&peers_file).unwrap();
    (sim, listed.trim().to_owned())
}
