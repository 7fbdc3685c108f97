//! `efaprobe agent` as a test starts it, in one place: the binary, the flags every test agent
//! needs, and how to wait until it serves. An agent never reads the real instance-metadata
//! address: it is given `--imds-endpoint none` unless the test names its own (fake) IMDS.
//! Also `efaprobe simulate-peers`, the peers an agent probes in the schedule tests.

use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{http_get, local_http_get, Netns};
use super::process::{wait_until, Process};

/// The efaprobe binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_efaprobe");

/// How long an agent may take to answer `/readyz` (its first round done) on a loaded machine.
pub const READY_LIMIT: Duration = Duration::from_secs(20);

/// An agent to start: `Agent::new("node-a").ns(&pair.a).listen(..).peers(..).spawn()`.
pub struct Agent<'ns> {
    ns: Option<&'ns Netns>,
    listen: Option<String>,
    imds: Option<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stderr_piped: bool,
}

impl<'ns> Agent<'ns> {
    /// An agent with node name `name`.
    pub fn new(name: &str) -> Agent<'ns> {
        Agent::unnamed().args(["--node-name", name])
    }

    /// An agent whose node name, if any, is among the test's own arguments (or deliberately
    /// missing).
    pub fn unnamed() -> Agent<'ns> {
        Agent {
            ns: None,
            listen: None,
            imds: None,
            args: Vec::new(),
            env: Vec::new(),
            stderr_piped: false,
        }
    }

    /// Runs it inside `ns` (`ip netns exec`); it is reached from there too.
    pub fn ns(mut self, ns: &'ns Netns) -> Self {
        self.ns = Some(ns);
        self
    }

    /// `--listen HOST:PORT`: where it serves, and where [`RunningAgent::get`] asks.
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        let address = address.into();
        self.args
            .extend(["--listen".into(), address.clone().into()]);
        self.listen = Some(address);
        self
    }

    /// `--peers`: peer agents, `HOST:PORT`, comma-separated.
    pub fn peers(self, peers: &str) -> Self {
        self.args(["--peers", peers])
    }

    /// `--imds-endpoint`: the test's fake instance-metadata server (`http://127.0.0.1:PORT`)
    /// instead of none.
    pub fn imds(mut self, endpoint: &str) -> Self {
        assert!(
            endpoint.starts_with("http://127."),
            "a test's IMDS is a fake on loopback, not {endpoint}"
        );
        self.imds = Some(endpoint.to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Keeps its standard error readable (`RunningAgent.0.stderr`), for tests that read
    /// what it said when it ended.
    pub fn stderr_piped(mut self) -> Self {
        self.stderr_piped = true;
        self
    }

    /// The command line, for tests that run it to its end (`.output()`) themselves.
    pub fn command(&self) -> Command {
        let mut cmd = match self.ns {
            Some(ns) => ns.command(BIN),
            None => Command::new(BIN),
        };
        cmd.arg("agent")
            .args(["--imds-endpoint", self.imds.as_deref().unwrap_or("none")])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts it, output discarded (standard error kept if [`Agent::stderr_piped`]).
    pub fn spawn(self) -> RunningAgent<'ns> {
        let mut cmd = self.command();
        let stderr = if self.stderr_piped {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        RunningAgent {
            process: Process(child),
            ns: self.ns,
            listen: self.listen,
        }
    }
}

/// A started agent, killed and reaped on drop like any [`Process`] (which it derefs to).
pub struct RunningAgent<'ns> {
    process: Process,
    ns: Option<&'ns Netns>,
    listen: Option<String>,
}

impl RunningAgent<'_> {
    /// GET `path` from its HTTP port, from where it runs (its namespace, or this host),
    /// bounded; `None` on failure or a status other than 2xx.
    pub fn get(&self, path: &str) -> Option<String> {
        let listen = self
            .listen
            .as_deref()
            .expect("an agent started without --listen");
        match self.ns {
            Some(ns) => http_get(ns, listen, path),
            None => local_http_get(listen, path),
        }
    }

    /// Waits (at most [`READY_LIMIT`]) until `/readyz` answers 200: it listens, and its
    /// first round is done. Fails at once if it ended instead.
    pub fn wait_ready(&mut self) -> &mut Self {
        let listen = self.listen.clone().unwrap_or_default();
        wait_until(&format!("agent {listen} ready"), READY_LIMIT, || {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                panic!("agent {listen} ended before it was ready: {status}");
            }
            self.get("/readyz")
                .map(|_| ())
                .ok_or_else(|| "/readyz not 200 yet".to_owned())
        });
        self
    }

    /// SIGTERM, then up to 10 s for it to exit: its exit code, or `None` if it had to be
    /// killed (or died of a signal).
    pub fn stop(self) -> Option<i32> {
        terminate(self.process)
    }
}

impl std::ops::Deref for RunningAgent<'_> {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for RunningAgent<'_> {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
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
        Command::new(BIN)
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

/// SIGTERM to an agent started by hand (under `prlimit`, its log in a file), then up to 10 s
/// for it to exit: its exit code, or `None` if it had to be killed (or died of a signal).
pub fn terminate(mut process: Process) -> Option<i32> {
    let _ = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = process.0.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
