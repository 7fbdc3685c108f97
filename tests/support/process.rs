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

/// Held shared by the tests of a binary that keep the CPU busy ([`busy`]), and alone by
/// [`alone_in_a_child`] while its child runs.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// For a test that runs engines or processes: it shares the machine with the others, but
/// not with a test that measures time or memory ([`alone_in_a_child`]).
pub fn busy() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// Runs the named test of this binary alone in a child process (`--exact`, one thread) and
/// returns true in that child; in the parent, waits for it, fails if it failed, and returns
/// false. For tests that measure the process (its RSS) or time: the harness runs a binary's
/// tests in parallel, and the others' allocations or spinning threads would count. The tests
/// of the binary that call [`busy`] wait while the child runs. A test must not call this while
/// it holds [`busy`], nor take [`busy`] twice: either waits forever. (Under a runner that
/// gives each test a process of its own, such as nextest, the lock isolates nothing.)
pub fn alone_in_a_child(name: &str) -> bool {
    const CHILD: &str = "EFAPROBE_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let _alone = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.contains("1 passed"),
        "{name} alone in a child process failed:\n{said}"
    );
    false
}
