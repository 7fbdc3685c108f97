//! Which network interface (so which ENI) a rail sits on, named by its MAC: instance
//! metadata lists each ENI's subnet and security groups by MAC, so the MAC gives a rail its
//! own placement ([`crate::verdict::diagnosis::Placement::of_interface`]).
//!
//! - IP providers (`tcp`, `udp;ofi_rxd`, any provider but `efa` and `shm`): the interface
//!   that holds the rail's bind address (`getifaddrs`, through `if-addrs`), then its MAC from
//!   `<sysfs>/class/net/<ifname>/address`. The name is this network namespace's, so the
//!   sysfs must show this namespace's interfaces (a container's own `/sys` does; a host's
//!   sysfs mounted into a pod on the pod network does not).
//! - `efa`: the domain is `<device>-rdm` (`rdmap16s27-rdm`). The kernel's RDMA core links
//!   `<sysfs>/class/infiniband/<device>/device` to the device's parent (its PCI function), and
//!   a netdev on that same function is listed beside it (the efa driver makes the EFA's PCI
//!   device the parent, `ibdev.dev.parent = &pdev->dev`), so the first place looked is
//!   `<sysfs>/class/infiniband/<device>/device/net/<ifname>/address` (how RoCE adapters,
//!   which share a function with their netdev, show it). The efa driver registers no netdev
//!   (amzn-drivers `kernel/linux/efa/src/efa_main.c` sets no `get_netdev`), and an EFA is a
//!   PCI function of its own beside its ENA (or has none at all: EFA-only interfaces), so on
//!   EFA that directory is normally absent. Then the device's GID,
//!   `<sysfs>/class/infiniband/<device>/ports/1/gids/0` (the efa driver's `query_gid` copies
//!   the device's own address there): EFA addresses seen in the field are link-local
//!   modified EUI-64 (`fe80::816:eff:fe0c:9ba3`), the form an IPv6 interface identifier takes
//!   from a MAC (RFC 4291, appendix A), and that MAC (`0a:16:0e:0c:9b:a3`) is taken. That the
//!   MAC is the ENI's is read from those addresses, not from a document: a MAC that is not
//!   in the topology finds no interface there, and the rail then falls back to the primary
//!   interface's placement.
//! - `shm`, or no bind address: no network interface, so no MAC.
//!
//! Best effort, like the rest of the inventory: a missing or unreadable file, a name that
//! is not a plain path component, or a value that is not a MAC is `None` (said at debug
//! level), never an error that stops the agent. Every read is bounded. The reads and
//! `getifaddrs` block: call once at start (or from `spawn_blocking`).

use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

/// A MAC line is 18 bytes; an InfiniBand hardware address line 60. More is not an address.
const MAX_ADDRESS_FILE_BYTES: u64 = 64;
/// A GID line (`%pI6`, 39 characters and a newline), with room for whitespace.
const MAX_GID_FILE_BYTES: u64 = 64;
/// Longest device name kept: the inventory's bound for names it reads.
const MAX_DEVICE_NAME_BYTES: usize = 64;
/// Linux interface names are at most 15 bytes (IFNAMSIZ less its NUL).
const MAX_IFNAME_BYTES: usize = 15;
/// Most netdevs looked at under one RDMA device's parent.
const MAX_NETDEVS: usize = 8;
/// The one port of an EFA device.
const EFA_PORT: &str = "1";

/// The MAC of the network interface rail `domain` of `provider` sits on, lower case; `None`
/// where the system does not say (see the module's doc for where each provider's is read).
/// `bind` is the rail's bind address (IP providers); `sysfs_root` is normally `/sys`.
/// Blocks (file reads, `getifaddrs`): call once when opening the rails.
pub fn rail_mac(
    provider: &str,
    domain: &str,
    bind: Option<IpAddr>,
    sysfs_root: &Path,
) -> Option<String> {
    match provider {
        "efa" => efa_device_mac(efa_device(domain)?, sysfs_root),
        "shm" => None,
        _ => bind_address_mac(bind?, sysfs_root),
    }
}

