//! `efaprobe agent` configuration: flags, each also read from an environment variable (a
//! DaemonSet passes NODE_NAME and POD_IP from the downward API), validated once at start.
//! Every bad setting is reported (exit code 64), each message naming the flag, its variable
//! and what is allowed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::discovery::{discovery_config, DiscoveryArgs, IntervalArgs, ListenArgs};
use super::values::{self, Blankable};
use super::{ConfigError, ConfigErrors};
use crate::discovery::DiscoveryConfig;
use crate::dns_name::{is_dns_name, NameRules};
use crate::metrics::PerPeerMetrics;
use crate::probe::TargetSpec;
use crate::topology::ImdsEndpoint;
use crate::verdict::VerdictPolicy;

/// Default port of the agent's HTTP server (metrics, API, hello).
pub const DEFAULT_PORT: u16 = 9476;

/// Bounds of a probe's deadline (below the interval too): under a millisecond nothing
/// answers; a minute is more than any path that works takes.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds of `--max-rtt`: it applies to the IP path too (a TCP and HTTP exchange through the
/// kernel), and 0 would call every peer degraded; a round trip over 10s is a failure to
/// report, not a degradation (`--timeout` defaults to 1s).
pub const MIN_MAX_RTT: Duration = Duration::from_micros(100);
pub const MAX_MAX_RTT: Duration = Duration::from_secs(10);

