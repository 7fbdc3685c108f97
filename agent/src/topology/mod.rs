//! Where this instance sits in EC2: instance, zone, placement group, and per network
//! interface its subnet, VPC and security groups, read from instance metadata (IMDSv2).
//!
//! These are the facts a `fabric_dropped` diagnosis rests on: EFA traffic does not cross a
//! subnet, and needs a security group that allows all traffic to and from itself. Each
//! agent publishes its [`Topology`] in its hello, so a peer's comes from the network and is
//! checked with [`Topology::validate`] before use.
//!
//! - [`endpoint`]: `--imds-endpoint` as operators write it ([`parse_endpoint`]).
//! - [`imds`]: the token and the reads, bounded by one overall timeout ([`fetch_topology`]).
//!
//! Off AWS there is no topology, and the agent says so rather than guessing.

pub mod endpoint;
pub mod imds;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use endpoint::{parse_endpoint, ImdsEndpoint, DEFAULT_IMDS_ENDPOINT};
pub use imds::{fetch_topology, fetch_topology_from, TopologyError};

/// Most network interfaces accepted: the largest EC2 instances (p5.48xlarge) take 64.
pub const MAX_INTERFACES: usize = 64;
/// Most security groups per interface: EC2 allows 16 at most.
pub const MAX_SECURITY_GROUPS: usize = 16;
/// Longest identifier accepted (instance, subnet, VPC and security group ids are 17 hex
/// digits after a short prefix; zones and instance types are shorter).
const MAX_ID_BYTES: usize = 32;
/// EC2 allows placement group names of up to 255 ASCII characters.
const MAX_PLACEMENT_GROUP_BYTES: usize = 255;

/// This instance's place in EC2, as instance metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// `i-0123456789abcdef0`.
    pub instance_id: String,
    /// `p5.48xlarge`.
    pub instance_type: String,
    /// `us-east-1a`: the name, which maps to a different physical zone in each account.
    pub availability_zone: String,
    /// `use1-az4`: the physical zone, the same in every account (absent in some regions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone_id: Option<String>,
    /// The placement group, when the instance is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_group: Option<String>,
    /// MAC of the primary interface (device 0), lower case.
    pub primary_mac: String,
    /// Every attached interface, sorted by MAC.
    pub interfaces: Vec<NetworkInterface>,
}

/// One attached network interface (ENI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Lower case, `0e:12:34:56:78:9a`.
    pub mac: String,
    pub subnet_id: String,
    pub vpc_id: String,
    /// In the order instance metadata lists them.
    pub security_group_ids: Vec<String>,
    /// `10.0.1.0/24`; absent for interfaces without IPv4 (EFA-only interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_cidr: Option<String>,
}

impl Topology {
    /// The primary interface: the one whose subnet and security groups the node's IP
    /// traffic (and, on single-rail nodes, its fabric traffic) uses.
    pub fn primary(&self) -> Option<&NetworkInterface> {
        self.interfaces.iter().find(|i| i.mac == self.primary_mac)
    }

    /// Parses a topology published by a peer and validates it.
    pub fn from_peer(value: serde_json::Value) -> Result<Topology, String> {
        let topology: Topology =
            serde_json::from_value(value).map_err(|e| format!("not a topology: {e}"))?;
        topology.validate()?;
        Ok(topology)
    }

    /// Checks every field against what EC2 can produce: bounded lengths and counts, plain
    /// identifier characters, MACs and CIDRs that parse. A topology from a peer is
    /// untrusted; its values become metric labels and diagnosis text.
    pub fn validate(&self) -> Result<(), String> {
        check_id("instance_id", &self.instance_id)?;
        check_id("instance_type", &self.instance_type)?;
        check_id("availability_zone", &self.availability_zone)?;
        if let Some(zone_id) = &self.availability_zone_id {
            check_id("availability_zone_id", zone_id)?;
        }
        if let Some(group) = &self.placement_group {
            check_placement_group(group)?;
        }
        check_mac("primary_mac", &self.primary_mac)?;
        if self.interfaces.len() > MAX_INTERFACES {
            return Err(format!(
                "interfaces: {} of them, more than {MAX_INTERFACES}",
                self.interfaces.len()
            ));
        }
        for (n, interface) in self.interfaces.iter().enumerate() {
            interface
                .validate()
                .map_err(|e| format!("interfaces[{n}].{e}"))?;
            if self.interfaces[..n].iter().any(|i| i.mac == interface.mac) {
                return Err(format!("interfaces[{n}].mac: {} twice", interface.mac));
            }
        }
        Ok(())
    }
}

