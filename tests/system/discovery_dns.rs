//! DNS discovery against a resolver the test controls: dnsmasq in a network namespace, serving
//! 198.18.9.x records for a `.test` name from a hosts file, with the namespace's resolv.conf
//! pointing at it. The real binary runs `efaprobe discover` inside the namespace.
//!
//! The name resolves to 3 addresses -> 3 peers; the records change to 2 (dnsmasq re-reads its
//! hosts file on SIGHUP) -> 2 peers at the next refresh, and the one that stayed keeps its age;
//! the name stops resolving -> the last set stays and a warning says why; records back -> the
//! set follows; an unresolvable name with `--once` -> exit 1 and a message naming it. Nothing
//! leaves the namespace: it has only a loopback interface.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::BIN;
use support::netns::{can_run, Netns};
use support::process::Process;

const NS: &str = "efp-dnsdisc";
const NAME: &str = "peers.efp-dnsdisc.test";
const PORT: &str = "9476";

/// `/etc/netns/<ns>/`, which `ip netns exec` bind-mounts over `/etc`; removed on drop.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn new(ns: &str, resolv_conf: &str) -> NetnsEtc {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), resolv_conf).unwrap();
        NetnsEtc(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dnsmasq_path() -> Option<&'static str> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

fn write_records(file: &Path, ips: &[&str]) {
    let text: String = ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    std::fs::write(file, text).unwrap();
}

fn reload(dnsmasq: &Process) {
    let status = Command::new("kill")
        .args(["-HUP", &dnsmasq.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "SIGHUP to dnsmasq");
}

/// The addresses of one printed set, sorted.
fn addresses(doc: &Value) -> Vec<String> {
    let mut list: Vec<String> = doc["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers in {doc}"))
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list
}

fn age_ms(doc: &Value, address: &str) -> u64 {
    doc["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == address)
        .and_then(|p| p["eligible_for_ms"].as_u64())
        .unwrap_or_else(|| panic!("{address} not in {doc}"))
}

fn peers(ips: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ips.iter().map(|ip| format!("{ip}:{PORT}")).collect();
    v.sort();
    v
}

/// `efaprobe discover --once --json` in the namespace: (exit code, stdout, stderr).
fn discover_once(ns: &Netns, name: &str) -> (Option<i32>, String, String) {
    let out = ns
        .command(BIN)
        .args(["discover", "--discovery", "dns", "--dns-name", name])
        .args(["--port", PORT, "--once", "--json"])
        .env_remove("EFAPROBE_PEERS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dns_discovery_follows_the_records_and_survives_resolution_failures() {
    if !can_run("dns_discovery") {
        return;
    }
    let Some(dnsmasq) = dnsmasq_path() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "dnsmasq missing in CI (scripts/setup.sh installs dnsmasq-base)"
        );
        eprintln!("SKIPPED dns_discovery: needs dnsmasq (dnsmasq-base)");
        return;
    };
    let ns = Netns::new(NS);
    let _etc = NetnsEtc::new(NS, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_records(&hosts, &["198.18.9.1", "198.18.9.2", "198.18.9.3"]);

    // Only the hosts file answers; any other .test name is NXDOMAIN, and with no upstream
    // server and no route out, no query can leave the namespace.
    let dns = Process(
        ns.command(dnsmasq)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--user=root",
            ])
            .args(["--no-resolv", "--no-hosts", "--local=/test/"])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--port=53",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq"),
    );

    // One-shot: 3 records, 3 peers (retried while dnsmasq starts).
    let deadline = Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let (code, stdout, stderr) = discover_once(&ns, NAME);
        if code == Some(0) {
            break serde_json::from_str::<Value>(stdout.trim()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "discover --once never succeeded: {code:?} {stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        addresses(&doc),
        peers(&["198.18.9.1", "198.18.9.2", "198.18.9.3"])
    );

    // Following: every change is one JSON line.
    let stderr_file = dir.path().join("follow.stderr");
    let mut follower = Process(
        ns.command(BIN)
            .args(["discover", "--discovery", "dns", "--dns-name", NAME])
            .args(["--port", PORT, "--refresh", "1s", "--json"])
            .env_remove("EFAPROBE_PEERS")
            .env("EFAPROBE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap(),
    );
    let (line_tx, lines) = mpsc::channel::<Value>();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(6))
            .unwrap_or_else(|_| panic!("{what}: no new set within 6 s"))
    };

    let first = next("first set");
    assert_eq!(
        addresses(&first),
        peers(&["198.18.9.1", "198.18.9.2", "198.18.9.3"])
    );

    write_records(&hosts, &["198.18.9.1", "198.18.9.3"]);
    reload(&dns);
    let second = next("two records");
    assert_eq!(addresses(&second), peers(&["198.18.9.1", "198.18.9.3"]));
    // Printed right after each answer, so a new peer's age is near 0; one that stayed is at
    // least one refresh (1 s) old.
    assert!(
        age_ms(&second, "198.18.9.1:9476") >= 900,
        "kept its eligibility time: {second}"
    );

    // The name stops resolving (NXDOMAIN): the last set stays, nothing new is printed.
    write_records(&hosts, &[]);
    reload(&dns);
    assert!(
        lines.recv_timeout(Duration::from_secs(3)).is_err(),
        "the set must not change while the name does not resolve"
    );
    assert!(follower.0.try_wait().unwrap().is_none(), "still running");
    let log = std::fs::read_to_string(&stderr_file).unwrap();
    assert!(
        log.contains("DNS discovery failed; keeping the last known peers") && log.contains(NAME),
        "a warning names the failure: {log}"
    );

    // Records back: the set follows.
    write_records(&hosts, &["198.18.9.2"]);
    reload(&dns);
    let back = next("records back");
    assert_eq!(addresses(&back), peers(&["198.18.9.2"]));

    // SIGTERM ends following cleanly.
    Command::new("kill")
        .args(["-TERM", &follower.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = follower.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "discover did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&stderr_file).unwrap()
    );

    // An unresolvable name: a clear error and exit 1, no crash.
    let (code, stdout, stderr) = discover_once(&ns, "missing.efp-dnsdisc.test");
    assert_eq!(code, Some(1), "stdout {stdout:?} stderr {stderr:?}");
    assert!(
        stderr.contains("cannot resolve \"missing.efp-dnsdisc.test\""),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    drop(dns);
}
