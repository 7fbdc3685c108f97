//! The fabric engines' own counters, read from the engines at each scrape (as
//! [`hw_counters`](super::hw_counters) does for the devices'): messages dropped as malformed
//! or forged, learned senders evicted, endpoints opened anew. Summed over this node's engines
//! (one per rail, and the one for larger probes); the engines count, this only encodes.
//!
//! - `efa_fabric_malformed_total{reason}`: received fabric messages dropped, by
//!   [`MalformedReason`] (every reason, 0 included, so that `rate()` has a series to work on).
//! - `efa_fabric_learned_peers_evicted_total`: senders learned from their pings and evicted
//!   (least recently heard first) to keep the address vector bounded.
//! - `efa_fabric_endpoint_reopens_total`: endpoints opened anew by the engine's health watch.
//!
//! No engine (fabric off or not opened): no families at all, like the registry's own.

use std::sync::{Arc, Mutex};
use strum::VariantArray;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use crate::fabric_ping::{FabricPinger, MalformedReason, PingerStats};

const MALFORMED: &str = "efa_fabric_malformed";
const MALFORMED_HELP: &str = "Fabric messages received and dropped, by reason: truncated, \
                              bad_magic, bad_version, bad_kind, bad_address (a sender address \
                              the provider cannot use), bad_token (a pong that does not answer \
                              a ping of ours: forged or stale), wrong_sender (a pong from \
                              another address than its ping went to)";
const EVICTED: &str = "efa_fabric_learned_peers_evicted";
const EVICTED_HELP: &str = "Senders learned from their pings and evicted from the address \
                            vector, least recently heard first, to keep it bounded";
const REOPENS: &str = "efa_fabric_endpoint_reopens";
const REOPENS_HELP: &str = "Fabric endpoints opened anew because their sends to peers that \
                            answered before had stopped completing (the new endpoint has a new \
                            address, published in the hello)";

/// Where the counters come from: each engine's snapshot, taken at scrape time.
type Source = Box<dyn Fn() -> PingerStats + Send + Sync>;

/// The engines whose counters are exported, shared with the registry (which encodes them).
#[derive(Clone, Default)]
pub(super) struct FabricCounters {
    sources: Arc<Mutex<Vec<Source>>>,
}

impl std::fmt::Debug for FabricCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricCounters").finish_non_exhaustive()
    }
}

impl FabricCounters {
    /// Exports these engines' counters from now on (replacing any before).
    pub(super) fn follow(&self, engines: &[FabricPinger]) {
        self.replace(
            engines
                .iter()
                .map(|e| {
                    let engine = e.clone();
                    Box::new(move || engine.stats()) as Source
                })
                .collect(),
        );
    }

    fn replace(&self, sources: Vec<Source>) {
        *self.sources.lock().unwrap_or_else(|p| p.into_inner()) = sources;
    }

    fn snapshots(&self) -> Vec<PingerStats> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.iter().map(|s| s()).collect()
    }
}

impl Collector for FabricCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.snapshots();
        if stats.is_empty() {
            return Ok(());
        }
        let sum = |f: &dyn Fn(&PingerStats) -> u64| stats.iter().map(f).sum::<u64>();
        let mut family =
            encoder.encode_descriptor(MALFORMED, MALFORMED_HELP, None, MetricType::Counter)?;
        for reason in MalformedReason::VARIANTS.iter().copied() {
            let label = reason.as_str();
            let count = sum(&|s| s.malformed.get(label).copied().unwrap_or(0));
            ConstCounter::new(count).encode(family.encode_family(&[("reason", label)])?)?;
        }
        for (name, help, count) in [
            (EVICTED, EVICTED_HELP, sum(&|s| s.learned_peers_evicted)),
            (REOPENS, REOPENS_HELP, sum(&|s| s.endpoint_reopens)),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(count).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn stats(malformed: &[(&'static str, u64)], evicted: u64, reopens: u64) -> PingerStats {
        PingerStats {
            malformed: malformed.iter().copied().collect(),
            learned_peers_evicted: evicted,
            endpoint_reopens: reopens,
            ..PingerStats::default()
        }
    }

    fn encode(counters: &FabricCounters) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(counters.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn the_engines_counters_are_summed_and_exported_as_they_move() {
        let counters = FabricCounters::default();
        assert!(
            !encode(&counters).contains("efa_fabric"),
            "no engine, no families"
        );

        let moving = Arc::new(Mutex::new(stats(&[("bad_token", 1)], 0, 0)));
        let rail0 = moving.clone();
        counters.replace(vec![
            Box::new(move || rail0.lock().unwrap().clone()),
            Box::new(|| stats(&[("bad_token", 2), ("truncated", 5)], 3, 1)),
        ]);
        let text = encode(&counters);
        assert!(
            text.contains("# TYPE efa_fabric_malformed counter\n"),
            "{text}"
        );
        assert!(
            text.contains("efa_fabric_malformed_total{reason=\"bad_token\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("efa_fabric_malformed_total{reason=\"truncated\"} 5\n"),
            "{text}"
        );
        for reason in MalformedReason::VARIANTS.iter().copied() {
            let line = format!(
                "efa_fabric_malformed_total{{reason=\"{}\"}} ",
                reason.as_str()
            );
            assert!(text.contains(&line), "every reason has a series: {text}");
        }
        assert!(
            text.contains("efa_fabric_learned_peers_evicted_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("efa_fabric_endpoint_reopens_total 1\n"),
            "{text}"
        );

        // Read at each scrape: what the engine counted since is there.
        *moving.lock().unwrap() = stats(&[("bad_token", 10), ("wrong_sender", 4)], 2, 1);
        let text = encode(&counters);
        assert!(
            text.contains("efa_fabric_malformed_total{reason=\"bad_token\"} 12\n"),
            "{text}"
        );
        assert!(
            text.contains("efa_fabric_malformed_total{reason=\"wrong_sender\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("efa_fabric_learned_peers_evicted_total 5\n"),
            "{text}"
        );
        assert!(
            text.contains("efa_fabric_endpoint_reopens_total 2\n"),
            "{text}"
        );
    }
}
