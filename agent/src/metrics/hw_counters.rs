//! `efa_device_hw_stat_total`: the fabric devices' own counters, exposed as counters.
//!
//! The values are counted by the hardware and read from sysfs; the agent only copies them.
//! prometheus-client's `Counter` can only be incremented, and a gauge would be the wrong
//! type for a value that only grows (and would lose the `_total` name that tells
//! dashboards and `rate()` users what it is). So this collector keeps the last values read
//! and encodes them as counters at each scrape, the way exporters of kernel counters do. A
//! device reset (driver reload) restarts them at 0, which `rate()` treats as a counter
//! reset, as it should.
//!
//! "stat", after the kernel's `rdma_hw_stats`: `promtool check metrics` refuses a counter
//! whose name says `counter`. The kernel's counter name is the `counter` label.
//!
//! Each update replaces the whole set, so a device or counter that vanished loses its
//! series at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::labels::{HwCounterLabels, LabelText};
use crate::inventory::DeviceCounters;

/// The family's name in `# TYPE`; its samples are `<name>_total`.
pub(super) const NAME: &str = "efa_device_hw_stat";
const HELP: &str = "Hardware counters of each fabric device port, as the device counts them \
                    (sysfs hw_counters: tx_bytes, rx_drops, ...); back to 0 when the device \
                    resets.";

/// The last values read, shared with the registry (which encodes them).
#[derive(Debug, Default, Clone)]
pub(super) struct HwCounters {
    values: Arc<Mutex<BTreeMap<HwCounterLabels, u64>>>,
}

impl HwCounters {
    /// Replaces every value with those of `devices`.
    pub(super) fn replace(&self, devices: &[DeviceCounters]) {
        let values: BTreeMap<HwCounterLabels, u64> = devices
            .iter()
            .flat_map(|device| {
                device.counters.iter().map(|(counter, value)| {
                    let labels = HwCounterLabels {
                        device: LabelText::from(device.device.as_str()),
                        port: LabelText::from(device.port.as_str()),
                        counter: LabelText::from(counter.as_str()),
                    };
                    (labels, *value)
                })
            })
            .collect();
        *self.lock() = values;
    }

    /// A panic while holding the lock cannot leave half a map behind (it is replaced
    /// whole), so a poisoned lock is still good to use.
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<HwCounterLabels, u64>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for HwCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = self.lock();
        // Like the registry's own families: no series, no metadata lines.
        if values.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(NAME, HELP, None, MetricType::Counter)?;
        for (labels, value) in values.iter() {
            ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}