impl NetworkInterface {
    fn validate(&self) -> Result<(), String> {
        check_mac("mac", &self.mac)?;
        check_id("subnet_id", &self.subnet_id)?;
        check_id("vpc_id", &self.vpc_id)?;
        if self.security_group_ids.len() > MAX_SECURITY_GROUPS {
            return Err(format!(
                "security_group_ids: {} of them, more than {MAX_SECURITY_GROUPS}",
                self.security_group_ids.len()
            ));
        }
        for group in &self.security_group_ids {
            check_id("security_group_ids", group)?;
        }
        if let Some(cidr) = &self.subnet_cidr {
            check_ipv4_cidr("subnet_cidr", cidr)?;
        }
        Ok(())
    }
}

/// An EC2 identifier or name: 1 to 32 of `[A-Za-z0-9._:-]`.
fn check_id(field: &str, value: &str) -> Result<(), String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if value.is_empty() || value.len() > MAX_ID_BYTES || !value.bytes().all(plain) {
        return Err(format!(
            "{field}: {:?} is not 1 to {MAX_ID_BYTES} of [A-Za-z0-9._:-]",
            shorten(value)
        ));
    }
    Ok(())
}

/// Printable ASCII (spaces included, as EC2 allows), at most 255 bytes.
fn check_placement_group(value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > MAX_PLACEMENT_GROUP_BYTES
        || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(format!(
            "placement_group: {:?} is not 1 to {MAX_PLACEMENT_GROUP_BYTES} printable ASCII \
             characters",
            shorten(value)
        ));
    }
    Ok(())
}

