use std::process::{Command, Output, Stdio};

/// True when this test can make network namespaces. Outside CI a test without root prints
/// why it skips; in CI (CI=true) it must run, so this panics instead.
pub fn can_run(test: &str) -> bool {
    let missing: Vec<&str> = ["ip", "nft"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    let reason = if !is_root() {
        Some("needs root to create network namespaces".to_owned())
    } else if !missing.is_empty() {
        Some(format!("needs {} (iproute2, nftables)", missing.join(", ")))
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: cannot run in CI: {reason}")
        }
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One network namespace; deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        // A leftover from an interrupted run would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Loads an nftables ruleset (text) into this namespace.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Removes every nftables rule in this namespace.
    pub fn nft_flush(&self) {
        run(self.command("nft").args(["flush", "ruleset"]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair, at 198.18.`subnet`.1 and 198.18.`subnet`.2 (/24).
/// `tag` must be unique per test (at most 8 characters): it names the namespaces and links.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub a_ip: String,
    pub b_ip: String,
}

impl Pair {
    pub fn new(tag: &str, subnet: u8) -> Pair {
        assert!(tag.len() <= 8, "tag {tag:?} too long for an interface name");
        assert!(subnet < 255, "198.18.{subnet}.0/24");
        let a = Netns::new(&format!("efp-{tag}-a"));
        let b = Netns::new(&format!("efp-{tag}-b"));
        let (va, vb) = (format!("e{tag}a"), format!("e{tag}b"));
        run(Command::new("ip").args([
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ]));
        let (a_ip, b_ip) = (format!("198.18.{subnet}.1"), format!("198.18.{subnet}.2"));
        a.ip(&["addr", "add", &format!("{a_ip}/24"), "dev", &va]);
        b.ip(&["addr", "add", &format!("{b_ip}/24"), "dev", &vb]);
        a.ip(&["link", "set", &va, "up"]);
        b.ip(&["link", "set", &vb, "up"]);
        Pair { a, b, a_ip, b_ip }
    }
}

/// Hosts on one LAN: a bridge in its own namespace (nothing is added to the host's), and
/// `hosts` namespaces at 198.18.`subnet`.1 .. .`hosts` (/24), each with a veth to the bridge.
/// `tag` must be unique per test (at most 6 characters).
pub struct Lan {
    pub hosts: Vec<Netns>,
    pub ips: Vec<String>,
    // Dropped last: the bridge namespace takes the far ends of the veths with it.
    _switch: Netns,
}

impl Lan {
    pub fn new(tag: &str, subnet: u8, hosts: usize) -> Lan {
        assert!(tag.len() <= 6, "tag {tag:?} too long for an interface name");
        assert!((1..=250).contains(&hosts));
        let switch = bridge(tag);
        let mut list = Vec::new();
        let mut ips = Vec::new();
        for i in 1..=hosts {
            let ns = Netns::new(&format!("efp-{tag}-{i}"));
            let (_, ip) = join_bridge(&switch, &ns, tag, i, subnet);
            list.push(ns);
            ips.push(ip);
        }
        Lan {
            hosts: list,
            ips,
            _switch: switch,
        }
    }
}

/// A second network on a LAN's hosts (another rail): its own bridge, and in each host a
/// veth `e{tag}{i}` at 198.18.`subnet`.`i` (/24). `tag` must be unique per test (at most 6
/// characters).
pub struct Network {
    pub ips: Vec<String>,
    /// Each host's interface on this network.
    pub interfaces: Vec<String>,
    _switch: Netns,
}

impl Network {
    pub fn attach(lan: &Lan, tag: &str, subnet: u8) -> Network {
        assert!(tag.len() <= 6, "tag {tag:?} too long for an interface name");
        let switch = bridge(tag);
        let mut ips = Vec::new();
        let mut interfaces = Vec::new();
        for (n, ns) in lan.hosts.iter().enumerate() {
            let (interface, ip) = join_bridge(&switch, ns, tag, n + 1, subnet);
            ips.push(ip);
            interfaces.push(interface);
        }
        Network {
            ips,
            interfaces,
            _switch: switch,
        }
    }
}

/// A namespace of its own holding a bridge `br0`, up.
fn bridge(tag: &str) -> Netns {
    let switch = Netns::new(&format!("efp-{tag}-sw"));
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    switch
}

/// Host `i` (`ns`) on the bridge `br0` of `switch`: a veth `e{tag}{i}` in the host at
/// 198.18.`subnet`.`i` (/24), its far end `s{tag}{i}` on the bridge. Returns the host's
/// interface and address.
fn join_bridge(switch: &Netns, ns: &Netns, tag: &str, i: usize, subnet: u8) -> (String, String) {
    let (inner, outer) = (format!("e{tag}{i}"), format!("s{tag}{i}"));
    run(Command::new("ip").args([
        "link",
        "add",
        &inner,
        "netns",
        &ns.name,
        "type",
        "veth",
        "peer",
        "name",
        &outer,
        "netns",
        &switch.name,
    ]));
    switch.ip(&["link", "set", &outer, "master", "br0"]);
    switch.ip(&["link", "set", &outer, "up"]);
    let ip = format!("198.18.{subnet}.{i}");
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &inner]);
    ns.ip(&["link", "set", &inner, "up"]);
    (inner, ip)
}

/// The MAC of `interface` in `ns`, lower case (from `ip -o link`).
pub fn mac_of(ns: &Netns, interface: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", "dev", interface]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .map(str::to_lowercase)
        .unwrap_or_else(|| panic!("no MAC for {interface} in {}: {text}", ns.name))
}

/// The name of the interface holding `ip` in `ns`.
pub fn interface_with(ns: &Netns, ip: &str) -> String {
    let out = ns.ip(&["-o", "-4", "addr", "show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains(&format!(" {ip}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .unwrap_or_else(|| panic!("no interface holds {ip} in {}: {text}", ns.name))
}

/// GET `http://{addr}{path}` from inside `ns`, bounded by a 2 s timeout; `None` on failure.
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> Option<String> {
    curl(ns.command("curl"), addr, path)
}

/// GET `http://{addr}{path}` on this host (loopback), the same way.
pub fn local_http_get(addr: &str, path: &str) -> Option<String> {
    curl(Command::new("curl"), addr, path)
}

fn curl(mut curl: Command, addr: &str, path: &str) -> Option<String> {
    let out = curl
        .args(["-sf", "--max-time", "2", &format!("http://{addr}{path}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