/// Largest fabric probe, small or large, in bytes.
pub const MAX_PROBE_SIZE: usize = 8192;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// This node's name (the `peer` label on other nodes): a Kubernetes node name.
    #[arg(long, env = "NODE_NAME", value_parser = node_name)]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// This pod's IP; the default fabric bind address, and how this node recognises itself in
    /// a peer list.
    #[arg(long, env = "POD_IP", value_parser = values::blank_or_ip)]
    pub pod_ip: Option<Blankable<IpAddr>>,
    /// A service to check: `NAME=HOST:PORT[:CHECK]`, CHECK one of tcp, nats, prometheus, http,
    /// http:/path (default by port: 4222 nats, 9090 prometheus, else tcp). Repeatable; in the
    /// environment, comma-separated.
    #[arg(long = "target", env = "EFAPROBE_TARGETS", value_delimiter = ',', value_parser = values::list_item(TargetSpec::parse))]
    pub targets: Vec<Blankable<TargetSpec>>,
    /// libfabric provider for the fabric path (efa, tcp, "udp;ofi_rxd", shm), or `none`.
    #[arg(long, env = "EFAPROBE_FABRIC_PROVIDER", default_value = "efa")]
    pub fabric_provider: String,
    /// Local IPs for IP-based fabric providers, comma-separated: one rail each, in this
    /// order, at most 32 (default: --pod-ip, one rail).
    #[arg(long, env = "EFAPROBE_FABRIC_BIND", value_delimiter = ',', value_parser = values::blank_or_ip)]
    pub fabric_bind: Vec<Blankable<IpAddr>>,
    #[command(flatten)]
    pub interval: IntervalArgs,
    /// Deadline of each probe, 1ms to 1m, and shorter than the interval.
    #[arg(long, env = "EFAPROBE_TIMEOUT", default_value = "1s", value_parser = values::duration_within(MIN_TIMEOUT, MAX_TIMEOUT))]
    pub timeout: Duration,
    /// Consecutive agreeing rounds before a peer's state changes, 1 to 100.
    #[arg(long, env = "EFAPROBE_HYSTERESIS", default_value = "2", value_parser = values::whole_number(1u32, 100, "rounds"))]
    pub hysteresis: u32,
    /// Fabric loss ratio over the last 10 rounds above which a peer is degraded, 0 to 1.
    #[arg(long, env = "EFAPROBE_MAX_LOSS", default_value = "0.2", value_parser = values::decimal_within(0.0, 1.0, "a loss ratio"))]
    pub max_loss: f64,
    /// Round-trip time on either path above which a peer is degraded, 100us to 10s.
    #[arg(long, env = "EFAPROBE_MAX_RTT", default_value = "50ms", value_parser = values::duration_within(MIN_MAX_RTT, MAX_MAX_RTT))]
    pub max_rtt: Duration,
    /// Fabric probe size in bytes (the probe that decides reachability), 1 to 8192.
    #[arg(long, env = "EFAPROBE_PROBE_SIZE", default_value = "64", value_parser = values::whole_number(1usize, MAX_PROBE_SIZE, "bytes"))]
    pub probe_size: usize,
    /// Larger fabric probes, comma-separated bytes above --probe-size and at most 8192, one
    /// every other round in turn after the small one answers: drops that hit only large
    /// packets are real. Empty turns them off.
    #[arg(long, env = "EFAPROBE_LARGE_PROBE_SIZES", default_value = "1024,8192", value_delimiter = ',', value_parser = values::list_item(large_probe_size))]
    pub large_probe_sizes: Vec<Blankable<usize>>,
    /// Peer probes this node starts per second, at most (0.1 to 10000): with the interval, how
    /// many peers a round probes (20/s at 5s: 100). Clusters that fit are probed in full every
    /// round; larger ones get the topology-group mesh, a rotating sample of other groups and
    /// every unhealthy peer.
    #[arg(long, env = "EFAPROBE_PROBE_BUDGET", default_value = "20", value_parser = values::decimal_within(0.1, 10_000.0, "peer probes per second"))]
    pub probe_budget: f64,
    /// Peers from other topology groups (placement group, else subnet) probed each round, 0
    /// to 10000.
    #[arg(long, env = "EFAPROBE_SAMPLE_PEERS", default_value = "16", value_parser = values::whole_number(0usize, 10_000, "peers"))]
    pub sample_peers: usize,
    /// Rounds a sample of other groups' peers is kept before it rotates, 1 to 10000.
    #[arg(long, env = "EFAPROBE_SAMPLE_ROTATION", default_value = "6", value_parser = values::whole_number(1u64, 10_000, "rounds"))]
    pub sample_rotation: u64,
    /// Measure a peer's fabric RTT (a ping pair, which makes both sides spin briefly) every
    /// this many of its rounds (1 to 1000); the rounds between prove the path with one ping.
    /// 1: every round.
    #[arg(long, env = "EFAPROBE_FABRIC_RTT_EVERY", default_value = "4", value_parser = values::whole_number(1u32, 1000, "rounds"))]
    pub fabric_rtt_every: u32,
    /// EC2 instance metadata (IMDSv2), `http://HOST[:PORT]`, or `none` off AWS.
    #[arg(long, env = "EFAPROBE_IMDS_ENDPOINT", default_value = crate::topology::DEFAULT_IMDS_ENDPOINT, value_parser = imds_endpoint)]
    pub imds_endpoint: Blankable<ImdsEndpoint>,
    /// Deadline for reading instance metadata at start, 1ms to 30s: off AWS, start-up waits
    /// no longer.
    #[arg(long, env = "EFAPROBE_IMDS_TIMEOUT", default_value = "2s", value_parser = values::duration_within(Duration::from_millis(1), Duration::from_secs(30)))]
    pub imds_timeout: Duration,
    /// Where sysfs is mounted (device hardware counters are read below it).
    #[arg(long, env = "EFAPROBE_SYSFS_ROOT", default_value = "/sys")]
    pub sysfs_root: std::path::PathBuf,
    /// Which peers get per-peer metric series: all, unhealthy (only peers in a fault state),
    /// none, or auto (all up to 100 peers, unhealthy above).
    #[arg(long, env = "EFAPROBE_PER_PEER_METRICS", default_value = "auto", value_parser = |t: &str| t.parse::<PerPeerMetrics>())]
    pub per_peer_metrics: PerPeerMetrics,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub node_actions: super::node_actions::NodeActionArgs,
}