/// The device of an efa domain: `rdmap16s27-rdm` (or its datagram twin `-dgrm`) is
/// `rdmap16s27`. `None` when the rest is not a plain path component.
fn efa_device(domain: &str) -> Option<&str> {
    let device = domain
        .strip_suffix("-rdm")
        .or_else(|| domain.strip_suffix("-dgrm"))
        .unwrap_or(domain);
    plain_name(device, MAX_DEVICE_NAME_BYTES)
}

/// The MAC of `device`'s netdev where sysfs links one, else the one its GID was formed from.
fn efa_device_mac(device: &str, sysfs_root: &Path) -> Option<String> {
    let device_dir = sysfs_root.join("class/infiniband").join(device);
    let netdevs = super::sorted_entries(&device_dir.join("device/net"), MAX_NETDEVS);
    if let [(ifname, _)] = netdevs.as_slice() {
        if let Some(mac) = netdev_mac(ifname, sysfs_root) {
            return Some(mac);
        }
    } else if netdevs.len() > 1 {
        // Several netdevs on one function (representors): which is the rail's is a guess.
        tracing::debug!(
            device,
            netdevs = netdevs.len(),
            "more than one netdev beside the device; its GID decides"
        );
    }
    let gid = read_bounded(
        &device_dir.join("ports").join(EFA_PORT).join("gids/0"),
        MAX_GID_FILE_BYTES,
    );
    let mac = gid.as_deref().and_then(mac_of_eui64_gid);
    if mac.is_none() {
        tracing::debug!(device, root = %sysfs_root.display(), "no netdev and no MAC-formed GID: the rail's interface is not known");
    }
    mac
}

/// The MAC a link-local modified EUI-64 address (`fe80::XXYY:ZZff:feAA:BBCC`) was formed
/// from: the `ff:fe` taken out and the universal/local bit flipped back.
fn mac_of_eui64_gid(text: &str) -> Option<String> {
    let gid: Ipv6Addr = text.trim().parse().ok()?;
    let b = gid.octets();
    let link_local = b[..8] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0];
    if !link_local || b[11] != 0xff || b[12] != 0xfe {
        return None;
    }
    valid_mac(format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[8] ^ 0x02,
        b[9],
        b[10],
        b[13],
        b[14],
        b[15]
    ))
}

/// The MAC of the interface holding `bind`, if exactly one holds it.
fn bind_address_mac(bind: IpAddr, sysfs_root: &Path) -> Option<String> {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces,
        Err(error) => {
            tracing::debug!(%error, "cannot list the interfaces' addresses");
            return None;
        }
    };
    let mut holders: Vec<&str> = interfaces
        .iter()
        .filter(|i| i.ip() == bind)
        .map(|i| interface_of_label(&i.name))
        .collect();
    holders.sort_unstable();
    holders.dedup();
    match holders.as_slice() {
        [ifname] => netdev_mac(ifname, sysfs_root),
        [] => {
            tracing::debug!(%bind, "no interface holds the bind address");
            None
        }
        several => {
            tracing::debug!(%bind, interfaces = ?several, "more than one interface holds the bind address");
            None
        }
    }
}

/// The interface of an address label: an IPv4 address added with `label eth0:1` is listed
/// under its label, and Linux interface names cannot hold a `:`.
fn interface_of_label(name: &str) -> &str {
    name.split_once(':').map_or(name, |(ifname, _)| ifname)
}

/// `<sysfs>/class/net/<ifname>/address`, if it is a MAC; all zeros (loopback) is none.
fn netdev_mac(ifname: &str, sysfs_root: &Path) -> Option<String> {
    let ifname = plain_name(ifname, MAX_IFNAME_BYTES)?;
    let path = sysfs_root.join("class/net").join(ifname).join("address");
    let mac = read_bounded(&path, MAX_ADDRESS_FILE_BYTES).and_then(valid_mac);
    if mac.is_none() {
        tracing::debug!(path = %path.display(), "no MAC there");
    }
    mac
}

/// Lower case and checked ([`crate::topology::check_mac`]); the all-zero address, which
/// names no ENI, is none.
fn valid_mac(text: impl AsRef<str>) -> Option<String> {
    let mac = text.as_ref().trim().to_ascii_lowercase();
    crate::topology::check_mac("mac", &mac).ok()?;
    (mac != "00:00:00:00:00:00").then_some(mac)
}