/// Six lower-case hex pairs joined by colons, as instance metadata writes MACs.
pub(crate) fn check_mac(field: &str, value: &str) -> Result<(), String> {
    let pairs: Vec<&str> = value.split(':').collect();
    let hex = |p: &&str| {
        p.len() == 2
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if value.len() != 17 || pairs.len() != 6 || !pairs.iter().all(hex) {
        return Err(format!(
            "{field}: {:?} is not a lower-case MAC address",
            shorten(value)
        ));
    }
    Ok(())
}

fn check_ipv4_cidr(field: &str, value: &str) -> Result<(), String> {
    let valid = value.len() <= 18
        && value.split_once('/').is_some_and(|(ip, prefix)| {
            ip.parse::<Ipv4Addr>().is_ok()
                && prefix.len() <= 2
                && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
        });
    if !valid {
        return Err(format!(
            "{field}: {:?} is not an IPv4 CIDR block",
            shorten(value)
        ));
    }
    Ok(())
}

/// At most 40 characters of an untrusted value, for an error message.
fn shorten(value: &str) -> String {
    value.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn topology() -> Topology {
        Topology {
            instance_id: "i-0123456789abcdef0".into(),
            instance_type: "p5.48xlarge".into(),
            availability_zone: "us-east-1a".into(),
            availability_zone_id: Some("use1-az4".into()),
            placement_group: Some("training cluster-1".into()),
            primary_mac: "0e:00:00:00:00:01".into(),
            interfaces: vec![
                NetworkInterface {
                    mac: "0e:00:00:00:00:01".into(),
                    subnet_id: "subnet-0123456789abcdef0".into(),
                    vpc_id: "vpc-0123456789abcdef0".into(),
                    security_group_ids: vec!["sg-0123456789abcdef0".into()],
                    subnet_cidr: Some("10.0.1.0/24".into()),
                },
                NetworkInterface {
                    mac: "0e:00:00:00:00:02".into(),
                    subnet_id: "subnet-0123456789abcdef1".into(),
                    vpc_id: "vpc-0123456789abcdef0".into(),
                    security_group_ids: vec![],
                    subnet_cidr: None,
                },
            ],
        }
    }

    #[test]
    fn primary_is_found_by_mac() {
        let t = topology();
        assert_eq!(t.primary().unwrap().subnet_id, "subnet-0123456789abcdef0");
        let mut t = topology();
        t.primary_mac = "0e:00:00:00:00:09".into();
        assert_eq!(t.primary(), None);
    }

    #[test]
    fn a_valid_topology_round_trips_through_json() {
        let t = topology();
        t.validate().unwrap();
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(Topology::from_peer(json).unwrap(), t);
        // Optional fields may be missing; unknown ones (a newer peer) are ignored.
        let sparse = serde_json::json!({
            "instance_id": "i-1", "instance_type": "c5n.18xlarge",
            "availability_zone": "eu-west-1b", "primary_mac": "0a:1b:2c:3d:4e:5f",
            "interfaces": [], "future_field": 1,
        });
        let t = Topology::from_peer(sparse).unwrap();
        assert_eq!((&t.placement_group, t.primary()), (&None, None));
    }

    #[test]
    fn hostile_topologies_are_refused() {
        let refused = |change: &dyn Fn(&mut Topology), field: &str| {
            let mut t = topology();
            change(&mut t);
            let error = t.validate().unwrap_err();
            assert!(error.starts_with(field), "{field}: {error}");
        };
        refused(&|t| t.instance_id = String::new(), "instance_id");
        refused(&|t| t.instance_id = "i-1\"} 1\n".into(), "instance_id");
        refused(&|t| t.instance_type = "x".repeat(33), "instance_type");
        refused(
            &|t| t.availability_zone = "us east".into(),
            "availability_zone",
        );
        refused(
            &|t| t.availability_zone_id = Some(String::new()),
            "availability_zone_id",
        );
        refused(
            &|t| t.placement_group = Some("a\nb".into()),
            "placement_group",
        );
        refused(
            &|t| t.placement_group = Some("g".repeat(256)),
            "placement_group",
        );
        refused(
            &|t| t.primary_mac = "0E:00:00:00:00:01".into(),
            "primary_mac",
        );
        refused(&|t| t.primary_mac = "0e:00:00:00:00".into(), "primary_mac");
        refused(
            &|t| t.primary_mac = "0e:00:00:00:00:0g".into(),
            "primary_mac",
        );
        refused(
            &|t| t.interfaces[1].mac = t.interfaces[0].mac.clone(),
            "interfaces[1].mac",
        );
        refused(
            &|t| t.interfaces[0].subnet_id = "subnet/1".into(),
            "interfaces[0].subnet_id",
        );
        refused(
            &|t| t.interfaces[1].security_group_ids = vec!["sg-1".into(); 17],
            "interfaces[1].security_group_ids",
        );
        for cidr in [
            "10.0.1.0",
            "10.0.1.0/33",
            "10.0.1/24",
            "::/0",
            "10.0.1.0/024",
        ] {
            refused(
                &|t| t.interfaces[0].subnet_cidr = Some(cidr.into()),
                "interfaces[0].subnet_cidr",
            );
        }
        refused(
            &|t| {
                let one = t.interfaces[0].clone();
                t.interfaces = (0..=MAX_INTERFACES)
                    .map(|n| NetworkInterface {
                        mac: format!("0e:00:00:00:{:02x}:{:02x}", n / 256, n % 256),
                        ..one.clone()
                    })
                    .collect();
            },
            "interfaces",
        );
        assert!(Topology::from_peer(serde_json::json!({"instance_id": 1})).is_err());
    }

    /// The largest topology that validates still fits a hello (64 KiB) with room to spare
    /// for the rest of it.
    #[test]
    fn the_largest_valid_topology_is_bounded() {
        let id = |prefix: &str| format!("{prefix}{}", "f".repeat(MAX_ID_BYTES - prefix.len()));
        let t = Topology {
            instance_id: id("i-"),
            instance_type: id(""),
            availability_zone: id(""),
            availability_zone_id: Some(id("")),
            placement_group: Some("p".repeat(MAX_PLACEMENT_GROUP_BYTES)),
            primary_mac: "0e:00:00:00:00:00".into(),
            interfaces: (0..MAX_INTERFACES)
                .map(|n| NetworkInterface {
                    mac: format!("0e:00:00:00:00:{n:02x}"),
                    subnet_id: id("subnet-"),
                    vpc_id: id("vpc-"),
                    security_group_ids: vec![id("sg-"); MAX_SECURITY_GROUPS],
                    subnet_cidr: Some("255.255.255.255/32".into()),
                })
                .collect(),
        };
        t.validate().unwrap();
        let bytes = serde_json::to_vec(&t).unwrap().len();
        assert!(bytes < 48 * 1024, "{bytes} bytes");
    }
}