fn node_name(text: &str) -> Result<String, String> {
    if is_dns_name(text, NameRules::KubernetesName) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a Kubernetes node name (lowercase RFC 1123: letters, digits, \
             '-' and '.')"
        ))
    }
}

fn large_probe_size(text: &str) -> Result<usize, String> {
    crate::units::parse_size(text)
        .ok()
        .filter(|n| *n <= MAX_PROBE_SIZE)
        .ok_or_else(|| format!("{text:?}: sizes above --probe-size, at most 8192 bytes"))
}

fn imds_endpoint(text: &str) -> Result<Blankable<ImdsEndpoint>, String> {
    match text.trim() {
        "none" | "" => Ok(Blankable(None)),
        url => crate::topology::parse_endpoint(url).map(|e| Blankable(Some(e))),
    }
}

/// Most `--fabric-bind` addresses: the rails a hello lists.
pub const MAX_FABRIC_BINDS: usize = crate::hello::MAX_ENDPOINTS;

/// The rails' bind addresses from `--fabric-bind`: blank (or not given) is the pod IP, one
/// rail, as before rails; otherwise every entry an address of its own, at most
/// [`MAX_FABRIC_BINDS`]. Every problem of the list is said in its one error.
fn fabric_bind(
    entries: &[Blankable<IpAddr>],
    pod_ip: Option<IpAddr>,
    errors: &mut ConfigErrors,
) -> Vec<IpAddr> {
    if errors.names("fabric-bind") {
        // An entry that is not an address, already reported.
        return Vec::new();
    }
    if entries.len() <= 1 && entries.iter().all(|e| e.0.is_none()) {
        return pod_ip.into_iter().collect();
    }
    let mut problems = Vec::new();
    if entries.len() > MAX_FABRIC_BINDS {
        problems.push(format!(
            "{} addresses, more than {MAX_FABRIC_BINDS} (the rails a hello lists)",
            entries.len()
        ));
    }
    let empty: Vec<String> = (1..=entries.len())
        .filter(|n| entries[n - 1].0.is_none())
        .map(|n| n.to_string())
        .collect();
    if !empty.is_empty() {
        problems.push(format!(
            "entry {} of {} is empty",
            empty.join(", "),
            entries.len()
        ));
    }
    let mut addresses: Vec<IpAddr> = Vec::new();
    for (n, ip) in entries.iter().enumerate() {
        let Some(ip) = ip.0 else { continue };
        if let Some(first) = entries[..n].iter().position(|e| e.0 == Some(ip)) {
            // Said once per address, at its second entry.
            if !entries[first + 1..n].iter().any(|e| e.0 == Some(ip)) {
                problems.push(format!(
                    "{ip} is given twice (entries {} and {}): each rail binds an address of its own",
                    first + 1,
                    n + 1
                ));
            }
            continue;
        }
        addresses.push(ip);
    }
    if !problems.is_empty() {
        errors.push(ConfigError::of::<AgentArgs>(
            "fabric-bind",
            format!(
                "{}; one local IP address per rail, comma-separated",
                problems.join("; ")
            ),
        ));
    }
    addresses
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub listen: SocketAddr,
    pub pod_ip: Option<IpAddr>,
    pub peers: Vec<String>,
    pub targets: Vec<TargetSpec>,
    /// `None` when the fabric path is off.
    pub fabric_provider: Option<String>,
    /// Local addresses of the fabric endpoints on IP providers, one rail each in this order;
    /// empty: no bind address (none given and no pod IP).
    pub fabric_bind: Vec<IpAddr>,
    pub interval: Duration,
    pub timeout: Duration,
    pub policy: VerdictPolicy,
    pub probe_size: usize,
    pub large_probe_sizes: Vec<usize>,
    /// Which peers each round probes, and the budget.
    pub schedule: crate::monitor::schedule::ScheduleConfig,
    /// Rounds between fabric RTT measurements of a peer (1: every round).
    pub fabric_rtt_every: u32,
    /// `None`: instance metadata is not read.
    pub imds_endpoint: Option<ImdsEndpoint>,
    pub imds_timeout: Duration,
    pub sysfs_root: std::path::PathBuf,
    pub per_peer_metrics: PerPeerMetrics,
    /// Where peers come from: the static list, a DNS name, or the DaemonSet's pods.
    pub discovery: DiscoveryConfig,
    /// How long a newly eligible peer is `unknown` whatever its probes say.
    pub peer_grace: Duration,
    /// The node condition, Events and startup gate (all off by default).
    pub node_actions: crate::node_actions::NodeActionSettings,
}

