//! `efaprobe simulate-peers`'s flags, and the peers and topologies they make.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::{ConfigError, ConfigErrors};
use crate::hello::{is_node_name, MAX_ENDPOINTS};
use crate::topology::{NetworkInterface, Topology};

/// Most simulated peers in one process (each is a listening socket).
pub const MAX_COUNT: u32 = 20_000;

/// Most fabric responders in one process.
pub const MAX_ENGINES: u32 = 128;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated peers (each needs a file descriptor: raise `ulimit -n` for thousands).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT as i64))]
    pub count: u32,
    /// IPv4 address of the first peer; the others take the next addresses, skipping those
    /// ending in .0 and .255. In 127.0.0.0/8 they are all local already; elsewhere (a test
    /// namespace) they must be assigned, e.g. a prefix on `lo`.
    #[arg(long, default_value = "127.1.0.1")]
    pub ip_base: Ipv4Addr,
    /// HTTP port of every peer.
    #[arg(long, default_value_t = 9476)]
    pub port: u16,
    /// libfabric provider of the shared responder (the agent under test must use the same),
    /// or `none`: the peers then say they have no fabric.
    #[arg(long, default_value = "udp;ofi_rxd")]
    pub fabric_provider: String,
    /// Local IP the responder's endpoint binds to (IP-based providers).
    #[arg(long, default_value = "127.0.0.1")]
    pub fabric_bind: IpAddr,
    /// Fabric responders (engines, each a thread with `--rails` endpoints); peer i publishes
    /// responder i mod K's rails. With one, the agent under test holds one address-vector entry for all peers
    /// and its cap of one ping in flight per address serialises its probes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_ENGINES as i64))]
    pub fabric_engines: u32,
    /// Rails of every simulated peer (1 to 32, the rails a hello lists): each responder opens
    /// that many endpoints, rails 0 to N-1, all on its one engine thread, and every peer lists
    /// them in its hello, so an agent with N rails pairs N with each peer. On IP providers every
    /// rail binds `--fabric-bind` (the same address, N endpoints on ports of their own); on
    /// `efa` rail r is the r-th device, the devices repeated in order when there are fewer.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_ENDPOINTS as i64))]
    pub rails: u32,
    /// Node names are PREFIX-00001, PREFIX-00002, ...
    #[arg(long, default_value = "sim")]
    pub name_prefix: String,
    /// Spread the peers over this many placement groups, `PREFIX-pg-0` ... (peer i in group
    /// i mod N), each peer publishing an instance topology (one subnet, `subnet-PREFIX`). 0:
    /// the peers publish no topology, and an agent probes them as of an unknown group.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MAX_COUNT as i64))]
    pub placement_groups: u32,
    /// Write the peer list (comma-separated HOST:PORT) to this file once every peer listens,
    /// instead of printing it on stdout.
    #[arg(long, value_name = "PATH")]
    pub peers_file: Option<PathBuf>,
}

/// The HTTP addresses of `count` peers from `base` on: consecutive, skipping host parts .0 and
/// .255 (a broadcast or network address elsewhere than on loopback). `None` when they would
/// run past the end of the address space or out of 127.0.0.0/8 when starting in it.
pub fn peer_ips(base: Ipv4Addr, count: u32) -> Option<Vec<Ipv4Addr>> {
    let loopback = base.is_loopback();
    let mut ips = Vec::with_capacity(count as usize);
    let mut next = u32::from(base);
    while ips.len() < count as usize {
        let ip = Ipv4Addr::from(next);
        if loopback && !ip.is_loopback() {
            return None;
        }
        let last = ip.octets()[3];
        if last != 0 && last != 255 {
            ips.push(ip);
        }
        next = next.checked_add(1)?;
    }
    Some(ips)
}

/// The node name of simulated peer `index` (from 1).
pub fn node_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:05}")
}

