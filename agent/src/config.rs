//! `efaprobe agent` configuration: flags, each also read from an environment variable (a
//! DaemonSet passes NODE_NAME and POD_IP from the downward API), validated once at start.
//! A bad setting ends the process with exit code 64 and a message that names the setting.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::cli::parse_duration;
use crate::probe::TargetSpec;
use crate::verdict::VerdictPolicy;

/// Default port of the agent's HTTP server (metrics, API, hello).
pub const DEFAULT_PORT: u16 = 9476;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// This node's name (the `peer` label on other nodes).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// HTTP listen address: metrics, API, and the hello peers fetch.
    #[arg(long, env = "EFAPROBE_LISTEN", default_value = "0.0.0.0:9476")]
    pub listen: String,
    /// This pod's IP; the default fabric bind address, and how this node recognises itself in
    /// a peer list.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,
    /// Peer agents' listen addresses, `HOST:PORT`, comma-separated.
    #[arg(long, env = "EFAPROBE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// A service to check: `NAME=HOST:PORT[:CHECK]`, CHECK one of tcp, nats, prometheus, http,
    /// http:/path (default by port: 4222 nats, 9090 prometheus, else tcp). Repeatable; in the
    /// environment, comma-separated.
    #[arg(long = "target", env = "EFAPROBE_TARGETS", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// libfabric provider for the fabric path (efa, tcp, "udp;ofi_rxd", shm), or `none`.
    #[arg(long, env = "EFAPROBE_FABRIC_PROVIDER", default_value = "efa")]
    pub fabric_provider: String,
    /// Local IP for IP-based fabric providers (default: --pod-ip).
    #[arg(long, env = "EFAPROBE_FABRIC_BIND")]
    pub fabric_bind: Option<String>,
    /// Time between probe rounds.
    #[arg(long, env = "EFAPROBE_INTERVAL", default_value = "5s")]
    pub interval: String,
    /// Deadline of each probe (must be shorter than the interval).
    #[arg(long, env = "EFAPROBE_TIMEOUT", default_value = "1s")]
    pub timeout: String,
    /// Consecutive agreeing rounds before a peer's state changes.
    #[arg(long, env = "EFAPROBE_HYSTERESIS", default_value_t = 2)]
    pub hysteresis: u32,
    /// Fabric loss ratio over the last 10 rounds above which a peer is degraded.
    #[arg(long, env = "EFAPROBE_MAX_LOSS", default_value_t = 0.2)]
    pub max_loss: f64,
    /// Round-trip time on either path above which a peer is degraded.
    #[arg(long, env = "EFAPROBE_MAX_RTT", default_value = "50ms")]
    pub max_rtt: String,
    /// Fabric probe size in bytes (the probe that decides reachability).
    #[arg(long, env = "EFAPROBE_PROBE_SIZE", default_value_t = 64)]
    pub probe_size: usize,
    /// Larger fabric probes, comma-separated bytes, one every other round in turn after the small one
    /// answers: drops that hit only large packets are real. Empty turns them off.
    #[arg(long, env = "EFAPROBE_LARGE_PROBE_SIZES", default_value = "1024,8192")]
    pub large_probe_sizes: String,
    /// Peer probes this node starts per second, at most: with the interval, how many peers a
    /// round probes (20/s at 5s: 100). Clusters that fit are probed in full every round;
    /// larger ones get the topology-group mesh, a rotating sample of other groups and every
    /// unhealthy peer.
    #[arg(long, env = "EFAPROBE_PROBE_BUDGET", default_value_t = 20.0)]
    pub probe_budget: f64,
    /// Peers from other topology groups (placement group, else subnet) probed each round.
    #[arg(long, env = "EFAPROBE_SAMPLE_PEERS", default_value_t = 16)]
    pub sample_peers: usize,
    /// Rounds a sample of other groups' peers is kept before it rotates.
    #[arg(long, env = "EFAPROBE_SAMPLE_ROTATION", default_value_t = 6)]
    pub sample_rotation: u64,
    /// Measure a peer's fabric RTT (a ping pair, which makes both sides spin briefly) every
    /// this many of its rounds; the rounds between prove the path with one ping. 1: every
    /// round.
    #[arg(long, env = "EFAPROBE_FABRIC_RTT_EVERY", default_value_t = 4)]
    pub fabric_rtt_every: u32,
    /// EC2 instance metadata (IMDSv2), `http://HOST[:PORT]`, or `none` off AWS.
    #[arg(long, env = "EFAPROBE_IMDS_ENDPOINT", default_value = crate::topology::DEFAULT_IMDS_ENDPOINT)]
    pub imds_endpoint: String,
    /// Deadline for reading instance metadata at start: off AWS, start-up waits no longer.
    #[arg(long, env = "EFAPROBE_IMDS_TIMEOUT", default_value = "2s")]
    pub imds_timeout: String,
    /// Where sysfs is mounted (device hardware counters are read below it).
    #[arg(long, env = "EFAPROBE_SYSFS_ROOT", default_value = "/sys")]
    pub sysfs_root: std::path::PathBuf,
    /// Which peers get per-peer metric series: all, unhealthy (only peers in a fault state),
    /// none, or auto (all up to 100 peers, unhealthy above).
    #[arg(long, env = "EFAPROBE_PER_PEER_METRICS", default_value = "auto")]
    pub per_peer_metrics: String,
    #[command(flatten)]
    pub discovery: crate::discovery::DiscoveryArgs,
    #[command(flatten)]
    pub node_actions: crate::node_actions::NodeActionArgs,
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
    pub fabric_bind: Option<IpAddr>,
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
    pub imds_endpoint: Option<crate::topology::ImdsEndpoint>,
    pub imds_timeout: Duration,
    pub sysfs_root: std::path::PathBuf,
    pub per_peer_metrics: crate::metrics::PerPeerMetrics,
    /// Where peers come from: the static list, a DNS name, or the DaemonSet's pods.
    pub discovery: crate::discovery::DiscoveryConfig,
    /// How long a newly eligible peer is `unknown` whatever its probes say.
    pub peer_grace: Duration,
    /// The node condition, Events and startup gate (all off by default).
    pub node_actions: crate::node_actions::NodeActionSettings,
}

