//! Sharing the machine between the tests of one binary: most may run side by side, a test
//! that measures time or memory runs alone.

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