impl AgentConfig {
    /// The configuration, or every bad setting.
    pub fn from_args(a: &AgentArgs) -> Result<AgentConfig, ConfigErrors> {
        AgentConfig::from_args_after(a, ConfigErrors::default())
    }

    /// [`AgentConfig::from_args`] after the values clap's parsers refused (`refused`, from
    /// [`super::parse_command_line`]; `a` holds their defaults): those settings are not
    /// checked again, and all are reported together.
    pub fn from_args_after(
        a: &AgentArgs,
        refused: ConfigErrors,
    ) -> Result<AgentConfig, ConfigErrors> {
        let mut errors = refused;
        let node_name = match &a.node_name {
            Some(n) => n.clone(),
            None => {
                if !errors.names("node-name") {
                    errors.push(ConfigError::of::<AgentArgs>(
                        "node-name",
                        "required (set NODE_NAME from spec.nodeName)",
                    ));
                }
                String::new()
            }
        };
        let listen = a.listen.listen;
        let pod_ip = a.pod_ip.and_then(|b| b.0);
        let mut targets: Vec<TargetSpec> = Vec::new();
        for spec in values::items(&a.targets) {
            if targets.iter().any(|s| s.name == spec.name) {
                errors.push(ConfigError::of::<AgentArgs>(
                    "target",
                    format!("target name {:?} given twice", spec.name),
                ));
            }
            targets.push(spec);
        }
        let fabric_provider = match a.fabric_provider.trim() {
            "" => {
                errors.push(ConfigError::of::<AgentArgs>(
                    "fabric-provider",
                    "empty (use `none` to turn the fabric path off)",
                ));
                None
            }
            "none" => None,
            p => Some(p.to_owned()),
        };
        let fabric_bind = fabric_bind(&a.fabric_bind, pod_ip, &mut errors);
        let interval = a.interval.interval;
        if a.timeout >= interval && !errors.names("interval") {
            errors.push(ConfigError::of::<AgentArgs>(
                "timeout",
                format!(
                    "must be below the interval ({})",
                    crate::units::format_duration(interval)
                ),
            ));
        }
        let mut large_probe_sizes = Vec::new();
        for size in values::items(&a.large_probe_sizes) {
            if size <= a.probe_size {
                if !errors.names("probe-size") {
                    errors.push(ConfigError::of::<AgentArgs>(
                        "large-probe-sizes",
                        format!("\"{size}\": sizes above --probe-size, at most 8192 bytes"),
                    ));
                }
                continue;
            }
            large_probe_sizes.push(size);
        }
        large_probe_sizes.sort_unstable();
        large_probe_sizes.dedup();
        let peers = super::discovery::static_peers(&a.discovery);
        let discovery = discovery_config(&a.discovery, listen.port(), &mut errors);
        let Some((discovery, grace)) = discovery else {
            return Err(errors);
        };
        // A configured list is not a rollout: its peers are judged from the first round.
        let peer_grace = match discovery {
            DiscoveryConfig::Static(_) => Duration::ZERO,
            _ => grace,
        };
        errors.or_ok(AgentConfig {
            node_name,
            listen,
            pod_ip,
            peers,
            targets,
            fabric_provider,
            fabric_bind,
            interval,
            timeout: a.timeout,
            policy: VerdictPolicy {
                hysteresis: a.hysteresis,
                max_loss: a.max_loss,
                max_rtt: a.max_rtt,
                ..VerdictPolicy::default()
            },
            probe_size: a.probe_size,
            large_probe_sizes,
            schedule: crate::monitor::schedule::ScheduleConfig {
                budget: a.probe_budget,
                sample: a.sample_peers,
                rotation: a.sample_rotation,
            },
            fabric_rtt_every: a.fabric_rtt_every,
            imds_endpoint: a.imds_endpoint.0.clone(),
            imds_timeout: a.imds_timeout,
            sysfs_root: a.sysfs_root.clone(),
            per_peer_metrics: a.per_peer_metrics,
            discovery,
            peer_grace,
            node_actions: super::node_actions::node_action_settings(&a.node_actions),
        })
    }