/// A setting that cannot be used, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting} (flag --{flag}, env {env}): {detail}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub detail: String,
}

fn bad(setting: &'static str, env: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        flag: setting,
        env,
        detail: detail.into(),
    }
}

impl AgentConfig {
    pub fn from_args(a: &AgentArgs) -> Result<AgentConfig, ConfigError> {
        let node_name = match &a.node_name {
            None => {
                return Err(bad(
                    "node-name",
                    "NODE_NAME",
                    "required (set NODE_NAME from spec.nodeName)",
                ))
            }
            Some(n) if !crate::hello::is_node_name(n) => {
                return Err(bad(
                    "node-name",
                    "NODE_NAME",
                    format!("{n:?} is not a Kubernetes node name"),
                ))
            }
            Some(n) => n.clone(),
        };
        let listen: SocketAddr = a.listen.parse().map_err(|_| {
            bad(
                "listen",
                "EFAPROBE_LISTEN",
                format!("{:?} is not IP:PORT", a.listen),
            )
        })?;
        let pod_ip = a
            .pod_ip
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<IpAddr>())
            .transpose()
            .map_err(|_| {
                bad(
                    "pod-ip",
                    "POD_IP",
                    format!("{:?} is not an IP address", a.pod_ip),
                )
            })?;
        let mut peers = Vec::new();
        for p in a.peers.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            validate_peer(p).map_err(|d| bad("peers", "EFAPROBE_PEERS", d))?;
            if !peers.iter().any(|q| q == p) {
                peers.push(p.to_owned());
            }
        }
        let mut targets: Vec<TargetSpec> = Vec::new();
        for t in a.targets.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let spec = TargetSpec::parse(t)
                .map_err(|e| bad("target", "EFAPROBE_TARGETS", e.to_string()))?;
            if targets.iter().any(|s| s.name == spec.name) {
                return Err(bad(
                    "target",
                    "EFAPROBE_TARGETS",
                    format!("target name {:?} given twice", spec.name),
                ));
            }
            targets.push(spec);
        }
        let fabric_provider = match a.fabric_provider.trim() {
            "" => {
                return Err(bad(
                    "fabric-provider",
                    "EFAPROBE_FABRIC_PROVIDER",
                    "empty (use `none` to turn the fabric path off)",
                ))
            }
            "none" => None,
            p => Some(p.to_owned()),
        };
        let fabric_bind = match a.fabric_bind.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                bad(
                    "fabric-bind",
                    "EFAPROBE_FABRIC_BIND",
                    format!("{s:?} is not an IP address"),
                )
            })?),
            None => pod_ip,
        };
        let interval =
            parse_duration(&a.interval).map_err(|e| bad("interval", "EFAPROBE_INTERVAL", e))?;
        let timeout =
            parse_duration(&a.timeout).map_err(|e| bad("timeout", "EFAPROBE_TIMEOUT", e))?;
        if interval < Duration::from_millis(100) {
            return Err(bad("interval", "EFAPROBE_INTERVAL", "at least 100ms"));
        }
        if timeout.is_zero() || timeout >= interval {
            return Err(bad(
                "timeout",
                "EFAPROBE_TIMEOUT",
                format!("must be above zero and below the interval ({})", a.interval),
            ));
        }
        if a.hysteresis == 0 || a.hysteresis > 100 {
            return Err(bad(
                "hysteresis",
                "EFAPROBE_HYSTERESIS",
                "between 1 and 100 rounds",
            ));
        }
        if !(0.0..=1.0).contains(&a.max_loss) {
            return Err(bad(
                "max-loss",
                "EFAPROBE_MAX_LOSS",
                "a ratio between 0 and 1",
            ));
        }
        let max_rtt =
            parse_duration(&a.max_rtt).map_err(|e| bad("max-rtt", "EFAPROBE_MAX_RTT", e))?;
        if !(1..=8192).contains(&a.probe_size) {
            return Err(bad(
                "probe-size",
                "EFAPROBE_PROBE_SIZE",
                "between 1 and 8192 bytes",
            ));
        }
        let mut large_probe_sizes = Vec::new();
        for part in a
            .large_probe_sizes
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let size = part
                .parse::<usize>()
                .ok()
                .filter(|n| *n > a.probe_size && *n <= 8192)
                .ok_or_else(|| {
                    bad(
                        "large-probe-sizes",
                        "EFAPROBE_LARGE_PROBE_SIZES",
                        format!("{part:?}: sizes above --probe-size, at most 8192 bytes"),
                    )
                })?;
            large_probe_sizes.push(size);
        }
        large_probe_sizes.sort_unstable();
        large_probe_sizes.dedup();
        if !(a.probe_budget.is_finite() && (0.1..=10_000.0).contains(&a.probe_budget)) {
            return Err(bad(
                "probe-budget",
                "EFAPROBE_PROBE_BUDGET",
                "peer probes per second, between 0.1 and 10000",
            ));
        }
        if a.sample_peers > 10_000 {
            return Err(bad(
                "sample-peers",
                "EFAPROBE_SAMPLE_PEERS",
                "at most 10000 peers",
            ));
        }
        if !(1..=10_000).contains(&a.sample_rotation) {
            return Err(bad(
                "sample-rotation",
                "EFAPROBE_SAMPLE_ROTATION",
                "between 1 and 10000 rounds",
            ));
        }
        if !(1..=1000).contains(&a.fabric_rtt_every) {
            return Err(bad(
                "fabric-rtt-every",
                "EFAPROBE_FABRIC_RTT_EVERY",
                "between 1 and 1000 rounds",
            ));
        }
        let imds_endpoint = match a.imds_endpoint.trim() {
            "none" | "" => None,
            url => Some(
                crate::topology::parse_endpoint(url)
                    .map_err(|e| bad("imds-endpoint", "EFAPROBE_IMDS_ENDPOINT", e))?,
            ),
        };
        let imds_timeout = parse_duration(&a.imds_timeout)
            .map_err(|e| bad("imds-timeout", "EFAPROBE_IMDS_TIMEOUT", e))?;
        if imds_timeout.is_zero() || imds_timeout > Duration::from_secs(30) {
            return Err(bad(
                "imds-timeout",
                "EFAPROBE_IMDS_TIMEOUT",
                "above zero, at most 30s",
            ));
        }
        let per_peer_metrics = a
            .per_peer_metrics
            .parse()
            .map_err(|e| bad("per-peer-metrics", "EFAPROBE_PER_PEER_METRICS", e))?;
        let (discovery, grace) =
            crate::discovery::DiscoveryConfig::from_args(&a.discovery, &peers, listen.port())?;
        // A configured list is not a rollout: its peers are judged from the first round.
        let peer_grace = match discovery {
            crate::discovery::DiscoveryConfig::Static(_) => Duration::ZERO,
            _ => grace,
        };
        let node_actions = crate::node_actions::NodeActionSettings::from_args(&a.node_actions)
            .map_err(|e| ConfigError {
                setting: e.setting,
                flag: e.flag,
                env: e.env,
                detail: e.detail,
            })?;
        Ok(AgentConfig {
            node_name,
            listen,
            pod_ip,
            peers,
            targets,
            fabric_provider,
            fabric_bind,
            interval,
            timeout,
            policy: VerdictPolicy {
                hysteresis: a.hysteresis,
                max_loss: a.max_loss,
                max_rtt,
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
            imds_endpoint,
            imds_timeout,
            sysfs_root: a.sysfs_root.clone(),
            per_peer_metrics,
            discovery,
            peer_grace,
            node_actions,
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

fn validate_peer(p: &str) -> Result<(), String> {
    let (host, port) = p
        .rsplit_once(':')
        .ok_or_else(|| format!("peer {p:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("peer {p:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let is_ip = host.parse::<IpAddr>().is_ok();
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if is_ip || is_name {
        Ok(())
    } else {
        Err(format!(
            "peer {p:?}: {host:?} is neither an IP address nor a host name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn parse(args: &[&str]) -> Result<AgentConfig, ConfigError> {
        let mut full = vec!["efaprobe"];
        if !args.contains(&"--imds-endpoint") {
            // Never the real metadata address from a test.
            full.extend_from_slice(&["--imds-endpoint", "none"]);
        }
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).expect("clap accepts the shape");
        AgentConfig::from_args(&cli.args)
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
            Some("10.0.0.5".parse().unwrap()),
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

    #[test]
    fn fabric_can_be_turned_off() {
        let c = parse(&["--node-name", "n", "--fabric-provider", "none"]).unwrap();
        assert_eq!(c.fabric_provider, None);
    }
}