/// The instance topology of simulated peer `index` (0-based) when the peers are spread over
/// `groups` placement groups: group `index mod groups`, one subnet for all.
pub fn sim_topology(prefix: &str, index: usize, groups: u32) -> Option<Topology> {
    let group = index.checked_rem(groups as usize)?;
    let [.., a, b, c, d] = (index as u64).to_be_bytes();
    Some(Topology {
        instance_id: format!("i-{index:017x}"),
        instance_type: "p5.48xlarge".to_owned(),
        availability_zone: "sim-zone-a".to_owned(),
        availability_zone_id: None,
        placement_group: Some(format!("{prefix}-pg-{group}")),
        primary_mac: format!("0a:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
        interfaces: vec![NetworkInterface {
            mac: format!("0a:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
            subnet_id: format!("subnet-{prefix}"),
            vpc_id: "vpc-sim".to_owned(),
            security_group_ids: vec!["sg-sim".to_owned()],
            subnet_cidr: None,
        }],
    })
}

/// Checks the flags together, after the values clap's parsers refused: the addresses of
/// the peers, or every bad setting.
pub fn simulate_config(args: &Args, refused: ConfigErrors) -> Result<Vec<Ipv4Addr>, ConfigErrors> {
    let mut errors = refused;
    if !is_node_name(&node_name(&args.name_prefix, MAX_COUNT as usize)) {
        errors.push(ConfigError::of::<Args>(
            "name-prefix",
            format!("{:?} does not make Kubernetes node names", args.name_prefix),
        ));
    } else if let Some(Err(e)) = sim_topology(
        &args.name_prefix,
        args.count as usize - 1,
        args.placement_groups,
    )
    .map(|t| t.validate())
    {
        // Every topology is made the same way: the last one's validity is everyone's.
        errors.push(ConfigError::of::<Args>(
            "name-prefix",
            format!("{:?} does not make valid topologies: {e}", args.name_prefix),
        ));
    }
    let ips = peer_ips(args.ip_base, args.count);
    if ips.is_none() && !errors.names("count") {
        errors.push(ConfigError::of::<Args>(
            "ip-base",
            format!(
                "{} addresses from {} do not fit{}",
                args.count,
                args.ip_base,
                if args.ip_base.is_loopback() {
                    " in 127.0.0.0/8"
                } else {
                    ""
                }
            ),
        ));
    }
    match ips {
        Some(ips) => errors.or_ok(ips),
        None => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_and_broadcast_parts() {
        let ips = peer_ips(Ipv4Addr::new(127, 1, 0, 253), 4).unwrap();
        assert_eq!(
            ips,
            [
                Ipv4Addr::new(127, 1, 0, 253),
                Ipv4Addr::new(127, 1, 0, 254),
                Ipv4Addr::new(127, 1, 1, 1),
                Ipv4Addr::new(127, 1, 1, 2),
            ]
        );
        let many = peer_ips(Ipv4Addr::new(127, 1, 0, 1), MAX_COUNT).unwrap();
        assert_eq!(many.len(), MAX_COUNT as usize);
        assert!(many.iter().all(|ip| ip.is_loopback()));
        let unique: std::collections::HashSet<_> = many.iter().collect();
        assert_eq!(unique.len(), many.len());
    }

    #[test]
    fn addresses_stay_in_loopback() {
        assert_eq!(peer_ips(Ipv4Addr::new(127, 255, 255, 250), 10), None);
        assert!(peer_ips(Ipv4Addr::new(198, 18, 64, 1), 10).is_some());
        assert_eq!(peer_ips(Ipv4Addr::new(255, 255, 255, 250), 10), None);
    }

    #[test]
    fn a_prefix_too_long_for_a_subnet_id_is_refused() {
        let t = sim_topology(&"p".repeat(40), 0, 2).unwrap();
        assert!(t.validate().is_err());
    }

    #[test]
    fn topologies_are_valid_and_spread_over_the_groups() {
        assert_eq!(sim_topology("sim", 7, 0), None);
        let groups: Vec<_> = (0..MAX_COUNT as usize)
            .map(|i| sim_topology("sim", i, 3).unwrap())
            .inspect(|t| t.validate().unwrap())
            .map(|t| t.placement_group.unwrap())
            .collect();
        assert_eq!(
            groups[..4],
            ["sim-pg-0", "sim-pg-1", "sim-pg-2", "sim-pg-0"]
        );
        let macs: std::collections::HashSet<_> = (0..MAX_COUNT as usize)
            .map(|i| sim_topology("sim", i, 3).unwrap().primary_mac)
            .collect();
        assert_eq!(macs.len(), MAX_COUNT as usize);
    }
}
