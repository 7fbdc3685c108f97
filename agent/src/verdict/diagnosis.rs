//! Why the fabric drops between two nodes, from what both publish about where they run.
//!
//! EFA (SRD) traffic does not cross subnets (and so not availability zones), and it needs a
//! security group that allows all traffic to and from itself. From both sides' placement:
//!
//! | placement | reason | remedy |
//! |---|---|---|
//! | different availability zones | `cross_az` | one AZ and one subnet for EFA node groups |
//! | same AZ, different subnets | `cross_subnet` | relaunch into one subnet; a cluster placement group |
//! | same subnet | `security_group` | the self-referencing allow-all rule, both directions; look for stale rules |
//! | unknown on either side | (the path's own reason: `fabric_timeout`, `provider_error`) | |
//!
//! A placement is one network interface's: a node's is its primary interface's
//! ([`Placement::of`]); a rail's is its own ENI's, found by the MAC its hello lists
//! ([`Placement::of_rail`]), so a rail that drops is diagnosed from its ENIs on both sides.
//!
//! Nodes in different (or no) cluster placement groups get a warning: EFA works, but with
//! more latency and less bandwidth than it could.

use serde::Serialize;

/// Where a node, or one of its rails, runs, as far as EFA cares: one network interface's
/// subnet, VPC and security groups, and the instance's zone and placement group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub availability_zone: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub security_group_ids: Vec<String>,
    pub placement_group: Option<String>,
}

impl Placement {
    /// From instance metadata: the primary network interface's subnet, VPC and groups.
    pub fn of(topology: &crate::topology::Topology) -> Option<Placement> {
        let primary = topology.primary()?;
        Some(Placement {
            availability_zone: topology.availability_zone.clone(),
            subnet_id: primary.subnet_id.clone(),
            vpc_id: primary.vpc_id.clone(),
            security_group_ids: primary.security_group_ids.clone(),
            placement_group: topology.placement_group.clone(),
        })
    }

    /// From instance metadata: the network interface with `mac` (a rail's ENI), with the
    /// instance's zone and placement group; `None` when no interface has that MAC.
    pub fn of_interface(topology: &crate::topology::Topology, mac: &str) -> Option<Placement> {
        let interface = topology.interfaces.iter().find(|i| i.mac == mac)?;
        Some(Placement {
            availability_zone: topology.availability_zone.clone(),
            subnet_id: interface.subnet_id.clone(),
            vpc_id: interface.vpc_id.clone(),
            security_group_ids: interface.security_group_ids.clone(),
            placement_group: topology.placement_group.clone(),
        })
    }

    /// Where rail `rail` of a node runs: the interface its hello names for the rail (its
    /// MAC) in its topology; else the primary interface's placement (a rail whose interface
    /// the system did not say, or an agent from before rails).
    pub fn of_rail(
        topology: &crate::topology::Topology,
        rail_mac: Option<&str>,
    ) -> Option<Placement> {
        rail_mac
            .and_then(|mac| Placement::of_interface(topology, mac))
            .or_else(|| Placement::of(topology))
    }

    /// The topology group this node probes as a full mesh: its placement group (`pg:NAME`),
    /// else its subnet (`subnet:ID`). Both are what EFA traffic cannot leave.
    pub fn group(&self) -> String {
        match &self.placement_group {
            Some(pg) => format!("pg:{pg}"),
            None => format!("subnet:{}", self.subnet_id),
        }
    }
}

/// How two nodes' placements relate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// One side's placement is unknown (off AWS, IMDS blocked, old agent).
    Unknown,
    CrossAz {
        local: String,
        peer: String,
    },
    CrossSubnet {
        local: String,
        peer: String,
    },
    SameSubnet {
        subnet: String,
        local_groups: Vec<String>,
        peer_groups: Vec<String>,
    },
}

pub fn relate(local: Option<&Placement>, peer: Option<&Placement>) -> Relation {
    let (Some(l), Some(p)) = (local, peer) else {
        return Relation::Unknown;
    };
    if l.availability_zone != p.availability_zone {
        Relation::CrossAz {
            local: l.availability_zone.clone(),
            peer: p.availability_zone.clone(),
        }
    } else if l.subnet_id != p.subnet_id {
        Relation::CrossSubnet {
            local: l.subnet_id.clone(),
            peer: p.subnet_id.clone(),
        }
    } else {
        Relation::SameSubnet {
            subnet: l.subnet_id.clone(),
            local_groups: l.security_group_ids.clone(),
            peer_groups: p.security_group_ids.clone(),
        }
    }
}

