//! The node's fabric devices as the kernel sees them, and their hardware counters.
//!
//! The RDMA core exposes each port's counters as one file per counter under
//! `<sysfs>/class/infiniband/<device>/ports/<port>/hw_counters/`, each holding a decimal
//! integer. On EFA these are `tx_bytes`, `rx_bytes`, `tx_pkts`, `rx_pkts`, `rx_drops`,
//! `send_bytes`, `recv_bytes`, `rdma_read_bytes`, ...: the device's own view of the traffic,
//! which tells a peer that never answers from a device that never sends, and counts drops
//! that no socket statistic shows.
//!
//! Reading is best effort: no devices, or no `infiniband` directory (off EFA, or `/sys` not
//! mounted into the container), is an empty inventory, not an error. A file that cannot be
//! read or does not hold a number is skipped. Everything is bounded (devices, ports,
//! counters, entries scanned, bytes read per file) because the agent reads this on every
//! round, forever. The reads block: call from `spawn_blocking`.
//!
//! - [`rails`]: which network interface (MAC) each fabric rail sits on.

pub mod rails;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Most devices read (a p5.48xlarge has 32 EFA devices).
pub const MAX_DEVICES: usize = 64;
/// Most ports read per device (EFA devices have one).
pub const MAX_PORTS: usize = 8;
/// Most counters read per port (EFA has about 20).
pub const MAX_COUNTERS: usize = 256;
/// Most entries looked at in one directory, before sorting and keeping the first of them.
const MAX_ENTRIES_SCANNED: usize = 4096;
/// A `u64` in decimal is at most 20 digits; a little more allows for the newline.
const MAX_COUNTER_FILE_BYTES: u64 = 32;
/// Longest device, port or counter name kept (they become metric labels).
const MAX_NAME_BYTES: usize = 64;
/// Not a counter: how long (ms) the kernel caches counter values; it sits among them.
const NOT_COUNTERS: [&str; 1] = ["lifespan"];

/// The hardware counters of one port of one device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceCounters {
    /// `rdmap0s6`, `efa_0`, ...
    pub device: String,
    /// `1`.
    pub port: String,
    /// Counter name to value, as the kernel reports it.
    pub counters: BTreeMap<String, u64>,
}

/// Reads every port's hardware counters under `sysfs_root` (normally `/sys`), sorted by
/// device, then port. Ports without readable counters are left out.
pub fn read_hw_counters(sysfs_root: &Path) -> Vec<DeviceCounters> {
    let mut skipped = 0usize;
    let mut found = Vec::new();
    let devices_dir = sysfs_root.join("class/infiniband");
    for (device, device_dir) in sorted_entries(&devices_dir, MAX_DEVICES) {
        for (port, port_dir) in sorted_entries(&device_dir.join("ports"), MAX_PORTS) {
            let mut counters = BTreeMap::new();
            let counters_dir = port_dir.join("hw_counters");
            for (name, file) in sorted_entries(&counters_dir, MAX_COUNTERS + NOT_COUNTERS.len()) {
                if NOT_COUNTERS.contains(&name.as_str()) || counters.len() == MAX_COUNTERS {
                    continue;
                }
                match read_counter(&file) {
                    Some(value) => {
                        counters.insert(name, value);
                    }
                    None => skipped += 1,
                }
            }
            if !counters.is_empty() {
                found.push(DeviceCounters {
                    device: device.clone(),
                    port,
                    counters,
                });
            }
        }
    }
    if skipped > 0 {
        tracing::debug!(
            skipped,
            root = %sysfs_root.display(),
            "hardware counter files skipped: unreadable or not a number"
        );
    }
    found
}

/// The first `limit` entries of `dir` by name (names that are not UTF-8 or too long are
/// skipped); nothing when `dir` cannot be read.
fn sorted_entries(dir: &Path, limit: usize) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut named: Vec<(String, PathBuf)> = entries
        .take(MAX_ENTRIES_SCANNED)
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            (name.len() <= MAX_NAME_BYTES).then(|| (name, entry.path()))
        })
        .collect();
    named.sort();
    named.truncate(limit);
    named
}

/// The file's value, if it is a decimal `u64` (surrounding whitespace allowed).
fn read_counter(file: &Path) -> Option<u64> {
    let mut text = String::new();
    fs::File::open(file)
        .ok()?
        .take(MAX_COUNTER_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `<root>/class/infiniband/<device>/ports/<port>/hw_counters/<name>`.
    fn counter(root: &Path, device: &str, port: &str, name: &str, content: &str) {
        let dir = root.join(format!(
            "class/infiniband/{device}/ports/{port}/hw_counters"
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), content).unwrap();
    }

    fn counters(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn two_devices_one_with_garbage() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        counter(root, "rdmap1s0", "1", "tx_bytes", "2048\n");
        counter(root, "rdmap1s0", "1", "rx_drops", "0\n");
        counter(root, "rdmap1s0", "1", "garbage", "not a number\n");
        counter(root, "rdmap1s0", "1", "negative", "-1\n");
        counter(root, "rdmap1s0", "1", "too_big", "18446744073709551616\n");
        counter(root, "rdmap1s0", "1", "lifespan", "10\n");
        counter(root, "rdmap0s6", "1", "rx_bytes", "18446744073709551615\n");
        counter(root, "rdmap0s6", "1", "tx_pkts", " 7 \n");
        counter(
            root,
            "rdmap0s6",
            "1",
            "long",
            &format!("{}\n", "1".repeat(40)),
        );
        // A directory where a counter should be: not readable as a number.
        fs::create_dir_all(root.join("class/infiniband/rdmap0s6/ports/1/hw_counters/dir")).unwrap();
        // A port without counters, and a device without ports: left out.
        fs::create_dir_all(root.join("class/infiniband/rdmap0s6/ports/2/hw_counters")).unwrap();
        fs::create_dir_all(root.join("class/infiniband/mlx5_0")).unwrap();

        let found = read_hw_counters(root);
        assert_eq!(
            found,
            [
                DeviceCounters {
                    device: "rdmap0s6".into(),
                    port: "1".into(),
                    counters: counters(&[("rx_bytes", u64::MAX), ("tx_pkts", 7)]),
                },
                DeviceCounters {
                    device: "rdmap1s0".into(),
                    port: "1".into(),
                    counters: counters(&[("rx_drops", 0), ("tx_bytes", 2048)]),
                },
            ]
        );
    }

    #[test]
    fn no_devices_is_empty() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read_hw_counters(root.path()), []);
        fs::create_dir_all(root.path().join("class/infiniband")).unwrap();
        assert_eq!(read_hw_counters(root.path()), []);
        assert_eq!(read_hw_counters(&root.path().join("missing")), []);
    }

    #[test]
    fn counts_are_bounded() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        for n in 0..MAX_COUNTERS + 5 {
            counter(root, "efa_0", "1", &format!("c{n:04}"), "1");
        }
        counter(root, "efa_0", "1", "lifespan", "10");
        for port in 1..=MAX_PORTS + 1 {
            counter(root, "efa_1", &port.to_string(), "tx_bytes", "1");
        }
        let found = read_hw_counters(root);
        assert_eq!(found[0].counters.len(), MAX_COUNTERS);
        assert!(found[0].counters.contains_key("c0000"));
        assert!(!found[0].counters.contains_key("lifespan"));
        assert_eq!(found.len(), 1 + MAX_PORTS);
    }
}