/// `name` when it is one plain path component of at most `max` bytes.
fn plain_name(name: &str, max: usize) -> Option<&str> {
    let plain = !name.is_empty()
        && name.len() <= max
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    plain.then_some(name)
}

/// The file's text, if it is UTF-8 and at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Option<String> {
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(max + 1)
        .read_to_string(&mut text)
        .ok()?;
    (text.len() as u64 <= max).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    /// Writes `<root>/<path>` with `content`, making its folders.
    fn write(root: &Path, path: &str, content: &str) -> PathBuf {
        let file = root.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, content).unwrap();
        file
    }

    /// A fake EFA device: its port's GID and, where given, a netdev beside it.
    fn efa_device(root: &Path, device: &str, gid: Option<&str>, netdev: Option<(&str, &str)>) {
        if let Some(gid) = gid {
            write(
                root,
                &format!("class/infiniband/{device}/ports/1/gids/0"),
                gid,
            );
        }
        if let Some((ifname, mac)) = netdev {
            // sysfs's `device/net/<ifname>` is a folder of the netdev; only its name is read.
            fs::create_dir_all(root.join(format!("class/infiniband/{device}/device/net/{ifname}")))
                .unwrap();
            write(root, &format!("class/net/{ifname}/address"), mac);
        }
    }

    #[test]
    fn an_efa_rail_is_named_by_the_netdev_sysfs_links_beside_its_device() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        efa_device(
            root,
            "rdmap16s27",
            Some("fe80:0000:0000:0000:0816:0eff:fe0c:9ba3\n"),
            Some(("eth1", "0E:AA:BB:CC:DD:01\n")),
        );
        assert_eq!(
            rail_mac("efa", "rdmap16s27-rdm", None, root).as_deref(),
            Some("0e:aa:bb:cc:dd:01"),
            "the netdev first, lower-cased"
        );
        assert_eq!(
            rail_mac("efa", "rdmap16s27-dgrm", None, root).as_deref(),
            Some("0e:aa:bb:cc:dd:01")
        );
    }

    #[test]
    fn an_efa_rail_without_a_netdev_is_named_by_the_mac_its_gid_was_formed_from() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        // As the kernel prints GIDs (`%pI6`); an EFA address seen in the field.
        efa_device(
            root,
            "rdmap16s27",
            Some("fe80:0000:0000:0000:0816:0eff:fe0c:9ba3\n"),
            None,
        );
        efa_device(root, "rdmap32s27", Some("fe80::c55:2eff:fe44:db5"), None);
        assert_eq!(
            rail_mac("efa", "rdmap16s27-rdm", None, root).as_deref(),
            Some("0a:16:0e:0c:9b:a3")
        );
        assert_eq!(
            rail_mac("efa", "rdmap32s27-rdm", None, root).as_deref(),
            Some("0e:55:2e:44:0d:b5"),
            "the universal/local bit flipped back"
        );
        // The bind address plays no part on efa.
        assert_eq!(
            rail_mac(
                "efa",
                "rdmap32s27-rdm",
                Some(Ipv4Addr::LOCALHOST.into()),
                root
            )
            .as_deref(),
            Some("0e:55:2e:44:0d:b5")
        );
    }

    #[test]
    fn what_names_no_interface_is_none() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let cases: &[(&str, &str)] = &[
            ("zero", "0000:0000:0000:0000:0000:0000:0000:0000\n"),
            ("not_eui64", "fe80:0000:0000:0000:0000:0000:0000:0001\n"),
            ("global", "2001:0db8:0000:0000:0816:0eff:fe0c:9ba3\n"),
            ("garbage", "not a gid\n"),
            ("empty", ""),
        ];
        for (device, gid) in cases {
            efa_device(root, device, Some(gid), None);
            assert_eq!(
                rail_mac("efa", &format!("{device}-rdm"), None, root),
                None,
                "{device}"
            );
        }
        let long = format!("fe80::816:eff:fe0c:9ba3{}", " ".repeat(64));
        efa_device(root, "oversized", Some(&long), None);
        assert_eq!(
            rail_mac("efa", "oversized-rdm", None, root),
            None,
            "a read is bounded"
        );
        // No such device, no sysfs at all.
        assert_eq!(rail_mac("efa", "rdmap99s0-rdm", None, root), None);
        assert_eq!(
            rail_mac("efa", "rdmap0s6-rdm", None, Path::new("/nonexistent")),
            None
        );
        // A domain that is no plain name reads nothing outside the device folder.
        // (`..` as a device would read `class/ports/1/gids/0`.)
        write(root, "class/ports/1/gids/0", "fe80::816:eff:fe0c:9ba3");
        for domain in ["..-rdm", ".", "a/../..", "", "-rdm"] {
            assert_eq!(rail_mac("efa", domain, None, root), None, "{domain:?}");
        }
    }

    #[test]
    fn a_netdev_address_that_is_no_mac_falls_back_to_the_gid() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let gid = "fe80::816:eff:fe0c:9ba3";
        for (device, ifname, address) in [
            ("zero", "eth2", "00:00:00:00:00:00\n"),
            // An IPoIB netdev's 20-byte hardware address.
            (
                "ib",
                "ib0",
                "00:00:10:49:fe:80:00:00:00:00:00:00:0a:16:0e:ff:fe:0c:9b:a3\n",
            ),
            ("junk", "eth3", "0e:aa:bb:cc:dd\n"),
        ] {
            efa_device(root, device, Some(gid), Some((ifname, address)));
            assert_eq!(
                rail_mac("efa", &format!("{device}-rdm"), None, root).as_deref(),
                Some("0a:16:0e:0c:9b:a3"),
                "{device}"
            );
        }
        // Two netdevs on the device's function: which is the rail's is not guessed.
        efa_device(root, "two", Some(gid), Some(("eth4", "0e:00:00:00:00:04")));
        efa_device(root, "two", None, Some(("eth5", "0e:00:00:00:00:05")));
        assert_eq!(
            rail_mac("efa", "two-rdm", None, root).as_deref(),
            Some("0a:16:0e:0c:9b:a3")
        );
    }

    #[test]
    fn an_ip_rail_is_named_by_the_interface_holding_its_address() {
        // Every network namespace has lo at 127.0.0.1: the lookup is real, the sysfs fake.
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "class/net/lo/address", "0E:00:00:00:00:7F\n");
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for provider in ["tcp", "udp;ofi_rxd"] {
            assert_eq!(
                rail_mac(provider, "lo", lo, root).as_deref(),
                Some("0e:00:00:00:00:7f"),
                "{provider}"
            );
        }
        assert_eq!(
            rail_mac("shm", "shm", lo, root),
            None,
            "shm sits on no interface"
        );
        assert_eq!(rail_mac("tcp", "lo", None, root), None, "no bind address");
        // An address that no interface holds (from the test range).
        let nobody = Some(IpAddr::V4(Ipv4Addr::new(198, 19, 213, 250)));
        assert_eq!(rail_mac("tcp", "eth0", nobody, root), None);
    }

    #[test]
    fn loopback_has_no_mac() {
        // The real sysfs: lo's address is all zeros, which names no ENI.
        if !Path::new("/sys/class/net/lo/address").exists() {
            eprintln!("SKIPPED loopback_has_no_mac: no /sys/class/net/lo");
            return;
        }
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(rail_mac("tcp", "lo", lo, Path::new("/sys")), None);
    }

    #[test]
    fn labels_and_names() {
        assert_eq!(interface_of_label("eth0:1"), "eth0");
        assert_eq!(interface_of_label("eth0"), "eth0");
        assert_eq!(plain_name("eth0", 15), Some("eth0"));
        assert_eq!(plain_name("a-very-long-ifname", 15), None);
        assert_eq!(
            valid_mac(" 0A:0B:0C:0D:0E:0F\n").as_deref(),
            Some("0a:0b:0c:0d:0e:0f")
        );
        assert_eq!(valid_mac("00:00:00:00:00:00"), None);
        assert_eq!(
            mac_of_eui64_gid("fe80::ff:fe00:0"),
            Some("02:00:00:00:00:00".into())
        );
    }
}