/// A warning about placement groups, whatever the verdict.
pub fn placement_warning(local: Option<&Placement>, peer: Option<&Placement>) -> Option<String> {
    let (l, p) = (local?, peer?);
    match (&l.placement_group, &p.placement_group) {
        (Some(a), Some(b)) if a == b => None,
        (Some(a), Some(b)) => Some(format!(
            "the nodes are in different placement groups ({a}, {b}): EFA latency and bandwidth suffer"
        )),
        _ => Some(
            "at least one node is not in a cluster placement group: EFA latency and bandwidth \
             suffer"
                .into(),
        ),
    }
}

/// The sentence and remedy for a fabric drop explained by placement; `None` when the
/// relation explains nothing.
pub fn explain(relation: &Relation) -> Option<String> {
    Some(match relation {
        Relation::Unknown => return None,
        Relation::CrossAz { local, peer } => format!(
            "IP works but the fabric is dropped: the nodes are in different availability zones \
             ({local}, {peer}) and EFA traffic does not leave its subnet. Put EFA node groups in \
             one AZ and one subnet, in a cluster placement group."
        ),
        Relation::CrossSubnet { local, peer } => format!(
            "IP works but the fabric is dropped: the nodes are in different subnets ({local}, \
             {peer}) and EFA traffic does not cross subnets. Relaunch the node group into one \
             subnet, in a cluster placement group."
        ),
        Relation::SameSubnet {
            subnet,
            local_groups,
            peer_groups,
        } => {
            let groups = if local_groups == peer_groups {
                format!("security group {}", local_groups.join(","))
            } else {
                format!(
                    "security groups {} and {}",
                    local_groups.join(","),
                    peer_groups.join(",")
                )
            };
            format!(
                "IP works but the fabric is dropped within subnet {subnet}: {groups} must allow \
                 all traffic to and from itself (a self-referencing rule, inbound and outbound). \
                 A rule that trusted a group in a peered VPC goes stale when the peering is \
                 deleted: look for stale rules with `aws ec2 describe-stale-security-groups`."
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(az: &str, subnet: &str, sg: &str, pg: Option<&str>) -> Placement {
        Placement {
            availability_zone: az.into(),
            subnet_id: subnet.into(),
            vpc_id: "vpc-1".into(),
            security_group_ids: vec![sg.into()],
            placement_group: pg.map(Into::into),
        }
    }

    #[test]
    fn the_diagnosis_table() {
        let a = at("us-east-1a", "subnet-a", "sg-1", Some("pg"));
        assert_eq!(relate(Some(&a), None), Relation::Unknown);
        assert_eq!(relate(None, Some(&a)), Relation::Unknown);
        assert!(matches!(
            relate(
                Some(&a),
                Some(&at("us-east-1b", "subnet-b", "sg-1", Some("pg")))
            ),
            Relation::CrossAz { .. }
        ));
        assert!(matches!(
            relate(
                Some(&a),
                Some(&at("us-east-1a", "subnet-c", "sg-1", Some("pg")))
            ),
            Relation::CrossSubnet { .. }
        ));
        assert!(matches!(
            relate(
                Some(&a),
                Some(&at("us-east-1a", "subnet-a", "sg-2", Some("pg")))
            ),
            Relation::SameSubnet { .. }
        ));
    }

    #[test]
    fn explanations_name_the_facts_and_the_remedy() {
        let a = at("us-east-1a", "subnet-a", "sg-1", None);
        let b = at("us-east-1a", "subnet-b", "sg-1", None);
        let text = explain(&relate(Some(&a), Some(&b))).unwrap();
        assert!(
            text.contains("subnet-a") && text.contains("subnet-b") && text.contains("one subnet")
        );
        let text = explain(&relate(Some(&a), Some(&a))).unwrap();
        assert!(text.contains("sg-1") && text.contains("describe-stale-security-groups"));
        let c = at("us-east-1a", "subnet-a", "sg-9", None);
        let text = explain(&relate(Some(&a), Some(&c))).unwrap();
        assert!(text.contains("sg-1 and sg-9"), "{text}");
        assert_eq!(explain(&Relation::Unknown), None);
    }

    use crate::topology::{NetworkInterface, Topology};

    fn interface(mac: &str, subnet: &str, groups: &[&str]) -> NetworkInterface {
        NetworkInterface {
            mac: mac.into(),
            subnet_id: subnet.into(),
            vpc_id: "vpc-1".into(),
            security_group_ids: groups.iter().map(|g| g.to_string()).collect(),
            subnet_cidr: None,
        }
    }

    /// A node of two rails: rail 0 on the primary ENI, rail 1 on an ENI of its own.
    fn two_rail_topology(instance: &str, rail1_groups: &[&str]) -> Topology {
        Topology {
            instance_id: instance.into(),
            instance_type: "p5.48xlarge".into(),
            availability_zone: "us-east-1a".into(),
            availability_zone_id: None,
            placement_group: Some("pg-1".into()),
            primary_mac: "0e:00:00:00:00:01".into(),
            interfaces: vec![
                interface("0e:00:00:00:00:01", "subnet-a", &["sg-node"]),
                interface("0e:00:00:00:00:02", "subnet-b", rail1_groups),
            ],
        }
    }

    const PRIMARY: Option<&str> = Some("0e:00:00:00:00:01");
    const RAIL1: Option<&str> = Some("0e:00:00:00:00:02");

    #[test]
    fn an_interface_s_placement_is_its_own_eni_in_the_instance_s_zone() {
        let t = two_rail_topology("i-1", &["sg-rail1"]);
        let rail1 = Placement::of_interface(&t, "0e:00:00:00:00:02").unwrap();
        assert_eq!(
            rail1,
            Placement {
                availability_zone: "us-east-1a".into(),
                subnet_id: "subnet-b".into(),
                vpc_id: "vpc-1".into(),
                security_group_ids: vec!["sg-rail1".into()],
                placement_group: Some("pg-1".into()),
            }
        );
        assert_eq!(
            Placement::of(&t),
            Placement::of_interface(&t, "0e:00:00:00:00:01"),
            "the node's placement is its primary interface's"
        );
        assert_eq!(Placement::of(&t).unwrap().subnet_id, "subnet-a");
        assert_eq!(Placement::of_interface(&t, "0e:00:00:00:00:09"), None);
        assert_eq!(
            Placement::of_interface(&t, "0E:00:00:00:00:02"),
            None,
            "MACs are compared as validated, lower case"
        );
    }

    #[test]
    fn a_rail_s_placement_is_its_interface_s_else_the_primary_s() {
        let t = two_rail_topology("i-1", &["sg-rail1"]);
        assert_eq!(Placement::of_rail(&t, PRIMARY), Placement::of(&t));
        assert_eq!(Placement::of_rail(&t, RAIL1).unwrap().subnet_id, "subnet-b");
        // No MAC (the system did not say, an agent before rails), or one the topology does
        // not list: the primary interface's.
        assert_eq!(Placement::of_rail(&t, None), Placement::of(&t));
        assert_eq!(
            Placement::of_rail(&t, Some("0e:00:00:00:00:09")),
            Placement::of(&t)
        );
    }

    #[test]
    fn a_failing_rail_is_diagnosed_from_its_own_enis_on_both_sides() {
        // Both nodes' primaries share a group; rail 1's ENIs sit in subnet-b, the peer's
        // with a group of its own (one that lacks the self rule).
        let local = two_rail_topology("i-1", &["sg-rail1"]);
        let peer = two_rail_topology("i-2", &["sg-rail1-new"]);
        let (l, p) = (
            Placement::of_rail(&local, RAIL1),
            Placement::of_rail(&peer, RAIL1),
        );
        assert_eq!(
            relate(l.as_ref(), p.as_ref()),
            Relation::SameSubnet {
                subnet: "subnet-b".into(),
                local_groups: vec!["sg-rail1".into()],
                peer_groups: vec!["sg-rail1-new".into()],
            }
        );
        let text = explain(&relate(l.as_ref(), p.as_ref())).unwrap();
        assert!(text.contains("sg-rail1 and sg-rail1-new"), "{text}");
        // The primaries alone would have named the wrong subnet and group.
        let primaries = relate(
            Placement::of_rail(&local, PRIMARY).as_ref(),
            Placement::of_rail(&peer, PRIMARY).as_ref(),
        );
        assert!(
            matches!(&primaries, Relation::SameSubnet { subnet, local_groups, .. }
                if subnet == "subnet-a" && local_groups == &["sg-node"]),
            "{primaries:?}"
        );
    }

    #[test]
    fn placement_group_warnings() {
        let same = at("az", "s", "sg", Some("pg-1"));
        assert_eq!(placement_warning(Some(&same), Some(&same)), None);
        let other = at("az", "s", "sg", Some("pg-2"));
        assert!(placement_warning(Some(&same), Some(&other))
            .unwrap()
            .contains("pg-1"));
        let none = at("az", "s", "sg", None);
        assert!(placement_warning(Some(&same), Some(&none)).is_some());
        assert_eq!(placement_warning(None, Some(&same)), None);
    }
}
