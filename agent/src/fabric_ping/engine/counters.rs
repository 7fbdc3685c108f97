//! What one engine counts: written by its thread, read by anyone at any time (metrics, tests,
//! the CLI's summary) as a [`PingerStats`] snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use strum::VariantArray;

use serde::Serialize;

use crate::fabric_ping::wire::DecodeError;

/// Why a received message was dropped unread. Bounded: it is a metric label.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum MalformedReason {
    Truncated,
    BadMagic,
    BadVersion,
    BadKind,
    /// A sender address that is not one of this provider's.
    BadAddress,
    /// A pong for a ping in flight without that ping's token: forged, or not an answer.
    BadToken,
    /// A pong with the right token from another address than the ping went to.
    WrongSender,
}

impl MalformedReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl From<&DecodeError> for MalformedReason {
    fn from(e: &DecodeError) -> Self {
        match e {
            DecodeError::Truncated => MalformedReason::Truncated,
            DecodeError::BadMagic => MalformedReason::BadMagic,
            DecodeError::UnsupportedVersion(_) => MalformedReason::BadVersion,
            DecodeError::BadKind(_) => MalformedReason::BadKind,
            DecodeError::BadAddress(_) => MalformedReason::BadAddress,
        }
    }
}

/// Counters of one engine. Relaxed atomics: each is a count on its own, read for display.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub pings_sent: AtomicU64,
    pub pongs_received: AtomicU64,
    pub probe_timeouts: AtomicU64,
    pub probe_send_failures: AtomicU64,
    pub pings_answered: AtomicU64,
    pub pong_send_failures: AtomicU64,
    pub pongs_dropped_queue_full: AtomicU64,
    pub pongs_dropped_backlog: AtomicU64,
    pub late_pongs: AtomicU64,
    pub pairs_unsettled: AtomicU64,
    pub receive_errors: AtomicU64,
    malformed: [AtomicU64; MalformedReason::VARIANTS.len()],
    pub learned_peers_evicted: AtomicU64,
    pub av_entries: AtomicU64,
    pub endpoint_reopens: AtomicU64,
}

/// Adds one to a counter.
pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn malformed(&self, reason: MalformedReason) {
        bump(&self.malformed[reason as usize]);
    }

    pub fn snapshot(&self) -> PingerStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PingerStats {
            pings_sent: get(&self.pings_sent),
            pongs_received: get(&self.pongs_received),
            probe_timeouts: get(&self.probe_timeouts),
            probe_send_failures: get(&self.probe_send_failures),
            pings_answered: get(&self.pings_answered),
            pong_send_failures: get(&self.pong_send_failures),
            pongs_dropped_queue_full: get(&self.pongs_dropped_queue_full),
            pongs_dropped_backlog: get(&self.pongs_dropped_backlog),
            late_pongs: get(&self.late_pongs),
            pairs_unsettled: get(&self.pairs_unsettled),
            receive_errors: get(&self.receive_errors),
            malformed: MalformedReason::VARIANTS
                .iter()
                .map(|r| (r.as_str(), get(&self.malformed[*r as usize])))
                .collect(),
            learned_peers_evicted: get(&self.learned_peers_evicted),
            av_entries: get(&self.av_entries),
            endpoint_reopens: get(&self.endpoint_reopens),
        }
    }
}

/// A point-in-time copy of an engine's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PingerStats {
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub probe_timeouts: u64,
    pub probe_send_failures: u64,
    pub pings_answered: u64,
    pub pong_send_failures: u64,
    pub pongs_dropped_queue_full: u64,
    /// Pongs dropped after waiting too long behind one still in flight to the same
    /// destination.
    pub pongs_dropped_backlog: u64,
    pub late_pongs: u64,
    /// Pairs whose second ping did not measure the path: a side let a message wait unread
    /// longer than `settled_gap` (reported `warm: false`).
    pub pairs_unsettled: u64,
    pub receive_errors: u64,
    /// Dropped messages by reason ([`MalformedReason::as_str`]).
    pub malformed: BTreeMap<&'static str, u64>,
    pub learned_peers_evicted: u64,
    /// Entries in the address vector now.
    pub av_entries: u64,
    /// Times the endpoint was opened anew because it had stopped working.
    pub endpoint_reopens: u64,
}

impl PingerStats {
    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decode_error_has_its_reason_and_every_reason_is_in_the_snapshot() {
        let errors = [
            DecodeError::Truncated,
            DecodeError::BadMagic,
            DecodeError::UnsupportedVersion(9),
            DecodeError::BadKind(9),
            DecodeError::BadAddress(0),
        ];
        let counters = Counters::default();
        for e in &errors {
            let reason = MalformedReason::from(e);
            assert_eq!(reason.as_str(), e.label());
            counters.malformed(reason);
        }
        let stats = counters.snapshot();
        assert_eq!(stats.malformed.len(), MalformedReason::VARIANTS.len());
        assert_eq!(
            stats.malformed.values().filter(|n| **n == 1).count(),
            errors.len()
        );
        assert_eq!(stats.malformed_total(), errors.len() as u64);
    }
}
