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
mod tests;