    /// The addresses under which this agent may appear in a peer list.
    pub fn is_self(&self, peer: &str) -> bool {
        let Ok(addr) = peer.parse::<SocketAddr>() else {
            return false;
        };
        addr == self.listen || (addr.port() == self.listen.port() && Some(addr.ip()) == self.pod_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_command_line;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    /// Every bad setting of this command line, or the configuration.
    fn parse_all(args: &[&str]) -> Result<AgentConfig, ConfigErrors> {
        let mut full = vec!["efaprobe"];
        if !args.contains(&"--imds-endpoint") {
            // Never the real metadata address from a test.
            full.extend_from_slice(&["--imds-endpoint", "none"]);
        }
        full.extend_from_slice(args);
        let parsed = parse_command_line::<Cli, _>(full.into_iter().map(Into::into))
            .expect("clap accepts the shape");
        let cli = parsed.parsed.expect("parsed, bad values at their defaults");
        AgentConfig::from_args_after(&cli.args, parsed.errors)
    }

    /// The configuration, or the one bad setting of a command line that has one.
    fn parse(args: &[&str]) -> Result<AgentConfig, ConfigError> {
        parse_all(args).map_err(|errors| {
            assert_eq!(errors.0.len(), 1, "{args:?}: {errors}");
            errors.0[0].clone()
        })
    }

    #[test]
    fn a_good_configuration() {
        let c = parse(&[
            "--node-name",
            "gpu-1",
            "--pod-ip",
            "10.0.0.5",
            "--peers",
            "10.0.0.6:9476, 10.0.0.7:9476,10.0.0.6:9476",
            "--target",
            "nats=nats.system:4222",
            "--target",
            "prom=10.0.9.9:9090",
            "--fabric-provider",
            "udp;ofi_rxd",
            "--interval",
            "2s",
            "--timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(c.node_name, "gpu-1");
        assert_eq!(c.peers, ["10.0.0.6:9476", "10.0.0.7:9476"]);
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.fabric_provider.as_deref(), Some("udp;ofi_rxd"));
        assert_eq!(
            c.fabric_bind,
            ["10.0.0.5".parse::<IpAddr>().unwrap()],
            "defaults to the pod IP"
        );
        assert_eq!(c.interval, Duration::from_secs(2));
        assert!(c.is_self("10.0.0.5:9476"));
        assert!(!c.is_self("10.0.0.6:9476"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let base = ["--node-name", "gpu-1"];
        let cases: &[(&[&str], &str)] = &[
            (&[], "node-name"),
            (&["--node-name", "GPU_1"], "node-name"),
            (&["--listen", "9476"], "listen"),
            (&["--pod-ip", "ten.0.0.1"], "pod-ip"),
            (&["--peers", "10.0.0.6"], "peers"),
            (&["--peers", "10.0.0.6:0"], "peers"),
            (&["--peers", "bad host!:9476"], "peers"),
            (&["--target", "nats"], "target"),
            (&["--target", "a=h:1", "--target", "a=h:2"], "target"),
            (&["--fabric-provider", ""], "fabric-provider"),
            (&["--fabric-bind", "eth0"], "fabric-bind"),
            (&["--interval", "5"], "interval"),
            (&["--interval", "10ms"], "interval"),
            (&["--timeout", "5s"], "timeout"),
            (&["--timeout", "0s"], "timeout"),
            (&["--hysteresis", "0"], "hysteresis"),
            (&["--max-loss", "1.5"], "max-loss"),
            (&["--max-rtt", "fast"], "max-rtt"),
            (&["--probe-size", "0"], "probe-size"),
            (&["--large-probe-sizes", "1024,big"], "large-probe-sizes"),
            (&["--large-probe-sizes", "32"], "large-probe-sizes"),
            (&["--large-probe-sizes", "9000"], "large-probe-sizes"),
            (
                &["--imds-endpoint", "https://169.254.169.254"],
                "imds-endpoint",
            ),
            (&["--imds-timeout", "1h"], "imds-timeout"),
            (&["--probe-budget", "0"], "probe-budget"),
            (&["--probe-budget", "NaN"], "probe-budget"),
            (&["--sample-peers", "100000"], "sample-peers"),
            (&["--sample-rotation", "0"], "sample-rotation"),
            (&["--fabric-rtt-every", "0"], "fabric-rtt-every"),
            (&["--per-peer-metrics", "some"], "per-peer-metrics"),
            (&["--per-peer-metrics", ""], "per-peer-metrics"),
        ];
        for (extra, setting) in cases {
            let mut args: Vec<&str> = if *setting == "node-name" {
                vec![]
            } else {
                base.to_vec()
            };
            args.extend_from_slice(extra);
            let err = parse(&args).expect_err(setting);
            assert_eq!(err.setting, *setting, "{args:?}: {err}");
            assert!(err.to_string().contains(&format!("--{setting}")), "{err}");
        }
    }

    #[test]
    fn per_peer_metrics_defaults_to_auto_and_takes_each_mode() {
        use crate::metrics::PerPeerMetrics;
        let c = parse(&["--node-name", "n"]).unwrap();
        assert_eq!(c.per_peer_metrics, PerPeerMetrics::Auto);
        for (text, mode) in [
            ("all", PerPeerMetrics::All),
            ("unhealthy", PerPeerMetrics::Unhealthy),
            ("none", PerPeerMetrics::None),
            ("auto", PerPeerMetrics::Auto),
        ] {
            let c = parse(&["--node-name", "n", "--per-peer-metrics", text]).unwrap();
            assert_eq!(c.per_peer_metrics, mode);
        }
        let err = parse(&["--node-name", "n", "--per-peer-metrics", "healthy"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting per-peer-metrics (flag --per-peer-metrics, env \
             EFAPROBE_PER_PEER_METRICS): \"healthy\" is not one of all, unhealthy, none, auto"
        );
    }

    /// Each refused value: the flag, its variable, what is allowed (issue 15, item 9).
    const REFUSED: &[(&str, &str, &str, &str)] = &[
        ("hysteresis", "abc", "EFAPROBE_HYSTERESIS", "from 1 to 100"),
        ("probe-size", "0", "EFAPROBE_PROBE_SIZE", "from 1 to 8192"),
        (
            "sample-peers",
            "-1",
            "EFAPROBE_SAMPLE_PEERS",
            "from 0 to 10000",
        ),
        (
            "max-loss",
            "2",
            "EFAPROBE_MAX_LOSS",
            "a loss ratio from 0 to 1",
        ),
        (
            "probe-budget",
            "0",
            "EFAPROBE_PROBE_BUDGET",
            "from 0.1 to 10000",
        ),
        (
            "fabric-rtt-every",
            "0",
            "EFAPROBE_FABRIC_RTT_EVERY",
            "from 1 to 1000",
        ),
        ("pod-ip", "x", "POD_IP", "\"x\" is not an IP address"),
        (
            "interval",
            "100000h",
            "EFAPROBE_INTERVAL",
            "allowed: 100ms to 10m",
        ),
        ("timeout", "2m", "EFAPROBE_TIMEOUT", "allowed: 1ms to 1m"),
        ("max-rtt", "0", "EFAPROBE_MAX_RTT", "allowed: 100us to 10s"),
        ("peers", "[::1:9476", "EFAPROBE_PEERS", "is not [IPv6]:PORT"),
        (
            "imds-timeout",
            "0",
            "EFAPROBE_IMDS_TIMEOUT",
            "allowed: 1ms to 30s",
        ),
    ];

    #[test]
    fn each_message_names_the_flag_its_variable_and_what_is_allowed() {
        for (flag, value, env, allowed) in REFUSED {
            // `--flag=value`: clap would read a bare `-1` as a flag.
            let arg = format!("--{flag}={value}");
            let err = parse(&["--node-name", "n", &arg]).expect_err(flag);
            let said = err.to_string();
            assert_eq!(err.setting, *flag, "{said}");
            assert_eq!(err.env, *env, "{said}");
            assert!(
                said.starts_with(&format!(
                    "invalid setting {flag} (flag --{flag}, env {env}): "
                )),
                "{said}"
            );
            assert!(said.contains(allowed), "{said}");
            assert!(
                said.contains(&format!("{value:?}")),
                "the value as given: {said}"
            );
            assert!(!said.contains("Some("), "{said}");
        }
    }

    #[test]
    fn absurd_values_are_refused_and_sensible_ones_kept() {
        let c = parse(&[
            "--node-name",
            "n",
            "--interval",
            "10m",
            "--timeout",
            "1m",
            "--max-rtt",
            "100us",
            "--peers",
            "[::1]:9476,198.18.0.1:9476",
        ])
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(600));
        assert_eq!(c.policy.max_rtt, Duration::from_micros(100));
        assert_eq!(c.peers, ["[::1]:9476", "198.18.0.1:9476"]);
        for (flag, value) in [
            ("--interval", "100000h"),
            ("--interval", "11m"),
            ("--max-rtt", "0"),
            ("--max-rtt", "99us"),
            ("--peers", "[::1:9476"),
            ("--peers", "::1:9476"),
        ] {
            assert!(
                parse(&["--node-name", "n", flag, value]).is_err(),
                "{flag} {value}"
            );
        }
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let mut args = vec!["--timeout".to_owned(), "5s".to_owned()];
        for (flag, value, _, _) in REFUSED.iter().filter(|(f, ..)| *f != "timeout") {
            args.push(format!("--{flag}={value}"));
        }
        // Checks across settings run too: no node name, a timeout over the interval, a
        // larger probe below the small one, a target named twice.
        args.extend(["--large-probe-sizes", "32", "--target", "a=h:1,a=h:2"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let errors = parse_all(&args).unwrap_err();
        let mut named: Vec<&str> = errors.0.iter().map(|e| e.setting).collect();
        named.sort_unstable();
        let mut expected: Vec<&str> = REFUSED
            .iter()
            .map(|(f, ..)| *f)
            .filter(|f| !["interval", "probe-size"].contains(f))
            .collect();
        // The interval and the small probe size are refused, so the timeout and the larger
        // sizes are not compared with their defaults.
        expected.extend(["interval", "probe-size", "node-name", "target"]);
        expected.retain(|f| *f != "timeout");
        expected.sort_unstable();
        assert_eq!(named, expected, "{errors}");
        assert!(errors.0.iter().all(|e| !e.env.is_empty()), "{errors}");
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn fabric_bind_lists_one_address_per_rail_in_order() {
        let base = ["--node-name", "n", "--pod-ip", "10.0.0.5"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        let c = with(&["--fabric-bind", "198.18.1.2, 198.18.0.1,fd00::7"]).unwrap();
        assert_eq!(
            c.fabric_bind,
            ips(&["198.18.1.2", "198.18.0.1", "fd00::7"]),
            "in the order given, the pod IP not added"
        );
        assert_eq!(c.pod_ip, Some("10.0.0.5".parse().unwrap()));
        let c = with(&["--fabric-bind", "198.18.1.2"]).unwrap();
        assert_eq!(c.fabric_bind, ips(&["198.18.1.2"]), "one address, one rail");
        // Blank is unset, as before rails: the pod IP, one rail; without one, no bind.
        for blank in ["--fabric-bind=", "--fabric-bind=  "] {
            assert_eq!(with(&[blank]).unwrap().fabric_bind, ips(&["10.0.0.5"]));
        }
        assert_eq!(with(&[]).unwrap().fabric_bind, ips(&["10.0.0.5"]));
        let c = parse(&["--node-name", "n", "--fabric-bind="]).unwrap();
        assert_eq!(c.fabric_bind, ips(&[]), "no pod IP: no bind");
        let all: Vec<String> = (0..32).map(|i| format!("198.18.9.{i}")).collect();
        let c = with(&["--fabric-bind", &all.join(",")]).unwrap();
        assert_eq!(c.fabric_bind.len(), 32, "a hello's worth");
    }

    #[test]
    fn fabric_bind_refuses_what_is_no_list_of_rails() {
        let too_many: Vec<String> = (0..33).map(|i| format!("198.18.9.{i}")).collect();
        let too_many = too_many.join(",");
        let cases: &[(&str, &[&str])] = &[
            ("198.18.0.1,eth0", &["\"eth0\" is not an IP address"]),
            ("198.18.0.1,,198.18.0.2", &["entry 2 of 3 is empty"]),
            ("198.18.0.1,", &["entry 2 of 2 is empty"]),
            (",", &["entry 1, 2 of 2 is empty"]),
            (
                "198.18.0.1,198.18.0.2,198.18.0.1,198.18.0.1",
                &["198.18.0.1 is given twice (entries 1 and 3)"],
            ),
            (&too_many, &["33 addresses, more than 32"]),
            (
                "198.18.0.1, ,198.18.0.1",
                &[
                    "entry 2 of 3 is empty",
                    "198.18.0.1 is given twice (entries 1 and 3)",
                ],
            ),
        ];
        for (value, said) in cases {
            let arg = format!("--fabric-bind={value}");
            let err = parse(&["--node-name", "n", &arg]).expect_err(value);
            let text = err.to_string();
            assert_eq!(err.setting, "fabric-bind", "{text}");
            assert!(
                text.starts_with(
                    "invalid setting fabric-bind (flag --fabric-bind, env EFAPROBE_FABRIC_BIND): "
                ),
                "{text}"
            );
            for part in *said {
                assert!(text.contains(part), "{value:?}: {text}");
            }
            assert_eq!(
                text.matches("given twice").count(),
                said.iter().filter(|s| s.contains("twice")).count(),
                "each address said once: {text}"
            );
        }
        // With other bad settings, all are reported.
        let errors = parse_all(&["--fabric-bind=198.18.0.1,,", "--hysteresis=0"]).unwrap_err();
        let mut named: Vec<&str> = errors.0.iter().map(|e| e.setting).collect();
        named.sort_unstable();
        assert_eq!(
            named,
            ["fabric-bind", "hysteresis", "node-name"],
            "{errors}"
        );
    }

    #[test]
    fn fabric_can_be_turned_off() {
        let c = parse(&["--node-name", "n", "--fabric-provider", "none"]).unwrap();
        assert_eq!(c.fabric_provider, None);
    }
}
